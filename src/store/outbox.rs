//! What the user does by hand to stored messages: look at what waits in
//! the outbox, cancel it, retry it, or delete messages altogether.
//!
//! A cancelled message is `failed` with the reason [`CANCELLED`] (and a
//! `failed` event saying so): it reads plainly in `sqlite3`, in `history`
//! and in an export, it round-trips through export and import, and it
//! needs no change to the status CHECK constraint. `outbox retry` with no
//! ids leaves cancelled messages alone; naming one retries it.

use rusqlite::{params, Transaction};

use super::messages::{
    append_event, apply_status_tx, message_from_row, Message, MESSAGE_COLUMNS, MESSAGE_FROM,
};
use super::status::{Direction, Status};
use super::{Error, Result, Store};
use crate::clock;
use crate::identity::PublicKey;

/// The `failure_reason` (and event detail) of a message the user
/// cancelled.
pub const CANCELLED: &str = "cancelled by you";

/// Whether `m` is a message the user cancelled.
pub fn is_cancelled(m: &Message) -> bool {
    m.status == Status::Failed && m.failure_reason.as_deref() == Some(CANCELLED)
}

/// Our own messages not sent: pending and failed (cancelled included),
/// oldest first.
pub fn unsent_tx(conn: &rusqlite::Connection) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
         WHERE m.direction = 'out' AND (m.status = 'pending' OR m.status = 'failed')
         ORDER BY m.created_at, m.id"
    ))?;
    let rows = stmt.query_map([], message_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Why `m` cannot be `action`ed, if it cannot: it must be our own and not
/// sent yet.
fn check_unsent(m: &Message, action: &'static str) -> Result<()> {
    let why = match (m.direction, m.status) {
        (Direction::In, _) => "it is a message you received".to_owned(),
        (_, Status::Pending | Status::Failed) => return Ok(()),
        (_, status) => format!("it was already sent (status: {status})"),
    };
    Err(Error::NotInOutbox {
        id: m.msg_id.short(),
        action,
        why,
    })
}

/// Cancels our pending message `m`: it is never sent (the outbox sends
/// only pending messages). Returns false when it was already cancelled.
/// A message already sent, or failed for another reason, is refused with
/// its status named.
pub fn cancel_tx(tx: &Transaction<'_>, m: &Message) -> Result<bool> {
    check_unsent(m, "cancel")?;
    if is_cancelled(m) {
        return Ok(false);
    }
    if m.status == Status::Failed {
        return Err(Error::NotInOutbox {
            id: m.msg_id.short(),
            action: "cancel",
            why: "it already failed and will not be sent unless you retry it \
                  ('chat-p2p delete' removes it)"
                .into(),
        });
    }
    apply_status_tx(
        tx,
        &m.msg_id,
        Status::Failed,
        &clock::now(),
        Some(CANCELLED),
    )
}

/// Puts our failed (or cancelled) message `m` back to `pending`, so the
/// next session sends it; the timeline gets a `pending` event saying it
/// was retried. Returns false for a message already pending. A message
/// already sent is refused with its status named.
///
/// The one move back in a message's life, and only by the user's hand:
/// [`Status::may_become`] never allows it.
pub fn requeue_tx(tx: &Transaction<'_>, m: &Message) -> Result<bool> {
    check_unsent(m, "retry")?;
    if m.status == Status::Pending {
        return Ok(false);
    }
    tx.execute(
        "UPDATE messages SET status = 'pending', failed_at = NULL, failure_reason = NULL
         WHERE id = ?1",
        [m.id],
    )?;
    append_event(tx, m.id, Status::Pending, &clock::now(), Some("retried"))?;
    Ok(true)
}

/// Deletes the messages with these local row ids, their timelines (by
/// cascade) and their search index entries (by trigger). Returns how many
/// were deleted.
pub fn delete_tx(tx: &Transaction<'_>, rowids: &[i64]) -> Result<usize> {
    let mut stmt = tx.prepare_cached("DELETE FROM messages WHERE id = ?1")?;
    let mut n = 0;
    for id in rowids {
        n += stmt.execute([id])?;
    }
    Ok(n)
}

/// Deletes every message of the conversation with `peer`. Returns how
/// many were deleted.
pub fn delete_conversation_tx(tx: &Transaction<'_>, peer: &PublicKey) -> Result<usize> {
    Ok(tx.execute(
        "DELETE FROM messages WHERE peer_key = ?1",
        params![peer.to_base64()],
    )?)
}

impl Store {
    /// See [`unsent_tx`].
    pub fn unsent(&self) -> Result<Vec<Message>> {
        unsent_tx(&self.conn)
    }

    /// How many messages of the conversation with `peer` are stored.
    pub fn conversation_len(&self, peer: &PublicKey) -> Result<u64> {
        let n: i64 = self.conn.query_row(
            "SELECT count(*) FROM messages WHERE peer_key = ?1",
            [peer.to_base64()],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Deletes messages (see [`delete_tx`]) with SQLite's `secure_delete`
    /// on, so their text is overwritten in the file rather than left in
    /// free pages, then empties the write-ahead log, which still holds the
    /// old pages. Either `rowids` or, with `peer`, a whole conversation.
    pub fn delete_messages(&mut self, rowids: &[i64], peer: Option<&PublicKey>) -> Result<usize> {
        self.conn.pragma_update(None, "secure_delete", "ON")?;
        let tx = self.transaction()?;
        let n = match peer {
            Some(peer) => delete_conversation_tx(&tx, peer)?,
            None => delete_tx(&tx, rowids)?,
        };
        tx.commit()?;
        // Best effort: a reader elsewhere (a chat) may keep part of the
        // log alive until it ends; nothing is lost either way.
        let _ = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::ids::{IdQuery, Scope};
    use crate::store::test_util::temp_store;
    use crate::store::{Filter, MessageId, Order};

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    fn statuses(store: &Store, id: &MessageId) -> Vec<(Status, Option<String>)> {
        store
            .events(id)
            .unwrap()
            .into_iter()
            .map(|e| (e.status, e.detail))
            .collect()
    }

    #[test]
    fn cancel_takes_a_message_out_of_the_outbox_and_says_so() {
        let (_dir, mut store) = temp_store();
        let m = store.insert_outgoing(&key(), "never mind").unwrap();
        let tx = store.transaction().unwrap();
        assert!(cancel_tx(&tx, &m).unwrap());
        tx.commit().unwrap();
        assert!(store.outbox().unwrap().is_empty());
        let now = store.message(&m.msg_id).unwrap().unwrap();
        assert!(is_cancelled(&now));
        assert_eq!(
            statuses(&store, &m.msg_id)[1],
            (Status::Failed, Some(CANCELLED.to_owned()))
        );
        // Again: nothing changes.
        let tx = store.transaction().unwrap();
        assert!(!cancel_tx(&tx, &now).unwrap());
    }

    #[test]
    fn a_sent_message_cannot_be_cancelled_or_retried() {
        let (_dir, mut store) = temp_store();
        let m = store.insert_outgoing(&key(), "gone").unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        store
            .apply_status(&m.msg_id, Status::Delivered, at, None)
            .unwrap();
        let m = store.message(&m.msg_id).unwrap().unwrap();
        let tx = store.transaction().unwrap();
        let err = cancel_tx(&tx, &m).unwrap_err().to_string();
        assert!(err.contains("already sent (status: delivered)"), "{err}");
        let err = requeue_tx(&tx, &m).unwrap_err().to_string();
        assert!(err.starts_with("cannot retry"), "{err}");
    }

    #[test]
    fn retry_puts_a_failed_message_back_in_the_outbox() {
        let (_dir, mut store) = temp_store();
        let m = store.insert_outgoing(&key(), "again").unwrap();
        let at = "2026-01-01T00:00:00.000Z";
        store
            .apply_status(&m.msg_id, Status::Failed, at, Some("refused"))
            .unwrap();
        let failed = store.message(&m.msg_id).unwrap().unwrap();
        let tx = store.transaction().unwrap();
        assert!(requeue_tx(&tx, &failed).unwrap());
        tx.commit().unwrap();
        let now = store.message(&m.msg_id).unwrap().unwrap();
        assert_eq!(now.status, Status::Pending);
        assert_eq!((now.failed_at, now.failure_reason), (None, None));
        assert_eq!(store.outbox().unwrap().len(), 1);
        let events = statuses(&store, &m.msg_id);
        assert_eq!(events.len(), 3);
        assert_eq!(events[2], (Status::Pending, Some("retried".to_owned())));
    }

    #[test]
    fn deleting_removes_the_timeline_and_the_search_entry() {
        let (_dir, mut store) = temp_store();
        let peer = key();
        let keep = store.insert_outgoing(&peer, "keep this plan").unwrap();
        let gone = store.insert_outgoing(&peer, "secret plan").unwrap();
        assert_eq!(store.delete_messages(&[gone.id], None).unwrap(), 1);
        assert!(store.message(&gone.msg_id).unwrap().is_none());
        let events: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM message_events WHERE message_id = ?1",
                [gone.id],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(events, 0);
        let hits = store
            .search("plan", &Filter::default(), Order::Newest, 10)
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].message.msg_id, keep.msg_id);
        store
            .conn()
            .execute(
                "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')",
                [],
            )
            .unwrap();
        // A whole conversation.
        assert_eq!(store.delete_messages(&[], Some(&peer)).unwrap(), 1);
        assert_eq!(store.message_count().unwrap(), 0);
        let err = store
            .resolve_id(&IdQuery::Full(keep.msg_id), Scope::All)
            .unwrap_err();
        assert!(matches!(err, Error::NoSuchId(_)));
    }
}

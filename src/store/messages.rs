//! The `messages` and `message_events` tables: what the chat client writes
//! and updates, each operation in a `*_tx` form for a caller's transaction
//! plus a [`Store`] method that opens and commits one.
//!
//! Every status change goes through [`apply_status_tx`], which asks
//! [`Status::may_become`] and appends the event in the same transaction.

use rusqlite::{params, OptionalExtension, Row, Transaction, TransactionBehavior};
use serde::Serialize;

use super::status::{Direction, MessageId, Status};
use super::{Error, Result, Store};
use crate::clock;
use crate::identity::PublicKey;

/// One stored message with every status field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    /// Local row id (arrival order here).
    #[serde(skip)]
    pub id: i64,
    /// The wire id.
    pub msg_id: MessageId,
    /// The other side's public key (base64).
    pub peer_key: String,
    /// The contact's name for `peer_key`, if it is a contact.
    pub contact: Option<String>,
    /// Who wrote it.
    pub direction: Direction,
    /// The text.
    pub body: String,
    /// Where it is in its life.
    pub status: Status,
    /// The author's clock when written.
    pub created_at: String,
    /// When the router accepted it (outgoing).
    pub sent_at: Option<String>,
    /// When the peer stored it (outgoing).
    pub delivered_at: Option<String>,
    /// When it was read (by the peer for outgoing, here for incoming).
    pub read_at: Option<String>,
    /// When it was stored here (incoming).
    pub received_at: Option<String>,
    /// When sending was given up (outgoing).
    pub failed_at: Option<String>,
    /// Why sending was given up.
    pub failure_reason: Option<String>,
}

/// One status change in a message's timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Event {
    /// The status reached.
    pub status: Status,
    /// When (UTC, RFC 3339).
    pub at: String,
    /// E.g. a failure reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// What [`insert_incoming_tx`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// The message is new and now stored.
    New(Box<Message>),
    /// This sender's message with this id was already stored; nothing
    /// changed.
    Duplicate,
}

/// The columns [`message_from_row`] reads, from `messages m` joined with
/// `contacts c`.
pub(crate) const MESSAGE_COLUMNS: &str = "m.id, m.msg_id, m.peer_key, c.name, m.direction, \
     m.body, m.status, m.created_at, m.sent_at, m.delivered_at, m.read_at, m.received_at, \
     m.failed_at, m.failure_reason";

/// The FROM clause that goes with [`MESSAGE_COLUMNS`].
pub(crate) const MESSAGE_FROM: &str =
    "messages AS m LEFT JOIN contacts AS c ON c.public_key = m.peer_key";

/// Reads a message from a row selected with [`MESSAGE_COLUMNS`].
pub(crate) fn message_from_row(row: &Row<'_>) -> rusqlite::Result<Message> {
    Ok(Message {
        id: row.get(0)?,
        msg_id: row.get(1)?,
        peer_key: row.get(2)?,
        contact: row.get(3)?,
        direction: row.get(4)?,
        body: row.get(5)?,
        status: row.get(6)?,
        created_at: row.get(7)?,
        sent_at: row.get(8)?,
        delivered_at: row.get(9)?,
        read_at: row.get(10)?,
        received_at: row.get(11)?,
        failed_at: row.get(12)?,
        failure_reason: row.get(13)?,
    })
}

/// Our own (outgoing) message with `msg_id`, if any.
///
/// Only outgoing ids are unique on their own: we make them, and the
/// router's acks and errors and a peer's receipts name them by id alone.
/// Any peer may pick any id for what it sends, so a received message is
/// found with its sender: [`incoming_tx`].
pub fn message_tx(tx: &rusqlite::Connection, msg_id: &MessageId) -> Result<Option<Message>> {
    // Cached: the chat client calls this for every ack and receipt.
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
             WHERE m.msg_id = ?1 AND m.direction = 'out'"
        ))?
        .query_row([msg_id], message_from_row)
        .optional()?)
}

/// The message `peer` sent us with `msg_id`, if any.
pub fn incoming_tx(
    tx: &rusqlite::Connection,
    peer: &PublicKey,
    msg_id: &MessageId,
) -> Result<Option<Message>> {
    Ok(tx
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
             WHERE m.peer_key = ?1 AND m.msg_id = ?2 AND m.direction = 'in'"
        ))?
        .query_row(params![peer.to_base64(), msg_id], message_from_row)
        .optional()?)
}

fn require(tx: &rusqlite::Connection, msg_id: &MessageId) -> Result<Message> {
    message_tx(tx, msg_id)?.ok_or_else(|| Error::UnknownMessage(msg_id.to_text()))
}

fn require_incoming(
    tx: &rusqlite::Connection,
    peer: &PublicKey,
    msg_id: &MessageId,
) -> Result<Message> {
    incoming_tx(tx, peer, msg_id)?.ok_or_else(|| Error::UnknownMessage(msg_id.to_text()))
}

/// Appends one row to a message's timeline, after its last.
pub(crate) fn append_event(
    tx: &rusqlite::Connection,
    rowid: i64,
    status: Status,
    at: &str,
    detail: Option<&str>,
) -> Result<()> {
    tx.prepare_cached(
        "INSERT INTO message_events (message_id, seq, status, at, detail)
         VALUES (?1, (SELECT count(*) FROM message_events WHERE message_id = ?1),
                 ?2, ?3, ?4)",
    )?
    .execute(params![rowid, status, at, detail])?;
    Ok(())
}

/// Stores a new outgoing message, `pending`, before anything is sent.
pub fn insert_outgoing_tx(tx: &Transaction<'_>, peer: &PublicKey, body: &str) -> Result<Message> {
    let msg_id = MessageId::new_v7();
    let now = clock::now();
    tx.execute(
        "INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at)
         VALUES (?1, ?2, 'out', ?3, 'pending', ?4)",
        params![msg_id, peer.to_base64(), body, now],
    )?;
    append_event(tx, tx.last_insert_rowid(), Status::Pending, &now, None)?;
    require(tx, &msg_id)
}

/// Stores a received message unless this sender's message with this id is
/// already stored (at-least-once delivery repeats messages; another
/// sender's id is no duplicate). `created_at` is the author's clock, as RFC
/// 3339; it is stored in the canonical form so times sort as text, and a
/// time that does not parse is replaced by the time of receipt rather than
/// losing the message.
pub fn insert_incoming_tx(
    tx: &Transaction<'_>,
    msg_id: &MessageId,
    peer: &PublicKey,
    body: &str,
    created_at: &str,
) -> Result<Inserted> {
    let contact: Option<String> = tx
        .prepare_cached("SELECT name FROM contacts WHERE public_key = ?1")?
        .query_row([peer.to_base64()], |row| row.get(0))
        .optional()?;
    let incoming = Incoming {
        msg_id,
        peer,
        contact: contact.as_deref(),
        body,
        created_at,
    };
    insert_incoming_at_tx(tx, &incoming, &clock::now())
}

/// A message received, as [`insert_incoming_at_tx`] stores it.
#[derive(Debug, Clone, Copy)]
pub struct Incoming<'a> {
    /// The sender's id for it.
    pub msg_id: &'a MessageId,
    /// Its sender.
    pub peer: &'a PublicKey,
    /// The sender's contact name, if a contact.
    pub contact: Option<&'a str>,
    /// The text.
    pub body: &'a str,
    /// The author's clock (any RFC 3339 form; normalized here).
    pub created_at: &'a str,
}

/// [`insert_incoming_tx`] for a batch: the caller knows the sender's
/// contact name and gives the time of storing (`now`, one for the whole
/// transaction), so storing a message reads nothing back.
pub fn insert_incoming_at_tx(
    tx: &Transaction<'_>,
    incoming: &Incoming<'_>,
    now: &str,
) -> Result<Inserted> {
    let created_at = clock::normalize(incoming.created_at).unwrap_or_else(|| now.to_owned());
    let peer_key = incoming.peer.to_base64();
    let added = tx
        .prepare_cached(
            "INSERT INTO messages
                 (msg_id, peer_key, direction, body, status, created_at, received_at)
             VALUES (?1, ?2, 'in', ?3, 'received', ?4, ?5)
             ON CONFLICT (peer_key, msg_id) WHERE direction = 'in' DO NOTHING",
        )?
        .execute(params![
            incoming.msg_id,
            peer_key,
            incoming.body,
            created_at,
            now
        ])?;
    if added == 0 {
        return Ok(Inserted::Duplicate);
    }
    let id = tx.last_insert_rowid();
    append_event(tx, id, Status::Received, now, None)?;
    Ok(Inserted::New(Box::new(Message {
        id,
        msg_id: *incoming.msg_id,
        peer_key,
        contact: incoming.contact.map(str::to_owned),
        direction: Direction::In,
        body: incoming.body.to_owned(),
        status: Status::Received,
        created_at,
        sent_at: None,
        delivered_at: None,
        read_at: None,
        received_at: Some(now.to_owned()),
        failed_at: None,
        failure_reason: None,
    })))
}

/// Moves our own message `msg_id` (see [`message_tx`]) to `status` at
/// time `at` if [`Status::may_become`] allows it, setting the matching
/// `*_at` column (and `failure_reason` from `detail` for `failed`) and
/// appending the event. Returns whether anything changed: a repeated or
/// late event changes nothing and appends nothing.
pub fn apply_status_tx(
    tx: &Transaction<'_>,
    msg_id: &MessageId,
    status: Status,
    at: &str,
    detail: Option<&str>,
) -> Result<bool> {
    let current = require(tx, msg_id)?;
    apply_to(tx, &current, status, at, detail)
}

/// Marks the message `peer` sent us with `msg_id` as read at `at`.
/// Returns whether it changed (it was not read yet).
pub fn mark_incoming_read_tx(
    tx: &Transaction<'_>,
    peer: &PublicKey,
    msg_id: &MessageId,
    at: &str,
) -> Result<bool> {
    let current = require_incoming(tx, peer, msg_id)?;
    apply_to(tx, &current, Status::Read, at, None)
}

/// See [`apply_status_tx`].
fn apply_to(
    tx: &Transaction<'_>,
    current: &Message,
    status: Status,
    at: &str,
    detail: Option<&str>,
) -> Result<bool> {
    if !status.fits(current.direction) {
        return Err(Error::StatusMismatch {
            msg_id: current.msg_id.to_text(),
            direction: current.direction.to_string(),
            status: status.to_string(),
        });
    }
    if !current.status.may_become(status) {
        return Ok(false);
    }
    // The column name comes from a closed match, never from input.
    let column = status.time_column();
    let reason = if status == Status::Failed {
        detail
    } else {
        None
    };
    tx.prepare_cached(&format!(
        "UPDATE messages SET status = ?1, {column} = ?2,
             failure_reason = CASE WHEN ?1 = 'failed' THEN ?3 ELSE NULL END
         WHERE id = ?4"
    ))?
    .execute(params![status, at, reason, current.id])?;
    append_event(tx, current.id, status, at, detail)?;
    Ok(true)
}

/// Outgoing messages still `pending`, oldest first: what to send on connect.
pub fn outbox_tx(tx: &rusqlite::Connection) -> Result<Vec<Message>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
         WHERE m.status = 'pending' AND m.direction = 'out'
         ORDER BY m.id"
    ))?;
    let rows = stmt.query_map([], message_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Up to `limit` outgoing messages still `pending` with a local row id
/// above `after`, oldest first: the outbox read a page at a time.
pub fn outbox_after_tx(
    tx: &rusqlite::Connection,
    after: i64,
    limit: usize,
) -> Result<Vec<Message>> {
    let mut stmt = tx.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
         WHERE m.status = 'pending' AND m.direction = 'out' AND m.id > ?1
         ORDER BY m.id LIMIT ?2"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map(rusqlite::params![after, limit], message_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The timeline of our own message `msg_id`, oldest first.
pub fn events_tx(tx: &rusqlite::Connection, msg_id: &MessageId) -> Result<Vec<Event>> {
    match message_tx(tx, msg_id)? {
        Some(m) => timeline_tx(tx, m.id),
        None => Ok(Vec::new()),
    }
}

/// The timeline of the message with local row id `rowid`, oldest first.
pub fn timeline_tx(tx: &rusqlite::Connection, rowid: i64) -> Result<Vec<Event>> {
    let mut stmt = tx.prepare_cached(
        "SELECT status, at, detail FROM message_events
         WHERE message_id = ?1 ORDER BY seq",
    )?;
    let rows = stmt.query_map([rowid], |r| {
        Ok(Event {
            status: r.get(0)?,
            at: r.get(1)?,
            detail: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Opens a transaction for the `*_tx` functions. It takes the write
    /// lock at once (IMMEDIATE): a transaction that read first and writes
    /// later could otherwise fail half-way when another process wrote in
    /// between; this way it waits (busy timeout) before starting instead.
    pub fn transaction(&mut self) -> Result<Transaction<'_>> {
        Ok(self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)?)
    }

    /// The transaction of a bulk import. On an import's fresh copy it is
    /// deferred: no other process can open the copy anyway, and an
    /// immediate one would also lock the FTS scratch attached to it, which
    /// another thread is filling (see [`super::fts_build`]).
    pub(crate) fn bulk_transaction(&mut self) -> Result<Transaction<'_>> {
        let behavior = if self.fts_scratch.is_some() {
            TransactionBehavior::Deferred
        } else {
            TransactionBehavior::Immediate
        };
        Ok(self.conn.transaction_with_behavior(behavior)?)
    }

    /// See [`insert_outgoing_tx`].
    pub fn insert_outgoing(&mut self, peer: &PublicKey, body: &str) -> Result<Message> {
        let tx = self.transaction()?;
        let message = insert_outgoing_tx(&tx, peer, body)?;
        tx.commit()?;
        Ok(message)
    }

    /// See [`insert_incoming_tx`].
    pub fn insert_incoming(
        &mut self,
        msg_id: &MessageId,
        peer: &PublicKey,
        body: &str,
        created_at: &str,
    ) -> Result<Inserted> {
        let tx = self.transaction()?;
        let inserted = insert_incoming_tx(&tx, msg_id, peer, body, created_at)?;
        tx.commit()?;
        Ok(inserted)
    }

    /// See [`mark_incoming_read_tx`].
    pub fn mark_incoming_read(
        &mut self,
        peer: &PublicKey,
        msg_id: &MessageId,
        at: &str,
    ) -> Result<bool> {
        let tx = self.transaction()?;
        let changed = mark_incoming_read_tx(&tx, peer, msg_id, at)?;
        tx.commit()?;
        Ok(changed)
    }

    /// See [`apply_status_tx`].
    pub fn apply_status(
        &mut self,
        msg_id: &MessageId,
        status: Status,
        at: &str,
        detail: Option<&str>,
    ) -> Result<bool> {
        let tx = self.transaction()?;
        let changed = apply_status_tx(&tx, msg_id, status, at, detail)?;
        tx.commit()?;
        Ok(changed)
    }

    /// See [`outbox_tx`].
    pub fn outbox(&self) -> Result<Vec<Message>> {
        outbox_tx(&self.conn)
    }

    /// Our own message with `msg_id`, if stored (see [`message_tx`]).
    pub fn message(&self, msg_id: &MessageId) -> Result<Option<Message>> {
        message_tx(&self.conn, msg_id)
    }

    /// The message `peer` sent us with `msg_id`, if stored.
    pub fn incoming(&self, peer: &PublicKey, msg_id: &MessageId) -> Result<Option<Message>> {
        incoming_tx(&self.conn, peer, msg_id)
    }

    /// How many messages are stored.
    pub fn message_count(&self) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// See [`events_tx`].
    pub fn events(&self, msg_id: &MessageId) -> Result<Vec<Event>> {
        events_tx(&self.conn, msg_id)
    }

    /// See [`timeline_tx`].
    pub fn timeline(&self, message: &Message) -> Result<Vec<Event>> {
        timeline_tx(&self.conn, message.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    fn statuses(store: &Store, id: &MessageId) -> Vec<Status> {
        store
            .events(id)
            .unwrap()
            .into_iter()
            .map(|e| e.status)
            .collect()
    }

    #[test]
    fn outgoing_starts_pending_in_the_outbox() {
        let (_dir, mut store) = temp_store();
        let m = store.insert_outgoing(&key(), "hello").unwrap();
        assert_eq!(m.status, Status::Pending);
        assert_eq!(m.direction, Direction::Out);
        assert_eq!(store.outbox().unwrap(), vec![m.clone()]);
        assert_eq!(statuses(&store, &m.msg_id), [Status::Pending]);
    }

    #[test]
    fn status_moves_forward_only_and_logs_each_change() {
        let (_dir, mut store) = temp_store();
        let m = store.insert_outgoing(&key(), "hi").unwrap();
        let id = m.msg_id;
        assert!(store
            .apply_status(&id, Status::Sent, "2026-01-01T00:00:01.000Z", None)
            .unwrap());
        // Out of order: read arrives before delivered.
        assert!(store
            .apply_status(&id, Status::Read, "2026-01-01T00:00:03.000Z", None)
            .unwrap());
        assert!(!store
            .apply_status(&id, Status::Delivered, "2026-01-01T00:00:02.000Z", None)
            .unwrap());
        assert!(!store
            .apply_status(&id, Status::Read, "2026-01-01T00:00:04.000Z", None)
            .unwrap());
        assert!(!store
            .apply_status(&id, Status::Failed, "2026-01-01T00:00:05.000Z", Some("x"))
            .unwrap());
        let now = store.message(&id).unwrap().unwrap();
        assert_eq!(now.status, Status::Read);
        assert_eq!(now.sent_at.as_deref(), Some("2026-01-01T00:00:01.000Z"));
        assert_eq!(now.delivered_at, None);
        assert_eq!(now.read_at.as_deref(), Some("2026-01-01T00:00:03.000Z"));
        assert_eq!(
            statuses(&store, &id),
            [Status::Pending, Status::Sent, Status::Read]
        );
        assert!(store.outbox().unwrap().is_empty());
    }

    #[test]
    fn failure_keeps_its_reason() {
        let (_dir, mut store) = temp_store();
        let id = store.insert_outgoing(&key(), "hi").unwrap().msg_id;
        let at = "2026-01-01T00:00:01.000Z";
        assert!(store
            .apply_status(&id, Status::Failed, at, Some("router refused"))
            .unwrap());
        let m = store.message(&id).unwrap().unwrap();
        assert_eq!(m.status, Status::Failed);
        assert_eq!(m.failure_reason.as_deref(), Some("router refused"));
        assert_eq!(m.failed_at.as_deref(), Some(at));
        let events = store.events(&id).unwrap();
        assert_eq!(events[1].detail.as_deref(), Some("router refused"));
        assert!(!store.apply_status(&id, Status::Failed, at, None).unwrap());
    }

    fn incoming_statuses(store: &Store, peer: &PublicKey, id: &MessageId) -> Vec<Status> {
        let m = store.incoming(peer, id).unwrap().unwrap();
        store
            .timeline(&m)
            .unwrap()
            .into_iter()
            .map(|e| e.status)
            .collect()
    }

    #[test]
    fn incoming_is_deduplicated_by_sender_and_id() {
        let (_dir, mut store) = temp_store();
        let (id, peer) = (MessageId::new_v7(), key());
        let at = "2026-01-01T00:00:00.000Z";
        let first = store.insert_incoming(&id, &peer, "yo", at).unwrap();
        assert!(matches!(first, Inserted::New(m) if m.status == Status::Received));
        assert_eq!(
            store.insert_incoming(&id, &peer, "yo", at).unwrap(),
            Inserted::Duplicate
        );
        assert_eq!(incoming_statuses(&store, &peer, &id), [Status::Received]);
        assert!(store.mark_incoming_read(&peer, &id, at).unwrap());
        assert!(!store.mark_incoming_read(&peer, &id, at).unwrap());
        assert_eq!(
            incoming_statuses(&store, &peer, &id),
            [Status::Received, Status::Read]
        );
    }

    #[test]
    fn another_senders_message_with_the_same_id_is_not_a_duplicate() {
        let (_dir, mut store) = temp_store();
        let (id, alice, mallory) = (MessageId::new_v7(), key(), key());
        let at = "2026-01-01T00:00:00.000Z";
        let first = store.insert_incoming(&id, &mallory, "first", at).unwrap();
        assert!(matches!(first, Inserted::New(_)));
        let second = store.insert_incoming(&id, &alice, "second", at).unwrap();
        assert!(matches!(second, Inserted::New(m) if m.body == "second"));
        assert_eq!(store.incoming(&alice, &id).unwrap().unwrap().body, "second");
        assert_eq!(
            store.incoming(&mallory, &id).unwrap().unwrap().body,
            "first"
        );
        // Marking one read leaves the other alone.
        assert!(store.mark_incoming_read(&alice, &id, at).unwrap());
        let m = store.incoming(&mallory, &id).unwrap().unwrap();
        assert_eq!(m.status, Status::Received);
        // Our own message with that id is no clash either, and acks find
        // only it.
        let out = store.insert_outgoing(&alice, "mine").unwrap();
        store
            .insert_incoming(&out.msg_id, &alice, "echo", at)
            .unwrap();
        assert_eq!(store.message(&out.msg_id).unwrap().unwrap().body, "mine");
        assert!(store.message(&id).unwrap().is_none());
    }

    #[test]
    fn incoming_times_are_stored_in_canonical_form() {
        let (_dir, mut store) = temp_store();
        let (id, peer) = (MessageId::new_v7(), key());
        store
            .insert_incoming(&id, &peer, "x", "2026-01-01T01:00:00+01:00")
            .unwrap();
        let m = store.incoming(&peer, &id).unwrap().unwrap();
        assert_eq!(m.created_at, "2026-01-01T00:00:00.000Z");
        let id = MessageId::new_v7();
        store.insert_incoming(&id, &peer, "x", "garbage").unwrap();
        let m = store.incoming(&peer, &id).unwrap().unwrap();
        assert_eq!(Some(m.created_at), m.received_at);
    }

    #[test]
    fn statuses_of_the_other_direction_are_refused() {
        let (_dir, mut store) = temp_store();
        let at = "2026-01-01T00:00:00.000Z";
        let id = store.insert_outgoing(&key(), "yo").unwrap().msg_id;
        assert!(matches!(
            store.apply_status(&id, Status::Received, at, None),
            Err(Error::StatusMismatch { .. })
        ));
        assert!(matches!(
            store.apply_status(&MessageId::new_v7(), Status::Read, at, None),
            Err(Error::UnknownMessage(_))
        ));
    }

    #[test]
    fn messages_show_the_contact_name_when_there_is_one() {
        let (_dir, mut store) = temp_store();
        let peer = key();
        let m = store.insert_outgoing(&peer, "hi").unwrap();
        assert_eq!(m.contact, None);
        let name = crate::store::ContactName::parse("bob").unwrap();
        store.add_contact(&name, &peer).unwrap();
        let m = store.message(&m.msg_id).unwrap().unwrap();
        assert_eq!(m.contact.as_deref(), Some("bob"));
    }
}

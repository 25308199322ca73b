//! Keeping one identity's devices in step: the `sync_outbox` table (what
//! this device tells its other devices, until the router has it) and the
//! `sync_early` table (receipts and reads that came before their message).
//!
//! Rows are written in the transaction of the change they report: a copy
//! of a sent message in the one that marks it `sent` (so the copy carries
//! the router's time), a read in the one that marks messages read, a
//! contact change in the one that makes it. Each is deleted when the
//! router acknowledges its frame; the engine seals them
//! (`crate::client::Engine`). See `migrations/V9__device_sync.sql`.

use rusqlite::{params, OptionalExtension, Transaction};

use super::messages::{append_event, message_tx, Inserted};
use super::receipts::MAX_IDS_PER_RECEIPT;
use super::status::{Direction, MessageId, Status};
use super::{Error, Result};
use crate::clock;
use crate::identity::PublicKey;

/// Early receipts and reads older than this many days are dropped: the
/// router keeps frames no longer by default, so their message will not
/// come any more.
const EARLY_KEEP_DAYS: i64 = 30;

/// At most this many early receipts and reads are kept (a stranger can
/// send receipts naming any ids); the oldest go first.
const EARLY_MAX_ROWS: i64 = 10_000;

/// What a contact change did, as the other devices are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContactChange {
    /// A contact was saved.
    Add,
    /// A contact got another name.
    Rename,
    /// A contact was removed.
    Remove,
}

impl ContactChange {
    fn as_str(self) -> &'static str {
        match self {
            Self::Add => "add",
            Self::Rename => "rename",
            Self::Remove => "remove",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "add" => Some(Self::Add),
            "rename" => Some(Self::Rename),
            "remove" => Some(Self::Remove),
            _ => None,
        }
    }
}

/// Something to tell this identity's other devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncItem {
    /// A copy of our message `msg_id` to `peer`, built from its row when
    /// sent.
    Sent {
        /// The message's peer.
        peer: PublicKey,
        /// The message.
        msg_id: MessageId,
    },
    /// These messages from `peer` were read here.
    Read {
        /// Who wrote them.
        peer: PublicKey,
        /// Which.
        msg_ids: Vec<MessageId>,
    },
    /// The contact with `key` was added, renamed or removed here.
    Contact {
        /// What happened.
        change: ContactChange,
        /// The contact's key.
        key: PublicKey,
        /// Its name (none when removed).
        name: Option<String>,
    },
}

/// A [`SyncItem`] waiting for the router's acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingSync {
    /// The frame's wire id.
    pub item_id: MessageId,
    /// What to tell.
    pub item: SyncItem,
    /// The frame's timestamp: when it happened here.
    pub created_at: String,
}

/// Queues `item`, dated `at` (reads are split into frames of at most
/// [`MAX_IDS_PER_RECEIPT`] ids). Returns what was queued.
pub fn queue_sync_tx(
    conn: &rusqlite::Connection,
    item: &SyncItem,
    at: &str,
) -> Result<Vec<PendingSync>> {
    let mut insert = conn.prepare_cached(
        "INSERT INTO sync_outbox (item_id, kind, peer_key, msg_ids, op, name, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?;
    let parts: Vec<SyncItem> = match item {
        SyncItem::Read { peer, msg_ids } => msg_ids
            .chunks(MAX_IDS_PER_RECEIPT)
            .map(|chunk| SyncItem::Read {
                peer: *peer,
                msg_ids: chunk.to_vec(),
            })
            .collect(),
        other => vec![other.clone()],
    };
    let mut queued = Vec::with_capacity(parts.len());
    for item in parts {
        let (kind, key, ids, op, name) = match &item {
            SyncItem::Sent { peer, msg_id } => ("sent", peer, vec![*msg_id], None, None),
            SyncItem::Read { peer, msg_ids } => ("read-sync", peer, msg_ids.clone(), None, None),
            SyncItem::Contact { change, key, name } => (
                "contact",
                key,
                Vec::new(),
                Some(change.as_str()),
                name.as_deref(),
            ),
        };
        let ids = serde_json::to_string(&ids).map_err(|e| corrupt(e.to_string()))?;
        let item_id = MessageId::new_v7();
        insert.execute(params![item_id, kind, key.to_base64(), ids, op, name, at])?;
        queued.push(PendingSync {
            item_id,
            item: item.clone(),
            created_at: at.to_owned(),
        });
    }
    Ok(queued)
}

/// Everything not yet acknowledged by the router, oldest first.
pub fn pending_sync_tx(conn: &rusqlite::Connection) -> Result<Vec<PendingSync>> {
    first_pending_sync_tx(conn, usize::MAX)
}

/// The `limit` oldest items not yet acknowledged by the router: a sender
/// that has `n` in flight (always the oldest, as they go out in order) and
/// room for `m` more needs only the first `n + m`, however long the queue.
pub fn first_pending_sync_tx(
    conn: &rusqlite::Connection,
    limit: usize,
) -> Result<Vec<PendingSync>> {
    let mut stmt = conn.prepare_cached(
        "SELECT item_id, kind, peer_key, msg_ids, op, name, created_at
         FROM sync_outbox
         ORDER BY id
         LIMIT ?1",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = stmt.query_map([limit], |r| {
        Ok((
            r.get::<_, MessageId>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, Option<String>>(4)?,
            r.get::<_, Option<String>>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let mut items = Vec::new();
    for row in rows {
        let (item_id, kind, key, ids, op, name, created_at) = row?;
        let key = PublicKey::parse(&key).map_err(|e| corrupt(e.to_string()))?;
        let mut msg_ids: Vec<MessageId> =
            serde_json::from_str(&ids).map_err(|e| corrupt(e.to_string()))?;
        let item = match (kind.as_str(), op.as_deref().and_then(ContactChange::parse)) {
            ("sent", _) => SyncItem::Sent {
                peer: key,
                msg_id: msg_ids
                    .pop()
                    .ok_or_else(|| corrupt("a copy of no message".into()))?,
            },
            ("read-sync", _) => SyncItem::Read { peer: key, msg_ids },
            ("contact", Some(change)) => SyncItem::Contact { change, key, name },
            _ => return Err(corrupt(format!("unknown item '{kind}'"))),
        };
        items.push(PendingSync {
            item_id,
            item,
            created_at,
        });
    }
    Ok(items)
}

/// Forgets the item `item_id` (the router has it). Returns whether it was
/// queued.
pub fn remove_sync_tx(conn: &rusqlite::Connection, item_id: &MessageId) -> Result<bool> {
    let removed = conn
        .prepare_cached("DELETE FROM sync_outbox WHERE item_id = ?1")?
        .execute([item_id])?;
    Ok(removed > 0)
}

/// Stores the copy of a message this identity sent from another device,
/// as outgoing with the original's id: `sent` at `sent_at`, with the
/// timeline `pending` (at `created_at`), `sent` (at `sent_at`). A copy
/// without the router's time (the sending device had a receipt before the
/// router's ack, so it never recorded one either) is `sent` with no `sent`
/// event, as that device shows it. A copy already stored is a duplicate.
pub fn insert_copy_tx(
    tx: &Transaction<'_>,
    msg_id: &MessageId,
    peer: &PublicKey,
    body: &str,
    created_at: &str,
    sent_at: Option<&str>,
) -> Result<Inserted> {
    let added = tx
        .prepare_cached(
            "INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at, sent_at)
             VALUES (?1, ?2, 'out', ?3, 'sent', ?4, ?5)
             ON CONFLICT (msg_id) WHERE direction = 'out' DO NOTHING",
        )?
        .execute(params![msg_id, peer.to_base64(), body, created_at, sent_at])?;
    if added == 0 {
        return Ok(Inserted::Duplicate);
    }
    let rowid = tx.last_insert_rowid();
    append_event(tx, rowid, Status::Pending, created_at, None)?;
    if let Some(at) = sent_at {
        append_event(tx, rowid, Status::Sent, at, None)?;
    }
    let message = message_tx(tx, msg_id)?.ok_or_else(|| corrupt("the copy vanished".into()))?;
    Ok(Inserted::New(Box::new(message)))
}

/// Keeps a receipt (`direction` out: `status` from `peer` about our
/// message) or a read on another device (`direction` in) whose message is
/// not here yet, dropping what is too old or too much.
pub fn keep_early_tx(
    conn: &rusqlite::Connection,
    peer: &PublicKey,
    msg_id: &MessageId,
    direction: Direction,
    status: Status,
    at: &str,
) -> Result<()> {
    let now = chrono::Utc::now();
    conn.prepare_cached(
        "INSERT INTO sync_early (peer_key, msg_id, direction, status, at, stored_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (peer_key, msg_id, direction, status) DO NOTHING",
    )?
    .execute(params![
        peer.to_base64(),
        msg_id,
        direction,
        status,
        at,
        clock::format(now)
    ])?;
    let cutoff = clock::format(now - chrono::Duration::days(EARLY_KEEP_DAYS));
    conn.prepare_cached(
        "DELETE FROM sync_early
         WHERE stored_at < ?1 OR id <= (SELECT max(id) FROM sync_early) - ?2",
    )?
    .execute(params![cutoff, EARLY_MAX_ROWS])?;
    Ok(())
}

/// Whether anything waits in `sync_early`, so a batch of messages can skip
/// looking each one up.
pub fn any_early_tx(conn: &rusqlite::Connection) -> Result<bool> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sync_early LIMIT 1")?
        .query_row([], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Takes (returns and deletes) what was kept for the message `msg_id` with
/// `peer` in `direction`, as (status, time) in the order it came.
pub fn take_early_tx(
    conn: &rusqlite::Connection,
    peer: &PublicKey,
    msg_id: &MessageId,
    direction: Direction,
) -> Result<Vec<(Status, String)>> {
    let key = peer.to_base64();
    let mut stmt = conn.prepare_cached(
        "SELECT status, at FROM sync_early
         WHERE peer_key = ?1 AND msg_id = ?2 AND direction = ?3
         ORDER BY id",
    )?;
    let early = stmt
        .query_map(params![key, msg_id, direction], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    if !early.is_empty() {
        conn.prepare_cached(
            "DELETE FROM sync_early WHERE peer_key = ?1 AND msg_id = ?2 AND direction = ?3",
        )?
        .execute(params![key, msg_id, direction])?;
    }
    Ok(early)
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        what: "device sync item",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::schema::profile_at_version;
    use crate::store::test_util::temp_store;
    use crate::store::{sync_contact_tx, ContactName, Store, SyncedContact};

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    #[test]
    fn items_wait_in_order_until_removed() {
        let (_dir, mut store) = temp_store();
        let (bob, at) = (key(), "2026-01-01T00:00:00.000Z");
        let msg_id = MessageId::new_v7();
        let many: Vec<_> = (0..MAX_IDS_PER_RECEIPT + 1)
            .map(|_| MessageId::new_v7())
            .collect();
        let tx = store.transaction().unwrap();
        queue_sync_tx(&tx, &SyncItem::Sent { peer: bob, msg_id }, at).unwrap();
        let read = SyncItem::Read {
            peer: bob,
            msg_ids: many.clone(),
        };
        queue_sync_tx(&tx, &read, at).unwrap();
        let contact = SyncItem::Contact {
            change: ContactChange::Remove,
            key: bob,
            name: None,
        };
        queue_sync_tx(&tx, &contact, at).unwrap();
        tx.commit().unwrap();
        let items = pending_sync_tx(store.conn()).unwrap();
        let kinds: Vec<_> = items.iter().map(|i| &i.item).collect();
        assert_eq!(kinds[0], &SyncItem::Sent { peer: bob, msg_id });
        // A long read is split like receipts.
        assert!(
            matches!(kinds[1], SyncItem::Read { msg_ids, .. } if msg_ids[..] == many[..MAX_IDS_PER_RECEIPT])
        );
        assert!(matches!(kinds[2], SyncItem::Read { msg_ids, .. } if msg_ids.len() == 1));
        assert_eq!(kinds[3], &contact);
        assert!(items.iter().all(|i| i.created_at == at));
        assert!(remove_sync_tx(store.conn(), &items[0].item_id).unwrap());
        assert!(!remove_sync_tx(store.conn(), &items[0].item_id).unwrap());
        assert_eq!(pending_sync_tx(store.conn()).unwrap().len(), 3);
    }

    #[test]
    fn a_copy_is_stored_once_as_sent_with_its_times() {
        let (_dir, mut store) = temp_store();
        let (bob, id) = (key(), MessageId::new_v7());
        let (created, sent) = ("2026-01-01T00:00:00.000Z", "2026-01-01T00:00:01.000Z");
        let tx = store.transaction().unwrap();
        let first = insert_copy_tx(&tx, &id, &bob, "hi", created, Some(sent)).unwrap();
        let again = insert_copy_tx(&tx, &id, &bob, "hi", created, Some(sent)).unwrap();
        tx.commit().unwrap();
        let Inserted::New(m) = first else {
            panic!("not stored: {first:?}")
        };
        assert_eq!(again, Inserted::Duplicate);
        assert_eq!(
            (m.direction, m.status, m.sent_at.as_deref()),
            (Direction::Out, Status::Sent, Some(sent))
        );
        let events = store.events(&id).unwrap();
        let events: Vec<_> = events.iter().map(|e| (e.status, e.at.as_str())).collect();
        assert_eq!(events, [(Status::Pending, created), (Status::Sent, sent)]);
        // Never sent again from here.
        assert!(store.outbox().unwrap().is_empty());
        assert_eq!(store.message_count().unwrap(), 1);
    }

    #[test]
    fn early_rows_are_taken_once_and_old_ones_dropped() {
        let (_dir, mut store) = temp_store();
        let (bob, id) = (key(), MessageId::new_v7());
        let at = "2026-01-01T00:00:00.000Z";
        let tx = store.transaction().unwrap();
        assert!(!any_early_tx(&tx).unwrap());
        keep_early_tx(&tx, &bob, &id, Direction::Out, Status::Delivered, at).unwrap();
        keep_early_tx(&tx, &bob, &id, Direction::Out, Status::Delivered, at).unwrap();
        keep_early_tx(&tx, &bob, &id, Direction::Out, Status::Read, at).unwrap();
        assert!(any_early_tx(&tx).unwrap());
        assert!(take_early_tx(&tx, &bob, &id, Direction::In)
            .unwrap()
            .is_empty());
        assert!(take_early_tx(&tx, &key(), &id, Direction::Out)
            .unwrap()
            .is_empty());
        let taken = take_early_tx(&tx, &bob, &id, Direction::Out).unwrap();
        assert_eq!(
            taken,
            [
                (Status::Delivered, at.to_owned()),
                (Status::Read, at.to_owned())
            ]
        );
        assert!(take_early_tx(&tx, &bob, &id, Direction::Out)
            .unwrap()
            .is_empty());
        // A row kept long ago goes when the next one comes.
        tx.execute(
            "INSERT INTO sync_early (peer_key, msg_id, direction, status, at, stored_at)
             VALUES ('k', 'old', 'in', 'read', ?1, ?1)",
            [at],
        )
        .unwrap();
        keep_early_tx(&tx, &bob, &id, Direction::In, Status::Read, at).unwrap();
        let rows: i64 = tx
            .query_row("SELECT count(*) FROM sync_early", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1);
        tx.commit().unwrap();
    }

    fn synced(
        store: &mut Store,
        change: ContactChange,
        key: &PublicKey,
        name: &str,
    ) -> SyncedContact {
        let tx = store.transaction().unwrap();
        let done = sync_contact_tx(
            &tx,
            None,
            change,
            key,
            Some(name),
            "2026-01-01T00:00:00.000Z",
        )
        .unwrap();
        tx.commit().unwrap();
        done
    }

    fn name(n: &str) -> ContactName {
        ContactName::parse(n).unwrap()
    }

    #[test]
    fn a_synced_name_taken_here_gets_the_first_free_number() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("bob"), &key()).unwrap();
        // Look-alikes count as taken: a Cyrillic о.
        let other = key();
        let done = synced(&mut store, ContactChange::Add, &other, "b\u{043e}b");
        assert_eq!(done, SyncedContact::Named("b\u{043e}b (2)".into()));
        // The same change again changes nothing, and neither does a rename
        // to the name it already has here.
        assert_eq!(
            synced(&mut store, ContactChange::Add, &other, "b\u{043e}b"),
            SyncedContact::Unchanged
        );
        // Nothing syncing did is queued for the other devices.
        let queued = pending_sync_tx(store.conn()).unwrap();
        assert_eq!(queued.len(), 1, "only the add-contact made here");
        // A long name is shortened to make room for its number.
        let long = "x".repeat(64);
        store.add_contact(&name(&long), &key()).unwrap();
        let done = synced(&mut store, ContactChange::Add, &key(), &long);
        let expected = format!("{} (2)", "x".repeat(60));
        assert_eq!(done, SyncedContact::Named(expected));
    }

    #[test]
    fn when_every_number_is_taken_the_change_is_left_out() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("eve"), &key()).unwrap();
        for n in 2..=9 {
            store
                .add_contact(&name(&format!("eve ({n})")), &key())
                .unwrap();
        }
        let late = key();
        assert_eq!(
            synced(&mut store, ContactChange::Add, &late, "eve"),
            SyncedContact::Unchanged
        );
        assert!(store.contact_by_key(&late).unwrap().is_none());
        // A remove of a key not saved here is nothing either.
        assert_eq!(
            synced(&mut store, ContactChange::Remove, &late, "eve"),
            SyncedContact::Unchanged
        );
    }

    #[test]
    fn a_profile_from_before_devices_upgrades_with_its_messages() {
        let (_dir, path, conn) = profile_at_version(8);
        conn.execute(
            "INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at)
             VALUES ('0193a1b2-c3d4-7e5f-8a6b-7c8d9e0f1a2b', 'k', 'out', 'hi', 'sent',
                     '2026-01-01T00:00:00.000Z')",
            [],
        )
        .unwrap();
        drop(conn);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.message_count().unwrap(), 1);
        assert!(pending_sync_tx(store.conn()).unwrap().is_empty());
        assert!(!any_early_tx(store.conn()).unwrap());
    }
}

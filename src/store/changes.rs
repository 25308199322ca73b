//! What other processes of the profile changed: the questions a process
//! that does not own the router session (see [`crate::client::owner`])
//! asks to follow the one that does, and that the owner asks to notice
//! what the others stored for it to send.

use super::messages::{message_from_row, MESSAGE_COLUMNS, MESSAGE_FROM};
use super::{Message, Result, Status, Store};

/// Outgoing messages with a row id above `floor`: their row id and status,
/// in row order. A range of the primary key: costs what it returns.
pub fn out_statuses_after_tx(
    conn: &rusqlite::Connection,
    floor: i64,
) -> Result<Vec<(i64, Status)>> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, status FROM messages
         WHERE id > ?1 AND direction = 'out'
         ORDER BY id",
    )?;
    let rows = stmt.query_map([floor], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Messages with a row id above `after` (stored since), in row order.
pub fn messages_after_tx(conn: &rusqlite::Connection, after: i64) -> Result<Vec<Message>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
         WHERE m.id > ?1
         ORDER BY m.id"
    ))?;
    let rows = stmt.query_map([after], message_from_row)?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The message with row id `rowid`, if it still exists.
pub fn message_by_rowid_tx(conn: &rusqlite::Connection, rowid: i64) -> Result<Option<Message>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
         WHERE m.id = ?1"
    ))?;
    let mut rows = stmt.query_map([rowid], message_from_row)?;
    Ok(rows.next().transpose()?)
}

impl Store {
    /// A number that changes whenever another connection (another process)
    /// commits to the database: `PRAGMA data_version`, which costs no I/O.
    /// This connection's own commits leave it as it is.
    pub fn data_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "data_version", |r| r.get(0))?)
    }

    /// The highest message row id (0 without messages).
    pub fn last_message_rowid(&self) -> Result<i64> {
        Ok(self
            .conn
            .query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
                r.get(0)
            })?)
    }

    /// Whether anything waits to be sent: pending messages or receipts.
    pub fn has_outgoing_work(&self) -> Result<bool> {
        Ok(self.conn.query_row(
            "SELECT EXISTS (
                 SELECT 1 FROM messages WHERE status = 'pending' AND direction = 'out'
             ) OR EXISTS (SELECT 1 FROM receipt_outbox)",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_util::temp_store;
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn another_connections_commit_changes_the_data_version_ours_do_not() {
        let (_dir, mut store) = temp_store();
        let other = Store::open(store.path()).unwrap();
        let peer = Identity::generate().public_key();
        let before = store.data_version().unwrap();
        store.insert_outgoing(&peer, "mine").unwrap();
        assert_eq!(store.data_version().unwrap(), before);
        let seen = other.data_version().unwrap();
        let mut other = other;
        other.insert_outgoing(&peer, "theirs").unwrap();
        assert_ne!(store.data_version().unwrap(), before);
        assert_eq!(other.data_version().unwrap(), seen);
    }

    #[test]
    fn new_rows_and_outgoing_statuses_by_row_id() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        assert_eq!(store.last_message_rowid().unwrap(), 0);
        assert!(!store.has_outgoing_work().unwrap());
        let a = store.insert_outgoing(&peer, "a").unwrap();
        let b = store.insert_outgoing(&peer, "b").unwrap();
        assert!(store.has_outgoing_work().unwrap());
        store
            .apply_status(&b.msg_id, Status::Sent, &crate::clock::now(), None)
            .unwrap();
        let after_a = messages_after_tx(store.conn(), a.id).unwrap();
        assert_eq!(after_a.len(), 1);
        assert_eq!(after_a[0].body, "b");
        assert_eq!(
            out_statuses_after_tx(store.conn(), 0).unwrap(),
            [(a.id, Status::Pending), (b.id, Status::Sent)]
        );
        assert_eq!(store.last_message_rowid().unwrap(), b.id);
        let found = message_by_rowid_tx(store.conn(), b.id).unwrap().unwrap();
        assert_eq!(found.status, Status::Sent);
        assert!(message_by_rowid_tx(store.conn(), b.id + 1)
            .unwrap()
            .is_none());
    }
}

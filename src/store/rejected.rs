//! The `rejected_messages` table: frames that could not be accepted as a
//! message (bad signature, undecryptable payload), kept as evidence.

use rusqlite::params;

use super::{Result, Store};
use crate::clock;

/// A frame that was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rejected {
    /// The id the frame claimed.
    pub msg_id: String,
    /// The key it claimed to come from.
    pub peer_key: String,
    /// Why it was refused.
    pub reason: String,
    /// When it arrived.
    pub received_at: String,
}

/// Records a refused frame; a second copy of the same frame is ignored.
pub fn record_rejected_tx(
    conn: &rusqlite::Connection,
    msg_id: &str,
    peer_key: &str,
    reason: &str,
) -> Result<bool> {
    let added = conn
        .prepare_cached(
            "INSERT INTO rejected_messages (msg_id, peer_key, reason, received_at)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (msg_id, peer_key) DO NOTHING",
        )?
        .execute(params![msg_id, peer_key, reason, clock::now()])?;
    Ok(added > 0)
}

impl Store {
    /// Every refused frame, oldest first.
    pub fn rejected(&self) -> Result<Vec<Rejected>> {
        let mut stmt = self.conn.prepare(
            "SELECT msg_id, peer_key, reason, received_at
             FROM rejected_messages
             ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Rejected {
                msg_id: r.get(0)?,
                peer_key: r.get(1)?,
                reason: r.get(2)?,
                received_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;

    #[test]
    fn records_each_refused_frame_once() {
        let (_dir, store) = temp_store();
        assert!(record_rejected_tx(store.conn(), "id-1", "key", "bad signature").unwrap());
        assert!(!record_rejected_tx(store.conn(), "id-1", "key", "bad signature").unwrap());
        let rows = store.rejected().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].reason, "bad signature");
    }
}

//! Keeping the full-text index in step with bulk inserts.
//!
//! Live messages are indexed by the `messages_fts_insert` trigger. FTS5
//! flushes its pending terms at every statement savepoint, so a trigger
//! that fires once per inserted row writes one small index segment per row
//! (and merges them): for a batch of rows that is most of the insert's
//! cost. [`FtsBatch`] suspends the trigger inside the caller's transaction
//! and indexes the batch's rows in one statement at the end. If the
//! transaction rolls back, so does the suspension.

use rusqlite::Transaction;

use super::Result;

/// The trigger exactly as `migrations/V2__messages.sql` creates it.
pub(crate) const FTS_INSERT_TRIGGER: &str =
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END";

/// A bulk insert into `messages` with the FTS trigger suspended.
#[derive(Debug)]
#[must_use = "finish() indexes the rows and restores the trigger"]
pub struct FtsBatch {
    first_new_id: i64,
}

impl FtsBatch {
    /// Suspends the per-row trigger for the rest of `tx`.
    pub fn begin(tx: &Transaction<'_>) -> Result<Self> {
        let last: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
            r.get(0)
        })?;
        tx.execute_batch("DROP TRIGGER messages_fts_insert")?;
        Ok(Self {
            first_new_id: last + 1,
        })
    }

    /// Indexes every row inserted since [`FtsBatch::begin`] and restores
    /// the trigger. The caller still commits.
    pub fn finish(self, tx: &Transaction<'_>) -> Result<()> {
        tx.execute(
            "INSERT INTO messages_fts (rowid, body)
             SELECT id, body FROM messages WHERE id >= ?1",
            [self.first_new_id],
        )?;
        tx.execute_batch(FTS_INSERT_TRIGGER)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::messages::insert_incoming_tx;
    use crate::store::test_util::temp_store;
    use crate::store::{Filter, MessageId, Order};

    #[test]
    fn rows_inserted_in_a_batch_are_searchable_and_the_trigger_is_back() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        let tx = store.transaction().unwrap();
        let batch = FtsBatch::begin(&tx).unwrap();
        for n in 0..3 {
            let body = format!("bulk número {n}");
            insert_incoming_tx(
                &tx,
                &MessageId::new_v7(),
                &peer,
                &body,
                "2026-01-01T00:00:00.000Z",
            )
            .unwrap();
        }
        batch.finish(&tx).unwrap();
        tx.commit().unwrap();
        let hits = store
            .search("numero", &Filter::default(), Order::Newest, 10)
            .unwrap();
        assert_eq!(hits.len(), 3);

        // Live inserts are indexed by the trigger again.
        store
            .insert_incoming(
                &MessageId::new_v7(),
                &peer,
                "live numero",
                "2026-01-01T00:00:01.000Z",
            )
            .unwrap();
        let hits = store
            .search("live", &Filter::default(), Order::Newest, 10)
            .unwrap();
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn the_trigger_text_matches_the_migration() {
        let (_dir, store) = temp_store();
        let sql: String = store
            .conn()
            .query_row(
                "SELECT sql FROM sqlite_schema WHERE name = 'messages_fts_insert'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(sql, FTS_INSERT_TRIGGER);
    }

    #[test]
    fn a_rolled_back_batch_leaves_the_trigger_in_place() {
        let (_dir, mut store) = temp_store();
        let tx = store.transaction().unwrap();
        let _batch = FtsBatch::begin(&tx).unwrap();
        drop(tx); // rolls back
        let n: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'messages_fts_insert'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 1);
    }
}

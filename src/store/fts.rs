//! Keeping the full-text indexes in step with bulk inserts.
//!
//! Live messages are indexed by the `messages_fts_insert` trigger (words,
//! unicode61) and `messages_trigram_insert` (substrings of non-ASCII
//! bodies, trigram; see `migrations/V7__trigram_search.sql`). FTS5 flushes
//! its pending terms at every statement savepoint, so a trigger that fires
//! once per inserted row writes one small index segment per row (and
//! merges them): for a batch of rows that is most of the insert's cost.
//! [`FtsBatch`] suspends both triggers inside the caller's transaction and
//! indexes the batch's rows in one statement per index at the end. If the
//! transaction rolls back, so does the suspension.

use rusqlite::Transaction;

use super::Result;

/// The trigger exactly as `migrations/V2__messages.sql` creates it.
pub(crate) const FTS_INSERT_TRIGGER: &str =
    "CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END";

/// The trigger exactly as `migrations/V7__trigram_search.sql` creates it.
pub(crate) const TRIGRAM_INSERT_TRIGGER: &str =
    "CREATE TRIGGER messages_trigram_insert AFTER INSERT ON messages
WHEN length(new.body) <> length(CAST(new.body AS BLOB)) BEGIN
    INSERT INTO messages_trigram (rowid, body) VALUES (new.id, new.body);
END";

/// Drops both per-row insert triggers for the rest of `tx`, returning the
/// first row id a following insert gets.
pub(crate) fn suspend(tx: &Transaction<'_>) -> Result<i64> {
    let last: i64 = tx.query_row("SELECT coalesce(max(id), 0) FROM messages", [], |r| {
        r.get(0)
    })?;
    tx.execute_batch("DROP TRIGGER messages_fts_insert; DROP TRIGGER messages_trigram_insert;")?;
    Ok(last + 1)
}

/// Indexes every row from `first_new_id` on in both indexes and restores
/// the triggers [`suspend`] dropped.
pub(crate) fn resume(tx: &Transaction<'_>, first_new_id: i64) -> Result<()> {
    tx.execute(
        "INSERT INTO messages_fts (rowid, body)
         SELECT id, body FROM messages WHERE id >= ?1",
        [first_new_id],
    )?;
    tx.execute(
        "INSERT INTO messages_trigram (rowid, body)
         SELECT id, body FROM messages_non_ascii WHERE id >= ?1",
        [first_new_id],
    )?;
    tx.execute_batch(FTS_INSERT_TRIGGER)?;
    tx.execute_batch(TRIGRAM_INSERT_TRIGGER)?;
    Ok(())
}

/// A bulk insert into `messages` with the FTS triggers suspended.
#[derive(Debug)]
#[must_use = "finish() indexes the rows and restores the triggers"]
pub struct FtsBatch {
    first_new_id: i64,
}

impl FtsBatch {
    /// Suspends the per-row triggers for the rest of `tx`.
    pub fn begin(tx: &Transaction<'_>) -> Result<Self> {
        Ok(Self {
            first_new_id: suspend(tx)?,
        })
    }

    /// Indexes every row inserted since [`FtsBatch::begin`] and restores
    /// the triggers. The caller still commits.
    pub fn finish(self, tx: &Transaction<'_>) -> Result<()> {
        resume(tx, self.first_new_id)
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
            let body = format!("bulk número {n} 日本語テキスト");
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
        let hits = store
            .search_words("テキスト", &Filter::default(), Order::Newest, 10)
            .unwrap();
        assert_eq!(hits.len(), 3, "the trigram index is filled too");

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
        let sql = |name: &str| -> String {
            store
                .conn()
                .query_row(
                    "SELECT sql FROM sqlite_schema WHERE name = ?1",
                    [name],
                    |r| r.get(0),
                )
                .unwrap()
        };
        assert_eq!(sql("messages_fts_insert"), FTS_INSERT_TRIGGER);
        assert_eq!(sql("messages_trigram_insert"), TRIGRAM_INSERT_TRIGGER);
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
                "SELECT count(*) FROM sqlite_schema
                 WHERE name IN ('messages_fts_insert', 'messages_trigram_insert')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(n, 2);
    }
}

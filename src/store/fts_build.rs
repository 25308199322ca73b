//! Building the full-text indexes of an import into an empty profile on
//! another core, while the import inserts the rows.
//!
//! Filling both FTS5 indexes is a quarter of a large import's time, and
//! SQLite does it on the importing thread after the rows, while the other
//! core waits. For an import through a fresh copy (see [`super::refill`])
//! the indexes are built instead in a scratch database beside the copy
//! (`chat.db.import-tmp.fts`) holding the same two FTS5 tables: the import
//! hands each new row's id and body to a builder thread, which indexes
//! them in large chunks (one statement per chunk: FTS5 writes a segment at
//! every statement) while the import goes on. Before the commit the
//! importing connection copies the scratch's FTS5 shadow tables (the
//! index itself: `_data`, `_idx`, `_docsize`, `_config`) over the profile's,
//! which are empty. The scratch is attached to the copy's connection before
//! the import's transaction (ATTACH is not allowed inside one), and read
//! only after the builder has committed and closed it.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

use rusqlite::{params, Connection, Transaction};

use super::{Error, Result};

/// The schema name the scratch is attached under.
pub(crate) const SCRATCH_SCHEMA: &str = "import_fts";

/// The two FTS5 tables, as named in the profile and in the scratch.
const TABLES: [&str; 2] = ["messages_fts", "messages_trigram"];

/// The shadow tables of an external-content FTS5 table: all of its index.
const SHADOWS: [&str; 4] = ["data", "idx", "docsize", "config"];

/// Rows handed to the builder at a time.
const BATCH: usize = 1024;

/// Rows indexed per statement by the builder (one FTS5 segment each, merged
/// as they come, like those of a single statement over all rows).
const CHUNK: usize = 65_536;

/// Creates the scratch database at `path` with the FTS5 tables of the
/// database `conn` is open on, exactly as that database defines them.
pub(crate) fn create_scratch(conn: &Connection, path: &Path) -> Result<()> {
    let mut definitions = Vec::new();
    for table in TABLES {
        let sql: String = conn.query_row(
            "SELECT sql FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        definitions.push(sql);
    }
    // Readable by the user alone, like the profile: it holds the words.
    super::create_private_file(path)?;
    let scratch = Connection::open(path)?;
    scratch.execute_batch(&format!("{};", definitions.join(";\n")))?;
    Ok(())
}

/// Whether both FTS indexes of the profile are empty, so that copying the
/// scratch's over them loses nothing.
pub(crate) fn indexes_empty(tx: &Transaction<'_>) -> Result<bool> {
    Ok(tx.query_row(
        "SELECT NOT EXISTS (SELECT 1 FROM main.messages_fts_docsize)
            AND NOT EXISTS (SELECT 1 FROM main.messages_trigram_docsize)",
        [],
        |r| r.get(0),
    )?)
}

/// The builder thread, fed row by row.
#[derive(Debug)]
pub(crate) struct ParallelFts {
    feed: Option<SyncSender<Vec<(i64, String)>>>,
    batch: Vec<(i64, String)>,
    builder: Option<JoinHandle<Result<()>>>,
}

impl ParallelFts {
    /// Starts a builder filling the scratch at `path`.
    pub(crate) fn start(path: &Path) -> Self {
        let (feed, rows) = sync_channel::<Vec<(i64, String)>>(64);
        let path: PathBuf = path.to_path_buf();
        let builder = std::thread::spawn(move || {
            yield_to_the_import();
            build(&path, rows.into_iter(), CHUNK)
        });
        Self {
            feed: Some(feed),
            batch: Vec::with_capacity(BATCH),
            builder: Some(builder),
        }
    }

    /// Hands over one new row.
    pub(crate) fn push(&mut self, id: i64, body: String) -> Result<()> {
        self.batch.push((id, body));
        if self.batch.len() >= BATCH {
            self.send()?;
        }
        Ok(())
    }

    fn send(&mut self) -> Result<()> {
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        let sent = match &self.feed {
            Some(feed) => feed.send(batch).is_ok(),
            None => false,
        };
        if sent {
            Ok(())
        } else {
            // The builder stopped: its error says why.
            self.join()
                .and_then(|()| Err(builder_failed("it stopped early")))
        }
    }

    /// Hands over the last rows and lets the builder finish on its own, so
    /// that it runs while the caller does other work.
    pub(crate) fn close(&mut self) -> Result<()> {
        if !self.batch.is_empty() {
            self.send()?;
        }
        self.feed = None;
        Ok(())
    }

    /// Waits for the builder, then replaces the profile's (empty) FTS
    /// indexes by the ones it built and puts the per-row triggers back.
    pub(crate) fn copy_into(mut self, tx: &Transaction<'_>) -> Result<()> {
        self.close()?;
        self.join()?;
        for table in TABLES {
            for shadow in SHADOWS {
                tx.execute_batch(&format!(
                    "DELETE FROM main.{table}_{shadow};
                     INSERT INTO main.{table}_{shadow} SELECT * FROM {SCRATCH_SCHEMA}.{table}_{shadow};"
                ))?;
            }
        }
        tx.execute_batch(super::fts::FTS_INSERT_TRIGGER)?;
        tx.execute_batch(super::fts::TRIGRAM_INSERT_TRIGGER)?;
        Ok(())
    }

    fn join(&mut self) -> Result<()> {
        match self.builder.take() {
            Some(builder) => builder
                .join()
                .unwrap_or_else(|_| Err(builder_failed("it panicked"))),
            None => Ok(()),
        }
    }
}

/// Lowers this thread's priority: on two cores the importing thread is the
/// one the import waits for, and the builder should take only what the
/// parsing thread leaves of the other core (it catches up while the
/// importing thread builds the other indexes).
#[cfg(target_os = "linux")]
fn yield_to_the_import() {
    // Per thread on Linux (a thread id is a process id to setpriority).
    // A failure only leaves the priority as it was.
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
}

#[cfg(not(target_os = "linux"))]
fn yield_to_the_import() {}

fn builder_failed(why: &str) -> Error {
    Error::Corrupt {
        what: "search index builder",
        detail: why.to_owned(),
    }
}

/// The builder: indexes the rows it receives, a chunk per statement, in
/// one transaction on the scratch.
fn build(path: &Path, rows: impl Iterator<Item = Vec<(i64, String)>>, chunk: usize) -> Result<()> {
    let conn = Connection::open(path)?;
    // The scratch is deleted whatever happens: no journal on disk, no syncs.
    conn.execute_batch(
        "PRAGMA journal_mode = MEMORY;
         PRAGMA synchronous = OFF;
         PRAGMA cache_size = -65536;
         PRAGMA temp_store = MEMORY;
         CREATE TEMP TABLE pending (id INTEGER PRIMARY KEY, body TEXT NOT NULL);
         BEGIN;",
    )?;
    let mut pending = 0;
    for batch in rows {
        let mut insert =
            conn.prepare_cached("INSERT INTO temp.pending (id, body) VALUES (?1, ?2)")?;
        for (id, body) in &batch {
            insert.execute(params![id, body])?;
        }
        pending += batch.len();
        if pending >= chunk {
            index_pending(&conn)?;
            pending = 0;
        }
    }
    index_pending(&conn)?;
    conn.execute_batch("COMMIT")?;
    Ok(())
}

/// Indexes the pending rows in both indexes, as `super::fts::resume` does
/// (the trigram index takes the bodies `messages_non_ascii` holds).
fn index_pending(conn: &Connection) -> Result<()> {
    conn.execute_batch(
        "INSERT INTO main.messages_fts (rowid, body) SELECT id, body FROM temp.pending;
         INSERT INTO main.messages_trigram (rowid, body) SELECT id, body FROM temp.pending
         WHERE length(body) <> length(CAST(body AS BLOB));
         DELETE FROM temp.pending;",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::messages::insert_incoming_tx;
    use crate::store::test_util::temp_store;
    use crate::store::{Filter, MessageId, Order};

    /// Indexes built in several chunks on the scratch and copied in are
    /// the index SQLite would have built: integrity-check compares them
    /// with the messages, and search finds every row.
    #[test]
    fn indexes_built_apart_in_chunks_are_the_profiles_after_the_copy() {
        let (dir, mut store) = temp_store();
        let scratch = dir.path().join("scratch.db");
        create_scratch(store.conn(), &scratch).unwrap();
        store
            .conn()
            .execute(
                &format!("ATTACH ?1 AS {SCRATCH_SCHEMA}"),
                [scratch.to_str().unwrap()],
            )
            .unwrap();
        store.fts_scratch = Some(scratch.clone());
        let peer = Identity::generate().public_key();
        // As the import's: an immediate transaction would lock the scratch.
        let tx = store.bulk_transaction().unwrap();
        assert!(indexes_empty(&tx).unwrap());
        super::super::fts::suspend(&tx).unwrap();
        let mut rows = Vec::new();
        for n in 0..10 {
            let body = if n % 2 == 0 {
                format!("chunked número {n}")
            } else {
                format!("chunked 日本語テキスト {n}")
            };
            let inserted = insert_incoming_tx(
                &tx,
                &MessageId::new_v7(),
                &peer,
                &body,
                "2026-01-01T00:00:00.000Z",
            )
            .unwrap();
            let crate::store::Inserted::New(m) = inserted else {
                panic!("a new message")
            };
            rows.push(vec![(m.id, body)]);
        }
        build(&scratch, rows.into_iter(), 3).unwrap();
        let parallel = ParallelFts {
            feed: None,
            batch: Vec::new(),
            builder: None,
        };
        parallel.copy_into(&tx).unwrap();
        tx.commit().unwrap();
        for table in TABLES {
            store
                .conn()
                .execute_batch(&format!(
                    "INSERT INTO {table} ({table}) VALUES ('integrity-check')"
                ))
                .unwrap();
        }
        let hits = store
            .search("numero", &Filter::default(), Order::Newest, 20)
            .unwrap();
        assert_eq!(hits.len(), 5);
        let hits = store
            .search_words("テキスト", &Filter::default(), Order::Newest, 20)
            .unwrap();
        assert_eq!(hits.len(), 5);
        // Live inserts are indexed by the triggers again.
        store
            .insert_incoming(
                &MessageId::new_v7(),
                &peer,
                "live numero",
                "2026-01-01T00:00:01.000Z",
            )
            .unwrap();
        let hits = store
            .search("numero", &Filter::default(), Order::Newest, 20)
            .unwrap();
        assert_eq!(hits.len(), 6);
    }
}

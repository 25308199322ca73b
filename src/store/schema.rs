//! The schema: the migrations embedded from `migrations/`, and the checks
//! that decide, without writing a byte, whether a file may be migrated.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::{Error, Result};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// The `application_id` stamped into the header of every chat-p2p database
/// ('CP2P' in ASCII).
pub const APPLICATION_ID: i32 = 0x4350_3250;

/// The table where refinery records applied migrations.
const HISTORY_TABLE: &str = "refinery_schema_history";

/// The first 16 bytes of every SQLite 3 database file.
const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// One migration as refinery records it in its history once applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Shipped {
    version: i64,
    name: &'static str,
    checksum: u64,
}

const fn shipped(version: i64, name: &'static str, checksum: u64) -> Shipped {
    Shipped {
        version,
        name,
        checksum,
    }
}

/// The migrations in `migrations/`, as refinery records them once applied.
///
/// Why a copy: refinery's runner parses the embedded file names with a
/// Unicode regex that it compiles on first use, about a millisecond of
/// every command's start (a fifth of a search). With this table, opening a
/// database that is already current needs no runner at all. The unit test
/// `the_shipped_table_matches_the_embedded_migrations` compares it with the
/// runner's and, when a migration is added, prints the table to paste.
const SHIPPED: &[Shipped] = &[
    shipped(1, "initial", 14030512167473670543),
    shipped(2, "messages", 11478428457692389784),
    shipped(3, "client_outbox", 16503729787962586414),
    shipped(4, "dedup_per_sender", 14812072132032757344),
    shipped(5, "verified_contacts", 4209186184468144500),
    shipped(6, "secret_key_passphrase", 7437624772268031045),
    shipped(7, "trigram_search", 17129631178930462116),
    shipped(8, "device", 17476353502542541026),
    shipped(9, "device_sync", 17059868819285288393),
    shipped(10, "home_routers", 11996903946910171413),
    shipped(11, "outbox_index", 9918953460598756580),
];

/// The newest schema version this binary knows.
pub fn latest_version() -> i64 {
    SHIPPED.last().map_or(0, |m| m.version)
}

/// Decides whether the file at `path` may be opened read-write and migrated.
///
/// Everything here reads only: a refused file is left exactly as it was.
pub fn inspect(path: &Path) -> Result<()> {
    let header = read_header(path)?;
    if header.is_empty() {
        // A file we just created (or an empty one): SQLite treats it as a
        // new database.
        return Ok(());
    }
    if header.len() < SQLITE_MAGIC.len() || &header[..SQLITE_MAGIC.len()] != SQLITE_MAGIC {
        return Err(not_ours(path, "it is not an SQLite database"));
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // A writer holding the file a moment is not a reason to fail.
    conn.busy_timeout(super::BUSY_TIMEOUT)?;
    inspect_open(path, &conn)
}

fn inspect_open(path: &Path, conn: &Connection) -> Result<()> {
    let app_id: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .map_err(|e| match super::error::diagnose(path, e) {
            // A full disk, a lock, a read-only folder... say so; only what
            // is left means the file itself is the problem.
            Error::Sqlite(e) => not_ours(path, &format!("SQLite cannot read it ({e})")),
            known => known,
        })?;
    if app_id != APPLICATION_ID {
        if app_id != 0 {
            return Err(not_ours(
                path,
                &format!("it belongs to another application (application_id {app_id:#x})"),
            ));
        }
        let tables: i64 = conn.query_row(
            "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
            [],
            |r| r.get(0),
        )?;
        if tables > 0 {
            return Err(not_ours(path, "it holds another application's tables"));
        }
        // An empty SQLite database: ours to fill.
        return Ok(());
    }
    let newest = recorded_version(path, conn)?;
    let known = latest_version();
    if newest > known {
        return Err(Error::TooNew {
            path: path.to_path_buf(),
            found: newest,
            known,
        });
    }
    Ok(())
}

/// The newest version in the migration history, after checking that every
/// row is well formed (refinery panics on a malformed row, so a damaged
/// file must be caught here).
fn recorded_version(path: &Path, conn: &Connection) -> Result<i64> {
    let exists: Option<i64> = conn
        .query_row(
            "SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1",
            [HISTORY_TABLE],
            |r| r.get(0),
        )
        .optional()?;
    if exists.is_none() {
        return Err(not_ours(path, "its schema history is missing"));
    }
    let mut stmt = conn.prepare(
        "SELECT version, applied_on, checksum
         FROM refinery_schema_history
         ORDER BY version",
    )?;
    let mut rows = stmt.query([])?;
    let mut newest = 0;
    while let Some(row) = rows.next()? {
        let version: Option<i64> = row.get(0).ok();
        let applied_on: Option<String> = row.get(1).ok();
        let checksum: Option<String> = row.get(2).ok();
        let well_formed = version.is_some_and(|v| i32::try_from(v).is_ok())
            && applied_on.is_some_and(|t| chrono::DateTime::parse_from_rfc3339(&t).is_ok())
            && checksum.is_some_and(|c| c.parse::<u64>().is_ok());
        if !well_formed {
            return Err(not_ours(path, "its schema history is damaged"));
        }
        newest = newest.max(version.unwrap_or(0));
    }
    Ok(newest)
}

/// Applies every migration this database has not seen yet.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    if is_current(conn) {
        return Ok(());
    }
    embedded::migrations::runner()
        .set_abort_divergent(true)
        .set_abort_missing(true)
        .run(conn)?;
    Ok(())
}

/// Whether the history records exactly the migrations this binary ships
/// (versions, names and checksums), so that refinery would have nothing to
/// apply and nothing to object to. Anything else, including a history
/// that cannot be read, is left to refinery, which applies or reports it.
fn is_current(conn: &Connection) -> bool {
    let read = || -> rusqlite::Result<Vec<(i64, String, String)>> {
        conn.prepare(
            "SELECT version, name, checksum FROM refinery_schema_history ORDER BY version",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect()
    };
    let Ok(history) = read() else {
        return false;
    };
    history.len() == SHIPPED.len()
        && history
            .iter()
            .zip(SHIPPED)
            .all(|((version, name, checksum), m)| {
                *version == m.version
                    && name == m.name
                    && checksum.parse::<u64>().is_ok_and(|c| c == m.checksum)
            })
}

/// The schema version recorded in an open, migrated database.
pub fn current_version(conn: &Connection) -> Result<i64> {
    Ok(conn.query_row(
        "SELECT coalesce(max(version), 0) FROM refinery_schema_history",
        [],
        |r| r.get(0),
    )?)
}

fn read_header(path: &Path) -> Result<Vec<u8>> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut header = Vec::with_capacity(SQLITE_MAGIC.len());
    File::open(path)
        .map_err(io_err)?
        .take(SQLITE_MAGIC.len() as u64)
        .read_to_end(&mut header)
        .map_err(io_err)?;
    Ok(header)
}

fn not_ours(path: &Path, reason: &str) -> Error {
    Error::NotOurs {
        path: path.to_path_buf(),
        reason: reason.to_owned(),
    }
}

/// A database file migrated up to `version` exactly, as an older release
/// left it, with foreign keys on as every connection has them (so a
/// careless rebuild would cascade): upgrade tests fill it, then open it
/// with [`super::Store::open`].
#[cfg(test)]
pub(crate) fn profile_at_version(
    version: i32,
) -> (tempfile::TempDir, std::path::PathBuf, Connection) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("chat.db");
    let mut conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "foreign_keys", "ON").unwrap();
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(version))
        .run(&mut conn)
        .unwrap();
    (dir, path, conn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{test_util::temp_store, Store};
    use std::fs;

    fn assert_refused_untouched(path: &Path, check: impl Fn(&Error) -> bool) {
        let before = fs::read(path).unwrap();
        let err = Store::open(path).unwrap_err();
        assert!(check(&err), "unexpected error: {err}");
        assert_eq!(fs::read(path).unwrap(), before, "file changed");
    }

    #[test]
    fn fresh_store_is_at_the_latest_version_and_stamped() {
        let (_dir, store) = temp_store();
        assert_eq!(store.schema_version().unwrap(), latest_version());
        let id: i32 = store
            .conn()
            .pragma_query_value(None, "application_id", |r| r.get(0))
            .unwrap();
        assert_eq!(id, APPLICATION_ID);
    }

    #[test]
    fn the_shipped_table_matches_the_embedded_migrations() {
        let mut embedded: Vec<Shipped> = embedded::migrations::runner()
            .get_migrations()
            .iter()
            .map(|m| Shipped {
                version: i64::from(m.version()),
                name: m.name().to_owned().leak(),
                checksum: m.checksum(),
            })
            .collect();
        embedded.sort_by_key(|m| m.version);
        let table: String = embedded
            .iter()
            .map(|m| {
                format!(
                    "    shipped({}, \"{}\", {}),\n",
                    m.version, m.name, m.checksum
                )
            })
            .collect();
        assert_eq!(
            SHIPPED,
            &embedded[..],
            "a migration was added or changed: set SHIPPED in src/store/schema.rs to\n&[\n{table}];"
        );
    }

    #[test]
    fn refuses_a_file_that_is_not_sqlite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        fs::write(&path, b"hello, this is not a database at all").unwrap();
        assert_refused_untouched(&path, |e| matches!(e, Error::NotOurs { .. }));
    }

    #[test]
    fn refuses_another_applications_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);")
            .unwrap();
        drop(conn);
        assert_refused_untouched(&path, |e| matches!(e, Error::NotOurs { .. }));
    }

    #[test]
    fn refuses_a_newer_schema() {
        let (_dir, store) = temp_store();
        let path = store.path().to_path_buf();
        store
            .conn()
            .execute(
                "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
                 VALUES (?1, 'from_the_future', '2030-01-01T00:00:00Z', '1')",
                [latest_version() + 1],
            )
            .unwrap();
        store
            .conn()
            .pragma_update(None, "wal_checkpoint", "TRUNCATE")
            .unwrap();
        drop(store);
        assert_refused_untouched(&path, |e| matches!(e, Error::TooNew { .. }));
    }

    /// Opens a fresh profile again after `sql` has changed it.
    fn reopen_after(sql: &str) -> Result<Store> {
        let (_dir, store) = temp_store();
        let path = store.path().to_path_buf();
        store.conn().execute(sql, []).unwrap();
        drop(store);
        Store::open(&path)
    }

    #[test]
    fn refuses_a_damaged_history_instead_of_panicking() {
        let opened = reopen_after("UPDATE refinery_schema_history SET applied_on = 'yesterday'");
        assert!(matches!(opened, Err(Error::NotOurs { .. })));
    }

    #[test]
    fn a_current_history_that_differs_from_ours_still_goes_to_refinery() {
        // The fast path must not let through what refinery would refuse: a
        // migration with our version number but other content (another
        // branch's build wrote it).
        let opened =
            reopen_after("UPDATE refinery_schema_history SET checksum = '1' WHERE version = 3");
        assert!(matches!(opened, Err(Error::Migration(_))));
    }

    #[test]
    fn a_current_history_is_recognised_and_an_older_one_is_not() {
        let (_dir, store) = temp_store();
        assert!(is_current(store.conn()));
        let (_dir, _path, old) = profile_at_version(10);
        assert!(!is_current(&old));
        let empty = Connection::open_in_memory().unwrap();
        assert!(!is_current(&empty));
    }

    /// Every row of the message tables, as text.
    fn rows(conn: &Connection) -> Vec<String> {
        let mut all = Vec::new();
        for sql in [
            "SELECT * FROM messages ORDER BY id",
            "SELECT * FROM message_events ORDER BY message_id, seq",
            "SELECT * FROM messages_view ORDER BY id",
        ] {
            let mut stmt = conn.prepare(sql).unwrap();
            let n = stmt.column_count();
            let mut q = stmt.query([]).unwrap();
            while let Some(r) = q.next().unwrap() {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                all.push(cells.join("|"));
            }
        }
        all
    }

    #[test]
    fn a_v3_profile_with_messages_upgrades_with_everything_kept() {
        use crate::identity::Identity;
        use crate::store::{Filter, Inserted, MessageId, Order};
        let (_dir, path, conn) = profile_at_version(3);
        assert_eq!(current_version(&conn).unwrap(), 3);
        let (alice, bob) = (
            Identity::generate().public_key(),
            Identity::generate().public_key(),
        );
        conn.execute_batch(&format!(
            "INSERT INTO contacts (name, name_key, public_key, added_at)
                 VALUES ('alice', 'alice', '{alice}', '2026-01-01T00:00:00.000Z');
             INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at,
                                   received_at, read_at)
                 VALUES ('00000000-0000-7000-8000-000000000001', '{alice}', 'in',
                         'the secret plan', 'read', '2026-01-01T00:00:00.000Z',
                         '2026-01-01T00:00:01.000Z', '2026-01-01T00:00:02.000Z');
             INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at,
                                   sent_at)
                 VALUES ('00000000-0000-7000-8000-000000000002', '{bob}', 'out',
                         'a reply', 'sent', '2026-01-01T00:01:00.000Z',
                         '2026-01-01T00:01:01.000Z');
             INSERT INTO message_events (message_id, seq, status, at) VALUES
                 (1, 0, 'received', '2026-01-01T00:00:01.000Z'),
                 (1, 1, 'read', '2026-01-01T00:00:02.000Z'),
                 (2, 0, 'pending', '2026-01-01T00:01:00.000Z'),
                 (2, 1, 'sent', '2026-01-01T00:01:01.000Z');",
            alice = alice.to_base64(),
            bob = bob.to_base64()
        ))
        .unwrap();
        let before = rows(&conn);
        assert_eq!(before.len(), 8);
        drop(conn);

        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), latest_version());
        assert_eq!(rows(store.conn()), before);
        // The search index still points at the right rows.
        let hits = store
            .search("secret", &Filter::default(), Order::Newest, 5)
            .unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].message.body, "the secret plan");
        store
            .conn()
            .execute(
                "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')",
                [],
            )
            .unwrap();
        let fk: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(fk, 0);
        // The same id from another sender is a new message now; from the
        // same sender it is still a duplicate.
        let id = MessageId::parse("00000000-0000-7000-8000-000000000001").unwrap();
        let at = "2026-01-02T00:00:00.000Z";
        assert!(matches!(
            store.insert_incoming(&id, &bob, "not a dup", at).unwrap(),
            Inserted::New(_)
        ));
        assert_eq!(
            store.insert_incoming(&id, &alice, "again", at).unwrap(),
            Inserted::Duplicate
        );
        // Live inserts are indexed: the triggers are back.
        let hits = store
            .search("dup", &Filter::default(), Order::Newest, 5)
            .unwrap();
        assert_eq!(hits.len(), 1);
    }

    #[test]
    fn a_v4_profile_with_messages_gets_a_filled_trigram_index() {
        use crate::identity::Identity;
        use crate::store::{Filter, MessageId, Order};
        let (_dir, path, conn) = profile_at_version(4);
        let alice = Identity::generate().public_key();
        for (i, body) in ["日本語テキストです", "plain ascii", "ภาษาไทยง่าย"]
            .iter()
            .enumerate()
        {
            conn.execute(
                "INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at,
                                       received_at)
                 VALUES (?1, ?2, 'in', ?3, 'received', ?4, ?4)",
                rusqlite::params![
                    format!("00000000-0000-7000-8000-00000000000{i}"),
                    alice.to_base64(),
                    body,
                    format!("2026-01-01T00:00:0{i}.000Z"),
                ],
            )
            .unwrap();
        }
        drop(conn);

        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), latest_version());
        let found = |store: &Store, q: &str| -> Vec<String> {
            store
                .search_words(q, &Filter::default(), Order::Newest, 5)
                .unwrap()
                .into_iter()
                .map(|h| h.message.body)
                .collect()
        };
        assert_eq!(found(&store, "テキスト"), ["日本語テキストです"]);
        assert_eq!(found(&store, "ไทย"), ["ภาษาไทยง่าย"]);
        let indexed: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM messages_trigram", [], |r| r.get(0))
            .unwrap();
        assert_eq!(indexed, 2, "only the non-ASCII bodies");
        for table in ["messages_fts", "messages_trigram"] {
            store
                .conn()
                .execute_batch(&format!(
                    "INSERT INTO {table} ({table}) VALUES ('integrity-check')"
                ))
                .unwrap();
        }
        // Live writes follow: insert, then delete.
        store
            .insert_incoming(
                &MessageId::new_v7(),
                &alice,
                "新しいテキスト",
                "2026-01-02T00:00:00.000Z",
            )
            .unwrap();
        assert_eq!(found(&store, "テキスト").len(), 2);
        store
            .conn()
            .execute("DELETE FROM messages WHERE body = '日本語テキストです'", [])
            .unwrap();
        assert_eq!(found(&store, "テキスト"), ["新しいテキスト"]);
        store
            .conn()
            .execute_batch(
                "INSERT INTO messages_trigram (messages_trigram) VALUES ('integrity-check')",
            )
            .unwrap();
    }

    #[test]
    fn adopts_an_empty_sqlite_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        fs::write(&path, b"").unwrap();
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), latest_version());
    }

    #[test]
    fn a_v4_profile_keeps_its_key_and_history_through_the_passphrase_columns() {
        use crate::identity::Identity;
        let (_dir, path, conn) = profile_at_version(4);
        let me = Identity::generate();
        let alice = Identity::generate().public_key();
        conn.execute(
            "INSERT INTO identity (id, public_key, secret_key, created_at)
             VALUES (1, ?1, ?2, '2026-01-01T00:00:00.000Z')",
            rusqlite::params![me.public_key().to_base64(), &me.secret_bytes()[..]],
        )
        .unwrap();
        conn.execute_batch(&format!(
            "INSERT INTO contacts (name, name_key, public_key, added_at)
                 VALUES ('alice', 'alice', '{alice}', '2026-01-01T00:00:00.000Z');
             INSERT INTO messages (msg_id, peer_key, direction, body, status, created_at,
                                   received_at)
                 VALUES ('00000000-0000-7000-8000-000000000001', '{alice}', 'in',
                         'kept through V6', 'received', '2026-01-01T00:00:00.000Z',
                         '2026-01-01T00:00:01.000Z');
             INSERT INTO message_events (message_id, seq, status, at) VALUES
                 (1, 0, 'received', '2026-01-01T00:00:01.000Z');",
            alice = alice.to_base64()
        ))
        .unwrap();
        let before = rows(&conn);
        drop(conn);

        let mut store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), latest_version());
        assert_eq!(rows(store.conn()), before);
        let id = store.require_identity().unwrap();
        assert_eq!(id.public_key(), me.public_key());
        assert_eq!(*id.secret_bytes(), *me.secret_bytes());
        assert_eq!(store.key_protection().unwrap(), None);
        // The rebuilt table takes the new form, and refuses a half one.
        let weak = crate::keywrap::KdfParams::WEAK_FOR_TESTS;
        store.protect_identity(&id, b"pw", weak).unwrap();
        assert_eq!(store.key_protection().unwrap(), Some(weak));
        assert!(store
            .conn()
            .execute("UPDATE identity SET kdf_salt = NULL", [])
            .is_err());
        assert_eq!(rows(store.conn()), before);
    }
}

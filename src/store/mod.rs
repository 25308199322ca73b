//! The profile database: one SQLite file holding a profile's identity,
//! contacts and messages.
//!
//! [`Store::open`] and [`Store::create`] are the only places a connection is
//! made, so every connection gets the same settings: WAL (readers such as
//! `history` never block the chat loop's writes), `synchronous = FULL` (a
//! committed transaction survives a power cut), foreign keys, and a busy
//! timeout so two writers wait for each other instead of failing.
//!
//! Before anything is written, an existing file is inspected read-only: a
//! file that is not SQLite, an SQLite file of another application, and a
//! database from a newer chat-p2p are refused with the file left untouched.
//! Then the migrations in `migrations/` are applied.

pub mod changes;
mod contacts;
pub mod conversations;
pub mod device;
mod error;
pub mod fts;
pub(crate) mod fts_build;
pub mod home;
mod identity;
pub mod ids;
pub mod link;
pub mod messages;
pub mod outbox;
pub mod query;
pub mod receipts;
pub mod refill;
pub mod rejected;
mod schema;
pub mod search;
mod status;
pub mod sync;
mod verify;
mod when;

pub(crate) use contacts::{merge_contact_tx, sync_contact_tx};
pub use contacts::{Contact, ContactName, Merge, SyncedContact, UnknownPeer};
pub use conversations::Conversation;
pub use error::Error;
pub(crate) use identity::set_identity_tx;
pub use identity::StoredSecret;
pub use ids::{IdQuery, Scope};
pub use messages::{Event, Inserted, Message};
pub use schema::{inspect as inspect_schema, latest_version as latest_schema_version};
pub use search::{Filter, Hit, Order, TimeBound};
pub use status::{Direction, MessageId, Status, SHORT_ID_LEN};
pub use verify::Verification;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

/// The result of a store operation.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long a writer waits for another before giving up with "busy".
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The page size of new profile databases. SQLite's default (4 KiB) makes
/// a bulk import of a million messages do a fifth more work (more pages to
/// find, split and write for the same rows and index entries). It only
/// takes effect when the file is created: existing files keep theirs.
const PAGE_SIZE: i64 = 16384;

/// An open profile database.
#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// The scratch database attached for building the FTS indexes on
    /// another thread: only on an import's fresh copy (see [`refill`]).
    fts_scratch: Option<PathBuf>,
}

impl Store {
    /// Opens an existing profile database, migrating it to the current
    /// schema. Fails with [`Error::Missing`] when there is no file.
    pub fn open(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Missing(path.to_path_buf()));
        }
        Self::open_checked(path)
    }

    /// Opens a profile database, creating it (and its 0700 directory, with
    /// the file 0600) when it does not exist yet.
    pub fn create(path: &Path) -> Result<Self> {
        if !path.exists() {
            create_private_file(path).map_err(|e| e.at(path))?;
        }
        Self::open_checked(path)
    }

    /// Inspects, connects and migrates; a failure is named for what it is
    /// (full disk, read-only, permission, lock: see [`Error::at`]).
    fn open_checked(path: &Path) -> Result<Self> {
        schema::inspect(path).map_err(|e| e.at(path))?;
        let mut conn = connect(path).map_err(|e| e.at(path))?;
        schema::migrate(&mut conn).map_err(|e| e.at(path))?;
        Ok(Self {
            conn,
            path: path.to_path_buf(),
            fts_scratch: None,
        })
    }

    /// The path of the database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The underlying connection, for reads that have no helper yet.
    pub fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The scratch database for building the FTS indexes beside a bulk
    /// import, when this is an import's fresh copy.
    pub(crate) fn fts_scratch(&self) -> Option<&Path> {
        self.fts_scratch.as_deref()
    }

    /// Whether any message is stored.
    pub fn has_messages(&self) -> Result<bool> {
        Ok(self
            .conn
            .query_row("SELECT EXISTS (SELECT 1 FROM messages)", [], |r| r.get(0))?)
    }

    /// The schema version this database is at.
    pub fn schema_version(&self) -> Result<i64> {
        schema::current_version(&self.conn)
    }
}

/// Opens a read-write connection with the settings every connection needs.
fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // Before anything writes the file (setting WAL does): a no-op on a
    // database that already has pages.
    conn.pragma_update(None, "page_size", PAGE_SIZE)?;
    set_journal_mode(&conn, "wal")?;
    settle(conn, "FULL")
}

/// Opens the fresh copy an import into an empty profile fills (see
/// [`refill`]): the journal in memory (the copy is deleted if the import
/// fails, and the journal only holds the few pages the copy started with),
/// no syncs until the copy is complete, and no other process may open it.
fn connect_bulk(path: &Path) -> Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // The copy only: the FTS scratch attached to it stays writable by the
    // thread that builds the indexes.
    conn.pragma_update(Some("main"), "locking_mode", "EXCLUSIVE")?;
    set_journal_mode(&conn, "memory")?;
    settle(conn, "OFF")
}

/// The settings every connection shares after its journal mode.
fn settle(conn: Connection, synchronous: &str) -> Result<Connection> {
    conn.pragma_update(None, "synchronous", synchronous)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Sets the journal mode and checks that SQLite took it: it answers with
/// the mode in force, and keeps the old one when it cannot change (a
/// read-only file, another connection in the way).
fn set_journal_mode(conn: &Connection, wanted: &'static str) -> Result<()> {
    let mode: String =
        conn.pragma_update_and_check(None, "journal_mode", wanted, |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case(wanted) {
        return Err(Error::Pragma {
            pragma: "journal_mode",
            wanted,
            got: mode,
        });
    }
    Ok(())
}

/// Creates the database file, readable by the user alone, inside a
/// directory only the user can enter.
fn create_private_file(path: &Path) -> Result<()> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        create_private_dir(dir).map_err(io_err)?;
    }
    create_private_file_alone(path).map_err(io_err)
}

/// Creates `path` readable by the user alone if it does not exist; an
/// existing file is left as it is.
pub(crate) fn create_private_file_alone(path: &Path) -> io::Result<()> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(_) => Ok(()),
        // Another process created it between our check and now: fine.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Makes a database of ours and its `-wal` and `-shm` files readable by
/// the user alone, where an older release left them readable by others.
pub(crate) fn make_database_private(path: &Path) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mut files = vec![path.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = path.as_os_str().to_owned();
            name.push(suffix);
            files.push(name.into());
        }
        for file in files {
            match fs::metadata(&file) {
                Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                    fs::set_permissions(&file, fs::Permissions::from_mode(0o600))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

pub(crate) fn create_private_dir(dir: &Path) -> io::Result<()> {
    let mut builder = fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

#[cfg(test)]
pub(crate) mod test_util {
    use super::*;

    /// A fresh store in a temporary directory, kept alive with it.
    pub fn temp_store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("p").join("chat.db")).unwrap();
        (dir, store)
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::temp_store;
    use super::*;

    fn page_size(conn: &Connection) -> i64 {
        conn.pragma_query_value(None, "page_size", |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn new_profiles_get_large_pages_and_existing_files_keep_theirs() {
        let (_dir, store) = temp_store();
        assert_eq!(page_size(store.conn()), PAGE_SIZE);

        // A file made with SQLite's default page size, as every release
        // before this one made them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;")
                .unwrap();
        }
        let peer = crate::identity::Identity::generate().public_key();
        {
            let mut store = Store::open(&path).unwrap();
            assert_eq!(page_size(store.conn()), 4096);
            store.insert_outgoing(&peer, "kept").unwrap();
        }
        let store = Store::open(&path).unwrap();
        assert_eq!(page_size(store.conn()), 4096);
        let body: String = store
            .conn()
            .query_row("SELECT body FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(body, "kept");
    }

    #[test]
    fn new_store_uses_wal_full_sync_and_foreign_keys() {
        let (_dir, store) = temp_store();
        let get = |p: &str| -> String {
            store
                .conn()
                .pragma_query_value(None, p, |r| r.get::<_, rusqlite::types::Value>(0))
                .map(|v| format!("{v:?}"))
                .unwrap()
        };
        assert_eq!(get("journal_mode"), "Text(\"wal\")");
        assert_eq!(get("synchronous"), "Integer(2)");
        assert_eq!(get("foreign_keys"), "Integer(1)");
    }

    #[cfg(unix)]
    #[test]
    fn new_store_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, store) = temp_store();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(store.path()), 0o600);
        assert_eq!(mode(store.path().parent().unwrap()), 0o700);
    }

    #[test]
    fn open_refuses_a_missing_file_without_creating_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope").join("chat.db");
        assert!(matches!(Store::open(&path), Err(Error::Missing(_))));
        assert!(!path.exists());
        assert!(!path.parent().unwrap().exists());
    }

    #[test]
    fn reopening_is_a_no_op() {
        let (_dir, store) = temp_store();
        let path = store.path().to_path_buf();
        let version = store.schema_version().unwrap();
        drop(store);
        let again = Store::open(&path).unwrap();
        assert_eq!(again.schema_version().unwrap(), version);
    }
}

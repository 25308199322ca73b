//! Filling a profile that has no messages through a fresh file.
//!
//! A bulk import into the profile's own file writes every page twice (to
//! the WAL, then to the file at the checkpoint). Into a profile with no
//! messages there is nothing to protect but its small content (identity,
//! contacts, settings), so [`Refill`] copies that content into a new file
//! beside the profile (`chat.db.import-tmp`), lets the import fill the copy
//! with no journal on disk and no syncs, then syncs the copy, makes it a
//! WAL database again and renames it over the profile's file. Until the
//! rename the profile's file keeps its content, whatever happens (error,
//! `kill -9`, power cut); after it the profile holds the whole import.
//!
//! The copy has the profile's schema, migration history and settings as
//! they are, and the page size of new profiles (an older profile made with
//! 4 KiB pages gets 16 KiB ones here).
//!
//! Replacing a file under SQLite is only safe when no other connection has
//! it open: a connection that outlived the swap would go on reading and
//! writing the old, unlinked file. The guard is SQLite's own: leaving WAL
//! mode needs every other connection closed (each WAL connection holds a
//! shared lock on the file for as long as it is open), and from then on
//! this connection keeps an exclusive lock, so no other process can read
//! or write the profile until the swap is done. A process that opened the
//! file during the import and waits for that lock would wake up on the old
//! file: its header is overwritten once the new file is in place, so such
//! a process fails with "not a database" instead of writing into a file
//! nobody will read again.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, ErrorCode};

use super::{connect_bulk, schema, Error, Result, Store};

/// The suffix of the file an import into an empty profile fills, beside
/// the profile's database.
pub const TEMP_SUFFIX: &str = ".import-tmp";

/// A fresh copy of an empty profile, being filled; dropped without
/// [`Refill::commit`], it is deleted and the profile is left as it was.
#[derive(Debug)]
pub struct Refill {
    /// The profile's database file.
    db: PathBuf,
    /// The copy being filled.
    temp: PathBuf,
    /// A connection to the profile's file holding its exclusive lock.
    original: Option<Connection>,
    /// The copy, open for the import.
    store: Option<Store>,
}

impl Refill {
    /// Locks the profile at `db` and copies it to a fresh file for an
    /// import. `None` when the profile cannot take this path: another
    /// connection has it open, or it holds messages by the time it is
    /// locked. The caller then imports into the profile itself.
    #[cfg(unix)]
    pub fn begin(db: &Path) -> Result<Option<Self>> {
        let Some(original) = lock(db).map_err(|e| e.at(db))? else {
            return Ok(None);
        };
        let mut refill = Self {
            db: db.to_path_buf(),
            temp: temp_path(db),
            original: Some(original),
            store: None,
        };
        if !refill.is_empty()? {
            return Ok(None);
        }
        // A copy left by an import that was killed: this one holds the
        // lock, so no other import is filling it.
        remove_temp(&refill.db).map_err(|source| io_error(&refill.temp, source))?;
        refill.copy().map_err(|e| e.at(&refill.temp))?;
        Ok(Some(refill))
    }

    /// Elsewhere a file cannot be renamed over while open: never taken.
    #[cfg(not(unix))]
    pub fn begin(_db: &Path) -> Result<Option<Self>> {
        Ok(None)
    }

    /// The copy, to import into.
    pub fn store(&mut self) -> Result<&mut Store> {
        self.store.as_mut().ok_or_else(|| Error::Corrupt {
            what: "import copy",
            detail: "already closed".into(),
        })
    }

    /// Makes the filled copy the profile's file: synced, in WAL mode, then
    /// renamed over the profile's file (and the folder synced).
    pub fn commit(mut self) -> Result<()> {
        drop(self.store.take());
        let temp = self.temp.clone();
        remove_all(scratch_files(&temp)).map_err(|source| io_error(&temp, source))?;
        to_wal(&temp).map_err(|e| e.at(&temp))?;
        File::open(&temp)
            .and_then(|f| f.sync_all())
            .map_err(|source| io_error(&temp, source))?;
        // The profile's current file, to disable once it is replaced
        // (opened before the rename, so it is the old file).
        let old = OpenOptions::new()
            .write(true)
            .open(&self.db)
            .map_err(|source| io_error(&self.db, source))?;
        fs::rename(&temp, &self.db).map_err(|source| io_error(&self.db, source))?;
        // From here the copy is the profile: nothing to delete on drop.
        self.temp = PathBuf::new();
        if let Some(dir) = self.db.parent() {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|source| io_error(dir, source))?;
        }
        disable(&old);
        // Releases the lock; `old` goes after it (closing another
        // descriptor of the file drops this process's locks on it).
        drop(self.original.take());
        drop(old);
        Ok(())
    }

    /// Whether the locked profile has no messages (and never had: the
    /// row ids start at 1, as the deferred indexes expect).
    fn is_empty(&self) -> Result<bool> {
        let conn = self.original()?;
        let empty = conn.query_row("SELECT NOT EXISTS (SELECT 1 FROM messages)", [], |r| {
            r.get(0)
        })?;
        Ok(empty)
    }

    /// Copies the profile into the temporary file (0600) and opens it.
    fn copy(&mut self) -> Result<()> {
        super::create_private_file(&self.temp)?;
        let path = self.temp.to_str().ok_or_else(|| Error::Io {
            path: self.temp.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not UTF-8"),
        })?;
        // Schema, migration history and user_version as they are: the
        // copy is the same database, compacted.
        self.original()?.execute("VACUUM INTO ?1", [path])?;
        let mut conn = connect_bulk(&self.temp)?;
        schema::migrate(&mut conn)?;
        // A profile made before large pages gets them now, as a new one
        // would: the copy is small, and not in WAL mode, so it can change.
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0))?;
        if page_size != super::PAGE_SIZE {
            conn.pragma_update(None, "page_size", super::PAGE_SIZE)?;
            conn.execute_batch("VACUUM")?;
        }
        let scratch = scratch_path(&self.temp);
        super::fts_build::create_scratch(&conn, &scratch)?;
        conn.execute(
            &format!("ATTACH ?1 AS {}", super::fts_build::SCRATCH_SCHEMA),
            [scratch.to_str().unwrap_or_default()],
        )?;
        self.store = Some(Store {
            conn,
            path: self.temp.clone(),
            fts_scratch: Some(scratch),
        });
        Ok(())
    }

    fn original(&self) -> Result<&Connection> {
        self.original.as_ref().ok_or_else(|| Error::Corrupt {
            what: "import lock",
            detail: "already released".into(),
        })
    }
}

impl Drop for Refill {
    fn drop(&mut self) {
        drop(self.store.take());
        if !self.temp.as_os_str().is_empty() {
            let _ = remove_temp(&self.db);
        }
        if let Some(conn) = self.original.take() {
            // The failed import changed nothing else.
            restore_wal(&conn);
        }
    }
}

/// `<db>.import-tmp`.
pub fn temp_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(TEMP_SUFFIX);
    PathBuf::from(name)
}

/// Takes the profile's file out of WAL mode and keeps an exclusive lock on
/// it; `None` when another connection has it open.
fn lock(db: &Path) -> Result<Option<Connection>> {
    let conn = Connection::open(db)?;
    // Never wait: a profile in use is imported into in place.
    conn.busy_timeout(std::time::Duration::ZERO)?;
    let mode = match conn.query_row("PRAGMA journal_mode = DELETE", [], |r| {
        r.get::<_, String>(0)
    }) {
        Ok(mode) => mode,
        Err(e) if is_busy(&e) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    if !mode.eq_ignore_ascii_case("delete") {
        return Ok(None);
    }
    // In exclusive locking mode the lock a write transaction takes is
    // kept until the connection closes.
    conn.execute_batch("PRAGMA locking_mode = EXCLUSIVE")?;
    match conn.execute_batch("BEGIN EXCLUSIVE; COMMIT;") {
        Ok(()) => Ok(Some(conn)),
        Err(e) if is_busy(&e) => {
            // Another process came in between: back to WAL (its next open
            // would do it too) and import in place.
            restore_wal(&conn);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Puts the profile back in WAL mode as every connection leaves it (the
/// next open would do it too). Best effort.
fn restore_wal(conn: &Connection) {
    let _ = conn.execute_batch("PRAGMA locking_mode = NORMAL");
    let _ = conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()));
}

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

/// Records WAL mode in the filled copy's header, as every profile has it.
fn to_wal(temp: &Path) -> Result<()> {
    super::set_journal_mode(&Connection::open(temp)?, "wal")
}

/// Overwrites the replaced file's header, so a process that opened it
/// before the rename cannot use it (SQLite then says "not a database").
#[cfg(unix)]
fn disable(old: &File) {
    use std::os::unix::fs::FileExt;
    // Best effort: the profile is already the new file.
    let _ = old.write_all_at(&[0u8; 16], 0);
}

#[cfg(not(unix))]
fn disable(_old: &File) {}

/// `<db>.import-tmp.fts`: where the FTS indexes are built.
fn scratch_path(temp: &Path) -> PathBuf {
    let mut name = temp.as_os_str().to_owned();
    name.push(".fts");
    PathBuf::from(name)
}

/// `path` with each of `suffixes` appended.
fn with_suffixes(
    path: PathBuf,
    suffixes: &'static [&'static str],
) -> impl Iterator<Item = PathBuf> {
    suffixes.iter().map(move |suffix| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    })
}

/// The FTS scratch of the copy `temp`, and its journal.
fn scratch_files(temp: &Path) -> impl Iterator<Item = PathBuf> {
    with_suffixes(scratch_path(temp), &["", "-journal"])
}

/// Every file an import into an empty profile may leave beside `db`: the
/// copy, its FTS scratch and what SQLite keeps beside each.
fn temp_files(db: &Path) -> impl Iterator<Item = PathBuf> {
    let temp = temp_path(db);
    scratch_files(&temp).chain(with_suffixes(temp, &["", "-journal", "-wal", "-shm"]))
}

/// The files an import into this profile has beside it: while it runs, or
/// after it was killed (the next import deletes them first).
pub fn leftovers(db: &Path) -> Vec<PathBuf> {
    temp_files(db).filter(|p| p.exists()).collect()
}

/// Deletes the copy of `db`, its FTS scratch and whatever SQLite kept
/// beside them.
fn remove_temp(db: &Path) -> std::io::Result<()> {
    remove_all(temp_files(db))
}

/// Deletes each of `files` that exists.
fn remove_all(files: impl Iterator<Item = PathBuf>) -> std::io::Result<()> {
    for file in files {
        match fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;

    fn journal_mode(path: &Path) -> String {
        let conn = Connection::open(path).unwrap();
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn an_open_profile_is_not_replaced_and_a_dropped_refill_changes_nothing() {
        let (_dir, store) = temp_store();
        let path = store.path().to_path_buf();
        assert!(Refill::begin(&path).unwrap().is_none());
        drop(store);

        let refill = Refill::begin(&path).unwrap().unwrap();
        assert!(temp_path(&path).exists());
        // Nobody else reads the profile while the refill holds it.
        let other = Connection::open(&path).unwrap();
        other.busy_timeout(std::time::Duration::ZERO).unwrap();
        assert!(other
            .query_row("SELECT count(*) FROM contacts", [], |r| r.get::<_, i64>(0))
            .is_err());
        drop(other);
        drop(refill);
        assert!(!temp_path(&path).exists());
        assert_eq!(journal_mode(&path), "wal");
        let store = Store::open(&path).unwrap();
        assert!(!store.has_messages().unwrap());
    }

    #[test]
    fn a_connection_opened_before_the_swap_cannot_use_the_replaced_file() {
        let (_dir, store) = temp_store();
        let path = store.path().to_path_buf();
        drop(store);
        // Opened (not read yet, so holding no lock) before the import
        // locked the profile: its descriptor is the old file's.
        let late = Connection::open(&path).unwrap();
        let mut refill = Refill::begin(&path).unwrap().unwrap();
        let peer = crate::identity::Identity::generate().public_key();
        refill
            .store()
            .unwrap()
            .insert_outgoing(&peer, "new")
            .unwrap();
        refill.commit().unwrap();
        let err = late
            .query_row("SELECT count(*) FROM messages", [], |r| r.get::<_, i64>(0))
            .unwrap_err();
        assert_eq!(err.sqlite_error_code(), Some(ErrorCode::NotADatabase));
        let store = Store::open(&path).unwrap();
        assert!(store.has_messages().unwrap());
    }

    #[test]
    fn a_profile_with_small_pages_gets_large_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch("PRAGMA page_size = 4096; PRAGMA journal_mode = WAL;")
                .unwrap();
        }
        drop(Store::open(&path).unwrap());
        let refill = Refill::begin(&path).unwrap().unwrap();
        refill.commit().unwrap();
        let conn = Connection::open(&path).unwrap();
        let page: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, super::super::PAGE_SIZE);
        assert_eq!(journal_mode(&path), "wal");
        drop(conn);
        assert!(!Store::open(&path).unwrap().has_messages().unwrap());
    }

    #[test]
    fn a_profile_with_messages_is_filled_in_place() {
        let (_dir, mut store) = temp_store();
        let peer = crate::identity::Identity::generate().public_key();
        store.insert_outgoing(&peer, "kept").unwrap();
        let path = store.path().to_path_buf();
        drop(store);
        assert!(Refill::begin(&path).unwrap().is_none());
        assert_eq!(journal_mode(&path), "wal");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn commit_puts_the_filled_copy_in_place_as_a_wal_profile() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let (_dir, store) = temp_store();
        let path = store.path().to_path_buf();
        let key = store.public_key().unwrap();
        drop(store);
        let inode = fs::metadata(&path).unwrap().ino();
        let mut refill = Refill::begin(&path).unwrap().unwrap();
        let peer = crate::identity::Identity::generate().public_key();
        refill
            .store()
            .unwrap()
            .insert_outgoing(&peer, "new")
            .unwrap();
        refill.commit().unwrap();

        assert_ne!(fs::metadata(&path).unwrap().ino(), inode);
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(!temp_path(&path).exists());
        assert_eq!(journal_mode(&path), "wal");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.public_key().unwrap(), key);
        let page: i64 = store
            .conn()
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap();
        assert_eq!(page, super::super::PAGE_SIZE);
        let body: String = store
            .conn()
            .query_row("SELECT body FROM messages", [], |r| r.get(0))
            .unwrap();
        assert_eq!(body, "new");
    }
}

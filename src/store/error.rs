//! What can go wrong in the profile database, each case worded so the user
//! knows what to do next.

use std::io;
use std::path::{Path, PathBuf};

use rusqlite::ErrorCode;

/// An error from the profile database.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// There is no database file at the path.
    #[error("no database at '{}'", .0.display())]
    Missing(PathBuf),
    /// The file is not a chat-p2p database.
    #[error("'{}' is not a chat-p2p database: {reason}. It was left untouched; move it aside or choose another profile", path.display())]
    NotOurs {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: String,
    },
    /// The database was written by a newer chat-p2p.
    #[error("'{}' was written by a newer chat-p2p (schema version {found}; this one knows up to {known}). It was left untouched; upgrade chat-p2p to open it", path.display())]
    TooNew {
        /// The file.
        path: PathBuf,
        /// The version recorded in the file.
        found: i64,
        /// The newest version this binary knows.
        known: i64,
    },
    /// The disk holding the database is full.
    #[error("there is no space left on the disk holding '{}': free some space and try again. Nothing was half-written: SQLite keeps the database as it was before the change", path.display())]
    DiskFull {
        /// The database file.
        path: PathBuf,
    },
    /// The database (its file, its folder or the file system) cannot be
    /// written.
    #[error("'{}' cannot be written: {why}. chat-p2p needs to write the file and create the -wal and -shm files beside it", path.display())]
    ReadOnly {
        /// The database file.
        path: PathBuf,
        /// What is read-only, and what to do.
        why: String,
    },
    /// The user may not open the database or its folder.
    #[error("permission denied on '{}' or its folder: the profile should belong to you (file 0600, folder 0700); check with 'ls -l' and fix the owner or mode", path.display())]
    PermissionDenied {
        /// The database file.
        path: PathBuf,
    },
    /// Another program holds the database locked.
    #[error("'{}' is locked by another program (another chat-p2p, or a sqlite3 shell with a transaction open) and stayed locked for 10 s: close it and try again", path.display())]
    Locked {
        /// The database file.
        path: PathBuf,
    },
    /// SQLite cannot open the file or the -wal/-shm files beside it.
    #[error("cannot open '{}' (or the -wal and -shm files beside it): {problem}. Check that its folder exists and that you may write there", path.display())]
    CannotOpen {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        problem: String,
    },
    /// A pragma did not take the value every connection needs.
    #[error("SQLite refused {pragma} = {wanted} (it says '{got}')")]
    Pragma {
        /// Which pragma.
        pragma: &'static str,
        /// The value asked for.
        wanted: &'static str,
        /// The value SQLite reports.
        got: String,
    },
    /// The profile has no identity yet.
    #[error("this profile has no identity")]
    NoIdentity,
    /// `init` without `--force` on a profile that has one.
    #[error("this profile already has an identity ({0})")]
    IdentityExists(String),
    /// A stored row does not hold what the schema promises.
    #[error("the database holds a damaged {what}: {detail}")]
    Corrupt {
        /// Which kind of row.
        what: &'static str,
        /// What is wrong with it.
        detail: String,
    },
    /// A contact name that cannot be used.
    #[error("{0}")]
    BadContactName(String),
    /// A device name that cannot be used.
    #[error("that device name cannot be used: {0}")]
    BadDeviceName(String),
    /// Another contact already has this name (ignoring case).
    #[error("a contact named '{0}' already exists: choose another name, or 'chat-p2p rename-contact' the existing one")]
    NameTaken(String),
    /// The name could be taken for an existing contact's (TR39 skeletons).
    #[error("'{name}' looks like the existing contact '{existing}'{}: choose a name that reads differently, or 'chat-p2p rename-contact' the existing one", odd_note(.odd))]
    LookAlike {
        /// The name asked for.
        name: String,
        /// The existing contact's name.
        existing: String,
        /// Its characters the existing name lacks (`U+043E, ...`), if any.
        odd: String,
    },
    /// This key is already saved under another name.
    #[error("this key is already saved as contact '{0}'")]
    KeyTaken(String),
    /// The user tried to add their own key as a contact.
    #[error("that is your own public key: a contact must be someone else's key")]
    OwnKey,
    /// No contact has this name.
    #[error("no contact named '{name}'{}", suggest(.suggestions))]
    UnknownContact {
        /// The name asked for.
        name: String,
        /// Existing names that look like it.
        suggestions: Vec<String>,
    },
    /// No message has this id.
    #[error("no message with id {0}")]
    UnknownMessage(String),
    /// No message has an id that starts like this (see [`crate::store::ids`]).
    #[error("no message with id '{0}': 'chat-p2p history' shows each message's id")]
    NoSuchId(String),
    /// Several messages have an id that starts like this.
    #[error("the id '{id}' is ambiguous: it could be {}; give more of the id (or the full one, as 'history --json' prints it)", .candidates.join(", "))]
    AmbiguousId {
        /// The id as typed.
        id: String,
        /// The messages it could mean, described.
        candidates: Vec<String>,
    },
    /// The message is not one of ours still waiting to be sent.
    #[error("cannot {action} message {id}: {why}")]
    NotInOutbox {
        /// The short id.
        id: String,
        /// What was asked ("cancel", "retry").
        action: &'static str,
        /// Why not, naming its status.
        why: String,
    },
    /// A status that a message of this direction cannot have.
    #[error("message {msg_id} is {direction}going and cannot become '{status}'")]
    StatusMismatch {
        /// The message.
        msg_id: String,
        /// Its direction.
        direction: String,
        /// The status asked for.
        status: String,
    },
    /// A search query FTS5 cannot parse.
    #[error("cannot search for {query:?}: {problem}. Quote words with \"...\" in pairs, put AND/OR/NOT between two terms, and end a prefix with *")]
    BadSearch {
        /// The query as typed.
        query: String,
        /// What SQLite found wrong with it.
        problem: String,
    },
    /// A file could not be read or written.
    #[error("cannot access '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed.
    #[error("database error: {}", sqlite_text(.0))]
    Sqlite(#[from] rusqlite::Error),
    /// A migration failed.
    #[error("cannot upgrade the database schema: {0}")]
    Migration(#[from] refinery::Error),
    /// The secret key is sealed under a passphrase: open it with
    /// [`super::Store::unlock_identity`].
    #[error("the secret key of this profile is protected by a passphrase")]
    KeyProtected,
    /// The passphrase given does not open the secret key.
    #[error("wrong passphrase: it does not open this profile's secret key. Nothing was changed; try again")]
    WrongPassphrase,
    /// Asked to change or remove a passphrase the profile does not have.
    #[error("this profile's secret key has no passphrase: 'chat-p2p passphrase set' adds one")]
    NotProtected,
    /// Asked to set a passphrase on a key that already has one.
    #[error("this profile's secret key already has a passphrase: 'chat-p2p passphrase change' replaces it")]
    AlreadyProtected,
}

fn odd_note(odd: &str) -> String {
    if odd.is_empty() {
        String::new()
    } else {
        format!(" (it has {odd})")
    }
}

fn suggest(names: &[String]) -> String {
    match names {
        [] => ". 'chat-p2p contacts' lists them".to_owned(),
        [one] => format!(". Did you mean '{one}'?"),
        many => format!(
            ". Did you mean one of: {}?",
            many.iter()
                .map(|n| format!("'{n}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// The SQLite result code of `e`, if it came from SQLite.
fn code(e: &rusqlite::Error) -> Option<ErrorCode> {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
        _ => None,
    }
}

/// SQLite's message, with what to do for the failures that are not about
/// chat-p2p (the database path is not known here; see [`Error::at`]).
fn sqlite_text(e: &rusqlite::Error) -> String {
    let hint = match code(e) {
        Some(ErrorCode::DiskFull) => "the disk is full: free some space and try again",
        Some(ErrorCode::ReadOnly) => {
            "the database is read-only (its file, its folder or the file system): make it writable and try again"
        }
        Some(ErrorCode::PermissionDenied) => {
            "permission denied: the profile's file and folder should belong to you"
        }
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            "the database stayed locked by another program (another chat-p2p, or a sqlite3 shell with a transaction open): close it and try again"
        }
        _ => return e.to_string(),
    };
    hint.to_owned()
}

impl Error {
    /// Names the database at `path` in an error that came from opening or
    /// writing it, and says what the failure is: a full disk, a read-only
    /// file or file system, a permission problem or a lock, each with what
    /// to do, rather than a generic "database error".
    pub fn at(self, path: &Path) -> Error {
        match self {
            Error::Sqlite(e) => diagnose(path, e),
            Error::Io { path, source } => diagnose_io(&path, source),
            Error::Migration(e) => match sqlite_cause(&e) {
                // A migration is the first write after an upgrade: a
                // read-only or full disk shows up here first.
                Some(cause) => match diagnose(path, cause) {
                    Error::Sqlite(_) | Error::CannotOpen { .. } => Error::Migration(e),
                    known => known,
                },
                None => Error::Migration(e),
            },
            other => other,
        }
    }
}

/// The SQLite failure under a migration error, if that is what it is.
fn sqlite_cause(e: &refinery::Error) -> Option<rusqlite::Error> {
    let refinery::error::Kind::Connection(_, source) = e.kind() else {
        return None;
    };
    match source.downcast_ref::<rusqlite::Error>()? {
        rusqlite::Error::SqliteFailure(f, msg) => {
            Some(rusqlite::Error::SqliteFailure(*f, msg.clone()))
        }
        _ => None,
    }
}

/// Maps an SQLite failure on the database at `path` to what it means.
pub(crate) fn diagnose(path: &Path, e: rusqlite::Error) -> Error {
    let path_buf = path.to_path_buf();
    match code(&e) {
        Some(ErrorCode::DiskFull) => Error::DiskFull { path: path_buf },
        Some(ErrorCode::ReadOnly) => read_only(path, probe(path).err()),
        Some(ErrorCode::PermissionDenied) => Error::PermissionDenied { path: path_buf },
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => {
            Error::Locked { path: path_buf }
        }
        Some(ErrorCode::NotADatabase) => Error::NotOurs {
            path: path_buf,
            reason: "it is not an SQLite database".to_owned(),
        },
        Some(ErrorCode::DatabaseCorrupt) => Error::NotOurs {
            path: path_buf,
            reason: format!("SQLite finds it damaged ({e})"),
        },
        // SQLite reports a full disk or a read-only folder met while
        // creating the -wal or -shm file as an I/O or open failure: ask
        // the file system what is wrong.
        Some(ErrorCode::SystemIoFailure | ErrorCode::CannotOpen) => match probe(path) {
            Err(source) => match diagnose_io(path, source) {
                Error::Io { .. } => cannot_open(path, &e),
                known => known,
            },
            Ok(()) => cannot_open(path, &e),
        },
        _ => Error::Sqlite(e),
    }
}

fn cannot_open(path: &Path, e: &rusqlite::Error) -> Error {
    Error::CannotOpen {
        path: path.to_path_buf(),
        problem: e.to_string(),
    }
}

/// Maps an I/O failure on the database at `path` to what it means.
pub(crate) fn diagnose_io(path: &Path, source: io::Error) -> Error {
    let path_buf = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::StorageFull => Error::DiskFull { path: path_buf },
        io::ErrorKind::ReadOnlyFilesystem => read_only(path, Some(source)),
        io::ErrorKind::PermissionDenied => Error::PermissionDenied { path: path_buf },
        _ => Error::Io {
            path: path_buf,
            source,
        },
    }
}

fn read_only(path: &Path, cause: Option<io::Error>) -> Error {
    let why = match cause.as_ref().map(io::Error::kind) {
        Some(io::ErrorKind::ReadOnlyFilesystem) => {
            "the file system is mounted read-only; remount it read-write or move the profile (CHAT_HOME) elsewhere"
        }
        Some(io::ErrorKind::PermissionDenied) => {
            "its folder may not be written; give yourself write permission on it (chmod u+w)"
        }
        _ => "the file is read-only (its mode, or an attribute such as chattr +i); make it writable (chmod u+w, chattr -i)",
    };
    Error::ReadOnly {
        path: path.to_path_buf(),
        why: why.to_owned(),
    }
}

/// Writes, syncs and removes a small file beside `path`, to learn whether
/// the folder can take a write (and if not, why). Only called once
/// something already failed.
fn probe(path: &Path) -> io::Result<()> {
    use std::io::Write;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let probe = dir.join(format!(".chat-p2p-probe-{}", std::process::id()));
    let result = std::fs::File::create(&probe).and_then(|mut f| {
        f.write_all(&[0; 4096])?;
        f.sync_all()
    });
    let _ = std::fs::remove_file(&probe);
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::ffi;

    fn sqlite(extended: i32) -> rusqlite::Error {
        rusqlite::Error::SqliteFailure(ffi::Error::new(extended), None)
    }

    #[test]
    fn each_failure_is_named_for_what_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chat.db");
        let d = |e| diagnose(&path, e);
        assert!(matches!(
            d(sqlite(ffi::SQLITE_FULL)),
            Error::DiskFull { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_READONLY)),
            Error::ReadOnly { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_READONLY_DIRECTORY)),
            Error::ReadOnly { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_PERM)),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(d(sqlite(ffi::SQLITE_BUSY)), Error::Locked { .. }));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_LOCKED)),
            Error::Locked { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_NOTADB)),
            Error::NotOurs { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_CORRUPT)),
            Error::NotOurs { .. }
        ));
        // The folder is writable: an open failure is just that.
        assert!(matches!(
            d(sqlite(ffi::SQLITE_CANTOPEN)),
            Error::CannotOpen { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_IOERR_SHMOPEN)),
            Error::CannotOpen { .. }
        ));
        assert!(matches!(
            d(sqlite(ffi::SQLITE_CONSTRAINT)),
            Error::Sqlite(_)
        ));
        // The probe left nothing behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn io_failures_are_named_too() {
        let path = Path::new("/x/chat.db");
        let d = |kind: io::ErrorKind| diagnose_io(path, io::Error::from(kind));
        assert!(matches!(
            d(io::ErrorKind::StorageFull),
            Error::DiskFull { .. }
        ));
        assert!(matches!(
            d(io::ErrorKind::ReadOnlyFilesystem),
            Error::ReadOnly { .. }
        ));
        assert!(matches!(
            d(io::ErrorKind::PermissionDenied),
            Error::PermissionDenied { .. }
        ));
        assert!(matches!(d(io::ErrorKind::NotFound), Error::Io { .. }));
    }

    #[test]
    fn messages_say_what_to_do() {
        let path = Path::new("/p/chat.db");
        let full = diagnose(path, sqlite(ffi::SQLITE_FULL)).to_string();
        assert!(full.contains("no space left"), "{full}");
        assert!(full.contains("free some space"), "{full}");
        assert!(!full.contains("not a chat-p2p database"), "{full}");
        let locked = diagnose(path, sqlite(ffi::SQLITE_BUSY)).to_string();
        assert!(locked.contains("locked by another program"), "{locked}");
        let plain = Error::Sqlite(sqlite(ffi::SQLITE_FULL)).to_string();
        assert!(plain.contains("the disk is full"), "{plain}");
    }
}

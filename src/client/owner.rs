//! Which process of a profile talks to the router.
//!
//! The router keeps one session per key (per device with protocol v2): a
//! second session of the same profile replaces the first (close 4000). So
//! that `chat`, `send` and `sync --watch` running side by side do not keep
//! replacing each other, the process holding the profile's session lock
//! owns the connection; the others hand their work to it through the
//! database (the outbox) and watch the database for what it does.
//!
//! The lock is the OS's (`flock`/`LockFileEx`, through `fs4`) on a file
//! beside the profile database: it goes away with the process, so a crash
//! or `kill -9` never leaves a stale owner behind. The owner writes its pid
//! and command into the file, for the others to name it.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// The lock file's name, beside the profile database.
pub const LOCK_FILE_NAME: &str = "session.lock";

/// The longest command recorded (and read back) from the lock file.
const MAX_COMMAND_BYTES: usize = 200;

/// The lock file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot use the profile's session lock {}: {source}", path.display())]
pub struct LockError {
    /// The lock file.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

/// The process that owns a profile's router session, as it recorded itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// Its process id, when it had written it.
    pub pid: Option<u32>,
    /// What it runs, e.g. `chat-p2p chat`. Read from a file: show it with
    /// [`crate::render::untrusted_inline`].
    pub command: String,
}

impl Holder {
    /// Reads what the owner recorded: `PID\nCOMMAND\n`. An owner that has
    /// just taken the lock may not have written yet: no pid then.
    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let pid = lines.next().and_then(|l| l.trim().parse().ok());
        let command = lines.next().unwrap_or("").trim();
        let mut end = command.len().min(MAX_COMMAND_BYTES);
        while !command.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            pid,
            command: command[..end].to_owned(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let command = crate::render::untrusted_inline(&self.command);
        match (self.pid, command.is_empty()) {
            (Some(pid), false) => write!(f, "process {pid} ({command})"),
            (Some(pid), true) => write!(f, "process {pid}"),
            (None, _) => write!(f, "another chat-p2p process"),
        }
    }
}

/// This process's claim on a profile's router session: taken with
/// [`SessionLock::try_take`], kept until the value is dropped or the
/// process ends.
#[derive(Debug)]
pub struct SessionLock {
    file: File,
    path: PathBuf,
    command: String,
    held: bool,
}

impl SessionLock {
    /// Opens (creating it, 0600) the lock file of the profile whose
    /// database is `db_path`, without taking the lock. `command` names
    /// this process for the others, e.g. `chat-p2p chat`.
    pub fn open(db_path: &Path, command: &str) -> Result<Self, LockError> {
        let path = db_path.with_file_name(LOCK_FILE_NAME);
        let mut options = std::fs::OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let file = options.open(&path).map_err(|source| LockError {
            path: path.clone(),
            source,
        })?;
        Ok(Self {
            file,
            path,
            command: command.to_owned(),
            held: false,
        })
    }

    /// Whether this process owns the session.
    pub fn is_held(&self) -> bool {
        self.held
    }

    /// Takes the lock if no other process holds it: `None` then (or when
    /// it is already ours), else who holds it. Never waits.
    pub fn try_take(&mut self) -> Result<Option<Holder>, LockError> {
        if self.held {
            return Ok(None);
        }
        match fs4::FileExt::try_lock(&self.file) {
            Ok(()) => {
                self.held = true;
                // Best effort: the record only names us in messages.
                let _ = self.record();
                Ok(None)
            }
            // A record that cannot be read (a platform whose locks also
            // bar reading) names no one, but the lock still says no.
            Err(fs4::TryLockError::WouldBlock) => Ok(Some(self.holder().unwrap_or(Holder {
                pid: None,
                command: String::new(),
            }))),
            Err(fs4::TryLockError::Error(e)) => Err(self.error(e)),
        }
    }

    /// Writes this process's pid and command for the others to read.
    fn record(&mut self) -> io::Result<()> {
        self.file.set_len(0)?;
        self.file.seek(SeekFrom::Start(0))?;
        let command: String = self.command.chars().filter(|c| *c != '\n').collect();
        write!(self.file, "{}\n{command}\n", std::process::id())?;
        self.file.flush()
    }

    /// Reads who holds the lock.
    fn holder(&mut self) -> io::Result<Holder> {
        let mut text = String::new();
        self.file.seek(SeekFrom::Start(0))?;
        (&self.file)
            .take(64 + MAX_COMMAND_BYTES as u64)
            .read_to_string(&mut text)
            .or_else(|e| match e.kind() {
                // Not ours to judge: whatever is there names no one.
                io::ErrorKind::InvalidData => Ok(0),
                _ => Err(e),
            })?;
        Ok(Holder::parse(&text))
    }

    fn error(&self, source: io::Error) -> LockError {
        LockError {
            path: self.path.clone(),
            source,
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        // The OS releases the lock; the record of who held it goes too.
        if self.held {
            let _ = self.file.set_len(0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &tempfile::TempDir) -> PathBuf {
        dir.path().join("chat.db")
    }

    #[test]
    fn one_holder_at_a_time_and_the_others_learn_who() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = SessionLock::open(&db(&dir), "chat-p2p chat").unwrap();
        let mut second = SessionLock::open(&db(&dir), "chat-p2p send").unwrap();
        assert_eq!(first.try_take().unwrap(), None);
        assert!(first.is_held());
        // Taking it again is no change.
        assert_eq!(first.try_take().unwrap(), None);
        let holder = second.try_take().unwrap().expect("held by the first");
        assert_eq!(holder.pid, Some(std::process::id()));
        assert_eq!(holder.command, "chat-p2p chat");
        assert!(!second.is_held());
        assert_eq!(
            holder.to_string(),
            format!("process {} (chat-p2p chat)", std::process::id())
        );
        // Released with its holder: the next one takes it and says so.
        drop(first);
        assert_eq!(second.try_take().unwrap(), None);
        let mut third = SessionLock::open(&db(&dir), "x").unwrap();
        let holder = third.try_take().unwrap().unwrap();
        assert_eq!(holder.command, "chat-p2p send");
    }

    #[cfg(unix)]
    #[test]
    fn the_lock_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let lock = SessionLock::open(&db(&dir), "chat-p2p chat").unwrap();
        let mode = std::fs::metadata(&lock.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_holder_that_wrote_nothing_or_garbage_is_named_vaguely_and_safely() {
        assert_eq!(Holder::parse("").to_string(), "another chat-p2p process");
        assert_eq!(Holder::parse("x\ny").pid, None);
        let hostile = Holder::parse("12\nchat\u{1b}[2J\n");
        assert_eq!(hostile.to_string(), "process 12 (chat^[[2J)");
        let long = Holder::parse(&format!("1\n{}\n", "é".repeat(300)));
        assert!(long.command.len() <= MAX_COMMAND_BYTES);
    }
}

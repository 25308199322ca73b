//! The profile as a file: a consistent snapshot on the existing device,
//! and on the new device a received copy that is checked, made its own and
//! renamed into place whole.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};
use sha2::{Digest, Sha256};

use super::LinkError;
use crate::identity::PublicKey;
use crate::store::{self, Store};
use uuid::Uuid;

/// zstd level: 3 (zstd's default) takes a 65 MB profile to 18 MB in a
/// third of a second; level 1 gives 20 MB, level 6 17.5 MB in 1.6 s.
const ZSTD_LEVEL: i32 = 3;

/// Suffix of a snapshot file beside the profile (with the process id).
const SNAPSHOT_SUFFIX: &str = ".link-snapshot-";
/// Suffix of the file a joining device receives into.
const PARTIAL_SUFFIX: &str = ".link-partial";

fn beside(db: &Path, suffix: &str) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `path` empty, readable by the user alone, replacing any file.
fn create_private(path: &Path) -> io::Result<File> {
    let _ = fs::remove_file(path);
    let mut options = OpenOptions::new();
    options.read(true).write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Removes `path` and SQLite's files beside it, if any.
fn remove_with_journals(path: &Path) {
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = fs::remove_file(beside(path, suffix));
    }
}

/// A consistent copy of the profile, deleted when dropped.
pub struct Snapshot {
    path: PathBuf,
    /// Its size.
    pub bytes: u64,
    /// Messages in it.
    pub messages: u64,
}

impl Snapshot {
    /// Copies the database at `db` with `VACUUM INTO` (one read
    /// transaction: writers go on) into a 0600 file beside it. Snapshots
    /// left by a killed `link` are removed first.
    pub fn take(db: &Path) -> Result<Self, LinkError> {
        remove_stale_snapshots(db);
        let path = beside(db, &format!("{SNAPSHOT_SUFFIX}{}", std::process::id()));
        create_private(&path).map_err(LinkError::io("cannot create the snapshot file"))?;
        let mut snapshot = Snapshot {
            path,
            bytes: 0,
            messages: 0,
        };
        let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(store::Error::from)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(store::Error::from)?;
        let target = snapshot.path.to_str().ok_or_else(|| LinkError::Io {
            what: "the profile's path is not UTF-8".into(),
            source: io::Error::other("not UTF-8"),
        })?;
        conn.execute("VACUUM INTO ?1", [target])
            .map_err(store::Error::from)?;
        drop(conn);
        let copy = Connection::open_with_flags(&snapshot.path, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(store::Error::from)?;
        let messages: i64 = copy
            .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
            .map_err(store::Error::from)?;
        drop(copy);
        let bytes = fs::metadata(&snapshot.path)
            .map_err(LinkError::io("cannot read the snapshot"))?
            .len();
        snapshot.bytes = bytes;
        snapshot.messages = u64::try_from(messages).unwrap_or(0);
        Ok(snapshot)
    }

    /// The snapshot compressed, as a reader, hashing the uncompressed
    /// bytes as they are read.
    pub fn reader(&self) -> Result<Compressed, LinkError> {
        let file = File::open(&self.path).map_err(LinkError::io("cannot read the snapshot"))?;
        let hashing = HashingReader {
            inner: io::BufReader::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        };
        let encoder = zstd::stream::read::Encoder::new(hashing, ZSTD_LEVEL)
            .map_err(LinkError::io("cannot start compressing"))?;
        Ok(Compressed { encoder })
    }
}

impl Drop for Snapshot {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn remove_stale_snapshots(db: &Path) {
    let (Some(dir), Some(name)) = (db.parent(), db.file_name()) else {
        return;
    };
    let prefix = format!("{}{SNAPSHOT_SUFFIX}", name.to_string_lossy());
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

struct HashingReader<R> {
    inner: R,
    hash: Sha256,
    bytes: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

/// The compressed stream of a snapshot.
pub struct Compressed {
    encoder:
        zstd::stream::read::Encoder<'static, io::BufReader<HashingReader<io::BufReader<File>>>>,
}

impl Compressed {
    /// Up to `max` bytes of the stream; empty at its end.
    pub fn next_chunk(&mut self, max: usize) -> Result<Vec<u8>, LinkError> {
        let mut out = vec![0u8; max];
        let mut filled = 0;
        while filled < max {
            let n = self
                .encoder
                .read(&mut out[filled..])
                .map_err(LinkError::io("cannot read the snapshot"))?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        out.truncate(filled);
        Ok(out)
    }

    /// Uncompressed bytes read so far.
    pub fn raw_bytes(&self) -> u64 {
        self.encoder.get_ref().get_ref().bytes
    }

    /// The SHA-256 of everything read (call at the end).
    pub fn sha256(&self) -> [u8; 32] {
        self.encoder
            .get_ref()
            .get_ref()
            .hash
            .clone()
            .finalize()
            .into()
    }
}

/// A profile being received, beside the profile it will become.
pub struct Receiving {
    path: PathBuf,
    db: PathBuf,
    decoder: Option<zstd::stream::write::Decoder<'static, HashingWriter>>,
}

struct HashingWriter {
    file: io::BufWriter<File>,
    hash: Sha256,
    bytes: u64,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Receiving {
    /// Starts `<db>.link-partial` (0600, in a 0700 directory), replacing
    /// what an interrupted join left.
    pub fn start(db: &Path) -> Result<Self, LinkError> {
        if let Some(dir) = db.parent() {
            store::create_private_dir(dir)
                .map_err(LinkError::io(format!("cannot create {}", dir.display())))?;
        }
        let path = beside(db, PARTIAL_SUFFIX);
        remove_with_journals(&path);
        let file = create_private(&path)
            .map_err(LinkError::io(format!("cannot create {}", path.display())))?;
        let writer = HashingWriter {
            file: io::BufWriter::with_capacity(1 << 20, file),
            hash: Sha256::new(),
            bytes: 0,
        };
        let decoder = zstd::stream::write::Decoder::new(writer)
            .map_err(LinkError::io("cannot start decompressing"))?;
        Ok(Self {
            path,
            db: db.to_path_buf(),
            decoder: Some(decoder),
        })
    }

    /// Appends a chunk of the compressed stream.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), LinkError> {
        let decoder = self
            .decoder
            .as_mut()
            .ok_or_else(|| LinkError::Protocol("a chunk after the end".into()))?;
        decoder
            .write_all(chunk)
            .map_err(|e| LinkError::BadCopy(format!("the stream does not decompress: {e}")))
    }

    /// Uncompressed bytes written so far.
    pub fn raw_bytes(&self) -> u64 {
        self.decoder.as_ref().map_or(0, |d| d.get_ref().bytes)
    }

    /// Ends the stream and checks its size and hash; the file is synced.
    pub fn finish(&mut self, bytes: u64, sha256: &[u8]) -> Result<(), LinkError> {
        let mut decoder = self
            .decoder
            .take()
            .ok_or_else(|| LinkError::Protocol("two ends".into()))?;
        decoder
            .flush()
            .map_err(|e| LinkError::BadCopy(format!("the stream does not decompress: {e}")))?;
        let writer = decoder.into_inner();
        let (got, hash) = (writer.bytes, writer.hash.finalize());
        let file = writer
            .file
            .into_inner()
            .map_err(|e| LinkError::io("cannot write the received profile")(e.into_error()))?;
        file.sync_all()
            .map_err(LinkError::io("cannot write the received profile"))?;
        if got != bytes || hash.as_slice() != sha256 {
            return Err(LinkError::BadCopy(format!(
                "{got} bytes arrived of {bytes}, or their hash differs"
            )));
        }
        Ok(())
    }

    /// Checks the received file, makes it this device's and renames it
    /// over the profile. Returns the messages it holds.
    pub fn install(self, identity: &PublicKey, device: Uuid, name: &str) -> Result<u64, LinkError> {
        check_integrity(&self.path)?;
        let mut copy = Store::open(&self.path).map_err(|e| LinkError::BadCopy(e.to_string()))?;
        match copy.public_key()? {
            Some(key) if key == *identity => {}
            _ => {
                return Err(LinkError::BadCopy(
                    "it holds another identity than the one announced".into(),
                ))
            }
        }
        copy.adopt_linked_copy(device, name)?;
        let messages = copy.message_count()?;
        checkpoint(&copy)?;
        drop(copy);
        // An earlier copy of the same identity (checked by the caller):
        // fold its write-ahead log in first, so no stale WAL is left beside
        // the new file to be replayed into it.
        if self.db.exists() {
            let old = Store::open(&self.db)?;
            checkpoint(&old)?;
            drop(old);
            for suffix in ["-wal", "-shm"] {
                let _ = fs::remove_file(beside(&self.db, suffix));
            }
        }
        fs::rename(&self.path, &self.db)
            .map_err(LinkError::io("cannot move the received profile into place"))?;
        if let Some(dir) = self.db.parent() {
            if let Ok(dir) = File::open(dir) {
                let _ = dir.sync_all();
            }
        }
        Ok(messages)
    }
}

impl Drop for Receiving {
    fn drop(&mut self) {
        // Nothing half received stays behind (after install the path no
        // longer exists).
        remove_with_journals(&self.path);
    }
}

fn checkpoint(store: &Store) -> Result<(), LinkError> {
    store
        .conn()
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(store::Error::from)?;
    Ok(())
}

/// SQLite's own check of every page and index, and the application id
/// and schema version that make it a chat-p2p profile this binary reads.
fn check_integrity(path: &Path) -> Result<(), LinkError> {
    store::inspect_schema(path).map_err(|e| LinkError::BadCopy(e.to_string()))?;
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| LinkError::BadCopy(e.to_string()))?;
    let verdict: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(|e| LinkError::BadCopy(e.to_string()))?;
    if verdict != "ok" {
        return Err(LinkError::BadCopy(format!("integrity check: {verdict}")));
    }
    Ok(())
}

/// Removes what an interrupted join left beside `db`.
pub fn remove_partial(db: &Path) {
    remove_with_journals(&beside(db, PARTIAL_SUFFIX));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[test]
    fn a_snapshot_round_trips_through_the_stream_and_installs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("old").join("chat.db");
        let mut store = Store::create(&src).unwrap();
        let id = Identity::generate();
        store.set_identity(&id, false).unwrap();
        let peer = Identity::generate().public_key();
        store.insert_outgoing(&peer, "hello").unwrap();
        drop(store);

        let snap = Snapshot::take(&src).unwrap();
        assert_eq!(snap.messages, 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&snap.path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let mut stream = snap.reader().unwrap();
        let dst = dir.path().join("new").join("chat.db");
        let mut rx = Receiving::start(&dst).unwrap();
        loop {
            let chunk = stream.next_chunk(1000).unwrap();
            if chunk.is_empty() {
                break;
            }
            rx.write(&chunk).unwrap();
        }
        assert_eq!(stream.raw_bytes(), snap.bytes);
        rx.finish(snap.bytes, &stream.sha256()).unwrap();
        let device = Uuid::new_v4();
        assert_eq!(rx.install(&id.public_key(), device, "new").unwrap(), 1);
        let copy = Store::open(&dst).unwrap();
        assert_eq!(copy.public_key().unwrap(), Some(id.public_key()));
        assert_eq!(copy.device().unwrap().id, device);
        assert!(!beside(&dst, PARTIAL_SUFFIX).exists());
        let path = snap.path.clone();
        drop(snap);
        assert!(!path.exists(), "the snapshot is removed");
    }

    #[test]
    fn a_damaged_stream_installs_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dst = dir.path().join("new").join("chat.db");
        let mut rx = Receiving::start(&dst).unwrap();
        let _ = rx.write(b"not zstd at all");
        assert!(rx.finish(10, &[0; 32]).is_err());
        drop(rx);
        assert!(!dst.exists());
        assert!(!beside(&dst, PARTIAL_SUFFIX).exists());
    }
}

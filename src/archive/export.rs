//! Streaming export: rows go straight from SQLite to the writer.
//!
//! Messages and their events are read by two cursors in the same order
//! (message row id) and merged, so each message is written once, complete,
//! without a query per message and without holding anything in memory.

use std::collections::HashMap;
use std::fs;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rusqlite::types::Type;
use rusqlite::{Connection, OpenFlags};

use super::json_out;
use super::{ContactRecord, Error, Header, Progress, FORMAT, VERSION};
use crate::clock;
use crate::identity::PublicKey;
use crate::store::Store;
use crate::store::{Direction, MessageId, Status};

/// One JSON document, or one JSON object per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `{"format": ..., "contacts": [...], "messages": [...]}`.
    Json,
    /// A header line, then one line per contact and per message, each with a
    /// `"kind"` field.
    Jsonl,
}

/// What to export.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    /// Document or lines.
    pub layout: Layout,
    /// Only this contact's conversation (and only this contact).
    pub contact: Option<PublicKey>,
    /// Put the secret key in the export.
    pub include_secret: bool,
    /// The key pair to take the secret key from, already unlocked, when
    /// the profile's is protected by a passphrase (else it is read from
    /// the profile).
    pub unlocked: Option<std::sync::Arc<crate::identity::Identity>>,
    /// Encrypt the export (the age format) rather than write plain JSON.
    pub seal: Option<std::sync::Arc<super::sealed::Seal>>,
}

/// What an export wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Contacts written.
    pub contacts: u64,
    /// Messages written.
    pub messages: u64,
}

/// How many messages pass between two progress reports.
const PROGRESS_EVERY: u64 = 4096;

/// Writes the export to `out`, streaming, encrypted if `options.seal`
/// says so.
pub fn export(
    store: &Store,
    out: &mut dyn Write,
    options: &ExportOptions,
    progress: Progress<'_>,
) -> Result<ExportSummary, Error> {
    let Some(seal) = &options.seal else {
        return export_plain(store, out, options, progress);
    };
    let mut sealed = seal.wrap(out)?;
    let summary = export_plain(store, &mut sealed, options, progress)?;
    // Writes the last, marked chunk: without it the file reads as truncated.
    sealed
        .finish()
        .map_err(Error::Write)?
        .flush()
        .map_err(Error::Write)?;
    Ok(summary)
}

/// Writes the export in clear to `out`, streaming.
///
/// A second thread reads the rows from its own read-only connection (one
/// snapshot for contacts and messages, even while the chat client writes)
/// and hands them over in batches; this thread formats and writes them.
fn export_plain(
    store: &Store,
    out: &mut dyn Write,
    options: &ExportOptions,
    progress: Progress<'_>,
) -> Result<ExportSummary, Error> {
    // Private since encryption was added: every caller goes through
    // `export`, so an export asked to be encrypted never leaks in clear.
    let mut writer = Writer {
        out,
        layout: options.layout,
        buf: Vec::with_capacity(1024),
        json: Vec::with_capacity(WRITE_BYTES + (1 << 16)),
    };
    writer.header(&header(store, options)?)?;
    let path = store.path().to_path_buf();
    let only = options.contact;
    let (tx, rx) = mpsc::sync_channel::<Chunk>(8);
    let (recycle_tx, recycle_rx) = mpsc::channel::<Vec<u8>>();
    let summary = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_rows(&path, only.as_ref(), &tx, &recycle_rx));
        let written = write_rows(&mut writer, &rx, &recycle_tx, progress);
        // Stops the reader early if writing failed.
        drop(rx);
        let read = reader
            .join()
            .unwrap_or_else(|_| Err(Error::Write(io::Error::other("the reader thread failed"))));
        let summary = written?;
        read?;
        Ok::<_, Error>(summary)
    })?;
    writer.end()?;
    writer.out.flush().map_err(Error::Write)?;
    Ok(summary)
}

/// What the reading thread hands over.
enum Chunk {
    Contacts(Vec<ContactRecord>),
    /// Messages with their events, as [`raw`] records, and how many.
    Messages(Vec<u8>, u64),
}

/// How many bytes of rows travel together between the threads.
const CHUNK_BYTES: usize = 1 << 18;

/// How many bytes of JSON are gathered before one write.
const WRITE_BYTES: usize = 1 << 20;

/// Formats and writes what the reader sends, handing emptied buffers back
/// through `recycle` so the reader allocates none after the first few.
fn write_rows(
    writer: &mut Writer<'_>,
    rx: &mpsc::Receiver<Chunk>,
    recycle: &mpsc::Sender<Vec<u8>>,
    progress: Progress<'_>,
) -> Result<ExportSummary, Error> {
    let mut summary = ExportSummary::default();
    let mut reported = 0;
    let enums = Enums::new()?;
    for chunk in rx {
        match chunk {
            Chunk::Contacts(contacts) => {
                for contact in &contacts {
                    writer.contact(contact, summary.contacts == 0)?;
                    summary.contacts += 1;
                }
                writer.between_sections()?;
            }
            Chunk::Messages(bytes, count) => {
                let mut fields = raw::Fields::new(&bytes);
                for _ in 0..count {
                    writer.message(&mut fields, &enums, summary.messages == 0)?;
                    summary.messages += 1;
                }
                // The reader may have finished: then the buffer just goes.
                let _ = recycle.send(bytes);
                if summary.messages - reported >= PROGRESS_EVERY {
                    reported = summary.messages;
                    progress(reported);
                }
            }
        }
    }
    progress(summary.messages);
    Ok(summary)
}

/// Reads contacts, then messages with their events, from one snapshot.
fn read_rows(
    path: &Path,
    only: Option<&PublicKey>,
    tx: &mpsc::SyncSender<Chunk>,
    recycle: &mpsc::Receiver<Vec<u8>>,
) -> Result<(), Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let snapshot = conn.unchecked_transaction()?;
    let contacts = contacts(&snapshot, only)?;
    let names: HashMap<Vec<u8>, String> = contacts
        .iter()
        .map(|c| (c.public_key.clone().into_bytes(), c.name.clone()))
        .collect();
    if tx.send(Chunk::Contacts(contacts)).is_err() {
        return Ok(());
    }
    messages(&snapshot, only, &names, tx, recycle)?;
    snapshot.finish()?;
    Ok(())
}

/// Writes the export to `path` through a temporary file in the same
/// directory, renamed into place only once complete and synced: an
/// interrupted export never leaves a truncated file under the final name.
///
/// The file is created readable and writable by the user alone (it may
/// hold the secret key, and always holds every message). A `path` that is
/// a directory, device, FIFO, socket or symbolic link is refused: renaming
/// over it would replace it with a regular file. Errors name `path`, never
/// the temporary file.
pub fn export_to_path(
    store: &Store,
    path: &Path,
    options: &ExportOptions,
    progress: Progress<'_>,
) -> Result<ExportSummary, Error> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    refuse_special(path)?;
    let (tmp, file) = create_temp(path).map_err(io_err)?;
    let mut out = BufWriter::with_capacity(1 << 16, file);
    let result = export(store, &mut out, options, progress)
        .map_err(|e| match e {
            Error::Write(source) => io_err(source),
            other => other,
        })
        .and_then(|summary| {
            let file = out.into_inner().map_err(|e| io_err(e.into_error()))?;
            file.sync_all().map_err(io_err)?;
            // Again: something may have been put there while we wrote.
            refuse_special(path)?;
            fs::rename(&tmp, path).map_err(io_err)?;
            Ok(summary)
        });
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Refuses a `path` that exists and is not a regular file.
fn refuse_special(path: &Path) -> Result<(), Error> {
    let meta = match fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let kind = file_kind(&meta.file_type());
    if kind == "regular file" {
        return Ok(());
    }
    Err(Error::NotAFile {
        path: path.to_path_buf(),
        kind,
    })
}

/// What kind of file this is, in words.
fn file_kind(t: &fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_fifo() {
            return "FIFO (named pipe)";
        }
        if t.is_char_device() || t.is_block_device() {
            return "device";
        }
        if t.is_socket() {
            return "socket";
        }
    }
    if t.is_symlink() {
        "symbolic link"
    } else if t.is_dir() {
        "directory"
    } else if t.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// Creates a new, empty temporary file beside `path`, mode 0600.
fn create_temp(path: &Path) -> io::Result<(PathBuf, fs::File)> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".to_owned());
    let mut attempts = 0;
    loop {
        let tmp = path.with_file_name(format!(
            ".{name}.tmp-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        match options.open(&tmp) {
            Ok(file) => return Ok((tmp, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    }
}

fn header(store: &Store, options: &ExportOptions) -> Result<Header, Error> {
    let public_key = store.public_key()?;
    let secret_key = match (&options.unlocked, options.include_secret) {
        (_, false) => None,
        (Some(identity), true) => Some(STANDARD.encode(*identity.secret_bytes())),
        (None, true) => store
            .identity()?
            .map(|i| STANDARD.encode(*i.secret_bytes())),
    };
    Ok(Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        exported_at: Some(clock::now()),
        public_key: public_key.map(|k| k.to_base64()),
        secret_key,
        home_router: store.home_router()?.map(|r| r.as_str().to_owned()),
    })
}

fn contacts(conn: &Connection, only: Option<&PublicKey>) -> Result<Vec<ContactRecord>, Error> {
    let mut stmt = conn.prepare(
        "SELECT name, public_key, added_at, router FROM contacts
         WHERE ?1 IS NULL OR public_key = ?1 ORDER BY name_key",
    )?;
    let rows = stmt.query_map([only.map(PublicKey::to_base64)], |r| {
        Ok(ContactRecord {
            name: r.get(0)?,
            public_key: r.get(1)?,
            added_at: r.get(2)?,
            router: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// The message columns the export reads, in the order of [`raw`] records
/// (`contact` is not a column: it comes from the contacts read first).
const FIELDS: [&str; 13] = [
    "msg_id",
    "peer_key",
    "contact",
    "direction",
    "body",
    "status",
    "created_at",
    "sent_at",
    "delivered_at",
    "read_at",
    "received_at",
    "failed_at",
    "failure_reason",
];

/// The event columns, in the order of [`raw`] records.
const EVENT_FIELDS: [&str; 3] = ["status", "at", "detail"];

/// Reads every message with its events, merging two cursors ordered by
/// message id (no query per message), and sends them as [`raw`] records
/// in chunks of about [`CHUNK_BYTES`]: the rows' text is copied once, and
/// the JSON is made on the writing thread.
fn messages(
    conn: &Connection,
    only: Option<&PublicKey>,
    names: &HashMap<Vec<u8>, String>,
    tx: &mpsc::SyncSender<Chunk>,
    recycle: &mpsc::Receiver<Vec<u8>>,
) -> Result<(), Error> {
    const COLUMNS: &str = "id, msg_id, peer_key, direction, body, status, created_at, sent_at, \
         delivered_at, read_at, received_at, failed_at, failure_reason";
    let peer = only.map(PublicKey::to_base64);
    let (mut msg_stmt, mut ev_stmt) = if peer.is_some() {
        (
            conn.prepare(&format!(
                "SELECT {COLUMNS} FROM messages WHERE peer_key = ?1 ORDER BY id"
            ))?,
            conn.prepare(
                "SELECT message_id, status, at, detail FROM message_events
                 WHERE message_id IN (SELECT id FROM messages WHERE peer_key = ?1)
                 ORDER BY message_id, seq",
            )?,
        )
    } else {
        (
            conn.prepare(&format!("SELECT {COLUMNS} FROM messages ORDER BY id"))?,
            conn.prepare(
                "SELECT message_id, status, at, detail FROM message_events
                 ORDER BY message_id, seq",
            )?,
        )
    };
    let (mut msgs, mut evs) = match &peer {
        Some(peer) => (msg_stmt.query([peer])?, ev_stmt.query([peer])?),
        None => (msg_stmt.query([])?, ev_stmt.query([])?),
    };
    let fresh = || match recycle.try_recv() {
        Ok(mut used) => {
            used.clear();
            used
        }
        Err(_) => Vec::with_capacity(CHUNK_BYTES + (1 << 16)),
    };
    // The next event not yet placed: its message id, its raw fields in `event`.
    let mut event = Vec::with_capacity(256);
    let mut next_event = read_event(&mut evs, &mut event)?;
    let mut buf = fresh();
    let mut count = 0u64;
    while let Some(row) = msgs.next()? {
        let id: i64 = row.get(0)?;
        raw::column(&mut buf, row, 1, FIELDS[0])?;
        let peer_key = raw::column(&mut buf, row, 2, FIELDS[1])?;
        raw::put(
            &mut buf,
            peer_key.and_then(|k| names.get(k)).map(String::as_bytes),
        );
        for (i, name) in FIELDS.iter().enumerate().skip(3) {
            raw::column(&mut buf, row, i, name)?;
        }
        let at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        let mut events = 0u32;
        // Events of messages not exported are skipped; those of this
        // message are appended.
        while let Some(of) = next_event {
            if of > id {
                break;
            }
            if of == id {
                buf.extend_from_slice(&event);
                events += 1;
            }
            next_event = read_event(&mut evs, &mut event)?;
        }
        buf[at..at + 4].copy_from_slice(&events.to_le_bytes());
        count += 1;
        if buf.len() >= CHUNK_BYTES {
            let full = std::mem::replace(&mut buf, fresh());
            if tx.send(Chunk::Messages(full, count)).is_err() {
                return Ok(());
            }
            count = 0;
        }
    }
    // A closed channel means the writer stopped and reports why.
    let _ = tx.send(Chunk::Messages(buf, count));
    Ok(())
}

/// Reads the next event into `event` (raw fields) and returns its message
/// id, or `None` at the end.
fn read_event(evs: &mut rusqlite::Rows<'_>, event: &mut Vec<u8>) -> Result<Option<i64>, Error> {
    let Some(row) = evs.next()? else {
        return Ok(None);
    };
    event.clear();
    let id: i64 = row.get(0)?;
    for (i, name) in EVENT_FIELDS.iter().enumerate() {
        raw::column(event, row, i + 1, name)?;
    }
    Ok(Some(id))
}

/// Rows in transit between the threads: each text field as its length
/// (u32, little-endian; `u32::MAX` for NULL) and its bytes. A message is
/// its [`FIELDS`], the number of its events (u32), then each event's
/// [`EVENT_FIELDS`].
mod raw {
    use rusqlite::types::{Type, ValueRef};
    use rusqlite::Row;

    use super::Error;

    const NULL: u32 = u32::MAX;

    /// Appends one field.
    pub(super) fn put(buf: &mut Vec<u8>, value: Option<&[u8]>) {
        match value {
            None => buf.extend_from_slice(&NULL.to_le_bytes()),
            Some(text) => {
                // SQLite's text is at most 2^31 - 1 bytes (SQLITE_MAX_LENGTH).
                let len = u32::try_from(text.len()).unwrap_or(NULL - 1);
                buf.extend_from_slice(&len.to_le_bytes());
                buf.extend_from_slice(&text[..len as usize]);
            }
        }
    }

    /// Appends column `i` of `row`, which must be text or NULL, and returns it.
    pub(super) fn column<'r>(
        buf: &mut Vec<u8>,
        row: &'r Row<'_>,
        i: usize,
        name: &str,
    ) -> rusqlite::Result<Option<&'r [u8]>> {
        let value = match row.get_ref(i)? {
            ValueRef::Null => None,
            ValueRef::Text(text) => Some(text),
            other => {
                return Err(rusqlite::Error::InvalidColumnType(
                    i,
                    name.to_owned(),
                    other.data_type(),
                ))
            }
        };
        put(buf, value);
        Ok(value)
    }

    /// Reads records back, field by field.
    pub(super) struct Fields<'a> {
        rest: &'a [u8],
    }

    impl<'a> Fields<'a> {
        pub(super) fn new(bytes: &'a [u8]) -> Self {
            Self { rest: bytes }
        }

        fn u32(&mut self) -> Result<u32, Error> {
            let (head, rest) = self.rest.split_first_chunk::<4>().ok_or_else(truncated)?;
            self.rest = rest;
            Ok(u32::from_le_bytes(*head))
        }

        /// The next field: `None` for NULL.
        pub(super) fn field(&mut self) -> Result<Option<&'a [u8]>, Error> {
            let len = self.u32()?;
            if len == NULL {
                return Ok(None);
            }
            let (text, rest) = self
                .rest
                .split_at_checked(len as usize)
                .ok_or_else(truncated)?;
            self.rest = rest;
            Ok(Some(text))
        }

        /// The next field as text, checked as UTF-8 (as reading a `String`
        /// column would); `None` for NULL.
        pub(super) fn text(&mut self, i: usize) -> Result<Option<&'a str>, Error> {
            self.field()?
                .map(|bytes| {
                    std::str::from_utf8(bytes).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e)).into()
                    })
                })
                .transpose()
        }

        /// The next field as text that must not be NULL.
        pub(super) fn required(&mut self, i: usize, name: &str) -> Result<&'a str, Error> {
            self.text(i)?.ok_or_else(|| {
                rusqlite::Error::InvalidColumnType(i, name.to_owned(), Type::Null).into()
            })
        }

        /// A count.
        pub(super) fn count(&mut self) -> Result<u32, Error> {
            self.u32()
        }
    }

    fn truncated() -> Error {
        Error::Write(std::io::Error::other(
            "the export's row buffer is truncated",
        ))
    }
}

/// The JSON of each direction and status, as serde writes them.
struct Enums {
    direction: Vec<(&'static str, Vec<u8>)>,
    status: Vec<(&'static str, Vec<u8>)>,
}

impl Enums {
    fn new() -> Result<Self, Error> {
        fn table<T: serde::Serialize + Copy>(
            all: &[T],
            text: fn(T) -> &'static str,
        ) -> Result<Vec<(&'static str, Vec<u8>)>, Error> {
            all.iter()
                .map(|v| Ok((text(*v), serde_json::to_vec(v).map_err(json_write)?)))
                .collect()
        }
        Ok(Self {
            direction: table(Direction::ALL, Direction::as_str)?,
            status: table(Status::ALL, Status::as_str)?,
        })
    }

    /// The JSON of the value stored as `text`, or the error reading it as
    /// a `T` gives.
    fn json<'t, T: std::str::FromStr<Err = String>>(
        table: &'t [(&'static str, Vec<u8>)],
        text: &str,
        i: usize,
    ) -> Result<&'t [u8], Error> {
        if let Some((_, json)) = table.iter().find(|(stored, _)| *stored == text) {
            return Ok(json);
        }
        let problem = match text.parse::<T>() {
            Ok(_) => format!("'{text}' has no JSON form"),
            Err(e) => e,
        };
        Err(rusqlite::Error::FromSqlConversionFailure(i, Type::Text, problem.into()).into())
    }
}

/// Whether `text` is a UUID as [`MessageId`] writes it (hyphenated, lower
/// case): then it is written as it is, else parsed and written again.
fn is_canonical_uuid(text: &[u8]) -> bool {
    text.len() == 36
        && text.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

/// Lays records out as a document or as lines.
struct Writer<'a> {
    out: &'a mut dyn Write,
    layout: Layout,
    /// One header or contact record.
    buf: Vec<u8>,
    /// Messages' JSON, written out every [`WRITE_BYTES`].
    json: Vec<u8>,
}

impl Writer<'_> {
    /// Serialises `value` into `buf` as an object, without its closing
    /// brace, so fields can be added.
    fn open_object(&mut self, kind: &str, value: &impl serde::Serialize) -> Result<(), Error> {
        self.buf.clear();
        let jsonl = self.layout == Layout::Jsonl;
        if jsonl {
            write!(self.buf, "{{\"kind\":\"{kind}\",").map_err(Error::Write)?;
        }
        let start = self.buf.len();
        serde_json::to_writer(&mut self.buf, value).map_err(json_write)?;
        if jsonl {
            // The value's own opening brace: the kind's brace opened it.
            self.buf.remove(start);
        }
        self.buf.pop();
        Ok(())
    }

    fn emit(&mut self, separator: &[u8]) -> Result<(), Error> {
        self.out.write_all(separator).map_err(Error::Write)?;
        self.out.write_all(&self.buf).map_err(Error::Write)
    }

    fn header(&mut self, header: &Header) -> Result<(), Error> {
        self.open_object("header", header)?;
        match self.layout {
            Layout::Json => self.buf.extend_from_slice(b",\"contacts\":["),
            Layout::Jsonl => self.buf.extend_from_slice(b"}"),
        }
        self.emit(b"")
    }

    fn contact(&mut self, contact: &ContactRecord, first: bool) -> Result<(), Error> {
        self.open_object("contact", contact)?;
        self.buf.push(b'}');
        self.emit(self.separator(first))
    }

    fn between_sections(&mut self) -> Result<(), Error> {
        if self.layout == Layout::Json {
            self.out
                .write_all(b"\n],\n\"messages\":[")
                .map_err(Error::Write)?;
        }
        Ok(())
    }

    /// Appends the next message of `fields` (a [`raw`] record) as JSON:
    /// byte for byte what serialising a [`crate::store::Message`] and its
    /// [`crate::store::messages::Event`]s with serde_json gives.
    fn message(
        &mut self,
        fields: &mut raw::Fields<'_>,
        enums: &Enums,
        first: bool,
    ) -> Result<(), Error> {
        let separator = self.separator(first);
        let out = &mut self.json;
        out.extend_from_slice(separator);
        out.extend_from_slice(match self.layout {
            Layout::Json => b"{",
            Layout::Jsonl => b"{\"kind\":\"message\",",
        });
        for (i, name) in FIELDS.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.push(b'"');
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            match i {
                0 => {
                    let text = fields.required(i, name)?;
                    if is_canonical_uuid(text.as_bytes()) {
                        out.push(b'"');
                        out.extend_from_slice(text.as_bytes());
                        out.push(b'"');
                    } else {
                        let id = MessageId::parse(text).map_err(|e| {
                            rusqlite::Error::FromSqlConversionFailure(i, Type::Text, Box::new(e))
                        })?;
                        json_out::string(out, &id.to_text());
                    }
                }
                3 => out.extend_from_slice(Enums::json::<Direction>(
                    &enums.direction,
                    fields.required(i, name)?,
                    i,
                )?),
                5 => out.extend_from_slice(Enums::json::<Status>(
                    &enums.status,
                    fields.required(i, name)?,
                    i,
                )?),
                1 | 4 | 6 => json_out::string(out, fields.required(i, name)?),
                _ => match fields.text(i)? {
                    Some(text) => json_out::string(out, text),
                    None => out.extend_from_slice(b"null"),
                },
            }
        }
        out.extend_from_slice(b",\"events\":[");
        for n in 0..fields.count()? {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"status\":");
            out.extend_from_slice(Enums::json::<Status>(
                &enums.status,
                fields.required(1, EVENT_FIELDS[0])?,
                1,
            )?);
            out.extend_from_slice(b",\"at\":");
            json_out::string(out, fields.required(2, EVENT_FIELDS[1])?);
            if let Some(detail) = fields.text(3)? {
                out.extend_from_slice(b",\"detail\":");
                json_out::string(out, detail);
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"]}");
        if out.len() >= WRITE_BYTES {
            self.flush_json()?;
        }
        Ok(())
    }

    /// Writes the messages' JSON gathered so far.
    fn flush_json(&mut self) -> Result<(), Error> {
        self.out.write_all(&self.json).map_err(Error::Write)?;
        self.json.clear();
        Ok(())
    }

    fn separator(&self, first: bool) -> &'static [u8] {
        match (self.layout, first) {
            (Layout::Json, true) => b"\n",
            (Layout::Json, false) => b",\n",
            (Layout::Jsonl, _) => b"\n",
        }
    }

    fn end(&mut self) -> Result<(), Error> {
        self.flush_json()?;
        let tail: &[u8] = match self.layout {
            Layout::Json => b"\n]}\n",
            Layout::Jsonl => b"\n",
        };
        self.out.write_all(tail).map_err(Error::Write)
    }
}

fn json_write(e: serde_json::Error) -> Error {
    Error::Write(io::Error::other(e))
}

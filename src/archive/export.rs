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
use rusqlite::types::Value;
use rusqlite::{Connection, OpenFlags};

use super::{ContactRecord, Error, Header, Progress, FORMAT, VERSION};
use crate::clock;
use crate::identity::PublicKey;
use crate::store::messages::{message_from_row, Event, MESSAGE_COLUMNS};
use crate::store::Message;
use crate::store::Store;

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
    };
    writer.header(&header(store, options)?)?;
    let path = store.path().to_path_buf();
    let only = options.contact;
    let (tx, rx) = mpsc::sync_channel::<Chunk>(16);
    let summary = std::thread::scope(|scope| {
        let reader = scope.spawn(move || read_rows(&path, only.as_ref(), &tx));
        let written = write_rows(&mut writer, &rx, progress);
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
    Messages(Vec<(Message, Vec<Event>)>),
}

/// How many messages travel together between the threads.
const CHUNK: usize = 256;

fn write_rows(
    writer: &mut Writer<'_>,
    rx: &mpsc::Receiver<Chunk>,
    progress: Progress<'_>,
) -> Result<ExportSummary, Error> {
    let mut summary = ExportSummary::default();
    let mut reported = 0;
    for chunk in rx {
        match chunk {
            Chunk::Contacts(contacts) => {
                for contact in &contacts {
                    writer.contact(contact, summary.contacts == 0)?;
                    summary.contacts += 1;
                }
                writer.between_sections()?;
            }
            Chunk::Messages(batch) => {
                for (message, events) in &batch {
                    writer.message(message, events, summary.messages == 0)?;
                    summary.messages += 1;
                }
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
) -> Result<(), Error> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let snapshot = conn.unchecked_transaction()?;
    let contacts = contacts(&snapshot, only)?;
    let names: HashMap<String, String> = contacts
        .iter()
        .map(|c| (c.public_key.clone(), c.name.clone()))
        .collect();
    if tx.send(Chunk::Contacts(contacts)).is_err() {
        return Ok(());
    }
    messages(&snapshot, only, &names, tx)?;
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

/// Reads every message with its events, merging the two cursors, and
/// sends them in chunks.
fn messages(
    conn: &Connection,
    only: Option<&PublicKey>,
    names: &HashMap<String, String>,
    tx: &mpsc::SyncSender<Chunk>,
) -> Result<(), Error> {
    let peer = Value::from(only.map(PublicKey::to_base64));
    // Contact names come from `names`: a join per row costs more.
    let columns = MESSAGE_COLUMNS.replace("c.name", "NULL");
    let mut msg_stmt = conn.prepare(&format!(
        "SELECT {columns} FROM messages AS m
         WHERE ?1 IS NULL OR m.peer_key = ?1 ORDER BY m.id"
    ))?;
    let mut ev_stmt = conn.prepare(
        "SELECT e.message_id, e.status, e.at, e.detail
         FROM message_events AS e
         WHERE ?1 IS NULL
            OR e.message_id IN (SELECT id FROM messages WHERE peer_key = ?1)
         ORDER BY e.message_id, e.seq",
    )?;
    let mut msgs = msg_stmt.query([&peer])?;
    let mut evs = ev_stmt.query([&peer])?;
    let mut next_event = read_event(evs.next()?)?;
    let mut batch = Vec::with_capacity(CHUNK);
    while let Some(row) = msgs.next()? {
        let mut message = message_from_row(row)?;
        message.contact = names.get(&message.peer_key).cloned();
        let mut events = Vec::new();
        // Events of messages not exported are skipped; those of this
        // message are collected.
        while let Some((id, event)) = next_event.take() {
            if id > message.id {
                next_event = Some((id, event));
                break;
            }
            if id == message.id {
                events.push(event);
            }
            next_event = read_event(evs.next()?)?;
        }
        batch.push((message, events));
        if batch.len() == CHUNK {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(CHUNK));
            if tx.send(Chunk::Messages(full)).is_err() {
                return Ok(());
            }
        }
    }
    // A closed channel means the writer stopped and reports why.
    let _ = tx.send(Chunk::Messages(batch));
    Ok(())
}

fn read_event(row: Option<&rusqlite::Row<'_>>) -> rusqlite::Result<Option<(i64, Event)>> {
    row.map(|r| {
        Ok((
            r.get(0)?,
            Event {
                status: r.get(1)?,
                at: r.get(2)?,
                detail: r.get(3)?,
            },
        ))
    })
    .transpose()
}

/// Lays records out as a document or as lines.
struct Writer<'a> {
    out: &'a mut dyn Write,
    layout: Layout,
    buf: Vec<u8>,
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

    fn message(&mut self, message: &Message, events: &[Event], first: bool) -> Result<(), Error> {
        self.open_object("message", message)?;
        self.buf.extend_from_slice(b",\"events\":");
        serde_json::to_writer(&mut self.buf, events).map_err(json_write)?;
        self.buf.push(b'}');
        self.emit(self.separator(first))
    }

    fn separator(&self, first: bool) -> &'static [u8] {
        match (self.layout, first) {
            (Layout::Json, true) => b"\n",
            (Layout::Json, false) => b",\n",
            (Layout::Jsonl, _) => b"\n",
        }
    }

    fn end(&mut self) -> Result<(), Error> {
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

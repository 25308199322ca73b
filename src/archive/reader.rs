//! Reading an export: JSON Lines line by line, or a JSON document through
//! a streaming visitor ([`super::import_doc`]), on a second thread that
//! parses and validates records and hands them over in batches to the
//! [`Importer`], which does the SQLite work in one transaction.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use super::import::{
    bulk, fault_at, malformed, strip_position, ImportOptions, ImportReport, Importer, Validator,
};
use super::{ContactRecord, Error, Header, Line, MessageRecord, Progress};
use crate::store::Store;

/// Imports the export at `path`.
pub fn import_file(
    store: &mut Store,
    path: &Path,
    options: ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport, Error> {
    let file = File::open(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    import_reader(
        store,
        BufReader::with_capacity(1 << 16, file),
        options,
        progress,
    )
}

/// Imports an export read from `reader`, JSON document or JSON Lines.
///
/// Parsing runs on a second thread and hands records over in batches, so
/// JSON decoding and SQLite's work overlap.
pub fn import_reader(
    store: &mut Store,
    reader: impl BufRead + Send,
    options: ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport, Error> {
    bulk(store, |store| {
        read_and_import(store, reader, options, progress)
    })
}

fn read_and_import(
    store: &mut Store,
    reader: impl BufRead + Send,
    options: ImportOptions,
    progress: Progress<'_>,
) -> Result<ImportReport, Error> {
    let bytes = AtomicU64::new(0);
    let mut reader = Counting {
        inner: reader,
        count: &bytes,
    };
    let mut first = Vec::new();
    (&mut reader)
        .take(1 << 20)
        .read_until(b'\n', &mut first)
        .map_err(read_error)?;
    // Windows editors (Notepad, PowerShell's Out-File) start UTF-8 files
    // with a byte order mark, which JSON parsers refuse: drop it.
    if let Some(rest) = first.strip_prefix(BOM) {
        first = rest.to_vec();
    }
    if first.iter().all(u8::is_ascii_whitespace) {
        return Err(malformed("line 1", "the file is empty".into()));
    }
    let mut importer = Importer::begin(store, options)?;
    let jsonl = is_json_line(&first);
    let (tx, rx) = mpsc::sync_channel::<Vec<(Loc, Item)>>(8);
    std::thread::scope(|scope| {
        let producer = scope.spawn(move || {
            let mut out = Batcher::new(tx);
            if jsonl {
                read_lines(&first, reader, &mut out)?;
            } else {
                let chained = io::Cursor::new(first).chain(reader);
                super::import_doc::read_document(chained, &mut out)?;
            }
            out.flush();
            Ok::<(), Error>(())
        });
        let consumed = consume(&mut importer, &rx, &bytes, progress);
        // Stops the producer early if the consumer gave up.
        drop(rx);
        let produced = producer
            .join()
            .unwrap_or_else(|_| Err(malformed("the file", "the reader thread failed".into())));
        consumed.and(produced)
    })?;
    if !importer.saw_header() {
        return Err(malformed(
            "the file",
            "no header: it does not look like a chat-p2p export".into(),
        ));
    }
    importer.finish()
}

/// The UTF-8 byte order mark some editors put at the start of a file.
pub(crate) const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Applies every record received, in order.
fn consume(
    importer: &mut Importer<'_>,
    rx: &mpsc::Receiver<Vec<(Loc, Item)>>,
    bytes: &AtomicU64,
    progress: Progress<'_>,
) -> Result<(), Error> {
    for batch in rx {
        for (loc, item) in batch {
            let result = match item {
                Item::Header(h) => importer.header(h),
                Item::Contact(c) => importer.contact(c),
                Item::Message(m) => importer.checked_message(*m),
            };
            result.map_err(|f| fault_at(f, &loc.to_string()))?;
        }
        progress(bytes.load(Ordering::Relaxed));
    }
    Ok(())
}

/// Where a record was read, to name it in an error.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Loc {
    /// A line of a JSON Lines file.
    Line(usize),
    /// The header fields of a document.
    Header,
    /// `contacts[i]` of a document.
    Contact(usize),
    /// `messages[i]` of a document.
    Message(usize),
}

impl fmt::Display for Loc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Loc::Line(n) => write!(f, "line {n}"),
            Loc::Header => f.write_str("the header"),
            Loc::Contact(i) => write!(f, "contacts[{i}]"),
            Loc::Message(i) => write!(f, "messages[{i}]"),
        }
    }
}

/// A parsed record on its way to the [`Importer`].
pub(crate) enum Item {
    Header(Header),
    Contact(ContactRecord),
    Message(Box<MessageRecord>),
}

/// Collects records into batches for the importing thread.
pub(crate) struct Batcher {
    tx: mpsc::SyncSender<Vec<(Loc, Item)>>,
    items: Vec<(Loc, Item)>,
}

/// The importing side stopped (it found a problem and reports it).
pub(crate) struct Stopped;

impl Batcher {
    const SIZE: usize = 512;

    fn new(tx: mpsc::SyncSender<Vec<(Loc, Item)>>) -> Self {
        Self {
            tx,
            items: Vec::with_capacity(Self::SIZE),
        }
    }

    pub(crate) fn push(&mut self, loc: Loc, item: Item) -> Result<(), Stopped> {
        self.items.push((loc, item));
        if self.items.len() >= Self::SIZE {
            let full = std::mem::replace(&mut self.items, Vec::with_capacity(Self::SIZE));
            self.tx.send(full).map_err(|_| Stopped)?;
        }
        Ok(())
    }

    fn flush(&mut self) {
        let rest = std::mem::take(&mut self.items);
        // A closed channel means the importer stopped and reports why.
        let _ = self.tx.send(rest);
    }
}

/// Whether the first line is a whole JSON object with a `kind`: JSON Lines.
fn is_json_line(first: &[u8]) -> bool {
    matches!(
        serde_json::from_slice::<serde_json::Value>(first),
        Ok(serde_json::Value::Object(map)) if map.contains_key("kind")
    )
}

fn read_lines(first: &[u8], mut reader: impl BufRead, out: &mut Batcher) -> Result<(), Error> {
    let mut validator = Validator::default();
    let mut line = String::from_utf8(first.to_vec())
        .map_err(|_| malformed("line 1", "not UTF-8 text".into()))?;
    let mut number = 1usize;
    loop {
        if !line.trim().is_empty() {
            let record = parse_line(&line).map_err(|e| {
                malformed(
                    &format!("line {number}, column {}", e.column()),
                    strip_position(&e),
                )
            })?;
            let item = match record {
                Line::Header(h) => Item::Header(h),
                Line::Contact(c) => Item::Contact(c),
                Line::Message(m) => Item::Message(Box::new(
                    validator
                        .check(*m)
                        .map_err(|f| fault_at(f, &format!("line {number}")))?,
                )),
            };
            if out.push(Loc::Line(number), item).is_err() {
                return Ok(());
            }
        }
        line.clear();
        number += 1;
        if reader.read_line(&mut line).map_err(read_error)? == 0 {
            return Ok(());
        }
    }
}

/// Parses one JSON Lines record.
///
/// `Line` is tagged by `kind`, which serde can only find by first
/// buffering the whole object into an intermediate tree (the tag may come
/// last, as it does in our own exports): for the message lines, nearly all
/// of a large export, that costs more than the parsing itself. So a line
/// whose `kind` is `message` is parsed straight into its record; anything
/// else, and any line that fails that way, takes the tagged path, whose
/// result and error messages are the reference.
fn parse_line(line: &str) -> serde_json::Result<Line> {
    if let Ok(KindOnly { kind: Some(kind) }) = serde_json::from_str::<KindOnly<'_>>(line) {
        if kind == "message" {
            if let Ok(record) = serde_json::from_str::<MessageRecord>(line) {
                return Ok(Line::Message(Box::new(record)));
            }
        }
    }
    serde_json::from_str(line)
}

/// A line's `kind`, every other field skipped without being stored.
#[derive(serde::Deserialize)]
struct KindOnly<'a> {
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
}

pub(crate) fn read_error(e: io::Error) -> Error {
    if e.kind() == io::ErrorKind::InvalidData {
        malformed("the file", "not UTF-8 text".into())
    } else {
        Error::Io {
            path: "the import".into(),
            source: e,
        }
    }
}

/// Counts the bytes read, for the progress bar.
struct Counting<'c, R> {
    inner: R,
    count: &'c AtomicU64,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.count.fetch_add(n as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    fn run(store: &mut Store, text: &str) -> Result<ImportReport, Error> {
        import_reader(
            store,
            io::Cursor::new(text.to_owned()),
            ImportOptions::default(),
            &mut |_| {},
        )
    }

    #[test]
    fn restores_the_connection_settings_and_the_trigger() {
        let (_dir, mut store) = temp_store();
        let doc = r#"{"format":"chat-p2p-export","version":1,"messages":[]}"#;
        run(&mut store, doc).unwrap();
        let sync: i64 = store
            .conn()
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        let temp: i64 = store
            .conn()
            .pragma_query_value(None, "temp_store", |r| r.get(0))
            .unwrap();
        assert_eq!(temp, 2);
        // Live inserts are indexed again.
        let peer = Identity::generate().public_key();
        store.insert_outgoing(&peer, "after import").unwrap();
        let hits = store
            .search("after", &Default::default(), crate::store::Order::Newest, 5)
            .unwrap();
        assert_eq!(hits.len(), 1);
    }

    /// What the tagged enum alone makes of a line: the reference.
    fn tagged(line: &str) -> String {
        format!(
            "{:?}",
            serde_json::from_str::<Line>(line).map_err(|e| e.to_string())
        )
    }

    #[test]
    fn a_message_line_parsed_directly_is_what_the_tagged_path_gives() {
        let message = r#"{"body":"hé \"kind\":\"message\"","created_at":"2025-01-01T07:29:00.418Z","delivered_at":null,"direction":"in","events":[{"at":"2025-01-01T07:29:00.568Z","detail":null,"status":"received"}],"failed_at":null,"failure_reason":null,"kind":"message","msg_id":"019420c4-9002-72ff-b30c-e22ca85b0eac","peer_key":"Ju7tH7cqcEpo7GyKJCJl42JL5MzSiX91W0PoegMmeUg=","read_at":null,"received_at":"2025-01-01T07:29:00.568Z","sent_at":null,"status":"received","contact":"bob"}"#;
        let direct = format!("{:?}", parse_line(message).map_err(|e| e.to_string()));
        assert!(direct.starts_with("Ok(Message("), "{direct}");
        assert_eq!(direct, tagged(message));
        // The kind first, spaces, no optional fields.
        let short = r#"{ "kind" : "message", "msg_id":"019420c4-9002-72ff-b30c-e22ca85b0eac","peer_key":"k","direction":"out","body":"b","status":"sent","created_at":"2025-01-01T00:00:00Z"}"#;
        assert_eq!(
            format!("{:?}", parse_line(short).map_err(|e| e.to_string())),
            tagged(short)
        );
    }

    #[test]
    fn other_lines_and_bad_message_lines_keep_the_tagged_path_and_its_errors() {
        for line in [
            // Not a message, with a message's kind nested inside.
            r#"{"kind":"contact","name":"bob","public_key":"k","extra":{"kind":"message"}}"#,
            r#"{"kind":"header","format":"chat-p2p-export","version":1}"#,
            // A message missing its body, one with a bad status, one with
            // its kind twice, one with another kind.
            r#"{"kind":"message","msg_id":"019420c4-9002-72ff-b30c-e22ca85b0eac","peer_key":"k","direction":"out","status":"sent","created_at":"2025-01-01T00:00:00Z"}"#,
            r#"{"kind":"message","msg_id":"019420c4-9002-72ff-b30c-e22ca85b0eac","peer_key":"k","direction":"out","body":"b","status":"lost","created_at":"2025-01-01T00:00:00Z"}"#,
            r#"{"kind":"message","kind":"message","msg_id":"019420c4-9002-72ff-b30c-e22ca85b0eac","peer_key":"k","direction":"out","body":"b","status":"sent","created_at":"2025-01-01T00:00:00Z"}"#,
            r#"{"kind":"note","msg_id":"019420c4-9002-72ff-b30c-e22ca85b0eac","peer_key":"k","direction":"out","body":"b","status":"sent","created_at":"2025-01-01T00:00:00Z"}"#,
            r#"{"kind":"message""#,
            r#"[1, 2]"#,
        ] {
            let got = format!("{:?}", parse_line(line).map_err(|e| e.to_string()));
            assert_eq!(got, tagged(line), "{line}");
        }
    }

    #[test]
    fn a_bad_record_in_a_document_is_named_by_its_place() {
        let (_dir, mut store) = temp_store();
        let doc = r#"{"format":"chat-p2p-export","version":1,"messages":[
            {"msg_id":"00000000-0000-7000-8000-000000000001","peer_key":"nope",
             "direction":"in","body":"x","status":"received","created_at":"2026-01-01T00:00:00Z"}]}"#;
        let err = run(&mut store, doc).unwrap_err().to_string();
        assert!(err.starts_with("messages[0]: "), "{err}");
        assert!(err.contains("peer_key"), "{err}");
        // The trigger came back with the rollback.
        let triggers: i64 = store
            .conn()
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'messages_fts_insert'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(triggers, 1);
    }
}

//! Import: reads an export (JSON document or JSON Lines) record by record
//! into the profile, in one pass and one transaction, so a malformed or
//! truncated file commits nothing.
//!
//! Messages deduplicate (ours by id, received ones by sender and id) and
//! contacts merge by key, so importing the same file twice changes nothing. The FTS index is not fed row by row through
//! its trigger (FTS5 flushes at every statement savepoint, three times
//! slower): the trigger is dropped inside the transaction, the new rows are
//! indexed with one statement at the end, and the trigger is put back
//! before the commit.

use std::collections::HashSet;
use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rusqlite::{params, Transaction};
use serde::Serialize;

use super::{ContactRecord, Error, Header, MessageRecord, FORMAT, VERSION};
use crate::address::Address;
use crate::client::ServerUrl;
use crate::clock;
use crate::identity::{Identity, PublicKey};
use crate::store::fts;
use crate::store::fts_build::{self, ParallelFts};
use crate::store::messages::Event;
use crate::store::{self, ContactName, Direction, Merge, Status, Store};

/// The page cache an import uses, in KiB.
const IMPORT_CACHE_KIB: i64 = 256 * 1024;

/// How to import.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImportOptions {
    /// Replace this profile's identity with the one in the import.
    pub force: bool,
    /// Accept an export made by another identity (without its key pair),
    /// or one imported into a profile that has no identity yet: its
    /// outgoing messages become this profile's. Refused otherwise.
    pub other_identity: bool,
    /// Legacy import: skip a `messages/NAME.json` whose NAME is neither a
    /// contact nor a public key (listed in the report) instead of refusing
    /// the whole import.
    pub skip_unknown: bool,
}

/// What an import did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct ImportReport {
    /// New messages stored.
    pub messages_added: u64,
    /// Messages already stored (our own with the same id, or the same
    /// sender's with the same id), left as they were.
    pub messages_known: u64,
    /// New contacts saved.
    pub contacts_added: u64,
    /// Contacts already saved with the same key.
    pub contacts_known: u64,
    /// Contacts not saved or saved under another name, one line each.
    pub contact_notes: Vec<String>,
    /// The identity the profile took from the import, if it did.
    pub identity_adopted: Option<String>,
    /// The identity that the import was replacing, with `--force`.
    pub identity_replaced: Option<String>,
    /// The export's public key when it differs from the profile's and no
    /// key pair came with it: its "out" messages were written by that key.
    pub foreign_export: Option<String>,
    /// Legacy files skipped with `--skip-unknown`: their paths.
    pub skipped_files: Vec<String>,
    /// The home router this profile took from its own identity's export
    /// (it had none recorded), if it did.
    pub home_adopted: Option<String>,
}

/// A problem with one record: `Invalid` is the input's fault and gets its
/// line or path attached by the reader; `Fatal` is not about the input.
pub(crate) enum Fault {
    Invalid(String),
    Fatal(Error),
}

impl<E: Into<Error>> From<E> for Fault {
    fn from(e: E) -> Self {
        Fault::Fatal(e.into())
    }
}

/// Runs `f` with the connection tuned for a bulk import, then restores the
/// settings every connection has (see `store::connect`).
pub(crate) fn bulk<T>(
    store: &mut Store,
    f: impl FnOnce(&mut Store) -> Result<T, Error>,
) -> Result<T, Error> {
    // A bulk import touches index pages all over the file: with the
    // default 2 MB cache SQLite spills dirty pages to the WAL mid-way and
    // reads them back.
    store
        .conn()
        .pragma_update(None, "cache_size", -IMPORT_CACHE_KIB)?;
    // The commit does not wait for the WAL to reach the disk: a power cut
    // just after an import may lose that import (it is idempotent: run it
    // again) but never corrupts the file or loses what was there before.
    // The checkpoint that follows the commit syncs the database file.
    store.conn().pragma_update(None, "synchronous", "NORMAL")?;
    // Building the deferred indexes sorts every row: in temporary files
    // beyond the cache rather than all in memory (10M rows took 1.4 GB).
    store.conn().pragma_update(None, "temp_store", "FILE")?;
    let result = f(store);
    let restored = store
        .conn()
        .pragma_update(None, "synchronous", "FULL")
        .and_then(|()| store.conn().pragma_update(None, "temp_store", "MEMORY"))
        .and_then(|()| store.conn().pragma_update(None, "cache_size", -2000));
    let value = result?;
    restored?;
    Ok(value)
}

/// Into a profile without messages, drops the messages' secondary
/// indexes that are not UNIQUE (the unique ones find duplicates during the
/// import) and returns their SQL: building an index once over all the rows
/// (a sort) costs less than inserting into it row by row. Inside the
/// import's transaction, so a failed import rolls the drop back too.
fn defer_indexes(tx: &Transaction<'_>, first_new_id: i64) -> Result<Vec<String>, Error> {
    let empty: bool = tx.query_row("SELECT NOT EXISTS (SELECT 1 FROM messages)", [], |r| {
        r.get(0)
    })?;
    if first_new_id != 1 || !empty {
        return Ok(Vec::new());
    }
    let indexes: Vec<(String, String)> = tx
        .prepare(
            "SELECT name, sql FROM sqlite_schema
             WHERE type = 'index' AND tbl_name = 'messages' AND sql IS NOT NULL
               AND sql NOT LIKE 'CREATE UNIQUE %'
             ORDER BY name",
        )?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut deferred = Vec::with_capacity(indexes.len());
    for (name, sql) in indexes {
        tx.execute_batch(&format!("DROP INDEX \"{}\"", name.replace('"', "\"\"")))?;
        deferred.push(sql);
    }
    Ok(deferred)
}

/// Writes records into one open transaction.
pub(crate) struct Importer<'a> {
    tx: Transaction<'a>,
    force: bool,
    other_identity: bool,
    own_key: Option<String>,
    /// This profile's home router, as recorded (or adopted by this import).
    own_home: Option<ServerUrl>,
    /// The export's home router: where its contacts on "the same router
    /// as mine" receive.
    export_home: Option<ServerUrl>,
    validator: Validator,
    first_new_id: i64,
    saw_header: bool,
    report: ImportReport,
    /// Events waiting for a multi-row INSERT (one statement per event
    /// costs a third of the import time).
    events: Vec<(i64, i64, Event)>,
    /// The messages' secondary indexes dropped for this import (their
    /// SQL), rebuilt by [`Importer::finish`].
    deferred_indexes: Vec<String>,
    /// The FTS indexes built on another thread, when this import fills a
    /// fresh copy of an empty profile.
    parallel_fts: Option<ParallelFts>,
}

impl<'a> Importer<'a> {
    /// Opens the transaction and detaches the per-row FTS trigger.
    pub(crate) fn begin(store: &'a mut Store, options: ImportOptions) -> Result<Self, Error> {
        let own_key = store.public_key()?.map(|k| k.to_base64());
        let scratch = store.fts_scratch().map(Path::to_path_buf);
        let tx = store.bulk_transaction()?;
        let own_home = store::home::home_tx(&tx)?;
        let first_new_id = fts::suspend(&tx)?;
        let deferred_indexes = defer_indexes(&tx, first_new_id)?;
        let parallel_fts = match scratch {
            Some(path) if !deferred_indexes.is_empty() && fts_build::indexes_empty(&tx)? => {
                Some(ParallelFts::start(&path))
            }
            _ => None,
        };
        Ok(Self {
            tx,
            force: options.force,
            other_identity: options.other_identity,
            own_key,
            own_home,
            export_home: None,
            validator: Validator::default(),
            first_new_id,
            saw_header: false,
            report: ImportReport::default(),
            events: Vec::with_capacity(EVENT_BATCH + 16),
            deferred_indexes,
            parallel_fts,
        })
    }

    /// Indexes the new rows, restores the trigger and commits.
    pub(crate) fn finish(mut self) -> Result<ImportReport, Error> {
        flush_events(&self.tx, &mut self.events)?;
        // The builder finishes its last rows while the indexes are built.
        if let Some(parallel) = &mut self.parallel_fts {
            parallel.close()?;
        }
        for sql in &self.deferred_indexes {
            self.tx.execute_batch(sql)?;
        }
        match self.parallel_fts.take() {
            Some(parallel) => parallel.copy_into(&self.tx)?,
            None => fts::resume(&self.tx, self.first_new_id)?,
        }
        self.tx.commit()?;
        Ok(self.report)
    }

    /// Makes `identity` the profile's: adopted when it has none, refused
    /// when it has another unless `force`.
    pub(crate) fn identity(&mut self, identity: &Identity) -> Result<(), Fault> {
        let key = identity.public_key().to_base64();
        match &self.own_key {
            Some(own) if *own == key => return Ok(()),
            Some(own) if !self.force => {
                return Err(Fault::Fatal(Error::IdentityConflict {
                    existing: own.clone(),
                    incoming: key,
                }))
            }
            _ => {}
        }
        let replaced = store::set_identity_tx(&self.tx, identity, true)?;
        self.report.identity_replaced = replaced.map(|k| k.to_base64());
        self.report.identity_adopted = Some(key.clone());
        self.own_key = Some(key);
        Ok(())
    }

    /// Whether the header was seen.
    pub(crate) fn saw_header(&self) -> bool {
        self.saw_header
    }

    /// Starts an import that has no header (the original client's files).
    pub(crate) fn headerless(&mut self) {
        self.saw_header = true;
    }

    /// Checks the header and takes its key pair, if it carries one.
    pub(crate) fn header(&mut self, header: Header) -> Result<(), Fault> {
        if self.saw_header {
            return Err(Fault::Invalid("a second header".into()));
        }
        self.saw_header = true;
        if header.format != FORMAT {
            return Err(Fault::Invalid(format!(
                "not a chat-p2p export (format is '{}', expected '{FORMAT}')",
                header.format
            )));
        }
        if header.version != VERSION {
            return Err(Fault::Invalid(format!(
                "export format version {} is not supported (this chat-p2p reads version {VERSION}); upgrade chat-p2p",
                header.version
            )));
        }
        self.export_home = header
            .home_router
            .as_deref()
            .map(|text| {
                ServerUrl::parse(text).map_err(|e| Fault::Invalid(format!("home_router: {e}")))
            })
            .transpose()?;
        if let Some(secret) = &header.secret_key {
            let identity = decode_secret(secret)?;
            if header.public_key.as_deref() != Some(&identity.public_key().to_base64()) {
                return Err(Fault::Invalid(
                    "the secret key does not match the public key".into(),
                ));
            }
            self.identity(&identity)?;
        } else {
            self.check_author(header.public_key.clone())?;
        }
        if header.public_key.is_some() && header.public_key == self.own_key {
            self.adopt_home()?;
        }
        Ok(())
    }

    /// Records the export's home router as this profile's when the export
    /// is this identity's own and the profile has no home yet (a profile
    /// restored from a backup receives where it did).
    fn adopt_home(&mut self) -> Result<(), Fault> {
        let (Some(home), None) = (&self.export_home, &self.own_home) else {
            return Ok(());
        };
        self.tx.execute(
            "INSERT INTO home (only, router, previous, changed_at) VALUES (1, ?1, NULL, ?2)
             ON CONFLICT (only) DO UPDATE SET router = ?1, changed_at = ?2
             WHERE home.router IS NULL",
            params![home.as_str(), clock::now()],
        )?;
        self.report.home_adopted = Some(home.as_str().to_owned());
        self.own_home = Some(home.clone());
        Ok(())
    }

    /// Where the contact in `record` receives, if the export says: a
    /// record without a router is on the exporting profile's home.
    fn contact_router(&self, record: &ContactRecord) -> Result<Option<ServerUrl>, Fault> {
        let router = match &record.router {
            Some(text) => Some(
                Address::parse_router(text)
                    .map_err(|e| Fault::Invalid(format!("contact '{}': {e}", record.name)))?,
            ),
            None => self.export_home.clone(),
        };
        Ok(router)
    }

    /// A contact saved here already: its router is kept, and a different
    /// one in the export is noted.
    fn keep_router(&mut self, key: &PublicKey, theirs: Option<ServerUrl>) -> Result<(), Fault> {
        let Some(theirs) = theirs else {
            return Ok(());
        };
        let (name, router): (String, Option<String>) = self.tx.query_row(
            "SELECT name, router FROM contacts WHERE public_key = ?1",
            [key.to_base64()],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let ours = match router {
            Some(text) => {
                Some(
                    ServerUrl::parse(&text).map_err(|detail| store::Error::Corrupt {
                        what: "contact router",
                        detail,
                    })?,
                )
            }
            None => self.own_home.clone(),
        };
        if ours.as_ref() != Some(&theirs) {
            let ours = ours.map_or("the same router as yours".to_owned(), |r| {
                r.short().to_owned()
            });
            self.report.contact_notes.push(format!(
                "'{name}' kept its router {ours}; the export says {} \
                 ('chat-p2p set-contact-router' changes it)",
                theirs.short()
            ));
        }
        Ok(())
    }

    /// Refuses an export written by another identity unless asked: its
    /// outgoing messages would be merged as this profile's own. A profile
    /// without an identity counts as another one, since the next `init`
    /// would make those messages look like the new identity's.
    fn check_author(&mut self, author: Option<String>) -> Result<(), Fault> {
        let Some(theirs) = author else {
            return Ok(());
        };
        if self.own_key.as_ref() == Some(&theirs) {
            return Ok(());
        }
        if !self.other_identity {
            return Err(Fault::Fatal(Error::OtherIdentity {
                author: theirs,
                own: self.own_key.clone(),
            }));
        }
        self.report.foreign_export = Some(theirs);
        Ok(())
    }

    fn require_header(&self) -> Result<(), Fault> {
        if self.saw_header {
            Ok(())
        } else {
            Err(Fault::Invalid(
                "the header (format and version) must come before contacts and messages".into(),
            ))
        }
    }

    /// Merges one contact by key.
    pub(crate) fn contact(&mut self, contact: ContactRecord) -> Result<(), Fault> {
        self.require_header()?;
        let key = PublicKey::parse(&contact.public_key)
            .map_err(|e| Fault::Invalid(format!("contact '{}': {e}", contact.name)))?;
        let router = self.contact_router(&contact)?;
        let name = match ContactName::parse(&contact.name) {
            Ok(name) => name,
            // A name today's rules refuse (an old export may hold one) is
            // not saved; the messages stay, under the key's fingerprint.
            Err(e) => {
                self.report.contact_notes.push(format!(
                    "'{}' not saved: {e}; its messages are kept under its fingerprint {}",
                    contact.name,
                    key.fingerprint()
                ));
                return Ok(());
            }
        };
        let added_at = match &contact.added_at {
            Some(at) => normalize(at, "added_at")?,
            None => clock::now(),
        };
        let merge =
            store::merge_contact_tx(&self.tx, &name, &key, self.own_key.as_deref(), &added_at)?;
        let note = match merge {
            Merge::Added => {
                self.report.contacts_added += 1;
                // This profile's own home is stored as "the same router as
                // mine" (NULL), and moves with it.
                if let Some(router) = router.filter(|r| Some(r) != self.own_home.as_ref()) {
                    self.tx.execute(
                        "UPDATE contacts SET router = ?1 WHERE public_key = ?2",
                        params![router.as_str(), key.to_base64()],
                    )?;
                }
                return Ok(());
            }
            Merge::Unchanged => {
                self.report.contacts_known += 1;
                return self.keep_router(&key, router);
            }
            Merge::KeptName(existing) => {
                self.report.contacts_known += 1;
                self.keep_router(&key, router)?;
                format!("'{name}' is already saved as '{existing}'; kept '{existing}'")
            }
            Merge::NameClash => format!(
                "'{name}' not saved: another key already has that name; its messages are kept under its fingerprint {}",
                key.fingerprint()
            ),
            Merge::LookAlike(existing) => format!(
                "'{name}' not saved: it looks like the existing contact '{existing}'; its messages are kept under its fingerprint {}",
                key.fingerprint()
            ),
            Merge::OwnKey => format!("'{name}' not saved: it is this profile's own key"),
        };
        self.report.contact_notes.push(note);
        Ok(())
    }

    /// Moves our own message `msg_id`, if stored and still `sent`, to
    /// `delivered` at `at` with `detail` in its timeline. For legacy
    /// messages an earlier chat-p2p imported as `sent`, where they would
    /// otherwise wait for a receipt that can never come.
    pub(crate) fn settle_as_delivered(
        &mut self,
        msg_id: &store::MessageId,
        at: &str,
        detail: &str,
    ) -> Result<(), Fault> {
        let Some(current) = store::messages::message_tx(&self.tx, msg_id)? else {
            return Ok(());
        };
        if current.direction == Direction::Out && current.status == Status::Sent {
            let delivered = Status::Delivered;
            store::messages::apply_status_tx(&self.tx, msg_id, delivered, at, Some(detail))?;
        }
        Ok(())
    }

    /// How many messages this import has added so far.
    pub(crate) fn messages_added(&self) -> u64 {
        self.report.messages_added
    }

    /// Stores one message unless it is already stored (see the module).
    pub(crate) fn message(&mut self, record: MessageRecord) -> Result<(), Fault> {
        let m = self.validator.check(record)?;
        self.checked_message(m)
    }

    /// Stores one message already passed through [`Validator::check`].
    pub(crate) fn checked_message(&mut self, m: MessageRecord) -> Result<(), Fault> {
        self.require_header()?;
        let added = self
            .tx
            .prepare_cached(
                "INSERT INTO messages
                     (msg_id, peer_key, direction, body, status, created_at, sent_at,
                      delivered_at, read_at, received_at, failed_at, failure_reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                m.msg_id,
                m.peer_key,
                m.direction,
                m.body,
                m.status,
                m.created_at,
                m.sent_at,
                m.delivered_at,
                m.read_at,
                m.received_at,
                m.failed_at,
                m.failure_reason,
            ])?;
        if added == 0 {
            self.report.messages_known += 1;
            return Ok(());
        }
        self.report.messages_added += 1;
        let rowid = self.tx.last_insert_rowid();
        if let Some(parallel) = &mut self.parallel_fts {
            parallel.push(rowid, m.body)?;
        }
        self.events.extend(
            m.events
                .into_iter()
                .zip(0..)
                .map(|(e, seq)| (rowid, seq, e)),
        );
        if self.events.len() >= EVENT_BATCH {
            flush_events(&self.tx, &mut self.events)?;
        }
        Ok(())
    }
}

/// Checks message records against what the schema promises, normalising
/// times and rebuilding missing timelines. Runs on the parsing thread.
#[derive(Default)]
pub(crate) struct Validator {
    /// Peer keys already found valid (decoding a point costs microseconds,
    /// and a history has few peers).
    valid_keys: HashSet<String>,
}

impl Validator {
    pub(crate) fn check(&mut self, mut m: MessageRecord) -> Result<MessageRecord, Fault> {
        let id = m.msg_id;
        let bad = |what: String| Fault::Invalid(format!("message {id}: {what}"));
        if !self.valid_keys.contains(&m.peer_key) {
            PublicKey::parse(&m.peer_key).map_err(|e| bad(format!("peer_key: {e}")))?;
            self.valid_keys.insert(m.peer_key.clone());
        }
        if !m.status.fits(m.direction) {
            return Err(bad(format!(
                "an {}going message cannot be '{}'",
                m.direction, m.status
            )));
        }
        m.created_at = normalize(&m.created_at, "created_at").map_err(|e| with_id(e, &id))?;
        for (field, value) in [
            ("sent_at", &mut m.sent_at),
            ("delivered_at", &mut m.delivered_at),
            ("read_at", &mut m.read_at),
            ("received_at", &mut m.received_at),
            ("failed_at", &mut m.failed_at),
        ] {
            if let Some(at) = value {
                *at = normalize(at, field).map_err(|e| with_id(e, &id))?;
            }
        }
        for e in &mut m.events {
            if !e.status.fits(m.direction) {
                return Err(bad(format!("an event '{}' does not fit", e.status)));
            }
            e.at = normalize(&e.at, "events.at").map_err(|e| with_id(e, &id))?;
        }
        if m.events.is_empty() {
            m.events = timeline(&m);
        }
        Ok(m)
    }
}

/// How many events one INSERT statement writes.
const EVENT_BATCH: usize = 128;

/// Writes the waiting events: full batches with one cached statement, the
/// rest with one more.
fn flush_events(tx: &Transaction<'_>, events: &mut Vec<(i64, i64, Event)>) -> Result<(), Error> {
    let mut chunks = events.chunks_exact(EVENT_BATCH);
    for chunk in &mut chunks {
        insert_events(tx, chunk)?;
    }
    let rest = chunks.remainder();
    if !rest.is_empty() {
        insert_events(tx, rest)?;
    }
    events.clear();
    Ok(())
}

/// One INSERT for `rows` events (message row id, seq, event).
fn insert_events(tx: &Transaction<'_>, rows: &[(i64, i64, Event)]) -> Result<(), Error> {
    use rusqlite::types::ToSqlOutput;
    let values = vec!["(?, ?, ?, ?, ?)"; rows.len()].join(", ");
    let mut stmt = tx.prepare_cached(&format!(
        "INSERT INTO message_events (message_id, seq, status, at, detail) VALUES {values}"
    ))?;
    let params = rows.iter().flat_map(|(rowid, seq, e)| {
        [
            ToSqlOutput::from(*rowid),
            ToSqlOutput::from(*seq),
            ToSqlOutput::from(e.status.as_str()),
            ToSqlOutput::from(e.at.as_str()),
            e.detail
                .as_deref()
                .map_or(ToSqlOutput::from(rusqlite::types::Null), ToSqlOutput::from),
        ]
    });
    stmt.execute(rusqlite::params_from_iter(params))?;
    Ok(())
}

fn with_id(fault: Fault, id: &store::MessageId) -> Fault {
    match fault {
        Fault::Invalid(text) => Fault::Invalid(format!("message {id}: {text}")),
        other => other,
    }
}

/// Rebuilds a timeline from the `*_at` fields, for records without events.
fn timeline(m: &MessageRecord) -> Vec<Event> {
    let steps = [
        (
            Status::Pending,
            Some(&m.created_at).filter(|_| m.direction == Direction::Out),
        ),
        (Status::Received, m.received_at.as_ref()),
        (Status::Sent, m.sent_at.as_ref()),
        (Status::Delivered, m.delivered_at.as_ref()),
        (Status::Read, m.read_at.as_ref()),
        (Status::Failed, m.failed_at.as_ref()),
    ];
    steps
        .into_iter()
        .filter_map(|(status, at)| {
            at.map(|at| Event {
                status,
                at: at.clone(),
                detail: (status == Status::Failed)
                    .then(|| m.failure_reason.clone())
                    .flatten(),
            })
        })
        .collect()
}

/// Parses an RFC 3339 time and formats it the way the database stores it.
fn normalize(text: &str, field: &str) -> Result<String, Fault> {
    clock::normalize(text)
        .ok_or_else(|| Fault::Invalid(format!("{field} '{text}' is not an RFC 3339 time")))
}

fn decode_secret(text: &str) -> Result<Identity, Fault> {
    let bytes = zeroize::Zeroizing::new(
        STANDARD
            .decode(text.trim())
            .map_err(|_| Fault::Invalid("secret_key is not base64".into()))?,
    );
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| Fault::Invalid("secret_key is not 32 bytes".into()))?;
    Ok(Identity::from_secret_bytes(seed))
}

/// Turns a record's fault into an error naming where it is.
pub(crate) fn fault_at(fault: Fault, at: &str) -> Error {
    match fault {
        Fault::Invalid(problem) => malformed(at, problem),
        Fault::Fatal(e) => e,
    }
}

pub(crate) fn malformed(at: &str, problem: String) -> Error {
    Error::Malformed {
        at: at.to_owned(),
        problem,
    }
}

/// serde_json's message without its " at line L column C" suffix, which
/// the error states in its own words.
pub(crate) fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_owned(),
        None => text,
    }
}

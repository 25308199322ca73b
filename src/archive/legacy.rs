//! Import of the original chat-p2p client's files, so its users keep their
//! identity and history.
//!
//! That client kept, in one or more folders: `public.key` (base64 text),
//! `private.key` (the 32 raw secret-key bytes), `contacts.json`
//! (`{"contacts": {"name": "<base64 key>"}}`) and `messages/<peer>.json`
//! (an array of `{"content", "timestamp" (unix seconds), "incoming"}`),
//! where `<peer>` is a contact's name or a public key. Each file is looked
//! for in every folder given, so the folders may split them any way.
//!
//! Legacy messages had no ids: each gets a UUIDv5 derived from its peer,
//! time, direction, content and position, so importing twice is a no-op.
//! Outgoing messages are stored as `delivered`, incoming ones as `read`
//! (the old client showed them), each at the message's own time. The old
//! client had no receipts, so no receipt will ever move an imported
//! message on: stored as `sent` it would sit forever among the messages
//! "sent but not delivered yet". Its delivery event says it is assumed.
//! Importing the same files again settles the messages an earlier
//! chat-p2p imported as `sent` the same way.
//!
//! A file may begin with a UTF-8 byte order mark (Windows editors write
//! one); it is ignored.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::DateTime;
use serde::Deserialize;

use super::import::{malformed, Fault, ImportOptions, ImportReport, Importer};
use super::{ContactRecord, Error, MessageRecord};
use crate::clock;
use crate::identity::{Identity, PublicKey};
use crate::store::{Direction, Event, MessageId, Status, Store};

#[derive(Deserialize)]
struct LegacyContacts {
    contacts: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct LegacyMessage {
    content: String,
    timestamp: f64,
    incoming: bool,
}

/// The detail of a legacy outgoing message's `delivered` event.
const ASSUMED: &str = "assumed: the original client kept no delivery receipts";

/// The files found across the folders.
#[derive(Default)]
struct Found {
    public_key: Option<PathBuf>,
    private_key: Option<PathBuf>,
    contacts: Option<PathBuf>,
    messages: Vec<PathBuf>,
}

/// Imports the original client's files from `dirs` in one transaction.
pub fn import_legacy(
    store: &mut Store,
    dirs: &[PathBuf],
    options: ImportOptions,
) -> Result<ImportReport, Error> {
    let found = find(dirs)?;
    if found.public_key.is_none()
        && found.private_key.is_none()
        && found.contacts.is_none()
        && found.messages.is_empty()
    {
        return Err(malformed(
            &list(dirs),
            "none of public.key, private.key, contacts.json or messages/*.json is there".into(),
        ));
    }
    let identity = read_identity(&found)?;
    let contacts = match &found.contacts {
        Some(path) => read_json::<LegacyContacts>(path)?.contacts,
        None => BTreeMap::new(),
    };
    super::import::bulk(store, |store| {
        write(store, options, &found, identity.as_ref(), &contacts)
    })
}

/// Writes what was read, in one transaction.
fn write(
    store: &mut Store,
    options: ImportOptions,
    found: &Found,
    identity: Option<&Identity>,
    contacts: &BTreeMap<String, String>,
) -> Result<ImportReport, Error> {
    let mut importer = Importer::begin(store, options)?;
    importer.headerless();
    let at = |path: &Path| path.display().to_string();
    if let Some(identity) = identity {
        importer
            .identity(identity)
            .map_err(|f| fault(f, &found.private_key))?;
    }
    for (name, key) in contacts {
        let record = ContactRecord {
            name: name.clone(),
            public_key: key.clone(),
            added_at: None,
            router: None,
        };
        importer
            .contact(record)
            .map_err(|f| fault(f, &found.contacts))?;
    }
    let mut skipped = Vec::new();
    for path in &found.messages {
        let peer = match peer_of(path, contacts) {
            Ok(peer) => peer,
            Err(_) if options.skip_unknown => {
                skipped.push(at(path));
                continue;
            }
            Err(e) => return Err(e),
        };
        for (index, m) in read_json::<Vec<LegacyMessage>>(path)?.iter().enumerate() {
            let record = to_record(&peer, index, m)
                .map_err(|problem| malformed(&format!("{}, message {index}", at(path)), problem))?;
            let settle = (!m.incoming).then(|| (record.msg_id, record.created_at.clone()));
            let added_before = importer.messages_added();
            importer
                .message(record)
                .map_err(|f| super::import::fault_at(f, &at(path)))?;
            // Imported as `sent` by an earlier chat-p2p: settled now. A
            // message this import just added is `delivered` already, so
            // only one that was there before is looked up again.
            let added = importer.messages_added() > added_before;
            if let Some((msg_id, at_time)) = settle.filter(|_| !added) {
                importer
                    .settle_as_delivered(&msg_id, &at_time, ASSUMED)
                    .map_err(|f| super::import::fault_at(f, &at(path)))?;
            }
        }
    }
    let mut report = importer.finish()?;
    report.skipped_files = skipped;
    Ok(report)
}

fn fault(f: Fault, path: &Option<PathBuf>) -> Error {
    let at = path
        .as_ref()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    super::import::fault_at(f, &at)
}

fn list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Looks for each legacy file in every folder; the first folder holding a
/// file wins.
fn find(dirs: &[PathBuf]) -> Result<Found, Error> {
    let mut found = Found::default();
    for dir in dirs {
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.clone(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a folder"),
            });
        }
        let pick = |slot: &mut Option<PathBuf>, name: &str| {
            let path = dir.join(name);
            if slot.is_none() && path.is_file() {
                *slot = Some(path);
            }
        };
        pick(&mut found.public_key, "public.key");
        pick(&mut found.private_key, "private.key");
        pick(&mut found.contacts, "contacts.json");
        let messages = dir.join("messages");
        if messages.is_dir() {
            let entries = fs::read_dir(&messages).map_err(|source| Error::Io {
                path: messages.clone(),
                source,
            })?;
            let mut files: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect();
            files.sort();
            found.messages.extend(files);
        }
    }
    Ok(found)
}

fn read_identity(found: &Found) -> Result<Option<Identity>, Error> {
    let Some(path) = &found.private_key else {
        return Ok(None);
    };
    let bytes = zeroize::Zeroizing::new(read(path)?);
    let seed: &[u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        malformed(
            &path.display().to_string(),
            format!(
                "a private key is 32 raw bytes, this file has {}",
                bytes.len()
            ),
        )
    })?;
    let identity = Identity::from_secret_bytes(seed);
    if let Some(public) = &found.public_key {
        let bytes = read(public)?;
        let text = String::from_utf8_lossy(without_bom(&bytes))
            .trim()
            .to_owned();
        let key = PublicKey::parse(&text)
            .map_err(|e| malformed(&public.display().to_string(), e.to_string()))?;
        if key != identity.public_key() {
            return Err(malformed(
                &public.display().to_string(),
                format!(
                    "this public key does not belong to the private key in {}",
                    path.display()
                ),
            ));
        }
    }
    Ok(Some(identity))
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, Error> {
    let bytes = read(path)?;
    serde_json::from_slice(without_bom(&bytes)).map_err(|e| {
        malformed(
            &format!(
                "{}, line {}, column {}",
                path.display(),
                e.line(),
                e.column()
            ),
            super::import::strip_position(&e),
        )
    })
}

/// `bytes` without the UTF-8 byte order mark it may start with.
fn without_bom(bytes: &[u8]) -> &[u8] {
    bytes.strip_prefix(super::reader::BOM).unwrap_or(bytes)
}

/// The peer key of `messages/<peer>.json`: a contact's name or a key.
fn peer_of(path: &Path, contacts: &BTreeMap<String, String>) -> Result<String, Error> {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    if let Some(key) = contacts.get(&stem) {
        return Ok(key.clone());
    }
    let as_key = stem.replace('-', "+").replace('_', "/");
    PublicKey::parse(&as_key)
        .map(|k| k.to_base64())
        .map_err(|_| {
            malformed(
                &path.display().to_string(),
                format!(
                    "'{stem}' is neither a name in contacts.json nor a public key; add it to \
                     contacts.json, or pass --skip-unknown to import the rest without it"
                ),
            )
        })
}

fn to_record(peer: &str, index: usize, m: &LegacyMessage) -> Result<MessageRecord, String> {
    let millis = (m.timestamp * 1000.0).round();
    let at = DateTime::from_timestamp_millis(millis as i64)
        .filter(|_| millis.is_finite())
        .map(clock::format)
        .ok_or_else(|| format!("timestamp {} is not a time", m.timestamp))?;
    let direction = if m.incoming {
        Direction::In
    } else {
        Direction::Out
    };
    let name = format!("{peer}\n{millis}\n{direction}\n{}\n{index}", m.content);
    let incoming = m.incoming.then(|| at.clone());
    let events = if m.incoming {
        // Rebuilt from the times by the importer.
        Vec::new()
    } else {
        let event = |status, detail: &str| Event {
            status,
            at: at.clone(),
            detail: Some(detail.to_owned()),
        };
        vec![
            event(Status::Sent, "imported from the original client"),
            event(Status::Delivered, ASSUMED),
        ]
    };
    Ok(MessageRecord {
        msg_id: MessageId::derived(name.as_bytes()),
        peer_key: peer.to_owned(),
        direction,
        body: m.content.clone(),
        status: if m.incoming {
            Status::Read
        } else {
            Status::Delivered
        },
        created_at: at.clone(),
        sent_at: (!m.incoming).then(|| at.clone()),
        delivered_at: (!m.incoming).then(|| at.clone()),
        read_at: incoming.clone(),
        received_at: incoming,
        failed_at: None,
        failure_reason: None,
        events,
    })
}

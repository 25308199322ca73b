//! Export and import of a whole profile: a versioned JSON document (or JSON
//! Lines) holding the public key, the contacts and every message with its
//! status fields and events; and the files of the original chat-p2p client.
//!
//! Both directions stream: export writes row by row to any writer, import
//! reads record by record, so memory stays flat however large the history.

mod export;
mod import;
mod import_doc;
mod json_out;
mod legacy;
mod reader;
pub mod sealed;

pub use export::{export, export_to_path, ExportOptions, ExportSummary, Layout};
pub use import::{ImportOptions, ImportReport};
pub use legacy::import_legacy;
pub use reader::{import_file, import_reader};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::store::{self, Direction, Event, MessageId, Status};

/// The `format` field of every export.
pub const FORMAT: &str = "chat-p2p-export";
/// The export format version this build writes and reads.
pub const VERSION: u32 = 1;

/// Called with the number of items (export: messages; import: bytes read)
/// done so far, now and then, to drive a progress bar.
pub type Progress<'a> = &'a mut dyn FnMut(u64);

/// What can go wrong exporting or importing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("cannot access '{}': {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// `-o` names something that is not a regular file.
    #[error("refusing to write the export to '{}': it is a {kind}, which the export would replace with a regular file. Choose another path, or '-o -' to write to standard output", path.display())]
    NotAFile {
        /// The path given.
        path: PathBuf,
        /// What is there.
        kind: &'static str,
    },
    /// Writing the export failed (e.g. a closed pipe or a full disk).
    #[error("cannot write the export: {0}")]
    Write(#[source] std::io::Error),
    /// The input is not valid JSON / JSON Lines, or a record is malformed.
    #[error("{at}: {problem}. Nothing was imported")]
    Malformed {
        /// Where: a line (and column), or a path.
        at: String,
        /// What is wrong.
        problem: String,
    },
    /// The importing profile has a different identity.
    #[error("this profile's identity is {existing}, but the import holds the key pair of {incoming}. Nothing was imported; pass --force to replace this profile's identity (its secret key is lost)")]
    IdentityConflict {
        /// The profile's current public key.
        existing: String,
        /// The public key in the import.
        incoming: String,
    },
    /// The export was made by another identity and carries no key pair.
    #[error("this export was made by the identity {author}, {}. Nothing was imported; pass --other-identity to import it anyway (its outgoing messages then count as this profile's), or import an export made with --include-secret to restore that identity", own_text(.own))]
    OtherIdentity {
        /// The export's public key.
        author: String,
        /// This profile's public key, if it has one.
        own: Option<String>,
    },
    /// The profile database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The export could not be encrypted.
    #[error("cannot encrypt the export: {0}")]
    Encrypt(String),
    /// An encrypted export could not be opened or read to its end.
    #[error("cannot decrypt the export: {0}. Nothing was imported")]
    Decrypt(String),
    /// The passphrase does not open an encrypted export.
    #[error(
        "wrong passphrase: it does not open this encrypted export. Nothing was imported; try again"
    )]
    WrongExportPassphrase,
}

fn own_text(own: &Option<String>) -> String {
    match own {
        Some(own) => format!("not this profile's ({own}): its outgoing messages would appear as yours"),
        None => "and this profile has no identity yet: its outgoing messages would become yours at the next 'init'".to_owned(),
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Store(store::Error::Sqlite(e))
    }
}

/// The first record: what the file is and whose.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Header {
    /// Always [`FORMAT`].
    pub format: String,
    /// [`VERSION`].
    pub version: u32,
    /// When the export was made.
    #[serde(default)]
    pub exported_at: Option<String>,
    /// The profile's public key.
    #[serde(default)]
    pub public_key: Option<String>,
    /// The 32-byte secret seed, base64; only with `--include-secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    /// The profile's home router, if one was recorded (exports from
    /// before home routers have none).
    #[serde(default)]
    pub home_router: Option<String>,
}

/// A contact as exported.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContactRecord {
    /// Its name.
    pub name: String,
    /// Its public key.
    pub public_key: String,
    /// When it was added.
    #[serde(default)]
    pub added_at: Option<String>,
    /// Its home router; `None`: the same as the exporting profile's home
    /// (the header's `home_router`).
    #[serde(default)]
    pub router: Option<String>,
}

/// A message as imported: every stored field and its events. The `contact`
/// name an export adds is informational and ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct MessageRecord {
    /// Wire id.
    pub msg_id: MessageId,
    /// Peer public key.
    pub peer_key: String,
    /// Direction.
    pub direction: Direction,
    /// Text.
    pub body: String,
    /// Status.
    pub status: Status,
    /// Author's clock.
    pub created_at: String,
    /// See [`store::Message`].
    #[serde(default)]
    pub sent_at: Option<String>,
    /// See [`store::Message`].
    #[serde(default)]
    pub delivered_at: Option<String>,
    /// See [`store::Message`].
    #[serde(default)]
    pub read_at: Option<String>,
    /// See [`store::Message`].
    #[serde(default)]
    pub received_at: Option<String>,
    /// See [`store::Message`].
    #[serde(default)]
    pub failed_at: Option<String>,
    /// See [`store::Message`].
    #[serde(default)]
    pub failure_reason: Option<String>,
    /// The timeline; rebuilt from the `*_at` fields when absent.
    #[serde(default)]
    pub events: Vec<Event>,
}

/// One line of a JSON Lines export.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Line {
    Header(Header),
    Contact(ContactRecord),
    Message(Box<MessageRecord>),
}

//! What can go wrong in the profile database, each case worded so the user
//! knows what to do next.

use std::path::PathBuf;

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
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A migration failed.
    #[error("cannot upgrade the database schema: {0}")]
    Migration(#[from] refinery::Error),
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

//! The router's durable queue, behind one trait so another store (Redis, a
//! later issue) plugs in without touching session code.
//!
//! Every accepted frame goes through [`Backend::enqueue`], online recipient
//! or not: the sender's `ack` waits for the commit, and the recipient's
//! session is told about the frame only after it. A frame leaves the queue
//! only through [`Backend::remove`] (the recipient's own `ack`) or
//! [`Backend::expire`] (retention).

pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use uuid::Uuid;

use crate::identity::PublicKey;

/// A frame to store.
#[derive(Debug, Clone)]
pub struct NewFrame {
    /// Who may fetch it: the recipient key's 32 bytes. The router does not
    /// check they form a valid key; nobody can authenticate as one that
    /// does not, so such frames just expire.
    pub recipient: [u8; 32],
    /// Who sent it (the authenticated session's key).
    pub sender: [u8; 32],
    /// The message id, chosen by the sender: `(sender, recipient, id)` is
    /// unique, so two senders' frames with the same id are both kept.
    pub id: Uuid,
    /// The frame as it will be delivered.
    pub text: Arc<str>,
}

/// What happened to one submitted frame.
// Mostly `Stored`, so boxing it would only add an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Committed now.
    Stored(Queued),
    /// Already queued under this `(sender, recipient, id)`: nothing
    /// stored, but it is durable.
    Duplicate {
        /// When the first copy was committed.
        at: String,
    },
    /// The recipient has as many frames queued as allowed.
    QuotaExceeded,
}

/// A stored frame, as fetched for delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    /// Position in the queue; only ever grows.
    pub seq: i64,
    /// The message id.
    pub id: Uuid,
    /// The recipient key's bytes.
    pub recipient: [u8; 32],
    /// When it was committed, RFC 3339 UTC with milliseconds.
    pub at: String,
    /// The frame text.
    pub text: Arc<str>,
}

/// Why the queue failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// SQLite failed.
    #[error("queue database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Applying the queue's migrations failed.
    #[error("cannot migrate the queue database: {0}")]
    Migration(#[from] refinery::Error),
    /// Creating the data directory or file failed.
    #[error("cannot create the queue database at {path}: {source}")]
    Io {
        /// The path concerned.
        path: std::path::PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Another router (or process) holds the data directory's lock.
    #[error("another router is already using {0} (its lock file is held): stop that router, or choose another --data directory")]
    Locked(std::path::PathBuf),
    /// The file exists but is not a router queue.
    #[error("{0} is not a chat-p2p router queue; move it away or choose another --data directory")]
    NotOurs(std::path::PathBuf),
    /// The batch's transaction failed to commit; nothing of it is stored.
    #[error("the queue could not commit: {0}")]
    Commit(String),
    /// The queue was closed (the router is shutting down).
    #[error("the queue is closed: the router is shutting down")]
    Closed,
}

/// The storage a router queues frames in.
///
/// Implementations must make `enqueue` durable before its future resolves,
/// group concurrent submissions into shared commits, and keep `seq`
/// increasing per recipient.
pub trait Backend: Send + Sync + 'static {
    /// Stores frames, each deduplicated by `(sender, recipient, id)` (ids
    /// are unique per sender only: a frame from another sender with an id
    /// already queued is a different frame) and checked against the
    /// per-recipient quota; resolves after the commit.
    fn enqueue(
        &self,
        frames: Vec<NewFrame>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, BackendError>> + Send + 'static;

    /// Up to `limit` frames for `recipient` with `seq > after`, in order.
    fn fetch(
        &self,
        recipient: PublicKey,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Queued>, BackendError>> + Send + 'static;

    /// Deletes frames the recipient acknowledged, by their [`Queued::seq`]
    /// (an id alone may name frames from several senders); only frames
    /// queued for `recipient` are touched. Returns how many existed.
    fn remove(
        &self,
        recipient: PublicKey,
        seqs: Vec<i64>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static;

    /// Deletes frames committed before `before` (RFC 3339); returns how many.
    fn expire(
        &self,
        before: String,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static;

    /// How many frames the queue holds now (for `/metrics`).
    fn depth(&self) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static;

    /// Finishes every submission made so far, then refuses new ones.
    fn close(&self) -> impl Future<Output = ()> + Send + 'static;
}

//! The router's durable queue, behind one trait so another store (Redis, a
//! later issue) plugs in without touching session code.
//!
//! Every accepted frame goes through [`Backend::enqueue`], online recipient
//! or not: the sender's `ack` waits for the commit. The recipient's
//! sessions are told about the frame after it, except where the backend
//! hands frames over before their commit ([`ClusterEvent::Staged`], the
//! SQLite queue): it then writes only what their devices have not
//! acknowledged by the time it commits.
//!
//! **Devices** (protocol v2, docs/PROTOCOL.md §2.1). A key has any number of
//! devices (up to [`MAX_DEVICES`]), each registered by its first session
//! ([`Backend::register`]). A frame waits for every device its recipient
//! had when it was committed; each device fetches and acknowledges on its
//! own ([`Backend::fetch`], [`Backend::remove`]), and the frame leaves the
//! queue when the last one acknowledged it, or through
//! [`Backend::expire`] (retention) or [`Backend::remove_device`]. A key
//! without devices keeps its frames for its first device, which gets them
//! all; a device registering for a key that has devices gets only what is
//! committed after it. A frame a device sends to its own key does not wait
//! for that device (and is not stored when no other device needs it).
//! The quota is per device: a frame is refused when any device it would
//! wait for (or, for a key without devices, the key) already has the
//! quota's number of frames waiting.
//!
//! The contract is tested once, generically, in [`contract`]; every
//! backend runs that suite.
//!
//! **Shared queues** (issue 10). A backend several routers share (Redis)
//! also carries what one router must tell another: frames committed for a
//! device whose session is elsewhere, a newer session of a device starting
//! elsewhere, a device removed elsewhere ([`ClusterEvent`], from
//! [`Backend::events`]). These are hints: a router re-checks its sessions'
//! queues and claims after reconnecting to the store and on every
//! heartbeat, so a lost event delays, never loses. One live session per
//! `(key, device)` across routers is kept by numbered claims
//! ([`Backend::claim`]): the newest wins, an older one ends with 4000. The
//! defaults of these methods are those of a queue one router owns alone.

#[cfg(test)]
pub mod contract;
pub mod redis;
pub mod sqlite;

use std::future::Future;
use std::sync::Arc;

use tokio::sync::mpsc;
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
    /// The sending session's device ([`crate::protocol::CONTROL_DEVICE`]
    /// for a control session): a frame to the sender's own key does not
    /// wait for the device that sent it.
    pub sender_device: Uuid,
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
    Stored {
        /// The frame as stored.
        frame: Queued,
        /// The devices to hand it to now (those online get it); empty for
        /// a key without devices (its first device fetches it), and when
        /// the queue handed it over before its commit
        /// ([`ClusterEvent::Staged`]).
        devices: Vec<Uuid>,
    },
    /// A frame to the sender's own key that no other device of it needs:
    /// accepted (the sender gets its `ack`) and not stored.
    Unneeded {
        /// When it was accepted.
        at: String,
    },
    /// Already queued under this `(sender, recipient, id)`: nothing
    /// stored, but it is durable.
    Duplicate {
        /// When the first copy was committed.
        at: String,
    },
    /// A device of the recipient has as many frames waiting as allowed.
    QuotaExceeded,
}

/// The most devices one key may have at once (removed ones do not count).
pub const MAX_DEVICES: usize = 32;

/// The answer to [`Backend::register`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registered {
    /// Known before: its name and `last_seen` were updated.
    Known,
    /// New: the key's first device (it gets what waited for the key).
    First,
    /// New beside the key's other devices: it gets what is committed from
    /// now on.
    Added,
    /// The device was removed with [`Backend::remove_device`]: refused.
    Removed,
    /// The key has [`MAX_DEVICES`] devices: refused.
    TooMany,
}

/// A device of a key, as the queue knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRecord {
    /// The device's id.
    pub id: Uuid,
    /// The name from its latest `auth`.
    pub name: String,
    /// When it registered, RFC 3339 UTC.
    pub first_seen: String,
    /// When a session of it last started, ended or was seen live.
    pub last_seen: String,
}

/// What [`Backend::expire`] dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Expired {
    /// Frames committed before the cutoff.
    pub frames: u64,
    /// Devices not seen since before the cutoff, forgotten.
    pub devices: u64,
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

/// What another router sharing the queue tells this one (every such event
/// is a hint: it may be lost, late or repeated, so sessions act on it at
/// once and re-check on their heartbeat anyway), or this router's own
/// queue ([`ClusterEvent::Staged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A frame another router committed, for `devices` whose sessions this
    /// router holds (by their claims): hand it over as a local commit.
    Frame {
        /// The frame as stored.
        frame: Queued,
        /// The devices of `frame.recipient` it waits for.
        devices: Vec<Uuid>,
    },
    /// A session of `device` of `key` started on another router with
    /// `claim`: a session here with an older claim ends (close 4000).
    Replaced {
        /// The key.
        key: PublicKey,
        /// Its device.
        device: Uuid,
        /// The newer session's claim ([`Backend::claim`]).
        claim: u64,
    },
    /// `device` of `key` was removed through another router: its session
    /// here ends (close 4001).
    DeviceRemoved {
        /// The key.
        key: PublicKey,
        /// The removed device.
        device: Uuid,
    },
    /// Events may have been lost (the router was cut off from the store
    /// and is back): every session re-checks its queue and claim now.
    Recheck,
    /// Frames this router's own queue will commit next, each for the
    /// devices it waits for: hand them over now, so the recipients can
    /// acknowledge them before they are written (the SQLite queue's
    /// staging, `sqlite/staging.rs`). Their `seq`s come in order.
    Staged(Vec<(Queued, Vec<Uuid>)>),
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
    /// Redis answered with an error, or could not be reached.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// The Redis backend cannot start as configured (bad URL, unreadable
    /// password file, persistence that would lose acknowledged frames):
    /// what is wrong and what to do.
    #[error("{0}")]
    RedisSetup(String),
}

/// Hands `op` to a backend's writer task and resolves with the reply the
/// writer sends on `reply`. The op is handed over at once when the
/// writer's channel has room, so one session's submissions reach the
/// writer in the order it made them (an ack's removal before a later
/// frame, say); only when it is full does the future wait to hand it over.
fn hand_over<O: Send + 'static, T: Send + 'static>(
    ops: &mpsc::Sender<O>,
    op: O,
    reply: tokio::sync::oneshot::Receiver<Result<T, BackendError>>,
) -> impl Future<Output = Result<T, BackendError>> + Send + 'static {
    let ops = ops.clone();
    let waiting = match ops.try_send(op) {
        Ok(()) => None,
        Err(mpsc::error::TrySendError::Full(op)) => Some(op),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            return futures_util::future::Either::Left(std::future::ready(Err(
                BackendError::Closed,
            )))
        }
    };
    futures_util::future::Either::Right(async move {
        if let Some(op) = waiting {
            ops.send(op).await.map_err(|_| BackendError::Closed)?;
        }
        reply.await.map_err(|_| BackendError::Closed)?
    })
}

/// The storage a router queues frames in.
///
/// Implementations must make every write durable before its future
/// resolves, group concurrent submissions into shared commits, keep `seq`
/// increasing per recipient, and keep the device rules of the module
/// documentation.
pub trait Backend: Send + Sync + 'static {
    /// Stores frames, each deduplicated by `(sender, recipient, id)` (ids
    /// are unique per sender only: a frame from another sender with an id
    /// already queued is a different frame) and checked against the
    /// per-device quota; resolves after the commit.
    fn enqueue(
        &self,
        frames: Vec<NewFrame>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, BackendError>> + Send + 'static;

    /// Registers `device` of `key` (a session of it authenticated), or
    /// notes that a known one is back, under `name`.
    fn register(
        &self,
        key: PublicKey,
        device: Uuid,
        name: String,
    ) -> impl Future<Output = Result<Registered, BackendError>> + Send + 'static;

    /// Notes that these devices were seen now (sessions ending, or live
    /// when retention runs); unknown or removed ones are ignored.
    fn seen(
        &self,
        devices: Vec<(PublicKey, Uuid)>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + 'static;

    /// The key's devices (not removed ones), oldest first.
    fn devices(
        &self,
        key: PublicKey,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, BackendError>> + Send + 'static;

    /// Whether `key` has a live device here: one that registered (signed
    /// in at least once) and was neither removed nor forgotten by
    /// [`Backend::expire`]. What `--recipients known` asks about a
    /// recipient the router has not seen lately. The default lists the
    /// devices; a backend should answer it cheaper.
    fn knows(
        &self,
        key: PublicKey,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + 'static {
        let devices = self.devices(key);
        async move { Ok(!devices.await?.is_empty()) }
    }

    /// Stops delivery to `device` of `key`: its waiting frames are released
    /// (deleted when no other device needs them) and its later
    /// registrations are refused. False when the key has no such device.
    fn remove_device(
        &self,
        key: PublicKey,
        device: Uuid,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + 'static;

    /// Up to `limit` frames waiting for `device` of `recipient` with
    /// `seq > after`, in order.
    fn fetch(
        &self,
        recipient: PublicKey,
        device: Uuid,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Queued>, BackendError>> + Send + 'static;

    /// Settles frames `device` of `recipient` acknowledged, by their
    /// [`Queued::seq`] (an id alone may name frames from several senders);
    /// a frame is deleted once no device waits for it. Returns how many of
    /// them were waiting for the device.
    fn remove(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static;

    /// [`Backend::remove`] for a caller that does not need the outcome:
    /// `None` when the removal was handed over (in order with the caller's
    /// other submissions) and nothing is left to await (a failure only
    /// means the frames are delivered again), or the future to await when
    /// it could not be handed over yet. The default always awaits.
    fn remove_detached(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> Option<futures_util::future::BoxFuture<'static, Result<u64, BackendError>>> {
        Some(Box::pin(self.remove(recipient, device, seqs)))
    }

    /// Deletes frames committed before `before` (RFC 3339), and forgets
    /// devices last seen before it.
    fn expire(
        &self,
        before: String,
    ) -> impl Future<Output = Result<Expired, BackendError>> + Send + 'static;

    /// How many frames the queue holds now (for `/metrics`; a shared
    /// backend may answer an estimate).
    fn depth(&self) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static;

    /// Whether other routers share this queue: sessions then re-check
    /// their queue and claim on every heartbeat (see [`ClusterEvent`]).
    fn is_shared(&self) -> bool {
        false
    }

    /// What the queue tells the router's hub: the events other routers
    /// send this one, or frames handed over before their commit
    /// ([`ClusterEvent::Staged`]); `None` when there is neither. Taken
    /// once, when the router starts serving.
    fn events(&self) -> Option<mpsc::UnboundedReceiver<ClusterEvent>> {
        None
    }

    /// Claims the live session of `device` of `key` for this router, with
    /// a number larger than any earlier claim of that device; a router
    /// holding an older claim is sent [`ClusterEvent::Replaced`].
    fn claim(
        &self,
        _key: PublicKey,
        _device: Uuid,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static {
        std::future::ready(Ok(0))
    }

    /// Whether `claim` is still the newest claim of `device` of `key` (the
    /// heartbeat's check, which catches a lost [`ClusterEvent::Replaced`];
    /// false too once the device was removed).
    fn holds_claim(
        &self,
        _key: PublicKey,
        _device: Uuid,
        _claim: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + 'static {
        std::future::ready(Ok(true))
    }

    /// Gives `claim` up when its session ends (nothing if a newer claim
    /// replaced it).
    fn release(
        &self,
        _key: PublicKey,
        _device: Uuid,
        _claim: u64,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + 'static {
        std::future::ready(Ok(()))
    }

    /// Whether the queue is usable now, or why not (for `/healthz`, and to
    /// refuse new sessions while it is not). Cheap: no round trip.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }

    /// Finishes every submission made so far, then refuses new ones.
    fn close(&self) -> impl Future<Output = ()> + Send + 'static;
}

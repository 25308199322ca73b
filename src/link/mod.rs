//! Linking a new device: the existing device hands its identity and its
//! whole profile to a new one, through the router, end-to-end encrypted
//! under a key agreed from a short one-time code.
//!
//! 1. The existing device ([`issue`]) makes a [`Code`], connects to the
//!    router as the nameplate's "old" rendezvous key and leaves its first
//!    SPAKE2 message for the "new" rendezvous key, with the code's expiry.
//! 2. The new device ([`join`]) derives the same keys from the code it was
//!    told, connects as "new", reads that message, answers with its own and
//!    a key confirmation. A wrong password shows here: the existing device
//!    refuses the confirmation, says so, and the code is spent.
//! 3. The existing device confirms in turn and sends the identity (the
//!    secret key as stored: sealed if it has a passphrase). The new device
//!    checks its own profile is empty or holds that identity (an earlier
//!    interrupted join) and registers with the router as a device of the
//!    identity, so frames for the key are queued for it from then on.
//! 4. Only then the existing device snapshots its database (`VACUUM INTO`
//!    a 0600 file), and streams it compressed (zstd) in numbered chunks,
//!    each one frame under the router's limit, waiting for the router's acks
//!    and the new device's progress notes.
//! 5. The new device writes a file beside its profile, checks it (hash,
//!    integrity, application id, schema, identity), makes it its own (see
//!    [`crate::store::link`]) and renames it into place: a killed transfer
//!    leaves no half profile, and linking again replaces the copy whole.
//!
//! The router sees two keys derived from the nameplate, frame sizes and
//! times; every payload is sealed with XChaCha20-Poly1305.

mod channel;
pub mod code;
mod issue;
mod join;
mod snapshot;
mod wire;

pub use code::{Code, CodeError};
pub use issue::{issue, IssueOptions, Linked};
pub use join::{join, JoinOptions, Joined};
pub use wire::chunk_capacity;

use crate::client::ClientError;
use crate::crypto::CryptoError;

/// Set to a chunk number, makes a debug build's `link` (sending) or
/// `link --join` (receiving) stop after that many chunks, say so on
/// stderr and wait to be killed: the test suite's way to kill a transfer
/// in its middle. Ignored by release builds.
pub const PAUSE_ENV: &str = "CHAT_TEST_LINK_PAUSE_AT";

/// What the command line is told while a link runs.
pub trait Observer {
    /// The code is ready to be typed on the new device (existing side).
    fn code(&self, code: &Code, expires_at: &str);
    /// The transfer of `bytes` (uncompressed) starts.
    fn transfer(&self, bytes: u64);
    /// `bytes` of the snapshot are through so far.
    fn progress(&self, bytes: u64);
    /// The passphrase of the identity's secret key (new side, when the
    /// key arrives sealed): needed once, to register this device.
    fn passphrase(&self) -> Result<zeroize::Zeroizing<String>, String>;
    /// A test asked the transfer to stop at `chunk` ([`PAUSE_ENV`]); it
    /// waits there to be killed.
    fn paused(&self, chunk: u64);
}

/// Why a link failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The router could not be used.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The profile could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// Encryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A file beside the profile could not be written or read.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A frame from the other device did not authenticate.
    #[error("a message from the other device did not decrypt")]
    Garbled,
    /// The other device said something out of turn.
    #[error("the other device did not follow the link protocol: {0}")]
    Protocol(String),
    /// Existing side: the code typed on the new device was wrong.
    #[error(
        "the new device typed a wrong code: nothing was sent, and this code is spent; \
         run 'link' again for a new one"
    )]
    WrongCodeTyped,
    /// New side: the code is wrong (the existing device refused it).
    #[error(
        "the code is wrong: the other device refused it and nothing was received; \
         run 'link' there again for a new code"
    )]
    WrongCode,
    /// The code's time ran out.
    #[error("the code expired at {at}: run 'link' on the other device again for a new one")]
    Expired {
        /// When.
        at: String,
    },
    /// The code was used already.
    #[error("this code was already used: a code links one device; run 'link' again for a new one")]
    Used,
    /// Someone typed the code wrong before: it is spent.
    #[error(
        "someone already tried this code with a wrong password, which spends it: \
         run 'link' again for a new one"
    )]
    SpentByWrongTry,
    /// The code belonged to a link that failed.
    #[error("the link this code started has failed: run 'link' again for a new code")]
    Spent,
    /// Nobody was waiting with that code.
    #[error(
        "no device answered with this code within {secs}s: check the code and that both \
         devices use the same router (--server)"
    )]
    NoAnswer {
        /// How long we waited.
        secs: u64,
    },
    /// The other device went silent.
    #[error("the other device stopped answering for {secs}s: run 'link' again")]
    Stalled {
        /// How long we waited.
        secs: u64,
    },
    /// The other device gave up.
    #[error("the other device gave up: {0}")]
    Aborted(String),
    /// New side: the profile holds another identity.
    #[error(
        "profile '{profile}' already holds another identity ({key}): linking would replace \
         it; choose another --profile, or remove that profile first"
    )]
    OtherIdentity {
        /// The profile.
        profile: String,
        /// Its identity's key.
        key: String,
    },
    /// New side: another process uses the profile to be replaced.
    #[error(
        "profile '{profile}' is in use by {holder}: stop it, then link again (the profile \
         would be replaced under it)"
    )]
    InUse {
        /// The profile.
        profile: String,
        /// Who holds its session lock (rendered for a terminal).
        holder: String,
    },
    /// The received profile failed a check; nothing was installed.
    #[error("the received profile is not usable ({0}); nothing was installed")]
    BadCopy(String),
    /// New side: the passphrase does not open the secret key.
    #[error("the passphrase does not open the secret key; nothing was received: {0}")]
    Passphrase(String),
    /// The existing profile has no identity.
    #[error("this profile has no identity to link: run 'init' first")]
    NoIdentity,
}

impl LinkError {
    /// Wraps an I/O error with what was being done.
    fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Self {
        let what = what.into();
        move |source| LinkError::Io { what, source }
    }
}

/// In debug builds, the chunk number set by [`PAUSE_ENV`].
fn pause_at() -> Option<u64> {
    if !cfg!(debug_assertions) {
        return None;
    }
    std::env::var(PAUSE_ENV).ok()?.parse().ok()
}

/// Stops here for good if [`PAUSE_ENV`] asks for it at `chunk`.
async fn maybe_pause(chunk: u64, observer: &dyn Observer) {
    if pause_at() == Some(chunk) {
        observer.paused(chunk);
        std::future::pending::<()>().await;
    }
}

//! The chat client: connects a profile to a router, sends its outbox,
//! takes in what is queued for it and records every message's journey in
//! the profile database.
//!
//! [`engine`] holds the rules (what is stored when, what is acknowledged
//! when) with no sockets; [`connection`] is one authenticated session;
//! [`exchange`] and [`chat`] drive them for `send`/`sync` and for the
//! interactive chat.

pub mod backoff;
pub mod chat;
pub mod connection;
pub mod courier;
pub mod devices;
pub mod engine;
pub mod exchange;
pub mod follow;
pub mod owner;
pub mod watch;

pub use connection::{ServerUrl, DEFAULT_SERVER};
pub use engine::{Engine, Reaction, Tally, Update};

use crate::protocol::{ErrorCode, ProtocolError};
use crate::store;

/// What can go wrong while talking to a router.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection could be made.
    #[error("cannot reach the router at {server}: {reason}")]
    Unreachable {
        /// The router's address.
        server: String,
        /// Why.
        reason: String,
    },
    /// The router answered something other than the protocol's handshake.
    #[error("the router did not complete the handshake: {0}")]
    Handshake(String),
    /// The router refused the session.
    #[error("the router refused the session ({}): {message}", code.as_str())]
    Refused {
        /// The router's code.
        code: ErrorCode,
        /// The router's explanation.
        message: String,
    },
    /// The router closed the session.
    #[error("the router closed the connection: {0}")]
    Closed(String),
    /// Another session of this profile connected and took over.
    #[error("another chat-p2p session of this profile connected to the router and took over")]
    Replaced,
    /// Another device of this identity removed this one at the router.
    #[error(
        "this device was removed from its identity at the router ('devices remove' on another \
         device): it receives nothing more there. Link it again with 'chat-p2p link' from a \
         device that is still in use"
    )]
    DeviceRemoved,
    /// The connection broke.
    #[error("lost the connection to the router: {0}")]
    Lost(String),
    /// The work did not finish in time.
    #[error("gave up after {secs}s waiting for {waiting_for}")]
    Timeout {
        /// The time allowed.
        secs: u64,
        /// What had not happened.
        waiting_for: String,
    },
    /// A message longer than a frame can carry.
    #[error("the message is {len} bytes long; the limit is {max} bytes")]
    TooLong {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A message whose sealed frame would exceed the router's frame limit.
    #[error(
        "the message would make a {len}-byte frame and the router accepts at most {max} bytes: \
         shorten it or split it into several messages"
    )]
    FrameTooLarge {
        /// The frame's length.
        len: usize,
        /// The router's limit.
        max: usize,
    },
    /// The router closed the session because a frame was far over its
    /// limit (WebSocket close code 1009). Reconnecting helps once the
    /// offending message is set aside ([`Engine::closed_for_size`]).
    #[error("the router closed the connection because a frame was too large: {0}")]
    ClosedForSize(String),
    /// A stored row could not be turned into a frame.
    #[error("the database holds a damaged message: {0}")]
    Corrupt(String),
    /// The profile database failed.
    #[error(transparent)]
    Store(#[from] store::Error),
    /// The profile's session lock could not be used.
    #[error(transparent)]
    Lock(#[from] owner::LockError),
    /// A frame could not be built.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// A worker thread failed (a bug). Nothing it held was acknowledged,
    /// so the router delivers it again.
    #[error("internal error: {0}; nothing was lost (the router keeps what was not acknowledged): please report it")]
    Internal(String),
}

impl ClientError {
    /// Whether trying again later may help (the router was away), as
    /// opposed to a refusal that will repeat.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable { .. }
                | Self::Closed(_)
                | Self::ClosedForSize(_)
                | Self::Lost(_)
                | Self::Timeout { .. }
        )
    }
}

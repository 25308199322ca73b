//! Wire protocol v2: the JSON frames router and clients exchange over a
//! WebSocket, the exact byte strings that are signed, and the client-side
//! helpers that seal and open messages.
//!
//! `docs/PROTOCOL.md` is the specification; this module is its reference
//! implementation and the unit tests check its test vector.
//!
//! Every signed or encrypted-over byte string is a concatenation of
//! length-prefixed parts ([`crate::crypto::length_prefixed`]: a 4-byte
//! big-endian length, then the bytes), opened by a label naming its purpose
//! and version, so no signature can be replayed as another kind of
//! statement and no two field splits give the same bytes.

use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{Signature, Signer as _};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::crypto::{self, length_prefixed, CryptoError, NONCE_LEN};
use crate::identity::{Identity, PublicKey};

/// The protocol version this build speaks. Version 2 added devices (one
/// identity on several devices, each with its own session and delivery)
/// and bound the auth signature to the router's address; message frames
/// and their encryption are unchanged from version 1.
pub const VERSION: u32 = 2;

/// The versions a router built from this code accepts, newest first.
pub const SUPPORTED_VERSIONS: &[u32] = &[VERSION];

/// The default cap on a frame's size, in bytes of JSON text.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// The label opening the bytes signed to authenticate a session (v2: with
/// the device and the router's address).
pub const AUTH_LABEL: &[u8] = b"chat-p2p/v2/auth";

/// The longest device name, in bytes of UTF-8.
pub const MAX_DEVICE_NAME_BYTES: usize = 64;

/// The longest router address in an `auth`, in bytes.
pub const MAX_ROUTER_NAME_BYTES: usize = 512;

/// The device id that asks for a control session: authenticated, may send
/// messages and device requests, receives nothing, is not registered as a
/// device and replaces no other session.
pub const CONTROL_DEVICE: Uuid = Uuid::nil();
/// The label opening the bytes a message signature covers.
pub const MESSAGE_SIG_LABEL: &[u8] = b"chat-p2p/v1/message-sig";
/// The label opening a message's associated data.
pub const MESSAGE_AD_LABEL: &[u8] = b"chat-p2p/v1/message-ad";

/// Length of the nonce a router sends in its challenge.
pub const CHALLENGE_LEN: usize = 32;

/// Length of the Poly1305 tag ending every ciphertext: a shorter one
/// cannot be a sealed message, so it is refused as `bad-frame` at once.
pub const TAG_LEN: usize = 16;

/// Longest `type` quoted back in an `unknown-type` error, in bytes.
const MAX_TYPE_ECHO: usize = 64;

/// Every frame of protocol v2, told apart by its `"type"`.
// Frames live briefly on the stack, one at a time: boxing the message
// variant would cost an allocation per frame for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Frame {
    /// Router to client, first frame of a session.
    Challenge(Challenge),
    /// Client to router, the answer to the challenge.
    Auth(Auth),
    /// Router to client: the session is authenticated.
    Ready(Ready),
    /// Either way: an end-to-end encrypted message or receipt.
    Message(MessageFrame),
    /// Either way: a frame is durably stored (router to sender, with `at`),
    /// or received and stored by the recipient (client to router).
    Ack(Ack),
    /// Router to client: something was refused.
    Error(ErrorFrame),
    /// Router to client, once per session: everything that was queued for
    /// the key has been delivered (frames committed later follow as they
    /// arrive). Lets `sync` stop without guessing from silence.
    Synced,
    /// Client to router: which devices does my key have?
    ListDevices,
    /// Router to client: the answer to `list-devices`.
    Devices(DeviceList),
    /// Client to router: stop delivering to one of my devices.
    RemoveDevice(RemoveDevice),
    /// Router to client: the answer to `remove-device`.
    DeviceRemoved(DeviceRemoved),
}

/// One device of a key, as the router knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// The device id the device chose (a random UUID).
    pub id: Uuid,
    /// The name it gave in its last `auth`.
    pub name: String,
    /// When the router first saw it, RFC 3339 UTC.
    pub first_seen: String,
    /// When the router last saw it (its last session's start or end).
    pub last_seen: String,
    /// Whether it has a session on this router now.
    pub online: bool,
}

/// The router's list of a key's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceList {
    /// Every device the router delivers to, oldest first.
    pub devices: Vec<DeviceInfo>,
}

/// A request to stop delivering to one of the session key's devices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoveDevice {
    /// The device to remove.
    #[serde(deserialize_with = "canonical_uuid")]
    pub device: Uuid,
}

/// The answer to [`RemoveDevice`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRemoved {
    /// The device named in the request.
    pub device: Uuid,
    /// Whether it was a device of this key (false: unknown, or already
    /// removed).
    pub removed: bool,
}

/// The router's challenge: a fresh random nonce, and the versions it speaks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// Protocol versions the router accepts, newest first.
    pub versions: Vec<u32>,
    /// 32 random bytes the client must sign.
    #[serde(with = "b64_array")]
    pub nonce: [u8; CHALLENGE_LEN],
}

/// The client's proof that it holds the key it connected as, for one of
/// its devices, on this router.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {
    /// The protocol version the client chose from the challenge's list.
    pub version: u32,
    /// The device this session is for ([`CONTROL_DEVICE`] for a control
    /// session).
    #[serde(deserialize_with = "canonical_uuid")]
    pub device: Uuid,
    /// The device's name, for `devices` lists (at most
    /// [`MAX_DEVICE_NAME_BYTES`]).
    pub name: String,
    /// The router's address as the client dialed it, in the form of
    /// [`router_name`]: the router refuses a signature made for another.
    pub router: String,
    /// ed25519 signature over [`auth_signed_bytes`].
    #[serde(with = "b64_array")]
    pub sig: [u8; 64],
}

/// The router accepted the session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// The version in use for this session.
    pub version: u32,
    /// The key the session is authenticated as.
    pub key: PublicKey,
    /// The largest frame, in bytes, the router accepts on this session, so
    /// a client can refuse a message that would not fit before storing it.
    /// Absent from routers that predate it (then assume
    /// [`MAX_FRAME_BYTES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_frame_bytes: Option<usize>,
}

/// An end-to-end encrypted, signed message (text or receipt).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageFrame {
    /// Unique message id chosen by the author (UUID, v7 preferred).
    /// Serialized in the canonical lower-case hyphenated form, the only
    /// one a router accepts ([`parse_inbound`]); [`parse`] takes any form,
    /// so a frame an older router queued is still read (and acked).
    pub id: Uuid,
    /// The author's key.
    pub from: PublicKey,
    /// The recipient's key.
    pub to: PublicKey,
    /// The author's clock, RFC 3339 UTC with milliseconds.
    pub ts: String,
    /// The encrypted content.
    pub payload: Payload,
    /// ed25519 signature by `from` over [`message_signed_bytes`].
    #[serde(with = "b64_array")]
    pub sig: [u8; 64],
}

/// The encrypted part of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// The fresh random 24-byte XChaCha20-Poly1305 nonce.
    #[serde(with = "b64_array")]
    pub nonce: [u8; NONCE_LEN],
    /// Ciphertext with its 16-byte Poly1305 tag appended.
    #[serde(with = "b64_vec")]
    pub ciphertext: Vec<u8>,
}

/// An acknowledgement of one message id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// The acknowledged message (see [`MessageFrame::id`] on its form).
    pub id: Uuid,
    /// When the router committed it (router to sender only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<String>,
}

/// A refusal, with a stable machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    /// The message concerned, when the refused frame had a readable id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Uuid>,
    /// What went wrong, stable across versions.
    pub code: ErrorCode,
    /// What went wrong, for people.
    pub message: String,
}

/// The stable error codes of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorCode {
    /// Not JSON, not a known frame shape, or a field is invalid.
    BadFrame,
    /// A `type` this router does not know. The connection stays up.
    UnknownType,
    /// Larger than the router's frame size limit.
    TooLarge,
    /// A message whose `from` is not the session's key.
    SpoofedFrom,
    /// A frame other than `auth` before the session is authenticated.
    NotAuthenticated,
    /// The `auth` signature does not verify.
    BadSignature,
    /// No `auth` within the router's auth timeout.
    AuthTimeout,
    /// The client chose a version the router does not speak.
    UnsupportedVersion,
    /// More frames per second than the router allows one connection.
    RateLimited,
    /// The recipient has as many frames queued as the router allows.
    QuotaExceeded,
    /// The router has as many connections as it allows.
    TooManyConnections,
    /// The recipient does not read its frames fast enough.
    TooSlow,
    /// The router failed to store the frame; send it again later.
    Internal,
    /// The `auth` was signed for another router's address.
    WrongRouter,
    /// The device was removed from its key (`remove-device`).
    DeviceRemoved,
    /// The key has as many devices as the router allows.
    TooManyDevices,
    /// The router does not queue frames for this recipient (its operator
    /// restricted whom it serves): final, deliver to the recipient's home.
    RecipientNotServed,
    /// A code from a newer version of the protocol.
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// Every code a router of this version sends (not [`Self::Unknown`]),
    /// in the order of the protocol document's table.
    pub const ALL: [ErrorCode; 17] = [
        Self::BadFrame,
        Self::UnknownType,
        Self::TooLarge,
        Self::SpoofedFrom,
        Self::NotAuthenticated,
        Self::BadSignature,
        Self::AuthTimeout,
        Self::UnsupportedVersion,
        Self::RateLimited,
        Self::QuotaExceeded,
        Self::TooManyConnections,
        Self::TooSlow,
        Self::Internal,
        Self::WrongRouter,
        Self::DeviceRemoved,
        Self::TooManyDevices,
        Self::RecipientNotServed,
    ];

    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadFrame => "bad-frame",
            Self::UnknownType => "unknown-type",
            Self::TooLarge => "too-large",
            Self::SpoofedFrom => "spoofed-from",
            Self::NotAuthenticated => "not-authenticated",
            Self::BadSignature => "bad-signature",
            Self::AuthTimeout => "auth-timeout",
            Self::UnsupportedVersion => "unsupported-version",
            Self::RateLimited => "rate-limited",
            Self::QuotaExceeded => "quota-exceeded",
            Self::TooManyConnections => "too-many-connections",
            Self::TooSlow => "too-slow",
            Self::Internal => "internal",
            Self::WrongRouter => "wrong-router",
            Self::DeviceRemoved => "device-removed",
            Self::TooManyDevices => "too-many-devices",
            Self::RecipientNotServed => "recipient-not-served",
            Self::Unknown => "unknown",
        }
    }
}

/// The plaintext inside a message's ciphertext. Receipts travel as messages
/// too, so the router cannot tell them from text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Content {
    /// A text message.
    Text {
        /// The text.
        body: String,
        /// The author's home router (a router URL, see [`crate::address`]):
        /// where replies and receipts go. Inside the sealed content, so
        /// the routers carrying the frame never see it; absent from
        /// clients before home routers, and then "the router this came
        /// through".
        #[serde(default, skip_serializing_if = "Option::is_none")]
        home: Option<String>,
    },
    /// The author stored these messages.
    Delivered {
        /// The message ids.
        ids: Vec<Uuid>,
    },
    /// The author displayed these messages.
    Read {
        /// The message ids.
        ids: Vec<Uuid>,
    },
    /// Between one's own devices only (`from` and `to` both the own key):
    /// a copy of a message this identity sent from another device, to be
    /// stored as outgoing with the same id.
    Sent {
        /// The original message's id.
        id: Uuid,
        /// Whom the original went to.
        peer: PublicKey,
        /// The text.
        body: String,
        /// The original's `ts`: when it was written.
        created: String,
        /// When the router accepted the original (its `ack`'s `at`), if
        /// known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sent: Option<String>,
    },
    /// Between one's own devices only: these messages from `peer` were
    /// shown on another device (at the frame's `ts`); the read receipt went
    /// from there, so no other device sends one.
    ReadSync {
        /// Who wrote the messages.
        peer: PublicKey,
        /// The message ids.
        ids: Vec<Uuid>,
    },
    /// Between one's own devices only: a contact was added, renamed or
    /// removed on another device.
    Contact {
        /// What happened.
        op: ContactOp,
        /// The contact's key.
        key: PublicKey,
        /// The contact's name (absent for `remove`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        /// The contact's home router, when known (absent: the same router
        /// as the identity's own).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        router: Option<String>,
    },
    /// The author's home router moved: deliver to `router` from now on.
    /// Sent to every contact when the author runs `home set`; from the
    /// own key, it tells the identity's other devices.
    Home {
        /// The new home router's URL.
        router: String,
    },
    /// A kind from a newer version of the protocol: stored nowhere, and
    /// acknowledged like any other message.
    #[serde(other)]
    Unknown,
}

impl Content {
    /// A text message with no home router announced.
    pub fn text(body: impl Into<String>) -> Self {
        Self::Text {
            body: body.into(),
            home: None,
        }
    }

    /// Whether only the own key may send this kind (to itself).
    pub fn is_self_sync(&self) -> bool {
        matches!(
            self,
            Self::Sent { .. } | Self::ReadSync { .. } | Self::Contact { .. }
        )
    }
}

/// What a [`Content::Contact`] did to the contact list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ContactOp {
    /// The key was saved under the name.
    Add,
    /// The contact with the key got the name.
    Rename,
    /// The contact with the key was removed (its messages are kept).
    Remove,
    /// An operation from a newer version: ignored.
    #[serde(other)]
    Unknown,
}

/// Why a frame could not be parsed, or a message not sealed or opened.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProtocolError {
    /// Longer than the size limit.
    #[error("frame of {size} bytes is larger than the limit of {limit} bytes")]
    TooLarge {
        /// The frame's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A `type` we do not know.
    #[error("unknown frame type '{0}'")]
    UnknownType(String),
    /// Not JSON or not a valid frame.
    #[error("malformed frame: {0}")]
    BadFrame(String),
    /// `ts` is not an RFC 3339 time.
    #[error("'ts' is not an RFC 3339 timestamp")]
    BadTimestamp,
    /// The message signature does not verify against `from`.
    #[error("the message signature does not verify: it was altered or forged")]
    BadSignature,
    /// The message is addressed to another key.
    #[error("the message is addressed to another key")]
    NotForMe,
    /// Encryption or decryption failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The decrypted content is not valid content JSON.
    #[error("the decrypted content is malformed: {0}")]
    BadContent(String),
}

/// A router address that cannot be signed for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("'{address}' is not a router address: {why}")]
pub struct BadRouterAddress {
    /// The address as given (at most its first 200 bytes).
    pub address: String,
    /// What is wrong with it.
    pub why: &'static str,
}

/// The canonical spelling of a router's WebSocket address, as signed in
/// `auth` and as a router compares it with its own names:
/// `scheme://host:port/path` with the scheme and host in lower case, the
/// default port (80 for `ws`, 443 for `wss`) written out, an empty path
/// as `/ws`, and no query or fragment. So `WS://Example.org/ws?pub=x` and
/// `ws://example.org:80/ws` name the same router.
pub fn router_name(url: &str) -> Result<String, BadRouterAddress> {
    let bad = |why| BadRouterAddress {
        address: truncate_on_char(url, 200).to_owned(),
        why,
    };
    let uri: tokio_tungstenite::tungstenite::http::Uri =
        url.parse().map_err(|_| bad("it is not a URL"))?;
    let scheme = uri
        .scheme_str()
        .map(str::to_ascii_lowercase)
        .ok_or_else(|| bad("it has no scheme"))?;
    let default_port = match scheme.as_str() {
        "ws" => 80,
        "wss" => 443,
        _ => return Err(bad("it must start with ws:// or wss://")),
    };
    let authority = uri.authority().ok_or_else(|| bad("it has no host"))?;
    if authority.as_str().contains('@') {
        return Err(bad("it must not carry a user name or password"));
    }
    let host = authority.host().to_ascii_lowercase();
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    let port = authority.port_u16().unwrap_or(default_port);
    let path = match uri.path() {
        "" | "/" => "/ws",
        path => path,
    };
    Ok(format!("{scheme}://{host}:{port}{path}"))
}

impl ProtocolError {
    /// The wire error code for a frame refused with this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::TooLarge { .. } => ErrorCode::TooLarge,
            Self::UnknownType(_) => ErrorCode::UnknownType,
            _ => ErrorCode::BadFrame,
        }
    }
}

/// Parses one text frame with the default size limit.
pub fn parse(text: &str) -> Result<Frame, ProtocolError> {
    parse_with_limit(text, MAX_FRAME_BYTES)
}

/// Parses one text frame of at most `limit` bytes. Never panics.
pub fn parse_with_limit(text: &str, limit: usize) -> Result<Frame, ProtocolError> {
    if text.len() > limit {
        return Err(ProtocolError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    match serde_json::from_str::<Frame>(text) {
        Ok(frame) => {
            check(&frame)?;
            Ok(frame)
        }
        Err(e) => Err(classify(text, e)),
    }
}

/// Parses raw bytes (e.g. a WebSocket binary frame) as a text frame.
pub fn from_slice(bytes: &[u8], limit: usize) -> Result<Frame, ProtocolError> {
    if bytes.len() > limit {
        return Err(ProtocolError::TooLarge {
            size: bytes.len(),
            limit,
        });
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ProtocolError::BadFrame("not UTF-8 text".to_owned()))?;
    parse_with_limit(text, limit)
}

/// Checks what serde cannot: the timestamp's format and the ciphertext's
/// length.
fn check(frame: &Frame) -> Result<(), ProtocolError> {
    match frame {
        Frame::Message(m) => check_message(&m.ts, &m.payload),
        Frame::Auth(a) => check_auth(a),
        _ => Ok(()),
    }
}

/// The checks of an `auth` that its types do not express.
fn check_auth(auth: &Auth) -> Result<(), ProtocolError> {
    if auth.name.len() > MAX_DEVICE_NAME_BYTES || auth.name.chars().any(char::is_control) {
        return Err(ProtocolError::BadFrame(format!(
            "'name' must be at most {MAX_DEVICE_NAME_BYTES} bytes with no control characters"
        )));
    }
    if auth.router.len() > MAX_ROUTER_NAME_BYTES {
        return Err(ProtocolError::BadFrame(format!(
            "'router' must be at most {MAX_ROUTER_NAME_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The checks of a `message` that its types do not express.
fn check_message(ts: &str, payload: &Payload) -> Result<(), ProtocolError> {
    if chrono::DateTime::parse_from_rfc3339(ts).is_err() || ts.len() > 40 {
        return Err(ProtocolError::BadTimestamp);
    }
    if payload.ciphertext.len() < TAG_LEN {
        return Err(ProtocolError::BadFrame(format!(
            "'payload.ciphertext' is {} bytes, shorter than the {TAG_LEN}-byte tag",
            payload.ciphertext.len()
        )));
    }
    Ok(())
}

/// The id of a refused frame, when one can be read: the first `"id"` key
/// whose value is a canonical UUID string. A plain scan, never a parse, so
/// it costs one pass even over an oversized frame and cannot fail; an id
/// in another form is not read (errors about it carry no `id`).
pub fn frame_id(text: &str) -> Option<Uuid> {
    const KEY: &str = "\"id\"";
    text.match_indices(KEY).find_map(|(at, _)| {
        let rest = text.get(at + KEY.len()..)?.trim_start();
        let rest = rest.strip_prefix(':')?.trim_start();
        let rest = rest.strip_prefix('"')?;
        let candidate = rest.get(..36)?;
        rest.get(36..)?.strip_prefix('"')?;
        parse_canonical_uuid(candidate)
    })
}

/// `text` as a UUID if it is in the canonical lower-case hyphenated form
/// (`8-4-4-4-12` lower-case hex digits), the only form the protocol uses:
/// the router echoes ids in that form, so accepting others would give a
/// client an `ack` that does not match its id as text.
pub fn parse_canonical_uuid(text: &str) -> Option<Uuid> {
    let id = Uuid::try_parse(text).ok()?;
    let mut buf = Uuid::encode_buffer();
    (id.hyphenated().encode_lower(&mut buf) == text).then_some(id)
}

/// Tells an unknown `type` from a malformed frame, only on the error path.
fn classify(text: &str, error: serde_json::Error) -> ProtocolError {
    #[derive(Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        kind: String,
    }
    const KNOWN: &[&str] = &[
        "challenge",
        "auth",
        "ready",
        "message",
        "ack",
        "error",
        "synced",
        "list-devices",
        "devices",
        "remove-device",
        "device-removed",
    ];
    match serde_json::from_str::<TypeOnly>(text) {
        Ok(t) if !KNOWN.contains(&t.kind.as_str()) => {
            ProtocolError::UnknownType(truncate_on_char(&t.kind, MAX_TYPE_ECHO).to_owned())
        }
        _ => ProtocolError::BadFrame(error.to_string()),
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a
/// character boundary. (`str::floor_char_boundary` is not stable in the
/// minimum supported Rust.)
pub fn truncate_on_char(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = text
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take_while(|end| *end <= max)
        .last()
        .unwrap_or(0);
    text.get(..end).unwrap_or_default()
}

/// The routing fields of a `message` frame, as a router reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Envelope {
    /// The message id.
    pub id: Uuid,
    /// The author's key bytes (compared with the session's key).
    pub from: [u8; 32],
    /// The recipient's key bytes (the queue it goes to).
    pub to: [u8; 32],
}

/// The frames a client may send a router.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// The answer to the challenge.
    Auth(Auth),
    /// A message to store and forward.
    Message(Envelope),
    /// The recipient stored a delivered message.
    Ack(Ack),
    /// Which devices does the session's key have?
    ListDevices,
    /// Stop delivering to this device of the session's key.
    RemoveDevice(Uuid),
}

/// How a router parses: the whole frame's shape is checked as [`parse`]
/// does, but `from` and `to` are only required to be 32 bytes of base64,
/// not proven to be curve points. Recipients validate keys when they open
/// a message; the router compares `from` with its session's key byte for
/// byte, and skipping two point decompressions makes parsing ~10x cheaper.
pub fn parse_inbound(text: &str, limit: usize) -> Result<Inbound, ProtocolError> {
    /// A `message` with its keys as raw bytes.
    #[derive(Deserialize)]
    #[allow(dead_code)] // Fields are parsed to check the frame's shape.
    struct RawMessage {
        #[serde(deserialize_with = "canonical_uuid")]
        id: Uuid,
        #[serde(with = "b64_array")]
        from: [u8; 32],
        #[serde(with = "b64_array")]
        to: [u8; 32],
        ts: String,
        payload: Payload,
        #[serde(with = "b64_array")]
        sig: [u8; 64],
    }
    /// An `ack` with its id in canonical form only.
    #[derive(Deserialize)]
    struct RawAck {
        #[serde(deserialize_with = "canonical_uuid")]
        id: Uuid,
        #[serde(default)]
        at: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(tag = "type", rename_all = "kebab-case")]
    enum Raw {
        Auth(Auth),
        Message(RawMessage),
        Ack(RawAck),
        Challenge(serde::de::IgnoredAny),
        Ready(serde::de::IgnoredAny),
        Error(serde::de::IgnoredAny),
        Synced,
        ListDevices,
        Devices(serde::de::IgnoredAny),
        RemoveDevice(RemoveDevice),
        DeviceRemoved(serde::de::IgnoredAny),
    }
    if text.len() > limit {
        return Err(ProtocolError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    match serde_json::from_str::<Raw>(text) {
        Ok(Raw::Auth(a)) => {
            check_auth(&a)?;
            Ok(Inbound::Auth(a))
        }
        Ok(Raw::ListDevices) => Ok(Inbound::ListDevices),
        Ok(Raw::RemoveDevice(r)) => Ok(Inbound::RemoveDevice(r.device)),
        Ok(Raw::Ack(a)) => Ok(Inbound::Ack(Ack { id: a.id, at: a.at })),
        Ok(Raw::Message(m)) => {
            check_message(&m.ts, &m.payload)?;
            Ok(Inbound::Message(Envelope {
                id: m.id,
                from: m.from,
                to: m.to,
            }))
        }
        Ok(
            Raw::Challenge(_)
            | Raw::Ready(_)
            | Raw::Error(_)
            | Raw::Synced
            | Raw::Devices(_)
            | Raw::DeviceRemoved(_),
        ) => Err(ProtocolError::BadFrame(
            "only routers send 'challenge', 'ready', 'error', 'synced', 'devices' and \
             'device-removed' frames"
                .to_owned(),
        )),
        Err(e) => Err(classify(text, e)),
    }
}

/// Serializes a frame as JSON text.
pub fn to_text(frame: &Frame) -> String {
    // Serializing these types cannot fail: no maps with non-string keys, no
    // custom serializers that error.
    serde_json::to_string(frame).unwrap_or_default()
}

/// Who is signing in: a device of an identity, at a router.
#[derive(Debug, Clone, Copy)]
pub struct AuthFor<'a> {
    /// The device's id ([`CONTROL_DEVICE`] for a control session).
    pub device: &'a Uuid,
    /// The device's name.
    pub name: &'a str,
    /// The router's address, as [`router_name`] spells it.
    pub router: &'a str,
}

/// The bytes a client signs to authenticate as `key` against `nonce`, for
/// one device at one router.
pub fn auth_signed_bytes(
    version: u32,
    key: &PublicKey,
    nonce: &[u8; CHALLENGE_LEN],
    who: AuthFor<'_>,
) -> Vec<u8> {
    length_prefixed(&[
        AUTH_LABEL,
        &version.to_be_bytes(),
        key.as_bytes(),
        nonce,
        who.device.as_bytes(),
        who.name.as_bytes(),
        who.router.as_bytes(),
    ])
}

/// The client half of the handshake: answers a challenge as `identity`.
pub fn sign_challenge(
    identity: &Identity,
    version: u32,
    nonce: &[u8; CHALLENGE_LEN],
    who: AuthFor<'_>,
) -> Auth {
    let bytes = auth_signed_bytes(version, &identity.public_key(), nonce, who);
    Auth {
        version,
        device: *who.device,
        name: who.name.to_owned(),
        router: who.router.to_owned(),
        sig: identity.signing_key().sign(&bytes).to_bytes(),
    }
}

/// The router half: does `auth` prove ownership of `key` for `nonce`?
/// (Whether `auth.router` names this router is the caller's check.)
pub fn verify_auth(key: &PublicKey, nonce: &[u8; CHALLENGE_LEN], auth: &Auth) -> bool {
    let who = AuthFor {
        device: &auth.device,
        name: &auth.name,
        router: &auth.router,
    };
    let bytes = auth_signed_bytes(auth.version, key, nonce, who);
    key.verifying_key()
        .verify_strict(&bytes, &Signature::from_bytes(&auth.sig))
        .is_ok()
}

/// The associated data binding a message's envelope to its ciphertext.
pub fn message_ad(id: &Uuid, from: &PublicKey, to: &PublicKey, ts: &str) -> Vec<u8> {
    length_prefixed(&[
        MESSAGE_AD_LABEL,
        id.as_bytes(),
        from.as_bytes(),
        to.as_bytes(),
        ts.as_bytes(),
    ])
}

/// The bytes a message's signature covers.
pub fn message_signed_bytes(
    id: &Uuid,
    from: &PublicKey,
    to: &PublicKey,
    ts: &str,
    payload: &Payload,
) -> Vec<u8> {
    length_prefixed(&[
        MESSAGE_SIG_LABEL,
        id.as_bytes(),
        from.as_bytes(),
        to.as_bytes(),
        ts.as_bytes(),
        &payload.nonce,
        &payload.ciphertext,
    ])
}

/// Encrypts and signs `content` from `identity` to `to`.
pub fn seal(
    identity: &Identity,
    to: &PublicKey,
    id: Uuid,
    ts: &str,
    content: &Content,
) -> Result<MessageFrame, ProtocolError> {
    seal_with_nonce(identity, to, id, ts, content, &crypto::random_nonce())
}

/// [`seal`] with a given nonce. Only for test vectors: a reused nonce
/// breaks the encryption.
pub fn seal_with_nonce(
    identity: &Identity,
    to: &PublicKey,
    id: Uuid,
    ts: &str,
    content: &Content,
    nonce: &[u8; NONCE_LEN],
) -> Result<MessageFrame, ProtocolError> {
    let key = crypto::message_key(identity, to, &identity.public_key(), to)?;
    seal_keyed_with_nonce(identity, &key, to, id, ts, content, nonce)
}

/// [`seal`] with `key`, the key for messages from `identity` to `to`
/// ([`crypto::message_key`]) derived beforehand: a sender that seals many
/// messages to one key derives it once (an X25519 operation) instead of
/// once per message.
pub fn seal_keyed(
    identity: &Identity,
    key: &crypto::MessageKey,
    to: &PublicKey,
    id: Uuid,
    ts: &str,
    content: &Content,
) -> Result<MessageFrame, ProtocolError> {
    seal_keyed_with_nonce(identity, key, to, id, ts, content, &crypto::random_nonce())
}

fn seal_keyed_with_nonce(
    identity: &Identity,
    key: &crypto::MessageKey,
    to: &PublicKey,
    id: Uuid,
    ts: &str,
    content: &Content,
    nonce: &[u8; NONCE_LEN],
) -> Result<MessageFrame, ProtocolError> {
    let from = identity.public_key();
    let plaintext = zeroize::Zeroizing::new(
        serde_json::to_vec(content).map_err(|e| ProtocolError::BadContent(e.to_string()))?,
    );
    let ad = message_ad(&id, &from, to, ts);
    let payload = Payload {
        nonce: *nonce,
        ciphertext: crypto::encrypt(key, nonce, &ad, &plaintext)?,
    };
    let signed = message_signed_bytes(&id, &from, to, ts, &payload);
    Ok(MessageFrame {
        id,
        from,
        to: *to,
        ts: ts.to_owned(),
        payload,
        sig: identity.signing_key().sign(&signed).to_bytes(),
    })
}

/// Checks a message's signature against its `from`.
pub fn verify_message(frame: &MessageFrame) -> Result<(), ProtocolError> {
    let signed = message_signed_bytes(&frame.id, &frame.from, &frame.to, &frame.ts, &frame.payload);
    frame
        .from
        .verifying_key()
        .verify_strict(&signed, &Signature::from_bytes(&frame.sig))
        .map_err(|_| ProtocolError::BadSignature)
}

/// Verifies, decrypts and parses a message addressed to `identity`.
pub fn open(identity: &Identity, frame: &MessageFrame) -> Result<Content, ProtocolError> {
    if frame.to != identity.public_key() {
        return Err(ProtocolError::NotForMe);
    }
    verify_message(frame)?;
    let key = crypto::message_key(identity, &frame.from, &frame.from, &frame.to)?;
    let ad = message_ad(&frame.id, &frame.from, &frame.to, &frame.ts);
    let plaintext = crypto::decrypt(&key, &frame.payload.nonce, &ad, &frame.payload.ciphertext)?;
    serde_json::from_slice(&plaintext).map_err(|e| ProtocolError::BadContent(e.to_string()))
}

/// Reads a message id from a client, refusing every form but the
/// canonical one (see [`parse_canonical_uuid`]).
fn canonical_uuid<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Uuid, D::Error> {
    let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
    parse_canonical_uuid(&text).ok_or_else(|| {
        serde::de::Error::custom(
            "ids must be UUIDs in lower-case hyphenated form (8-4-4-4-12 hex digits)",
        )
    })
}

/// Base64 (standard, padded) for fixed-size byte arrays.
mod b64_array {
    use super::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer, const N: usize>(
        bytes: &[u8; N],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        deserializer: D,
    ) -> Result<[u8; N], D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        let bytes = STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("not standard base64"))?;
        bytes.as_slice().try_into().map_err(|_| {
            serde::de::Error::custom(format!("expected {N} bytes, got {}", bytes.len()))
        })
    }
}

/// Base64 (standard, padded) for byte vectors.
mod b64_vec {
    use super::STANDARD;
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&STANDARD.encode(bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        STANDARD
            .decode(text.as_bytes())
            .map_err(|_| serde::de::Error::custom("not standard base64"))
    }
}

#[cfg(test)]
mod tests;

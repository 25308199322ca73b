//! What the two devices say to each other, and how it is sealed into
//! ordinary `message` frames between the two rendezvous keys.
//!
//! Keys, all through HKDF-SHA256:
//! - the rendezvous key pairs: `HKDF(ikm = nameplate, info = LP(label) ||
//!   LP("old" | "new"))` as ed25519 seeds, so both devices know both keys;
//! - the **box key**, also from the nameplate alone, for the few messages
//!   sent before the PAKE finishes (its first message, and "this code is
//!   closed" notes): anyone who has the nameplate can read those, and they
//!   hold nothing secret;
//! - from the SPAKE2 key `K`: one key per direction and one confirmation
//!   value per side.
//!
//! A frame's `payload.ciphertext` is `seq (8 bytes BE) || AEAD`, the AEAD
//! being XChaCha20-Poly1305 with the frame's random nonce and the
//! associated data `LP(label) || LP(box|session) || LP(seq) || LP(id) ||
//! LP(from) || LP(to)`: a chunk cannot be moved, replayed under another
//! number or passed off as the other direction's. The frame is signed by
//! the rendezvous key like any message, so the router accepts it.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use hkdf::Hkdf;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use uuid::Uuid;
use zeroize::Zeroizing;

use super::LinkError;
use crate::clock;
use crate::crypto::{self, length_prefixed, MessageKey};
use crate::identity::{Identity, PublicKey};
use crate::protocol::{self, MessageFrame, Payload};

const RENDEZVOUS_LABEL: &[u8] = b"chat-p2p/link/v1/rendezvous";
const RENDEZVOUS_DEVICE_LABEL: &[u8] = b"chat-p2p/link/v1/rendezvous-device";
const BOX_LABEL: &[u8] = b"chat-p2p/link/v1/box-key";
const SESSION_LABEL: &[u8] = b"chat-p2p/link/v1/session-key";
const CONFIRM_LABEL: &[u8] = b"chat-p2p/link/v1/confirm";
const AD_LABEL: &[u8] = b"chat-p2p/link/v1/ad";

/// The SPAKE2 identities of the two sides.
pub const PAKE_OLD: &[u8] = b"chat-p2p/link/v1/existing-device";
/// See [`PAKE_OLD`].
pub const PAKE_NEW: &[u8] = b"chat-p2p/link/v1/new-device";

/// Tag of a plaintext holding JSON ([`Note`]).
const TAG_NOTE: u8 = b'J';
/// Tag of a plaintext holding a chunk of the profile.
const TAG_CHUNK: u8 = b'C';

/// Bytes a frame adds around its ciphertext (JSON fields, keys, id,
/// signature), rounded up generously.
const FRAME_OVERHEAD: usize = 640;
/// Bytes added to a chunk: its sequence number, tag byte and AEAD tag.
const CHUNK_OVERHEAD: usize = 8 + 1 + 16;

/// The largest chunk of profile that fits a frame of `max_frame_bytes`.
pub fn chunk_capacity(max_frame_bytes: usize) -> usize {
    let ciphertext = max_frame_bytes.saturating_sub(FRAME_OVERHEAD) / 4 * 3;
    ciphertext.saturating_sub(CHUNK_OVERHEAD).max(1024)
}

/// Which device a key or message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The device that has the profile (`link`).
    Old,
    /// The device that joins (`link --join`).
    New,
}

impl Side {
    fn label(self) -> &'static [u8] {
        match self {
            Side::Old => b"old",
            Side::New => b"new",
        }
    }

    /// The other side.
    pub fn other(self) -> Side {
        match self {
            Side::Old => Side::New,
            Side::New => Side::Old,
        }
    }
}

fn hkdf(ikm: &[u8], info: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut out = Zeroizing::new([0u8; 32]);
    // 32 bytes is far below HKDF-SHA256's limit: expand cannot fail.
    let _ = Hkdf::<Sha256>::new(None, ikm).expand(info, out.as_mut());
    out
}

/// The rendezvous key pair of `side`, from the nameplate only.
pub fn rendezvous(nameplate: &str, side: Side) -> Identity {
    let seed = hkdf(
        nameplate.as_bytes(),
        &length_prefixed(&[RENDEZVOUS_LABEL, side.label()]),
    );
    Identity::from_secret_bytes(&seed)
}

/// The device id `side` connects its rendezvous key as. Fixed by the
/// nameplate rather than random: the router gives a key's frames queued
/// before a device first registered only to the key's *first* device, so
/// a second try with the same code (another process, another random id)
/// would never see the "closed" note the existing device left; as the same
/// device it does, and at most one session per side is live.
pub fn rendezvous_device(nameplate: &str, side: Side) -> Uuid {
    let bytes = hkdf(
        nameplate.as_bytes(),
        &length_prefixed(&[RENDEZVOUS_DEVICE_LABEL, side.label()]),
    );
    let mut id = [0u8; 16];
    id.copy_from_slice(&bytes[..16]);
    uuid::Builder::from_random_bytes(id).into_uuid()
}

/// The key of the messages sent before the PAKE finishes.
pub fn box_key(nameplate: &str) -> MessageKey {
    MessageKey::from_bytes(hkdf(nameplate.as_bytes(), &length_prefixed(&[BOX_LABEL])))
}

/// The key of the messages `from` sends once the PAKE gave `shared`.
pub fn session_key(shared: &[u8], from: Side) -> MessageKey {
    MessageKey::from_bytes(hkdf(
        shared,
        &length_prefixed(&[SESSION_LABEL, from.label()]),
    ))
}

/// The value `side` shows to prove it holds the same PAKE key.
pub fn confirmation(shared: &[u8], side: Side) -> [u8; 32] {
    *hkdf(shared, &length_prefixed(&[CONFIRM_LABEL, side.label()]))
}

/// Compares confirmation values without an early exit.
pub fn same_confirmation(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Which key a frame is sealed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    /// The nameplate's box key.
    Box,
    /// The PAKE's session keys.
    Session,
}

impl Layer {
    fn label(self) -> &'static [u8] {
        match self {
            Layer::Box => b"box",
            Layer::Session => b"session",
        }
    }
}

fn ad(layer: Layer, seq: u64, id: &Uuid, from: &PublicKey, to: &PublicKey) -> Vec<u8> {
    length_prefixed(&[
        AD_LABEL,
        layer.label(),
        &seq.to_be_bytes(),
        id.as_bytes(),
        from.as_bytes(),
        to.as_bytes(),
    ])
}

/// Seals `body` (an encoded [`Body`]) from `me` to `to` as a signed,
/// router-valid message frame.
pub fn seal(
    me: &Identity,
    to: &PublicKey,
    key: &MessageKey,
    layer: Layer,
    seq: u64,
    body: &[u8],
) -> Result<MessageFrame, LinkError> {
    let id = Uuid::now_v7();
    let from = me.public_key();
    let nonce = crypto::random_nonce();
    let sealed = crypto::encrypt(key, &nonce, &ad(layer, seq, &id, &from, to), body)?;
    let mut ciphertext = Vec::with_capacity(8 + sealed.len());
    ciphertext.extend_from_slice(&seq.to_be_bytes());
    ciphertext.extend_from_slice(&sealed);
    let payload = Payload { nonce, ciphertext };
    let ts = clock::now();
    let signed = protocol::message_signed_bytes(&id, &from, to, &ts, &payload);
    Ok(MessageFrame {
        id,
        from,
        to: *to,
        ts,
        sig: me.signing_key().sign(&signed).to_bytes(),
        payload,
    })
}

/// Opens a frame sealed by [`seal`]: its sequence number and body.
pub fn open(
    frame: &MessageFrame,
    key: &MessageKey,
    layer: Layer,
) -> Result<(u64, Zeroizing<Vec<u8>>), LinkError> {
    protocol::verify_message(frame).map_err(|_| LinkError::Garbled)?;
    let ct = &frame.payload.ciphertext;
    let (seq, sealed) = match ct.split_first_chunk::<8>() {
        Some((seq, rest)) => (u64::from_be_bytes(*seq), rest),
        None => return Err(LinkError::Garbled),
    };
    let ad = ad(layer, seq, &frame.id, &frame.from, &frame.to);
    let body =
        crypto::decrypt(key, &frame.payload.nonce, &ad, sealed).map_err(|_| LinkError::Garbled)?;
    Ok((seq, body))
}

/// A message in a frame's plaintext.
#[derive(Debug)]
pub enum Body {
    /// A control message.
    Note(Note),
    /// A chunk of the compressed profile.
    Chunk(Zeroizing<Vec<u8>>),
}

impl Body {
    /// The bytes to seal.
    pub fn encode(&self) -> Result<Zeroizing<Vec<u8>>, LinkError> {
        let mut out = Zeroizing::new(Vec::new());
        match self {
            Body::Note(note) => {
                out.push(TAG_NOTE);
                serde_json::to_writer(&mut *out, note)
                    .map_err(|e| LinkError::Protocol(e.to_string()))?;
            }
            Body::Chunk(bytes) => {
                out.reserve(bytes.len() + 1);
                out.push(TAG_CHUNK);
                out.extend_from_slice(bytes);
            }
        }
        Ok(out)
    }

    /// Reads opened bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, LinkError> {
        match bytes.split_first() {
            Some((&TAG_NOTE, json)) => serde_json::from_slice(json)
                .map(Body::Note)
                .map_err(|e| LinkError::Protocol(format!("an unreadable note: {e}"))),
            Some((&TAG_CHUNK, data)) => Ok(Body::Chunk(Zeroizing::new(data.to_vec()))),
            _ => Err(LinkError::Protocol("an empty or unknown message".into())),
        }
    }
}

/// Why the existing device closed a code for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Closed {
    /// A device linked with it.
    Used,
    /// Its time ran out.
    Expired,
    /// Someone tried it with a wrong password.
    WrongCode,
    /// The link was started and then failed or was cancelled.
    Failed,
}

/// The control messages, as JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Note {
    /// Old → new, box key: the first SPAKE2 message and the code's expiry.
    Hello {
        /// SPAKE2 message, b64.
        pake: String,
        /// When the existing device stops waiting.
        expires_at: String,
    },
    /// Old → new, box key: the code cannot be used any more.
    Closed {
        /// Why.
        reason: Closed,
        /// With `wrong-code`: the id of the `reply` frame refused, so the
        /// device that sent it knows it was its own try.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refused: Option<Uuid>,
    },
    /// New → old, box key: the second SPAKE2 message and the new side's
    /// confirmation.
    Reply {
        /// SPAKE2 message, b64.
        pake: String,
        /// The new side's confirmation, b64.
        confirm: String,
    },
    /// Old → new: the old side's confirmation and the identity.
    Welcome {
        /// The old side's confirmation, b64.
        confirm: String,
        /// The identity's public key.
        public_key: String,
        /// The secret key as stored: `plain` (b64 seed) or `wrapped`.
        secret: SecretAsStored,
        /// The existing device's name, for messages.
        device_name: String,
    },
    /// New → old: the identity is accepted (and this device registered);
    /// send the profile.
    Ready {
        /// The new device's id.
        device_id: String,
        /// The new device's name.
        device_name: String,
    },
    /// Old → new: what follows.
    Manifest {
        /// Size of the uncompressed snapshot.
        bytes: u64,
        /// Messages in it.
        messages: u64,
    },
    /// Old → new: after the last chunk.
    End {
        /// Chunks sent.
        chunks: u64,
        /// SHA-256 of the uncompressed snapshot, b64.
        sha256: String,
    },
    /// New → old: chunks received so far (flow control).
    Progress {
        /// Chunks written.
        chunks: u64,
    },
    /// New → old: the profile is in place.
    Done {
        /// Messages in the installed profile.
        messages: u64,
    },
    /// Either way: giving up, and why (for the other side's message).
    Abort {
        /// What went wrong, for people.
        reason: String,
    },
}

impl Note {
    /// The note's kind, to name it in errors (never its fields: a
    /// `welcome` holds the secret key).
    pub fn kind(&self) -> &'static str {
        match self {
            Note::Hello { .. } => "hello",
            Note::Closed { .. } => "closed",
            Note::Reply { .. } => "reply",
            Note::Welcome { .. } => "welcome",
            Note::Ready { .. } => "ready",
            Note::Manifest { .. } => "manifest",
            Note::End { .. } => "end",
            Note::Progress { .. } => "progress",
            Note::Done { .. } => "done",
            Note::Abort { .. } => "abort",
        }
    }
}

/// A secret key as the profile stores it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "form", rename_all = "kebab-case")]
pub enum SecretAsStored {
    /// In clear: the 32-byte seed, b64.
    Plain {
        /// The seed, b64.
        seed: String,
    },
    /// Sealed under the owner's passphrase (see `keywrap`), b64 fields.
    Wrapped {
        /// argon2id memory, KiB.
        memory_kib: u32,
        /// argon2id passes.
        iterations: u32,
        /// argon2id lanes.
        parallelism: u32,
        /// Salt, b64.
        salt: String,
        /// Sealed seed, b64.
        sealed: String,
    },
}

impl std::fmt::Debug for SecretAsStored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SecretAsStored::Plain { .. } => f.write_str("Plain(..)"),
            SecretAsStored::Wrapped { .. } => f.write_str("Wrapped(..)"),
        }
    }
}

/// Standard base64.
pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// Reads standard base64 from the other device.
pub fn unb64(text: &str) -> Result<Vec<u8>, LinkError> {
    B64.decode(text)
        .map_err(|_| LinkError::Protocol("bad base64 in a note".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_rendezvous_keys() {
        let old = rendezvous("K7M2Q", Side::Old);
        assert_eq!(
            old.public_key(),
            rendezvous("K7M2Q", Side::Old).public_key()
        );
        assert_ne!(
            old.public_key(),
            rendezvous("K7M2Q", Side::New).public_key()
        );
        assert_ne!(
            old.public_key(),
            rendezvous("K7M2R", Side::Old).public_key()
        );
    }

    #[test]
    fn a_sealed_frame_is_router_valid_and_opens_once_bound() {
        let (old, new) = (
            rendezvous("AAAAA", Side::Old),
            rendezvous("AAAAA", Side::New),
        );
        let key = session_key(b"k", Side::Old);
        let body = Body::Chunk(Zeroizing::new(vec![7; 100])).encode().unwrap();
        let frame = seal(&old, &new.public_key(), &key, Layer::Session, 5, &body).unwrap();
        // What the router checks: the frame parses as a client frame.
        let text = protocol::to_text(&protocol::Frame::Message(frame.clone()));
        assert!(protocol::parse_inbound(&text, 65_536).is_ok());
        let (seq, opened) = open(&frame, &key, Layer::Session).unwrap();
        assert_eq!(seq, 5);
        assert!(matches!(Body::decode(&opened).unwrap(), Body::Chunk(c) if c.len() == 100));
        // The other direction's key, the box layer, a changed number: no.
        let back = session_key(b"k", Side::New);
        assert!(matches!(
            open(&frame, &back, Layer::Session),
            Err(LinkError::Garbled)
        ));
        assert!(matches!(
            open(&frame, &key, Layer::Box),
            Err(LinkError::Garbled)
        ));
        let mut moved = frame.clone();
        moved.payload.ciphertext[7] ^= 1;
        assert!(open(&moved, &key, Layer::Session).is_err());
    }

    #[test]
    fn a_full_chunk_fits_the_frame_limit() {
        for max in [4096, 65_536, 1 << 20] {
            let (old, new) = (rendezvous("B", Side::Old), rendezvous("B", Side::New));
            let chunk = Body::Chunk(Zeroizing::new(vec![0xff; chunk_capacity(max)]));
            let body = chunk.encode().unwrap();
            let key = session_key(b"k", Side::Old);
            let frame = seal(
                &old,
                &new.public_key(),
                &key,
                Layer::Session,
                u64::MAX,
                &body,
            );
            let text = protocol::to_text(&protocol::Frame::Message(frame.unwrap()));
            assert!(text.len() <= max, "{} > {max}", text.len());
        }
    }

    #[test]
    fn confirmations_differ_per_side_and_compare() {
        let (a, b) = (confirmation(b"k", Side::Old), confirmation(b"k", Side::New));
        assert_ne!(a, b);
        assert!(same_confirmation(&a, &confirmation(b"k", Side::Old)));
        assert!(!same_confirmation(&a, &b));
        assert!(!same_confirmation(&a, &a[..31]));
    }

    #[test]
    fn notes_round_trip() {
        let note = Note::Closed {
            reason: Closed::WrongCode,
            refused: Some(Uuid::nil()),
        };
        let bytes = Body::Note(note.clone()).encode().unwrap();
        assert!(matches!(Body::decode(&bytes).unwrap(), Body::Note(n) if n == note));
        assert!(Body::decode(b"").is_err());
        assert!(Body::decode(b"Jnot json").is_err());
    }
}

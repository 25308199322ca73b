//! End-to-end encryption of message payloads.
//!
//! Both parties' ed25519 keys are mapped to X25519 with the birational map
//! (the same as libsodium's `crypto_sign_ed25519_pk_to_curve25519` and
//! `crypto_sign_ed25519_sk_to_curve25519`). The X25519 shared secret goes
//! through HKDF-SHA256 to a 32-byte XChaCha20-Poly1305 key; the HKDF info
//! names the protocol version and both public keys in the order sender,
//! recipient, so each direction of a conversation has its own key. Every
//! payload gets a fresh random 24-byte nonce.
//!
//! Every primitive comes from a well-kept crate (ed25519-dalek,
//! x25519-dalek, hkdf, sha2, chacha20poly1305); nothing is written by hand.
//! The exact inputs are specified in `docs/PROTOCOL.md`.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use x25519_dalek::{PublicKey as XPublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::identity::{Identity, PublicKey};

/// Length of an XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;

/// The label that opens the HKDF info of a message key.
pub const MESSAGE_KEY_LABEL: &[u8] = b"chat-p2p/v1/message-key";

/// Why encryption or decryption failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// The X25519 shared secret is all zeros: the peer's key is a
    /// small-order point, which would make the key predictable.
    #[error("the peer's key gives no shared secret (a small-order point): refusing to use it")]
    NonContributory,
    /// The ciphertext does not authenticate under this key and associated
    /// data: it was altered, addressed to someone else, or is corrupt.
    #[error("the payload does not decrypt: it was altered or is not for this key")]
    Decrypt,
    /// The AEAD refused to encrypt (only possible for absurdly large input).
    #[error("the payload could not be encrypted (too large?)")]
    Encrypt,
}

/// A symmetric message key. Zeroized when dropped; never printed.
pub struct MessageKey(Zeroizing<[u8; 32]>);

impl MessageKey {
    /// A key from raw bytes derived elsewhere (device linking derives its
    /// own keys from a PAKE).
    pub(crate) fn from_bytes(bytes: Zeroizing<[u8; 32]>) -> Self {
        Self(bytes)
    }

    /// The raw key bytes (for test vectors).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MessageKey(..)")
    }
}

/// Appends `part` to `out` as a 4-byte big-endian length and the bytes:
/// the unambiguous encoding every signed or derived byte string uses.
pub fn put_length_prefixed(out: &mut Vec<u8>, part: &[u8]) {
    // Frames are capped far below 4 GiB, so the cast cannot truncate; a
    // saturating conversion keeps this total anyway.
    let len = u32::try_from(part.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(part);
}

/// Concatenates length-prefixed `parts`.
pub fn length_prefixed(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.len() + 4).sum());
    for part in parts {
        put_length_prefixed(&mut out, part);
    }
    out
}

/// The X25519 secret of an identity (its ed25519 secret scalar, clamped).
fn x25519_secret(identity: &Identity) -> StaticSecret {
    let scalar = Zeroizing::new(identity.signing_key().to_scalar_bytes());
    StaticSecret::from(*scalar)
}

/// The X25519 public key of an ed25519 public key (the birational map).
pub fn x25519_public(key: &PublicKey) -> [u8; 32] {
    key.verifying_key().to_montgomery().to_bytes()
}

/// The HKDF info for a message from `from` to `to`.
fn key_info(from: &PublicKey, to: &PublicKey) -> Vec<u8> {
    length_prefixed(&[MESSAGE_KEY_LABEL, from.as_bytes(), to.as_bytes()])
}

/// Derives the key for messages from `from` to `to`. `identity` is one of
/// the two parties and `peer` the other.
pub fn message_key(
    identity: &Identity,
    peer: &PublicKey,
    from: &PublicKey,
    to: &PublicKey,
) -> Result<MessageKey, CryptoError> {
    let secret = x25519_secret(identity);
    let shared = secret.diffie_hellman(&XPublicKey::from(x25519_public(peer)));
    if !shared.was_contributory() {
        return Err(CryptoError::NonContributory);
    }
    let hkdf = Hkdf::<Sha256>::new(None, shared.as_bytes());
    let mut key = Zeroizing::new([0u8; 32]);
    hkdf.expand(&key_info(from, to), key.as_mut())
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        .map_err(|_| CryptoError::Encrypt)?;
    Ok(MessageKey(key))
}

/// A fresh random nonce from the operating system.
pub fn random_nonce() -> [u8; NONCE_LEN] {
    let mut nonce = [0u8; NONCE_LEN];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    nonce
}

/// Encrypts `plaintext` under `key` and `nonce`, binding `ad`.
pub fn encrypt(
    key: &MessageKey,
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(key.0.as_ref().into());
    cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad: ad,
            },
        )
        .map_err(|_| CryptoError::Encrypt)
}

/// Decrypts and authenticates `ciphertext` under `key`, `nonce` and `ad`.
pub fn decrypt(
    key: &MessageKey,
    nonce: &[u8; NONCE_LEN],
    ad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(key.0.as_ref().into());
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad: ad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::Decrypt)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (Identity, Identity) {
        (
            Identity::from_secret_bytes(&[1u8; 32]),
            Identity::from_secret_bytes(&[2u8; 32]),
        )
    }

    #[test]
    fn both_sides_derive_the_same_key_per_direction() {
        let (alice, bob) = pair();
        let (a, b) = (alice.public_key(), bob.public_key());
        let k1 = message_key(&alice, &b, &a, &b).unwrap();
        let k2 = message_key(&bob, &a, &a, &b).unwrap();
        assert_eq!(k1.as_bytes(), k2.as_bytes());
        let back = message_key(&bob, &a, &b, &a).unwrap();
        assert_ne!(k1.as_bytes(), back.as_bytes(), "directions have own keys");
    }

    #[test]
    fn map_matches_the_secret_scalar() {
        // The X25519 public key derived from the mapped secret equals the
        // mapped ed25519 public key: the two halves of the map agree.
        let (alice, _) = pair();
        let from_secret = XPublicKey::from(&x25519_secret(&alice)).to_bytes();
        assert_eq!(from_secret, x25519_public(&alice.public_key()));
    }

    #[test]
    fn round_trip_and_tamper_detection() {
        let (alice, bob) = pair();
        let (a, b) = (alice.public_key(), bob.public_key());
        let key = message_key(&alice, &b, &a, &b).unwrap();
        let nonce = random_nonce();
        let ct = encrypt(&key, &nonce, b"ad", b"hello").unwrap();
        assert_eq!(&decrypt(&key, &nonce, b"ad", &ct).unwrap()[..], b"hello");
        assert_eq!(
            decrypt(&key, &nonce, b"other ad", &ct),
            Err(CryptoError::Decrypt)
        );
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert_eq!(
            decrypt(&key, &nonce, b"ad", &bad),
            Err(CryptoError::Decrypt)
        );
    }

    #[test]
    fn length_prefix_is_unambiguous() {
        assert_ne!(
            length_prefixed(&[b"ab", b"c"]),
            length_prefixed(&[b"a", b"bc"])
        );
        assert_eq!(length_prefixed(&[b"ab"]), vec![0, 0, 0, 2, b'a', b'b']);
    }

    #[test]
    fn debug_hides_the_key() {
        let (alice, bob) = pair();
        let key = message_key(
            &alice,
            &bob.public_key(),
            &alice.public_key(),
            &bob.public_key(),
        )
        .unwrap();
        assert_eq!(format!("{key:?}"), "MessageKey(..)");
    }
}

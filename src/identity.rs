//! Identities: the ed25519 key pair that is a profile's address, and the
//! public keys of contacts.
//!
//! A public key travels as standard base64 (44 characters). It is accepted
//! only if it decodes to 32 bytes that form a valid ed25519 point of large
//! order: anything else could not verify a signature or agree on an
//! encryption key, so it is refused where the user typed it.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// Why a string is not a usable public key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not standard base64 at all.
    #[error(
        "not a public key: it is not standard base64 (expected 44 characters like 'mYk2...=')"
    )]
    NotBase64,
    /// Base64, but of the wrong number of bytes.
    #[error("not a public key: it decodes to {0} bytes, an ed25519 key is 32")]
    WrongLength(usize),
    /// 32 bytes that are not a point on the curve.
    #[error("not a public key: the 32 bytes are not a valid ed25519 point")]
    NotOnCurve,
    /// A point of small order, which would make every signature and shared
    /// secret worthless.
    #[error("not a public key: it is a weak (small-order) ed25519 point")]
    Weak,
}

/// The public half of an identity: a user's address.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parses and validates a key from its base64 text.
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::NotBase64)?;
        let bytes: [u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyError::WrongLength(bytes.len()))?;
        Self::from_bytes(&bytes)
    }

    /// Validates a key from its 32 raw bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Result<Self, KeyError> {
        // Every frame names two keys, and a backlog names the same few keys
        // thousands of times: remember the last keys found valid rather than
        // decompress the same point again (a tenth of a sync's time).
        thread_local! {
            static VALID: std::cell::RefCell<std::collections::HashMap<[u8; 32], VerifyingKey>> =
                std::cell::RefCell::default();
        }
        const REMEMBERED: usize = 1024;
        if let Some(key) = VALID.with(|v| v.borrow().get(bytes).copied()) {
            return Ok(Self(key));
        }
        let key = VerifyingKey::from_bytes(bytes).map_err(|_| KeyError::NotOnCurve)?;
        if key.is_weak() {
            return Err(KeyError::Weak);
        }
        VALID.with(|v| {
            let mut v = v.borrow_mut();
            if v.len() >= REMEMBERED {
                v.clear();
            }
            v.insert(*bytes, key);
        });
        Ok(Self(key))
    }

    /// The key as standard base64, the form users exchange.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0.as_bytes())
    }

    /// The 32 raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        self.0.as_bytes()
    }

    /// The underlying ed25519 verifying key.
    pub fn verifying_key(&self) -> &VerifyingKey {
        &self.0
    }

    /// A short fingerprint meant for comparing aloud: the first 80 bits of
    /// SHA-256 over the key, as five groups of four hex digits.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.0.as_bytes());
        digest[..10]
            .chunks(2)
            .map(|pair| format!("{:02X}{:02X}", pair[0], pair[1]))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::parse(text)
    }
}

impl serde::Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_base64())
    }
}

impl<'de> serde::Deserialize<'de> for PublicKey {
    // Validates while parsing, so a frame holding a key that could never
    // verify or agree on a key is refused as a whole.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

/// A profile's own key pair. The secret half never leaves this type except
/// through [`Identity::secret_bytes`], used to store it.
pub struct Identity {
    signing: SigningKey,
}

impl Identity {
    /// A fresh key pair from the operating system's randomness.
    pub fn generate() -> Self {
        Self {
            signing: SigningKey::generate(&mut rand::rngs::OsRng),
        }
    }

    /// Rebuilds an identity from its stored 32-byte secret seed.
    pub fn from_secret_bytes(secret: &[u8; 32]) -> Self {
        Self {
            signing: SigningKey::from_bytes(secret),
        }
    }

    /// The public key: this identity's address.
    pub fn public_key(&self) -> PublicKey {
        PublicKey(self.signing.verifying_key())
    }

    /// The 32-byte secret seed, for storage only.
    pub fn secret_bytes(&self) -> zeroize::Zeroizing<[u8; 32]> {
        zeroize::Zeroizing::new(self.signing.to_bytes())
    }

    /// The ed25519 signing key, for signing and key agreement.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

impl fmt::Debug for Identity {
    // Deliberately shows only the public half, so a stray `{:?}` in a log
    // can never leak the secret key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("public_key", &self.public_key())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_key_round_trips_through_base64() {
        let id = Identity::generate();
        let text = id.public_key().to_base64();
        assert_eq!(text.len(), 44);
        assert_eq!(PublicKey::parse(&text).unwrap(), id.public_key());
    }

    #[test]
    fn secret_bytes_rebuild_the_same_identity() {
        let id = Identity::generate();
        let again = Identity::from_secret_bytes(&id.secret_bytes());
        assert_eq!(again.public_key(), id.public_key());
    }

    #[test]
    fn refuses_malformed_keys() {
        assert_eq!(PublicKey::parse("not base64!"), Err(KeyError::NotBase64));
        assert_eq!(PublicKey::parse("AAAA"), Err(KeyError::WrongLength(3)));
        assert_eq!(PublicKey::parse(""), Err(KeyError::WrongLength(0)));
        // URL-safe alphabet is not standard base64.
        let url_safe = "-_".repeat(21) + "A=";
        assert_eq!(PublicKey::parse(&url_safe), Err(KeyError::NotBase64));
    }

    #[test]
    fn refuses_bytes_off_the_curve() {
        // y = 2 has no matching x on edwards25519.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        assert_eq!(PublicKey::from_bytes(&bytes), Err(KeyError::NotOnCurve));
    }

    #[test]
    fn refuses_small_order_points() {
        // The identity point (y = 1) has order 1.
        let mut bytes = [0u8; 32];
        bytes[0] = 1;
        assert_eq!(PublicKey::from_bytes(&bytes), Err(KeyError::Weak));
    }

    #[test]
    fn fingerprint_is_five_groups_of_four_hex_digits() {
        let fp = Identity::generate().public_key().fingerprint();
        let groups: Vec<&str> = fp.split(' ').collect();
        assert_eq!(groups.len(), 5);
        assert!(groups
            .iter()
            .all(|g| g.len() == 4 && g.chars().all(|c| c.is_ascii_hexdigit())));
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let id = Identity::generate();
        let secret = STANDARD.encode(*id.secret_bytes());
        let shown = format!("{id:?}");
        assert!(!shown.contains(&secret));
        assert!(shown.contains(&id.public_key().to_base64()));
    }
}

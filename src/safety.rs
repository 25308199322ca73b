//! Safety codes: one code per pair of public keys, for two people to
//! compare aloud or on screens (`chat-p2p verify NAME`).
//!
//! The code is SHA-512 over a fixed label and the two 32-byte keys sorted
//! bytewise, so both sides compute the same code whichever of them runs
//! it. It is shown two ways, each from its own part of the hash:
//!
//! - as 12 words of the BIP-39 English list (2048 words, 11 bits each:
//!   132 bits), taken from the `bip39` crate rather than vendored;
//! - as 8 groups of 5 digits (each group is 5 hash bytes modulo 100000,
//!   as Signal's safety numbers are made: about 132.9 bits).
//!
//! Why so many bits: a router in the middle gives Alice a key M1 for Bob
//! and Bob a key M2 for Alice, and wins if code(A, M1) = code(M2, B). It
//! chooses both M1 and M2, so it only needs a collision between two sets
//! of codes, which takes about 2^(bits/2) tries: 64 bits would fall to
//! 2^32 key generations, an afternoon on a laptop. 132 bits put the
//! attack at about 2^66 tries.

use sha2::{Digest, Sha512};

use crate::identity::PublicKey;

/// Domain separation: these hashes are used for nothing else.
const LABEL: &[u8] = b"chat-p2p safety code v1\0";

/// How many words a code has.
pub const WORDS: usize = 12;
/// Bits each word carries (the list has 2^11 words).
pub const BITS_PER_WORD: usize = 11;
/// How many groups of digits a code has.
pub const DIGIT_GROUPS: usize = 8;
/// Where the digits start in the hash: after the bytes the words use.
const DIGITS_OFFSET: usize = 24;

// Checked when compiling: the words carry at least 128 bits, and the
// digits use hash bytes that the words do not, all within the hash.
const _: () = {
    assert!(WORDS * BITS_PER_WORD >= 128);
    assert!(DIGITS_OFFSET * 8 >= WORDS * BITS_PER_WORD);
    assert!(DIGITS_OFFSET + 5 * DIGIT_GROUPS <= 64);
};

/// The safety code of a pair of keys: the same for (a, b) and (b, a).
#[derive(Clone, PartialEq, Eq)]
pub struct SafetyCode([u8; 64]);

impl SafetyCode {
    /// The code for the conversation between `a` and `b`, in either order.
    pub fn new(a: &PublicKey, b: &PublicKey) -> Self {
        let (lo, hi) = if a.as_bytes() <= b.as_bytes() {
            (a, b)
        } else {
            (b, a)
        };
        let mut hash = Sha512::new();
        hash.update(LABEL);
        hash.update(lo.as_bytes());
        hash.update(hi.as_bytes());
        Self(hash.finalize().into())
    }

    /// The code as [`WORDS`] words of the BIP-39 English list.
    pub fn words(&self) -> Vec<&'static str> {
        let list = bip39::Language::English.word_list();
        (0..WORDS)
            .map(|i| list[self.bits(i * BITS_PER_WORD, BITS_PER_WORD)])
            .collect()
    }

    /// The code as [`DIGIT_GROUPS`] groups of five digits.
    pub fn digits(&self) -> Vec<String> {
        self.0[DIGITS_OFFSET..DIGITS_OFFSET + 5 * DIGIT_GROUPS]
            .chunks(5)
            .map(|chunk| {
                let n = chunk.iter().fold(0u64, |n, &b| (n << 8) | u64::from(b));
                format!("{:05}", n % 100_000)
            })
            .collect()
    }

    /// `len` bits of the hash starting at bit `start` (most significant
    /// first), as a number; `len` is at most 16 here.
    fn bits(&self, start: usize, len: usize) -> usize {
        (start..start + len).fold(0, |n, bit| {
            let set = self.0[bit / 8] >> (7 - bit % 8) & 1;
            (n << 1) | usize::from(set)
        })
    }
}

impl std::fmt::Debug for SafetyCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafetyCode({})", self.words().join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn key(seed: u8) -> PublicKey {
        Identity::from_secret_bytes(&[seed; 32]).public_key()
    }

    #[test]
    fn has_the_documented_shape() {
        let code = SafetyCode::new(&key(1), &key(2));
        let words = code.words();
        assert_eq!(words.len(), WORDS);
        assert!(words
            .iter()
            .all(|w| w.chars().all(|c| c.is_ascii_lowercase())));
        let digits = code.digits();
        assert_eq!(digits.len(), DIGIT_GROUPS);
        assert!(digits
            .iter()
            .all(|g| g.len() == 5 && g.chars().all(|c| c.is_ascii_digit())));
    }

    #[test]
    fn is_stable_across_versions() {
        // A change here breaks every comparison between old and new
        // clients: it must come with a new label.
        let code = SafetyCode::new(&key(1), &key(2));
        let again = SafetyCode::new(&key(2), &key(1));
        assert_eq!(code, again);
        assert_eq!(code.words(), again.words());
        assert_eq!(code.digits(), again.digits());
        // Computed independently (Python's hashlib and the published
        // BIP-39 list) for the keys of seeds [1; 32] and [2; 32].
        assert_eq!(
            code.words().join(" "),
            "often observe model photo human skirt fresh level exotic sudden green clean"
        );
        assert_eq!(
            code.digits().join(" "),
            "97686 59948 09012 41397 48559 16185 69971 62284"
        );
    }

    #[test]
    fn reads_bits_most_significant_first() {
        let mut bytes = [0u8; 64];
        bytes[0] = 0b1000_0000;
        bytes[1] = 0b0010_0000;
        let code = SafetyCode(bytes);
        assert_eq!(code.bits(0, 11), 0b100_0000_0001);
        assert_eq!(code.words()[0], bip39::Language::English.word_list()[1025]);
        assert_eq!(code.words()[1], "abandon");
    }
}

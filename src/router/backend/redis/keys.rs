//! Key and channel names. Every key of one recipient is
//! `<prefix>:{<key hex>}:<part>`: the braces are Redis' hash tag, so all
//! of them live in one slot (one shard of a Redis Cluster), which is what
//! lets one script touch them together.

/// The names of one deployment (one `--redis-prefix`).
#[derive(Debug, Clone)]
pub(super) struct Names {
    prefix: String,
}

/// The keys of one recipient.
#[derive(Debug, Clone)]
pub(super) struct Recipient {
    /// The key as 64 lowercase hex digits.
    pub hex: String,
    /// Hash with the claim counter (`claim`).
    pub n: String,
    /// Hash seq -> stored frame, (sender, id) bytes -> seq (the dedup
    /// index), and `seq` -> the last seq: the fields' lengths differ.
    pub f: String,
    /// Sorted set of waits, one member per (device slot, frame).
    pub w: String,
    /// Hash device -> slot, of live devices.
    pub slots: String,
    /// Hash device -> JSON record (name, first/last seen, removed).
    pub dev: String,
    /// Hash device -> "<router id> <claim>": who holds its live session.
    pub sess: String,
}

impl Names {
    pub(super) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of the recipient `key`.
    pub(super) fn recipient(&self, key: &[u8; 32]) -> Recipient {
        self.recipient_hex(hex(key))
    }

    /// The keys of a recipient given as hex (from the recipients set).
    pub(super) fn recipient_hex(&self, hex: String) -> Recipient {
        let base = format!("{}:{{{hex}}}:", self.prefix);
        let part = |p: &str| format!("{base}{p}");
        Recipient {
            n: part("n"),
            f: part("f"),
            w: part("w"),
            slots: part("slots"),
            dev: part("dev"),
            sess: part("sess"),
            hex,
        }
    }

    /// The set of every recipient with frames or devices (for retention).
    pub(super) fn recipients(&self) -> String {
        format!("{}:recipients", self.prefix)
    }

    /// The deployment's frame counter (an estimate: see the module docs).
    pub(super) fn depth(&self) -> String {
        format!("{}:depth", self.prefix)
    }

    /// What a router's channel name starts with; the router id follows.
    pub(super) fn channel_prefix(&self) -> String {
        format!("{}:router:", self.prefix)
    }

    /// The pub/sub channel of the router `id`.
    pub(super) fn channel(&self, id: &str) -> String {
        format!("{}{id}", self.channel_prefix())
    }
}

/// Lowercase hex of `bytes`.
pub(super) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// The 32 bytes of a key written as 64 hex digits, or `None`.
pub(super) fn unhex32(text: &str) -> Option<[u8; 32]> {
    let text = text.as_bytes();
    if text.len() != 64 {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).and_then(|d| u8::try_from(d).ok());
    let mut out = [0u8; 32];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = digit(pair[0])? << 4 | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_of_a_recipient_shares_its_hash_tag() {
        let names = Names::new("dep");
        let r = names.recipient(&[0xab; 32]);
        let tag = format!("dep:{{{}}}:", "ab".repeat(32));
        for k in [&r.n, &r.f, &r.w, &r.slots, &r.dev, &r.sess] {
            assert!(k.starts_with(&tag), "{k}");
        }
        assert_eq!(names.channel("x"), "dep:router:x");
    }

    #[test]
    fn hex_round_trips() {
        let bytes: [u8; 32] = std::array::from_fn(|i| (i * 37) as u8);
        assert_eq!(unhex32(&hex(&bytes)), Some(bytes));
        assert_eq!(unhex32("zz"), None);
        assert_eq!(unhex32(&"g".repeat(64)), None);
    }
}

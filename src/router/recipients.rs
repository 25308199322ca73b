//! Whom a router queues frames for (`--recipients`, `--recipients-file`).
//!
//! By default a router queues for any key: that is what lets a stranger
//! reach someone whose home it is. An operator may restrict it to the keys
//! it serves: keys with a device registered here (they signed in at least
//! once, and were not removed or forgotten by retention since), keys listed
//! in a file, or both. A frame for any other key is refused with
//! `recipient-not-served`, which senders treat as final.
//!
//! The check runs on every frame, so it must not cost a queue round trip
//! each time: [`Gate`] remembers which keys are known (every key that signs
//! in here is noted at once) for [`KNOWN_FOR`], and which are not for the
//! much shorter [`UNKNOWN_FOR`] (so a key that signs in at another router
//! sharing the queue is served here soon after). The list is in memory and
//! [`AllowList::reload`] swaps it whole (on SIGHUP).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::address::Address;
use crate::identity::PublicKey;

/// How long a key found known stays known without asking the queue again.
pub const KNOWN_FOR: Duration = Duration::from_secs(600);

/// How long a key found unknown stays unknown without asking again.
pub const UNKNOWN_FOR: Duration = Duration::from_secs(5);

/// Most answers remembered; past that the expired ones go, and if that is
/// not enough, all of them (they are asked again as needed).
const CACHE_MAX: usize = 100_000;

/// Most bad lines a [`ListError::BadLines`] quotes.
const QUOTED_MAX: usize = 20;

/// Whom a router queues frames for. The default (nothing set) is anyone.
#[derive(Debug, Clone, Default)]
pub struct Recipients {
    /// Keys with a live device here (see [`super::backend::Backend::knows`]).
    pub known: bool,
    /// Keys listed in a file.
    pub list: Option<Arc<AllowList>>,
}

impl Recipients {
    /// Whether every recipient is served (no restriction).
    pub fn is_any(&self) -> bool {
        !self.known && self.list.is_none()
    }

    /// Who is served, for the refusal's message and the start-up log.
    pub fn describe(&self) -> &'static str {
        match (self.known, self.list.is_some()) {
            (false, false) => "any key",
            (true, false) => "the keys that have signed in at it",
            (false, true) => "the keys its operator lists",
            (true, true) => "the keys that have signed in at it or that its operator lists",
        }
    }
}

/// The keys of a `--recipients-file`, re-read with [`AllowList::reload`].
#[derive(Debug)]
pub struct AllowList {
    path: PathBuf,
    keys: RwLock<Arc<HashSet<[u8; 32]>>>,
}

impl AllowList {
    /// Reads the file at `path`; every bad line is an error.
    pub fn load(path: &Path) -> Result<Self, ListError> {
        let keys = read_list(path)?;
        Ok(Self {
            path: path.to_path_buf(),
            keys: RwLock::new(Arc::new(keys)),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again and, when it is good, serves its keys from now
    /// on; when not, keeps the keys it had. Returns how many it lists.
    pub fn reload(&self) -> Result<usize, ListError> {
        let keys = read_list(&self.path)?;
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(n)
    }

    /// Whether `key` is listed.
    pub fn contains(&self, key: &[u8; 32]) -> bool {
        self.keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(key)
    }

    /// How many keys are listed.
    pub fn len(&self) -> usize {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One line of a recipients file that is not a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// Its number, from 1.
    pub line: usize,
    /// What is wrong with it.
    pub why: String,
}

impl fmt::Display for BadLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.why)
    }
}

/// Why a recipients file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ListError {
    /// It could not be read.
    #[error("cannot read the recipients file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Some of its lines are not keys.
    #[error("{}", bad_lines_text(path, lines, *total))]
    BadLines {
        /// The file.
        path: PathBuf,
        /// The first bad lines (at most 20).
        lines: Vec<BadLine>,
        /// How many lines are bad.
        total: usize,
    },
}

fn bad_lines_text(path: &Path, lines: &[BadLine], total: usize) -> String {
    let mut text = format!(
        "the recipients file {} has {total} bad line{}; write one public key per line (as \
         `chat-p2p whoami --key` prints it, or a whole address), `#` starts a comment:",
        path.display(),
        if total == 1 { "" } else { "s" }
    );
    for line in lines {
        text.push_str(&format!("\n  {line}"));
    }
    if total > lines.len() {
        text.push_str(&format!("\n  ... and {} more", total - lines.len()));
    }
    text
}

fn read_list(path: &Path) -> Result<HashSet<[u8; 32]>, ListError> {
    let bytes = std::fs::read(path).map_err(|source| ListError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    parse_list(&bytes).map_err(|bad| ListError::BadLines {
        path: path.to_path_buf(),
        total: bad.len(),
        lines: bad.into_iter().take(QUOTED_MAX).collect(),
    })
}

/// The keys of a recipients file: one key (or address) per line; blank
/// lines and everything from a `#` on are ignored. Every bad line, with
/// its number, when there is one.
pub fn parse_list(bytes: &[u8]) -> Result<HashSet<[u8; 32]>, Vec<BadLine>> {
    let mut keys = HashSet::new();
    let mut bad = Vec::new();
    for (i, raw) in bytes.split(|b| *b == b'\n').enumerate() {
        let line = i + 1;
        let Ok(text) = std::str::from_utf8(raw) else {
            bad.push(BadLine {
                line,
                why: "not UTF-8 text".to_owned(),
            });
            continue;
        };
        let text = text.split('#').next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        match Address::parse(text) {
            Ok(address) => {
                keys.insert(*address.key.as_bytes());
            }
            Err(e) => bad.push(BadLine {
                line,
                why: format!("'{}' is not a key: {e}", shown(text)),
            }),
        }
    }
    if bad.is_empty() {
        Ok(keys)
    } else {
        Err(bad)
    }
}

/// A bad line as quoted: safe for a terminal, and not too long.
fn shown(text: &str) -> String {
    const LONGEST: usize = 60;
    let cut: String = text.chars().take(LONGEST).collect();
    let cut = if cut.len() < text.len() {
        format!("{cut}...")
    } else {
        cut
    };
    crate::render::untrusted_inline(&cut)
}

/// What [`Gate::decide`] says about a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Queue it.
    Allow,
    /// Refuse it (`recipient-not-served`).
    Refuse,
    /// Ask the queue whether the recipient is known
    /// ([`super::backend::Backend::knows`]), then [`Gate::learn`].
    Ask,
}

/// The policy, with what it remembers of known and unknown keys.
#[derive(Debug, Default)]
pub struct Gate {
    policy: Recipients,
    cache: Mutex<HashMap<[u8; 32], Remembered>>,
}

/// A remembered answer and until when it holds.
#[derive(Debug, Clone, Copy)]
struct Remembered {
    known: bool,
    until: Instant,
}

impl Gate {
    /// A gate applying `policy`.
    pub fn new(policy: Recipients) -> Self {
        Self {
            policy,
            cache: Mutex::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Recipients {
        &self.policy
    }

    /// Whether a frame from `sender` to `recipient` may be queued.
    pub fn decide(&self, sender: &PublicKey, recipient: &[u8; 32]) -> Decision {
        self.decide_at(sender, recipient, Instant::now())
    }

    fn decide_at(&self, sender: &PublicKey, recipient: &[u8; 32], now: Instant) -> Decision {
        if self.policy.is_any() {
            return Decision::Allow;
        }
        if let Some(list) = &self.policy.list {
            if list.contains(recipient) {
                return Decision::Allow;
            }
        }
        if !self.policy.known {
            return Decision::Refuse;
        }
        // The sender is signed in here now, as that key: its own devices
        // (or the first of them, for a control session) are served.
        if sender.as_bytes() == recipient {
            return Decision::Allow;
        }
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        match cache.get(recipient) {
            Some(r) if r.until > now && r.known => Decision::Allow,
            Some(r) if r.until > now => Decision::Refuse,
            _ => Decision::Ask,
        }
    }

    /// `key` signed in here: it is known.
    pub fn signed_in(&self, key: &PublicKey) {
        if self.policy.known {
            self.learn(key.as_bytes(), true);
        }
    }

    /// Remembers the queue's answer about `key`.
    pub fn learn(&self, key: &[u8; 32], known: bool) {
        self.learn_at(key, known, Instant::now());
    }

    fn learn_at(&self, key: &[u8; 32], known: bool, now: Instant) {
        let until = now + if known { KNOWN_FOR } else { UNKNOWN_FOR };
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= CACHE_MAX && !cache.contains_key(key) {
            cache.retain(|_, r| r.until > now);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(*key, Remembered { known, until });
    }

    /// The refusal's message: which router refuses, and whom it serves.
    pub fn refusal(&self, router: &str) -> String {
        format!(
            "the router at {router} does not accept messages for this recipient: it queues only \
             for {}; deliver to the recipient's own home router",
            self.policy.describe()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    #[test]
    fn a_list_holds_keys_and_addresses_and_skips_comments_and_blanks() {
        let (a, b, c) = (key(), key(), key());
        let text = format!(
            "# the router's users\n\n{}\n  {}  # bob, indented\r\nchat-p2p:{}@wss://chat.example.org\n#{}\n",
            a.to_base64(),
            b.to_base64(),
            c.to_base64(),
            key().to_base64()
        );
        let keys = parse_list(text.as_bytes()).unwrap();
        let want: HashSet<[u8; 32]> = [a, b, c].iter().map(|k| *k.as_bytes()).collect();
        assert_eq!(keys, want);
        assert!(parse_list(b"").unwrap().is_empty());
        assert!(parse_list(b"# nobody\n\n").unwrap().is_empty());
    }

    #[test]
    fn every_bad_line_is_reported_with_its_number() {
        let good = key().to_base64();
        let short = &good[..20];
        let text = format!("{good}\nnot a key\n\n{short}\n{good}@http://x.example\n{good}\n");
        let mut bytes = text.into_bytes();
        bytes.extend_from_slice(b"\xff\xfe\n");
        let bad = parse_list(&bytes).unwrap_err();
        let lines: Vec<usize> = bad.iter().map(|b| b.line).collect();
        assert_eq!(lines, [2, 4, 5, 7]);
        assert!(bad[0].why.contains("'not a key'"), "{}", bad[0]);
        assert!(bad[1].why.contains(short), "{}", bad[1]);
        assert_eq!(bad[3].why, "not UTF-8 text");
        assert_eq!(bad[0].to_string(), format!("line 2: {}", bad[0].why));
    }

    #[test]
    fn quoted_lines_are_cut_and_safe_for_a_terminal() {
        let bad = parse_list("x\u{1b}[31m\n".as_bytes()).unwrap_err();
        assert!(!bad[0].why.contains('\u{1b}'), "{}", bad[0]);
        let bad = parse_list("y".repeat(500).as_bytes()).unwrap_err();
        assert!(bad[0].why.len() < 300, "{}", bad[0]);
        assert!(bad[0].why.contains("..."), "{}", bad[0]);
    }

    #[test]
    fn a_file_error_names_the_file_and_its_first_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        let text: String = (0..25).map(|i| format!("bad{i}\n")).collect();
        std::fs::write(&path, text).unwrap();
        let e = AllowList::load(&path).unwrap_err().to_string();
        assert!(e.contains(&path.display().to_string()), "{e}");
        assert!(e.contains("25 bad lines"), "{e}");
        assert!(e.contains("line 1: 'bad0'"), "{e}");
        assert!(e.contains("line 20: 'bad19'"), "{e}");
        assert!(!e.contains("line 21:"), "{e}");
        assert!(e.contains("... and 5 more"), "{e}");
        let e = AllowList::load(&dir.path().join("missing")).unwrap_err();
        assert!(matches!(e, ListError::Read { .. }), "{e}");
    }

    #[test]
    fn a_reload_takes_a_good_file_and_keeps_the_list_over_a_bad_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("allowed");
        let (a, b) = (key(), key());
        std::fs::write(&path, format!("{}\n", a.to_base64())).unwrap();
        let list = AllowList::load(&path).unwrap();
        assert!(list.contains(a.as_bytes()) && !list.contains(b.as_bytes()));
        std::fs::write(&path, format!("{}\n{}\n", a.to_base64(), b.to_base64())).unwrap();
        assert_eq!(list.reload().unwrap(), 2);
        assert!(list.contains(b.as_bytes()));
        std::fs::write(&path, "oops\n").unwrap();
        assert!(list.reload().is_err());
        assert_eq!(list.len(), 2, "the good list stays");
        std::fs::remove_file(&path).unwrap();
        assert!(list.reload().is_err());
        assert!(list.contains(a.as_bytes()));
    }

    fn gate(known: bool, listed: &[&PublicKey]) -> (Gate, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let list = if listed.is_empty() {
            None
        } else {
            let path = dir.path().join("allowed");
            let text: String = listed.iter().map(|k| k.to_base64() + "\n").collect();
            std::fs::write(&path, text).unwrap();
            Some(Arc::new(AllowList::load(&path).unwrap()))
        };
        (Gate::new(Recipients { known, list }), dir)
    }

    #[test]
    fn by_default_anyone_is_served() {
        let gate = Gate::default();
        assert!(gate.policy().is_any());
        assert_eq!(gate.decide(&key(), key().as_bytes()), Decision::Allow);
        assert_eq!(gate.decide(&key(), &[0; 32]), Decision::Allow);
    }

    #[test]
    fn a_list_alone_serves_only_the_listed_keys_even_to_themselves() {
        let (alice, bob) = (key(), key());
        let (gate, _dir) = gate(false, &[&bob]);
        assert_eq!(gate.decide(&alice, bob.as_bytes()), Decision::Allow);
        assert_eq!(gate.decide(&bob, alice.as_bytes()), Decision::Refuse);
        assert_eq!(gate.decide(&alice, alice.as_bytes()), Decision::Refuse);
        gate.signed_in(&alice);
        assert_eq!(gate.decide(&bob, alice.as_bytes()), Decision::Refuse);
        assert!(gate
            .refusal("ws://r/ws")
            .contains("the keys its operator lists"));
    }

    #[test]
    fn known_keys_are_asked_for_once_and_remembered() {
        let (alice, bob, carol) = (key(), key(), key());
        let (gate, _dir) = gate(true, &[]);
        let now = Instant::now();
        assert_eq!(gate.decide_at(&alice, bob.as_bytes(), now), Decision::Ask);
        assert_eq!(
            gate.decide_at(&alice, alice.as_bytes(), now),
            Decision::Allow,
            "one's own key"
        );
        gate.learn_at(bob.as_bytes(), false, now);
        assert_eq!(
            gate.decide_at(&alice, bob.as_bytes(), now),
            Decision::Refuse
        );
        let later = now + UNKNOWN_FOR + Duration::from_millis(1);
        assert_eq!(
            gate.decide_at(&alice, bob.as_bytes(), later),
            Decision::Ask,
            "an unknown key is asked for again soon"
        );
        gate.learn_at(carol.as_bytes(), true, now);
        assert_eq!(
            gate.decide_at(&alice, carol.as_bytes(), later),
            Decision::Allow
        );
        let much_later = now + KNOWN_FOR + Duration::from_millis(1);
        assert_eq!(
            gate.decide_at(&alice, carol.as_bytes(), much_later),
            Decision::Ask
        );
        // Signing in makes a key known at once, over a remembered "no".
        gate.learn(bob.as_bytes(), false);
        gate.signed_in(&bob);
        assert_eq!(gate.decide(&alice, bob.as_bytes()), Decision::Allow);
    }

    #[test]
    fn known_or_listed_serves_both() {
        let (alice, bob, carol) = (key(), key(), key());
        let (gate, _dir) = gate(true, &[&bob]);
        assert_eq!(gate.decide(&alice, bob.as_bytes()), Decision::Allow);
        assert_eq!(gate.decide(&alice, carol.as_bytes()), Decision::Ask);
        assert!(gate
            .refusal("ws://r/ws")
            .starts_with("the router at ws://r/ws does not accept messages for this recipient"));
    }

    #[test]
    fn the_cache_stays_bounded() {
        let (gate, _dir) = gate(true, &[]);
        let now = Instant::now();
        for i in 0..CACHE_MAX + 10 {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&(i as u64).to_le_bytes());
            gate.learn_at(&k, false, now);
        }
        let len = gate.cache.lock().unwrap().len();
        assert!(len <= CACHE_MAX, "{len}");
    }
}

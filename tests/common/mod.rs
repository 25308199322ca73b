//! Helpers shared by the integration tests: a temporary CHAT_HOME, the real
//! binary with a cleared environment, and export files written the way a
//! user would get them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use chat_p2p::identity::Identity;
use serde_json::{json, Value};

/// A temporary home for profiles.
pub struct Env {
    pub dir: tempfile::TempDir,
}

impl Env {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The binary for `profile`, with nothing from the caller's environment.
    pub fn cmd(&self, profile: &str) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_chat-p2p"));
        cmd.env_clear()
            .env("CHAT_HOME", self.home())
            .env("CHAT_PROFILE", profile)
            // Never the user's own config.toml.
            .env("CHAT_CONFIG", self.config());
        cmd
    }

    /// This test's config.toml (absent until written).
    pub fn config(&self) -> PathBuf {
        self.dir.path().join("config.toml")
    }

    /// Runs `init` for `profile` and returns its public key.
    pub fn init(&self, profile: &str) -> String {
        self.ok(profile, &["init"]);
        self.key(profile)
    }

    /// Alice and Bob, each the other's contact: their public keys.
    pub fn friends(&self) -> (String, String) {
        let alice = self.init("alice");
        let bob = self.init("bob");
        self.ok("alice", &["add-contact", "bob", &bob]);
        self.ok("bob", &["add-contact", "alice", &alice]);
        (alice, bob)
    }

    /// Makes `to` a second device of `from`'s identity as a user who
    /// copied the profile file would, then gives the copy its own device
    /// id and the name `to` (what `link` does for real).
    pub fn second_device(&self, from: &str, to: &str) {
        std::fs::create_dir_all(self.home().join(to)).unwrap();
        std::fs::copy(self.db(from), self.db(to)).unwrap();
        let conn = rusqlite::Connection::open(self.db(to)).unwrap();
        conn.execute("UPDATE device SET id = randomblob(16), name = ?1", [to])
            .unwrap();
    }

    /// The public key of `profile`, from `whoami --key`.
    pub fn key(&self, profile: &str) -> String {
        self.ok(profile, &["whoami", "--key"]).trim().to_owned()
    }

    /// Runs and returns stdout, asserting success.
    pub fn ok(&self, profile: &str, args: &[&str]) -> String {
        let out = self.cmd(profile).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and returns stderr, asserting exit code `code`.
    pub fn fails(&self, profile: &str, args: &[&str], code: i32) -> String {
        let out = self.cmd(profile).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: stdout {} stderr {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stderr).unwrap()
    }

    pub fn json(&self, profile: &str, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(profile, args)).unwrap()
    }

    pub fn db(&self, profile: &str) -> PathBuf {
        self.home().join(profile).join("chat.db")
    }

    /// Every row of `table`, as text, to compare database states.
    pub fn dump(&self, profile: &str) -> Vec<String> {
        let conn = rusqlite::Connection::open(self.db(profile)).unwrap();
        let mut rows = Vec::new();
        for table in ["identity", "contacts", "messages", "message_events"] {
            let mut stmt = conn
                .prepare(&format!("SELECT * FROM {table} ORDER BY 1, 2"))
                .unwrap();
            let n = stmt.column_count();
            let mut q = stmt.query([]).unwrap();
            while let Some(r) = q.next().unwrap() {
                let cells: Vec<String> = (0..n)
                    .map(|i| format!("{:?}", r.get::<_, rusqlite::types::Value>(i).unwrap()))
                    .collect();
                rows.push(format!("{table}: {}", cells.join("|")));
            }
        }
        rows
    }
}

/// A fresh public key.
pub fn key() -> String {
    Identity::generate().public_key().to_base64()
}

/// An incoming message record.
pub fn incoming(id: &str, peer: &str, body: &str, at: &str) -> Value {
    json!({"kind": "message", "msg_id": id, "peer_key": peer, "direction": "in",
        "body": body, "status": "received", "created_at": at, "received_at": at})
}

/// An outgoing message record with the given status and its time fields.
pub fn outgoing(id: &str, peer: &str, body: &str, at: &str, status: &str) -> Value {
    let mut m = json!({"kind": "message", "msg_id": id, "peer_key": peer,
        "direction": "out", "body": body, "status": status, "created_at": at});
    let field = match status {
        "sent" => Some("sent_at"),
        "delivered" => Some("delivered_at"),
        "read" => Some("read_at"),
        "failed" => Some("failed_at"),
        _ => None,
    };
    if let Some(field) = field {
        m[field] = json!(at);
    }
    m
}

/// A header line.
pub fn header(public_key: Option<&str>) -> Value {
    json!({"kind": "header", "format": "chat-p2p-export", "version": 1,
        "public_key": public_key})
}

/// A contact line.
pub fn contact(name: &str, key: &str) -> Value {
    json!({"kind": "contact", "name": name, "public_key": key,
        "added_at": "2026-01-01T00:00:00.000Z"})
}

/// Writes records as JSON Lines.
pub fn write_jsonl(path: &Path, records: &[Value]) {
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(path, text).unwrap();
}

/// A deterministic message id for test number `n`.
pub fn id(n: u32) -> String {
    format!("00000000-0000-7000-8000-{n:012}")
}

/// A path as a command-line argument.
pub fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A file, readable by its owner alone, whose first line is `passphrase`.
pub fn pass_file(env: &Env, name: &str, passphrase: &str) -> PathBuf {
    let path = env.path(name);
    std::fs::write(&path, format!("{passphrase}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

/// `profile`'s command with the tests' tiny KDF costs (argon2, scrypt):
/// honoured by debug builds only.
pub fn weak_kdf_cmd(env: &Env, profile: &str) -> Command {
    let mut cmd = env.cmd(profile);
    cmd.env("CHAT_TEST_WEAK_KDF", "1");
    cmd
}

// The router and raw WebSocket clients, for tests that need the network.
mod net;
#[allow(unused_imports)]
pub use net::*;

//! A passphrase on the secret key (issue 14 item 2): set, change and
//! remove it; commands that sign ask for it (here: read it from
//! CHAT_PASSPHRASE_FILE), the others never do; the key is not left in the
//! file in clear, and sqlite3 still reads the history.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use common::*;

/// Sets `passphrase` on `profile`.
fn set(env: &Env, profile: &str, passphrase: &str) {
    let file = pass_file(env, "new-pass", passphrase);
    weak_kdf_cmd(env, profile)
        .args(["passphrase", "set"])
        .env("CHAT_NEW_PASSPHRASE_FILE", &file)
        .assert()
        .success();
}

/// The 32-byte secret seed of `profile`, from a plain export (and the
/// passphrase file, if it has one).
fn secret(env: &Env, profile: &str, pass: Option<&Path>) -> Vec<u8> {
    let mut c = weak_kdf_cmd(env, profile);
    c.args(["export", "--include-secret", "--plaintext-secret"]);
    if let Some(pass) = pass {
        c.env("CHAT_PASSPHRASE_FILE", pass);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    STANDARD
        .decode(doc["secret_key"].as_str().expect("a secret key"))
        .unwrap()
}

fn column_is_null(env: &Env, profile: &str, column: &str) -> bool {
    let conn = rusqlite::Connection::open(env.db(profile)).unwrap();
    conn.query_row(&format!("SELECT {column} IS NULL FROM identity"), [], |r| {
        r.get(0)
    })
    .unwrap()
}

#[test]
fn passphrase_set_change_and_remove() {
    let env = Env::new();
    env.init("me");
    let original = secret(&env, "me", None);

    set(&env, "me", "first passphrase");
    assert!(column_is_null(&env, "me", "secret_key"));
    assert!(!column_is_null(&env, "me", "secret_wrapped"));
    let first = pass_file(&env, "first", "first passphrase");
    assert_eq!(secret(&env, "me", Some(&first)), original);
    // Setting it twice is refused: change is the command for that.
    let out = weak_kdf_cmd(&env, "me")
        .args(["passphrase", "set"])
        .env("CHAT_NEW_PASSPHRASE_FILE", &first)
        .assert()
        .code(1);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("passphrase change"));

    let second = pass_file(&env, "second", "second passphrase");
    weak_kdf_cmd(&env, "me")
        .args(["passphrase", "change"])
        .env("CHAT_PASSPHRASE_FILE", &first)
        .env("CHAT_NEW_PASSPHRASE_FILE", &second)
        .assert()
        .success();
    assert_eq!(secret(&env, "me", Some(&second)), original);
    weak_kdf_cmd(&env, "me")
        .args(["export", "--include-secret", "--plaintext-secret"])
        .env("CHAT_PASSPHRASE_FILE", &first)
        .assert()
        .code(1);

    weak_kdf_cmd(&env, "me")
        .args(["passphrase", "remove"])
        .env("CHAT_PASSPHRASE_FILE", &second)
        .assert()
        .success();
    assert!(!column_is_null(&env, "me", "secret_key"));
    assert!(column_is_null(&env, "me", "secret_wrapped"));
    assert_eq!(secret(&env, "me", None), original);
    let err = env.fails("me", &["passphrase", "remove"], 1);
    assert!(err.contains("has no passphrase"), "{err}");
}

#[test]
fn a_wrong_passphrase_is_a_clear_error_and_changes_nothing() {
    let env = Env::new();
    env.init("me");
    set(&env, "me", "right");
    let before = env.dump("me");
    let wrong = pass_file(&env, "wrong", "wrong");
    for args in [
        &["export", "--include-secret", "--plaintext-secret"][..],
        &["passphrase", "change"],
        &["passphrase", "remove"],
        &["send", "--server", "ws://127.0.0.1:9/ws", &key(), "hello"],
    ] {
        let out = weak_kdf_cmd(&env, "me")
            .args(args)
            .env("CHAT_PASSPHRASE_FILE", &wrong)
            .env("CHAT_NEW_PASSPHRASE_FILE", &wrong)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("wrong passphrase"), "{args:?}: {err}");
    }
    assert_eq!(env.dump("me"), before);
}

#[test]
fn without_a_terminal_or_passphrase_file_the_error_says_what_to_set() {
    let env = Env::new();
    env.init("me");
    set(&env, "me", "right");
    let err = env.fails(
        "me",
        &["export", "--include-secret", "--plaintext-secret"],
        1,
    );
    assert!(err.contains("CHAT_PASSPHRASE_FILE"), "{err}");
    assert!(err.contains("protected by a passphrase"), "{err}");
    let err = env.fails("me", &["passphrase", "set"], 1);
    assert!(err.contains("already has a passphrase"), "{err}");
}

#[test]
fn commands_that_do_not_sign_never_ask() {
    let env = Env::new();
    let key = env.init("me");
    set(&env, "me", "right");
    // No CHAT_PASSPHRASE_FILE and no terminal: asking would fail.
    assert_eq!(env.key("me"), key);
    env.ok("me", &["whoami"]);
    env.ok("me", &["add-contact", "bob", &common::key()]);
    env.ok("me", &["rename-contact", "bob", "robert"]);
    env.ok("me", &["contacts"]);
    env.ok("me", &["history", "robert"]);
    let doc: serde_json::Value = serde_json::from_str(&env.ok("me", &["export"])).unwrap();
    assert_eq!(doc["public_key"], key.as_str());
    assert!(doc.get("secret_key").is_none());
    env.ok("me", &["remove-contact", "robert"]);
}

#[test]
fn the_wrapped_key_is_not_in_the_file_in_clear() {
    let env = Env::new();
    env.init("me");
    let secret = secret(&env, "me", None);
    let b64 = STANDARD.encode(&secret);
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    let files = || {
        let db = env.db("me");
        ["", "-wal", "-shm"]
            .iter()
            .map(|s| {
                let mut path = db.clone().into_os_string();
                path.push(s);
                fs::read(PathBuf::from(path)).unwrap_or_default()
            })
            .collect::<Vec<_>>()
    };
    // The search finds the key while it is stored in clear...
    assert!(files().iter().any(|bytes| contains(bytes, &secret)));

    set(&env, "me", "right");
    // ...and not once it is sealed: not in the database, its WAL or its
    // shared memory, neither raw nor as base64.
    for bytes in files() {
        assert!(!contains(&bytes, &secret));
        assert!(!contains(&bytes, b64.as_bytes()));
    }
}

#[test]
fn sqlite3_reads_the_history_of_a_protected_profile() {
    let env = Env::new();
    env.init("me");
    let bob = common::key();
    let file = env.path("seed.jsonl");
    write_jsonl(
        &file,
        &[
            header(None),
            contact("bob", &bob),
            incoming(
                &id(1),
                &bob,
                "readable with sqlite3",
                "2026-01-01T10:00:00.000Z",
            ),
        ],
    );
    env.ok("me", &["import", p(&file)]);
    set(&env, "me", "right");
    let out = std::process::Command::new("sqlite3")
        .arg(env.db("me"))
        .arg("SELECT c.name, m.body FROM messages m JOIN contacts c ON c.public_key = m.peer_key;")
        .output()
        .expect("run sqlite3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "bob|readable with sqlite3"
    );
}

#[test]
fn send_and_sync_read_the_passphrase_file() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let url = router.url();
    env.friends();
    set(&env, "alice", "alice's passphrase");
    set(&env, "bob", "bob's passphrase");
    let alice_pass = pass_file(&env, "alice-pass", "alice's passphrase");
    let bob_pass = pass_file(&env, "bob-pass", "bob's passphrase");

    // Without the file there is nobody to ask: nothing is sent.
    let out = weak_kdf_cmd(&env, "alice")
        .args(["send", "--server", &url, "bob", "not sent"])
        .assert()
        .code(1);
    assert!(String::from_utf8_lossy(&out.get_output().stderr).contains("CHAT_PASSPHRASE_FILE"));

    weak_kdf_cmd(&env, "alice")
        .args(["send", "--server", &url, "bob", "sealed and signed"])
        .env("CHAT_PASSPHRASE_FILE", &alice_pass)
        .assert()
        .success();
    weak_kdf_cmd(&env, "bob")
        .args(["sync", "--server", &url])
        .env("CHAT_PASSPHRASE_FILE", &bob_pass)
        .assert()
        .success();
    let history = env.ok("bob", &["history", "alice"]);
    assert!(history.contains("sealed and signed"), "{history}");
    assert!(!history.contains("not sent"), "{history}");
    router.kill();
}

#[test]
fn a_new_key_replacing_a_protected_one_is_stored_unprotected_with_a_warning() {
    let env = Env::new();
    let old = env.init("me");
    set(&env, "me", "right");
    // The backup `init --force` keeps would hold the key in clear: refused,
    // nothing replaced, and the way to an encrypted backup is named.
    let out = weak_kdf_cmd(&env, "me")
        .args(["init", "--force", "--yes"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--encrypt") && err.contains("--no-backup"),
        "{err}"
    );
    assert_eq!(env.key("me"), old);
    // Told that no backup is wanted, it replaces the key.
    let out = weak_kdf_cmd(&env, "me")
        .args(["init", "--force", "--yes", "--no-backup"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WITHOUT a passphrase"), "{err}");
    assert!(err.contains("passphrase set"), "{err}");
    assert_ne!(env.key("me"), old);
    assert!(!column_is_null(&env, "me", "secret_key"));
    assert!(column_is_null(&env, "me", "secret_wrapped"));
}

#[cfg(unix)]
#[test]
fn a_passphrase_file_others_can_read_is_warned_about() {
    use std::os::unix::fs::PermissionsExt as _;
    let env = Env::new();
    env.init("me");
    set(&env, "me", "right");
    let file = pass_file(&env, "pass", "right");
    let export = ["export", "--include-secret", "--plaintext-secret"];
    let out = weak_kdf_cmd(&env, "me")
        .args(export)
        .env("CHAT_PASSPHRASE_FILE", &file)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("other users"));
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    let out = weak_kdf_cmd(&env, "me")
        .args(export)
        .env("CHAT_PASSPHRASE_FILE", &file)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("can be read by other users"), "{err}");
}

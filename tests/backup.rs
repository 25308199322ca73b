//! Encrypted backups (issue 14 item 3): `export --encrypt` writes an age
//! file that `import` opens with its passphrase; a wrong passphrase, a
//! changed byte or a cut file imports nothing; the secret key in clear
//! needs --plaintext-secret.

mod common;

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;

use common::*;

const EXPORT_PASS: &str = "CHAT_EXPORT_PASSPHRASE_FILE";

/// A profile "me" with `n` messages from bob (enough for several 64 KiB
/// chunks of age when `n` is in the hundreds).
fn with_messages(env: &Env, n: u32) -> String {
    env.ok("me", &["init"]);
    let bob = key();
    let mut records = vec![header(None), contact("bob", &bob)];
    for i in 1..=n {
        let at = format!("2026-01-01T10:{:02}:{:02}.000Z", (i / 60) % 60, i % 60);
        let body = format!("message {i} that should stay private {}", "x".repeat(200));
        records.push(incoming(&id(i), &bob, &body, &at));
    }
    let file = env.path("seed.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", p(&file)]);
    bob
}

/// Writes an encrypted export of "me" with its secret key to `file`.
fn encrypted_export(env: &Env, file: &Path, passphrase: &str) {
    let pass = pass_file(env, "export-pass", passphrase);
    weak_kdf_cmd(env, "me")
        .args(["export", "--encrypt", "--include-secret", "-o", p(file)])
        .env(EXPORT_PASS, &pass)
        .assert()
        .success();
}

fn import(env: &Env, profile: &str, file: &Path, passphrase: &str) -> std::process::Output {
    let pass = pass_file(env, "import-pass", passphrase);
    weak_kdf_cmd(env, profile)
        .args(["import", p(file)])
        .env(EXPORT_PASS, &pass)
        .output()
        .unwrap()
}

#[test]
fn an_encrypted_export_round_trips_with_its_passphrase() {
    let env = Env::new();
    with_messages(&env, 3);
    let me = env.key("me");
    let file = env.path("backup.age");
    encrypted_export(&env, &file, "backup passphrase");
    let bytes = fs::read(&file).unwrap();
    assert!(bytes.starts_with(b"age-encryption.org/v1\n"));
    let text = String::from_utf8_lossy(&bytes);
    assert!(!text.contains("should stay private"));
    assert!(!text.contains(&me));

    let out = import(&env, "restored", &file, "backup passphrase");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.key("restored"), me);
    let history = env.ok("restored", &["history", "bob"]);
    assert!(
        history.contains("message 3 that should stay private"),
        "{history}"
    );
    // The restored key is the original: it can export itself again.
    let a: serde_json::Value =
        serde_json::from_str(&env.ok("me", &["export", "--include-secret", "--plaintext-secret"]))
            .unwrap();
    let b: serde_json::Value = serde_json::from_str(&env.ok(
        "restored",
        &["export", "--include-secret", "--plaintext-secret"],
    ))
    .unwrap();
    assert_eq!(a["secret_key"], b["secret_key"]);
}

#[test]
fn an_encrypted_export_streams_through_standard_output_and_input() {
    let env = Env::new();
    with_messages(&env, 2);
    let pass = pass_file(&env, "pass", "stream passphrase");
    let out = weak_kdf_cmd(&env, "me")
        .args(["export", "--encrypt", "-o", "-"])
        .env(EXPORT_PASS, &pass)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.starts_with(b"age-encryption.org/v1\n"));
    env.ok("other", &["init"]);
    weak_kdf_cmd(&env, "other")
        .args(["import", "--other-identity", "-"])
        .env(EXPORT_PASS, &pass)
        .write_stdin(out.stdout)
        .assert()
        .success();
    assert!(env.ok("other", &["history", "bob"]).contains("message 2"));
}

#[test]
fn a_wrong_passphrase_imports_nothing() {
    let env = Env::new();
    with_messages(&env, 2);
    let file = env.path("backup.age");
    encrypted_export(&env, &file, "right");
    let out = import(&env, "restored", &file, "wrong");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong passphrase"), "{err}");
    // A profile the import would have created is not left behind.
    assert!(!env.db("restored").exists());
    // Nor is a passphrase guessed when there is no way to ask.
    let err = env.fails("restored", &["import", p(&file)], 1);
    assert!(err.contains(EXPORT_PASS), "{err}");
}

#[test]
fn a_tampered_or_truncated_encrypted_export_imports_nothing() {
    let env = Env::new();
    with_messages(&env, 600);
    let file = env.path("backup.age");
    encrypted_export(&env, &file, "pw");
    let good = fs::read(&file).unwrap();
    assert!(
        good.len() > 3 * 65536,
        "{} bytes: one chunk only",
        good.len()
    );
    env.ok("target", &["init"]);
    let before = env.dump("target");

    let len = good.len();
    let mut cases: Vec<(String, Vec<u8>)> = Vec::new();
    // A flipped byte in the header, the first chunk, a middle chunk and
    // the last one.
    for at in [40, 300, len / 2, len - 5] {
        let mut bad = good.clone();
        bad[at] ^= 0x20;
        cases.push((format!("byte {at} of {len} changed"), bad));
    }
    // Cut in the header, mid-chunk, on a chunk boundary, and one byte
    // short of the end.
    let header_end = good.windows(4).position(|w| w == b"\n---").unwrap() + 48;
    for cut in [
        30,
        header_end + 1000,
        header_end + 16 + 2 * (65536 + 16),
        len - 1,
    ] {
        cases.push((format!("cut at {cut} of {len}"), good[..cut].to_vec()));
    }
    for (what, bytes) in cases {
        let bad = env.path("bad.age");
        fs::write(&bad, &bytes).unwrap();
        let out = import(&env, "target", &bad, "pw");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        assert!(err.contains("Nothing was imported"), "{what}: {err}");
        assert_eq!(env.dump("target"), before, "{what}");
    }
    // The intact file still imports.
    let out = import(&env, "fresh", &file, "pw");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_secret_key_in_clear_needs_plaintext_secret() {
    let env = Env::new();
    with_messages(&env, 1);
    let err = env.fails("me", &["export", "--include-secret"], 2);
    assert!(err.contains("--encrypt"), "{err}");
    assert!(err.contains("--plaintext-secret"), "{err}");
    let file = env.path("clear.json");
    let out = weak_kdf_cmd(&env, "me")
        .args([
            "export",
            "--include-secret",
            "--plaintext-secret",
            "-o",
            p(&file),
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in clear"));
    assert!(fs::read_to_string(&file).unwrap().contains("secret_key"));
    // --plaintext-secret alone means nothing.
    env.fails("me", &["export", "--plaintext-secret"], 2);
}

#[test]
fn a_protected_profile_exports_its_secret_after_its_passphrase() {
    let env = Env::new();
    with_messages(&env, 1);
    let me = env.key("me");
    let new = pass_file(&env, "profile-pass", "profile passphrase");
    weak_kdf_cmd(&env, "me")
        .args(["passphrase", "set"])
        .env("CHAT_NEW_PASSPHRASE_FILE", &new)
        .assert()
        .success();
    let file = env.path("backup.age");
    let export_pass = pass_file(&env, "export-pass", "export passphrase");
    weak_kdf_cmd(&env, "me")
        .args(["export", "--encrypt", "--include-secret", "-o", p(&file)])
        .env("CHAT_PASSPHRASE_FILE", &new)
        .env(EXPORT_PASS, &export_pass)
        .assert()
        .success();
    let out = import(&env, "restored", &file, "export passphrase");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(env.key("restored"), me);
}

#[test]
fn an_export_to_an_age_key_opens_with_its_identity_file() {
    let env = Env::new();
    with_messages(&env, 2);
    let identity = age::x25519::Identity::generate();
    let recipient = identity.to_public().to_string();
    let id_file = env.path("key.txt");
    {
        use age::secrecy::ExposeSecret as _;
        let mut f = fs::File::create(&id_file).unwrap();
        writeln!(f, "{}", identity.to_string().expose_secret()).unwrap();
    }
    let file = env.path("backup.age");
    env.ok("me", &["export", "--recipient", &recipient, "-o", p(&file)]);
    assert!(fs::read(&file)
        .unwrap()
        .starts_with(b"age-encryption.org/v1\n"));
    env.ok("other", &["init"]);
    // A passphrase cannot open it: the error says what can.
    let err = env.fails("other", &["import", "--other-identity", p(&file)], 1);
    assert!(err.contains("--identity"), "{err}");
    env.ok(
        "other",
        &[
            "import",
            "--other-identity",
            "--identity",
            p(&id_file),
            p(&file),
        ],
    );
    assert!(env.ok("other", &["history", "bob"]).contains("message 2"));
    let bad = env.fails("me", &["export", "--recipient", "age1nope"], 2);
    assert!(bad.contains("age public key"), "{bad}");
    let _ = Stdio::null();
}

#[test]
fn importing_a_key_into_a_protected_profile_keeps_or_says_what_it_loses() {
    let env = Env::new();
    with_messages(&env, 1);
    let me = env.key("me");
    let new = pass_file(&env, "profile-pass", "profile passphrase");
    let protect = |profile: &str| {
        weak_kdf_cmd(&env, profile)
            .args(["passphrase", "set"])
            .env("CHAT_NEW_PASSPHRASE_FILE", &new)
            .assert()
            .success();
    };
    let protected = |profile: &str| -> bool {
        let conn = rusqlite::Connection::open(env.db(profile)).unwrap();
        conn.query_row("SELECT secret_key IS NULL FROM identity", [], |r| r.get(0))
            .unwrap()
    };
    protect("me");
    let own = env.path("own.age");
    let export_pass = pass_file(&env, "export-pass", "export passphrase");
    weak_kdf_cmd(&env, "me")
        .args(["export", "--encrypt", "--include-secret", "-o", p(&own)])
        .env("CHAT_PASSPHRASE_FILE", &new)
        .env(EXPORT_PASS, &export_pass)
        .assert()
        .success();

    // Its own key back: nothing changes, the passphrase stays.
    let out = import(&env, "me", &own, "export passphrase");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(protected("me"));
    assert_eq!(env.key("me"), me);

    // Another identity's key, with --force: adopted without a passphrase,
    // and the user is told.
    env.ok("other", &["init"]);
    protect("other");
    let out = common::run_ok(
        weak_kdf_cmd(&env, "other")
            .args(["import", "--force", p(&own)])
            .env(EXPORT_PASS, &export_pass),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("WITHOUT a passphrase"), "{err}");
    assert!(!protected("other"));
    assert_eq!(env.key("other"), me);
}

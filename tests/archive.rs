//! `export` and `import` (including `--legacy`) through the real binary.

mod common;

use std::fs;
use std::path::Path;

use base64::Engine as _;
use chat_p2p::identity::Identity;
use common::*;
use serde_json::{json, Value};

/// A profile "me" with two contacts and messages in every status.
fn filled(env: &Env) -> (String, String) {
    env.ok("me", &["init"]);
    let (bob, carol) = (key(), key());
    let mut failed = outgoing(&id(4), &bob, "lost", "2026-01-01T10:03:00.000Z", "failed");
    failed["failure_reason"] = json!("router unreachable");
    failed["events"] = json!([
        {"status": "pending", "at": "2026-01-01T10:03:00.000Z"},
        {"status": "failed", "at": "2026-01-01T10:04:00.000Z", "detail": "router unreachable"}
    ]);
    let records = vec![
        header(None),
        contact("bob", &bob),
        contact("carol", &carol),
        incoming(
            &id(1),
            &bob,
            "héllo \"quoted\"\nnew line",
            "2026-01-01T10:00:00.000Z",
        ),
        outgoing(&id(2), &bob, "reply", "2026-01-01T10:01:00.000Z", "read"),
        outgoing(
            &id(3),
            &carol,
            "queued",
            "2026-01-01T10:02:00.000Z",
            "pending",
        ),
        failed,
    ];
    let file = env.path("seed.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", file.to_str().unwrap()]);
    (bob, carol)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn json_round_trip_gives_identical_messages() {
    let env = Env::new();
    filled(&env);
    let first = env.path("first.json");
    env.ok("me", &["export", "--json", "--output", p(&first)]);
    let doc = read_json(&first);
    assert_eq!(doc["format"], "chat-p2p-export");
    assert_eq!(doc["version"], 1);
    assert_eq!(doc["contacts"].as_array().unwrap().len(), 2);
    assert_eq!(doc["messages"].as_array().unwrap().len(), 4);
    assert!(doc.get("secret_key").is_none());
    let failed = &doc["messages"][3];
    assert_eq!(failed["failure_reason"], "router unreachable");
    assert_eq!(failed["events"].as_array().unwrap().len(), 2);
    // Events rebuilt from the time fields when the import had none.
    assert_eq!(doc["messages"][1]["events"][1]["status"], "read");

    env.ok("fresh", &["init"]);
    env.ok("fresh", &["import", "--other-identity", p(&first)]);
    let second = env.path("second.json");
    env.ok("fresh", &["export", "--output", p(&second)]);
    assert_eq!(read_json(&second)["messages"], doc["messages"]);
    assert_eq!(read_json(&second)["contacts"], doc["contacts"]);
}

#[test]
fn jsonl_round_trip_and_contact_filter() {
    let env = Env::new();
    filled(&env);
    let lines = env.ok("me", &["export", "--jsonl"]);
    let kinds: Vec<String> = lines
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(
        kinds,
        ["header", "contact", "contact", "message", "message", "message", "message"]
    );
    let file = env.path("all.jsonl");
    fs::write(&file, &lines).unwrap();
    env.ok("fresh", &["init"]);
    env.ok("fresh", &["import", "--other-identity", p(&file)]);
    assert_eq!(
        env.json("fresh", &["history", "--json"]),
        env.json("me", &["history", "--json"])
    );

    let only_carol = env.json("me", &["export", "--contact", "carol"]);
    assert_eq!(only_carol["contacts"].as_array().unwrap().len(), 1);
    assert_eq!(only_carol["messages"].as_array().unwrap().len(), 1);
    assert_eq!(only_carol["messages"][0]["body"], "queued");
    env.fails("me", &["export", "--contact", "karol"], 1);
}

#[test]
fn a_second_import_changes_nothing() {
    let env = Env::new();
    filled(&env);
    let file = env.path("e.json");
    env.ok("me", &["export", "-o", p(&file)]);
    env.ok("other", &["init"]);
    env.ok("other", &["import", "--other-identity", p(&file)]);
    let before = env.dump("other");
    let report = env.json("other", &["import", "--other-identity", p(&file), "--json"]);
    assert_eq!(report["messages_added"], 0);
    assert_eq!(report["messages_known"], 4);
    assert_eq!(report["contacts_added"], 0);
    assert_eq!(env.dump("other"), before);
}

/// JSON Lines message records take a direct parse (src/archive/reader.rs):
/// a file failing after good message lines leaves an empty profile as it
/// was and usable, and importing into a filled profile still dedupes.
#[test]
fn jsonl_into_a_filled_profile_dedupes_and_a_failed_one_leaves_it_usable() {
    let env = Env::new();
    filled(&env);
    let jsonl = env.ok("me", &["export", "--jsonl"]);
    let file = env.path("all.jsonl");
    fs::write(&file, &jsonl).unwrap();
    env.ok("other", &["init"]);
    let before = env.dump("other");

    let bad = env.path("bad_last.jsonl");
    let bad_line = r#"{"kind":"message","msg_id":"not-an-id"}"#;
    fs::write(&bad, format!("{}\n{bad_line}\n", jsonl.trim_end())).unwrap();
    let err = env.fails("other", &["import", "--other-identity", p(&bad)], 1);
    assert!(err.contains("line 8"), "{err}");
    assert!(err.contains("Nothing was imported"), "{err}");
    assert_eq!(env.dump("other"), before);

    let report = env.json("other", &["import", "--other-identity", p(&file), "--json"]);
    assert_eq!(report["messages_added"], 4);
    let filled_dump = env.dump("other");
    let report = env.json("other", &["import", "--other-identity", p(&file), "--json"]);
    assert_eq!(report["messages_added"], 0);
    assert_eq!(report["messages_known"], 4);
    assert_eq!(env.dump("other"), filled_dump);
    assert_eq!(
        env.json("other", &["history", "--json"]),
        env.json("me", &["history", "--json"])
    );
}

#[test]
fn truncated_or_invalid_files_leave_the_database_unchanged() {
    let env = Env::new();
    filled(&env);
    let file = env.path("e.json");
    env.ok("me", &["export", "-o", p(&file)]);
    let text = fs::read_to_string(&file).unwrap();
    env.ok("other", &["init"]);
    let before = env.dump("other");

    let truncated = env.path("truncated.json");
    fs::write(&truncated, &text[..text.len() - 120]).unwrap();
    let err = env.fails("other", &["import", "--other-identity", p(&truncated)], 1);
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("Nothing was imported"), "{err}");
    assert_eq!(env.dump("other"), before);

    let jsonl = env.ok("me", &["export", "--jsonl"]);
    let bad = jsonl.replacen("\"status\":\"read\"", "\"status\":\"lost\"", 1);
    let bad_file = env.path("bad.jsonl");
    fs::write(&bad_file, bad).unwrap();
    let err = env.fails("other", &["import", "--other-identity", p(&bad_file)], 1);
    assert!(err.contains("line 5"), "{err}");
    assert_eq!(env.dump("other"), before);

    let cut = env.path("cut.jsonl");
    fs::write(&cut, &jsonl[..jsonl.len() - 30]).unwrap();
    env.fails("other", &["import", "--other-identity", p(&cut)], 1);
    assert_eq!(env.dump("other"), before);

    let wrong = env.path("wrong.json");
    fs::write(
        &wrong,
        r#"{"format": "something-else", "version": 1, "messages": []}"#,
    )
    .unwrap();
    let err = env.fails("other", &["import", "--other-identity", p(&wrong)], 1);
    assert!(err.contains("not a chat-p2p export"), "{err}");
    let empty = env.path("empty.json");
    fs::write(&empty, "").unwrap();
    env.fails("other", &["import", "--other-identity", p(&empty)], 1);
    env.fails(
        "other",
        &["import", "--other-identity", p(&env.path("missing.json"))],
        1,
    );
    assert_eq!(env.dump("other"), before);
}

#[test]
fn name_clashes_are_reported_not_overwritten() {
    let env = Env::new();
    let (bob, _) = filled(&env);
    let file = env.path("e.jsonl");
    fs::write(&file, env.ok("me", &["export", "--jsonl"])).unwrap();
    env.ok("other", &["init"]);
    let other_bob = key();
    env.ok("other", &["add-contact", "bob", &other_bob]);
    let out = env.ok("other", &["import", "--other-identity", p(&file)]);
    assert!(out.contains("'bob' not saved"), "{out}");
    let contacts = env.json("other", &["contacts", "--json"]);
    let bob_now = contacts
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "bob")
        .unwrap();
    assert_eq!(bob_now["public_key"], other_bob);
    assert_ne!(bob_now["public_key"], bob);
}

#[test]
fn secret_key_only_on_request_and_restores_identity() {
    let env = Env::new();
    filled(&env);
    let me = env.ok("me", &["whoami", "--key"]).trim().to_owned();
    let out = env
        .cmd("me")
        .args(["export", "--include-secret", "--plaintext-secret"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning"));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(doc["secret_key"].is_string());
    let file = env.path("backup.json");
    fs::write(&file, &out.stdout).unwrap();

    // A new machine: no profile yet.
    env.ok("restored", &["import", p(&file)]);
    assert_eq!(env.ok("restored", &["whoami", "--key"]).trim(), me);
    // A profile with another identity refuses it without --force.
    env.ok("someone", &["init"]);
    let err = env.fails("someone", &["import", p(&file)], 1);
    assert!(err.contains("--force"), "{err}");
    env.ok("someone", &["import", "--force", p(&file)]);
    assert_eq!(env.ok("someone", &["whoami", "--key"]).trim(), me);
}

#[test]
fn export_to_a_file_leaves_no_temporary_file() {
    let env = Env::new();
    filled(&env);
    let dir = env.path("out");
    fs::create_dir(&dir).unwrap();
    env.ok("me", &["export", "-o", p(&dir.join("e.json"))]);
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["e.json"]);
    // A directory that does not exist: an error, nothing created.
    env.fails("me", &["export", "-o", p(&env.path("nope/e.json"))], 1);
}

/// The original client's files, split over two folders as users had them.
fn legacy_dirs(
    env: &Env,
    identity: &Identity,
    bob: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (a, b) = (env.path("chat-alice"), env.path("chat-p2p"));
    fs::create_dir_all(a.join("messages")).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("private.key"), *identity.secret_bytes()).unwrap();
    fs::write(
        b.join("public.key"),
        format!("{}\n", identity.public_key().to_base64()),
    )
    .unwrap();
    fs::write(
        b.join("contacts.json"),
        json!({"contacts": {"bob": bob}}).to_string(),
    )
    .unwrap();
    fs::write(
        a.join("messages").join("bob.json"),
        json!([
            {"content": "hi bob", "timestamp": 1_700_000_000, "incoming": false},
            {"content": "hi alice", "timestamp": 1_700_000_060, "incoming": true},
            {"content": "hi alice", "timestamp": 1_700_000_060, "incoming": true}
        ])
        .to_string(),
    )
    .unwrap();
    (a, b)
}

#[test]
fn legacy_import_brings_identity_contacts_and_history_once() {
    let env = Env::new();
    let alice = Identity::generate();
    let bob = key();
    let (a, b) = legacy_dirs(&env, &alice, &bob);
    env.ok("alice", &["import", "--legacy", p(&a), p(&b)]);
    assert_eq!(
        env.ok("alice", &["whoami", "--key"]).trim(),
        alice.public_key().to_base64()
    );
    let v = env.json("alice", &["history", "bob", "--json"]);
    let got: Vec<(&str, &str, &str)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["direction"].as_str().unwrap(),
                m["status"].as_str().unwrap(),
                m["body"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("out", "delivered", "hi bob"),
            ("in", "read", "hi alice"),
            ("in", "read", "hi alice")
        ]
    );
    assert_eq!(v[0]["created_at"], "2023-11-14T22:13:20.000Z");

    let before = env.dump("alice");
    env.ok("alice", &["import", "--legacy", p(&b), p(&a)]);
    assert_eq!(env.dump("alice"), before);
}

#[test]
fn legacy_import_refuses_another_identity_and_bad_files() {
    let env = Env::new();
    let alice = Identity::generate();
    let (a, b) = legacy_dirs(&env, &alice, &key());
    env.ok("other", &["init"]);
    let before = env.dump("other");
    let err = env.fails("other", &["import", "--legacy", p(&a), p(&b)], 1);
    assert!(err.contains("--force"), "{err}");
    assert_eq!(env.dump("other"), before);

    fs::write(a.join("messages").join("bob.json"), "[{\"content\": 1}").unwrap();
    let err = env.fails("fresh", &["import", "--legacy", p(&a), p(&b)], 1);
    assert!(err.contains("bob.json"), "{err}");

    fs::write(a.join("messages").join("bob.json"), "[]").unwrap();
    fs::write(a.join("private.key"), b"short").unwrap();
    let err = env.fails("fresh", &["import", "--legacy", p(&a), p(&b)], 1);
    assert!(err.contains("private.key"), "{err}");

    let wrong_pub = base64::engine::general_purpose::STANDARD
        .encode(Identity::generate().public_key().as_bytes());
    fs::write(a.join("private.key"), *alice.secret_bytes()).unwrap();
    fs::write(b.join("public.key"), wrong_pub).unwrap();
    let err = env.fails("fresh", &["import", "--legacy", p(&a), p(&b)], 1);
    assert!(err.contains("does not belong"), "{err}");

    let empty = env.path("empty");
    fs::create_dir(&empty).unwrap();
    env.fails("fresh", &["import", "--legacy", p(&empty)], 1);
}

#[test]
fn import_needs_one_file_without_legacy() {
    let env = Env::new();
    env.ok("me", &["init"]);
    env.fails("me", &["import"], 2);
    env.fails("me", &["import", "a.json", "b.json"], 1);
}

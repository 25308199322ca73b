//! `history`: listing, filters, search and JSON, on a profile filled by
//! importing a JSON Lines file (the user's own path to messages before the
//! chat client exists).

mod common;

use common::*;
use serde_json::Value;

struct Fixture {
    env: Env,
    unknown: String,
}

fn fixture() -> Fixture {
    let env = Env::new();
    env.ok("me", &["init"]);
    let (bob, carol, unknown) = (key(), key(), key());
    let records = vec![
        header(None),
        contact("bob", &bob),
        contact("carol", &carol),
        incoming(
            &id(1),
            &bob,
            "Uma Mensagém importante",
            "2026-01-01T10:00:00.000Z",
        ),
        outgoing(
            &id(2),
            &bob,
            "the secret plan",
            "2026-01-01T10:01:00.000Z",
            "delivered",
        ),
        outgoing(
            &id(3),
            &bob,
            "plan a secret",
            "2026-01-01T10:02:00.000Z",
            "sent",
        ),
        incoming(
            &id(4),
            &carol,
            "secretary meeting",
            "2026-01-01T10:03:00.000Z",
        ),
        outgoing(
            &id(5),
            &bob,
            "last words",
            "2026-01-02T09:00:00.000Z",
            "pending",
        ),
        incoming(&id(6), &unknown, "who am i", "2026-01-02T10:00:00.000Z"),
    ];
    let file = env.path("fixture.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", file.to_str().unwrap()]);
    Fixture { env, unknown }
}

#[test]
fn lists_latest_messages_in_chronological_order() {
    let f = fixture();
    let out = f.env.ok("me", &["history"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    assert!(lines[0].contains("bob: Uma Mensagém importante"), "{out}");
    assert!(lines[1].contains("you → bob ✓✓: the secret plan"), "{out}");
    assert!(lines[2].contains("you → bob ✓: plan a secret"), "{out}");
    assert!(lines[4].contains("you → bob …: last words"), "{out}");
    assert!(lines[5].contains("unknown ("), "{out}");
    assert!(!out.contains('\x1b'), "piped output must not be coloured");

    let latest = f.env.json("me", &["history", "bob", "-n", "2", "--json"]);
    assert_eq!(bodies(&latest), ["plan a secret", "last words"]);
}

#[test]
fn json_has_every_field() {
    let f = fixture();
    let v = f.env.json("me", &["history", "bob", "--json"]);
    let m = &v[1];
    assert_eq!(m["msg_id"], id(2));
    assert_eq!(m["contact"], "bob");
    assert_eq!(m["direction"], "out");
    assert_eq!(m["status"], "delivered");
    assert_eq!(m["delivered_at"], "2026-01-01T10:01:00.000Z");
    for field in [
        "peer_key",
        "created_at",
        "sent_at",
        "read_at",
        "received_at",
        "failed_at",
        "failure_reason",
    ] {
        assert!(m.get(field).is_some(), "missing {field}");
    }
}

#[test]
fn unknown_peer_gets_suggestions_and_a_key_works_as_peer() {
    let f = fixture();
    let err = f.env.fails("me", &["history", "bobb"], 1);
    assert!(err.contains("no contact named 'bobb'"), "{err}");
    assert!(err.contains("Did you mean 'bob'?"), "{err}");
    let v = f.env.json("me", &["history", &f.unknown, "--json"]);
    assert_eq!(bodies(&v), ["who am i"]);
    assert_eq!(v[0]["contact"], Value::Null);
}

#[test]
fn filters_by_status_direction_and_time() {
    let f = fixture();
    let undelivered = f.env.json(
        "me",
        &[
            "history",
            "--direction",
            "out",
            "--status",
            "sent",
            "--json",
        ],
    );
    assert_eq!(bodies(&undelivered), ["plan a secret"]);
    let day = f.env.json(
        "me",
        &[
            "history",
            "--since",
            "2026-01-02",
            "--until",
            "2026-01-02",
            "--json",
        ],
    );
    assert_eq!(bodies(&day), ["last words", "who am i"]);
    let until = f.env.json(
        "me",
        &["history", "--until", "2026-01-01T10:01:00Z", "--json"],
    );
    assert_eq!(
        bodies(&until),
        ["Uma Mensagém importante", "the secret plan"]
    );
    f.env
        .fails("me", &["history", "--since", "the day after"], 2);
    f.env.fails("me", &["history", "--status", "lost"], 2);
}

#[test]
fn search_ignores_accents_and_supports_prefix_phrase_and_operators() {
    let f = fixture();
    // FTS5 syntax is --fts since issue 12 (--search takes plain words).
    let search = |q: &str| bodies(&f.env.json("me", &["history", "--fts", q, "--json"]));
    assert_eq!(search("mensagem"), ["Uma Mensagém importante"]);
    assert_eq!(search("MENSAGEM"), ["Uma Mensagém importante"]);
    assert_eq!(
        search("secr*"),
        ["secretary meeting", "plan a secret", "the secret plan"]
    );
    assert_eq!(search("\"secret plan\""), ["the secret plan"]);
    assert_eq!(search("secret NOT the"), ["plan a secret"]);
    assert_eq!(search("words OR meeting").len(), 2);
    let in_bob = f
        .env
        .json("me", &["history", "bob", "--fts", "secr*", "--json"]);
    assert_eq!(bodies(&in_bob).len(), 2);
    let ranked = f
        .env
        .json("me", &["history", "--fts", "secret", "--rank", "--json"]);
    assert_eq!(bodies(&ranked).len(), 2);
    assert!(ranked[0]["snippet"].as_str().unwrap().contains("secret"));
}

#[test]
fn malformed_searches_fail_with_a_named_problem() {
    let f = fixture();
    // A malformed --fts query is a usage error (exit 2) since issue 12.
    for q in ["\"unbalanced", "AND", "secret AND"] {
        let err = f.env.fails("me", &["history", "--fts", q], 2);
        assert!(err.contains("cannot search for"), "{q}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let err = f.env.fails("me", &["history", "--fts", "\"open"], 2);
    assert!(err.contains("double quote is not closed"), "{err}");
}

#[test]
fn search_hits_show_conversation_snippet_and_context() {
    let f = fixture();
    let out = f.env.ok("me", &["history", "--search", "importante"]);
    // Each hit starts with the message's short id (issue 12).
    assert!(out.starts_with("00000001 bob  ["), "{out}");
    assert!(out.contains("Uma Mensagém importante"), "{out}");
    let out = f
        .env
        .ok("me", &["history", "--search", "\"secret plan\"", "-C", "1"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].contains("Uma Mensagém"), "{out}");
    assert!(lines[1].starts_with("> "), "{out}");
    assert!(lines[2].contains("plan a secret"), "{out}");
}

#[test]
fn empty_history_and_missing_profile() {
    let env = Env::new();
    let err = env.fails("nobody", &["history"], 1);
    assert!(err.contains("init"), "{err}");
    env.ok("me", &["init"]);
    assert_eq!(env.ok("me", &["history"]).trim(), "No messages.");
}

#[test]
fn readme_queries_work_in_the_sqlite3_shell() {
    let f = fixture();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let sql: String = readme
        .split("```sql\n")
        .skip(1)
        .map(|block| block.split("```").next().unwrap())
        .collect();
    assert!(sql.contains("MATCH"), "the README lost its queries");
    let out = assert_cmd::Command::new("sqlite3")
        .arg("-readonly")
        .arg(f.env.db("me"))
        .write_stdin(sql)
        .output()
        .expect("the sqlite3 shell is needed (CI installs it)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("the secret plan"), "{stdout}");
    assert!(stdout.contains("who am i"), "unread: {stdout}");
    assert!(stdout.contains("last words"), "undelivered: {stdout}");
    assert!(stdout.contains("bob|2026-01-01|3"), "per day: {stdout}");
}

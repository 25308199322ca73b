//! The outbox you can see, deleting, short ids and unread counts (issue 12
//! items 1 and 2): the real binary, real profiles and, where something is
//! sent, a real router.

mod common;

use std::io::Write;
use std::process::{Command as StdCommand, Stdio};

use common::*;
use serde_json::{json, Value};

/// Ids whose short forms (their last 8 hex digits) are known: two share
/// the beginning `aaaa`.
const IN_1: &str = "00000000-0000-7000-8000-0000aaaa0001";
const IN_2: &str = "00000000-0000-7000-8000-0000aaaa0002";
const PENDING: &str = "00000000-0000-7000-8000-0000bbbb0003";
const FAILED: &str = "00000000-0000-7000-8000-0000cccc0004";
const DELIVERED: &str = "00000000-0000-7000-8000-0000dddd0005";

/// A profile "me" with contact bob and one message of each kind.
fn fixture() -> (Env, String) {
    let env = Env::new();
    env.init("me");
    let bob = key();
    let mut failed = outgoing(
        FAILED,
        &bob,
        "failed one",
        "2026-01-01T10:03:00.000Z",
        "failed",
    );
    failed["failure_reason"] = json!("the router said no");
    let records = [
        header(None),
        contact("bob", &bob),
        incoming(
            IN_1,
            &bob,
            "hello there, a secret",
            "2026-01-01T10:00:00.000Z",
        ),
        incoming(IN_2, &bob, "second unread", "2026-01-01T10:01:00.000Z"),
        outgoing(
            PENDING,
            &bob,
            "pending one",
            "2026-01-01T10:02:00.000Z",
            "pending",
        ),
        failed,
        outgoing(
            DELIVERED,
            &bob,
            "delivered one",
            "2026-01-01T10:04:00.000Z",
            "delivered",
        ),
    ];
    let file = env.path("fixture.jsonl");
    write_jsonl(&file, &records);
    env.ok("me", &["import", file.to_str().unwrap()]);
    (env, bob)
}

#[test]
fn history_lines_start_with_the_short_id() {
    let (env, _) = fixture();
    let out = env.ok("me", &["history"]);
    let starts: Vec<&str> = out.lines().map(|l| &l[..9]).collect();
    assert_eq!(
        starts,
        [
            "aaaa0001 ",
            "aaaa0002 ",
            "bbbb0003 ",
            "cccc0004 ",
            "dddd0005 "
        ],
        "{out}"
    );
    let found = env.ok("me", &["history", "--search", "secret"]);
    assert!(found.starts_with("aaaa0001 "), "{found}");
}

#[test]
fn outbox_lists_pending_and_failed_with_the_reason() {
    let (env, _) = fixture();
    let out = env.ok("me", &["outbox"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("ID"), "{out}");
    assert!(lines[1].starts_with("bbbb0003  bob  "), "{out}");
    assert!(lines[1].ends_with("d  pending    pending one"), "{out}");
    assert!(lines[2].starts_with("cccc0004  bob  "), "{out}");
    assert!(
        lines[2].ends_with("d  failed     failed one (the router said no)"),
        "{out}"
    );

    let json = env.json("me", &["outbox", "--json"]);
    assert_eq!(bodies(&json), ["pending one", "failed one"]);
    assert_eq!(json[0]["id"], "bbbb0003");
    assert_eq!(json[0]["msg_id"], PENDING);
    assert_eq!(json[1]["failure_reason"], "the router said no");
    assert!(json[1]["age_secs"].as_i64().unwrap() > 86400);
    let listed = env.json("me", &["outbox", "list", "--json"]);
    assert_eq!(bodies(&listed), bodies(&json));
}

#[test]
fn cancel_stops_a_pending_message_and_history_and_export_say_so() {
    let (env, _) = fixture();
    let out = env.ok("me", &["outbox", "cancel", "bbbb"]);
    assert!(out.starts_with("Cancelled bbbb0003 to bob"), "{out}");
    let json = env.json("me", &["outbox", "--json"]);
    assert_eq!(json[0]["cancelled"], true);
    assert_eq!(json[0]["status"], "failed");
    assert_eq!(json[0]["failure_reason"], "cancelled by you");
    assert!(env.ok("me", &["outbox"]).contains("cancelled"));
    let history = env.ok("me", &["history", "bob"]);
    assert!(
        history.contains("you → bob ✗ cancelled: pending one"),
        "{history}"
    );
    // Cancelling again changes nothing and says so.
    let again = env.ok("me", &["outbox", "cancel", "bbbb0003"]);
    assert!(again.starts_with("Already cancelled"), "{again}");

    // The export carries it, and an import elsewhere keeps it cancelled.
    let file = env.path("out.jsonl");
    env.ok("me", &["export", "--jsonl", "-o", file.to_str().unwrap()]);
    env.ok(
        "other",
        &["import", "--other-identity", file.to_str().unwrap()],
    );
    let other = env.json("other", &["outbox", "--json"]);
    assert_eq!(other[0]["cancelled"], true);
    let timeline: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["msg_id"] == PENDING)
        .collect();
    let events = timeline[0]["events"].as_array().unwrap();
    assert_eq!(events.last().unwrap()["detail"], "cancelled by you");
}

#[test]
fn cancelling_what_was_sent_or_naming_no_message_is_refused() {
    let (env, _) = fixture();
    let err = env.fails("me", &["outbox", "cancel", "dddd0005"], 1);
    assert!(
        err.contains("cannot cancel message dddd0005: it was already sent (status: delivered)"),
        "{err}"
    );
    let err = env.fails("me", &["outbox", "cancel", "aaaa0001"], 1);
    assert!(err.contains("it is a message you received"), "{err}");
    let err = env.fails("me", &["outbox", "cancel", "eeee"], 1);
    assert!(err.contains("no message with id 'eeee'"), "{err}");
    let err = env.fails("me", &["delete", "--yes", "aaaa"], 1);
    assert!(err.contains("the id 'aaaa' is ambiguous"), "{err}");
    assert!(err.contains(IN_1) && err.contains(IN_2), "{err}");
    let err = env.fails("me", &["delete", "--yes", "zz"], 2);
    assert!(err.contains("is not a message id"), "{err}");
    let err = env.fails("me", &["outbox", "cancel"], 2);
    assert!(err.contains("<ID>"), "{err}");
    // Nothing changed.
    assert_eq!(
        env.json("me", &["history", "--json"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
}

#[test]
fn delete_needs_yes_without_a_terminal_and_takes_search_with_it() {
    let (env, _) = fixture();
    let err = env.fails("me", &["delete", "aaaa0001"], 2);
    assert!(err.contains("pass --yes"), "{err}");
    assert_eq!(
        env.json("me", &["history", "--json"])
            .as_array()
            .unwrap()
            .len(),
        5
    );
    assert!(env
        .ok("me", &["history", "--search", "secret"])
        .contains("secret"));

    let out = env.ok("me", &["delete", "--yes", "aaaa0001", IN_2]);
    assert_eq!(out.trim(), "Deleted 2 message(s).");
    let left = env.json("me", &["history", "--json"]);
    assert_eq!(
        bodies(&left),
        ["pending one", "failed one", "delivered one"]
    );
    let found = env.json("me", &["history", "--search", "secret", "--json"]);
    assert_eq!(found, json!([]));
    let conn = rusqlite::Connection::open(env.db("me")).unwrap();
    let events: i64 = conn
        .query_row("SELECT count(*) FROM message_events", [], |r| r.get(0))
        .unwrap();
    // pending 1, failed 2, delivered 2 (rebuilt timelines on import).
    assert_eq!(events, 5);
    conn.execute(
        "INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')",
        [],
    )
    .unwrap();
    drop(conn);

    // The text is gone from the file and its write-ahead log.
    for file in [env.db("me"), env.db("me").with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        let needle = b"hello there, a secret";
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle),
            "{} still holds the text",
            file.display()
        );
    }

    // A whole conversation; the contact stays.
    let out = env.ok("me", &["delete", "--conversation", "bob", "-y"]);
    assert_eq!(out.trim(), "Deleted 3 message(s).");
    assert_eq!(env.json("me", &["history", "--json"]), json!([]));
    assert!(env.ok("me", &["contacts"]).contains("bob"));
    let err = env.fails("me", &["delete", "--conversation", "bob"], 0);
    assert!(err.is_empty(), "{err}");
}

/// Alice and Bob, contacts of each other, and a router.
fn pair() -> (Env, Router) {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    (env, router)
}

fn with_router(env: &Env, router: &Router, profile: &str, args: &[&str]) -> String {
    let out = common::run_ok(env.cmd(profile).env("CHAT_SERVER", router.url()).args(args));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn retry_sends_what_waits_through_the_router() {
    let (env, router) = pair();
    // The router is not where send looks: the message stays pending.
    env.fails(
        "alice",
        &[
            "send",
            "bob",
            "first try",
            "--server",
            "ws://127.0.0.1:1/ws",
            "--timeout",
            "2",
        ],
        1,
    );
    env.fails(
        "alice",
        &[
            "send",
            "bob",
            "never send this",
            "--server",
            "ws://127.0.0.1:1/ws",
            "--timeout",
            "2",
        ],
        1,
    );
    let outbox = env.json("alice", &["outbox", "--json"]);
    assert_eq!(bodies(&outbox), ["first try", "never send this"]);
    let cancelled = outbox[1]["id"].as_str().unwrap().to_owned();
    env.ok("alice", &["outbox", "cancel", &cancelled]);

    // Without ids: everything but what was cancelled.
    let out = with_router(&env, &router, "alice", &["outbox", "retry"]);
    assert!(out.contains("to bob: ✓ sent"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    with_router(&env, &router, "bob", &["sync"]);
    assert_eq!(
        bodies(&env.json("bob", &["history", "--json"])),
        ["first try"]
    );

    // Naming the cancelled one sends it after all.
    let json: Value = serde_json::from_str(&with_router(
        &env,
        &router,
        "alice",
        &["outbox", "retry", &cancelled, "--json"],
    ))
    .unwrap();
    assert_eq!(json[0]["status"], "sent");
    assert_eq!(env.json("alice", &["outbox", "--json"]), json!([]));
    with_router(&env, &router, "bob", &["sync"]);
    assert_eq!(
        bodies(&env.json("bob", &["history", "--json"])),
        ["first try", "never send this"]
    );
    // A sent message is not retried.
    let err = env.fails("alice", &["outbox", "retry", &cancelled], 1);
    assert!(err.contains("already sent (status: sent)"), "{err}");
}

#[test]
fn unread_counts_show_in_contacts_and_inbox_and_drop_as_chat_shows_them() {
    let (env, router) = pair();
    for text in ["one", "two", "three"] {
        with_router(&env, &router, "bob", &["send", "alice", text]);
    }
    with_router(&env, &router, "alice", &["sync"]);
    let contacts = env.json("alice", &["contacts", "--json"]);
    assert_eq!(contacts[0]["unread"], 3);
    assert!(contacts[0]["last_message_at"].is_string());
    let table = env.ok("alice", &["contacts"]);
    assert!(table.lines().next().unwrap().contains("UNREAD"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().contains("     3  "),
        "{table}"
    );

    let inbox = env.json("alice", &["inbox", "--json"]);
    assert_eq!(inbox[0]["contact"], "bob");
    assert_eq!(inbox[0]["unread"], 3);
    assert_eq!(inbox[0]["last_message"]["body"], "three");
    let text = env.ok("alice", &["inbox"]);
    assert!(
        text.lines().nth(1).unwrap().contains("bob: three"),
        "{text}"
    );
    // `chat` with no contact is the inbox.
    assert_eq!(env.ok("alice", &["chat"]), text);

    // A chat showing the last two marks those two read, under a separator.
    let mut child = StdCommand::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", "alice")
        .env("CHAT_SERVER", router.url())
        .args(["chat", "bob", "-n", "2"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"").unwrap();
    let out = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = shown.lines().collect();
    assert_eq!(
        lines[0], "── 3 unread (1 further up: /history N shows more) ──",
        "{shown}"
    );
    assert!(lines[1].ends_with("bob: two"), "{shown}");
    assert_eq!(env.json("alice", &["contacts", "--json"])[0]["unread"], 1);
    assert_eq!(env.json("alice", &["inbox", "--json"])[0]["unread"], 1);
}

#[test]
fn an_empty_outbox_and_inbox_say_so() {
    let env = Env::new();
    env.init("me");
    assert!(env.ok("me", &["outbox"]).contains("The outbox is empty"));
    assert_eq!(env.json("me", &["outbox", "--json"]), json!([]));
    assert!(env.ok("me", &["inbox"]).contains("No conversations yet"));
    assert_eq!(env.json("me", &["inbox", "--json"]), json!([]));
}

#[test]
fn a_receipt_still_waiting_for_a_deleted_message_is_sent_all_the_same() {
    let (env, router) = pair();
    with_router(
        &env,
        &router,
        "bob",
        &["send", "alice", "read me, then forget me"],
    );
    with_router(&env, &router, "alice", &["sync"]);
    let got = env.json("alice", &["history", "--json"]);
    let msg_id = got[0]["msg_id"].as_str().unwrap().to_owned();
    let bob_key = env.key("bob");
    // Alice read it and her client stopped before the router took the
    // read receipt: the receipt waits in receipt_outbox.
    let conn = rusqlite::Connection::open(env.db("alice")).unwrap();
    conn.execute(
        "INSERT INTO receipt_outbox (receipt_id, peer_key, kind, msg_ids, created_at)
         VALUES (?1, ?2, 'read', ?3, '2026-11-26T00:00:00.000Z')",
        rusqlite::params![
            chat_p2p::store::MessageId::new_v7().to_text(),
            bob_key,
            json!([msg_id]).to_string()
        ],
    )
    .unwrap();
    drop(conn);

    env.ok("alice", &["delete", "--yes", &msg_id]);
    with_router(&env, &router, "alice", &["sync"]);
    let conn = rusqlite::Connection::open(env.db("alice")).unwrap();
    let waiting: i64 = conn
        .query_row("SELECT count(*) FROM receipt_outbox", [], |r| r.get(0))
        .unwrap();
    assert_eq!(waiting, 0);
    with_router(&env, &router, "bob", &["sync"]);
    let sent = env.json("bob", &["history", "--json"]);
    assert_eq!(sent[0]["status"], "read");
}

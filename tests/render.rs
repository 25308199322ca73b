//! Nothing a peer or a file controls reaches the terminal raw, and contact
//! names cannot pass for one another: the real binary, a real router, real
//! profiles.

mod common;

use chat_p2p::identity::Identity;
use common::*;

/// The sequence: retitles the window, clears the screen, homes the
/// cursor and prints a forged line from bob.
const INJECTION: &str =
    "\u{1b}]0;TITLE\u{7}\u{1b}[2J\u{1b}[H[2026-11-26 02:41] bob: please send the code to mallory";

/// A body whose second line passes for a message from bob.
const FORGED_LINE: &str = "hi\n[2026-11-26 02:41] bob: forged";

/// No byte that a terminal would act on: C0 controls other than the line
/// break, DEL, C1 controls, bidi and invisible format characters.
fn assert_inert(text: &str) {
    for c in text.chars() {
        assert!(
            c == '\n' || !chat_p2p::render::is_hidden(c),
            "{c:?} reached the terminal in:\n{text}"
        );
    }
}

/// No line but a real header starts like one.
fn assert_no_forged_header(text: &str) {
    for line in text.lines() {
        assert!(
            !line.starts_with("[2026-11-26 02:41] bob:"),
            "a forged header line:\n{text}"
        );
    }
}

#[test]
fn history_shows_hostile_bodies_from_a_real_peer_escaped() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let (alice, _) = env.friends();

    // Bob's own client sends the forged line (the sender may write anything:
    // the receiver must be safe), a stranger the escape sequence.
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["send", "alice", FORGED_LINE])
        .assert()
        .success();
    let alice_key = chat_p2p::identity::PublicKey::parse(&alice).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let mut stranger = Client::connect(&router.addr, Identity::generate()).await;
        stranger.send_acked(&alice_key, INJECTION).await;
    });
    env.cmd("alice")
        .env("CHAT_SERVER", router.url())
        .arg("sync")
        .assert()
        .success();

    let shown = env.ok("alice", &["history"]);
    assert_inert(&shown);
    assert_no_forged_header(&shown);
    assert!(
        shown.contains("^[]0;TITLE^G^[[2J^[[H[2026-11-26 02:41] bob: please send"),
        "{shown}"
    );
    assert!(
        shown.contains("bob: hi\n  │ [2026-11-26 02:41] bob: forged"),
        "{shown}"
    );

    // Search hits and their context go through the same rendering.
    for args in [
        &["history", "--search", "forged"][..],
        &["history", "--search", "mallory", "-C", "2"],
        &["history", "bob", "-n", "1"],
    ] {
        let shown = env.ok("alice", args);
        assert_inert(&shown);
        assert_no_forged_header(&shown);
    }

    // JSON keeps the exact text.
    let json = env.json("alice", &["history", "--json"]);
    let bodies: Vec<&str> = body_strs(&json);
    assert!(bodies.contains(&INJECTION) && bodies.contains(&FORGED_LINE));
}

#[test]
fn names_and_notes_from_an_import_are_escaped() {
    let env = Env::new();
    env.init("me");
    let file = env.path("names.jsonl");
    // An old export may hold names that today's rules refuse; the messages
    // it holds still come in, and nothing in it reaches the terminal raw.
    write_jsonl(
        &file,
        &[
            header(None),
            contact("eve\u{202E}lanif", &key()),
            incoming(
                &id(1),
                &key(),
                "\u{1b}[31mred\u{9b}2J",
                "2026-01-01T10:00:00.000Z",
            ),
        ],
    );
    let out = env
        .cmd("me")
        .args(["import", file.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stderr}");
    assert_inert(&stdout);
    assert_inert(&stderr);
    assert!(stdout.contains("eve<U+202E>lanif"), "{stdout}");
    let shown = env.ok("me", &["history"]);
    assert_inert(&shown);
    assert!(shown.contains("^[[31mred<U+009B>2J"), "{shown}");
}

#[test]
fn error_messages_escape_what_they_quote() {
    let env = Env::new();
    env.init("me");
    let err = env.fails("me", &["history", "\u{1b}]0;pwned\u{7}"], 1);
    assert_inert(&err);
    assert!(err.contains("^[]0;pwned^G"), "{err}");
    let err = env.fails("me", &["history", "--fts", "\"\u{1b}[2J"], 2);
    assert_inert(&err);
}

#[test]
fn look_alike_contact_names_are_refused() {
    let env = Env::new();
    env.init("me");
    // Zoë as NFC, then NFD: the same name.
    env.ok("me", &["add-contact", "Zo\u{eb}", &key()]);
    let err = env.fails("me", &["add-contact", "Zoe\u{308}", &key()], 1);
    assert!(err.contains("'Zoë'"), "{err}");
    // A zero-width space is refused outright, as bad usage.
    env.ok("me", &["add-contact", "bob", &key()]);
    let err = env.fails("me", &["add-contact", "bob\u{200B}", &key()], 2);
    assert!(err.contains("invisible"), "{err}");
    assert!(err.contains("<U+200B>"), "{err}");
    // A Cyrillic о in place of the Latin o.
    let err = env.fails("me", &["add-contact", "b\u{43e}b", &key()], 1);
    assert!(err.contains("'bob'"), "{err}");
    assert!(err.contains("U+043E"), "{err}");
    // Renaming into a look-alike is refused the same way.
    env.ok("me", &["add-contact", "carol", &key()]);
    let err = env.fails("me", &["rename-contact", "carol", "B\u{41e}B"], 1);
    assert!(err.contains("'bob'"), "{err}");
    let err = env.fails("me", &["rename-contact", "carol", "\u{202E}lorac"], 2);
    assert!(err.contains("<U+202E>"), "{err}");
    // An innocent different name is fine.
    env.ok("me", &["add-contact", "bobby", &key()]);
    env.ok("me", &["rename-contact", "carol", "Carola"]);
    let names: Vec<String> = env
        .json("me", &["contacts", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["bob", "bobby", "Carola", "Zoë"]);
}

#[test]
fn contacts_work_on_a_profile_without_identity() {
    let env = Env::new();
    let file = env.path("contacts.jsonl");
    let bob = key();
    write_jsonl(&file, &[header(None), contact("bob", &bob)]);
    env.ok("fresh", &["import", file.to_str().unwrap()]);
    for command in ["contacts", "list-contacts"] {
        let out = env.cmd("fresh").arg(command).output().unwrap();
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert!(out.status.success(), "{command}: {stdout}");
        assert!(stdout.contains("bob") && stdout.contains(&bob), "{stdout}");
    }
    let listed = env.json("fresh", &["contacts", "--json"]);
    assert_eq!(listed[0]["name"], "bob");
}

#[test]
fn legacy_import_names_and_messages_are_escaped() {
    let env = Env::new();
    env.init("me");
    let dir = env.path("legacy");
    std::fs::create_dir_all(dir.join("messages")).unwrap();
    let bob = key();
    // Names the old client accepted that today's rules refuse, and one
    // that is a look-alike of another (with a Cyrillic о).
    let contacts = serde_json::json!({"contacts": {
        "bob": bob,
        "b\u{43e}b": key(),
        "eve\u{1b}[2J": key(),
        "mal\u{202E}lory": key(),
    }});
    std::fs::write(dir.join("contacts.json"), contacts.to_string()).unwrap();
    let messages = serde_json::json!([
        {"content": INJECTION, "timestamp": 1_764_000_000.0, "incoming": true},
        {"content": FORGED_LINE, "timestamp": 1_764_000_001.0, "incoming": true},
    ]);
    std::fs::write(dir.join("messages").join("bob.json"), messages.to_string()).unwrap();

    let out = env
        .cmd("me")
        .args(["import", "--legacy", dir.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert!(out.status.success(), "{stderr}");
    assert_inert(&stdout);
    assert_inert(&stderr);
    assert!(stdout.contains("mal<U+202E>lory"), "{stdout}");
    assert!(stdout.contains("eve^[[2J"), "{stdout}");
    assert!(
        stdout.contains("looks like the existing contact 'bob'"),
        "{stdout}"
    );
    let names: Vec<String> = env
        .json("me", &["contacts", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(names, ["bob"]);
    let shown = env.ok("me", &["history"]);
    assert_inert(&shown);
    assert_no_forged_header(&shown);
    let shown = env.ok("me", &["contacts"]);
    assert_inert(&shown);
}

//! Safety codes and `verify`, driven through the real binary: the same code
//! on both sides, --confirm, --reset, --json, the verified mark in
//! `contacts`, and the loud warning when the key behind a verified name
//! changes. The code itself is checked as a property.

mod common;

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::safety::SafetyCode;
use common::Env;
use proptest::prelude::*;
use serde_json::Value;

fn public(seed: [u8; 32]) -> PublicKey {
    Identity::from_secret_bytes(&seed).public_key()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Both sides see one code, and any other pair sees another.
    #[test]
    fn the_code_is_the_pairs_whatever_the_order(
        a in any::<[u8; 32]>(),
        b in any::<[u8; 32]>(),
        c in any::<[u8; 32]>(),
    ) {
        prop_assume!(a != b && a != c && b != c);
        let (a, b, c) = (public(a), public(b), public(c));
        let ab = SafetyCode::new(&a, &b);
        let ba = SafetyCode::new(&b, &a);
        prop_assert_eq!(ab.words(), ba.words());
        prop_assert_eq!(ab.digits(), ba.digits());
        for other in [
            SafetyCode::new(&a, &c),
            SafetyCode::new(&c, &b),
            SafetyCode::new(&c, &a),
            SafetyCode::new(&a, &a),
        ] {
            prop_assert_ne!(ab.words(), other.words());
            prop_assert_ne!(ab.digits(), other.digits());
        }
    }
}

/// Two profiles that know each other: alice calls bob "bob", and bob
/// calls alice "alice".
fn pair() -> (Env, String, String) {
    let env = Env::new();
    let (alice, bob) = env.friends();
    (env, alice, bob)
}

/// Runs and returns (stdout, stderr), asserting exit code `code`.
fn run(env: &Env, profile: &str, args: &[&str], code: i32) -> (String, String) {
    let out = env.cmd(profile).args(args).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    );
    assert_eq!(out.status.code(), Some(code), "{args:?}: {stdout} {stderr}");
    (stdout, stderr)
}

#[test]
fn both_sides_see_the_same_code() {
    let (env, alice, bob) = pair();
    let on_alice = env.json("alice", &["verify", "bob", "--json"]);
    let on_bob = env.json("bob", &["verify", "alice", "--json"]);
    assert_eq!(on_alice["words"], on_bob["words"]);
    assert_eq!(on_alice["digits"], on_bob["digits"]);
    assert_eq!(on_alice["words"].as_array().unwrap().len(), 12);
    assert_eq!(on_alice["digits"].as_array().unwrap().len(), 8);
    assert_eq!(on_alice["verified"], false);
    assert_eq!(on_alice["verified_at"], Value::Null);
    assert_eq!(on_alice["key_changed"], false);
    assert_eq!(on_alice["public_key"], bob.as_str());
    // What the library computes for the two keys.
    let code = SafetyCode::new(
        &PublicKey::parse(&alice).unwrap(),
        &PublicKey::parse(&bob).unwrap(),
    );
    assert_eq!(on_alice["words"], serde_json::json!(code.words()));

    // The text shows the same words and digits on both sides.
    let text_alice = env.ok("alice", &["verify", "bob"]);
    let text_bob = env.ok("bob", &["verify", "alice"]);
    let code_lines = |t: &str| -> Vec<String> {
        t.lines()
            .filter(|l| l.starts_with("    "))
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(code_lines(&text_alice), code_lines(&text_bob));
    assert_eq!(code_lines(&text_alice).len(), 5, "{text_alice}");
    for w in code.words() {
        assert!(text_alice.contains(w), "{text_alice}");
    }
    assert!(text_alice.contains(&code.digits().join(" ")[..23]));
    assert!(text_alice.contains("chat-p2p --profile alice verify bob --confirm"));

    // A third profile's code with bob is another.
    let carol = env.init("carol");
    env.ok("carol", &["add-contact", "bob", &bob]);
    let on_carol = env.json("carol", &["verify", "bob", "--json"]);
    assert_ne!(on_carol["words"], on_alice["words"]);
    let _ = carol;
}

#[test]
fn confirm_and_reset_show_in_contacts() {
    let (env, _alice, _bob) = pair();
    let listed = env.json("alice", &["contacts", "--json"]);
    assert_eq!(listed[0]["verified"], false);

    let out = env.ok("alice", &["verify", "bob", "--confirm"]);
    assert!(out.contains("Marked 'bob' as verified"), "{out}");
    let again = env.ok("alice", &["verify", "bob", "--confirm"]);
    assert!(again.contains("already verified"), "{again}");

    let v = env.json("alice", &["verify", "bob", "--json"]);
    assert_eq!(v["verified"], true);
    assert!(v["verified_at"].as_str().unwrap().ends_with('Z'));
    let listed = env.json("alice", &["contacts", "--json"]);
    assert_eq!(listed[0]["verified"], true);
    assert_eq!(listed[0]["verified_at"], v["verified_at"]);
    let table = env.ok("alice", &["contacts"]);
    assert!(
        table.lines().next().unwrap().contains("VERIFIED"),
        "{table}"
    );
    let row = table.lines().find(|l| l.starts_with("bob")).unwrap();
    assert!(row.contains(" yes "), "{table}");
    assert!(env.ok("alice", &["verify", "bob"]).contains("Verified on"));
    // Only on alice's side: bob has not confirmed anything.
    assert_eq!(
        env.json("bob", &["contacts", "--json"])[0]["verified"],
        false
    );

    // Renaming keeps it.
    env.ok("alice", &["rename-contact", "bob", "robert"]);
    assert_eq!(
        env.json("alice", &["verify", "robert", "--json"])["verified"],
        true
    );

    let out = env.ok("alice", &["verify", "robert", "--reset"]);
    assert!(out.contains("no longer marked as verified"), "{out}");
    let listed = env.json("alice", &["contacts", "--json"]);
    assert_eq!(listed[0]["verified"], false);
    assert_eq!(listed[0]["verified_at"], Value::Null);
    let row = env.ok("alice", &["contacts"]);
    assert!(!row.contains(" yes "), "{row}");

    // --json with --confirm prints the new state.
    let v = env.json("alice", &["verify", "robert", "--confirm", "--json"]);
    assert_eq!(v["verified"], true);
    // Both at once is bad usage.
    env.fails("alice", &["verify", "robert", "--confirm", "--reset"], 2);
}

#[test]
fn a_new_key_under_a_verified_name_is_said_loudly_everywhere() {
    let (env, _alice, bob) = pair();
    env.ok("alice", &["verify", "bob", "--confirm"]);
    env.ok("alice", &["remove-contact", "bob"]);
    let mallory = env.init("mallory");
    // Re-adding the name with another key warns at once.
    let (_, err) = run(&env, "alice", &["add-contact", "bob", &mallory], 0);
    assert!(
        err.contains("WARNING: THE KEY OF 'bob' HAS CHANGED"),
        "{err}"
    );

    let no_router = ["--server", "ws://127.0.0.1:9/ws", "--timeout", "1"];
    let mut touching: Vec<(Vec<&str>, i32)> = vec![
        (vec!["contacts"], 0),
        (vec!["contacts", "--json"], 0),
        (vec!["history", "bob"], 0),
        (vec!["verify", "bob"], 0),
        (vec!["verify", "bob", "--json"], 0),
    ];
    let mut send = vec!["send", "bob", "hello"];
    send.extend(no_router);
    touching.push((send, 1));
    let mut chat = vec!["chat", "bob"];
    chat.extend(no_router);
    touching.push((chat, 1));
    for (args, code) in &touching {
        let (_, err) = run(&env, "alice", args, *code);
        assert!(
            err.contains("HAS CHANGED") && err.contains("NOT verified"),
            "{args:?} did not warn: {err}"
        );
    }
    // Not verified any more, and said so in every listing.
    let v = env.json("alice", &["verify", "bob", "--json"]);
    assert_eq!(
        (v["verified"].clone(), v["key_changed"].clone()),
        (false.into(), true.into())
    );
    assert_eq!(v["public_key"], mallory.as_str());
    let listed = env.json("alice", &["contacts", "--json"]);
    assert_eq!(listed[0]["verified"], false);
    assert_eq!(listed[0]["key_changed"], true);
    assert!(env.ok("alice", &["contacts"]).contains("KEY CHANGED"));

    // Confirming the new key (after comparing codes again) ends it.
    env.ok("alice", &["verify", "bob", "--confirm"]);
    let (_, err) = run(&env, "alice", &["contacts"], 0);
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        env.json("alice", &["contacts", "--json"])[0]["verified"],
        true
    );

    // Back to the first key: changed again; --reset silences it.
    env.ok("alice", &["remove-contact", "bob"]);
    env.ok("alice", &["add-contact", "bob", &bob]);
    let (_, err) = run(&env, "alice", &["history", "bob"], 0);
    assert!(err.contains("HAS CHANGED"), "{err}");
    env.ok("alice", &["verify", "bob", "--reset"]);
    let (_, err) = run(&env, "alice", &["history", "bob"], 0);
    assert!(err.is_empty(), "{err}");
    assert_eq!(
        env.json("alice", &["contacts", "--json"])[0]["verified"],
        false
    );
}

#[test]
fn a_name_never_verified_gives_no_warning() {
    let (env, _alice, _bob) = pair();
    env.ok("alice", &["remove-contact", "bob"]);
    let (_, err) = run(&env, "alice", &["add-contact", "bob", &common::key()], 0);
    assert!(err.is_empty(), "{err}");
    let (_, err) = run(&env, "alice", &["contacts"], 0);
    assert!(err.is_empty(), "{err}");
}

#[test]
fn verify_names_what_is_missing() {
    let env = Env::new();
    env.init("alice");
    env.ok("alice", &["add-contact", "bobby", &common::key()]);
    let err = env.fails("alice", &["verify", "bob"], 1);
    assert!(err.contains("bobby"), "{err}");
    let err = env.fails("nobody", &["verify", "bob"], 1);
    assert!(err.contains("init"), "{err}");
}

/// The chat header in a real terminal (tmux) says whether the contact is
/// verified.
#[test]
fn the_chat_header_shows_who_is_verified() {
    use std::process::Command;
    use std::time::Duration;

    let (env, _alice, _bob) = pair();
    env.ok("alice", &["verify", "bob", "--confirm"]);
    let router = common::Router::start(&env.path("router"), &[]);
    let socket = format!("chat-p2p-verify-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)")
    };
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command = format!(
        "env -i HOME=/nonexistent TERM=xterm CHAT_HOME={} CHAT_PROFILE=alice CHAT_SERVER={} {} chat bob",
        quote(env.home().to_str().unwrap()),
        quote(&router.url()),
        quote(env!("CARGO_BIN_EXE_chat-p2p")),
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "150",
        "-y",
        "20",
        &command,
    ]);
    assert!(started.status.success());
    let mut screen = String::new();
    for _ in 0..200 {
        screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned();
        // The whole header line, not its first words: the terminal may
        // show it half written (CI once captured just "Chat with").
        if screen
            .lines()
            .any(|l| l.starts_with("Chat with") && l.contains(" via "))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tmux(&["send-keys", "-t", "chat", "-l", "exit"]);
    tmux(&["send-keys", "-t", "chat", "Enter"]);
    let _ = tmux(&["kill-server"]);
    assert!(
        screen.contains("Chat with bob (verified) via"),
        "no verified mark in the header:\n{screen}"
    );
}

/// An import is another way a name can come back with another key.
#[test]
fn a_verified_name_brought_back_by_an_import_with_another_key_warns() {
    let (env, _alice, _bob) = pair();
    env.ok("alice", &["verify", "bob", "--confirm"]);
    env.ok("alice", &["remove-contact", "bob"]);
    let file = env.path("other.jsonl");
    common::write_jsonl(
        &file,
        &[common::header(None), common::contact("bob", &common::key())],
    );
    env.ok("alice", &["import", file.to_str().unwrap()]);
    let (_, err) = run(&env, "alice", &["contacts"], 0);
    assert!(err.contains("HAS CHANGED"), "{err}");
    let v = env.json("alice", &["verify", "bob", "--json"]);
    assert_eq!(v["verified"], false);
    assert_eq!(v["key_changed"], true);
}

//! Home routers on the command line (issue 11): addresses in `init` and
//! `whoami`, contacts' routers (`add-contact`, `contacts`,
//! `set-contact-router`), `home` and `home set`, export and import with
//! routers, bad addresses refused, and a profile from before home routers.

mod common;

use common::*;
use serde_json::Value;

const A: &str = "ws://127.0.0.1:9001/ws";
const B: &str = "wss://b.example/ws";
const C: &str = "ws://c.example:7000/chat";

/// Initialises `profile` with `--server router` and returns its key.
fn init_at(env: &Env, profile: &str, router: &str) -> String {
    env.ok(profile, &["init", "--server", router]);
    env.key(profile)
}

/// `contacts --json`, by name.
fn contact_of(env: &Env, profile: &str, name: &str) -> Value {
    env.json(profile, &["contacts", "--json"])
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no contact {name}"))
        .clone()
}

#[test]
fn init_records_the_router_given_and_whoami_shows_the_address() {
    let env = Env::new();
    let key = init_at(&env, "me", "ws://127.0.0.1:9001");
    let address = format!("chat-p2p:{key}@ws://127.0.0.1:9001");
    assert_eq!(
        env.ok("me", &["whoami", "--address"]),
        format!("{address}\n")
    );
    let who = env.json("me", &["whoami", "--json"]);
    assert_eq!(who["address"], address.as_str());
    assert_eq!(who["home_router"], A);
    let text = env.ok("me", &["whoami"]);
    assert!(text.contains(&format!("Address:     {address}")), "{text}");
    assert!(
        text.contains("Home router: ws://127.0.0.1:9001\n"),
        "{text}"
    );

    // CHAT_SERVER is a router given too.
    env.cmd("env")
        .env("CHAT_SERVER", B)
        .arg("init")
        .assert()
        .success();
    assert_eq!(env.json("env", &["whoami", "--json"])["home_router"], B);

    // So is config.toml's router.
    std::fs::write(env.config(), format!("router = \"{C}\"\n")).unwrap();
    let init = env.json("conf", &["init", "--json"]);
    assert_eq!(init["home_router"], C);
    assert_eq!(
        init["address"],
        format!("chat-p2p:{}@{C}", init["public_key"].as_str().unwrap()).as_str()
    );
}

#[test]
fn without_a_router_the_address_is_the_bare_key_until_one_is_used() {
    let env = Env::new();
    let key = env.init("me");
    assert_eq!(env.ok("me", &["whoami", "--address"]), format!("{key}\n"));
    let who = env.json("me", &["whoami", "--json"]);
    assert_eq!(who["home_router"], Value::Null);
    assert_eq!(who["address"], key.as_str());
    let text = env.ok("me", &["whoami"]);
    assert!(
        text.contains("none recorded yet") && text.contains("chat-p2p --profile me home set URL"),
        "{text}"
    );
    // whoami writes nothing: still no home.
    assert_eq!(
        env.json("me", &["home", "--json"])["home_router"],
        Value::Null
    );
    env.fails("me", &["whoami", "--address", "--json"], 2);
    env.fails("me", &["whoami", "--address", "--key"], 2);
}

#[test]
fn add_contact_takes_an_address_a_key_at_a_router_or_a_bare_key() {
    let env = Env::new();
    init_at(&env, "me", A);
    let (bob, carol, dave) = (key(), key(), key());
    let out = env.ok(
        "me",
        &[
            "add-contact",
            "bob",
            &format!("chat-p2p:{bob}@wss://B.example"),
        ],
    );
    assert!(
        out.contains("Added contact 'bob'") && out.contains("at wss://b.example."),
        "{out}"
    );
    env.ok("me", &["add-contact", "carol", &format!("{carol}@{C}")]);
    let out = env.ok("me", &["add-contact", "dave", &dave]);
    assert!(out.contains("on the same router as you"), "{out}");

    let b = contact_of(&env, "me", "bob");
    assert_eq!(b["router"], B);
    assert_eq!(
        b["address"],
        format!("chat-p2p:{bob}@wss://b.example").as_str()
    );
    assert_eq!(contact_of(&env, "me", "carol")["router"], C);
    let d = contact_of(&env, "me", "dave");
    assert_eq!(d["router"], Value::Null, "same as mine");
    assert_eq!(
        d["address"],
        format!("chat-p2p:{dave}@ws://127.0.0.1:9001").as_str(),
        "a contact on my router has my router in its address"
    );

    let list = env.ok("me", &["contacts"]);
    let line = |name: &str| {
        list.lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} in {list}"))
            .to_owned()
    };
    assert!(list.lines().next().unwrap().ends_with("ROUTER"), "{list}");
    assert!(line("bob").ends_with("wss://b.example"), "{list}");
    assert!(line("carol").ends_with(C), "{list}");
    assert!(line("dave").ends_with("(same as mine)"), "{list}");

    // --json of add-contact has the same shape.
    let eve = key();
    let added = env.json(
        "me",
        &[
            "add-contact",
            "eve",
            &eve,
            "--router",
            "wss://b.example",
            "--json",
        ],
    );
    assert_eq!(added["router"], B);
    assert_eq!(
        added["address"],
        format!("chat-p2p:{eve}@wss://b.example").as_str()
    );
}

#[test]
fn router_flag_agrees_with_the_address_or_is_refused() {
    let env = Env::new();
    init_at(&env, "me", A);
    let bob = key();
    let address = format!("chat-p2p:{bob}@wss://b.example");
    let err = env.fails("me", &["add-contact", "bob", &address, "--router", C], 2);
    assert!(
        err.contains("the address says they receive at wss://b.example")
            && err.contains("--router says ws://c.example:7000/chat"),
        "{err}"
    );
    assert_eq!(
        env.json("me", &["contacts", "--json"]),
        Value::Array(vec![])
    );
    // The same router twice is fine.
    env.ok(
        "me",
        &[
            "add-contact",
            "bob",
            &address,
            "--router",
            "wss://b.example/ws",
        ],
    );
    assert_eq!(contact_of(&env, "me", "bob")["router"], B);
}

#[test]
fn a_contact_router_changes_by_adding_again_or_set_contact_router() {
    let env = Env::new();
    init_at(&env, "me", A);
    let bob = key();
    env.ok("me", &["add-contact", "bob", &bob]);
    // The same key again with a router: updated, and said.
    let out = env.ok(
        "me",
        &[
            "add-contact",
            "bob",
            &format!("chat-p2p:{bob}@wss://b.example"),
        ],
    );
    assert!(
        out.contains("Contact 'bob' now receives at wss://b.example (was: (same as mine))"),
        "{out}"
    );
    assert_eq!(contact_of(&env, "me", "bob")["router"], B);
    // Again: nothing to change, still a success.
    let out = env.ok(
        "me",
        &["add-contact", "bob", &format!("{bob}@wss://b.example")],
    );
    assert!(out.contains("nothing changed"), "{out}");
    // A bare key does not undo a router.
    let out = env.ok("me", &["add-contact", "bob", &bob]);
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(contact_of(&env, "me", "bob")["router"], B);
    // Another name for the same key is still refused.
    let err = env.fails("me", &["add-contact", "robert", &bob], 1);
    assert!(err.contains("already saved as contact 'bob'"), "{err}");

    let moved = env.json("me", &["set-contact-router", "bob", C, "--json"]);
    assert_eq!(moved["router"], C);
    assert_eq!(moved["address"], format!("chat-p2p:{bob}@{C}").as_str());
    let out = env.ok("me", &["set-contact-router", "bob", "--same-as-mine"]);
    assert!(
        out.contains("Contact 'bob' is now on the same router as you"),
        "{out}"
    );
    assert_eq!(contact_of(&env, "me", "bob")["router"], Value::Null);
    let out = env.ok("me", &["set-contact-router", "bob", "--same-as-mine"]);
    assert!(out.contains("nothing changed"), "{out}");

    env.fails("me", &["set-contact-router", "bob"], 2);
    env.fails("me", &["set-contact-router", "bob", C, "--same-as-mine"], 2);
    let err = env.fails("me", &["set-contact-router", "nobody", C], 1);
    assert!(err.contains("no contact named 'nobody'"), "{err}");
}

#[test]
fn bad_and_malicious_addresses_are_refused_and_nothing_is_saved() {
    let env = Env::new();
    init_at(&env, "me", A);
    env.ok("me", &["add-contact", "bob", &key()]);
    let before = env.dump("me");
    let k = key();
    let cases = [
        (
            format!("chat-p2p:{}@wss://r.example", &k[..20]),
            "the key in this address is not valid",
        ),
        (
            "chat-p2p:@wss://r.example".to_owned(),
            "the key in this address is not valid",
        ),
        (
            "not-a-key".to_owned(),
            "the key in this address is not valid",
        ),
        (format!("chat-p2p:{k}@http://r.example"), "ws:// or wss://"),
        (
            format!("chat-p2p:{k}@wss://user:pw@r.example"),
            "credentials",
        ),
        (format!("chat-p2p:{k}@wss://r.example/ws?x=1"), "query"),
        (format!("chat-p2p:{k}@wss://r.example/ws#top"), "fragment"),
        (
            format!("chat-p2p:{k}@wss://r.ex\u{1b}[2Jample"),
            "control characters",
        ),
        (
            format!("chat-p2p:{k}@wss://r.example/\u{202e}"),
            "plain ASCII",
        ),
        (format!("chat-p2p:{k}@"), "router"),
        (format!("chat-p2p:{k}@wss://{}", "a".repeat(400)), "longer"),
    ];
    for (address, why) in &cases {
        let err = env.fails("me", &["add-contact", "eve", address], 2);
        assert!(err.contains(why), "{address:?}: expected '{why}' in: {err}");
        assert!(
            !err.contains('\u{1b}') && !err.contains('\u{202e}'),
            "unescaped: {err:?}"
        );
    }
    let err = env.fails(
        "me",
        &[
            "add-contact",
            "eve",
            &k,
            "--router",
            "ws://x\u{1b}]0;pwned\u{7}",
        ],
        2,
    );
    assert!(
        err.starts_with("error: --router:") && err.contains("\\u{1b}"),
        "{err:?}"
    );
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
    for url in [
        "https://r.example",
        "wss://u:p@r.example",
        "wss://r.example/?t=1",
        "r.example",
    ] {
        let err = env.fails("me", &["set-contact-router", "bob", url], 2);
        assert!(err.starts_with("error: URL:"), "{err}");
        let err = env.fails("me", &["home", "set", url], 2);
        assert!(err.starts_with("error: URL:"), "{err}");
    }
    assert_eq!(env.dump("me"), before, "nothing was saved");
    assert_eq!(env.json("me", &["home", "--json"])["home_router"], A);
}

#[test]
fn home_shows_and_moves_the_home_router() {
    let env = Env::new();
    let me = init_at(&env, "me", A);
    let (bob, carol) = (key(), key());
    env.ok("me", &["add-contact", "bob", &bob]);
    env.ok("me", &["add-contact", "carol", &format!("{carol}@{C}")]);
    let home = env.json("me", &["home", "--json"]);
    assert_eq!(home["home_router"], A);
    assert_eq!(home["previous"], Value::Null);
    assert_eq!(
        home["address"],
        format!("chat-p2p:{me}@ws://127.0.0.1:9001").as_str()
    );
    let text = env.ok("me", &["home"]);
    assert!(
        text.contains("Home router: ws://127.0.0.1:9001") && !text.contains("Previous"),
        "{text}"
    );

    let out = env.ok("me", &["home", "set", "wss://B.example"]);
    assert!(
        out.contains(
            "Your home router is now wss://b.example (was ws://127.0.0.1:9001). 2 contacts"
        ),
        "{out}"
    );
    assert!(
        out.contains("next sync or chat") && out.contains("fetched once more"),
        "{out}"
    );
    assert!(
        out.contains(&format!("chat-p2p:{me}@wss://b.example")),
        "{out}"
    );
    // Bob did not move: he stays at my old home.
    assert_eq!(contact_of(&env, "me", "bob")["router"], A);
    assert_eq!(contact_of(&env, "me", "carol")["router"], C);
    let text = env.ok("me", &["home"]);
    assert!(
        text.contains("Home router: wss://b.example")
            && text.contains("Previous:    ws://127.0.0.1:9001"),
        "{text}"
    );
    assert_eq!(
        env.ok("me", &["whoami", "--address"]),
        format!("chat-p2p:{me}@wss://b.example\n")
    );

    // The same router again: nothing changed, exit 0.
    let out = env.ok("me", &["home", "set", "wss://b.example/ws"]);
    assert!(out.contains("nothing changed"), "{out}");
    let same = env.json("me", &["home", "set", B, "--json"]);
    assert_eq!(same["changed"], false);
    assert_eq!(same["told"], 0);

    let moved = env.json("me", &["home", "set", C, "--json"]);
    assert_eq!(moved["changed"], true);
    assert_eq!(moved["told"], 2);
    assert_eq!(moved["home_router"], C);
    assert_eq!(moved["previous"], B);
    assert_eq!(moved["address"], format!("chat-p2p:{me}@{C}").as_str());

    // A router in CHAT_SERVER that is not the new home is pointed out.
    let out = env
        .cmd("me")
        .env("CHAT_SERVER", A)
        .args(["home", "set", B])
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("CHAT_SERVER names the router ws://127.0.0.1:9001"),
        "{err}"
    );
}

#[test]
fn home_without_an_identity_says_to_run_init() {
    let env = Env::new();
    let err = env.fails("nobody", &["home"], 1);
    assert!(
        err.contains("run 'chat-p2p --profile nobody init'"),
        "{err}"
    );
    env.fails("nobody", &["home", "set", B], 1);
}

#[test]
fn a_profile_from_before_home_routers_keeps_its_contacts_on_the_same_router() {
    let env = Env::new();
    let me = env.init("me");
    let bob = key();
    env.ok("me", &["add-contact", "bob", &bob]);
    env.ok(
        "me",
        &["send", "--queue", "bob", "queued before the upgrade"],
    );
    // Back to schema 9, as the release before home routers left it.
    let conn = rusqlite::Connection::open(env.db("me")).unwrap();
    conn.execute_batch(
        "DROP INDEX messages_outbox;
         DROP TABLE home; DROP TABLE peer_routers; DROP TABLE home_outbox;
         ALTER TABLE contacts DROP COLUMN router;
         DELETE FROM refinery_schema_history WHERE version >= 10;",
    )
    .unwrap();
    drop(conn);
    let outbox = env.ok("me", &["outbox"]);
    assert!(outbox.contains("queued before the upgrade"), "{outbox}");

    let b = contact_of(&env, "me", "bob");
    assert_eq!(b["router"], Value::Null);
    assert_eq!(
        b["address"],
        bob.as_str(),
        "no home recorded yet: a bare key"
    );
    assert!(env.ok("me", &["contacts"]).contains("(same as mine)"));
    assert_eq!(env.ok("me", &["whoami", "--address"]), format!("{me}\n"));
    // Recording a home gives everyone an address.
    env.ok("me", &["home", "set", A]);
    assert_eq!(
        contact_of(&env, "me", "bob")["address"],
        format!("chat-p2p:{bob}@ws://127.0.0.1:9001").as_str()
    );
}

#[test]
fn export_and_import_carry_routers() {
    let env = Env::new();
    let me = init_at(&env, "me", A);
    let (bob, carol) = (key(), key());
    env.ok(
        "me",
        &["add-contact", "bob", &format!("{bob}@wss://b.example")],
    );
    env.ok("me", &["add-contact", "carol", &carol]);
    let doc = env.json("me", &["export", "--json"]);
    assert_eq!(doc["home_router"], A);
    let routers: Vec<_> = doc["contacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["router"].clone())
        .collect();
    assert_eq!(routers, [Value::from(B), Value::Null]);
    let lines = env.ok("me", &["export", "--jsonl"]);
    let header: Value = serde_json::from_str(lines.lines().next().unwrap()).unwrap();
    assert_eq!(header["home_router"], A);

    // A restore into a fresh profile takes the identity, its home and
    // every contact's router.
    let file = env.path("me.json");
    env.ok(
        "me",
        &[
            "export",
            "--include-secret",
            "--plaintext-secret",
            "-o",
            file.to_str().unwrap(),
        ],
    );
    let report = env.json("copy", &["import", file.to_str().unwrap(), "--json"]);
    assert_eq!(report["home_adopted"], A);
    assert_eq!(
        env.ok("copy", &["whoami", "--address"]),
        format!("chat-p2p:{me}@ws://127.0.0.1:9001\n")
    );
    assert_eq!(contact_of(&env, "copy", "bob")["router"], B);
    assert_eq!(contact_of(&env, "copy", "carol")["router"], Value::Null);

    // Into another identity's profile, at another home: carol was on the
    // exporter's home, so she is pinned there; bob's router here is kept,
    // and the difference is said.
    init_at(&env, "other", C);
    env.ok("other", &["add-contact", "bob", &bob]);
    let plain = env.path("plain.json");
    env.ok("me", &["export", "-o", plain.to_str().unwrap()]);
    let report = env.json(
        "other",
        &[
            "import",
            "--other-identity",
            plain.to_str().unwrap(),
            "--json",
        ],
    );
    assert_eq!(report["home_adopted"], Value::Null, "not its identity");
    assert_eq!(env.json("other", &["home", "--json"])["home_router"], C);
    assert_eq!(contact_of(&env, "other", "carol")["router"], A);
    assert_eq!(
        contact_of(&env, "other", "bob")["router"],
        Value::Null,
        "kept"
    );
    let notes = report["contact_notes"].as_array().unwrap();
    assert!(
        notes.iter().any(|n| {
            let n = n.as_str().unwrap();
            n.contains("'bob' kept its router") && n.contains("wss://b.example")
        }),
        "{notes:?}"
    );

    // Importing twice changes nothing.
    let again = env.json("copy", &["import", file.to_str().unwrap(), "--json"]);
    assert_eq!(again["contacts_added"], 0);
    assert!(
        again["contact_notes"].as_array().unwrap().is_empty(),
        "{again}"
    );
}

#[test]
fn an_import_with_a_bad_router_imports_nothing() {
    let env = Env::new();
    let me = init_at(&env, "me", A);
    let file = env.path("bad.jsonl");
    let mut bad = contact("eve", &key());
    bad["router"] = Value::from("wss://user:pw@evil.example");
    let text = [header(Some(&me)), bad]
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(&file, text).unwrap();
    let before = env.dump("me");
    let err = env.fails("me", &["import", file.to_str().unwrap()], 1);
    assert!(
        err.contains("credentials") && err.contains("Nothing was imported"),
        "{err}"
    );
    assert_eq!(env.dump("me"), before);
}

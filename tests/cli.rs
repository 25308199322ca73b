//! The foundation, driven through the real binary: profiles, identity and
//! contacts, and the refusals that protect a user's database.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command as StdCommand;

use common::Env;
use predicates::prelude::*;

/// A valid public key nobody in the test owns.
fn stranger_key() -> String {
    let home = Env::new();
    home.init("stranger")
}

#[test]
fn init_creates_a_private_profile_and_prints_the_key() {
    let home = Env::new();
    home.cmd("alice")
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains("Public key:"))
        .stdout(predicate::str::contains("Fingerprint:"));
    let key = home.key("alice");
    assert_eq!(key.len(), 44);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.db("alice")), 0o600);
        assert_eq!(mode(home.db("alice").parent().unwrap()), 0o700);
    }
}

#[test]
fn init_refuses_to_replace_an_identity_without_force() {
    let home = Env::new();
    let first = home.init("alice");
    home.cmd("alice")
        .arg("init")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already has an identity"))
        .stderr(predicate::str::contains("--force"));
    assert_eq!(home.key("alice"), first);

    home.cmd("alice")
        .args(["init", "--force", "--yes"])
        .assert()
        .success()
        .stderr(predicate::str::contains("replaced the identity"));
    assert_ne!(home.key("alice"), first);
}

#[test]
fn init_json_is_an_object() {
    let home = Env::new();
    let v = home.json("alice", &["init", "--json"]);
    assert_eq!(v["profile"], "alice");
    assert_eq!(v["public_key"].as_str().unwrap().len(), 44);
    assert!(v["fingerprint"].is_string());
}

#[test]
fn whoami_in_every_form() {
    let home = Env::new();
    let key = home.init("alice");
    let text = home.ok("alice", &["whoami"]);
    assert!(text.contains("Profile:     alice"), "{text}");
    assert!(text.contains(&key));
    assert!(text.contains(&home.db("alice").display().to_string()));

    assert_eq!(home.ok("alice", &["whoami", "--key"]), format!("{key}\n"));

    let v = home.json("alice", &["whoami", "--json"]);
    assert_eq!(v["public_key"], key.as_str());
    assert_eq!(v["profile"], "alice");
    assert_eq!(
        v["database"].as_str().unwrap(),
        home.db("alice").to_str().unwrap()
    );
    assert_eq!(v["fingerprint"].as_str().unwrap().len(), 24);
}

#[test]
fn the_secret_key_is_never_printed() {
    let home = Env::new();
    let init = home.ok("alice", &["init", "--json"]);
    let conn = rusqlite::Connection::open(home.db("alice")).unwrap();
    let secret: Vec<u8> = conn
        .query_row("SELECT secret_key FROM identity", [], |r| r.get(0))
        .unwrap();
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&secret);
    let hex: String = secret.iter().map(|b| format!("{b:02x}")).collect();
    for out in [
        init,
        home.ok("alice", &["whoami"]),
        home.ok("alice", &["whoami", "--json"]),
    ] {
        assert!(!out.contains(&b64) && !out.contains(&hex));
    }
}

#[test]
fn commands_without_an_identity_say_to_run_init() {
    let home = Env::new();
    for args in [
        &["whoami"][..],
        &["contacts"],
        &["list-contacts"],
        &["remove-contact", "bob"],
    ] {
        home.cmd("bob")
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains(
                "no identity in profile 'bob': run 'chat-p2p --profile bob init'",
            ));
    }
    assert!(
        !home.db("bob").exists(),
        "a read-only command created a profile"
    );
    home.cmd("default")
        .arg("whoami")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("run 'chat-p2p init'"));
}

#[test]
fn contacts_add_list_rename_remove() {
    let home = Env::new();
    home.init("alice");
    let bob = stranger_key();
    let carol = stranger_key();
    home.cmd("alice")
        .args(["add-contact", "bob", &bob])
        .assert()
        .success()
        .stdout(predicate::str::contains("Added contact 'bob'"));
    home.cmd("alice")
        .args(["add-contact", "carol", &carol])
        .assert()
        .success();

    let list = home.ok("alice", &["list-contacts"]);
    assert!(list.contains("bob") && list.contains(&bob), "{list}");
    assert_eq!(list, home.ok("alice", &["contacts"]));

    let v = home.json("alice", &["contacts", "--json"]);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bob", "carol"]);
    assert_eq!(v[0]["public_key"], bob.as_str());

    home.cmd("alice")
        .args(["rename-contact", "BOB", "robert"])
        .assert()
        .success();
    let v = home.json("alice", &["contacts", "--json"]);
    assert_eq!(v[0]["name"], "carol");
    assert_eq!(v[1]["name"], "robert");
    assert_eq!(v[1]["public_key"], bob.as_str());

    home.cmd("alice")
        .args(["remove-contact", "robert"])
        .assert()
        .success()
        .stdout(predicate::str::contains("history with this key is kept"));
    let v = home.json("alice", &["contacts", "--json"]);
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn an_empty_contact_list_says_how_to_add_one() {
    let home = Env::new();
    home.init("alice");
    home.cmd("alice")
        .arg("contacts")
        .assert()
        .success()
        .stdout(predicate::str::contains("chat-p2p add-contact"));
    assert_eq!(
        home.json("alice", &["contacts", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn malformed_keys_are_bad_usage() {
    let home = Env::new();
    home.init("alice");
    let short = "A".repeat(43);
    let off_curve = {
        use base64::Engine as _;
        let mut b = [0u8; 32];
        b[0] = 2;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    for (key, why) in [
        ("not-a-key", "not standard base64"),
        ("AAAA", "decodes to 3 bytes"),
        (short.as_str(), "not standard base64"),
        (off_curve.as_str(), "not a valid ed25519 point"),
    ] {
        home.cmd("alice")
            .args(["add-contact", "bob", key])
            .assert()
            .code(2)
            .stderr(predicate::str::contains(why));
    }
    assert_eq!(
        home.json("alice", &["contacts", "--json"]),
        serde_json::json!([])
    );
}

#[test]
fn refuses_own_key_taken_names_and_taken_keys() {
    let home = Env::new();
    let me = home.init("alice");
    let bob = stranger_key();
    home.cmd("alice")
        .args(["add-contact", "me", &me])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("your own public key"));
    home.cmd("alice")
        .args(["add-contact", "bob", &bob])
        .assert()
        .success();
    home.cmd("alice")
        .args(["add-contact", "Bob", &stranger_key()])
        .assert()
        .code(1)
        .stderr(predicate::str::contains(
            "a contact named 'bob' already exists",
        ));
    home.cmd("alice")
        .args(["add-contact", "bobby", &bob])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("already saved as contact 'bob'"));
    home.cmd("alice")
        .args(["rename-contact", "nobody", "x"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("no contact named 'nobody'"));
    home.cmd("alice")
        .args(["remove-contact", "bobb"])
        .assert()
        .code(1)
        .stderr(predicate::str::contains("Did you mean 'bob'?"));
}

#[test]
fn refuses_empty_and_over_long_contact_names() {
    let home = Env::new();
    home.init("alice");
    let long = "x".repeat(65);
    for name in ["", "   ", long.as_str(), "tab\there"] {
        home.cmd("alice")
            .args(["add-contact", name, &stranger_key()])
            .assert()
            .code(2)
            .stderr(predicate::str::contains("contact name"));
    }
}

#[test]
fn bad_profile_names_are_bad_usage() {
    let home = Env::new();
    for name in ["", ".", "..", "a/b", "../x", "a\nb"] {
        home.cmd(name)
            .arg("init")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("profile name"));
    }
    home.cmd("default")
        .args(["--profile", "../../etc", "init"])
        .assert()
        .code(2);
    assert!(
        !home.home().exists() || fs::read_dir(home.home()).unwrap().count() == 0,
        "a refused profile name created something"
    );
}

#[test]
fn two_profiles_side_by_side_exchange_keys() {
    let home = Env::new();
    let alice = home.init("alice");
    let bob = home.init("bob");
    assert_ne!(alice, bob);
    home.cmd("alice")
        .args(["add-contact", "bob", &bob])
        .assert()
        .success();
    home.cmd("bob")
        .args(["add-contact", "alice", &alice])
        .assert()
        .success();
    assert_eq!(
        home.json("alice", &["contacts", "--json"])[0]["public_key"],
        bob.as_str()
    );
    assert_eq!(
        home.json("bob", &["contacts", "--json"])[0]["public_key"],
        alice.as_str()
    );
    // --profile beats CHAT_PROFILE.
    assert_eq!(
        home.ok("alice", &["--profile", "bob", "whoami", "--key"])
            .trim(),
        bob
    );
}

#[test]
fn a_garbage_file_is_refused_and_left_untouched() {
    let home = Env::new();
    let db = home.db("alice");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let garbage = b"this is my shopping list, not a database\n".repeat(100);
    fs::write(&db, &garbage).unwrap();
    for args in [&["init"][..], &["whoami"], &["contacts"]] {
        home.cmd("alice")
            .args(args)
            .assert()
            .code(1)
            .stderr(predicate::str::contains("is not a chat-p2p database"))
            .stderr(predicate::str::contains("left untouched"));
    }
    assert_eq!(fs::read(&db).unwrap(), garbage);
    let siblings: Vec<_> = fs::read_dir(db.parent().unwrap()).unwrap().collect();
    assert_eq!(siblings.len(), 1, "refusal left files behind");
}

#[test]
fn another_applications_database_is_refused_and_left_untouched() {
    let home = Env::new();
    let db = home.db("alice");
    fs::create_dir_all(db.parent().unwrap()).unwrap();
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch("CREATE TABLE recipes (id INTEGER PRIMARY KEY, name TEXT);")
        .unwrap();
    drop(conn);
    let before = fs::read(&db).unwrap();
    home.cmd("alice")
        .arg("whoami")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("another application"));
    assert_eq!(fs::read(&db).unwrap(), before);
}

#[test]
fn a_database_from_a_newer_version_is_refused_and_left_untouched() {
    let home = Env::new();
    home.init("alice");
    let db = home.db("alice");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute(
        "INSERT INTO refinery_schema_history (version, name, applied_on, checksum)
         VALUES (9999, 'from_the_future', '2030-01-01T00:00:00Z', '42')",
        [],
    )
    .unwrap();
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")
        .unwrap();
    drop(conn);
    let before = fs::read(&db).unwrap();
    home.cmd("alice")
        .arg("whoami")
        .assert()
        .code(1)
        .stderr(predicate::str::contains("newer chat-p2p"))
        .stderr(predicate::str::contains("schema version 9999"));
    assert_eq!(fs::read(&db).unwrap(), before);
}

#[test]
fn the_sqlite3_shell_opens_the_database() {
    let home = Env::new();
    let alice = home.init("alice");
    home.cmd("alice")
        .args(["add-contact", "bob", &stranger_key()])
        .assert()
        .success();
    let db = home.db("alice");
    let out = StdCommand::new("sqlite3")
        .arg(&db)
        .arg(".tables")
        .output()
        .expect("the sqlite3 shell is installed (.ci/run installs it)");
    assert!(out.status.success());
    let tables = String::from_utf8(out.stdout).unwrap();
    for table in ["identity", "contacts", "refinery_schema_history"] {
        assert!(tables.contains(table), "{table} missing from: {tables}");
    }
    let out = StdCommand::new("sqlite3")
        .arg(&db)
        .arg("SELECT public_key FROM identity; SELECT name FROM contacts;")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        format!("{alice}\nbob\n")
    );
}

#[test]
fn usage_errors_exit_2_and_help_exits_0() {
    let home = Env::new();
    home.cmd("alice").arg("frobnicate").assert().code(2);
    home.cmd("alice")
        .args(["add-contact", "bob"])
        .assert()
        .code(2);
    home.cmd("alice")
        .arg("--help")
        .assert()
        .success()
        .stdout(predicate::str::contains("add-contact"));
    home.cmd("alice").arg("--version").assert().success();
}

//! Errors that name the user's things, and the files people actually have:
//! a byte order mark, a folder given without --legacy, a legacy message
//! file for nobody, `init --force` from a script.

mod common;

use std::fs;
use std::path::PathBuf;

use chat_p2p::identity::Identity;
use common::*;
use serde_json::json;

const BOM: &str = "\u{feff}";

#[test]
fn an_export_starting_with_a_byte_order_mark_is_imported() {
    let env = Env::new();
    env.init("me");
    env.ok("me", &["add-contact", "bob", &key()]);
    let doc = env.ok("me", &["export", "--json"]);
    let jsonl = env.ok("me", &["export", "--jsonl"]);
    for (name, text) in [("bom.json", doc), ("bom.jsonl", jsonl)] {
        let file = env.path(name);
        fs::write(&file, format!("{BOM}{text}")).unwrap();
        let profile = format!("copy-{name}").replace('.', "-");
        let report = env.json(
            &profile,
            &["import", "--other-identity", p(&file), "--json"],
        );
        assert_eq!(report["contacts_added"], 1, "{name}: {report}");
    }
}

/// The original client's files, each starting with a byte order mark.
fn legacy_with_bom(env: &Env, bob: &str) -> PathBuf {
    let dir = env.path("legacy");
    fs::create_dir_all(dir.join("messages")).unwrap();
    let me = Identity::generate();
    fs::write(dir.join("private.key"), *me.secret_bytes()).unwrap();
    let public = format!("{BOM}{}\n", me.public_key().to_base64());
    fs::write(dir.join("public.key"), public).unwrap();
    let contacts = json!({"contacts": {"bob": bob}});
    fs::write(dir.join("contacts.json"), format!("{BOM}{contacts}")).unwrap();
    let messages = json!([
        {"content": "hi bob", "timestamp": 1_700_000_000, "incoming": false},
        {"content": "hi", "timestamp": 1_700_000_060, "incoming": true}
    ]);
    fs::write(dir.join("messages/bob.json"), format!("{BOM}{messages}")).unwrap();
    dir
}

#[test]
fn legacy_files_with_a_byte_order_mark_are_imported_and_outgoing_ones_are_delivered() {
    let env = Env::new();
    let dir = legacy_with_bom(&env, &key());
    let report = env.json("me", &["import", "--legacy", p(&dir), "--json"]);
    assert_eq!(report["messages_added"], 2, "{report}");
    let history = env.json("me", &["history", "bob", "--json"]);
    // Not "sent" for ever: no receipt will ever come for them.
    assert_eq!(history[0]["status"], "delivered", "{history}");
    assert_eq!(history[0]["delivered_at"], "2023-11-14T22:13:20.000Z");
    let conn = rusqlite::Connection::open(env.db("me")).unwrap();
    let detail: String = conn
        .query_row(
            "SELECT detail FROM message_events WHERE status = 'delivered'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(detail.contains("assumed"), "{detail}");
}

#[test]
fn a_folder_without_legacy_gets_the_command_that_imports_it() {
    let env = Env::new();
    let dir = legacy_with_bom(&env, &key());
    let err = env.fails("me", &["import", p(&dir)], 2);
    assert!(err.contains("is a folder"), "{err}");
    let quoted = format!("import --legacy '{}'", p(&dir));
    assert!(err.contains(&quoted), "{err}");
    assert!(!env.db("me").exists(), "a refused import created a profile");
}

#[test]
fn a_legacy_message_file_for_nobody_is_refused_or_skipped_with_a_flag() {
    let env = Env::new();
    let dir = legacy_with_bom(&env, &key());
    let stray = dir.join("messages/someone-else.json");
    fs::write(&stray, "[]").unwrap();
    let err = env.fails("me", &["import", "--legacy", p(&dir)], 1);
    assert!(err.contains("someone-else.json"), "{err}");
    assert!(err.contains("--skip-unknown"), "{err}");
    assert!(!env.db("me").exists(), "nothing is imported");

    let args = ["import", "--legacy", "--skip-unknown", p(&dir), "--json"];
    let report = env.json("me", &args);
    assert_eq!(report["messages_added"], 2, "{report}");
    assert_eq!(report["skipped_files"], json!([p(&stray)]), "{report}");
    let text = env.ok("again", &["import", "--legacy", "--skip-unknown", p(&dir)]);
    assert!(
        text.contains("skipped") && text.contains("someone-else.json"),
        "{text}"
    );
    // The flag only makes sense with --legacy.
    env.fails("me", &["import", "--skip-unknown", p(&stray)], 2);
}

#[test]
fn init_force_asks_first_and_keeps_a_private_backup() {
    let env = Env::new();
    let old = env.init("me");
    // No terminal and no --yes: a usage error, nothing changed.
    let err = env.fails("me", &["init", "--force"], 2);
    assert!(
        err.contains("--yes") && err.contains("not a terminal"),
        "{err}"
    );
    assert_eq!(env.key("me"), old);

    let out = common::run_ok(env.cmd("me").args(["init", "--force", "--yes", "--json"]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["replaced"], old.as_str());
    let backup = PathBuf::from(v["backup"].as_str().unwrap());
    assert_eq!(backup.parent().unwrap(), env.home().join("me"));
    let name = backup.file_name().unwrap().to_str().unwrap();
    assert!(
        name.starts_with("identity-backup-20") && name.ends_with("Z.jsonl"),
        "{name}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&backup).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(p(&backup)), "{stderr}");
    // The backup restores the old identity.
    env.ok("me", &["import", "--force", p(&backup)]);
    assert_eq!(env.key("me"), old);

    // --no-backup keeps none.
    env.ok("me", &["init", "--force", "--yes", "--no-backup"]);
    let backups = fs::read_dir(env.home().join("me"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            name.to_string_lossy().starts_with("identity-backup-")
        })
        .count();
    assert_eq!(backups, 1);
}

/// Runs `init --force` for `profile` in a real terminal (a private tmux
/// server), answers its question with `answer`, and returns the screen
/// once the command has exited.
fn init_force_on_a_terminal(env: &Env, profile: &str, answer: &str) -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let socket = format!("chat-p2p-init-{}-{n}", std::process::id());
    let tmux = |args: &[&str]| {
        let out = std::process::Command::new("tmux")
            .args(["-L", &socket])
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let command = format!(
        "env -i TERM=xterm CHAT_HOME={} CHAT_PROFILE={profile} {} init --force; \
         echo EXIT=$?; sleep 60",
        quote(p(&env.home())),
        quote(env!("CARGO_BIN_EXE_chat-p2p")),
    );
    tmux(&[
        "new-session",
        "-d",
        "-s",
        "t",
        "-x",
        "120",
        "-y",
        "30",
        &command,
    ]);
    let wait = |text: &str| {
        for _ in 0..200 {
            let screen = tmux(&["capture-pane", "-p", "-J", "-t", "t"]);
            if screen.contains(text) {
                return screen;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let screen = tmux(&["capture-pane", "-p", "-J", "-t", "t"]);
        tmux(&["kill-server"]);
        panic!("the screen never showed {text:?}:\n{screen}");
    };
    wait("[y/N]");
    tmux(&["send-keys", "-t", "t", answer, "Enter"]);
    let screen = wait("EXIT=");
    tmux(&["kill-server"]);
    screen
}

#[test]
fn init_force_on_a_terminal_replaces_only_when_told_yes() {
    let env = Env::new();
    let old = env.init("me");
    let screen = init_force_on_a_terminal(&env, "me", "n");
    assert!(screen.contains("nothing was changed"), "{screen}");
    assert!(screen.contains("EXIT=1"), "{screen}");
    assert_eq!(env.key("me"), old);

    let screen = init_force_on_a_terminal(&env, "me", "y");
    assert!(screen.contains("EXIT=0"), "{screen}");
    assert!(screen.contains("identity-backup-"), "{screen}");
    assert_ne!(env.key("me"), old);
}

#[test]
fn importing_legacy_files_again_settles_messages_an_older_import_left_sent() {
    let env = Env::new();
    let dir = legacy_with_bom(&env, &key());
    env.ok("me", &["import", "--legacy", p(&dir)]);
    // As an earlier chat-p2p left them: sent, never to be delivered.
    let conn = rusqlite::Connection::open(env.db("me")).unwrap();
    conn.execute_batch(
        "DELETE FROM message_events WHERE status = 'delivered';
         UPDATE messages SET status = 'sent', delivered_at = NULL WHERE direction = 'out';",
    )
    .unwrap();
    drop(conn);
    let report = env.json("me", &["import", "--legacy", p(&dir), "--json"]);
    assert_eq!(report["messages_added"], 0, "{report}");
    let history = env.json("me", &["history", "bob", "--json"]);
    assert_eq!(history[0]["status"], "delivered", "{history}");
    let conn = rusqlite::Connection::open(env.db("me")).unwrap();
    let events: Vec<(String, Option<String>)> = conn
        .prepare("SELECT e.status, e.detail FROM message_events e JOIN messages m ON m.id = e.message_id WHERE m.direction = 'out' ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(events[1].0, "delivered");
    assert!(events[1].1.as_deref().unwrap().contains("assumed"));
}

#[test]
fn init_force_still_replaces_a_damaged_identity_it_cannot_back_up() {
    let env = Env::new();
    env.init("me");
    let conn = rusqlite::Connection::open(env.db("me")).unwrap();
    // A public key that does not belong to the secret key beside it.
    conn.execute("UPDATE identity SET public_key = ?1", [key()])
        .unwrap();
    drop(conn);
    let out = env
        .cmd("me")
        .args(["init", "--force", "--yes", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("no backup"), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["backup"].is_null(), "{v}");
    env.ok("me", &["whoami"]);
}

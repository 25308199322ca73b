//! config.toml and its precedence, `config`, `profiles`, completions, the
//! manual page, `--color`, router URL hints and `doctor`, all through the
//! real binary.

mod common;

use std::fs;

use common::{incoming, key, write_jsonl, Env, Router};
use serde_json::Value;

/// Where `config --json` says `key` came from, and its value.
fn setting(v: &Value, key: &str) -> (String, Value) {
    let s = v["settings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no {key} in {v}"));
    (s["source"].as_str().unwrap().to_owned(), s["value"].clone())
}

#[test]
fn settings_come_from_flag_then_env_then_file_then_default() {
    let env = Env::new();
    let config = |cmd: &mut assert_cmd::Command| -> Value {
        let out = cmd.args(["config", "--json"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    // Nothing set: defaults.
    let v = config(env.cmd("x").env_remove("CHAT_PROFILE"));
    assert_eq!(setting(&v, "profile"), ("default".into(), "default".into()));
    assert_eq!(
        setting(&v, "router"),
        ("default".into(), "ws://localhost:8080/ws".into())
    );
    assert_eq!(setting(&v, "display.utc"), ("default".into(), false.into()));
    assert_eq!(v["file_exists"], false);

    // The file.
    fs::write(
        env.config(),
        "profile = \"work\"\nrouter = \"ws://127.0.0.1:9/ws\"\n[display]\nutc = true\ncolor = \"never\"\n",
    )
    .unwrap();
    let v = config(env.cmd("x").env_remove("CHAT_PROFILE"));
    assert_eq!(setting(&v, "profile"), ("file".into(), "work".into()));
    assert_eq!(setting(&v, "router").0, "file");
    assert_eq!(setting(&v, "display.utc"), ("file".into(), true.into()));
    assert_eq!(
        setting(&v, "display.color"),
        ("file".into(), "never".into())
    );
    // ...is what commands use: the file's profile and router.
    env.cmd("x")
        .env_remove("CHAT_PROFILE")
        .arg("init")
        .assert()
        .success();
    assert!(env.db("work").exists());
    let err = env.fails("work", &["sync", "--timeout", "2"], 1);
    assert!(err.contains("127.0.0.1:9"), "{err}");

    // The environment beats the file.
    let v = config(
        env.cmd("bob")
            .env("CHAT_SERVER", "ws://127.0.0.1:7/ws")
            .env("CHAT_DISPLAY_UTC", "0")
            .env("CLICOLOR_FORCE", "1"),
    );
    assert_eq!(setting(&v, "profile"), ("env".into(), "bob".into()));
    assert_eq!(setting(&v, "router").0, "env");
    assert_eq!(setting(&v, "display.utc"), ("env".into(), false.into()));
    assert_eq!(
        setting(&v, "display.color"),
        ("env".into(), "always".into())
    );

    // A flag beats the environment (before or after the command).
    let v = config(
        env.cmd("bob")
            .args(["--profile", "carol", "--color", "auto"]),
    );
    assert_eq!(setting(&v, "profile"), ("flag".into(), "carol".into()));
    assert_eq!(setting(&v, "display.color"), ("flag".into(), "auto".into()));
    let out = env
        .cmd("bob")
        .args(["config", "get", "profile", "--profile", "dave"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "dave");
    let err = env.fails(
        "work",
        &["sync", "--timeout", "2", "--server", "ws://127.0.0.1:8/ws"],
        1,
    );
    assert!(err.contains("127.0.0.1:8"), "{err}");
}

#[test]
fn config_set_checks_keys_and_values() {
    let env = Env::new();
    let err = env.fails("a", &["config", "set", "colour", "never"], 2);
    assert!(err.contains("unknown setting 'colour'"), "{err}");
    assert!(
        err.contains("display.color") && err.contains("notify.bell"),
        "{err}"
    );
    let err = env.fails("a", &["config", "set", "display.color", "sometimes"], 2);
    assert!(err.contains("auto, always or never"), "{err}");
    let err = env.fails("a", &["config", "set", "router", "http://x/ws"], 2);
    assert!(err.contains("ws://"), "{err}");
    let err = env.fails("a", &["config", "get", "nope"], 2);
    assert!(err.contains("unknown setting"), "{err}");
    assert!(!env.config().exists(), "nothing written on a refusal");

    env.ok("a", &["config", "set", "notify.bell", "yes"]);
    env.ok("a", &["config", "set", "router", "ws://example.org:8080"]);
    let text = fs::read_to_string(env.config()).unwrap();
    assert!(text.contains("bell = true"), "{text}");
    assert!(
        text.contains("router = \"ws://example.org:8080/ws\""),
        "completed with /ws: {text}"
    );
    assert_eq!(
        env.ok("a", &["config", "get", "notify.bell"]).trim(),
        "true"
    );
    env.ok("a", &["config", "unset", "notify.bell"]);
    assert_eq!(
        env.ok("a", &["config", "get", "notify.bell"]).trim(),
        "false"
    );
}

#[test]
fn a_broken_config_file_is_named_and_can_be_repaired() {
    let env = Env::new();
    fs::write(env.config(), "[notify]\nbell = \"loud\"\n").unwrap();
    let err = env.fails("a", &["whoami"], 1);
    assert!(
        err.contains("config.toml") && err.contains("notify.bell"),
        "{err}"
    );
    // doctor reports it...
    let (code, v) = doctor(&env, "a", &["--offline"]);
    assert_eq!(code, 1);
    assert_eq!(check(&v, "config")["status"], "fail", "{v:#}");
    // ...and config set still works, and repairs it.
    env.ok("a", &["config", "set", "notify.bell", "false"]);
    env.ok("a", &["init"]);
    fs::write(env.config(), "router = [").unwrap();
    let err = env.fails("a", &["whoami"], 1);
    assert!(err.contains("not valid TOML"), "{err}");
}

#[test]
fn profiles_lists_each_profile_with_its_key() {
    let env = Env::new();
    let out = env.ok("a", &["profiles"]);
    assert!(out.contains("No profiles"), "{out}");
    let alice = env.init("alice");
    env.init("bob");
    let list = env.json("bob", &["profiles", "--json"]);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "alice");
    assert_eq!(list[0]["public_key"], alice.as_str());
    assert_eq!(list[0]["identity"], true);
    assert_eq!(list[0]["messages"], 0);
    assert_eq!(list[0]["current"], false);
    assert_eq!(list[1]["current"], true);
    assert!(list[1]["fingerprint"].as_str().unwrap().len() == 24);
    let text = env.ok("bob", &["profiles"]);
    assert!(text.contains("* bob"), "{text}");
}

#[test]
fn completions_are_written_for_every_shell_and_complete_contacts() {
    let env = Env::new();
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let script = env.ok("a", &["completions", shell]);
        assert!(script.contains("chat-p2p"), "{shell}: {script}");
        assert!(script.contains("COMPLETE"), "{shell}: {script}");
    }
    env.fails("a", &["completions", "tcsh"], 2);

    env.init("a");
    env.ok("a", &["add-contact", "bob", &key()]);
    env.ok("a", &["add-contact", "bella", &key()]);
    env.ok("a", &["add-contact", "carol", &key()]);
    let complete = |words: &[&str]| -> String {
        let out = common::run_ok(env.cmd("a").env("COMPLETE", "fish").arg("--").args(words));
        String::from_utf8(out.stdout).unwrap()
    };
    let names = complete(&["chat-p2p", "send", "b"]);
    assert!(names.contains("bob") && names.contains("bella"), "{names}");
    assert!(!names.contains("carol"), "{names}");
    let names = complete(&["chat-p2p", "chat", "c"]);
    assert!(names.contains("carol"), "{names}");
    let cmds = complete(&["chat-p2p", "doc"]);
    assert!(cmds.contains("doctor"), "{cmds}");
    let profiles = complete(&["chat-p2p", "--profile", ""]);
    assert!(profiles.lines().any(|l| l.starts_with('a')), "{profiles}");
}

#[test]
fn the_manual_page_renders() {
    let env = Env::new();
    let page = env.ok("a", &["man"]);
    assert!(page.contains(".TH chat-p2p 1"), "{page}");
    assert!(page.contains("doctor"), "{page}");
    let dir = env.path("man");
    env.ok("a", &["man", "--dir", dir.to_str().unwrap()]);
    assert!(dir.join("chat-p2p.1").exists());
    assert!(dir.join("chat-p2p-send.1").exists());
}

#[test]
fn color_follows_the_flag_then_no_color_and_clicolor_force() {
    let env = Env::new();
    env.init("a");
    let peer = key();
    let file = env.path("in.jsonl");
    write_jsonl(
        &file,
        &[
            common::header(None),
            common::contact("bob", &peer),
            incoming(&common::id(1), &peer, "hello", "2026-01-01T10:00:00.000Z"),
        ],
    );
    env.ok("a", &["import", "--other-identity", file.to_str().unwrap()]);
    let history = |extra: &[(&str, &str)], args: &[&str]| -> String {
        let mut cmd = env.cmd("a");
        for (k, v) in extra {
            cmd.env(k, v);
        }
        let out = cmd.arg("history").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let esc = |s: &str| s.contains('\u{1b}');
    assert!(!esc(&history(&[], &[])), "a pipe gets no colour");
    assert!(esc(&history(&[("CLICOLOR_FORCE", "1")], &[])));
    assert!(esc(&history(&[], &["--color", "always"])));
    assert!(!esc(&history(
        &[("CLICOLOR_FORCE", "1")],
        &["--color", "never"]
    )));
    assert!(!esc(&history(
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
        &[]
    )));
    assert!(!esc(&history(&[("TERM", "dumb")], &["--color", "auto"])));
    fs::write(env.config(), "[display]\ncolor = \"always\"\n").unwrap();
    assert!(esc(&history(&[], &[])), "the file says always");
    assert!(!esc(&history(&[("NO_COLOR", "1")], &[])), "env beats file");
}

#[test]
fn a_router_url_without_ws_is_completed_and_a_wrong_path_gets_a_hint() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.init("a");
    let base = router.url().trim_end_matches("/ws").to_owned();
    // No path at all: completed with /ws, and it works.
    env.ok("a", &["sync", "--timeout", "5", "--server", &base]);
    // A wrong path: a hint naming /ws, not a bare 404.
    let err = env.fails(
        "a",
        &[
            "sync",
            "--timeout",
            "5",
            "--server",
            &format!("{base}/chat"),
        ],
        1,
    );
    assert!(err.contains("404"), "{err}");
    assert!(err.contains(&format!("try {base}/ws")), "{err}");
    // wss:// against a plain router: a hint, not a silent timeout.
    let tls = base.replacen("ws://", "wss://", 1);
    let err = env.fails("a", &["sync", "--timeout", "2", "--server", &tls], 1);
    assert!(err.contains("plain ws://") && err.contains(&base), "{err}");
}

/// `doctor --json`, its exit code and each check's status by name.
fn doctor(env: &Env, profile: &str, args: &[&str]) -> (i32, Value) {
    let out = env
        .cmd(profile)
        .args(["doctor", "--json"])
        .args(args)
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), v)
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {name} check in {v}"))
}

#[test]
fn doctor_passes_a_healthy_profile_with_its_router() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.init("a");
    env.ok("a", &["config", "set", "router", &router.url()]);
    let (code, v) = doctor(&env, "a", &[]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    for name in [
        "config",
        "database",
        "permissions",
        "schema",
        "integrity",
        "search index",
        "identity",
        "outbox",
        "router",
        "clock",
        "processes",
    ] {
        assert_eq!(check(&v, name)["status"], "ok", "{name}: {v:#}");
    }
    assert!(check(&v, "clock")["detail"]
        .as_str()
        .unwrap()
        .starts_with("within"));
    let text = env.ok("a", &["doctor"]);
    assert!(
        text.contains("router") && !text.contains('\u{1b}'),
        "{text}"
    );
}

#[cfg(unix)]
#[test]
fn doctor_fails_on_wrong_permissions_and_says_how_to_fix() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::new();
    env.init("a");
    fs::set_permissions(env.db("a"), fs::Permissions::from_mode(0o644)).unwrap();
    let (code, v) = doctor(&env, "a", &["--offline"]);
    assert_eq!(code, 1, "{v:#}");
    let c = check(&v, "permissions");
    assert_eq!(c["status"], "fail");
    assert!(c["detail"].as_str().unwrap().contains("0644"), "{c}");
    assert!(c["fix"].as_str().unwrap().starts_with("chmod 600 "), "{c}");
    let err = env.fails("a", &["doctor", "--offline"], 1);
    assert!(err.contains("1 check(s) failed"), "{err}");
}

#[test]
fn doctor_fails_on_a_damaged_database_and_a_damaged_index() {
    let env = Env::new();
    env.init("a");
    let peer = key();
    let file = env.path("in.jsonl");
    let records: Vec<Value> = std::iter::once(common::header(None))
        .chain((0..300).map(|i| {
            incoming(
                &common::id(i),
                &peer,
                &format!("message number {i} {}", "x".repeat(200)),
                "2026-01-01T10:00:00.000Z",
            )
        }))
        .collect();
    write_jsonl(&file, &records);
    env.ok("a", &["import", "--other-identity", file.to_str().unwrap()]);

    // The index out of step with the messages (a write that bypassed it).
    {
        let conn = rusqlite::Connection::open(env.db("a")).unwrap();
        conn.execute_batch(
            "DROP TRIGGER messages_fts_delete; DELETE FROM messages WHERE id % 2 = 0;",
        )
        .unwrap();
    }
    let (code, v) = doctor(&env, "a", &["--offline"]);
    assert_eq!(code, 1, "{v:#}");
    let c = check(&v, "search index");
    assert_eq!(c["status"], "fail", "{v:#}");
    assert!(c["fix"].as_str().unwrap().contains("'rebuild'"), "{c}");

    // Bytes overwritten in the middle of the file.
    let env = Env::new();
    env.init("a");
    env.ok("a", &["import", "--other-identity", file.to_str().unwrap()]);
    let db = env.db("a");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .unwrap();
    }
    let mut bytes = fs::read(&db).unwrap();
    let len = bytes.len();
    for b in &mut bytes[len / 2..len / 2 + 4096] {
        *b = 0x5a;
    }
    fs::write(&db, bytes).unwrap();
    let (code, v) = doctor(&env, "a", &["--offline"]);
    assert_eq!(code, 1, "{v:#}");
    let c = check(&v, "integrity");
    assert_eq!(c["status"], "fail", "{v:#}");
    assert!(c["fix"].as_str().unwrap().contains(".recover"), "{c}");
}

#[test]
fn doctor_warns_of_the_copy_an_interrupted_import_left() {
    let env = Env::new();
    env.init("a");
    let (_, v) = doctor(&env, "a", &["--offline"]);
    assert!(
        !v["checks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "leftovers"),
        "{v:#}"
    );
    // What a killed import into an empty profile leaves: its copy and the
    // FTS scratch beside the profile.
    let mut copy = env.db("a").into_os_string();
    copy.push(".import-tmp");
    fs::write(&copy, vec![0u8; 100_000]).unwrap();
    let mut scratch = copy.clone();
    scratch.push(".fts");
    fs::write(&scratch, b"x").unwrap();
    let (code, v) = doctor(&env, "a", &["--offline"]);
    assert_eq!(code, 0, "a warning alone: {v:#}");
    let c = check(&v, "leftovers");
    assert_eq!(c["status"], "warn");
    let detail = c["detail"].as_str().unwrap();
    assert!(detail.contains("2 file(s), 0.1 MB"), "{c}");
    assert!(detail.contains("chat.db.import-tmp.fts"), "{c}");
    assert!(c["fix"].as_str().unwrap().contains("rm -f "), "{c}");
    // The next import deletes them.
    let export = env.path("export.json");
    env.ok("a", &["export", "--json", "-o", export.to_str().unwrap()]);
    env.ok("a", &["import", export.to_str().unwrap()]);
    assert!(!std::path::Path::new(&copy).exists() && !std::path::Path::new(&scratch).exists());
}

#[test]
fn doctor_says_when_there_is_no_profile() {
    let env = Env::new();
    let (code, v) = doctor(&env, "nobody", &["--offline"]);
    assert_eq!(code, 1);
    let c = check(&v, "database");
    assert_eq!(c["status"], "fail");
    assert!(c["fix"].as_str().unwrap().contains("init"), "{c}");
}

#[cfg(target_os = "linux")]
#[test]
fn doctor_names_another_process_using_the_profile() {
    let env = Env::new();
    env.init("a");
    // A "router" that accepts and never answers: sync waits with the
    // profile open.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("ws://{}/ws", silent.local_addr().unwrap());
    let mut child = {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_chat-p2p"));
        c.env_clear()
            .env("CHAT_HOME", env.home())
            .env("CHAT_PROFILE", "a")
            .env("CHAT_CONFIG", env.config())
            .args(["sync", "--timeout", "30", "--server", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c.spawn().unwrap()
    };
    let _conn = silent.accept().unwrap();
    let (code, v) = doctor(&env, "a", &["--offline"]);
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(code, 0, "a warning only: {v:#}");
    let c = check(&v, "processes");
    assert_eq!(c["status"], "warn", "{v:#}");
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", child.id())),
        "{c}"
    );
    assert!(
        c["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("process {} (chat-p2p sync) holds", child.id())),
        "{c}"
    );
}

//! docs/JSON.md is the reference for every command's `--json` output: this
//! test runs each documented command on real profiles (and a real router)
//! and checks that every field the page lists is in what it prints.

mod common;

use std::collections::BTreeMap;

use common::*;
use serde_json::Value;

/// The `fields` blocks of docs/JSON.md: command name → field paths.
fn documented() -> BTreeMap<String, Vec<String>> {
    let text = include_str!("../docs/JSON.md");
    let mut blocks = BTreeMap::new();
    let mut current: Option<(String, Vec<String>)> = None;
    for line in text.lines() {
        if let Some((name, fields)) = current.as_mut() {
            if line.trim_start().starts_with("```") {
                let (name, fields) = (name.clone(), std::mem::take(fields));
                assert!(!fields.is_empty(), "the block for {name} lists no field");
                let again = blocks.insert(name.clone(), fields);
                assert!(again.is_none(), "two blocks for {name}");
                current = None;
            } else if let Some(path) = line.split_whitespace().next() {
                fields.push(path.to_owned());
            }
        } else if let Some(name) = line.trim().strip_prefix("```fields ") {
            current = Some((name.trim().to_owned(), Vec::new()));
        }
    }
    assert!(current.is_none(), "a fields block is not closed");
    blocks
}

/// One step of a field path.
enum Step {
    Field(String),
    Each,
    Kind(String),
}

fn steps(path: &str) -> Vec<Step> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        if !name.is_empty() {
            out.push(Step::Field(name.to_owned()));
        }
        while let Some((inside, after)) = rest.split_once(']') {
            out.push(match inside.strip_prefix("kind=") {
                Some(kind) => Step::Kind(kind.to_owned()),
                None => Step::Each,
            });
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    out
}

/// Checks that `path` is in `value`: every object it leads to has the
/// field, and every `[]` or `[kind=...]` selects at least one element.
fn check(value: &Value, path: &str) -> Result<(), String> {
    let mut here = vec![value];
    for step in steps(path) {
        let mut next = Vec::new();
        for v in here {
            match &step {
                Step::Field(name) => match v.get(name) {
                    Some(field) => next.push(field),
                    None => return Err(format!("no field '{name}' in {v}")),
                },
                Step::Each | Step::Kind(_) => {
                    let items = v.as_array().ok_or_else(|| format!("not an array: {v}"))?;
                    next.extend(items.iter().filter(|item| match &step {
                        Step::Kind(kind) => item["kind"] == kind.as_str(),
                        _ => true,
                    }));
                }
            }
        }
        if next.is_empty() {
            return Err("no element to check: the test's output lacks one".to_owned());
        }
        here = next;
    }
    Ok(())
}

/// JSON Lines as an array of their objects.
fn lines(text: &str) -> Value {
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .collect()
}

/// Bob's `sync --watch --json` lines up to the first message, which `me`
/// sends while it runs.
fn watch_lines(env: &Env, router: &Router) -> Value {
    use std::io::BufRead as _;
    let mut watch = std::process::Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_CONFIG", env.config())
        .env("CHAT_PROFILE", "bob")
        .args(["sync", "--watch", "--json", "--server", &router.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut lines = Vec::new();
    let mut sent = false;
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(20)) {
        let value: Value = serde_json::from_str(&line).unwrap();
        let kind = value["kind"].clone();
        lines.push(value);
        if kind == "connected" && !sent {
            env.ok("me", &["send", "--server", &router.url(), "bob", "watched"]);
            sent = true;
        }
        if kind == "message" {
            break;
        }
    }
    let _ = watch.kill();
    let _ = watch.wait();
    Value::Array(lines)
}

/// Every documented command's output, from real profiles and a real router.
fn outputs(env: &Env, router: &Router) -> BTreeMap<&'static str, Value> {
    let url = router.url();
    let server = ["--server", url.as_str()];
    let mut out = BTreeMap::new();
    out.insert("init", env.json("me", &["init", "--json"]));
    out.insert("whoami", env.json("me", &["whoami", "--json"]));
    let bob = env.init("bob");
    out.insert(
        "add-contact",
        env.json("me", &["add-contact", "bob", &bob, "--json"]),
    );
    // Carol is no contact of mine: she shows up as an unknown sender.
    let me = env.key("me");
    env.init("carol");
    env.ok("carol", &["add-contact", "me", &me]);
    env.ok(
        "carol",
        &["send", server[0], server[1], "me", "hello from carol"],
    );
    let send = ["send", server[0], server[1], "bob", "hello bob", "--json"];
    out.insert("send", env.json("me", &send));
    out.insert(
        "sync",
        env.json("me", &["sync", server[0], server[1], "--json"]),
    );
    out.insert("contacts", env.json("me", &["contacts", "--json"]));
    out.insert("history", env.json("me", &["history", "--json"]));
    let search = ["history", "--search", "hello", "-C", "1", "--json"];
    out.insert("history-search", env.json("me", &search));
    out.insert("export", env.json("me", &["export", "--json"]));
    out.insert("export-jsonl", lines(&env.ok("me", &["export", "--jsonl"])));
    let file = env.path("me.json");
    let export = ["export", "--json", "-o", file.to_str().unwrap()];
    out.insert("export-summary", env.json("me", &export));
    let import = [
        "import",
        "--other-identity",
        file.to_str().unwrap(),
        "--json",
    ];
    out.insert("import", env.json("copy", &import));
    // A message the router never got: it waits in the outbox.
    let nowhere = ["--server", "ws://127.0.0.1:1/ws", "--timeout", "1"];
    let mut pending = vec!["send", "bob", "still waiting"];
    pending.extend(nowhere);
    env.fails("me", &pending, 1);
    out.insert("outbox", env.json("me", &["outbox", "--json"]));
    out.insert("inbox", env.json("me", &["inbox", "--json"]));
    out.insert("verify", env.json("me", &["verify", "bob", "--json"]));
    out.insert("config", env.json("me", &["config", "--json"]));
    out.insert("profiles", env.json("me", &["profiles", "--json"]));
    out.insert("doctor", env.json("me", &["doctor", "--offline", "--json"]));
    out.insert("sync-watch", watch_lines(env, router));
    let rename = ["rename-contact", "bob", "robert", "--json"];
    out.insert("rename-contact", env.json("me", &rename));
    let remove = ["remove-contact", "robert", "--json"];
    out.insert("remove-contact", env.json("me", &remove));
    out.insert(
        "devices",
        env.json("me", &["devices", server[0], server[1], "--json"]),
    );
    env.second_device("me", "me-desk");
    env.ok("me-desk", &["sync", server[0], server[1]]);
    let desk = env.json("me-desk", &["whoami", "--json"])["device"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let remove = ["devices", "remove", &desk, server[0], server[1], "--json"];
    out.insert("devices-remove", env.json("me", &remove));
    let rename = ["devices", "rename", "laptop", "--json"];
    out.insert("devices-rename", env.json("me", &rename));
    // Carol's home moves: she is no longer needed on the router.
    let elsewhere = "ws://127.0.0.1:1/ws";
    let set_router = ["set-contact-router", "me", elsewhere, "--json"];
    out.insert("set-contact-router", env.json("carol", &set_router));
    out.insert("home", env.json("carol", &["home", "--json"]));
    let home_set = ["home", "set", elsewhere, "--json"];
    out.insert("home-set", env.json("carol", &home_set));
    let (link, join) = link_lines(env, router);
    out.insert("link", link);
    out.insert("link-join", join);
    out
}

/// `me`'s `link --json` lines and the new device's `link --join --json`.
fn link_lines(env: &Env, router: &Router) -> (Value, Value) {
    use std::io::BufRead as _;
    let mut link = std::process::Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_CONFIG", env.config())
        .env("CHAT_PROFILE", "me")
        .args(["link", "--json", "--server", &router.url()])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(link.stdout.take().unwrap());
    let mut first = String::new();
    stdout.read_line(&mut first).unwrap();
    let code: Value = serde_json::from_str(&first).unwrap();
    let join = [
        "link",
        "--join",
        code["code"].as_str().unwrap(),
        "--server",
        &router.url(),
        "--json",
    ];
    let joined = env.json("me-laptop", &join);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(link.wait().unwrap().success());
    (lines(&format!("{first}{rest}")), joined)
}

#[test]
fn every_documented_json_field_is_printed() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let outputs = outputs(&env, &router);
    let docs = documented();
    let run: Vec<_> = outputs.keys().map(|k| k.to_string()).collect();
    let listed: Vec<_> = docs.keys().cloned().collect();
    assert_eq!(
        listed, run,
        "docs/JSON.md's fields blocks and this test's commands differ: each \
         command's JSON needs a block there and an entry in outputs() here"
    );
    let mut missing = Vec::new();
    for (name, paths) in &docs {
        for path in paths {
            if let Err(why) = check(&outputs[name.as_str()], path) {
                missing.push(format!("{name}: {path}: {why}"));
            }
        }
    }
    assert!(missing.is_empty(), "{}", missing.join("\n"));
}

#[test]
fn paths_select_fields_elements_and_kinds() {
    let v: Value = serde_json::json!([
        {"kind": "a", "x": 1, "list": [{"y": null}]},
        {"kind": "b", "z": 2}
    ]);
    assert!(check(&v, "[kind=a].x").is_ok());
    assert!(check(&v, "[kind=a].list[].y").is_ok());
    assert!(check(&v, "[kind=b].z").is_ok());
    assert!(check(&v, "[].kind").is_ok());
    assert!(check(&v, "[].x").is_err(), "b has no x");
    assert!(check(&v, "[kind=c].x").is_err(), "no element of kind c");
}

#[test]
fn send_json_prints_a_refused_message_and_still_exits_1() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &["--max-frame-bytes", "4096"]);
    env.init("me");
    let bob = env.init("bob");
    env.ok("me", &["add-contact", "bob", &bob]);
    let big = "x".repeat(3000);
    let url = router.url();
    let out = env
        .cmd("me")
        .args(["send", "--server", &url, "bob", &big, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let m: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(m["status"], "failed", "{m}");
    assert!(
        m["failure_reason"].as_str().unwrap().contains("4096"),
        "{m}"
    );
}

//! `sync --watch`: a long-running client for scripts and bots, driven as a
//! bot would drive it, by reading its JSON lines.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Env, Router};
use serde_json::Value;

/// How long a test waits for a line. Only a guard against hanging.
const GUARD: Duration = Duration::from_secs(30);

/// A `sync --watch --json` child whose stdout lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Watch {
    fn start(env: &Env, profile: &str, server: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", env.home())
            .env("CHAT_PROFILE", profile)
            .env("CHAT_SERVER", server)
            .args(["sync", "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sync --watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line matching `check`, keeping every line read.
    fn wait_for(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = std::time::Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if check(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "sync --watch never printed {what}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("wait for sync --watch")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kind(line: &Value, kind: &str) -> bool {
    line["kind"] == kind
}

#[test]
fn watch_prints_json_lines_sends_what_others_queue_and_stops_on_sigterm() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let (_, bob) = env.friends();
    let send = |profile: &str, server: &str, body: &str| {
        env.cmd(profile)
            .env("CHAT_SERVER", server)
            .args(["send", if profile == "bob" { "alice" } else { "bob" }, body])
            .args(["--timeout", "5"])
            .output()
            .unwrap()
    };

    let mut watch = Watch::start(&env, "alice", &router.url());
    let connected = watch.wait_for("connected", |l| kind(l, "connected"));
    assert_eq!(connected["server"], router.url());

    // A message arriving while it watches.
    assert!(send("bob", &router.url(), "hello bot").status.success());
    let message = watch.wait_for("the message", |l| kind(l, "message"));
    assert_eq!(message["body"], "hello bot");
    assert_eq!(message["contact"], "bob");
    assert_eq!(message["direction"], "in");
    assert_eq!(message["status"], "received");
    assert!(message["msg_id"].is_string() && message["peer_key"] == bob);

    // Queued by another command: the watch finds it in the database and
    // sends it.
    env.ok("alice", &["send", "--queue", "bob", "queued elsewhere"]);
    let sent = watch.wait_for("the queued message sent", |l| {
        kind(l, "status") && l["body"] == "queued elsewhere"
    });
    assert_eq!(sent["status"], "sent");
    assert_eq!(sent["direction"], "out");

    // A `send` from another process hands its message to the watch, which
    // owns the profile's router session: it goes out, the send reports it
    // sent, and the watch stays connected.
    let direct = send("alice", &router.url(), "sent directly");
    assert!(direct.status.success(), "{direct:?}");
    assert!(String::from_utf8_lossy(&direct.stdout).contains("Sent to bob"));
    watch.wait_for("the handed-over message sent", |l| {
        kind(l, "status") && l["body"] == "sent directly" && l["status"] == "sent"
    });
    assert!(send("bob", &router.url(), "after the handover")
        .status
        .success());
    let message = watch.wait_for("the second message", |l| kind(l, "message"));
    assert_eq!(message["body"], "after the handover");
    assert!(
        !watch.seen.iter().any(|l| kind(l, "disconnected")),
        "the watch lost its session: {:#?}",
        watch.seen
    );

    // Bob's client acknowledges receipt: a status line for Alice's message.
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .arg("sync")
        .assert()
        .success();
    watch.wait_for("delivered", |l| {
        kind(l, "status") && l["status"] == "delivered" && l["body"] == "queued elsewhere"
    });

    let status = watch.terminate();
    assert!(status.success(), "sync --watch exited with {status:?}");
    // It took messages in for good: a plain sync finds nothing new.
    let history = env.json("alice", &["history", "bob", "--json"]);
    let bodies: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["body"].as_str().unwrap())
        .collect();
    assert!(bodies.contains(&"hello bot") && bodies.contains(&"after the handover"));
}

#[test]
fn watch_waits_for_an_absent_router_and_stops_on_sigint() {
    let env = Env::new();
    env.init("alice");
    let mut watch = Watch::start(&env, "alice", "ws://127.0.0.1:9/ws");
    let away = watch.wait_for("the router away", |l| kind(l, "disconnected"));
    assert!(
        away["reason"].as_str().unwrap().contains("cannot reach"),
        "{away}"
    );
    let status = Command::new("kill")
        .args(["-INT", &watch.child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = watch.child.wait().unwrap();
    assert!(exit.success(), "{exit:?}");
}

#[test]
fn the_example_echo_bot_answers_a_message() {
    use std::os::unix::process::CommandExt as _;
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let bot = env.init("bot");
    let bob = env.init("bob");
    env.ok("bot", &["add-contact", "bob", &bob]);
    env.ok("bob", &["add-contact", "bot", &bot]);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/echo-bot.sh");
    // Its own process group: the pipeline's processes stop together.
    let mut child = Command::new("sh")
        .arg(script)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("CHAT_P2P", env!("CARGO_BIN_EXE_chat-p2p"))
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", "bot")
        .env("CHAT_SERVER", router.url())
        .process_group(0)
        .spawn()
        .expect("run examples/echo-bot.sh");
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["send", "bot", "ping 1 2"])
        .assert()
        .success();
    let mut answer = None;
    for _ in 0..150 {
        env.cmd("bob")
            .env("CHAT_SERVER", router.url())
            .args(["sync", "--timeout", "5"])
            .assert()
            .success();
        let history = env.json("bob", &["history", "bot", "--json", "--direction", "in"]);
        answer = history.as_array().and_then(|h| h.first()).cloned();
        if answer.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // The whole group: sh, the watch and jq.
    let killed = Command::new("kill")
        .args(["-s", "TERM", "--", &format!("-{}", child.id())])
        .status();
    if !killed.is_ok_and(|s| s.success()) {
        let _ = child.kill();
    }
    let _ = child.wait();
    let answer = answer.expect("the bot never answered");
    assert_eq!(answer["body"], "echo: ping 1 2");
}

#[test]
fn watch_prints_plain_lines_and_send_queue_only_stores() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();

    // --queue stores the message and connects to nothing.
    let queued = env
        .cmd("bob")
        .env("CHAT_SERVER", "ws://127.0.0.1:9/ws")
        .args(["send", "--queue", "alice", "from the queue"])
        .output()
        .unwrap();
    assert!(queued.status.success(), "{queued:?}");
    assert!(String::from_utf8_lossy(&queued.stdout).contains("Queued for alice"));
    let pending = env.json("bob", &["history", "alice", "--json"]);
    assert_eq!(pending[0]["status"], "pending");

    let mut child = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", "alice")
        .env("CHAT_SERVER", router.url())
        .args(["sync", "--watch"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    env.cmd("bob")
        .env("CHAT_SERVER", router.url())
        .args(["sync"])
        .assert()
        .success();
    let line = lines.recv_timeout(GUARD).expect("a line for the message");
    assert!(line.ends_with("] bob: from the queue"), "{line:?}");
    assert!(line.starts_with('['), "{line:?}");
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    assert!(child.wait().unwrap().success());
}

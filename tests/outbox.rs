//! Nothing stuck in the outbox, nothing claimed that did not happen: what
//! the router refuses for good fails, a piped chat waits for every ack and
//! says what is left, and reading marks only what was shown. Real binary,
//! real router.

mod common;

use std::io::{Read, Write};
use std::process::{Command as StdCommand, Stdio};
use std::time::Duration;

use chat_p2p::client::connection;
use chat_p2p::client::{ClientError, Engine, ServerUrl};
use chat_p2p::identity::Identity;
use chat_p2p::protocol::Frame;
use chat_p2p::store::{Status, Store};
use common::{Env, Router};
use serde_json::Value;

/// Alice and Bob, contacts of each other, and a router started with
/// `router_args`.
struct Pair {
    env: Env,
    router: Router,
    alice: String,
}

impl Pair {
    fn new(router_args: &[&str]) -> Self {
        let env = Env::new();
        let router = Router::start(&env.path("router"), router_args);
        let (alice, _) = env.friends();
        Pair { env, router, alice }
    }

    fn cmd(&self, profile: &str) -> assert_cmd::Command {
        let mut cmd = self.env.cmd(profile);
        cmd.env("CHAT_SERVER", self.router.url());
        cmd
    }

    fn history(&self, profile: &str, peer: &str) -> Vec<Value> {
        let out = self
            .cmd(profile)
            .args(["history", peer, "--json", "-n", "1000"])
            .output()
            .unwrap();
        assert!(out.status.success());
        serde_json::from_slice::<Value>(&out.stdout)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// `chat ARGS` for `profile` as a child, with pipes.
    fn spawn_chat(&self, profile: &str, args: &[&str]) -> std::process::Child {
        StdCommand::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", self.env.home())
            .env("CHAT_PROFILE", profile)
            .env("CHAT_SERVER", self.router.url())
            .arg("chat")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// Polls `check` until it holds; the guard only prevents hanging.
    fn eventually(&self, what: &str, check: impl Fn(&Self) -> bool) {
        for _ in 0..200 {
            if check(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("never happened: {what}");
    }

    fn count(&self, profile: &str, peer: &str, direction: &str, status: &str) -> usize {
        self.history(profile, peer)
            .iter()
            .filter(|m| m["direction"] == direction && m["status"] == status)
            .count()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_message_over_the_routers_frame_limit_fails_and_holds_nothing_back() {
    let p = Pair::new(&["--max-frame-bytes", "4096"]);
    // Stored while the limit is not known yet (the router is announced
    // only on connecting): `send` stores first.
    let big = "x".repeat(3000);
    let out = p
        .cmd("alice")
        .args(["send", "bob", &big, "--timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not sent") && stderr.contains("4096"),
        "{stderr}"
    );

    let later = p
        .cmd("alice")
        .args(["send", "bob", "later", "--timeout", "5"])
        .output()
        .unwrap();
    assert_eq!(later.status.code(), Some(0), "{}", text(&later.stderr));

    let history = p.history("alice", "bob");
    let failed = history.iter().find(|m| m["body"] == big.as_str()).unwrap();
    assert_eq!(failed["status"], "failed");
    assert!(failed["failed_at"].is_string(), "{failed}");
    assert!(failed["failure_reason"]
        .as_str()
        .unwrap()
        .contains("accepts at most 4096 bytes"));
    let sent = history.iter().find(|m| m["body"] == "later").unwrap();
    assert_eq!(sent["status"], "sent");
}

#[test]
fn chat_sets_aside_what_the_router_cannot_take_and_carries_on() {
    let p = Pair::new(&["--max-frame-bytes", "4096"]);
    // Pending from before, over twice the limit: sent as it is, the router
    // would close the session (1009) on every reconnect.
    let huge = "h".repeat(9000);
    p.env
        .cmd("alice")
        .env("CHAT_SERVER", "ws://127.0.0.1:9/ws")
        .args(["send", "bob", &huge, "--timeout", "2"])
        .assert()
        .code(1);
    let typed_big = "t".repeat(3000);
    let mut chat = p.spawn_chat("alice", &["bob", "--timeout", "10"]);
    let mut stdin = chat.stdin.take().unwrap();
    writeln!(stdin, "small one").unwrap();
    p.eventually("connected: the first line is sent", |p| {
        p.count("alice", "bob", "out", "sent") == 1
    });
    writeln!(stdin, "{typed_big}\nsmall two\nexit").unwrap();
    drop(stdin);
    let out = chat.wait_with_output().unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("not sent: the message would make a"),
        "{stdout}"
    );
    assert!(stdout.contains("✗ not sent to bob"), "{stdout}");

    let history = p.history("alice", "bob");
    let status_of = |body: &str| {
        history
            .iter()
            .find(|m| m["body"] == body)
            .map(|m| m["status"].as_str().unwrap().to_owned())
    };
    assert_eq!(status_of(&huge).as_deref(), Some("failed"));
    assert_eq!(status_of(&typed_big), None, "refused before it was stored");
    assert_eq!(status_of("small one").as_deref(), Some("sent"));
    assert_eq!(status_of("small two").as_deref(), Some("sent"));
}

#[test]
fn a_close_for_size_is_reported_and_the_client_reconnects() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &["--max-frame-bytes", "4096"]);
    let server = ServerUrl::parse(&router.url()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(&dir.path().join("chat.db")).unwrap();
    let identity = Identity::generate();
    store.set_identity(&identity, false).unwrap();
    let bob = Identity::generate().public_key();
    let mut engine = Engine::new(store, Identity::from_secret_bytes(&identity.secret_bytes()));
    let huge = engine.queue(&bob, &"h".repeat(9000)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let timeout = Duration::from_secs(10);
        let device = engine.device().unwrap();
        let mut conn = connection::connect(&server, &identity, &device, timeout)
            .await
            .unwrap();
        assert_eq!(conn.max_frame_bytes(), Some(4096), "announced in ready");
        // As a client that ignores the announcement would: send it anyway.
        let frames = engine.outbox_frames().unwrap();
        conn.send(&frames).await.unwrap();
        let closed = loop {
            match conn.recv_batch().await {
                Ok(Some(frames)) => assert_eq!(frames, [Frame::Synced]),
                other => break other,
            }
        };
        assert!(
            matches!(closed, Err(ClientError::ClosedForSize(_))),
            "{closed:?}"
        );
        // Not "Sending after closing is not allowed": the reason stays.
        let again = conn.send(&frames).await;
        assert!(
            matches!(again, Err(ClientError::ClosedForSize(_))),
            "{again:?}"
        );
        engine.closed_for_size("frame larger").unwrap();
        let mut conn = connection::connect(&server, &identity, &device, timeout)
            .await
            .unwrap();
        let small = engine.queue(&bob, "small").unwrap();
        let frames = engine.outbox_frames().unwrap();
        assert_eq!(frames.len(), 1, "the huge one is not sent again");
        conn.send(&frames).await.unwrap();
        while engine.in_flight() > 0 {
            let frames = conn.recv_batch().await.unwrap().unwrap();
            engine.handle(frames).unwrap();
        }
        let stored = engine.store().message(&small.msg_id).unwrap().unwrap();
        assert_eq!(stored.status, Status::Sent);
        conn.close().await;
    });
    let failed = engine.store().message(&huge.msg_id).unwrap().unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert!(failed
        .failure_reason
        .unwrap()
        .contains("closed the connection"));
}

#[test]
fn piped_chat_waits_for_every_ack_through_the_rate_limit() {
    let p = Pair::new(&["--max-rate", "20"]);
    let lines: String = (1..=100).map(|n| format!("m {n}\n")).collect();
    let out = p
        .cmd("alice")
        .args(["chat", "bob", "--timeout", "60"])
        .write_stdin(lines)
        .timeout(Duration::from_secs(90))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let waits = text(&out.stdout).matches("router asks to wait").count();
    assert!(
        (1..20).contains(&waits),
        "one notice per pause, not per frame: {waits}"
    );
    assert_eq!(p.count("alice", "bob", "out", "sent"), 100);
    assert_eq!(p.count("alice", "bob", "out", "pending"), 0);
}

#[test]
fn piped_chat_leaving_with_messages_pending_says_how_many_and_fails() {
    let p = Pair::new(&["--max-rate", "1"]);
    let lines: String = (1..=30).map(|n| format!("m {n}\n")).collect();
    let out = p
        .cmd("alice")
        .args(["chat", "bob", "--timeout", "1"])
        .write_stdin(lines)
        .timeout(Duration::from_secs(30))
        .output()
        .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let pending = p.count("alice", "bob", "out", "pending");
    assert!(pending > 0);
    assert!(
        stderr.contains(&format!("{pending} message(s) still pending")),
        "{pending}: {stderr}"
    );
}

#[test]
fn opening_a_chat_reads_only_the_messages_it_shows() {
    let p = Pair::new(&[]);
    let lines: String = (1..=30).map(|n| format!("unread {n}\n")).collect();
    p.cmd("alice")
        .args(["chat", "bob"])
        .write_stdin(lines)
        .assert()
        .success();
    p.cmd("bob").arg("sync").assert().success();
    assert_eq!(p.count("bob", "alice", "in", "received"), 30);

    let out = p
        .cmd("bob")
        .args(["chat", "alice", "-n", "5"])
        .write_stdin("exit\n")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).matches("alice: unread").count(), 5);
    assert_eq!(p.count("bob", "alice", "in", "read"), 5);
    let read: Vec<String> = p
        .history("bob", "alice")
        .iter()
        .filter(|m| m["status"] == "read")
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        read,
        [
            "unread 26",
            "unread 27",
            "unread 28",
            "unread 29",
            "unread 30"
        ]
    );

    p.cmd("alice").arg("sync").assert().success();
    assert_eq!(p.count("alice", "bob", "out", "read"), 5);
    assert_eq!(p.count("alice", "bob", "out", "delivered"), 25);

    // `/history 10` shows five more: those are read now.
    p.cmd("bob")
        .args(["chat", "alice", "-n", "0"])
        .write_stdin("/history 10\nexit\n")
        .assert()
        .success();
    assert_eq!(p.count("bob", "alice", "in", "read"), 10);
    p.cmd("alice").arg("sync").assert().success();
    assert_eq!(p.count("alice", "bob", "out", "read"), 10);
}

#[test]
fn empty_messages_and_messages_to_yourself_are_refused() {
    let p = Pair::new(&[]);
    for body in ["", "   ", " \t "] {
        let out = p.cmd("alice").args(["send", "bob", body]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{body:?}");
        assert!(text(&out.stderr).contains("empty"), "{}", text(&out.stderr));
    }
    let own = p.alice.clone();
    let out = p
        .cmd("alice")
        .args(["send", &own, "hi me"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("your own public key"));
    // Like add-contact.
    let add = p
        .cmd("alice")
        .args(["add-contact", "me", &own])
        .output()
        .unwrap();
    assert_eq!(add.status.code(), out.status.code());

    p.cmd("alice")
        .args(["chat", "bob"])
        .write_stdin("\n   \n\t\nhello\nexit\n")
        .assert()
        .success();
    let bodies: Vec<Value> = p
        .history("alice", "bob")
        .iter()
        .map(|m| m["body"].clone())
        .collect();
    assert_eq!(bodies, ["hello"]);
}

#[test]
fn the_chat_shows_delivered_then_read_when_both_receipts_arrive_together() {
    let p = Pair::new(&[]);
    p.cmd("alice")
        .args(["send", "bob", "both receipts"])
        .assert()
        .success();
    // Bob receives it and reads it while Alice is away: both receipts wait
    // at the router and reach her in one batch.
    p.cmd("bob").arg("sync").assert().success();
    p.cmd("bob")
        .args(["chat", "alice"])
        .write_stdin("exit\n")
        .assert()
        .success();
    let mut chat = p.spawn_chat("alice", &["bob", "-n", "0"]);
    p.eventually("both receipts arrive", |p| {
        p.count("alice", "bob", "out", "read") == 1
    });
    std::thread::sleep(Duration::from_millis(300));
    chat.stdin.take().unwrap().write_all(b"exit\n").unwrap();
    let mut stdout = String::new();
    chat.stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(chat.wait().unwrap().success());
    let delivered = stdout.find("✓✓ delivered to bob: both receipts");
    let read = stdout.find("read by bob: both receipts");
    assert!(
        delivered.is_some() && read.is_some() && delivered < read,
        "{stdout}"
    );
    assert_eq!(stdout.matches("read by bob").count(), 1, "{stdout}");
}

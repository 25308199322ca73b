//! Several programs on one profile at once (issue 9 item 7): `chat` in one
//! terminal, `send`, `sync` or `sync --watch` in another. Only the process
//! holding the profile's session lock talks to the router; the others hand
//! their work to it through the database, so no session replaces another
//! and every message goes out once.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{Env, Router, Tmux, Watch};
use serde_json::Value;

/// How long a test waits for something. Only a guard against hanging.
const GUARD: Duration = Duration::from_secs(30);

/// Waits for the mark in the session `name` saying `body` was sent: its
/// own line, or the last of several marked together.
fn wait_sent(tmux: &Tmux, name: &str, body: &str) {
    let quoted = format!("\"{body}\"");
    tmux.wait_until_in(name, body, |s| {
        s.lines().any(|l| {
            let l = l.trim_end();
            l.contains("sent to bob") && (l.ends_with(body) || l.ends_with(&quoted))
        })
    });
}

/// Opens `chat bob` for alice in the tmux session `name` and waits for
/// its prompt.
fn alice_chat(tmux: &Tmux, name: &str, env: &Env, router: &Router) {
    tmux.open_chat(name, (120, 40), env, router, "alice", "bob");
    tmux.wait_prompt_in(name);
}

/// `profile`'s command against `router`.
fn at(env: &Env, router: &Router, profile: &str) -> assert_cmd::Command {
    let mut cmd = env.cmd(profile);
    cmd.env("CHAT_SERVER", router.url());
    cmd
}

/// How many sessions the router has started so far, from its log.
fn sessions_started(env: &Env) -> usize {
    let log = std::fs::read_to_string(env.path("router.log")).unwrap_or_default();
    log.matches("session started").count()
}

/// The frames the router holds, from its `/metrics`.
fn queue_depth(router: &Router) -> u64 {
    use std::io::{Read as _, Write as _};
    let mut tcp = std::net::TcpStream::connect(&router.addr).unwrap();
    write!(tcp, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    reply
        .lines()
        .find_map(|l| l.strip_prefix("chat_router_queue_depth "))
        .unwrap_or_else(|| panic!("no queue depth in {reply}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until the router has started `n` sessions (a chat shows its
/// prompt before it has connected).
fn wait_sessions(env: &Env, n: usize) {
    let deadline = std::time::Instant::now() + GUARD;
    while sessions_started(env) < n {
        assert!(std::time::Instant::now() < deadline, "no session {n}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Alice's chat in the tmux session `name`, once it has connected and so
/// holds the session lock.
fn chat_holding_session(env: &Env, router: &Router, name: &str) -> Tmux {
    let tmux = Tmux::new();
    alice_chat(&tmux, name, env, router);
    wait_sessions(env, 1);
    tmux
}

/// A watch holding alice's session, then her chat in the tmux session
/// `a` beside it, its prompt shown.
fn watch_then_chat(env: &Env, router: &Router) -> (Watch, Tmux) {
    let mut watch = Watch::start(env, "alice", router);
    watch.kind("connected");
    let tmux = Tmux::new();
    alice_chat(&tmux, "a", env, router);
    (watch, tmux)
}

/// Bob sends alice `body`, asserting success.
#[track_caller]
fn bob_sends(env: &Env, router: &Router, body: &str) {
    at(env, router, "bob")
        .args(["send", "alice", body])
        .assert()
        .success();
}

/// Bob takes in what waits for him: `sync --json`.
fn bob_syncs(env: &Env, router: &Router) -> Value {
    let out = at(env, router, "bob")
        .args(["sync", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// How many messages in `profile`'s history have `body`.
fn copies(env: &Env, profile: &str, body: &str) -> usize {
    let history = env.json(profile, &["history", "--json", "-n", "1000"]);
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"] == body)
        .count()
}

#[test]
fn a_send_beside_an_open_chat_goes_out_once_through_it() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let tmux = chat_holding_session(&env, &router, "a");

    let out = at(&env, &router, "alice")
        .args(["send", "bob", "from the other terminal"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.starts_with("✓ Sent to bob (the router has it;"),
        "{stdout}"
    );
    let json = at(&env, &router, "alice")
        .args(["send", "bob", "as json", "--json"])
        .output()
        .unwrap();
    assert!(json.status.success(), "{json:?}");
    let json: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(json["status"], "sent");
    assert_eq!(json["body"], "as json");
    // The chat sent both: its own session is the only one of alice's.
    wait_sent(&tmux, "a", "as json");
    assert_eq!(sessions_started(&env), 1, "a send opened a session");
    // One frame each, waiting for bob.
    assert_eq!(queue_depth(&router), 2);

    // sync, too, leaves the session to the chat and says so.
    let sync = env.json(
        "alice",
        &[
            "sync",
            "--server",
            &router.url(),
            "--json",
            "--timeout",
            "5",
        ],
    );
    assert!(sync["owner"]["pid"].is_u64(), "{sync}");
    assert_eq!(sync["owner"]["command"], "chat-p2p chat");
    let text = at(&env, &router, "alice").arg("sync").output().unwrap();
    assert!(text.status.success());
    let text = String::from_utf8(text.stdout).unwrap();
    assert!(
        text.contains("(chat-p2p chat) holds this profile's router session"),
        "{text}"
    );
    assert_eq!(sessions_started(&env), 1, "a sync opened a session");

    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 2, "{synced}");
    assert_eq!(synced["duplicates"], 0, "{synced}");
    assert_eq!(copies(&env, "bob", "from the other terminal"), 1);
    let screen = tmux.screen_in("a");
    assert!(
        !screen.contains("took over") && !screen.contains("Reconnecting"),
        "the chat lost its session:\n{screen}"
    );
    tmux.type_line_in("a", "exit");
}

#[test]
fn sends_started_together_each_go_out_once() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let bodies = ["first", "second", "third"];
    let children: Vec<Child> = bodies
        .iter()
        .map(|body| {
            Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
                .env_clear()
                .env("CHAT_HOME", env.home())
                .env("CHAT_CONFIG", env.config())
                .env("CHAT_PROFILE", "alice")
                .env("CHAT_SERVER", router.url())
                .args(["send", "bob", body])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert!(String::from_utf8_lossy(&out.stdout).contains("Sent to bob"));
    }
    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 3, "{synced}");
    assert_eq!(synced["duplicates"], 0, "{synced}");
    for body in bodies {
        assert_eq!(copies(&env, "bob", body), 1, "{body}");
    }
}

#[test]
fn a_chat_beside_a_watch_follows_it_and_sends_through_it() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let (mut watch, tmux) = watch_then_chat(&env, &router);
    tmux.wait_for_in(
        "a",
        "(chat-p2p sync --watch) holds this profile's router session",
    );

    // What the watch takes in shows in the chat, which reads it: the
    // watch sends the read receipt.
    bob_sends(&env, &router, "to both of them");
    watch.wait_for("the message", |l| l["body"] == "to both of them");
    tmux.wait_for_in("a", "bob: to both of them");
    let mut read = false;
    for _ in 0..100 {
        bob_syncs(&env, &router);
        let mine = env.json("bob", &["history", "--json", "--direction", "out"]);
        if mine[0]["status"] == "read" {
            read = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(read, "bob never got the read receipt");

    // Typed in the chat, sent by the watch, shown sent in both.
    tmux.type_line_in("a", "typed beside the watch");
    watch.wait_for("the status", |l| {
        l["kind"] == "status" && l["body"] == "typed beside the watch"
    });
    wait_sent(&tmux, "a", "typed beside the watch");
    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 1, "{synced}");
    assert_eq!(copies(&env, "bob", "typed beside the watch"), 1);
    assert_eq!(watch.disconnections(), 0, "{:#?}", watch.seen);
    tmux.type_line_in("a", "exit");
    assert!(tmux.ended_in("a"), "the following chat did not leave");
}

#[test]
fn a_watch_beside_a_chat_follows_it_and_takes_over_when_it_leaves() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let tmux = chat_holding_session(&env, &router, "a");
    let mut watch = Watch::start(&env, "alice", &router);
    let following = watch.kind("following");
    assert_eq!(following["owner"]["command"], "chat-p2p chat");
    assert!(following["owner"]["pid"].is_u64());

    bob_sends(&env, &router, "seen by the chat");
    tmux.wait_for_in("a", "bob: seen by the chat");
    let message = watch.kind("message");
    assert_eq!(message["body"], "seen by the chat");

    tmux.type_line_in("a", "exit");
    watch.kind("connected");
    bob_sends(&env, &router, "after the chat left");
    let message = watch.kind("message");
    assert_eq!(message["body"], "after the chat left");
    assert_eq!(copies(&env, "alice", "seen by the chat"), 1);
}

#[test]
fn a_following_chat_takes_over_from_an_owner_killed_with_sigkill() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let (mut watch, tmux) = watch_then_chat(&env, &router);
    tmux.wait_for_in("a", "holds this profile's router session");

    // SIGKILL: the OS drops the lock with the process.
    watch.child.kill().unwrap();
    watch.child.wait().unwrap();
    tmux.wait_for_in("a", "this chat now holds the router session");
    bob_sends(&env, &router, "to the new owner");
    tmux.wait_for_in("a", "bob: to the new owner");
    tmux.type_line_in("a", "from the new owner");
    wait_sent(&tmux, "a", "from the new owner");
    bob_syncs(&env, &router);
    assert_eq!(copies(&env, "bob", "from the new owner"), 1);
    tmux.type_line_in("a", "exit");
}

#[test]
fn history_and_export_work_while_a_watch_stores_a_burst() {
    use chat_p2p::identity::{Identity, PublicKey};
    use chat_p2p::protocol::Frame;
    const BURST: usize = 300;
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let alice = PublicKey::parse(&env.init("alice")).unwrap();
    let carol = Identity::generate();
    let carol_key = carol.public_key().to_base64();
    env.ok("alice", &["add-contact", "carol", &carol_key]);
    let mut watch = Watch::start(&env, "alice", &router);
    watch.kind("connected");

    let addr = router.addr.clone();
    // How many of carol's frames the router has acked: tells a slow burst
    // (a loaded machine's fsyncs) from a frame committed but not stored.
    let acked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&acked);
    let burst = std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async move {
            let mut carol = common::Client::connect(&addr, carol).await;
            // In batches below the router's rate limit per connection.
            for batch in 0..BURST / 50 {
                if batch > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                for i in 0..50 {
                    carol.send(&alice, &format!("burst {batch} {i}")).await;
                }
                // Alice's delivered receipts come in between the acks.
                let mut acks = 0;
                while acks < 50 {
                    match carol.next().await {
                        Frame::Ack(_) => {
                            acks += 1;
                            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        Frame::Message(_) => {}
                        other => panic!("expected an ack, got {other:?}"),
                    }
                }
            }
            carol.close().await;
        });
    });

    let readers: [&[&str]; 4] = [
        &["history", "--json", "-n", "1000"],
        &["export", "--json"],
        &["history", "--search", "burst", "--json"],
        &["inbox", "--json"],
    ];
    let deadline = std::time::Instant::now() + GUARD;
    let mut runs = 0;
    loop {
        for args in readers {
            let out = env.cmd("alice").args(args).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{args:?}: {stderr}");
            assert!(!stderr.contains("locked"), "{args:?}: {stderr}");
            runs += 1;
        }
        let stored = copies_from(&env, "alice", "burst ");
        if stored == BURST {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "only {stored} of {BURST} stored; the router had acked {} of them to carol",
            acked.load(std::sync::atomic::Ordering::Relaxed)
        );
    }
    burst.join().unwrap();
    assert!(runs >= readers.len());
    assert_eq!(watch.disconnections(), 0, "{:#?}", watch.seen);
}

/// How many messages in `profile`'s history start with `prefix`.
fn copies_from(env: &Env, profile: &str, prefix: &str) -> usize {
    let history = env.json(profile, &["history", "--json", "-n", "1000"]);
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"].as_str().is_some_and(|b| b.starts_with(prefix)))
        .count()
}

#[test]
fn a_send_the_owner_cannot_deliver_in_time_says_it_is_queued_and_who_holds_the_session() {
    let env = Env::new();
    env.friends();
    // The owner's router is away: it keeps the session lock and retries.
    let mut watch = Watch::start_at(&env, "alice", "ws://127.0.0.1:9/ws");
    watch.kind("disconnected");
    let router = Router::start(&env.path("router"), &[]);
    let out = at(&env, &router, "alice")
        .args(["send", "bob", "stuck", "--timeout", "1"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8(out.stderr).unwrap();
    let owner = format!("process {} (chat-p2p sync --watch)", watch.child.id());
    assert!(stderr.contains("queued (pending)"), "{stderr}");
    assert!(stderr.contains(&owner), "{stderr}");
    let pending = env.json("alice", &["outbox", "--json"]);
    assert_eq!(pending[0]["body"], "stuck");
    assert_eq!(pending[0]["status"], "pending");

    // sync says who holds the session and what still waits, and exits 0.
    let sync = env.json("alice", &["sync", "--json", "--timeout", "1"]);
    assert_eq!(sync["owner"]["command"], "chat-p2p sync --watch", "{sync}");
    assert_eq!(sync["owner"]["pid"], watch.child.id(), "{sync}");
    assert_eq!(sync["pending"], 1, "{sync}");
    assert_eq!(sessions_started(&env), 0);

    // Once the owner is gone, the next send takes the session and sends
    // both, each once.
    drop(watch);
    at(&env, &router, "alice")
        .args(["send", "bob", "unstuck"])
        .assert()
        .success();
    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 2, "{synced}");
    assert_eq!(synced["duplicates"], 0, "{synced}");
}

#[test]
fn two_chats_on_one_profile_share_one_session() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let tmux = chat_holding_session(&env, &router, "first");
    alice_chat(&tmux, "second", &env, &router);
    tmux.wait_for_in(
        "second",
        "(chat-p2p chat) holds this profile's router session",
    );

    bob_sends(&env, &router, "to both chats");
    tmux.wait_for_in("first", "bob: to both chats");
    tmux.wait_for_in("second", "bob: to both chats");
    tmux.type_line_in("second", "from the second chat");
    wait_sent(&tmux, "first", "from the second chat");
    wait_sent(&tmux, "second", "from the second chat");
    // Alice's chat and Bob's send: nothing else.
    assert_eq!(sessions_started(&env), 2, "the second chat connected");

    // The first leaves: the second takes over and goes on.
    tmux.type_line_in("first", "exit");
    tmux.wait_for_in("second", "this chat now holds the router session");
    tmux.type_line_in("second", "after the first left");
    wait_sent(&tmux, "second", "after the first left");
    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 2, "{synced}");
    assert_eq!(synced["duplicates"], 0, "{synced}");
    let screen = tmux.screen_in("second");
    assert!(!screen.contains("Reconnecting"), "{screen}");
    tmux.type_line_in("second", "exit");
}

//! Several programs on one profile at once (issue 9 item 7): `chat` in one
//! terminal, `send`, `sync` or `sync --watch` in another. Only the process
//! holding the profile's session lock talks to the router; the others hand
//! their work to it through the database, so no session replaces another
//! and every message goes out once.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use common::{Env, Router};
use serde_json::Value;

/// How long a test waits for something. Only a guard against hanging.
const GUARD: Duration = Duration::from_secs(30);

/// A private tmux server with one session per chat, killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self {
            socket: format!("chat-p2p-procs-{}-{n}", std::process::id()),
        }
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (.ci/run installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Opens `chat PEER` for `profile` in the tmux session `name`.
    fn chat(&self, name: &str, env: &Env, router: &Router, profile: &str, peer: &str) {
        let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let command = format!(
            "env -i HOME=/nonexistent TERM=xterm CHAT_HOME={} CHAT_PROFILE={profile} \
             CHAT_SERVER={} {} chat {peer}",
            quote(env.home().to_str().unwrap()),
            quote(&router.url()),
            quote(env!("CARGO_BIN_EXE_chat-p2p")),
        );
        self.run(&[
            "new-session",
            "-d",
            "-s",
            name,
            "-x",
            "120",
            "-y",
            "40",
            &command,
        ]);
        self.wait_until(name, "the prompt", |s| {
            s.lines().any(|l| l.trim_end() == ">")
        });
    }

    fn screen(&self, name: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", name])
    }

    fn wait_for(&self, name: &str, text: &str) -> String {
        self.wait_until(name, text, |screen| screen.contains(text))
    }

    fn wait_until(&self, name: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + GUARD;
        while std::time::Instant::now() < deadline {
            let screen = self.screen(name);
            if check(&screen) {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{name} never showed {what:?}:\n{}", self.screen(name));
    }

    /// Waits for the mark saying `body` was sent: its own line, or the
    /// last of several marked together.
    fn wait_sent(&self, name: &str, body: &str) {
        let quoted = format!("\"{body}\"");
        self.wait_until(name, body, |s| {
            s.lines().any(|l| {
                let l = l.trim_end();
                l.contains("sent to bob") && (l.ends_with(body) || l.ends_with(&quoted))
            })
        });
    }

    fn type_line(&self, name: &str, text: &str) {
        self.run(&["send-keys", "-t", name, "-l", text]);
        self.run(&["send-keys", "-t", name, "Enter"]);
    }

    /// Whether the session (its chat) still runs.
    fn alive(&self, name: &str) -> bool {
        Command::new("tmux")
            .args(["-L", &self.socket, "has-session", "-t", name])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// A `sync --watch --json` child whose stdout lines arrive on a channel.
struct Watch {
    child: Child,
    lines: mpsc::Receiver<Value>,
    seen: Vec<Value>,
}

impl Watch {
    fn start(env: &Env, profile: &str, router: &Router) -> Self {
        Self::start_at(env, profile, &router.url())
    }

    /// A watch against the router at `url`.
    fn start_at(env: &Env, profile: &str, url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", env.home())
            .env("CHAT_CONFIG", env.config())
            .env("CHAT_PROFILE", profile)
            .env("CHAT_SERVER", url)
            .args(["sync", "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sync --watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).expect("one JSON object a line");
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
                Err(_) => panic!("the watch never printed {what}: {:#?}", self.seen),
            }
        }
    }

    fn kind(&mut self, kind: &str) -> Value {
        self.wait_for(kind, |l| l["kind"] == kind)
    }

    fn disconnections(&self) -> usize {
        self.seen
            .iter()
            .filter(|l| l["kind"] == "disconnected")
            .count()
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    let tmux = Tmux::new();
    tmux.chat("a", &env, &router, "alice", "bob");
    wait_sessions(&env, 1);

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
    tmux.wait_sent("a", "as json");
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
    let screen = tmux.screen("a");
    assert!(
        !screen.contains("took over") && !screen.contains("Reconnecting"),
        "the chat lost its session:\n{screen}"
    );
    tmux.type_line("a", "exit");
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
    let mut watch = Watch::start(&env, "alice", &router);
    watch.kind("connected");
    let tmux = Tmux::new();
    tmux.chat("a", &env, &router, "alice", "bob");
    tmux.wait_for(
        "a",
        "(chat-p2p sync --watch) holds this profile's router session",
    );

    // What the watch takes in shows in the chat, which reads it: the
    // watch sends the read receipt.
    at(&env, &router, "bob")
        .args(["send", "alice", "to both of them"])
        .assert()
        .success();
    watch.wait_for("the message", |l| l["body"] == "to both of them");
    tmux.wait_for("a", "bob: to both of them");
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
    tmux.type_line("a", "typed beside the watch");
    watch.wait_for("the status", |l| {
        l["kind"] == "status" && l["body"] == "typed beside the watch"
    });
    tmux.wait_sent("a", "typed beside the watch");
    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 1, "{synced}");
    assert_eq!(copies(&env, "bob", "typed beside the watch"), 1);
    assert_eq!(watch.disconnections(), 0, "{:#?}", watch.seen);
    tmux.type_line("a", "exit");
    for _ in 0..200 {
        if !tmux.alive("a") {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!tmux.alive("a"), "the following chat did not leave");
}

#[test]
fn a_watch_beside_a_chat_follows_it_and_takes_over_when_it_leaves() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let tmux = Tmux::new();
    tmux.chat("a", &env, &router, "alice", "bob");
    wait_sessions(&env, 1);
    let mut watch = Watch::start(&env, "alice", &router);
    let following = watch.kind("following");
    assert_eq!(following["owner"]["command"], "chat-p2p chat");
    assert!(following["owner"]["pid"].is_u64());

    at(&env, &router, "bob")
        .args(["send", "alice", "seen by the chat"])
        .assert()
        .success();
    tmux.wait_for("a", "bob: seen by the chat");
    let message = watch.kind("message");
    assert_eq!(message["body"], "seen by the chat");

    tmux.type_line("a", "exit");
    watch.kind("connected");
    at(&env, &router, "bob")
        .args(["send", "alice", "after the chat left"])
        .assert()
        .success();
    let message = watch.kind("message");
    assert_eq!(message["body"], "after the chat left");
    assert_eq!(copies(&env, "alice", "seen by the chat"), 1);
}

#[test]
fn a_following_chat_takes_over_from_an_owner_killed_with_sigkill() {
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    env.friends();
    let mut watch = Watch::start(&env, "alice", &router);
    watch.kind("connected");
    let tmux = Tmux::new();
    tmux.chat("a", &env, &router, "alice", "bob");
    tmux.wait_for("a", "holds this profile's router session");

    // SIGKILL: the OS drops the lock with the process.
    watch.child.kill().unwrap();
    watch.child.wait().unwrap();
    tmux.wait_for("a", "this chat now holds the router session");
    at(&env, &router, "bob")
        .args(["send", "alice", "to the new owner"])
        .assert()
        .success();
    tmux.wait_for("a", "bob: to the new owner");
    tmux.type_line("a", "from the new owner");
    tmux.wait_sent("a", "from the new owner");
    bob_syncs(&env, &router);
    assert_eq!(copies(&env, "bob", "from the new owner"), 1);
    tmux.type_line("a", "exit");
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
                        Frame::Ack(_) => acks += 1,
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
            "only {stored} of {BURST} stored"
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
    let tmux = Tmux::new();
    tmux.chat("first", &env, &router, "alice", "bob");
    // Connected, so holding the session lock.
    wait_sessions(&env, 1);
    tmux.chat("second", &env, &router, "alice", "bob");
    tmux.wait_for(
        "second",
        "(chat-p2p chat) holds this profile's router session",
    );

    at(&env, &router, "bob")
        .args(["send", "alice", "to both chats"])
        .assert()
        .success();
    tmux.wait_for("first", "bob: to both chats");
    tmux.wait_for("second", "bob: to both chats");
    tmux.type_line("second", "from the second chat");
    tmux.wait_sent("first", "from the second chat");
    tmux.wait_sent("second", "from the second chat");
    // Alice's chat and Bob's send: nothing else.
    assert_eq!(sessions_started(&env), 2, "the second chat connected");

    // The first leaves: the second takes over and goes on.
    tmux.type_line("first", "exit");
    tmux.wait_for("second", "this chat now holds the router session");
    tmux.type_line("second", "after the first left");
    tmux.wait_sent("second", "after the first left");
    let synced = bob_syncs(&env, &router);
    assert_eq!(synced["received"], 2, "{synced}");
    assert_eq!(synced["duplicates"], 0, "{synced}");
    let screen = tmux.screen("second");
    assert!(!screen.contains("Reconnecting"), "{screen}");
    tmux.type_line("second", "exit");
}

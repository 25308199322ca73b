//! Several routers sharing one Redis (issue 10): any router serves any
//! client, nothing acknowledged is lost when a router or Redis dies, and
//! the client cannot tell. Each test starts its own `redis-server` (on a
//! free loopback port, in a temporary directory) and real `chat-p2p
//! router --redis` processes; clients are raw WebSocket sessions
//! (`common::Client`) or the real binary.

mod common;

use std::time::Duration;

use chat_p2p::identity::Identity;
use chat_p2p::protocol::{ErrorCode, Frame};
use chat_p2p::router::backend::redis::local::{Fsync, LocalRedis};
use common::{Client, Env, Router};
use serde_json::Value;

/// One Redis and the routers on it.
struct Cluster {
    dir: tempfile::TempDir,
    redis: LocalRedis,
    routers: Vec<Router>,
}

impl Cluster {
    /// `n` routers started with `extra`, on a Redis with `appendfsync
    /// everysec`.
    fn start(n: usize, extra: &[&str]) -> Cluster {
        Cluster::start_with(Fsync::EverySec, n, extra, &[])
    }

    /// [`Cluster::start`] with the Redis fsync policy and the routers'
    /// environment chosen.
    fn start_with(fsync: Fsync, n: usize, extra: &[&str], vars: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let redis =
            LocalRedis::start(&dir.path().join("redis"), fsync).expect("start redis-server");
        let mut cluster = Cluster {
            dir,
            redis,
            routers: Vec::new(),
        };
        for _ in 0..n {
            cluster.add_router(extra, vars);
        }
        cluster
    }

    /// Starts one more router on the Redis.
    fn add_router(&mut self, extra: &[&str], vars: &[(&str, &str)]) {
        let home = self
            .dir
            .path()
            .join(format!("router{}", self.routers.len() + 1));
        let url = self.redis.url();
        let router = Router::start_redis_with_env(&home, &url, extra, vars);
        self.routers.push(router);
    }

    /// The address of router `i` (0-based).
    fn addr(&self, i: usize) -> String {
        self.routers[i].addr.clone()
    }

    /// Frames in the queue, as router `i` reports them.
    fn depth(&self, i: usize) -> f64 {
        self.routers[i]
            .metric("chat_router_queue_depth")
            .expect("the queue depth is reported")
    }

    /// Waits until every router's `/healthz` answers `status`.
    fn wait_health(&self, status: &str) {
        for router in &self.routers {
            eventually(&format!("{} answers {status}", router.addr), || {
                router.get("/healthz").0.contains(status)
            });
        }
    }
}

/// Polls `check` until it holds; the guard only prevents hanging forever.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..400 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened: {what}");
}

/// A session of `id` at `addr`, retried while the router refuses logins
/// (its queue is coming back).
async fn connect_when_up(addr: &str, id: &Identity) -> Client {
    for _ in 0..400 {
        let mut ws = common::connect_raw(addr, &id.public_key()).await;
        match common::next_frame(&mut ws).await {
            Frame::Challenge(c) => {
                let device = common::default_device(id);
                common::send_frame(&mut ws, &common::auth(id, &c.nonce, addr, &device)).await;
                match common::next_frame(&mut ws).await {
                    Frame::Ready(_) => {
                        let (id, synced) = (common::twin(id), 0);
                        return Client {
                            id,
                            device,
                            ws,
                            synced,
                        };
                    }
                    // Registering failed: refused the same way.
                    Frame::Error(e) if e.code == ErrorCode::Internal => {
                        let (close, _) = common::until_close(&mut ws).await;
                        assert_eq!(close.map(|c| u16::from(c.code)), Some(1013));
                    }
                    other => panic!("expected ready or a refusal, got {other:?}"),
                }
            }
            Frame::Error(e) if e.code == ErrorCode::Internal => {
                let (close, _) = common::until_close(&mut ws).await;
                assert_eq!(close.map(|c| u16::from(c.code)), Some(1013));
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => panic!("expected a challenge or a refusal, got {other:?}"),
        }
    }
    panic!("{addr} never accepted a session");
}

/// The frames `client` gets until `synced` (its backlog), acking none.
async fn backlog(client: &mut Client) -> Vec<Frame> {
    client.until_synced().await
}

#[tokio::test]
async fn a_message_sent_through_one_router_arrives_live_through_the_other() {
    let c = Cluster::start(2, &[]);
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let mut bob = Client::connect(&c.addr(1), Identity::generate()).await;
    assert!(backlog(&mut bob).await.is_empty());
    for body in ["hello bob", "through another router"] {
        let sent = alice.send_acked(&bob.key(), body).await;
        let (got, text) = bob.receive().await;
        assert_eq!(
            (got.id, got.from, text.as_str()),
            (sent.id, alice.key(), body)
        );
        bob.ack(got.id).await;
    }
    // And back, the other way.
    let sent = bob.send_acked(&alice.key(), "hi alice").await;
    alice.until_synced().await;
    let (got, _) = alice.receive().await;
    assert_eq!(got.id, sent.id);
}

#[tokio::test]
async fn an_offline_recipient_gets_the_backlog_through_the_other_router_then_synced() {
    let c = Cluster::start(2, &[]);
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let bob = Identity::generate();
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send_acked(&bob.public_key(), &format!("m{i}"))
                .await
                .id,
        );
    }
    let mut bob = Client::connect(&c.addr(1), bob).await;
    let got: Vec<_> = backlog(&mut bob)
        .await
        .into_iter()
        .map(|f| match f {
            Frame::Message(m) => m.id,
            other => panic!("expected messages, got {other:?}"),
        })
        .collect();
    assert_eq!(got, sent, "all of them, in order, before synced");
}

#[tokio::test]
async fn a_frame_acked_on_the_other_router_is_deleted() {
    let c = Cluster::start(2, &[]);
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let bob = Identity::generate();
    let sent = alice
        .send_acked(&bob.public_key(), "ack me elsewhere")
        .await;
    // The depth counter follows the commits closely, not in step.
    eventually("router 2 counts one frame", || c.depth(1) == 1.0);
    // Delivered through router 1, not acked: still there.
    let mut first = Client::connect(&c.addr(0), common::twin(&bob)).await;
    assert_eq!(first.receive().await.0.id, sent.id);
    first.close().await;
    // Delivered again through router 2, acked there.
    let mut second = Client::connect(&c.addr(1), common::twin(&bob)).await;
    assert_eq!(second.receive().await.0.id, sent.id);
    second.ack(sent.id).await;
    eventually("the frame is deleted from Redis", || c.depth(0) == 0.0);
    second.close().await;
    let mut again = Client::connect(&c.addr(0), bob).await;
    assert!(backlog(&mut again).await.is_empty(), "nothing comes back");
}

#[tokio::test]
async fn a_duplicate_id_sent_through_both_routers_is_delivered_once() {
    let c = Cluster::start(2, &[]);
    let alice = Identity::generate();
    let bob = Identity::generate();
    let mut on_one = Client::connect(&c.addr(0), common::twin(&alice)).await;
    let m = on_one.seal(&bob.public_key(), "only once");
    common::send_frame(&mut on_one.ws, &Frame::Message(m.clone())).await;
    let first_at = on_one.expect_ack(m.id).await;
    on_one.close().await;
    // The client reconnects elsewhere and sends it again (it never saw
    // the ack, say): acked with the first commit's time, not stored.
    let mut on_two = Client::connect(&c.addr(1), alice).await;
    common::send_frame(&mut on_two.ws, &Frame::Message(m.clone())).await;
    assert_eq!(on_two.expect_ack(m.id).await, first_at);
    let mut bob = Client::connect(&c.addr(0), bob).await;
    let got = backlog(&mut bob).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(matches!(&got[0], Frame::Message(g) if g.id == m.id));
}

#[tokio::test]
async fn a_second_login_on_another_router_closes_the_first_with_4000() {
    let c = Cluster::start(2, &[]);
    let bob = Identity::generate();
    let mut old = Client::connect(&c.addr(0), common::twin(&bob)).await;
    assert!(backlog(&mut old).await.is_empty());
    let mut new = Client::connect(&c.addr(1), bob).await;
    let (close, _) = common::until_close(&mut old.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4000, "replaced by a newer session for this key")
    );
    // The new session is the one that gets bob's messages.
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let sent = alice.send_acked(&new.key(), "to the newer session").await;
    new.until_synced().await;
    assert_eq!(new.receive().await.0.id, sent.id);
}

#[tokio::test]
async fn a_router_killed_before_the_ack_leaves_the_frame_to_the_other() {
    let mut c = Cluster::start(2, &[]);
    let bob = Identity::generate();
    let mut alice = Client::connect(&c.addr(1), Identity::generate()).await;
    let mut on_one = Client::connect(&c.addr(0), common::twin(&bob)).await;
    assert!(backlog(&mut on_one).await.is_empty());
    let sent = alice.send_acked(&bob.public_key(), "do not lose me").await;
    assert_eq!(on_one.receive().await.0.id, sent.id);
    // Router 1 dies (SIGKILL) before bob's ack reaches it.
    c.routers.remove(0).kill();
    let mut on_two = Client::connect(&c.addr(0), bob).await;
    let got = on_two.receive().await.0;
    assert_eq!(got.id, sent.id, "redelivered through router 2");
    on_two.ack(got.id).await;
    eventually("the frame is deleted", || c.depth(0) == 0.0);
}

#[tokio::test]
async fn redis_killed_and_restarted_from_its_append_only_file_keeps_the_queue() {
    let mut c = Cluster::start_with(Fsync::Always, 2, &[], &[]);
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let bob = Identity::generate();
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(
            alice
                .send_acked(&bob.public_key(), &format!("m{i}"))
                .await
                .id,
        );
    }
    // SIGKILL: no shutdown, nothing flushed beyond what each ack waited for.
    c.redis.kill9();
    c.redis
        .restart()
        .expect("restart redis-server from its AOF");
    let mut bob = connect_when_up(&c.addr(1), &bob).await;
    let got: Vec<_> = backlog(&mut bob)
        .await
        .into_iter()
        .map(|f| match f {
            Frame::Message(m) => m.id,
            other => panic!("expected messages, got {other:?}"),
        })
        .collect();
    assert_eq!(got, sent, "every acknowledged frame, once, in order");
    // And the routers carry on.
    let more = alice.send_acked(&bob.key(), "after the restart").await;
    assert_eq!(bob.receive().await.0.id, more.id);
}

/// `profile`'s `chat-p2p` pointed at `router`.
fn cmd(env: &Env, profile: &str, router: &Router) -> assert_cmd::Command {
    let mut cmd = env.cmd(profile);
    cmd.env("CHAT_SERVER", router.url());
    cmd
}

/// Runs `cmd`, asserting it succeeded; its stdout.
fn ok(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(common::run_ok(cmd).stdout).unwrap()
}

/// `profile`'s messages with `peer` whose body is `body`.
fn messages(env: &Env, profile: &str, peer: &str, body: &str) -> Vec<Value> {
    let history = env.json(profile, &["history", peer, "--json"]);
    history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["body"] == body)
        .cloned()
        .collect()
}

#[tokio::test]
async fn while_redis_is_down_sends_are_refused_and_the_outbox_delivers_after() {
    let mut c = Cluster::start(2, &[]);
    let env = Env::new();
    env.friends();
    // Sessions open before the outage (raw, to see each frame).
    let mut carol = Client::connect(&c.addr(0), Identity::generate()).await;
    let mut dave = Client::connect(&c.addr(1), Identity::generate()).await;
    assert!(backlog(&mut carol).await.is_empty());
    assert!(backlog(&mut dave).await.is_empty());

    c.redis.kill9();
    c.wait_health("503");
    let (status, body) = c.routers[0].get("/healthz");
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        body.contains("queue unavailable") && body.contains(&c.redis.url()),
        "{body}"
    );
    assert_eq!(c.routers[1].metric("chat_router_queue_up"), Some(0.0));
    // A send on an open session: internal, and no ack.
    let m = carol.seal(&dave.key(), "while redis is down");
    common::send_frame(&mut carol.ws, &Frame::Message(m.clone())).await;
    let refused = carol.expect_error().await;
    assert_eq!(
        (refused.id, refused.code),
        (Some(m.id), ErrorCode::Internal)
    );
    // The real client cannot even sign in: its message waits, pending.
    let out = cmd(&env, "alice", &c.routers[0])
        .args([
            "send",
            "bob",
            "queued while redis is down",
            "--timeout",
            "5",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("queue is unavailable"), "{stderr}");
    let pending = messages(&env, "alice", "bob", "queued while redis is down");
    assert_eq!(pending[0]["status"], "pending");

    c.redis.restart().expect("restart redis-server");
    c.wait_health("200 OK");
    assert_eq!(c.routers[0].metric("chat_router_queue_up"), Some(1.0));
    // The open sessions carry on: the same frame again goes through, live
    // across the routers.
    common::send_frame(&mut carol.ws, &Frame::Message(m.clone())).await;
    carol.expect_ack(m.id).await;
    assert_eq!(dave.receive().await.0.id, m.id);
    // The outbox sends on the next sync, through one router; bob gets it
    // through the other, once.
    let summary = ok(cmd(&env, "alice", &c.routers[0]).arg("sync"));
    assert!(summary.contains("1 sent"), "{summary}");
    ok(cmd(&env, "bob", &c.routers[1]).arg("sync"));
    ok(cmd(&env, "bob", &c.routers[1]).arg("sync"));
    let got = messages(&env, "bob", "alice", "queued while redis is down");
    assert_eq!(got.len(), 1, "delivered exactly once");
}

#[tokio::test]
async fn quotas_hold_across_routers() {
    let c = Cluster::start(2, &["--max-queued", "2"]);
    let bob = Identity::generate();
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let mut carol = Client::connect(&c.addr(1), Identity::generate()).await;
    alice.send_acked(&bob.public_key(), "one").await;
    carol.send_acked(&bob.public_key(), "two").await;
    // Full, whichever router the third comes through.
    for sender in [&mut alice, &mut carol] {
        let m = sender.send(&bob.public_key(), "three").await;
        let e = loop {
            match sender.next().await {
                Frame::Error(e) => break e,
                Frame::Ack(a) => panic!("acked over the quota: {a:?}"),
                _ => {}
            }
        };
        assert_eq!((e.id, e.code), (Some(m.id), ErrorCode::QuotaExceeded));
    }
    // Bob drains through router 2; there is room again through router 1.
    let mut bob = Client::connect(&c.addr(1), bob).await;
    for frame in backlog(&mut bob).await {
        if let Frame::Message(m) = frame {
            bob.ack(m.id).await;
        }
    }
    eventually("bob's acks are settled", || c.depth(0) == 0.0);
    let sent = alice.send_acked(&bob.key(), "room again").await;
    assert_eq!(bob.receive().await.0.id, sent.id);
}

#[tokio::test]
async fn frames_past_the_retention_expire_from_redis() {
    // A retention of seconds (debug builds only), checked every second.
    let vars = [("CHAT_TEST_RETENTION_SECS", "2")];
    let c = Cluster::start_with(Fsync::EverySec, 2, &[], &vars);
    let bob = Identity::generate();
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    for body in ["old news", "older news"] {
        alice.send_acked(&bob.public_key(), body).await;
    }
    eventually("the frames expire", || c.depth(1) == 0.0);
    let mut bob = Client::connect(&c.addr(1), bob).await;
    assert!(
        backlog(&mut bob).await.is_empty(),
        "expired frames are gone"
    );
}

#[test]
fn the_client_is_oblivious_to_which_router_it_reaches() {
    // tests/client.rs' full status sequence, alice on one router and bob
    // on the other.
    let c = Cluster::start(2, &[]);
    let env = Env::new();
    env.friends();
    let (one, two) = (&c.routers[0], &c.routers[1]);
    let run =
        |profile: &str, router: &Router, args: &[&str]| ok(cmd(&env, profile, router).args(args));
    let status = |profile: &str, peer: &str| -> String {
        let m = messages(&env, profile, peer, "hello bob");
        assert_eq!(m.len(), 1, "{m:?}");
        m[0]["status"].as_str().unwrap().to_owned()
    };
    run("alice", one, &["send", "bob", "hello", "bob"]);
    assert_eq!(status("alice", "bob"), "sent");
    let summary = run("bob", two, &["sync"]);
    assert!(summary.contains("1 received"), "{summary}");
    run("alice", two, &["sync"]);
    assert_eq!(status("alice", "bob"), "delivered");
    let out = cmd(&env, "bob", one)
        .args(["chat", "alice"])
        .write_stdin("exit\n")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice: hello bob"));
    run("alice", one, &["sync"]);
    assert_eq!(status("alice", "bob"), "read");
}

#[test]
fn each_device_gets_its_copy_whichever_router_it_uses() {
    // tests/devices_sync.rs' first scenario, the devices on two routers.
    let c = Cluster::start(2, &[]);
    let env = Env::new();
    env.friends();
    env.second_device("alice", "alice2");
    ok(cmd(&env, "alice", &c.routers[0]).arg("sync"));
    ok(cmd(&env, "alice2", &c.routers[1]).arg("sync"));
    ok(cmd(&env, "bob", &c.routers[0]).args(["send", "alice", "hello, both of you"]));
    ok(cmd(&env, "alice", &c.routers[1]).arg("sync"));
    ok(cmd(&env, "alice2", &c.routers[0]).arg("sync"));
    let one = messages(&env, "alice", "bob", "hello, both of you");
    let two = messages(&env, "alice2", "bob", "hello, both of you");
    assert_eq!((one.len(), two.len()), (1, 1));
    assert_eq!(one[0]["msg_id"], two[0]["msg_id"]);
}

/// A wake-up lost without the recipient's router noticing is made good by
/// the periodic re-check (every heartbeat, `--ping-interval 1` here).
///
/// How the wake-up is lost, faithfully: the routers' pub/sub connections
/// are killed (`CLIENT KILL TYPE pubsub`) while the default Redis user may
/// not `SUBSCRIBE` (`ACL SETUSER default -subscribe`), so the routers
/// cannot subscribe again: the frame's `PUBLISH` reaches nobody, and the
/// re-check a router does once it is subscribed again (which would also
/// find the frame) cannot happen. Everything else works as usual (the
/// enqueue, the recipient's claim, fetches), so only the heartbeat's
/// re-check can deliver the frame.
#[tokio::test]
async fn a_lost_wake_up_is_made_good_by_the_periodic_recheck() {
    let c = Cluster::start(2, &["--ping-interval", "1"]);
    let mut alice = Client::connect(&c.addr(0), Identity::generate()).await;
    let mut bob = Client::connect(&c.addr(1), Identity::generate()).await;
    assert!(backlog(&mut bob).await.is_empty());
    let live = alice.send_acked(&bob.key(), "woken as usual").await;
    assert_eq!(bob.receive().await.0.id, live.id);

    assert_eq!(
        c.redis.command("ACL SETUSER default -subscribe").unwrap(),
        "+OK"
    );
    let killed = c.redis.command("CLIENT KILL TYPE pubsub").unwrap();
    assert_eq!(killed, ":2", "both routers' subscriptions are cut");
    let lost = alice.send_acked(&bob.key(), "nobody hears of me").await;
    assert_eq!(
        c.redis.command("PUBSUB CHANNELS").unwrap(),
        "*0",
        "still cut off"
    );
    let (got, body) = bob.receive().await;
    assert_eq!((got.id, body.as_str()), (lost.id, "nobody hears of me"));
    assert_eq!(
        c.redis.command("PUBSUB CHANNELS").unwrap(),
        "*0",
        "not by a resubscription"
    );
    assert_eq!(
        c.redis.command("ACL SETUSER default +subscribe").unwrap(),
        "+OK"
    );
}

/// A replacement whose event is lost (the older session's router cannot
/// subscribe, as in the test above) still ends the older session, on its
/// next heartbeat: its claim is no longer the newest.
#[tokio::test]
async fn a_lost_replacement_is_caught_by_the_heartbeat() {
    let c = Cluster::start(2, &["--ping-interval", "1"]);
    let bob = Identity::generate();
    let mut old = Client::connect(&c.addr(0), common::twin(&bob)).await;
    assert!(backlog(&mut old).await.is_empty());
    assert_eq!(
        c.redis.command("ACL SETUSER default -subscribe").unwrap(),
        "+OK"
    );
    assert_eq!(c.redis.command("CLIENT KILL TYPE pubsub").unwrap(), ":2");
    let _new = Client::connect(&c.addr(1), bob).await;
    let (close, _) = common::until_close(&mut old.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(
        (u16::from(close.code), close.reason.as_str()),
        (4000, "replaced by a newer session for this key")
    );
    assert_eq!(
        c.redis.command("PUBSUB CHANNELS").unwrap(),
        "*0",
        "not by an event"
    );
    assert_eq!(
        c.redis.command("ACL SETUSER default +subscribe").unwrap(),
        "+OK"
    );
}

/// A chat open through a Redis outage: what is typed meanwhile waits, the
/// user is told once (not at every retry) that the router asks to wait,
/// and it goes out when Redis is back.
#[test]
fn a_chat_open_through_a_redis_outage_says_so_once_and_sends_after() {
    use std::io::Write as _;
    use std::process::{Command as StdCommand, Stdio};
    let mut c = Cluster::start(1, &[]);
    let env = Env::new();
    env.friends();
    let mut chat = StdCommand::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .env("CHAT_HOME", env.home())
        .env("CHAT_PROFILE", "alice")
        .env("CHAT_CONFIG", env.config())
        .env("CHAT_SERVER", c.routers[0].url())
        .args(["chat", "bob", "--timeout", "60"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    eventually("the chat is signed in", || {
        c.routers[0].metric("chat_router_sessions") == Some(1.0)
    });
    c.redis.kill9();
    c.wait_health("503");
    let mut input = chat.stdin.take().unwrap();
    writeln!(input, "typed while redis is down").unwrap();
    // Several retries' worth (a retry every two seconds).
    std::thread::sleep(Duration::from_secs(7));
    c.redis.restart().expect("restart redis-server");
    drop(input);
    let out = chat.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let waits = stdout.matches("router asks to wait").count();
    assert_eq!(waits, 1, "said once per outage:\n{stdout}");
    let sent = messages(&env, "alice", "bob", "typed while redis is down");
    assert_eq!(sent[0]["status"], "sent", "{stdout}");
}

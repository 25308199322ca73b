//! Alice on two devices and Bob, with a real router and the real binary:
//! what alice sends, reads and saves on one device shows on the other
//! (issue 9, item 4). The second device is a copy of alice's profile file
//! with its own device id, as `Env::second_device` makes it, or (once) made
//! with `chat-p2p link`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::{self, Content, Frame};

use common::{Env, Router, Tmux, Watch};
use serde_json::Value;
use uuid::Uuid;

/// Alice on `alice` and `alice2`, Bob on `bob`, and a router. Both alice
/// devices have connected once, so the router knows them before anything
/// is sent (a device registering later receives only what comes after).
struct Devices {
    env: Env,
    router: Router,
    alice: String,
    bob: String,
}

impl Devices {
    fn new() -> Self {
        Self::made(|env, _| env.second_device("alice", "alice2"))
    }

    /// The same, `alice2` made with `chat-p2p link` as a user would.
    fn linked() -> Self {
        Self::made(|env, router| {
            let mut issuer = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
                .env_clear()
                .env("CHAT_HOME", env.home())
                .env("CHAT_CONFIG", env.config())
                .env("CHAT_PROFILE", "alice")
                .args(["link", "--json", "--server", &router.url()])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let (tx, lines) = mpsc::channel();
            let stdout = issuer.stdout.take().unwrap();
            // Read to the end: the issuer reports its progress there.
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let first = lines.recv_timeout(Duration::from_secs(30)).unwrap();
            let first: Value = serde_json::from_str(&first).unwrap();
            let code = first["code"].as_str().unwrap();
            let url = router.url();
            env.ok("alice2", &["link", "--join", code, "--server", &url]);
            assert!(issuer.wait().unwrap().success());
        })
    }

    fn made(second: impl FnOnce(&Env, &Router)) -> Self {
        let env = Env::new();
        let router = Router::start(&env.path("router"), &[]);
        let (alice, bob) = env.friends();
        second(&env, &router);
        let d = Devices {
            env,
            router,
            alice,
            bob,
        };
        d.ok("alice", &["sync"]);
        d.ok("alice2", &["sync"]);
        d
    }

    fn ok(&self, profile: &str, args: &[&str]) -> String {
        let out = common::run_ok(
            self.env
                .cmd(profile)
                .env("CHAT_SERVER", self.router.url())
                .args(args),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `chat PEER -n N`, which shows (and so reads) the last N messages,
    /// then leaves once the router has everything it sent.
    fn show(&self, profile: &str, peer: &str, n: &str) -> String {
        let out = common::run_ok(
            self.env
                .cmd(profile)
                .env("CHAT_SERVER", self.router.url())
                .args(["chat", peer, "-n", n])
                .write_stdin("exit\n"),
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn history(&self, profile: &str, peer: &str) -> Vec<Value> {
        let out = self.ok(profile, &["history", peer, "--json", "-n", "1000"]);
        serde_json::from_str::<Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// The message with `body` in `profile`'s conversation with `peer`.
    fn find(&self, profile: &str, peer: &str, body: &str) -> Value {
        let history = self.history(profile, peer);
        let found: Vec<&Value> = history.iter().filter(|m| m["body"] == body).collect();
        assert_eq!(found.len(), 1, "{profile}: {history:?}");
        found[0].clone()
    }

    /// The timeline of the message `msg_id` in `direction` on `profile`, as
    /// (status, time) pairs.
    fn timeline(&self, profile: &str, msg_id: &Value, direction: &str) -> Vec<(String, String)> {
        let conn = rusqlite::Connection::open(self.env.db(profile)).unwrap();
        let mut stmt = conn
            .prepare(
                "SELECT e.status, e.at FROM message_events AS e
                 JOIN messages AS m ON m.id = e.message_id
                 WHERE m.msg_id = ?1 AND m.direction = ?2
                 ORDER BY e.seq",
            )
            .unwrap();
        let rows = stmt
            .query_map([msg_id.as_str().unwrap(), direction], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        rows.collect::<rusqlite::Result<_>>().unwrap()
    }

    fn contacts(&self, profile: &str) -> Vec<(String, String)> {
        let v: Value = serde_json::from_str(&self.ok(profile, &["contacts", "--json"])).unwrap();
        let mut names: Vec<(String, String)> = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["kind"] == "contact")
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_owned(),
                    c["public_key"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        names.sort();
        names
    }
}

#[test]
fn bobs_message_reaches_both_of_alices_devices() {
    let d = Devices::new();
    d.ok("bob", &["send", "alice", "hello, both of you"]);
    d.ok("alice", &["sync"]);
    d.ok("alice2", &["sync"]);
    let one = d.find("alice", "bob", "hello, both of you");
    let two = d.find("alice2", "bob", "hello, both of you");
    assert_eq!(one["msg_id"], two["msg_id"]);
    assert_eq!(
        (&one["direction"], &two["direction"]),
        (&"in".into(), &"in".into())
    );
    assert_eq!(one["peer_key"], d.bob.as_str());
}

#[test]
fn what_alice_sends_on_one_device_shows_on_the_other_with_bobs_receipts() {
    let d = Devices::new();
    d.ok("alice", &["send", "bob", "sent from the laptop"]);
    d.ok("alice2", &["sync"]);
    let copy = d.find("alice2", "bob", "sent from the laptop");
    let original = d.find("alice", "bob", "sent from the laptop");
    assert_eq!(copy["direction"], "out");
    assert_eq!(copy["status"], "sent");
    assert_eq!(copy, original, "same id, status and times");

    // Bob stores it (delivered), then shows it (read).
    d.ok("bob", &["sync"]);
    for device in ["alice", "alice2"] {
        d.ok(device, &["sync"]);
        assert_eq!(
            d.find(device, "bob", "sent from the laptop")["status"],
            "delivered"
        );
    }
    assert!(d.show("bob", "alice", "5").contains("sent from the laptop"));
    for device in ["alice", "alice2"] {
        d.ok(device, &["sync"]);
    }
    let (one, two) = (
        d.find("alice", "bob", "sent from the laptop"),
        d.find("alice2", "bob", "sent from the laptop"),
    );
    assert_eq!(one["status"], "read");
    assert_eq!(one, two);
    let timeline = d.timeline("alice", &one["msg_id"], "out");
    let statuses: Vec<&str> = timeline.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["pending", "sent", "delivered", "read"]);
    assert_eq!(timeline, d.timeline("alice2", &one["msg_id"], "out"));
    // The copy was not sent to bob a second time.
    assert_eq!(d.history("bob", "alice").len(), 1);
}

/// Every frame queued for `bob` since his device `device` last came,
/// acknowledged; the router's `synced` ends the wait.
async fn drain(addr: &str, bob: &Identity, device: &Uuid) -> Vec<Content> {
    let mut ws = common::connect_raw(addr, &bob.public_key()).await;
    let nonce = common::read_challenge(&mut ws).await;
    common::send_frame(&mut ws, &common::auth(bob, &nonce, addr, device)).await;
    let mut contents = Vec::new();
    loop {
        match common::next_frame(&mut ws).await {
            Frame::Synced => break,
            Frame::Message(m) => {
                contents.push(protocol::open(bob, &m).expect("open"));
                let ack = Frame::Ack(protocol::Ack { id: m.id, at: None });
                common::send_frame(&mut ws, &ack).await;
            }
            _ => {}
        }
    }
    contents
}

#[test]
fn a_read_on_one_device_is_a_read_on_the_other_and_bob_gets_one_receipt() {
    // Bob is a raw client here, to count the receipts that reach him.
    let env = Env::new();
    let router = Router::start(&env.path("router"), &[]);
    let bob = Identity::generate();
    let bob_key: PublicKey = bob.public_key();
    let alice = env.init("alice");
    env.ok("alice", &["add-contact", "bob", &bob_key.to_base64()]);
    env.second_device("alice", "alice2");
    let d = Devices {
        env,
        router,
        alice,
        bob: bob_key.to_base64(),
    };
    d.ok("alice", &["sync"]);
    d.ok("alice2", &["sync"]);
    let alice_key = PublicKey::parse(&d.alice).unwrap();
    let device = Uuid::new_v4();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = common::connect_raw(&d.router.addr, &bob_key).await;
        let nonce = common::read_challenge(&mut ws).await;
        common::send_frame(
            &mut ws,
            &common::auth(&bob, &nonce, &d.router.addr, &device),
        )
        .await;
        let sealed = protocol::seal(
            &bob,
            &alice_key,
            Uuid::now_v7(),
            &chat_p2p::clock::now(),
            &Content::text("read me once"),
        )
        .unwrap();
        common::send_frame(&mut ws, &Frame::Message(sealed.clone())).await;
        loop {
            if let Frame::Ack(a) = common::next_frame(&mut ws).await {
                assert_eq!(a.id, sealed.id);
                break;
            }
        }
    });
    d.ok("alice", &["sync"]);
    d.ok("alice2", &["sync"]);
    // Device 2 shows it; device 1 hears of it.
    assert!(d.show("alice2", "bob", "5").contains("read me once"));
    d.ok("alice", &["sync"]);
    let one = d.find("alice", "bob", "read me once");
    let two = d.find("alice2", "bob", "read me once");
    assert_eq!(one["status"], "read");
    assert_eq!(one["read_at"], two["read_at"]);
    // Showing it on device 1 now reads nothing new.
    assert!(d.show("alice", "bob", "5").contains("read me once"));
    let read = rt.block_on(drain(&d.router.addr, &bob, &device));
    let reads = read
        .iter()
        .filter(|c| matches!(c, Content::Read { .. }))
        .count();
    assert_eq!(reads, 1, "{read:?}");
    assert!(
        read.iter().all(|c| !c.is_self_sync()),
        "bob hears nothing of alice's devices: {read:?}"
    );
}

#[test]
fn contacts_follow_from_one_device_to_the_other() {
    let d = Devices::new();
    let carol = Identity::generate().public_key().to_base64();
    d.ok("alice", &["add-contact", "carol", &carol]);
    d.ok("alice", &["sync"]);
    d.ok("alice2", &["sync"]);
    assert_eq!(d.contacts("alice2"), d.contacts("alice"));
    assert!(d
        .contacts("alice2")
        .contains(&("carol".into(), carol.clone())));

    d.ok("alice2", &["rename-contact", "carol", "caroline"]);
    d.ok("alice2", &["sync"]);
    d.ok("alice", &["sync"]);
    assert!(d
        .contacts("alice")
        .contains(&("caroline".into(), carol.clone())));

    d.ok("alice", &["remove-contact", "caroline"]);
    d.ok("alice", &["sync"]);
    d.ok("alice2", &["sync"]);
    assert_eq!(d.contacts("alice2"), d.contacts("alice"));
    assert_eq!(d.contacts("alice2"), [("bob".to_owned(), d.bob.clone())]);
}

#[test]
fn a_device_online_shows_what_the_other_sends_as_it_happens() {
    let d = Devices::new();
    let mut watch = Watch::start(&d.env, "alice2", &d.router);
    watch.wait_for("connected", |l| l["kind"] == "connected");
    d.ok("alice", &["send", "bob", "live from the laptop"]);
    let copy = watch.wait_for("the copy", |l| l["kind"] == "message");
    assert_eq!(copy["direction"], "out");
    assert_eq!(copy["body"], "live from the laptop");
    assert_eq!(copy["status"], "sent");
    d.ok("bob", &["sync"]);
    let delivered = watch.wait_for("delivered", |l| l["kind"] == "status");
    assert_eq!(delivered["msg_id"], copy["msg_id"]);
    assert_eq!(delivered["status"], "delivered");
}

/// A private tmux server running `PROFILE chat bob` in a 100-column
/// terminal, its prompt shown.
fn chat(d: &Devices, profile: &str) -> Tmux {
    let tmux = Tmux::new();
    let config = d.env.config();
    let url = d.router.url();
    let vars = [
        ("CHAT_CONFIG", config.to_str().unwrap()),
        ("CHAT_SERVER", &url),
    ];
    let command = common::clean_command(&d.env, profile, &vars, "chat bob");
    tmux.open(common::SESSION, (100, 30), &[&command]);
    tmux.wait_prompt();
    tmux
}

#[test]
fn what_is_typed_in_one_devices_chat_shows_in_the_others() {
    let d = Devices::new();
    let (one, two) = (chat(&d, "alice"), chat(&d, "alice2"));
    one.type_line("typed on the laptop");
    let screen = two.wait_until("the copy", |s| s.contains("typed on the laptop"));
    let line = screen
        .lines()
        .find(|l| l.contains("typed on the laptop"))
        .unwrap();
    assert!(line.contains("you → bob"), "shown as alice's own: {line:?}");
    // Bob stores it: both chats say so.
    d.ok("bob", &["sync"]);
    for chat in [&one, &two] {
        chat.wait_until("delivered", |s| s.contains("✓✓ delivered to bob"));
    }
}

#[test]
fn a_device_made_with_link_keeps_in_step_as_well() {
    let d = Devices::linked();
    d.ok("alice2", &["send", "bob", "from the linked device"]);
    d.ok("alice", &["sync"]);
    let copy = d.find("alice", "bob", "from the linked device");
    assert_eq!(copy, d.find("alice2", "bob", "from the linked device"));
    assert_eq!(copy["direction"], "out");
    d.ok("bob", &["sync"]);
    for device in ["alice", "alice2"] {
        d.ok(device, &["sync"]);
    }
    let one = d.find("alice", "bob", "from the linked device");
    assert_eq!(one["status"], "delivered");
    assert_eq!(one, d.find("alice2", "bob", "from the linked device"));
    let carol = Identity::generate().public_key().to_base64();
    d.ok("alice", &["add-contact", "carol", &carol]);
    d.ok("alice", &["sync"]);
    d.ok("alice2", &["sync"]);
    assert_eq!(d.contacts("alice2"), d.contacts("alice"));
}

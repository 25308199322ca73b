//! Home routers (issue 11): everyone receives at a router of their own,
//! and people on different routers talk. Each test starts real routers
//! (separate processes, separate queues) and drives the real binary; a
//! profile's home is the router its commands are pointed at.

mod common;

use std::io::Write as _;
use std::process::{Command as StdCommand, Stdio};

use chat_p2p::router::backend::redis::local::{Fsync, LocalRedis};
use common::{Env, Router};
use serde_json::Value;

/// Routers and profiles, each profile living at one of the routers.
struct World {
    env: Env,
    routers: Vec<Option<Router>>,
    /// Which router each profile calls home (an index into `routers`).
    homes: Vec<(String, usize)>,
}

impl World {
    /// `n` routers, each with its own queue.
    fn new(n: usize) -> World {
        let env = Env::new();
        let routers = (0..n)
            .map(|i| Some(Router::start(&env.path(&format!("router{i}")), &[])))
            .collect();
        World {
            env,
            routers,
            homes: Vec::new(),
        }
    }

    fn router(&self, i: usize) -> &Router {
        self.routers[i].as_ref().expect("router running")
    }

    fn url(&self, i: usize) -> String {
        self.router(i).url()
    }

    /// Creates `profile` at home on router `i`; returns its address.
    fn person(&mut self, profile: &str, i: usize) -> String {
        self.homes.push((profile.to_owned(), i));
        self.ok(profile, &["init"]);
        // The first router a profile talks to becomes its home.
        self.ok(profile, &["sync"]);
        self.ok(profile, &["whoami", "--address"]).trim().to_owned()
    }

    fn home_of(&self, profile: &str) -> usize {
        self.homes
            .iter()
            .find(|(p, _)| p == profile)
            .map(|(_, i)| *i)
            .expect("known profile")
    }

    /// `profile`'s command pointed at its home router.
    fn cmd(&self, profile: &str) -> assert_cmd::Command {
        let mut cmd = self.env.cmd(profile);
        // A router taken down is no one's to point at: the profile's
        // recorded home is used then.
        if let Some(router) = &self.routers[self.home_of(profile)] {
            cmd.env("CHAT_SERVER", router.url());
        }
        cmd
    }

    fn ok(&self, profile: &str, args: &[&str]) -> String {
        String::from_utf8(common::run_ok(self.cmd(profile).args(args)).stdout).unwrap()
    }

    /// Runs and returns (exit code, stdout, stderr).
    fn run(&self, profile: &str, args: &[&str]) -> (Option<i32>, String, String) {
        let out = self.cmd(profile).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Opens `chat PEER` for `profile`, types `lines`, and leaves: what is
    /// shown is read.
    fn chat(&self, profile: &str, peer: &str, lines: &[&str]) {
        let mut child = StdCommand::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", self.env.home())
            .env("CHAT_PROFILE", profile)
            .env("CHAT_CONFIG", self.env.config())
            .env("CHAT_SERVER", self.url(self.home_of(profile)))
            .args(["chat", peer, "--timeout", "20"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        for line in lines {
            writeln!(input, "{line}").unwrap();
        }
        writeln!(input, "exit").unwrap();
        drop(input);
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{profile} chat {peer}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The one message of `profile` with `peer` whose body is `body`.
    fn message(&self, profile: &str, peer: &str, body: &str) -> Value {
        let history: Value =
            serde_json::from_str(&self.ok(profile, &["history", peer, "--json"])).unwrap();
        let all: Vec<Value> = history
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["body"] == body)
            .cloned()
            .collect();
        assert_eq!(
            all.len(),
            1,
            "{profile} has {} copies of {body:?}",
            all.len()
        );
        all.into_iter().next().unwrap()
    }

    fn status(&self, profile: &str, peer: &str, body: &str) -> String {
        self.message(profile, peer, body)["status"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A contact's router as `contacts --json` shows it.
    fn contact_router(&self, profile: &str, name: &str) -> Value {
        let contacts: Value =
            serde_json::from_str(&self.ok(profile, &["contacts", "--json"])).unwrap();
        contacts
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{profile} has no contact {name}: {contacts}"))["router"]
            .clone()
    }
}

/// Checks an outgoing message went through every status with its time,
/// in order.
fn assert_timeline(m: &Value) {
    assert_eq!(m["status"], "read", "{m}");
    let times: Vec<&str> = ["created_at", "sent_at", "delivered_at", "read_at"]
        .iter()
        .map(|k| m[k].as_str().unwrap_or_else(|| panic!("{k} missing: {m}")))
        .collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
}

#[test]
fn two_people_on_different_routers_chat_with_every_status_both_ways() {
    let mut w = World::new(2);
    let alice = w.person("alice", 0);
    let bob = w.person("bob", 1);
    assert!(alice.starts_with("chat-p2p:") && alice.ends_with(&w.router(0).addr));
    w.ok("alice", &["add-contact", "bob", &bob]);
    w.ok("bob", &["add-contact", "alice", &alice]);

    w.ok("alice", &["send", "bob", "hello from router one"]);
    assert_eq!(w.status("alice", "bob", "hello from router one"), "sent");
    w.ok("bob", &["sync"]);
    w.ok("alice", &["sync"]);
    assert_eq!(
        w.status("alice", "bob", "hello from router one"),
        "delivered",
        "bob's receipt reached alice's router"
    );
    w.chat("bob", "alice", &["and hello from router two"]);
    w.ok("alice", &["sync"]);
    assert_timeline(&w.message("alice", "bob", "hello from router one"));

    w.chat("alice", "bob", &[]);
    w.ok("bob", &["sync"]);
    assert_timeline(&w.message("bob", "alice", "and hello from router two"));
    // Nothing crossed through the wrong router: each queue is empty.
    for i in 0..2 {
        assert_eq!(w.router(i).metric("chat_router_queue_depth"), Some(0.0));
    }
}

#[test]
fn a_receipt_finds_a_sender_known_only_by_key_through_the_home_in_the_message() {
    let mut w = World::new(2);
    let alice = w.person("alice", 0);
    w.person("bob", 1);
    let bob_key = w.ok("bob", &["whoami", "--key"]).trim().to_owned();
    let alice_key = alice
        .trim_start_matches("chat-p2p:")
        .split('@')
        .next()
        .unwrap()
        .to_owned();
    w.ok(
        "alice",
        &["add-contact", "bob", &w.ok("bob", &["whoami", "--address"])],
    );
    // Bob saved alice by her bare key: "same router as mine", wrong.
    w.ok("bob", &["add-contact", "alice", &alice_key]);
    assert_eq!(w.contact_router("bob", "alice"), Value::Null);
    w.ok("alice", &["send", "bob", "my home is in here"]);
    w.ok("bob", &["sync"]);
    // The sealed text said where alice receives; bob's entry follows.
    assert_eq!(w.contact_router("bob", "alice"), w.url(0));
    w.ok("alice", &["sync"]);
    assert_eq!(w.status("alice", "bob", "my home is in here"), "delivered");
    assert!(!bob_key.is_empty());
}

/// The key in an address.
fn key_of(address: &str) -> String {
    address
        .trim()
        .trim_start_matches("chat-p2p:")
        .split('@')
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn a_stranger_on_a_third_router_is_kept_as_unknown_and_can_be_answered() {
    let mut w = World::new(3);
    w.person("alice", 0);
    let bob = w.person("bob", 1);
    let carol = w.person("carol", 2);
    w.ok("carol", &["add-contact", "bob", &bob]);
    w.ok("carol", &["send", "bob", "you do not know me"]);
    w.ok("bob", &["sync"]);
    let carol_key = key_of(&carol);
    let got = w.message("bob", &carol_key, "you do not know me");
    assert_eq!(got["contact"], Value::Null, "kept as unknown: {got}");
    // No receipt to a stranger: carol's message stays sent.
    w.ok("carol", &["sync"]);
    assert_eq!(w.status("carol", "bob", "you do not know me"), "sent");
    // Saved by key, carol is where she said she receives.
    w.ok("bob", &["add-contact", "carol", &carol_key]);
    assert_eq!(w.contact_router("bob", "carol"), w.url(2));
    w.ok("bob", &["send", "carol", "now I do"]);
    w.ok("carol", &["sync"]);
    assert_eq!(w.status("carol", "bob", "now I do"), "received");
}

#[test]
fn a_contact_whose_router_is_down_holds_back_only_their_messages() {
    let mut w = World::new(3);
    let alice = w.person("alice", 0);
    let bob = w.person("bob", 1);
    let carol = w.person("carol", 2);
    w.ok("alice", &["add-contact", "bob", &bob]);
    w.ok("alice", &["add-contact", "carol", &carol]);
    w.ok("carol", &["add-contact", "alice", &alice]);
    let carols = w.routers[2].take().unwrap();
    let carols_addr = carols.addr.clone();
    // Killed: nothing graceful; its queue stays on disk.
    carols.kill();
    let data = w.env.path("router2");
    w.ok(
        "alice",
        &[
            "send",
            "--queue",
            "carol",
            "for carol, whose router is down",
        ],
    );
    let (code, _, stderr) = w.run("alice", &["send", "carol", "and another"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("pending"), "{stderr}");
    w.ok("alice", &["send", "bob", "bob is not held back"]);
    let (code, out, stderr) = w.run("alice", &["sync"]);
    assert_eq!(code, Some(0), "{out}{stderr}");
    assert!(stderr.contains(&carols_addr), "says which router: {stderr}");
    assert!(out.contains("2 still pending"), "{out}");
    w.ok("bob", &["sync"]);
    let alice_key = key_of(&w.ok("alice", &["whoami", "--address"]));
    assert_eq!(
        w.status("bob", &alice_key, "bob is not held back"),
        "received"
    );
    // Carol's router is back (same address, same queue): what waited goes.
    w.routers[2] = Some(Router::start_at(&data, &carols_addr, &[]));
    w.ok("alice", &["sync"]);
    for body in ["for carol, whose router is down", "and another"] {
        assert_eq!(w.status("alice", "carol", body), "sent", "{body}");
    }
    w.ok("carol", &["sync"]);
    w.ok("alice", &["sync"]);
    for body in ["for carol, whose router is down", "and another"] {
        assert_eq!(w.status("alice", "carol", body), "delivered", "{body}");
    }
}

#[test]
fn moving_home_tells_contacts_and_loses_nothing_queued_at_the_old_router() {
    let mut w = World::new(3);
    let alice = w.person("alice", 0);
    let bob = w.person("bob", 1);
    w.ok("alice", &["add-contact", "bob", &bob]);
    w.ok("bob", &["add-contact", "alice", &alice]);
    let bob_key = key_of(&bob);
    // Queued at alice's old home, and still there when she moves.
    w.ok("bob", &["send", "alice", "sent before the move"]);
    let new_home = w.url(2);
    w.ok("alice", &["home", "set", &new_home]);
    w.homes.retain(|(p, _)| p != "alice");
    w.homes.push(("alice".into(), 2));
    let (code, out, err) = w.run("alice", &["sync"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(err.contains("previous home"), "{err}");
    assert_eq!(
        w.status("alice", &bob_key, "sent before the move"),
        "received"
    );
    assert_eq!(w.router(0).metric("chat_router_queue_depth"), Some(0.0));
    // Bob's client learnt the move from alice's notice, without asking.
    w.ok("bob", &["sync"]);
    assert_eq!(
        w.contact_router("bob", "alice"),
        Value::from(new_home.clone())
    );
    assert_eq!(
        w.status("bob", "alice", "sent before the move"),
        "delivered"
    );
    w.ok("bob", &["send", "alice", "after the move"]);
    assert_eq!(w.router(2).metric("chat_router_queue_depth"), Some(1.0));
    assert_eq!(w.router(0).metric("chat_router_queue_depth"), Some(0.0));
    w.ok("alice", &["sync"]);
    assert_eq!(w.status("alice", &bob_key, "after the move"), "received");
    // Nothing twice.
    let history: Value =
        serde_json::from_str(&w.ok("alice", &["history", &bob_key, "--json"])).unwrap();
    assert_eq!(history.as_array().unwrap().len(), 2, "{history}");
}

#[test]
fn a_contact_who_missed_the_move_learns_it_from_the_next_message() {
    let mut w = World::new(3);
    let alice = w.person("alice", 0);
    let bob = w.person("bob", 1);
    w.ok("bob", &["add-contact", "alice", &alice]);
    // Alice moves before she saved bob: no notice goes to him, his entry
    // still says her old router.
    w.ok("alice", &["home", "set", &w.url(2)]);
    w.homes.retain(|(p, _)| p != "alice");
    w.homes.push(("alice".into(), 2));
    w.ok("alice", &["add-contact", "bob", &bob]);
    assert_eq!(w.contact_router("bob", "alice"), Value::from(w.url(0)));
    w.ok("alice", &["send", "bob", "I live elsewhere now"]);
    w.ok("bob", &["sync"]);
    assert_eq!(w.contact_router("bob", "alice"), Value::from(w.url(2)));
    w.ok("bob", &["send", "alice", "found you"]);
    w.ok("alice", &["sync"]);
    assert_eq!(w.status("alice", &key_of(&bob), "found you"), "received");
    assert_eq!(
        w.status("alice", "bob", "I live elsewhere now"),
        "delivered"
    );
}

#[test]
fn a_router_on_redis_is_a_home_like_any_other() {
    let mut w = World::new(1);
    let redis = LocalRedis::start(&w.env.path("redis"), Fsync::EverySec).expect("redis-server");
    let on_redis = Router::start_redis(&w.env.path("redis-router"), &redis.url(), &[]);
    w.routers.push(Some(on_redis));
    let alice = w.person("alice", 0);
    let bob = w.person("bob", 1);
    w.ok("alice", &["add-contact", "bob", &bob]);
    w.ok("bob", &["add-contact", "alice", &alice]);
    w.ok("alice", &["send", "bob", "to a router on redis"]);
    w.chat("bob", "alice", &["from a router on redis"]);
    w.ok("alice", &["sync"]);
    w.chat("alice", "bob", &[]);
    w.ok("bob", &["sync"]);
    assert_timeline(&w.message("alice", "bob", "to a router on redis"));
    assert_timeline(&w.message("bob", "alice", "from a router on redis"));
}

#[test]
fn with_ones_own_router_down_messages_to_other_routers_still_go() {
    let mut w = World::new(2);
    w.person("alice", 0);
    let bob = w.person("bob", 1);
    w.ok("alice", &["add-contact", "bob", &bob]);
    let alices = w.routers[0].take().unwrap();
    let alices_addr = alices.addr.clone();
    alices.kill();
    // Pointed at her (dead) home router all the same.
    let mut cmd = w.env.cmd("alice");
    cmd.env("CHAT_SERVER", format!("ws://{alices_addr}/ws"));
    let out = cmd
        .args(["send", "bob", "my router is down, yours is not"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("home router"), "{stderr}");
    assert_eq!(
        w.status("alice", "bob", "my router is down, yours is not"),
        "sent"
    );
    w.ok("bob", &["sync"]);
    let alice_key = key_of(&w.ok("alice", &["whoami", "--address"]));
    assert_eq!(
        w.status("bob", &alice_key, "my router is down, yours is not"),
        "received"
    );
}

//! The chat client against a real router: two profiles, real SQLite
//! files, the real binary.

mod common;

use std::io::Write;
use std::process::{Child, Command as StdCommand, Stdio};
use std::time::Duration;

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::Frame;
use common::{Client, Env, Router};
use serde_json::Value;

/// Alice and Bob, who know each other's keys, and a router.
struct Pair {
    env: Env,
    router: Option<Router>,
    server: String,
    alice_key: String,
    bob_key: String,
}

impl Pair {
    fn new() -> Self {
        let env = Env::new();
        let router = Router::start(&env.path("router"), &[]);
        let server = router.url();
        let mut pair = Pair {
            env,
            router: Some(router),
            server,
            alice_key: String::new(),
            bob_key: String::new(),
        };
        pair.alice_key = pair.env.init("alice");
        pair.bob_key = pair.env.init("bob");
        let (a, b) = (pair.alice_key.clone(), pair.bob_key.clone());
        pair.env.ok("alice", &["add-contact", "bob", &b]);
        pair.env.ok("bob", &["add-contact", "alice", &a]);
        pair
    }

    /// `chat-p2p` for `profile`, pointed at the router.
    fn cmd(&self, profile: &str) -> assert_cmd::Command {
        let mut cmd = self.env.cmd(profile);
        cmd.env("CHAT_SERVER", &self.server);
        cmd
    }

    fn ok(&self, profile: &str, args: &[&str]) -> String {
        let out = self.cmd(profile).args(args).output().unwrap();
        assert!(
            out.status.success(),
            "{profile} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn json(&self, profile: &str, args: &[&str]) -> Value {
        serde_json::from_str(&self.ok(profile, args)).unwrap()
    }

    fn history(&self, profile: &str, peer: &str) -> Vec<Value> {
        let v = self.json(profile, &["history", peer, "--json"]);
        v.as_array().unwrap().clone()
    }

    /// The one message `profile` has with `peer` whose body is `body`.
    fn message(&self, profile: &str, peer: &str, body: &str) -> Value {
        let all: Vec<_> = self
            .history(profile, peer)
            .into_iter()
            .filter(|m| m["body"] == body)
            .collect();
        assert_eq!(
            all.len(),
            1,
            "{profile} has {} copies of {body:?}",
            all.len()
        );
        all.into_iter().next().unwrap()
    }

    fn router(&self) -> &Router {
        self.router.as_ref().unwrap()
    }

    fn key(&self, profile: &str) -> PublicKey {
        PublicKey::parse(match profile {
            "alice" => &self.alice_key,
            _ => &self.bob_key,
        })
        .unwrap()
    }

    /// `chat PEER` as a child process with a pipe for its input.
    fn spawn_chat(&self, profile: &str, peer: &str) -> Child {
        StdCommand::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", self.env.home())
            .env("CHAT_PROFILE", profile)
            .env("CHAT_SERVER", &self.server)
            .args(["chat", peer])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn status(m: &Value) -> &str {
    m["status"].as_str().unwrap()
}

fn time(m: &Value, field: &str) -> String {
    m[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} is not set in {m}"))
        .to_owned()
}

/// Polls `check` until it holds; the guard only prevents hanging forever.
fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("never happened: {what}");
}

#[test]
fn the_full_status_sequence_with_every_timestamp_in_order() {
    let p = Pair::new();
    p.ok("alice", &["send", "bob", "hello", "bob"]);
    let m = p.message("alice", "bob", "hello bob");
    assert_eq!(status(&m), "sent", "bob is offline: the router holds it");

    let summary = p.ok("bob", &["sync"]);
    assert!(summary.contains("1 received"), "{summary}");
    assert_eq!(status(&p.message("bob", "alice", "hello bob")), "received");

    p.ok("alice", &["sync"]);
    assert_eq!(status(&p.message("alice", "bob", "hello bob")), "delivered");

    // Bob opens the conversation: shown, so read.
    let out = p
        .cmd("bob")
        .args(["chat", "alice"])
        .write_stdin("exit\n")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("alice: hello bob"));
    assert_eq!(status(&p.message("bob", "alice", "hello bob")), "read");

    p.ok("alice", &["sync"]);
    let m = p.message("alice", "bob", "hello bob");
    assert_eq!(status(&m), "read");
    let (created, sent, delivered, read) = (
        time(&m, "created_at"),
        time(&m, "sent_at"),
        time(&m, "delivered_at"),
        time(&m, "read_at"),
    );
    assert!(
        created <= sent && sent <= delivered && delivered <= read,
        "{created} {sent} {delivered} {read}"
    );
    let b = p.message("bob", "alice", "hello bob");
    assert!(time(&b, "received_at") <= time(&b, "read_at"));
}

#[test]
fn piped_chat_sends_each_line_and_waits_for_the_acks() {
    let p = Pair::new();
    p.cmd("alice")
        .args(["chat", "bob"])
        .write_stdin("first line\nsecond line\nexit\n")
        .assert()
        .success();
    for body in ["first line", "second line"] {
        assert_eq!(status(&p.message("alice", "bob", body)), "sent");
    }
    p.ok("bob", &["sync"]);
    assert_eq!(p.history("bob", "alice").len(), 2);
}

#[test]
fn send_without_a_router_keeps_the_message_pending_and_sync_delivers_it_once() {
    let mut p = Pair::new();
    let url = p.server.clone();
    p.router.take().unwrap().kill();
    p.cmd("alice")
        .args(["send", "bob", "are you there?"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("cannot reach the router"))
        .stderr(predicates::str::contains("saved as pending"));
    assert_eq!(
        status(&p.message("alice", "bob", "are you there?")),
        "pending"
    );

    p.router = Some(Router::start(&p.env.path("router2"), &[]));
    p.server = p.router().url();
    assert_ne!(p.server, url);
    let summary = p.ok("alice", &["sync"]);
    assert!(summary.contains("1 sent"), "{summary}");
    assert_eq!(status(&p.message("alice", "bob", "are you there?")), "sent");
    p.ok("alice", &["sync"]);
    p.ok("bob", &["sync"]);
    p.ok("bob", &["sync"]);
    assert_eq!(p.history("bob", "alice").len(), 1, "delivered exactly once");
}

#[test]
fn a_client_killed_after_storing_delivers_later_exactly_once() {
    let mut p = Pair::new();
    // The router is away, so the line can only be stored, not sent.
    p.router.take().unwrap().kill();
    let mut chat = p.spawn_chat("alice", "bob");
    writeln!(chat.stdin.as_mut().unwrap(), "stored before the crash").unwrap();
    eventually("the line is stored", || {
        p.history("alice", "bob")
            .iter()
            .any(|m| m["body"] == "stored before the crash")
    });
    chat.kill().unwrap(); // SIGKILL: no cleanup of any kind
    chat.wait().unwrap();
    assert_eq!(
        status(&p.message("alice", "bob", "stored before the crash")),
        "pending"
    );

    p.router = Some(Router::start(&p.env.path("router"), &[]));
    p.server = p.router().url();
    p.ok("alice", &["sync"]);
    p.ok("alice", &["sync"]);
    p.ok("bob", &["sync"]);
    assert_eq!(p.history("bob", "alice").len(), 1);
    assert_eq!(
        status(&p.message("alice", "bob", "stored before the crash")),
        "sent"
    );
}

#[test]
fn receipts_wait_at_the_router_while_the_sender_is_offline() {
    let p = Pair::new();
    p.ok("alice", &["send", "bob", "read me later"]);
    // Alice is gone; bob receives, then reads.
    p.ok("bob", &["sync"]);
    p.cmd("bob")
        .args(["chat", "alice"])
        .write_stdin("")
        .assert()
        .success();
    assert_eq!(status(&p.message("bob", "alice", "read me later")), "read");
    // Alice comes back: both receipts arrive in one sync.
    let summary = p.json("alice", &["sync", "--json"]);
    assert_eq!(summary["receipts"], 2, "{summary}");
    let m = p.message("alice", "bob", "read me later");
    assert_eq!(status(&m), "read");
    assert!(time(&m, "delivered_at") <= time(&m, "read_at"));
}

#[test]
fn a_frame_delivered_twice_is_stored_once() {
    let p = Pair::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let stranger = Identity::generate();
    let secret = stranger.secret_bytes();
    let bob = p.key("bob");
    let frame = rt.block_on(async {
        let mut c = Client::connect(&p.router().addr, stranger).await;
        c.send_acked(&bob, "say it twice").await
    });
    p.ok("bob", &["sync"]);
    // The same frame again, after bob acked the first copy.
    rt.block_on(async {
        let mut c = Client::connect(&p.router().addr, Identity::from_secret_bytes(&secret)).await;
        common::send_frame(&mut c.ws, &Frame::Message(frame.clone())).await;
        c.expect_ack(frame.id).await;
    });
    let summary = p.json("bob", &["sync", "--json"]);
    assert_eq!(summary["duplicates"], 1, "{summary}");
    assert_eq!(summary["received"], 0);
    let all = p.json("bob", &["history", "--json"]);
    assert_eq!(all.as_array().unwrap().len(), 1);
}

#[test]
fn messages_from_an_unknown_sender_are_kept_and_named_later() {
    let p = Pair::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let carol = Identity::generate();
    let carol_key = carol.public_key().to_base64();
    let bob = p.key("bob");
    rt.block_on(async {
        let mut c = Client::connect(&p.router().addr, carol).await;
        c.send_acked(&bob, "hi, you don't know me").await;
    });
    p.ok("bob", &["sync"]);
    let all = p.json("bob", &["history", "--json"]);
    assert_eq!(all[0]["contact"], Value::Null);
    assert_eq!(all[0]["peer_key"], carol_key.as_str());
    let text = p.ok("bob", &["history"]);
    assert!(text.contains("unknown ("), "{text}");
    let contacts = p.ok("bob", &["contacts"]);
    assert!(contacts.contains("Unknown senders") && contacts.contains(&carol_key));
    let listed = p.json("bob", &["contacts", "--json"]);
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["kind"] == "unknown" && c["public_key"] == carol_key.as_str()));

    p.ok("bob", &["add-contact", "carol", &carol_key]);
    assert_eq!(
        p.history("bob", "carol")[0]["body"],
        "hi, you don't know me"
    );
    assert!(!p.ok("bob", &["contacts"]).contains("Unknown senders"));
}

#[test]
fn a_forged_message_is_rejected_acked_and_never_stored() {
    let p = Pair::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let alice = Identity::from_secret_bytes(&{
        let conn = rusqlite::Connection::open(p.env.db("alice")).unwrap();
        let secret: Vec<u8> = conn
            .query_row("SELECT secret_key FROM identity", [], |r| r.get(0))
            .unwrap();
        <[u8; 32]>::try_from(secret).unwrap()
    });
    let bob = p.key("bob");
    rt.block_on(async {
        let mut c = Client::connect(&p.router().addr, alice).await;
        let mut m = c.seal(&bob, "genuine");
        m.payload.ciphertext[3] ^= 0x40; // altered in transit
        common::send_frame(&mut c.ws, &Frame::Message(m.clone())).await;
        c.expect_ack(m.id).await;
    });
    let out = p.cmd("bob").args(["sync", "--json"]).output().unwrap();
    assert!(out.status.success());
    let warning = String::from_utf8_lossy(&out.stderr);
    assert!(warning.contains("warning: refused a message"), "{warning}");
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["rejected"], 1, "{summary}");
    assert!(p.history("bob", "alice").is_empty());
    // Acked: it does not come back.
    let again = p.json("bob", &["sync", "--json"]);
    assert_eq!(again["rejected"], 0);
    let conn = rusqlite::Connection::open(p.env.db("bob")).unwrap();
    let reason: String = conn
        .query_row("SELECT reason FROM rejected_messages", [], |r| r.get(0))
        .unwrap();
    assert!(reason.contains("signature"), "{reason}");
}

#[test]
fn chat_reconnects_after_the_router_restarts_mid_conversation() {
    let mut p = Pair::new();
    let mut chat = p.spawn_chat("alice", "bob");
    let stdin = chat.stdin.as_mut().unwrap();
    writeln!(stdin, "before the restart").unwrap();
    eventually("the first line is sent", || {
        p.history("alice", "bob")
            .iter()
            .any(|m| m["body"] == "before the restart" && m["status"] == "sent")
    });
    p.router = Some(p.router.take().unwrap().restart_same_port());
    writeln!(chat.stdin.as_mut().unwrap(), "after the restart").unwrap();
    eventually("the second line is sent after reconnecting", || {
        p.history("alice", "bob")
            .iter()
            .any(|m| m["body"] == "after the restart" && m["status"] == "sent")
    });
    drop(chat.stdin.take()); // end of input: leave
    let out = chat.wait_with_output().unwrap();
    assert!(out.status.success());
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("Reconnecting"), "{shown}");
    p.ok("bob", &["sync"]);
    let bodies: Vec<_> = p
        .history("bob", "alice")
        .into_iter()
        .map(|m| m["body"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(bodies, ["before the restart", "after the restart"]);
}

#[test]
fn network_commands_explain_bad_servers_and_unknown_peers() {
    let p = Pair::new();
    p.cmd("alice")
        .args(["send", "--server", "http://x/ws", "bob", "hi"])
        .assert()
        .code(2)
        .stderr(predicates::str::contains("ws:// or wss://"));
    p.cmd("alice")
        .args(["send", "bobb", "hi"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("Did you mean 'bob'?"));
    p.cmd("alice")
        .args(["chat", "alice", "bob"])
        .write_stdin("")
        .assert()
        .code(2)
        .stderr(predicates::str::contains("not a router URL"));
    // The original client's form: the URL first.
    p.env
        .cmd("alice")
        .args(["chat", &p.server, "bob"])
        .write_stdin("via the legacy form\n")
        .assert()
        .success();
    assert_eq!(
        status(&p.message("alice", "bob", "via the legacy form")),
        "sent"
    );
}

/// A TLS-terminating proxy in front of the router, as a real deployment
/// would put one, with a certificate for `localhost` that the test trusts
/// through `SSL_CERT_FILE`.
struct TlsProxy {
    port: u16,
    cert_file: std::path::PathBuf,
    _runtime: tokio::runtime::Runtime,
}

impl TlsProxy {
    fn start(dir: &std::path::Path, router_addr: &str) -> TlsProxy {
        use std::sync::Arc;
        use tokio_rustls::rustls::{self, pki_types};

        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert_file = dir.join("router-cert.pem");
        std::fs::write(&cert_file, cert.cert.pem()).unwrap();
        let key = pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let upstream = router_addr.to_owned();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, upstream) = (acceptor.clone(), upstream.clone());
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsProxy {
            port,
            cert_file,
            _runtime: runtime,
        }
    }
}

#[test]
fn wss_routers_work_through_tls() {
    let mut p = Pair::new();
    let proxy = TlsProxy::start(&p.env.path(""), &p.router().addr);
    let wss = format!("wss://localhost:{}/ws", proxy.port);
    // Clients sign for the address they dial: the router must know it.
    let router = p.router.take().unwrap();
    p.router = Some(router.restart_same_port_with(&["--public-url", &wss]));
    let over_tls = |profile: &str, args: &[&str]| {
        p.env
            .cmd(profile)
            .env("CHAT_SERVER", &wss)
            .env("SSL_CERT_FILE", &proxy.cert_file)
            .args(args)
            .assert()
            .success();
    };
    over_tls("alice", &["send", "bob", "over TLS"]);
    over_tls("bob", &["sync"]);
    assert_eq!(status(&p.message("bob", "alice", "over TLS")), "received");

    // Without trusting the certificate, the connection is refused.
    p.env
        .cmd("alice")
        .env("CHAT_SERVER", &wss)
        .args(["send", "bob", "not trusted"])
        .assert()
        .code(1)
        .stderr(predicates::str::contains("cannot reach the router"))
        .stderr(predicates::str::contains("certificate"));
}

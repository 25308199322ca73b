//! The router end to end: a real `chat-p2p router` process on 127.0.0.1:0
//! with its SQLite queue in a temp dir, and raw WebSocket clients.

mod common;

use std::io::{Read, Write};

use chat_p2p::identity::Identity;
use chat_p2p::protocol::{self, ErrorCode, Frame};
use common::{
    auth, connect_raw, read_challenge, send_frame, send_text, until_close, Client, Router,
};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

fn data() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("router");
    (dir, data)
}

fn chat_p2p(home: &std::path::Path) -> assert_cmd::Command {
    let mut cmd = assert_cmd::Command::new(env!("CARGO_BIN_EXE_chat-p2p"));
    cmd.env_clear().env("CHAT_HOME", home);
    cmd
}

#[test]
fn router_refuses_a_busy_port_with_a_clear_error() {
    let (dir, data) = data();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    chat_p2p(dir.path())
        .args(["router", "--listen", &addr, "--data"])
        .arg(&data)
        .assert()
        .code(1)
        .stderr(predicates::str::contains(format!(
            "cannot listen on {addr}"
        )));
}

#[test]
fn router_refuses_a_foreign_queue_file() {
    let (dir, data) = data();
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("queue.sqlite3"),
        b"not a database at all, just text",
    )
    .unwrap();
    chat_p2p(dir.path())
        .args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("queue.sqlite3"));
}

#[test]
fn router_bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    chat_p2p(dir.path())
        .args(["router", "--listen", "not-an-address"])
        .assert()
        .code(2);
}

#[test]
fn a_second_router_on_the_same_data_is_refused() {
    let (dir, data) = data();
    let first = Router::start(&data, &[]);
    chat_p2p(dir.path())
        .args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .assert()
        .code(1)
        .stderr(predicates::str::contains("another router is already using"))
        .stderr(predicates::str::contains(data.to_string_lossy().as_ref()));
    // The lock goes with the process: once the first stops, a new one runs.
    first.terminate();
    Router::start(&data, &[]).kill();
}

#[test]
fn meaningless_router_limits_and_a_profile_are_usage_errors() {
    let (dir, data) = data();
    for flag in [
        "--max-frame-bytes",
        "--max-queued",
        "--retention-days",
        "--max-rate",
        "--max-connections",
        "--auth-timeout",
        "--ping-interval",
        "--delivery-window",
    ] {
        chat_p2p(dir.path())
            .args(["router", "--listen", "127.0.0.1:0", flag, "0", "--data"])
            .arg(&data)
            .assert()
            .code(2)
            .stderr(predicates::str::contains(flag))
            .stderr(predicates::str::contains("at least 1"));
    }
    for args in [["router", "--profile", "x"], ["--profile", "x", "router"]] {
        chat_p2p(dir.path())
            .args(args)
            .args(["--listen", "127.0.0.1:0", "--data"])
            .arg(&data)
            .assert()
            .code(2)
            .stderr(predicates::str::contains("a router has no profile"));
    }
    assert!(!data.exists(), "a refused router must not create its data");
}

#[test]
fn healthz_answers_200() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut tcp = std::net::TcpStream::connect(&router.addr).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
}

#[tokio::test]
async fn authenticated_session_delivers_and_decrypts() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut bob = Client::connect(&router.addr, Identity::generate()).await;
    let sent = alice.send_acked(&bob.key(), "hello bob").await;
    let (got, body) = bob.receive().await;
    assert_eq!(
        (got.id, got.from, body.as_str()),
        (sent.id, alice.key(), "hello bob")
    );
    bob.ack(got.id).await;
}

#[tokio::test]
async fn wrong_signature_is_closed_with_policy_violation() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let mallory = Identity::generate();
    let mut ws = connect_raw(&router.addr, &bob.public_key()).await;
    let nonce = read_challenge(&mut ws).await;
    let forged = auth(&mallory, &nonce, &router.addr, &Uuid::new_v4());
    send_frame(&mut ws, &forged).await;
    let (close, frames) = until_close(&mut ws).await;
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.code == ErrorCode::BadSignature));
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "bad-signature");
}

#[tokio::test]
async fn silent_client_is_closed_after_the_auth_timeout() {
    let (_dir, data) = data();
    let router = Router::start(&data, &["--auth-timeout", "1"]);
    let mut ws = connect_raw(&router.addr, &Identity::generate().public_key()).await;
    read_challenge(&mut ws).await;
    let (close, frames) = until_close(&mut ws).await;
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.code == ErrorCode::AuthTimeout));
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
}

#[tokio::test]
async fn frames_before_auth_are_refused() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let alice = Identity::generate();
    let mut ws = connect_raw(&router.addr, &alice.public_key()).await;
    read_challenge(&mut ws).await;
    let m = protocol::seal(
        &alice,
        &alice.public_key(),
        uuid::Uuid::now_v7(),
        "2026-11-25T20:00:00.000Z",
        &protocol::Content::text("x"),
    )
    .unwrap();
    send_frame(&mut ws, &Frame::Message(m)).await;
    let (close, frames) = until_close(&mut ws).await;
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.code == ErrorCode::NotAuthenticated));
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
}

#[tokio::test]
async fn impostor_gets_nothing_and_the_queue_stays_intact() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let bob_key = bob.public_key();
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let sent = alice.send_acked(&bob_key, "for bob only").await;

    // Mallory connects as bob but cannot sign for bob's key.
    let mut ws = connect_raw(&router.addr, &bob_key).await;
    let nonce = read_challenge(&mut ws).await;
    let forged = auth(&Identity::generate(), &nonce, &router.addr, &Uuid::new_v4());
    send_frame(&mut ws, &forged).await;
    let (_, frames) = until_close(&mut ws).await;
    assert!(
        frames.iter().all(|f| !matches!(f, Frame::Message(_))),
        "an impostor received {frames:?}"
    );

    let mut bob = Client::connect(&router.addr, bob).await;
    let (got, body) = bob.receive().await;
    assert_eq!((got.id, body.as_str()), (sent.id, "for bob only"));
}

#[tokio::test]
async fn spoofed_from_is_refused_and_the_session_continues() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let bob = Identity::generate().public_key();
    let carol = Identity::generate();
    // A frame authored (and validly signed) by carol, sent on alice's session.
    let spoofed = protocol::seal(
        &carol,
        &bob,
        uuid::Uuid::now_v7(),
        &chat_p2p::clock::now(),
        &protocol::Content::text("x"),
    )
    .unwrap();
    send_frame(&mut alice.ws, &Frame::Message(spoofed.clone())).await;
    let err = alice.expect_error().await;
    assert_eq!(
        (err.code, err.id),
        (ErrorCode::SpoofedFrom, Some(spoofed.id))
    );
    alice.send_acked(&bob, "still here").await;
}

#[tokio::test]
async fn offline_delivery_survives_a_hard_restart() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let first = alice.send_acked(&bob.public_key(), "one").await;
    let second = alice.send_acked(&bob.public_key(), "two").await;
    drop(alice);
    // SIGKILL: nothing graceful; what was acked must be on disk.
    let router = router.restart(&[]);
    let mut bob = Client::connect(&router.addr, bob).await;
    let (m1, b1) = bob.receive().await;
    let (m2, b2) = bob.receive().await;
    assert_eq!((m1.id, b1.as_str()), (first.id, "one"));
    assert_eq!((m2.id, b2.as_str()), (second.id, "two"));
}

/// A burst sent without waiting for acks, so the writer commits it in
/// several batches while earlier ones are still being synced: after a
/// SIGKILL in the middle of it, every frame the router acked is delivered
/// after the restart (and nothing it was not sent).
#[tokio::test]
async fn every_acked_frame_of_a_burst_survives_a_kill() {
    let (_dir, data) = data();
    let router = Router::start(&data, &["--max-rate", "100000"]);
    let bob = Identity::generate();
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut sent = std::collections::HashSet::new();
    for i in 0..400 {
        sent.insert(
            alice
                .send(&bob.public_key(), &format!("burst {i}"))
                .await
                .id,
        );
    }
    let mut acked = std::collections::HashSet::new();
    while acked.len() < 150 {
        match alice.next().await {
            Frame::Ack(a) => acked.insert(a.id),
            other => panic!("unexpected {other:?}"),
        };
    }
    // SIGKILL with the rest of the burst in flight.
    let router = router.restart(&[]);
    drop(alice);
    let mut bob = Client::connect(&router.addr, bob).await;
    let mut delivered = std::collections::HashSet::new();
    loop {
        let frames = bob.until_synced_or_one().await;
        let Some(frame) = frames.into_iter().next() else {
            break;
        };
        match frame {
            Frame::Message(m) => {
                bob.ack(m.id).await;
                delivered.insert(m.id);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let lost: Vec<_> = acked.difference(&delivered).collect();
    assert!(lost.is_empty(), "acked and lost: {lost:?}");
    assert!(delivered.is_subset(&sent));
}

#[tokio::test]
async fn graceful_shutdown_closes_sessions_with_a_reason() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    alice
        .send_acked(&Identity::generate().public_key(), "x")
        .await;
    let terminate = std::thread::spawn(move || router.terminate());
    let (close, _) = until_close(&mut alice.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason.as_str(), "router shutting down");
    terminate.join().unwrap();
}

#[tokio::test]
async fn unacked_frames_are_delivered_again_acked_ones_are_not() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let bob_secret = bob.secret_bytes();
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let sent = alice.send_acked(&bob.public_key(), "again").await;

    // Bob receives and disconnects before acking.
    let mut bob = Client::connect(&router.addr, bob).await;
    assert_eq!(bob.receive().await.0.id, sent.id);
    bob.close().await;

    // Next session: delivered again. This time bob acks it, then sends
    // himself a probe; the router's ack of the probe means the removal
    // (submitted first) is committed.
    let mut bob = Client::connect(&router.addr, Identity::from_secret_bytes(&bob_secret)).await;
    assert_eq!(bob.receive().await.0.id, sent.id);
    bob.ack(sent.id).await;
    let probe = bob.seal(&bob.key(), "probe");
    send_frame(&mut bob.ws, &Frame::Message(probe.clone())).await;
    loop {
        match bob.next().await {
            Frame::Ack(a) if a.id == probe.id => break,
            Frame::Message(m) if m.id == probe.id => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    bob.close().await;

    // The acked frame is gone, and the probe (to bob's own key, from his
    // only device) was acked without being stored for anyone.
    let mut bob = Client::connect(&router.addr, Identity::from_secret_bytes(&bob_secret)).await;
    let before = bob.until_synced().await;
    assert!(before.is_empty(), "delivered again: {before:?}");
}

#[tokio::test]
async fn synced_follows_the_backlog_once_per_session() {
    let (_dir, data) = data();
    let router = Router::start(&data, &["--delivery-window", "2"]);
    let bob = Identity::generate();
    let bob_key = bob.public_key();
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut queued = Vec::new();
    for n in 0..5 {
        queued.push(alice.send_acked(&bob_key, &format!("m{n}")).await.id);
    }

    // A window of 2 makes the backlog come in pages: synced only after all.
    let mut bob = Client::connect(&router.addr, bob).await;
    let mut seen = Vec::new();
    while bob.synced == 0 {
        let before = bob.until_synced_or_one().await;
        for frame in before {
            let Frame::Message(m) = frame else {
                panic!("unexpected {frame:?}")
            };
            bob.ack(m.id).await;
            seen.push(m.id);
        }
    }
    assert_eq!(seen, queued, "every queued frame, in order, before synced");

    // Later frames arrive live, with no second synced.
    let late = alice.send_acked(&bob_key, "late").await;
    assert_eq!(bob.receive().await.0.id, late.id);
    assert_eq!(bob.synced, 1);

    // An empty queue is announced at once.
    let mut carol = Client::connect(&router.addr, Identity::generate()).await;
    assert!(carol.until_synced().await.is_empty());
}

#[tokio::test]
async fn duplicate_ids_are_stored_once() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut bob = Client::connect(&router.addr, Identity::generate()).await;
    let m = alice.seal(&bob.key(), "once");
    send_frame(&mut alice.ws, &Frame::Message(m.clone())).await;
    let at1 = alice.expect_ack(m.id).await;
    send_frame(&mut alice.ws, &Frame::Message(m.clone())).await;
    let at2 = alice.expect_ack(m.id).await;
    assert_eq!(
        at1, at2,
        "the duplicate is acked with the first commit's time"
    );
    let next = alice.send_acked(&bob.key(), "next").await;
    assert_eq!(bob.receive().await.0.id, m.id);
    assert_eq!(
        bob.receive().await.0.id,
        next.id,
        "the duplicate was delivered twice"
    );
}

#[tokio::test]
async fn bad_input_gets_errors_and_other_sessions_are_unaffected() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut bob = Client::connect(&router.addr, Identity::generate()).await;
    let mut carol = Client::connect(&router.addr, Identity::generate()).await;

    send_text(&mut alice.ws, "{not json").await;
    assert_eq!(alice.expect_error().await.code, ErrorCode::BadFrame);
    send_text(&mut alice.ws, r#"{"type":"message","id":"x"}"#).await;
    assert_eq!(alice.expect_error().await.code, ErrorCode::BadFrame);
    alice.ws.send_binary(vec![0xff, 0x00, 0x01]).await;
    assert_eq!(alice.expect_error().await.code, ErrorCode::BadFrame);
    send_text(&mut alice.ws, r#"{"type":"presence","online":true}"#).await;
    assert_eq!(alice.expect_error().await.code, ErrorCode::UnknownType);
    let mut big = alice.seal(&bob.key(), "x");
    big.payload.ciphertext = vec![7; 70_000];
    send_frame(&mut alice.ws, &Frame::Message(big)).await;
    assert_eq!(alice.expect_error().await.code, ErrorCode::TooLarge);
    // Still up after all that.
    alice.send_acked(&bob.key(), "after errors").await;

    // Far past the WebSocket cap: closed with 1009, others unaffected.
    send_text(&mut alice.ws, &"x".repeat(300_000)).await;
    let (close, _) = until_close(&mut alice.ws).await;
    assert_eq!(close.expect("a close frame").code, CloseCode::Size);

    carol.send_acked(&bob.key(), "from carol").await;
    assert_eq!(bob.receive().await.1, "after errors");
    assert_eq!(bob.receive().await.1, "from carol");
}

#[tokio::test]
async fn a_new_session_replaces_the_old_one() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let alice = Identity::generate();
    let secret = alice.secret_bytes();
    let mut first = Client::connect(&router.addr, alice).await;
    let mut second = Client::connect(&router.addr, Identity::from_secret_bytes(&secret)).await;
    let (close, _) = until_close(&mut first.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    assert!(close.reason.contains("replaced"));
    second.send_acked(&second.key(), "still works").await;
}

#[tokio::test]
async fn limits_have_their_own_codes() {
    let (_dir, data) = data();
    let router = Router::start(&data, &["--max-queued", "2", "--max-rate", "1000"]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let bob = Identity::generate().public_key();
    alice.send_acked(&bob, "1").await;
    alice.send_acked(&bob, "2").await;
    let third = alice.send(&bob, "3").await;
    let err = alice.expect_error().await;
    assert_eq!(
        (err.code, err.id),
        (ErrorCode::QuotaExceeded, Some(third.id))
    );
    drop(router);

    let (_dir, data) = self::data();
    let router = Router::start(&data, &["--max-rate", "1"]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut refused = 0;
    let sent: Vec<_> = {
        let mut v = Vec::new();
        for i in 0..5 {
            v.push(alice.send(&bob, &i.to_string()).await);
        }
        v
    };
    for _ in &sent {
        match alice.next().await {
            Frame::Error(e) if e.code == ErrorCode::RateLimited => refused += 1,
            Frame::Ack(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(
        refused >= 1,
        "5 frames at once with a rate of 1/s were all accepted"
    );
}

#[tokio::test]
async fn connection_limit_refuses_with_its_code() {
    let (_dir, data) = data();
    let router = Router::start(&data, &["--max-connections", "1"]);
    let _alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut ws = connect_raw(&router.addr, &Identity::generate().public_key()).await;
    let (close, frames) = until_close(&mut ws).await;
    assert!(matches!(&frames[..], [Frame::Error(e)] if e.code == ErrorCode::TooManyConnections));
    assert_eq!(close.expect("a close frame").code, CloseCode::Again);
}

#[tokio::test]
async fn many_concurrent_sessions_each_get_their_message() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    const N: usize = 100;
    let ids: Vec<Identity> = (0..N).map(|_| Identity::generate()).collect();
    let keys: Vec<_> = ids.iter().map(Identity::public_key).collect();
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let addr = router.addr.clone();
        let next = keys[(i + 1) % N];
        tasks.push(tokio::spawn(async move {
            let mut c = Client::connect(&addr, id).await;
            let sent = c.send(&next, &format!("from {i}")).await;
            // Our own ack and the message from our neighbour, in any order.
            let (mut acked, mut got) = (false, None);
            while !acked || got.is_none() {
                match c.next().await {
                    Frame::Ack(a) if a.id == sent.id => acked = true,
                    Frame::Message(m) => {
                        let body = match protocol::open(&c.id, &m).unwrap() {
                            protocol::Content::Text { body, .. } => body,
                            other => panic!("{other:?}"),
                        };
                        c.ack(m.id).await;
                        got = Some(body);
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            got.unwrap()
        }));
    }
    for (i, task) in tasks.into_iter().enumerate() {
        let prev = (i + N - 1) % N;
        assert_eq!(task.await.unwrap(), format!("from {prev}"));
    }
}

#[tokio::test]
async fn pings_are_answered() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    alice
        .ws
        .send(Message::Ping(b"hi".to_vec().into()))
        .await
        .unwrap();
    use futures_util::StreamExt;
    loop {
        match alice.ws.next().await.unwrap().unwrap() {
            Message::Pong(p) => {
                assert_eq!(&p[..], b"hi");
                break;
            }
            Message::Ping(_) => {}
            // The router's `synced` (the backlog is empty) may come first.
            Message::Text(t) if t.as_str() == r#"{"type":"synced"}"# => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn silent_sessions_are_reaped() {
    let (_dir, data) = data();
    let router = Router::start(&data, &["--ping-interval", "1"]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    // Not reading means not answering pings: a dead peer, as the router
    // sees it. (The sleep simulates the dead peer; it waits for no server.)
    tokio::time::sleep(std::time::Duration::from_millis(4500)).await;
    let (close, _) = until_close(&mut alice.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("keep-alive"), "{close:?}");
}

trait SendBinary {
    async fn send_binary(&mut self, bytes: Vec<u8>);
}

impl SendBinary for common::Socket {
    async fn send_binary(&mut self, bytes: Vec<u8>) {
        use futures_util::SinkExt;
        self.send(Message::Binary(bytes.into())).await.unwrap();
    }
}

use futures_util::SinkExt as _;

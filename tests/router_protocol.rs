//! The router against docs/PROTOCOL.md, on the edges issue 8 found: hostile
//! frames before and after authentication, ids in errors, per-sender
//! duplicates, close codes. A real `chat-p2p router` process and raw
//! WebSocket clients, as in tests/router.rs.

mod common;

use chat_p2p::identity::Identity;
use chat_p2p::protocol::{self, ErrorCode, Frame};
use common::{
    connect_raw, read_challenge, send_frame, send_text, until_close, Client, Router, Socket,
};
use futures_util::SinkExt as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;

fn data() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("router");
    (dir, data)
}

/// The frame of issue 8: a `type` over 64 bytes of multi-byte characters.
fn multibyte_type() -> String {
    format!(r#"{{"type":"a{}"}}"#, "é".repeat(32))
}

/// Sends a text message whose payload is not UTF-8, as a hostile peer can.
async fn send_invalid_utf8(ws: &mut Socket) {
    let frame = WsFrame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.expect("send");
}

#[tokio::test]
async fn multibyte_type_before_auth_gets_an_error_and_the_router_keeps_serving() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut bob = Client::connect(&router.addr, Identity::generate()).await;
    let mallory = Identity::generate();
    let mut ws = connect_raw(&router.addr, &mallory.public_key()).await;
    read_challenge(&mut ws).await;
    send_text(&mut ws, &multibyte_type()).await;
    let (close, frames) = until_close(&mut ws).await;
    let [Frame::Error(e)] = &frames[..] else {
        panic!("expected one error frame before the close, got {frames:?}")
    };
    assert_eq!(e.code, ErrorCode::NotAuthenticated);
    assert!(e.message.contains("aé"), "{}", e.message);
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);

    // Authenticated too: an unknown-type error, and the session goes on.
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    send_text(&mut alice.ws, &multibyte_type()).await;
    let e = alice.expect_error().await;
    assert_eq!(e.code, ErrorCode::UnknownType);
    assert!(e.message.contains(&"é".repeat(31)), "{}", e.message);
    alice.send_acked(&bob.key(), "still here").await;
    assert_eq!(bob.receive().await.1, "still here");
}

#[tokio::test]
async fn upper_case_ids_are_refused_as_bad_frame() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let bob = Identity::generate().public_key();
    let m = alice.seal(&bob, "shouting");
    let lower = m.id.to_string();
    let text = protocol::to_text(&Frame::Message(m)).replace(&lower, &lower.to_uppercase());
    send_text(&mut alice.ws, &text).await;
    let e = alice.expect_error().await;
    assert_eq!(e.code, ErrorCode::BadFrame);
    assert_eq!(e.id, None, "an id in another form is not read");
    assert!(e.message.contains("lower-case hyphenated"), "{}", e.message);
    let ack = format!(r#"{{"type":"ack","id":"{}"}}"#, lower.to_uppercase());
    send_text(&mut alice.ws, &ack).await;
    assert_eq!(alice.expect_error().await.code, ErrorCode::BadFrame);
    // The canonical form is acked with exactly the text that was sent.
    let m = alice.send(&bob, "quietly").await;
    let ack = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        use futures_util::StreamExt as _;
        loop {
            if let Some(Ok(Message::Text(t))) = alice.ws.next().await {
                return t.to_string();
            }
        }
    })
    .await
    .expect("an ack");
    assert!(ack.contains(&format!(r#""id":"{}""#, m.id)), "{ack}");
}

#[tokio::test]
async fn errors_carry_the_id_of_the_frame_they_refuse() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let bob = Identity::generate().public_key();

    let m = alice.seal(&bob, "when?");
    let bad_ts = protocol::to_text(&Frame::Message(m.clone())).replace(&m.ts, "yesterday");
    send_text(&mut alice.ws, &bad_ts).await;
    let e = alice.expect_error().await;
    assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(m.id)));

    let mut short = alice.seal(&bob, "x");
    short.payload.ciphertext = vec![1; 15];
    send_frame(&mut alice.ws, &Frame::Message(short.clone())).await;
    let e = alice.expect_error().await;
    assert_eq!((e.code, e.id), (ErrorCode::BadFrame, Some(short.id)));
    assert!(e.message.contains("16-byte tag"), "{}", e.message);

    let mut big = alice.seal(&bob, "x");
    big.payload.ciphertext = vec![7; 70_000];
    send_frame(&mut alice.ws, &Frame::Message(big.clone())).await;
    let e = alice.expect_error().await;
    assert_eq!((e.code, e.id), (ErrorCode::TooLarge, Some(big.id)));
    alice.send_acked(&bob, "still up").await;
}

#[tokio::test]
async fn invalid_utf8_text_is_closed_with_1007() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    send_invalid_utf8(&mut alice.ws).await;
    let (close, _) = until_close(&mut alice.ws).await;
    assert_eq!(close.expect("a close frame").code, CloseCode::Invalid);

    let mallory = Identity::generate();
    let mut ws = connect_raw(&router.addr, &mallory.public_key()).await;
    read_challenge(&mut ws).await;
    send_invalid_utf8(&mut ws).await;
    let (close, _) = until_close(&mut ws).await;
    assert_eq!(close.expect("a close frame").code, CloseCode::Invalid);
}

#[tokio::test]
async fn one_id_from_two_senders_is_stored_and_delivered_twice() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut carol = Client::connect(&router.addr, Identity::generate()).await;
    let bob_id = Identity::generate();
    let bob_secret = bob_id.secret_bytes();
    let mut bob = Client::connect(&router.addr, bob_id).await;
    assert!(bob.until_synced().await.is_empty());

    let from_alice = alice.seal(&bob.key(), "from alice");
    let mut from_carol = carol.seal(&bob.key(), "from carol");
    from_carol = protocol::seal(
        &carol.id,
        &bob.key(),
        from_alice.id,
        &from_carol.ts,
        &protocol::Content::text("from carol"),
    )
    .unwrap();
    send_frame(&mut alice.ws, &Frame::Message(from_alice.clone())).await;
    alice.expect_ack(from_alice.id).await;
    send_frame(&mut carol.ws, &Frame::Message(from_carol.clone())).await;
    carol.expect_ack(from_alice.id).await;

    let (first, first_text) = bob.receive().await;
    let (second, second_text) = bob.receive().await;
    assert_eq!((first.id, second.id), (from_alice.id, from_alice.id));
    assert_eq!(
        (first_text.as_str(), second_text.as_str()),
        ("from alice", "from carol")
    );
    // One ack settles one of them; the other comes back after a reconnect.
    bob.ack(first.id).await;
    // An ack for an id never delivered is ignored: no error, no effect.
    bob.ack(uuid::Uuid::now_v7()).await;
    // Barrier: a frame to a stranger is acked only after the acks before
    // it are committed. (Not one to himself: since protocol v2 the router
    // does not deliver a device's own frames back to it.)
    bob.send_acked(&Identity::generate().public_key(), "barrier")
        .await;
    bob.close().await;
    let mut bob = Client::connect(&router.addr, Identity::from_secret_bytes(&bob_secret)).await;
    let (again, text) = bob.receive().await;
    assert_eq!((again.id, text.as_str()), (from_alice.id, "from carol"));
}

#[test]
fn healthz_body_is_exactly_as_documented() {
    use std::io::{Read as _, Write as _};
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let mut tcp = std::net::TcpStream::connect(&router.addr).unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").expect("a head and a body");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; charset=utf-8"),
        "{head}"
    );
    assert_eq!(body, "ok\n");
    let doc = include_str!("../docs/PROTOCOL.md");
    assert!(doc.contains("`Content-Type: text/plain; charset=utf-8`"));
    assert!(doc.contains("body\n   `ok\\n`") || doc.contains("`ok\\n`"));
}

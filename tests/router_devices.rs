//! Protocol v2 at a real router: one key on several devices (each gets
//! every frame and acks on its own, a late device gets only newer frames,
//! one session per device), control sessions, listing and removing
//! devices, and auth bound to the router's own names, down to a relaying
//! router trying to use a client's answer.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_p2p::client::connection;
use chat_p2p::client::{ClientError, ServerUrl};
use chat_p2p::identity::Identity;
use chat_p2p::protocol::{self, ErrorCode, Frame, MessageFrame};
use chat_p2p::store::device::Device;
use common::{
    connect_raw, next_frame, read_challenge, send_frame, twin, until_close, Client, Router,
};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use uuid::Uuid;

fn data() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("router");
    (dir, data)
}

/// Waits until everything `client` sent before (acks included) is
/// committed: a probe to a stranger is acked only after them.
async fn barrier(client: &mut Client) {
    let stranger = Identity::generate().public_key();
    let probe = client.send(&stranger, "probe").await;
    client.expect_ack(probe.id).await;
}

/// Receives one message and checks it is `sent`.
async fn receives(client: &mut Client, sent: &MessageFrame) {
    let (got, _) = client.receive().await;
    assert_eq!(got.id, sent.id);
}

/// Sends `frame` and returns the next frame the router answers.
async fn request(client: &mut Client, frame: Frame) -> Frame {
    send_frame(&mut client.ws, &frame).await;
    client.next().await
}

#[tokio::test]
async fn two_devices_of_one_key_each_get_every_frame_and_ack_on_their_own() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    let mut bob1 = Client::connect_device(&router.addr, twin(&bob), laptop).await;
    let mut bob2 = Client::connect_device(&router.addr, twin(&bob), phone).await;
    bob1.until_synced().await;
    bob2.until_synced().await;
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let sent = alice.send_acked(&bob.public_key(), "to both").await;
    receives(&mut bob1, &sent).await;
    receives(&mut bob2, &sent).await;

    // Only the laptop acks: the phone gets it again, the laptop does not.
    bob1.ack(sent.id).await;
    barrier(&mut bob1).await;
    bob1.close().await;
    bob2.close().await;
    let mut bob2 = Client::connect_device(&router.addr, twin(&bob), phone).await;
    receives(&mut bob2, &sent).await;
    bob2.ack(sent.id).await;
    barrier(&mut bob2).await;
    let mut bob1 = Client::connect_device(&router.addr, twin(&bob), laptop).await;
    assert!(bob1.until_synced().await.is_empty(), "acked by the laptop");
    bob2.close().await;
    let mut bob2 = Client::connect_device(&router.addr, twin(&bob), phone).await;
    assert!(bob2.until_synced().await.is_empty(), "acked by both");
}

#[tokio::test]
async fn an_offline_device_catches_up_and_a_late_one_gets_only_newer_frames() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let (laptop, phone, tablet) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
    // Both devices known, then the phone goes offline.
    Client::connect_device(&router.addr, twin(&bob), laptop)
        .await
        .close()
        .await;
    let mut bob2 = Client::connect_device(&router.addr, twin(&bob), phone).await;
    bob2.until_synced().await;
    bob2.close().await;
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let mut sent = Vec::new();
    for n in 0..3 {
        sent.push(alice.send_acked(&bob.public_key(), &format!("m{n}")).await);
    }
    // The tablet registers now: it gets nothing of what came before.
    let mut bob3 = Client::connect_device(&router.addr, twin(&bob), tablet).await;
    assert!(bob3.until_synced().await.is_empty());
    let newer = alice.send_acked(&bob.public_key(), "newer").await;
    receives(&mut bob3, &newer).await;
    // The phone, back, catches up in order.
    let mut bob2 = Client::connect_device(&router.addr, twin(&bob), phone).await;
    for m in sent.iter().chain([&newer]) {
        receives(&mut bob2, m).await;
    }
}

#[tokio::test]
async fn a_newer_session_of_a_device_replaces_it_and_the_others_stay() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    let mut old = Client::connect_device(&router.addr, twin(&bob), laptop).await;
    let mut other = Client::connect_device(&router.addr, twin(&bob), phone).await;
    old.until_synced().await;
    other.until_synced().await;
    let mut new = Client::connect_device(&router.addr, twin(&bob), laptop).await;
    let (close, _) = until_close(&mut old.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 4000);
    assert_eq!(
        close.reason.as_str(),
        "replaced by a newer session for this key"
    );
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let sent = alice.send_acked(&bob.public_key(), "still two").await;
    receives(&mut new, &sent).await;
    receives(&mut other, &sent).await;
}

#[tokio::test]
async fn a_control_session_receives_nothing_and_replaces_nothing() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let mut device = Client::connect(&router.addr, twin(&bob)).await;
    device.until_synced().await;
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let waiting = alice.send_acked(&bob.public_key(), "queued").await;
    receives(&mut device, &waiting).await;

    let mut control = Client::control(&router.addr, twin(&bob)).await;
    // It may send: to alice, and to its own key (the device gets that).
    let to_alice = control.send_acked(&alice.key(), "from control").await;
    receives(&mut alice, &to_alice).await;
    let to_self = control.send_acked(&bob.public_key(), "note").await;
    receives(&mut device, &to_self).await;
    // It is no device.
    let Frame::Devices(list) = request(&mut control, Frame::ListDevices).await else {
        panic!("expected devices")
    };
    assert_eq!(list.devices.len(), 1);
    assert_eq!(list.devices[0].id, device.device);
    assert!(list.devices[0].online);
    // A second control session replaces neither.
    let mut control2 = Client::control(&router.addr, twin(&bob)).await;
    let more = alice.send_acked(&bob.public_key(), "after").await;
    receives(&mut device, &more).await;
    barrier(&mut control).await;
    barrier(&mut control2).await;
    // Nothing was delivered to the control sessions: the next frame each
    // reads is the answer to its own request, with no synced before it.
    for c in [&mut control, &mut control2] {
        assert!(matches!(
            request(c, Frame::ListDevices).await,
            Frame::Devices(_)
        ));
        assert_eq!(c.synced, 0);
    }
}

#[tokio::test]
async fn a_removed_device_is_closed_with_4001_and_refused_after() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    let mut bob1 = Client::connect_device(&router.addr, twin(&bob), laptop).await;
    bob1.until_synced().await;
    let mut bob2 = Client::connect_device(&router.addr, twin(&bob), phone).await;
    bob2.until_synced().await;
    let Frame::Devices(list) = request(&mut bob1, Frame::ListDevices).await else {
        panic!("expected devices")
    };
    let ids: Vec<Uuid> = list.devices.iter().map(|d| d.id).collect();
    assert_eq!(ids, [laptop, phone], "oldest first");
    assert!(list.devices.iter().all(|d| d.online && d.name == "test"));

    let remove = Frame::RemoveDevice(protocol::RemoveDevice { device: phone });
    let Frame::DeviceRemoved(answer) = request(&mut bob1, remove.clone()).await else {
        panic!("expected device-removed")
    };
    assert_eq!((answer.device, answer.removed), (phone, true));
    let (close, _) = until_close(&mut bob2.ws).await;
    let close = close.expect("a close frame");
    assert_eq!(u16::from(close.code), 4001);
    assert_eq!(
        close.reason.as_str(),
        "this device was removed from its identity"
    );
    let Frame::DeviceRemoved(again) = request(&mut bob1, remove).await else {
        panic!("expected device-removed")
    };
    assert!(!again.removed, "already removed");

    let Err((close, frames)) = Client::try_connect(&router.addr, twin(&bob), phone).await else {
        panic!("a removed device signed in again")
    };
    let [Frame::Error(e)] = &frames[..] else {
        panic!("expected one error, got {frames:?}")
    };
    assert_eq!(e.code, ErrorCode::DeviceRemoved);
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
    // The laptop alone gets what follows.
    let mut alice = Client::connect(&router.addr, Identity::generate()).await;
    let sent = alice.send_acked(&bob.public_key(), "one device").await;
    receives(&mut bob1, &sent).await;
    let Frame::Devices(list) = request(&mut bob1, Frame::ListDevices).await else {
        panic!("expected devices")
    };
    assert_eq!(list.devices.len(), 1);
}

#[tokio::test]
async fn a_key_has_at_most_32_devices() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let bob = Identity::generate();
    let mut devices = Vec::new();
    for _ in 0..32 {
        let device = Uuid::new_v4();
        Client::connect_device(&router.addr, twin(&bob), device)
            .await
            .close()
            .await;
        devices.push(device);
    }
    let Err((close, frames)) = Client::try_connect(&router.addr, twin(&bob), Uuid::new_v4()).await
    else {
        panic!("a 33rd device signed in")
    };
    let [Frame::Error(e)] = &frames[..] else {
        panic!("expected one error, got {frames:?}")
    };
    assert_eq!(e.code, ErrorCode::TooManyDevices);
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
    // Known devices still sign in; after a removal, a new one fits.
    let mut first = Client::connect_device(&router.addr, twin(&bob), devices[0]).await;
    let remove = Frame::RemoveDevice(protocol::RemoveDevice {
        device: devices[31],
    });
    assert!(matches!(
        request(&mut first, remove).await,
        Frame::DeviceRemoved(protocol::DeviceRemoved { removed: true, .. })
    ));
    Client::connect_device(&router.addr, twin(&bob), Uuid::new_v4()).await;
}

/// An `auth` of `id`'s `device` signed for the router named `router`.
fn auth_for(id: &Identity, nonce: &[u8; 32], router: &str, device: &Uuid) -> Frame {
    let who = protocol::AuthFor {
        device,
        name: "test",
        router,
    };
    Frame::Auth(protocol::sign_challenge(id, protocol::VERSION, nonce, who))
}

/// Signs in at `addr` with an auth signed for `router`: the router's
/// first answer, and its close if it closed.
async fn sign_in_for(
    addr: &str,
    id: &Identity,
    router: &str,
) -> (
    Frame,
    Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>,
) {
    let mut ws = connect_raw(addr, &id.public_key()).await;
    let nonce = read_challenge(&mut ws).await;
    send_frame(&mut ws, &auth_for(id, &nonce, router, &Uuid::new_v4())).await;
    let first = next_frame(&mut ws).await;
    if matches!(first, Frame::Ready(_)) {
        return (first, None);
    }
    (first, until_close(&mut ws).await.0)
}

#[tokio::test]
async fn an_auth_signed_for_another_router_is_refused_and_names_ours() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let port = router.addr.rsplit(':').next().unwrap().to_owned();
    let id = Identity::generate();
    let (first, close) = sign_in_for(&router.addr, &id, "ws://elsewhere.example:80/ws").await;
    let Frame::Error(e) = first else {
        panic!("expected an error, got {first:?}")
    };
    assert_eq!(e.code, ErrorCode::WrongRouter);
    assert!(
        e.message.contains("ws://elsewhere.example:80/ws"),
        "{}",
        e.message
    );
    for name in [
        format!("ws://127.0.0.1:{port}/ws"),
        format!("ws://localhost:{port}/ws"),
    ] {
        assert!(e.message.contains(&name), "{name} missing: {}", e.message);
    }
    assert_eq!(close.expect("a close frame").code, CloseCode::Policy);
    // The loopback names are its own by default.
    let (first, _) = sign_in_for(&router.addr, &id, &format!("ws://localhost:{port}/ws")).await;
    assert!(matches!(first, Frame::Ready(_)), "{first:?}");
}

#[tokio::test]
async fn public_urls_replace_the_default_names() {
    let (_dir, data) = data();
    let router = Router::start(
        &data,
        &[
            "--public-url",
            "WSS://Chat.Example.org/ws",
            "--public-url",
            "ws://10.0.0.7:9000",
        ],
    );
    let id = Identity::generate();
    for name in ["wss://chat.example.org:443/ws", "ws://10.0.0.7:9000/ws"] {
        let (first, _) = sign_in_for(&router.addr, &id, name).await;
        assert!(matches!(first, Frame::Ready(_)), "{name}: {first:?}");
    }
    let local = format!("ws://{}/ws", router.addr);
    let (first, _) = sign_in_for(&router.addr, &id, &local).await;
    let Frame::Error(e) = first else {
        panic!("expected an error, got {first:?}")
    };
    assert_eq!(e.code, ErrorCode::WrongRouter);
    assert!(
        e.message
            .contains("wss://chat.example.org:443/ws, ws://10.0.0.7:9000/ws"),
        "{}",
        e.message
    );
}

#[tokio::test]
async fn public_urls_come_from_the_environment_too() {
    let (_dir, data) = data();
    let urls = "ws://a.example/ws, WS://B.example:8080/chat";
    let router = Router::start_with_env(
        &data,
        "127.0.0.1:0",
        &[],
        &[("CHAT_ROUTER_PUBLIC_URL", urls)],
    );
    let id = Identity::generate();
    for name in ["ws://a.example:80/ws", "ws://b.example:8080/chat"] {
        let (first, _) = sign_in_for(&router.addr, &id, name).await;
        assert!(matches!(first, Frame::Ready(_)), "{name}: {first:?}");
    }
}

#[test]
fn a_public_url_that_is_not_a_router_address_is_a_usage_error() {
    let (_dir, data) = data();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .args(["--public-url", "https://chat.example.org/ws"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ws:// or wss://"), "{err}");
}

/// A malicious router: accepts a client on its own port, opens a session
/// to `target` for the key the client named, and relays every frame both
/// ways (the target's challenge to the client, the client's auth back).
// The header callback's error type is tungstenite's.
#[allow(clippy::result_large_err)]
async fn relaying_router(target: String) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let asked = Arc::new(Mutex::new(String::new()));
        let seen = Arc::clone(&asked);
        let client = tokio_tungstenite::accept_hdr_async(
            stream,
            move |req: &tokio_tungstenite::tungstenite::handshake::server::Request, resp| {
                *seen.lock().unwrap() = req.uri().to_string();
                Ok(resp)
            },
        )
        .await
        .unwrap();
        let path = asked.lock().unwrap().clone();
        let (upstream, _) = tokio_tungstenite::connect_async(format!("ws://{target}{path}"))
            .await
            .unwrap();
        let (mut to_client, mut from_client) = client.split();
        let (mut to_router, mut from_router) = upstream.split();
        let down = async {
            while let Some(Ok(m)) = from_router.next().await {
                if to_client.send(m).await.is_err() {
                    break;
                }
            }
        };
        let up = async {
            while let Some(Ok(m)) = from_client.next().await {
                if to_router.send(m).await.is_err() {
                    break;
                }
            }
        };
        tokio::select! {
            () = down => {}
            () = up => {}
        }
    });
    (addr, task)
}

#[tokio::test]
async fn a_relaying_router_cannot_use_a_clients_answer() {
    let (_dir, data) = data();
    let router = Router::start(&data, &[]);
    let (proxy, relay) = relaying_router(router.addr.clone()).await;
    let alice = Identity::generate();
    let device = Device {
        id: Uuid::new_v4(),
        name: "laptop".to_owned(),
        created_at: chat_p2p::clock::now(),
    };
    // The real client code, dialing the relaying router.
    let url = ServerUrl::parse(&format!("ws://{proxy}/ws")).unwrap();
    let result = connection::connect(&url, &alice, &device, Duration::from_secs(20)).await;
    let Err(ClientError::Refused { code, message }) = result else {
        panic!("the relayed auth was not refused")
    };
    assert_eq!(code, ErrorCode::WrongRouter);
    assert!(message.contains(&format!("ws://{proxy}/ws")), "{message}");
    let shown = ClientError::Refused { code, message }.to_string();
    assert!(shown.contains("wrong-router"), "{shown}");
    relay.abort();
    // No session for alice was opened: her device is unknown there.
    let mut control = Client::control(&router.addr, alice).await;
    let Frame::Devices(list) = request(&mut control, Frame::ListDevices).await else {
        panic!("expected devices")
    };
    assert!(list.devices.is_empty(), "{:?}", list.devices);
}

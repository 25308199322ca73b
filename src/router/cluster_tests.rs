//! The router's side of a queue other routers share, and of a queue that
//! goes away: real sessions over real sockets against the SQLite queue,
//! wrapped so the test can play the other routers (their events, a claim
//! taken elsewhere) and an outage (every operation failing, or only
//! fetches). The same scenarios against real routers on a real Redis are
//! in `tests/cluster.rs`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::backend::sqlite::SqliteBackend;
use super::backend::{
    Backend, BackendError, ClusterEvent, DeviceRecord, Enqueued, Expired, NewFrame, Queued,
    Registered,
};
use super::tests::{next, next_message, send, send_acked, session, Ws};
use super::{serve_with_backend, RouterConfig};
use crate::identity::{Identity, PublicKey};
use crate::protocol::{self, ErrorCode, Frame};

/// Only a guard against hanging; nothing is asserted about timing.
const GUARD: Duration = Duration::from_secs(20);

/// What the test controls.
#[derive(Default)]
struct Control {
    /// Every operation fails and `health` says why.
    down: AtomicBool,
    /// Only fetches fail.
    fetch_fails: AtomicBool,
    /// Only claims fail.
    claims_fail: AtomicBool,
    /// Fetches that failed so far.
    fetch_failures: AtomicU64,
    /// Whether the queue says other routers share it.
    shared: bool,
    /// The newest claim of each device, as the shared store keeps it.
    claims: Mutex<HashMap<(PublicKey, Uuid), u64>>,
    next_claim: AtomicU64,
    events: Mutex<Option<mpsc::UnboundedReceiver<ClusterEvent>>>,
}

/// The SQLite queue, with [`Control`] on the side.
#[derive(Clone)]
struct TestQueue {
    inner: SqliteBackend,
    control: Arc<Control>,
}

impl TestQueue {
    /// A queue in `dir`, shared or not; with the sender of its events.
    fn open(dir: &std::path::Path, shared: bool) -> (Self, mpsc::UnboundedSender<ClusterEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let control = Control {
            shared,
            events: Mutex::new(Some(rx)),
            ..Control::default()
        };
        let queue = Self {
            inner: SqliteBackend::open(dir, 10_000).unwrap(),
            control: Arc::new(control),
        };
        (queue, tx)
    }

    /// Whether the queue answers now.
    fn up(&self) -> bool {
        !self.control.down.load(SeqCst)
    }

    /// Another router claims `device` of `key` and its event is lost.
    fn claim_elsewhere(&self, key: PublicKey, device: Uuid) {
        let claim = self.control.next_claim.fetch_add(1, SeqCst) + 1;
        self.control
            .claims
            .lock()
            .unwrap()
            .insert((key, device), claim);
    }
}

/// `op`, or an outage error when it was not run (the queue is down).
async fn gated<T>(
    op: Option<impl Future<Output = Result<T, BackendError>>>,
) -> Result<T, BackendError> {
    match op {
        Some(op) => op.await,
        None => Err(BackendError::Commit("test: the queue is down".into())),
    }
}

impl Backend for TestQueue {
    fn enqueue(
        &self,
        frames: Vec<NewFrame>,
    ) -> impl Future<Output = Result<Vec<Enqueued>, BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.enqueue(frames)))
    }

    fn register(
        &self,
        key: PublicKey,
        device: Uuid,
        name: String,
    ) -> impl Future<Output = Result<Registered, BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.register(key, device, name)))
    }

    fn seen(
        &self,
        devices: Vec<(PublicKey, Uuid)>,
    ) -> impl Future<Output = Result<(), BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.seen(devices)))
    }

    fn devices(
        &self,
        key: PublicKey,
    ) -> impl Future<Output = Result<Vec<DeviceRecord>, BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.devices(key)))
    }

    fn remove_device(
        &self,
        key: PublicKey,
        device: Uuid,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.remove_device(key, device)))
    }

    fn fetch(
        &self,
        recipient: PublicKey,
        device: Uuid,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Queued>, BackendError>> + Send + 'static {
        let fails = self.control.fetch_fails.load(SeqCst);
        let control = Arc::clone(&self.control);
        let fetch = gated(
            self.up()
                .then(|| self.inner.fetch(recipient, device, after, limit)),
        );
        async move {
            let result = if fails {
                Err(BackendError::Commit("test: fetches fail".into()))
            } else {
                fetch.await
            };
            if result.is_err() {
                control.fetch_failures.fetch_add(1, SeqCst);
            }
            result
        }
    }

    fn remove(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static {
        gated(
            self.up()
                .then(|| self.inner.remove(recipient, device, seqs)),
        )
    }

    fn expire(
        &self,
        before: String,
    ) -> impl Future<Output = Result<Expired, BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.expire(before)))
    }

    fn depth(&self) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static {
        gated(self.up().then(|| self.inner.depth()))
    }

    fn is_shared(&self) -> bool {
        self.control.shared
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<ClusterEvent>> {
        self.control.events.lock().unwrap().take()
    }

    fn claim(
        &self,
        key: PublicKey,
        device: Uuid,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send + 'static {
        let claim = self.control.next_claim.fetch_add(1, SeqCst) + 1;
        self.control
            .claims
            .lock()
            .unwrap()
            .insert((key, device), claim);
        let fails = self.control.claims_fail.load(SeqCst);
        gated((self.up() && !fails).then(|| std::future::ready(Ok(claim))))
    }

    fn holds_claim(
        &self,
        key: PublicKey,
        device: Uuid,
        claim: u64,
    ) -> impl Future<Output = Result<bool, BackendError>> + Send + 'static {
        let newest = self
            .control
            .claims
            .lock()
            .unwrap()
            .get(&(key, device))
            .copied();
        gated(
            self.up()
                .then(|| std::future::ready(Ok(newest == Some(claim)))),
        )
    }

    fn health(&self) -> Result<(), String> {
        if self.control.down.load(SeqCst) {
            Err("test queue at nowhere: connection refused".to_owned())
        } else {
            Ok(())
        }
    }

    fn close(&self) -> impl Future<Output = ()> + Send + 'static {
        self.inner.close()
    }
}

/// A router on a free loopback port serving `queue`, until dropped.
struct Running {
    addr: std::net::SocketAddr,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Running {
    async fn start(dir: &std::path::Path, queue: TestQueue, ping: Duration) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = RouterConfig::new(dir.to_path_buf());
        config.ping_interval = ping;
        config.recheck_interval = ping;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve_with_backend(listener, config, queue, async {
            let _ = stopped.await;
        }));
        Self { addr, _stop: stop }
    }

    /// `GET path`: the status line and the body.
    async fn get(&self, path: &str) -> (String, String) {
        let mut tcp = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let head = format!("GET {path} HTTP/1.1\r\n\r\n");
        tcp.write_all(head.as_bytes()).await.unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.unwrap();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        (head.lines().next().unwrap().to_owned(), body.to_owned())
    }
}

/// The close code and reason the router ends `ws` with, after any frames.
async fn closed(ws: &mut Ws) -> (u16, String) {
    loop {
        match tokio::time::timeout(GUARD, ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(c)))) => return (u16::from(c.code), c.reason.to_string()),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// A frame from `from` to `to`, committed as another router would (no
/// wake-up here): what it stored.
async fn commit_elsewhere(queue: &TestQueue, from: &Identity, to: &Identity, body: &str) -> Queued {
    let content = protocol::Content::text(body);
    let id = Uuid::now_v7();
    let m = protocol::seal(from, &to.public_key(), id, &crate::clock::now(), &content).unwrap();
    let frame = NewFrame {
        recipient: *to.public_key().as_bytes(),
        sender: *from.public_key().as_bytes(),
        sender_device: Uuid::new_v4(),
        id,
        text: protocol::to_text(&Frame::Message(m)).into(),
    };
    match queue.inner.enqueue(vec![frame]).await.unwrap().remove(0) {
        Enqueued::Stored { frame, .. } => frame,
        other => panic!("not stored: {other:?}"),
    }
}

/// The device a test session of `id` is (see [`session`]).
fn device_of(id: &Identity) -> Uuid {
    Uuid::from_slice(&id.public_key().as_bytes()[..16]).unwrap()
}

/// Waits until `what` holds; the guard only prevents hanging.
async fn until(what: impl Fn() -> bool) {
    tokio::time::timeout(GUARD, async {
        while !what() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("never happened");
}

#[tokio::test]
async fn a_failing_fetch_keeps_the_session_and_delivery_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _events) = TestQueue::open(dir.path(), false);
    let control = Arc::clone(&queue.control);
    let router = Running::start(dir.path(), queue, Duration::from_secs(30)).await;
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let mut alice_ws = session(router.addr, &alice).await;
    send_acked(&mut alice_ws, &alice, &bob, "while you were away").await;
    control.fetch_fails.store(true, SeqCst);
    // Bob signs in; fetching his backlog fails, twice (the retry too).
    let mut bob_ws = session(router.addr, &bob).await;
    until(|| control.fetch_failures.load(SeqCst) >= 2).await;
    control.fetch_fails.store(false, SeqCst);
    // The same session gets the backlog, then synced, once fetches work.
    let got = next_message(&mut bob_ws).await;
    assert_eq!(got.from, alice.public_key());
    assert!(matches!(next(&mut bob_ws).await, Some(Frame::Synced)));
    send_acked(&mut alice_ws, &alice, &bob, "and now live").await;
    assert_eq!(next_message(&mut bob_ws).await.from, alice.public_key());
}

#[tokio::test]
async fn while_the_queue_is_down_sends_and_logins_are_refused_and_sessions_stay() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _events) = TestQueue::open(dir.path(), false);
    let control = Arc::clone(&queue.control);
    let router = Running::start(dir.path(), queue, Duration::from_secs(30)).await;
    let (alice, bob, carol) = (
        Identity::generate(),
        Identity::generate(),
        Identity::generate(),
    );
    let mut alice_ws = session(router.addr, &alice).await;
    assert!(matches!(next(&mut alice_ws).await, Some(Frame::Synced)));
    let mut bob_ws = session(router.addr, &bob).await;
    assert!(matches!(next(&mut bob_ws).await, Some(Frame::Synced)));
    assert_eq!(
        router.get("/healthz").await,
        ("HTTP/1.1 200 OK".into(), "ok\n".into())
    );

    control.down.store(true, SeqCst);
    let (status, body) = router.get("/healthz").await;
    assert_eq!(status, "HTTP/1.1 503 Service Unavailable");
    assert!(
        body.contains("queue unavailable") && body.contains("connection refused"),
        "{body}"
    );
    let (_, metrics) = router.get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "chat_router_queue_up 0"),
        "{metrics}"
    );
    // A send is refused: internal, no ack.
    let content = protocol::Content::text("hello?");
    let id = Uuid::now_v7();
    let m = protocol::seal(
        &alice,
        &bob.public_key(),
        id,
        &crate::clock::now(),
        &content,
    )
    .unwrap();
    let text = protocol::to_text(&Frame::Message(m));
    send(&mut alice_ws, text.clone()).await;
    match next(&mut alice_ws).await {
        Some(Frame::Error(e)) => assert_eq!((e.id, e.code), (Some(id), ErrorCode::Internal)),
        other => panic!("expected internal, got {other:?}"),
    }
    // A new login is refused before its challenge, with a reason to retry.
    let key = percent_encoding::utf8_percent_encode(
        &carol.public_key().to_base64(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let url = format!("ws://{}/ws?pub={key}", router.addr);
    let (mut carol_ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    match next(&mut carol_ws).await {
        Some(Frame::Error(e)) => {
            assert_eq!(e.code, ErrorCode::Internal);
            assert!(e.message.contains("queue is unavailable"), "{}", e.message);
            assert!(e.message.contains("retry later"), "{}", e.message);
        }
        other => panic!("expected internal, got {other:?}"),
    }
    assert_eq!(
        closed(&mut carol_ws).await,
        (1013, "queue unavailable; reconnect later".to_owned())
    );

    // Back: the same sessions carry on, and the send goes through.
    control.down.store(false, SeqCst);
    assert_eq!(router.get("/healthz").await.0, "HTTP/1.1 200 OK");
    send(&mut alice_ws, text).await;
    match next(&mut alice_ws).await {
        Some(Frame::Ack(a)) => assert_eq!(a.id, id),
        other => panic!("expected the ack, got {other:?}"),
    }
    assert_eq!(next_message(&mut bob_ws).await.id, id);
    let (_, metrics) = router.get("/metrics").await;
    assert!(
        metrics.lines().any(|l| l == "chat_router_queue_up 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn other_routers_frames_reach_local_sessions_even_late_or_lost() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, events) = TestQueue::open(dir.path(), true);
    let router = Running::start(dir.path(), queue.clone(), Duration::from_secs(30)).await;
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let mut bob_ws = session(router.addr, &bob).await;
    assert!(matches!(next(&mut bob_ws).await, Some(Frame::Synced)));
    let devices = vec![device_of(&bob)];

    // Committed on another router, woken through the event.
    let first = commit_elsewhere(&queue, &alice, &bob, "one").await;
    let frame = first.clone();
    events
        .send(ClusterEvent::Frame {
            frame,
            devices: devices.clone(),
        })
        .unwrap();
    assert_eq!(next_message(&mut bob_ws).await.id, first.id);

    // Two more; the later one's wake-up arrives first.
    let early = commit_elsewhere(&queue, &alice, &bob, "two").await;
    let late = commit_elsewhere(&queue, &alice, &bob, "three").await;
    let frame = late.clone();
    events
        .send(ClusterEvent::Frame {
            frame,
            devices: devices.clone(),
        })
        .unwrap();
    assert_eq!(next_message(&mut bob_ws).await.id, late.id);
    let frame = early.clone();
    events
        .send(ClusterEvent::Frame {
            frame,
            devices: devices.clone(),
        })
        .unwrap();
    assert_eq!(
        next_message(&mut bob_ws).await.id,
        early.id,
        "the late one is fetched"
    );

    // A wake-up lost for good: the re-check after a reconnection finds it.
    let lost = commit_elsewhere(&queue, &alice, &bob, "four").await;
    events.send(ClusterEvent::Recheck).unwrap();
    assert_eq!(next_message(&mut bob_ws).await.id, lost.id);
}

#[tokio::test]
async fn only_a_newer_claim_elsewhere_replaces_a_session() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, events) = TestQueue::open(dir.path(), true);
    let router = Running::start(dir.path(), queue.clone(), Duration::from_secs(30)).await;
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let mut bob_ws = session(router.addr, &bob).await;
    assert!(matches!(next(&mut bob_ws).await, Some(Frame::Synced)));
    let (key, device) = (bob.public_key(), device_of(&bob));
    let held = queue.control.claims.lock().unwrap()[&(key, device)];
    // Late or repeated news of older sessions, and another device's
    // removal: the session stays (it still gets a frame after them).
    for claim in [held - 1, held] {
        events
            .send(ClusterEvent::Replaced { key, device, claim })
            .unwrap();
    }
    let other = Uuid::new_v4();
    events
        .send(ClusterEvent::DeviceRemoved { key, device: other })
        .unwrap();
    let frame = commit_elsewhere(&queue, &alice, &bob, "still here?").await;
    let id = frame.id;
    events
        .send(ClusterEvent::Frame {
            frame,
            devices: vec![device],
        })
        .unwrap();
    assert_eq!(next_message(&mut bob_ws).await.id, id);
    // A newer session of the device on another router: 4000.
    let claim = held + 1;
    events
        .send(ClusterEvent::Replaced { key, device, claim })
        .unwrap();
    assert_eq!(
        closed(&mut bob_ws).await,
        (4000, "replaced by a newer session for this key".to_owned())
    );
    // The device removed through another router: 4001.
    let mut bob_ws = session(router.addr, &bob).await;
    events
        .send(ClusterEvent::DeviceRemoved { key, device })
        .unwrap();
    assert_eq!(closed(&mut bob_ws).await.0, 4001);
}

#[tokio::test]
async fn a_replacement_whose_event_was_lost_ends_the_session_on_a_heartbeat() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _events) = TestQueue::open(dir.path(), true);
    let router = Running::start(dir.path(), queue.clone(), Duration::from_secs(1)).await;
    let bob = Identity::generate();
    let mut bob_ws = session(router.addr, &bob).await;
    queue.claim_elsewhere(bob.public_key(), device_of(&bob));
    // Reading answers the router's pings, so only the claim can end it.
    assert_eq!(
        closed(&mut bob_ws).await,
        (4000, "replaced by a newer session for this key".to_owned())
    );
}

#[tokio::test]
async fn a_login_whose_claim_fails_is_refused_with_1013() {
    let dir = tempfile::tempdir().unwrap();
    let (queue, _events) = TestQueue::open(dir.path(), true);
    queue.control.claims_fail.store(true, SeqCst);
    let router = Running::start(dir.path(), queue.clone(), Duration::from_secs(30)).await;
    let bob = Identity::generate();
    let key = percent_encoding::utf8_percent_encode(
        &bob.public_key().to_base64(),
        percent_encoding::NON_ALPHANUMERIC,
    )
    .to_string();
    let url = format!("ws://{}/ws?pub={key}", router.addr);
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let Some(Frame::Challenge(c)) = next(&mut ws).await else {
        panic!("no challenge")
    };
    let name = protocol::router_name(&format!("ws://{}/ws", router.addr)).unwrap();
    let who = protocol::AuthFor {
        device: &device_of(&bob),
        name: "test",
        router: &name,
    };
    let auth = protocol::sign_challenge(&bob, protocol::VERSION, &c.nonce, who);
    send(&mut ws, protocol::to_text(&Frame::Auth(auth))).await;
    match next(&mut ws).await {
        Some(Frame::Error(e)) => assert_eq!(e.code, ErrorCode::Internal),
        other => panic!("expected internal, got {other:?}"),
    }
    assert_eq!(
        closed(&mut ws).await,
        (1013, "queue unavailable; reconnect later".to_owned())
    );
    // Once claims work again, so do logins.
    queue.control.claims_fail.store(false, SeqCst);
    let mut bob_ws = session(router.addr, &bob).await;
    assert!(matches!(next(&mut bob_ws).await, Some(Frame::Synced)));
}

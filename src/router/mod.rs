//! The router: a WebSocket server that authenticates sessions, stores every
//! frame in a durable queue, delivers it to its recipient and deletes it
//! when the recipient acknowledges it. It never sees plaintext.
//!
//! [`serve`] takes its listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and stop it cleanly. On shutdown it stops accepting,
//! tells every session to finish (each waits for its in-flight commits and
//! sends their acks, then closes with a reason), and closes the queue after
//! its last commit.
//!
//! With a queue several routers share ([`Backend::is_shared`]), the other
//! routers' [`ClusterEvent`]s are applied to this router's hub as they come
//! ([`cluster_events`]): frames for its sessions, newer sessions of their
//! devices elsewhere, removed devices, and re-checks after a reconnection.

pub mod backend;
mod http;
pub mod hub;
pub mod limits;
pub mod metrics;
pub mod recipients;
mod session;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use self::backend::sqlite::SqliteBackend;
use self::backend::{Backend, BackendError, ClusterEvent};
use self::hub::Hub;
use crate::protocol::{self, MAX_FRAME_BYTES};

/// Frames a session may have delivered and not yet acknowledged, unless
/// `--delivery-window` says otherwise. Four of the client's batches (1024
/// frames): while the client stores one, the next two are being verified
/// and decrypted and one more is on the way, so a backlog drains without
/// the client and the router taking turns (see docs/BENCHMARKS.md, "Client
/// drain"). What it costs: the ids of those frames, per draining session.
pub const DEFAULT_DELIVERY_WINDOW: usize = 4096;

/// Every limit and setting of a router. [`RouterConfig::new`] gives the
/// defaults.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Directory holding the queue database.
    pub data_dir: PathBuf,
    /// Largest frame accepted, in bytes of JSON text.
    pub max_frame_bytes: usize,
    /// Most frames queued for one recipient.
    pub max_queued_per_recipient: u64,
    /// How long an undelivered frame is kept.
    pub retention: Duration,
    /// Frames per second one connection may send (bursts up to the same).
    pub max_frames_per_sec: u32,
    /// Most simultaneous WebSocket connections.
    pub max_connections: usize,
    /// How long a client has to authenticate.
    pub auth_timeout: Duration,
    /// Interval of WebSocket pings; a session silent for two is reaped.
    pub ping_interval: Duration,
    /// With a queue other routers share: how often each session re-checks
    /// its queue and its claim, in case a wake-up or a replacement from
    /// another router was lost (rounded to whole heartbeats).
    pub recheck_interval: Duration,
    /// How long a write to a client may take before it is dropped as too
    /// slow.
    pub write_timeout: Duration,
    /// Most frames delivered to a client and not yet acknowledged
    /// ([`DEFAULT_DELIVERY_WINDOW`] unless set).
    pub delivery_window: usize,
    /// How long sessions get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// The addresses clients dial this router by, canonical (see
    /// [`crate::protocol::router_name`]); an `auth` signed for another is
    /// refused with `wrong-router`. Empty: [`default_names`] of the bound
    /// address.
    pub public_names: Vec<String>,
    /// Whom frames are queued for (default: any key); a frame for anyone
    /// else is refused with `recipient-not-served`.
    pub recipients: recipients::Recipients,
}

impl RouterConfig {
    /// The defaults, with the queue in `data_dir`.
    pub fn new(data_dir: PathBuf) -> Self {
        Self {
            data_dir,
            max_frame_bytes: MAX_FRAME_BYTES,
            max_queued_per_recipient: 10_000,
            retention: Duration::from_secs(30 * 24 * 3600),
            max_frames_per_sec: 100,
            max_connections: 20_000,
            auth_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(30),
            recheck_interval: Duration::from_secs(300),
            write_timeout: Duration::from_secs(10),
            delivery_window: DEFAULT_DELIVERY_WINDOW,
            shutdown_grace: Duration::from_secs(5),
            public_names: Vec::new(),
            recipients: recipients::Recipients::default(),
        }
    }
}

/// Why a router could not run.
#[derive(Debug, thiserror::Error)]
pub enum RouterError {
    /// Opening the queue failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// The names a router listening on `addr` answers to when no
/// `--public-url` is given, for local use: `ws://<addr>/ws`, and for a
/// loopback or unspecified (all interfaces) address also the loopback names
/// `ws://localhost:<port>/ws`, `ws://127.0.0.1:<port>/ws` and
/// `ws://[::1]:<port>/ws`. A router listening on all interfaces cannot know
/// the name clients elsewhere dial, and accepting any would let a relaying
/// router through (docs/PROTOCOL.md §2): such clients are refused with
/// `wrong-router` until the operator names it with `--public-url`.
pub fn default_names(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut urls = vec![format!("ws://{addr}/ws")];
    let ip = addr.ip();
    if ip.is_loopback() || ip.is_unspecified() {
        urls.push(format!("ws://localhost:{port}/ws"));
        urls.push(format!("ws://127.0.0.1:{port}/ws"));
        urls.push(format!("ws://[::1]:{port}/ws"));
    }
    let mut names = Vec::new();
    for url in urls {
        if let Ok(name) = protocol::router_name(&url) {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// What every connection shares.
struct Shared<B> {
    config: RouterConfig,
    /// The router's own names (see [`RouterConfig::public_names`]).
    names: Vec<String>,
    backend: B,
    hub: Hub,
    /// Whom frames are queued for, with what it remembers.
    gate: recipients::Gate,
    connections: Arc<Semaphore>,
    stop: watch::Receiver<bool>,
    metrics: Arc<metrics::Metrics>,
}

/// Serves on `listener` with the SQLite queue in `config.data_dir` until
/// `shutdown` resolves, then shuts down gracefully.
pub async fn serve(
    listener: TcpListener,
    config: RouterConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RouterError> {
    let backend = SqliteBackend::open(&config.data_dir, config.max_queued_per_recipient)?;
    tracing::info!(queue = %backend.path().display(), "queue opened");
    serve_with_backend(listener, config, backend, shutdown).await;
    Ok(())
}

/// [`serve`] with any [`Backend`].
pub async fn serve_with_backend<B: Backend>(
    listener: TcpListener,
    config: RouterConfig,
    backend: B,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop) = watch::channel(false);
    let names = if config.public_names.is_empty() {
        match listener.local_addr() {
            Ok(addr) => default_names(addr),
            Err(_) => Vec::new(),
        }
    } else {
        config.public_names.clone()
    };
    if names.is_empty() {
        tracing::warn!("this router has no name: every auth will be refused; pass --public-url");
    }
    tracing::info!(names = %names.join(" "), "answering to");
    let policy = config.recipients.clone();
    match &policy.list {
        Some(list) => tracing::info!(
            serving = policy.describe(),
            listed = list.len(),
            file = %list.path().display(),
            "queueing frames only for some recipients"
        ),
        None if policy.known => tracing::info!(
            serving = policy.describe(),
            "queueing frames only for some recipients"
        ),
        None => {}
    }
    let shared = Arc::new(Shared {
        names,
        gate: recipients::Gate::new(policy),
        connections: Arc::new(Semaphore::new(config.max_connections)),
        config,
        backend,
        hub: Hub::default(),
        stop,
        metrics: Arc::default(),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(expire_loop(Arc::clone(&shared)));
    if let Some(events) = shared.backend.events() {
        tasks.spawn(cluster_events(Arc::clone(&shared), events));
    }
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Small frames and acks must not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    tasks.spawn(session::handle_connection(stream, peer, Arc::clone(&shared)));
                }
                Err(e) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, the sessions that end will free some.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
    drop(listener);
    tracing::info!(sessions = shared.hub.len(), "shutting down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(shared.config.shutdown_grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some connections did not finish in time; dropping them");
        tasks.shutdown().await;
    }
    shared.backend.close().await;
    tracing::info!("router stopped");
}

/// Applies what the other routers sharing the queue tell this one to its
/// hub, until the router stops or the queue closes the channel.
async fn cluster_events<B: Backend>(
    shared: Arc<Shared<B>>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<ClusterEvent>,
) {
    let mut stop = shared.stop.clone();
    loop {
        let event = tokio::select! {
            _ = stop.changed() => return,
            event = events.recv() => event,
        };
        match event {
            Some(event) => apply(&shared.hub, event),
            None => {
                tracing::warn!("the queue stopped sending other routers' events");
                return;
            }
        }
    }
}

/// One event from another router, applied to the local sessions.
fn apply(hub: &Hub, event: ClusterEvent) {
    match event {
        ClusterEvent::Frame { frame, devices } => hub.notify(frame, &devices),
        ClusterEvent::Staged(frames) => hub.notify_all(frames),
        ClusterEvent::Replaced { key, device, claim } => hub.replace_older(&key, &device, claim),
        ClusterEvent::DeviceRemoved { key, device } => hub.remove_device(&key, &device),
        ClusterEvent::Recheck => {
            tracing::info!(
                sessions = hub.len(),
                "re-checking every session's queue and claim"
            );
            hub.recheck_all();
        }
    }
}

/// Drops expired frames at start and then periodically.
async fn expire_loop<B: Backend>(shared: Arc<Shared<B>>) {
    let retention = shared.config.retention;
    let period = (retention / 10).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut stop = shared.stop.clone();
    let mut tick = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let Ok(retention) = chrono::Duration::from_std(retention) else {
            return;
        };
        let cutoff = crate::clock::format(chrono::Utc::now() - retention);
        // Devices online now are seen now: only those gone for the whole
        // retention period are forgotten.
        if let Err(e) = shared.backend.seen(shared.hub.all_online()).await {
            tracing::warn!(error = %e, "noting the online devices failed");
        }
        match shared.backend.expire(cutoff.clone()).await {
            Ok(backend::Expired {
                frames: 0,
                devices: 0,
            }) => {}
            Ok(gone) => tracing::info!(
                frames = gone.frames,
                devices = gone.devices,
                before = %cutoff,
                "expired undelivered frames and forgot devices not seen since"
            ),
            Err(e) => tracing::warn!(error = %e, "expiring old frames failed"),
        }
    }
}

#[cfg(test)]
mod cluster_tests;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::protocol::{self, Frame};
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;

    pub(super) type Ws = tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >;

    /// The next frame, or `None` when the socket ends.
    pub(super) async fn next(ws: &mut Ws) -> Option<Frame> {
        let guard = Duration::from_secs(20);
        loop {
            match tokio::time::timeout(guard, ws.next()).await.ok()?? {
                Ok(Message::Text(t)) => return Some(protocol::parse(t.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    pub(super) async fn send(ws: &mut Ws, text: String) {
        ws.send(Message::text(text)).await.unwrap();
    }

    /// An authenticated session for `id`.
    pub(super) async fn session(addr: std::net::SocketAddr, id: &Identity) -> Ws {
        let key = id.public_key().to_base64();
        let key = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
        let url = format!("ws://{addr}/ws?pub={key}");
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let Some(Frame::Challenge(c)) = next(&mut ws).await else {
            panic!("no challenge")
        };
        let router = protocol::router_name(&format!("ws://{addr}/ws")).unwrap();
        // One device per identity: a reconnection is the same device.
        let device = uuid::Uuid::from_slice(&id.public_key().as_bytes()[..16]).unwrap();
        let who = protocol::AuthFor {
            device: &device,
            name: "test",
            router: &router,
        };
        let auth = protocol::sign_challenge(id, protocol::VERSION, &c.nonce, who);
        send(&mut ws, protocol::to_text(&Frame::Auth(auth))).await;
        assert!(matches!(next(&mut ws).await, Some(Frame::Ready(_))));
        ws
    }

    /// Sends a text from `from` to `to` and waits for its ack.
    pub(super) async fn send_acked(ws: &mut Ws, from: &Identity, to: &Identity, body: &str) {
        let content = protocol::Content::text(body);
        let id = uuid::Uuid::now_v7();
        let m = protocol::seal(from, &to.public_key(), id, &crate::clock::now(), &content);
        send(ws, protocol::to_text(&Frame::Message(m.unwrap()))).await;
        loop {
            match next(ws).await {
                Some(Frame::Ack(a)) if a.id == id => return,
                Some(Frame::Synced) => {}
                other => panic!("expected the ack, got {other:?}"),
            }
        }
    }

    /// The next message delivered on `ws`, skipping `synced`.
    pub(super) async fn next_message(ws: &mut Ws) -> protocol::MessageFrame {
        loop {
            match next(ws).await {
                Some(Frame::Message(m)) => return m,
                Some(Frame::Synced | Frame::Ack(_)) => {}
                other => panic!("expected a message, got {other:?}"),
            }
        }
    }

    /// A router serving `data` on a free loopback port, until stopped.
    struct Running {
        addr: std::net::SocketAddr,
        stop: tokio::sync::oneshot::Sender<()>,
        server: tokio::task::JoinHandle<Result<(), RouterError>>,
    }

    impl Running {
        async fn start(data: std::path::PathBuf) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(listener, RouterConfig::new(data), async {
                let _ = stopped.await;
            }));
            Self { addr, stop, server }
        }

        /// Stops it and checks it ended cleanly.
        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.server.await.unwrap().unwrap();
        }
    }

    #[tokio::test]
    async fn frames_a_v1_router_queued_are_delivered_after_the_upgrade() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("router");
        let (alice, bob, carol) = (
            Identity::generate(),
            Identity::generate(),
            Identity::generate(),
        );
        let content = protocol::Content::text("queued by v1");
        let queued: Vec<_> = (0..2)
            .map(|_| {
                let id = uuid::Uuid::now_v7();
                let ts = crate::clock::now();
                protocol::seal(&alice, &bob.public_key(), id, &ts, &content).unwrap()
            })
            .collect();
        let rows: Vec<_> = queued
            .iter()
            .map(|m| backend::NewFrame {
                recipient: *bob.public_key().as_bytes(),
                sender: *alice.public_key().as_bytes(),
                sender_device: protocol::CONTROL_DEVICE,
                id: m.id,
                text: protocol::to_text(&Frame::Message(m.clone())).into(),
            })
            .collect();
        backend::sqlite::write_v1_queue(&data, &rows).unwrap();

        let router = Running::start(data).await;
        let addr = router.addr;
        let mut bob_ws = session(addr, &bob).await;
        for m in &queued {
            assert_eq!(&next_message(&mut bob_ws).await, m);
        }
        // The upgraded queue keeps carol's frame with alice's id apart.
        let mut carol_ws = session(addr, &carol).await;
        let id = queued[0].id;
        let m = protocol::seal(
            &carol,
            &bob.public_key(),
            id,
            &crate::clock::now(),
            &content,
        );
        send(
            &mut carol_ws,
            protocol::to_text(&Frame::Message(m.unwrap())),
        )
        .await;
        let got = next_message(&mut bob_ws).await;
        assert_eq!((got.id, got.from), (id, carol.public_key()));
        router.stop().await;
    }

    #[tokio::test]
    async fn a_panicking_session_takes_no_other_down() {
        let dir = tempfile::tempdir().unwrap();
        let router = Running::start(dir.path().join("router")).await;
        let addr = router.addr;
        let (alice, bob) = (Identity::generate(), Identity::generate());
        let mut alice_ws = session(addr, &alice).await;
        let mut bob_ws = session(addr, &bob).await;
        send(&mut alice_ws, session::TEST_PANIC_FRAME.to_owned()).await;
        while let Some(frame) = next(&mut alice_ws).await {
            assert!(matches!(frame, Frame::Synced), "{frame:?}");
        }
        // Bob is served; alice, offline now, gets it when she is back.
        send_acked(&mut bob_ws, &bob, &alice, "are you there?").await;
        send_acked(&mut bob_ws, &bob, &bob, "note to self").await;
        let mut alice_ws = session(addr, &alice).await;
        let got = loop {
            match next(&mut alice_ws).await {
                Some(Frame::Message(m)) => break m,
                Some(Frame::Synced) => {}
                other => panic!("expected bob's message, got {other:?}"),
            }
        };
        assert_eq!(got.from, bob.public_key());
        router.stop().await;
    }

    #[tokio::test]
    async fn serve_answers_and_stops_when_told() {
        let dir = tempfile::tempdir().unwrap();
        let router = Running::start(dir.path().join("router")).await;
        let addr = router.addr;
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /healthz HTTP/1.1\r\n\r\n")
            .await
            .unwrap();
        let mut reply = String::new();
        tcp.read_to_string(&mut reply).await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK"));
        router.stop().await;
        assert!(dir.path().join("router/queue.sqlite3").exists());
    }
}

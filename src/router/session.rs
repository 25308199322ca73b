//! One connection: the HTTP head, the WebSocket upgrade, the handshake, then
//! one `select!` loop over the socket, the committed-frame hand-off, the
//! queue's answers, the heartbeat and shutdown. Each branch calls a named
//! method; the protocol state lives in [`super::state`].
//!
//! The queue may be out of reach for a while (Redis restarting): a session
//! then stays open, refusing what it cannot store (`internal`, no ack) and
//! retrying its fetches with a backoff, and resumes delivery when the queue
//! is back. New sessions are refused while [`Backend::health`] says the
//! queue is down (close 1013).

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use uuid::Uuid;

use super::backend::{Backend, BackendError, DeviceRecord, Enqueued, NewFrame, Queued};
use super::http::{self, Request};
use super::hub::Registration;
use super::recipients::Decision;
use super::state::{Delivery, RateLimit, SignedIn};
use super::Shared;
use crate::identity::PublicKey;
use crate::protocol::{
    self, Ack, DeviceInfo, DeviceList, DeviceRemoved, ErrorCode, Frame, Inbound,
};

/// Queue submissions a session may have awaiting their commit; beyond
/// that it stops reading its socket (backpressure to the client). With
/// frames of up to 64 KiB this bounds what one session holds to 4 MiB.
const MAX_PENDING: usize = 64;

/// Most hand-offs or commit answers handled before one flush.
const BATCH: usize = 64;

/// Capacity of a session's committed-frame hand-off channel. Only a fast
/// path: frames that do not fit are fetched from the queue later.
const HANDOFF: usize = 64;

/// Close code for a session replaced by a newer one for the same device.
const CLOSE_REPLACED: u16 = 4000;

/// Close code for a session whose device was removed from its key.
const CLOSE_REMOVED: u16 = 4001;

/// The first wait before fetching again after a fetch failed; it doubles
/// with every failure in a row, up to [`FETCH_RETRY_MAX`].
const FETCH_RETRY_FIRST: Duration = Duration::from_secs(1);

/// The longest wait between two fetch attempts while the queue is down.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(10);

/// What a client is told when the router's queue cannot be reached at
/// login (with close 1013): nothing about where the queue lives.
const QUEUE_DOWN: &str = "this router's queue is unavailable, so it cannot serve sessions now; \
                          retry later";

/// A frame that makes a session panic, in unit tests only: proves one
/// session's panic cannot take the router or other sessions down.
#[cfg(test)]
pub(super) const TEST_PANIC_FRAME: &str = r#"{"type":"test-panic"}"#;

mod conn;

use self::conn::Conn;

/// Close reason (with code 1007) for a text message that is not UTF-8.
const CLOSE_BAD_UTF8: &str = "text message is not valid UTF-8";

/// Adds the `Date` header (RFC 9110 asks it of servers with a clock) to the
/// upgrade response, so a client can check its clock against the router's
/// (`doctor`).
// The error type is tungstenite's, fixed by its callback trait.
#[allow(clippy::result_large_err)]
fn add_date(
    _: &tokio_tungstenite::tungstenite::handshake::server::Request,
    mut response: tokio_tungstenite::tungstenite::handshake::server::Response,
) -> Result<
    tokio_tungstenite::tungstenite::handshake::server::Response,
    tokio_tungstenite::tungstenite::handshake::server::ErrorResponse,
> {
    if let Ok(date) = httpdate::fmt_http_date(std::time::SystemTime::now()).parse() {
        response.headers_mut().insert("date", date);
    }
    Ok(response)
}

/// Handles one accepted TCP connection to the end.
///
/// The task lives as long as the session, and its future is as large as
/// its largest state: the HTTP head, the WebSocket handshake and the
/// sign-in (about 4 KB of futures), and the end of the session, are run
/// boxed, so an idle session's task holds only the session and its loop.
pub(super) async fn handle_connection<B: Backend>(
    stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared<B>>,
) {
    let Some((mut session, permit)) = Box::pin(open(stream, peer, &shared)).await else {
        return;
    };
    // Unregisters however the session ends, a panic included.
    let leave = shared
        .hub
        .leave_on_drop(session.key, session.registration.id);
    let exit = match session.serve().await {
        Ok(()) => Exit::Closed,
        Err(exit) => exit,
    };
    let (key, device, claim) = (session.key, session.device, session.registration.claim);
    // Boxed: only a session that ends needs this state.
    let exit = Box::pin(session.finish(exit)).await;
    drop(leave);
    Box::pin(close(&shared, key, device, claim, exit)).await;
    drop(permit);
}

/// The HTTP head (answering health checks and metrics scrapes), the
/// WebSocket upgrade and the sign-in; `None` when the connection ends
/// there.
async fn open<B: Backend>(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared<B>>,
) -> Option<(
    Session<'_, B, http::Replay<TcpStream>>,
    tokio::sync::OwnedSemaphorePermit,
)> {
    let Ok(head) = http::read_head(&mut stream, shared.config.auth_timeout).await else {
        return None;
    };
    let key = match http::route(&head) {
        Request::Health => {
            let _ = match shared.backend.health() {
                Ok(()) => http::respond(&mut stream, "200 OK", "ok\n").await,
                Err(cause) => {
                    let body = format!("queue unavailable: {cause}\n");
                    http::respond(&mut stream, "503 Service Unavailable", &body).await
                }
            };
            return None;
        }
        Request::Metrics => {
            let queue_up = shared.backend.health().is_ok();
            // Asking a queue that is down would only wait for its error.
            let queue_depth = if queue_up {
                shared.backend.depth().await.ok()
            } else {
                None
            };
            let gauges = super::metrics::Gauges {
                sessions: shared.hub.len(),
                queue_depth,
                queue_up,
            };
            let body = shared.metrics.render(gauges);
            let _ = http::respond_typed(&mut stream, "200 OK", http::PROMETHEUS_TEXT, &body).await;
            return None;
        }
        Request::NotFound => {
            let _ = http::respond(
                &mut stream,
                "404 Not Found",
                "not found: use /ws, /healthz or /metrics\n",
            )
            .await;
            return None;
        }
        Request::BadKey(reason) => {
            let _ = http::respond(&mut stream, "400 Bad Request", &format!("{reason}\n")).await;
            return None;
        }
        Request::Session(key) => key,
    };
    let permit = Arc::clone(&shared.connections).try_acquire_owned().ok();
    // Hand tungstenite the head we already read, then the rest of the stream.
    let io = http::Replay::new(head, stream);
    let config = Some(ws_config(shared));
    let ws = match tokio_tungstenite::accept_hdr_async_with_config(io, add_date, config).await {
        Ok(ws) => ws,
        Err(e) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake failed");
            return None;
        }
    };
    let mut conn = Conn { ws, shared };
    if let Err(cause) = shared.backend.health() {
        // The outage itself is logged once, by the queue.
        tracing::debug!(client = %log_id(&key), %cause, "the queue is unavailable; refusing a session");
        conn.refuse_unavailable().await;
        return None;
    }
    let Some(permit) = permit else {
        tracing::warn!(client = %log_id(&key), "connection limit reached; refusing a session");
        tracing::debug!(%peer, key = %key, "refused for the connection limit");
        conn.refuse(
            ErrorCode::TooManyConnections,
            "the router has as many connections as it allows; try again later",
            CloseCode::Again,
        )
        .await;
        return None;
    };
    let (registration, signed_in) = conn.authenticate(key).await?;
    // At the default level a short fingerprint names the client: logs are
    // kept and shipped, and need neither whole keys nor addresses.
    let client = log_id(&key);
    let control = signed_in.is_control();
    let device = signed_in.device;
    shared.metrics.session_started();
    tracing::info!(%client, control, "session started");
    tracing::debug!(%client, %peer, key = %key, %device, "session details");
    Some((Session::new(conn, key, registration, signed_in), permit))
}

/// After a session: gives up its claim and notes when its device was
/// last seen.
async fn close<B: Backend>(
    shared: &Shared<B>,
    key: PublicKey,
    device: Uuid,
    claim: u64,
    exit: Exit,
) {
    let control = device == protocol::CONTROL_DEVICE;
    if !control {
        // A newer claim (a replacement) is kept by the queue.
        if let Err(e) = shared.backend.release(key, device, claim).await {
            tracing::debug!(error = %e, "giving up a session's claim failed");
        }
    }
    if !control && !matches!(exit, Exit::Removed) {
        if let Err(e) = shared.backend.seen(vec![(key, device)]).await {
            tracing::warn!(error = %e, "noting when a device was last seen failed");
        }
    }
    tracing::info!(client = %log_id(&key), ?exit, "session ended");
}

/// How a client is named in logs at the default level: its key's
/// fingerprint (80 bits, as `contacts` shows it, without the spaces), not
/// the whole key. The key and address are logged at `debug`.
fn log_id(key: &PublicKey) -> String {
    key.fingerprint().replace(' ', "")
}

/// Bytes of outgoing frames gathered before they are written to the
/// socket: the session flushes after every batch anyway, so this only
/// decides how many frames share one `send`. (With 0 every frame was its
/// own system call: 1.5 `sendto` per message through the router, most of
/// its CPU; issue 13.) The buffer is allocated as frames are written, so
/// an idle session does not pay for it.
const WRITE_GATHER: usize = 32 * 1024;

/// WebSocket limits: a small read buffer (idle sessions cost ~10 KB, not
/// 137 KB), writes gathered up to [`WRITE_GATHER`], and message caps a
/// little above the frame limit so a frame just over it gets a `too-large`
/// error instead of a dropped connection.
fn ws_config<B>(shared: &Shared<B>) -> WebSocketConfig {
    let cap = shared.config.max_frame_bytes.saturating_mul(2).max(4096);
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(WRITE_GATHER)
        .max_write_buffer_size(4 * 1024 * 1024)
        .max_message_size(Some(cap))
        .max_frame_size(Some(cap))
}

/// Why a session ended.
#[derive(Debug)]
enum Exit {
    /// The client closed or the socket failed.
    Closed,
    /// A newer session for the same device took over.
    Replaced,
    /// The device was removed from its key.
    Removed,
    /// The router is shutting down.
    Shutdown,
    /// No sign of life for two ping intervals.
    Dead,
    /// Writes to the client stalled.
    TooSlow,
    /// A frame larger than the WebSocket cap.
    TooLarge,
    /// A text message that is not valid UTF-8.
    BadUtf8,
    /// The queue could not be reached to open the session.
    Unavailable,
}

/// The close code and reason a session ending for `exit` sends; `None`
/// when the socket is already gone. docs/PROTOCOL.md §4 lists them all.
fn close_for(exit: &Exit) -> Option<(CloseCode, &'static str)> {
    Some(match exit {
        Exit::Closed => return None,
        Exit::Dead => (CloseCode::Policy, "keep-alive timeout: no pong"),
        Exit::Replaced => (
            CloseCode::from(CLOSE_REPLACED),
            "replaced by a newer session for this key",
        ),
        Exit::Removed => (
            CloseCode::from(CLOSE_REMOVED),
            "this device was removed from its identity",
        ),
        Exit::Shutdown => (CloseCode::Away, "router shutting down"),
        Exit::TooSlow => (CloseCode::Policy, "too slow: writes to this client stalled"),
        Exit::TooLarge => (CloseCode::Size, "frame larger than the router accepts"),
        Exit::BadUtf8 => (CloseCode::Invalid, CLOSE_BAD_UTF8),
        Exit::Unavailable => (CloseCode::Again, "queue unavailable; reconnect later"),
    })
}

/// How many heartbeats of `ping` make `interval`, rounded up, at least one.
fn beats_between(interval: Duration, ping: Duration) -> u32 {
    let ping = ping.as_millis().max(1);
    let every = interval.as_millis().div_ceil(ping).max(1);
    u32::try_from(every).unwrap_or(u32::MAX)
}

/// The answer to one queue submission.
enum Done {
    Enqueued(Uuid, Result<Vec<Enqueued>, BackendError>),
    Removed(Result<u64, BackendError>),
    Devices(Result<Vec<DeviceRecord>, BackendError>),
    DeviceRemoved(Uuid, Result<bool, BackendError>),
    /// Whether the session still holds the newest claim on its device.
    Claim(Result<bool, BackendError>),
}

/// An authenticated session.
struct Session<'a, B, S> {
    conn: Conn<'a, B, S>,
    key: PublicKey,
    /// The session's device ([`protocol::CONTROL_DEVICE`] for a control
    /// session).
    device: Uuid,
    /// The router's address as this client signed for it.
    router: String,
    registration: Registration,
    delivery: Delivery,
    rate: RateLimit,
    pending: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Queue positions of frames acked and not yet submitted for removal
    /// (see [`Session::on_message`]).
    acks: Vec<i64>,
    last_seen: Instant,
    /// Whether other routers share the queue: the heartbeat then
    /// re-checks the queue and the claim.
    shared_queue: bool,
    /// The wait before the next fetch while fetches fail; zero when the
    /// last one succeeded.
    fetch_retry: Duration,
    /// Heartbeats until the next re-check on a shared queue.
    beats_to_recheck: u32,
    /// Heartbeats between two re-checks.
    recheck_every: u32,
}

impl<'a, B: Backend, S: AsyncRead + AsyncWrite + Unpin> Session<'a, B, S> {
    fn new(
        conn: Conn<'a, B, S>,
        key: PublicKey,
        registration: Registration,
        who: SignedIn,
    ) -> Self {
        let config = &conn.shared.config;
        let shared_queue = conn.shared.backend.is_shared();
        let delivery = if who.is_control() {
            Delivery::none()
        } else {
            Delivery::new(config.delivery_window)
        };
        Self {
            delivery,
            rate: RateLimit::new(config.max_frames_per_sec, Instant::now()),
            conn,
            key,
            device: who.device,
            router: who.router,
            registration,
            pending: FuturesUnordered::new(),
            acks: Vec::new(),
            last_seen: Instant::now(),
            shared_queue,
            fetch_retry: Duration::ZERO,
            beats_to_recheck: 0,
            recheck_every: 0,
        }
        .with_recheck_period(config.recheck_interval, config.ping_interval)
    }

    /// Sets how many heartbeats pass between re-checks, starting this
    /// session at a random point of the period: sessions that signed in
    /// together (after a router restart) then do not all re-check at once.
    fn with_recheck_period(mut self, interval: Duration, ping: Duration) -> Self {
        self.recheck_every = beats_between(interval, ping);
        self.beats_to_recheck = 1 + rand::random::<u32>() % self.recheck_every;
        self
    }

    /// The loop; returns only with the reason to stop.
    async fn serve(&mut self) -> Result<(), Exit> {
        let period = self.conn.shared.config.ping_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        let mut stop = self.conn.shared.stop.clone();
        let signals = Arc::clone(&self.registration.signals);
        // Set while fetches fail: the next attempt waits for it (boxed, and
        // only then: most sessions never need one).
        let mut retry: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        loop {
            if self
                .registration
                .signals
                .lagged
                .swap(false, Ordering::AcqRel)
            {
                self.delivery.on_lagged();
            }
            if retry.is_none() {
                if let Some((after, limit)) = self.delivery.fetch_request() {
                    if !self.deliver_backlog(after, limit).await? {
                        retry = Some(Box::pin(tokio::time::sleep(self.fetch_retry)));
                    }
                    continue;
                }
            }
            tokio::select! {
                biased;
                _ = stop.changed() => return Err(Exit::Shutdown),
                () = signals.end.notified() => {
                    return Err(if signals.ended_by_removal() { Exit::Removed } else { Exit::Replaced });
                }
                // Only other routers ask for re-checks: a queue of one
                // router adds no waiter to register on every turn.
                () = signals.recheck.notified(), if self.shared_queue => {
                    // The queue is back (or events were lost): now, not
                    // after the rest of a backoff.
                    retry = None;
                    self.recheck();
                }
                () = async { if let Some(wait) = retry.as_mut() { wait.await } }, if retry.is_some() => {
                    retry = None;
                }
                // The two largest handlers run boxed (one allocation per
                // batch): inline, their state would be part of every
                // session's task, idle ones included (~1.3 KB).
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    Box::pin(self.on_done(done)).await?;
                }
                Some(frame) = self.registration.deliveries.recv() => {
                    self.on_handoff(frame).await?;
                }
                msg = self.conn.ws.next(), if self.pending.len() < MAX_PENDING => {
                    Box::pin(self.on_message(msg)).await?;
                }
                _ = heartbeat.tick() => self.on_heartbeat(period).await?,
            }
        }
    }

    /// Sends queued frames after the cursor, as many as the window allows.
    /// False when the queue could not be read: the session stays, and
    /// tries again after [`Session::fetch_retry`].
    async fn deliver_backlog(&mut self, after: i64, limit: usize) -> Result<bool, Exit> {
        let fetched = self
            .conn
            .shared
            .backend
            .fetch(self.key, self.device, after, limit)
            .await;
        let rows = match fetched {
            Ok(rows) => rows,
            Err(e) => {
                self.fetch_failed(&e);
                return Ok(false);
            }
        };
        if !self.fetch_retry.is_zero() {
            tracing::info!(client = %log_id(&self.key), "the queue answers again; delivery resumed");
            self.fetch_retry = Duration::ZERO;
        }
        for row in self.delivery.on_fetched(&rows, limit) {
            self.conn.feed_text(row.text.to_string()).await?;
        }
        if self.delivery.take_synced() {
            self.conn.feed(&Frame::Synced).await?;
        }
        self.conn.flush().await?;
        Ok(true)
    }

    /// A fetch failed: waits longer before each next attempt. Only the
    /// first failure in a row is a warning (every session of the router
    /// sees the same outage).
    fn fetch_failed(&mut self, e: &BackendError) {
        if self.fetch_retry.is_zero() {
            tracing::warn!(
                client = %log_id(&self.key),
                error = %e,
                "fetching the queue failed; the session stays and tries again"
            );
            self.fetch_retry = FETCH_RETRY_FIRST;
        } else {
            tracing::debug!(error = %e, "fetching the queue failed again");
            self.fetch_retry = (self.fetch_retry * 2).min(FETCH_RETRY_MAX);
        }
    }

    /// Re-checks the queue (a fetch from its start, for wake-ups that were
    /// lost or came out of order) and, in the background, whether this
    /// session still holds its device's claim (a lost replacement).
    fn recheck(&mut self) {
        if self.device == protocol::CONTROL_DEVICE {
            // Receives nothing and holds no claim.
            return;
        }
        self.delivery.on_recheck();
        let backend = &self.conn.shared.backend;
        let check = backend.holds_claim(self.key, self.device, self.registration.claim);
        self.pending.push(check.map(Done::Claim).boxed());
    }

    /// Frames committed for this key while it is online.
    async fn on_handoff(&mut self, first: Box<Queued>) -> Result<(), Exit> {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(frame) = next {
            // A frame dropped before this one (channel full) must go out
            // first, through a fetch: check the flag before each frame.
            if self
                .registration
                .signals
                .lagged
                .swap(false, Ordering::AcqRel)
            {
                self.delivery.on_lagged();
            }
            if self.delivery.on_notify(&frame) {
                self.conn.feed_text(frame.text.to_string()).await?;
            }
            count += 1;
            next = if count < BATCH {
                self.registration.deliveries.try_recv().ok()
            } else {
                None
            };
        }
        self.conn.flush().await
    }

    /// Answers to queue submissions: acks after commits, and the hand-off
    /// to recipients.
    async fn on_done(&mut self, first: Done) -> Result<(), Exit> {
        let mut next = Some(first);
        let mut count = 0;
        while let Some(done) = next {
            self.answer(done).await?;
            count += 1;
            next = if count < BATCH {
                self.pending.next().now_or_never().flatten()
            } else {
                None
            };
        }
        self.conn.flush().await
    }

    async fn answer(&mut self, done: Done) -> Result<(), Exit> {
        match done {
            Done::Enqueued(id, Ok(outcomes)) => {
                for outcome in outcomes {
                    self.answer_enqueued(id, outcome).await?;
                }
                Ok(())
            }
            Done::Enqueued(id, Err(e)) => {
                tracing::warn!(error = %e, "a frame could not be stored");
                let msg = "the router could not store this frame; send it again later";
                self.conn.error(Some(id), ErrorCode::Internal, msg).await
            }
            Done::Removed(Err(e)) => {
                tracing::warn!(error = %e, "removing an acknowledged frame failed");
                Ok(())
            }
            Done::Removed(Ok(_)) => Ok(()),
            Done::Devices(Ok(records)) => {
                let online = self.conn.shared.hub.online(&self.key);
                let devices = records
                    .into_iter()
                    .map(|d| DeviceInfo {
                        online: online.contains(&d.id),
                        id: d.id,
                        name: d.name,
                        first_seen: d.first_seen,
                        last_seen: d.last_seen,
                    })
                    .collect();
                self.conn
                    .feed(&Frame::Devices(DeviceList { devices }))
                    .await
            }
            Done::DeviceRemoved(device, Ok(removed)) => {
                if removed {
                    // After the commit: its session closes with 4001.
                    self.conn.shared.hub.remove_device(&self.key, &device);
                }
                let answer = Frame::DeviceRemoved(DeviceRemoved { device, removed });
                self.conn.feed(&answer).await
            }
            Done::Claim(Ok(true)) => Ok(()),
            Done::Claim(Ok(false)) => {
                tracing::info!(client = %log_id(&self.key), "a newer session of this device holds its claim");
                Err(Exit::Replaced)
            }
            Done::Claim(Err(e)) => {
                // Checked again on the next heartbeat.
                tracing::debug!(error = %e, "checking a session's claim failed");
                Ok(())
            }
            Done::Devices(Err(e)) | Done::DeviceRemoved(_, Err(e)) => {
                tracing::warn!(error = %e, "a device request failed");
                let msg = "the router could not answer this device request; try again later";
                self.conn.error(None, ErrorCode::Internal, msg).await
            }
        }
    }

    async fn answer_enqueued(&mut self, id: Uuid, outcome: Enqueued) -> Result<(), Exit> {
        let ack = |at: String| Frame::Ack(Ack { id, at: Some(at) });
        match outcome {
            Enqueued::Stored { frame, devices } => {
                let answer = ack(frame.at.clone());
                self.conn.shared.hub.notify(frame, &devices);
                self.conn.feed(&answer).await
            }
            Enqueued::Duplicate { at } | Enqueued::Unneeded { at } => {
                self.conn.feed(&ack(at)).await
            }
            Enqueued::QuotaExceeded => {
                let msg = "the recipient has too many frames waiting; try again later";
                self.conn
                    .error(Some(id), ErrorCode::QuotaExceeded, msg)
                    .await
            }
        }
    }

    /// Messages from the socket: this one and any already buffered, so
    /// their acks go to the queue as one submission and their answers out
    /// in one flush.
    async fn on_message(&mut self, first: Option<Result<Message, WsError>>) -> Result<(), Exit> {
        self.last_seen = Instant::now();
        let mut next = Some(first);
        let mut count = 0;
        while let Some(msg) = next {
            if let Err(exit) = self.on_one_message(msg).await {
                self.submit_acks();
                return Err(exit);
            }
            count += 1;
            next = if count < BATCH && self.pending.len() < MAX_PENDING {
                self.conn.ws.next().now_or_never()
            } else {
                None
            };
        }
        self.submit_acks();
        self.conn.flush().await
    }

    async fn on_one_message(&mut self, msg: Option<Result<Message, WsError>>) -> Result<(), Exit> {
        match msg {
            None | Some(Ok(Message::Close(_))) => Err(Exit::Closed),
            Some(Err(WsError::Capacity(_))) => Err(Exit::TooLarge),
            Some(Err(WsError::Utf8(_))) => Err(Exit::BadUtf8),
            Some(Err(_)) => Err(Exit::Closed),
            Some(Ok(Message::Text(text))) => {
                self.conn.shared.metrics.frame_in();
                #[cfg(test)]
                if text.as_str() == TEST_PANIC_FRAME {
                    panic!("a session bug, injected by a test");
                }
                let parsed =
                    protocol::parse_inbound(text.as_str(), self.conn.shared.config.max_frame_bytes);
                self.on_frame(parsed, text.as_str()).await
            }
            Some(Ok(Message::Binary(bytes))) => {
                let msg = "binary frames are not part of the protocol: send JSON text frames";
                let id = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(protocol::frame_id);
                self.conn.error(id, ErrorCode::BadFrame, msg).await
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => Ok(()),
        }
    }

    /// Sends the acks collected so far to the queue as one removal.
    fn submit_acks(&mut self) {
        if self.acks.is_empty() {
            return;
        }
        let seqs = std::mem::take(&mut self.acks);
        let backend = &self.conn.shared.backend;
        // Handed over now (in order with this session's other
        // submissions), the removal's answer is not waited for: waking the
        // session for it cost as much as a delivery's socket work.
        if let Some(removal) = backend.remove_detached(self.key, self.device, seqs) {
            self.pending.push(removal.map(Done::Removed).boxed());
        }
    }

    async fn on_frame(
        &mut self,
        parsed: Result<Inbound, protocol::ProtocolError>,
        text: &str,
    ) -> Result<(), Exit> {
        let frame = match parsed {
            Ok(frame) => frame,
            Err(e) => {
                let id = protocol::frame_id(text);
                return self.conn.error(id, e.code(), &e.to_string()).await;
            }
        };
        // Acks for frames this session delivered are free: limiting them
        // would only cause redeliveries.
        let free = matches!(&frame, Inbound::Ack(a) if self.delivery.is_in_flight(&a.id));
        if !free && !self.rate.allow(Instant::now()) {
            let id = match &frame {
                Inbound::Message(m) => Some(m.id),
                _ => None,
            };
            let msg = "too many frames per second; slow down and send it again";
            return self.conn.error(id, ErrorCode::RateLimited, msg).await;
        }
        match frame {
            Inbound::Message(m) if m.from != *self.key.as_bytes() => {
                let msg = "'from' must be the key this session authenticated as";
                self.conn
                    .error(Some(m.id), ErrorCode::SpoofedFrom, msg)
                    .await
            }
            Inbound::Message(m) => match served(self.conn.shared, self.key, m.to).await {
                Ok(true) => {
                    self.submit(m.id, m.to, text);
                    Ok(())
                }
                Ok(false) => {
                    let msg = self.conn.shared.gate.refusal(&self.router);
                    self.conn
                        .error(Some(m.id), ErrorCode::RecipientNotServed, &msg)
                        .await
                }
                Err(e) => {
                    tracing::warn!(error = %e, "checking whether a recipient is served failed");
                    let msg = "the router could not store this frame; send it again later";
                    self.conn.error(Some(m.id), ErrorCode::Internal, msg).await
                }
            },
            Inbound::Ack(ack) => {
                // An ack for an id not in flight here settles nothing.
                if let Some(seq) = self.delivery.on_ack(&ack.id) {
                    self.acks.push(seq);
                }
                Ok(())
            }
            Inbound::ListDevices => {
                let list = self.conn.shared.backend.devices(self.key);
                self.pending.push(list.map(Done::Devices).boxed());
                Ok(())
            }
            Inbound::RemoveDevice(device) => {
                // Acks read before it settle first.
                self.submit_acks();
                let removal = self.conn.shared.backend.remove_device(self.key, device);
                let done = removal.map(move |r| Done::DeviceRemoved(device, r));
                self.pending.push(done.boxed());
                Ok(())
            }
            Inbound::Auth(_) => {
                let msg = "this session is already authenticated";
                self.conn.error(None, ErrorCode::BadFrame, msg).await
            }
        }
    }

    /// Stores a message; its ack is sent when the commit answers.
    fn submit(&mut self, id: Uuid, to: [u8; 32], text: &str) {
        // Acks read before this frame reach the queue before it.
        self.submit_acks();
        let frame = NewFrame {
            recipient: to,
            sender: *self.key.as_bytes(),
            sender_device: self.device,
            id,
            text: text.into(),
        };
        let stored = self.conn.shared.backend.enqueue(vec![frame]);
        let metrics = std::sync::Arc::clone(&self.conn.shared.metrics);
        let started = Instant::now();
        self.pending.push(
            stored
                .map(move |r| {
                    metrics.commit(started.elapsed());
                    Done::Enqueued(id, r)
                })
                .boxed(),
        );
    }

    async fn on_heartbeat(&mut self, period: std::time::Duration) -> Result<(), Exit> {
        if self.last_seen.elapsed() > period * 2 {
            return Err(Exit::Dead);
        }
        if self.shared_queue {
            // Wake-ups and replacements from other routers are hints.
            self.beats_to_recheck = self.beats_to_recheck.saturating_sub(1);
            if self.beats_to_recheck == 0 {
                self.beats_to_recheck = self.recheck_every;
                self.recheck();
            }
        }
        let limit = self.conn.shared.config.write_timeout;
        match tokio::time::timeout(limit, self.conn.ws.send(Message::Ping(Vec::new().into()))).await
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Closed),
            Err(_) => Err(Exit::TooSlow),
        }
    }

    /// Waits for in-flight commits (acking them if the socket still works),
    /// then closes with the reason.
    async fn finish(mut self, exit: Exit) -> Exit {
        let socket_ok = !matches!(exit, Exit::Closed | Exit::TooSlow);
        while let Some(done) = self.pending.next().await {
            if socket_ok {
                // Acks the sender and hands the frame to its recipient.
                let _ = self.answer(done).await;
            } else if let Done::Enqueued(_, Ok(outcomes)) = done {
                for outcome in outcomes {
                    if let Enqueued::Stored { frame, devices } = outcome {
                        self.conn.shared.hub.notify(frame, &devices);
                    }
                }
            }
        }
        let Some((code, reason)) = close_for(&exit) else {
            return exit;
        };
        let _ = self.conn.flush().await;
        self.conn.close(code, reason).await;
        exit
    }
}

/// Whether the router queues frames from `sender` for `recipient`
/// (`--recipients`). Mostly answered from memory; a recipient not seen
/// lately is asked of the queue, in the session's loop, so its frames
/// still reach the queue in the order they came.
async fn served<B: Backend>(
    shared: &super::Shared<B>,
    sender: PublicKey,
    recipient: [u8; 32],
) -> Result<bool, BackendError> {
    match shared.gate.decide(&sender, &recipient) {
        Decision::Allow => Ok(true),
        Decision::Refuse => Ok(false),
        Decision::Ask => {
            // Nobody signs in as bytes that are not a key.
            let known = match PublicKey::from_bytes(&recipient) {
                Ok(key) => shared.backend.knows(key).await?,
                Err(_) => false,
            };
            shared.gate.learn(&recipient, known);
            Ok(known)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every close a session sends is in docs/PROTOCOL.md's table, with
    /// its code and its exact reason.
    #[test]
    fn close_codes_and_reasons_are_documented() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let exits = [
            Exit::Dead,
            Exit::Replaced,
            Exit::Removed,
            Exit::Shutdown,
            Exit::TooSlow,
            Exit::TooLarge,
            Exit::BadUtf8,
            Exit::Unavailable,
        ];
        for exit in exits {
            let (code, reason) = close_for(&exit).unwrap();
            let row = doc
                .lines()
                .find(|l| l.starts_with(&format!("| {} |", u16::from(code))))
                .unwrap_or_else(|| panic!("close code {code} is not in the table"));
            assert!(row.contains(&format!("`{reason}`")), "{exit:?}: {row}");
        }
        assert!(close_for(&Exit::Closed).is_none());
    }

    #[test]
    fn rechecks_are_whole_heartbeats_apart() {
        let s = Duration::from_secs;
        assert_eq!(beats_between(s(300), s(30)), 10);
        assert_eq!(beats_between(s(301), s(30)), 11, "rounded up");
        assert_eq!(beats_between(s(1), s(30)), 1, "at least every beat");
        assert_eq!(beats_between(s(0), s(1)), 1);
        assert_eq!(beats_between(s(86_400), Duration::ZERO), 86_400_000);
    }

    /// The device cap the document states is the router's.
    #[test]
    fn the_device_cap_is_documented() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        let cap = super::super::backend::MAX_DEVICES;
        assert!(doc.contains(&format!("A key has at most **{cap}** devices")));
        assert!(doc.contains(&format!("the router allows ({cap})")));
    }

    /// Every error code is in the document's table.
    #[test]
    fn error_codes_are_documented() {
        let doc = include_str!("../../docs/PROTOCOL.md");
        for code in ErrorCode::ALL {
            let cell = format!("| `{}` |", code.as_str());
            assert!(doc.contains(&cell), "{} is not documented", code.as_str());
        }
    }
}

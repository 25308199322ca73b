//! Fuzz driver, outside CI: feeds generated and mutated frames through
//! everything that reads a peer's frames, counting frames and panics.
//!
//! ```text
//! cargo run --release --example fuzz_frames -- [ROUTER] [SOCKET] [CLIENT] [SEED]
//! ```
//!
//! 1. ROUTER frames (default 1,000,000) through the router's parsing
//!    (`parse_inbound`, `from_slice`, `frame_id`, error codes) and its
//!    session state machine (`Handshake`, `Delivery`, `RateLimit`), in
//!    process, without sockets.
//! 2. SOCKET frames (default 1,000,000) through a real `serve()` on
//!    127.0.0.1 over 8 concurrent authenticated WebSocket sessions: the
//!    real session code path, storing what is valid in a temp-dir queue.
//!    Afterwards a fresh session must still get an ack and its delivery.
//! 3. CLIENT frames (default 1,000,000) through the client's parsing
//!    (`parse_with_limit` as the connection calls it), `protocol::open`,
//!    and `Engine::handle` over a temp-dir profile.
//!
//! Frames: valid ones (messages, receipts, acks, auth, errors), the same
//! with 1 to 4 byte mutations, random JSON, random bytes, and known
//! hostile shapes (issue 8's long multi-byte type, short ciphertexts,
//! upper-case ids, control characters in bodies). Any panic, in this
//! thread or a router task, is counted (a hook) and the run exits 1.
//! docs/BENCHMARKS.md has the figures of a run.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chat_p2p::client::Engine;
use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::{self, Content, Frame, Inbound};
use chat_p2p::router::backend::Queued;
use chat_p2p::router::state::{Delivery, Handshake, RateLimit};
use chat_p2p::router::{self, RouterConfig};
use chat_p2p::store::Store;
use futures_util::{SinkExt as _, StreamExt as _};
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// Panics seen anywhere in the process (set by the hook).
static PANICS: AtomicU64 = AtomicU64::new(0);

const LIMIT: usize = protocol::MAX_FRAME_BYTES;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| {
            a.replace('_', "")
                .parse()
                .expect("counts are whole numbers")
        })
        .collect();
    let arg = |i: usize, default: u64| args.get(i).copied().unwrap_or(default);
    let (router_n, socket_n, client_n) = (arg(0, 1_000_000), arg(1, 1_000_000), arg(2, 1_000_000));
    let seed = arg(3, 8);
    std::panic::set_hook(Box::new(|info| {
        if PANICS.fetch_add(1, Ordering::Relaxed) < 5 {
            eprintln!("PANIC: {info}");
        }
    }));
    println!("fuzz_frames seed {seed}");
    let started = Instant::now();
    let mut total = 0;
    total += phase("router parsing + session state", router_n, || {
        router_in_process(router_n, seed)
    });
    total += phase("router serve() over 8 sockets", socket_n, || {
        router_sockets(socket_n, seed)
    });
    total += phase("client parse + open + Engine::handle", client_n, || {
        client_handling(client_n, seed)
    });
    let panics = PANICS.load(Ordering::Relaxed);
    println!(
        "total: {total} frames in {:.1} s, {panics} panics",
        started.elapsed().as_secs_f64()
    );
    if panics > 0 {
        std::process::exit(1);
    }
}

/// Runs one phase, printing its frame count, time and panics.
fn phase(name: &str, n: u64, run: impl FnOnce() -> String) -> u64 {
    if n == 0 {
        return 0;
    }
    let before = PANICS.load(Ordering::Relaxed);
    let t = Instant::now();
    let detail = run();
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{name}: {n} frames in {secs:.1} s ({:.0}/s), {} panics; {detail}",
        n as f64 / secs,
        PANICS.load(Ordering::Relaxed) - before
    );
    n
}

/// Another handle on the same identity (`Identity` is not `Clone`, so
/// secrets are not copied by accident).
fn copy(id: &Identity) -> Identity {
    Identity::from_secret_bytes(&id.secret_bytes())
}

/// Makes frames: valid, mutated, random and hostile.
struct Gen {
    rng: StdRng,
    /// Valid frames to send as they are or mutated.
    corpus: Vec<Vec<u8>>,
    /// Who valid messages are from (a router session's own key, or peers).
    authors: Vec<Identity>,
    /// Who they are to.
    recipients: Vec<PublicKey>,
}

impl Gen {
    fn new(seed: u64, authors: Vec<Identity>, recipients: Vec<PublicKey>) -> Self {
        let mut gen = Gen {
            rng: StdRng::seed_from_u64(seed),
            corpus: Vec::new(),
            authors,
            recipients,
        };
        for _ in 0..32 {
            let frame = gen.valid();
            gen.corpus.push(frame);
        }
        gen
    }

    /// The next frame's bytes.
    fn next(&mut self) -> Vec<u8> {
        match self.rng.gen_range(0..100) {
            0..=24 => self.pick(),
            25..=29 => self.valid(),
            30..=69 => {
                let mut bytes = self.pick();
                for _ in 0..self.rng.gen_range(1..=4) {
                    self.mutate(&mut bytes);
                }
                bytes
            }
            70..=84 => json(&mut self.rng, 3).to_string().into_bytes(),
            85..=92 => {
                let len = self.rng.gen_range(0..200);
                (0..len).map(|_| self.rng.gen()).collect()
            }
            _ => self.hostile(),
        }
    }

    fn pick(&mut self) -> Vec<u8> {
        let i = self.rng.gen_range(0..self.corpus.len());
        self.corpus[i].clone()
    }

    /// A fresh valid frame of a random kind.
    fn valid(&mut self) -> Vec<u8> {
        let author = &self.authors[self.rng.gen_range(0..self.authors.len())];
        let to = self.recipients[self.rng.gen_range(0..self.recipients.len())];
        let id = Uuid::now_v7();
        let frame = match self.rng.gen_range(0..10) {
            0..=5 => {
                let content = match self.rng.gen_range(0..4) {
                    0 => Content::Delivered { ids: vec![id] },
                    1 => Content::Read { ids: vec![id] },
                    _ => Content::text(body(&mut self.rng)),
                };
                let ts = chat_p2p::clock::now();
                match protocol::seal(author, &to, id, &ts, &content) {
                    Ok(m) => Frame::Message(m),
                    Err(_) => Frame::Synced,
                }
            }
            6 => Frame::Ack(protocol::Ack { id, at: None }),
            7 => Frame::Auth(protocol::sign_challenge(
                author,
                2,
                &[3; 32],
                protocol::AuthFor {
                    device: &id,
                    name: "fuzz",
                    router: "ws://127.0.0.1:8080/ws",
                },
            )),
            8 => Frame::Error(protocol::ErrorFrame {
                id: Some(id),
                code: protocol::ErrorCode::TooLarge,
                message: "too large".into(),
            }),
            _ => Frame::Synced,
        };
        protocol::to_text(&frame).into_bytes()
    }

    fn mutate(&mut self, bytes: &mut Vec<u8>) {
        let len = bytes.len();
        if len == 0 {
            bytes.push(self.rng.gen());
            return;
        }
        let i = self.rng.gen_range(0..len);
        match self.rng.gen_range(0..6) {
            0 => bytes[i] ^= 1 << self.rng.gen_range(0..8),
            1 => bytes[i] = self.rng.gen(),
            2 => bytes.insert(
                i,
                *b"\"{}[]:,\\e\xc3\xa9"
                    .get(self.rng.gen_range(0..11))
                    .unwrap_or(&b'x'),
            ),
            3 => {
                bytes.remove(i);
            }
            4 => bytes.truncate(i),
            _ => {
                let end = (i + self.rng.gen_range(1..32)).min(len);
                let copy = bytes[i..end].to_vec();
                bytes.splice(i..i, copy);
            }
        }
    }

    /// Shapes known to have hurt, or likely to.
    fn hostile(&mut self) -> Vec<u8> {
        let id = Uuid::now_v7();
        let text = match self.rng.gen_range(0..6) {
            0 => format!(
                r#"{{"type":"a{}"}}"#,
                "é".repeat(self.rng.gen_range(20..80))
            ),
            1 => format!(
                r#"{{"type":"ack","id":"{}"}}"#,
                id.to_string().to_uppercase()
            ),
            2 => format!(
                r#"{{"type":"{}"}}"#,
                "\u{202e}😀".repeat(self.rng.gen_range(1..40))
            ),
            3 => {
                let mut bytes = self.pick();
                bytes.extend_from_slice(&[0xff, 0xfe]);
                return bytes;
            }
            4 => format!(
                r#"{{"type":"message","id":"{id}","x":"{}"}}"#,
                "y".repeat(LIMIT)
            ),
            _ => {
                let author = &self.authors[0];
                let Ok(mut m) = protocol::seal(
                    author,
                    &self.recipients[0],
                    id,
                    &chat_p2p::clock::now(),
                    &Content::text("x"),
                ) else {
                    return Vec::new();
                };
                m.payload.ciphertext.truncate(self.rng.gen_range(0..16));
                protocol::to_text(&Frame::Message(m))
            }
        };
        text.into_bytes()
    }
}

/// A body with the characters a hostile peer would send.
fn body(rng: &mut StdRng) -> String {
    const PARTS: &[&str] = &[
        "hi",
        "\u{1b}]0;TITLE\u{7}",
        "\u{1b}[2J",
        "\n[2026-11-26 02:41] bob: ",
        "\r",
        "\u{202e}",
        "\u{200b}",
        "é",
        "👩‍👩‍👧",
        "\u{85}",
        "\0",
        "\\",
        "\"",
    ];
    (0..rng.gen_range(0..8))
        .map(|_| PARTS[rng.gen_range(0..PARTS.len())])
        .collect()
}

/// Random JSON up to `depth` levels, keys often the protocol's.
fn json(rng: &mut StdRng, depth: u32) -> serde_json::Value {
    use serde_json::Value;
    const KEYS: &[&str] = &[
        "type",
        "id",
        "from",
        "to",
        "ts",
        "payload",
        "nonce",
        "ciphertext",
        "sig",
        "at",
        "version",
    ];
    const TYPES: &[&str] = &[
        "message",
        "ack",
        "auth",
        "error",
        "synced",
        "ready",
        "challenge",
        "x",
    ];
    match rng.gen_range(0..if depth == 0 { 6 } else { 9 }) {
        0 => Value::Null,
        1 => Value::from(rng.gen::<bool>()),
        2 => Value::from(rng.gen::<i64>()),
        3 => Value::from(rng.gen::<f64>()),
        4 => Value::from(TYPES[rng.gen_range(0..TYPES.len())]),
        5 => Value::from(Uuid::now_v7().to_string()),
        6 => Value::from(
            (0..rng.gen_range(0..4))
                .map(|_| json(rng, depth - 1))
                .collect::<Vec<_>>(),
        ),
        _ => {
            let mut map = serde_json::Map::new();
            if rng.gen_bool(0.8) {
                map.insert(
                    "type".into(),
                    Value::from(TYPES[rng.gen_range(0..TYPES.len())]),
                );
            }
            for _ in 0..rng.gen_range(0..7) {
                let key = KEYS[rng.gen_range(0..KEYS.len())];
                map.insert(key.into(), json(rng, depth - 1));
            }
            Value::Object(map)
        }
    }
}

/// Phase 1: the router's parsing and state machine, without sockets.
fn router_in_process(n: u64, seed: u64) -> String {
    let me = Identity::generate();
    let peers: Vec<Identity> = (0..4).map(|_| Identity::generate()).collect();
    let mut keys: Vec<PublicKey> = peers.iter().map(Identity::public_key).collect();
    keys.push(me.public_key());
    let mut gen = Gen::new(seed, vec![copy(&me), copy(&peers[0])], keys);
    let handshake = Handshake::new(me.public_key());
    let mut delivery = Delivery::new(256);
    let mut rate = RateLimit::new(100, Instant::now());
    let (mut ok, mut refused, mut seq) = (0u64, 0u64, 0i64);
    for i in 0..n {
        let bytes = gen.next();
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let parsed = match std::str::from_utf8(&bytes) {
                Ok(text) => protocol::parse_inbound(text, LIMIT),
                Err(_) => protocol::from_slice(&bytes, LIMIT).map(|_| {
                    Inbound::Ack(protocol::Ack {
                        id: Uuid::nil(),
                        at: None,
                    })
                }),
            };
            let _ = rate.allow(Instant::now());
            match parsed {
                Err(e) => {
                    let _ = (e.code().as_str(), e.to_string());
                    let _ = protocol::frame_id(&String::from_utf8_lossy(&bytes));
                    false
                }
                // The outcome does not matter, only that it does not panic.
                Ok(Inbound::Auth(a)) => {
                    let _ =
                        handshake.answer(&Frame::Auth(a), &["ws://127.0.0.1:8080/ws".to_owned()]);
                    true
                }
                Ok(Inbound::Ack(a)) => {
                    let _ = delivery.on_ack(&a.id);
                    true
                }
                Ok(Inbound::ListDevices | Inbound::RemoveDevice(_)) => true,
                Ok(Inbound::Message(m)) => {
                    seq += 1;
                    let row = Queued {
                        seq,
                        id: m.id,
                        recipient: m.to,
                        at: String::new(),
                        text: "{}".into(),
                    };
                    let _ = delivery.on_notify(&row);
                    true
                }
            }
        }));
        match outcome {
            Ok(true) => ok += 1,
            Ok(false) => refused += 1,
            Err(_) => {}
        }
        if i % 512 == 0 {
            delivery.on_lagged();
            if let Some((after, limit)) = delivery.fetch_request() {
                let _ = delivery.on_fetched(&[], limit.min(after.unsigned_abs() as usize));
            }
            let _ = delivery.take_synced();
        }
    }
    format!("{ok} parsed, {refused} refused")
}

/// Phase 3: the client's frame handling over a temp-dir profile.
fn client_handling(n: u64, seed: u64) -> String {
    let dir = tempfile::tempdir().expect("temp dir");
    let me = Identity::generate();
    let mut store = Store::create(&dir.path().join("p").join("chat.db")).expect("profile");
    store.set_identity(&me, false).expect("identity");
    let peers: Vec<Identity> = (0..3).map(|_| Identity::generate()).collect();
    let name = chat_p2p::store::ContactName::parse("bob").expect("name");
    store
        .add_contact(&name, &peers[0].public_key())
        .expect("contact");
    let mut engine = Engine::new(store, copy(&me));
    let mut gen = Gen::new(
        seed + 1,
        peers.iter().map(copy).collect(),
        vec![me.public_key(), peers[1].public_key()],
    );
    let (mut parsed, mut opened, mut handled, mut errors) = (0u64, 0u64, 0u64, 0u64);
    let mut batch = Vec::new();
    for _ in 0..n {
        let bytes = gen.next();
        let _ = catch_unwind(AssertUnwindSafe(|| {
            let Ok(text) = std::str::from_utf8(&bytes) else {
                return;
            };
            let Ok(frame) = protocol::parse_with_limit(text, 2 * LIMIT) else {
                return;
            };
            parsed += 1;
            if let Frame::Message(m) = &frame {
                opened += u64::from(protocol::open(&me, m).is_ok());
            }
            batch.push(frame);
        }));
        if batch.len() >= 64 {
            let frames = std::mem::take(&mut batch);
            handled += frames.len() as u64;
            match catch_unwind(AssertUnwindSafe(|| engine.handle(frames))) {
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(_)) => errors += 1,
            }
        }
    }
    format!("{parsed} parsed, {opened} opened, {handled} handled by the engine ({errors} batches refused with an error)")
}

/// Phase 2: a real router, several sessions, sockets.
fn router_sockets(n: u64, seed: u64) -> String {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut config = RouterConfig::new(dir.path().join("router"));
        config.max_frames_per_sec = 1_000_000;
        config.max_queued_per_recipient = 1_000_000;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(router::serve(listener, config, async {
            let _ = stopped.await;
        }));
        const CONNS: u64 = 8;
        let ids: Vec<Identity> = (0..CONNS).map(|_| Identity::generate()).collect();
        let keys: Vec<PublicKey> = ids.iter().map(Identity::public_key).collect();
        let replies = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for (i, id) in ids.into_iter().enumerate() {
            let share = n / CONNS + u64::from((i as u64) < n % CONNS);
            let gen = Gen::new(seed + 10 + i as u64, vec![copy(&id)], keys.clone());
            tasks.push(tokio::spawn(drive(
                addr,
                id,
                gen,
                share,
                Arc::clone(&replies),
            )));
        }
        let (mut closed_1007, mut unexpected) = (0, 0);
        for t in tasks {
            let ends = t.await.unwrap_or(Ends {
                invalid_utf8: 0,
                unexpected: 1,
            });
            closed_1007 += ends.invalid_utf8;
            unexpected += ends.unexpected;
        }
        let alive = still_serves(addr).await;
        let _ = stop.send(());
        let clean = matches!(server.await, Ok(Ok(())));
        format!(
            "{} replies, every frame handled (barrier acked) except in {unexpected} \
             sessions, {closed_1007} sessions closed with 1007 and reopened, \
             afterwards a new session is served: {alive}, clean shutdown: {clean}",
            replies.load(Ordering::Relaxed)
        )
    })
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens an authenticated session as `id`.
async fn connect(addr: std::net::SocketAddr, id: &Identity) -> Option<Ws> {
    let key = id.public_key().to_base64();
    let key = percent_encoding::utf8_percent_encode(&key, percent_encoding::NON_ALPHANUMERIC);
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?pub={key}"))
        .await
        .ok()?;
    let Some(Ok(Message::Text(t))) = ws.next().await else {
        return None;
    };
    let Ok(Frame::Challenge(c)) = protocol::parse(t.as_str()) else {
        return None;
    };
    let router = protocol::router_name(&format!("ws://{addr}/ws")).ok()?;
    let who = protocol::AuthFor {
        device: &uuid::Uuid::new_v4(),
        name: "fuzz",
        router: &router,
    };
    let auth = Frame::Auth(protocol::sign_challenge(
        id,
        protocol::VERSION,
        &c.nonce,
        who,
    ));
    ws.send(Message::text(protocol::to_text(&auth)))
        .await
        .ok()?;
    match ws.next().await {
        Some(Ok(Message::Text(t))) if t.as_str().contains("\"ready\"") => Some(ws),
        _ => None,
    }
}

/// How the sessions of one connection ended.
#[derive(Default)]
struct Ends {
    /// Closed by the router with 1007 after an invalid UTF-8 text message.
    invalid_utf8: u64,
    /// Ended otherwise before the barrier's ack: should never happen.
    unexpected: u64,
}

/// Sends `count` frames as `id`, reading replies as they come. Each
/// session ends either with a barrier (a valid message whose ack proves
/// the router has handled every frame before it) or with an invalid UTF-8
/// text message, after which the router closes with 1007 and a new
/// session goes on.
async fn drive(
    addr: std::net::SocketAddr,
    id: Identity,
    mut gen: Gen,
    count: u64,
    replies: Arc<AtomicU64>,
) -> Ends {
    let mut ends = Ends::default();
    let mut sent = 0;
    while sent < count {
        let Some(ws) = connect(addr, &id).await else {
            ends.unexpected += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let (mut tx, mut rx) = ws.split();
        let barrier = Uuid::now_v7();
        let needle = format!(r#""id":"{barrier}""#);
        let counter = Arc::clone(&replies);
        let reader = tokio::spawn(async move {
            while let Some(Ok(msg)) = rx.next().await {
                if let Message::Text(t) = msg {
                    counter.fetch_add(1, Ordering::Relaxed);
                    if t.as_str().contains(&needle) && t.as_str().contains(r#""type":"ack""#) {
                        return true;
                    }
                }
            }
            false
        });
        let mut closing = false;
        while sent < count && !closing {
            let msg = match String::from_utf8(gen.next()) {
                Ok(text) => Message::text(text),
                // Now and then as a text message, which ends the session
                // with 1007; else as binary, which the router refuses.
                Err(e) if gen.rng.gen_bool(0.05) => {
                    closing = true;
                    let data = OpCode::Data(Data::Text);
                    Message::Frame(WsFrame::message(e.into_bytes(), data, true))
                }
                Err(e) => Message::Binary(e.into_bytes().into()),
            };
            sent += 1;
            if tx.send(msg).await.is_err() {
                break;
            }
        }
        if !closing {
            let content = Content::text("barrier");
            let ts = chat_p2p::clock::now();
            if let Ok(m) = protocol::seal(&id, &id.public_key(), barrier, &ts, &content) {
                let text = protocol::to_text(&Frame::Message(m));
                let _ = tx.send(Message::text(text)).await;
            }
        }
        let saw_barrier = tokio::time::timeout(Duration::from_secs(60), reader)
            .await
            .is_ok_and(|r| r.unwrap_or(false));
        match (saw_barrier, closing) {
            (true, false) => {}
            (false, true) => ends.invalid_utf8 += 1,
            _ => ends.unexpected += 1,
        }
        let _ = tx.close().await;
    }
    ends
}

/// After the storm: does a fresh session get its ack and its delivery?
async fn still_serves(addr: std::net::SocketAddr) -> bool {
    let id = Identity::generate();
    let Some(mut ws) = connect(addr, &id).await else {
        return false;
    };
    let content = Content::text("after the fuzz");
    let Ok(m) = protocol::seal(
        &id,
        &id.public_key(),
        Uuid::now_v7(),
        &chat_p2p::clock::now(),
        &content,
    ) else {
        return false;
    };
    if ws
        .send(Message::text(protocol::to_text(&Frame::Message(m.clone()))))
        .await
        .is_err()
    {
        return false;
    }
    let (mut acked, mut delivered) = (false, false);
    let wait = async {
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            match protocol::parse(t.as_str()) {
                Ok(Frame::Ack(a)) if a.id == m.id => acked = true,
                Ok(Frame::Message(got)) if got.id == m.id => delivered = true,
                _ => {}
            }
            if acked && delivered {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), wait).await;
    acked && delivered
}

//! Property tests over everything a peer controls on the wire: frame
//! parsing (as a client and as a router parses) and the router's session
//! state machine. Arbitrary strings, arbitrary JSON values and byte
//! mutations of valid frames must never panic, and every refusal must be a
//! well-formed error. The case counts are moderate so CI stays fast; the
//! long run is `cargo run --release --example fuzz_frames` (see
//! docs/BENCHMARKS.md).

use std::time::{Duration, Instant};

use chat_p2p::identity::Identity;
use chat_p2p::protocol::{self, ErrorCode, Frame, ProtocolError};
use chat_p2p::router::backend::Queued;
use chat_p2p::router::state::{Delivery, Handshake, RateLimit};
use proptest::prelude::*;
use uuid::Uuid;

const LIMIT: usize = 4096;

/// Checks one refusal is well formed: a code a router may send for a
/// frame, a message that says something, an echoed type of at most 64
/// bytes.
fn well_formed(e: &ProtocolError) {
    assert!(
        matches!(
            e.code(),
            ErrorCode::BadFrame | ErrorCode::UnknownType | ErrorCode::TooLarge
        ),
        "{e:?}"
    );
    assert!(!e.to_string().is_empty());
    if let ProtocolError::UnknownType(kind) = e {
        assert!(kind.len() <= 64, "echoed type of {} bytes", kind.len());
    }
}

/// Every parser on `bytes`: none may panic, each answer is well formed,
/// and a frame that parses survives a round trip.
fn check_all(bytes: &[u8]) {
    let _ = protocol::frame_id(&String::from_utf8_lossy(bytes));
    match protocol::from_slice(bytes, LIMIT) {
        Ok(frame) => {
            let text = protocol::to_text(&frame);
            assert_eq!(protocol::parse(&text).as_ref(), Ok(&frame), "{text}");
        }
        Err(e) => well_formed(&e),
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        if let Err(e) = protocol::parse_inbound(text, LIMIT) {
            well_formed(&e);
        }
        if let Err(e) = protocol::parse_with_limit(text, LIMIT) {
            well_formed(&e);
        }
    }
}

/// Valid frames of every kind a peer sends, as text.
fn valid_frames() -> Vec<String> {
    let alice = Identity::generate();
    let bob = Identity::generate().public_key();
    let message = protocol::seal(
        &alice,
        &bob,
        Uuid::now_v7(),
        "2026-11-25T20:00:00.000Z",
        &protocol::Content::text("hello, bob"),
    )
    .unwrap();
    let frames = [
        Frame::Message(message),
        Frame::Auth(protocol::sign_challenge(
            &alice,
            2,
            &[7; 32],
            protocol::AuthFor {
                device: &Uuid::nil(),
                name: "test",
                router: "ws://127.0.0.1:8080/ws",
            },
        )),
        Frame::Ack(protocol::Ack {
            id: Uuid::now_v7(),
            at: Some("2026-11-25T20:00:00.000Z".into()),
        }),
        Frame::Synced,
    ];
    frames.iter().map(protocol::to_text).collect()
}

/// Arbitrary JSON, with a `type` that is usually one the protocol knows.
fn json() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        ".{0,40}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(Uuid::now_v7().to_string())),
        Just(serde_json::Value::from("AAAA")),
    ];
    let tree = leaf.prop_recursive(3, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("id".to_owned()),
                    Just("ts".to_owned()),
                    Just("payload".to_owned()),
                    ".{0,8}"
                ],
                inner,
                0..6
            )
            .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    let kind = prop_oneof![
        Just("message".to_owned()),
        Just("ack".to_owned()),
        Just("auth".to_owned()),
        Just("error".to_owned()),
        Just("synced".to_owned()),
        ".{0,80}",
    ];
    (kind, tree).prop_map(|(kind, tree)| match tree {
        serde_json::Value::Object(mut m) => {
            m.insert("type".into(), kind.into());
            serde_json::Value::Object(m)
        }
        other => other,
    })
}

/// One change to a frame's bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
    Duplicate(usize, usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
        (any::<usize>(), 0usize..64).prop_map(|(i, n)| Mutation::Duplicate(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match *m {
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes[i] ^= b;
        }
        Mutation::Insert(i, b) => bytes.insert(at(i, bytes.len() + 1), b),
        Mutation::Remove(i) if !bytes.is_empty() => {
            bytes.remove(at(i, bytes.len()));
        }
        Mutation::Truncate(i) => bytes.truncate(at(i, bytes.len() + 1)),
        Mutation::Duplicate(i, n) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            let end = (i + n).min(bytes.len());
            let copy = bytes[i..end].to_vec();
            bytes.splice(i..i, copy);
        }
        _ => {}
    }
}

/// What the property test expects a session's delivery to hold.
#[derive(Debug, Default)]
struct Model {
    /// (seq, id) in flight, in the order sent.
    flight: Vec<(i64, u8)>,
    /// The highest seq sent.
    sent_max: i64,
}

impl Model {
    fn send(&mut self, seq: i64, id: u8) -> Result<(), TestCaseError> {
        let id = id % 16;
        prop_assert!(
            !self.flight.contains(&(seq, id)),
            "sent again while in flight: {}",
            seq
        );
        self.flight.push((seq, id));
        self.sent_max = self.sent_max.max(seq);
        Ok(())
    }
}

/// One event in a session's delivery.
#[derive(Debug, Clone)]
enum Event {
    Notify(i64, u8),
    Fetched(Vec<(i64, u8)>, usize),
    Ack(u8),
    Lagged,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0i64..200, any::<u8>()).prop_map(|(s, id)| Event::Notify(s, id)),
        (
            prop::collection::vec((0i64..200, any::<u8>()), 0..8),
            0usize..10
        )
            .prop_map(|(rows, limit)| Event::Fetched(rows, limit)),
        any::<u8>().prop_map(Event::Ack),
        Just(Event::Lagged),
    ]
}

/// A small id space, so that acks hit ids in flight and ids repeat (two
/// senders may use one id).
fn small_id(n: u8) -> Uuid {
    Uuid::from_u128(u128::from(n % 16))
}

fn row(seq: i64, id: u8) -> Queued {
    Queued {
        seq,
        id: small_id(id),
        recipient: [1; 32],
        at: String::new(),
        text: "{}".into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        check_all(text.as_bytes());
    }

    /// Addresses come from other people (pasted, scanned): anything is
    /// parsed or refused, never a panic, and whatever is accepted prints
    /// back to text that parses to the same address with nothing a shell
    /// or a terminal would act on.
    #[test]
    fn addresses_parse_or_are_refused_and_round_trip(
        prefix in prop::sample::select(vec!["", "chat-p2p:", "CHAT-P2P:", "chat-p2p:x"]),
        router in "(ws|wss|http|WS)://[a-zA-Z0-9.:@_\\-]{0,30}(/[a-z/]{0,8})?([?#][a-z=&]{0,5})?",
        noise in ".{0,40}",
        with_router in any::<bool>(),
    ) {
        use chat_p2p::address::Address;
        let key = Identity::generate().public_key().to_base64();
        let text = if with_router { format!("{prefix}{key}@{router}") } else { format!("{prefix}{key}") };
        for candidate in [text.clone(), noise.clone(), format!("{text}{noise}")] {
            if let Ok(address) = Address::parse(&candidate) {
                let shown = address.to_string();
                prop_assert!(shown.chars().all(|c| c.is_ascii_graphic()), "{shown:?}");
                prop_assert!(!shown.contains(['?', '&', '#', '\'', '"', '`', '$', ';']), "{shown:?}");
                prop_assert_eq!(Address::parse(&shown), Ok(address));
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        check_all(&bytes);
    }

    #[test]
    fn arbitrary_json_never_panics(value in json()) {
        check_all(value.to_string().as_bytes());
    }

    #[test]
    fn mutated_valid_frames_never_panic(
        which in 0usize..4,
        mutations in prop::collection::vec(mutation(), 1..6),
    ) {
        let frames = valid_frames();
        let mut bytes = frames[which % frames.len()].clone().into_bytes();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        check_all(&bytes);
        // And as the handshake reads a first frame.
        if let Ok(frame) = protocol::from_slice(&bytes, LIMIT) {
            let hs = Handshake::new(Identity::generate().public_key());
            let names = ["ws://127.0.0.1:8080/ws".to_owned()];
            if let Err((code, msg)) = hs.answer(&frame, &names) {
                prop_assert!(!msg.is_empty());
                prop_assert!(code != ErrorCode::Unknown);
            }
        }
    }

    /// The delivery window under any order of wake-ups, fetches and acks:
    /// never more than `window` frames in flight, never a frame sent again
    /// while it is in flight, a fetch never starts past what was sent, acks
    /// settle the earliest frame sent under their id, and a wake-up for a
    /// frame below the cursor that was never sent (two senders' commits
    /// handed over in the other order, or another router's late pub/sub)
    /// makes the next fetch reach back for it instead of leaving it behind.
    #[test]
    fn delivery_keeps_its_window_and_misses_no_late_frame(
        window in 1usize..8,
        events in prop::collection::vec(event(), 0..60),
    ) {
        let mut d = Delivery::new(window);
        let mut m = Model::default();
        for e in events {
            match e {
                Event::Notify(seq, id) => {
                    let room = window - m.flight.len();
                    let was_in_flight = m.flight.contains(&(seq, id % 16));
                    if d.on_notify(&row(seq, id)) {
                        m.send(seq, id)?;
                    } else if seq >= 1 && seq <= m.sent_max && !was_in_flight && room > 0 {
                        // Late: the next fetch must reach back for it
                        // (queues number frames from 1).
                        let reach = d.fetch_request().map(|(after, _)| after);
                        prop_assert!(
                            reach.is_some_and(|after| after < seq),
                            "late frame {seq} left behind (next fetch {reach:?})"
                        );
                    }
                }
                Event::Fetched(mut rows, limit) => {
                    rows.sort_by_key(|r| r.0);
                    let rows: Vec<_> = rows.into_iter().map(|(s, id)| row(s, id)).collect();
                    for r in d.on_fetched(&rows, limit) {
                        m.send(r.seq, r.id.as_u128() as u8)?;
                    }
                }
                Event::Ack(id) => {
                    let id = id % 16;
                    // Settles the earliest seq sent under the id.
                    let earliest = m.flight.iter().filter(|f| f.1 == id).map(|f| f.0).min();
                    prop_assert_eq!(d.on_ack(&small_id(id)), earliest);
                    m.flight.retain(|&f| Some(f) != earliest.map(|seq| (seq, id)));
                }
                Event::Lagged => d.on_lagged(),
            }
            prop_assert_eq!(d.in_flight(), m.flight.len());
            prop_assert!(d.in_flight() <= window, "window overrun");
            if let Some((after, room)) = d.fetch_request() {
                prop_assert!(after <= m.sent_max, "a fetch past what was sent");
                prop_assert!(room >= 1 && room <= window);
            }
        }
    }

    #[test]
    fn rate_limit_never_exceeds_its_burst(rate in 1u32..50, steps in prop::collection::vec(0u64..50, 1..100)) {
        let t0 = Instant::now();
        let mut r = RateLimit::new(rate, t0);
        let mut now = t0;
        let mut allowed = 0u32;
        for ms in steps {
            now += Duration::from_millis(ms);
            if r.allow(now) {
                allowed += 1;
            }
        }
        let elapsed = now.duration_since(t0).as_secs_f64();
        prop_assert!(f64::from(allowed) <= f64::from(rate) * (1.0 + elapsed) + 1.0);
    }
}

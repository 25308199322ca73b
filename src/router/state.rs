//! A session's protocol state as plain structs, testable without sockets:
//! the authentication handshake, the delivery window with its resume
//! cursor, and the per-connection rate limit.

use std::collections::HashMap;
use std::time::Instant;

use uuid::Uuid;

use super::backend::Queued;
use crate::identity::PublicKey;
use crate::protocol::{self, Challenge, ErrorCode, Frame, CHALLENGE_LEN};

/// The router's half of the authentication handshake.
#[derive(Debug)]
pub struct Handshake {
    key: PublicKey,
    nonce: [u8; CHALLENGE_LEN],
}

impl Handshake {
    /// A handshake for a client claiming `key`, with a fresh nonce.
    pub fn new(key: PublicKey) -> Self {
        let mut nonce = [0u8; CHALLENGE_LEN];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut nonce);
        Self { key, nonce }
    }

    /// The challenge to send first.
    pub fn challenge(&self) -> Challenge {
        Challenge {
            versions: protocol::SUPPORTED_VERSIONS.to_vec(),
            nonce: self.nonce,
        }
    }

    /// Checks the client's first frame against the router's own `names`
    /// (canonical, see [`protocol::router_name`]): who signed in, or why
    /// the session must be closed.
    pub fn answer(&self, frame: &Frame, names: &[String]) -> Result<SignedIn, (ErrorCode, String)> {
        let Frame::Auth(auth) = frame else {
            return Err((
                ErrorCode::NotAuthenticated,
                "the first frame must be 'auth' answering the challenge".to_owned(),
            ));
        };
        if !protocol::SUPPORTED_VERSIONS.contains(&auth.version) {
            return Err((
                ErrorCode::UnsupportedVersion,
                "this router does not speak that protocol version".to_owned(),
            ));
        }
        if !protocol::verify_auth(&self.key, &self.nonce, auth) {
            return Err((
                ErrorCode::BadSignature,
                "the auth signature does not verify for this key".to_owned(),
            ));
        }
        if !names.contains(&auth.router) {
            return Err((ErrorCode::WrongRouter, wrong_router(&auth.router, names)));
        }
        Ok(SignedIn {
            version: auth.version,
            device: auth.device,
            name: auth.name.clone(),
            router: auth.router.clone(),
        })
    }
}

/// Why an `auth` signed for `signed` is refused, naming the addresses this
/// router answers to: a client that dialed the router by another name (or
/// through a relaying router) learns what to dial.
fn wrong_router(signed: &str, names: &[String]) -> String {
    // The client's own string, echoed: bounded by MAX_ROUTER_NAME_BYTES.
    format!(
        "this auth was signed for {signed}, which is not this router: it answers to {} \
         (a router relaying another's challenge is refused this way; if you dialed this \
         router by another name, use one of these, or ask its operator to add yours with \
         --public-url)",
        names.join(", ")
    )
}

/// A session that passed the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// The negotiated protocol version.
    pub version: u32,
    /// Its device ([`protocol::CONTROL_DEVICE`] for a control session).
    pub device: Uuid,
    /// The device's name.
    pub name: String,
    /// The router address the client signed for (one of the router's
    /// names): how the router names itself to this client.
    pub router: String,
}

impl SignedIn {
    /// Whether this is a control session (receives nothing, replaces
    /// nothing, is no device).
    pub fn is_control(&self) -> bool {
        self.device == protocol::CONTROL_DEVICE
    }
}
/// Most rows one fetch reads into memory for a session, whatever its
/// window: what a draining session holds at once stays what it was with a
/// window of this size.
pub const FETCH_PAGE: usize = 1024;

/// Which frames a session sent its client and may send next.
///
/// At most `window` frames are unacknowledged at once; beyond that, frames
/// wait in the queue (not in memory) until acks make room. `cursor` is the
/// highest `seq` sent, so a fetch resumes after it.
///
/// Ids are unique per sender only, so two frames in flight may share an id
/// (from different senders): each id maps to the `seq`s sent under it, and
/// an ack settles the earliest.
///
/// Wake-ups can arrive out of `seq` order: two senders' commits are handed
/// over by their own sessions, on whichever worker thread runs first, and
/// with a queue several routers share they also come from the other
/// routers' pub/sub, or not at all. A frame below the cursor that was never
/// sent would then wait for the next session. So a session rewinds: a
/// notified frame at or below the cursor that is not in flight, and every
/// re-check ([`Delivery::on_recheck`]), make the next fetch start further
/// back and send what it finds that is not in flight (a frame acked a
/// moment ago may be sent again: delivery is at least once).
#[derive(Debug)]
pub struct Delivery {
    cursor: i64,
    in_flight: HashMap<Uuid, Vec<i64>>,
    /// The number of `seq`s in `in_flight`.
    unacked: usize,
    window: usize,
    need_fetch: bool,
    /// Whether the client was told its backlog is delivered.
    synced_sent: bool,
    /// False for a control session, which is sent no frames.
    receives: bool,
    /// Where the next fetch starts instead of the cursor, when frames
    /// below the cursor may have been missed.
    rewind: Option<i64>,
}

impl Delivery {
    /// A control session's: nothing is ever fetched or announced.
    pub fn none() -> Self {
        Self {
            need_fetch: false,
            synced_sent: true,
            receives: false,
            ..Self::new(1)
        }
    }

    /// A fresh session: whatever is queued must be fetched first.
    pub fn new(window: usize) -> Self {
        Self {
            cursor: 0,
            in_flight: HashMap::new(),
            unacked: 0,
            window: window.max(1),
            need_fetch: true,
            synced_sent: false,
            receives: true,
            rewind: None,
        }
    }

    /// A frame committed while the session is live: send it now?
    pub fn on_notify(&mut self, frame: &Queued) -> bool {
        if !self.receives {
            return false;
        }
        if frame.seq <= self.cursor {
            if !self.is_sent(frame) {
                // Woken out of order: the fetch after the cursor would
                // never find it.
                self.rewind_to(frame.seq - 1);
            }
            return false;
        }
        if self.need_fetch || self.room() == 0 {
            // Fetch it later, in order, with what came before it.
            self.need_fetch = true;
            return false;
        }
        self.mark_sent(frame);
        true
    }

    /// A frame could not be handed over live (the hub's channel was full).
    pub fn on_lagged(&mut self) {
        self.need_fetch = self.receives;
    }

    /// Wake-ups may have been lost (a heartbeat or a reconnection of a
    /// shared queue): the next fetch looks at everything waiting.
    pub fn on_recheck(&mut self) {
        self.rewind_to(0);
    }

    /// The `(after, limit)` to fetch next, if a fetch is due and there is
    /// room. A rewound fetch asks for a whole window, since what is in
    /// flight comes back with it. No fetch reads more than [`FETCH_PAGE`]
    /// rows: a full page fetches again, while there is room.
    pub fn fetch_request(&self) -> Option<(i64, usize)> {
        if !self.need_fetch || self.room() == 0 {
            return None;
        }
        Some(match self.rewind {
            Some(after) => (after, self.window.min(FETCH_PAGE)),
            None => (self.cursor, self.room().min(FETCH_PAGE)),
        })
    }

    /// A fetch of `limit` rows returned `rows`: which to send.
    pub fn on_fetched<'a>(&mut self, rows: &'a [Queued], limit: usize) -> Vec<&'a Queued> {
        let rewound = self.rewind.take().is_some();
        let mut send = Vec::with_capacity(rows.len());
        let mut first_skipped = None;
        for row in rows {
            let unsent = row.seq > self.cursor || (rewound && !self.is_sent(row));
            if !unsent {
                continue;
            }
            if self.room() == 0 {
                first_skipped = first_skipped.or(Some(row.seq));
                continue;
            }
            self.mark_sent(row);
            send.push(row);
        }
        // A short page means the queue is drained up to now; later commits
        // arrive through on_notify.
        self.need_fetch = rows.len() >= limit || first_skipped.is_some();
        // What a rewound page did not cover below the cursor is fetched
        // from where it stopped.
        let resume = match (first_skipped, rows.last()) {
            (Some(seq), _) => Some(seq - 1),
            (None, Some(last)) if rewound && self.need_fetch => Some(last.seq),
            _ => None,
        };
        self.rewind = resume.filter(|after| *after < self.cursor);
        send
    }

    /// True once per session, after the first fetch that found the queue
    /// drained: the moment to send `synced`.
    pub fn take_synced(&mut self) -> bool {
        if self.need_fetch || self.synced_sent {
            return false;
        }
        self.synced_sent = true;
        true
    }

    /// The client acknowledged `id`: the `seq` of the frame it settles
    /// (the earliest sent under that id), to remove from the queue. `None`
    /// for an id not in flight in this session, which the router ignores.
    pub fn on_ack(&mut self, id: &Uuid) -> Option<i64> {
        let seqs = self.in_flight.get_mut(id)?;
        let seq = seqs.remove(0);
        if seqs.is_empty() {
            self.in_flight.remove(id);
        }
        self.unacked -= 1;
        Some(seq)
    }

    /// Whether `id` was sent in this session and not acknowledged yet.
    pub fn is_in_flight(&self, id: &Uuid) -> bool {
        self.in_flight.contains_key(id)
    }

    /// Frames sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.unacked
    }

    fn room(&self) -> usize {
        self.window.saturating_sub(self.unacked)
    }

    /// Whether this very frame (id and seq) is in flight.
    fn is_sent(&self, frame: &Queued) -> bool {
        self.in_flight
            .get(&frame.id)
            .is_some_and(|seqs| seqs.contains(&frame.seq))
    }

    fn rewind_to(&mut self, after: i64) {
        if !self.receives {
            return;
        }
        self.need_fetch = true;
        let after = after.max(0);
        self.rewind = Some(self.rewind.map_or(after, |r| r.min(after)));
    }

    fn mark_sent(&mut self, frame: &Queued) {
        self.cursor = self.cursor.max(frame.seq);
        // Mostly sent in `seq` order; a rewind may send an earlier one.
        let seqs = self.in_flight.entry(frame.id).or_default();
        let at = seqs.partition_point(|s| *s < frame.seq);
        seqs.insert(at, frame.seq);
        self.unacked += 1;
    }
}

/// A token bucket: `rate` frames per second, bursts up to `rate`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimit {
    /// A full bucket.
    pub fn new(rate: u32, now: Instant) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            tokens: rate,
            last: now,
        }
    }

    /// Takes a token if one is left at `now`.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use std::time::Duration;

    fn q(seq: i64) -> Queued {
        Queued {
            seq,
            id: Uuid::now_v7(),
            recipient: [9; 32],
            at: String::new(),
            text: "{}".into(),
        }
    }

    fn names() -> Vec<String> {
        vec![
            "ws://127.0.0.1:8080/ws".to_owned(),
            "ws://localhost:8080/ws".to_owned(),
        ]
    }

    #[test]
    fn a_large_window_is_filled_a_page_at_a_time() {
        let mut d = Delivery::new(4 * FETCH_PAGE);
        let page = |from: i64| -> Vec<Queued> { (from..from + FETCH_PAGE as i64).map(q).collect() };
        assert_eq!(d.fetch_request(), Some((0, FETCH_PAGE)));
        let first = page(1);
        assert_eq!(d.on_fetched(&first, FETCH_PAGE).len(), FETCH_PAGE);
        // A full page: there may be more, and there is room for it.
        let last = FETCH_PAGE as i64;
        assert_eq!(d.fetch_request(), Some((last, FETCH_PAGE)));
        for n in 1..4 {
            let rows = page(n * last + 1);
            assert_eq!(d.on_fetched(&rows, FETCH_PAGE).len(), FETCH_PAGE);
        }
        assert_eq!(d.fetch_request(), None, "the window is full");
        // A recheck rewinds a page at a time too, resending nothing.
        d.on_recheck();
        assert!(d.fetch_request().is_none(), "no room until acks");
        d.on_ack(&first[0].id);
        assert_eq!(d.fetch_request(), Some((0, FETCH_PAGE)));
        assert!(d.on_fetched(&first[1..], FETCH_PAGE).is_empty());
    }

    #[test]
    fn handshake_accepts_only_the_keys_owner() {
        let alice = Identity::generate();
        let hs = Handshake::new(alice.public_key());
        let nonce = hs.challenge().nonce;
        let device = Uuid::new_v4();
        let who = protocol::AuthFor {
            device: &device,
            name: "test",
            router: "ws://127.0.0.1:8080/ws",
        };
        let good = Frame::Auth(protocol::sign_challenge(&alice, 2, &nonce, who));
        let signed_in = hs.answer(&good, &names()).unwrap();
        assert_eq!((signed_in.version, signed_in.device), (2, device));
        assert!(!signed_in.is_control());
        let mallory = Identity::generate();
        let bad = Frame::Auth(protocol::sign_challenge(&mallory, 2, &nonce, who));
        assert_eq!(
            hs.answer(&bad, &names()).unwrap_err().0,
            ErrorCode::BadSignature
        );
        let stale = Frame::Auth(protocol::sign_challenge(&alice, 2, &[0; 32], who));
        assert_eq!(
            hs.answer(&stale, &names()).unwrap_err().0,
            ErrorCode::BadSignature
        );
        let v1 = Frame::Auth(protocol::sign_challenge(&alice, 1, &nonce, who));
        assert_eq!(
            hs.answer(&v1, &names()).unwrap_err().0,
            ErrorCode::UnsupportedVersion
        );
        let ack = Frame::Ack(protocol::Ack {
            id: Uuid::now_v7(),
            at: None,
        });
        assert_eq!(
            hs.answer(&ack, &names()).unwrap_err().0,
            ErrorCode::NotAuthenticated
        );
    }

    #[test]
    fn handshake_refuses_an_auth_signed_for_another_router() {
        let alice = Identity::generate();
        let hs = Handshake::new(alice.public_key());
        let nonce = hs.challenge().nonce;
        let who = protocol::AuthFor {
            device: &protocol::CONTROL_DEVICE,
            name: "",
            router: "ws://evil.example:8080/ws",
        };
        let relayed = Frame::Auth(protocol::sign_challenge(&alice, 2, &nonce, who));
        let (code, message) = hs.answer(&relayed, &names()).unwrap_err();
        assert_eq!(code, ErrorCode::WrongRouter);
        assert!(message.contains("ws://evil.example:8080/ws"), "{message}");
        assert!(message.contains("ws://localhost:8080/ws"), "{message}");
        // Signed for one of its names: accepted, as a control session.
        let who = protocol::AuthFor {
            router: "ws://localhost:8080/ws",
            ..who
        };
        let good = Frame::Auth(protocol::sign_challenge(&alice, 2, &nonce, who));
        assert!(hs.answer(&good, &names()).unwrap().is_control());
    }

    #[test]
    fn a_control_session_fetches_nothing_and_is_never_synced() {
        let mut d = Delivery::none();
        assert_eq!(d.fetch_request(), None);
        assert!(!d.take_synced());
        d.on_lagged();
        assert_eq!(d.fetch_request(), None, "a lag flag cannot start fetching");
    }

    #[test]
    fn backlog_first_then_live() {
        let mut d = Delivery::new(10);
        let (a, b, c) = (q(1), q(2), q(3));
        // Live frames before the backlog is fetched wait for the fetch.
        assert!(!d.on_notify(&b));
        assert_eq!(d.fetch_request(), Some((0, 10)));
        let rows = [a.clone(), b.clone()];
        assert_eq!(d.on_fetched(&rows, 10).len(), 2);
        assert_eq!(d.fetch_request(), None);
        // Already sent through the fetch: skipped; newer: sent.
        assert!(!d.on_notify(&b));
        assert!(d.on_notify(&c));
        assert_eq!(d.in_flight(), 3);
    }

    #[test]
    fn synced_is_announced_once_when_the_backlog_is_drained() {
        let mut d = Delivery::new(2);
        assert!(!d.take_synced(), "nothing fetched yet");
        let page = [q(1), q(2)];
        d.on_fetched(&page, 2);
        assert!(!d.take_synced(), "a full page: there may be more");
        d.on_ack(&page[0].id);
        d.on_ack(&page[1].id);
        d.on_fetched(&[q(3)], 2);
        assert!(d.take_synced(), "a short page: drained");
        assert!(!d.take_synced(), "only once per session");
        d.on_lagged();
        d.on_fetched(&[], 2);
        assert!(!d.take_synced());
    }

    #[test]
    fn full_window_parks_frames_in_the_queue() {
        let mut d = Delivery::new(2);
        d.on_fetched(&[], 2);
        assert!(d.on_notify(&q(1)));
        let second = q(2);
        assert!(d.on_notify(&second));
        assert!(!d.on_notify(&q(3)), "window full");
        assert_eq!(d.fetch_request(), None, "no room to fetch into");
        d.on_ack(&second.id);
        assert_eq!(d.fetch_request(), Some((2, 1)));
        let page = [q(3)];
        assert_eq!(d.on_fetched(&page, 1).len(), 1);
        assert!(d.fetch_request().is_none(), "still full");
    }

    #[test]
    fn lag_forces_a_fetch_after_the_cursor() {
        let mut d = Delivery::new(10);
        d.on_fetched(&[], 10);
        assert!(d.on_notify(&q(5)));
        d.on_lagged();
        assert_eq!(d.fetch_request(), Some((5, 9)));
        assert!(!d.on_notify(&q(7)), "in order: through the fetch");
    }

    #[test]
    fn one_id_from_two_senders_needs_two_acks() {
        let mut d = Delivery::new(10);
        d.on_fetched(&[], 10);
        let first = q(1);
        let mut second = q(2);
        second.id = first.id;
        assert!(d.on_notify(&first));
        assert!(d.on_notify(&second));
        assert_eq!(d.in_flight(), 2);
        assert_eq!(d.on_ack(&first.id), Some(1));
        assert!(d.is_in_flight(&first.id));
        assert_eq!(d.on_ack(&first.id), Some(2));
        assert_eq!(d.on_ack(&first.id), None, "an unknown id settles nothing");
        assert_eq!(d.in_flight(), 0);
    }

    #[test]
    fn a_session_rewinds_for_a_wake_up_that_came_late() {
        let mut d = Delivery::new(10);
        d.on_fetched(&[], 10);
        let (nine, ten) = (q(9), q(10));
        // Another router's frame 9 is woken after this router's 10.
        assert!(d.on_notify(&ten));
        assert!(!d.on_notify(&nine));
        assert_eq!(d.fetch_request(), Some((8, 10)));
        let page = [nine.clone(), ten.clone()];
        let sent: Vec<i64> = d.on_fetched(&page, 10).iter().map(|r| r.seq).collect();
        assert_eq!(sent, vec![9], "10 is in flight: not sent twice");
        assert_eq!(d.fetch_request(), None);
        // A repeated wake-up of a frame in flight changes nothing.
        assert!(!d.on_notify(&ten));
        assert_eq!(d.fetch_request(), None);
        assert_eq!(d.on_ack(&nine.id), Some(9));
        assert_eq!(d.on_ack(&ten.id), Some(10));
        // A frame acked already and woken late (its commit's hand-off
        // lost the race with a fetch) costs one fetch, nothing more.
        assert!(!d.on_notify(&nine));
        assert_eq!(d.fetch_request(), Some((8, 10)));
        assert!(d.on_fetched(&[], 10).is_empty());
        assert_eq!(d.fetch_request(), None);
    }

    #[test]
    fn a_recheck_fetches_from_the_start_and_resumes_a_long_gap() {
        let mut d = Delivery::new(3);
        d.on_fetched(&[], 3);
        let five = q(5);
        assert!(d.on_notify(&five));
        // Frames 2..4 were woken nowhere (a lost pub/sub message).
        d.on_recheck();
        assert_eq!(d.fetch_request(), Some((0, 3)));
        let page = [q(2), q(3), q(4)];
        let sent: Vec<i64> = d.on_fetched(&page, 3).iter().map(|r| r.seq).collect();
        assert_eq!(sent, vec![2, 3], "the window is full after two");
        // The one skipped for room is fetched once there is room again.
        assert_eq!(d.fetch_request(), None);
        d.on_ack(&five.id);
        assert_eq!(d.fetch_request(), Some((3, 3)));
        let sent: Vec<i64> = d.on_fetched(&page[2..], 3).iter().map(|r| r.seq).collect();
        assert_eq!(sent, vec![4]);
        assert!(d.take_synced());
        d.on_ack(&page[0].id);
        // Nothing below the cursor left to look at: after it again.
        d.on_lagged();
        assert_eq!(d.fetch_request(), Some((5, 1)));
    }

    #[test]
    fn rate_limit_refills_over_time() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(2, t0);
        assert!(r.allow(t0));
        assert!(r.allow(t0));
        assert!(!r.allow(t0));
        assert!(r.allow(t0 + Duration::from_millis(600)));
    }
}

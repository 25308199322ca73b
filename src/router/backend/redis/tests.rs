//! The Redis queue: the backend contract (through
//! [`crate::backend_contract!`]) and what is its own: crashes of Redis,
//! several routers on one Redis, health, the persistence check, the wire.
//! Every test starts its own `redis-server` ([`LocalRedis`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use super::local::{Fsync, LocalRedis};
use super::*;
use crate::identity::Identity;
use crate::protocol::CONTROL_DEVICE;

/// How long a test waits for something that should happen (a guard
/// against hanging, not a performance assertion).
const PATIENCE: Duration = Duration::from_secs(30);

/// A `redis-server` in a temporary directory; each backend opened on it
/// gets a prefix of its own, so it starts empty.
struct Fresh {
    redis: LocalRedis,
    n: AtomicUsize,
    _dir: tempfile::TempDir,
}

impl Fresh {
    fn new() -> Self {
        Self::with(Fsync::EverySec)
    }

    fn with(fsync: Fsync) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self {
            redis: LocalRedis::start(dir.path(), fsync).unwrap(),
            n: AtomicUsize::new(0),
            _dir: dir,
        }
    }

    fn config(&self, quota: u64) -> RedisConfig {
        let n = self.n.fetch_add(1, Ordering::Relaxed);
        let mut config = RedisConfig::new(self.redis.url(), quota);
        config.prefix = format!("t{n}");
        config
    }

    fn open(&self, quota: u64) -> impl Future<Output = RedisBackend> + Send + 'static {
        let config = self.config(quota);
        async move { RedisBackend::open(config).await.unwrap() }
    }

    /// Two routers sharing one deployment.
    async fn pair(&self) -> (RedisBackend, RedisBackend) {
        let config = self.config(100);
        let a = RedisBackend::open(config.clone()).await.unwrap();
        let b = RedisBackend::open(config).await.unwrap();
        (a, b)
    }
}

mod contract {
    use super::*;

    crate::backend_contract!(async Fresh::new(), |fresh: &Fresh, quota| fresh
        .open(quota));
}

fn key() -> PublicKey {
    Identity::generate().public_key()
}

fn frame(to: &PublicKey, from: &PublicKey, text: &str) -> NewFrame {
    NewFrame {
        recipient: *to.as_bytes(),
        sender: *from.as_bytes(),
        sender_device: CONTROL_DEVICE,
        id: Uuid::now_v7(),
        text: text.into(),
    }
}

fn stored(outcome: &Enqueued) -> Queued {
    match outcome {
        Enqueued::Stored { frame, .. } => frame.clone(),
        other => panic!("not stored: {other:?}"),
    }
}

/// Polls `check` until it holds, or panics after [`PATIENCE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < PATIENCE, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The next event, or a panic after [`PATIENCE`].
async fn next(events: &mut mpsc::UnboundedReceiver<ClusterEvent>) -> ClusterEvent {
    tokio::time::timeout(PATIENCE, events.recv())
        .await
        .expect("no event in time")
        .expect("events closed")
}

/// A plain connection to the test's Redis, to look inside or publish.
async fn raw(redis: &LocalRedis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_an_fsync_always_redis_keeps_every_committed_frame() {
    let fresh = Fresh::with(Fsync::Always);
    let mut redis = {
        // Take the server out of `fresh` to kill and restart it.
        let Fresh { redis, _dir, .. } = fresh;
        (redis, _dir)
    };
    let mut config = RedisConfig::new(redis.0.url(), 10_000);
    config.prefix = "crash".into();
    let db = RedisBackend::open(config).await.unwrap();
    let (alice, bob) = (key(), key());
    let laptop = Uuid::new_v4();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    let batches = (0..20).map(|b| {
        let frames = (0..25)
            .map(|i| frame(&bob, &alice, &format!("{b}/{i}")))
            .collect();
        db.enqueue(frames)
    });
    let outcomes = futures_util::future::join_all(batches).await;
    let mut committed: Vec<i64> = outcomes
        .iter()
        .flat_map(|o| o.as_ref().unwrap().iter().map(|e| stored(e).seq))
        .collect();
    committed.sort();
    assert_eq!(committed.len(), 500);

    redis.0.kill9();
    redis.0.restart().unwrap();
    let start = Instant::now();
    let after = loop {
        // The first commands after the crash may fail while the
        // connection manager reconnects.
        match db.fetch(bob, laptop, 0, 1000).await {
            Ok(rows) => break rows,
            Err(e) => assert!(start.elapsed() < PATIENCE, "Redis never came back: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let seqs: Vec<i64> = after.iter().map(|q| q.seq).collect();
    assert_eq!(seqs, committed, "every acknowledged frame is back");
    // The restarted Redis lost the scripts: the writer loads them again.
    let out = db
        .enqueue(vec![frame(&bob, &alice, "after")])
        .await
        .unwrap();
    assert!(stored(&out[0]).seq > *committed.last().unwrap());
    assert_eq!(db.depth().await.unwrap(), 501);
    db.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_for_a_device_claimed_on_another_router_reaches_it() {
    let fresh = Fresh::new();
    let (a, b) = fresh.pair().await;
    let mut b_events = b.events().unwrap();
    assert!(b.events().is_none(), "taken once");
    let (alice, bob) = (key(), key());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    a.register(bob, laptop, "laptop".into()).await.unwrap();
    a.register(bob, phone, "phone".into()).await.unwrap();
    let claim = b.claim(bob, laptop).await.unwrap();
    assert!(b.holds_claim(bob, laptop, claim).await.unwrap());
    let out = a.enqueue(vec![frame(&bob, &alice, "hello")]).await.unwrap();
    let sent = stored(&out[0]);
    match next(&mut b_events).await {
        ClusterEvent::Frame { frame, mut devices } => {
            assert_eq!(frame, sent);
            devices.sort();
            let mut both = vec![laptop, phone];
            both.sort();
            assert_eq!(devices, both, "every device it waits for");
        }
        other => panic!("expected a frame, got {other:?}"),
    }
    // An ack through the other router settles it.
    assert_eq!(b.remove(bob, laptop, vec![sent.seq]).await.unwrap(), 1);
    assert_eq!(b.remove(bob, phone, vec![sent.seq]).await.unwrap(), 1);
    assert!(a.fetch(bob, phone, 0, 10).await.unwrap().is_empty());
    // The counter is deployment-wide: B's change reaches it shortly after.
    eventually("the depth counter settles", || {
        let depth = a.depth();
        async move { depth.await.unwrap() == 0 }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_claim_on_another_router_replaces_the_older() {
    let fresh = Fresh::new();
    let (a, b) = fresh.pair().await;
    let mut a_events = a.events().unwrap();
    let bob = key();
    let laptop = Uuid::new_v4();
    let first = a.claim(bob, laptop).await.unwrap();
    // Claiming again on the same router tells nobody.
    let first = {
        let again = a.claim(bob, laptop).await.unwrap();
        assert!(again > first);
        again
    };
    let second = b.claim(bob, laptop).await.unwrap();
    assert!(second > first);
    assert_eq!(
        next(&mut a_events).await,
        ClusterEvent::Replaced {
            key: bob,
            device: laptop,
            claim: second
        }
    );
    assert!(!a.holds_claim(bob, laptop, first).await.unwrap());
    assert!(b.holds_claim(bob, laptop, second).await.unwrap());
    a.release(bob, laptop, first).await.unwrap();
    assert!(
        b.holds_claim(bob, laptop, second).await.unwrap(),
        "not A's to release"
    );
    b.release(bob, laptop, second).await.unwrap();
    assert!(!b.holds_claim(bob, laptop, second).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_device_tells_the_router_holding_its_session() {
    let fresh = Fresh::new();
    let (a, b) = fresh.pair().await;
    let mut b_events = b.events().unwrap();
    let bob = key();
    let laptop = Uuid::new_v4();
    a.register(bob, laptop, "laptop".into()).await.unwrap();
    let claim = b.claim(bob, laptop).await.unwrap();
    assert!(a.remove_device(bob, laptop).await.unwrap());
    assert_eq!(
        next(&mut b_events).await,
        ClusterEvent::DeviceRemoved {
            key: bob,
            device: laptop
        }
    );
    assert!(!b.holds_claim(bob, laptop, claim).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_subscription_is_followed_by_a_recheck() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = LocalRedis::start(dir.path(), Fsync::EverySec).unwrap();
    let db = RedisBackend::open(RedisConfig::new(redis.url(), 10))
        .await
        .unwrap();
    let mut events = db.events().unwrap();
    redis.kill9();
    redis.restart().unwrap();
    assert_eq!(next(&mut events).await, ClusterEvent::Recheck);
    // Subscribed again: events flow.
    let other = RedisBackend::open(RedisConfig::new(redis.url(), 10))
        .await
        .unwrap();
    let bob = key();
    let laptop = Uuid::new_v4();
    db.claim(bob, laptop).await.unwrap();
    other.claim(bob, laptop).await.unwrap();
    assert!(matches!(
        next(&mut events).await,
        ClusterEvent::Replaced { .. }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_redis_is_down_enqueue_fails_in_bounded_time_and_health_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = LocalRedis::start(dir.path(), Fsync::EverySec).unwrap();
    let url = redis.url();
    let db = RedisBackend::open(RedisConfig::new(url.clone(), 10))
        .await
        .unwrap();
    let (alice, bob) = (key(), key());
    assert_eq!(db.health(), Ok(()));
    redis.kill9();
    let attempt = db.enqueue(vec![frame(&bob, &alice, "lost?")]);
    let outcome = tokio::time::timeout(OP_TIMEOUT * 3, attempt)
        .await
        .expect("enqueue must not hang while Redis is down");
    assert!(outcome.is_err(), "{outcome:?}");
    eventually("health reports Redis down", || {
        let health = db.health();
        async move { health.is_err() }
    })
    .await;
    let cause = db.health().unwrap_err();
    assert!(cause.starts_with(&format!("redis at {url}: ")), "{cause}");

    redis.restart().unwrap();
    eventually("health recovers", || {
        let health = db.health();
        async move { health.is_ok() }
    })
    .await;
    let out = db.enqueue(vec![frame(&bob, &alice, "back")]).await.unwrap();
    stored(&out[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_without_an_append_only_file_is_refused_unless_allowed() {
    let fresh = Fresh::with(Fsync::Volatile);
    let config = fresh.config(10);
    match RedisBackend::open(config.clone()).await {
        Err(BackendError::RedisSetup(m)) => {
            assert!(
                m.contains("appendonly yes") && m.contains("--redis-allow-volatile"),
                "{m}"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let mut config = config;
    config.allow_volatile = true;
    let db = RedisBackend::open(config).await.unwrap();
    stored(&db.enqueue(vec![frame(&key(), &key(), "x")]).await.unwrap()[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_message_is_dropped_and_the_next_one_arrives() {
    let fresh = Fresh::new();
    let db = fresh.open(10).await;
    let mut events = db.events().unwrap();
    let channel = db.inner.names.channel(db.router_id());
    let mut conn = raw(&fresh.redis).await;
    let bob = key();
    let good = format!(
        r#"{{"t":"removed","k":"{}","d":"{}"}}"#,
        keys::hex(bob.as_bytes()),
        Uuid::nil()
    );
    for payload in [
        "not json",
        r#"{"t":"frames","k":"00"}"#,
        "{}",
        good.as_str(),
    ] {
        let _: i64 = redis::cmd("PUBLISH")
            .arg(&channel)
            .arg(payload)
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    assert_eq!(
        next(&mut events).await,
        ClusterEvent::DeviceRemoved {
            key: bob,
            device: Uuid::nil()
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_keep_deployments_apart() {
    let fresh = Fresh::new();
    let (one, two) = (fresh.open(10).await, fresh.open(10).await);
    let (alice, bob) = (key(), key());
    let laptop = Uuid::new_v4();
    assert_eq!(
        one.register(bob, laptop, "l".into()).await.unwrap(),
        Registered::First
    );
    stored(&one.enqueue(vec![frame(&bob, &alice, "x")]).await.unwrap()[0]);
    assert_eq!(
        two.register(bob, laptop, "l".into()).await.unwrap(),
        Registered::First
    );
    assert!(two.fetch(bob, laptop, 0, 10).await.unwrap().is_empty());
    assert_eq!(two.depth().await.unwrap(), 0);
    assert_eq!(one.depth().await.unwrap(), 1);
    assert_eq!(one.fetch(bob, laptop, 0, 10).await.unwrap().len(), 1);
    let mut conn = raw(&fresh.redis).await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        keys.iter()
            .all(|k| k.starts_with("t0:") || k.starts_with("t1:")),
        "{keys:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_and_large_texts_cross_the_wire_unchanged() {
    let fresh = Fresh::new();
    let (a, b) = fresh.pair().await;
    let mut b_events = b.events().unwrap();
    let (alice, bob) = (key(), key());
    let laptop = Uuid::new_v4();
    a.register(bob, laptop, "laptop".into()).await.unwrap();
    b.claim(bob, laptop).await.unwrap();
    let large = "é\"\\/🎉".repeat(200_000);
    let texts = [
        r#"{"body":"say \"hi\"\\ / </script>"}"#,
        "unicode: ünïcødé 日本語 🎉 \u{2028}\u{200b}",
        "controls: \u{1}\u{7f}\t\r\n end",
        "",
        large.as_str(),
    ];
    let frames = texts.iter().map(|t| frame(&bob, &alice, t)).collect();
    let out = a.enqueue(frames).await.unwrap();
    let mut got = Vec::new();
    while got.len() < texts.len() {
        match next(&mut b_events).await {
            ClusterEvent::Frame { frame, .. } => got.push(frame),
            other => panic!("{other:?}"),
        }
    }
    let sent: Vec<Queued> = out.iter().map(stored).collect();
    assert_eq!(got, sent);
    let fetched = b.fetch(bob, laptop, 0, 10).await.unwrap();
    assert_eq!(fetched, sent);
    for (q, t) in fetched.iter().zip(texts) {
        assert_eq!(&*q.text, t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_file_is_used_and_never_shown() {
    let fresh = Fresh::new();
    assert_eq!(
        fresh
            .redis
            .command("CONFIG SET requirepass s3cret-pw")
            .unwrap(),
        "+OK"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret-pw\n").unwrap();
    let mut config = fresh.config(10);
    match RedisBackend::open(config.clone()).await {
        Err(e) => assert!(!e.to_string().contains("s3cret"), "{e}"),
        Ok(_) => panic!("opened without the password"),
    }
    config.password_file = Some(file);
    let db = RedisBackend::open(config.clone()).await.unwrap();
    stored(&db.enqueue(vec![frame(&key(), &key(), "x")]).await.unwrap()[0]);
    // In the URL too; errors show it redacted.
    config.password_file = None;
    config.url = format!("redis://:s3cret-pw@127.0.0.1:{}/3", fresh.redis.port());
    let db = RedisBackend::open(config.clone()).await.unwrap();
    stored(&db.enqueue(vec![frame(&key(), &key(), "x")]).await.unwrap()[0]);
    config.url = format!("redis://:wrong-pw@127.0.0.1:{}", fresh.redis.port());
    let e = RedisBackend::open(config).await.unwrap_err().to_string();
    assert!(!e.contains("wrong-pw") && e.contains("***"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_walks_every_recipient_and_forgets_idle_ones() {
    let fresh = Fresh::new();
    let db = fresh.open(10_000).await;
    let alice = key();
    let bobs: Vec<PublicKey> = (0..450).map(|_| key()).collect();
    let frames: Vec<NewFrame> = bobs.iter().map(|b| frame(b, &alice, "old")).collect();
    for out in db.enqueue(frames).await.unwrap() {
        stored(&out);
    }
    // One recipient with more frames than one script call deletes.
    let many: Vec<NewFrame> = (0..2500).map(|_| frame(&bobs[0], &alice, "old")).collect();
    db.enqueue(many).await.unwrap();
    std::thread::sleep(Duration::from_millis(3));
    let cutoff = crate::clock::now();
    std::thread::sleep(Duration::from_millis(3));
    let fresh_one = stored(
        &db.enqueue(vec![frame(&bobs[1], &alice, "new")])
            .await
            .unwrap()[0],
    );
    let gone = db.expire(cutoff).await.unwrap();
    assert_eq!(gone.frames, 2950);
    assert_eq!(db.depth().await.unwrap(), 1);
    let mut conn = raw(&fresh.redis).await;
    let left: Vec<String> = redis::cmd("SMEMBERS")
        .arg(db.inner.names.recipients())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        left,
        [keys::hex(&bobs[1].as_bytes()[..])],
        "idle recipients leave the set"
    );
    let laptop = Uuid::new_v4();
    db.register(bobs[1], laptop, "l".into()).await.unwrap();
    assert_eq!(db.fetch(bobs[1], laptop, 0, 10).await.unwrap(), [fresh_one]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_url_goes_through_rustls_and_fails_cleanly_on_a_plain_server() {
    // A server that is not TLS: the handshake fails, with an error (the
    // crypto provider is in place, so nothing panics).
    let fresh = Fresh::new();
    let mut config = fresh.config(10);
    config.url = format!("rediss://:s3cret@127.0.0.1:{}/0", fresh.redis.port());
    match RedisBackend::open(config).await {
        Err(BackendError::RedisSetup(m)) => {
            assert!(m.contains("rediss://:***@127.0.0.1"), "{m}");
            assert!(!m.contains("s3cret"), "{m}");
        }
        other => panic!("expected a setup error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_larger_than_one_script_call_are_split_and_keep_their_order() {
    let fresh = Fresh::new();
    let db = fresh.open(10_000).await;
    let (alice, bob) = (key(), key());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    db.register(bob, phone, "phone".into()).await.unwrap();
    // More frames than one enqueue call takes, with a duplicate id across
    // the calls' boundary and one inside a call.
    let mut frames: Vec<NewFrame> = (0..1100)
        .map(|i| frame(&bob, &alice, &format!("{i}")))
        .collect();
    let mut again = frames[10].clone();
    again.text = "again".into();
    frames.insert(600, again);
    frames.push(frames[1099].clone());
    let out = db.enqueue(frames).await.unwrap();
    assert_eq!(out.len(), 1102);
    assert!(
        matches!(out[600], Enqueued::Duplicate { .. }),
        "{:?}",
        out[600]
    );
    assert!(
        matches!(out[1101], Enqueued::Duplicate { .. }),
        "{:?}",
        out[1101]
    );
    let seqs: Vec<i64> = out
        .iter()
        .filter(|o| matches!(o, Enqueued::Stored { .. }))
        .map(|o| stored(o).seq)
        .collect();
    assert_eq!(seqs.len(), 1100);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs in order");
    let fetched = db.fetch(bob, laptop, 0, 2000).await.unwrap();
    assert_eq!(fetched.iter().map(|q| q.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(&*fetched[1099].text, "1099");
    // More acknowledgements than one entry of the ack script takes, with
    // a repeated seq: the laptop's go, the frames stay for the phone.
    let mut acks = seqs.clone();
    acks.push(seqs[0]);
    assert_eq!(db.remove(bob, laptop, acks).await.unwrap(), 1100);
    assert!(db.fetch(bob, laptop, 0, 10).await.unwrap().is_empty());
    assert_eq!(db.fetch(bob, phone, 0, 2000).await.unwrap().len(), 1100);
    assert_eq!(db.remove(bob, phone, seqs.clone()).await.unwrap(), 1100);
    assert_eq!(db.depth().await.unwrap(), 0);
    // Acknowledged, so their ids may be queued again.
    let out = db
        .enqueue(vec![NewFrame {
            id: fetched[0].id,
            ..frame(&bob, &alice, "re")
        }])
        .await
        .unwrap();
    assert!(stored(&out[0]).seq > seqs[1099]);
}

/// A page larger than one HMGET slice (a large `--delivery-window`) comes
/// back whole and in order.
#[tokio::test(flavor = "multi_thread")]
async fn a_page_of_more_than_a_thousand_frames_is_fetched_whole() {
    let fresh = Fresh::new();
    let db = fresh.open(10_000).await;
    let (alice, bob) = (key(), key());
    let laptop = Uuid::new_v4();
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    let frames = (0..2_500)
        .map(|i| frame(&bob, &alice, &format!("{i}")))
        .collect();
    let stored_seqs: Vec<i64> = db
        .enqueue(frames)
        .await
        .unwrap()
        .iter()
        .map(|e| stored(e).seq)
        .collect();
    let page = db.fetch(bob, laptop, 0, 3_000).await.unwrap();
    let seqs: Vec<i64> = page.iter().map(|q| q.seq).collect();
    assert_eq!(seqs, stored_seqs);
    let after = db
        .fetch(bob, laptop, stored_seqs[999], 1_200)
        .await
        .unwrap();
    assert_eq!(after.len(), 1_200);
    assert_eq!(after[0].seq, stored_seqs[1000]);
    db.close().await;
}

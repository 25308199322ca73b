//! The Redis queue: several routers share one Redis (issue 10), so any
//! router serves any client and a router can die without losing what it
//! acknowledged. The contract is [`super::Backend`]'s, tested by the same
//! suite as SQLite's ([`super::contract`]).
//!
//! # Key layout
//!
//! Every key of one recipient carries the hash tag `{<key as 64 lowercase
//! hex>}`, so all of them live in one slot and every script below touches
//! one slot only: the layout works unchanged on a Redis Cluster. With `P`
//! the `--redis-prefix` and `{h}` the tag:
//!
//! | key | type | holds |
//! |-----|------|-------|
//! | `P:{h}:n` | hash | `claim`: the counter of its sessions' claims |
//! | `P:{h}:f` | hash | seq → frame: `<at>\n<sender 32 bytes><id 16 bytes><text>`; sender and id (48 bytes) → seq: the dedup index; `seq` → the last seq |
//! | `P:{h}:w` | sorted set | waits: member `<slot>:<seq>`, score `slot·2⁴⁰ + seq` |
//! | `P:{h}:slots` | hash | device → slot (0..32), live devices only |
//! | `P:{h}:dev` | hash | device → `{"r":removed,"f":first seen,"l":last seen,"n":name}` |
//! | `P:{h}:sess` | hash | device → `"<router id> <claim>"`: who holds its session |
//! | `P:recipients` | set | every recipient hex with frames or devices (retention) |
//! | `P:depth` | string | frames queued, deployment-wide: an estimate (below) |
//! | channel `P:router:<id>` | pub/sub | events for the router `<id>` |
//!
//! Seqs are per recipient (the field `seq` of `f`, bumped in the same
//! `HSET` that stores the frame), which is all a session's cursor needs. A device's waits are one score range of `w`, in seq order:
//! fetching is a range read, the quota a `ZCOUNT`, and a device registering
//! beside others takes a free slot, whose range is empty, so it gets only
//! what comes after it; the first device of a key takes slot 0, where a key
//! without devices queues, and with it the backlog. A frame goes when the
//! last wait for it goes (an acknowledgement, a device removed or
//! forgotten), or when it expires; its dedup entry goes with it, so an id
//! acknowledged may be queued again, as with SQLite.
//!
//! Memory per frame: in `f` the record (73 bytes of header beside the
//! text) and its dedup entry, and in `w` one member per device it waits
//! for; measured with Redis 7.0 (jemalloc), 150-byte texts and 180 frames
//! waiting per recipient: about 300 bytes per frame in all, so some 150
//! beside the text. Per recipient: the counters (kept for good, so a seq or
//! claim is never reused) and its device records (removed ones are kept,
//! so a removed device stays refused, as with SQLite).
//!
//! # Scripts
//!
//! Lua files beside this one, each atomic and each on one recipient's keys
//! (module `scripts`); all but the two hot ones are prefixed with
//! `lib.lua`:
//!
//! - `enqueue.lua`: per frame, in order: not needed (to one's own key, no
//!   other device), over quota, duplicate, or stored with a new seq and a
//!   wait per device; then one `PUBLISH` per other router holding a claim
//!   of a device the frames wait for (the enqueuing router tells its own
//!   sessions directly). The router builds each record; frames are
//!   published in a compact form of their records (`F<key hex>\n`, then
//!   per frame `<seq> <device>,<device> <length>\n<record>`: module
//!   `wire`), not JSON.
//! - `remove.lua` (acks): drops the device's waits, deletes frames nobody
//!   waits for any more.
//! - `register.lua`, `seen.lua`, `devices.lua`, `remove_device.lua` (which
//!   releases the device's waits, keeps it refused, drops its claim and
//!   tells the router holding that claim), `fetch.lua`.
//! - `expire.lua`: frames older than the cutoff (a prefix of each range),
//!   then devices not seen since; at most a thousand deletions a call.
//! - `claim.lua` (a new number, `replaced` to the previous holder's
//!   router), `release.lua` (compare and delete).
//!
//! Frames and acknowledgements go through one writer task that sends all
//! that is waiting as one pipeline with one script call per recipient
//! (module `writer`). The deployment-wide bookkeeping is kept beside the scripts
//! with separate commands, so no script spans two slots: the recipients
//! set (`SADD` after the script that gave a recipient its first frame or
//! device; `SREM` when retention finds a recipient idle, then re-added if
//! anything arrived meanwhile: a router dying between a first frame and its
//! `SADD` leaves that recipient to its acks, outside retention)
//! and the depth counter, adjusted after the scripts that change the
//! count. The counter is exact while routers run, but drifts if a router
//! dies between a script and its adjustment: `/metrics` shows an estimate.
//!
//! # What Redis spends per frame
//!
//! Redis runs every script on its one thread, so its CPU per frame bounds
//! a deployment (issue 10's benchmark: two routers, clients split across
//! them). `cargo bench --bench redis_backend` measures it: two backends on
//! one Redis (`appendfsync everysec`), 2,000 recipients of one device
//! each, 250-byte texts, half the frames crossing to the other router,
//! Redis CPU from `INFO cpu`, commands from `INFO commandstats`. Almost
//! every script call carries one frame (or one ack), so the per-call costs
//! dominate: a script that does nothing but take the same arguments costs
//! about 4 µs here (the arguments become Lua strings, hashed byte by byte,
//! then garbage), and each `redis.call` inside one about 1 µs more than
//! the command itself.
//!
//! The hot scripts are therefore written for Redis' CPU (without the
//! `lib.lua` helpers, each a closure made per call): `enqueue.lua` reads
//! the seq counter and every frame's dedup entry with one `HMGET`, counts
//! each device's waits once per call (`ZCOUNT`, then counts locally), and
//! writes all the frames with one `HSET` and one `ZADD`; `remove.lua`
//! removes a device's waits with one `ZREM` (after one `ZMSCORE` for
//! several), reads the records it deletes with one `HMGET` and deletes
//! them with one `HDEL`; no `cjson` and no `string.format`. (`ZMSCORE`
//! needs Redis 6.2 or later.)
//!
//! Measured on the shared 2-core machine (load 1–5 from other work, so
//! ±2 µs), µs of Redis CPU per frame, before → after these changes:
//! storing 100,000 frames 29 → 26, acknowledging them 14 → 13, and the
//! steady state (`live`: enqueue then acknowledge at once, three runs
//! each) 38–41 → 33.5–35.7, of which storing takes 23 and acknowledging
//! 13 (`rounds`). Of those 23, the script call itself (its arguments) is
//! about 4, the publishing to the other router about 4 (half the
//! frames), the record's `HSET` with its AOF entry about 2. The issue's
//! goal (two routers at 30,000 msg/s on this machine) wants about half;
//! what would get there changes the layout (see the report of issue 10's
//! helper "redisperf"): acknowledgements as plain `ZREM`s with members
//! named by device (no script, no slot lookup), frames nobody waits for
//! deleted in bulk by the next enqueue of that key (below the lowest
//! waiting seq), dedup entries in a score band of `w` so that deletion
//! needs no read, and the quota's `ZCOUNT` skipped while the seqs since
//! that watermark stay under the quota.
//!
//! # Durability
//!
//! A frame is acknowledged once its script ran, which with `appendfsync
//! always` means fsynced to the append-only file; with `everysec` (the
//! usual choice) a crash of its machine can lose about the last second
//! of acknowledged frames, and a crash of Redis alone nothing, unless a
//! slow disk made Redis hold writes back (it then answers before writing,
//! for up to two seconds: `aof_delayed_fsync` in `INFO persistence`
//! counts those times). Replication is
//! asynchronous: a replica promoted after a crash may lack the latest
//! frames. [`RedisBackend::open`] reads these settings (`CONFIG GET`) and
//! refuses a Redis without an append-only file unless told otherwise
//! ([`RedisConfig::allow_volatile`]). While Redis is unreachable every
//! operation fails within a few seconds (module `health`); nothing is
//! spooled.
//!
//! # Routers
//!
//! Each router has a random id and subscribes to its channel (module
//! `events`);
//! what arrives there becomes [`ClusterEvent`]s. Those are hints: after a
//! lost subscription the router gets [`ClusterEvent::Recheck`].

pub mod local;

mod events;
mod health;
mod keys;
mod retention;
mod scripts;
mod setup;
mod wire;
mod writer;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;
use uuid::Uuid;

use self::health::Health;
use self::keys::Names;
use self::scripts::{evalsha, SCRIPTS};
use self::setup::{Note, OP_TIMEOUT};
use self::writer::{Op, Reply, Writer, WRITER_QUEUE};
use super::{
    Backend, BackendError, ClusterEvent, DeviceRecord, Enqueued, Expired, NewFrame, Queued,
    Registered, MAX_DEVICES,
};
use crate::identity::PublicKey;
/// The default `--redis-prefix`.
pub const DEFAULT_PREFIX: &str = "chat-p2p";

/// How a router reaches its Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URL, with an optional database
    /// number and credentials. Never logged as given: see [`redacted`].
    pub url: String,
    /// A file whose first line is the password (instead of one in the URL).
    pub password_file: Option<PathBuf>,
    /// Prefix of every key and channel, so deployments can share a Redis.
    pub prefix: String,
    /// Start even when Redis' persistence settings would lose acknowledged
    /// frames on a restart (`--redis-allow-volatile`).
    pub allow_volatile: bool,
    /// Most frames waiting for one device.
    pub quota: u64,
}

impl RedisConfig {
    /// A configuration with the defaults for `url`.
    pub fn new(url: impl Into<String>, quota: u64) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            allow_volatile: false,
            quota,
        }
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The largest seq a wait's score can carry (`2⁴⁰ - 1`).
const MAX_SEQ: i64 = (1 << 40) - 1;

/// The Redis implementation of [`Backend`] (see the module documentation).
#[derive(Debug, Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: ConnectionManager,
    names: Names,
    /// This router's id: its channel's name and its claims' owner.
    router_id: String,
    ops: mpsc::Sender<Op>,
    health: Arc<Health>,
    events: Mutex<Option<mpsc::UnboundedReceiver<ClusterEvent>>>,
    closed: AtomicBool,
    /// The subscriber and the pinger, stopped with the backend.
    tasks: Vec<AbortHandle>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl RedisBackend {
    /// Connects, checks Redis' persistence settings, loads the scripts and
    /// starts the subscriber.
    pub async fn open(config: RedisConfig) -> Result<Self, BackendError> {
        let shown = redacted(&config.url);
        if config.prefix.contains(['{', '}']) {
            return Err(BackendError::RedisSetup(format!(
                "the Redis prefix {:?} contains a brace, which would change which keys \
                 Redis keeps together: choose one without {{ or }}",
                config.prefix
            )));
        }
        let client = setup::client(&config)?;
        let mut conn = setup::connect(&client, &shown).await?;
        let settings = setup::persistence(&mut conn).await;
        let notes = setup::assess(settings.as_ref(), config.allow_volatile, &shown)
            .map_err(BackendError::RedisSetup)?;
        for note in notes {
            match note {
                Note::Info(text) => tracing::info!("{text}"),
                Note::Warn(text) => tracing::warn!("{text}"),
            }
        }
        let load = SCRIPTS.load_all(&mut conn);
        match tokio::time::timeout(OP_TIMEOUT, load).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(BackendError::RedisSetup(format!(
                    "cannot load the router's scripts into Redis at {shown}: {e}"
                )))
            }
            Err(_) => {
                return Err(BackendError::RedisSetup(format!(
                    "Redis at {shown} did not load the router's scripts in time"
                )))
            }
        }
        let router_id = Uuid::new_v4().to_string();
        let names = Names::new(&config.prefix);
        let channel = names.channel(&router_id);
        let subscription = events::subscribe(&client, &channel).await.map_err(|e| {
            BackendError::RedisSetup(format!("cannot subscribe to Redis at {shown}: {e}"))
        })?;
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        let health = Health::new(shown);
        let subscriber = tokio::spawn(events::run(client, channel, subscription, events_tx));
        let pinger = tokio::spawn(health::pinger(conn.clone(), Arc::clone(&health)));
        let (ops, rx) = mpsc::channel(WRITER_QUEUE);
        let writer = Writer {
            conn: conn.clone(),
            names: names.clone(),
            router_id: router_id.clone(),
            quota: config.quota,
            health: Arc::clone(&health),
            delta: 0,
            new_recipients: Vec::new(),
        };
        tokio::spawn(writer.run(rx));
        tracing::debug!(router_id, prefix = config.prefix, "Redis queue open");
        Ok(Self {
            inner: Arc::new(Inner {
                conn,
                names,
                router_id,
                ops,
                health,
                events: Mutex::new(Some(events_rx)),
                closed: AtomicBool::new(false),
                tasks: vec![subscriber.abort_handle(), pinger.abort_handle()],
            }),
        })
    }

    /// This router's id (its pub/sub channel is `<prefix>:router:<id>`).
    pub fn router_id(&self) -> &str {
        &self.inner.router_id
    }

    /// Submits `op` built around a fresh reply channel to the writer and
    /// awaits the reply (handed over at once when there is room, so one
    /// caller's submissions keep their order).
    fn submit<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        super::hand_over(&self.inner.ops, make(tx), rx)
    }

    /// Runs `work` on the connection within [`OP_TIMEOUT`], noting what
    /// its outcome says of Redis' health. A connection found dropped (Redis
    /// restarted since the last command) is tried once more: the
    /// connection manager reconnects on that first failure. Every `work`
    /// here is safe to repeat.
    fn call<T, F>(
        &self,
        work: impl Fn(Arc<Inner>, ConnectionManager) -> F + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static
    where
        T: Send + 'static,
        F: std::future::Future<Output = Result<T, BackendError>> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        async move {
            if inner.closed.load(Ordering::Acquire) {
                return Err(BackendError::Closed);
            }
            let first = bounded(&inner, work(Arc::clone(&inner), inner.conn.clone())).await;
            match first {
                Err(BackendError::Redis(e)) if e.is_connection_dropped() || e.is_io_error() => {
                    tracing::debug!(error = %e, "Redis connection lost; trying once more");
                    bounded(&inner, work(Arc::clone(&inner), inner.conn.clone())).await
                }
                other => other,
            }
        }
    }
}

/// An unexpected reply from a script (a bug or a foreign key layout).
fn unexpected(what: &str) -> BackendError {
    BackendError::Commit(format!("unexpected reply from Redis to {what}"))
}

/// Adds `delta` to the deployment's depth counter.
async fn count(
    conn: &mut ConnectionManager,
    names: &Names,
    delta: i64,
) -> Result<(), BackendError> {
    if delta != 0 {
        redis::cmd("INCRBY")
            .arg(names.depth())
            .arg(delta)
            .exec_async(conn)
            .await?;
    }
    Ok(())
}

/// One device record as `dev` stores it.
#[derive(serde::Deserialize)]
struct DeviceJson {
    #[serde(default)]
    f: String,
    #[serde(default)]
    l: String,
    #[serde(default)]
    n: String,
}

impl Backend for RedisBackend {
    fn enqueue(
        &self,
        frames: Vec<NewFrame>,
    ) -> impl std::future::Future<Output = Result<Vec<Enqueued>, BackendError>> + Send + 'static
    {
        self.submit(move |reply| Op::Enqueue(frames, reply))
    }

    fn register(
        &self,
        key: PublicKey,
        device: Uuid,
        name: String,
    ) -> impl std::future::Future<Output = Result<Registered, BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| {
            let name = name.clone();
            async move {
                let k = inner.names.recipient(key.as_bytes());
                let answer: String = SCRIPTS
                    .register
                    .key(&k.slots)
                    .key(&k.dev)
                    .arg(device.to_string())
                    .arg(name)
                    .arg(crate::clock::now())
                    .arg(MAX_DEVICES)
                    .invoke_async(&mut conn)
                    .await?;
                let registered = match answer.as_str() {
                    "known" => Registered::Known,
                    "first" => Registered::First,
                    "added" => Registered::Added,
                    "removed" => Registered::Removed,
                    "toomany" => Registered::TooMany,
                    _ => return Err(unexpected("register")),
                };
                if matches!(registered, Registered::First | Registered::Added) {
                    redis::cmd("SADD")
                        .arg(inner.names.recipients())
                        .arg(&k.hex)
                        .exec_async(&mut conn)
                        .await?;
                }
                Ok(registered)
            }
        })
    }

    fn seen(
        &self,
        devices: Vec<(PublicKey, Uuid)>,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'static {
        if devices.is_empty() {
            return futures_util::future::Either::Left(std::future::ready(Ok(())));
        }
        futures_util::future::Either::Right(self.call(move |inner, mut conn| {
            let devices = devices.clone();
            async move {
                let mut by_key: Vec<([u8; 32], Vec<String>)> = Vec::new();
                for (key, device) in devices {
                    let key = *key.as_bytes();
                    match by_key.iter_mut().find(|(k, _)| *k == key) {
                        Some((_, list)) => list.push(device.to_string()),
                        None => by_key.push((key, vec![device.to_string()])),
                    }
                }
                let now = crate::clock::now();
                let cmds = by_key
                    .iter()
                    .map(|(key, list)| {
                        let k = inner.names.recipient(key);
                        let mut cmd = evalsha(&SCRIPTS.seen, &[&k.slots, &k.dev]);
                        cmd.arg(&now).arg(list);
                        cmd
                    })
                    .collect();
                let replies = scripts::run(&mut conn, cmds).await?;
                if let Some(redis::Value::ServerError(e)) = replies
                    .iter()
                    .find(|v| matches!(v, redis::Value::ServerError(_)))
                {
                    return Err(BackendError::Commit(format!("redis: {e:?}")));
                }
                Ok(())
            }
        }))
    }

    fn devices(
        &self,
        key: PublicKey,
    ) -> impl std::future::Future<Output = Result<Vec<DeviceRecord>, BackendError>> + Send + 'static
    {
        self.call(move |inner, mut conn| async move {
            let k = inner.names.recipient(key.as_bytes());
            let flat: Vec<redis::Value> = SCRIPTS
                .devices
                .key(&k.slots)
                .key(&k.dev)
                .invoke_async(&mut conn)
                .await?;
            let mut out = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks_exact(2) {
                let id = wire::uuid(&pair[0]).ok_or_else(|| unexpected("devices"))?;
                let rec: DeviceJson = wire::bytes(&pair[1])
                    .and_then(|b| serde_json::from_slice(b).ok())
                    .ok_or_else(|| unexpected("devices"))?;
                out.push(DeviceRecord {
                    id,
                    name: rec.n,
                    first_seen: rec.f,
                    last_seen: rec.l,
                });
            }
            out.sort_by(|a, b| (&a.first_seen, a.id).cmp(&(&b.first_seen, b.id)));
            Ok(out)
        })
    }

    fn remove_device(
        &self,
        key: PublicKey,
        device: Uuid,
    ) -> impl std::future::Future<Output = Result<bool, BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| async move {
            let k = inner.names.recipient(key.as_bytes());
            let answer: Vec<i64> = SCRIPTS
                .remove_device
                .key(&k.f)
                .key(&k.w)
                .key(&k.slots)
                .key(&k.dev)
                .key(&k.sess)
                .arg(device.to_string())
                .arg(crate::clock::now())
                .arg(&inner.router_id)
                .arg(inner.names.channel_prefix())
                .arg(&k.hex)
                .invoke_async(&mut conn)
                .await?;
            let [removed, deleted] = answer[..] else {
                return Err(unexpected("remove_device"));
            };
            count(&mut conn, &inner.names, -deleted).await?;
            Ok(removed == 1)
        })
    }

    fn fetch(
        &self,
        recipient: PublicKey,
        device: Uuid,
        after: i64,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Queued>, BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| async move {
            if limit == 0 || after >= MAX_SEQ {
                return Ok(Vec::new());
            }
            let k = inner.names.recipient(recipient.as_bytes());
            let flat: Vec<redis::Value> = SCRIPTS
                .fetch
                .key(&k.f)
                .key(&k.w)
                .key(&k.slots)
                .arg(device.to_string())
                .arg(after.max(0))
                .arg(limit.min(i64::MAX as usize))
                .invoke_async(&mut conn)
                .await?;
            let bytes = *recipient.as_bytes();
            let mut out = Vec::with_capacity(flat.len() / 2);
            for pair in flat.chunks_exact(2) {
                let seq = wire::int(&pair[0]).ok_or_else(|| unexpected("fetch"))?;
                let rec = wire::bytes(&pair[1]).ok_or_else(|| unexpected("fetch"))?;
                match wire::parse_record(seq, bytes, rec) {
                    Some(q) => out.push(q),
                    None => tracing::warn!(seq, "skipped an unreadable frame in Redis"),
                }
            }
            Ok(out)
        })
    }

    fn remove(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        self.submit(move |reply| Op::Remove(*recipient.as_bytes(), device, seqs, reply))
    }

    fn remove_detached(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> Option<futures_util::future::BoxFuture<'static, Result<u64, BackendError>>> {
        // Nobody awaits the answer (a failure is logged by the writer).
        let (reply, _) = oneshot::channel();
        match self
            .inner
            .ops
            .try_send(Op::Remove(*recipient.as_bytes(), device, seqs, reply))
        {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Some(Box::pin(std::future::ready(Err(BackendError::Closed))))
            }
            Err(mpsc::error::TrySendError::Full(Op::Remove(_, device, seqs, _))) => {
                Some(Box::pin(self.remove(recipient, device, seqs)))
            }
            Err(mpsc::error::TrySendError::Full(_)) => None,
        }
    }

    fn expire(
        &self,
        before: String,
    ) -> impl std::future::Future<Output = Result<Expired, BackendError>> + Send + 'static {
        retention::expire(Arc::clone(&self.inner), before)
    }

    fn depth(
        &self,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        self.submit(Op::Depth)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn events(&self) -> Option<mpsc::UnboundedReceiver<ClusterEvent>> {
        self.inner
            .events
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
    }

    fn claim(
        &self,
        key: PublicKey,
        device: Uuid,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| async move {
            let k = inner.names.recipient(key.as_bytes());
            let claim: u64 = SCRIPTS
                .claim
                .key(&k.n)
                .key(&k.sess)
                .arg(device.to_string())
                .arg(&inner.router_id)
                .arg(inner.names.channel_prefix())
                .arg(&k.hex)
                .invoke_async(&mut conn)
                .await?;
            Ok(claim)
        })
    }

    fn knows(
        &self,
        key: PublicKey,
    ) -> impl std::future::Future<Output = Result<bool, BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| async move {
            let k = inner.names.recipient(key.as_bytes());
            // The slots hash holds exactly the live devices.
            let live: u64 = redis::cmd("HLEN")
                .arg(&k.slots)
                .query_async(&mut conn)
                .await?;
            Ok(live > 0)
        })
    }

    fn holds_claim(
        &self,
        key: PublicKey,
        device: Uuid,
        claim: u64,
    ) -> impl std::future::Future<Output = Result<bool, BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| async move {
            let k = inner.names.recipient(key.as_bytes());
            let held: Option<String> = redis::cmd("HGET")
                .arg(&k.sess)
                .arg(device.to_string())
                .query_async(&mut conn)
                .await?;
            Ok(held.is_some_and(|h| h == format!("{} {claim}", inner.router_id)))
        })
    }

    fn release(
        &self,
        key: PublicKey,
        device: Uuid,
        claim: u64,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'static {
        self.call(move |inner, mut conn| async move {
            let k = inner.names.recipient(key.as_bytes());
            let _: i64 = SCRIPTS
                .release
                .key(&k.sess)
                .arg(device.to_string())
                .arg(format!("{} {claim}", inner.router_id))
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn health(&self) -> Result<(), String> {
        self.inner.health.get()
    }

    fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let inner = Arc::clone(&self.inner);
        async move {
            let (tx, rx) = oneshot::channel();
            if inner.ops.send(Op::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
            inner.closed.store(true, Ordering::Release);
            for task in &inner.tasks {
                task.abort();
            }
        }
    }
}

/// Awaits `work` within [`OP_TIMEOUT`], noting Redis' health.
async fn bounded<T, E: Into<BackendError>>(
    inner: &Inner,
    work: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, BackendError> {
    match tokio::time::timeout(OP_TIMEOUT, work).await {
        Ok(Ok(value)) => {
            inner.health.up();
            Ok(value)
        }
        Ok(Err(e)) => {
            let e = e.into();
            if let BackendError::Redis(e) = &e {
                inner.health.note(e);
            }
            Err(e)
        }
        Err(_) => {
            let cause = format!("no answer within {}s", OP_TIMEOUT.as_secs());
            inner.health.down(&cause);
            Err(BackendError::Redis(redis::RedisError::from(
                std::io::Error::new(std::io::ErrorKind::TimedOut, cause),
            )))
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod redacting {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:s3cret@localhost:6379/2"),
            "redis://:***@localhost:6379/2"
        );
        assert_eq!(
            redacted("rediss://router:s3cret@redis.example.org"),
            "rediss://router:***@redis.example.org"
        );
        assert_eq!(redacted("redis://router@h/1"), "redis://router@h/1");
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}

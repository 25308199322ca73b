//! What the Redis backend costs Redis, per frame (issue 10).
//!
//! `cargo bench --bench redis_backend` starts its own `redis-server`
//! (append-only file, `appendfsync everysec` unless `BENCH_FSYNC=always`)
//! and opens two `RedisBackend`s on it, as two routers would. Every
//! recipient has one device whose session one of the two holds (a claim);
//! frames are enqueued through either backend at random, so about half of
//! them cross to the other router by pub/sub, as with clients split across
//! two routers. Then, phase by phase:
//!
//! - `store`: N frames enqueued, `BENCH_INFLIGHT` at a time;
//! - `fetch`: every recipient's backlog fetched by its router;
//! - `ack`: every frame acknowledged (`remove`, one seq each, as a session
//!   does under load) on the router holding its recipient;
//! - `live`: each worker enqueues a frame, then acknowledges it at once on
//!   the recipient's router: the router's steady state, store and ack
//!   sharing pipelines;
//! - `rounds` (not by default): `BENCH_ROUND` (5000) frames stored, then
//!   acknowledged, again and again: store and ack measured apart with
//!   memory level, as in a steady state.
//!
//! For each phase it prints frames/s, Redis CPU µs per frame (`INFO cpu`:
//! `used_cpu_sys + used_cpu_user` deltas), append-only file bytes per
//! frame, and per command (`INFO commandstats` deltas, which count the
//! commands run inside scripts too) calls and µs per frame. Not a test:
//! it prints figures, asserts nothing; CI does not run it.
//!
//! Settings (environment): `BENCH_RECIPIENTS` (2000), `BENCH_FRAMES`
//! (100000), `BENCH_INFLIGHT` (512), `BENCH_TEXT` (250 bytes),
//! `BENCH_FSYNC` (`everysec` | `always`), `BENCH_PHASES` (comma-separated,
//! default `store,fetch,ack,live`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::router::backend::redis::local::{Fsync, LocalRedis};
use chat_p2p::router::backend::redis::{RedisBackend, RedisConfig};
use chat_p2p::router::backend::{Backend, ClusterEvent, Enqueued, NewFrame};
use uuid::Uuid;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One recipient: its key, its device, and which backend holds its
/// session.
struct Recipient {
    key: PublicKey,
    device: Uuid,
    holder: usize,
    /// Seqs stored and not yet acknowledged.
    seqs: Mutex<Vec<i64>>,
}

/// What Redis reports, at one moment.
#[derive(Default)]
struct Snapshot {
    cpu: f64,
    sys: f64,
    /// Reads from client sockets (each a pipeline or part of one).
    reads: u64,
    aof: u64,
    /// command -> (calls, usec)
    commands: BTreeMap<String, (u64, u64)>,
}

async fn snapshot(conn: &mut redis::aio::MultiplexedConnection) -> Snapshot {
    let info: String = redis::cmd("INFO")
        .arg("all")
        .query_async(conn)
        .await
        .unwrap_or_default();
    let mut snap = Snapshot::default();
    for line in info.lines() {
        if let Some(v) = line.strip_prefix("used_cpu_sys:") {
            snap.sys = v.trim().parse::<f64>().unwrap_or(0.0);
            snap.cpu += snap.sys;
        } else if let Some(v) = line.strip_prefix("total_reads_processed:") {
            snap.reads = v.trim().parse().unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("used_cpu_user:") {
            snap.cpu += v.trim().parse::<f64>().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("aof_current_size:") {
            snap.aof = v.trim().parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("cmdstat_") {
            let Some((name, stats)) = rest.split_once(':') else {
                continue;
            };
            let field = |f: &str| {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(f))
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            snap.commands
                .insert(name.to_owned(), (field("calls="), field("usec=")));
        }
    }
    snap
}

/// What Redis did between two snapshots, for `frames` frames.
#[derive(Default)]
struct Delta {
    frames: u64,
    secs: f64,
    cpu: f64,
    sys: f64,
    aof: u64,
    reads: u64,
    commands: BTreeMap<String, (u64, u64)>,
}

impl Delta {
    fn between(before: &Snapshot, after: &Snapshot, frames: u64, secs: f64) -> Self {
        let commands = after
            .commands
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, &(calls, usec))| {
                let (c0, u0) = before.commands.get(name).copied().unwrap_or((0, 0));
                (
                    name.clone(),
                    (calls.saturating_sub(c0), usec.saturating_sub(u0)),
                )
            })
            .filter(|(_, (calls, _))| *calls > 0)
            .collect();
        Self {
            frames,
            secs,
            cpu: after.cpu - before.cpu,
            sys: after.sys - before.sys,
            aof: after.aof.saturating_sub(before.aof),
            reads: after.reads.saturating_sub(before.reads),
            commands,
        }
    }

    fn add(&mut self, other: Delta) {
        self.frames += other.frames;
        self.secs += other.secs;
        self.cpu += other.cpu;
        self.sys += other.sys;
        self.aof += other.aof;
        self.reads += other.reads;
        for (name, (calls, usec)) in other.commands {
            let entry = self.commands.entry(name).or_default();
            entry.0 += calls;
            entry.1 += usec;
        }
    }

    fn report(&self, phase: &str) {
        let n = self.frames.max(1) as f64;
        println!(
            "{phase:>7}: {} frames in {:.2}s = {:.0} frames/s; Redis CPU {:.1} µs/frame \
             ({:.1} in the kernel); AOF {:.0} bytes/frame; {:.2} socket reads/frame",
            self.frames,
            self.secs,
            self.frames as f64 / self.secs,
            self.cpu * 1e6 / n,
            self.sys * 1e6 / n,
            self.aof as f64 / n,
            self.reads as f64 / n,
        );
        let mut rows: Vec<(&String, f64, f64)> = self
            .commands
            .iter()
            .map(|(name, &(calls, usec))| (name, calls as f64 / n, usec as f64 / n))
            .collect();
        rows.sort_by(|a, b| b.2.total_cmp(&a.2));
        for (name, calls, usec) in rows {
            println!("         {name:<18} {calls:>7.3} calls/frame {usec:>7.2} µs/frame");
        }
    }
}

/// A cheap deterministic hash of `x` (splitmix64's finaliser), so
/// recipients and the enqueuing backend are drawn independently.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn frame(i: u64, recipients: &[Arc<Recipient>], senders: &[[u8; 32]], text: &Arc<str>) -> NewFrame {
    let r = &recipients[(mix(i + 1) % recipients.len() as u64) as usize];
    NewFrame {
        recipient: *r.key.as_bytes(),
        sender: senders[(i % senders.len() as u64) as usize],
        sender_device: Uuid::new_v4(),
        id: Uuid::new_v4(),
        text: Arc::clone(text),
    }
}

fn recipient_of(recipients: &[Arc<Recipient>], i: u64) -> &Arc<Recipient> {
    &recipients[(mix(i + 1) % recipients.len() as u64) as usize]
}

fn main() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let recipients_n = env("BENCH_RECIPIENTS", 2000).max(1);
    let frames_n = env("BENCH_FRAMES", 100_000);
    let inflight = env("BENCH_INFLIGHT", 512).max(1);
    let text_len = env("BENCH_TEXT", 250) as usize;
    let fsync = match std::env::var("BENCH_FSYNC").as_deref() {
        Ok("always") => Fsync::Always,
        _ => Fsync::EverySec,
    };
    let phases = std::env::var("BENCH_PHASES").unwrap_or_else(|_| "store,fetch,ack,live".into());

    let dir = tempfile::tempdir()?;
    let redis = LocalRedis::start(dir.path(), fsync)?;
    println!(
        "redis {} ({fsync:?}), {recipients_n} recipients × 1 device, {frames_n} frames of \
         {text_len} bytes, {inflight} in flight, 2 backends",
        redis.url()
    );
    let client = redis::Client::open(redis.url())?;
    let mut info = client.get_multiplexed_async_connection().await?;
    // A rewrite of the append-only file would reset its size mid-phase.
    redis::cmd("CONFIG")
        .arg("SET")
        .arg("auto-aof-rewrite-percentage")
        .arg(0)
        .exec_async(&mut info)
        .await?;
    let pid: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut info)
        .await?;
    let pid = pid
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap_or("?")
        .trim()
        .to_owned();
    println!("redis-server pid {pid}");
    if let Some(wait) = std::env::var("BENCH_WAIT")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        // Time to attach a profiler to the server (`perf record -p PID`).
        tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    }

    let quota = frames_n + 1;
    let backends = [
        RedisBackend::open(RedisConfig::new(redis.url(), quota)).await?,
        RedisBackend::open(RedisConfig::new(redis.url(), quota)).await?,
    ];
    let crossed = Arc::new(AtomicU64::new(0));
    for b in &backends {
        if let Some(mut events) = b.events() {
            let crossed = Arc::clone(&crossed);
            tokio::spawn(async move {
                while let Some(event) = events.recv().await {
                    if let ClusterEvent::Frame { .. } = event {
                        crossed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    }

    let mut recipients = Vec::new();
    for i in 0..recipients_n {
        let key = Identity::generate().public_key();
        let device = Uuid::new_v4();
        let holder = (i % 2) as usize;
        backends[holder]
            .register(key, device, "bench".into())
            .await?;
        backends[holder].claim(key, device).await?;
        recipients.push(Arc::new(Recipient {
            key,
            device,
            holder,
            seqs: Mutex::new(Vec::new()),
        }));
    }
    let recipients = Arc::new(recipients);
    let senders: Arc<Vec<[u8; 32]>> = Arc::new(
        (0..recipients_n.min(500))
            .map(|_| *Identity::generate().public_key().as_bytes())
            .collect(),
    );
    let text: Arc<str> = Arc::from("x".repeat(text_len));

    for phase in phases.split(',') {
        if phase == "rounds" {
            // Store then acknowledge `round` frames at a time, so memory
            // stays level as in a router's steady state, with store and
            // ack measured apart.
            let round = env("BENCH_ROUND", 5000).max(1);
            let (mut stored, mut acked) = (Delta::default(), Delta::default());
            for r in 0..frames_n.div_ceil(round) {
                let offset = (2 << 40) + r * round;
                let s0 = snapshot(&mut info).await;
                let start = Instant::now();
                let n = store(
                    &backends,
                    &recipients,
                    &senders,
                    &text,
                    offset,
                    round,
                    inflight,
                )
                .await?;
                let s1 = snapshot(&mut info).await;
                stored.add(Delta::between(&s0, &s1, n, start.elapsed().as_secs_f64()));
                let start = Instant::now();
                let n = ack(&backends, &recipients, inflight).await?;
                let s2 = snapshot(&mut info).await;
                acked.add(Delta::between(&s1, &s2, n, start.elapsed().as_secs_f64()));
            }
            stored.report("r-store");
            acked.report("r-ack");
            continue;
        }
        let before = snapshot(&mut info).await;
        let start = Instant::now();
        let frames = match phase {
            "store" => {
                store(
                    &backends,
                    &recipients,
                    &senders,
                    &text,
                    0,
                    frames_n,
                    inflight,
                )
                .await
            }
            "fetch" => fetch(&backends, &recipients, inflight).await,
            "ack" => ack(&backends, &recipients, inflight).await,
            "live" => live(&backends, &recipients, &senders, &text, frames_n, inflight).await,
            other => anyhow::bail!("unknown phase {other:?}: store, fetch, ack, live or rounds"),
        }?;
        let secs = start.elapsed().as_secs_f64();
        let after = snapshot(&mut info).await;
        Delta::between(&before, &after, frames, secs).report(phase);
    }
    println!(
        "frames handed to the other router by pub/sub: {}",
        crossed.load(Ordering::Relaxed)
    );
    for b in &backends {
        b.close().await;
    }
    drop(redis);
    Ok(())
}

/// Runs `work(i)` for i in 0..n, `inflight` at a time.
async fn spread<F, Fut>(n: u64, inflight: u64, work: F) -> anyhow::Result<()>
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let next = Arc::new(AtomicU64::new(0));
    let work = Arc::new(work);
    let mut tasks = Vec::new();
    for _ in 0..inflight {
        let next = Arc::clone(&next);
        let work = Arc::clone(&work);
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<(), anyhow::Error>(());
                }
                work(i).await?;
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

async fn store(
    backends: &[RedisBackend; 2],
    recipients: &Arc<Vec<Arc<Recipient>>>,
    senders: &Arc<Vec<[u8; 32]>>,
    text: &Arc<str>,
    offset: u64,
    n: u64,
    inflight: u64,
) -> anyhow::Result<u64> {
    let (backends, recipients, senders, text) = (
        backends.clone(),
        Arc::clone(recipients),
        Arc::clone(senders),
        Arc::clone(text),
    );
    spread(n, inflight, move |i| {
        let i = i + offset;
        let f = frame(i, &recipients, &senders, &text);
        let r = Arc::clone(recipient_of(&recipients, i));
        let via = backends[(mix(i ^ 0x5555) % 2) as usize].clone();
        async move {
            match via.enqueue(vec![f]).await?.pop() {
                Some(Enqueued::Stored { frame, .. }) => r
                    .seqs
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(frame.seq),
                other => anyhow::bail!("frame not stored: {other:?}"),
            }
            Ok(())
        }
    })
    .await?;
    Ok(n)
}

async fn fetch(
    backends: &[RedisBackend; 2],
    recipients: &Arc<Vec<Arc<Recipient>>>,
    inflight: u64,
) -> anyhow::Result<u64> {
    let fetched = Arc::new(AtomicU64::new(0));
    let (backends, list, count) = (
        backends.clone(),
        Arc::clone(recipients),
        Arc::clone(&fetched),
    );
    spread(recipients.len() as u64, inflight, move |i| {
        let r = Arc::clone(&list[i as usize]);
        let b = backends[r.holder].clone();
        let count = Arc::clone(&count);
        async move {
            let mut after = 0;
            loop {
                let rows = b.fetch(r.key, r.device, after, 128).await?;
                let Some(last) = rows.last() else { break };
                after = last.seq;
                count.fetch_add(rows.len() as u64, Ordering::Relaxed);
            }
            Ok(())
        }
    })
    .await?;
    Ok(fetched.load(Ordering::Relaxed))
}

async fn ack(
    backends: &[RedisBackend; 2],
    recipients: &Arc<Vec<Arc<Recipient>>>,
    inflight: u64,
) -> anyhow::Result<u64> {
    // One (recipient, seq) per acknowledgement, interleaved across
    // recipients as live traffic would be.
    let mut acks = Vec::new();
    let mut lists: Vec<Vec<i64>> = recipients
        .iter()
        .map(|r| std::mem::take(&mut *r.seqs.lock().unwrap_or_else(|e| e.into_inner())))
        .collect();
    let mut round = 0;
    loop {
        let mut any = false;
        for (r, list) in lists.iter_mut().enumerate() {
            if let Some(&seq) = list.get(round) {
                acks.push((r, seq));
                any = true;
            }
        }
        if !any {
            break;
        }
        round += 1;
    }
    lists.clear();
    let n = acks.len() as u64;
    let acks = Arc::new(acks);
    let (backends, list) = (backends.clone(), Arc::clone(recipients));
    spread(n, inflight, move |i| {
        let (r, seq) = acks[i as usize];
        let r = Arc::clone(&list[r]);
        let b = backends[r.holder].clone();
        async move {
            let done = b.remove(r.key, r.device, vec![seq]).await?;
            anyhow::ensure!(done == 1, "seq {seq} was not waiting");
            Ok(())
        }
    })
    .await?;
    Ok(n)
}

async fn live(
    backends: &[RedisBackend; 2],
    recipients: &Arc<Vec<Arc<Recipient>>>,
    senders: &Arc<Vec<[u8; 32]>>,
    text: &Arc<str>,
    n: u64,
    inflight: u64,
) -> anyhow::Result<u64> {
    let (backends, recipients, senders, text) = (
        backends.clone(),
        Arc::clone(recipients),
        Arc::clone(senders),
        Arc::clone(text),
    );
    // Other frames than the store phase's (ids are fresh anyway).
    let offset = 1 << 40;
    spread(n, inflight, move |i| {
        let f = frame(i + offset, &recipients, &senders, &text);
        let r = Arc::clone(recipient_of(&recipients, i + offset));
        let via = backends[(mix(i ^ 0xaaaa) % 2) as usize].clone();
        let holder = backends[r.holder].clone();
        async move {
            let seq = match via.enqueue(vec![f]).await?.pop() {
                Some(Enqueued::Stored { frame, .. }) => frame.seq,
                other => anyhow::bail!("frame not stored: {other:?}"),
            };
            let done = holder.remove(r.key, r.device, vec![seq]).await?;
            anyhow::ensure!(done == 1, "seq {seq} was not waiting");
            Ok(())
        }
    })
    .await?;
    Ok(n)
}

//! Routers on Redis against the bare forwarder and the SQLite router, with
//! the same clients and settings (issue 10): `router_load redis`, and the
//! Redis part of the whole run.
//!
//! For each `appendfsync` (`BENCH_REDIS_FSYNC`: `everysec`, `always` or
//! `both`, the default) and each number of routers (`BENCH_REDIS_ROUTERS`,
//! default `1,2`) a fresh `redis-server` and fresh routers are started, then
//! the throughput run (flat out) and the latency run (`BENCH_RATE` offered)
//! are measured against them. With several routers the pairs are split so
//! that every frame crosses from one router to another (see
//! [`super::Target`]); then every delivery is a Redis pub/sub message.

use std::time::Duration;

use chat_p2p::identity::Identity;
use chat_p2p::protocol::{self, Frame};
use chat_p2p::router::backend::redis::local::Fsync;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

use super::on_redis::{self, BenchRedis};
use super::{connect, env, load, report, Outcome, Server, Target, Template};

/// The clients and windows every configuration is measured with.
pub struct Settings {
    pub pairs: usize,
    pub rate: u64,
    pub window: usize,
    pub dur: Duration,
}

impl Settings {
    /// From `BENCH_PAIRS`, `BENCH_RATE`, `BENCH_WINDOW`, `BENCH_SECS`.
    pub fn from_env() -> Settings {
        Settings {
            pairs: env("BENCH_PAIRS", 50) as usize,
            rate: env("BENCH_RATE", 10_000),
            window: env("BENCH_WINDOW", 128) as usize,
            dur: Duration::from_secs(env("BENCH_SECS", 5)),
        }
    }
}

/// One configuration's two runs, for the summary table.
pub struct Row {
    pub name: String,
    pub tp: Outcome,
    pub lat: Outcome,
}

/// Throughput then latency against `target`, reported as they finish.
pub async fn measure(name: &str, target: &Target<'_>, s: &Settings) -> Row {
    let tp = load(target, s.pairs, None, s.window, s.dur, 1).await;
    report(&format!("{name}, flat out"), &tp);
    let lat = load(target, s.pairs, Some(s.rate), s.window, s.dur, 1).await;
    report(&format!("{name} @ {}/s", s.rate), &lat);
    Row {
        name: name.to_owned(),
        tp,
        lat,
    }
}

/// Every Redis configuration asked for, each on a fresh server.
pub async fn redis_rows(s: &Settings) -> Vec<Row> {
    let mut rows = Vec::new();
    for fsync in fsyncs() {
        for routers in router_counts() {
            let redis = BenchRedis::start(fsync);
            let servers: Vec<Server> = (0..routers)
                .map(|_| on_redis::start_router(&redis.url()))
                .collect();
            let target = Target {
                servers: servers.iter().collect(),
                redis: Some(&redis),
            };
            let name = match routers {
                1 => format!("1 router on Redis, {}", redis.fsync),
                n => format!("{n} routers on Redis, {}, crossing", redis.fsync),
            };
            rows.push(measure(&name, &target, s).await);
            println!(
                "    append-only file {:.1} MB, Redis used_memory {:.1} MB after both runs",
                redis.aof_bytes() as f64 / 1e6,
                redis.used_memory() as f64 / 1e6
            );
        }
    }
    rows
}

/// `BENCH_REDIS_FSYNC`: `everysec`, `always` or `both` (default).
fn fsyncs() -> Vec<Fsync> {
    match std::env::var("BENCH_REDIS_FSYNC").as_deref() {
        Ok("everysec") => vec![Fsync::EverySec],
        Ok("always") => vec![Fsync::Always],
        _ => vec![Fsync::EverySec, Fsync::Always],
    }
}

/// `BENCH_REDIS_ROUTERS`: how many routers share the Redis, e.g. `1,2`
/// (default).
fn router_counts() -> Vec<usize> {
    let text = std::env::var("BENCH_REDIS_ROUTERS").unwrap_or_else(|_| "1,2".to_owned());
    let counts: Vec<usize> = text
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .filter(|&n| n > 0)
        .collect();
    if counts.is_empty() {
        vec![1, 2]
    } else {
        counts
    }
}

/// The summary of a run, as a Markdown table for docs/BENCHMARKS.md.
pub fn print_table(rows: &[Row], rate: u64) {
    println!();
    println!("| configuration | flat out: msg/s | server CPU µs/msg | redis-server CPU µs/msg | generator CPU µs/msg | Redis commands/msg (scripts) | fdatasync/s (msg each) | @ {rate}/s: p50 / p99 ms | server + redis CPU µs/msg @ {rate}/s | fdatasync/s @ {rate}/s |");
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for row in rows {
        let (tp, lat) = (&row.tp, &row.lat);
        let redis = |o: &Outcome, f: &dyn Fn(&super::RedisSpan) -> String| {
            o.redis.as_ref().map(f).unwrap_or_else(|| "-".to_owned())
        };
        let fsyncs = |o: &Outcome| {
            redis(o, &|r| match &r.syscalls {
                Some(c) => format!("{:.0} ({:.0})", c.fsyncs_per_sec, c.msgs_per_fsync),
                None => "n/a".to_owned(),
            })
        };
        println!(
            "| {} | {:.0} | {:.1} | {} | {:.1} | {} | {} | {:.2} / {:.2} | {:.1} + {} | {} |",
            row.name,
            tp.rate,
            tp.cpu_us_per_msg,
            redis(tp, &|r| format!("{:.1}", r.cpu_us_per_msg)),
            tp.gen_cpu_us_per_msg,
            redis(tp, &|r| format!(
                "{:.2} ({:.2})",
                r.commands_per_msg, r.scripts_per_msg
            )),
            fsyncs(tp),
            lat.p50_us as f64 / 1000.0,
            lat.p99_us as f64 / 1000.0,
            lat.cpu_us_per_msg,
            redis(lat, &|r| format!("{:.1}", r.cpu_us_per_msg)),
            fsyncs(lat),
        );
    }
    println!();
}

/// Redis memory and append-only file per queued frame: `senders` senders
/// each queue `per_sender` frames for a recipient that never connects,
/// through one router on `redis`.
pub async fn queued_memory(router: &Server, redis: &BenchRedis, senders: usize, per_sender: usize) {
    let (mem0, aof0) = (redis.used_memory(), redis.aof_bytes());
    let mut tasks = Vec::new();
    let mut frame_bytes = 0;
    for _ in 0..senders {
        let (s, r) = (Identity::generate(), Identity::generate());
        let template = Template::new(&s, &r.public_key());
        frame_bytes = template.frame(0).len();
        let ws = connect(&router.addr, &s).await;
        tasks.push(tokio::spawn(queue_frames(ws, template, per_sender)));
    }
    let mut acked = 0;
    for t in tasks {
        acked += t.await.unwrap_or(0);
    }
    let (mem1, aof1) = (redis.used_memory(), redis.aof_bytes());
    println!(
        "queued for offline recipients: {acked} frames of {frame_bytes} bytes; Redis used_memory {:.1} -> {:.1} MB = {:.0} bytes per frame; append-only file +{:.0} bytes per frame",
        mem0 as f64 / 1e6,
        mem1 as f64 / 1e6,
        mem1.saturating_sub(mem0) as f64 / acked.max(1) as f64,
        aof1.saturating_sub(aof0) as f64 / acked.max(1) as f64,
    );
}

/// Sends `n` frames in windows of 128, each window waiting for its acks;
/// returns how many were acked.
async fn queue_frames(ws: super::Ws, template: Template, n: usize) -> usize {
    let (mut sink, mut stream) = ws.split();
    let mut acked = 0;
    let mut counter = 0u64;
    while acked < n {
        let batch = (n - acked).min(128);
        for _ in 0..batch {
            counter += 1;
            if sink
                .feed(Message::text(template.frame(counter)))
                .await
                .is_err()
            {
                return acked;
            }
        }
        if sink.flush().await.is_err() {
            return acked;
        }
        let mut answered = 0;
        while answered < batch {
            match stream.next().await {
                Some(Ok(Message::Text(t))) => match protocol::parse(t.as_str()) {
                    Ok(Frame::Ack(_)) => {
                        answered += 1;
                        acked += 1;
                    }
                    Ok(Frame::Error(e)) => {
                        eprintln!("queueing: {e:?}");
                        answered += 1;
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
                _ => return acked,
            }
        }
    }
    let _ = sink.close().await;
    acked
}

/// Redis' state at one moment: memory, CPU, commands.
pub struct Snapshot {
    memory: u64,
    cpu: f64,
    commands: on_redis::Commands,
}

impl Snapshot {
    /// Now.
    pub fn take(redis: &BenchRedis) -> Snapshot {
        Snapshot {
            memory: redis.used_memory(),
            cpu: redis.cpu_secs(),
            commands: redis.commands(),
        }
    }
}

/// What `n` idle sessions cost Redis: memory and the logins (since
/// `before`, taken before they connected), then over one heartbeat
/// (`BENCH_RECHECK_SECS`, default 31: the router's default ping interval
/// is 30 s; on a shared queue each session also re-checks its claim and
/// queue every `--recheck-interval`, 300 s by default, from a random
/// start, so such a window sees about a tenth of them re-check) the
/// router's and Redis' CPU per session.
pub async fn idle_costs(router: &Server, redis: &BenchRedis, n: usize, before: Snapshot) {
    let n = n.max(1) as f64;
    let logged_in = Snapshot::take(redis);
    let logins = before.commands.delta(&logged_in.commands);
    println!(
        "  Redis used_memory {:.1} MB before, {:.1} MB with them ({:.0} bytes per session); per login: Redis CPU {:.0} us, {:.1} commands ({:.1} scripts): {}",
        before.memory as f64 / 1e6,
        logged_in.memory as f64 / 1e6,
        logged_in.memory.saturating_sub(before.memory) as f64 / n,
        1e6 * (logged_in.cpu - before.cpu) / n,
        logins.total() as f64 / n,
        logins.scripts() as f64 / n,
        logins.per_frame(n as u64),
    );
    let secs = env("BENCH_RECHECK_SECS", 31);
    if secs == 0 {
        return;
    }
    let router_cpu = router.cpu_secs();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let after = Snapshot::take(redis);
    let idle = logged_in.commands.delta(&after.commands);
    println!(
        "  idle for {secs} s (one heartbeat, a tenth of the 300 s re-checks): router CPU {:.0} us and Redis CPU {:.0} us per session, {:.2} Redis commands per session ({:.2} scripts): {}",
        1e6 * (router.cpu_secs() - router_cpu) / n,
        1e6 * (after.cpu - logged_in.cpu) / n,
        idle.total() as f64 / n,
        idle.scripts() as f64 / n,
        idle.per_frame(n as u64),
    );
}

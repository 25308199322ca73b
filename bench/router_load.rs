//! Load generator for the router (issues 4, 9 and 10).
//!
//! `cargo bench --bench router_load` starts a real `chat-p2p router`
//! process (durable SQLite queue) and a bare forwarder process (this
//! binary with the argument `forwarder`: same WebSocket library, same
//! handshake and frame parsing, no storage), then measures against each:
//!
//! - throughput: K sender/receiver pairs, each sender keeping up to W frames
//!   unacknowledged by the server, receivers acking every frame; messages
//!   delivered per second over the measuring window;
//! - latency at a fixed offered rate (default 10,000 msg/s in total),
//!   send-to-receive p50/p99;
//! - router only: memory with receivers that never read (stalled), and the
//!   RSS of N idle authenticated sessions.
//!
//! - devices (protocol v2): router throughput with one device per receiving
//!   key and with two (each frame delivered to and acked by both), in the
//!   same run, with the router's CPU per message; `router_load devices`
//!   runs only this comparison, alternating 1 and 2 devices.
//!
//! - Redis (issue 10): the same two runs (flat out, and at the offered
//!   rate) against one router on Redis and against two routers on one
//!   Redis with every frame crossing between them (pair i sends through
//!   router i % 2 to router (i + 1) % 2, so each delivery is a pub/sub
//!   message), each with `appendfsync everysec` and `always`, each on a
//!   fresh `redis-server` (temp dir); besides the routers' CPU, the
//!   redis-server's CPU, its commands per message (`INFO commandstats`)
//!   and, when `perf` can count tracepoints, its `fdatasync`s and
//!   event-loop iterations. A Markdown table of every configuration of the
//!   run ends it. `router_load redis` runs only these, with the forwarder
//!   and SQLite baselines, then Redis' memory per queued frame and per
//!   idle session (see `router_load/redis_compare.rs`).
//!
//! `router_load parse` instead times `protocol::parse` on one frame;
//! `router_load idle` measures only the idle sessions' memory.
//!
//! Settings come from the environment: `BENCH_PAIRS` (50), `BENCH_SECS`
//! (5), `BENCH_RATE` (10000), `BENCH_IDLE` (10000), `BENCH_WINDOW` (128);
//! for Redis `BENCH_REDIS_FSYNC` (`everysec`, `always`, `both`),
//! `BENCH_REDIS_ROUTERS` (`1,2`), `BENCH_QUEUED` (50000), `BENCH_PERF=0`
//! (no perf); `BENCH_ROUTER_WRAP` runs the routers under a profiler, e.g.
//! `valgrind --tool=callgrind`; `BENCH_ROUTER_BIN` runs another
//! `chat-p2p` binary as the router (a baseline build); `router_load idle`
//! also takes `BENCH_IDLE_STEPS` (e.g. `10000,50000`): the counts on the
//! way to `BENCH_IDLE` at which it measures too.
//!
//! Idle sessions are held as bare TCP sockets once signed in, bound to
//! 127.P.0.2, 127.P.0.3, ... (10,000 per source address: one address
//! has about 28,000 ephemeral ports; P from the process id), and the routers ping once an hour
//! (`--ping-interval 3600`) since nothing answers. The bench raises its
//! own descriptor limit (and so the routers'), beyond the hard limit when
//! run as root.
//!
//! `router_load sqlite` runs the SQLite router against the bare forwarder
//! only (throughput, then `BENCH_RATE` offered): issue 13's comparison.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

#[path = "router_load/on_redis.rs"]
mod on_redis;
#[path = "router_load/redis_compare.rs"]
mod redis_compare;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::{self, Ack, Content, Frame};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{FutureExt, SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use uuid::Uuid;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn nanos() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    raise_own_fds();
    let mut args = std::env::args().skip(1);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let first = args.next();
    if first.as_deref() == Some("parse") {
        let a = Identity::generate();
        let b = Identity::generate();
        let t = Template::new(&a, &b.public_key());
        let text = t.frame(1);
        let n = 100_000;
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(protocol::parse(std::hint::black_box(&text)).unwrap());
        }
        println!("parse: {:?}/frame", start.elapsed() / n);
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                protocol::parse_inbound(std::hint::black_box(&text), protocol::MAX_FRAME_BYTES)
                    .unwrap(),
            );
        }
        println!("parse_inbound: {:?}/frame", start.elapsed() / n);
        let start = Instant::now();
        for _ in 0..n {
            std::hint::black_box(
                PublicKey::parse(std::hint::black_box(
                    "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=",
                ))
                .unwrap(),
            );
        }
        println!("key: {:?}/key", start.elapsed() / n);
        return;
    }
    if first.as_deref() == Some("forwarder") {
        runtime.block_on(forwarder::run());
        return;
    }
    if first.as_deref() == Some("idle") {
        // Only the idle sessions' memory: BENCH_IDLE of them, measured on
        // the way at each count of BENCH_IDLE_STEPS (e.g. 10000,50000).
        let data = tempfile::tempdir().unwrap();
        let router = start_router(data.path());
        let mut steps: Vec<usize> = std::env::var("BENCH_IDLE_STEPS")
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect();
        steps.push(env("BENCH_IDLE", 10_000) as usize);
        steps.sort_unstable();
        steps.dedup();
        runtime.block_on(idle_steps(&router, &steps, None));
        return;
    }
    if first.as_deref() == Some("redis") {
        nanos();
        runtime.block_on(redis_only());
        return;
    }
    if first.as_deref() == Some("sqlite") {
        nanos();
        runtime.block_on(sqlite_only());
        return;
    }
    if first.as_deref() == Some("devices") {
        nanos();
        runtime.block_on(devices_only());
        return;
    }
    nanos();
    runtime.block_on(run_all());
}

/// A server child process, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(mut cmd: Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("server stdout"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let Some(addr) = line.trim().strip_prefix("listening on ") else {
            let _ = child.kill();
            panic!("the server did not start (it printed {line:?}; its stderr is above)");
        };
        let addr = addr.to_owned();
        Server { child, addr }
    }

    fn rss_kb(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Server {
    /// `/proc/<pid>/smaps_rollup`'s resident figures, in MB: where the
    /// RSS is (anonymous: heap and stacks; the rest is files mapped).
    fn smaps_rollup(&self) -> String {
        let text = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", self.child.id()))
            .unwrap_or_default();
        let mut out = Vec::new();
        for line in text.lines() {
            let Some((name, value)) = line.split_once(':') else {
                continue;
            };
            if [
                "Rss",
                "Anonymous",
                "Private_Dirty",
                "Shared_Clean",
                "Private_Clean",
            ]
            .contains(&name)
            {
                let kb: f64 = value
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .unwrap_or(0.0);
                out.push(format!("{name} {:.1} MB", kb / 1024.0));
            }
        }
        out.join(", ")
    }

    /// CPU seconds (user + system) the process used so far.
    fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.child.id())
    }
}

/// CPU seconds (user + system, all threads) process `pid` used so far.
fn cpu_secs_of(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are
    // the 14th and 15th fields overall, in clock ticks (100 per second).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    ticks as f64 / 100.0
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn run_all() {
    let pairs = env("BENCH_PAIRS", 50) as usize;
    let secs = env("BENCH_SECS", 5);
    let rate = env("BENCH_RATE", 10_000);
    let idle = env("BENCH_IDLE", 10_000) as usize;
    let window = env("BENCH_WINDOW", 128) as usize;
    println!("router_load: {pairs} pairs, {secs} s windows, offered {rate} msg/s, {idle} idle sessions, sender window {window}");

    let data = tempfile::tempdir().unwrap();
    let router = start_router(data.path());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("forwarder");
    let forwarder = Server::start(cmd);
    let dur = Duration::from_secs(secs);

    let fwd_tp = load(&Target::one(&forwarder), pairs, None, window, dur, 1).await;
    report("forwarder throughput", &fwd_tp);
    let router_tp = load(&Target::one(&router), pairs, None, window, dur, 1).await;
    report("router throughput   ", &router_tp);
    println!(
        "  router/forwarder = {:.0}% (target >= 50%)",
        100.0 * router_tp.rate / fwd_tp.rate.max(1.0)
    );
    let two = load(&Target::one(&router), pairs, None, window, dur, 2).await;
    report("router, 2 devices   ", &two);
    compare_devices(&router_tp, &two);
    let fwd_lat = load(&Target::one(&forwarder), pairs, Some(rate), window, dur, 1).await;
    report("forwarder @ offered ", &fwd_lat);
    let router_lat = load(&Target::one(&router), pairs, Some(rate), window, dur, 1).await;
    report("router @ offered    ", &router_lat);
    println!("  router p99 target < 20 ms at {rate} msg/s offered");

    let settings = redis_compare::Settings::from_env();
    let mut rows = vec![
        redis_compare::Row {
            name: "bare forwarder (no storage)".to_owned(),
            tp: fwd_tp,
            lat: fwd_lat,
        },
        redis_compare::Row {
            name: "1 router on SQLite".to_owned(),
            tp: router_tp,
            lat: router_lat,
        },
    ];
    rows.extend(redis_compare::redis_rows(&settings).await);
    redis_compare::print_table(&rows, rate);

    stalled(&router, pairs.min(20), window, dur).await;
    idle_sessions(&router, idle, None).await;
}

/// The router on SQLite against the bare forwarder only (issue 13):
/// throughput of both, then both at `BENCH_RATE` offered, all in one run.
async fn sqlite_only() {
    let pairs = env("BENCH_PAIRS", 50) as usize;
    let secs = env("BENCH_SECS", 5);
    let rate = env("BENCH_RATE", 10_000);
    let window = env("BENCH_WINDOW", 128) as usize;
    println!("router_load sqlite: {pairs} pairs, {secs} s windows, offered {rate} msg/s, sender window {window}");
    let data = tempfile::tempdir().unwrap();
    let router = start_router(data.path());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.arg("forwarder");
    let forwarder = Server::start(cmd);
    let dur = Duration::from_secs(secs);
    let fwd_tp = load(&Target::one(&forwarder), pairs, None, window, dur, 1).await;
    report("forwarder throughput", &fwd_tp);
    let router_tp = load(&Target::one(&router), pairs, None, window, dur, 1).await;
    report("router throughput   ", &router_tp);
    println!(
        "  router/forwarder = {:.0}% (target >= 50%)",
        100.0 * router_tp.rate / fwd_tp.rate.max(1.0)
    );
    let fwd_lat = load(&Target::one(&forwarder), pairs, Some(rate), window, dur, 1).await;
    report("forwarder @ offered ", &fwd_lat);
    let router_lat = load(&Target::one(&router), pairs, Some(rate), window, dur, 1).await;
    report("router @ offered    ", &router_lat);
}

/// The Redis comparisons only, with the forwarder and SQLite baselines of
/// the same run, then what a queued frame and an idle session cost in
/// Redis (`BENCH_QUEUED` frames, default 50,000; `BENCH_IDLE` sessions,
/// default 10,000; 0 skips either).
async fn redis_only() {
    let s = redis_compare::Settings::from_env();
    println!(
        "router_load redis: {} pairs, {} s windows after 1 s warm-up, offered {} msg/s, sender window {}",
        s.pairs,
        s.dur.as_secs(),
        s.rate,
        s.window
    );
    let mut rows = Vec::new();
    {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.arg("forwarder");
        let forwarder = Server::start(cmd);
        rows.push(
            redis_compare::measure("bare forwarder (no storage)", &Target::one(&forwarder), &s)
                .await,
        );
    }
    {
        let data = tempfile::tempdir().unwrap();
        let router = start_router(data.path());
        rows.push(redis_compare::measure("1 router on SQLite", &Target::one(&router), &s).await);
    }
    rows.extend(redis_compare::redis_rows(&s).await);
    redis_compare::print_table(&rows, s.rate);

    let queued = env("BENCH_QUEUED", 50_000) as usize;
    let idle = env("BENCH_IDLE", 10_000) as usize;
    if queued > 0 || idle > 0 {
        let redis =
            on_redis::BenchRedis::start(chat_p2p::router::backend::redis::local::Fsync::EverySec);
        let router = on_redis::start_router(&redis.url());
        if queued > 0 {
            redis_compare::queued_memory(&router, &redis, 20, queued.div_ceil(20)).await;
        }
        if idle > 0 {
            idle_sessions(&router, idle, Some(&redis)).await;
        }
    }
}

/// One device per key against two, alternating (1, 2, 1, 2) against one
/// router, flat out and at half the offered rate.
async fn devices_only() {
    let pairs = env("BENCH_PAIRS", 50) as usize;
    let secs = env("BENCH_SECS", 5);
    let rate = env("BENCH_RATE", 10_000);
    let window = env("BENCH_WINDOW", 128) as usize;
    println!("router_load devices: {pairs} pairs, {secs} s windows, sender window {window}");
    let data = tempfile::tempdir().unwrap();
    let router = start_router(data.path());
    let dur = Duration::from_secs(secs);
    for round in 1..=2 {
        let one = load(&Target::one(&router), pairs, None, window, dur, 1).await;
        report(&format!("round {round}, 1 device "), &one);
        let two = load(&Target::one(&router), pairs, None, window, dur, 2).await;
        report(&format!("round {round}, 2 devices"), &two);
        compare_devices(&one, &two);
    }
    let offered = rate / 2;
    let one = load(&Target::one(&router), pairs, Some(offered), window, dur, 1).await;
    report(&format!("1 device  @ {offered}/s"), &one);
    let two = load(&Target::one(&router), pairs, Some(offered), window, dur, 2).await;
    report(&format!("2 devices @ {offered}/s"), &two);
    compare_devices(&one, &two);
}

/// The second device's cost: router CPU per message with two devices per
/// receiving key over that with one.
fn compare_devices(one: &Outcome, two: &Outcome) {
    println!(
        "  CPU per message: 1 device {:.1} us, 2 devices {:.1} us = {:.2}x (target <= 1.5x); messages/s {:.0} -> {:.0}; accepted/received per device in the span {}/{} and {}/{}",
        one.cpu_us_per_msg,
        two.cpu_us_per_msg,
        two.cpu_us_per_msg / one.cpu_us_per_msg.max(f64::MIN_POSITIVE),
        one.rate,
        two.rate,
        one.accepted,
        one.received_per_device,
        two.accepted,
        two.received_per_device,
    );
}

/// A real router with its queue in `data`, limits raised so the load is
/// not throttled.
fn start_router(data: &std::path::Path) -> Server {
    let mut cmd = router_command();
    cmd.args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args(["--max-rate", "1000000", "--max-queued", "100000000"])
        .args(["--max-connections", &max_connections().to_string()])
        // Idle sessions are held without reading, so never answer pings:
        // heartbeats once an hour keep them from being reaped while tens of
        // thousands of others sign in.
        .args(["--ping-interval", "3600"]);
    Server::start(cmd)
}

/// Connections the routers should allow: every idle session and the
/// pairs', with room to spare (at least the 19,000 of earlier runs).
fn wanted_connections() -> u64 {
    (env("BENCH_IDLE", 10_000) + 4 * env("BENCH_PAIRS", 50) + 1_000).max(19_000)
}

/// [`wanted_connections`], as far as the descriptor limit allows (the
/// routers inherit this process's, and refuse a `--max-connections` they
/// cannot hold).
fn max_connections() -> u64 {
    wanted_connections().min(own_fd_limit().saturating_sub(chat_p2p::router::limits::RESERVED_FDS))
}

/// The descriptors this process may open.
fn own_fd_limit() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE)
        .map(|(soft, _)| soft)
        .unwrap_or(u64::MAX)
}

/// Idle sessions that fit: both ends need a descriptor, the router's
/// (its `--max-connections`) and this process's, with some left for the
/// rest of each.
fn idle_capacity() -> usize {
    let ours = own_fd_limit().saturating_sub(300);
    usize::try_from(ours.min(max_connections()).saturating_sub(100)).unwrap_or(usize::MAX)
}

/// Raises this process's descriptor limit (inherited by the routers it
/// starts, which raise their own too) for the idle sessions' client ends:
/// the soft limit to the hard one, and both beyond when privileged.
fn raise_own_fds() {
    use rlimit::{getrlimit, setrlimit, Resource};
    let want = wanted_connections() + 1_000;
    let Ok((soft, hard)) = getrlimit(Resource::NOFILE) else {
        return;
    };
    if hard < want && setrlimit(Resource::NOFILE, want, want).is_ok() {
        return;
    }
    if soft < hard {
        let _ = setrlimit(Resource::NOFILE, hard, hard);
    }
    if let Ok((soft, _)) = getrlimit(Resource::NOFILE) {
        if soft < want {
            eprintln!(
                "router_load: only {soft} file descriptors (want {want}), and the hard limit cannot be raised \
                 (that takes root with CAP_SYS_RESOURCE): idle sessions are capped to fit; raise `ulimit -n`"
            );
        }
    }
}

/// The release `chat-p2p` binary, under `BENCH_ROUTER_WRAP` if set (e.g.
/// `valgrind --tool=callgrind` profiles the router), with a clean
/// environment and `RUST_LOG` from `BENCH_ROUTER_LOG` (default `warn`).
fn router_command() -> Command {
    let wrap = std::env::var("BENCH_ROUTER_WRAP").unwrap_or_default();
    let mut wrap = wrap.split_whitespace();
    // Another build (e.g. the parent commit's, copied aside) as the
    // baseline: BENCH_ROUTER_BIN.
    let bin = std::env::var("BENCH_ROUTER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_chat-p2p").to_owned());
    let mut cmd = match wrap.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(wrap).arg(&bin);
            cmd
        }
        None => Command::new(&bin),
    };
    cmd.env_clear().env(
        "RUST_LOG",
        std::env::var("BENCH_ROUTER_LOG").unwrap_or_else(|_| "warn".to_owned()),
    );
    cmd
}

struct Outcome {
    /// Messages per second (each counted once, however many devices got
    /// it), sent in the measuring window.
    rate: f64,
    delivered: u64,
    p50_us: u64,
    p99_us: u64,
    max_us: u64,
    errors: u64,
    /// Server CPU while sending, in % of one core.
    cpu: f64,
    /// Server CPU (user + system) per message accepted while it was
    /// measured, in microseconds.
    cpu_us_per_msg: f64,
    /// Frames accepted while the CPU was measured.
    accepted: u64,
    /// Frames each device received in that span (on average): close to
    /// `accepted` when delivery kept up.
    received_per_device: u64,
    /// The load generator's own CPU (this process, all threads) per message
    /// accepted, in microseconds: it shares the cores with the servers.
    gen_cpu_us_per_msg: f64,
    /// What the Redis behind the routers did in the span, if any.
    redis: Option<RedisSpan>,
}

/// What the Redis server did while a load was measured.
struct RedisSpan {
    /// CPU in % of one core.
    cpu: f64,
    /// CPU (user + system, all threads) per message accepted, in µs.
    cpu_us_per_msg: f64,
    /// Commands run per message accepted, scripts' inner calls included.
    commands_per_msg: f64,
    /// Script runs (EVALSHA) per message accepted.
    scripts_per_msg: f64,
    /// Every command's calls per message and time per call.
    breakdown: String,
    /// `fdatasync`s and event-loop iterations, if perf counted them.
    syscalls: Option<SyscallRates>,
}

/// Redis' `fdatasync`s and event-loop iterations (`epoll_wait`s) over a
/// measured span.
struct SyscallRates {
    fsyncs_per_sec: f64,
    loops_per_sec: f64,
    reads_per_sec: f64,
    /// Messages accepted per `fdatasync` (0 when there was none).
    msgs_per_fsync: f64,
}

/// What the clients dial, and whose CPU counts as the server's.
struct Target<'a> {
    /// Pair i's sender dials `servers[i % n]` and its receivers
    /// `servers[(i + 1) % n]`: with two routers, half the pairs send
    /// through router 1 to router 2 and half the other way, so every frame
    /// crosses routers (through Redis pub/sub).
    servers: Vec<&'a Server>,
    /// The Redis behind the routers, measured too.
    redis: Option<&'a on_redis::BenchRedis>,
}

impl<'a> Target<'a> {
    /// One server, no Redis.
    fn one(server: &'a Server) -> Target<'a> {
        Target {
            servers: vec![server],
            redis: None,
        }
    }

    /// CPU seconds the servers (not Redis) used so far.
    fn cpu_secs(&self) -> f64 {
        self.servers.iter().map(|s| s.cpu_secs()).sum()
    }
}

fn report(name: &str, o: &Outcome) {
    println!(
        "{name}: {:>8.0} msg/s delivered ({} in window), latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, errors {}, server CPU {:.0}% ({:.1} us/msg), generator {:.1} us/msg",
        o.rate,
        o.delivered,
        o.p50_us as f64 / 1000.0,
        o.p99_us as f64 / 1000.0,
        o.max_us as f64 / 1000.0,
        o.errors,
        o.cpu,
        o.cpu_us_per_msg,
        o.gen_cpu_us_per_msg,
    );
    if let Some(r) = &o.redis {
        let syscalls = match &r.syscalls {
            Some(c) => format!(
                "{:.0} fdatasync/s ({:.1} msg each), {:.0} event loops/s, {:.0} reads/s",
                c.fsyncs_per_sec, c.msgs_per_fsync, c.loops_per_sec, c.reads_per_sec
            ),
            None => "fsyncs not counted (perf unavailable or BENCH_PERF=0)".to_owned(),
        };
        println!(
            "    redis-server: CPU {:.0}% ({:.1} us/msg), {:.2} commands/msg ({:.2} scripts), {syscalls}\n    commands per msg: {}",
            r.cpu, r.cpu_us_per_msg, r.commands_per_msg, r.scripts_per_msg, r.breakdown
        );
    }
}

async fn connect(addr: &str, id: &Identity) -> Ws {
    connect_device(addr, id, Uuid::new_v4()).await
}

/// Connects as `device` of `id`.
async fn connect_device(addr: &str, id: &Identity, device: Uuid) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(session_url(addr, id))
        .await
        .expect("connect");
    sign_in(ws, addr, id, device).await
}

/// The URL a session of `id` opens on the router at `addr`.
fn session_url(addr: &str, id: &Identity) -> String {
    let text = id.public_key().to_base64();
    let key = percent_encoding::utf8_percent_encode(&text, percent_encoding::NON_ALPHANUMERIC);
    format!("ws://{addr}/ws?pub={key}")
}

/// An idle session as cheap as the client side can hold it: its socket
/// bound to `source` (one loopback address gives about 28,000 ephemeral
/// ports, so 100,000 sessions need several), a 4 KiB read buffer for the
/// handshake, then only the TCP socket once signed in.
async fn idle_session(addr: &str, id: &Identity, source: std::net::Ipv4Addr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(std::net::SocketAddr::from((source, 0)))
        .expect("bind a client socket to its source address");
    let tcp = socket
        .connect(addr.parse().expect("router address"))
        .await
        .expect("connect");
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        session_url(addr, id),
        MaybeTlsStream::Plain(tcp),
        Some(config),
    )
    .await
    .expect("WebSocket handshake");
    match sign_in(ws, addr, id, Uuid::new_v4()).await.into_inner() {
        MaybeTlsStream::Plain(tcp) => tcp,
        _ => unreachable!("a plain TCP stream was given"),
    }
}

/// Signs `ws` in as `device` of `id`: challenge, auth, ready.
async fn sign_in(mut ws: Ws, addr: &str, id: &Identity, device: Uuid) -> Ws {
    let nonce = loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            match protocol::parse(t.as_str()).unwrap() {
                Frame::Challenge(c) => break c.nonce,
                other => panic!("{other:?}"),
            }
        }
    };
    let router = protocol::router_name(&format!("ws://{addr}/ws")).unwrap();
    let who = protocol::AuthFor {
        device: &device,
        name: "bench",
        router: &router,
    };
    let auth = protocol::sign_challenge(id, protocol::VERSION, &nonce, who);
    ws.send(Message::text(protocol::to_text(&Frame::Auth(auth))))
        .await
        .unwrap();
    loop {
        if let Message::Text(t) = ws.next().await.unwrap().unwrap() {
            match protocol::parse(t.as_str()).unwrap() {
                Frame::Ready(_) => return ws,
                other => panic!("{other:?}"),
            }
        }
    }
}

/// A message template whose id is swapped per send: sealing (an X25519
/// agreement and a signature) per message would measure the generator.
struct Template {
    pre: String,
    post: String,
}

impl Template {
    fn new(from: &Identity, to: &PublicKey) -> Template {
        let placeholder = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        let body = "x".repeat(100);
        let m = protocol::seal(
            from,
            to,
            placeholder,
            &chat_p2p::clock::now(),
            &Content::text(body),
        )
        .unwrap();
        let text = protocol::to_text(&Frame::Message(m));
        let (pre, post) = text.split_once(&placeholder.to_string()).unwrap();
        Template {
            pre: pre.to_owned(),
            post: post.to_owned(),
        }
    }

    /// A frame whose id carries the send time (first 8 bytes) and a counter.
    fn frame(&self, counter: u64) -> String {
        let id = Uuid::from_u64_pair(nanos(), counter);
        format!("{}{}{}", self.pre, id, self.post)
    }
}

struct Shared {
    stop_sending: AtomicBool,
    stop_all: AtomicBool,
    /// Frames the server acked (accepted) while the CPU was measured.
    accepted: AtomicU64,
    /// Frames devices received while the CPU was measured.
    received: AtomicU64,
    /// Whether the CPU is being measured.
    measuring: AtomicBool,
    measure_from: u64,
    measure_to: u64,
    delivered: AtomicU64,
    errors: AtomicU64,
    latencies: Mutex<Vec<u32>>,
}

/// Runs `pairs` senders flat out (or at `offered` msg/s in total), each to
/// its own key received by `devices` devices (sessions of that key with
/// different device ids, each acking every frame).
async fn load(
    target: &Target<'_>,
    pairs: usize,
    offered: Option<u64>,
    window: usize,
    dur: Duration,
    devices: usize,
) -> Outcome {
    let n = target.servers.len();
    let warmup = Duration::from_secs(1);
    let mut conns = Vec::new();
    for i in 0..pairs {
        let send_to = target.servers[i % n].addr.as_str();
        let receive_from = target.servers[(i + 1) % n].addr.as_str();
        let (s, r) = (Identity::generate(), Identity::generate());
        let template = Template::new(&s, &r.public_key());
        let sws = connect(send_to, &s).await;
        let mut receivers = Vec::new();
        for _ in 0..devices {
            receivers.push(connect_device(receive_from, &r, Uuid::new_v4()).await);
        }
        conns.push((template, sws, receivers));
    }
    let start = nanos();
    let shared = Arc::new(Shared {
        stop_sending: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        received: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        measure_from: start + warmup.as_nanos() as u64,
        measure_to: start + (warmup + dur).as_nanos() as u64,
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
    });
    let per_pair = offered.map(|r| r as f64 / pairs as f64);
    let mut tasks = Vec::new();
    for (template, sws, receivers) in conns {
        for rws in receivers {
            tasks.push(tokio::spawn(receiver(rws, Arc::clone(&shared))));
        }
        tasks.push(tokio::spawn(sender(
            sws,
            template,
            per_pair,
            window,
            Arc::clone(&shared),
        )));
    }
    // CPU, Redis' commands and accepted frames over the same span, after
    // the warm-up.
    tokio::time::sleep(warmup).await;
    let redis0 = target.redis.map(|r| {
        (
            r.cpu_secs(),
            r.commands(),
            on_redis::Syscalls::start(r.pid(), dur.as_secs_f64()),
        )
    });
    let (cpu0, gen0, wall0) = (target.cpu_secs(), own_cpu_secs(), Instant::now());
    shared.measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(dur).await;
    shared.measuring.store(false, Ordering::Relaxed);
    let cpu_secs = target.cpu_secs() - cpu0;
    let gen_secs = own_cpu_secs() - gen0;
    let wall = wall0.elapsed().as_secs_f64();
    let accepted = shared.accepted.load(Ordering::Relaxed);
    let redis = match (target.redis, redis0) {
        (Some(r), Some((rcpu0, cmds0, syscalls))) => {
            let rcpu = r.cpu_secs() - rcpu0;
            let cmds = cmds0.delta(&r.commands());
            let counted = tokio::task::spawn_blocking(move || syscalls.finish())
                .await
                .ok()
                .flatten();
            let per_msg = |v: u64| v as f64 / accepted.max(1) as f64;
            Some(RedisSpan {
                cpu: 100.0 * rcpu / wall,
                cpu_us_per_msg: 1e6 * rcpu / accepted.max(1) as f64,
                commands_per_msg: per_msg(cmds.total()),
                scripts_per_msg: per_msg(cmds.scripts()),
                breakdown: cmds.per_frame(accepted),
                syscalls: counted.map(|c| SyscallRates {
                    fsyncs_per_sec: c.fsyncs as f64 / wall,
                    loops_per_sec: c.loops as f64 / wall,
                    reads_per_sec: c.reads as f64 / wall,
                    msgs_per_fsync: if c.fsyncs == 0 {
                        0.0
                    } else {
                        accepted as f64 / c.fsyncs as f64
                    },
                }),
            })
        }
        _ => None,
    };
    let cpu = 100.0 * cpu_secs / wall;
    let received = shared.received.load(Ordering::Relaxed);
    shared.stop_sending.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    shared.stop_all.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    let mut lat = std::mem::take(&mut *shared.latencies.lock().unwrap());
    lat.sort_unstable();
    let pct = |p: f64| {
        if lat.is_empty() {
            0
        } else {
            u64::from(lat[((lat.len() - 1) as f64 * p) as usize])
        }
    };
    // Each device counts what it got: a message is delivered once per device.
    let delivered = shared.delivered.load(Ordering::Relaxed) / devices.max(1) as u64;
    Outcome {
        cpu_us_per_msg: 1e6 * cpu_secs / accepted.max(1) as f64,
        accepted,
        received_per_device: received / devices.max(1) as u64,
        rate: delivered as f64 / dur.as_secs_f64(),
        delivered,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
        max_us: lat.last().copied().map(u64::from).unwrap_or(0),
        errors: shared.errors.load(Ordering::Relaxed),
        cpu,
        gen_cpu_us_per_msg: 1e6 * gen_secs / accepted.max(1) as f64,
        redis,
    }
}

/// CPU seconds this process (the load generator) used so far.
fn own_cpu_secs() -> f64 {
    cpu_secs_of(std::process::id())
}

async fn sender(
    ws: Ws,
    template: Template,
    per_sec: Option<f64>,
    window: usize,
    shared: Arc<Shared>,
) {
    let (mut sink, stream) = ws.split();
    let permits = Arc::new(Semaphore::new(window));
    let acks = tokio::spawn(ack_reader(
        stream,
        Arc::clone(&permits),
        Arc::clone(&shared),
    ));
    let mut counter = 0u64;
    let tick = Duration::from_millis(5);
    let mut interval = tokio::time::interval(tick);
    let mut budget = 0.0f64;
    while !shared.stop_sending.load(Ordering::Relaxed) {
        let burst = match per_sec {
            Some(r) => {
                interval.tick().await;
                budget += r * tick.as_secs_f64();
                let n = budget.floor();
                budget -= n;
                n as usize
            }
            None => 16,
        };
        for _ in 0..burst {
            let Ok(p) = permits.acquire().await else {
                return;
            };
            p.forget();
            counter += 1;
            if sink
                .feed(Message::text(template.frame(counter)))
                .await
                .is_err()
            {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
    while !shared.stop_all.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = sink.close().await;
    acks.abort();
}

async fn ack_reader(mut stream: SplitStream<Ws>, permits: Arc<Semaphore>, shared: Arc<Shared>) {
    while let Some(Ok(msg)) = stream.next().await {
        if let Message::Text(t) = msg {
            match protocol::parse(t.as_str()) {
                Ok(Frame::Ack(_)) => {
                    if shared.measuring.load(Ordering::Relaxed) {
                        shared.accepted.fetch_add(1, Ordering::Relaxed);
                    }
                    permits.add_permits(1);
                }
                Ok(Frame::Error(_)) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    permits.add_permits(1);
                }
                _ => {}
            }
        }
    }
}

#[derive(serde::Deserialize)]
struct IdOnly {
    id: Uuid,
}

async fn receiver(ws: Ws, shared: Arc<Shared>) {
    let (mut sink, mut stream): (SplitSink<Ws, Message>, SplitStream<Ws>) = ws.split();
    let mut lat = Vec::new();
    let mut acks = Vec::new();
    loop {
        if shared.stop_all.load(Ordering::Relaxed) {
            break;
        }
        let first = match tokio::time::timeout(Duration::from_millis(100), stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(_) => break,
            Err(_) => continue,
        };
        let mut next = Some(first);
        while let Some(msg) = next {
            if let Message::Text(t) = msg {
                // Only the id: opening each message would measure the
                // generator's crypto, not the server.
                if let Ok(m) = serde_json::from_str::<IdOnly>(t.as_str()) {
                    let now = nanos();
                    let (sent, _) = m.id.as_u64_pair();
                    if sent >= shared.measure_from && sent < shared.measure_to {
                        shared.delivered.fetch_add(1, Ordering::Relaxed);
                        lat.push(((now - sent) / 1000).min(u64::from(u32::MAX)) as u32);
                    }
                    if shared.measuring.load(Ordering::Relaxed) {
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                    acks.push(m.id);
                }
            }
            next = stream.next().now_or_never().flatten().and_then(Result::ok);
        }
        for id in acks.drain(..) {
            let ack = protocol::to_text(&Frame::Ack(Ack { id, at: None }));
            if sink.feed(Message::text(ack)).await.is_err() {
                break;
            }
        }
        let _ = sink.flush().await;
    }
    shared.latencies.lock().unwrap().extend(lat);
    let _ = sink.close().await;
}

/// Receivers that authenticate and then never read: the router must keep
/// its memory bounded (frames stay in the queue, sessions get dropped).
async fn stalled(router: &Server, pairs: usize, window: usize, dur: Duration) {
    let before = router.rss_kb();
    let mut held = Vec::new();
    let shared = Arc::new(Shared {
        stop_sending: AtomicBool::new(false),
        stop_all: AtomicBool::new(false),
        accepted: AtomicU64::new(0),
        received: AtomicU64::new(0),
        measuring: AtomicBool::new(false),
        measure_from: 0,
        measure_to: 0,
        delivered: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        latencies: Mutex::new(Vec::new()),
    });
    let mut tasks = Vec::new();
    for _ in 0..pairs {
        let (s, r) = (Identity::generate(), Identity::generate());
        let template = Template::new(&s, &r.public_key());
        held.push(connect(&router.addr, &r).await);
        let sws = connect(&router.addr, &s).await;
        tasks.push(tokio::spawn(sender(
            sws,
            template,
            None,
            window,
            Arc::clone(&shared),
        )));
    }
    let mut peak = before;
    let end = Instant::now() + dur;
    while Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(100)).await;
        peak = peak.max(router.rss_kb());
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    shared.stop_all.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
    }
    drop(held);
    println!(
        "stalled receivers ({pairs} pairs, {} s, senders flat out): router RSS {} MB before, peak {} MB (target: bounded)",
        dur.as_secs(),
        before / 1024,
        peak / 1024
    );
}

/// `n` authenticated idle sessions on `router`: its RSS per session, and
/// with `redis`, Redis' memory per session (device records, claims).
async fn idle_sessions(router: &Server, n: usize, redis: Option<&on_redis::BenchRedis>) {
    idle_steps(router, &[n], redis).await;
}

/// Authenticated idle sessions on `router`, up to each count of `steps` in
/// turn (ascending; the sessions of one step stay for the next): the
/// router's RSS and its break-down (`smaps_rollup`) at each.
async fn idle_steps(router: &Server, steps: &[usize], redis: Option<&on_redis::BenchRedis>) {
    let before = router.rss_kb();
    let redis_before = redis.map(redis_compare::Snapshot::take);
    let mut held: Vec<TcpStream> = Vec::new();
    let started = Instant::now();
    let cap = idle_capacity();
    let mut steps: Vec<usize> = steps.iter().map(|&n| n.min(cap)).collect();
    steps.dedup();
    if steps.last().is_some_and(|&n| n == cap) {
        println!(
            "idle sessions: capped at {cap} by the file descriptor limit ({} here; each session takes one in the router and one in this process)",
            own_fd_limit()
        );
    }
    for n in steps {
        let (tx, mut rx) = mpsc::channel(1024);
        let gate = Arc::new(Semaphore::new(200));
        for i in held.len()..n {
            let addr = router.addr.clone();
            let tx = tx.clone();
            let gate = Arc::clone(&gate);
            // 10,000 sessions per source address, from 127.P.0.2 up with
            // P from the process id: the ports of an earlier run's
            // sockets wait out TIME_WAIT on its own addresses.
            let base = u32::from_be_bytes([127, (1 + std::process::id() % 250) as u8, 0, 2]);
            let source = std::net::Ipv4Addr::from(base + (i / 10_000) as u32);
            tokio::spawn(async move {
                let _p = gate.acquire().await;
                let id = Identity::generate();
                let tcp = idle_session(&addr, &id, source).await;
                let _ = tx.send(tcp).await;
            });
        }
        drop(tx);
        while held.len() < n {
            match rx.recv().await {
                Some(tcp) => held.push(tcp),
                None => break,
            }
        }
        // Let the router settle (allocator, buffers) before reading RSS.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = router.rss_kb();
        println!(
            "idle sessions: {} authenticated ({:.0} s in); router RSS {:.1} MB before, {:.1} MB with them ({:.2} KB per session; target: 100,000 under 1.2 GB)",
            held.len(),
            started.elapsed().as_secs_f64(),
            before as f64 / 1024.0,
            after as f64 / 1024.0,
            (after.saturating_sub(before)) as f64 / held.len().max(1) as f64
        );
        println!("    router smaps_rollup: {}", router.smaps_rollup());
    }
    if let (Some(r), Some(logins)) = (redis, redis_before) {
        redis_compare::idle_costs(router, r, held.len(), logins).await;
    }
}

/// The baseline: same WebSocket library, same handshake and parsing, no
/// storage, no limits beyond bounded channels.
mod forwarder {
    use super::*;
    use chat_p2p::protocol::Challenge;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    type Peers = Arc<Mutex<HashMap<PublicKey, mpsc::Sender<String>>>>;

    pub async fn run() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("listening on {}", listener.local_addr().unwrap());
        let peers: Peers = Arc::default();
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let _ = stream.set_nodelay(true);
            tokio::spawn(conn(stream, Arc::clone(&peers)));
        }
    }

    // The handshake callback's signature is tungstenite's.
    #[allow(clippy::result_large_err)]
    async fn conn(stream: TcpStream, peers: Peers) {
        let mut key = None;
        let cb = |req: &Request, resp: Response| {
            let q = req.uri().query().unwrap_or("");
            let v = q.strip_prefix("pub=").unwrap_or("");
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            key = PublicKey::parse(&v).ok();
            Ok(resp)
        };
        let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
            .read_buffer_size(4096);
        let Ok(ws) =
            tokio_tungstenite::accept_hdr_async_with_config(stream, cb, Some(config)).await
        else {
            return;
        };
        let Some(key) = key else { return };
        let (mut sink, mut stream) = ws.split();
        let nonce = [7u8; 32];
        let challenge = Frame::Challenge(Challenge {
            versions: vec![1],
            nonce,
        });
        let _ = sink
            .send(Message::text(protocol::to_text(&challenge)))
            .await;
        let Some(Ok(Message::Text(t))) = stream.next().await else {
            return;
        };
        let Ok(Frame::Auth(a)) = protocol::parse(t.as_str()) else {
            return;
        };
        if !protocol::verify_auth(&key, &nonce, &a) {
            return;
        }
        let ready = Frame::Ready(protocol::Ready {
            version: 1,
            key,
            max_frame_bytes: None,
        });
        let _ = sink.send(Message::text(protocol::to_text(&ready))).await;
        let (tx, mut rx) = mpsc::channel::<String>(1024);
        peers.lock().unwrap().insert(key, tx.clone());
        let writer = tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut next = Some(first);
                while let Some(text) = next {
                    if sink.feed(Message::text(text)).await.is_err() {
                        return;
                    }
                    next = rx.try_recv().ok();
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(msg)) = stream.next().await {
            let Message::Text(t) = msg else { continue };
            if let Ok(Frame::Message(m)) = protocol::parse(t.as_str()) {
                let to = peers.lock().unwrap().get(&m.to).cloned();
                if let Some(to) = to {
                    let _ = to.send(t.as_str().to_owned()).await;
                }
                let ack = Frame::Ack(Ack {
                    id: m.id,
                    at: Some(chat_p2p::clock::now()),
                });
                let _ = tx.send(protocol::to_text(&ack)).await;
            }
        }
        peers.lock().unwrap().remove(&key);
        writer.abort();
    }
}

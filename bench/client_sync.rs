//! Benchmark: a client coming back to a long queue.
//!
//! Fills a real router (the release binary) with N messages for bob
//! (default 100,000), then times `chat-p2p sync` for bob as a whole
//! process: verify, decrypt, store and ack every message, and queue the
//! delivered receipts. Reports messages/s and peak RSS (`/usr/bin/time`),
//! median of the runs.
//!
//! Run: `cargo bench --bench client_sync` (or `-- N RUNS`). To profile the
//! sync, set `CLIENT_SYNC_WRAP="valgrind --tool=callgrind"`. To compare
//! with another build in the same run, set `CLIENT_SYNC_BASELINE` to its
//! `chat-p2p` binary: every run then also syncs a second profile, filled
//! the same way, with that binary (against the same router). `BENCH_BIN`
//! replaces the build under test (and the router) with another binary,
//! e.g. one built with other profile settings.
//! `CLIENT_SYNC_ROUTER_ARGS="--delivery-window 1024"` passes options to the
//! router.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use chat_p2p::client::connection::ServerUrl;
use chat_p2p::identity::Identity;
use chat_p2p::protocol::{self, Content};

#[path = "common.rs"]
mod common;

use common::{bin, cores, median};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    let dir = tempfile::tempdir().expect("temp dir");
    let home = dir.path().join("home");
    let (mut router, url) = common::start_router(
        &dir.path().join("router"),
        2 * n,
        &std::env::var("CLIENT_SYNC_ROUTER_ARGS")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    );

    let alice = Identity::generate();
    let bob = new_profile(&bin(), &home, &alice);
    let baseline = std::env::var("CLIENT_SYNC_BASELINE")
        .ok()
        .filter(|b| !b.is_empty())
        .map(|bin| {
            let home = dir.path().join("baseline");
            let key = new_profile(&bin, &home, &alice);
            (bin, home, key)
        });

    println!(
        "client_sync: {n} queued messages, {runs} run(s), {} cores",
        cores()
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut rates = Vec::new();
    let mut rss = Vec::new();
    let mut base_rates = Vec::new();
    let mut base_rss = Vec::new();
    for run in 1..=runs {
        if let Some((bin, home, key)) = &baseline {
            rt.block_on(common::fill(&url, &alice, key, n, None, 2_000));
            let (wall, kib, received, cpu) = timed_sync(bin, home, &url);
            assert_eq!(received, n, "baseline sync received {received} of {n}");
            let rate = n as f64 / wall.as_secs_f64();
            println!(
                "  run {run}, baseline {bin}: sync {:.2}s = {rate:.0} msg/s, {:.1} µs CPU/msg, peak RSS {:.1} MiB",
                wall.as_secs_f64(),
                cpu * 1e6 / n as f64,
                kib as f64 / 1024.0
            );
            base_rates.push(rate);
            base_rss.push(kib as f64);
        }
        let t = Instant::now();
        rt.block_on(common::fill(&url, &alice, &bob, n, None, 2_000));
        let fill = t.elapsed();
        let (wall, kib, received, cpu) = timed_sync(&bin(), &home, &url);
        assert_eq!(received, n, "sync received {received} of {n}");
        let rate = n as f64 / wall.as_secs_f64();
        println!(
            "  run {run}: filled in {:.2}s ({:.0} msg/s through the router); sync {:.2}s = {:.0} msg/s, {:.1} µs CPU/msg, peak RSS {:.1} MiB",
            fill.as_secs_f64(),
            n as f64 / fill.as_secs_f64(),
            wall.as_secs_f64(),
            rate,
            cpu * 1e6 / n as f64,
            kib as f64 / 1024.0
        );
        rates.push(rate);
        rss.push(kib);
    }
    println!(
        "median: {:.0} msg/s, peak RSS {:.1} MiB (target: >= 40,000 msg/s, bounded memory)",
        median(&mut rates),
        median(&mut rss.iter().map(|&k| k as f64).collect::<Vec<_>>()) / 1024.0
    );
    if !base_rates.is_empty() {
        println!(
            "baseline build, same run: median {:.0} msg/s, peak RSS {:.1} MiB",
            median(&mut base_rates),
            median(&mut base_rss) / 1024.0
        );
    }
    let (strict, open) = crypto_baseline(&alice, n.min(20_000));
    println!(
        "baseline, same run, in-process on one core: verify_strict alone {strict:.0} msg/s; \
         verify_strict + decrypt {open:.0} msg/s (what one-message-at-a-time crypto allows \
         before any storage)"
    );
    let _ = router.kill();
    let _ = router.wait();
}

/// A fresh profile in `home` (made by `bin`) with alice as a contact;
/// returns its key.
fn new_profile(bin: &str, home: &Path, alice: &Identity) -> chat_p2p::identity::PublicKey {
    cli(bin, home, &["init"]);
    cli(
        bin,
        home,
        &["add-contact", "alice", &alice.public_key().to_base64()],
    );
    chat_p2p::identity::PublicKey::parse(cli(bin, home, &["whoami", "--key"]).trim())
        .expect("bob's key")
}

fn cli(bin: &str, home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin)
        .env("CHAT_HOME", home)
        .env("CHAT_PROFILE", "bob")
        .args(args)
        .output()
        .expect("run chat-p2p");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `sync` for bob under `/usr/bin/time`; returns wall time, peak RSS
/// in KiB, how many messages it received and its CPU time (user + system,
/// all threads) in seconds.
fn timed_sync(bin: &str, home: &Path, url: &ServerUrl) -> (Duration, u64, usize, f64) {
    let t = Instant::now();
    // CLIENT_SYNC_WRAP="valgrind --tool=callgrind" profiles the sync.
    let wrap = std::env::var("CLIENT_SYNC_WRAP").unwrap_or_default();
    let out = Command::new("/usr/bin/time")
        .args(["-f", "%U %S %M"])
        .args(wrap.split_whitespace())
        .arg(bin)
        .env("CHAT_HOME", home)
        .env("CHAT_PROFILE", "bob")
        .args([
            "sync",
            "--json",
            "--timeout",
            "600",
            "--server",
            &url.to_string(),
        ])
        .output()
        .expect("run /usr/bin/time (apt-get install time)");
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let fields: Vec<f64> = stderr
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|f| f.parse().ok())
        .collect();
    let (cpu, kib) = match fields[..] {
        [user, sys, kib] => (user + sys, kib as u64),
        _ => (0.0, 0),
    };
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).expect("sync --json");
    let received = summary["received"].as_u64().unwrap_or(0) as usize;
    (wall, kib, received, cpu)
}

/// What one core does with one message at a time: `verify_strict`, and
/// `protocol::open` (verify, derive the key, decrypt, parse) per message.
fn crypto_baseline(alice: &Identity, n: usize) -> (f64, f64) {
    let bob = Identity::generate();
    let ts = chat_p2p::clock::now();
    let frames: Vec<_> = (0..n)
        .map(|i| {
            let content = Content::text(format!("message number {i} about the usual things"));
            protocol::seal(
                alice,
                &bob.public_key(),
                uuid::Uuid::now_v7(),
                &ts,
                &content,
            )
            .expect("seal")
        })
        .collect();
    let t = Instant::now();
    for f in &frames {
        protocol::verify_message(f).expect("valid");
    }
    let strict = n as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for f in &frames {
        protocol::open(&bob, f).expect("opens");
    }
    let open = n as f64 / t.elapsed().as_secs_f64();
    (strict, open)
}

//! Benchmark: what delivering to several home routers costs a client
//! (issue 11).
//!
//! Starts real routers (the release binary) and times `chat-p2p sync` as a
//! whole process, twice per run: with every peer on one router, and with
//! the peers' homes spread over five routers (the profile's own home is one
//! of the five). Fresh routers and a fresh profile for every measurement.
//!
//! - **outbox**: the profile has N pending messages (default 20,000) to 20
//!   contacts, written straight into its database (as `send --queue`
//!   would, in one transaction), and `sync` sends them all: to the home
//!   session, or through one control session per other router (the
//!   courier). Every message also sends its copy for the other devices to
//!   the home router, in both cases.
//! - **inbound**: N messages wait for the profile at its home router, from
//!   20 contacts; `sync` receives them and sends the delivered receipts
//!   to each sender's home router (all the home router, or five).
//!
//! Reports messages/s for each (median of the runs) and the ratio
//! five routers / one router (target: at least 80%).
//!
//! Run: `cargo bench --bench home_routers` (or `-- N RUNS [outbox|inbound]`).
//! To profile a sync, set `CLIENT_SYNC_WRAP="valgrind --tool=callgrind"`
//! (or `perf record -g`) as for `client_sync`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chat_p2p::client::connection::ServerUrl;
use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::store::{ContactName, Store};

#[path = "common.rs"]
mod common;

use common::{bin, cores, median};

/// How many peers the profile writes to or hears from.
const PEERS: usize = 20;

/// How many routers the spread case uses.
const ROUTERS: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    Outbox,
    Inbound,
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let n: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let runs: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(3);
    // A third argument, `outbox` or `inbound`, runs that case alone.
    let only = args.get(2).map(String::as_str);
    println!(
        "home_routers: {n} messages, {PEERS} peers, 1 router vs {ROUTERS}, {runs} run(s), {} cores",
        cores()
    );
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    for case in [Case::Outbox, Case::Inbound] {
        let name = format!("{case:?}").to_lowercase();
        if only.is_some_and(|o| o != name) {
            continue;
        }
        let mut one = Vec::new();
        let mut five = Vec::new();
        for run in 1..=runs {
            // Alternate which goes first, so neither always runs on a
            // warmer (or more tired) machine.
            let order = if run % 2 == 1 {
                [1, ROUTERS]
            } else {
                [ROUTERS, 1]
            };
            for routers in order {
                let rate = measure(&rt, case, n, routers);
                println!("  {case:?} run {run}, {routers} router(s): {rate:.0} msg/s");
                if routers == 1 {
                    one.push(rate);
                } else {
                    five.push(rate);
                }
            }
        }
        let (one, five) = (median(&mut one), median(&mut five));
        println!(
            "{case:?}: median 1 router {one:.0} msg/s, {ROUTERS} routers {five:.0} msg/s, \
             ratio {:.0}% (target: >= 80%)",
            100.0 * five / one
        );
    }
}

/// One measurement: fresh routers, a fresh profile, one timed `sync`.
/// Returns messages per second.
fn measure(rt: &tokio::runtime::Runtime, case: Case, n: usize, routers: usize) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut children = Vec::new();
    let mut urls = Vec::new();
    for i in 0..routers {
        let (child, url) = common::start_router(&dir.path().join(format!("router{i}")), n, &[]);
        children.push(child);
        urls.push(url);
    }
    let home = &urls[0];
    let chat_home = dir.path().join("home");
    cli(&chat_home, &["init", "--device-name", "bench"]);
    let db: PathBuf = {
        let json = cli(&chat_home, &["whoami", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&json).expect("whoami --json");
        PathBuf::from(v["database"].as_str().expect("database path"))
    };
    let me = PublicKey::parse(cli(&chat_home, &["whoami", "--key"]).trim()).expect("own key");
    let peers: Vec<Identity> = (0..PEERS).map(|_| Identity::generate()).collect();
    // Peer i's home: router i mod `routers` (0 is the profile's own home,
    // written as "the same router as mine").
    let peer_home = |i: usize| &urls[i % routers];
    {
        let mut store = Store::open(&db).expect("open the profile");
        store.adopt_home(home).expect("record the home");
        for (i, peer) in peers.iter().enumerate() {
            let name = ContactName::parse(&format!("peer{i:02}")).expect("name");
            let router = (i % routers != 0).then(|| peer_home(i));
            store
                .add_contact_at(&name, &peer.public_key(), router)
                .expect("add contact");
        }
        if case == Case::Outbox {
            let tx = store.transaction().expect("transaction");
            for m in 0..n {
                let peer = peers[m % PEERS].public_key();
                chat_p2p::store::messages::insert_outgoing_tx(
                    &tx,
                    &peer,
                    &format!("message number {m} about the usual things"),
                )
                .expect("queue");
            }
            tx.commit().expect("commit");
        }
    }
    if case == Case::Inbound {
        rt.block_on(async {
            for (i, peer) in peers.iter().enumerate() {
                let share = n / PEERS + usize::from(i < n % PEERS);
                common::fill(home, peer, &me, share, Some(peer_home(i)), 1_000).await;
            }
        });
    }

    let (wall, summary) = timed_sync(&chat_home, home);
    match case {
        Case::Outbox => {
            let sent = count(&db, "SELECT count(*) FROM messages WHERE status = 'sent'");
            assert_eq!(sent, n, "sync sent {sent} of {n}: {summary}");
        }
        Case::Inbound => {
            let received = summary["received"].as_u64().unwrap_or(0) as usize;
            assert_eq!(received, n, "sync received {received} of {n}: {summary}");
            let left = count(&db, "SELECT count(*) FROM receipt_outbox");
            assert_eq!(left, 0, "{left} receipt(s) not sent: {summary}");
        }
    }
    for mut child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
    n as f64 / wall.as_secs_f64()
}

fn cli(home: &Path, args: &[&str]) -> String {
    let out = Command::new(bin())
        .env("CHAT_HOME", home)
        .env("CHAT_PROFILE", "me")
        .env("CHAT_CONFIG", home.join("config.toml"))
        .env_remove("CHAT_SERVER")
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

fn count(db: &Path, sql: &str) -> usize {
    let store = Store::open(db).expect("open the profile");
    store
        .conn()
        .query_row(sql, [], |r| r.get::<_, i64>(0))
        .expect("count") as usize
}

/// Runs `sync` for the profile; returns its wall time and its JSON summary.
fn timed_sync(home: &Path, url: &ServerUrl) -> (Duration, serde_json::Value) {
    let wrap = std::env::var("CLIENT_SYNC_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(program) => {
            let mut cmd = Command::new(program);
            cmd.args(words).arg(bin());
            cmd
        }
        None => Command::new(bin()),
    };
    let t = Instant::now();
    let out = cmd
        .env("CHAT_HOME", home)
        .env("CHAT_PROFILE", "me")
        .env("CHAT_CONFIG", home.join("config.toml"))
        .args([
            "sync",
            "--json",
            "--timeout",
            "600",
            "--server",
            url.as_str(),
        ])
        .output()
        .expect("run chat-p2p sync");
    let wall = t.elapsed();
    assert!(
        out.status.success(),
        "sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = serde_json::from_slice(&out.stdout).expect("sync --json");
    (wall, summary)
}

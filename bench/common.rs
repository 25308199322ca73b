//! What the client benchmarks share (`client_sync`, `home_routers`): a
//! release router on a free port, a queue filled by a peer, and medians.
//! Included with `#[path]`; not a benchmark of its own.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_p2p::client::connection::{self, ServerUrl};
use chat_p2p::identity::{Identity, PublicKey};
use chat_p2p::protocol::{self, Content, Frame};

/// The binary under test: `BENCH_BIN` when set (e.g. a build with other
/// profile settings, to compare in one run), else the bench's own build.
pub fn bin() -> String {
    std::env::var("BENCH_BIN")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_chat-p2p").to_owned())
}

/// Starts a router on a free loopback port with its queue in `data`, room
/// for `n` frames per recipient and no rate limit, plus `extra` options.
pub fn start_router(data: &Path, n: usize, extra: &[String]) -> (Child, ServerUrl) {
    let mut child = Command::new(bin())
        .args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .args([
            "--max-queued",
            &(n + 1000).to_string(),
            "--max-rate",
            "1000000",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the router");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("router's first line");
    let addr = line.trim().trim_start_matches("listening on ");
    let url = ServerUrl::parse(&format!("ws://{addr}/ws")).expect("url");
    (child, url)
}

/// Queues `n` texts from `from` for `to` at `router` (a control session,
/// `window` frames ahead of the acks), each announcing `home` if given.
pub async fn fill(
    router: &ServerUrl,
    from: &Identity,
    to: &PublicKey,
    n: usize,
    home: Option<&ServerUrl>,
    window: usize,
) {
    let device = chat_p2p::store::device::Device::control();
    let mut conn = connection::connect(router, from, &device, Duration::from_secs(10))
        .await
        .expect("connect as the sender");
    let ts = chat_p2p::clock::now();
    let (mut sent, mut acked) = (0, 0);
    while acked < n {
        let batch: Vec<Frame> = (sent..n.min(acked + window))
            .map(|i| {
                let content = Content::Text {
                    body: format!("message number {i} about the usual things"),
                    home: home.map(|h| h.as_str().to_owned()),
                };
                let m =
                    protocol::seal(from, to, uuid::Uuid::now_v7(), &ts, &content).expect("seal");
                Frame::Message(m)
            })
            .collect();
        sent += batch.len();
        conn.send(&batch).await.expect("send");
        let frames = conn.recv_batch().await.expect("receive").expect("open");
        for frame in frames {
            match frame {
                Frame::Ack(_) => acked += 1,
                Frame::Error(e) => panic!("router refused: {e:?}"),
                _ => {}
            }
        }
    }
    conn.close().await;
}

/// The median of `values` (sorted in place).
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// How many cores this machine offers.
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

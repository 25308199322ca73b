//! What a router's operator sees: `/metrics` after real traffic, JSON log
//! lines, and logs at the default level without whole keys or addresses.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use chat_p2p::identity::Identity;
use common::{send_text, Client};

/// A router at the default log level (no RUST_LOG), its stderr in a file.
struct QuietRouter {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl QuietRouter {
    fn start(dir: &Path, extra: &[&str]) -> Self {
        let log = dir.join("router.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", dir)
            .args(["router", "--listen", "127.0.0.1:0", "--data"])
            .arg(dir.join("router"))
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap()
            .to_owned();
        QuietRouter { child, addr, log }
    }

    /// Stops the router (SIGTERM, so its last lines are written) and
    /// returns what it logged.
    fn stop(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
        std::fs::read_to_string(&self.log).unwrap()
    }
}

/// A plain HTTP GET of `path`, the whole reply as text.
fn http_get(addr: &str, path: &str) -> String {
    let mut tcp = std::net::TcpStream::connect(addr).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut reply = String::new();
    tcp.read_to_string(&mut reply).unwrap();
    reply
}

impl Drop for QuietRouter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Alice sends to bob, who is online, and to carol, who is not (so one
/// frame stays queued), then sends a frame that is not JSON.
async fn traffic(addr: &str) -> (Identity, Identity) {
    let (alice, bob) = (Identity::generate(), Identity::generate());
    let mut a = Client::connect(addr, Identity::from_secret_bytes(&alice.secret_bytes())).await;
    let mut b = Client::connect(addr, Identity::from_secret_bytes(&bob.secret_bytes())).await;
    a.send_acked(&b.key(), "hello bob").await;
    let (m, _) = b.receive().await;
    b.ack(m.id).await;
    a.send_acked(&Identity::generate().public_key(), "for later")
        .await;
    send_text(&mut a.ws, "this is not json").await;
    let e = a.expect_error().await;
    assert_eq!(e.code.as_str(), "bad-frame");
    a.close().await;
    b.close().await;
    (alice, bob)
}

/// The value of the sample named exactly `name` (labels included).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_real_traffic_and_logs_name_no_key_or_address() {
    let dir = tempfile::tempdir().unwrap();
    let router = QuietRouter::start(dir.path(), &[]);
    let (alice, bob) = traffic(&router.addr).await;
    let addr = router.addr.clone();
    let reply = tokio::task::spawn_blocking(move || http_get(&addr, "/metrics"))
        .await
        .unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    assert!(
        reply.contains("Content-Type: text/plain; version=0.0.4"),
        "{reply}"
    );
    let body = reply.split("\r\n\r\n").nth(1).unwrap();
    assert!(sample(body, "chat_router_sessions_total") >= 2.0);
    assert!(sample(body, "chat_router_frames_in_total") >= 4.0);
    assert!(sample(body, "chat_router_frames_out_total") >= 6.0);
    assert_eq!(sample(body, "chat_router_queue_depth"), 1.0);
    assert_eq!(
        sample(body, "chat_router_errors_total{code=\"bad-frame\"}"),
        1.0
    );
    assert_eq!(
        sample(body, "chat_router_errors_total{code=\"internal\"}"),
        0.0
    );
    assert!(sample(body, "chat_router_commit_seconds_count") >= 2.0);
    assert!(sample(body, "chat_router_commit_seconds_bucket{le=\"+Inf\"}") >= 2.0);

    let log = router.stop();
    assert!(log.contains("session started"), "{log}");
    let short = alice.public_key().fingerprint().replace(' ', "");
    assert!(log.contains(&short), "the fingerprint names alice:\n{log}");
    for id in [&alice, &bob] {
        assert!(
            !log.contains(&id.public_key().to_base64()),
            "a whole key:\n{log}"
        );
    }
    // The router names its own addresses once ("answering to"); no line
    // names a client's.
    let about_clients = log.lines().filter(|l| !l.contains("answering to"));
    for line in about_clients {
        assert!(!line.contains("127.0.0.1"), "a client address:\n{line}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let router = QuietRouter::start(dir.path(), &["--log-format", "json"]);
    traffic(&router.addr).await;
    let log = router.stop();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["fields"]["message"] == "session started")
        .unwrap_or_else(|| panic!("no session started in\n{log}"));
    assert_eq!(started["level"], "INFO");
    assert!(started["fields"]["client"].is_string(), "{started}");
    assert!(lines
        .iter()
        .any(|l| l["fields"]["message"] == "router stopped"));
}

#[test]
fn an_unknown_log_format_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .args(["router", "--log-format", "xml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `router --redis` with the given URL: exit code and stderr.
fn router_with_redis(url: &str) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .args(["router", "--listen", "127.0.0.1:0", "--redis", url])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_bad_redis_url_is_a_usage_error_that_never_shows_the_password() {
    let (code, err) = router_with_redis("http://:hunter2@redis.example.org");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("is not a Redis URL"), "{err}");
    assert!(err.contains("redis://[:PASSWORD@]HOST"), "{err}");
    let (code, err) = router_with_redis("redis://:hunter2@host:notaport");
    assert_eq!(code, Some(2), "{err}");
    for (code, err) in [(code, err), router_with_redis("http://:hunter2@x")] {
        assert!(!err.contains("hunter2"), "the password leaked: {err}");
        assert!(err.contains(":***@"), "{err}");
        assert_eq!(code, Some(2));
    }
}

#[test]
fn a_redis_nobody_answers_on_is_a_clear_failure_without_the_password() {
    // A port nothing listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (code, err) = router_with_redis(&format!("redis://:hunter2@127.0.0.1:{port}"));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot connect to Redis"), "{err}");
    assert!(err.contains("check that it runs"), "{err}");
    assert!(!err.contains("hunter2"), "the password leaked: {err}");
}

#[test]
fn a_max_connections_no_descriptor_limit_allows_is_refused_with_the_fix() {
    // More descriptors than Linux allows any process (fs.nr_open is at
    // most about 2^30), so even root cannot raise the limit that far.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
        .env_clear()
        .args(["router", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path().join("router"))
        .args(["--max-connections", "2000000000"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it started"
    );
    for part in [
        "--max-connections 2000000000 needs 2000000256 file descriptors",
        "hard limit",
        "`ulimit -n 2000000256`",
        "`LimitNOFILE=2000000256`",
        "or lower --max-connections to",
    ] {
        assert!(err.contains(part), "{part:?} not in:\n{err}");
    }
    // Nothing was created: the queue is opened after the check.
    assert!(!dir.path().join("router").exists());
}

#[test]
fn the_router_raises_its_soft_descriptor_limit_and_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("router.log");
    // A shell lowers the soft limit, then becomes the router.
    let mut child = Command::new("sh")
        .env_clear()
        .arg("-c")
        .arg(r#"ulimit -Sn 256 && exec "$0" router --listen 127.0.0.1:0 --data "$1" --max-connections 1000"#)
        .arg(env!("CARGO_BIN_EXE_chat-p2p"))
        .arg(dir.path().join("router"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(line.starts_with("listening on "), "{line}\n{log}");
    let limits = log
        .lines()
        .find(|l| l.contains("file descriptor limits"))
        .unwrap_or_else(|| panic!("no limits logged:\n{log}"));
    assert!(limits.contains("was_soft=256"), "{limits}");
    assert!(!limits.contains(" soft=256 "), "not raised: {limits}");
    assert!(limits.contains("max_connections=1000"), "{limits}");
}

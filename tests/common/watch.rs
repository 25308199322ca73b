//! `chat-p2p sync --watch --json` as a child process, read as a bot would
//! read it: one JSON object a line.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Env, Router};

/// How long a wait for a line may last. Only a guard against hanging;
/// nothing is asserted about timing.
const GUARD: Duration = Duration::from_secs(30);

/// A `sync --watch --json` child whose stdout lines arrive on a channel,
/// killed when dropped.
pub struct Watch {
    pub child: Child,
    lines: mpsc::Receiver<Value>,
    /// Every line read so far.
    pub seen: Vec<Value>,
}

impl Watch {
    /// A watch of `profile` against `router`.
    pub fn start(env: &Env, profile: &str, router: &Router) -> Self {
        Self::start_at(env, profile, &router.url())
    }

    /// A watch of `profile` against the router at `url`.
    pub fn start_at(env: &Env, profile: &str, url: &str) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_chat-p2p"))
            .env_clear()
            .env("CHAT_HOME", env.home())
            .env("CHAT_CONFIG", env.config())
            .env("CHAT_PROFILE", profile)
            .env("CHAT_SERVER", url)
            .args(["sync", "--watch", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start sync --watch");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {line:?}"));
                if tx.send(value).is_err() {
                    return;
                }
            }
        });
        Watch {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The next line that `check` accepts, keeping every line read.
    pub fn wait_for(&mut self, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + GUARD;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if check(&line) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "sync --watch never printed {what}; it printed {:#?}",
                    self.seen
                ),
            }
        }
    }

    /// The next line of `kind`.
    pub fn kind(&mut self, kind: &str) -> Value {
        self.wait_for(kind, |l| l["kind"] == kind)
    }

    /// How many `disconnected` lines it has printed so far.
    pub fn disconnections(&self) -> usize {
        self.seen
            .iter()
            .filter(|l| l["kind"] == "disconnected")
            .count()
    }

    /// Stops it with SIGTERM, as a service manager would: how it exited.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
        self.child.wait().expect("wait for sync --watch")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

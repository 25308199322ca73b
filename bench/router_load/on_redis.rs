//! The Redis side of `router_load` (issue 10): a `redis-server` of the
//! bench's own (temp dir, `appendfsync` as asked), routers on it as real
//! `chat-p2p router --redis URL` processes, and what the bench reads from
//! the server while it measures: its CPU (from `/proc/<pid>/stat`, the pid
//! from `INFO server`), the commands it ran (`INFO commandstats`, scripts'
//! inner commands included) and, when `perf` can count syscall tracepoints,
//! its `fdatasync`s and event-loop iterations (`epoll_wait`s).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chat_p2p::router::backend::redis::local::{Fsync, LocalRedis};

use super::{cpu_secs_of, Server};

/// A `redis-server` started for one comparison, killed (and its directory
/// removed) on drop.
pub struct BenchRedis {
    /// Declared before `_dir`: the server dies before its directory goes.
    local: LocalRedis,
    _dir: tempfile::TempDir,
    pid: u32,
    /// `"everysec"` or `"always"`.
    pub fsync: &'static str,
}

impl BenchRedis {
    /// Starts a server with its append-only file synced as `fsync` says.
    pub fn start(fsync: Fsync) -> BenchRedis {
        let dir = tempfile::tempdir().expect("temp dir for redis-server");
        let local = LocalRedis::start(dir.path(), fsync).expect("start redis-server");
        let pid = info(local.port(), "server")
            .lines()
            .find_map(|l| l.strip_prefix("process_id:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("redis-server's pid from INFO server");
        BenchRedis {
            local,
            _dir: dir,
            pid,
            fsync: match fsync {
                Fsync::Always => "always",
                Fsync::EverySec => "everysec",
                Fsync::Volatile => "volatile",
            },
        }
    }

    /// The URL routers dial.
    pub fn url(&self) -> String {
        self.local.url()
    }

    /// The server's process id (its CPU, its syscalls).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU seconds (user + system, all threads) the server used so far.
    pub fn cpu_secs(&self) -> f64 {
        cpu_secs_of(self.pid)
    }

    /// Calls per command so far (`INFO commandstats`), e.g. `evalsha`,
    /// and inside scripts `incr`, `hset`...
    pub fn commands(&self) -> Commands {
        let mut calls = BTreeMap::new();
        for line in info(self.local.port(), "commandstats").lines() {
            // cmdstat_evalsha:calls=12,usec=34,usec_per_call=...
            let Some((name, stats)) = line
                .strip_prefix("cmdstat_")
                .and_then(|l| l.split_once(':'))
            else {
                continue;
            };
            let field = |key: &str| -> u64 {
                stats
                    .split(',')
                    .find_map(|kv| kv.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            calls.insert(name.to_owned(), (field("calls="), field("usec=")));
        }
        Commands { calls }
    }

    /// Bytes in the append-only directory now.
    pub fn aof_bytes(&self) -> u64 {
        let dir = self.local.dir().join("appendonlydir");
        std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    }

    /// Memory Redis reports in use (`used_memory`), in bytes.
    pub fn used_memory(&self) -> u64 {
        info(self.local.port(), "memory")
            .lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// Command calls and microseconds spent in them, by command name.
#[derive(Default, Clone)]
pub struct Commands {
    calls: BTreeMap<String, (u64, u64)>,
}

impl Commands {
    /// What ran between `self` (earlier) and `later`.
    pub fn delta(&self, later: &Commands) -> Commands {
        let calls = later
            .calls
            .iter()
            .filter_map(|(name, &(calls, usec))| {
                let (c0, u0) = self.calls.get(name).copied().unwrap_or((0, 0));
                (calls > c0).then(|| (name.clone(), (calls - c0, usec.saturating_sub(u0))))
            })
            .collect();
        Commands { calls }
    }

    /// Script runs (`EVALSHA`, `EVAL`, `FCALL`): each is one round of
    /// atomic work, whatever it calls inside.
    pub fn scripts(&self) -> u64 {
        self.calls
            .iter()
            .filter(|(name, _)| matches!(name.as_str(), "evalsha" | "eval" | "fcall"))
            .map(|(_, &(c, _))| c)
            .sum()
    }

    /// All calls, scripts' inner ones included.
    pub fn total(&self) -> u64 {
        self.calls.values().map(|&(c, _)| c).sum()
    }

    /// "evalsha 2.00 (4.1 us), incr 1.00, ..." per `frames`, busiest
    /// first.
    pub fn per_frame(&self, frames: u64) -> String {
        let mut rows: Vec<_> = self.calls.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
        let f = frames.max(1) as f64;
        rows.iter()
            .map(|(name, &(calls, usec))| {
                format!(
                    "{name} {:.2} ({:.1} us each)",
                    calls as f64 / f,
                    usec as f64 / calls.max(1) as f64
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// A real router on `url`, limits raised as for the SQLite router.
pub fn start_router(url: &str) -> Server {
    let mut cmd = super::router_command();
    cmd.args(["router", "--listen", "127.0.0.1:0", "--redis", url])
        .args(["--max-rate", "1000000", "--max-queued", "100000000"])
        .args(["--max-connections", &super::max_connections().to_string()])
        .args(["--ping-interval", "3600"]);
    Server::start(cmd)
}

/// The reply to `INFO <section>` as text (a bulk string read whole).
pub fn info(port: u16, section: &str) -> String {
    let run = || -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("INFO {section}\r\n").as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        reader.read_line(&mut head)?;
        let len: usize = head
            .trim()
            .strip_prefix('$')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("INFO answered {head:?}")))?;
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    };
    run().unwrap_or_else(|e| {
        eprintln!("INFO {section} on port {port}: {e}");
        String::new()
    })
}

/// Counts a process's `fdatasync`/`fsync` calls, event-loop iterations
/// (`epoll_wait`) and `read`s with `perf stat` over a span, when perf can (root or
/// `perf_event_paranoid` allowing tracepoints). `BENCH_PERF=0` turns it off.
pub struct Syscalls {
    child: Option<Child>,
}

/// What [`Syscalls`] counted.
#[derive(Clone, Copy, Default)]
pub struct SyscallCounts {
    pub fsyncs: u64,
    pub loops: u64,
    /// `read`s: Redis reads at most 16 KB of a client's requests per
    /// event-loop iteration.
    pub reads: u64,
}

impl Syscalls {
    /// Starts counting `pid`'s syscalls for `secs` seconds.
    pub fn start(pid: u32, secs: f64) -> Syscalls {
        if std::env::var("BENCH_PERF").as_deref() == Ok("0") {
            return Syscalls { child: None };
        }
        let child = Command::new("perf")
            .args(["stat", "-x", ",", "-e"])
            .arg(
                "syscalls:sys_enter_fdatasync,syscalls:sys_enter_fsync,syscalls:sys_enter_epoll_wait,syscalls:sys_enter_read",
            )
            .arg("-p")
            .arg(pid.to_string())
            .args(["--", "sleep"])
            .arg(format!("{secs:.3}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .ok();
        Syscalls { child }
    }

    /// Waits for the span to end; `None` when perf was not available.
    pub fn finish(self) -> Option<SyscallCounts> {
        let out = self.child?.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        let mut counts = SyscallCounts::default();
        let mut seen = false;
        for line in text.lines() {
            // count,unit,event,...
            let mut f = line.split(',');
            let (Some(n), Some(_), Some(event)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u64>() else { continue };
            seen = true;
            if event.contains("fdatasync") || event.ends_with("sys_enter_fsync") {
                counts.fsyncs += n;
            } else if event.contains("epoll_wait") {
                counts.loops += n;
            } else if event.contains("sys_enter_read") {
                counts.reads += n;
            }
        }
        seen.then_some(counts)
    }
}

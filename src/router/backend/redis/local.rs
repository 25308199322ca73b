//! A `redis-server` of our own, for tests, benchmarks and the test
//! scripts: on a free loopback port, in a directory the caller owns, with
//! the append-only file on (`appendfsync` as asked), no snapshots, and
//! killed when dropped. Nothing here is used by a running router.
//!
//! A missing `redis-server` is an error that says how to install it, never
//! a skipped test.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What `appendfsync` the server runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    /// `appendfsync always`: fsync before every reply.
    Always,
    /// `appendfsync everysec`: written before the reply, fsynced each second.
    EverySec,
    /// No append-only file at all (and no snapshots): loses everything on a
    /// restart. Only to test that the router refuses such a server.
    Volatile,
}

/// A running `redis-server` (see the module documentation).
#[derive(Debug)]
pub struct LocalRedis {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    fsync: Fsync,
}

/// How long a server has to answer PING after it starts.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl LocalRedis {
    /// Starts a server with its files in `dir` (created if missing) on a
    /// free loopback port.
    pub fn start(dir: &Path, fsync: Fsync) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut last = None;
        // A port found free can be taken before the server binds it: retry.
        for _ in 0..5 {
            let port = free_port()?;
            let mut redis = Self {
                child: None,
                port,
                dir: dir.to_path_buf(),
                fsync,
            };
            match redis.spawn() {
                Ok(()) => return Ok(redis),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("redis-server did not start")))
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The port it listens on (the same across [`LocalRedis::restart`]).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its directory (the append-only files are under `appendonlydir`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it with SIGKILL, as a crash would: no shutdown, no final
    /// fsync beyond what `appendfsync` already did.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory, so it reloads its
    /// append-only file. Kills it first if it runs.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.kill9();
        let deadline = Instant::now() + START_TIMEOUT;
        // The old socket can linger a moment: retry until the port is ours.
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    /// Whether it answers PING now.
    pub fn is_up(&self) -> bool {
        ping(self.port)
    }

    /// Sends one command (inline syntax, e.g. `"DBSIZE"`) and returns the
    /// raw reply's first line, for tests that look inside.
    pub fn command(&self, line: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(format!("{line}\r\n").as_bytes())?;
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf)?;
        Ok(String::from_utf8_lossy(&buf[..n]).trim_end().to_owned())
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .arg("--bind")
            .arg("127.0.0.1")
            .arg("--dir")
            .arg(&self.dir)
            .arg("--save")
            .arg("")
            .arg("--daemonize")
            .arg("no")
            .arg("--logfile")
            .arg(self.dir.join("redis.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match self.fsync {
            Fsync::Always | Fsync::EverySec => {
                let every = if self.fsync == Fsync::Always {
                    "always"
                } else {
                    "everysec"
                };
                cmd.args(["--appendonly", "yes", "--appendfsync", every]);
            }
            Fsync::Volatile => {
                cmd.args(["--appendonly", "no"]);
            }
        }
        let mut child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                std::io::Error::new(
                    e.kind(),
                    "redis-server not found: install it (apt-get install redis-server), \
                     or run ./test.sh, which installs what the tests need",
                )
            } else {
                e
            }
        })?;
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(std::io::Error::other(format!(
                    "redis-server exited at start ({status}); see {}",
                    self.dir.join("redis.log").display()
                )));
            }
            if ping(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(std::io::Error::other(
            "redis-server did not answer PING in time",
        ))
    }
}

impl Drop for LocalRedis {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A loopback port nobody listens on now.
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether a Redis on `port` answers `PING` with `+PONG` (a server still
/// loading its append-only file answers `-LOADING`: not up yet).
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    matches!(stream.read(&mut buf), Ok(n) if buf[..n].starts_with(b"+PONG"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_answers_survives_kill9_with_its_aof_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let mut redis = LocalRedis::start(dir.path(), Fsync::Always).unwrap();
        assert!(redis.is_up());
        assert_eq!(redis.command("SET k v").unwrap(), "+OK");
        redis.kill9();
        assert!(!redis.is_up());
        redis.restart().unwrap();
        assert_eq!(redis.command("GET k").unwrap(), "$1\r\nv");
        let port = redis.port();
        drop(redis);
        assert!(!ping(port));
    }
}

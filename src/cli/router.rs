//! `router`: runs a router until SIGINT or SIGTERM.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;

use super::UsageError;
use crate::router::backend::redis::{redacted, RedisBackend, RedisConfig};
use crate::router::backend::sqlite::SqliteBackend;
use crate::router::backend::Backend;
use crate::router::recipients::{AllowList, Recipients};
use crate::router::{self, RouterConfig};

/// Arguments of `router`.
#[derive(Debug, Args)]
pub struct RouterArgs {
    /// Address to listen on; port 0 picks a free port (the bound address is
    /// printed on start).
    #[arg(long, default_value = "127.0.0.1:8080", value_name = "ADDR")]
    listen: SocketAddr,
    /// An address clients dial this router by (ws:// or wss://, as they
    /// type it, e.g. wss://chat.example.org/ws behind a TLS proxy);
    /// repeatable. A client's auth names the address it dialed, and one
    /// signed for any other is refused (wrong-router), so another router
    /// cannot relay this one's challenge. Default: the listen address, plus
    /// ws://localhost:PORT/ws, ws://127.0.0.1:PORT/ws and ws://[::1]:PORT/ws
    /// when listening on loopback or on all interfaces (0.0.0.0, [::]):
    /// with those, clients elsewhere are refused until you name the router.
    #[arg(
        long = "public-url",
        value_name = "URL",
        env = "CHAT_ROUTER_PUBLIC_URL",
        value_delimiter = ',',
        value_parser = public_url
    )]
    public_urls: Vec<String>,
    /// Directory for the queue database [default: <home>/router, where home
    /// is --home, CHAT_HOME or the platform data directory].
    #[arg(long, value_name = "DIR", conflicts_with = "redis")]
    data: Option<PathBuf>,
    /// Keep the queue in Redis instead of --data, so several routers can
    /// share it (redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss:// for
    /// TLS). The password is never logged. See docs/DEPLOY.md.
    // Checked by `redis_url` after parsing, not by a clap value parser:
    // clap would echo a bad URL, password included.
    #[arg(long, value_name = "URL", env = "CHAT_ROUTER_REDIS")]
    redis: Option<String>,
    /// A file whose first line is the Redis password (instead of one in
    /// the URL, where `ps` and shell history can see it).
    #[arg(long, value_name = "FILE", requires = "redis")]
    redis_password_file: Option<PathBuf>,
    /// Prefix of every Redis key and channel, so several deployments can
    /// share one Redis.
    #[arg(long, value_name = "PREFIX", default_value = crate::router::backend::redis::DEFAULT_PREFIX, requires = "redis")]
    redis_prefix: String,
    /// Start even if Redis' persistence settings would lose acknowledged
    /// frames when Redis restarts (no append-only file): for throwaway test
    /// deployments only.
    #[arg(long, requires = "redis")]
    redis_allow_volatile: bool,
    /// Largest frame accepted, in bytes.
    #[arg(long, default_value_t = 65_536, value_name = "BYTES", value_parser = positive::<usize>)]
    max_frame_bytes: usize,
    /// Most frames queued for one recipient.
    #[arg(long, default_value_t = 10_000, value_name = "N", value_parser = positive::<u64>)]
    max_queued: u64,
    /// Days an undelivered frame is kept before it is dropped.
    #[arg(long, default_value_t = 30, value_name = "DAYS", value_parser = bounded::<MAX_RETENTION_DAYS>)]
    retention_days: u64,
    /// Frames per second one connection may send.
    #[arg(long, default_value_t = 100, value_name = "N", value_parser = positive::<u32>)]
    max_rate: u32,
    /// Most simultaneous connections [default: 20000, or fewer when the
    /// file descriptor limit allows fewer]. The router raises its soft
    /// descriptor limit (`ulimit -n`) to the hard one, and beyond when
    /// run as root; a number that still does not fit is refused at start,
    /// with the fix (`ulimit -n`, systemd's `LimitNOFILE=`).
    #[arg(long, value_name = "N", value_parser = positive::<usize>)]
    max_connections: Option<usize>,
    /// Seconds a client has to authenticate.
    #[arg(long, default_value_t = 10, value_name = "SECS", value_parser = bounded::<MAX_SECS>)]
    auth_timeout: u64,
    /// Seconds between keep-alive pings; silent sessions are reaped after two.
    #[arg(long, default_value_t = 30, value_name = "SECS", value_parser = bounded::<MAX_SECS>)]
    ping_interval: u64,
    /// With --redis: seconds between two re-checks of each session's queue
    /// and claim, which make good a wake-up or replacement from another
    /// router that was lost (rounded up to whole --ping-interval beats).
    /// Each costs Redis two commands per session: 100,000 sessions every
    /// 300 s is about 700 per second.
    #[arg(long, default_value_t = 300, value_name = "SECS", value_parser = bounded::<MAX_SECS>, requires = "redis")]
    recheck_interval: u64,
    /// Frames delivered to a client and not yet acknowledged, at most.
    #[arg(long, default_value_t = crate::router::DEFAULT_DELIVERY_WINDOW, value_name = "N", value_parser = positive::<usize>)]
    delivery_window: usize,
    /// Whom the router queues frames for: `any` key (what lets strangers
    /// reach the people whose home router this is), or only `known` keys,
    /// those with a device registered here (signed in at least once, and
    /// not removed or gone for longer than --retention-days). A frame for
    /// anyone else is refused with `recipient-not-served`, which the
    /// sender's client reports as a failed message. [default: any, or only
    /// the listed keys with --recipients-file]
    #[arg(long, value_enum, value_name = "WHO", env = "CHAT_ROUTER_RECIPIENTS")]
    recipients: Option<RecipientsArg>,
    /// Queue frames only for the keys listed in FILE: one public key (as
    /// `whoami --key` prints it) or address per line, `#` starts a comment.
    /// With --recipients known, for listed and known keys. Read again on
    /// SIGHUP (a bad file then keeps the list the router has).
    #[arg(long, value_name = "FILE", env = "CHAT_ROUTER_RECIPIENTS_FILE")]
    recipients_file: Option<PathBuf>,
    /// How log lines on stderr are written: `text` for people, `json` (one
    /// object per line) for log collectors. At the default level (info)
    /// clients are named by their key's fingerprint, never by their whole
    /// key or IP address; RUST_LOG=debug adds those.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    log_format: LogFormat,
}

/// `--recipients`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum RecipientsArg {
    /// Any key.
    Any,
    /// Keys with a device registered at this router.
    Known,
}

/// The router's log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Sends the router's `tracing` output to stderr in `format`, filtered by
/// `RUST_LOG` (default info).
fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new("info,refinery_core=warn"));
    match format {
        LogFormat::Text => super::init_logging("info,refinery_core=warn"),
        LogFormat::Json => {
            let _ = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_current_span(false)
                .try_init();
        }
    }
}

/// A retention in seconds instead of `--retention-days`, so the tests can
/// watch frames expire (with the retention check every second). Honoured
/// by debug builds only: no operator should meet it.
pub const TEST_RETENTION_ENV: &str = "CHAT_TEST_RETENTION_SECS";

/// [`TEST_RETENTION_ENV`], when set to a whole number of seconds in a
/// debug build.
fn test_retention() -> Option<Duration> {
    if !cfg!(debug_assertions) {
        return None;
    }
    let secs: u64 = std::env::var(TEST_RETENTION_ENV).ok()?.parse().ok()?;
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// Longest retention accepted: a century. Longer would overflow the
/// expiry's date arithmetic and silently stop expiry.
const MAX_RETENTION_DAYS: u64 = 36_500;

/// Longest timeout or interval accepted, in seconds (a day): a larger one
/// would overflow the timer's clock arithmetic.
const MAX_SECS: u64 = 86_400;

/// A count where 0 is meaningless (no frames, no connections, no time):
/// refused at parse time, so it is a usage error (exit 2).
fn positive<T: std::str::FromStr + PartialEq + From<u8>>(text: &str) -> Result<T, String> {
    let n = text
        .parse::<T>()
        .map_err(|_| format!("'{text}' is not a whole number"))?;
    if n == T::from(0) {
        return Err("must be at least 1: 0 is not a usable limit".to_owned());
    }
    Ok(n)
}

/// A `--public-url`, in the canonical form clients sign
/// ([`crate::protocol::router_name`]).
fn public_url(text: &str) -> Result<String, String> {
    crate::protocol::router_name(text.trim()).map_err(|e| e.to_string())
}

/// A `--redis` URL that names a Redis (a typo is a usage error, exit 2);
/// the password in it is never echoed.
fn redis_url(text: &str) -> Result<String, UsageError> {
    use ::redis::IntoConnectionInfo as _;
    let shown = redacted(text);
    if !(text.starts_with("redis://") || text.starts_with("rediss://")) {
        return Err(UsageError(format!(
            "--redis {shown} is not a Redis URL: write redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss://... for TLS"
        )));
    }
    match text.into_connection_info() {
        Ok(_) => Ok(text.to_owned()),
        Err(_) => Err(UsageError(format!(
            "--redis {shown} is not a usable Redis URL: write redis://[:PASSWORD@]HOST[:PORT][/DB], or rediss://... for TLS"
        ))),
    }
}

/// [`positive`], and at most `MAX`.
fn bounded<const MAX: u64>(text: &str) -> Result<u64, String> {
    let n = positive::<u64>(text)?;
    if n > MAX {
        return Err(format!("must be at most {MAX}"));
    }
    Ok(n)
}

impl RouterArgs {
    /// The Redis settings, when the queue is in Redis.
    fn redis_config(&self) -> Result<Option<RedisConfig>, UsageError> {
        let Some(url) = &self.redis else {
            return Ok(None);
        };
        let mut config = RedisConfig::new(redis_url(url)?, self.max_queued);
        config.password_file = self.redis_password_file.clone();
        config.prefix = self.redis_prefix.clone();
        config.allow_volatile = self.redis_allow_volatile;
        Ok(Some(config))
    }

    fn config(self, home: Option<PathBuf>) -> Result<(SocketAddr, RouterConfig)> {
        let data = match self.data {
            Some(dir) => dir,
            None => home
                .or_else(crate::profile::default_home)
                .context("cannot find a data directory: pass --data DIR")?
                .join("router"),
        };
        let mut config = RouterConfig::new(data);
        config.max_frame_bytes = self.max_frame_bytes;
        config.max_queued_per_recipient = self.max_queued;
        config.retention = test_retention()
            .unwrap_or_else(|| Duration::from_secs(self.retention_days.saturating_mul(86_400)));
        config.max_frames_per_sec = self.max_rate;
        if let Some(n) = self.max_connections {
            config.max_connections = n;
        }
        config.auth_timeout = Duration::from_secs(self.auth_timeout);
        config.ping_interval = Duration::from_secs(self.ping_interval.max(1));
        config.recheck_interval = Duration::from_secs(self.recheck_interval);
        config.delivery_window = self.delivery_window;
        config.public_names = dedup(self.public_urls);
        config.recipients = recipients(self.recipients, self.recipients_file.as_deref())?;
        Ok((self.listen, config))
    }
}

/// The recipients policy of `--recipients` and `--recipients-file`; a
/// bad combination or a bad file is a usage error (exit 2).
fn recipients(who: Option<RecipientsArg>, file: Option<&Path>) -> Result<Recipients, UsageError> {
    let list = match file {
        None => None,
        Some(path) => {
            if who == Some(RecipientsArg::Any) {
                return Err(UsageError(
                    "--recipients any queues for every key, so --recipients-file would change                      nothing: drop one of them (or use --recipients known to serve listed and                      known keys)"
                        .to_owned(),
                ));
            }
            Some(Arc::new(
                AllowList::load(path).map_err(|e| UsageError(e.to_string()))?,
            ))
        }
    };
    Ok(Recipients {
        known: who == Some(RecipientsArg::Known),
        list,
    })
}

/// `names` without repeats, in their order.
fn dedup(names: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::with_capacity(names.len());
    for name in names {
        if !out.contains(&name) {
            out.push(name);
        }
    }
    out
}

/// Runs the router in the foreground.
pub fn run(args: RouterArgs, home: Option<PathBuf>) -> Result<()> {
    init_logging(args.log_format);
    let redis = args.redis_config()?;
    let explicit = args.max_connections.is_some();
    let (listen, mut config) = args.config(home)?;
    config.max_connections = descriptors(config.max_connections, explicit)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    runtime.block_on(async move {
        // Open the queue first: "listening" must mean ready to serve.
        match redis {
            Some(redis) => {
                let shown = redacted(&redis.url);
                // The causes name the (redacted) URL themselves.
                let backend = RedisBackend::open(redis)
                    .await
                    .context("cannot open the router's queue in Redis")?;
                tracing::info!(redis = %shown, "queue opened");
                serve(listen, config, backend).await
            }
            None => {
                let backend =
                    SqliteBackend::open(&config.data_dir, config.max_queued_per_recipient)
                        .context("cannot open the router's queue")?;
                tracing::info!(queue = %backend.path().display(), "queue opened");
                serve(listen, config, backend).await
            }
        }
    })
}

/// Raises the descriptor limit for `max_connections` connections and logs
/// it; the connections the router may serve (fewer than the default when
/// the limit allows fewer), or the error saying how to raise the limit
/// when `--max-connections` (`explicit`) does not fit.
fn descriptors(max_connections: usize, explicit: bool) -> Result<usize> {
    use crate::router::limits;
    let Some(raised) = limits::raise(max_connections, explicit)? else {
        tracing::info!(max_connections, "file descriptor limits unknown here");
        return Ok(max_connections);
    };
    let (before, after) = (raised.before, raised.after);
    tracing::info!(
        soft = after.soft,
        hard = after.hard,
        was_soft = before.soft,
        was_hard = before.hard,
        max_connections = raised.max_connections,
        "file descriptor limits"
    );
    if raised.max_connections < max_connections {
        tracing::warn!(
            "the file descriptor limit ({}) allows only {} connections, not the default {}: \
             raise it with `ulimit -n {}` or systemd's `LimitNOFILE={}`, or pass \
             --max-connections",
            after.soft,
            raised.max_connections,
            max_connections,
            limits::needed(max_connections),
            limits::needed(max_connections),
        );
    }
    Ok(raised.max_connections)
}

/// Listens on `listen` and serves with `backend` until a signal.
async fn serve<B: Backend>(listen: SocketAddr, config: RouterConfig, backend: B) -> Result<()> {
    {
        if let Some(list) = &config.recipients.list {
            tokio::spawn(reload_on_hangup(Arc::clone(list)));
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        let bound = listener.local_addr()?;
        if config.public_names.is_empty() && bound.ip().is_unspecified() {
            tracing::warn!(
                "listening on all interfaces without --public-url: only clients dialing \
                 ws://localhost:{port}/ws (or 127.0.0.1, [::1]) can sign in; name the address \
                 others dial with --public-url",
                port = bound.port()
            );
        }
        let mut out = std::io::stdout().lock();
        writeln!(out, "listening on {bound}")?;
        out.flush()?;
        drop(out);
        router::serve_with_backend(listener, config, backend, shutdown_signal()).await;
        Ok(())
    }
}

/// Reads the recipients file again on every SIGHUP, for as long as the
/// router runs; a file that cannot be used is logged, and the list the
/// router has is kept.
async fn reload_on_hangup(list: Arc<AllowList>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hangups = match signal(SignalKind::hangup()) {
            Ok(hangups) => hangups,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: the recipients file will not be read again");
                return;
            }
        };
        while hangups.recv().await.is_some() {
            match list.reload() {
                Ok(listed) => tracing::info!(
                    listed,
                    file = %list.path().display(),
                    "recipients file read again"
                ),
                Err(e) => tracing::warn!(
                    listed = list.len(),
                    "{}; keeping the list read before",
                    crate::render::untrusted(&e.to_string())
                ),
            }
        }
    }
    #[cfg(not(unix))]
    let _ = list;
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

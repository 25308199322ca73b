//! Whether Redis is reachable, as the router last saw it: set by every
//! command's outcome and by a PING each second, read by
//! [`super::RedisBackend::health`] without a round trip.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::RedisError;

/// How often the pinger checks Redis.
pub(super) const PING_EVERY: Duration = Duration::from_secs(1);

/// The reachability of one Redis.
#[derive(Debug)]
pub(super) struct Health {
    /// The redacted URL, for messages.
    shown: String,
    /// Why Redis is unreachable, while it is.
    down: Mutex<Option<String>>,
}

impl Health {
    pub(super) fn new(shown: String) -> Arc<Self> {
        Arc::new(Self {
            shown,
            down: Mutex::new(None),
        })
    }

    /// Ok, or "redis at URL: cause".
    pub(super) fn get(&self) -> Result<(), String> {
        match &*self.down.lock().unwrap_or_else(|e| e.into_inner()) {
            None => Ok(()),
            Some(cause) => Err(format!("redis at {}: {cause}", self.shown)),
        }
    }

    /// Redis answered.
    pub(super) fn up(&self) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if down.take().is_some() {
            tracing::info!(redis = %self.shown, "Redis is reachable again");
        }
    }

    /// Redis could not be reached (or did not answer in time).
    pub(super) fn down(&self, cause: &str) {
        let mut down = self.down.lock().unwrap_or_else(|e| e.into_inner());
        if down.is_none() {
            tracing::warn!(redis = %self.shown, cause, "Redis is unreachable");
        }
        *down = Some(cause.to_owned());
    }

    /// Notes what a command's error says of reachability: a server's
    /// error reply means it is up, unless it says it cannot serve now
    /// (loading its append-only file, busy with a script, a read-only
    /// replica).
    pub(super) fn note(&self, e: &RedisError) {
        if e.code().is_some_and(unable)
            || e.is_io_error()
            || e.is_connection_dropped()
            || e.is_timeout()
            || e.is_unrecoverable_error()
        {
            self.down(&e.to_string());
        } else {
            self.up();
        }
    }
}

/// Whether an error code says Redis cannot serve now.
pub(super) fn unable(code: &str) -> bool {
    matches!(
        code,
        "LOADING" | "BUSY" | "MASTERDOWN" | "READONLY" | "TRYAGAIN" | "CLUSTERDOWN"
    )
}

/// PINGs Redis every [`PING_EVERY`] (which also makes the connection
/// manager reconnect while nothing else is sent), until aborted.
pub(super) async fn pinger(mut conn: ConnectionManager, health: Arc<Health>) {
    let mut tick = tokio::time::interval(PING_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let cmd = redis::cmd("PING");
        let ping = cmd.query_async::<String>(&mut conn);
        match tokio::time::timeout(PING_EVERY, ping).await {
            Ok(Ok(_)) => health.up(),
            Ok(Err(e)) => health.note(&e),
            Err(_) => health.down("no answer to PING within a second"),
        }
    }
}

//! Reaching Redis as configured: the URL (with `rediss://` for TLS, a
//! database number, credentials), a password file, the connection
//! manager's timeouts; and the check of Redis' persistence settings.

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, IntoConnectionInfo as _};

use super::{redacted, RedisConfig};
use crate::router::backend::BackendError;

/// How long one connection attempt may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// How long any one command (or pipeline) may take before it fails: a
/// sender then gets `internal` and retries, instead of waiting forever on
/// a Redis that is gone.
pub(super) const OP_TIMEOUT: Duration = Duration::from_secs(5);

/// The client for `config`: URL parsed, password from the file if any.
pub(super) fn client(config: &RedisConfig) -> Result<Client, BackendError> {
    let shown = redacted(&config.url);
    if !(config.url.starts_with("redis://") || config.url.starts_with("rediss://")) {
        return Err(BackendError::RedisSetup(format!(
            "{shown} is not a Redis URL: write redis://[:PASSWORD@]HOST[:PORT][/DB], \
             or rediss://... for TLS"
        )));
    }
    if config.url.starts_with("rediss://") {
        // rustls needs a crypto provider; the project's is ring. Installing
        // fails only when one is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut info = config.url.as_str().into_connection_info().map_err(|e| {
        BackendError::RedisSetup(format!(
            "cannot read the Redis URL {shown} ({:?}): write redis://[:PASSWORD@]HOST[:PORT][/DB]",
            e.kind()
        ))
    })?;
    // Without TCP_NODELAY, Nagle's algorithm can hold back the tail of each
    // pipeline until the previous one is acknowledged: a round trip added
    // to every batch on a real network.
    let tcp = info.tcp_settings().clone().set_nodelay(true);
    info = info.set_tcp_settings(tcp);
    if let Some(file) = &config.password_file {
        let password = read_password(file)?;
        let settings = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(settings);
    }
    Client::open(info).map_err(|e| {
        BackendError::RedisSetup(format!("cannot use the Redis URL {shown}: {:?}", e.kind()))
    })
}

/// The first line of `file`, trimmed.
fn read_password(file: &Path) -> Result<String, BackendError> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        BackendError::RedisSetup(format!(
            "cannot read the Redis password file {}: {e}; check the path and that the \
             router's user may read it",
            file.display()
        ))
    })?;
    let password = text.lines().next().unwrap_or("").trim();
    if password.is_empty() {
        return Err(BackendError::RedisSetup(format!(
            "the Redis password file {} is empty: its first line must be the password",
            file.display()
        )));
    }
    Ok(password.to_owned())
}

/// The connection manager's settings: bounded connects and replies, a
/// few quick reconnect attempts per command (the pinger keeps trying).
pub(super) fn manager_config() -> ConnectionManagerConfig {
    ConnectionManagerConfig::new()
        .set_connection_timeout(Some(CONNECT_TIMEOUT))
        .set_response_timeout(Some(OP_TIMEOUT))
        .set_number_of_retries(1)
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(Duration::from_secs(1))
}

/// Connects, within [`OP_TIMEOUT`].
pub(super) async fn connect(
    client: &Client,
    shown: &str,
) -> Result<ConnectionManager, BackendError> {
    let connect = client.get_connection_manager_with_config(manager_config());
    match tokio::time::timeout(OP_TIMEOUT, connect).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => Err(BackendError::RedisSetup(format!(
            "cannot connect to Redis at {shown}: {e}; check that it runs and the URL, \
             password and TLS setting (rediss://) are right"
        ))),
        Err(_) => Err(BackendError::RedisSetup(format!(
            "Redis at {shown} did not answer within {}s; check the address and firewall",
            OP_TIMEOUT.as_secs()
        ))),
    }
}

/// Redis' persistence settings (`CONFIG GET`), as far as known.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Persistence {
    /// `appendonly`: "yes" or "no".
    pub appendonly: String,
    /// `appendfsync`: "always", "everysec" or "no".
    pub appendfsync: String,
    /// `save`: the snapshot schedule ("" for none).
    pub save: String,
}

/// What the router logs about the settings at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Note {
    /// Information (the durability the operator chose).
    Info(String),
    /// Something that may lose acknowledged frames.
    Warn(String),
}

/// Judges Redis' persistence settings (`None`: `CONFIG` was refused, as
/// managed services may do): the notes to log, or why the router refuses
/// to start.
pub(super) fn assess(
    settings: Option<&Persistence>,
    allow_volatile: bool,
    shown: &str,
) -> Result<Vec<Note>, String> {
    let Some(s) = settings else {
        return Ok(vec![Note::Warn(format!(
            "could not check the persistence settings of Redis at {shown} (CONFIG GET is \
             disabled or renamed): make sure it runs with appendonly yes, or acknowledged \
             frames are lost when it restarts"
        ))]);
    };
    if s.appendonly != "yes" {
        let snapshots = if s.save.trim().is_empty() {
            "it takes no snapshots either, so a restart loses every queued frame".to_owned()
        } else {
            format!(
                "its snapshots (save \"{}\") keep only what was queued at the last one, so \
                 a restart loses every frame acknowledged since",
                s.save
            )
        };
        let what = format!(
            "Redis at {shown} runs with appendonly no: {snapshots}. Set appendonly yes \
             (with appendfsync everysec or always) in its redis.conf, see docs/DEPLOY.md"
        );
        if !allow_volatile {
            return Err(format!(
                "{what}; or start with --redis-allow-volatile to accept the loss"
            ));
        }
        return Ok(vec![Note::Warn(format!(
            "{what} (starting anyway: --redis-allow-volatile)"
        ))]);
    }
    let mut notes = vec![match s.appendfsync.as_str() {
        "always" => Note::Info(format!(
            "Redis at {shown} fsyncs its append-only file before every reply \
             (appendfsync always): an acknowledged frame survives any crash"
        )),
        "everysec" => Note::Info(format!(
            "Redis at {shown} fsyncs its append-only file every second (appendfsync \
             everysec): a crash of Redis alone loses nothing, a crash of its machine can \
             lose about the last second of acknowledged frames"
        )),
        other => Note::Warn(format!(
            "Redis at {shown} runs with appendfsync {other}: the OS writes the append-only \
             file out when it likes (about every 30 s on Linux), so a machine crash can lose \
             that much of acknowledged frames; set appendfsync everysec or always"
        )),
    }];
    notes.push(Note::Info(
        "Redis replication is asynchronous: a replica promoted after a crash may lack the \
         last acknowledged frames"
            .to_owned(),
    ));
    Ok(notes)
}

/// Reads the persistence settings, or `None` when `CONFIG` is refused.
pub(super) async fn persistence(conn: &mut ConnectionManager) -> Option<Persistence> {
    let mut pipe = redis::pipe();
    for name in ["appendonly", "appendfsync", "save"] {
        pipe.cmd("CONFIG").arg("GET").arg(name);
    }
    let query = pipe.query_async::<Vec<Vec<String>>>(conn);
    let replies = match tokio::time::timeout(OP_TIMEOUT, query).await {
        Ok(Ok(replies)) => replies,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "CONFIG GET failed");
            return None;
        }
        Err(_) => return None,
    };
    let value = |i: usize| replies.get(i).and_then(|pair| pair.get(1)).cloned();
    Some(Persistence {
        appendonly: value(0)?,
        appendfsync: value(1)?,
        save: value(2).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(appendonly: &str, appendfsync: &str, save: &str) -> Persistence {
        Persistence {
            appendonly: appendonly.into(),
            appendfsync: appendfsync.into(),
            save: save.into(),
        }
    }

    #[test]
    fn no_append_only_file_is_refused_unless_allowed() {
        let volatile = settings("no", "everysec", "");
        let e = assess(Some(&volatile), false, "redis://h").unwrap_err();
        assert!(
            e.contains("appendonly yes") && e.contains("docs/DEPLOY.md"),
            "{e}"
        );
        assert!(
            e.contains("--redis-allow-volatile") && e.contains("every queued frame"),
            "{e}"
        );
        let snapshots = settings("no", "everysec", "3600 1");
        let e = assess(Some(&snapshots), false, "redis://h").unwrap_err();
        assert!(e.contains("since"), "{e}");
        let notes = assess(Some(&volatile), true, "redis://h").unwrap();
        assert!(matches!(&notes[..], [Note::Warn(w)] if w.contains("allow-volatile")));
    }

    #[test]
    fn each_fsync_policy_is_stated() {
        let notes = assess(Some(&settings("yes", "everysec", "")), false, "redis://h").unwrap();
        assert!(
            matches!(&notes[0], Note::Info(i) if i.contains("last second")),
            "{notes:?}"
        );
        let notes = assess(Some(&settings("yes", "always", "")), false, "redis://h").unwrap();
        assert!(
            matches!(&notes[0], Note::Info(i) if i.contains("any crash")),
            "{notes:?}"
        );
        let notes = assess(Some(&settings("yes", "no", "")), false, "redis://h").unwrap();
        assert!(
            matches!(&notes[0], Note::Warn(w) if w.contains("30 s")),
            "{notes:?}"
        );
        assert!(notes
            .iter()
            .any(|n| matches!(n, Note::Info(i) if i.contains("asynchronous"))));
    }

    #[test]
    fn unknown_settings_warn_and_go_on() {
        let notes = assess(None, false, "redis://h").unwrap();
        assert!(matches!(&notes[..], [Note::Warn(w)] if w.contains("could not check")));
    }

    #[test]
    fn a_password_file_gives_its_first_line_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pw");
        std::fs::write(&file, "  s3cret \nignored\n").unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        assert!(
            matches!(read_password(&file), Err(BackendError::RedisSetup(m)) if m.contains("empty"))
        );
        let missing = dir.path().join("nope");
        assert!(
            matches!(read_password(&missing), Err(BackendError::RedisSetup(m)) if m.contains("cannot read"))
        );
    }

    #[test]
    fn bad_urls_are_setup_errors_without_the_password() {
        let mut config = RedisConfig::new("http://:pw@h", 10);
        assert!(matches!(client(&config), Err(BackendError::RedisSetup(m)) if !m.contains("pw@")));
        config.url = "redis://:pw@[bad".into();
        assert!(matches!(client(&config), Err(BackendError::RedisSetup(m)) if !m.contains("pw")));
    }
}

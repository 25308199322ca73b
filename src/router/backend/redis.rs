//! The Redis queue: several routers share one Redis (issue 10), so any
//! router serves any client and a router can die without losing what it
//! acknowledged.
//!
//! Layout (every key of one recipient carries the hash tag `{<key hex>}`,
//! so it lives in one slot and works unchanged on a Redis Cluster), atomic
//! steps as Lua scripts beside this file, wake-ups and session claims over
//! pub/sub: see the submodules. The contract is [`super::Backend`]'s, tested
//! by the same suite as SQLite's ([`super::contract`]).

pub mod local;

use std::path::PathBuf;

use uuid::Uuid;

use super::{Backend, BackendError, DeviceRecord, Enqueued, Expired, NewFrame, Queued, Registered};
use crate::identity::PublicKey;

/// The default `--redis-prefix`.
pub const DEFAULT_PREFIX: &str = "chat-p2p";

/// How a router reaches its Redis.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// `redis://` or `rediss://` (TLS) URL, with an optional database
    /// number and credentials. Never logged as given: see [`redacted`].
    pub url: String,
    /// A file whose first line is the password (instead of one in the URL).
    pub password_file: Option<PathBuf>,
    /// Prefix of every key and channel, so deployments can share a Redis.
    pub prefix: String,
    /// Start even when Redis' persistence settings would lose acknowledged
    /// frames on a restart (`--redis-allow-volatile`).
    pub allow_volatile: bool,
    /// Most frames waiting for one device.
    pub quota: u64,
}

impl RedisConfig {
    /// A configuration with the defaults for `url`.
    pub fn new(url: impl Into<String>, quota: u64) -> Self {
        Self {
            url: url.into(),
            password_file: None,
            prefix: DEFAULT_PREFIX.to_owned(),
            allow_volatile: false,
            quota,
        }
    }
}

/// `url` with any password replaced by `***`, for logs and errors.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The Redis implementation of [`Backend`].
#[derive(Debug, Clone)]
pub struct RedisBackend {
    _config: RedisConfig,
}

impl RedisBackend {
    /// Connects, checks Redis' persistence settings, loads the scripts and
    /// starts the subscriber.
    pub async fn open(config: RedisConfig) -> Result<Self, BackendError> {
        Err(BackendError::RedisSetup(format!(
            "the Redis backend is not built yet ({})",
            redacted(&config.url)
        )))
    }
}

fn unbuilt<T>() -> std::future::Ready<Result<T, BackendError>> {
    std::future::ready(Err(BackendError::Closed))
}

impl Backend for RedisBackend {
    fn enqueue(
        &self,
        _frames: Vec<NewFrame>,
    ) -> impl std::future::Future<Output = Result<Vec<Enqueued>, BackendError>> + Send + 'static
    {
        unbuilt()
    }

    fn register(
        &self,
        _key: PublicKey,
        _device: Uuid,
        _name: String,
    ) -> impl std::future::Future<Output = Result<Registered, BackendError>> + Send + 'static {
        unbuilt()
    }

    fn seen(
        &self,
        _devices: Vec<(PublicKey, Uuid)>,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'static {
        unbuilt()
    }

    fn devices(
        &self,
        _key: PublicKey,
    ) -> impl std::future::Future<Output = Result<Vec<DeviceRecord>, BackendError>> + Send + 'static
    {
        unbuilt()
    }

    fn remove_device(
        &self,
        _key: PublicKey,
        _device: Uuid,
    ) -> impl std::future::Future<Output = Result<bool, BackendError>> + Send + 'static {
        unbuilt()
    }

    fn fetch(
        &self,
        _recipient: PublicKey,
        _device: Uuid,
        _after: i64,
        _limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Queued>, BackendError>> + Send + 'static {
        unbuilt()
    }

    fn remove(
        &self,
        _recipient: PublicKey,
        _device: Uuid,
        _seqs: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        unbuilt()
    }

    fn expire(
        &self,
        _before: String,
    ) -> impl std::future::Future<Output = Result<Expired, BackendError>> + Send + 'static {
        unbuilt()
    }

    fn depth(
        &self,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        unbuilt()
    }

    fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        std::future::ready(())
    }

    fn is_shared(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redacted("redis://:s3cret@localhost:6379/2"),
            "redis://:***@localhost:6379/2"
        );
        assert_eq!(
            redacted("rediss://router:s3cret@redis.example.org"),
            "rediss://router:***@redis.example.org"
        );
        assert_eq!(redacted("redis://router@h/1"), "redis://router@h/1");
        assert_eq!(
            redacted("redis://127.0.0.1:6379/0"),
            "redis://127.0.0.1:6379/0"
        );
    }
}

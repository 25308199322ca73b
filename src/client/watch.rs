//! `sync --watch`: stay connected for scripts and bots. Takes in messages
//! as they arrive, sends what other commands stored in the outbox, and
//! reconnects by itself until told to stop.
//!
//! Only the process holding the profile's session lock (see
//! [`super::owner`]) connects. Other processes (`send`, `chat`) hand their
//! messages to it through the database: the watch looks at it every
//! [`WatchOptions::poll`] and sends what they queued. When another process
//! holds the lock, the watch follows it through the database instead
//! (reporting what it takes in) and takes over when it exits.

use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, sleep_until, Instant};

use super::backoff::Backoff;
use super::connection::{self, Connection, ServerUrl};
use super::courier::{Courier, Persistence};
use super::follow::Follower;
use super::owner::{Holder, SessionLock};
use super::{ClientError, Engine, Update};
use crate::identity::Identity;

/// Pause before sending again what the router refused for now.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// The most time stopping waits for the router to see the session closed.
const CLOSE_WAIT: Duration = Duration::from_secs(2);

/// A session that lasted this long was not part of a replacement fight:
/// the next replacement starts the pauses over.
const STABLE_SESSION: Duration = Duration::from_secs(10);

/// How a watch runs.
#[derive(Debug, Clone)]
pub struct WatchOptions {
    /// The router.
    pub server: ServerUrl,
    /// The most time one connection attempt may take.
    pub connect_timeout: Duration,
    /// How often the database is looked at for what other processes
    /// stored (and, while following, the lock tried).
    pub poll: Duration,
}

/// What the watch reports, in order.
#[derive(Debug)]
pub enum WatchEvent<'a> {
    /// A session is up; the outbox went out.
    Connected,
    /// Another process owns the profile's router session: the watch
    /// follows it through the database until it exits.
    Following(&'a Holder),
    /// A message arrived, a status changed, a frame was refused...
    Update(&'a Update),
    /// The session ended or could not be made; the watch tries again in
    /// `retry_in`.
    Disconnected {
        /// Why.
        error: &'a ClientError,
        /// The pause before the next attempt.
        retry_in: Duration,
    },
}

/// Runs until `stop` completes (returns `Ok`) or something that retrying
/// cannot mend happens (the router refusing this key, the database
/// failing). Connects only while holding `lock`: until it can take it,
/// follows its holder.
pub async fn run(
    engine: &mut Engine,
    options: &WatchOptions,
    lock: &mut SessionLock,
    stop: impl Future<Output = ()>,
    mut on_event: impl FnMut(WatchEvent<'_>),
) -> Result<(), ClientError> {
    tokio::pin!(stop);
    if let Some(holder) = lock.try_take()? {
        on_event(WatchEvent::Following(&holder));
        if !follow(engine, options, lock, &mut stop, &mut on_event).await? {
            return Ok(());
        }
    }
    let mut backoff = Backoff::default();
    let mut replaced = Backoff::new(Duration::from_secs(1), Duration::from_secs(15));
    // The connection attempt runs while the courier uses the engine: it
    // gets its own copy of the key pair (zeroized when dropped).
    let identity = Identity::from_secret_bytes(&engine.identity().secret_bytes());
    let mut courier = Courier::new(
        engine.identity(),
        options.connect_timeout,
        Persistence::Retry,
    );
    loop {
        let device = engine.device()?;
        let attempt =
            connection::connect(&options.server, &identity, &device, options.connect_timeout);
        tokio::pin!(attempt);
        let connected = loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                result = &mut attempt => break result,
                // Contacts on other routers are written to meanwhile.
                (index, event) = courier.next() => {
                    for update in courier.handle(engine, index, event)? {
                        on_event(WatchEvent::Update(&update));
                    }
                }
            }
        };
        let outcome = match connected {
            Ok(conn) => {
                backoff.reset();
                let started = Instant::now();
                let outcome = session(
                    engine,
                    &mut courier,
                    options,
                    conn,
                    &mut stop,
                    &mut on_event,
                )
                .await;
                if started.elapsed() >= STABLE_SESSION {
                    replaced.reset();
                }
                outcome
            }
            Err(e) => Err(e),
        };
        let error = match outcome {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        engine.connection_lost();
        let retry_in = match &error {
            ClientError::Replaced => replaced.next_delay(&mut rand::thread_rng()),
            ClientError::ClosedForSize(reason) => {
                // Set the offending message aside, then come back.
                for update in engine.closed_for_size(reason)? {
                    on_event(WatchEvent::Update(&update));
                }
                backoff.next_delay(&mut rand::thread_rng())
            }
            e if e.is_transient() => backoff.next_delay(&mut rand::thread_rng()),
            _ => return Err(error),
        };
        on_event(WatchEvent::Disconnected {
            error: &error,
            retry_in,
        });
        courier.pump(engine)?;
        let retry = sleep(retry_in);
        tokio::pin!(retry);
        loop {
            tokio::select! {
                () = &mut stop => return Ok(()),
                () = &mut retry => break,
                (index, event) = courier.next() => {
                    for update in courier.handle(engine, index, event)? {
                        on_event(WatchEvent::Update(&update));
                    }
                }
            }
        }
    }
}

/// One session: `Ok` when stopped, the error that ended it otherwise.
async fn session(
    engine: &mut Engine,
    courier: &mut Courier,
    options: &WatchOptions,
    mut conn: Connection,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    on_event: &mut impl FnMut(WatchEvent<'_>),
) -> Result<(), ClientError> {
    engine.connection_lost();
    engine.set_frame_limit(conn.max_frame_bytes());
    send_outbox(engine, &mut conn, on_event).await?;
    courier.pump(engine)?;
    on_event(WatchEvent::Connected);
    let mut retry_at: Option<Instant> = None;
    let mut poll = tokio::time::interval(options.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen_version = engine.store().data_version()?;
    loop {
        tokio::select! {
            () = stop.as_mut() => {
                // A router that no longer answers must not hold the exit up.
                let _ = tokio::time::timeout(CLOSE_WAIT, conn.close()).await;
                return Ok(());
            }
            _ = poll.tick(), if retry_at.is_none() => {
                // Another process may have stored something to send.
                let version = engine.store().data_version()?;
                if version != seen_version {
                    seen_version = version;
                    engine.outbox_changed();
                    send_outbox(engine, &mut conn, on_event).await?;
                    courier.pump(engine)?;
                }
            }
            (index, event) = courier.next() => {
                for update in courier.handle(engine, index, event)? {
                    on_event(WatchEvent::Update(&update));
                }
            }
            () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                send_outbox(engine, &mut conn, on_event).await?;
            }
            batch = conn.recv_batch() => {
                let Some(frames) = batch? else {
                    return Err(ClientError::Closed("the router ended the session".into()));
                };
                let reaction = engine.handle(frames)?;
                conn.send(&reaction.send).await?;
                if !reaction.retry && retry_at.is_none() {
                    // Acks made room in the send window.
                    let more = engine.outbox_frames()?;
                    conn.send(&more).await?;
                }
                for update in &reaction.updates {
                    on_event(WatchEvent::Update(update));
                }
                for update in engine.take_updates() {
                    on_event(WatchEvent::Update(&update));
                }
                // Receipts may go to other routers.
                courier.pump(engine)?;
                if reaction.retry && retry_at.is_none() {
                    retry_at = Some(Instant::now() + RETRY_PAUSE);
                }
            }
        }
    }
}

/// Sends what waits in the outbox and reports what the engine decided
/// while building the frames.
async fn send_outbox(
    engine: &mut Engine,
    conn: &mut Connection,
    on_event: &mut impl FnMut(WatchEvent<'_>),
) -> Result<(), ClientError> {
    let frames = engine.outbox_frames()?;
    for update in engine.take_updates() {
        on_event(WatchEvent::Update(&update));
    }
    conn.send(&frames).await
}

/// Follows the process that holds `lock` through the database, reporting
/// what it stores, until this process can take the lock (`true`: go on and
/// connect) or `stop` completes (`false`).
async fn follow(
    engine: &mut Engine,
    options: &WatchOptions,
    lock: &mut SessionLock,
    stop: &mut std::pin::Pin<&mut impl Future<Output = ()>>,
    on_event: &mut impl FnMut(WatchEvent<'_>),
) -> Result<bool, ClientError> {
    let mut follower = Follower::start(engine.store())?;
    let mut poll = tokio::time::interval(options.poll);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.as_mut() => return Ok(false),
            _ = poll.tick() => {
                let took_over = lock.try_take()?.is_none();
                // After the owner has gone, a last look at all it stored.
                let updates = if took_over {
                    follower.read(engine.store())?
                } else {
                    follower.poll(engine.store())?
                };
                for update in &updates {
                    on_event(WatchEvent::Update(update));
                }
                if took_over {
                    return Ok(true);
                }
            }
        }
    }
}

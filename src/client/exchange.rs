//! One short session for `send` and `sync`: connect, send the outbox, take
//! in what arrives, and stop when the work is done or time is up.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::{sleep_until, Instant};

use super::connection::{self, ServerUrl};
use super::courier::{Courier, Persistence};
use super::engine::OpenedBatch;
use super::follow::POLL;
use super::{ClientError, Engine, Update};
use crate::protocol::Frame;

/// Pause before sending again what the router refused for now.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Batches from the router being opened (verified, decrypted, parsed) on
/// other threads at once, while the engine stores an earlier one: with two
/// the next batch is ready when a commit ends, and memory stays bounded.
const OPENING: usize = 2;

/// When an exchange is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Until {
    /// The router acknowledged everything we sent (`send`).
    Acked,
    /// That, and the router has delivered everything it held for us
    /// (`sync`).
    Synced,
}

/// Runs one session against `server`: everything must finish within
/// `timeout`. `on_update` sees every change as it is committed. A router
/// that closes the session over a frame far too large is reconnected to,
/// with that message failed.
pub async fn exchange(
    engine: &mut Engine,
    server: &ServerUrl,
    timeout: Duration,
    until: Until,
    mut on_update: impl FnMut(&Update),
) -> Result<(), ClientError> {
    let deadline = Instant::now() + timeout;
    let mut courier = Courier::new(engine.identity(), timeout, Persistence::Once);
    loop {
        let run = Run {
            server,
            deadline,
            timeout,
            until,
        };
        match session(engine, &mut courier, &run, &mut on_update).await {
            Err(ClientError::ClosedForSize(reason)) => {
                let updates = engine.closed_for_size(&reason)?;
                if updates.is_empty() {
                    // No frame of ours to blame: reconnecting would not help.
                    return Err(ClientError::ClosedForSize(reason));
                }
                updates.iter().for_each(&mut on_update);
            }
            // The home router is away: what goes to other routers still
            // goes, then the failure is reported.
            Err(e) if e.is_transient() => {
                engine.connection_lost();
                courier_only(engine, &mut courier, deadline, &mut on_update).await?;
                return Err(e);
            }
            other => return other,
        }
    }
}

/// Delivers what waits for other routers while the home router cannot be
/// reached, until that is done or `deadline`.
async fn courier_only(
    engine: &mut Engine,
    courier: &mut Courier,
    deadline: Instant,
    on_update: &mut impl FnMut(&Update),
) -> Result<(), ClientError> {
    courier.pump(engine)?;
    while courier.busy(engine)? {
        tokio::select! {
            () = sleep_until(deadline) => return Ok(()),
            (index, event) = courier.next() => {
                let updates = courier.handle(engine, index, event)?;
                updates.iter().for_each(&mut *on_update);
            }
        }
    }
    Ok(())
}

/// What an [`exchange`] is asked to do.
struct Run<'a> {
    server: &'a ServerUrl,
    deadline: Instant,
    timeout: Duration,
    until: Until,
}

/// One connection of [`exchange`] to the home router; the courier carries
/// what goes to other routers meanwhile.
async fn session(
    engine: &mut Engine,
    courier: &mut Courier,
    run: &Run<'_>,
    on_update: &mut impl FnMut(&Update),
) -> Result<(), ClientError> {
    let Run {
        server,
        deadline,
        timeout,
        until,
    } = *run;
    let left = deadline.saturating_duration_since(Instant::now());
    let device = engine.device()?;
    let mut conn = connection::connect(server, engine.identity(), &device, left).await?;
    engine.connection_lost();
    engine.set_frame_limit(conn.max_frame_bytes());
    let outbox = engine.outbox_frames()?;
    engine.take_updates().iter().for_each(&mut *on_update);
    conn.send(&outbox).await?;
    courier.pump(engine)?;
    let mut synced = false;
    let mut retry_at: Option<Instant> = None;
    // Other processes of the profile hand their messages to this one while
    // it holds the session (see `super::owner`).
    let mut seen_version = engine.store().data_version()?;
    let mut poll = tokio::time::interval(POLL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Batches received and being opened, oldest first; handled in order.
    let mut opening: VecDeque<Opening> = VecDeque::new();
    loop {
        let done = opening.is_empty()
            && engine.in_flight() == 0
            && retry_at.is_none()
            && (until == Until::Acked || synced)
            && !courier.busy(engine)?;
        if done {
            break;
        }
        tokio::select! {
            // Taking the next batch off the socket comes before storing the
            // one opened: its opening then overlaps the store and commit.
            biased;
            () = sleep_until(deadline) => {
                return Err(ClientError::Timeout {
                    secs: timeout.as_secs(),
                    waiting_for: waiting_for(engine, synced),
                });
            }
            _ = poll.tick(), if retry_at.is_none() => {
                let version = engine.store().data_version()?;
                if version != seen_version {
                    seen_version = version;
                    engine.outbox_changed();
                    let frames = engine.outbox_frames()?;
                    engine.take_updates().iter().for_each(&mut *on_update);
                    conn.send(&frames).await?;
                    courier.pump(engine)?;
                }
            }
            (index, event) = courier.next() => {
                let updates = courier.handle(engine, index, event)?;
                updates.iter().for_each(&mut *on_update);
            }
            () = sleep_until(retry_at.unwrap_or(deadline)), if retry_at.is_some() => {
                retry_at = None;
                let frames = engine.outbox_frames()?;
                engine.take_updates().iter().for_each(&mut *on_update);
                conn.send(&frames).await?;
            }
            batch = conn.recv_batch(), if opening.len() < OPENING => {
                let Some(frames) = batch? else {
                    return Err(ClientError::Closed("the router ended the session".into()));
                };
                synced |= frames.iter().any(|f| matches!(f, Frame::Synced));
                opening.push_back(Opening::start(engine, frames));
            }
            opened = next_opened(&mut opening), if !opening.is_empty() => {
                let reaction = engine.handle_opened(opened?)?;
                conn.send(&reaction.send).await?;
                // Acks made room in the send window.
                if !reaction.retry {
                    let more = engine.outbox_frames()?;
                    conn.send(&more).await?;
                }
                reaction.updates.iter().for_each(&mut *on_update);
                engine.take_updates().iter().for_each(&mut *on_update);
                // Receipts may go to other routers.
                courier.pump(engine)?;
                if reaction.retry {
                    retry_at = Some(Instant::now() + RETRY_PAUSE);
                }
            }
        }
    }
    conn.close().await;
    Ok(())
}

/// A batch from the router on its way to the engine.
enum Opening {
    /// Opened already (few messages: not worth a thread).
    Ready(Box<OpenedBatch>),
    /// Being opened on a blocking thread.
    Running(JoinHandle<OpenedBatch>),
}

impl Opening {
    /// Fewer messages than this are opened on the spot.
    const THREAD_MIN: usize = 32;

    fn start(engine: &Engine, frames: Vec<crate::protocol::Frame>) -> Self {
        let prepared = engine.prepare(frames);
        if prepared.messages() < Self::THREAD_MIN {
            Self::Ready(Box::new(prepared.open()))
        } else {
            Self::Running(tokio::task::spawn_blocking(move || prepared.open()))
        }
    }
}

/// The oldest batch of `opening`, once opened. Cancel-safe: a batch leaves
/// the queue only when this returns it.
async fn next_opened(opening: &mut VecDeque<Opening>) -> Result<OpenedBatch, ClientError> {
    if let Some(Opening::Running(job)) = opening.front_mut() {
        let opened = job
            .await
            .map_err(|e| ClientError::Internal(format!("opening a batch of messages failed: {e}")));
        opening.pop_front();
        return opened;
    }
    match opening.pop_front() {
        Some(Opening::Ready(batch)) => Ok(*batch),
        // Only a running batch is left at the front (handled above), and
        // the caller does not wait on an empty queue.
        other => {
            if let Some(other) = other {
                opening.push_front(other);
            }
            std::future::pending().await
        }
    }
}

/// Fetches, once, what still waits at the home router this profile moved
/// away from (`home set`): frames queued there before contacts learnt of
/// the move. Returns that router and how many messages came from it, or
/// `None` when there is no previous home. Until a fetch succeeds the
/// previous home is kept, and tried again by the next session.
pub async fn drain_previous_home(
    engine: &mut Engine,
    timeout: Duration,
    mut on_update: impl FnMut(&Update),
) -> Result<Option<(ServerUrl, usize)>, ClientError> {
    let Some(previous) = engine.store().previous_home()? else {
        return Ok(None);
    };
    let home = engine.home().clone();
    if previous == home {
        engine.forget_previous_home(&previous)?;
        return Ok(None);
    }
    let before = engine.tally().received;
    // Sessions there route as if it were home: its own devices' copies
    // and contacts pinned to it are delivered on the way.
    engine.set_home(previous.clone())?;
    let outcome = exchange(engine, &previous, timeout, Until::Synced, &mut on_update).await;
    engine.connection_lost();
    engine.set_home(home)?;
    match outcome {
        Ok(()) => {
            engine.forget_previous_home(&previous)?;
            Ok(Some((previous, engine.tally().received - before)))
        }
        Err(e) => {
            on_update(&Update::Link {
                router: previous,
                problem: Some(format!(
                    "{e} (what waits at your previous home router is fetched next time)"
                )),
            });
            Ok(None)
        }
    }
}

fn waiting_for(engine: &Engine, synced: bool) -> String {
    match engine.in_flight() {
        0 if !synced => "the router to deliver what it holds".to_owned(),
        n => format!("the router to acknowledge {n} frame(s)"),
    }
}

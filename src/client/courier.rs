//! Delivery to other people's routers: one connection per router that
//! frames wait for, opened when needed and closed when idle.
//!
//! A profile receives at its home router (the session `exchange`, `chat`
//! and `watch` hold); a contact on another router is written to at *that*
//! router. The courier keeps those connections beside the home session:
//! each runs in a task of its own and reports back through one channel, so
//! the driver's loop waits on one more branch and the [`Engine`] stays the
//! only owner of the profile database. One outbox feeds them all; a router
//! that cannot be reached holds back only what goes to it.
//!
//! Foreign sessions are control sessions (protocol v2, nil device): the
//! client signs in with its own key as everywhere, registers no device at
//! the foreign router and receives nothing there, only acks and errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::backoff::Backoff;
use super::connection::{self, ServerUrl};
use super::{ClientError, Engine, Update};
use crate::identity::Identity;
use crate::protocol::Frame;
use crate::store::device::Device;

/// A connection with nothing in flight for this long is closed.
pub const IDLE_CLOSE: Duration = Duration::from_secs(30);

/// Pause before sending again what a router refused for now.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Whether a router that cannot be reached is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persistence {
    /// Once per run (`send`, `sync`): what goes there stays pending for
    /// the next run, and the run ends.
    Once,
    /// With backoff, for as long as the run lasts (`chat`, `sync --watch`).
    Retry,
}

/// What a connection task reports.
#[derive(Debug)]
pub enum LinkEvent {
    /// Signed in; ready to carry frames.
    Up,
    /// Frames from the router (acks, errors).
    Frames(Vec<Frame>),
    /// The connection failed or ended.
    Down(String),
    /// A pause ended: time to send again.
    Tick,
}

enum State {
    /// Connecting and signing in.
    Connecting,
    /// Ready: frames to send go through this channel.
    Up(mpsc::UnboundedSender<Vec<Frame>>),
    /// Failed: tried again at `until` (never, with [`Persistence::Once`]).
    Down { until: Option<Instant> },
}

struct Link {
    state: State,
    backoff: Backoff,
    /// Whether the user was told it is down (said once per outage).
    reported: bool,
    /// The last time frames went out or came in.
    active_at: Instant,
    /// Set while the router asks to wait (rate limit, storage trouble).
    paused_until: Option<Instant>,
    /// Why the last attempt failed.
    problem: Option<String>,
    /// The way to the connection task while it signs in.
    parked: Option<mpsc::UnboundedSender<Vec<Frame>>>,
}

/// The connections to other people's routers of one run.
pub struct Courier {
    identity: Arc<Identity>,
    connect_timeout: Duration,
    persistence: Persistence,
    /// By the engine's router index.
    links: HashMap<usize, Link>,
    events_tx: mpsc::UnboundedSender<(usize, LinkEvent)>,
    events_rx: mpsc::UnboundedReceiver<(usize, LinkEvent)>,
}

impl Courier {
    /// A courier signing in as `identity`, each attempt bounded by
    /// `connect_timeout`.
    pub fn new(identity: &Identity, connect_timeout: Duration, persistence: Persistence) -> Self {
        let (events_tx, events_rx) = mpsc::unbounded_channel();
        Self {
            // Its own copy of the key pair (zeroized when dropped): the
            // connection tasks outlive any borrow of the engine's.
            identity: Arc::new(Identity::from_secret_bytes(&identity.secret_bytes())),
            connect_timeout,
            persistence,
            links: HashMap::new(),
            events_tx,
            events_rx,
        }
    }

    /// Sends what waits for other routers: tops up the send window of each
    /// connection that is up, and opens one for each router that frames
    /// wait for and none is open or being opened (unless it failed and its
    /// retry time has not come).
    pub fn pump(&mut self, engine: &mut Engine) -> Result<(), ClientError> {
        let now = Instant::now();
        for (&index, link) in &mut self.links {
            let State::Up(out) = &link.state else {
                continue;
            };
            if link.paused_until.is_some_and(|t| t > now) {
                continue;
            }
            let frames = engine.outbox_frames_to(index)?;
            if !frames.is_empty() {
                link.active_at = now;
                // A closed channel means the task ended: its Down follows.
                let _ = out.send(frames);
            }
        }
        for index in engine.routers_waiting()? {
            let due = match self.links.get(&index) {
                None => true,
                Some(Link {
                    state: State::Down { until: Some(t) },
                    ..
                }) => *t <= now,
                Some(_) => false,
            };
            if due {
                if let Some(router) = engine.router(index).cloned() {
                    self.open(index, router);
                }
            }
        }
        // A router that failed and has nothing waiting any more is not
        // tried again (and its retry time wakes nobody).
        self.links
            .retain(|_, link| !matches!(link.state, State::Down { until: Some(t) } if t <= now));
        self.close_idle(engine, now);
        Ok(())
    }

    /// Starts a connection task for router `index`.
    fn open(&mut self, index: usize, router: ServerUrl) {
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let events = self.events_tx.clone();
        let identity = Arc::clone(&self.identity);
        let timeout = self.connect_timeout;
        tokio::spawn(async move {
            run_link(index, router, identity, timeout, out_rx, events).await;
        });
        let link = self.links.entry(index).or_insert_with(|| Link {
            state: State::Connecting,
            backoff: Backoff::default(),
            reported: false,
            active_at: Instant::now(),
            paused_until: None,
            problem: None,
            parked: None,
        });
        link.state = State::Connecting;
        link.active_at = Instant::now();
        // Kept until the task says it is up: frames go out only then.
        link.parked = Some(out_tx);
    }

    /// Closes connections with nothing in flight for [`IDLE_CLOSE`].
    fn close_idle(&mut self, engine: &Engine, now: Instant) {
        for (&index, link) in &mut self.links {
            if matches!(link.state, State::Up(_))
                && engine.in_flight_at(index) == 0
                && now.duration_since(link.active_at) >= IDLE_CLOSE
            {
                // Dropping the sender ends the task, which closes politely.
                link.state = State::Down { until: None };
                link.backoff.reset();
            }
        }
        self.links
            .retain(|_, link| !matches!(link.state, State::Down { until: None }) || link.reported);
    }

    /// The next thing that happened to a connection, or a pause ending.
    /// Never returns while nothing is open or pending.
    pub async fn next(&mut self) -> (usize, LinkEvent) {
        let wake = self
            .links
            .iter()
            .filter_map(|(&i, l)| {
                let retry = match l.state {
                    State::Down { until } => until,
                    _ => None,
                };
                [retry, l.paused_until]
                    .into_iter()
                    .flatten()
                    .min()
                    .map(|t| (t, i))
            })
            .min();
        tokio::select! {
            event = self.events_rx.recv() => match event {
                Some(event) => event,
                // Not reached: the courier holds a sender.
                None => std::future::pending().await,
            },
            () = async {
                match wake {
                    Some((t, _)) => sleep_until(t).await,
                    None => std::future::pending().await,
                }
            } => {
                let index = wake.map_or(0, |(_, i)| i);
                if let Some(link) = self.links.get_mut(&index) {
                    if link.paused_until.is_some_and(|t| t <= Instant::now()) {
                        link.paused_until = None;
                    }
                }
                (index, LinkEvent::Tick)
            }
        }
    }

    /// Applies what [`Courier::next`] returned: acks and errors go to the
    /// engine, a connection that came up gets its frames, one that failed
    /// gives its frames back to the outbox. Returns what to show.
    pub fn handle(
        &mut self,
        engine: &mut Engine,
        index: usize,
        event: LinkEvent,
    ) -> Result<Vec<Update>, ClientError> {
        let router = engine.router(index).cloned();
        let mut updates = Vec::new();
        match event {
            LinkEvent::Up => {
                if let Some(link) = self.links.get_mut(&index) {
                    if let Some(out) = link.parked.take() {
                        link.state = State::Up(out);
                    }
                    link.backoff.reset();
                    link.problem = None;
                    if std::mem::take(&mut link.reported) {
                        if let Some(router) = router {
                            updates.push(Update::Link {
                                router,
                                problem: None,
                            });
                        }
                    }
                }
                engine.outbox_changed();
            }
            LinkEvent::Frames(frames) => {
                let reaction = engine.handle(frames)?;
                updates.extend(reaction.updates);
                updates.extend(engine.take_updates());
                if let Some(link) = self.links.get_mut(&index) {
                    link.active_at = Instant::now();
                    if reaction.retry {
                        link.paused_until = Some(Instant::now() + RETRY_PAUSE);
                    }
                }
            }
            LinkEvent::Down(reason) => {
                let had_work =
                    engine.in_flight_at(index) > 0 || engine.routers_waiting()?.contains(&index);
                engine.route_lost(index);
                if !had_work {
                    // An idle connection that went away: nothing to tell,
                    // and the next frame for that router opens a new one.
                    self.links.remove(&index);
                    self.pump(engine)?;
                    return Ok(updates);
                }
                if let Some(link) = self.links.get_mut(&index) {
                    let until = match self.persistence {
                        Persistence::Retry => {
                            Some(Instant::now() + link.backoff.next_delay(&mut rand::thread_rng()))
                        }
                        Persistence::Once => None,
                    };
                    let closed_idle = matches!(link.state, State::Down { until: None });
                    link.parked = None;
                    link.state = State::Down { until };
                    if !closed_idle {
                        link.problem = Some(reason.clone());
                        if !link.reported {
                            link.reported = true;
                            if let Some(router) = router {
                                updates.push(Update::Link {
                                    router,
                                    problem: Some(reason),
                                });
                            }
                        }
                    }
                }
            }
            LinkEvent::Tick => {}
        }
        self.pump(engine)?;
        Ok(updates)
    }

    /// Whether work with other routers is still under way: a connection
    /// being opened, frames in flight, or frames waiting for a router no
    /// connection was tried to yet. A router that failed is not waited
    /// for (it was reported; what goes there stays pending).
    pub fn busy(&mut self, engine: &mut Engine) -> Result<bool, ClientError> {
        for (&index, link) in &self.links {
            match link.state {
                State::Connecting => return Ok(true),
                State::Up(_) if engine.in_flight_at(index) > 0 => return Ok(true),
                _ => {}
            }
        }
        for index in engine.routers_waiting()? {
            match self.links.get(&index) {
                Some(Link {
                    state: State::Down { .. },
                    ..
                }) => {}
                _ => return Ok(true),
            }
        }
        Ok(false)
    }

    /// The routers that could not be reached in this run, with why.
    pub fn failures(&self, engine: &Engine) -> Vec<(ServerUrl, String)> {
        let mut failed: Vec<(ServerUrl, String)> = self
            .links
            .iter()
            .filter(|(_, l)| !matches!(l.state, State::Up(_)))
            .filter_map(|(&i, l)| Some((engine.router(i)?.clone(), l.problem.clone()?)))
            .collect();
        failed.sort();
        failed
    }
}

/// A connection problem as said to the user: naming the router once.
pub fn describe(router: &ServerUrl, problem: &str) -> String {
    if problem.contains(router.as_str()) {
        problem.to_owned()
    } else {
        format!("{}: {problem}", router.short())
    }
}

/// One connection's life: connect and sign in as a control session, then
/// carry frames both ways until the courier lets go or the router goes.
async fn run_link(
    index: usize,
    router: ServerUrl,
    identity: Arc<Identity>,
    timeout: Duration,
    mut out: mpsc::UnboundedReceiver<Vec<Frame>>,
    events: mpsc::UnboundedSender<(usize, LinkEvent)>,
) {
    let mut conn = match connection::connect(&router, &identity, &Device::control(), timeout).await
    {
        Ok(conn) => conn,
        Err(e) => {
            let _ = events.send((index, LinkEvent::Down(e.to_string())));
            return;
        }
    };
    if events.send((index, LinkEvent::Up)).is_err() {
        conn.close().await;
        return;
    }
    loop {
        tokio::select! {
            frames = out.recv() => match frames {
                Some(frames) => {
                    if let Err(e) = conn.send(&frames).await {
                        let _ = events.send((index, LinkEvent::Down(e.to_string())));
                        return;
                    }
                }
                None => {
                    conn.close().await;
                    return;
                }
            },
            batch = conn.recv_batch() => match batch {
                Ok(Some(frames)) => {
                    let _ = events.send((index, LinkEvent::Frames(frames)));
                }
                Ok(None) => {
                    let _ = events.send((index, LinkEvent::Down("the router ended the session".into())));
                    return;
                }
                Err(e) => {
                    let _ = events.send((index, LinkEvent::Down(e.to_string())));
                    return;
                }
            },
        }
    }
}

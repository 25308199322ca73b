//! The interactive chat loop: one conversation on screen, every contact's
//! messages taken in, and the router reconnected whenever it goes away.
//!
//! Input keeps flowing while the router is away: lines are stored
//! `pending` at once and go out when the connection is back. Leaving waits,
//! within a bound, for the router to acknowledge what was sent.
//!
//! Only the process holding the profile's session lock connects (see
//! [`super::owner`]). A chat opened while another process holds it follows
//! that one through the database: it shows what the owner takes in, stores
//! what is typed for the owner to send, marks what it shows as read (the
//! owner sends the receipts), and takes the session over when the owner
//! exits. The owner looks at the database every [`POLL`] for what the
//! others stored.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};

use super::backoff::Backoff;
use super::connection::{self, Connection, ServerUrl};
use super::courier::{Courier, LinkEvent, Persistence};
use super::follow::{Follower, POLL};
use super::owner::SessionLock;
use super::{ClientError, Engine, Update};
use crate::identity::{Identity, PublicKey};
use crate::protocol::Frame;
use crate::store::{MessageId, Store};

/// Pause before sending again what the router refused for now.
const RETRY_PAUSE: Duration = Duration::from_secs(2);

/// How long to stay away after another session of this profile took over,
/// so two clients of one profile do not keep replacing each other.
const REPLACED_PAUSE: Duration = Duration::from_secs(15);

/// What the person at the keyboard did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// Send this text to the conversation's peer.
    Send(String),
    /// An in-chat command such as `/history 20`, for the screen to answer.
    Command(String),
    /// Leave the chat.
    Quit,
}

/// Where the chat shows things.
pub trait Screen {
    /// A message arrived or changed status.
    fn update(&mut self, update: &Update);
    /// Something about the connection, for the user.
    fn notice(&mut self, text: &str);
    /// Answers an in-chat command, reading the profile database. Returns
    /// the messages it showed, so that those of the conversation are read.
    fn command(&mut self, command: &str, store: &Store) -> Vec<MessageId>;
    /// When the screen wants [`Screen::flush`] called: a screen may hold
    /// status changes back a moment to print several as one line.
    fn flush_at(&self) -> Option<std::time::Instant> {
        None
    }
    /// Prints what the screen held back.
    fn flush(&mut self) {}
}

/// How a chat is run.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// The conversation on screen: its incoming messages are marked read.
    pub peer: PublicKey,
    /// The router.
    pub server: ServerUrl,
    /// The most time one connection attempt may take.
    pub connect_timeout: Duration,
    /// The most time leaving waits for the router's acknowledgements.
    pub quit_timeout: Duration,
    /// The messages shown on opening: those from `peer` are marked read,
    /// and only those (not the unread ones above them).
    pub shown: Vec<MessageId>,
}

/// Runs the chat until the user quits. Returns how many messages are still
/// pending at the end (not acknowledged by the router within the quit
/// timeout, or typed while it was away). Connects only while holding
/// `lock`; until it can take it, follows its holder.
pub async fn run(
    engine: &mut Engine,
    options: &ChatOptions,
    lock: &mut SessionLock,
    input: &mut mpsc::Receiver<Input>,
    screen: &mut dyn Screen,
) -> Result<usize, ClientError> {
    // The connection attempt runs while input is still being stored, so it
    // gets its own copy of the key pair (zeroized when dropped).
    let identity = Arc::new(Identity::from_secret_bytes(
        &engine.identity().secret_bytes(),
    ));
    let courier = Courier::new(
        engine.identity(),
        options.connect_timeout,
        Persistence::Retry,
    );
    let mut chat = Chat {
        identity,
        engine,
        options,
        screen,
        backoff: Backoff::default(),
        courier,
        away_reported: false,
        quit_by: None,
        retry_at: None,
        wait_shown: false,
        seen_version: 0,
    };
    // Shown on opening, so read: the receipts wait in the outbox, which
    // goes out as soon as the router is reached.
    chat.engine.mark_read(&options.peer, &options.shown)?;
    chat.engine.connection_lost();
    if let Some(holder) = lock.try_take()? {
        chat.screen.notice(&format!(
            "{holder} holds this profile's router session: this chat shows what it takes in \
             and sends through it, and takes the session over when it exits"
        ));
        if let Some(pending) = chat.follow(lock, input).await? {
            chat.screen.flush();
            return Ok(pending);
        }
        chat.screen
            .notice("the other process has exited: this chat now holds the router session");
    }
    loop {
        let Some(conn) = chat.connect(input).await? else {
            break;
        };
        if let Some(conn) = chat.converse(conn, input).await? {
            conn.close().await;
            break;
        }
    }
    chat.screen.flush();
    // Read receipts queued offline are not messages: they wait quietly.
    Ok(chat.engine.store().outbox()?.len())
}

struct Chat<'a> {
    identity: Arc<Identity>,
    engine: &'a mut Engine,
    options: &'a ChatOptions,
    screen: &'a mut dyn Screen,
    backoff: Backoff,
    /// Connections to contacts' routers, beside the home session.
    courier: Courier,
    away_reported: bool,
    /// Set when the user asked to leave: the deadline for pending acks.
    quit_by: Option<Instant>,
    retry_at: Option<Instant>,
    /// Whether "the router asks to wait" was shown and nothing was sent
    /// since: a long outage (the router's queue down) is said once, not
    /// at every retry.
    wait_shown: bool,
    /// The database's data version when last looked at for what other
    /// processes stored.
    seen_version: i64,
}

impl Chat<'_> {
    /// Connects, retrying with backoff, while still taking input. `None`
    /// when the user quit before a connection could be made.
    async fn connect(
        &mut self,
        input: &mut mpsc::Receiver<Input>,
    ) -> Result<Option<Connection>, ClientError> {
        loop {
            if self.quit_by.is_some() {
                return Ok(None);
            }
            let (identity, server) = (Arc::clone(&self.identity), self.options.server.clone());
            let timeout = self.options.connect_timeout;
            let device = self.engine.device()?;
            let attempt =
                async move { connection::connect(&server, &identity, &device, timeout).await };
            tokio::pin!(attempt);
            let result = loop {
                // Once the user has left, input is not read again: a closed
                // channel would answer at once, forever.
                let reading = self.quit_by.is_none();
                tokio::select! {
                    result = &mut attempt => break result,
                    line = input.recv(), if reading => self.on_input(line, None).await?,
                    // Contacts on other routers are written to meanwhile.
                    (index, event) = self.courier.next() => self.on_link(index, event)?,
                }
            };
            match result {
                Ok(mut conn) => {
                    self.on_connected(&mut conn).await?;
                    return Ok(Some(conn));
                }
                Err(e) if e.is_transient() => self.wait_to_retry(&e, input).await?,
                Err(e) => return Err(e),
            }
        }
    }

    async fn on_connected(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        self.backoff.reset();
        if self.away_reported {
            self.screen
                .notice("connected to the router again; sending what waited");
            self.away_reported = false;
        }
        self.engine.connection_lost();
        self.engine.set_frame_limit(conn.max_frame_bytes());
        self.seen_version = self.engine.store().data_version()?;
        let frames = self.engine.outbox_frames()?;
        self.show_engine_updates();
        conn.send(&frames).await?;
        self.courier.pump(self.engine)
    }

    /// Sends what other processes of the profile stored in the outbox
    /// since the last look, if any committed anything.
    async fn on_poll(&mut self, conn: &mut Connection) -> Result<(), ClientError> {
        let version = self.engine.store().data_version()?;
        if version == self.seen_version || self.retry_at.is_some() {
            return Ok(());
        }
        self.seen_version = version;
        self.engine.outbox_changed();
        let frames = self.engine.outbox_frames()?;
        self.show_engine_updates();
        conn.send(&frames).await?;
        self.courier.pump(self.engine)
    }

    /// Shows what the engine decided outside a batch of frames (a message
    /// too large for the router, failed).
    fn show_engine_updates(&mut self) {
        for update in self.engine.take_updates() {
            self.screen.update(&update);
        }
    }

    /// Reports the first failure only, then waits, still taking input.
    async fn wait_to_retry(
        &mut self,
        error: &ClientError,
        input: &mut mpsc::Receiver<Input>,
    ) -> Result<(), ClientError> {
        let delay = match error {
            ClientError::Replaced => REPLACED_PAUSE,
            _ => self.backoff.next_delay(&mut rand::thread_rng()),
        };
        if !self.away_reported {
            self.screen.notice(&format!(
                "{error}. Reconnecting in the background; what you type is stored and sent \
                 when the router is back."
            ));
            self.away_reported = true;
        }
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = sleep_until(until) => return Ok(()),
                line = input.recv() => {
                    self.on_input(line, None).await?;
                    if self.quit_by.is_some() {
                        return Ok(());
                    }
                }
                (index, event) = self.courier.next() => self.on_link(index, event)?,
            }
        }
    }

    /// Talks over `conn` until it is lost (`None`) or the user has left and
    /// everything was acknowledged (the connection, to close).
    async fn converse(
        &mut self,
        mut conn: Connection,
        input: &mut mpsc::Receiver<Input>,
    ) -> Result<Option<Connection>, ClientError> {
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.quit_by.is_some()
                && self.engine.in_flight() == 0
                && !self.courier.busy(self.engine)?
            {
                return Ok(Some(conn));
            }
            let quit_by = self.quit_by;
            let retry_at = self.retry_at;
            let flush_at = self.screen.flush_at().map(Instant::from_std);
            let outcome = tokio::select! {
                line = input.recv(), if quit_by.is_none() => {
                    self.on_input(line, Some(&mut conn)).await
                }
                batch = conn.recv_batch() => self.on_frames(batch, &mut conn).await,
                (index, event) = self.courier.next() => self.on_link(index, event),
                _ = poll.tick() => self.on_poll(&mut conn).await,
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.screen.flush();
                    Ok(())
                }
                () = sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {
                    self.retry_at = None;
                    let frames = self.engine.outbox_frames()?;
                    self.show_engine_updates();
                    conn.send(&frames).await
                }
                () = sleep_until(quit_by.unwrap_or_else(Instant::now)), if quit_by.is_some() => {
                    self.screen.notice(&format!(
                        "leaving with {} frame(s) not yet acknowledged by the router; \
                         they stay pending and go out next time",
                        self.engine.in_flight()
                    ));
                    return Ok(Some(conn));
                }
            };
            if let Err(e) = outcome {
                if !e.is_transient() && !matches!(e, ClientError::Replaced) {
                    return Err(e);
                }
                if let ClientError::ClosedForSize(reason) = &e {
                    // Set the offending message aside, then reconnect.
                    for update in self.engine.closed_for_size(reason)? {
                        self.screen.update(&update);
                    }
                }
                self.engine.connection_lost();
                if self.quit_by.is_some() {
                    return Ok(None);
                }
                self.wait_to_retry(&e, input).await?;
                return Ok(None);
            }
        }
    }

    /// Something happened on a connection to another router.
    fn on_link(&mut self, index: usize, event: LinkEvent) -> Result<(), ClientError> {
        for update in self.courier.handle(self.engine, index, event)? {
            self.screen.update(&update);
        }
        Ok(())
    }

    async fn on_frames(
        &mut self,
        batch: Result<Option<Vec<Frame>>, ClientError>,
        conn: &mut Connection,
    ) -> Result<(), ClientError> {
        let Some(frames) = batch? else {
            return Err(ClientError::Closed("the router ended the session".into()));
        };
        let reaction = self.engine.handle(frames)?;
        conn.send(&reaction.send).await?;
        if !reaction.retry && self.retry_at.is_none() {
            // Acks made room in the send window.
            let more = self.engine.outbox_frames()?;
            conn.send(&more).await?;
        }
        let peer = self.options.peer.to_base64();
        let mut shown = Vec::new();
        // One "the router asks to wait" per pause, not one per frame, and
        // not again until something went through.
        let mut wait_said = self.retry_at.is_some() || self.wait_shown;
        for update in &reaction.updates {
            match update {
                Update::Received(m) if m.peer_key == peer => shown.push(m.msg_id),
                Update::Retrying { .. } if wait_said => continue,
                Update::Retrying { .. } => {
                    wait_said = true;
                    self.wait_shown = true;
                }
                Update::Status(_) => self.wait_shown = false,
                _ => {}
            }
            self.screen.update(update);
        }
        self.show_engine_updates();
        // Shown in the open conversation: read, and said so once.
        let receipts = self.engine.mark_read(&self.options.peer, &shown)?;
        conn.send(&receipts).await?;
        // Acks, receipts and new messages may be for other routers.
        self.courier.pump(self.engine)?;
        if reaction.retry && self.retry_at.is_none() {
            self.retry_at = Some(Instant::now() + RETRY_PAUSE);
        }
        Ok(())
    }

    /// Handles one input; `conn` is the live connection, if any.
    async fn on_input(
        &mut self,
        line: Option<Input>,
        conn: Option<&mut Connection>,
    ) -> Result<(), ClientError> {
        match line.unwrap_or(Input::Quit) {
            Input::Send(text) => {
                let (_, frame) = match self.engine.write(&self.options.peer, &text) {
                    Ok(composed) => composed,
                    Err(e @ (ClientError::TooLong { .. } | ClientError::FrameTooLarge { .. })) => {
                        self.screen.notice(&format!("not sent: {e}"));
                        return Ok(());
                    }
                    Err(e) => return Err(e),
                };
                match (conn, frame) {
                    (Some(conn), Some(frame)) => conn.send(&[frame]).await?,
                    // For another router: its connection takes it.
                    (Some(_), None) => self.courier.pump(self.engine)?,
                    // Stored pending; sent from the outbox on reconnect (or
                    // now, to another router).
                    (None, _) => {
                        self.engine.connection_lost();
                        self.courier.pump(self.engine)?;
                    }
                }
            }
            Input::Command(command) => {
                let shown = self.screen.command(&command, self.engine.store());
                let receipts = self.engine.mark_read(&self.options.peer, &shown)?;
                match conn {
                    Some(conn) => {
                        conn.send(&receipts).await?;
                        self.courier.pump(self.engine)?;
                    }
                    // Queued; sent from the outbox on reconnect.
                    None => self.engine.connection_lost(),
                }
            }
            Input::Quit => self.quit_by = Some(Instant::now() + self.options.quit_timeout),
        }
        Ok(())
    }
}

impl Chat<'_> {
    /// Follows the process holding `lock` through the database until this
    /// one can take the lock (`None`: go on and connect) or the user has
    /// left (how many of the messages typed here are still pending).
    async fn follow(
        &mut self,
        lock: &mut SessionLock,
        input: &mut mpsc::Receiver<Input>,
    ) -> Result<Option<usize>, ClientError> {
        let mut follower = Follower::start(self.engine.store())?;
        let mut typed = Vec::new();
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if self.quit_by.is_some() {
                let pending = self.still_pending(&typed)?;
                if pending == 0 {
                    return Ok(Some(0));
                }
            }
            let quit_by = self.quit_by;
            let flush_at = self.screen.flush_at().map(Instant::from_std);
            tokio::select! {
                line = input.recv(), if quit_by.is_none() => {
                    if let Some(id) = self.on_followed_input(line)? {
                        typed.push(id);
                    }
                }
                _ = poll.tick() => {
                    let took_over = lock.try_take()?.is_none();
                    // After the owner has gone, a last look at all it stored.
                    let updates = if took_over {
                        follower.read(self.engine.store())?
                    } else {
                        follower.poll(self.engine.store())?
                    };
                    self.show_followed(&updates)?;
                    if took_over {
                        return Ok(None);
                    }
                }
                () = sleep_until(flush_at.unwrap_or_else(Instant::now)), if flush_at.is_some() => {
                    self.screen.flush();
                }
                () = sleep_until(quit_by.unwrap_or_else(Instant::now)), if quit_by.is_some() => {
                    return Ok(Some(self.still_pending(&typed)?));
                }
            }
        }
    }

    /// How many of `ids` are still pending.
    fn still_pending(&self, ids: &[MessageId]) -> Result<usize, ClientError> {
        let mut n = 0;
        for id in ids {
            if self
                .engine
                .store()
                .message(id)?
                .is_some_and(|m| m.status == crate::store::Status::Pending)
            {
                n += 1;
            }
        }
        Ok(n)
    }

    /// Shows what the owner stored; what arrived in the open conversation
    /// is read, its receipt queued for the owner to send.
    fn show_followed(&mut self, updates: &[Update]) -> Result<(), ClientError> {
        let peer = self.options.peer.to_base64();
        let mut shown = Vec::new();
        for update in updates {
            if let Update::Received(m) = update {
                if m.peer_key == peer {
                    shown.push(m.msg_id);
                }
            }
            self.screen.update(update);
        }
        // The frames are the owner's to send, from the outbox.
        self.engine.mark_read(&self.options.peer, &shown)?;
        self.engine.connection_lost();
        Ok(())
    }

    /// Handles one input while following: a message typed is stored for
    /// the owner to send (its id returned).
    fn on_followed_input(&mut self, line: Option<Input>) -> Result<Option<MessageId>, ClientError> {
        match line.unwrap_or(Input::Quit) {
            Input::Send(text) => match self.engine.queue(&self.options.peer, &text) {
                Ok(message) => return Ok(Some(message.msg_id)),
                Err(e @ (ClientError::TooLong { .. } | ClientError::FrameTooLarge { .. })) => {
                    self.screen.notice(&format!("not sent: {e}"));
                }
                Err(e) => return Err(e),
            },
            Input::Command(command) => {
                let shown = self.screen.command(&command, self.engine.store());
                self.engine.mark_read(&self.options.peer, &shown)?;
                self.engine.connection_lost();
            }
            Input::Quit => self.quit_by = Some(Instant::now() + self.options.quit_timeout),
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::store::test_util::temp_store;
    use crate::store::{ContactName, Status};

    /// A screen that keeps what it was shown.
    struct Recorder(Arc<Mutex<Vec<String>>>);

    impl Screen for Recorder {
        fn update(&mut self, update: &Update) {
            let text = match update {
                Update::Received(m) => format!("received {}", m.body),
                Update::Status(m) => format!("{} {}", m.status, m.body),
                other => format!("{other:?}"),
            };
            self.0.lock().unwrap().push(text);
        }
        fn notice(&mut self, text: &str) {
            self.0.lock().unwrap().push(format!("notice {text}"));
        }
        fn command(&mut self, _: &str, _: &Store) -> Vec<MessageId> {
            Vec::new()
        }
    }

    /// Waits (bounded) until `check` holds.
    async fn until(what: &str, check: impl Fn() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("never: {what}");
    }

    #[tokio::test]
    async fn a_chat_beside_the_owner_shows_what_it_stores_reads_it_and_queues_what_is_typed() {
        let (_dir, mut store) = temp_store();
        let bob = Identity::generate().public_key();
        store
            .add_contact(&ContactName::parse("bob").unwrap(), &bob)
            .unwrap();
        let path = store.path().to_path_buf();
        let mut owner = SessionLock::open(&path, "chat-p2p sync --watch").unwrap();
        assert_eq!(owner.try_take().unwrap(), None);
        let mut lock = SessionLock::open(&path, "chat-p2p chat").unwrap();
        let mut engine = Engine::new(store, Identity::generate());
        let options = ChatOptions {
            peer: bob,
            // Never dialled: the chat only follows.
            server: ServerUrl::parse("ws://127.0.0.1:9/ws").unwrap(),
            connect_timeout: Duration::from_secs(1),
            quit_timeout: Duration::from_millis(100),
            shown: Vec::new(),
        };
        let shown = Arc::new(Mutex::new(Vec::new()));
        let mut screen = Recorder(Arc::clone(&shown));
        let (tx, mut input) = mpsc::channel(4);
        let seen = |text: &str| shown.lock().unwrap().iter().any(|l| l.contains(text));
        let drive = async {
            // The owner takes a message in.
            let mut theirs = Store::open(&path).unwrap();
            let id = MessageId::new_v7();
            theirs
                .insert_incoming(&id, &bob, "hello", &crate::clock::now())
                .unwrap();
            until("the message shown", || seen("received hello")).await;
            // Shown in the open conversation: read, with a receipt for the
            // owner to send.
            let m = theirs.incoming(&bob, &id).unwrap().unwrap();
            assert_eq!(m.status, Status::Read);
            assert_eq!(theirs.pending_receipts().unwrap().len(), 1);
            tx.send(Input::Send("typed here".into())).await.unwrap();
            until("the message stored", || {
                theirs.outbox().is_ok_and(|o| o.len() == 1)
            })
            .await;
            tx.send(Input::Quit).await.unwrap();
        };
        let run = run(&mut engine, &options, &mut lock, &mut input, &mut screen);
        let (pending, ()) = tokio::join!(run, drive);
        // The owner never sent it: still pending on leaving.
        assert_eq!(pending.unwrap(), 1);
        assert!(seen("holds this profile's router session"));
        assert!(!lock.is_held());
    }
}

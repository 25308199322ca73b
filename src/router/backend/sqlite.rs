//! The SQLite queue: one file under the router's data directory.
//!
//! One writer thread owns the only read-write connection. It takes whatever
//! submissions are waiting, applies them all in ONE transaction, commits
//! (WAL, `synchronous = FULL`: the commit survives a power cut), and only
//! then answers each submission through its oneshot. So a burst of frames
//! from many sessions costs one fsync, not one each, and no `ack` precedes
//! its commit. Reads (delivery) use separate connections, which WAL lets
//! run beside the writer.
//!
//! Once a router takes [`Backend::events`], new frames are handed to their
//! recipients' sessions a few batches before they are written, and those
//! their devices acknowledge meanwhile are never written ([`staging`]).

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags, Transaction};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use self::devices::Keys;
use self::queue::{enqueue_tx, expire_tx, fetch_rows, remove_tx};
use self::staging::Staged;
use super::{
    Backend, BackendError, ClusterEvent, DeviceRecord, Enqueued, Expired, NewFrame, Queued,
    Registered,
};
use crate::clock;
use crate::identity::PublicKey;

mod devices;
mod queue;
mod staging;

mod embedded {
    refinery::embed_migrations!("src/router/backend/migrations");
}

/// `application_id` of a router queue file ('CP2R').
pub const APPLICATION_ID: i32 = 0x4350_3252;

/// The queue file's name inside the data directory.
pub const FILE_NAME: &str = "queue.sqlite3";

/// The lock file's name inside the data directory: held (an OS lock) while
/// a router has the queue open, so a second router on the same directory
/// is refused instead of running beside the first.
pub const LOCK_NAME: &str = "router.lock";

/// Submissions waiting for the writer; senders wait when it is full.
const WRITER_QUEUE: usize = 2048;

/// Most submissions applied in one transaction.
const MAX_BATCH: usize = 2048;

/// A batch smaller than this waits [`LINGER`] once for more submissions.
const LINGER_BELOW: usize = 64;

/// How long a small batch waits for company before it commits.
const LINGER: Duration = Duration::from_micros(300);

/// How many batches of frames stay staged (handed over, not yet written)
/// while their acks come back: each turn commits the oldest beyond these.
const GENERATIONS: usize = 8;

/// How long a batch stays staged once no more frames come: what an idle
/// router adds to a sender's `ack`, and the time its recipients have to
/// acknowledge it (a client acks after its own commit, milliseconds).
const HOLD: Duration = Duration::from_millis(5);

/// How long a recipient counts as acknowledging (online) after its last
/// ack: a batch with frames for none of them is not held.
const ACTIVE_FOR: Duration = Duration::from_millis(250);

/// How often the checkpoint thread copies the WAL into the database.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);

/// The writer's page cache, in KiB as `PRAGMA cache_size` takes it
/// (negative).
const WRITER_CACHE_KIB: i64 = -32_768;

/// WAL size (pages) at which the writer checkpoints itself, should the
/// checkpoint thread fall behind.
const WAL_FALLBACK_PAGES: i64 = 16_384;

pub(super) type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

/// One unit of work for the writer.
enum Op {
    Enqueue(Vec<NewFrame>, Reply<Vec<Enqueued>>),
    Register(PublicKey, Uuid, String, Reply<Registered>),
    Seen(Vec<(PublicKey, Uuid)>, Reply<()>),
    RemoveDevice(PublicKey, Uuid, Reply<bool>),
    /// A device's acks: the seqs still to remove, and how many of its
    /// seqs already settled frames that were staged (see [`staging`]).
    Remove(PublicKey, Uuid, Vec<i64>, u64, Reply<u64>),
    Expire(String, Reply<Expired>),
    Close(oneshot::Sender<()>),
}

/// Where to hand frames over before their commit: set once the router
/// takes [`Backend::events`]; until then (a queue used without a hub, as
/// in tests) every batch is applied at once.
type Handoff = Arc<OnceLock<mpsc::UnboundedSender<ClusterEvent>>>;

/// The SQLite implementation of [`Backend`].
#[derive(Clone)]
pub struct SqliteBackend {
    ops: mpsc::Sender<Op>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: Arc<PathBuf>,
    handoff: Handoff,
    /// The newest `seq` handed over before its commit.
    staged: Arc<AtomicI64>,
    /// The newest `seq` whose batch is done (committed or failed): a fetch
    /// waits until it reaches `staged`, so it finds every frame handed
    /// over before it.
    done: watch::Receiver<i64>,
}

impl std::fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteBackend {
    /// Opens (creating if needed) the queue in `dir`, migrates it and starts
    /// its writer thread. `quota` caps the frames queued per recipient.
    pub fn open(dir: &Path, quota: u64) -> Result<Self, BackendError> {
        Self::open_holding(dir, quota, HOLD)
    }

    /// [`SqliteBackend::open`] with staged batches held up to `hold`
    /// when idle (tests hold them until something else commits them).
    fn open_holding(dir: &Path, quota: u64, hold: Duration) -> Result<Self, BackendError> {
        create_private_dir(dir).map_err(|source| BackendError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = lock_dir(dir)?;
        let path = dir.join(FILE_NAME);
        let not_ours = |e: BackendError| match e {
            BackendError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if f.code == rusqlite::ErrorCode::NotADatabase =>
            {
                BackendError::NotOurs(path.clone())
            }
            other => other,
        };
        // The queue shows who writes to whom: readable by this user only,
        // a new file from the start, an older release's once it is known
        // to be ours (a foreign file is refused untouched).
        let io = |source| BackendError::Io {
            path: path.clone(),
            source,
        };
        crate::store::create_private_file_alone(&path).map_err(io)?;
        let mut conn = connect(&path, false).map_err(not_ours)?;
        check_ours(&conn, &path).map_err(not_ours)?;
        crate::store::make_database_private(&path).map_err(io)?;
        embedded::migrations::runner().run(&mut conn)?;
        conn.pragma_update(None, "application_id", APPLICATION_ID)?;
        let keys = Keys::load(&conn)?;
        let next_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) + 1 FROM queue", [], |r| {
                r.get(0)
            })?;
        // Checkpoints run on their own thread (below), so a commit never
        // waits for the database file's copy and fsync; the writer checks
        // in only as a fallback if the WAL grows large anyway.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_FALLBACK_PAGES)?;
        // A full batch dirties more pages than SQLite's default 2 MB cache
        // holds: it then spilled pages to the WAL before the commit, and
        // wrote them again at the commit.
        conn.pragma_update(None, "cache_size", WRITER_CACHE_KIB)?;
        let checkpointer = connect(&path, false)?;
        let (ops, rx) = mpsc::channel(WRITER_QUEUE);
        let stopped = Arc::new(AtomicBool::new(false));
        let handoff = Handoff::default();
        let staged = Arc::new(AtomicI64::new(next_seq - 1));
        let (done_tx, done) = watch::channel(next_seq - 1);
        let writer = Writer {
            _lock: lock,
            conn,
            keys,
            stale: false,
            quota,
            next_seq,
            stopped: Arc::clone(&stopped),
            handoff: Arc::clone(&handoff),
            staged: Arc::clone(&staged),
            done: done_tx,
            hold,
            active: HashMap::new(),
            pruned: Instant::now(),
        };
        let spawn_error = |source| BackendError::Io {
            path: path.clone(),
            source,
        };
        std::thread::Builder::new()
            .name("queue-checkpoint".to_owned())
            .spawn(move || checkpoint_loop(&checkpointer, &stopped))
            .map_err(spawn_error)?;
        std::thread::Builder::new()
            .name("queue-writer".to_owned())
            .spawn(move || writer.run(rx))
            .map_err(spawn_error)?;
        Ok(Self {
            ops,
            readers: Arc::new(Mutex::new(Vec::new())),
            path: Arc::new(path),
            handoff,
            staged,
            done,
        })
    }

    /// The queue file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `query` on a pooled read connection, off the async threads.
    fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> Result<T, BackendError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static {
        let readers = Arc::clone(&self.readers);
        let path = Arc::clone(&self.path);
        async move {
            tokio::task::spawn_blocking(move || {
                let conn = take_reader(&readers, &path)?;
                let result = query(&conn);
                // A list of connections cannot be left half-updated: a
                // poisoned lock is still usable.
                readers.lock().unwrap_or_else(|e| e.into_inner()).push(conn);
                result
            })
            .await
            .map_err(|_| BackendError::Closed)?
        }
    }

    /// Submits `op` built around a fresh reply channel and awaits the reply.
    fn submit<T: Send + 'static>(
        &self,
        make: impl FnOnce(Reply<T>) -> Op,
    ) -> impl std::future::Future<Output = Result<T, BackendError>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        super::hand_over(&self.ops, make(tx), rx)
    }
}

impl Backend for SqliteBackend {
    fn enqueue(
        &self,
        frames: Vec<NewFrame>,
    ) -> impl std::future::Future<Output = Result<Vec<Enqueued>, BackendError>> + Send + 'static
    {
        self.submit(move |reply| Op::Enqueue(frames, reply))
    }

    fn register(
        &self,
        key: PublicKey,
        device: Uuid,
        name: String,
    ) -> impl std::future::Future<Output = Result<Registered, BackendError>> + Send + 'static {
        self.submit(move |reply| Op::Register(key, device, name, reply))
    }

    fn seen(
        &self,
        devices: Vec<(PublicKey, Uuid)>,
    ) -> impl std::future::Future<Output = Result<(), BackendError>> + Send + 'static {
        self.submit(move |reply| Op::Seen(devices, reply))
    }

    fn devices(
        &self,
        key: PublicKey,
    ) -> impl std::future::Future<Output = Result<Vec<DeviceRecord>, BackendError>> + Send + 'static
    {
        self.read(move |conn| devices::list(conn, &key))
    }

    fn knows(
        &self,
        key: PublicKey,
    ) -> impl std::future::Future<Output = Result<bool, BackendError>> + Send + 'static {
        self.read(move |conn| devices::any_live(conn, &key))
    }

    fn remove_device(
        &self,
        key: PublicKey,
        device: Uuid,
    ) -> impl std::future::Future<Output = Result<bool, BackendError>> + Send + 'static {
        self.submit(move |reply| Op::RemoveDevice(key, device, reply))
    }

    fn fetch(
        &self,
        recipient: PublicKey,
        device: Uuid,
        after: i64,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Vec<Queued>, BackendError>> + Send + 'static {
        // Every frame handed over so far must be readable first: the
        // session may have been offered one it had no room for.
        let need = self.staged.load(Ordering::Acquire);
        let mut done = self.done.clone();
        let read = self.read(move |conn| fetch_rows(conn, &recipient, &device, after, limit));
        async move {
            if *done.borrow() < need {
                done.wait_for(|d| *d >= need)
                    .await
                    .map_err(|_| BackendError::Closed)?;
            }
            read.await
        }
    }

    fn depth(
        &self,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        self.read(|conn| {
            let depth = conn.query_row("SELECT count(*) FROM queue", [], |r| r.get::<_, i64>(0))?;
            Ok(u64::try_from(depth).unwrap_or(0))
        })
    }

    fn remove(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> impl std::future::Future<Output = Result<u64, BackendError>> + Send + 'static {
        self.submit(move |reply| Op::Remove(recipient, device, seqs, 0, reply))
    }

    fn remove_detached(
        &self,
        recipient: PublicKey,
        device: Uuid,
        seqs: Vec<i64>,
    ) -> Option<futures_util::future::BoxFuture<'static, Result<u64, BackendError>>> {
        // Nobody awaits the answer (a failed commit is logged by the
        // writer), so the session is not woken for it.
        let (reply, _) = oneshot::channel();
        match self
            .ops
            .try_send(Op::Remove(recipient, device, seqs, 0, reply))
        {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Closed(_)) => {
                Some(Box::pin(std::future::ready(Err(BackendError::Closed))))
            }
            Err(mpsc::error::TrySendError::Full(Op::Remove(recipient, device, seqs, _, _))) => {
                Some(Box::pin(self.remove(recipient, device, seqs)))
            }
            // Only a removal was sent: nothing else can come back.
            Err(mpsc::error::TrySendError::Full(_)) => None,
        }
    }

    fn expire(
        &self,
        before: String,
    ) -> impl std::future::Future<Output = Result<Expired, BackendError>> + Send + 'static {
        self.submit(move |reply| Op::Expire(before, reply))
    }

    /// The frames the writer hands over before their commit (see
    /// [`staging`]); taken once. From then on the writer stages.
    fn events(&self) -> Option<mpsc::UnboundedReceiver<ClusterEvent>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.handoff.set(tx).ok()?;
        Some(rx)
    }

    fn close(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let ops = self.ops.clone();
        async move {
            let (tx, rx) = oneshot::channel();
            if ops.send(Op::Close(tx)).await.is_ok() {
                let _ = rx.await;
            }
        }
    }
}

/// Creates `dir` (and parents) readable by this user only where it is new:
/// the queue reveals who writes to whom.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// Takes the data directory's lock, or says who holds it. The lock is the
/// OS's (`flock`/`LockFileEx`): it goes away with the process, so a crash
/// never leaves a stale lock behind.
fn lock_dir(dir: &Path) -> Result<std::fs::File, BackendError> {
    let path = dir.join(LOCK_NAME);
    let io = |source| BackendError::Io {
        path: path.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io)?;
    match fs4::FileExt::try_lock(&file) {
        Ok(()) => Ok(file),
        Err(fs4::TryLockError::WouldBlock) => Err(BackendError::Locked(dir.to_path_buf())),
        Err(fs4::TryLockError::Error(e)) => Err(io(e)),
    }
}

/// Opens a connection with the queue's settings.
fn connect(path: &Path, read_only: bool) -> Result<Connection, BackendError> {
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(10))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

/// Refuses a file another application (or a profile) owns.
fn check_ours(conn: &Connection, path: &Path) -> Result<(), BackendError> {
    let app_id: i32 = conn.pragma_query_value(None, "application_id", |r| r.get(0))?;
    if app_id == APPLICATION_ID {
        return Ok(());
    }
    let tables: i64 = conn.query_row(
        "SELECT count(*) FROM sqlite_schema WHERE type = 'table'",
        [],
        |r| r.get(0),
    )?;
    if app_id != 0 || tables > 0 {
        return Err(BackendError::NotOurs(path.to_path_buf()));
    }
    Ok(())
}

fn take_reader(readers: &Mutex<Vec<Connection>>, path: &Path) -> Result<Connection, BackendError> {
    let pooled = readers.lock().unwrap_or_else(|e| e.into_inner()).pop();
    match pooled {
        Some(conn) => Ok(conn),
        None => connect(path, true),
    }
}

/// Copies committed WAL frames into the database file with PASSIVE
/// checkpoints, which never block the writer, until the writer stopped.
fn checkpoint_loop(conn: &Connection, stopped: &AtomicBool) {
    while !stopped.load(Ordering::Acquire) {
        std::thread::sleep(CHECKPOINT_EVERY);
        let result = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
            Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))
        });
        match result {
            Ok((wal, copied)) => tracing::trace!(wal, copied, "WAL checkpoint"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed; will retry"),
        }
    }
}

/// Moves whatever is waiting into `batch`, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::Receiver<Op>, batch: &mut Vec<Op>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(op) => batch.push(op),
            Err(_) => break,
        }
    }
}

/// A reply to send once the batch's transaction committed (`None`) or
/// failed (the error's text).
pub(super) type Pending = Box<dyn FnOnce(Option<&str>) + Send>;

/// The answer `value` for `reply`, to send after the commit.
pub(super) fn pending<T: Send + 'static>(reply: Reply<T>, value: T) -> Pending {
    Box::new(move |failed: Option<&str>| {
        let answer = match failed {
            None => Ok(value),
            Some(e) => Err(BackendError::Commit(e.to_owned())),
        };
        let _ = reply.send(answer);
    })
}

/// The single writer: owns the read-write connection and the per-key
/// state the quota and the devices' slots need (kept in memory, since only
/// it writes).
struct Writer {
    /// The data directory's lock, released when the writer stops.
    _lock: std::fs::File,
    conn: Connection,
    keys: Keys,
    /// Set when a failed commit left `keys` ahead of the database and
    /// reloading it failed too: reload before the next batch.
    stale: bool,
    quota: u64,
    /// The next `seq` to assign.
    next_seq: i64,
    /// Raised when the writer exits, to stop the checkpoint thread.
    stopped: Arc<AtomicBool>,
    /// Where staged frames go (see [`staging`]).
    handoff: Handoff,
    /// The newest `seq` handed over (see [`SqliteBackend::done`]).
    staged: Arc<AtomicI64>,
    /// The newest `seq` whose batch is done.
    done: watch::Sender<i64>,
    /// [`HOLD`], but for tests.
    hold: Duration,
    /// Recipients that acknowledged frames lately, with when they last
    /// did (see [`ACTIVE_FOR`]): frames for anyone else are written
    /// without waiting for acks that will not come.
    active: HashMap<[u8; 32], Instant>,
    /// When `active` was last pruned.
    pruned: Instant,
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let mut staged = VecDeque::new();
        let mut closers = Vec::new();
        loop {
            let mut batch = Vec::new();
            // With frames staged, the writer does not wait for more work:
            // they are committed next, with whatever came meanwhile.
            if staged.is_empty() {
                match rx.blocking_recv() {
                    Some(op) => batch.push(op),
                    None => break,
                }
            }
            drain(&mut rx, &mut batch);
            if batch.len() < LINGER_BELOW {
                // A commit costs an fsync (milliseconds here) whatever its
                // size: waiting a fraction of that for company makes the
                // batches, and so the throughput, much larger. With frames
                // staged, it is also the acks' time to come back.
                std::thread::sleep(LINGER);
                drain(&mut rx, &mut batch);
            }
            let mut ops = Vec::with_capacity(batch.len());
            for op in batch {
                match op {
                    Op::Close(done) => closers.push(done),
                    other => ops.push(other),
                }
            }
            self.cycle(&mut staged, ops, closers.is_empty());
            if !closers.is_empty() {
                break;
            }
        }
        self.stopped.store(true, Ordering::Release);
        // Leave a small WAL behind: the next start opens faster.
        if let Err(e) = self
            .conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        {
            tracing::warn!(error = %e, "final WAL checkpoint failed");
        }
        // Close the database and release the directory's lock before
        // saying so: a router reopening it right after `close` must not
        // find it locked.
        drop(self);
        for done in closers {
            let _ = done.send(());
        }
        tracing::debug!("queue writer stopped");
    }

    /// One turn: stages `batch`'s frames where it can (see [`staging`]),
    /// and commits, with `batch`'s other ops, the staged generations that
    /// have waited long enough for their acks (all of them when `batch`
    /// cannot be staged).
    fn cycle(&mut self, staged: &mut VecDeque<Staged>, batch: Vec<Op>, may_stage: bool) {
        let handoff = self.handoff.get().filter(|_| may_stage).cloned();
        let stageable = batch
            .iter()
            .all(|op| matches!(op, Op::Enqueue(..) | Op::Remove(..)));
        let Some(handoff) = handoff.filter(|_| stageable) else {
            // Anything else (a device registering, retention, shutdown)
            // is applied in order, after what was staged before it.
            let older: Vec<Staged> = staged.drain(..).collect();
            if !older.is_empty() || !batch.is_empty() {
                self.commit(older, batch);
            }
            self.publish(self.next_seq - 1);
            return;
        };
        let now = Instant::now();
        self.prune_active(now);
        let mut submissions = Vec::new();
        let mut rest = Vec::with_capacity(batch.len());
        for op in batch {
            match op {
                Op::Enqueue(frames, reply) => submissions.push((frames, reply)),
                Op::Remove(key, device, mut seqs, mut settled, reply) => {
                    self.active.insert(*key.as_bytes(), now);
                    for generation in staged.iter_mut() {
                        settled +=
                            generation.cancel(&mut self.keys, key.as_bytes(), &device, &mut seqs);
                    }
                    rest.push(Op::Remove(key, device, seqs, settled, reply));
                }
                other => rest.push(other),
            }
        }
        let submissions_staged = !submissions.is_empty();
        if submissions_staged {
            let next = self.stage(submissions, staged, &handoff);
            staged.push_back(next);
        }
        // Under load every turn stages a batch, and a batch waits for
        // GENERATIONS more; once frames stop coming, for its hold. A
        // batch for recipients that do not ack (offline) does not wait.
        let beyond = staged.len().saturating_sub(GENERATIONS);
        let idle = !submissions_staged;
        let due = staged
            .iter()
            .enumerate()
            .take_while(|(i, g)| {
                *i < beyond || (idle && g.age() >= self.hold) || !g.is_for_any(&self.active)
            })
            .count();
        let older: Vec<Staged> = staged.drain(..due).collect();
        let nothing = older.is_empty() && rest.is_empty();
        if !nothing && !self.commit(older, rest) {
            // The reload read what the database holds: count what is
            // still staged again.
            for generation in staged.iter() {
                generation.recount(&mut self.keys);
            }
        }
        // (A batch whose frames all needed no row has no seq.)
        let oldest = staged.iter().find_map(Staged::first_seq);
        self.publish(oldest.unwrap_or(self.next_seq) - 1);
    }

    /// Stages new frames and hands them to their recipients' sessions.
    fn stage(
        &mut self,
        submissions: Vec<(Vec<NewFrame>, Reply<Vec<Enqueued>>)>,
        older: &VecDeque<Staged>,
        handoff: &mpsc::UnboundedSender<ClusterEvent>,
    ) -> Staged {
        let started = std::time::Instant::now();
        let now = clock::now();
        // One read snapshot for the batch's lookups of copies.
        let read = self.conn.unchecked_transaction();
        let (next, handoffs) = Staged::stage(
            submissions,
            &self.conn,
            older,
            &mut self.keys,
            &mut self.next_seq,
            self.quota,
            now,
        );
        drop(read);
        tracing::trace!(frames = next.rows(), took = ?started.elapsed(), "batch staged");
        // Before the hand-over: a session offered one of these frames
        // and fetching instead waits for its commit.
        self.staged.store(self.next_seq - 1, Ordering::Release);
        if !handoffs.is_empty() {
            // No receiver only while the router shuts down: the frames
            // are committed and fetched as any other.
            let _ = handoff.send(ClusterEvent::Staged(handoffs));
        }
        next
    }

    /// Forgets recipients that have not acknowledged anything lately, at
    /// most once per [`ACTIVE_FOR`].
    fn prune_active(&mut self, now: Instant) {
        if now.duration_since(self.pruned) >= ACTIVE_FOR {
            self.active
                .retain(|_, last| now.duration_since(*last) < ACTIVE_FOR);
            self.pruned = now;
        }
    }

    /// Tells waiting fetches that every `seq` up to `upto` is settled.
    fn publish(&self, upto: i64) {
        self.done.send_if_modified(|done| {
            let newer = upto > *done;
            if newer {
                *done = upto;
            }
            newer
        });
    }

    /// Applies `staged` then `ops` in one transaction and answers them;
    /// false when the commit failed (and `keys` was reloaded).
    fn commit(&mut self, staged: Vec<Staged>, ops: Vec<Op>) -> bool {
        let started = std::time::Instant::now();
        let count = ops.len();
        let mut replies: Vec<Pending> = Vec::with_capacity(ops.len());
        if self.stale {
            self.reload();
        }
        let mut state = State {
            keys: &mut self.keys,
            next_seq: &mut self.next_seq,
            quota: self.quota,
        };
        let conn = &mut self.conn;
        let result = (|| -> Result<(), BackendError> {
            let tx = conn.transaction()?;
            let now = clock::now();
            let staged_rows: usize = staged.iter().map(Staged::rows).sum();
            let stored: usize = staged.iter().map(Staged::waiting).sum();
            for generation in staged {
                replies.extend(generation.insert_tx(&tx, state.keys)?);
            }
            for op in ops {
                let answer = state.apply(&tx, op, &now)?;
                replies.push(answer);
            }
            let applied = started.elapsed();
            tx.commit()?;
            tracing::trace!(
                staged = staged_rows,
                stored,
                ops = count,
                ?applied,
                total = ?started.elapsed(),
                "queue batch committed"
            );
            Ok(())
        })();
        match result {
            Ok(()) => {
                for answer in replies {
                    answer(None);
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "queue commit failed; the batch is refused");
                // The in-memory state took the batch's changes: read it
                // back from what the database kept.
                self.reload();
                let e = e.to_string();
                for answer in replies {
                    answer(Some(&e));
                }
                false
            }
        }
    }

    fn reload(&mut self) {
        match Keys::load(&self.conn) {
            Ok(keys) => {
                self.keys = keys;
                self.stale = false;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot reload the queue's state; will retry");
                self.stale = true;
            }
        }
    }
}

/// What the writer's ops change beside the database.
struct State<'a> {
    keys: &'a mut Keys,
    next_seq: &'a mut i64,
    quota: u64,
}

impl State<'_> {
    /// One op inside the batch's transaction; its answer for after the
    /// commit.
    fn apply(&mut self, tx: &Transaction, op: Op, now: &str) -> Result<Pending, BackendError> {
        let keys = &mut *self.keys;
        Ok(match op {
            Op::Enqueue(frames, reply) => {
                let outcomes = enqueue_tx(tx, &frames, now, self.next_seq, keys, self.quota)?;
                pending(reply, outcomes)
            }
            Op::Register(key, device, name, reply) => {
                let outcome = devices::register_tx(tx, keys, &key, &device, &name, now)?;
                pending(reply, outcome)
            }
            Op::Seen(list, reply) => {
                devices::seen_tx(tx, &list, now)?;
                pending(reply, ())
            }
            Op::RemoveDevice(key, device, reply) => {
                let removed = devices::remove_device_tx(tx, keys, &key, &device, now)?;
                pending(reply, removed)
            }
            Op::Remove(recipient, device, seqs, settled, reply) => {
                let n = if seqs.is_empty() {
                    0
                } else {
                    remove_tx(tx, keys, &recipient, &device, &seqs)?
                };
                pending(reply, settled + n)
            }
            Op::Expire(before, reply) => {
                let frames = expire_tx(tx, keys, &before)?;
                let devices = devices::forget_tx(tx, keys, &before)?;
                pending(reply, Expired { frames, devices })
            }
            Op::Close(_) => Box::new(|_| {}),
        })
    }
}

/// Writes a queue as a router of the first schema (V1) left it, holding
/// `frames` with seqs 1, 2...: for tests of the upgrade.
#[cfg(test)]
pub(crate) fn write_v1_queue(dir: &Path, frames: &[NewFrame]) -> Result<(), BackendError> {
    write_queue_at(dir, 1, frames)
}

/// Writes a queue as a router of schema `version` (1 or 2: their queue
/// tables have the same columns) left it, holding `frames` with seqs 1,
/// 2...: for tests of the upgrade.
#[cfg(test)]
pub(crate) fn write_queue_at(
    dir: &Path,
    version: i32,
    frames: &[NewFrame],
) -> Result<(), BackendError> {
    create_private_dir(dir).map_err(|source| BackendError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut conn = connect(&dir.join(FILE_NAME), false)?;
    embedded::migrations::runner()
        .set_target(refinery::Target::Version(version))
        .run(&mut conn)?;
    conn.pragma_update(None, "application_id", APPLICATION_ID)?;
    for (seq, f) in (1i64..).zip(frames) {
        conn.execute(
            "INSERT INTO queue (seq, recipient, id, sender, received_at, frame)
             VALUES (?1, ?2, ?3, ?4, '2026-11-25T20:00:00.000Z', ?5)",
            rusqlite::params![seq, f.recipient, f.id.as_bytes(), f.sender, &*f.text],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;

//! Frames handed to their recipients before their commit (issue 13).
//!
//! Most of the writer's time went into two statements per frame: the
//! INSERT that stores it and, a moment later, the DELETE its recipient's
//! ack causes, each with its share of the commit's WAL write and `fsync`.
//! For a recipient that is online both are wasted work: the frame is
//! stored only to be deleted one batch later.
//!
//! So the writer holds each batch of new frames for one cycle: it assigns
//! their `seq`s and hands them to the recipients' sessions at once
//! ([`Staged::stage`]), then applies and commits the *previous* batch
//! while the recipients receive, store and acknowledge them. When it next
//! drains its channel, the acks that came back clear their devices' bits
//! ([`Staged::cancel`]) before anything is written: a frame every device
//! acknowledged by then is never stored, the others are inserted waiting
//! only for the devices that have not acknowledged them
//! ([`Staged::insert_tx`]).
//!
//! What stays true:
//! - A sender's `ack` still follows the commit of the batch that settles
//!   its frame: the frame is by then in the queue, or acknowledged by every
//!   device it was for (a client acknowledges only after its own commit),
//!   so it is durable either way.
//! - Delivery stays at least once: a frame handed over early whose batch
//!   then fails (or whose router dies) is not acknowledged to its sender,
//!   who sends it again; the recipient's client drops the copy by its id.
//! - A fetch sees every frame handed over before it: it waits for the
//!   batch holding the newest one to commit (`Progress` in the writer),
//!   so a session that could not take a frame live finds it in the queue.
//! - Batches holding anything but frames and acks (a device registering,
//!   retention, shutdown) are applied the old way, after the staged ones,
//!   in the order they came.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::collections::{HashMap, VecDeque};

use rusqlite::{params, Connection, OptionalExtension as _, Transaction};
use uuid::Uuid;

use super::super::{BackendError, Enqueued, NewFrame, Queued};
use super::devices::{bit, Keys};
use super::queue::{admit, FIRST_STORED, INSERT};
use super::{pending, Pending, Reply};

/// A staged frame, waiting for its insert.
struct Row {
    seq: i64,
    frame: NewFrame,
    /// Devices (slots) that have not acknowledged it yet.
    mask: i64,
}

/// What one submission gets back, once its batch committed.
enum Outcome {
    /// Decided when staged (not stored, or refused).
    Decided(Enqueued),
    /// `rows[i]`, decided by its insert.
    Row(usize),
}

/// One `enqueue` submission of a staged batch.
struct Submission {
    reply: Reply<Vec<Enqueued>>,
    outcomes: Vec<Outcome>,
}

/// A batch of frames handed to their recipients and not yet written.
#[derive(Default)]
pub(super) struct Staged {
    /// In `seq` order.
    rows: Vec<Row>,
    submissions: Vec<Submission>,
    /// When the batch was staged (each frame's `at`).
    at: String,
    /// When the batch was staged, for how long it may wait.
    born: Option<Instant>,
    /// Its frames by `(recipient, sender, id)`, to answer a copy sent
    /// again while they are staged as a duplicate.
    ids: HashMap<([u8; 32], [u8; 32], Uuid), i64>,
}

/// A frame for the sessions of `devices`, before its commit.
pub(super) type Handoff = (Queued, Vec<Uuid>);

impl Staged {
    /// Whether any of its frames is for one of `keys` (recipients that
    /// acknowledged something lately): only then can acks be expected
    /// before its commit.
    pub(super) fn is_for_any(&self, keys: &HashMap<[u8; 32], Instant>) -> bool {
        self.rows
            .iter()
            .any(|r| keys.contains_key(&r.frame.recipient))
    }

    /// How long ago the batch was staged.
    pub(super) fn age(&self) -> Duration {
        self.born.map_or(Duration::MAX, |b| b.elapsed())
    }

    /// How many frames are staged.
    pub(super) fn rows(&self) -> usize {
        self.rows.len()
    }

    /// How many staged frames still wait for a device (to be inserted).
    pub(super) fn waiting(&self) -> usize {
        self.rows.iter().filter(|r| r.mask != 0).count()
    }

    /// The lowest `seq` staged, if any.
    pub(super) fn first_seq(&self) -> Option<i64> {
        self.rows.first().map(|r| r.seq)
    }

    /// Stages `submissions`: decides what needs no insert (a frame no
    /// device needs, a quota exceeded, a copy of a frame queued or staged
    /// in `older`), assigns the others their `seq` and counts them in
    /// `keys`, as [`super::queue::enqueue_tx`] does for a frame it
    /// inserts. Returns the batch and what to hand over now.
    pub(super) fn stage(
        submissions: Vec<(Vec<NewFrame>, Reply<Vec<Enqueued>>)>,
        conn: &Connection,
        older: &VecDeque<Staged>,
        keys: &mut Keys,
        next_seq: &mut i64,
        quota: u64,
        now: String,
    ) -> (Self, Vec<Handoff>) {
        let mut staged = Staged {
            rows: Vec::new(),
            submissions: Vec::with_capacity(submissions.len()),
            at: now,
            born: Some(Instant::now()),
            ids: HashMap::new(),
        };
        let mut handoffs = Vec::new();
        for (frames, reply) in submissions {
            let mut outcomes = Vec::with_capacity(frames.len());
            for frame in frames {
                let outcome = match staged.copy_of(conn, older, keys, &frame) {
                    Some(at) => Outcome::Decided(Enqueued::Duplicate { at }),
                    None => staged.stage_one(frame, keys, next_seq, quota, &mut handoffs),
                };
                outcomes.push(outcome);
            }
            staged.submissions.push(Submission { reply, outcomes });
        }
        (staged, handoffs)
    }

    /// When `frame` was first accepted, if this is a copy sent again of a
    /// frame staged or queued: a copy is not handed over twice.
    fn copy_of(
        &self,
        conn: &Connection,
        older: &VecDeque<Staged>,
        keys: &Keys,
        frame: &NewFrame,
    ) -> Option<String> {
        let id = (frame.recipient, frame.sender, frame.id);
        if let Some(g) = older.iter().chain([self]).find(|g| g.ids.contains_key(&id)) {
            return Some(g.at.clone());
        }
        // Nothing queued or staged for the recipient (as for most online
        // ones): no copy to look up.
        if keys
            .get(&frame.recipient)
            .is_none_or(|s| s.nothing_waiting())
        {
            return None;
        }
        let queued = conn.prepare_cached(FIRST_STORED).and_then(|mut stmt| {
            let args = params![frame.recipient, frame.id.as_bytes(), frame.sender];
            stmt.query_row(args, |r| r.get(0)).optional()
        });
        // A failed lookup only risks a copy delivered twice, which the
        // recipient drops; the insert still deduplicates.
        queued.unwrap_or_else(|e| {
            tracing::debug!(error = %e, "looking up a staged frame's copy failed");
            None
        })
    }

    fn stage_one(
        &mut self,
        frame: NewFrame,
        keys: &mut Keys,
        next_seq: &mut i64,
        quota: u64,
        handoffs: &mut Vec<Handoff>,
    ) -> Outcome {
        let key = frame.recipient;
        let mask = match admit(keys, &frame, quota, &self.at) {
            Ok(mask) => mask,
            Err(answer) => return Outcome::Decided(answer),
        };
        let seq = *next_seq;
        *next_seq += 1;
        let state = keys.entry(key);
        state.add(mask, 1);
        let devices = state.devices_in(mask);
        if !devices.is_empty() {
            handoffs.push((self.queued(seq, &frame), devices));
        }
        self.ids
            .insert((frame.recipient, frame.sender, frame.id), seq);
        self.rows.push(Row { seq, frame, mask });
        Outcome::Row(self.rows.len() - 1)
    }

    /// Counts the staged frames in `keys` again, after it was reloaded
    /// from the database (which does not have them yet).
    pub(super) fn recount(&self, keys: &mut Keys) {
        for row in self.rows.iter().filter(|r| r.mask != 0) {
            keys.entry(row.frame.recipient).add(row.mask, 1);
        }
    }

    fn queued(&self, seq: i64, frame: &NewFrame) -> Queued {
        Queued {
            seq,
            id: frame.id,
            recipient: frame.recipient,
            at: self.at.clone(),
            text: Arc::clone(&frame.text),
        }
    }

    /// Acks of `device` of `recipient`: those for staged frames clear the
    /// device's bit here (and leave `seqs`), so those frames are inserted
    /// without it, or not at all. Returns how many it settled.
    pub(super) fn cancel(
        &mut self,
        keys: &mut Keys,
        recipient: &[u8; 32],
        device: &Uuid,
        seqs: &mut Vec<i64>,
    ) -> u64 {
        let Some(first) = self.first_seq() else {
            return 0;
        };
        let Some(slot) = keys.get(recipient).and_then(|s| s.slot_of(device)) else {
            return 0;
        };
        let bit = bit(slot);
        let mut settled = 0u64;
        seqs.retain(|seq| {
            if *seq < first {
                return true;
            }
            let Ok(i) = self.rows.binary_search_by_key(seq, |r| r.seq) else {
                return true;
            };
            let row = &mut self.rows[i];
            if row.frame.recipient != *recipient || row.mask & bit == 0 {
                return true;
            }
            row.mask &= !bit;
            settled += 1;
            false
        });
        if settled > 0 {
            keys.entry(*recipient).add(bit, -(settled as i64));
            keys.tidy(recipient);
        }
        settled
    }

    /// Inserts what is still waiting for a device, inside the batch's
    /// transaction; returns the submissions' answers for after the commit.
    pub(super) fn insert_tx(
        self,
        tx: &Transaction,
        keys: &mut Keys,
    ) -> Result<Vec<Pending>, BackendError> {
        let mut insert = tx.prepare_cached(INSERT)?;
        let mut existing = tx.prepare_cached(FIRST_STORED)?;
        let mut decided = Vec::with_capacity(self.rows.len());
        for row in &self.rows {
            let f = &row.frame;
            if row.mask == 0 {
                // Every device has it, and acknowledged it after storing it.
                decided.push(self.stored(row));
                continue;
            }
            let args = params![
                row.seq,
                f.recipient,
                f.id.as_bytes(),
                f.sender,
                self.at,
                &*f.text,
                row.mask
            ];
            if insert.execute(args)? == 1 {
                decided.push(self.stored(row));
            } else {
                keys.entry(f.recipient).add(row.mask, -1);
                keys.tidy(&f.recipient);
                let args = params![f.recipient, f.id.as_bytes(), f.sender];
                let at: String = existing.query_row(args, |r| r.get(0))?;
                decided.push(Enqueued::Duplicate { at });
            }
        }
        let mut decided = decided.into_iter().map(Some).collect::<Vec<_>>();
        let mut answers = Vec::with_capacity(self.submissions.len());
        for submission in self.submissions {
            let outcomes = submission
                .outcomes
                .into_iter()
                .filter_map(|o| match o {
                    Outcome::Decided(e) => Some(e),
                    Outcome::Row(i) => decided.get_mut(i).and_then(Option::take),
                })
                .collect();
            answers.push(pending(submission.reply, outcomes));
        }
        Ok(answers)
    }

    /// The answer for a staged frame that is settled: its sessions already
    /// have it, so no device is left to hand it to.
    fn stored(&self, row: &Row) -> Enqueued {
        Enqueued::Stored {
            frame: self.queued(row.seq, &row.frame),
            devices: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use tokio::sync::mpsc::UnboundedReceiver;
    use uuid::Uuid;

    use super::super::super::contract::frame;
    use super::super::super::{Backend, ClusterEvent, Enqueued, Queued};
    use super::super::SqliteBackend;
    use crate::identity::{Identity, PublicKey};
    use crate::protocol::CONTROL_DEVICE;

    /// A queue whose staged batches wait (when nothing comes after them)
    /// until a test commits them with an op that cannot be staged.
    fn holding(dir: &Path) -> (SqliteBackend, UnboundedReceiver<ClusterEvent>) {
        let db = SqliteBackend::open_holding(dir, 100, Duration::from_secs(600)).unwrap();
        let events = db.events().unwrap();
        (db, events)
    }

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    /// Sends a frame from `from` to `to`; the answer comes after its commit.
    fn send(
        db: &SqliteBackend,
        to: &PublicKey,
        from: &PublicKey,
        id: Uuid,
    ) -> tokio::task::JoinHandle<Vec<Enqueued>> {
        let sent = db.enqueue(vec![frame(to, from, CONTROL_DEVICE, id)]);
        tokio::spawn(async move { sent.await.unwrap() })
    }

    /// The next hand-over: one frame and the devices it is for.
    async fn handed(events: &mut UnboundedReceiver<ClusterEvent>) -> (Queued, Vec<Uuid>) {
        let next = tokio::time::timeout(Duration::from_secs(10), events.recv()).await;
        match next.expect("nothing was handed over") {
            Some(ClusterEvent::Staged(mut frames)) if frames.len() == 1 => frames.remove(0),
            other => panic!("expected one staged frame, got {other:?}"),
        }
    }

    /// Makes `device` of `key` count as online: a recipient whose device
    /// acknowledged something lately, so batches for it are held for
    /// acks (an empty ack does).
    async fn online(db: &SqliteBackend, key: PublicKey, device: Uuid) {
        db.remove(key, device, Vec::new()).await.unwrap();
    }

    /// A sender and a recipient whose one device (returned third) is
    /// registered and counts as online.
    async fn one_device_online(db: &SqliteBackend) -> (PublicKey, PublicKey, Uuid) {
        let (alice, bob, laptop) = (key(), key(), Uuid::new_v4());
        db.register(bob, laptop, "laptop".into()).await.unwrap();
        online(db, bob, laptop).await;
        (alice, bob, laptop)
    }

    /// The queue positions of `rows`.
    fn seqs(rows: Vec<Queued>) -> Vec<i64> {
        rows.iter().map(|r| r.seq).collect()
    }

    /// Commits whatever is staged (a `seen` is never staged).
    async fn flush(db: &SqliteBackend) {
        db.seen(Vec::new()).await.unwrap();
    }

    fn sorted(mut v: Vec<Uuid>) -> Vec<Uuid> {
        v.sort();
        v
    }

    #[tokio::test]
    async fn a_frame_its_device_acks_before_the_commit_is_never_written() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob, laptop) = one_device_online(&db).await;
        let sent = send(&db, &bob, &alice, Uuid::now_v7());
        let (q, devices) = handed(&mut events).await;
        assert_eq!(devices, [laptop]);
        assert!(!sent.is_finished(), "acked before its batch committed");
        assert_eq!(db.remove(bob, laptop, vec![q.seq]).await.unwrap(), 1);
        flush(&db).await;
        let out = sent.await.unwrap();
        assert!(
            matches!(&out[..], [Enqueued::Stored { frame, devices }] if frame.seq == q.seq && devices.is_empty()),
            "{out:?}"
        );
        assert_eq!(db.depth().await.unwrap(), 0, "never written");
        assert!(db.fetch(bob, laptop, 0, 10).await.unwrap().is_empty());
        db.close().await;
    }

    #[tokio::test]
    async fn a_frame_one_device_acked_early_waits_for_the_other_only() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob) = (key(), key());
        let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
        db.register(bob, laptop, "laptop".into()).await.unwrap();
        db.register(bob, phone, "phone".into()).await.unwrap();
        online(&db, bob, laptop).await;
        let sent = send(&db, &bob, &alice, Uuid::now_v7());
        let (q, devices) = handed(&mut events).await;
        assert_eq!(sorted(devices), sorted(vec![laptop, phone]));
        assert_eq!(db.remove(bob, phone, vec![q.seq]).await.unwrap(), 1);
        flush(&db).await;
        sent.await.unwrap();
        db.close().await;
        // What was written survives a restart, without the phone's bit.
        let (db, _events) = holding(dir.path());
        assert_eq!(seqs(db.fetch(bob, laptop, 0, 10).await.unwrap()), [q.seq]);
        assert!(db.fetch(bob, phone, 0, 10).await.unwrap().is_empty());
        assert_eq!(db.remove(bob, laptop, vec![q.seq]).await.unwrap(), 1);
        assert_eq!(db.depth().await.unwrap(), 0);
        db.close().await;
    }

    #[tokio::test]
    async fn a_fetch_waits_for_the_commit_of_what_was_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob, laptop) = one_device_online(&db).await;
        let sent = send(&db, &bob, &alice, Uuid::now_v7());
        let (q, _) = handed(&mut events).await;
        // A session offered the frame without room for it fetches later:
        // the fetch must find it, so it waits for the commit.
        let fetch = db.fetch(bob, laptop, 0, 10);
        let fetched = tokio::spawn(fetch);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fetched.is_finished(), "the fetch read before the commit");
        flush(&db).await;
        let rows = fetched.await.unwrap().unwrap();
        assert_eq!(seqs(rows), [q.seq]);
        sent.await.unwrap();
        db.close().await;
    }

    #[tokio::test]
    async fn a_copy_of_a_staged_or_queued_frame_is_neither_handed_over_nor_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob, _laptop) = one_device_online(&db).await;
        let id = Uuid::now_v7();
        let first = send(&db, &bob, &alice, id);
        let (q, _) = handed(&mut events).await;
        // Sent again while the first is staged, then once it is queued.
        let staged_copy = send(&db, &bob, &alice, id);
        flush(&db).await;
        let queued_copy = send(&db, &bob, &alice, id);
        flush(&db).await;
        let first = first.await.unwrap();
        assert!(matches!(&first[..], [Enqueued::Stored { .. }]), "{first:?}");
        for copy in [staged_copy, queued_copy] {
            let copy = copy.await.unwrap();
            assert_eq!(copy, [Enqueued::Duplicate { at: q.at.clone() }]);
        }
        assert!(events.try_recv().is_err(), "a copy was handed over");
        assert_eq!(db.depth().await.unwrap(), 1);
        db.close().await;
    }

    #[tokio::test]
    async fn staged_frames_follow_the_device_rules() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob) = (key(), key());
        let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
        // A key without devices: nobody to hand it to; its first device
        // fetches it.
        let early = send(&db, &bob, &alice, Uuid::now_v7());
        flush(&db).await;
        assert!(matches!(
            &early.await.unwrap()[..],
            [Enqueued::Stored { .. }]
        ));
        assert!(events.try_recv().is_err(), "handed to no device");
        db.register(bob, laptop, "laptop".into()).await.unwrap();
        assert_eq!(db.fetch(bob, laptop, 0, 10).await.unwrap().len(), 1);
        // A device that registers later gets only what comes after it.
        db.register(bob, phone, "phone".into()).await.unwrap();
        let later = send(&db, &bob, &alice, Uuid::now_v7());
        let (_, devices) = handed(&mut events).await;
        assert_eq!(sorted(devices), sorted(vec![laptop, phone]));
        // A frame to one's own key is not handed back to its device.
        let own = frame(&bob, &bob, laptop, Uuid::now_v7());
        let own = tokio::spawn(db.enqueue(vec![own]));
        let (_, devices) = handed(&mut events).await;
        assert_eq!(devices, [phone]);
        flush(&db).await;
        later.await.unwrap();
        own.await.unwrap().unwrap();
        assert_eq!(db.fetch(bob, phone, 0, 10).await.unwrap().len(), 2);
        assert_eq!(db.fetch(bob, laptop, 0, 10).await.unwrap().len(), 2);
        db.close().await;
    }

    #[tokio::test]
    async fn frames_for_a_recipient_that_acks_nothing_are_written_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob, laptop) = (key(), key(), Uuid::new_v4());
        db.register(bob, laptop, "laptop".into()).await.unwrap();
        // Handed over all the same (the device may be online), but nobody
        // waits for acks from a recipient that sent none lately.
        let sent = send(&db, &bob, &alice, Uuid::now_v7());
        let (q, _) = handed(&mut events).await;
        let out = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("held for acks from a recipient that sends none")
            .unwrap();
        assert!(matches!(&out[..], [Enqueued::Stored { .. }]));
        let rows = db.fetch(bob, laptop, 0, 10).await.unwrap();
        assert_eq!(seqs(rows), [q.seq]);
        db.close().await;
    }

    #[tokio::test]
    async fn close_commits_what_is_staged() {
        let dir = tempfile::tempdir().unwrap();
        let (db, mut events) = holding(dir.path());
        let (alice, bob, laptop) = one_device_online(&db).await;
        let sent = send(&db, &bob, &alice, Uuid::now_v7());
        let (q, _) = handed(&mut events).await;
        db.close().await;
        assert!(matches!(
            &sent.await.unwrap()[..],
            [Enqueued::Stored { .. }]
        ));
        let (db, _events) = holding(dir.path());
        let rows = db.fetch(bob, laptop, 0, 10).await.unwrap();
        assert_eq!(seqs(rows), [q.seq]);
        db.close().await;
    }

    #[tokio::test]
    async fn an_idle_queue_commits_a_staged_frame_within_its_hold() {
        let dir = tempfile::tempdir().unwrap();
        let db = SqliteBackend::open(dir.path(), 100).unwrap();
        let mut events = db.events().unwrap();
        let (alice, bob, _laptop) = one_device_online(&db).await;
        let sent = send(&db, &bob, &alice, Uuid::now_v7());
        handed(&mut events).await;
        // Nothing else comes: the hold runs out and the batch commits.
        let out = tokio::time::timeout(Duration::from_secs(10), sent)
            .await
            .expect("a staged frame waited for company forever")
            .unwrap();
        assert!(matches!(&out[..], [Enqueued::Stored { .. }]));
        assert_eq!(db.depth().await.unwrap(), 1);
        db.close().await;
    }
}

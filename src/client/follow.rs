//! Following the process that owns the profile's router session (see
//! [`super::owner`]) through the database: what it stores shows up here
//! as the same [`Update`]s a connection would give, and what is stored
//! here for it to send waits in the outbox until it has sent it.
//!
//! Cheap enough to run ten times a second: `PRAGMA
//! data_version` says whether another process committed anything, and only
//! then are new rows read.

use std::collections::HashMap;
use std::time::Duration;

use super::owner::{Holder, SessionLock};
use super::{ClientError, Update};
use crate::store::changes::{message_by_rowid_tx, messages_after_tx, out_statuses_after_tx};
use crate::store::{Direction, MessageId, Status, Store};

/// How often the owner looks at the database for what the others stored,
/// and a follower for what the owner stored (trying the lock too). An
/// idle chat spends about 0.3% of a core on it.
pub const POLL: Duration = Duration::from_millis(100);

/// How often [`await_owner`] looks at the messages it waits for: a short
/// process, polling one row.
const AWAIT_POLL: Duration = Duration::from_millis(25);

/// Outgoing messages among this many most recent rows have their status
/// changes reported; older ones are not watched (their changes still reach
/// the database and `history`).
const STATUS_WINDOW: i64 = 1000;

/// What a follower has seen of the database.
#[derive(Debug)]
pub struct Follower {
    data_version: i64,
    /// The highest message row id seen.
    last_rowid: i64,
    /// Outgoing messages above this row id are watched for status changes.
    floor: i64,
    /// The last status seen of each watched outgoing message.
    statuses: HashMap<i64, Status>,
}

impl Follower {
    /// Starts following: what is in the database now counts as seen.
    pub fn start(store: &Store) -> Result<Self, ClientError> {
        let last_rowid = store.last_message_rowid()?;
        let floor = last_rowid.saturating_sub(STATUS_WINDOW).max(0);
        let statuses = out_statuses_after_tx(store.conn(), floor)?
            .into_iter()
            .collect();
        Ok(Self {
            data_version: store.data_version()?,
            last_rowid,
            floor,
            statuses,
        })
    }

    /// What another process changed since the last call: new incoming
    /// messages ([`Update::Received`]) and status changes of our own
    /// ([`Update::Status`]), in the order they were stored. Nothing (and
    /// no query but one pragma) when no other process committed.
    pub fn poll(&mut self, store: &Store) -> Result<Vec<Update>, ClientError> {
        let version = store.data_version()?;
        if version == self.data_version {
            return Ok(Vec::new());
        }
        self.data_version = version;
        self.read(store)
    }

    /// Reads what changed, whatever the data version says (a last look
    /// after the owner has gone, or after writing here).
    pub fn read(&mut self, store: &Store) -> Result<Vec<Update>, ClientError> {
        let mut updates = Vec::new();
        for m in messages_after_tx(store.conn(), self.last_rowid)? {
            self.last_rowid = self.last_rowid.max(m.id);
            match m.direction {
                Direction::In => updates.push(Update::Received(m)),
                // Every message starts pending: a later status is a change
                // to report below.
                Direction::Out => {
                    self.statuses.insert(m.id, Status::Pending);
                }
            }
        }
        // The window moves with the newest rows: a long follow does not
        // read ever more of them.
        let floor = self.last_rowid.saturating_sub(STATUS_WINDOW).max(0);
        if floor > self.floor {
            self.floor = floor;
            self.statuses.retain(|rowid, _| *rowid > floor);
        }
        for (rowid, status) in out_statuses_after_tx(store.conn(), self.floor)? {
            let seen = self.statuses.insert(rowid, status);
            if seen.is_some_and(|s| s != status) {
                if let Some(m) = message_by_rowid_tx(store.conn(), rowid)? {
                    updates.push(Update::Status(m));
                }
            }
        }
        Ok(updates)
    }
}

/// How [`await_owner`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Handed {
    /// None of the messages is pending any more (sent, or failed).
    Settled,
    /// The owner went away and this process took the lock over: it must
    /// do the work itself.
    TookOver,
    /// The time ran out; `holder` still owns the session.
    TimedOut(Holder),
}

/// Waits, up to `timeout`, for the process owning the router session to
/// send `ids` (to get them out of `pending`), polling the database every
/// [`AWAIT_POLL`]. Without ids, waits for the outbox (messages and receipts) to
/// be empty. Tries the lock on every poll: when the owner is gone, returns
/// [`Handed::TookOver`] holding it.
pub fn await_owner(
    store: &Store,
    ids: &[MessageId],
    lock: &mut SessionLock,
    timeout: Duration,
) -> Result<Handed, AwaitError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let settled = if ids.is_empty() {
            !store.has_outgoing_work()?
        } else {
            let mut all = true;
            for id in ids {
                if store
                    .message(id)?
                    .is_some_and(|m| m.status == Status::Pending)
                {
                    all = false;
                    break;
                }
            }
            all
        };
        if settled {
            return Ok(Handed::Settled);
        }
        let holder = match lock.try_take()? {
            None => return Ok(Handed::TookOver),
            Some(holder) => holder,
        };
        if std::time::Instant::now() >= deadline {
            return Ok(Handed::TimedOut(holder));
        }
        std::thread::sleep(AWAIT_POLL);
    }
}

/// What can go wrong while waiting for the owner.
#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    /// The lock file failed.
    #[error(transparent)]
    Lock(#[from] super::owner::LockError),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    #[test]
    fn reports_what_another_process_stored_once() {
        let (_dir, mut mine) = temp_store();
        let peer = Identity::generate().public_key();
        let old = mine.insert_outgoing(&peer, "before").unwrap();
        let mut other = Store::open(mine.path()).unwrap();
        let mut follower = Follower::start(&mine).unwrap();
        assert!(follower.poll(&mine).unwrap().is_empty());

        // The owner takes in a message and the router accepts ours.
        let id = MessageId::new_v7();
        other
            .insert_incoming(&id, &peer, "hello", &crate::clock::now())
            .unwrap();
        other
            .apply_status(&old.msg_id, Status::Sent, &crate::clock::now(), None)
            .unwrap();
        let updates = follower.poll(&mine).unwrap();
        assert_eq!(updates.len(), 2, "{updates:?}");
        assert!(matches!(&updates[0], Update::Received(m) if m.body == "hello"));
        assert!(matches!(&updates[1], Update::Status(m) if m.status == Status::Sent));
        assert!(follower.poll(&mine).unwrap().is_empty());

        // Written here, sent there: reported as it changes.
        let typed = mine.insert_outgoing(&peer, "typed here").unwrap();
        other
            .apply_status(&typed.msg_id, Status::Sent, &crate::clock::now(), None)
            .unwrap();
        let updates = follower.poll(&mine).unwrap();
        assert!(
            matches!(&updates[..], [Update::Status(m)] if m.body == "typed here"),
            "{updates:?}"
        );
    }

    #[test]
    fn the_watched_window_moves_with_the_newest_rows() {
        let (_dir, mine) = temp_store();
        let peer = Identity::generate().public_key();
        let mut follower = Follower::start(&mine).unwrap();
        let mut other = Store::open(mine.path()).unwrap();
        let tx = other.transaction().unwrap();
        for i in 0..STATUS_WINDOW + 10 {
            crate::store::messages::insert_outgoing_tx(&tx, &peer, &i.to_string()).unwrap();
        }
        tx.commit().unwrap();
        follower.poll(&mine).unwrap();
        assert_eq!(follower.statuses.len(), STATUS_WINDOW as usize);
        assert_eq!(follower.floor, follower.last_rowid - STATUS_WINDOW);
    }

    #[test]
    fn awaiting_the_owner_ends_when_sent_or_when_it_is_gone() {
        let (dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        let m = store.insert_outgoing(&peer, "hi").unwrap();
        let mut owner = SessionLock::open(store.path(), "owner").unwrap();
        assert_eq!(owner.try_take().unwrap(), None);
        let mut me = SessionLock::open(store.path(), "me").unwrap();
        let short = Duration::from_millis(1);
        match await_owner(&store, &[m.msg_id], &mut me, short).unwrap() {
            Handed::TimedOut(holder) => assert_eq!(holder.command, "owner"),
            other => panic!("{other:?}"),
        }
        store
            .apply_status(&m.msg_id, Status::Sent, &crate::clock::now(), None)
            .unwrap();
        let handed = await_owner(&store, &[m.msg_id], &mut me, short).unwrap();
        assert_eq!(handed, Handed::Settled);
        // Nothing else pending either.
        assert_eq!(
            await_owner(&store, &[], &mut me, short).unwrap(),
            Handed::Settled
        );
        let again = store.insert_outgoing(&peer, "again").unwrap();
        drop(owner);
        let handed = await_owner(&store, &[again.msg_id], &mut me, short).unwrap();
        assert_eq!(handed, Handed::TookOver);
        assert!(me.is_held());
        drop(dir);
    }
}

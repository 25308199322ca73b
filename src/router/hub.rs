//! Who is online: one live session per key, and how to tell it that a
//! frame for it was committed.
//!
//! The hand-off is a bounded channel filled with `try_send`: the hub never
//! waits for a session. When a session's channel is full, the frame is not
//! lost (it is in the queue): the session's `lagged` flag is raised and it
//! fetches from the queue once it has room.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use super::backend::Queued;
use crate::identity::PublicKey;

/// The hub's side of a session.
#[derive(Debug, Clone)]
pub struct Handle {
    id: u64,
    // Boxed: a channel allocates a block of 32 slots up front, and 32
    // inline frames would cost every idle session ~3 KB.
    deliver: mpsc::Sender<Box<Queued>>,
    /// Raised when a frame could not be handed over.
    pub lagged: Arc<AtomicBool>,
    /// Notified when a newer session for the same key replaces this one.
    pub replaced: Arc<Notify>,
}

/// What a session keeps from registering.
#[derive(Debug)]
pub struct Registration {
    /// This session's id in the hub.
    pub id: u64,
    /// Frames committed for this key.
    pub deliveries: mpsc::Receiver<Box<Queued>>,
    /// See [`Handle::lagged`].
    pub lagged: Arc<AtomicBool>,
    /// See [`Handle::replaced`].
    pub replaced: Arc<Notify>,
}

/// Unregisters a session when dropped: see [`Hub::leave_on_drop`].
#[derive(Debug)]
pub struct Leave<'a> {
    hub: &'a Hub,
    key: PublicKey,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.hub.unregister(&self.key, self.id);
    }
}

/// The registry of live sessions.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<HashMap<[u8; 32], Handle>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Registers the live session for `key`, replacing (and notifying) any
    /// older one. `capacity` bounds its delivery channel.
    pub fn register(&self, key: PublicKey, capacity: usize) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handle = Handle {
            id,
            deliver: tx,
            lagged: Arc::new(AtomicBool::new(false)),
            replaced: Arc::new(Notify::new()),
        };
        let registration = Registration {
            id,
            deliveries: rx,
            lagged: Arc::clone(&handle.lagged),
            replaced: Arc::clone(&handle.replaced),
        };
        let old = self.lock().insert(*key.as_bytes(), handle);
        if let Some(old) = old {
            old.replaced.notify_one();
        }
        registration
    }

    /// Forgets session `id` for `key`, unless a newer one replaced it.
    pub fn unregister(&self, key: &PublicKey, id: u64) {
        let mut sessions = self.lock();
        if sessions.get(key.as_bytes()).is_some_and(|h| h.id == id) {
            sessions.remove(key.as_bytes());
        }
    }

    /// A guard that unregisters session `id` for `key` when dropped, so a
    /// session that ends by panicking (tokio catches the panic in its task)
    /// leaves no stale entry behind.
    pub fn leave_on_drop(&self, key: PublicKey, id: u64) -> Leave<'_> {
        Leave { hub: self, key, id }
    }

    /// Hands a committed frame to its recipient's session, if online.
    pub fn notify(&self, frame: Queued) {
        let sessions = self.lock();
        if let Some(handle) = sessions.get(&frame.recipient) {
            if handle.deliver.try_send(Box::new(frame)).is_err() {
                handle.lagged.store(true, Ordering::Release);
            }
        }
    }

    /// How many sessions are live.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Handle>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert/remove/get), so recover.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn queued(to: PublicKey, seq: i64) -> Queued {
        Queued {
            seq,
            id: uuid::Uuid::now_v7(),
            recipient: *to.as_bytes(),
            at: String::new(),
            text: "{}".into(),
        }
    }

    #[tokio::test]
    async fn newer_session_replaces_older() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let old = hub.register(key, 4);
        let mut new = hub.register(key, 4);
        // The permit is stored, so the old session sees it even if it was
        // not waiting yet.
        old.replaced.notified().await;
        hub.unregister(&key, old.id);
        assert_eq!(hub.len(), 1, "the old session must not unregister the new");
        hub.notify(queued(key, 1));
        assert_eq!(new.deliveries.recv().await.unwrap().seq, 1);
    }

    #[test]
    fn a_session_that_panics_is_unregistered() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let reg = hub.register(key, 4);
            let _leave = hub.leave_on_drop(key, reg.id);
            // Poison the lock too: the hub must recover from it.
            let _held = hub.sessions.lock();
            panic!("a session bug");
        }));
        assert!(panicked.is_err());
        assert!(hub.is_empty(), "the dead session is still registered");
        let mut reg = hub.register(key, 4);
        hub.notify(queued(key, 1));
        assert!(reg.deliveries.try_recv().is_ok());
    }

    #[test]
    fn full_channel_raises_lagged() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let reg = hub.register(key, 1);
        hub.notify(queued(key, 1));
        assert!(!reg.lagged.load(Ordering::Acquire));
        hub.notify(queued(key, 2));
        assert!(reg.lagged.load(Ordering::Acquire));
        // Nobody online: dropped silently (it is in the queue).
        hub.notify(queued(Identity::generate().public_key(), 3));
    }
}

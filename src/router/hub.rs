//! Who is online: one live session per (key, device), and how to tell the
//! sessions of a key's devices that a frame for them was committed.
//!
//! The hand-off is a bounded channel filled with `try_send`: the hub never
//! waits for a session. When a session's channel is full, the frame is not
//! lost (it is in the queue): the session's `lagged` flag is raised and it
//! fetches from the queue once it has room.
//!
//! Control sessions (protocol v2's nil device) are not in the hub: they
//! receive nothing and replace nothing ([`Registration::detached`]).
//!
//! With a queue other routers share, each session also holds a numbered
//! claim on its device ([`super::backend::Backend::claim`]): the newest
//! claim wins, here and across routers ([`Hub::replace_older`]), and
//! [`Hub::recheck_all`] wakes every session to look at its queue and claim
//! again after events from the other routers may have been lost.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use uuid::Uuid;

use super::backend::Queued;
use crate::identity::PublicKey;

/// What the hub tells a session besides frames, in one allocation (there
/// may be 10,000s of idle sessions).
#[derive(Debug, Default)]
pub struct Signals {
    /// Raised when a frame could not be handed over.
    pub lagged: AtomicBool,
    /// Notified when the session must end: a newer session of its device
    /// replaced it, or (with `removed` raised first) its device was
    /// removed from its key.
    pub end: Notify,
    /// Raised before `end` is notified for a removal.
    pub removed: AtomicBool,
    /// Notified when the session must re-check its queue (a fetch from
    /// its start, see [`super::state::Delivery::on_recheck`]) and its
    /// claim: events from other routers may have been lost
    /// ([`Hub::recheck_all`]).
    pub recheck: Notify,
}

impl Signals {
    /// Why the session must end, once `end` was notified.
    pub fn ended_by_removal(&self) -> bool {
        self.removed.load(Ordering::Acquire)
    }
}

/// The hub's side of a session.
#[derive(Debug, Clone)]
pub struct Handle {
    id: u64,
    device: Uuid,
    // Boxed: a channel allocates a block of 32 slots up front, and 32
    // inline frames would cost every idle session ~3 KB.
    deliver: mpsc::Sender<Box<Queued>>,
    signals: Arc<Signals>,
    /// The session's claim on its device (0 with a queue of one router).
    claim: u64,
}

/// What a session keeps from registering.
#[derive(Debug)]
pub struct Registration {
    /// This session's id in the hub.
    pub id: u64,
    /// Frames committed for this device.
    pub deliveries: mpsc::Receiver<Box<Queued>>,
    /// Lag, replacement, removal and re-checks.
    pub signals: Arc<Signals>,
    /// The claim on the device this session holds (see [`Hub::register`]).
    pub claim: u64,
}

impl Registration {
    /// A registration the hub does not know, for a control session: no
    /// frame is ever handed to it and nothing replaces or removes it.
    pub fn detached() -> Self {
        let (_, rx) = mpsc::channel(1);
        Self {
            id: u64::MAX,
            deliveries: rx,
            signals: Arc::default(),
            claim: 0,
        }
    }
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

/// The registry of live sessions: per key, one handle per online device.
#[derive(Debug, Default)]
pub struct Hub {
    sessions: Mutex<HashMap<[u8; 32], Vec<Handle>>>,
    next_id: AtomicU64,
}

impl Hub {
    /// Registers the live session for `device` of `key` holding `claim`,
    /// replacing (and notifying) an older one of the same device; other
    /// devices' sessions stay. Claims decide which is older: a session
    /// registering with a claim older than the one registered (two logins
    /// of one device racing) is told to end at once instead. Equal claims
    /// (a queue of one router numbers none) let the newcomer win.
    /// `capacity` bounds its delivery channel.
    pub fn register(
        &self,
        key: PublicKey,
        device: Uuid,
        claim: u64,
        capacity: usize,
    ) -> Registration {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let handle = Handle {
            id,
            device,
            deliver: tx,
            signals: Arc::default(),
            claim,
        };
        let registration = Registration {
            id,
            deliveries: rx,
            signals: Arc::clone(&handle.signals),
            claim,
        };
        let mut sessions = self.lock();
        // Most keys have one device online: no room reserved for more
        // (a handle is ~60 bytes, and there may be 10,000s of keys).
        let devices = sessions
            .entry(*key.as_bytes())
            .or_insert_with(|| Vec::with_capacity(1));
        match devices.iter_mut().find(|h| h.device == device) {
            Some(slot) if slot.claim <= claim => {
                let old = std::mem::replace(slot, handle);
                old.signals.end.notify_one();
            }
            // A newer claim is live already: this one lost the race.
            Some(_) => handle.signals.end.notify_one(),
            None => devices.push(handle),
        }
        registration
    }

    /// Ends the live session of `device` of `key` if its claim is older
    /// than `claim` (a newer session of the device started on another
    /// router); it closes as a local replacement does (4000).
    pub fn replace_older(&self, key: &PublicKey, device: &Uuid, claim: u64) {
        if let Some(h) = self
            .lock()
            .get(key.as_bytes())
            .and_then(|devices| devices.iter().find(|h| h.device == *device))
        {
            if h.claim < claim {
                h.signals.end.notify_one();
            }
        }
    }

    /// Wakes every live session to re-check its queue and its claim (the
    /// store reconnected: wake-ups and replacements may have been lost).
    pub fn recheck_all(&self) {
        for handle in self.lock().values().flatten() {
            handle.signals.recheck.notify_one();
        }
    }

    /// Forgets session `id` of `key`, unless a newer one replaced it.
    pub fn unregister(&self, key: &PublicKey, id: u64) {
        let mut sessions = self.lock();
        if let Some(devices) = sessions.get_mut(key.as_bytes()) {
            devices.retain(|h| h.id != id);
            if devices.is_empty() {
                sessions.remove(key.as_bytes());
            }
        }
    }

    /// A guard that unregisters session `id` of `key` when dropped, so a
    /// session that ends by panicking (tokio catches the panic in its task)
    /// leaves no stale entry behind.
    pub fn leave_on_drop(&self, key: PublicKey, id: u64) -> Leave<'_> {
        Leave { hub: self, key, id }
    }

    /// Hands a committed frame to the sessions of those of `devices` (the
    /// devices it waits for) that are online.
    pub fn notify(&self, frame: Queued, devices: &[Uuid]) {
        if devices.is_empty() {
            return;
        }
        notify_locked(&self.lock(), frame, devices);
    }

    /// [`Hub::notify`] for many frames, under one lock.
    pub fn notify_all(&self, frames: Vec<(Queued, Vec<Uuid>)>) {
        let sessions = self.lock();
        for (frame, devices) in frames {
            notify_locked(&sessions, frame, &devices);
        }
    }

    /// Tells the live session of `device` of `key`, if any, that the
    /// device was removed.
    pub fn remove_device(&self, key: &PublicKey, device: &Uuid) {
        if let Some(h) = self
            .lock()
            .get(key.as_bytes())
            .and_then(|devices| devices.iter().find(|h| h.device == *device))
        {
            h.signals.removed.store(true, Ordering::Release);
            h.signals.end.notify_one();
        }
    }

    /// The devices of `key` with a live session.
    pub fn online(&self, key: &PublicKey) -> Vec<Uuid> {
        self.lock()
            .get(key.as_bytes())
            .map(|devices| devices.iter().map(|h| h.device).collect())
            .unwrap_or_default()
    }

    /// Every live (key, device), for refreshing when they were last seen.
    /// (Keys are kept as bytes, a third of a parsed key's size, and
    /// parsed here, which is rare: once per retention check.)
    pub fn all_online(&self) -> Vec<(PublicKey, Uuid)> {
        let online: Vec<([u8; 32], Uuid)> = {
            let sessions = self.lock();
            sessions
                .iter()
                .flat_map(|(key, handles)| handles.iter().map(|h| (*key, h.device)))
                .collect()
        };
        online
            .into_iter()
            .filter_map(|(key, device)| Some((PublicKey::from_bytes(&key).ok()?, device)))
            .collect()
    }

    /// How many sessions are live (control sessions not counted).
    pub fn len(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Whether no session is live.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Vec<Handle>>> {
        // A panic while holding this lock cannot leave the map inconsistent
        // (every operation is a single insert/remove/get), so recover.
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Hands `frame` to one session without waiting, or raises its `lagged`.
/// Hands `frame` to the sessions of those of `devices` that are online.
fn notify_locked(sessions: &HashMap<[u8; 32], Vec<Handle>>, frame: Queued, devices: &[Uuid]) {
    let Some(online) = sessions.get(&frame.recipient) else {
        return;
    };
    let mut targets = online.iter().filter(|h| devices.contains(&h.device));
    let Some(first) = targets.next() else {
        return;
    };
    let frame = Box::new(frame);
    for handle in targets {
        hand_over(handle, frame.clone());
    }
    hand_over(first, frame);
}

fn hand_over(handle: &Handle, frame: Box<Queued>) {
    if handle.deliver.try_send(frame).is_err() {
        handle.signals.lagged.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use futures_util::FutureExt as _;

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
    async fn newer_session_of_a_device_replaces_older() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let device = Uuid::new_v4();
        let old = hub.register(key, device, 0, 4);
        let mut new = hub.register(key, device, 0, 4);
        // The permit is stored, so the old session sees it even if it was
        // not waiting yet.
        old.signals.end.notified().await;
        assert!(!old.signals.ended_by_removal());
        hub.unregister(&key, old.id);
        assert_eq!(hub.len(), 1, "the old session must not unregister the new");
        hub.notify(queued(key, 1), &[device]);
        assert_eq!(new.deliveries.recv().await.unwrap().seq, 1);
    }

    #[tokio::test]
    async fn each_device_has_its_session_and_gets_what_waits_for_it() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
        let mut a = hub.register(key, laptop, 0, 4);
        let mut b = hub.register(key, phone, 0, 4);
        assert_eq!(hub.len(), 2);
        let mut online = hub.online(&key);
        online.sort();
        let mut both = vec![laptop, phone];
        both.sort();
        assert_eq!(online, both);
        hub.notify(queued(key, 1), &[laptop, phone]);
        hub.notify(queued(key, 2), &[phone]);
        assert_eq!(a.deliveries.recv().await.unwrap().seq, 1);
        assert_eq!(b.deliveries.recv().await.unwrap().seq, 1);
        assert_eq!(b.deliveries.recv().await.unwrap().seq, 2);
        assert!(
            a.deliveries.try_recv().is_err(),
            "not waiting for the laptop"
        );
        hub.remove_device(&key, &phone);
        b.signals.end.notified().await;
        assert!(b.signals.ended_by_removal());
        hub.unregister(&key, b.id);
        assert_eq!(hub.online(&key), vec![laptop]);
        assert_eq!(hub.all_online(), vec![(key, laptop)]);
    }

    #[test]
    fn a_detached_registration_gets_nothing() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let mut reg = Registration::detached();
        hub.notify(queued(key, 1), &[Uuid::nil()]);
        assert!(reg.deliveries.try_recv().is_err());
        assert!(hub.is_empty());
    }

    #[test]
    fn a_session_that_panics_is_unregistered() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let device = Uuid::new_v4();
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let reg = hub.register(key, device, 0, 4);
            let _leave = hub.leave_on_drop(key, reg.id);
            // Poison the lock too: the hub must recover from it.
            let _held = hub.sessions.lock();
            panic!("a session bug");
        }));
        assert!(panicked.is_err());
        assert!(hub.is_empty(), "the dead session is still registered");
        let mut reg = hub.register(key, device, 0, 4);
        hub.notify(queued(key, 1), &[device]);
        assert!(reg.deliveries.try_recv().is_ok());
    }

    #[tokio::test]
    async fn only_a_newer_claim_replaces_a_session() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let (device, other) = (Uuid::new_v4(), Uuid::new_v4());
        let mut held = hub.register(key, device, 5, 4);
        let mut beside = hub.register(key, other, 1, 4);
        // Claims elsewhere that are not newer (late or repeated events),
        // or for another device: nothing ends.
        hub.replace_older(&key, &device, 5);
        hub.replace_older(&key, &device, 4);
        hub.replace_older(&Identity::generate().public_key(), &device, 9);
        hub.notify(queued(key, 1), &[device, other]);
        assert_eq!(held.deliveries.recv().await.unwrap().seq, 1);
        assert_eq!(beside.deliveries.recv().await.unwrap().seq, 1);
        assert!(
            held.signals.end.notified().now_or_never().is_none(),
            "an event with an older or equal claim ended the session"
        );
        // A login here that lost the race to the held claim ends at once;
        // the held session stays registered.
        let late = hub.register(key, device, 3, 4);
        late.signals.end.notified().await;
        hub.unregister(&key, late.id);
        hub.notify(queued(key, 2), &[device]);
        assert_eq!(held.deliveries.recv().await.unwrap().seq, 2);
        // A newer claim on another router ends it, as a replacement.
        hub.replace_older(&key, &device, 6);
        held.signals.end.notified().await;
        assert!(!held.signals.ended_by_removal());
        assert!(beside.signals.end.notified().now_or_never().is_none());
    }

    #[tokio::test]
    async fn recheck_wakes_every_session_even_one_not_waiting_yet() {
        let hub = Hub::default();
        let (alice, bob) = (
            Identity::generate().public_key(),
            Identity::generate().public_key(),
        );
        let a = hub.register(alice, Uuid::new_v4(), 0, 4);
        let b = hub.register(bob, Uuid::new_v4(), 0, 4);
        let control = Registration::detached();
        hub.recheck_all();
        // The permit is stored until the session next waits.
        a.signals.recheck.notified().await;
        b.signals.recheck.notified().await;
        assert!(control.signals.recheck.notified().now_or_never().is_none());
        assert!(a.signals.end.notified().now_or_never().is_none());
    }

    #[test]
    fn full_channel_raises_lagged() {
        let hub = Hub::default();
        let key = Identity::generate().public_key();
        let device = Uuid::new_v4();
        let reg = hub.register(key, device, 0, 1);
        hub.notify(queued(key, 1), &[device]);
        assert!(!reg.signals.lagged.load(Ordering::Acquire));
        hub.notify(queued(key, 2), &[device]);
        assert!(reg.signals.lagged.load(Ordering::Acquire));
        // Nobody online: dropped silently (it is in the queue).
        hub.notify(queued(Identity::generate().public_key(), 3), &[device]);
    }
}

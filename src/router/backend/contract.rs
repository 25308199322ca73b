//! The [`Backend`] contract as one suite, written once and run against
//! every backend: each case is a `pub async fn` taking a factory that
//! opens a fresh, empty backend with the given per-device quota. A
//! backend's tests call every case through [`backend_contract!`], e.g.
//! `backend_contract!(Fresh::new(), |fresh: &Fresh, quota| fresh.open(quota));`.
//!
//! What it pins down is the module documentation of [`super`]: dedup per
//! sender, the per-device quota, ordered fetch per device, per-device acks,
//! late and first devices, frames to one's own key, removal, retention.

use uuid::Uuid;

use super::{Backend, Enqueued, NewFrame, Queued, Registered, MAX_DEVICES};
use crate::identity::{Identity, PublicKey};
use crate::protocol::CONTROL_DEVICE;

/// Expands to one `#[tokio::test]` per contract case. Each evaluates
/// `$setup` once (a temporary directory, say) and opens its backend(s)
/// with `$open`, a closure `|&setup, quota| -> impl Backend`; written
/// `backend_contract!(async setup, open)`, `$open` returns a future of
/// the backend instead.
#[macro_export]
#[doc(hidden)]
macro_rules! backend_contract {
    // A backend whose `$open` is async (a closure returning a `'static`
    // future): the cases run on a multi-threaded runtime, which lets the
    // sync factory they take block on it.
    (async $setup:expr, $open:expr) => {
        $crate::backend_contract!(
            async $setup, $open;
            dedup_is_per_sender,
            quota_is_per_device,
            fetch_is_ordered_per_device,
            an_ack_by_one_device_keeps_the_frame_for_the_other,
            a_late_device_gets_no_older_frames,
            the_first_device_gets_the_backlog,
            frames_to_ones_own_key_skip_the_sending_device,
            removed_devices_are_released_and_refused,
            retention_forgets_devices_not_seen,
            devices_are_listed_oldest_first,
            the_device_count_is_capped,
            keys_are_known_while_they_have_a_live_device,
        );
    };
    (async $setup:expr, $open:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let setup = $setup;
                let open = $open;
                $crate::router::backend::contract::$case(|quota| {
                    tokio::task::block_in_place(|| {
                        tokio::runtime::Handle::current().block_on(open(&setup, quota))
                    })
                })
                .await;
            }
        )+
    };
    ($setup:expr, $open:expr) => {
        $crate::backend_contract!(
            $setup, $open;
            dedup_is_per_sender,
            quota_is_per_device,
            fetch_is_ordered_per_device,
            an_ack_by_one_device_keeps_the_frame_for_the_other,
            a_late_device_gets_no_older_frames,
            the_first_device_gets_the_backlog,
            frames_to_ones_own_key_skip_the_sending_device,
            removed_devices_are_released_and_refused,
            retention_forgets_devices_not_seen,
            devices_are_listed_oldest_first,
            the_device_count_is_capped,
            keys_are_known_while_they_have_a_live_device,
        );
    };
    ($setup:expr, $open:expr; $($case:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $case() {
                let setup = $setup;
                let open = $open;
                $crate::router::backend::contract::$case(|quota| open(&setup, quota)).await;
            }
        )+
    };
}

fn key() -> PublicKey {
    Identity::generate().public_key()
}

/// A frame from `from` (its device `device`) to `to`.
pub fn frame(to: &PublicKey, from: &PublicKey, device: Uuid, id: Uuid) -> NewFrame {
    NewFrame {
        recipient: *to.as_bytes(),
        sender: *from.as_bytes(),
        sender_device: device,
        id,
        text: format!("{{\"id\":\"{id}\"}}").into(),
    }
}

/// Enqueues one frame from a control session of `from`.
async fn send<B: Backend>(db: &B, to: &PublicKey, from: &PublicKey) -> Enqueued {
    let f = frame(to, from, CONTROL_DEVICE, Uuid::now_v7());
    db.enqueue(vec![f]).await.unwrap().remove(0)
}

/// The stored frame of an outcome, or a panic saying what it was.
fn stored(outcome: &Enqueued) -> (&Queued, &[Uuid]) {
    match outcome {
        Enqueued::Stored { frame, devices } => (frame, devices),
        other => panic!("expected Stored, got {other:?}"),
    }
}

async fn register<B: Backend>(db: &B, key: &PublicKey, device: Uuid) -> Registered {
    db.register(*key, device, "test".to_owned()).await.unwrap()
}

/// The seqs waiting for `device` of `key`.
async fn waiting<B: Backend>(db: &B, key: &PublicKey, device: Uuid) -> Vec<i64> {
    let rows = db.fetch(*key, device, 0, 1000).await.unwrap();
    rows.iter().map(|q| q.seq).collect()
}

/// `(sender, recipient, id)` identifies a frame; one id from two senders is
/// two frames.
pub async fn dedup_is_per_sender<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let [alice, bob, carol] = [(); 3].map(|()| key());
    let id = Uuid::now_v7();
    let out = db
        .enqueue(vec![
            frame(&bob, &alice, CONTROL_DEVICE, id),
            frame(&bob, &alice, CONTROL_DEVICE, id),
            frame(&bob, &carol, CONTROL_DEVICE, id),
        ])
        .await
        .unwrap();
    let (first, _) = stored(&out[0]);
    assert_eq!(
        out[1],
        Enqueued::Duplicate {
            at: first.at.clone()
        },
        "same frame twice in one batch"
    );
    stored(&out[2]);
    let again = db
        .enqueue(vec![frame(&bob, &alice, Uuid::new_v4(), id)])
        .await
        .unwrap();
    assert!(matches!(again[0], Enqueued::Duplicate { .. }), "{again:?}");
    assert_eq!(db.depth().await.unwrap(), 2);
    db.close().await;
}

/// A frame is refused when a device it would wait for (or a key without
/// devices) has the quota's number waiting; each device's acks free its
/// own share.
pub async fn quota_is_per_device<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(2);
    let (alice, bob) = (key(), key());
    // Without devices, the key's own count.
    stored(&send(&db, &bob, &alice).await);
    stored(&send(&db, &bob, &alice).await);
    assert_eq!(send(&db, &bob, &alice).await, Enqueued::QuotaExceeded);
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(register(&db, &bob, laptop).await, Registered::First);
    assert_eq!(register(&db, &bob, phone).await, Registered::Added);
    // The laptop has 2 waiting: full, though the phone has none.
    assert_eq!(send(&db, &bob, &alice).await, Enqueued::QuotaExceeded);
    let backlog = waiting(&db, &bob, laptop).await;
    assert_eq!(db.remove(bob, laptop, backlog).await.unwrap(), 2);
    stored(&send(&db, &bob, &alice).await);
    stored(&send(&db, &bob, &alice).await);
    // Now each device has 2 waiting.
    assert_eq!(send(&db, &bob, &alice).await, Enqueued::QuotaExceeded);
    let phone_has = waiting(&db, &bob, phone).await;
    db.remove(bob, phone, phone_has).await.unwrap();
    assert_eq!(
        send(&db, &bob, &alice).await,
        Enqueued::QuotaExceeded,
        "the laptop still has 2"
    );
    let laptop_has = waiting(&db, &bob, laptop).await;
    db.remove(bob, laptop, laptop_has[..1].to_vec())
        .await
        .unwrap();
    stored(&send(&db, &bob, &alice).await);
    db.close().await;
}

/// Each device fetches what waits for it, in commit order, after a cursor
/// and up to a limit; an unknown device gets nothing.
pub async fn fetch_is_ordered_per_device<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let (alice, bob) = (key(), key());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    register(&db, &bob, laptop).await;
    register(&db, &bob, phone).await;
    let mut seqs = Vec::new();
    for _ in 0..4 {
        let out = send(&db, &bob, &alice).await;
        let (q, devices) = stored(&out);
        assert_eq!(devices.len(), 2, "waits for both devices");
        seqs.push(q.seq);
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seq grows: {seqs:?}");
    for device in [laptop, phone] {
        assert_eq!(waiting(&db, &bob, device).await, seqs);
        let page = db.fetch(bob, device, seqs[1], 1).await.unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].seq, seqs[2]);
        assert_eq!(page[0].recipient, *bob.as_bytes());
    }
    assert!(waiting(&db, &bob, Uuid::new_v4()).await.is_empty());
    assert!(waiting(&db, &alice, laptop).await.is_empty());
    db.close().await;
}

/// Acks are per device; the last device's ack deletes the frame.
pub async fn an_ack_by_one_device_keeps_the_frame_for_the_other<B: Backend>(
    open: impl Fn(u64) -> B,
) {
    let db = open(100);
    let (alice, bob) = (key(), key());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    register(&db, &bob, laptop).await;
    register(&db, &bob, phone).await;
    let out = send(&db, &bob, &alice).await;
    let seq = stored(&out).0.seq;
    assert_eq!(db.remove(alice, laptop, vec![seq]).await.unwrap(), 0);
    assert_eq!(db.remove(bob, laptop, vec![seq]).await.unwrap(), 1);
    assert_eq!(
        db.remove(bob, laptop, vec![seq]).await.unwrap(),
        0,
        "acked already"
    );
    assert!(waiting(&db, &bob, laptop).await.is_empty());
    assert_eq!(waiting(&db, &bob, phone).await, [seq]);
    assert_eq!(db.depth().await.unwrap(), 1);
    assert_eq!(db.remove(bob, phone, vec![seq]).await.unwrap(), 1);
    assert_eq!(db.depth().await.unwrap(), 0, "the last ack deletes");
    db.close().await;
}

/// A device registering beside others gets only what is committed after.
pub async fn a_late_device_gets_no_older_frames<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let (alice, bob) = (key(), key());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(register(&db, &bob, laptop).await, Registered::First);
    let old = stored(&send(&db, &bob, &alice).await).0.seq;
    assert_eq!(register(&db, &bob, phone).await, Registered::Added);
    let out = send(&db, &bob, &alice).await;
    let (new, devices) = stored(&out);
    let mut both = devices.to_vec();
    both.sort();
    let mut expected = vec![laptop, phone];
    expected.sort();
    assert_eq!(both, expected);
    assert_eq!(waiting(&db, &bob, phone).await, [new.seq]);
    assert_eq!(waiting(&db, &bob, laptop).await, [old, new.seq]);
    // Registering again is not new: still nothing older.
    assert_eq!(register(&db, &bob, phone).await, Registered::Known);
    assert_eq!(waiting(&db, &bob, phone).await, [new.seq]);
    db.close().await;
}

/// Frames for a key without devices wait for its first device.
pub async fn the_first_device_gets_the_backlog<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let (alice, bob) = (key(), key());
    let out = [send(&db, &bob, &alice).await, send(&db, &bob, &alice).await];
    let seqs: Vec<i64> = out.iter().map(|o| stored(o).0.seq).collect();
    assert!(stored(&out[0]).1.is_empty(), "no device to hand it to");
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    assert_eq!(register(&db, &bob, laptop).await, Registered::First);
    assert_eq!(waiting(&db, &bob, laptop).await, seqs);
    assert_eq!(register(&db, &bob, phone).await, Registered::Added);
    assert!(waiting(&db, &bob, phone).await.is_empty());
    db.close().await;
}

/// A frame a device sends to its own key does not wait for that device,
/// and is not stored when no other device needs it.
pub async fn frames_to_ones_own_key_skip_the_sending_device<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let alice = key();
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    register(&db, &alice, laptop).await;
    let note = frame(&alice, &alice, laptop, Uuid::now_v7());
    let out = db.enqueue(vec![note]).await.unwrap();
    assert!(matches!(out[0], Enqueued::Unneeded { .. }), "{out:?}");
    assert_eq!(db.depth().await.unwrap(), 0);
    register(&db, &alice, phone).await;
    let copy = frame(&alice, &alice, laptop, Uuid::now_v7());
    let out = db.enqueue(vec![copy]).await.unwrap();
    let (q, devices) = stored(&out[0]);
    assert_eq!(devices, [phone]);
    assert!(waiting(&db, &alice, laptop).await.is_empty());
    assert_eq!(waiting(&db, &alice, phone).await, [q.seq]);
    // The phone's ack is the last: deleted.
    assert_eq!(db.remove(alice, phone, vec![q.seq]).await.unwrap(), 1);
    assert_eq!(db.depth().await.unwrap(), 0);
    // A control session is no device: its frame waits for both.
    let out = send(&db, &alice, &alice).await;
    assert_eq!(stored(&out).1.len(), 2);
    db.close().await;
}

/// Removing a device releases its frames (deleting those only it needed)
/// and refuses its later registrations.
pub async fn removed_devices_are_released_and_refused<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(2);
    let (alice, bob) = (key(), key());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    register(&db, &bob, laptop).await;
    let laptop_only = stored(&send(&db, &bob, &alice).await).0.seq;
    register(&db, &bob, phone).await;
    let both = stored(&send(&db, &bob, &alice).await).0.seq;
    assert_eq!(send(&db, &bob, &alice).await, Enqueued::QuotaExceeded);
    assert!(db.remove_device(bob, laptop).await.unwrap());
    assert_eq!(
        db.depth().await.unwrap(),
        1,
        "{laptop_only} only the laptop needed"
    );
    assert_eq!(waiting(&db, &bob, phone).await, [both]);
    assert!(waiting(&db, &bob, laptop).await.is_empty());
    assert_eq!(register(&db, &bob, laptop).await, Registered::Removed);
    assert!(
        !db.remove_device(bob, laptop).await.unwrap(),
        "removed already"
    );
    assert!(
        !db.remove_device(bob, Uuid::new_v4()).await.unwrap(),
        "unknown"
    );
    assert!(
        !db.remove_device(alice, phone).await.unwrap(),
        "another key's"
    );
    let listed: Vec<Uuid> = db
        .devices(bob)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(listed, [phone]);
    // The laptop's quota share went with it.
    let out = send(&db, &bob, &alice).await;
    assert_eq!(stored(&out).1, [phone]);
    // The last device: its frames go.
    assert!(db.remove_device(bob, phone).await.unwrap());
    assert_eq!(db.depth().await.unwrap(), 0);
    db.close().await;
}

/// Steps past the clock's current millisecond and returns a cutoff
/// between what happened before and what happens after.
fn cutoff_now() -> String {
    std::thread::sleep(std::time::Duration::from_millis(3));
    let cutoff = crate::clock::now();
    std::thread::sleep(std::time::Duration::from_millis(3));
    cutoff
}

/// Devices not seen since the cutoff are forgotten: their frames are
/// released, and a key's last device's frames wait for its next first
/// device.
pub async fn retention_forgets_devices_not_seen<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let (alice, bob, carol, dave) = (key(), key(), key(), key());
    let (laptop, phone, desk, old) = (
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
        Uuid::new_v4(),
    );
    register(&db, &bob, laptop).await;
    register(&db, &carol, desk).await;
    register(&db, &dave, old).await;
    let cutoff = cutoff_now();
    register(&db, &bob, phone).await;
    let shared = stored(&send(&db, &bob, &alice).await).0.seq;
    let for_carol = stored(&send(&db, &carol, &alice).await).0.seq;
    let for_dave = stored(&send(&db, &dave, &alice).await).0.seq;
    // Bob's laptop and dave's only device were last seen before the
    // cutoff; carol's desk too, but it is noted as seen now (as the router
    // does for live sessions).
    db.seen(vec![(carol, desk)]).await.unwrap();
    let gone = db.expire(cutoff).await.unwrap();
    assert_eq!((gone.frames, gone.devices), (0, 2));
    let bobs: Vec<Uuid> = db
        .devices(bob)
        .await
        .unwrap()
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(bobs, [phone]);
    assert!(waiting(&db, &bob, laptop).await.is_empty());
    assert_eq!(waiting(&db, &bob, phone).await, [shared]);
    assert_eq!(waiting(&db, &carol, desk).await, [for_carol]);
    // The laptop, back, is a new device and gets nothing older.
    assert_eq!(register(&db, &bob, laptop).await, Registered::Added);
    assert!(waiting(&db, &bob, laptop).await.is_empty());
    // Dave's frame, committed after his device was last seen, waits for
    // his next first device.
    assert!(db.devices(dave).await.unwrap().is_empty());
    let newcomer = Uuid::new_v4();
    assert_eq!(register(&db, &dave, newcomer).await, Registered::First);
    assert_eq!(waiting(&db, &dave, newcomer).await, [for_dave]);
    // Frames expire as before, whoever waits for them.
    let gone = db.expire(cutoff_now()).await.unwrap();
    assert_eq!(gone.frames, 3);
    assert_eq!(db.depth().await.unwrap(), 0);
    db.close().await;
}

/// `devices` lists live devices oldest first with their latest name;
/// `seen` moves `last_seen`.
pub async fn devices_are_listed_oldest_first<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let bob = key();
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    db.register(bob, laptop, "laptop".into()).await.unwrap();
    cutoff_now();
    db.register(bob, phone, "phone".into()).await.unwrap();
    cutoff_now();
    db.register(bob, laptop, "old laptop".into()).await.unwrap();
    let list = db.devices(bob).await.unwrap();
    let names: Vec<(Uuid, &str)> = list.iter().map(|d| (d.id, d.name.as_str())).collect();
    assert_eq!(names, [(laptop, "old laptop"), (phone, "phone")]);
    assert!(list[0].first_seen < list[0].last_seen, "{list:?}");
    assert_eq!(list[1].first_seen, list[1].last_seen);
    cutoff_now();
    db.seen(vec![(bob, phone), (bob, Uuid::new_v4())])
        .await
        .unwrap();
    let list = db.devices(bob).await.unwrap();
    assert!(list[1].first_seen < list[1].last_seen, "{list:?}");
    assert!(db.devices(key()).await.unwrap().is_empty());
    db.close().await;
}

/// A key has at most [`MAX_DEVICES`] live devices.
pub async fn the_device_count_is_capped<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let (alice, bob) = (key(), key());
    let devices: Vec<Uuid> = (0..MAX_DEVICES).map(|_| Uuid::new_v4()).collect();
    for d in &devices {
        assert_ne!(register(&db, &bob, *d).await, Registered::TooMany);
    }
    assert_eq!(
        register(&db, &bob, Uuid::new_v4()).await,
        Registered::TooMany
    );
    let out = send(&db, &bob, &alice).await;
    assert_eq!(stored(&out).1.len(), MAX_DEVICES);
    assert!(db.remove_device(bob, devices[3]).await.unwrap());
    let newcomer = Uuid::new_v4();
    assert_eq!(register(&db, &bob, newcomer).await, Registered::Added);
    assert!(
        waiting(&db, &bob, newcomer).await.is_empty(),
        "a reused slot carries nothing of its former device"
    );
    for d in &devices[4..] {
        assert_eq!(waiting(&db, &bob, *d).await.len(), 1);
    }
    db.close().await;
}

/// `knows`: a key is known while it has a live device; frames queued for
/// it or sent by it do not make it known, removal and retention forget it.
pub async fn keys_are_known_while_they_have_a_live_device<B: Backend>(open: impl Fn(u64) -> B) {
    let db = open(100);
    let (alice, bob, carol) = (key(), key(), key());
    assert!(!db.knows(bob).await.unwrap(), "never seen");
    // Queued for, and sending from a control session: still unknown.
    stored(&send(&db, &bob, &alice).await);
    assert!(!db.knows(bob).await.unwrap());
    assert!(!db.knows(alice).await.unwrap());
    let (laptop, phone) = (Uuid::new_v4(), Uuid::new_v4());
    register(&db, &bob, laptop).await;
    register(&db, &bob, phone).await;
    register(&db, &carol, Uuid::new_v4()).await;
    assert!(db.knows(bob).await.unwrap());
    assert!(!db.knows(alice).await.unwrap(), "only the keys registered");
    // Until its last device is removed.
    assert!(db.remove_device(bob, laptop).await.unwrap());
    assert!(db.knows(bob).await.unwrap(), "the phone is left");
    assert!(db.remove_device(bob, phone).await.unwrap());
    assert!(!db.knows(bob).await.unwrap());
    // Or forgotten by retention.
    assert!(db.knows(carol).await.unwrap());
    db.expire(cutoff_now()).await.unwrap();
    assert!(!db.knows(carol).await.unwrap());
    db.close().await;
}

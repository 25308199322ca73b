//! Alice on two devices (two profile databases holding one identity) and
//! Bob, with frames handed over by hand as a v2 router would: each frame
//! for a key goes to every device of that key but the one that sent it.

use ed25519_dalek::Signer;

use super::*;
use crate::client::engine::tests::to_key;
use crate::client::engine::SEND_WINDOW;
use crate::crypto;
use crate::identity::Identity;
use crate::protocol::{self, Ack};
use crate::store::{ContactName, Event, Store};

struct Device {
    engine: Engine,
    dir: tempfile::TempDir,
}

impl Device {
    fn new(identity: &Identity) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&db(&dir)).unwrap();
        store.set_identity(identity, false).unwrap();
        let identity = Identity::from_secret_bytes(&identity.secret_bytes());
        Self {
            engine: Engine::new(store, identity),
            dir,
        }
    }

    fn me(&self) -> PublicKey {
        *self.engine.me()
    }

    fn store(&self) -> &crate::store::Store {
        self.engine.store()
    }

    /// Saves `key` as `name` here, the news for other devices left out.
    fn know(&mut self, name: &str, key: &PublicKey) {
        let name = ContactName::parse(name).unwrap();
        self.engine.store.add_contact(&name, key).unwrap();
        self.engine
            .store
            .conn()
            .execute("DELETE FROM sync_outbox", [])
            .unwrap();
    }

    /// Everything this device's outbox holds, accepted by the router (each
    /// acked at `at`); returns the frames, to hand to their recipients.
    fn flush(&mut self, at: &str) -> Vec<Frame> {
        // Contacts may have changed behind the engine's back.
        self.engine.outbox_changed();
        let mut sent = Vec::new();
        loop {
            let frames = self.engine.outbox_frames().unwrap();
            if frames.is_empty() {
                return sent;
            }
            let acks = frames.iter().map(|f| ack_at(f, at)).collect();
            self.engine.handle(acks).unwrap();
            sent.extend(frames);
        }
    }

    /// Hands this device the frames of `frames` addressed to its key.
    fn take(&mut self, frames: &[Frame]) -> crate::client::Reaction {
        self.engine.handle(to_key(frames, &self.me())).unwrap()
    }

    fn out(&self, id: &MessageId) -> Message {
        self.store().message(id).unwrap().unwrap()
    }

    fn timeline(&self, m: &Message) -> Vec<Event> {
        self.store().timeline(m).unwrap()
    }
}

fn db(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("p").join("chat.db")
}

fn ack_at(frame: &Frame, at: &str) -> Frame {
    let Frame::Message(m) = frame else {
        panic!("not a message: {frame:?}")
    };
    Frame::Ack(Ack {
        id: m.id,
        at: Some(at.to_owned()),
    })
}

/// Alice's two devices and Bob, who know each other.
fn alice_twice_and_bob() -> (Device, Device, Device) {
    let alice = Identity::generate();
    let (mut one, mut two, mut bob) = (
        Device::new(&alice),
        Device::new(&alice),
        Device::new(&Identity::generate()),
    );
    let (alice_key, bob_key) = (one.me(), bob.me());
    one.know("bob", &bob_key);
    two.know("bob", &bob_key);
    bob.know("alice", &alice_key);
    (one, two, bob)
}

/// A message's fields every device must agree on (the row id is local).
fn shown(m: &Message) -> Message {
    Message { id: 0, ..m.clone() }
}

const SENT_AT: &str = "2026-11-26T07:00:00.100Z";
const LATER: &str = "2026-11-26T07:00:05.000Z";

#[test]
fn a_sent_message_is_copied_to_the_other_device_with_its_id_and_times() {
    let (mut one, mut two, bob) = alice_twice_and_bob();
    let msg = one.engine.queue(&bob.me(), "hello bob").unwrap();
    let frames = one.flush(SENT_AT);
    assert_eq!(to_key(&frames, &bob.me()).len(), 1);
    let copies = to_key(&frames, &one.me());
    assert_eq!(copies.len(), 1, "one copy, sent once the router took it");

    let r = two.take(&copies);
    let [Update::Received(got)] = &r.updates[..] else {
        panic!("{:?}", r.updates)
    };
    let original = one.out(&msg.msg_id);
    assert_eq!(original.sent_at.as_deref(), Some(SENT_AT));
    assert_eq!(shown(got), shown(&original));
    assert_eq!((got.direction, got.status), (Direction::Out, Status::Sent));
    assert_eq!(two.timeline(got), one.timeline(&original));
    assert!(matches!(&r.send[..], [Frame::Ack(a)] if Some(a.id) == copies.first().map(frame_id)));
    // Not a message received from bob, and nothing owed to anyone.
    assert_eq!(two.engine.tally().received, 0);
    assert!(two.flush(LATER).is_empty(), "the copy is not sent again");

    // A copy that comes twice is stored once.
    let r = two.take(&copies);
    assert!(r.updates.is_empty());
    assert_eq!(r.send.len(), 1, "acked again");
    assert_eq!(two.store().message_count().unwrap(), 1);
}

fn frame_id(frame: &Frame) -> uuid::Uuid {
    match frame {
        Frame::Message(m) => m.id,
        other => panic!("{other:?}"),
    }
}

#[test]
fn statuses_follow_the_peers_receipts_on_both_devices() {
    let (mut one, mut two, mut bob) = alice_twice_and_bob();
    let msg = one.engine.queue(&bob.me(), "hi").unwrap();
    let frames = one.flush(SENT_AT);
    two.take(&frames);
    // Bob stores it: his delivered receipt goes to the key, so to both.
    let r = bob.take(&frames);
    assert_eq!(r.send.len(), 2, "the ack, and the receipt");
    let delivered = to_key(&r.send, &one.me());
    assert_eq!(delivered.len(), 1);
    for device in [&mut one, &mut two] {
        device.take(&delivered);
        assert_eq!(device.out(&msg.msg_id).status, Status::Delivered);
    }
    // Bob reads it: one read receipt, and his own devices hear of it.
    let read = bob.engine.mark_read(&one.me(), &[msg.msg_id]).unwrap();
    assert_eq!(to_key(&read, &one.me()).len(), 1);
    for device in [&mut one, &mut two] {
        device.take(&read);
    }
    let (a, b) = (one.out(&msg.msg_id), two.out(&msg.msg_id));
    assert_eq!(a.status, Status::Read);
    assert_eq!(shown(&a), shown(&b));
    assert_eq!(one.timeline(&a), two.timeline(&b));
    let statuses: Vec<Status> = one.timeline(&a).iter().map(|e| e.status).collect();
    assert_eq!(
        statuses,
        [
            Status::Pending,
            Status::Sent,
            Status::Delivered,
            Status::Read
        ]
    );
}

#[test]
fn a_receipt_that_comes_before_the_copy_is_kept_and_applied_with_it() {
    let (mut one, mut two, mut bob) = alice_twice_and_bob();
    let msg = one.engine.queue(&bob.me(), "quick").unwrap();
    let frames = one.flush(SENT_AT);
    let mut receipts = to_key(&bob.take(&frames).send, &one.me());
    assert_eq!(receipts.len(), 1, "delivered");
    receipts.extend(bob.engine.mark_read(&one.me(), &[msg.msg_id]).unwrap());
    one.take(&receipts);
    // Device 2 hears from bob before it gets its own copy.
    let r = two.take(&receipts);
    assert!(r.updates.is_empty(), "{:?}", r.updates);
    assert_eq!(two.store().message_count().unwrap(), 0);
    let r = two.take(&frames);
    let [Update::Received(got)] = &r.updates[..] else {
        panic!("{:?}", r.updates)
    };
    assert_eq!(got.status, Status::Read);
    assert!(got.delivered_at.is_some());
    let original = one.out(&msg.msg_id);
    assert_eq!(shown(got), shown(&original));
    assert_eq!(two.timeline(got), one.timeline(&original));
    let left: i64 = two
        .store()
        .conn()
        .query_row("SELECT count(*) FROM sync_early", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "used once, then gone");
}

/// Read receipts (not delivered ones) among `frames` that `bob` can open.
fn read_receipts(bob: &Device, frames: &[Frame]) -> usize {
    to_key(frames, &bob.me())
        .iter()
        .filter(|f| {
            let Frame::Message(m) = f else { return false };
            matches!(
                protocol::open(bob.engine.identity(), m),
                Ok(Content::Read { .. })
            )
        })
        .count()
}

#[test]
fn a_read_on_one_device_is_a_read_on_the_other_and_bob_gets_one_receipt() {
    let (mut one, mut two, mut bob) = alice_twice_and_bob();
    let msg = bob.engine.queue(&one.me(), "read me").unwrap();
    let from_bob = bob.flush(SENT_AT);
    let id = msg.msg_id;
    for device in [&mut one, &mut two] {
        let r = device.take(&from_bob);
        assert!(matches!(&r.updates[..], [Update::Received(m)] if m.msg_id == id));
    }
    // Device 2 shows it.
    let read = two.engine.mark_read(&bob.me(), &[id]).unwrap();
    assert_eq!(read_receipts(&bob, &read), 1);
    let mut to_bob = read.clone();
    to_bob.extend(two.flush(LATER));
    // Device 1 follows, and says nothing to bob.
    one.take(&read);
    let (a, b) = (
        one.store().incoming(&bob.me(), &id).unwrap().unwrap(),
        two.store().incoming(&bob.me(), &id).unwrap().unwrap(),
    );
    assert_eq!(a.status, Status::Read);
    assert_eq!(shown(&a).read_at, shown(&b).read_at);
    assert!(one.engine.mark_read(&bob.me(), &[id]).unwrap().is_empty());
    to_bob.extend(one.flush(LATER));
    assert_eq!(read_receipts(&bob, &to_bob), 1, "bob gets one read receipt");
    // Bob sees it read once.
    bob.take(&to_bob);
    let mine = bob.out(&id);
    assert_eq!(mine.status, Status::Read);
    let reads = bob
        .timeline(&mine)
        .iter()
        .filter(|e| e.status == Status::Read)
        .count();
    assert_eq!(reads, 1);
}

#[test]
fn a_read_that_comes_before_the_message_is_kept_for_it() {
    let (mut one, mut two, mut bob) = alice_twice_and_bob();
    let msg = bob.engine.queue(&one.me(), "late here").unwrap();
    let from_bob = bob.flush(SENT_AT);
    two.take(&from_bob);
    let read = two.engine.mark_read(&bob.me(), &[msg.msg_id]).unwrap();
    // Device 1 hears of the read first.
    one.take(&read);
    let r = one.take(&from_bob);
    let [Update::Received(m)] = &r.updates[..] else {
        panic!("{:?}", r.updates)
    };
    assert_eq!(m.status, Status::Read);
    let there = two
        .store()
        .incoming(&bob.me(), &msg.msg_id)
        .unwrap()
        .unwrap();
    assert_eq!(m.read_at, there.read_at);
    assert!(one
        .engine
        .mark_read(&bob.me(), &[msg.msg_id])
        .unwrap()
        .is_empty());
    assert_eq!(read_receipts(&bob, &one.flush(LATER)), 0);
}

fn names(d: &Device) -> Vec<(String, PublicKey)> {
    d.store()
        .contacts()
        .unwrap()
        .into_iter()
        .map(|c| (c.name, c.key))
        .collect()
}

#[test]
fn contacts_added_renamed_and_removed_follow_on_the_other_device() {
    let (mut one, mut two, _bob) = alice_twice_and_bob();
    let carol = Identity::generate().public_key();
    one.engine
        .store
        .add_contact(&ContactName::parse("carol").unwrap(), &carol)
        .unwrap();
    two.take(&one.flush(LATER));
    assert_eq!(names(&two), names(&one));
    one.engine
        .store
        .rename_contact("carol", &ContactName::parse("Caroline").unwrap())
        .unwrap();
    two.take(&one.flush(LATER));
    assert!(names(&two).contains(&("Caroline".to_owned(), carol)));
    one.engine.store.remove_contact("caroline").unwrap();
    two.take(&one.flush(LATER));
    assert_eq!(names(&two), names(&one));
    assert_eq!(names(&two).len(), 1, "bob is left");
    // Nothing was echoed back.
    assert!(two.flush(LATER).is_empty());
}

#[test]
fn a_name_taken_on_the_other_device_gets_a_number_there() {
    let (mut one, mut two, _bob) = alice_twice_and_bob();
    let (dave, other_dave) = (
        Identity::generate().public_key(),
        Identity::generate().public_key(),
    );
    two.know("Dave", &other_dave);
    one.engine
        .store
        .add_contact(&ContactName::parse("dave").unwrap(), &dave)
        .unwrap();
    two.take(&one.flush(LATER));
    let on_two = names(&two);
    assert!(on_two.contains(&("Dave".to_owned(), other_dave)), "kept");
    assert!(
        on_two.contains(&("dave (2)".to_owned(), dave)),
        "{on_two:?}"
    );
    // A rename of a key not saved here saves it.
    let erin = Identity::generate().public_key();
    let rename = Content::Contact {
        op: ContactOp::Rename,
        key: erin,
        name: Some("erin".into()),
        router: None,
    };
    two.take(&[seal_from(&one, &one.me(), &rename)]);
    assert!(names(&two).contains(&("erin".to_owned(), erin)));
    // The own key, and a name that is no contact name, change nothing.
    for (key, name) in [(one.me(), "me"), (erin, "\u{202e}evil")] {
        let add = Content::Contact {
            op: ContactOp::Add,
            key,
            name: Some(name.into()),
            router: None,
        };
        let r = two.take(&[seal_from(&one, &one.me(), &add)]);
        assert!(r.updates.is_empty());
    }
    assert!(names(&two).contains(&("erin".to_owned(), erin)));
    assert!(!names(&two).iter().any(|(_, k)| *k == one.me()));
}

fn seal_from(from: &Device, to: &PublicKey, content: &Content) -> Frame {
    let id = MessageId::new_v7().uuid();
    let sealed = protocol::seal(from.engine.identity(), to, id, &clock::now(), content).unwrap();
    Frame::Message(sealed)
}

#[test]
fn sync_kinds_from_another_key_are_refused_and_change_nothing() {
    let (mut one, _two, mut bob) = alice_twice_and_bob();
    let bob_key = bob.me();
    let forged = [
        Content::Sent {
            id: MessageId::new_v7().uuid(),
            peer: bob_key,
            body: "I never said this".into(),
            created: clock::now(),
            sent: None,
        },
        Content::Contact {
            op: ContactOp::Remove,
            key: bob_key,
            name: None,
            router: None,
        },
        Content::ReadSync {
            peer: bob_key,
            ids: vec![MessageId::new_v7().uuid()],
        },
    ];
    let frames: Vec<Frame> = forged
        .iter()
        .map(|c| seal_from(&bob, &one.me(), c))
        .collect();
    let before = names(&one);
    let r = one.take(&frames);
    assert_eq!(r.send.len(), 3, "acked, so they do not come back");
    assert!(r
        .updates
        .iter()
        .all(|u| matches!(u, Update::Rejected { reason, .. } if reason == FORGED_SYNC)));
    assert_eq!(r.updates.len(), 3);
    assert_eq!(one.store().message_count().unwrap(), 0);
    assert_eq!(names(&one), before);
    assert_eq!(one.store().rejected().unwrap().len(), 3);
    // Bob's own devices would take them, though: they are his to send.
    let r = bob.take(&[seal_from(&bob, &bob_key, &forged[1])]);
    assert!(r.updates.is_empty());
}

/// A frame from `from` to `to` whose plaintext is `json`, as a newer
/// version could send.
fn seal_raw(from: &Identity, to: &PublicKey, json: &str) -> Frame {
    let (id, ts) = (MessageId::new_v7().uuid(), clock::now());
    let me = from.public_key();
    let key = crypto::message_key(from, to, &me, to).unwrap();
    let nonce = crypto::random_nonce();
    let ad = protocol::message_ad(&id, &me, to, &ts);
    let payload = protocol::Payload {
        nonce,
        ciphertext: crypto::encrypt(&key, &nonce, &ad, json.as_bytes()).unwrap(),
    };
    let signed = protocol::message_signed_bytes(&id, &me, to, &ts, &payload);
    Frame::Message(MessageFrame {
        id,
        from: me,
        to: *to,
        ts,
        payload,
        sig: from.signing_key().sign(&signed).to_bytes(),
    })
}

#[test]
fn kinds_from_a_newer_version_are_acked_and_store_nothing() {
    let (mut one, _two, bob) = alice_twice_and_bob();
    let frames = [
        seal_raw(
            bob.engine.identity(),
            &one.me(),
            r#"{"kind":"reaction","emoji":"+1"}"#,
        ),
        seal_raw(
            one.engine.identity(),
            &one.me(),
            r#"{"kind":"settings","theme":"dark"}"#,
        ),
    ];
    let r = one.take(&frames);
    assert!(r.updates.is_empty(), "{:?}", r.updates);
    assert_eq!(r.send.len(), 2);
    assert!(r.send.iter().all(|f| matches!(f, Frame::Ack(_))));
    assert_eq!(one.store().message_count().unwrap(), 0);
    assert!(one.store().rejected().unwrap().is_empty());
    assert!(one.flush(LATER).is_empty());
}

#[test]
fn what_is_owed_to_the_other_devices_survives_a_restart() {
    let (mut one, mut two, bob) = alice_twice_and_bob();
    let (msg, frame) = one.engine.compose(&bob.me(), "then a crash").unwrap();
    one.engine.handle(vec![ack_at(&frame, SENT_AT)]).unwrap();
    let Device { engine, dir } = one;
    let identity = Identity::from_secret_bytes(&engine.identity().secret_bytes());
    drop(engine);
    let mut one = Device {
        engine: Engine::new(Store::open(&db(&dir)).unwrap(), identity),
        dir,
    };
    let copies = one.flush(LATER);
    assert_eq!(copies.len(), 1);
    two.take(&copies);
    assert_eq!(shown(&two.out(&msg.msg_id)), shown(&one.out(&msg.msg_id)));
    assert!(one.flush(LATER).is_empty(), "acked, then forgotten");
}

#[test]
fn its_own_sync_frames_handed_back_change_nothing() {
    // A v1 router delivers a frame to its sender's own session too.
    let (mut one, _two, mut bob) = alice_twice_and_bob();
    let msg = one.engine.queue(&bob.me(), "echo").unwrap();
    let frames = one.flush(SENT_AT);
    let before = shown(&one.out(&msg.msg_id));
    let r = one.take(&frames);
    assert!(r.updates.is_empty(), "{:?}", r.updates);
    assert_eq!(shown(&one.out(&msg.msg_id)), before);
    let incoming = bob.engine.queue(&one.me(), "x").unwrap();
    one.take(&bob.flush(SENT_AT));
    let read = one.engine.mark_read(&bob.me(), &[incoming.msg_id]).unwrap();
    let r = one.take(&read);
    assert!(r.updates.is_empty());
    assert_eq!(one.store().message_count().unwrap(), 2);
}

#[test]
fn a_copy_of_a_message_deleted_before_it_went_is_dropped() {
    let (mut one, _two, bob) = alice_twice_and_bob();
    let (msg, frame) = one.engine.compose(&bob.me(), "oops").unwrap();
    one.engine.handle(vec![ack_at(&frame, SENT_AT)]).unwrap();
    one.engine
        .store
        .conn()
        .execute("DELETE FROM messages WHERE msg_id = ?1", [msg.msg_id])
        .unwrap();
    assert!(one.flush(LATER).is_empty());
    assert!(crate::store::sync::pending_sync_tx(one.store().conn())
        .unwrap()
        .is_empty());
}

#[test]
fn a_copy_over_the_routers_limit_is_dropped_and_said() {
    let (mut one, _two, bob) = alice_twice_and_bob();
    let body = "x".repeat(1000);
    // The message fits, its copy (a little longer) does not.
    let len = one.engine.text_frame_len(&bob.me(), &body).unwrap();
    one.engine.set_frame_limit(Some(len + 10));
    let msg = one.engine.queue(&bob.me(), &body).unwrap();
    let frames = one.flush(SENT_AT);
    assert_eq!(to_key(&frames, &bob.me()).len(), 1);
    assert_eq!(frames.len(), 1, "no copy went out");
    assert_eq!(one.out(&msg.msg_id).status, Status::Sent);
    let updates = one.engine.take_updates();
    assert!(
        matches!(
            &updates[..],
            [Update::RouterError {
                code: ErrorCode::TooLarge,
                ..
            }]
        ),
        "{updates:?}"
    );
    assert!(crate::store::sync::pending_sync_tx(one.store().conn())
        .unwrap()
        .is_empty());
}

#[test]
fn a_read_and_its_message_in_one_batch_in_the_wrong_order_still_meet() {
    let (mut one, mut two, mut bob) = alice_twice_and_bob();
    let msg = bob.engine.queue(&one.me(), "same batch").unwrap();
    let from_bob = bob.flush(SENT_AT);
    two.take(&from_bob);
    let mut batch = two.engine.mark_read(&bob.me(), &[msg.msg_id]).unwrap();
    batch.extend(from_bob);
    let r = one.take(&batch);
    assert!(
        matches!(&r.updates[..], [Update::Received(m)] if m.status == Status::Read),
        "{:?}",
        r.updates
    );
}

#[test]
fn a_long_queue_for_the_other_devices_goes_out_within_the_send_window_once_each() {
    let (mut one, mut two, _bob) = alice_twice_and_bob();
    let keys: Vec<PublicKey> = (0..SEND_WINDOW + 10)
        .map(|_| Identity::generate().public_key())
        .collect();
    for (n, key) in keys.iter().enumerate() {
        let name = ContactName::parse(&format!("friend {n}")).unwrap();
        one.engine.store.add_contact(&name, key).unwrap();
    }
    one.engine.outbox_changed();
    let first = one.engine.outbox_frames().unwrap();
    assert_eq!(first.len(), SEND_WINDOW);
    assert!(
        one.engine.outbox_frames().unwrap().is_empty(),
        "window full"
    );
    one.engine
        .handle(first[..3].iter().map(|f| ack_at(f, LATER)).collect())
        .unwrap();
    let more = one.engine.outbox_frames().unwrap();
    assert_eq!(more.len(), 3);
    let mut all = first.clone();
    all.extend(more);
    one.engine
        .handle(all[3..].iter().map(|f| ack_at(f, LATER)).collect())
        .unwrap();
    all.extend(one.flush(LATER));
    let mut ids: Vec<_> = all.iter().map(frame_id).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), keys.len(), "each once");
    two.take(&all);
    assert_eq!(names(&two).len(), keys.len() + 1);
}

#[test]
fn a_receipt_that_overtook_the_routers_ack_leaves_both_devices_alike() {
    let (mut one, mut two, mut bob) = alice_twice_and_bob();
    let (msg, frame) = one.engine.compose(&bob.me(), "fast bob").unwrap();
    // The router forwards it and bob's receipt is back before its ack
    // (the ack was lost with a connection, say).
    let delivered = to_key(&bob.take(std::slice::from_ref(&frame)).send, &one.me());
    one.take(&delivered);
    assert_eq!(one.out(&msg.msg_id).status, Status::Delivered);
    one.engine.handle(vec![ack_at(&frame, SENT_AT)]).unwrap();
    let copies = one.flush(LATER);
    assert_eq!(copies.len(), 1, "the copy still goes");
    two.take(&delivered);
    two.take(&copies);
    let (a, b) = (one.out(&msg.msg_id), two.out(&msg.msg_id));
    assert_eq!(a.sent_at, None);
    assert_eq!(shown(&a), shown(&b));
    assert_eq!(one.timeline(&a), two.timeline(&b));
}

//! Two engines talking through frames handed over by hand: the delivery
//! rules without a router or sockets.

use super::*;
use ed25519_dalek::Signer;

struct Party {
    engine: Engine,
    _dir: tempfile::TempDir,
}

/// Makes `b` a contact of `a`, as if the router already took the news to
/// `a`'s other devices.
fn know(a: &mut Party, name: &str, b: &Party) {
    let name = crate::store::ContactName::parse(name).unwrap();
    a.engine.store.add_contact(&name, b.engine.me()).unwrap();
    a.engine
        .store
        .conn()
        .execute("DELETE FROM sync_outbox", [])
        .unwrap();
}

/// The frames of `frames` addressed to `key`: without those for the
/// sender's other devices, say.
pub(super) fn to_key(frames: &[Frame], key: &PublicKey) -> Vec<Frame> {
    frames
        .iter()
        .filter(|f| matches!(f, Frame::Message(m) if m.to == *key))
        .cloned()
        .collect()
}

/// Whether every frame of `frames` goes from its sender to itself.
fn all_to_self(frames: &[Frame]) -> bool {
    frames
        .iter()
        .all(|f| matches!(f, Frame::Message(m) if m.to == m.from))
}

/// Alice and Bob, each a contact of the other.
fn friends() -> (Party, Party) {
    let (mut alice, mut bob) = (party(), party());
    know(&mut alice, "bob", &bob);
    know(&mut bob, "alice", &alice);
    (alice, bob)
}

fn party() -> Party {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::create(&dir.path().join("p").join("chat.db")).unwrap();
    let identity = Identity::generate();
    store.set_identity(&identity, false).unwrap();
    Party {
        engine: Engine::new(store, identity),
        _dir: dir,
    }
}

fn message_frames(frames: &[Frame]) -> Vec<MessageFrame> {
    frames
        .iter()
        .filter_map(|f| match f {
            Frame::Message(m) => Some(m.clone()),
            _ => None,
        })
        .collect()
}

fn router_ack(frame: &Frame) -> Frame {
    let Frame::Message(m) = frame else {
        panic!("not a message: {frame:?}")
    };
    Frame::Ack(Ack {
        id: m.id,
        at: Some(clock::now()),
    })
}

fn status(p: &Party, id: &MessageId) -> Status {
    p.engine.store().message(id).unwrap().unwrap().status
}

#[test]
fn a_message_goes_pending_sent_delivered_read_with_times_in_order() {
    let (mut alice, mut bob) = friends();
    let bob_key = *bob.engine.me();
    let alice_key = *alice.engine.me();

    let (msg, frame) = alice.engine.compose(&bob_key, "hello bob").unwrap();
    assert_eq!(msg.status, Status::Pending);
    assert_eq!(alice.engine.in_flight(), 1);

    // The router stores it and acks.
    let r = alice.engine.handle(vec![router_ack(&frame)]).unwrap();
    assert_eq!(status(&alice, &msg.msg_id), Status::Sent);
    assert!(matches!(&r.updates[..], [Update::Status(m)] if m.status == Status::Sent));
    assert_eq!(alice.engine.in_flight(), 0);

    // Bob stores it, then acks the router and sends a delivered receipt.
    let r = bob.engine.handle(vec![frame.clone()]).unwrap();
    assert!(matches!(&r.updates[..], [Update::Received(m)] if m.body == "hello bob"));
    assert!(matches!(r.send[0], Frame::Ack(Ack { id, at: None }) if id == msg.msg_id.uuid()));
    let receipts = message_frames(&r.send);
    assert_eq!(receipts.len(), 1);
    assert_eq!(bob.engine.store().pending_receipts().unwrap().len(), 1);
    // The router acks the receipt: it is forgotten.
    bob.engine
        .handle(vec![router_ack(&Frame::Message(receipts[0].clone()))])
        .unwrap();
    assert!(bob.engine.store().pending_receipts().unwrap().is_empty());

    let r = alice
        .engine
        .handle(vec![Frame::Message(receipts[0].clone())])
        .unwrap();
    assert_eq!(status(&alice, &msg.msg_id), Status::Delivered);
    assert_eq!(r.send.len(), 1, "the receipt is acked, and gets no receipt");

    // Bob shows the conversation: one read receipt, once.
    let read = bob.engine.mark_read(&alice_key, &[msg.msg_id]).unwrap();
    let read = to_key(&read, &alice_key);
    assert_eq!(read.len(), 1);
    assert!(bob
        .engine
        .mark_read(&alice_key, &[msg.msg_id])
        .unwrap()
        .is_empty());
    alice.engine.handle(read).unwrap();

    let m = alice.engine.store().message(&msg.msg_id).unwrap().unwrap();
    assert_eq!(m.status, Status::Read);
    let (sent, delivered, read) = (
        m.sent_at.unwrap(),
        m.delivered_at.unwrap(),
        m.read_at.unwrap(),
    );
    assert!(m.created_at <= sent && sent <= delivered && delivered <= read);
    let events: Vec<_> = alice
        .engine
        .store()
        .events(&msg.msg_id)
        .unwrap()
        .into_iter()
        .map(|e| e.status)
        .collect();
    assert_eq!(
        events,
        [
            Status::Pending,
            Status::Sent,
            Status::Delivered,
            Status::Read
        ]
    );
}

#[test]
fn a_duplicate_is_acked_again_and_stored_once() {
    let mut alice = party();
    let mut bob = party();
    let (msg, frame) = alice
        .engine
        .compose(&bob.engine.me().clone(), "once")
        .unwrap();
    bob.engine.handle(vec![frame.clone()]).unwrap();
    let r = bob.engine.handle(vec![frame]).unwrap();
    assert!(matches!(&r.send[..], [Frame::Ack(a)] if a.id == msg.msg_id.uuid()));
    assert!(r.updates.is_empty());
    assert_eq!(bob.engine.tally().received, 1);
    assert_eq!(bob.engine.tally().duplicates, 1);
    let count: i64 = bob
        .engine
        .store()
        .conn()
        .query_row("SELECT count(*) FROM messages", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1);
}

#[test]
fn a_forged_frame_is_rejected_recorded_and_acked() {
    let mut alice = party();
    let mut bob = party();
    let (_, frame) = alice
        .engine
        .compose(&bob.engine.me().clone(), "real")
        .unwrap();
    let Frame::Message(mut forged) = frame else {
        unreachable!()
    };
    forged.payload.ciphertext[0] ^= 1;
    let id = forged.id;
    let r = bob.engine.handle(vec![Frame::Message(forged)]).unwrap();
    assert!(matches!(&r.send[..], [Frame::Ack(a)] if a.id == id));
    assert!(matches!(&r.updates[..], [Update::Rejected { .. }]));
    let rejected = bob.engine.store().rejected().unwrap();
    assert_eq!(rejected.len(), 1);
    assert!(
        rejected[0].reason.contains("signature"),
        "{}",
        rejected[0].reason
    );
    assert!(bob.engine.store().pending_receipts().unwrap().is_empty());
}

#[test]
fn a_signed_frame_that_does_not_decrypt_is_rejected() {
    let mut alice = party();
    let mut bob = party();
    let (_, frame) = alice
        .engine
        .compose(&bob.engine.me().clone(), "for bob")
        .unwrap();
    let Frame::Message(mut m) = frame else {
        unreachable!()
    };
    // Alice signs garbage: the signature holds, the ciphertext does not.
    m.payload.ciphertext = vec![7; 40];
    let signed = protocol::message_signed_bytes(&m.id, &m.from, &m.to, &m.ts, &m.payload);
    m.sig = alice
        .engine
        .identity()
        .signing_key()
        .sign(&signed)
        .to_bytes();
    let r = bob.engine.handle(vec![Frame::Message(m)]).unwrap();
    assert!(matches!(&r.updates[..], [Update::Rejected { .. }]));
    assert_eq!(bob.engine.tally().rejected, 1);
    assert_eq!(r.send.len(), 1, "acked, and no receipt");
}

#[test]
fn a_frame_for_another_key_is_rejected() {
    let mut alice = party();
    let bob = party();
    let mut carol = party();
    let (_, frame) = alice
        .engine
        .compose(&bob.engine.me().clone(), "for bob")
        .unwrap();
    let r = carol.engine.handle(vec![frame]).unwrap();
    assert!(matches!(&r.updates[..], [Update::Rejected { .. }]));
}

#[test]
fn a_receipt_only_counts_from_the_messages_peer() {
    let mut alice = party();
    let bob = party();
    let mallory = party();
    let (msg, frame) = alice
        .engine
        .compose(&bob.engine.me().clone(), "hi")
        .unwrap();
    alice.engine.handle(vec![router_ack(&frame)]).unwrap();
    let fake = protocol::seal(
        mallory.engine.identity(),
        alice.engine.me(),
        Uuid::now_v7(),
        &clock::now(),
        &Content::Read {
            ids: vec![msg.msg_id.uuid()],
        },
    )
    .unwrap();
    alice.engine.handle(vec![Frame::Message(fake)]).unwrap();
    assert_eq!(status(&alice, &msg.msg_id), Status::Sent);
}

#[test]
fn messages_from_strangers_are_kept() {
    let mut alice = party();
    let mut stranger = party();
    let (_, frame) = stranger
        .engine
        .compose(&alice.engine.me().clone(), "who am I?")
        .unwrap();
    let r = alice.engine.handle(vec![frame]).unwrap();
    let [Update::Received(m)] = &r.updates[..] else {
        panic!("{:?}", r.updates)
    };
    let shown = m.msg_id;
    assert_eq!(m.contact, None);
    assert_eq!(m.peer_key, stranger.engine.me().to_base64());
    // No receipt tells a stranger that this key is in use.
    assert!(matches!(&r.send[..], [Frame::Ack(_)]), "{:?}", r.send);
    let read = alice
        .engine
        .mark_read(stranger.engine.me(), &[shown])
        .unwrap();
    assert!(all_to_self(&read), "only alice's other devices hear of it");
    assert!(alice.engine.store().pending_receipts().unwrap().is_empty());
}

#[test]
fn router_refusals_fail_the_message_or_schedule_a_retry() {
    let mut alice = party();
    let bob = party();
    let (msg, frame) = alice.engine.compose(&bob.engine.me().clone(), "x").unwrap();
    let Frame::Message(m) = &frame else {
        unreachable!()
    };
    let refuse = |code| {
        Frame::Error(ErrorFrame {
            id: Some(m.id),
            code,
            message: "no".into(),
        })
    };
    let r = alice
        .engine
        .handle(vec![refuse(ErrorCode::RateLimited)])
        .unwrap();
    assert!(r.retry);
    assert_eq!(status(&alice, &msg.msg_id), Status::Pending);
    assert_eq!(alice.engine.outbox_frames().unwrap().len(), 1, "sent again");

    alice
        .engine
        .handle(vec![refuse(ErrorCode::TooLarge)])
        .unwrap();
    let stored = alice.engine.store().message(&msg.msg_id).unwrap().unwrap();
    assert_eq!(stored.status, Status::Failed);
    assert!(stored.failure_reason.unwrap().contains("too-large"));
    assert!(alice.engine.outbox_frames().unwrap().is_empty());
}

#[test]
fn the_outbox_holds_pending_messages_and_receipts_until_acked() {
    let (mut alice, mut bob) = friends();
    let bob_key = *bob.engine.me();
    let (_, first) = alice.engine.compose(&bob_key, "one").unwrap();
    alice.engine.compose(&bob_key, "two").unwrap();
    // Nothing is repeated within a connection...
    assert!(alice.engine.outbox_frames().unwrap().is_empty());
    // ...and everything comes back after it is lost.
    alice.engine.connection_lost();
    assert_eq!(alice.engine.outbox_frames().unwrap().len(), 2);
    alice.engine.handle(vec![router_ack(&first)]).unwrap();
    alice.engine.connection_lost();
    let again = alice.engine.outbox_frames().unwrap();
    assert_eq!(to_key(&again, &bob_key).len(), 1);
    assert_eq!(again.len(), 2, "and the copy of the first one");

    bob.engine.handle(vec![first]).unwrap();
    bob.engine.connection_lost();
    let again = bob.engine.outbox_frames().unwrap();
    assert_eq!(
        message_frames(&again).len(),
        1,
        "the delivered receipt waits"
    );
}

#[test]
fn a_message_too_long_for_a_frame_is_refused_before_it_is_stored() {
    let mut alice = party();
    let bob = party();
    let body = "x".repeat(MAX_BODY_BYTES + 1);
    assert!(matches!(
        alice.engine.compose(bob.engine.me(), &body),
        Err(ClientError::TooLong { .. })
    ));
    // Control characters are counted as JSON escapes them.
    let escaped = "\u{1}".repeat(MAX_BODY_BYTES / 4);
    assert!(matches!(
        alice.engine.compose(bob.engine.me(), &escaped),
        Err(ClientError::TooLong { .. })
    ));
    assert!(alice.engine.store().outbox().unwrap().is_empty());
    // The longest accepted message fits in a frame the router takes.
    let (_, frame) = alice
        .engine
        .compose(bob.engine.me(), &"é".repeat(MAX_BODY_BYTES / 2))
        .unwrap();
    assert!(protocol::to_text(&frame).len() <= protocol::MAX_FRAME_BYTES);
}

#[test]
fn a_large_batch_is_stored_and_indexed_in_one_go() {
    let (mut alice, mut bob) = friends();
    let bob_key = *bob.engine.me();
    let frames: Vec<Frame> = (0..BULK_INDEX_MIN * 2)
        .map(|n| {
            alice
                .engine
                .compose(&bob_key, &format!("batch item {n}"))
                .unwrap()
                .1
        })
        .collect();
    let mut with_dup = frames.clone();
    with_dup.push(frames[0].clone());
    let r = bob.engine.handle(with_dup).unwrap();
    assert_eq!(bob.engine.tally().received, BULK_INDEX_MIN * 2);
    assert_eq!(bob.engine.tally().duplicates, 1);
    assert_eq!(
        message_frames(&r.send).len(),
        1,
        "one delivered receipt for all"
    );
    let hits = bob
        .engine
        .store()
        .search(
            "item",
            &crate::store::Filter::default(),
            crate::store::Order::Newest,
            100,
        )
        .unwrap();
    assert_eq!(hits.len(), BULK_INDEX_MIN * 2);
}

#[test]
fn one_forged_frame_in_a_large_batch_is_found_and_the_rest_kept() {
    let (mut alice, mut bob) = friends();
    let bob_key = *bob.engine.me();
    let mut frames: Vec<Frame> = (0..100)
        .map(|n| alice.engine.compose(&bob_key, &format!("n{n}")).unwrap().1)
        .collect();
    if let Frame::Message(m) = &mut frames[70] {
        m.sig[5] ^= 1;
    }
    let r = bob.engine.handle(frames).unwrap();
    assert_eq!(bob.engine.tally().received, 99);
    assert_eq!(bob.engine.tally().rejected, 1);
    let acks = r.send.iter().filter(|f| matches!(f, Frame::Ack(_))).count();
    assert_eq!(acks, 100, "the forged frame is acked too");
}

/// A large batch is verified, decrypted and parsed on two threads: what
/// comes out is in the frames' order, and a bad frame in either half is
/// rejected, recorded and acked without disturbing its neighbours.
#[test]
fn a_batch_opened_on_two_threads_keeps_its_order_and_finds_bad_frames() {
    let (mut alice, mut bob) = friends();
    let mut carol = party();
    let bob_key = *bob.engine.me();
    let mut frames: Vec<Frame> = (0..120)
        .map(|n| {
            // Two senders, interleaved: carol's key is derived in this batch.
            let from = if n % 3 == 0 { &mut carol } else { &mut alice };
            from.engine.compose(&bob_key, &format!("m{n}")).unwrap().1
        })
        .collect();
    // A bad signature in the first half, a signed frame that does not
    // decrypt in the second.
    if let Frame::Message(m) = &mut frames[10] {
        m.sig[5] ^= 1;
    }
    if let Frame::Message(m) = &mut frames[100] {
        m.payload.ciphertext = vec![7; 40];
        let signed = protocol::message_signed_bytes(&m.id, &m.from, &m.to, &m.ts, &m.payload);
        m.sig = alice
            .engine
            .identity()
            .signing_key()
            .sign(&signed)
            .to_bytes();
    }
    let ids: Vec<Uuid> = frames.iter().map(frame_id).collect();
    let r = bob.engine.handle(frames).unwrap();
    assert_eq!(acked(&r), ids, "every frame acked, in order");
    let received: Vec<String> = r
        .updates
        .iter()
        .filter_map(|u| match u {
            Update::Received(m) => Some(m.body.clone()),
            _ => None,
        })
        .collect();
    let expected: Vec<String> = (0..120)
        .filter(|n| *n != 10 && *n != 100)
        .map(|n| format!("m{n}"))
        .collect();
    assert_eq!(received, expected, "stored in the frames' order");
    assert_eq!(bob.engine.tally().rejected, 2);
    let mut rejected: Vec<String> = bob
        .engine
        .store()
        .rejected()
        .unwrap()
        .into_iter()
        .map(|r| r.reason)
        .collect();
    rejected.sort();
    assert_eq!(rejected.len(), 2);
    assert!(
        rejected.iter().any(|r| r.contains("signature")),
        "{rejected:?}"
    );
    assert!(
        rejected.iter().any(|r| !r.contains("signature")),
        "{rejected:?}"
    );
}

/// A frame whose signature fails leaves no key behind: a stranger cannot
/// fill the key cache with forged senders.
#[test]
fn a_forged_senders_key_is_not_kept() {
    let mut carol = party();
    let mut bob = party();
    let (_, frame) = carol
        .engine
        .compose(&bob.engine.me().clone(), "real")
        .unwrap();
    let Frame::Message(mut forged) = frame else {
        unreachable!()
    };
    forged.sig[0] ^= 1;
    bob.engine.handle(vec![Frame::Message(forged)]).unwrap();
    assert!(bob.engine.inbound_keys.is_empty());
    let (_, frame) = carol
        .engine
        .compose(&bob.engine.me().clone(), "real")
        .unwrap();
    bob.engine.handle(vec![frame]).unwrap();
    assert_eq!(bob.engine.inbound_keys.len(), 1);
    assert_eq!(bob.engine.tally().received, 1);
}

/// `sync` opens the next batch while the engine stores the previous one:
/// batches prepared before the earlier ones are handled keep their order,
/// share a new peer's key, and acks still follow each batch's commit.
#[test]
fn batches_prepared_ahead_are_stored_in_order_and_share_new_keys() {
    let (mut alice, mut bob) = friends();
    let mut carol = party();
    let bob_key = *bob.engine.me();
    let mut batches: Vec<Vec<Frame>> = Vec::new();
    for b in 0..3 {
        batches.push(
            (0..40)
                .map(|n| {
                    // carol is new to bob: her key is derived for the first
                    // two batches, both prepared before either is handled.
                    let from = if n % 2 == 0 { &mut carol } else { &mut alice };
                    from.engine
                        .compose(&bob_key, &format!("b{b} m{n}"))
                        .unwrap()
                        .1
                })
                .collect(),
        );
    }
    // A forged frame "from carol" in the last batch leaves her key alone.
    if let Frame::Message(m) = &mut batches[2][0] {
        m.sig[1] ^= 1;
    }
    let ids: Vec<Vec<Uuid>> = batches
        .iter()
        .map(|b| b.iter().map(frame_id).collect())
        .collect();
    let mut batches = batches.into_iter();
    let first = bob.engine.prepare(batches.next().unwrap()).open();
    let second = bob.engine.prepare(batches.next().unwrap()).open();
    let mut received = Vec::new();
    for (n, opened) in [first, second].into_iter().enumerate() {
        let r = bob.engine.handle_opened(opened).unwrap();
        assert_eq!(acked(&r), ids[n], "batch {n} acked whole, in order");
        received.extend(r.updates.iter().filter_map(|u| match u {
            Update::Received(m) => Some(m.body.clone()),
            _ => None,
        }));
    }
    assert_eq!(bob.engine.inbound_keys.len(), 2, "alice's and carol's");
    let third = bob.engine.prepare(batches.next().unwrap()).open();
    let r = bob.engine.handle_opened(third).unwrap();
    received.extend(r.updates.iter().filter_map(|u| match u {
        Update::Received(m) => Some(m.body.clone()),
        _ => None,
    }));
    let expected: Vec<String> = (0..3)
        .flat_map(|b| (0..40).map(move |n| format!("b{b} m{n}")))
        .filter(|m| m != "b2 m0")
        .collect();
    assert_eq!(received, expected, "stored in the order received");
    assert_eq!(bob.engine.tally().rejected, 1);
    assert_eq!(bob.engine.inbound_keys.len(), 2);
}

#[test]
fn a_long_outbox_goes_out_within_the_send_window() {
    let (mut alice, bob) = friends();
    let bob_key = *bob.engine.me();
    for n in 0..SEND_WINDOW + 10 {
        alice
            .engine
            .queue(&bob_key, &format!("queued {n}"))
            .unwrap();
    }
    let first = alice.engine.outbox_frames().unwrap();
    assert_eq!(first.len(), SEND_WINDOW);
    assert!(
        alice.engine.outbox_frames().unwrap().is_empty(),
        "window full"
    );
    // The router acks three: three more go out, oldest first.
    let acks: Vec<Frame> = first[..3].iter().map(router_ack).collect();
    alice.engine.handle(acks).unwrap();
    let more = message_frames(&alice.engine.outbox_frames().unwrap());
    assert_eq!(more.len(), 3);
    let body = |f: &MessageFrame| match protocol::open(bob.engine.identity(), f).unwrap() {
        Content::Text { body, .. } => body,
        other => panic!("{other:?}"),
    };
    assert_eq!(body(&more[0]), format!("queued {SEND_WINDOW}"));
    // Acking everything drains the outbox.
    let rest: Vec<Frame> = first[3..]
        .iter()
        .chain(
            more.iter()
                .map(|m| Frame::Message(m.clone()))
                .collect::<Vec<_>>()
                .iter(),
        )
        .map(router_ack)
        .collect();
    alice.engine.handle(rest).unwrap();
    let mut last = Vec::new();
    loop {
        let frames = alice.engine.outbox_frames().unwrap();
        if frames.is_empty() {
            break;
        }
        last.extend(to_key(&frames, &bob_key));
        alice
            .engine
            .handle(frames.iter().map(router_ack).collect())
            .unwrap();
    }
    assert_eq!(last.len(), 7);
    assert!(alice.engine.store().outbox().unwrap().is_empty());
}

#[test]
fn the_same_id_from_two_senders_is_two_messages() {
    let (mut alice, mut bob) = friends();
    let mallory = party();
    let bob_key = *bob.engine.me();
    let (msg, frame) = alice.engine.compose(&bob_key, "from alice").unwrap();
    // Mallory got there first with alice's id (she may pick any id).
    let forged = protocol::seal(
        &mallory.engine.identity,
        &bob_key,
        msg.msg_id.uuid(),
        &clock::now(),
        &Content::text("from mallory"),
    )
    .unwrap();
    bob.engine.handle(vec![Frame::Message(forged)]).unwrap();
    let r = bob.engine.handle(vec![frame]).unwrap();
    assert!(
        matches!(&r.updates[..], [Update::Received(m)] if m.body == "from alice"),
        "{:?}",
        r.updates
    );
    assert_eq!(bob.engine.tally().received, 2);
    assert_eq!(bob.engine.tally().duplicates, 0);
    let store = bob.engine.store();
    let from_alice = store.incoming(alice.engine.me(), &msg.msg_id).unwrap();
    assert_eq!(from_alice.unwrap().body, "from alice");
    let from_mallory = store.incoming(mallory.engine.me(), &msg.msg_id).unwrap();
    assert_eq!(from_mallory.unwrap().body, "from mallory");
    // Reading alice's conversation marks hers only; her read receipt
    // reaches alice's message.
    let receipts = bob
        .engine
        .mark_read(alice.engine.me(), &[msg.msg_id])
        .unwrap();
    let m = bob
        .engine
        .store()
        .incoming(mallory.engine.me(), &msg.msg_id);
    assert_eq!(m.unwrap().unwrap().status, Status::Received);
    alice.engine.handle(receipts).unwrap();
    assert_eq!(status(&alice, &msg.msg_id), Status::Read);
}

/// A router's refusal, for one of `frame`'s id or none.
fn refusal(id: Option<Uuid>, code: ErrorCode) -> Frame {
    Frame::Error(ErrorFrame {
        id,
        code,
        message: "refused".into(),
    })
}

/// The ids a reaction acknowledges, in order.
fn acked(reaction: &Reaction) -> Vec<Uuid> {
    reaction
        .send
        .iter()
        .filter_map(|f| match f {
            Frame::Ack(a) => Some(a.id),
            _ => None,
        })
        .collect()
}

fn frame_id(frame: &Frame) -> Uuid {
    let Frame::Message(m) = frame else {
        panic!("not a message: {frame:?}")
    };
    m.id
}

#[test]
fn only_the_messages_shown_are_read() {
    let (mut alice, mut bob) = friends();
    let bob_key = *bob.engine.me();
    let frames: Vec<Frame> = (0..30)
        .map(|n| alice.engine.compose(&bob_key, &format!("m{n}")).unwrap().1)
        .collect();
    bob.engine.handle(frames).unwrap();
    let recent: Vec<MessageId> = bob
        .engine
        .store()
        .recent(
            &crate::store::Filter {
                peer: Some(*alice.engine.me()),
                ..Default::default()
            },
            5,
        )
        .unwrap()
        .iter()
        .map(|m| m.msg_id)
        .collect();
    let receipts = bob.engine.mark_read(alice.engine.me(), &recent).unwrap();
    alice.engine.handle(receipts).unwrap();
    let read = |p: &Party, dir: &str| -> i64 {
        p.engine
            .store()
            .conn()
            .query_row(
                "SELECT count(*) FROM messages WHERE status = 'read' AND direction = ?1",
                [dir],
                |r| r.get(0),
            )
            .unwrap()
    };
    assert_eq!(read(&bob, "in"), 5, "bob read only what he saw");
    assert_eq!(read(&alice, "out"), 5, "alice hears of exactly those");
}

#[test]
fn a_delivered_and_a_read_receipt_in_one_batch_are_two_updates() {
    let (mut alice, mut bob) = friends();
    let (msg, frame) = alice
        .engine
        .compose(&bob.engine.me().clone(), "hi")
        .unwrap();
    alice.engine.handle(vec![router_ack(&frame)]).unwrap();
    let r = bob.engine.handle(vec![frame]).unwrap();
    let mut receipts: Vec<Frame> = r
        .send
        .into_iter()
        .filter(|f| matches!(f, Frame::Message(_)))
        .collect();
    let read = bob
        .engine
        .mark_read(alice.engine.me(), &[msg.msg_id])
        .unwrap();
    receipts.extend(to_key(&read, alice.engine.me()));
    let r = alice.engine.handle(receipts).unwrap();
    let statuses: Vec<Status> = r
        .updates
        .iter()
        .map(|u| match u {
            Update::Status(m) => m.status,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(statuses, [Status::Delivered, Status::Read]);
}

#[test]
fn rate_limited_frames_count_as_in_flight_until_acked() {
    let mut alice = party();
    let bob = party();
    let (_, frame) = alice.engine.compose(&bob.engine.me().clone(), "x").unwrap();
    let id = frame_id(&frame);
    let r = alice
        .engine
        .handle(vec![refusal(Some(id), ErrorCode::RateLimited)])
        .unwrap();
    assert!(r.retry);
    assert_eq!(alice.engine.in_flight(), 1, "still owed to the router");
    let again = alice.engine.outbox_frames().unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(alice.engine.in_flight(), 1);
    alice.engine.handle(vec![router_ack(&again[0])]).unwrap();
    assert_eq!(alice.engine.in_flight(), 0);
}

#[test]
fn a_refusal_without_an_id_fails_the_frame_no_ack_answers() {
    let mut alice = party();
    let bob_key = *party().engine.me();
    let (big, big_frame) = alice.engine.compose(&bob_key, "too big").unwrap();
    let (_, small_frame) = alice.engine.compose(&bob_key, "fine").unwrap();
    // The refusal comes first, without an id: which frame is not known yet.
    let r = alice
        .engine
        .handle(vec![refusal(None, ErrorCode::TooLarge)])
        .unwrap();
    assert!(r.updates.is_empty(), "{:?}", r.updates);
    assert_eq!(alice.engine.in_flight(), 2);
    // The other frame is acked: the refusal was about the one left.
    let r = alice.engine.handle(vec![router_ack(&small_frame)]).unwrap();
    assert_eq!(alice.engine.in_flight(), 0, "nothing holds back the outbox");
    let stored = alice.engine.store().message(&big.msg_id).unwrap().unwrap();
    assert_eq!(stored.status, Status::Failed);
    assert!(stored.failure_reason.unwrap().contains("too-large"));
    assert!(stored.failed_at.is_some());
    assert!(r
        .updates
        .iter()
        .any(|u| matches!(u, Update::Status(m) if m.status == Status::Failed)));
    // Only the copy of the one sent is left, for alice's other devices.
    let copy = alice.engine.outbox_frames().unwrap();
    assert!(copy.len() == 1 && all_to_self(&copy), "{copy:?}");
    let _ = big_frame;
}

#[test]
fn the_announced_frame_limit_refuses_before_storing_and_fails_what_waits() {
    let mut alice = party();
    let bob_key = *party().engine.me();
    let waiting = alice.engine.queue(&bob_key, &"x".repeat(3000)).unwrap();
    alice.engine.connection_lost();
    alice.engine.set_frame_limit(Some(2048));
    assert!(matches!(
        alice.engine.queue(&bob_key, &"y".repeat(3000)),
        Err(ClientError::FrameTooLarge { max: 2048, .. })
    ));
    assert_eq!(
        alice.engine.store().message_count().unwrap(),
        1,
        "not stored"
    );
    let small = alice.engine.queue(&bob_key, "small").unwrap();
    let frames = alice.engine.outbox_frames().unwrap();
    assert_eq!(frames.len(), 1, "only the small one goes out");
    assert_eq!(frame_id(&frames[0]), small.msg_id.uuid());
    let failed = alice
        .engine
        .store()
        .message(&waiting.msg_id)
        .unwrap()
        .unwrap();
    assert_eq!(failed.status, Status::Failed);
    assert!(failed.failure_reason.unwrap().contains("2048"));
    assert!(matches!(
        &alice.engine.take_updates()[..],
        [Update::Status(m)] if m.status == Status::Failed
    ));
}

#[test]
fn a_close_for_size_fails_the_largest_frame_in_flight() {
    let mut alice = party();
    let bob_key = *party().engine.me();
    let (_, _) = alice.engine.compose(&bob_key, "small").unwrap();
    let (big, _) = alice.engine.compose(&bob_key, &"z".repeat(9000)).unwrap();
    let updates = alice.engine.closed_for_size("frame larger").unwrap();
    assert!(matches!(&updates[..], [Update::Status(m)] if m.msg_id == big.msg_id));
    assert_eq!(status(&alice, &big.msg_id), Status::Failed);
    // Half the frame: base64 makes 9000 bytes of body about 12 kB.
    assert!((4500..7000).contains(&alice.engine.frame_limit()));
    assert_eq!(alice.engine.in_flight(), 0);
    assert_eq!(
        alice.engine.outbox_frames().unwrap().len(),
        1,
        "the small one"
    );
}

/// Alice (at home on router A) and Bob (at home on router B), each a
/// contact of the other at their router, both engines told their home.
fn on_two_routers() -> (Party, Party, ServerUrl, ServerUrl) {
    let (mut alice, mut bob) = friends();
    let a = ServerUrl::parse("ws://a.example").unwrap();
    let b = ServerUrl::parse("ws://b.example").unwrap();
    alice.engine.store.adopt_home(&a).unwrap();
    bob.engine.store.adopt_home(&b).unwrap();
    alice
        .engine
        .store
        .set_contact_router("bob", Some(&b))
        .unwrap();
    bob.engine
        .store
        .set_contact_router("alice", Some(&a))
        .unwrap();
    for p in [&mut alice, &mut bob] {
        p.engine
            .store
            .conn()
            .execute("DELETE FROM sync_outbox", [])
            .unwrap();
    }
    alice.engine.set_home(a.clone()).unwrap();
    bob.engine.set_home(b.clone()).unwrap();
    (alice, bob, a, b)
}

#[test]
fn frames_go_to_the_recipients_router_and_receipts_to_the_senders() {
    let (mut alice, mut bob, a, b) = on_two_routers();
    let bob_key = *bob.engine.me();
    let (msg, none) = alice.engine.write(&bob_key, "across").unwrap();
    assert!(none.is_none(), "not for the home router's connection");
    assert!(alice.engine.outbox_frames().unwrap().is_empty());
    let at_b = alice.engine.router_index_of(&b).unwrap();
    assert_eq!(alice.engine.routers_waiting().unwrap(), [at_b]);
    let frames = alice.engine.outbox_frames_to(at_b).unwrap();
    assert_eq!(message_frames(&frames).len(), 1);
    assert_eq!(alice.engine.in_flight_at(at_b), 1);
    assert!(alice.engine.outbox_frames_to(at_b).unwrap().is_empty());
    // The text carries alice's home, sealed.
    let Content::Text { home, .. } =
        protocol::open(bob.engine.identity(), &message_frames(&frames)[0]).unwrap()
    else {
        panic!("not a text");
    };
    assert_eq!(home.as_deref(), Some(a.as_str()));
    // A connection lost gives the frame back to the outbox.
    alice.engine.route_lost(at_b);
    assert_eq!(alice.engine.in_flight_at(at_b), 0);
    let frames = alice.engine.outbox_frames_to(at_b).unwrap();
    alice.engine.handle(vec![router_ack(&frames[0])]).unwrap();
    assert_eq!(status(&alice, &msg.msg_id), Status::Sent);
    // Bob takes it in at his home: the delivered receipt is not for his
    // home router's connection but for alice's router.
    let reaction = bob.engine.handle(frames).unwrap();
    assert!(
        message_frames(&reaction.send).is_empty(),
        "{:?}",
        reaction.send
    );
    let at_a = bob.engine.router_index_of(&a).unwrap();
    assert_eq!(bob.engine.routers_waiting().unwrap(), [at_a]);
    let receipts = bob.engine.outbox_frames_to(at_a).unwrap();
    assert_eq!(message_frames(&receipts).len(), 1);
    alice.engine.handle(receipts).unwrap();
    assert_eq!(status(&alice, &msg.msg_id), Status::Delivered);
}

#[test]
fn a_moved_contact_is_followed_from_the_home_in_their_text() {
    let (mut alice, mut bob, _a, _b) = on_two_routers();
    let c = ServerUrl::parse("ws://c.example").unwrap();
    alice.engine.store.move_home(&c).unwrap();
    alice.engine.set_home(c.clone()).unwrap();
    let bob_key = *bob.engine.me();
    let (_, frame) = alice.engine.compose(&bob_key, "I moved").unwrap();
    let reaction = bob.engine.handle(vec![frame]).unwrap();
    assert!(reaction
        .updates
        .iter()
        .any(|u| matches!(u, Update::Moved { router, .. } if *router == c)));
    assert_eq!(
        bob.engine.store().contact("alice").unwrap().router,
        Some(c.clone())
    );
    let at_c = bob.engine.router_index_of(&c).unwrap();
    assert_eq!(bob.engine.routers_waiting().unwrap(), [at_c]);
    // A home that is not a router URL is ignored; the message is kept.
    let alice_key = *alice.engine.me();
    let bad = protocol::seal(
        alice.engine.identity(),
        &bob_key,
        Uuid::now_v7(),
        &clock::now(),
        &Content::Text {
            body: "odd home".into(),
            home: Some("https://user:pw@evil.example".into()),
        },
    )
    .unwrap();
    let reaction = bob.engine.handle(vec![Frame::Message(bad)]).unwrap();
    assert!(reaction
        .updates
        .iter()
        .any(|u| matches!(u, Update::Received(m) if m.body == "odd home")));
    assert_eq!(bob.engine.store().contact("alice").unwrap().router, Some(c));
    assert_eq!(alice_key, *alice.engine.me());
}

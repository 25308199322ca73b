//! The client's protocol state over the profile database, with no sockets:
//! frames in, frames out, and updates for whoever shows them.
//!
//! The rules that make delivery safe live here:
//! - an outgoing message is stored `pending` before its frame exists;
//! - incoming messages are verified, decrypted and stored in one
//!   transaction, together with the delivered receipts they cause; only
//!   after that commit are the router's acks and the receipts sent;
//! - a duplicate is acknowledged again and stored once;
//! - a frame that fails verification or decryption is recorded as
//!   rejected and acknowledged, so it does not come back forever;
//! - a receipt changes a message only if it comes from that message's peer;
//! - this identity's other devices get a copy of every message the router
//!   accepted, every read and every contact change (see [`sync`]).

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::Transaction;
use uuid::Uuid;

use super::ClientError;
use crate::clock;
use crate::crypto::{self, MessageKey};
use crate::identity::{Identity, PublicKey};
use crate::protocol::{
    self, Ack, Content, ErrorCode, ErrorFrame, Frame, MessageFrame, MAX_FRAME_BYTES,
};
use crate::store::fts::FtsBatch;
use crate::store::messages::{
    apply_status_tx, insert_incoming_tx, mark_incoming_read_tx, message_tx,
};
use crate::store::receipts::{
    pending_receipts_tx, queue_receipts_tx, remove_receipt_tx, unread_from_tx, PendingReceipt,
    ReceiptKind,
};
use crate::store::rejected::record_rejected_tx;
use crate::store::sync::{
    any_early_tx, first_pending_sync_tx, queue_sync_tx, remove_sync_tx, SyncItem,
};
use crate::store::{self, Direction, Inserted, Message, MessageId, Status, Store};

/// The longest message body accepted, in bytes as JSON encodes it: sealed
/// and base64-encoded it stays below the router's 64 KiB frame limit.
pub const MAX_BODY_BYTES: usize = 32 * 1024;

/// At most this many outbox frames are in flight at once (below the
/// router's default burst of 100 frames a second per connection).
pub const SEND_WINDOW: usize = 64;

/// From this many text messages in one batch on, the full-text index is
/// filled once for the batch instead of row by row (see [`FtsBatch`]).
const BULK_INDEX_MIN: usize = 16;

/// Something the user should see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update {
    /// A new message arrived and is stored: from a peer, or (outgoing) a
    /// copy of one this identity sent from another device.
    Received(Message),
    /// An outgoing message changed status (sent, delivered, read, failed).
    Status(Message),
    /// A frame was refused and recorded as rejected.
    Rejected {
        /// The key it claimed to come from.
        from: PublicKey,
        /// Why.
        reason: String,
    },
    /// The router refused something temporarily; it will be sent again.
    Retrying {
        /// The router's code.
        code: ErrorCode,
        /// The router's explanation.
        message: String,
    },
    /// The router reported an error not tied to one of our frames.
    RouterError {
        /// The router's code.
        code: ErrorCode,
        /// The router's explanation.
        message: String,
    },
}

/// What the caller must do after the engine handled some frames.
#[derive(Debug, Default)]
pub struct Reaction {
    /// Frames to send to the router, in order.
    pub send: Vec<Frame>,
    /// Things to show.
    pub updates: Vec<Update>,
    /// A frame was refused for now: send the outbox again after a pause.
    pub retry: bool,
}

/// Counts for a one-line summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    /// Our messages the router accepted.
    pub sent: usize,
    /// New messages stored.
    pub received: usize,
    /// Messages that were already stored.
    pub duplicates: usize,
    /// Receipts applied to our messages.
    pub receipts: usize,
    /// Frames refused.
    pub rejected: usize,
    /// Our messages the router refused for good.
    pub failed: usize,
}

/// The client's state for one profile.
pub struct Engine {
    store: Store,
    identity: Identity,
    me: PublicKey,
    /// Keys for messages from each peer to us: one X25519 + HKDF per peer,
    /// not per message.
    inbound_keys: HashMap<PublicKey, MessageKey>,
    /// Keys for messages from us to each peer (and to our own key, for the
    /// other devices): derived once, as inbound ones.
    outbound_keys: HashMap<PublicKey, MessageKey>,
    /// Frames sent in this connection and not yet acknowledged by the
    /// router, with their length in bytes.
    in_flight: HashMap<Uuid, usize>,
    /// Frames the router refused for now (rate limit, storage trouble):
    /// still owed to it, and sent again by the next [`Engine::outbox_frames`].
    retrying: HashSet<Uuid>,
    /// Refusals that carried no id (older routers send `bad-frame` and
    /// `too-large` without one), received while frames were in flight. Each answers one of them; see [`Engine::settle_unattributed`].
    unattributed: Vec<ErrorFrame>,
    /// The largest frame the router accepts: announced in `ready`, or
    /// learned from a close for size.
    max_frame_bytes: usize,
    /// Changes decided outside [`Engine::handle`], for [`Engine::take_updates`].
    updates: Vec<Update>,
    /// Whether everything in the outbox is in flight, so topping up the
    /// send window needs no query.
    outbox_drained: bool,
    tally: Tally,
}

impl Engine {
    /// An engine over `store`, speaking as `identity`.
    pub fn new(store: Store, identity: Identity) -> Self {
        let me = identity.public_key();
        Self {
            store,
            identity,
            me,
            inbound_keys: HashMap::new(),
            outbound_keys: HashMap::new(),
            in_flight: HashMap::new(),
            retrying: HashSet::new(),
            unattributed: Vec::new(),
            max_frame_bytes: MAX_FRAME_BYTES,
            updates: Vec::new(),
            outbox_drained: false,
            tally: Tally::default(),
        }
    }

    /// This profile's device (created on first use), which the router
    /// session authenticates as.
    pub fn device(&self) -> Result<store::device::Device, ClientError> {
        Ok(self.store.device()?)
    }

    /// The profile database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This profile's identity.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// This profile's public key.
    pub fn me(&self) -> &PublicKey {
        &self.me
    }

    /// What happened so far.
    pub fn tally(&self) -> Tally {
        self.tally
    }

    /// How many frames await the router's acknowledgement, counting those
    /// it refused for now and that wait to be sent again.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len() + self.retrying.len()
    }

    /// Forgets what was in flight on a connection that is gone: it will be
    /// sent again from the database.
    pub fn connection_lost(&mut self) {
        self.in_flight.clear();
        self.retrying.clear();
        self.unattributed.clear();
        self.outbox_drained = false;
    }

    /// Takes the router's frame limit from its `ready` frame; a router that
    /// announces none keeps the limit assumed or learned so far.
    pub fn set_frame_limit(&mut self, announced: Option<usize>) {
        if let Some(max) = announced {
            self.max_frame_bytes = max;
        }
    }

    /// The largest frame the router is known to accept.
    pub fn frame_limit(&self) -> usize {
        self.max_frame_bytes
    }

    /// Says that another process may have stored messages or receipts to
    /// send: the next [`Engine::outbox_frames`] reads the outbox again
    /// instead of trusting that everything in it is in flight.
    pub fn outbox_changed(&mut self) {
        self.outbox_drained = false;
    }

    /// Changes decided while building frames (a pending message too large
    /// for the router, marked failed), for the screen.
    pub fn take_updates(&mut self) -> Vec<Update> {
        std::mem::take(&mut self.updates)
    }

    /// Stores a new message to `peer` as `pending`; the outbox sends it.
    pub fn queue(&mut self, peer: &PublicKey, body: &str) -> Result<Message, ClientError> {
        // Measured as it travels: JSON escapes control characters (up to
        // six bytes for one), and a frame must fit the router's limit.
        let len = serde_json::to_string(body).map_or(usize::MAX, |json| json.len() - 2);
        if len > MAX_BODY_BYTES {
            return Err(ClientError::TooLong {
                len,
                max: MAX_BODY_BYTES,
            });
        }
        // Under the default limit the body limit above is enough.
        if self.max_frame_bytes < MAX_FRAME_BYTES {
            let len = self.text_frame_len(peer, body)?;
            if len > self.max_frame_bytes {
                return Err(ClientError::FrameTooLarge {
                    len,
                    max: self.max_frame_bytes,
                });
            }
        }
        let message = self.store.insert_outgoing(peer, body)?;
        self.outbox_drained = false;
        Ok(message)
    }

    /// Stores a new message to `peer` as `pending` and returns it with its
    /// frame. The message is committed before the frame exists.
    pub fn compose(
        &mut self,
        peer: &PublicKey,
        body: &str,
    ) -> Result<(Message, Frame), ClientError> {
        let message = self.queue(peer, body)?;
        let frame = self.seal_text(&message)?;
        Ok((message, frame))
    }

    /// Frames for what waits in the outbox (pending messages, oldest first,
    /// then receipts, then what the other devices are to be told), as many
    /// as the send window has room for. Frames in
    /// flight are not repeated. Call it again as acks arrive: a long outbox
    /// goes out at the pace the router accepts it.
    pub fn outbox_frames(&mut self) -> Result<Vec<Frame>, ClientError> {
        let room = SEND_WINDOW.saturating_sub(self.in_flight.len());
        if room == 0 || self.outbox_drained {
            return Ok(Vec::new());
        }
        let mut frames = Vec::new();
        for message in self.store.outbox()? {
            if frames.len() == room {
                return Ok(frames);
            }
            let id = message.msg_id.uuid();
            if self.in_flight.contains_key(&id) {
                continue;
            }
            let frame = self.seal_text(&message)?;
            match self.in_flight.get(&id) {
                Some(&len) if len > self.max_frame_bytes => self.set_aside_oversized(id, len)?,
                _ => frames.push(frame),
            }
        }
        for receipt in pending_receipts_tx(self.store.conn())? {
            if frames.len() == room {
                return Ok(frames);
            }
            if !self.in_flight.contains_key(&receipt.receipt_id.uuid()) {
                frames.push(self.seal_receipt(&receipt)?);
            }
        }
        let wanted = room - frames.len() + self.in_flight.len();
        let items = first_pending_sync_tx(self.store.conn(), wanted)?;
        let more = items.len() == wanted;
        for item in items {
            if frames.len() == room {
                return Ok(frames);
            }
            if !self.in_flight.contains_key(&item.item_id.uuid()) {
                frames.extend(self.seal_sync(&item)?);
            }
        }
        if more {
            // Some were dropped as they were sealed: look again next time.
            return Ok(frames);
        }
        // Everything waiting is in flight now.
        self.outbox_drained = true;
        Ok(frames)
    }

    /// Marks the messages of `shown` that were received from `peer` and not
    /// yet read as read, and, if `peer` is a contact, queues a read receipt
    /// for them; the other devices are told to mark them read too (and not
    /// to send a receipt). Returns the frames. Only what was shown on
    /// screen is read: a message scrolled past unseen stays unread.
    pub fn mark_read(
        &mut self,
        peer: &PublicKey,
        shown: &[MessageId],
    ) -> Result<Vec<Frame>, ClientError> {
        if shown.is_empty() {
            return Ok(Vec::new());
        }
        let shown: HashSet<&MessageId> = shown.iter().collect();
        let is_contact = self.store.contact_by_key(peer)?.is_some();
        let tx = self.store.transaction()?;
        let mut unread = unread_from_tx(&tx, peer)?;
        unread.retain(|id| shown.contains(id));
        if unread.is_empty() {
            return Ok(Vec::new());
        }
        let now = clock::now();
        for id in &unread {
            mark_incoming_read_tx(&tx, peer, id, &now)?;
        }
        let receipts = if is_contact {
            queue_receipts_tx(&tx, peer, ReceiptKind::Read, &unread)?
        } else {
            Vec::new()
        };
        let read = SyncItem::Read {
            peer: *peer,
            msg_ids: unread,
        };
        let syncs = queue_sync_tx(&tx, &read, &now)?;
        tx.commit().map_err(store::Error::from)?;
        let mut frames = receipts
            .iter()
            .map(|r| self.seal_receipt(r))
            .collect::<Result<Vec<_>, _>>()?;
        for item in &syncs {
            frames.extend(self.seal_sync(item)?);
        }
        Ok(frames)
    }

    /// Handles frames from the router, in order.
    pub fn handle(&mut self, frames: Vec<Frame>) -> Result<Reaction, ClientError> {
        let mut reaction = Reaction::default();
        let mut messages = Vec::new();
        let mut acks = Vec::new();
        for frame in frames {
            match frame {
                Frame::Message(m) => messages.push(m),
                Frame::Ack(ack) => acks.push(ack),
                Frame::Error(e) => self.on_error(e, &mut reaction)?,
                // Handshake frames mid-session mean nothing to us.
                Frame::Challenge(_) | Frame::Auth(_) | Frame::Ready(_) | Frame::Synced => {}
                // Device lists are answers to requests the chat never makes.
                Frame::ListDevices
                | Frame::Devices(_)
                | Frame::RemoveDevice(_)
                | Frame::DeviceRemoved(_) => {}
            }
        }
        if !acks.is_empty() {
            self.on_acks(&acks, &mut reaction)?;
        }
        if !messages.is_empty() {
            self.on_messages(messages, &mut reaction)?;
        }
        self.settle_unattributed(&mut reaction)?;
        reaction.updates.append(&mut self.updates);
        Ok(reaction)
    }

    /// The router stored our frames: messages become `sent` (and a copy is
    /// queued for the other devices), receipts and sync items are
    /// forgotten. One transaction for all of them.
    fn on_acks(&mut self, acks: &[Ack], reaction: &mut Reaction) -> Result<(), ClientError> {
        let tx = self.store.transaction()?;
        let mut changed = Vec::new();
        let mut copies = false;
        for ack in acks {
            self.in_flight.remove(&ack.id);
            self.retrying.remove(&ack.id);
            let id = MessageId::from(ack.id);
            if remove_receipt_tx(&tx, &id)? || remove_sync_tx(&tx, &id)? {
                continue;
            }
            let Some(message) = message_tx(&tx, &id)? else {
                continue;
            };
            if message.direction != Direction::Out {
                continue;
            }
            let at = ack
                .at
                .as_deref()
                .and_then(clock::normalize)
                .unwrap_or_else(clock::now);
            let marked_sent = apply_status_tx(&tx, &id, Status::Sent, &at, None)?;
            if marked_sent {
                changed.push(id);
            }
            copies |= sync::copy_on_ack(&tx, &message, marked_sent, &at)?;
        }
        let updated = reload(&tx, &changed)?;
        tx.commit().map_err(store::Error::from)?;
        // Copies wait in the outbox now.
        self.outbox_drained &= !copies;
        self.tally.sent += updated.len();
        reaction
            .updates
            .extend(updated.into_iter().map(Update::Status));
        Ok(())
    }

    /// The router refused a frame of ours (or something else).
    fn on_error(&mut self, error: ErrorFrame, reaction: &mut Reaction) -> Result<(), ClientError> {
        let Some(id) = error.id else {
            if !self.in_flight.is_empty() && may_answer_a_frame(error.code) {
                // Matched to a frame once the others are acked.
                self.unattributed.push(error);
            } else {
                reaction.updates.push(Update::RouterError {
                    code: error.code,
                    message: error.message,
                });
            }
            return Ok(());
        };
        let ours = self.in_flight.remove(&id).is_some();
        if is_temporary(error.code) {
            // Still pending and still owed: the outbox sends it again
            // after a pause.
            if ours {
                self.retrying.insert(id);
            }
            self.outbox_drained = false;
            reaction.retry = true;
            reaction.updates.push(Update::Retrying {
                code: error.code,
                message: error.message,
            });
            return Ok(());
        }
        self.retrying.remove(&id);
        let reason = refusal_reason(&error);
        let updates = self.fail_frame(&MessageId::from(id), error.code, &reason)?;
        reaction.updates.extend(updates);
        Ok(())
    }

    /// Verifies, decrypts and stores a batch of messages in one transaction,
    /// then answers with acks and delivered receipts.
    fn on_messages(
        &mut self,
        frames: Vec<MessageFrame>,
        reaction: &mut Reaction,
    ) -> Result<(), ClientError> {
        // Crypto first, outside the transaction.
        let verified = verify_all(&frames);
        let opened: Vec<(MessageFrame, Result<Content, String>)> = frames
            .into_iter()
            .zip(verified)
            .map(|(f, verified)| {
                let content = verified
                    .and_then(|()| self.open_verified(&f))
                    .map_err(|e| e.to_string())
                    .and_then(|c| sync::check_sender(c, &f, &self.me));
                (f, content)
            })
            .collect();
        // Receipts go to contacts only: a stranger probing keys learns
        // nothing about whether this one is in use.
        let contacts: HashSet<PublicKey> =
            self.store.contacts()?.into_iter().map(|c| c.key).collect();
        let tx = self.store.transaction()?;
        // A backlog arrives in batches: index it once per batch, not per row.
        let texts = opened
            .iter()
            .filter(|(_, c)| matches!(c, Ok(Content::Text { .. } | Content::Sent { .. })))
            .count();
        let fts = if texts >= BULK_INDEX_MIN {
            Some(FtsBatch::begin(&tx)?)
        } else {
            None
        };
        // Reads from other devices that came before their message (maybe
        // earlier in this batch).
        let mut early = any_early_tx(&tx)?;
        let mut delivered: HashMap<PublicKey, Vec<MessageId>> = HashMap::new();
        // Each receipt's change as it happened: a delivered and a read
        // receipt in one batch are two updates, not the final state twice.
        let mut updated = Vec::new();
        for (frame, content) in &opened {
            let id = MessageId::from(frame.id);
            match content {
                Err(reason) => {
                    if record_rejected_tx(&tx, &id.to_text(), &frame.from.to_base64(), reason)? {
                        self.tally.rejected += 1;
                        reaction.updates.push(Update::Rejected {
                            from: frame.from,
                            reason: reason.clone(),
                        });
                    }
                }
                Ok(Content::Text { body }) => {
                    // The store normalizes the author's timestamp.
                    match insert_incoming_tx(&tx, &id, &frame.from, body, &frame.ts)? {
                        Inserted::New(message) => {
                            self.tally.received += 1;
                            if contacts.contains(&frame.from) {
                                delivered.entry(frame.from).or_default().push(id);
                            }
                            let message = if early {
                                sync::apply_early_read(&tx, &frame.from, *message)?
                            } else {
                                *message
                            };
                            reaction.updates.push(Update::Received(message));
                        }
                        Inserted::Duplicate => self.tally.duplicates += 1,
                    }
                }
                Ok(Content::Delivered { ids }) => {
                    updated.extend(apply_receipt(&tx, frame, ids, Status::Delivered)?);
                }
                Ok(Content::Read { ids }) => {
                    updated.extend(apply_receipt(&tx, frame, ids, Status::Read)?);
                }
                Ok(
                    content @ (Content::Sent { .. }
                    | Content::ReadSync { .. }
                    | Content::Contact { .. }),
                ) => {
                    early |= matches!(content, Content::ReadSync { .. });
                    reaction
                        .updates
                        .extend(sync::apply_sync(&tx, &self.me, frame, content)?);
                }
                // A kind from a newer version: acked below, nothing stored.
                Ok(Content::Unknown) => {}
            }
        }
        let mut receipts = Vec::new();
        for (peer, ids) in &delivered {
            receipts.extend(queue_receipts_tx(&tx, peer, ReceiptKind::Delivered, ids)?);
        }
        if let Some(fts) = fts {
            fts.finish(&tx)?;
        }
        tx.commit().map_err(store::Error::from)?;
        // Only now, with everything durable, tell the router and the peers.
        self.tally.receipts += updated.len();
        reaction
            .updates
            .extend(updated.into_iter().map(Update::Status));
        reaction.send.extend(
            opened
                .iter()
                .map(|(f, _)| Frame::Ack(Ack { id: f.id, at: None })),
        );
        for receipt in &receipts {
            reaction.send.push(self.seal_receipt(receipt)?);
        }
        Ok(())
    }

    /// Decrypts one message whose signature [`verify_all`] accepted.
    fn open_verified(&mut self, frame: &MessageFrame) -> Result<Content, protocol::ProtocolError> {
        if frame.to != self.me {
            return Err(protocol::ProtocolError::NotForMe);
        }
        let key = match self.inbound_keys.get(&frame.from) {
            Some(key) => key,
            None => {
                let key = crypto::message_key(&self.identity, &frame.from, &frame.from, &self.me)?;
                self.inbound_keys.entry(frame.from).or_insert(key)
            }
        };
        let ad = protocol::message_ad(&frame.id, &frame.from, &frame.to, &frame.ts);
        let plaintext = crypto::decrypt(key, &frame.payload.nonce, &ad, &frame.payload.ciphertext)?;
        serde_json::from_slice(&plaintext)
            .map_err(|e| protocol::ProtocolError::BadContent(e.to_string()))
    }

    fn seal_text(&mut self, message: &Message) -> Result<Frame, ClientError> {
        let peer =
            PublicKey::parse(&message.peer_key).map_err(|e| ClientError::Corrupt(e.to_string()))?;
        let content = Content::Text {
            body: message.body.clone(),
        };
        self.seal(&peer, message.msg_id, &message.created_at, &content)
    }

    fn seal_receipt(&mut self, receipt: &PendingReceipt) -> Result<Frame, ClientError> {
        let ids = receipt.msg_ids.iter().map(MessageId::uuid).collect();
        let content = match receipt.kind {
            ReceiptKind::Delivered => Content::Delivered { ids },
            ReceiptKind::Read => Content::Read { ids },
        };
        self.seal(
            &receipt.peer,
            receipt.receipt_id,
            &receipt.created_at,
            &content,
        )
    }

    fn seal(
        &mut self,
        to: &PublicKey,
        id: MessageId,
        ts: &str,
        content: &Content,
    ) -> Result<Frame, ClientError> {
        let key = match self.outbound_keys.entry(*to) {
            Entry::Occupied(key) => key.into_mut(),
            Entry::Vacant(slot) => {
                let key = crypto::message_key(&self.identity, to, &self.me, to)
                    .map_err(protocol::ProtocolError::from)?;
                slot.insert(key)
            }
        };
        let sealed = protocol::seal_keyed(&self.identity, key, to, id.uuid(), ts, content)?;
        let frame = Frame::Message(sealed);
        // Its length tells which frame a close for size was about.
        let len = protocol::to_text(&frame).len();
        self.in_flight.insert(id.uuid(), len);
        self.retrying.remove(&id.uuid());
        Ok(frame)
    }
}

/// Checks every frame's signature. Frames are checked in batches (ed25519
/// batch verification costs about half as much per signature), a large
/// batch split over two threads; only a batch that fails is checked frame
/// by frame, to find the bad ones.
fn verify_all(frames: &[MessageFrame]) -> Vec<Result<(), protocol::ProtocolError>> {
    const PARALLEL_MIN: usize = 64;
    if frames.len() < PARALLEL_MIN {
        return verify_chunk(frames);
    }
    let (first, second) = frames.split_at(frames.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| verify_chunk(second));
        let mut results = verify_chunk(first);
        match other.join() {
            Ok(rest) => results.extend(rest),
            // Verification does not panic; if it ever did, check here.
            Err(_) => results.extend(second.iter().map(protocol::verify_message)),
        }
        results
    })
}

fn verify_chunk(frames: &[MessageFrame]) -> Vec<Result<(), protocol::ProtocolError>> {
    let signed: Vec<Vec<u8>> = frames
        .iter()
        .map(|f| protocol::message_signed_bytes(&f.id, &f.from, &f.to, &f.ts, &f.payload))
        .collect();
    let messages: Vec<&[u8]> = signed.iter().map(Vec::as_slice).collect();
    let signatures: Vec<Signature> = frames
        .iter()
        .map(|f| Signature::from_bytes(&f.sig))
        .collect();
    let keys: Vec<VerifyingKey> = frames.iter().map(|f| *f.from.verifying_key()).collect();
    if frames.len() > 1 && ed25519_dalek::verify_batch(&messages, &signatures, &keys).is_ok() {
        return frames.iter().map(|_| Ok(())).collect();
    }
    frames.iter().map(protocol::verify_message).collect()
}

/// Applies a receipt from `frame.from` to our messages to that same peer;
/// ids of other conversations are ignored. Returns the messages changed,
/// each as it stands right after this receipt.
fn apply_receipt(
    tx: &Transaction<'_>,
    frame: &MessageFrame,
    ids: &[Uuid],
    status: Status,
) -> Result<Vec<Message>, ClientError> {
    let from = frame.from.to_base64();
    let at = clock::normalize(&frame.ts).unwrap_or_else(clock::now);
    let mut changed = Vec::new();
    for id in ids {
        let id = MessageId::from(*id);
        let Some(message) = message_tx(tx, &id)? else {
            // Sent from another device whose copy is still on its way?
            sync::keep_early_receipt(tx, &frame.from, &id, status, &at)?;
            continue;
        };
        if message.direction != Direction::Out || message.peer_key != from {
            continue;
        }
        let at = receipt_time(&message, at.clone());
        if apply_status_tx(tx, &id, status, &at, None)? {
            changed.extend(message_tx(tx, &id)?);
        }
    }
    Ok(changed)
}

/// The time to record for a receipt about `message` dated `at`: a receipt
/// cannot predate the router's acceptance, so a peer's clock running
/// behind must not put the timeline out of order.
fn receipt_time(message: &Message, at: String) -> String {
    match &message.sent_at {
        Some(sent) if *sent > at => sent.clone(),
        _ => at,
    }
}

fn reload(tx: &rusqlite::Connection, ids: &[MessageId]) -> Result<Vec<Message>, ClientError> {
    let mut messages = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(m) = message_tx(tx, id)? {
            messages.push(m);
        }
    }
    Ok(messages)
}

/// Error codes a router may send without an id about a frame of ours:
/// the frame could not be read far enough to find its id.
fn may_answer_a_frame(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::BadFrame | ErrorCode::TooLarge | ErrorCode::Unknown
    )
}

/// The `failure_reason` stored for a frame the router refused for good.
fn refusal_reason(error: &ErrorFrame) -> String {
    format!(
        "the router refused it ({}): {}",
        error.code.as_str(),
        error.message
    )
}

/// Errors after which the same frame should simply be sent again later.
fn is_temporary(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RateLimited
            | ErrorCode::Internal
            | ErrorCode::QuotaExceeded
            | ErrorCode::TooSlow
    )
}

mod refusals;
mod sync;
#[cfg(test)]
mod tests;

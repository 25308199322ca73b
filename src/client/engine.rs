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
use std::sync::Arc;

use ed25519_dalek::{Signature, VerifyingKey};
use rusqlite::Transaction;
use uuid::Uuid;

use super::{ClientError, ServerUrl};
use crate::clock;
use crate::crypto::{self, MessageKey};
use crate::identity::{Identity, PublicKey};
use crate::protocol::{
    self, Ack, Content, ErrorCode, ErrorFrame, Frame, MessageFrame, MAX_FRAME_BYTES,
};
use crate::store::fts::FtsBatch;
use crate::store::home::{
    note_announced_tx, pending_home_notices_tx, remove_home_notice_tx, Announced, HomeNotice,
};
use crate::store::messages::{
    apply_status_tx, insert_incoming_at_tx, mark_incoming_read_tx, message_tx, outbox_after_tx,
    Incoming,
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
    /// A peer's home router changed (they moved, or told it for the first
    /// time): messages to them go there now. `peer` is this identity's own
    /// key when another of its devices moved the home.
    Moved {
        /// Whose.
        peer: PublicKey,
        /// Where they receive now.
        router: ServerUrl,
    },
    /// A connection to a contact's router (to deliver to them) failed, or
    /// came back (`problem` is `None`).
    Link {
        /// The router.
        router: ServerUrl,
        /// What went wrong, if something did.
        problem: Option<String>,
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
    /// not per message. Shared with batches being opened on other threads
    /// ([`Engine::prepare`]).
    inbound_keys: HashMap<PublicKey, Arc<MessageKey>>,
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
    /// Routers, each with its own send window, whose outbox items are all
    /// in flight, so topping up their window needs no query.
    drained: HashSet<usize>,
    /// Where frames go: [`HOME`] (index 0) is the router this session
    /// receives at; the others are contacts' home routers, each reached
    /// through its own connection (see [`super::courier`]).
    routers: Vec<ServerUrl>,
    /// Contacts whose home router is not [`HOME`], by key: an index into
    /// `routers`.
    routes: HashMap<String, usize>,
    /// In-flight frames sent to a router other than [`HOME`], and where.
    away: HashMap<Uuid, usize>,
    /// Per router: the local row id of the last pending message looked at
    /// since the outbox last changed. Messages up to it are in flight or
    /// go elsewhere, so topping up a window reads on from there: a long
    /// outbox is read once per router, not once per batch of acks.
    scanned: HashMap<usize, i64>,
    /// Routers other than [`HOME`] that may have frames waiting, once
    /// known (`None` after the outbox changed: look again).
    waiting: Option<HashSet<usize>>,
    /// The home router announced inside every text (this profile's
    /// recorded home), so replies and receipts find it.
    announced_home: Option<String>,
    /// The last router each peer announced, so a batch of their texts
    /// costs one look at the contact, not one per text.
    heard_homes: HashMap<PublicKey, String>,
    tally: Tally,
}

/// The index of the session's own router in the engine's routers.
pub const HOME: usize = 0;

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
            drained: HashSet::new(),
            routers: vec![ServerUrl::default_router()],
            routes: HashMap::new(),
            away: HashMap::new(),
            scanned: HashMap::new(),
            waiting: None,
            announced_home: None,
            heard_homes: HashMap::new(),
            tally: Tally::default(),
        }
    }

    /// Says which router this session receives at (`home`): frames for
    /// contacts on "the same router as mine", receipts to them and copies
    /// for the other devices go there; every other contact's go to their
    /// own router. Loads the contacts' routers and this profile's recorded
    /// home (announced in texts; `home` if none is recorded).
    pub fn set_home(&mut self, home: ServerUrl) -> Result<(), ClientError> {
        self.routers = vec![home];
        self.announced_home = Some(
            self.store
                .home_router()?
                .unwrap_or_else(|| self.routers[HOME].clone())
                .as_str()
                .to_owned(),
        );
        self.reload_routes()
    }

    /// Forgets the previous home router once it has been emptied.
    pub fn forget_previous_home(&mut self, previous: &ServerUrl) -> Result<(), ClientError> {
        Ok(self.store.forget_previous_home(previous)?)
    }

    /// The router this session receives at.
    pub fn home(&self) -> &ServerUrl {
        &self.routers[HOME]
    }

    /// The home router announced in texts.
    pub(crate) fn home_announced(&self) -> Option<&str> {
        self.announced_home.as_deref()
    }

    /// Reads the contacts' routers again (after a contact changed).
    pub fn reload_routes(&mut self) -> Result<(), ClientError> {
        let mut routes = HashMap::new();
        for contact in self.store.contacts()? {
            if let Some(router) = contact.router {
                let index = self.router_index(router);
                if index != HOME {
                    routes.insert(contact.key.to_base64(), index);
                }
            }
        }
        self.routes = routes;
        self.touch();
        Ok(())
    }

    /// `router`'s index in `routers`, added if new.
    fn router_index(&mut self, router: ServerUrl) -> usize {
        match self.routers.iter().position(|r| *r == router) {
            Some(index) => index,
            None => {
                self.routers.push(router);
                self.routers.len() - 1
            }
        }
    }

    /// The router frames to `peer` go to (an index into `routers`).
    fn route_of(&self, peer: &PublicKey) -> usize {
        if self.routes.is_empty() {
            return HOME;
        }
        self.route_of_text(&peer.to_base64())
    }

    /// [`Engine::route_of`] for a key as stored (base64).
    fn route_of_text(&self, peer: &str) -> usize {
        self.routes.get(peer).copied().unwrap_or(HOME)
    }

    /// The router with this index.
    pub fn router(&self, index: usize) -> Option<&ServerUrl> {
        self.routers.get(index)
    }

    /// The index of `router`, if frames ever went or go there.
    pub fn router_index_of(&self, router: &ServerUrl) -> Option<usize> {
        self.routers.iter().position(|r| r == router)
    }

    /// Other routers than [`HOME`] that have outbox items not in flight
    /// (to be reached through their own connections), by index.
    pub fn routers_waiting(&mut self) -> Result<Vec<usize>, ClientError> {
        if let Some(waiting) = &self.waiting {
            let mut waiting: Vec<usize> = waiting.iter().copied().collect();
            waiting.sort_unstable();
            return Ok(waiting);
        }
        if self.routes.is_empty() && !self.any_home_notice()? {
            self.waiting = Some(HashSet::new());
            return Ok(Vec::new());
        }
        let mut waiting = HashSet::new();
        for message in self.store.outbox()? {
            let route = self.route_of_text(&message.peer_key);
            if route != HOME && !self.in_flight.contains_key(&message.msg_id.uuid()) {
                waiting.insert(route);
            }
        }
        for receipt in pending_receipts_tx(self.store.conn())? {
            let route = self.route_of(&receipt.peer);
            if route != HOME && !self.in_flight.contains_key(&receipt.receipt_id.uuid()) {
                waiting.insert(route);
            }
        }
        for notice in pending_home_notices_tx(self.store.conn())? {
            let route = self.router_index(notice.deliver_to.clone());
            if route != HOME && !self.in_flight.contains_key(&notice.item_id.uuid()) {
                waiting.insert(route);
            }
        }
        self.waiting = Some(waiting.clone());
        let mut waiting: Vec<usize> = waiting.into_iter().collect();
        waiting.sort_unstable();
        Ok(waiting)
    }

    fn any_home_notice(&self) -> Result<bool, ClientError> {
        Ok(!pending_home_notices_tx(self.store.conn())?.is_empty())
    }

    /// How many frames sent to router `index` await its acknowledgement.
    pub fn in_flight_at(&self, index: usize) -> usize {
        if index == HOME {
            self.in_flight.len() - self.away.len()
        } else {
            self.away.values().filter(|&&r| r == index).count()
        }
    }

    /// Forgets what was in flight to router `index` (not [`HOME`]) on a
    /// connection that is gone: it is sent again from the database.
    pub fn route_lost(&mut self, index: usize) {
        let lost: Vec<Uuid> = self
            .away
            .iter()
            .filter(|(_, &r)| r == index)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.away.remove(&id);
            self.in_flight.remove(&id);
            self.retrying.remove(&id);
        }
        self.touch();
    }

    /// Something may wait to be sent that was not before.
    fn touch(&mut self) {
        self.drained.clear();
        self.scanned.clear();
        self.waiting = None;
    }

    /// Something for router `route` waits to be sent again.
    fn touch_route(&mut self, route: usize) {
        self.drained.remove(&route);
        self.scanned.remove(&route);
        if route != HOME {
            if let Some(waiting) = &mut self.waiting {
                waiting.insert(route);
            }
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
        let away = &self.away;
        self.in_flight.retain(|id, _| away.contains_key(id));
        self.retrying.retain(|id| away.contains_key(id));
        self.unattributed.clear();
        self.touch();
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
        self.touch();
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
        self.touch();
        Ok(message)
    }

    /// Stores a new message to `peer` as `pending` and returns it with its
    /// frame. The message is committed before the frame exists. The frame
    /// is for `peer`'s router: see [`Engine::write`] for a connection to
    /// the home router only.
    pub fn compose(
        &mut self,
        peer: &PublicKey,
        body: &str,
    ) -> Result<(Message, Frame), ClientError> {
        let message = self.queue(peer, body)?;
        let frame = self.seal_text(&message)?;
        Ok((message, frame))
    }

    /// [`Engine::compose`] for the home router's connection: a message to
    /// a contact on another router gets no frame here, and waits in the
    /// outbox for that router's connection (see [`super::courier`]).
    pub fn write(
        &mut self,
        peer: &PublicKey,
        body: &str,
    ) -> Result<(Message, Option<Frame>), ClientError> {
        match self.route_of(peer) {
            HOME => {
                let (message, frame) = self.compose(peer, body)?;
                Ok((message, Some(frame)))
            }
            other => {
                let message = self.queue(peer, body)?;
                self.touch_route(other);
                Ok((message, None))
            }
        }
    }

    /// Frames for what waits in the outbox (pending messages, oldest first,
    /// then receipts, then what the other devices are to be told), as many
    /// as the send window has room for. Frames in
    /// flight are not repeated. Call it again as acks arrive: a long outbox
    /// goes out at the pace the router accepts it.
    pub fn outbox_frames(&mut self) -> Result<Vec<Frame>, ClientError> {
        self.outbox_frames_to(HOME)
    }

    /// [`Engine::outbox_frames`] for the router with index `route`: what
    /// waits for it, within its own send window. A router that cannot be
    /// reached holds back only what goes to it.
    pub fn outbox_frames_to(&mut self, route: usize) -> Result<Vec<Frame>, ClientError> {
        let room = SEND_WINDOW.saturating_sub(self.in_flight_at(route));
        if room == 0 || self.drained.contains(&route) {
            return Ok(Vec::new());
        }
        let mut frames = Vec::new();
        const PAGE: usize = 256;
        loop {
            let after = self.scanned.get(&route).copied().unwrap_or(0);
            let page = outbox_after_tx(self.store.conn(), after, PAGE)?;
            let full = page.len() == PAGE;
            for message in page {
                if frames.len() == room {
                    return Ok(frames);
                }
                self.scanned.insert(route, message.id);
                let id = message.msg_id.uuid();
                if self.in_flight.contains_key(&id)
                    || self.route_of_text(&message.peer_key) != route
                {
                    continue;
                }
                let frame = self.seal_text(&message)?;
                match self.in_flight.get(&id) {
                    Some(&len) if len > self.max_frame_bytes => {
                        self.set_aside_oversized(id, len)?;
                    }
                    _ => frames.push(frame),
                }
            }
            if !full {
                break;
            }
        }
        for receipt in pending_receipts_tx(self.store.conn())? {
            if frames.len() == room {
                return Ok(frames);
            }
            if !self.in_flight.contains_key(&receipt.receipt_id.uuid())
                && self.route_of(&receipt.peer) == route
            {
                frames.push(self.seal_receipt(&receipt)?);
            }
        }
        for notice in pending_home_notices_tx(self.store.conn())? {
            if frames.len() == room {
                return Ok(frames);
            }
            if !self.in_flight.contains_key(&notice.item_id.uuid())
                && self.router_index(notice.deliver_to.clone()) == route
            {
                frames.push(self.seal_home_notice(&notice, route)?);
            }
        }
        if route != HOME {
            self.drained.insert(route);
            if let Some(waiting) = &mut self.waiting {
                waiting.remove(&route);
            }
            return Ok(frames);
        }
        // What the other devices are told goes to this identity's router.
        let wanted = room - frames.len() + self.in_flight_at(HOME);
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
        // Everything waiting for this router is in flight now.
        self.drained.insert(route);
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
        let mut frames = Vec::new();
        for receipt in &receipts {
            // One for another router waits for the courier.
            match self.route_of(&receipt.peer) {
                HOME => frames.push(self.seal_receipt(receipt)?),
                other => self.touch_route(other),
            }
        }
        for item in &syncs {
            frames.extend(self.seal_sync(item)?);
        }
        Ok(frames)
    }

    /// Handles frames from the router, in order.
    pub fn handle(&mut self, frames: Vec<Frame>) -> Result<Reaction, ClientError> {
        let opened = self.prepare(frames).open();
        self.handle_opened(opened)
    }

    /// The first half of [`Engine::handle`]: sorts `frames` and takes the
    /// keys their messages need (deriving those of new peers), so that
    /// [`Prepared::open`] can verify, decrypt and parse them on other
    /// threads while this engine stores the previous batch. Batches must be
    /// handed to [`Engine::handle_opened`] in the order they were prepared.
    pub fn prepare(&self, frames: Vec<Frame>) -> Prepared {
        let mut messages = Vec::new();
        let mut others = Vec::new();
        for frame in frames {
            match frame {
                Frame::Message(m) => messages.push(m),
                other => others.push(other),
            }
        }
        let mut keys: HashMap<PublicKey, Result<Arc<MessageKey>, String>> = HashMap::new();
        let mut fresh = HashSet::new();
        for frame in &messages {
            if frame.to != self.me || keys.contains_key(&frame.from) {
                continue;
            }
            let key = match self.inbound_keys.get(&frame.from) {
                Some(key) => Ok(Arc::clone(key)),
                None => {
                    fresh.insert(frame.from);
                    crypto::message_key(&self.identity, &frame.from, &frame.from, &self.me)
                        .map(Arc::new)
                        .map_err(|e| protocol::ProtocolError::from(e).to_string())
                }
            };
            keys.insert(frame.from, key);
        }
        Prepared {
            others,
            messages,
            keys: Keys { me: self.me, keys },
            fresh,
        }
    }

    /// The second half of [`Engine::handle`]: applies a batch that
    /// [`Prepared::open`] opened.
    pub fn handle_opened(&mut self, batch: OpenedBatch) -> Result<Reaction, ClientError> {
        let OpenedBatch {
            others,
            messages,
            results,
            mut keys,
            fresh,
        } = batch;
        let mut reaction = Reaction::default();
        let mut acks = Vec::new();
        for frame in others {
            match frame {
                Frame::Ack(ack) => acks.push(ack),
                Frame::Error(e) => self.on_error(e, &mut reaction)?,
                // Sorted out by `prepare`.
                Frame::Message(_) => {}
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
            // A key derived for this batch is kept only for a peer whose
            // signature checked out: a forged sender leaves nothing behind.
            let mut contents = Vec::with_capacity(results.len());
            for (frame, (verified, content)) in messages.iter().zip(results) {
                if verified && fresh.contains(&frame.from) {
                    if let Some(Ok(key)) = keys.keys.remove(&frame.from) {
                        self.inbound_keys.insert(frame.from, key);
                    }
                }
                contents.push(content);
            }
            self.on_messages(messages, contents, &mut reaction)?;
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
            self.away.remove(&ack.id);
            if remove_receipt_tx(&tx, &id)?
                || remove_sync_tx(&tx, &id)?
                || remove_home_notice_tx(&tx, &id)?
            {
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
        if copies {
            // Copies are read from their own table: the messages read so
            // far need no second look.
            self.drained.remove(&HOME);
        }
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
        let route = self.away.remove(&id).unwrap_or(HOME);
        if is_temporary(error.code) {
            // Still pending and still owed: the outbox sends it again
            // after a pause.
            if ours {
                self.retrying.insert(id);
            }
            self.touch_route(route);
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

    /// Stores a batch of opened messages (see [`Engine::prepare`]) in one
    /// transaction, then answers with acks and delivered receipts.
    fn on_messages(
        &mut self,
        frames: Vec<MessageFrame>,
        contents: Vec<Opened>,
        reaction: &mut Reaction,
    ) -> Result<(), ClientError> {
        let opened: Vec<(MessageFrame, Opened)> = frames.into_iter().zip(contents).collect();
        // Receipts go to contacts only: a stranger probing keys learns
        // nothing about whether this one is in use.
        let contacts: HashMap<PublicKey, String> = self
            .store
            .contacts()?
            .into_iter()
            .map(|c| (c.key, c.name))
            .collect();
        let tx = self.store.transaction()?;
        // One time of storing for the whole transaction.
        let now = clock::now();
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
                Ok(Content::Text { body, home }) => {
                    if let Some(home) = home {
                        Self::heard_home(
                            &mut self.heard_homes,
                            &self.me,
                            &tx,
                            (&frame.from, home),
                            &mut reaction.updates,
                        )?;
                    }
                    // The store normalizes the author's timestamp.
                    let incoming = Incoming {
                        msg_id: &id,
                        peer: &frame.from,
                        contact: contacts.get(&frame.from).map(String::as_str),
                        body,
                        created_at: &frame.ts,
                    };
                    match insert_incoming_at_tx(&tx, &incoming, &now)? {
                        Inserted::New(message) => {
                            self.tally.received += 1;
                            if contacts.contains_key(&frame.from) {
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
                Ok(Content::Home { router }) => {
                    Self::heard_home(
                        &mut self.heard_homes,
                        &self.me,
                        &tx,
                        (&frame.from, router),
                        &mut reaction.updates,
                    )?;
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
        if reaction
            .updates
            .iter()
            .any(|u| matches!(u, Update::Moved { .. }))
        {
            self.reload_routes()?;
        }
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
            // One for another router waits for the courier.
            match self.route_of(&receipt.peer) {
                HOME => reaction.send.push(self.seal_receipt(receipt)?),
                other => self.touch_route(other),
            }
        }
        Ok(())
    }

    /// Takes note of the home router `from` announced (in a text or a
    /// notice), once per peer and router: a contact's entry follows it.
    /// A router URL that is not acceptable is ignored, the message kept.
    fn heard_home(
        heard: &mut HashMap<PublicKey, String>,
        me: &PublicKey,
        tx: &Transaction<'_>,
        (from, router): (&PublicKey, &str),
        updates: &mut Vec<Update>,
    ) -> Result<(), ClientError> {
        if heard.get(from).map(String::as_str) == Some(router) {
            return Ok(());
        }
        heard.insert(*from, router.to_owned());
        let Ok(url) = crate::address::Address::parse_router(router) else {
            return Ok(());
        };
        match note_announced_tx(tx, me, from, &url)? {
            Announced::Contact(contact) => updates.push(Update::Moved {
                peer: contact.key,
                router: url,
            }),
            Announced::OwnHome(router) => updates.push(Update::Moved { peer: *me, router }),
            Announced::Quiet => {}
        }
        Ok(())
    }

    fn seal_text(&mut self, message: &Message) -> Result<Frame, ClientError> {
        let peer =
            PublicKey::parse(&message.peer_key).map_err(|e| ClientError::Corrupt(e.to_string()))?;
        let content = Content::Text {
            body: message.body.clone(),
            home: self.announced_home.clone(),
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
        let route = if *to == self.me {
            HOME
        } else {
            self.route_of(to)
        };
        if route == HOME {
            self.away.remove(&id.uuid());
        } else {
            self.away.insert(id.uuid(), route);
        }
        Ok(frame)
    }

    /// Seals a "home moved" notice; it goes to the router with index
    /// `route` whoever it is for.
    fn seal_home_notice(
        &mut self,
        notice: &HomeNotice,
        route: usize,
    ) -> Result<Frame, ClientError> {
        let content = Content::Home {
            router: notice.home.as_str().to_owned(),
        };
        let frame = self.seal(&notice.peer, notice.item_id, &notice.created_at, &content)?;
        let id = notice.item_id.uuid();
        if route == HOME {
            self.away.remove(&id);
        } else {
            self.away.insert(id, route);
        }
        Ok(frame)
    }
}

/// What a frame holds once checked: its content, or why it was refused.
type Opened = Result<Content, String>;

/// The message keys a batch's messages need, by sender: cached ones, and
/// those derived for this batch (or why a peer's key could not be
/// derived).
#[derive(Debug)]
struct Keys {
    me: PublicKey,
    keys: HashMap<PublicKey, Result<Arc<MessageKey>, String>>,
}

/// A batch of frames from the router whose messages are not opened yet
/// (see [`Engine::prepare`]). Owns all it needs, so it can move to another
/// thread.
#[derive(Debug)]
pub struct Prepared {
    others: Vec<Frame>,
    messages: Vec<MessageFrame>,
    keys: Keys,
    fresh: HashSet<PublicKey>,
}

impl Prepared {
    /// How many messages the batch holds.
    pub fn messages(&self) -> usize {
        self.messages.len()
    }

    /// Verifies, decrypts and parses every message, in order: a large
    /// batch split over two threads. Touches no database.
    pub fn open(self) -> OpenedBatch {
        let keys = &self.keys;
        let results = in_parallel(&self.messages, |chunk| open_chunk(chunk, keys));
        OpenedBatch {
            others: self.others,
            messages: self.messages,
            results,
            keys: self.keys,
            fresh: self.fresh,
        }
    }
}

/// A batch whose messages [`Prepared::open`] opened, for
/// [`Engine::handle_opened`].
#[derive(Debug)]
pub struct OpenedBatch {
    others: Vec<Frame>,
    messages: Vec<MessageFrame>,
    /// Per message: whether its signature checked out, and its content or
    /// why it was refused.
    results: Vec<(bool, Opened)>,
    keys: Keys,
    fresh: HashSet<PublicKey>,
}

/// Runs `work` over `frames`, split in two halves on two threads when
/// there are enough of them to pay for the thread; results in order.
fn in_parallel<T: Send>(
    frames: &[MessageFrame],
    work: impl Fn(&[MessageFrame]) -> Vec<T> + Sync,
) -> Vec<T> {
    const PARALLEL_MIN: usize = 64;
    if frames.len() < PARALLEL_MIN {
        return work(frames);
    }
    let (first, second) = frames.split_at(frames.len() / 2);
    std::thread::scope(|scope| {
        let other = scope.spawn(|| work(second));
        let mut results = work(first);
        match other.join() {
            Ok(rest) => results.extend(rest),
            // The work does not panic; if it ever did, do it here.
            Err(_) => results.extend(work(second)),
        }
        results
    })
}

/// Checks the signatures of `frames` (see [`verify_chunk`]), then decrypts
/// and parses those that passed. For each frame: whether its signature
/// checked out, and its content or why it was refused.
fn open_chunk(frames: &[MessageFrame], keys: &Keys) -> Vec<(bool, Opened)> {
    verify_chunk(frames)
        .into_iter()
        .zip(frames)
        .map(|(verified, frame)| match verified {
            Err(e) => (false, Err(e.to_string())),
            Ok(()) => (
                true,
                open_verified(frame, keys).and_then(|c| sync::check_sender(c, frame, &keys.me)),
            ),
        })
        .collect()
}

/// Decrypts one message whose signature [`verify_chunk`] accepted.
fn open_verified(frame: &MessageFrame, keys: &Keys) -> Opened {
    if frame.to != keys.me {
        return Err(protocol::ProtocolError::NotForMe.to_string());
    }
    let key = match keys.keys.get(&frame.from) {
        Some(Ok(key)) => key,
        Some(Err(e)) => return Err(e.clone()),
        None => return Err(protocol::ProtocolError::NotForMe.to_string()),
    };
    let ad = protocol::message_ad(&frame.id, &frame.from, &frame.to, &frame.ts);
    let plaintext = crypto::decrypt(key, &frame.payload.nonce, &ad, &frame.payload.ciphertext)
        .map_err(|e| protocol::ProtocolError::from(e).to_string())?;
    serde_json::from_slice(&plaintext)
        .map_err(|e| protocol::ProtocolError::BadContent(e.to_string()).to_string())
}

/// Checks every frame's signature with ed25519 batch verification (about
/// half the cost per signature); only a batch that fails is checked frame
/// by frame, to find the bad ones.
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

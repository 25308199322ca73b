//! One identity on several devices: what a device tells the others, and
//! what it does with what they tell it.
//!
//! Everything travels as ordinary sealed `message` frames from the own key
//! to the own key (the router delivers them to the identity's other
//! devices, not back to the sender), so the router reads none of it and
//! cannot tell one kind from another, and they wait in the `sync_outbox`
//! table until the router has them (see [`crate::store::sync`]). Only the own key may send them: the
//! same kinds signed by any other key are refused and recorded as rejected.
//!
//! - **Sent messages.** When the router acknowledges a text message, the
//!   transaction that marks it `sent` queues a copy (`sent`: id, peer,
//!   body, created and the router's time). The other devices store it as
//!   outgoing with the same id and the same timeline (`pending` at the
//!   creation time, `sent` at the router's). The peer's receipts are
//!   addressed to the key, so they reach every device and move the copies
//!   exactly as the original; a receipt that comes before the copy is
//!   kept (`sync_early`) and applied when the copy arrives. Messages the
//!   router never accepted (pending, failed) are not copied: they stay on
//!   the device that wrote them.
//! - **Reads.** When messages are shown here, [`Engine::mark_read`] queues
//!   a `read-sync` beside the read receipt, in one transaction; the other
//!   devices mark the same messages read at the same time and send no
//!   receipt, so the peer gets exactly one (unless two devices show the
//!   same message before either hears of the other: the peer then counts
//!   the first). A read of a message not received yet is kept for it.
//! - **Contacts.** The store queues a `contact` item with every add, rename
//!   and remove ([`crate::store::Store::add_contact`]); the other devices
//!   follow by key (see [`crate::store::sync_contact_tx`] on name clashes).
//!   Applying a change tells no device again, so nothing echoes.
//!
//! A device that is alone costs one small frame per sent message, read and
//! contact change, which the router acknowledges and drops.

use rusqlite::Transaction;

use super::{receipt_time, Engine, Update};
use crate::client::ClientError;
use crate::client::ServerUrl;
use crate::clock;
use crate::identity::PublicKey;
use crate::protocol::{ContactOp, Content, ErrorCode, Frame, MessageFrame};
use crate::store::messages::{apply_status_tx, incoming_tx, mark_incoming_read_tx, message_tx};
use crate::store::sync::{
    insert_copy_tx, keep_early_tx, queue_sync_tx, remove_sync_tx, take_early_tx, ContactChange,
    PendingSync, SyncItem,
};
use crate::store::{self, sync_contact_tx, Direction, Inserted, Message, MessageId, Status};

/// Why a sync kind from another key is refused.
pub(super) const FORGED_SYNC: &str =
    "it claims to come from one of your own devices but is signed by another key";

impl Engine {
    /// Seals a queued item for the other devices, or drops it when there
    /// is nothing to send any more (the copied message was deleted) or its
    /// frame would be over the router's limit.
    pub(super) fn seal_sync(
        &mut self,
        pending: &PendingSync,
    ) -> Result<Option<Frame>, ClientError> {
        let content = match &pending.item {
            SyncItem::Sent { msg_id, .. } => match self.store.message(msg_id)? {
                Some(message) => copy_of(&message)?,
                None => {
                    remove_sync_tx(self.store.conn(), &pending.item_id)?;
                    return Ok(None);
                }
            },
            SyncItem::Read { peer, msg_ids } => Content::ReadSync {
                peer: *peer,
                ids: msg_ids.iter().map(MessageId::uuid).collect(),
            },
            SyncItem::Contact { change, key, name } => Content::Contact {
                op: match change {
                    ContactChange::Add => ContactOp::Add,
                    ContactChange::Rename => ContactOp::Rename,
                    ContactChange::Remove => ContactOp::Remove,
                },
                key: *key,
                name: name.clone(),
                router: match change {
                    ContactChange::Remove => None,
                    _ => self
                        .store
                        .contact_by_key(key)?
                        .and_then(|c| c.router)
                        .map(|r| r.as_str().to_owned()),
                },
            },
        };
        let me = self.me;
        let frame = self.seal(&me, pending.item_id, &pending.created_at, &content)?;
        let id = pending.item_id.uuid();
        match self.in_flight.get(&id) {
            Some(&len) if len > self.max_frame_bytes => {
                self.in_flight.remove(&id);
                remove_sync_tx(self.store.conn(), &pending.item_id)?;
                self.updates.push(Update::RouterError {
                    code: ErrorCode::TooLarge,
                    message: format!(
                        "a {len}-byte copy for your other devices is over the router's limit \
                         of {} bytes; they will not show it",
                        self.max_frame_bytes
                    ),
                });
                Ok(None)
            }
            _ => Ok(Some(frame)),
        }
    }
}

/// The `sent` copy of our message `m` as it stands.
fn copy_of(m: &Message) -> Result<Content, ClientError> {
    let peer = PublicKey::parse(&m.peer_key).map_err(|e| ClientError::Corrupt(e.to_string()))?;
    Ok(Content::Sent {
        id: m.msg_id.uuid(),
        peer,
        body: m.body.clone(),
        created: m.created_at.clone(),
        sent: m.sent_at.clone(),
    })
}

/// Queues the copy of our message `before` (as it was before the router's
/// ack) for the other devices, if this ack is what makes it sent: the ack
/// marked it `sent`, or a receipt overtook the ack (it is delivered or read
/// with no router time, and the copy says so). Returns whether it did.
pub(super) fn copy_on_ack(
    tx: &Transaction<'_>,
    before: &Message,
    marked_sent: bool,
    at: &str,
) -> Result<bool, ClientError> {
    let overtaken =
        before.sent_at.is_none() && matches!(before.status, Status::Delivered | Status::Read);
    if marked_sent || overtaken {
        let peer =
            PublicKey::parse(&before.peer_key).map_err(|e| ClientError::Corrupt(e.to_string()))?;
        let item = SyncItem::Sent {
            peer,
            msg_id: before.msg_id,
        };
        queue_sync_tx(tx, &item, at)?;
        return Ok(true);
    }
    Ok(false)
}

/// Refuses a self-sync kind that another key signed.
pub(super) fn check_sender(
    content: Content,
    frame: &MessageFrame,
    me: &PublicKey,
) -> Result<Content, String> {
    if content.is_self_sync() && frame.from != *me {
        return Err(FORGED_SYNC.to_owned());
    }
    Ok(content)
}

/// Applies what another device of this identity told (`frame` is from the
/// own key: [`check_sender`] saw to it). Returns what to show.
pub(super) fn apply_sync(
    tx: &Transaction<'_>,
    me: &PublicKey,
    frame: &MessageFrame,
    content: &Content,
) -> Result<Vec<Update>, ClientError> {
    let at = clock::normalize(&frame.ts).unwrap_or_else(clock::now);
    match content {
        Content::Sent {
            id,
            peer,
            body,
            created,
            sent,
        } => {
            let id = MessageId::from(*id);
            let created = clock::normalize(created).unwrap_or_else(|| at.clone());
            let sent = sent.as_deref().and_then(clock::normalize);
            match insert_copy_tx(tx, &id, peer, body, &created, sent.as_deref())? {
                Inserted::New(copy) => {
                    for (status, at) in take_early_tx(tx, peer, &id, Direction::Out)? {
                        apply_status_tx(tx, &id, status, &receipt_time(&copy, at), None)?;
                    }
                    let copy = message_tx(tx, &id)?.map_or(*copy, |m| m);
                    Ok(vec![Update::Received(copy)])
                }
                Inserted::Duplicate => Ok(Vec::new()),
            }
        }
        Content::ReadSync { peer, ids } => {
            for id in ids {
                let id = MessageId::from(*id);
                if incoming_tx(tx, peer, &id)?.is_some() {
                    mark_incoming_read_tx(tx, peer, &id, &at)?;
                } else {
                    keep_early_tx(tx, peer, &id, Direction::In, Status::Read, &at)?;
                }
            }
            Ok(Vec::new())
        }
        Content::Contact {
            op,
            key,
            name,
            router,
        } => {
            let change = match op {
                ContactOp::Add => ContactChange::Add,
                ContactOp::Rename => ContactChange::Rename,
                ContactOp::Remove => ContactChange::Remove,
                ContactOp::Unknown => return Ok(Vec::new()),
            };
            sync_contact_tx(tx, Some(me), change, key, name.as_deref(), &at)?;
            // Where the contact receives travels with the contact: a bad
            // URL from another device is left out, the contact kept.
            let router = router.as_deref().and_then(|r| ServerUrl::parse(r).ok());
            if let (Some(router), false) = (router, change == ContactChange::Remove) {
                crate::store::home::note_announced_tx(tx, me, key, &router)?;
            }
            Ok(Vec::new())
        }
        Content::Text { .. }
        | Content::Delivered { .. }
        | Content::Read { .. }
        | Content::Home { .. } => Ok(Vec::new()),
        Content::Unknown => Ok(Vec::new()),
    }
}

/// A message just received from `peer`: a read another device sent before
/// it arrived is applied now. Returns the message as it stands.
pub(super) fn apply_early_read(
    tx: &Transaction<'_>,
    peer: &PublicKey,
    message: Message,
) -> Result<Message, ClientError> {
    let id = message.msg_id;
    let mut read = false;
    for (status, at) in take_early_tx(tx, peer, &id, Direction::In)? {
        if status == Status::Read {
            read |= mark_incoming_read_tx(tx, peer, &id, &at)?;
        }
    }
    if !read {
        return Ok(message);
    }
    Ok(incoming_tx(tx, peer, &id)?.unwrap_or(message))
}

/// A peer's receipt for a message not here: maybe the copy from another
/// device is still on its way. Kept for it.
pub(super) fn keep_early_receipt(
    tx: &Transaction<'_>,
    peer: &PublicKey,
    id: &MessageId,
    status: Status,
    at: &str,
) -> Result<(), store::Error> {
    keep_early_tx(tx, peer, id, Direction::Out, status, at)
}

#[cfg(test)]
mod tests;

//! Frames the router will never accept: set aside as `failed` so that they
//! never hold back the outbox, whether the router names them (`error` with
//! an id), answers without an id, or closes the session over them.

use std::collections::HashMap;

use uuid::Uuid;

use super::{refusal_reason, reload, Engine, Update};
use crate::client::ClientError;
use crate::clock;
use crate::identity::PublicKey;
use crate::protocol::{self, Content, ErrorCode, Frame};
use crate::store::messages::{apply_status_tx, message_tx};
use crate::store::receipts::remove_receipt_tx;
use crate::store::sync::remove_sync_tx;
use crate::store::{self, Direction, MessageId, Status};

impl Engine {
    /// The router closed the session over a frame far above its limit
    /// (close code 1009): the largest frame in flight is that frame. It is
    /// marked failed, so reconnecting does not send it again, and the
    /// limit is lowered below half its length (the router closes only over
    /// twice its limit). Returns what changed, for the screen.
    pub fn closed_for_size(&mut self, reason: &str) -> Result<Vec<Update>, ClientError> {
        let largest = self
            .in_flight
            .iter()
            .max_by_key(|(_, len)| **len)
            .map(|(id, len)| (*id, *len));
        self.connection_lost();
        let Some((id, len)) = largest else {
            return Ok(Vec::new());
        };
        self.max_frame_bytes = self.max_frame_bytes.min(len / 2);
        let reason = format!(
            "the router closed the connection over its {len}-byte frame ({reason}); \
             it accepts at most {} bytes (send it again shorter, or split)",
            self.max_frame_bytes
        );
        self.fail_frame(&MessageId::from(id), ErrorCode::TooLarge, &reason)
    }

    /// A pending message whose frame is over the router's limit: failed
    /// before it is sent.
    pub(super) fn set_aside_oversized(&mut self, id: Uuid, len: usize) -> Result<(), ClientError> {
        self.in_flight.remove(&id);
        let reason = format!(
            "its frame is {len} bytes and the router accepts at most {} bytes \
             (send it again shorter, or split into several messages)",
            self.max_frame_bytes
        );
        let updates = self.fail_frame(&MessageId::from(id), ErrorCode::TooLarge, &reason)?;
        self.updates.extend(updates);
        Ok(())
    }

    /// Matches refusals that came without an id to our frames. The router
    /// answers every frame exactly once (an ack or an error), so once no
    /// more frames are in flight than such refusals arrived, the frames
    /// still in flight are the refused ones.
    pub(super) fn settle_unattributed(
        &mut self,
        reaction: &mut super::Reaction,
    ) -> Result<(), ClientError> {
        if self.unattributed.is_empty() || self.in_flight.len() > self.unattributed.len() {
            return Ok(());
        }
        let errors = std::mem::take(&mut self.unattributed);
        let refused: HashMap<Uuid, usize> = std::mem::take(&mut self.in_flight);
        if refused.is_empty() {
            // They were about something else after all: say so.
            reaction
                .updates
                .extend(errors.into_iter().map(|e| Update::RouterError {
                    code: e.code,
                    message: e.message,
                }));
            return Ok(());
        }
        let code = errors.first().map_or(ErrorCode::Unknown, |e| e.code);
        let mut reasons: Vec<String> = errors.iter().map(refusal_reason).collect();
        reasons.dedup();
        let reason = reasons.join("; ");
        for id in refused.keys() {
            let updates = self.fail_frame(&MessageId::from(*id), code, &reason)?;
            reaction.updates.extend(updates);
        }
        Ok(())
    }

    /// Gives up on one of our frames for good: a receipt is forgotten, a
    /// message becomes `failed` with `reason`. Returns what changed.
    pub(super) fn fail_frame(
        &mut self,
        id: &MessageId,
        code: ErrorCode,
        reason: &str,
    ) -> Result<Vec<Update>, ClientError> {
        let tx = self.store.transaction()?;
        if remove_receipt_tx(&tx, id)? {
            tx.commit().map_err(store::Error::from)?;
            return Ok(vec![Update::RouterError {
                code,
                message: format!("a receipt was given up: {reason}"),
            }]);
        }
        if remove_sync_tx(&tx, id)? {
            tx.commit().map_err(store::Error::from)?;
            return Ok(vec![Update::RouterError {
                code,
                message: format!("an update for your other devices was given up: {reason}"),
            }]);
        }
        let changed = match message_tx(&tx, id)? {
            Some(m) if m.direction == Direction::Out => {
                apply_status_tx(&tx, id, Status::Failed, &clock::now(), Some(reason))?
            }
            _ => false,
        };
        let updated = if changed {
            reload(&tx, &[*id])?
        } else {
            Vec::new()
        };
        tx.commit().map_err(store::Error::from)?;
        self.tally.failed += updated.len();
        Ok(updated.into_iter().map(Update::Status).collect())
    }

    /// The length of the frame that would carry `body` to `peer`: sealed
    /// for real (ids and times have fixed lengths), so it is exact.
    pub(super) fn text_frame_len(
        &self,
        peer: &PublicKey,
        body: &str,
    ) -> Result<usize, ClientError> {
        let content = Content::Text {
            body: body.to_owned(),
            home: self.home_announced().map(str::to_owned),
        };
        let frame = protocol::seal(&self.identity, peer, Uuid::nil(), &clock::now(), &content)?;
        Ok(protocol::to_text(&Frame::Message(frame)).len())
    }
}

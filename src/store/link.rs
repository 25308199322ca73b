//! What a profile copied to a newly linked device must not carry over from
//! the device it was copied from.
//!
//! The copy is the whole database; three kinds of rows belong to the
//! device rather than the identity:
//! - **messages still pending**: the device that wrote them sends them. If
//!   the copy sent them too, the peer would get every one twice (it would
//!   store one copy, the id being the same, but the router would carry and
//!   queue both). On the new device they become `failed` with the reason
//!   [`LINKED_BEFORE_SENT`]; `outbox retry` there sends one anyway.
//! - **receipts waiting to go out** (`receipt_outbox`): the same, for
//!   delivered and read receipts.
//! - **this device's id and name** (the `device` table):
//!   replaced by the new device's own.

use uuid::Uuid;

use super::messages::apply_status_tx;
use super::status::{MessageId, Status};
use super::{Result, Store};
use crate::clock;

/// The `failure_reason` of a message that was still pending on the device
/// a profile was linked from.
pub const LINKED_BEFORE_SENT: &str =
    "linked from another device before it was sent: that device sends it";

impl Store {
    /// Makes a copy of another device's profile this device's own:
    /// pending messages fail here (the other device sends them), queued
    /// receipts are dropped, and the device row becomes `device` named
    /// `name`. Returns how many messages were pending.
    pub fn adopt_linked_copy(&mut self, device: Uuid, name: &str) -> Result<usize> {
        let tx = self.transaction()?;
        let pending: Vec<MessageId> = {
            let mut stmt = tx.prepare(
                "SELECT msg_id FROM messages
                 WHERE direction = 'out' AND status = 'pending'",
            )?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let now = clock::now();
        for id in &pending {
            apply_status_tx(&tx, id, Status::Failed, &now, Some(LINKED_BEFORE_SENT))?;
        }
        tx.execute("DELETE FROM receipt_outbox", [])?;
        tx.commit()?;
        self.set_device(device, name)?;
        Ok(pending.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    #[test]
    fn a_linked_copy_does_not_send_what_the_other_device_sends() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        let pending = store.insert_outgoing(&peer, "still waiting").unwrap();
        store
            .conn()
            .execute(
                "INSERT INTO receipt_outbox (receipt_id, peer_key, kind, msg_ids, created_at)
                 VALUES ('r1', ?1, 'read', '[]', '2026-01-01T00:00:00.000Z')",
                [peer.to_base64()],
            )
            .unwrap();
        let device = Uuid::new_v4();
        store.device().unwrap();
        assert_eq!(store.adopt_linked_copy(device, "laptop").unwrap(), 1);
        let now_device = store.device().unwrap();
        assert_eq!(
            (now_device.id, now_device.name.as_str()),
            (device, "laptop")
        );
        let now = store.message(&pending.msg_id).unwrap().unwrap();
        assert_eq!(now.status, Status::Failed);
        assert_eq!(now.failure_reason.as_deref(), Some(LINKED_BEFORE_SENT));
        assert!(store
            .outbox()
            .unwrap()
            .iter()
            .all(|m| m.status != Status::Pending));
        let receipts: i64 = store
            .conn()
            .query_row("SELECT count(*) FROM receipt_outbox", [], |r| r.get(0))
            .unwrap();
        assert_eq!(receipts, 0);
        assert_eq!(store.message_count().unwrap(), 1);
        // Again: nothing left to change.
        assert_eq!(store.adopt_linked_copy(device, "laptop").unwrap(), 0);
    }
}

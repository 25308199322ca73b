//! The `receipt_outbox` table: delivered and read receipts waiting for the
//! router's acknowledgement.
//!
//! A receipt row is written in the transaction that stores (or marks read)
//! the messages it is about, and deleted when the router acknowledges the
//! receipt's frame, so receipts survive crashes and lost connections.

use rusqlite::{params, Transaction};
use serde::{Deserialize, Serialize};

use super::status::MessageId;
use super::{Error, Result, Store};
use crate::clock;
use crate::identity::PublicKey;

/// The most message ids one receipt carries, so its frame stays far below
/// the router's 64 KiB limit (an id is about 40 bytes of JSON).
pub const MAX_IDS_PER_RECEIPT: usize = 500;

/// Which event a receipt reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    /// The messages were stored by their recipient.
    Delivered,
    /// The messages were shown to their recipient.
    Read,
}

impl ReceiptKind {
    fn as_str(self) -> &'static str {
        match self {
            Self::Delivered => "delivered",
            Self::Read => "read",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "delivered" => Some(Self::Delivered),
            "read" => Some(Self::Read),
            _ => None,
        }
    }
}

/// A receipt waiting to be sent or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingReceipt {
    /// The receipt's wire id.
    pub receipt_id: MessageId,
    /// Who it goes to.
    pub peer: PublicKey,
    /// What it reports.
    pub kind: ReceiptKind,
    /// The messages it is about.
    pub msg_ids: Vec<MessageId>,
    /// Its wire timestamp.
    pub created_at: String,
}

/// Queues receipts of `kind` to `peer` about `msg_ids`, split into frames
/// of at most [`MAX_IDS_PER_RECEIPT`] ids. Returns what was queued.
pub fn queue_receipts_tx(
    tx: &Transaction<'_>,
    peer: &PublicKey,
    kind: ReceiptKind,
    msg_ids: &[MessageId],
) -> Result<Vec<PendingReceipt>> {
    let now = clock::now();
    let mut queued = Vec::new();
    let mut insert = tx.prepare_cached(
        "INSERT INTO receipt_outbox (receipt_id, peer_key, kind, msg_ids, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    for chunk in msg_ids.chunks(MAX_IDS_PER_RECEIPT) {
        let receipt = PendingReceipt {
            receipt_id: MessageId::new_v7(),
            peer: *peer,
            kind,
            msg_ids: chunk.to_vec(),
            created_at: now.clone(),
        };
        let ids = serde_json::to_string(&receipt.msg_ids).map_err(|e| Error::Corrupt {
            what: "receipt",
            detail: e.to_string(),
        })?;
        insert.execute(params![
            receipt.receipt_id,
            peer.to_base64(),
            kind.as_str(),
            ids,
            now
        ])?;
        queued.push(receipt);
    }
    Ok(queued)
}

/// Every receipt not yet acknowledged by the router, oldest first.
pub fn pending_receipts_tx(conn: &rusqlite::Connection) -> Result<Vec<PendingReceipt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT receipt_id, peer_key, kind, msg_ids, created_at
         FROM receipt_outbox
         ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, MessageId>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut receipts = Vec::new();
    for row in rows {
        let (receipt_id, peer, kind, ids, created_at) = row?;
        let corrupt = |detail: String| Error::Corrupt {
            what: "receipt",
            detail,
        };
        receipts.push(PendingReceipt {
            receipt_id,
            peer: PublicKey::parse(&peer).map_err(|e| corrupt(e.to_string()))?,
            kind: ReceiptKind::parse(&kind).ok_or_else(|| corrupt(format!("kind '{kind}'")))?,
            msg_ids: serde_json::from_str(&ids).map_err(|e| corrupt(e.to_string()))?,
            created_at,
        });
    }
    Ok(receipts)
}

/// Forgets the receipt `receipt_id` (the router has it). Returns whether
/// it was queued.
pub fn remove_receipt_tx(conn: &rusqlite::Connection, receipt_id: &MessageId) -> Result<bool> {
    let removed = conn
        .prepare_cached("DELETE FROM receipt_outbox WHERE receipt_id = ?1")?
        .execute([receipt_id])?;
    Ok(removed > 0)
}

/// Messages received from `peer` and not yet read, oldest first.
pub fn unread_from_tx(conn: &rusqlite::Connection, peer: &PublicKey) -> Result<Vec<MessageId>> {
    let mut stmt = conn.prepare_cached(
        "SELECT msg_id FROM messages
         WHERE peer_key = ?1 AND direction = 'in' AND status = 'received'
         ORDER BY id",
    )?;
    let rows = stmt.query_map([peer.to_base64()], |r| r.get(0))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// See [`pending_receipts_tx`].
    pub fn pending_receipts(&self) -> Result<Vec<PendingReceipt>> {
        pending_receipts_tx(&self.conn)
    }

    /// See [`remove_receipt_tx`].
    pub fn remove_receipt(&self, receipt_id: &MessageId) -> Result<bool> {
        remove_receipt_tx(&self.conn, receipt_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    #[test]
    fn queued_receipts_survive_until_removed() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        let ids: Vec<_> = (0..3).map(|_| MessageId::new_v7()).collect();
        let tx = store.transaction().unwrap();
        let queued = queue_receipts_tx(&tx, &peer, ReceiptKind::Read, &ids).unwrap();
        tx.commit().unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(store.pending_receipts().unwrap(), queued);
        assert!(store.remove_receipt(&queued[0].receipt_id).unwrap());
        assert!(!store.remove_receipt(&queued[0].receipt_id).unwrap());
        assert!(store.pending_receipts().unwrap().is_empty());
    }

    #[test]
    fn long_lists_are_split_into_several_receipts() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        let ids: Vec<_> = (0..MAX_IDS_PER_RECEIPT + 1)
            .map(|_| MessageId::new_v7())
            .collect();
        let tx = store.transaction().unwrap();
        let queued = queue_receipts_tx(&tx, &peer, ReceiptKind::Delivered, &ids).unwrap();
        tx.commit().unwrap();
        assert_eq!(queued.len(), 2);
        assert_eq!(queued[1].msg_ids, ids[MAX_IDS_PER_RECEIPT..]);
    }
}

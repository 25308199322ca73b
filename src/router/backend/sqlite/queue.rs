//! The queue table's reads and writes: frames in, fetched per device,
//! settled per device, expired. The writer calls the `*_tx` functions inside
//! its batch's transaction, with the in-memory [`Keys`] it keeps beside the
//! database.

use std::sync::Arc;

use rusqlite::{params, Connection, Transaction};
use uuid::Uuid;

use super::super::{BackendError, Enqueued, NewFrame, Queued};
use super::devices::{bit, Keys};
use crate::identity::PublicKey;

pub(super) fn fetch_rows(
    conn: &Connection,
    recipient: &PublicKey,
    device: &Uuid,
    after: i64,
    limit: usize,
) -> Result<Vec<Queued>, BackendError> {
    // The device's bit, looked up once; NULL (nothing matches) for a
    // device that is not live.
    let mut stmt = conn.prepare_cached(
        "SELECT seq, id, received_at, frame
         FROM queue
         WHERE recipient = ?1 AND seq > ?2
           AND (waiting & (SELECT 1 << slot FROM devices
                           WHERE recipient = ?1 AND device = ?4 AND removed = 0)) != 0
         ORDER BY seq
         LIMIT ?3",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let args = params![recipient.as_bytes(), after, limit, device.as_bytes()];
    let rows = stmt.query_map(args, |r| {
        let id: Vec<u8> = r.get(1)?;
        let text: String = r.get(3)?;
        Ok((r.get::<_, i64>(0)?, id, r.get::<_, String>(2)?, text))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (seq, id, at, text) = row?;
        // Rows are written only by the writer below, always 16 bytes.
        let Ok(id) = Uuid::from_slice(&id) else {
            continue;
        };
        out.push(Queued {
            seq,
            id,
            recipient: *recipient.as_bytes(),
            at,
            text: text.into(),
        });
    }
    Ok(out)
}

/// Stores a frame waiting on `?7` (its mask); a copy is not stored twice.
pub(super) const INSERT: &str =
    "INSERT INTO queue (seq, recipient, id, sender, received_at, frame, waiting)
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
     ON CONFLICT (id, recipient, sender) DO NOTHING";

/// When the frame `(recipient ?1, id ?2, sender ?3)` was first stored.
pub(super) const FIRST_STORED: &str = "SELECT received_at FROM queue
     WHERE recipient = ?1 AND id = ?2 AND sender = ?3";

/// The mask a new frame waits on, or the answer when it is not stored: no
/// device needs it (a frame to one's own key, not back to the device that
/// wrote it), or one of its devices is over `quota`.
pub(super) fn admit(keys: &Keys, f: &NewFrame, quota: u64, now: &str) -> Result<i64, Enqueued> {
    let state = keys.get(&f.recipient);
    let mut mask = state.map_or(1, |s| s.mask());
    if f.sender == f.recipient {
        if let Some(slot) = state.and_then(|s| s.slot_of(&f.sender_device)) {
            mask &= !bit(slot);
        }
    }
    if mask == 0 {
        return Err(Enqueued::Unneeded { at: now.to_owned() });
    }
    if state.is_some_and(|s| s.over_quota(mask, quota)) {
        return Err(Enqueued::QuotaExceeded);
    }
    Ok(mask)
}

/// Inserts frames, deduplicating and enforcing the per-device quota.
pub(super) fn enqueue_tx(
    tx: &Transaction,
    frames: &[NewFrame],
    now: &str,
    next_seq: &mut i64,
    keys: &mut Keys,
    quota: u64,
) -> Result<Vec<Enqueued>, BackendError> {
    let mut insert = tx.prepare_cached(INSERT)?;
    let mut existing = tx.prepare_cached(FIRST_STORED)?;
    let mut out = Vec::with_capacity(frames.len());
    for f in frames {
        let key = f.recipient;
        let mask = match admit(keys, f, quota, now) {
            Ok(mask) => mask,
            Err(answer) => {
                out.push(answer);
                continue;
            }
        };
        let seq = *next_seq;
        let args = params![seq, key, f.id.as_bytes(), f.sender, now, &*f.text, mask];
        match insert.execute(args)? {
            1 => {
                *next_seq += 1;
                let state = keys.entry(key);
                state.add(mask, 1);
                out.push(Enqueued::Stored {
                    frame: Queued {
                        seq,
                        id: f.id,
                        recipient: f.recipient,
                        at: now.to_owned(),
                        text: Arc::clone(&f.text),
                    },
                    devices: state.devices_in(mask),
                });
            }
            _ => {
                let at: String =
                    existing.query_row(params![key, f.id.as_bytes(), f.sender], |r| r.get(0))?;
                out.push(Enqueued::Duplicate { at });
            }
        }
    }
    Ok(out)
}

/// A device's acks: clears its bit, deleting rows it was the last one for.
pub(super) fn remove_tx(
    tx: &Transaction,
    keys: &mut Keys,
    recipient: &PublicKey,
    device: &Uuid,
    seqs: &[i64],
) -> Result<u64, BackendError> {
    let key = recipient.as_bytes();
    let Some(slot) = keys.get(key).and_then(|s| s.slot_of(device)) else {
        return Ok(0);
    };
    let bit = bit(slot);
    // The common case (one device, or the last one to ack) is one DELETE.
    let mut delete = tx.prepare_cached(
        "DELETE FROM queue
         WHERE seq = ?2 AND recipient = ?1 AND waiting = ?3",
    )?;
    let mut clear = tx.prepare_cached(
        "UPDATE queue SET waiting = waiting & ~?3
         WHERE seq = ?2 AND recipient = ?1 AND (waiting & ?3) != 0",
    )?;
    let mut n = 0;
    for seq in seqs {
        let mut done = delete.execute(params![key, seq, bit])?;
        if done == 0 {
            done = clear.execute(params![key, seq, bit])?;
        }
        n += done as u64;
    }
    keys.entry(*key).add(bit, -(n as i64));
    keys.tidy(key);
    Ok(n)
}

/// Rows read per step of an expiry scan.
const EXPIRE_STEP: i64 = 1000;

/// Deletes expired frames; returns how many.
///
/// `received_at` grows with `seq`, so the expired rows are a prefix in
/// `seq` order: scan from the oldest, in steps, up to the first row that
/// is still fresh, and delete that prefix. (Should the clock have stepped
/// back, a few rows expire one period late.)
pub(super) fn expire_tx(
    tx: &Transaction,
    keys: &mut Keys,
    before: &str,
) -> Result<u64, BackendError> {
    let mut scan = tx.prepare_cached(
        "SELECT seq, received_at FROM queue
         WHERE seq > ?1
         ORDER BY seq
         LIMIT ?2",
    )?;
    let mut last_expired = 0i64;
    loop {
        let rows = scan
            .query_map(params![last_expired, EXPIRE_STEP], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        let full = rows.len() as i64 == EXPIRE_STEP;
        let fresh = rows.iter().position(|(_, at)| at.as_str() >= before);
        let expired = &rows[..fresh.unwrap_or(rows.len())];
        if let Some((seq, _)) = expired.last() {
            last_expired = *seq;
        }
        if fresh.is_some() || !full {
            break;
        }
    }
    let mut delete = tx.prepare_cached(
        "DELETE FROM queue
         WHERE seq <= ?1
         RETURNING recipient, waiting",
    )?;
    let rows = delete.query_map([last_expired], |r| {
        Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, i64>(1)?))
    })?;
    let mut gone = 0;
    let mut touched = Vec::new();
    for row in rows {
        let (key, mask) = row?;
        gone += 1;
        if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
            keys.entry(key).add(mask, -1);
            touched.push(key);
        }
    }
    for key in &touched {
        keys.tidy(key);
    }
    Ok(gone)
}

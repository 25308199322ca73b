//! Devices in the SQLite queue: each live device of a key holds a slot
//! (0..[`MAX_DEVICES`]), and a queued row's `waiting` mask has the bit of
//! every slot that has not acknowledged it yet (migration V3).
//!
//! A key without devices queues with bit 0, which its first device takes
//! (so it gets that backlog); a later device takes the lowest free slot,
//! which no row waits for, so it gets only what is committed after it.
//! Invariant, kept by every write here: a row's bits are slots of the key's
//! live devices, or bit 0 alone while the key has none.
//!
//! The writer keeps [`Keys`] in memory (slots and per-slot counts for the
//! quota) and changes it beside its SQL; when a batch fails to commit it
//! reloads the whole of it from the database ([`Keys::load`]).

use std::collections::HashMap;

use rusqlite::{params, Connection, OptionalExtension as _, Transaction};
use uuid::Uuid;

use super::super::{BackendError, DeviceRecord, Registered, MAX_DEVICES};
use crate::identity::PublicKey;

/// One live device of a key.
#[derive(Debug, Clone, Copy)]
struct Slot {
    device: Uuid,
    slot: u32,
}

/// What the writer knows of one key.
#[derive(Debug, Default)]
pub(super) struct KeyState {
    /// Live (registered, not removed, not forgotten) devices.
    devices: Vec<Slot>,
    /// Frames waiting per slot (index = slot).
    waiting: Vec<u64>,
}

/// The bit of `slot` in a `waiting` mask.
pub(super) fn bit(slot: u32) -> i64 {
    1i64 << slot
}

impl KeyState {
    /// The mask a new frame for this key waits on: every live device, or
    /// slot 0 (for the first device) when there is none.
    pub(super) fn mask(&self) -> i64 {
        if self.devices.is_empty() {
            return 1;
        }
        self.devices.iter().fold(0, |m, d| m | bit(d.slot))
    }

    pub(super) fn slot_of(&self, device: &Uuid) -> Option<u32> {
        self.devices
            .iter()
            .find(|d| d.device == *device)
            .map(|d| d.slot)
    }

    /// The live devices whose bit is in `mask`.
    pub(super) fn devices_in(&self, mask: i64) -> Vec<Uuid> {
        self.devices
            .iter()
            .filter(|d| mask & bit(d.slot) != 0)
            .map(|d| d.device)
            .collect()
    }

    /// Whether any slot of `mask` already has `quota` frames waiting.
    pub(super) fn over_quota(&self, mask: i64, quota: u64) -> bool {
        self.waiting
            .iter()
            .enumerate()
            .any(|(slot, n)| mask & bit(slot as u32) != 0 && *n >= quota)
    }

    /// Counts `n` more (or fewer, when negative) frames on each slot of
    /// `mask`.
    pub(super) fn add(&mut self, mask: i64, n: i64) {
        for slot in 0..MAX_DEVICES as u32 {
            if mask & bit(slot) != 0 {
                let i = slot as usize;
                if self.waiting.len() <= i {
                    self.waiting.resize(i + 1, 0);
                }
                self.waiting[i] = self.waiting[i].saturating_add_signed(n);
            }
        }
    }

    fn set_waiting(&mut self, slot: u32, n: u64) {
        let i = slot as usize;
        if self.waiting.len() <= i {
            self.waiting.resize(i + 1, 0);
        }
        self.waiting[i] = n;
    }

    fn waiting_on(&self, slot: u32) -> u64 {
        self.waiting.get(slot as usize).copied().unwrap_or(0)
    }

    /// Whether no frame (queued or staged) waits for any of its slots.
    pub(super) fn nothing_waiting(&self) -> bool {
        self.waiting.iter().all(|n| *n == 0)
    }

    fn is_idle(&self) -> bool {
        self.devices.is_empty() && self.waiting.iter().all(|n| *n == 0)
    }
}

/// Every key the queue has devices or frames for.
#[derive(Debug, Default)]
pub(super) struct Keys(HashMap<[u8; 32], KeyState>);

impl Keys {
    /// Reads the state from the database (at start, and after a failed
    /// commit).
    pub(super) fn load(conn: &Connection) -> Result<Self, BackendError> {
        let mut keys = Keys::default();
        let mut stmt = conn.prepare(
            "SELECT recipient, device, slot
             FROM devices
             WHERE removed = 0",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, Vec<u8>>(1)?,
                r.get::<_, u32>(2)?,
            ))
        })?;
        for row in rows {
            let (key, device, slot) = row?;
            let (Ok(key), Ok(device)) = (
                <[u8; 32]>::try_from(key.as_slice()),
                Uuid::from_slice(&device),
            ) else {
                continue;
            };
            keys.0
                .entry(key)
                .or_default()
                .devices
                .push(Slot { device, slot });
        }
        let mut stmt = conn.prepare(
            "SELECT recipient, waiting, count(*)
             FROM queue
             GROUP BY recipient, waiting",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, Vec<u8>>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
            ))
        })?;
        for row in rows {
            let (key, mask, n) = row?;
            if let Ok(key) = <[u8; 32]>::try_from(key.as_slice()) {
                keys.0.entry(key).or_default().add(mask, n);
            }
        }
        Ok(keys)
    }

    pub(super) fn get(&self, key: &[u8; 32]) -> Option<&KeyState> {
        self.0.get(key)
    }

    pub(super) fn entry(&mut self, key: [u8; 32]) -> &mut KeyState {
        self.0.entry(key).or_default()
    }

    /// Forgets a key's state once it has neither devices nor frames.
    pub(super) fn tidy(&mut self, key: &[u8; 32]) {
        if self.0.get(key).is_some_and(KeyState::is_idle) {
            self.0.remove(key);
        }
    }
}

/// Registers a device, or notes a known one is back.
pub(super) fn register_tx(
    tx: &Transaction,
    keys: &mut Keys,
    key: &PublicKey,
    device: &Uuid,
    name: &str,
    now: &str,
) -> Result<Registered, BackendError> {
    let known: Option<bool> = tx
        .prepare_cached(
            "SELECT removed FROM devices
             WHERE recipient = ?1 AND device = ?2",
        )?
        .query_row(params![key.as_bytes(), device.as_bytes()], |r| r.get(0))
        .optional()?;
    match known {
        Some(true) => return Ok(Registered::Removed),
        Some(false) => {
            tx.prepare_cached(
                "UPDATE devices SET name = ?3, last_seen = ?4
                 WHERE recipient = ?1 AND device = ?2",
            )?
            .execute(params![key.as_bytes(), device.as_bytes(), name, now])?;
            return Ok(Registered::Known);
        }
        None => {}
    }
    let state = keys.entry(*key.as_bytes());
    if state.devices.len() >= MAX_DEVICES {
        return Ok(Registered::TooMany);
    }
    let first = state.devices.is_empty();
    // The first device takes slot 0 and with it what waited for the key;
    // a later one a free slot, which no row waits for.
    let slot = (0..MAX_DEVICES as u32)
        .find(|s| state.devices.iter().all(|d| d.slot != *s))
        .unwrap_or(0);
    tx.prepare_cached(
        "INSERT INTO devices (recipient, device, slot, name, first_seen, last_seen, removed)
         VALUES (?1, ?2, ?3, ?4, ?5, ?5, 0)",
    )?
    .execute(params![key.as_bytes(), device.as_bytes(), slot, name, now])?;
    // Most keys have one device: no room reserved for more.
    state.devices.reserve_exact(1);
    state.devices.push(Slot {
        device: *device,
        slot,
    });
    Ok(if first {
        Registered::First
    } else {
        Registered::Added
    })
}

/// Notes that devices were seen now.
pub(super) fn seen_tx(
    tx: &Transaction,
    devices: &[(PublicKey, Uuid)],
    now: &str,
) -> Result<(), BackendError> {
    let mut update = tx.prepare_cached(
        "UPDATE devices SET last_seen = ?3
         WHERE recipient = ?1 AND device = ?2 AND removed = 0",
    )?;
    for (key, device) in devices {
        update.execute(params![key.as_bytes(), device.as_bytes(), now])?;
    }
    Ok(())
}

/// Takes `slot`'s bit off every row of `key`, deleting the rows no other
/// device waits for.
fn release_slot(tx: &Transaction, key: &[u8; 32], slot: u32) -> Result<(), BackendError> {
    tx.prepare_cached(
        "UPDATE queue SET waiting = waiting & ~?2
         WHERE recipient = ?1 AND (waiting & ?2) != 0",
    )?
    .execute(params![key, bit(slot)])?;
    tx.prepare_cached(
        "DELETE FROM queue
         WHERE recipient = ?1 AND waiting = 0",
    )?
    .execute(params![key])?;
    Ok(())
}

/// Removes a live device: its frames are released, its later
/// registrations refused.
pub(super) fn remove_device_tx(
    tx: &Transaction,
    keys: &mut Keys,
    key: &PublicKey,
    device: &Uuid,
    now: &str,
) -> Result<bool, BackendError> {
    let k = key.as_bytes();
    let Some(slot) = keys.get(k).and_then(|s| s.slot_of(device)) else {
        return Ok(false);
    };
    release_slot(tx, k, slot)?;
    tx.prepare_cached(
        "UPDATE devices SET removed = 1, last_seen = ?3
         WHERE recipient = ?1 AND device = ?2",
    )?
    .execute(params![k, device.as_bytes(), now])?;
    let state = keys.entry(*k);
    state.devices.retain(|d| d.device != *device);
    state.set_waiting(slot, 0);
    keys.tidy(k);
    Ok(true)
}

/// Forgets live devices last seen before `before`; returns how many. The
/// frames of a key's last device go back to waiting for the key's next
/// first device (slot 0), as frames for a key without devices do.
pub(super) fn forget_tx(
    tx: &Transaction,
    keys: &mut Keys,
    before: &str,
) -> Result<u64, BackendError> {
    let stale = tx
        .prepare_cached(
            "SELECT recipient, device FROM devices
             WHERE removed = 0 AND last_seen < ?1",
        )?
        .query_map([before], |r| {
            Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .collect::<Result<Vec<_>, _>>()?;
    let mut forgotten = 0;
    for (key, device) in stale {
        let (Ok(key), Ok(device)) = (
            <[u8; 32]>::try_from(key.as_slice()),
            Uuid::from_slice(&device),
        ) else {
            continue;
        };
        let state = keys.entry(key);
        if let Some(slot) = state.slot_of(&device) {
            if state.devices.len() > 1 {
                release_slot(tx, &key, slot)?;
                state.set_waiting(slot, 0);
            } else {
                // The last device: every row of the key waits for it alone.
                tx.prepare_cached(
                    "UPDATE queue SET waiting = 1
                     WHERE recipient = ?1",
                )?
                .execute(params![key])?;
                let n = state.waiting_on(slot);
                state.waiting.clear();
                state.set_waiting(0, n);
            }
            state.devices.retain(|d| d.device != device);
        }
        tx.prepare_cached(
            "DELETE FROM devices
             WHERE recipient = ?1 AND device = ?2",
        )?
        .execute(params![key, device.as_bytes()])?;
        keys.tidy(&key);
        forgotten += 1;
    }
    Ok(forgotten)
}

/// The key's live devices, oldest first (a read connection's query).
/// Whether `key` has a live (not removed) device.
pub(super) fn any_live(conn: &Connection, key: &PublicKey) -> Result<bool, BackendError> {
    let mut stmt = conn.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM devices WHERE recipient = ?1 AND removed = 0)",
    )?;
    Ok(stmt.query_row([key.as_bytes()], |r| r.get::<_, bool>(0))?)
}

pub(super) fn list(conn: &Connection, key: &PublicKey) -> Result<Vec<DeviceRecord>, BackendError> {
    let mut stmt = conn.prepare_cached(
        "SELECT device, name, first_seen, last_seen
         FROM devices
         WHERE recipient = ?1 AND removed = 0
         ORDER BY first_seen, device",
    )?;
    let rows = stmt.query_map([key.as_bytes()], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, name, first_seen, last_seen) = row?;
        if let Ok(id) = Uuid::from_slice(&id) {
            out.push(DeviceRecord {
                id,
                name,
                first_seen,
                last_seen,
            });
        }
    }
    Ok(out)
}

-- Protocol v2: one key on several devices, each acknowledging on its own.
-- A device of a key gets a slot (0..31), and each queued frame a bit mask
-- of the slots still waiting for it: an ack clears its bit with one UPDATE,
-- or deletes the row when it is the last bit, so one device per key costs
-- what a key cost before. Rows queued before this migration wait for slot
-- 0, which is what a key without devices queues for and what its first
-- device takes: the first device of a key gets them.
CREATE TABLE devices (
    -- 32 raw bytes of the key.
    recipient  BLOB NOT NULL,
    -- 16 raw bytes of the device id the device chose.
    device     BLOB NOT NULL,
    -- Its bit in queue.waiting, while not removed.
    slot       INTEGER NOT NULL,
    -- The name from its latest auth.
    name       TEXT NOT NULL,
    -- RFC 3339 UTC with milliseconds.
    first_seen TEXT NOT NULL,
    last_seen  TEXT NOT NULL,
    -- 1 once removed with remove-device: its later auths are refused.
    removed    INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (recipient, device)
) STRICT, WITHOUT ROWID;

-- One live device per slot of a key.
CREATE UNIQUE INDEX devices_by_slot ON devices (recipient, slot) WHERE removed = 0;

-- Bit n set: the device in slot n has not acknowledged the frame yet.
ALTER TABLE queue ADD COLUMN waiting INTEGER NOT NULL DEFAULT 1;

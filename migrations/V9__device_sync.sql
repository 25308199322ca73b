-- V9: one identity on several devices keeps them in step (issue 9).
--
-- What this device tells its other devices (a copy of each message it
-- sent, what it read, contact changes) waits in sync_outbox until the
-- router acknowledges its frame, as receipts wait in receipt_outbox: a
-- crash or a lost connection loses nothing. A row says what to tell, not
-- the sealed frame: a copy is built from its message row when it is sent.
CREATE TABLE sync_outbox (
    id          INTEGER PRIMARY KEY,
    -- The frame's own wire id (UUIDv7), stable across resends.
    item_id     TEXT NOT NULL UNIQUE,
    -- The content kind on the wire.
    kind        TEXT NOT NULL CHECK (kind IN ('sent', 'read-sync', 'contact')),
    -- Standard base64 public key: the peer of the messages ('sent',
    -- 'read-sync') or the contact's key ('contact').
    peer_key    TEXT NOT NULL,
    -- JSON array of message ids: the copied message ('sent'), the
    -- messages read ('read-sync'); empty for 'contact'.
    msg_ids     TEXT NOT NULL DEFAULT '[]',
    -- 'contact' only: what happened, and the name (none for 'remove').
    op          TEXT CHECK (op IS NULL OR op IN ('add', 'rename', 'remove')),
    name        TEXT,
    -- The frame's ts: when it happened here (for 'read-sync', the time
    -- the messages were read, which the other devices record too).
    created_at  TEXT NOT NULL
) STRICT;

-- Receipts and reads that arrived before the message they are about: a
-- peer's receipt for a message another device sent can overtake that
-- device's copy, and a read on another device can name a message not
-- received here yet. Kept until the message arrives (then applied and
-- deleted); rows older than the router keeps frames, or beyond a cap, are
-- dropped as new ones come (see src/store/sync.rs).
CREATE TABLE sync_early (
    id          INTEGER PRIMARY KEY,
    -- Standard base64 key of the peer the message is with.
    peer_key    TEXT NOT NULL,
    msg_id      TEXT NOT NULL,
    -- 'out': a peer's receipt for our message; 'in': our read of theirs.
    direction   TEXT NOT NULL CHECK (direction IN ('out', 'in')),
    status      TEXT NOT NULL CHECK (status IN ('delivered', 'read')),
    -- When it happened (the receipt's or the read's time).
    at          TEXT NOT NULL,
    -- When it was kept here.
    stored_at   TEXT NOT NULL,
    UNIQUE (peer_key, msg_id, direction, status)
) STRICT;

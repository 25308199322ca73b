-- Message ids are unique per sender only (each client picks its own), so
-- the queue deduplicates by (id, recipient, sender): a frame from carol is
-- no longer dropped because alice used the same id. SQLite cannot change a
-- UNIQUE constraint in place, so the table is rebuilt; every queued row is
-- copied with its seq, so delivery order and resume cursors are unchanged.
CREATE TABLE queue_v2 (
    seq         INTEGER PRIMARY KEY,
    -- 32 raw bytes of the recipient's ed25519 key.
    recipient   BLOB NOT NULL,
    -- 16 raw bytes of the message id, as chosen by the sender. The id
    -- comes first in the unique index so time-ordered (v7) ids append to
    -- it instead of touching one page per recipient in every commit.
    id          BLOB NOT NULL,
    -- 32 raw bytes of the sender's key: part of the frame's identity.
    sender      BLOB NOT NULL,
    -- When the router committed it, RFC 3339 UTC with milliseconds.
    received_at TEXT NOT NULL,
    -- The frame exactly as it is delivered (JSON text).
    frame       TEXT NOT NULL,
    UNIQUE (id, recipient, sender)
) STRICT;

INSERT INTO queue_v2 (seq, recipient, id, sender, received_at, frame)
    SELECT seq, recipient, id, sender, received_at, frame FROM queue;

DROP TABLE queue;

ALTER TABLE queue_v2 RENAME TO queue;

-- Delivery order per recipient (the rowid `seq` is implied in the index).
CREATE INDEX queue_by_recipient ON queue (recipient);

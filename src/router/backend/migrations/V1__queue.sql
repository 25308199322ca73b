-- The router's durable queue: every frame a router accepts waits here until
-- its recipient acknowledges it (or it expires). The single writer assigns
-- `seq` from a counter that only grows while it runs, so a session can
-- resume delivery after the highest seq it sent without missing a frame
-- committed later. Rows are appended in `seq` order, so `received_at`
-- grows with `seq` and expiry scans from the lowest seq (no index).
CREATE TABLE queue (
    seq         INTEGER PRIMARY KEY,
    -- 32 raw bytes of the recipient's ed25519 key.
    recipient   BLOB NOT NULL,
    -- 16 raw bytes of the message id; (id, recipient) deduplicates. The id
    -- comes first in that index so time-ordered (v7) ids append to it
    -- instead of touching one page per recipient in every commit.
    id          BLOB NOT NULL,
    -- 32 raw bytes of the sender's key, for quotas and operators.
    sender      BLOB NOT NULL,
    -- When the router committed it, RFC 3339 UTC with milliseconds.
    received_at TEXT NOT NULL,
    -- The frame exactly as it is delivered (JSON text).
    frame       TEXT NOT NULL,
    UNIQUE (id, recipient)
) STRICT;

-- Delivery order per recipient (the rowid `seq` is implied in the index).
CREATE INDEX queue_by_recipient ON queue (recipient);

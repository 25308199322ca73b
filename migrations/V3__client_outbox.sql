-- V3: what the chat client must not forget between sessions.
--
-- A receipt (delivered, read) is written here in the same transaction as
-- the change that causes it, and deleted only when the router has
-- acknowledged it: a crash or a lost connection never loses a receipt, and
-- a receipt is sent again with its own id, which the peer deduplicates.
CREATE TABLE receipt_outbox (
    id          INTEGER PRIMARY KEY,
    -- The receipt's own wire id (UUIDv7), stable across resends.
    receipt_id  TEXT NOT NULL UNIQUE,
    -- Standard base64 public key of the peer the receipt goes to.
    peer_key    TEXT NOT NULL,
    -- 'delivered' or 'read'.
    kind        TEXT NOT NULL CHECK (kind = 'delivered' OR kind = 'read'),
    -- JSON array of the message ids the receipt is about.
    msg_ids     TEXT NOT NULL,
    -- The receipt's timestamp on the wire: when the messages were stored
    -- or shown here.
    created_at  TEXT NOT NULL
) STRICT;

-- Frames that arrived but could not be accepted as a contact's message (a
-- signature that does not verify, a payload that does not decrypt). They
-- are acknowledged so they do not come back forever, and kept here so the
-- user can see that something was refused and why.
CREATE TABLE rejected_messages (
    id          INTEGER PRIMARY KEY,
    -- The frame's id, as it claimed.
    msg_id      TEXT NOT NULL,
    -- The key the frame claimed to be from.
    peer_key    TEXT NOT NULL,
    -- Why it was refused.
    reason      TEXT NOT NULL,
    received_at TEXT NOT NULL,
    UNIQUE (msg_id, peer_key)
) STRICT;

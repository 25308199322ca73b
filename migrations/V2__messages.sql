-- V2: the message history, its delivery timeline and full-text search.
--
-- Messages name their peer by public key, not by contact row: messages from
-- keys that are not contacts are kept, adding the contact later attaches
-- them, and renaming or removing a contact never touches history.
-- Timestamps are UTC RFC 3339 text with milliseconds, like V1.

CREATE TABLE messages (
    -- Local row id; also the FTS5 content rowid. Grows in arrival order.
    id              INTEGER PRIMARY KEY,
    -- The wire message id (a UUID; v7 for messages written here): the
    -- deduplication key for at-least-once delivery.
    msg_id          TEXT NOT NULL UNIQUE,
    -- Standard base64 public key of the other side of the conversation.
    peer_key        TEXT NOT NULL,
    -- 'out' (written here) or 'in' (received).
    direction       TEXT NOT NULL CHECK (direction = 'out' OR direction = 'in'),
    body            TEXT NOT NULL,
    -- out: pending -> sent -> delivered -> read, or failed; in: received -> read.
    -- (Comparisons rather than IN lists: SQLite builds a temporary b-tree
    -- for each IN list at every INSERT, which halves the import rate.)
    status          TEXT NOT NULL CHECK (
        (direction = 'out' AND (status = 'pending' OR status = 'sent'
            OR status = 'delivered' OR status = 'read' OR status = 'failed'))
        OR (direction = 'in' AND (status = 'received' OR status = 'read'))
    ),
    -- The author's clock when the message was written.
    created_at      TEXT NOT NULL,
    -- out: the router accepted it.
    sent_at         TEXT,
    -- out: the peer's client stored it.
    delivered_at    TEXT,
    -- out: the peer read it; in: the user here read it.
    read_at         TEXT,
    -- in: when it was stored here.
    received_at     TEXT,
    -- out: when sending was given up.
    failed_at       TEXT,
    failure_reason  TEXT
) STRICT;

-- A conversation's latest N messages, and time-window filters, without a
-- scan: history orders by (created_at, id).
CREATE INDEX messages_peer_time ON messages (peer_key, created_at);
CREATE INDEX messages_time ON messages (created_at);
-- The outbox and "still not delivered" questions, latest first.
CREATE INDEX messages_status ON messages (status, created_at);

-- One row per status change, so a message's delivery timeline can be read.
-- Clustered by message (WITHOUT ROWID): a timeline is one b-tree range and
-- no second index is needed.
CREATE TABLE message_events (
    message_id  INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    -- 0, 1, 2, ...: the order of the message's changes.
    seq         INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (
        status = 'pending' OR status = 'sent' OR status = 'delivered'
        OR status = 'read' OR status = 'failed' OR status = 'received'
    ),
    at          TEXT NOT NULL,
    -- E.g. the failure reason.
    detail      TEXT,
    PRIMARY KEY (message_id, seq)
) STRICT, WITHOUT ROWID;

-- Full-text search over bodies. External content: the text lives once, in
-- messages. unicode61 with remove_diacritics 2 ignores case and accents.
-- No option newer than SQLite 3.40 (Debian 12's sqlite3 must read it).
CREATE VIRTUAL TABLE messages_fts USING fts5 (
    body,
    content = 'messages',
    content_rowid = 'id',
    tokenize = 'unicode61 remove_diacritics 2'
);

-- Live messages keep the index in step through these triggers. Bulk import
-- drops messages_fts_insert inside its transaction and fills the index in
-- one statement instead (a per-row trigger is three times slower).
CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;

CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
    VALUES ('delete', old.id, old.body);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, body)
    VALUES ('delete', old.id, old.body);
    INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
END;

-- Everyday questions in sqlite3: each message with the contact's name (NULL
-- for keys that are not contacts) and every status field.
CREATE VIEW messages_view AS
SELECT
    m.id,
    m.msg_id,
    m.created_at,
    c.name AS contact,
    m.peer_key,
    m.direction,
    m.status,
    m.body,
    m.sent_at,
    m.delivered_at,
    m.read_at,
    m.received_at,
    m.failed_at,
    m.failure_reason
FROM messages AS m
LEFT JOIN contacts AS c ON c.public_key = m.peer_key;

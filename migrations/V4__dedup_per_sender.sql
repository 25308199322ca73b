-- V4: a received message is a duplicate only of one from the same sender.
--
-- Until V3, msg_id was UNIQUE across the whole table, so a message whose
-- id some other peer had already used (by chance, by another client's
-- choice of ids, or on purpose to suppress it) was dropped as a
-- "duplicate". Now:
--   - our own messages (out) are unique by msg_id: we make their ids, and
--     the router's acks and errors name them by id alone;
--   - received messages (in) are unique by (peer_key, msg_id): each sender
--     has its own ids, as the router deduplicates by (from, to, id).
--
-- SQLite cannot drop a column's UNIQUE constraint, so the table is rebuilt.
-- Foreign keys are on and cannot be turned off inside the migration's
-- transaction, and dropping `messages` would cascade into message_events:
-- the events are copied aside first and message_events is rebuilt too.
-- Row ids are kept, so the external-content FTS index stays valid as is.

CREATE TABLE messages_v4 (
    id              INTEGER PRIMARY KEY,
    -- The wire message id (a UUID; v7 for messages written here). Unique
    -- among outgoing messages, and per peer among incoming ones (see the
    -- partial indexes below).
    msg_id          TEXT NOT NULL,
    peer_key        TEXT NOT NULL,
    direction       TEXT NOT NULL CHECK (direction = 'out' OR direction = 'in'),
    body            TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (
        (direction = 'out' AND (status = 'pending' OR status = 'sent'
            OR status = 'delivered' OR status = 'read' OR status = 'failed'))
        OR (direction = 'in' AND (status = 'received' OR status = 'read'))
    ),
    created_at      TEXT NOT NULL,
    sent_at         TEXT,
    delivered_at    TEXT,
    read_at         TEXT,
    received_at     TEXT,
    failed_at       TEXT,
    failure_reason  TEXT
) STRICT;

INSERT INTO messages_v4 (id, msg_id, peer_key, direction, body, status, created_at,
                         sent_at, delivered_at, read_at, received_at, failed_at,
                         failure_reason)
SELECT id, msg_id, peer_key, direction, body, status, created_at,
       sent_at, delivered_at, read_at, received_at, failed_at, failure_reason
FROM messages;

CREATE TABLE message_events_copy AS SELECT * FROM message_events;

-- The view names `messages`: a rename with it in place fails.
DROP VIEW messages_view;
-- Nothing references messages any more: no cascade, no lost events.
DROP TABLE message_events;
-- Its indexes and the FTS triggers go with it (a DROP fires no trigger).
DROP TABLE messages;
ALTER TABLE messages_v4 RENAME TO messages;

CREATE UNIQUE INDEX messages_out_id ON messages (msg_id) WHERE direction = 'out';
CREATE UNIQUE INDEX messages_in_id ON messages (peer_key, msg_id) WHERE direction = 'in';
CREATE INDEX messages_peer_time ON messages (peer_key, created_at);
CREATE INDEX messages_time ON messages (created_at);
CREATE INDEX messages_status ON messages (status, created_at);

-- As in V2.
CREATE TABLE message_events (
    message_id  INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    status      TEXT NOT NULL CHECK (
        status = 'pending' OR status = 'sent' OR status = 'delivered'
        OR status = 'read' OR status = 'failed' OR status = 'received'
    ),
    at          TEXT NOT NULL,
    detail      TEXT,
    PRIMARY KEY (message_id, seq)
) STRICT, WITHOUT ROWID;

INSERT INTO message_events (message_id, seq, status, at, detail)
SELECT message_id, seq, status, at, detail FROM message_events_copy;
DROP TABLE message_events_copy;

-- The FTS triggers and the view exactly as V2 made them.
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

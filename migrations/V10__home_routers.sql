-- V10: home routers (issue 11). Each profile receives at one router, its
-- home; to write to someone, the client delivers to *their* home router.
--
-- The profile's home router. At most one row. `router` is NULL until the
-- profile first talks to a router (or `init --server`/`home set` names
-- one); `previous` is the home it moved away from, still to be emptied
-- once of what was queued there before the move, then NULL again.
CREATE TABLE home (
    only        INTEGER PRIMARY KEY CHECK (only = 1),
    -- Canonical ws:// or wss:// URL of the router this profile receives at.
    router      TEXT,
    -- The router moved away from, while frames may still wait there.
    previous    TEXT,
    -- UTC, RFC 3339 with milliseconds: when `router` last changed.
    changed_at  TEXT NOT NULL
) STRICT;

-- Each contact's home router; NULL means "the same router as mine" (what a
-- bare key meant before this migration, so upgraded contacts keep working).
ALTER TABLE contacts ADD COLUMN router TEXT;

-- Home routers announced by people who are not contacts (strangers who
-- wrote): remembered so that saving one as a contact later knows where
-- they receive. A contact's router lives in `contacts.router` instead.
CREATE TABLE peer_routers (
    peer_key    TEXT PRIMARY KEY,
    router      TEXT NOT NULL,
    -- When the announcement arrived (UTC, RFC 3339).
    seen_at     TEXT NOT NULL
) STRICT;

-- "My home router moved" notices, one per contact (and one for this
-- identity's other devices), waiting for their router's acknowledgement
-- like receipts in receipt_outbox: a crash loses none.
CREATE TABLE home_outbox (
    id          INTEGER PRIMARY KEY,
    -- The frame's wire id (UUIDv7), stable across resends.
    item_id     TEXT NOT NULL UNIQUE,
    -- Standard base64 key of whom to tell (this identity's own key for
    -- its other devices).
    peer_key    TEXT NOT NULL,
    -- Where to deliver the notice: that person's home router (for the
    -- own key, the home moved away from, where the other devices are).
    deliver_to  TEXT NOT NULL,
    -- The new home router announced.
    home        TEXT NOT NULL,
    created_at  TEXT NOT NULL
) STRICT;

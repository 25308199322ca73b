-- V8: this profile's device. Protocol v2 lets one identity run on several
-- devices (a laptop, a desktop, a server), each with its own router session
-- and its own delivery; one profile file is one device. The id is random
-- and created on first use, so a profile from before this migration gets
-- one the first time it needs it; the name is what `devices` lists. At most
-- one row: a linked copy of a profile replaces it with its own.
CREATE TABLE device (
    only        INTEGER PRIMARY KEY CHECK (only = 1),
    -- 16 random bytes (a UUID v4): the device id signed in every auth.
    id          BLOB NOT NULL CHECK (length(id) = 16),
    -- Shown in `devices` (default: the host name), at most 64 bytes.
    name        TEXT NOT NULL,
    -- UTC, RFC 3339 with milliseconds.
    created_at  TEXT NOT NULL
) STRICT;

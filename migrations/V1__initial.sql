-- V1: the profile's identity and its contacts.
--
-- Marks the file as chat-p2p's own (application_id 'CP2P'), so that opening
-- some other application's SQLite file by mistake is refused rather than
-- silently migrated.
PRAGMA application_id = 1129329232;

-- The profile's own ed25519 key pair. At most one row (id = 1).
CREATE TABLE identity (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    -- Standard base64 of the 32-byte public key: the user's address.
    public_key  TEXT NOT NULL,
    -- The 32-byte ed25519 secret seed. Never printed or logged.
    secret_key  BLOB NOT NULL CHECK (length(secret_key) = 32),
    -- UTC, RFC 3339 with milliseconds.
    created_at  TEXT NOT NULL
) STRICT;

-- People this profile talks to, each a name for one public key.
CREATE TABLE contacts (
    id          INTEGER PRIMARY KEY,
    -- The name as the user typed it.
    name        TEXT NOT NULL,
    -- The name folded to lower case: names are unique ignoring case, for
    -- every script, which COLLATE NOCASE (ASCII only) cannot promise.
    name_key    TEXT NOT NULL UNIQUE,
    -- Standard base64 of the contact's 32-byte ed25519 public key.
    public_key  TEXT NOT NULL UNIQUE,
    -- UTC, RFC 3339 with milliseconds.
    added_at    TEXT NOT NULL
) STRICT;

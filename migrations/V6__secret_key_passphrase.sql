-- V6: the secret key may be protected by a passphrase.
--
-- A protected profile keeps its 32-byte seed sealed (XChaCha20-Poly1305
-- under a key stretched from the passphrase by argon2id, the profile's
-- public key as associated data) in `secret_wrapped`, with the argon2id
-- salt and cost beside it, and `secret_key` NULL. An unprotected profile is
-- as before: `secret_key` set, the other columns NULL. Only this table
-- changes: contacts and history stay readable with plain sqlite3.
--
-- SQLite cannot make a NOT NULL column nullable, so the table is rebuilt.
-- Nothing refers to it by foreign key.

CREATE TABLE identity_v6 (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    -- Standard base64 of the 32-byte public key: the user's address.
    public_key      TEXT NOT NULL,
    -- The 32-byte ed25519 secret seed, when not protected. Never printed.
    secret_key      BLOB CHECK (secret_key IS NULL OR length(secret_key) = 32),
    -- When protected: 24-byte nonce, then the sealed seed and its 16-byte
    -- tag (72 bytes).
    secret_wrapped  BLOB CHECK (secret_wrapped IS NULL OR length(secret_wrapped) = 72),
    -- The argon2id (version 0x13) salt and cost the passphrase is
    -- stretched with.
    kdf_salt        BLOB,
    kdf_memory_kib  INTEGER,
    kdf_iterations  INTEGER,
    kdf_parallelism INTEGER,
    -- UTC, RFC 3339 with milliseconds.
    created_at      TEXT NOT NULL,
    -- Exactly one of the two forms.
    CHECK (
        (secret_key IS NOT NULL AND secret_wrapped IS NULL AND kdf_salt IS NULL
            AND kdf_memory_kib IS NULL AND kdf_iterations IS NULL
            AND kdf_parallelism IS NULL)
        OR
        (secret_key IS NULL AND secret_wrapped IS NOT NULL AND kdf_salt IS NOT NULL
            AND kdf_memory_kib IS NOT NULL AND kdf_iterations IS NOT NULL
            AND kdf_parallelism IS NOT NULL)
    )
) STRICT;

INSERT INTO identity_v6 (id, public_key, secret_key, created_at)
    SELECT id, public_key, secret_key, created_at FROM identity;

DROP TABLE identity;
ALTER TABLE identity_v6 RENAME TO identity;

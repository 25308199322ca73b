-- V5: which contacts' keys the user has checked, by comparing safety codes
-- (`chat-p2p verify NAME --confirm`).
--
-- A separate table rather than a column of `contacts`: the record must
-- outlive the contact row. If a verified contact is removed and someone
-- re-adds the name with another key (by hand, or through an import), the
-- record still holds the key that was verified, so every command can say
-- loudly that the key behind the name changed. A contact is verified only
-- while its current key is the one recorded under its name.
CREATE TABLE verifications (
    -- The contact's folded name, as in contacts.name_key: renaming a
    -- verified contact moves its record along.
    name_key     TEXT PRIMARY KEY,
    -- Standard base64 of the public key whose safety code was compared.
    public_key   TEXT NOT NULL,
    -- UTC, RFC 3339 with milliseconds: when it was confirmed.
    verified_at  TEXT NOT NULL
) STRICT;

-- Everyday question in sqlite3: who is verified, and whose key changed
-- since it was verified (verified_at is NULL then, key_changed is 1).
CREATE VIEW contacts_view AS
SELECT
    c.id,
    c.name,
    c.public_key,
    c.added_at,
    CASE WHEN v.public_key = c.public_key THEN v.verified_at END AS verified_at,
    (v.public_key IS NOT NULL AND v.public_key != c.public_key) AS key_changed
FROM contacts AS c
LEFT JOIN verifications AS v ON v.name_key = c.name_key;

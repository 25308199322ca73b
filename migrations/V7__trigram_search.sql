-- Substring search for text written without spaces between words
-- (Chinese, Japanese, Thai...). The unicode61 index (messages_fts) sees
-- 日本語テキスト as one word, so テキスト could only be found as a prefix of
-- it, never as a part. A second FTS5 index with the trigram tokenizer finds
-- any substring of three characters or more.
--
-- It indexes only bodies with a non-ASCII character (length in characters
-- differs from length in bytes): text in those scripts is never ASCII, and
-- leaving out the plain-ASCII majority keeps the index, the import and
-- every write nearly as cheap as before. The content table is a view of
-- exactly those rows, so 'rebuild' and 'integrity-check' agree with the
-- triggers. Debian's sqlite3 3.40 shell reads it (trigram exists since
-- 3.34).
CREATE VIEW messages_non_ascii AS
SELECT id, body FROM messages
WHERE length(body) <> length(CAST(body AS BLOB));

CREATE VIRTUAL TABLE messages_trigram USING fts5 (
    body,
    content = 'messages_non_ascii',
    content_rowid = 'id',
    tokenize = 'trigram'
);

-- Existing messages are indexed now.
INSERT INTO messages_trigram (messages_trigram) VALUES ('rebuild');

-- Bulk inserts (import, sync) drop messages_trigram_insert inside their
-- transaction and index the new rows in one statement, as they do for
-- messages_fts (see src/store/fts.rs).
CREATE TRIGGER messages_trigram_insert AFTER INSERT ON messages
WHEN length(new.body) <> length(CAST(new.body AS BLOB)) BEGIN
    INSERT INTO messages_trigram (rowid, body) VALUES (new.id, new.body);
END;

CREATE TRIGGER messages_trigram_delete AFTER DELETE ON messages
WHEN length(old.body) <> length(CAST(old.body AS BLOB)) BEGIN
    INSERT INTO messages_trigram (messages_trigram, rowid, body)
    VALUES ('delete', old.id, old.body);
END;

CREATE TRIGGER messages_trigram_update AFTER UPDATE OF body ON messages BEGIN
    INSERT INTO messages_trigram (messages_trigram, rowid, body)
    SELECT 'delete', old.id, old.body
    WHERE length(old.body) <> length(CAST(old.body AS BLOB));
    INSERT INTO messages_trigram (rowid, body)
    SELECT new.id, new.body
    WHERE length(new.body) <> length(CAST(new.body AS BLOB));
END;

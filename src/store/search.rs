//! The queries behind `history`: a conversation's latest messages, filtered
//! by time, status and direction, and full-text search over bodies.
//!
//! Every query is built from fixed SQL fragments; user input only ever
//! travels as bound parameters.

use rusqlite::types::Value;
use rusqlite::Connection;

use super::messages::{message_from_row, Message, MESSAGE_COLUMNS, MESSAGE_FROM};
use super::status::{Direction, Status};
pub use super::when::TimeBound;
use super::{Error, Result, Store};
use crate::identity::PublicKey;

/// Marks the start of a match in [`Hit::snippet`].
pub const MATCH_START: char = '\u{2}';
/// Marks the end of a match in [`Hit::snippet`].
pub const MATCH_END: char = '\u{3}';

/// Which messages `history` looks at.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// One conversation, or all.
    pub peer: Option<PublicKey>,
    /// Created at or after (UTC, RFC 3339).
    pub since: Option<String>,
    /// Created strictly before (UTC, RFC 3339).
    pub until: Option<String>,
    /// Only this status.
    pub status: Option<Status>,
    /// Only this direction.
    pub direction: Option<Direction>,
}

/// How search hits are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Most recently stored first: instant however common the word.
    Newest,
    /// Best bm25 relevance first.
    Rank,
}

/// A search result.
#[derive(Debug, Clone)]
pub struct Hit {
    /// The message found.
    pub message: Message,
    /// An excerpt with each match between [`MATCH_START`] and [`MATCH_END`].
    pub snippet: String,
}

/// Builds the WHERE conditions and parameters for `filter`.
fn conditions(filter: &Filter) -> (Vec<&'static str>, Vec<Value>) {
    let mut sql = Vec::new();
    let mut params = Vec::new();
    if let Some(peer) = &filter.peer {
        sql.push("m.peer_key = ?");
        params.push(Value::Text(peer.to_base64()));
    }
    if let Some(since) = &filter.since {
        sql.push("m.created_at >= ?");
        params.push(Value::Text(since.clone()));
    }
    if let Some(until) = &filter.until {
        sql.push("m.created_at < ?");
        params.push(Value::Text(until.clone()));
    }
    if let Some(status) = filter.status {
        sql.push("m.status = ?");
        params.push(Value::Text(status.as_str().to_owned()));
    }
    if let Some(direction) = filter.direction {
        sql.push("m.direction = ?");
        params.push(Value::Text(direction.as_str().to_owned()));
    }
    (sql, params)
}

fn where_clause(parts: &[&str]) -> String {
    if parts.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", parts.join(" AND "))
    }
}

/// The latest `limit` messages matching `filter`, oldest first.
pub fn recent_tx(conn: &Connection, filter: &Filter, limit: usize) -> Result<Vec<Message>> {
    let mut messages = Vec::new();
    recent_each_tx(conn, filter, limit, |m| {
        messages.push(m);
        Ok::<_, Error>(())
    })?;
    Ok(messages)
}

/// Like [`recent_tx`], but hands each message to `each` as it is read,
/// so a long history is never held in memory at once.
pub fn recent_each_tx<E: From<Error>>(
    conn: &Connection,
    filter: &Filter,
    limit: usize,
    mut each: impl FnMut(Message) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let (parts, mut params) = conditions(filter);
    params.push(Value::Integer(clamp(limit)));
    let sql = format!(
        "SELECT * FROM (
             SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} {}
             ORDER BY m.created_at DESC, m.id DESC LIMIT ?
         ) ORDER BY 8, 1",
        where_clause(&parts)
    );
    let mut stmt = conn.prepare(&sql).map_err(Error::from)?;
    let mut rows = stmt
        .query(rusqlite::params_from_iter(params))
        .map_err(Error::from)?;
    while let Some(row) = rows.next().map_err(Error::from)? {
        each(message_from_row(row).map_err(Error::from)?)?;
    }
    Ok(())
}

/// Up to `limit` messages matching the raw FTS5 query `query` and `filter`
/// (`--fts`); [`search_words_tx`] takes what people type.
pub fn search_tx(
    conn: &Connection,
    query: &str,
    filter: &Filter,
    order: Order,
    limit: usize,
) -> Result<Vec<Hit>> {
    if query.trim().is_empty() {
        return Err(Error::BadSearch {
            query: query.to_owned(),
            problem: "the query is empty".to_owned(),
        });
    }
    let (mut parts, filter_params) = conditions(filter);
    parts.insert(0, "messages_fts MATCH ?");
    let mut params = vec![Value::Text(query.to_owned())];
    params.extend(filter_params);
    params.push(Value::Integer(clamp(limit)));
    let order_by = match order {
        Order::Newest => "messages_fts.rowid DESC",
        Order::Rank => "messages_fts.rank",
    };
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS},
             snippet(messages_fts, 0, char(2), char(3), '…', 12)
         FROM messages_fts
         JOIN messages AS m ON m.id = messages_fts.rowid
         LEFT JOIN contacts AS c ON c.public_key = m.peer_key
         {} ORDER BY {order_by} LIMIT ?",
        where_clause(&parts)
    );
    let run = || -> rusqlite::Result<Vec<Hit>> {
        let mut stmt = conn.prepare(&sql)?;
        let rows = stmt.query_map(rusqlite::params_from_iter(params), |row| {
            Ok(Hit {
                message: message_from_row(row)?,
                snippet: row.get(14)?,
            })
        })?;
        rows.collect()
    };
    run().map_err(|e| search_error(query, e))
}

/// Up to `limit` messages matching the plain-words query `query` (see
/// [`super::query`]) and `filter`: every word as a word prefix, text in
/// unspaced scripts as a substring, punctuation harmless. Never a syntax
/// error; only a blank query is refused.
pub fn search_words_tx(
    conn: &Connection,
    query: &str,
    filter: &Filter,
    order: Order,
    limit: usize,
) -> Result<Vec<Hit>> {
    let plan = super::query::plan(query);
    if plan.is_empty() {
        return Err(Error::BadSearch {
            query: query.to_owned(),
            problem: "the query is empty".to_owned(),
        });
    }
    let (filter_parts, filter_params) = conditions(filter);
    let mut parts: Vec<&str> = Vec::new();
    let mut params = Vec::new();
    let Driver {
        from,
        rowid,
        snippet,
        rank,
    } = Driver::choose(&plan, &mut parts, &mut params);
    for like in &plan.likes {
        parts.push("m.body LIKE ? ESCAPE '\\'");
        params.push(Value::Text(like.clone()));
    }
    parts.extend(filter_parts);
    params.extend(filter_params);
    params.push(Value::Integer(clamp(limit)));
    let order_by = match order {
        Order::Newest => format!("{rowid} DESC"),
        Order::Rank => rank.to_owned(),
    };
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS}, {snippet}
         FROM {from}
         LEFT JOIN contacts AS c ON c.public_key = m.peer_key
         {} ORDER BY {order_by} LIMIT ?",
        where_clause(&parts)
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), |row| {
        Ok(Hit {
            message: message_from_row(row)?,
            snippet: row.get(14)?,
        })
    })?;
    let mut hits = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    if plan.words.is_none() && plan.trigrams.is_none() {
        for hit in &mut hits {
            hit.snippet = mark_first(&hit.snippet, query.trim());
        }
    }
    Ok(hits)
}

/// The index that drives a plain-words search (newest first, it walks
/// rowids down and stops at the limit): words if any, else trigrams, else
/// the messages themselves; as FROM, row id, snippet and rank SQL.
struct Driver {
    from: &'static str,
    rowid: &'static str,
    snippet: &'static str,
    rank: &'static str,
}

impl Driver {
    /// Chooses the driver for `plan`, adding its MATCH conditions.
    fn choose(
        plan: &super::query::Plan,
        parts: &mut Vec<&'static str>,
        params: &mut Vec<Value>,
    ) -> Self {
        if let Some(words) = &plan.words {
            parts.push("messages_fts MATCH ?");
            params.push(Value::Text(words.clone()));
            if let Some(trigrams) = &plan.trigrams {
                parts.push(
                    "m.id IN (SELECT rowid FROM messages_trigram WHERE messages_trigram MATCH ?)",
                );
                params.push(Value::Text(trigrams.clone()));
            }
            Self {
                from: "messages_fts JOIN messages AS m ON m.id = messages_fts.rowid",
                rowid: "messages_fts.rowid",
                snippet: "snippet(messages_fts, 0, char(2), char(3), '…', 12)",
                rank: "messages_fts.rank",
            }
        } else if let Some(trigrams) = &plan.trigrams {
            parts.push("messages_trigram MATCH ?");
            params.push(Value::Text(trigrams.clone()));
            Self {
                from: "messages_trigram JOIN messages AS m ON m.id = messages_trigram.rowid",
                rowid: "messages_trigram.rowid",
                snippet: "snippet(messages_trigram, 0, char(2), char(3), '…', 24)",
                rank: "messages_trigram.rank",
            }
        } else {
            // Only 1-2 character substrings: no index can help; newest
            // first this still stops at the limit.
            Self {
                from: "messages AS m",
                rowid: "m.id",
                snippet: "m.body",
                rank: "m.id DESC",
            }
        }
    }
}

/// `body` with the first occurrence of `needle` between the match markers
/// (for hits found by `LIKE`, which has no snippet of its own).
fn mark_first(body: &str, needle: &str) -> String {
    match body.find(needle) {
        Some(at) if !needle.is_empty() => format!(
            "{}{MATCH_START}{needle}{MATCH_END}{}",
            &body[..at],
            &body[at + needle.len()..]
        ),
        _ => body.to_owned(),
    }
}

/// Names the problem of a malformed FTS5 query instead of passing SQLite's
/// raw text along alone.
fn search_error(query: &str, e: rusqlite::Error) -> Error {
    let text = e.to_string();
    let problem = if text.contains("unterminated string") {
        "a double quote is not closed".to_owned()
    } else if text.starts_with("fts5: syntax error near \"\"") {
        "the query ends where a word was expected (after AND, OR, NOT, or an open parenthesis)"
            .to_owned()
    } else if let Some(near) = text.strip_prefix("fts5: syntax error near ") {
        format!("the search syntax is wrong near {near}")
    } else if let Some(column) = text.strip_prefix("no such column: ") {
        format!("'{column}:' reads as a column name (the only column is 'body'); put words with ':' in double quotes")
    } else if text.contains("unknown special query") {
        "'*' marks a prefix and must follow a word, as in secr*".to_owned()
    } else if text.starts_with("fts5:") {
        format!("SQLite says: {text}")
    } else {
        return Error::Sqlite(e);
    };
    Error::BadSearch {
        query: query.to_owned(),
        problem,
    }
}

/// Up to `n` messages just before and just after `message` in its
/// conversation (by creation time), for `history -C N`.
pub fn context_tx(
    conn: &Connection,
    message: &Message,
    n: usize,
) -> Result<(Vec<Message>, Vec<Message>)> {
    let side = |cmp: &str, dir: &str| -> Result<Vec<Message>> {
        let sql = format!(
            "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
             WHERE m.peer_key = ?1 AND (m.created_at, m.id) {cmp} (?2, ?3)
             ORDER BY m.created_at {dir}, m.id {dir} LIMIT ?4"
        );
        let mut stmt = conn.prepare_cached(&sql)?;
        let rows = stmt.query_map(
            rusqlite::params![message.peer_key, message.created_at, message.id, clamp(n)],
            message_from_row,
        )?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    };
    let mut before = side("<", "DESC")?;
    before.reverse();
    Ok((before, side(">", "ASC")?))
}

fn clamp(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// See [`recent_tx`].
    pub fn recent(&self, filter: &Filter, limit: usize) -> Result<Vec<Message>> {
        recent_tx(&self.conn, filter, limit)
    }

    /// See [`recent_each_tx`].
    pub fn recent_each<E: From<Error>>(
        &self,
        filter: &Filter,
        limit: usize,
        each: impl FnMut(Message) -> std::result::Result<(), E>,
    ) -> std::result::Result<(), E> {
        recent_each_tx(&self.conn, filter, limit, each)
    }

    /// See [`search_tx`].
    pub fn search(
        &self,
        query: &str,
        filter: &Filter,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Hit>> {
        search_tx(&self.conn, query, filter, order, limit)
    }

    /// See [`search_words_tx`].
    pub fn search_words(
        &self,
        query: &str,
        filter: &Filter,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Hit>> {
        search_words_tx(&self.conn, query, filter, order, limit)
    }

    /// See [`context_tx`].
    pub fn context(&self, message: &Message, n: usize) -> Result<(Vec<Message>, Vec<Message>)> {
        context_tx(&self.conn, message, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::status::MessageId;
    use crate::store::test_util::temp_store;

    fn fill(store: &mut Store, peer: &PublicKey, bodies: &[&str]) {
        for (i, body) in bodies.iter().enumerate() {
            let at = format!("2026-01-01T00:00:{i:02}.000Z");
            store
                .insert_incoming(&MessageId::new_v7(), peer, body, &at)
                .unwrap();
        }
    }

    fn found(store: &Store, q: &str) -> Vec<String> {
        store
            .search(q, &Filter::default(), Order::Newest, 50)
            .unwrap()
            .into_iter()
            .map(|h| h.message.body)
            .collect()
    }

    #[test]
    fn search_ignores_case_and_accents() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        fill(&mut store, &peer, &["Uma Mensagém", "other"]);
        assert_eq!(found(&store, "mensagem"), ["Uma Mensagém"]);
        assert_eq!(found(&store, "MENSAGEM"), ["Uma Mensagém"]);
    }

    #[test]
    fn prefixes_phrases_and_operators_work() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        fill(
            &mut store,
            &peer,
            &["the secret plan", "plan a secret", "secretary", "nothing"],
        );
        assert_eq!(
            found(&store, "secr*"),
            ["secretary", "plan a secret", "the secret plan"]
        );
        assert_eq!(found(&store, "\"secret plan\""), ["the secret plan"]);
        assert_eq!(found(&store, "secret NOT the"), ["plan a secret"]);
        assert_eq!(
            found(&store, "nothing OR secretary"),
            ["nothing", "secretary"]
        );
        assert_eq!(found(&store, "secret AND plan").len(), 2);
    }

    #[test]
    fn malformed_queries_are_named() {
        let (_dir, store) = temp_store();
        for q in [
            "\"unbalanced",
            "AND",
            "secret AND",
            "(a",
            "",
            " ",
            "*",
            "a:b",
        ] {
            let err = store.search(q, &Filter::default(), Order::Rank, 5);
            assert!(matches!(err, Err(Error::BadSearch { .. })), "{q}: {err:?}");
        }
    }

    #[test]
    fn snippets_mark_matches() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        fill(&mut store, &peer, &["a secret here"]);
        let hits = store
            .search("secret", &Filter::default(), Order::Rank, 5)
            .unwrap();
        assert_eq!(hits[0].snippet, "a \u{2}secret\u{3} here");
    }

    #[test]
    fn recent_is_the_latest_n_in_order_with_filters() {
        let (_dir, mut store) = temp_store();
        let (a, b) = (
            Identity::generate().public_key(),
            Identity::generate().public_key(),
        );
        fill(&mut store, &a, &["a0", "a1", "a2"]);
        fill(&mut store, &b, &["b0"]);
        let bodies = |f: &Filter, n| -> Vec<String> {
            store
                .recent(f, n)
                .unwrap()
                .into_iter()
                .map(|m| m.body)
                .collect()
        };
        let only_a = Filter {
            peer: Some(a),
            ..Filter::default()
        };
        assert_eq!(bodies(&only_a, 2), ["a1", "a2"]);
        let window = Filter {
            since: Some("2026-01-01T00:00:01.000Z".into()),
            until: Some("2026-01-01T00:00:02.000Z".into()),
            ..Filter::default()
        };
        assert_eq!(bodies(&window, 10), ["a1"]);
        let outgoing = Filter {
            direction: Some(Direction::Out),
            ..Filter::default()
        };
        assert!(bodies(&outgoing, 10).is_empty());
    }

    #[test]
    fn context_takes_neighbours_in_the_conversation() {
        let (_dir, mut store) = temp_store();
        let a = Identity::generate().public_key();
        fill(&mut store, &a, &["m0", "m1", "m2", "m3"]);
        let hit = &store
            .search("m2", &Filter::default(), Order::Newest, 1)
            .unwrap()[0];
        let (before, after) = store.context(&hit.message, 1).unwrap();
        assert_eq!(before[0].body, "m1");
        assert_eq!(after[0].body, "m3");
    }

    fn words(store: &Store, q: &str) -> Vec<String> {
        store
            .search_words(q, &Filter::default(), Order::Newest, 50)
            .unwrap()
            .into_iter()
            .map(|h| h.message.body)
            .collect()
    }

    #[test]
    fn plain_words_take_punctuation_and_find_substrings_in_cjk() {
        let (_dir, mut store) = temp_store();
        let peer = Identity::generate().public_key();
        fill(
            &mut store,
            &peer,
            &[
                "don't worry",
                "I write C++ daily",
                "cats",
                "wow!!!",
                "日本語テキスト",
                "send an e-mail",
            ],
        );
        assert_eq!(words(&store, "don't"), ["don't worry"]);
        assert_eq!(words(&store, "c++"), ["I write C++ daily"]);
        assert_eq!(words(&store, "!!!"), ["wow!!!"]);
        assert_eq!(words(&store, "テキスト"), ["日本語テキスト"]);
        assert_eq!(words(&store, "語テ"), ["日本語テキスト"]);
        assert_eq!(words(&store, "E-MAIL"), ["send an e-mail"]);
        assert_eq!(words(&store, "AND"), Vec::<String>::new());
        let hit = &store
            .search_words("テキスト", &Filter::default(), Order::Rank, 5)
            .unwrap()[0];
        assert_eq!(hit.snippet, "日本語\u{2}テキスト\u{3}");
        assert!(matches!(
            store.search_words(" ", &Filter::default(), Order::Newest, 5),
            Err(Error::BadSearch { .. })
        ));
    }

    #[test]
    fn time_bounds_parse_dates_and_times() {
        // Dates are whole days in the local zone (UTC here); "yesterday"
        // reads since issue 12 (see store::when for the other forms).
        let now = chrono::Utc::now();
        let day = TimeBound::parse_at("2026-11-25", now, &chrono::Utc).unwrap();
        assert_eq!(day.as_since(), "2026-11-25T00:00:00.000Z");
        assert_eq!(day.as_until(), "2026-11-26T00:00:00.000Z");
        let t = TimeBound::parse("2026-11-25T10:00:00+01:00").unwrap();
        assert_eq!(t.as_since(), "2026-11-25T09:00:00.000Z");
        assert!(TimeBound::parse("yesterday").is_ok());
        assert!(TimeBound::parse("the day after").is_err());
    }
}

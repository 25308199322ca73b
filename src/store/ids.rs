//! Finding messages by the id a person types: the short id listings show
//! (see [`MessageId::short`]), any unique beginning of it, or a full id.
//!
//! Like git's abbreviated hashes: a prefix that fits one message names it,
//! one that fits several is refused with the candidates listed, and one
//! that fits none is refused as unknown.

use rusqlite::types::Value;

use super::messages::{message_from_row, Message, MESSAGE_COLUMNS, MESSAGE_FROM};
use super::status::{MessageId, SHORT_ID_LEN};
use super::{Error, Result, Store};

/// The fewest hex digits accepted as a short id prefix: fewer would fit
/// too many messages to be of use.
pub const MIN_PREFIX_LEN: usize = 4;

/// At most this many candidates are named when a prefix is ambiguous.
const MAX_CANDIDATES: usize = 8;

/// A message id as typed, checked for form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdQuery {
    /// A whole id, in any form a UUID is written.
    Full(MessageId),
    /// The beginning of a short id, lower case.
    Prefix(String),
}

impl IdQuery {
    /// Parses what the user typed. The error says what an id looks like.
    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        if let Ok(id) = MessageId::parse(text) {
            return Ok(Self::Full(id));
        }
        let hex = text.chars().all(|c| c.is_ascii_hexdigit());
        if hex && (MIN_PREFIX_LEN..=SHORT_ID_LEN).contains(&text.len()) {
            return Ok(Self::Prefix(text.to_ascii_lowercase()));
        }
        Err(format!(
            "'{text}' is not a message id: give the {SHORT_ID_LEN}-character id 'history' shows \
             (at least its first {MIN_PREFIX_LEN} characters) or a full id"
        ))
    }

    /// The query as typed back to the user.
    pub fn as_text(&self) -> String {
        match self {
            Self::Full(id) => id.to_text(),
            Self::Prefix(p) => p.clone(),
        }
    }
}

/// Which messages a lookup considers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Every stored message.
    All,
    /// Our own messages not sent yet: pending or failed.
    Outbox,
}

impl Scope {
    fn condition(self) -> &'static str {
        match self {
            Scope::All => "1",
            // Comparisons rather than IN, so messages_status serves both.
            Scope::Outbox => {
                "m.direction = 'out' AND (m.status = 'pending' OR m.status = 'failed')"
            }
        }
    }
}

/// Every message in `scope` that `query` fits, oldest first.
pub fn find_tx(conn: &rusqlite::Connection, query: &IdQuery, scope: Scope) -> Result<Vec<Message>> {
    let (test, params) = match query {
        IdQuery::Full(id) => ("m.msg_id = ?1", vec![Value::Text(id.to_text())]),
        // The short id is the text's last SHORT_ID_LEN characters; a
        // prefix of it starts at the same place.
        IdQuery::Prefix(p) => (
            "substr(m.msg_id, -?2, ?3) = ?1",
            vec![
                Value::Text(p.clone()),
                Value::Integer(SHORT_ID_LEN as i64),
                Value::Integer(p.len() as i64),
            ],
        ),
    };
    // No ORDER BY: SQLite would walk messages_time to avoid a sort and
    // look up every row on the way (seconds at a million messages, against
    // a fraction of a second for one scan). The few matches sort here.
    let sql = format!(
        "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM} WHERE {test} AND {}",
        scope.condition()
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(params), message_from_row)?;
    let mut found: Vec<Message> = rows.collect::<rusqlite::Result<_>>()?;
    found.sort_by(|a, b| (&a.created_at, a.id).cmp(&(&b.created_at, b.id)));
    Ok(found)
}

/// The one message in `scope` that `query` names; an error naming the
/// candidates when it fits several, and one saying so when it fits none.
pub fn resolve_tx(conn: &rusqlite::Connection, query: &IdQuery, scope: Scope) -> Result<Message> {
    let mut found = find_tx(conn, query, scope)?;
    match found.len() {
        0 => Err(Error::NoSuchId(query.as_text())),
        1 => Ok(found.remove(0)),
        n => {
            let mut candidates: Vec<String> =
                found.iter().take(MAX_CANDIDATES).map(describe).collect();
            if n > MAX_CANDIDATES {
                candidates.push(format!("{} more", n - MAX_CANDIDATES));
            }
            Err(Error::AmbiguousId {
                id: query.as_text(),
                candidates,
            })
        }
    }
}

/// `0193…-…ab12cd34 (to bob, 2026-01-01T10:00:00.000Z)`: enough to tell
/// candidates apart, with the full id to copy.
fn describe(m: &Message) -> String {
    let who = m.contact.clone().unwrap_or_else(|| "an unknown key".into());
    let way = match m.direction {
        super::Direction::Out => "to",
        super::Direction::In => "from",
    };
    format!("{} ({way} {who}, {})", m.msg_id, m.created_at)
}

impl Store {
    /// See [`resolve_tx`].
    pub fn resolve_id(&self, query: &IdQuery, scope: Scope) -> Result<Message> {
        resolve_tx(&self.conn, query, scope)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    fn insert(store: &mut Store, id: &str) {
        let peer = Identity::generate().public_key();
        store
            .insert_incoming(
                &MessageId::parse(id).unwrap(),
                &peer,
                "x",
                "2026-01-01T00:00:00.000Z",
            )
            .unwrap();
    }

    #[test]
    fn short_ids_are_the_random_tail() {
        let a = MessageId::new_v7();
        let b = MessageId::new_v7();
        assert_eq!(a.short().len(), SHORT_ID_LEN);
        assert!(a.to_text().ends_with(&a.short()));
        // Made in the same millisecond, they differ at once.
        assert_ne!(a.short(), b.short());
    }

    #[test]
    fn parses_prefixes_and_full_ids_and_refuses_the_rest() {
        assert_eq!(
            IdQuery::parse("AB12").unwrap(),
            IdQuery::Prefix("ab12".into())
        );
        let id = MessageId::new_v7();
        assert_eq!(IdQuery::parse(&id.to_text()).unwrap(), IdQuery::Full(id));
        for bad in ["ab1", "xyz12345", "ab12cd34e", ""] {
            assert!(IdQuery::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_unique_prefix_resolves_and_others_are_refused() {
        let (_dir, mut store) = temp_store();
        insert(&mut store, "00000000-0000-7000-8000-0000aaaa0001");
        insert(&mut store, "00000000-0000-7000-8000-0000aaaa0002");
        insert(&mut store, "00000000-0000-7000-8000-0000bbbb0003");
        let found = store
            .resolve_id(&IdQuery::parse("bbbb").unwrap(), Scope::All)
            .unwrap();
        assert_eq!(found.msg_id.short(), "bbbb0003");
        let err = store
            .resolve_id(&IdQuery::parse("aaaa").unwrap(), Scope::All)
            .unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, Error::AmbiguousId { .. }), "{text}");
        assert!(
            text.contains("0000aaaa0001") && text.contains("0000aaaa0002"),
            "{text}"
        );
        let err = store
            .resolve_id(&IdQuery::parse("cccc").unwrap(), Scope::All)
            .unwrap_err();
        assert!(matches!(err, Error::NoSuchId(_)), "{err}");
        // The outbox scope sees only our own unsent messages.
        let err = store
            .resolve_id(&IdQuery::parse("bbbb").unwrap(), Scope::Outbox)
            .unwrap_err();
        assert!(matches!(err, Error::NoSuchId(_)), "{err}");
    }
}

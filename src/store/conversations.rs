//! Conversations at a glance: for each key this profile has messages
//! with, the newest message and how many received messages are unread.
//! Behind `inbox`, `chat` with no contact and the columns of `contacts`.

use std::collections::HashMap;

use super::messages::{message_from_row, Message, MESSAGE_COLUMNS, MESSAGE_FROM};
use super::{Result, Store};
use crate::identity::PublicKey;

/// One conversation's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conversation {
    /// The other side.
    pub peer: PublicKey,
    /// Received messages not read yet (`received`, not `read`).
    pub unread: u64,
    /// The newest message (by its author's clock); its `contact` is the
    /// peer's name when the peer is a contact.
    pub last: Message,
}

impl Store {
    /// Every conversation with at least one message, newest first.
    pub fn conversations(&self) -> Result<Vec<Conversation>> {
        let unread = self.unread_counts()?;
        // A loose index scan over messages_peer_time: one seek per peer,
        // however many messages there are.
        let mut peers = self.conn.prepare(
            "WITH RECURSIVE peers (k) AS (
                 SELECT min(peer_key) FROM messages
                 UNION ALL
                 SELECT (SELECT min(peer_key) FROM messages WHERE peer_key > k)
                 FROM peers WHERE k IS NOT NULL
             )
             SELECT k FROM peers WHERE k IS NOT NULL",
        )?;
        let keys: Vec<String> = peers
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut last = self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM {MESSAGE_FROM}
             WHERE m.peer_key = ?1
             ORDER BY m.created_at DESC, m.id DESC LIMIT 1"
        ))?;
        let mut all = Vec::with_capacity(keys.len());
        for key in keys {
            // A damaged key cannot be shown or written to: skip it rather
            // than hide every other conversation.
            let Ok(peer) = PublicKey::parse(&key) else {
                continue;
            };
            let message = last.query_row([&key], message_from_row)?;
            all.push(Conversation {
                peer,
                unread: unread.get(&key).copied().unwrap_or(0),
                last: message,
            });
        }
        all.sort_by(|a, b| (&b.last.created_at, b.last.id).cmp(&(&a.last.created_at, a.last.id)));
        Ok(all)
    }

    /// Unread (received, not yet read) messages per peer key (base64).
    pub fn unread_counts(&self) -> Result<HashMap<String, u64>> {
        // Only incoming messages can be 'received'; messages_status finds
        // them without reading the rest of the history.
        let mut stmt = self.conn.prepare(
            "SELECT peer_key, count(*) FROM messages WHERE status = 'received' GROUP BY peer_key",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        let mut counts = HashMap::new();
        for row in rows {
            let (key, n) = row?;
            counts.insert(key, u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }
}

#[cfg(test)]
mod tests {
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;
    use crate::store::{ContactName, MessageId};

    #[test]
    fn newest_conversation_first_with_unread_counts() {
        let (_dir, mut store) = temp_store();
        let (bob, carol) = (
            Identity::generate().public_key(),
            Identity::generate().public_key(),
        );
        store
            .add_contact(&ContactName::parse("bob").unwrap(), &bob)
            .unwrap();
        let first = MessageId::new_v7();
        store
            .insert_incoming(&first, &bob, "one", "2026-01-01T00:00:00.000Z")
            .unwrap();
        store
            .insert_incoming(
                &MessageId::new_v7(),
                &bob,
                "two",
                "2026-01-01T00:00:01.000Z",
            )
            .unwrap();
        store
            .insert_incoming(
                &MessageId::new_v7(),
                &carol,
                "hey",
                "2026-01-02T00:00:00.000Z",
            )
            .unwrap();
        let all = store.conversations().unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].peer, all[0].unread), (carol, 1));
        assert_eq!(all[0].last.contact, None);
        assert_eq!((all[1].peer, all[1].unread), (bob, 2));
        assert_eq!(all[1].last.body, "two");
        assert_eq!(all[1].last.contact.as_deref(), Some("bob"));

        store
            .mark_incoming_read(&bob, &first, "2026-01-03T00:00:00.000Z")
            .unwrap();
        // Our own reply is the newest message now; reading one leaves one.
        store.insert_outgoing(&bob, "reply").unwrap();
        let all = store.conversations().unwrap();
        assert_eq!((all[0].peer, all[0].unread), (bob, 1));
        assert_eq!(all[0].last.body, "reply");
    }
}

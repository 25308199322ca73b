//! The `contacts` table: a name for each public key this profile talks to.
//!
//! Names are unique ignoring case (in every script: the folded name is kept
//! in `name_key`), and so are keys. Names are stored in NFC, hold no
//! invisible or text-direction characters, and a new name may not be
//! confusable with an existing one (Unicode TR39 skeletons), so that `bоb`
//! with a Cyrillic `о` can never pass for `bob`. Databases from before
//! these rules may hold other names: they open and are found all the same. Messages refer to peers by key, not by
//! contact row, so renaming or removing a contact never touches history.

use std::fmt;

use rusqlite::{params, OptionalExtension, Row};
use unicode_normalization::UnicodeNormalization;
use unicode_security::confusable_detection::skeleton;

use super::sync::{queue_sync_tx, ContactChange, SyncItem};
use super::{Error, Result, Store};
use crate::client::ServerUrl;
use crate::clock;
use crate::identity::PublicKey;
use crate::render;

/// The longest contact name accepted, in characters.
pub const MAX_CONTACT_NAME_CHARS: usize = 64;

/// A validated contact name: trimmed, in NFC, 1 to 64 characters, with
/// nothing invisible (see [`render::is_hidden`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactName(String);

impl ContactName {
    /// Validates a contact name; surrounding white space is dropped and the
    /// rest normalised to NFC (`Zoë` typed either way is one name).
    pub fn parse(name: &str) -> Result<Self> {
        let name: String = name.trim().nfc().collect();
        let bad = |why: &str| Err(Error::BadContactName(why.to_owned()));
        if name.is_empty() {
            return bad("a contact name cannot be empty");
        }
        if name.chars().count() > MAX_CONTACT_NAME_CHARS {
            return bad("a contact name can be at most 64 characters long");
        }
        if let Some(c) = name.chars().find(|&c| render::is_hidden(c)) {
            // Shown escaped: the point is that it cannot be seen.
            return bad(&format!(
                "a contact name cannot contain control, invisible or text-direction \
                 characters (found {}): use visible characters only",
                render::untrusted_inline(&c.to_string())
            ));
        }
        if name.contains("://") {
            // `chat ws://host/ws bob` takes a URL where a name would go.
            return bad("a contact name cannot contain '://' (it would read as a server URL)");
        }
        Ok(Self(name))
    }

    /// The name as typed.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name folded for case-insensitive comparison.
    fn key(&self) -> String {
        fold(&self.0)
    }
}

impl fmt::Display for ContactName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The form names are compared in: lower case, NFC.
fn fold(name: &str) -> String {
    name.to_lowercase().nfc().collect()
}

/// Whether two names could be taken for each other on screen: the same
/// TR39 skeleton as typed or ignoring case (`bоb` with a Cyrillic `о` and
/// `bob`; `Zoë` in NFD and in NFC; `BOB` and `bоb`).
fn confusable(a: &str, b: &str) -> bool {
    let same = |a: &str, b: &str| skeleton(a).eq(skeleton(b));
    same(a, b) || same(&fold(a), &fold(b))
}

/// The characters of `name` that `existing` does not have, beyond ASCII,
/// as code points: what makes a look-alike differ.
fn odd_characters(name: &str, existing: &str) -> String {
    let mut odd: Vec<String> = Vec::new();
    for c in name.chars() {
        let code = format!("U+{:04X}", u32::from(c));
        if !c.is_ascii() && !existing.contains(c) && !odd.contains(&code) {
            odd.push(code);
        }
    }
    odd.join(", ")
}

/// A saved contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// Row id.
    pub id: i64,
    /// The name the user gave.
    pub name: String,
    /// The contact's public key.
    pub key: PublicKey,
    /// When the contact was added (UTC, RFC 3339).
    pub added_at: String,
    /// The contact's home router, where messages to them go; `None`: the
    /// same router as this profile's (a bare key, or a contact saved
    /// before home routers).
    pub router: Option<ServerUrl>,
}

const CONTACT_COLUMNS: &str = "id, name, public_key, added_at, router";

fn contact_from_row(row: &Row<'_>) -> rusqlite::Result<Contact> {
    let key_text: String = row.get(2)?;
    let key = PublicKey::parse(&key_text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let router: Option<String> = row.get(4)?;
    let router = router
        .map(|text| {
            ServerUrl::parse(&text).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    4,
                    rusqlite::types::Type::Text,
                    Box::new(Error::Corrupt {
                        what: "contact router",
                        detail: e,
                    }),
                )
            })
        })
        .transpose()?;
    Ok(Contact {
        id: row.get(0)?,
        name: row.get(1)?,
        key,
        added_at: row.get(3)?,
        router,
    })
}

/// A key this profile has messages with but no contact name for: a
/// stranger who wrote, or a contact that was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnknownPeer {
    /// The key.
    pub key: PublicKey,
    /// How many messages are stored with it.
    pub messages: i64,
    /// The newest message's time (author's clock, UTC RFC 3339).
    pub last_at: String,
}

impl Store {
    /// Keys with stored messages and no contact, newest conversation first.
    pub fn unknown_peers(&self) -> Result<Vec<UnknownPeer>> {
        // A loose index scan over messages_peer_time: one index seek per
        // distinct peer, however many messages there are.
        let mut stmt = self.conn.prepare(
            "WITH RECURSIVE peers (k) AS (
                 SELECT min(peer_key) FROM messages
                 UNION ALL
                 SELECT (SELECT min(peer_key) FROM messages WHERE peer_key > k)
                 FROM peers WHERE k IS NOT NULL
             )
             SELECT k,
                    (SELECT count(*) FROM messages WHERE peer_key = k),
                    (SELECT max(created_at) FROM messages WHERE peer_key = k) AS last_at
             FROM peers
             WHERE k IS NOT NULL
               AND NOT EXISTS (SELECT 1 FROM contacts WHERE public_key = k)
             ORDER BY last_at DESC",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut peers = Vec::new();
        for row in rows {
            let (key, messages, last_at) = row?;
            // A damaged key cannot be shown as a fingerprint; skip it
            // rather than hide every other stranger.
            if let Ok(key) = PublicKey::parse(&key) {
                peers.push(UnknownPeer {
                    key,
                    messages,
                    last_at,
                });
            }
        }
        Ok(peers)
    }

    /// Saves `key` under `name`. Refuses the profile's own key, a name in
    /// use (ignoring case) and a key already saved under another name. The
    /// profile's other devices are told (see [`sync_contact_tx`]).
    pub fn add_contact(&mut self, name: &ContactName, key: &PublicKey) -> Result<Contact> {
        self.add_contact_at(name, key, None)
    }

    /// [`Store::add_contact`] with the contact's home router. With none
    /// given, a router the key announced (a stranger who wrote) is used;
    /// else the contact is on "the same router as mine".
    pub fn add_contact_at(
        &mut self,
        name: &ContactName,
        key: &PublicKey,
        router: Option<&ServerUrl>,
    ) -> Result<Contact> {
        if let Some(own) = self.public_key()? {
            if own == *key {
                return Err(Error::OwnKey);
            }
        }
        let tx = self.transaction()?;
        if let Some(existing) = find_by_key(&tx, key)? {
            return Err(Error::KeyTaken(existing.name));
        }
        if let Some(existing) = find_by_name(&tx, name)? {
            return Err(Error::NameTaken(existing.name));
        }
        if let Some(existing) = find_look_alike(&tx, name, None)? {
            return Err(look_alike_error(name, existing));
        }
        let now = clock::now();
        let router = match router {
            Some(router) => Some(router.clone()),
            None => super::home::announced_router_tx(&tx, key)?,
        };
        tx.execute(
            "INSERT INTO contacts (name, name_key, public_key, added_at, router)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                name.as_str(),
                name.key(),
                key.to_base64(),
                now,
                router.as_ref().map(ServerUrl::as_str)
            ],
        )?;
        tell_devices(&tx, ContactChange::Add, key, Some(name), &now)?;
        let contact = find_by_key(&tx, key)?.ok_or(Error::Corrupt {
            what: "contact",
            detail: "the new row vanished".into(),
        })?;
        tx.commit()?;
        Ok(contact)
    }

    /// Every contact, ordered by name.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let mut stmt = self.conn.prepare(&format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts ORDER BY name_key"
        ))?;
        let rows = stmt.query_map([], contact_from_row)?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The contact called `name` (ignoring case and Unicode normal form),
    /// or [`Error::UnknownContact`] with names that look alike.
    pub fn contact(&self, name: &str) -> Result<Contact> {
        let wanted = fold(name.trim());
        if let Some(contact) = find_by_name_key(&self.conn, &wanted)? {
            return Ok(contact);
        }
        // A name saved before names were normalised may be stored in
        // another form (NFD, say): compare every name, they are few.
        if let Some(contact) = self
            .contacts()?
            .into_iter()
            .find(|c| fold(&c.name) == wanted)
        {
            return Ok(contact);
        }
        Err(Error::UnknownContact {
            name: name.to_owned(),
            suggestions: self.similar_names(name)?,
        })
    }

    /// The contact saved with `key`, if any.
    pub fn contact_by_key(&self, key: &PublicKey) -> Result<Option<Contact>> {
        find_by_key(&self.conn, key)
    }

    /// Removes the contact called `name`. Messages exchanged with its key
    /// stay in the history. The profile's other devices are told.
    pub fn remove_contact(&mut self, name: &str) -> Result<Contact> {
        let contact = self.contact(name)?;
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM contacts WHERE id = ?1", [contact.id])?;
        tell_devices(
            &tx,
            ContactChange::Remove,
            &contact.key,
            None,
            &clock::now(),
        )?;
        tx.commit()?;
        Ok(contact)
    }

    /// Gives the contact called `old` the name `new`. The profile's other
    /// devices are told.
    pub fn rename_contact(&mut self, old: &str, new: &ContactName) -> Result<Contact> {
        let contact = self.contact(old)?;
        let tx = self.transaction()?;
        if let Some(other) = find_by_name(&tx, new)? {
            if other.id != contact.id {
                return Err(Error::NameTaken(other.name));
            }
        }
        if let Some(other) = find_look_alike(&tx, new, Some(contact.id))? {
            return Err(look_alike_error(new, other));
        }
        super::verify::follow_rename(&tx, contact.id, &new.key())?;
        tx.execute(
            "UPDATE contacts SET name = ?1, name_key = ?2 WHERE id = ?3",
            params![new.as_str(), new.key(), contact.id],
        )?;
        tell_devices(
            &tx,
            ContactChange::Rename,
            &contact.key,
            Some(new),
            &clock::now(),
        )?;
        tx.commit()?;
        Ok(Contact {
            name: new.as_str().to_owned(),
            ..contact
        })
    }

    /// Up to three contact names that look like `name`, best first.
    fn similar_names(&self, name: &str) -> Result<Vec<String>> {
        let wanted = fold(name.trim());
        let mut scored: Vec<(f64, String)> = self
            .contacts()?
            .into_iter()
            .filter_map(|c| {
                let folded = fold(&c.name);
                let score = if !wanted.is_empty()
                    && (folded.contains(&wanted) || wanted.contains(&folded))
                {
                    1.0
                } else {
                    strsim::jaro_winkler(&wanted, &folded)
                };
                (score >= 0.8).then_some((score, c.name))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(scored.into_iter().take(3).map(|(_, n)| n).collect())
    }
}

/// What [`merge_contact_tx`] did with an imported contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Merge {
    /// A new contact was saved.
    Added,
    /// The same key was already saved under the same name.
    Unchanged,
    /// The key is already saved under this other name, which is kept.
    KeptName(String),
    /// Another key already uses the name: the contact was not saved.
    NameClash,
    /// The name is confusable with this existing contact's: not saved.
    LookAlike(String),
    /// The key is the profile's own.
    OwnKey,
}

/// Saves an imported contact unless its key is known or its name is taken:
/// contacts merge by key, and an existing name is never overwritten.
pub(crate) fn merge_contact_tx(
    conn: &rusqlite::Connection,
    name: &ContactName,
    key: &PublicKey,
    own: Option<&str>,
    added_at: &str,
) -> Result<Merge> {
    let key_text = key.to_base64();
    if own == Some(key_text.as_str()) {
        return Ok(Merge::OwnKey);
    }
    if let Some(existing) = find_by_key(conn, key)? {
        return Ok(if existing.name == name.as_str() {
            Merge::Unchanged
        } else {
            Merge::KeptName(existing.name)
        });
    }
    if find_by_name(conn, name)?.is_some() {
        return Ok(Merge::NameClash);
    }
    if let Some(existing) = find_look_alike(conn, name, None)? {
        return Ok(Merge::LookAlike(existing.name));
    }
    conn.execute(
        "INSERT INTO contacts (name, name_key, public_key, added_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![name.as_str(), name.key(), key_text, added_at],
    )?;
    Ok(Merge::Added)
}

/// Queues a contact change for the profile's other devices.
pub(super) fn tell_devices(
    conn: &rusqlite::Connection,
    change: ContactChange,
    key: &PublicKey,
    name: Option<&ContactName>,
    at: &str,
) -> Result<()> {
    let item = SyncItem::Contact {
        change,
        key: *key,
        name: name.map(|n| n.as_str().to_owned()),
    };
    queue_sync_tx(conn, &item, at).map(drop)
}

/// What [`sync_contact_tx`] did with a change made on another device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SyncedContact {
    /// The contact was saved, or renamed, under this name.
    Named(String),
    /// The contact was removed.
    Removed,
    /// Nothing changed: already so, the profile's own key, a key not
    /// saved here (remove), a name that is no valid contact name, or no
    /// free name.
    Unchanged,
}

/// Applies a contact change made on another device of this identity
/// (`own` is its key), without telling any device again: that would echo.
///
/// Contacts follow by key. An add or a rename saves the key under the
/// name, or renames it (an add of a key known here under another name
/// renames it too: the latest change wins, on every device alike). A name
/// taken here by another key, or confusable with one, is not overwritten:
/// the contact gets the first free of `name (2)` to `name (9)` on this
/// device, where the user sees both and can rename either (and if all are
/// taken, the change is left out). A remove deletes the contact with the
/// key; its messages stay.
pub(crate) fn sync_contact_tx(
    conn: &rusqlite::Connection,
    own: Option<&PublicKey>,
    change: ContactChange,
    key: &PublicKey,
    name: Option<&str>,
    at: &str,
) -> Result<SyncedContact> {
    if own == Some(key) {
        return Ok(SyncedContact::Unchanged);
    }
    let existing = find_by_key(conn, key)?;
    if change == ContactChange::Remove {
        let Some(contact) = existing else {
            return Ok(SyncedContact::Unchanged);
        };
        conn.execute("DELETE FROM contacts WHERE id = ?1", [contact.id])?;
        return Ok(SyncedContact::Removed);
    }
    let Some(wanted) = name.and_then(|n| ContactName::parse(n).ok()) else {
        return Ok(SyncedContact::Unchanged);
    };
    let except = existing.as_ref().map(|c| c.id);
    let Some(name) = free_name(conn, &wanted, except)? else {
        return Ok(SyncedContact::Unchanged);
    };
    match existing {
        Some(contact) if contact.name == name.as_str() => return Ok(SyncedContact::Unchanged),
        Some(contact) => {
            super::verify::follow_rename(conn, contact.id, &name.key())?;
            conn.execute(
                "UPDATE contacts SET name = ?1, name_key = ?2 WHERE id = ?3",
                params![name.as_str(), name.key(), contact.id],
            )?;
        }
        None => {
            conn.execute(
                "INSERT INTO contacts (name, name_key, public_key, added_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![name.as_str(), name.key(), key.to_base64(), at],
            )?;
        }
    }
    Ok(SyncedContact::Named(name.0))
}

/// `name`, or the first of `name (2)` to `name (9)` (shortened to fit)
/// that no contact but `except` has or looks like.
fn free_name(
    conn: &rusqlite::Connection,
    name: &ContactName,
    except: Option<i64>,
) -> Result<Option<ContactName>> {
    for n in 1..=9 {
        let candidate = if n == 1 {
            name.clone()
        } else {
            let suffix = format!(" ({n})");
            let room = MAX_CONTACT_NAME_CHARS - suffix.chars().count();
            let base: String = name.as_str().chars().take(room).collect();
            match ContactName::parse(&format!("{}{suffix}", base.trim_end())) {
                Ok(candidate) => candidate,
                Err(_) => continue,
            }
        };
        let same = find_by_name(conn, &candidate)?.is_some_and(|c| Some(c.id) != except);
        if !same && find_look_alike(conn, &candidate, except)?.is_none() {
            return Ok(Some(candidate));
        }
    }
    Ok(None)
}

fn find_by_name(conn: &rusqlite::Connection, name: &ContactName) -> Result<Option<Contact>> {
    find_by_name_key(conn, &name.key())
}

fn find_by_name_key(conn: &rusqlite::Connection, key: &str) -> Result<Option<Contact>> {
    Ok(conn
        .query_row(
            &format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE name_key = ?1"),
            [key],
            contact_from_row,
        )
        .optional()?)
}

/// A contact other than `except` whose name could be taken for `name`.
/// Skeletons are computed here rather than stored: a profile has few
/// contacts, and the database needs no new column.
fn find_look_alike(
    conn: &rusqlite::Connection,
    name: &ContactName,
    except: Option<i64>,
) -> Result<Option<Contact>> {
    let mut stmt = conn.prepare(&format!("SELECT {CONTACT_COLUMNS} FROM contacts"))?;
    let rows = stmt.query_map([], contact_from_row)?;
    for row in rows {
        let contact = row?;
        if Some(contact.id) != except && confusable(name.as_str(), &contact.name) {
            return Ok(Some(contact));
        }
    }
    Ok(None)
}

fn look_alike_error(name: &ContactName, existing: Contact) -> Error {
    Error::LookAlike {
        odd: odd_characters(name.as_str(), &existing.name),
        name: name.as_str().to_owned(),
        existing: existing.name,
    }
}

pub(super) fn find_by_key(conn: &rusqlite::Connection, key: &PublicKey) -> Result<Option<Contact>> {
    Ok(conn
        .query_row(
            &format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE public_key = ?1"),
            [key.to_base64()],
            contact_from_row,
        )
        .optional()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;

    fn name(n: &str) -> ContactName {
        ContactName::parse(n).unwrap()
    }

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    #[test]
    fn adds_lists_renames_and_removes() {
        let (_dir, mut store) = temp_store();
        let bob = key();
        store.add_contact(&name("bob"), &bob).unwrap();
        store.add_contact(&name("Alice"), &key()).unwrap();
        let names: Vec<_> = store
            .contacts()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["Alice", "bob"]);

        store.rename_contact("BOB", &name("Robert")).unwrap();
        assert_eq!(store.contact("robert").unwrap().key, bob);
        store.remove_contact("Robert").unwrap();
        assert!(store.contact_by_key(&bob).unwrap().is_none());
    }

    #[test]
    fn names_are_unique_ignoring_case_in_any_script() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("Zoë"), &key()).unwrap();
        assert!(matches!(
            store.add_contact(&name("ZOË"), &key()),
            Err(Error::NameTaken(n)) if n == "Zoë"
        ));
    }

    #[test]
    fn a_key_is_saved_under_one_name_only() {
        let (_dir, mut store) = temp_store();
        let k = key();
        store.add_contact(&name("bob"), &k).unwrap();
        assert!(matches!(
            store.add_contact(&name("bobby"), &k),
            Err(Error::KeyTaken(n)) if n == "bob"
        ));
    }

    #[test]
    fn refuses_the_profiles_own_key() {
        let (_dir, mut store) = temp_store();
        let me = Identity::generate();
        store.set_identity(&me, false).unwrap();
        assert!(matches!(
            store.add_contact(&name("me"), &me.public_key()),
            Err(Error::OwnKey)
        ));
    }

    #[test]
    fn rename_refuses_a_taken_name_but_allows_a_case_change() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("bob"), &key()).unwrap();
        store.add_contact(&name("carol"), &key()).unwrap();
        assert!(matches!(
            store.rename_contact("bob", &name("Carol")),
            Err(Error::NameTaken(_))
        ));
        assert_eq!(
            store.rename_contact("bob", &name("Bob")).unwrap().name,
            "Bob"
        );
    }

    #[test]
    fn unknown_names_come_with_suggestions() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("bobby"), &key()).unwrap();
        store.add_contact(&name("carol"), &key()).unwrap();
        match store.contact("bob") {
            Err(Error::UnknownContact { suggestions, .. }) => assert_eq!(suggestions, ["bobby"]),
            other => panic!("unexpected: {other:?}"),
        }
    }

    #[test]
    fn names_are_stored_in_nfc_so_nfd_is_the_same_name() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("Zo\u{eb}"), &key()).unwrap();
        assert_eq!(name("Zoe\u{308}").as_str(), "Zo\u{eb}");
        assert!(matches!(
            store.add_contact(&name("Zoe\u{308}"), &key()),
            Err(Error::NameTaken(n)) if n == "Zo\u{eb}"
        ));
        assert!(store.contact("zoe\u{308}").is_ok());
    }

    #[test]
    fn invisible_and_direction_characters_are_refused() {
        for bad in [
            "bob\u{200B}",
            "b\u{200D}ob",
            "\u{202E}bob",
            "bob\u{2066}",
            "\u{FEFF}bob",
            "bo\u{AD}b",
            "\u{3164}",
            "bob\u{9b}",
        ] {
            match ContactName::parse(bad) {
                Err(Error::BadContactName(why)) => assert!(why.contains("<U+"), "{why}"),
                other => panic!("accepted {bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn a_name_confusable_with_an_existing_one_is_refused() {
        let (_dir, mut store) = temp_store();
        store.add_contact(&name("bob"), &key()).unwrap();
        for look_alike in ["b\u{43e}b", "B\u{41e}B", "\u{1d41b}ob"] {
            match store.add_contact(&name(look_alike), &key()) {
                Err(Error::LookAlike { existing, .. }) => assert_eq!(existing, "bob"),
                other => panic!("accepted {look_alike:?}: {other:?}"),
            }
        }
        let err = store.add_contact(&name("b\u{43e}b"), &key()).unwrap_err();
        assert!(err.to_string().contains("U+043E"), "{err}");
        store.add_contact(&name("bobby"), &key()).unwrap();
        store.add_contact(&name("Bo"), &key()).unwrap();
        // Renaming into a look-alike of another contact is refused; of
        // itself (a case change, say) it is not.
        store.add_contact(&name("carol"), &key()).unwrap();
        assert!(matches!(
            store.rename_contact("carol", &name("b\u{43e}b")),
            Err(Error::LookAlike { .. })
        ));
        store.rename_contact("bob", &name("BOB")).unwrap();
    }

    #[test]
    fn names_saved_before_the_rules_still_open_and_are_found() {
        let (_dir, mut store) = temp_store();
        // As an older version stored them: NFD, and a zero-width space.
        for (raw, k) in [("Zoe\u{308}", key()), ("eve\u{200B}", key())] {
            store
                .conn
                .execute(
                    "INSERT INTO contacts (name, name_key, public_key, added_at)
                     VALUES (?1, lower(?1), ?2, '2026-01-01T00:00:00.000Z')",
                    params![raw, k.to_base64()],
                )
                .unwrap();
        }
        assert_eq!(store.contacts().unwrap().len(), 2);
        assert_eq!(store.contact("Zo\u{eb}").unwrap().name, "Zoe\u{308}");
        assert_eq!(store.contact("eve\u{200B}").unwrap().name, "eve\u{200B}");
        // And a new name confusable with an old one is still refused.
        assert!(matches!(
            store.add_contact(&name("zo\u{eb}"), &key()),
            Err(Error::LookAlike { existing, .. }) if existing == "Zoe\u{308}"
        ));
        assert!(matches!(
            store.add_contact(&name("eve"), &key()),
            Err(Error::LookAlike { .. })
        ));
        store.rename_contact("eve\u{200B}", &name("eve")).unwrap();
    }

    #[test]
    fn validates_names() {
        assert_eq!(name("  bob ").as_str(), "bob");
        for bad in ["", "   ", "a\tb", "ws://x", &"x".repeat(65)] {
            assert!(ContactName::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}

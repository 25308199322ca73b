//! The `verifications` table: which contacts' keys the user has checked by
//! comparing safety codes, and with which key.
//!
//! A record belongs to a name, not to a contact row, and outlives the row:
//! when a verified name comes back with another key (removed and re-added,
//! or brought in by an import), the record still holds the verified key,
//! so the change is seen and shown instead of passing silently. A contact
//! is verified only while its key is the one recorded under its name.

use rusqlite::{params, OptionalExtension};

use super::{Contact, Result, Store};
use crate::clock;
use crate::identity::PublicKey;

/// Where a contact stands with its safety code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Never verified, or reset.
    Unverified,
    /// Verified, with the key it has now.
    Verified {
        /// When it was confirmed (UTC, RFC 3339).
        at: String,
    },
    /// The name was verified with another key: the key behind the name
    /// changed since, and the contact is not verified any more.
    KeyChanged {
        /// The key that was verified (standard base64, as stored).
        verified_key: String,
        /// When that key was confirmed.
        verified_at: String,
    },
}

impl Verification {
    /// Whether the contact counts as verified now.
    pub fn is_verified(&self) -> bool {
        matches!(self, Self::Verified { .. })
    }
}

impl Store {
    /// The profile's own public key, without touching the secret key
    /// (which a passphrase may protect): the safety code needs only this.
    pub fn own_public_key(&self) -> Result<Option<PublicKey>> {
        let text: Option<String> = self
            .conn
            .query_row("SELECT public_key FROM identity WHERE id = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        text.map(|t| {
            PublicKey::parse(&t).map_err(|e| super::Error::Corrupt {
                what: "identity",
                detail: e.to_string(),
            })
        })
        .transpose()
    }

    /// Whether `contact` is verified, never was, or was with another key.
    pub fn verification(&self, contact: &Contact) -> Result<Verification> {
        let row: Option<(String, String)> = self
            .conn
            .query_row(
                "SELECT v.public_key, v.verified_at
                 FROM contacts AS c JOIN verifications AS v ON v.name_key = c.name_key
                 WHERE c.id = ?1",
                [contact.id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        Ok(match row {
            None => Verification::Unverified,
            Some((key, at)) if key == contact.key.to_base64() => Verification::Verified { at },
            Some((verified_key, verified_at)) => Verification::KeyChanged {
                verified_key,
                verified_at,
            },
        })
    }

    /// Records that the user compared `contact`'s safety code and it
    /// matched: its current key is verified under its name, replacing any
    /// older record. Returns the state before.
    pub fn confirm_verified(&mut self, contact: &Contact) -> Result<Verification> {
        let before = self.verification(contact)?;
        if before.is_verified() {
            return Ok(before);
        }
        self.conn.execute(
            "INSERT INTO verifications (name_key, public_key, verified_at)
             SELECT name_key, ?2, ?3 FROM contacts WHERE id = ?1
             ON CONFLICT (name_key) DO UPDATE SET
                 public_key = excluded.public_key,
                 verified_at = excluded.verified_at",
            params![contact.id, contact.key.to_base64(), clock::now()],
        )?;
        Ok(before)
    }

    /// Forgets that `contact`'s name was verified (and so any warning
    /// that its key changed). Returns the state before.
    pub fn reset_verified(&mut self, contact: &Contact) -> Result<Verification> {
        let before = self.verification(contact)?;
        self.conn.execute(
            "DELETE FROM verifications
             WHERE name_key = (SELECT name_key FROM contacts WHERE id = ?1)",
            [contact.id],
        )?;
        Ok(before)
    }
}

/// Moves a verified contact's record to its new folded name, inside the
/// rename's transaction (before the row changes). A record the contact
/// does not match (never verified, or its key changed) stays with the old
/// name: the name it was about.
pub(super) fn follow_rename(
    conn: &rusqlite::Connection,
    contact_id: i64,
    new_name_key: &str,
) -> Result<()> {
    let (old_name_key, key): (String, String) = conn.query_row(
        "SELECT name_key, public_key FROM contacts WHERE id = ?1",
        [contact_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    if old_name_key == new_name_key {
        return Ok(());
    }
    let verified = conn
        .query_row(
            "SELECT 1 FROM verifications WHERE name_key = ?1 AND public_key = ?2",
            [&old_name_key, &key],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    if verified {
        conn.execute(
            "DELETE FROM verifications WHERE name_key = ?1",
            [new_name_key],
        )?;
        conn.execute(
            "UPDATE verifications SET name_key = ?1 WHERE name_key = ?2",
            [new_name_key, &old_name_key],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::test_util::temp_store;
    use crate::store::ContactName;

    fn name(n: &str) -> ContactName {
        ContactName::parse(n).unwrap()
    }

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    #[test]
    fn confirm_and_reset() {
        let (_dir, mut store) = temp_store();
        let bob = store.add_contact(&name("bob"), &key()).unwrap();
        assert_eq!(store.verification(&bob).unwrap(), Verification::Unverified);
        assert_eq!(
            store.confirm_verified(&bob).unwrap(),
            Verification::Unverified
        );
        assert!(store.verification(&bob).unwrap().is_verified());
        // Confirming again keeps the first date.
        assert!(store.confirm_verified(&bob).unwrap().is_verified());
        assert!(store.reset_verified(&bob).unwrap().is_verified());
        assert_eq!(store.verification(&bob).unwrap(), Verification::Unverified);
    }

    #[test]
    fn a_new_key_under_a_verified_name_is_a_change_until_confirmed() {
        let (_dir, mut store) = temp_store();
        let old = key();
        let bob = store.add_contact(&name("bob"), &old).unwrap();
        store.confirm_verified(&bob).unwrap();
        store.remove_contact("bob").unwrap();
        let bob = store.add_contact(&name("BOB"), &key()).unwrap();
        match store.verification(&bob).unwrap() {
            Verification::KeyChanged { verified_key, .. } => {
                assert_eq!(verified_key, old.to_base64())
            }
            other => panic!("not seen as changed: {other:?}"),
        }
        assert!(!store.verification(&bob).unwrap().is_verified());
        store.confirm_verified(&bob).unwrap();
        assert!(store.verification(&bob).unwrap().is_verified());
        // And re-adding the verified key itself is no change.
        store.remove_contact("bob").unwrap();
        let again = store.add_contact(&name("bob"), &bob.key).unwrap();
        assert!(store.verification(&again).unwrap().is_verified());
    }

    #[test]
    fn renaming_a_verified_contact_keeps_it_verified() {
        let (_dir, mut store) = temp_store();
        let carol = store.add_contact(&name("carol"), &key()).unwrap();
        store.confirm_verified(&carol).unwrap();
        store.remove_contact("carol").unwrap();
        let bob = store.add_contact(&name("bob"), &key()).unwrap();
        store.confirm_verified(&bob).unwrap();
        let robert = store.rename_contact("bob", &name("Robert")).unwrap();
        assert!(store.verification(&robert).unwrap().is_verified());
        // Taking over a name verified with another key, unverified: the
        // binding of that name changed.
        store.add_contact(&name("dave"), &key()).unwrap();
        let dave = store.rename_contact("dave", &name("carol")).unwrap();
        assert!(matches!(
            store.verification(&dave).unwrap(),
            Verification::KeyChanged { .. }
        ));
    }

    #[test]
    fn own_public_key_needs_no_secret() {
        let (_dir, mut store) = temp_store();
        assert_eq!(store.own_public_key().unwrap(), None);
        let me = Identity::generate();
        store.set_identity(&me, false).unwrap();
        assert_eq!(store.own_public_key().unwrap(), Some(me.public_key()));
    }

    #[test]
    fn a_v4_profile_with_contacts_upgrades_unverified() {
        let (_dir, path, conn) = super::super::schema::profile_at_version(4);
        let (alice, bob) = (key(), key());
        for (n, k) in [("alice", alice), ("bob", bob)] {
            conn.execute(
                "INSERT INTO contacts (name, name_key, public_key, added_at)
                 VALUES (?1, ?1, ?2, '2026-01-01T00:00:00.000Z')",
                params![n, k.to_base64()],
            )
            .unwrap();
        }
        drop(conn);

        let mut store = Store::open(&path).unwrap();
        let contacts = store.contacts().unwrap();
        assert_eq!(contacts.len(), 2);
        for c in &contacts {
            assert_eq!(store.verification(c).unwrap(), Verification::Unverified);
        }
        store.confirm_verified(&contacts[1]).unwrap();
        let view: Vec<(String, Option<String>, i64)> = {
            let mut stmt = store
                .conn()
                .prepare("SELECT name, verified_at, key_changed FROM contacts_view ORDER BY name")
                .unwrap();
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            rows.collect::<rusqlite::Result<_>>().unwrap()
        };
        assert_eq!(view.len(), 2);
        assert_eq!((view[0].1.is_none(), view[0].2), (true, 0));
        assert_eq!((view[1].1.is_some(), view[1].2), (true, 0));
    }
}

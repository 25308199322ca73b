//! Home routers (migration V10): where this profile receives, where each
//! contact receives, what strangers announced, and the "my home moved"
//! notices waiting to go out.
//!
//! A contact's `router` of NULL means "the same router as mine". When this
//! profile moves home, those contacts are pinned to the old home first:
//! they did not move. Announcements come from peers, inside sealed
//! content (a text's `home`, or a `home` notice), and are authenticated by
//! the frame's signature: only bob can say where bob receives.

use rusqlite::{params, OptionalExtension};

use super::contacts::{find_by_key, tell_devices};
use super::status::MessageId;
use super::sync::ContactChange;
use super::ContactName;
use super::{Contact, Error, Result, Store};
use crate::client::ServerUrl;
use crate::clock;
use crate::identity::PublicKey;

/// What [`Store::move_home`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeMove {
    /// The home moved away from (none if no home was recorded).
    pub from: Option<ServerUrl>,
    /// The new home.
    pub to: ServerUrl,
    /// How many contacts will be told (one notice each).
    pub told: usize,
}

/// A "my home router moved" notice waiting for its router's ack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HomeNotice {
    /// The frame's wire id.
    pub item_id: MessageId,
    /// Whom to tell (the own key: this identity's other devices).
    pub peer: PublicKey,
    /// The router to deliver the notice to.
    pub deliver_to: ServerUrl,
    /// The home announced.
    pub home: ServerUrl,
    /// The frame's timestamp.
    pub created_at: String,
}

/// What an announcement from a peer changed here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Announced {
    /// A contact's router is now this one.
    Contact(Box<Contact>),
    /// This identity's home moved (told by another of its devices).
    OwnHome(ServerUrl),
    /// Remembered for a stranger, or already known: nothing to show.
    Quiet,
}

fn parse_url(text: &str, what: &'static str) -> Result<ServerUrl> {
    ServerUrl::parse(text).map_err(|detail| Error::Corrupt { what, detail })
}

fn home_row(conn: &rusqlite::Connection) -> Result<(Option<ServerUrl>, Option<ServerUrl>)> {
    let row: Option<(Option<String>, Option<String>)> = conn
        .query_row(
            "SELECT router, previous FROM home WHERE only = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((router, previous)) = row else {
        return Ok((None, None));
    };
    Ok((
        router.map(|t| parse_url(&t, "home router")).transpose()?,
        previous
            .map(|t| parse_url(&t, "previous home router"))
            .transpose()?,
    ))
}

fn write_home(
    conn: &rusqlite::Connection,
    router: &ServerUrl,
    previous: Option<&ServerUrl>,
) -> Result<()> {
    conn.execute(
        "INSERT INTO home (only, router, previous, changed_at) VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (only) DO UPDATE SET router = ?1, previous = ?2, changed_at = ?3",
        params![
            router.as_str(),
            previous.map(ServerUrl::as_str),
            clock::now()
        ],
    )?;
    Ok(())
}

/// This profile's home router, if recorded.
pub fn home_tx(conn: &rusqlite::Connection) -> Result<Option<ServerUrl>> {
    Ok(home_row(conn)?.0)
}

/// The router `key` announced while not a contact, if any.
pub fn announced_router_tx(
    conn: &rusqlite::Connection,
    key: &PublicKey,
) -> Result<Option<ServerUrl>> {
    let text: Option<String> = conn
        .query_row(
            "SELECT router FROM peer_routers WHERE peer_key = ?1",
            [key.to_base64()],
            |r| r.get(0),
        )
        .optional()?;
    text.map(|t| parse_url(&t, "announced router")).transpose()
}

/// Points every contact on "the same router as mine" at `old`: done before
/// this identity's home changes, since they stay where they are.
fn pin_contacts_tx(conn: &rusqlite::Connection, old: &ServerUrl) -> Result<()> {
    conn.execute(
        "UPDATE contacts SET router = ?1 WHERE router IS NULL",
        [old.as_str()],
    )?;
    Ok(())
}

/// Takes note that `from` (authenticated by its frame's signature) says it
/// receives at `router`. `me` is this identity's key. A contact's entry
/// follows (unless it already says so, or says "the same router as mine"
/// and that is `router`); a stranger's is remembered in `peer_routers`;
/// the own key (another device moved home) moves this device's home too.
pub fn note_announced_tx(
    conn: &rusqlite::Connection,
    me: &PublicKey,
    from: &PublicKey,
    router: &ServerUrl,
) -> Result<Announced> {
    let (home, _) = home_row(conn)?;
    if from == me {
        return match home {
            Some(old) if old == *router => Ok(Announced::Quiet),
            old => {
                if let Some(old) = &old {
                    pin_contacts_tx(conn, old)?;
                }
                write_home(conn, router, old.as_ref())?;
                Ok(Announced::OwnHome(router.clone()))
            }
        };
    }
    match find_by_key(conn, from)? {
        Some(contact) => {
            let current = contact.router.clone().or(home);
            if current.as_ref() == Some(router) {
                return Ok(Announced::Quiet);
            }
            conn.execute(
                "UPDATE contacts SET router = ?1 WHERE id = ?2",
                params![router.as_str(), contact.id],
            )?;
            Ok(Announced::Contact(Box::new(Contact {
                router: Some(router.clone()),
                ..contact
            })))
        }
        None => {
            conn.execute(
                "INSERT INTO peer_routers (peer_key, router, seen_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (peer_key) DO UPDATE SET router = ?2, seen_at = ?3",
                params![from.to_base64(), router.as_str(), clock::now()],
            )?;
            Ok(Announced::Quiet)
        }
    }
}

/// Every "home moved" notice not yet acknowledged, oldest first.
pub fn pending_home_notices_tx(conn: &rusqlite::Connection) -> Result<Vec<HomeNotice>> {
    let mut stmt = conn.prepare_cached(
        "SELECT item_id, peer_key, deliver_to, home, created_at FROM home_outbox ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
        ))
    })?;
    let mut notices = Vec::new();
    for row in rows {
        let (id, peer, deliver_to, home, created_at) = row?;
        let corrupt = |detail: String| Error::Corrupt {
            what: "home notice",
            detail,
        };
        notices.push(HomeNotice {
            item_id: MessageId::parse(&id).map_err(|e| corrupt(e.to_string()))?,
            peer: PublicKey::parse(&peer).map_err(|e| corrupt(e.to_string()))?,
            deliver_to: parse_url(&deliver_to, "home notice")?,
            home: parse_url(&home, "home notice")?,
            created_at,
        });
    }
    Ok(notices)
}

/// Forgets the notice with this wire id (its router acknowledged it).
/// Whether it was one.
pub fn remove_home_notice_tx(conn: &rusqlite::Connection, item_id: &MessageId) -> Result<bool> {
    let n = conn.execute("DELETE FROM home_outbox WHERE item_id = ?1", [item_id])?;
    Ok(n > 0)
}

impl Store {
    /// This profile's home router, if one is recorded.
    pub fn home_router(&self) -> Result<Option<ServerUrl>> {
        home_tx(&self.conn)
    }

    /// The home moved away from, while what was queued there before the
    /// move has not been fetched yet.
    pub fn previous_home(&self) -> Result<Option<ServerUrl>> {
        Ok(home_row(&self.conn)?.1)
    }

    /// Records `router` as the home router if none is recorded yet (a
    /// profile's first session, or one from before home routers). Returns
    /// the home router now recorded.
    pub fn adopt_home(&mut self, router: &ServerUrl) -> Result<ServerUrl> {
        let tx = self.transaction()?;
        let (home, previous) = home_row(&tx)?;
        let home = match home {
            Some(home) => home,
            None => {
                write_home(&tx, router, previous.as_ref())?;
                router.clone()
            }
        };
        tx.commit()?;
        Ok(home)
    }

    /// Moves this profile's home to `to`: contacts on "the same router as
    /// mine" are pinned to the old home, the old home is kept to be
    /// emptied once more, and every contact (and this identity's other
    /// devices, at the old home) gets a notice, sent by the next session.
    /// Moving to the current home changes nothing (`told` is 0).
    pub fn move_home(&mut self, to: &ServerUrl) -> Result<HomeMove> {
        let me = self.public_key()?;
        let tx = self.transaction()?;
        let (from, _) = home_row(&tx)?;
        if from.as_ref() == Some(to) {
            return Ok(HomeMove {
                from,
                to: to.clone(),
                told: 0,
            });
        }
        if let Some(old) = &from {
            pin_contacts_tx(&tx, old)?;
        }
        write_home(&tx, to, from.as_ref())?;
        let now = clock::now();
        let mut insert = tx.prepare_cached(
            "INSERT INTO home_outbox (item_id, peer_key, deliver_to, home, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let contacts: Vec<(String, Option<String>)> = {
            let mut stmt = tx.prepare("SELECT public_key, router FROM contacts ORDER BY id")?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<_>>()?
        };
        let mut told = 0;
        for (key, router) in &contacts {
            // Pinned above: only a profile that had no home has NULLs, and
            // those contacts are on the new home.
            let deliver_to = router.as_deref().unwrap_or(to.as_str());
            insert.execute(params![
                MessageId::new_v7(),
                key,
                deliver_to,
                to.as_str(),
                now
            ])?;
            told += 1;
        }
        if let (Some(me), Some(old)) = (me, &from) {
            insert.execute(params![
                MessageId::new_v7(),
                me.to_base64(),
                old.as_str(),
                to.as_str(),
                now
            ])?;
        }
        drop(insert);
        tx.commit()?;
        Ok(HomeMove {
            from,
            to: to.clone(),
            told,
        })
    }

    /// Says the old home `was` has been emptied: it is forgotten (unless
    /// the profile moved again meanwhile).
    pub fn forget_previous_home(&mut self, was: &ServerUrl) -> Result<()> {
        self.conn.execute(
            "UPDATE home SET previous = NULL WHERE previous = ?1",
            [was.as_str()],
        )?;
        Ok(())
    }

    /// Sets (or, with `None`, clears to "the same router as mine") the
    /// router of the contact called `name`.
    pub fn set_contact_router(
        &mut self,
        name: &str,
        router: Option<&ServerUrl>,
    ) -> Result<Contact> {
        let contact = self.contact(name)?;
        let tx = self.transaction()?;
        tx.execute(
            "UPDATE contacts SET router = ?1 WHERE id = ?2",
            params![router.map(ServerUrl::as_str), contact.id],
        )?;
        // The other devices follow: a contact change carries the router.
        if let (Some(_), Ok(name)) = (router, ContactName::parse(&contact.name)) {
            tell_devices(
                &tx,
                ContactChange::Add,
                &contact.key,
                Some(&name),
                &clock::now(),
            )?;
        }
        tx.commit()?;
        Ok(Contact {
            router: router.cloned(),
            ..contact
        })
    }

    /// Takes note of an announcement (see [`note_announced_tx`]).
    pub fn note_announced(&mut self, from: &PublicKey, router: &ServerUrl) -> Result<Announced> {
        let me = self.public_key()?.ok_or(Error::Corrupt {
            what: "identity",
            detail: "no identity to receive announcements for".into(),
        })?;
        let tx = self.transaction()?;
        let done = note_announced_tx(&tx, &me, from, router)?;
        tx.commit()?;
        Ok(done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::ContactName;

    fn url(text: &str) -> ServerUrl {
        ServerUrl::parse(text).unwrap()
    }

    fn store() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("p.db")).unwrap();
        store.set_identity(&Identity::generate(), false).unwrap();
        (dir, store)
    }

    #[test]
    fn the_first_home_is_adopted_and_kept() {
        let (_d, mut s) = store();
        assert_eq!(s.home_router().unwrap(), None);
        let a = url("ws://a.example");
        assert_eq!(s.adopt_home(&a).unwrap(), a);
        assert_eq!(s.adopt_home(&url("ws://b.example")).unwrap(), a);
        assert_eq!(s.home_router().unwrap(), Some(a));
    }

    #[test]
    fn moving_pins_contacts_and_queues_a_notice_for_each() {
        let (_d, mut s) = store();
        let (a, b, c) = (
            url("ws://a.example"),
            url("ws://b.example"),
            url("ws://c.example"),
        );
        s.adopt_home(&a).unwrap();
        let bob = Identity::generate().public_key();
        let carol = Identity::generate().public_key();
        s.add_contact(&ContactName::parse("bob").unwrap(), &bob)
            .unwrap();
        s.add_contact_at(&ContactName::parse("carol").unwrap(), &carol, Some(&c))
            .unwrap();
        let moved = s.move_home(&b).unwrap();
        assert_eq!((moved.from, moved.told), (Some(a.clone()), 2));
        assert_eq!(s.home_router().unwrap(), Some(b.clone()));
        assert_eq!(s.previous_home().unwrap(), Some(a.clone()));
        assert_eq!(s.contact("bob").unwrap().router, Some(a.clone()));
        let notices = pending_home_notices_tx(&s.conn).unwrap();
        let to: Vec<_> = notices.iter().map(|n| n.deliver_to.clone()).collect();
        assert_eq!(to, [a.clone(), c, a.clone()], "bob, carol, own devices");
        assert!(notices.iter().all(|n| n.home == b));
        assert!(remove_home_notice_tx(&s.conn, &notices[0].item_id).unwrap());
        assert_eq!(s.move_home(&b).unwrap().told, 0, "no move, no notice");
        s.forget_previous_home(&a).unwrap();
        assert_eq!(s.previous_home().unwrap(), None);
    }

    #[test]
    fn announcements_update_contacts_and_remember_strangers() {
        let (_d, mut s) = store();
        let (a, b) = (url("ws://a.example"), url("ws://b.example"));
        s.adopt_home(&a).unwrap();
        let bob = Identity::generate().public_key();
        s.add_contact(&ContactName::parse("bob").unwrap(), &bob)
            .unwrap();
        assert_eq!(s.note_announced(&bob, &a).unwrap(), Announced::Quiet);
        assert_eq!(
            s.contact("bob").unwrap().router,
            None,
            "still 'same as mine'"
        );
        assert!(
            matches!(s.note_announced(&bob, &b).unwrap(), Announced::Contact(c) if c.router == Some(b.clone()))
        );
        let stranger = Identity::generate().public_key();
        assert_eq!(s.note_announced(&stranger, &b).unwrap(), Announced::Quiet);
        let saved = s
            .add_contact(&ContactName::parse("eve").unwrap(), &stranger)
            .unwrap();
        assert_eq!(saved.router, Some(b), "the announced router is used");
    }
}

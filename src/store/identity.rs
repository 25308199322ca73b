//! The `identity` table: the profile's own key pair, at most one row.

use rusqlite::{params, OptionalExtension, Transaction};

use super::{Error, Result, Store};
use crate::clock;
use crate::identity::{Identity, PublicKey};

impl Store {
    /// The profile's identity, if `init` has created one.
    pub fn identity(&self) -> Result<Option<Identity>> {
        let row: Option<(String, Vec<u8>)> = self
            .conn
            .query_row(
                "SELECT public_key, secret_key FROM identity WHERE id = 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        row.map(|(public, secret)| decode(&public, &secret))
            .transpose()
    }

    /// The profile's identity, or [`Error::NoIdentity`].
    pub fn require_identity(&self) -> Result<Identity> {
        self.identity()?.ok_or(Error::NoIdentity)
    }

    /// Saves `identity` as the profile's own. Refuses to replace an existing
    /// one unless `replace`; returns the public key that was replaced.
    pub fn set_identity(
        &mut self,
        identity: &Identity,
        replace: bool,
    ) -> Result<Option<PublicKey>> {
        let tx = self.conn.transaction()?;
        let old = set_identity_tx(&tx, identity, replace)?;
        tx.commit()?;
        Ok(old)
    }
}

/// [`Store::set_identity`] inside a caller's transaction.
pub(crate) fn set_identity_tx(
    tx: &Transaction<'_>,
    identity: &Identity,
    replace: bool,
) -> Result<Option<PublicKey>> {
    let old: Option<String> = tx
        .query_row("SELECT public_key FROM identity WHERE id = 1", [], |r| {
            r.get(0)
        })
        .optional()?;
    if let Some(old) = &old {
        if !replace {
            return Err(Error::IdentityExists(old.clone()));
        }
    }
    let secret = identity.secret_bytes();
    tx.execute(
        "INSERT INTO identity (id, public_key, secret_key, created_at)
         VALUES (1, ?1, ?2, ?3)
         ON CONFLICT (id) DO UPDATE SET
             public_key = excluded.public_key,
             secret_key = excluded.secret_key,
             created_at = excluded.created_at",
        params![identity.public_key().to_base64(), &secret[..], clock::now()],
    )?;
    old.map(|text| PublicKey::parse(&text).map_err(|e| corrupt(e.to_string())))
        .transpose()
}

/// Rebuilds the key pair and checks it against the stored public key, so a
/// damaged row is reported rather than used.
fn decode(public: &str, secret: &[u8]) -> Result<Identity> {
    let secret: &[u8; 32] = secret
        .try_into()
        .map_err(|_| corrupt(format!("secret key of {} bytes", secret.len())))?;
    let identity = Identity::from_secret_bytes(secret);
    if identity.public_key().to_base64() != public {
        return Err(corrupt(
            "the public key does not match the secret key".into(),
        ));
    }
    Ok(identity)
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        what: "identity",
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_util::temp_store;

    #[test]
    fn a_new_profile_has_no_identity() {
        let (_dir, store) = temp_store();
        assert!(store.identity().unwrap().is_none());
        assert!(matches!(store.require_identity(), Err(Error::NoIdentity)));
    }

    #[test]
    fn stores_and_reloads_the_key_pair() {
        let (_dir, mut store) = temp_store();
        let id = Identity::generate();
        assert_eq!(store.set_identity(&id, false).unwrap(), None);
        assert_eq!(
            store.require_identity().unwrap().public_key(),
            id.public_key()
        );
    }

    #[test]
    fn refuses_to_replace_unless_asked() {
        let (_dir, mut store) = temp_store();
        let first = Identity::generate();
        store.set_identity(&first, false).unwrap();
        let second = Identity::generate();
        assert!(matches!(
            store.set_identity(&second, false),
            Err(Error::IdentityExists(_))
        ));
        assert_eq!(
            store.require_identity().unwrap().public_key(),
            first.public_key()
        );
        assert_eq!(
            store.set_identity(&second, true).unwrap(),
            Some(first.public_key())
        );
        assert_eq!(
            store.require_identity().unwrap().public_key(),
            second.public_key()
        );
    }

    #[test]
    fn a_mismatched_row_is_reported_as_damage() {
        let (_dir, mut store) = temp_store();
        store.set_identity(&Identity::generate(), false).unwrap();
        let other = Identity::generate().public_key().to_base64();
        store
            .conn()
            .execute("UPDATE identity SET public_key = ?1", [other])
            .unwrap();
        assert!(matches!(store.identity(), Err(Error::Corrupt { .. })));
    }
}

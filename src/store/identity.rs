//! The `identity` table: the profile's own key pair, at most one row.
//!
//! The secret seed is kept either in clear (`secret_key`) or sealed under a
//! passphrase (`secret_wrapped` with its argon2id salt and cost, see
//! [`crate::keywrap`]). Code that only needs the address reads
//! [`Store::public_key`]; code that signs or decrypts loads the key pair
//! with [`Store::identity`] (unprotected) or [`Store::unlock_identity`].

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::{Error, Result, Store};
use crate::clock;
use crate::identity::{Identity, PublicKey};
use crate::keywrap::{self, KdfParams, WrapError, WrappedKey};

/// The identity row as stored: the public key, and the secret in clear or
/// sealed.
enum Row {
    Plain(String, Vec<u8>),
    Wrapped(String, WrappedKey),
}

impl Row {
    fn public(&self) -> Result<PublicKey> {
        let (Row::Plain(text, _) | Row::Wrapped(text, _)) = self;
        PublicKey::parse(text).map_err(|e| corrupt(e.to_string()))
    }
}

/// The secret key exactly as the profile stores it, for handing it to a
/// newly linked device: in clear, or sealed under the passphrase.
pub enum StoredSecret {
    /// The 32-byte seed in clear.
    Plain(zeroize::Zeroizing<Vec<u8>>),
    /// Sealed under the owner's passphrase.
    Wrapped(WrappedKey),
}

impl Store {
    /// The public key and the secret key as stored (never unwrapped), or
    /// `None` without an identity.
    pub fn stored_secret(&self) -> Result<Option<(PublicKey, StoredSecret)>> {
        let Some(row) = read_row(&self.conn)? else {
            return Ok(None);
        };
        let public = row.public()?;
        Ok(Some(match row {
            Row::Plain(_, seed) => (public, StoredSecret::Plain(zeroize::Zeroizing::new(seed))),
            Row::Wrapped(_, wrapped) => (public, StoredSecret::Wrapped(wrapped)),
        }))
    }

    /// The profile's identity, if `init` has created one; the error
    /// [`Error::KeyProtected`] if its secret key has a passphrase.
    pub fn identity(&self) -> Result<Option<Identity>> {
        match read_row(&self.conn)? {
            None => Ok(None),
            Some(Row::Plain(public, secret)) => decode(&public, &secret).map(Some),
            Some(Row::Wrapped(..)) => Err(Error::KeyProtected),
        }
    }

    /// The profile's identity, or [`Error::NoIdentity`] (or
    /// [`Error::KeyProtected`]).
    pub fn require_identity(&self) -> Result<Identity> {
        self.identity()?.ok_or(Error::NoIdentity)
    }

    /// The profile's public key, which never needs the passphrase.
    pub fn public_key(&self) -> Result<Option<PublicKey>> {
        read_row(&self.conn)?.map(|row| row.public()).transpose()
    }

    /// The argon2id cost the secret key is sealed with, or `None` when it
    /// has no passphrase (or there is no identity).
    pub fn key_protection(&self) -> Result<Option<KdfParams>> {
        Ok(match read_row(&self.conn)? {
            Some(Row::Wrapped(_, w)) => Some(w.params),
            _ => None,
        })
    }

    /// The key pair, opening a sealed secret key with `passphrase` (which
    /// takes the KDF's time, right or wrong). An unprotected key is
    /// returned as is.
    pub fn unlock_identity(&self, passphrase: &[u8]) -> Result<Identity> {
        match read_row(&self.conn)?.ok_or(Error::NoIdentity)? {
            Row::Plain(public, secret) => decode(&public, &secret),
            Row::Wrapped(public, wrapped) => {
                let key = PublicKey::parse(&public).map_err(|e| corrupt(e.to_string()))?;
                let secret = keywrap::unwrap(&wrapped, &key, passphrase).map_err(wrap_error)?;
                decode(&public, secret.as_ref())
            }
        }
    }

    /// Seals the profile's secret key (the seed of `identity`, which must
    /// be the profile's) under `passphrase`, replacing what was stored:
    /// sets or changes the passphrase.
    pub fn protect_identity(
        &mut self,
        identity: &Identity,
        passphrase: &[u8],
        params: KdfParams,
    ) -> Result<()> {
        let wrapped = keywrap::wrap(
            &identity.secret_bytes(),
            &identity.public_key(),
            passphrase,
            params,
        )
        .map_err(wrap_error)?;
        self.rewrite_secret(identity, |tx| {
            tx.execute(
                "UPDATE identity SET secret_key = NULL, secret_wrapped = ?1, kdf_salt = ?2,
                     kdf_memory_kib = ?3, kdf_iterations = ?4, kdf_parallelism = ?5
                 WHERE id = 1",
                params![
                    wrapped.sealed,
                    wrapped.salt,
                    wrapped.params.memory_kib,
                    wrapped.params.iterations,
                    wrapped.params.parallelism
                ],
            )
        })
    }

    /// Stores the profile's secret key (the seed of `identity`) in clear
    /// again: removes the passphrase.
    pub fn unprotect_identity(&mut self, identity: &Identity) -> Result<()> {
        let secret = identity.secret_bytes();
        self.rewrite_secret(identity, |tx| {
            tx.execute(
                "UPDATE identity SET secret_key = ?1, secret_wrapped = NULL, kdf_salt = NULL,
                     kdf_memory_kib = NULL, kdf_iterations = NULL, kdf_parallelism = NULL
                 WHERE id = 1",
                params![&secret[..]],
            )
        })
    }

    /// Rewrites the identity row's secret with `update`, after checking
    /// `identity` is the profile's; then makes sure the previous form of
    /// the secret is not left behind in the file's free space or the WAL.
    fn rewrite_secret(
        &mut self,
        identity: &Identity,
        update: impl FnOnce(&Transaction<'_>) -> rusqlite::Result<usize>,
    ) -> Result<()> {
        // Freed bytes (the old row) are overwritten with zeros.
        self.conn.pragma_update(None, "secure_delete", "ON")?;
        let tx = self.transaction()?;
        let row = read_row(&tx)?.ok_or(Error::NoIdentity)?;
        if row.public()? != identity.public_key() {
            return Err(corrupt("the key given is not this profile's".into()));
        }
        update(&tx)?;
        tx.commit()?;
        // Copies the new pages into the file and empties the WAL, which
        // still held the old ones. A reader (a running chat) may keep part
        // of the WAL alive until it ends: best effort, the row is right.
        self.conn
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(())
    }

    /// Saves `identity` as the profile's own, unprotected. Refuses to
    /// replace an existing one unless `replace`; returns the public key that
    /// was replaced.
    pub fn set_identity(
        &mut self,
        identity: &Identity,
        replace: bool,
    ) -> Result<Option<PublicKey>> {
        let tx = self.transaction()?;
        let old = set_identity_tx(&tx, identity, replace)?;
        tx.commit()?;
        Ok(old)
    }
}

/// [`Store::set_identity`] inside a caller's transaction. A new key is
/// stored unprotected, whatever protected the one it replaces: the caller
/// says so to the user.
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
             secret_wrapped = NULL,
             kdf_salt = NULL,
             kdf_memory_kib = NULL,
             kdf_iterations = NULL,
             kdf_parallelism = NULL,
             created_at = excluded.created_at",
        params![identity.public_key().to_base64(), &secret[..], clock::now()],
    )?;
    old.map(|text| PublicKey::parse(&text).map_err(|e| corrupt(e.to_string())))
        .transpose()
}

/// Reads the identity row, if any.
fn read_row(conn: &Connection) -> Result<Option<Row>> {
    type Raw = (
        String,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<Vec<u8>>,
        Option<u32>,
        Option<u32>,
        Option<u32>,
    );
    let raw: Option<Raw> = conn
        .query_row(
            "SELECT public_key, secret_key, secret_wrapped, kdf_salt,
                    kdf_memory_kib, kdf_iterations, kdf_parallelism
             FROM identity WHERE id = 1",
            [],
            |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            },
        )
        .optional()?;
    let Some((public, secret, sealed, salt, m, t, p)) = raw else {
        return Ok(None);
    };
    match (secret, sealed, salt, m, t, p) {
        (Some(secret), None, ..) => Ok(Some(Row::Plain(public, secret))),
        (None, Some(sealed), Some(salt), Some(memory_kib), Some(iterations), Some(parallelism)) => {
            let params = KdfParams {
                memory_kib,
                iterations,
                parallelism,
            };
            Ok(Some(Row::Wrapped(
                public,
                WrappedKey {
                    params,
                    salt,
                    sealed,
                },
            )))
        }
        _ => Err(corrupt("the secret key is missing or half-sealed".into())),
    }
}

fn wrap_error(e: WrapError) -> Error {
    match e {
        WrapError::WrongPassphrase => Error::WrongPassphrase,
        other => corrupt(other.to_string()),
    }
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

    const WEAK: KdfParams = KdfParams::WEAK_FOR_TESTS;

    #[test]
    fn a_protected_key_needs_its_passphrase_and_the_public_key_does_not() {
        let (_dir, mut store) = temp_store();
        let id = Identity::generate();
        store.set_identity(&id, false).unwrap();
        store.protect_identity(&id, b"correct horse", WEAK).unwrap();
        assert_eq!(store.key_protection().unwrap(), Some(WEAK));
        assert!(matches!(store.identity(), Err(Error::KeyProtected)));
        assert_eq!(store.public_key().unwrap(), Some(id.public_key()));
        assert!(matches!(
            store.unlock_identity(b"wrong horse"),
            Err(Error::WrongPassphrase)
        ));
        let opened = store.unlock_identity(b"correct horse").unwrap();
        assert_eq!(*opened.secret_bytes(), *id.secret_bytes());
        let secret: Option<Vec<u8>> = store
            .conn()
            .query_row("SELECT secret_key FROM identity", [], |r| r.get(0))
            .unwrap();
        assert_eq!(secret, None);

        store.unprotect_identity(&opened).unwrap();
        assert_eq!(store.key_protection().unwrap(), None);
        assert_eq!(
            *store.require_identity().unwrap().secret_bytes(),
            *id.secret_bytes()
        );
    }

    #[test]
    fn a_new_key_replacing_a_protected_one_is_stored_unprotected() {
        let (_dir, mut store) = temp_store();
        let old = Identity::generate();
        store.set_identity(&old, false).unwrap();
        store.protect_identity(&old, b"pw", WEAK).unwrap();
        let new = Identity::generate();
        assert_eq!(
            store.set_identity(&new, true).unwrap(),
            Some(old.public_key())
        );
        assert_eq!(store.key_protection().unwrap(), None);
        assert_eq!(
            store.require_identity().unwrap().public_key(),
            new.public_key()
        );
    }

    #[test]
    fn refuses_to_seal_another_identity_s_key_into_the_profile() {
        let (_dir, mut store) = temp_store();
        store.set_identity(&Identity::generate(), false).unwrap();
        let stranger = Identity::generate();
        assert!(matches!(
            store.protect_identity(&stranger, b"pw", WEAK),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(store.key_protection().unwrap(), None);
    }
}

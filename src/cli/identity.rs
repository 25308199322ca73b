//! `init` and `whoami`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::out::{AlreadyDone, StdoutError};
use super::{print_json, Context};
use crate::identity::{Identity, PublicKey};
use crate::store::{self, Store};

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replace an existing identity. The old secret key is destroyed: your
    /// contacts can no longer reach you at the old key.
    #[arg(long)]
    force: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Print only the public key (for scripts).
    #[arg(long, conflicts_with = "json")]
    key: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The fields `init --json` and `whoami --json` share.
fn identity_json(ctx: &Context, key: &PublicKey, store: &Store) -> serde_json::Value {
    json!({
        "profile": ctx.profile.name.as_str(),
        "public_key": key.to_base64(),
        "fingerprint": key.fingerprint(),
        "database": store.path(),
    })
}

/// Creates the profile's identity.
pub fn init(ctx: &Context, args: InitArgs) -> Result<()> {
    let mut store = Store::create(&ctx.profile.db_path())?;
    let identity = Identity::generate();
    let was_protected = store.key_protection()?.is_some();
    let replaced = match store.set_identity(&identity, args.force) {
        Err(store::Error::IdentityExists(key)) => anyhow::bail!(
            "profile '{}' already has an identity ({key}). \
             'init --force' replaces it, destroying the old secret key",
            ctx.profile.name
        ),
        other => other?,
    };
    if let Some(old) = &replaced {
        errln!(
            "warning: replaced the identity {old}. Its secret key is gone: \
             contacts who know the old key can no longer reach you, and \
             messages still queued for it cannot be read."
        );
    }
    if was_protected {
        super::passphrase::warn_unprotected(ctx);
    }
    let key = identity.public_key();
    let created = format!("the identity of profile '{}' was created", ctx.profile.name);
    if args.json {
        let mut value = identity_json(ctx, &key, &store);
        value["replaced"] = json!(replaced.map(|k| k.to_base64()));
        return print_json(&value).done(&created);
    }
    print_created(ctx, &key, &store).done(&created)
}

fn print_created(ctx: &Context, key: &PublicKey, store: &Store) -> Result<(), StdoutError> {
    outln!("Created a new identity for profile '{}'.", ctx.profile.name)?;
    outln!()?;
    outln!("  Public key:  {key}")?;
    outln!("  Fingerprint: {}", key.fingerprint())?;
    outln!("  Database:    {}", store.path().display())?;
    outln!()?;
    outln!("Give your public key to the people you want to talk to; they run:")?;
    outln!("  chat-p2p add-contact <your-name> {key}")?;
    outln!("Compare fingerprints aloud to be sure nobody swapped the key.")
}

/// Shows the profile's identity.
pub fn whoami(ctx: &Context, args: WhoamiArgs) -> Result<()> {
    let (store, key) = ctx.open_with_key()?;
    if args.key {
        return Ok(outln!("{key}")?);
    }
    if args.json {
        return Ok(print_json(&identity_json(ctx, &key, &store))?);
    }
    outln!("Profile:     {}", ctx.profile.name)?;
    outln!("Public key:  {key}")?;
    outln!("Fingerprint: {}", key.fingerprint())?;
    outln!("Database:    {}", store.path().display())?;
    Ok(())
}

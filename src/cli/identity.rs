//! `init` and `whoami`.

mod backup;

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::out::{AlreadyDone, StdoutError};
use super::{print_json, Context, ServerArgs, UsageError};
use crate::address::Address;
use crate::client::ServerUrl;
use crate::identity::{Identity, PublicKey};
use crate::render::untrusted_inline;
use crate::store::device::Device;
use crate::store::{self, Store};

/// A device id as lists show it: its first 8 hex digits, which
/// `devices remove` accepts.
pub(super) fn short_device(id: &uuid::Uuid) -> String {
    id.simple().to_string().chars().take(8).collect()
}

/// Arguments of `init`.
#[derive(Debug, Args)]
pub struct InitArgs {
    /// Replace an existing identity: your contacts can no longer reach you
    /// at the old key. Asks first on a terminal; the old key pair is kept
    /// in a backup file in the profile's folder (see --no-backup).
    #[arg(long)]
    force: bool,
    /// With --force: replace without asking (needed when not on a terminal).
    #[arg(long, requires = "force")]
    yes: bool,
    /// With --force: keep no backup of the old identity; its secret key is
    /// then gone for good.
    #[arg(long, requires = "force")]
    no_backup: bool,
    /// This device's name, as 'devices' lists it on your other devices
    /// (default: the host name). The router sees it too.
    #[arg(long, value_name = "NAME")]
    device_name: Option<String>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// The router where you receive, your home router, recorded in the
    /// profile and shown in your address [default: router in
    /// config.toml; with none, the first router you use becomes it].
    #[command(flatten)]
    server: ServerArgs,
}

/// Arguments of `whoami`.
#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Print only the public key (for scripts).
    #[arg(long, conflicts_with_all = ["json", "address"])]
    key: bool,
    /// Print only your address, chat-p2p:KEY@ROUTER, to give to people
    /// (for scripts and QR codes; the bare key while no home router is
    /// recorded).
    #[arg(long, conflicts_with = "json")]
    address: bool,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
}

/// The fields `init --json` and `whoami --json` share.
fn identity_json(
    ctx: &Context,
    key: &PublicKey,
    home: Option<&ServerUrl>,
    store: &Store,
    device: Option<&Device>,
) -> serde_json::Value {
    json!({
        "profile": ctx.profile.name.as_str(),
        "public_key": key.to_base64(),
        "fingerprint": key.fingerprint(),
        "address": Address::new(*key, home.cloned()).to_string(),
        "home_router": home.map(ServerUrl::as_str),
        "database": store.path(),
        "device": device.map(|d| json!({"id": d.id, "name": d.name})),
    })
}

/// What to say when no home router is recorded yet.
pub(super) fn no_home_yet(ctx: &Context) -> String {
    format!(
        "none recorded yet: the first router you use becomes it \
         ('{} home set URL' records one now)",
        ctx.cli_prefix()
    )
}

/// Records the router `init` was given (--server, CHAT_SERVER or
/// config.toml) as the profile's home, unless one is recorded already
/// (`init --force` keeps it: 'home set' moves it). Returns the home.
fn record_home(
    ctx: &Context,
    store: &mut Store,
    given: Option<&ServerUrl>,
) -> Result<Option<ServerUrl>> {
    let Some(given) = given else {
        return Ok(store.home_router()?);
    };
    let home = store.adopt_home(given)?;
    if home != *given {
        errln!(
            "note: this profile's home router stays {}: '{} home set {}' moves it",
            untrusted_inline(home.short()),
            ctx.cli_prefix(),
            untrusted_inline(given.short())
        );
    }
    Ok(Some(home))
}

/// Creates the profile's identity.
pub fn init(ctx: &Context, args: InitArgs) -> Result<()> {
    let name = args.device_name.as_deref().map(str::trim);
    if let Some(Err(e)) = name.map(store::device::check_name) {
        return Err(UsageError(format!("--device-name: {e}")).into());
    }
    let mut store = Store::create(&ctx.profile.db_path())?;
    let backup = if args.force {
        make_way(ctx, &store, &args)?
    } else {
        None
    };
    let identity = Identity::generate();
    let was_protected = store.key_protection()?.is_some();
    let replaced = match store.set_identity(&identity, args.force) {
        Err(store::Error::IdentityExists(key)) => anyhow::bail!(
            "profile '{}' already has an identity ({key}). \
             'init --force' replaces it (asking first, and keeping the old key pair \
             in a backup file unless --no-backup)",
            ctx.profile.name
        ),
        other => other?,
    };
    match (&replaced, &backup) {
        (Some(old), Some(path)) => errln!(
            "warning: replaced the identity {old}: contacts who know the old key can no \
             longer reach you. Its key pair is kept in {} (readable by you alone); \
             '{} import --force FILE' restores it.",
            path.display(),
            ctx.cli_prefix()
        ),
        (Some(old), None) => errln!(
            "warning: replaced the identity {old}. Its secret key is gone: \
             contacts who know the old key can no longer reach you, and \
             messages still queued for it cannot be read."
        ),
        _ => {}
    }
    if was_protected {
        super::passphrase::warn_unprotected(ctx);
    }
    // A new identity starts as a new device: a device id is never shared
    // between two keys.
    let default = store::device::default_name();
    let device = store.set_device(uuid::Uuid::new_v4(), name.unwrap_or(&default))?;
    let home = record_home(ctx, &mut store, args.server.server.as_ref())?;
    let key = identity.public_key();
    let created = format!("the identity of profile '{}' was created", ctx.profile.name);
    if args.json {
        let mut value = identity_json(ctx, &key, home.as_ref(), &store, Some(&device));
        value["replaced"] = json!(replaced.map(|k| k.to_base64()));
        value["backup"] = json!(backup);
        return print_json(&value).done(&created);
    }
    print_created(ctx, &key, home.as_ref(), &store, &device).done(&created)
}

/// Before `init --force` replaces an identity: asks, then backs it up
/// (unless --no-backup). Returns the backup's path. A damaged identity
/// row, which --force exists to replace, cannot be backed up: said, and
/// replaced all the same once confirmed.
fn make_way(ctx: &Context, store: &Store, args: &InitArgs) -> Result<Option<PathBuf>> {
    let old = match store.identity() {
        Ok(None) => return Ok(None),
        Ok(Some(old)) => Some(old),
        Err(e @ store::Error::Corrupt { .. }) => {
            errln!("warning: the stored identity cannot be read ({e}), so no backup can be made.");
            None
        }
        // A backup in clear would undo the passphrase: the user makes an
        // encrypted one, or says that none is wanted.
        Err(store::Error::KeyProtected) if !args.no_backup => {
            return Err(UsageError(format!(
                "this profile's secret key has a passphrase, and the backup 'init --force' \
                 keeps would hold it in clear. Back it up encrypted first with \
                 '{} export --include-secret --encrypt -o FILE', then run \
                 'init --force --no-backup'",
                ctx.cli_prefix()
            ))
            .into())
        }
        Err(store::Error::KeyProtected) => None,
        Err(e) => return Err(e.into()),
    };
    let shown = match (&old, store.public_key().ok().flatten()) {
        (Some(old), _) => {
            let key = old.public_key();
            format!("{key} (fingerprint {})", key.fingerprint())
        }
        (None, Some(key)) => format!("{key} (fingerprint {})", key.fingerprint()),
        (None, None) => "that cannot be read".to_owned(),
    };
    confirm_replace(ctx, &shown, args.yes)?;
    match old {
        Some(old) if !args.no_backup => Ok(Some(backup::write(&ctx.profile.dir, &old)?)),
        _ => Ok(None),
    }
}

/// Asks before `init --force` destroys an identity: on a terminal, a
/// question; elsewhere `--yes` must say it (a usage error otherwise).
fn confirm_replace(ctx: &Context, old: &str, yes: bool) -> Result<()> {
    use std::io::{BufRead as _, IsTerminal as _};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(UsageError(format!(
            "'init --force' would replace the identity {old} of profile '{}', and standard \
             input is not a terminal to ask you: pass --yes to replace it without asking",
            ctx.profile.name
        ))
        .into());
    }
    errln!(
        "Profile '{}' has the identity {old}. Replacing it means contacts who know that \
         key can no longer reach you.",
        ctx.profile.name,
    );
    eprint_prompt("Replace it with a new identity? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "Yes" | "YES") {
        return Ok(());
    }
    anyhow::bail!("kept the identity: nothing was changed")
}

/// Writes a question without a newline on stderr, so the answer follows it.
fn eprint_prompt(text: &str) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = err.write_all(text.as_bytes());
    let _ = err.flush();
}

fn print_created(
    ctx: &Context,
    key: &PublicKey,
    home: Option<&ServerUrl>,
    store: &Store,
    device: &Device,
) -> Result<(), StdoutError> {
    let address = Address::new(*key, home.cloned());
    outln!("Created a new identity for profile '{}'.", ctx.profile.name)?;
    outln!()?;
    outln!("  Public key:  {key}")?;
    outln!("  Fingerprint: {}", key.fingerprint())?;
    match home {
        Some(home) => outln!("  Home router: {}", untrusted_inline(home.short()))?,
        None => outln!("  Home router: {}", no_home_yet(ctx))?,
    }
    outln!("  Device:      {}", untrusted_inline(&device.name))?;
    outln!("  Database:    {}", store.path().display())?;
    outln!()?;
    outln!("Give your address to the people you want to talk to; they run:")?;
    outln!("  chat-p2p add-contact <your-name> {address}")?;
    outln!("Compare fingerprints aloud to be sure nobody swapped the key.")
}

/// Shows the profile's identity.
pub fn whoami(ctx: &Context, args: WhoamiArgs) -> Result<()> {
    let (store, key) = ctx.open_with_key()?;
    if args.key {
        return Ok(outln!("{key}")?);
    }
    // Read only: whoami must not write (a profile from before devices gets
    // its device id the first time it connects, and its home router the
    // first time it uses one).
    let home = store.home_router()?;
    let address = Address::new(key, home.clone());
    if args.address {
        return Ok(outln!("{address}")?);
    }
    let device = store.device_if_any()?;
    if args.json {
        return Ok(print_json(&identity_json(
            ctx,
            &key,
            home.as_ref(),
            &store,
            device.as_ref(),
        ))?);
    }
    outln!("Profile:     {}", ctx.profile.name)?;
    outln!("Address:     {address}")?;
    outln!("Public key:  {key}")?;
    outln!("Fingerprint: {}", key.fingerprint())?;
    match &home {
        Some(home) => outln!("Home router: {}", untrusted_inline(home.short()))?,
        None => outln!("Home router: {}", no_home_yet(ctx))?,
    }
    if let Some(device) = &device {
        outln!(
            "Device:      {} ({})",
            untrusted_inline(&device.name),
            short_device(&device.id)
        )?;
    }
    outln!("Database:    {}", store.path().display())?;
    Ok(())
}

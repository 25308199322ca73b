//! `passphrase set|change|remove`, and asking for a passphrase: on the
//! terminal without echo, or from the file an environment variable names
//! (for scripts and services).

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::Context;
use crate::identity::Identity;
use crate::keywrap::KdfParams;
use crate::store::{self, Store};

/// Names the file whose first line is the profile's passphrase.
pub const PASSPHRASE_FILE_ENV: &str = "CHAT_PASSPHRASE_FILE";
/// Names the file whose first line is the new passphrase for
/// `passphrase set` and `passphrase change`.
pub const NEW_PASSPHRASE_FILE_ENV: &str = "CHAT_NEW_PASSPHRASE_FILE";

/// Arguments of `passphrase`.
#[derive(Debug, Args)]
pub struct PassphraseArgs {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Protect the secret key with a passphrase (asked twice on the
    /// terminal, or read from the file CHAT_NEW_PASSPHRASE_FILE names).
    Set,
    /// Replace the passphrase (the current one from the terminal or
    /// CHAT_PASSPHRASE_FILE, the new one from the terminal or
    /// CHAT_NEW_PASSPHRASE_FILE).
    Change,
    /// Store the secret key unprotected again (0600 file permissions are
    /// then its only protection).
    Remove,
}

/// Runs `passphrase set|change|remove`.
pub fn run(ctx: &Context, args: PassphraseArgs) -> Result<()> {
    let mut store = ctx.open_store()?;
    if store.public_key()?.is_none() {
        return Err(ctx.no_identity());
    }
    let protected = store.key_protection()?.is_some();
    match args.action {
        Action::Set => {
            if protected {
                return Err(store::Error::AlreadyProtected.into());
            }
            let identity = store.require_identity()?;
            let new = new_passphrase(NEW_PASSPHRASE_FILE_ENV, "new passphrase")?;
            protect(&mut store, &identity, &new)?;
            outln!(
                "The secret key of profile '{}' is now protected by your passphrase. \
                 Commands that sign or decrypt will ask for it.",
                ctx.profile.name
            )?;
        }
        Action::Change => {
            if !protected {
                return Err(store::Error::NotProtected.into());
            }
            let identity = unlock(ctx, &store)?;
            let new = new_passphrase(NEW_PASSPHRASE_FILE_ENV, "new passphrase")?;
            protect(&mut store, &identity, &new)?;
            outln!(
                "The passphrase of profile '{}' was changed.",
                ctx.profile.name
            )?;
        }
        Action::Remove => {
            if !protected {
                return Err(store::Error::NotProtected.into());
            }
            let identity = unlock(ctx, &store)?;
            store.unprotect_identity(&identity)?;
            outln!(
                "The secret key of profile '{}' has no passphrase any more: \
                 anyone who can read the file can use it.",
                ctx.profile.name
            )?;
        }
    }
    Ok(())
}

/// Says that a key just adopted (by `init --force` or `import`) replaced
/// one that had a passphrase, and is stored without one: the user chose a
/// new key, not to reuse the old passphrase unasked.
pub fn warn_unprotected(ctx: &Context) {
    errln!(
        "warning: the new secret key is stored WITHOUT a passphrase (the old key had one): \
         run '{} passphrase set' to protect it",
        ctx.cli_prefix()
    );
}

fn protect(store: &mut Store, identity: &Identity, passphrase: &str) -> Result<()> {
    store.protect_identity(identity, passphrase.as_bytes(), KdfParams::for_new_keys())?;
    Ok(())
}

/// Opens the profile's protected secret key, asking for the passphrase
/// once. A wrong one is an error after the KDF's delay.
pub fn unlock(ctx: &Context, store: &Store) -> Result<Identity> {
    let prompt = format!("Passphrase for profile '{}': ", ctx.profile.name);
    let passphrase = ask(&prompt, PASSPHRASE_FILE_ENV, || {
        format!(
            "the secret key of profile '{}' is protected by a passphrase and there is no \
             terminal to ask for it: set {PASSPHRASE_FILE_ENV} to a file whose first line \
             is the passphrase",
            ctx.profile.name
        )
    })?;
    Ok(store.unlock_identity(passphrase.as_bytes())?)
}

/// A passphrase being chosen (`what`, e.g. "new passphrase"): from the
/// file `env` names, or typed twice on the terminal.
pub fn new_passphrase(env: &str, what: &str) -> Result<Zeroizing<String>> {
    let missing = || {
        format!(
            "there is no terminal to ask for the {what}: set {env} to a file whose first \
             line is the {what}"
        )
    };
    if std::env::var_os(env).is_some() {
        return ask("", env, missing);
    }
    let mut prompt = format!("{what}: ");
    prompt[..1].make_ascii_uppercase();
    let first = ask(&prompt, env, missing)?;
    let again = ask("Same again: ", env, missing)?;
    if *first != *again {
        anyhow::bail!("the two passphrases differ: nothing was changed; try again");
    }
    Ok(first)
}

/// A passphrase from the file named by `env`, else typed on the terminal
/// without echo; `missing` says what to do when neither is possible.
/// Never empty.
pub fn ask(prompt: &str, env: &str, missing: impl FnOnce() -> String) -> Result<Zeroizing<String>> {
    let passphrase = match std::env::var_os(env) {
        Some(path) => read_file(&PathBuf::from(path), env)?,
        None if std::io::stdin().is_terminal() || std::io::stderr().is_terminal() => {
            // rpassword reads /dev/tty, so `import -` can still ask.
            Zeroizing::new(
                rpassword::prompt_password(prompt)
                    .with_context(|| format!("cannot read the passphrase: {}", missing()))?,
            )
        }
        None => anyhow::bail!(missing()),
    };
    if passphrase.is_empty() {
        anyhow::bail!("the passphrase is empty: nothing was done");
    }
    Ok(passphrase)
}

/// The first line of `path`, without its line ending. Warns when other
/// users may read the file.
fn read_file(path: &std::path::Path, env: &str) -> Result<Zeroizing<String>> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        if std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
            errln!(
                "warning: the passphrase file '{}' (named by {env}) can be read by other \
                 users: 'chmod 600' it",
                crate::render::untrusted_inline(&path.display().to_string())
            );
        }
    }
    let text = Zeroizing::new(std::fs::read_to_string(path).with_context(|| {
        format!(
            "cannot read the passphrase from '{}' (named by {env})",
            path.display()
        )
    })?);
    let line = text.split('\n').next().unwrap_or_default();
    Ok(Zeroizing::new(
        line.strip_suffix('\r').unwrap_or(line).to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_first_line_without_its_ending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        for (content, want) in [
            ("secret\n", "secret"),
            ("secret", "secret"),
            ("se cret\r\nsecond line\n", "se cret"),
            ("\nsecret", ""),
        ] {
            std::fs::write(&path, content).unwrap();
            assert_eq!(*read_file(&path, "X").unwrap(), want, "{content:?}");
        }
    }
}

//! `add-contact`, `contacts` (alias `list-contacts`), `remove-contact` and
//! `rename-contact`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use unicode_width::UnicodeWidthStr;

use super::out::AlreadyDone;
use super::{parse_key, print_json, Context, UsageError};
use crate::identity::PublicKey;
use crate::render::untrusted_inline;
use crate::store::{Contact, ContactName, UnknownPeer};

/// Arguments of `add-contact`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The name to call them by (unique, ignoring case).
    name: String,
    /// Their public key, as printed by their `chat-p2p whoami --key`.
    #[arg(value_parser = parse_key)]
    pubkey: PublicKey,
    /// Print the new contact as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `contacts` and `list-contacts`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print the contacts as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `remove-contact`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The contact's name.
    name: String,
}

/// Arguments of `rename-contact`.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The contact's current name.
    old: String,
    /// The new name.
    new: String,
}

fn contact_json(c: &Contact) -> serde_json::Value {
    json!({
        "name": c.name,
        "public_key": c.key.to_base64(),
        "fingerprint": c.key.fingerprint(),
        "added_at": c.added_at,
    })
}

fn unknown_json(u: &UnknownPeer) -> serde_json::Value {
    json!({
        "name": null,
        "unknown": true,
        "public_key": u.key.to_base64(),
        "fingerprint": u.key.fingerprint(),
        "messages": u.messages,
        "last_message_at": u.last_at,
    })
}

/// A name as typed, checked: a name that can never be used is bad usage.
fn parse_name(name: &str) -> Result<ContactName> {
    ContactName::parse(name).map_err(|e| UsageError(e.to_string()).into())
}

/// Saves a contact.
pub fn add(ctx: &Context, args: AddArgs) -> Result<()> {
    let name = parse_name(&args.name)?;
    let (mut store, _) = ctx.open_with_key()?;
    let contact = store.add_contact(&name, &args.pubkey)?;
    if args.json {
        return print_json(&contact_json(&contact)).done("the contact was saved");
    }
    outln!(
        "Added contact '{}' (fingerprint {}).",
        untrusted_inline(&contact.name),
        contact.key.fingerprint()
    )
    .done("the contact was saved")
}

/// Lists contacts. Needs no identity: a profile filled by `import` alone
/// has contacts to show.
pub fn list(ctx: &Context, args: ListArgs) -> Result<()> {
    let store = ctx.open_store()?;
    let contacts = store.contacts()?;
    let unknown = store.unknown_peers()?;
    if args.json {
        let mut all: Vec<_> = contacts.iter().map(contact_json).collect();
        all.extend(unknown.iter().map(unknown_json));
        return Ok(print_json(&all.into())?);
    }
    if contacts.is_empty() {
        outln!("No contacts yet. Add one with: chat-p2p add-contact NAME PUBKEY")?;
    } else {
        let names: Vec<String> = contacts.iter().map(|c| untrusted_inline(&c.name)).collect();
        // Columns line up by what the terminal shows, not by characters.
        let width = names
            .iter()
            .map(|n| n.width())
            .max()
            .unwrap_or(0)
            .max("NAME".len());
        let pad = |name: &str| format!("{name}{}", " ".repeat(width - name.width()));
        outln!("{}  {:24}  PUBLIC KEY", pad("NAME"), "FINGERPRINT")?;
        for (c, name) in contacts.iter().zip(&names) {
            outln!("{}  {:24}  {}", pad(name), c.key.fingerprint(), c.key)?;
        }
    }
    if !unknown.is_empty() {
        outln!()?;
        outln!("Unknown senders (messages kept; name one with: chat-p2p add-contact NAME KEY):")?;
        for u in &unknown {
            outln!(
                "  {:24}  {}  {} message(s), last {}",
                u.key.fingerprint(),
                u.key,
                u.messages,
                super::history::local_time(&u.last_at)
            )?;
        }
    }
    if store.public_key()?.is_none() {
        errln!(
            "note: this profile has no identity yet: run '{} init' to send and receive.",
            ctx.cli_prefix()
        );
    }
    Ok(())
}

/// Removes a contact.
pub fn remove(ctx: &Context, args: RemoveArgs) -> Result<()> {
    let (mut store, _) = ctx.open_with_key()?;
    let contact = store.remove_contact(&args.name)?;
    outln!(
        "Removed contact '{}' ({}). Your history with this key is kept.",
        untrusted_inline(&contact.name),
        contact.key
    )
    .done("the contact was removed")
}

/// Renames a contact.
pub fn rename(ctx: &Context, args: RenameArgs) -> Result<()> {
    let new = parse_name(&args.new)?;
    let (mut store, _) = ctx.open_with_key()?;
    let contact = store.rename_contact(&args.old, &new)?;
    outln!(
        "Renamed contact '{}' to '{}'.",
        untrusted_inline(&args.old),
        untrusted_inline(&contact.name)
    )
    .done("the contact was renamed")
}

//! `add-contact`, `contacts` (alias `list-contacts`), `remove-contact` and
//! `rename-contact`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::out::AlreadyDone;
use super::{parse_key, print_json, Context};
use crate::identity::PublicKey;
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

/// Saves a contact.
pub fn add(ctx: &Context, args: AddArgs) -> Result<()> {
    let name = ContactName::parse(&args.name)?;
    let (mut store, _) = ctx.open_with_identity()?;
    let contact = store.add_contact(&name, &args.pubkey)?;
    if args.json {
        return print_json(&contact_json(&contact)).done("the contact was saved");
    }
    outln!(
        "Added contact '{}' (fingerprint {}).",
        contact.name,
        contact.key.fingerprint()
    )
    .done("the contact was saved")
}

/// Lists contacts.
pub fn list(ctx: &Context, args: ListArgs) -> Result<()> {
    let (store, _) = ctx.open_with_identity()?;
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
        let width = contacts
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(0)
            .max("NAME".len());
        outln!("{:width$}  {:24}  PUBLIC KEY", "NAME", "FINGERPRINT")?;
        for c in &contacts {
            outln!("{:width$}  {:24}  {}", c.name, c.key.fingerprint(), c.key)?;
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
    Ok(())
}

/// Removes a contact.
pub fn remove(ctx: &Context, args: RemoveArgs) -> Result<()> {
    let (mut store, _) = ctx.open_with_identity()?;
    let contact = store.remove_contact(&args.name)?;
    outln!(
        "Removed contact '{}' ({}). Your history with this key is kept.",
        contact.name,
        contact.key
    )
    .done("the contact was removed")
}

/// Renames a contact.
pub fn rename(ctx: &Context, args: RenameArgs) -> Result<()> {
    let new = ContactName::parse(&args.new)?;
    let (mut store, _) = ctx.open_with_identity()?;
    let contact = store.rename_contact(&args.old, &new)?;
    outln!("Renamed contact '{}' to '{}'.", args.old, contact.name).done("the contact was renamed")
}

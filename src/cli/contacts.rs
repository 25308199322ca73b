//! `add-contact`, `contacts` (alias `list-contacts`), `remove-contact` and
//! `rename-contact`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use unicode_width::UnicodeWidthStr;

use std::collections::HashMap;

use super::history::local_time;
use super::out::AlreadyDone;
use super::{parse_key, print_json, Context, UsageError};
use crate::identity::PublicKey;
use crate::render::untrusted_inline;
use crate::store::{Contact, ContactName, UnknownPeer, Verification};

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
    /// Print the removed contact as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `rename-contact`.
#[derive(Debug, Args)]
pub struct RenameArgs {
    /// The contact's current name.
    old: String,
    /// The new name.
    new: String,
    /// Print the renamed contact as JSON (with its `old_name`).
    #[arg(long)]
    json: bool,
}

/// A contact as every command prints it, with its verification. `kind`
/// tells it from an unknown sender in the same array (docs/JSON.md).
fn contact_json(c: &Contact, v: &Verification) -> serde_json::Value {
    let verified_at = match v {
        Verification::Verified { at } => Some(at),
        _ => None,
    };
    json!({
        "kind": "contact",
        "name": c.name,
        "public_key": c.key.to_base64(),
        "fingerprint": c.key.fingerprint(),
        "added_at": c.added_at,
        "verified": v.is_verified(),
        "verified_at": verified_at,
        "key_changed": matches!(v, Verification::KeyChanged { .. }),
    })
}

/// Adds a conversation's unread count and last message time to a
/// contact's (or unknown sender's) JSON object.
fn with_activity(mut value: serde_json::Value, activity: &Activity) -> serde_json::Value {
    if let Some(obj) = value.as_object_mut() {
        obj.insert("unread".into(), json!(activity.unread));
        obj.insert("last_message_at".into(), json!(activity.last_at));
    }
    value
}

/// A conversation's unread count and newest message time.
#[derive(Default)]
struct Activity {
    unread: u64,
    last_at: Option<String>,
}

/// Each conversation's activity, by peer key.
fn activity(store: &crate::store::Store) -> Result<HashMap<PublicKey, Activity>> {
    Ok(store
        .conversations()?
        .into_iter()
        .map(|c| {
            let activity = Activity {
                unread: c.unread,
                last_at: Some(c.last.created_at),
            };
            (c.peer, activity)
        })
        .collect())
}

/// Someone who wrote to this profile without being a contact.
fn unknown_json(u: &UnknownPeer) -> serde_json::Value {
    json!({
        "kind": "unknown",
        "name": null,
        "public_key": u.key.to_base64(),
        "fingerprint": u.key.fingerprint(),
        "messages": u.messages,
        "last_message_at": u.last_at,
    })
}

/// The UNREAD column: blank when nothing is unread, so the eye finds
/// the conversations that wait.
fn unread_cell(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        n.to_string()
    }
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
    // A name verified before with another key: say so now, not later.
    super::verify::check(&store, &contact)?;
    if args.json {
        let state = store.verification(&contact)?;
        return print_json(&contact_json(&contact, &state)).done("the contact was saved");
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
    // Each changed key is warned about, on stderr, before the list.
    let states = contacts
        .iter()
        .map(|c| super::verify::check(&store, c))
        .collect::<Result<Vec<_>>>()?;
    let activity = activity(&store)?;
    let none = Activity::default();
    let of = |key: &PublicKey| activity.get(key).unwrap_or(&none);
    if args.json {
        let mut all: Vec<_> = contacts
            .iter()
            .zip(&states)
            .map(|(c, v)| with_activity(contact_json(c, v), of(&c.key)))
            .collect();
        all.extend(
            unknown
                .iter()
                .map(|u| with_activity(unknown_json(u), of(&u.key))),
        );
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
        outln!(
            "{}  {:24}  {:12}  UNREAD  {:16}  PUBLIC KEY",
            pad("NAME"),
            "FINGERPRINT",
            "VERIFIED",
            "LAST MESSAGE"
        )?;
        for ((c, name), state) in contacts.iter().zip(&names).zip(&states) {
            let mark = match state {
                Verification::Verified { .. } => "yes",
                Verification::Unverified => "-",
                Verification::KeyChanged { .. } => "KEY CHANGED",
            };
            let a = of(&c.key);
            outln!(
                "{}  {:24}  {:12}  {:>6}  {:16}  {}",
                pad(name),
                c.key.fingerprint(),
                mark,
                unread_cell(a.unread),
                a.last_at.as_deref().map(local_time).unwrap_or_default(),
                c.key
            )?;
        }
    }
    if !unknown.is_empty() {
        outln!()?;
        outln!("Unknown senders (messages kept; name one with: chat-p2p add-contact NAME KEY):")?;
        for u in &unknown {
            let unread = match of(&u.key).unread {
                0 => String::new(),
                n => format!(" ({n} unread)"),
            };
            outln!(
                "  {:24}  {}  {} message(s){unread}, last {}",
                u.key.fingerprint(),
                u.key,
                u.messages,
                local_time(&u.last_at)
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
    if args.json {
        let state = store.verification(&contact)?;
        return print_json(&contact_json(&contact, &state)).done("the contact was removed");
    }
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
    let verification = super::verify::check(&store, &contact)?;
    if args.json {
        let mut value = contact_json(&contact, &verification);
        value["old_name"] = json!(args.old);
        return print_json(&value).done("the contact was renamed");
    }
    outln!(
        "Renamed contact '{}' to '{}'.",
        untrusted_inline(&args.old),
        untrusted_inline(&contact.name)
    )
    .done("the contact was renamed")
}

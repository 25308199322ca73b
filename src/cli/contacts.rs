//! `add-contact`, `contacts` (alias `list-contacts`), `remove-contact`,
//! `rename-contact` and `set-contact-router`.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use unicode_width::UnicodeWidthStr;

use std::collections::HashMap;

use super::history::local_time;
use super::out::AlreadyDone;
use super::{parse_router_arg, print_json, Context, UsageError};
use crate::address::Address;
use crate::client::ServerUrl;
use crate::identity::PublicKey;
use crate::render::untrusted_inline;
use crate::store::{self, Contact, ContactName, Store, UnknownPeer, Verification};

/// Arguments of `add-contact`.
#[derive(Debug, Args)]
#[command(after_help = "\
ADDRESS is what their 'chat-p2p whoami --address' prints:
  chat-p2p:KEY@ROUTER   their key and their home router (where they receive)
  KEY@ROUTER            the same
  KEY                   a bare public key: they receive at your home router
                        (or at the router they told you, if they wrote first)

Adding a contact again with the same name and key but another router
updates its router; 'set-contact-router' does that too.

Examples:
  chat-p2p add-contact bob chat-p2p:q2Xk...qk0=@wss://chat.example.org
  chat-p2p add-contact bob q2Xk...qk0= --router wss://chat.example.org")]
pub struct AddArgs {
    /// The name to call them by (unique, ignoring case).
    name: String,
    /// Their address (chat-p2p:KEY@ROUTER) or public key.
    #[arg(value_name = "ADDRESS")]
    address: String,
    /// Their home router (ws:// or wss://; a URL without a path gets /ws),
    /// for a bare key. An address naming another router is refused.
    #[arg(long, value_name = "URL")]
    router: Option<String>,
    /// Print the new contact as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `set-contact-router`.
#[derive(Debug, Args)]
pub struct SetRouterArgs {
    /// The contact's name.
    name: String,
    /// Their home router (ws:// or wss://; a URL without a path gets /ws).
    #[arg(value_name = "URL", required_unless_present = "same_as_mine")]
    router: Option<String>,
    /// They receive at your home router (what a bare key means), and move
    /// with it.
    #[arg(long, conflicts_with = "router")]
    same_as_mine: bool,
    /// Print the contact as JSON.
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
/// `home` is this profile's home router: the address of a contact on
/// "the same router as mine" names it.
fn contact_json(c: &Contact, v: &Verification, home: Option<&ServerUrl>) -> serde_json::Value {
    let verified_at = match v {
        Verification::Verified { at } => Some(at),
        _ => None,
    };
    let address = Address::new(c.key, c.router.clone().or_else(|| home.cloned()));
    json!({
        "kind": "contact",
        "name": c.name,
        "public_key": c.key.to_base64(),
        "fingerprint": c.key.fingerprint(),
        "router": c.router.as_ref().map(ServerUrl::as_str),
        "address": address.to_string(),
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

/// Where a contact receives, for people: the router without its default
/// path, or "the same router as mine".
pub(super) fn router_text(router: Option<&ServerUrl>) -> String {
    match router {
        Some(router) => untrusted_inline(router.short()),
        None => "(same as mine)".to_owned(),
    }
}

/// The address and router `add-contact` was given, checked before the
/// profile is opened: a bad one is bad usage and saves nothing.
fn parse_address(args: &AddArgs) -> Result<Address> {
    let mut address = Address::parse(&args.address).map_err(|e| UsageError(e.to_string()))?;
    let Some(flag) = &args.router else {
        return Ok(address);
    };
    let flag = parse_router_arg("--router", flag)?;
    match &address.router {
        Some(named) if *named != flag => Err(UsageError(format!(
            "the address says they receive at {}, but --router says {}: give the \
             address alone, or their bare key with --router",
            untrusted_inline(named.short()),
            untrusted_inline(flag.short())
        ))
        .into()),
        _ => {
            address.router = Some(flag);
            Ok(address)
        }
    }
}

/// Saves a contact; the same name and key again with another router
/// updates the contact's router.
pub fn add(ctx: &Context, args: AddArgs) -> Result<()> {
    let name = parse_name(&args.name)?;
    let address = parse_address(&args)?;
    let (mut store, _) = ctx.open_with_key()?;
    let home = store.home_router()?;
    match store.contact(name.as_str()) {
        Ok(existing) if existing.key == address.key => {
            return update(&mut store, existing, address.router, home, args.json);
        }
        Ok(_) | Err(store::Error::UnknownContact { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    let contact = store.add_contact_at(&name, &address.key, address.router.as_ref())?;
    // A name verified before with another key: say so now, not later.
    super::verify::check(&store, &contact)?;
    if args.json {
        let state = store.verification(&contact)?;
        return print_json(&contact_json(&contact, &state, home.as_ref()))
            .done("the contact was saved");
    }
    let at = match (&contact.router, &address.router) {
        (None, _) => "on the same router as you".to_owned(),
        (Some(router), Some(_)) => format!("at {}", untrusted_inline(router.short())),
        (Some(router), None) => format!(
            "at {}, the router they told you when they wrote",
            untrusted_inline(router.short())
        ),
    };
    outln!(
        "Added contact '{}' (fingerprint {}), {at}.",
        untrusted_inline(&contact.name),
        contact.key.fingerprint()
    )
    .done("the contact was saved")
}

/// `add-contact` for a contact saved already under this name with this
/// key: sets the router the address names, if it is another.
fn update(
    store: &mut Store,
    contact: Contact,
    router: Option<ServerUrl>,
    home: Option<ServerUrl>,
    json: bool,
) -> Result<()> {
    let state = super::verify::check(store, &contact)?;
    // A bare key changes nothing: the contact keeps what it has (which
    // may be a router they announced).
    let effective = contact.router.clone().or_else(|| home.clone());
    let contact = match router {
        Some(router) if effective.as_ref() != Some(&router) => {
            let was = router_text(contact.router.as_ref());
            let contact = store.set_contact_router(&contact.name, Some(&router))?;
            if !json {
                outln!(
                    "Contact '{}' now receives at {} (was: {was}).",
                    untrusted_inline(&contact.name),
                    untrusted_inline(router.short())
                )
                .done("the contact's router was changed")?;
            }
            contact
        }
        _ => {
            if !json {
                outln!(
                    "Contact '{}' is already saved with this key, at {}: nothing changed.",
                    untrusted_inline(&contact.name),
                    router_text(contact.router.as_ref())
                )?;
            }
            contact
        }
    };
    if json {
        print_json(&contact_json(&contact, &state, home.as_ref()))
            .done("the contact's router was changed")?;
    }
    Ok(())
}

/// Changes where a contact receives.
pub fn set_router(ctx: &Context, args: SetRouterArgs) -> Result<()> {
    let router = match &args.router {
        Some(text) if !args.same_as_mine => Some(parse_router_arg("URL", text)?),
        _ => None,
    };
    let (mut store, _) = ctx.open_with_key()?;
    let home = store.home_router()?;
    let contact = store.contact(&args.name)?;
    let state = super::verify::check(&store, &contact)?;
    let contact = if contact.router == router {
        if !args.json {
            outln!(
                "Contact '{}' is at {} already: nothing changed.",
                untrusted_inline(&contact.name),
                router_text(contact.router.as_ref())
            )?;
        }
        contact
    } else {
        let was = router_text(contact.router.as_ref());
        let contact = store.set_contact_router(&contact.name, router.as_ref())?;
        if !args.json {
            let now = match &contact.router {
                Some(router) => format!("now receives at {}", untrusted_inline(router.short())),
                None => "is now on the same router as you".to_owned(),
            };
            outln!(
                "Contact '{}' {now} (was: {was}).",
                untrusted_inline(&contact.name)
            )
            .done("the contact's router was changed")?;
        }
        contact
    };
    if args.json {
        return print_json(&contact_json(&contact, &state, home.as_ref()))
            .done("the contact's router was changed");
    }
    Ok(())
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
    let home = store.home_router()?;
    let none = Activity::default();
    let of = |key: &PublicKey| activity.get(key).unwrap_or(&none);
    if args.json {
        let mut all: Vec<_> = contacts
            .iter()
            .zip(&states)
            .map(|(c, v)| with_activity(contact_json(c, v, home.as_ref()), of(&c.key)))
            .collect();
        all.extend(
            unknown
                .iter()
                .map(|u| with_activity(unknown_json(u), of(&u.key))),
        );
        return Ok(print_json(&all.into())?);
    }
    if contacts.is_empty() {
        outln!("No contacts yet. Add one with: chat-p2p add-contact NAME ADDRESS")?;
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
            "{}  {:24}  {:12}  UNREAD  {:16}  {:44}  ROUTER",
            pad("NAME"),
            "FINGERPRINT",
            "VERIFIED",
            "LAST MESSAGE",
            "PUBLIC KEY"
        )?;
        for ((c, name), state) in contacts.iter().zip(&names).zip(&states) {
            let mark = match state {
                Verification::Verified { .. } => "yes",
                Verification::Unverified => "-",
                Verification::KeyChanged { .. } => "KEY CHANGED",
            };
            let a = of(&c.key);
            outln!(
                "{}  {:24}  {:12}  {:>6}  {:16}  {:44}  {}",
                pad(name),
                c.key.fingerprint(),
                mark,
                unread_cell(a.unread),
                a.last_at.as_deref().map(local_time).unwrap_or_default(),
                c.key.to_base64(),
                router_text(c.router.as_ref())
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
        let home = store.home_router()?;
        return print_json(&contact_json(&contact, &state, home.as_ref()))
            .done("the contact was removed");
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
        let home = store.home_router()?;
        let mut value = contact_json(&contact, &verification, home.as_ref());
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

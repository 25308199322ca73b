//! `home`: the router where this profile receives, shown or moved.

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;

use super::out::AlreadyDone;
use super::{parse_router_arg, print_json, Context};
use crate::address::Address;
use crate::client::ServerUrl;
use crate::identity::PublicKey;
use crate::render::untrusted_inline;
use crate::store::Store;

/// Arguments of `home`.
#[derive(Debug, Args)]
#[command(after_help = "\
Your home router is where you receive: your contacts deliver to it, and it
is part of your address ('chat-p2p whoami --address'). A profile's first
router becomes its home; --server (or CHAT_SERVER) on another command uses
another router for that command only.

'home set URL' moves it: each contact is told by the next 'sync' or 'chat'
(an end-to-end encrypted notice, delivered to their router), and what still
waits for you at the old router is fetched from there once more.")]
pub struct HomeArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Move your home router to URL and tell every contact.
    Set {
        /// The new home router (ws:// or wss://; a URL without a path gets
        /// /ws).
        #[arg(value_name = "URL")]
        url: String,
    },
}

/// Runs `home`.
pub fn run(ctx: &Context, args: HomeArgs) -> Result<()> {
    match &args.action {
        None => show(ctx, args.json),
        Some(Action::Set { url }) => set(ctx, url, args.json),
    }
}

/// The fields `home --json` and `home set --json` share.
fn home_json(key: &PublicKey, store: &Store) -> Result<serde_json::Value> {
    let home = store.home_router()?;
    let previous = store.previous_home()?;
    Ok(json!({
        "home_router": home.as_ref().map(ServerUrl::as_str),
        "previous": previous.as_ref().map(ServerUrl::as_str),
        "address": Address::new(*key, home).to_string(),
    }))
}

/// Shows the home router.
fn show(ctx: &Context, json: bool) -> Result<()> {
    let (store, key) = ctx.open_with_key()?;
    if json {
        return Ok(print_json(&home_json(&key, &store)?)?);
    }
    let home = store.home_router()?;
    match &home {
        Some(home) => outln!("Home router: {}", untrusted_inline(home.short()))?,
        None => outln!("Home router: {}", super::identity::no_home_yet(ctx))?,
    }
    if let Some(previous) = store.previous_home()? {
        outln!(
            "Previous:    {} (what waits there is fetched by the next sync or chat)",
            untrusted_inline(previous.short())
        )?;
    }
    outln!("Address:     {}", Address::new(key, home))?;
    Ok(())
}

/// A router set in CHAT_SERVER or config.toml wins over the home for
/// every command (see `home_router`): said when it is not the new home,
/// or the next sync would still receive there.
fn warn_if_overridden(ctx: &Context, home: &ServerUrl) {
    if ctx.config.router == *home {
        return;
    }
    let router = untrusted_inline(ctx.config.router.short());
    let fix = match ctx.config.origin(crate::config::Key::Router) {
        super::Origin::Env(var) => format!("{var} names the router {router}, which commands use instead of your home router: unset {var}"),
        super::Origin::File => format!(
            "config.toml names the router {router}, which commands use instead of your home \
             router: '{} config unset router'",
            ctx.cli_prefix()
        ),
        _ => return,
    };
    errln!(
        "note: {fix}, or set it to {}",
        untrusted_inline(home.short())
    );
}

/// Moves the home router.
fn set(ctx: &Context, url: &str, json: bool) -> Result<()> {
    let to = parse_router_arg("URL", url)?;
    let (mut store, key) = ctx.open_with_key()?;
    let moved = store.move_home(&to)?;
    let changed = moved.from.as_ref() != Some(&to);
    let what = "the home router was moved";
    warn_if_overridden(ctx, &to);
    if json {
        let mut value = home_json(&key, &store)?;
        value["changed"] = json!(changed);
        value["told"] = json!(moved.told);
        return print_json(&value).done(what);
    }
    let shown = untrusted_inline(to.short());
    if !changed {
        return Ok(outln!(
            "Your home router is {shown} already: nothing changed."
        )?);
    }
    let contacts = match moved.told {
        1 => "1 contact".to_owned(),
        n => format!("{n} contacts"),
    };
    match &moved.from {
        Some(from) => outln!(
            "Your home router is now {shown} (was {}). {contacts} and your other devices \
             will be told: they are told by the next sync or chat; what waits at the old \
             router is fetched once more.",
            untrusted_inline(from.short())
        )
        .done(what)?,
        None => outln!(
            "Your home router is now {shown}. {contacts} will be told by the next sync or chat."
        )
        .done(what)?,
    }
    outln!("Your address: {}", Address::new(key, Some(to))).done(what)
}

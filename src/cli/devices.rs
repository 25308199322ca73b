//! `devices`: this identity's devices as the router knows them; removing
//! one; renaming this one.

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::json;
use unicode_width::UnicodeWidthStr;
use uuid::Uuid;

use super::history::local_time;
use super::identity::short_device;
use super::{print_json, runtime, Context, UsageError};
use crate::client::devices;
use crate::client::ServerUrl;
use crate::protocol::DeviceInfo;
use crate::render::untrusted_inline;

/// Arguments of `devices`.
#[derive(Debug, Args)]
#[command(
    after_help = "Each device of an identity (linked with 'chat-p2p link') has its own id and \
    name; the router delivers every message to each of them. Removing a device stops delivery \
    to it at the router, but cannot take the secret key back from it: a device that kept the \
    key can register again. Only a new identity ('init --force') revokes a key."
)]
pub struct DevicesArgs {
    #[command(subcommand)]
    action: Option<Action>,
    /// The router's WebSocket URL [default: router in config.toml, else
    /// this profile's home router, else ws://localhost:8080/ws]. Accepted
    /// before or after the subcommand.
    #[arg(
        long,
        env = "CHAT_SERVER",
        value_name = "URL",
        value_parser = ServerUrl::parse,
        global = true
    )]
    server: Option<ServerUrl>,
    /// How many seconds to wait at most for the router.
    #[arg(long, value_name = "SECS", default_value_t = 10, global = true)]
    timeout: u64,
    /// Print the result as JSON.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// List the devices (the default).
    List,
    /// Stop delivering to a device: ID is its id or the start of it, as
    /// the list shows it.
    Remove {
        /// The device's id (at least 4 hex digits of it).
        id: String,
    },
    /// Rename this device; the router and your other devices see the new
    /// name after its next connection.
    Rename {
        /// The new name (at most 64 bytes).
        name: String,
    },
}

/// Runs `devices`.
pub fn run(ctx: &Context, args: DevicesArgs) -> Result<()> {
    match &args.action {
        None | Some(Action::List) => list(ctx, &args),
        Some(Action::Remove { id }) => remove(ctx, &args, id),
        Some(Action::Rename { name }) => rename(ctx, &args, name),
    }
}

fn list(ctx: &Context, args: &DevicesArgs) -> Result<()> {
    let (mut store, identity) = ctx.open_with_identity()?;
    let me = store.device()?;
    let timeout = Duration::from_secs(args.timeout);
    let server = &super::home_router(args.server.as_ref(), &mut store)?;
    let all = runtime()?
        .block_on(devices::list(server, &identity, timeout))
        .with_context(|| format!("cannot list the devices at {server}"))?;
    if args.json {
        let rows = all.iter().map(|d| device_json(d, &me.id)).collect();
        return Ok(print_json(&rows)?);
    }
    if all.is_empty() {
        return Ok(outln!(
            "The router at {server} knows no device of this identity yet: each device \
             registers the first time it connects (chat, sync or send)."
        )?);
    }
    print_table(&all, &me.id)
}

fn print_table(all: &[DeviceInfo], me: &Uuid) -> Result<()> {
    let names: Vec<String> = all.iter().map(|d| untrusted_inline(&d.name)).collect();
    let width = names.iter().map(|n| n.width()).max().unwrap_or(0).max(4);
    let mut out = super::out::stdout();
    writeln!(
        out,
        "  ID        NAME{}  FIRST SEEN        LAST SEEN",
        " ".repeat(width - 4)
    )?;
    for (d, name) in all.iter().zip(&names) {
        let mark = if d.id == *me { "*" } else { " " };
        let seen = if d.online {
            "online now".to_owned()
        } else {
            local_time(&d.last_seen)
        };
        let this = if d.id == *me { "  (this device)" } else { "" };
        writeln!(
            out,
            "{mark} {}  {name}{}  {:16}  {seen}{this}",
            short_device(&d.id),
            " ".repeat(width - name.width()),
            local_time(&d.first_seen),
        )?;
    }
    Ok(())
}

fn device_json(d: &DeviceInfo, me: &Uuid) -> serde_json::Value {
    json!({
        "id": d.id,
        "name": d.name,
        "first_seen": d.first_seen,
        "last_seen": d.last_seen,
        "online": d.online,
        "this_device": d.id == *me,
    })
}

fn remove(ctx: &Context, args: &DevicesArgs, id: &str) -> Result<()> {
    let (mut store, identity) = ctx.open_with_identity()?;
    let me = store.device()?;
    let timeout = Duration::from_secs(args.timeout);
    let server = &super::home_router(args.server.as_ref(), &mut store)?;
    let rt = runtime()?;
    let all = rt
        .block_on(devices::list(server, &identity, timeout))
        .with_context(|| format!("cannot list the devices at {server}"))?;
    let target = resolve(&all, id)?;
    if target.id == me.id {
        return Err(UsageError(
            "that is this device: remove it from another device of this identity (or, to stop \
             using this profile, just delete it)"
                .to_owned(),
        )
        .into());
    }
    let removed = rt
        .block_on(devices::remove(server, &identity, target.id, timeout))
        .with_context(|| format!("cannot remove the device at {server}"))?;
    if args.json {
        return Ok(print_json(&json!({
            "id": target.id,
            "name": target.name,
            "removed": removed,
        }))?);
    }
    let name = untrusted_inline(&target.name);
    if removed {
        outln!(
            "Removed device {} ({name}): the router delivers nothing more to it. It keeps what \
             it already has, and the secret key: if it is lost or stolen, make a new identity.",
            short_device(&target.id)
        )?;
    } else {
        outln!(
            "Device {} ({name}) was already removed.",
            short_device(&target.id)
        )?;
    }
    Ok(())
}

/// The one device whose id starts with `id` (hex digits, hyphens
/// ignored, at least 4).
fn resolve<'a>(all: &'a [DeviceInfo], id: &str) -> Result<&'a DeviceInfo> {
    let wanted: String = id
        .chars()
        .filter(|c| *c != '-')
        .collect::<String>()
        .to_ascii_lowercase();
    if wanted.len() < 4 || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(UsageError(format!(
            "'{}' is not a device id: give at least 4 hex digits of one, as 'chat-p2p devices' \
             lists them",
            untrusted_inline(id)
        ))
        .into());
    }
    let matches: Vec<&DeviceInfo> = all
        .iter()
        .filter(|d| d.id.simple().to_string().starts_with(&wanted))
        .collect();
    match matches.as_slice() {
        [one] => Ok(one),
        [] => anyhow::bail!(
            "no device with id '{}': 'chat-p2p devices' lists them",
            untrusted_inline(id)
        ),
        many => Err(UsageError(format!(
            "the id '{}' is ambiguous: it could be {}; give more of it",
            untrusted_inline(id),
            many.iter()
                .map(|d| format!("{} ({})", d.id, untrusted_inline(&d.name)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .into()),
    }
}

fn rename(ctx: &Context, args: &DevicesArgs, name: &str) -> Result<()> {
    let (store, _key) = ctx.open_with_key()?;
    let device = match store.rename_device(name) {
        Err(e @ crate::store::Error::BadDeviceName(_)) => {
            return Err(UsageError(e.to_string()).into())
        }
        other => other?,
    };
    if args.json {
        return Ok(print_json(&json!({"id": device.id, "name": device.name}))?);
    }
    Ok(outln!(
        "This device is now named '{}'; the router learns it at the next connection.",
        untrusted_inline(&device.name)
    )?)
}

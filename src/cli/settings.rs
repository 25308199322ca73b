//! The resolved configuration (flag > environment > `config.toml` >
//! default, decided once), and the `config` and `profiles` commands.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};
use clap::parser::ValueSource;
use clap::{ArgMatches, Args, Subcommand};
use serde_json::json;

use super::{print_json, Context, UsageError};
use crate::client::{ServerUrl, DEFAULT_SERVER};
use crate::config::{self, ColorChoice, ConfigError, FileConfig, Key};
use crate::profile::{ProfileName, DB_FILE_NAME};
use crate::render::untrusted_inline;

/// Where a setting's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A command-line flag.
    Flag,
    /// The named environment variable.
    Env(&'static str),
    /// `config.toml`.
    File,
    /// The built-in default.
    Default,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Flag => "flag",
            Origin::Env(_) => "env",
            Origin::File => "file",
            Origin::Default => "default",
        }
    }

    fn describe(self) -> String {
        match self {
            Origin::Env(var) => format!("env {var}"),
            other => other.as_str().to_owned(),
        }
    }
}

/// Every setting, resolved once when the command starts: flag, then
/// environment, then `config.toml`, then the default.
#[derive(Debug, Clone)]
pub struct Config {
    /// The default router (`CHAT_SERVER` > file > built-in). Commands with
    /// `--server` already get the flag on top of this through clap.
    pub router: ServerUrl,
    /// The profile in use (`--profile` > `CHAT_PROFILE` > file > `default`).
    pub profile: ProfileName,
    /// When to colour (`--color` > `NO_COLOR`/`CLICOLOR_FORCE` > file >
    /// auto); [`super::shell::colour`] applies it to a stream.
    pub color: ColorChoice,
    /// Show times in UTC (`CHAT_DISPLAY_UTC` > file > false).
    pub display_utc: bool,
    /// Ring the terminal bell on a new message (`CHAT_NOTIFY_BELL` > file
    /// > false).
    pub notify_bell: bool,
    /// A desktop notification on a new message (`CHAT_NOTIFY_DESKTOP` >
    /// file > false).
    pub notify_desktop: bool,
    /// The configuration file consulted (it may not exist).
    pub path: Option<PathBuf>,
    /// Whether that file exists.
    pub file_exists: bool,
    /// Keys in the file this version ignores.
    pub unknown_keys: Vec<String>,
    /// Why the file was ignored, for commands that run without it
    /// (`doctor`, `config set`).
    pub problem: Option<String>,
    origins: [Origin; 6],
}

/// What the command line said about the settings that have flags.
pub struct Flags {
    /// `--profile`, `CHAT_PROFILE` or the (file's) default, from clap.
    pub profile: ProfileName,
    /// Where clap took `profile` from.
    pub profile_source: Option<ValueSource>,
    /// `--color`.
    pub color: Option<ColorChoice>,
}

impl Config {
    /// Resolves every setting from the flags, the environment and `file`.
    pub fn resolve(flags: Flags, file: Option<&FileConfig>) -> Result<Self> {
        let empty = FileConfig::default();
        let f = file.unwrap_or(&empty);
        let profile_origin = match flags.profile_source {
            Some(ValueSource::CommandLine) => Origin::Flag,
            Some(ValueSource::EnvVariable) => Origin::Env("CHAT_PROFILE"),
            _ if f.profile.is_some() => Origin::File,
            _ => Origin::Default,
        };
        let (router, router_origin) = match env("CHAT_SERVER") {
            Some(text) => (
                ServerUrl::parse(&text).map_err(|e| UsageError(format!("CHAT_SERVER: {e}")))?,
                Origin::Env("CHAT_SERVER"),
            ),
            None => match &f.router {
                Some(url) => (url.clone(), Origin::File),
                None => (
                    ServerUrl::parse(DEFAULT_SERVER).map_err(anyhow::Error::msg)?,
                    Origin::Default,
                ),
            },
        };
        let (color, color_origin) = resolve_color(flags.color, f.color);
        let (display_utc, utc_origin) = resolve_bool(Key::DisplayUtc, f.utc)?;
        let (notify_bell, bell_origin) = resolve_bool(Key::NotifyBell, f.bell)?;
        let (notify_desktop, desktop_origin) = resolve_bool(Key::NotifyDesktop, f.desktop)?;
        Ok(Self {
            router,
            profile: flags.profile,
            color,
            display_utc,
            notify_bell,
            notify_desktop,
            path: file.map(|f| f.path.clone()),
            file_exists: f.exists,
            unknown_keys: f.unknown.clone(),
            problem: None,
            origins: [
                router_origin,
                profile_origin,
                color_origin,
                utc_origin,
                bell_origin,
                desktop_origin,
            ],
        })
    }

    /// Where `key`'s value came from.
    pub fn origin(&self, key: Key) -> Origin {
        let i = Key::ALL.iter().position(|k| *k == key).unwrap_or(0);
        self.origins[i]
    }

    /// `key`'s effective value, as JSON.
    fn value(&self, key: Key) -> serde_json::Value {
        match key {
            Key::Router => json!(self.router.to_string()),
            Key::Profile => json!(self.profile.as_str()),
            Key::DisplayColor => json!(self.color.as_str()),
            Key::DisplayUtc => json!(self.display_utc),
            Key::NotifyBell => json!(self.notify_bell),
            Key::NotifyDesktop => json!(self.notify_desktop),
        }
    }
}

/// A non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// `--color`, else `NO_COLOR` (never) or `CLICOLOR_FORCE` (always), else
/// the file, else auto. NO_COLOR wins over CLICOLOR_FORCE, as no-color.org
/// asks.
pub fn resolve_color(
    flag: Option<ColorChoice>,
    file: Option<ColorChoice>,
) -> (ColorChoice, Origin) {
    if let Some(choice) = flag {
        return (choice, Origin::Flag);
    }
    if env("NO_COLOR").is_some() {
        return (ColorChoice::Never, Origin::Env("NO_COLOR"));
    }
    if env("CLICOLOR_FORCE").is_some_and(|v| v != "0") {
        return (ColorChoice::Always, Origin::Env("CLICOLOR_FORCE"));
    }
    match file {
        Some(choice) => (choice, Origin::File),
        None => (ColorChoice::Auto, Origin::Default),
    }
}

fn resolve_bool(key: Key, file: Option<bool>) -> Result<(bool, Origin)> {
    if let Some(text) = env(key.env()) {
        let value = config::parse_bool(&text).ok_or_else(|| {
            UsageError(format!(
                "{}='{}' is not a boolean: use 1 or 0 (true/false, yes/no, on/off)",
                key.env(),
                untrusted_inline(&text)
            ))
        })?;
        return Ok((value, Origin::Env(key.env())));
    }
    Ok(match file {
        Some(value) => (value, Origin::File),
        None => (false, Origin::Default),
    })
}

/// Gives the command line the file's defaults (profile, router), so that
/// `--help` shows them and a flag or variable still wins over them.
pub fn with_file_defaults(mut command: clap::Command, file: &FileConfig) -> clap::Command {
    if let Some(profile) = &file.profile {
        command = command.mut_arg("profile", |a| a.default_value(profile.to_string()));
    }
    match &file.router {
        Some(router) => set_server_default(command, &router.to_string()),
        None => command,
    }
}

/// Sets the default of `--server` in every (sub)command that has one.
fn set_server_default(command: clap::Command, url: &str) -> clap::Command {
    let has_server = command.get_arguments().any(|a| a.get_id() == "server");
    let command = if has_server {
        command.mut_arg("server", |a| a.default_value(url.to_owned()))
    } else {
        command
    };
    command.mut_subcommands(|sub| set_server_default(sub, url))
}

/// Where clap took the global `profile` from: the deepest subcommand
/// that saw it knows best.
pub fn profile_source(matches: &ArgMatches) -> Option<ValueSource> {
    let mut m = matches;
    let mut source = m.value_source("profile");
    while let Some((_, sub)) = m.subcommand() {
        if let Some(s) = sub.value_source("profile") {
            if source != Some(ValueSource::CommandLine) {
                source = Some(s);
            }
        }
        m = sub;
    }
    source
}

/// Arguments of `config`.
#[derive(Debug, Args)]
#[command(after_help = "\
The file is config.toml in the platform's configuration directory (on Linux \
~/.config/chat-p2p/config.toml) unless CHAT_CONFIG names another. A flag wins \
over an environment variable, which wins over the file, which wins over the default.

Settings and their variables:
  router          CHAT_SERVER          default ws://localhost:8080/ws
  profile         CHAT_PROFILE         default \"default\"
  display.color   NO_COLOR, CLICOLOR_FORCE (and --color)   auto|always|never
  display.utc     CHAT_DISPLAY_UTC     show times in UTC (default false)
  notify.bell     CHAT_NOTIFY_BELL     terminal bell on a new message (default false)
  notify.desktop  CHAT_NOTIFY_DESKTOP  desktop notification (default false)

Examples:
  chat-p2p config                       # every setting and where it comes from
  chat-p2p config set router wss://chat.example.org/ws
  chat-p2p config set notify.bell true
  chat-p2p config unset router")]
pub struct ConfigArgs {
    #[command(subcommand)]
    action: Option<ConfigAction>,
    /// Print the settings as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum ConfigAction {
    /// Print one setting's effective value.
    Get {
        /// The setting, e.g. router or notify.bell.
        key: String,
    },
    /// Check a value and write it to the configuration file.
    Set {
        /// The setting, e.g. router or notify.bell.
        key: String,
        /// Its new value.
        value: String,
    },
    /// Remove a setting from the configuration file (back to its default).
    Unset {
        /// The setting.
        key: String,
    },
}

/// A key typed by the user; unknown is a usage error naming the known ones.
fn parse_key(name: &str) -> Result<Key> {
    Key::parse(name).map_err(|e| UsageError(e.to_string()).into())
}

fn config_path(ctx: &Context) -> Result<&Path> {
    ctx.config.path.as_deref().ok_or_else(|| {
        anyhow::anyhow!(
            "cannot find a configuration directory for this user: set {}=FILE",
            config::PATH_ENV
        )
    })
}

/// Runs `config`.
pub fn config(ctx: &Context, args: ConfigArgs) -> Result<()> {
    match args.action {
        None => show(ctx, args.json),
        Some(ConfigAction::Get { key }) => {
            let key = parse_key(&key)?;
            match ctx.config.value(key) {
                serde_json::Value::String(s) => outln!("{}", untrusted_inline(&s))?,
                other => outln!("{other}")?,
            }
            Ok(())
        }
        Some(ConfigAction::Set { key, value }) => {
            let key = parse_key(&key)?;
            let path = config_path(ctx)?;
            let written = config::set(path, key, &value).map_err(|e| match e {
                ConfigError::BadValue { .. } => UsageError(e.to_string()).into(),
                other => anyhow::Error::new(other),
            })?;
            outln!(
                "{key} = {} (in {})",
                untrusted_inline(&written.to_string()),
                path.display()
            )?;
            if let Origin::Env(var) = ctx.config.origin(key) {
                errln!("note: {var} is set in the environment and wins over the file");
            }
            Ok(())
        }
        Some(ConfigAction::Unset { key }) => {
            let key = parse_key(&key)?;
            let path = config_path(ctx)?;
            if config::unset(path, key)? {
                outln!("{key} removed from {}", path.display())?;
            } else {
                outln!("{key} was not set in {}", path.display())?;
            }
            Ok(())
        }
    }
}

fn show(ctx: &Context, json: bool) -> Result<()> {
    let c = &ctx.config;
    let path = c.path.as_ref().map(|p| p.display().to_string());
    if json {
        let settings: Vec<_> = Key::ALL
            .into_iter()
            .map(|key| {
                let origin = c.origin(key);
                json!({
                    "key": key.name(),
                    "value": c.value(key),
                    "source": origin.as_str(),
                    "variable": match origin { Origin::Env(v) => Some(v), _ => None },
                })
            })
            .collect();
        print_json(&json!({
            "file": path,
            "file_exists": c.file_exists,
            "unknown_keys": c.unknown_keys,
            "settings": settings,
        }))?;
        return Ok(());
    }
    let mut out = super::out::stdout();
    for key in Key::ALL {
        let value = match c.value(key) {
            serde_json::Value::String(s) => untrusted_inline(&s),
            other => other.to_string(),
        };
        let origin = c.origin(key).describe();
        writeln!(out, "{:<15} {value:<32} {origin}", key.name())?;
    }
    let state = if c.file_exists {
        ""
    } else {
        " (not created yet)"
    };
    match &path {
        Some(p) => writeln!(out, "\nfile: {}{state}", untrusted_inline(p))?,
        None => writeln!(
            out,
            "\nfile: none (no configuration directory; set CHAT_CONFIG)"
        )?,
    }
    for key in &c.unknown_keys {
        writeln!(out, "ignored: unknown key '{}'", untrusted_inline(key))?;
    }
    Ok(())
}

/// Arguments of `profiles`.
#[derive(Debug, Args)]
pub struct ProfilesArgs {
    /// Print the profiles as JSON.
    #[arg(long)]
    json: bool,
}

/// One profile found in the home.
struct Found {
    name: String,
    database: PathBuf,
    key: Option<crate::identity::PublicKey>,
    messages: Option<i64>,
    error: Option<String>,
}

/// Reads a profile's key and message count without writing to its file
/// (no migration: listing must not change anything).
fn inspect(name: String, database: PathBuf) -> Found {
    let read = || -> Result<(Option<crate::identity::PublicKey>, i64)> {
        let conn = rusqlite::Connection::open_with_flags(
            &database,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let key: Option<String> = rusqlite::OptionalExtension::optional(conn.query_row(
            "SELECT public_key FROM identity WHERE id = 1",
            [],
            |r| r.get(0),
        ))?;
        let key = key
            .map(|k| crate::identity::PublicKey::parse(&k))
            .transpose()?;
        let messages = conn.query_row("SELECT count(*) FROM messages", [], |r| r.get(0))?;
        Ok((key, messages))
    };
    match read() {
        Ok((key, messages)) => Found {
            name,
            database,
            key,
            messages: Some(messages),
            error: None,
        },
        Err(e) => Found {
            name,
            database,
            key: None,
            messages: None,
            error: Some(format!("{e:#}")),
        },
    }
}

/// The profiles under `home`: directories holding a database, by name.
pub fn profile_names(home: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(home) else {
        return Vec::new();
    };
    let mut found: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            ProfileName::parse(&name).ok()?;
            let db = e.path().join(DB_FILE_NAME);
            db.is_file().then_some((name, db))
        })
        .collect();
    found.sort();
    found
}

/// Runs `profiles`.
pub fn profiles(ctx: &Context, args: ProfilesArgs) -> Result<()> {
    let home = ctx
        .profile
        .dir
        .parent()
        .context("the profile has no home directory")?;
    let current = ctx.profile.name.as_str();
    let found: Vec<Found> = profile_names(home)
        .into_iter()
        .map(|(name, db)| inspect(name, db))
        .collect();
    if args.json {
        let list: Vec<_> = found
            .iter()
            .map(|p| {
                json!({
                    "name": p.name,
                    "current": p.name == current,
                    "identity": p.key.is_some(),
                    "public_key": p.key.as_ref().map(|k| k.to_base64()),
                    "fingerprint": p.key.as_ref().map(|k| k.fingerprint()),
                    "messages": p.messages,
                    "database": p.database.display().to_string(),
                    "error": p.error,
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(list))?;
        return Ok(());
    }
    let mut out = super::out::stdout();
    if found.is_empty() {
        writeln!(
            out,
            "No profiles in {}: create one with '{} init'.",
            untrusted_inline(&home.display().to_string()),
            ctx.cli_prefix()
        )?;
    }
    for p in &found {
        let mark = if p.name == current { "*" } else { " " };
        let name = untrusted_inline(&p.name);
        let detail = match (&p.error, &p.key, p.messages) {
            (Some(e), _, _) => format!("cannot read: {}", untrusted_inline(e)),
            (None, Some(key), Some(n)) => format!("{}  {n} messages", key.fingerprint()),
            (None, _, n) => format!("no identity  {} messages", n.unwrap_or(0)),
        };
        writeln!(out, "{mark} {name:<20} {detail}")?;
    }
    Ok(())
}

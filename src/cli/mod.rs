//! The command line: parses what the user typed, resolves it once into a
//! [`Context`], calls the library and prints the result.
//!
//! Exit codes are decided here only: 0 success, 1 failure, 2 bad usage.

// First: its macros (`outln!`, `errln!`) are used by the modules below.
#[macro_use]
mod out;
mod archive;
mod chat;
mod contacts;
mod devices;
mod doctor;
mod history;
mod home;
mod identity;
mod inbox;
mod link;
mod notify;
mod outbox;
mod passphrase;
mod router;
mod settings;
mod shell;
mod statuses;
mod sync;
mod verify;
mod watch;

pub use settings::{Config, Origin};

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result};
use clap::{Args, Parser, Subcommand};

use crate::client::ServerUrl;
use crate::identity::PublicKey;
use crate::profile::{self, Profile, ProfileName};
use crate::store::{self, Store};

/// A private, end-to-end encrypted messenger for the terminal.
///
/// Each profile is one SQLite file holding its identity, contacts and
/// messages; open it with `sqlite3` whenever you like.
#[derive(Debug, Parser)]
#[command(name = "chat-p2p", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    global: GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

/// Options that every command takes.
#[derive(Debug, Args)]
struct GlobalArgs {
    /// Profile to use: one identity, its contacts and messages [default:
    /// `profile` in config.toml, else "default"].
    #[arg(
        long,
        short = 'p',
        global = true,
        env = "CHAT_PROFILE",
        default_value = "default",
        value_parser = clap::value_parser!(ProfileName)
    )]
    profile: ProfileName,
    /// Directory holding the profiles [default: the platform data directory,
    /// e.g. ~/.local/share/chat-p2p].
    #[arg(long, global = true, env = "CHAT_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// When to colour output: auto (on a terminal, unless NO_COLOR is set
    /// or TERM=dumb; CLICOLOR_FORCE forces it), always or never [default:
    /// display.color in config.toml, else auto].
    #[arg(long, global = true, value_name = "WHEN")]
    color: Option<crate::config::ColorChoice>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create this profile's identity (an ed25519 key pair) and print its
    /// public key.
    Init(identity::InitArgs),
    /// Show this profile's address, public key, fingerprint, home router
    /// and database path.
    Whoami(identity::WhoamiArgs),
    /// Show your home router, where contacts deliver to you, or move it
    /// with 'home set URL'.
    Home(home::HomeArgs),
    /// Save someone's address (or public key) under a name.
    AddContact(contacts::AddArgs),
    /// List contacts (the same as `contacts`).
    ListContacts(contacts::ListArgs),
    /// List contacts.
    Contacts(contacts::ListArgs),
    /// Forget a contact's name and key; your history with them is kept.
    RemoveContact(contacts::RemoveArgs),
    /// Give a contact another name.
    RenameContact(contacts::RenameArgs),
    /// Change a contact's home router, where messages to them go.
    SetContactRouter(contacts::SetRouterArgs),
    /// Show a conversation's latest messages, or search all of them.
    History(history::HistoryArgs),
    /// Write contacts and every message, with status and events, as JSON.
    Export(archive::ExportArgs),
    /// Read an export (or, with --legacy, the original client's files)
    /// into this profile; importing twice changes nothing.
    Import(archive::ImportArgs),
    /// Talk to a contact: shows the conversation, then sends what you type.
    Chat(chat::ChatArgs),
    /// Send one message and wait for the router to accept it.
    Send(sync::SendArgs),
    /// Send what waits, take in everything queued for you, and exit.
    Sync(sync::SyncArgs),
    /// Run a router: relays end-to-end encrypted frames between peers and
    /// queues them durably for offline recipients.
    Router(router::RouterArgs),
    /// Show the safety code to compare with a contact; --confirm records
    /// that it matched.
    Verify(verify::VerifyArgs),
    /// Show the settings and where each comes from, or change config.toml.
    Config(settings::ConfigArgs),
    /// List the profiles in the home directory.
    Profiles(settings::ProfilesArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the manual page (roff), or write all pages with --dir.
    Man(shell::ManArgs),
    /// Check this profile, its files and its router, and say how to fix
    /// what is wrong.
    Doctor(doctor::DoctorArgs),
    /// List pending and failed messages; retry or cancel them.
    Outbox(outbox::OutboxArgs),
    /// Delete messages, or a whole conversation, from this profile.
    Delete(outbox::DeleteArgs),
    /// List conversations, newest first, with unread counts.
    Inbox(inbox::InboxArgs),
    /// Protect the secret key with a passphrase, change it or remove it.
    Passphrase(passphrase::PassphraseArgs),
    /// List this identity's devices; remove one, or rename this one.
    Devices(devices::DevicesArgs),
    /// Hand this identity and its whole history to a new device (prints a
    /// one-time code), or join with --join CODE on the new device.
    Link(link::LinkArgs),
}

/// What every command needs, resolved once from the arguments and the
/// environment.
pub struct Context {
    /// The profile in use.
    pub profile: Profile,
    /// Every setting, resolved (flag > environment > config.toml >
    /// default).
    pub config: Config,
}

impl Context {
    fn resolve(global: GlobalArgs, config: Config) -> Result<Self> {
        let home = match global.home {
            Some(home) => home,
            None => profile::default_home().context(
                "cannot find a data directory for this user: set CHAT_HOME or pass --home DIR",
            )?,
        };
        Ok(Self {
            profile: Profile::new(&home, config.profile.clone()),
            config,
        })
    }

    /// How to name this profile in a command the user can copy.
    fn cli_prefix(&self) -> String {
        match self.profile.name.as_str() {
            "default" => "chat-p2p".to_owned(),
            name => format!("chat-p2p --profile {}", shell_quote(name)),
        }
    }

    /// Opens the profile's database, which must exist.
    fn open_store(&self) -> Result<Store> {
        match Store::open(&self.profile.db_path()) {
            Err(store::Error::Missing(_)) => Err(self.no_identity()),
            other => Ok(other?),
        }
    }

    /// Opens the profile's database and loads its key pair, for commands
    /// that sign or decrypt: asks for the passphrase (once) if the secret
    /// key has one.
    fn open_with_identity(&self) -> Result<(Store, crate::identity::Identity)> {
        let store = self.open_store()?;
        match store.identity() {
            Ok(Some(id)) => Ok((store, id)),
            Ok(None) => Err(self.no_identity()),
            Err(store::Error::KeyProtected) => {
                let id = passphrase::unlock(self, &store)?;
                Ok((store, id))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Opens the profile's database and reads its public key, for commands
    /// that need the identity but not its secret: never asks for the
    /// passphrase.
    fn open_with_key(&self) -> Result<(Store, PublicKey)> {
        let store = self.open_store()?;
        match store.public_key()? {
            Some(key) => Ok((store, key)),
            None => Err(self.no_identity()),
        }
    }

    fn no_identity(&self) -> anyhow::Error {
        anyhow::anyhow!(
            "no identity in profile '{}': run '{} init'",
            self.profile.name,
            self.cli_prefix()
        )
    }
}

/// Where the router is, for every command that talks to one.
#[derive(Debug, Args)]
struct ServerArgs {
    /// The router's WebSocket URL (ws:// or wss://; a URL without a path
    /// gets /ws) [default: router in config.toml, else this profile's home
    /// router (see 'chat-p2p home'), else ws://localhost:8080/ws].
    #[arg(
        long,
        env = "CHAT_SERVER",
        value_name = "URL",
        value_parser = ServerUrl::parse
    )]
    server: Option<ServerUrl>,
}

impl ServerArgs {
    /// The router this command receives at: see [`home_router`].
    fn home(&self, store: &mut Store) -> Result<ServerUrl> {
        home_router(self.server.as_ref(), store)
    }
}

/// The router a profile receives at for this command: the one given
/// (`--server`, `CHAT_SERVER` or config.toml's `router`), else the home
/// router recorded in the profile, else [`crate::client::DEFAULT_SERVER`].
/// A profile with no recorded home records this one: its first router is
/// its home. A router given that differs from the recorded home is used
/// for this command only (the home moves with `chat-p2p home set`), and
/// said so on a terminal.
fn home_router(given: Option<&ServerUrl>, store: &mut Store) -> Result<ServerUrl> {
    let recorded = store.home_router()?;
    let router = match (given, &recorded) {
        (Some(given), _) => given.clone(),
        (None, Some(home)) => home.clone(),
        (None, None) => ServerUrl::default_router(),
    };
    match recorded {
        None => {
            store.adopt_home(&router)?;
        }
        Some(home) if home != router && std::io::IsTerminal::is_terminal(&std::io::stderr()) => {
            errln!(
                "note: using {} for this command; this profile's home router (where contacts \
                 deliver to it) is {}: 'chat-p2p home set {}' moves it",
                crate::render::untrusted_inline(router.short()),
                crate::render::untrusted_inline(home.short()),
                crate::render::untrusted_inline(router.short()),
            );
        }
        Some(_) => {}
    }
    Ok(router)
}

/// The router given, else [`crate::client::DEFAULT_SERVER`]: for commands
/// run without a profile database (`link --join`).
fn given_or_default(given: Option<&ServerUrl>) -> ServerUrl {
    given.cloned().unwrap_or_else(ServerUrl::default_router)
}

/// A mistake in how a command was called, found after parsing: exits 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct UsageError(String);

/// A runtime for the commands that talk to a router. One thread is
/// enough: the work is I/O and SQLite, and it keeps the client light.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Sends `tracing` output to stderr, filtered by `RUST_LOG` (else
/// `default`), coloured as `--color` and the environment say.
fn init_logging(default: &str) {
    use std::io::IsTerminal;
    let colour = shell::colour(std::io::stderr().is_terminal());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(colour)
        .try_init();
}

/// Quotes `s` for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Parses a router URL typed as someone's home router (`home set`,
/// `add-contact --router`, `set-contact-router`): one that cannot go in an
/// address (no query) is bad usage, said with `what` was given.
fn parse_router_arg(what: &str, text: &str) -> Result<ServerUrl> {
    use crate::address::{Address, AddressError};
    Address::parse_router(text).map_err(|e| {
        let detail = match e {
            AddressError::BadRouter(detail) => detail,
            other => other.to_string(),
        };
        UsageError(format!("{what}: {detail}")).into()
    })
}

/// A contact's key by name, or a public key typed as such; an unknown name
/// gets the store's error with similar names.
fn resolve_peer(store: &Store, peer: &str) -> Result<PublicKey> {
    match store.contact(peer) {
        Ok(contact) => {
            // A verified name whose key changed is said loudly, every time.
            verify::check(store, &contact)?;
            Ok(contact.key)
        }
        Err(e @ store::Error::UnknownContact { .. }) => {
            PublicKey::parse(peer).map_err(|_| e.into())
        }
        Err(e) => Err(e.into()),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &serde_json::Value) -> Result<(), out::StdoutError> {
    outln!("{}", serde_json::to_string_pretty(value)?)
}

/// The configuration file as read before parsing: `None` when the user has
/// no configuration directory.
type Loaded = Option<Result<crate::config::FileConfig, crate::config::ConfigError>>;

/// Parses the command line, refusing what clap's derive cannot express:
/// `--profile` given to `router`, which has none (a global option, so clap
/// accepts it everywhere; from `CHAT_PROFILE` it is ignored, not refused).
/// The configuration file's defaults are given to clap first, so a flag or
/// variable wins over them. Returns where clap took the profile from.
fn parse_cli(loaded: &Loaded) -> Result<(Cli, Option<clap::parser::ValueSource>), clap::Error> {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let mut command = match loaded {
        Some(Ok(file)) => settings::with_file_defaults(Cli::command(), file),
        _ => Cli::command(),
    };
    let matches = command.try_get_matches_from_mut(std::env::args_os())?;
    if let Some(("router", sub)) = matches.subcommand() {
        if sub.value_source("profile") == Some(clap::parser::ValueSource::CommandLine) {
            let msg = "a router has no profile: drop --profile (use --data DIR to choose \
                       where its queue lives)";
            return Err(command.error(clap::error::ErrorKind::ArgumentConflict, msg));
        }
    }
    let source = settings::profile_source(&matches);
    Ok((Cli::from_arg_matches(&matches)?, source))
}

/// Runs the command line and returns the process's exit code.
pub fn main() -> ExitCode {
    // A shell asking for completions gets them and nothing else.
    shell::complete_if_asked();
    let loaded: Loaded =
        crate::config::path_from_env().map(|path| crate::config::FileConfig::load(&path));
    let (cli, profile_source) = match parse_cli(&loaded) {
        Ok(parsed) => parsed,
        Err(e) => {
            // Help and --version are not errors; usage mistakes exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
        }
    };
    match run(cli, loaded, profile_source) {
        Ok(()) => ExitCode::SUCCESS,
        // Errors quote names, queries, paths and what routers and files
        // said: the whole text is made safe for the terminal.
        Err(e) if e.is::<UsageError>() => {
            errln!(
                "error: {}\n\nFor more information, try '--help'.",
                crate::render::untrusted(&format!("{e:#}"))
            );
            ExitCode::from(2)
        }
        // The reader went away (`| head -1`): it has what it wanted.
        Err(e) if out::stdout_error(&e).is_some_and(out::StdoutError::is_broken_pipe) => {
            ExitCode::SUCCESS
        }
        Err(e) => {
            errln!("chat-p2p: {}", crate::render::untrusted(&describe(&e)));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, like `{:#}`, but without a cause
/// the message before it already quotes (many errors show their source in
/// their own text too).
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let part = cause.to_string();
        if text.contains(&part) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&part);
    }
    text
}

impl Command {
    /// Commands that still run when config.toml cannot be used: those that
    /// repair or report it, and those that do not need it.
    fn runs_without_config(&self) -> bool {
        matches!(
            self,
            Command::Config(_) | Command::Doctor(_) | Command::Completions(_) | Command::Man(_)
        )
    }
}

/// Runs a parsed command, with the configuration file as read and where
/// clap took the profile from.
pub fn run(
    cli: Cli,
    loaded: Loaded,
    profile_source: Option<clap::parser::ValueSource>,
) -> Result<()> {
    let (file, problem) = match loaded {
        Some(Ok(file)) => (Some(file), None),
        Some(Err(e)) if cli.command.runs_without_config() => (None, Some(e.to_string())),
        // The router does not read config.toml: a mistake in it is not the
        // router's to report.
        Some(Err(_)) if matches!(cli.command, Command::Router(_)) => (None, None),
        Some(Err(e)) => return Err(e.into()),
        None => (None, None),
    };
    let flags = settings::Flags {
        profile: cli.global.profile.clone(),
        profile_source,
        color: cli.global.color,
    };
    let mut config = Config::resolve(flags, file.as_ref())?;
    config.problem = problem;
    if config.path.is_none() {
        config.path = crate::config::path_from_env();
    }
    shell::set_colour(config.color);
    // A router has no profile: it must not need one to resolve.
    let command = match cli.command {
        Command::Router(args) => return router::run(args, cli.global.home),
        Command::Completions(args) => return shell::completions(args),
        Command::Man(args) => return shell::man(args),
        other => other,
    };
    // Client commands log only when asked to: a line on stderr would
    // break into the chat's prompt.
    if std::env::var_os("RUST_LOG").is_some() {
        init_logging("warn");
    }
    let ctx = Context::resolve(cli.global, config)?;
    match command {
        Command::Init(args) => identity::init(&ctx, args),
        Command::Whoami(args) => identity::whoami(&ctx, args),
        Command::AddContact(args) => contacts::add(&ctx, args),
        Command::ListContacts(args) | Command::Contacts(args) => contacts::list(&ctx, args),
        Command::RemoveContact(args) => contacts::remove(&ctx, args),
        Command::RenameContact(args) => contacts::rename(&ctx, args),
        Command::SetContactRouter(args) => contacts::set_router(&ctx, args),
        Command::Home(args) => home::run(&ctx, args),
        Command::History(args) => history::history(&ctx, args),
        Command::Export(args) => archive::export(&ctx, args),
        Command::Import(args) => archive::import(&ctx, args),
        Command::Chat(args) => chat::chat(&ctx, args),
        Command::Send(args) => sync::send(&ctx, args),
        Command::Sync(args) => sync::sync(&ctx, args),
        // Not reached (routed above); kept correct rather than panicking.
        Command::Router(args) => router::run(args, ctx.profile.dir.parent().map(PathBuf::from)),
        Command::Verify(args) => verify::verify(&ctx, args),
        Command::Config(args) => settings::config(&ctx, args),
        Command::Profiles(args) => settings::profiles(&ctx, args),
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args),
        Command::Doctor(args) => doctor::doctor(&ctx, args),
        Command::Outbox(args) => outbox::outbox(&ctx, args),
        Command::Delete(args) => outbox::delete(&ctx, args),
        Command::Inbox(args) => inbox::inbox(&ctx, args),
        Command::Passphrase(args) => passphrase::run(&ctx, args),
        Command::Devices(args) => devices::run(&ctx, args),
        Command::Link(args) => link::run(&ctx, args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn causes_already_quoted_are_not_repeated() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot upgrade: {0}")]
        struct Outer(#[source] std::io::Error);
        let inner = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(Outer(inner)).context("opening profile 'bob'");
        assert_eq!(
            describe(&e),
            "opening profile 'bob': cannot upgrade: disk on fire"
        );
    }

    #[test]
    fn quotes_only_when_needed() {
        assert_eq!(shell_quote("bob"), "bob");
        assert_eq!(shell_quote("my profile"), "'my profile'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}

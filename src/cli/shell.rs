//! Shell integration: completion scripts (`completions`), the manual page
//! (`man`), and whether to colour output (`--color`).
//!
//! Completion is dynamic (clap_complete's `CompleteEnv`): the script a
//! shell loads calls `chat-p2p` back with `COMPLETE=<shell>` on every Tab,
//! so contact and profile names are completed from the profile itself and
//! new commands need no new script.

use std::ffi::OsStr;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::OnceLock;

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _, ValueEnum};
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use clap_complete::env::Shells;

use super::Cli;
use crate::config::{self, ColorChoice, FileConfig};
use crate::profile::{self, Profile, ProfileName};

/// The variable the completion scripts set when calling back.
const COMPLETE_VAR: &str = "COMPLETE";

/// The shells `completions` writes a script for.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Shell {
    /// Bash: `source <(chat-p2p completions bash)` in ~/.bashrc.
    Bash,
    /// Zsh: `source <(chat-p2p completions zsh)` in ~/.zshrc.
    Zsh,
    /// Fish: `chat-p2p completions fish | source` in config.fish.
    Fish,
    /// Elvish: `eval (chat-p2p completions elvish | slurp)` in rc.elv.
    Elvish,
    /// PowerShell: `chat-p2p completions powershell | Out-String | Invoke-Expression`.
    Powershell,
}

impl Shell {
    fn name(self) -> &'static str {
        match self {
            Shell::Bash => "bash",
            Shell::Zsh => "zsh",
            Shell::Fish => "fish",
            Shell::Elvish => "elvish",
            Shell::Powershell => "powershell",
        }
    }
}

/// Arguments of `completions`.
#[derive(Debug, Args)]
#[command(after_help = "\
Load the script from your shell's start-up file, e.g.:
  bash   echo 'source <(chat-p2p completions bash)' >> ~/.bashrc
  zsh    echo 'source <(chat-p2p completions zsh)' >> ~/.zshrc
  fish   echo 'chat-p2p completions fish | source' >> ~/.config/fish/config.fish
Commands, flags, contact names and profile names are completed; the script \
calls chat-p2p back on each Tab, so it never goes stale.")]
pub struct CompletionsArgs {
    /// The shell to write the script for.
    shell: Shell,
}

/// Prints the registration script for a shell.
pub fn completions(args: CompletionsArgs) -> Result<()> {
    let shells = Shells::builtins();
    let completer = shells
        .completer(args.shell.name())
        .context("this shell has no completion support")?;
    let mut buf = Vec::new();
    completer.write_registration(COMPLETE_VAR, "chat-p2p", "chat-p2p", "chat-p2p", &mut buf)?;
    outln!("{}", String::from_utf8_lossy(&buf).trim_end())?;
    Ok(())
}

/// Answers a completion request (a shell calling back with `COMPLETE`
/// set) and exits; returns at once otherwise.
pub fn complete_if_asked() {
    if std::env::var_os(COMPLETE_VAR).is_some() {
        clap_complete::CompleteEnv::with_factory(completion_command)
            .var(COMPLETE_VAR)
            .complete();
    }
}

/// The command line with completers for contact and profile names.
fn completion_command() -> clap::Command {
    let cmd = Cli::command().mut_arg("profile", |a| {
        a.add(ArgValueCompleter::new(|current: &OsStr| {
            candidates(profile_names(), current)
        }))
    });
    cmd.mut_subcommands(add_contact_completer)
}

/// Arguments that name a contact: any `peer` (or an argument whose value
/// name says PEER), and the name given to remove-contact and
/// rename-contact.
fn add_contact_completer(sub: clap::Command) -> clap::Command {
    let name = sub.get_name().to_owned();
    let ids: Vec<String> = sub
        .get_arguments()
        .filter(|a| {
            let id = a.get_id().as_str();
            let peer_value = a
                .get_value_names()
                .is_some_and(|names| names.iter().any(|n| n.contains("PEER")));
            id == "peer"
                || peer_value
                || (name == "remove-contact" && id == "name")
                || (name == "rename-contact" && id == "old")
        })
        .map(|a| a.get_id().to_string())
        .collect();
    // mut_arg moves an argument to the end, and clap numbers unnumbered
    // positionals in order: pin every positional's place, then add the
    // completer to those that name a contact.
    let places: Vec<(String, usize)> = sub
        .get_positionals()
        .enumerate()
        .map(|(i, a)| (a.get_id().to_string(), a.get_index().unwrap_or(i + 1)))
        .collect();
    let mut sub = sub;
    for (id, place) in places {
        sub = sub.mut_arg(&id, |a| a.index(place));
    }
    for id in ids {
        sub = sub.mut_arg(id, |a| {
            a.add(ArgValueCompleter::new(|current: &OsStr| {
                candidates(contact_names(), current)
            }))
        });
    }
    sub.mut_subcommands(add_contact_completer)
}

fn candidates(names: Vec<String>, current: &OsStr) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    names
        .into_iter()
        .filter(|n| n.starts_with(current.as_ref()))
        .map(CompletionCandidate::new)
        .collect()
}

/// The home as a command would resolve it (from the environment: the line
/// being completed is not parsed yet).
fn completion_home() -> Option<PathBuf> {
    match std::env::var_os("CHAT_HOME") {
        Some(home) if !home.is_empty() => Some(PathBuf::from(home)),
        _ => profile::default_home(),
    }
}

fn profile_names() -> Vec<String> {
    completion_home()
        .map(|home| super::settings::profile_names(&home))
        .unwrap_or_default()
        .into_iter()
        .map(|(name, _)| name)
        .collect()
}

/// The contacts of the profile in use, read without writing anything.
fn contact_names() -> Vec<String> {
    let Some(home) = completion_home() else {
        return Vec::new();
    };
    let from_file = config::path_from_env()
        .and_then(|p| FileConfig::load(&p).ok())
        .and_then(|f| f.profile);
    let name = std::env::var("CHAT_PROFILE")
        .ok()
        .and_then(|p| ProfileName::parse(&p).ok())
        .or(from_file)
        .or_else(|| ProfileName::parse("default").ok());
    let Some(name) = name else {
        return Vec::new();
    };
    let db = Profile::new(&home, name).db_path();
    let read = || -> rusqlite::Result<Vec<String>> {
        let conn = rusqlite::Connection::open_with_flags(
            db,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        // A running chat or watch may be writing: wait a moment, not fail.
        conn.busy_timeout(std::time::Duration::from_secs(2))?;
        let mut stmt = conn.prepare("SELECT name FROM contacts ORDER BY name")?;
        let names = stmt.query_map([], |r| r.get(0))?;
        names.collect()
    };
    read().unwrap_or_default()
}

/// Arguments of `man`.
#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write a page for chat-p2p and one per command (chat-p2p-send.1, ...)
    /// into DIR instead of printing the main page.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the manual page (roff), or writes every page into a directory.
pub fn man(args: ManArgs) -> Result<()> {
    let cmd = Cli::command();
    if let Some(dir) = args.dir {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        clap_mangen::generate_to(cmd, &dir)
            .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
        outln!("manual pages written to {}", dir.display())?;
        return Ok(());
    }
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut buf)?;
    let mut out = super::out::stdout();
    std::io::Write::write_all(out.raw(), &buf).map_err(super::out::StdoutError)?;
    out.flush()?;
    Ok(())
}

/// The colour choice for this process, set once when the command line is
/// resolved.
static COLOUR: OnceLock<ColorChoice> = OnceLock::new();

/// Records the resolved colour choice (the first call wins).
pub fn set_colour(choice: ColorChoice) {
    let _ = COLOUR.set(choice);
}

/// Whether to colour a stream that `is_terminal` or not: `always`, `never`,
/// or (auto) on a terminal whose `TERM` is not `dumb`. Before
/// [`set_colour`] (unit tests), the environment decides alone.
pub fn colour(is_terminal: bool) -> bool {
    let choice = *COLOUR.get_or_init(|| super::settings::resolve_color(None, None).0);
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => is_terminal && std::env::var_os("TERM").is_none_or(|t| t != "dumb"),
    }
}

/// Whether to colour standard output.
pub fn colour_stdout() -> bool {
    colour(std::io::stdout().is_terminal())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_completion_command_is_consistent() {
        // Pinning positionals must leave every command valid.
        completion_command().debug_assert();
    }

    #[test]
    fn colour_choices_apply_to_a_stream() {
        // Not set in unit tests: the environment decides, and a pipe
        // without CLICOLOR_FORCE is never coloured.
        if std::env::var_os("CLICOLOR_FORCE").is_none() {
            assert!(!colour(false));
        }
    }
}

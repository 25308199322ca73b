//! `export` and `import`.

use std::io::{BufRead, BufWriter, IsTerminal, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Result;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::out::{AlreadyDone, StdoutError};
use super::{print_json, resolve_peer, Context, UsageError};
use crate::archive::sealed::{self, Key, Seal};
use crate::archive::{self, ExportOptions, ImportOptions, ImportReport, Layout};
use crate::store::refill::Refill;
use crate::store::Store;

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// One JSON document (the default). With `-o FILE`, also prints what
    /// was written as JSON on standard output instead of a line on stderr.
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// One JSON object per line instead, each with a "kind" field.
    #[arg(long)]
    jsonl: bool,
    /// Write to FILE (created readable by you alone, completed under a
    /// temporary name, then renamed) instead of standard output; `-` is
    /// standard output. An existing directory, device, FIFO or symbolic
    /// link is refused, never replaced.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Only this contact (a name or a public key) and your conversation
    /// with them.
    #[arg(long, value_name = "PEER")]
    contact: Option<String>,
    /// Include your secret key, so the export can restore your identity.
    /// Anyone holding the file can then read your messages and be you:
    /// needs --encrypt (or --recipient), or --plaintext-secret.
    #[arg(long)]
    include_secret: bool,
    /// Write the secret key in clear with --include-secret (you are warned).
    #[arg(long, requires = "include_secret")]
    plaintext_secret: bool,
    /// Encrypt the export with a passphrase (the age format): asked twice
    /// on the terminal, or read from the file CHAT_EXPORT_PASSPHRASE_FILE
    /// names. `import` asks for it again.
    #[arg(long, conflicts_with = "plaintext_secret")]
    encrypt: bool,
    /// Encrypt the export to this age public key ('age1...', from
    /// age-keygen) instead of a passphrase; repeat for several.
    #[arg(
        long,
        value_name = "AGE_KEY",
        conflicts_with_all = ["encrypt", "plaintext_secret"],
        value_parser = archive::sealed::parse_recipient
    )]
    recipient: Vec<age::x25519::Recipient>,
}

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An export (JSON or JSON Lines), `-` for standard input; with
    /// --legacy, the original client's folders (e.g. ~/.chat-alice
    /// ~/.chat-p2p).
    #[arg(required = true, value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    /// Import the original chat-p2p client's files from the folders given.
    #[arg(long)]
    legacy: bool,
    /// Replace this profile's identity with the one being imported.
    #[arg(long)]
    force: bool,
    /// Import an export made by another identity (or into a profile with
    /// no identity yet): its outgoing messages are then kept as this
    /// profile's own. Without it, such an import is refused.
    #[arg(long)]
    other_identity: bool,
    /// With --legacy: skip a messages/NAME.json whose NAME is neither a
    /// contact nor a public key, instead of importing nothing.
    #[arg(long, requires = "legacy")]
    skip_unknown: bool,
    /// Open an export encrypted to an age key with the identities in
    /// this age identity file (from age-keygen). An export encrypted to a
    /// passphrase needs none: the passphrase is asked for (or read from
    /// the file CHAT_EXPORT_PASSPHRASE_FILE names).
    #[arg(long, value_name = "FILE", conflicts_with = "legacy")]
    identity: Option<PathBuf>,
    /// Print what was imported as JSON.
    #[arg(long)]
    json: bool,
}

/// Names the file whose first line is the passphrase of an encrypted
/// export, for `export --encrypt` and `import`.
pub const EXPORT_PASSPHRASE_FILE_ENV: &str = "CHAT_EXPORT_PASSPHRASE_FILE";

/// Below these sizes no progress bar is worth drawing.
const BAR_MIN_MESSAGES: u64 = 20_000;
const BAR_MIN_BYTES: u64 = 8 << 20;

/// A progress bar on stderr, only when stderr is a terminal and the work
/// is long.
fn bar(total: u64, min: u64, template: &str) -> Option<ProgressBar> {
    if total < min || !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(template) {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// Writes the export.
pub fn export(ctx: &Context, args: ExportArgs) -> Result<()> {
    let in_clear = args.include_secret && !args.encrypt && args.recipient.is_empty();
    if in_clear && !args.plaintext_secret {
        return Err(UsageError(
            "--include-secret would write your secret key in clear: add --encrypt to \
             protect the export with a passphrase, or --plaintext-secret if you really \
             want it in clear"
                .into(),
        )
        .into());
    }
    let to_stdout = args.output.as_ref().is_none_or(|p| p.as_os_str() == "-");
    if (args.encrypt || !args.recipient.is_empty()) && to_stdout && std::io::stdout().is_terminal()
    {
        return Err(UsageError(
            "refusing to print an encrypted export (binary) on the terminal: pass -o FILE, \
             or redirect standard output"
                .into(),
        )
        .into());
    }
    let store = ctx.open_store()?;
    let contact = match &args.contact {
        Some(peer) => Some(resolve_peer(&store, peer)?),
        None => None,
    };
    // Asked before the export's passphrase: the profile's comes first.
    let unlocked = match args.include_secret && store.key_protection()?.is_some() {
        true => Some(std::sync::Arc::new(super::passphrase::unlock(ctx, &store)?)),
        false => None,
    };
    if in_clear {
        errln!(
            "warning: this export contains your secret key in clear. Anyone who gets the \
             file can read your messages and pose as you: keep it private, delete it when \
             done, or use --encrypt."
        );
    }
    let seal = seal(&args)?;
    let options = ExportOptions {
        layout: if args.jsonl {
            Layout::Jsonl
        } else {
            Layout::Json
        },
        contact,
        include_secret: args.include_secret,
        unlocked,
        seal: seal.map(std::sync::Arc::new),
    };
    let bar = bar(
        store.message_count()?,
        BAR_MIN_MESSAGES,
        "exporting {bar:40} {pos}/{len} messages, {eta} left",
    );
    let mut progress = |n: u64| {
        if let Some(bar) = &bar {
            bar.set_position(n);
        }
    };
    let output = args.output.as_ref().filter(|p| p.as_os_str() != "-");
    let summary = match output {
        Some(path) => archive::export_to_path(&store, path, &options, &mut progress)?,
        None => export_to_stdout(&store, &options, &mut progress)?,
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let (Some(path), true) = (output, args.json) {
        return print_json(&serde_json::json!({
            "path": path,
            "format": "json",
            "messages": summary.messages,
            "contacts": summary.contacts,
            "secret_key_included": args.include_secret,
        }))
        .done("the export was written");
    }
    if let Some(path) = output {
        errln!(
            "Exported {} messages and {} contacts to {}.",
            summary.messages,
            summary.contacts,
            path.display()
        );
    }
    Ok(())
}

/// How `export` is to be encrypted, asking for the passphrase if needed.
fn seal(args: &ExportArgs) -> Result<Option<Seal>> {
    Ok(if args.encrypt {
        let passphrase =
            super::passphrase::new_passphrase(EXPORT_PASSPHRASE_FILE_ENV, "export passphrase")?;
        Some(Seal::Passphrase(passphrase.to_string().into()))
    } else if !args.recipient.is_empty() {
        Some(Seal::Recipients(args.recipient.clone()))
    } else {
        None
    })
}

/// Writes the export to standard output; a failed write is an output
/// error (a closed pipe ends the command quietly).
fn export_to_stdout(
    store: &Store,
    options: &ExportOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<archive::ExportSummary> {
    let mut lock = super::out::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, lock.raw());
    let summary = match archive::export(store, &mut out, options, progress) {
        Err(archive::Error::Write(e)) => return Err(StdoutError(e).into()),
        other => other?,
    };
    out.flush().map_err(StdoutError)?;
    Ok(summary)
}

/// Imports an export or the original client's files.
pub fn import(ctx: &Context, args: ImportArgs) -> Result<()> {
    let options = ImportOptions {
        force: args.force,
        other_identity: args.other_identity,
        skip_unknown: args.skip_unknown,
    };
    let input = if args.legacy {
        if let Some(missing) = args.paths.iter().find(|p| !p.exists()) {
            anyhow::bail!("cannot import '{}': no such folder", missing.display());
        }
        None
    } else {
        if let Some(dir) = args.paths.iter().find(|p| p.is_dir()) {
            return Err(UsageError(format!(
                "'{}' is a folder, not an export file. To import the original client's \
                 folders, run: {} import --legacy {}",
                dir.display(),
                ctx.cli_prefix(),
                args.paths
                    .iter()
                    .map(|p| super::shell_quote(&p.display().to_string()))
                    .collect::<Vec<_>>()
                    .join(" ")
            ))
            .into());
        }
        let [path] = args.paths.as_slice() else {
            anyhow::bail!(
                "import takes one export file (several folders only with --legacy); \
                 run one import per file"
            );
        };
        // Opened before the profile is created: a mistyped path must not
        // leave an empty profile behind.
        Some(Input::open(path)?)
    };
    let db = ctx.profile.db_path();
    let existed = db.exists();
    let mut store = Store::create(&db)?;
    let was_protected = store.key_protection()?.is_some();
    let run = |store: &mut Store| match input {
        None => archive::import_legacy(store, &args.paths, options).map_err(Into::into),
        Some(input) => import_input(store, input, options, args.identity.as_deref()),
    };
    let imported = if store.has_messages()? {
        run(&mut store)
    } else {
        // Into a profile with no messages: through a fresh file, written
        // once, when no other process has the profile open.
        drop(store);
        let imported = match Refill::begin(&db)? {
            Some(mut refill) => run(refill.store()?)
                .and_then(|report| refill.commit().map(|()| report).map_err(Into::into)),
            None => Store::open(&db)
                .map_err(Into::into)
                .and_then(|mut store| run(&mut store)),
        };
        store = Store::open(&db)?;
        imported
    };
    let report = match imported {
        Ok(report) => report,
        Err(e) => {
            if !existed {
                drop(store);
                remove_new_profile(&db);
            }
            return Err(e);
        }
    };
    if was_protected && report.identity_adopted.is_some() {
        super::passphrase::warn_unprotected(ctx);
    }
    let done = "the import was committed";
    if args.json {
        return print_json(&serde_json::to_value(&report)?).done(done);
    }
    print_report(ctx, &store, &report).done(done)
}

/// Where an export is read from.
enum Input {
    File(PathBuf, std::fs::File),
    Stdin,
}

impl Input {
    fn open(path: &Path) -> Result<Self> {
        if path.as_os_str() == "-" {
            return Ok(Input::Stdin);
        }
        let file = std::fs::File::open(path).map_err(|source| archive::Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Input::File(path.to_path_buf(), file))
    }
}

/// Forgets a profile this import created and could not fill, so a failed
/// first import leaves nothing behind. Best effort: the files are new and
/// empty of anything the user wrote.
fn remove_new_profile(db: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut path = db.as_os_str().to_owned();
        path.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(path));
    }
    if let Some(dir) = db.parent() {
        // Only if empty: never anything else that lives there.
        let _ = std::fs::remove_dir(dir);
    }
}

/// Imports one export file or standard input, with a progress bar for a
/// large file; an encrypted export is opened first.
fn import_input(
    store: &mut Store,
    input: Input,
    options: ImportOptions,
    identity: Option<&Path>,
) -> Result<ImportReport> {
    let (path, size, reader): (PathBuf, u64, Box<dyn Read + Send>) = match input {
        Input::Stdin => ("standard input".into(), 0, Box::new(std::io::stdin())),
        Input::File(path, file) => {
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            (path, size, Box::new(file))
        }
    };
    let name = |e| name_input(e, &path);
    let (kind, reader) = sealed::sniff(reader).map_err(|source| archive::Error::Io {
        path: path.clone(),
        source,
    })?;
    let reader = std::io::BufReader::with_capacity(1 << 16, reader);
    let reader: Box<dyn BufRead + Send> = match kind {
        sealed::Kind::Plain => Box::new(reader),
        sealed::Kind::ArmoredAge => anyhow::bail!(
            "'{}' is an ASCII-armored age file, which chat-p2p does not read: decrypt it \
             with 'age -d', or export again with --encrypt",
            path.display()
        ),
        sealed::Kind::Age => {
            let opened = match identity {
                Some(file) => sealed::open(reader, Key::Identities(sealed::read_identities(file)?)),
                None => sealed::open(reader, Key::Passphrase(&mut export_passphrase)),
            }
            .map_err(name)?;
            Box::new(std::io::BufReader::with_capacity(1 << 16, opened))
        }
    };
    if identity.is_some() && kind != sealed::Kind::Age {
        anyhow::bail!(
            "--identity is for an encrypted export, and '{}' is not one",
            path.display()
        );
    }
    let bar = bar(
        size,
        BAR_MIN_BYTES,
        "importing {bar:40} {bytes}/{total_bytes} {msg}",
    );
    let mut progress = |n: u64| {
        if let Some(bar) = &bar {
            bar.set_position(n);
            // Once the file is read, the search index is built and the
            // transaction committed: seconds for a large import.
            if n >= size {
                bar.set_message("read; indexing and committing...");
            }
        }
    };
    let report = archive::import_reader(store, reader, options, &mut progress)
        .map_err(|e| sealed::explain(name(e)))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    Ok(report)
}

/// The passphrase of an encrypted export, asked once.
fn export_passphrase() -> Result<age::secrecy::SecretString, archive::Error> {
    let passphrase = super::passphrase::ask(
        "Passphrase of the encrypted export: ",
        EXPORT_PASSPHRASE_FILE_ENV,
        || {
            format!(
                "this export is encrypted and there is no terminal to ask for its passphrase: \
                 set {EXPORT_PASSPHRASE_FILE_ENV} to a file whose first line is the passphrase"
            )
        },
    )
    .map_err(|e| archive::Error::Decrypt(format!("{e:#}")))?;
    Ok(passphrase.to_string().into())
}

/// Names the user's file in a read error (the reader only knows "the
/// import").
fn name_input(e: archive::Error, path: &Path) -> archive::Error {
    match e {
        archive::Error::Io { source, .. } => archive::Error::Io {
            path: path.to_path_buf(),
            source,
        },
        other => other,
    }
}

fn print_report(ctx: &Context, store: &Store, r: &ImportReport) -> Result<()> {
    // Asked first: a database error must not read as an output error.
    let has_identity = store.public_key()?.is_some();
    outln!(
        "Imported {} new messages ({} already here) and {} new contacts ({} already here).",
        r.messages_added,
        r.messages_known,
        r.contacts_added,
        r.contacts_known
    )?;
    for note in &r.contact_notes {
        // Notes quote names from the file.
        outln!("note: contact {}", crate::render::untrusted_inline(note))?;
    }
    for path in &r.skipped_files {
        outln!(
            "skipped {}: its name is neither a contact nor a public key",
            crate::render::untrusted_inline(path)
        )?;
    }
    if let Some(key) = &r.identity_adopted {
        outln!("This profile's identity is now {key}.")?;
    }
    if let Some(home) = &r.home_adopted {
        outln!(
            "This profile's home router is now {}, as in the export.",
            crate::render::untrusted_inline(home)
        )?;
    }
    if let Some(old) = &r.identity_replaced {
        errln!("warning: replaced the identity {old}; its secret key is gone.");
    }
    if let Some(key) = r
        .foreign_export
        .as_deref()
        .map(crate::render::untrusted_inline)
    {
        errln!(
            "warning: this export was made by another identity ({key}); \
             its outgoing messages appear as yours."
        );
    }
    if !has_identity {
        outln!(
            "This profile has no identity yet: run '{} init'.",
            ctx.cli_prefix()
        )?;
    }
    Ok(())
}

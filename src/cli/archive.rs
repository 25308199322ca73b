//! `export` and `import`.

use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};

use super::{print_json, resolve_peer, Context};
use crate::archive::{self, ExportOptions, ImportOptions, ImportReport, Layout};
use crate::store::Store;

/// Arguments of `export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// One JSON document (the default).
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,
    /// One JSON object per line instead, each with a "kind" field.
    #[arg(long)]
    jsonl: bool,
    /// Write to FILE (completed under a temporary name, then renamed)
    /// instead of standard output.
    #[arg(long, short = 'o', value_name = "FILE")]
    output: Option<PathBuf>,
    /// Only this contact (a name or a public key) and your conversation
    /// with them.
    #[arg(long, value_name = "PEER")]
    contact: Option<String>,
    /// Include your secret key, so the export can restore your identity.
    /// Anyone holding the file can then read your messages and be you.
    #[arg(long)]
    include_secret: bool,
}

/// Arguments of `import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// An export (JSON or JSON Lines); with --legacy, the original client's
    /// folders (e.g. ~/.chat-alice ~/.chat-p2p).
    #[arg(required = true, value_name = "FILE|DIR")]
    paths: Vec<PathBuf>,
    /// Import the original chat-p2p client's files from the folders given.
    #[arg(long)]
    legacy: bool,
    /// Replace this profile's identity with the one being imported.
    #[arg(long)]
    force: bool,
    /// Print what was imported as JSON.
    #[arg(long)]
    json: bool,
}

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
    let store = ctx.open_store()?;
    let contact = match &args.contact {
        Some(peer) => Some(resolve_peer(&store, peer)?),
        None => None,
    };
    if args.include_secret {
        eprintln!(
            "warning: this export contains your secret key. Anyone who gets the file \
             can read your messages and pose as you: keep it private, delete it when done."
        );
    }
    let options = ExportOptions {
        layout: if args.jsonl {
            Layout::Jsonl
        } else {
            Layout::Json
        },
        contact,
        include_secret: args.include_secret,
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
    let summary = match &args.output {
        Some(path) => archive::export_to_path(&store, path, &options, &mut progress)?,
        None => {
            let mut out = BufWriter::with_capacity(1 << 16, std::io::stdout().lock());
            let summary = archive::export(&store, &mut out, &options, &mut progress)?;
            out.flush().context("cannot write the export")?;
            summary
        }
    };
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if let Some(path) = &args.output {
        eprintln!(
            "Exported {} messages and {} contacts to {}.",
            summary.messages,
            summary.contacts,
            path.display()
        );
    }
    Ok(())
}

/// Imports an export or the original client's files.
pub fn import(ctx: &Context, args: ImportArgs) -> Result<()> {
    let mut store = Store::create(&ctx.profile.db_path())?;
    let options = ImportOptions { force: args.force };
    let report = if args.legacy {
        archive::import_legacy(&mut store, &args.paths, options)?
    } else {
        let [path] = args.paths.as_slice() else {
            anyhow::bail!(
                "import takes one export file (several folders only with --legacy); \
                 run one import per file"
            );
        };
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
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
        let report = archive::import_file(&mut store, path, options, &mut progress)?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        report
    };
    if args.json {
        return print_json(&serde_json::to_value(&report)?);
    }
    print_report(ctx, &store, &report)
}

fn print_report(ctx: &Context, store: &Store, r: &ImportReport) -> Result<()> {
    println!(
        "Imported {} new messages ({} already here) and {} new contacts ({} already here).",
        r.messages_added, r.messages_known, r.contacts_added, r.contacts_known
    );
    for note in &r.contact_notes {
        // Notes quote names from the file.
        println!("note: contact {}", crate::render::untrusted_inline(note));
    }
    if let Some(key) = &r.identity_adopted {
        println!("This profile's identity is now {key}.");
    }
    if let Some(old) = &r.identity_replaced {
        eprintln!("warning: replaced the identity {old}; its secret key is gone.");
    }
    if let Some(key) = r
        .foreign_export
        .as_deref()
        .map(crate::render::untrusted_inline)
    {
        eprintln!(
            "warning: this export was made by another identity ({key}); \
             its outgoing messages appear as yours."
        );
    }
    if store.identity()?.is_none() {
        println!(
            "This profile has no identity yet: run '{} init'.",
            ctx.cli_prefix()
        );
    }
    Ok(())
}

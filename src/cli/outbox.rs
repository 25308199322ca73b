//! `outbox` (list, retry, cancel) and `delete`: what waits to be sent, and
//! removing messages, addressed by the short ids `history` shows.

use std::io::{BufRead, IsTerminal};

use anyhow::Result;
use clap::{Args, Subcommand};
use serde_json::json;
use unicode_width::UnicodeWidthStr;

use super::history::{peer_label, Style};
use super::out::AlreadyDone;
use super::sync::{deliver, with_pending_hint, Delivery};
use super::{print_json, resolve_peer, Context, ServerArgs, UsageError};
use crate::client::exchange::Until;
use crate::client::Engine;
use crate::render::untrusted_inline;
use crate::store::ids::{resolve_tx, IdQuery, Scope};
use crate::store::outbox::{cancel_tx, is_cancelled, requeue_tx};
use crate::store::{Message, Status, Store};

/// Arguments of `outbox`.
#[derive(Debug, Args)]
#[command(
    args_conflicts_with_subcommands = true,
    after_help = "IDs are the 8-character ids 'history' and 'outbox' show (any unique \
    beginning of at least 4 characters), or full ids.\n\
    Examples:\n  chat-p2p outbox\n  chat-p2p outbox retry\n  chat-p2p outbox retry 3f9a\n  \
    chat-p2p outbox cancel 3f9a1c2e"
)]
pub struct OutboxArgs {
    #[command(subcommand)]
    action: Option<OutboxAction>,
    /// Print the messages as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum OutboxAction {
    /// List pending and failed messages (the default).
    List {
        /// Print the messages as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Send pending and failed messages again now, through the router
    /// (failed ones go back to pending first). Without IDs: every pending
    /// and failed one except those you cancelled.
    Retry(RetryArgs),
    /// Stop pending messages from ever being sent; they stay in history,
    /// marked cancelled.
    Cancel {
        /// The messages' ids.
        #[arg(required = true, value_name = "ID", value_parser = IdQuery::parse)]
        ids: Vec<IdQuery>,
    },
}

/// Arguments of `outbox retry`.
#[derive(Debug, Args)]
struct RetryArgs {
    /// The messages' ids; all pending and failed ones when omitted.
    #[arg(value_name = "ID", value_parser = IdQuery::parse)]
    ids: Vec<IdQuery>,
    #[command(flatten)]
    server: ServerArgs,
    /// How many seconds to wait at most for the router's acknowledgements.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// Print the messages retried, as they stand afterwards, as JSON.
    #[arg(long)]
    json: bool,
}

/// Arguments of `delete`.
#[derive(Debug, Args)]
#[command(
    after_help = "Asks for confirmation on a terminal; scripts pass --yes.\n\
    Deleted messages leave history, search and export; their text is overwritten in the \
    database file.\nExamples:\n  chat-p2p delete 3f9a1c2e 77b0\n  \
    chat-p2p delete --conversation bob --yes"
)]
pub struct DeleteArgs {
    /// The messages' ids, as `history` shows them.
    #[arg(value_name = "ID", value_parser = IdQuery::parse, required_unless_present = "conversation", conflicts_with = "conversation")]
    ids: Vec<IdQuery>,
    /// Delete every message with this contact (a name or a public key).
    #[arg(long, value_name = "PEER")]
    conversation: Option<String>,
    /// Do not ask for confirmation.
    #[arg(long, short = 'y')]
    yes: bool,
}

/// Runs `outbox`.
pub fn outbox(ctx: &Context, args: OutboxArgs) -> Result<()> {
    match args.action {
        None => list(ctx, args.json),
        Some(OutboxAction::List { json }) => list(ctx, json || args.json),
        Some(OutboxAction::Retry(retry_args)) => retry(ctx, retry_args),
        Some(OutboxAction::Cancel { ids }) => cancel(ctx, &ids),
    }
}

/// The status as the outbox names it: cancelled messages are failed ones
/// with the reason [`crate::store::outbox::CANCELLED`].
fn status_name(m: &Message) -> &'static str {
    if is_cancelled(m) {
        "cancelled"
    } else {
        m.status.as_str()
    }
}

fn message_json(m: &Message) -> Result<serde_json::Value> {
    let mut value = serde_json::to_value(m)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("id".into(), json!(m.msg_id.short()));
        obj.insert("cancelled".into(), json!(is_cancelled(m)));
    }
    Ok(value)
}

/// `outbox` and `outbox list`.
fn list(ctx: &Context, as_json: bool) -> Result<()> {
    let store = ctx.open_store()?;
    let unsent = store.unsent()?;
    let now = chrono::Utc::now();
    if as_json {
        let all = unsent
            .iter()
            .map(|m| {
                let mut value = message_json(m)?;
                value["age_secs"] = json!(age_secs(&m.created_at, now));
                Ok(value)
            })
            .collect::<Result<Vec<_>>>()?;
        return Ok(print_json(&all.into())?);
    }
    if unsent.is_empty() {
        return Ok(outln!(
            "The outbox is empty: everything you wrote was sent."
        )?);
    }
    let style = Style::detect();
    let names: Vec<String> = unsent.iter().map(peer_label).collect();
    let width = names.iter().map(|n| n.width()).max().unwrap_or(0).max(2);
    let mut out = super::out::stdout();
    writeln!(
        out,
        "ID        TO{}   AGE  STATUS     MESSAGE",
        " ".repeat(width - 2)
    )?;
    for (m, name) in unsent.iter().zip(&names) {
        let status = format!("{:9}", status_name(m));
        let status = match m.status {
            Status::Failed if !is_cancelled(m) => style.paint("31", &status),
            _ => status,
        };
        let mut message = super::chat::excerpt(&m.body);
        if let (Some(reason), false) = (&m.failure_reason, is_cancelled(m)) {
            message.push_str(&format!(" ({})", untrusted_inline(reason)));
        }
        writeln!(
            out,
            "{}  {name}{}  {:>4}  {status}  {message}",
            style.paint("33", &m.msg_id.short()),
            " ".repeat(width - name.width()),
            age(age_secs(&m.created_at, now)),
        )?;
    }
    let failed = unsent
        .iter()
        .filter(|m| m.status == Status::Failed && !is_cancelled(m))
        .count();
    if failed > 0 {
        errln!(
            "'chat-p2p outbox retry' sends the failed ones again; 'chat-p2p delete ID' removes one."
        );
    }
    Ok(())
}

/// Seconds since `created_at` (0 for a time in the future or unreadable).
fn age_secs(created_at: &str, now: chrono::DateTime<chrono::Utc>) -> i64 {
    chrono::DateTime::parse_from_rfc3339(created_at)
        .map(|t| (now - t.with_timezone(&chrono::Utc)).num_seconds().max(0))
        .unwrap_or(0)
}

/// `42s`, `5m`, `3h`, `12d`: how long a message has waited, at a glance.
fn age(secs: i64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Resolves every id in the outbox scope first, so that a typo changes
/// nothing.
fn resolve_all(store: &Store, ids: &[IdQuery]) -> Result<Vec<Message>> {
    let mut found: Vec<Message> = Vec::with_capacity(ids.len());
    for query in ids {
        let m = match resolve_tx(store.conn(), query, Scope::Outbox) {
            // Not in the outbox: say what it is instead, if it exists.
            Err(crate::store::Error::NoSuchId(_)) => resolve_tx(store.conn(), query, Scope::All)?,
            other => other?,
        };
        if !found.iter().any(|f| f.id == m.id) {
            found.push(m);
        }
    }
    Ok(found)
}

/// `outbox cancel ID...`.
fn cancel(ctx: &Context, ids: &[IdQuery]) -> Result<()> {
    // Cancelling signs nothing: no passphrase needed.
    let (mut store, _) = ctx.open_with_key()?;
    let messages = resolve_all(&store, ids)?;
    let tx = store.transaction()?;
    let mut changed = Vec::new();
    for m in &messages {
        changed.push(cancel_tx(&tx, m)?);
    }
    tx.commit()?;
    for (m, changed) in messages.iter().zip(changed) {
        let note = if changed {
            "Cancelled"
        } else {
            "Already cancelled:"
        };
        outln!(
            "{note} {} to {}: it will not be sent ('chat-p2p outbox retry {}' sends it after all).",
            m.msg_id.short(),
            peer_label(m),
            m.msg_id.short()
        )
        .done("the messages were cancelled")?;
    }
    Ok(())
}

/// `outbox retry [ID...]`.
fn retry(ctx: &Context, args: RetryArgs) -> Result<()> {
    let (mut store, identity) = ctx.open_with_identity()?;
    let messages = if args.ids.is_empty() {
        store
            .unsent()?
            .into_iter()
            .filter(|m| !is_cancelled(m))
            .collect()
    } else {
        resolve_all(&store, &args.ids)?
    };
    let tx = store.transaction()?;
    for m in &messages {
        requeue_tx(&tx, m)?;
    }
    tx.commit()?;
    if messages.is_empty() {
        if args.json {
            return Ok(print_json(&json!([]))?);
        }
        return Ok(outln!("Nothing to retry: the outbox is empty.")?);
    }
    let server = args.server.home(&mut store)?;
    let mut engine = Engine::new(store, identity);
    engine.set_home(server.clone())?;
    let ids: Vec<_> = messages.iter().map(|m| m.msg_id).collect();
    match deliver(
        &mut engine,
        &server,
        args.timeout,
        Until::Acked,
        &ids,
        "outbox retry",
    )? {
        Delivery::Here(Err(e)) => {
            return Err(with_pending_hint(e, "The messages are pending again"))
        }
        Delivery::Here(Ok(())) | Delivery::ByOwner(_) => {}
        Delivery::Queued(holder) => errln!(
            "{holder} holds this profile's router session: what it has not sent yet stays \
             pending there"
        ),
    }
    let mut after = Vec::with_capacity(messages.len());
    for m in &messages {
        after.push(
            engine
                .store()
                .message(&m.msg_id)?
                .unwrap_or_else(|| m.clone()),
        );
    }
    if args.json {
        let all = after.iter().map(message_json).collect::<Result<Vec<_>>>()?;
        return print_json(&all.into()).done("the messages were sent again");
    }
    let mut failed = 0;
    for m in &after {
        let what = match (m.status, &m.failure_reason) {
            (Status::Failed, reason) => {
                failed += 1;
                format!(
                    "failed again: {}",
                    untrusted_inline(reason.as_deref().unwrap_or("the router refused it"))
                )
            }
            (Status::Pending, _) => "still pending".to_owned(),
            (status, _) => format!("{} {status}", status.mark()),
        };
        outln!("{} to {}: {what}", m.msg_id.short(), peer_label(m))
            .done("the messages were sent again")?;
    }
    if failed > 0 {
        anyhow::bail!("{failed} message(s) failed again: the router refused them");
    }
    Ok(())
}

/// `delete ID...` and `delete --conversation PEER`.
pub fn delete(ctx: &Context, args: DeleteArgs) -> Result<()> {
    let mut store = ctx.open_store()?;
    let (rowids, peer, question) = match &args.conversation {
        Some(name) => {
            let peer = resolve_peer(&store, name)?;
            let n = store.conversation_len(&peer)?;
            if n == 0 {
                return Ok(outln!(
                    "No messages with {}: nothing to delete.",
                    untrusted_inline(name)
                )?);
            }
            let question = format!(
                "Delete all {n} message(s) with {} from this profile?",
                untrusted_inline(name)
            );
            (Vec::new(), Some(peer), question)
        }
        None => {
            let mut rowids = Vec::new();
            for query in &args.ids {
                let m = resolve_tx(store.conn(), query, Scope::All)?;
                if !rowids.contains(&m.id) {
                    rowids.push(m.id);
                }
            }
            let question = format!("Delete {} message(s) from this profile?", rowids.len());
            (rowids, None, question)
        }
    };
    if !args.yes && !confirm(&question)? {
        return Ok(outln!("Nothing deleted.")?);
    }
    let n = store.delete_messages(&rowids, peer.as_ref())?;
    outln!("Deleted {n} message(s).").done("the messages were deleted")
}

/// Asks a yes/no question on the terminal; refuses (bad usage) without
/// one, as a script must say `--yes` to delete.
fn confirm(question: &str) -> Result<bool> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(UsageError(format!(
            "{question} Not asking without a terminal: pass --yes to delete"
        ))
        .into());
    }
    eprint_prompt(&format!("{question} [y/N] "));
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

/// Writes a prompt to stderr without a line break.
fn eprint_prompt(text: &str) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = write!(err, "{text}");
    let _ = err.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_at_a_glance() {
        assert_eq!(age(5), "5s");
        assert_eq!(age(5 * 60 + 3), "5m");
        assert_eq!(age(47 * 3600), "47h");
        assert_eq!(age(3 * 86400), "3d");
        let now = chrono::Utc::now();
        assert_eq!(age_secs("not a time", now), 0);
        assert_eq!(age_secs(&crate::clock::format(now), now), 0);
    }
}

//! `send` and `sync`: short sessions with the router, for scripts and for
//! catching up.

use std::time::Duration;

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::out::AlreadyDone;
use super::{print_json, resolve_peer, runtime, Context, ServerArgs, UsageError};
use crate::client::exchange::{drain_previous_home, exchange, Until};
use crate::client::follow::{await_owner, Handed};
use crate::client::owner::{Holder, SessionLock};
use crate::client::{ClientError, Engine, ServerUrl, Tally, Update};
use crate::identity::{Identity, PublicKey};
use crate::render::untrusted_inline;
use crate::store::{MessageId, Status, Store};

/// Arguments of `send`.
#[derive(Debug, Args)]
pub struct SendArgs {
    /// The contact to send to.
    peer: String,
    /// The message; several words are joined with spaces.
    #[arg(required = true, num_args = 1.., value_name = "MESSAGE")]
    message: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// How many seconds to wait at most for the router's acknowledgement.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// Print the stored message as JSON.
    #[arg(long)]
    json: bool,
    /// Only store the message and return, without waiting: a running
    /// `chat` or `sync --watch` of this profile sends it at once (else the
    /// next send, sync or chat). Bots answering from a watch use this.
    #[arg(long)]
    queue: bool,
}

/// Arguments of `sync`.
#[derive(Debug, Args)]
#[command(
    after_help = "With --watch, sync stays connected: it prints each message as it \
    arrives (with --json, one JSON object per line whose \"kind\" is message, status, \
    rejected, retrying, router_error, connected, disconnected or following), sends what \
    'send' and other commands store, reconnects by itself, and exits 0 on Ctrl-C or \
    SIGTERM. Beside a chat of the same profile it follows that chat's session (kind \
    following) and takes it over when the chat exits.\n\
    Example: chat-p2p sync --watch --json | jq -r 'select(.kind == \"message\") | .body'"
)]
pub struct SyncArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// How many seconds to wait at most for everything to be exchanged
    /// (with --watch: for each connection attempt).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    timeout: u64,
    /// Print the summary as JSON (with --watch: one object per line).
    #[arg(long)]
    json: bool,
    /// Stay connected: print messages as they arrive and send what other
    /// commands queue, until Ctrl-C or SIGTERM.
    #[arg(long)]
    watch: bool,
}

/// What `send` did before printing its report.
const SENT: &str = "the message was stored and sent";
/// What `send --queue` did before printing its report.
const QUEUED: &str = "the message was stored";
/// What `sync` did before printing its report.
const SYNCED: &str = "the sync took place";

/// Stores a message, then delivers the outbox to the router.
pub fn send(ctx: &Context, args: SendArgs) -> Result<()> {
    let body = args.message.join(" ");
    if body.trim().is_empty() {
        return Err(UsageError(
            "the message is empty: write something to send, e.g. chat-p2p send bob 'hello'".into(),
        )
        .into());
    }
    let (mut store, identity) = ctx.open_with_identity()?;
    let peer = resolve_recipient(&store, &identity, &args.peer)?;
    let server = args.server.home(&mut store)?;
    let mut engine = Engine::new(store, identity);
    engine.set_home(server.clone())?;
    // Stored before anything else can fail: nothing typed is ever lost.
    let message = engine.queue(&peer, &body)?;
    if args.queue {
        if args.json {
            return print_json(&serde_json::to_value(&message)?).done(QUEUED);
        }
        return outln!(
            "{} Queued for {}: a running 'chat-p2p sync --watch' or chat sends it (else the \
             next send, sync or chat).",
            Status::Pending.mark(),
            untrusted_inline(&args.peer)
        )
        .done(QUEUED);
    }
    let own = [message.msg_id];
    match deliver(
        &mut engine,
        &server,
        args.timeout,
        Until::Acked,
        &own,
        "send",
    )? {
        Delivery::Here(Err(e)) => {
            // To a contact on another router, it may have gone all the same.
            let went = engine
                .store()
                .message(&message.msg_id)?
                .is_some_and(|m| !matches!(m.status, Status::Pending | Status::Failed));
            if !went {
                return Err(with_pending_hint(e, "Your message is saved as pending"));
            }
            errln!(
                "warning: {}",
                untrusted_inline(&format!(
                    "{e} (your home router: what comes for you waits there)"
                ))
            );
        }
        Delivery::Here(Ok(())) | Delivery::ByOwner(_) => {}
        Delivery::Queued(holder) => {
            anyhow::bail!(
                "the router did not acknowledge it within {}s: {holder} holds this profile's \
                 router session and sends it when it can. Your message is queued (pending); \
                 'chat-p2p history {}' shows when it goes out",
                args.timeout,
                untrusted_inline(&args.peer)
            )
        }
    }
    let Some(stored) = engine.store().message(&message.msg_id)? else {
        // 'chat-p2p delete' from another terminal while it waited.
        anyhow::bail!("not sent: the message was deleted before it went out");
    };
    // With --json the message is printed whatever became of it, and a
    // refused one still exits 1, as without --json.
    if args.json {
        print_json(&serde_json::to_value(&stored)?).done(SENT)?;
    }
    if stored.status == Status::Failed {
        anyhow::bail!(
            "not sent: {}",
            stored
                .failure_reason
                .as_deref()
                .unwrap_or("the router refused it")
        );
    }
    if stored.status == Status::Pending {
        // Its router could not be reached (said above): not an error of
        // the message, which goes out with the next sync, chat or send.
        anyhow::bail!(
            "not sent yet: {}'s router did not take it. Your message is saved as pending and \
             goes out with the next 'chat-p2p sync', chat or send",
            untrusted_inline(&args.peer)
        );
    }
    if !args.json {
        outln!(
            "{} Sent to {} (the router has it; 'chat-p2p history {}' shows when it is delivered and read).",
            Status::Sent.mark(),
            args.peer,
            args.peer
        )
        .done(SENT)?;
    }
    note_received(engine.tally());
    Ok(())
}

/// The key to write to: a contact or a key, but not this profile's own
/// (refused as `add-contact` refuses it).
pub(super) fn resolve_recipient(
    store: &Store,
    identity: &Identity,
    peer: &str,
) -> Result<PublicKey> {
    let key = resolve_peer(store, peer)?;
    if key == identity.public_key() {
        anyhow::bail!(
            "'{peer}' is your own public key: messages go to someone else's key \
             ('chat-p2p contacts' lists them)"
        );
    }
    Ok(key)
}

/// Sends the outbox and takes in everything the router holds.
pub fn sync(ctx: &Context, args: SyncArgs) -> Result<()> {
    if args.watch {
        return super::watch::watch(ctx, args.server.server.as_ref(), args.timeout, args.json);
    }
    let (mut store, identity) = ctx.open_with_identity()?;
    let server = args.server.home(&mut store)?;
    let mut engine = Engine::new(store, identity);
    engine.set_home(server.clone())?;
    let outcome = match deliver(
        &mut engine,
        &server,
        args.timeout,
        Until::Synced,
        &[],
        "sync",
    )? {
        Delivery::Here(outcome) => outcome,
        Delivery::ByOwner(holder) | Delivery::Queued(holder) => {
            return by_owner(&engine, &server, &holder, args.json)
        }
    };
    let t = engine.tally();
    if let Err(e) = outcome {
        let done = if t.sent + t.received + t.receipts > 0 {
            format!(
                " ({} sent, {} received before it stopped)",
                t.sent, t.received
            )
        } else {
            String::new()
        };
        return Err(with_pending_hint(
            e,
            &format!("What you wrote stays pending{done}"),
        ));
    }
    let pending = engine.store().outbox()?.len();
    if args.json {
        return print_json(&json!({
            "server": server.to_string(),
            "sent": t.sent,
            "received": t.received,
            "duplicates": t.duplicates,
            "receipts": t.receipts,
            "rejected": t.rejected,
            "failed": t.failed,
            "pending": pending,
            "owner": null,
        }))
        .done(SYNCED);
    }
    outln!("{}", summary(&server.to_string(), &t, pending)).done(SYNCED)
}

/// What came of handing work to the process that owns the profile's
/// router session (see [`crate::client::owner`]).
pub(super) enum Delivery {
    /// This process owned the session (or took it over) and talked to the
    /// router itself.
    Here(Result<(), ClientError>),
    /// Another process owns it and sent the work.
    ByOwner(Holder),
    /// Another process owns it and had not sent the work in time.
    Queued(Holder),
}

/// Sends `ids` (with `Until::Synced`: everything, and takes in what
/// waits) through this process's own session when it can take the
/// profile's session lock, else through the process that holds it: then
/// waits, within `timeout_secs`, for that one to get `ids` (or the whole
/// outbox) out of pending. The lock, once taken, is held until the process
/// ends. `command` names this process for the others.
pub(super) fn deliver(
    engine: &mut Engine,
    server: &ServerUrl,
    timeout_secs: u64,
    until: Until,
    ids: &[MessageId],
    command: &str,
) -> Result<Delivery> {
    let mut lock = SessionLock::open(engine.store().path(), &format!("chat-p2p {command}"))?;
    if let Some(holder) = lock.try_take()? {
        let timeout = Duration::from_secs(timeout_secs);
        match await_owner(engine.store(), ids, &mut lock, timeout)? {
            Handed::Settled => return Ok(Delivery::ByOwner(holder)),
            Handed::TimedOut(holder) => return Ok(Delivery::Queued(holder)),
            Handed::TookOver => {}
        }
    }
    // The one message `send` reports itself is not warned about.
    let own = match ids {
        [one] => Some(*one),
        _ => None,
    };
    let outcome = run_exchange(engine, server, timeout_secs, until, own)?;
    // Kept until here: no other process of this profile connects meanwhile.
    drop(lock);
    Ok(Delivery::Here(outcome))
}

/// `sync`'s report when another process owns the router session: it
/// sends and receives for the profile, so this one did not connect.
fn by_owner(engine: &Engine, server: &ServerUrl, holder: &Holder, json: bool) -> Result<()> {
    let pending = engine.store().outbox()?.len();
    if json {
        return print_json(&json!({
            "server": server.to_string(),
            "sent": 0,
            "received": 0,
            "duplicates": 0,
            "receipts": 0,
            "rejected": 0,
            "failed": 0,
            "pending": pending,
            "owner": {"pid": holder.pid, "command": holder.command},
        }))
        .done(SYNCED);
    }
    let what = if pending > 0 {
        format!("{pending} message(s) still pending there")
    } else {
        "what waited here went out through it".to_owned()
    };
    outln!(
        "{holder} holds this profile's router session: it sends and receives for this \
         profile, so this sync did not connect; {what}."
    )
    .done(SYNCED)
}

/// One session with the router, on a runtime of its own. `own` is the
/// message `send` reports itself, not warned about.
pub(super) fn run_exchange(
    engine: &mut Engine,
    server: &ServerUrl,
    timeout_secs: u64,
    until: Until,
    own: Option<MessageId>,
) -> Result<Result<(), ClientError>> {
    let timeout = Duration::from_secs(timeout_secs);
    let warn = |update: &Update| match update {
        Update::Status(m) if Some(m.msg_id) == own => {}
        other => warn(other),
    };
    Ok(runtime()?.block_on(async {
        if until == Until::Synced {
            drain_previous(engine, timeout).await?;
        }
        exchange(engine, server, timeout, until, warn).await
    }))
}

/// Fetches what waits at the home router the profile moved away from, if
/// any, and says so on stderr.
pub(super) async fn drain_previous(
    engine: &mut Engine,
    timeout: Duration,
) -> Result<(), ClientError> {
    if let Some((router, n)) = drain_previous_home(engine, timeout, warn).await? {
        errln!(
            "note: fetched {n} message(s) still waiting at your previous home router {}",
            untrusted_inline(router.short())
        );
    }
    Ok(())
}

/// Says on stderr what a person should know about while `send` or `sync`
/// runs: refused frames and router errors. Everything else is summed up.
fn warn(update: &Update) {
    match update {
        Update::Rejected { from, reason } => errln!(
            "warning: refused a message claiming to be from {} ({from}): {}",
            from.fingerprint(),
            untrusted_inline(reason)
        ),
        Update::RouterError { code, message } => errln!(
            "warning: the router reported {}: {}",
            code.as_str(),
            untrusted_inline(message)
        ),
        Update::Status(m) if m.status == Status::Failed => errln!(
            "warning: a message to {} was not sent: {}",
            untrusted_inline(m.contact.as_deref().unwrap_or(&m.peer_key)),
            untrusted_inline(
                m.failure_reason
                    .as_deref()
                    .unwrap_or("the router refused it")
            )
        ),
        Update::Link {
            router,
            problem: Some(problem),
        } => errln!(
            "warning: {}; what goes to that router stays pending",
            untrusted_inline(&crate::client::courier::describe(router, problem))
        ),
        Update::Moved { peer, router } => errln!(
            "note: {} now receives at {}",
            peer.fingerprint(),
            untrusted_inline(router.short())
        ),
        Update::Received(_)
        | Update::Status(_)
        | Update::Retrying { .. }
        | Update::Link { problem: None, .. } => {}
    }
}

/// `Synced with ws://...: 2 sent, 5 received, 3 receipts.`
fn summary(server: &str, t: &Tally, pending: usize) -> String {
    let mut parts = vec![
        format!("{} sent", t.sent),
        format!("{} received", t.received),
        format!("{} receipt update(s)", t.receipts),
    ];
    if t.duplicates > 0 {
        parts.push(format!("{} duplicate(s) ignored", t.duplicates));
    }
    if t.rejected > 0 {
        parts.push(format!("{} rejected (see warnings)", t.rejected));
    }
    if t.failed > 0 {
        parts.push(format!("{} failed", t.failed));
    }
    if pending > 0 {
        parts.push(format!("{pending} still pending"));
    }
    format!("Synced with {server}: {}.", parts.join(", "))
}

fn note_received(t: Tally) {
    if t.received > 0 {
        errln!(
            "(also received {} new message(s): 'chat-p2p history' shows them)",
            t.received
        );
    }
}

/// Adds what happens to pending work, and what to do, to a network error.
pub(super) fn with_pending_hint(e: ClientError, what: &str) -> anyhow::Error {
    if e.is_transient() {
        anyhow::anyhow!(
            "{e}.\n{what}: 'chat-p2p sync' (or the next send or chat) delivers it once the \
             router is reachable"
        )
    } else {
        e.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_mentions_only_what_happened() {
        let t = Tally {
            sent: 2,
            received: 5,
            receipts: 1,
            ..Tally::default()
        };
        assert_eq!(
            summary("ws://h/ws", &t, 0),
            "Synced with ws://h/ws: 2 sent, 5 received, 1 receipt update(s)."
        );
        let t = Tally {
            rejected: 1,
            ..Tally::default()
        };
        assert!(
            summary("ws://h/ws", &t, 3).ends_with("1 rejected (see warnings), 3 still pending.")
        );
    }
}

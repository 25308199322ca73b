//! `sync --watch`: stays connected and prints what happens, as text or as
//! one JSON object per line, until SIGINT or SIGTERM.

use std::cell::RefCell;
use std::time::Duration;

use anyhow::Result;
use serde_json::{json, Value};
use tokio::sync::oneshot;

use super::chat::status_line;
use super::history::{line, Style};
use super::out::StdoutError;
use super::{runtime, Context};
use crate::client::follow::POLL;
use crate::client::owner::SessionLock;
use crate::client::watch::{self, WatchEvent, WatchOptions};
use crate::client::{Engine, ServerUrl, Update};
use crate::render::untrusted_inline;

/// Runs the watch against `server` until a signal; exit 0 then.
pub(super) fn watch(
    ctx: &Context,
    given: Option<&ServerUrl>,
    timeout: u64,
    json: bool,
) -> Result<()> {
    let (mut store, identity) = ctx.open_with_identity()?;
    let server = super::home_router(given, &mut store)?;
    let mut lock = SessionLock::open(store.path(), "chat-p2p sync --watch")?;
    let mut engine = Engine::new(store, identity);
    engine.set_home(server.clone())?;
    let options = WatchOptions {
        server,
        connect_timeout: Duration::from_secs(timeout.max(1)),
        poll: POLL,
    };
    let style = Style::detect();
    runtime()?.block_on(async {
        let signalled = stop_signal()?;
        // A closed stdout (the bot reading it died) ends the watch too.
        let (failed_tx, failed_rx) = oneshot::channel::<()>();
        let mut failed_tx = Some(failed_tx);
        let failure: RefCell<Option<StdoutError>> = RefCell::new(None);
        let stop = async {
            tokio::select! {
                () = signalled => {}
                _ = failed_rx => {}
            }
        };
        let server = options.server.to_string();
        let on_event = |event: WatchEvent<'_>| {
            let printed = if json {
                outln!("{}", event_json(&event, &server))
            } else {
                print_text(&event, &style, &server)
            };
            if let Err(e) = printed {
                if let Some(tx) = failed_tx.take() {
                    failure.replace(Some(e));
                    let _ = tx.send(());
                }
            }
        };
        if lock.try_take()?.is_none() {
            // What waits at a home router this profile moved away from.
            super::sync::drain_previous(&mut engine, options.connect_timeout).await?;
        }
        let outcome = watch::run(&mut engine, &options, &mut lock, stop, on_event).await;
        if let Some(e) = failure.take() {
            return Err(anyhow::Error::new(e));
        }
        outcome?;
        anyhow::Ok(())
    })
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
fn stop_signal() -> Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(async move {
        #[cfg(unix)]
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
    })
}

/// One line of `sync --watch --json`: an object whose `kind` says which.
///
/// - `message`: a new incoming message, the fields of `history --json`;
/// - `status`: one of our messages changed status, the same fields;
/// - `rejected`: a frame refused (`from`, `reason`);
/// - `retrying`, `router_error`: the router's `code` and `message`;
/// - `connected` (`server`), `disconnected` (`server`, `reason`,
///   `retry_in_ms`);
/// - `following` (`owner`: `pid`, `command`): another process owns the
///   router session; messages are reported as it stores them.
fn event_json(event: &WatchEvent<'_>, server: &str) -> Value {
    match event {
        WatchEvent::Connected => json!({"kind": "connected", "server": server}),
        WatchEvent::Following(holder) => json!({
            "kind": "following",
            "owner": {"pid": holder.pid, "command": holder.command},
        }),
        WatchEvent::Disconnected { error, retry_in } => json!({
            "kind": "disconnected",
            "server": server,
            "reason": error.to_string(),
            "retry_in_ms": u64::try_from(retry_in.as_millis()).unwrap_or(u64::MAX),
        }),
        WatchEvent::Update(update) => match update {
            Update::Received(m) => with_kind("message", serde_json::to_value(m)),
            Update::Status(m) => with_kind("status", serde_json::to_value(m)),
            Update::Rejected { from, reason } => json!({
                "kind": "rejected",
                "from": from.to_base64(),
                "reason": reason,
            }),
            Update::Retrying { code, message } => json!({
                "kind": "retrying",
                "code": code.as_str(),
                "message": message,
            }),
            Update::RouterError { code, message } => json!({
                "kind": "router_error",
                "code": code.as_str(),
                "message": message,
            }),
            Update::Moved { peer, router } => json!({
                "kind": "moved",
                "peer": peer.to_base64(),
                "router": router.as_str(),
            }),
            Update::Link { router, problem } => json!({
                "kind": "link",
                "router": router.as_str(),
                "problem": problem,
            }),
        },
    }
}

/// A message's JSON with `kind` added.
fn with_kind(kind: &str, value: serde_json::Result<Value>) -> Value {
    match value {
        Ok(Value::Object(mut fields)) => {
            fields.insert("kind".into(), json!(kind));
            Value::Object(fields)
        }
        // Not reached: a message always serializes to an object.
        _ => json!({"kind": kind}),
    }
}

/// Messages and statuses on stdout as `chat` shows them; the connection's
/// comings and goings and warnings on stderr.
fn print_text(event: &WatchEvent<'_>, style: &Style, server: &str) -> Result<(), StdoutError> {
    match event {
        WatchEvent::Connected => errln!("-- connected to {server}; watching (Ctrl-C stops)"),
        WatchEvent::Following(holder) => errln!(
            "-- {holder} holds this profile's router session: showing what it takes in and \
             sending through it; taking over when it exits (Ctrl-C stops)"
        ),
        WatchEvent::Disconnected { error, retry_in } => errln!(
            "-- {}; trying again in {:.1}s",
            untrusted_inline(&error.to_string()),
            retry_in.as_secs_f64()
        ),
        WatchEvent::Update(Update::Received(m)) => return outln!("{}", line(m, style)),
        WatchEvent::Update(Update::Status(m)) => return outln!("{}", status_line(m, style)),
        WatchEvent::Update(Update::Rejected { from, reason }) => errln!(
            "warning: refused a message claiming to be from {} ({from}): {}",
            from.fingerprint(),
            untrusted_inline(reason)
        ),
        WatchEvent::Update(Update::Retrying { code, message }) => errln!(
            "-- the router asks to wait ({}): {}; sending again shortly",
            code.as_str(),
            untrusted_inline(message)
        ),
        WatchEvent::Update(Update::RouterError { code, message }) => errln!(
            "warning: the router reported {}: {}",
            code.as_str(),
            untrusted_inline(message)
        ),
        WatchEvent::Update(Update::Moved { peer, router }) => errln!(
            "-- {} now receives at {}",
            peer.fingerprint(),
            untrusted_inline(router.short())
        ),
        WatchEvent::Update(Update::Link {
            router,
            problem: Some(problem),
        }) => errln!(
            "-- {}; what goes to that router waits",
            untrusted_inline(&crate::client::courier::describe(router, problem))
        ),
        WatchEvent::Update(Update::Link {
            router,
            problem: None,
        }) => errln!("-- reached {} again", untrusted_inline(router.short())),
    }
    Ok(())
}

//! `link`: hand this profile to a new device, or (`--join CODE`) become
//! one.

use std::cell::RefCell;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::{runtime, shell_quote, Context, ServerArgs, UsageError};
use crate::link::{self, Code, IssueOptions, JoinOptions, Observer};
use crate::render::untrusted_inline;

/// Arguments of `link`.
#[derive(Debug, Args)]
#[command(
    after_help = "Linking hands over the secret key and the whole history: \
    run it only for a device of yours. The code works once and only until it \
    expires; a wrong code ends the link on both sides."
)]
pub struct LinkArgs {
    /// Join as a new device, with the code the existing device printed.
    #[arg(long, value_name = "CODE")]
    join: Option<String>,
    /// This device's name [default: the host name] (with --join).
    #[arg(long, value_name = "NAME", requires = "join")]
    device_name: Option<String>,
    /// How many seconds the code stays usable.
    #[arg(
        long,
        value_name = "SECS",
        default_value_t = 600,
        conflicts_with = "join"
    )]
    expires: u64,
    /// How many seconds to wait for the router and for the other device at
    /// each step (with --join: also for the code's first message).
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    timeout: u64,
    #[command(flatten)]
    server: ServerArgs,
    /// Print JSON (without --join: one object per line, the code first).
    #[arg(long)]
    json: bool,
}

/// Runs `link` or `link --join`.
pub fn run(ctx: &Context, args: LinkArgs) -> Result<()> {
    if args.timeout == 0 || args.expires == 0 {
        return Err(UsageError("--timeout and --expires must be at least 1 second".into()).into());
    }
    match &args.join {
        Some(code) => join(ctx, code, &args),
        None => issue(ctx, &args),
    }
}

/// What the user sees while a link runs: the code, a progress bar.
struct Screen {
    json: bool,
    server: String,
    bar: RefCell<Option<ProgressBar>>,
    printed: RefCell<Option<anyhow::Error>>,
}

impl Screen {
    fn new(json: bool, server: String) -> Self {
        Self {
            json,
            server,
            bar: RefCell::new(None),
            printed: RefCell::new(None),
        }
    }

    fn finish(&self) {
        if let Some(bar) = self.bar.borrow_mut().take() {
            bar.finish_and_clear();
        }
    }
}

impl Observer for Screen {
    fn code(&self, code: &Code, expires_at: &str) {
        let command = format!(
            "chat-p2p --profile NEW-PROFILE link --join {code} --server {}",
            shell_quote(&self.server)
        );
        let result = if self.json {
            super::out::stdout()
                .write_fmt(format_args!(
                    "{}\n",
                    json!({"kind": "code", "code": code.to_string(), "expires_at": expires_at,
                        "server": self.server, "command": command})
                ))
                .and_then(|()| super::out::stdout().flush())
        } else {
            outln!(
                "Link code: {code}  (works once, until {expires_at})\n\
                 On the new device, run (with the profile name you want there):\n\n    \
                 {command}\n\n\
                 This hands over your secret key and your whole history. Waiting..."
            )
        };
        if let Err(e) = result {
            *self.printed.borrow_mut() = Some(e.into());
        }
    }

    fn transfer(&self, bytes: u64) {
        if self.json || !std::io::stderr().is_terminal() {
            return;
        }
        let bar = ProgressBar::new(bytes);
        if let Ok(style) = ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta})",
        ) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message("profile");
        bar.enable_steady_tick(Duration::from_millis(200));
        *self.bar.borrow_mut() = Some(bar);
    }

    fn progress(&self, bytes: u64) {
        if let Some(bar) = self.bar.borrow().as_ref() {
            bar.set_position(bytes);
        }
    }

    fn passphrase(&self) -> Result<zeroize::Zeroizing<String>, String> {
        let prompt = "The secret key arrives sealed: its passphrase, to register this device: ";
        super::passphrase::ask(prompt, super::passphrase::PASSPHRASE_FILE_ENV, || {
            format!(
                "the secret key is protected by a passphrase and there is no terminal to ask \
                 for it: set {} to a file whose first line is the passphrase",
                super::passphrase::PASSPHRASE_FILE_ENV
            )
        })
        .map_err(|e| format!("{e:#}"))
    }

    fn paused(&self, chunk: u64) {
        errln!("link: paused at chunk {chunk}");
    }
}

fn issue(ctx: &Context, args: &LinkArgs) -> Result<()> {
    // The secret key is handed over as stored (sealed if it has a
    // passphrase): no need to unlock it here. An unprotected one also
    // serves to take in what waits at the router just before the copy.
    let (store, _key) = ctx.open_with_key()?;
    let device = store.device()?;
    let catch_up = store.identity().ok().flatten();
    let server = match (&args.server.server, store.home_router()?) {
        (Some(given), _) => given.clone(),
        (None, Some(home)) => home,
        (None, None) => crate::client::ServerUrl::default_router(),
    };
    drop(store);
    let options = IssueOptions {
        server: server.clone(),
        expires: Duration::from_secs(args.expires),
        timeout: Duration::from_secs(args.timeout),
        device_name: device.name,
        catch_up,
    };
    let screen = Screen::new(args.json, server.to_string());
    let started = Instant::now();
    let result = runtime()?.block_on(link::issue(&ctx.profile.db_path(), &options, &screen));
    screen.finish();
    if let Some(e) = screen.printed.take() {
        return Err(e);
    }
    let linked = result.context("linking failed")?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        outln!(
            "{}",
            json!({"kind": "linked", "device_id": linked.device_id,
                "device_name": linked.device_name, "messages": linked.messages,
                "bytes": linked.bytes, "sent_bytes": linked.sent_bytes,
                "chunks": linked.chunks, "seconds": seconds})
        )?;
    } else {
        outln!(
            "Linked device '{}' ({}): it has this identity and {}.",
            untrusted_inline(&linked.device_name),
            linked.device_id,
            messages(linked.messages)
        )?;
    }
    Ok(())
}

/// "1 message", "2 messages".
fn messages(n: u64) -> String {
    match n {
        1 => "1 message".to_owned(),
        n => format!("{n} messages"),
    }
}

fn join(ctx: &Context, code: &str, args: &LinkArgs) -> Result<()> {
    let code = Code::parse(code).map_err(|e| UsageError(e.to_string()))?;
    let device_name = match &args.device_name {
        Some(name) => crate::store::device::check_name(name)
            .map_err(|e| UsageError(e.to_string()))?
            .to_owned(),
        None => crate::store::device::default_name(),
    };
    let options = JoinOptions {
        server: super::given_or_default(args.server.server.as_ref()),
        timeout: Duration::from_secs(args.timeout),
        profile: ctx.profile.name.to_string(),
        device_name,
    };
    let screen = Screen::new(
        args.json,
        super::given_or_default(args.server.server.as_ref()).to_string(),
    );
    let db = ctx.profile.db_path();
    let result = runtime()?.block_on(link::join(&db, &code, &options, &screen));
    screen.finish();
    let joined = result.context("linking failed")?;
    if args.json {
        super::print_json(&json!({
            "profile": ctx.profile.name.as_str(),
            "public_key": joined.public_key.to_base64(),
            "fingerprint": joined.public_key.fingerprint(),
            "device_id": joined.device_id,
            "device_name": options.device_name,
            "from_device": joined.from_device,
            "messages": joined.messages,
            "bytes": joined.bytes,
            "replaced": joined.replaced,
            "database": db,
        }))?;
    } else {
        outln!(
            "Linked: profile '{}' now holds identity {} with {}, from device '{}'.",
            ctx.profile.name,
            joined.public_key.fingerprint(),
            messages(joined.messages),
            untrusted_inline(&joined.from_device)
        )?;
    }
    Ok(())
}

//! `chat`: one conversation in the terminal (or fed from a pipe).

use std::io::IsTerminal;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Args;
use rustyline::error::ReadlineError;
use tokio::sync::mpsc;
use unicode_segmentation::UnicodeSegmentation;
use unicode_width::UnicodeWidthStr;

use super::history::{hit_line, line, local_time, peer_label, Style};
use super::notify::{Desktop, Notify};
use super::statuses::{Group, Held};
use super::sync::resolve_recipient;
use super::{runtime, ServerArgs, UsageError};
use crate::client::chat::{self, ChatOptions, Input, Screen};
use crate::client::owner::SessionLock;
use crate::client::{Engine, ServerUrl, Update};
use crate::identity::PublicKey;
use crate::render::{untrusted, untrusted_inline};
use crate::store::{Direction, Filter, Message, MessageId, Order, Status, Store};

/// Arguments of `chat`.
#[derive(Debug, Args)]
#[command(
    after_help = "In the chat: type a line and Enter to send it; Alt-Enter or Ctrl-J \
    starts a new line within the message; //text sends a line starting with /. \
    /history [N] shows earlier messages, /search WORDS searches them all, \
    /help lists commands. Ctrl-C clears the line being typed, and on an empty line \
    leaves, as exit (or quit, /quit, Ctrl-D) does.\n\
    Status marks are printed once things settle, one line for several messages: \
    '✓✓ delivered to bob: hi', 'read by bob: 3 messages, up to \"hi\"'.\n\
    The original client's form 'chat-p2p chat ws://HOST:PORT/ws PEER' works too.\n\
    Without a contact, 'chat' lists your conversations with their unread counts (as 'inbox')."
)]
pub struct ChatArgs {
    /// The contact to talk to (optionally preceded by the router's URL);
    /// without one, lists the conversations (as `inbox` does) and exits.
    #[arg(value_name = "[SERVER] PEER", num_args = 0..=2)]
    target: Vec<String>,
    #[command(flatten)]
    server: ServerArgs,
    /// How many earlier messages to show on opening.
    #[arg(long, short = 'n', default_value_t = 20)]
    last: u32,
    /// On leaving, how many seconds to wait at most for the router to
    /// acknowledge what was sent.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// On a new message, ring the terminal's bell, show a desktop
    /// notification (with notify-send, where a session bus exists), both
    /// (all) or neither (off). Never when the output is not a terminal.
    /// [default: notify.bell and notify.desktop in config.toml, else off]
    #[arg(
        long,
        env = "CHAT_NOTIFY",
        value_name = "bell|desktop|all|off",
        value_parser = Notify::parse
    )]
    notify: Option<Notify>,
}

/// Runs the chat.
pub fn chat(ctx: &super::Context, args: ChatArgs) -> Result<()> {
    if args.target.is_empty() {
        return super::inbox::inbox(ctx, super::inbox::InboxArgs::default());
    }
    let (given, peer_name) = split_target(&args.target, args.server.server)?;
    let (mut store, identity) = ctx.open_with_identity()?;
    let server = super::home_router(given.as_ref(), &mut store)?;
    let peer = resolve_recipient(&store, &identity, &peer_name)?;
    let style = Style::detect();
    let interactive = std::io::stdin().is_terminal();
    // The flag or CHAT_NOTIFY, else the config file's choice.
    let notify = args
        .notify
        .unwrap_or(Notify {
            bell: ctx.config.notify_bell,
            desktop: ctx.config.notify_desktop,
        })
        .for_terminal(std::io::stdout().is_terminal());
    let label = match store.contact_by_key(&peer)? {
        Some(c) => format!(
            "{} ({})",
            untrusted_inline(&c.name),
            super::verify::mark(&store.verification(&c)?)
        ),
        None => format!("unknown ({})", peer.fingerprint()),
    };
    if interactive {
        errln!(
            "Chat with {label} via {server}. Type and press Enter to send; /help for commands, \
             exit to leave."
        );
    }
    let filter = Filter {
        peer: Some(peer),
        ..Filter::default()
    };
    let recent = store.recent(&filter, args.last as usize)?;
    let unread = store
        .unread_counts()?
        .remove(&peer.to_base64())
        .unwrap_or(0);
    let first_unread = recent
        .iter()
        .position(|m| m.direction == Direction::In && m.status == Status::Received);
    let unread_shown = recent
        .iter()
        .filter(|m| m.direction == Direction::In && m.status == Status::Received)
        .count();
    for (i, m) in recent.iter().enumerate() {
        if Some(i) == first_unread {
            outln!("{}", unread_separator(unread, unread_shown, &style))?;
        }
        outln!("{}", line(m, &style))?;
    }
    let options = ChatOptions {
        peer,
        server: server.clone(),
        connect_timeout: Duration::from_secs(10),
        quit_timeout: Duration::from_secs(args.timeout),
        // Only what was on screen is read.
        shown: recent.iter().map(|m| m.msg_id).collect(),
    };
    let mut lock = SessionLock::open(store.path(), "chat-p2p chat")?;
    let mut engine = Engine::new(store, identity);
    engine.set_home(server.clone())?;
    runtime()?.block_on(async {
        let (mut input, mut screen) = if interactive {
            let (rx, printer) = spawn_line_editor()?;
            (rx, ChatScreen::new(style, peer, Some(printer), notify))
        } else {
            (
                spawn_pipe_reader(),
                ChatScreen::new(style, peer, None, notify),
            )
        };
        if lock.try_take()?.is_none() {
            // What waits at a home router this profile moved away from.
            super::sync::drain_previous(&mut engine, options.connect_timeout).await?;
        }
        let pending = chat::run(&mut engine, &options, &mut lock, &mut input, &mut screen).await?;
        if pending > 0 {
            // As `send` does: a script must not mistake this for delivery.
            anyhow::bail!(
                "{pending} message(s) still pending: the router did not acknowledge them before \
                 leaving (see --timeout). They are saved; 'chat-p2p sync' or the next chat \
                 sends them"
            );
        }
        anyhow::Ok(())
    })
}

/// `── 3 unread ──` above the first unread message shown; when more are
/// unread than the `shown` ones, says that the rest are further up.
fn unread_separator(unread: u64, shown: usize, style: &Style) -> String {
    let earlier = usize::try_from(unread)
        .unwrap_or(usize::MAX)
        .saturating_sub(shown);
    let text = if earlier > 0 {
        format!("── {unread} unread ({earlier} further up: /history N shows more) ──")
    } else {
        format!("── {unread} unread ──")
    };
    style.paint("1", &text)
}

/// `[SERVER] PEER`: a URL first is the original client's way of naming the
/// router, and wins over `--server`.
fn split_target(
    target: &[String],
    server: Option<ServerUrl>,
) -> Result<(Option<ServerUrl>, String)> {
    match target {
        [peer] => Ok((server, peer.clone())),
        [url, peer] if ServerUrl::looks_like_url(url) => Ok((
            Some(ServerUrl::parse(url).map_err(UsageError)?),
            peer.clone(),
        )),
        [other, _] => Err(UsageError(format!(
            "'{other}' is not a router URL: use 'chat PEER' or 'chat ws://HOST:PORT/ws PEER'"
        ))
        .into()),
        _ => Err(UsageError("chat takes one contact".into()).into()),
    }
}

/// Classifies a typed line.
fn classify(line: &str) -> Option<Input> {
    let trimmed = line.trim();
    match trimmed {
        "" => None,
        "exit" | "quit" | "/quit" | "/exit" => Some(Input::Quit),
        // `//text` is the way to send a line that starts with `/`.
        text if text.starts_with("//") => Some(Input::Send(
            line.trim_start()[1..]
                .trim_end_matches(['\r', '\n'])
                .to_owned(),
        )),
        cmd if cmd.starts_with('/') => Some(Input::Command(cmd.to_owned())),
        _ => Some(Input::Send(line.trim_end_matches(['\r', '\n']).to_owned())),
    }
}

type Printer = Box<dyn rustyline::ExternalPrinter + Send>;

/// Reads lines with a line editor on its own thread; what arrives meanwhile
/// is printed above the prompt, leaving the line being typed intact.
fn spawn_line_editor() -> Result<(mpsc::Receiver<Input>, Printer)> {
    use rustyline::{Cmd, EventHandler, KeyCode, KeyEvent, Modifiers};
    let mut editor =
        rustyline::DefaultEditor::new().context("cannot set up the terminal line editor")?;
    // A new line within the message: Alt-Enter where the terminal sends
    // it as ESC CR, Ctrl-J (LF) everywhere.
    editor.bind_sequence(KeyEvent(KeyCode::Enter, Modifiers::ALT), Cmd::Newline);
    editor.bind_sequence(KeyEvent::ctrl('J'), Cmd::Newline);
    editor.bind_sequence(
        KeyEvent::ctrl('C'),
        EventHandler::Conditional(Box::new(ClearOrQuit)),
    );
    let printer: Printer = Box::new(
        editor
            .create_external_printer()
            .context("cannot set up the terminal line editor")?,
    );
    let (tx, rx) = mpsc::channel(64);
    std::thread::spawn(move || loop {
        let input = match editor.readline("> ") {
            Ok(text) => {
                let _ = editor.add_history_entry(text.as_str());
                match classify(&text) {
                    Some(input) => input,
                    None => continue,
                }
            }
            Err(ReadlineError::Interrupted | ReadlineError::Eof) => Input::Quit,
            Err(e) => {
                errln!("chat-p2p: cannot read the terminal: {e}");
                Input::Quit
            }
        };
        let quit = input == Input::Quit;
        if tx.blocking_send(input).is_err() || quit {
            return;
        }
    });
    Ok((rx, printer))
}

/// Ctrl-C clears what is typed; only on an empty line does it leave, so a
/// half-written message is not lost to a reflex. The cleared text can be
/// brought back with Ctrl-Y.
struct ClearOrQuit;

impl rustyline::ConditionalEventHandler for ClearOrQuit {
    fn handle(
        &self,
        _event: &rustyline::Event,
        _n: rustyline::RepeatCount,
        _positive: bool,
        ctx: &rustyline::EventContext<'_>,
    ) -> Option<rustyline::Cmd> {
        Some(if ctx.line().is_empty() {
            rustyline::Cmd::Interrupt
        } else {
            rustyline::Cmd::Kill(rustyline::Movement::WholeBuffer)
        })
    }
}

/// Reads plain lines from a pipe; the end of input leaves the chat.
fn spawn_pipe_reader() -> mpsc::Receiver<Input> {
    use tokio::io::AsyncBufReadExt;
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(text)) = lines.next_line().await {
            if let Some(input) = classify(&text) {
                let quit = input == Input::Quit;
                if tx.send(input).await.is_err() || quit {
                    return;
                }
            }
        }
        let _ = tx.send(Input::Quit).await;
    });
    rx
}

/// Prints the chat: above the prompt on a terminal, plainly on a pipe.
struct ChatScreen {
    style: Style,
    /// The conversation on screen, for `/history`.
    peer: PublicKey,
    printer: Option<Printer>,
    /// Status changes held back, to print several as one line.
    held: Held,
    notify: Notify,
    desktop: Desktop,
}

impl ChatScreen {
    fn new(style: Style, peer: PublicKey, printer: Option<Printer>, notify: Notify) -> Self {
        // A pipe reads as a log: every change, but still one line per batch.
        let held = Held::new(printer.is_none());
        Self {
            style,
            peer,
            printer,
            held,
            notify,
            desktop: Desktop::detect(),
        }
    }

    fn print(&mut self, text: String) {
        match &mut self.printer {
            Some(printer) => {
                if printer.print(format!("{text}\n")).is_err() {
                    errln!("{text}");
                }
            }
            // A closed or full stdout must not end the chat with a panic.
            None => {
                let _ = outln!("{text}");
            }
        }
    }

    /// Prints what was held back, first: the screen keeps the order in
    /// which things happened.
    fn print_held(&mut self) {
        for group in self.held.take() {
            let text = group_line(&group, &self.style);
            self.print(text);
        }
    }

    /// The line for a new message, with the notifications asked for (none
    /// for a copy of what this identity sent from another device).
    fn arrived(&mut self, m: &Message) -> String {
        let mut text = line(m, &self.style);
        if m.direction == Direction::Out {
            return text;
        }
        if self.notify.bell {
            // BEL moves nothing on screen: it rides with the line.
            text.push('\u{7}');
        }
        if self.notify.desktop && self.desktop.available() {
            if let Some(why) = self.desktop.show(&peer_label(m), &excerpt(&m.body)) {
                self.print(self.style.paint("2", &format!("-- {why}")));
            }
        }
        text
    }
}

impl Screen for ChatScreen {
    fn update(&mut self, update: &Update) {
        if let Update::Status(m) = update {
            self.held.push(m.clone(), std::time::Instant::now());
            return;
        }
        self.print_held();
        let text = match update {
            Update::Received(m) => self.arrived(m),
            Update::Status(m) => status_line(m, &self.style),
            Update::Rejected { from, reason } => self.style.paint(
                "31",
                &format!(
                    "! refused a message claiming to be from {}: {}",
                    from.fingerprint(),
                    untrusted_inline(reason)
                ),
            ),
            Update::Retrying { code, message } => format!(
                "… the router asks to wait ({}): {}; sending again shortly",
                code.as_str(),
                untrusted_inline(message)
            ),
            Update::RouterError { code, message } => {
                format!(
                    "! router error ({}): {}",
                    code.as_str(),
                    untrusted_inline(message)
                )
            }
            Update::Moved { peer, router } => format!(
                "… {} now receives at {}",
                peer.fingerprint(),
                untrusted_inline(router.short())
            ),
            Update::Link {
                router,
                problem: Some(problem),
            } => format!(
                "… {}; messages for that router wait and go out when it is back",
                untrusted_inline(&crate::client::courier::describe(router, problem))
            ),
            Update::Link {
                router,
                problem: None,
            } => format!("… reached {} again", untrusted_inline(router.short())),
        };
        self.print(text);
    }

    fn notice(&mut self, text: &str) {
        self.print_held();
        // Notices quote errors, and errors may quote what a router sent.
        let text = self.style.paint("2", &format!("-- {}", untrusted(text)));
        self.print(text);
    }

    fn command(&mut self, command: &str, store: &Store) -> Vec<MessageId> {
        self.print_held();
        let lines = run_command(command, store, &self.peer, &self.style)
            .unwrap_or_else(|e| vec![untrusted(&format!("{e:#}"))]);
        for text in lines {
            self.print(text);
        }
        history_shown(command, store, &self.peer)
    }

    fn flush_at(&self) -> Option<std::time::Instant> {
        self.held.due()
    }

    fn flush(&mut self) {
        self.print_held();
    }
}

/// One line for a group of status changes: the single message's own line,
/// or `[time] read by bob: 3 messages, up to "hello"`.
fn group_line(group: &Group, style: &Style) -> String {
    let Some(last) = group.messages.last() else {
        return String::new();
    };
    if group.messages.len() == 1 {
        return status_line(last, style);
    }
    format!(
        "{}: {} messages, up to \"{}\"",
        status_head(last, style),
        group.messages.len(),
        excerpt(&last.body)
    )
}

/// `[2026-11-25 20:32] ✓✓ delivered to bob: hello` for a status change.
pub(super) fn status_line(m: &Message, style: &Style) -> String {
    let mut text = format!("{}: {}", status_head(m, style), excerpt(&m.body));
    if let Some(reason) = &m.failure_reason {
        text.push_str(&format!(" ({})", untrusted_inline(reason)));
    }
    if m.status == Status::Failed {
        text = style.paint("31", &text);
    }
    text
}

/// `[2026-11-25 20:32] ✓✓ delivered to bob`: when, what and to whom.
fn status_head(m: &Message, style: &Style) -> String {
    let time = match m.status {
        Status::Sent => m.sent_at.as_deref(),
        Status::Delivered => m.delivered_at.as_deref(),
        Status::Read => m.read_at.as_deref(),
        Status::Failed => m.failed_at.as_deref(),
        _ => None,
    }
    .unwrap_or(&m.created_at);
    let what = match m.status {
        Status::Sent => "✓ sent to",
        Status::Delivered => "✓✓ delivered to",
        Status::Read => "read by",
        Status::Failed => "✗ not sent to",
        _ => "now",
    };
    format!(
        "{} {what} {}",
        style.paint("2", &format!("[{}]", local_time(time))),
        peer_label(m)
    )
}

/// The body's first line, made safe for the terminal and cut to at most
/// 40 columns by whole grapheme clusters, so that an emoji joined by
/// zero-width joiners or a letter with its accents is never split; `…`
/// marks a cut or a further line.
pub(super) fn excerpt(body: &str) -> String {
    const MAX_COLUMNS: usize = 40;
    let first_line = body.lines().next().unwrap_or("");
    let mut cut = String::new();
    let mut columns = 0;
    for grapheme in untrusted_inline(first_line).graphemes(true) {
        columns += grapheme.width();
        if columns > MAX_COLUMNS {
            return format!("{cut}…");
        }
        cut.push_str(grapheme);
    }
    if first_line.len() < body.len() {
        cut.push('…');
    }
    cut
}

const HELP: &str = "/history [N]   the last N messages of this conversation (default 20)
/search WORDS  search every conversation (plain words; any part of Chinese, Japanese, Thai)
/help          this list
//text         send a line starting with / (here: /text)
Alt-Enter, Ctrl-J           a new line within the message
Ctrl-C         clear the line being typed (Ctrl-Y brings it back)
exit, quit, /quit, Ctrl-D, Ctrl-C on an empty line
               leave (waits briefly for the router's acks)";

/// Answers an in-chat command.
fn run_command(
    command: &str,
    store: &Store,
    peer: &PublicKey,
    style: &Style,
) -> Result<Vec<String>> {
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(n, r)| (n, r.trim()));
    match name {
        "/help" => Ok(HELP.lines().map(str::to_owned).collect()),
        "/history" => {
            let n = history_len(rest)?;
            let conversation = Filter {
                peer: Some(*peer),
                ..Filter::default()
            };
            Ok(store
                .recent(&conversation, n)?
                .iter()
                .map(|m| line(m, style))
                .collect())
        }
        "/search" if rest.is_empty() => Ok(vec!["/search needs words, e.g. /search plan".into()]),
        "/search" => {
            let hits = store.search_words(rest, &Filter::default(), Order::Newest, 20)?;
            if hits.is_empty() {
                return Ok(vec![format!(
                    "no message matches \"{}\"",
                    untrusted_inline(rest)
                )]);
            }
            Ok(hits.iter().map(|h| hit_line(h, style)).collect())
        }
        other => Ok(vec![format!(
            "unknown command {}; /help lists them",
            untrusted_inline(other)
        )]),
    }
}

/// How many messages `/history REST` shows.
fn history_len(rest: &str) -> Result<usize> {
    if rest.is_empty() {
        return Ok(20);
    }
    rest.parse::<usize>()
        .map_err(|_| anyhow::anyhow!("/history takes a number, e.g. /history 50"))
}

/// The messages of the conversation a `/history` command showed (none for
/// other commands), so that they count as read.
fn history_shown(command: &str, store: &Store, peer: &PublicKey) -> Vec<MessageId> {
    let (name, rest) = command
        .split_once(char::is_whitespace)
        .map_or((command, ""), |(n, r)| (n, r.trim()));
    let Ok(n) = history_len(rest) else {
        return Vec::new();
    };
    let conversation = Filter {
        peer: Some(*peer),
        ..Filter::default()
    };
    match (name, store.recent(&conversation, n)) {
        ("/history", Ok(shown)) => shown.iter().map(|m| m.msg_id).collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_lines() {
        assert_eq!(classify("  "), None);
        assert_eq!(classify("exit"), Some(Input::Quit));
        assert_eq!(classify("/quit"), Some(Input::Quit));
        assert_eq!(
            classify("/history 5"),
            Some(Input::Command("/history 5".into()))
        );
        assert_eq!(
            classify("  hi there "),
            Some(Input::Send("  hi there ".into()))
        );
        // A line that starts with `/` is written `//`.
        assert_eq!(classify("//shrug"), Some(Input::Send("/shrug".into())));
        assert_eq!(
            classify(" //etc/hosts "),
            Some(Input::Send("/etc/hosts ".into()))
        );
    }

    #[test]
    fn the_legacy_form_names_the_router_first() {
        let default = Some(ServerUrl::parse("ws://localhost:8080/ws").unwrap());
        let (s, p) = split_target(&["bob".into()], default.clone()).unwrap();
        assert_eq!((s, p.as_str()), (default.clone(), "bob"));
        let (s, p) = split_target(&["ws://h:1/ws".into(), "bob".into()], default.clone()).unwrap();
        assert_eq!(
            (s.unwrap().to_string(), p.as_str()),
            ("ws://h:1/ws".into(), "bob")
        );
        assert!(split_target(&["alice".into(), "bob".into()], default).is_err());
    }

    #[test]
    fn in_chat_history_shows_this_conversation_and_search_all() {
        use crate::identity::Identity;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("chat.db")).unwrap();
        let (bob, carol) = (
            Identity::generate().public_key(),
            Identity::generate().public_key(),
        );
        store.insert_outgoing(&bob, "to bob about lunch").unwrap();
        store
            .insert_outgoing(&carol, "to carol about lunch")
            .unwrap();
        let style = Style::detect();
        let history = run_command("/history 10", &store, &bob, &style).unwrap();
        assert_eq!(history.len(), 1);
        assert!(history[0].ends_with("to bob about lunch"));
        assert_eq!(
            run_command("/search lunch", &store, &bob, &style)
                .unwrap()
                .len(),
            2
        );
        let bad = run_command("/history x", &store, &bob, &style).unwrap_err();
        assert!(bad.to_string().contains("takes a number"));
        let unknown = run_command("/frob", &store, &bob, &style).unwrap();
        assert!(unknown[0].contains("/help"));
    }

    #[test]
    fn excerpts_are_one_short_line() {
        assert_eq!(excerpt("hi"), "hi");
        assert_eq!(excerpt("a\nb"), "a…");
        assert_eq!(excerpt(&"x".repeat(50)).chars().count(), 41);
    }

    #[test]
    fn excerpts_cut_whole_graphemes_by_display_width() {
        let family = "👩\u{200D}👩\u{200D}👧\u{200D}👦";
        let cut = excerpt(&family.repeat(30));
        // Two columns each: twenty fit in forty.
        assert_eq!(cut, format!("{}…", family.repeat(20)));
        let accented = "e\u{301}";
        let cut = excerpt(&accented.repeat(50));
        assert_eq!(cut, format!("{}…", accented.repeat(40)));
        let wide = excerpt(&"東".repeat(30));
        assert_eq!(wide, format!("{}…", "東".repeat(20)));
    }

    #[test]
    fn status_lines_and_command_answers_are_escaped() {
        assert_eq!(excerpt("\u{1b}]0;x\u{7}\nnext"), "^[]0;x^G…");
        let dir = tempfile::tempdir().unwrap();
        let store = Store::create(&dir.path().join("chat.db")).unwrap();
        let peer = crate::identity::Identity::generate().public_key();
        let style = Style::detect();
        let answer = run_command("/search nothing\u{202E}here", &store, &peer, &style).unwrap();
        assert!(answer[0].contains("<U+202E>"), "{answer:?}");
        let answer = run_command("/frob\u{9b}", &store, &peer, &style).unwrap();
        assert!(answer[0].contains("<U+009B>"), "{answer:?}");
    }
}

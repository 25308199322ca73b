//! `history`: a conversation's latest messages, or full-text search.

use std::io::{IsTerminal, Write};

use anyhow::Result;
use chrono::{DateTime, Local, Utc};
use clap::Args;
use serde_json::json;
use unicode_width::UnicodeWidthStr;

use super::out::StdoutError;
use super::{print_json, resolve_peer, Context, UsageError};
use crate::identity::PublicKey;
use crate::render::{untrusted, untrusted_inline, wrap};
use crate::store::outbox::is_cancelled;
use crate::store::search::{MATCH_END, MATCH_START};
use crate::store::{
    Direction, Filter, Hit, Message, Order, Status, Store, TimeBound, SHORT_ID_LEN,
};

const HISTORY_HELP: &str = "\
Each line starts with the message's short id, which 'delete' and 'outbox' \
take (any unique beginning of it will do).

Search: --search takes plain words. Each word matches the start of a word, \
ignoring case and accents, and all are required; punctuation is harmless \
(don't, e-mail, c++, \"what's the plan?\"); words in double quotes are \
a phrase. Text in Chinese, Japanese or \
Thai is found by any part: テキスト finds 日本語テキスト. With --fts the \
query is FTS5 syntax instead: secr* a prefix, \"secret plan\" a phrase, \
AND, OR, NOT and parentheses.

Times: --since and --until take 2h, 30m, 7d, 2w, today, yesterday, \
\"3 days ago\", a date (2026-11-25: the whole day), a local time \
(\"2026-11-25 14:30\") or RFC 3339 with a zone (2026-11-25T14:30:00Z). \
Dates and times without a zone are in the local time zone (TZ), the one \
history shows; --utc shows UTC; --json always gives UTC (RFC 3339).

Examples:
  chat-p2p history bob --since yesterday
  chat-p2p history --search \"what's the plan?\" --since 7d
  chat-p2p history --search テキスト --until \"2026-11-25 18:00\"
  chat-p2p history --fts 'secret NOT plan*' --rank";

/// Arguments of `history`.
#[derive(Debug, Args)]
#[command(after_help = HISTORY_HELP, group(clap::ArgGroup::new("query").args(["search", "fts"])))]
pub struct HistoryArgs {
    /// A contact's name (or a public key); all conversations when omitted.
    peer: Option<String>,
    /// Search for these words (plain text, see below); hits are listed newest first.
    #[arg(long, short = 's', value_name = "WORDS")]
    search: Option<String>,
    /// Search with a raw FTS5 query (prefix*, "phrases", AND/OR/NOT).
    #[arg(long, value_name = "QUERY")]
    fts: Option<String>,
    /// With --search or --fts: order hits by relevance (bm25) instead of newest first.
    #[arg(long, requires = "query")]
    rank: bool,
    /// How many messages (or hits) to show.
    #[arg(long, short = 'n', default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    limit: u32,
    /// Only messages written at or after T (7d, yesterday, 2026-11-25, "2026-11-25 14:30"...).
    #[arg(long, value_name = "T", value_parser = TimeBound::parse)]
    since: Option<TimeBound>,
    /// Only messages written at or before T (a date: until the end of that day).
    #[arg(long, value_name = "T", value_parser = TimeBound::parse)]
    until: Option<TimeBound>,
    /// Only messages with this status (pending, sent, delivered, read, failed, received;
    /// cancelled messages are failed).
    #[arg(long, value_name = "S")]
    status: Option<Status>,
    /// Only incoming (in) or outgoing (out) messages.
    #[arg(long, value_name = "in|out")]
    direction: Option<Direction>,
    /// With --search or --fts: show N messages of the conversation around each hit.
    #[arg(short = 'C', long = "context", value_name = "N", requires = "query")]
    context: Option<u32>,
    /// Show times in UTC instead of the local time zone.
    #[arg(long)]
    utc: bool,
    /// Print every field as JSON.
    #[arg(long)]
    json: bool,
}

/// Shows history or search results.
pub fn history(ctx: &Context, args: HistoryArgs) -> Result<()> {
    let store = ctx.open_store()?;
    let filter = Filter {
        peer: args
            .peer
            .as_deref()
            .map(|p| resolve_peer(&store, p))
            .transpose()?,
        since: args.since.map(|t| t.as_since()),
        until: args.until.map(|t| t.as_until()),
        status: args.status,
        direction: args.direction,
    };
    let limit = args.limit as usize;
    let mut style = Style::detect();
    style.utc = args.utc || ctx.config.display_utc;
    if args.search.is_none() && args.fts.is_none() {
        if args.json {
            return print_json_stream(&store, &filter, limit);
        }
        let messages = store.recent(&filter, limit)?;
        if messages.is_empty() {
            outln!("No messages.")?;
        }
        let mut out = super::out::stdout();
        for m in &messages {
            writeln!(
                out,
                "{} {}",
                id_mark(m, &style),
                line_at(m, &style, ID_COLUMNS)
            )?;
        }
        return Ok(());
    }
    let order = if args.rank {
        Order::Rank
    } else {
        Order::Newest
    };
    let hits = match (&args.search, &args.fts) {
        (Some(words), _) => store.search_words(words, &filter, order, limit),
        (None, Some(fts)) => store.search(fts, &filter, order, limit),
        (None, None) => Ok(Vec::new()),
    }
    .map_err(|e| match e {
        // A query that cannot be read is a usage mistake, as a bad --status is.
        e @ crate::store::Error::BadSearch { .. } => anyhow::Error::from(UsageError(e.to_string())),
        e => e.into(),
    })?;
    let context = args.context.unwrap_or(0) as usize;
    if args.json {
        return Ok(print_json(&hits_json(&store, &hits, context)?)?);
    }
    if hits.is_empty() {
        outln!("No messages match.")?;
    }
    let mut out = super::out::stdout();
    for (i, hit) in hits.iter().enumerate() {
        if context > 0 {
            if i > 0 {
                writeln!(out, "--")?;
            }
            let (before, after) = store.context(&hit.message, context)?;
            for m in &before {
                let id = id_mark(m, &style);
                writeln!(out, "  {id} {}", line_at(m, &style, 2 + ID_COLUMNS))?;
            }
            let id = id_mark(&hit.message, &style);
            writeln!(out, "> {id} {}", hit_line_at(hit, &style, 2 + ID_COLUMNS))?;
            for m in &after {
                let id = id_mark(m, &style);
                writeln!(out, "  {id} {}", line_at(m, &style, 2 + ID_COLUMNS))?;
            }
        } else {
            let id = id_mark(&hit.message, &style);
            writeln!(out, "{id} {}", hit_line_at(hit, &style, ID_COLUMNS))?;
        }
    }
    Ok(())
}

/// Prints the messages as a pretty JSON array, exactly as [`print_json`]
/// would, but row by row: `-n 200000` never holds them all in memory.
fn print_json_stream(store: &Store, filter: &Filter, limit: usize) -> Result<()> {
    use serde::ser::{SerializeSeq, Serializer};
    let mut out = super::out::stdout();
    let mut buf = std::io::BufWriter::with_capacity(1 << 16, out.raw());
    let mut ser = serde_json::Serializer::pretty(&mut buf);
    let mut seq = ser.serialize_seq(None).map_err(StdoutError::from)?;
    store.recent_each(filter, limit, |m| -> Result<()> {
        // Through a Value, as print_json does: the same key order.
        let value = serde_json::to_value(&m)?;
        seq.serialize_element(&value).map_err(StdoutError::from)?;
        Ok(())
    })?;
    seq.end().map_err(StdoutError::from)?;
    writeln!(buf).map_err(StdoutError)?;
    buf.flush().map_err(StdoutError)?;
    Ok(())
}

fn hits_json(store: &Store, hits: &[Hit], context: usize) -> Result<serde_json::Value> {
    let mut out = Vec::with_capacity(hits.len());
    for hit in hits {
        let mut value = serde_json::to_value(&hit.message)?;
        if let Some(obj) = value.as_object_mut() {
            obj.insert("snippet".into(), json!(plain(&hit.snippet)));
            if context > 0 {
                let (before, after) = store.context(&hit.message, context)?;
                obj.insert("context_before".into(), serde_json::to_value(before)?);
                obj.insert("context_after".into(), serde_json::to_value(after)?);
            }
        }
        out.push(value);
    }
    Ok(serde_json::Value::Array(out))
}

/// Whether to colour (as `--color`, `NO_COLOR`, `CLICOLOR_FORCE`, `TERM`
/// and config.toml decide: see [`super::shell::colour`]), and whether to
/// fit bodies to the terminal's width.
pub(super) struct Style {
    colour: bool,
    terminal: bool,
    /// Times in UTC (`--utc`) rather than the local zone.
    pub(super) utc: bool,
}

impl Style {
    pub(super) fn detect() -> Self {
        let terminal = std::io::stdout().is_terminal();
        Self {
            colour: super::shell::colour(terminal),
            terminal,
            utc: false,
        }
    }

    /// Rendered text that follows a prefix `used` columns wide, broken to
    /// the terminal's width (asked each time: it may have been resized)
    /// so that no screen line starts with what a peer wrote.
    pub(super) fn fit(&self, rendered: String, used: usize) -> String {
        match terminal_size::terminal_size() {
            Some((terminal_size::Width(w), _)) if self.terminal => {
                wrap(&rendered, used, usize::from(w))
            }
            _ => rendered,
        }
    }

    /// A stored time as shown: local (or UTC with `--utc`), to the minute.
    pub(super) fn time(&self, stored: &str) -> String {
        if self.utc {
            DateTime::parse_from_rfc3339(stored)
                .map(|t| t.with_timezone(&Utc).format("%Y-%m-%d %H:%M").to_string())
                .unwrap_or_else(|_| untrusted_inline(stored))
        } else {
            local_time(stored)
        }
    }

    pub(super) fn paint(&self, code: &str, text: &str) -> String {
        if self.colour {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_owned()
        }
    }
}

/// The columns a line's short id takes, with the space after it.
const ID_COLUMNS: usize = SHORT_ID_LEN + 1;

/// A message's short id, as `delete` and `outbox` take it, in git's
/// yellow when colouring.
fn id_mark(m: &Message, style: &Style) -> String {
    style.paint("33", &m.msg_id.short())
}

/// `[2026-11-25 20:32] you → bob ✓✓: hello` or `[...] bob: hi`; the body
/// and name made safe for the terminal, a body's later lines marked.
pub(super) fn line(m: &Message, style: &Style) -> String {
    line_at(m, style, 0)
}

/// [`line`] printed after `indent` columns of the caller's own.
fn line_at(m: &Message, style: &Style, indent: usize) -> String {
    let time = format!("[{}]", style.time(&m.created_at));
    let peer = peer_label(m);
    let (head, painted) = match m.direction {
        Direction::Out => {
            let text = if is_cancelled(m) {
                "✗ cancelled"
            } else {
                m.status.mark()
            };
            let mark = match m.status {
                Status::Failed => style.paint("31", text),
                _ => text.to_owned(),
            };
            (
                format!("{time} you → {peer} {text}: "),
                format!("{} you → {peer} {mark}: ", style.paint("2", &time)),
            )
        }
        Direction::In => (
            format!("{time} {peer}: "),
            format!("{} {}: ", style.paint("2", &time), style.paint("1", &peer)),
        ),
    };
    let body = style.fit(untrusted(&m.body), indent + head.width());
    format!("{painted}{body}")
}

/// `bob  [2026-11-25 20:32] you: a secret plan` with the matches marked.
pub(super) fn hit_line(hit: &Hit, style: &Style) -> String {
    hit_line_at(hit, style, 0)
}

/// [`hit_line`] printed after `indent` columns of the caller's own.
fn hit_line_at(hit: &Hit, style: &Style, indent: usize) -> String {
    let m = &hit.message;
    let who = match m.direction {
        Direction::Out => format!("you {}", m.status.mark()).trim_end().to_owned(),
        Direction::In => peer_label(m),
    };
    let (peer, time) = (peer_label(m), format!("[{}]", style.time(&m.created_at)));
    let head = format!("{peer}  {time} {who}: ");
    let snippet = style.fit(marked_snippet(&hit.snippet, style), indent + head.width());
    format!(
        "{}  {} {who}: {snippet}",
        style.paint("1", &peer),
        style.paint("2", &time),
    )
}

/// The snippet made safe for the terminal, its matches highlighted (in
/// colour) or unmarked: the markers are control characters, so the text
/// between them is rendered piece by piece.
fn marked_snippet(snippet: &str, style: &Style) -> String {
    let mut out = String::with_capacity(snippet.len());
    let mut rest = snippet;
    while let Some(at) = rest.find([MATCH_START, MATCH_END]) {
        out.push_str(&untrusted(&rest[..at]));
        if style.colour {
            let start = rest[at..].starts_with(MATCH_START);
            out.push_str(if start { "\x1b[1;33m" } else { "\x1b[0m" });
        }
        // Both markers are one byte long.
        rest = &rest[at + 1..];
    }
    out.push_str(&untrusted(rest));
    out
}

fn plain(snippet: &str) -> String {
    snippet.replace([MATCH_START, MATCH_END], "")
}

/// The contact's name (made safe for the terminal), or "unknown" with the
/// key's fingerprint.
pub(super) fn peer_label(m: &Message) -> String {
    match &m.contact {
        Some(name) => untrusted_inline(name),
        None => match PublicKey::parse(&m.peer_key) {
            Ok(key) => format!("unknown ({})", key.fingerprint()),
            Err(_) => "unknown".to_owned(),
        },
    }
}

pub(super) fn local_time(stored: &str) -> String {
    DateTime::parse_from_rfc3339(stored)
        .map(|t| t.with_timezone(&Local).format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|_| untrusted_inline(stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snippets_are_escaped_between_their_match_markers() {
        let snippet = format!("\u{1b}[2J{MATCH_START}plan{MATCH_END}\nnext");
        let plain = Style {
            colour: false,
            terminal: false,
            utc: false,
        };
        assert_eq!(marked_snippet(&snippet, &plain), "^[[2Jplan\n  │ next");
        let colour = Style {
            colour: true,
            terminal: false,
            utc: false,
        };
        assert_eq!(
            marked_snippet(&snippet, &colour),
            "^[[2J\u{1b}[1;33mplan\u{1b}[0m\n  │ next"
        );
    }
}

//! `inbox` (and `chat` with no contact): every conversation, newest first,
//! with its unread count and its last message.

use anyhow::Result;
use clap::Args;
use serde_json::json;
use unicode_width::UnicodeWidthStr;

use super::history::{local_time, Style};
use super::{print_json, Context};
use crate::render::untrusted_inline;
use crate::store::{Conversation, Direction};

/// Arguments of `inbox`.
#[derive(Debug, Default, Args)]
pub struct InboxArgs {
    /// Print the conversations as JSON.
    #[arg(long)]
    json: bool,
}

/// The conversation's name: the contact's (made safe for the terminal) or
/// "unknown" with the key's fingerprint.
fn name(c: &Conversation) -> String {
    match &c.last.contact {
        Some(name) => untrusted_inline(name),
        None => format!("unknown ({})", c.peer.fingerprint()),
    }
}

fn conversation_json(c: &Conversation) -> serde_json::Value {
    json!({
        "contact": c.last.contact,
        "public_key": c.peer.to_base64(),
        "fingerprint": c.peer.fingerprint(),
        "unread": c.unread,
        "last_message_at": c.last.created_at,
        "last_message": {
            "id": c.last.msg_id.short(),
            "msg_id": c.last.msg_id,
            "direction": c.last.direction,
            "status": c.last.status,
            "body": c.last.body,
        },
    })
}

/// Lists the conversations.
pub fn inbox(ctx: &Context, args: InboxArgs) -> Result<()> {
    let store = ctx.open_store()?;
    let all = store.conversations()?;
    if args.json {
        return Ok(print_json(&all.iter().map(conversation_json).collect())?);
    }
    if all.is_empty() {
        return Ok(outln!(
            "No conversations yet. Start one with: chat-p2p chat NAME"
        )?);
    }
    let style = Style::detect();
    let names: Vec<String> = all.iter().map(name).collect();
    let width = names
        .iter()
        .map(|n| n.width())
        .max()
        .unwrap_or(0)
        .max("CONVERSATION".len());
    let mut out = super::out::stdout();
    writeln!(
        out,
        "CONVERSATION{}  UNREAD  LAST              MESSAGE",
        " ".repeat(width - "CONVERSATION".len())
    )?;
    for (c, name) in all.iter().zip(&names) {
        let padded = format!("{name}{}", " ".repeat(width - name.width()));
        let unread = if c.unread > 0 {
            style.paint("1", &format!("{:>6}", c.unread))
        } else {
            format!("{:>6}", "")
        };
        let who = match c.last.direction {
            Direction::Out => "you".to_owned(),
            Direction::In => name.clone(),
        };
        let padded = if c.unread > 0 {
            style.paint("1", &padded)
        } else {
            padded
        };
        writeln!(
            out,
            "{padded}  {unread}  {:16}  {who}: {}",
            local_time(&c.last.created_at),
            super::chat::excerpt(&c.last.body)
        )?;
    }
    Ok(())
}

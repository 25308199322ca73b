//! `verify`: the safety code to compare with a contact, and the record
//! that you did; and the loud warning every command gives when the key
//! behind a verified name has changed.

use anyhow::Result;
use clap::Args;
use serde_json::json;

use super::out::AlreadyDone;
use super::{print_json, shell_quote, Context};
use crate::render::untrusted_inline;
use crate::safety::SafetyCode;
use crate::store::{Contact, Store, Verification};

/// Arguments of `verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "Both of you run 'chat-p2p verify' with the other's name and compare \
    the words (or the digits) in person or on a call: the code is made from both public keys, \
    so it is the same on both sides only if each has the other's real key."
)]
pub struct VerifyArgs {
    /// The contact whose key to check.
    name: String,
    /// Record that you compared the code with them and it matched.
    #[arg(long, conflicts_with = "reset")]
    confirm: bool,
    /// Forget that the contact was verified (and stop a key-change warning).
    #[arg(long)]
    reset: bool,
    /// Print the code and the verified state as JSON.
    #[arg(long)]
    json: bool,
}

/// A short word for a contact's state, for lists and the chat header.
pub(super) fn mark(v: &Verification) -> &'static str {
    match v {
        Verification::Verified { .. } => "verified",
        Verification::Unverified => "not verified",
        Verification::KeyChanged { .. } => "KEY CHANGED",
    }
}

/// `contact`'s state; says loudly on stderr when its key is not the one
/// that was verified under its name. Every command that touches a contact
/// by name calls this.
pub(super) fn check(store: &Store, contact: &Contact) -> Result<Verification> {
    let state = store.verification(contact)?;
    if let Verification::KeyChanged {
        verified_key,
        verified_at,
    } = &state
    {
        let name = untrusted_inline(&contact.name);
        let quoted = untrusted_inline(&shell_quote(&contact.name));
        let old = crate::identity::PublicKey::parse(verified_key)
            .map(|k| k.fingerprint())
            .unwrap_or_else(|_| untrusted_inline(verified_key));
        errln!(
            "WARNING: THE KEY OF '{name}' HAS CHANGED since you verified it on {at}.\n\
             \x20 verified key: {old}\n\
             \x20 key now:      {new}\n\
             '{name}' is NOT verified any more: anyone could have saved this name with \
             their own key.\n\
             Compare safety codes again ('chat-p2p verify {quoted}', in person or on a call), \
             then run 'chat-p2p verify {quoted} --confirm' if they match, or \
             'chat-p2p verify {quoted} --reset' to stop this warning.",
            at = super::history::local_time(verified_at),
            new = contact.key.fingerprint(),
        );
    }
    Ok(state)
}

/// Shows the safety code, or records or forgets the verification.
pub fn verify(ctx: &Context, args: VerifyArgs) -> Result<()> {
    let mut store = ctx.open_store()?;
    let own = store.own_public_key()?.ok_or_else(|| ctx.no_identity())?;
    let contact = store.contact(&args.name)?;
    let before = check(&store, &contact)?;
    let code = SafetyCode::new(&own, &contact.key);
    let name = untrusted_inline(&contact.name);
    // The command to type, for this profile: 'chat-p2p --profile x verify bob'.
    let command = format!(
        "{} verify {}",
        ctx.cli_prefix(),
        untrusted_inline(&shell_quote(&contact.name))
    );
    if args.confirm {
        store.confirm_verified(&contact)?;
    } else if args.reset {
        store.reset_verified(&contact)?;
    }
    let now = store.verification(&contact)?;
    if args.json {
        let (verified_at, changed) = match &now {
            Verification::Verified { at } => (Some(at.as_str()), false),
            Verification::Unverified => (None, false),
            Verification::KeyChanged { .. } => (None, true),
        };
        let printed = print_json(&json!({
            "name": contact.name,
            "public_key": contact.key.to_base64(),
            "fingerprint": contact.key.fingerprint(),
            "words": code.words(),
            "digits": code.digits(),
            "verified": now.is_verified(),
            "verified_at": verified_at,
            "key_changed": changed,
        }));
        return if args.confirm || args.reset {
            printed.done("the verification was recorded")
        } else {
            Ok(printed?)
        };
    }
    if args.confirm {
        return match before {
            Verification::Verified { at } => outln!(
                "'{name}' was already verified (since {}).",
                super::history::local_time(&at)
            ),
            _ => outln!(
                "Marked '{name}' as verified (key {}). '{command} --reset' undoes it.",
                contact.key.fingerprint()
            ),
        }
        .done("the verification was recorded");
    }
    if args.reset {
        return match before {
            Verification::Unverified => outln!("'{name}' was not marked as verified."),
            _ => outln!("'{name}' is no longer marked as verified."),
        }
        .done("the verification was forgotten");
    }
    print_code(&code, &name, &command, &now)?;
    Ok(())
}

/// The code, as words and as digits, and what to do with it.
fn print_code(
    code: &SafetyCode,
    name: &str,
    command: &str,
    state: &Verification,
) -> Result<(), super::out::StdoutError> {
    let mut out = super::out::stdout();
    writeln!(out, "Safety code for you and '{name}':")?;
    writeln!(out)?;
    for row in code.words().chunks(4) {
        let padded: Vec<String> = row.iter().map(|w| format!("{w:<8}")).collect();
        writeln!(out, "    {}", padded.join("  ").trim_end())?;
    }
    writeln!(out)?;
    for row in code.digits().chunks(4) {
        writeln!(out, "    {}", row.join(" "))?;
    }
    writeln!(out)?;
    match state {
        Verification::Verified { at } => writeln!(
            out,
            "Verified on {}. ('{command} --reset' forgets it.)",
            super::history::local_time(at)
        ),
        _ => writeln!(
            out,
            "Not verified. Compare these words (or the digits) with '{name}', in person or\n\
             on a call: they run 'chat-p2p verify' with your name and must see the same code.\n\
             If it matches: {command} --confirm"
        ),
    }?;
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_say_what_the_state_is() {
        assert_eq!(mark(&Verification::Unverified), "not verified");
        assert_eq!(
            mark(&Verification::Verified {
                at: "2026-01-01T00:00:00.000Z".into()
            }),
            "verified"
        );
        assert_eq!(
            mark(&Verification::KeyChanged {
                verified_key: String::new(),
                verified_at: String::new()
            }),
            "KEY CHANGED"
        );
    }
}

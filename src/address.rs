//! A person's address: their public key and the home router where they
//! receive, in one string to copy, paste, type into a shell or put in a
//! QR code.
//!
//! The form is `chat-p2p:KEY@ROUTER`, for example
//!
//! ```text
//! chat-p2p:q2Xk0s4oU0yB3wT1+f6k8u0rZrj3E1x3vP2l1mZxqk0=@wss://chat.example.org
//! ```
//!
//! - `KEY` is the standard base64 public key, as `whoami` shows it (base64
//!   has no `@`, so the first `@` ends it);
//! - `ROUTER` is the home router's `ws://` or `wss://` URL, its default
//!   `/ws` path left out. It may carry no credentials, no query and no
//!   fragment: `?`, `&` and `#` do not survive a shell unquoted.
//!
//! Every character is printable ASCII with none a POSIX shell treats
//! specially in the middle of a word, so the address needs no quoting; a
//! QR code stores it in byte mode. A bare key is an address too: it names
//! no router, which means "the same router as mine".

use std::fmt;

use crate::client::ServerUrl;
use crate::identity::PublicKey;

/// The scheme addresses start with.
pub const SCHEME: &str = "chat-p2p:";

/// The longest address accepted, in bytes: a key (44) and a router URL.
pub const MAX_ADDRESS_LEN: usize = 320;

/// A public key and, unless it is a bare key, the home router where its
/// owner receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// Whose address.
    pub key: PublicKey,
    /// Where they receive; `None` for a bare key.
    pub router: Option<ServerUrl>,
}

/// Why text is not an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// The key part is not a public key.
    #[error("the key in this address is not valid ({0}): copy the whole address again")]
    BadKey(String),
    /// The router part is not an acceptable router URL.
    #[error("the router in this address is not valid: {0}")]
    BadRouter(String),
    /// Something else is wrong with the text.
    #[error("not a chat-p2p address: {0}")]
    Malformed(String),
}

impl Address {
    /// An address for `key` at `router`.
    pub fn new(key: PublicKey, router: Option<ServerUrl>) -> Self {
        Self { key, router }
    }

    /// Parses `chat-p2p:KEY@ROUTER`, `KEY@ROUTER` or a bare `KEY`.
    /// Surrounding white space (a pasted line's newline) is ignored; the
    /// scheme is matched ignoring case (QR readers may upper-case it).
    pub fn parse(text: &str) -> Result<Self, AddressError> {
        let text = text.trim();
        if text.len() > MAX_ADDRESS_LEN {
            return Err(AddressError::Malformed(format!(
                "longer than {MAX_ADDRESS_LEN} bytes"
            )));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(AddressError::Malformed(format!(
                "it contains {}, and an address is plain ASCII with no spaces or control \
                 characters",
                crate::render::untrusted_inline(&format!("{c:?}"))
            )));
        }
        let rest = match text.get(..SCHEME.len()) {
            Some(head) if head.eq_ignore_ascii_case(SCHEME) => &text[SCHEME.len()..],
            _ => text,
        };
        let (key, router) = match rest.split_once('@') {
            Some((key, router)) => (key, Some(router)),
            None => (rest, None),
        };
        let key = PublicKey::parse(key).map_err(|e| AddressError::BadKey(e.to_string()))?;
        let router = match router {
            None => None,
            Some(router) => Some(Self::parse_router(router)?),
        };
        Ok(Self { key, router })
    }

    /// Checks the router part of an address (or a router URL typed for
    /// a contact): a valid router URL with no query.
    pub fn parse_router(text: &str) -> Result<ServerUrl, AddressError> {
        let url = ServerUrl::parse(text).map_err(AddressError::BadRouter)?;
        if url.has_query() {
            return Err(AddressError::BadRouter(format!(
                "'{}' has a query (?...): a router in an address has none",
                crate::render::untrusted_inline(text)
            )));
        }
        // What an address promises: nothing a shell acts on. A URL parser
        // lets `&`, `$`, `;`, quotes and the like through in a host or path.
        if let Some(c) = url
            .as_str()
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "-._~:/%[]".contains(*c)))
        {
            return Err(AddressError::BadRouter(format!(
                "'{}' contains '{c}', which a router address in chat-p2p cannot hold \
                 (letters, digits and - . _ ~ : / % [ ] only)",
                crate::render::untrusted_inline(text)
            )));
        }
        Ok(url)
    }
}

impl fmt::Display for Address {
    /// `chat-p2p:KEY@ROUTER`, or the bare key when no router is known.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.router {
            Some(router) => write!(f, "{SCHEME}{}@{}", self.key.to_base64(), router.short()),
            None => f.write_str(&self.key.to_base64()),
        }
    }
}

impl std::str::FromStr for Address {
    type Err = AddressError;
    fn from_str(text: &str) -> Result<Self, AddressError> {
        Self::parse(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    fn key() -> PublicKey {
        Identity::generate().public_key()
    }

    #[test]
    fn an_address_round_trips_through_its_text() {
        let k = key();
        let router = ServerUrl::parse("wss://Chat.Example.org").unwrap();
        let address = Address::new(k, Some(router.clone()));
        let text = address.to_string();
        assert_eq!(
            text,
            format!("chat-p2p:{}@wss://chat.example.org", k.to_base64())
        );
        assert_eq!(Address::parse(&text).unwrap(), address);
        assert_eq!(
            Address::parse(&format!("  {text}\n")).unwrap(),
            address,
            "a pasted line"
        );
        assert_eq!(
            Address::parse(&text.replace("chat-p2p:", "CHAT-P2P:")).unwrap(),
            address
        );
        let bare = Address::parse(&k.to_base64()).unwrap();
        assert_eq!(bare, Address::new(k, None));
        assert_eq!(bare.to_string(), k.to_base64());
    }

    #[test]
    fn a_router_with_a_port_and_a_path_is_kept() {
        let k = key();
        let text = format!("chat-p2p:{}@ws://127.0.0.1:9000/chat/ws", k.to_base64());
        let address = Address::parse(&text).unwrap();
        assert_eq!(
            address.router.unwrap().as_str(),
            "ws://127.0.0.1:9000/chat/ws"
        );
    }

    #[test]
    fn every_character_survives_a_shell_unquoted() {
        let k = key();
        let text =
            Address::new(k, Some(ServerUrl::parse("wss://a.example:443/x").unwrap())).to_string();
        assert!(
            text.chars()
                .all(|c| c.is_ascii_alphanumeric() || "+/=:@.-_".contains(c)),
            "{text}"
        );
    }

    #[test]
    fn bad_and_malicious_addresses_are_refused() {
        let k = key().to_base64();
        let cases = [
            (format!("chat-p2p:{}@wss://r.example", &k[..20]), "key"),
            ("chat-p2p:@wss://r.example".to_owned(), "key"),
            (format!("chat-p2p:{k}@https://r.example"), "ws:// or wss://"),
            (
                format!("chat-p2p:{k}@wss://user:pw@r.example"),
                "credentials",
            ),
            (format!("chat-p2p:{k}@wss://r.example/ws?x=1"), "query"),
            (format!("chat-p2p:{k}@wss://r.example/ws#frag"), "fragment"),
            (format!("chat-p2p:{k}@wss://r.ex\u{1b}[2Jample"), "control"),
            (
                format!("chat-p2p:{k}@wss://r.example/\u{202e}"),
                "plain ASCII",
            ),
            (format!("chat-p2p:{k}@"), "router"),
            (format!("chat-p2p:{k}@ws://a&"), "'&'"),
            (format!("chat-p2p:{k}@ws://r.example/$(reboot)"), "router"),
            (format!("chat-p2p:{k}@wss://{}", "a".repeat(400)), "longer"),
        ];
        for (text, why) in cases {
            let e = Address::parse(&text).expect_err(&text).to_string();
            assert!(
                e.contains(why),
                "{text:?}: expected '{why}' in the error, got: {e}"
            );
            assert!(!e.contains('\u{1b}'), "the error is safe to print: {e:?}");
        }
    }
}

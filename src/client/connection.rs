//! One authenticated WebSocket session with a router, from the client's
//! side: connect to `/ws?pub=KEY`, answer the challenge, then exchange
//! frames.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use super::ClientError;
use crate::identity::{Identity, PublicKey};
use crate::protocol::{self, Frame, MAX_FRAME_BYTES, SUPPORTED_VERSIONS};
use crate::store::device::Device;

/// The router used when neither `--server` nor `CHAT_SERVER` says otherwise.
pub const DEFAULT_SERVER: &str = "ws://localhost:8080/ws";

/// The longest router URL accepted, in bytes.
pub const MAX_URL_LEN: usize = 256;

/// The most frames taken from the socket into one batch: one transaction
/// (one fsync) and one round of acks for all of them. A quarter of the
/// router's default delivery window, so `sync` can store one batch while
/// it opens the next two (see `super::exchange`). A router with a smaller
/// window just sends smaller batches.
const MAX_BATCH: usize = 1024;

/// The close code a router uses when a newer session of the same key
/// replaced this one.
const REPLACED_CLOSE_CODE: u16 = 4000;

/// The close code a router uses when another device of the identity
/// removed this one (`remove-device`).
const REMOVED_CLOSE_CODE: u16 = 4001;

/// A router's WebSocket address, `ws://` or `wss://`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServerUrl(String);

impl ServerUrl {
    /// Checks that `text` is a `ws://` or `wss://` URL with a host. A URL
    /// with no path (`ws://host:8080` or `ws://host:8080/`) is completed
    /// with `/ws`, where a chat-p2p router serves its sessions: without
    /// it the router can only answer 404. The scheme and host are put in
    /// lower case, so one router has one spelling (contacts are routed by
    /// it). Refused: credentials (`ws://user:pass@host`: a router takes
    /// none, and an address carrying them is a trap), a fragment, white
    /// space or control characters, anything not ASCII, and more than
    /// [`MAX_URL_LEN`] bytes.
    pub fn parse(text: &str) -> Result<Self, String> {
        let shown = crate::render::untrusted_inline(text);
        if text.len() > MAX_URL_LEN {
            return Err(format!(
                "'{}…' is not a router address: longer than {MAX_URL_LEN} bytes",
                crate::render::untrusted_inline(&text.chars().take(40).collect::<String>())
            ));
        }
        if let Some(c) = text.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(format!(
                "'{shown}' is not a router address: it contains {} (a router URL is plain \
                 ASCII with no spaces or control characters)",
                crate::render::untrusted_inline(&format!("{c:?}"))
            ));
        }
        let uri: Uri = text
            .parse()
            .map_err(|e| format!("'{shown}' is not a URL ({e})"))?;
        let scheme = match uri.scheme_str().map(str::to_ascii_lowercase).as_deref() {
            Some("ws") => "ws",
            Some("wss") => "wss",
            _ => {
                return Err(format!(
                    "'{shown}' is not a router address: it must start with ws:// or wss://, \
                     e.g. {DEFAULT_SERVER}"
                ))
            }
        };
        let Some(authority) = uri.authority() else {
            return Err(format!("'{shown}' has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "'{shown}' carries credentials (user:password@): a chat-p2p router takes \
                 none, so an address with them is refused"
            ));
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(format!("'{shown}' has no host"));
        }
        if text.contains('#') {
            return Err(format!(
                "'{shown}' has a fragment (#...): a router address has none"
            ));
        }
        let authority = authority.as_str().to_ascii_lowercase();
        let path = match uri.path() {
            "" | "/" => "/ws",
            path => path,
        };
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        Ok(Self(format!("{scheme}://{authority}{path}{query}")))
    }

    /// The built-in default router, [`DEFAULT_SERVER`].
    pub fn default_router() -> Self {
        Self(DEFAULT_SERVER.to_owned())
    }

    /// The URL as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL as people write it: without the default `/ws` path
    /// (`wss://chat.example.org`), which [`ServerUrl::parse`] puts back.
    /// Only a path of exactly `/ws` is left out: `ws://a//ws` or
    /// `ws://a/chat/ws` shortened would parse back as another URL.
    pub fn short(&self) -> &str {
        match self.0.strip_suffix("/ws") {
            Some(base)
                if base
                    .split_once("://")
                    .is_some_and(|(_, host)| !host.contains('/')) =>
            {
                base
            }
            _ => &self.0,
        }
    }

    /// Whether the URL has a query (`?...`), which addresses do not carry:
    /// `?` and `&` do not survive a shell unquoted.
    pub fn has_query(&self) -> bool {
        self.0.contains('?')
    }

    /// Whether this is a `wss://` (TLS) address.
    pub fn is_tls(&self) -> bool {
        self.0.starts_with("wss://")
    }

    /// The same router with the other scheme (`ws://` for `wss://` and
    /// back), for hints.
    fn other_scheme(&self) -> String {
        match self.0.strip_prefix("wss://") {
            Some(rest) => format!("ws://{rest}"),
            None => format!("wss://{}", self.0.trim_start_matches("ws://")),
        }
    }

    /// This URL with its path replaced by `/ws`, for hints.
    fn with_ws_path(&self) -> String {
        match self.0.parse::<Uri>() {
            Ok(uri) => match (uri.scheme_str(), uri.authority()) {
                (Some(scheme), Some(authority)) => format!("{scheme}://{authority}/ws"),
                _ => self.0.clone(),
            },
            Err(_) => self.0.clone(),
        }
    }

    /// Whether `text` looks like a router address rather than a name.
    pub fn looks_like_url(text: &str) -> bool {
        text.starts_with("ws://") || text.starts_with("wss://")
    }

    /// The URL to open for `key`: `?pub=` with the key percent-encoded.
    fn for_key(&self, key: &PublicKey) -> String {
        let encoded = percent_encoding::utf8_percent_encode(
            &key.to_base64(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let sep = if self.0.contains('?') { '&' } else { '?' };
        format!("{}{sep}pub={encoded}", self.0)
    }
}

impl FromStr for ServerUrl {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        Self::parse(text)
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The close code a router uses when a frame was far over its limit.
const TOO_LARGE_CLOSE_CODE: u16 = 1009;

/// An authenticated session with a router.
pub struct Connection {
    ws: Socket,
    /// The router's clock when it accepted the upgrade (its HTTP `Date`
    /// header, to the second), if it sent one.
    router_date: Option<std::time::SystemTime>,
    /// The router's frame limit, if its `ready` announced one.
    max_frame_bytes: Option<usize>,
    /// How the session ended, once known: kept so that a close read while
    /// taking a batch is reported by the next call, not lost.
    ended: Option<ClientError>,
    /// The router's close frame (code, reason), once read: a send after it
    /// reports why the router closed, not "sending after closing".
    closed: Option<(u16, String)>,
}

/// Connects to `server` and authenticates as `identity`'s `device`, all
/// within `timeout`.
pub async fn connect(
    server: &ServerUrl,
    identity: &Identity,
    device: &Device,
    timeout: Duration,
) -> Result<Connection, ClientError> {
    tokio::time::timeout(timeout, connect_inner(server, identity, device))
        .await
        .map_err(|_| ClientError::Unreachable {
            server: server.to_string(),
            reason: format!(
                "no answer within {}s{}",
                timeout.as_secs_f32(),
                tls_hint(server)
            ),
        })?
}

/// What to add to a failure before any HTTP answer on a `wss://` URL: a
/// chat-p2p router speaks plain WebSocket unless a TLS proxy stands in
/// front of it, and then TLS fails or hangs.
fn tls_hint(server: &ServerUrl) -> String {
    if server.is_tls() {
        format!(
            " (a chat-p2p router speaks plain ws:// unless a TLS proxy is in front of it: \
             if this one has none, use {})",
            server.other_scheme()
        )
    } else {
        String::new()
    }
}

/// Why the WebSocket upgrade failed, with a hint where the cause is a
/// likely mistake in the URL.
fn upgrade_error(server: &ServerUrl, e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as WsError;
    let reason = match &e {
        WsError::Http(response) if response.status().as_u16() == 404 => format!(
            "it answered 404 Not Found: a chat-p2p router serves /ws, try {}",
            server.with_ws_path()
        ),
        WsError::Http(response) => format!("it answered HTTP {}", response.status()),
        WsError::Tls(_) | WsError::Io(_) | WsError::ConnectionClosed
            if server.is_tls() && !is_refused(&e) =>
        {
            format!("{e}{}", tls_hint(server))
        }
        WsError::HttpFormat(_) | WsError::Protocol(_) if !server.is_tls() => format!(
            "{e} (the server's answer is not HTTP: if it expects TLS, use {})",
            server.other_scheme()
        ),
        _ => e.to_string(),
    };
    ClientError::Unreachable {
        server: server.to_string(),
        reason,
    }
}

/// Whether nothing listens there at all (no hint about TLS helps then).
fn is_refused(e: &tokio_tungstenite::tungstenite::Error) -> bool {
    matches!(e, tokio_tungstenite::tungstenite::Error::Io(io)
        if matches!(io.kind(), std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound))
}

async fn connect_inner(
    server: &ServerUrl,
    identity: &Identity,
    device: &Device,
) -> Result<Connection, ClientError> {
    let mut config = WebSocketConfig::default();
    // Twice the frame limit: a frame the router accepts always fits.
    config.max_message_size = Some(2 * MAX_FRAME_BYTES);
    config.max_frame_size = Some(2 * MAX_FRAME_BYTES);
    let url = server.for_key(&identity.public_key());
    let (ws, response) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| upgrade_error(server, e))?;
    let router_date = response
        .headers()
        .get("date")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok());
    let mut conn = Connection {
        ws,
        router_date,
        max_frame_bytes: None,
        ended: None,
        closed: None,
    };
    conn.authenticate(identity, device, server).await?;
    Ok(conn)
}

impl Connection {
    async fn authenticate(
        &mut self,
        identity: &Identity,
        device: &Device,
        server: &ServerUrl,
    ) -> Result<(), ClientError> {
        let challenge = match self.next_frame().await? {
            Some(Frame::Challenge(c)) => c,
            Some(Frame::Error(e)) => {
                return Err(ClientError::Refused {
                    code: e.code,
                    message: e.message,
                })
            }
            other => return Err(handshake(format!("expected a challenge, got {other:?}"))),
        };
        let version = SUPPORTED_VERSIONS
            .iter()
            .copied()
            .filter(|v| challenge.versions.contains(v))
            .max()
            .ok_or_else(|| {
                handshake(format!(
                    "the router speaks protocol versions {:?}, this client {:?}: upgrade one of them",
                    challenge.versions, SUPPORTED_VERSIONS
                ))
            })?;
        // The signature names the router as dialed, so another router
        // cannot relay this answer to open a session there.
        let router = protocol::router_name(&server.0)
            .map_err(|e| handshake(format!("cannot sign in: {e}")))?;
        let who = protocol::AuthFor {
            device: &device.id,
            name: &device.name,
            router: &router,
        };
        let auth = protocol::sign_challenge(identity, version, &challenge.nonce, who);
        self.send(&[Frame::Auth(auth)]).await?;
        match self.next_frame().await? {
            Some(Frame::Ready(ready)) => {
                self.max_frame_bytes = ready.max_frame_bytes;
                Ok(())
            }
            Some(Frame::Error(e)) if e.code == protocol::ErrorCode::DeviceRemoved => {
                Err(ClientError::DeviceRemoved)
            }
            Some(Frame::Error(e)) => Err(ClientError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Err(handshake(format!("expected ready, got {other:?}"))),
        }
    }

    /// The router's clock at the upgrade, from its HTTP `Date` header (one
    /// second resolution), for a clock-skew check.
    pub fn router_date(&self) -> Option<std::time::SystemTime> {
        self.router_date
    }

    /// The largest frame the router accepts, if it said so in `ready`.
    pub fn max_frame_bytes(&self) -> Option<usize> {
        self.max_frame_bytes
    }

    /// Sends `frames` and flushes them.
    pub async fn send(&mut self, frames: &[Frame]) -> Result<(), ClientError> {
        if frames.is_empty() {
            return Ok(());
        }
        if let Some(ended) = self.ended.take() {
            // The router already closed: say why, not "sending after closing".
            return Err(ended);
        }
        let mut result = Ok(());
        for frame in frames {
            result = self.ws.feed(Message::text(protocol::to_text(frame))).await;
            if result.is_err() {
                break;
            }
        }
        if result.is_ok() {
            result = self.ws.flush().await;
        }
        result.map_err(|e| match &self.closed {
            Some((code, reason)) => close_error(*code, reason.clone()),
            None => lost(e),
        })
    }

    /// The next frame, or `None` when the router closed the session.
    /// Frames this client cannot parse (from a newer router, say) are
    /// skipped.
    async fn next_frame(&mut self) -> Result<Option<Frame>, ClientError> {
        if let Some(ended) = self.ended.take() {
            return Err(ended);
        }
        loop {
            let Some(msg) = self.ws.next().await else {
                return Ok(None);
            };
            match msg.map_err(lost)? {
                Message::Text(text) => match protocol::parse_with_limit(&text, 2 * MAX_FRAME_BYTES)
                {
                    Ok(frame) => return Ok(Some(frame)),
                    Err(e) => tracing::warn!(error = %e, "ignoring a frame from the router"),
                },
                Message::Close(Some(close)) => {
                    let (code, reason) = (u16::from(close.code), close.reason.to_string());
                    self.closed = Some((code, reason.clone()));
                    return Err(close_error(code, reason));
                }
                Message::Close(None) => {
                    return Err(ClientError::Closed("no reason given".to_owned()))
                }
                _ => {}
            }
        }
    }

    /// Waits for at least one frame, then takes whatever else is already
    /// there (up to a batch), so a backlog is stored in few transactions.
    /// `None` when the router closed the session.
    pub async fn recv_batch(&mut self) -> Result<Option<Vec<Frame>>, ClientError> {
        let Some(first) = self.next_frame().await? else {
            return Ok(None);
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match futures_util::FutureExt::now_or_never(self.next_frame()) {
                Some(Ok(Some(frame))) => batch.push(frame),
                Some(Ok(None)) | None => break,
                Some(Err(e)) => {
                    // Process what arrived; the error shows on the next
                    // call (or send).
                    self.ended = Some(e);
                    break;
                }
            }
        }
        Ok(Some(batch))
    }

    /// Closes the session politely, waiting briefly for the router's answer.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
    }
}

/// What a close frame from the router means.
fn close_error(code: u16, reason: String) -> ClientError {
    match code {
        REPLACED_CLOSE_CODE => ClientError::Replaced,
        REMOVED_CLOSE_CODE => ClientError::DeviceRemoved,
        TOO_LARGE_CLOSE_CODE => ClientError::ClosedForSize(reason),
        _ => ClientError::Closed(format!("{reason} ({code})")),
    }
}

fn handshake(detail: String) -> ClientError {
    ClientError::Handshake(detail)
}

fn lost(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    ClientError::Lost(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_short_form_leaves_out_only_a_path_of_exactly_ws_and_parses_back() {
        for (url, short) in [
            ("wss://chat.example.org/ws", "wss://chat.example.org"),
            ("ws://h:1/ws", "ws://h:1"),
            // Found by the address round-trip property test.
            ("ws://A//ws", "ws://a//ws"),
            ("ws://h/chat/ws", "ws://h/chat/ws"),
            ("ws://h/other", "ws://h/other"),
        ] {
            let parsed = ServerUrl::parse(url).unwrap();
            assert_eq!(parsed.short(), short, "{url}");
            assert_eq!(ServerUrl::parse(parsed.short()).unwrap(), parsed, "{url}");
        }
    }

    #[test]
    fn accepts_ws_and_wss_urls_only() {
        assert!(ServerUrl::parse("ws://localhost:8080/ws").is_ok());
        assert!(ServerUrl::parse("wss://chat.example.org/ws").is_ok());
        for bad in ["http://x/ws", "localhost:8080", "bob", "ws://", ""] {
            assert!(ServerUrl::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn a_url_without_a_path_is_completed_with_ws() {
        let url = |s: &str| ServerUrl::parse(s).unwrap().to_string();
        assert_eq!(url("ws://localhost:8080"), "ws://localhost:8080/ws");
        assert_eq!(url("wss://chat.example.org/"), "wss://chat.example.org/ws");
        assert_eq!(url("ws://h:1?x=1"), "ws://h:1/ws?x=1");
        assert_eq!(url("wss://h/chat/ws"), "wss://h/chat/ws");
        let other = ServerUrl::parse("ws://h:1/other").unwrap();
        assert_eq!(other.with_ws_path(), "ws://h:1/ws");
        assert_eq!(other.other_scheme(), "wss://h:1/other");
    }

    #[test]
    fn the_key_is_percent_encoded_into_the_query() {
        let key = Identity::from_secret_bytes(&[1; 32]).public_key();
        let url = ServerUrl::parse("ws://h:1/ws").unwrap().for_key(&key);
        assert!(url.starts_with("ws://h:1/ws?pub="));
        assert!(!url["ws://h:1/ws?pub=".len()..].contains(['+', '/', '=']));
        let url = ServerUrl::parse("ws://h:1/ws?x=1").unwrap().for_key(&key);
        assert!(url.contains("?x=1&pub="));
    }
}

//! The little HTTP a router speaks before the WebSocket upgrade: reads the
//! request head itself, so `GET /healthz` (which carries no upgrade
//! headers) can be answered, and `/ws?pub=...` can be checked before any
//! WebSocket state is allocated.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

use crate::identity::PublicKey;

/// Largest request head accepted.
const MAX_HEAD: usize = 8 * 1024;

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `GET /healthz`.
    Health,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// `GET /ws?pub=KEY`: a WebSocket session for that key.
    Session(PublicKey),
    /// `/ws` without a usable key: the reason.
    BadKey(String),
    /// Any other path or method.
    NotFound,
}

/// Reads the request head (up to the blank line) within `timeout`.
pub async fn read_head(stream: &mut TcpStream, timeout: Duration) -> io::Result<Vec<u8>> {
    let read = async {
        let mut head = Vec::with_capacity(512);
        let mut buf = [0u8; 1024];
        loop {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
            }
            head.extend_from_slice(&buf[..n]);
            if head.windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(head);
            }
            if head.len() > MAX_HEAD {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head too large"));
            }
        }
    };
    tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no request"))?
}

/// Classifies a request from its head.
pub fn route(head: &[u8]) -> Request {
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (Some("GET"), Some(target)) = (parts.next(), parts.next()) else {
        return Request::NotFound;
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    match path {
        "/healthz" => Request::Health,
        "/metrics" => Request::Metrics,
        "/ws" => session_key(query),
        _ => Request::NotFound,
    }
}

fn session_key(query: &str) -> Request {
    let Some(value) = query.split('&').find_map(|pair| pair.strip_prefix("pub=")) else {
        return Request::BadKey("missing ?pub=<percent-encoded base64 key>".to_owned());
    };
    let Ok(text) = percent_decode_str(value).decode_utf8() else {
        return Request::BadKey("the key is not percent-encoded UTF-8".to_owned());
    };
    match PublicKey::parse(&text) {
        Ok(key) => Request::Session(key),
        Err(e) => Request::BadKey(e.to_string()),
    }
}

/// A stream that first replays the request head already read from it (for
/// the WebSocket handshake), then drops that buffer and reads on.
#[derive(Debug)]
pub struct Replay<S> {
    head: Option<(Vec<u8>, usize)>,
    inner: S,
}

impl<S> Replay<S> {
    /// Replays `head`, then reads `inner`.
    pub fn new(head: Vec<u8>, inner: S) -> Self {
        Self {
            head: Some((head, 0)),
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((head, pos)) = &mut self.head {
            let rest = head.get(*pos..).unwrap_or_default();
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            *pos += n;
            if *pos >= head.len() {
                // Every idle session would otherwise keep its request head.
                self.head = None;
            }
            if n > 0 {
                return Poll::Ready(Ok(()));
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Writes a small plain-text response and closes.
pub async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    respond_typed(stream, status, "text/plain; charset=utf-8", body).await
}

/// The Prometheus text exposition format's content type.
pub const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Writes a response of `content_type` and closes.
pub async fn respond_typed(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    let text = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(text.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

    #[tokio::test]
    async fn replay_gives_the_head_then_the_stream() {
        let (mut client, server) = tokio::io::duplex(64);
        client.write_all(b" world").await.unwrap();
        drop(client);
        let mut replay = Replay::new(b"hello".to_vec(), server);
        let mut all = String::new();
        replay.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
        assert!(replay.head.is_none(), "the head buffer is freed");
    }

    #[test]
    fn routes_requests() {
        assert_eq!(route(b"GET /healthz HTTP/1.1\r\n\r\n"), Request::Health);
        assert_eq!(route(b"POST /healthz HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Request::Metrics);
        assert_eq!(route(b"GET /other HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(route(b"\xff\xfe"), Request::NotFound);
        assert!(matches!(
            route(b"GET /ws HTTP/1.1\r\n\r\n"),
            Request::BadKey(_)
        ));
        assert!(matches!(
            route(b"GET /ws?pub=AAAA HTTP/1.1\r\n\r\n"),
            Request::BadKey(_)
        ));
        let key = Identity::generate().public_key();
        let enc = percent_encoding::utf8_percent_encode(
            &key.to_base64(),
            percent_encoding::NON_ALPHANUMERIC,
        )
        .to_string();
        let head = format!("GET /ws?v=1&pub={enc} HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(route(head.as_bytes()), Request::Session(key));
    }
}

//! A session's WebSocket with the router behind it: writing frames,
//! refusing and closing with reasons, and the handshake that opens a
//! session (challenge, verify the answer against the router's names,
//! register the device).

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use uuid::Uuid;

use super::super::backend::{Backend, Registered};
use super::super::hub::Registration;
use super::super::state::{Handshake, SignedIn};
use super::super::Shared;
use super::{close_for, log_id, Exit, CLOSE_BAD_UTF8, HANDOFF, QUEUE_DOWN};
use crate::identity::PublicKey;
use crate::protocol::{self, ErrorCode, ErrorFrame, Frame, Ready};

/// A WebSocket plus the router: writing frames and closing with reasons.
pub(super) struct Conn<'a, B, S> {
    pub(super) ws: WebSocketStream<S>,
    pub(super) shared: &'a Shared<B>,
}

impl<B: Backend, S: AsyncRead + AsyncWrite + Unpin> Conn<'_, B, S> {
    /// Queues a frame for the next flush.
    pub(super) async fn feed(&mut self, frame: &Frame) -> Result<(), Exit> {
        let text = protocol::to_text(frame);
        self.feed_text(text).await
    }

    pub(super) async fn feed_text(&mut self, text: String) -> Result<(), Exit> {
        self.shared.metrics.frame_out();
        let limit = self.shared.config.write_timeout;
        match tokio::time::timeout(limit, self.ws.feed(Message::text(text))).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Closed),
            Err(_) => Err(Exit::TooSlow),
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), Exit> {
        let limit = self.shared.config.write_timeout;
        match tokio::time::timeout(limit, self.ws.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Exit::Closed),
            Err(_) => Err(Exit::TooSlow),
        }
    }

    pub(super) async fn send(&mut self, frame: &Frame) -> Result<(), Exit> {
        self.feed(frame).await?;
        self.flush().await
    }

    pub(super) async fn error(
        &mut self,
        id: Option<Uuid>,
        code: ErrorCode,
        message: &str,
    ) -> Result<(), Exit> {
        self.shared.metrics.error(code);
        self.feed(&error_frame(id, code, message)).await
    }

    /// Sends an error, then closes with `close` and the message as reason.
    pub(super) async fn refuse(&mut self, code: ErrorCode, message: &str, close: CloseCode) {
        self.shared.metrics.error(code);
        let _ = self.send(&error_frame(None, code, message)).await;
        self.close(close, code.as_str()).await;
    }

    /// Refuses a session because the queue cannot be reached: `internal`,
    /// then close 1013 (try again later).
    pub(super) async fn refuse_unavailable(&mut self) {
        self.shared.metrics.error(ErrorCode::Internal);
        let _ = self
            .send(&error_frame(None, ErrorCode::Internal, QUEUE_DOWN))
            .await;
        if let Some((code, reason)) = close_for(&Exit::Unavailable) {
            self.close(code, reason).await;
        }
    }

    pub(super) async fn close(&mut self, code: CloseCode, reason: &str) {
        let frame = CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        let limit = self.shared.config.write_timeout;
        let _ = tokio::time::timeout(limit, self.ws.close(Some(frame))).await;
    }

    /// Challenge, verify the answer, register. `None` when refused.
    pub(super) async fn authenticate(
        &mut self,
        key: PublicKey,
    ) -> Option<(Registration, SignedIn)> {
        let handshake = Handshake::new(key);
        self.send(&Frame::Challenge(handshake.challenge()))
            .await
            .ok()?;
        let limit = self.shared.config.auth_timeout;
        let mut stop = self.shared.stop.clone();
        let answer = tokio::select! {
            answer = tokio::time::timeout(limit, self.first_frame()) => answer,
            _ = stop.changed() => {
                self.close(CloseCode::Away, "router shutting down").await;
                return None;
            }
        };
        let frame = match answer {
            Err(_) => {
                let msg = "no auth answer in time: sign the challenge and send 'auth'";
                self.refuse(ErrorCode::AuthTimeout, msg, CloseCode::Policy)
                    .await;
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Err(e))) => {
                let msg = format!("the first frame must be 'auth': {e}");
                self.refuse(ErrorCode::NotAuthenticated, &msg, CloseCode::Policy)
                    .await;
                return None;
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let signed_in = match handshake.answer(&frame, &self.shared.names) {
            Ok(signed_in) => signed_in,
            Err((code, msg)) => {
                self.refuse_auth(&key, code, &msg).await;
                return None;
            }
        };
        let registration = self.register(key, &signed_in).await?;
        let ready = Frame::Ready(Ready {
            version: signed_in.version,
            key,
            max_frame_bytes: Some(self.shared.config.max_frame_bytes),
        });
        self.send(&ready).await.ok()?;
        Some((registration, signed_in))
    }

    /// Registers the device (none for a control session) with the queue,
    /// claims its live session there, and registers it with the hub;
    /// `None` when refused.
    pub(super) async fn register(
        &mut self,
        key: PublicKey,
        who: &SignedIn,
    ) -> Option<Registration> {
        if who.is_control() {
            return Some(Registration::detached());
        }
        let registered = self
            .shared
            .backend
            .register(key, who.device, who.name.clone())
            .await;
        let (code, msg) = match registered {
            Ok(Registered::Known | Registered::First | Registered::Added) => {
                self.shared.gate.signed_in(&key);
                return self.claim(key, who.device).await;
            }
            Ok(Registered::Removed) => (
                ErrorCode::DeviceRemoved,
                "this device was removed from its identity (devices remove); it gets nothing \
                 from this router any more",
            ),
            Ok(Registered::TooMany) => (
                ErrorCode::TooManyDevices,
                "this key has as many devices as the router allows; remove one first \
                 (devices remove)",
            ),
            Err(e) => {
                tracing::error!(error = %e, "registering a device failed");
                self.refuse_unavailable().await;
                return None;
            }
        };
        self.refuse_auth(&key, code, msg).await;
        None
    }

    /// Claims the device's live session in the queue (ending an older one
    /// on another router) and registers it with the hub (ending an older
    /// one here); `None` when the queue cannot be reached.
    async fn claim(&mut self, key: PublicKey, device: Uuid) -> Option<Registration> {
        match self.shared.backend.claim(key, device).await {
            Ok(claim) => Some(self.shared.hub.register(key, device, claim, HANDOFF)),
            Err(e) => {
                tracing::error!(error = %e, "claiming a device's session failed");
                self.refuse_unavailable().await;
                None
            }
        }
    }

    pub(super) async fn refuse_auth(&mut self, key: &PublicKey, code: ErrorCode, msg: &str) {
        tracing::info!(
            client = %log_id(key),
            code = code.as_str(),
            "authentication refused"
        );
        tracing::debug!(key = %key, "authentication refused for this key");
        self.refuse(code, msg, CloseCode::Policy).await;
    }

    /// The first data frame, parsed; `None` if the client went away.
    pub(super) async fn first_frame(&mut self) -> Option<Result<Frame, protocol::ProtocolError>> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => {
                    return Some(protocol::parse_with_limit(
                        text.as_str(),
                        self.shared.config.max_frame_bytes,
                    ))
                }
                Ok(Message::Binary(bytes)) => {
                    return Some(protocol::from_slice(
                        &bytes,
                        self.shared.config.max_frame_bytes,
                    ))
                }
                Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) => {}
                Err(WsError::Utf8(_)) => {
                    self.close(CloseCode::Invalid, CLOSE_BAD_UTF8).await;
                    return None;
                }
                Ok(Message::Close(_)) | Err(_) => return None,
            }
        }
    }
}

pub(super) fn error_frame(id: Option<Uuid>, code: ErrorCode, message: &str) -> Frame {
    Frame::Error(ErrorFrame {
        id,
        code,
        message: message.to_owned(),
    })
}

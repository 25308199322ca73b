//! One device's end of the link: a router session as a rendezvous key,
//! sealing what it sends to the other rendezvous key and opening what
//! comes back, in order.
//!
//! Frames sent are kept until the router acknowledges them; one the router
//! drops for its rate limit or quota is sent again a little later (same
//! id, so never stored twice). Session messages carry a sequence number:
//! the receiver puts them back in order (a resent frame may overtake) and
//! drops duplicates. Box messages are left for the caller to acknowledge,
//! so a "closed" note stays queued for whoever tries the code next.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;
use uuid::Uuid;

use super::wire::{self, Body, Layer, Note, Side};
use super::LinkError;
use crate::client::connection::{self, Connection};
use crate::client::{ClientError, ServerUrl};
use crate::crypto::MessageKey;
use crate::identity::{Identity, PublicKey};
use crate::protocol::{Ack, ErrorCode, Frame, MessageFrame, MAX_FRAME_BYTES};
use crate::store::device::Device;

/// How long to wait before sending again a frame the router dropped for
/// its rate limit or quota: doubled at each refusal in a row, up to
/// [`MAX_RETRY_DELAY`], and back to this after an ack.
const RETRY_DELAY: Duration = Duration::from_millis(50);
/// The longest wait before a resend.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(1);

/// What arrived from the other device.
#[derive(Debug)]
pub enum Incoming {
    /// A box-layer note, not acknowledged yet (see [`Channel::ack`]).
    Boxed(Note, Uuid),
    /// The next session message, in order.
    Session(Body),
}

/// A session with the router as one rendezvous key.
pub struct Channel {
    conn: Connection,
    me: Identity,
    peer: PublicKey,
    box_key: MessageKey,
    send_key: Option<MessageKey>,
    recv_key: Option<MessageKey>,
    send_seq: u64,
    recv_next: u64,
    reorder: BTreeMap<u64, Body>,
    unacked: HashMap<Uuid, MessageFrame>,
    retry: VecDeque<(Instant, Uuid)>,
    backoff: Duration,
    ready: VecDeque<Incoming>,
}

impl Channel {
    /// Connects as `side`'s rendezvous key of `nameplate`.
    pub async fn connect(
        server: &ServerUrl,
        nameplate: &str,
        side: Side,
        timeout: Duration,
    ) -> Result<Self, LinkError> {
        let me = wire::rendezvous(nameplate, side);
        let peer = wire::rendezvous(nameplate, side.other()).public_key();
        let device = wire::rendezvous_device(nameplate, side);
        let conn = connect_ephemeral(server, &me, device, timeout).await?;
        Ok(Self {
            conn,
            me,
            peer,
            box_key: wire::box_key(nameplate),
            send_key: None,
            recv_key: None,
            send_seq: 0,
            recv_next: 0,
            reorder: BTreeMap::new(),
            unacked: HashMap::new(),
            retry: VecDeque::new(),
            backoff: Duration::ZERO,
            ready: VecDeque::new(),
        })
    }

    /// The largest chunk a frame carries on this router.
    pub fn chunk_capacity(&self) -> usize {
        wire::chunk_capacity(self.conn.max_frame_bytes().unwrap_or(MAX_FRAME_BYTES))
    }

    /// Switches to the PAKE's keys; `me` is this side.
    pub fn start_session(&mut self, shared: &[u8], me: Side) {
        self.send_key = Some(wire::session_key(shared, me));
        self.recv_key = Some(wire::session_key(shared, me.other()));
    }

    /// Sends a note under the box key; returns the frame's id.
    pub async fn send_box(&mut self, note: Note) -> Result<Uuid, LinkError> {
        let body = Body::Note(note).encode()?;
        let frame = wire::seal(&self.me, &self.peer, &self.box_key, Layer::Box, 0, &body)?;
        let id = frame.id;
        self.transmit(frame).await?;
        Ok(id)
    }

    /// Sends a session message (after [`Channel::start_session`]).
    pub async fn send(&mut self, body: &Body) -> Result<(), LinkError> {
        let key = self
            .send_key
            .as_ref()
            .ok_or_else(|| LinkError::Protocol("no session yet".into()))?;
        let bytes = body.encode()?;
        let frame = wire::seal(
            &self.me,
            &self.peer,
            key,
            Layer::Session,
            self.send_seq,
            &bytes,
        )?;
        self.send_seq += 1;
        self.transmit(frame).await
    }

    async fn transmit(&mut self, frame: MessageFrame) -> Result<(), LinkError> {
        tracing::debug!(id = %frame.id, in_flight = self.unacked.len(), "link: sending");
        self.unacked.insert(frame.id, frame.clone());
        self.conn.send(&[Frame::Message(frame)]).await?;
        Ok(())
    }

    /// Acknowledges a box note to the router: it will not come again.
    pub async fn ack(&mut self, id: Uuid) -> Result<(), LinkError> {
        let ack = Frame::Ack(Ack { id, at: None });
        self.conn.send(&[ack]).await?;
        Ok(())
    }

    /// The next message from the other device, or `None` once `deadline`
    /// passes.
    pub async fn recv(&mut self, deadline: Instant) -> Result<Option<Incoming>, LinkError> {
        loop {
            if let Some(next) = self.ready.pop_front() {
                return Ok(Some(next));
            }
            if !self.pump(deadline).await? {
                return Ok(None);
            }
        }
    }

    /// Waits until the router has acknowledged every frame sent (messages
    /// arriving meanwhile are kept for [`Channel::recv`]).
    pub async fn flush(&mut self, deadline: Instant) -> Result<bool, LinkError> {
        while !self.unacked.is_empty() {
            if !self.pump(deadline).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Waits until fewer than `limit` frames are unacknowledged and none
    /// waits to be sent again (new frames would only be refused too, and
    /// overtake it).
    pub async fn room(&mut self, limit: usize, deadline: Instant) -> Result<bool, LinkError> {
        while self.unacked.len() >= limit || !self.retry.is_empty() {
            if !self.pump(deadline).await? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A message that arrived already, without waiting.
    pub fn try_recv(&mut self) -> Option<Incoming> {
        self.ready.pop_front()
    }

    /// Reads one batch from the router (or resends what is due); false once
    /// `deadline` passed with nothing read.
    async fn pump(&mut self, deadline: Instant) -> Result<bool, LinkError> {
        self.resend_due().await?;
        let until = self
            .retry
            .front()
            .map_or(deadline, |(at, _)| (*at).min(deadline));
        let batch = match tokio::time::timeout_at(until, self.conn.recv_batch()).await {
            Err(_) => return Ok(Instant::now() < deadline),
            Ok(batch) => batch?,
        };
        let Some(batch) = batch else {
            return Err(ClientError::Closed("the router ended the session".into()).into());
        };
        let mut acks = Vec::new();
        for frame in batch {
            match frame {
                Frame::Ack(ack) if self.unacked.remove(&ack.id).is_some() => {
                    self.backoff = Duration::ZERO;
                }
                Frame::Ack(_) => {}
                Frame::Error(e) => {
                    tracing::debug!(id = ?e.id, code = e.code.as_str(), "link: router refused");
                    let retriable = matches!(
                        e.code,
                        ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::Internal
                    );
                    match e.id.filter(|id| self.unacked.contains_key(id)) {
                        Some(id) if retriable => {
                            self.backoff = (self.backoff * 2).clamp(RETRY_DELAY, MAX_RETRY_DELAY);
                            self.retry.push_back((Instant::now() + self.backoff, id));
                        }
                        _ => {
                            return Err(ClientError::Refused {
                                code: e.code,
                                message: e.message,
                            }
                            .into())
                        }
                    }
                }
                Frame::Message(m) => {
                    if let Some(ack) = self.take(m) {
                        acks.push(Frame::Ack(Ack { id: ack, at: None }));
                    }
                }
                _ => {}
            }
        }
        self.conn.send(&acks).await?;
        Ok(true)
    }

    /// Files a message; returns its id when it should be acknowledged now.
    fn take(&mut self, m: MessageFrame) -> Option<Uuid> {
        let id = m.id;
        tracing::debug!(%id, next = self.recv_next, "link: received");
        if m.from != self.peer || m.to != self.me.public_key() {
            // Not from the other rendezvous key: nothing of ours.
            return Some(id);
        }
        if let Some(key) = &self.recv_key {
            if let Ok((seq, bytes)) = wire::open(&m, key, Layer::Session) {
                match Body::decode(&bytes) {
                    Ok(body) if seq >= self.recv_next => {
                        self.reorder.entry(seq).or_insert(body);
                    }
                    Ok(_) => {} // a duplicate
                    Err(e) => tracing::warn!(error = %e, "dropping a link message"),
                }
                while let Some(body) = self.reorder.remove(&self.recv_next) {
                    self.ready.push_back(Incoming::Session(body));
                    self.recv_next += 1;
                }
                return Some(id);
            }
        }
        match wire::open(&m, &self.box_key, Layer::Box).and_then(|(_, b)| Body::decode(&b)) {
            Ok(Body::Note(note)) => {
                self.ready.push_back(Incoming::Boxed(note, id));
                None
            }
            _ => {
                // Sealed under a key we do not hold (an earlier attempt's
                // session): nothing to do with it.
                tracing::warn!(%id, "dropping a link frame that does not open");
                Some(id)
            }
        }
    }

    async fn resend_due(&mut self) -> Result<(), LinkError> {
        let now = Instant::now();
        while let Some((at, id)) = self.retry.front().copied() {
            if at > now {
                break;
            }
            self.retry.pop_front();
            if let Some(frame) = self.unacked.get(&id).cloned() {
                self.conn.send(&[Frame::Message(frame)]).await?;
            }
        }
        Ok(())
    }

    /// Ends the session politely.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// Connects as a rendezvous key, always as the same device of it (see
/// [`wire::rendezvous_device`]).
async fn connect_ephemeral(
    server: &ServerUrl,
    me: &Identity,
    device: Uuid,
    timeout: Duration,
) -> Result<Connection, LinkError> {
    let device = Device {
        id: device,
        name: "link".to_owned(),
        created_at: String::new(),
    };
    Ok(connection::connect(server, me, &device, timeout).await?)
}

//! The subscriber: one pub/sub connection per router, subscribed to the
//! router's own channel, turning what other routers' scripts publish into
//! [`ClusterEvent`]s. After it lost the connection and subscribed again it
//! sends [`ClusterEvent::Recheck`], since messages published meanwhile
//! are gone. A PING every few seconds notices a connection that died
//! without closing (a network cut), which would otherwise go quiet.

use std::time::Duration;

use futures_util::StreamExt as _;
use redis::aio::{PubSubSink, PubSubStream};
use redis::Client;
use tokio::sync::mpsc;

use super::setup::OP_TIMEOUT;
use super::wire;
use crate::router::backend::ClusterEvent;

/// The longest wait between two attempts to subscribe again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How often the subscription's connection is PINGed.
const HEARTBEAT: Duration = Duration::from_secs(5);

/// A subscription: the half that sends (PINGs), the half that receives.
pub(super) type Subscription = (PubSubSink, PubSubStream);

/// Connects and subscribes to `channel`.
pub(super) async fn subscribe(client: &Client, channel: &str) -> Result<Subscription, String> {
    let attempt = async {
        let (mut sink, stream) = client.get_async_pubsub().await?.split();
        sink.subscribe(channel).await?;
        Ok::<_, redis::RedisError>((sink, stream))
    };
    match tokio::time::timeout(OP_TIMEOUT, attempt).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer in time".to_owned()),
    }
}

/// Sends the events of one message on `events`; a message that is not
/// one of ours is logged and dropped.
pub(super) fn dispatch(payload: &[u8], events: &mpsc::UnboundedSender<ClusterEvent>) {
    match wire::decode(payload) {
        Ok(list) => {
            for event in list {
                let _ = events.send(event);
            }
        }
        Err(e) => tracing::warn!(
            error = %e,
            bytes = payload.len(),
            "dropped a malformed message on the router's Redis channel"
        ),
    }
}

/// Reads the subscription until its connection goes (or stops answering
/// PING).
async fn listen(
    (mut sink, mut stream): Subscription,
    events: &mpsc::UnboundedSender<ClusterEvent>,
) {
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(msg) => dispatch(msg.get_payload_bytes(), events),
                None => return,
            },
            _ = heartbeat.tick() => {
                let ping = sink.ping::<redis::Value>();
                if !matches!(tokio::time::timeout(OP_TIMEOUT, ping).await, Ok(Ok(_))) {
                    return;
                }
            }
        }
    }
}

/// Reads the subscription until the connection goes, then subscribes
/// again (with a growing pause) and sends a Recheck; until aborted.
pub(super) async fn run(
    client: Client,
    channel: String,
    mut subscription: Subscription,
    events: mpsc::UnboundedSender<ClusterEvent>,
) {
    loop {
        listen(subscription, &events).await;
        tracing::warn!("lost the Redis subscription; subscribing again");
        let mut pause = Duration::from_millis(100);
        subscription = loop {
            tokio::time::sleep(pause).await;
            match subscribe(&client, &channel).await {
                Ok(subscription) => break subscription,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot subscribe yet");
                    pause = (pause * 2).min(MAX_BACKOFF);
                }
            }
        };
        tracing::info!("subscribed again: sessions re-check their queues");
        let _ = events.send(ClusterEvent::Recheck);
    }
}

//! Asking the router about this identity's devices: list them, or stop
//! delivery to one. Both use a control session (protocol v2), which
//! receives nothing and replaces no session, so they work beside a running
//! chat on the same profile.

use std::time::Duration;

use uuid::Uuid;

use super::connection::{self, ServerUrl};
use super::ClientError;
use crate::identity::Identity;
use crate::protocol::{DeviceInfo, Frame, RemoveDevice};
use crate::store::device::Device;

/// The devices the router knows for `identity`'s key, oldest first.
pub async fn list(
    server: &ServerUrl,
    identity: &Identity,
    timeout: Duration,
) -> Result<Vec<DeviceInfo>, ClientError> {
    let answer = ask(server, identity, Frame::ListDevices, timeout).await?;
    match answer {
        Frame::Devices(list) => Ok(list.devices),
        other => Err(unexpected(&other)),
    }
}

/// Stops delivery to `device` at the router; false when the router did
/// not know it (or it was already removed).
pub async fn remove(
    server: &ServerUrl,
    identity: &Identity,
    device: Uuid,
    timeout: Duration,
) -> Result<bool, ClientError> {
    let request = Frame::RemoveDevice(RemoveDevice { device });
    match ask(server, identity, request, timeout).await? {
        Frame::DeviceRemoved(done) if done.device == device => Ok(done.removed),
        other => Err(unexpected(&other)),
    }
}

/// Sends `request` on a control session and returns the router's answer
/// (the first frame that is not an `error`; an `error` fails).
async fn ask(
    server: &ServerUrl,
    identity: &Identity,
    request: Frame,
    timeout: Duration,
) -> Result<Frame, ClientError> {
    let work = async {
        let control = Device::control();
        let mut conn = connection::connect(server, identity, &control, timeout).await?;
        conn.send(&[request]).await?;
        loop {
            let Some(frames) = conn.recv_batch().await? else {
                return Err(ClientError::Closed(
                    "the router ended the session before answering".to_owned(),
                ));
            };
            for frame in frames {
                match frame {
                    Frame::Error(e) => {
                        return Err(ClientError::Refused {
                            code: e.code,
                            message: e.message,
                        })
                    }
                    Frame::Devices(_) | Frame::DeviceRemoved(_) => {
                        conn.close().await;
                        return Ok(frame);
                    }
                    // Nothing else is meant for a control session.
                    _ => {}
                }
            }
        }
    };
    tokio::time::timeout(timeout, work)
        .await
        .map_err(|_| ClientError::Timeout {
            secs: timeout.as_secs(),
            waiting_for: "the router's answer about devices".to_owned(),
        })?
}

fn unexpected(frame: &Frame) -> ClientError {
    let kind = crate::protocol::to_text(frame);
    let kind = crate::protocol::truncate_on_char(&kind, 80).to_owned();
    ClientError::Handshake(format!("unexpected answer from the router: {kind}"))
}

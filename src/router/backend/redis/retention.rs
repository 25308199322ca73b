//! Retention on Redis: every recipient of the deployment's retention set,
//! a step of `SSCAN` at a time, each through `expire.lua` (which stops
//! after [`EXPIRE_STEP`] deletions, so no call blocks Redis for long);
//! recipients found idle leave the set, and the depth counter follows.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use redis::aio::ConnectionManager;

use super::keys::unhex32;
use super::scripts::{self, evalsha, SCRIPTS};
use super::{bounded, count, wire, Inner};
use crate::router::backend::{BackendError, Expired};

/// Retention's most deletions per script call (keeps each call short).
const EXPIRE_STEP: u64 = 1000;

/// Recipients read from the retention set per `SSCAN` step.
const SCAN_STEP: u64 = 200;

/// Deletes frames committed before `before` and forgets devices last seen
/// before it, for every recipient. Each step is bounded; the whole pass
/// takes as long as the deployment needs.
pub(super) async fn expire(inner: Arc<Inner>, before: String) -> Result<Expired, BackendError> {
    if inner.closed.load(Ordering::Acquire) {
        return Err(BackendError::Closed);
    }
    let mut conn = inner.conn.clone();
    let mut total = Expired::default();
    let mut cursor = 0u64;
    loop {
        let mut scan = redis::cmd("SSCAN");
        scan.arg(inner.names.recipients())
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_STEP);
        let scan = scan.query_async::<(u64, Vec<String>)>(&mut conn);
        let (next, batch) = bounded(&inner, scan).await?;
        let gone = bounded(&inner, expire_some(&inner, &mut conn, batch, &before)).await?;
        total.frames += gone.frames;
        total.devices += gone.devices;
        if next == 0 {
            break;
        }
        cursor = next;
    }
    Ok(total)
}

/// Retention for the recipients `batch` (hex, from the recipients set):
/// runs expire.lua on each until it is done, drops idle recipients from
/// the set, and adjusts the depth counter.
async fn expire_some(
    inner: &Inner,
    conn: &mut ConnectionManager,
    batch: Vec<String>,
    before: &str,
) -> Result<Expired, BackendError> {
    let names = &inner.names;
    let mut total = Expired::default();
    let mut deleted = 0i64;
    let (mut pending, junk): (Vec<String>, Vec<String>) =
        batch.into_iter().partition(|hex| unhex32(hex).is_some());
    let mut idle = junk;
    while !pending.is_empty() {
        let cmds = pending
            .iter()
            .map(|hex| {
                let k = names.recipient_hex(hex.clone());
                let mut cmd = evalsha(&SCRIPTS.expire, &[&k.f, &k.w, &k.slots, &k.dev, &k.sess]);
                cmd.arg(before).arg(EXPIRE_STEP);
                cmd
            })
            .collect();
        let replies = scripts::run(conn, cmds).await?;
        let mut again = Vec::new();
        for (hex, reply) in pending.into_iter().zip(&replies) {
            let parts: Option<Vec<i64>> = wire::array(reply)
                .map(|items| items.iter().map(wire::int).collect())
                .unwrap_or(None);
            let Some([expired, forgotten, released, more, empty]) =
                parts.as_deref().and_then(|p| <[i64; 5]>::try_from(p).ok())
            else {
                tracing::error!(recipient = hex, reply = ?reply, "retention failed for a recipient");
                continue;
            };
            total.frames += expired.max(0) as u64;
            total.devices += forgotten.max(0) as u64;
            deleted += expired + released;
            if more == 1 {
                again.push(hex);
            } else if empty == 1 {
                idle.push(hex);
            }
        }
        pending = again;
    }
    count(conn, names, -deleted).await?;
    for hex in idle {
        // Dropped from the set, then put back if anything arrived between
        // the script and here (an enqueue's SADD follows its script).
        let k = names.recipient_hex(hex.clone());
        let (_, fields, devices): (i64, i64, i64) = redis::pipe()
            .cmd("SREM")
            .arg(names.recipients())
            .arg(&hex)
            .cmd("HLEN")
            .arg(&k.f)
            .cmd("EXISTS")
            .arg(&k.slots)
            .query_async(conn)
            .await?;
        // `f` keeps the seq counter: more than that is a frame.
        if fields > 1 || devices > 0 {
            redis::cmd("SADD")
                .arg(names.recipients())
                .arg(&hex)
                .exec_async(conn)
                .await?;
        }
    }
    Ok(total)
}

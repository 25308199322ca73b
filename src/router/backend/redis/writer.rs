//! The writer: one task per router that takes every submission waiting
//! (frames to store, acknowledgements to settle), groups them by
//! recipient, and sends ONE pipeline with one `EVALSHA` per recipient and
//! kind, so a burst costs one round trip, not one per frame. Each caller
//! is answered once its script has run (an `appendfsync always` Redis has
//! fsynced by then). One pipeline is in flight at a time: submissions are
//! applied in the order they were made.
//!
//! Beside the scripts it keeps the deployment-wide bookkeeping, which no
//! script may touch: `SADD` to the retention set of each recipient a
//! script found new, and the depth counter; both ride on the next
//! pipeline (or go alone when the writer is idle).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{Cmd, Value};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::health::{self, Health};
use super::keys::{self, Names};
use super::scripts::{self, evalsha, SCRIPTS};
use super::setup::OP_TIMEOUT;
use super::wire;
use crate::protocol::CONTROL_DEVICE;
use crate::router::backend::{BackendError, Enqueued, NewFrame, Queued};

/// Submissions waiting for the writer; senders wait when it is full.
pub(super) const WRITER_QUEUE: usize = 4096;

/// Most submissions in one pipeline.
const MAX_BATCH: usize = 2048;

/// Most frames in one call of the enqueue script (which hands Redis
/// commands a few arguments per frame, and Lua unpacks some thousands).
const FRAMES_PER_CALL: usize = 256;

/// Most seqs of one device in one entry of the ack script's arguments
/// (Lua unpacks some thousands of values at most); more go in several.
const SEQS_PER_ENTRY: usize = 1000;

/// How long a pending depth change waits for a pipeline to ride on.
const IDLE_FLUSH: Duration = Duration::from_millis(20);

pub(super) type Reply<T> = oneshot::Sender<Result<T, BackendError>>;

/// One unit of work for the writer.
pub(super) enum Op {
    Enqueue(Vec<NewFrame>, Reply<Vec<Enqueued>>),
    /// Acknowledgements by `device` of the recipient (its key's bytes).
    Remove([u8; 32], Uuid, Vec<i64>, Reply<u64>),
    Depth(Reply<u64>),
    Close(oneshot::Sender<()>),
}

/// The writer task's state.
pub(super) struct Writer {
    pub conn: ConnectionManager,
    pub names: Names,
    pub router_id: String,
    pub quota: u64,
    pub health: Arc<Health>,
    /// Frames stored minus frames deleted, not yet added to the counter.
    pub delta: i64,
    /// Recipients (hex) that got their first frame, not yet in the
    /// retention set.
    pub new_recipients: Vec<String>,
}

/// What one command of a pipeline answers.
enum Kind {
    /// Bookkeeping whose reply nobody needs.
    Ignore,
    /// The depth counter, for these callers.
    Depth,
    /// The removals of `removes[i]`.
    Remove(usize),
    /// The frames of `groups[i]`.
    Enqueue(usize),
}

/// One recipient's acknowledgements in a batch: indices into the batch's
/// removal ops.
struct RemoveGroup {
    ops: Vec<usize>,
}

/// One recipient's frames in a batch: (op, frame) indices.
struct FrameGroup {
    recipient: [u8; 32],
    frames: Vec<(usize, usize)>,
}

impl Writer {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        let closers = loop {
            let next = if self.has_bookkeeping() {
                match tokio::time::timeout(IDLE_FLUSH, rx.recv()).await {
                    Ok(next) => next,
                    Err(_) => {
                        self.flush().await;
                        continue;
                    }
                }
            } else {
                rx.recv().await
            };
            let Some(first) = next else {
                break Vec::new();
            };
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            let closers = self.apply(batch).await;
            if !closers.is_empty() {
                break closers;
            }
        };
        if self.has_bookkeeping() {
            self.flush().await;
        }
        drop(rx);
        for done in closers {
            let _ = done.send(());
        }
        tracing::debug!("Redis queue writer stopped");
    }

    fn has_bookkeeping(&self) -> bool {
        self.delta != 0 || !self.new_recipients.is_empty()
    }

    /// Sends the pending bookkeeping alone.
    async fn flush(&mut self) {
        let _ = self.send(Vec::new(), &mut Vec::new()).await;
    }

    /// Sends `cmds` (after the pending bookkeeping) within [`OP_TIMEOUT`];
    /// `kinds` gets the bookkeeping's entries in front.
    async fn send(&mut self, cmds: Vec<Cmd>, kinds: &mut Vec<Kind>) -> Result<Vec<Value>, String> {
        let mut all = Vec::with_capacity(cmds.len() + 2);
        let delta = std::mem::take(&mut self.delta);
        let new = std::mem::take(&mut self.new_recipients);
        if delta != 0 {
            let mut incr = redis::cmd("INCRBY");
            incr.arg(self.names.depth()).arg(delta);
            all.push(incr);
            kinds.insert(0, Kind::Ignore);
        }
        if !new.is_empty() {
            let mut sadd = redis::cmd("SADD");
            sadd.arg(self.names.recipients()).arg(&new);
            all.push(sadd);
            kinds.insert(0, Kind::Ignore);
        }
        all.extend(cmds);
        let run = scripts::run(&mut self.conn, all);
        let outcome = match tokio::time::timeout(OP_TIMEOUT, run).await {
            Ok(Ok(replies)) => {
                let refused = replies.iter().find_map(|v| match v {
                    Value::ServerError(e) if health::unable(e.code()) => Some(e),
                    _ => None,
                });
                match refused {
                    Some(e) => self.health.down(&format!("{e:?}")),
                    None => self.health.up(),
                }
                Ok(replies)
            }
            Ok(Err(e)) => {
                self.health.note(&e);
                Err(e.to_string())
            }
            Err(_) => {
                let cause = format!("no answer within {}s", OP_TIMEOUT.as_secs());
                self.health.down(&cause);
                Err(cause)
            }
        };
        if outcome.is_err() {
            // Most likely not applied: again next time.
            self.delta += delta;
            self.new_recipients.extend(new);
        }
        outcome
    }

    /// Applies a batch; returns who asked to stop.
    async fn apply(&mut self, batch: Vec<Op>) -> Vec<oneshot::Sender<()>> {
        let mut closers = Vec::new();
        let mut removes = Vec::new();
        let mut enqueues = Vec::new();
        let mut depths = Vec::new();
        for op in batch {
            match op {
                Op::Enqueue(frames, reply) => enqueues.push((frames, reply)),
                Op::Remove(key, device, seqs, reply) => removes.push((key, device, seqs, reply)),
                Op::Depth(reply) => depths.push(reply),
                Op::Close(done) => closers.push(done),
            }
        }
        if removes.is_empty() && enqueues.is_empty() && depths.is_empty() {
            return closers;
        }
        let at = crate::clock::now();
        let mut cmds = Vec::new();
        let mut kinds = Vec::new();

        // Acknowledgements first: they only free room, and none can be for
        // a frame of this batch.
        let remove_groups = group(removes.iter().map(|r| r.0), |ops| RemoveGroup { ops });
        for (g, (key, group)) in remove_groups.iter().enumerate() {
            let k = self.names.recipient(key);
            let mut cmd = evalsha(&SCRIPTS.remove, &[&k.f, &k.w, &k.slots]);
            for &i in &group.ops {
                let (_, device, seqs, _) = &removes[i];
                let device = device.to_string();
                if seqs.is_empty() {
                    cmd.arg(&device).arg(0);
                }
                for chunk in seqs.chunks(SEQS_PER_ENTRY) {
                    cmd.arg(&device).arg(chunk.len()).arg(chunk);
                }
            }
            cmds.push(cmd);
            kinds.push(Kind::Remove(g));
        }

        let frame_groups = frame_groups(&enqueues);
        let chan = self.names.channel_prefix();
        for (g, group) in frame_groups.iter().enumerate() {
            let k = self.names.recipient(&group.recipient);
            let mut cmd = evalsha(&SCRIPTS.enqueue, &[&k.f, &k.w, &k.slots, &k.sess]);
            cmd.arg(&self.router_id).arg(&chan).arg(self.quota);
            for &(op, i) in &group.frames {
                let f = &enqueues[op].0[i];
                let sender_device = match own_device(f) {
                    Some(device) => device.to_string(),
                    None => String::new(),
                };
                cmd.arg(&wire::dedup_key(&f.sender, &f.id)[..])
                    .arg(sender_device)
                    .arg(wire::record(&at, &f.sender, &f.id, &f.text));
            }
            cmds.push(cmd);
            kinds.push(Kind::Enqueue(g));
        }
        if !depths.is_empty() {
            let mut get = redis::cmd("GET");
            get.arg(self.names.depth());
            cmds.push(get);
            kinds.push(Kind::Depth);
        }

        let replies = match self.send(cmds, &mut kinds).await {
            Ok(replies) => replies,
            Err(cause) => {
                let err = || BackendError::Commit(format!("redis: {cause}"));
                for (_, _, _, reply) in removes {
                    let _ = reply.send(Err(err()));
                }
                for (_, reply) in enqueues {
                    let _ = reply.send(Err(err()));
                }
                for reply in depths {
                    let _ = reply.send(Err(err()));
                }
                return closers;
            }
        };

        let mut removed: Vec<Result<u64, String>> = vec![Err("no reply".into()); removes.len()];
        let mut stored: Vec<Result<Vec<Option<Enqueued>>, String>> = enqueues
            .iter()
            .map(|(frames, _)| Ok(vec![None; frames.len()]))
            .collect();
        let mut depth = None;
        for (kind, reply) in kinds.iter().zip(&replies) {
            match kind {
                Kind::Ignore => {}
                Kind::Depth => depth = Some(wire::int(reply).unwrap_or(0).max(0) as u64),
                Kind::Remove(g) => {
                    let ops = &remove_groups[*g].1.ops;
                    let entries: Vec<usize> = ops
                        .iter()
                        .map(|&i| removes[i].2.len().div_ceil(SEQS_PER_ENTRY).max(1))
                        .collect();
                    match parse_remove(reply, entries.iter().sum()) {
                        Ok((deleted, counts)) => {
                            self.delta -= deleted;
                            let mut counts = counts.into_iter();
                            for (&i, n) in ops.iter().zip(entries) {
                                removed[i] = Ok(counts.by_ref().take(n).sum());
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "acknowledgements not settled");
                            for &i in ops {
                                removed[i] = Err(e.clone());
                            }
                        }
                    }
                }
                Kind::Enqueue(g) => {
                    let group = &frame_groups[*g];
                    match parse_enqueue(reply, group, &enqueues, &at) {
                        Ok((outcomes, new)) => {
                            if new {
                                let hex = keys::hex(&group.recipient);
                                self.new_recipients.push(hex);
                            }
                            for (&(op, i), outcome) in group.frames.iter().zip(outcomes) {
                                if matches!(outcome, Enqueued::Stored { .. }) {
                                    self.delta += 1;
                                }
                                if let Ok(list) = &mut stored[op] {
                                    list[i] = Some(outcome);
                                }
                            }
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "frames not stored");
                            for &(op, _) in &group.frames {
                                stored[op] = Err(e.clone());
                            }
                        }
                    }
                }
            }
        }
        for ((_, _, _, reply), outcome) in removes.into_iter().zip(removed) {
            let _ = reply.send(outcome.map_err(BackendError::Commit));
        }
        for ((_, reply), outcome) in enqueues.into_iter().zip(stored) {
            let answer = outcome.and_then(|list| {
                list.into_iter()
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| "a frame got no answer".to_owned())
            });
            let _ = reply.send(answer.map_err(BackendError::Commit));
        }
        for reply in depths {
            let _ = reply.send(depth.ok_or_else(|| BackendError::Commit("no depth".into())));
        }
        closers
    }
}

/// Groups indices by recipient, in order of first appearance.
fn group<T>(
    keys: impl Iterator<Item = [u8; 32]>,
    make: impl Fn(Vec<usize>) -> T,
) -> Vec<([u8; 32], T)> {
    let mut order: Vec<[u8; 32]> = Vec::new();
    let mut by_key: HashMap<[u8; 32], Vec<usize>> = HashMap::new();
    for (i, key) in keys.enumerate() {
        by_key
            .entry(key)
            .or_insert_with(|| {
                order.push(key);
                Vec::new()
            })
            .push(i);
    }
    order
        .into_iter()
        .map(|key| {
            let ops = by_key.remove(&key).unwrap_or_default();
            (key, make(ops))
        })
        .collect()
}

/// Every frame of the batch's enqueue ops, grouped by recipient in order.
fn frame_groups(enqueues: &[(Vec<NewFrame>, Reply<Vec<Enqueued>>)]) -> Vec<FrameGroup> {
    let mut index: HashMap<[u8; 32], usize> = HashMap::new();
    let mut groups: Vec<FrameGroup> = Vec::new();
    for (op, (frames, _)) in enqueues.iter().enumerate() {
        for (i, f) in frames.iter().enumerate() {
            let mut g = *index.entry(f.recipient).or_insert_with(|| {
                groups.push(FrameGroup {
                    recipient: f.recipient,
                    frames: Vec::new(),
                });
                groups.len() - 1
            });
            if groups[g].frames.len() == FRAMES_PER_CALL {
                // A full call: the recipient's next frames go in another,
                // after it in the pipeline.
                groups.push(FrameGroup {
                    recipient: f.recipient,
                    frames: Vec::new(),
                });
                g = groups.len() - 1;
                index.insert(f.recipient, g);
            }
            groups[g].frames.push((op, i));
        }
    }
    groups
}

/// `{deleted, n per entry}` from remove.lua.
fn parse_remove(reply: &Value, entries: usize) -> Result<(i64, Vec<u64>), String> {
    let items = match reply {
        Value::ServerError(e) => return Err(format!("redis: {e:?}")),
        other => wire::array(other).ok_or("unexpected reply to the ack script")?,
    };
    let mut ints = items.iter().map(wire::int);
    let deleted = ints.next().flatten().ok_or("no count")?;
    let counts: Option<Vec<u64>> = ints.map(|n| n.map(|n| n.max(0) as u64)).collect();
    let counts = counts.ok_or("bad count")?;
    if counts.len() != entries {
        return Err("wrong number of counts from the ack script".into());
    }
    Ok((deleted, counts))
}

/// The device that sent `f` when it is to the sender's own key (a frame
/// that does not wait for that device), else `None`.
fn own_device(f: &NewFrame) -> Option<Uuid> {
    (f.sender == f.recipient && f.sender_device != CONTROL_DEVICE).then_some(f.sender_device)
}

/// The outcome of each frame of `group` from enqueue.lua, and whether
/// the recipient is new to the retention set.
fn parse_enqueue(
    reply: &Value,
    group: &FrameGroup,
    enqueues: &[(Vec<NewFrame>, Reply<Vec<Enqueued>>)],
    at: &str,
) -> Result<(Vec<Enqueued>, bool), String> {
    let items = match reply {
        Value::ServerError(e) => return Err(format!("redis: {e:?}")),
        other => wire::array(other).ok_or("unexpected reply to the enqueue script")?,
    };
    let [new, devices, outcomes @ ..] = items else {
        return Err("no outcomes from the enqueue script".into());
    };
    if outcomes.len() != group.frames.len() {
        return Err("wrong number of outcomes from the enqueue script".into());
    }
    let devices = wire::array(devices)
        .ok_or("bad devices")?
        .iter()
        .map(wire::uuid)
        .collect::<Option<Vec<_>>>()
        .ok_or("bad device")?;
    let mut out = Vec::with_capacity(outcomes.len());
    for (item, &(op, i)) in outcomes.iter().zip(&group.frames) {
        let f = &enqueues[op].0[i];
        out.push(match item {
            Value::Int(seq) if *seq > 0 => {
                let own = own_device(f);
                Enqueued::Stored {
                    frame: Queued {
                        seq: *seq,
                        id: f.id,
                        recipient: f.recipient,
                        at: at.to_owned(),
                        text: Arc::clone(&f.text),
                    },
                    devices: devices
                        .iter()
                        .filter(|d| Some(**d) != own)
                        .copied()
                        .collect(),
                }
            }
            Value::Int(0) => Enqueued::Unneeded { at: at.to_owned() },
            Value::Int(-1) => Enqueued::QuotaExceeded,
            // A duplicate of a frame stored by this very call.
            Value::Int(-2) => Enqueued::Duplicate { at: at.to_owned() },
            other => match wire::text(other) {
                Some(first) => Enqueued::Duplicate {
                    at: first.to_owned(),
                },
                None => return Err(format!("unknown outcome {other:?}")),
            },
        });
    }
    Ok((out, wire::int(new) == Some(1)))
}

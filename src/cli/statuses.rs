//! The chat's status marks, held back a moment and printed together, so
//! that a message going sent, delivered and read within a second takes
//! one line, and receipts for many earlier messages take one line too,
//! not one per message.

use std::time::{Duration, Instant};

use crate::store::{Message, Status};

/// On a terminal: print once no change came for this long...
const QUIET: Duration = Duration::from_millis(600);
/// ...or at the latest this long after the first change held back.
const MOST: Duration = Duration::from_secs(2);

/// Status changes waiting to be printed.
#[derive(Debug, Default)]
pub(super) struct Held {
    /// Each change, in the order it came.
    changes: Vec<Message>,
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// Keep every change (a pipe, which reads as a log) rather than only
    /// each message's latest (a terminal).
    every_change: bool,
}

/// One line's worth: messages to one peer that reached one status.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Group {
    /// The status they reached.
    pub status: Status,
    /// The messages, oldest first; the last is named on the line.
    pub messages: Vec<Message>,
}

impl Held {
    /// `every_change` for a pipe; on a terminal only each message's latest
    /// mark is printed.
    pub(super) fn new(every_change: bool) -> Self {
        Self {
            every_change,
            ..Self::default()
        }
    }

    /// Holds one change back.
    pub(super) fn push(&mut self, message: Message, now: Instant) {
        self.first_at.get_or_insert(now);
        self.last_at = Some(now);
        self.changes.push(message);
    }

    /// When the held changes are due: at once on a pipe, after a quiet
    /// moment on a terminal; `None` when nothing is held.
    pub(super) fn due(&self) -> Option<Instant> {
        let (first, last) = (self.first_at?, self.last_at?);
        if self.every_change {
            return Some(last);
        }
        Some((last + QUIET).min(first + MOST))
    }

    /// Takes what is held, as lines to print: one per peer and status, in
    /// the order the statuses were first reached. A failure is never
    /// merged with another (each has its reason).
    pub(super) fn take(&mut self) -> Vec<Group> {
        self.first_at = None;
        self.last_at = None;
        let mut changes = std::mem::take(&mut self.changes);
        if !self.every_change {
            // A later change of the same message supersedes an earlier one.
            let mut latest: Vec<Message> = Vec::new();
            for change in changes.drain(..) {
                latest.retain(|m: &Message| m.msg_id != change.msg_id);
                latest.push(change);
            }
            changes = latest;
        }
        let mut groups: Vec<Group> = Vec::new();
        for change in changes {
            let joins = |g: &&mut Group| {
                g.status == change.status
                    && change.status != Status::Failed
                    && g.messages[0].peer_key == change.peer_key
            };
            match groups.iter_mut().find(|g| joins(g)) {
                Some(group) => {
                    group.messages.retain(|m| m.msg_id != change.msg_id);
                    group.messages.push(change);
                }
                None => groups.push(Group {
                    status: change.status,
                    messages: vec![change],
                }),
            }
        }
        for group in &mut groups {
            // Named by the newest message: "up to" reads in writing order.
            group
                .messages
                .sort_by_key(|m: &Message| (m.created_at.clone(), m.id));
        }
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;
    use crate::store::Store;

    fn messages(n: usize) -> (tempfile::TempDir, Vec<Message>) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::create(&dir.path().join("chat.db")).unwrap();
        let bob = Identity::generate().public_key();
        let list = (0..n)
            .map(|i| store.insert_outgoing(&bob, &format!("m{i}")).unwrap())
            .collect();
        (dir, list)
    }

    fn with(m: &Message, status: Status) -> Message {
        Message {
            status,
            ..m.clone()
        }
    }

    #[test]
    fn a_terminal_gets_one_line_per_status_with_each_message_latest() {
        let (_dir, ms) = messages(3);
        let mut held = Held::new(false);
        let t = Instant::now();
        for m in &ms {
            held.push(with(m, Status::Sent), t);
        }
        for m in &ms {
            held.push(with(m, Status::Delivered), t);
        }
        held.push(with(&ms[0], Status::Read), t);
        held.push(with(&ms[1], Status::Read), t);
        let groups = held.take();
        assert_eq!(groups.len(), 2, "{groups:#?}");
        assert_eq!(groups[0].status, Status::Delivered);
        assert_eq!(groups[0].messages.len(), 1);
        assert_eq!(groups[1].status, Status::Read);
        let bodies: Vec<&str> = groups[1].messages.iter().map(|m| m.body.as_str()).collect();
        assert_eq!(bodies, ["m0", "m1"]);
        assert!(held.due().is_none());
    }

    #[test]
    fn a_pipe_keeps_every_change_but_one_line_per_status() {
        let (_dir, ms) = messages(2);
        let mut held = Held::new(true);
        let t = Instant::now();
        for status in [Status::Delivered, Status::Read] {
            for m in &ms {
                held.push(with(m, status), t);
            }
        }
        assert_eq!(held.due(), Some(t));
        let groups = held.take();
        let statuses: Vec<Status> = groups.iter().map(|g| g.status).collect();
        assert_eq!(statuses, [Status::Delivered, Status::Read]);
        assert!(groups.iter().all(|g| g.messages.len() == 2));
    }

    #[test]
    fn failures_stay_apart_and_a_terminal_waits_for_quiet() {
        let (_dir, ms) = messages(2);
        let mut held = Held::new(false);
        let t = Instant::now();
        held.push(with(&ms[0], Status::Failed), t);
        held.push(with(&ms[1], Status::Failed), t + Duration::from_millis(100));
        assert_eq!(held.due(), Some(t + Duration::from_millis(700)));
        assert_eq!(held.take().len(), 2);
    }
}

//! The typed values at the messages' SQL boundary: [`MessageId`],
//! [`Direction`] and [`Status`], and the one place that decides which status
//! change a message may take ([`Status::may_become`]).

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// How many hex digits of a message id listings show (see
/// [`MessageId::short`]).
pub const SHORT_ID_LEN: usize = 8;

/// A message's wire id: a UUID, the deduplication key across the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(Uuid);

impl MessageId {
    /// A fresh id for a message written here: UUIDv7, time-ordered, so the
    /// UNIQUE index grows at its right edge.
    pub fn new_v7() -> Self {
        Self(Uuid::now_v7())
    }

    /// A deterministic id derived from `name` (UUIDv5), for messages that
    /// never had one, such as the original client's.
    pub fn derived(name: &[u8]) -> Self {
        // A fixed namespace of our own, so derived ids never collide with
        // another application's v5 ids.
        const NAMESPACE: Uuid = Uuid::from_u128(0x6368_6174_2d70_3270_8000_6c65_6761_6379);
        Self(Uuid::new_v5(&NAMESPACE, name))
    }

    /// Parses the hyphenated UUID text form.
    pub fn parse(text: &str) -> Result<Self, uuid::Error> {
        Uuid::parse_str(text).map(Self)
    }

    /// The UUID itself, as frames carry it.
    pub fn uuid(&self) -> Uuid {
        self.0
    }

    /// The short id listings show: the last [`SHORT_ID_LEN`] hex digits.
    ///
    /// Not the first ones: a UUIDv7 starts with its millisecond timestamp
    /// (the first eight digits change once a minute) and then a counter,
    /// while its last 32 bits are random for every id; ids of other kinds
    /// (v4, v5) are random there too. `sqlite3` finds it with
    /// `msg_id LIKE '%' || short`.
    pub fn short(&self) -> String {
        let text = self.to_text();
        text[text.len() - SHORT_ID_LEN..].to_owned()
    }

    /// The hyphenated lower-case text form, as stored.
    pub fn to_text(&self) -> String {
        self.0.hyphenated().to_string()
    }
}

impl From<Uuid> for MessageId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

impl ToSql for MessageId {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.to_text()))
    }
}

impl FromSql for MessageId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let text = value.as_str()?;
        Self::parse(text).map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

impl Serialize for MessageId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0.hyphenated())
    }
}

impl<'de> Deserialize<'de> for MessageId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Declares a text enum stored and serialised by its lower-case name.
macro_rules! text_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stored text.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text),+
                }
            }
        }

        impl FromStr for $name {
            type Err = String;
            fn from_str(text: &str) -> Result<Self, String> {
                match text {
                    $($text => Ok($name::$variant),)+
                    other => Err(format!(
                        "'{other}' is not a {} (expected one of: {})",
                        stringify!($name).to_lowercase(),
                        [$($text),+].join(", ")
                    )),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ToSql for $name {
            fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
                Ok(ToSqlOutput::from(self.as_str()))
            }
        }

        impl FromSql for $name {
            fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
                value
                    .as_str()?
                    .parse()
                    .map_err(|e: String| FromSqlError::Other(e.into()))
            }
        }
    };
}

text_enum!(
    /// Who wrote a message.
    Direction {
        /// Written here, sent to the peer.
        Out = "out",
        /// Written by the peer, received here.
        In = "in",
    }
);

text_enum!(
    /// Where a message is in its life.
    Status {
        /// Outgoing, stored here, not yet accepted by the router.
        Pending = "pending",
        /// Outgoing, accepted by the router.
        Sent = "sent",
        /// Outgoing, stored by the peer's client.
        Delivered = "delivered",
        /// Outgoing: the peer read it. Incoming: the user here read it.
        Read = "read",
        /// Outgoing, given up on.
        Failed = "failed",
        /// Incoming, stored here.
        Received = "received",
    }
);

impl Status {
    /// Whether a message of `direction` can hold this status at all.
    pub fn fits(self, direction: Direction) -> bool {
        match direction {
            Direction::Out => self != Status::Received,
            Direction::In => matches!(self, Status::Received | Status::Read),
        }
    }

    /// The status a new message starts with.
    pub fn initial(direction: Direction) -> Self {
        match direction {
            Direction::Out => Status::Pending,
            Direction::In => Status::Received,
        }
    }

    /// Progress along the delivery path; `None` for `failed`, which is off it.
    fn rank(self) -> Option<u8> {
        match self {
            Status::Pending | Status::Received => Some(0),
            Status::Sent => Some(1),
            Status::Delivered => Some(2),
            Status::Read => Some(3),
            Status::Failed => None,
        }
    }

    /// The transition rule, the only one in the code base: whether a message
    /// now at `self` moves to `next`.
    ///
    /// Status only moves forward (pending < sent < delivered < read;
    /// received < read), so a late or repeated event changes nothing.
    /// `failed` is reachable only from pending and sent. A failed message
    /// still moves to sent, delivered or read when such an event arrives:
    /// it is proof the message got through after all.
    pub fn may_become(self, next: Status) -> bool {
        // Incoming messages have their own short path.
        if self == Status::Received || next == Status::Received {
            return self == Status::Received && next == Status::Read;
        }
        match (self.rank(), next.rank()) {
            (Some(now), Some(then)) => then > now,
            (Some(_), None) => matches!(self, Status::Pending | Status::Sent),
            (None, Some(then)) => then >= 1,
            (None, None) => false,
        }
    }

    /// The column holding the time this status was reached, if any.
    pub(crate) fn time_column(self) -> &'static str {
        match self {
            Status::Pending => "created_at",
            Status::Sent => "sent_at",
            Status::Delivered => "delivered_at",
            Status::Read => "read_at",
            Status::Failed => "failed_at",
            Status::Received => "received_at",
        }
    }

    /// A short mark for the terminal.
    pub fn mark(self) -> &'static str {
        match self {
            Status::Pending => "…",
            Status::Sent => "✓",
            Status::Delivered => "✓✓",
            Status::Read => "read",
            Status::Failed => "✗ failed",
            Status::Received => "",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Status::*;

    #[test]
    fn outgoing_status_only_moves_forward() {
        assert!(Pending.may_become(Sent));
        assert!(Pending.may_become(Delivered));
        assert!(Sent.may_become(Read));
        assert!(!Read.may_become(Delivered));
        assert!(!Delivered.may_become(Sent));
        assert!(!Sent.may_become(Sent));
        assert!(!Read.may_become(Read));
    }

    #[test]
    fn failed_only_from_pending_or_sent() {
        assert!(Pending.may_become(Failed));
        assert!(Sent.may_become(Failed));
        assert!(!Delivered.may_become(Failed));
        assert!(!Read.may_become(Failed));
        assert!(!Failed.may_become(Failed));
        assert!(!Failed.may_become(Pending));
        assert!(Failed.may_become(Delivered));
    }

    #[test]
    fn incoming_received_then_read() {
        assert!(Received.may_become(Read));
        assert!(!Read.may_become(Received));
        assert!(!Received.may_become(Received));
        assert!(!Received.may_become(Sent));
        assert!(!Pending.may_become(Received));
    }

    #[test]
    fn statuses_fit_their_direction() {
        assert!(!Received.fits(Direction::Out));
        assert!(!Sent.fits(Direction::In));
        assert!(Read.fits(Direction::In) && Read.fits(Direction::Out));
    }

    #[test]
    fn text_round_trips() {
        for s in Status::ALL {
            assert_eq!(s.as_str().parse::<Status>().unwrap(), *s);
        }
        assert!("bogus".parse::<Direction>().is_err());
    }

    #[test]
    fn derived_ids_are_stable() {
        assert_eq!(MessageId::derived(b"x"), MessageId::derived(b"x"));
        assert_ne!(MessageId::derived(b"x"), MessageId::derived(b"y"));
    }
}

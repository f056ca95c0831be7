//! Newtypes for ids, offsets and timestamps.
//!
//! A record [`Offset`] counts records in a partition and is dense; it is what clients see and
//! store. It is deliberately a different type from any Raft log index (see the `raft` crate):
//! mixing the two is the bug Redpanda hit in #5356.

use std::fmt;

/// The position of a record in a partition: dense, starting at 0, identical on every replica.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    pub const ZERO: Offset = Offset(0);

    /// The offset `n` records later.
    pub fn plus(self, n: u64) -> Offset {
        Offset(self.0 + n)
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// The Raft term of the partition leader that wrote a batch (Kafka's partition leader epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct LeaderEpoch(pub i32);

/// A producer id; [`ProducerId::NONE`] marks a batch from a non-idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProducerId(pub i64);

impl ProducerId {
    pub const NONE: ProducerId = ProducerId(-1);
}

/// A producer epoch; bumped to fence older instances of the same producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProducerEpoch(pub i16);

impl ProducerEpoch {
    pub const NONE: ProducerEpoch = ProducerEpoch(-1);
}

/// A per-producer, per-partition sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Sequence(pub i32);

impl Sequence {
    pub const NONE: Sequence = Sequence(-1);
}

/// Milliseconds since the Unix epoch. A timestamp that is not known is `Option::None`, never a
/// magic zero: a zero read as "1970" made Iggy delete fresh segments at once (their #2924).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// Kafka's wire value for "no timestamp".
    pub const WIRE_NONE: i64 = -1;

    /// Reads a wire timestamp, mapping negative values (Kafka's -1) to unknown.
    pub fn from_wire(ms: i64) -> Option<Timestamp> {
        (ms >= 0).then_some(Timestamp(ms))
    }

    /// The current wall-clock time.
    pub fn now() -> Timestamp {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or(0);
        Timestamp(ms)
    }

    pub fn as_millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0)
    }
}

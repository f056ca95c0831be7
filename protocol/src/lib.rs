//! Rafka's wire-level vocabulary, shared by the broker, the client and the tools.
//!
//! - [`types`]: newtypes for every id, offset and timestamp, so that a Raft log index can never
//!   be passed where a record offset is expected, and "unknown" is never spelled `0`.
//! - [`batch`]: the record batch format (the layout of Kafka's RecordBatch v2, magic 2): a
//!   builder, a zero-copy reader over [`bytes::Bytes`], and validation.
//! - [`varint`]: the zigzag varints the record format uses.
//!
//! Architecture invariant: this crate knows nothing about storage, networking or Raft; it only
//! describes bytes. It never panics on input bytes: every malformed input is a [`BatchError`].

pub mod batch;
pub mod error;
pub mod types;
pub mod varint;

pub use batch::{
    Attributes, BatchBuilder, BatchHeader, BatchIter, BatchOptions, Compression, Header, Record,
    RecordBatch, RecordIter, TimestampType,
};
pub use error::BatchError;
pub use types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence, Timestamp};

//! Rafka's wire-level vocabulary, shared by the broker, the client and the tools.
//!
//! - [`types`]: newtypes for every id, offset and timestamp, so that a Raft log index can never
//!   be passed where a record offset is expected, and "unknown" is never spelled `0`.
//! - [`batch`]: the record batch format (the layout of Kafka's RecordBatch v2, magic 2): a
//!   builder, a zero-copy reader over [`bytes::Bytes`], and validation.
//! - [`varint`]: the zigzag varints the record format uses.
//! - [`messages`]: the protobuf messages of the client protocol (`proto/rafka.proto`, compiled
//!   by `build.rs` with protox, no system `protoc`).
//! - [`api`]: API keys, versions, and which response answers which request.
//! - [`frame`]: length-delimited framing of requests and responses.
//! - [`error_code`]: the frozen wire error codes, each marked retriable or not.
//!
//! Architecture invariant: this crate knows nothing about storage, networking or Raft; it only
//! describes bytes. It never panics on input bytes: every malformed input is an error.

pub mod api;
pub mod batch;
pub mod error;
pub mod error_code;
pub mod frame;
pub mod messages;
pub mod types;
pub mod varint;

pub use api::{ApiKey, Request};
pub use batch::{
    Attributes, BatchBuilder, BatchHeader, BatchIter, BatchOptions, Compression, Header, Record,
    RecordBatch, RecordIter, TimestampType,
};
pub use error::{BatchError, Error};
pub use error_code::ErrorCode;
pub use types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence, Timestamp};

//! Shared Raft glue for the controller group and the partition groups (openraft 0.9).
//!
//! What this crate owns:
//! - [`types`]: the one openraft type configuration every group uses. An entry's application
//!   data is a record batch ([`Batch`], a `Bytes` handle, never copied or re-encoded), so one
//!   storage implementation (the broker's segmented log) serves the controller and every
//!   partition.
//! - [`entry`]: how an openraft entry is stored as a Kafka record batch and read back. Leader
//!   blanks and membership changes become control batches: they take an offset like Kafka's
//!   transaction markers, and consumers skip them.
//! - [`transport`]: the broker-to-broker transport. Traffic of all groups between two brokers
//!   shares a few multiplexed TCP connections ("lanes"); every queue on it is bounded.
//!
//! What it does not own: storage (the broker's `replica` module implements openraft's storage
//! traits over the segmented log) and what a group's state machine means.

pub mod entry;
pub mod error;
pub mod transport;
pub mod types;

pub use error::{Error, Result};
pub use types::{Applied, Batch, GroupId, NodeId, Raft, TypeConfig};

//! The Rafka broker.
//!
//! - [`log`]: the segmented log of one partition replica (segments, indexes, recovery,
//!   retention, flushing). It is the partition's storage and, with replication, its Raft log.
//! - [`fs`]: the file layer the log writes through, with a crash simulator for tests and for
//!   the fault suite's power-loss nemesis.
//! - [`cluster`]: this broker in the cluster: the controller group, hosted partition replicas
//!   (each a Raft group), the peer endpoint, leader hints, the data directory layout.
//! - [`replica`]: openraft storage over the log, and the partition and controller state machines.
//! - [`group`]: the consumer-group coordinator on the internal `__consumer_offsets` topic.
//! - [`txn`]: the transaction coordinator on the internal `__transaction_state` topic.
//! - [`topics`]: topic rules: names, limits, config keys and how overrides combine.
//! - [`server`]: the client protocol listener, connections, and one handler per API.
//! - [`http`]: `/metrics`, `/health` and `/ready`.
//! - [`node`]: the broker process: start-up, housekeeping, graceful shutdown.
//! - [`config`]: flags, environment and TOML configuration of the broker process.
//! - [`error`]: the crate's error type and its mapping to wire error codes.

pub mod cluster;
pub mod config;
pub mod error;
pub mod fs;
pub mod group;
pub mod http;
pub mod log;
pub mod metrics;
pub mod node;
pub mod replica;
pub mod server;
pub mod topics;
pub mod txn;

pub use error::{Error, ErrorClass, Result};

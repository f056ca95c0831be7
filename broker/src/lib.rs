//! The Rafka broker.
//!
//! - [`log`]: the segmented log of one partition replica (segments, indexes, recovery,
//!   retention, flushing). It is the partition's storage and, with replication, its Raft log.
//! - [`fs`]: the file layer the log writes through, with a crash simulator for tests and for
//!   the fault suite's power-loss nemesis.
//! - [`topics`]: topics and partitions hosted here, the data directory layout, high watermarks.
//! - [`server`]: the client protocol listener, connections, and one handler per API.
//! - [`http`]: `/metrics`, `/health` and `/ready`.
//! - [`node`]: the broker process: start-up, housekeeping, graceful shutdown.
//! - [`config`]: flags, environment and TOML configuration of the broker process.
//! - [`error`]: the crate's error type and its mapping to wire error codes.

pub mod config;
pub mod error;
pub mod fs;
pub mod http;
pub mod log;
pub mod node;
pub mod server;
pub mod topics;

pub use error::{Error, ErrorClass, Result};

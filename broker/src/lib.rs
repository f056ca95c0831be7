//! The Rafka broker.
//!
//! - [`log`]: the segmented log of one partition replica (segments, indexes, recovery,
//!   retention, flushing). It is the partition's storage and, with replication, its Raft log.
//! - [`fs`]: the file layer the log writes through, with a crash simulator for tests and for
//!   the fault suite's power-loss nemesis.
//! - [`error`]: the crate's error type.
//!
//! The network server, the controller and replication arrive with their issues; see
//! ARCHITECTURE.md for where they will sit.

pub mod error;
pub mod fs;
pub mod log;

pub use error::{Error, ErrorClass, Result};

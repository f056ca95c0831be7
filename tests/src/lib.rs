//! Rafka's integration tests (in `tests/tests/`) and, later, the `rafka-jepsen` fault suite.
//!
//! Tests here drive real broker processes over real TCP with real files; unit tests live beside
//! the code they test. [`harness`] starts and stops brokers and finds the binaries.

pub mod checksums;
pub mod cluster;
pub mod compose;
pub mod harness;
pub mod jepsen;
pub mod proxy;

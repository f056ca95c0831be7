//! Rafka's Rust client: producer, consumer and admin, and the `rafka` command-line client.
//!
//! The network client arrives with the client protocol (issue 3). Today this crate re-exports the
//! record batch vocabulary that producers use to build batches.

pub use rafka_protocol as protocol;

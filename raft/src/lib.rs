//! Shared Raft glue for the controller group and the per-partition groups (openraft 0.9).
//!
//! It will own the `LogIndex` newtype and the one place where a Raft log index is translated to
//! a record offset; replication arrives with the cluster issue (issue 4). Until then this crate
//! holds no code on purpose: the partition log it will drive is `rafka_broker::log`.

pub use rafka_protocol::Offset;

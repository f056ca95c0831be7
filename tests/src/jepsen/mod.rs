//! `rafka-jepsen`, the fault suite: start a cluster, run client workers against it while a
//! nemesis injects faults, heal, read everything back, and check the history for anomalies.
//!
//! - [`history`]: the operations recorded (`history.jsonl`), the one interface between the
//!   parts.
//! - [`checker`]: finds anomalies in a history alone (lost, duplicated, reordered, ...).
//! - [`plot`]: latency and throughput PNGs with the nemesis windows shaded.

pub mod checker;
pub mod history;
pub mod plot;

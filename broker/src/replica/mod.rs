//! Raft storage and state machines of this broker's groups (openraft 0.9).
//!
//! - [`store`]: `RaftLogStorage` over the segmented log, shared by every group: the log is the
//!   Raft log, and the one Raft-index-to-offset translation lives there.
//! - [`partition_sm`]: a partition's state machine (the high watermark, producer state).
//! - [`producers`]: per-producer sequence state of a partition (idempotent produce).
//! - [`controller_sm`]: the controller's state machine (cluster metadata).
//! - [`raft_config`]: timing and snapshot settings per kind of group.

// openraft's storage traits fix the error type (`StorageError`, about 200 bytes).
#[allow(clippy::result_large_err)]
pub mod controller_sm;
#[allow(clippy::result_large_err)]
pub mod partition_sm;
pub mod producers;
#[allow(clippy::result_large_err)]
pub mod store;

use std::sync::Arc;

use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use rafka_raft::types::{LogId, StorageError};

/// A state machine's storage error, as openraft wants it.
pub(crate) fn sm_err(verb: ErrorVerb, msg: String) -> StorageError {
    StorageIOError::new(
        ErrorSubject::StateMachine,
        verb,
        openraft::AnyError::error(msg),
    )
    .into()
}

/// The id of a snapshot ending at `last`: `term-index`, or `empty`.
pub(crate) fn snapshot_id(last: Option<LogId>) -> String {
    last.map_or("empty".to_string(), |a| {
        format!("{}-{}", a.leader_id.term, a.index)
    })
}

/// Heartbeat interval of every group.
pub const HEARTBEAT_INTERVAL_MS: u64 = 250;
/// Election timeouts: a follower that hears nothing from a leader for a random time in this
/// range stands for election. Failover time is dominated by it.
pub const ELECTION_TIMEOUT_MIN_MS: u64 = 1000;
pub const ELECTION_TIMEOUT_MAX_MS: u64 = 2000;
/// Leader lease of partition groups (their `election_timeout` range).
pub const PARTITION_LEASE_MIN_MS: u64 = 500;
pub const PARTITION_LEASE_MAX_MS: u64 = 800;
/// Most entries one AppendEntries carries.
pub const APPEND_ENTRIES_MAX: u64 = 256;

/// Settings of a partition group: no automatic snapshots or purges (a partition's log is its
/// data; retention decides what goes), a snapshot is built on demand for lagging followers.
/// No heartbeats and no election timers of its own: the broker's failure detector
/// (`Cluster::run_elections`), fed by one announcement per peer per tick, starts elections.
/// The election timeout then only sets the leader lease (how long a voter that heard from
/// a leader refuses to vote for another), so it is short.
pub fn partition_raft_config() -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "rafka-partition".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: PARTITION_LEASE_MIN_MS,
        election_timeout_max: PARTITION_LEASE_MAX_MS,
        enable_heartbeat: false,
        enable_elect: false,
        // With heartbeats and elections off, openraft's tick (every 1.5 heartbeat intervals)
        // has nothing left to do for a partition (its other duty, stepping a leader down after a
        // membership change removed it, never arises: partition membership is fixed at
        // creation), yet it woke every group's task ~7 times a second.
        enable_tick: false,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_policy: openraft::SnapshotPolicy::Never,
        max_in_snapshot_log_to_keep: 1 << 40,
        ..openraft::Config::default()
    };
    Arc::new(c.validate().expect("partition Raft config is valid"))
}

/// Settings of the controller group: snapshots of the metadata every
/// [`controller_sm::CONTROLLER_SNAPSHOT_EVERY`] entries let its log be purged.
pub fn controller_raft_config() -> Arc<openraft::Config> {
    let c = openraft::Config {
        cluster_name: "rafka-controller".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL_MS,
        election_timeout_min: ELECTION_TIMEOUT_MIN_MS,
        election_timeout_max: ELECTION_TIMEOUT_MAX_MS,
        max_payload_entries: APPEND_ENTRIES_MAX,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(
            controller_sm::CONTROLLER_SNAPSHOT_EVERY,
        ),
        max_in_snapshot_log_to_keep: 100,
        ..openraft::Config::default()
    };
    Arc::new(c.validate().expect("controller Raft config is valid"))
}

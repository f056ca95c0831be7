//! The consumer-group coordinator.
//!
//! Owns: the internal topic `__consumer_offsets` (created on the first FindCoordinator), the
//! mapping from group id to its partition, and one [`Shard`] per partition of that topic this
//! broker leads. A shard holds the groups of its partition in memory and persists every
//! change as a record in the partition before answering, so the state is exactly as durable as
//! a produced record (acks=all). When leadership moves, the new leader's shard writes a
//! barrier record, then replays the partition from its log start. A snapshot record replaces
//! everything before it; one is written once the records since the last reach half a segment
//! (or twice the last snapshot's size, whichever is more), and retention then deletes the
//! segments wholly before it on every replica, so replay stays short.
//!
//! - [`assignor`]: range, round-robin and sticky assignment (pure functions).
//! - [`state`]: one group: membership, reconciliation, commit rules (pure, unit-tested).
//! - [`records`]: the records a shard writes, and replay.
//!
//! A shard serialises its requests (one async mutex held across the write); a write that fails
//! or whose outcome is unknown poisons the shard: it is dropped and rebuilt from the log, so
//! memory never holds a change the log does not.

pub mod assignor;
pub mod records;
pub mod state;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rafka_protocol::api::{acks, OFFSETS_TOPIC};
use rafka_protocol::messages::*;
use rafka_protocol::{ErrorCode, Offset};
use rafka_raft::NodeId;
use tokio::sync::watch;

use crate::cluster::{Cluster, Partition};
use crate::error::{Error, Result};
use crate::replica::controller_sm::Command;
use assignor::Tp;
use records::CoordRecord;
use state::{Answer, Committed, Group, GroupError, Heartbeat, Limits};

/// Segment size of `__consumer_offsets` (at most; see `ensure_offsets_topic`).
const OFFSETS_SEGMENT_BYTES_MAX: u64 = 16 << 20;

/// Longest accepted group id.
pub const GROUP_ID_BYTES_MAX: usize = 255;

/// Settings of the coordinator.
#[derive(Debug, Clone)]
pub struct GroupConfig {
    /// Partitions of `__consumer_offsets` when this cluster creates it.
    pub offsets_partitions: u32,
    /// Session timeout when a member asks for none, and the accepted range.
    pub session_timeout_ms_default: u32,
    pub session_timeout_ms_min: u32,
    pub session_timeout_ms_max: u32,
    /// How often members heartbeat once they have reached their target.
    pub heartbeat_interval_ms: u32,
    /// How often a member that is still reconciling heartbeats.
    pub reconcile_interval_ms: u32,
    pub members_per_group_max: usize,
    /// How long one write to the offsets log may take before its outcome is unknown.
    pub write_timeout: Duration,
    /// A member asked to revoke partitions that still owns them after this long is evicted
    /// (the default matches the client's default `max_poll_interval_ms`: a member that polls
    /// revokes within it).
    pub revocation_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            offsets_partitions: 8,
            session_timeout_ms_default: 10_000,
            session_timeout_ms_min: 1_000,
            session_timeout_ms_max: 300_000,
            heartbeat_interval_ms: 1_000,
            reconcile_interval_ms: 100,
            members_per_group_max: 1_000,
            write_timeout: Duration::from_secs(10),
            revocation_timeout: Duration::from_secs(300),
        }
    }
}

/// The partition of `__consumer_offsets` that holds `group` (a stable hash: CRC-32 of the id).
pub fn partition_for(group: &str, partitions: u32) -> u32 {
    crc32fast::hash(group.as_bytes()) % partitions.max(1)
}

fn validate_group_id(group: &str) -> Result<(), (ErrorCode, String)> {
    if group.is_empty() || group.len() > GROUP_ID_BYTES_MAX {
        return Err((
            ErrorCode::InvalidGroupId,
            format!("a group id must have 1..={GROUP_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn group_error_code(e: &GroupError) -> ErrorCode {
    match e {
        GroupError::UnknownMember(_) => ErrorCode::UnknownMemberId,
        GroupError::FencedEpoch { .. } => ErrorCode::FencedMemberEpoch,
        GroupError::StaleEpoch(_) => ErrorCode::StaleMemberEpoch,
        GroupError::NonEmpty(_) => ErrorCode::NonEmptyGroup,
        GroupError::UnsupportedAssignor(_) => ErrorCode::UnsupportedAssignor,
        GroupError::Full(_) => ErrorCode::GroupMaxSizeReached,
        GroupError::Invalid(_) => ErrorCode::InvalidRequest,
    }
}

/// FindCoordinator's answer for a coordinator that is the leader of `topic`-`p` (an internal
/// topic: `__consumer_offsets` or `__transaction_state`).
pub(crate) fn coordinator_at(cluster: &Cluster, topic: &str, p: u32) -> FindCoordinatorResponse {
    let fail = |(code, msg): Refusal| FindCoordinatorResponse {
        error_code: code.code(),
        error_message: msg,
        node_id: -1,
        host: String::new(),
        port: 0,
    };
    let state = cluster.state();
    let Some(record) = state.topics.get(topic) else {
        return fail((
            ErrorCode::CoordinatorNotAvailable,
            format!("{topic} does not exist yet"),
        ));
    };
    let view = cluster.view(record, p);
    let Some(leader) = view.leader else {
        return fail((
            ErrorCode::CoordinatorNotAvailable,
            format!("{topic}-{p} has no leader yet"),
        ));
    };
    let Some(addr) = state.brokers.get(&leader).map(|b| b.client_addr.clone()) else {
        return fail((
            ErrorCode::CoordinatorNotAvailable,
            format!("broker {leader} has not registered yet"),
        ));
    };
    let (host, port) = crate::server::metadata::host_port(&addr);
    FindCoordinatorResponse {
        error_code: 0,
        error_message: String::new(),
        node_id: leader as i32,
        host,
        port,
    }
}

/// A refusal as carried in a response: code and message.
type Refusal = (ErrorCode, String);

fn from_error(e: &Error) -> Refusal {
    (e.error_code(), e.to_string())
}

fn tps_to_wire(set: &BTreeSet<Tp>) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for (t, p) in set {
        by_topic.entry(t).or_default().push(*p);
    }
    by_topic
        .into_iter()
        .map(|(t, partitions)| TopicPartitions {
            topic: t.to_string(),
            partitions,
        })
        .collect()
}

fn tps_from_wire(list: &[TopicPartitions]) -> BTreeSet<Tp> {
    list.iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect()
}

/// The groups of one partition of `__consumer_offsets`, on its leader.
pub struct Shard {
    index: u32,
    term: u64,
    partition: Arc<Partition>,
    loaded: AtomicBool,
    failed: AtomicBool,
    state: tokio::sync::Mutex<ShardState>,
}

#[derive(Default)]
struct ShardState {
    groups: BTreeMap<String, Group>,
    /// Offsets committed inside transactions that are still open.
    pending: records::TxnPending,
    /// Bytes of records written (or replayed) since the last snapshot, and that snapshot's
    /// size.
    bytes_since_snapshot: u64,
    last_snapshot_bytes: u64,
}

impl Shard {
    /// Whether this shard may act: not poisoned, and its partition still led here in the
    /// term the shard was loaded in. A shard of an earlier term (leadership lost and won back)
    /// holds state its successor may have moved past: a task still holding it (a marker
    /// completion) must not write that stale state back.
    fn usable(&self) -> bool {
        !self.failed.load(Ordering::Acquire)
            && self.partition.is_leader()
            && self.partition.leader().1 == self.term
    }

    /// Writes `records` as one batch and waits until it is committed. Any failure poisons
    /// the shard (memory may hold what the log does not): it is rebuilt from the log.
    async fn write(
        &self,
        st: &mut ShardState,
        mut records: Vec<CoordRecord>,
        config: &GroupConfig,
    ) -> Result<(), Refusal> {
        if records.is_empty() {
            return Ok(());
        }
        let mut batch = records::encode(&records);
        st.bytes_since_snapshot += batch.len() as u64;
        let segment_bytes = self.partition.log.config().segment_bytes;
        if st.bytes_since_snapshot >= (segment_bytes / 2).max(2 * st.last_snapshot_bytes) {
            // `groups` already holds this change, so the snapshot covers it too.
            records.push(records::snapshot(&st.groups, &st.pending));
            batch = records::encode(&records);
            st.last_snapshot_bytes = batch.len() as u64;
            st.bytes_since_snapshot = 0;
        }
        match self
            .partition
            .append(batch, acks::ALL, config.write_timeout, None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => {
                self.failed.store(true, Ordering::Release);
                tracing::warn!(partition = self.index, error = %e, "offsets log write failed; the coordinator shard will reload");
                let code = match e {
                    Error::NotLeader { .. } => ErrorCode::NotCoordinator,
                    _ => e.error_code(),
                };
                Err((code, e.to_string()))
            }
        }
    }

    /// Rebuilds the shard from its partition: barrier write, then replay up to the high
    /// watermark.
    async fn load(self: Arc<Self>, node: NodeId, config: GroupConfig) {
        let started = Instant::now();
        let mut st = self.state.lock().await;
        let barrier = records::encode(&[CoordRecord::Barrier {
            node,
            term: self.term,
        }]);
        if let Err(e) = self
            .partition
            .append(barrier, acks::ALL, config.write_timeout, None)
            .await
        {
            tracing::info!(partition = self.index, error = %e, "coordinator barrier failed");
            self.failed.store(true, Ordering::Release);
            return;
        }
        let part = Arc::clone(&self.partition);
        let replay = crate::server::blocking(move || {
            let mut groups = BTreeMap::new();
            let mut pending = records::TxnPending::new();
            let (mut count, mut bytes) = (0u64, 0u64);
            records::read_committed(&part.log, part.high_watermark(), |at, batches| {
                bytes += batches.len() as u64;
                let recs = records::decode(batches).map_err(|reason| Error::Corrupt {
                    path: part.log.dir().to_path_buf(),
                    position: at.0,
                    reason,
                })?;
                count += recs.len() as u64;
                for r in recs {
                    records::apply(&mut groups, &mut pending, r);
                }
                Ok(())
            })?;
            Ok((groups, pending, count, bytes))
        })
        .await;
        match replay {
            Ok((groups, pending, count, bytes)) => {
                let now = Instant::now();
                st.groups = groups;
                st.pending = pending;
                for g in st.groups.values_mut() {
                    g.start_sessions(now);
                }
                st.bytes_since_snapshot = bytes;
                self.loaded.store(true, Ordering::Release);
                tracing::info!(
                    partition = self.index,
                    term = self.term,
                    groups = st.groups.len(),
                    records = count,
                    ms = started.elapsed().as_millis() as u64,
                    "coordinator loaded"
                );
                metrics::histogram!("rafka_group_coordinator_load_seconds")
                    .record(started.elapsed().as_secs_f64());
            }
            Err(e) => {
                tracing::error!(partition = self.index, error = %e, "coordinator replay failed");
                self.failed.store(true, Ordering::Release);
            }
        }
    }
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let led: Vec<u32> = self.shards().keys().copied().collect();
        write!(f, "Coordinator(leads {OFFSETS_TOPIC} partitions {led:?})")
    }
}

/// See the module documentation.
pub struct Coordinator {
    cluster: Arc<Cluster>,
    config: GroupConfig,
    shards: Mutex<HashMap<u32, Arc<Shard>>>,
    creating: tokio::sync::Mutex<()>,
    next_member: AtomicU64,
}

impl Coordinator {
    pub fn new(cluster: Arc<Cluster>, config: GroupConfig) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            cluster,
            config,
            shards: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            next_member: AtomicU64::new(0),
        })
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Shard>>> {
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn offsets_partitions(&self) -> Option<u32> {
        self.cluster
            .state()
            .topics
            .get(OFFSETS_TOPIC)
            .map(|t| t.partitions.len() as u32)
    }

    /// A new member id: this broker, a random part, and a counter (unique across failovers).
    fn new_member_id(&self) -> String {
        let n = self.next_member.fetch_add(1, Ordering::Relaxed);
        format!(
            "{}-{:016x}-{n}",
            self.cluster.node_id,
            rand::random::<u64>()
        )
    }

    /// Creates `__consumer_offsets` if it does not exist yet.
    async fn ensure_offsets_topic(&self) -> Result<u32, Refusal> {
        if let Some(n) = self.offsets_partitions() {
            return Ok(n);
        }
        let _one = self.creating.lock().await;
        if let Some(n) = self.offsets_partitions() {
            return Ok(n);
        }
        let voters = self.cluster.state().voters.len().max(1) as u32;
        let configs: BTreeMap<String, String> = [
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "-1".to_string()),
            // Small segments let snapshots retire old records soon; never above the
            // broker's default (tests shrink that to see compaction happen).
            (
                "segment.bytes".to_string(),
                (OFFSETS_SEGMENT_BYTES_MAX.min(self.cluster.defaults().segment_bytes)).to_string(),
            ),
        ]
        .into();
        let created = self
            .cluster
            .propose(Command::CreateTopic {
                name: OFFSETS_TOPIC.to_string(),
                partitions: self.config.offsets_partitions,
                replication_factor: voters.min(3),
                configs,
            })
            .await;
        match created {
            Ok(()) => {
                tracing::info!(
                    partitions = self.config.offsets_partitions,
                    "created {OFFSETS_TOPIC}"
                );
            }
            Err(Error::Refused(ErrorCode::TopicAlreadyExists, _)) => {}
            Err(e) => return Err(from_error(&e)),
        }
        Err((
            ErrorCode::CoordinatorNotAvailable,
            format!("{OFFSETS_TOPIC} is being created"),
        ))
    }

    /// FindCoordinator: the leader of the group's partition.
    pub async fn find(&self, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
        let fail = |(code, msg): Refusal| FindCoordinatorResponse {
            error_code: code.code(),
            error_message: msg,
            node_id: -1,
            host: String::new(),
            port: 0,
        };
        if req.key_type != rafka_protocol::api::coordinator_type::GROUP {
            return fail((
                ErrorCode::InvalidRequest,
                format!("unknown coordinator key type {}", req.key_type),
            ));
        }
        if let Err(r) = validate_group_id(&req.key) {
            return fail(r);
        }
        let n = match self.ensure_offsets_topic().await {
            Ok(n) => n,
            Err(r) => return fail(r),
        };
        coordinator_at(&self.cluster, OFFSETS_TOPIC, partition_for(&req.key, n))
    }

    /// The loaded shard that holds `group`, or why there is none here.
    fn shard_for(&self, group: &str) -> Result<Arc<Shard>, Refusal> {
        validate_group_id(group)?;
        let Some(n) = self.offsets_partitions() else {
            return Err((
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} does not exist yet"),
            ));
        };
        let p = partition_for(group, n);
        let shard = self.shards().get(&p).cloned();
        match shard {
            Some(s) if s.usable() && s.loaded.load(Ordering::Acquire) => Ok(s),
            Some(s) if s.usable() => Err((
                ErrorCode::CoordinatorLoadInProgress,
                format!("coordinator for {OFFSETS_TOPIC}-{p} is loading"),
            )),
            _ => Err((
                ErrorCode::NotCoordinator,
                format!(
                    "broker {} does not coordinate group {group:?}",
                    self.cluster.node_id
                ),
            )),
        }
    }

    fn topic_size(&self) -> impl Fn(&str) -> Option<u32> {
        let state = self.cluster.state();
        move |t: &str| {
            if t == OFFSETS_TOPIC {
                return None;
            }
            state.topics.get(t).map(|r| r.partitions.len() as u32)
        }
    }

    /// ConsumerGroupHeartbeat.
    pub async fn heartbeat(
        &self,
        req: ConsumerGroupHeartbeatRequest,
        client_host: String,
    ) -> ConsumerGroupHeartbeatResponse {
        let fail = |(code, msg): Refusal| ConsumerGroupHeartbeatResponse {
            error_code: code.code(),
            error_message: msg,
            member_id: String::new(),
            member_epoch: 0,
            heartbeat_interval_ms: 0,
            assignment: Vec::new(),
        };
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err(r) => return fail(r),
        };
        let c = &self.config;
        let session = if req.session_timeout_ms == 0 {
            c.session_timeout_ms_default
        } else {
            req.session_timeout_ms
        };
        if !(c.session_timeout_ms_min..=c.session_timeout_ms_max).contains(&session) {
            return fail((
                ErrorCode::InvalidRequest,
                format!(
                    "session_timeout_ms {session} is outside {}..={}",
                    c.session_timeout_ms_min, c.session_timeout_ms_max
                ),
            ));
        }
        let hb = Heartbeat {
            member_id: req.member_id,
            member_epoch: req.member_epoch,
            instance_id: (!req.instance_id.is_empty()).then_some(req.instance_id),
            client_id: req.client_id,
            client_host,
            subscribed: req.subscribed_topics.into_iter().collect(),
            assignor: req.assignor,
            session_timeout_ms: session,
            owned: tps_from_wire(&req.owned),
        };
        let sizes = self.topic_size();
        let mut st = shard.state.lock().await;
        if !shard.usable() {
            return fail((ErrorCode::NotCoordinator, "coordinator moved".into()));
        }
        let group_id = req.group_id.clone();
        let limits = Limits {
            members_max: c.members_per_group_max,
        };
        let now = Instant::now();
        let group = st.groups.entry(group_id.clone()).or_default();
        let was_stable = group.is_stable();
        let answer: Answer =
            match group.heartbeat(hb, &sizes, &mut || self.new_member_id(), &limits, now) {
                Ok(a) => a,
                Err(e) => return fail((group_error_code(&e), e.to_string())),
            };
        if was_stable && !group.is_stable() {
            metrics::counter!("rafka_group_rebalances_total").increment(1);
        }
        if group.is_stable() {
            if let Some(since) = group.rebalance_started.take() {
                metrics::histogram!("rafka_group_rebalance_seconds")
                    .record(since.elapsed().as_secs_f64());
            }
        }
        if answer.changed {
            let meta = group.meta.clone();
            let rec = CoordRecord::Group {
                group: group_id,
                meta,
            };
            if let Err(r) = shard.write(&mut st, vec![rec], c).await {
                return fail(r);
            }
        }
        ConsumerGroupHeartbeatResponse {
            error_code: 0,
            error_message: String::new(),
            member_id: answer.member_id,
            member_epoch: answer.member_epoch,
            heartbeat_interval_ms: if answer.pending {
                c.reconcile_interval_ms
            } else {
                c.heartbeat_interval_ms
            },
            assignment: tps_to_wire(&answer.assignment),
        }
    }

    /// OffsetCommit: checked against the group, written as one record, answered once
    /// committed.
    pub async fn commit(&self, req: OffsetCommitRequest) -> OffsetCommitResponse {
        let outcome = async {
            let shard = self.shard_for(&req.group_id)?;
            let sizes = self.topic_size();
            let now_ms = rafka_protocol::Timestamp::now().as_millis();
            let mut offsets = Vec::new();
            for t in &req.topics {
                for p in &t.partitions {
                    if sizes(&t.name).is_none_or(|n| p.partition >= n) {
                        return Err((
                            ErrorCode::UnknownTopicOrPartition,
                            format!("unknown partition {}-{}", t.name, p.partition),
                        ));
                    }
                    offsets.push((
                        (t.name.clone(), p.partition),
                        Committed {
                            offset: p.offset,
                            metadata: p.metadata.clone(),
                            timestamp_ms: now_ms,
                        },
                    ));
                }
            }
            let mut st = shard.state.lock().await;
            if !shard.usable() {
                return Err((ErrorCode::NotCoordinator, "coordinator moved".into()));
            }
            let tps: Vec<Tp> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
            let group = st.groups.entry(req.group_id.clone()).or_default();
            group
                .check_commit(&req.member_id, req.member_epoch, &tps)
                .map_err(|e| (group_error_code(&e), e.to_string()))?;
            for (tp, c) in &offsets {
                group.offsets.insert(tp.clone(), c.clone());
            }
            let rec = CoordRecord::Offsets {
                group: req.group_id.clone(),
                offsets,
            };
            shard.write(&mut st, vec![rec], &self.config).await
        }
        .await;
        match outcome {
            Ok(()) => OffsetCommitResponse {
                error_code: 0,
                error_message: String::new(),
            },
            Err((code, msg)) => OffsetCommitResponse {
                error_code: code.code(),
                error_message: msg,
            },
        }
    }

    /// TxnOffsetCommit: offsets that count only if producer `producer_id`'s transaction
    /// commits. Checked like an OffsetCommit (the member must own the partitions), and the
    /// producer's epoch must not be behind the partition's (a fenced producer is refused).
    pub async fn txn_commit(&self, req: TxnOffsetCommitRequest) -> TxnOffsetCommitResponse {
        let outcome = async {
            let shard = self.shard_for(&req.group_id)?;
            let sizes = self.topic_size();
            let now_ms = rafka_protocol::Timestamp::now().as_millis();
            let epoch = i16::try_from(req.producer_epoch).map_err(|_| {
                (
                    ErrorCode::InvalidRequest,
                    format!("producer epoch {} is out of range", req.producer_epoch),
                )
            })?;
            if req.producer_id < 0 || epoch < 0 {
                return Err((
                    ErrorCode::InvalidRequest,
                    "a transactional offset commit needs a producer id and epoch".into(),
                ));
            }
            let mut offsets = Vec::new();
            for t in &req.topics {
                for p in &t.partitions {
                    if sizes(&t.name).is_none_or(|n| p.partition >= n) {
                        return Err((
                            ErrorCode::UnknownTopicOrPartition,
                            format!("unknown partition {}-{}", t.name, p.partition),
                        ));
                    }
                    offsets.push((
                        (t.name.clone(), p.partition),
                        Committed {
                            offset: p.offset,
                            metadata: p.metadata.clone(),
                            timestamp_ms: now_ms,
                        },
                    ));
                }
            }
            let mut st = shard.state.lock().await;
            if !shard.usable() {
                return Err((ErrorCode::NotCoordinator, "coordinator moved".into()));
            }
            // Markers carry the epoch after their transaction: one at or above this request's
            // epoch means its transaction has ended (or another instance took over).
            let known = shard
                .partition
                .producers
                .table()
                .get(req.producer_id)
                .map(|e| e.epoch);
            if known.is_some_and(|k| epoch < k) {
                return Err((
                    ErrorCode::InvalidProducerEpoch,
                    format!(
                        "producer {} epoch {epoch} is fenced (the partition has epoch {})",
                        req.producer_id,
                        known.unwrap_or_default()
                    ),
                ));
            }
            let tps: Vec<Tp> = offsets.iter().map(|(tp, _)| tp.clone()).collect();
            let group = st.groups.entry(req.group_id.clone()).or_default();
            group
                .check_commit(&req.member_id, req.member_epoch, &tps)
                .map_err(|e| (group_error_code(&e), e.to_string()))?;
            st.pending
                .entry(req.producer_id)
                .or_default()
                .push((req.group_id.clone(), offsets.clone()));
            let rec = CoordRecord::TxnOffsets {
                producer_id: req.producer_id,
                group: req.group_id.clone(),
                offsets,
            };
            shard.write(&mut st, vec![rec], &self.config).await
        }
        .await;
        let (error_code, error_message) = match outcome {
            Ok(()) => (0, String::new()),
            Err((code, msg)) => (code.code(), msg),
        };
        TxnOffsetCommitResponse {
            error_code,
            error_message,
        }
    }

    /// A transaction marker for `producer_id` is committed on partition `index` of
    /// `__consumer_offsets`: its pending offsets are committed or dropped. If this broker
    /// does not hold the shard loaded, its next load replays the marker instead.
    pub async fn on_txn_marker(&self, index: u32, producer_id: i64, commit: bool) {
        let shard = self.shards().get(&index).cloned();
        let Some(shard) = shard else { return };
        if !shard.usable() || !shard.loaded.load(Ordering::Acquire) {
            return;
        }
        let mut st = shard.state.lock().await;
        let ShardState {
            groups, pending, ..
        } = &mut *st;
        records::settle(groups, pending, producer_id, commit);
    }

    /// OffsetFetch.
    pub async fn fetch_offsets(&self, req: OffsetFetchRequest) -> OffsetFetchResponse {
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err((code, msg)) => {
                return OffsetFetchResponse {
                    error_code: code.code(),
                    error_message: msg,
                    topics: Vec::new(),
                }
            }
        };
        let st = shard.state.lock().await;
        let empty = BTreeMap::new();
        let offsets = st.groups.get(&req.group_id).map_or(&empty, |g| &g.offsets);
        let wanted: Vec<Tp> = if req.partitions.is_empty() {
            offsets.keys().cloned().collect()
        } else {
            tps_from_wire(&req.partitions).into_iter().collect()
        };
        let mut topics: BTreeMap<String, Vec<OffsetFetchPartition>> = BTreeMap::new();
        for tp in wanted {
            let c = offsets.get(&tp);
            topics
                .entry(tp.0.clone())
                .or_default()
                .push(OffsetFetchPartition {
                    partition: tp.1,
                    offset: c.map_or(-1, |c| c.offset as i64),
                    metadata: c.map(|c| c.metadata.clone()).unwrap_or_default(),
                    commit_timestamp_ms: c.map_or(-1, |c| c.timestamp_ms),
                });
        }
        OffsetFetchResponse {
            error_code: 0,
            error_message: String::new(),
            topics: topics
                .into_iter()
                .map(|(name, partitions)| OffsetFetchTopic { name, partitions })
                .collect(),
        }
    }

    /// ListGroups: the groups of every loaded shard on this broker.
    pub async fn list(&self) -> ListGroupsResponse {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let mut groups = Vec::new();
        for s in shards {
            if !s.usable() || !s.loaded.load(Ordering::Acquire) {
                continue;
            }
            let st = s.state.lock().await;
            for (id, g) in &st.groups {
                groups.push(ListedGroup {
                    group_id: id.clone(),
                    state: g.state_name().to_string(),
                    members: g.meta.members.len() as u32,
                });
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        ListGroupsResponse {
            error_code: 0,
            error_message: String::new(),
            groups,
        }
    }

    /// DescribeGroup.
    pub async fn describe(&self, req: DescribeGroupRequest) -> DescribeGroupResponse {
        let mut resp = DescribeGroupResponse {
            error_code: 0,
            error_message: String::new(),
            group_id: req.group_id.clone(),
            state: "dead".into(),
            group_epoch: 0,
            assignor: String::new(),
            members: Vec::new(),
        };
        let shard = match self.shard_for(&req.group_id) {
            Ok(s) => s,
            Err((code, msg)) => {
                resp.error_code = code.code();
                resp.error_message = msg;
                return resp;
            }
        };
        let st = shard.state.lock().await;
        let Some(g) = st.groups.get(&req.group_id) else {
            return resp;
        };
        resp.state = g.state_name().into();
        resp.group_epoch = g.meta.epoch;
        resp.assignor = g.assignor_name();
        resp.members = g
            .meta
            .members
            .values()
            .map(|m| GroupMemberDescription {
                member_id: m.id.clone(),
                instance_id: m.instance_id.clone().unwrap_or_default(),
                client_id: m.client_id.clone(),
                client_host: m.client_host.clone(),
                member_epoch: m.epoch,
                subscribed_topics: m.subscribed.iter().cloned().collect(),
                assignment: tps_to_wire(&m.assigned),
                target: tps_to_wire(&g.meta.target.get(&m.id).cloned().unwrap_or_default()),
            })
            .collect();
        resp
    }

    /// Keeps one shard per led partition of `__consumer_offsets` (loading new ones, dropping
    /// those whose leadership moved) and expires members whose session ended.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_gauges = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.track_leadership();
            self.expire_sessions().await;
            if last_gauges.elapsed() >= Duration::from_secs(1) {
                last_gauges = Instant::now();
                self.update_gauges().await;
            }
        }
    }

    fn track_leadership(&self) {
        let Some(n) = self.offsets_partitions() else {
            self.shards().clear();
            return;
        };
        for p in 0..n {
            let part = self.cluster.partition(OFFSETS_TOPIC, p).ok();
            let leading = part.as_ref().filter(|x| x.is_leader()).cloned();
            let mut shards = self.shards();
            match leading {
                Some(part) => {
                    let term = part.leader().1;
                    let current = shards
                        .get(&p)
                        .is_some_and(|s| s.term == term && !s.failed.load(Ordering::Acquire));
                    if !current {
                        let shard = Arc::new(Shard {
                            index: p,
                            term,
                            partition: part,
                            loaded: AtomicBool::new(false),
                            failed: AtomicBool::new(false),
                            state: tokio::sync::Mutex::new(ShardState::default()),
                        });
                        shards.insert(p, Arc::clone(&shard));
                        tokio::spawn(shard.load(self.cluster.node_id, self.config.clone()));
                    }
                }
                None => {
                    shards.remove(&p);
                }
            }
        }
    }

    async fn expire_sessions(&self) {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let now = Instant::now();
        for s in shards {
            if !s.usable() || !s.loaded.load(Ordering::Acquire) {
                continue;
            }
            let mut st = s.state.lock().await;
            if !s.usable() {
                continue;
            }
            let sizes = self.topic_size();
            let mut records = Vec::new();
            let mut forget = Vec::new();
            for (id, g) in st.groups.iter_mut() {
                let expired = g.expired(now, self.config.revocation_timeout);
                if !expired.is_empty() && g.is_stable() {
                    metrics::counter!("rafka_group_rebalances_total").increment(1);
                }
                for m in &expired {
                    tracing::info!(group = %id, member = %m, "member session expired");
                    metrics::counter!("rafka_group_sessions_expired_total").increment(1);
                    g.remove_member(m, now);
                }
                if !expired.is_empty() {
                    g.refresh_target(&sizes, now);
                    records.push(CoordRecord::Group {
                        group: id.clone(),
                        meta: g.meta.clone(),
                    });
                }
                if g.meta.members.is_empty() && g.offsets.is_empty() {
                    forget.push(id.clone());
                }
            }
            for id in forget {
                st.groups.remove(&id);
                records.push(CoordRecord::Removed { group: id });
            }
            if !records.is_empty() {
                let _ = s.write(&mut st, records, &self.config).await;
            }
        }
    }

    async fn update_gauges(&self) {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let (mut groups, mut members) = (0usize, 0usize);
        let state = self.cluster.state();
        for s in shards {
            if !s.usable() || !s.loaded.load(Ordering::Acquire) {
                continue;
            }
            let Ok(st) = s.state.try_lock() else {
                continue;
            };
            groups += st.groups.len();
            for (id, g) in &st.groups {
                members += g.meta.members.len();
                for ((topic, p), c) in &g.offsets {
                    let labels = [
                        ("group", id.clone()),
                        ("topic", topic.clone()),
                        ("partition", p.to_string()),
                    ];
                    metrics::gauge!("rafka_group_committed_offset", &labels).set(c.offset as f64);
                    if let Some(t) = state.topics.get(topic) {
                        let hw: Offset = self.cluster.view(t, *p).high_watermark;
                        let lag = hw.0.saturating_sub(c.offset);
                        metrics::gauge!("rafka_group_lag_records", &labels).set(lag as f64);
                    }
                }
            }
        }
        metrics::gauge!("rafka_groups").set(groups as f64);
        metrics::gauge!("rafka_group_members").set(members as f64);
    }
}

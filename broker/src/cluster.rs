//! This broker's place in the cluster: the controller group, the partition replicas it hosts,
//! the peer endpoint, and what it knows of leaders elsewhere.
//!
//! Data directory layout:
//!
//! ```text
//! DATA_DIR/.lock               held (flock) while a broker uses the directory
//! DATA_DIR/controller/         the controller's Raft log (segments), raft-meta.json, snapshot.json
//! DATA_DIR/topics/NAME-P/      partition P of topic NAME: its log (= its Raft log), raft-meta.json
//! DATA_DIR/replicas.json       the groups this broker has created replicas for
//! ```
//!
//! Flow: the controller's state machine publishes [`ClusterState`]; [`Cluster::reconcile`]
//! starts a Raft group for every partition assigned here and stops (and deletes) the ones no
//! longer assigned. Requests that need the controller are proposed to it, forwarded to its
//! leader over the peer transport when this broker does not lead it. Leaders of partitions
//! not hosted here are learnt from the other brokers, which announce the groups they lead
//! every [`HINT_INTERVAL`] ("leader hints").
//!
//! Invariant: a replica directory that `replicas.json` lists but that is missing means lost
//! data; the broker refuses to start rather than serve an empty log in its place. (Wiping
//! the whole data directory is fine: the replica then catches up from its peers.)

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use openraft::error::{ClientWriteError, RaftError};
use openraft::{BasicNode, ServerState};
use rafka_protocol::{ErrorCode, Offset};
use rafka_raft::transport::{self, BoxFuture, GroupNetwork, Handler, Reply, Transport};
use rafka_raft::{Batch, GroupId, NodeId, Raft};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::log::{FlushPolicy, Log, LogConfig};
use crate::replica::controller_sm::{ClusterState, Command, ControllerSm, TopicRecord};
use crate::replica::partition_sm::PartitionSm;
use crate::replica::producers::{BatchId, ProducerState, Verdict};
use crate::replica::store::{LogStore, Shared};
use crate::replica::{controller_raft_config, partition_raft_config};
use crate::topics::effective_config;

/// How often a broker announces itself (liveness) and the groups it leads to the others.
pub const HINT_INTERVAL: Duration = Duration::from_millis(250);
/// A broker not heard from for this long is presumed down: its groups elect new leaders.
pub const PEER_DEAD_AFTER: Duration = Duration::from_millis(800);
/// How often the election driver looks at the groups.
const ELECTION_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// A replica that lost its leader stands within this random delay...
const ELECTION_JITTER: Duration = Duration::from_millis(400);
/// ...and, while there is still no leader, again after a random delay in this range.
const ELECTION_RETRY_MIN: Duration = Duration::from_millis(600);
const ELECTION_RETRY_MAX: Duration = Duration::from_millis(1200);
/// A leader hint older than this is not trusted.
const HINT_TTL: Duration = Duration::from_secs(3);
/// A follower more than this many entries behind the leader is out of sync.
pub const IN_SYNC_LAG_ENTRIES_MAX: u64 = 1000;
/// How long a controller command may take, forwarding and retries included.
const PROPOSE_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a fresh controller replica waits for the lowest voter to initialise the group
/// before the lowest live voter does (see `Cluster::spawn_init_fallback`).
const CONTROLLER_INIT_FALLBACK_AFTER: Duration = Duration::from_secs(5);
/// The same for a new partition whose preferred replica is down.
const PARTITION_INIT_FALLBACK_AFTER: Duration = Duration::from_secs(3);
/// How long topic creation waits for every partition to elect a leader before answering.
const CREATE_LEADERS_WAIT: Duration = Duration::from_secs(15);

/// Peer request kinds of the broker itself.
const KIND_PROPOSE: u8 = transport::kind::BROKER_BASE;
const KIND_HINTS: u8 = transport::kind::BROKER_BASE + 1;
const KIND_YIELD: u8 = transport::kind::BROKER_BASE + 2;
const KIND_TXN_MARKER: u8 = transport::kind::BROKER_BASE + 3;

/// Called with (partition of `__consumer_offsets`, producer id, commit) once a marker there is
/// committed.
pub type MarkerHook =
    Arc<dyn Fn(u32, i64, bool) -> futures::future::BoxFuture<'static, ()> + Send + Sync>;

/// A transaction coordinator's request to a partition leader: append a marker.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct MarkerRequest {
    topic: String,
    partition: u32,
    producer_id: i64,
    epoch: i16,
    commit: bool,
    timeout_ms: u64,
}

/// How often the preferred-leader balancer looks for partitions led by another replica.
const LEADER_BALANCE_INTERVAL: Duration = Duration::from_secs(5);
/// A broker leaves leadership where it is for this long after it starts, so that a restarted
/// broker catches up (and the cluster settles) before leaders move back to it.
const LEADER_BALANCE_START_DELAY: Duration = Duration::from_secs(10);
/// Partitions handed over at once by one broker (each costs about a second of unavailability
/// for writes to that partition).
const LEADER_BALANCE_BATCH_MAX: usize = 16;
/// How long a leader refuses writes while handing its partition to the preferred replica:
/// long enough for the followers' leases to run out and the preferred replica to win.
const YIELD_HOLD: Duration = Duration::from_millis(3000);
/// How long the leader waits for the preferred replica to hold its whole log before it gives
/// up a handover.
const YIELD_CATCH_UP_WAIT: Duration = Duration::from_millis(1000);
/// The preferred replica stands this long after the leader's last append, so that every
/// follower's leader lease (`PARTITION_LEASE_MAX_MS`) has run out and they vote.
const YIELD_STAND_AFTER: Duration =
    Duration::from_millis(crate::replica::PARTITION_LEASE_MAX_MS + 200);

/// One partition replica hosted here.
pub struct Partition {
    pub topic: String,
    pub index: u32,
    pub group: GroupId,
    pub replicas: Vec<NodeId>,
    pub log: Arc<Log>,
    pub raft: Raft,
    shared: Arc<Shared>,
    high_watermark: Arc<watch::Sender<Offset>>,
    node_id: NodeId,
    /// While set, this leader is handing the partition to the preferred replica and refuses
    /// writes until the instant (see [`Cluster::run_leader_balancer`]).
    yielding: Mutex<Option<(Instant, NodeId)>>,
    /// Idempotent producers' sequence state (applied by the state machine, checked here).
    pub producers: Arc<ProducerState>,
    /// When this leader may check sequences (see `ready_term`).
    sequence_gate: Mutex<SequenceGate>,
}

/// Whether the producer state covers every entry of the log as this leader found it.
#[derive(Debug, Default)]
struct SequenceGate {
    term: Option<u64>,
    /// The last log index when the term was first seen here.
    log_end: Option<u64>,
    ready: bool,
}

impl std::fmt::Debug for Partition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Partition({}-{}, {})",
            self.topic, self.index, self.group
        )
    }
}

impl Partition {
    /// The exclusive upper bound of what readers may see: the end of the committed prefix.
    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// The exclusive bound read_committed readers may see: the first offset of the oldest
    /// open transaction, or the high watermark when none is open.
    pub fn last_stable_offset(&self) -> Offset {
        let hw = self.high_watermark();
        match self.producers.table().first_unstable_offset() {
            Some(first) if first < hw.0 => Offset(first),
            _ => hw,
        }
    }

    /// Aborted transactions with records in `from..to`.
    pub fn aborted_between(
        &self,
        from: Offset,
        to: Offset,
    ) -> Vec<crate::replica::producers::AbortedTxn> {
        self.producers.table().aborted_between(from.0, to.0)
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }

    /// The leader as this replica knows it, and the current term (= leader epoch).
    pub fn leader(&self) -> (Option<NodeId>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        (m.current_leader, m.current_term)
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.node_id)
    }

    /// `Ok` when this replica leads the partition, else `NotLeader` with the leader if known.
    pub fn ensure_leader(&self) -> Result<()> {
        if self.is_leader() {
            if let Some(to) = self.yielding_to() {
                return Err(Error::NotLeader {
                    what: format!("{}-{}", self.topic, self.index),
                    leader: Some(to),
                });
            }
            return Ok(());
        }
        Err(Error::NotLeader {
            what: format!("{}-{}", self.topic, self.index),
            leader: self.leader().0.filter(|l| *l != self.node_id),
        })
    }

    /// The preferred replica this leader is handing the partition to, while it does.
    fn yielding_to(&self) -> Option<NodeId> {
        let mut y = self.yielding.lock().unwrap_or_else(|e| e.into_inner());
        match *y {
            Some((until, to)) if Instant::now() < until => Some(to),
            Some(_) => {
                *y = None;
                None
            }
            None => None,
        }
    }

    /// On the leader: how far the log of replica `node` matches the leader's (Raft index),
    /// and the leader's last index.
    fn replication_of(&self, node: NodeId) -> (Option<u64>, u64) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let last = m.last_log_index.unwrap_or(0);
        let matched = m
            .replication
            .as_ref()
            .and_then(|r| r.get(&node).cloned())
            .map(|l| l.map_or(0, |l| l.index));
        (matched, last)
    }

    /// On the leader, asked by the preferred replica `to`: stop taking writes, wait until `to`
    /// holds the whole log, and say so. `to` then stands for election once the followers'
    /// leases have run out, and wins because no replica has a longer log. Refused (`false`)
    /// when this replica does not lead, `to` is not the preferred replica, or `to` does not
    /// catch up in time; writes resume at once then.
    async fn yield_to(&self, to: NodeId) -> bool {
        if !self.is_leader() || self.replicas.first() != Some(&to) || to == self.node_id {
            return false;
        }
        *self.yielding.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now() + YIELD_HOLD, to));
        let deadline = Instant::now() + YIELD_CATCH_UP_WAIT;
        loop {
            let (matched, last) = self.replication_of(to);
            if matched == Some(last) {
                tracing::info!(
                    topic = %self.topic,
                    partition = self.index,
                    to,
                    "handing leadership to the preferred replica"
                );
                return true;
            }
            if Instant::now() >= deadline || !self.is_leader() {
                *self.yielding.lock().unwrap_or_else(|e| e.into_inner()) = None;
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// On the leader: the replicas within [`IN_SYNC_LAG_ENTRIES_MAX`] entries of its log end
    /// (itself included), and each follower's lag in records.
    pub fn in_sync(&self) -> (Vec<NodeId>, Vec<(NodeId, u64)>) {
        let m = self.raft.metrics();
        let m = m.borrow();
        let mut isr = vec![self.node_id];
        let mut lags = Vec::new();
        let last = m.last_log_index.unwrap_or(0);
        let end = self.log.log_end_offset();
        if let Some(repl) = &m.replication {
            for (node, matched) in repl {
                if *node == self.node_id {
                    continue;
                }
                let matched_index = matched.map(|l| l.index);
                if matched_index.is_some_and(|i| i + IN_SYNC_LAG_ENTRIES_MAX >= last) {
                    isr.push(*node);
                }
                let behind = matched_index
                    .and_then(|i| self.shared.offset_of(i + 1))
                    .map_or(end.0, |o| end.0.saturating_sub(o.0));
                lags.push((*node, behind));
            }
        }
        isr.sort_unstable();
        (isr, lags)
    }

    /// Proposes the producer's batches and waits until they are committed (acks=all), or only
    /// until they are in this leader's log (acks=1: not yet fsynced nor replicated, as in
    /// Kafka).
    ///
    /// Batches of an idempotent producer are first checked against the partition's producer
    /// state (see [`crate::replica::producers`]): a duplicate is answered with its original
    /// offsets instead of being appended again, a gap or a fenced epoch refuses the whole
    /// request before anything is proposed. The check and the hand-over to Raft happen under
    /// one lock per partition, so Raft receives each producer's batches in sequence order.
    ///
    /// With a `turn`, the batches are handed to Raft only after those of the connection's
    /// previous produce request (see [`ProduceTurn`]).
    pub async fn append(
        &self,
        records: Bytes,
        acks: i32,
        timeout: Duration,
        turn: Option<ProduceTurn>,
    ) -> Result<Appended> {
        self.ensure_leader()?;
        let batches = self.log.check_append(&records)?;
        let mut ids = Vec::with_capacity(batches.len());
        let mut counts = Vec::with_capacity(batches.len());
        for b in &batches {
            let h = rafka_protocol::BatchHeader::parse(b)?;
            BatchId::validate(&h).map_err(Error::InvalidBatchHeader)?;
            if h.attributes.is_transactional() && h.producer_id == rafka_protocol::ProducerId::NONE
            {
                return Err(Error::InvalidBatchHeader(
                    "a transactional batch needs a producer id and epoch",
                ));
            }
            counts.push(h.last_offset_delta.max(0) as u64 + 1);
            ids.push(BatchId::of(&h));
        }
        let count = batches.len();
        let started = Instant::now();
        let deadline = tokio::time::Instant::now() + timeout;
        let leader_only = acks == rafka_protocol::api::acks::LEADER;
        let mut slots = Vec::with_capacity(count);
        if let Some(turn) = &turn {
            turn.wait().await;
        }
        if ids.iter().any(Option::is_some) {
            let mut pending = self.producers.pending.lock().await;
            self.ensure_leader()?;
            pending.begin(self.ready_term()?);
            let planned = {
                let table = self.producers.table();
                pending.plan(&table, &ids)
            };
            let verdicts = planned.map_err(|r| {
                metrics::counter!("rafka_produce_sequence_refusals_total", "error" => r.code.name())
                    .increment(1);
                Error::ProducerRefused {
                    code: r.code,
                    message: format!("{}-{}: {}", self.topic, self.index, r.message),
                }
            })?;
            for (b, v) in batches.into_iter().zip(verdicts) {
                slots.push(match v {
                    None | Some(Verdict::Append) => {
                        Slot::Proposed(self.submit(b, leader_only).await)
                    }
                    Some(Verdict::Duplicate(r)) => {
                        metrics::counter!("rafka_produce_duplicates_total").increment(1);
                        Slot::Known(Offset(r.base_offset))
                    }
                    Some(Verdict::InFlight(id)) => {
                        metrics::counter!("rafka_produce_duplicates_total").increment(1);
                        Slot::InFlight(id)
                    }
                });
            }
        } else {
            for b in batches {
                slots.push(Slot::Proposed(self.submit(b, leader_only).await));
            }
        }
        // Handed to Raft (or answered from the producer state): the connection's next produce
        // may go.
        drop(turn);
        let mut bases = Vec::with_capacity(count);
        for (i, slot) in slots.into_iter().enumerate() {
            let outcome = match slot {
                Slot::Known(o) => Ok(o),
                Slot::InFlight(id) => self.wait_applied(&id, deadline).await,
                Slot::Proposed(s) => s.wait(&self.shared, deadline).await,
            };
            bases.push(outcome.map_err(|e| self.write_error(e, i, count))?);
        }
        metrics::histogram!("rafka_commit_latency_seconds").record(started.elapsed().as_secs_f64());
        let base_offset = bases.first().copied().unwrap_or_default();
        let back_to_back = bases
            .windows(2)
            .zip(&counts)
            .all(|(w, n)| w[1].0 == w[0].0 + n);
        Ok(Appended {
            base_offset,
            records: counts.iter().sum(),
            batch_bases: if back_to_back {
                Vec::new()
            } else {
                bases.iter().map(|o| o.0).collect()
            },
        })
    }

    /// The error for batch `i` of `count` that has no answer. A refusal before anything was
    /// proposed is NOT_LEADER (safe to retry elsewhere); anything later is an unknown outcome:
    /// the batch may still be committed.
    fn write_error(&self, e: WriteFailure, i: usize, count: usize) -> Error {
        match e {
            WriteFailure::Write(ClientWriteError::ForwardToLeader(f)) if i == 0 => {
                Error::NotLeader {
                    what: format!("{}-{}", self.topic, self.index),
                    leader: f.leader_id.filter(|l| *l != self.node_id),
                }
            }
            WriteFailure::Stopped(_) if i == 0 => Error::NotLeader {
                what: format!("{}-{}", self.topic, self.index),
                leader: None,
            },
            WriteFailure::Write(e) => {
                Error::OutcomeUnknown(format!("batch {} of {count}: {e}", i + 1))
            }
            WriteFailure::Stopped(e) => {
                Error::OutcomeUnknown(format!("batch {} of {count}: {e}", i + 1))
            }
            WriteFailure::TimedOut(t) => Error::OutcomeUnknown(format!(
                "batch {} of {count} not done within {} ms",
                i + 1,
                t.as_millis()
            )),
        }
    }

    /// Appends a transaction marker (COMMIT or ABORT) for `producer_id` and waits until it is
    /// committed. `epoch` is the producer's epoch after the transaction (bumped by its end):
    /// from the marker on, the partition refuses the transaction's epoch.
    pub async fn write_marker(
        &self,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        timeout: Duration,
    ) -> Result<Offset> {
        self.ensure_leader()?;
        let marker = rafka_protocol::batch::transaction_marker(
            rafka_protocol::ProducerId(producer_id),
            rafka_protocol::ProducerEpoch(epoch),
            commit,
            rafka_protocol::Timestamp::now(),
        );
        let deadline = tokio::time::Instant::now() + timeout;
        let submitted = {
            let mut pending = self.producers.pending.lock().await;
            self.ensure_leader()?;
            pending.begin(self.ready_term()?);
            let stale = {
                let table = self.producers.table();
                pending.marker_is_stale(&table, producer_id, epoch)
            };
            if stale {
                // The producer has moved on past this transaction here: its marker was
                // written before, and a late copy must not end a later transaction.
                metrics::counter!("rafka_txn_stale_markers_total").increment(1);
                return Ok(self.high_watermark());
            }
            pending.fence(producer_id, epoch);
            self.submit(marker, false).await
        };
        let offset = submitted
            .wait(&self.shared, deadline)
            .await
            .map_err(|e| self.write_error(e, 0, 1))?;
        metrics::counter!(
            "rafka_txn_markers_total",
            "result" => if commit { "commit" } else { "abort" }
        )
        .increment(1);
        Ok(offset)
    }

    /// The current term, once this leader has applied an entry of its own term, so that its
    /// producer state covers every entry its predecessors wrote (an idempotent retry must not
    /// be checked against state that lacks the batch it repeats).
    fn ready_term(&self) -> Result<u64> {
        let m = self.raft.metrics();
        let m = m.borrow();
        let term = m.current_term;
        let applied = m.last_applied.map(|l| l.index);
        let mut gate = self.sequence_gate.lock().unwrap_or_else(|e| e.into_inner());
        // The first check of a term (of this process: a restarted broker may resume leading
        // its old term) notes how far the log reaches; the producer state is complete once
        // that is applied, since idempotent batches and markers appended after it went
        // through this check and are in `Pending`.
        if gate.term != Some(term) {
            *gate = SequenceGate {
                term: Some(term),
                log_end: m.last_log_index,
                ready: false,
            };
        }
        if !gate.ready {
            let caught_up = match gate.log_end {
                None => true,
                Some(end) => applied.is_some_and(|a| a >= end),
            };
            let own_term = m.last_applied.is_some_and(|l| l.leader_id.term == term);
            gate.ready = caught_up && own_term;
        }
        if gate.ready {
            Ok(term)
        } else {
            Err(Error::LeaderNotReady(format!(
                "{}-{}",
                self.topic, self.index
            )))
        }
    }

    /// Hands one batch to Raft without waiting for it (the order of calls is the log order).
    async fn submit(&self, batch: Bytes, leader_only: bool) -> Submitted {
        let local = leader_only.then(|| {
            let ptr = batch.as_ptr() as usize;
            (ptr, self.shared.watch_local_append(&batch))
        });
        let rx = self
            .raft
            .client_write_ff(Batch(batch))
            .await
            .map_err(|e| e.to_string());
        Submitted { rx, local }
    }

    /// Waits until the batch `id`, proposed by an earlier request, is applied, and returns
    /// where it starts.
    async fn wait_applied(
        &self,
        id: &BatchId,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Offset, WriteFailure> {
        let mut hw = self.watch_high_watermark();
        loop {
            if let Some(r) = self.producers.table().find(id) {
                return Ok(Offset(r.base_offset));
            }
            tokio::select! {
                changed = hw.changed() => {
                    if changed.is_err() {
                        return Err(WriteFailure::Stopped("the partition closed".into()));
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(WriteFailure::TimedOut(
                        deadline.saturating_duration_since(tokio::time::Instant::now()),
                    ));
                }
            }
        }
    }
}

/// A produce request's place in its connection's order.
///
/// A client with several produce requests in flight on one connection (the idempotent
/// producer keeps up to five batches of a partition in flight) sends them in sequence order,
/// but the broker serves each request in its own task, so without this a later request could
/// reach a partition's sequencer first and be refused as out of order, to be retried after a
/// backoff. Each produce request waits for the previous one of its connection to hand its
/// batches to Raft (the cheap part) and then waits for its commit independently, so requests
/// still commit in a pipeline. Cloned once per partition of the request; the request's turn
/// ends when every clone is dropped, early returns and errors included.
#[derive(Clone)]
pub struct ProduceTurn {
    after: Option<CancellationToken>,
    _done: Arc<DropGuard>,
}

impl ProduceTurn {
    /// The turn of the request after the one whose turn is `previous` (`None` for a
    /// connection's first produce); returns it with the token its successor waits on.
    pub fn next(previous: Option<CancellationToken>) -> (ProduceTurn, CancellationToken) {
        let done = CancellationToken::new();
        let turn = ProduceTurn {
            after: previous,
            _done: Arc::new(done.clone().drop_guard()),
        };
        (turn, done)
    }

    async fn wait(&self) {
        if let Some(after) = &self.after {
            after.cancelled().await;
        }
    }
}

/// Where an append's batches went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub base_offset: Offset,
    pub records: u64,
    /// Each batch's base offset when they are not back to back (an idempotent retry that mixes
    /// batches appended earlier with new ones); empty otherwise.
    pub batch_bases: Vec<u64>,
}

/// One batch of an append request, once decided.
enum Slot {
    /// Handed to Raft.
    Proposed(Submitted),
    /// A duplicate of a batch already applied at this offset.
    Known(Offset),
    /// A duplicate of a batch proposed earlier and not applied yet.
    InFlight(BatchId),
}

type ResponseRx = tokio::sync::oneshot::Receiver<rafka_raft::types::ClientWriteResult>;

/// A batch handed to Raft: its commit notice, and with acks=1 its local-append notice.
struct Submitted {
    rx: std::result::Result<ResponseRx, String>,
    local: Option<(usize, tokio::sync::oneshot::Receiver<Offset>)>,
}

impl Submitted {
    async fn wait(
        self,
        shared: &Shared,
        deadline: tokio::time::Instant,
    ) -> std::result::Result<Offset, WriteFailure> {
        let mut rx = match self.rx {
            Ok(rx) => rx,
            Err(e) => {
                if let Some((ptr, _)) = self.local {
                    shared.forget_local_append(ptr);
                }
                return Err(WriteFailure::Stopped(e));
            }
        };
        let committed = |r: std::result::Result<rafka_raft::types::ClientWriteResult, _>| match r {
            Ok(Ok(resp)) => Ok(Offset(resp.data.base_offset)),
            Ok(Err(e)) => Err(WriteFailure::Write(e)),
            Err(_) => Err(WriteFailure::Stopped("Raft dropped the write".into())),
        };
        let Some((ptr, appended)) = self.local else {
            return match tokio::time::timeout_at(deadline, rx).await {
                Ok(r) => committed(r),
                Err(_) => Err(WriteFailure::TimedOut(Duration::ZERO)),
            };
        };
        // acks=1: the local append is enough; the write goes on to commit after the answer.
        let outcome = tokio::select! {
            offset = appended => offset.map_err(|_| WriteFailure::Stopped("no append notice".into())),
            done = &mut rx => committed(done),
            _ = tokio::time::sleep_until(deadline) => Err(WriteFailure::TimedOut(Duration::ZERO)),
        };
        shared.forget_local_append(ptr);
        outcome
    }
}

/// Why a proposed batch has no answer.
enum WriteFailure {
    Write(ClientWriteError<NodeId, BasicNode>),
    /// The group's Raft stopped (the replica is closing or was deleted).
    Stopped(String),
    TimedOut(Duration),
}

impl Partition {
    /// Retention through Raft: the entries wholly below where retention would cut are purged
    /// by openraft once a snapshot covers them (so a follower that still needs them gets the
    /// snapshot and continues from the new log start). Each call purges what the latest
    /// snapshot covers and asks for a newer one if the cut lies beyond it.
    ///
    /// A partition of `__consumer_offsets` or `__transaction_state` has no time or size
    /// retention: it is cut below
    /// the segment holding its latest committed coordinator snapshot instead (see
    /// [`crate::group::records::snapshot_cut`]), on every replica alike.
    pub async fn enforce_retention(&self, now: rafka_protocol::Timestamp) -> Result<()> {
        let coordinator_log = self.topic == rafka_protocol::api::OFFSETS_TOPIC
            || self.topic == rafka_protocol::api::TRANSACTION_STATE_TOPIC;
        let cut = if coordinator_log {
            let log = Arc::clone(&self.log);
            let hw = self.high_watermark();
            crate::server::blocking(move || crate::group::records::snapshot_cut(&log, hw)).await?
        } else {
            self.log.retention_cut(now)?
        };
        let Some(cut) = cut else {
            return Ok(());
        };
        let Some(upto) = self.shared.index_before(cut) else {
            return Ok(());
        };
        let (applied, snapshot, purged) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            (
                m.last_applied.map(|l| l.index),
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
            )
        };
        let Some(upto) = applied.map(|a| a.min(upto)) else {
            return Ok(());
        };
        // Purge as far as the latest snapshot allows, and ask for a newer snapshot when the
        // cut is beyond it. Waiting for a snapshot that covers the whole cut would never end
        // when the cut keeps moving (the offsets log cuts at snapshots written every few
        // hundred milliseconds under load).
        let covered = snapshot.map(|s| s.min(upto));
        if let Some(c) = covered.filter(|c| purged.is_none_or(|p| *c > p)) {
            self.raft.trigger().purge_log(c).await.map_err(raft_err)?;
        }
        if snapshot.is_none_or(|s| s < upto) {
            self.raft.trigger().snapshot().await.map_err(raft_err)?;
        }
        Ok(())
    }
}

/// What a broker announces every [`HINT_INTERVAL`]: that it is alive, and the groups it leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Announcement {
    from: NodeId,
    hints: Vec<Hint>,
}

/// What a leader announces about a group it leads.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Hint {
    group: u64,
    term: u64,
    leader: NodeId,
    in_sync: Vec<NodeId>,
    log_start: u64,
    high_watermark: u64,
}

#[derive(Debug, Clone)]
struct KnownLeader {
    hint: Hint,
    at: Instant,
}

/// What metadata says about a partition.
#[derive(Debug, Clone, Default)]
pub struct PartitionView {
    pub leader: Option<NodeId>,
    pub term: u64,
    pub replicas: Vec<NodeId>,
    pub in_sync: Vec<NodeId>,
    pub log_start: Offset,
    pub high_watermark: Offset,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ReplicasFile {
    groups: BTreeSet<u64>,
}

/// See the module documentation.
pub struct Cluster {
    pub node_id: NodeId,
    data_dir: PathBuf,
    fs: Fs,
    defaults: LogConfig,
    pub transport: Arc<Transport>,
    /// Every voter and the peer address this broker dials it at (its own: its listen address).
    voters: BTreeMap<NodeId, String>,
    pub controller: Raft,
    state: watch::Receiver<Arc<ClusterState>>,
    partitions: RwLock<BTreeMap<(String, u32), Arc<Partition>>>,
    groups: RwLock<HashMap<GroupId, Raft>>,
    hints: Mutex<HashMap<GroupId, KnownLeader>>,
    /// When each other broker was last heard from (its announcements).
    heard: Mutex<HashMap<NodeId, Instant>>,
    created: Mutex<BTreeSet<u64>>,
    reconciling: tokio::sync::Mutex<()>,
    producer_id_expiration_ms: u64,
    /// The rest of this broker's current block of producer ids: `next..end`.
    producer_ids: tokio::sync::Mutex<Option<(i64, i64)>>,
    /// Told about every transaction marker this broker appends to a partition of
    /// `__consumer_offsets` (it leads it, so it coordinates its groups): the group coordinator
    /// settles the transaction's offsets.
    offsets_marker_hook: Mutex<Option<MarkerHook>>,
    _lock: std::fs::File,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cluster(node {})", self.node_id)
    }
}

fn raft_err(e: impl std::fmt::Display) -> Error {
    Error::Internal(format!("Raft: {e}"))
}

fn members(voters: &BTreeMap<NodeId, String>, ids: &[NodeId]) -> BTreeMap<NodeId, BasicNode> {
    ids.iter()
        .map(|id| {
            let addr = voters.get(id).cloned().unwrap_or_default();
            (*id, BasicNode::new(addr))
        })
        .collect()
}

/// A topic's log config as replicas use it: "flush every append" becomes "Raft flushes before
/// it reports an append durable" (group-committed by the store's flusher).
fn replica_config(defaults: &LogConfig, overrides: &BTreeMap<String, String>) -> Result<LogConfig> {
    let mut cfg = effective_config(defaults, overrides)?;
    if cfg.flush == FlushPolicy::EveryAppend {
        cfg.flush = FlushPolicy::Manual;
    }
    Ok(cfg)
}

impl Cluster {
    /// Opens the data directory, starts the controller group (initialising it on first start)
    /// and checks that every replica this broker created is still there.
    pub async fn open(
        node_id: NodeId,
        data_dir: &Path,
        defaults: LogConfig,
        fs: Fs,
        voters: BTreeMap<NodeId, String>,
        producer_id_expiration_ms: u64,
    ) -> Result<Arc<Cluster>> {
        defaults.validate()?;
        std::fs::create_dir_all(data_dir.join("topics")).map_err(Error::io(data_dir))?;
        let lock_path = data_dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(Error::BrokenDirectory {
                path: data_dir.to_path_buf(),
                reason: "it is in use by another broker process".into(),
            });
        }
        let created: ReplicasFile = crate::error::read_json_file(
            &data_dir.join("replicas.json"),
            "list of replicas created here",
        )?
        .unwrap_or_default();
        // Every replica created here must still have its directory (with its Raft state).
        let mut present = BTreeSet::new();
        for entry in std::fs::read_dir(data_dir.join("topics")).map_err(Error::io(data_dir))? {
            let entry = entry.map_err(Error::io(data_dir))?;
            if let Ok(raw) = std::fs::read(entry.path().join("raft-meta.json")) {
                if let Ok(meta) = serde_json::from_slice::<crate::replica::store::RaftMeta>(&raw) {
                    present.insert(meta.group);
                }
            }
        }
        if let Some(missing) = created.groups.difference(&present).next() {
            let g = GroupId(*missing);
            return Err(Error::BrokenDirectory {
                path: data_dir.join("topics"),
                reason: format!(
                    "the replica of partition {} of topic id {} is missing: its data is lost or was moved",
                    g.partition_index(),
                    g.topic_id()
                ),
            });
        }

        let peers: HashMap<NodeId, String> = voters
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, a)| (*id, a.clone()))
            .collect();
        let transport = Transport::new(node_id, peers);

        // The controller group.
        let cdir = data_dir.join("controller");
        let clog = {
            let cdir = cdir.clone();
            let fs = fs.clone();
            let cfg = LogConfig {
                flush: FlushPolicy::Manual,
                retention_ms: None,
                retention_bytes: None,
                ..LogConfig::default()
            };
            tokio::task::spawn_blocking(move || Log::open(cdir, cfg, fs))
                .await
                .map_err(raft_err)??
        };
        let cshared = Shared::open(GroupId::CONTROLLER, Arc::new(clog), fs.clone())?;
        let fresh = cshared.meta().vote.is_none() && cshared.last_index().is_none();
        let (state_tx, state_rx) = watch::channel(Arc::new(ClusterState::default()));
        let sm = ControllerSm::open(cdir, fs.clone(), state_tx)?;
        let controller = Raft::new(
            node_id,
            controller_raft_config(),
            GroupNetwork {
                transport: Arc::clone(&transport),
                group: GroupId::CONTROLLER,
            },
            LogStore::new(cshared),
            sm,
        )
        .await
        .map_err(raft_err)?;
        let ids: Vec<NodeId> = voters.keys().copied().collect();
        // openraft's initialize() makes the node stand for election at once: only one node
        // may do it, or concurrent candidates of the same term meet (openraft 0.9 asserts).
        // The lowest voter initialises; the others learn the membership from its leader.
        if fresh && ids.first() == Some(&node_id) {
            if let Err(e) = controller.initialize(members(&voters, &ids)).await {
                tracing::debug!(error = %e, "controller already initialised");
            }
        } else if !fresh && ids == [node_id] {
            // A lone voter need not wait out an election timeout after a restart.
            let _ = controller.trigger().elect().await;
        }
        let cluster = Arc::new(Cluster {
            node_id,
            data_dir: data_dir.to_path_buf(),
            fs,
            defaults,
            transport,
            voters,
            controller: controller.clone(),
            state: state_rx,
            partitions: RwLock::new(BTreeMap::new()),
            groups: RwLock::new(HashMap::from([(GroupId::CONTROLLER, controller)])),
            hints: Mutex::new(HashMap::new()),
            heard: Mutex::new(HashMap::new()),
            created: Mutex::new(created.groups),
            reconciling: tokio::sync::Mutex::new(()),
            producer_id_expiration_ms,
            producer_ids: tokio::sync::Mutex::new(None),
            offsets_marker_hook: Mutex::new(None),
            _lock: lock,
        });
        if fresh && ids.first() != Some(&node_id) {
            cluster.spawn_init_fallback(
                cluster.controller.clone(),
                members(&cluster.voters, &ids),
                ids,
                CONTROLLER_INIT_FALLBACK_AFTER,
            );
        }
        Ok(cluster)
    }

    /// A fresh group is initialised by one replica only (`first` of `order`: the lowest voter
    /// for the controller, the preferred replica for a partition), because openraft's
    /// `initialize()` also starts an election and concurrent first candidates are to be
    /// avoided. If that replica is down when the group is created, nobody would. So each other
    /// replica waits `after`, and if the group is still empty then and this broker is the
    /// first replica in `order` that is alive (heard from), it initialises it. Three brokers
    /// with one missing on their very first start thus still form a cluster, and a topic
    /// created while its preferred replica is down still gets leaders.
    fn spawn_init_fallback(
        self: &Arc<Self>,
        raft: Raft,
        membership: BTreeMap<NodeId, BasicNode>,
        order: Vec<NodeId>,
        after: Duration,
    ) {
        let cluster = Arc::downgrade(self);
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_millis(250)).await;
                let Some(cluster) = cluster.upgrade() else {
                    return;
                };
                let initialised = {
                    let m = raft.metrics();
                    let m = m.borrow();
                    m.last_log_index.is_some() || m.current_leader.is_some()
                };
                if initialised {
                    tracing::debug!(?order, "group initialised by another replica");
                    return;
                }
                if started.elapsed() < after {
                    continue;
                }
                let first_alive = order.iter().copied().find(|&n| cluster.is_alive(n));
                if first_alive == Some(cluster.node_id) {
                    tracing::info!(?order, "initialising a group whose first replica is down");
                    if let Err(e) = raft.initialize(membership.clone()).await {
                        tracing::debug!(error = %e, "group already initialised");
                    }
                    return;
                }
            }
        });
    }

    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    /// The controller's state as this broker has applied it.
    pub fn state(&self) -> Arc<ClusterState> {
        Arc::clone(&self.state.borrow())
    }

    /// The controller's leader, if known.
    pub fn controller_leader(&self) -> Option<NodeId> {
        self.controller.metrics().borrow().current_leader
    }

    /// Every partition replica hosted here.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The local replica of a partition: `UnknownTopicOrPartition` when the cluster has no
    /// such partition, `NotLeader` (with the leader) when it lives on other brokers only.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        if let Some(p) = self
            .partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(topic.to_string(), partition))
        {
            return Ok(Arc::clone(p));
        }
        let state = self.state();
        match state.topics.get(topic) {
            Some(t) if (partition as usize) < t.partitions.len() => Err(Error::NotLeader {
                what: format!("{topic}-{partition}"),
                leader: self.view(t, partition).leader,
            }),
            _ => Err(Error::UnknownTopicOrPartition(format!(
                "{topic}-{partition}"
            ))),
        }
    }

    /// The local replica of a partition if this broker leads it and is in contact with a
    /// majority of its replicas.
    pub fn leader_partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        let p = self.partition(topic, partition)?;
        p.ensure_leader()?;
        if !self.has_quorum_contact(&p) {
            // Partition groups have no heartbeats, so an isolated leader never learns that it
            // was deposed. Without this it would keep taking writes it cannot commit, and
            // keep telling clients (through Metadata) to send them there.
            return Err(Error::NotLeader {
                what: format!("{topic}-{partition}"),
                leader: None,
            });
        }
        Ok(p)
    }

    /// Whether a majority of the partition's replicas (this broker included) have been heard
    /// from within [`PEER_DEAD_AFTER`].
    fn has_quorum_contact(&self, p: &Partition) -> bool {
        let alive = p.replicas.iter().filter(|&&r| self.is_alive(r)).count();
        alive > p.replicas.len() / 2
    }

    /// What this broker knows of a partition: from its own replica if it hosts one, else from
    /// the leader's latest hint.
    pub fn view(&self, topic: &TopicRecord, partition: u32) -> PartitionView {
        let group = GroupId::partition(topic.id, partition);
        let replicas = topic
            .partitions
            .get(partition as usize)
            .cloned()
            .unwrap_or_default();
        let local = self
            .groups
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&group);
        let hint = self
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .filter(|k| k.at.elapsed() < HINT_TTL)
            .map(|k| k.hint.clone());
        if local {
            let p = self
                .partitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .find(|p| p.group == group)
                .cloned();
            if let Some(p) = p {
                let (mut leader, term) = p.leader();
                if leader == Some(self.node_id) && !self.has_quorum_contact(&p) {
                    // Cut off from a majority: another leader may exist. Say what the others
                    // announced, if anything, rather than sending clients here.
                    leader = hint
                        .as_ref()
                        .map(|h| h.leader)
                        .filter(|&l| l != self.node_id);
                }
                let in_sync = if p.is_leader() {
                    p.in_sync().0
                } else {
                    hint.as_ref()
                        .filter(|h| Some(h.leader) == leader)
                        .map(|h| h.in_sync.clone())
                        .unwrap_or_default()
                };
                return PartitionView {
                    leader,
                    term,
                    replicas,
                    in_sync,
                    log_start: p.log.log_start_offset(),
                    high_watermark: p.high_watermark(),
                };
            }
        }
        match hint {
            Some(h) => PartitionView {
                leader: Some(h.leader),
                term: h.term,
                replicas,
                in_sync: h.in_sync,
                log_start: Offset(h.log_start),
                high_watermark: Offset(h.high_watermark),
            },
            None => PartitionView {
                replicas,
                ..PartitionView::default()
            },
        }
    }

    /// Proposes a controller command and returns its outcome, forwarding it to the
    /// controller's leader when that is another broker.
    pub async fn propose(&self, cmd: Command) -> Result<()> {
        let deadline = Instant::now() + PROPOSE_TIMEOUT;
        loop {
            let leader = match self.propose_local(&cmd).await {
                Ok(()) => return Ok(()),
                Err(Error::NotLeader { leader, .. }) => leader,
                Err(e) => return Err(e),
            };
            if let Some(leader) = leader.filter(|l| *l != self.node_id) {
                let left = deadline.saturating_duration_since(Instant::now());
                let r: std::result::Result<std::result::Result<(), (i32, String)>, _> = self
                    .transport
                    .call_typed(leader, KIND_PROPOSE, GroupId::CONTROLLER, &cmd, left)
                    .await;
                match r {
                    Ok(Ok(())) => return Ok(()),
                    Ok(Err((code, _))) if code == ErrorCode::NotLeader.code() => {}
                    Ok(Err((code, msg))) => {
                        return Err(Error::Refused(ErrorCode::from_code(code), msg))
                    }
                    Err(rafka_raft::Error::Timeout { .. }) => {
                        return Err(Error::OutcomeUnknown(
                            "the controller did not answer in time".into(),
                        ))
                    }
                    Err(e) => tracing::debug!(error = %e, "forwarding to the controller failed"),
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::NotLeader {
                    what: "the controller".into(),
                    leader: None,
                });
            }
            // Leadership is moving: back off briefly and try again.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Proposes on this broker's controller replica only.
    async fn propose_local(&self, cmd: &Command) -> Result<()> {
        match self.controller.client_write(Batch(cmd.to_batch())).await {
            Ok(resp) => match resp.data.outcome {
                Some(Err((code, msg))) => Err(Error::Refused(ErrorCode::from_code(code), msg)),
                _ => Ok(()),
            },
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(Error::NotLeader {
                    what: "the controller".into(),
                    leader: f.leader_id,
                })
            }
            Err(e) => Err(Error::OutcomeUnknown(e.to_string())),
        }
    }

    /// Has the leader of `topic`-`partition` append a transaction marker (locally, or through
    /// the peer connection to the leader) and waits until it is committed.
    pub async fn write_txn_marker(
        &self,
        topic: &str,
        partition: u32,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        timeout: Duration,
    ) -> Result<()> {
        let state = self.state();
        let Some(record) = state.topics.get(topic) else {
            return Err(Error::UnknownTopicOrPartition(format!(
                "{topic}-{partition}"
            )));
        };
        if partition as usize >= record.partitions.len() {
            return Err(Error::UnknownTopicOrPartition(format!(
                "{topic}-{partition}"
            )));
        }
        if let Ok(p) = self.partition(topic, partition) {
            if p.is_leader() {
                return self
                    .write_marker_here(&p, producer_id, epoch, commit, timeout)
                    .await;
            }
        }
        let Some(leader) = self
            .view(record, partition)
            .leader
            .filter(|l| *l != self.node_id)
        else {
            return Err(Error::NotLeader {
                what: format!("{topic}-{partition}"),
                leader: None,
            });
        };
        let req = MarkerRequest {
            topic: topic.to_string(),
            partition,
            producer_id,
            epoch,
            commit,
            timeout_ms: timeout.as_millis() as u64,
        };
        let r: std::result::Result<std::result::Result<(), (i32, String)>, _> = self
            .transport
            .call_typed(
                leader,
                KIND_TXN_MARKER,
                GroupId::CONTROLLER,
                &req,
                timeout + Duration::from_secs(1),
            )
            .await;
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err((code, msg))) if code == ErrorCode::UnknownTopicOrPartition.code() => {
                Err(Error::UnknownTopicOrPartition(msg))
            }
            Ok(Err((code, msg))) => Err(Error::Refused(ErrorCode::from_code(code), msg)),
            Err(e) => Err(Error::OutcomeUnknown(e.to_string())),
        }
    }

    /// Installs the group coordinator's hook for markers on `__consumer_offsets`.
    pub fn set_offsets_marker_hook(&self, hook: MarkerHook) {
        *self
            .offsets_marker_hook
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Appends a marker to a partition this broker leads; on `__consumer_offsets`, then lets
    /// the group coordinator settle the transaction's offsets.
    async fn write_marker_here(
        &self,
        p: &Partition,
        producer_id: i64,
        epoch: i16,
        commit: bool,
        timeout: Duration,
    ) -> Result<()> {
        p.write_marker(producer_id, epoch, commit, timeout).await?;
        if p.topic == rafka_protocol::api::OFFSETS_TOPIC {
            let hook = self
                .offsets_marker_hook
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(hook) = hook {
                hook(p.index, producer_id, commit).await;
            }
        }
        Ok(())
    }

    /// A producer id never handed out before, from this broker's block; a new block is asked
    /// of the controller when the block runs out (ids of a block lost in a crash are skipped,
    /// never reused).
    pub async fn next_producer_id(&self) -> Result<i64> {
        let mut block = self.producer_ids.lock().await;
        if let Some((next, end)) = *block {
            if next < end {
                *block = Some((next + 1, end));
                return Ok(next);
            }
        }
        let request: u64 = rand::random();
        self.propose(Command::AllocateProducerIds {
            broker: self.node_id,
            request,
        })
        .await?;
        // Committed: this broker's replica of the controller applies it shortly.
        let mut state = self.state.clone();
        let got = tokio::time::timeout(PROPOSE_TIMEOUT, async {
            loop {
                let found = state
                    .borrow_and_update()
                    .producer_id_blocks
                    .get(&self.node_id)
                    .filter(|b| b.request == request)
                    .copied();
                if let Some(b) = found {
                    return Some(b);
                }
                if state.changed().await.is_err() {
                    return None;
                }
            }
        })
        .await;
        match got {
            Ok(Some(b)) => {
                *block = Some((b.first + 1, b.first + b.len));
                Ok(b.first)
            }
            _ => Err(Error::OutcomeUnknown(
                "the new block of producer ids did not arrive in time".into(),
            )),
        }
    }

    /// Waits (bounded) until every partition of `topic` has a known leader. The topic exists
    /// either way: past the deadline this only logs, since an error would make clients retry
    /// a creation that succeeded.
    pub async fn wait_for_leaders(&self, topic: &str) {
        let deadline = Instant::now() + CREATE_LEADERS_WAIT;
        let mut state = self.state.clone();
        loop {
            let s = self.state();
            if let Some(t) = s.topics.get(topic) {
                let all = (0..t.partitions.len() as u32).all(|p| self.view(t, p).leader.is_some());
                if all {
                    return;
                }
            }
            if Instant::now() >= deadline {
                tracing::warn!(%topic, "created, but not every partition has a leader yet");
                return;
            }
            // Woken by metadata changes; leader elections are polled.
            let _ = tokio::time::timeout(Duration::from_millis(50), state.changed()).await;
        }
    }

    /// Brings the hosted replicas in line with the controller's state.
    pub async fn reconcile(self: &Arc<Self>) {
        let _one = self.reconciling.lock().await;
        let state = self.state();
        let mut desired: BTreeMap<(String, u32), (GroupId, &TopicRecord)> = BTreeMap::new();
        for (name, t) in &state.topics {
            for (p, replicas) in t.partitions.iter().enumerate() {
                if replicas.contains(&self.node_id) {
                    desired.insert(
                        (name.clone(), p as u32),
                        (GroupId::partition(t.id, p as u32), t),
                    );
                }
            }
        }
        // Stop replicas no longer assigned here (deleted topics, or an older incarnation).
        let stale: Vec<Arc<Partition>> = self
            .all_partitions()
            .into_iter()
            .filter(|p| {
                desired
                    .get(&(p.topic.clone(), p.index))
                    .is_none_or(|(g, _)| *g != p.group)
            })
            .collect();
        for p in stale {
            self.stop_partition(&p, true).await;
        }
        for ((name, index), (group, topic)) in desired {
            let existing = self
                .partitions
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&(name.clone(), index))
                .cloned();
            match existing {
                Some(p) => {
                    if let Ok(cfg) = replica_config(&self.defaults, &topic.configs) {
                        if p.log.config() != cfg {
                            if let Err(e) = p.log.set_config(cfg) {
                                tracing::warn!(topic = %name, partition = index, error = %e, "config change failed");
                            }
                        }
                    }
                }
                None => {
                    if let Err(e) = self.start_partition(&name, index, group, topic).await {
                        tracing::error!(topic = %name, partition = index, error = %e, "cannot start replica");
                    }
                }
            }
        }
    }

    async fn start_partition(
        self: &Arc<Self>,
        name: &str,
        index: u32,
        group: GroupId,
        topic: &TopicRecord,
    ) -> Result<()> {
        let dir = self.data_dir.join("topics").join(format!("{name}-{index}"));
        let cfg = replica_config(&self.defaults, &topic.configs)?;
        let fs = self.fs.clone();
        let replicas = topic.partitions[index as usize].clone();
        let shared = {
            let dir = dir.clone();
            tokio::task::spawn_blocking(move || -> Result<Arc<Shared>> {
                // A directory of an older topic of the same name is removed first.
                if let Ok(raw) = std::fs::read(dir.join("raft-meta.json")) {
                    let meta: Option<crate::replica::store::RaftMeta> =
                        serde_json::from_slice(&raw).ok();
                    if meta.is_none_or(|m| m.group != group.0) {
                        std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
                    }
                }
                let log = Log::open(&dir, cfg, fs.clone())?;
                Shared::open(group, Arc::new(log), fs)
            })
            .await
            .map_err(raft_err)??
        };
        let fresh = shared.meta().vote.is_none()
            && shared.last_index().is_none()
            && shared.meta().last_purged.is_none();
        let hw = Arc::new(watch::channel(Offset(0)).0);
        let (sm, producers) = PartitionSm::new(
            Arc::clone(&shared),
            Arc::clone(&hw),
            self.producer_id_expiration_ms,
        );
        let raft = Raft::new(
            self.node_id,
            partition_raft_config(),
            GroupNetwork {
                transport: Arc::clone(&self.transport),
                group,
            },
            LogStore::new(Arc::clone(&shared)),
            sm,
        )
        .await
        .map_err(raft_err)?;
        // Only the preferred replica initialises a new group (initialize() also starts its
        // election), so leaders start spread as assigned; the other replicas learn the
        // membership from it.
        if fresh && replicas.first() == Some(&self.node_id) {
            if let Err(e) = raft.initialize(members(&self.voters, &replicas)).await {
                tracing::debug!(%group, error = %e, "partition group already initialised");
            }
        } else if fresh {
            self.spawn_init_fallback(
                raft.clone(),
                members(&self.voters, &replicas),
                replicas.clone(),
                PARTITION_INIT_FALLBACK_AFTER,
            );
        } else if !fresh && replicas == [self.node_id] {
            let _ = raft.trigger().elect().await;
        }
        let partition = Arc::new(Partition {
            topic: name.to_string(),
            index,
            group,
            replicas,
            log: Arc::clone(&shared.log),
            raft: raft.clone(),
            shared,
            high_watermark: hw,
            node_id: self.node_id,
            yielding: Mutex::new(None),
            producers,
            sequence_gate: Mutex::new(SequenceGate::default()),
        });
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(group, raft);
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert((name.to_string(), index), partition);
        self.record_created(group.0, true)?;
        tracing::info!(topic = %name, partition = index, %group, "replica started");
        Ok(())
    }

    async fn stop_partition(&self, p: &Arc<Partition>, delete: bool) {
        self.groups
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&p.group);
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(p.topic.clone(), p.index));
        if let Err(e) = p.raft.shutdown().await {
            tracing::warn!(group = %p.group, error = %e, "Raft shutdown failed");
        }
        if delete {
            let dir = p.log.dir().to_path_buf();
            if let Err(e) = self.record_created(p.group.0, false) {
                tracing::warn!(error = %e, "cannot update replicas.json");
            }
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove replica data");
            }
            tracing::info!(topic = %p.topic, partition = p.index, "replica removed");
        }
    }

    fn record_created(&self, group: u64, add: bool) -> Result<()> {
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if add {
            created.insert(group)
        } else {
            created.remove(&group)
        };
        if changed {
            let raw = serde_json::to_vec(&ReplicasFile {
                groups: created.clone(),
            })
            .expect("serialises");
            let path = self.data_dir.join("replicas.json");
            self.fs
                .write_atomically(&path, &raw)
                .map_err(Error::io(&path))?;
        }
        Ok(())
    }

    /// Reconciles whenever the controller state changes (and every second, to retry what
    /// failed), until `shutdown`.
    pub async fn run_reconciler(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut state = self.state.clone();
        loop {
            self.reconcile().await;
            tokio::select! {
                _ = state.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Registers this broker's client address with the controller, retrying until it sticks
    /// and again whenever the controller's state forgets it, until `shutdown`.
    pub async fn run_registration(
        self: Arc<Self>,
        advertise: String,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let known = self
                .state()
                .brokers
                .get(&self.node_id)
                .is_some_and(|b| b.client_addr == advertise);
            if !known {
                let cmd = Command::RegisterBroker {
                    id: self.node_id,
                    client_addr: advertise.clone(),
                };
                if let Err(e) = self.propose(cmd).await {
                    tracing::debug!(error = %e, "registration not done yet");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Every [`HINT_INTERVAL`], tells every other broker that this one is alive and which
    /// groups it leads, until `shutdown`. This one message per peer per tick replaces the
    /// per-group heartbeats of partition groups (see [`Cluster::run_elections`]).
    pub async fn run_announcer(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(HINT_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let hints: Vec<Hint> = self
                .all_partitions()
                .iter()
                .filter(|p| p.is_leader())
                .map(|p| Hint {
                    group: p.group.0,
                    term: p.leader().1,
                    leader: self.node_id,
                    in_sync: p.in_sync().0,
                    log_start: p.log.log_start_offset().0,
                    high_watermark: p.high_watermark().0,
                })
                .collect();
            let payload = match transport::encode(&Announcement {
                from: self.node_id,
                hints,
            }) {
                Ok(p) => p,
                Err(_) => continue,
            };
            for peer in self.transport.peer_ids() {
                let t = Arc::clone(&self.transport);
                let payload = payload.clone();
                tokio::spawn(async move {
                    let _ = t
                        .call(
                            peer,
                            KIND_HINTS,
                            GroupId::CONTROLLER,
                            payload,
                            HINT_INTERVAL,
                        )
                        .await;
                });
            }
        }
    }

    fn take_announcement(&self, a: Announcement) {
        self.heard
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.from, Instant::now());
        let mut known = self.hints.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        for h in a.hints {
            let g = GroupId(h.group);
            let newer = known
                .get(&g)
                .is_none_or(|k| h.term >= k.hint.term || k.at.elapsed() > HINT_TTL);
            if newer {
                known.insert(g, KnownLeader { hint: h, at: now });
            }
        }
    }

    /// Whether another live broker announced, within [`PEER_DEAD_AFTER`], that it leads
    /// `group`. A replica that has not heard from the leader itself (it just restarted, or
    /// its log is behind) must not stand then: without pre-vote in openraft 0.9, its higher
    /// term would depose a healthy leader even though it cannot win.
    fn leader_announced(&self, group: GroupId) -> bool {
        let hint = self
            .hints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&group)
            .filter(|k| k.at.elapsed() < PEER_DEAD_AFTER)
            .map(|k| k.hint.leader);
        hint.is_some_and(|l| l != self.node_id && self.is_alive(l))
    }

    /// Whether broker `node` has been heard from recently (this broker always has).
    fn is_alive(&self, node: NodeId) -> bool {
        node == self.node_id
            || self
                .heard
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&node)
                .is_some_and(|t| t.elapsed() < PEER_DEAD_AFTER)
    }

    /// Failure detection for partition groups, in place of openraft's per-group heartbeats
    /// and election timers (switched off for partitions: 1,000 idle groups sending their own
    /// heartbeats cost most of a core). A broker is alive while its announcements arrive
    /// (every [`HINT_INTERVAL`]); when the leader of a group this broker is a voter of has not
    /// been heard from for [`PEER_DEAD_AFTER`], or the group has no leader, this replica stands
    /// for election after a random delay (so replicas of a group, and groups, do not all stand
    /// at once). Raft's own rules still decide: a candidate with a shorter log loses.
    pub async fn run_elections(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        use rand::Rng;
        let mut next_attempt: HashMap<GroupId, Instant> = HashMap::new();
        let mut tick = tokio::time::interval(ELECTION_CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            let now = Instant::now();
            let partitions = self.all_partitions();
            if next_attempt.len() > partitions.len() {
                let live: std::collections::HashSet<GroupId> =
                    partitions.iter().map(|p| p.group).collect();
                next_attempt.retain(|g, _| live.contains(g));
            }
            for p in partitions {
                // Membership never changes after creation: the assigned replicas are the voters.
                let voter = p.replicas.contains(&self.node_id);
                let leader = p.raft.metrics().borrow().current_leader;
                let healthy = match leader {
                    Some(l) if l == self.node_id => p.is_leader(),
                    Some(l) => self.is_alive(l),
                    None => false,
                } || self.leader_announced(p.group);
                let jitter = |lo: Duration, hi: Duration| {
                    let ms = rand::thread_rng().gen_range(lo.as_millis()..=hi.as_millis());
                    now + Duration::from_millis(ms as u64)
                };
                if healthy || !voter {
                    // Next time the leader is lost, wait a fresh random delay first.
                    next_attempt.insert(p.group, jitter(Duration::ZERO, ELECTION_JITTER));
                    continue;
                }
                let due = next_attempt
                    .entry(p.group)
                    .or_insert_with(|| jitter(Duration::ZERO, ELECTION_JITTER));
                if now >= *due {
                    *due = jitter(ELECTION_RETRY_MIN, ELECTION_RETRY_MAX);
                    tracing::debug!(group = %p.group, ?leader, "leader lost: standing for election");
                    let _ = p.raft.trigger().elect().await;
                }
            }
        }
    }

    /// Preferred-leader balancing: every [`LEADER_BALANCE_INTERVAL`], for each partition whose
    /// preferred replica (the first assigned) is this broker but which another live broker
    /// leads, while every replica is alive: ask the leader to hand over ([`KIND_YIELD`]), and
    /// when it agrees, stand for election after the followers' leases have run out. Leaders
    /// spread by assignment thus come back after a broker recovers. openraft 0.9 has no
    /// leadership transfer; this is one built from its parts.
    pub async fn run_leader_balancer(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let started = Instant::now();
        let mut tick = tokio::time::interval(LEADER_BALANCE_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            if started.elapsed() < LEADER_BALANCE_START_DELAY {
                continue;
            }
            let candidates: Vec<(Arc<Partition>, NodeId)> = self
                .all_partitions()
                .into_iter()
                .filter(|p| p.replicas.first() == Some(&self.node_id))
                .filter(|p| p.replicas.iter().all(|&r| self.is_alive(r)))
                .filter_map(|p| match p.leader().0 {
                    Some(l) if l != self.node_id && self.is_alive(l) => Some((p, l)),
                    _ => None,
                })
                .take(LEADER_BALANCE_BATCH_MAX)
                .collect();
            if candidates.is_empty() {
                continue;
            }
            let moves = candidates.into_iter().map(|(p, leader)| {
                let cluster = Arc::clone(&self);
                async move {
                    let agreed: std::result::Result<bool, _> = cluster
                        .transport
                        .call_typed(
                            leader,
                            KIND_YIELD,
                            p.group,
                            &cluster.node_id,
                            YIELD_CATCH_UP_WAIT * 2,
                        )
                        .await;
                    if !matches!(agreed, Ok(true)) {
                        return;
                    }
                    tokio::time::sleep(YIELD_STAND_AFTER).await;
                    tracing::info!(
                        topic = %p.topic,
                        partition = p.index,
                        from = leader,
                        "preferred replica standing for election"
                    );
                    let _ = p.raft.trigger().elect().await;
                }
            });
            futures::future::join_all(moves).await;
        }
    }

    /// Stops every group (on shutdown) after flushing the logs.
    pub async fn shutdown(&self) {
        for p in self.all_partitions() {
            self.stop_partition(&p, false).await;
            if let Err(e) = p.log.flush() {
                tracing::error!(topic = %p.topic, partition = p.index, error = %e, "flush on shutdown failed");
            }
        }
        let _ = self.controller.shutdown().await;
    }
}

/// Answers peers: Raft RPCs for the groups hosted here, forwarded controller commands, and
/// leader hints.
pub struct PeerHandler(pub Arc<Cluster>);

impl Handler for PeerHandler {
    fn handle(&self, kind: u8, group: GroupId, payload: Bytes) -> BoxFuture<Reply> {
        let cluster = Arc::clone(&self.0);
        Box::pin(async move {
            match kind {
                KIND_PROPOSE => {
                    let cmd: Command = match transport::decode(&payload) {
                        Ok(c) => c,
                        Err(e) => return Reply::Error(e.to_string()),
                    };
                    let outcome: std::result::Result<(), (i32, String)> =
                        match cluster.propose_local(&cmd).await {
                            Ok(()) => Ok(()),
                            Err(e) => Err((e.error_code().code(), e.to_string())),
                        };
                    match transport::encode(&outcome) {
                        Ok(b) => Reply::Ok(b),
                        Err(e) => Reply::Error(e.to_string()),
                    }
                }
                KIND_YIELD => {
                    let p = cluster
                        .all_partitions()
                        .into_iter()
                        .find(|p| p.group == group);
                    // `yield_to` checks that the asker is the preferred replica.
                    let asker = transport::decode::<NodeId>(&payload).ok();
                    let agreed = match (p, asker) {
                        (Some(p), Some(to)) => p.yield_to(to).await,
                        _ => false,
                    };
                    match transport::encode(&agreed) {
                        Ok(b) => Reply::Ok(b),
                        Err(e) => Reply::Error(e.to_string()),
                    }
                }
                KIND_TXN_MARKER => {
                    let req: MarkerRequest = match transport::decode(&payload) {
                        Ok(r) => r,
                        Err(e) => return Reply::Error(e.to_string()),
                    };
                    let timeout = Duration::from_millis(req.timeout_ms.min(60_000));
                    let outcome: std::result::Result<(), (i32, String)> = match cluster
                        .partition(&req.topic, req.partition)
                    {
                        Ok(p) => cluster
                            .write_marker_here(&p, req.producer_id, req.epoch, req.commit, timeout)
                            .await
                            .map_err(|e| (e.error_code().code(), e.to_string())),
                        Err(e) => Err((e.error_code().code(), e.to_string())),
                    };
                    match transport::encode(&outcome) {
                        Ok(b) => Reply::Ok(b),
                        Err(e) => Reply::Error(e.to_string()),
                    }
                }
                KIND_HINTS => match transport::decode::<Announcement>(&payload) {
                    Ok(a) => {
                        cluster.take_announcement(a);
                        Reply::Ok(Bytes::new())
                    }
                    Err(e) => Reply::Error(e.to_string()),
                },
                _ => {
                    let raft = cluster
                        .groups
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&group)
                        .cloned();
                    match raft {
                        Some(raft) => transport::handle_raft_rpc(&raft, kind, payload).await,
                        None => Reply::UnknownGroup,
                    }
                }
            }
        })
    }
}

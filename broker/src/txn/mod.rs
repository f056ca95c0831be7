//! The transaction coordinator.
//!
//! Owns: the internal topic `__transaction_state` (created on the first FindCoordinator for a
//! transaction), the mapping from transactional id to its partition, and one [`Shard`] per
//! partition of that topic this broker leads — the same pattern as the group coordinator
//! ([`crate::group`]). A shard holds its transactional ids' state ([`state::TxnMeta`]) in
//! memory and writes every change as a record (acks=all) before it answers or acts, so a
//! decision is exactly as durable as a produced record. A new leader writes a barrier record,
//! replays the partition, and then finishes what its predecessor left half done: the markers
//! of every transaction in a Prepare phase. A snapshot record replaces everything before it,
//! and retention cuts below it as for `__consumer_offsets`.
//!
//! Ending a transaction ([`Coordinator::end_txn`]): the decision (PrepareCommit or
//! PrepareAbort, with the bumped epoch) is written first; then a COMMIT or ABORT marker is
//! appended to every partition of the transaction through that partition's leader (retried
//! until it is written: a decided transaction always completes, whatever fails meanwhile);
//! then the Complete record. EndTxn answers once the transaction is complete, or once its
//! decision is durable and the request's time is up (the markers keep going).
//!
//! Open transactions past their `transaction_timeout_ms` are aborted by the coordinator (which
//! bumps the epoch, fencing the producer that let it expire).

pub mod state;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rafka_protocol::api::{acks, OFFSETS_TOPIC, TRANSACTION_STATE_TOPIC};
use rafka_protocol::messages::*;
use rafka_protocol::{BatchBuilder, BatchIter, BatchOptions, ErrorCode, Timestamp};
use rafka_raft::NodeId;
use serde::{Deserialize, Serialize};
use tokio::sync::{watch, Notify};

use crate::cluster::{Cluster, Partition};
use crate::error::{Error, Result};
use crate::replica::controller_sm::Command;
use state::{InitStep, Phase, TxnError, TxnMeta};

/// Longest accepted transactional id.
pub const TRANSACTIONAL_ID_BYTES_MAX: usize = 255;

/// Settings of the transaction coordinator.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// Partitions of `__transaction_state` when this cluster creates it.
    pub state_partitions: u32,
    /// Timeout of a transaction whose producer asks for none, and the largest accepted.
    pub timeout_ms_default: u32,
    pub timeout_ms_max: u32,
    /// How long one write to the transaction log may take before its outcome is unknown.
    pub write_timeout: Duration,
    /// How long EndTxn waits for the markers before answering on the durable decision alone.
    pub end_wait: Duration,
    /// How often open transactions are checked against their timeout.
    pub timeout_check_interval: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            state_partitions: 8,
            timeout_ms_default: 60_000,
            timeout_ms_max: 900_000,
            write_timeout: Duration::from_secs(10),
            end_wait: Duration::from_secs(10),
            timeout_check_interval: Duration::from_millis(500),
        }
    }
}

/// Segment size of `__transaction_state` (at most).
const STATE_SEGMENT_BYTES_MAX: u64 = 16 << 20;
/// Pause between attempts to write one marker.
const MARKER_RETRY_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait for one marker write before it is tried again.
const MARKER_WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Key of snapshot records (see `crate::group::records::snapshot_cut`, shared by both
/// coordinator topics).
const SNAPSHOT_KEY: &str = crate::group::records::SNAPSHOT_KEY;

/// The partition of `__transaction_state` that holds `transactional_id`.
pub fn partition_for(transactional_id: &str, partitions: u32) -> u32 {
    crc32fast::hash(transactional_id.as_bytes()) % partitions.max(1)
}

/// A refusal as carried in a response.
type Refusal = (ErrorCode, String);

fn from_txn(e: TxnError) -> Refusal {
    (e.code, e.message)
}

fn validate_id(id: &str) -> Result<(), Refusal> {
    if id.is_empty() || id.len() > TRANSACTIONAL_ID_BYTES_MAX {
        return Err((
            ErrorCode::InvalidRequest,
            format!("a transactional id must have 1..={TRANSACTIONAL_ID_BYTES_MAX} bytes"),
        ));
    }
    Ok(())
}

fn epoch_from_wire(epoch: i32) -> Result<i16, Refusal> {
    i16::try_from(epoch).map_err(|_| {
        (
            ErrorCode::InvalidRequest,
            format!("producer epoch {epoch} is out of range"),
        )
    })
}

/// One record of `__transaction_state`: JSON, keyed by transactional id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TxnRecord {
    /// The whole state of a transactional id after a change.
    Txn { id: String, meta: TxnMeta },
    /// Every transactional id of the partition: replaces all earlier records.
    Snapshot { txns: Vec<(String, TxnMeta)> },
    /// Written by a new coordinator before it reads the log.
    Barrier { node: u64, term: u64 },
}

impl TxnRecord {
    fn key(&self) -> &str {
        match self {
            TxnRecord::Txn { id, .. } => id,
            TxnRecord::Snapshot { .. } => SNAPSHOT_KEY,
            TxnRecord::Barrier { .. } => "barrier",
        }
    }
}

fn encode(records: &[TxnRecord]) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    let now = Timestamp::now();
    for r in records {
        let value = serde_json::to_vec(r).expect("transaction records serialise");
        b.append(Some(now), Some(r.key().as_bytes()), Some(&value), &[]);
    }
    b.build()
}

/// Replays the records of `batches` into `txns` (Raft's control batches are skipped).
fn replay(
    txns: &mut BTreeMap<String, TxnMeta>,
    batches: Bytes,
) -> std::result::Result<u64, String> {
    let mut count = 0;
    for batch in BatchIter::new(batches) {
        let batch = batch.map_err(|e| e.to_string())?;
        if batch.header().attributes.is_control() {
            continue;
        }
        for rec in batch.records() {
            let rec = rec.map_err(|e| e.to_string())?;
            let value = rec.value.unwrap_or_default();
            let r: TxnRecord = serde_json::from_slice(&value)
                .map_err(|e| format!("record at offset {}: {e}", rec.offset.0))?;
            count += 1;
            match r {
                TxnRecord::Txn { id, meta } => {
                    txns.insert(id, meta);
                }
                TxnRecord::Snapshot { txns: all } => {
                    *txns = all.into_iter().collect();
                }
                TxnRecord::Barrier { .. } => {}
            }
        }
    }
    Ok(count)
}

/// The transactional ids of one partition of `__transaction_state`, on its leader.
pub struct Shard {
    index: u32,
    term: u64,
    partition: Arc<Partition>,
    loaded: AtomicBool,
    failed: AtomicBool,
    state: tokio::sync::Mutex<ShardState>,
    /// Woken whenever a transaction of this shard completes.
    completed: Notify,
    /// Transactional ids whose markers are being written now (one writer per id).
    completing: Mutex<HashSet<String>>,
}

#[derive(Default)]
struct ShardState {
    txns: BTreeMap<String, TxnMeta>,
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

    fn ready(&self) -> Result<(), Refusal> {
        if !self.usable() {
            return Err((ErrorCode::NotCoordinator, "the coordinator moved".into()));
        }
        if !self.loaded.load(Ordering::Acquire) {
            return Err((
                ErrorCode::CoordinatorLoadInProgress,
                format!(
                    "coordinator for {TRANSACTION_STATE_TOPIC}-{} is loading",
                    self.index
                ),
            ));
        }
        Ok(())
    }

    /// Writes the new state of `id` (already in `st`) and waits until it is committed. Any
    /// failure poisons the shard: it is rebuilt from the log.
    async fn write(
        &self,
        st: &mut ShardState,
        id: &str,
        config: &TxnConfig,
    ) -> Result<(), Refusal> {
        let Some(meta) = st.txns.get(id).cloned() else {
            return Ok(());
        };
        let mut records = vec![TxnRecord::Txn {
            id: id.to_string(),
            meta,
        }];
        let mut batch = encode(&records);
        st.bytes_since_snapshot += batch.len() as u64;
        let segment_bytes = self.partition.log.config().segment_bytes;
        if st.bytes_since_snapshot >= (segment_bytes / 2).max(2 * st.last_snapshot_bytes) {
            records.push(TxnRecord::Snapshot {
                txns: st
                    .txns
                    .iter()
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
            batch = encode(&records);
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
                tracing::warn!(partition = self.index, error = %e, "transaction log write failed; the coordinator shard will reload");
                let code = match e {
                    Error::NotLeader { .. } => ErrorCode::NotCoordinator,
                    _ => e.error_code(),
                };
                Err((code, e.to_string()))
            }
        }
    }

    /// Rebuilds the shard from its partition (barrier write, then replay) and returns the
    /// transactions left in a Prepare phase, whose markers must be written.
    async fn load(&self, node: NodeId, config: &TxnConfig) -> Vec<String> {
        let started = Instant::now();
        let mut st = self.state.lock().await;
        let barrier = encode(&[TxnRecord::Barrier {
            node,
            term: self.term,
        }]);
        if let Err(e) = self
            .partition
            .append(barrier, acks::ALL, config.write_timeout, None)
            .await
        {
            tracing::info!(partition = self.index, error = %e, "transaction coordinator barrier failed");
            self.failed.store(true, Ordering::Release);
            return Vec::new();
        }
        let part = Arc::clone(&self.partition);
        let replayed = crate::server::blocking(move || {
            let mut txns = BTreeMap::new();
            let (mut count, mut bytes) = (0u64, 0u64);
            crate::group::records::read_committed(&part.log, part.high_watermark(), |at, b| {
                bytes += b.len() as u64;
                count += replay(&mut txns, b).map_err(|reason| Error::Corrupt {
                    path: part.log.dir().to_path_buf(),
                    position: at.0,
                    reason,
                })?;
                Ok(())
            })?;
            Ok((txns, count, bytes))
        })
        .await;
        match replayed {
            Ok((txns, count, bytes)) => {
                st.txns = txns;
                st.bytes_since_snapshot = bytes;
                self.loaded.store(true, Ordering::Release);
                tracing::info!(
                    partition = self.index,
                    term = self.term,
                    transactional_ids = st.txns.len(),
                    records = count,
                    ms = started.elapsed().as_millis() as u64,
                    "transaction coordinator loaded"
                );
                st.txns
                    .iter()
                    .filter(|(_, m)| m.phase.is_prepare())
                    .map(|(id, _)| id.clone())
                    .collect()
            }
            Err(e) => {
                tracing::error!(partition = self.index, error = %e, "transaction coordinator replay failed");
                self.failed.store(true, Ordering::Release);
                Vec::new()
            }
        }
    }
}

/// See the module documentation.
pub struct Coordinator {
    cluster: Arc<Cluster>,
    config: TxnConfig,
    shards: Mutex<HashMap<u32, Arc<Shard>>>,
    creating: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Coordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let led: Vec<u32> = self.shards().keys().copied().collect();
        write!(
            f,
            "TxnCoordinator(leads {TRANSACTION_STATE_TOPIC} partitions {led:?})"
        )
    }
}

impl Coordinator {
    pub fn new(cluster: Arc<Cluster>, config: TxnConfig) -> Arc<Coordinator> {
        Arc::new(Coordinator {
            cluster,
            config,
            shards: Mutex::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
        })
    }

    fn shards(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Shard>>> {
        self.shards.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state_partitions(&self) -> Option<u32> {
        self.cluster
            .state()
            .topics
            .get(TRANSACTION_STATE_TOPIC)
            .map(|t| t.partitions.len() as u32)
    }

    /// Creates `__transaction_state` if it does not exist yet.
    async fn ensure_state_topic(&self) -> Result<u32, Refusal> {
        if let Some(n) = self.state_partitions() {
            return Ok(n);
        }
        let _one = self.creating.lock().await;
        if let Some(n) = self.state_partitions() {
            return Ok(n);
        }
        let voters = self.cluster.state().voters.len().max(1) as u32;
        let configs: BTreeMap<String, String> = [
            ("retention.ms".to_string(), "-1".to_string()),
            ("retention.bytes".to_string(), "-1".to_string()),
            (
                "segment.bytes".to_string(),
                (STATE_SEGMENT_BYTES_MAX.min(self.cluster.defaults().segment_bytes)).to_string(),
            ),
        ]
        .into();
        let created = self
            .cluster
            .propose(Command::CreateTopic {
                name: TRANSACTION_STATE_TOPIC.to_string(),
                partitions: self.config.state_partitions,
                replication_factor: voters.min(3),
                configs,
            })
            .await;
        match created {
            Ok(()) => tracing::info!(
                partitions = self.config.state_partitions,
                "created {TRANSACTION_STATE_TOPIC}"
            ),
            Err(Error::Refused(ErrorCode::TopicAlreadyExists, _)) => {}
            Err(e) => return Err((e.error_code(), e.to_string())),
        }
        Err((
            ErrorCode::CoordinatorNotAvailable,
            format!("{TRANSACTION_STATE_TOPIC} is being created"),
        ))
    }

    /// FindCoordinator for a transactional id.
    pub async fn find(&self, req: FindCoordinatorRequest) -> FindCoordinatorResponse {
        let fail = |(code, msg): Refusal| FindCoordinatorResponse {
            error_code: code.code(),
            error_message: msg,
            node_id: -1,
            host: String::new(),
            port: 0,
        };
        if let Err(r) = validate_id(&req.key) {
            return fail(r);
        }
        let n = match self.ensure_state_topic().await {
            Ok(n) => n,
            Err(r) => return fail(r),
        };
        crate::group::coordinator_at(
            &self.cluster,
            TRANSACTION_STATE_TOPIC,
            partition_for(&req.key, n),
        )
    }

    /// The loaded shard that holds `id`, or why there is none here.
    fn shard_for(&self, id: &str) -> Result<Arc<Shard>, Refusal> {
        validate_id(id)?;
        let Some(n) = self.state_partitions() else {
            return Err((
                ErrorCode::CoordinatorNotAvailable,
                format!("{TRANSACTION_STATE_TOPIC} does not exist yet"),
            ));
        };
        let p = partition_for(id, n);
        let shard = self.shards().get(&p).cloned();
        match shard {
            Some(s) => {
                s.ready()?;
                Ok(s)
            }
            None => Err((
                ErrorCode::NotCoordinator,
                format!(
                    "broker {} does not coordinate transactional id {id:?}",
                    self.cluster.node_id
                ),
            )),
        }
    }

    /// InitProducerId with a transactional id.
    pub async fn init_producer_id(
        self: &Arc<Self>,
        req: InitProducerIdRequest,
    ) -> InitProducerIdResponse {
        let outcome = async {
            let timeout_ms = match req.transaction_timeout_ms {
                0 => self.config.timeout_ms_default,
                t if t > self.config.timeout_ms_max => {
                    return Err((
                        ErrorCode::InvalidTransactionTimeout,
                        format!(
                            "transaction timeout {t} ms is above the broker's limit of {} ms",
                            self.config.timeout_ms_max
                        ),
                    ))
                }
                t => t,
            };
            let id = req.transactional_id.clone();
            let shard = self.shard_for(&id)?;
            let mut st = shard.state.lock().await;
            shard.ready()?;
            let step = match st.txns.get_mut(&id) {
                None => {
                    let pid = self
                        .cluster
                        .next_producer_id()
                        .await
                        .map_err(|e| (e.error_code(), e.to_string()))?;
                    st.txns.insert(id.clone(), TxnMeta::new(pid, timeout_ms));
                    InitStep::Ready
                }
                Some(meta) => meta.init(timeout_ms).map_err(from_txn)?,
            };
            if step == InitStep::NewProducerId {
                let pid = self
                    .cluster
                    .next_producer_id()
                    .await
                    .map_err(|e| (e.error_code(), e.to_string()))?;
                if let Some(meta) = st.txns.get_mut(&id) {
                    meta.renew(pid);
                }
            }
            shard.write(&mut st, &id, &self.config).await?;
            let meta = st.txns.get(&id).cloned().expect("just written");
            drop(st);
            if step == InitStep::AbortFirst {
                metrics::counter!("rafka_txn_fenced_producers_total").increment(1);
                self.spawn_completion(&shard, id.clone());
                return Err((
                    ErrorCode::ConcurrentTransactions,
                    "the previous instance's open transaction is being aborted; retry".into(),
                ));
            }
            if meta.epoch > 0 {
                metrics::counter!("rafka_txn_fenced_producers_total").increment(1);
            }
            Ok(meta)
        }
        .await;
        match outcome {
            Ok(meta) => InitProducerIdResponse {
                error_code: 0,
                error_message: String::new(),
                producer_id: meta.producer_id,
                producer_epoch: i32::from(meta.epoch),
            },
            Err((code, message)) => InitProducerIdResponse {
                error_code: code.code(),
                error_message: message,
                producer_id: -1,
                producer_epoch: -1,
            },
        }
    }

    /// Adds partitions to the producer's transaction (opening one if none is open).
    async fn add(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i32,
        partitions: Vec<(String, u32)>,
    ) -> Result<(), Refusal> {
        let epoch = epoch_from_wire(epoch)?;
        let shard = self.shard_for(id)?;
        let mut st = shard.state.lock().await;
        shard.ready()?;
        let Some(meta) = st.txns.get_mut(id) else {
            return Err((
                ErrorCode::InvalidProducerEpoch,
                format!("transactional id {id:?} is not initialised (InitProducerId first)"),
            ));
        };
        let was_open = meta.phase == Phase::Ongoing;
        let changed = meta
            .add_partitions(
                producer_id,
                epoch,
                &partitions,
                Timestamp::now().as_millis(),
            )
            .map_err(from_txn)?;
        if changed {
            shard.write(&mut st, id, &self.config).await?;
            if !was_open {
                metrics::counter!("rafka_txn_started_total").increment(1);
            }
        }
        Ok(())
    }

    /// AddPartitionsToTxn.
    pub async fn add_partitions(
        &self,
        req: AddPartitionsToTxnRequest,
    ) -> AddPartitionsToTxnResponse {
        let outcome = async {
            let state = self.cluster.state();
            let mut partitions = Vec::new();
            for t in &req.partitions {
                if crate::topics::is_internal(&t.topic) {
                    return Err((
                        ErrorCode::InvalidTopic,
                        format!("{} is internal: add offsets with AddOffsetsToTxn", t.topic),
                    ));
                }
                let Some(record) = state.topics.get(&t.topic) else {
                    return Err((
                        ErrorCode::UnknownTopicOrPartition,
                        format!("unknown topic {}", t.topic),
                    ));
                };
                for p in &t.partitions {
                    if *p as usize >= record.partitions.len() {
                        return Err((
                            ErrorCode::UnknownTopicOrPartition,
                            format!("unknown partition {}-{p}", t.topic),
                        ));
                    }
                    partitions.push((t.topic.clone(), *p));
                }
            }
            self.add(
                &req.transactional_id,
                req.producer_id,
                req.producer_epoch,
                partitions,
            )
            .await
        }
        .await;
        let (error_code, error_message) = match outcome {
            Ok(()) => (0, String::new()),
            Err((code, msg)) => (code.code(), msg),
        };
        AddPartitionsToTxnResponse {
            error_code,
            error_message,
        }
    }

    /// AddOffsetsToTxn: the group's partition of `__consumer_offsets` joins the transaction.
    pub async fn add_offsets(&self, req: AddOffsetsToTxnRequest) -> AddOffsetsToTxnResponse {
        let outcome = async {
            let n = self
                .cluster
                .state()
                .topics
                .get(OFFSETS_TOPIC)
                .map(|t| t.partitions.len() as u32)
                .ok_or((
                    ErrorCode::CoordinatorNotAvailable,
                    format!(
                        "{OFFSETS_TOPIC} does not exist yet (find the group's coordinator first)"
                    ),
                ))?;
            if req.group_id.is_empty() {
                return Err((ErrorCode::InvalidGroupId, "empty group id".into()));
            }
            let p = crate::group::partition_for(&req.group_id, n);
            self.add(
                &req.transactional_id,
                req.producer_id,
                req.producer_epoch,
                vec![(OFFSETS_TOPIC.to_string(), p)],
            )
            .await
        }
        .await;
        let (error_code, error_message) = match outcome {
            Ok(()) => (0, String::new()),
            Err((code, msg)) => (code.code(), msg),
        };
        AddOffsetsToTxnResponse {
            error_code,
            error_message,
        }
    }

    /// EndTxn.
    pub async fn end_txn(self: &Arc<Self>, req: EndTxnRequest) -> EndTxnResponse {
        let started = Instant::now();
        let outcome = async {
            let epoch = epoch_from_wire(req.producer_epoch)?;
            let id = req.transactional_id.clone();
            let shard = self.shard_for(&id)?;
            {
                let mut st = shard.state.lock().await;
                shard.ready()?;
                let Some(meta) = st.txns.get_mut(&id) else {
                    return Err((
                        ErrorCode::InvalidProducerEpoch,
                        format!("transactional id {id:?} is not initialised"),
                    ));
                };
                let changed = meta
                    .end(req.producer_id, epoch, req.commit)
                    .map_err(from_txn)?;
                let phase = meta.phase;
                if changed {
                    shard.write(&mut st, &id, &self.config).await?;
                    metrics::counter!(
                        "rafka_txn_ended_total",
                        "result" => if req.commit { "commit" } else { "abort" }
                    )
                    .increment(1);
                }
                if phase.is_prepare() {
                    self.spawn_completion(&shard, id.clone());
                }
            }
            // Answer once complete, or on the durable decision when that takes too long.
            let deadline = tokio::time::Instant::now() + self.config.end_wait;
            loop {
                let notified = shard.completed.notified();
                {
                    let st = shard.state.lock().await;
                    let meta = st.txns.get(&id).cloned();
                    match meta {
                        Some(m)
                            if !m.phase.is_prepare() || tokio::time::Instant::now() >= deadline =>
                        {
                            return Ok(m);
                        }
                        Some(_) => {}
                        None => {
                            return Err((
                                ErrorCode::InvalidProducerEpoch,
                                format!("transactional id {id:?} is not initialised"),
                            ))
                        }
                    }
                }
                tokio::select! {
                    _ = notified => {}
                    _ = tokio::time::sleep_until(deadline) => {}
                }
            }
        }
        .await;
        metrics::histogram!("rafka_txn_end_seconds").record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(meta) => EndTxnResponse {
                error_code: 0,
                error_message: String::new(),
                producer_id: meta.producer_id,
                producer_epoch: i32::from(meta.epoch),
            },
            Err((code, message)) => EndTxnResponse {
                error_code: code.code(),
                error_message: message,
                producer_id: -1,
                producer_epoch: -1,
            },
        }
    }

    /// Writes the markers of `id`'s decided transaction in the background, unless that is
    /// already under way.
    fn spawn_completion(self: &Arc<Self>, shard: &Arc<Shard>, id: String) {
        {
            let mut running = shard.completing.lock().unwrap_or_else(|e| e.into_inner());
            if !running.insert(id.clone()) {
                return;
            }
        }
        let this = Arc::clone(self);
        let shard = Arc::clone(shard);
        tokio::spawn(async move {
            this.complete(&shard, &id).await;
            shard
                .completing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id);
            shard.completed.notify_waiters();
        });
    }

    /// Writes every marker of `id`'s decided transaction, then the Complete record. Gives up
    /// only when this broker stops coordinating the shard (the next coordinator redoes it).
    async fn complete(&self, shard: &Arc<Shard>, id: &str) {
        let Some(meta) = shard.state.lock().await.txns.get(id).cloned() else {
            return;
        };
        if !meta.phase.is_prepare() {
            return;
        }
        let commit = meta.phase == Phase::PrepareCommit;
        for (topic, p) in &meta.partitions {
            loop {
                if !shard.usable() {
                    return;
                }
                match self
                    .cluster
                    .write_txn_marker(
                        topic,
                        *p,
                        meta.producer_id,
                        meta.epoch,
                        commit,
                        MARKER_WRITE_TIMEOUT,
                    )
                    .await
                {
                    Ok(()) => break,
                    // The topic was deleted: nothing left to mark.
                    Err(Error::UnknownTopicOrPartition(_)) => break,
                    Err(e) => {
                        tracing::debug!(%topic, partition = p, error = %e, "marker write failed; retrying");
                        tokio::time::sleep(MARKER_RETRY_BACKOFF).await;
                    }
                }
            }
        }
        let mut st = shard.state.lock().await;
        if !shard.usable() {
            return;
        }
        let renew = match st.txns.get_mut(id) {
            Some(m)
                if m.phase == meta.phase
                    && m.epoch == meta.epoch
                    && m.producer_id == meta.producer_id =>
            {
                m.complete();
                m.epoch_exhausted()
            }
            _ => return,
        };
        if renew {
            match self.cluster.next_producer_id().await {
                Ok(pid) => {
                    if let Some(m) = st.txns.get_mut(id) {
                        m.renew(pid);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no new producer id for an exhausted epoch yet")
                }
            }
        }
        if shard.write(&mut st, id, &self.config).await.is_ok() {
            tracing::debug!(transactional_id = %id, commit, "transaction complete");
        }
    }

    /// Keeps one shard per led partition of `__transaction_state` and aborts transactions
    /// past their timeout.
    pub async fn run(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(
            self.config
                .timeout_check_interval
                .min(Duration::from_millis(200)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_timeouts = Instant::now();
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.changed() => return,
            }
            self.track_leadership();
            if last_timeouts.elapsed() >= self.config.timeout_check_interval {
                last_timeouts = Instant::now();
                self.abort_timed_out().await;
                self.update_gauges().await;
            }
        }
    }

    fn track_leadership(self: &Arc<Self>) {
        let Some(n) = self.state_partitions() else {
            self.shards().clear();
            return;
        };
        for p in 0..n {
            let part = self.cluster.partition(TRANSACTION_STATE_TOPIC, p).ok();
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
                            completed: Notify::new(),
                            completing: Mutex::new(HashSet::new()),
                        });
                        shards.insert(p, Arc::clone(&shard));
                        let this = Arc::clone(self);
                        tokio::spawn(async move {
                            let started = Instant::now();
                            let pending = shard.load(this.cluster.node_id, &this.config).await;
                            metrics::histogram!("rafka_txn_coordinator_load_seconds")
                                .record(started.elapsed().as_secs_f64());
                            for id in pending {
                                this.spawn_completion(&shard, id);
                            }
                        });
                    }
                }
                None => {
                    shards.remove(&p);
                }
            }
        }
    }

    async fn abort_timed_out(self: &Arc<Self>) {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let now = Timestamp::now().as_millis();
        for shard in shards {
            if shard.ready().is_err() {
                continue;
            }
            let mut st = shard.state.lock().await;
            let expired: Vec<String> = st
                .txns
                .iter()
                .filter(|(_, m)| m.timed_out(now))
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                if let Some(m) = st.txns.get_mut(&id) {
                    tracing::info!(transactional_id = %id, producer_id = m.producer_id, "transaction timed out; aborting");
                    m.abort_for_timeout();
                }
                if shard.write(&mut st, &id, &self.config).await.is_err() {
                    break;
                }
                metrics::counter!("rafka_txn_timed_out_total").increment(1);
                metrics::counter!("rafka_txn_ended_total", "result" => "abort").increment(1);
                self.spawn_completion(&shard, id);
            }
        }
    }

    async fn update_gauges(&self) {
        let shards: Vec<Arc<Shard>> = self.shards().values().cloned().collect();
        let mut open = 0usize;
        for s in shards {
            if s.ready().is_err() {
                continue;
            }
            let Ok(st) = s.state.try_lock() else {
                continue;
            };
            open += st
                .txns
                .values()
                .filter(|m| m.phase == Phase::Ongoing || m.phase.is_prepare())
                .count();
        }
        metrics::gauge!("rafka_txn_open").set(open as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_replay_with_snapshots_to_the_latest_state() {
        let mut a = TxnMeta::new(1, 1000);
        a.init(1000).unwrap();
        let b = TxnMeta::new(2, 1000);
        let first = encode(&[
            TxnRecord::Barrier { node: 1, term: 1 },
            TxnRecord::Txn {
                id: "a".into(),
                meta: TxnMeta::new(1, 1000),
            },
        ]);
        let second = encode(&[
            TxnRecord::Txn {
                id: "a".into(),
                meta: a.clone(),
            },
            TxnRecord::Snapshot {
                txns: vec![("a".into(), a.clone()), ("b".into(), b.clone())],
            },
        ]);
        let mut txns = BTreeMap::new();
        assert_eq!(replay(&mut txns, first).unwrap(), 2);
        assert_eq!(replay(&mut txns, second).unwrap(), 2);
        assert_eq!(txns.get("a"), Some(&a));
        assert_eq!(txns.get("b"), Some(&b));
    }
}

//! The consumer: reads partitions it was assigned by hand ([`Consumer::assign`]) or given by
//! a consumer group ([`Consumer::subscribe`]).
//!
//! Group membership (the heartbeat task, reconciliation, commits) lives in [`group`]; this
//! module calls into it from `poll`, so rebalance callbacks and revocation commits happen on
//! the application's task, between two batches of records.
//!
//! [`Consumer`] is owned by one task (`&mut self` methods). It keeps a position per assigned
//! partition and at most one fetch in flight per broker, covering the partitions that broker
//! leads. As soon as a fetch completes, [`Consumer::poll`] sends the next one before handing
//! the records back, so the broker works on the next fetch while the application processes
//! the previous one (prefetch bounded to one outstanding fetch per broker, so memory is bounded
//! by `fetch_max_bytes` per broker).
//!
//! A fetch result is only used when the partition's position still equals the offset it was
//! fetched from: a `seek` in between, or a leader change that put the partition in two fetches,
//! makes the stale result harmless. OFFSET_OUT_OF_RANGE is reported as an error; the position
//! is never reset behind the caller's back.
//!
//! [`isolation`] decides what the consumer sees of transactions (`isolation_level`): with
//! read_committed the broker stops at the last stable offset and the consumer drops the
//! records of aborted transactions.

pub mod group;
pub mod isolation;
mod subscribe;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use rafka_protocol::api::list_offsets;
use rafka_protocol::messages::{
    FetchPartition, FetchRequest, FetchResponse, FetchTopic, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic,
};
use rafka_protocol::{BatchError, BatchIter, ErrorCode, Header, Offset, Timestamp};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::cluster::{BrokerId, ClientConfig, Cluster, TopicPartition, BOOTSTRAP_DEFAULT};
use crate::connection::ConnectionConfig;
use crate::error::{ClientError, Result};

use group::GroupMember;
pub use group::{CommitHandle, NoopListener, RebalanceListener};
pub use isolation::IsolationLevel;
use isolation::{is_abort_marker_key, AbortedFilter};
pub use subscribe::ConsumerGroupMetadata;

/// Fetch results waiting to be read by `poll`. At most one fetch per broker is in flight, so
/// this only fills up with more brokers than slots, and then fetch tasks wait.
const FETCH_RESULTS_QUEUED_MAX: usize = 64;

/// Where to move a partition's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The log start offset (oldest record still kept).
    Earliest,
    /// The high watermark (the next record to be written).
    Latest,
    Offset(Offset),
    /// The first record with a timestamp at or after this one (the latest offset when none).
    Timestamp(Timestamp),
}

/// Consumer settings.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap: String,
    pub client_id: String,
    /// How long the broker may hold a fetch waiting for `fetch_min_bytes`.
    pub fetch_max_wait_ms: u32,
    pub fetch_min_bytes: u32,
    /// Per fetch response; must stay under the 16 MiB frame limit.
    pub fetch_max_bytes: u32,
    pub max_partition_fetch_bytes: u32,
    pub request_timeout_ms: u64,
    pub retry_backoff_ms: u64,
    /// Where a partition starts when assigned without a `seek`; in a group, only where the
    /// group has no committed offset (Kafka's `auto.offset.reset`).
    pub initial_position: SeekTo,
    /// The consumer group [`Consumer::subscribe`] joins; also where `commit` and `committed`
    /// go. `None`: only [`Consumer::assign`] can be used.
    pub group_id: Option<String>,
    /// Static membership: a member that restarts with the same instance id within
    /// `session_timeout_ms` gets its partitions back without a rebalance (it leaves with epoch
    /// -2 on close, which keeps them reserved).
    pub group_instance_id: Option<String>,
    /// How long the coordinator keeps a member without heartbeats before giving its partitions
    /// to others.
    pub session_timeout_ms: u32,
    /// Longest time between two `poll` calls. Past it the background task leaves the group
    /// (its partitions go to other members: this application is presumed stuck), and the next
    /// `poll` reports them lost and rejoins.
    pub max_poll_interval_ms: u64,
    /// Commit the positions of owned partitions every `auto_commit_interval_ms` (from within
    /// `poll`, asynchronously), before partitions are revoked (synchronously) and on `close`.
    /// Positions cover every record `poll` returned, so a record counts as processed once the
    /// next `poll` is called: at-least-once.
    pub enable_auto_commit: bool,
    pub auto_commit_interval_ms: u64,
    /// The coordinator's assignor: `sticky`, `range` or `roundrobin`.
    pub assignor: String,
    /// What `poll` returns of transactions: everything (read_uncommitted, the default as in
    /// Kafka), or only committed transactions' records (read_committed).
    pub isolation_level: IsolationLevel,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            bootstrap: BOOTSTRAP_DEFAULT.to_owned(),
            client_id: "rafka-consumer".to_owned(),
            fetch_max_wait_ms: 500,
            fetch_min_bytes: 1,
            fetch_max_bytes: 8 << 20,
            max_partition_fetch_bytes: 1 << 20,
            request_timeout_ms: 30_000,
            retry_backoff_ms: 100,
            initial_position: SeekTo::Earliest,
            group_id: None,
            group_instance_id: None,
            session_timeout_ms: 10_000,
            max_poll_interval_ms: 300_000,
            enable_auto_commit: true,
            auto_commit_interval_ms: 5_000,
            assignor: "sticky".to_owned(),
            isolation_level: IsolationLevel::ReadUncommitted,
        }
    }
}

impl ConsumerConfig {
    /// Checks how the limits relate.
    pub fn validate(&self) -> Result<()> {
        // Leave room for the response's protobuf framing around the record bytes.
        let frame_budget = (rafka_protocol::frame::FRAME_BYTES_MAX_DEFAULT / 2) as u32;
        if self.fetch_max_bytes == 0 || self.fetch_max_bytes > frame_budget {
            return Err(ClientError::InvalidArgument(format!(
                "fetch_max_bytes must be in 1..={frame_budget}"
            )));
        }
        if self.max_partition_fetch_bytes == 0 {
            return Err(ClientError::InvalidArgument(
                "max_partition_fetch_bytes must be at least 1".into(),
            ));
        }
        if self.group_id.as_deref() == Some("") {
            return Err(ClientError::InvalidArgument(
                "group_id must not be empty".into(),
            ));
        }
        if self.group_instance_id.as_deref() == Some("") {
            return Err(ClientError::InvalidArgument(
                "group_instance_id must not be empty (use None for a dynamic member)".into(),
            ));
        }
        if self.session_timeout_ms == 0
            || self.max_poll_interval_ms == 0
            || self.auto_commit_interval_ms == 0
        {
            return Err(ClientError::InvalidArgument(
                "session_timeout_ms, max_poll_interval_ms and auto_commit_interval_ms must be \
                 at least 1"
                    .into(),
            ));
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        ClientConfig {
            bootstrap: self.bootstrap.clone(),
            request_timeout: Duration::from_millis(self.request_timeout_ms),
            retry_backoff: Duration::from_millis(self.retry_backoff_ms),
            connection: ConnectionConfig {
                client_id: self.client_id.clone(),
                ..ConnectionConfig::default()
            },
        }
    }
}

/// A record read from a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub topic: String,
    pub partition: u32,
    pub offset: Offset,
    /// `None` when the producer set none.
    pub timestamp: Option<Timestamp>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// A completed fetch, sent back by its task.
struct FetchDone {
    broker: BrokerId,
    result: Result<FetchResponse>,
}

/// What a subscribed consumer keeps beside its positions.
struct Subscription {
    member: GroupMember,
    /// Owned partitions whose committed offset is still to be fetched (their position is
    /// `None` meanwhile). Kept apart so that a `poll` cancelled mid-fetch retries it instead
    /// of falling back to `initial_position`.
    awaiting_committed: BTreeSet<TopicPartition>,
    next_auto_commit: Instant,
    /// The positions the last auto-commit sent, to skip commits that would change nothing.
    last_auto_commit: BTreeMap<TopicPartition, Offset>,
}

/// A consumer of explicitly assigned partitions, or a member of a consumer group.
pub struct Consumer {
    cluster: Cluster,
    config: ConsumerConfig,
    /// Assigned partitions and their positions (`None`: not resolved yet).
    positions: BTreeMap<TopicPartition, Option<Offset>>,
    /// Per broker with a fetch in flight: the partitions and offsets it covers.
    in_flight: HashMap<BrokerId, Vec<(TopicPartition, Offset)>>,
    results_tx: mpsc::Sender<FetchDone>,
    results_rx: mpsc::Receiver<FetchDone>,
    /// An error found while records of other partitions were being returned; reported by the
    /// next `poll`.
    deferred_error: Option<ClientError>,
    /// Some partition had no known leader: refresh metadata before the next fetches.
    metadata_stale: bool,
    /// Set while subscribed to a group.
    subscription: Option<Subscription>,
    /// Told about partitions a group gives and takes.
    listener: Box<dyn RebalanceListener>,
}

impl Consumer {
    /// Creates a consumer (connects lazily). Needs a Tokio runtime for `poll`.
    pub fn new(config: ConsumerConfig) -> Result<Consumer> {
        config.validate()?;
        let cluster = Cluster::new(config.client_config())?;
        let (results_tx, results_rx) = mpsc::channel(FETCH_RESULTS_QUEUED_MAX);
        Ok(Consumer {
            cluster,
            config,
            positions: BTreeMap::new(),
            in_flight: HashMap::new(),
            results_tx,
            results_rx,
            deferred_error: None,
            metadata_stale: false,
            subscription: None,
            listener: Box::new(NoopListener),
        })
    }

    /// The cluster view this consumer uses.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    /// Replaces the assignment. Partitions already assigned keep their positions; new ones
    /// start at `initial_position` unless sought. Ignored (with a warning) while subscribed
    /// to a group, whose coordinator decides the assignment; `unsubscribe` first.
    pub fn assign<T: Into<TopicPartition>>(&mut self, partitions: impl IntoIterator<Item = T>) {
        if self.subscription.is_some() {
            tracing::warn!("assign() ignored: the consumer is subscribed to a group");
            return;
        }
        let new: BTreeMap<TopicPartition, Option<Offset>> = partitions
            .into_iter()
            .map(Into::into)
            .map(|tp| {
                let pos = self.positions.get(&tp).copied().flatten();
                (tp, pos)
            })
            .collect();
        self.positions = new;
    }

    /// The assigned partitions (in a group: the partitions this member owns now).
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// The offset of the next record `poll` returns for `tp`, once known.
    pub fn position(&self, tp: &TopicPartition) -> Option<Offset> {
        self.positions.get(tp).copied().flatten()
    }

    /// The position of every assigned partition that has one: after processing everything
    /// `poll` returned, the offsets to commit (with `commit_offsets`, or with a transactional
    /// producer's `send_offsets_to_transaction`).
    pub fn positions(&self) -> BTreeMap<TopicPartition, Offset> {
        self.positions_to_commit(None)
    }

    /// Moves the position of an assigned partition. Earliest, latest and timestamps are looked
    /// up on the partition leader now.
    pub async fn seek(&mut self, tp: &TopicPartition, to: SeekTo) -> Result<Offset> {
        if !self.positions.contains_key(tp) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {tp} is not assigned to this consumer"
            )));
        }
        let offset = self.resolve(tp, to).await?;
        self.positions.insert(tp.clone(), Some(offset));
        if let Some(sub) = &mut self.subscription {
            // An explicit position wins over the committed offset still being fetched.
            sub.awaiting_committed.remove(tp);
        }
        Ok(offset)
    }

    async fn resolve(&self, tp: &TopicPartition, to: SeekTo) -> Result<Offset> {
        let timestamp_ms = match to {
            SeekTo::Offset(o) => return Ok(o),
            SeekTo::Earliest => list_offsets::EARLIEST,
            SeekTo::Latest => list_offsets::LATEST,
            SeekTo::Timestamp(t) => t.as_millis(),
        };
        list_offset(
            &self.cluster,
            tp,
            timestamp_ms,
            self.config.isolation_level.wire(),
        )
        .await
    }

    /// Returns the records fetched next, waiting up to `timeout` for some; an empty vector
    /// when none came in time.
    ///
    /// When subscribed, `poll` is also where the group's decisions take effect: rebalance
    /// callbacks run here, revoked partitions are committed here (synchronously, so a poll
    /// during a rebalance may take up to the request timeout when the coordinator is
    /// unreachable), added partitions are positioned at their committed offsets, and
    /// auto-commits are queued. Errors of an earlier `commit_async` whose handle was dropped,
    /// and fatal group errors (invalid group id, unknown assignor, group full), are returned
    /// here. Call it at least every `max_poll_interval_ms`, or the member leaves the group.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>> {
        if let Some(e) = self.deferred_error.take() {
            return Err(e);
        }
        let deadline = Instant::now() + timeout;
        self.group_step().await?;
        self.resolve_positions().await?;
        let backoff = Duration::from_millis(self.config.retry_backoff_ms);
        loop {
            if self.metadata_stale {
                self.metadata_stale = false;
                let topics = self.assigned_topics();
                if let Err(e) = self.cluster.refresh_metadata(&topics).await {
                    tracing::debug!(error = %e, "metadata refresh failed");
                    self.metadata_stale = true;
                }
            }
            self.send_fetches();
            let wait_until = if self.in_flight.is_empty() {
                // Nothing could be fetched (no leaders yet): look again after a backoff.
                deadline.min(Instant::now() + backoff)
            } else {
                deadline
            };
            let group_changed = async {
                match &self.subscription {
                    Some(sub) => sub.member.shared.changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                r = tokio::time::timeout_at(wait_until, self.results_rx.recv()) => Some(r),
                _ = group_changed => None,
            };
            let done = match received {
                Some(Ok(Some(done))) => done,
                // The sender half lives in `self`, so the channel cannot close.
                Some(Ok(None)) => return Err(ClientError::Closed),
                Some(Err(_)) if Instant::now() >= deadline => return Ok(Vec::new()),
                Some(Err(_)) => {
                    self.group_step().await?;
                    self.resolve_positions().await?;
                    continue;
                }
                None => {
                    // A new assignment, fencing or failure: act on it now, not after the
                    // poll's timeout.
                    self.group_step().await?;
                    self.resolve_positions().await?;
                    if Instant::now() >= deadline {
                        return Ok(Vec::new());
                    }
                    continue;
                }
            };
            let records = self.handle_fetch(done)?;
            // Prefetch: the next fetch goes out before the caller processes these records.
            self.send_fetches();
            if !records.is_empty() {
                return Ok(records);
            }
            if let Some(e) = self.deferred_error.take() {
                return Err(e);
            }
            if Instant::now() >= deadline {
                return Ok(Vec::new());
            }
        }
    }

    fn assigned_topics(&self) -> Vec<String> {
        let mut topics: Vec<String> = self.positions.keys().map(|tp| tp.topic.clone()).collect();
        topics.dedup();
        topics
    }

    /// Looks up the starting offset of every partition without a position.
    async fn resolve_positions(&mut self) -> Result<()> {
        let unresolved: Vec<TopicPartition> = self
            .positions
            .iter()
            .filter(|(tp, p)| p.is_none() && !self.awaiting_committed(tp))
            .map(|(tp, _)| tp.clone())
            .collect();
        if unresolved.is_empty() {
            return Ok(());
        }
        let to = self.config.initial_position;
        let lookups = unresolved.iter().map(|tp| self.resolve(tp, to));
        let offsets = futures::future::try_join_all(lookups).await?;
        for (tp, offset) in unresolved.into_iter().zip(offsets) {
            self.positions.insert(tp, Some(offset));
        }
        Ok(())
    }

    /// Sends a fetch to every broker that leads an assigned partition and has none in flight.
    fn send_fetches(&mut self) {
        let busy: HashSet<&TopicPartition> = self
            .in_flight
            .values()
            .flat_map(|v| v.iter().map(|(tp, _)| tp))
            .collect();
        let mut by_broker: BTreeMap<BrokerId, Vec<(TopicPartition, Offset)>> = BTreeMap::new();
        for (tp, pos) in &self.positions {
            let Some(pos) = pos else { continue };
            if busy.contains(tp) {
                continue;
            }
            match self.cluster.cached_leader(tp) {
                Some(leader) if !self.in_flight.contains_key(&leader) => {
                    by_broker
                        .entry(leader)
                        .or_default()
                        .push((tp.clone(), *pos));
                }
                Some(_) => {}
                None => self.metadata_stale = true,
            }
        }
        for (broker, partitions) in by_broker {
            let request = self.fetch_request(&partitions);
            self.in_flight.insert(broker, partitions);
            let cluster = self.cluster.clone();
            let tx = self.results_tx.clone();
            let timeout = Duration::from_millis(
                self.config.request_timeout_ms + u64::from(self.config.fetch_max_wait_ms),
            );
            let span = tracing::debug_span!("fetch", %broker);
            tokio::spawn(tracing::Instrument::instrument(
                async move {
                    let result = match cluster.connection(broker).await {
                        Ok(conn) => conn.send(request, timeout).await,
                        Err(e) => Err(e),
                    };
                    // The consumer may be gone; then nobody wants the result.
                    let _ = tx.send(FetchDone { broker, result }).await;
                },
                span,
            ));
        }
    }

    fn fetch_request(&self, partitions: &[(TopicPartition, Offset)]) -> FetchRequest {
        let mut topics: BTreeMap<&str, Vec<FetchPartition>> = BTreeMap::new();
        for (tp, offset) in partitions {
            topics.entry(&tp.topic).or_default().push(FetchPartition {
                partition: tp.partition,
                fetch_offset: offset.0,
                partition_max_bytes: self.config.max_partition_fetch_bytes,
            });
        }
        FetchRequest {
            max_wait_ms: self.config.fetch_max_wait_ms,
            min_bytes: self.config.fetch_min_bytes,
            max_bytes: self.config.fetch_max_bytes,
            isolation_level: self.config.isolation_level.wire(),
            topics: topics
                .into_iter()
                .map(|(name, partitions)| FetchTopic {
                    name: name.to_owned(),
                    partitions,
                })
                .collect(),
        }
    }

    /// Turns a fetch result into records and position updates. Errors of one partition do not
    /// lose the records of the others: they are deferred to the next `poll`.
    fn handle_fetch(&mut self, done: FetchDone) -> Result<Vec<ConsumerRecord>> {
        let fetched: HashMap<TopicPartition, Offset> = self
            .in_flight
            .remove(&done.broker)
            .unwrap_or_default()
            .into_iter()
            .collect();
        let response = match done.result {
            Ok(r) => r,
            Err(e) if e.is_retriable() => {
                tracing::debug!(broker = %done.broker, error = %e, "fetch failed; will retry");
                if e.needs_metadata_refresh() {
                    for tp in fetched.keys() {
                        self.cluster.invalidate_leader(tp);
                    }
                    self.metadata_stale = true;
                }
                return Ok(Vec::new());
            }
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for topic in response.topics {
            for p in topic.partitions {
                let tp = TopicPartition::new(topic.name.clone(), p.partition);
                let Some(&fetch_offset) = fetched.get(&tp) else {
                    continue;
                };
                if self.position(&tp) != Some(fetch_offset) {
                    continue; // sought or reassigned meanwhile: the result is stale
                }
                let code = ErrorCode::from_code(p.error_code);
                match code {
                    ErrorCode::None => match decode_fetched(
                        &tp,
                        p.records,
                        fetch_offset,
                        self.config.isolation_level,
                        &p.aborted_transactions,
                    ) {
                        Ok((mut got, next)) => {
                            records.append(&mut got);
                            self.positions.insert(tp, Some(next));
                        }
                        Err(e) => self.defer(e),
                    },
                    ErrorCode::OffsetOutOfRange => {
                        let message = format!(
                            "position {} is outside the log [{}, {}]",
                            fetch_offset, p.log_start_offset, p.high_watermark
                        );
                        self.defer(ClientError::broker(code, message, &tp.topic, tp.partition));
                    }
                    code if code.is_retriable() => match BrokerId::from_wire(p.leader_hint) {
                        Some(hint) if code == ErrorCode::NotLeader => {
                            self.cluster.set_leader_hint(&tp, hint)
                        }
                        _ => {
                            self.cluster.invalidate_leader(&tp);
                            self.metadata_stale = true;
                        }
                    },
                    code => {
                        let e = ClientError::broker(code, p.error_message, &tp.topic, tp.partition);
                        self.defer(e);
                    }
                }
            }
        }
        Ok(records)
    }

    fn defer(&mut self, error: ClientError) {
        if self.deferred_error.is_none() {
            self.deferred_error = Some(error);
        }
    }
}

/// Decodes one partition's fetched records as `isolation` sees them: with read_committed the
/// batches of `aborted` transactions are dropped.
fn decode_fetched(
    tp: &TopicPartition,
    bytes: Bytes,
    position: Offset,
    isolation: IsolationLevel,
    aborted: &[rafka_protocol::messages::AbortedTransaction],
) -> Result<(Vec<ConsumerRecord>, Offset)> {
    let filter = match isolation {
        IsolationLevel::ReadUncommitted => None,
        IsolationLevel::ReadCommitted => Some(AbortedFilter::new(aborted)),
    };
    decode_records_filtered(tp, bytes, position, filter)
}

/// Decodes the records of a fetch from `position` on; returns them and the next position.
///
/// The first batch may start before `position` (the broker returns whole batches), so earlier
/// records are skipped. The position moves past every whole batch, control batches and gaps
/// included. A partial batch at the end (cut by a size limit) is dropped and fetched again.
pub fn decode_records(
    tp: &TopicPartition,
    bytes: Bytes,
    position: Offset,
) -> Result<(Vec<ConsumerRecord>, Offset)> {
    decode_records_filtered(tp, bytes, position, None)
}

/// [`decode_records`], dropping the batches `aborted` says belong to aborted transactions
/// (read_committed). The position still moves past them: they are never to be returned.
pub fn decode_records_filtered(
    tp: &TopicPartition,
    bytes: Bytes,
    position: Offset,
    mut aborted: Option<AbortedFilter>,
) -> Result<(Vec<ConsumerRecord>, Offset)> {
    let corrupt = |e: BatchError| ClientError::Protocol {
        addr: String::new(),
        reason: format!("fetch of {tp} at offset {position}: {e}"),
    };
    let mut records = Vec::new();
    let mut next = position;
    for (whole_batches, batch) in BatchIter::new(bytes).enumerate() {
        let batch = match batch {
            Ok(b) => b,
            Err(BatchError::Truncated { .. }) if whole_batches > 0 => break,
            Err(e @ BatchError::Truncated { .. }) => {
                return Err(ClientError::Protocol {
                    addr: String::new(),
                    reason: format!(
                        "fetch of {tp} at offset {position} returned only part of a batch ({e}); \
                         raise max_partition_fetch_bytes"
                    ),
                })
            }
            Err(e) => return Err(corrupt(e)),
        };
        let header = *batch.header();
        let skip = match &mut aborted {
            Some(filter) => {
                let abort_marker = header.attributes.is_control()
                    && match batch.records().next() {
                        Some(r) => is_abort_marker_key(r.map_err(corrupt)?.key.as_deref()),
                        None => false,
                    };
                filter.skip(&header, abort_marker)
            }
            None => false,
        };
        if !skip && !header.attributes.is_control() {
            for record in batch.records() {
                let r = record.map_err(corrupt)?;
                if r.offset < position {
                    continue;
                }
                records.push(ConsumerRecord {
                    topic: tp.topic.clone(),
                    partition: tp.partition,
                    offset: r.offset,
                    timestamp: r.timestamp,
                    key: r.key,
                    value: r.value,
                    headers: r.headers,
                });
            }
        }
        next = next.max(header.next_offset());
    }
    Ok((records, next))
}

/// Asks the leader of `tp` for the offset matching `timestamp_ms` (or EARLIEST/LATEST),
/// retrying on leader changes and connection errors.
pub(crate) async fn list_offset(
    cluster: &Cluster,
    tp: &TopicPartition,
    timestamp_ms: i64,
    isolation_level: i32,
) -> Result<Offset> {
    let deadline = Instant::now() + cluster.config().request_timeout;
    let timeout = cluster.config().request_timeout;
    let topics = [tp.topic.clone()];
    cluster
        .retry(&topics, deadline, || async {
            let leader = cluster.leader(tp).await?;
            let conn = cluster.connection(leader).await?;
            let request = ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: tp.topic.clone(),
                    partitions: vec![ListOffsetsPartition {
                        partition: tp.partition,
                        timestamp_ms,
                    }],
                }],
                isolation_level,
            };
            let response = conn.send(request, timeout).await?;
            let result = response
                .topics
                .into_iter()
                .filter(|t| t.name == tp.topic)
                .flat_map(|t| t.partitions)
                .find(|p| p.partition == tp.partition)
                .ok_or_else(|| ClientError::Protocol {
                    addr: conn.addr().to_owned(),
                    reason: format!("list offsets response has no result for {tp}"),
                })?;
            let code = ErrorCode::from_code(result.error_code);
            if code.is_ok() {
                return Ok(Offset(result.offset));
            }
            if code == ErrorCode::NotLeader {
                match BrokerId::from_wire(result.leader_hint) {
                    Some(hint) => cluster.set_leader_hint(tp, hint),
                    None => cluster.invalidate_leader(tp),
                }
            }
            Err(ClientError::broker(
                code,
                result.error_message,
                &tp.topic,
                tp.partition,
            ))
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use rafka_protocol::batch::set_base_offset;
    use rafka_protocol::{BatchBuilder, BatchOptions};

    fn batch(base: u64, values: &[&str]) -> Bytes {
        let mut b = BatchBuilder::new(BatchOptions::default());
        for v in values {
            b.append(Some(Timestamp(1_000)), None, Some(v.as_bytes()), &[]);
        }
        let mut raw = BytesMut::from(&b.build()[..]);
        set_base_offset(&mut raw, Offset(base));
        raw.freeze()
    }

    #[test]
    fn the_fetch_carries_the_isolation_level() {
        let tp = TopicPartition::new("t", 0);
        for (level, wire) in [
            (IsolationLevel::ReadUncommitted, 0),
            (IsolationLevel::ReadCommitted, 1),
        ] {
            let consumer = Consumer::new(ConsumerConfig {
                isolation_level: level,
                ..ConsumerConfig::default()
            })
            .unwrap();
            let request = consumer.fetch_request(&[(tp.clone(), Offset(3))]);
            assert_eq!(request.isolation_level, wire);
        }
    }

    #[test]
    fn only_read_committed_drops_aborted_transactions() {
        use rafka_protocol::messages::AbortedTransaction;
        use rafka_protocol::{ProducerEpoch, ProducerId};
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: ProducerId(4),
            producer_epoch: ProducerEpoch(0),
            transactional: true,
            ..BatchOptions::default()
        });
        b.append(Some(Timestamp(1)), None, Some(b"aborted"), &[]);
        let bytes = b.build();
        let aborted = [AbortedTransaction {
            producer_id: 4,
            first_offset: 0,
        }];
        let tp = TopicPartition::new("t", 0);
        let (uncommitted, _) = decode_fetched(
            &tp,
            bytes.clone(),
            Offset(0),
            IsolationLevel::ReadUncommitted,
            &aborted,
        )
        .unwrap();
        assert_eq!(uncommitted.len(), 1);
        let (committed, next) = decode_fetched(
            &tp,
            bytes,
            Offset(0),
            IsolationLevel::ReadCommitted,
            &aborted,
        )
        .unwrap();
        assert!(committed.is_empty());
        assert_eq!(next, Offset(1));
    }

    #[test]
    fn records_before_the_position_are_skipped() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&batch(10, &["a", "b", "c"]));
        buf.extend_from_slice(&batch(13, &["d"]));
        let tp = TopicPartition::new("t", 0);
        let (records, next) = decode_records(&tp, buf.freeze(), Offset(11)).unwrap();
        let values: Vec<_> = records.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, vec!["b", "c", "d"]);
        assert_eq!(records[0].offset, Offset(11));
        assert_eq!(next, Offset(14));
    }

    #[test]
    fn a_trailing_partial_batch_is_dropped() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&batch(0, &["a"]));
        let second = batch(1, &["b"]);
        buf.extend_from_slice(&second[..second.len() - 4]);
        let tp = TopicPartition::new("t", 0);
        let (records, next) = decode_records(&tp, buf.freeze(), Offset(0)).unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(next, Offset(1));
        // Only a partial batch: an error that says what to change, not a silent stall.
        let partial = second.slice(..second.len() - 4);
        assert!(decode_records(&tp, partial, Offset(1)).is_err());
    }

    #[test]
    fn empty_fetch_keeps_the_position() {
        let tp = TopicPartition::new("t", 0);
        let (records, next) = decode_records(&tp, Bytes::new(), Offset(5)).unwrap();
        assert!(records.is_empty());
        assert_eq!(next, Offset(5));
    }

    #[test]
    fn corrupt_batches_are_errors() {
        let mut raw = BytesMut::from(&batch(0, &["a"])[..]);
        let last = raw.len() - 1;
        raw[last] ^= 1;
        let tp = TopicPartition::new("t", 0);
        assert!(matches!(
            decode_records(&tp, raw.freeze(), Offset(0)),
            Err(ClientError::Protocol { .. })
        ));
    }
}

//! The producer: [`Producer`] accepts records, batches them per partition and sends them.
//!
//! `send` picks the partition, waits for buffer memory (backpressure once
//! `buffer_bytes_max` is queued) and appends the record to the [`accumulator`]; it returns a
//! [`DeliveryFuture`] that resolves when the broker acknowledged the record (or the producer
//! gave up). One background task, the [`sender`], owns sending: it drains ready batches,
//! groups them by leader into produce requests and handles each partition's result on its
//! own (retry, redirect, complete).
//!
//! Idempotence is on by default (as in Kafka since 3.0): the producer gets a producer id from
//! the cluster (InitProducerId) and stamps every batch with it and a per-partition sequence
//! number, so up to five batches per partition may be in flight and a retried batch is never
//! appended twice nor out of order (the partition leader answers a duplicate with its
//! original offsets). Without it, one request per partition is in flight so that retries
//! cannot reorder records, and a retry after an ambiguous failure may duplicate.
//!
//! Transactions (a [`ProducerConfig::transactional_id`]) build on idempotence: the identity
//! comes from the transaction coordinator (`init_transactions`), every record is sent inside a
//! transaction that commits or aborts as a whole, and consumed offsets can join it
//! (`send_offsets_to_transaction`), so a read-process-write loop is exactly-once for
//! read_committed consumers. [`txn_state`] is the state machine (which call is allowed when),
//! [`txn`] the requests to the coordinators; the sender adds each partition to the transaction
//! before its first batch goes. Each transaction ends with a new producer epoch (EndTxn hands
//! it out), under which every partition starts again at sequence 0.
//!
//! The producer stops when its last handle is dropped, after sending what was queued (an open
//! transaction is then aborted by the coordinator when it times out, or by the next producer
//! with the same transactional id).

mod accumulator;
mod sender;
mod txn;
mod txn_state;

pub use txn_state::TransactionState;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rafka_protocol::batch::HEADER_BYTES;
use rafka_protocol::{BatchBuilder, Header, Offset, Timestamp};
use tokio::sync::{oneshot, Notify, Semaphore};
use tokio::time::Instant;

use crate::cluster::{ClientConfig, Cluster, BOOTSTRAP_DEFAULT};
use crate::connection::{lock, ConnectionConfig};
use crate::error::{ClientError, Result};
use accumulator::{Accumulator, NewRecord};

/// Batches of one partition in flight at most with idempotence: the partition leader
/// remembers the last five batches of each producer, so a retry of any of them is recognised.
pub const MAX_IN_FLIGHT_PER_PARTITION_IDEMPOTENT: usize = 5;

/// How long a send waits for a topic the cluster does not know before failing: long enough
/// for a topic created a moment ago to reach every broker, short enough that a mistyped name
/// fails promptly.
pub const UNKNOWN_TOPIC_WAIT: Duration = Duration::from_secs(2);

/// Largest produce request the sender builds, well under the 16 MiB frame limit so protobuf
/// overhead never pushes a request over it. A single record must fit in it.
pub const REQUEST_BYTES_MAX: usize = 8 << 20;

/// How many replicas must have a record before the broker acknowledges it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    /// No acknowledgement at all: the broker never answers; offsets are unknown.
    None,
    /// The leader appended it.
    Leader,
    /// Every in-sync replica (a majority of the Raft group) has it.
    All,
}

impl Acks {
    pub fn wire(self) -> i32 {
        match self {
            Acks::None => rafka_protocol::api::acks::NONE,
            Acks::Leader => rafka_protocol::api::acks::LEADER,
            Acks::All => rafka_protocol::api::acks::ALL,
        }
    }
}

/// Producer settings. Defaults follow Kafka's where they exist.
#[derive(Debug, Clone)]
pub struct ProducerConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap: String,
    pub client_id: String,
    pub acks: Acks,
    /// How long a non-full batch waits for more records before it is sent.
    pub linger_ms: u64,
    /// Target size of one batch; a larger single record gets a batch of its own.
    pub batch_bytes: usize,
    /// Produce requests in flight per broker connection.
    pub max_in_flight: usize,
    /// Idempotent delivery: retries never duplicate nor reorder records. Needs `acks=all`.
    pub enable_idempotence: bool,
    /// With idempotence, batches of one partition in flight at most (1..=5: the partition
    /// leader remembers the last five batches of each producer).
    pub max_in_flight_per_partition: usize,
    /// Attempts after the first; `None` retries until the delivery timeout.
    pub retries: Option<u32>,
    pub retry_backoff_ms: u64,
    /// Longest wait for one produce response; after it the attempt's outcome is unknown.
    pub request_timeout_ms: u64,
    /// Longest time from `send` to the final outcome, retries included. Also bounds each
    /// transactional call's requests to the coordinators (init, offsets, commit, abort).
    pub delivery_timeout_ms: u64,
    /// Record bytes queued or in flight at most; `send` waits while this is reached.
    pub buffer_bytes_max: usize,
    /// Makes the producer transactional (needs idempotence): records are sent only inside
    /// transactions (`init_transactions` once, then `begin_transaction` ...
    /// `commit_transaction` or `abort_transaction`). Producers with the same id fence each
    /// other: the newest `init_transactions` wins and aborts what its predecessor left open.
    pub transactional_id: Option<String>,
    /// How long the coordinator lets a transaction stay open before aborting it (which fences
    /// this producer). Sent with InitProducerId.
    pub transaction_timeout_ms: u64,
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap: BOOTSTRAP_DEFAULT.to_owned(),
            client_id: "rafka-producer".to_owned(),
            acks: Acks::All,
            linger_ms: 5,
            batch_bytes: 1 << 20,
            max_in_flight: 5,
            enable_idempotence: true,
            max_in_flight_per_partition: 5,
            retries: None,
            retry_backoff_ms: 100,
            request_timeout_ms: 30_000,
            delivery_timeout_ms: 120_000,
            buffer_bytes_max: 64 << 20,
            transactional_id: None,
            transaction_timeout_ms: 60_000,
        }
    }
}

impl ProducerConfig {
    /// Checks how the limits relate.
    pub fn validate(&self) -> Result<()> {
        let invalid = |m: String| Err(ClientError::InvalidArgument(m));
        if self.batch_bytes == 0 || self.batch_bytes > REQUEST_BYTES_MAX {
            return invalid(format!(
                "batch_bytes must be in 1..={REQUEST_BYTES_MAX}, not {}",
                self.batch_bytes
            ));
        }
        if self.buffer_bytes_max < self.batch_bytes {
            return invalid(format!(
                "buffer_bytes_max ({}) must be at least batch_bytes ({})",
                self.buffer_bytes_max, self.batch_bytes
            ));
        }
        // Semaphore permits are counted in u32 by `acquire_many`.
        if self.buffer_bytes_max > u32::MAX as usize {
            return invalid("buffer_bytes_max must be below 4 GiB".into());
        }
        if self.max_in_flight == 0 {
            return invalid("max_in_flight must be at least 1".into());
        }
        if self.enable_idempotence {
            if self.acks != Acks::All {
                return invalid(
                    "idempotence needs acks=all (turn enable_idempotence off for acks 0 or 1)"
                        .into(),
                );
            }
            if !(1..=MAX_IN_FLIGHT_PER_PARTITION_IDEMPOTENT)
                .contains(&self.max_in_flight_per_partition)
            {
                return invalid(format!(
                    "max_in_flight_per_partition must be within 1..={MAX_IN_FLIGHT_PER_PARTITION_IDEMPOTENT} with idempotence, not {}",
                    self.max_in_flight_per_partition
                ));
            }
        }
        if let Some(id) = &self.transactional_id {
            if id.is_empty() {
                return invalid(
                    "transactional_id must not be empty (use None for a producer without \
                     transactions)"
                        .into(),
                );
            }
            if !self.enable_idempotence {
                return invalid(
                    "transactions need idempotence: set enable_idempotence (and acks=all)".into(),
                );
            }
            // The wire field is a u32; 0 there would mean "the broker's default".
            if self.transaction_timeout_ms == 0 || self.transaction_timeout_ms > u64::from(u32::MAX)
            {
                return invalid(format!(
                    "transaction_timeout_ms must be in 1..={}, not {}",
                    u32::MAX,
                    self.transaction_timeout_ms
                ));
            }
        }
        if self.delivery_timeout_ms < self.linger_ms + self.request_timeout_ms {
            return invalid(format!(
                "delivery_timeout_ms ({}) must be at least linger_ms + request_timeout_ms ({})",
                self.delivery_timeout_ms,
                self.linger_ms + self.request_timeout_ms
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
                in_flight_max: self.max_in_flight,
                ..ConnectionConfig::default()
            },
        }
    }
}

/// A record to send.
#[derive(Debug, Clone, Default)]
pub struct ProducerRecord {
    pub topic: String,
    /// `None`: by key hash, or sticky for unkeyed records.
    pub partition: Option<u32>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// `None`: the time of `send`.
    pub timestamp: Option<Timestamp>,
}

impl ProducerRecord {
    /// An unkeyed record with a value.
    pub fn new(topic: impl Into<String>, value: impl Into<Bytes>) -> ProducerRecord {
        ProducerRecord {
            topic: topic.into(),
            value: Some(value.into()),
            ..ProducerRecord::default()
        }
    }

    pub fn with_key(mut self, key: impl Into<Bytes>) -> ProducerRecord {
        self.key = Some(key.into());
        self
    }

    pub fn with_partition(mut self, partition: u32) -> ProducerRecord {
        self.partition = Some(partition);
        self
    }
}

/// Where an acknowledged record landed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordMetadata {
    pub topic: String,
    pub partition: u32,
    /// `None` with acks=0, where the broker never says.
    pub offset: Option<Offset>,
}

/// Resolves to the outcome of one sent record.
#[must_use = "a record's outcome is only known by awaiting its DeliveryFuture"]
pub struct DeliveryFuture {
    rx: oneshot::Receiver<Result<RecordMetadata>>,
}

impl Future for DeliveryFuture {
    type Output = Result<RecordMetadata>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

/// State shared by the handles and the sender task.
struct Shared {
    cluster: Cluster,
    config: ProducerConfig,
    accumulator: Mutex<Accumulator>,
    /// One permit per byte of record data queued or in flight.
    memory: Arc<Semaphore>,
    /// Wakes the sender: a new or full batch, a flush, a finished request.
    wake: Notify,
    /// Set while a metadata refresh for unknown leaders runs, so only one runs at a time.
    refreshing: AtomicBool,
    /// With a transactional id: the transaction's state and coordinator. Its state mutex is
    /// taken only while `accumulator` is held or with no other lock, never the other way.
    txn: Option<txn::Txn>,
}

impl Shared {
    /// Waits for the batches behind `signals` (from `begin_flush`) to complete, then ends the
    /// flush (also when this future is dropped half-way).
    async fn wait_flushed(&self, signals: Vec<tokio::sync::watch::Receiver<()>>) {
        struct EndFlush<'a>(&'a Shared);
        impl Drop for EndFlush<'_> {
            fn drop(&mut self) {
                lock(&self.0.accumulator).end_flush();
            }
        }
        let _end = EndFlush(self);
        self.wake.notify_one();
        for mut signal in signals {
            // Nothing is ever sent on the channel: `changed` returns when the batch is dropped.
            let _ = signal.changed().await;
        }
    }
}

/// Closes the accumulator when the last handle goes, so the sender drains and exits.
struct HandleGuard {
    shared: Arc<Shared>,
}

impl Drop for HandleGuard {
    fn drop(&mut self) {
        lock(&self.shared.accumulator).close();
        self.shared.wake.notify_one();
    }
}

/// A producer handle; clones share the same batches, connections and sender task.
#[derive(Clone)]
pub struct Producer {
    shared: Arc<Shared>,
    _guard: Arc<HandleGuard>,
}

impl Producer {
    /// Creates a producer and starts its sender task (needs a Tokio runtime). Connects lazily.
    pub fn new(config: ProducerConfig) -> Result<Producer> {
        config.validate()?;
        let cluster = Cluster::new(config.client_config())?;
        let mut accumulator = Accumulator::new(
            config.batch_bytes,
            Duration::from_millis(config.linger_ms),
            Duration::from_millis(config.delivery_timeout_ms),
        );
        if config.transactional_id.is_some() {
            accumulator = accumulator.with_transactions(config.max_in_flight_per_partition);
        } else if config.enable_idempotence {
            accumulator = accumulator.with_idempotence(config.max_in_flight_per_partition);
        }
        let txn = config
            .transactional_id
            .as_ref()
            .map(|id| txn::Txn::new(cluster.clone(), id));
        let shared = Arc::new(Shared {
            cluster,
            memory: Arc::new(Semaphore::new(config.buffer_bytes_max)),
            config,
            accumulator: Mutex::new(accumulator),
            wake: Notify::new(),
            refreshing: AtomicBool::new(false),
            txn,
        });
        tokio::spawn(sender::run(shared.clone()));
        Ok(Producer {
            _guard: Arc::new(HandleGuard {
                shared: shared.clone(),
            }),
            shared,
        })
    }

    /// Queues `record` and returns a future for its outcome. Waits while the buffer is full.
    /// Fails at once if the topic or partition does not exist or the record is too large.
    ///
    /// A transactional producer sends only between `begin_transaction` and the end of the
    /// transaction ([`ClientError::InvalidArgument`] otherwise), and not once the transaction
    /// must be aborted (its [`ClientError::Transaction`] error). A record's future says whether
    /// the broker stored it; whether it becomes visible to read_committed consumers is decided
    /// by the transaction's end.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture> {
        if let Some(txn) = &self.shared.txn {
            // Fail fast; checked again under the accumulator's lock before appending.
            lock(&txn.core).check_in_transaction("send")?;
        }
        let estimate = BatchBuilder::estimated_record_bytes(
            record.key.as_deref(),
            record.value.as_deref(),
            &record.headers,
        );
        let limit = REQUEST_BYTES_MAX
            .min(self.shared.config.buffer_bytes_max)
            .saturating_sub(HEADER_BYTES);
        if estimate > limit {
            return Err(ClientError::InvalidArgument(format!(
                "record of about {estimate} bytes exceeds the {limit}-byte limit"
            )));
        }
        let topic = self.topic_metadata(&record.topic).await?;
        let partitions = topic.partitions.len() as u32;
        if partitions == 0 {
            return Err(ClientError::broker_topic(
                rafka_protocol::ErrorCode::UnknownTopicOrPartition,
                "topic has no partitions",
                &record.topic,
            ));
        }
        if let Some(p) = record.partition.filter(|&p| p >= partitions) {
            return Err(ClientError::InvalidArgument(format!(
                "partition {p} does not exist: topic '{}' has {partitions} partitions",
                record.topic
            )));
        }
        // Backpressure: wait for buffer memory before queuing. Permits are forgotten here and
        // added back when the record's batch completes.
        let permits = self
            .shared
            .memory
            .acquire_many(estimate as u32)
            .await
            .map_err(|_| ClientError::Closed)?;
        permits.forget();
        let (tx, rx) = oneshot::channel();
        let appended = {
            let mut acc = lock(&self.shared.accumulator);
            // Under the accumulator's lock, as commit and abort take it to change the state and
            // collect what to flush: the record joins the transaction being ended, or is
            // refused; it never slips into the next one.
            let open = match &self.shared.txn {
                Some(txn) => lock(&txn.core).check_in_transaction("send"),
                None => Ok(()),
            };
            open.and_then(|()| {
                acc.append(
                    &record.topic,
                    record.partition,
                    partitions,
                    NewRecord {
                        timestamp: Some(record.timestamp.unwrap_or_else(Timestamp::now)),
                        key: record.key.as_deref(),
                        value: record.value.as_deref(),
                        headers: &record.headers,
                        completion: tx,
                        reserved_bytes: estimate,
                    },
                    Instant::now(),
                )
            })
        };
        match appended {
            Ok(a) => {
                if a.wake_sender {
                    self.shared.wake.notify_one();
                }
                Ok(DeliveryFuture { rx })
            }
            Err(e) => {
                self.shared.memory.add_permits(estimate);
                Err(e)
            }
        }
    }

    /// The topic's metadata, waiting out connection failures up to the request timeout (as
    /// Kafka's `max.block.ms`), and a topic the cluster does not know (yet) up to
    /// [`UNKNOWN_TOPIC_WAIT`].
    pub async fn topic_metadata(&self, topic: &str) -> Result<Arc<crate::cluster::TopicInfo>> {
        let cluster = &self.shared.cluster;
        if let Some(t) = cluster.cached_topic(topic) {
            return Ok(t);
        }
        let timeout = Duration::from_millis(self.shared.config.request_timeout_ms);
        let deadline = Instant::now() + timeout;
        // Each broker learns topics from the controller's log, so one asked a moment after a
        // topic was created may not know it yet: an unknown topic is asked about again for a
        // short while before it is the caller's error.
        let unknown_until = Instant::now() + UNKNOWN_TOPIC_WAIT.min(timeout);
        let retriable = |e: &ClientError| {
            (e.is_retriable() && e.code().is_none())
                || (e.code() == Some(rafka_protocol::ErrorCode::UnknownTopicOrPartition)
                    && Instant::now() < unknown_until)
        };
        cluster
            .retry_if(&[topic.to_owned()], deadline, retriable, || {
                cluster.topic(topic)
            })
            .await
    }

    /// Sends every record queued so far without waiting for linger, and waits until each has
    /// an outcome (read the outcomes from their [`DeliveryFuture`]s).
    pub async fn flush(&self) {
        let signals = lock(&self.shared.accumulator).begin_flush();
        self.shared.wait_flushed(signals).await;
    }

    /// The cluster view this producer uses (metadata, connections).
    pub fn cluster(&self) -> &Cluster {
        &self.shared.cluster
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_need_idempotence_and_a_sane_timeout() {
        let txn = ProducerConfig {
            transactional_id: Some("tx".into()),
            ..ProducerConfig::default()
        };
        txn.validate().unwrap();
        for bad in [
            ProducerConfig {
                enable_idempotence: false,
                acks: Acks::Leader,
                ..txn.clone()
            },
            ProducerConfig {
                transactional_id: Some(String::new()),
                ..txn.clone()
            },
            ProducerConfig {
                transaction_timeout_ms: 0,
                ..txn.clone()
            },
            ProducerConfig {
                transaction_timeout_ms: u64::from(u32::MAX) + 1,
                ..txn.clone()
            },
        ] {
            assert!(
                matches!(bad.validate(), Err(ClientError::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[tokio::test]
    async fn transactional_calls_on_a_plain_producer_are_refused() {
        let producer = Producer::new(ProducerConfig {
            bootstrap: "127.0.0.1:1".into(),
            ..ProducerConfig::default()
        })
        .unwrap();
        assert_eq!(producer.transaction_state(), None);
        for e in [
            producer.init_transactions().await.unwrap_err(),
            producer.begin_transaction().await.unwrap_err(),
            producer.commit_transaction().await.unwrap_err(),
            producer.abort_transaction().await.unwrap_err(),
        ] {
            assert!(e.to_string().contains("transactional_id"), "{e}");
        }
    }
}

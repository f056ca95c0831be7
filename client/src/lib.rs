//! Rafka's Rust client: producer, consumer and admin, and the `rafka` command-line client.
//!
//! - [`connection`]: one multiplexed TCP connection per broker (requests matched to responses by
//!   correlation id, bounded in flight).
//! - [`cluster`]: bootstrap, the metadata cache, leader lookup, connections per broker, retries.
//! - [`partitioner`]: Kafka-compatible key hashing (murmur2) and sticky partitioning.
//! - [`producer`]: batching per partition, ordered retries, bounded buffer memory;
//!   idempotence (on by default) and transactions (`init_transactions`, `begin_transaction`,
//!   `send_offsets_to_transaction`, `commit_transaction`/`abort_transaction`).
//! - [`consumer`]: assigned partitions or consumer-group subscriptions, seek, poll with one
//!   prefetch per broker, offset commits, read_uncommitted or read_committed isolation.
//! - [`coordinator`]: finding a consumer group's or a transactional id's coordinator and
//!   sending it requests.
//! - [`admin`]: topics, configs, cluster metadata, consumer groups (list, describe with lag,
//!   offset reset).
//! - [`error`]: [`ClientError`], which says whether a failure is retriable and whether a write's
//!   outcome is unknown rather than failed.
//! - `cli` (private): the `rafka` binary's commands.
//!
//! Everything needs a Tokio runtime; nothing connects until the first request.
//!
//! ```no_run
//! use std::time::Duration;
//! use rafka_client::{
//!     Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
//!     ProducerRecord, SeekTo, TopicPartition,
//! };
//!
//! # async fn demo() -> Result<(), rafka_client::ClientError> {
//! let bootstrap = "127.0.0.1:7092";
//! let admin = Admin::new(ClientConfig::new(bootstrap))?;
//! admin.create_topic(NewTopic::new("events").partitions(3)).await?;
//!
//! let producer = Producer::new(ProducerConfig {
//!     bootstrap: bootstrap.into(),
//!     ..ProducerConfig::default()
//! })?;
//! // `send` queues the record (waiting if the buffer is full); the returned future resolves
//! // when the broker acknowledged it.
//! let delivery = producer
//!     .send(ProducerRecord::new("events", "hello").with_key("user-1"))
//!     .await?;
//! let metadata = delivery.await?;
//! println!("written to partition {} at {:?}", metadata.partition, metadata.offset);
//! producer.flush().await;
//!
//! let mut consumer = Consumer::new(ConsumerConfig {
//!     bootstrap: bootstrap.into(),
//!     ..ConsumerConfig::default()
//! })?;
//! let tp = TopicPartition::new("events", metadata.partition);
//! consumer.assign([tp.clone()]);
//! consumer.seek(&tp, SeekTo::Earliest).await?;
//! for record in consumer.poll(Duration::from_secs(1)).await? {
//!     println!("{} {:?}", record.offset, record.value);
//! }
//! # Ok(())
//! # }
//! ```

pub mod admin;
#[doc(hidden)]
pub mod cli;
pub mod cluster;
pub mod connection;
pub mod consumer;
pub mod coordinator;
pub mod error;
pub mod partitioner;
pub mod producer;

pub use admin::group::{GroupDescription, GroupListing, MemberDescription, PartitionLag};
pub use admin::{Admin, ConfigChanges, ConfigEntry, NewTopic};
pub use cluster::{
    BrokerId, BrokerInfo, ClientConfig, Cluster, ClusterMetadata, PartitionInfo, TopicInfo,
    TopicPartition,
};
pub use consumer::{
    CommitHandle, Consumer, ConsumerConfig, ConsumerGroupMetadata, ConsumerRecord, IsolationLevel,
    NoopListener, RebalanceListener, SeekTo,
};
pub use coordinator::CoordinatorInfo;
pub use error::{ClientError, Result, TxnErrorKind};
pub use producer::{
    Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord, RecordMetadata,
    TransactionState,
};
pub use rafka_protocol as protocol;
pub use rafka_protocol::{ErrorCode, Header, Offset, Timestamp};

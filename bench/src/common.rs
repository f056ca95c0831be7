//! What `produce`, `consume` and `e2e` share: the connection and raw-limit flags, the Tokio
//! runtime, topic lookup and creation, payload generation, and collecting delivery outcomes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Args;
use futures::stream::{FuturesUnordered, StreamExt};
use rafka_client::{
    Admin, ClientConfig, ClientError, DeliveryFuture, ErrorCode, NewTopic, TopicInfo,
};
use tokio::sync::mpsc;

use crate::raw::random_bytes;
use crate::stats::{Counters, LatencyRecorder};
use crate::{Context, Failure, Result};

/// How long to wait for a new topic's partitions to get leaders.
const TOPIC_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the cluster is.
#[derive(Args, Debug, Clone)]
pub struct ConnectArgs {
    /// Bootstrap server(s), `HOST:PORT[,HOST:PORT...]`.
    #[arg(long, env = "RAFKA_BOOTSTRAP", default_value = "127.0.0.1:7092")]
    pub bootstrap: String,
}

/// Whether to measure the raw limit beside our figure.
#[derive(Args, Debug, Clone)]
pub struct RawArgs {
    /// Measure the raw limit (disk or loopback TCP) in the same run and print the ratio
    /// (the default).
    #[arg(long, overrides_with = "no_raw")]
    pub raw: bool,
    /// Skip the raw-limit measurement.
    #[arg(long, overrides_with = "raw")]
    pub no_raw: bool,
}

impl RawArgs {
    pub fn enabled(&self) -> bool {
        !self.no_raw
    }
}

/// A multi-threaded Tokio runtime (one worker per core).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context(|| "starting the Tokio runtime".into())
}

/// The topic's metadata; creates it with `partitions` partitions when it does not exist, then
/// waits until every partition has a leader.
pub async fn ensure_topic(bootstrap: &str, topic: &str, partitions: u32) -> Result<TopicInfo> {
    let admin = Admin::new(ClientConfig::new(bootstrap)).context(|| "creating a client".into())?;
    match admin.describe_topic(topic).await {
        Ok(info) if has_leaders(&info) => return Ok(info),
        Ok(_) => {}
        Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => {
            eprintln!("rafka-bench: creating topic '{topic}' with {partitions} partition(s)");
            match admin
                .create_topic(NewTopic::new(topic).partitions(partitions))
                .await
            {
                Ok(()) => {}
                Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
                Err(e) => return Err(Failure(format!("creating topic '{topic}': {e}"))),
            }
        }
        Err(e) => return Err(Failure(format!("looking up topic '{topic}': {e}"))),
    }
    let deadline = Instant::now() + TOPIC_READY_TIMEOUT;
    loop {
        let last = admin.describe_topic(topic).await;
        match last {
            Ok(info) if has_leaders(&info) => return Ok(info),
            _ if Instant::now() >= deadline => {
                let why = match last {
                    Ok(_) => "some partitions have no leader".to_owned(),
                    Err(e) => e.to_string(),
                };
                return Err(Failure(format!(
                    "topic '{topic}' not ready after {} s: {why}",
                    TOPIC_READY_TIMEOUT.as_secs()
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The metadata of an existing topic.
pub async fn describe_topic(bootstrap: &str, topic: &str) -> Result<TopicInfo> {
    let admin = Admin::new(ClientConfig::new(bootstrap)).context(|| "creating a client".into())?;
    admin
        .describe_topic(topic)
        .await
        .context(|| format!("looking up topic '{topic}'"))
}

fn has_leaders(info: &TopicInfo) -> bool {
    !info.partitions.is_empty() && info.partitions.iter().all(|p| p.leader.is_some())
}

/// Pseudo-random record values of one size, cut from one shared buffer: value `i` is
/// [`Payloads::get`]`(i)`, and consecutive values differ.
#[derive(Clone)]
pub struct Payloads {
    pool: Bytes,
    size: usize,
    count: usize,
}

impl Payloads {
    /// Distinct values in the pool.
    const DISTINCT: usize = 257;

    pub fn new(size: usize) -> Payloads {
        // Values start at different offsets of one buffer so that no two neighbours are equal
        // and a pool of about `DISTINCT` values costs about `DISTINCT * size` bytes.
        let count = Self::DISTINCT;
        let pool = Bytes::from(random_bytes(size * count + 8, 0xb5ad_4ece_da1c_e2a9));
        Payloads { pool, size, count }
    }

    pub fn get(&self, i: u64) -> Bytes {
        let start = (i % self.count as u64) as usize * self.size;
        self.pool.slice(start..start + self.size)
    }
}

/// Outcome counts of a set of deliveries.
pub struct Deliveries {
    /// Send→ack latency of every acknowledged record.
    pub latency: LatencyRecorder,
    pub acked: u64,
    pub failed: u64,
    pub first_error: Option<ClientError>,
    /// When the last acknowledgement arrived.
    pub last_ack: Option<Instant>,
}

/// A record handed to the producer: when `send` was called and its outcome.
pub type Sent = (Instant, DeliveryFuture);

/// Awaits the delivery futures coming through `rx`, all concurrently, until the channel closes
/// and every one has resolved. Counts `bytes_per_record` per ack in `counters`.
pub async fn collect_deliveries(
    mut rx: mpsc::UnboundedReceiver<Sent>,
    counters: Arc<Counters>,
    bytes_per_record: u64,
) -> Result<Deliveries> {
    let mut out = Deliveries {
        latency: LatencyRecorder::new()?,
        acked: 0,
        failed: 0,
        first_error: None,
        last_ack: None,
    };
    let mut pending = FuturesUnordered::new();
    let mut open = true;
    loop {
        tokio::select! {
            biased;
            Some((outcome, sent)) = pending.next(), if !pending.is_empty() => {
                let now = Instant::now();
                match outcome {
                    Ok(_) => {
                        out.acked += 1;
                        out.latency.record(now - sent);
                        out.last_ack = Some(now);
                        Counters::add(&counters.acked, 1);
                        Counters::add(&counters.acked_bytes, bytes_per_record);
                    }
                    Err(e) => {
                        out.failed += 1;
                        out.first_error.get_or_insert(e);
                    }
                }
            }
            next = rx.recv(), if open => match next {
                Some((sent, delivery)) => {
                    pending.push(async move { (delivery.await, sent) });
                }
                None => open = false,
            },
            else => break,
        }
    }
    Ok(out)
}

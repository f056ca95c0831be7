//! The client's view of the cluster: bootstrap addresses, the metadata cache (brokers, topics,
//! partition leaders) and one lazily dialed [`Connection`] per broker address.
//!
//! [`Cluster`] is a cheap, cloneable handle; the producer, consumer and admin each own one. The
//! cache sits behind a std mutex that is never held across an `.await`; connection setup uses
//! one async slot per address, so a broker that does not answer delays only the requests bound
//! for it.
//!
//! Retry policy lives here too ([`Cluster::retry`]): on a retriable error the operation is tried
//! again after a backoff, with a metadata refresh first when the error says leadership or the
//! connection changed (NOT_LEADER, UNKNOWN_TOPIC_OR_PARTITION, connection errors).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rafka_protocol::messages::{MetadataRequest, MetadataResponse};
use rafka_protocol::{ErrorCode, Offset, Request};
use tokio::time::Instant;

use crate::connection::{lock, Connection, ConnectionConfig};
use crate::error::{ClientError, Result};

/// The bootstrap address used when none is given (the broker's default client port).
pub const BOOTSTRAP_DEFAULT: &str = "127.0.0.1:7092";

/// A broker's node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BrokerId(pub i32);

impl std::fmt::Display for BrokerId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl BrokerId {
    /// Reads a wire node id, where a negative value means "none".
    pub fn from_wire(id: i32) -> Option<BrokerId> {
        (id >= 0).then_some(BrokerId(id))
    }
}

/// A partition of a topic.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: u32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: u32) -> TopicPartition {
        TopicPartition {
            topic: topic.into(),
            partition,
        }
    }
}

impl std::fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.topic, self.partition)
    }
}

impl<T: Into<String>> From<(T, u32)> for TopicPartition {
    fn from((topic, partition): (T, u32)) -> Self {
        TopicPartition::new(topic, partition)
    }
}

/// Settings shared by the producer, consumer and admin clients.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Comma-separated `host:port` list used to find the cluster.
    pub bootstrap: String,
    /// Longest wait for one response (the request may still be applied after it: unknown).
    pub request_timeout: Duration,
    /// Pause between retries of a failed request.
    pub retry_backoff: Duration,
    /// Connection setup and per-connection in-flight bound.
    pub connection: ConnectionConfig,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            bootstrap: BOOTSTRAP_DEFAULT.to_owned(),
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            connection: ConnectionConfig::default(),
        }
    }
}

impl ClientConfig {
    /// A default configuration for the given bootstrap list.
    pub fn new(bootstrap: impl Into<String>) -> ClientConfig {
        ClientConfig {
            bootstrap: bootstrap.into(),
            ..ClientConfig::default()
        }
    }
}

/// One broker as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerInfo {
    pub id: BrokerId,
    pub host: String,
    pub port: u16,
}

impl BrokerInfo {
    /// `host:port`, with brackets around an IPv6 host.
    pub fn addr(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// One partition as metadata describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    /// `None` while the partition has no leader (an election is under way, or no replica lives).
    pub leader: Option<BrokerId>,
    pub leader_epoch: i32,
    pub replicas: Vec<BrokerId>,
    pub in_sync_replicas: Vec<BrokerId>,
    pub log_start_offset: Offset,
    pub high_watermark: Offset,
    /// A per-partition error the broker reported (e.g. LEADER_NOT_AVAILABLE-like states).
    pub error: ErrorCode,
}

impl PartitionInfo {
    /// Fewer replicas in sync than assigned.
    pub fn is_under_replicated(&self) -> bool {
        self.in_sync_replicas.len() < self.replicas.len()
    }
}

/// One topic as metadata describes it, partitions sorted by number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicInfo {
    pub name: String,
    pub partitions: Vec<PartitionInfo>,
}

/// A snapshot of the whole cluster's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterMetadata {
    pub cluster_id: String,
    pub controller: Option<BrokerId>,
    /// Sorted by id.
    pub brokers: Vec<BrokerInfo>,
    /// Sorted by name.
    pub topics: Vec<TopicInfo>,
}

impl ClusterMetadata {
    fn from_wire(resp: MetadataResponse) -> (ClusterMetadata, Vec<(String, ErrorCode)>) {
        let mut brokers: Vec<BrokerInfo> = resp
            .brokers
            .into_iter()
            .filter_map(|b| {
                Some(BrokerInfo {
                    id: BrokerId::from_wire(b.node_id)?,
                    host: b.host,
                    port: u16::try_from(b.port).ok()?,
                })
            })
            .collect();
        brokers.sort_by_key(|b| b.id);
        let mut topics = Vec::new();
        let mut errors = Vec::new();
        for t in resp.topics {
            let code = ErrorCode::from_code(t.error_code);
            if !code.is_ok() {
                errors.push((t.name, code));
                continue;
            }
            let mut partitions: Vec<PartitionInfo> = t
                .partitions
                .into_iter()
                .map(|p| PartitionInfo {
                    partition: p.partition,
                    leader: BrokerId::from_wire(p.leader_id),
                    leader_epoch: p.leader_epoch,
                    replicas: p.replicas.into_iter().map(BrokerId).collect(),
                    in_sync_replicas: p.in_sync_replicas.into_iter().map(BrokerId).collect(),
                    log_start_offset: Offset(p.log_start_offset),
                    high_watermark: Offset(p.high_watermark),
                    error: ErrorCode::from_code(p.error_code),
                })
                .collect();
            partitions.sort_by_key(|p| p.partition);
            topics.push(TopicInfo {
                name: t.name,
                partitions,
            });
        }
        topics.sort_by(|a, b| a.name.cmp(&b.name));
        let meta = ClusterMetadata {
            cluster_id: resp.cluster_id,
            controller: BrokerId::from_wire(resp.controller_id),
            brokers,
            topics,
        };
        (meta, errors)
    }

    /// The topic named `name`, if the snapshot has it.
    pub fn topic(&self, name: &str) -> Option<&TopicInfo> {
        self.topics.iter().find(|t| t.name == name)
    }
}

/// What the client last learned about the cluster.
#[derive(Default)]
struct Cache {
    brokers: BTreeMap<BrokerId, String>,
    controller: Option<BrokerId>,
    topics: HashMap<String, Arc<TopicInfo>>,
}

/// One connection slot per address; the async mutex serializes dialing that address only.
type Slot = Arc<tokio::sync::Mutex<Option<Connection>>>;

struct Inner {
    config: ClientConfig,
    bootstrap: Vec<String>,
    cache: Mutex<Cache>,
    slots: Mutex<HashMap<String, Slot>>,
    /// Where the next [`Cluster::send_any`] starts in its list of brokers.
    next_any: std::sync::atomic::AtomicUsize,
}

/// A handle to the client's cluster view and connections; clones share them.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

impl Cluster {
    /// Parses the bootstrap list. Dials nothing yet: the first request does.
    pub fn new(config: ClientConfig) -> Result<Cluster> {
        let bootstrap = parse_bootstrap(&config.bootstrap)?;
        Ok(Cluster {
            inner: Arc::new(Inner {
                config,
                bootstrap,
                next_any: std::sync::atomic::AtomicUsize::new(0),
                cache: Mutex::new(Cache::default()),
                slots: Mutex::new(HashMap::new()),
            }),
        })
    }

    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// A live connection to `addr`, dialed now if there is none.
    pub async fn connection_to_addr(&self, addr: &str) -> Result<Connection> {
        let slot = lock(&self.inner.slots)
            .entry(addr.to_owned())
            .or_default()
            .clone();
        let mut guard = slot.lock().await;
        if let Some(conn) = guard.as_ref().filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = Connection::connect(addr, &self.inner.config.connection).await?;
        *guard = Some(conn.clone());
        Ok(conn)
    }

    /// A live connection to broker `id`, whose address must be known from metadata.
    pub async fn connection(&self, id: BrokerId) -> Result<Connection> {
        let addr = lock(&self.inner.cache).brokers.get(&id).cloned();
        match addr {
            Some(addr) => self.connection_to_addr(&addr).await,
            None => {
                self.refresh_metadata(&[]).await?;
                let addr = lock(&self.inner.cache).brokers.get(&id).cloned();
                let addr = addr.ok_or_else(|| ClientError::Connect {
                    addr: format!("broker {id}"),
                    reason: "not in cluster metadata".into(),
                })?;
                self.connection_to_addr(&addr).await
            }
        }
    }

    /// Sends `request` to any reachable broker: known brokers first, then the bootstrap list.
    pub async fn send_any<R: Request + Clone>(&self, request: R) -> Result<R::Response> {
        let mut candidates: Vec<String> =
            lock(&self.inner.cache).brokers.values().cloned().collect();
        for b in &self.inner.bootstrap {
            if !candidates.contains(b) {
                candidates.push(b.clone());
            }
        }
        // Start at a different broker each time: one that answers but is cut off from the
        // others (and so knows no leaders) must not be the only one ever asked.
        candidates.sort();
        if !candidates.is_empty() {
            let start = self
                .inner
                .next_any
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let len = candidates.len();
            candidates.rotate_left(start % len);
        }
        let timeout = self.inner.config.request_timeout;
        let mut last = None;
        for addr in candidates {
            let result = match self.connection_to_addr(&addr).await {
                Ok(conn) => conn.send(request.clone(), timeout).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(resp) => return Ok(resp),
                Err(e) if e.is_retriable() => {
                    tracing::debug!(addr, error = %e, "broker unavailable, trying the next one");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| ClientError::InvalidArgument("no bootstrap servers".into())))
    }

    /// Sends `request` to the controller when it is known, else to any broker.
    pub async fn send_controller<R: Request + Clone>(&self, request: R) -> Result<R::Response> {
        let controller = lock(&self.inner.cache).controller;
        if let Some(id) = controller {
            let timeout = self.inner.config.request_timeout;
            match self.connection(id).await {
                Ok(conn) => return conn.send(request, timeout).await,
                Err(e) => tracing::debug!(error = %e, "controller unreachable"),
            }
        }
        self.send_any(request).await
    }

    /// Fetches metadata for `topics` (every topic when empty), updates the cache and returns
    /// the snapshot. Topics the broker reports with an error are missing from the snapshot.
    pub async fn refresh_metadata(&self, topics: &[String]) -> Result<ClusterMetadata> {
        let resp = self
            .send_any(MetadataRequest {
                topics: topics.to_vec(),
            })
            .await?;
        let (meta, errors) = ClusterMetadata::from_wire(resp);
        let mut cache = lock(&self.inner.cache);
        cache.brokers = meta.brokers.iter().map(|b| (b.id, b.addr())).collect();
        cache.controller = meta.controller;
        if topics.is_empty() {
            cache.topics.clear();
        }
        for (name, code) in errors {
            tracing::debug!(topic = name, %code, "metadata error for topic");
            cache.topics.remove(&name);
        }
        for t in &meta.topics {
            cache.topics.insert(t.name.clone(), Arc::new(t.clone()));
        }
        Ok(meta)
    }

    /// The cached metadata of `topic`, fetched if absent. A topic the cluster does not have is
    /// a [`ClientError::Broker`] with UNKNOWN_TOPIC_OR_PARTITION.
    pub async fn topic(&self, topic: &str) -> Result<Arc<TopicInfo>> {
        if let Some(t) = self.cached_topic(topic) {
            return Ok(t);
        }
        self.refresh_metadata(&[topic.to_owned()]).await?;
        self.cached_topic(topic)
            .ok_or_else(|| ClientError::broker_topic(ErrorCode::UnknownTopicOrPartition, "", topic))
    }

    /// The cached metadata of `topic`, without asking the cluster.
    pub fn cached_topic(&self, topic: &str) -> Option<Arc<TopicInfo>> {
        lock(&self.inner.cache).topics.get(topic).cloned()
    }

    /// The cached leader of a partition, without asking the cluster.
    pub fn cached_leader(&self, tp: &TopicPartition) -> Option<BrokerId> {
        let cache = lock(&self.inner.cache);
        let topic = cache.topics.get(&tp.topic)?;
        topic
            .partitions
            .iter()
            .find(|p| p.partition == tp.partition)?
            .leader
    }

    /// The leader of a partition, refreshing metadata once when it is not cached. A partition
    /// without a leader is a retriable NOT_LEADER error.
    pub async fn leader(&self, tp: &TopicPartition) -> Result<BrokerId> {
        if let Some(id) = self.cached_leader(tp) {
            return Ok(id);
        }
        let topic = self.topic(&tp.topic).await?;
        let partition = topic
            .partitions
            .iter()
            .find(|p| p.partition == tp.partition)
            .ok_or_else(|| {
                ClientError::broker(
                    ErrorCode::UnknownTopicOrPartition,
                    "",
                    &tp.topic,
                    tp.partition,
                )
            })?;
        match partition.leader {
            Some(id) => Ok(id),
            None => {
                // The cache may be stale: ask again before the caller's next attempt.
                self.refresh_metadata(std::slice::from_ref(&tp.topic))
                    .await?;
                self.cached_leader(tp).ok_or_else(|| {
                    ClientError::broker(
                        ErrorCode::NotLeader,
                        "partition has no leader",
                        &tp.topic,
                        tp.partition,
                    )
                })
            }
        }
    }

    /// Records that `tp` is now led by `leader` (from a NOT_LEADER hint), so the next attempt
    /// goes there without a metadata round trip.
    pub fn set_leader_hint(&self, tp: &TopicPartition, leader: BrokerId) {
        let mut cache = lock(&self.inner.cache);
        if !cache.brokers.contains_key(&leader) {
            return;
        }
        if let Some(topic) = cache.topics.get_mut(&tp.topic) {
            let t = Arc::make_mut(topic);
            if let Some(p) = t
                .partitions
                .iter_mut()
                .find(|p| p.partition == tp.partition)
            {
                p.leader = Some(leader);
            }
        }
    }

    /// Forgets the leader of `tp`, so the next lookup asks the cluster.
    pub fn invalidate_leader(&self, tp: &TopicPartition) {
        let mut cache = lock(&self.inner.cache);
        if let Some(topic) = cache.topics.get_mut(&tp.topic) {
            let t = Arc::make_mut(topic);
            if let Some(p) = t
                .partitions
                .iter_mut()
                .find(|p| p.partition == tp.partition)
            {
                p.leader = None;
            }
        }
    }

    /// Runs `op` until it succeeds, fails with a non-retriable error, or `deadline` passes.
    /// Between attempts it waits the retry backoff, and refreshes metadata for `topics` first
    /// when the error calls for it.
    pub async fn retry<T, F, Fut>(&self, topics: &[String], deadline: Instant, op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        self.retry_if(topics, deadline, ClientError::is_retriable, op)
            .await
    }

    /// [`Cluster::retry`] with the caller deciding which errors are worth another attempt
    /// (e.g. UNKNOWN_TOPIC_OR_PARTITION is final when deleting a topic).
    pub async fn retry_if<T, F, Fut>(
        &self,
        topics: &[String],
        deadline: Instant,
        retriable: impl Fn(&ClientError) -> bool,
        mut op: F,
    ) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let backoff = self.inner.config.retry_backoff;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(e) if retriable(&e) && Instant::now() + backoff < deadline => {
                    tracing::debug!(error = %e, "retrying");
                    tokio::time::sleep(backoff).await;
                    if e.needs_metadata_refresh() {
                        if let Err(refresh) = self.refresh_metadata(topics).await {
                            tracing::debug!(error = %refresh, "metadata refresh failed");
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Splits a comma-separated `host:port` list, rejecting empty entries and missing ports.
pub fn parse_bootstrap(list: &str) -> Result<Vec<String>> {
    let addrs: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    if addrs.is_empty() {
        return Err(ClientError::InvalidArgument(
            "empty bootstrap server list".into(),
        ));
    }
    for a in &addrs {
        let port = a.rsplit_once(':').map(|(_, p)| p);
        if port.and_then(|p| p.parse::<u16>().ok()).is_none() {
            return Err(ClientError::InvalidArgument(format!(
                "bootstrap server '{a}' is not HOST:PORT"
            )));
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bootstrap_lists() {
        assert_eq!(
            parse_bootstrap("a:1, b:2,").unwrap(),
            vec!["a:1".to_owned(), "b:2".to_owned()]
        );
        assert!(parse_bootstrap("").is_err());
        assert!(parse_bootstrap("hostonly").is_err());
        assert!(parse_bootstrap("h:notaport").is_err());
    }

    #[test]
    fn ipv6_broker_addresses_get_brackets() {
        let b = BrokerInfo {
            id: BrokerId(1),
            host: "::1".into(),
            port: 7092,
        };
        assert_eq!(b.addr(), "[::1]:7092");
    }
}

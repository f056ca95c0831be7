//! A cluster of real `rafka-broker` processes for tests: start, kill, pause, wipe, isolate and
//! restart brokers, ask any of them for metadata, wait for leaders, and compare replicas'
//! files.
//!
//! Nodes are numbered 1..=N (the broker's `--node-id`); every method takes that id. Each node
//! gets its own data directory under one temporary directory, and free ports for clients,
//! peers and metrics. With [`ClusterOptions::link_proxies`], every directed broker-to-broker
//! link `i -> j` goes through its own [`LinkProxy`]: broker `i`'s `--peers` names broker `j` at
//! the address of that proxy, so [`Cluster::isolate`] can cut a broker off from the others
//! (both directions) without network namespaces.
//!
//! When a test panics while a `Cluster` is alive, dropping it prints the end of every broker's
//! log and keeps the directory (data and full logs) for inspection.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rafka_client::{
    Admin, BrokerId, ClientConfig, ClusterMetadata, NewTopic, PartitionInfo, TopicPartition,
};

use crate::checksums::{self, Agreement, PartitionLog};
use crate::harness::{binary, free_port, http_get, READY_TIMEOUT};
use crate::proxy::LinkProxy;

/// Pause between two looks in the `wait_*` helpers.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How long one metadata request may take before that broker counts as not answering.
pub const METADATA_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a broker may take to exit after SIGTERM.
pub const TERMINATE_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines of each broker printed when a test fails.
const LOG_TAIL_LINES: usize = 300;

/// How to start a [`Cluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    /// Route every broker-to-broker link through a [`LinkProxy`] that can be cut.
    pub link_proxies: bool,
    /// Extra flags for every broker.
    pub extra_flags: Vec<String>,
    /// Extra environment variables for every broker.
    pub env: Vec<(String, String)>,
    /// Keep data directories and logs here (created if missing, never deleted) instead of in a
    /// temporary directory.
    pub root: Option<PathBuf>,
    /// Nodes configured as voters but not started (start them with [`Cluster::restart`]).
    pub absent: Vec<i32>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            link_proxies: false,
            extra_flags: Vec::new(),
            env: Vec::new(),
            root: None,
            absent: Vec::new(),
        }
    }
}

/// One broker of the cluster, running or not.
pub struct Node {
    pub id: i32,
    pub data_dir: PathBuf,
    pub client_port: u16,
    pub peer_port: u16,
    pub metrics_port: u16,
    pub log_path: PathBuf,
    /// This node's `--peers` (its own view of where the others are).
    pub peers: String,
    child: Option<Child>,
    stopped: bool,
    starts: u32,
}

impl Node {
    /// `127.0.0.1:PORT` of the client listener.
    pub fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// The process exists (it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process exists and is not paused: it can answer.
    pub fn is_up(&self) -> bool {
        self.child.is_some() && !self.stopped
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The broker's stdout and stderr so far, over all its runs.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Where the partition's segments live.
    pub fn partition_dir(&self, topic: &str, partition: u32) -> PathBuf {
        self.data_dir
            .join("topics")
            .join(format!("{topic}-{partition}"))
    }

    fn spawn(&mut self, extra: &[String], env: &[(String, String)]) {
        assert!(self.child.is_none(), "node {} is already running", self.id);
        self.starts += 1;
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .expect("broker log file");
        let _ = writeln!(
            log,
            "----- harness: node {} start #{} (unix ms {}) -----",
            self.id,
            self.starts,
            unix_ms()
        );
        let mut cmd = Command::new(binary("rafka-broker"));
        crate::harness::die_with_parent(&mut cmd);
        let child = cmd
            .arg("--node-id")
            .arg(self.id.to_string())
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--listen")
            .arg(self.bootstrap())
            .arg("--advertise")
            .arg(self.bootstrap())
            .arg("--peer-listen")
            .arg(format!("127.0.0.1:{}", self.peer_port))
            .arg("--peers")
            .arg(&self.peers)
            .arg("--metrics-listen")
            .arg(format!("127.0.0.1:{}", self.metrics_port))
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn rafka-broker");
        self.child = Some(child);
        self.stopped = false;
    }

    fn signal(&self, signal: &str) {
        let pid = self.pid().expect("node is running");
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed: {status}");
    }

    /// `Some(status)` once the process has exited (and is reaped).
    fn exited(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }
}

/// A running cluster. Dropping it SIGKILLs every broker.
pub struct Cluster {
    root: Option<tempfile::TempDir>,
    root_path: PathBuf,
    nodes: Vec<Node>,
    /// `(from, to)` -> the proxy `from` dials to reach `to`.
    links: BTreeMap<(i32, i32), LinkProxy>,
    extra: Vec<String>,
    env: Vec<(String, String)>,
}

/// One broker's view of a partition's leadership, agreed by a majority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub id: i32,
    /// The leader epoch (Raft term).
    pub epoch: i32,
    /// The leader's own metadata for the partition.
    pub info: PartitionInfo,
}

impl Cluster {
    /// Starts `nodes` brokers and waits until each is ready.
    pub async fn start(nodes: usize) -> Cluster {
        Self::start_with(ClusterOptions {
            nodes,
            ..ClusterOptions::default()
        })
        .await
    }

    /// Starts a cluster as `options` say and waits until every broker is ready and a
    /// controller is known.
    pub async fn start_with(options: ClusterOptions) -> Cluster {
        assert!(options.nodes >= 1, "a cluster needs a node");
        let (root, root_path) = match &options.root {
            Some(dir) => {
                std::fs::create_dir_all(dir).expect("cluster root dir");
                (None, dir.clone())
            }
            None => {
                let root = tempfile::Builder::new()
                    .prefix("rafka-cluster-")
                    .tempdir()
                    .expect("cluster temp dir");
                let path = root.path().to_path_buf();
                (Some(root), path)
            }
        };
        let ids: Vec<i32> = (1..=options.nodes as i32).collect();
        let ports: BTreeMap<i32, (u16, u16, u16)> = ids
            .iter()
            .map(|&id| (id, (free_port(), free_port(), free_port())))
            .collect();
        let mut links = BTreeMap::new();
        if options.link_proxies {
            for &from in &ids {
                for &to in &ids {
                    if from != to {
                        let upstream = format!("127.0.0.1:{}", ports[&to].1);
                        links.insert((from, to), LinkProxy::start(upstream));
                    }
                }
            }
        }
        let nodes = ids
            .iter()
            .map(|&id| {
                let (client_port, peer_port, metrics_port) = ports[&id];
                let peers: Vec<String> = ids
                    .iter()
                    .map(|&other| match links.get(&(id, other)) {
                        Some(link) => format!("{other}={}", link.addr),
                        None => format!("{other}=127.0.0.1:{}", ports[&other].1),
                    })
                    .collect();
                Node {
                    id,
                    data_dir: root_path.join(format!("node-{id}")),
                    client_port,
                    peer_port,
                    metrics_port,
                    log_path: root_path.join(format!("node-{id}.log")),
                    peers: peers.join(","),
                    child: None,
                    stopped: false,
                    starts: 0,
                }
            })
            .collect();
        let mut cluster = Cluster {
            root,
            root_path,
            nodes,
            links,
            extra: options.extra_flags,
            env: options.env,
        };
        let present: Vec<i32> = cluster
            .ids()
            .into_iter()
            .filter(|id| !options.absent.contains(id))
            .collect();
        for &id in &present {
            let (extra, env) = (cluster.extra.clone(), cluster.env.clone());
            cluster.node_mut(id).spawn(&extra, &env);
        }
        for &id in &present {
            cluster.wait_ready(id).await;
        }
        cluster
            .wait_until(
                READY_TIMEOUT,
                "a controller known to every broker",
                async || {
                    for id in cluster.up_ids() {
                        let m = cluster.metadata_from(id).await?;
                        if m.controller.is_none() {
                            return Err(format!("node {id} knows no controller"));
                        }
                    }
                    Ok(())
                },
            )
            .await;
        cluster
    }

    /// Node ids, ascending.
    pub fn ids(&self) -> Vec<i32> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn node(&self, id: i32) -> &Node {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    fn node_mut(&mut self, id: i32) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// The directory holding every node's data and log.
    pub fn root(&self) -> &Path {
        &self.root_path
    }

    /// Client addresses of every broker, comma-separated.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_of(&self.ids())
    }

    /// Client addresses of the given brokers, comma-separated.
    /// The bootstrap list of every node but `id` (the survivors once `id` is killed).
    pub fn bootstrap_without(&self, id: i32) -> String {
        let others: Vec<i32> = self.ids().into_iter().filter(|i| *i != id).collect();
        self.bootstrap_of(&others)
    }

    pub fn bootstrap_of(&self, ids: &[i32]) -> String {
        ids.iter()
            .map(|&id| self.node(id).bootstrap())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Nodes that can answer (running and not paused).
    pub fn up_ids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .filter(|n| n.is_up())
            .map(|n| n.id)
            .collect()
    }

    /// The smallest number of nodes that is a majority.
    pub fn majority(&self) -> usize {
        self.nodes.len() / 2 + 1
    }

    // ---- processes ------------------------------------------------------------------------

    /// SIGKILL: no flush, no goodbye. A paused node is killed too.
    pub fn kill(&mut self, id: i32) {
        let node = self.node_mut(id);
        let mut child = node
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        let _ = child.kill();
        let _ = child.wait();
        node.stopped = false;
    }

    /// SIGKILLs every running node (all signals first, then the reaping).
    pub fn kill_all(&mut self) {
        let mut children: Vec<Child> = Vec::new();
        for node in &mut self.nodes {
            if let Some(mut c) = node.child.take() {
                let _ = c.kill();
                children.push(c);
            }
            node.stopped = false;
        }
        for mut c in children {
            let _ = c.wait();
        }
    }

    /// Starts a stopped (killed or terminated) node again on its data directory and ports, and
    /// waits until it is ready.
    pub async fn restart(&mut self, id: i32) {
        let (extra, env) = (self.extra.clone(), self.env.clone());
        self.node_mut(id).spawn(&extra, &env);
        self.wait_ready(id).await;
    }

    /// Starts every node that is not running, then waits until all are ready.
    pub async fn restart_all(&mut self) {
        let (extra, env) = (self.extra.clone(), self.env.clone());
        let down: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| !n.is_running())
            .map(|n| n.id)
            .collect();
        for &id in &down {
            self.node_mut(id).spawn(&extra, &env);
        }
        for id in down {
            self.wait_ready(id).await;
        }
    }

    /// Sends `signal` (a name `kill` accepts, like `USR1`) to every running node at once, then
    /// waits up to `timeout` for all of them to exit and returns their exit statuses. Paused
    /// nodes are continued first so that they can act on it.
    pub async fn signal_all_and_reap(
        &mut self,
        signal: &str,
        timeout: Duration,
    ) -> Result<Vec<(i32, ExitStatus)>, String> {
        let running: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect();
        self.signal_and_reap(&running, signal, timeout).await
    }

    /// Continues paused nodes among `ids`, sends each `signal`, and reaps them all within
    /// `timeout`.
    async fn signal_and_reap(
        &mut self,
        ids: &[i32],
        signal: &str,
        timeout: Duration,
    ) -> Result<Vec<(i32, ExitStatus)>, String> {
        for &id in ids {
            let node = self.node_mut(id);
            if node.stopped {
                node.signal("CONT");
                node.stopped = false;
            }
            node.signal(signal);
        }
        let deadline = Instant::now() + timeout;
        let mut statuses = Vec::new();
        for &id in ids {
            loop {
                if let Some(status) = self.node_mut(id).exited() {
                    self.node_mut(id).child = None;
                    statuses.push((id, status));
                    break;
                }
                if Instant::now() >= deadline {
                    return Err(format!(
                        "node {id} did not exit within {timeout:?} of SIG{signal}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        Ok(statuses)
    }

    /// SIGSTOP: the process freezes with its sockets open (a long GC pause, a hung disk).
    pub fn stop(&mut self, id: i32) {
        let node = self.node_mut(id);
        assert!(!node.stopped, "node {id} is already paused");
        node.signal("STOP");
        node.stopped = true;
    }

    /// SIGCONT after [`Cluster::stop`].
    pub fn cont(&mut self, id: i32) {
        let node = self.node_mut(id);
        assert!(node.stopped, "node {id} is not paused");
        node.signal("CONT");
        node.stopped = false;
    }

    /// Deletes a node's data directory. The node must not be running.
    pub fn wipe(&mut self, id: i32) {
        let node = self.node(id);
        assert!(!node.is_running(), "kill node {id} before wiping it");
        if node.data_dir.exists() {
            std::fs::remove_dir_all(&node.data_dir).expect("remove data dir");
        }
    }

    /// SIGTERM and wait for the exit; the contract says a clean stop exits 0.
    pub async fn terminate(&mut self, id: i32) -> ExitStatus {
        self.terminate_many(&[id]).await[0]
    }

    /// SIGTERMs every running node at once and waits until all have exited 0.
    pub async fn terminate_all(&mut self) {
        let running: Vec<i32> = self
            .nodes
            .iter()
            .filter(|n| n.is_running())
            .map(|n| n.id)
            .collect();
        let statuses = self.terminate_many(&running).await;
        for (id, status) in running.into_iter().zip(statuses) {
            assert!(
                status.success(),
                "node {id} exited with {status} after SIGTERM (expected 0)"
            );
        }
    }

    async fn terminate_many(&mut self, ids: &[i32]) -> Vec<ExitStatus> {
        match self.signal_and_reap(ids, "TERM", TERMINATE_TIMEOUT).await {
            Ok(statuses) => statuses.into_iter().map(|(_, status)| status).collect(),
            Err(e) => panic!("{e}"),
        }
    }

    async fn wait_ready(&mut self, id: i32) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let port = self.node(id).metrics_port;
        loop {
            if let Some(status) = self.node_mut(id).exited() {
                self.node_mut(id).child = None;
                panic!("node {id} exited during start-up with {status}");
            }
            let ready = tokio::task::spawn_blocking(move || http_get(port, "/ready"))
                .await
                .expect("http task");
            if ready.is_some_and(|(code, _)| code == 200) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} not ready within {READY_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    // ---- links ----------------------------------------------------------------------------

    fn link(&self, from: i32, to: i32) -> &LinkProxy {
        self.links.get(&(from, to)).unwrap_or_else(|| {
            panic!("no link proxy {from} -> {to}: start the cluster with link_proxies")
        })
    }

    /// Cuts the directed link `from -> to` (what `from` sends to `to`, and the answers).
    pub fn cut_link(&self, from: i32, to: i32) {
        self.link(from, to).cut();
    }

    pub fn heal_link(&self, from: i32, to: i32) {
        self.link(from, to).heal();
    }

    /// Cuts every link to and from `id`.
    pub fn isolate(&self, id: i32) {
        for other in self.ids().into_iter().filter(|&o| o != id) {
            self.cut_link(id, other);
            self.cut_link(other, id);
        }
    }

    /// Heals every link.
    pub fn heal_all(&self) {
        for link in self.links.values() {
            link.heal();
        }
    }

    // ---- metadata and waiting -------------------------------------------------------------

    /// Metadata as node `id` sees it (one request, no retries).
    pub async fn metadata_from(&self, id: i32) -> Result<ClusterMetadata, String> {
        let node = self.node(id);
        if !node.is_up() {
            return Err(format!("node {id} is not up"));
        }
        let client = rafka_client::Cluster::new(ClientConfig {
            request_timeout: METADATA_TIMEOUT,
            ..ClientConfig::new(node.bootstrap())
        })
        .map_err(|e| e.to_string())?;
        match tokio::time::timeout(METADATA_TIMEOUT * 2, client.refresh_metadata(&[])).await {
            Ok(Ok(m)) => Ok(m),
            Ok(Err(e)) => Err(format!("node {id}: metadata failed: {e}")),
            Err(_) => Err(format!("node {id}: metadata timed out")),
        }
    }

    /// Metadata from the first node that answers.
    pub async fn metadata(&self) -> Result<ClusterMetadata, String> {
        let mut errors = Vec::new();
        for id in self.up_ids() {
            match self.metadata_from(id).await {
                Ok(m) => return Ok(m),
                Err(e) => errors.push(e),
            }
        }
        Err(format!("no node answered metadata: {}", errors.join("; ")))
    }

    /// A partition as node `id` sees it.
    pub async fn partition_from(
        &self,
        id: i32,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionInfo, String> {
        let m = self.metadata_from(id).await?;
        let t = m
            .topic(topic)
            .ok_or_else(|| format!("node {id} does not know topic {topic}"))?;
        t.partitions
            .iter()
            .find(|p| p.partition == partition)
            .cloned()
            .ok_or_else(|| format!("node {id} does not know partition {topic}-{partition}"))
    }

    /// The partition's leader if one is agreed: a majority of all nodes report the same leader
    /// and epoch, and that leader is up and names itself.
    pub async fn leader(&self, topic: &str, partition: u32) -> Result<Leader, String> {
        let mut views: BTreeMap<i32, PartitionInfo> = BTreeMap::new();
        let mut errors = Vec::new();
        for id in self.up_ids() {
            match self.partition_from(id, topic, partition).await {
                Ok(p) => {
                    views.insert(id, p);
                }
                Err(e) => errors.push(e),
            }
        }
        let mut votes: BTreeMap<(i32, i32), usize> = BTreeMap::new();
        for p in views.values() {
            if let Some(BrokerId(l)) = p.leader {
                *votes.entry((l, p.leader_epoch)).or_default() += 1;
            }
        }
        let describe = || {
            let v: Vec<String> = views
                .iter()
                .map(|(id, p)| {
                    format!(
                        "node {id}: leader {:?} epoch {} isr {:?} hw {}",
                        p.leader.map(|b| b.0),
                        p.leader_epoch,
                        p.in_sync_replicas.iter().map(|b| b.0).collect::<Vec<_>>(),
                        p.high_watermark.0
                    )
                })
                .chain(errors.iter().cloned())
                .collect();
            v.join("; ")
        };
        for ((leader, epoch), n) in votes {
            if n < self.majority() {
                continue;
            }
            if let Some(own) = views.get(&leader) {
                if own.leader == Some(BrokerId(leader)) && own.leader_epoch == epoch {
                    return Ok(Leader {
                        id: leader,
                        epoch,
                        info: own.clone(),
                    });
                }
            }
        }
        Err(format!(
            "no agreed leader for {topic}-{partition}: {}",
            describe()
        ))
    }

    /// Waits until the partition has an agreed leader ([`Cluster::leader`]); returns its id.
    pub async fn wait_for_leader(&self, topic: &str, partition: u32, timeout: Duration) -> i32 {
        self.wait_for_leader_where(topic, partition, timeout, "a leader", |_| true)
            .await
            .id
    }

    /// Waits until the partition has an agreed leader that `accept` likes (e.g. a different
    /// node than the one just killed, a higher epoch).
    pub async fn wait_for_leader_where(
        &self,
        topic: &str,
        partition: u32,
        timeout: Duration,
        what: &str,
        accept: impl Fn(&Leader) -> bool,
    ) -> Leader {
        let what = format!("{what} for {topic}-{partition}");
        self.wait_until(timeout, &what, async || {
            let l = self.leader(topic, partition).await?;
            if accept(&l) {
                Ok(l)
            } else {
                Err(format!(
                    "leader is node {} epoch {}, not the one awaited",
                    l.id, l.epoch
                ))
            }
        })
        .await
    }

    /// Waits until the leader reports every replica of the partition in sync; returns the
    /// leader.
    pub async fn wait_in_sync(&self, topic: &str, partition: u32, timeout: Duration) -> Leader {
        let what = format!("all replicas of {topic}-{partition} in sync");
        self.wait_until(timeout, &what, async || {
            let l = self.leader(topic, partition).await?;
            let mut isr: Vec<i32> = l.info.in_sync_replicas.iter().map(|b| b.0).collect();
            let mut replicas: Vec<i32> = l.info.replicas.iter().map(|b| b.0).collect();
            isr.sort_unstable();
            replicas.sort_unstable();
            if !replicas.is_empty() && isr == replicas {
                Ok(l)
            } else {
                Err(format!(
                    "leader {} reports in-sync {isr:?} of replicas {replicas:?}",
                    l.id
                ))
            }
        })
        .await
    }

    /// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok`, or panics after `timeout`
    /// naming `what` and the probe's last complaint.
    pub async fn wait_until<T>(
        &self,
        timeout: Duration,
        what: &str,
        probe: impl AsyncFnMut() -> Result<T, String>,
    ) -> T {
        wait_until(timeout, what, probe).await
    }

    /// Creates a topic with replication factor 3 (or the node count when smaller) and waits
    /// until every partition has an agreed leader.
    pub async fn create_topic(&self, name: &str, partitions: u32) {
        let rf = self.nodes.len().min(3) as u32;
        Admin::new(ClientConfig::new(self.bootstrap()))
            .expect("admin")
            .create_topic(
                NewTopic::new(name)
                    .partitions(partitions)
                    .replication_factor(rf),
            )
            .await
            .unwrap_or_else(|e| panic!("create topic {name}: {e}"));
        for p in 0..partitions {
            self.wait_for_leader(name, p, Duration::from_secs(30)).await;
        }
    }

    // ---- metrics --------------------------------------------------------------------------

    /// A metric of node `id` (`/metrics`), by name and labels; `None` when the node does not
    /// answer or has no such series.
    pub async fn metric(&self, id: i32, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let node = self.node(id);
        if !node.is_up() {
            return None;
        }
        let port = node.metrics_port;
        let (code, body) = tokio::task::spawn_blocking(move || http_get(port, "/metrics"))
            .await
            .ok()??;
        if code != 200 {
            return None;
        }
        metric_value(&body, name, labels)
    }

    /// `rafka_log_end_offset` of a partition on node `id`.
    pub async fn log_end_offset(&self, id: i32, tp: &TopicPartition) -> Option<u64> {
        let p = tp.partition.to_string();
        self.metric(
            id,
            "rafka_log_end_offset",
            &[("topic", &tp.topic), ("partition", &p)],
        )
        .await
        .map(|v| v as u64)
    }

    // ---- files ----------------------------------------------------------------------------

    /// Reads node `id`'s segments of a partition (see [`checksums::read_partition`]).
    pub fn read_partition(&self, id: i32, topic: &str, partition: u32) -> PartitionLog {
        self.try_read_partition(id, topic, partition)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// [`Cluster::read_partition`], with a missing or unreadable directory as an error.
    pub fn try_read_partition(
        &self,
        id: i32,
        topic: &str,
        partition: u32,
    ) -> Result<PartitionLog, String> {
        let dir = self.node(id).partition_dir(topic, partition);
        checksums::read_partition(&dir)
            .map_err(|e| format!("node {id}: cannot read {}: {e}", dir.display()))
    }

    /// Compares every node's copy of a partition over `0..committed`.
    pub fn compare_replicas(
        &self,
        topic: &str,
        partition: u32,
        committed: u64,
    ) -> Result<Agreement, String> {
        let mut logs = Vec::new();
        for id in self.ids() {
            logs.push((id, self.try_read_partition(id, topic, partition)?));
        }
        checksums::compare_replicas(&logs, 0, committed)
    }

    /// Waits until every node's files hold identical batches over `0..committed` (read while
    /// the brokers run: the committed part of a log does not change).
    pub async fn wait_replicas_agree(
        &self,
        topic: &str,
        partition: u32,
        committed: u64,
        timeout: Duration,
    ) -> Agreement {
        let what = format!("every replica of {topic}-{partition} identical below {committed}");
        self.wait_until(timeout, &what, async || {
            self.compare_replicas(topic, partition, committed)
        })
        .await
    }

    // ---- failure output -------------------------------------------------------------------

    /// Prints the last lines of every broker's log to stderr.
    pub fn dump_logs(&self) {
        for node in &self.nodes {
            let log = node.log();
            let lines: Vec<&str> = log.lines().collect();
            let from = lines.len().saturating_sub(LOG_TAIL_LINES);
            eprintln!(
                "===== node {} ({}; {} lines, last {} shown; full log {}) =====",
                node.id,
                if node.stopped {
                    "paused"
                } else if node.child.is_some() {
                    "running"
                } else {
                    "not running"
                },
                lines.len(),
                lines.len() - from,
                node.log_path.display()
            );
            for line in &lines[from..] {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump_logs();
            if let Some(root) = self.root.take() {
                let kept = root.keep();
                eprintln!("===== cluster files kept in {} =====", kept.display());
            }
        }
        self.kill_all();
    }
}

/// Keeps cluster tests from running beside each other: a 2-core machine cannot host two
/// clusters without turning timeouts into false failures (and, for groups, expired sessions).
/// nextest already runs them one at a time; this covers `cargo test`, which runs a file's tests
/// on parallel threads. Hold the returned file for the whole test.
pub async fn exclusive() -> std::fs::File {
    tokio::task::spawn_blocking(|| {
        let path = std::env::temp_dir().join("rafka-cluster-tests.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .expect("lock file");
        file.lock().expect("lock");
        file
    })
    .await
    .expect("lock task")
}

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Ok`, or panics after `timeout`,
/// naming `what` and the probe's last complaint.
pub async fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let started = Instant::now();
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(e) => e,
        };
        if started.elapsed() >= timeout {
            panic!("timed out after {timeout:?} waiting for {what}; last: {last}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The value of the series `name{labels...}` in a Prometheus text exposition (labels not
/// named in `labels` are ignored).
pub fn metric_value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    for line in body.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let found: Vec<(&str, &str)> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim().trim_matches('"')))
            .collect();
        if labels.iter().all(|l| found.contains(l)) {
            return value.trim().parse().ok();
        }
    }
    None
}

fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_values_by_name_and_labels() {
        let body = "# TYPE rafka_log_end_offset gauge\n\
                    rafka_log_end_offset{topic=\"a\",partition=\"0\"} 12\n\
                    rafka_log_end_offset{topic=\"a\",partition=\"1\"} 7\n\
                    rafka_up 1\n";
        let v = |name, labels: &[(&str, &str)]| metric_value(body, name, labels);
        assert_eq!(
            v(
                "rafka_log_end_offset",
                &[("topic", "a"), ("partition", "1")]
            ),
            Some(7.0)
        );
        assert_eq!(v("rafka_up", &[]), Some(1.0));
        assert_eq!(v("rafka_log_end_offset", &[("topic", "b")]), None);
    }
}

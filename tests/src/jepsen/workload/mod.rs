//! Workloads: what the client workers do during a run and how everything is read back at the
//! end. Adding a workload is adding one module here that implements [`Workload`], one arm in
//! [`by_name`], and its checks in the checker.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use rafka_client::{Admin, ClientConfig, ErrorCode, NewTopic};
use tokio::sync::watch;

use super::recorder::Recorder;

pub mod group;
pub mod queue;
pub mod txn;

/// What every worker gets.
#[derive(Clone)]
pub struct Env {
    pub recorder: Arc<Recorder>,
    pub bootstrap: String,
    /// Target operations per second, over all writers.
    pub rate_per_s: f64,
    pub seed: u64,
    /// Becomes `true` when workers must stop issuing operations.
    pub stop: watch::Receiver<bool>,
}

/// One kind of client activity, with its final read.
pub trait Workload: Send + Sync {
    fn name(&self) -> &'static str;

    /// The `(topic, partitions)` the workload uses, for the nemesis to find leaders.
    fn topics(&self) -> Vec<(String, u32)>;

    /// Creates what the workload needs before the run starts.
    fn setup<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>>;

    /// Runs the workers until `env.stop`; every operation started is completed (ok, fail or
    /// info) in the history before this returns.
    fn run<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, ()>;

    /// Reads back everything, after the cluster has healed, recording the reads in the
    /// history. `Err` when it could not finish (the checker then finds the reads missing).
    fn final_read<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>>;
}

/// The workload called `name` on the command line.
pub fn by_name(name: &str) -> Result<Box<dyn Workload>, String> {
    match name {
        "queue" => Ok(Box::new(queue::Queue::default())),
        "group" => Ok(Box::new(group::Group::default())),
        "txn" => Ok(Box::new(txn::Txn::default())),
        other => Err(format!("unknown workload '{other}' (queue|group|txn)")),
    }
}

/// An admin client with short timeouts, for setup and settling.
pub fn admin(bootstrap: &str) -> Result<Admin, String> {
    Admin::new(ClientConfig {
        bootstrap: bootstrap.to_owned(),
        request_timeout: Duration::from_secs(3),
        ..ClientConfig::default()
    })
    .map_err(|e| format!("admin client: {e}"))
}

/// Creates a replicated topic and waits until every partition has a leader with all replicas
/// in sync.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: u32) -> Result<(), String> {
    let admin = admin(bootstrap)?;
    let created = admin
        .create_topic(
            NewTopic::new(name)
                .partitions(partitions)
                .replication_factor(3),
        )
        .await;
    match created {
        Ok(()) => {}
        // The cluster is new for this run, so the topic is this call's own: an earlier
        // attempt created it and its answer was lost (a slow first election on a busy machine
        // outlasts the admin client's request timeout).
        Err(e) if e.code() == Some(ErrorCode::TopicAlreadyExists) => {}
        Err(e) => return Err(format!("create topic {name}: {e}")),
    }
    wait_settled(bootstrap, name, Duration::from_secs(60)).await
}

/// Waits until every partition of `topic` has a leader and every replica in sync, or `timeout`.
pub async fn wait_settled(bootstrap: &str, topic: &str, timeout: Duration) -> Result<(), String> {
    let admin = admin(bootstrap)?;
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last;
    loop {
        match admin.describe_topic(topic).await {
            Ok(info) => {
                let unsettled: Vec<String> = info
                    .partitions
                    .iter()
                    .filter(|p| p.leader.is_none() || p.in_sync_replicas.len() < p.replicas.len())
                    .map(|p| {
                        format!(
                            "{topic}-{}: leader {:?}, in sync {:?} of {:?}",
                            p.partition, p.leader, p.in_sync_replicas, p.replicas
                        )
                    })
                    .collect();
                if unsettled.is_empty() && !info.partitions.is_empty() {
                    return Ok(());
                }
                last = unsettled.join("; ");
            }
            Err(e) => last = e.to_string(),
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("{topic} not settled within {timeout:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

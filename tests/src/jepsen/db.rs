//! The cluster under test and the faults that can be done to it, behind one interface so that
//! the nemesis and the workloads do not care whether brokers are local processes or
//! containers.
//!
//! - `local`: three `rafka-broker` processes on this machine (the test harness's
//!   [`Cluster`]), every broker-to-broker link through its own cuttable proxy. Partitions are
//!   made by cutting proxies, so they affect broker-to-broker traffic only: clients can still
//!   reach every broker, including a minority one, as they could in a real network split
//!   between racks.
//! - `compose`: the repository's docker-compose cluster. Partitions disconnect a container
//!   from the compose network (clients reach brokers through published ports, which that
//!   leaves alone only for the host's view; see [`ComposeDb`]).
//!
//! Every operation returns `Err` with a readable reason instead of panicking, because a broker
//! that cannot restart is a finding to report, not a crash of the suite.

use std::path::Path;
use std::time::Duration;

use futures::FutureExt;
use rafka_client::{Admin, ClientConfig, TopicPartition};

use crate::cluster::{Cluster, ClusterOptions};
use crate::compose::{ComposeCluster, Docker};

/// The exit status of a broker that simulated a power loss (the broker's
/// `POWER_LOSS_EXIT_CODE`).
pub const POWER_LOSS_EXIT_CODE: i32 = rafka_broker::node::POWER_LOSS_EXIT_CODE;
/// How long brokers get to act on the power-loss signal.
const POWER_LOSS_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the cluster runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterKind {
    Local,
    Compose,
}

impl std::str::FromStr for ClusterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "local" => Ok(ClusterKind::Local),
            "compose" => Ok(ClusterKind::Compose),
            other => Err(format!("unknown cluster kind '{other}' (local|compose)")),
        }
    }
}

/// The cluster under test.
pub enum Db {
    Local(Box<Cluster>),
    Compose(ComposeDb),
}

/// Runs a harness call that reports failure by panicking, turning the panic into `Err`.
async fn guarded<T>(what: &str, f: impl std::future::Future<Output = T>) -> Result<T, String> {
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            format!("{what}: {msg}")
        })
}

impl Db {
    /// Starts a three-broker cluster. Local brokers keep their data and logs under `root`.
    pub async fn start(kind: ClusterKind, root: &Path) -> Result<Db, String> {
        match kind {
            ClusterKind::Local => {
                let options = ClusterOptions {
                    nodes: 3,
                    link_proxies: true,
                    extra_flags: Vec::new(),
                    env: vec![(
                        rafka_broker::node::POWER_LOSS_HOOK_ENV.to_owned(),
                        "1".to_owned(),
                    )],
                    root: Some(root.to_path_buf()),
                };
                let cluster =
                    guarded("starting the local cluster", Cluster::start_with(options)).await?;
                Ok(Db::Local(Box::new(cluster)))
            }
            ClusterKind::Compose => Ok(Db::Compose(
                guarded("starting the compose cluster", async {
                    ComposeDb::start(root)
                })
                .await??,
            )),
        }
    }

    /// Client bootstrap list covering every broker.
    pub fn bootstrap(&self) -> String {
        match self {
            Db::Local(c) => c.bootstrap(),
            Db::Compose(c) => c.cluster.bootstrap(),
        }
    }

    pub fn ids(&self) -> Vec<i32> {
        match self {
            Db::Local(c) => c.ids(),
            Db::Compose(_) => crate::compose::BROKERS.iter().map(|&b| b as i32).collect(),
        }
    }

    /// The broker currently leading `topic`-`partition`, asked of the cluster.
    pub async fn leader(&self, topic: &str, partition: u32) -> Option<i32> {
        let admin = Admin::new(ClientConfig {
            bootstrap: self.bootstrap(),
            request_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        })
        .ok()?;
        let tp = TopicPartition::new(topic, partition);
        let info = admin.describe_topic(topic).await.ok()?;
        info.partitions
            .iter()
            .find(|p| p.partition == tp.partition)
            .and_then(|p| p.leader)
            .map(|l| l.0)
    }

    /// SIGKILL one broker.
    pub async fn kill(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("kill", async { c.kill(id) }).await,
            Db::Compose(c) => c.docker(&["kill", &c.cluster.container(id as u32)]),
        }
    }

    /// Starts a killed broker again and waits until it is ready.
    pub async fn start_node(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded(&format!("restarting node {id}"), c.restart(id)).await,
            Db::Compose(c) => {
                guarded(&format!("restarting node {id}"), async {
                    c.cluster.start(id as u32);
                    c.cluster
                        .wait_healthy(&[id as u32], crate::harness::READY_TIMEOUT);
                })
                .await
            }
        }
    }

    /// SIGSTOP one broker.
    pub async fn pause(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("pause", async { c.stop(id) }).await,
            Db::Compose(c) => c.docker(&["pause", &c.cluster.container(id as u32)]),
        }
    }

    /// SIGCONT a paused broker.
    pub async fn resume(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("resume", async { c.cont(id) }).await,
            Db::Compose(c) => c.docker(&["unpause", &c.cluster.container(id as u32)]),
        }
    }

    /// Cuts `id` off from every other broker, both directions.
    pub async fn isolate(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("isolate", async { c.isolate(id) }).await,
            Db::Compose(c) => c.isolate(id),
        }
    }

    /// Cuts the link between two brokers, both directions (a partial partition: each still
    /// reaches the third).
    pub async fn cut_pair(&mut self, a: i32, b: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => {
                guarded("cut", async {
                    c.cut_link(a, b);
                    c.cut_link(b, a);
                })
                .await
            }
            Db::Compose(_) => Err("partial partitions need the local cluster".into()),
        }
    }

    /// Heals every partition.
    pub async fn heal(&mut self) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("heal", async { c.heal_all() }).await,
            Db::Compose(c) => c.heal(),
        }
    }

    /// SIGKILL every broker at once.
    pub async fn kill_all(&mut self) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("kill all", async { c.kill_all() }).await,
            Db::Compose(c) => {
                for id in crate::compose::BROKERS {
                    c.docker(&["kill", &c.cluster.container(id)])?;
                }
                Ok(())
            }
        }
    }

    /// Simulated power loss of every broker at once: each drops what it wrote but had not
    /// fsynced and exits (the broker's test-only hook, armed by the environment).
    pub async fn power_loss_all(&mut self) -> Result<(), String> {
        match self {
            Db::Local(c) => {
                let statuses = guarded(
                    "power loss",
                    c.signal_all_and_reap("USR1", POWER_LOSS_TIMEOUT),
                )
                .await??;
                for (id, status) in statuses {
                    if status.code() != Some(POWER_LOSS_EXIT_CODE) {
                        return Err(format!(
                            "node {id} exited with {status} on SIGUSR1, not with the power-loss \
                             status {POWER_LOSS_EXIT_CODE}: is the hook armed?"
                        ));
                    }
                }
                Ok(())
            }
            Db::Compose(_) => Err("lose-unsynced needs the local cluster".into()),
        }
    }

    /// Starts every broker that is down and waits until all are ready.
    pub async fn start_all(&mut self) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("restarting all nodes", c.restart_all()).await,
            Db::Compose(c) => {
                for id in crate::compose::BROKERS {
                    let (state, _) = c.cluster.state(id);
                    if state != "running" {
                        c.cluster.start(id);
                    }
                }
                Ok(())
            }
        }
    }

    /// Undo every fault still in place: continue paused brokers, heal links, start brokers that
    /// are down.
    pub async fn heal_everything(&mut self) -> Result<(), String> {
        if let Db::Local(c) = self {
            for id in c.ids() {
                if c.node(id).is_stopped() {
                    c.cont(id);
                }
            }
        }
        if let Db::Compose(c) = self {
            for id in crate::compose::BROKERS {
                let _ = c.docker(&["unpause", &c.cluster.container(id)]);
            }
        }
        self.heal().await?;
        self.start_all().await
    }

    /// Prints the end of every broker's log (for a failed run).
    pub fn dump_logs(&self) {
        match self {
            Db::Local(c) => c.dump_logs(),
            Db::Compose(c) => eprintln!("{}", c.cluster.logs()),
        }
    }

    /// Stops every broker cleanly where it can.
    pub async fn shutdown(self) {
        match self {
            Db::Local(mut c) => {
                let _ = guarded("shutdown", c.terminate_all()).await;
            }
            Db::Compose(mut c) => c.cluster.down(),
        }
    }
}

/// The docker-compose cluster of the repository, with the broker image built from this
/// machine's binaries.
pub struct ComposeDb {
    pub cluster: ComposeCluster,
    network: String,
}

impl ComposeDb {
    fn start(_root: &Path) -> Result<ComposeDb, String> {
        let docker = Docker::detect()?;
        docker.build_local_image();
        let mut cluster = ComposeCluster::new(&docker, crate::compose::TEST_IMAGE);
        cluster.up(&[]);
        let ids: Vec<u32> = crate::compose::BROKERS.to_vec();
        cluster.wait_healthy(&ids, Duration::from_secs(120));
        let network = format!("{}_default", cluster.project);
        Ok(ComposeDb { cluster, network })
    }

    fn docker(&self, args: &[&str]) -> Result<(), String> {
        let run = crate::compose::run(
            std::process::Command::new("docker").args(args),
            None,
            Duration::from_secs(60),
        );
        if run.ok() {
            Ok(())
        } else {
            Err(run.describe())
        }
    }

    /// Disconnects the broker's container from the compose network: it can reach neither the
    /// other brokers nor be reached through its published port while cut off.
    fn isolate(&self, id: i32) -> Result<(), String> {
        let container = self.cluster.container(id as u32);
        self.docker(&["network", "disconnect", &self.network, &container])
    }

    fn heal(&self) -> Result<(), String> {
        for id in crate::compose::BROKERS {
            let container = self.cluster.container(id);
            // Connecting an already connected container fails harmlessly.
            let _ = self.docker(&[
                "network",
                "connect",
                "--alias",
                &format!("broker{id}"),
                &self.network,
                &container,
            ]);
        }
        Ok(())
    }
}

//! The cluster under test and the faults that can be done to it, behind one interface so that
//! the nemesis and the workloads do not care whether brokers are local processes or
//! containers.
//!
//! - `local`: three `rafka-broker` processes on this machine (the test harness's
//!   [`Cluster`]), every broker-to-broker link through its own cuttable proxy. Partitions are
//!   made by cutting proxies, so they affect broker-to-broker traffic only: clients can still
//!   reach every broker, including a minority one, as they could in a real network split
//!   between racks.
//! - `compose`: the repository's docker-compose cluster, three containers of an image built
//!   from this machine's binaries. Kill, pause and kill-all are `docker kill`/`start`/`pause`;
//!   a partition disconnects one container from the project's network, which cuts it off
//!   from the other brokers **and from the host's clients** (its published ports go with the
//!   network), unlike the local cluster's partitions; there are no partial partitions and no
//!   power loss. See [`ComposeDb`].
//!
//! Every operation returns `Err` with a readable reason instead of panicking, because a broker
//! that cannot restart is a finding to report, not a crash of the suite.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::FutureExt;
use rafka_client::{Admin, ClientConfig, TopicPartition};

use crate::cluster::{Cluster, ClusterOptions};
use crate::compose::{ComposeCluster, Docker, BROKERS};

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

impl ClusterKind {
    /// Whether the brokers can simulate a power loss (`lose-unsynced`): only local brokers
    /// run with the test-only hook armed.
    pub fn supports_power_loss(self) -> bool {
        self == ClusterKind::Local
    }

    /// Whether the link between two brokers can be cut while both keep the third (compose
    /// can only disconnect a container from the network as a whole).
    pub fn supports_partial_partitions(self) -> bool {
        self == ClusterKind::Local
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
                    absent: Vec::new(),
                };
                let cluster =
                    guarded("starting the local cluster", Cluster::start_with(options)).await?;
                Ok(Db::Local(Box::new(cluster)))
            }
            ClusterKind::Compose => Ok(Db::Compose(
                guarded("starting the compose cluster", async {
                    blocking(|| ComposeDb::start(root))
                })
                .await??,
            )),
        }
    }

    pub fn kind(&self) -> ClusterKind {
        match self {
            Db::Local(_) => ClusterKind::Local,
            Db::Compose(_) => ClusterKind::Compose,
        }
    }

    /// See [`ClusterKind::supports_power_loss`].
    pub fn supports_power_loss(&self) -> bool {
        self.kind().supports_power_loss()
    }

    /// See [`ClusterKind::supports_partial_partitions`].
    pub fn supports_partial_partitions(&self) -> bool {
        self.kind().supports_partial_partitions()
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
            Db::Compose(_) => BROKERS.iter().map(|&b| b as i32).collect(),
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
            Db::Compose(c) => blocking(|| c.kill(&[id])),
        }
    }

    /// Starts a killed broker again and waits until it is ready.
    pub async fn start_node(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded(&format!("restarting node {id}"), c.restart(id)).await,
            Db::Compose(c) => blocking(|| c.start_brokers(&[id])),
        }
    }

    /// SIGSTOP one broker.
    pub async fn pause(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("pause", async { c.stop(id) }).await,
            Db::Compose(c) => blocking(|| c.pause(id)),
        }
    }

    /// SIGCONT a paused broker.
    pub async fn resume(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("resume", async { c.cont(id) }).await,
            Db::Compose(c) => blocking(|| c.unpause(id)),
        }
    }

    /// Cuts `id` off from every other broker, both directions.
    pub async fn isolate(&mut self, id: i32) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("isolate", async { c.isolate(id) }).await,
            Db::Compose(c) => blocking(|| c.isolate(id)),
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
            Db::Compose(c) => blocking(|| c.heal()),
        }
    }

    /// SIGKILL every broker at once.
    pub async fn kill_all(&mut self) -> Result<(), String> {
        match self {
            Db::Local(c) => guarded("kill all", async { c.kill_all() }).await,
            Db::Compose(c) => blocking(|| c.kill(&c.ids())),
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
            Db::Compose(c) => blocking(|| c.start_brokers(&c.ids())),
        }
    }

    /// Undo every fault still in place: continue paused brokers, heal links, start brokers that
    /// are down.
    pub async fn heal_everything(&mut self) -> Result<(), String> {
        match self {
            Db::Local(c) => {
                for id in c.ids() {
                    if c.node(id).is_stopped() {
                        c.cont(id);
                    }
                }
                self.heal().await?;
                self.start_all().await
            }
            Db::Compose(c) => blocking(|| c.heal_everything()),
        }
    }

    /// Prints the end of every broker's log (for a failed run).
    pub fn dump_logs(&self) {
        match self {
            Db::Local(c) => c.dump_logs(),
            Db::Compose(c) => eprintln!("{}", blocking(|| c.cluster.logs())),
        }
    }

    /// Stops every broker cleanly where it can. A compose project is taken down with its
    /// volumes (`docker-compose down -v`) after saving the brokers' logs.
    pub async fn shutdown(self) {
        match self {
            Db::Local(mut c) => {
                let _ = guarded("shutdown", c.terminate_all()).await;
            }
            Db::Compose(mut c) => blocking(|| {
                c.save_logs();
                c.cluster.down();
            }),
        }
    }
}

/// Runs a blocking call (a `docker` command, a health-check poll) without stalling the
/// runtime's other tasks: on a multi-threaded runtime the worker hands its tasks to another
/// thread first, so the clients' latencies do not include the nemesis's `docker` calls.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// How long a started container gets to pass its health check (`rafka topic list` against
/// itself, every 3 s).
const COMPOSE_HEALTHY_TIMEOUT: Duration = Duration::from_secs(90);
/// Longest one `docker` call of the nemesis may take.
const DOCKER_CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The docker-compose cluster of the repository (a project of its own, with free host ports),
/// the broker image built from this machine's binaries the registry-less way
/// ([`Docker::build_local_image`]).
///
/// Faults are `docker` commands on the brokers' containers, whose ids are looked up once
/// (they survive `docker kill`/`start`/`pause`):
///
/// - kill: `docker kill` (SIGKILL), then `docker start` of the same container (same volume)
///   and a wait for its health check.
/// - pause: `docker pause`/`unpause` (the cgroup freezer: every process of the container
///   stops, as SIGSTOP would).
/// - partition: `docker network disconnect` of the broker's container from the project's
///   network, `docker network connect --alias brokerN` to heal (the alias is what the peers
///   dial; the engine puts the published ports back on reconnect). A disconnected container
///   has no network at all, so isolating a broker also cuts **the host's clients** off it:
///   its published client port stops answering until the heal. This differs from the local
///   cluster, where only broker-to-broker links are cut; clients here see a broker that is
///   down rather than a minority broker they can still talk to. Partial partitions (one
///   link between two brokers) are not available: the partition nemesis only isolates.
/// - kill-all: one `docker kill` of all three, then `docker start` and health checks.
/// - lose-unsynced: not available (the image's brokers run without the power-loss hook);
///   [`ClusterKind::supports_power_loss`] lets the CLI refuse it up front.
///
/// The project is taken down (`docker-compose down -v`: containers, network, volumes) by
/// [`Db::shutdown`], and by [`ComposeCluster`]'s `Drop` on every other way out of a run
/// (an error, a panic, the runtime shutting down on SIGINT/SIGTERM). Only a SIGKILL of
/// `rafka-jepsen` itself leaves the project behind (its name starts with `rafkatest<pid>x`).
/// [`Db::shutdown`] first saves the brokers' logs to `OUT/cluster/brokerN.log` (so does a
/// start that fails its health checks); the other ways out print them or leave them.
pub struct ComposeDb {
    pub cluster: ComposeCluster,
    /// The project's network (`<project>_default`, read from a container).
    network: String,
    /// Container id of each broker, by broker id.
    containers: Vec<(u32, String)>,
    /// Where the brokers' logs are saved at shutdown.
    root: PathBuf,
}

impl ComposeDb {
    fn start(root: &Path) -> Result<ComposeDb, String> {
        let docker = Docker::detect()?;
        let built = docker.build_local_image();
        eprintln!(
            "jepsen: image {} built in {built:.1?}",
            crate::compose::TEST_IMAGE
        );
        let mut cluster = ComposeCluster::new(&docker, crate::compose::TEST_IMAGE);
        let started = std::time::Instant::now();
        cluster.up(&[]);
        let mut containers = Vec::new();
        for id in BROKERS {
            containers.push((id, cluster.container(id)));
        }
        let mut db = ComposeDb {
            cluster,
            network: String::new(),
            containers,
            root: root.to_path_buf(),
        };
        if let Err(e) = db.wait_healthy(&BROKERS) {
            db.save_logs();
            return Err(format!(
                "{e}; broker logs in {}/brokerN.log",
                db.root.display()
            ));
        }
        let networks = db.inspect(
            1,
            "{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}",
        )?;
        let networks: Vec<&str> = networks.split_whitespace().collect();
        db.network = match networks[..] {
            [one] => one.to_owned(),
            _ => {
                return Err(format!(
                    "broker1 is on networks {networks:?}, expected just the project's"
                ))
            }
        };
        eprintln!(
            "jepsen: compose project {} healthy {:.1?} after up (network {}, brokers at {})",
            db.cluster.project,
            started.elapsed(),
            db.network,
            db.cluster.bootstrap()
        );
        Ok(db)
    }

    fn container(&self, id: i32) -> Result<&str, String> {
        self.containers
            .iter()
            .find(|(b, _)| *b as i32 == id)
            .map(|(_, c)| c.as_str())
            .ok_or_else(|| format!("no broker {id} in the compose cluster"))
    }

    fn ids(&self) -> Vec<i32> {
        self.containers.iter().map(|(b, _)| *b as i32).collect()
    }

    /// Runs `docker ARGS`; its stdout, or `Err` with what it said.
    fn docker(&self, args: &[&str]) -> Result<String, String> {
        let run = crate::compose::try_run(
            std::process::Command::new("docker").args(args),
            None,
            DOCKER_CALL_TIMEOUT,
        )
        .map_err(|e| format!("cannot run docker: {e}"))?;
        if run.ok() {
            Ok(run.stdout)
        } else {
            Err(format!(
                "docker {} failed: {}",
                args.join(" "),
                run.describe().replace('\n', " ")
            ))
        }
    }

    /// `docker inspect --format FORMAT` of broker `id`'s container, trimmed.
    fn inspect(&self, id: i32, format: &str) -> Result<String, String> {
        let container = self.container(id)?;
        Ok(self
            .docker(&["inspect", "--format", format, container])?
            .trim()
            .to_owned())
    }

    /// The container's status (`running`, `paused`, `exited`, ...) and health (`starting`,
    /// `healthy`, `unhealthy`).
    fn state(&self, id: i32) -> Result<(String, String), String> {
        let out = self.inspect(
            id,
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
        )?;
        let mut words = out.split_whitespace().map(str::to_owned);
        Ok((
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        ))
    }

    /// The broker's address on the project network; empty when it is disconnected.
    fn address(&self, id: i32) -> Result<String, String> {
        let format = format!(
            "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{.IPAddress}}}}{{{{end}}}}",
            self.network
        );
        self.inspect(id, &format)
    }

    /// Waits until every broker in `ids` passes its health check; `Err` at once when one
    /// has exited, or after [`COMPOSE_HEALTHY_TIMEOUT`].
    fn wait_healthy(&self, ids: &[u32]) -> Result<(), String> {
        let started = std::time::Instant::now();
        loop {
            let mut states = Vec::new();
            for &id in ids {
                states.push((id, self.state(id as i32)?));
            }
            if states.iter().all(|(_, (_, health))| health == "healthy") {
                return Ok(());
            }
            if let Some((id, (status, _))) = states.iter().find(|(_, (s, _))| s == "exited") {
                let code = self.inspect(*id as i32, "{{.State.ExitCode}}")?;
                return Err(format!(
                    "broker{id} is {status} (exit code {code}) instead of healthy"
                ));
            }
            if started.elapsed() > COMPOSE_HEALTHY_TIMEOUT {
                return Err(format!(
                    "brokers not healthy within {COMPOSE_HEALTHY_TIMEOUT:?}: {states:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    fn kill(&self, ids: &[i32]) -> Result<(), String> {
        let mut args = vec!["kill"];
        for &id in ids {
            args.push(self.container(id)?);
        }
        self.docker(&args).map(drop)
    }

    /// Starts the brokers of `ids` that are not running and waits until all of `ids` are
    /// healthy.
    fn start_brokers(&self, ids: &[i32]) -> Result<(), String> {
        let mut args = vec!["start"];
        for &id in ids {
            let (status, _) = self.state(id)?;
            match status.as_str() {
                "running" => {}
                "paused" => return Err(format!("broker{id} is paused, not down")),
                _ => args.push(self.container(id)?),
            }
        }
        if args.len() > 1 {
            self.docker(&args)?;
        }
        let ids: Vec<u32> = ids.iter().map(|&id| id as u32).collect();
        self.wait_healthy(&ids)
    }

    fn pause(&self, id: i32) -> Result<(), String> {
        self.docker(&["pause", self.container(id)?]).map(drop)
    }

    fn unpause(&self, id: i32) -> Result<(), String> {
        self.docker(&["unpause", self.container(id)?]).map(drop)
    }

    /// Disconnects the broker's container from the project network: it reaches neither the
    /// other brokers nor is reached through its published ports while cut off.
    fn isolate(&self, id: i32) -> Result<(), String> {
        self.docker(&["network", "disconnect", &self.network, self.container(id)?])
            .map(drop)
    }

    /// Connects every disconnected broker again, under its service name, and checks that the
    /// name and its published client port are back.
    fn heal(&self) -> Result<(), String> {
        for id in BROKERS {
            let id = id as i32;
            if !self.address(id)?.is_empty() {
                continue;
            }
            self.docker(&[
                "network",
                "connect",
                "--alias",
                &format!("broker{id}"),
                &self.network,
                self.container(id)?,
            ])?;
            // The address may differ from before (as after any container restart); the
            // peers find the broker by its service name, so that name must be back.
            let aliases = self.inspect(
                id,
                &format!(
                    "{{{{with index .NetworkSettings.Networks \"{}\"}}}}{{{{range .Aliases}}}}\
                     {{{{.}}}} {{{{end}}}}{{{{end}}}}",
                    self.network
                ),
            )?;
            if !aliases
                .split_whitespace()
                .any(|a| a == format!("broker{id}"))
            {
                return Err(format!(
                    "broker{id} reconnected without its service name (aliases {aliases:?})"
                ));
            }
            let ports = self.inspect(
                id,
                "{{range $p, $b := .NetworkSettings.Ports}}{{if $b}}{{$p}} {{end}}{{end}}",
            )?;
            if !ports.split_whitespace().any(|p| p == "7092/tcp") {
                return Err(format!(
                    "broker{id} reconnected without its published client port ({ports:?})"
                ));
            }
        }
        Ok(())
    }

    /// Undoes every fault: unpauses, reconnects, starts, then waits for every health check.
    fn heal_everything(&self) -> Result<(), String> {
        for id in BROKERS {
            let id = id as i32;
            if self.state(id)?.0 == "paused" {
                self.unpause(id)?;
            }
        }
        self.heal()?;
        let ids: Vec<i32> = BROKERS.iter().map(|&b| b as i32).collect();
        self.start_brokers(&ids)
    }

    /// Writes each broker's container log (all of it) to `root/brokerN.log`.
    fn save_logs(&self) {
        if let Err(e) = std::fs::create_dir_all(&self.root) {
            eprintln!("jepsen: cannot create {}: {e}", self.root.display());
            return;
        }
        for (id, container) in &self.containers {
            let path = self.root.join(format!("broker{id}.log"));
            let r = crate::compose::try_run(
                std::process::Command::new("docker").args(["logs", container]),
                None,
                DOCKER_CALL_TIMEOUT,
            );
            let text = match r {
                Ok(r) => format!("{}{}", r.stdout, r.stderr),
                Err(e) => format!("docker logs failed: {e}\n"),
            };
            if let Err(e) = std::fs::write(&path, text) {
                eprintln!("jepsen: cannot write {}: {e}", path.display());
            }
        }
    }
}

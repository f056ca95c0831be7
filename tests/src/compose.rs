//! The repository's `docker-compose.yml` cluster, driven from tests.
//!
//! The image is built the way a machine without a registry builds it: the base from the host's
//! own shared libraries (`docker/build-local-base.sh`), then `docker/Dockerfile.prebuilt`
//! through the compose file's build section, holding the binaries this test run uses. Each
//! [`ComposeCluster`] is a compose project of its own, with a unique name and free host ports,
//! so nothing collides with a cluster a developer has running; dropping it runs
//! `docker-compose down -v` (containers, network and volumes go), also when the test failed.
//!
//! Docker is optional on a developer's machine: [`docker_or_skip`] prints a loud SKIP and the
//! test returns. On CI (`CI=true`) a missing Docker fails the test instead.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{binary, free_port};

/// The broker ids of the compose file; broker N is the service `brokerN`.
pub const BROKERS: [u32; 3] = [1, 2, 3];

/// Image tag the tests build. Kept between runs so that an unchanged build is a cache hit; the
/// image it replaces is removed.
pub const TEST_IMAGE: &str = "rafka:compose-test";

/// Longest a `docker` or `docker-compose` call may take before it counts as hung.
const DOCKER_TIMEOUT: Duration = Duration::from_secs(180);

/// The workspace root, where `docker-compose.yml` lives.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lies in the workspace")
        .to_path_buf()
}

/// Whether this is a CI run (`CI=true`, as CI services set it), where skipping is not allowed.
pub fn on_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

/// What a command did.
#[derive(Debug, Clone)]
pub struct Run {
    /// The exit code; `None` when a signal or the time limit ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Exit status and both outputs, for assertion messages.
    pub fn describe(&self) -> String {
        let status = match (self.code, self.timed_out) {
            (_, true) => "timed out".to_owned(),
            (Some(c), _) => format!("exit {c}"),
            (None, _) => "killed by a signal".to_owned(),
        };
        format!(
            "{status}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.trim_end(),
            self.stderr.trim_end()
        )
    }
}

/// Runs `cmd` with `stdin` (none: /dev/null), killing it after `timeout`. Fails only when the
/// program cannot be started.
pub fn try_run(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> std::io::Result<Run> {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn()?;
    let writer = match (stdin, child.stdin.take()) {
        (Some(data), Some(mut input)) => {
            let data = data.to_owned();
            Some(std::thread::spawn(move || {
                let _ = input.write_all(data.as_bytes());
            }))
        }
        _ => None,
    };
    let out = drain(child.stdout.take());
    let err = drain(child.stderr.take());
    let deadline = Instant::now() + timeout;
    let (code, timed_out) = loop {
        if let Some(status) = child.try_wait()? {
            break (status.code(), false);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break (None, true);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Run {
        code,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
    })
}

/// [`try_run`] for programs that must exist.
pub fn run(cmd: &mut Command, stdin: Option<&str>, timeout: Duration) -> Run {
    let program = cmd.get_program().to_string_lossy().into_owned();
    try_run(cmd, stdin, timeout).unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// The host's `rafka` CLI (the workspace binary) against `bootstrap`, with a time limit.
pub fn rafka(bootstrap: &str, args: &[&str], stdin: Option<&str>, timeout: Duration) -> Run {
    run(
        Command::new(binary("rafka"))
            .arg("--bootstrap")
            .arg(bootstrap)
            .args(args),
        stdin,
        timeout,
    )
}

/// A reachable Docker engine and the compose command to use with it.
#[derive(Debug, Clone)]
pub struct Docker {
    /// `["docker-compose"]` (Compose v1, as on the CI machine) or `["docker", "compose"]`.
    compose: Vec<String>,
}

/// Docker and Compose, or `None` after a loud SKIP line. Panics instead of skipping on CI.
pub fn docker_or_skip(test: &str) -> Option<Docker> {
    match Docker::detect() {
        Ok(d) => Some(d),
        Err(reason) if on_ci() => {
            panic!("{test}: CI=true and Docker is needed, but {reason}")
        }
        Err(reason) => {
            eprintln!(
                "\n********************************************************************\n\
                 SKIP {test}: {reason}.\n\
                 This test needs a Docker engine and docker-compose; with CI=true it fails.\n\
                 ********************************************************************\n"
            );
            None
        }
    }
}

impl Docker {
    /// Finds the engine (`docker info`) and a compose command.
    pub fn detect() -> Result<Docker, String> {
        let info = try_run(
            Command::new("docker").args(["info", "--format", "{{.ServerVersion}}"]),
            None,
            Duration::from_secs(30),
        )
        .map_err(|e| format!("there is no docker command ({e})"))?;
        if !info.ok() {
            return Err(format!(
                "the Docker engine is unreachable ({})",
                info.stderr.trim()
            ));
        }
        for compose in [&["docker-compose"][..], &["docker", "compose"][..]] {
            let found = try_run(
                Command::new(compose[0]).args(&compose[1..]).arg("version"),
                None,
                Duration::from_secs(30),
            );
            if found.is_ok_and(|r| r.ok()) {
                return Ok(Docker {
                    compose: compose.iter().map(|s| s.to_string()).collect(),
                });
            }
        }
        Err("neither docker-compose nor the docker compose plugin is installed".into())
    }

    /// `docker-compose -p PROJECT -f docker-compose.yml [-f EXTRA]... ` with `env` set.
    fn compose_command(
        &self,
        project: &str,
        files: &[PathBuf],
        env: &[(String, String)],
    ) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..])
            .current_dir(repo_root())
            .arg("--project-name")
            .arg(project)
            .arg("--file")
            .arg(repo_root().join("docker-compose.yml"));
        for f in files {
            cmd.arg("--file").arg(f);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Builds [`TEST_IMAGE`] from the binaries of this test run, as on a machine without a
    /// registry: `docker/build-local-base.sh`, then `docker/Dockerfile.prebuilt` through the
    /// compose file's build section. Returns how long it took.
    pub fn build_local_image(&self) -> Duration {
        let started = Instant::now();
        let broker = binary("rafka-broker");
        binary("rafka");
        let bin_dir = broker.parent().expect("binary directory");
        let base = run(
            Command::new("bash")
                .arg(repo_root().join("docker/build-local-base.sh"))
                .arg("--bin-dir")
                .arg(bin_dir),
            None,
            DOCKER_TIMEOUT,
        );
        assert!(base.ok(), "build-local-base.sh failed: {}", base.describe());
        eprint!("{}", base.stdout);
        let previous = image_id(TEST_IMAGE);
        let env = build_env(TEST_IMAGE);
        let build = run(
            self.compose_command("rafka-image-build", &[], &env)
                .args(["build", "broker1"]),
            None,
            DOCKER_TIMEOUT,
        );
        assert!(
            build.ok(),
            "building {TEST_IMAGE} failed: {}",
            build.describe()
        );
        if let (Some(old), Some(new)) = (previous, image_id(TEST_IMAGE)) {
            if old != new {
                // Untagged now; still used only if a container of it survived somewhere.
                let _ = try_run(
                    Command::new("docker").args(["image", "rm", &old]),
                    None,
                    DOCKER_TIMEOUT,
                );
            }
        }
        started.elapsed()
    }
}

/// What the compose file reads for building the test image the local way.
fn build_env(image: &str) -> Vec<(String, String)> {
    [
        ("RAFKA_IMAGE", image),
        ("RAFKA_DOCKERFILE", "docker/Dockerfile.prebuilt"),
        ("RAFKA_BASE_IMAGE", "rafka-base:local"),
        ("RAFKA_BIN_DIR", "docker/staging"),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// The id of a local image, if there is one.
pub fn image_id(image: &str) -> Option<String> {
    let r = try_run(
        Command::new("docker").args(["image", "inspect", "--format", "{{.Id}}", image]),
        None,
        DOCKER_TIMEOUT,
    )
    .ok()?;
    r.ok().then(|| r.stdout.trim().to_owned())
}

/// One compose project of `docker-compose.yml`. Dropping it takes the project down, volumes
/// included.
pub struct ComposeCluster {
    docker: Docker,
    pub project: String,
    pub image: String,
    /// Host ports of brokers 1, 2 and 3.
    pub client_ports: [u16; 3],
    pub metrics_ports: [u16; 3],
    /// Compose files layered over `docker-compose.yml` (`--file`).
    extra_files: Vec<PathBuf>,
    started: bool,
}

impl ComposeCluster {
    /// A project with a unique name and free host ports; nothing runs yet.
    pub fn new(docker: &Docker, image: &str) -> ComposeCluster {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ComposeCluster {
            docker: docker.clone(),
            project: format!("rafkatest{}x{nanos}", std::process::id()),
            image: image.to_owned(),
            client_ports: [free_port(), free_port(), free_port()],
            metrics_ports: [free_port(), free_port(), free_port()],
            extra_files: Vec::new(),
            started: false,
        }
    }

    /// Layers another compose file over `docker-compose.yml`.
    pub fn with_file(mut self, file: PathBuf) -> ComposeCluster {
        self.extra_files.push(file);
        self
    }

    fn env(&self) -> Vec<(String, String)> {
        let mut env = build_env(&self.image);
        env.push(("RAFKA_BIND_HOST".into(), "127.0.0.1".into()));
        env.push(("RAFKA_ADVERTISE_HOST".into(), "127.0.0.1".into()));
        for (i, id) in BROKERS.iter().enumerate() {
            env.push((
                format!("RAFKA_BROKER{id}_CLIENT_PORT"),
                self.client_ports[i].to_string(),
            ));
            env.push((
                format!("RAFKA_BROKER{id}_METRICS_PORT"),
                self.metrics_ports[i].to_string(),
            ));
        }
        env
    }

    /// Runs `docker-compose <args>` for this project.
    pub fn compose(&self, args: &[&str]) -> Run {
        run(
            self.docker
                .compose_command(&self.project, &self.extra_files, &self.env())
                .args(args),
            None,
            DOCKER_TIMEOUT,
        )
    }

    /// `docker-compose up -d --no-build [services]` (the image must exist).
    pub fn up(&mut self, services: &[&str]) {
        // From here on, whatever part of the project exists is taken down on drop.
        self.started = true;
        let mut args = vec!["up", "-d", "--no-build"];
        args.extend_from_slice(services);
        let r = self.compose(&args);
        assert!(r.ok(), "docker-compose up failed: {}", r.describe());
    }

    /// The container id of broker `id`'s service (also when it is stopped).
    pub fn container(&self, id: u32) -> String {
        let service = format!("broker{id}");
        let r = self.compose(&["ps", "-q", &service]);
        let cid = r.stdout.trim().to_owned();
        assert!(
            r.ok() && !cid.is_empty(),
            "no container for {service}: {}",
            r.describe()
        );
        cid
    }

    /// The container's state and health, e.g. `("running", "healthy")`.
    pub fn state(&self, id: u32) -> (String, String) {
        let r = run(
            Command::new("docker").args([
                "inspect",
                "--format",
                "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}",
                &self.container(id),
            ]),
            None,
            DOCKER_TIMEOUT,
        );
        let mut words = r.stdout.split_whitespace().map(str::to_owned);
        (
            words.next().unwrap_or_default(),
            words.next().unwrap_or_default(),
        )
    }

    /// Polls the health checks until every broker in `ids` is healthy; fails at once when one
    /// exits (the logs are printed when the cluster drops). Returns how long it took.
    pub fn wait_healthy(&self, ids: &[u32], timeout: Duration) -> Duration {
        let started = Instant::now();
        loop {
            let states: Vec<_> = ids.iter().map(|&id| (id, self.state(id))).collect();
            if states.iter().all(|(_, (_, health))| health == "healthy") {
                return started.elapsed();
            }
            if let Some((id, (status, _))) = states.iter().find(|(_, (s, _))| s == "exited") {
                panic!("broker{id} is {status} instead of healthy (its log follows)");
            }
            assert!(
                started.elapsed() < timeout,
                "brokers not healthy within {timeout:?}: {states:?} (logs follow)"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Host bootstrap list of the given brokers.
    pub fn bootstrap_of(&self, ids: &[u32]) -> String {
        ids.iter()
            .map(|&id| format!("127.0.0.1:{}", self.client_ports[index(id)]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Host bootstrap list of every broker.
    pub fn bootstrap(&self) -> String {
        self.bootstrap_of(&BROKERS)
    }

    /// `docker kill` (SIGKILL) broker `id`'s container.
    pub fn kill(&self, id: u32) {
        let r = run(
            Command::new("docker").args(["kill", &self.container(id)]),
            None,
            DOCKER_TIMEOUT,
        );
        assert!(r.ok(), "docker kill broker{id} failed: {}", r.describe());
    }

    /// `docker stop` (SIGTERM, SIGKILL after the grace period) broker `id`; its exit code.
    pub fn stop(&self, id: u32) -> i64 {
        let cid = self.container(id);
        let r = run(
            Command::new("docker").args(["stop", "--time", "30", &cid]),
            None,
            DOCKER_TIMEOUT,
        );
        assert!(r.ok(), "docker stop broker{id} failed: {}", r.describe());
        let code = run(
            Command::new("docker").args(["inspect", "--format", "{{.State.ExitCode}}", &cid]),
            None,
            DOCKER_TIMEOUT,
        );
        code.stdout.trim().parse().unwrap_or(-1)
    }

    /// `docker start` broker `id`'s existing container again (same volume).
    pub fn start(&self, id: u32) {
        let r = run(
            Command::new("docker").args(["start", &self.container(id)]),
            None,
            DOCKER_TIMEOUT,
        );
        assert!(r.ok(), "docker start broker{id} failed: {}", r.describe());
    }

    /// The last lines of every broker's log, for failure messages.
    pub fn logs(&self) -> String {
        let r = self.compose(&["logs", "--no-color", "--tail=200"]);
        format!("{}{}", r.stdout, r.stderr)
    }

    /// `docker-compose down -v`: containers, network and volumes go.
    pub fn down(&mut self) {
        if !self.started {
            return;
        }
        self.started = false;
        let r = self.compose(&["down", "-v", "--remove-orphans", "--timeout", "10"]);
        if !r.ok() {
            eprintln!(
                "docker-compose down failed for {}: {}",
                self.project,
                r.describe()
            );
        }
    }
}

impl Drop for ComposeCluster {
    fn drop(&mut self) {
        if self.started && std::thread::panicking() {
            eprintln!(
                "--- compose project {} at failure ---\n{}\n{}",
                self.project,
                self.compose(&["ps"]).stdout,
                self.logs()
            );
        }
        self.down();
    }
}

fn index(id: u32) -> usize {
    BROKERS
        .iter()
        .position(|&b| b == id)
        .unwrap_or_else(|| panic!("no broker {id} in the compose file"))
}

/// One row of `rafka topic describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionRow {
    pub partition: u32,
    pub leader: Option<u32>,
    pub replicas: Vec<u32>,
    pub in_sync: Vec<u32>,
}

/// Parses the partition table of `rafka topic describe`: after the `PARTITION LEADER ...`
/// header, rows of partition, leader (or `none`), replicas and in-sync replicas (comma lists).
pub fn parse_describe(out: &str) -> Vec<PartitionRow> {
    let ids = |s: &str| -> Vec<u32> { s.split(',').filter_map(|x| x.parse().ok()).collect() };
    out.lines()
        .skip_while(|l| !l.starts_with("PARTITION"))
        .skip(1)
        .map_while(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let partition = cols.first()?.parse().ok()?;
            Some(PartitionRow {
                partition,
                leader: cols.get(1).and_then(|l| l.parse().ok()),
                replicas: cols.get(2).map(|s| ids(s)).unwrap_or_default(),
                in_sync: cols.get(3).map(|s| ids(s)).unwrap_or_default(),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_table_rows() {
        let out = "Topic: t  Partitions: 2\n\
                   PARTITION  LEADER  REPLICAS  IN-SYNC  LOG-START  HIGH-WATERMARK\n\
                   0          2       1,2,3     2,3      0          1234\n\
                   1          none    1,2,3     1        0          0\n\
                   Configs: (all defaults)\n";
        assert_eq!(
            parse_describe(out),
            vec![
                PartitionRow {
                    partition: 0,
                    leader: Some(2),
                    replicas: vec![1, 2, 3],
                    in_sync: vec![2, 3],
                },
                PartitionRow {
                    partition: 1,
                    leader: None,
                    replicas: vec![1, 2, 3],
                    in_sync: vec![1],
                },
            ]
        );
    }
}

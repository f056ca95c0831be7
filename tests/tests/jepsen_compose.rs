//! The fault suite against the docker-compose cluster: one 30-second `rafka-jepsen` run of the
//! queue workload under `--nemesis all` (kill, pause, partition by network disconnect, and one
//! whole-cluster kill) with `--cluster compose`, through the real command line. Fails when the
//! run is invalid, and when the compose project outlives the run.
//!
//! Without Docker it prints SKIP and passes, except on CI (`CI=true`), where it fails. The
//! history, report, plots and broker logs stay in `target/jepsen-ci/compose-all/`;
//! `RAFKA_TEST_SEED` replays a run.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use rafka_tests::compose::{docker_or_skip, run};
use rafka_tests::harness::{die_with_parent, seed};

/// Image build, start, 30 s of faults, healing, final read and `down -v` take about a minute;
/// past this the run is asked to stop (SIGTERM: it takes its cluster down), and killed a
/// minute later.
const RUN_TIMEOUT: Duration = Duration::from_secs(150);

/// Compose projects (by name) that still have containers, networks or volumes and whose name
/// starts with `prefix`.
fn leftover_projects(prefix: &str) -> Vec<String> {
    let label = "com.docker.compose.project";
    let mut found = Vec::new();
    for kind in [
        &["ps", "-a"][..],
        &["network", "ls"][..],
        &["volume", "ls"][..],
    ] {
        let r = run(
            Command::new("docker")
                .args(kind)
                .args(["--filter", &format!("label={label}")])
                .args(["--format", &format!("{{{{.Label \"{label}\"}}}}")]),
            None,
            Duration::from_secs(60),
        );
        found.extend(
            r.stdout
                .lines()
                .map(str::trim)
                .filter(|p| p.starts_with(prefix))
                .map(str::to_owned),
        );
    }
    found.sort();
    found.dedup();
    found
}

#[test]
fn queue_under_all_faults_on_the_compose_cluster() {
    let test = "queue_under_all_faults_on_the_compose_cluster";
    let Some(_docker) = docker_or_skip(test) else {
        return;
    };
    let seed = seed(test);
    let out = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target")
        .join("jepsen-ci")
        .join("compose-all");
    let started = Instant::now();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rafka-jepsen"));
    die_with_parent(&mut cmd);
    let mut child = cmd
        .args([
            "--workload",
            "queue",
            "--nemesis",
            "all",
            "--cluster",
            "compose",
        ])
        .args(["--time-limit", "30", "--rate", "30"])
        .args(["--seed", &seed.to_string()])
        .arg("--out")
        .arg(&out)
        .spawn()
        .expect("run rafka-jepsen");
    // Its compose project is named rafkatest<its pid>x<nanoseconds> (ComposeCluster::new).
    let project_prefix = format!("rafkatest{}x", child.id());
    let mut terminated = false;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for rafka-jepsen") {
            break status;
        }
        let elapsed = started.elapsed();
        if elapsed > RUN_TIMEOUT && !terminated {
            eprintln!("rafka-jepsen still running after {elapsed:.0?}: SIGTERM");
            // SAFETY: a plain kill(2) of our own child.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
            terminated = true;
        }
        if elapsed > RUN_TIMEOUT + Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().expect("wait for rafka-jepsen");
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let elapsed = started.elapsed();
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    let leftovers = leftover_projects(&project_prefix);
    assert!(
        leftovers.is_empty(),
        "compose projects left behind by rafka-jepsen (seed {seed}): {leftovers:?}; \
         remove with docker-compose -p NAME down -v"
    );
    assert!(
        !terminated,
        "rafka-jepsen took longer than {RUN_TIMEOUT:?} (seed {seed}); output in {}\n{summary}",
        out.display()
    );
    assert!(
        status.success(),
        "rafka-jepsen --cluster compose --nemesis all exited with {status} after {elapsed:.0?} \
         (seed {seed}); output in {}\n{summary}",
        out.display()
    );
    let report = rafka_tests::jepsen::expect_valid_run(&out, 100)
        .unwrap_or_else(|e| panic!("compose run (seed {seed}): {e}"));
    let faults = &report["faults"];
    assert!(
        faults["kill-all"].as_u64().unwrap_or(0) >= 1,
        "no whole-cluster kill in the run: {faults}\n{summary}"
    );
    assert!(
        faults.get("lose-unsynced").is_none(),
        "the compose cluster cannot lose unsynced writes, yet the nemesis tried: {faults}"
    );
    for log in ["broker1.log", "broker2.log", "broker3.log"] {
        assert!(
            out.join("cluster").join(log).is_file(),
            "{log} not saved in {}",
            out.join("cluster").display()
        );
    }
    let sends_ok = &report["operations"]["send"]["ok"];
    eprintln!(
        "rafka-jepsen --cluster compose --nemesis all: valid, {sends_ok} sends ok, faults \
         {faults}, {elapsed:.0?} in all, seed {seed}"
    );
}

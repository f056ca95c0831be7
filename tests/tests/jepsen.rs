//! The fault suite in CI: a short `rafka-jepsen` run of the queue workload under each nemesis
//! on a local three-broker cluster, through the real command line. Each test fails when the
//! run is invalid (an anomaly, or a broker that would not come back) and prints the summary;
//! the history, report, plots and broker logs stay in `target/jepsen-ci/<nemesis>/`.
//!
//! `RAFKA_JEPSEN_TIME_LIMIT` (seconds, default 40) lengthens the runs; `RAFKA_TEST_SEED`
//! replays one.

use std::path::PathBuf;
use std::process::Command;

use rafka_tests::harness::{die_with_parent, seed};

fn out_dir(nemesis: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target")
        .join("jepsen-ci")
        .join(nemesis)
}

fn run_suite(nemesis: &str) {
    // Power losses only lose something when writes are in flight at that instant: more load.
    let rate = if nemesis == "lose-unsynced" {
        "200"
    } else {
        "60"
    };
    let seed = seed(&format!("jepsen {nemesis}"));
    let time_limit = std::env::var("RAFKA_JEPSEN_TIME_LIMIT").unwrap_or_else(|_| "40".into());
    let out = out_dir(nemesis);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rafka-jepsen"));
    die_with_parent(&mut cmd);
    let status = cmd
        .args(["--workload", "queue", "--nemesis", nemesis])
        .args(["--time-limit", &time_limit, "--rate", rate])
        .args(["--cluster", "local", "--seed", &seed.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run rafka-jepsen");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    assert!(
        status.success(),
        "rafka-jepsen --nemesis {nemesis} exited with {status} (seed {seed}); output in {}\n{summary}",
        out.display()
    );
    if let Err(e) = rafka_tests::jepsen::expect_valid_run(&out, 100) {
        panic!("rafka-jepsen --nemesis {nemesis} (seed {seed}): {e}");
    }
    for plot in ["latency.png", "rate.png"] {
        let meta = std::fs::metadata(out.join(plot));
        assert!(meta.is_ok_and(|m| m.len() > 1000), "{plot} not drawn");
    }
}

#[test]
fn queue_under_kill() {
    run_suite("kill");
}

#[test]
fn queue_under_pause() {
    run_suite("pause");
}

#[test]
fn queue_under_partition() {
    run_suite("partition");
}

#[test]
fn queue_under_lose_unsynced() {
    run_suite("lose-unsynced");
}

#[test]
fn queue_under_all() {
    run_suite("all");
}

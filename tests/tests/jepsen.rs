//! The fault suite in CI: a short `rafka-jepsen` run of the queue workload under each nemesis,
//! and of the group and txn workloads under `all`, on a local three-broker cluster, through the
//! real command line. Each test fails when the run is invalid (an anomaly, or a broker that
//! would not come back) and prints the summary; the history, report, plots and broker logs stay
//! in `target/jepsen-ci/<nemesis>/` (`target/jepsen-ci/<workload>-<nemesis>/` for the others).
//!
//! `RAFKA_JEPSEN_TIME_LIMIT` (seconds, default 40) lengthens the runs; `RAFKA_TEST_SEED`
//! replays one.

use std::path::PathBuf;
use std::process::Command;

use rafka_tests::harness::{die_with_parent, seed};

fn out_dir(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .join("target")
        .join("jepsen-ci")
        .join(name)
}

/// Blocks until no other cluster test of this machine runs (see `rafka_tests::cluster::exclusive`);
/// held until dropped.
fn exclusive() -> std::fs::File {
    let path = std::env::temp_dir().join("rafka-cluster-tests.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .expect("lock file");
    file.lock().expect("lock");
    file
}

fn run_suite(nemesis: &str) {
    run_workload("queue", nemesis);
}

/// Runs `workload` under `nemesis`, asserts the run valid and its plots drawn; returns the
/// report.
fn run_workload(workload: &str, nemesis: &str) -> serde_json::Value {
    // Power losses only lose something when writes are in flight at that instant: more load.
    let rate = if nemesis == "lose-unsynced" {
        "200"
    } else {
        "60"
    };
    let seed = seed(&format!("jepsen {workload} {nemesis}"));
    let time_limit = std::env::var("RAFKA_JEPSEN_TIME_LIMIT").unwrap_or_else(|_| "40".into());
    let out = if workload == "queue" {
        out_dir(nemesis)
    } else {
        out_dir(&format!("{workload}-{nemesis}"))
    };
    // One cluster at a time on this machine, also beside other test processes (the lock
    // rafka_tests::cluster::exclusive takes).
    let _lock = exclusive();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_rafka-jepsen"));
    die_with_parent(&mut cmd);
    let status = cmd
        .args(["--workload", workload, "--nemesis", nemesis])
        .args(["--time-limit", &time_limit, "--rate", rate])
        .args(["--cluster", "local", "--seed", &seed.to_string()])
        .arg("--out")
        .arg(&out)
        .status()
        .expect("run rafka-jepsen");
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    assert!(
        status.success(),
        "rafka-jepsen --workload {workload} --nemesis {nemesis} exited with {status} (seed \
         {seed}); output in {}\n{summary}",
        out.display()
    );
    let report = match rafka_tests::jepsen::expect_valid_run(&out, 100) {
        Ok(report) => report,
        Err(e) => {
            panic!("rafka-jepsen --workload {workload} --nemesis {nemesis} (seed {seed}): {e}")
        }
    };
    for plot in ["latency.png", "rate.png"] {
        let meta = std::fs::metadata(out.join(plot));
        assert!(meta.is_ok_and(|m| m.len() > 1000), "{plot} not drawn");
    }
    report
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

#[test]
fn group_under_all() {
    let report = run_workload("group", "all");
    // A group run proves something only if members consumed, committed and read back.
    let ops = &report["operations"];
    for (f, ok_min) in [("group_poll", 100), ("commit", 10), ("group_final_read", 1)] {
        let ok = ops[f]["ok"].as_u64().unwrap_or(0);
        assert!(ok >= ok_min, "only {ok} ok {f} operations: {report}");
    }
}

#[test]
fn txn_under_all() {
    let report = run_workload("txn", "all");
    // A txn run proves something only if transactions committed and aborted, read_committed
    // consumers read during the run, and both final reads got through.
    let ops = &report["operations"];
    for (f, ok_min) in [
        ("txn", 100),
        ("txn_poll", 100),
        ("txn_final_read", 1),
        ("txn_final_read_uncommitted", 1),
    ] {
        let ok = ops[f]["ok"].as_u64().unwrap_or(0);
        assert!(ok >= ok_min, "only {ok} ok {f} operations: {report}");
    }
    let aborted = report["txn_aborted"].as_u64().unwrap_or(0);
    assert!(
        aborted >= 10,
        "only {aborted} aborted transactions: {report}"
    );
}

//! `rafka-jepsen`, the fault suite: start a cluster, run client workers against it while a
//! nemesis injects faults, heal, read everything back, and check the history for anomalies.
//!
//! - [`history`]: the operations recorded (`history.jsonl`), the one interface between the
//!   parts; [`recorder`] records it during a run.
//! - [`db`]: the cluster under test (local processes or docker compose) and its faults.
//! - [`nemesis`]: which faults, when.
//! - [`workload`]: what the clients do, and the final read.
//! - [`checker`]: finds anomalies in a history alone (lost, duplicated, reordered, ...).
//! - [`plot`]: latency and throughput PNGs with the nemesis windows shaded.
//!
//! A run: start the cluster, set the workload up, run workers and nemesis for the time limit,
//! stop the nemesis and undo its fault, stop the workers (each finishes its open operation),
//! heal everything, wait for the cluster to settle, final read, then check and write
//! `history.jsonl`, `report.json`, `summary.txt`, `latency.png` and `rate.png`.

pub mod checker;
pub mod db;
pub mod history;
pub mod nemesis;
pub mod plot;
pub mod recorder;
pub mod workload;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use db::{ClusterKind, Db};
use nemesis::{NemesisKind, NemesisSummary, Timing};
use recorder::Recorder;
use workload::Env;

/// How long the healed cluster gets to elect leaders and catch replicas up before the final
/// read (it reads from leaders either way; this only keeps the read from racing elections).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// One run's settings (the command line).
#[derive(Debug, Clone)]
pub struct Options {
    pub workload: String,
    pub nemesis: NemesisKind,
    pub time_limit: Duration,
    pub rate_per_s: f64,
    pub cluster: ClusterKind,
    pub out: PathBuf,
    pub seed: u64,
    pub timing: Timing,
    /// Keep the brokers' data directories after a valid run (they are always kept after an
    /// invalid one).
    pub keep_data: bool,
}

/// What a run found.
#[derive(Debug)]
pub struct Outcome {
    pub valid: bool,
    /// The plain-text summary (also in `summary.txt`).
    pub summary: String,
}

/// Runs the suite once. `Err` means the run itself could not be done (the cluster did not
/// start, the output directory cannot be written); anomalies are in the `Outcome`.
pub async fn run(options: Options) -> Result<Outcome, String> {
    check_combination(options.nemesis, options.cluster)?;
    let workload = workload::by_name(&options.workload)?;
    std::fs::create_dir_all(&options.out)
        .map_err(|e| format!("cannot create {}: {e}", options.out.display()))?;
    let cluster_dir = options.out.join("cluster");
    if cluster_dir.exists() {
        std::fs::remove_dir_all(&cluster_dir)
            .map_err(|e| format!("cannot clear {}: {e}", cluster_dir.display()))?;
    }
    eprintln!(
        "jepsen: workload {} nemesis {} time limit {:?} rate {}/s cluster {:?} seed {} out {}",
        workload.name(),
        options.nemesis.name(),
        options.time_limit,
        options.rate_per_s,
        options.cluster,
        options.seed,
        options.out.display()
    );
    let db = Db::start(options.cluster, &cluster_dir).await?;
    let recorder = Arc::new(Recorder::new());
    let (stop_tx, stop_rx) = watch::channel(false);
    let env = Env {
        recorder: Arc::clone(&recorder),
        bootstrap: db.bootstrap(),
        rate_per_s: options.rate_per_s,
        seed: options.seed,
        stop: stop_rx.clone(),
    };
    if let Err(e) = workload.setup(&env).await {
        db.dump_logs();
        return Err(format!("workload setup: {e}"));
    }
    eprintln!("jepsen: cluster up, workload set up; running");

    let (nemesis_stop_tx, nemesis_stop_rx) = watch::channel(false);
    let nemesis = tokio::spawn(nemesis::run(
        options.nemesis,
        db,
        workload.topics(),
        Arc::clone(&recorder),
        options.seed,
        options.timing,
        nemesis_stop_rx,
    ));
    let workers = {
        let env = env.clone();
        let workload = workload::by_name(&options.workload)?;
        tokio::spawn(async move { workload.run(&env).await })
    };
    tokio::time::sleep(options.time_limit).await;

    // Faults end first, then the clients finish their open operations.
    let _ = nemesis_stop_tx.send(true);
    let (mut db, mut nemesis_summary) = nemesis
        .await
        .map_err(|e| format!("the nemesis task died: {e}"))?;
    let _ = stop_tx.send(true);
    if let Err(e) = workers.await {
        nemesis_summary
            .errors
            .push(format!("the workload task died: {e}"));
    }
    eprintln!(
        "jepsen: {:.1}s run over ({} operations); healing and settling",
        recorder.elapsed_s(),
        recorder.len()
    );
    if let Err(e) = db.heal_everything().await {
        nemesis_summary.errors.push(format!("final heal: {e}"));
    }
    for (topic, _) in workload.topics() {
        if let Err(e) = workload::wait_settled(&env.bootstrap, &topic, SETTLE_TIMEOUT).await {
            // Not an anomaly by itself (the final read goes to leaders), but worth knowing.
            eprintln!("jepsen: {e}");
        }
    }
    let final_read_error = workload.final_read(&env).await.err();
    if let Some(e) = &final_read_error {
        eprintln!("jepsen: final read incomplete: {e}");
    }

    let ops = recorder.snapshot();
    let outcome = report(&options, &ops, &nemesis_summary, final_read_error)?;
    if !outcome.valid {
        db.dump_logs();
    }
    db.shutdown().await;
    if outcome.valid && !options.keep_data && options.cluster == ClusterKind::Local {
        remove_data_dirs(&cluster_dir);
    }
    Ok(outcome)
}

/// Refuses, before anything starts, a nemesis the cluster cannot do.
pub fn check_combination(nemesis: NemesisKind, cluster: ClusterKind) -> Result<(), String> {
    if nemesis == NemesisKind::LoseUnsynced && !cluster.supports_power_loss() {
        return Err(
            "--nemesis lose-unsynced needs --cluster local (the compose brokers cannot \
             simulate a power loss); --nemesis all on compose mixes the other faults"
                .to_owned(),
        );
    }
    Ok(())
}

/// Writes the history, the report, the summary and the plots; says whether the run is valid.
fn report(
    options: &Options,
    ops: &[history::Op],
    nemesis: &NemesisSummary,
    final_read_error: Option<String>,
) -> Result<Outcome, String> {
    let out = &options.out;
    let write_err = |what: &str, e: std::io::Error| format!("cannot write {what}: {e}");
    let history_path = out.join("history.jsonl");
    let file = std::fs::File::create(&history_path).map_err(|e| write_err("history", e))?;
    history::write_jsonl(ops, file).map_err(|e| write_err("history", e))?;

    let checked = checker::check(ops);
    let valid = checked.valid && nemesis.errors.is_empty();
    let mut json = serde_json::to_value(&checked).map_err(|e| e.to_string())?;
    if let Some(map) = json.as_object_mut() {
        map.insert("valid".into(), valid.into());
        map.insert("workload".into(), options.workload.clone().into());
        map.insert("nemesis".into(), options.nemesis.name().into());
        map.insert("seed".into(), options.seed.into());
        map.insert(
            "time_limit_s".into(),
            options.time_limit.as_secs_f64().into(),
        );
        map.insert("history_ops".into(), ops.len().into());
        map.insert(
            "faults".into(),
            serde_json::to_value(&nemesis.faults).map_err(|e| e.to_string())?,
        );
        map.insert(
            "cluster_errors".into(),
            serde_json::to_value(&nemesis.errors).map_err(|e| e.to_string())?,
        );
        map.insert(
            "final_read_error".into(),
            final_read_error
                .clone()
                .map_or(serde_json::Value::Null, Into::into),
        );
    }
    let pretty = serde_json::to_string_pretty(&json).map_err(|e| e.to_string())?;
    std::fs::write(out.join("report.json"), pretty + "\n")
        .map_err(|e| write_err("report.json", e))?;

    let mut summary = format!(
        "rafka-jepsen: workload {} nemesis {} for {:?} at {}/s, seed {}\n",
        options.workload,
        options.nemesis.name(),
        options.time_limit,
        options.rate_per_s,
        options.seed
    );
    let faults: Vec<String> = nemesis
        .faults
        .iter()
        .map(|(k, v)| format!("{k} x{v}"))
        .collect();
    summary += &format!(
        "faults: {}\n",
        if faults.is_empty() {
            "none".to_owned()
        } else {
            faults.join(", ")
        }
    );
    for e in &nemesis.errors {
        summary += &format!("CLUSTER ERROR: {e}\n");
    }
    if let Some(e) = &final_read_error {
        summary += &format!("final read incomplete: {e}\n");
    }
    summary += &checked.summary();
    summary += &format!("\nverdict: {}\n", if valid { "VALID" } else { "INVALID" });
    std::fs::write(out.join("summary.txt"), &summary).map_err(|e| write_err("summary", e))?;

    // Plots are for people; failing to draw one does not change the verdict.
    if let Err(e) = plot::latency_png(ops, &out.join("latency.png")) {
        eprintln!("jepsen: latency plot: {e}");
    }
    if let Err(e) = plot::rate_png(ops, &out.join("rate.png")) {
        eprintln!("jepsen: rate plot: {e}");
    }
    Ok(Outcome { valid, summary })
}

/// Removes the brokers' data directories after a valid run, keeping their logs.
fn remove_data_dirs(cluster_dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(cluster_dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.path().is_dir() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// For tests of whole runs: reads `report.json` from a run's output directory and checks that
/// the run was valid and did enough to prove something (at least `sends_ok_min` acknowledged
/// sends, or committed transactions, and a final read). Returns the report; `Err` carries the
/// summary.
pub fn expect_valid_run(out: &Path, sends_ok_min: u64) -> Result<serde_json::Value, String> {
    let summary = std::fs::read_to_string(out.join("summary.txt")).unwrap_or_default();
    let raw = std::fs::read_to_string(out.join("report.json"))
        .map_err(|e| format!("report.json not written: {e}\n{summary}"))?;
    let report: serde_json::Value =
        serde_json::from_str(&raw).map_err(|e| format!("report.json does not parse: {e}"))?;
    if report["valid"] != true {
        return Err(format!("the run is not valid\n{summary}"));
    }
    // A run where nothing was acknowledged or nothing was read back proves nothing. (The txn
    // workload's acknowledged writes are its committed transactions.)
    let ops = &report["operations"];
    let ok = |f: &str| ops[f]["ok"].as_u64().unwrap_or(0);
    let sends_ok = ok("send") + ok("txn");
    let final_reads_ok = ok("final_read") + ok("txn_final_read");
    if sends_ok < sends_ok_min || final_reads_ok == 0 {
        return Err(format!(
            "too little happened to check anything: {sends_ok} sends ok, {final_reads_ok} final \
             reads ok\n{summary}"
        ));
    }
    Ok(report)
}

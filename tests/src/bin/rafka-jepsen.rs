//! `rafka-jepsen`: the fault suite's command line (see ../shared/CONTRACT.md and
//! `rafka_tests::jepsen`). Exit status: 0 when the run is valid, 1 when the checker found an
//! anomaly or the cluster misbehaved, 2 when the run could not be done.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use rafka_tests::jepsen::db::ClusterKind;
use rafka_tests::jepsen::nemesis::{NemesisKind, Timing};
use rafka_tests::jepsen::{self, Options};

#[derive(Debug, Parser)]
#[command(
    name = "rafka-jepsen",
    about = "Runs a workload against a Rafka cluster while injecting faults, then checks the history"
)]
struct Args {
    /// queue | group | txn
    #[arg(long, default_value = "queue")]
    workload: String,
    /// none | kill | pause | partition | lose-unsynced | all
    #[arg(long, default_value = "none")]
    nemesis: NemesisKind,
    /// Seconds of workload and faults (healing, settling and the final read come after).
    #[arg(long, default_value_t = 60)]
    time_limit: u64,
    /// Target writes per second over all producers.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// local (three broker processes here) | compose (the docker-compose cluster)
    #[arg(long, default_value = "local")]
    cluster: ClusterKind,
    /// Output directory for history.jsonl, report.json, summary.txt and the plots.
    #[arg(long)]
    out: PathBuf,
    /// Seed of every random choice (nemesis schedule, targets, partitions); printed so that a
    /// run can be repeated. Random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Keep the brokers' data directories after a valid run too.
    #[arg(long)]
    keep_data: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if !(args.rate > 0.0 && args.rate.is_finite()) {
        eprintln!("rafka-jepsen: --rate must be a positive number");
        return ExitCode::from(2);
    }
    if args.time_limit == 0 {
        eprintln!("rafka-jepsen: --time-limit must be at least 1 second");
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(rand::random);
    let options = Options {
        workload: args.workload,
        nemesis: args.nemesis,
        time_limit: Duration::from_secs(args.time_limit),
        rate_per_s: args.rate,
        cluster: args.cluster,
        out: args.out,
        seed,
        timing: Timing::default(),
        keep_data: args.keep_data,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rafka-jepsen: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let out = options.out.clone();
    // On SIGINT/SIGTERM the run is dropped and then the runtime with every task: dropping the
    // cluster kills local brokers and takes a compose project down (`down -v`).
    let result = runtime.block_on(async {
        tokio::select! {
            r = jepsen::run(options) => Some(r),
            signal = interrupted() => {
                eprintln!("rafka-jepsen: {signal}; stopping the cluster (seed {seed})");
                None
            }
        }
    });
    drop(runtime);
    let Some(result) = result else {
        return ExitCode::from(2);
    };
    match result {
        Ok(outcome) => {
            print!("{}", outcome.summary);
            println!("output in {} (seed {seed})", out.display());
            if outcome.valid {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("rafka-jepsen: {e} (seed {seed})");
            ExitCode::from(2)
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM, naming it.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "interrupted (SIGINT)",
        _ = term.recv() => "terminated (SIGTERM)",
    }
}

//! Nemeses: the faults injected while the workload runs, on a schedule drawn from the run's
//! seed. Each fault is a window: a start (the fault is done), a hold, and a stop (it is
//! undone), both recorded in the history so that plots can shade the window and a reader can
//! line anomalies up with faults.
//!
//! - `kill`: SIGKILL a random broker or the current leader of a random partition, restart it
//!   after the hold.
//! - `pause`: SIGSTOP likewise, SIGCONT after the hold.
//! - `partition`: cut one broker off from the other two (for three brokers this is the
//!   majority/minority split), or cut the link between two brokers only (a partial partition
//!   where each still reaches the third); broker-to-broker traffic only, through the local
//!   cluster's per-link proxies. On the compose cluster a partition always isolates one
//!   broker, by disconnecting its container from the network (clients lose it too; see
//!   [`super::db::ComposeDb`]).
//! - `lose-unsynced`: a power cut of every broker at once: each drops the bytes it wrote but
//!   had not fsynced and exits; all restart after the hold. Local cluster only.
//! - `all`: a random mix of the above (without `lose-unsynced` where the cluster cannot do
//!   it), and one whole-cluster SIGKILL and restart (`kill-all`) at least once per run.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use super::db::Db;
use super::history::NemesisPhase;
use super::recorder::Recorder;
use std::sync::Arc;

/// The `--nemesis` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NemesisKind {
    None,
    Kill,
    Pause,
    Partition,
    LoseUnsynced,
    All,
}

impl std::str::FromStr for NemesisKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "none" => NemesisKind::None,
            "kill" => NemesisKind::Kill,
            "pause" => NemesisKind::Pause,
            "partition" => NemesisKind::Partition,
            "lose-unsynced" => NemesisKind::LoseUnsynced,
            "all" => NemesisKind::All,
            other => {
                return Err(format!(
                    "unknown nemesis '{other}' (none|kill|pause|partition|lose-unsynced|all)"
                ))
            }
        })
    }
}

impl NemesisKind {
    /// The name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            NemesisKind::None => "none",
            NemesisKind::Kill => "kill",
            NemesisKind::Pause => "pause",
            NemesisKind::Partition => "partition",
            NemesisKind::LoseUnsynced => "lose-unsynced",
            NemesisKind::All => "all",
        }
    }
}

/// One fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Pause,
    Partition,
    LoseUnsynced,
    KillAll,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::LoseUnsynced => "lose-unsynced",
            Fault::KillAll => "kill-all",
        }
    }
}

/// The schedule's timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time between faults, drawn uniformly from this range (seconds).
    pub quiet_s: (f64, f64),
    /// How long a fault stays in place (seconds).
    pub hold_s: (f64, f64),
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            quiet_s: (3.0, 6.0),
            hold_s: (3.0, 8.0),
        }
    }
}

/// What the nemesis did, for the report.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct NemesisSummary {
    /// Faults injected, by name.
    pub faults: std::collections::BTreeMap<String, u32>,
    /// Faults that could not be done or undone (for example a broker that would not restart):
    /// each makes the run invalid.
    pub errors: Vec<String>,
}

/// Runs faults of `kind` until `stop` turns true, then undoes the one in place. Returns the
/// cluster (the nemesis owns it during the run) and what it did.
pub async fn run(
    kind: NemesisKind,
    mut db: Db,
    topics: Vec<(String, u32)>,
    recorder: Arc<Recorder>,
    seed: u64,
    timing: Timing,
    mut stop: watch::Receiver<bool>,
) -> (Db, NemesisSummary) {
    let mut summary = NemesisSummary::default();
    if kind == NemesisKind::None {
        let _ = stop.wait_for(|s| *s).await;
        return (db, summary);
    }
    let mut rng = StdRng::seed_from_u64(seed ^ 0x4e45_4d45_5349_5300);
    let mut mix = vec![Fault::Kill, Fault::Pause, Fault::Partition];
    if db.supports_power_loss() {
        mix.push(Fault::LoseUnsynced);
    }
    let mut killed_all = false;
    let mut round = 0u32;
    loop {
        let quiet = Duration::from_secs_f64(rng.gen_range(timing.quiet_s.0..=timing.quiet_s.1));
        if wait_or_stop(&mut stop, quiet).await {
            break;
        }
        round += 1;
        let fault = match kind {
            NemesisKind::None => unreachable!("handled above"),
            NemesisKind::Kill => Fault::Kill,
            NemesisKind::Pause => Fault::Pause,
            NemesisKind::Partition => Fault::Partition,
            NemesisKind::LoseUnsynced => Fault::LoseUnsynced,
            // The whole-cluster kill comes early (second fault) so that even a short run has
            // one; later rounds are a random mix.
            NemesisKind::All if !killed_all && round >= 2 => Fault::KillAll,
            NemesisKind::All => *mix.choose(&mut rng).expect("non-empty"),
        };
        killed_all |= fault == Fault::KillAll;
        *summary.faults.entry(fault.name().to_owned()).or_default() += 1;
        let hold = Duration::from_secs_f64(rng.gen_range(timing.hold_s.0..=timing.hold_s.1));
        let stopped = match inject(
            fault, &mut db, &topics, &recorder, &mut rng, hold, &mut stop,
        )
        .await
        {
            Ok(stopped) => stopped,
            Err(e) => {
                eprintln!("jepsen: nemesis {}: {e}", fault.name());
                summary.errors.push(format!("{}: {e}", fault.name()));
                // Put everything back before going on; if even that fails, stop faulting.
                if let Err(e) = db.heal_everything().await {
                    summary.errors.push(format!("healing: {e}"));
                    let _ = stop.wait_for(|s| *s).await;
                    break;
                }
                false
            }
        };
        if stopped {
            break;
        }
    }
    (db, summary)
}

/// Sleeps for `d` unless the run ends first; `true` when it ended.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    let ended = tokio::select! {
        _ = tokio::time::sleep(d) => false,
        _ = stop.wait_for(|s| *s) => true,
    };
    ended || *stop.borrow()
}

/// A random broker, or the leader of a random partition (half the time each), so that faults
/// hit leaders often enough to matter.
async fn target(db: &Db, topics: &[(String, u32)], rng: &mut StdRng) -> i32 {
    let ids = db.ids();
    if rng.gen_bool(0.5) {
        if let Some((topic, partitions)) = topics.choose(rng) {
            let partition = rng.gen_range(0..*partitions);
            if let Some(leader) = db.leader(topic, partition).await {
                if ids.contains(&leader) {
                    return leader;
                }
            }
        }
    }
    *ids.choose(rng).expect("a cluster has brokers")
}

/// Does one fault, holds it, undoes it. `Ok(true)` when the run ended during the hold (the
/// fault is undone all the same).
async fn inject(
    fault: Fault,
    db: &mut Db,
    topics: &[(String, u32)],
    recorder: &Recorder,
    rng: &mut StdRng,
    hold: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<bool, String> {
    let name = fault.name();
    let ids = db.ids();
    let (nodes, detail) = match fault {
        Fault::Kill => {
            let id = target(db, topics, rng).await;
            db.kill(id).await?;
            (vec![id], format!("SIGKILL node {id}"))
        }
        Fault::Pause => {
            let id = target(db, topics, rng).await;
            db.pause(id).await?;
            (vec![id], format!("SIGSTOP node {id}"))
        }
        Fault::Partition => {
            let id = target(db, topics, rng).await;
            let others: Vec<i32> = ids.iter().copied().filter(|&o| o != id).collect();
            // Drawn whatever the cluster can do, so that a seed replays the same schedule
            // on the local cluster as before compose runs existed.
            let whole = rng.gen_bool(0.7);
            if whole || !db.supports_partial_partitions() {
                db.isolate(id).await?;
                (vec![id], format!("isolate node {id} from {others:?}"))
            } else {
                let other = *others.choose(rng).expect("three brokers");
                db.cut_pair(id, other).await?;
                (
                    vec![id, other],
                    format!("cut the link between nodes {id} and {other}"),
                )
            }
        }
        Fault::LoseUnsynced => {
            db.power_loss_all().await?;
            (
                ids.clone(),
                "every broker loses unsynced writes and exits".to_owned(),
            )
        }
        Fault::KillAll => {
            db.kill_all().await?;
            (ids.clone(), "SIGKILL every broker".to_owned())
        }
    };
    recorder.nemesis(name, NemesisPhase::Start, nodes.clone(), detail.clone());
    eprintln!(
        "jepsen: {:>6.1}s nemesis {name} start: {detail}",
        recorder.elapsed_s()
    );
    let ended = wait_or_stop(stop, hold).await;
    match fault {
        Fault::Kill => db.start_node(nodes[0]).await?,
        Fault::Pause => db.resume(nodes[0]).await?,
        Fault::Partition => db.heal().await?,
        Fault::LoseUnsynced | Fault::KillAll => db.start_all().await?,
    }
    recorder.nemesis(name, NemesisPhase::Stop, nodes, detail);
    eprintln!("jepsen: {:>6.1}s nemesis {name} stop", recorder.elapsed_s());
    Ok(ended)
}

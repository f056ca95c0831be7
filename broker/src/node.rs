//! The broker process: opens storage, binds the ports, runs the server, the HTTP endpoint and
//! the housekeeping task, and shuts down on SIGTERM/SIGINT.
//!
//! Shutdown order: stop accepting, let in-flight requests finish (bounded), flush every log,
//! exit 0. Start-up errors (a broken data directory, a port in use) come back as one line.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use rafka_protocol::Timestamp;
use tokio::sync::watch;

use std::collections::BTreeMap;

use rafka_raft::NodeId;

use crate::cluster::{Cluster, PeerHandler};
use crate::config::BrokerConfig;
use crate::fs::Fs;
use crate::server::{Context, Server};

/// How often interval flushes, high watermarks and partition gauges are brought up to date.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_millis(100);

/// How often gauges are refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(1);

/// Latency buckets (seconds) for every `*_seconds` histogram: 50 µs to 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 10.0,
];

/// Runs the broker until a termination signal; `Err` is a one-line reason to exit non-zero.
pub fn run(config: BrokerConfig) -> Result<(), String> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn")),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &LATENCY_BUCKETS)
        .map_err(|e| format!("metrics setup: {e}"))?
        .install_recorder()
        .map_err(|e| format!("metrics setup: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("rafka")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime.block_on(serve(config, metrics))
}

async fn serve(config: BrokerConfig, metrics: PrometheusHandle) -> Result<(), String> {
    let started = Instant::now();
    let voters: BTreeMap<NodeId, String> = config
        .peers
        .iter()
        .map(|(id, addr)| (*id as NodeId, addr.clone()))
        .collect();
    let node_id = config.node_id as NodeId;
    // A multi-broker cluster listens for peers before anything else, so that a port in use is
    // reported at once.
    let peer_listener = if voters.len() > 1 {
        Some(
            tokio::net::TcpListener::bind(&config.peer_listen)
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", config.peer_listen))?,
        )
    } else {
        None
    };
    let cluster = Cluster::open(
        node_id,
        &config.data_dir,
        config.log_defaults.clone(),
        storage_fs(),
        voters,
        config.producer_id_expiration_ms,
    )
    .await
    .map_err(|e| {
        format!(
            "cannot open data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    tracing::info!(
        data_dir = %config.data_dir.display(),
        open_ms = started.elapsed().as_millis() as u64,
        "storage open"
    );
    let peer_task = peer_listener.map(|l| {
        tokio::spawn(rafka_raft::transport::serve(
            l,
            node_id,
            Arc::new(PeerHandler(Arc::clone(&cluster))),
        ))
    });
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let group_config = crate::group::GroupConfig {
        offsets_partitions: config.offsets_topic_partitions,
        ..crate::group::GroupConfig::default()
    };
    let ctx = Arc::new(Context {
        cluster_id: "rafka".to_string(),
        cluster: Arc::clone(&cluster),
        config,
        shutdown: shutdown_rx.clone(),
        ready: AtomicBool::new(false),
        groups: crate::group::Coordinator::new(Arc::clone(&cluster), group_config),
        txns: crate::txn::Coordinator::new(Arc::clone(&cluster), crate::txn::TxnConfig::default()),
    });
    {
        // Markers on `__consumer_offsets` settle transactional offsets in the group
        // coordinator.
        let groups = Arc::clone(&ctx.groups);
        ctx.cluster
            .set_offsets_marker_hook(Arc::new(move |index, producer_id, commit| {
                let groups = Arc::clone(&groups);
                Box::pin(async move { groups.on_txn_marker(index, producer_id, commit).await })
            }));
    }
    let server = Server::bind(Arc::clone(&ctx))
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", ctx.config.listen))?;
    let http = tokio::net::TcpListener::bind(&ctx.config.metrics_listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", ctx.config.metrics_listen))?;
    tracing::info!(
        node_id = ctx.config.node_id,
        listen = %server.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        peer_listen = %ctx.config.peer_listen,
        metrics = %ctx.config.metrics_listen,
        "serving"
    );
    let reconciler = tokio::spawn(Arc::clone(&cluster).run_reconciler(shutdown_rx.clone()));
    let registration = tokio::spawn(
        Arc::clone(&cluster).run_registration(ctx.config.advertise.clone(), shutdown_rx.clone()),
    );
    let announcer = tokio::spawn(Arc::clone(&cluster).run_announcer(shutdown_rx.clone()));
    let elections = tokio::spawn(Arc::clone(&cluster).run_elections(shutdown_rx.clone()));
    let balancer = tokio::spawn(Arc::clone(&cluster).run_leader_balancer(shutdown_rx.clone()));
    let http_task = tokio::spawn(crate::http::serve(http, Arc::clone(&ctx), metrics.clone()));
    let housekeeping = tokio::spawn(housekeeping(Arc::clone(&ctx), metrics));
    let server_task = tokio::spawn(server.run());
    let coordinator = tokio::spawn(Arc::clone(&ctx.groups).run(shutdown_rx.clone()));
    let txn_coordinator = tokio::spawn(Arc::clone(&ctx.txns).run(shutdown_rx.clone()));

    wait_for_signal().await;
    tracing::info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = server_task.await;
    let _ = housekeeping.await;
    let _ = http_task.await;
    let _ = reconciler.await;
    let _ = announcer.await;
    let _ = registration.await;
    let _ = elections.await;
    let _ = balancer.await;
    let _ = coordinator.await;
    let _ = txn_coordinator.await;
    cluster.shutdown().await;
    if let Some(t) = peer_task {
        t.abort();
    }
    tracing::info!("stopped");
    Ok(())
}

/// The environment variable that arms the fault suite's power-loss hook (see [`storage_fs`]).
/// Deliberately not a flag: it is a test instrument, never a production setting.
pub const POWER_LOSS_HOOK_ENV: &str = "RAFKA_TEST_POWER_LOSS_HOOK";
/// The exit status of a broker that simulated a power loss.
pub const POWER_LOSS_EXIT_CODE: i32 = 86;

/// The file layer for the data directory. Normally plain files. With
/// [`POWER_LOSS_HOOK_ENV`]`=1`, files are tracked so that SIGUSR1 makes the broker lose every
/// byte it wrote but had not fsynced and exit at once with [`POWER_LOSS_EXIT_CODE`]: a power
/// cut, which a process kill alone cannot simulate because the page cache survives it. The
/// fault suite's `lose-unsynced` nemesis sends it to every broker at once.
fn storage_fs() -> Fs {
    if std::env::var(POWER_LOSS_HOOK_ENV).as_deref() != Ok("1") {
        return Fs::real();
    }
    let fs = Fs::crash_simulating();
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::user_defined1()) {
        Ok(mut usr1) => {
            tracing::warn!("power-loss hook armed: SIGUSR1 drops unsynced data and exits");
            let hook_fs = fs.clone();
            tokio::spawn(async move {
                if usr1.recv().await.is_some() {
                    tracing::warn!("SIGUSR1: simulating a power loss");
                    hook_fs.lose_unsynced_and_exit(POWER_LOSS_EXIT_CODE);
                }
            });
        }
        Err(e) => tracing::error!("cannot arm the power-loss hook: {e}"),
    }
    fs
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            // Without signal handlers the process can still be stopped by SIGKILL; wait forever
            // rather than exiting at once.
            tracing::error!("cannot install signal handlers");
            std::future::pending::<()>().await;
        }
    }
}

/// Interval flushes and partition gauges every [`HOUSEKEEPING_INTERVAL`]; retention (through
/// Raft) every `retention_check_interval_ms`.
async fn housekeeping(ctx: Arc<Context>, metrics: PrometheusHandle) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let retention_every = Duration::from_millis(ctx.config.retention_check_interval_ms);
    let mut last_retention = Instant::now();
    let mut last_gauges = Instant::now();
    let mut shutdown = ctx.shutdown.clone();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let partitions = ctx.cluster.all_partitions();
        if last_retention.elapsed() >= retention_every {
            last_retention = Instant::now();
            for p in &partitions {
                if let Err(e) = p.enforce_retention(Timestamp::now()).await {
                    tracing::warn!(topic = %p.topic, partition = p.index, error = %e, "retention failed");
                }
            }
        }
        let logs: Vec<_> = partitions.iter().map(|p| Arc::clone(&p.log)).collect();
        let pass = tokio::task::spawn_blocking(move || {
            for log in &logs {
                if let Err(e) = log.flush_if_due() {
                    tracing::error!(dir = %log.dir().display(), error = %e, "interval flush failed");
                }
            }
        });
        if let Err(e) = pass.await {
            tracing::error!(error = %e, "housekeeping pass panicked");
        }
        // Gauges once a second: with a thousand partitions, label lookups at 10 Hz cost more
        // than everything else an idle broker does.
        if last_gauges.elapsed() >= GAUGE_INTERVAL {
            last_gauges = Instant::now();
            crate::metrics::update_gauges(&ctx.cluster, &partitions);
            metrics.run_upkeep();
        }
    }
}

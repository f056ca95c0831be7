//! The background task that keeps a set of logs within their retention limits and flushes
//! idle logs whose interval flush policy has come due.
//!
//! The task owns nothing but its list of logs; each pass runs the blocking file work on
//! tokio's blocking pool so that the async runtime never waits on a disk.

use std::sync::Arc;
use std::time::Duration;

use rafka_protocol::Timestamp;
use tokio::sync::watch;

use super::Log;

/// Runs retention and due flushes for `logs` every `interval` until `shutdown` turns true.
/// Failures are logged and counted; they do not stop the task (the next pass tries again).
pub fn spawn_maintenance(
    logs: Arc<dyn Fn() -> Vec<Arc<Log>> + Send + Sync>,
    interval: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return;
                    }
                }
            }
            let current = logs();
            let pass = tokio::task::spawn_blocking(move || run_pass(&current, Timestamp::now()));
            if let Err(e) = pass.await {
                tracing::error!(error = %e, "log maintenance pass panicked");
            }
        }
    })
}

/// One maintenance pass over `logs` at time `now`.
pub fn run_pass(logs: &[Arc<Log>], now: Timestamp) {
    for log in logs {
        if let Err(e) = log.flush_if_due() {
            metrics::counter!("rafka_log_maintenance_errors_total").increment(1);
            tracing::error!(dir = %log.dir().display(), error = %e, "interval flush failed");
        }
        match log.enforce_retention(now) {
            Ok(outcome) if outcome.segments_deleted > 0 => {
                tracing::info!(
                    dir = %log.dir().display(),
                    segments = outcome.segments_deleted,
                    bytes = outcome.bytes_deleted,
                    log_start = %log.log_start_offset(),
                    "retention deleted segments"
                );
            }
            Ok(_) => {}
            Err(e) => {
                metrics::counter!("rafka_log_maintenance_errors_total").increment(1);
                tracing::error!(dir = %log.dir().display(), error = %e, "retention failed");
            }
        }
    }
}

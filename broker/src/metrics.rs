//! Gauges refreshed by the housekeeping task: per-partition log sizes and offsets (high
//! watermark, last stable offset and the lag between them, idempotent producers known), and the
//! replication view (term, leadership, follower lag, under-replicated and offline partitions,
//! controller leader). Counters and histograms are recorded where things happen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::cluster::{Cluster, Partition};

/// Last leader seen per group, to count leader changes between passes.
static LAST_LEADERS: Mutex<Option<HashMap<u64, Option<u64>>>> = Mutex::new(None);

/// Refreshes every gauge for the partitions hosted here.
pub fn update_gauges(cluster: &Cluster, partitions: &[Arc<Partition>]) {
    let mut under_replicated = 0u64;
    let mut offline = 0u64;
    let mut leaders = LAST_LEADERS.lock().unwrap_or_else(|e| e.into_inner());
    let leaders = leaders.get_or_insert_with(HashMap::new);
    for p in partitions {
        let labels = [
            ("topic", p.topic.clone()),
            ("partition", p.index.to_string()),
        ];
        metrics::gauge!("rafka_log_end_offset", &labels).set(p.log.log_end_offset().0 as f64);
        metrics::gauge!("rafka_log_start_offset", &labels).set(p.log.log_start_offset().0 as f64);
        let hw = p.high_watermark();
        metrics::gauge!("rafka_high_watermark", &labels).set(hw.0 as f64);
        // How far read_committed readers trail read_uncommitted ones: records held back by
        // the oldest open transaction.
        let lso = p.last_stable_offset();
        metrics::gauge!("rafka_last_stable_offset", &labels).set(lso.0 as f64);
        metrics::gauge!("rafka_lso_lag_records", &labels).set(hw.0.saturating_sub(lso.0) as f64);
        metrics::gauge!("rafka_producers", &labels).set(p.producers.table().len() as f64);
        metrics::gauge!("rafka_log_segments", &labels).set(p.log.segment_count() as f64);
        metrics::gauge!("rafka_log_size_bytes", &labels).set(p.log.size_bytes() as f64);
        let (leader, term) = p.leader();
        metrics::gauge!("rafka_raft_term", &labels).set(term as f64);
        metrics::gauge!("rafka_partition_leader", &labels).set(leader.map_or(-1.0, |l| l as f64));
        let previous = leaders.insert(p.group.0, leader);
        if previous.is_some_and(|prev| prev != leader) && leader.is_some() {
            metrics::counter!("rafka_raft_leader_changes_total", &labels).increment(1);
        }
        if leader.is_none() {
            offline += 1;
        }
        if p.is_leader() {
            let (isr, lags) = p.in_sync();
            if isr.len() < p.replicas.len() {
                under_replicated += 1;
            }
            for (follower, lag) in lags {
                metrics::gauge!(
                    "rafka_replication_lag_records",
                    "topic" => p.topic.clone(),
                    "partition" => p.index.to_string(),
                    "follower" => follower.to_string()
                )
                .set(lag as f64);
            }
        }
    }
    let live: std::collections::HashSet<u64> = partitions.iter().map(|p| p.group.0).collect();
    leaders.retain(|g, _| live.contains(g));
    metrics::gauge!("rafka_under_replicated_partitions").set(under_replicated as f64);
    metrics::gauge!("rafka_offline_partitions").set(offline as f64);
    metrics::gauge!("rafka_controller_leader")
        .set(cluster.controller_leader().map_or(-1.0, |l| l as f64));
    let cm = cluster.controller.metrics();
    metrics::gauge!("rafka_controller_term").set(cm.borrow().current_term as f64);
    metrics::gauge!("rafka_hosted_partitions").set(partitions.len() as f64);
}

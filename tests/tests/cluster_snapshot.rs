//! A follower that falls behind the leader's log start (retention purged what it needs)
//! catches up by snapshot: its log start moves to the leader's, then it replicates from there,
//! and its log matches the others batch for batch above the new start.

use std::time::Duration;

use rafka_tests::checksums;
use rafka_tests::cluster::{wait_until, Cluster, ClusterOptions};
use rafka_tests::harness::rafka;

const TOPIC: &str = "snap";

fn produce(bootstrap: &str, from: usize, count: usize) {
    let lines: String = (from..from + count)
        .map(|i| format!("record-{i:06}-{}\n", "x".repeat(80)))
        .collect();
    let (code, _, err) = rafka(bootstrap, &["produce", TOPIC, "--acks", "all"], &lines);
    assert_eq!(code, 0, "produce failed: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_the_log_start_catches_up_by_snapshot() {
    let mut cluster = Cluster::start_with(ClusterOptions {
        extra_flags: vec!["--retention-check-interval-ms".into(), "200".into()],
        ..ClusterOptions::default()
    })
    .await;
    let bs = cluster.bootstrap();
    let (code, _, err) = rafka(
        &bs,
        &[
            "topic",
            "create",
            TOPIC,
            "--replication-factor",
            "3",
            "--config",
            "segment.bytes=4096",
            "--config",
            "retention.bytes=8192",
        ],
        "",
    );
    assert_eq!(code, 0, "create: {err}");
    let leader = cluster
        .wait_for_leader(TOPIC, 0, Duration::from_secs(30))
        .await;
    let follower = cluster
        .ids()
        .into_iter()
        .find(|id| *id != leader)
        .expect("a follower");
    produce(&bs, 0, 50);
    cluster.kill(follower);

    // Enough data for retention to purge what the stopped follower still needs.
    let live = cluster.bootstrap_of(
        &cluster
            .ids()
            .into_iter()
            .filter(|id| *id != follower)
            .collect::<Vec<_>>(),
    );
    // In many small produce requests: one request's records form one batch, a batch never
    // spans segments, and retention never deletes the active segment, so a single large batch
    // would leave nothing for retention to remove.
    for i in 0..40 {
        produce(&live, 50 + i * 25, 25);
    }
    let leader_dir = cluster.node(leader).partition_dir(TOPIC, 0);
    wait_until(
        Duration::from_secs(30),
        "the leader's log start to move",
        async || match checksums::read_partition(&leader_dir) {
            Ok(l) if l.log_start() > 200 => Ok(()),
            Ok(l) => Err(format!("log start {}", l.log_start())),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;

    cluster.restart(follower).await;
    produce(&bs, 1050, 25);
    let follower_dir = cluster.node(follower).partition_dir(TOPIC, 0);
    wait_until(
        Duration::from_secs(30),
        "the follower to install a snapshot (its log start moves)",
        async || match checksums::read_partition(&follower_dir) {
            Ok(l) if l.log_start() > 200 => Ok(()),
            Ok(l) => Err(format!("log start {}", l.log_start())),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    // Replication continues from the snapshot: these must reach the follower as log entries.
    // Retention is relaxed first so that they stay on every replica to be compared.
    let (code, _, err) = rafka(
        &bs,
        &[
            "topic",
            "alter",
            TOPIC,
            "--config",
            "retention.bytes=10000000",
        ],
        "",
    );
    assert_eq!(code, 0, "alter: {err}");
    for i in 0..4 {
        produce(&bs, 1075 + i * 25, 25);
    }
    let caught_up = cluster
        .wait_in_sync(TOPIC, 0, Duration::from_secs(60))
        .await;
    let committed = caught_up.info.high_watermark.0;
    wait_until(
        Duration::from_secs(30),
        "the follower to reach the commit point",
        async || match checksums::read_partition(&follower_dir) {
            Ok(l) if l.log_end() >= committed => Ok(()),
            Ok(l) => Err(format!("log end {} of {committed}", l.log_end())),
            Err(e) => Err(e.to_string()),
        },
    )
    .await;
    cluster.terminate_all().await;

    let logs: Vec<(i32, checksums::PartitionLog)> = cluster
        .ids()
        .into_iter()
        .map(|id| {
            let dir = cluster.node(id).partition_dir(TOPIC, 0);
            (id, checksums::read_partition(&dir).expect("readable log"))
        })
        .collect();
    let follower_start = logs
        .iter()
        .find(|(id, _)| *id == follower)
        .unwrap()
        .1
        .log_start();
    assert!(
        follower_start > 50,
        "the follower's log should start past what it had before it stopped (it installed a \
         snapshot), but starts at {}",
        follower_start
    );
    // Retention runs on each replica on its own schedule, so log starts differ; compare from
    // the latest one.
    let start = logs.iter().map(|(_, l)| l.log_start()).max().unwrap();
    let logs: Vec<(i32, checksums::PartitionLog)> = logs
        .into_iter()
        .map(|(id, mut l)| {
            l.batches.retain(|b| b.base_offset >= start);
            (id, l)
        })
        .collect();
    let agreement = checksums::compare_replicas(&logs, start, committed)
        .unwrap_or_else(|e| panic!("replicas differ after the snapshot catch-up: {e}"));
    assert!(
        agreement.batches >= 4,
        "too little compared after the snapshot: {agreement}"
    );
    eprintln!(
        "follower {follower} restarted from a snapshot at offset {}; replicas agree over \
         {start}..{committed}: {agreement}",
        follower_start
    );
}

//! The producer through a proxy that keeps cutting connections after the broker has applied a
//! request but before its answer arrives: every record must still be acknowledged (retries),
//! acknowledged records must be in the log where the acknowledgement says, and the order of a
//! partition must hold.
//!
//! With idempotence (the default) each record must be in the log exactly once, in send order,
//! with several batches in flight at once. Without it, duplicates from retried ambiguous
//! attempts are allowed and counted.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rafka_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};
use rafka_tests::harness::{free_port, seed, Broker};
use rafka_tests::proxy::FaultProxy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_retries_through_cut_connections_append_each_record_exactly_once_in_order() {
    let seed = seed("idempotent_retries_through_cut_connections");
    let duplicates = run(seed, true).await;
    assert_eq!(
        duplicates, 0,
        "idempotent producer duplicated (seed {seed})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_through_cut_connections_keep_order_and_lose_nothing() {
    let seed = seed("retries_through_cut_connections");
    run(seed, false).await;
}

/// Produces through the cutting proxy and checks the log; returns the duplicates it holds.
async fn run(seed: u64, idempotent: bool) -> usize {
    let dir = tempfile::tempdir().unwrap();
    // The broker advertises the proxy, so every client connection goes through it.
    let proxy_port = free_port();
    let proxy_addr = format!("127.0.0.1:{proxy_port}");
    let broker = Broker::start_with(
        &dir.path().join("b"),
        free_port(),
        free_port(),
        &["--advertise", &proxy_addr],
    );
    Admin::new(ClientConfig::new(broker.bootstrap()))
        .unwrap()
        .create_topic(NewTopic::new("faults"))
        .await
        .unwrap();
    let proxy = FaultProxy::start(&proxy_addr, broker.bootstrap(), seed, 30..800).await;

    let producer = Producer::new(ProducerConfig {
        bootstrap: proxy_addr.clone(),
        acks: Acks::All,
        enable_idempotence: idempotent,
        linger_ms: 1,
        // Small batches: a round of records makes several, in flight together.
        batch_bytes: 256,
        retry_backoff_ms: 5,
        request_timeout_ms: 5_000,
        delivery_timeout_ms: 120_000,
        ..ProducerConfig::default()
    })
    .unwrap();
    // Rounds of 40 records, each awaited before the next, make hundreds of small requests,
    // so the proxy's cuts land between requests, mid-response and mid-request.
    const N: usize = 3_000;
    const ROUND: usize = 40;
    let mut acked = Vec::with_capacity(N);
    for round in 0..N / ROUND {
        let mut deliveries = Vec::with_capacity(ROUND);
        for i in round * ROUND..round * ROUND + ROUND {
            let d = producer
                .send(ProducerRecord::new("faults", format!("{i:06}")).with_partition(0))
                .await
                .expect("queued");
            deliveries.push((i, d));
        }
        for (i, d) in deliveries {
            let md = d
                .await
                .unwrap_or_else(|e| panic!("record {i} not acknowledged (seed {seed}): {e}"));
            acked.push(md.offset.expect("acks=all reports offsets").0);
        }
    }
    assert!(
        proxy.cuts.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the proxy cut connections"
    );
    // Acknowledged order is send order.
    for w in acked.windows(2) {
        assert!(
            w[0] < w[1],
            "acknowledged offsets go backwards: {w:?} (seed {seed})"
        );
    }

    // Read the log back through the healed proxy (the broker advertises the proxy's address).
    proxy.heal();
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: broker.bootstrap(),
        ..ConsumerConfig::default()
    })
    .unwrap();
    let tp = TopicPartition::new("faults", 0);
    consumer.assign([tp.clone()]);
    consumer.seek(&tp, SeekTo::Earliest).await.unwrap();
    let end = *acked.last().unwrap() + 1;
    let mut log: HashMap<u64, Bytes> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while consumer.position(&tp).is_none_or(|p| p.0 < end) {
        assert!(
            Instant::now() < deadline,
            "could not read the log back (seed {seed})"
        );
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => {
                for r in records {
                    log.insert(r.offset.0, r.value.unwrap_or_default());
                }
            }
            Err(e) if e.is_retriable() => {}
            Err(e) => panic!("consume failed (seed {seed}): {e}"),
        }
    }
    for (i, offset) in acked.iter().enumerate() {
        assert_eq!(
            log.get(offset).map(|v| v.as_ref()),
            Some(format!("{i:06}").as_bytes()),
            "record {i} is not at its acknowledged offset {offset} (seed {seed})"
        );
    }
    // First appearances in the log follow send order (duplicates from retried, ambiguous
    // attempts may repeat a value, never move one ahead of an earlier record).
    let mut first_seen: HashMap<Bytes, u64> = HashMap::new();
    let mut offsets: Vec<_> = log.keys().copied().collect();
    offsets.sort_unstable();
    for o in &offsets {
        first_seen.entry(log[o].clone()).or_insert(*o);
    }
    let mut firsts: Vec<(usize, u64)> = (0..N)
        .map(|i| (i, first_seen[format!("{i:06}").as_bytes()]))
        .collect();
    firsts.sort_by_key(|(_, o)| *o);
    for w in firsts.windows(2) {
        assert!(
            w[0].0 < w[1].0,
            "records reordered in the log: {w:?} (seed {seed})"
        );
    }
    let duplicates = offsets.len() - N;
    eprintln!(
        "idempotent: {idempotent}, cuts: {}, log records: {}, duplicates: {duplicates}",
        proxy.cuts.load(std::sync::atomic::Ordering::Relaxed),
        offsets.len(),
    );
    if idempotent {
        // Exactly once and dense: the log is the sent sequence, nothing else.
        for (i, o) in offsets.iter().enumerate() {
            assert_eq!(
                log[o].as_ref(),
                format!("{i:06}").as_bytes(),
                "log offset {o} holds the wrong record (seed {seed})"
            );
        }
    }
    duplicates
}

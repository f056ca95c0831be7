//! Replication (issue 4) end to end: three real broker processes, one Raft group per partition,
//! and the faults that matter — a leader SIGKILLed again and again, a follower paused, a
//! follower that lost its disk, a leader cut off from the others, the whole cluster killed.
//!
//! Every test writes with acks=all and afterwards checks, from a consumer's point of view and
//! from the files themselves:
//! - every acknowledged record is in the log at the offset its acknowledgement named;
//! - the partition's offsets below the high watermark are dense: each is either a record a
//!   consumer reads or part of a control batch (Raft's leader blanks and membership entries);
//! - every replica holds the same batches (offsets, CRC, leader epoch, size) below the high
//!   watermark, compared on disk after a clean stop.
//!
//! Each test prints a seed; `RAFKA_TEST_SEED=<seed>` replays its random choices (which
//! follower, how long between faults). Tests take a lock so that two clusters never run side
//! by side, also under plain `cargo test`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rafka_client::connection::{Connection, ConnectionConfig};
use rafka_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};
use rafka_protocol::messages::{ProducePartition, ProduceRequest, ProduceTopic};
use rafka_protocol::{BatchBuilder, BatchOptions, ErrorCode, Timestamp};
use rafka_tests::checksums::{self, Agreement};
use rafka_tests::cluster::{exclusive, wait_until, Cluster, ClusterOptions, Leader};
use rafka_tests::harness::seed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Records per second of the steady producers.
const RATE: u32 = 200;
/// Longest wait for an election, a restart's catch-up, a batch of acknowledgements.
const ELECTION: Duration = Duration::from_secs(30);
const CATCH_UP: Duration = Duration::from_secs(60);
const ACKS: Duration = Duration::from_secs(60);

// ---- a producer writing at a steady rate ---------------------------------------------------

/// The outcome of one record of a [`SteadyProducer`].
#[derive(Debug, Clone)]
struct Outcome {
    seq: u64,
    value: String,
    partition: u32,
    sent_at: Instant,
    done_at: Instant,
    /// The acknowledged offset, or why the record was not acknowledged.
    result: Result<u64, String>,
}

/// Sends one record every `1/rate` s with acks=all (unique values, partitions in turn), never
/// waiting for acknowledgements before sending the next: the rate holds through failovers, and
/// records queue in the client while no leader is available.
struct SteadyProducer {
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
    task: tokio::task::JoinHandle<Vec<tokio::task::JoinHandle<()>>>,
}

impl SteadyProducer {
    fn start(bootstrap: &str, topic: &str, partitions: u32, tag: &str, rate: u32) -> Self {
        let producer = Producer::new(ProducerConfig {
            bootstrap: bootstrap.into(),
            acks: Acks::All,
            linger_ms: 1,
            retry_backoff_ms: 50,
            request_timeout_ms: 5_000,
            delivery_timeout_ms: 120_000,
            ..ProducerConfig::default()
        })
        .expect("producer");
        let stop = Arc::new(AtomicBool::new(false));
        let outcomes = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let stop = Arc::clone(&stop);
            let outcomes = Arc::clone(&outcomes);
            let topic = topic.to_owned();
            let tag = tag.to_owned();
            tokio::spawn(async move {
                let mut deliveries = Vec::new();
                let mut tick = tokio::time::interval(Duration::from_secs(1) / rate);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut seq = 0u64;
                while !stop.load(Ordering::Acquire) {
                    tick.tick().await;
                    let value = format!("{tag}-{seq:07}");
                    let partition = (seq % u64::from(partitions)) as u32;
                    let sent_at = Instant::now();
                    let record =
                        ProducerRecord::new(topic.clone(), value.clone()).with_partition(partition);
                    let sent = producer.send(record).await;
                    let outcomes = Arc::clone(&outcomes);
                    deliveries.push(tokio::spawn(async move {
                        let result = match sent {
                            Ok(delivery) => match delivery.await {
                                Ok(md) => md
                                    .offset
                                    .map(|o| o.0)
                                    .ok_or_else(|| "acknowledged without an offset".to_string()),
                                Err(e) => Err(e.to_string()),
                            },
                            Err(e) => Err(format!("not queued: {e}")),
                        };
                        outcomes.lock().unwrap().push(Outcome {
                            seq,
                            value,
                            partition,
                            sent_at,
                            done_at: Instant::now(),
                            result,
                        });
                    }));
                    seq += 1;
                }
                deliveries
            })
        };
        SteadyProducer {
            stop,
            outcomes,
            task,
        }
    }

    fn acked(&self) -> usize {
        self.outcomes
            .lock()
            .unwrap()
            .iter()
            .filter(|o| o.result.is_ok())
            .count()
    }

    /// Waits until `n` more records than now are acknowledged.
    async fn wait_more_acks(&self, n: usize, timeout: Duration) {
        let target = self.acked() + n;
        wait_until(
            timeout,
            &format!("{target} acknowledged records"),
            async || {
                let acked = self.acked();
                if acked >= target {
                    Ok(())
                } else {
                    Err(format!("{acked} acknowledged"))
                }
            },
        )
        .await;
    }

    /// Waits for the acknowledgement of a record sent after `t` and returns when the first
    /// such acknowledgement arrived.
    async fn first_ack_sent_after(&self, t: Instant, timeout: Duration) -> Instant {
        wait_until(
            timeout,
            "an acknowledgement of a record sent after the fault",
            async || {
                let first = self
                    .outcomes
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|o| o.sent_at > t && o.result.is_ok())
                    .map(|o| o.done_at)
                    .min();
                first.ok_or_else(|| format!("{} acknowledged in all", self.acked()))
            },
        )
        .await
    }

    /// Stops sending, waits for every outcome and returns them in send order.
    async fn stop(self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Release);
        let deliveries = self.task.await.expect("producer task");
        for d in deliveries {
            d.await.expect("delivery task");
        }
        let mut all = std::mem::take(&mut *self.outcomes.lock().unwrap());
        all.sort_by_key(|o| o.seq);
        let failed: Vec<&Outcome> = all.iter().filter(|o| o.result.is_err()).collect();
        eprintln!(
            "producer: {} sent, {} acknowledged, {} not acknowledged{}",
            all.len(),
            all.len() - failed.len(),
            failed.len(),
            failed
                .first()
                .map(|o| format!(" (first: {} {:?})", o.value, o.result.as_ref().unwrap_err()))
                .unwrap_or_default()
        );
        all
    }
}

/// An acknowledged record: value, partition, offset.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Acked {
    value: String,
    partition: u32,
    offset: u64,
}

fn acked(outcomes: &[Outcome]) -> Vec<Acked> {
    outcomes
        .iter()
        .filter_map(|o| {
            o.result.as_ref().ok().map(|&offset| Acked {
                value: o.value.clone(),
                partition: o.partition,
                offset,
            })
        })
        .collect()
}

/// Within a partition, acknowledged offsets follow send order (one batch in flight per
/// partition, retries included).
fn assert_acked_in_order(outcomes: &[Outcome], seed: u64) {
    let mut last: HashMap<u32, (u64, &str)> = HashMap::new();
    for o in outcomes {
        if let Ok(offset) = o.result {
            if let Some((prev, prev_value)) = last.get(&o.partition) {
                assert!(
                    offset > *prev,
                    "partition {}: {} acknowledged at {offset}, after {prev_value} at {prev} \
                     (seed {seed})",
                    o.partition,
                    o.value
                );
            }
            last.insert(o.partition, (offset, &o.value));
        }
    }
}

// ---- writes sent to one chosen broker ------------------------------------------------------

/// One acks=all produce of `values` (one batch) straight to the broker at `addr`, bypassing the
/// client's leader lookup. `Ok(base offset)` only when the broker acknowledged it.
async fn produce_direct(
    addr: &str,
    topic: &str,
    partition: u32,
    values: &[String],
    timeout: Duration,
) -> Result<u64, String> {
    let mut batch = BatchBuilder::new(BatchOptions::default());
    for v in values {
        batch.append(Some(Timestamp::now()), None, Some(v.as_bytes()), &[]);
    }
    let conn = Connection::connect(addr, &ConnectionConfig::default())
        .await
        .map_err(|e| e.to_string())?;
    let request = ProduceRequest {
        acks: -1,
        timeout_ms: timeout.as_millis() as u32,
        topics: vec![ProduceTopic {
            name: topic.into(),
            partitions: vec![ProducePartition {
                partition,
                records: batch.build(),
            }],
        }],
    };
    let resp = conn
        .send(request, timeout + Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())?;
    let p = resp
        .topics
        .first()
        .and_then(|t| t.partitions.first())
        .ok_or("empty produce response")?;
    let code = ErrorCode::from_code(p.error_code);
    if code.is_ok() {
        Ok(p.base_offset)
    } else {
        Err(format!("{code:?}: {}", p.error_message))
    }
}

// ---- the final checks ----------------------------------------------------------------------

/// Reads partitions `0..partitions` from the earliest offset up to `ends[p]` (exclusive).
async fn consume_until(
    bootstrap: &str,
    topic: &str,
    ends: &BTreeMap<u32, u64>,
) -> BTreeMap<u32, BTreeMap<u64, Bytes>> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.into(),
        request_timeout_ms: 5_000,
        ..ConsumerConfig::default()
    })
    .expect("consumer");
    let tps: Vec<TopicPartition> = ends
        .keys()
        .map(|&p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer.seek(tp, SeekTo::Earliest).await.expect("seek");
    }
    let mut got: BTreeMap<u32, BTreeMap<u64, Bytes>> = BTreeMap::new();
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let behind: Vec<String> = tps
            .iter()
            .filter_map(|tp| {
                let pos = consumer.position(tp).map_or(0, |o| o.0);
                (pos < ends[&tp.partition]).then(|| format!("{tp} at {pos}"))
            })
            .collect();
        if behind.is_empty() {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "could not read the partitions back: {}",
            behind.join(", ")
        );
        match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => {
                for r in records {
                    got.entry(r.partition)
                        .or_default()
                        .insert(r.offset.0, r.value.unwrap_or_default());
                }
            }
            Err(e) if e.is_retriable() => {}
            Err(e) => panic!("consume failed: {e}"),
        }
    }
}

/// The end-of-test checks, with the cluster up and the producers stopped:
/// 1. every acknowledged record is read back at its acknowledged offset, below the high
///    watermark; no value in `absent` is anywhere below it;
/// 2. the replicas' files become identical below the high watermark;
/// 3. after a clean stop of every broker, the files are compared again, and the offsets a
///    consumer read are exactly the data offsets of the log (everything else is control
///    batches; no offset is missing).
async fn verify(
    cluster: &mut Cluster,
    topic: &str,
    partitions: u32,
    acked: &[Acked],
    absent: &[String],
    seed: u64,
) -> Vec<Agreement> {
    // High watermarks: committed must cover every acknowledged offset.
    let mut ends = BTreeMap::new();
    for p in 0..partitions {
        let need = acked
            .iter()
            .filter(|a| a.partition == p)
            .map(|a| a.offset + 1)
            .max()
            .unwrap_or(0);
        let leader = cluster
            .wait_for_leader_where(
                topic,
                p,
                ELECTION,
                &format!("a leader whose high watermark covers offset {need}"),
                |l| l.info.high_watermark.0 >= need,
            )
            .await;
        ends.insert(p, leader.info.high_watermark.0);
    }
    eprintln!("verify {topic}: high watermarks {ends:?}");

    let log = consume_until(&cluster.bootstrap(), topic, &ends).await;
    let mut lost = Vec::new();
    for a in acked {
        let found = log.get(&a.partition).and_then(|l| l.get(&a.offset));
        if found.map(|v| v.as_ref()) != Some(a.value.as_bytes()) {
            lost.push(format!(
                "{} at {}-{} (found {:?})",
                a.value,
                topic,
                a.offset,
                found.map(|v| String::from_utf8_lossy(v).into_owned())
            ));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged records are not at their acknowledged offsets (seed {seed}): {}",
        lost.len(),
        acked.len(),
        lost.iter().take(20).cloned().collect::<Vec<_>>().join("; ")
    );
    let absent: BTreeSet<&[u8]> = absent.iter().map(|s| s.as_bytes()).collect();
    let mut duplicates = 0;
    for (p, records) in &log {
        let mut seen = BTreeSet::new();
        for (offset, value) in records.range(..ends[p]) {
            assert!(
                !absent.contains(value.as_ref()),
                "{} is in the log at {topic}-{p} offset {offset}, but it was never acknowledged \
                 and must have been truncated (seed {seed})",
                String::from_utf8_lossy(value)
            );
            if !seen.insert(value.clone()) {
                duplicates += 1;
            }
        }
    }

    for (&p, &end) in &ends {
        let agreement = cluster.wait_replicas_agree(topic, p, end, CATCH_UP).await;
        eprintln!("verify {topic}-{p} (running): {agreement}");
    }
    cluster.terminate_all().await;
    let mut agreements = Vec::new();
    for (&p, &end) in &ends {
        let agreement = cluster
            .compare_replicas(topic, p, end)
            .unwrap_or_else(|e| panic!("{topic}-{p} after a clean stop (seed {seed}): {e}"));
        let files = cluster.read_partition(cluster.ids()[0], topic, p);
        let data: Vec<u64> = files.data_offsets(end);
        let read: Vec<u64> = log
            .get(&p)
            .map(|r| r.range(..end).map(|(o, _)| *o).collect())
            .unwrap_or_default();
        if data != read {
            let d: BTreeSet<u64> = data.iter().copied().collect();
            let r: BTreeSet<u64> = read.iter().copied().collect();
            panic!(
                "{topic}-{p}: a consumer read offsets {:?}... that are not data records on disk, \
                 and missed data offsets {:?}... (seed {seed})",
                r.difference(&d).take(10).collect::<Vec<_>>(),
                d.difference(&r).take(10).collect::<Vec<_>>()
            );
        }
        eprintln!(
            "verify {topic}-{p} (stopped): {agreement}; {} data records, {} offsets in control \
             batches, {duplicates} duplicate values in the topic",
            data.len(),
            files.control_offsets(end).len()
        );
        agreements.push(agreement);
    }
    agreements
}

/// Waits until node `id` holds, byte for byte as checksummed, the leader's batches up to the
/// leader's high watermark as of now, and the leader reports every replica in sync.
async fn wait_caught_up(cluster: &Cluster, topic: &str, id: i32) -> Leader {
    let leader = cluster.wait_in_sync(topic, 0, CATCH_UP).await;
    let hw = leader.info.high_watermark.0;
    wait_until(
        CATCH_UP,
        &format!(
            "node {id} to hold the leader's (node {}) log below {hw}",
            leader.id
        ),
        async || {
            let logs = vec![
                (leader.id, cluster.try_read_partition(leader.id, topic, 0)?),
                (id, cluster.try_read_partition(id, topic, 0)?),
            ];
            checksums::compare_replicas(&logs, 0, hw)
        },
    )
    .await;
    leader
}

fn median(values: &mut [Duration]) -> Duration {
    values.sort_unstable();
    values[values.len() / 2]
}

// ---- the tests -----------------------------------------------------------------------------

/// a. The partition leader is SIGKILLed ten times while a producer writes 200 records/s with
/// acks=all; each time a new leader must take over and the killed broker must come back and
/// catch up. Nothing acknowledged may be lost, and the replicas must end identical.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_ten_times_loses_no_acknowledged_record() {
    let _lock = exclusive().await;
    let seed = seed("leader_killed_ten_times");
    let mut rng = StdRng::seed_from_u64(seed);
    const TOPIC: &str = "failover";
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(TOPIC, 1).await;
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 1, "a", RATE);
    producer.wait_more_acks(50, ACKS).await;

    let mut failovers = Vec::new();
    for round in 1..=10 {
        let old = cluster
            .wait_for_leader_where(TOPIC, 0, ELECTION, "a leader", |_| true)
            .await;
        let killed_at = Instant::now();
        cluster.kill(old.id);
        let new = cluster
            .wait_for_leader_where(TOPIC, 0, ELECTION, "a new leader", |l| {
                l.id != old.id && l.epoch > old.epoch
            })
            .await;
        let elected = killed_at.elapsed();
        let first_ack = producer.first_ack_sent_after(killed_at, ACKS).await;
        let failover = first_ack - killed_at;
        failovers.push(failover);
        eprintln!(
            "round {round}: killed leader {} (epoch {}); node {} leads epoch {} after {elected:?}; \
             first acks=all write after the kill acknowledged {failover:?} after it",
            old.id, old.epoch, new.id, new.epoch
        );
        cluster.restart(old.id).await;
        wait_caught_up(&cluster, TOPIC, old.id).await;
        // A seeded pause, counted in acknowledged records, before the next kill.
        producer.wait_more_acks(rng.gen_range(20..120), ACKS).await;
    }
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    let acked = acked(&outcomes);
    let agreements = verify(&mut cluster, TOPIC, 1, &acked, &[], seed).await;
    let mut sorted = failovers.clone();
    eprintln!(
        "failover (leader SIGKILL -> first acknowledged acks=all write): {:?}; median {:?}, \
         max {:?}; {} records acknowledged; {}",
        failovers,
        median(&mut sorted),
        sorted.last().unwrap(),
        acked.len(),
        agreements[0]
    );
}

/// b. A follower is paused (SIGSTOP) while the producer writes: the leader and the other
/// follower keep committing; once resumed (SIGCONT), the follower catches up to an identical
/// log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_follower_catches_up() {
    let _lock = exclusive().await;
    let seed = seed("paused_follower_catches_up");
    let mut rng = StdRng::seed_from_u64(seed);
    const TOPIC: &str = "paused";
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(TOPIC, 1).await;
    let leader = cluster.wait_for_leader(TOPIC, 0, ELECTION).await;
    let followers: Vec<i32> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader)
        .collect();
    let paused = followers[rng.gen_range(0..followers.len())];
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 1, "b", RATE);
    producer.wait_more_acks(100, ACKS).await;

    cluster.stop(paused);
    let paused_at = Instant::now();
    // Two seconds' worth of records or more are committed without the paused follower.
    producer.wait_more_acks(rng.gen_range(400..800), ACKS).await;
    let during = cluster.leader(TOPIC, 0).await;
    eprintln!(
        "node {paused} paused for {:?}; leader view meanwhile: {during:?}",
        paused_at.elapsed()
    );
    cluster.cont(paused);
    let leader = wait_caught_up(&cluster, TOPIC, paused).await;
    eprintln!(
        "node {paused} caught up to {} within {:?} of SIGCONT",
        leader.info.high_watermark.0,
        paused_at.elapsed()
    );
    producer.wait_more_acks(100, ACKS).await;
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    verify(&mut cluster, TOPIC, 1, &acked(&outcomes), &[], seed).await;
}

/// c. A follower is killed, its data directory deleted, and it is started again empty: it must
/// copy the whole log back (from offset 0) and end identical to the others. The wiped follower
/// is node 1 when it is a follower: the lowest id is the one that initialises the controller
/// group on a fresh cluster, and a wiped node looks fresh. Then the same is done to the
/// partition's preferred replica (the one that initialised the partition's group, and its
/// first leader): killed as leader, wiped, started again, it must rejoin as a follower of the
/// group that exists rather than start a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wiped_follower_copies_the_whole_log_back() {
    let _lock = exclusive().await;
    let seed = seed("wiped_follower");
    let mut rng = StdRng::seed_from_u64(seed);
    const TOPIC: &str = "wiped";
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(TOPIC, 1).await;
    let leader = cluster
        .wait_for_leader_where(TOPIC, 0, ELECTION, "a leader", |_| true)
        .await;
    let preferred = leader.info.replicas[0].0;
    let followers: Vec<i32> = cluster
        .ids()
        .into_iter()
        .filter(|&id| id != leader.id)
        .collect();
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 1, "c", RATE);
    producer.wait_more_acks(300, ACKS).await;

    let mut wipes = vec![if followers.contains(&1) {
        1
    } else {
        followers[rng.gen_range(0..followers.len())]
    }];
    if !wipes.contains(&preferred) {
        wipes.push(preferred);
    }
    for wiped in wipes {
        let before = cluster
            .wait_for_leader_where(TOPIC, 0, ELECTION, "a leader", |_| true)
            .await;
        cluster.kill(wiped);
        cluster.wipe(wiped);
        if wiped == before.id {
            cluster
                .wait_for_leader_where(TOPIC, 0, ELECTION, "a new leader", |l| {
                    l.id != wiped && l.epoch > before.epoch
                })
                .await;
        }
        producer.wait_more_acks(300, ACKS).await;
        let restarted_at = Instant::now();
        cluster.restart(wiped).await;
        let leader = wait_caught_up(&cluster, TOPIC, wiped).await;
        eprintln!(
            "wiped node {wiped} (was {} of epoch {}; preferred replica: {}) holds the log up to \
             {} again {:?} after its restart; node {} leads epoch {}",
            if wiped == before.id {
                "the leader"
            } else {
                "a follower"
            },
            before.epoch,
            wiped == preferred,
            leader.info.high_watermark.0,
            restarted_at.elapsed(),
            leader.id,
            leader.epoch
        );
        producer.wait_more_acks(100, ACKS).await;
    }
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    verify(&mut cluster, TOPIC, 1, &acked(&outcomes), &[], seed).await;
}

/// d. The leader is cut off from both followers (every peer link cut by the link proxies): it
/// can no longer commit, so a write sent to it is not acknowledged; the other two elect a new
/// leader that takes writes. After the links heal, the old leader's uncommitted tail is
/// replaced and all three logs end identical, with every acknowledged record in them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn isolated_leader_cannot_commit_and_its_tail_is_truncated() {
    let _lock = exclusive().await;
    let seed = seed("isolated_leader");
    let mut rng = StdRng::seed_from_u64(seed);
    const TOPIC: &str = "isolated";
    let mut cluster = Cluster::start_with(ClusterOptions {
        link_proxies: true,
        ..ClusterOptions::default()
    })
    .await;
    cluster.create_topic(TOPIC, 1).await;
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 1, "d", RATE);
    producer.wait_more_acks(rng.gen_range(100..300), ACKS).await;
    let before = producer.stop().await;
    assert_acked_in_order(&before, seed);
    let mut all_acked = acked(&before);

    let old = cluster
        .wait_for_leader_where(TOPIC, 0, ELECTION, "a leader", |_| true)
        .await;
    let committed_before = old.info.high_watermark.0;
    cluster.isolate(old.id);
    let isolated_at = Instant::now();
    // Writes sent to the isolated leader itself: it may append them, never acknowledge them.
    let old_addr = cluster.node(old.id).bootstrap();
    let unacked: Vec<String> = (0..3).map(|i| format!("isolated-{i}")).collect();
    let to_old = {
        let addr = old_addr.clone();
        let values = unacked.clone();
        tokio::spawn(async move {
            let mut results = Vec::new();
            for v in values {
                let r = produce_direct(&addr, TOPIC, 0, &[v], Duration::from_secs(3)).await;
                results.push(r);
            }
            results
        })
    };

    // The other two elect a leader, which takes acks=all writes.
    let new = cluster
        .wait_for_leader_where(
            TOPIC,
            0,
            ELECTION,
            "a leader among the connected two",
            |l| l.id != old.id && l.epoch > old.epoch,
        )
        .await;
    eprintln!(
        "node {} (epoch {}) isolated; node {} leads epoch {} after {:?}",
        old.id,
        old.epoch,
        new.id,
        new.epoch,
        isolated_at.elapsed()
    );
    let new_addr = cluster.node(new.id).bootstrap();
    for i in 0..20 {
        let value = format!("majority-{i:03}");
        let offset = wait_until(
            ACKS,
            &format!("node {} to acknowledge {value}", new.id),
            async || {
                produce_direct(
                    &new_addr,
                    TOPIC,
                    0,
                    std::slice::from_ref(&value),
                    Duration::from_secs(3),
                )
                .await
            },
        )
        .await;
        all_acked.push(Acked {
            value,
            partition: 0,
            offset,
        });
    }
    let results = to_old.await.expect("writes to the isolated leader");
    for (v, r) in unacked.iter().zip(&results) {
        assert!(
            r.is_err(),
            "the isolated old leader (node {}) acknowledged {v} at offset {:?}: it cannot have \
             a majority (seed {seed})",
            old.id,
            r
        );
    }
    eprintln!("writes to the isolated leader: {results:?}");
    // What the old leader holds beyond the point committed before the cut (read while it runs).
    let old_files = cluster.read_partition(old.id, TOPIC, 0);
    let tail: Vec<String> = old_files
        .batches
        .iter()
        .filter(|b| b.last_offset >= committed_before)
        .map(|b| b.to_string())
        .collect();
    let old_values = checksums::read_values(&cluster.node(old.id).partition_dir(TOPIC, 0))
        .expect("read the old leader's records");
    let appended: Vec<u64> = old_values
        .iter()
        .filter(|(_, v)| {
            v.as_ref()
                .is_some_and(|v| unacked.iter().any(|u| u.as_bytes() == v.as_ref()))
        })
        .map(|(o, _)| *o)
        .collect();
    eprintln!(
        "isolated node {} holds {} batches at or beyond {committed_before} (its uncommitted \
         writes at offsets {appended:?}): {tail:?}",
        old.id,
        tail.len()
    );

    cluster.heal_all();
    // After healing, writes through the normal client again, whoever leads.
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 1, "healed", RATE);
    producer.wait_more_acks(100, ACKS).await;
    let after = producer.stop().await;
    assert_acked_in_order(&after, seed);
    all_acked.extend(acked(&after));
    let agreements = verify(&mut cluster, TOPIC, 1, &all_acked, &unacked, seed).await;
    // The old leader's divergent entries are gone from its own files too.
    let old_values = checksums::read_values(&cluster.node(old.id).partition_dir(TOPIC, 0))
        .expect("read the old leader's records");
    for (offset, v) in old_values
        .iter()
        .filter(|(o, _)| *o < agreements[0].committed)
    {
        let v = v.as_deref().unwrap_or_default();
        assert!(
            !unacked.iter().any(|u| u.as_bytes() == v),
            "node {} still holds the unacknowledged {} at offset {offset} (seed {seed})",
            old.id,
            String::from_utf8_lossy(v)
        );
    }
}

/// e. Every broker is SIGKILLed at once while the producer writes to two partitions, then all
/// are started again: everything acknowledged before the crash (and after) is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_killed_and_restarted_keeps_acknowledged_records() {
    let _lock = exclusive().await;
    let seed = seed("whole_cluster_killed");
    let mut rng = StdRng::seed_from_u64(seed);
    const TOPIC: &str = "crash";
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(TOPIC, 2).await;
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 2, "e", RATE);
    producer.wait_more_acks(rng.gen_range(200..600), ACKS).await;
    let acked_before_crash = producer.acked();
    cluster.kill_all();
    let killed_at = Instant::now();
    cluster.restart_all().await;
    for p in 0..2 {
        cluster.wait_for_leader(TOPIC, p, ELECTION).await;
    }
    let first_ack = producer.first_ack_sent_after(killed_at, ACKS).await;
    eprintln!(
        "all three killed after {acked_before_crash} acknowledged records; writes acknowledged \
         again {:?} after the kill",
        first_ack - killed_at
    );
    producer.wait_more_acks(200, ACKS).await;
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    verify(&mut cluster, TOPIC, 2, &acked(&outcomes), &[], seed).await;
}

/// The harness itself, on a single-node cluster (which needs no replication): start, metadata,
/// leader, kill and restart, pause and resume, a clean stop, the file comparison, and a link
/// proxy that cuts and heals connections.
/// Preferred-leader balancing: three partitions whose preferred leaders are the three brokers.
/// The preferred leader of one is killed, so the others take its partition over; after it
/// restarts, leadership comes back to it (within the balancer's start delay and interval)
/// while a steady acks=all load runs, and nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_returns_to_preferred_replicas_after_recovery() {
    let _lock = exclusive().await;
    let seed = seed("preferred_leaders");
    let mut rng = StdRng::seed_from_u64(seed);
    const TOPIC: &str = "balance";
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic(TOPIC, 3).await;
    let preferred = |info: &rafka_client::PartitionInfo| info.replicas[0].0;
    for p in 0..3 {
        cluster
            .wait_for_leader_where(TOPIC, p, ELECTION, "the preferred leader", |l| {
                l.id == preferred(&l.info)
            })
            .await;
    }
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 3, "b", RATE);
    producer.wait_more_acks(100, ACKS).await;
    let victim = cluster.leader(TOPIC, rng.gen_range(0..3)).await.unwrap().id;
    cluster.kill(victim);
    let moved: Vec<u32> = {
        let mut moved = Vec::new();
        for p in 0..3 {
            let l = cluster
                .wait_for_leader_where(TOPIC, p, ELECTION, "a live leader", |l| l.id != victim)
                .await;
            if preferred(&l.info) == victim {
                moved.push(p);
            }
        }
        moved
    };
    assert!(
        !moved.is_empty(),
        "node {victim} was preferred for none of the partitions"
    );
    producer.wait_more_acks(100, ACKS).await;
    cluster.restart(victim).await;
    let restarted = Instant::now();
    for &p in &moved {
        cluster
            .wait_for_leader_where(
                TOPIC,
                p,
                Duration::from_secs(60),
                "leadership back on the preferred replica",
                |l| l.id == victim,
            )
            .await;
    }
    eprintln!(
        "leadership of {moved:?} back on node {victim} {:?} after its restart",
        restarted.elapsed()
    );
    producer.wait_more_acks(100, ACKS).await;
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    verify(&mut cluster, TOPIC, 3, &acked(&outcomes), &[], seed).await;
}

/// Groups whose designated initialiser is down still form: a three-voter cluster whose lowest
/// voter (the controller's initialiser) is missing on the very first start, and a topic whose
/// partitions' preferred replica is down when it is created. Both get leaders from the live
/// majority, take acks=all writes, and the missing broker joins when it comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_form_without_their_first_replica() {
    let _lock = exclusive().await;
    let seed = seed("groups_form_without_their_first_replica");
    const TOPIC: &str = "orphans";
    let mut cluster = Cluster::start_with(ClusterOptions {
        absent: vec![1],
        ..ClusterOptions::default()
    })
    .await;
    let live = cluster.bootstrap_of(&[2, 3]);
    let admin = Admin::new(ClientConfig::new(live.clone())).unwrap();
    // Node 1 never registered, so assignment uses nodes 2 and 3.
    admin
        .create_topic(NewTopic::new("early").partitions(2))
        .await
        .expect("create a topic on a cluster missing its lowest voter");
    for p in 0..2 {
        cluster.wait_for_leader("early", p, ELECTION).await;
    }
    cluster.restart(1).await;
    cluster
        .wait_until(ELECTION, "node 1 registered", async || {
            let m = cluster.metadata_from(2).await?;
            if m.brokers.len() == 3 {
                Ok(())
            } else {
                Err(format!("{} brokers registered", m.brokers.len()))
            }
        })
        .await;
    // Now the preferred replica of some partitions is down when the topic is created.
    cluster.kill(1);
    cluster.create_topic(TOPIC, 3).await;
    for p in 0..3 {
        cluster.wait_for_leader(TOPIC, p, ELECTION).await;
    }
    let producer = SteadyProducer::start(&live, TOPIC, 3, "o", RATE);
    producer.wait_more_acks(200, ACKS).await;
    cluster.restart(1).await;
    producer.wait_more_acks(200, ACKS).await;
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    verify(&mut cluster, TOPIC, 3, &acked(&outcomes), &[], seed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn harness_works_on_one_node() {
    let _lock = exclusive().await;
    let seed = seed("harness_works_on_one_node");
    const TOPIC: &str = "harness";
    let mut cluster = Cluster::start(1).await;
    cluster.create_topic(TOPIC, 1).await;
    assert_eq!(cluster.wait_for_leader(TOPIC, 0, ELECTION).await, 1);
    let producer = SteadyProducer::start(&cluster.bootstrap(), TOPIC, 1, "h", 500);
    producer.wait_more_acks(100, ACKS).await;
    cluster.stop(1);
    let paused = rafka_client::Cluster::new(rafka_client::ClientConfig {
        request_timeout: Duration::from_millis(500),
        ..rafka_client::ClientConfig::new(cluster.node(1).bootstrap())
    })
    .unwrap();
    assert!(
        paused.refresh_metadata(&[]).await.is_err(),
        "a paused broker answered"
    );
    cluster.cont(1);
    producer.wait_more_acks(50, ACKS).await;
    let killed_at = Instant::now();
    cluster.kill(1);
    cluster.restart(1).await;
    producer.first_ack_sent_after(killed_at, ACKS).await;
    let outcomes = producer.stop().await;
    assert_acked_in_order(&outcomes, seed);
    let acked = acked(&outcomes);
    assert!(acked.len() >= 150);

    // A link proxy in front of the client port: forwards, cuts (open and new connections),
    // heals.
    let link = rafka_tests::proxy::LinkProxy::start(cluster.node(1).bootstrap());
    let via = link.addr.to_string();
    let one = |v: &str| vec![v.to_string()];
    let t = Duration::from_secs(3);
    produce_direct(&via, TOPIC, 0, &one("via-proxy"), t)
        .await
        .expect("through the link");
    let conn = Connection::connect(&via, &ConnectionConfig::default())
        .await
        .expect("connect through the link");
    link.cut();
    assert_eq!(
        link.stats.live.load(Ordering::Acquire),
        0,
        "open connections closed"
    );
    let request = ProduceRequest {
        acks: -1,
        timeout_ms: 1000,
        topics: Vec::new(),
    };
    assert!(
        conn.send(request, t).await.is_err(),
        "a connection open before the cut still works"
    );
    assert!(
        produce_direct(&via, TOPIC, 0, &one("cut"), t)
            .await
            .is_err(),
        "a new connection works through a cut link"
    );
    assert!(link.stats.refused.load(Ordering::Relaxed) > 0);
    link.heal();
    produce_direct(&via, TOPIC, 0, &one("healed"), t)
        .await
        .expect("through the healed link");
    drop(link);

    let agreements = verify(&mut cluster, TOPIC, 1, &acked, &one("cut"), seed).await;
    assert!(agreements[0].committed as usize >= acked.len() + 2);
    // The comparison is not vacuous: a flipped byte in a committed batch is found.
    let dir = cluster.node(1).partition_dir(TOPIC, 0);
    let files = cluster.read_partition(1, TOPIC, 0);
    let victim = &files.batches[files.batches.len() / 2];
    let path = dir.join(&victim.segment);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[victim.position as usize + victim.bytes as usize - 1] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let err = cluster
        .compare_replicas(TOPIC, 0, agreements[0].committed)
        .unwrap_err();
    assert!(err.contains("log ends at offset"), "{err}");
}

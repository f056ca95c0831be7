//! Transactions through the Rust client on a three-broker cluster (issue 7):
//!
//! - a transactional producer commits and aborts transactions across three partitions while a
//!   read_committed and a read_uncommitted consumer poll: read_committed sees every committed
//!   record exactly once, in order, and nothing of an aborted transaction, never a record
//!   before its transaction's commit was asked for (the LSO never passes an open transaction);
//!   read_uncommitted sees everything;
//! - consume-transform-produce with its consumed offsets sent to each transaction, in a
//!   processor process SIGKILLed at random moments and started again: the output holds each
//!   input record's result exactly once.
//!
//! Each test prints a seed (`RAFKA_TEST_SEED` replays its random choices).

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rafka_client::{
    Consumer, ConsumerConfig, IsolationLevel, Producer, ProducerConfig, ProducerRecord, SeekTo,
    TopicPartition,
};
use rafka_tests::cluster::{exclusive, wait_until, Cluster};
use rafka_tests::harness::{binary, die_with_parent, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SETTLE: Duration = Duration::from_secs(90);

/// Values read, with their partition and when they arrived.
type Seen = Arc<Mutex<Vec<(u32, String, Instant)>>>;

/// Reads `topic`'s partitions from the start in a background task, remembering each value and
/// when it arrived, until the task is aborted.
fn reader(
    bootstrap: String,
    topic: &str,
    partitions: u32,
    level: IsolationLevel,
) -> (Seen, tokio::task::JoinHandle<()>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&seen);
    let topic = topic.to_string();
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap,
            isolation_level: level,
            ..ConsumerConfig::default()
        })
        .expect("consumer");
        let tps: Vec<TopicPartition> = (0..partitions)
            .map(|p| TopicPartition::new(topic.clone(), p))
            .collect();
        consumer.assign(tps.clone());
        for tp in &tps {
            consumer.seek(tp, SeekTo::Earliest).await.expect("seek");
        }
        loop {
            match consumer.poll(Duration::from_millis(100)).await {
                Ok(records) => {
                    let now = Instant::now();
                    let mut seen = out.lock().unwrap();
                    for r in records {
                        let v = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
                            .into_owned();
                        seen.push((r.partition, v, now));
                    }
                }
                Err(e) if e.is_retriable() => {}
                Err(e) => panic!("consumer: {e}"),
            }
        }
    });
    (seen, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_committed_sees_committed_transactions_whole_while_they_happen() {
    let _lock = exclusive().await;
    let seed = seed("txn_client_consumers");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(3).await;
    cluster.create_topic("ct", 3).await;
    let (rc, rc_task) = reader(cluster.bootstrap(), "ct", 3, IsolationLevel::ReadCommitted);
    let (ru, ru_task) = reader(
        cluster.bootstrap(),
        "ct",
        3,
        IsolationLevel::ReadUncommitted,
    );
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        transactional_id: Some("ct-app".into()),
        linger_ms: 1,
        ..ProducerConfig::default()
    })
    .expect("producer");
    producer.init_transactions().await.expect("init");
    // Transaction n writes records to a random subset of the partitions; a third abort.
    let mut committed: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut aborted: Vec<String> = Vec::new();
    let mut commit_asked: HashMap<String, Instant> = HashMap::new();
    let mut all = 0;
    const TXNS: usize = 30;
    for n in 0..TXNS {
        producer.begin_transaction().await.expect("begin");
        let commit = rng.gen_range(0..3) != 0;
        let mut written = Vec::new();
        for p in 0..3u32 {
            if rng.gen_bool(0.3) && p != (n % 3) as u32 {
                continue;
            }
            for k in 0..rng.gen_range(1..5) {
                let v = format!("t{n}-p{p}-{k}");
                let d = producer
                    .send(ProducerRecord::new("ct", v.clone()).with_partition(p))
                    .await
                    .expect("send");
                written.push((p, v, d));
            }
        }
        for (_, _, d) in written.iter_mut() {
            d.await.expect("delivered");
        }
        all += written.len();
        // Half-way through an open transaction, nothing of it may be visible to read_committed.
        if commit {
            let asked = Instant::now();
            producer.commit_transaction().await.expect("commit");
            for (p, v, _) in written {
                commit_asked.insert(v.clone(), asked);
                committed.entry(p).or_default().push(v);
            }
        } else {
            producer.abort_transaction().await.expect("abort");
            aborted.extend(written.into_iter().map(|(_, v, _)| v));
        }
    }
    let expected: usize = committed.values().map(Vec::len).sum();
    wait_until(SETTLE, "the readers to catch up", async || {
        let (a, b) = (rc.lock().unwrap().len(), ru.lock().unwrap().len());
        if a >= expected && b >= all {
            Ok(())
        } else {
            Err(format!(
                "read_committed {a}/{expected}, read_uncommitted {b}/{all}"
            ))
        }
    })
    .await;
    rc_task.abort();
    ru_task.abort();
    let rc = rc.lock().unwrap().clone();
    let ru = ru.lock().unwrap().clone();
    let mut by_partition: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (p, v, at) in &rc {
        assert!(
            !aborted.contains(v),
            "read_committed saw aborted {v} (seed {seed})"
        );
        let asked = commit_asked
            .get(v)
            .unwrap_or_else(|| panic!("read_committed saw {v}, never committed (seed {seed})"));
        assert!(
            at >= asked,
            "read_committed saw {v} before its commit was asked for (seed {seed})"
        );
        by_partition.entry(*p).or_default().push(v.clone());
    }
    assert_eq!(
        by_partition, committed,
        "read_committed must see each committed record once, in order (seed {seed})"
    );
    assert_eq!(ru.len(), all, "read_uncommitted sees every record once");
    eprintln!(
        "{TXNS} transactions: {expected} committed records, {} aborted",
        aborted.len()
    );
}

/// Every value of `topic` from the start to its current end, read_committed.
async fn read_to_end(bootstrap: &str, topic: &str, partitions: u32) -> Vec<String> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_string(),
        isolation_level: IsolationLevel::ReadCommitted,
        ..ConsumerConfig::default()
    })
    .expect("consumer");
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    consumer.assign(tps.clone());
    let mut ends = BTreeMap::new();
    for tp in &tps {
        consumer.seek(tp, SeekTo::Latest).await.expect("seek");
        ends.insert(tp.clone(), consumer.position(tp).expect("position"));
        consumer.seek(tp, SeekTo::Earliest).await.expect("seek");
    }
    let mut values = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while tps
        .iter()
        .any(|tp| consumer.position(tp).is_none_or(|p| p < ends[tp]))
    {
        assert!(
            Instant::now() < deadline,
            "could not read {topic} to its end"
        );
        match consumer.poll(Duration::from_millis(200)).await {
            Ok(records) => values.extend(records.into_iter().map(|r| {
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned()
            })),
            Err(e) if e.is_retriable() => {}
            Err(e) => panic!("consumer: {e}"),
        }
    }
    values
}

/// One processor process; its stdout lines are collected.
struct Processor {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Processor {
    fn start(bootstrap: &str) -> Processor {
        let mut cmd = Command::new(binary("rafka-test-processor"));
        cmd.args([
            "--bootstrap",
            bootstrap,
            "--input",
            "ctp-in",
            "--output",
            "ctp-out",
            "--partitions",
            "3",
            "--group",
            "ctp",
            "--transactional-id",
            "ctp-processor",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("start rafka-test-processor");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Processor { child, lines }
    }

    fn committed(&self) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("\"committed\""))
            .count()
    }

    fn is_idle(&self) -> bool {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("\"idle\""))
    }

    fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_transform_produce_is_exactly_once_across_processor_crashes() {
    let _lock = exclusive().await;
    let seed = seed("txn_client_processor");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(3).await;
    cluster.create_topic("ctp-in", 3).await;
    cluster.create_topic("ctp-out", 3).await;
    const N: usize = 3_000;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        ..ProducerConfig::default()
    })
    .expect("producer");
    let mut deliveries = Vec::new();
    for i in 0..N {
        deliveries.push(
            producer
                .send(
                    ProducerRecord::new("ctp-in", format!("{i:05}")).with_partition((i % 3) as u32),
                )
                .await
                .expect("send"),
        );
    }
    for d in deliveries {
        d.await.expect("input acknowledged");
    }
    // SIGKILL the processor a few times, each after it committed at least one transaction.
    let kills = 4;
    for k in 0..kills {
        let p = Processor::start(&cluster.bootstrap());
        let target = rng.gen_range(1..20);
        wait_until(SETTLE, "the processor to commit", async || {
            let c = p.committed();
            if c >= target {
                Ok(())
            } else {
                Err(format!("{c} transactions committed"))
            }
        })
        .await;
        // A random moment within the next transactions.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..50))).await;
        eprintln!("kill {} after {} transactions", k + 1, p.committed());
        p.kill();
    }
    let last = Processor::start(&cluster.bootstrap());
    let (out, task) = reader(
        cluster.bootstrap(),
        "ctp-out",
        3,
        IsolationLevel::ReadCommitted,
    );
    wait_until(SETTLE, "every result", async || {
        let n = out.lock().unwrap().len();
        if n >= N && last.is_idle() {
            Ok(())
        } else {
            Err(format!("{n}/{N} results"))
        }
    })
    .await;
    task.abort();
    // Idle, so nothing is open: stop it and read the whole output once more, to its end.
    last.kill();
    let out = read_to_end(&cluster.bootstrap(), "ctp-out", 3).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for v in &out {
        *counts.entry(v.clone()).or_default() += 1;
    }
    let dups: Vec<_> = counts.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        dups.is_empty(),
        "results duplicated: {dups:?} (seed {seed})"
    );
    for i in 0..N {
        assert!(
            counts.contains_key(&format!("out-{i:05}")),
            "the result of input {i} is missing (seed {seed})"
        );
    }
    assert_eq!(out.len(), N, "unexpected results (seed {seed})");
}

//! Transactions (issue 7) on a three-broker cluster, through the raw protocol so that each
//! request is exactly the one under test:
//!
//! - commits and aborts across three partitions: read_committed sees every committed record
//!   once and nothing of an aborted or open transaction, and the last stable offset stops at
//!   an open transaction;
//! - a zombie (an instance fenced by a newer one with the same transactional id) can neither
//!   write nor end a transaction, and its open transaction is aborted;
//! - a delayed EndTxn delivered after the producer began its next transaction is refused and
//!   decides nothing;
//! - the transaction coordinator's broker and a partition leader SIGKILLed mid-transaction:
//!   every transaction ends whole (committed or aborted), none outlives its timeout.
//!
//! Each test prints a seed (`RAFKA_TEST_SEED` replays its random choices).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rafka_client::connection::{Connection, ConnectionConfig};
use rafka_protocol::api::{coordinator_type, isolation};
use rafka_protocol::messages::*;
use rafka_protocol::{
    BatchBuilder, BatchIter, BatchOptions, ErrorCode, ProducerEpoch, ProducerId, Sequence,
    Timestamp,
};
use rafka_tests::cluster::{exclusive, wait_until, Cluster};
use rafka_tests::harness::seed;
use rafka_tests::proxy::HoldProxy;

const SETTLE: Duration = Duration::from_secs(60);
const T: Duration = Duration::from_secs(15);

async fn connect(addr: &str) -> Connection {
    Connection::connect(addr, &ConnectionConfig::default())
        .await
        .expect("connect")
}

fn code(c: i32) -> ErrorCode {
    ErrorCode::from_code(c)
}

/// The address of the transaction coordinator of `id`, once there is one.
async fn coordinator_addr(cluster: &Cluster, id: &str) -> String {
    wait_until(SETTLE, "a transaction coordinator", async || {
        let conn = Connection::connect(
            &cluster.bootstrap_of(&cluster.up_ids()[..1]),
            &ConnectionConfig::default(),
        )
        .await
        .map_err(|e| e.to_string())?;
        let r = conn
            .send(
                FindCoordinatorRequest {
                    key: id.to_string(),
                    key_type: coordinator_type::TRANSACTION,
                },
                T,
            )
            .await
            .map_err(|e| e.to_string())?;
        match code(r.error_code) {
            ErrorCode::None => Ok(format!("{}:{}", r.host, r.port)),
            c => Err(format!("{c}: {}", r.error_message)),
        }
    })
    .await
}

/// A transactional producer driven request by request.
struct TxnProducer {
    id: String,
    coordinator: Connection,
    producer_id: i64,
    epoch: i16,
    /// Next sequence per partition (reset at every epoch).
    sequences: BTreeMap<(String, u32), i32>,
}

impl TxnProducer {
    /// Finds the coordinator and initialises (retrying while an older instance's transaction
    /// is being aborted or the coordinator is loading).
    async fn init(cluster: &Cluster, id: &str, timeout_ms: u32) -> TxnProducer {
        let (coordinator, producer_id, epoch) = wait_until(SETTLE, "InitProducerId", async || {
            let addr = coordinator_addr(cluster, id).await;
            let conn = Connection::connect(&addr, &ConnectionConfig::default())
                .await
                .map_err(|e| e.to_string())?;
            let r = conn
                .send(
                    InitProducerIdRequest {
                        transactional_id: id.to_string(),
                        transaction_timeout_ms: timeout_ms,
                    },
                    T,
                )
                .await
                .map_err(|e| e.to_string())?;
            match code(r.error_code) {
                ErrorCode::None => Ok((conn, r.producer_id, r.producer_epoch as i16)),
                c => Err(format!("{c}: {}", r.error_message)),
            }
        })
        .await;
        TxnProducer {
            id: id.to_string(),
            coordinator,
            producer_id,
            epoch,
            sequences: BTreeMap::new(),
        }
    }

    async fn add_partitions(&self, topic: &str, partitions: &[u32]) -> ErrorCode {
        let r = self
            .coordinator
            .send(
                AddPartitionsToTxnRequest {
                    transactional_id: self.id.clone(),
                    producer_id: self.producer_id,
                    producer_epoch: i32::from(self.epoch),
                    partitions: vec![TopicPartitions {
                        topic: topic.to_string(),
                        partitions: partitions.to_vec(),
                    }],
                },
                T,
            )
            .await
            .expect("AddPartitionsToTxn");
        code(r.error_code)
    }

    /// Adds partitions, retrying while the previous transaction completes.
    async fn begin(&self, topic: &str, partitions: &[u32]) {
        wait_until(SETTLE, "AddPartitionsToTxn", async || {
            match self.add_partitions(topic, partitions).await {
                ErrorCode::None => Ok(()),
                c => Err(c.to_string()),
            }
        })
        .await;
    }

    fn end_request(&self, commit: bool) -> EndTxnRequest {
        EndTxnRequest {
            transactional_id: self.id.clone(),
            producer_id: self.producer_id,
            producer_epoch: i32::from(self.epoch),
            commit,
        }
    }

    /// Ends the transaction and moves to the epoch the coordinator hands out.
    async fn end(&mut self, commit: bool) -> ErrorCode {
        let r = self
            .coordinator
            .send(self.end_request(commit), T)
            .await
            .expect("EndTxn");
        let c = code(r.error_code);
        if c.is_ok() {
            self.producer_id = r.producer_id;
            self.epoch = r.producer_epoch as i16;
            self.sequences.clear();
        }
        c
    }

    /// A transactional batch of `values` for `topic`-`partition`, with the next sequence.
    fn batch(&mut self, topic: &str, partition: u32, values: &[String]) -> Bytes {
        let seq = self
            .sequences
            .entry((topic.to_string(), partition))
            .or_insert(0);
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: ProducerId(self.producer_id),
            producer_epoch: ProducerEpoch(self.epoch),
            base_sequence: Sequence(*seq),
            transactional: true,
            ..BatchOptions::default()
        });
        for v in values {
            b.append(Some(Timestamp::now()), None, Some(v.as_bytes()), &[]);
        }
        *seq += values.len() as i32;
        b.build()
    }
}

/// Sends one produce request to the partition's leader; returns its error code.
async fn produce(cluster: &Cluster, topic: &str, partition: u32, batch: Bytes) -> ErrorCode {
    let leader = cluster.wait_for_leader(topic, partition, SETTLE).await;
    let conn = connect(&cluster.node(leader).bootstrap()).await;
    let r = conn
        .send(
            ProduceRequest {
                acks: -1,
                timeout_ms: 10_000,
                topics: vec![ProduceTopic {
                    name: topic.to_string(),
                    partitions: vec![ProducePartition {
                        partition,
                        records: batch,
                    }],
                }],
            },
            T,
        )
        .await
        .expect("produce");
    code(r.topics[0].partitions[0].error_code)
}

/// What a fetch from `offset` with `isolation_level` returns: the data records' values (control
/// batches skipped, and with read_committed the aborted transactions' records dropped as a
/// client must), the last stable offset and the high watermark.
struct Fetched {
    values: Vec<String>,
    lso: u64,
    hw: u64,
    aborted: usize,
}

async fn fetch(cluster: &Cluster, topic: &str, partition: u32, level: i32) -> Fetched {
    try_fetch(cluster, topic, partition, level)
        .await
        .unwrap_or_else(|e| panic!("fetch {topic}-{partition}: {e}"))
}

async fn try_fetch(
    cluster: &Cluster,
    topic: &str,
    partition: u32,
    level: i32,
) -> Result<Fetched, String> {
    let leader = cluster.wait_for_leader(topic, partition, SETTLE).await;
    let conn = Connection::connect(
        &cluster.node(leader).bootstrap(),
        &ConnectionConfig::default(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut values = Vec::new();
    let mut offset = 0;
    let mut aborted_total = 0;
    loop {
        let r = conn
            .send(
                FetchRequest {
                    max_wait_ms: 0,
                    min_bytes: 0,
                    max_bytes: 8 << 20,
                    isolation_level: level,
                    topics: vec![FetchTopic {
                        name: topic.to_string(),
                        partitions: vec![FetchPartition {
                            partition,
                            fetch_offset: offset,
                            partition_max_bytes: 8 << 20,
                        }],
                    }],
                },
                T,
            )
            .await
            .map_err(|e| e.to_string())?;
        let p = r.topics[0].partitions[0].clone();
        if !code(p.error_code).is_ok() {
            return Err(format!("{}: {}", code(p.error_code), p.error_message));
        }
        aborted_total += p.aborted_transactions.len();
        // Aborted producer ids from their first offset until their ABORT marker.
        let mut aborted: Vec<(i64, u64)> = p
            .aborted_transactions
            .iter()
            .map(|a| (a.producer_id, a.first_offset))
            .collect();
        let mut open_aborts: Vec<i64> = Vec::new();
        let mut next = offset;
        for batch in BatchIter::new(p.records.clone()) {
            let batch = batch.expect("batch");
            let h = *batch.header();
            next = h.base_offset.0 + h.last_offset_delta as u64 + 1;
            aborted.retain(|(pid, first)| {
                if *first <= h.base_offset.0 {
                    open_aborts.push(*pid);
                    false
                } else {
                    true
                }
            });
            if h.attributes.is_control() {
                open_aborts.retain(|pid| *pid != h.producer_id.0);
                continue;
            }
            if h.attributes.is_transactional() && open_aborts.contains(&h.producer_id.0) {
                continue;
            }
            for rec in batch.records() {
                let rec = rec.expect("record");
                values.push(String::from_utf8_lossy(&rec.value.unwrap_or_default()).into_owned());
            }
        }
        let bound = if level == isolation::READ_COMMITTED {
            p.last_stable_offset
        } else {
            p.high_watermark
        };
        if next >= bound || p.records.is_empty() {
            return Ok(Fetched {
                values,
                lso: p.last_stable_offset,
                hw: p.high_watermark,
                aborted: aborted_total,
            });
        }
        offset = next;
    }
}

/// ListOffsets "latest" for `isolation_level`.
async fn latest(cluster: &Cluster, topic: &str, partition: u32, level: i32) -> u64 {
    let leader = cluster.wait_for_leader(topic, partition, SETTLE).await;
    let conn = connect(&cluster.node(leader).bootstrap()).await;
    let r = conn
        .send(
            ListOffsetsRequest {
                topics: vec![ListOffsetsTopic {
                    name: topic.to_string(),
                    partitions: vec![ListOffsetsPartition {
                        partition,
                        timestamp_ms: rafka_protocol::api::list_offsets::LATEST,
                    }],
                }],
                isolation_level: level,
            },
            T,
        )
        .await
        .expect("list offsets");
    let p = &r.topics[0].partitions[0];
    assert_eq!(code(p.error_code), ErrorCode::None, "{}", p.error_message);
    p.offset
}

fn values(prefix: &str, partition: u32, n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("{prefix}-p{partition}-{i}"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_and_aborts_across_partitions_are_all_or_nothing_for_read_committed() {
    let _lock = exclusive().await;
    let _ = seed("txn_commit_abort");
    let cluster = Cluster::start(3).await;
    cluster.create_topic("tx", 3).await;
    let mut p = TxnProducer::init(&cluster, "tx-a", 60_000).await;
    let parts = [0u32, 1, 2];

    // Transaction 1: open, so read_committed sees nothing of it yet.
    p.begin("tx", &parts).await;
    for &i in &parts {
        let b = p.batch("tx", i, &values("c1", i, 5));
        assert_eq!(produce(&cluster, "tx", i, b).await, ErrorCode::None);
    }
    for &i in &parts {
        let rc = fetch(&cluster, "tx", i, isolation::READ_COMMITTED).await;
        assert!(
            rc.values.is_empty(),
            "open transaction visible: {:?}",
            rc.values
        );
        assert!(rc.lso < rc.hw, "the LSO passed an open transaction");
        let ru = fetch(&cluster, "tx", i, isolation::READ_UNCOMMITTED).await;
        assert_eq!(ru.values, values("c1", i, 5));
        // "Latest" for a read_committed reader is the LSO, not the high watermark.
        assert_eq!(
            latest(&cluster, "tx", i, isolation::READ_COMMITTED).await,
            rc.lso
        );
        assert_eq!(
            latest(&cluster, "tx", i, isolation::READ_UNCOMMITTED).await,
            ru.hw
        );
    }
    let epoch_before = p.epoch;
    assert_eq!(p.end(true).await, ErrorCode::None);
    assert_eq!(p.epoch, epoch_before + 1, "EndTxn bumps the epoch");

    // Transaction 2: aborted.
    p.begin("tx", &parts).await;
    for &i in &parts {
        let b = p.batch("tx", i, &values("a2", i, 3));
        assert_eq!(produce(&cluster, "tx", i, b).await, ErrorCode::None);
    }
    assert_eq!(p.end(false).await, ErrorCode::None);

    // Transaction 3: committed, on two partitions only.
    p.begin("tx", &[0, 2]).await;
    for i in [0u32, 2] {
        let b = p.batch("tx", i, &values("c3", i, 2));
        assert_eq!(produce(&cluster, "tx", i, b).await, ErrorCode::None);
    }
    assert_eq!(p.end(true).await, ErrorCode::None);

    for &i in &parts {
        let rc = fetch(&cluster, "tx", i, isolation::READ_COMMITTED).await;
        let mut expected = values("c1", i, 5);
        if i != 1 {
            expected.extend(values("c3", i, 2));
        }
        assert_eq!(rc.values, expected, "partition {i}, read_committed");
        assert_eq!(rc.lso, rc.hw, "nothing is open any more");
        assert_eq!(rc.aborted, 1, "the aborted transaction is listed");
        let ru = fetch(&cluster, "tx", i, isolation::READ_UNCOMMITTED).await;
        assert_eq!(
            ru.values.len(),
            expected.len() + 3,
            "read_uncommitted sees all"
        );
    }
    // A batch of the ended transaction's epoch is refused now.
    let stale = {
        let mut old = TxnProducer {
            id: p.id.clone(),
            coordinator: connect(&cluster.bootstrap_of(&cluster.up_ids()[..1])).await,
            producer_id: p.producer_id,
            epoch: p.epoch - 1,
            sequences: BTreeMap::new(),
        };
        old.batch("tx", 0, &["late".to_string()])
    };
    assert_eq!(
        produce(&cluster, "tx", 0, stale).await,
        ErrorCode::InvalidProducerEpoch
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_can_neither_write_nor_end_after_a_new_instance_initialised() {
    let _lock = exclusive().await;
    let _ = seed("txn_zombie");
    let cluster = Cluster::start(3).await;
    cluster.create_topic("zt", 2).await;
    let mut zombie = TxnProducer::init(&cluster, "zt-app", 60_000).await;
    zombie.begin("zt", &[0, 1]).await;
    for i in 0..2 {
        let b = zombie.batch("zt", i, &values("zombie", i, 4));
        assert_eq!(produce(&cluster, "zt", i, b).await, ErrorCode::None);
    }
    // The new instance fences the zombie; its open transaction is aborted.
    let mut fresh = TxnProducer::init(&cluster, "zt-app", 60_000).await;
    assert_eq!(fresh.producer_id, zombie.producer_id);
    assert!(fresh.epoch > zombie.epoch + 1, "fenced by a newer epoch");
    let b = zombie.batch("zt", 0, &values("zombie-late", 0, 1));
    assert_eq!(
        produce(&cluster, "zt", 0, b).await,
        ErrorCode::InvalidProducerEpoch
    );
    assert_eq!(
        zombie.add_partitions("zt", &[1]).await,
        ErrorCode::InvalidProducerEpoch
    );
    assert_eq!(zombie.end(true).await, ErrorCode::InvalidProducerEpoch);
    // The new instance works, and only its records are committed.
    fresh.begin("zt", &[0]).await;
    let b = fresh.batch("zt", 0, &values("fresh", 0, 2));
    assert_eq!(produce(&cluster, "zt", 0, b).await, ErrorCode::None);
    assert_eq!(fresh.end(true).await, ErrorCode::None);
    let rc = fetch(&cluster, "zt", 0, isolation::READ_COMMITTED).await;
    assert_eq!(rc.values, values("fresh", 0, 2));
    let rc = fetch(&cluster, "zt", 1, isolation::READ_COMMITTED).await;
    assert!(rc.values.is_empty(), "{:?}", rc.values);
    assert_eq!(rc.lso, rc.hw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_end_txn_is_refused_and_decides_nothing_later() {
    let _lock = exclusive().await;
    let _ = seed("txn_stale_end");
    let cluster = Cluster::start(3).await;
    cluster.create_topic("st", 1).await;
    let mut p = TxnProducer::init(&cluster, "st-app", 60_000).await;
    let addr = coordinator_addr(&cluster, "st-app").await;
    let proxy = HoldProxy::start(addr).await;
    let delayed = connect(&proxy.addr.to_string()).await;

    // Transaction 1: its EndTxn(commit) is held in the proxy...
    p.begin("st", &[0]).await;
    let b = p.batch("st", 0, &values("t1", 0, 2));
    assert_eq!(produce(&cluster, "st", 0, b).await, ErrorCode::None);
    proxy.hold();
    let stale_request = p.end_request(true);
    let stale =
        tokio::spawn(async move { delayed.send(stale_request, Duration::from_secs(60)).await });
    // ...so the producer retries it another way, and it commits.
    assert_eq!(p.end(true).await, ErrorCode::None);

    // Transaction 2 begins and writes; then the first EndTxn arrives at last.
    p.begin("st", &[0]).await;
    let b = p.batch("st", 0, &values("t2", 0, 2));
    assert_eq!(produce(&cluster, "st", 0, b).await, ErrorCode::None);
    proxy.release();
    let answer = stale
        .await
        .expect("join")
        .expect("the delayed EndTxn is answered");
    assert_eq!(
        code(answer.error_code),
        ErrorCode::InvalidProducerEpoch,
        "a stale EndTxn must be refused: {answer:?}"
    );
    // Transaction 2 is still open: not committed by the stale request.
    let rc = fetch(&cluster, "st", 0, isolation::READ_COMMITTED).await;
    assert_eq!(rc.values, values("t1", 0, 2));
    assert!(rc.lso < rc.hw, "transaction 2 must still be open");
    // It ends as its producer decides.
    assert_eq!(p.end(false).await, ErrorCode::None);
    let rc = fetch(&cluster, "st", 0, isolation::READ_COMMITTED).await;
    assert_eq!(rc.values, values("t1", 0, 2));
    assert_eq!(rc.lso, rc.hw);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_end_whole_when_the_coordinator_and_a_leader_are_killed() {
    let _lock = exclusive().await;
    let seed = seed("txn_kill") as u32;
    let mut cluster = Cluster::start(3).await;
    cluster.create_topic("kt", 3).await;
    const TIMEOUT_MS: u32 = 4_000;
    // A committed transaction, then one left open when its coordinator dies.
    let mut done = TxnProducer::init(&cluster, "kt-done", TIMEOUT_MS).await;
    done.begin("kt", &[0, 1, 2]).await;
    for i in 0..3 {
        let b = done.batch("kt", i, &values("done", i, 3));
        assert_eq!(produce(&cluster, "kt", i, b).await, ErrorCode::None);
    }
    assert_eq!(done.end(true).await, ErrorCode::None);

    let mut open = TxnProducer::init(&cluster, "kt-open", TIMEOUT_MS).await;
    open.begin("kt", &[0, 1, 2]).await;
    for i in 0..3 {
        let b = open.batch("kt", i, &values("open", i, 3));
        assert_eq!(produce(&cluster, "kt", i, b).await, ErrorCode::None);
    }
    let started = Instant::now();
    let coordinator = coordinator_addr(&cluster, "kt-open").await;
    let victim = cluster
        .ids()
        .into_iter()
        .find(|id| cluster.node(*id).bootstrap() == coordinator)
        .expect("the coordinator is a node");
    cluster.kill(victim);
    // Whoever coordinates now aborts the open transaction once its timeout passes.
    for i in 0..3 {
        let rc = wait_until(SETTLE, "the open transaction's end", async || {
            let f = try_fetch(&cluster, "kt", i, isolation::READ_COMMITTED).await?;
            if f.lso == f.hw {
                Ok(f)
            } else {
                Err(format!("lso {} hw {}", f.lso, f.hw))
            }
        })
        .await;
        assert_eq!(rc.values, values("done", i, 3), "partition {i}");
    }
    let took = started.elapsed();
    eprintln!(
        "open transaction aborted {} ms after its coordinator's broker was killed",
        took.as_millis()
    );
    assert!(
        took < Duration::from_millis(u64::from(TIMEOUT_MS)) + Duration::from_secs(30),
        "the open transaction outlived its timeout by far: {took:?}"
    );
    cluster.restart(victim).await;

    // A decided transaction whose markers are being written when a partition leader dies:
    // it still commits whole.
    let mut decided = TxnProducer::init(&cluster, "kt-decided", 60_000).await;
    decided.begin("kt", &[0, 1, 2]).await;
    for i in 0..3 {
        let b = decided.batch("kt", i, &values("decided", i, 3));
        assert_eq!(produce(&cluster, "kt", i, b).await, ErrorCode::None);
    }
    // A partition leader that does not also coordinate the transaction (the EndTxn must reach
    // a live coordinator for the outcome to be a commit).
    let coordinator = coordinator_addr(&cluster, "kt-decided").await;
    let mut leaders = Vec::new();
    for i in 0..3 {
        leaders.push(cluster.wait_for_leader("kt", i, SETTLE).await);
    }
    let others: Vec<i32> = cluster
        .ids()
        .into_iter()
        .filter(|id| cluster.node(*id).bootstrap() != coordinator)
        .collect();
    let candidates: Vec<i32> = leaders
        .iter()
        .copied()
        .filter(|l| others.contains(l))
        .collect();
    let pool = if candidates.is_empty() {
        &others
    } else {
        &candidates
    };
    let leader = pool[seed as usize % pool.len()];
    let request = decided.end_request(true);
    let conn = connect(&coordinator).await;
    let ending = tokio::spawn(async move { conn.send(request, Duration::from_secs(60)).await });
    cluster.kill(leader);
    // The answer may be lost with the broker; the outcome must not be.
    let answer = ending.await.expect("join");
    eprintln!("EndTxn during the kill: {answer:?}");
    for i in 0..3 {
        let rc = wait_until(SETTLE, "the decided transaction's markers", async || {
            let f = try_fetch(&cluster, "kt", i, isolation::READ_COMMITTED).await?;
            if f.lso == f.hw && f.values.len() == 6 {
                Ok(f)
            } else {
                Err(format!("lso {} hw {} values {:?}", f.lso, f.hw, f.values))
            }
        })
        .await;
        let mut expected = values("done", i, 3);
        expected.extend(values("decided", i, 3));
        assert_eq!(rc.values, expected, "partition {i} (seed {seed})");
    }
    cluster.restart(leader).await;

    // The aborted producer is fenced; a new instance commits normally.
    open.coordinator = connect(&coordinator_addr(&cluster, "kt-open").await).await;
    assert_eq!(open.end(true).await, ErrorCode::InvalidProducerEpoch);
    let mut again = TxnProducer::init(&cluster, "kt-open", TIMEOUT_MS).await;
    again.begin("kt", &[1]).await;
    let b = again.batch("kt", 1, &values("again", 1, 1));
    assert_eq!(produce(&cluster, "kt", 1, b).await, ErrorCode::None);
    assert_eq!(again.end(true).await, ErrorCode::None);
    let rc = fetch(&cluster, "kt", 1, isolation::READ_COMMITTED).await;
    let mut expected = values("done", 1, 3);
    expected.extend(values("decided", 1, 3));
    expected.extend(values("again", 1, 1));
    assert_eq!(rc.values, expected);
}

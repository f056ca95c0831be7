//! The transactional producer against a scripted in-process broker that plays both the
//! transaction coordinator and the partition leader, and checks what a real one would:
//! partitions added before their batches come, the transactional bit, the producer epoch (a
//! new one after every EndTxn, KIP-890 style) and per-partition sequences starting at 0 under
//! each epoch. Records and offsets become "committed" only when EndTxn commits.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures::{SinkExt, StreamExt};
use rafka_client::protocol::frame;
use rafka_client::protocol::messages::*;
use rafka_client::protocol::{ApiKey, BatchIter, ErrorCode, Offset};
use rafka_client::{
    ClientError, ConsumerGroupMetadata, Producer, ProducerConfig, ProducerRecord, TopicPartition,
    TransactionState, TxnErrorKind,
};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

const PRODUCER_ID: i64 = 7;

/// What the broker is scripted to do besides behaving.
#[derive(Default)]
struct Script {
    /// Answer this many AddPartitionsToTxn requests with CONCURRENT_TRANSACTIONS first.
    concurrent_adds: u32,
    /// Apply this many EndTxn requests but never answer them (a lost response).
    silent_end_txns: u32,
    /// Refuse every batch of this partition (CORRUPT_MESSAGE).
    reject_partition: Option<u32>,
}

#[derive(Default)]
struct State {
    script: Script,
    /// The current epoch of the transactional id (`None` before the first InitProducerId).
    epoch: Option<i32>,
    /// The last transaction ended: its epoch and whether it committed (a repeat is answered).
    last_end: Option<(i32, bool)>,
    added: BTreeSet<u32>,
    groups_added: BTreeSet<String>,
    next_sequence: HashMap<u32, i32>,
    pending: BTreeMap<u32, Vec<String>>,
    pending_offsets: BTreeMap<(String, String, u32), u64>,
    committed: BTreeMap<u32, Vec<String>>,
    committed_offsets: BTreeMap<(String, String, u32), u64>,
    /// Records stored per partition (committed, aborted or pending): the next offset.
    log_end: HashMap<u32, u64>,
    /// Every request, in order: API name and, for transaction APIs, the epoch it carried.
    calls: Vec<(String, i32)>,
    transactions_ended: Vec<bool>,
}

impl State {
    fn current(&self, epoch: i32) -> bool {
        self.epoch == Some(epoch)
    }

    /// EndTxn: completes the transaction and bumps the epoch.
    fn end(&mut self, commit: bool) {
        let Some(epoch) = self.epoch else { return };
        if commit {
            for (p, values) in std::mem::take(&mut self.pending) {
                self.committed.entry(p).or_default().extend(values);
            }
            let offsets = std::mem::take(&mut self.pending_offsets);
            self.committed_offsets.extend(offsets);
        }
        self.clear_transaction();
        self.last_end = Some((epoch, commit));
        self.epoch = Some(epoch + 1);
        self.transactions_ended.push(commit);
    }

    fn clear_transaction(&mut self) {
        self.pending.clear();
        self.pending_offsets.clear();
        self.added.clear();
        self.groups_added.clear();
        self.next_sequence.clear();
    }
}

type Shared = Arc<Mutex<State>>;

async fn fake_broker(script: Script) -> (String, Shared) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State {
        script,
        ..State::default()
    }));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let st = st.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(sock, frame::codec(frame::FRAME_BYTES_MAX_DEFAULT));
                while let Some(Ok(f)) = framed.next().await {
                    let (h, body) = frame::decode_request_header(f.freeze()).unwrap();
                    let rh = ResponseHeader {
                        correlation_id: h.correlation_id,
                        error_code: 0,
                        error_message: String::new(),
                    };
                    let api = ApiKey::from_u32(h.api_key).unwrap();
                    if let Some(reply) = answer(api, body, &rh, addr, &st) {
                        framed.send(reply).await.unwrap();
                    }
                }
            });
        }
    });
    (addr.to_string(), state)
}

fn error(code: ErrorCode) -> i32 {
    code.code()
}

/// Answers one request (`None`: no answer at all).
fn answer(
    api: ApiKey,
    body: bytes::Bytes,
    rh: &ResponseHeader,
    addr: SocketAddr,
    st: &Shared,
) -> Option<bytes::Bytes> {
    let mut s = st.lock().unwrap();
    macro_rules! reply {
        ($resp:expr) => {
            Some(frame::encode_response(rh, Some(&$resp)))
        };
    }
    match api {
        ApiKey::Metadata => reply!(MetadataResponse {
            brokers: vec![BrokerInfo {
                node_id: 1,
                host: addr.ip().to_string(),
                port: u32::from(addr.port()),
            }],
            controller_id: 1,
            cluster_id: "fake".into(),
            topics: vec![TopicMetadata {
                name: "t".into(),
                error_code: 0,
                partitions: (0..2)
                    .map(|p| PartitionMetadata {
                        partition: p,
                        leader_id: 1,
                        replicas: vec![1],
                        in_sync_replicas: vec![1],
                        ..Default::default()
                    })
                    .collect(),
            }],
        }),
        ApiKey::FindCoordinator => {
            let req: FindCoordinatorRequest = frame::decode_body(body).unwrap();
            s.calls.push(("find_coordinator".into(), req.key_type));
            reply!(FindCoordinatorResponse {
                node_id: 1,
                host: addr.ip().to_string(),
                port: u32::from(addr.port()),
                ..Default::default()
            })
        }
        ApiKey::InitProducerId => {
            let req: InitProducerIdRequest = frame::decode_body(body).unwrap();
            assert_eq!(req.transactional_id, "tx", "a transactional InitProducerId");
            assert_eq!(req.transaction_timeout_ms, 60_000);
            // A new instance: the open transaction (if any) is aborted, the epoch bumped.
            let epoch = match s.epoch {
                None => 0,
                Some(e) => {
                    s.clear_transaction();
                    s.last_end = None;
                    e + 1
                }
            };
            s.epoch = Some(epoch);
            s.calls.push(("init_producer_id".into(), epoch));
            reply!(InitProducerIdResponse {
                producer_id: PRODUCER_ID,
                producer_epoch: epoch,
                ..Default::default()
            })
        }
        ApiKey::AddPartitionsToTxn => {
            let req: AddPartitionsToTxnRequest = frame::decode_body(body).unwrap();
            s.calls
                .push(("add_partitions_to_txn".into(), req.producer_epoch));
            let code = if !s.current(req.producer_epoch) || req.producer_id != PRODUCER_ID {
                error(ErrorCode::InvalidProducerEpoch)
            } else if s.script.concurrent_adds > 0 {
                s.script.concurrent_adds -= 1;
                error(ErrorCode::ConcurrentTransactions)
            } else {
                for t in &req.partitions {
                    assert_eq!(t.topic, "t");
                    s.added.extend(t.partitions.iter().copied());
                }
                0
            };
            reply!(AddPartitionsToTxnResponse {
                error_code: code,
                ..Default::default()
            })
        }
        ApiKey::Produce => {
            let req: ProduceRequest = frame::decode_body(body).unwrap();
            s.calls.push(("produce".into(), -1));
            let mut results = Vec::new();
            for t in &req.topics {
                for p in &t.partitions {
                    results.push(produce(&mut s, p));
                }
            }
            reply!(ProduceResponse {
                topics: vec![ProduceTopicResult {
                    name: "t".into(),
                    partitions: results,
                }],
            })
        }
        ApiKey::AddOffsetsToTxn => {
            let req: AddOffsetsToTxnRequest = frame::decode_body(body).unwrap();
            s.calls
                .push(("add_offsets_to_txn".into(), req.producer_epoch));
            let code = if s.current(req.producer_epoch) {
                s.groups_added.insert(req.group_id);
                0
            } else {
                error(ErrorCode::InvalidProducerEpoch)
            };
            reply!(AddOffsetsToTxnResponse {
                error_code: code,
                ..Default::default()
            })
        }
        ApiKey::TxnOffsetCommit => {
            let req: TxnOffsetCommitRequest = frame::decode_body(body).unwrap();
            s.calls
                .push(("txn_offset_commit".into(), req.producer_epoch));
            let code = if !s.current(req.producer_epoch) {
                error(ErrorCode::InvalidProducerEpoch)
            } else if !s.groups_added.contains(&req.group_id) {
                error(ErrorCode::InvalidTxnState)
            } else {
                for t in &req.topics {
                    for p in &t.partitions {
                        s.pending_offsets.insert(
                            (req.group_id.clone(), t.name.clone(), p.partition),
                            p.offset,
                        );
                    }
                }
                0
            };
            reply!(TxnOffsetCommitResponse {
                error_code: code,
                ..Default::default()
            })
        }
        ApiKey::EndTxn => {
            let req: EndTxnRequest = frame::decode_body(body).unwrap();
            s.calls.push((
                if req.commit { "commit" } else { "abort" }.into(),
                req.producer_epoch,
            ));
            let code = if s.current(req.producer_epoch) {
                s.end(req.commit);
                0
            } else if s.last_end == Some((req.producer_epoch, req.commit)) {
                0 // a repeat of the EndTxn that ended the last transaction
            } else {
                error(ErrorCode::InvalidProducerEpoch)
            };
            if code == 0 && s.script.silent_end_txns > 0 {
                s.script.silent_end_txns -= 1;
                return None;
            }
            reply!(EndTxnResponse {
                error_code: code,
                producer_id: PRODUCER_ID,
                producer_epoch: s.epoch.unwrap_or(-1),
                ..Default::default()
            })
        }
        other => panic!("unexpected {other:?}"),
    }
}

/// Checks and stores one partition's batches as a partition leader would.
fn produce(s: &mut State, p: &ProducePartition) -> ProducePartitionResult {
    let mut result = ProducePartitionResult {
        partition: p.partition,
        leader_hint: -1,
        base_offset: s.log_end.get(&p.partition).copied().unwrap_or(0),
        ..Default::default()
    };
    if s.script.reject_partition == Some(p.partition) {
        result.error_code = error(ErrorCode::CorruptMessage);
        return result;
    }
    for batch in BatchIter::new(p.records.clone()) {
        let batch = batch.unwrap();
        let h = *batch.header();
        assert!(h.attributes.is_transactional(), "the transactional bit");
        assert_eq!(h.producer_id.0, PRODUCER_ID);
        if !s.current(i32::from(h.producer_epoch.0)) {
            result.error_code = error(ErrorCode::InvalidProducerEpoch);
            return result;
        }
        if !s.added.contains(&p.partition) {
            result.error_code = error(ErrorCode::InvalidTxnState);
            return result;
        }
        let expected = s.next_sequence.entry(p.partition).or_insert(0);
        assert_eq!(
            h.base_sequence.0, *expected,
            "sequences restart at 0 under each epoch"
        );
        *expected += h.record_count;
        for r in batch.records() {
            let value = r.unwrap().value.unwrap();
            s.pending
                .entry(p.partition)
                .or_default()
                .push(String::from_utf8(value.to_vec()).unwrap());
        }
        *s.log_end.entry(p.partition).or_insert(0) += h.record_count as u64;
    }
    result
}

fn config(bootstrap: String) -> ProducerConfig {
    ProducerConfig {
        bootstrap,
        transactional_id: Some("tx".into()),
        retry_backoff_ms: 10,
        linger_ms: 1,
        request_timeout_ms: 1_000,
        delivery_timeout_ms: 5_000,
        ..ProducerConfig::default()
    }
}

fn kind(e: &ClientError) -> TxnErrorKind {
    match e {
        ClientError::Transaction { kind, .. } => *kind,
        other => panic!("not a transaction error: {other}"),
    }
}

async fn send(producer: &Producer, partition: u32, value: &str) -> rafka_client::DeliveryFuture {
    producer
        .send(ProducerRecord::new("t", value.to_owned()).with_partition(partition))
        .await
        .unwrap()
}

fn calls(st: &Shared, name: &str) -> Vec<i32> {
    st.lock()
        .unwrap()
        .calls
        .iter()
        .filter(|(n, _)| n == name)
        .map(|(_, e)| *e)
        .collect()
}

#[tokio::test]
async fn transactions_commit_and_each_one_runs_under_the_next_epoch_from_sequence_zero() {
    let (addr, st) = fake_broker(Script {
        concurrent_adds: 2,
        ..Script::default()
    })
    .await;
    let producer = Producer::new(config(addr)).unwrap();
    assert_eq!(
        producer.transaction_state(),
        Some(TransactionState::Uninitialized)
    );
    producer.init_transactions().await.unwrap();
    for round in 0..3 {
        producer.begin_transaction().await.unwrap();
        let mut deliveries = Vec::new();
        for i in 0..5 {
            deliveries.push(send(&producer, i % 2, &format!("r{round}-{i}")).await);
        }
        producer.commit_transaction().await.unwrap();
        assert_eq!(producer.transaction_state(), Some(TransactionState::Ready));
        for d in deliveries {
            d.await.expect("acknowledged before the commit");
        }
    }
    let s = st.lock().unwrap();
    let p0: Vec<&str> = s.committed[&0].iter().map(String::as_str).collect();
    assert_eq!(
        p0,
        ["r0-0", "r0-2", "r0-4", "r1-0", "r1-2", "r1-4", "r2-0", "r2-2", "r2-4"]
    );
    assert_eq!(s.committed[&1].len(), 6);
    assert_eq!(s.transactions_ended, vec![true, true, true]);
    // The coordinator was found as a transaction coordinator; each EndTxn went with the epoch
    // the previous one handed out.
    drop(s);
    assert!(calls(&st, "find_coordinator").iter().all(|&t| t == 1));
    assert_eq!(calls(&st, "commit"), vec![0, 1, 2]);
    // CONCURRENT_TRANSACTIONS was retried (twice), then the partitions were added.
    let adds = calls(&st, "add_partitions_to_txn");
    assert!(adds.iter().filter(|&&e| e == 0).count() >= 3, "{adds:?}");
    assert!(adds.contains(&1) && adds.contains(&2), "{adds:?}");
}

#[tokio::test]
async fn sends_need_an_open_transaction_and_an_abort_discards_it() {
    let (addr, st) = fake_broker(Script::default()).await;
    let producer = Producer::new(config(addr)).unwrap();
    let e = producer
        .send(ProducerRecord::new("t", "x"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
    assert!(producer.begin_transaction().await.is_err(), "init first");
    producer.init_transactions().await.unwrap();
    let e = producer
        .send(ProducerRecord::new("t", "x"))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("begin_transaction"), "{e}");
    assert!(producer.commit_transaction().await.is_err());

    producer.begin_transaction().await.unwrap();
    let d = send(&producer, 0, "aborted").await;
    producer.flush().await;
    d.await.unwrap();
    // Queued but never sent: failed by the abort.
    let queued = producer
        .send(
            ProducerRecord::new("t", vec![0u8; 10])
                .with_partition(1)
                .with_key("k"),
        )
        .await
        .unwrap();
    producer.abort_transaction().await.unwrap();
    if let Err(e) = queued.await {
        assert_eq!(kind(&e), TxnErrorKind::Abortable);
    }
    producer.begin_transaction().await.unwrap();
    let d0 = send(&producer, 0, "committed").await;
    producer.commit_transaction().await.unwrap();
    d0.await.unwrap();
    let s = st.lock().unwrap();
    assert_eq!(s.committed[&0], vec!["committed".to_owned()]);
    assert_eq!(s.transactions_ended, vec![false, true]);
}

#[tokio::test]
async fn an_empty_transaction_commits() {
    let (addr, st) = fake_broker(Script::default()).await;
    let producer = Producer::new(config(addr)).unwrap();
    producer.init_transactions().await.unwrap();
    producer.begin_transaction().await.unwrap();
    producer.commit_transaction().await.unwrap();
    producer.begin_transaction().await.unwrap();
    producer.abort_transaction().await.unwrap();
    assert_eq!(calls(&st, "commit"), vec![0]);
    assert_eq!(calls(&st, "abort"), vec![1]);
    assert!(calls(&st, "add_partitions_to_txn").is_empty());
}

#[tokio::test]
async fn a_lost_end_txn_answer_is_retried_with_the_same_epoch() {
    let (addr, st) = fake_broker(Script {
        silent_end_txns: 1,
        ..Script::default()
    })
    .await;
    let producer = Producer::new(ProducerConfig {
        request_timeout_ms: 200,
        ..config(addr)
    })
    .unwrap();
    producer.init_transactions().await.unwrap();
    producer.begin_transaction().await.unwrap();
    let d1 = send(&producer, 0, "once").await;
    producer.commit_transaction().await.unwrap();
    d1.await.unwrap();
    // Applied once, asked twice with epoch 0; the next transaction runs under epoch 1.
    assert_eq!(calls(&st, "commit"), vec![0, 0]);
    producer.begin_transaction().await.unwrap();
    let d2 = send(&producer, 0, "twice").await;
    producer.commit_transaction().await.unwrap();
    d2.await.unwrap();
    assert_eq!(calls(&st, "commit"), vec![0, 0, 1]);
    let s = st.lock().unwrap();
    assert_eq!(s.committed[&0], vec!["once".to_owned(), "twice".to_owned()]);
}

#[tokio::test]
async fn a_new_instance_fences_the_old_one_for_good() {
    let (addr, st) = fake_broker(Script::default()).await;
    let old = Producer::new(config(addr.clone())).unwrap();
    old.init_transactions().await.unwrap();
    old.begin_transaction().await.unwrap();
    let early = send(&old, 0, "early").await;
    old.flush().await;
    early
        .await
        .expect("stored, in a transaction the next instance will abort");

    let new = Producer::new(config(addr)).unwrap();
    new.init_transactions().await.unwrap();

    let late = send(&old, 0, "late").await;
    let e = old.commit_transaction().await.unwrap_err();
    assert_eq!(kind(&e), TxnErrorKind::Fenced, "{e}");
    assert!(e.is_fenced() && !e.is_retriable());
    assert!(late.await.unwrap_err().is_fenced());
    assert_eq!(old.transaction_state(), Some(TransactionState::Fatal));
    for e in [
        old.begin_transaction().await.unwrap_err(),
        old.abort_transaction().await.unwrap_err(),
        old.send(ProducerRecord::new("t", "x")).await.err().unwrap(),
    ] {
        assert_eq!(kind(&e), TxnErrorKind::Fenced, "{e}");
    }

    new.begin_transaction().await.unwrap();
    let d4 = send(&new, 0, "new").await;
    new.commit_transaction().await.unwrap();
    d4.await.unwrap();
    let s = st.lock().unwrap();
    assert_eq!(
        s.committed[&0],
        vec!["new".to_owned()],
        "the old transaction was aborted"
    );
}

#[tokio::test]
async fn offsets_commit_with_the_transaction_only() {
    let (addr, st) = fake_broker(Script::default()).await;
    let producer = Producer::new(config(addr)).unwrap();
    producer.init_transactions().await.unwrap();
    let group = ConsumerGroupMetadata {
        group_id: "g".into(),
        member_id: "m1".into(),
        member_epoch: 3,
    };
    let offsets = |o: u64| [(TopicPartition::new("in", 0), Offset(o))];

    producer.begin_transaction().await.unwrap();
    let d5 = send(&producer, 0, "out-1").await;
    producer
        .send_offsets_to_transaction(offsets(10), &group)
        .await
        .unwrap();
    producer.abort_transaction().await.unwrap();
    let _ = d5.await; // acknowledged or failed by the abort
    assert!(st.lock().unwrap().committed_offsets.is_empty());

    producer.begin_transaction().await.unwrap();
    let d6 = send(&producer, 0, "out-2").await;
    producer
        .send_offsets_to_transaction(offsets(20), &group)
        .await
        .unwrap();
    producer.commit_transaction().await.unwrap();
    d6.await.unwrap();
    let s = st.lock().unwrap();
    assert_eq!(
        s.committed_offsets,
        BTreeMap::from([(("g".into(), "in".into(), 0), 20)])
    );
    let order: Vec<&str> = s
        .calls
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| n.contains("offset"))
        .collect();
    assert_eq!(
        order,
        [
            "add_offsets_to_txn",
            "txn_offset_commit",
            "add_offsets_to_txn",
            "txn_offset_commit"
        ]
    );
}

#[tokio::test]
async fn a_failed_record_fails_the_commit_and_an_abort_recovers() {
    let (addr, st) = fake_broker(Script {
        reject_partition: Some(1),
        ..Script::default()
    })
    .await;
    let producer = Producer::new(config(addr)).unwrap();
    producer.init_transactions().await.unwrap();
    producer.begin_transaction().await.unwrap();
    let good = send(&producer, 0, "good").await;
    let bad = send(&producer, 1, "bad").await;
    let e = producer.commit_transaction().await.unwrap_err();
    assert_eq!(kind(&e), TxnErrorKind::Abortable, "{e}");
    assert_eq!(e.code(), Some(ErrorCode::CorruptMessage));
    assert_eq!(
        producer.transaction_state(),
        Some(TransactionState::AbortableError)
    );
    good.await.unwrap();
    bad.await.unwrap_err();
    // Only an abort goes on from here.
    let again = producer.commit_transaction().await.unwrap_err();
    assert_eq!(kind(&again), TxnErrorKind::Abortable);
    producer.abort_transaction().await.unwrap();
    producer.begin_transaction().await.unwrap();
    let d7 = send(&producer, 0, "next").await;
    producer.commit_transaction().await.unwrap();
    d7.await.unwrap();
    let s = st.lock().unwrap();
    assert_eq!(s.committed[&0], vec!["next".to_owned()]);
    assert_eq!(calls_in(&s, "abort"), 1);
}

fn calls_in(s: &State, name: &str) -> usize {
    s.calls.iter().filter(|(n, _)| n == name).count()
}

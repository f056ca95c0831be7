//! The `txn` workload: transactional producers, each with its own transactional id, write
//! unique values to a few partitions per transaction and commit it, or abort it (decided up
//! front, a quarter of the time); one read_committed consumer per partition polls throughout.
//! After the run every partition is read from offset 0 to its high watermark, first
//! read_uncommitted (the log as it is, aborted records included), then read_committed, which
//! can only get there once every transaction left open has been aborted by its timeout.
//!
//! Each transaction is one operation of the history: invoked before `begin_transaction`, with
//! every value it will send (`"w{worker}-t{n}-{k}"`, per partition in send order), and
//! completed
//! - `ok` when `commit_transaction` succeeded;
//! - `fail` when it certainly did not commit: the worker aborted it (as planned, or because a
//!   record or a partition of it failed, which `commit_transaction` reports as abortable
//!   before it sends EndTxn), whether or not the abort itself got through (nothing can commit
//!   a transaction whose commit was never asked for);
//! - `info` when the commit was asked for and its outcome stayed unknown: still unknown after
//!   [`COMMIT_ATTEMPTS`] calls (calling it again is safe, and finishes it), or the producer was
//!   fenced or failed after asking (a retried EndTxn whose first attempt committed may be
//!   answered so).
//!
//! The completion carries the offsets the broker acknowledged and when the commit was first
//! asked for, which the checker compares with what read_committed reads returned and when.
//!
//! A producer that was fenced, failed, or left a transaction it could not finish is dropped
//! and a new instance with the same transactional id takes its place: its
//! `init_transactions` fences the old one and completes or aborts what it left, so a worker's
//! transactions stay sequential. After an `info` the worker continues as a new history process
//! (history.rs), though with the same worker number: the checker's order checks are per
//! worker.
//!
//! The nemesis aims at the leaders of `__transaction_state` as well as of the workload's
//! topic, so transaction coordinators fail over mid-transaction.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rafka_client::{
    Acks, ClientError, Consumer, ConsumerConfig, IsolationLevel, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition, TxnErrorKind,
};
use rafka_protocol::api::TRANSACTION_STATE_TOPIC;
use rafka_protocol::Offset;
use rand::rngs::StdRng;
use rand::seq::index::sample;
use rand::{Rng, SeedableRng};
use tokio::time::{sleep, timeout, Instant, MissedTickBehavior};

use super::queue::{records, POLL_TIMEOUT, POLL_WAIT};
use super::{Env, Workload};
use crate::jepsen::history::{Payload, TxnIntent, TxnReadValue, TxnValue};
use crate::jepsen::recorder::Recorder;

/// Short, so transactions left open (by a producer dropped mid-transaction, or one cut off
/// from its coordinator) are aborted soon and the final read_committed read does not wait long.
const TRANSACTION_TIMEOUT_MS: u64 = 5_000;
/// Per request.
const REQUEST_TIMEOUT_MS: u64 = 3_000;
/// Longest wait for one record's outcome, retries included; also bounds each transactional
/// call's retries (init, commit, abort).
const DELIVERY_TIMEOUT_MS: u64 = 10_000;
/// Backstop over every client call: past it the call is given up (its future dropped).
const CALL_TIMEOUT: Duration = Duration::from_millis(DELIVERY_TIMEOUT_MS + 5_000);
/// `commit_transaction` calls while its outcome is unknown, before the transaction counts as
/// indeterminate.
pub const COMMIT_ATTEMPTS: usize = 3;
/// `abort_transaction` calls while its outcome is unknown, before the producer is replaced.
const ABORT_ATTEMPTS: usize = 2;
/// Pause before initialising a producer again after a failure.
const INIT_BACKOFF: Duration = Duration::from_millis(250);
/// How long one partition's final read may take, each isolation level (the read_committed one
/// waits for open transactions to time out).
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(90);
/// Partitions of `__transaction_state` when setup could not find out.
const STATE_PARTITIONS_DEFAULT: u32 = 8;

/// The txn workload's shape.
#[derive(Debug, Clone)]
pub struct Txn {
    pub topic: String,
    pub partitions: u32,
    pub producers: u32,
    /// Share of transactions the worker aborts on purpose.
    pub abort_probability: f64,
    /// Partitions one transaction writes to, at least and at most.
    pub partitions_per_txn: (u32, u32),
    /// Records per partition of one transaction, at least and at most.
    pub records_per_partition: (u32, u32),
    /// Partitions of `__transaction_state` (learned in setup), for the nemesis's targets.
    state_partitions: Arc<OnceLock<u32>>,
}

impl Default for Txn {
    fn default() -> Self {
        Txn {
            topic: "jepsen-txn".into(),
            partitions: 5,
            producers: 3,
            abort_probability: 0.25,
            partitions_per_txn: (2, 4),
            records_per_partition: (1, 3),
            state_partitions: Arc::default(),
        }
    }
}

impl Workload for Txn {
    fn name(&self) -> &'static str {
        "txn"
    }

    fn topics(&self) -> Vec<(String, u32)> {
        let state = self
            .state_partitions
            .get()
            .copied()
            .unwrap_or(STATE_PARTITIONS_DEFAULT);
        vec![
            (self.topic.clone(), self.partitions),
            (TRANSACTION_STATE_TOPIC.to_owned(), state),
        ]
    }

    fn setup<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>> {
        async move {
            super::create_topic(&env.bootstrap, &self.topic, self.partitions).await?;
            // The first FindCoordinator for a transaction creates `__transaction_state`; doing
            // it now keeps that out of the run, and lets the nemesis find its leaders.
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let producer = producer(env, "jepsen-txn-setup".into(), "jepsen-txn-setup")
                    .map_err(|e| format!("transactional producer: {e}"))?;
                match timeout(CALL_TIMEOUT, producer.init_transactions()).await {
                    Ok(Ok(())) => break,
                    _ if Instant::now() >= deadline => {
                        return Err("no transaction coordinator within 60 s".into())
                    }
                    _ => sleep(INIT_BACKOFF).await,
                }
            }
            super::wait_settled(
                &env.bootstrap,
                TRANSACTION_STATE_TOPIC,
                Duration::from_secs(60),
            )
            .await?;
            let admin = super::admin(&env.bootstrap)?;
            if let Ok(info) = admin.describe_topic(TRANSACTION_STATE_TOPIC).await {
                let _ = self.state_partitions.set(info.partitions.len() as u32);
            }
            Ok(())
        }
        .boxed()
    }

    fn run<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, ()> {
        async move {
            let mut tasks = Vec::new();
            for worker in 0..self.producers {
                tasks.push(tokio::spawn(produce(self.clone(), env.clone(), worker)));
            }
            for partition in 0..self.partitions {
                tasks.push(tokio::spawn(consume(self.clone(), env.clone(), partition)));
            }
            for t in tasks {
                if let Err(e) = t.await {
                    eprintln!("jepsen: a txn worker died: {e}");
                }
            }
        }
        .boxed()
    }

    fn final_read<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let mut errors = Vec::new();
            // The log first: the read_committed read then has to get at least as far.
            for (isolation, wrap) in [
                (
                    IsolationLevel::ReadUncommitted,
                    Payload::TxnFinalReadUncommitted as fn(TxnReadValue) -> Payload,
                ),
                (IsolationLevel::ReadCommitted, Payload::TxnFinalRead),
            ] {
                for partition in 0..self.partitions {
                    if let Err(e) = read_to_end(&self.topic, env, partition, isolation, wrap).await
                    {
                        errors.push(format!("partition {partition} ({isolation:?}): {e}"));
                    }
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
        .boxed()
    }
}

fn producer(env: &Env, client_id: String, transactional_id: &str) -> Result<Producer, ClientError> {
    Producer::new(ProducerConfig {
        bootstrap: env.bootstrap.clone(),
        client_id,
        acks: Acks::All,
        linger_ms: 0,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        delivery_timeout_ms: DELIVERY_TIMEOUT_MS,
        transactional_id: Some(transactional_id.to_owned()),
        transaction_timeout_ms: TRANSACTION_TIMEOUT_MS,
        ..ProducerConfig::default()
    })
}

fn consumer(
    env: &Env,
    process: i64,
    tp: &TopicPartition,
    isolation_level: IsolationLevel,
) -> Result<Consumer, ClientError> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: env.bootstrap.clone(),
        client_id: format!("jepsen-{process}"),
        fetch_max_wait_ms: 100,
        request_timeout_ms: REQUEST_TIMEOUT_MS,
        initial_position: SeekTo::Offset(Offset(0)),
        isolation_level,
        ..ConsumerConfig::default()
    })?;
    consumer.assign([tp.clone()]);
    Ok(consumer)
}

/// The transactional id of a worker: the same for all its producer instances.
fn transactional_id(worker: u32) -> String {
    format!("jepsen-txn-{worker}")
}

/// A new producer instance for `worker`, initialised (which fences its predecessor and
/// finishes what that one left open).
async fn init(env: &Env, worker: u32, process: i64) -> Result<Producer, String> {
    let id = transactional_id(worker);
    let producer =
        producer(env, format!("jepsen-{process}"), &id).map_err(|e| format!("{id}: {e}"))?;
    match timeout(CALL_TIMEOUT, producer.init_transactions()).await {
        Ok(Ok(())) => Ok(producer),
        Ok(Err(e)) => Err(format!("{id}: init_transactions: {e}")),
        Err(_) => Err(format!(
            "{id}: init_transactions: no answer within {CALL_TIMEOUT:?}"
        )),
    }
}

/// What a transaction will do, drawn before it begins.
fn plan(txn: &Txn, rng: &mut StdRng, worker: u32, n: u64) -> TxnValue {
    let (lo, hi) = txn.partitions_per_txn;
    let count = rng.gen_range(lo..=hi).min(txn.partitions) as usize;
    let mut partitions: Vec<u32> = sample(rng, txn.partitions as usize, count)
        .into_iter()
        .map(|p| p as u32)
        .collect();
    partitions.sort_unstable();
    let mut k = 0;
    let writes = partitions
        .into_iter()
        .map(|p| {
            let (lo, hi) = txn.records_per_partition;
            let values = (0..rng.gen_range(lo..=hi))
                .map(|_| {
                    k += 1;
                    format!("w{worker}-t{n}-{}", k - 1)
                })
                .collect();
            (p, values)
        })
        .collect();
    let intent = if rng.gen_bool(txn.abort_probability) {
        TxnIntent::Abort
    } else {
        TxnIntent::Commit
    };
    TxnValue {
        worker,
        txn: n,
        intent,
        writes,
        acked: Vec::new(),
        commit_ns: None,
    }
}

/// One transactional worker: transactions at its share of the rate until told to stop.
async fn produce(txn: Txn, env: Env, worker: u32) {
    let recorder = &env.recorder;
    let mut rng = StdRng::seed_from_u64(env.seed ^ (0x7a11_0000 + u64::from(worker)));
    let per_worker = (env.rate_per_s / f64::from(txn.producers)).max(0.1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_worker));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut process = recorder.new_process();
    let mut client: Option<Producer> = None;
    let mut n = 0u64;
    let mut init_failures = 0usize;
    loop {
        tick.tick().await;
        if *env.stop.borrow() {
            break;
        }
        let producer = match client.take() {
            Some(p) => p,
            None => match init(&env, worker, process).await {
                Ok(p) => p,
                Err(e) => {
                    init_failures += 1;
                    if init_failures.is_power_of_two() {
                        eprintln!("jepsen: txn worker {worker} ({init_failures} failures): {e}");
                    }
                    sleep(INIT_BACKOFF).await;
                    continue;
                }
            },
        };
        let mut value = plan(&txn, &mut rng, worker, n);
        n += 1;
        recorder.invoke(process, Payload::Txn(value.clone()));
        let ended = transaction(&producer, &txn.topic, &value, recorder).await;
        value.acked = ended.acked;
        value.commit_ns = ended.commit_ns;
        match ended.outcome {
            Outcome::Committed => recorder.ok(process, Payload::Txn(value)),
            Outcome::Aborted(why) => recorder.fail(process, Payload::Txn(value), why),
            Outcome::Unknown(why) => {
                recorder.info(process, Payload::Txn(value), why);
                process = recorder.new_process();
            }
        }
        if ended.keep_producer {
            client = Some(producer);
        }
    }
}

/// How a transaction ended, as far as its worker knows.
enum Outcome {
    Committed,
    /// Certainly not committed, and why.
    Aborted(String),
    /// Maybe committed.
    Unknown(String),
}

/// A transaction's end.
struct Ended {
    outcome: Outcome,
    acked: Vec<(u32, u64, String)>,
    commit_ns: Option<u64>,
    /// Whether the producer can run the next transaction (it finished this one cleanly).
    keep_producer: bool,
}

fn txn_error_kind(e: &ClientError) -> Option<TxnErrorKind> {
    match e {
        ClientError::Transaction { kind, .. } => Some(*kind),
        _ => None,
    }
}

/// Runs one transaction: begin, send every value, wait for each record's outcome, then abort
/// (as planned, or because something failed) or commit.
async fn transaction(
    producer: &Producer,
    topic: &str,
    value: &TxnValue,
    recorder: &Recorder,
) -> Ended {
    let mut ended = Ended {
        outcome: Outcome::Aborted(String::new()),
        acked: Vec::new(),
        commit_ns: None,
        keep_producer: true,
    };
    match timeout(CALL_TIMEOUT, producer.begin_transaction()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            ended.outcome = Outcome::Aborted(format!("begin_transaction: {e}"));
            ended.keep_producer = false;
            return ended;
        }
        Err(_) => {
            ended.outcome = Outcome::Aborted("begin_transaction did not return".into());
            ended.keep_producer = false;
            return ended;
        }
    }
    // Queue every record, then wait for each one's outcome.
    let mut failure: Option<String> = None;
    let mut deliveries = Vec::new();
    'send: for (partition, values) in &value.writes {
        for v in values {
            let record =
                ProducerRecord::new(topic.to_owned(), v.clone()).with_partition(*partition);
            match timeout(CALL_TIMEOUT, producer.send(record)).await {
                Ok(Ok(delivery)) => deliveries.push((*partition, v.clone(), delivery)),
                Ok(Err(e)) => {
                    failure = Some(format!("send {v:?}: {e}"));
                    break 'send;
                }
                Err(_) => {
                    failure = Some(format!("send {v:?} not queued within {CALL_TIMEOUT:?}"));
                    break 'send;
                }
            }
        }
    }
    if failure.is_some() {
        // What was queued fails or finishes once the abort starts.
        ended.keep_producer = abort(producer).await;
    }
    for (partition, v, delivery) in deliveries {
        match timeout(CALL_TIMEOUT, delivery).await {
            Ok(Ok(meta)) => {
                if let Some(offset) = meta.offset {
                    ended.acked.push((partition, offset.0, v));
                }
            }
            Ok(Err(e)) => {
                failure.get_or_insert_with(|| format!("record {v:?}: {e}"));
            }
            Err(_) => {
                failure.get_or_insert_with(|| {
                    format!("record {v:?}: no outcome within {CALL_TIMEOUT:?}")
                });
            }
        }
    }
    if let Some(why) = failure {
        if ended.keep_producer && !producer_aborted(producer) {
            ended.keep_producer = abort(producer).await;
        }
        ended.outcome = Outcome::Aborted(why);
        return ended;
    }
    if value.intent == TxnIntent::Abort {
        ended.keep_producer = abort(producer).await;
        ended.outcome = Outcome::Aborted("aborted as planned".into());
        return ended;
    }
    ended.commit_ns = Some(recorder.now_ns());
    let mut last = String::new();
    for attempt in 1..=COMMIT_ATTEMPTS {
        match timeout(CALL_TIMEOUT, producer.commit_transaction()).await {
            Ok(Ok(())) => {
                ended.outcome = Outcome::Committed;
                return ended;
            }
            // Refused before EndTxn was sent (a record or partition of it failed): abort. Only
            // the first call can say so; a later one follows an EndTxn that may have committed.
            Ok(Err(e)) if attempt == 1 && txn_error_kind(&e) == Some(TxnErrorKind::Abortable) => {
                ended.keep_producer = abort(producer).await;
                ended.outcome = Outcome::Aborted(format!("commit_transaction: {e}"));
                return ended;
            }
            Ok(Err(e)) if txn_error_kind(&e) == Some(TxnErrorKind::OutcomeUnknown) => {
                last = format!("commit_transaction ({attempt} calls): {e}");
            }
            // Fenced, fatal, or anything else after EndTxn may have gone out.
            Ok(Err(e)) => {
                ended.outcome = Outcome::Unknown(format!("commit_transaction: {e}"));
                ended.keep_producer = false;
                return ended;
            }
            Err(_) => {
                ended.outcome = Outcome::Unknown(format!(
                    "commit_transaction: no outcome within {CALL_TIMEOUT:?}"
                ));
                ended.keep_producer = false;
                return ended;
            }
        }
    }
    ended.outcome = Outcome::Unknown(last);
    ended.keep_producer = false;
    ended
}

/// Whether the producer has no transaction open any more (an abort finished).
fn producer_aborted(producer: &Producer) -> bool {
    producer.transaction_state() == Some(rafka_client::TransactionState::Ready)
}

/// Aborts the open transaction; true when it is finished and the producer can go on.
async fn abort(producer: &Producer) -> bool {
    for _ in 0..ABORT_ATTEMPTS {
        match timeout(CALL_TIMEOUT, producer.abort_transaction()).await {
            Ok(Ok(())) => return true,
            Ok(Err(e)) if txn_error_kind(&e) == Some(TxnErrorKind::OutcomeUnknown) => continue,
            _ => return false,
        }
    }
    false
}

/// One read_committed consumer, assigned one partition, polling from offset 0 until told to
/// stop.
async fn consume(txn: Txn, env: Env, partition: u32) {
    let recorder = &env.recorder;
    let tp = TopicPartition::new(txn.topic.clone(), partition);
    let process = recorder.new_process();
    let mut client = match consumer(&env, process, &tp, IsolationLevel::ReadCommitted) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jepsen: consumer for {tp}: {e}");
            return;
        }
    };
    let mut stop = env.stop.clone();
    let mut next = 0u64;
    while !*stop.borrow() {
        let from = client.position(&tp).map(|o| o.0).unwrap_or(next);
        let read = TxnReadValue {
            partition,
            from,
            ..TxnReadValue::default()
        };
        recorder.invoke(process, Payload::TxnPoll(read.clone()));
        let polled = tokio::select! {
            r = timeout(POLL_TIMEOUT, client.poll(POLL_WAIT)) => r,
            _ = stop.changed() => {
                recorder.fail(process, Payload::TxnPoll(read), "run ended");
                return;
            }
        };
        match polled {
            Ok(Ok(batch)) => {
                let to = client.position(&tp).map(|o| o.0);
                if let Some(to) = to {
                    next = to;
                }
                recorder.ok(
                    process,
                    Payload::TxnPoll(TxnReadValue {
                        to,
                        records: records(&batch),
                        ..read
                    }),
                );
            }
            Ok(Err(e)) => {
                recorder.fail(process, Payload::TxnPoll(read), e);
                sleep(Duration::from_millis(100)).await;
            }
            Err(_) => recorder.fail(
                process,
                Payload::TxnPoll(read),
                format!("no answer within {POLL_TIMEOUT:?}"),
            ),
        }
    }
}

/// Reads `partition` from offset 0 to its high watermark at `isolation`, as a fresh process,
/// recording each poll with `wrap`. With read_committed the position stops at the last stable
/// offset, so this waits until every transaction on the partition has ended.
async fn read_to_end(
    topic: &str,
    env: &Env,
    partition: u32,
    isolation: IsolationLevel,
    wrap: fn(TxnReadValue) -> Payload,
) -> Result<u64, String> {
    let recorder = &env.recorder;
    let tp = TopicPartition::new(topic, partition);
    let process = recorder.new_process();
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    let mut client = consumer(env, process, &tp, isolation).map_err(|e| e.to_string())?;
    // The end is looked up read_uncommitted: the high watermark, where a read_committed lookup
    // would answer the last stable offset and so stop the read short of open transactions.
    let mut ends =
        consumer(env, process, &tp, IsolationLevel::ReadUncommitted).map_err(|e| e.to_string())?;
    let mut last_error = String::new();
    // The end to read to, asked of the leader; asked again once reached, in case it moved (a
    // new leader's first entry, a marker of a transaction aborted meanwhile).
    let mut end: Option<u64> = None;
    let mut position = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "stopped at offset {position} of {end:?} after {FINAL_READ_TIMEOUT:?}: \
                 {last_error}"
            ));
        }
        if end.is_none_or(|target| position >= target) {
            match high_watermark(&mut ends, &tp).await {
                Ok(hw) if end.is_some() && hw <= position => return Ok(position),
                Ok(hw) => {
                    end = Some(hw);
                    continue;
                }
                Err(e) => last_error = e,
            }
            sleep(Duration::from_millis(200)).await;
            continue;
        }
        let read = TxnReadValue {
            partition,
            from: position,
            ..TxnReadValue::default()
        };
        recorder.invoke(process, wrap(read.clone()));
        match timeout(POLL_TIMEOUT, client.poll(POLL_WAIT)).await {
            Ok(Ok(batch)) => {
                let to = client.position(&tp).map(|o| o.0);
                if let Some(p) = to {
                    position = position.max(p);
                }
                if batch.is_empty() {
                    last_error =
                        format!("no records past offset {position} (the last stable offset?)");
                }
                recorder.ok(
                    process,
                    wrap(TxnReadValue {
                        to,
                        records: records(&batch),
                        ..read
                    }),
                );
            }
            Ok(Err(e)) => {
                last_error = e.to_string();
                recorder.fail(process, wrap(read), e);
                sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                last_error = format!("no answer within {POLL_TIMEOUT:?}");
                recorder.fail(process, wrap(read), &last_error);
            }
        }
    }
}

/// The partition's high watermark, asked of its leader through `ends` (a read_uncommitted
/// consumer assigned the partition, used for nothing else).
async fn high_watermark(ends: &mut Consumer, tp: &TopicPartition) -> Result<u64, String> {
    match timeout(POLL_TIMEOUT, ends.seek(tp, SeekTo::Latest)).await {
        Ok(Ok(hw)) => Ok(hw.0),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("high watermark lookup timed out".into()),
    }
}

//! The producer's sender task: turns ready batches into produce requests and their responses
//! into record outcomes.
//!
//! The loop owns no state of its own: it asks the accumulator which partitions are ready,
//! takes their batches (the first one and the closed ones right behind it, as one "train"
//! appended and fsynced at once by the broker), groups them by the partition leader (several partitions led by one
//! broker share a request, capped at [`REQUEST_BYTES_MAX`]) and spawns one task per request.
//! That task handles each partition's result on its own: success completes the records,
//! a retriable error puts the batch back at the head of its queue after a backoff (with the
//! leader forgotten, or set from the NOT_LEADER hint), anything else fails the records.
//! Requests in flight are bounded by the connection's semaphore and per partition by the
//! accumulator (one request without idempotence, five batches with it). Requests to one broker
//! are queued on its connection in the order this loop made them (`SendOrder`), so a
//! partition's pipelined batches arrive in sequence order.
//!
//! With idempotence, the loop first gets the producer's identity (InitProducerId, from any
//! broker; a transactional producer gets it from `init_transactions` instead). An
//! OUT_OF_ORDER_SEQUENCE_NUMBER is retried only while an earlier batch of the
//! partition is unfinished (it has not reached the broker yet, and will fill the gap);
//! otherwise it is fatal, and so is every other sequence error: never resent as new records,
//! the mistake Redpanda #3039 describes. A batch that carried a sequence number and failed
//! for good makes the partition start over with a fresh producer id.
//!
//! With transactions, the loop also adds partitions to the transaction (one
//! AddPartitionsToTxn at a time, for every partition that has records queued and is not in
//! the transaction yet) before their batches may be taken; reports every record that failed
//! for good to the transaction's state machine (the transaction can no longer commit); and
//! while the transaction is doomed (aborting, abortable, fenced) fails the batches still
//! queued instead of sending them. A batch is marked finished in the accumulator *before* its
//! records are completed, so once `commit_transaction`'s flush has seen every batch complete,
//! nothing is in flight and the epoch can switch.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rafka_protocol::messages::{
    InitProducerIdRequest, ProducePartition, ProduceRequest, ProduceResponse, ProduceTopic,
};
use rafka_protocol::ErrorCode;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::accumulator::{Identity, ProducerBatch};
use super::{Acks, Shared, REQUEST_BYTES_MAX};
use crate::cluster::{BrokerId, TopicPartition};
use crate::connection::{lock, SendOrder};
use crate::error::ClientError;

/// How long the loop sleeps when nothing is scheduled: only a safety net, as every event that
/// matters (append, flush, completion) wakes it.
const IDLE_CHECK: Duration = Duration::from_secs(1);

pub(super) async fn run(shared: Arc<Shared>) {
    // Per broker, the token the next produce request waits on before it is queued on the
    // connection (see `SendOrder`): requests go out in the order this loop made them.
    let mut last_queued: HashMap<BrokerId, CancellationToken> = HashMap::new();
    loop {
        // A transactional producer's identity comes from `init_transactions` only: one from
        // any broker would be unknown to the transaction coordinator.
        if shared.txn.is_none() && lock(&shared.accumulator).needs_identity() {
            match init_producer_id(&shared).await {
                Ok(identity) => {
                    tracing::debug!(?identity, "producer identity");
                    lock(&shared.accumulator).set_identity(identity);
                }
                Err(e) => {
                    tracing::debug!(error = %e, "InitProducerId failed; retrying");
                    tokio::time::sleep(Duration::from_millis(shared.config.retry_backoff_ms)).await;
                }
            }
        }
        let now = Instant::now();
        let mut by_broker: BTreeMap<BrokerId, Vec<Train>> = BTreeMap::new();
        let mut leaderless = false;
        let (expired, doomed, next_check, done) = {
            let mut acc = lock(&shared.accumulator);
            // Records of a transaction that can no longer commit are failed, not sent.
            let doomed = shared
                .txn
                .as_ref()
                .and_then(|t| lock(&t.core).doomed())
                .map(|error| (acc.abort_queued(), error));
            let expired = acc.expire(now);
            let ready = acc.ready(now);
            if doomed.is_none() && !ready.to_add.is_empty() && !acc.adding_in_flight() {
                if let Some(identity) = acc.identity() {
                    acc.start_adding(&ready.to_add);
                    let span = tracing::debug_span!("add_partitions", count = ready.to_add.len());
                    tokio::spawn(
                        super::txn::add_partitions(shared.clone(), ready.to_add, identity)
                            .instrument(span),
                    );
                }
            }
            for tp in ready.partitions {
                match shared.cluster.cached_leader(&tp) {
                    Some(leader) => {
                        let train = acc.take_train(&tp, TRAIN_BYTES_MAX);
                        if !train.is_empty() {
                            by_broker.entry(leader).or_default().push(train);
                        }
                    }
                    None => leaderless = true,
                }
            }
            (
                expired,
                doomed,
                ready.next_check,
                acc.is_closed() && acc.is_empty(),
            )
        };
        if let Some((batches, error)) = doomed {
            for batch in batches {
                release(&shared, batch.reserved_bytes);
                batch.fail(error.clone());
            }
        }
        for batch in expired {
            let reason = batch
                .last_error
                .as_ref()
                .map_or_else(|| "no leader available".to_owned(), ToString::to_string);
            let error = if batch.ambiguous {
                ClientError::OutcomeUnknown {
                    topic: batch.tp.topic.clone(),
                    partition: batch.tp.partition,
                    reason: format!("delivery timeout expired; last attempt: {reason}"),
                }
            } else {
                ClientError::DeliveryTimeout {
                    topic: batch.tp.topic.clone(),
                    partition: batch.tp.partition,
                    reason,
                }
            };
            release(&shared, batch.reserved_bytes);
            transaction_record_failed(&shared, &error);
            batch.fail(error);
        }
        for (leader, batches) in by_broker {
            for request in split_by_size(batches) {
                let records: usize = request
                    .iter()
                    .flatten()
                    .map(ProducerBatch::record_count)
                    .sum();
                let span = tracing::debug_span!(
                    "produce",
                    broker = %leader,
                    batches = request.len(),
                    records
                );
                let (order, queued) = SendOrder::next(last_queued.remove(&leader));
                last_queued.insert(leader, queued);
                tokio::spawn(send_request(shared.clone(), leader, request, order).instrument(span));
            }
        }
        if done {
            tracing::debug!("producer closed and drained; sender stops");
            return;
        }
        let mut wake_at = next_check.unwrap_or(now + IDLE_CHECK);
        if leaderless {
            refresh_metadata_in_background(&shared);
            wake_at = wake_at.min(now + Duration::from_millis(shared.config.retry_backoff_ms));
        }
        tokio::select! {
            _ = shared.wake.notified() => {}
            _ = tokio::time::sleep_until(wake_at) => {}
        }
    }
}

/// Tells the transaction (if any) that a record failed for good, before the record's future
/// (and a flush waiting on it) learns it, so a commit that flushed sees the failure.
fn transaction_record_failed(shared: &Shared, error: &ClientError) {
    if let Some(txn) = &shared.txn {
        lock(&txn.core).record_failed(error);
    }
}

/// Asks any broker for a producer id and epoch.
async fn init_producer_id(shared: &Shared) -> Result<Identity, ClientError> {
    let resp = shared
        .cluster
        .send_any(InitProducerIdRequest {
            transactional_id: String::new(),
            transaction_timeout_ms: 0,
        })
        .await?;
    let code = ErrorCode::from_code(resp.error_code);
    if !code.is_ok() {
        return Err(ClientError::Broker {
            code,
            message: resp.error_message,
            topic: None,
            partition: None,
        });
    }
    Identity::from_wire(resp.producer_id, resp.producer_epoch)
}

/// Consecutive batches of one partition sent as one append (see `Accumulator::take_train`).
type Train = Vec<ProducerBatch>;

/// Most record bytes in one train: one broker append and one fsync. Half a request, so that
/// trains of two partitions still share a request.
const TRAIN_BYTES_MAX: usize = REQUEST_BYTES_MAX / 2;

fn train_bytes(train: &Train) -> usize {
    train.iter().map(ProducerBatch::size_bytes).sum()
}

/// Splits one broker's trains into requests of at most [`REQUEST_BYTES_MAX`] record bytes.
fn split_by_size(trains: Vec<Train>) -> Vec<Vec<Train>> {
    let mut requests = Vec::new();
    let mut current = Vec::new();
    let mut bytes = 0;
    for b in trains {
        let size = train_bytes(&b);
        if !current.is_empty() && bytes + size > REQUEST_BYTES_MAX {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += size;
        current.push(b);
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

fn release(shared: &Shared, bytes: usize) {
    shared.memory.add_permits(bytes);
}

/// Refreshes metadata for the producer's topics once, then wakes the sender.
fn refresh_metadata_in_background(shared: &Arc<Shared>) {
    if shared.refreshing.swap(true, Ordering::AcqRel) {
        return;
    }
    let shared = shared.clone();
    tokio::spawn(async move {
        if let Err(e) = shared.cluster.refresh_metadata(&[]).await {
            tracing::debug!(error = %e, "metadata refresh failed");
        }
        shared.refreshing.store(false, Ordering::Release);
        shared.wake.notify_one();
    });
}

/// The record bytes of a train: its batches back to back (no copy for a single batch).
fn train_records(train: &Train) -> bytes::Bytes {
    if let [only] = train.as_slice() {
        return only.bytes();
    }
    let mut buf = bytes::BytesMut::with_capacity(train_bytes(train));
    for b in train {
        buf.extend_from_slice(&b.bytes());
    }
    buf.freeze()
}

/// Fails or retries every batch of a train. Newest first: a retried batch goes back to the
/// head of its queue, so requeueing in reverse keeps the partition's order.
fn train_failed(shared: &Shared, train: Train, error: &ClientError) {
    for b in train.into_iter().rev() {
        handle_failure(shared, b, error.clone());
    }
}

async fn send_request(
    shared: Arc<Shared>,
    leader: BrokerId,
    batches: Vec<Train>,
    order: SendOrder,
) {
    let config = &shared.config;
    let timeout = Duration::from_millis(config.request_timeout_ms);
    let mut topics: BTreeMap<&str, Vec<ProducePartition>> = BTreeMap::new();
    for train in &batches {
        let Some(first) = train.first() else { continue };
        topics
            .entry(first.tp.topic.as_str())
            .or_default()
            .push(ProducePartition {
                partition: first.tp.partition,
                records: train_records(train),
            });
    }
    let request = ProduceRequest {
        acks: config.acks.wire(),
        timeout_ms: config.request_timeout_ms.min(u64::from(u32::MAX)) as u32,
        topics: topics
            .into_iter()
            .map(|(name, partitions)| ProduceTopic {
                name: name.to_owned(),
                partitions,
            })
            .collect(),
    };
    let conn = match shared.cluster.connection(leader).await {
        Ok(c) => c,
        Err(e) => {
            for train in batches {
                train_failed(&shared, train, &e);
            }
            return;
        }
    };
    if config.acks == Acks::None {
        drop(order);
        let sent = conn.send_no_response(request).await;
        for train in batches {
            match &sent {
                Ok(()) => {
                    for b in train {
                        complete(&shared, b, None);
                    }
                }
                Err(e) => train_failed(&shared, train, e),
            }
        }
        return;
    }
    match conn.send_in_order(request, timeout, order).await {
        Err(e) => {
            for train in batches {
                train_failed(&shared, train, &e);
            }
        }
        Ok(response) => handle_response(&shared, batches, response),
    }
}

fn handle_response(shared: &Shared, batches: Vec<Train>, response: ProduceResponse) {
    let mut results = HashMap::new();
    for t in response.topics {
        for p in t.partitions {
            results.insert(TopicPartition::new(t.name.clone(), p.partition), p);
        }
    }
    for train in batches {
        let Some(tp) = train.first().map(|b| b.tp.clone()) else {
            continue;
        };
        let Some(r) = results.remove(&tp) else {
            // The broker skipped a partition it was asked about: whether it appended the
            // batches is not known, so it counts as an ambiguous, retriable failure.
            let e = ClientError::Protocol {
                addr: String::new(),
                reason: format!("produce response has no result for {tp}"),
            };
            train_failed(shared, train, &e);
            continue;
        };
        let code = ErrorCode::from_code(r.error_code);
        if code.is_ok() {
            if r.batch_base_offsets.len() == train.len() {
                // An idempotent retry: some batches were appended by an earlier attempt.
                for (b, base) in train.into_iter().zip(r.batch_base_offsets) {
                    complete(shared, b, Some(base));
                }
                continue;
            }
            // Offsets are dense: each batch starts where the previous one ended.
            let mut base = r.base_offset;
            for b in train {
                let records = b.record_count() as u64;
                complete(shared, b, Some(base));
                base += records;
            }
            continue;
        }
        if code == ErrorCode::DuplicateSequenceNumber {
            // The leader says the batch was appended so long ago that it no longer knows
            // where. With at most five batches in flight per partition that cannot happen to
            // a healthy producer, so it is not taken on trust: the records' outcome is
            // reported unknown (and a transaction holding them can only abort).
            tracing::warn!(%tp, "duplicate of a batch older than the broker remembers");
            let e = ClientError::broker(code, r.error_message, &tp.topic, tp.partition);
            for mut b in train.into_iter().rev() {
                b.ambiguous = true;
                handle_failure(shared, b, e.clone());
            }
            continue;
        }
        if code == ErrorCode::NotLeader {
            match BrokerId::from_wire(r.leader_hint) {
                Some(hint) => shared.cluster.set_leader_hint(&tp, hint),
                None => shared.cluster.invalidate_leader(&tp),
            }
        }
        let e = ClientError::broker(code, r.error_message, &tp.topic, tp.partition);
        train_failed(shared, train, &e);
    }
}

fn complete(shared: &Shared, batch: ProducerBatch, base_offset: Option<u64>) {
    release(shared, batch.reserved_bytes);
    // Finished before completed: whoever sees the batch done (a flush) sees it out of flight.
    lock(&shared.accumulator).finish(&batch.tp, batch.order);
    batch.succeed(base_offset);
    shared.wake.notify_one();
}

/// Retries `batch` if the error and its deadline allow, else fails its records.
fn handle_failure(shared: &Shared, mut batch: ProducerBatch, error: ClientError) {
    let now = Instant::now();
    let backoff = Duration::from_millis(shared.config.retry_backoff_ms);
    batch.attempts += 1;
    // A missing per-partition result is as ambiguous as a timeout.
    let ambiguous = error.is_ambiguous() || matches!(error, ClientError::Protocol { .. });
    batch.ambiguous |= ambiguous;
    let retries_left = shared
        .config
        .retries
        .is_none_or(|max| batch.attempts <= max);
    // A sequence gap behind an earlier batch that is still on its way (or being retried), or
    // that was when this one went out (the two may have reached the leader in either order),
    // closes once that batch lands; with nothing earlier outstanding it is a real gap, and
    // fatal.
    // UNKNOWN_PRODUCER_ID is the same gap when the partition has not seen the producer's
    // first batch yet.
    let gap = matches!(
        error.code(),
        Some(ErrorCode::OutOfOrderSequenceNumber | ErrorCode::UnknownProducerId)
    );
    let gap_behind_earlier = gap
        && (batch.sent_behind_unfinished
            || lock(&shared.accumulator).has_earlier_unfinished(&batch.tp, batch.order));
    let retriable =
        error.is_retriable() || matches!(error, ClientError::Protocol { .. }) || gap_behind_earlier;
    tracing::debug!(tp = %batch.tp, attempt = batch.attempts, %error, "produce attempt failed");
    if retriable && retries_left && now + backoff < batch.deadline {
        if error.needs_metadata_refresh() && error.code() != Some(ErrorCode::NotLeader) {
            shared.cluster.invalidate_leader(&batch.tp);
        }
        batch.last_error = Some(error);
        lock(&shared.accumulator).requeue(batch, now + backoff);
        shared.wake.notify_one();
        return;
    }
    let final_error = batch.final_error(error);
    release(shared, batch.reserved_bytes);
    // Finished (and reported to the transaction) before the records learn the outcome, so a
    // flush that saw them fail sees the partition out of flight and the transaction doomed.
    let mut acc = lock(&shared.accumulator);
    acc.finish(&batch.tp, batch.order);
    if batch.stamp.is_some() {
        acc.reset_sequences(&batch.tp);
    }
    drop(acc);
    transaction_record_failed(shared, &final_error);
    batch.fail(final_error);
    shared.wake.notify_one();
}

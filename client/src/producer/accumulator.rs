//! The record accumulator: per-partition queues of batches waiting to be sent.
//!
//! This is plain state with no I/O and logical time (every method takes `now`), owned by the
//! producer under one mutex and tested without sockets. It decides
//! - which batch a record joins (the open batch of its partition while it fits under
//!   `batch_bytes`, else a new one), and which partition unkeyed records go to (the sticky
//!   [`Partitioner`], told whenever a batch closes);
//! - which partitions have a batch ready to send (full, lingered long enough, being flushed, or
//!   a retry whose backoff ended);
//! - how many batches of a partition may be in flight: one request at a time without
//!   idempotence (so retries cannot reorder a partition), up to `max_in_flight_per_partition`
//!   batches with it, where the broker's sequence check keeps the order and drops duplicates;
//! - with idempotence, each batch's producer id, epoch and sequence number, stamped when the
//!   batch is first taken for sending and kept across its retries;
//! - with transactions, whether each partition was added to the current transaction
//!   (AddPartitionsToTxn): a partition's batches wait until it was, because the partition
//!   leader refuses transactional batches of a partition the coordinator does not know to be
//!   in the transaction; and the switch to the next producer epoch when a transaction ends,
//!   for every partition at once;
//! - which waiting batches expired their delivery timeout.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rafka_protocol::batch::HEADER_BYTES;
use rafka_protocol::{
    BatchBuilder, BatchOptions, Header, ProducerEpoch, ProducerId, Sequence, Timestamp,
};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::cluster::TopicPartition;
use crate::error::{ClientError, Result};
use crate::partitioner::Partitioner;
use crate::producer::RecordMetadata;

/// Initial buffer of a new batch: most batches are small, and a batch grows as it fills.
const BATCH_INITIAL_CAPACITY_BYTES: usize = 16 << 10;

/// One record's caller, waiting for the outcome.
pub(crate) type Completion = oneshot::Sender<Result<RecordMetadata>>;

/// An idempotent producer's identity, as InitProducerId handed it out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Identity {
    pub producer_id: ProducerId,
    pub epoch: ProducerEpoch,
}

impl Identity {
    /// An identity as InitProducerId or EndTxn answers it (the epoch travels as an i32).
    pub fn from_wire(producer_id: i64, epoch: i32) -> Result<Identity> {
        match i16::try_from(epoch) {
            Ok(epoch) if producer_id >= 0 && epoch >= 0 => Ok(Identity {
                producer_id: ProducerId(producer_id),
                epoch: ProducerEpoch(epoch),
            }),
            _ => Err(ClientError::Protocol {
                addr: String::new(),
                reason: format!("invalid producer id {producer_id} or epoch {epoch}"),
            }),
        }
    }
}

/// `seq` advanced by `n`, wrapping from `i32::MAX` to 0 as the broker does.
fn seq_add(seq: i32, n: usize) -> i32 {
    ((i64::from(seq) + n as i64) % (i64::from(i32::MAX) + 1)) as i32
}

/// A batch of records for one partition, open (still taking records) or closed.
pub(crate) struct ProducerBatch {
    pub tp: TopicPartition,
    /// Partitions the topic had when the batch was created, for the sticky partitioner.
    partitions_in_topic: u32,
    /// The records, until the batch is encoded (when first taken for sending).
    builder: Option<BatchBuilder>,
    /// Set once no more records may join.
    closed: bool,
    /// The encoded batch, once taken for sending.
    bytes: Option<Bytes>,
    /// Where the batch stands in its partition's send order (set when first taken): retries
    /// go back into the queue in this order.
    pub order: Option<u64>,
    /// With idempotence: the identity and first sequence number stamped into the batch.
    pub stamp: Option<(Identity, i32)>,
    /// Whether a batch of the partition sent before this one was unfinished when this one was
    /// last sent (so a sequence gap reported for this send may be mere reordering).
    pub sent_behind_unfinished: bool,
    /// One completion per record, in offset order.
    pub completions: Vec<Completion>,
    /// Buffer-memory permits held by the records; released when the batch completes.
    pub reserved_bytes: usize,
    pub created: Instant,
    /// When the records' delivery timeout expires.
    pub deadline: Instant,
    /// Attempts made so far (0 until first sent).
    pub attempts: u32,
    /// Whether some attempt ended without knowing if the broker appended the batch.
    pub ambiguous: bool,
    /// The error of the last failed attempt, for the final error message.
    pub last_error: Option<ClientError>,
    /// Dropped when the batch is dropped (completed); `flush` waits on its receivers.
    _done: watch::Sender<()>,
    done_rx: watch::Receiver<()>,
}

impl ProducerBatch {
    fn is_open(&self) -> bool {
        !self.closed
    }

    /// Closes the batch if still open; returns whether it was open.
    fn close(&mut self) -> bool {
        !std::mem::replace(&mut self.closed, true)
    }

    /// Encodes the batch (once), stamped with the producer identity and first sequence, and
    /// marked transactional (every batch of a transactional producer belongs to a transaction).
    fn seal(&mut self, stamp: Option<(Identity, i32)>, transactional: bool) {
        let Some(mut builder) = self.builder.take() else {
            return;
        };
        if let Some((identity, seq)) = stamp {
            let o = builder.options_mut();
            o.producer_id = identity.producer_id;
            o.producer_epoch = identity.epoch;
            o.base_sequence = Sequence(seq);
            o.transactional = transactional;
            self.stamp = stamp;
        }
        self.bytes = Some(builder.build());
    }

    /// The encoded batch. Only closed batches leave the accumulator, so this is always set
    /// there; an empty buffer would be rejected by the broker rather than panic here.
    pub fn bytes(&self) -> Bytes {
        self.bytes.clone().unwrap_or_default()
    }

    pub fn record_count(&self) -> usize {
        self.completions.len()
    }

    pub fn size_bytes(&self) -> usize {
        match (&self.builder, &self.bytes) {
            (Some(b), _) => b.size_bytes(),
            (None, Some(b)) => b.len(),
            (None, None) => 0,
        }
    }

    /// Completes every record with its offset (`base_offset` None for acks=0).
    pub fn succeed(self, base_offset: Option<u64>) {
        for (i, tx) in self.completions.into_iter().enumerate() {
            let _ = tx.send(Ok(RecordMetadata {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                offset: base_offset.map(|b| rafka_protocol::Offset(b + i as u64)),
            }));
        }
    }

    /// Fails every record with `error`.
    pub fn fail(self, error: ClientError) {
        for tx in self.completions {
            let _ = tx.send(Err(error.clone()));
        }
    }

    /// The error to report when the batch gives up with `error`: an outcome that is not known
    /// is reported as unknown, never as failed (an earlier attempt may have been appended).
    pub fn final_error(&self, error: ClientError) -> ClientError {
        if self.ambiguous || error.is_ambiguous() {
            ClientError::OutcomeUnknown {
                topic: self.tp.topic.clone(),
                partition: self.tp.partition,
                reason: error.to_string(),
            }
        } else {
            error
        }
    }
}

/// Where a partition stands in the current transaction.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum TxnMembership {
    #[default]
    NotAdded,
    /// In the AddPartitionsToTxn request in flight.
    Adding,
    /// The coordinator knows it is in the transaction: its batches may go.
    Added,
}

/// The batches of one partition.
#[derive(Default)]
struct PartitionQueue {
    /// Oldest first; only the last one may be open. Retried batches go back to the front in
    /// their send order.
    batches: VecDeque<ProducerBatch>,
    /// Batches of this partition being sent now.
    in_flight: usize,
    /// Completion signals of batches sent (for `flush`); pruned as they close.
    signals: Vec<watch::Receiver<()>>,
    /// A retried batch waits until then.
    backoff_until: Option<Instant>,
    /// With idempotence: the identity this partition's sequence numbers belong to, and the
    /// next sequence number to stamp.
    identity: Option<Identity>,
    next_sequence: i32,
    /// Send order of the next batch taken, and of the batches taken but not yet finished.
    next_order: u64,
    unfinished: BTreeSet<u64>,
    /// With transactions: whether the partition is in the current transaction.
    txn: TxnMembership,
}

/// How batches are stamped when first taken (a copy of the accumulator's settings, so a
/// queue can be borrowed mutably meanwhile).
#[derive(Clone, Copy)]
struct Stamping {
    idempotent: bool,
    transactional: bool,
    identity: Option<Identity>,
}

/// One record to append.
pub(crate) struct NewRecord<'a> {
    pub timestamp: Option<Timestamp>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [Header],
    pub completion: Completion,
    pub reserved_bytes: usize,
}

/// What an append did, so the producer knows whether to wake the sender.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Appended {
    pub partition: u32,
    /// A batch was created or became full: the sender's timers need a look.
    pub wake_sender: bool,
}

/// What the sender should do now.
pub(crate) struct Ready {
    /// Partitions with a batch to send now, none of them in flight.
    pub partitions: Vec<TopicPartition>,
    /// When to look again if nothing else happens.
    pub next_check: Option<Instant>,
    /// With transactions: partitions with records queued that must be added to the
    /// transaction before they can send (not in it yet, nor being added).
    pub to_add: Vec<TopicPartition>,
}

pub(crate) struct Accumulator {
    batch_bytes: usize,
    linger: Duration,
    delivery_timeout: Duration,
    /// Batches of one partition in flight at most (with idempotence; without, one request).
    max_in_flight_per_partition: usize,
    idempotent: bool,
    /// Every batch belongs to a transaction: it is marked transactional and waits for its
    /// partition to be added to the transaction. Implies `idempotent`.
    transactional: bool,
    /// The identity new partitions stamp their batches with; `None` until InitProducerId
    /// answered (nothing is taken for sending until then).
    identity: Option<Identity>,
    queues: HashMap<TopicPartition, PartitionQueue>,
    partitioner: Partitioner,
    /// `flush` calls waiting: while positive every batch is ready at once.
    flushing: usize,
    /// No more appends; send everything now.
    closed: bool,
}

impl Accumulator {
    pub fn new(batch_bytes: usize, linger: Duration, delivery_timeout: Duration) -> Accumulator {
        Accumulator {
            batch_bytes,
            linger,
            delivery_timeout,
            max_in_flight_per_partition: 1,
            idempotent: false,
            transactional: false,
            identity: None,
            queues: HashMap::new(),
            partitioner: Partitioner::default(),
            flushing: 0,
            closed: false,
        }
    }

    #[cfg(test)]
    fn with_partitioner(mut self, partitioner: Partitioner) -> Accumulator {
        self.partitioner = partitioner;
        self
    }

    /// Turns idempotence on: up to `max_in_flight_per_partition` batches of a partition in
    /// flight, each stamped with the producer identity once [`Accumulator::set_identity`] gave
    /// one.
    pub fn with_idempotence(mut self, max_in_flight_per_partition: usize) -> Accumulator {
        self.idempotent = true;
        self.max_in_flight_per_partition = max_in_flight_per_partition.max(1);
        self
    }

    /// Turns transactions on (with idempotence, which they need): batches are marked
    /// transactional, and a partition's batches wait until the partition was added to the
    /// current transaction ([`Accumulator::start_adding`], [`Accumulator::partitions_added`]).
    pub fn with_transactions(mut self, max_in_flight_per_partition: usize) -> Accumulator {
        self = self.with_idempotence(max_in_flight_per_partition);
        self.transactional = true;
        self
    }

    /// Whether the producer needs an identity before it can send.
    pub fn needs_identity(&self) -> bool {
        self.idempotent && self.identity.is_none()
    }

    pub fn set_identity(&mut self, identity: Identity) {
        self.identity = Some(identity);
    }

    /// The identity batches taken from now on are stamped with (for partitions that have not
    /// started their sequence under another one).
    pub fn identity(&self) -> Option<Identity> {
        self.identity
    }

    /// Starts a new producer identity for every partition at once: a transaction ended and
    /// EndTxn handed out the next epoch, under which every partition starts again at sequence
    /// 0 and outside the (next) transaction. Only allowed while nothing is queued or in flight:
    /// a batch stamped under the old epoch must never be resent among the new epoch's
    /// sequences, and an unsent record of the ended transaction must not join the next one.
    pub fn switch_epoch(&mut self, identity: Identity) -> std::result::Result<(), String> {
        if let Some((tp, q)) = self
            .queues
            .iter()
            .find(|(_, q)| !q.batches.is_empty() || q.in_flight > 0)
        {
            return Err(format!(
                "{tp} still has {} batches queued and {} in flight at the end of the transaction",
                q.batches.len(),
                q.in_flight
            ));
        }
        self.identity = Some(identity);
        // Every per-partition state (sequences, membership, send order) belongs to the old
        // epoch; empty queues hold nothing else.
        self.queues.clear();
        Ok(())
    }

    /// Marks `tps` as being added to the transaction (an AddPartitionsToTxn is on its way).
    pub fn start_adding(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            if let Some(q) = self.queues.get_mut(tp) {
                q.txn = TxnMembership::Adding;
            }
        }
    }

    /// The coordinator added `tps` to the transaction of `identity`: their batches may go.
    /// An answer for an earlier epoch (a transaction that has ended since) is ignored.
    pub fn partitions_added(&mut self, tps: &[TopicPartition], identity: Identity) {
        self.set_membership(tps, identity, TxnMembership::Added);
    }

    /// Adding `tps` failed; they may be asked for again (ignored for an earlier epoch).
    pub fn adding_failed(&mut self, tps: &[TopicPartition], identity: Identity) {
        self.set_membership(tps, identity, TxnMembership::NotAdded);
    }

    fn set_membership(&mut self, tps: &[TopicPartition], identity: Identity, to: TxnMembership) {
        if self.identity != Some(identity) {
            return;
        }
        for tp in tps {
            if let Some(q) = self
                .queues
                .get_mut(tp)
                .filter(|q| q.txn == TxnMembership::Adding)
            {
                q.txn = to;
            }
        }
    }

    /// Whether an AddPartitionsToTxn is on its way (one at a time: partitions that become
    /// ready meanwhile go in the next one).
    pub fn adding_in_flight(&self) -> bool {
        self.queues.values().any(|q| q.txn == TxnMembership::Adding)
    }

    /// Removes every batch waiting to be sent (never sent, or waiting for a retry) so the
    /// caller can fail them: their transaction is being aborted or can no longer commit.
    /// Batches in flight stay until their responses come back.
    pub fn abort_queued(&mut self) -> Vec<ProducerBatch> {
        let mut aborted = Vec::new();
        for q in self.queues.values_mut() {
            for mut b in q.batches.drain(..) {
                b.close();
                if let Some(o) = b.order {
                    q.unfinished.remove(&o);
                }
                aborted.push(b);
            }
            q.backoff_until = None;
        }
        aborted
    }

    /// Whether a batch of `tp` sent before the one at `order` is still unfinished: then an
    /// OUT_OF_ORDER_SEQUENCE_NUMBER for `order` only means that batch has not reached the
    /// broker yet, and `order` can be retried behind it.
    pub fn has_earlier_unfinished(&self, tp: &TopicPartition, order: Option<u64>) -> bool {
        let (Some(q), Some(order)) = (self.queues.get(tp), order) else {
            return false;
        };
        q.unfinished.range(..order).next().is_some()
    }

    /// Gives up on `tp`'s sequence numbers after a batch that carried one failed for good
    /// (its fate, and so the broker's next expected sequence, is unknown): batches taken from
    /// now on get a fresh producer identity and start again at sequence 0.
    ///
    /// Not with transactions: the failure makes the transaction abort, and the epoch that
    /// follows the abort starts every partition again at sequence 0 (`switch_epoch`). A new
    /// producer id from any broker would be outside the transaction.
    pub fn reset_sequences(&mut self, tp: &TopicPartition) {
        if !self.idempotent || self.transactional {
            return;
        }
        if let Some(q) = self.queues.get_mut(tp) {
            if q.identity.is_some() && q.identity == self.identity {
                self.identity = None;
            }
            q.identity = None;
            q.next_sequence = 0;
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed
    }

    pub fn close(&mut self) {
        self.closed = true;
    }

    /// Whether nothing is queued or in flight.
    pub fn is_empty(&self) -> bool {
        self.queues
            .values()
            .all(|q| q.batches.is_empty() && q.in_flight == 0)
    }

    /// Appends a record to `topic`, to `partition` or a partitioner-chosen one.
    pub fn append(
        &mut self,
        topic: &str,
        partition: Option<u32>,
        partitions_in_topic: u32,
        record: NewRecord<'_>,
        now: Instant,
    ) -> Result<Appended> {
        if self.closed {
            return Err(ClientError::Closed);
        }
        let partition = match partition {
            Some(p) => p,
            None => self
                .partitioner
                .partition(topic, record.key, partitions_in_topic),
        };
        let tp = TopicPartition::new(topic, partition);
        let estimate =
            BatchBuilder::estimated_record_bytes(record.key, record.value, record.headers);
        let queue = self.queues.entry(tp.clone()).or_default();
        let mut wake_sender = false;
        let fits = queue.batches.back().is_some_and(|b| {
            !b.closed
                && b.builder
                    .as_ref()
                    .is_some_and(|builder| builder.size_bytes() + estimate <= self.batch_bytes)
        });
        if !fits {
            if let Some(last) = queue.batches.back_mut() {
                if last.close() {
                    self.partitioner
                        .on_batch_closed(topic, partition, last.partitions_in_topic);
                }
            }
            let capacity = (HEADER_BYTES + estimate)
                .max(BATCH_INITIAL_CAPACITY_BYTES)
                .min(self.batch_bytes.max(HEADER_BYTES + estimate));
            let (done, done_rx) = watch::channel(());
            queue.batches.push_back(ProducerBatch {
                tp: tp.clone(),
                partitions_in_topic,
                builder: Some(BatchBuilder::with_capacity(
                    BatchOptions::default(),
                    capacity,
                )),
                closed: false,
                bytes: None,
                order: None,
                stamp: None,
                sent_behind_unfinished: false,
                completions: Vec::new(),
                reserved_bytes: 0,
                created: now,
                deadline: now + self.delivery_timeout,
                attempts: 0,
                ambiguous: false,
                last_error: None,
                _done: done,
                done_rx,
            });
            wake_sender = true;
        }
        let Some(batch) = queue.batches.back_mut() else {
            unreachable!("a batch was pushed above");
        };
        let Some(builder) = batch.builder.as_mut().filter(|_| !batch.closed) else {
            unreachable!("the last batch is open: it fit, or was just created");
        };
        builder.append(record.timestamp, record.key, record.value, record.headers);
        batch.completions.push(record.completion);
        batch.reserved_bytes += record.reserved_bytes;
        if builder.size_bytes() >= self.batch_bytes {
            batch.close();
            self.partitioner
                .on_batch_closed(topic, partition, batch.partitions_in_topic);
            wake_sender = true;
        }
        Ok(Appended {
            partition,
            wake_sender,
        })
    }

    /// Partitions whose first batch should be sent now, and when to check again.
    pub fn ready(&self, now: Instant) -> Ready {
        let mut partitions = Vec::new();
        let mut to_add = Vec::new();
        let mut next_check: Option<Instant> = None;
        let mut consider = |t: Instant| {
            next_check = Some(next_check.map_or(t, |n| n.min(t)));
        };
        for (tp, q) in &self.queues {
            let Some(first) = q.batches.front() else {
                continue;
            };
            if self.transactional && q.txn == TxnMembership::NotAdded {
                // Asked for at once rather than after linger: the round trip to the
                // coordinator overlaps the batch filling up.
                to_add.push(tp.clone());
                continue;
            }
            if !self.may_send(q, first) {
                continue;
            }
            consider(first.deadline);
            if let Some(until) = q.backoff_until.filter(|&u| u > now) {
                consider(until);
                continue;
            }
            let linger_end = first.created + self.linger;
            let ready = !first.is_open()
                || q.batches.len() > 1
                || first.attempts > 0
                || self.flushing > 0
                || self.closed
                || now >= linger_end;
            if ready {
                partitions.push(tp.clone());
            } else {
                consider(linger_end);
            }
        }
        // Oldest-first keeps latency fair when requests are capped in size.
        partitions.sort_by_key(|tp| self.queues[tp].batches.front().map(|b| b.created));
        to_add.sort();
        Ready {
            partitions,
            next_check,
            to_add,
        }
    }

    /// Whether `q` may send its first batch now, as far as batches in flight go: without
    /// idempotence only when nothing of it is in flight; with it, while fewer than the limit
    /// are, except that a retried batch waits until every earlier send has come back (so it is
    /// resent in order, ahead of the batches behind it).
    fn may_send(&self, q: &PartitionQueue, first: &ProducerBatch) -> bool {
        if !self.idempotent {
            return q.in_flight == 0;
        }
        if self.identity.is_none() && q.identity.is_none() {
            return false;
        }
        if self.transactional && q.txn != TxnMembership::Added {
            return false;
        }
        q.in_flight < self.max_in_flight_per_partition && (first.attempts == 0 || q.in_flight == 0)
    }

    /// Takes the first batch of `tp` for sending (closing and encoding it if needed) and counts
    /// it in flight.
    pub fn take(&mut self, tp: &TopicPartition) -> Option<ProducerBatch> {
        let queue = self.queues.get(tp)?;
        let first = queue.batches.front()?;
        if !self.may_send(queue, first) {
            return None;
        }
        let how = self.stamping();
        let queue = self.queues.get_mut(tp)?;
        let mut batch = queue.batches.pop_front()?;
        if batch.close() {
            self.partitioner
                .on_batch_closed(&tp.topic, tp.partition, batch.partitions_in_topic);
        }
        queue.backoff_until = None;
        Self::start_sending(queue, &mut batch, how);
        Some(batch)
    }

    fn stamping(&self) -> Stamping {
        Stamping {
            idempotent: self.idempotent,
            transactional: self.transactional,
            identity: self.identity,
        }
    }

    /// Encodes and stamps a batch on its first send; counts it in flight.
    fn start_sending(queue: &mut PartitionQueue, batch: &mut ProducerBatch, how: Stamping) {
        if batch.order.is_none() {
            let stamp = if how.idempotent {
                let id = *queue.identity.get_or_insert_with(|| {
                    how.identity
                        .expect("may_send checked that an identity exists")
                });
                let seq = queue.next_sequence;
                queue.next_sequence = seq_add(seq, batch.record_count());
                Some((id, seq))
            } else {
                None
            };
            batch.seal(stamp, how.transactional);
            batch.order = Some(queue.next_order);
            queue.unfinished.insert(queue.next_order);
            queue.next_order += 1;
        }
        // Requests of one partition may reach the leader out of order (they go out from
        // separate tasks, and the broker handles a connection's requests concurrently): an
        // OUT_OF_ORDER_SEQUENCE_NUMBER for this send is then expected, and retriable.
        batch.sent_behind_unfinished = batch
            .order
            .is_some_and(|o| queue.unfinished.range(..o).next().is_some());
        queue.in_flight += 1;
        queue.signals.retain(|s| s.has_changed().is_ok());
        queue.signals.push(batch.done_rx.clone());
    }

    /// Takes the first batch of `tp` (as [`Accumulator::take`]) and the closed batches queued
    /// right behind it, up to `max_bytes` in all (and, with idempotence, up to the in-flight
    /// limit): a "train" sent as one append, so one fsync on the broker covers all of it while
    /// later records keep accumulating. The batches keep their order.
    pub fn take_train(&mut self, tp: &TopicPartition, max_bytes: usize) -> Vec<ProducerBatch> {
        let Some(first) = self.take(tp) else {
            return Vec::new();
        };
        let mut bytes = first.size_bytes();
        let mut train = vec![first];
        let (how, limit) = (self.stamping(), self.max_in_flight_per_partition);
        let idempotent = how.idempotent;
        if let Some(queue) = self.queues.get_mut(tp) {
            while let Some(next) = queue.batches.front() {
                if next.is_open()
                    || next.attempts > 0
                    || bytes + next.size_bytes() > max_bytes
                    || (idempotent && queue.in_flight >= limit)
                {
                    break;
                }
                let Some(mut next) = queue.batches.pop_front() else {
                    break;
                };
                Self::start_sending(queue, &mut next, how);
                bytes += next.size_bytes();
                train.push(next);
            }
        }
        train
    }

    /// Puts a batch whose attempt failed back into its queue, to be resent after
    /// `backoff_until`: ahead of every batch sent after it, so the partition's order holds.
    pub fn requeue(&mut self, batch: ProducerBatch, backoff_until: Instant) {
        let queue = self.queues.entry(batch.tp.clone()).or_default();
        queue.in_flight = queue.in_flight.saturating_sub(1);
        queue.backoff_until = Some(backoff_until);
        let at = queue
            .batches
            .iter()
            .position(|b| b.order.is_none_or(|o| Some(o) > batch.order))
            .unwrap_or(queue.batches.len());
        queue.batches.insert(at, batch);
    }

    /// Marks a batch of `tp` sent at `order` as finished (succeeded or failed for good).
    pub fn finish(&mut self, tp: &TopicPartition, order: Option<u64>) {
        let idempotent = self.idempotent;
        if let Some(queue) = self.queues.get_mut(tp) {
            queue.in_flight = queue.in_flight.saturating_sub(1);
            if let Some(o) = order {
                queue.unfinished.remove(&o);
            }
            // With idempotence the queue also holds the partition's sequence numbers.
            if queue.batches.is_empty() && queue.in_flight == 0 && !idempotent {
                self.queues.remove(tp);
            }
        }
    }

    /// Removes the waiting (not in-flight) batches whose delivery timeout expired.
    pub fn expire(&mut self, now: Instant) -> Vec<ProducerBatch> {
        let mut expired = Vec::new();
        let mut reset = Vec::new();
        for (tp, q) in self.queues.iter_mut() {
            if q.in_flight > 0 {
                continue;
            }
            while q.batches.front().is_some_and(|b| b.deadline <= now) {
                if let Some(mut b) = q.batches.pop_front() {
                    b.close();
                    if let Some(o) = b.order {
                        q.unfinished.remove(&o);
                    }
                    if b.stamp.is_some() {
                        reset.push(tp.clone());
                    }
                    expired.push(b);
                }
            }
        }
        for tp in reset {
            self.reset_sequences(&tp);
        }
        if !self.idempotent {
            self.queues
                .retain(|_, q| !q.batches.is_empty() || q.in_flight > 0);
        }
        expired
    }

    /// Starts a flush: every batch is ready from now until [`Accumulator::end_flush`]. Returns
    /// the completion signals of every batch queued or in flight now.
    pub fn begin_flush(&mut self) -> Vec<watch::Receiver<()>> {
        self.flushing += 1;
        let mut signals = Vec::new();
        for q in self.queues.values() {
            signals.extend(q.signals.iter().cloned());
            signals.extend(q.batches.iter().map(|b| b.done_rx.clone()));
        }
        signals
    }

    pub fn end_flush(&mut self) {
        self.flushing = self.flushing.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(value: &[u8]) -> (NewRecord<'_>, oneshot::Receiver<Result<RecordMetadata>>) {
        let (tx, rx) = oneshot::channel();
        (
            NewRecord {
                timestamp: Some(Timestamp(1)),
                key: None,
                value: Some(value),
                headers: &[],
                completion: tx,
                reserved_bytes: value.len(),
            },
            rx,
        )
    }

    fn acc(batch_bytes: usize) -> Accumulator {
        Accumulator::new(
            batch_bytes,
            Duration::from_millis(5),
            Duration::from_secs(120),
        )
        .with_partitioner(Partitioner::with_seed(3))
    }

    #[test]
    fn a_train_takes_the_closed_batches_behind_the_first_in_order() {
        let mut a = acc(100);
        let t0 = Instant::now();
        let tp = TopicPartition::new("t", 0);
        let mut waiters = Vec::new();
        let value = [7u8; 60];
        for _ in 0..10 {
            let (r, rx) = record(&value);
            a.append("t", Some(0), 1, r, t0).unwrap();
            waiters.push(rx);
        }
        // 60-byte records in 100-byte batches: one record per closed batch, the last open.
        let train = a.take_train(&tp, 350);
        assert!(
            train.len() >= 2,
            "closed batches ride along: {}",
            train.len()
        );
        assert!(train.iter().map(ProducerBatch::size_bytes).sum::<usize>() <= 350);
        assert!(
            a.take_train(&tp, 350).is_empty(),
            "the partition is in flight"
        );
        let taken = train.len();
        for b in train {
            let order = b.order;
            b.succeed(Some(0));
            a.finish(&tp, order);
        }
        let rest = a.take_train(&tp, usize::MAX);
        assert_eq!(rest.len() + taken, 10, "every batch is sent exactly once");
    }

    #[test]
    fn records_linger_then_go_as_one_batch() {
        let t0 = Instant::now();
        let mut a = acc(1 << 20);
        let mut rxs = Vec::new();
        for _ in 0..3 {
            let (r, rx) = record(b"hello");
            let appended = a.append("t", Some(0), 1, r, t0).unwrap();
            assert_eq!(appended.partition, 0);
            rxs.push(rx);
        }
        let ready = a.ready(t0);
        assert!(ready.partitions.is_empty());
        assert_eq!(ready.next_check, Some(t0 + Duration::from_millis(5)));
        let ready = a.ready(t0 + Duration::from_millis(5));
        assert_eq!(ready.partitions, vec![TopicPartition::new("t", 0)]);
        let batch = a.take(&TopicPartition::new("t", 0)).unwrap();
        assert_eq!(batch.record_count(), 3);
        assert_eq!(batch.reserved_bytes, 15);
        let parsed = rafka_protocol::RecordBatch::parse(batch.bytes()).unwrap();
        assert_eq!(parsed.header().record_count, 3);
        batch.succeed(Some(10));
        let offsets: Vec<_> = rxs
            .into_iter()
            .map(|mut rx| rx.try_recv().unwrap().unwrap().offset.unwrap().0)
            .collect();
        assert_eq!(offsets, vec![10, 11, 12]);
    }

    #[test]
    fn a_full_batch_is_ready_at_once_and_a_new_one_opens() {
        let t0 = Instant::now();
        let mut a = acc(200);
        let value = [7u8; 60];
        let mut wakes = 0;
        let mut keep = Vec::new();
        for _ in 0..4 {
            let (r, rx) = record(&value);
            keep.push(rx);
            wakes += usize::from(a.append("t", Some(0), 1, r, t0).unwrap().wake_sender);
        }
        assert!(
            wakes >= 2,
            "the first batch and its successor both wake the sender"
        );
        let ready = a.ready(t0);
        assert_eq!(ready.partitions.len(), 1);
        let first = a.take(&TopicPartition::new("t", 0)).unwrap();
        assert!(first.size_bytes() <= 200);
        // One batch in flight per partition: the second waits even though it exists.
        assert!(a.ready(t0 + Duration::from_secs(1)).partitions.is_empty());
        a.finish(&first.tp, first.order);
        assert_eq!(a.ready(t0 + Duration::from_secs(1)).partitions.len(), 1);
    }

    #[test]
    fn a_requeued_batch_goes_first_after_its_backoff() {
        let t0 = Instant::now();
        let mut a = acc(1 << 20);
        let tp = TopicPartition::new("t", 0);
        let (r1, _rx1) = record(b"first");
        a.append("t", Some(0), 1, r1, t0).unwrap();
        let mut first = a.take(&tp).unwrap();
        let (r2, _rx2) = record(b"second");
        a.append("t", Some(0), 1, r2, t0).unwrap();
        first.attempts += 1;
        let backoff = t0 + Duration::from_millis(100);
        a.requeue(first, backoff);
        assert!(a
            .ready(t0 + Duration::from_millis(50))
            .partitions
            .is_empty());
        let again = a.take(&tp).unwrap();
        assert_eq!(
            again.attempts, 1,
            "the retried batch comes before the newer one"
        );
        let values: Vec<_> = rafka_protocol::RecordBatch::parse(again.bytes())
            .unwrap()
            .records()
            .map(|r| r.unwrap().value.unwrap())
            .collect();
        assert_eq!(values, vec![Bytes::from_static(b"first")]);
    }

    #[test]
    fn unkeyed_records_move_on_when_a_batch_closes() {
        let t0 = Instant::now();
        let mut a = acc(1 << 20);
        let (r, _rx) = record(b"x");
        let p1 = a.append("t", None, 4, r, t0).unwrap().partition;
        let (r, _rx2) = record(b"y");
        assert_eq!(a.append("t", None, 4, r, t0).unwrap().partition, p1);
        let batch = a.take(&TopicPartition::new("t", p1)).unwrap();
        let (r, _rx3) = record(b"z");
        let p2 = a.append("t", None, 4, r, t0).unwrap().partition;
        assert_ne!(p1, p2);
        drop(batch);
    }

    #[test]
    fn expired_batches_are_removed_and_flush_sees_everything() {
        let t0 = Instant::now();
        let mut a = acc(1 << 20);
        let (r, _rx) = record(b"x");
        a.append("t", Some(1), 2, r, t0).unwrap();
        let signals = a.begin_flush();
        assert_eq!(signals.len(), 1);
        assert_eq!(a.ready(t0).partitions.len(), 1, "flushing ignores linger");
        a.end_flush();
        let expired = a.expire(t0 + Duration::from_secs(121));
        assert_eq!(expired.len(), 1);
        assert!(a.is_empty());
        drop(expired);
        // The batch is gone, so the flush signal has closed.
        assert!(signals[0].has_changed().is_err());
    }

    #[test]
    fn an_ambiguous_attempt_makes_the_final_error_unknown() {
        let t0 = Instant::now();
        let mut a = acc(1 << 20);
        let (r, _rx) = record(b"x");
        a.append("t", Some(0), 1, r, t0).unwrap();
        let mut batch = a.take(&TopicPartition::new("t", 0)).unwrap();
        batch.ambiguous = true;
        let e = batch.final_error(ClientError::broker(
            rafka_protocol::ErrorCode::NotLeader,
            "",
            "t",
            0,
        ));
        assert!(matches!(e, ClientError::OutcomeUnknown { .. }));
    }

    fn identity(id: i64) -> Identity {
        Identity {
            producer_id: rafka_protocol::ProducerId(id),
            epoch: rafka_protocol::ProducerEpoch(0),
        }
    }

    fn stamp_of(b: &ProducerBatch) -> (i64, i32) {
        let h = rafka_protocol::BatchHeader::parse(&b.bytes()).unwrap();
        (h.producer_id.0, h.base_sequence.0)
    }

    /// Ten one-record batches of partition t-0 under idempotence.
    fn idempotent_with_batches(
        n: usize,
    ) -> (Accumulator, Vec<oneshot::Receiver<Result<RecordMetadata>>>) {
        let t0 = Instant::now();
        let mut a = acc(100).with_idempotence(5);
        let mut rxs = Vec::new();
        let value = [1u8; 60];
        for _ in 0..n {
            let (r, rx) = record(&value);
            a.append("t", Some(0), 1, r, t0).unwrap();
            rxs.push(rx);
        }
        (a, rxs)
    }

    #[test]
    fn idempotent_batches_wait_for_an_identity_then_carry_consecutive_sequences() {
        let tp = TopicPartition::new("t", 0);
        let (mut a, _rxs) = idempotent_with_batches(10);
        assert!(a.needs_identity());
        assert!(a.take(&tp).is_none(), "nothing goes before InitProducerId");
        a.set_identity(identity(42));
        let train = a.take_train(&tp, usize::MAX);
        assert_eq!(
            train.len(),
            5,
            "at most five batches of a partition in flight"
        );
        let stamps: Vec<_> = train.iter().map(stamp_of).collect();
        assert_eq!(stamps, vec![(42, 0), (42, 1), (42, 2), (42, 3), (42, 4)]);
        let behind: Vec<bool> = train.iter().map(|b| b.sent_behind_unfinished).collect();
        assert_eq!(
            behind,
            vec![false, true, true, true, true],
            "a gap reported for any but the first may be reordering"
        );
        assert!(a.take(&tp).is_none(), "the in-flight limit is reached");
        a.finish(&tp, train[0].order);
        let next = a.take(&tp).expect("one slot freed");
        assert_eq!(stamp_of(&next), (42, 5));
    }

    #[test]
    fn a_retried_batch_keeps_its_sequence_and_goes_back_in_send_order_after_the_others_return() {
        let tp = TopicPartition::new("t", 0);
        let t0 = Instant::now();
        let (mut a, _rxs) = idempotent_with_batches(6);
        a.set_identity(identity(1));
        let mut train = a.take_train(&tp, usize::MAX);
        assert_eq!(train.len(), 5);
        let mut third = train.remove(2);
        let mut second = train.remove(1);
        third.attempts += 1;
        second.attempts += 1;
        // Requeued out of order: the queue still puts them back in send order.
        assert!(a.has_earlier_unfinished(&tp, third.order));
        a.requeue(third, t0);
        a.requeue(second, t0);
        // Three batches are still in flight: the retries wait for them.
        assert!(a.take(&tp).is_none());
        for b in train {
            a.finish(&tp, b.order);
        }
        let again = a.take_train(&tp, usize::MAX);
        assert_eq!(again.len(), 1, "a retried batch goes alone");
        assert_eq!(stamp_of(&again[0]), (1, 1));
        a.finish(&tp, again[0].order);
        // The second retry leads a train again, and the batch never sent rides behind it with
        // the next fresh sequence.
        let again = a.take_train(&tp, usize::MAX);
        let stamps: Vec<_> = again.iter().map(stamp_of).collect();
        assert_eq!(stamps, vec![(1, 2), (1, 5)]);
        assert!(!a.has_earlier_unfinished(&tp, again[0].order));
        assert!(a.has_earlier_unfinished(&tp, again[1].order));
    }

    #[test]
    fn a_stamped_batch_failing_for_good_makes_the_partition_start_over_with_a_new_identity() {
        let tp = TopicPartition::new("t", 0);
        let (mut a, _rxs) = idempotent_with_batches(2);
        a.set_identity(identity(7));
        let first = a.take(&tp).unwrap();
        a.finish(&tp, first.order);
        a.reset_sequences(&tp);
        assert!(a.needs_identity(), "a fresh producer id is needed");
        assert!(a.take(&tp).is_none());
        a.set_identity(identity(8));
        let next = a.take(&tp).unwrap();
        assert_eq!(stamp_of(&next), (8, 0));
    }

    fn epoch(id: i64, epoch: i16) -> Identity {
        Identity {
            producer_id: rafka_protocol::ProducerId(id),
            epoch: rafka_protocol::ProducerEpoch(epoch),
        }
    }

    fn header_of(b: &ProducerBatch) -> rafka_protocol::BatchHeader {
        rafka_protocol::BatchHeader::parse(&b.bytes()).unwrap()
    }

    /// A transactional accumulator with one-record batches queued for t-0 and t-1.
    fn transactional(
        per_partition: usize,
    ) -> (Accumulator, Vec<oneshot::Receiver<Result<RecordMetadata>>>) {
        let t0 = Instant::now();
        let mut a = acc(100).with_transactions(5);
        let mut rxs = Vec::new();
        let value = [1u8; 60];
        for _ in 0..per_partition {
            for p in 0..2 {
                let (r, rx) = record(&value);
                a.append("t", Some(p), 2, r, t0).unwrap();
                rxs.push(rx);
            }
        }
        (a, rxs)
    }

    #[test]
    fn transactional_batches_wait_until_their_partition_is_in_the_transaction() {
        let (tp0, tp1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let (mut a, _rxs) = transactional(2);
        a.set_identity(epoch(9, 3));
        let now = Instant::now() + Duration::from_secs(1);
        let ready = a.ready(now);
        assert!(
            ready.partitions.is_empty(),
            "nothing goes before AddPartitionsToTxn"
        );
        assert_eq!(ready.to_add, vec![tp0.clone(), tp1.clone()]);
        assert!(a.take(&tp0).is_none());
        a.start_adding(&ready.to_add);
        assert!(a.adding_in_flight());
        assert!(a.ready(now).to_add.is_empty(), "asked for once");
        // The coordinator added t-0 only (say t-1 is retried later).
        a.partitions_added(std::slice::from_ref(&tp0), epoch(9, 3));
        a.adding_failed(std::slice::from_ref(&tp1), epoch(9, 3));
        assert!(!a.adding_in_flight());
        let ready = a.ready(now);
        assert_eq!(ready.partitions, vec![tp0.clone()]);
        assert_eq!(
            ready.to_add,
            vec![tp1.clone()],
            "a failed add is asked for again"
        );
        let train = a.take_train(&tp0, usize::MAX);
        assert_eq!(train.len(), 2);
        for (i, b) in train.iter().enumerate() {
            let h = header_of(b);
            assert!(
                h.attributes.is_transactional(),
                "the transactional bit is set"
            );
            assert!(!h.attributes.is_control());
            assert_eq!(
                (h.producer_id.0, h.producer_epoch.0, h.base_sequence.0),
                (9, 3, i as i32)
            );
        }
    }

    #[test]
    fn an_answer_for_an_ended_transaction_is_ignored() {
        let tp0 = TopicPartition::new("t", 0);
        let (mut a, _rxs) = transactional(1);
        a.set_identity(epoch(9, 3));
        let ready = a.ready(Instant::now());
        a.start_adding(&ready.to_add);
        // An answer for epoch 2 (a transaction that ended) does not let the batches go.
        a.partitions_added(&ready.to_add, epoch(9, 2));
        assert!(a.take(&tp0).is_none());
        assert!(a.adding_in_flight());
    }

    #[test]
    fn a_new_epoch_restarts_every_partition_at_sequence_zero_outside_the_transaction() {
        let tp0 = TopicPartition::new("t", 0);
        let (mut a, _rxs) = transactional(3);
        a.set_identity(epoch(9, 3));
        let ready = a.ready(Instant::now());
        a.start_adding(&ready.to_add);
        a.partitions_added(&ready.to_add, epoch(9, 3));
        let train = a.take_train(&tp0, usize::MAX);
        assert_eq!(train.len(), 3);
        // Refused while batches are in flight or queued (t-1 was never sent).
        let e = a.switch_epoch(epoch(9, 4)).unwrap_err();
        assert!(e.contains("in flight") || e.contains("queued"), "{e}");
        for b in &train {
            a.finish(&tp0, b.order);
        }
        let tp1 = TopicPartition::new("t", 1);
        let t1 = a.take_train(&tp1, usize::MAX);
        for b in &t1 {
            a.finish(&tp1, b.order);
        }
        assert!(a.is_empty());
        a.switch_epoch(epoch(9, 4)).unwrap();
        assert_eq!(a.identity(), Some(epoch(9, 4)));
        // The next transaction: the partition must be added again, and starts at sequence 0.
        let (r, _rx) = record(b"next");
        a.append("t", Some(0), 2, r, Instant::now()).unwrap();
        let ready = a.ready(Instant::now());
        assert_eq!(ready.to_add, vec![tp0.clone()]);
        a.start_adding(&ready.to_add);
        a.partitions_added(&ready.to_add, epoch(9, 4));
        let next = a.take(&tp0).unwrap();
        let h = header_of(&next);
        assert_eq!(
            (h.producer_id.0, h.producer_epoch.0, h.base_sequence.0),
            (9, 4, 0)
        );
    }

    #[test]
    fn aborting_takes_every_queued_batch_but_not_those_in_flight() {
        let tp0 = TopicPartition::new("t", 0);
        let t0 = Instant::now();
        let (mut a, mut rxs) = transactional(3);
        a.set_identity(epoch(1, 0));
        let ready = a.ready(t0);
        a.start_adding(&ready.to_add);
        a.partitions_added(&ready.to_add, epoch(1, 0));
        let mut first = a.take(&tp0).unwrap();
        let second = a.take(&tp0).unwrap();
        // The first comes back for a retry; the second is still in flight.
        first.attempts += 1;
        a.requeue(first, t0);
        let aborted = a.abort_queued();
        assert_eq!(
            aborted.len(),
            5,
            "the retry, t-0's unsent batch and t-1's three"
        );
        assert!(!a.is_empty(), "the batch in flight stays");
        for b in aborted {
            b.fail(ClientError::Closed);
        }
        a.finish(&tp0, second.order);
        drop(second);
        assert!(a.is_empty());
        a.switch_epoch(epoch(1, 1)).unwrap();
        let failed = rxs
            .iter_mut()
            .map(|rx| rx.try_recv())
            .filter(|r| matches!(r, Ok(Err(ClientError::Closed))))
            .count();
        assert_eq!(failed, 5);
    }

    #[test]
    fn a_transactional_failure_keeps_the_identity() {
        let tp0 = TopicPartition::new("t", 0);
        let (mut a, _rxs) = transactional(1);
        a.set_identity(epoch(1, 0));
        let ready = a.ready(Instant::now());
        a.start_adding(&ready.to_add);
        a.partitions_added(&ready.to_add, epoch(1, 0));
        let b = a.take(&tp0).unwrap();
        a.finish(&tp0, b.order);
        a.reset_sequences(&tp0);
        assert!(
            !a.needs_identity(),
            "the transaction aborts and the next epoch resets sequences instead"
        );
    }

    #[test]
    fn identities_from_the_wire_are_checked() {
        assert_eq!(Identity::from_wire(5, 7).unwrap(), epoch(5, 7));
        assert!(Identity::from_wire(5, 40_000).is_err());
        assert!(Identity::from_wire(-1, 0).is_err());
        assert!(Identity::from_wire(5, -1).is_err());
    }
}

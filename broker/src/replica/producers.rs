//! Producer state of one partition: what makes a retried produce safe.
//!
//! Per producer id the partition remembers the producer's epoch and its last
//! [`BATCHES_PER_PRODUCER`] batches (sequence range and record offsets). The state is a function
//! of the committed log: the partition state machine feeds it every applied batch
//! ([`ProducerTable::apply`]), on every replica alike, so a new leader has it already. It is
//! stored with the state machine's snapshot and in `producer-state.json` beside the segments, so
//! a restart replays only the log written since (see `partition_sm`). It holds record offsets,
//! never Raft indexes (Redpanda #5356).
//!
//! The leader checks each incoming batch against it before proposing ([`Pending::plan`]).
//! Batches proposed but not yet applied are tracked in [`Pending`] (leader-only, per term), so
//! up to five requests per partition may be in flight from one producer:
//! - the next sequence (after the last applied or pending batch) is appended;
//! - a batch equal to one remembered is a duplicate and gets its original offsets back;
//! - a batch equal to a pending one waits for it and then gets its offsets;
//! - a gap is OUT_OF_ORDER_SEQUENCE_NUMBER, an older epoch INVALID_PRODUCER_EPOCH, a sequence
//!   older than the remembered window DUPLICATE_SEQUENCE_NUMBER, and an unknown producer that
//!   does not start at sequence 0 UNKNOWN_PRODUCER_ID.
//!
//! Sequence numbers wrap from `i32::MAX` to 0, as in Kafka.
//!
//! Transactions live here too, per partition: the first offset of each producer's open
//! transaction (the last stable offset, LSO, is the smallest of them, or the high watermark),
//! and the aborted transactions' offset ranges, which read_committed fetches hand to clients
//! so they drop those records. A COMMIT or ABORT marker (a control batch the transaction
//! coordinator has the leader append) ends a producer's open transaction and carries the
//! epoch of the producer's next transaction: applying it fences the old epoch here too.

use std::collections::{HashMap, VecDeque};

use rafka_protocol::batch::BatchHeader;
use rafka_protocol::{ErrorCode, Offset, ProducerId};
use serde::{Deserialize, Serialize};

/// Batches remembered per producer: Kafka's limit on requests in flight per partition with
/// idempotence.
pub const BATCHES_PER_PRODUCER: usize = 5;

/// How long a producer that writes nothing keeps its state (Kafka's
/// `producer.id.expiration.ms`).
pub const PRODUCER_ID_EXPIRATION_MS_DEFAULT: u64 = 24 * 3600 * 1000;

/// Sequences live in `0..=i32::MAX` and wrap.
const SEQUENCE_SPACE: i64 = i32::MAX as i64 + 1;

/// `seq` advanced by `n`, wrapping.
pub fn seq_add(seq: i32, n: i64) -> i32 {
    (i64::from(seq) + n).rem_euclid(SEQUENCE_SPACE) as i32
}

/// Whether `a` comes at or before `b` (within half the sequence space).
fn seq_at_or_before(a: i32, b: i32) -> bool {
    (i64::from(b) - i64::from(a)).rem_euclid(SEQUENCE_SPACE) < SEQUENCE_SPACE / 2
}

/// The idempotence fields of one batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchId {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
    pub last_seq: i32,
}

impl BatchId {
    /// `None` for a batch of a producer without idempotence.
    pub fn of(h: &BatchHeader) -> Option<BatchId> {
        if h.producer_id == ProducerId::NONE || h.attributes.is_control() {
            return None;
        }
        Some(BatchId {
            producer_id: h.producer_id.0,
            epoch: h.producer_epoch.0,
            first_seq: h.base_sequence.0,
            last_seq: seq_add(h.base_sequence.0, i64::from(h.last_offset_delta)),
        })
    }

    /// Refuses fields no producer may send: a negative producer id other than "none", a
    /// negative epoch or sequence.
    pub fn validate(h: &BatchHeader) -> Result<(), &'static str> {
        if h.producer_id == ProducerId::NONE {
            return Ok(());
        }
        if h.producer_id.0 < 0 {
            return Err("negative producer id");
        }
        if h.producer_epoch.0 < 0 {
            return Err("negative producer epoch with a producer id");
        }
        if h.base_sequence.0 < 0 {
            return Err("negative base sequence with a producer id");
        }
        Ok(())
    }
}

/// Where one remembered batch went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeqRange {
    pub first_seq: i32,
    pub last_seq: i32,
    pub base_offset: u64,
    pub last_offset: u64,
}

/// One producer's state on one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerEntry {
    pub epoch: i16,
    /// Oldest first, at most [`BATCHES_PER_PRODUCER`].
    pub batches: VecDeque<SeqRange>,
    /// The newest batch's max timestamp: expiry counts from it.
    pub last_timestamp_ms: i64,
}

impl ProducerEntry {
    fn find(&self, epoch: i16, first_seq: i32, last_seq: i32) -> Option<SeqRange> {
        if epoch != self.epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            .copied()
    }
}

/// An aborted transaction's records on one partition: `first_offset..=last_offset` (the last
/// is its ABORT marker) for batches of `producer_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: u64,
    pub last_offset: u64,
}

/// A producer's open transaction on one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenTxn {
    pub first_offset: u64,
    pub epoch: i16,
}

/// Every producer's state on one partition, as of the applied log up to `next_offset`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerTable {
    /// The offset after the last applied batch: batches below it are already in the table
    /// (applying one again changes nothing, so replays may overlap).
    pub next_offset: u64,
    pub producers: HashMap<i64, ProducerEntry>,
    /// Open transactions: producer id -> offset of its transaction's first batch here, and
    /// the transaction's epoch.
    #[serde(default)]
    pub ongoing: HashMap<i64, OpenTxn>,
    /// Aborted transactions, in marker order (so by `last_offset`); the ones wholly below the
    /// log start are dropped by [`ProducerTable::prune_aborted`].
    #[serde(default)]
    pub aborted: VecDeque<AbortedTxn>,
}

impl ProducerTable {
    /// Applies one committed batch that starts at `base_offset`. `marker` is `Some(commit)`
    /// for a transaction marker.
    pub fn apply(&mut self, h: &BatchHeader, base_offset: Offset, marker: Option<bool>) {
        let last_offset = base_offset.0 + h.last_offset_delta.max(0) as u64;
        if base_offset.0 < self.next_offset {
            return;
        }
        self.next_offset = last_offset + 1;
        if let Some(commit) = marker {
            self.apply_marker(h, base_offset.0, commit);
            return;
        }
        let Some(id) = BatchId::of(h) else {
            return;
        };
        if h.attributes.is_transactional() {
            self.ongoing.entry(id.producer_id).or_insert(OpenTxn {
                first_offset: base_offset.0,
                epoch: id.epoch,
            });
        }
        let range = SeqRange {
            first_seq: id.first_seq,
            last_seq: id.last_seq,
            base_offset: base_offset.0,
            last_offset,
        };
        let entry = self
            .producers
            .entry(id.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: id.epoch,
                batches: VecDeque::new(),
                last_timestamp_ms: h.max_timestamp,
            });
        if id.epoch > entry.epoch {
            entry.epoch = id.epoch;
            entry.batches.clear();
        } else if id.epoch < entry.epoch {
            // The leader refuses older epochs; should one be in the log anyway, it must not
            // take the producer back.
            return;
        }
        entry.batches.push_back(range);
        while entry.batches.len() > BATCHES_PER_PRODUCER {
            entry.batches.pop_front();
        }
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(h.max_timestamp);
    }

    /// A COMMIT or ABORT marker at `offset`: ends the producer's open transaction here and
    /// moves the producer to the marker's epoch (the next transaction's), where sequences
    /// start again at 0.
    ///
    /// A marker carries the epoch after its transaction, so it can only end a transaction of
    /// an older epoch. A stale one (a late retry from a coordinator that lost its shard, once
    /// the producer has moved on) is ignored: it must not end a later transaction.
    fn apply_marker(&mut self, h: &BatchHeader, offset: u64, commit: bool) {
        let pid = h.producer_id.0;
        let epoch = h.producer_epoch.0;
        if self.marker_is_stale(pid, epoch) {
            return;
        }
        if let Some(open) = self.ongoing.remove(&pid) {
            if !commit {
                self.aborted.push_back(AbortedTxn {
                    producer_id: pid,
                    first_offset: open.first_offset,
                    last_offset: offset,
                });
            }
        }
        let entry = self.producers.entry(pid).or_insert_with(|| ProducerEntry {
            epoch,
            batches: VecDeque::new(),
            last_timestamp_ms: h.max_timestamp,
        });
        if epoch > entry.epoch {
            entry.epoch = epoch;
            entry.batches.clear();
        }
        entry.last_timestamp_ms = entry.last_timestamp_ms.max(h.max_timestamp);
    }

    /// Whether a marker of `producer_id` with `epoch` belongs to a transaction older than the
    /// producer's current one here.
    pub fn marker_is_stale(&self, producer_id: i64, epoch: i16) -> bool {
        self.producers
            .get(&producer_id)
            .is_some_and(|e| e.epoch > epoch)
            || self
                .ongoing
                .get(&producer_id)
                .is_some_and(|o| o.epoch >= epoch)
    }

    /// The first offset a read_committed reader may not see yet: the start of the oldest
    /// open transaction, if any.
    pub fn first_unstable_offset(&self) -> Option<u64> {
        self.ongoing.values().map(|o| o.first_offset).min()
    }

    /// Aborted transactions with records in `from..to`.
    pub fn aborted_between(&self, from: u64, to: u64) -> Vec<AbortedTxn> {
        self.aborted
            .iter()
            .filter(|a| a.first_offset < to && a.last_offset >= from)
            .copied()
            .collect()
    }

    /// Forgets aborted transactions wholly below `log_start`.
    pub fn prune_aborted(&mut self, log_start: u64) -> bool {
        let before = self.aborted.len();
        while self
            .aborted
            .front()
            .is_some_and(|a| a.last_offset < log_start)
        {
            self.aborted.pop_front();
        }
        before != self.aborted.len()
    }

    /// Moves past entries without producer batches (control batches, Raft blanks).
    pub fn advance_to(&mut self, next: Offset) {
        self.next_offset = self.next_offset.max(next.0);
    }

    /// Forgets producers whose newest batch is older than `expiration_ms` at `now_ms`.
    /// Returns how many were removed.
    pub fn expire(&mut self, now_ms: i64, expiration_ms: u64) -> usize {
        let before = self.producers.len();
        let horizon = now_ms.saturating_sub(i64::try_from(expiration_ms).unwrap_or(i64::MAX));
        // A producer with an open transaction stays: its transaction must still be decided.
        let ongoing = &self.ongoing;
        self.producers
            .retain(|pid, e| e.last_timestamp_ms >= horizon || ongoing.contains_key(pid));
        before - self.producers.len()
    }

    pub fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.producers.get(&producer_id)
    }

    pub fn len(&self) -> usize {
        self.producers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }

    /// The offsets of a batch the table remembers.
    pub fn find(&self, id: &BatchId) -> Option<SeqRange> {
        self.get(id.producer_id)?
            .find(id.epoch, id.first_seq, id.last_seq)
    }
}

/// What the leader does with one incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// New and next in sequence: propose it.
    Append,
    /// Already applied: answer with these offsets.
    Duplicate(SeqRange),
    /// Proposed earlier and not applied yet: wait until it is, then answer with its offsets.
    InFlight(BatchId),
}

/// Why a batch is refused (nothing of the request is proposed then).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Debug, Clone, Copy)]
struct PendingBatch {
    epoch: i16,
    first_seq: i32,
    last_seq: i32,
}

/// Batches this leader proposed in its current term and has not seen applied yet.
#[derive(Debug, Default)]
pub struct Pending {
    term: u64,
    by_producer: HashMap<i64, VecDeque<PendingBatch>>,
}

impl Pending {
    /// Starts a new term: what an earlier term proposed is either applied by now (the caller
    /// waits until its own term's first entry is applied before checking) or gone.
    pub fn begin(&mut self, term: u64) {
        if term != self.term {
            self.term = term;
            self.by_producer.clear();
        }
    }

    /// Pending batches of `producer_id` that the table does not hold yet.
    fn prune(&mut self, table: &ProducerTable, producer_id: i64) {
        let Some(list) = self.by_producer.get_mut(&producer_id) else {
            return;
        };
        if let Some(entry) = table.get(producer_id) {
            let newest = entry.batches.back().map(|b| b.last_seq);
            while let Some(p) = list.front() {
                let applied = p.epoch < entry.epoch
                    || (p.first_seq < 0 && p.epoch <= entry.epoch)
                    || (p.epoch == entry.epoch
                        && newest.is_some_and(|n| seq_at_or_before(p.last_seq, n)));
                if !applied {
                    break;
                }
                list.pop_front();
            }
        }
        if list.is_empty() {
            self.by_producer.remove(&producer_id);
        }
    }

    /// Whether a marker of `producer_id` with `epoch` would be stale once everything pending
    /// is applied: the producer already wrote with that epoch or a later one.
    pub fn marker_is_stale(&self, table: &ProducerTable, producer_id: i64, epoch: i16) -> bool {
        table.marker_is_stale(producer_id, epoch)
            || self.by_producer.get(&producer_id).is_some_and(|list| {
                list.iter()
                    .any(|p| p.epoch > epoch || (p.first_seq >= 0 && p.epoch >= epoch))
            })
    }

    /// Records a transaction marker proposed for `producer_id` with `epoch`: from now on that
    /// is the producer's epoch here (older ones are fenced) and its next batch starts at
    /// sequence 0, even before the marker is applied.
    pub fn fence(&mut self, producer_id: i64, epoch: i16) {
        self.by_producer
            .entry(producer_id)
            .or_default()
            .push_back(PendingBatch {
                epoch,
                first_seq: -1,
                last_seq: -1,
            });
    }

    /// Decides every batch of one request, in order, and records the ones to append as
    /// pending. Either every batch gets a verdict or, on the first refusal, none is recorded.
    pub fn plan(
        &mut self,
        table: &ProducerTable,
        ids: &[Option<BatchId>],
    ) -> Result<Vec<Option<Verdict>>, Refusal> {
        let mut verdicts = Vec::with_capacity(ids.len());
        let mut added: Vec<(i64, PendingBatch)> = Vec::new();
        for id in ids {
            let Some(id) = id else {
                verdicts.push(None);
                continue;
            };
            self.prune(table, id.producer_id);
            match self.decide(table, id) {
                Ok(v) => {
                    if v == Verdict::Append {
                        let p = PendingBatch {
                            epoch: id.epoch,
                            first_seq: id.first_seq,
                            last_seq: id.last_seq,
                        };
                        self.by_producer
                            .entry(id.producer_id)
                            .or_default()
                            .push_back(p);
                        added.push((id.producer_id, p));
                    }
                    verdicts.push(Some(v));
                }
                Err(r) => {
                    for (pid, _) in added.into_iter().rev() {
                        if let Some(list) = self.by_producer.get_mut(&pid) {
                            list.pop_back();
                            if list.is_empty() {
                                self.by_producer.remove(&pid);
                            }
                        }
                    }
                    return Err(r);
                }
            }
        }
        Ok(verdicts)
    }

    fn decide(&self, table: &ProducerTable, id: &BatchId) -> Result<Verdict, Refusal> {
        let refuse = |code, message: String| Err(Refusal { code, message });
        let applied = table.get(id.producer_id);
        let pending = self.by_producer.get(&id.producer_id);
        let newest_pending = pending.and_then(|p| p.back());
        let current_epoch = match (applied.map(|a| a.epoch), newest_pending.map(|p| p.epoch)) {
            (Some(a), Some(p)) => Some(a.max(p)),
            (a, p) => a.or(p),
        };
        if let Some(current) = current_epoch {
            if id.epoch < current {
                return refuse(
                    ErrorCode::InvalidProducerEpoch,
                    format!(
                        "producer {} epoch {} is fenced: the partition has epoch {current}",
                        id.producer_id, id.epoch
                    ),
                );
            }
        }
        if let Some(found) = applied.and_then(|a| a.find(id.epoch, id.first_seq, id.last_seq)) {
            return Ok(Verdict::Duplicate(found));
        }
        if pending.is_some_and(|p| {
            p.iter().any(|b| {
                b.epoch == id.epoch && b.first_seq == id.first_seq && b.last_seq == id.last_seq
            })
        }) {
            return Ok(Verdict::InFlight(*id));
        }
        // The sequence the next batch must start at, in this epoch.
        let expected = match newest_pending.filter(|p| p.epoch == id.epoch) {
            Some(p) => Some(seq_add(p.last_seq, 1)),
            None => applied
                .filter(|a| a.epoch == id.epoch)
                .and_then(|a| a.batches.back())
                .map(|b| seq_add(b.last_seq, 1)),
        };
        match expected {
            Some(e) if e == id.first_seq => Ok(Verdict::Append),
            Some(e) if seq_at_or_before(id.first_seq, e) => refuse(
                ErrorCode::DuplicateSequenceNumber,
                format!(
                    "producer {} sequence {} is older than the last {BATCHES_PER_PRODUCER} \
                     batches remembered (next expected {e})",
                    id.producer_id, id.first_seq
                ),
            ),
            Some(e) => refuse(
                ErrorCode::OutOfOrderSequenceNumber,
                format!(
                    "producer {} sent sequence {} but {e} is next",
                    id.producer_id, id.first_seq
                ),
            ),
            // A new producer, or a new epoch: it starts at 0.
            None if id.first_seq == 0 => Ok(Verdict::Append),
            None if applied.is_none() && newest_pending.is_none() => refuse(
                ErrorCode::UnknownProducerId,
                format!(
                    "producer {} is unknown here (never seen, or expired) and its batch \
                     starts at sequence {}, not 0",
                    id.producer_id, id.first_seq
                ),
            ),
            None => refuse(
                ErrorCode::OutOfOrderSequenceNumber,
                format!(
                    "producer {} epoch {} must start at sequence 0, not {}",
                    id.producer_id, id.epoch, id.first_seq
                ),
            ),
        }
    }
}

/// For a transaction marker (a control batch of a producer), whether it commits; `None` for
/// any other batch. `batch` starts with one whole batch.
pub fn marker_kind(h: &BatchHeader, batch: &[u8]) -> Option<bool> {
    if !h.attributes.is_control() || h.producer_id == ProducerId::NONE {
        return None;
    }
    let total = h.batch_length as usize + rafka_protocol::batch::LOG_OVERHEAD_BYTES;
    let raw = bytes::Bytes::copy_from_slice(batch.get(..total)?);
    let parsed = rafka_protocol::RecordBatch::parse(raw).ok()?;
    let record = parsed.records().next()?.ok()?;
    match rafka_protocol::batch::control_type(record.key.as_deref()?)? {
        rafka_protocol::api::control_type::COMMIT => Some(true),
        rafka_protocol::api::control_type::ABORT => Some(false),
        _ => None,
    }
}

/// Name of the file beside the segments that holds the table as of some applied offset.
pub const STATE_FILE: &str = "producer-state.json";

/// A partition replica's producer state: the applied table (written by the state machine,
/// read by the leader) and the leader's pending batches. The pending side is a Tokio mutex
/// because the leader holds it from checking a request's batches until they are handed to
/// Raft, in order, so that two requests of one producer cannot interleave their checks and
/// proposals.
#[derive(Debug)]
pub struct ProducerState {
    table: std::sync::Mutex<ProducerTable>,
    pub pending: tokio::sync::Mutex<Pending>,
    pub expiration_ms: u64,
}

impl ProducerState {
    pub fn new(table: ProducerTable, expiration_ms: u64) -> ProducerState {
        ProducerState {
            table: std::sync::Mutex::new(table),
            pending: tokio::sync::Mutex::new(Pending::default()),
            expiration_ms,
        }
    }

    /// The applied table, locked (briefly: never across an await).
    pub fn table(&self) -> std::sync::MutexGuard<'_, ProducerTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafka_protocol::{BatchBuilder, BatchOptions, ProducerEpoch, Sequence, Timestamp};

    fn header(pid: i64, epoch: i16, seq: i32, records: usize) -> BatchHeader {
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: ProducerId(pid),
            producer_epoch: ProducerEpoch(epoch),
            base_sequence: Sequence(seq),
            ..BatchOptions::default()
        });
        for _ in 0..records {
            b.append(Some(Timestamp(1_000)), None, Some(b"v"), &[]);
        }
        BatchHeader::parse(&b.build()).unwrap()
    }

    fn id(pid: i64, epoch: i16, seq: i32, records: i32) -> Option<BatchId> {
        Some(BatchId {
            producer_id: pid,
            epoch,
            first_seq: seq,
            last_seq: seq_add(seq, i64::from(records - 1)),
        })
    }

    #[test]
    fn next_sequence_appends_and_a_retry_gets_its_offsets_back() {
        let mut table = ProducerTable::default();
        let mut pending = Pending::default();
        pending.begin(1);
        assert_eq!(
            pending.plan(&table, &[id(7, 0, 0, 3)]).unwrap(),
            vec![Some(Verdict::Append)]
        );
        // Retried while in flight: wait for it.
        assert!(matches!(
            pending.plan(&table, &[id(7, 0, 0, 3)]).unwrap()[0],
            Some(Verdict::InFlight(_))
        ));
        // The next one may go while the first is in flight.
        assert_eq!(
            pending.plan(&table, &[id(7, 0, 3, 2)]).unwrap(),
            vec![Some(Verdict::Append)]
        );
        table.apply(&header(7, 0, 0, 3), Offset(10), None);
        table.apply(&header(7, 0, 3, 2), Offset(13), None);
        let v = pending.plan(&table, &[id(7, 0, 0, 3)]).unwrap();
        assert_eq!(
            v[0],
            Some(Verdict::Duplicate(SeqRange {
                first_seq: 0,
                last_seq: 2,
                base_offset: 10,
                last_offset: 12
            }))
        );
        assert_eq!(
            pending.plan(&table, &[id(7, 0, 5, 1)]).unwrap(),
            vec![Some(Verdict::Append)]
        );
    }

    #[test]
    fn gaps_old_epochs_and_unknown_producers_are_refused_and_nothing_is_recorded() {
        let mut table = ProducerTable::default();
        let mut pending = Pending::default();
        pending.begin(1);
        table.apply(&header(7, 2, 0, 1), Offset(0), None);
        let code = |r: Result<_, Refusal>| r.unwrap_err().code;
        assert_eq!(
            code(pending.plan(&table, &[id(7, 2, 5, 1)])),
            ErrorCode::OutOfOrderSequenceNumber
        );
        assert_eq!(
            code(pending.plan(&table, &[id(7, 1, 1, 1)])),
            ErrorCode::InvalidProducerEpoch
        );
        assert_eq!(
            code(pending.plan(&table, &[id(8, 0, 4, 1)])),
            ErrorCode::UnknownProducerId
        );
        // A refusal in the middle of a request records none of its batches.
        assert_eq!(
            code(pending.plan(&table, &[id(7, 2, 1, 1), id(7, 2, 9, 1)])),
            ErrorCode::OutOfOrderSequenceNumber
        );
        assert_eq!(
            pending.plan(&table, &[id(7, 2, 1, 1)]).unwrap(),
            vec![Some(Verdict::Append)]
        );
        // A new epoch starts over at 0, and fences the old one.
        assert_eq!(
            pending.plan(&table, &[id(7, 3, 0, 1)]).unwrap(),
            vec![Some(Verdict::Append)]
        );
        assert_eq!(
            code(pending.plan(&table, &[id(7, 2, 2, 1)])),
            ErrorCode::InvalidProducerEpoch
        );
    }

    #[test]
    fn only_five_batches_are_remembered_and_older_ones_are_duplicates_without_offsets() {
        let mut table = ProducerTable::default();
        let mut pending = Pending::default();
        pending.begin(1);
        for i in 0..8 {
            table.apply(&header(1, 0, i, 1), Offset(i as u64), None);
        }
        assert_eq!(table.get(1).unwrap().batches.len(), BATCHES_PER_PRODUCER);
        assert!(matches!(
            pending.plan(&table, &[id(1, 0, 4, 1)]).unwrap()[0],
            Some(Verdict::Duplicate(SeqRange { base_offset: 4, .. }))
        ));
        assert_eq!(
            pending.plan(&table, &[id(1, 0, 1, 1)]).unwrap_err().code,
            ErrorCode::DuplicateSequenceNumber
        );
    }

    #[test]
    fn applying_again_changes_nothing_and_expiry_forgets_idle_producers() {
        let mut table = ProducerTable::default();
        table.apply(&header(1, 0, 0, 2), Offset(0), None);
        let once = table.clone();
        table.apply(&header(1, 0, 0, 2), Offset(0), None);
        assert_eq!(table, once);
        table.apply(&header(2, 0, 0, 1), Offset(2), None);
        assert_eq!(table.expire(1_000 + 500, 1_000), 0);
        assert_eq!(table.expire(1_000 + 1_001, 1_000), 2);
        assert!(table.is_empty());
    }

    fn marker(pid: i64, epoch: i16, commit: bool) -> (BatchHeader, Option<bool>) {
        let raw = rafka_protocol::batch::transaction_marker(
            ProducerId(pid),
            ProducerEpoch(epoch),
            commit,
            Timestamp(1_000),
        );
        let h = BatchHeader::parse(&raw).unwrap();
        let kind = marker_kind(&h, &raw);
        assert_eq!(kind, Some(commit));
        (h, kind)
    }

    fn txn_header(pid: i64, epoch: i16, seq: i32) -> BatchHeader {
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: ProducerId(pid),
            producer_epoch: ProducerEpoch(epoch),
            base_sequence: Sequence(seq),
            transactional: true,
            ..BatchOptions::default()
        });
        b.append(Some(Timestamp(1_000)), None, Some(b"v"), &[]);
        BatchHeader::parse(&b.build()).unwrap()
    }

    #[test]
    fn a_stale_marker_never_ends_a_later_transaction() {
        let mut t = ProducerTable::default();
        // Transaction at epoch 3 (offsets 0..), committed by a marker with epoch 4.
        t.apply(&txn_header(7, 3, 0), Offset(0), None);
        let (m, k) = marker(7, 4, true);
        t.apply(&m, Offset(1), k);
        assert!(t.ongoing.is_empty());
        // The next transaction, epoch 4, is open at offset 2.
        t.apply(&txn_header(7, 4, 0), Offset(2), None);
        assert_eq!(t.first_unstable_offset(), Some(2));
        // A late copy of the epoch-4 marker, and an older abort: both ignored.
        let (m, k) = marker(7, 4, true);
        t.apply(&m, Offset(3), k);
        let (m, k) = marker(7, 3, false);
        t.apply(&m, Offset(4), k);
        assert_eq!(t.first_unstable_offset(), Some(2), "still open");
        assert!(t.aborted.is_empty());
        assert!(t.marker_is_stale(7, 4));
        // Its own marker (epoch 5) ends it.
        let (m, k) = marker(7, 5, false);
        t.apply(&m, Offset(5), k);
        assert_eq!(t.first_unstable_offset(), None);
        assert_eq!(
            t.aborted.back().copied(),
            Some(AbortedTxn {
                producer_id: 7,
                first_offset: 2,
                last_offset: 5
            })
        );
    }

    #[test]
    fn sequences_wrap() {
        assert_eq!(seq_add(i32::MAX, 1), 0);
        assert!(seq_at_or_before(i32::MAX, 0));
        assert!(!seq_at_or_before(0, i32::MAX));
        let mut table = ProducerTable::default();
        let mut pending = Pending::default();
        pending.begin(1);
        table.apply(&header(1, 0, i32::MAX - 1, 2), Offset(0), None);
        assert_eq!(
            pending.plan(&table, &[id(1, 0, 0, 1)]).unwrap(),
            vec![Some(Verdict::Append)]
        );
    }
}

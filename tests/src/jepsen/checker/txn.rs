//! The checks of the `txn` workload: transactional producers write unique values to a few
//! partitions per transaction and commit or abort it; read_committed consumers poll
//! throughout; after the run every partition is read whole, read_uncommitted (the log as it
//! is, aborted records included) and then read_committed. From the history alone:
//!
//! - A transaction is all or nothing: the read_committed final read has every value of a
//!   committed (`ok`) transaction ([`LOST`]), none of an aborted (`fail`) one
//!   ([`ABORTED_READ`]), and of one whose outcome is unknown (`info`) all or none
//!   ([`PARTIAL`], which judges every transaction). A transaction that a read_committed poll
//!   saw during the run was committed, so its values must survive too ([`LOST`]).
//! - read_committed never shows what is not committed yet: no read_committed read may return a
//!   value of an aborted transaction, and none may complete before its transaction's commit
//!   was even asked for ([`READ_BEFORE_COMMIT`]: the last stable offset passed an open
//!   transaction).
//! - A worker's transactions are sequential (one transactional id; the next begins only after
//!   the previous one ended or its producer was fenced by a new instance, which completes or
//!   aborts it first), so on every partition the final read has a worker's transactions in
//!   their order, and each transaction's values in their send order ([`REORDERED`]).
//! - Every value appears once ([`DUPLICATED`], and [`DUPLICATED_IN_LOG`] for the whole log:
//!   transactional producers are idempotent), only where it was written ([`UNEXPECTED`]),
//!   every offset holds one value whoever read it ([`INCONSISTENT_OFFSETS`]), and every record
//!   the broker acknowledged is at its acknowledged offset in the log, whatever its
//!   transaction's end ([`ACK_OFFSET_MISMATCH`]).
//! - The final reads are there ([`FINAL_READ_MISSING`]) and the read_committed one reached the
//!   end of the log: transactions left open must have been aborted by their timeout
//!   ([`FINAL_READ_INCOMPLETE`]: the last stable offset stuck below records of the log).
//!
//! Costs: one pass collects the transactions, a second the reads (per value its sightings,
//! per partition and offset the value read there, the final logs); the checks then run over
//! those maps, linear in the history plus a log factor for the final logs.

mod anomaly;

pub use anomaly::{TxnAnomaly, TxnReadKind, TxnReader, TxnRef, UnexpectedWhy, ValueAt};

use std::collections::{btree_map, hash_map, BTreeMap, HashMap, HashSet};

use super::{Anomaly, AnomalyKind, Findings, Headline, HistoryAnomaly, Severity};
use super::{MALFORMED_HISTORY, NEMESIS_PROCESS};
use crate::jepsen::history::{Op, OpType, Payload, TxnReadValue, TxnValue};

pub static LOST: AnomalyKind = AnomalyKind {
    name: "lost",
    severity: Severity::Invalid,
    headline: Some(Headline::Lost),
    meaning: "a value of a committed transaction (acknowledged, or seen by a read_committed \
              poll) that is not in the read_committed final read",
};

pub static ABORTED_READ: AnomalyKind = AnomalyKind {
    name: "aborted_read",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a value of a certainly aborted transaction returned by a read_committed read",
};

pub static PARTIAL: AnomalyKind = AnomalyKind {
    name: "partial",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a transaction only part of whose values are in the read_committed final read \
              (whatever its outcome: a transaction is all or nothing)",
};

pub static DUPLICATED: AnomalyKind = AnomalyKind {
    name: "duplicated",
    severity: Severity::Invalid,
    headline: Some(Headline::Duplicated),
    meaning: "a value at two or more offsets of the read_committed final read",
};

/// The whole log, aborted records included: a transactional producer is idempotent, so the
/// broker writes each of its records once however often it was retried.
pub static DUPLICATED_IN_LOG: AnomalyKind = AnomalyKind {
    name: "duplicated_in_log",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a value at two or more offsets of the read_uncommitted final read (the log)",
};

pub static UNEXPECTED: AnomalyKind = AnomalyKind {
    name: "unexpected",
    severity: Severity::Invalid,
    headline: Some(Headline::Unexpected),
    meaning: "a value read that no transaction wrote, or read in another partition than the \
              one it was written to",
};

pub static REORDERED: AnomalyKind = AnomalyKind {
    name: "reordered",
    severity: Severity::Invalid,
    headline: Some(Headline::Reordered),
    meaning: "in a partition of the read_committed final read, a worker's transactions out of \
              their order, or a transaction's values out of their send order",
};

pub static READ_BEFORE_COMMIT: AnomalyKind = AnomalyKind {
    name: "read_before_commit",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a read_committed read returned a value of a transaction before that \
              transaction's commit was asked for (the last stable offset passed an open \
              transaction)",
};

pub static INCONSISTENT_OFFSETS: AnomalyKind = AnomalyKind {
    name: "inconsistent_offsets",
    severity: Severity::Invalid,
    headline: None,
    meaning: "one offset of a partition read with different values (by polls or the final \
              reads)",
};

pub static ACK_OFFSET_MISMATCH: AnomalyKind = AnomalyKind {
    name: "ack_offset_mismatch",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a record the broker acknowledged is not at its acknowledged offset in the \
              read_uncommitted final read (the log), whatever its transaction's end",
};

pub static FINAL_READ_MISSING: AnomalyKind = AnomalyKind {
    name: "final_read_missing",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a partition that committed transactions wrote to has no ok read_committed or \
              read_uncommitted final read, so it was not checked",
};

pub static FINAL_READ_INCOMPLETE: AnomalyKind = AnomalyKind {
    name: "final_read_incomplete",
    severity: Severity::Invalid,
    headline: None,
    meaning: "the read_committed final read stopped below records of the log: the last \
              stable offset never reached the end (a transaction left open was never aborted)",
};

static KINDS: [&AnomalyKind; 12] = [
    &LOST,
    &ABORTED_READ,
    &PARTIAL,
    &DUPLICATED,
    &DUPLICATED_IN_LOG,
    &UNEXPECTED,
    &REORDERED,
    &READ_BEFORE_COMMIT,
    &INCONSISTENT_OFFSETS,
    &ACK_OFFSET_MISMATCH,
    &FINAL_READ_MISSING,
    &FINAL_READ_INCOMPLETE,
];

/// Counts the report carries that are not anomalies.
pub const NOTES: [&str; 5] = [
    "txn_committed",
    "txn_aborted",
    "txn_unknown",
    "txn_unknown_committed",
    "aborted_records_in_log",
];

/// Whether an operation belongs to the txn workload.
pub fn is_txn_op(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::Txn(_)
            | Payload::TxnPoll(_)
            | Payload::TxnFinalRead(_)
            | Payload::TxnFinalReadUncommitted(_)
    )
}

/// A transaction as the history recorded it.
#[derive(Debug)]
struct Txn {
    worker: u32,
    n: u64,
    writes: Vec<(u32, Vec<String>)>,
    invoke_index: u64,
    /// `None` while (or if forever) it is open.
    outcome: Option<OpType>,
    complete_index: Option<u64>,
    commit_ns: Option<u64>,
    acked: Vec<(u32, u64, String)>,
}

impl Txn {
    fn reference(&self) -> TxnRef {
        TxnRef {
            worker: self.worker,
            txn: self.n,
            op_index: self.complete_index.unwrap_or(self.invoke_index),
            outcome: self.outcome,
        }
    }

    /// Committed for sure.
    fn committed(&self) -> bool {
        self.outcome == Some(OpType::Ok)
    }

    /// Aborted for sure.
    fn aborted(&self) -> bool {
        self.outcome == Some(OpType::Fail)
    }

    fn partitions(&self) -> impl Iterator<Item = u32> + '_ {
        self.writes.iter().map(|(p, _)| *p)
    }
}

/// Where a value was written: its transaction, partition, and place in the partition's send
/// order.
#[derive(Debug, Clone, Copy)]
struct Written {
    txn: usize,
    partition: u32,
    k: usize,
}

/// A read that returned a value where it was written.
#[derive(Debug, Clone, Copy)]
struct Sighting {
    offset: u64,
    reader: TxnReader,
    /// The read's completion time.
    time_ns: u64,
}

/// Everything known about one value.
#[derive(Debug)]
struct Value {
    text: String,
    written: Option<Written>,
    /// The first read_committed read (poll or final) that returned it where it was written.
    first_committed: Option<Sighting>,
    /// The first read_committed poll during the run that did.
    first_poll: Option<Sighting>,
    /// Distinct offsets of its partition where the read_committed final read has it.
    in_final: Vec<u64>,
    /// Distinct offsets of its partition where the read_uncommitted final read has it.
    in_log: Vec<u64>,
    /// Partitions it was read in but not written to: the first read there.
    misplaced: Vec<(u32, u64, TxnReader)>,
}

/// Values interned to dense ids, in the order first seen.
#[derive(Debug, Default)]
struct Values {
    ids: HashMap<String, usize>,
    all: Vec<Value>,
}

impl Values {
    fn id(&mut self, text: &str) -> usize {
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        let id = self.all.len();
        self.ids.insert(text.to_string(), id);
        self.all.push(Value {
            text: text.to_string(),
            written: None,
            first_committed: None,
            first_poll: None,
            in_final: Vec::new(),
            in_log: Vec::new(),
            misplaced: Vec::new(),
        });
        id
    }
}

/// The first value read at a `(partition, offset)`.
#[derive(Debug)]
struct Slot {
    value: usize,
    read_by: TxnReader,
}

#[derive(Debug)]
struct Conflict {
    partition: u32,
    offset: u64,
    values: Vec<usize>,
    read_by: Vec<TxnReader>,
}

/// What the two passes over the history collect.
#[derive(Debug, Default)]
struct Collected {
    txns: Vec<Txn>,
    by_key: HashMap<(u32, u64), usize>,
    /// Per process, its open transaction.
    open: HashMap<i64, usize>,
    values: Values,
    slots: HashMap<(u32, u64), Slot>,
    conflicts: Vec<Conflict>,
    conflict_at: HashMap<(u32, u64), usize>,
    /// Per partition, offset → value id: the union of the ok read_committed final reads.
    final_logs: BTreeMap<u32, BTreeMap<u64, usize>>,
    /// The same for the read_uncommitted final reads.
    raw_logs: BTreeMap<u32, BTreeMap<u64, usize>>,
    /// Per partition, the furthest position the read_committed final read reached.
    reached: BTreeMap<u32, u64>,
}

/// Runs the txn checks over a history and records what they find.
pub fn check(ops: &[Op], findings: &mut Findings) {
    for kind in KINDS {
        findings.declare(kind);
    }
    let mut c = Collected::default();
    for op in ops {
        if let Payload::Txn(value) = &op.payload {
            c.txn(op, value, findings);
        }
    }
    for op in ops {
        if op.process == NEMESIS_PROCESS || op.kind != OpType::Ok {
            continue;
        }
        let (f, read) = match &op.payload {
            Payload::TxnPoll(read) => (TxnReadKind::Poll, read),
            Payload::TxnFinalRead(read) => (TxnReadKind::FinalRead, read),
            Payload::TxnFinalReadUncommitted(read) => (TxnReadKind::FinalReadUncommitted, read),
            _ => continue,
        };
        c.read(op, f, read);
    }
    c.notes(findings);
    c.final_reads_missing(findings);
    c.final_read_incomplete(findings);
    c.lost(findings);
    c.aborted_read(findings);
    c.partial(findings);
    c.duplicated(findings);
    c.unexpected(findings);
    c.reordered(findings);
    c.read_before_commit(findings);
    c.inconsistent(findings);
    c.ack_offsets(findings);
}

fn record(findings: &mut Findings, kind: &'static AnomalyKind, anomaly: TxnAnomaly) {
    findings.record(kind, Anomaly::Txn(anomaly));
}

fn malformed(findings: &mut Findings, op: &Op, problem: String) {
    findings.record(
        &MALFORMED_HISTORY,
        Anomaly::History(HistoryAnomaly {
            op_index: Some(op.index),
            process: Some(op.process),
            problem,
        }),
    );
}

impl Collected {
    /// A transaction's invocation or completion.
    fn txn(&mut self, op: &Op, value: &TxnValue, findings: &mut Findings) {
        let key = (value.worker, value.txn);
        if op.kind == OpType::Invoke {
            if self.by_key.contains_key(&key) {
                malformed(
                    findings,
                    op,
                    format!(
                        "transaction {} of worker {} invoked a second time",
                        value.txn, value.worker
                    ),
                );
                return;
            }
            let id = self.txns.len();
            self.txns.push(Txn {
                worker: value.worker,
                n: value.txn,
                writes: value.writes.clone(),
                invoke_index: op.index,
                outcome: None,
                complete_index: None,
                commit_ns: None,
                acked: Vec::new(),
            });
            self.by_key.insert(key, id);
            self.open.insert(op.process, id);
            for (partition, values) in &value.writes {
                for (k, text) in values.iter().enumerate() {
                    let v = self.values.id(text);
                    if self.values.all[v].written.is_some() {
                        malformed(
                            findings,
                            op,
                            format!("value {text:?} written a second time"),
                        );
                        continue;
                    }
                    self.values.all[v].written = Some(Written {
                        txn: id,
                        partition: *partition,
                        k,
                    });
                }
            }
            return;
        }
        // A completion: of its process's open transaction (the pairing reports completions
        // without one; such a completion still names its transaction).
        let id = match self.open.remove(&op.process) {
            Some(id) => id,
            None => match self.by_key.get(&key) {
                Some(&id) => id,
                None => return,
            },
        };
        let txn = &mut self.txns[id];
        if (txn.worker, txn.n) != key {
            malformed(
                findings,
                op,
                format!(
                    "completes transaction {} of worker {} but invoked transaction {} of \
                     worker {}",
                    value.txn, value.worker, txn.n, txn.worker
                ),
            );
        }
        if txn.outcome.is_some() {
            return;
        }
        txn.outcome = Some(op.kind);
        txn.complete_index = Some(op.index);
        txn.commit_ns = value.commit_ns;
        txn.acked = value.acked.clone();
        if op.kind == OpType::Ok && value.commit_ns.is_none() {
            malformed(
                findings,
                op,
                format!(
                    "transaction {} of worker {} committed without saying when its commit \
                     was asked for",
                    value.txn, value.worker
                ),
            );
        }
    }

    /// An ok read: notes every record for every check.
    fn read(&mut self, op: &Op, f: TxnReadKind, read: &TxnReadValue) {
        let reader = TxnReader {
            f,
            process: op.process,
            op_index: op.index,
        };
        let partition = read.partition;
        match f {
            TxnReadKind::FinalRead => {
                self.final_logs.entry(partition).or_default();
                let last = read.records.iter().map(|(o, _)| o + 1).max();
                let to = read.to.into_iter().chain(last).max().unwrap_or(read.from);
                let reached = self.reached.entry(partition).or_default();
                *reached = (*reached).max(to);
            }
            TxnReadKind::FinalReadUncommitted => {
                self.raw_logs.entry(partition).or_default();
            }
            TxnReadKind::Poll => {}
        }
        for (offset, text) in &read.records {
            let id = self.values.id(text);
            self.observe(partition, *offset, id, reader);
            let log = match f {
                TxnReadKind::FinalRead => self.final_logs.get_mut(&partition),
                TxnReadKind::FinalReadUncommitted => self.raw_logs.get_mut(&partition),
                TxnReadKind::Poll => None,
            };
            if let Some(log) = log {
                // A second value at one offset is an inconsistency (`observe`); the log keeps
                // the first.
                if let btree_map::Entry::Vacant(e) = log.entry(*offset) {
                    e.insert(id);
                }
            }
            let value = &mut self.values.all[id];
            let here = value.written.is_some_and(|w| w.partition == partition);
            if !here {
                if !value.misplaced.iter().any(|(p, _, _)| *p == partition) {
                    value.misplaced.push((partition, *offset, reader));
                }
                continue;
            }
            let sighting = Sighting {
                offset: *offset,
                reader,
                time_ns: op.time_ns,
            };
            if f.committed() && value.first_committed.is_none() {
                value.first_committed = Some(sighting);
            }
            let offsets = match f {
                TxnReadKind::Poll => {
                    value.first_poll.get_or_insert(sighting);
                    continue;
                }
                TxnReadKind::FinalRead => &mut value.in_final,
                TxnReadKind::FinalReadUncommitted => &mut value.in_log,
            };
            if !offsets.contains(offset) {
                offsets.push(*offset);
            }
        }
    }

    /// Notes a record read at `(partition, offset)`, for inconsistent offsets.
    fn observe(&mut self, partition: u32, offset: u64, id: usize, reader: TxnReader) {
        match self.slots.entry((partition, offset)) {
            hash_map::Entry::Vacant(e) => {
                e.insert(Slot {
                    value: id,
                    read_by: reader,
                });
            }
            hash_map::Entry::Occupied(e) if e.get().value != id => {
                let first = e.get();
                let conflicts = &mut self.conflicts;
                let at = *self
                    .conflict_at
                    .entry((partition, offset))
                    .or_insert_with(|| {
                        conflicts.push(Conflict {
                            partition,
                            offset,
                            values: vec![first.value],
                            read_by: vec![first.read_by],
                        });
                        conflicts.len() - 1
                    });
                let conflict = &mut self.conflicts[at];
                if !conflict.values.contains(&id) {
                    conflict.values.push(id);
                    conflict.read_by.push(reader);
                }
            }
            hash_map::Entry::Occupied(_) => {}
        }
    }

    /// The values of a transaction: `(partition, value id)`.
    fn values_of(&self, txn: &Txn) -> Vec<(u32, usize)> {
        txn.writes
            .iter()
            .flat_map(|(p, values)| values.iter().map(move |v| (*p, v)))
            .filter_map(|(p, v)| self.values.ids.get(v.as_str()).map(|&id| (p, id)))
            .collect()
    }

    /// Whether the read_committed final read has any value of the transaction.
    fn visible(&self, txn: &Txn) -> bool {
        self.values_of(txn)
            .iter()
            .any(|&(_, id)| !self.values.all[id].in_final.is_empty())
    }

    fn notes(&self, findings: &mut Findings) {
        let count = |f: &dyn Fn(&Txn) -> bool| self.txns.iter().filter(|t| f(t)).count();
        let unknown = |t: &Txn| !t.committed() && !t.aborted();
        findings
            .notes
            .insert("txn_committed", count(&|t| t.committed()));
        findings
            .notes
            .insert("txn_aborted", count(&|t| t.aborted()));
        findings.notes.insert("txn_unknown", count(&unknown));
        findings.notes.insert(
            "txn_unknown_committed",
            count(&|t| unknown(t) && self.visible(t)),
        );
        findings.indeterminate += count(&unknown);
        // Records of the log whose transaction the read_committed final read does not show.
        let mut shown: HashMap<usize, bool> = HashMap::new();
        let mut aborted_in_log = 0;
        for log in self.raw_logs.values() {
            for &id in log.values() {
                let Some(w) = self.values.all[id].written else {
                    continue;
                };
                let visible = *shown
                    .entry(w.txn)
                    .or_insert_with(|| self.visible(&self.txns[w.txn]));
                if !visible {
                    aborted_in_log += 1;
                }
            }
        }
        findings
            .notes
            .insert("aborted_records_in_log", aborted_in_log);
    }

    fn final_reads_missing(&self, findings: &mut Findings) {
        let mut committed: BTreeMap<u32, usize> = BTreeMap::new();
        for txn in self.txns.iter().filter(|t| t.committed()) {
            for p in txn.partitions() {
                *committed.entry(p).or_default() += 1;
            }
        }
        for (partition, committed_txns) in committed {
            let mut missing = Vec::new();
            if !self.final_logs.contains_key(&partition) {
                missing.push(TxnReadKind::FinalRead);
            }
            if !self.raw_logs.contains_key(&partition) {
                missing.push(TxnReadKind::FinalReadUncommitted);
            }
            if !missing.is_empty() {
                record(
                    findings,
                    &FINAL_READ_MISSING,
                    TxnAnomaly::FinalReadMissing {
                        partition,
                        committed_txns,
                        missing,
                    },
                );
            }
        }
    }

    /// The read_committed final read must reach every record of the log (the read_uncommitted
    /// final read ran first, so the log's end it saw is a lower bound).
    fn final_read_incomplete(&self, findings: &mut Findings) {
        for (&partition, &reached) in &self.reached {
            let Some(raw) = self.raw_logs.get(&partition) else {
                continue;
            };
            let mut past = raw.range(reached..);
            let Some((&first_offset, &first_id)) = past.next() else {
                continue;
            };
            record(
                findings,
                &FINAL_READ_INCOMPLETE,
                TxnAnomaly::FinalReadIncomplete {
                    partition,
                    reached,
                    records_past: 1 + past.count(),
                    first_offset,
                    first_value: self.values.all[first_id].text.clone(),
                },
            );
        }
    }

    /// Values of committed transactions (acknowledged, or shown to a read_committed poll)
    /// missing from the read_committed final read.
    fn lost(&self, findings: &mut Findings) {
        for txn in &self.txns {
            if txn.aborted() {
                continue;
            }
            let values = self.values_of(txn);
            let polled = values
                .iter()
                .find_map(|&(_, id)| self.values.all[id].first_poll);
            if !txn.committed() && polled.is_none() {
                continue;
            }
            for (partition, id) in values {
                if !self.final_logs.contains_key(&partition) {
                    continue; // final_read_missing
                }
                let value = &self.values.all[id];
                if !value.in_final.is_empty() {
                    continue;
                }
                let acked_offset = txn
                    .acked
                    .iter()
                    .find(|(p, _, v)| *p == partition && *v == value.text)
                    .map(|(_, o, _)| *o);
                record(
                    findings,
                    &LOST,
                    TxnAnomaly::Lost {
                        partition,
                        value: value.text.clone(),
                        of: txn.reference(),
                        acked_offset,
                        polled: value.first_poll.map(|s| (s.offset, s.reader)),
                    },
                );
            }
        }
    }

    /// Values of aborted transactions that a read_committed read returned.
    fn aborted_read(&self, findings: &mut Findings) {
        for txn in self.txns.iter().filter(|t| t.aborted()) {
            for (partition, id) in self.values_of(txn) {
                let value = &self.values.all[id];
                let Some(seen) = value.first_committed else {
                    continue;
                };
                record(
                    findings,
                    &ABORTED_READ,
                    TxnAnomaly::AbortedRead {
                        partition,
                        offset: seen.offset,
                        value: value.text.clone(),
                        of: txn.reference(),
                        read_by: seen.reader,
                    },
                );
            }
        }
    }

    /// Transactions only partly in the read_committed final read.
    fn partial(&self, findings: &mut Findings) {
        for txn in &self.txns {
            if !txn.partitions().all(|p| self.final_logs.contains_key(&p)) {
                continue; // final_read_missing
            }
            let values = self.values_of(txn);
            let (present, missing): (Vec<_>, Vec<_>) = values
                .iter()
                .partition(|(_, id)| !self.values.all[*id].in_final.is_empty());
            let (Some(&(pp, pid)), Some(&(mp, mid))) = (present.first(), missing.first()) else {
                continue;
            };
            record(
                findings,
                &PARTIAL,
                TxnAnomaly::Partial {
                    of: txn.reference(),
                    present: present.len(),
                    written: values.len(),
                    missing: (mp, self.values.all[mid].text.clone()),
                    present_example: (pp, self.values.all[pid].text.clone()),
                },
            );
        }
    }

    fn duplicated(&self, findings: &mut Findings) {
        for value in &self.values.all {
            let Some(w) = value.written else { continue };
            for (kind, read, offsets) in [
                (&DUPLICATED, TxnReadKind::FinalRead, &value.in_final),
                (
                    &DUPLICATED_IN_LOG,
                    TxnReadKind::FinalReadUncommitted,
                    &value.in_log,
                ),
            ] {
                if offsets.len() < 2 {
                    continue;
                }
                let mut offsets = offsets.clone();
                offsets.sort_unstable();
                record(
                    findings,
                    kind,
                    TxnAnomaly::Duplicated {
                        partition: w.partition,
                        value: value.text.clone(),
                        offsets,
                        read,
                        of: self.txns[w.txn].reference(),
                    },
                );
            }
        }
    }

    /// One anomaly per value and partition it should not have been read in.
    fn unexpected(&self, findings: &mut Findings) {
        for value in &self.values.all {
            for &(partition, offset, read_by) in &value.misplaced {
                let why = match value.written {
                    None => UnexpectedWhy::NeverWritten,
                    Some(w) => UnexpectedWhy::WrongPartition {
                        written_to: w.partition,
                    },
                };
                record(
                    findings,
                    &UNEXPECTED,
                    TxnAnomaly::Unexpected {
                        partition,
                        offset,
                        value: value.text.clone(),
                        why,
                        read_by,
                    },
                );
            }
        }
    }

    /// Per partition of the read_committed final read, in offset order: each worker's values
    /// must come in (transaction, send) order. Each value counts at its first offset only
    /// (the others are duplicates).
    fn reordered(&self, findings: &mut Findings) {
        for (&partition, log) in &self.final_logs {
            let mut seen: HashSet<usize> = HashSet::new();
            // Per worker: (transaction, place in send order, value id, offset).
            let mut last: HashMap<u32, (u64, usize, usize, u64)> = HashMap::new();
            for (&offset, &id) in log {
                let Some(w) = self.values.all[id].written else {
                    continue;
                };
                if w.partition != partition || !seen.insert(id) {
                    continue;
                }
                let txn = &self.txns[w.txn];
                let here = (txn.n, w.k, id, offset);
                if let Some(&(n, k, previous, previous_offset)) = last.get(&txn.worker) {
                    if (txn.n, w.k) < (n, k) {
                        record(
                            findings,
                            &REORDERED,
                            TxnAnomaly::Reordered {
                                partition,
                                worker: txn.worker,
                                earlier: ValueAt {
                                    value: self.values.all[id].text.clone(),
                                    txn: txn.n,
                                    offset,
                                },
                                later: ValueAt {
                                    value: self.values.all[previous].text.clone(),
                                    txn: n,
                                    offset: previous_offset,
                                },
                            },
                        );
                    }
                }
                last.insert(txn.worker, here);
            }
        }
    }

    /// Transactions (committed or unknown; an aborted one seen is `aborted_read`) that a
    /// read_committed read returned before their commit was asked for.
    fn read_before_commit(&self, findings: &mut Findings) {
        for txn in &self.txns {
            if txn.aborted() || txn.outcome.is_none() {
                continue;
            }
            let first = self
                .values_of(txn)
                .into_iter()
                .filter_map(|(p, id)| Some((p, id, self.values.all[id].first_committed?)))
                .min_by_key(|(_, _, s)| (s.time_ns, s.reader.op_index));
            let Some((partition, id, seen)) = first else {
                continue;
            };
            let early = match txn.commit_ns {
                Some(commit_ns) => seen.time_ns < commit_ns,
                // An ok one without it is malformed_history.
                None => !txn.committed(),
            };
            if early {
                record(
                    findings,
                    &READ_BEFORE_COMMIT,
                    TxnAnomaly::ReadBeforeCommit {
                        partition,
                        offset: seen.offset,
                        value: self.values.all[id].text.clone(),
                        of: txn.reference(),
                        read_by: seen.reader,
                        read_completed_ns: seen.time_ns,
                        commit_ns: txn.commit_ns,
                    },
                );
            }
        }
    }

    fn inconsistent(&self, findings: &mut Findings) {
        for conflict in &self.conflicts {
            record(
                findings,
                &INCONSISTENT_OFFSETS,
                TxnAnomaly::InconsistentOffset {
                    partition: conflict.partition,
                    offset: conflict.offset,
                    values: conflict
                        .values
                        .iter()
                        .map(|&id| self.values.all[id].text.clone())
                        .collect(),
                    read_by: conflict.read_by.clone(),
                },
            );
        }
    }

    /// Every acknowledged record, of any transaction, at its offset of the log.
    fn ack_offsets(&self, findings: &mut Findings) {
        for txn in &self.txns {
            for (partition, acked_offset, text) in &txn.acked {
                let Some(log) = self.raw_logs.get(partition) else {
                    continue; // nothing to compare with
                };
                let Some(&id) = self.values.ids.get(text.as_str()) else {
                    continue;
                };
                let value = &self.values.all[id];
                let mut read_at = if value.written.is_some_and(|w| w.partition == *partition) {
                    value.in_log.clone()
                } else {
                    Vec::new()
                };
                read_at.sort_unstable();
                let at_acked = log.get(acked_offset).copied();
                // Acknowledged means in the log (a majority has it) at that offset, whatever
                // the transaction's end: nothing there is as wrong as another value.
                let mismatch = at_acked != Some(id);
                if mismatch {
                    record(
                        findings,
                        &ACK_OFFSET_MISMATCH,
                        TxnAnomaly::AckOffsetMismatch {
                            partition: *partition,
                            value: text.clone(),
                            acked_offset: *acked_offset,
                            value_at_acked_offset: at_acked
                                .map(|id| self.values.all[id].text.clone()),
                            read_at,
                            of: txn.reference(),
                        },
                    );
                }
            }
        }
    }
}

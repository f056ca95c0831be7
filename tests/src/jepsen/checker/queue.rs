//! The checks of the `queue` workload: producers send unique values to partitions, consumers
//! poll them, and after the run a final read returns every partition's whole log. Modelled on
//! Jepsen's Kafka queue checker (lost, duplicated, reordered, unexpected, non-monotonic polls),
//! working from the history alone.
//!
//! One pass over the history collects, per value, its send and every offset it was read at,
//! per `(partition, offset)` the value read there, per consumer the offsets it was given, and
//! the final log of each partition (the union of the `ok` final reads); the checks then run over
//! those maps, so the cost is linear in the history (plus a log factor for the final logs).
//!
//! What counts as what, in short (each [`AnomalyKind`] below says more):
//! - Only an `ok` send must be in the final read. An `info` send may or may not be there; a
//!   `fail` send must not be (reading it back is `unexpected`).
//! - Duplicates are invalid for idempotent producers only; see [`DUPLICATED_NON_IDEMPOTENT`].
//! - A partition whose final read is missing is not checked for lost writes but is itself an
//!   anomaly, so a broken workload cannot pass by never reading back.
//!
//! The `group` workload sends and reads back the same way, so these checks run on its history
//! too: its members' polls ([`ReadKind::GroupPoll`]) count as reads for lost, unexpected and
//! inconsistent values, but not for the per-consumer order checks (`non_monotonic_polls`,
//! `skipped`): a group member legitimately goes back to a committed offset or jumps ahead to
//! one when the group moves a partition. Those two kinds are only declared when the history
//! has `poll`s.

mod anomaly;

pub use anomaly::{QueueAnomaly, ReadKind, Reader, SendAt, UnexpectedWhy};

use std::collections::btree_map;
use std::collections::{BTreeMap, HashMap};

use super::{Anomaly, AnomalyKind, Findings, Headline, HistoryAnomaly, Severity};
use super::{MALFORMED_HISTORY, NEMESIS_PROCESS};
use crate::jepsen::history::{Op, OpType, Payload, ReadValue, SendValue};

/// Lost: a value the final read of its partition lacks although its send was acknowledged, or
/// although a poll was given it there. A consumer is only given committed records, so one
/// that a poll saw must survive even if its send ended `info` (as Jepsen counts it).
pub static LOST: AnomalyKind = AnomalyKind {
    name: "lost",
    severity: Severity::Invalid,
    headline: Some(Headline::Lost),
    meaning: "a value acknowledged ok, or given to a consumer, that is not in the final read \
              of its partition",
};

pub static ACK_OFFSET_MISMATCH: AnomalyKind = AnomalyKind {
    name: "ack_offset_mismatch",
    severity: Severity::Invalid,
    headline: None,
    meaning: "the offset acknowledged to an ok send holds another value in the final read, \
              or nothing although the log goes on past it or the value is elsewhere",
};

/// Duplicates from an idempotent producer: the broker must write each record once however
/// often the producer retried (KIP-98), so one is enough to make the run invalid.
pub static DUPLICATED_IDEMPOTENT: AnomalyKind = AnomalyKind {
    name: "duplicated_idempotent",
    severity: Severity::Invalid,
    headline: Some(Headline::Duplicated),
    meaning: "a value of an idempotent producer read at two or more offsets",
};

/// Duplicates from a non-idempotent producer are reported but do not make the run invalid:
/// without idempotence Kafka promises at-least-once, and a producer that retries a batch whose
/// acknowledgement was lost writes it twice. The history does not show the client library's
/// internal retries, so every such duplicate (of an `ok` or an `info` send alike) is counted
/// here, and never as invalid.
pub static DUPLICATED_NON_IDEMPOTENT: AnomalyKind = AnomalyKind {
    name: "duplicated_non_idempotent",
    severity: Severity::Reported,
    headline: Some(Headline::Duplicated),
    meaning: "a value of a non-idempotent producer read at two or more offsets \
              (at-least-once allows it after a retry)",
};

pub static INCONSISTENT_OFFSETS: AnomalyKind = AnomalyKind {
    name: "inconsistent_offsets",
    severity: Severity::Invalid,
    headline: None,
    meaning: "one offset of a partition read with different values (by polls or the final read)",
};

pub static REORDERED: AnomalyKind = AnomalyKind {
    name: "reordered",
    severity: Severity::Invalid,
    headline: Some(Headline::Reordered),
    meaning: "a producer's ok send is at a lower offset in the final read than its previous \
              ok send to the same partition",
};

pub static UNEXPECTED: AnomalyKind = AnomalyKind {
    name: "unexpected",
    severity: Severity::Invalid,
    headline: Some(Headline::Unexpected),
    meaning: "a value read that was never sent, whose send failed, or read in another \
              partition than it was sent to",
};

pub static NON_MONOTONIC_POLLS: AnomalyKind = AnomalyKind {
    name: "non_monotonic_polls",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a poll returned an offset at or below one its consumer had already been given \
              on that partition",
};

pub static SKIPPED: AnomalyKind = AnomalyKind {
    name: "skipped",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a consumer's next record came after records of the final read it was never given",
};

pub static FINAL_READ_MISSING: AnomalyKind = AnomalyKind {
    name: "final_read_missing",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a partition with ok sends has no ok final read, so nothing of it was checked",
};

static KINDS: [&AnomalyKind; 10] = [
    &LOST,
    &ACK_OFFSET_MISMATCH,
    &DUPLICATED_IDEMPOTENT,
    &DUPLICATED_NON_IDEMPOTENT,
    &INCONSISTENT_OFFSETS,
    &REORDERED,
    &UNEXPECTED,
    &NON_MONOTONIC_POLLS,
    &SKIPPED,
    &FINAL_READ_MISSING,
];

/// The kinds that judge `poll`s alone (per-consumer order), not group polls.
static POLL_ONLY_KINDS: [&AnomalyKind; 2] = [&NON_MONOTONIC_POLLS, &SKIPPED];

/// A send as the history recorded it.
#[derive(Debug)]
struct Send {
    partition: u32,
    process: i64,
    invoke_index: u64,
    idempotent: bool,
    /// `None` while (or if forever) it is open.
    outcome: Option<OpType>,
    acked_offset: Option<u64>,
    complete_index: Option<u64>,
}

/// Where a value was read, the first time it was read there.
#[derive(Debug)]
struct Position {
    partition: u32,
    offset: u64,
    first_read_by: Reader,
}

/// Everything known about one value.
#[derive(Debug)]
struct Value {
    text: String,
    send: Option<Send>,
    /// Every distinct `(partition, offset)` it was read at, by any read.
    positions: Vec<Position>,
    /// Every distinct `(partition, offset)` the final read has it at.
    in_final: Vec<(u32, u64)>,
}

/// Values interned to dense ids, in the order first seen (so reports come out in history
/// order, not hash order).
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
            send: None,
            positions: Vec::new(),
            in_final: Vec::new(),
        });
        id
    }
}

/// The first value read at a `(partition, offset)`.
#[derive(Debug)]
struct Slot {
    value: usize,
    read_by: Reader,
}

#[derive(Debug)]
struct Conflict {
    partition: u32,
    offset: u64,
    values: Vec<usize>,
    read_by: Vec<Reader>,
}

/// Offsets `lo..hi` a consumer passed over between two records; an anomaly if the final read
/// has a record there.
#[derive(Debug)]
struct Gap {
    partition: u32,
    process: i64,
    op_index: u64,
    lo: u64,
    hi: u64,
}

/// What one pass over the history collects.
#[derive(Debug, Default)]
struct Collected {
    values: Values,
    slots: HashMap<(u32, u64), Slot>,
    conflicts: Vec<Conflict>,
    conflict_at: HashMap<(u32, u64), usize>,
    /// Per partition, offset → value id: the union of the ok final reads.
    final_logs: HashMap<u32, BTreeMap<u64, usize>>,
    /// Per `(consumer process, partition)`, the highest offset it has been given.
    consumed: HashMap<(i64, u32), u64>,
    gaps: Vec<Gap>,
    /// Per `(producer process, partition)`, its sends in invocation order. A BTreeMap so the
    /// report lists them in a stable order.
    sends_by_producer: BTreeMap<(i64, u32), Vec<usize>>,
    ok_sends_per_partition: BTreeMap<u32, usize>,
}

/// Runs the queue checks over a history and records what they find.
pub fn check(ops: &[Op], findings: &mut Findings) {
    let has_polls = ops.iter().any(|op| matches!(op.payload, Payload::Poll(_)));
    for kind in KINDS {
        if has_polls || !POLL_ONLY_KINDS.iter().any(|k| k.name == kind.name) {
            findings.declare(kind);
        }
    }
    let mut c = Collected::default();
    for op in ops {
        if op.process == NEMESIS_PROCESS {
            continue;
        }
        match &op.payload {
            Payload::Send(send) => c.send(op, send, findings),
            Payload::Poll(read) if op.kind == OpType::Ok => c.poll(op, read, findings),
            Payload::FinalRead(read) if op.kind == OpType::Ok => c.final_read(op, read),
            Payload::GroupPoll(read) | Payload::GroupFinalRead(read) if op.kind == OpType::Ok => {
                let reader = Reader {
                    f: ReadKind::GroupPoll,
                    process: op.process,
                    op_index: op.index,
                };
                for (partition, offset, text) in &read.records {
                    let id = c.values.id(text);
                    c.observe(*partition, *offset, id, reader);
                }
            }
            _ => {}
        }
    }
    c.final_reads_missing(findings);
    c.lost_and_misplaced(findings);
    c.duplicated(findings);
    c.unexpected(findings);
    c.reordered(findings);
    c.inconsistent(findings);
    c.skipped(findings);
}

fn record(findings: &mut Findings, kind: &'static AnomalyKind, anomaly: QueueAnomaly) {
    findings.record(kind, Anomaly::Queue(anomaly));
}

impl Collected {
    fn send(&mut self, op: &Op, sent: &SendValue, findings: &mut Findings) {
        let id = self.values.id(&sent.value);
        let malformed = |problem: String| {
            Anomaly::History(HistoryAnomaly {
                op_index: Some(op.index),
                process: Some(op.process),
                problem,
            })
        };
        let value = &mut self.values.all[id];
        if op.kind == OpType::Invoke {
            if value.send.is_some() {
                findings.record(
                    &MALFORMED_HISTORY,
                    malformed(format!("value {:?} sent a second time", sent.value)),
                );
                return;
            }
            value.send = Some(Send {
                partition: sent.partition,
                process: op.process,
                invoke_index: op.index,
                idempotent: sent.idempotent,
                outcome: None,
                acked_offset: None,
                complete_index: None,
            });
            self.sends_by_producer
                .entry((op.process, sent.partition))
                .or_default()
                .push(id);
            return;
        }
        // A completion. One without an invocation is reported by the pairing; it still
        // says the value was sent, so it is taken as its own invocation.
        let send = value.send.get_or_insert(Send {
            partition: sent.partition,
            process: op.process,
            invoke_index: op.index,
            idempotent: sent.idempotent,
            outcome: None,
            acked_offset: None,
            complete_index: None,
        });
        if send.outcome.is_some() {
            return;
        }
        send.outcome = Some(op.kind);
        send.complete_index = Some(op.index);
        send.acked_offset = sent.offset;
        match op.kind {
            OpType::Ok => {
                *self
                    .ok_sends_per_partition
                    .entry(send.partition)
                    .or_default() += 1;
                if sent.offset.is_none() {
                    findings.record(
                        &MALFORMED_HISTORY,
                        malformed(format!(
                            "ok send of {:?} without an acknowledged offset",
                            sent.value
                        )),
                    );
                }
            }
            OpType::Info => findings.indeterminate += 1,
            OpType::Fail | OpType::Invoke => {}
        }
    }

    /// Notes a record read at `(partition, offset)`: for duplicates, inconsistent offsets and
    /// unexpected values.
    fn observe(&mut self, partition: u32, offset: u64, id: usize, reader: Reader) {
        match self.slots.entry((partition, offset)) {
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Slot {
                    value: id,
                    read_by: reader,
                });
            }
            std::collections::hash_map::Entry::Occupied(e) if e.get().value != id => {
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
            std::collections::hash_map::Entry::Occupied(_) => {}
        }
        let positions = &mut self.values.all[id].positions;
        if !positions
            .iter()
            .any(|p| p.partition == partition && p.offset == offset)
        {
            positions.push(Position {
                partition,
                offset,
                first_read_by: reader,
            });
        }
    }

    fn poll(&mut self, op: &Op, read: &ReadValue, findings: &mut Findings) {
        let reader = Reader {
            f: ReadKind::Poll,
            process: op.process,
            op_index: op.index,
        };
        let key = (op.process, read.partition);
        let mut last = self.consumed.get(&key).copied();
        let mut backwards = None;
        for (offset, text) in &read.records {
            let id = self.values.id(text);
            self.observe(read.partition, *offset, id, reader);
            // A consumer is a fresh process each time the workload restarts one, so within a
            // process every record must come after the ones before (history.rs).
            let lo = match last {
                Some(prev) if *offset <= prev => {
                    backwards.get_or_insert((prev, *offset));
                    continue;
                }
                Some(prev) => prev + 1,
                // Its first record: anything between where it started and that record was
                // passed over. (Kafka may return records below the fetch position from the
                // start of a batch; they pass over nothing.)
                None => read.from,
            };
            if *offset > lo {
                self.gaps.push(Gap {
                    partition: read.partition,
                    process: op.process,
                    op_index: op.index,
                    lo,
                    hi: *offset,
                });
            }
            last = Some(*offset);
        }
        if let Some(last) = last {
            self.consumed.insert(key, last);
        }
        if let Some((previous_offset, offset)) = backwards {
            record(
                findings,
                &NON_MONOTONIC_POLLS,
                QueueAnomaly::NonMonotonicPoll {
                    partition: read.partition,
                    process: op.process,
                    op_index: op.index,
                    previous_offset,
                    offset,
                },
            );
        }
    }

    fn final_read(&mut self, op: &Op, read: &ReadValue) {
        let reader = Reader {
            f: ReadKind::FinalRead,
            process: op.process,
            op_index: op.index,
        };
        // An ok final read of an empty partition still counts as one.
        self.final_logs.entry(read.partition).or_default();
        for (offset, text) in &read.records {
            let id = self.values.id(text);
            self.observe(read.partition, *offset, id, reader);
            // A second value at one offset is an inconsistency, reported by `observe`; the log
            // keeps the first.
            if let btree_map::Entry::Vacant(e) = self
                .final_logs
                .get_mut(&read.partition)
                .expect("inserted above")
                .entry(*offset)
            {
                e.insert(id);
            }
            let in_final = &mut self.values.all[id].in_final;
            if !in_final.contains(&(read.partition, *offset)) {
                in_final.push((read.partition, *offset));
            }
        }
    }

    fn final_reads_missing(&self, findings: &mut Findings) {
        for (&partition, &ok_sends) in &self.ok_sends_per_partition {
            if !self.final_logs.contains_key(&partition) {
                record(
                    findings,
                    &FINAL_READ_MISSING,
                    QueueAnomaly::FinalReadMissing {
                        partition,
                        ok_sends,
                    },
                );
            }
        }
    }

    /// Lost values and acknowledged offsets that do not hold their value. One send can be
    /// both: lost, and its offset holding another value.
    fn lost_and_misplaced(&self, findings: &mut Findings) {
        for value in &self.values.all {
            let Some(send) = &value.send else { continue };
            let acked = send.outcome == Some(OpType::Ok);
            // A failed send that a poll saw is unexpected, not lost.
            let polled = (send.outcome != Some(OpType::Fail))
                .then(|| {
                    value.positions.iter().find(|p| {
                        p.partition == send.partition && p.first_read_by.f != ReadKind::FinalRead
                    })
                })
                .flatten();
            if !acked && polled.is_none() {
                continue;
            }
            let Some(log) = self.final_logs.get(&send.partition) else {
                continue; // reported as final_read_missing
            };
            let op_index = send.complete_index.unwrap_or(send.invoke_index);
            let read_at = offsets_in(&value.in_final, send.partition);
            if read_at.is_empty() {
                record(
                    findings,
                    &LOST,
                    QueueAnomaly::Lost {
                        partition: send.partition,
                        value: value.text.clone(),
                        acked_offset: send.acked_offset.filter(|_| acked),
                        process: send.process,
                        op_index,
                        polled: polled.map(|p| (p.offset, p.first_read_by)),
                    },
                );
            }
            if !acked {
                continue;
            }
            let Some(acked) = send.acked_offset else {
                continue; // reported as malformed_history
            };
            let at_acked = log.get(&acked).copied();
            let mismatch = match at_acked {
                Some(id) => self.values.all[id].text != value.text,
                // Nothing at the offset: wrong if the value is elsewhere, or if the log goes on
                // past the offset (a truncated log that ends before it is plainly lost).
                None => !read_at.is_empty() || log.range(acked + 1..).next().is_some(),
            };
            if mismatch {
                record(
                    findings,
                    &ACK_OFFSET_MISMATCH,
                    QueueAnomaly::AckOffsetMismatch {
                        partition: send.partition,
                        value: value.text.clone(),
                        acked_offset: acked,
                        value_at_acked_offset: at_acked.map(|id| self.values.all[id].text.clone()),
                        read_at,
                        process: send.process,
                        op_index,
                    },
                );
            }
        }
    }

    /// Values read at two or more offsets of the partition they were sent to. Values never
    /// sent, or read in another partition, are `unexpected` instead.
    fn duplicated(&self, findings: &mut Findings) {
        for value in &self.values.all {
            let Some(send) = &value.send else { continue };
            let mut at: Vec<&Position> = value
                .positions
                .iter()
                .filter(|p| p.partition == send.partition)
                .collect();
            if at.len() < 2 {
                continue;
            }
            let first_read_by = at[0].first_read_by;
            at.sort_by_key(|p| p.offset);
            let kind = if send.idempotent {
                &DUPLICATED_IDEMPOTENT
            } else {
                &DUPLICATED_NON_IDEMPOTENT
            };
            record(
                findings,
                kind,
                QueueAnomaly::Duplicated {
                    partition: send.partition,
                    value: value.text.clone(),
                    offsets: at.iter().map(|p| p.offset).collect(),
                    idempotent: send.idempotent,
                    send_outcome: send.outcome,
                    process: send.process,
                    first_read_by,
                },
            );
        }
    }

    /// One anomaly per value and partition it should not have been read in.
    fn unexpected(&self, findings: &mut Findings) {
        for value in &self.values.all {
            let mut reported: Vec<u32> = Vec::new();
            for position in &value.positions {
                let why = match &value.send {
                    None => UnexpectedWhy::NeverSent,
                    Some(send) if send.outcome == Some(OpType::Fail) => UnexpectedWhy::SendFailed,
                    Some(send) if send.partition != position.partition => {
                        UnexpectedWhy::WrongPartition {
                            sent_to: send.partition,
                        }
                    }
                    Some(_) => continue,
                };
                if reported.contains(&position.partition) {
                    continue;
                }
                reported.push(position.partition);
                record(
                    findings,
                    &UNEXPECTED,
                    QueueAnomaly::Unexpected {
                        partition: position.partition,
                        value: value.text.clone(),
                        offset: position.offset,
                        why,
                        read_by: position.first_read_by,
                    },
                );
            }
        }
    }

    /// A producer has one operation open at a time, so its ok sends to a partition, in
    /// invocation order, must sit at increasing offsets of the final read. Sends missing from
    /// the final read (lost) are passed over; each is compared with the previous one found.
    fn reordered(&self, findings: &mut Findings) {
        for (&(process, partition), ids) in &self.sends_by_producer {
            let mut previous: Option<SendAt> = None;
            for &id in ids {
                let value = &self.values.all[id];
                let Some(send) = &value.send else { continue };
                if send.outcome != Some(OpType::Ok) {
                    continue;
                }
                let Some(&offset) = offsets_in(&value.in_final, partition).first() else {
                    continue;
                };
                let here = SendAt {
                    value: value.text.clone(),
                    op_index: send.complete_index.expect("completed ok"),
                    offset,
                };
                if let Some(earlier) = previous.take() {
                    if here.offset <= earlier.offset {
                        record(
                            findings,
                            &REORDERED,
                            QueueAnomaly::Reordered {
                                partition,
                                process,
                                earlier,
                                later: here.clone(),
                            },
                        );
                    }
                }
                previous = Some(here);
            }
        }
    }

    fn inconsistent(&self, findings: &mut Findings) {
        for conflict in &self.conflicts {
            record(
                findings,
                &INCONSISTENT_OFFSETS,
                QueueAnomaly::InconsistentOffset {
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

    /// Gaps in what a consumer was given are fine where the log has no record (transaction
    /// markers and aborted batches occupy offsets too); only records of the final read count.
    fn skipped(&self, findings: &mut Findings) {
        for gap in &self.gaps {
            let Some(log) = self.final_logs.get(&gap.partition) else {
                continue;
            };
            let mut skipped = log.range(gap.lo..gap.hi);
            let Some((&first_offset, &first_id)) = skipped.next() else {
                continue;
            };
            record(
                findings,
                &SKIPPED,
                QueueAnomaly::Skipped {
                    partition: gap.partition,
                    process: gap.process,
                    op_index: gap.op_index,
                    expected_from: gap.lo,
                    offset: gap.hi,
                    skipped_records: 1 + skipped.count(),
                    first_skipped_offset: first_offset,
                    first_skipped_value: self.values.all[first_id].text.clone(),
                },
            );
        }
    }
}

/// The offsets, ascending, among `positions` that are in `partition`.
fn offsets_in(positions: &[(u32, u64)], partition: u32) -> Vec<u64> {
    let mut offsets: Vec<u64> = positions
        .iter()
        .filter(|(p, _)| *p == partition)
        .map(|(_, o)| *o)
        .collect();
    offsets.sort_unstable();
    offsets
}

#[cfg(test)]
mod tests {
    use super::super::check as check_history;
    use super::super::synthetic::{HistoryBuilder, Producer};

    #[test]
    fn records_below_a_polls_position_are_not_a_skip() {
        // Kafka may return a whole batch from its start, below the fetch position.
        let mut h = HistoryBuilder::new();
        h.send_ok(0, 0, "0-0", 0, Producer::Idempotent);
        h.send_ok(0, 0, "0-1", 1, Producer::Idempotent);
        h.poll_ok(1, 0, 1, &[(0, "0-0"), (1, "0-1")]);
        h.final_read_ok(2, 0, 0, &[(0, "0-0"), (1, "0-1")]);
        let report = check_history(&h.ops());
        assert!(report.valid, "{}", report.summary());
    }

    #[test]
    fn a_log_truncated_before_an_acknowledged_offset_is_lost_not_misplaced() {
        let mut h = HistoryBuilder::new();
        h.send_ok(0, 0, "0-0", 0, Producer::Idempotent);
        h.send_ok(0, 0, "0-1", 1, Producer::Idempotent);
        h.final_read_ok(2, 0, 0, &[(0, "0-0")]);
        let report = check_history(&h.ops());
        assert_eq!((report.lost, report.count("ack_offset_mismatch")), (1, 0));
    }

    #[test]
    fn a_failed_send_is_never_lost() {
        let mut h = HistoryBuilder::new();
        h.send_fail(0, 0, "0-0", Producer::Idempotent);
        h.send_ok(0, 0, "0-1", 0, Producer::Idempotent);
        h.final_read_ok(2, 0, 0, &[(0, "0-1")]);
        let report = check_history(&h.ops());
        assert!(report.valid, "{}", report.summary());
    }

    #[test]
    fn an_ok_send_without_its_offset_is_malformed() {
        let mut h = HistoryBuilder::new();
        h.send_ok(0, 0, "0-0", 0, Producer::Idempotent);
        let mut ops = h.ops();
        if let crate::jepsen::history::Payload::Send(s) = &mut ops[1].payload {
            s.offset = None;
        }
        let report = check_history(&ops);
        assert_eq!(report.count("malformed_history"), 1, "{}", report.summary());
    }
}

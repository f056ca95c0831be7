//! The checks of the `group` workload: producers send unique values, the members of one
//! consumer group poll them and commit what they processed, members are closed or crashed and
//! replaced, and after the run a fresh member of the group reads from the committed offsets to
//! the end while a plain read returns every partition's whole log. The sends and the plain
//! final read are checked by [`super::queue`] (lost, unexpected, inconsistent offsets, missing
//! final read, ...); this module checks what the group adds, from the history alone.
//!
//! What the history proves, and so what the checks may conclude (the coordinator's rules are
//! in broker/src/group/state.rs, the member's in client/src/consumer/subscribe.rs):
//! - A member's listener runs inside `poll`, so a partition reported assigned during a poll
//!   was granted by the coordinator before that poll completed, and one reported revoked or
//!   lost was still held, as far as the member knew, when the poll was invoked.
//! - The coordinator accepts a commit only from a member that owns the partition (or is
//!   revoking it) at the member's current epoch. An ok commit of partition p by member A made
//!   between two of A's polls therefore proves the coordinator counted A the owner of p at
//!   some instant within the commit; and since A could neither release p nor rejoin (both need
//!   a poll), A owned p continuously from its assignment up to the commit's invocation.
//! - A member reporting a partition revoked does not prove it still owned it: its session may
//!   have ended while its heartbeats failed, and the next owner may already hold it (a zombie,
//!   as in Kafka). So two members holding a partition at once is only an anomaly where commits
//!   prove both holds ([`DOUBLE_OWNERSHIP`]); other overlaps are counted
//!   ([`OVERLAPPING_ASSIGNMENTS`]).
//! - The workload commits only offsets its member processed, and starts nothing anywhere but
//!   at a committed offset or the log start, so every record below a committed offset must have
//!   been given to some member ([`GROUP_LOST`]); above the committed offsets, the final group
//!   read must have given every record ([`FINAL_READ_INCOMPLETE`]).
//!
//! The costs: one pass over the paired history, then per partition a scan of its final log and
//! a pairwise comparison of its commits and of its holds, which the run's length bounds (a
//! minute's run has hundreds of each).

mod anomaly;

pub use anomaly::{Ending, GroupAnomaly, Hold};

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::{Anomaly, AnomalyKind, Findings, Pairing, Severity};
use crate::jepsen::history::{Change, GroupPollValue, Op, OpType, Payload};

pub static GROUP_LOST: AnomalyKind = AnomalyKind {
    name: "group_lost",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a record below an offset the group committed that no member was ever given: a \
              commit skipped past unprocessed data",
};

pub static FINAL_READ_INCOMPLETE: AnomalyKind = AnomalyKind {
    name: "group_final_read_incomplete",
    severity: Severity::Invalid,
    headline: None,
    meaning: "records at or above every committed offset that no member, not even the final \
              group reader, was given",
};

pub static COMMIT_REGRESSION: AnomalyKind = AnomalyKind {
    name: "commit_regression",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a member's ok commit of a partition is lower than one it had completed before, \
              and no commit of unknown outcome explains it",
};

/// A member only commits offsets it processed, so committing lower than before means it was
/// given the partition at a lower committed offset: possible when a commit whose outcome was
/// unknown was applied late, over a later one.
pub static COMMIT_REGRESSION_AMBIGUOUS: AnomalyKind = AnomalyKind {
    name: "commit_regression_ambiguous",
    severity: Severity::Reported,
    headline: None,
    meaning: "a member's ok commit is lower than one it had completed before, but an earlier \
              commit of unknown outcome at or below it may have been applied late",
};

pub static COMMIT_REGRESSION_CROSS_PROCESS: AnomalyKind = AnomalyKind {
    name: "commit_regression_cross_process",
    severity: Severity::Reported,
    headline: None,
    meaning: "an ok commit of a partition is lower than another member's ok commit completed \
              before it was invoked (the group re-reads those records)",
};

pub static DOUBLE_OWNERSHIP: AnomalyKind = AnomalyKind {
    name: "double_ownership",
    severity: Severity::Invalid,
    headline: None,
    meaning: "two members owned one partition at the same time, each proven by its own ok \
              commits during its hold",
};

pub static OVERLAPPING_ASSIGNMENTS: AnomalyKind = AnomalyKind {
    name: "overlapping_assignments",
    severity: Severity::Reported,
    headline: None,
    meaning: "two members' listeners reported one partition held over overlapping times, \
              without commits proving both (a member whose session ended unnoticed holds on \
              until it hears so)",
};

/// At-least-once: a record is given again when its partition moves before its offset was
/// committed.
pub static REDELIVERED: AnomalyKind = AnomalyKind {
    name: "group_redelivered",
    severity: Severity::Reported,
    headline: None,
    meaning: "a record given to the group more than once (at-least-once allows it)",
};

pub static UNOWNED_RECORDS: AnomalyKind = AnomalyKind {
    name: "unowned_records",
    severity: Severity::Invalid,
    headline: None,
    meaning: "a member's poll returned records of a partition it did not own",
};

static KINDS: [&AnomalyKind; 9] = [
    &GROUP_LOST,
    &FINAL_READ_INCOMPLETE,
    &COMMIT_REGRESSION,
    &COMMIT_REGRESSION_AMBIGUOUS,
    &COMMIT_REGRESSION_CROSS_PROCESS,
    &DOUBLE_OWNERSHIP,
    &OVERLAPPING_ASSIGNMENTS,
    &REDELIVERED,
    &UNOWNED_RECORDS,
];

/// Whether an operation belongs to the group workload (and not to `queue`).
pub fn is_group_op(payload: &Payload) -> bool {
    matches!(
        payload,
        Payload::GroupPoll(_)
            | Payload::GroupFinalRead(_)
            | Payload::Commit(_)
            | Payload::Leave(_)
            | Payload::Crash(_)
            | Payload::FetchCommitted(_)
    )
}

/// A point in the history: an operation line's time and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    ns: u64,
    index: u64,
}

impl At {
    fn of(op: &Op) -> At {
        At {
            ns: op.time_ns,
            index: op.index,
        }
    }
}

/// One member's hold on one partition, from its listener's reports.
#[derive(Debug)]
struct Episode {
    process: i64,
    partition: u32,
    /// The completion of the poll that reported it assigned.
    start: At,
    /// The invocation of the operation that ended it.
    end: Option<(At, Ending)>,
    /// The invocation of the last ok commit of the partition during the hold.
    proven_until: Option<At>,
}

impl Episode {
    fn hold(&self) -> Hold {
        Hold {
            process: self.process,
            assigned_op: self.start.index,
            ended: self.end.map(|(at, ending)| (at.index, ending)),
            proven_until_op: self.proven_until.map(|at| at.index),
        }
    }

    /// The times it certainly held the partition as far as the member knew: from the
    /// assignment to the end (or forever).
    fn reported(&self) -> (u64, u64) {
        (self.start.ns, self.end.map_or(u64::MAX, |(at, _)| at.ns))
    }

    /// The times the coordinator certainly counted it the owner, if commits prove any.
    fn proven(&self) -> Option<(u64, u64)> {
        self.proven_until
            .map(|until| (self.start.ns, until.ns))
            .filter(|(start, until)| start < until)
    }
}

/// A commit, with its outcome.
#[derive(Debug)]
struct Commit {
    process: i64,
    invoke: At,
    /// `None` when it never completed.
    complete: Option<At>,
    offsets: BTreeMap<u32, u64>,
}

/// Who was given a record, and how often.
#[derive(Debug, Default)]
struct Delivery {
    count: usize,
    first_readers: Vec<(i64, u64)>,
}

/// What one pass over the history collects.
#[derive(Debug, Default)]
struct Collected {
    episodes: Vec<Episode>,
    /// `(process, partition)` → its open episode.
    open: HashMap<(i64, u32), usize>,
    ok_commits: Vec<Commit>,
    /// Commits that ended `info` or never completed: they may have been applied, at any time.
    unknown_commits: Vec<Commit>,
    /// The committed offsets looked up before the final group read (the highest seen).
    committed_at_end: BTreeMap<u32, (u64, u64)>,
    deliveries: HashMap<(u32, u64), Delivery>,
    /// Per partition, offset → value: the union of the ok plain final reads.
    final_logs: BTreeMap<u32, BTreeMap<u64, String>>,
}

/// Runs the group checks over a history (paired by the caller) and records what they find.
pub fn check(ops: &[Op], pairing: &Pairing<'_>, findings: &mut Findings) {
    for kind in KINDS {
        findings.declare(kind);
    }
    let mut c = Collected::default();
    for op in ops {
        if let Payload::FinalRead(read) = &op.payload {
            if op.kind == OpType::Ok {
                let log = c.final_logs.entry(read.partition).or_default();
                for (offset, value) in &read.records {
                    // A second value at an offset is queue's inconsistent_offsets.
                    log.entry(*offset).or_insert_with(|| value.clone());
                }
            }
        }
    }
    // Completion order keeps each process's operations in its own order (one open at a time).
    for done in &pairing.completed {
        c.completed(done.invoke, done.complete, findings);
    }
    for invoke in &pairing.open {
        if let Payload::Commit(commit) = &invoke.payload {
            c.unknown_commits.push(Commit {
                process: invoke.process,
                invoke: At::of(invoke),
                complete: None,
                offsets: commit.offsets.clone(),
            });
        }
    }
    c.delivered(findings);
    c.regressions(findings);
    c.ownership(findings);
}

fn record(findings: &mut Findings, kind: &'static AnomalyKind, anomaly: GroupAnomaly) {
    findings.record(kind, Anomaly::Group(anomaly));
}

impl Collected {
    fn completed(&mut self, invoke: &Op, complete: &Op, findings: &mut Findings) {
        let process = complete.process;
        match &complete.payload {
            Payload::GroupPoll(poll) | Payload::GroupFinalRead(poll) => {
                self.poll(invoke, complete, poll, findings);
            }
            Payload::Commit(commit) => {
                let entry = Commit {
                    process,
                    invoke: At::of(invoke),
                    complete: Some(At::of(complete)),
                    offsets: commit.offsets.clone(),
                };
                match complete.kind {
                    OpType::Ok => {
                        for partition in entry.offsets.keys() {
                            if let Some(&e) = self.open.get(&(process, *partition)) {
                                self.episodes[e].proven_until = Some(entry.invoke);
                            }
                        }
                        self.ok_commits.push(entry);
                    }
                    OpType::Info => self.unknown_commits.push(entry),
                    OpType::Fail | OpType::Invoke => {}
                }
            }
            Payload::Leave(leave) => {
                self.rebalance(process, &leave.rebalance, invoke, complete);
                self.end_all(process, At::of(invoke), Ending::Left);
            }
            Payload::Crash(_) => self.end_all(process, At::of(invoke), Ending::Crashed),
            Payload::FetchCommitted(read) if complete.kind == OpType::Ok => {
                for (&partition, &offset) in &read.committed {
                    let best = self
                        .committed_at_end
                        .entry(partition)
                        .or_insert((offset, complete.index));
                    if offset > best.0 {
                        *best = (offset, complete.index);
                    }
                }
            }
            _ => {}
        }
    }

    fn poll(&mut self, invoke: &Op, complete: &Op, poll: &GroupPollValue, findings: &mut Findings) {
        let process = complete.process;
        if complete.kind == OpType::Ok {
            // Records of a partition held when the poll began, or assigned during it.
            let assigned: BTreeSet<u32> = poll
                .rebalance
                .iter()
                .filter(|r| r.change == Change::Assigned)
                .flat_map(|r| r.partitions.iter().copied())
                .collect();
            let mut unowned: BTreeMap<u32, (usize, u64)> = BTreeMap::new();
            for (partition, offset, _) in &poll.records {
                if !self.open.contains_key(&(process, *partition)) && !assigned.contains(partition)
                {
                    let entry = unowned.entry(*partition).or_insert((0, *offset));
                    entry.0 += 1;
                }
                let delivery = self.deliveries.entry((*partition, *offset)).or_default();
                delivery.count += 1;
                if delivery.first_readers.len() < 2 {
                    delivery.first_readers.push((process, complete.index));
                }
            }
            for (partition, (records, first_offset)) in unowned {
                record(
                    findings,
                    &UNOWNED_RECORDS,
                    GroupAnomaly::UnownedRecords {
                        partition,
                        process,
                        op_index: complete.index,
                        records,
                        first_offset,
                    },
                );
            }
        }
        self.rebalance(process, &poll.rebalance, invoke, complete);
    }

    /// Applies a listener's reports, in order: a hold starts when the operation completed and
    /// ends when it was invoked (the conservative ends of both).
    fn rebalance(
        &mut self,
        process: i64,
        changes: &[crate::jepsen::history::Rebalance],
        invoke: &Op,
        complete: &Op,
    ) {
        for change in changes {
            for &partition in &change.partitions {
                let ending = match change.change {
                    Change::Assigned => Ending::Reassigned,
                    Change::Revoked => Ending::Revoked,
                    Change::Lost => Ending::Lost,
                };
                self.end(process, partition, At::of(invoke), ending);
                if change.change == Change::Assigned {
                    self.open.insert((process, partition), self.episodes.len());
                    self.episodes.push(Episode {
                        process,
                        partition,
                        start: At::of(complete),
                        end: None,
                        proven_until: None,
                    });
                }
            }
        }
    }

    fn end(&mut self, process: i64, partition: u32, at: At, ending: Ending) {
        if let Some(e) = self.open.remove(&(process, partition)) {
            self.episodes[e].end = Some((at, ending));
        }
    }

    fn end_all(&mut self, process: i64, at: At, ending: Ending) {
        let held: Vec<u32> = self
            .open
            .keys()
            .filter(|(p, _)| *p == process)
            .map(|(_, partition)| *partition)
            .collect();
        for partition in held {
            self.end(process, partition, at, ending);
        }
    }

    /// The highest committed offset of a partition and the operation that showed it.
    fn committed_bound(&self, partition: u32) -> Option<(u64, u64)> {
        let by_commits = self
            .ok_commits
            .iter()
            .filter_map(|c| {
                let offset = *c.offsets.get(&partition)?;
                Some((offset, c.complete.expect("ok commits completed").index))
            })
            // The first commit that reached the highest offset is the one that skipped.
            .max_by_key(|&(offset, op)| (offset, std::cmp::Reverse(op)));
        match (by_commits, self.committed_at_end.get(&partition).copied()) {
            (Some(commit), Some(at_end)) if at_end.0 > commit.0 => Some(at_end),
            (Some(commit), _) => Some(commit),
            (None, at_end) => at_end,
        }
    }

    /// Every record of the final read must have been given to some member: below the
    /// committed offsets by the members during the run, above them by the final group read.
    fn delivered(&self, findings: &mut Findings) {
        for (&partition, log) in &self.final_logs {
            let bound = self.committed_bound(partition);
            let committed_past = bound.map_or(0, |(offset, _)| offset);
            let mut incomplete: Option<(usize, u64, &String)> = None;
            for (&offset, value) in log {
                match self.deliveries.get(&(partition, offset)) {
                    None => match bound {
                        Some((committed, op)) if offset < committed => record(
                            findings,
                            &GROUP_LOST,
                            GroupAnomaly::GroupLost {
                                partition,
                                offset,
                                value: value.clone(),
                                committed_past: committed,
                                committed_by_op: op,
                            },
                        ),
                        _ => incomplete.get_or_insert((0, offset, value)).0 += 1,
                    },
                    Some(delivery) if delivery.count > 1 => record(
                        findings,
                        &REDELIVERED,
                        GroupAnomaly::Redelivered {
                            partition,
                            offset,
                            value: value.clone(),
                            deliveries: delivery.count,
                            first_readers: delivery.first_readers.clone(),
                        },
                    ),
                    Some(_) => {}
                }
            }
            if let Some((unconsumed, first_offset, first_value)) = incomplete {
                record(
                    findings,
                    &FINAL_READ_INCOMPLETE,
                    GroupAnomaly::FinalReadIncomplete {
                        partition,
                        unconsumed,
                        first_offset,
                        first_value: first_value.clone(),
                        committed_past,
                    },
                );
            }
        }
    }

    /// Ok commits of a partition lower than an ok commit that completed before they were
    /// invoked. One anomaly per later commit and partition, against the highest earlier one
    /// (of the same member first: that is the invalid kind).
    fn regressions(&self, findings: &mut Findings) {
        let partitions: BTreeSet<u32> = self
            .ok_commits
            .iter()
            .flat_map(|c| c.offsets.keys().copied())
            .collect();
        for partition in partitions {
            let commits: Vec<(&Commit, u64)> = self
                .ok_commits
                .iter()
                .filter_map(|c| Some((c, *c.offsets.get(&partition)?)))
                .collect();
            for &(later, offset) in &commits {
                let mut same: Option<(&Commit, u64)> = None;
                let mut other: Option<(&Commit, u64)> = None;
                for &(earlier, earlier_offset) in &commits {
                    let before =
                        earlier.complete.expect("ok commits completed").ns < later.invoke.ns;
                    if !before || earlier_offset <= offset {
                        continue;
                    }
                    let slot = if earlier.process == later.process {
                        &mut same
                    } else {
                        &mut other
                    };
                    if slot.is_none_or(|(_, o)| earlier_offset > o) {
                        *slot = Some((earlier, earlier_offset));
                    }
                }
                let (kind, (earlier, earlier_offset), explained_by_op) = match (same, other) {
                    (Some(found), _) => {
                        // Applied late, a commit of unknown outcome at or below this offset
                        // would have given the member the partition that low again.
                        let explained = self.unknown_commits.iter().find(|u| {
                            u.invoke.ns < later.invoke.ns
                                && u.offsets.get(&partition).is_some_and(|&o| o <= offset)
                        });
                        match explained {
                            Some(u) => (&COMMIT_REGRESSION_AMBIGUOUS, found, Some(u.invoke.index)),
                            None => (&COMMIT_REGRESSION, found, None),
                        }
                    }
                    (None, Some(found)) => (&COMMIT_REGRESSION_CROSS_PROCESS, found, None),
                    (None, None) => continue,
                };
                record(
                    findings,
                    kind,
                    GroupAnomaly::CommitRegression {
                        partition,
                        process: later.process,
                        op_index: later.complete.expect("ok commits completed").index,
                        offset,
                        earlier_process: earlier.process,
                        earlier_op_index: earlier.complete.expect("ok commits completed").index,
                        earlier_offset,
                        explained_by_op,
                    },
                );
            }
        }
    }

    /// Pairs of holds of one partition by different members that overlap: proven by commits
    /// on both sides (invalid), or only as the listeners reported them.
    fn ownership(&self, findings: &mut Findings) {
        let mut by_partition: BTreeMap<u32, Vec<&Episode>> = BTreeMap::new();
        for e in &self.episodes {
            by_partition.entry(e.partition).or_default().push(e);
        }
        let overlap = |(a0, a1): (u64, u64), (b0, b1): (u64, u64)| a0.max(b0) < a1.min(b1);
        for (partition, episodes) in by_partition {
            for (i, a) in episodes.iter().enumerate() {
                for b in &episodes[i + 1..] {
                    if a.process == b.process {
                        continue;
                    }
                    let kind = match (a.proven(), b.proven()) {
                        (Some(pa), Some(pb)) if overlap(pa, pb) => &DOUBLE_OWNERSHIP,
                        _ if overlap(a.reported(), b.reported()) => &OVERLAPPING_ASSIGNMENTS,
                        _ => continue,
                    };
                    record(
                        findings,
                        kind,
                        GroupAnomaly::Ownership {
                            partition,
                            first: a.hold(),
                            second: b.hold(),
                        },
                    );
                }
            }
        }
    }
}

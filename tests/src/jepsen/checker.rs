//! The checker: finds anomalies in a fault-suite history alone, after the run, and sums them up
//! in a [`Report`] (written as `report.json`, and as text by [`Report::summary`]).
//!
//! The parts:
//! - this module: what every workload shares: pairing invocations with completions
//!   ([`pair`]), counting outcomes, the [`Report`] and the generic anomaly bookkeeping
//!   ([`Findings`], [`AnomalyKind`]).
//! - [`queue`]: the checks of the `queue` workload (sends and polls of unique values).
//! - [`group`]: the checks of the `group` workload (a consumer group's deliveries, commits
//!   and assignments); its sends and final read go through [`queue`]'s checks as well.
//! - [`txn`]: the checks of the `txn` workload (transactions, read_committed reads, the final
//!   reads of the log with and without aborted records).
//! - [`synthetic`]: a builder of histories, for the checker's and the plots' own tests.
//!
//! Each workload brings one module like [`queue`]: it declares its [`AnomalyKind`]s, records
//! what it finds into the shared [`Findings`], and [`check`] runs it when the history holds its
//! operations. The report then gains its counts without changes here, apart from a variant of
//! [`Anomaly`] for its details.
//!
//! Outcomes are read as Jepsen reads them: `ok` took effect, `fail` certainly did not, `info`
//! may or may not have (STYLE 10: ambiguous outcomes are not failures), so an `info` send is
//! never "lost", and reading it back is no anomaly either.

pub mod group;
pub mod queue;
pub mod synthetic;
pub mod txn;

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};

use serde::Serialize;

use super::history::{Op, OpType, Payload, NEMESIS_PROCESS};

/// How many examples of each anomaly kind a report lists. The counts are always complete; the
/// list only has to point a human at the first few operations, partitions and offsets.
pub const EXAMPLES_PER_KIND_MAX: usize = 20;

/// Checks a history and reports every anomaly found.
pub fn check(ops: &[Op]) -> Report {
    let mut findings = Findings::default();
    findings.declare(&MALFORMED_HISTORY);
    let pairing = pair(ops);
    for problem in &pairing.problems {
        findings.record(&MALFORMED_HISTORY, Anomaly::History(problem.clone()));
    }

    let mut workloads = Vec::new();
    if ops.iter().any(|op| txn::is_txn_op(&op.payload)) {
        // Its reads are its own; the queue's checks would find every value unexpected.
        workloads.push("txn".to_string());
        txn::check(ops, &mut findings);
    } else if ops.iter().any(|op| group::is_group_op(&op.payload)) {
        // The group workload's sends and final read are checked as the queue's are.
        workloads.push("group".to_string());
        queue::check(ops, &mut findings);
        group::check(ops, &pairing, &mut findings);
    } else if ops
        .iter()
        .any(|op| matches!(op.payload, Payload::Send(_) | Payload::Poll(_)))
    {
        workloads.push("queue".to_string());
        queue::check(ops, &mut findings);
    }
    if workloads.is_empty() {
        // A run whose workers recorded nothing must not pass as "no anomalies".
        findings.record(
            &MALFORMED_HISTORY,
            Anomaly::History(HistoryAnomaly {
                op_index: None,
                process: None,
                problem: "the history holds no client operations".to_string(),
            }),
        );
    }
    Report::new(workloads, outcome_counts(ops, &pairing), findings)
}

/// Whether anomalies of a kind make the run invalid or are only reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// One is enough for `valid: false`.
    Invalid,
    /// Allowed by the semantics promised (for example duplicates from a non-idempotent
    /// producer), but counted so that a run shows how often it happens.
    Reported,
}

/// The headline counts every report carries at the top of `report.json` (CONTRACT). A kind
/// that belongs to one adds its count there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Headline {
    Lost,
    Duplicated,
    Reordered,
    Unexpected,
}

impl Headline {
    fn name(self) -> &'static str {
        match self {
            Headline::Lost => "lost",
            Headline::Duplicated => "duplicated",
            Headline::Reordered => "reordered",
            Headline::Unexpected => "unexpected",
        }
    }
}

/// A kind of anomaly a workload's checks look for, declared as a `static` in the workload's
/// module.
#[derive(Debug)]
pub struct AnomalyKind {
    /// Its key in `report.json` (`snake_case`).
    pub name: &'static str,
    pub severity: Severity,
    /// The headline count it adds to, if any.
    pub headline: Option<Headline>,
    /// One sentence for the reader of the report.
    pub meaning: &'static str,
}

/// A completion that has no matching invocation, an invocation while its process already had
/// one open, and the like: a bug in the workload's recording, which makes the run invalid
/// because the other checks can no longer be trusted.
pub static MALFORMED_HISTORY: AnomalyKind = AnomalyKind {
    name: "malformed_history",
    severity: Severity::Invalid,
    headline: None,
    meaning: "the history breaks its own rules (unpaired or overlapping operations, \
              missing fields), so the checks cannot be trusted",
};

/// The details of one anomaly, to say which operations, partitions, offsets and values.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Anomaly {
    History(HistoryAnomaly),
    Queue(queue::QueueAnomaly),
    Group(group::GroupAnomaly),
    Txn(txn::TxnAnomaly),
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::History(a) => a.fmt(f),
            Anomaly::Queue(a) => a.fmt(f),
            Anomaly::Group(a) => a.fmt(f),
            Anomaly::Txn(a) => a.fmt(f),
        }
    }
}

/// A problem with the history itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryAnomaly {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op_index: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<i64>,
    pub problem: String,
}

impl fmt::Display for HistoryAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(index) = self.op_index {
            write!(f, "op {index}: ")?;
        }
        if let Some(process) = self.process {
            write!(f, "process {process}: ")?;
        }
        f.write_str(&self.problem)
    }
}

/// The anomalies of one kind found in a run.
#[derive(Debug, Clone, Serialize)]
pub struct Anomalies {
    /// How many were found, all of them.
    pub count: usize,
    pub severity: Severity,
    pub meaning: &'static str,
    /// The first [`EXAMPLES_PER_KIND_MAX`], in the order the checks found them (history order
    /// where there is one).
    pub examples: Vec<Anomaly>,
    #[serde(skip)]
    headline: Option<Headline>,
}

/// What the checks of all workloads found, filled in as they run.
#[derive(Debug, Default)]
pub struct Findings {
    kinds: BTreeMap<&'static str, Anomalies>,
    /// Writes whose outcome is unknown (`info`): not anomalies, but a run full of them checked
    /// little, so the report shows how many.
    pub indeterminate: usize,
    /// Further counts a workload reports that are not anomalies (for example sends never
    /// completed), flattened into the top level of `report.json`.
    pub notes: BTreeMap<&'static str, usize>,
}

impl Findings {
    /// Makes a kind appear in the report with a count of 0 when nothing of it is found, so a
    /// clean report lists everything that was checked.
    pub fn declare(&mut self, kind: &'static AnomalyKind) {
        self.kinds.entry(kind.name).or_insert_with(|| Anomalies {
            count: 0,
            severity: kind.severity,
            meaning: kind.meaning,
            examples: Vec::new(),
            headline: kind.headline,
        });
    }

    pub fn record(&mut self, kind: &'static AnomalyKind, anomaly: Anomaly) {
        self.declare(kind);
        let entry = self.kinds.get_mut(kind.name).expect("declared above");
        entry.count += 1;
        if entry.examples.len() < EXAMPLES_PER_KIND_MAX {
            entry.examples.push(anomaly);
        }
    }

    pub fn count(&self, name: &str) -> usize {
        self.kinds.get(name).map_or(0, |a| a.count)
    }
}

/// How the operations of one function (`send`, `poll`, ...) ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct OutcomeCounts {
    pub invoke: usize,
    pub ok: usize,
    pub fail: usize,
    pub info: usize,
    /// Invoked and never completed (the run ended first).
    pub open: usize,
}

/// The result of checking a history; serialised as `report.json`.
///
/// ```json
/// {"valid":false,"lost":1,"duplicated":0,"reordered":0,"unexpected":0,"indeterminate":3,
///  "ack_offset_mismatch":1,"duplicated_idempotent":0,...,"workloads":["queue"],
///  "operations":{"send":{"invoke":9,"ok":5,"fail":1,"info":3,"open":0},...},
///  "anomalies":{"lost":{"count":1,"severity":"invalid","meaning":"...","examples":[...]},...}}
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// No anomaly of [`Severity::Invalid`] was found.
    pub valid: bool,
    pub lost: usize,
    /// Idempotent and non-idempotent duplicates together.
    pub duplicated: usize,
    pub reordered: usize,
    pub unexpected: usize,
    /// Writes completed `info`: they may or may not have taken effect.
    pub indeterminate: usize,
    /// The count of every other anomaly kind checked (0 included) and the workloads' notes,
    /// at the top level of `report.json`.
    #[serde(flatten)]
    pub counts: BTreeMap<String, usize>,
    /// The workloads whose checks ran (`queue`, ...).
    pub workloads: Vec<String>,
    /// Outcomes per function (`send`, `poll`, `final_read`, `nemesis`).
    pub operations: BTreeMap<String, OutcomeCounts>,
    /// Per anomaly kind checked: full count, severity and the first examples.
    pub anomalies: BTreeMap<String, Anomalies>,
}

impl Report {
    fn new(
        workloads: Vec<String>,
        operations: BTreeMap<String, OutcomeCounts>,
        findings: Findings,
    ) -> Report {
        let headline = |h: Headline| -> usize {
            findings
                .kinds
                .values()
                .filter(|a| a.headline == Some(h))
                .map(|a| a.count)
                .sum()
        };
        let headline_names = [
            Headline::Lost,
            Headline::Duplicated,
            Headline::Reordered,
            Headline::Unexpected,
        ]
        .map(Headline::name);
        let mut counts: BTreeMap<String, usize> = findings
            .kinds
            .iter()
            // A kind named like its headline would write the same key twice.
            .filter(|(name, _)| !headline_names.contains(name))
            .map(|(name, a)| (name.to_string(), a.count))
            .collect();
        for (name, n) in &findings.notes {
            counts.insert(name.to_string(), *n);
        }
        Report {
            valid: !findings
                .kinds
                .values()
                .any(|a| a.severity == Severity::Invalid && a.count > 0),
            lost: headline(Headline::Lost),
            duplicated: headline(Headline::Duplicated),
            reordered: headline(Headline::Reordered),
            unexpected: headline(Headline::Unexpected),
            indeterminate: findings.indeterminate,
            counts,
            workloads,
            operations,
            anomalies: findings
                .kinds
                .into_iter()
                .map(|(name, a)| (name.to_string(), a))
                .collect(),
        }
    }

    /// The count of one anomaly kind by its `report.json` name (0 if it was not checked).
    pub fn count(&self, name: &str) -> usize {
        self.anomalies.get(name).map_or(0, |a| a.count)
    }

    /// The report as text for a human: the verdict, the outcomes, then every anomaly kind found
    /// with its examples.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let verdict = if self.valid { "VALID" } else { "INVALID" };
        let workloads = if self.workloads.is_empty() {
            "no workload".to_string()
        } else {
            self.workloads.join(", ")
        };
        let _ = writeln!(s, "{verdict} ({workloads})");
        let _ = writeln!(
            s,
            "lost {}, duplicated {}, reordered {}, unexpected {}, indeterminate {}",
            self.lost, self.duplicated, self.reordered, self.unexpected, self.indeterminate
        );
        let _ = writeln!(s, "operations:");
        for (f, c) in &self.operations {
            let _ = writeln!(
                s,
                "  {f:<16} invoked {}, ok {}, fail {}, info {}, open {}",
                c.invoke, c.ok, c.fail, c.info, c.open
            );
        }
        if let Some(send) = self.operations.get("send") {
            if send.ok == 0 {
                let _ = writeln!(s, "  (no send succeeded: the run checked nothing)");
            }
        }
        if let Some(txn) = self.operations.get("txn") {
            if txn.ok == 0 {
                let _ = writeln!(s, "  (no transaction committed: the run checked little)");
            }
            let note = |name: &str| self.counts.get(name).copied().unwrap_or(0);
            let _ = writeln!(
                s,
                "transactions: {} committed, {} aborted, {} unknown ({} of them visible: \
                 committed); {} aborted records in the log",
                note("txn_committed"),
                note("txn_aborted"),
                note("txn_unknown"),
                note("txn_unknown_committed"),
                note("aborted_records_in_log"),
            );
        }
        let found: Vec<_> = self.anomalies.iter().filter(|(_, a)| a.count > 0).collect();
        if found.is_empty() {
            let checked: Vec<&str> = self.anomalies.keys().map(String::as_str).collect();
            let _ = writeln!(s, "no anomalies (checked: {})", checked.join(", "));
        }
        for (name, a) in found {
            let severity = match a.severity {
                Severity::Invalid => "invalid",
                Severity::Reported => "reported, allowed",
            };
            let _ = writeln!(s, "{name}: {} ({severity}): {}", a.count, a.meaning);
            for example in &a.examples {
                let _ = writeln!(s, "  - {example}");
            }
            if a.count > a.examples.len() {
                let _ = writeln!(s, "  ... and {} more", a.count - a.examples.len());
            }
        }
        s
    }
}

/// The name of an operation's function, as in the history (`send`, `poll`, ...).
pub fn function_name(payload: &Payload) -> &'static str {
    match payload {
        Payload::Send(_) => "send",
        Payload::Poll(_) => "poll",
        Payload::FinalRead(_) => "final_read",
        Payload::Nemesis(_) => "nemesis",
        Payload::GroupPoll(_) => "group_poll",
        Payload::GroupFinalRead(_) => "group_final_read",
        Payload::Commit(_) => "commit",
        Payload::Leave(_) => "leave",
        Payload::Crash(_) => "crash",
        Payload::FetchCommitted(_) => "fetch_committed",
        Payload::Txn(_) => "txn",
        Payload::TxnPoll(_) => "txn_poll",
        Payload::TxnFinalRead(_) => "txn_final_read",
        Payload::TxnFinalReadUncommitted(_) => "txn_final_read_uncommitted",
    }
}

/// An invocation and its completion.
#[derive(Debug, Clone, Copy)]
pub struct Completed<'a> {
    pub invoke: &'a Op,
    pub complete: &'a Op,
}

impl Completed<'_> {
    /// Completion time minus invocation time.
    pub fn latency_ns(&self) -> u64 {
        self.complete.time_ns.saturating_sub(self.invoke.time_ns)
    }
}

/// The client operations of a history paired up (nemesis operations are not).
#[derive(Debug, Default)]
pub struct Pairing<'a> {
    /// In completion order.
    pub completed: Vec<Completed<'a>>,
    /// Invocations never completed, in invocation order.
    pub open: Vec<&'a Op>,
    /// Where the history breaks the pairing rules.
    pub problems: Vec<HistoryAnomaly>,
}

/// Pairs each completion with the open invocation of its process: a process has at most one
/// operation open at a time (history.rs), so that is the one it completes.
pub fn pair(ops: &[Op]) -> Pairing<'_> {
    let mut open: HashMap<i64, &Op> = HashMap::new();
    let mut pairing = Pairing::default();
    for op in ops {
        if op.process == NEMESIS_PROCESS || matches!(op.payload, Payload::Nemesis(_)) {
            continue;
        }
        let problem = |text: String| HistoryAnomaly {
            op_index: Some(op.index),
            process: Some(op.process),
            problem: text,
        };
        match op.kind {
            OpType::Invoke => {
                if let Some(previous) = open.insert(op.process, op) {
                    pairing.problems.push(problem(format!(
                        "invoked {} while its {} of op {} was still open",
                        function_name(&op.payload),
                        function_name(&previous.payload),
                        previous.index
                    )));
                }
            }
            OpType::Ok | OpType::Fail | OpType::Info => match open.remove(&op.process) {
                None => pairing.problems.push(problem(format!(
                    "{} completed without an open invocation",
                    function_name(&op.payload)
                ))),
                Some(invoke) => {
                    if function_name(&invoke.payload) != function_name(&op.payload) {
                        pairing.problems.push(problem(format!(
                            "completed a {} but invoked a {} (op {})",
                            function_name(&op.payload),
                            function_name(&invoke.payload),
                            invoke.index
                        )));
                    }
                    pairing.completed.push(Completed {
                        invoke,
                        complete: op,
                    });
                }
            },
        }
    }
    pairing.open = open.into_values().collect();
    pairing.open.sort_by_key(|op| op.index);
    pairing
}

fn outcome_counts(ops: &[Op], pairing: &Pairing<'_>) -> BTreeMap<String, OutcomeCounts> {
    let mut counts: BTreeMap<String, OutcomeCounts> = BTreeMap::new();
    for op in ops {
        let c = counts
            .entry(function_name(&op.payload).to_string())
            .or_default();
        match op.kind {
            OpType::Invoke => c.invoke += 1,
            OpType::Ok => c.ok += 1,
            OpType::Fail => c.fail += 1,
            OpType::Info => c.info += 1,
        }
    }
    for op in &pairing.open {
        counts
            .entry(function_name(&op.payload).to_string())
            .or_default()
            .open += 1;
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::synthetic::{HistoryBuilder, Producer};
    use super::*;
    use crate::jepsen::history::{NemesisPhase, SendValue};

    #[test]
    fn a_clean_history_is_valid_and_lists_what_was_checked() {
        let mut h = HistoryBuilder::new();
        h.send_ok(0, 0, "0-0", 0, Producer::Idempotent);
        h.send_ok(0, 0, "0-1", 1, Producer::Idempotent);
        h.poll_ok(1, 0, 0, &[(0, "0-0"), (1, "0-1")]);
        h.final_read_ok(2, 0, 0, &[(0, "0-0"), (1, "0-1")]);
        let report = check(&h.ops());
        assert!(report.valid, "{}", report.summary());
        assert_eq!(report.count("malformed_history"), 0);
        assert_eq!(report.operations["send"].ok, 2);
        assert!(report.summary().contains("no anomalies"));
        let json = serde_json::to_value(&report).unwrap();
        for key in [
            "valid",
            "lost",
            "duplicated",
            "reordered",
            "unexpected",
            "indeterminate",
            "ack_offset_mismatch",
            "skipped",
        ] {
            assert!(json.get(key).is_some(), "report.json lacks {key}: {json}");
        }
    }

    #[test]
    fn unpaired_operations_make_the_history_malformed() {
        let mut h = HistoryBuilder::new();
        let send = |value: &str| {
            Payload::Send(SendValue {
                partition: 0,
                value: value.into(),
                offset: Some(0),
                idempotent: true,
            })
        };
        h.complete(0, OpType::Ok, send("0-0"));
        h.invoke(1, send("1-0"));
        h.invoke(1, send("1-1"));
        h.nemesis("kill", NemesisPhase::Start, &[1]);
        let report = check(&h.ops());
        assert!(!report.valid);
        // Completion without invocation, and a second invocation while one was open.
        assert_eq!(report.count("malformed_history"), 2, "{}", report.summary());
        assert_eq!(report.operations["send"].open, 1);
    }

    #[test]
    fn an_empty_history_is_not_valid() {
        let report = check(&[]);
        assert!(!report.valid);
        assert!(report.summary().contains("no client operations"));
    }

    #[test]
    fn examples_are_capped_but_counts_are_not() {
        let mut findings = Findings::default();
        for i in 0..EXAMPLES_PER_KIND_MAX + 5 {
            findings.record(
                &MALFORMED_HISTORY,
                Anomaly::History(HistoryAnomaly {
                    op_index: Some(i as u64),
                    process: None,
                    problem: "x".into(),
                }),
            );
        }
        let report = Report::new(vec![], BTreeMap::new(), findings);
        assert_eq!(report.count("malformed_history"), EXAMPLES_PER_KIND_MAX + 5);
        assert_eq!(
            report.anomalies["malformed_history"].examples.len(),
            EXAMPLES_PER_KIND_MAX
        );
        assert!(report.summary().contains("... and 5 more"));
    }
}

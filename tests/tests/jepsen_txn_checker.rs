//! The txn checker's self-test: a clean history of the `txn` workload passes with every count
//! 0, and each anomaly planted in it (or in a small history of its own) is caught with the
//! right count, while its harmless look-alikes are not. Histories are built in memory, no
//! cluster; one round trip goes through `history.jsonl` as a real run does.

use std::time::Duration;

use rafka_tests::jepsen::checker::synthetic::HistoryBuilder;
use rafka_tests::jepsen::checker::txn::{TxnAnomaly, TxnReadKind, UnexpectedWhy, NOTES};
use rafka_tests::jepsen::checker::{self, Anomaly, Report};
use rafka_tests::jepsen::history::{self, Op, OpType, Payload, TxnIntent, TxnValue};

use OpType::{Fail, Info};

/// An `ok` completion (not `Result::Ok`).
const OK: OpType = OpType::Ok;

/// Every anomaly count of the txn workload's report besides the headline four.
const TXN_COUNTS: [&str; 9] = [
    "aborted_read",
    "partial",
    "duplicated_in_log",
    "read_before_commit",
    "inconsistent_offsets",
    "ack_offset_mismatch",
    "final_read_missing",
    "final_read_incomplete",
    "malformed_history",
];

/// The final reads' processes.
const RAW: i64 = 20;
const COMMITTED: i64 = 21;

/// A small, clean run of the txn workload, written out in full. Offsets not listed hold
/// transaction markers.
///
/// - worker 0, transaction 0, committed: `w0-t0-0`, `w0-t0-1` at 0, 1 of partition 0;
///   `w0-t0-2` at 0 of partition 1;
/// - worker 1, transaction 0, aborted as planned: `w1-t0-0` at 2 of partition 1, `w1-t0-1` at
///   0 of partition 2;
/// - worker 0, transaction 1, committed: `w0-t1-0` at 3 of partition 0, `w0-t1-1`, `w0-t1-2`
///   at 2, 3 of partition 2;
/// - worker 1, transaction 1, unknown but committed: `w1-t1-0` at 5 of partition 0, `w1-t1-1`
///   at 4 of partition 1;
/// - worker 2, transaction 0, unknown and aborted: `w2-t0-0` at 5 of partition 2.
///
/// A read_committed poll of partition 0 sees worker 0's first transaction; then the log is
/// read whole (read_uncommitted), then read_committed.
fn clean() -> HistoryBuilder {
    let mut h = HistoryBuilder::new();
    h.txn(
        0,
        0,
        0,
        OK,
        &[
            (0, &[(0, "w0-t0-0"), (1, "w0-t0-1")]),
            (1, &[(0, "w0-t0-2")]),
        ],
    );
    h.txn(
        1,
        1,
        0,
        Fail,
        &[(1, &[(2, "w1-t0-0")]), (2, &[(0, "w1-t0-1")])],
    );
    h.txn_poll(10, 0, (0, 3), &[(0, "w0-t0-0"), (1, "w0-t0-1")]);
    h.txn(
        0,
        0,
        1,
        OK,
        &[
            (0, &[(3, "w0-t1-0")]),
            (2, &[(2, "w0-t1-1"), (3, "w0-t1-2")]),
        ],
    );
    h.txn(
        1,
        1,
        1,
        Info,
        &[(0, &[(5, "w1-t1-0")]), (1, &[(4, "w1-t1-1")])],
    );
    h.txn(2, 2, 0, Info, &[(2, &[(5, "w2-t0-0")])]);
    h.txn_poll(10, 0, (3, 3), &[]);
    h.txn_final_read_uncommitted(
        RAW,
        0,
        (0, 7),
        &[
            (0, "w0-t0-0"),
            (1, "w0-t0-1"),
            (3, "w0-t1-0"),
            (5, "w1-t1-0"),
        ],
    );
    h.txn_final_read_uncommitted(
        RAW,
        1,
        (0, 6),
        &[(0, "w0-t0-2"), (2, "w1-t0-0"), (4, "w1-t1-1")],
    );
    h.txn_final_read_uncommitted(
        RAW,
        2,
        (0, 7),
        &[
            (0, "w1-t0-1"),
            (2, "w0-t1-1"),
            (3, "w0-t1-2"),
            (5, "w2-t0-0"),
        ],
    );
    h.txn_final_read(
        COMMITTED,
        0,
        (0, 7),
        &[
            (0, "w0-t0-0"),
            (1, "w0-t0-1"),
            (3, "w0-t1-0"),
            (5, "w1-t1-0"),
        ],
    );
    h.txn_final_read(COMMITTED, 1, (0, 6), &[(0, "w0-t0-2"), (4, "w1-t1-1")]);
    h.txn_final_read(COMMITTED, 2, (0, 7), &[(2, "w0-t1-1"), (3, "w0-t1-2")]);
    h
}

/// Asserts the report counts exactly `expected` (by report.json name) and 0 for the rest, and
/// is invalid exactly when one of them is.
fn assert_counts(report: &Report, expected: &[(&str, usize)]) {
    let json = serde_json::to_value(report).unwrap();
    for name in ["lost", "duplicated", "reordered", "unexpected"]
        .into_iter()
        .chain(TXN_COUNTS)
    {
        let want = expected
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(0, |(_, c)| *c);
        assert_eq!(
            json[name].as_u64(),
            Some(want as u64),
            "{name} in report.json\n{}",
            report.summary()
        );
    }
    assert_eq!(
        report.valid,
        expected.iter().all(|(_, c)| *c == 0),
        "{}",
        report.summary()
    );
}

fn examples<'a>(report: &'a Report, kind: &str) -> Vec<&'a TxnAnomaly> {
    report.anomalies[kind]
        .examples
        .iter()
        .map(|a| match a {
            Anomaly::Txn(t) => t,
            other => panic!("{kind} example is not a txn anomaly: {other:?}"),
        })
        .collect()
}

/// The records of the ok read of `f` (`txn_final_read`, ...) of `partition`.
fn read_of<'a>(ops: &'a mut [Op], f: &str, partition: u32) -> &'a mut Vec<(u64, String)> {
    ops.iter_mut()
        .filter(|op| op.kind == OK)
        .filter_map(|op| match (&mut op.payload, f) {
            (Payload::TxnFinalRead(r), "txn_final_read")
            | (Payload::TxnFinalReadUncommitted(r), "txn_final_read_uncommitted")
            | (Payload::TxnPoll(r), "txn_poll") => Some(r),
            _ => None,
        })
        .find(|r| r.partition == partition)
        .map(|r| &mut r.records)
        .expect("such a read")
}

/// The completion of transaction `txn` of `worker`.
fn txn_completion(ops: &mut [Op], worker: u32, txn: u64) -> &mut TxnValue {
    ops.iter_mut()
        .filter(|op| op.kind != OpType::Invoke)
        .find_map(|op| match &mut op.payload {
            Payload::Txn(t) if t.worker == worker && t.txn == txn => Some(t),
            _ => None,
        })
        .expect("such a transaction")
}

fn remove(records: &mut Vec<(u64, String)>, value: &str) {
    let before = records.len();
    records.retain(|(_, v)| v != value);
    assert_eq!(records.len() + 1, before, "{value} was not there once");
}

fn insert(records: &mut Vec<(u64, String)>, offset: u64, value: &str) {
    records.push((offset, value.into()));
    records.sort();
}

#[test]
fn a_clean_txn_history_is_valid_and_lists_what_was_checked() {
    let report = checker::check(&clean().ops());
    assert_counts(&report, &[]);
    assert_eq!(report.workloads, vec!["txn".to_string()]);
    assert_eq!(report.indeterminate, 2);
    let json = serde_json::to_value(&report).unwrap();
    for (note, want) in NOTES.into_iter().zip([2, 1, 2, 1, 3]) {
        assert_eq!(
            json[note].as_u64(),
            Some(want),
            "{note}\n{}",
            report.summary()
        );
    }
    assert_eq!(report.operations["txn"].ok, 2);
    assert_eq!(report.operations["txn_final_read"].ok, 3);
    let summary = report.summary();
    assert!(summary.contains("no anomalies"), "{summary}");
    assert!(
        summary.contains("2 committed, 1 aborted, 2 unknown (1 of them visible"),
        "{summary}"
    );
    // The queue's checks do not run: they would find every value unexpected.
    assert!(json.get("skipped").is_none(), "{json}");
}

#[test]
fn a_clean_txn_history_survives_the_jsonl_round_trip() {
    let ops = clean().ops();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    history::write_jsonl(&ops, std::fs::File::create(&path).unwrap()).unwrap();
    let read = history::read_jsonl(&path).unwrap();
    assert_eq!(read, ops);
    assert!(checker::check(&read).valid);
}

#[test]
fn a_committed_value_missing_from_the_final_read_is_lost() {
    let mut ops = clean().ops();
    remove(read_of(&mut ops, "txn_final_read", 2), "w0-t1-1");
    let report = checker::check(&ops);
    // The transaction is also only partly there.
    assert_counts(&report, &[("lost", 1), ("partial", 1)]);
    let [TxnAnomaly::Lost {
        partition: 2,
        value,
        of,
        acked_offset: Some(2),
        polled: None,
    }] = examples(&report, "lost")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!((value.as_str(), of.worker, of.txn), ("w0-t1-1", 0, 1));
}

#[test]
fn an_unknown_transaction_seen_by_a_poll_must_survive() {
    // Without the poll, the unknown transaction of worker 2 may have aborted: valid.
    let mut h = clean();
    h.txn_poll(11, 2, (0, 6), &[(5, "w2-t0-0")]);
    let report = checker::check(&h.ops());
    assert_counts(&report, &[("lost", 1)]);
    let [TxnAnomaly::Lost {
        partition: 2,
        polled: Some((5, _)),
        ..
    }] = examples(&report, "lost")[..]
    else {
        panic!("{}", report.summary());
    };
}

#[test]
fn an_aborted_value_returned_by_a_read_committed_read_is_an_aborted_read() {
    let mut h = clean();
    h.txn_poll(11, 1, (0, 3), &[(0, "w0-t0-2"), (2, "w1-t0-0")]);
    let report = checker::check(&h.ops());
    assert_counts(&report, &[("aborted_read", 1)]);
    let [TxnAnomaly::AbortedRead {
        partition: 1,
        offset: 2,
        read_by,
        ..
    }] = examples(&report, "aborted_read")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!(read_by.f, TxnReadKind::Poll);

    // In the final read it is the same, and the transaction is partly visible besides.
    let mut ops = clean().ops();
    insert(read_of(&mut ops, "txn_final_read", 1), 2, "w1-t0-0");
    assert_counts(
        &checker::check(&ops),
        &[("aborted_read", 1), ("partial", 1)],
    );

    // The read_uncommitted read is meant to return it (clean: counted, not an anomaly).
}

#[test]
fn an_unknown_transaction_partly_visible_is_partial() {
    let mut ops = clean().ops();
    remove(read_of(&mut ops, "txn_final_read", 1), "w1-t1-1");
    let report = checker::check(&ops);
    assert_counts(&report, &[("partial", 1)]);
    let [TxnAnomaly::Partial {
        of,
        present: 1,
        written: 2,
        missing: (1, missing),
        ..
    }] = examples(&report, "partial")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!((of.worker, of.txn, of.outcome), (1, 1, Some(Info)));
    assert_eq!(missing, "w1-t1-1");
}

#[test]
fn a_value_twice_in_the_final_read_is_duplicated() {
    let mut ops = clean().ops();
    insert(read_of(&mut ops, "txn_final_read", 0), 6, "w0-t0-0");
    let report = checker::check(&ops);
    assert_counts(&report, &[("duplicated", 1)]);
    let [TxnAnomaly::Duplicated {
        partition: 0,
        offsets,
        read: TxnReadKind::FinalRead,
        ..
    }] = examples(&report, "duplicated")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!(offsets, &[0, 6]);

    // Twice in the log, even where read_committed hides it, is a duplicate too.
    let mut ops = clean().ops();
    insert(
        read_of(&mut ops, "txn_final_read_uncommitted", 2),
        6,
        "w1-t0-1",
    );
    assert_counts(&checker::check(&ops), &[("duplicated_in_log", 1)]);
}

#[test]
fn a_value_nobody_wrote_there_is_unexpected() {
    let mut ops = clean().ops();
    insert(read_of(&mut ops, "txn_final_read", 0), 6, "w9-t0-0");
    let report = checker::check(&ops);
    assert_counts(&report, &[("unexpected", 1)]);
    let [TxnAnomaly::Unexpected {
        partition: 0,
        offset: 6,
        why: UnexpectedWhy::NeverWritten,
        ..
    }] = examples(&report, "unexpected")[..]
    else {
        panic!("{}", report.summary());
    };

    // A value written to partition 0, read in partition 1 (where a marker is).
    let mut ops = clean().ops();
    insert(
        read_of(&mut ops, "txn_final_read_uncommitted", 1),
        1,
        "w0-t0-0",
    );
    let report = checker::check(&ops);
    assert_counts(&report, &[("unexpected", 1)]);
    let [TxnAnomaly::Unexpected {
        why: UnexpectedWhy::WrongPartition { written_to: 0 },
        ..
    }] = examples(&report, "unexpected")[..]
    else {
        panic!("{}", report.summary());
    };
}

/// Worker 0 commits transactions 0 and 1 on partition 0 at the offsets given, worker 1 one
/// transaction in between; everything is read back where it was acknowledged.
fn ordering(t0: &[(u64, &str)], t1: &[(u64, &str)], other: &[(u64, &str)]) -> Report {
    let mut h = HistoryBuilder::new();
    h.txn(0, 0, 0, OK, &[(0, t0)]);
    h.txn(1, 1, 0, OK, &[(0, other)]);
    h.txn(0, 0, 1, OK, &[(0, t1)]);
    let mut log: Vec<(u64, &str)> = t0.iter().chain(t1).chain(other).copied().collect();
    log.sort_unstable();
    let end = log.last().map_or(0, |(o, _)| o + 2);
    h.txn_final_read_uncommitted(RAW, 0, (0, end), &log);
    h.txn_final_read(COMMITTED, 0, (0, end), &log);
    checker::check(&h.ops())
}

#[test]
fn a_workers_transactions_or_values_out_of_order_are_reordered() {
    // Valid: each worker's transactions in order, another worker's in between.
    let report = ordering(
        &[(0, "w0-t0-0"), (1, "w0-t0-1")],
        &[(6, "w0-t1-0")],
        &[(3, "w1-t0-0")],
    );
    assert_counts(&report, &[]);

    // Transaction 1 before transaction 0.
    let report = ordering(
        &[(3, "w0-t0-0"), (4, "w0-t0-1")],
        &[(0, "w0-t1-0")],
        &[(6, "w1-t0-0")],
    );
    assert_counts(&report, &[("reordered", 1)]);
    let [TxnAnomaly::Reordered {
        partition: 0,
        worker: 0,
        earlier,
        later,
    }] = examples(&report, "reordered")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!((earlier.txn, earlier.offset), (0, 3));
    assert_eq!((later.txn, later.offset), (1, 0));

    // A transaction's values out of their send order.
    let report = ordering(
        &[(1, "w0-t0-0"), (0, "w0-t0-1")],
        &[(6, "w0-t1-0")],
        &[(3, "w1-t0-0")],
    );
    assert_counts(&report, &[("reordered", 1)]);
}

#[test]
fn a_read_completed_before_the_commit_was_asked_for_is_read_before_commit() {
    let writes: &[(u32, &[(u64, &str)])] = &[(0, &[(0, "w0-t0-0")])];
    let run = |poll_first: bool| {
        let mut h = HistoryBuilder::new();
        let value = HistoryBuilder::txn_value(0, 0, TxnIntent::Commit, writes);
        h.invoke(0, Payload::Txn(value.clone()));
        h.advance(Duration::from_millis(1));
        let poll = |h: &mut HistoryBuilder| h.txn_poll(10, 0, (0, 2), &[(0, "w0-t0-0")]);
        if poll_first {
            poll(&mut h);
        }
        let commit_ns = h.now_ns();
        h.advance(Duration::from_millis(1));
        if !poll_first {
            poll(&mut h);
        }
        h.complete(
            0,
            OK,
            Payload::Txn(TxnValue {
                acked: vec![(0, 0, "w0-t0-0".into())],
                commit_ns: Some(commit_ns),
                ..value
            }),
        );
        h.txn_final_read_uncommitted(RAW, 0, (0, 2), &[(0, "w0-t0-0")]);
        h.txn_final_read(COMMITTED, 0, (0, 2), &[(0, "w0-t0-0")]);
        checker::check(&h.ops())
    };
    // A poll between the commit's request and its answer is fine.
    assert_counts(&run(false), &[]);
    let report = run(true);
    assert_counts(&report, &[("read_before_commit", 1)]);
    let [TxnAnomaly::ReadBeforeCommit {
        partition: 0,
        offset: 0,
        read_completed_ns,
        commit_ns: Some(commit_ns),
        ..
    }] = examples(&report, "read_before_commit")[..]
    else {
        panic!("{}", report.summary());
    };
    assert!(read_completed_ns < commit_ns);
}

#[test]
fn two_values_read_at_one_offset_are_inconsistent() {
    let mut h = clean();
    h.txn_poll(11, 0, (0, 4), &[(0, "w0-t0-0"), (1, "w0-t1-0")]);
    let report = checker::check(&h.ops());
    assert_counts(&report, &[("inconsistent_offsets", 1)]);
    let [TxnAnomaly::InconsistentOffset {
        partition: 0,
        offset: 1,
        values,
        ..
    }] = examples(&report, "inconsistent_offsets")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!(values, &["w0-t0-1", "w0-t1-0"]);
}

#[test]
fn an_acknowledged_record_not_at_its_offset_is_an_ack_offset_mismatch() {
    let mut ops = clean().ops();
    // Acknowledged at 2 (a marker), but the log has it at 1.
    let done = txn_completion(&mut ops, 0, 0);
    done.acked[1].1 = 2;
    let report = checker::check(&ops);
    assert_counts(&report, &[("ack_offset_mismatch", 1)]);

    // An aborted transaction's acknowledged record is in the log too.
    let mut ops = clean().ops();
    remove(
        read_of(&mut ops, "txn_final_read_uncommitted", 2),
        "w1-t0-1",
    );
    let report = checker::check(&ops);
    assert_counts(&report, &[("ack_offset_mismatch", 1)]);
    let [TxnAnomaly::AckOffsetMismatch {
        partition: 2,
        acked_offset: 0,
        value_at_acked_offset: None,
        read_at,
        ..
    }] = examples(&report, "ack_offset_mismatch")[..]
    else {
        panic!("{}", report.summary());
    };
    assert!(read_at.is_empty());
}

#[test]
fn a_partition_without_its_final_reads_is_missing() {
    for f in ["txn_final_read", "txn_final_read_uncommitted"] {
        let mut ops = clean().ops();
        ops.retain(|op| {
            !(checker::function_name(&op.payload) == f && partition_of(&op.payload) == Some(1))
        });
        let report = checker::check(&ops);
        assert_counts(&report, &[("final_read_missing", 1)]);
    }
}

fn partition_of(payload: &Payload) -> Option<u32> {
    match payload {
        Payload::TxnPoll(r) | Payload::TxnFinalRead(r) | Payload::TxnFinalReadUncommitted(r) => {
            Some(r.partition)
        }
        _ => None,
    }
}

#[test]
fn a_read_committed_final_read_stuck_below_the_logs_end_is_incomplete() {
    let mut ops = clean().ops();
    // The last stable offset of partition 2 stayed at 4, below the unknown transaction that
    // the coordinator should have aborted (read_uncommitted has it at 5).
    for op in &mut ops {
        if op.process == COMMITTED {
            if let Payload::TxnFinalRead(r) = &mut op.payload {
                if r.partition == 2 && r.to.is_some() {
                    r.to = Some(4);
                }
            }
        }
    }
    let report = checker::check(&ops);
    assert_counts(&report, &[("final_read_incomplete", 1)]);
    let [TxnAnomaly::FinalReadIncomplete {
        partition: 2,
        reached: 4,
        records_past: 1,
        first_offset: 5,
        first_value,
    }] = examples(&report, "final_read_incomplete")[..]
    else {
        panic!("{}", report.summary());
    };
    assert_eq!(first_value, "w2-t0-0");
}

#[test]
fn broken_transaction_records_make_the_history_malformed() {
    // A commit acknowledged without saying when it was asked for.
    let mut ops = clean().ops();
    txn_completion(&mut ops, 0, 1).commit_ns = None;
    assert_counts(&checker::check(&ops), &[("malformed_history", 1)]);

    // A transaction number used twice by one worker.
    let mut h = clean();
    h.txn(3, 0, 1, Fail, &[(3, &[(0, "w0-t1-9")])]);
    let report = checker::check(&h.ops());
    assert!(
        report.count("malformed_history") >= 1,
        "{}",
        report.summary()
    );
    assert!(!report.valid);
}

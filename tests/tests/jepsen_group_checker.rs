//! The group checker's self-test: a clean history of the `group` workload passes with every
//! group count 0, and each anomaly planted in it (or in a small history of its own) is caught
//! with the right count. Histories are built in memory, no cluster; one round trip goes
//! through `history.jsonl` as a real run does.

use rafka_tests::jepsen::checker::group::{GroupAnomaly, Hold};
use rafka_tests::jepsen::checker::synthetic::{HistoryBuilder, Producer};
use rafka_tests::jepsen::checker::{self, Anomaly, Report};
use rafka_tests::jepsen::history::{self, Change, Op, OpType, Payload};

use Change::{Assigned, Lost, Revoked};

/// Every count the group workload's report carries, besides the headline four.
const GROUP_COUNTS: [&str; 13] = [
    "group_lost",
    "group_final_read_incomplete",
    "commit_regression",
    "commit_regression_ambiguous",
    "commit_regression_cross_process",
    "double_ownership",
    "overlapping_assignments",
    "group_redelivered",
    "unowned_records",
    "ack_offset_mismatch",
    "inconsistent_offsets",
    "final_read_missing",
    "malformed_history",
];

/// A small, clean run of the group workload, written out in full.
///
/// Partition 0 holds `0-0`, `0-1`, `0-4` at offsets 0..3; partition 1 holds `0-2`, `0-3` at
/// 0..2 (all sent by process 0). Member 10 is assigned both, consumes and commits, has
/// partition 1 revoked (member 11 takes it) and crashes; member 11 then gets partition 0 too,
/// consumes the rest, commits and leaves. The final reads: process 20 reads the whole log,
/// process 21 looks the committed offsets up, member 30 reads from them (nothing is left).
fn clean() -> HistoryBuilder {
    let p = Producer::NonIdempotent;
    let mut h = HistoryBuilder::new();
    h.send_ok(0, 0, "0-0", 0, p);
    h.send_ok(0, 0, "0-1", 1, p);
    h.send_ok(0, 1, "0-2", 0, p);
    h.group_poll(10, &[(0, 0, "0-0"), (1, 0, "0-2")], &[(Assigned, &[0, 1])]);
    h.commit(10, OpType::Ok, &[(0, 1), (1, 1)]);
    h.send_ok(0, 1, "0-3", 1, p);
    h.group_poll(10, &[(0, 1, "0-1")], &[(Revoked, &[1])]);
    h.commit(10, OpType::Ok, &[(0, 2)]);
    h.group_poll(11, &[(1, 1, "0-3")], &[(Assigned, &[1])]);
    h.commit(11, OpType::Ok, &[(1, 2)]);
    h.crash(10);
    h.send_ok(0, 0, "0-4", 2, p);
    h.group_poll(11, &[(0, 2, "0-4")], &[(Assigned, &[0])]);
    h.commit(11, OpType::Ok, &[(0, 3)]);
    h.leave(11, &[(Revoked, &[0, 1])]);
    h.final_read_ok(20, 0, 0, &[(0, "0-0"), (1, "0-1"), (2, "0-4")]);
    h.final_read_ok(20, 1, 0, &[(0, "0-2"), (1, "0-3")]);
    h.fetch_committed(21, &[(0, 3), (1, 2)]);
    h.group_final_read(30, &[], &[(Assigned, &[0, 1])]);
    h.leave(30, &[(Revoked, &[0, 1])]);
    h
}

/// Asserts the report counts exactly `expected` (by report.json name) and 0 for the rest.
fn assert_counts(report: &Report, expected: &[(&str, usize)]) {
    let json = serde_json::to_value(report).unwrap();
    for name in ["lost", "duplicated", "reordered", "unexpected"]
        .into_iter()
        .chain(GROUP_COUNTS)
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
}

fn group_examples<'a>(report: &'a Report, kind: &str) -> Vec<&'a GroupAnomaly> {
    report.anomalies[kind]
        .examples
        .iter()
        .map(|a| match a {
            Anomaly::Group(g) => g,
            other => panic!("{kind} example is not a group anomaly: {other:?}"),
        })
        .collect()
}

/// The records of the `nth` (from 0) ok group poll of `process`.
fn group_poll(ops: &mut [Op], process: i64, nth: usize) -> &mut Vec<(u32, u64, String)> {
    ops.iter_mut()
        .filter(|op| op.process == process && op.kind == OpType::Ok)
        .filter_map(|op| match &mut op.payload {
            Payload::GroupPoll(v) => Some(&mut v.records),
            _ => None,
        })
        .nth(nth)
        .expect("such a poll")
}

#[test]
fn a_clean_group_history_is_valid_and_lists_what_was_checked() {
    let report = checker::check(&clean().ops());
    assert!(report.valid, "{}", report.summary());
    assert_eq!(report.workloads, vec!["group".to_string()]);
    assert_counts(&report, &[]);
    // The queue's per-consumer order checks do not judge group polls.
    let json = serde_json::to_value(&report).unwrap();
    assert!(json.get("skipped").is_none(), "{json}");
    assert_eq!(report.operations["group_poll"].ok, 4);
    assert_eq!(report.operations["commit"].ok, 4);
}

#[test]
fn a_clean_group_history_survives_the_jsonl_round_trip() {
    let ops = clean().ops();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");
    history::write_jsonl(&ops, std::fs::File::create(&path).unwrap()).unwrap();
    let read = history::read_jsonl(&path).unwrap();
    assert_eq!(read, ops);
    assert!(checker::check(&read).valid);
}

#[test]
fn an_acknowledged_value_missing_from_the_final_read_is_lost() {
    let mut ops = clean().ops();
    for op in &mut ops {
        if let Payload::FinalRead(r) = &mut op.payload {
            r.records.retain(|(_, v)| v != "0-4");
        }
    }
    let report = checker::check(&ops);
    assert!(!report.valid);
    // The log now ends before 0-4's offset, which member 11 had been given and committed.
    assert_counts(&report, &[("lost", 1)]);
}

#[test]
fn a_commit_past_a_record_no_member_was_given_is_group_lost() {
    let mut ops = clean().ops();
    // Member 11 commits offset 3 of partition 0 without having been given offset 2.
    group_poll(&mut ops, 11, 1).clear();
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("group_lost", 1)]);
    assert_eq!(
        group_examples(&report, "group_lost"),
        vec![&GroupAnomaly::GroupLost {
            partition: 0,
            offset: 2,
            value: "0-4".into(),
            committed_past: 3,
            committed_by_op: committed_op(&ops, 11, 3),
        }]
    );
}

/// The completion index of `process`'s ok commit of partition 0 at `offset`.
fn committed_op(ops: &[Op], process: i64, offset: u64) -> u64 {
    ops.iter()
        .find(|op| {
            op.process == process
                && op.kind == OpType::Ok
                && matches!(&op.payload, Payload::Commit(c) if c.offsets.get(&0) == Some(&offset))
        })
        .expect("such a commit")
        .index
}

#[test]
fn records_above_the_commits_that_nobody_read_make_the_final_group_read_incomplete() {
    let mut ops = clean().ops();
    // Member 11 never got to 0-4 nor committed it; the final group reader did not read it.
    group_poll(&mut ops, 11, 1).clear();
    ops.retain(|op| {
        !(op.process == 11
            && matches!(&op.payload, Payload::Commit(c) if c.offsets.get(&0) == Some(&3)))
    });
    for op in &mut ops {
        if let Payload::FetchCommitted(c) = &mut op.payload {
            c.committed.insert(0, 2);
        }
    }
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("group_final_read_incomplete", 1)]);
}

#[test]
fn two_members_proven_to_own_a_partition_at_once_is_double_ownership() {
    let mut h = HistoryBuilder::new();
    h.send_ok(0, 0, "0-0", 0, Producer::NonIdempotent);
    h.group_poll(10, &[(0, 0, "0-0")], &[(Assigned, &[0])]);
    h.group_poll(11, &[(0, 0, "0-0")], &[(Assigned, &[0])]);
    h.commit(10, OpType::Ok, &[(0, 1)]);
    h.commit(11, OpType::Ok, &[(0, 1)]);
    h.leave(10, &[(Revoked, &[0])]);
    h.leave(11, &[(Revoked, &[0])]);
    h.final_read_ok(20, 0, 0, &[(0, "0-0")]);
    h.fetch_committed(21, &[(0, 1)]);
    h.group_final_read(30, &[], &[(Assigned, &[0])]);
    let ops = h.ops();
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(
        &report,
        &[("double_ownership", 1), ("group_redelivered", 1)],
    );
    let [GroupAnomaly::Ownership {
        partition: 0,
        first: Hold { process: 10, .. },
        second: Hold { process: 11, .. },
    }] = group_examples(&report, "double_ownership")[..]
    else {
        panic!("{}", report.summary());
    };
}

#[test]
fn overlapping_holds_without_commits_proving_both_are_only_reported() {
    // Member 10's session ended unnoticed (it only learns so later: lost); member 11 got the
    // partition and committed. Member 10 never committed during its hold, so nothing proves
    // the coordinator still counted it the owner.
    let mut h = HistoryBuilder::new();
    h.send_ok(0, 0, "0-0", 0, Producer::NonIdempotent);
    h.group_poll(10, &[], &[(Assigned, &[0])]);
    h.group_poll(11, &[(0, 0, "0-0")], &[(Assigned, &[0])]);
    h.commit(11, OpType::Ok, &[(0, 1)]);
    h.commit(10, OpType::Fail, &[(0, 1)]);
    h.group_poll(10, &[], &[(Lost, &[0])]);
    h.leave(11, &[(Revoked, &[0])]);
    h.final_read_ok(20, 0, 0, &[(0, "0-0")]);
    h.fetch_committed(21, &[(0, 1)]);
    h.group_final_read(30, &[], &[(Assigned, &[0])]);
    let report = checker::check(&h.ops());
    assert!(report.valid, "{}", report.summary());
    assert_counts(&report, &[("overlapping_assignments", 1)]);
}

/// Member 10 commits partition 0 at 2, then at 1 (`between` runs in between).
fn regression(between: impl FnOnce(&mut HistoryBuilder)) -> Report {
    let p = Producer::NonIdempotent;
    let mut h = HistoryBuilder::new();
    h.send_ok(0, 0, "0-0", 0, p);
    h.send_ok(0, 0, "0-1", 1, p);
    h.group_poll(10, &[(0, 0, "0-0"), (0, 1, "0-1")], &[(Assigned, &[0])]);
    h.commit(10, OpType::Ok, &[(0, 2)]);
    between(&mut h);
    h.commit(10, OpType::Ok, &[(0, 1)]);
    h.leave(10, &[(Revoked, &[0])]);
    h.final_read_ok(20, 0, 0, &[(0, "0-0"), (1, "0-1")]);
    h.fetch_committed(21, &[(0, 1)]);
    h.group_final_read(30, &[(0, 1, "0-1")], &[(Assigned, &[0])]);
    checker::check(&h.ops())
}

#[test]
fn a_member_committing_lower_than_it_had_is_a_commit_regression() {
    let report = regression(|_| {});
    assert!(!report.valid);
    assert_counts(
        &report,
        &[("commit_regression", 1), ("group_redelivered", 1)],
    );
    let [GroupAnomaly::CommitRegression {
        partition: 0,
        process: 10,
        offset: 1,
        earlier_process: 10,
        earlier_offset: 2,
        explained_by_op: None,
        ..
    }] = group_examples(&report, "commit_regression")[..]
    else {
        panic!("{}", report.summary());
    };
}

#[test]
fn a_regression_an_unknown_commit_may_explain_is_only_reported() {
    let report = regression(|h| h.commit(10, OpType::Info, &[(0, 1)]));
    assert!(report.valid, "{}", report.summary());
    assert_counts(
        &report,
        &[("commit_regression_ambiguous", 1), ("group_redelivered", 1)],
    );
}

#[test]
fn a_regression_across_members_is_only_reported() {
    let p = Producer::NonIdempotent;
    let mut h = HistoryBuilder::new();
    h.send_ok(0, 0, "0-0", 0, p);
    h.send_ok(0, 0, "0-1", 1, p);
    h.group_poll(10, &[(0, 0, "0-0"), (0, 1, "0-1")], &[(Assigned, &[0])]);
    h.commit(10, OpType::Ok, &[(0, 2)]);
    h.crash(10);
    h.group_poll(11, &[(0, 0, "0-0")], &[(Assigned, &[0])]);
    h.commit(11, OpType::Ok, &[(0, 1)]);
    h.leave(11, &[(Revoked, &[0])]);
    h.final_read_ok(20, 0, 0, &[(0, "0-0"), (1, "0-1")]);
    h.fetch_committed(21, &[(0, 1)]);
    h.group_final_read(30, &[(0, 1, "0-1")], &[(Assigned, &[0])]);
    let report = checker::check(&h.ops());
    assert!(report.valid, "{}", report.summary());
    assert_counts(
        &report,
        &[
            ("commit_regression_cross_process", 1),
            ("group_redelivered", 2),
        ],
    );
}

#[test]
fn records_of_a_partition_the_member_does_not_own_are_caught() {
    let mut ops = clean().ops();
    // Member 11's first poll returns a record of partition 0, which it was not assigned yet.
    group_poll(&mut ops, 11, 0).push((0, 1, "0-1".into()));
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("unowned_records", 1), ("group_redelivered", 1)]);
}

//! The fault-suite checker's self-test: clean histories pass with every count 0, and each kind
//! of anomaly, planted by doctoring a clean history, is caught with the right count and
//! details. Histories are built in memory (no cluster); the round-trip tests go through
//! `history.jsonl` files as a real run does.
//!
//! The random histories print their seed; `JEPSEN_CHECKER_SEED=N` replays one.

use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use rafka_tests::jepsen::checker::queue::{QueueAnomaly, ReadKind, Reader, UnexpectedWhy};
use rafka_tests::jepsen::checker::synthetic::{HistoryBuilder, Producer};
use rafka_tests::jepsen::checker::{self, Anomaly, Report};
use rafka_tests::jepsen::history::{self, NemesisPhase, Op, OpType, Payload, SendValue};

/// The anomaly counts of the queue workload other than the headline four.
const QUEUE_COUNTS: [&str; 8] = [
    "ack_offset_mismatch",
    "duplicated_idempotent",
    "duplicated_non_idempotent",
    "inconsistent_offsets",
    "non_monotonic_polls",
    "skipped",
    "final_read_missing",
    "malformed_history",
];

/// A small history of two partitions, written out in full so each test can doctor one thing.
///
/// Partition 0: `0-0`@0, `0-1`@1 (idempotent process 0), `1-0`@2 (non-idempotent process 1),
/// offset 3 left empty as a transaction marker would, `0-2`@4, `1-1`@5; the send of `3-0`
/// failed. Partition 1: `0-3`@0, `1-2`@1, `1-3`@2; the send of `2-0` ended `info` and did not
/// take effect. Consumer 10 polls partition 0 in three polls, consumer 11 partition 1 in one;
/// process 20 reads both partitions back at the end.
fn clean() -> Vec<Op> {
    use Producer::{Idempotent, NonIdempotent};
    let mut h = HistoryBuilder::new();
    h.nemesis("kill", NemesisPhase::Start, &[2]);
    h.send_ok(0, 0, "0-0", 0, Idempotent);
    h.send_ok(0, 0, "0-1", 1, Idempotent);
    h.send_ok(0, 1, "0-3", 0, Idempotent);
    h.send_ok(1, 0, "1-0", 2, NonIdempotent);
    h.send_info(2, 1, "2-0", Idempotent);
    h.send_fail(3, 0, "3-0", Idempotent);
    h.poll_ok(10, 0, 0, &[(0, "0-0"), (1, "0-1")]);
    h.nemesis("kill", NemesisPhase::Stop, &[2]);
    h.send_ok(0, 0, "0-2", 4, Idempotent);
    h.send_ok(1, 1, "1-2", 1, NonIdempotent);
    h.poll_ok(10, 0, 2, &[(2, "1-0"), (4, "0-2")]);
    h.send_ok(1, 0, "1-1", 5, NonIdempotent);
    h.send_ok(1, 1, "1-3", 2, NonIdempotent);
    h.poll_ok(10, 0, 5, &[(5, "1-1")]);
    h.poll_ok(11, 1, 0, &[(0, "0-3"), (1, "1-2"), (2, "1-3")]);
    h.final_read_ok(
        20,
        0,
        0,
        &[(0, "0-0"), (1, "0-1"), (2, "1-0"), (4, "0-2"), (5, "1-1")],
    );
    h.final_read_ok(20, 1, 0, &[(0, "0-3"), (1, "1-2"), (2, "1-3")]);
    h.ops()
}

/// The records of the ok final read of `partition`.
fn final_read(ops: &mut [Op], partition: u32) -> &mut Vec<(u64, String)> {
    ops.iter_mut()
        .find_map(|op| match &mut op.payload {
            Payload::FinalRead(r) if op.kind == OpType::Ok && r.partition == partition => {
                Some(&mut r.records)
            }
            _ => None,
        })
        .expect("a final read of the partition")
}

/// The records of the `nth` (from 0) ok poll of `process`.
fn poll(ops: &mut [Op], process: i64, nth: usize) -> &mut Vec<(u64, String)> {
    ops.iter_mut()
        .filter(|op| op.process == process && op.kind == OpType::Ok)
        .filter_map(|op| match &mut op.payload {
            Payload::Poll(r) => Some(&mut r.records),
            _ => None,
        })
        .nth(nth)
        .expect("such a poll")
}

/// The completion of the send of `value`.
fn send_completion<'a>(ops: &'a mut [Op], value: &str) -> &'a mut SendValue {
    ops.iter_mut()
        .find_map(|op| match &mut op.payload {
            Payload::Send(s) if op.kind != OpType::Invoke && s.value == value => Some(s),
            _ => None,
        })
        .expect("a completed send of the value")
}

fn records(rs: &[(u64, &str)]) -> Vec<(u64, String)> {
    rs.iter().map(|(o, v)| (*o, v.to_string())).collect()
}

/// Asserts the report counts exactly `expected` (by report.json name) and 0 for the rest.
fn assert_counts(report: &Report, expected: &[(&str, usize)]) {
    let json = serde_json::to_value(report).unwrap();
    for name in ["lost", "duplicated", "reordered", "unexpected"]
        .into_iter()
        .chain(QUEUE_COUNTS)
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

/// The examples of one kind, as queue anomalies.
fn examples<'a>(report: &'a Report, kind: &str) -> Vec<&'a QueueAnomaly> {
    report.anomalies[kind]
        .examples
        .iter()
        .map(|a| match a {
            Anomaly::Queue(q) => q,
            other => panic!("not a queue anomaly: {other}"),
        })
        .collect()
}

#[test]
fn the_clean_history_is_valid_with_every_count_zero() {
    let report = checker::check(&clean());
    assert!(report.valid, "{}", report.summary());
    assert_counts(&report, &[]);
    assert_eq!(report.indeterminate, 1, "the info send of 2-0");
    assert_eq!(report.workloads, ["queue"]);
    let send = report.operations["send"];
    assert_eq!((send.invoke, send.ok, send.fail, send.info), (10, 8, 1, 1));
    assert_eq!(report.operations["nemesis"].info, 2);
}

#[test]
fn a_lost_write_is_caught() {
    let mut ops = clean();
    final_read(&mut ops, 0).retain(|(o, _)| *o != 5);
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("lost", 1)]);
    let index_of = |f: &dyn Fn(&Op) -> bool| ops.iter().find(|op| f(op)).unwrap().index;
    assert_eq!(
        examples(&report, "lost"),
        [&QueueAnomaly::Lost {
            partition: 0,
            value: "1-1".into(),
            acked_offset: Some(5),
            process: 1,
            op_index: index_of(&|op| op.kind == OpType::Ok
                && matches!(&op.payload, Payload::Send(s) if s.value == "1-1")),
            polled: Some((
                5,
                Reader {
                    f: ReadKind::Poll,
                    process: 10,
                    op_index: index_of(&|op| op.kind == OpType::Ok
                        && matches!(&op.payload, Payload::Poll(r) if r.from == 5)),
                }
            )),
        }]
    );
    let summary = report.summary();
    assert!(summary.contains("INVALID"), "{summary}");
    assert!(summary.contains("\"1-1\""), "{summary}");
}

#[test]
fn a_lost_write_in_the_middle_also_leaves_its_offset_empty() {
    let mut ops = clean();
    final_read(&mut ops, 0).retain(|(o, _)| *o != 1);
    let report = checker::check(&ops);
    // The log goes on past offset 1, so its acknowledgement is wrong as well as the value lost.
    assert_counts(&report, &[("lost", 1), ("ack_offset_mismatch", 1)]);
}

#[test]
fn an_indeterminate_send_given_to_a_consumer_then_gone_is_lost() {
    let mut ops = clean();
    // 2-0's send ended info; a consumer was given it, so it was committed, yet the final read
    // lacks it.
    poll(&mut ops, 11, 0).push((3, "2-0".into()));
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("lost", 1)]);
    match examples(&report, "lost")[0] {
        QueueAnomaly::Lost {
            partition: 1,
            value,
            acked_offset: None,
            polled: Some((3, reader)),
            ..
        } => assert_eq!((value.as_str(), reader.process), ("2-0", 11)),
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_acknowledged_offset_holding_another_value_is_caught() {
    let mut ops = clean();
    send_completion(&mut ops, "0-1").offset = Some(2);
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("ack_offset_mismatch", 1)]);
    match examples(&report, "ack_offset_mismatch")[0] {
        QueueAnomaly::AckOffsetMismatch {
            partition: 0,
            value,
            acked_offset: 2,
            value_at_acked_offset: Some(there),
            read_at,
            ..
        } => {
            assert_eq!((value.as_str(), there.as_str()), ("0-1", "1-0"));
            assert_eq!(read_at, &[1]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_idempotent_duplicate_is_invalid() {
    let mut ops = clean();
    final_read(&mut ops, 0).push((6, "0-0".into()));
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("duplicated", 1), ("duplicated_idempotent", 1)]);
    match examples(&report, "duplicated_idempotent")[0] {
        QueueAnomaly::Duplicated {
            partition: 0,
            value,
            offsets,
            idempotent: true,
            send_outcome: Some(OpType::Ok),
            process: 0,
            ..
        } => {
            assert_eq!(value, "0-0");
            assert_eq!(offsets, &[0, 6]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_non_idempotent_duplicate_is_reported_but_valid() {
    let mut ops = clean();
    final_read(&mut ops, 0).push((6, "1-0".into()));
    let report = checker::check(&ops);
    assert!(report.valid, "{}", report.summary());
    assert_counts(
        &report,
        &[("duplicated", 1), ("duplicated_non_idempotent", 1)],
    );
    assert!(report.summary().contains("reported, allowed"));
    match examples(&report, "duplicated_non_idempotent")[0] {
        QueueAnomaly::Duplicated {
            value,
            offsets,
            idempotent: false,
            ..
        } => {
            assert_eq!(value, "1-0");
            assert_eq!(offsets, &[2, 6]);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_duplicate_seen_only_by_a_poll_counts_too() {
    let mut ops = clean();
    // The consumer is given 0-0 again at offset 3, which the final read has empty.
    *poll(&mut ops, 10, 1) = records(&[(2, "1-0"), (3, "0-0"), (4, "0-2")]);
    let report = checker::check(&ops);
    assert_counts(&report, &[("duplicated", 1), ("duplicated_idempotent", 1)]);
}

#[test]
fn a_reorder_is_caught() {
    let mut ops = clean();
    // The broker wrote 0-1 before 0-0 although process 0 sent 0-0 first, and said so.
    *final_read(&mut ops, 0) =
        records(&[(0, "0-1"), (1, "0-0"), (2, "1-0"), (4, "0-2"), (5, "1-1")]);
    *poll(&mut ops, 10, 0) = records(&[(0, "0-1"), (1, "0-0")]);
    send_completion(&mut ops, "0-0").offset = Some(1);
    send_completion(&mut ops, "0-1").offset = Some(0);
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("reordered", 1)]);
    match examples(&report, "reordered")[0] {
        QueueAnomaly::Reordered {
            partition: 0,
            process: 0,
            earlier,
            later,
        } => {
            assert_eq!((earlier.value.as_str(), earlier.offset), ("0-0", 1));
            assert_eq!((later.value.as_str(), later.offset), ("0-1", 0));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_inconsistent_offset_is_caught() {
    let mut ops = clean();
    // The consumer saw 2-0 (whose send was indeterminate) at offset 1, where the final read has
    // 1-2: one of the two reads saw a log that was later rewritten.
    *poll(&mut ops, 11, 0) = records(&[(0, "0-3"), (1, "2-0"), (2, "1-3")]);
    let report = checker::check(&ops);
    assert!(!report.valid);
    // A value read at an offset that holds another in the end is also lost, duplicated or
    // unexpected: here 2-0, which a consumer was given, is lost.
    assert_counts(&report, &[("inconsistent_offsets", 1), ("lost", 1)]);
    match examples(&report, "inconsistent_offsets")[0] {
        QueueAnomaly::InconsistentOffset {
            partition: 1,
            offset: 1,
            values,
            read_by,
        } => {
            assert_eq!(values, &["2-0", "1-2"]);
            assert_eq!(read_by[0].process, 11);
            assert_eq!(read_by[1].process, 20);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn unexpected_values_are_caught() {
    let mut ops = clean();
    final_read(&mut ops, 1).extend(records(&[(3, "9-9"), (4, "0-0")]));
    final_read(&mut ops, 0).push((6, "3-0".into()));
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("unexpected", 3)]);
    let found: Vec<(u32, &str, UnexpectedWhy)> = examples(&report, "unexpected")
        .into_iter()
        .map(|a| match a {
            QueueAnomaly::Unexpected {
                partition,
                value,
                why,
                ..
            } => (*partition, value.as_str(), *why),
            other => panic!("{other:?}"),
        })
        .collect();
    assert!(
        found.contains(&(1, "9-9", UnexpectedWhy::NeverSent)),
        "{found:?}"
    );
    assert!(
        found.contains(&(1, "0-0", UnexpectedWhy::WrongPartition { sent_to: 0 })),
        "{found:?}"
    );
    assert!(
        found.contains(&(0, "3-0", UnexpectedWhy::SendFailed)),
        "{found:?}"
    );
}

#[test]
fn a_non_monotonic_poll_is_caught() {
    let mut ops = clean();
    *poll(&mut ops, 10, 2) = records(&[(4, "0-2"), (5, "1-1")]);
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("non_monotonic_polls", 1)]);
    match examples(&report, "non_monotonic_polls")[0] {
        QueueAnomaly::NonMonotonicPoll {
            partition: 0,
            process: 10,
            previous_offset: 4,
            offset: 4,
            ..
        } => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_skipped_record_is_caught_but_an_empty_offset_is_not() {
    let mut ops = clean();
    // The consumer goes from offset 1 to 4: offset 3 is empty in the log, offset 2 is not.
    *poll(&mut ops, 10, 1) = records(&[(4, "0-2")]);
    let report = checker::check(&ops);
    assert!(!report.valid);
    assert_counts(&report, &[("skipped", 1)]);
    match examples(&report, "skipped")[0] {
        QueueAnomaly::Skipped {
            partition: 0,
            process: 10,
            expected_from: 2,
            offset: 4,
            skipped_records: 1,
            first_skipped_offset: 2,
            first_skipped_value,
            ..
        } => assert_eq!(first_skipped_value, "1-0"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_consumer_starting_past_records_skips_them() {
    let mut ops = clean();
    // Consumer 11 says it started at offset 0 but its first record is at offset 2.
    *poll(&mut ops, 11, 0) = records(&[(2, "1-3")]);
    let report = checker::check(&ops);
    assert_counts(&report, &[("skipped", 1)]);
}

#[test]
fn a_missing_final_read_is_invalid() {
    let mut ops = clean();
    ops.retain(|op| !matches!(&op.payload, Payload::FinalRead(r) if r.partition == 1));
    let report = checker::check(&ops);
    assert!(!report.valid);
    // Partition 1's sends are not reported lost: nothing was read to say so.
    assert_counts(&report, &[("final_read_missing", 1)]);
    assert_eq!(
        examples(&report, "final_read_missing"),
        [&QueueAnomaly::FinalReadMissing {
            partition: 1,
            ok_sends: 3
        }]
    );
}

#[test]
fn an_indeterminate_send_may_or_may_not_be_read() {
    let mut ops = clean();
    final_read(&mut ops, 1).push((3, "2-0".into()));
    let report = checker::check(&ops);
    assert!(report.valid, "{}", report.summary());
    assert_counts(&report, &[]);
}

#[test]
fn report_json_has_the_contracted_shape() {
    let mut ops = clean();
    final_read(&mut ops, 0).retain(|(o, _)| *o != 5);
    let json = serde_json::to_value(checker::check(&ops)).unwrap();
    assert_eq!(json["valid"], false);
    assert_eq!(json["lost"], 1);
    assert_eq!(json["duplicated"], 0);
    assert_eq!(json["reordered"], 0);
    assert_eq!(json["unexpected"], 0);
    assert_eq!(json["indeterminate"], 1);
    let lost = &json["anomalies"]["lost"];
    assert_eq!(lost["count"], 1);
    assert_eq!(lost["severity"], "invalid");
    assert_eq!(lost["examples"][0]["partition"], 0);
    assert_eq!(lost["examples"][0]["value"], "1-1");
    assert_eq!(lost["examples"][0]["acked_offset"], 5);
    assert_eq!(json["operations"]["final_read"]["ok"], 2);
}

/// A random queue-workload history with no anomalies: a model log per partition that ok
/// sends append to (and half the info sends), with empty offsets now and then as transaction
/// markers leave, consumers polling their way through it, nemesis windows, and a final read.
fn random_clean(seed: u64, steps: usize) -> (Vec<Op>, usize) {
    const PARTITIONS: usize = 3;
    const PRODUCERS: i64 = 4;
    const CONSUMERS: i64 = 2;
    // Fresh process ids for workers whose operation ended info start here.
    const FRESH_FROM: i64 = 1000;
    let mut rng = StdRng::seed_from_u64(seed);
    let mut h = HistoryBuilder::new();
    let mut logs: Vec<Vec<(u64, String)>> = vec![Vec::new(); PARTITIONS];
    let mut next_offset = [0u64; PARTITIONS];
    let mut producers: Vec<i64> = (0..PRODUCERS).collect();
    let mut sequence = vec![0u64; PRODUCERS as usize];
    let mut consumers: Vec<i64> = (100..100 + CONSUMERS).collect();
    // Per consumer and partition: the next offset it will be given.
    let mut positions = vec![[0u64; PARTITIONS]; CONSUMERS as usize];
    let mut fresh = FRESH_FROM;
    let mut indeterminate = 0;
    let mut faulty = false;
    for _ in 0..steps {
        h.latency = Duration::from_micros(rng.gen_range(100..5_000));
        let p = rng.gen_range(0..PARTITIONS);
        match rng.gen_range(0..100) {
            0..=54 => {
                let w = rng.gen_range(0..PRODUCERS as usize);
                let process = producers[w];
                let value = format!("{w}-{}", sequence[w]);
                sequence[w] += 1;
                let producer = if w % 2 == 0 {
                    Producer::Idempotent
                } else {
                    Producer::NonIdempotent
                };
                match rng.gen_range(0..100) {
                    0..=84 => {
                        let offset = next_offset[p];
                        logs[p].push((offset, value.clone()));
                        next_offset[p] += 1;
                        h.send_ok(process, p as u32, &value, offset, producer);
                    }
                    85..=89 => h.send_fail(process, p as u32, &value, producer),
                    _ => {
                        if rng.gen_bool(0.5) {
                            logs[p].push((next_offset[p], value.clone()));
                            next_offset[p] += 1;
                        }
                        h.send_info(process, p as u32, &value, producer);
                        indeterminate += 1;
                        producers[w] = fresh;
                        fresh += 1;
                    }
                }
            }
            55..=57 => next_offset[p] += 1, // a transaction marker
            58..=97 => {
                let c = rng.gen_range(0..CONSUMERS as usize);
                let from = positions[c][p];
                if rng.gen_range(0..20) == 0 {
                    h.poll_failed(consumers[c], p as u32, from, OpType::Info);
                    consumers[c] = fresh;
                    fresh += 1;
                    continue;
                }
                let max = rng.gen_range(1..10);
                let given: Vec<(u64, &str)> = logs[p]
                    .iter()
                    .filter(|(o, _)| *o >= from)
                    .take(max)
                    .map(|(o, v)| (*o, v.as_str()))
                    .collect();
                if let Some((last, _)) = given.last() {
                    positions[c][p] = last + 1;
                }
                h.poll_ok(consumers[c], p as u32, from, &given);
            }
            _ => {
                let phase = if faulty {
                    NemesisPhase::Stop
                } else {
                    NemesisPhase::Start
                };
                faulty = !faulty;
                h.nemesis("partition", phase, &[1]);
            }
        }
    }
    for (p, log) in logs.iter().enumerate() {
        let all: Vec<(u64, &str)> = log.iter().map(|(o, v)| (*o, v.as_str())).collect();
        h.final_read_ok(fresh, p as u32, 0, &all);
    }
    (h.ops(), indeterminate)
}

fn seed() -> u64 {
    let seed = std::env::var("JEPSEN_CHECKER_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (JEPSEN_CHECKER_SEED={seed} to replay)");
    seed
}

#[test]
fn a_random_clean_history_is_valid_and_doctoring_it_is_caught() {
    let seed = seed();
    let (ops, indeterminate) = random_clean(seed, 5_000);
    let report = checker::check(&ops);
    assert!(report.valid, "seed {seed}\n{}", report.summary());
    assert_counts(&report, &[]);
    assert_eq!(report.indeterminate, indeterminate, "seed {seed}");

    // Drop the record of one ok send from the last partition's final read, at its end so the
    // log does not go on past it: exactly one lost write.
    let mut doctored = ops.clone();
    let last_ok: String = doctored
        .iter()
        .rev()
        .find_map(|op| match &op.payload {
            Payload::Send(s) if op.kind == OpType::Ok && s.partition == 2 => Some(s.value.clone()),
            _ => None,
        })
        .expect("an ok send to partition 2");
    // Records after it can only be of info sends; drop them too, as if the log ended there,
    // and unread, so that they are no anomaly.
    let records = final_read(&mut doctored, 2);
    let at = records.iter().position(|(_, v)| *v == last_ok).unwrap();
    let dropped: Vec<String> = records.split_off(at).into_iter().map(|(_, v)| v).collect();
    for op in &mut doctored {
        if let Payload::Poll(r) = &mut op.payload {
            r.records.retain(|(_, v)| !dropped[1..].contains(v));
        }
    }
    let report = checker::check(&doctored);
    assert!(!report.valid, "seed {seed}");
    assert_counts(&report, &[("lost", 1)]);
}

#[test]
fn a_large_history_is_checked_quickly() {
    let seed = seed();
    let (ops, _) = random_clean(seed, 150_000);
    let started = Instant::now();
    let report = checker::check(&ops);
    let took = started.elapsed();
    println!("checked {} ops in {took:?}", ops.len());
    assert!(report.valid, "seed {seed}\n{}", report.summary());
    assert!(ops.len() > 250_000);
    // Generous, for a loaded two-core machine: a quadratic scan would take minutes.
    assert!(took < Duration::from_secs(20), "{took:?}");
}

#[test]
fn histories_round_trip_through_history_jsonl() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.jsonl");

    let ops = clean();
    history::write_jsonl(&ops, std::fs::File::create(&path).unwrap()).unwrap();
    let read = history::read_jsonl(&path).unwrap();
    assert_eq!(read, ops);
    let report = checker::check(&read);
    assert!(report.valid, "{}", report.summary());

    let mut doctored = clean();
    final_read(&mut doctored, 0).retain(|(o, _)| *o != 5);
    final_read(&mut doctored, 0).push((6, "0-0".into()));
    history::write_jsonl(&doctored, std::fs::File::create(&path).unwrap()).unwrap();
    let report = checker::check(&history::read_jsonl(&path).unwrap());
    assert!(!report.valid);
    assert_counts(
        &report,
        &[
            ("lost", 1),
            ("duplicated", 1),
            ("duplicated_idempotent", 1),
            // 0-0 at offset 6 means the log goes on past 1-1's acknowledged offset 5.
            ("ack_offset_mismatch", 1),
        ],
    );

    let seed = seed();
    let (ops, _) = random_clean(seed, 2_000);
    history::write_jsonl(&ops, std::fs::File::create(&path).unwrap()).unwrap();
    let report = checker::check(&history::read_jsonl(&path).unwrap());
    assert!(report.valid, "seed {seed}\n{}", report.summary());
}

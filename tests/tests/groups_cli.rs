//! The consumer-group commands of the `rafka` CLI, run as the real binary against a
//! three-broker cluster the test starts, asserting on the output formats CONTRACT.md and
//! client/src/cli/{consume,group}.rs define:
//!
//! - `rafka consume T --group G --max-messages N --format json` prints N records in the
//!   contract's JSON shape and commits exactly what it printed: the next run resumes right
//!   after them, and a run with `--commit false` leaves the committed offsets where they were;
//! - `rafka group list` and `rafka group describe G`: state, members, assignment, committed
//!   offset, high watermark and lag in records and in milliseconds per partition;
//! - `rafka group reset-offsets G --topic T --to earliest|latest|OFFSET|@TIMESTAMP_MS` moves
//!   the committed offsets (seen by describe and by a further consume), and is refused with
//!   one clear stderr line and exit 1 while the group has a member;
//! - `--partition` with `--group` is a usage error (exit 2); describing an unknown group fails.
//!
//! Each test prints a seed (`RAFKA_TEST_SEED` replays its random choices).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rafka_tests::cluster::{exclusive, wait_until, Cluster};
use rafka_tests::harness::{binary, die_with_parent, rafka, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SETTLE: Duration = Duration::from_secs(60);

/// What `rafka` prints on stderr when a reset meets a group with members.
const NON_EMPTY: &str = "has active members; stop its consumers (or wait for their sessions \
                         to expire) before changing its offsets (NON_EMPTY_GROUP)";

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

/// Runs `rafka` and insists on exit 0 and an empty stderr; returns stdout.
fn ok(bootstrap: &str, args: &[&str], stdin: &str) -> String {
    let (code, out, err) = rafka(bootstrap, args, stdin);
    assert_eq!(code, 0, "rafka {args:?} failed: {err}");
    assert_eq!(err, "", "rafka {args:?} wrote to stderr");
    out
}

/// Runs `rafka`, insists on exit `code`, nothing on stdout and exactly one stderr line;
/// returns that line.
fn fails(bootstrap: &str, args: &[&str], code: i32) -> String {
    let (got, out, err) = rafka(bootstrap, args, "");
    assert_eq!(got, code, "rafka {args:?}: stdout {out:?}, stderr {err:?}");
    assert_eq!(out, "", "rafka {args:?} printed on failure");
    assert_eq!(err.lines().count(), 1, "not one stderr line: {err:?}");
    err.trim_end().to_owned()
}

/// One acknowledged record of `rafka produce --format json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Ack {
    partition: u32,
    offset: u64,
}

/// `rafka produce T --key-separator : --format json` of `values` (keyed `k-VALUE`, so they
/// spread over the partitions); checks each output line is exactly
/// `{"line":L,"partition":P,"offset":O}`, one per input line in order, and returns the acks
/// by value.
fn produce(bootstrap: &str, topic: &str, values: &[String]) -> BTreeMap<String, Ack> {
    let input: String = values.iter().map(|v| format!("k-{v}:{v}\n")).collect();
    let out = ok(
        bootstrap,
        &["produce", topic, "--key-separator", ":", "--format", "json"],
        &input,
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), values.len(), "{out}");
    let mut acks = BTreeMap::new();
    for (i, (line, value)) in lines.iter().zip(values).enumerate() {
        let v: serde_json::Value = serde_json::from_str(line).expect("produce json");
        let ack = Ack {
            partition: v["partition"].as_u64().expect("partition") as u32,
            offset: v["offset"].as_u64().expect("offset"),
        };
        let exact = format!(
            r#"{{"line":{},"partition":{},"offset":{}}}"#,
            i + 1,
            ack.partition,
            ack.offset
        );
        assert_eq!(*line, exact);
        acks.insert(value.clone(), ack);
    }
    acks
}

/// One record of `rafka consume --format json`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Printed {
    partition: u32,
    offset: u64,
    timestamp_ms: u64,
    value: String,
}

/// Parses `consume --format json` output, checking every line is exactly the contract's
/// `{"topic":..,"partition":..,"offset":..,"timestamp_ms":..,"key":..,"value":..,
/// "headers":{}}` (field order included) for a record `produce` keyed `k-VALUE`.
fn parse_consumed(topic: &str, out: &str) -> Vec<Printed> {
    out.lines()
        .map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).expect("consume json");
            let p = Printed {
                partition: v["partition"].as_u64().expect("partition") as u32,
                offset: v["offset"].as_u64().expect("offset"),
                timestamp_ms: v["timestamp_ms"].as_u64().expect("timestamp_ms"),
                value: v["value"].as_str().expect("value").to_owned(),
            };
            let exact = format!(
                r#"{{"topic":"{topic}","partition":{},"offset":{},"timestamp_ms":{},"key":"k-{}","value":"{}","headers":{{}}}}"#,
                p.partition, p.offset, p.timestamp_ms, p.value, p.value
            );
            assert_eq!(line, exact);
            p
        })
        .collect()
}

/// `rafka consume T --group G --format json` with extra flags; the printed records.
fn consume(bootstrap: &str, topic: &str, group: &str, extra: &[&str]) -> Vec<Printed> {
    let mut args = vec!["consume", topic, "--group", group, "--format", "json"];
    args.extend_from_slice(extra);
    parse_consumed(topic, &ok(bootstrap, &args, ""))
}

/// Checks each printed record is the one `produce` acknowledged for its value.
fn check_against(acks: &BTreeMap<String, Ack>, printed: &[Printed]) {
    for p in printed {
        let ack = acks
            .get(&p.value)
            .unwrap_or_else(|| panic!("printed a record nobody produced: {p:?}"));
        assert_eq!(
            (p.partition, p.offset),
            (ack.partition, ack.offset),
            "{p:?}"
        );
    }
}

/// A row of `group describe`'s partition table; `-` cells are `None`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PartitionRow {
    topic: String,
    partition: u32,
    committed: Option<u64>,
    high_watermark: u64,
    lag: Option<u64>,
    lag_ms: Option<u64>,
    member: Option<String>,
}

/// `rafka group describe G`, parsed: `Group: G  State: S  Epoch: E  Assignor: A  Members: N`,
/// then (with members) the member table, then the partition table, separated by blank lines.
#[derive(Debug)]
struct Described {
    state: String,
    epoch: i32,
    members: Vec<Vec<String>>,
    partitions: Vec<PartitionRow>,
}

fn cell(s: &str) -> Option<&str> {
    (s != "-").then_some(s)
}

fn number(s: &str) -> Option<u64> {
    cell(s).map(|n| n.parse().unwrap_or_else(|_| panic!("not a number: {s}")))
}

/// The rows of an aligned table whose header cells must be `header`.
fn table_rows(text: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut lines = text.lines();
    let first: Vec<&str> = lines.next().expect("a header").split_whitespace().collect();
    assert_eq!(first, header, "{text}");
    lines
        .map(|l| {
            let cells: Vec<String> = l.split_whitespace().map(str::to_owned).collect();
            assert_eq!(cells.len(), header.len(), "row {l:?} of {text}");
            cells
        })
        .collect()
}

fn describe(bootstrap: &str, group: &str) -> Described {
    let out = ok(bootstrap, &["group", "describe", group], "");
    let (head, rest) = out.split_once("\n\n").expect("header, blank line, tables");
    let fields: Vec<&str> = head.split("  ").collect();
    let value = |i: usize, name: &str| {
        fields[i]
            .strip_prefix(name)
            .unwrap_or_else(|| panic!("field {i} of {head:?} is not {name}"))
    };
    assert_eq!(fields.len(), 5, "{head:?}");
    assert_eq!(value(0, "Group: "), group);
    let state = value(1, "State: ").to_owned();
    let epoch: i32 = value(2, "Epoch: ").parse().expect("epoch");
    assert_eq!(value(3, "Assignor: "), "sticky");
    let member_count: usize = value(4, "Members: ").parse().expect("member count");
    let (members, partitions) = match rest.split_once("\n\n") {
        Some((members, partitions)) => {
            let header = [
                "MEMBER-ID",
                "INSTANCE-ID",
                "CLIENT-ID",
                "HOST",
                "EPOCH",
                "ASSIGNMENT",
            ];
            (table_rows(members, &header), partitions)
        }
        None => (Vec::new(), rest),
    };
    assert_eq!(members.len(), member_count, "{out}");
    let header = [
        "TOPIC",
        "PARTITION",
        "COMMITTED",
        "HIGH-WATERMARK",
        "LAG",
        "LAG-MS",
        "MEMBER",
    ];
    let partitions = table_rows(partitions, &header)
        .into_iter()
        .map(|c| PartitionRow {
            topic: c[0].clone(),
            partition: c[1].parse().expect("partition"),
            committed: number(&c[2]),
            high_watermark: c[3].parse().expect("high watermark"),
            lag: number(&c[4]),
            lag_ms: number(&c[5]),
            member: cell(&c[6]).map(str::to_owned),
        })
        .collect();
    Described {
        state,
        epoch,
        members,
        partitions,
    }
}

/// Committed offset per partition, as describe shows it.
fn committed(d: &Described) -> BTreeMap<u32, Option<u64>> {
    d.partitions
        .iter()
        .map(|p| (p.partition, p.committed))
        .collect()
}

/// Per partition, the acknowledged offsets in order.
fn by_partition(acks: &BTreeMap<String, Ack>) -> BTreeMap<u32, Vec<u64>> {
    let mut out: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for a in acks.values() {
        out.entry(a.partition).or_default().push(a.offset);
    }
    for offsets in out.values_mut() {
        offsets.sort_unstable();
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_a_group_commits_exactly_what_it_printed() {
    let _lock = exclusive().await;
    let mut rng = StdRng::seed_from_u64(seed("consume --group commits"));
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("lines", 3).await;
    let values: Vec<String> = (0..30).map(|i| format!("v{i}")).collect();
    let produced_from = now_ms();
    let acks = produce(&b, "lines", &values);
    let produced_to = now_ms();
    let offsets = by_partition(&acks);
    eprintln!("produced per partition: {offsets:?}");

    // A first run prints N records, each the first ones of its partition, and commits them.
    let n = rng.gen_range(1..=15usize);
    let n_text = n.to_string();
    let first = consume(&b, "lines", "readers", &["--max-messages", &n_text]);
    assert_eq!(first.len(), n);
    check_against(&acks, &first);
    let mut printed: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
    for p in &first {
        printed.entry(p.partition).or_default().push(p.offset);
    }
    for (p, got) in &printed {
        assert_eq!(
            got[..],
            offsets[p][..got.len()],
            "partition {p}: not the first records, in order"
        );
    }

    let described_from = now_ms();
    let d = describe(&b, "readers");
    let described_to = now_ms();
    assert_eq!(d.state, "empty", "the consumer left on exit");
    assert!(d.members.is_empty());
    assert_eq!(d.partitions.len(), 3, "{d:?}");
    for row in &d.partitions {
        assert_eq!(row.topic, "lines");
        assert_eq!(row.member, None);
        let produced = offsets.get(&row.partition).cloned().unwrap_or_default();
        let high_watermark = produced.last().map_or(0, |o| o + 1);
        // Raft's own control batches may follow the last record: at least one past it.
        assert!(row.high_watermark >= high_watermark, "{row:?}");
        let committed = row
            .committed
            .expect("a committed offset for every partition");
        match printed.get(&row.partition) {
            // Exactly after the last printed record.
            Some(got) => assert_eq!(committed, got.last().unwrap() + 1, "{row:?}"),
            // Nothing printed there: the consumer committed where it stood, which must not
            // skip any record.
            None => assert!(
                produced.first().is_none_or(|first| committed <= *first),
                "{row:?} skips records {produced:?}"
            ),
        }
        assert_eq!(row.lag, Some(row.high_watermark - committed), "{row:?}");
        let unconsumed = produced.iter().any(|o| *o >= committed);
        if unconsumed {
            // The age of the oldest unconsumed record: its timestamp lies in the produce
            // window, and describe read it during its own window.
            let lag_ms = row.lag_ms.expect("lag in ms where records are unconsumed");
            assert!(
                lag_ms + 1000 >= described_from - produced_to
                    && lag_ms <= described_to - produced_from + 1000,
                "{row:?}: lag {lag_ms} ms outside [{}, {}]",
                described_from - produced_to,
                described_to - produced_from
            );
        } else {
            assert_eq!(row.lag_ms, Some(0), "{row:?}");
        }
    }
    let after_first = committed(&d);

    // --commit false: prints where the group stands, commits nothing.
    let m = rng.gen_range(1..=(30 - n));
    let peek = consume(
        &b,
        "lines",
        "readers",
        &["--max-messages", &m.to_string(), "--commit", "false"],
    );
    assert_eq!(peek.len(), m);
    check_against(&acks, &peek);
    for p in &peek {
        let start = after_first[&p.partition].expect("committed");
        assert!(p.offset >= start, "{p:?} is before the committed {start}");
    }
    let first_values: BTreeSet<&str> = first.iter().map(|p| p.value.as_str()).collect();
    assert!(
        peek.iter()
            .all(|p| !first_values.contains(p.value.as_str())),
        "--commit false reprinted committed records"
    );
    let d = describe(&b, "readers");
    assert_eq!(committed(&d), after_first, "--commit false committed");

    // The rest: exactly the records the first run did not print, each once.
    let rest = consume(
        &b,
        "lines",
        "readers",
        &["--max-messages", &(30 - n).to_string()],
    );
    check_against(&acks, &rest);
    let rest_values: BTreeSet<&str> = rest.iter().map(|p| p.value.as_str()).collect();
    assert_eq!(rest_values.len(), rest.len(), "a record printed twice");
    let all: BTreeSet<&str> = first_values.union(&rest_values).copied().collect();
    assert_eq!(all.len(), 30, "records missing after two runs");
    assert!(first_values.is_disjoint(&rest_values));
    assert!(peek.iter().all(|p| rest_values.contains(p.value.as_str())));

    let d = describe(&b, "readers");
    for row in &d.partitions {
        assert_eq!(row.committed, Some(row.high_watermark), "{row:?}");
        assert_eq!((row.lag, row.lag_ms), (Some(0), Some(0)), "{row:?}");
    }
    // Nothing is left: a further run prints nothing and ends on its idle timeout.
    let none = consume(&b, "lines", "readers", &["--idle-timeout-ms", "2000"]);
    assert_eq!(none, []);
}

/// A `rafka consume --group` left running in the background, its stdout collected.
struct Background {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Background {
    fn start(bootstrap: &str, topic: &str, group: &str) -> Background {
        let mut cmd = Command::new(binary("rafka"));
        cmd.args(["--bootstrap", bootstrap, "consume", topic, "--group", group])
            .args(["--format", "json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = die_with_parent(&mut cmd).spawn().expect("spawn rafka");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                sink.lock().unwrap().push(line);
            }
        });
        Background {
            child,
            lines,
            reader: Some(reader),
        }
    }

    fn printed(&self) -> usize {
        self.lines.lock().unwrap().len()
    }

    /// SIGINT (what Ctrl-C sends): the CLI commits, leaves and exits 0.
    fn interrupt(mut self) -> String {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = self.child.wait().expect("wait");
        assert_eq!(status.code(), Some(0), "consume on SIGINT: {status}");
        // The reader reaches end of file once the process is gone: then it has every line.
        if let Some(reader) = self.reader.take() {
            reader.join().expect("stdout reader");
        }
        let text = self.lines.lock().unwrap().join("\n");
        text
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `rafka group reset-offsets G --topic T --to TO`; checks the exact table it prints and
/// returns the new offset per partition.
fn reset(bootstrap: &str, group: &str, topic: &str, to: &str) -> BTreeMap<u32, u64> {
    let out = ok(
        bootstrap,
        &[
            "group",
            "reset-offsets",
            group,
            "--topic",
            topic,
            "--to",
            to,
        ],
        "",
    );
    let rows = table_rows(&out, &["TOPIC", "PARTITION", "NEW-OFFSET"]);
    let width = topic.len().max("TOPIC".len());
    let mut text = format!("{:<width$}  PARTITION  NEW-OFFSET\n", "TOPIC");
    let mut offsets = BTreeMap::new();
    for r in &rows {
        assert_eq!(r[0], topic);
        text.push_str(&format!("{topic:<width$}  {:<9}  {}\n", r[1], r[2]));
        offsets.insert(
            r[1].parse().expect("partition"),
            r[2].parse().expect("offset"),
        );
    }
    assert_eq!(out, text, "not the aligned table");
    offsets
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_list_describe_and_reset_offsets() {
    let _lock = exclusive().await;
    let mut rng = StdRng::seed_from_u64(seed("group list/describe/reset"));
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("events", 2).await;
    let early: Vec<String> = (0..12).map(|i| format!("early{i}")).collect();
    let late: Vec<String> = (0..12).map(|i| format!("late{i}")).collect();
    let early_acks = produce(&b, "events", &early);
    // Every early record has a timestamp below `cut`, every late one at or above it.
    let cut = now_ms() + 1;
    wait_until(SETTLE, "the clock to pass the cut", async || {
        if now_ms() >= cut {
            Ok(())
        } else {
            Err(format!("{} < {cut}", now_ms()))
        }
    })
    .await;
    let late_acks = produce(&b, "events", &late);
    let mut acks = early_acks.clone();
    acks.extend(late_acks.clone());

    // Usage and unknown-group errors come before anything else is set up.
    let line = fails(
        &b,
        &["consume", "events", "--group", "audit", "--partition", "0"],
        2,
    );
    assert_eq!(
        line,
        "rafka: --partition cannot be used with --group: the group assigns the partitions"
    );
    let line = fails(&b, &["group", "describe", "audit"], 1);
    assert_eq!(line, "rafka: group 'audit' does not exist");
    assert_eq!(ok(&b, &["group", "list"], ""), "GROUP  STATE  MEMBERS\n");

    let all = consume(&b, "events", "audit", &["--max-messages", "24"]);
    check_against(&acks, &all);
    assert_eq!(
        ok(&b, &["group", "list"], ""),
        "GROUP  STATE  MEMBERS\naudit  empty  0\n"
    );
    let d = describe(&b, "audit");
    let high_watermarks: BTreeMap<u32, u64> = d
        .partitions
        .iter()
        .map(|p| (p.partition, p.high_watermark))
        .collect();
    assert_eq!(d.partitions.len(), 2);
    for row in &d.partitions {
        assert_eq!(row.committed, Some(row.high_watermark), "{row:?}");
    }

    // earliest: the log start, 0 here (nothing was deleted); describe shows it, and the
    // lag is the whole partition.
    let to_earliest = reset(&b, "audit", "events", "earliest");
    assert_eq!(to_earliest, BTreeMap::from([(0, 0), (1, 0)]));
    let d = describe(&b, "audit");
    assert_eq!(committed(&d), BTreeMap::from([(0, Some(0)), (1, Some(0))]));
    for row in &d.partitions {
        assert_eq!(row.lag, Some(row.high_watermark), "{row:?}");
    }

    // latest: the high watermark; no lag.
    let to_latest = reset(&b, "audit", "events", "latest");
    assert_eq!(to_latest, high_watermarks);
    let d = describe(&b, "audit");
    for row in &d.partitions {
        assert_eq!(row.committed, Some(row.high_watermark), "{row:?}");
        assert_eq!((row.lag, row.lag_ms), (Some(0), Some(0)), "{row:?}");
    }

    // OFFSET: taken as is inside the log, clamped to the high watermark beyond it.
    let max_hw = *high_watermarks.values().max().unwrap();
    let offset = rng.gen_range(0..=max_hw + 5);
    let to_offset = reset(&b, "audit", "events", &offset.to_string());
    let expected: BTreeMap<u32, u64> = high_watermarks
        .iter()
        .map(|(p, hw)| (*p, offset.min(*hw)))
        .collect();
    assert_eq!(to_offset, expected, "reset to {offset}");
    let d = describe(&b, "audit");
    assert_eq!(
        committed(&d),
        expected.iter().map(|(p, o)| (*p, Some(*o))).collect()
    );

    // @TIMESTAMP_MS: the first record at or after the cut, i.e. the first late record of
    // each partition (the high watermark where there is none); a further consume then
    // prints exactly the late records.
    let to_cut = reset(&b, "audit", "events", &format!("@{cut}"));
    let late_offsets = by_partition(&late_acks);
    let expected: BTreeMap<u32, u64> = high_watermarks
        .iter()
        .map(|(p, hw)| (*p, late_offsets.get(p).map_or(*hw, |o| o[0])))
        .collect();
    assert_eq!(to_cut, expected, "reset to @{cut}");
    let again = consume(&b, "events", "audit", &["--max-messages", "12"]);
    let again_values: BTreeSet<String> = again.iter().map(|p| p.value.clone()).collect();
    assert_eq!(again_values, late.iter().cloned().collect());
    for p in &again {
        assert!(p.timestamp_ms >= cut, "{p:?} is before the cut {cut}");
    }

    // While a member is live, the group shows it and refuses a reset.
    reset(&b, "audit", "events", "earliest");
    let member = Background::start(&b, "events", "audit");
    wait_until(
        SETTLE,
        "the background consumer to print",
        async || match member.printed() {
            24 => Ok(()),
            n => Err(format!("{n} of 24 records printed")),
        },
    )
    .await;
    // Printing means the member owns partitions; "stable" once it has reported owning all
    // it was given.
    let d = wait_until(SETTLE, "a stable group", async || {
        let d = describe(&b, "audit");
        if d.state == "stable" {
            Ok(d)
        } else {
            Err(format!("state {}", d.state))
        }
    })
    .await;
    assert_eq!(d.members.len(), 1, "{d:?}");
    let m = &d.members[0];
    assert_eq!(m[1..4], ["-", "rafka-cli", "127.0.0.1"], "{m:?}");
    assert_eq!(m[4], d.epoch.to_string(), "{m:?}");
    assert_eq!(m[5], "events-0,events-1");
    for row in &d.partitions {
        assert_eq!(row.member.as_deref(), Some(m[0].as_str()), "{row:?}");
    }
    assert_eq!(
        ok(&b, &["group", "list"], ""),
        "GROUP  STATE   MEMBERS\naudit  stable  1\n"
    );
    let before = committed(&d);
    let line = fails(
        &b,
        &[
            "group",
            "reset-offsets",
            "audit",
            "--topic",
            "events",
            "--to",
            "latest",
        ],
        1,
    );
    assert_eq!(line, format!("rafka: group 'audit' {NON_EMPTY}"));
    assert_eq!(
        committed(&describe(&b, "audit")),
        before,
        "a refused reset moved offsets"
    );

    // Ctrl-C: the member commits what it printed and leaves before exiting, so the group is
    // empty and resettable at once.
    let printed = parse_consumed("events", &member.interrupt());
    check_against(&acks, &printed);
    let d = describe(&b, "audit");
    assert_eq!((d.state.as_str(), d.members.len()), ("empty", 0), "{d:?}");
    for row in &d.partitions {
        assert_eq!(row.committed, Some(row.high_watermark), "{row:?}");
    }
    assert_eq!(reset(&b, "audit", "events", "earliest"), to_earliest);
}

/// `rafka consume T --group G --format json` with stdout going to `stdout`; waits for the
/// exit and returns (exit code, stderr).
fn consume_into(bootstrap: &str, topic: &str, group: &str, stdout: Stdio) -> (i32, String) {
    let mut cmd = Command::new(binary("rafka"));
    cmd.args(["--bootstrap", bootstrap, "consume", topic, "--group", group])
        .args(["--format", "json", "--idle-timeout-ms", "10000"])
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped());
    let out = die_with_parent(&mut cmd).output().expect("run rafka");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_that_could_not_be_written_are_not_committed() {
    let _lock = exclusive().await;
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    // One partition: every record comes in the first batch, after the first failed write.
    cluster.create_topic("unread", 1).await;
    let values: Vec<String> = (0..8).map(|i| format!("u{i}")).collect();
    let acks = produce(&b, "unread", &values);
    let first = acks.values().map(|a| a.offset).min().expect("records");

    // A reader that has gone away (`rafka consume ... | head -0`): the command ends quietly
    // (exit 0, as after SIGPIPE), and commits nothing past what it printed: nothing.
    let (read_end, write_end) = std::io::pipe().expect("pipe");
    drop(read_end);
    let (code, err) = consume_into(&b, "unread", "closed-pipe", write_end.into());
    assert_eq!((code, err.as_str()), (0, ""));
    let d = describe(&b, "closed-pipe");
    let committed = d.partitions[0].committed;
    assert!(
        committed.is_none_or(|c| c <= first),
        "committed {committed:?} though nothing was printed (first record at {first})"
    );

    // A full disk: exit 1 with the reason, and again nothing committed.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .expect("/dev/full");
    let (code, err) = consume_into(&b, "unread", "full-disk", full.into());
    assert_eq!(code, 1, "{err}");
    assert_eq!(
        err,
        "rafka: writing stdout: No space left on device (os error 28)\n"
    );
    let d = describe(&b, "full-disk");
    let committed = d.partitions[0].committed;
    assert!(
        committed.is_none_or(|c| c <= first),
        "committed {committed:?} though nothing was printed (first record at {first})"
    );

    // Both groups still get every record.
    for group in ["closed-pipe", "full-disk"] {
        let got = consume(&b, "unread", group, &["--max-messages", "8"]);
        check_against(&acks, &got);
        assert_eq!(got.len(), 8);
    }
}

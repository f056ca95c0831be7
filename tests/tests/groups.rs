//! Consumer groups (issue 6) end to end on a three-broker cluster: members are real processes
//! (`rafka-test-member`) that the tests start, stop gracefully (SIGTERM: commit and leave) or
//! SIGKILL, and the coordinator's broker is SIGKILLed too.
//!
//! - members share a topic with disjoint, complete coverage; a member joining or leaving moves
//!   only the partitions that must move;
//! - a SIGKILLed member's partitions move after its session timeout and every produced record
//!   is consumed by the group at least once across the crash;
//! - a new coordinator serves the group with every committed offset intact;
//! - a static member restarted within its session keeps its partitions with no rebalance;
//! - commits from fenced, evicted or stale members are refused.
//!
//! Each test prints a seed (`RAFKA_TEST_SEED` replays its random choices).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rafka_client::connection::{Connection, ConnectionConfig};
use rafka_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord,
    SeekTo, TopicPartition,
};
use rafka_protocol::messages::*;
use rafka_protocol::{ErrorCode, Offset};
use rafka_tests::cluster::{exclusive, wait_until, Cluster};
use rafka_tests::harness::{binary, die_with_parent, seed};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const SETTLE: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Event {
    Joined(String),
    Assigned(Vec<u32>),
    Revoked(Vec<u32>),
    Lost(Vec<u32>),
    Record {
        partition: u32,
        offset: u64,
        value: String,
    },
    Closed,
}

/// A group member process and what it printed.
struct Member {
    name: String,
    child: Child,
    events: Arc<Mutex<Vec<Event>>>,
}

impl Member {
    fn start(
        name: &str,
        bootstrap: &str,
        group: &str,
        topic: &str,
        session_ms: u32,
        instance: Option<&str>,
    ) -> Member {
        let mut cmd = Command::new(binary("rafka-test-member"));
        cmd.args(["--bootstrap", bootstrap, "--group", group, "--topic", topic])
            .args(["--session-timeout-ms", &session_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        if let Some(i) = instance {
            cmd.args(["--instance-id", i]);
        }
        let mut child = die_with_parent(&mut cmd).spawn().expect("spawn member");
        let stdout = child.stdout.take().expect("stdout");
        let events = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&events);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                let parts = |v: &serde_json::Value| -> Vec<u32> {
                    v["partitions"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|p| p.as_u64())
                                .map(|p| p as u32)
                                .collect()
                        })
                        .unwrap_or_default()
                };
                let e = match v["event"].as_str() {
                    Some("joined") => Event::Joined(v["member_id"].as_str().unwrap_or("").into()),
                    Some("assigned") => Event::Assigned(parts(&v)),
                    Some("revoked") => Event::Revoked(parts(&v)),
                    Some("lost") => Event::Lost(parts(&v)),
                    Some("closed") => Event::Closed,
                    Some("record") => Event::Record {
                        partition: v["partition"].as_u64().unwrap_or(0) as u32,
                        offset: v["offset"].as_u64().unwrap_or(0),
                        value: v["value"].as_str().unwrap_or("").into(),
                    },
                    _ => continue,
                };
                sink.lock().unwrap().push(e);
            }
        });
        Member {
            name: name.to_string(),
            child,
            events,
        }
    }

    fn events(&self) -> Vec<Event> {
        self.events.lock().unwrap().clone()
    }

    fn mark(&self) -> usize {
        self.events.lock().unwrap().len()
    }

    /// Partitions owned now, from the listener's events.
    fn owned(&self) -> BTreeSet<u32> {
        let mut owned = BTreeSet::new();
        for e in self.events() {
            match e {
                Event::Assigned(p) => owned.extend(p),
                Event::Revoked(p) | Event::Lost(p) => {
                    for x in p {
                        owned.remove(&x);
                    }
                }
                _ => {}
            }
        }
        owned
    }

    /// Assignment events since `mark`: (assigned, revoked or lost).
    fn changes_since(&self, mark: usize) -> (BTreeSet<u32>, BTreeSet<u32>) {
        let (mut added, mut removed) = (BTreeSet::new(), BTreeSet::new());
        for e in self.events().into_iter().skip(mark) {
            match e {
                Event::Assigned(p) => added.extend(p),
                Event::Revoked(p) | Event::Lost(p) => removed.extend(p),
                _ => {}
            }
        }
        (added, removed)
    }

    fn records(&self) -> Vec<(u32, u64, String)> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::Record {
                    partition,
                    offset,
                    value,
                } => Some((partition, offset, value)),
                _ => None,
            })
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the member commits and leaves; waits for it to exit.
    fn leave(&mut self) {
        // SAFETY: sending a signal to our own child.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let _ = self.child.wait();
        assert!(
            self.events().contains(&Event::Closed),
            "{} did not close cleanly",
            self.name
        );
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until `members` own disjoint sets covering partitions `0..n`, each owning at least
/// one; returns the sets.
async fn wait_for_coverage(members: &[&Member], n: u32, what: &str) -> Vec<BTreeSet<u32>> {
    wait_until(SETTLE, what, async || {
        let sets: Vec<BTreeSet<u32>> = members.iter().map(|m| m.owned()).collect();
        let mut all = BTreeSet::new();
        for (m, s) in members.iter().zip(&sets) {
            if s.is_empty() {
                return Err(format!("{} owns nothing: {sets:?}", m.name));
            }
            for p in s {
                if !all.insert(*p) {
                    return Err(format!("partition {p} owned twice: {sets:?}"));
                }
            }
        }
        if all.len() as u32 != n {
            return Err(format!("not all {n} partitions owned: {sets:?}"));
        }
        Ok(sets)
    })
    .await
}

async fn produce(bootstrap: &str, topic: &str, values: impl IntoIterator<Item = String>) {
    let producer = Producer::new(ProducerConfig {
        bootstrap: bootstrap.to_string(),
        acks: Acks::All,
        ..ProducerConfig::default()
    })
    .expect("producer");
    let mut pending = Vec::new();
    for (i, v) in values.into_iter().enumerate() {
        // Keyed, so records spread over every partition.
        pending.push(
            producer
                .send(ProducerRecord::new(topic, v).with_key(format!("k{i}")))
                .await
                .expect("send"),
        );
    }
    for p in pending {
        p.await.expect("acknowledged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_share_a_topic_and_rebalance_incrementally() {
    let _lock = exclusive().await;
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("shared", 6).await;
    let m1 = Member::start("m1", &b, "g", "shared", 6000, None);
    let m2 = Member::start("m2", &b, "g", "shared", 6000, None);
    let m3 = Member::start("m3", &b, "g", "shared", 6000, None);
    let three =
        wait_for_coverage(&[&m1, &m2, &m3], 6, "three members to cover six partitions").await;
    eprintln!("three members: {three:?}");

    // A fourth joins: only partitions that move to it are revoked, nobody else gains any.
    let marks: Vec<usize> = [&m1, &m2, &m3].iter().map(|m| m.mark()).collect();
    let mut m4 = Member::start("m4", &b, "g", "shared", 6000, None);
    let four = wait_for_coverage(&[&m1, &m2, &m3, &m4], 6, "four members to cover six").await;
    eprintln!("four members: {four:?}");
    let mut moved = BTreeSet::new();
    for (i, m) in [&m1, &m2, &m3].iter().enumerate() {
        let (added, removed) = m.changes_since(marks[i]);
        assert!(
            added.is_empty(),
            "{} gained {added:?} when m4 joined",
            m.name
        );
        assert_eq!(
            removed,
            &three[i] - &four[i],
            "{} revoked more than what moved",
            m.name
        );
        assert!(four[i].is_subset(&three[i]));
        moved.extend(removed);
    }
    assert_eq!(moved, four[3], "what was revoked is what m4 got");

    // m2 leaves: its partitions move; the others keep theirs and gain only m2's.
    let marks: Vec<usize> = [&m1, &m3, &m4].iter().map(|m| m.mark()).collect();
    let mut m2 = m2;
    m2.leave();
    let after = wait_for_coverage(&[&m1, &m3, &m4], 6, "three members after m2 left").await;
    eprintln!("after m2 left: {after:?}");
    for (i, (m, before)) in [(&m1, &four[0]), (&m3, &four[2]), (&m4, &four[3])]
        .into_iter()
        .enumerate()
    {
        let (added, removed) = m.changes_since(marks[i]);
        assert!(
            removed.is_empty(),
            "{} lost {removed:?} when m2 left",
            m.name
        );
        assert!(
            added.is_subset(&four[1]),
            "{} got {added:?}, not m2's",
            m.name
        );
        assert!(after[i].is_superset(before));
    }
    m4.leave();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_s_partitions_move_after_its_session_and_nothing_is_skipped() {
    let _lock = exclusive().await;
    let seed = seed("killed member");
    let mut rng = StdRng::seed_from_u64(seed);
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("work", 4).await;
    const SESSION_MS: u32 = 4000;
    let mut a = Member::start("a", &b, "workers", "work", SESSION_MS, None);
    let c = Member::start("c", &b, "workers", "work", SESSION_MS, None);
    wait_for_coverage(&[&a, &c], 4, "two members to cover four partitions").await;

    // Produce in rounds; kill `a` at a random round while records flow.
    let rounds = 10;
    let kill_at = rng.gen_range(2..rounds - 2);
    let mut produced = Vec::new();
    let mut killed_at = None;
    for round in 0..rounds {
        let values: Vec<String> = (0..100).map(|i| format!("r{round}-{i}")).collect();
        produced.extend(values.clone());
        let seen = a.records().len();
        produce(&b, "work", values).await;
        if round == kill_at {
            // Let `a` consume (and auto-commit) some of this round (records are spread over
            // every partition, so `a` owns some of them) before it dies.
            wait_until(SETTLE, "member a to consume", async || {
                if a.records().len() > seen {
                    Ok(())
                } else {
                    Err("nothing yet".into())
                }
            })
            .await;
            a.kill();
            killed_at = Some(Instant::now());
            eprintln!("killed member a after round {round}");
        }
    }
    let killed_at = killed_at.expect("killed");
    wait_until(SETTLE, "c to own every partition", async || {
        let owned = c.owned();
        if owned.len() == 4 {
            Ok(())
        } else {
            Err(format!("c owns {owned:?}"))
        }
    })
    .await;
    eprintln!(
        "partitions moved {:?} after the kill (session {SESSION_MS} ms)",
        killed_at.elapsed()
    );
    // Every produced record is consumed by the group at least once.
    let want: BTreeSet<String> = produced.into_iter().collect();
    let got = wait_until(SETTLE, "the group to consume every record", async || {
        let got: BTreeSet<String> = a
            .records()
            .into_iter()
            .chain(c.records())
            .map(|(_, _, v)| v)
            .collect();
        let missing = want.difference(&got).count();
        if missing == 0 {
            Ok(got)
        } else {
            Err(format!("{missing} records not consumed yet"))
        }
    })
    .await;
    assert!(got.is_superset(&want));
    // Where c took over a partition from a, it started at or before where a stopped.
    let a_last: BTreeMap<u32, u64> = a.records().into_iter().fold(BTreeMap::new(), |mut m, r| {
        let e = m.entry(r.0).or_insert(r.1);
        *e = (*e).max(r.1);
        m
    });
    for (p, last) in &a_last {
        let c_first_after = c
            .records()
            .into_iter()
            .filter(|r| r.0 == *p)
            .map(|r| r.1)
            .min();
        if let Some(first) = c_first_after {
            assert!(
                first <= last + 1,
                "partition {p}: c started at {first}, a had consumed up to {last}: skipped"
            );
        }
    }
    let total = a.records().len() + c.records().len();
    eprintln!(
        "consumed {total} records for {} produced ({} redelivered)",
        want.len(),
        total - want.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_coordinator_serves_the_group_with_its_committed_offsets() {
    let _lock = exclusive().await;
    let mut cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("orders", 3).await;
    produce(&b, "orders", (0..60).map(|i| format!("o{i}"))).await;
    let config = ConsumerConfig {
        bootstrap: b.clone(),
        group_id: Some("billing".into()),
        initial_position: SeekTo::Earliest,
        enable_auto_commit: false,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    };
    let mut consumer = Consumer::new(config.clone()).expect("consumer");
    consumer.subscribe(["orders"]).expect("subscribe");
    let mut seen = 0;
    let deadline = Instant::now() + SETTLE;
    while seen < 60 {
        assert!(Instant::now() < deadline, "consumed only {seen} of 60");
        seen += consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
            .len();
    }
    let tps: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new("orders", p)).collect();
    let positions: BTreeMap<TopicPartition, Option<Offset>> = tps
        .iter()
        .map(|tp| (tp.clone(), consumer.position(tp)))
        .collect();
    consumer.commit().await.expect("commit");
    consumer.close().await.expect("close");
    let admin = Admin::new(ClientConfig::new(b.clone())).expect("admin");
    let before = admin
        .committed_offsets("billing", &tps)
        .await
        .expect("offsets");
    assert_eq!(before, positions, "committed offsets are not the positions");
    assert!(before.values().all(|o| o.is_some_and(|o| o.0 > 0)));
    let old = admin
        .find_coordinator("billing")
        .await
        .expect("coordinator");
    // The coordinator exports the group's committed offsets and lag (everything consumed: 0),
    // and counted the group's rebalance when the consumer joined.
    let tp0 = TopicPartition::new("orders", 0);
    let committed0 = before[&tp0].expect("committed").0 as f64;
    let labels = [
        ("group", "billing"),
        ("topic", "orders"),
        ("partition", "0"),
    ];
    wait_until(SETTLE, "the group metrics", async || {
        let id = old.node_id.0;
        let offset = cluster
            .metric(id, "rafka_group_committed_offset", &labels)
            .await;
        let lag = cluster.metric(id, "rafka_group_lag_records", &labels).await;
        let rebalances = cluster
            .metric(id, "rafka_group_rebalances_total", &[])
            .await;
        let durations = cluster
            .metric(id, "rafka_group_rebalance_seconds_count", &[])
            .await;
        if offset == Some(committed0)
            && lag == Some(0.0)
            && rebalances.is_some_and(|r| r >= 1.0)
            && durations.is_some_and(|d| d >= 1.0)
        {
            Ok(())
        } else {
            Err(format!(
                "offset {offset:?} lag {lag:?} rebalances {rebalances:?} durations {durations:?}"
            ))
        }
    })
    .await;
    eprintln!("coordinator is broker {}; killing it", old.node_id.0);
    cluster.kill(old.node_id.0);
    let survivors = cluster.bootstrap_without(old.node_id.0);
    let admin = Admin::new(ClientConfig::new(survivors.clone())).expect("admin");
    let after = wait_until(SETTLE, "a new coordinator with the offsets", async || {
        let c = admin
            .find_coordinator("billing")
            .await
            .map_err(|e| e.to_string())?;
        if c.node_id == old.node_id {
            return Err("still the old coordinator".into());
        }
        admin
            .committed_offsets("billing", &tps)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(
        after, before,
        "committed offsets changed across the failover"
    );

    // The group resumes where it committed: only new records are consumed.
    produce(&survivors, "orders", (60..75).map(|i| format!("o{i}"))).await;
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: survivors.clone(),
        ..config
    })
    .expect("consumer");
    consumer.subscribe(["orders"]).expect("subscribe");
    let mut values = Vec::new();
    let deadline = Instant::now() + SETTLE;
    while values.len() < 15 {
        assert!(Instant::now() < deadline, "consumed {values:?}");
        for r in consumer
            .poll(Duration::from_millis(200))
            .await
            .expect("poll")
        {
            values
                .push(String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned());
        }
    }
    // A short grace for anything beyond the 15 new records (which would be a replay).
    let extra = consumer
        .poll(Duration::from_millis(500))
        .await
        .expect("poll");
    assert!(extra.is_empty(), "replayed {} records", extra.len());
    let mut expected: Vec<String> = (60..75).map(|i| format!("o{i}")).collect();
    values.sort();
    expected.sort();
    assert_eq!(values, expected);
    consumer
        .commit()
        .await
        .expect("commit on the new coordinator");
    consumer.close().await.expect("close");
    cluster.restart(old.node_id.0).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarting_within_its_session_keeps_its_partitions() {
    let _lock = exclusive().await;
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("static", 4).await;
    let admin = Admin::new(ClientConfig::new(b.clone())).expect("admin");
    let mut s = Member::start("s", &b, "st", "static", 20_000, Some("instance-1"));
    let d = Member::start("d", &b, "st", "static", 20_000, None);
    let sets = wait_for_coverage(&[&s, &d], 4, "two members to cover four").await;
    let stable = wait_until(SETTLE, "a stable group", async || {
        let g = admin
            .describe_group("st")
            .await
            .map_err(|e| e.to_string())?;
        if g.state == "stable" {
            Ok(g)
        } else {
            Err(format!("state {}", g.state))
        }
    })
    .await;
    let mark = d.mark();
    s.kill();
    let s2 = Member::start("s2", &b, "st", "static", 20_000, Some("instance-1"));
    let got = wait_until(
        SETTLE,
        "the restarted static member's partitions",
        async || {
            let owned = s2.owned();
            if owned.is_empty() {
                Err("nothing yet".into())
            } else {
                Ok(owned)
            }
        },
    )
    .await;
    assert_eq!(got, sets[0], "the static member got other partitions back");
    let g = admin.describe_group("st").await.expect("describe");
    assert_eq!(g.group_epoch, stable.group_epoch, "the group rebalanced");
    assert_eq!(d.changes_since(mark), (BTreeSet::new(), BTreeSet::new()));
    assert_eq!(g.members.len(), 2, "{g:?}");
}

/// Raw protocol: the coordinator's connection and typed requests.
async fn coordinator_conn(bootstrap: &str, group: &str) -> Connection {
    let admin = Admin::new(ClientConfig::new(bootstrap)).expect("admin");
    let c = wait_until(SETTLE, "the coordinator", async || {
        admin
            .find_coordinator(group)
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    Connection::connect(&c.addr(), &ConnectionConfig::default())
        .await
        .expect("connect")
}

fn commit_req(group: &str, member: &str, epoch: i32, partition: u32) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: epoch,
        topics: vec![OffsetCommitTopic {
            name: "fenced".into(),
            partitions: vec![OffsetCommitPartition {
                partition,
                offset: 1,
                metadata: String::new(),
            }],
        }],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_from_fenced_or_stale_members_are_refused() {
    let _lock = exclusive().await;
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("fenced", 2).await;
    let conn = coordinator_conn(&b, "fg").await;
    let t = Duration::from_secs(10);
    let hb = |member: &str, epoch: i32, owned: Vec<u32>| ConsumerGroupHeartbeatRequest {
        group_id: "fg".into(),
        member_id: member.into(),
        member_epoch: epoch,
        subscribed_topics: vec!["fenced".into()],
        session_timeout_ms: 1000,
        owned: vec![TopicPartitions {
            topic: "fenced".into(),
            partitions: owned,
        }],
        ..Default::default()
    };
    let joined = wait_until(SETTLE, "a join", async || {
        let r = conn
            .send(hb("", 0, vec![]), t)
            .await
            .map_err(|e| e.to_string())?;
        match ErrorCode::from_code(r.error_code) {
            ErrorCode::None => Ok(r),
            c => Err(format!("{c}: {}", r.error_message)),
        }
    })
    .await;
    let (id, epoch) = (joined.member_id.clone(), joined.member_epoch);
    assert_eq!(
        joined
            .assignment
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        2
    );
    let code = |r: OffsetCommitResponse| ErrorCode::from_code(r.error_code);
    // The owner commits; a stale epoch and an outsider are refused while it lives.
    let ok = conn
        .send(commit_req("fg", &id, epoch, 0), t)
        .await
        .expect("commit");
    assert_eq!(code(ok), ErrorCode::None);
    let stale = conn
        .send(commit_req("fg", &id, epoch + 7, 0), t)
        .await
        .expect("commit");
    assert_eq!(code(stale), ErrorCode::StaleMemberEpoch);
    let outsider = conn
        .send(commit_req("fg", "", -1, 0), t)
        .await
        .expect("commit");
    assert_eq!(code(outsider), ErrorCode::NonEmptyGroup);
    // A second member joins: partition moves away from the first, whose commit for it is
    // refused once it has released it.
    let second = conn.send(hb("", 0, vec![]), t).await.expect("join");
    assert_eq!(ErrorCode::from_code(second.error_code), ErrorCode::None);
    let r = conn
        .send(hb(&id, epoch, vec![0, 1]), t)
        .await
        .expect("heartbeat");
    let kept: Vec<u32> = r
        .assignment
        .iter()
        .flat_map(|t| t.partitions.clone())
        .collect();
    assert_eq!(kept.len(), 1, "one partition revoked: {r:?}");
    let gone = 1 - kept[0];
    let r = conn
        .send(hb(&id, r.member_epoch, kept.clone()), t)
        .await
        .expect("heartbeat");
    let after_release = conn
        .send(commit_req("fg", &id, r.member_epoch, gone), t)
        .await
        .expect("commit");
    assert_eq!(code(after_release), ErrorCode::StaleMemberEpoch);
    // The first member stops heartbeating: its session ends and it is fenced for good.
    let second_id = second.member_id.clone();
    let mut second_epoch = second.member_epoch;
    let mut second_owned = vec![];
    wait_until(SETTLE, "the first member's eviction", async || {
        // Keep the second member alive meanwhile.
        let r = conn
            .send(hb(&second_id, second_epoch, second_owned.clone()), t)
            .await
            .map_err(|e| e.to_string())?;
        second_epoch = r.member_epoch;
        second_owned = r
            .assignment
            .iter()
            .flat_map(|t| t.partitions.clone())
            .collect();
        let c = conn
            .send(commit_req("fg", &id, epoch, kept[0]), t)
            .await
            .map_err(|e| e.to_string())?;
        match code(c) {
            ErrorCode::UnknownMemberId => Ok(()),
            other => Err(format!("commit answered {other}")),
        }
    })
    .await;
    let r = conn.send(hb(&id, epoch, kept), t).await.expect("heartbeat");
    assert_eq!(
        ErrorCode::from_code(r.error_code),
        ErrorCode::UnknownMemberId
    );
    // Once the last member leaves, offsets can be set from outside the group.
    let r = conn
        .send(hb(&second_id, -1, vec![]), t)
        .await
        .expect("leave");
    assert_eq!(ErrorCode::from_code(r.error_code), ErrorCode::None);
    let outsider = conn
        .send(commit_req("fg", "", -1, 0), t)
        .await
        .expect("commit");
    assert_eq!(code(outsider), ErrorCode::None);
    let fetched = conn
        .send(
            OffsetFetchRequest {
                group_id: "fg".into(),
                partitions: vec![],
            },
            t,
        )
        .await
        .expect("fetch");
    let p0 = fetched.topics[0]
        .partitions
        .iter()
        .find(|p| p.partition == 0)
        .expect("p0");
    assert_eq!(p0.offset, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_snapshots_let_retention_cut_the_offsets_log() {
    let _lock = exclusive().await;
    // Small segments and frequent retention passes, so that snapshots retire segments soon.
    let mut cluster = Cluster::start_with(rafka_tests::cluster::ClusterOptions {
        nodes: 3,
        env: vec![
            ("RAFKA_SEGMENT_BYTES".into(), "16384".into()),
            ("RAFKA_RETENTION_CHECK_INTERVAL_MS".into(), "300".into()),
        ],
        ..Default::default()
    })
    .await;
    let b = cluster.bootstrap();
    cluster.create_topic("snap", 1).await;
    produce(&b, "snap", (0..10).map(|i| format!("s{i}"))).await;
    let conn = coordinator_conn(&b, "compact").await;
    let t = Duration::from_secs(10);
    // Commits from outside the group (it has no members): each is one record.
    let commit = |offset: u64| OffsetCommitRequest {
        group_id: "compact".into(),
        member_id: String::new(),
        member_epoch: -1,
        topics: vec![OffsetCommitTopic {
            name: "snap".into(),
            partitions: vec![OffsetCommitPartition {
                partition: 0,
                offset,
                metadata: "x".repeat(200),
            }],
        }],
    };
    let admin = Admin::new(ClientConfig::new(b.clone())).expect("admin");
    let mut last = 0;
    let start = wait_until(SETTLE, "the offsets log start to move", async || {
        for _ in 0..50 {
            last = last % 9 + 1;
            let r = conn
                .send(commit(last), t)
                .await
                .map_err(|e| e.to_string())?;
            if r.error_code != 0 {
                return Err(format!("commit: {}", r.error_message));
            }
        }
        let topic = admin
            .describe_topic(rafka_protocol::api::OFFSETS_TOPIC)
            .await
            .map_err(|e| e.to_string())?;
        let moved: Vec<u64> = topic
            .partitions
            .iter()
            .map(|p| p.log_start_offset.0)
            .filter(|s| *s > 0)
            .collect();
        if moved.is_empty() {
            Err("every offsets partition still starts at 0".into())
        } else {
            Ok(moved)
        }
    })
    .await;
    eprintln!("offsets log start moved to {start:?}; last committed {last}");
    // A new coordinator rebuilt from the cut log still has the latest commit.
    let old = admin
        .find_coordinator("compact")
        .await
        .expect("coordinator");
    cluster.kill(old.node_id.0);
    let survivors = cluster.bootstrap_without(old.node_id.0);
    let admin = Admin::new(ClientConfig::new(survivors)).expect("admin");
    let tp = TopicPartition::new("snap", 0);
    let after = wait_until(SETTLE, "the new coordinator's offsets", async || {
        let c = admin
            .find_coordinator("compact")
            .await
            .map_err(|e| e.to_string())?;
        if c.node_id == old.node_id {
            return Err("still the old coordinator".into());
        }
        admin
            .committed_offsets("compact", std::slice::from_ref(&tp))
            .await
            .map_err(|e| e.to_string())
    })
    .await;
    assert_eq!(after[&tp], Some(Offset(last)));
}

//! The consumer-group API of `rafka_client::Consumer`, driven in this process against a
//! three-broker cluster the test starts (tests/tests/groups.rs drives member *processes*
//! instead and covers coverage, incremental rebalancing, crashes and coordinator failover):
//!
//! - two members split a topic, and the first one revokes exactly what the second one gets;
//! - `commit_async` followed by `committed` reads back the consumer's positions;
//! - a member that stops calling `poll` for `max_poll_interval_ms` leaves the group (while its
//!   heartbeats go on), its partitions move, and its next `poll` reports them lost and
//!   rejoins;
//! - a commit for partitions the member does not own is refused with STALE_MEMBER_EPOCH and
//!   not retried;
//! - a static member that closes (leave with epoch -2) keeps its place: its partitions stay
//!   reserved (offsets cannot be reset from outside meanwhile), it gets them back on restart
//!   without a rebalance and resumes at what it committed, and the reservation ends with its
//!   session.
//!
//! Ported from `client/tests/group_live.rs`, which only ran against a broker named by
//! `RAFKA_LIVE_BOOTSTRAP` and so never ran in CI. Each test prints a seed
//! (`RAFKA_TEST_SEED` replays its random choices).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rafka_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, ErrorCode, Offset, Producer,
    ProducerConfig, ProducerRecord, RebalanceListener, SeekTo, TopicPartition,
};
use rafka_tests::cluster::{exclusive, wait_until, Cluster};
use rafka_tests::harness::seed;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Longest wait for a group to settle after a change (join, leave, rejoin).
const SETTLE: Duration = Duration::from_secs(60);

/// What a [`RebalanceListener`] was told, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Change {
    Assigned(BTreeSet<u32>),
    Revoked(BTreeSet<u32>),
    Lost(BTreeSet<u32>),
}

/// A listener that records every call; the test keeps a clone to read them.
#[derive(Clone, Default)]
struct Changes(Arc<Mutex<Vec<Change>>>);

impl Changes {
    fn all(&self) -> Vec<Change> {
        self.0.lock().unwrap().clone()
    }

    fn since(&self, mark: usize) -> Vec<Change> {
        self.all().into_iter().skip(mark).collect()
    }

    fn mark(&self) -> usize {
        self.0.lock().unwrap().len()
    }

    fn push(&self, make: fn(BTreeSet<u32>) -> Change, partitions: &[TopicPartition]) {
        let set = partitions.iter().map(|tp| tp.partition).collect();
        self.0.lock().unwrap().push(make(set));
    }
}

impl RebalanceListener for Changes {
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        self.push(Change::Revoked, partitions);
    }
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        self.push(Change::Assigned, partitions);
    }
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        self.push(Change::Lost, partitions);
    }
}

fn owned(c: &Consumer) -> BTreeSet<u32> {
    c.assignment().into_iter().map(|tp| tp.partition).collect()
}

/// Polls every consumer in turn (so none misses its poll interval) until `done` holds;
/// returns the records each one received meanwhile. Polling is what drives a subscribed
/// consumer's reconciliation, so this is also how a test waits for a rebalance.
async fn poll_until(
    consumers: &mut [&mut Consumer],
    what: &str,
    done: impl Fn(&[&mut Consumer]) -> bool,
) -> Vec<Vec<(u32, u64)>> {
    let deadline = Instant::now() + SETTLE;
    let mut received = vec![Vec::new(); consumers.len()];
    while !done(consumers) {
        assert!(
            Instant::now() < deadline,
            "timed out after {SETTLE:?} waiting for {what}; assignments {:?}",
            consumers.iter().map(|c| owned(c)).collect::<Vec<_>>()
        );
        for (i, c) in consumers.iter_mut().enumerate() {
            for r in c.poll(Duration::from_millis(100)).await.expect("poll") {
                received[i].push((r.partition, r.offset.0));
            }
        }
    }
    received
}

/// Produces `values` keyed (so they spread over the partitions) and waits for every
/// acknowledgement; returns (partition, offset) per value.
async fn produce(bootstrap: &str, topic: &str, values: &[String]) -> Vec<(u32, u64)> {
    let producer = Producer::new(ProducerConfig {
        bootstrap: bootstrap.to_string(),
        acks: Acks::All,
        ..ProducerConfig::default()
    })
    .expect("producer");
    let mut pending = Vec::new();
    for v in values {
        let record = ProducerRecord::new(topic, v.clone()).with_key(format!("key-{v}"));
        pending.push(producer.send(record).await.expect("send"));
    }
    let mut acks = Vec::new();
    for p in pending {
        let m = p.await.expect("acknowledged");
        acks.push((m.partition, m.offset.expect("acks=all names the offset").0));
    }
    acks
}

/// Whether `c`'s positions are past every acknowledged (partition, offset) of topic `static`.
fn read_past(c: &Consumer, acks: &[(u32, u64)]) -> bool {
    acks.iter()
        .all(|(p, o)| c.position(&TopicPartition::new("static", *p)) > Some(Offset(*o)))
}

fn config(bootstrap: &str, group: &str) -> ConsumerConfig {
    ConsumerConfig {
        bootstrap: bootstrap.to_owned(),
        group_id: Some(group.to_owned()),
        session_timeout_ms: 6_000,
        // Short fetch waits keep each `poll_until` round short, so that polling one
        // consumer never holds up another one's poll for long.
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_split_and_a_member_that_stops_polling_loses_its_partitions() {
    let _lock = exclusive().await;
    let mut rng = StdRng::seed_from_u64(seed("split and poll interval"));
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("split", 4).await;
    let count = rng.gen_range(20..60);
    let values: Vec<String> = (0..count).map(|i| format!("v{i}")).collect();
    produce(&b, "split", &values).await;
    let all: BTreeSet<u32> = (0..4).collect();

    let changes_a = Changes::default();
    let mut a = Consumer::new(config(&b, "split-group")).expect("consumer a");
    a.set_rebalance_listener(changes_a.clone());
    a.subscribe(["split"]).expect("subscribe a");
    poll_until(&mut [&mut a], "a to own every partition", |c| {
        owned(c[0]) == all
    })
    .await;
    assert!(a.member_id().is_some());
    assert!(a.member_epoch().unwrap() > 0);
    assert_eq!(changes_a.all(), [Change::Assigned(all.clone())]);

    // B joins: A revokes exactly what B gets (nothing else moves, nothing is lost).
    const B_MAX_POLL_INTERVAL_MS: u64 = 1_500;
    let mark_a = changes_a.mark();
    let changes_b = Changes::default();
    let mut b_consumer = Consumer::new(ConsumerConfig {
        max_poll_interval_ms: B_MAX_POLL_INTERVAL_MS,
        ..config(&b, "split-group")
    })
    .expect("consumer b");
    b_consumer.set_rebalance_listener(changes_b.clone());
    b_consumer.subscribe(["split"]).expect("subscribe b");
    let mut consumers = [&mut a, &mut b_consumer];
    poll_until(&mut consumers, "a and b to split four partitions", |c| {
        let (a, b) = (owned(c[0]), owned(c[1]));
        !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.union(&b).count() == 4
    })
    .await;
    let (owned_a, owned_b) = (owned(&a), owned(&b_consumer));
    eprintln!("a owns {owned_a:?}, b owns {owned_b:?}");
    assert_eq!(changes_a.since(mark_a), [Change::Revoked(owned_b.clone())]);
    assert_eq!(changes_b.all(), [Change::Assigned(owned_b.clone())]);

    // commit_async, awaited, then `committed` reads back the positions. No poll runs in
    // between, so nothing else (an auto-commit, a rebalance) can move them.
    let mine: Vec<TopicPartition> = a.assignment();
    let positions: BTreeMap<TopicPartition, Option<Offset>> =
        mine.iter().map(|tp| (tp.clone(), a.position(tp))).collect();
    assert!(positions.values().all(Option::is_some), "{positions:?}");
    a.commit_async()
        .await
        .expect("queue the commit")
        .await
        .expect("commit");
    assert_eq!(a.committed(&mine).await.expect("committed"), positions);

    // B stops polling. Its heartbeat task goes on, so its session never expires: A can only
    // get everything because B left on its poll interval.
    let b_last_poll = Instant::now();
    poll_until(&mut [&mut a], "a to take b's partitions", |c| {
        owned(c[0]) == all
    })
    .await;
    let moved_after = b_last_poll.elapsed();
    eprintln!("b's partitions moved {moved_after:?} after its last poll");
    assert!(
        moved_after >= Duration::from_millis(B_MAX_POLL_INTERVAL_MS),
        "b's partitions moved after {moved_after:?}, before its poll interval ran out"
    );
    assert_eq!(changes_b.all(), [Change::Assigned(owned_b.clone())]);

    // B's next poll finds its partitions lost (not revoked: it had no chance to commit) and
    // rejoins; the group splits again.
    let mark_b = changes_b.mark();
    let mut consumers = [&mut a, &mut b_consumer];
    poll_until(&mut consumers, "b to rejoin and get partitions", |c| {
        let (a, b) = (owned(c[0]), owned(c[1]));
        !b.is_empty() && a.is_disjoint(&b) && a.union(&b).count() == 4
    })
    .await;
    let since = changes_b.since(mark_b);
    assert_eq!(since[0], Change::Lost(owned_b), "{since:?}");
    assert!(
        matches!(since.last(), Some(Change::Assigned(p)) if *p == owned(&b_consumer)),
        "{since:?}"
    );

    // A commit of partitions B does not own is refused for good, and the offsets stay.
    let theirs: Vec<TopicPartition> = a.assignment();
    let before = a.committed(&theirs).await.expect("committed");
    let bogus: BTreeMap<TopicPartition, Offset> =
        theirs.iter().map(|tp| (tp.clone(), Offset(0))).collect();
    let e = b_consumer
        .commit_offsets(bogus)
        .await
        .expect_err("commit of partitions b does not own");
    assert_eq!(e.code(), Some(ErrorCode::StaleMemberEpoch), "{e}");
    assert!(!e.is_retriable(), "{e}");
    assert_eq!(a.committed(&theirs).await.expect("committed"), before);

    // Dynamic members leave on close: the group is empty at once, its offsets kept.
    a.close().await.expect("close a");
    b_consumer.close().await.expect("close b");
    let admin = Admin::new(ClientConfig::new(b.clone())).expect("admin");
    let d = admin.describe_group("split-group").await.expect("describe");
    assert!(d.members.is_empty(), "{d:?}");
    assert_eq!(d.state, "empty", "{d:?}");
    assert_eq!(d.partitions.len(), 4, "{d:?}");
    assert!(d.partitions.iter().all(|p| p.committed.is_some()), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_that_closes_gets_its_partitions_back_and_resumes() {
    let _lock = exclusive().await;
    let mut rng = StdRng::seed_from_u64(seed("static close and restart"));
    let cluster = Cluster::start(3).await;
    let b = cluster.bootstrap();
    cluster.create_topic("static", 2).await;
    let admin = Admin::new(ClientConfig::new(b.clone())).expect("admin");
    let first: Vec<String> = (0..rng.gen_range(5..30)).map(|i| format!("a{i}")).collect();
    let first_acks = produce(&b, "static", &first).await;

    // Long enough that the restart below happens within it on a loaded machine, short
    // enough that the test can watch it expire.
    const SESSION_MS: u32 = 10_000;
    let static_config = ConsumerConfig {
        group_instance_id: Some("instance-1".into()),
        session_timeout_ms: SESSION_MS,
        ..config(&b, "static-group")
    };
    let mut c = Consumer::new(static_config.clone()).expect("consumer");
    c.subscribe(["static"]).expect("subscribe");
    let got = poll_until(&mut [&mut c], "every record of the first round", |c| {
        owned(c[0]).len() == 2 && read_past(c[0], &first_acks)
    })
    .await;
    eprintln!("first member read {} records", got[0].len());
    let tps: Vec<TopicPartition> = c.assignment();
    let positions: BTreeMap<TopicPartition, Option<Offset>> =
        tps.iter().map(|tp| (tp.clone(), c.position(tp))).collect();
    let stable = admin
        .describe_group("static-group")
        .await
        .expect("describe");
    // close commits the positions (auto-commit) and leaves with epoch -2.
    let closed_at = Instant::now();
    c.close().await.expect("close");

    // Within its session the static member is still in the group, so offsets cannot be
    // reset from outside.
    let d = admin
        .describe_group("static-group")
        .await
        .expect("describe");
    assert_eq!(d.members.len(), 1, "{d:?}");
    assert_eq!(d.members[0].instance_id.as_deref(), Some("instance-1"));
    assert_eq!(
        admin.committed_offsets("static-group", &tps).await.unwrap(),
        positions,
        "close did not commit the positions"
    );
    let e = admin
        .reset_offsets("static-group", "static", SeekTo::Earliest)
        .await
        .expect_err("reset while the static member is away");
    assert_eq!(e.code(), Some(ErrorCode::NonEmptyGroup), "{e}");

    // Records produced while it is away are the only ones the restarted member reads.
    let second: Vec<String> = (0..rng.gen_range(5..30)).map(|i| format!("b{i}")).collect();
    let acks = produce(&b, "static", &second).await;
    let mut c = Consumer::new(static_config).expect("consumer");
    c.subscribe(["static"]).expect("subscribe");
    let got = poll_until(&mut [&mut c], "the second round of records", |c| {
        owned(c[0]).len() == 2 && read_past(c[0], &acks)
    })
    .await;
    assert!(
        closed_at.elapsed() < Duration::from_millis(SESSION_MS.into()),
        "the restart took longer than the session; the test proves nothing"
    );
    let mut read: Vec<(u32, u64)> = got[0].clone();
    read.sort_unstable();
    let mut expected = acks.clone();
    expected.sort_unstable();
    assert_eq!(
        read, expected,
        "the restarted member did not resume where it closed"
    );
    let d = admin
        .describe_group("static-group")
        .await
        .expect("describe");
    assert_eq!(
        d.group_epoch, stable.group_epoch,
        "a static member's return rebalanced the group"
    );

    // After its second close the reservation ends only when its session does.
    c.close().await.expect("close");
    let closed_at = Instant::now();
    wait_until(
        SETTLE,
        "the static member's session to end",
        async || match admin
            .reset_offsets("static-group", "static", SeekTo::Earliest)
            .await
        {
            Ok(offsets) => Ok(offsets),
            Err(e) if e.code() == Some(ErrorCode::NonEmptyGroup) => Err(e.to_string()),
            Err(e) => panic!("reset failed: {e}"),
        },
    )
    .await;
    let waited = closed_at.elapsed();
    eprintln!("reset allowed {waited:?} after the static member closed");
    assert!(
        waited >= Duration::from_millis(SESSION_MS.into()) / 2,
        "the static member's place was released after {waited:?}, well within its session"
    );
}

//! Consumer-group behaviour against a running broker. Skipped unless `RAFKA_LIVE_BOOTSTRAP`
//! names one (the end-to-end suites with managed brokers live in the `tests` crate); run with
//! `RAFKA_LIVE_BOOTSTRAP=127.0.0.1:PORT cargo test -p rafka-client --test group_live`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rafka_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, RebalanceListener, TopicPartition,
};
use tokio::time::Instant;

fn bootstrap() -> Option<String> {
    std::env::var("RAFKA_LIVE_BOOTSTRAP").ok()
}

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<String>>>);

impl RebalanceListener for Events {
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("revoked {}", partitions.len()));
    }
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("assigned {}", partitions.len()));
    }
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        self.0
            .lock()
            .unwrap()
            .push(format!("lost {}", partitions.len()));
    }
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{prefix}-{nanos}")
}

fn consumer(bootstrap: &str, group: &str, max_poll_interval_ms: u64) -> Consumer {
    Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_owned(),
        group_id: Some(group.to_owned()),
        max_poll_interval_ms,
        session_timeout_ms: 6_000,
        ..ConsumerConfig::default()
    })
    .unwrap()
}

fn owned(c: &Consumer) -> BTreeSet<TopicPartition> {
    c.assignment().into_iter().collect()
}

/// Polls every consumer in turn until `done` holds or the time runs out.
async fn poll_until(
    consumers: &mut [&mut Consumer],
    limit: Duration,
    done: impl Fn(&[&mut Consumer]) -> bool,
) {
    let deadline = Instant::now() + limit;
    while !done(consumers) {
        assert!(
            Instant::now() < deadline,
            "condition not reached in {limit:?}"
        );
        for c in consumers.iter_mut() {
            c.poll(Duration::from_millis(100)).await.unwrap();
        }
    }
}

#[tokio::test]
async fn two_members_split_partitions_and_a_stuck_one_loses_them() {
    let Some(bootstrap) = bootstrap() else {
        eprintln!("RAFKA_LIVE_BOOTSTRAP not set; skipped");
        return;
    };
    let admin = Admin::new(ClientConfig::new(&bootstrap)).unwrap();
    let topic = unique("live");
    let group = unique("g");
    admin
        .create_topic(NewTopic::new(&topic).partitions(4))
        .await
        .unwrap();
    let all: BTreeSet<TopicPartition> = (0..4).map(|p| TopicPartition::new(&topic, p)).collect();

    let events_a = Events::default();
    let mut a = consumer(&bootstrap, &group, 300_000);
    a.set_rebalance_listener(events_a.clone());
    a.subscribe([topic.clone()]).unwrap();
    poll_until(&mut [&mut a], Duration::from_secs(30), |c| {
        owned(c[0]) == all
    })
    .await;
    assert!(a.member_id().is_some());
    assert!(a.member_epoch().unwrap() > 0);

    let events_b = Events::default();
    let mut b = consumer(&bootstrap, &group, 1_500);
    b.set_rebalance_listener(events_b.clone());
    b.subscribe([topic.clone()]).unwrap();
    poll_until(&mut [&mut a, &mut b], Duration::from_secs(30), |c| {
        let (a, b) = (owned(c[0]), owned(c[1]));
        !a.is_empty() && !b.is_empty() && a.is_disjoint(&b) && a.union(&b).count() == 4
    })
    .await;
    assert!(events_a
        .0
        .lock()
        .unwrap()
        .iter()
        .any(|e| e.starts_with("revoked")));

    // Commits: positions of owned partitions, read back through `committed`.
    a.commit_async().await.unwrap().await.unwrap();
    let mine: Vec<TopicPartition> = owned(&a).into_iter().collect();
    let committed = a.committed(&mine).await.unwrap();
    assert!(committed.values().all(Option::is_some), "{committed:?}");

    // B stops polling past max_poll_interval_ms: it leaves and A takes everything.
    poll_until(&mut [&mut a], Duration::from_secs(30), |c| {
        owned(c[0]) == all
    })
    .await;
    // B's next poll finds its partitions lost and rejoins.
    poll_until(&mut [&mut b], Duration::from_secs(10), |_| {
        events_b
            .0
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("lost"))
    })
    .await;
    poll_until(&mut [&mut a, &mut b], Duration::from_secs(30), |c| {
        !owned(c[1]).is_empty()
    })
    .await;

    // A commit of a partition B does not own is refused, not retried.
    let theirs: BTreeMap<TopicPartition, rafka_client::Offset> = owned(&a)
        .into_iter()
        .map(|tp| (tp, rafka_client::Offset(0)))
        .collect();
    let e = b.commit_offsets(theirs).await.unwrap_err();
    assert!(!e.is_retriable(), "{e}");

    a.close().await.unwrap();
    b.close().await.unwrap();
    let d = admin.describe_group(&group).await.unwrap();
    assert!(d.members.is_empty(), "{d:?}");
    assert_eq!(d.partitions.len(), 4);
    admin.delete_topic(&topic).await.unwrap();
}

#[tokio::test]
async fn a_static_member_gets_its_partitions_back_after_a_restart() {
    let Some(bootstrap) = bootstrap() else {
        eprintln!("RAFKA_LIVE_BOOTSTRAP not set; skipped");
        return;
    };
    let admin = Admin::new(ClientConfig::new(&bootstrap)).unwrap();
    let topic = unique("static");
    let group = unique("gs");
    admin
        .create_topic(NewTopic::new(&topic).partitions(2))
        .await
        .unwrap();
    let config = ConsumerConfig {
        bootstrap: bootstrap.clone(),
        group_id: Some(group.clone()),
        group_instance_id: Some("instance-1".into()),
        session_timeout_ms: 20_000,
        ..ConsumerConfig::default()
    };
    let mut c = Consumer::new(config.clone()).unwrap();
    c.subscribe([topic.clone()]).unwrap();
    poll_until(&mut [&mut c], Duration::from_secs(30), |c| {
        c[0].assignment().len() == 2
    })
    .await;
    c.close().await.unwrap();
    // Within the session the static member is still in the group.
    let d = admin.describe_group(&group).await.unwrap();
    assert_eq!(d.members.len(), 1, "{d:?}");
    let mut c = Consumer::new(config).unwrap();
    c.subscribe([topic.clone()]).unwrap();
    poll_until(&mut [&mut c], Duration::from_secs(10), |c| {
        c[0].assignment().len() == 2
    })
    .await;
    // A dynamic leave (-1 is only for dynamic members) would have emptied the group; a static
    // close keeps the member until the session expires, so reset is refused meanwhile.
    c.close().await.unwrap();
    let e = admin
        .reset_offsets(&group, &topic, rafka_client::SeekTo::Earliest)
        .await
        .unwrap_err();
    assert_eq!(
        e.code(),
        Some(rafka_client::ErrorCode::NonEmptyGroup),
        "{e}"
    );
    admin.delete_topic(&topic).await.unwrap();
}

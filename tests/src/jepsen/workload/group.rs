//! The `group` workload: producers send unique values to a replicated topic (as `queue`'s do);
//! the members of one consumer group subscribe to it, poll throughout, and commit by hand what
//! they processed; every so often a member is closed gracefully or dropped without leaving (a
//! crash, whose session must time out) and a new member, a new history process, joins in its
//! place. After the run, the whole log is read back (`final_read`, from offset 0) and a fresh
//! member of the same group reads from the committed offsets to the end (`group_final_read`).
//!
//! Each member is one history process for its whole life, recording its polls (the records
//! returned and the partitions its rebalance listener was told about), its commits, and how it
//! ended (`leave` or `crash`). A commit that ends `info` does not retire the member, unlike a
//! send: its next commit queues behind the unknown one in the client, and the checker treats
//! an unknown commit as possibly applied at any time after its invocation.
//!
//! Everything is bounded: a fixed number of producers and member slots, member lifetimes drawn
//! from a range, one operation open per process, and timeouts over every client call.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rafka_client::{ClientError, Consumer, ConsumerConfig, RebalanceListener, TopicPartition};
use rafka_protocol::api::OFFSETS_TOPIC;
use rafka_protocol::Offset;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{timeout, Instant};

use super::queue::{self, Queue, POLL_TIMEOUT, POLL_WAIT};
use super::{Env, Workload};
use crate::jepsen::history::{
    Change, CommitValue, CommittedValue, GroupPollValue, MembershipValue, Payload, Rebalance,
};
use crate::jepsen::recorder::Recorder;

/// Short, so a crashed member's partitions move within a few seconds (the coordinator's
/// heartbeat interval is one second; its minimum session is one second).
const SESSION_TIMEOUT_MS: u32 = 3_000;
/// Per request; a commit retries within it (client/src/consumer/group.rs).
const REQUEST_TIMEOUT_MS: u64 = 3_000;
/// Backstop over one commit: past it the commit counts as indeterminate.
const COMMIT_TIMEOUT: Duration = Duration::from_millis(REQUEST_TIMEOUT_MS + 5_000);
/// Backstop over a graceful close (a commit-free leave heartbeat, after the commit worker
/// drained).
const LEAVE_TIMEOUT: Duration = Duration::from_millis(2 * REQUEST_TIMEOUT_MS + 5_000);
/// How often a member commits what it processed, in milliseconds (drawn per commit).
const COMMIT_INTERVAL_MS: Range<u64> = 200..1_000;
/// How long a member lives before it is closed or crashed, in milliseconds (drawn per
/// member). Long enough to be given partitions and commit, short enough for several
/// replacements per minute.
const MEMBER_LIFETIME_MS: Range<u64> = 4_000..15_000;
/// Pause after a failed poll.
const POLL_BACKOFF: Duration = Duration::from_millis(100);
/// How long the final group read may take, assignment included (a member that crashed just
/// before the end holds its partitions for a session).
const FINAL_GROUP_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The group workload's shape.
#[derive(Debug, Clone)]
pub struct Group {
    pub topic: String,
    pub partitions: u32,
    pub producers: usize,
    /// Member slots: each always has one member alive (between a member's end and its
    /// replacement's subscription, none).
    pub members: usize,
    pub group_id: String,
}

impl Default for Group {
    fn default() -> Self {
        Group {
            topic: "jepsen-group".into(),
            partitions: 6,
            producers: 3,
            members: 3,
            group_id: "jepsen-group".into(),
        }
    }
}

impl Group {
    fn queue_shape(&self) -> Queue {
        Queue {
            topic: self.topic.clone(),
            partitions: self.partitions,
            producers: self.producers,
        }
    }

    fn all_partitions(&self) -> Vec<TopicPartition> {
        (0..self.partitions)
            .map(|p| TopicPartition::new(self.topic.clone(), p))
            .collect()
    }
}

impl Workload for Group {
    fn name(&self) -> &'static str {
        "group"
    }

    /// The coordinator is not named here: faults aimed at partition leaders hit the brokers
    /// leading this topic, and half of all faults hit a random broker, the coordinator's as
    /// often as any.
    fn topics(&self) -> Vec<(String, u32)> {
        vec![(self.topic.clone(), self.partitions)]
    }

    fn setup<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>> {
        async move {
            super::create_topic(&env.bootstrap, &self.topic, self.partitions).await?;
            // The first FindCoordinator creates the offsets topic; doing it now keeps that out
            // of the run, so the first members join as quickly as later ones.
            let admin = super::admin(&env.bootstrap)?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match admin.find_coordinator(&self.group_id).await {
                    Ok(_) => break,
                    Err(e) if Instant::now() >= deadline => {
                        return Err(format!("no coordinator for {}: {e}", self.group_id))
                    }
                    // Retried: the offsets topic is being created.
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
            super::wait_settled(&env.bootstrap, OFFSETS_TOPIC, Duration::from_secs(60)).await
        }
        .boxed()
    }

    fn run<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, ()> {
        async move {
            let mut tasks = Vec::new();
            for worker in 0..self.producers {
                tasks.push(tokio::spawn(queue::produce(
                    self.queue_shape(),
                    env.clone(),
                    worker,
                )));
            }
            for slot in 0..self.members {
                tasks.push(tokio::spawn(member_slot(self.clone(), env.clone(), slot)));
            }
            for t in tasks {
                if let Err(e) = t.await {
                    eprintln!("jepsen: a group worker died: {e}");
                }
            }
        }
        .boxed()
    }

    fn final_read<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>> {
        async move {
            // The whole log first: it gives each partition's end, which the group read then
            // reads up to.
            let mut errors = Vec::new();
            let mut ends = BTreeMap::new();
            for partition in 0..self.partitions {
                match queue::final_read(&self.topic, env, partition).await {
                    Ok(end) => {
                        ends.insert(partition, end);
                    }
                    Err(e) => errors.push(format!("partition {partition}: {e}")),
                }
            }
            fetch_committed(self, env).await;
            if let Err(e) = final_group_read(self, env, &ends).await {
                errors.push(format!("group read: {e}"));
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
        .boxed()
    }
}

/// Tells the workload what the group moved: the listener's methods run inside `poll`, so the
/// member drains this after each poll and records it in the poll's completion.
#[derive(Clone, Default)]
struct Changes(Arc<Mutex<Vec<Rebalance>>>);

impl Changes {
    fn push(&self, change: Change, partitions: &[TopicPartition]) {
        let partitions = partitions.iter().map(|tp| tp.partition).collect();
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Rebalance { change, partitions });
    }

    fn take(&self) -> Vec<Rebalance> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
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

/// How a member's life ends when the run goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Exit {
    /// Commit what it processed, then `close` (leave the group).
    Close,
    /// Drop the consumer without leaving: its partitions move once its session times out.
    Crash,
}

/// One subscribed consumer, one history process.
struct Member {
    process: i64,
    consumer: Consumer,
    changes: Changes,
    topic: String,
    recorder: Arc<Recorder>,
    /// Per owned partition, the offset after the last record a poll returned.
    processed: BTreeMap<u32, u64>,
    /// Per partition, what this member's last ok commit covered (commits only when it moved).
    committed: BTreeMap<u32, u64>,
}

impl Member {
    fn join(group: &Group, env: &Env) -> Result<Member, ClientError> {
        let process = env.recorder.new_process();
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: env.bootstrap.clone(),
            client_id: format!("jepsen-{process}"),
            fetch_max_wait_ms: 100,
            request_timeout_ms: REQUEST_TIMEOUT_MS,
            group_id: Some(group.group_id.clone()),
            session_timeout_ms: SESSION_TIMEOUT_MS,
            enable_auto_commit: false,
            ..ConsumerConfig::default()
        })?;
        let changes = Changes::default();
        consumer.set_rebalance_listener(changes.clone());
        consumer.subscribe([group.topic.clone()])?;
        Ok(Member {
            process,
            consumer,
            changes,
            topic: group.topic.clone(),
            recorder: Arc::clone(&env.recorder),
            processed: BTreeMap::new(),
            committed: BTreeMap::new(),
        })
    }

    /// One recorded poll (`wrap` makes it a `group_poll` or a `group_final_read`). Returns
    /// the offsets processed of partitions revoked during it, to commit now: the member still
    /// owns them until its next heartbeat (client/src/consumer/group.rs).
    async fn poll(&mut self, wrap: fn(GroupPollValue) -> Payload) -> BTreeMap<u32, u64> {
        let recorder = &self.recorder;
        recorder.invoke(self.process, wrap(GroupPollValue::default()));
        let polled = timeout(POLL_TIMEOUT, self.consumer.poll(POLL_WAIT)).await;
        // Whatever the outcome, the reconciliation the poll did stays done.
        let rebalance = self.changes.take();
        let member_epoch = if rebalance.is_empty() {
            None
        } else {
            self.consumer.member_epoch()
        };
        let mut value = GroupPollValue {
            records: Vec::new(),
            rebalance,
            member_epoch,
        };
        match polled {
            Ok(Ok(batch)) => {
                for record in &batch {
                    let next = self.processed.entry(record.partition).or_default();
                    *next = (*next).max(record.offset.0 + 1);
                }
                value.records = queue::records(&batch)
                    .into_iter()
                    .zip(&batch)
                    .map(|((offset, text), r)| (r.partition, offset, text))
                    .collect();
                recorder.ok(self.process, wrap(value.clone()));
            }
            Ok(Err(e)) => {
                recorder.fail(self.process, wrap(value.clone()), e);
                // Reads have no effect; back off briefly so an unreachable leader or
                // coordinator is not hammered (a failing poll returns at once).
                tokio::time::sleep(POLL_BACKOFF).await;
            }
            Err(_) => recorder.fail(
                self.process,
                wrap(value.clone()),
                format!("no answer within {POLL_TIMEOUT:?}"),
            ),
        }
        // Only what the member still owns is kept; what was revoked (not lost, not given back)
        // is committed at once.
        let owned: Vec<u32> = self
            .consumer
            .assignment()
            .iter()
            .map(|tp| tp.partition)
            .collect();
        let mut revoked = BTreeSet::new();
        for change in &value.rebalance {
            for p in &change.partitions {
                match change.change {
                    Change::Revoked => revoked.insert(*p),
                    Change::Lost | Change::Assigned => revoked.remove(p),
                };
            }
        }
        let mut to_commit = BTreeMap::new();
        for p in revoked {
            if owned.contains(&p) {
                continue;
            }
            if let Some(&next) = self.processed.get(&p) {
                if self.committed.get(&p).is_none_or(|&c| c < next) {
                    to_commit.insert(p, next);
                }
            }
        }
        self.processed.retain(|p, _| owned.contains(p));
        self.committed.retain(|p, _| owned.contains(p));
        to_commit
    }

    /// What was processed since the last ok commit, of the partitions owned now.
    fn due(&self) -> BTreeMap<u32, u64> {
        self.processed
            .iter()
            .filter(|(p, next)| self.committed.get(p).is_none_or(|&c| c < **next))
            .map(|(p, next)| (*p, *next))
            .collect()
    }

    /// One recorded commit of `offsets` (nothing when empty).
    async fn commit(&mut self, offsets: BTreeMap<u32, u64>) {
        if offsets.is_empty() {
            return;
        }
        let value = CommitValue {
            offsets,
            member_epoch: self.consumer.member_epoch(),
        };
        self.recorder
            .invoke(self.process, Payload::Commit(value.clone()));
        let request: BTreeMap<TopicPartition, Offset> = value
            .offsets
            .iter()
            .map(|(p, o)| (TopicPartition::new(self.topic.clone(), *p), Offset(*o)))
            .collect();
        match timeout(COMMIT_TIMEOUT, self.consumer.commit_offsets(request)).await {
            Ok(Ok(())) => {
                for (p, o) in &value.offsets {
                    // Only partitions still owned are tracked (a revoked one was dropped).
                    if self.processed.contains_key(p) {
                        self.committed.insert(*p, *o);
                    }
                }
                self.recorder.ok(self.process, Payload::Commit(value));
            }
            Ok(Err(e)) if !e.is_ambiguous() => {
                self.recorder.fail(self.process, Payload::Commit(value), e);
            }
            Ok(Err(e)) => self.recorder.info(self.process, Payload::Commit(value), e),
            Err(_) => self.recorder.info(
                self.process,
                Payload::Commit(value),
                format!("no outcome within {COMMIT_TIMEOUT:?}"),
            ),
        }
    }

    /// Commits what it processed and leaves the group.
    async fn close(mut self) {
        let due = self.due();
        self.commit(due).await;
        let recorder = Arc::clone(&self.recorder);
        recorder.invoke(self.process, Payload::Leave(MembershipValue::default()));
        let closed = timeout(LEAVE_TIMEOUT, self.consumer.close()).await;
        let value = MembershipValue {
            rebalance: self.changes.take(),
        };
        match closed {
            Ok(Ok(())) => recorder.ok(self.process, Payload::Leave(value)),
            // The consumer has stopped either way; whether the coordinator heard the leave is
            // unknown (if not, the session times out).
            Ok(Err(e)) => recorder.info(self.process, Payload::Leave(value), e),
            Err(_) => recorder.info(
                self.process,
                Payload::Leave(value),
                format!("no outcome within {LEAVE_TIMEOUT:?}"),
            ),
        }
    }

    /// Drops the consumer without leaving, as a crashed process would.
    fn crash(self) {
        let process = self.process;
        let recorder = Arc::clone(&self.recorder);
        recorder.invoke(process, Payload::Crash(MembershipValue::default()));
        drop(self.consumer);
        recorder.ok(process, Payload::Crash(MembershipValue::default()));
    }
}

/// One member slot: members one after another until the run stops, each polling and committing
/// for a random lifetime, then closed or crashed.
async fn member_slot(group: Group, env: Env, slot: usize) {
    let mut rng = StdRng::seed_from_u64(env.seed ^ (0x6a0c_0000 + slot as u64));
    let stopped = || *env.stop.borrow();
    while !stopped() {
        let lifetime = Duration::from_millis(rng.gen_range(MEMBER_LIFETIME_MS));
        let exit = if rng.gen_bool(0.5) {
            Exit::Close
        } else {
            Exit::Crash
        };
        let mut member = match Member::join(&group, &env) {
            Ok(m) => m,
            Err(e) => {
                // Only a bad configuration makes this fail: retrying would fail again.
                eprintln!("jepsen: group member slot {slot}: {e}");
                return;
            }
        };
        let end = Instant::now() + lifetime;
        let mut next_commit =
            Instant::now() + Duration::from_millis(rng.gen_range(COMMIT_INTERVAL_MS));
        while !stopped() && Instant::now() < end {
            let revoked = member.poll(Payload::GroupPoll).await;
            member.commit(revoked).await;
            if Instant::now() >= next_commit {
                let due = member.due();
                member.commit(due).await;
                next_commit =
                    Instant::now() + Duration::from_millis(rng.gen_range(COMMIT_INTERVAL_MS));
            }
        }
        // At the end of the run every member leaves, so the final group reader has the
        // partitions at once.
        if stopped() || exit == Exit::Close {
            member.close().await;
        } else {
            member.crash();
        }
    }
}

/// Looks the group's committed offsets up from outside the group, as one recorded operation.
async fn fetch_committed(group: &Group, env: &Env) {
    let recorder = &env.recorder;
    let process = recorder.new_process();
    let payload = |committed| Payload::FetchCommitted(CommittedValue { committed });
    recorder.invoke(process, payload(BTreeMap::new()));
    let admin = match super::admin(&env.bootstrap) {
        Ok(a) => a,
        Err(e) => {
            recorder.fail(process, payload(BTreeMap::new()), e);
            return;
        }
    };
    let looked_up = timeout(
        POLL_TIMEOUT,
        admin.committed_offsets(&group.group_id, &group.all_partitions()),
    )
    .await;
    match looked_up {
        Ok(Ok(offsets)) => {
            let committed = offsets
                .into_iter()
                .filter_map(|(tp, o)| Some((tp.partition, o?.0)))
                .collect();
            recorder.ok(process, payload(committed));
        }
        Ok(Err(e)) => recorder.fail(process, payload(BTreeMap::new()), e),
        Err(_) => recorder.fail(
            process,
            payload(BTreeMap::new()),
            format!("no answer within {POLL_TIMEOUT:?}"),
        ),
    }
}

/// A fresh member of the group reads every partition from its committed offset up to `ends`
/// (each partition's end, from the plain final read), then leaves.
async fn final_group_read(
    group: &Group,
    env: &Env,
    ends: &BTreeMap<u32, u64>,
) -> Result<(), String> {
    let mut member = Member::join(group, env).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + FINAL_GROUP_READ_TIMEOUT;
    let mut reached = BTreeSet::new();
    let result = loop {
        // Reached: owned with a position at or past its end. Empty partitions need nothing.
        for tp in member.consumer.assignment() {
            let end = ends.get(&tp.partition).copied().unwrap_or(0);
            if member.consumer.position(&tp).is_some_and(|p| p.0 >= end) {
                reached.insert(tp.partition);
            }
        }
        let missing: Vec<u32> = ends
            .iter()
            .filter(|(p, end)| **end > 0 && !reached.contains(*p))
            .map(|(p, _)| *p)
            .collect();
        if missing.is_empty() {
            break Ok(());
        }
        if Instant::now() >= deadline {
            break Err(format!(
                "partitions {missing:?} not read to their ends within \
                 {FINAL_GROUP_READ_TIMEOUT:?}"
            ));
        }
        // The final reader does not commit: nothing after it needs its progress.
        let _ = member.poll(Payload::GroupFinalRead).await;
    };
    member.processed.clear();
    member.close().await;
    result
}

//! Consumer-group membership for [`Consumer::subscribe`](super::Consumer::subscribe), in the
//! shape of Kafka's KIP-848 (the coordinator computes assignments; members only report).
//!
//! Who owns what:
//! - The **heartbeat task** (`heartbeat_loop`, one per subscribed consumer) owns the
//!   conversation with the coordinator: it joins, heartbeats every `heartbeat_interval_ms`
//!   (at once when the consumer's owned set changed), records the member id, epoch and latest
//!   target assignment in [`MemberState`], notices fencing, and leaves the group when the
//!   application stopped calling `poll` for `max_poll_interval_ms`.
//! - The **application's task**, inside `poll`, owns the partitions: it compares the target
//!   with what it owns ([`reconcile`]), commits and revokes, calls the [`RebalanceListener`],
//!   adds partitions at their committed offsets, and only then publishes the new owned set,
//!   which the next heartbeat reports. So a partition is never reported free before its
//!   position was committed, and callbacks run on the application's task.
//! - The **commit worker** sends offset commits one at a time in the order they were asked
//!   for (the broker handles requests of one connection concurrently, so two commits in
//!   flight could land out of order and move a committed offset backwards).
//!
//! State shared between them is [`MemberShared`]: a std mutex (never held across an
//! `.await`) and two `Notify`s, one per direction.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use rafka_protocol::api::member_epoch;
use rafka_protocol::messages::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, OffsetCommitPartition,
    OffsetCommitRequest, OffsetCommitTopic, OffsetFetchRequest, TopicPartitions,
};
use rafka_protocol::{ErrorCode, Offset};
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::TopicPartition;
use crate::connection::lock;
use crate::coordinator::Coordinator;
use crate::error::{ClientError, Result};

/// Commits waiting for the commit worker. `commit_async` waits for room when it is full, so
/// an application committing faster than the coordinator answers is slowed down, not buffered
/// without bound.
pub const COMMITS_QUEUED_MAX: usize = 16;

/// Heartbeat interval used until the coordinator names one.
const HEARTBEAT_INTERVAL_DEFAULT: Duration = Duration::from_secs(3);

/// How long the heartbeat task sleeps when it has nothing to send (it is woken earlier).
const IDLE_WAIT: Duration = Duration::from_secs(3600);

/// Called from within `poll` (on the application's task) when the group moves partitions.
///
/// Revocation happens before the partitions are reported free: with auto-commit on, their
/// positions are already committed when `on_partitions_revoked` runs, and an application
/// committing by hand should do it there (the consumer cannot be used from inside the
/// callback, so keep the offsets to commit on the side and call `commit_offsets` right after
/// `poll` returns; the partitions are still owned until the next heartbeat).
pub trait RebalanceListener: Send + Sync {
    /// Partitions this consumer gives up in a rebalance; their records are no longer returned.
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    /// Partitions this consumer now owns; consumption starts at their committed offsets, or
    /// at `initial_position` where nothing is committed.
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    /// Partitions taken away without a chance to commit (the member was fenced or evicted, or
    /// left because `poll` was not called in time). Others may already consume them.
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        self.on_partitions_revoked(partitions)
    }
}

/// A listener that does nothing.
pub struct NoopListener;

impl RebalanceListener for NoopListener {}

/// What a member must do to move from the partitions it owns to a target assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Reconciliation {
    /// Owned but not in the target: commit, stop, report revoked (sorted).
    pub revoke: Vec<TopicPartition>,
    /// In the target but not owned: report assigned, position, start (sorted).
    pub add: Vec<TopicPartition>,
}

impl Reconciliation {
    pub fn is_empty(&self) -> bool {
        self.revoke.is_empty() && self.add.is_empty()
    }
}

/// Compares what a member owns with the complete assignment the coordinator sent. Partitions
/// in both are kept untouched (a sticky assignment never interrupts them).
pub fn reconcile(
    owned: &BTreeSet<TopicPartition>,
    assignment: &BTreeSet<TopicPartition>,
) -> Reconciliation {
    Reconciliation {
        revoke: owned.difference(assignment).cloned().collect(),
        add: assignment.difference(owned).cloned().collect(),
    }
}

/// Partitions grouped by topic, as the wire carries them (sorted, so requests are stable).
pub fn to_wire<'a>(
    partitions: impl IntoIterator<Item = &'a TopicPartition>,
) -> Vec<TopicPartitions> {
    let mut by_topic: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
    for tp in partitions {
        by_topic.entry(&tp.topic).or_default().push(tp.partition);
    }
    by_topic
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            partitions.dedup();
            TopicPartitions {
                topic: topic.to_owned(),
                partitions,
            }
        })
        .collect()
}

/// The set of partitions a wire list names.
pub fn from_wire(topics: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.topic.clone(), *p))
        })
        .collect()
}

/// The membership settings, fixed for one subscription.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    pub group_id: String,
    /// Static membership; `None` for a dynamic member.
    pub instance_id: Option<String>,
    pub client_id: String,
    /// Sorted and deduplicated.
    pub topics: Vec<String>,
    pub assignor: String,
    pub session_timeout_ms: u32,
    pub max_poll_interval: Duration,
    pub request_timeout: Duration,
    pub retry_backoff: Duration,
}

/// Where the member is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Phase {
    /// Heartbeating with epoch 0 until the coordinator gives an epoch.
    Joining,
    /// In the group with an epoch; heartbeats carry it.
    Member,
    /// Fenced or unknown to the coordinator: the consumer must drop its partitions (lost, no
    /// commit), then the task rejoins with epoch 0 and the same member id.
    Fenced,
    /// Left the group because `poll` was not called within `max_poll_interval_ms`: the next
    /// `poll` drops the partitions (lost) and rejoins.
    PollExpired,
    /// A fatal error (invalid group id, unknown assignor, group full): every `poll` reports it.
    Failed(ClientError),
    /// Unsubscribing or closed: the task exits.
    Stopped,
}

/// The membership as both tasks see it.
#[derive(Debug)]
pub struct MemberState {
    pub phase: Phase,
    /// Empty until the coordinator assigns one; kept across rejoins.
    pub member_id: String,
    /// The last epoch the coordinator gave (0 while joining).
    pub member_epoch: i32,
    /// What the consumer owns now; published by the consumer after each reconciliation, and
    /// reported in every heartbeat.
    pub owned: BTreeSet<TopicPartition>,
    /// The latest complete assignment from the coordinator (`None` before the first one
    /// after joining).
    pub target: Option<BTreeSet<TopicPartition>>,
    pub heartbeat_interval: Duration,
    /// When the application last called `poll` (for `max_poll_interval_ms`).
    pub last_poll: Instant,
}

impl MemberState {
    pub fn new(now: Instant) -> MemberState {
        MemberState {
            phase: Phase::Joining,
            member_id: String::new(),
            member_epoch: member_epoch::JOIN,
            owned: BTreeSet::new(),
            target: None,
            heartbeat_interval: HEARTBEAT_INTERVAL_DEFAULT,
            last_poll: now,
        }
    }
}

/// The heartbeat a member in `state` sends: always the full subscription and owned set.
pub fn heartbeat_request(
    config: &MemberConfig,
    state: &MemberState,
    epoch: i32,
) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        group_id: config.group_id.clone(),
        member_id: state.member_id.clone(),
        member_epoch: epoch,
        instance_id: config.instance_id.clone().unwrap_or_default(),
        subscribed_topics: config.topics.clone(),
        assignor: config.assignor.clone(),
        session_timeout_ms: config.session_timeout_ms,
        owned: if epoch == member_epoch::JOIN {
            // A (re)joining member owns nothing: it gave everything up before rejoining.
            Vec::new()
        } else {
            to_wire(&state.owned)
        },
        client_id: config.client_id.clone(),
    }
}

/// What the heartbeat task does after a response (or a failure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HeartbeatOutcome {
    /// Heartbeat again after this long.
    Next(Duration),
    /// The consumer must act first (fenced, failed): wait to be woken.
    WaitForConsumer,
}

/// Applies one heartbeat result to the state (sans-IO: the task does the sending and the
/// sleeping). `sent_epoch` is the epoch the request carried.
pub fn apply_heartbeat(
    config: &MemberConfig,
    state: &mut MemberState,
    result: Result<ConsumerGroupHeartbeatResponse>,
) -> HeartbeatOutcome {
    if matches!(state.phase, Phase::Stopped | Phase::PollExpired) {
        // Unsubscribe or a leave overtook this heartbeat. Keep the identity so a leave can
        // name it, change nothing else.
        if let Ok(resp) = result {
            if !resp.member_id.is_empty() {
                state.member_id = resp.member_id;
            }
            state.member_epoch = resp.member_epoch;
        }
        return HeartbeatOutcome::WaitForConsumer;
    }
    let resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            return match e.code() {
                Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch)
                | Some(ErrorCode::StaleMemberEpoch) => {
                    tracing::info!(group = %config.group_id, member = %state.member_id, error = %e, "member fenced; giving up partitions and rejoining");
                    state.phase = Phase::Fenced;
                    state.member_epoch = member_epoch::JOIN;
                    state.target = None;
                    HeartbeatOutcome::WaitForConsumer
                }
                _ if e.is_retriable() => {
                    tracing::debug!(group = %config.group_id, error = %e, "heartbeat failed; retrying");
                    HeartbeatOutcome::Next(config.retry_backoff)
                }
                _ => {
                    tracing::warn!(group = %config.group_id, error = %e, "heartbeat failed for good");
                    state.phase = Phase::Failed(e);
                    HeartbeatOutcome::WaitForConsumer
                }
            };
        }
    };
    if !resp.member_id.is_empty() {
        state.member_id = resp.member_id;
    }
    state.member_epoch = resp.member_epoch;
    if resp.heartbeat_interval_ms > 0 {
        state.heartbeat_interval = Duration::from_millis(u64::from(resp.heartbeat_interval_ms));
    }
    state.target = Some(from_wire(&resp.assignment));
    state.phase = Phase::Member;
    HeartbeatOutcome::Next(state.heartbeat_interval)
}

/// The state both tasks share, and how each wakes the other.
pub struct MemberShared {
    pub config: MemberConfig,
    pub state: Mutex<MemberState>,
    /// Wakes the heartbeat task: the owned set changed, or the consumer rejoins or stops.
    pub wake_heartbeat: Notify,
    /// Wakes a waiting `poll`: a new target assignment, fencing, or a failure.
    pub changed: Notify,
    /// The first failure of a `commit_async` whose handle was dropped; reported by the next
    /// `poll` (one slot: later ones are logged only).
    pub async_commit_error: Mutex<Option<ClientError>>,
}

impl MemberShared {
    /// `(member_id, member_epoch)` for an offset commit, or an error when the consumer is not
    /// a member with an epoch right now (joining, fenced, left).
    fn commit_identity(&self) -> Result<(String, i32)> {
        let st = lock(&self.state);
        if st.phase == Phase::Member && st.member_epoch > 0 {
            Ok((st.member_id.clone(), st.member_epoch))
        } else {
            Err(ClientError::Group {
                code: ErrorCode::UnknownMemberId,
                group: self.config.group_id.clone(),
                message: "not a member of the group right now (joining, fenced or left); \
                          commit refused"
                    .into(),
            })
        }
    }
}

/// The background loop that keeps the member in the group. Exits when the phase becomes
/// `Stopped`.
pub async fn heartbeat_loop(shared: Arc<MemberShared>, coordinator: Arc<Coordinator>) {
    let config = &shared.config;
    let mut next = Instant::now();
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            _ = shared.wake_heartbeat.notified() => {}
        }
        let (request, leaving_for_poll) = {
            let mut st = lock(&shared.state);
            match st.phase {
                Phase::Stopped => return,
                Phase::Fenced | Phase::PollExpired | Phase::Failed(_) => {
                    next = Instant::now() + IDLE_WAIT;
                    continue;
                }
                Phase::Joining | Phase::Member => {}
            }
            if st.last_poll.elapsed() > config.max_poll_interval {
                // The application is stuck: hand its partitions to others. Even a static
                // member leaves for good here (-1), since keeping its partitions for a
                // session would only stall them.
                tracing::warn!(
                    group = %config.group_id,
                    max_poll_interval_ms = config.max_poll_interval.as_millis() as u64,
                    "poll not called within max_poll_interval_ms; leaving the group"
                );
                let request = heartbeat_request(config, &st, member_epoch::LEAVE);
                st.phase = Phase::PollExpired;
                st.member_epoch = member_epoch::JOIN;
                st.target = None;
                (request, true)
            } else {
                let epoch = if st.phase == Phase::Joining {
                    member_epoch::JOIN
                } else {
                    st.member_epoch
                };
                (heartbeat_request(config, &st, epoch), false)
            }
        };
        let timeout = config.request_timeout.min(Duration::from_millis(u64::from(
            config.session_timeout_ms.max(1000),
        )));
        let result = coordinator.send_once(request, timeout).await;
        if leaving_for_poll {
            if let Err(e) = result {
                tracing::debug!(error = %e, "leave after poll timeout failed; the session will expire");
            }
            shared.changed.notify_one();
            next = Instant::now() + IDLE_WAIT;
            continue;
        }
        let outcome = {
            let mut st = lock(&shared.state);
            if st.phase == Phase::Stopped {
                // Keep the identity for the leave, then exit.
                let _ = apply_heartbeat(config, &mut st, result);
                return;
            }
            apply_heartbeat(config, &mut st, result)
        };
        shared.changed.notify_one();
        next = match outcome {
            HeartbeatOutcome::Next(after) => Instant::now() + after,
            HeartbeatOutcome::WaitForConsumer => Instant::now() + IDLE_WAIT,
        };
    }
}

/// Commits `offsets` for the member `identity` names, retrying retriable errors (finding the
/// coordinator again) until the request timeout. Once an attempt may have been applied (a
/// timeout, a lost connection), a failure is [`ClientError::CommitOutcomeUnknown`], never a
/// plain failure. STALE_MEMBER_EPOCH, UNKNOWN_MEMBER_ID and FENCED_MEMBER_EPOCH end it at once:
/// the member does not own what it tried to commit.
pub async fn commit_offsets(
    coordinator: &Coordinator,
    offsets: &BTreeMap<TopicPartition, Offset>,
    identity: impl Fn() -> Result<(String, i32)>,
) -> Result<()> {
    if offsets.is_empty() {
        return Ok(());
    }
    let config = coordinator.cluster().config();
    let deadline = Instant::now() + config.request_timeout;
    let backoff = config.retry_backoff;
    let topics = offsets_to_wire(offsets);
    let mut unknown_since: Option<ClientError> = None;
    loop {
        let attempt = match identity() {
            Ok((member_id, member_epoch)) => {
                let request = OffsetCommitRequest {
                    group_id: coordinator.group_id().to_owned(),
                    member_id,
                    member_epoch,
                    topics: topics.clone(),
                };
                let remaining = deadline.saturating_duration_since(Instant::now());
                coordinator
                    .send_once(request, remaining.max(backoff))
                    .await
                    .map(|_| ())
            }
            Err(e) => Err(e),
        };
        let e = match attempt {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if e.is_ambiguous() && unknown_since.is_none() {
            unknown_since = Some(e.clone());
        }
        if e.is_retriable() && Instant::now() + backoff < deadline {
            tracing::debug!(group = %coordinator.group_id(), error = %e, "offset commit failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        return Err(match unknown_since {
            Some(first) => ClientError::CommitOutcomeUnknown {
                group: coordinator.group_id().to_owned(),
                reason: if first == e {
                    e.to_string()
                } else {
                    format!("{first}; then {e}")
                },
            },
            None => e,
        });
    }
}

/// Offsets to commit grouped by topic, as OffsetCommit and TxnOffsetCommit carry them.
pub fn offsets_to_wire(offsets: &BTreeMap<TopicPartition, Offset>) -> Vec<OffsetCommitTopic> {
    let mut by_topic: BTreeMap<&str, Vec<OffsetCommitPartition>> = BTreeMap::new();
    for (tp, offset) in offsets {
        by_topic
            .entry(&tp.topic)
            .or_default()
            .push(OffsetCommitPartition {
                partition: tp.partition,
                offset: offset.0,
                metadata: String::new(),
            });
    }
    by_topic
        .into_iter()
        .map(|(name, partitions)| OffsetCommitTopic {
            name: name.to_owned(),
            partitions,
        })
        .collect()
}

/// The committed offsets of `partitions` (all of the group's when empty); `None` where
/// nothing is committed. Retries until the request timeout.
pub async fn fetch_committed(
    coordinator: &Coordinator,
    partitions: &[TopicPartition],
) -> Result<BTreeMap<TopicPartition, Option<Offset>>> {
    let deadline = Instant::now() + coordinator.cluster().config().request_timeout;
    let request = OffsetFetchRequest {
        group_id: coordinator.group_id().to_owned(),
        partitions: to_wire(partitions),
    };
    let resp = coordinator.send(request, deadline).await?;
    let mut out: BTreeMap<TopicPartition, Option<Offset>> =
        partitions.iter().map(|tp| (tp.clone(), None)).collect();
    for t in resp.topics {
        for p in t.partitions {
            let offset = u64::try_from(p.offset).ok().map(Offset);
            out.insert(TopicPartition::new(t.name.clone(), p.partition), offset);
        }
    }
    Ok(out)
}

/// One commit for the worker.
struct CommitJob {
    offsets: BTreeMap<TopicPartition, Offset>,
    /// `None` for auto-commits: failures are only logged.
    reply: Option<oneshot::Sender<Result<()>>>,
}

/// The outcome of a [`Consumer::commit_async`](super::Consumer::commit_async). Await it for
/// the result, or drop it: a failure is then reported by a later `poll` (the first one only).
#[must_use = "drop the handle explicitly to have failures reported by a later poll"]
pub struct CommitHandle {
    rx: oneshot::Receiver<Result<()>>,
}

impl Future for CommitHandle {
    type Output = Result<()>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ClientError::Closed)))
    }
}

async fn commit_worker(
    shared: Arc<MemberShared>,
    coordinator: Arc<Coordinator>,
    mut jobs: mpsc::Receiver<CommitJob>,
) {
    while let Some(job) = jobs.recv().await {
        let result = commit_offsets(&coordinator, &job.offsets, || shared.commit_identity()).await;
        match job.reply {
            Some(reply) => {
                if let Err(Err(e)) = reply.send(result) {
                    // Nobody awaits this commit_async any more: keep the error for `poll`.
                    tracing::warn!(error = %e, "asynchronous offset commit failed");
                    lock(&shared.async_commit_error).get_or_insert(e);
                }
            }
            None => {
                if let Err(e) = result {
                    tracing::warn!(error = %e, "automatic offset commit failed");
                }
            }
        }
    }
}

/// A subscribed consumer's membership: the shared state and the two background tasks.
/// Dropping it stops both tasks without leaving (the session then expires on the coordinator).
pub struct GroupMember {
    pub shared: Arc<MemberShared>,
    pub coordinator: Arc<Coordinator>,
    heartbeat: JoinHandle<()>,
    commits: mpsc::Sender<CommitJob>,
    commit_worker: JoinHandle<()>,
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.commit_worker.abort();
    }
}

impl GroupMember {
    /// Starts the heartbeat task (which joins at once) and the commit worker.
    pub fn start(coordinator: Arc<Coordinator>, config: MemberConfig) -> GroupMember {
        let shared = Arc::new(MemberShared {
            config,
            state: Mutex::new(MemberState::new(Instant::now())),
            wake_heartbeat: Notify::new(),
            changed: Notify::new(),
            async_commit_error: Mutex::new(None),
        });
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), coordinator.clone()));
        let (commits, jobs) = mpsc::channel(COMMITS_QUEUED_MAX);
        let commit_worker = tokio::spawn(commit_worker(shared.clone(), coordinator.clone(), jobs));
        GroupMember {
            shared,
            coordinator,
            heartbeat,
            commits,
            commit_worker,
        }
    }

    /// Commits and waits for the outcome, after every commit asked for before it.
    pub async fn commit(&self, offsets: BTreeMap<TopicPartition, Offset>) -> Result<()> {
        self.commit_async(offsets).await?.await
    }

    /// Queues a commit (waiting only for room in the queue).
    pub async fn commit_async(
        &self,
        offsets: BTreeMap<TopicPartition, Offset>,
    ) -> Result<CommitHandle> {
        let (tx, rx) = oneshot::channel();
        self.commits
            .send(CommitJob {
                offsets,
                reply: Some(tx),
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        Ok(CommitHandle { rx })
    }

    /// Queues an auto-commit unless the queue is full (the next interval tries again).
    pub fn auto_commit(&self, offsets: BTreeMap<TopicPartition, Offset>) {
        if offsets.is_empty() {
            return;
        }
        let job = CommitJob {
            offsets,
            reply: None,
        };
        if self.commits.try_send(job).is_err() {
            tracing::debug!("commit queue full; skipping this auto-commit");
        }
    }

    /// Stops the heartbeat task and waits for it (a heartbeat in flight completes, so the
    /// member id is current), then sends the leave heartbeat: epoch -1, or -2 for a static
    /// member (which keeps its partitions until its session expires). Waits for queued commits
    /// first, so none arrives after the leave.
    pub async fn leave(mut self) -> Result<()> {
        let shared = self.shared.clone();
        let config = &shared.config;
        let wait = config.request_timeout + Duration::from_secs(1);
        // Closing the queue lets the worker finish what is queued (still as a member), then
        // exit.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.commits, closed));
        if tokio::time::timeout(wait, &mut self.commit_worker)
            .await
            .is_err()
        {
            self.commit_worker.abort();
        }
        lock(&shared.state).phase = Phase::Stopped;
        shared.wake_heartbeat.notify_one();
        if tokio::time::timeout(wait, &mut self.heartbeat)
            .await
            .is_err()
        {
            self.heartbeat.abort();
        }
        let request = {
            let st = lock(&self.shared.state);
            if st.member_id.is_empty() {
                return Ok(()); // never joined: nothing to leave
            }
            let epoch = if config.instance_id.is_some() {
                member_epoch::STATIC_LEAVE
            } else {
                member_epoch::LEAVE
            };
            heartbeat_request(config, &st, epoch)
        };
        let deadline = Instant::now() + config.request_timeout;
        match self.coordinator.send(request, deadline).await {
            Ok(_) => Ok(()),
            // Already out of the group: leaving has nothing left to do.
            Err(e)
                if matches!(
                    e.code(),
                    Some(ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch)
                ) =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tps(list: &[(&str, u32)]) -> BTreeSet<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    fn config() -> MemberConfig {
        MemberConfig {
            group_id: "g".into(),
            instance_id: None,
            client_id: "c".into(),
            topics: vec!["a".into(), "b".into()],
            assignor: "sticky".into(),
            session_timeout_ms: 10_000,
            max_poll_interval: Duration::from_secs(300),
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
        }
    }

    #[test]
    fn reconcile_revokes_what_left_and_adds_what_came() {
        let owned = tps(&[("a", 0), ("a", 1), ("b", 0)]);
        let target = tps(&[("a", 1), ("b", 0), ("b", 1)]);
        let r = reconcile(&owned, &target);
        assert_eq!(r.revoke, vec![TopicPartition::new("a", 0)]);
        assert_eq!(r.add, vec![TopicPartition::new("b", 1)]);
    }

    #[test]
    fn reconcile_edge_cases() {
        let some = tps(&[("a", 0), ("a", 1)]);
        assert!(reconcile(&some, &some).is_empty());
        let empty = BTreeSet::new();
        let r = reconcile(&empty, &some);
        assert!(r.revoke.is_empty());
        assert_eq!(r.add.len(), 2);
        let r = reconcile(&some, &empty);
        assert_eq!(r.revoke.len(), 2);
        assert!(r.add.is_empty());
        assert!(reconcile(&empty, &empty).is_empty());
    }

    #[test]
    fn wire_lists_round_trip_sorted_by_topic() {
        let set = tps(&[("b", 2), ("a", 1), ("b", 0)]);
        let wire = to_wire(&set);
        assert_eq!(wire.len(), 2);
        assert_eq!(wire[0].topic, "a");
        assert_eq!(wire[1].partitions, vec![0, 2]);
        assert_eq!(from_wire(&wire), set);
    }

    #[test]
    fn joining_heartbeat_owns_nothing_and_carries_the_subscription() {
        let cfg = config();
        let mut st = MemberState::new(Instant::now());
        st.owned = tps(&[("a", 0)]);
        let join = heartbeat_request(&cfg, &st, member_epoch::JOIN);
        assert_eq!(join.member_epoch, 0);
        assert!(join.owned.is_empty());
        assert_eq!(join.subscribed_topics, vec!["a", "b"]);
        assert_eq!(join.session_timeout_ms, 10_000);
        st.member_epoch = 5;
        let hb = heartbeat_request(&cfg, &st, 5);
        assert_eq!(hb.owned.len(), 1);
    }

    fn response(
        member: &str,
        epoch: i32,
        assignment: &[(&str, u32)],
    ) -> ConsumerGroupHeartbeatResponse {
        ConsumerGroupHeartbeatResponse {
            error_code: 0,
            error_message: String::new(),
            member_id: member.into(),
            member_epoch: epoch,
            heartbeat_interval_ms: 500,
            assignment: to_wire(&tps(assignment)),
        }
    }

    fn group_error(code: ErrorCode) -> ClientError {
        ClientError::Group {
            code,
            group: "g".into(),
            message: String::new(),
        }
    }

    #[test]
    fn a_response_sets_identity_target_and_interval() {
        let cfg = config();
        let mut st = MemberState::new(Instant::now());
        let out = apply_heartbeat(&cfg, &mut st, Ok(response("m1", 3, &[("a", 0)])));
        assert_eq!(out, HeartbeatOutcome::Next(Duration::from_millis(500)));
        assert_eq!(st.phase, Phase::Member);
        assert_eq!((st.member_id.as_str(), st.member_epoch), ("m1", 3));
        assert_eq!(st.target, Some(tps(&[("a", 0)])));
    }

    #[test]
    fn fencing_keeps_the_member_id_and_waits_for_the_consumer() {
        let cfg = config();
        let mut st = MemberState::new(Instant::now());
        apply_heartbeat(&cfg, &mut st, Ok(response("m1", 3, &[("a", 0)])));
        for code in [ErrorCode::FencedMemberEpoch, ErrorCode::UnknownMemberId] {
            st.phase = Phase::Member;
            let out = apply_heartbeat(&cfg, &mut st, Err(group_error(code)));
            assert_eq!(out, HeartbeatOutcome::WaitForConsumer);
            assert_eq!(st.phase, Phase::Fenced);
            assert_eq!(st.member_epoch, 0);
            assert_eq!(st.member_id, "m1");
            assert_eq!(st.target, None);
        }
    }

    #[test]
    fn coordinator_errors_retry_and_fatal_errors_stop() {
        let cfg = config();
        let mut st = MemberState::new(Instant::now());
        let out = apply_heartbeat(&cfg, &mut st, Err(group_error(ErrorCode::NotCoordinator)));
        assert_eq!(out, HeartbeatOutcome::Next(cfg.retry_backoff));
        assert_eq!(st.phase, Phase::Joining);
        let out = apply_heartbeat(&cfg, &mut st, Err(group_error(ErrorCode::InvalidGroupId)));
        assert_eq!(out, HeartbeatOutcome::WaitForConsumer);
        assert!(matches!(st.phase, Phase::Failed(_)));
    }

    #[test]
    fn a_response_after_stopping_only_updates_the_identity() {
        let cfg = config();
        let mut st = MemberState::new(Instant::now());
        st.phase = Phase::Stopped;
        apply_heartbeat(&cfg, &mut st, Ok(response("m9", 1, &[("a", 0)])));
        assert_eq!(st.phase, Phase::Stopped);
        assert_eq!(st.member_id, "m9");
        assert_eq!(st.target, None);
    }
}

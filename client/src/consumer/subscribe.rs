//! The group side of [`Consumer`]: subscribing, the per-`poll` step that acts on what the
//! heartbeat task learned (reconcile, lose, auto-commit), commits, and leaving.
//!
//! Everything here runs on the application's task inside `&mut self` methods, so partitions
//! change hands only between two batches of records. Each step is written so that a `poll`
//! cancelled at any `.await` leaves a state the next `poll` can finish from: positions and
//! the owned set are changed only after the awaited commit or fetch returned.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use rafka_protocol::api::member_epoch;
use rafka_protocol::Offset;
use tokio::time::Instant;

use super::group::{self, reconcile, CommitHandle, GroupMember, MemberConfig, Phase};
use super::{Consumer, RebalanceListener, Subscription};
use crate::cluster::TopicPartition;
use crate::connection::lock;
use crate::coordinator::Coordinator;
use crate::error::{ClientError, Result};

/// Who is consuming, as a transactional producer's `send_offsets_to_transaction` needs it:
/// the group coordinator checks a transactional offset commit as it checks the member's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerGroupMetadata {
    pub group_id: String,
    /// Empty outside the group (a consumer using `assign`; then `member_epoch` is -1 and the
    /// commit is allowed only while the group has no members).
    pub member_id: String,
    pub member_epoch: i32,
}

impl ConsumerGroupMetadata {
    /// For offsets of a consumer that is not a member of the group (it uses `assign`).
    pub fn standalone(group_id: impl Into<String>) -> ConsumerGroupMetadata {
        ConsumerGroupMetadata {
            group_id: group_id.into(),
            member_id: String::new(),
            member_epoch: member_epoch::NONE,
        }
    }
}

/// What `group_step` found to do.
enum Action {
    Idle,
    /// Fenced, evicted, or left after a missed poll: drop everything without committing.
    Lost,
    /// Move from the owned set to this target.
    Reconcile(BTreeSet<TopicPartition>),
}

impl Consumer {
    /// Sets the listener told about partitions the group assigns, revokes and loses. Its
    /// methods run inside `poll` (and `unsubscribe`/`close`), on the caller's task.
    pub fn set_rebalance_listener(&mut self, listener: impl RebalanceListener + 'static) {
        self.listener = Box::new(listener);
    }

    /// Joins the group named by `ConsumerConfig::group_id`, subscribed to `topics`. Returns
    /// at once: a background task joins and heartbeats, and `poll` starts returning records
    /// once the coordinator assigned partitions (the first join of a new cluster can take
    /// seconds while the broker creates the offsets topic). Needs a Tokio runtime.
    ///
    /// Fails when no group id is configured, the topic list is empty, partitions were assigned
    /// by hand, or the consumer is already subscribed (unsubscribe first to change topics).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use rafka_client::{Consumer, ConsumerConfig};
    /// # async fn demo() -> Result<(), rafka_client::ClientError> {
    /// let mut consumer = Consumer::new(ConsumerConfig {
    ///     group_id: Some("billing".into()),
    ///     ..ConsumerConfig::default()
    /// })?;
    /// consumer.subscribe(["events"])?;
    /// for _ in 0..10 {
    ///     for record in consumer.poll(Duration::from_secs(1)).await? {
    ///         println!("{}-{} {:?}", record.topic, record.partition, record.offset);
    ///     }
    /// }
    /// consumer.close().await?; // commits the positions (auto-commit) and leaves the group
    /// # Ok(())
    /// # }
    /// ```
    pub fn subscribe<T: Into<String>>(
        &mut self,
        topics: impl IntoIterator<Item = T>,
    ) -> Result<()> {
        let Some(group_id) = self.config.group_id.clone() else {
            return Err(ClientError::InvalidArgument(
                "subscribe needs ConsumerConfig::group_id".into(),
            ));
        };
        if self.subscription.is_some() {
            return Err(ClientError::InvalidArgument(
                "already subscribed; unsubscribe first".into(),
            ));
        }
        if !self.positions.is_empty() {
            return Err(ClientError::InvalidArgument(
                "partitions are assigned by hand; assign an empty set before subscribing".into(),
            ));
        }
        let mut topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        topics.sort();
        topics.dedup();
        if topics.is_empty() || topics.iter().any(String::is_empty) {
            return Err(ClientError::InvalidArgument(
                "subscribe needs at least one topic name".into(),
            ));
        }
        let config = MemberConfig {
            group_id: group_id.clone(),
            instance_id: self.config.group_instance_id.clone(),
            client_id: self.config.client_id.clone(),
            topics,
            assignor: self.config.assignor.clone(),
            session_timeout_ms: self.config.session_timeout_ms,
            max_poll_interval: Duration::from_millis(self.config.max_poll_interval_ms),
            request_timeout: Duration::from_millis(self.config.request_timeout_ms),
            retry_backoff: Duration::from_millis(self.config.retry_backoff_ms),
        };
        let coordinator = Arc::new(Coordinator::new(self.cluster.clone(), group_id));
        self.subscription = Some(Subscription {
            member: GroupMember::start(coordinator, config),
            awaiting_committed: BTreeSet::new(),
            next_auto_commit: Instant::now()
                + Duration::from_millis(self.config.auto_commit_interval_ms),
            last_auto_commit: BTreeMap::new(),
        });
        Ok(())
    }

    /// Whether the consumer is subscribed to a group.
    pub fn is_subscribed(&self) -> bool {
        self.subscription.is_some()
    }

    /// The member id the coordinator gave this consumer (`None` before joining or when not
    /// subscribed).
    pub fn member_id(&self) -> Option<String> {
        let sub = self.subscription.as_ref()?;
        let st = lock(&sub.member.shared.state);
        (!st.member_id.is_empty()).then(|| st.member_id.clone())
    }

    /// The member epoch last received (`None` when not subscribed; 0 while joining).
    pub fn member_epoch(&self) -> Option<i32> {
        let sub = self.subscription.as_ref()?;
        let epoch = lock(&sub.member.shared.state).member_epoch;
        Some(epoch)
    }

    /// The group and this member as they are now, for a transactional producer's
    /// `send_offsets_to_transaction` (`None` without `ConsumerConfig::group_id`). Take it
    /// right after the `poll` whose records the transaction processed: a rebalance since then
    /// changes the epoch, and the offsets of partitions this member no longer owns are refused
    /// (the transaction must then abort).
    pub fn group_metadata(&self) -> Option<ConsumerGroupMetadata> {
        let group_id = self.config.group_id.clone()?;
        Some(match &self.subscription {
            Some(sub) => {
                let st = lock(&sub.member.shared.state);
                ConsumerGroupMetadata {
                    group_id,
                    member_id: st.member_id.clone(),
                    member_epoch: st.member_epoch,
                }
            }
            None => ConsumerGroupMetadata::standalone(group_id),
        })
    }

    /// The positions of owned partitions that have one, limited to `only` when given.
    pub(super) fn positions_to_commit(
        &self,
        only: Option<&[TopicPartition]>,
    ) -> BTreeMap<TopicPartition, Offset> {
        self.positions
            .iter()
            .filter(|(tp, _)| only.is_none_or(|only| only.contains(tp)))
            .filter_map(|(tp, pos)| pos.map(|p| (tp.clone(), p)))
            .collect()
    }

    fn member(&self) -> Result<&GroupMember> {
        self.subscription
            .as_ref()
            .map(|s| &s.member)
            .ok_or_else(|| {
                ClientError::InvalidArgument("the consumer is not subscribed to a group".into())
            })
    }

    /// Commits the current position of every owned partition (the offset after the last
    /// record `poll` returned) and waits for the outcome. Commits are sent one at a time, in
    /// the order they were asked for. See [`Consumer::commit_offsets`] for the errors.
    pub async fn commit(&mut self) -> Result<()> {
        let offsets = self.positions_to_commit(None);
        self.member()?.commit(offsets).await
    }

    /// Commits these offsets (each the next record to consume) and waits for the outcome.
    /// STALE_MEMBER_EPOCH (the partitions are no longer this member's), UNKNOWN_MEMBER_ID and
    /// FENCED_MEMBER_EPOCH are [`ClientError::Group`] errors and are never retried;
    /// [`ClientError::CommitOutcomeUnknown`] means the commit may or may not have been
    /// applied.
    pub async fn commit_offsets(
        &mut self,
        offsets: BTreeMap<TopicPartition, Offset>,
    ) -> Result<()> {
        self.member()?.commit(offsets).await
    }

    /// Queues a commit of the current positions and returns without waiting for it (only for
    /// room in the bounded commit queue). Await the returned handle for the outcome, or drop
    /// it: a failure is then returned by a later `poll` (the first such failure only; others
    /// are logged).
    pub async fn commit_async(&mut self) -> Result<CommitHandle> {
        let offsets = self.positions_to_commit(None);
        self.member()?.commit_async(offsets).await
    }

    /// The group's committed offsets for `partitions` (`None` where nothing is committed).
    /// Works with `assign` too when a group id is configured.
    pub async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<Offset>>> {
        if let Some(sub) = &self.subscription {
            return group::fetch_committed(&sub.member.coordinator, partitions).await;
        }
        let Some(group_id) = self.config.group_id.clone() else {
            return Err(ClientError::InvalidArgument(
                "committed offsets need ConsumerConfig::group_id".into(),
            ));
        };
        let coordinator = Coordinator::new(self.cluster.clone(), group_id);
        group::fetch_committed(&coordinator, partitions).await
    }

    /// Leaves the group: commits the positions (with auto-commit on), reports the partitions
    /// revoked, and sends the leave heartbeat (a static member's leave keeps its partitions
    /// reserved until its session expires). The consumer can subscribe again afterwards.
    /// Returns the first error met; the group is left in any case.
    pub async fn unsubscribe(&mut self) -> Result<()> {
        let Some(sub) = self.subscription.take() else {
            return Ok(());
        };
        let phase = lock(&sub.member.shared.state).phase.clone();
        let owned: Vec<TopicPartition> = self.positions.keys().cloned().collect();
        let mut first_error = None;
        if phase == Phase::Member {
            if self.config.enable_auto_commit {
                let offsets = self.positions_to_commit(None);
                if let Err(e) = sub.member.commit(offsets).await {
                    first_error = Some(e);
                }
            }
            if !owned.is_empty() {
                self.listener.on_partitions_revoked(&owned);
            }
        } else if !owned.is_empty() {
            self.listener.on_partitions_lost(&owned);
        }
        self.positions.clear();
        if let Err(e) = sub.member.leave().await {
            first_error.get_or_insert(e);
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Closes the consumer's group membership ([`Consumer::unsubscribe`]) and forgets every
    /// assigned partition. Dropping a subscribed consumer without `close` stops its
    /// heartbeats without leaving: its partitions move only once its session times out.
    pub async fn close(&mut self) -> Result<()> {
        let result = self.unsubscribe().await;
        self.positions.clear();
        result
    }

    /// Acts on what the heartbeat task learned: fencing (lose everything), a new target
    /// (revoke, then add), committed offsets of added partitions, the auto-commit timer.
    /// Called by `poll`; does nothing when not subscribed.
    pub(super) async fn group_step(&mut self) -> Result<()> {
        loop {
            let Some(sub) = &self.subscription else {
                return Ok(());
            };
            let shared = sub.member.shared.clone();
            if let Some(e) = lock(&shared.async_commit_error).take() {
                return Err(e);
            }
            let owned: BTreeSet<TopicPartition> = self.positions.keys().cloned().collect();
            let action = {
                let mut st = lock(&shared.state);
                st.last_poll = Instant::now();
                match &st.phase {
                    Phase::Failed(e) => return Err(e.clone()),
                    Phase::Fenced | Phase::PollExpired => Action::Lost,
                    Phase::Member => match &st.target {
                        Some(target) if *target != owned => Action::Reconcile(target.clone()),
                        _ => Action::Idle,
                    },
                    Phase::Joining | Phase::Stopped => Action::Idle,
                }
            };
            match action {
                Action::Idle => break,
                Action::Lost => {
                    let lost: Vec<TopicPartition> = owned.into_iter().collect();
                    self.positions.clear();
                    if let Some(sub) = &mut self.subscription {
                        sub.awaiting_committed.clear();
                        sub.last_auto_commit.clear();
                    }
                    if !lost.is_empty() {
                        tracing::info!(partitions = lost.len(), "partitions lost; rejoining");
                        self.listener.on_partitions_lost(&lost);
                    }
                    {
                        let mut st = lock(&shared.state);
                        st.owned.clear();
                        st.target = None;
                        st.member_epoch = 0;
                        st.phase = Phase::Joining;
                        st.last_poll = Instant::now();
                    }
                    shared.wake_heartbeat.notify_one();
                    break;
                }
                Action::Reconcile(target) => {
                    let r = reconcile(&owned, &target);
                    if !r.revoke.is_empty() {
                        if self.config.enable_auto_commit {
                            // Committed before the partitions are reported free, so their next
                            // owner starts where this one stopped.
                            let offsets = self.positions_to_commit(Some(&r.revoke));
                            if let Err(e) = sub.member.commit(offsets).await {
                                tracing::warn!(error = %e, "commit before revocation failed");
                                self.deferred_error.get_or_insert(e);
                            }
                        }
                        self.listener.on_partitions_revoked(&r.revoke);
                        for tp in &r.revoke {
                            self.positions.remove(tp);
                        }
                    }
                    if !r.add.is_empty() {
                        self.listener.on_partitions_assigned(&r.add);
                        for tp in &r.add {
                            self.positions.insert(tp.clone(), None);
                        }
                    }
                    if let Some(sub) = &mut self.subscription {
                        for tp in &r.revoke {
                            sub.awaiting_committed.remove(tp);
                            sub.last_auto_commit.remove(tp);
                        }
                        sub.awaiting_committed.extend(r.add.iter().cloned());
                    }
                    lock(&shared.state).owned = self.positions.keys().cloned().collect();
                    // Report the change now: the coordinator hands revoked partitions to
                    // their next owner only once this member said it let them go.
                    shared.wake_heartbeat.notify_one();
                }
            }
        }
        self.fetch_committed_positions().await?;
        self.maybe_auto_commit();
        Ok(())
    }

    /// Positions newly added partitions at their committed offsets; those with none stay
    /// unresolved, for `initial_position`.
    async fn fetch_committed_positions(&mut self) -> Result<()> {
        let Some(sub) = &mut self.subscription else {
            return Ok(());
        };
        if sub.awaiting_committed.is_empty() {
            return Ok(());
        }
        let wanted: Vec<TopicPartition> = sub.awaiting_committed.iter().cloned().collect();
        let committed = group::fetch_committed(&sub.member.coordinator, &wanted).await?;
        for tp in wanted {
            sub.awaiting_committed.remove(&tp);
            if let (Some(Some(offset)), Some(pos)) =
                (committed.get(&tp), self.positions.get_mut(&tp))
            {
                *pos = Some(*offset);
            }
        }
        Ok(())
    }

    /// Partitions still waiting for their committed offset (not to be resolved by
    /// `initial_position` yet).
    pub(super) fn awaiting_committed(&self, tp: &TopicPartition) -> bool {
        self.subscription
            .as_ref()
            .is_some_and(|s| s.awaiting_committed.contains(tp))
    }

    /// Queues an auto-commit when its interval has passed and positions moved.
    fn maybe_auto_commit(&mut self) {
        if !self.config.enable_auto_commit {
            return;
        }
        let offsets = self.positions_to_commit(None);
        let Some(sub) = &mut self.subscription else {
            return;
        };
        let now = Instant::now();
        if now < sub.next_auto_commit {
            return;
        }
        sub.next_auto_commit = now + Duration::from_millis(self.config.auto_commit_interval_ms);
        if offsets.is_empty() || offsets == sub.last_auto_commit {
            return;
        }
        if lock(&sub.member.shared.state).phase != Phase::Member {
            return; // would be refused; the next interval tries again
        }
        sub.member.auto_commit(offsets.clone());
        sub.last_auto_commit = offsets;
    }
}

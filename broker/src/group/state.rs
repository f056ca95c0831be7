//! The state of one consumer group and the rules that change it: joining, heartbeats,
//! leaving, session expiry, reconciliation of each member towards the target assignment, and
//! which offset commits are allowed. Pure and synchronous: the coordinator persists what
//! changed and answers only once the change is committed.
//!
//! Reconciliation (the shape of Kafka's KIP-848):
//! - The group epoch moves whenever membership or subscriptions (or the partition counts of
//!   subscribed topics) change; the target assignment is then recomputed by the assignor.
//! - A member first gives up (revokes) what it owns beyond its target and reports so in a
//!   heartbeat; only then does it move to the target epoch, and it receives a partition of its
//!   target only once no other member owns it or is still revoking it. So a partition never
//!   has two owners, and partitions that stay put are never revoked.
//! - Offset commits come from members that own the partitions (fencing zombies).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rafka_protocol::api::member_epoch;
use serde::{Deserialize, Serialize};

use super::assignor::{self, AssignInput, Tp};

/// Why a group operation was refused; mapped to a wire code by the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    #[error("member {0} is not in the group")]
    UnknownMember(String),
    #[error("member {member} has epoch {current}, not {sent}: rejoin")]
    FencedEpoch {
        member: String,
        current: i32,
        sent: i32,
    },
    #[error("{0}")]
    StaleEpoch(String),
    #[error("the group has {0} members: offsets can only be set from outside an empty group")]
    NonEmpty(usize),
    #[error("unknown assignor {0:?} (known: sticky, range, roundrobin)")]
    UnsupportedAssignor(String),
    #[error("the group already has {0} members")]
    Full(usize),
    #[error("invalid heartbeat: {0}")]
    Invalid(String),
}

/// A committed offset.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Committed {
    pub offset: u64,
    pub metadata: String,
    pub timestamp_ms: i64,
}

/// One member, as persisted (its session deadline is not: a new coordinator gives every
/// member a fresh session).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: BTreeSet<String>,
    pub assignor: String,
    pub session_timeout_ms: u32,
    pub epoch: i32,
    pub previous_epoch: i32,
    /// Granted and owned.
    pub assigned: BTreeSet<Tp>,
    /// Asked to give up; still owned until the member reports them gone.
    pub revoking: BTreeSet<Tp>,
    /// A static member that left for a restart (epoch -2): kept until its session ends.
    pub away: bool,
}

/// The persisted part of a group (offsets are persisted by their own records).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMeta {
    pub epoch: i32,
    pub target_epoch: i32,
    pub target: BTreeMap<String, BTreeSet<Tp>>,
    /// Partition counts the target was computed with.
    pub topics: BTreeMap<String, u32>,
    pub members: BTreeMap<String, Member>,
}

/// A group in the coordinator's memory.
#[derive(Debug, Default)]
pub struct Group {
    pub meta: GroupMeta,
    pub offsets: BTreeMap<Tp, Committed>,
    /// Session deadlines, by member id.
    pub deadlines: BTreeMap<String, Instant>,
    /// When each member still revoking partitions was asked to: one that holds on to them
    /// past the revocation timeout is evicted, so a stuck member cannot stall the group.
    pub revoking_since: BTreeMap<String, Instant>,
    /// When the group epoch last moved while stable (for the rebalance-duration metric).
    pub rebalance_started: Option<Instant>,
}

/// A heartbeat as the coordinator sees it.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    pub member_id: String,
    pub member_epoch: i32,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub subscribed: BTreeSet<String>,
    pub assignor: String,
    pub session_timeout_ms: u32,
    pub owned: BTreeSet<Tp>,
}

/// The answer to a heartbeat, and whether the persisted group changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub member_id: String,
    pub member_epoch: i32,
    pub assignment: BTreeSet<Tp>,
    /// The member has not reached its target yet: it should come back soon.
    pub pending: bool,
    pub changed: bool,
}

/// Limits the coordinator applies.
#[derive(Debug, Clone)]
pub struct Limits {
    pub members_max: usize,
}

impl Group {
    pub fn state_name(&self) -> &'static str {
        if self.meta.members.is_empty() {
            "empty"
        } else if self.is_stable() {
            "stable"
        } else {
            "reconciling"
        }
    }

    pub fn is_stable(&self) -> bool {
        self.meta.members.values().all(|m| {
            m.revoking.is_empty()
                && m.epoch == self.meta.target_epoch
                && self
                    .meta
                    .target
                    .get(&m.id)
                    .map_or(m.assigned.is_empty(), |t| *t == m.assigned)
        }) && self.meta.target_epoch == self.meta.epoch
    }

    /// Handles a heartbeat. `topics` gives the current partition count of a topic (None when
    /// it does not exist); `new_id` makes a fresh member id.
    pub fn heartbeat(
        &mut self,
        hb: Heartbeat,
        topics: &dyn Fn(&str) -> Option<u32>,
        new_id: &mut dyn FnMut() -> String,
        limits: &Limits,
        now: Instant,
    ) -> Result<Answer, GroupError> {
        if !hb.assignor.is_empty() && !assignor::ASSIGNORS.contains(&hb.assignor.as_str()) {
            return Err(GroupError::UnsupportedAssignor(hb.assignor));
        }
        let mut changed = false;
        let id = match hb.member_epoch {
            member_epoch::LEAVE => {
                let id = self.resolve_leaving(&hb)?;
                self.remove_member(&id, now);
                return Ok(Answer {
                    member_id: id,
                    member_epoch: member_epoch::LEAVE,
                    assignment: BTreeSet::new(),
                    pending: false,
                    changed: true,
                });
            }
            member_epoch::STATIC_LEAVE => {
                let id = self.resolve_leaving(&hb)?;
                let m = self.meta.members.get_mut(&id).expect("resolved");
                if m.instance_id.is_none() {
                    // A dynamic member cannot keep partitions across a restart.
                    self.remove_member(&id, now);
                } else {
                    m.away = true;
                }
                return Ok(Answer {
                    member_id: id,
                    member_epoch: member_epoch::STATIC_LEAVE,
                    assignment: BTreeSet::new(),
                    pending: false,
                    changed: true,
                });
            }
            member_epoch::JOIN => self.join(&hb, new_id, limits, now, &mut changed)?,
            e if e < 0 => {
                return Err(GroupError::Invalid(format!("member epoch {e}")));
            }
            e => {
                let m = self
                    .meta
                    .members
                    .get_mut(&hb.member_id)
                    .ok_or_else(|| GroupError::UnknownMember(hb.member_id.clone()))?;
                if e != m.epoch && e != m.previous_epoch {
                    return Err(GroupError::FencedEpoch {
                        member: hb.member_id.clone(),
                        current: m.epoch,
                        sent: e,
                    });
                }
                hb.member_id.clone()
            }
        };
        self.deadlines.insert(
            id.clone(),
            now + Duration::from_millis(u64::from(hb.session_timeout_ms)),
        );
        // Update what the member says about itself.
        {
            let m = self.meta.members.get_mut(&id).expect("member present");
            if m.away {
                m.away = false;
                changed = true;
            }
            if m.subscribed != hb.subscribed {
                m.subscribed = hb.subscribed.clone();
                self.meta.epoch += 1;
                changed = true;
            }
            let assignor = if hb.assignor.is_empty() {
                "sticky".to_string()
            } else {
                hb.assignor.clone()
            };
            if m.assignor != assignor {
                m.assignor = assignor;
                self.meta.epoch += 1;
                changed = true;
            }
            if m.session_timeout_ms != hb.session_timeout_ms || m.client_id != hb.client_id {
                m.session_timeout_ms = hb.session_timeout_ms;
                m.client_id = hb.client_id.clone();
                changed = true;
            }
            // Revocations the member has finished.
            let before = m.revoking.len();
            m.revoking.retain(|tp| hb.owned.contains(tp));
            changed |= m.revoking.len() != before;
            if m.revoking.is_empty() {
                self.revoking_since.remove(&id);
            }
        }
        changed |= self.refresh_target(topics, now);
        changed |= self.reconcile(&id);
        let m = &self.meta.members[&id];
        let pending = !m.revoking.is_empty()
            || m.epoch != self.meta.target_epoch
            || self.meta.target.get(&id).is_some_and(|t| *t != m.assigned);
        Ok(Answer {
            member_id: id.clone(),
            member_epoch: m.epoch,
            assignment: m.assigned.clone(),
            pending,
            changed,
        })
    }

    fn resolve_leaving(&self, hb: &Heartbeat) -> Result<String, GroupError> {
        if self.meta.members.contains_key(&hb.member_id) {
            return Ok(hb.member_id.clone());
        }
        Err(GroupError::UnknownMember(hb.member_id.clone()))
    }

    fn join(
        &mut self,
        hb: &Heartbeat,
        new_id: &mut dyn FnMut() -> String,
        limits: &Limits,
        now: Instant,
        changed: &mut bool,
    ) -> Result<String, GroupError> {
        *changed = true;
        // A static member coming back (a restart): it takes over its predecessor's entry,
        // partitions and epoch, under a new id that fences the old process.
        if let Some(instance) = &hb.instance_id {
            let existing = self
                .meta
                .members
                .values()
                .find(|m| m.instance_id.as_deref() == Some(instance.as_str()))
                .map(|m| m.id.clone());
            if let Some(old) = existing {
                let mut m = self.meta.members.remove(&old).expect("found");
                let id = if hb.member_id.is_empty() || hb.member_id == old {
                    new_id()
                } else {
                    hb.member_id.clone()
                };
                m.id = id.clone();
                m.client_host = hb.client_host.clone();
                m.away = false;
                self.meta.members.insert(id.clone(), m);
                if let Some(t) = self.meta.target.remove(&old) {
                    self.meta.target.insert(id.clone(), t);
                }
                self.deadlines.remove(&old);
                if let Some(since) = self.revoking_since.remove(&old) {
                    self.revoking_since.insert(id.clone(), since);
                }
                return Ok(id);
            }
        }
        // A dynamic member rejoining after it was fenced: it owns nothing any more.
        if let Some(m) = self.meta.members.get_mut(&hb.member_id) {
            m.assigned.clear();
            m.revoking.clear();
            self.revoking_since.remove(&hb.member_id);
            m.previous_epoch = m.epoch;
            m.epoch = 0;
            return Ok(hb.member_id.clone());
        }
        if self.meta.members.len() >= limits.members_max {
            return Err(GroupError::Full(self.meta.members.len()));
        }
        let id = if hb.member_id.is_empty() {
            new_id()
        } else {
            hb.member_id.clone()
        };
        self.meta.members.insert(
            id.clone(),
            Member {
                id: id.clone(),
                instance_id: hb.instance_id.clone(),
                client_id: hb.client_id.clone(),
                client_host: hb.client_host.clone(),
                // Filled in by the caller, which bumps the epoch on the change.
                subscribed: BTreeSet::new(),
                assignor: String::new(),
                session_timeout_ms: hb.session_timeout_ms,
                epoch: 0,
                previous_epoch: 0,
                assigned: BTreeSet::new(),
                revoking: BTreeSet::new(),
                away: false,
            },
        );
        self.meta.epoch += 1;
        self.rebalance_started.get_or_insert(now);
        Ok(id)
    }

    /// Removes a member (left, or its session ended); its partitions become free.
    pub fn remove_member(&mut self, id: &str, now: Instant) {
        if self.meta.members.remove(id).is_some() {
            self.meta.target.remove(id);
            self.deadlines.remove(id);
            self.revoking_since.remove(id);
            self.meta.epoch += 1;
            self.rebalance_started.get_or_insert(now);
        }
    }

    /// Members whose session ended at `now`, or that have held partitions they were asked to
    /// revoke for longer than `revocation_timeout`.
    pub fn expired(&self, now: Instant, revocation_timeout: Duration) -> Vec<String> {
        let mut out: BTreeSet<String> = self
            .deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(m, _)| m.clone())
            .collect();
        out.extend(
            self.revoking_since
                .iter()
                .filter(|(_, since)| now.saturating_duration_since(**since) >= revocation_timeout)
                .map(|(m, _)| m.clone()),
        );
        out.into_iter().collect()
    }

    /// Gives every member a fresh session and revocation deadline (after a coordinator
    /// failover).
    pub fn start_sessions(&mut self, now: Instant) {
        self.deadlines = self
            .meta
            .members
            .values()
            .map(|m| {
                (
                    m.id.clone(),
                    now + Duration::from_millis(u64::from(m.session_timeout_ms)),
                )
            })
            .collect();
        self.revoking_since = self
            .meta
            .members
            .values()
            .filter(|m| !m.revoking.is_empty())
            .map(|m| (m.id.clone(), now))
            .collect();
    }

    /// The assignor the group uses: the one most members name (ties by name).
    fn group_assignor(&self) -> String {
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.meta.members.values() {
            *votes.entry(m.assignor.as_str()).or_default() += 1;
        }
        votes
            .into_iter()
            .max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(a.0)))
            .map_or_else(|| "sticky".to_string(), |(n, _)| n.to_string())
    }

    pub fn assignor_name(&self) -> String {
        self.group_assignor()
    }

    /// Recomputes the target if the group epoch moved or a subscribed topic changed size.
    /// Returns whether anything changed.
    pub fn refresh_target(&mut self, topics: &dyn Fn(&str) -> Option<u32>, now: Instant) -> bool {
        let subscribed: BTreeSet<&String> = self
            .meta
            .members
            .values()
            .flat_map(|m| m.subscribed.iter())
            .collect();
        let sizes: BTreeMap<String, u32> = subscribed
            .into_iter()
            .filter_map(|t| topics(t).map(|c| (t.clone(), c)))
            .collect();
        if sizes != self.meta.topics {
            self.meta.topics = sizes;
            self.meta.epoch += 1;
            self.rebalance_started.get_or_insert(now);
        }
        if self.meta.target_epoch == self.meta.epoch {
            return false;
        }
        let members: BTreeMap<String, BTreeSet<String>> = self
            .meta
            .members
            .values()
            .map(|m| (m.id.clone(), m.subscribed.clone()))
            .collect();
        let target = assignor::assign(
            &self.group_assignor(),
            &AssignInput {
                members: &members,
                topics: &self.meta.topics,
                previous: &self.meta.target,
            },
        );
        self.meta.target = target;
        self.meta.target_epoch = self.meta.epoch;
        true
    }

    /// Moves member `id` one step towards its target. Returns whether anything changed.
    pub fn reconcile(&mut self, id: &str) -> bool {
        let target = self.meta.target.get(id).cloned().unwrap_or_default();
        let target_epoch = self.meta.target_epoch;
        // Partitions some other member still owns or is revoking.
        let held_elsewhere: BTreeSet<Tp> = self
            .meta
            .members
            .values()
            .filter(|m| m.id != id)
            .flat_map(|m| m.assigned.iter().chain(m.revoking.iter()).cloned())
            .collect();
        let m = self.meta.members.get_mut(id).expect("member present");
        if !m.revoking.is_empty() {
            return false;
        }
        let to_revoke: BTreeSet<Tp> = m.assigned.difference(&target).cloned().collect();
        if !to_revoke.is_empty() {
            for tp in &to_revoke {
                m.assigned.remove(tp);
            }
            m.revoking = to_revoke;
            self.revoking_since.insert(id.to_string(), Instant::now());
            return true;
        }
        let mut changed = false;
        if m.epoch != target_epoch {
            m.previous_epoch = m.epoch;
            m.epoch = target_epoch;
            changed = true;
        }
        for tp in target.difference(&m.assigned.clone()) {
            if !held_elsewhere.contains(tp) {
                m.assigned.insert(tp.clone());
                changed = true;
            }
        }
        changed
    }

    /// Whether an offset commit for `partitions` from `member_id` at `epoch` is allowed.
    pub fn check_commit(
        &self,
        member_id: &str,
        epoch: i32,
        partitions: &[Tp],
    ) -> Result<(), GroupError> {
        if member_id.is_empty() && epoch == member_epoch::NONE {
            if self.meta.members.is_empty() {
                return Ok(());
            }
            return Err(GroupError::NonEmpty(self.meta.members.len()));
        }
        let m = self
            .meta
            .members
            .get(member_id)
            .ok_or_else(|| GroupError::UnknownMember(member_id.to_string()))?;
        if epoch != m.epoch && epoch != m.previous_epoch {
            return Err(GroupError::StaleEpoch(format!(
                "commit at member epoch {epoch}, but member {member_id} is at epoch {}",
                m.epoch
            )));
        }
        if let Some(tp) = partitions
            .iter()
            .find(|tp| !m.assigned.contains(*tp) && !m.revoking.contains(*tp))
        {
            return Err(GroupError::StaleEpoch(format!(
                "member {member_id} does not own {}-{}",
                tp.0, tp.1
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hb(id: &str, epoch: i32, owned: &[u32]) -> Heartbeat {
        Heartbeat {
            member_id: id.into(),
            member_epoch: epoch,
            instance_id: None,
            client_id: "c".into(),
            client_host: "h".into(),
            subscribed: ["t".to_string()].into(),
            assignor: String::new(),
            session_timeout_ms: 10_000,
            owned: owned.iter().map(|p| ("t".to_string(), *p)).collect(),
        }
    }

    struct World {
        group: Group,
        next: u32,
        now: Instant,
    }

    impl World {
        fn new() -> World {
            World {
                group: Group::default(),
                next: 0,
                now: Instant::now(),
            }
        }
        fn beat(&mut self, h: Heartbeat) -> Result<Answer, GroupError> {
            let mut next = self.next;
            let r = self.group.heartbeat(
                h,
                &|t| (t == "t").then_some(6),
                &mut || {
                    next += 1;
                    format!("m{next}")
                },
                &Limits { members_max: 100 },
                self.now,
            );
            self.next = next;
            r
        }
        /// Heartbeats every member, each reporting what it was last told, until nothing moves.
        fn settle(&mut self, owned: &mut BTreeMap<String, (i32, BTreeSet<Tp>)>) {
            for _ in 0..20 {
                let mut any = false;
                for (id, (epoch, set)) in owned.clone() {
                    let parts: Vec<u32> = set.iter().map(|tp| tp.1).collect();
                    let a = self.beat(hb(&id, epoch, &parts)).unwrap();
                    any |= a.changed;
                    owned.insert(id, (a.member_epoch, a.assignment));
                }
                if !any {
                    return;
                }
            }
            panic!("did not settle");
        }
    }

    fn disjoint_and_complete(owned: &BTreeMap<String, (i32, BTreeSet<Tp>)>) {
        let mut all = BTreeSet::new();
        for (_, set) in owned.values() {
            for tp in set {
                assert!(all.insert(tp.clone()), "{tp:?} owned twice");
            }
        }
        assert_eq!(all.len(), 6);
    }

    #[test]
    fn join_rebalance_and_leave_move_only_what_they_must() {
        let mut w = World::new();
        let mut owned = BTreeMap::new();
        for _ in 0..3 {
            let a = w.beat(hb("", 0, &[])).unwrap();
            owned.insert(a.member_id, (a.member_epoch, a.assignment));
        }
        w.settle(&mut owned);
        disjoint_and_complete(&owned);
        assert!(w.group.is_stable());
        let before = owned.clone();
        let a = w.beat(hb("", 0, &[])).unwrap();
        let newcomer = a.member_id.clone();
        owned.insert(a.member_id, (a.member_epoch, a.assignment));
        w.settle(&mut owned);
        disjoint_and_complete(&owned);
        for (id, (_, set)) in &before {
            assert!(set.is_superset(&owned[id].1), "{id} gained partitions");
        }
        assert!(!owned[&newcomer].1.is_empty());
        // A member leaves: the others keep theirs.
        let leaver = before.keys().next().unwrap().clone();
        let kept = owned.clone();
        let a = w.beat(hb(&leaver, member_epoch::LEAVE, &[])).unwrap();
        assert_eq!(a.member_epoch, member_epoch::LEAVE);
        owned.remove(&leaver);
        w.settle(&mut owned);
        disjoint_and_complete(&owned);
        for (id, (_, set)) in &owned {
            assert!(set.is_superset(&kept[id].1), "{id} lost partitions");
        }
    }

    #[test]
    fn a_partition_is_granted_only_after_its_owner_released_it() {
        let mut w = World::new();
        let a = w.beat(hb("", 0, &[])).unwrap();
        let first = a.member_id.clone();
        assert_eq!(a.assignment.len(), 6);
        let b = w.beat(hb("", 0, &[])).unwrap();
        // The first member has not released anything yet.
        assert!(b.assignment.is_empty());
        let a2 = w
            .beat(hb(&first, a.member_epoch, &[0, 1, 2, 3, 4, 5]))
            .unwrap();
        assert_eq!(a2.assignment.len(), 3, "asked to revoke three");
        let b2 = w.beat(hb(&b.member_id, b.member_epoch, &[])).unwrap();
        assert!(b2.assignment.is_empty(), "still held by the first member");
        let kept: Vec<u32> = a2.assignment.iter().map(|tp| tp.1).collect();
        w.beat(hb(&first, a2.member_epoch, &kept)).unwrap();
        let b3 = w.beat(hb(&b.member_id, b2.member_epoch, &[])).unwrap();
        assert_eq!(b3.assignment.len(), 3);
        assert!(b3.assignment.is_disjoint(&a2.assignment));
    }

    #[test]
    fn commits_need_ownership_and_a_live_epoch() {
        let mut w = World::new();
        let a = w.beat(hb("", 0, &[])).unwrap();
        let tp = ("t".to_string(), 0);
        assert!(w
            .group
            .check_commit(&a.member_id, a.member_epoch, std::slice::from_ref(&tp))
            .is_ok());
        assert!(matches!(
            w.group
                .check_commit(&a.member_id, a.member_epoch + 5, std::slice::from_ref(&tp)),
            Err(GroupError::StaleEpoch(_))
        ));
        assert!(matches!(
            w.group.check_commit("ghost", 1, std::slice::from_ref(&tp)),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(matches!(
            w.group
                .check_commit("", member_epoch::NONE, std::slice::from_ref(&tp)),
            Err(GroupError::NonEmpty(1))
        ));
        // After the member is evicted, its commits are refused.
        w.group.remove_member(&a.member_id, w.now);
        assert!(matches!(
            w.group
                .check_commit(&a.member_id, a.member_epoch, std::slice::from_ref(&tp)),
            Err(GroupError::UnknownMember(_))
        ));
        assert!(w.group.check_commit("", member_epoch::NONE, &[tp]).is_ok());
    }

    #[test]
    fn a_static_member_restarting_keeps_its_partitions_without_a_rebalance() {
        let mut w = World::new();
        let mut s = hb("", 0, &[]);
        s.instance_id = Some("i-1".into());
        let a = w.beat(s.clone()).unwrap();
        let b = w.beat(hb("", 0, &[])).unwrap();
        let mut owned = BTreeMap::new();
        owned.insert(a.member_id.clone(), (a.member_epoch, a.assignment));
        owned.insert(b.member_id.clone(), (b.member_epoch, b.assignment));
        w.settle(&mut owned);
        let epoch = w.group.meta.epoch;
        let had = owned[&a.member_id].1.clone();
        // The process dies and comes back with the same instance id.
        let back = w.beat(s).unwrap();
        assert_ne!(back.member_id, a.member_id);
        assert_eq!(back.assignment, had);
        assert_eq!(w.group.meta.epoch, epoch, "no rebalance");
        // The old process is fenced.
        assert!(matches!(
            w.beat(hb(&a.member_id, owned[&a.member_id].0, &[])),
            Err(GroupError::UnknownMember(_))
        ));
    }

    #[test]
    fn a_member_that_never_revokes_is_evicted_after_the_revocation_timeout() {
        let mut w = World::new();
        let a = w.beat(hb("", 0, &[])).unwrap();
        let b = w.beat(hb("", 0, &[])).unwrap();
        let r = w
            .beat(hb(&a.member_id, a.member_epoch, &[0, 1, 2, 3, 4, 5]))
            .unwrap();
        assert_eq!(r.assignment.len(), 3);
        // Shorter than the 10 s session, so only the revocation deadline can fire.
        let timeout = Duration::from_secs(5);
        assert!(w.group.expired(w.now, timeout).is_empty());
        // `a` keeps reporting all six as owned: it never finishes revoking.
        let later = Instant::now() + timeout;
        assert_eq!(w.group.expired(later, timeout), vec![a.member_id.clone()]);
        let _ = b;
    }

    #[test]
    fn stale_epochs_are_fenced() {
        let mut w = World::new();
        let a = w.beat(hb("", 0, &[])).unwrap();
        assert!(matches!(
            w.beat(hb(&a.member_id, a.member_epoch + 3, &[])),
            Err(GroupError::FencedEpoch { .. })
        ));
    }
}

//! The controller group's state machine: cluster metadata.
//!
//! Commands are JSON records, one per batch, in the controller's own segmented log (the same
//! storage as a partition). Applying is deterministic: validation that depends on the applied
//! state (a topic exists, enough brokers) and replica assignment happen here, so every replica
//! of the controller reaches the same state; validation that does not (names, config syntax)
//! happens before proposing.
//!
//! The materialised state is small and kept in memory; a snapshot (every
//! [`CONTROLLER_SNAPSHOT_EVERY`] entries) writes it to `snapshot.json` and lets the log be
//! purged. Brokers watch it through a `watch` channel and reconcile their replicas.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb};
use rafka_protocol::batch::{BatchBuilder, BatchOptions};
use rafka_protocol::{ErrorCode, RecordBatch, Timestamp};
use rafka_raft::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership};
use rafka_raft::{Applied, NodeId, TypeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{sm_err, snapshot_id};
use crate::fs::Fs;

/// Entries between controller snapshots.
pub const CONTROLLER_SNAPSHOT_EVERY: u64 = 1000;

/// A broker as the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerRecord {
    /// Where clients reach it (`--advertise`).
    pub client_addr: String,
}

/// A topic: its id (never reused), replica assignment and config overrides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub id: u32,
    pub replication_factor: u32,
    /// Replicas of each partition; the first is the preferred leader.
    pub partitions: Vec<Vec<NodeId>>,
    pub configs: BTreeMap<String, String>,
}

/// Producer ids handed to a broker at once (it asks again when they run out).
pub const PRODUCER_ID_BLOCK_LEN: i64 = 1000;

/// A range of producer ids allocated to one broker: `first..first + len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProducerIdBlock {
    pub first: i64,
    pub len: i64,
    /// The broker's id for the request that got this block, so it recognises its answer.
    pub request: u64,
}

/// Cluster metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub brokers: BTreeMap<NodeId, BrokerRecord>,
    pub topics: BTreeMap<String, TopicRecord>,
    pub next_topic_id: u32,
    /// The controller's voters: the brokers replicas are assigned to.
    pub voters: Vec<NodeId>,
    /// The first producer id never handed out: ids are never reused.
    #[serde(default)]
    pub next_producer_id: i64,
    /// The latest block of producer ids each broker was given.
    #[serde(default)]
    pub producer_id_blocks: BTreeMap<NodeId, ProducerIdBlock>,
}

/// A controller command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    RegisterBroker {
        id: NodeId,
        client_addr: String,
    },
    CreateTopic {
        name: String,
        partitions: u32,
        /// 0: min(3, voters).
        replication_factor: u32,
        configs: BTreeMap<String, String>,
    },
    DeleteTopic {
        name: String,
    },
    /// Replaces a topic's config overrides.
    SetTopicConfigs {
        name: String,
        configs: BTreeMap<String, String>,
    },
    /// Hands `broker` the next [`PRODUCER_ID_BLOCK_LEN`] producer ids.
    AllocateProducerIds {
        broker: NodeId,
        request: u64,
    },
}

impl Command {
    /// The batch that carries the command in the controller log.
    pub fn to_batch(&self) -> Bytes {
        let json = serde_json::to_vec(self).expect("commands serialise");
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.append(Some(Timestamp::now()), None, Some(&json), &[]);
        b.build()
    }

    fn from_batch(raw: Bytes) -> Result<Command, String> {
        let batch = RecordBatch::parse(raw).map_err(|e| e.to_string())?;
        let record = batch
            .records()
            .next()
            .ok_or("empty command batch")?
            .map_err(|e| e.to_string())?;
        serde_json::from_slice(&record.value.unwrap_or_default()).map_err(|e| e.to_string())
    }
}

type Outcome = Result<(), (i32, String)>;

fn refuse(code: ErrorCode, msg: String) -> Outcome {
    Err((code.code(), msg))
}

impl ClusterState {
    /// Applies one command: the only place cluster metadata changes.
    pub fn apply(&mut self, cmd: Command) -> Outcome {
        match cmd {
            Command::RegisterBroker { id, client_addr } => {
                self.brokers.insert(id, BrokerRecord { client_addr });
                Ok(())
            }
            Command::CreateTopic {
                name,
                partitions,
                replication_factor,
                configs,
            } => {
                if self.topics.contains_key(&name) {
                    return refuse(
                        ErrorCode::TopicAlreadyExists,
                        format!("topic {name} already exists"),
                    );
                }
                let n = self.voters.len() as u32;
                let rf = if replication_factor == 0 {
                    n.clamp(1, 3)
                } else {
                    replication_factor
                };
                if rf > n || rf == 0 {
                    return refuse(
                        ErrorCode::InvalidReplicationFactor,
                        format!("invalid replication factor {rf}: the cluster has {n} broker(s)"),
                    );
                }
                let id = self.next_topic_id.max(1);
                self.next_topic_id = id + 1;
                let assignment = assign(&self.voters, id, partitions, rf);
                self.topics.insert(
                    name,
                    TopicRecord {
                        id,
                        replication_factor: rf,
                        partitions: assignment,
                        configs,
                    },
                );
                Ok(())
            }
            Command::DeleteTopic { name } => match self.topics.remove(&name) {
                Some(_) => Ok(()),
                None => refuse(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("unknown topic or partition: {name}"),
                ),
            },
            Command::AllocateProducerIds { broker, request } => {
                let first = self.next_producer_id.max(0);
                let Some(next) = first.checked_add(PRODUCER_ID_BLOCK_LEN) else {
                    return refuse(
                        ErrorCode::UnknownServerError,
                        "producer ids are exhausted".into(),
                    );
                };
                self.next_producer_id = next;
                self.producer_id_blocks.insert(
                    broker,
                    ProducerIdBlock {
                        first,
                        len: PRODUCER_ID_BLOCK_LEN,
                        request,
                    },
                );
                Ok(())
            }
            Command::SetTopicConfigs { name, configs } => match self.topics.get_mut(&name) {
                Some(t) => {
                    t.configs = configs;
                    Ok(())
                }
                None => refuse(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("unknown topic or partition: {name}"),
                ),
            },
        }
    }
}

/// Replica assignment: partition `p` of topic `id` starts at voter `(id + p) mod n` and takes
/// the next `rf` voters, so replicas and preferred leaders rotate evenly over the brokers and
/// consecutive topics do not pile their first partition on the same broker.
pub fn assign(voters: &[NodeId], topic_id: u32, partitions: u32, rf: u32) -> Vec<Vec<NodeId>> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    let n = sorted.len();
    (0..partitions)
        .map(|p| {
            let start = (topic_id as usize + p as usize) % n;
            (0..rf as usize).map(|i| sorted[(start + i) % n]).collect()
        })
        .collect()
}

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotFile {
    meta: SnapshotMeta,
    state: ClusterState,
}

/// The controller state machine.
#[derive(Clone)]
pub struct ControllerSm {
    state: ClusterState,
    applied: Option<LogId>,
    membership: StoredMembership,
    published: watch::Sender<Arc<ClusterState>>,
    snapshot_path: PathBuf,
    fs: Fs,
}

impl ControllerSm {
    /// Loads the last snapshot in `dir`, if any; the log replays the rest.
    pub fn open(
        dir: PathBuf,
        fs: Fs,
        published: watch::Sender<Arc<ClusterState>>,
    ) -> crate::error::Result<ControllerSm> {
        let snapshot_path = dir.join("snapshot.json");
        let (state, applied, membership) = match crate::error::read_json_file::<SnapshotFile>(
            &snapshot_path,
            "controller snapshot",
        )? {
            Some(f) => (f.state, f.meta.last_log_id, f.meta.last_membership),
            None => (ClusterState::default(), None, StoredMembership::default()),
        };
        published.send_replace(Arc::new(state.clone()));
        Ok(ControllerSm {
            state,
            applied,
            membership,
            published,
            snapshot_path,
            fs,
        })
    }

    fn snapshot_meta(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
            snapshot_id: snapshot_id(self.applied),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for ControllerSm {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let file = SnapshotFile {
            meta: self.snapshot_meta(),
            state: self.state.clone(),
        };
        let raw = serde_json::to_vec(&file).expect("snapshot serialises");
        self.fs
            .write_atomically(&self.snapshot_path, &raw)
            .map_err(|e| sm_err(ErrorVerb::Write, e.to_string()))?;
        Ok(Snapshot {
            meta: file.meta,
            snapshot: Box::new(Cursor::new(raw)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for ControllerSm {
    type SnapshotBuilder = ControllerSm;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        for e in entries {
            let outcome = match e.payload {
                EntryPayload::Blank => None,
                EntryPayload::Membership(m) => {
                    self.state.voters = m.voter_ids().collect();
                    self.membership = StoredMembership::new(Some(e.log_id), m);
                    None
                }
                EntryPayload::Normal(batch) => Some(match Command::from_batch(batch.0) {
                    Ok(cmd) => self.state.apply(cmd),
                    // A command this version cannot read is refused, identically everywhere.
                    Err(msg) => refuse(ErrorCode::InvalidRequest, format!("bad command: {msg}")),
                }),
            };
            self.applied = Some(e.log_id);
            out.push(Applied {
                base_offset: 0,
                last_offset: 0,
                outcome,
            });
        }
        self.published.send_replace(Arc::new(self.state.clone()));
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> ControllerSm {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let raw = snapshot.into_inner();
        let file: SnapshotFile = serde_json::from_slice(&raw)
            .map_err(|e| sm_err(ErrorVerb::Read, format!("bad controller snapshot: {e}")))?;
        self.fs
            .write_atomically(&self.snapshot_path, &raw)
            .map_err(|e| sm_err(ErrorVerb::Write, e.to_string()))?;
        self.state = file.state;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.published.send_replace(Arc::new(self.state.clone()));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        match std::fs::read(&self.snapshot_path) {
            Ok(raw) => {
                let file: SnapshotFile = serde_json::from_slice(&raw)
                    .map_err(|e| sm_err(ErrorVerb::Read, e.to_string()))?;
                Ok(Some(Snapshot {
                    meta: file.meta,
                    snapshot: Box::new(Cursor::new(raw)),
                }))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(sm_err(ErrorVerb::Read, e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assignment_spreads_replicas_and_leaders() {
        let a = assign(&[3, 1, 2], 1, 6, 3);
        let mut leaders = [0; 4];
        for replicas in &a {
            assert_eq!(replicas.len(), 3);
            let mut r = replicas.clone();
            r.sort_unstable();
            r.dedup();
            assert_eq!(r, vec![1, 2, 3], "distinct replicas");
            leaders[replicas[0] as usize] += 1;
        }
        assert_eq!(&leaders[1..], &[2, 2, 2], "preferred leaders spread evenly");
    }

    #[test]
    fn commands_apply_deterministically() {
        let mut s = ClusterState {
            voters: vec![1, 2, 3],
            ..ClusterState::default()
        };
        let create = Command::CreateTopic {
            name: "t".into(),
            partitions: 2,
            replication_factor: 0,
            configs: BTreeMap::new(),
        };
        assert_eq!(s.apply(create.clone()), Ok(()));
        assert_eq!(s.topics["t"].replication_factor, 3);
        assert!(s.apply(create).is_err());
        let too_many = Command::CreateTopic {
            name: "u".into(),
            partitions: 1,
            replication_factor: 4,
            configs: BTreeMap::new(),
        };
        assert_eq!(
            s.apply(too_many).unwrap_err().0,
            ErrorCode::InvalidReplicationFactor.code()
        );
        let id = s.topics["t"].id;
        assert_eq!(s.apply(Command::DeleteTopic { name: "t".into() }), Ok(()));
        s.apply(Command::CreateTopic {
            name: "t".into(),
            partitions: 1,
            replication_factor: 1,
            configs: BTreeMap::new(),
        })
        .unwrap();
        assert_ne!(s.topics["t"].id, id, "a recreated topic gets a new id");
        let cmd = Command::RegisterBroker {
            id: 2,
            client_addr: "h:1".into(),
        };
        assert_eq!(Command::from_batch(cmd.to_batch()).unwrap(), cmd);
    }
}

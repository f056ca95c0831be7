//! The openraft type configuration shared by every group.

use std::fmt;
use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A broker's id (`--node-id`).
pub type NodeId = u64;

/// A Raft group's id on the wire: the controller is group 0; a partition is
/// `topic_id << 32 | partition`. Topic ids are assigned by the controller and never reused, so
/// a topic deleted and created again under the same name is a different group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupId(pub u64);

impl GroupId {
    pub const CONTROLLER: GroupId = GroupId(0);

    pub fn partition(topic_id: u32, partition: u32) -> GroupId {
        GroupId((u64::from(topic_id) << 32) | u64::from(partition))
    }

    pub fn topic_id(self) -> u32 {
        (self.0 >> 32) as u32
    }

    pub fn partition_index(self) -> u32 {
        self.0 as u32
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == GroupId::CONTROLLER {
            write!(f, "controller")
        } else {
            write!(f, "t{}p{}", self.topic_id(), self.partition_index())
        }
    }
}

/// An entry's application data: exactly one record batch, as the client (or the controller)
/// built it. It is stored as it is, with the offset and leader epoch stamped into its header.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch(pub Bytes);

impl fmt::Debug for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Batch({} bytes)", self.0.len())
    }
}

impl fmt::Display for Batch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "batch of {} bytes", self.0.len())
    }
}

/// What applying an entry produced: the record offsets it occupies, and, for controller
/// commands, the command's outcome: `Err((wire error code, message))` when it was refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    pub base_offset: u64,
    pub last_offset: u64,
    pub outcome: Option<Result<(), (i32, String)>>,
}

openraft::declare_raft_types!(
    /// The type configuration of every Rafka Raft group. openraft is built with
/// `single-term-leader` (standard Raft: one leader per term), so a log id is (term, index)
/// and the term alone, stored as a batch's partition leader epoch, identifies an entry's
/// leader; openraft's default mode would also need the leader's node id in every entry.
    pub TypeConfig:
        D = Batch,
        R = Applied,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft group handle.
pub type Raft = openraft::Raft<TypeConfig>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
/// What a proposal's responder receives: the applied entry's response, or why it was refused.
pub type ClientWriteResult = openraft::raft::ClientWriteResult<TypeConfig>;

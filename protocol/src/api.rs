//! The APIs of the client protocol: their keys, supported versions, and which response type
//! answers which request.

use crate::messages::*;

/// The only version of each API so far. Bumped per API when its messages change meaning.
pub const API_VERSION_V1: u32 = 1;

/// An API key as carried in the request header. Numbers are frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ApiKey {
    ApiVersions = 0,
    Metadata = 1,
    CreateTopics = 2,
    DeleteTopics = 3,
    DescribeConfigs = 4,
    AlterConfigs = 5,
    Produce = 6,
    Fetch = 7,
    ListOffsets = 8,
    FindCoordinator = 9,
    ConsumerGroupHeartbeat = 10,
    OffsetCommit = 11,
    OffsetFetch = 12,
    ListGroups = 13,
    DescribeGroup = 14,
    InitProducerId = 15,
    AddPartitionsToTxn = 16,
    AddOffsetsToTxn = 17,
    TxnOffsetCommit = 18,
    EndTxn = 19,
}

impl ApiKey {
    pub const ALL: [ApiKey; 20] = [
        ApiKey::ApiVersions,
        ApiKey::Metadata,
        ApiKey::CreateTopics,
        ApiKey::DeleteTopics,
        ApiKey::DescribeConfigs,
        ApiKey::AlterConfigs,
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::ListOffsets,
        ApiKey::FindCoordinator,
        ApiKey::ConsumerGroupHeartbeat,
        ApiKey::OffsetCommit,
        ApiKey::OffsetFetch,
        ApiKey::ListGroups,
        ApiKey::DescribeGroup,
        ApiKey::InitProducerId,
        ApiKey::AddPartitionsToTxn,
        ApiKey::AddOffsetsToTxn,
        ApiKey::TxnOffsetCommit,
        ApiKey::EndTxn,
    ];

    pub fn from_u32(key: u32) -> Option<ApiKey> {
        ApiKey::ALL.into_iter().find(|k| *k as u32 == key)
    }

    /// A lower-case name for logs and metric labels.
    pub fn name(self) -> &'static str {
        match self {
            ApiKey::ApiVersions => "api_versions",
            ApiKey::Metadata => "metadata",
            ApiKey::CreateTopics => "create_topics",
            ApiKey::DeleteTopics => "delete_topics",
            ApiKey::DescribeConfigs => "describe_configs",
            ApiKey::AlterConfigs => "alter_configs",
            ApiKey::Produce => "produce",
            ApiKey::Fetch => "fetch",
            ApiKey::ListOffsets => "list_offsets",
            ApiKey::FindCoordinator => "find_coordinator",
            ApiKey::ConsumerGroupHeartbeat => "consumer_group_heartbeat",
            ApiKey::OffsetCommit => "offset_commit",
            ApiKey::OffsetFetch => "offset_fetch",
            ApiKey::ListGroups => "list_groups",
            ApiKey::DescribeGroup => "describe_group",
            ApiKey::InitProducerId => "init_producer_id",
            ApiKey::AddPartitionsToTxn => "add_partitions_to_txn",
            ApiKey::AddOffsetsToTxn => "add_offsets_to_txn",
            ApiKey::TxnOffsetCommit => "txn_offset_commit",
            ApiKey::EndTxn => "end_txn",
        }
    }

    /// Versions this build serves: `(min, max)`.
    pub fn versions(self) -> (u32, u32) {
        (API_VERSION_V1, API_VERSION_V1)
    }
}

/// A request body: knows its API key and the response body that answers it.
pub trait Request: prost::Message + Default + Send + 'static {
    const API_KEY: ApiKey;
    type Response: prost::Message + Default + Send + 'static;
}

macro_rules! requests {
    ($($req:ident => $resp:ident : $key:ident),* $(,)?) => {
        $(impl Request for $req {
            const API_KEY: ApiKey = ApiKey::$key;
            type Response = $resp;
        })*
    };
}

requests! {
    ApiVersionsRequest => ApiVersionsResponse: ApiVersions,
    MetadataRequest => MetadataResponse: Metadata,
    CreateTopicsRequest => CreateTopicsResponse: CreateTopics,
    DeleteTopicsRequest => DeleteTopicsResponse: DeleteTopics,
    DescribeConfigsRequest => DescribeConfigsResponse: DescribeConfigs,
    AlterConfigsRequest => AlterConfigsResponse: AlterConfigs,
    ProduceRequest => ProduceResponse: Produce,
    FetchRequest => FetchResponse: Fetch,
    ListOffsetsRequest => ListOffsetsResponse: ListOffsets,
    FindCoordinatorRequest => FindCoordinatorResponse: FindCoordinator,
    ConsumerGroupHeartbeatRequest => ConsumerGroupHeartbeatResponse: ConsumerGroupHeartbeat,
    OffsetCommitRequest => OffsetCommitResponse: OffsetCommit,
    OffsetFetchRequest => OffsetFetchResponse: OffsetFetch,
    ListGroupsRequest => ListGroupsResponse: ListGroups,
    DescribeGroupRequest => DescribeGroupResponse: DescribeGroup,
    InitProducerIdRequest => InitProducerIdResponse: InitProducerId,
    AddPartitionsToTxnRequest => AddPartitionsToTxnResponse: AddPartitionsToTxn,
    AddOffsetsToTxnRequest => AddOffsetsToTxnResponse: AddOffsetsToTxn,
    TxnOffsetCommitRequest => TxnOffsetCommitResponse: TxnOffsetCommit,
    EndTxnRequest => EndTxnResponse: EndTxn,
}

/// `acks` values of a produce request.
pub mod acks {
    pub const NONE: i32 = 0;
    pub const LEADER: i32 = 1;
    pub const ALL: i32 = -1;
}

/// Special timestamps of a ListOffsets request.
pub mod list_offsets {
    pub const EARLIEST: i64 = -2;
    pub const LATEST: i64 = -1;
}

/// Special member epochs of a consumer-group heartbeat and offset commit.
pub mod member_epoch {
    /// Joining (or rejoining after being fenced).
    pub const JOIN: i32 = 0;
    /// Leaving the group.
    pub const LEAVE: i32 = -1;
    /// A static member leaving for a restart: it keeps its partitions until its session ends.
    pub const STATIC_LEAVE: i32 = -2;
    /// An offset commit from outside the group (only while the group has no members).
    pub const NONE: i32 = -1;
}

/// The name of the internal topic holding consumer-group state and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The name of the internal topic holding transaction state.
pub const TRANSACTION_STATE_TOPIC: &str = "__transaction_state";

/// `key_type` of a FindCoordinator request.
pub mod coordinator_type {
    pub const GROUP: i32 = 0;
    pub const TRANSACTION: i32 = 1;
}

/// `isolation_level` of a Fetch request.
pub mod isolation {
    /// Everything up to the high watermark, open and aborted transactions included.
    pub const READ_UNCOMMITTED: i32 = 0;
    /// Only up to the last stable offset, without aborted transactions' records.
    pub const READ_COMMITTED: i32 = 1;
}

/// Control record types of transaction markers (Kafka's: the control record key is
/// version 0 then this type, both big-endian i16).
pub mod control_type {
    pub const ABORT: i16 = 0;
    pub const COMMIT: i16 = 1;
}

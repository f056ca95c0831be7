//! Wire error codes: the one table every crate maps its errors onto.
//!
//! Codes are frozen: a code's number never changes and a retired code is never reused. Each
//! code says whether a client may retry the same request (possibly after refreshing metadata).

/// An error code as carried in responses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    None,
    /// The broker hit an error it did not expect; the outcome of a write is unknown.
    UnknownServerError,
    /// A record batch failed validation (CRC, length, header, record encoding).
    CorruptMessage,
    UnknownTopicOrPartition,
    InvalidTopic,
    TopicAlreadyExists,
    InvalidPartitions,
    InvalidReplicationFactor,
    InvalidConfig,
    OffsetOutOfRange,
    /// A produce request's batches for one partition exceed the append limit.
    RecordListTooLarge,
    /// This broker does not lead the partition; the response carries the leader if known.
    NotLeader,
    /// The request could not complete in time; for a write, the outcome is unknown.
    RequestTimedOut,
    UnsupportedVersion,
    InvalidRequest,
    UnsupportedCompression,
    /// The replica's storage failed or is corrupt.
    StorageError,
    BrokerShuttingDown,
    InvalidRequiredAcks,
    /// This broker does not coordinate the group (or no longer does): find the coordinator again.
    NotCoordinator,
    /// The group's coordinator is not elected yet, or the offsets topic is being created.
    CoordinatorNotAvailable,
    /// The coordinator is rebuilding its state from the offsets log.
    CoordinatorLoadInProgress,
    /// The member is not in the group (evicted, or never joined): rejoin with epoch 0.
    UnknownMemberId,
    /// The member's epoch is not the one the coordinator gave it (or another instance replaced it): rejoin with epoch 0.
    FencedMemberEpoch,
    /// An offset commit from an older member epoch, or for partitions the member no longer owns.
    StaleMemberEpoch,
    /// An empty or over-long group id.
    InvalidGroupId,
    /// The operation needs a group without members (offset reset from outside the group).
    NonEmptyGroup,
    /// The member named an assignor the broker does not have.
    UnsupportedAssignor,
    /// The group already has the most members the broker allows.
    GroupMaxSizeReached,
    /// A batch's sequence number is not the one after the producer's last batch on this
    /// partition: an earlier batch is missing. Only retriable while the producer still has an
    /// earlier batch of that partition unacknowledged (it will fill the gap); otherwise fatal.
    OutOfOrderSequenceNumber,
    /// A batch repeats one older than the five the leader remembers per producer: it was
    /// appended long ago; its offsets are no longer known.
    DuplicateSequenceNumber,
    /// The batch's producer epoch is older than the partition has seen: another instance of
    /// the producer took over (fenced; never retried).
    InvalidProducerEpoch,
    /// The partition has no state for the producer id (never seen, or expired after
    /// `producer_id_expiration_ms`) and the batch does not start at sequence 0.
    UnknownProducerId,
    /// A new partition leader is still applying its predecessors' entries and cannot check
    /// sequence numbers yet; nothing was appended.
    LeaderNotReady,
    /// The request does not fit the transaction's state (EndTxn without a transaction, a
    /// commit of a transaction being aborted, a transactional write to a partition not added).
    InvalidTxnState,
    /// The previous transaction of this producer is still completing (its markers are being
    /// written): retry shortly.
    ConcurrentTransactions,
    /// The transaction timeout asked for is outside what the broker allows.
    InvalidTransactionTimeout,
    /// A code this build does not know (from a newer peer).
    Unknown(i32),
}

impl ErrorCode {
    /// The frozen wire number.
    pub fn code(self) -> i32 {
        match self {
            ErrorCode::None => 0,
            ErrorCode::UnknownServerError => 1,
            ErrorCode::CorruptMessage => 2,
            ErrorCode::UnknownTopicOrPartition => 3,
            ErrorCode::InvalidTopic => 4,
            ErrorCode::TopicAlreadyExists => 5,
            ErrorCode::InvalidPartitions => 6,
            ErrorCode::InvalidReplicationFactor => 7,
            ErrorCode::InvalidConfig => 8,
            ErrorCode::OffsetOutOfRange => 9,
            ErrorCode::RecordListTooLarge => 10,
            ErrorCode::NotLeader => 11,
            ErrorCode::RequestTimedOut => 12,
            ErrorCode::UnsupportedVersion => 13,
            ErrorCode::InvalidRequest => 14,
            ErrorCode::UnsupportedCompression => 15,
            ErrorCode::StorageError => 16,
            ErrorCode::BrokerShuttingDown => 17,
            ErrorCode::InvalidRequiredAcks => 18,
            ErrorCode::NotCoordinator => 19,
            ErrorCode::CoordinatorNotAvailable => 20,
            ErrorCode::CoordinatorLoadInProgress => 21,
            ErrorCode::UnknownMemberId => 22,
            ErrorCode::FencedMemberEpoch => 23,
            ErrorCode::StaleMemberEpoch => 24,
            ErrorCode::InvalidGroupId => 25,
            ErrorCode::NonEmptyGroup => 26,
            ErrorCode::UnsupportedAssignor => 27,
            ErrorCode::GroupMaxSizeReached => 28,
            ErrorCode::OutOfOrderSequenceNumber => 29,
            ErrorCode::DuplicateSequenceNumber => 30,
            ErrorCode::InvalidProducerEpoch => 31,
            ErrorCode::UnknownProducerId => 32,
            ErrorCode::LeaderNotReady => 33,
            ErrorCode::InvalidTxnState => 34,
            ErrorCode::ConcurrentTransactions => 35,
            ErrorCode::InvalidTransactionTimeout => 36,
            ErrorCode::Unknown(c) => c,
        }
    }

    pub fn from_code(code: i32) -> ErrorCode {
        match code {
            0 => ErrorCode::None,
            1 => ErrorCode::UnknownServerError,
            2 => ErrorCode::CorruptMessage,
            3 => ErrorCode::UnknownTopicOrPartition,
            4 => ErrorCode::InvalidTopic,
            5 => ErrorCode::TopicAlreadyExists,
            6 => ErrorCode::InvalidPartitions,
            7 => ErrorCode::InvalidReplicationFactor,
            8 => ErrorCode::InvalidConfig,
            9 => ErrorCode::OffsetOutOfRange,
            10 => ErrorCode::RecordListTooLarge,
            11 => ErrorCode::NotLeader,
            12 => ErrorCode::RequestTimedOut,
            13 => ErrorCode::UnsupportedVersion,
            14 => ErrorCode::InvalidRequest,
            15 => ErrorCode::UnsupportedCompression,
            16 => ErrorCode::StorageError,
            17 => ErrorCode::BrokerShuttingDown,
            18 => ErrorCode::InvalidRequiredAcks,
            19 => ErrorCode::NotCoordinator,
            20 => ErrorCode::CoordinatorNotAvailable,
            21 => ErrorCode::CoordinatorLoadInProgress,
            22 => ErrorCode::UnknownMemberId,
            23 => ErrorCode::FencedMemberEpoch,
            24 => ErrorCode::StaleMemberEpoch,
            25 => ErrorCode::InvalidGroupId,
            26 => ErrorCode::NonEmptyGroup,
            27 => ErrorCode::UnsupportedAssignor,
            28 => ErrorCode::GroupMaxSizeReached,
            29 => ErrorCode::OutOfOrderSequenceNumber,
            30 => ErrorCode::DuplicateSequenceNumber,
            31 => ErrorCode::InvalidProducerEpoch,
            32 => ErrorCode::UnknownProducerId,
            33 => ErrorCode::LeaderNotReady,
            34 => ErrorCode::InvalidTxnState,
            35 => ErrorCode::ConcurrentTransactions,
            36 => ErrorCode::InvalidTransactionTimeout,
            c => ErrorCode::Unknown(c),
        }
    }

    pub fn is_ok(self) -> bool {
        self == ErrorCode::None
    }

    /// Whether the same request may succeed if sent again (after a metadata refresh for
    /// leadership errors). Timeouts and unknown server errors are retriable but ambiguous for
    /// writes: the first attempt may have been applied.
    pub fn is_retriable(self) -> bool {
        matches!(
            self,
            ErrorCode::UnknownTopicOrPartition
                | ErrorCode::NotLeader
                | ErrorCode::RequestTimedOut
                | ErrorCode::StorageError
                | ErrorCode::BrokerShuttingDown
                | ErrorCode::UnknownServerError
                | ErrorCode::NotCoordinator
                | ErrorCode::CoordinatorNotAvailable
                | ErrorCode::CoordinatorLoadInProgress
                | ErrorCode::LeaderNotReady
                | ErrorCode::ConcurrentTransactions
        )
    }

    /// A short name, as Kafka spells it, for messages and metrics labels.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::None => "NONE",
            ErrorCode::UnknownServerError => "UNKNOWN_SERVER_ERROR",
            ErrorCode::CorruptMessage => "CORRUPT_MESSAGE",
            ErrorCode::UnknownTopicOrPartition => "UNKNOWN_TOPIC_OR_PARTITION",
            ErrorCode::InvalidTopic => "INVALID_TOPIC",
            ErrorCode::TopicAlreadyExists => "TOPIC_ALREADY_EXISTS",
            ErrorCode::InvalidPartitions => "INVALID_PARTITIONS",
            ErrorCode::InvalidReplicationFactor => "INVALID_REPLICATION_FACTOR",
            ErrorCode::InvalidConfig => "INVALID_CONFIG",
            ErrorCode::OffsetOutOfRange => "OFFSET_OUT_OF_RANGE",
            ErrorCode::RecordListTooLarge => "RECORD_LIST_TOO_LARGE",
            ErrorCode::NotLeader => "NOT_LEADER",
            ErrorCode::RequestTimedOut => "REQUEST_TIMED_OUT",
            ErrorCode::UnsupportedVersion => "UNSUPPORTED_VERSION",
            ErrorCode::InvalidRequest => "INVALID_REQUEST",
            ErrorCode::UnsupportedCompression => "UNSUPPORTED_COMPRESSION",
            ErrorCode::StorageError => "STORAGE_ERROR",
            ErrorCode::BrokerShuttingDown => "BROKER_SHUTTING_DOWN",
            ErrorCode::InvalidRequiredAcks => "INVALID_REQUIRED_ACKS",
            ErrorCode::NotCoordinator => "NOT_COORDINATOR",
            ErrorCode::CoordinatorNotAvailable => "COORDINATOR_NOT_AVAILABLE",
            ErrorCode::CoordinatorLoadInProgress => "COORDINATOR_LOAD_IN_PROGRESS",
            ErrorCode::UnknownMemberId => "UNKNOWN_MEMBER_ID",
            ErrorCode::FencedMemberEpoch => "FENCED_MEMBER_EPOCH",
            ErrorCode::StaleMemberEpoch => "STALE_MEMBER_EPOCH",
            ErrorCode::InvalidGroupId => "INVALID_GROUP_ID",
            ErrorCode::NonEmptyGroup => "NON_EMPTY_GROUP",
            ErrorCode::UnsupportedAssignor => "UNSUPPORTED_ASSIGNOR",
            ErrorCode::GroupMaxSizeReached => "GROUP_MAX_SIZE_REACHED",
            ErrorCode::OutOfOrderSequenceNumber => "OUT_OF_ORDER_SEQUENCE_NUMBER",
            ErrorCode::DuplicateSequenceNumber => "DUPLICATE_SEQUENCE_NUMBER",
            ErrorCode::InvalidProducerEpoch => "INVALID_PRODUCER_EPOCH",
            ErrorCode::UnknownProducerId => "UNKNOWN_PRODUCER_ID",
            ErrorCode::LeaderNotReady => "LEADER_NOT_READY",
            ErrorCode::InvalidTxnState => "INVALID_TXN_STATE",
            ErrorCode::ConcurrentTransactions => "CONCURRENT_TRANSACTIONS",
            ErrorCode::InvalidTransactionTimeout => "INVALID_TRANSACTION_TIMEOUT",
            ErrorCode::Unknown(_) => "UNKNOWN_CODE",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        let mut seen = std::collections::HashSet::new();
        for c in 0..37 {
            let e = ErrorCode::from_code(c);
            assert_eq!(e.code(), c);
            assert!(seen.insert(e.name()), "duplicate name for {c}");
        }
        assert_eq!(ErrorCode::from_code(999), ErrorCode::Unknown(999));
    }
}

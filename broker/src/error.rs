//! The broker crate's error type, grouped by what the caller should do about it.
//!
//! The mapping to wire error codes lives in one place at the protocol edge (with the client
//! protocol); here each variant only says whether it is the request's fault, a transient
//! condition, or a fault of this replica's storage.

use std::path::PathBuf;

use rafka_protocol::{BatchError, ErrorCode, Offset};

/// What a caller can do about an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The request is wrong (bad batch, offset out of range): do not retry it unchanged.
    InvalidRequest,
    /// Storage on this replica failed or is corrupt: the replica must stop serving this
    /// partition (and, once replicated, recover it from its peers). Retrying elsewhere may work.
    Storage,
    /// A configuration error found at start-up or on a config change.
    Config,
    /// Leadership moved or a quorum is out of reach: retry (after refreshing metadata).
    Unavailable,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("invalid record batch: {0}")]
    InvalidBatch(#[from] BatchError),
    #[error("invalid record batch: {0}")]
    InvalidBatchHeader(&'static str),
    #[error("a batch of {size_bytes} bytes exceeds the limit of {limit_bytes} bytes")]
    AppendTooLarge { size_bytes: u64, limit_bytes: u64 },
    #[error("offset {requested} is out of range: the log holds [{log_start}, {log_end})")]
    OffsetOutOfRange {
        requested: Offset,
        log_start: Offset,
        log_end: Offset,
    },
    #[error("replicated batch starts at offset {got} but the log ends at {expected}")]
    NonContiguousAppend { expected: Offset, got: Offset },
    #[error("cannot truncate to offset {offset}: {reason}")]
    InvalidTruncation {
        offset: Offset,
        reason: &'static str,
    },
    #[error("corrupt data in {path} at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("the log in {0} failed an earlier write and must be reopened")]
    Poisoned(PathBuf),
    #[error("invalid log configuration: {0}")]
    Config(String),
    #[error("broken data directory {path}: {reason}")]
    BrokenDirectory { path: PathBuf, reason: String },
    #[error("unknown topic or partition: {0}")]
    UnknownTopicOrPartition(String),
    #[error("topic {0} already exists")]
    TopicAlreadyExists(String),
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopic { name: String, reason: &'static str },
    #[error("invalid partition count {count}: must be within 1..={max}")]
    InvalidPartitions { count: u32, max: u32 },
    #[error("invalid replication factor {factor}: {reason}")]
    InvalidReplicationFactor { factor: u32, reason: &'static str },
    #[error("invalid topic config {key}={value}: {reason}")]
    InvalidTopicConfig {
        key: String,
        value: String,
        reason: String,
    },
    #[error("the broker is shutting down")]
    ShuttingDown,
    /// This broker does not lead the partition (or the controller); `leader` when known.
    #[error("not the leader of {what}{}", leader.map(|l| format!("; the leader is broker {l}")).unwrap_or_default())]
    NotLeader { what: String, leader: Option<u64> },
    /// The write was proposed but its fate is unknown (no commit within the deadline, or the
    /// leader changed while waiting): it may still be committed. Retrying may duplicate.
    #[error("the outcome of the write is unknown: {0}")]
    OutcomeUnknown(String),
    /// A controller command was refused by the controller (code, reason).
    #[error("{1}")]
    Refused(rafka_protocol::ErrorCode, String),
    /// An idempotent batch refused by its partition's producer state (sequence gap, fenced
    /// epoch, unknown producer, too old a duplicate); nothing of the request was appended.
    #[error("{message}")]
    ProducerRefused { code: ErrorCode, message: String },
    /// A new partition leader has not yet applied its predecessors' entries, so it cannot
    /// check sequence numbers; nothing was appended.
    #[error("the new leader of {0} is still applying earlier entries")]
    LeaderNotReady(String),
    /// A bug or a panicked task: the outcome of the request is unknown.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidBatch(_)
            | Error::InvalidBatchHeader(_)
            | Error::AppendTooLarge { .. }
            | Error::OffsetOutOfRange { .. }
            | Error::NonContiguousAppend { .. }
            | Error::InvalidTruncation { .. }
            | Error::UnknownTopicOrPartition(_)
            | Error::TopicAlreadyExists(_)
            | Error::InvalidTopic { .. }
            | Error::InvalidPartitions { .. }
            | Error::InvalidReplicationFactor { .. }
            | Error::InvalidTopicConfig { .. } => ErrorClass::InvalidRequest,
            Error::Refused(..) | Error::ProducerRefused { .. } => ErrorClass::InvalidRequest,
            Error::LeaderNotReady(_) => ErrorClass::Unavailable,
            Error::NotLeader { .. } | Error::OutcomeUnknown(_) => ErrorClass::Unavailable,
            Error::ShuttingDown | Error::Internal(_) => ErrorClass::Storage,
            Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::Poisoned(_)
            | Error::BrokenDirectory { .. } => ErrorClass::Storage,
            Error::Config(_) => ErrorClass::Config,
        }
    }

    /// The leader to name in a response's `leader_hint` (-1: unknown or not applicable).
    pub fn leader_hint(&self) -> i32 {
        match self {
            Error::NotLeader {
                leader: Some(l), ..
            } => *l as i32,
            _ => -1,
        }
    }

    /// The wire error code for this error: the one place broker errors meet the protocol.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            Error::InvalidBatch(BatchError::UnsupportedCompression(_)) => {
                ErrorCode::UnsupportedCompression
            }
            Error::InvalidBatch(_) | Error::InvalidBatchHeader(_) => ErrorCode::CorruptMessage,
            Error::AppendTooLarge { .. } => ErrorCode::RecordListTooLarge,
            Error::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            Error::NonContiguousAppend { .. } | Error::InvalidTruncation { .. } => {
                ErrorCode::InvalidRequest
            }
            Error::Io { .. }
            | Error::Corrupt { .. }
            | Error::Poisoned(_)
            | Error::BrokenDirectory { .. } => ErrorCode::StorageError,
            Error::Config(_) | Error::InvalidTopicConfig { .. } => ErrorCode::InvalidConfig,
            Error::UnknownTopicOrPartition(_) => ErrorCode::UnknownTopicOrPartition,
            Error::TopicAlreadyExists(_) => ErrorCode::TopicAlreadyExists,
            Error::InvalidTopic { .. } => ErrorCode::InvalidTopic,
            Error::InvalidPartitions { .. } => ErrorCode::InvalidPartitions,
            Error::InvalidReplicationFactor { .. } => ErrorCode::InvalidReplicationFactor,
            Error::ShuttingDown => ErrorCode::BrokerShuttingDown,
            Error::NotLeader { .. } => ErrorCode::NotLeader,
            Error::OutcomeUnknown(_) => ErrorCode::RequestTimedOut,
            Error::Refused(code, _) => *code,
            Error::ProducerRefused { code, .. } => *code,
            Error::LeaderNotReady(_) => ErrorCode::LeaderNotReady,
            Error::Internal(_) => ErrorCode::UnknownServerError,
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }
}

/// Reads one of the broker's small JSON state files (`raft-meta.json`, `replicas.json`, a
/// controller snapshot): `Ok(None)` when it does not exist yet, `BrokenDirectory` naming the
/// file and `what` it holds when it cannot be parsed, `Io` when it cannot be read.
pub(crate) fn read_json_file<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
    what: &str,
) -> Result<Option<T>> {
    match std::fs::read(path) {
        Ok(raw) => serde_json::from_slice(&raw)
            .map(Some)
            .map_err(|e| Error::BrokenDirectory {
                path: path.to_path_buf(),
                reason: format!("unreadable {what}: {e}"),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path)(e)),
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The client's one error type, [`ClientError`], grouped by what the caller can do about it:
//! retry (connection and timeout errors, retriable broker codes), give up with an *unknown*
//! outcome (a write that may or may not have been applied), or fix the request (invalid
//! arguments, non-retriable broker codes).
//!
//! A transactional producer's failures are [`ClientError::Transaction`], whose
//! [`TxnErrorKind`] says which of those three the caller is in: abort and go on, drop the
//! producer, or call the same method again.
//!
//! Errors are `Clone` because one failed produce request fails every record it carried, and
//! each record's delivery future gets its own copy.

use rafka_protocol::ErrorCode;

/// Every error the client library reports.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// No TCP connection could be made. Nothing was sent, so retrying is always safe.
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },

    /// An established connection broke. Requests in flight on it may or may not have been
    /// processed by the broker.
    #[error("connection to {addr} lost: {reason}")]
    ConnectionLost { addr: String, reason: String },

    /// No response came within the request timeout. For a write the outcome is unknown.
    #[error("{api} request to {addr} timed out after {timeout_ms} ms")]
    Timeout {
        api: &'static str,
        addr: String,
        timeout_ms: u64,
    },

    /// A write whose outcome cannot be known: it was sent at least once, the attempts ended in
    /// timeouts or lost connections, and the delivery timeout expired. The records may have
    /// been appended; they are *not* known to have failed.
    #[error("outcome unknown for {topic}-{partition}: {reason}")]
    OutcomeUnknown {
        topic: String,
        partition: u32,
        reason: String,
    },

    /// Records were never sent before the delivery timeout expired (no leader, or the batch
    /// waited behind retries): they were certainly not appended.
    #[error("records for {topic}-{partition} not sent within the delivery timeout: {reason}")]
    DeliveryTimeout {
        topic: String,
        partition: u32,
        reason: String,
    },

    /// The broker answered with an error code, for a topic or a partition or the whole request.
    #[error("{}", describe_broker_error(*code, message, topic.as_deref(), *partition))]
    Broker {
        code: ErrorCode,
        message: String,
        topic: Option<String>,
        partition: Option<u32>,
    },

    /// A consumer-group API answered with an error for the whole request (group membership,
    /// offset commit and fetch, group description). Retriable exactly when the code is
    /// (NOT_COORDINATOR and the other coordinator codes: find the coordinator again). Fatal
    /// for a commit: UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH, STALE_MEMBER_EPOCH (the member no
    /// longer owns what it tried to commit); for a reset from outside the group:
    /// NON_EMPTY_GROUP.
    #[error("{}", describe_group_error(*code, group, message))]
    Group {
        code: ErrorCode,
        group: String,
        message: String,
    },

    /// An offset commit was sent at least once, every attempt ended in a timeout or a lost
    /// connection (or a later attempt failed after an earlier one's fate was unknown), and the
    /// request timeout ran out: the offsets may or may not have been committed.
    #[error("offset commit for group '{group}' has an unknown outcome: {reason}")]
    CommitOutcomeUnknown { group: String, reason: String },

    /// A transactional producer's transaction cannot go on as asked; `kind` says what the
    /// caller can do (abort, drop the producer, or call the same method again).
    #[error("{}", describe_txn_error(*kind, transactional_id, message))]
    Transaction {
        kind: TxnErrorKind,
        transactional_id: String,
        /// The broker's error code behind it, when there is one.
        code: Option<ErrorCode>,
        message: String,
    },

    /// The broker sent bytes this client cannot decode (a bug or a version mismatch).
    #[error("protocol error from {addr}: {reason}")]
    Protocol { addr: String, reason: String },

    /// The caller passed something that can never work (no retry will help).
    #[error("{0}")]
    InvalidArgument(String),

    /// A feature this client version does not implement yet.
    #[error("{0} not implemented yet")]
    Unsupported(&'static str),

    /// The producer, consumer or connection was closed while the operation was pending.
    #[error("client closed")]
    Closed,
}

impl ClientError {
    /// A broker error for one partition of a topic.
    pub fn broker(
        code: ErrorCode,
        message: impl Into<String>,
        topic: &str,
        partition: u32,
    ) -> Self {
        ClientError::Broker {
            code,
            message: message.into(),
            topic: Some(topic.to_owned()),
            partition: Some(partition),
        }
    }

    /// A broker error about a whole topic.
    pub fn broker_topic(code: ErrorCode, message: impl Into<String>, topic: &str) -> Self {
        ClientError::Broker {
            code,
            message: message.into(),
            topic: Some(topic.to_owned()),
            partition: None,
        }
    }

    /// Whether the same operation may succeed if tried again (after a metadata refresh for
    /// leadership errors). A retriable error on a write is still ambiguous: see
    /// [`ClientError::is_ambiguous`].
    pub fn is_retriable(&self) -> bool {
        match self {
            ClientError::Connect { .. }
            | ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. } => true,
            ClientError::Broker { code, .. } | ClientError::Group { code, .. } => {
                code.is_retriable()
            }
            // Repeating EndTxn is safe: the coordinator answers a repeat with the outcome it
            // reached. Every other kind needs an abort or a new producer first.
            ClientError::Transaction { kind, .. } => *kind == TxnErrorKind::OutcomeUnknown,
            ClientError::OutcomeUnknown { .. }
            | ClientError::CommitOutcomeUnknown { .. }
            | ClientError::DeliveryTimeout { .. }
            | ClientError::Protocol { .. }
            | ClientError::InvalidArgument(_)
            | ClientError::Unsupported(_)
            | ClientError::Closed => false,
        }
    }

    /// Whether a write that ended with this error may nevertheless have been applied.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            ClientError::ConnectionLost { .. }
            | ClientError::Timeout { .. }
            | ClientError::OutcomeUnknown { .. }
            | ClientError::CommitOutcomeUnknown { .. } => true,
            ClientError::Transaction { kind, .. } => *kind == TxnErrorKind::OutcomeUnknown,
            ClientError::Broker { code, .. } | ClientError::Group { code, .. } => {
                matches!(
                    code,
                    ErrorCode::RequestTimedOut | ErrorCode::UnknownServerError
                )
            }
            _ => false,
        }
    }

    /// Whether this error means the producer was fenced (INVALID_PRODUCER_EPOCH): another
    /// instance with its transactional id took over, or its transaction timed out.
    pub fn is_fenced(&self) -> bool {
        match self {
            ClientError::Transaction { kind, .. } => *kind == TxnErrorKind::Fenced,
            _ => self.code() == Some(ErrorCode::InvalidProducerEpoch),
        }
    }

    /// Whether cached metadata (leaders, partition counts) should be refreshed before retrying.
    pub fn needs_metadata_refresh(&self) -> bool {
        match self {
            ClientError::Connect { .. } | ClientError::ConnectionLost { .. } => true,
            ClientError::Broker { code, .. } => matches!(
                code,
                ErrorCode::NotLeader
                    | ErrorCode::UnknownTopicOrPartition
                    | ErrorCode::BrokerShuttingDown
            ),
            _ => false,
        }
    }

    /// The broker error code, if this error carries one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Broker { code, .. } | ClientError::Group { code, .. } => Some(*code),
            ClientError::Transaction { code, .. } => *code,
            _ => None,
        }
    }
}

/// One readable line for a broker error, e.g.
/// `topic 'x' does not exist (UNKNOWN_TOPIC_OR_PARTITION)`.
fn describe_broker_error(
    code: ErrorCode,
    message: &str,
    topic: Option<&str>,
    partition: Option<u32>,
) -> String {
    let subject = match (topic, partition) {
        (Some(t), Some(p)) => format!("partition {t}-{p}"),
        (Some(t), None) => format!("topic '{t}'"),
        _ => "request".to_owned(),
    };
    let what = match code {
        ErrorCode::UnknownTopicOrPartition => match (topic, partition) {
            (Some(t), Some(p)) => format!("partition {p} of topic '{t}' does not exist"),
            _ => format!("{subject} does not exist"),
        },
        ErrorCode::TopicAlreadyExists => format!("{subject} already exists"),
        ErrorCode::NotLeader => format!("{subject}: broker is not the leader"),
        ErrorCode::OffsetOutOfRange => format!("{subject}: offset out of range"),
        _ => format!("{subject} failed"),
    };
    // For these codes the phrase above already says everything the broker's message would.
    let self_explanatory = matches!(
        code,
        ErrorCode::UnknownTopicOrPartition | ErrorCode::TopicAlreadyExists
    );
    if message.is_empty() || self_explanatory {
        format!("{what} ({})", code.name())
    } else {
        format!("{what}: {message} ({})", code.name())
    }
}

/// One readable line for a group-level error, e.g.
/// `group 'g' has members: stop them first (NON_EMPTY_GROUP)`.
fn describe_group_error(code: ErrorCode, group: &str, message: &str) -> String {
    let what = match code {
        ErrorCode::NonEmptyGroup => format!(
            "group '{group}' has active members; stop its consumers (or wait for their \
             sessions to expire) before changing its offsets"
        ),
        ErrorCode::NotCoordinator | ErrorCode::CoordinatorNotAvailable => {
            format!("no coordinator available for group '{group}' yet")
        }
        ErrorCode::CoordinatorLoadInProgress => {
            format!("the coordinator of group '{group}' is still loading")
        }
        ErrorCode::UnknownMemberId | ErrorCode::FencedMemberEpoch => {
            format!("this consumer is no longer a member of group '{group}'")
        }
        ErrorCode::StaleMemberEpoch => format!(
            "commit to group '{group}' refused: the member's epoch is stale or it no longer \
             owns the partitions"
        ),
        ErrorCode::InvalidGroupId => format!("invalid group id '{group}'"),
        _ => format!("group '{group}' request failed"),
    };
    // The phrase above already says what the broker's message would.
    if message.is_empty() || code == ErrorCode::NonEmptyGroup {
        format!("{what} ({})", code.name())
    } else {
        format!("{what}: {message} ({})", code.name())
    }
}

/// What a [`ClientError::Transaction`] leaves the caller to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnErrorKind {
    /// The current transaction cannot commit (one of its records, partitions or offsets
    /// failed): call `abort_transaction`, then begin a new one. Not retriable as such.
    Abortable,
    /// Another producer with the same transactional id initialised, or the coordinator aborted
    /// this producer's transaction when it timed out (INVALID_PRODUCER_EPOCH). Fatal: every
    /// later call fails; drop the producer (a new one with the same id fences nobody but the
    /// old instance).
    Fenced,
    /// The producer cannot continue for another reason (the coordinator refused the
    /// transaction's state, an answer made no sense). Fatal like `Fenced`.
    Fatal,
    /// `commit_transaction` or `abort_transaction` did not get a definite answer before its
    /// deadline (timeouts, lost connections, the coordinator unavailable): the transaction may
    /// or may not be decided. Calling the same method again is safe (the coordinator answers a
    /// repeated EndTxn with the outcome it already reached) and is how to finish it.
    OutcomeUnknown,
}

impl TxnErrorKind {
    pub fn name(self) -> &'static str {
        match self {
            TxnErrorKind::Abortable => "abortable",
            TxnErrorKind::Fenced => "fenced",
            TxnErrorKind::Fatal => "fatal",
            TxnErrorKind::OutcomeUnknown => "outcome unknown",
        }
    }
}

/// One readable line for a transaction error.
fn describe_txn_error(kind: TxnErrorKind, id: &str, message: &str) -> String {
    match kind {
        TxnErrorKind::Abortable => {
            format!("transaction of '{id}' cannot commit and must be aborted: {message}")
        }
        TxnErrorKind::Fenced => format!(
            "producer '{id}' was fenced (another producer with this transactional id started, \
             or its transaction timed out and was aborted by the coordinator): {message}"
        ),
        TxnErrorKind::Fatal => format!("transactional producer '{id}' failed: {message}"),
        TxnErrorKind::OutcomeUnknown => format!(
            "transaction of '{id}' has an unknown outcome (call the same method again to \
             finish it): {message}"
        ),
    }
}

/// The client's result type.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_read_as_one_line() {
        let e = ClientError::broker_topic(ErrorCode::UnknownTopicOrPartition, "", "x");
        assert_eq!(
            e.to_string(),
            "topic 'x' does not exist (UNKNOWN_TOPIC_OR_PARTITION)"
        );
        let e = ClientError::broker(ErrorCode::InvalidConfig, "bad retention.ms", "t", 2);
        assert_eq!(
            e.to_string(),
            "partition t-2 failed: bad retention.ms (INVALID_CONFIG)"
        );
    }

    #[test]
    fn classification() {
        let lost = ClientError::ConnectionLost {
            addr: "a".into(),
            reason: "eof".into(),
        };
        assert!(lost.is_retriable() && lost.is_ambiguous() && lost.needs_metadata_refresh());
        let nl = ClientError::broker(ErrorCode::NotLeader, "", "t", 0);
        assert!(nl.is_retriable() && !nl.is_ambiguous() && nl.needs_metadata_refresh());
        let bad = ClientError::broker(ErrorCode::CorruptMessage, "", "t", 0);
        assert!(!bad.is_retriable());
        assert!(!ClientError::InvalidArgument("x".into()).is_retriable());
        let moved = ClientError::Group {
            code: ErrorCode::NotCoordinator,
            group: "g".into(),
            message: String::new(),
        };
        assert!(moved.is_retriable() && !moved.is_ambiguous() && !moved.needs_metadata_refresh());
        let stale = ClientError::Group {
            code: ErrorCode::StaleMemberEpoch,
            group: "g".into(),
            message: String::new(),
        };
        assert!(!stale.is_retriable() && !stale.is_ambiguous());
        let unknown = ClientError::CommitOutcomeUnknown {
            group: "g".into(),
            reason: "timed out".into(),
        };
        assert!(!unknown.is_retriable() && unknown.is_ambiguous());
    }

    #[test]
    fn transaction_errors_say_what_to_do_next() {
        let txn = |kind| ClientError::Transaction {
            kind,
            transactional_id: "tx".into(),
            code: Some(ErrorCode::InvalidProducerEpoch),
            message: "epoch 3 is old".into(),
        };
        let fenced = txn(TxnErrorKind::Fenced);
        assert!(fenced.is_fenced() && !fenced.is_retriable() && !fenced.is_ambiguous());
        assert_eq!(fenced.code(), Some(ErrorCode::InvalidProducerEpoch));
        assert!(
            fenced.to_string().starts_with("producer 'tx' was fenced"),
            "{fenced}"
        );
        let unknown = txn(TxnErrorKind::OutcomeUnknown);
        assert!(unknown.is_retriable() && unknown.is_ambiguous() && !unknown.is_fenced());
        assert!(unknown.to_string().contains("call the same method again"));
        for kind in [TxnErrorKind::Abortable, TxnErrorKind::Fatal] {
            let e = txn(kind);
            assert!(
                !e.is_retriable() && !e.is_ambiguous() && !e.is_fenced(),
                "{e}"
            );
            assert!(!e.to_string().contains('\n'));
        }
        // A plain produce error with the fencing code counts as fencing too.
        assert!(ClientError::broker(ErrorCode::InvalidProducerEpoch, "", "t", 0).is_fenced());
    }

    #[test]
    fn non_empty_group_says_what_to_do() {
        let e = ClientError::Group {
            code: ErrorCode::NonEmptyGroup,
            group: "g".into(),
            message: String::new(),
        };
        let text = e.to_string();
        assert!(text.starts_with("group 'g' has active members"), "{text}");
        assert!(text.ends_with("(NON_EMPTY_GROUP)"), "{text}");
    }
}

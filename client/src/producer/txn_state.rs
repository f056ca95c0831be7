//! The transactional producer's state machine: which calls are allowed when, and what a
//! failure does to the transaction.
//!
//! Plain state with no I/O, tested without a broker. The producer keeps one [`TxnCore`] under
//! a mutex that is only ever taken *after* the accumulator's (never the other way round), so
//! that `send` can check the state and append its record atomically with respect to
//! `commit_transaction`/`abort_transaction` starting: a record either joins the transaction
//! being ended (and is flushed before EndTxn) or is refused. `txn.rs` drives the requests.
//!
//! ```text
//!                init_transactions            begin_transaction
//! Uninitialized ------------------> Ready -------------------> InTransaction
//!                                   ^  ^                        |        |
//!                  EndTxn(commit) ok|  |EndTxn(abort) ok  commit|        |abort
//!                                   |  |                        v        v
//!                              Committing  Aborting <-------- (AbortableError)
//!                                   ^          ^ abort             ^
//!                                   |          +-------------------+
//!       a record, partition or offset of the transaction failed: InTransaction, or
//!       Committing before EndTxn was sent ----------------------> AbortableError
//!
//!   any state --INVALID_PRODUCER_EPOCH--> Fatal (fenced); a broken invariant --> Fatal
//! ```
//!
//! `Committing` and `Aborting` persist across a failed or cancelled call: EndTxn can be
//! repeated safely (the coordinator answers a repeat with the outcome it reached), so calling
//! the same method again finishes the transaction. Once EndTxn(commit) may have reached the
//! coordinator the transaction can no longer be aborted from here (the commit may have
//! happened): only `commit_transaction` again is allowed, as in Kafka.

use rafka_protocol::ErrorCode;

use crate::error::{ClientError, Result, TxnErrorKind};

/// Where a transactional producer stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum TxnState {
    /// `init_transactions` has not succeeded yet: no identity, nothing may be sent.
    Uninitialized,
    /// An identity and no open transaction.
    Ready,
    /// `begin_transaction` was called: records and offsets join the transaction.
    InTransaction,
    /// `commit_transaction` started: sends are refused; flushing, then EndTxn(commit).
    /// `end_sent` once EndTxn may have reached the coordinator (from then on, no abort).
    Committing { end_sent: bool },
    /// `abort_transaction` started: sends are refused, queued records are failed, EndTxn(abort).
    Aborting,
    /// Part of the transaction failed: only `abort_transaction` can follow.
    AbortableError(ClientError),
    /// Fenced, or broken for good: every call fails with this error.
    Fatal(ClientError),
}

/// The public view of [`TxnState`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionState {
    Uninitialized,
    Ready,
    InTransaction,
    Committing,
    Aborting,
    /// The transaction must be aborted.
    AbortableError,
    /// The producer is fenced or failed for good.
    Fatal,
}

/// A transactional producer's state and its transitions.
#[derive(Debug)]
pub(crate) struct TxnCore {
    transactional_id: String,
    state: TxnState,
}

impl TxnCore {
    pub fn new(transactional_id: impl Into<String>) -> TxnCore {
        TxnCore {
            transactional_id: transactional_id.into(),
            state: TxnState::Uninitialized,
        }
    }

    pub fn transactional_id(&self) -> &str {
        &self.transactional_id
    }

    #[cfg(test)]
    pub fn state(&self) -> &TxnState {
        &self.state
    }

    pub fn public_state(&self) -> TransactionState {
        match self.state {
            TxnState::Uninitialized => TransactionState::Uninitialized,
            TxnState::Ready => TransactionState::Ready,
            TxnState::InTransaction => TransactionState::InTransaction,
            TxnState::Committing { .. } => TransactionState::Committing,
            TxnState::Aborting => TransactionState::Aborting,
            TxnState::AbortableError(_) => TransactionState::AbortableError,
            TxnState::Fatal(_) => TransactionState::Fatal,
        }
    }

    /// A [`ClientError::Transaction`] for this producer.
    pub fn error(
        &self,
        kind: TxnErrorKind,
        code: Option<ErrorCode>,
        message: impl Into<String>,
    ) -> ClientError {
        ClientError::Transaction {
            kind,
            transactional_id: self.transactional_id.clone(),
            code,
            message: message.into(),
        }
    }

    /// The error for a call that does not fit the state (a bug in the caller; nothing changed),
    /// or the error that ended the transaction or the producer.
    fn refuse(&self, call: &str) -> ClientError {
        match &self.state {
            TxnState::AbortableError(e) | TxnState::Fatal(e) => e.clone(),
            TxnState::Uninitialized => {
                ClientError::InvalidArgument(format!("{call} needs init_transactions first"))
            }
            TxnState::Ready => ClientError::InvalidArgument(format!(
                "{call} needs an open transaction: call begin_transaction first"
            )),
            TxnState::InTransaction => ClientError::InvalidArgument(format!(
                "{call} is not allowed while a transaction is open"
            )),
            TxnState::Committing { .. } => ClientError::InvalidArgument(format!(
                "{call} is not allowed while the transaction is committing (commit_transaction \
                 finishes it)"
            )),
            TxnState::Aborting => ClientError::InvalidArgument(format!(
                "{call} is not allowed while the transaction is aborting (abort_transaction \
                 finishes it)"
            )),
        }
    }

    /// `init_transactions` may run: only once, before anything else.
    pub fn check_init(&self) -> Result<()> {
        match self.state {
            TxnState::Uninitialized => Ok(()),
            TxnState::Fatal(_) => Err(self.refuse("init_transactions")),
            _ => Err(ClientError::InvalidArgument(
                "init_transactions was already called".into(),
            )),
        }
    }

    /// InitProducerId answered: the producer has its identity.
    pub fn initialized(&mut self) {
        if self.state == TxnState::Uninitialized {
            self.state = TxnState::Ready;
        }
    }

    /// `init_transactions` failed: only fencing is final (every other failure leaves the
    /// producer uninitialized, so the call may be repeated). Returns the error to report.
    pub fn init_failed(&mut self, error: ClientError) -> ClientError {
        if error.is_fenced() {
            return self.fatal(TxnErrorKind::Fenced, &error);
        }
        error
    }

    pub fn begin(&mut self) -> Result<()> {
        match self.state {
            TxnState::Ready => {
                self.state = TxnState::InTransaction;
                Ok(())
            }
            _ => Err(self.refuse("begin_transaction")),
        }
    }

    /// A record may be sent, or offsets added: only inside an open transaction.
    pub fn check_in_transaction(&self, call: &str) -> Result<()> {
        match self.state {
            TxnState::InTransaction => Ok(()),
            _ => Err(self.refuse(call)),
        }
    }

    /// `commit_transaction` starts (or resumes after a failed or cancelled attempt).
    pub fn start_commit(&mut self) -> Result<()> {
        match self.state {
            TxnState::InTransaction => {
                self.state = TxnState::Committing { end_sent: false };
                Ok(())
            }
            TxnState::Committing { .. } => Ok(()),
            _ => Err(self.refuse("commit_transaction")),
        }
    }

    /// Every record of the committing transaction has its outcome: if all succeeded the
    /// commit goes on (EndTxn may reach the coordinator from now on); if one failed the state
    /// is already `AbortableError`, and that error is returned.
    pub fn commit_flushed(&mut self) -> Result<()> {
        match self.state {
            TxnState::Committing { .. } => {
                self.state = TxnState::Committing { end_sent: true };
                Ok(())
            }
            _ => Err(self.refuse("commit_transaction")),
        }
    }

    /// `abort_transaction` starts (or resumes).
    pub fn start_abort(&mut self) -> Result<()> {
        match self.state {
            TxnState::InTransaction
            | TxnState::AbortableError(_)
            | TxnState::Aborting
            | TxnState::Committing { end_sent: false } => {
                self.state = TxnState::Aborting;
                Ok(())
            }
            _ => Err(self.refuse("abort_transaction")),
        }
    }

    /// EndTxn succeeded: the next transaction may begin (under the epoch it handed out).
    pub fn completed(&mut self) {
        if matches!(self.state, TxnState::Committing { .. } | TxnState::Aborting) {
            self.state = TxnState::Ready;
        }
    }

    /// A record of the transaction failed for good (the sender reports every such record):
    /// the transaction can no longer commit, or, when fenced, the producer is done.
    pub fn record_failed(&mut self, error: &ClientError) {
        if error.is_fenced() {
            self.fatal(TxnErrorKind::Fenced, error);
            return;
        }
        if self.can_still_commit() {
            self.state = TxnState::AbortableError(self.error(
                TxnErrorKind::Abortable,
                error.code(),
                format!("a record was not written: {error}"),
            ));
        }
    }

    /// A request of the open transaction (`what`: AddPartitionsToTxn, AddOffsetsToTxn,
    /// TxnOffsetCommit) failed after its retries. Fencing is fatal; anything else dooms only
    /// the transaction (whatever the request did takes effect only if the transaction commits,
    /// so aborting undoes it). Returns the error to report.
    pub fn request_failed(&mut self, what: &str, error: &ClientError) -> ClientError {
        if error.is_fenced() {
            return self.fatal(TxnErrorKind::Fenced, error);
        }
        let abortable = self.error(
            TxnErrorKind::Abortable,
            error.code(),
            format!("{what} failed: {error}"),
        );
        if self.can_still_commit() {
            self.state = TxnState::AbortableError(abortable.clone());
        }
        match &self.state {
            TxnState::Fatal(e) => e.clone(),
            _ => abortable,
        }
    }

    /// EndTxn failed after its retries. Fencing is fatal; no definite answer (`retriable`:
    /// timeouts, lost connections, the coordinator unavailable or still busy) leaves the state
    /// as it is, so the same call can finish the transaction later; any other answer (such as
    /// INVALID_TXN_STATE: the coordinator's view of the transaction differs from ours) is
    /// fatal. Returns the error to report.
    pub fn end_failed(&mut self, error: &ClientError, retriable: bool) -> ClientError {
        if error.is_fenced() {
            return self.fatal(TxnErrorKind::Fenced, error);
        }
        if retriable {
            return self.error(
                TxnErrorKind::OutcomeUnknown,
                error.code(),
                error.to_string(),
            );
        }
        self.fatal(TxnErrorKind::Fatal, error)
    }

    /// The producer cannot go on: every later call fails with the returned error.
    pub fn fatal(&mut self, kind: TxnErrorKind, cause: &ClientError) -> ClientError {
        if let TxnState::Fatal(e) = &self.state {
            return e.clone();
        }
        let e = match cause {
            ClientError::Transaction { kind: k, .. } if *k == kind => cause.clone(),
            _ => self.error(kind, cause.code(), cause.to_string()),
        };
        self.state = TxnState::Fatal(e.clone());
        e
    }

    /// Whether the current transaction could still commit (so a failure makes it abortable).
    fn can_still_commit(&self) -> bool {
        matches!(
            self.state,
            TxnState::InTransaction | TxnState::Committing { end_sent: false }
        )
    }

    /// Records still queued cannot be part of a committed transaction now: the error to fail
    /// them with, or `None` while they can.
    pub fn doomed(&self) -> Option<ClientError> {
        match &self.state {
            TxnState::AbortableError(e) | TxnState::Fatal(e) => Some(e.clone()),
            TxnState::Aborting => Some(self.error(
                TxnErrorKind::Abortable,
                None,
                "abort_transaction was called before the record was sent",
            )),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready() -> TxnCore {
        let mut t = TxnCore::new("tx");
        t.check_init().unwrap();
        t.initialized();
        assert_eq!(t.state(), &TxnState::Ready);
        t
    }

    fn invalid(r: Result<()>) -> String {
        match r {
            Err(ClientError::InvalidArgument(m)) => m,
            other => panic!("expected InvalidArgument, got {other:?}"),
        }
    }

    fn kind(e: &ClientError) -> TxnErrorKind {
        match e {
            ClientError::Transaction { kind, .. } => *kind,
            other => panic!("not a transaction error: {other:?}"),
        }
    }

    fn fenced() -> ClientError {
        ClientError::broker(ErrorCode::InvalidProducerEpoch, "old epoch", "t", 0)
    }

    #[test]
    fn nothing_before_init_and_init_only_once() {
        let mut t = TxnCore::new("tx");
        assert!(invalid(t.begin()).contains("init_transactions first"));
        assert!(invalid(t.check_in_transaction("send")).contains("init_transactions first"));
        assert!(invalid(t.start_commit()).contains("init_transactions"));
        assert!(invalid(t.start_abort()).contains("init_transactions"));
        t.initialized();
        assert!(invalid(t.check_init()).contains("already called"));
    }

    #[test]
    fn a_failed_init_can_be_repeated_unless_fenced() {
        let mut t = TxnCore::new("tx");
        let timeout = ClientError::Timeout {
            api: "init_producer_id",
            addr: "a".into(),
            timeout_ms: 1,
        };
        assert_eq!(t.init_failed(timeout.clone()), timeout);
        assert!(t.check_init().is_ok());
        let e = t.init_failed(fenced());
        assert_eq!(kind(&e), TxnErrorKind::Fenced);
        assert_eq!(t.check_init().unwrap_err(), e);
    }

    #[test]
    fn sends_only_inside_a_transaction() {
        let mut t = ready();
        assert!(invalid(t.check_in_transaction("send")).contains("begin_transaction"));
        t.begin().unwrap();
        t.check_in_transaction("send").unwrap();
        assert!(invalid(t.begin()).contains("while a transaction is open"));
        t.start_commit().unwrap();
        assert!(invalid(t.check_in_transaction("send")).contains("committing"));
    }

    #[test]
    fn commit_then_the_next_transaction() {
        let mut t = ready();
        t.begin().unwrap();
        t.start_commit().unwrap();
        assert_eq!(
            t.doomed(),
            None,
            "records queued before the commit still go"
        );
        t.commit_flushed().unwrap();
        assert_eq!(t.state(), &TxnState::Committing { end_sent: true });
        t.completed();
        assert_eq!(t.state(), &TxnState::Ready);
        t.begin().unwrap();
    }

    #[test]
    fn a_commit_with_an_unknown_outcome_is_finished_by_committing_again_never_by_aborting() {
        let mut t = ready();
        t.begin().unwrap();
        t.start_commit().unwrap();
        t.commit_flushed().unwrap();
        let lost = ClientError::ConnectionLost {
            addr: "a".into(),
            reason: "eof".into(),
        };
        let e = t.end_failed(&lost, true);
        assert_eq!(kind(&e), TxnErrorKind::OutcomeUnknown);
        assert!(e.is_retriable() && e.is_ambiguous());
        assert!(invalid(t.start_abort()).contains("commit_transaction finishes it"));
        assert!(invalid(t.begin()).contains("committing"));
        t.start_commit().unwrap();
        t.commit_flushed().unwrap();
        t.completed();
        assert_eq!(t.state(), &TxnState::Ready);
    }

    #[test]
    fn a_commit_cancelled_before_end_txn_may_still_abort() {
        let mut t = ready();
        t.begin().unwrap();
        t.start_commit().unwrap();
        t.start_abort().unwrap();
        assert_eq!(t.state(), &TxnState::Aborting);
        assert!(
            t.doomed().is_some(),
            "queued records of an aborting transaction fail"
        );
        assert!(invalid(t.start_commit()).contains("aborting"));
        t.start_abort().unwrap();
        t.completed();
        assert_eq!(t.state(), &TxnState::Ready);
    }

    #[test]
    fn a_failed_record_makes_the_transaction_abortable() {
        let mut t = ready();
        t.begin().unwrap();
        let e = ClientError::broker(ErrorCode::RecordListTooLarge, "", "t", 1);
        t.record_failed(&e);
        let TxnState::AbortableError(err) = t.state().clone() else {
            panic!("{:?}", t.state())
        };
        assert_eq!(kind(&err), TxnErrorKind::Abortable);
        assert_eq!(err.code(), Some(ErrorCode::RecordListTooLarge));
        assert!(!err.is_retriable());
        // Sends, commits and offsets all get the error; only an abort goes on.
        assert_eq!(t.check_in_transaction("send").unwrap_err(), err);
        assert_eq!(t.start_commit().unwrap_err(), err);
        assert_eq!(t.doomed(), Some(err));
        t.start_abort().unwrap();
        t.completed();
        t.begin().unwrap();
    }

    #[test]
    fn a_record_failing_while_the_commit_flushes_fails_the_commit() {
        let mut t = ready();
        t.begin().unwrap();
        t.start_commit().unwrap();
        t.record_failed(&ClientError::DeliveryTimeout {
            topic: "t".into(),
            partition: 0,
            reason: "no leader".into(),
        });
        let e = t.commit_flushed().unwrap_err();
        assert_eq!(kind(&e), TxnErrorKind::Abortable);
        t.start_abort().unwrap();
    }

    #[test]
    fn failures_while_aborting_change_nothing() {
        let mut t = ready();
        t.begin().unwrap();
        t.start_abort().unwrap();
        t.record_failed(&ClientError::broker(ErrorCode::CorruptMessage, "", "t", 0));
        let e = t.request_failed(
            "AddPartitionsToTxn",
            &ClientError::broker(ErrorCode::InvalidTxnState, "", "t", 0),
        );
        assert_eq!(kind(&e), TxnErrorKind::Abortable);
        assert_eq!(t.state(), &TxnState::Aborting);
    }

    #[test]
    fn fencing_anywhere_is_final() {
        for step in 0..4 {
            let mut t = ready();
            t.begin().unwrap();
            let e = match step {
                0 => {
                    t.record_failed(&fenced());
                    t.doomed().unwrap()
                }
                1 => t.request_failed("AddOffsetsToTxn", &fenced()),
                2 => {
                    t.start_commit().unwrap();
                    t.commit_flushed().unwrap();
                    t.end_failed(&fenced(), false)
                }
                _ => {
                    t.start_abort().unwrap();
                    t.end_failed(&fenced(), false)
                }
            };
            assert_eq!(kind(&e), TxnErrorKind::Fenced, "step {step}");
            assert!(e.is_fenced() && !e.is_retriable());
            assert_eq!(e.code(), Some(ErrorCode::InvalidProducerEpoch));
            assert_eq!(t.public_state(), TransactionState::Fatal);
            assert_eq!(t.check_in_transaction("send").unwrap_err(), e);
            assert_eq!(t.start_abort().unwrap_err(), e);
            assert_eq!(t.start_commit().unwrap_err(), e);
            assert_eq!(t.begin().unwrap_err(), e);
            assert_eq!(t.check_init().unwrap_err(), e);
            // A later failure does not replace the first fatal error.
            let other = t.fatal(
                TxnErrorKind::Fatal,
                &ClientError::InvalidArgument("x".into()),
            );
            assert_eq!(other, e);
        }
    }

    #[test]
    fn end_txn_refused_for_good_is_fatal() {
        let mut t = ready();
        t.begin().unwrap();
        t.start_abort().unwrap();
        let refused = ClientError::broker(ErrorCode::InvalidTxnState, "", "t", 0);
        let e = t.end_failed(&refused, false);
        assert_eq!(kind(&e), TxnErrorKind::Fatal);
        assert_eq!(t.public_state(), TransactionState::Fatal);
    }

    #[test]
    fn a_failed_offsets_request_makes_the_transaction_abortable() {
        let mut t = ready();
        t.begin().unwrap();
        let stale = ClientError::Group {
            code: ErrorCode::StaleMemberEpoch,
            group: "g".into(),
            message: String::new(),
        };
        let e = t.request_failed("TxnOffsetCommit", &stale);
        assert_eq!(kind(&e), TxnErrorKind::Abortable);
        assert_eq!(e.code(), Some(ErrorCode::StaleMemberEpoch));
        assert_eq!(t.public_state(), TransactionState::AbortableError);
        assert!(e.to_string().contains("TxnOffsetCommit failed"), "{e}");
    }
}

//! One transactional id's state and every transition it can take. Pure: the coordinator
//! persists the new state (one record in `__transaction_state`, acks=all) before it answers
//! or acts on it.
//!
//! Epochs follow Kafka's KIP-890 ("transactions v2"): ending a transaction, by EndTxn or by
//! the coordinator's timeout, bumps the epoch, and the COMMIT/ABORT markers carry the bumped
//! epoch. The next transaction uses it. So a request of an earlier transaction (a delayed
//! EndTxn, a late produce) carries an epoch that no longer matches and is refused: it can never
//! decide or join a later transaction (KAFKA-17754). The one exception is a retry of the
//! EndTxn that decided the current outcome ([`TxnMeta::last_end`]): it gets the same answer.
//! InitProducerId always bumps the epoch and forgets `last_end`, so the previous instance of
//! the producer is fenced even from that.

use std::collections::BTreeSet;

use rafka_protocol::ErrorCode;
use serde::{Deserialize, Serialize};

/// Where a transactional id stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// No transaction yet since the producer initialised.
    Empty,
    /// A transaction is open: partitions are being added and written.
    Ongoing,
    /// Decided; the markers are being written.
    PrepareCommit,
    PrepareAbort,
    /// Every marker is written.
    CompleteCommit,
    CompleteAbort,
}

impl Phase {
    pub fn is_prepare(self) -> bool {
        matches!(self, Phase::PrepareCommit | Phase::PrepareAbort)
    }

    pub fn name(self) -> &'static str {
        match self {
            Phase::Empty => "empty",
            Phase::Ongoing => "ongoing",
            Phase::PrepareCommit => "prepare_commit",
            Phase::PrepareAbort => "prepare_abort",
            Phase::CompleteCommit => "complete_commit",
            Phase::CompleteAbort => "complete_abort",
        }
    }
}

/// The EndTxn that decided the current (or last) transaction, so that its retry is answered
/// the same way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastEnd {
    pub producer_id: i64,
    pub epoch: i16,
    pub commit: bool,
}

/// A transactional id's persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMeta {
    pub producer_id: i64,
    /// The epoch the producer must use now. In Prepare and Complete phases it is already the
    /// bumped one, which the markers carry and the next transaction uses.
    pub epoch: i16,
    pub timeout_ms: u32,
    pub phase: Phase,
    /// Partitions of the open (or completing) transaction.
    pub partitions: BTreeSet<(String, u32)>,
    /// When the open transaction began (wall clock, so a new coordinator keeps the deadline).
    pub started_ms: i64,
    pub last_end: Option<LastEnd>,
}

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnError {
    pub code: ErrorCode,
    pub message: String,
}

fn err<T>(code: ErrorCode, message: String) -> Result<T, TxnError> {
    Err(TxnError { code, message })
}

/// The largest epoch handed out; past it the producer gets a new producer id (epoch 0).
pub const EPOCH_MAX: i16 = i16::MAX - 1;

/// What InitProducerId must do for an existing transactional id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InitStep {
    /// Fenced: answer with this (new) state.
    Ready,
    /// The previous instance left a transaction open: it is being aborted (this state, in
    /// PrepareAbort, must be written and completed); the caller answers
    /// CONCURRENT_TRANSACTIONS so the new instance retries once it is done.
    AbortFirst,
    /// The epoch is exhausted: the caller gives the id a new producer id at epoch 0.
    NewProducerId,
}

impl TxnMeta {
    /// A transactional id seen for the first time.
    pub fn new(producer_id: i64, timeout_ms: u32) -> TxnMeta {
        TxnMeta {
            producer_id,
            epoch: 0,
            timeout_ms,
            phase: Phase::Empty,
            partitions: BTreeSet::new(),
            started_ms: 0,
            last_end: None,
        }
    }

    /// InitProducerId for an existing id: fences the previous instance.
    pub fn init(&mut self, timeout_ms: u32) -> Result<InitStep, TxnError> {
        match self.phase {
            Phase::PrepareCommit | Phase::PrepareAbort => err(
                ErrorCode::ConcurrentTransactions,
                "the previous transaction is still completing".into(),
            ),
            Phase::Ongoing => {
                self.decide(false);
                self.last_end = None;
                Ok(InitStep::AbortFirst)
            }
            Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort => {
                self.timeout_ms = timeout_ms;
                self.last_end = None;
                self.partitions.clear();
                self.phase = Phase::Empty;
                if self.epoch >= EPOCH_MAX {
                    return Ok(InitStep::NewProducerId);
                }
                self.epoch += 1;
                Ok(InitStep::Ready)
            }
        }
    }

    /// Gives the id a fresh producer id (epoch exhausted).
    pub fn renew(&mut self, producer_id: i64) {
        self.producer_id = producer_id;
        self.epoch = 0;
    }

    fn check_producer(&self, producer_id: i64, epoch: i16) -> Result<(), TxnError> {
        if producer_id != self.producer_id || epoch != self.epoch {
            return err(
                ErrorCode::InvalidProducerEpoch,
                format!(
                    "producer {producer_id} epoch {epoch} is fenced: the transactional id has \
                     producer {} epoch {}",
                    self.producer_id, self.epoch
                ),
            );
        }
        Ok(())
    }

    /// AddPartitionsToTxn (and AddOffsetsToTxn): opens a transaction if none is open. Returns
    /// whether the state changed (and must be written).
    pub fn add_partitions(
        &mut self,
        producer_id: i64,
        epoch: i16,
        partitions: &[(String, u32)],
        now_ms: i64,
    ) -> Result<bool, TxnError> {
        self.check_producer(producer_id, epoch)?;
        match self.phase {
            Phase::PrepareCommit | Phase::PrepareAbort => {
                return err(
                    ErrorCode::ConcurrentTransactions,
                    "the previous transaction is still completing".into(),
                )
            }
            Phase::Ongoing => {}
            Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort => {
                self.phase = Phase::Ongoing;
                self.partitions.clear();
                self.started_ms = now_ms;
                self.last_end = None;
                self.partitions.extend(partitions.iter().cloned());
                return Ok(true);
            }
        }
        let before = self.partitions.len();
        self.partitions.extend(partitions.iter().cloned());
        Ok(self.partitions.len() != before)
    }

    /// Moves an open transaction to its decision, bumping the epoch.
    fn decide(&mut self, commit: bool) {
        self.phase = if commit {
            Phase::PrepareCommit
        } else {
            Phase::PrepareAbort
        };
        // At EPOCH_MAX the markers still need an epoch above the transaction's; the id gets
        // a new producer id once they are written (see `complete`).
        self.epoch = self.epoch.saturating_add(1);
    }

    /// EndTxn. `Ok(true)`: the state changed and must be written (then completed if in a
    /// Prepare phase); `Ok(false)`: a retry of the EndTxn that decided the current outcome —
    /// answer it once the transaction is complete, with the current epoch.
    pub fn end(&mut self, producer_id: i64, epoch: i16, commit: bool) -> Result<bool, TxnError> {
        let this_end = LastEnd {
            producer_id,
            epoch,
            commit,
        };
        if self.last_end == Some(this_end) {
            return Ok(false);
        }
        if let Some(last) = self
            .last_end
            .filter(|l| l.producer_id == producer_id && l.epoch == epoch)
        {
            return err(
                ErrorCode::InvalidTxnState,
                format!(
                    "the transaction was already {}; it cannot be {} now",
                    if last.commit { "committed" } else { "aborted" },
                    if commit { "committed" } else { "aborted" }
                ),
            );
        }
        self.check_producer(producer_id, epoch)?;
        match self.phase {
            Phase::PrepareCommit | Phase::PrepareAbort => err(
                ErrorCode::ConcurrentTransactions,
                "the previous transaction is still completing".into(),
            ),
            Phase::Ongoing => {
                self.decide(commit);
                self.last_end = Some(this_end);
                Ok(true)
            }
            // Nothing was added: there is nothing to mark, but the epoch still moves on so the
            // next transaction is told apart from this one.
            Phase::Empty | Phase::CompleteCommit | Phase::CompleteAbort => {
                self.decide(commit);
                self.partitions.clear();
                self.complete();
                self.last_end = Some(this_end);
                Ok(true)
            }
        }
    }

    /// The markers of a Prepare phase are all written.
    pub fn complete(&mut self) {
        self.phase = match self.phase {
            Phase::PrepareCommit => Phase::CompleteCommit,
            Phase::PrepareAbort => Phase::CompleteAbort,
            other => other,
        };
        self.partitions.clear();
    }

    /// Whether the open transaction has outlived its timeout at `now_ms`.
    pub fn timed_out(&self, now_ms: i64) -> bool {
        self.phase == Phase::Ongoing
            && now_ms.saturating_sub(self.started_ms) > i64::from(self.timeout_ms)
    }

    /// The coordinator aborts a transaction that outlived its timeout; the producer is fenced
    /// (its epoch is behind) and must initialise again.
    pub fn abort_for_timeout(&mut self) {
        self.decide(false);
        self.last_end = None;
    }

    /// Whether the producer id must be renewed once the current markers are written (the
    /// epoch reached its limit).
    pub fn epoch_exhausted(&self) -> bool {
        self.epoch >= EPOCH_MAX
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(n: u32) -> Vec<(String, u32)> {
        (0..n).map(|p| ("t".to_string(), p)).collect()
    }

    #[test]
    fn a_transaction_bumps_the_epoch_when_it_ends() {
        let mut m = TxnMeta::new(7, 60_000);
        assert_eq!(m.init(60_000).unwrap(), InitStep::Ready);
        assert_eq!(m.epoch, 1);
        assert!(m.add_partitions(7, 1, &parts(2), 100).unwrap());
        assert!(!m.add_partitions(7, 1, &parts(1), 100).unwrap());
        assert!(m.end(7, 1, true).unwrap());
        assert_eq!((m.phase, m.epoch), (Phase::PrepareCommit, 2));
        assert_eq!(m.partitions.len(), 2);
        // While the markers are written, the next transaction waits.
        assert_eq!(
            m.add_partitions(7, 2, &parts(1), 200).unwrap_err().code,
            ErrorCode::ConcurrentTransactions
        );
        m.complete();
        assert_eq!(m.phase, Phase::CompleteCommit);
        assert!(m.add_partitions(7, 2, &parts(1), 200).unwrap());
        assert_eq!(m.phase, Phase::Ongoing);
    }

    #[test]
    fn a_retried_end_gets_the_same_answer_but_a_stale_one_never_decides_a_later_transaction() {
        let mut m = TxnMeta::new(7, 60_000);
        m.init(60_000).unwrap();
        m.add_partitions(7, 1, &parts(1), 0).unwrap();
        assert!(m.end(7, 1, true).unwrap());
        m.complete();
        // The same EndTxn again (its answer was lost): same outcome, nothing to write.
        assert!(!m.end(7, 1, true).unwrap());
        // The opposite decision for the same transaction is refused.
        assert_eq!(
            m.end(7, 1, false).unwrap_err().code,
            ErrorCode::InvalidTxnState
        );
        // The producer goes on with epoch 2; a delayed EndTxn from epoch 1 then arrives.
        m.add_partitions(7, 2, &parts(1), 0).unwrap();
        assert_eq!(
            m.end(7, 1, false).unwrap_err().code,
            ErrorCode::InvalidProducerEpoch
        );
        assert_eq!(
            m.end(7, 1, true).unwrap_err().code,
            ErrorCode::InvalidProducerEpoch
        );
        assert_eq!((m.phase, m.epoch), (Phase::Ongoing, 2), "untouched");
    }

    #[test]
    fn init_fences_the_previous_instance_and_aborts_its_open_transaction() {
        let mut m = TxnMeta::new(7, 60_000);
        m.init(60_000).unwrap();
        m.add_partitions(7, 1, &parts(3), 0).unwrap();
        assert_eq!(m.init(60_000).unwrap(), InitStep::AbortFirst);
        assert_eq!((m.phase, m.epoch), (Phase::PrepareAbort, 2));
        assert_eq!(
            m.init(60_000).unwrap_err().code,
            ErrorCode::ConcurrentTransactions
        );
        m.complete();
        assert_eq!(m.init(60_000).unwrap(), InitStep::Ready);
        assert_eq!((m.phase, m.epoch), (Phase::Empty, 3));
        // The old instance, with any epoch it ever had, is refused.
        for e in 1..3 {
            assert_eq!(
                m.add_partitions(7, e, &parts(1), 0).unwrap_err().code,
                ErrorCode::InvalidProducerEpoch
            );
            assert!(m.end(7, e, true).is_err());
        }
    }

    #[test]
    fn an_init_after_a_commit_fences_a_retry_of_that_commit() {
        let mut m = TxnMeta::new(7, 60_000);
        m.init(60_000).unwrap();
        m.add_partitions(7, 1, &parts(1), 0).unwrap();
        m.end(7, 1, true).unwrap();
        m.complete();
        m.init(60_000).unwrap();
        assert_eq!(
            m.end(7, 1, true).unwrap_err().code,
            ErrorCode::InvalidProducerEpoch
        );
    }

    #[test]
    fn a_timed_out_transaction_is_aborted_and_its_producer_fenced() {
        let mut m = TxnMeta::new(7, 1_000);
        m.init(1_000).unwrap();
        m.add_partitions(7, 1, &parts(1), 10_000).unwrap();
        assert!(!m.timed_out(10_900));
        assert!(m.timed_out(11_001));
        m.abort_for_timeout();
        assert_eq!((m.phase, m.epoch), (Phase::PrepareAbort, 2));
        m.complete();
        assert_eq!(
            m.end(7, 1, true).unwrap_err().code,
            ErrorCode::InvalidProducerEpoch
        );
    }

    #[test]
    fn an_end_without_partitions_completes_at_once_and_still_moves_the_epoch() {
        let mut m = TxnMeta::new(7, 1_000);
        m.init(1_000).unwrap();
        assert!(m.end(7, 1, true).unwrap());
        assert_eq!((m.phase, m.epoch), (Phase::CompleteCommit, 2));
    }

    #[test]
    fn epochs_run_out_into_a_new_producer_id() {
        let mut m = TxnMeta::new(7, 1_000);
        m.epoch = EPOCH_MAX;
        assert_eq!(m.init(1_000).unwrap(), InitStep::NewProducerId);
        m.renew(8);
        assert_eq!((m.producer_id, m.epoch), (8, 0));
    }
}

//! The transactional producer's calls and the requests behind them: InitProducerId,
//! AddOffsetsToTxn and EndTxn to the transaction coordinator, TxnOffsetCommit to the consumer
//! group's coordinator, and AddPartitionsToTxn for the sender.
//!
//! The calls run one at a time per producer ([`Txn::op`]): each is a sequence of requests
//! whose order matters (an EndTxn overtaking an AddOffsetsToTxn would leave the offsets out of
//! the transaction). Every request retries its retriable errors (the coordinator moved or is
//! loading, CONCURRENT_TRANSACTIONS while the previous transaction's markers are written,
//! connection failures, timeouts) after the retry backoff until a deadline. All of them are
//! safe to repeat: adding a partition or a group twice to one transaction adds it once,
//! TxnOffsetCommit writes the same offsets again, and the coordinator answers a repeated
//! EndTxn (same epoch, same decision) with the outcome it already reached. What a failure
//! after the retries means for the transaction is [`TxnCore`]'s decision.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use rafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddPartitionsToTxnRequest, EndTxnRequest, InitProducerIdRequest,
    TxnOffsetCommitRequest,
};
use rafka_protocol::{Offset, Request};
use tokio::time::{Duration, Instant};

use super::accumulator::Identity;
use super::txn_state::{TransactionState, TxnCore};
use super::{Producer, Shared};
use crate::cluster::{Cluster, TopicPartition};
use crate::connection::lock;
use crate::consumer::group::{offsets_to_wire, to_wire};
use crate::consumer::ConsumerGroupMetadata;
use crate::coordinator::{Coordinator, CoordinatorResponse};
use crate::error::{ClientError, Result, TxnErrorKind};

/// A transactional producer's part of the shared producer state.
pub(super) struct Txn {
    /// The state machine. Taken after the accumulator's lock or alone, never before it.
    pub core: Mutex<TxnCore>,
    /// The transactional id's coordinator (FindCoordinator key type 1).
    coordinator: Coordinator,
    /// One transactional call at a time (init, offsets, commit, abort).
    op: tokio::sync::Mutex<()>,
    /// The consumer group coordinator of the last `send_offsets_to_transaction`, kept for the
    /// next call (a read-process-write loop sends to the same group every time).
    group_coordinator: Mutex<Option<Arc<Coordinator>>>,
}

impl Txn {
    pub fn new(cluster: Cluster, transactional_id: &str) -> Txn {
        Txn {
            core: Mutex::new(TxnCore::new(transactional_id)),
            coordinator: Coordinator::transaction(cluster, transactional_id),
            op: tokio::sync::Mutex::new(()),
            group_coordinator: Mutex::new(None),
        }
    }

    fn transactional_id(&self) -> String {
        lock(&self.core).transactional_id().to_owned()
    }

    fn group_coordinator(&self, group_id: &str) -> Arc<Coordinator> {
        let mut cached = lock(&self.group_coordinator);
        match cached.as_ref().filter(|c| c.group_id() == group_id) {
            Some(c) => c.clone(),
            None => {
                let c = Arc::new(Coordinator::new(
                    self.coordinator.cluster().clone(),
                    group_id,
                ));
                *cached = Some(c.clone());
                c
            }
        }
    }
}

/// Sends `request` to `coordinator` until it succeeds, fails with a non-retriable error,
/// `deadline` passes, or `give_up` says the answer is no longer wanted. Returns the last
/// attempt's error: a retriable one means the request might still succeed if repeated (the
/// time ran out), not that it was refused.
async fn send_retrying<R>(
    coordinator: &Coordinator,
    request: R,
    deadline: Instant,
    give_up: impl Fn() -> bool,
) -> Result<R::Response>
where
    R: Request + Clone,
    R::Response: CoordinatorResponse,
{
    let config = coordinator.cluster().config();
    let (backoff, timeout) = (config.retry_backoff, config.request_timeout);
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match coordinator
            .send_once(request.clone(), timeout.min(remaining.max(backoff)))
            .await
        {
            Ok(resp) => return Ok(resp),
            Err(e) => e,
        };
        if error.is_retriable() && Instant::now() + backoff < deadline && !give_up() {
            tracing::debug!(key = %coordinator.group_id(), %error, "coordinator request failed; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        return Err(error);
    }
}

/// Adds `tps` to the transaction of `identity` (AddPartitionsToTxn), then lets their batches
/// go; run by the sender, one at a time. Retried until the delivery timeout (the batches
/// waiting for it expire then anyway), or until the transaction ended or can no longer
/// commit. A failure makes the transaction abortable (fatal when fenced).
pub(super) async fn add_partitions(
    shared: Arc<Shared>,
    tps: Vec<TopicPartition>,
    identity: Identity,
) {
    let Some(txn) = &shared.txn else { return };
    let request = AddPartitionsToTxnRequest {
        transactional_id: txn.transactional_id(),
        producer_id: identity.producer_id.0,
        producer_epoch: i32::from(identity.epoch.0),
        partitions: to_wire(&tps),
    };
    let deadline = Instant::now() + Duration::from_millis(shared.config.delivery_timeout_ms);
    // The answer is no longer wanted once the epoch moved on or the transaction is doomed.
    // (The accumulator's guard lives to the end of the expression: accumulator, then state,
    // the one allowed order.)
    let unwanted = || {
        lock(&shared.accumulator).identity() != Some(identity) || lock(&txn.core).doomed().is_some()
    };
    let result = send_retrying(&txn.coordinator, request, deadline, unwanted).await;
    {
        let mut acc = lock(&shared.accumulator);
        if acc.identity() != Some(identity) {
            // The transaction ended meanwhile: an answer about it means nothing now (and an
            // INVALID_PRODUCER_EPOCH for the old epoch is no sign of fencing).
            return;
        }
        match &result {
            Ok(_) => acc.partitions_added(&tps, identity),
            Err(_) => acc.adding_failed(&tps, identity),
        }
    }
    match result {
        Ok(_) => tracing::debug!(
            partitions = tps.len(),
            "partitions added to the transaction"
        ),
        Err(e) => {
            let e = lock(&txn.core).request_failed("AddPartitionsToTxn", &e);
            tracing::warn!(error = %e, "adding partitions to the transaction failed");
        }
    }
    shared.wake.notify_one();
}

impl Producer {
    fn txn(&self) -> Result<&Txn> {
        self.shared.txn.as_ref().ok_or_else(|| {
            ClientError::InvalidArgument(
                "not a transactional producer: set ProducerConfig::transactional_id".into(),
            )
        })
    }

    /// Where the producer's transactions stand (`None` for a producer without a
    /// transactional id).
    pub fn transaction_state(&self) -> Option<TransactionState> {
        self.shared
            .txn
            .as_ref()
            .map(|t| lock(&t.core).public_state())
    }

    /// The deadline of a transactional call's requests, retries included: the delivery
    /// timeout, as for a record (each attempt waits at most the request timeout, which
    /// `validate` keeps below it, so a lost answer is always retried at least once).
    fn txn_deadline(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.shared.config.delivery_timeout_ms)
    }

    /// The identity the open transaction runs under (set by `init_transactions`, replaced at
    /// the end of each transaction).
    fn txn_identity(&self, txn: &Txn) -> Result<Identity> {
        match lock(&self.shared.accumulator).identity() {
            Some(identity) => Ok(identity),
            None => Err(lock(&txn.core).fatal(
                TxnErrorKind::Fatal,
                &ClientError::InvalidArgument("no producer identity inside a transaction".into()),
            )),
        }
    }

    /// Gets the producer's identity from its transaction coordinator (InitProducerId with the
    /// transactional id), which fences every earlier producer with the same transactional id
    /// and aborts the transaction it left open. Call it once, before the first
    /// `begin_transaction`. Retries retriable errors (the coordinator not found yet or moving,
    /// CONCURRENT_TRANSACTIONS while the predecessor's transaction is being aborted) until the
    /// delivery timeout; after a non-fatal failure it may be called again.
    ///
    /// A read-process-write loop, exactly once for read_committed readers of `out`:
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use rafka_client::*;
    /// # async fn demo() -> Result<(), ClientError> {
    /// let producer = Producer::new(ProducerConfig {
    ///     transactional_id: Some("copier-1".into()),
    ///     ..ProducerConfig::default()
    /// })?;
    /// producer.init_transactions().await?;
    /// let mut consumer = Consumer::new(ConsumerConfig {
    ///     group_id: Some("copier".into()),
    ///     isolation_level: IsolationLevel::ReadCommitted,
    ///     enable_auto_commit: false,
    ///     ..ConsumerConfig::default()
    /// })?;
    /// consumer.subscribe(["in"])?;
    /// loop {
    ///     let records = consumer.poll(Duration::from_secs(1)).await?;
    ///     if records.is_empty() {
    ///         continue;
    ///     }
    ///     producer.begin_transaction().await?;
    ///     for r in records {
    ///         let value = r.value.unwrap_or_default();
    ///         let _delivery = producer.send(ProducerRecord::new("out", value)).await?;
    ///     }
    ///     let group = consumer.group_metadata().expect("a group id is configured");
    ///     producer
    ///         .send_offsets_to_transaction(consumer.positions(), &group)
    ///         .await?;
    ///     match producer.commit_transaction().await {
    ///         Ok(()) => {}
    ///         Err(ClientError::Transaction { kind: TxnErrorKind::Abortable, .. }) => {
    ///             producer.abort_transaction().await?;
    ///             // Rewind to the committed offsets and process the records again.
    ///         }
    ///         Err(e) => return Err(e), // fenced, or the outcome is unknown
    ///     }
    /// }
    /// # }
    /// ```
    pub async fn init_transactions(&self) -> Result<()> {
        let txn = self.txn()?;
        let _op = txn.op.lock().await;
        lock(&txn.core).check_init()?;
        let request = InitProducerIdRequest {
            transactional_id: txn.transactional_id(),
            // validate() keeps it within u32.
            transaction_timeout_ms: self
                .shared
                .config
                .transaction_timeout_ms
                .min(u64::from(u32::MAX)) as u32,
        };
        let resp = send_retrying(&txn.coordinator, request, self.txn_deadline(), || false)
            .await
            .map_err(|e| lock(&txn.core).init_failed(e))?;
        let identity = Identity::from_wire(resp.producer_id, resp.producer_epoch)?;
        let mut acc = lock(&self.shared.accumulator);
        // Nothing can be queued: sends are refused until a transaction begins.
        if let Err(reason) = acc.switch_epoch(identity) {
            return Err(
                lock(&txn.core).fatal(TxnErrorKind::Fatal, &ClientError::InvalidArgument(reason))
            );
        }
        lock(&txn.core).initialized();
        tracing::debug!(?identity, "transactional producer initialised");
        Ok(())
    }

    /// Opens a transaction: records sent from now until `commit_transaction` or
    /// `abort_transaction` belong to it. Local only (partitions join the transaction as
    /// records are sent to them); async like the other transactional calls.
    pub async fn begin_transaction(&self) -> Result<()> {
        let txn = self.txn()?;
        let _op = txn.op.lock().await;
        lock(&txn.core).begin()
    }

    /// Makes a consumer group's offsets part of the open transaction: they become the group's
    /// committed offsets if, and when, the transaction commits (AddOffsetsToTxn to the
    /// transaction coordinator, then TxnOffsetCommit to the group's coordinator). Each offset
    /// is the next record to consume, as with [`Consumer::commit_offsets`]; pass
    /// [`Consumer::positions`] and [`Consumer::group_metadata`] after processing what `poll`
    /// returned.
    ///
    /// The group coordinator checks the member as it checks a commit: a member that no longer
    /// owns the partitions (STALE_MEMBER_EPOCH, UNKNOWN_MEMBER_ID, FENCED_MEMBER_EPOCH) makes
    /// the transaction abortable. Any failure after the retries does the same (fenced: fatal).
    ///
    /// [`Consumer::commit_offsets`]: crate::Consumer::commit_offsets
    /// [`Consumer::positions`]: crate::Consumer::positions
    /// [`Consumer::group_metadata`]: crate::Consumer::group_metadata
    pub async fn send_offsets_to_transaction(
        &self,
        offsets: impl IntoIterator<Item = (TopicPartition, Offset)>,
        group: &ConsumerGroupMetadata,
    ) -> Result<()> {
        let txn = self.txn()?;
        let offsets: BTreeMap<TopicPartition, Offset> = offsets.into_iter().collect();
        if group.group_id.is_empty() {
            return Err(ClientError::InvalidArgument(
                "send_offsets_to_transaction needs a group id".into(),
            ));
        }
        let _op = txn.op.lock().await;
        lock(&txn.core).check_in_transaction("send_offsets_to_transaction")?;
        if offsets.is_empty() {
            return Ok(());
        }
        let identity = self.txn_identity(txn)?;
        let transactional_id = txn.transactional_id();
        let deadline = self.txn_deadline();
        let doomed = || lock(&txn.core).doomed().is_some();
        let add = AddOffsetsToTxnRequest {
            transactional_id: transactional_id.clone(),
            producer_id: identity.producer_id.0,
            producer_epoch: i32::from(identity.epoch.0),
            group_id: group.group_id.clone(),
        };
        send_retrying(&txn.coordinator, add, deadline, doomed)
            .await
            .map_err(|e| lock(&txn.core).request_failed("AddOffsetsToTxn", &e))?;
        let commit = TxnOffsetCommitRequest {
            transactional_id,
            group_id: group.group_id.clone(),
            producer_id: identity.producer_id.0,
            producer_epoch: i32::from(identity.epoch.0),
            member_id: group.member_id.clone(),
            member_epoch: group.member_epoch,
            topics: offsets_to_wire(&offsets),
        };
        let coordinator = txn.group_coordinator(&group.group_id);
        send_retrying(&coordinator, commit, self.txn_deadline(), doomed)
            .await
            .map_err(|e| lock(&txn.core).request_failed("TxnOffsetCommit", &e))?;
        Ok(())
    }

    /// Commits the open transaction: waits until every record sent in it has its outcome,
    /// then asks the coordinator to commit (EndTxn), which makes the records visible to
    /// read_committed consumers and the offsets sent with the transaction committed. On
    /// success the next transaction may begin.
    ///
    /// If a record of the transaction failed, nothing is committed and the error is
    /// [`TxnErrorKind::Abortable`]: call `abort_transaction`. If the coordinator's answer did
    /// not come in time the error is [`TxnErrorKind::OutcomeUnknown`]: call
    /// `commit_transaction` again (never `abort_transaction`: the commit may have happened).
    /// Fenced ([`TxnErrorKind::Fenced`]) is final.
    pub async fn commit_transaction(&self) -> Result<()> {
        let txn = self.txn()?;
        let _op = txn.op.lock().await;
        let signals = {
            let mut acc = lock(&self.shared.accumulator);
            lock(&txn.core).start_commit()?;
            acc.begin_flush()
        };
        self.shared.wait_flushed(signals).await;
        lock(&txn.core).commit_flushed()?;
        self.end_transaction(txn, true).await
    }

    /// Aborts the open transaction: records not sent yet are failed (their futures get a
    /// [`TxnErrorKind::Abortable`] error), records in flight are waited for, then the
    /// coordinator writes abort markers (EndTxn), so read_committed consumers never see the
    /// transaction's records and its offsets are not committed. The way out of an
    /// abortable error. [`TxnErrorKind::OutcomeUnknown`]: call `abort_transaction` again.
    pub async fn abort_transaction(&self) -> Result<()> {
        let txn = self.txn()?;
        let _op = txn.op.lock().await;
        let (queued, error, signals) = {
            let mut acc = lock(&self.shared.accumulator);
            let mut core = lock(&txn.core);
            core.start_abort()?;
            let error = core.doomed();
            drop(core);
            (acc.abort_queued(), error, acc.begin_flush())
        };
        for batch in queued {
            self.shared.memory.add_permits(batch.reserved_bytes);
            if let Some(e) = &error {
                batch.fail(e.clone());
            }
        }
        // In-flight batches: the leader may still append them (the abort markers written
        // after them cover them); wait so the epoch can switch with nothing in flight.
        self.shared.wait_flushed(signals).await;
        self.end_transaction(txn, false).await
    }

    /// EndTxn for the current epoch, then the switch to the epoch it hands out.
    async fn end_transaction(&self, txn: &Txn, commit: bool) -> Result<()> {
        let identity = self.txn_identity(txn)?;
        let request = EndTxnRequest {
            transactional_id: txn.transactional_id(),
            producer_id: identity.producer_id.0,
            producer_epoch: i32::from(identity.epoch.0),
            commit,
        };
        let resp =
            match send_retrying(&txn.coordinator, request, self.txn_deadline(), || false).await {
                Ok(resp) => resp,
                Err(e) => return Err(lock(&txn.core).end_failed(&e, e.is_retriable())),
            };
        let next = match Identity::from_wire(resp.producer_id, resp.producer_epoch) {
            Ok(next) => next,
            Err(e) => return Err(lock(&txn.core).fatal(TxnErrorKind::Fatal, &e)),
        };
        let mut acc = lock(&self.shared.accumulator);
        if let Err(reason) = acc.switch_epoch(next) {
            return Err(lock(&txn.core).fatal(
                TxnErrorKind::Fatal,
                &ClientError::InvalidArgument(format!("internal: {reason}")),
            ));
        }
        lock(&txn.core).completed();
        tracing::debug!(commit, ?next, "transaction ended");
        Ok(())
    }
}

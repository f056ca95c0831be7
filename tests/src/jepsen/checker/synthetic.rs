//! Histories built by hand, for the checker's and the plots' own tests: a test writes the
//! operations a run would have recorded (clean, or doctored with an anomaly) without a
//! cluster.
//!
//! Each helper appends an invocation and its completion one simulated millisecond apart (or
//! `latency` apart), and the clock moves on by a millisecond after each operation, so the
//! history is in time order as a real one is. [`HistoryBuilder::invoke`] and
//! [`HistoryBuilder::complete`] build anything else, such as overlapping operations.

use std::time::Duration;

use crate::jepsen::history::{
    Change, CommitValue, CommittedValue, GroupPollValue, MembershipValue, NemesisPhase,
    NemesisValue, Op, OpType, Payload, ReadValue, Rebalance, SendValue, TxnIntent, TxnReadValue,
    TxnValue, NEMESIS_PROCESS,
};

/// A transaction's records as the `txn` helpers take them: per partition, `(acknowledged
/// offset, value)` in send order.
pub type TxnWrites<'a> = &'a [(u32, &'a [(u64, &'a str)])];

/// Whether a send came from an idempotent producer (the `idempotent` flag of the history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Producer {
    Idempotent,
    NonIdempotent,
}

/// Appends operations with increasing indices and times.
#[derive(Debug, Clone)]
pub struct HistoryBuilder {
    ops: Vec<Op>,
    now_ns: u64,
    /// How long the helpers' operations take.
    pub latency: Duration,
}

impl Default for HistoryBuilder {
    fn default() -> Self {
        HistoryBuilder::new()
    }
}

impl HistoryBuilder {
    pub fn new() -> HistoryBuilder {
        HistoryBuilder {
            ops: Vec::new(),
            now_ns: 0,
            latency: Duration::from_millis(1),
        }
    }

    /// The history so far.
    pub fn ops(&self) -> Vec<Op> {
        self.ops.clone()
    }

    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    /// Moves the clock on.
    pub fn advance(&mut self, by: Duration) {
        self.now_ns += by.as_nanos() as u64;
    }

    /// Appends one operation line at the current time.
    pub fn push(&mut self, process: i64, kind: OpType, payload: Payload, error: Option<String>) {
        self.ops.push(Op {
            index: self.ops.len() as u64,
            time_ns: self.now_ns,
            process,
            kind,
            payload,
            error,
        });
    }

    pub fn invoke(&mut self, process: i64, payload: Payload) {
        self.push(process, OpType::Invoke, payload, None);
    }

    pub fn complete(&mut self, process: i64, kind: OpType, payload: Payload) {
        let error = (kind != OpType::Ok).then(|| "synthetic failure".to_string());
        self.push(process, kind, payload, error);
    }

    /// An invocation, `latency` later its completion, a millisecond later the next operation.
    fn operation(&mut self, process: i64, invoke: Payload, kind: OpType, complete: Payload) {
        self.invoke(process, invoke);
        self.advance(self.latency);
        self.complete(process, kind, complete);
        self.advance(Duration::from_millis(1));
    }

    fn send(
        &mut self,
        process: i64,
        partition: u32,
        value: &str,
        producer: Producer,
        kind: OpType,
        offset: Option<u64>,
    ) {
        let sent = |offset| {
            Payload::Send(SendValue {
                partition,
                value: value.to_string(),
                offset,
                idempotent: producer == Producer::Idempotent,
            })
        };
        self.operation(process, sent(None), kind, sent(offset));
    }

    /// A send acknowledged at `offset`.
    pub fn send_ok(
        &mut self,
        process: i64,
        partition: u32,
        value: &str,
        offset: u64,
        producer: Producer,
    ) {
        self.send(
            process,
            partition,
            value,
            producer,
            OpType::Ok,
            Some(offset),
        );
    }

    /// A send that certainly had no effect.
    pub fn send_fail(&mut self, process: i64, partition: u32, value: &str, producer: Producer) {
        self.send(process, partition, value, producer, OpType::Fail, None);
    }

    /// A send whose outcome is unknown.
    pub fn send_info(&mut self, process: i64, partition: u32, value: &str, producer: Producer) {
        self.send(process, partition, value, producer, OpType::Info, None);
    }

    fn read(partition: u32, from: u64, records: &[(u64, &str)]) -> ReadValue {
        ReadValue {
            partition,
            from,
            records: records
                .iter()
                .map(|(offset, value)| (*offset, value.to_string()))
                .collect(),
        }
    }

    /// A poll returning `records`.
    pub fn poll_ok(&mut self, process: i64, partition: u32, from: u64, records: &[(u64, &str)]) {
        self.operation(
            process,
            Payload::Poll(Self::read(partition, from, &[])),
            OpType::Ok,
            Payload::Poll(Self::read(partition, from, records)),
        );
    }

    /// A poll completed `fail` or `info` (no records).
    pub fn poll_failed(&mut self, process: i64, partition: u32, from: u64, kind: OpType) {
        let read = Payload::Poll(Self::read(partition, from, &[]));
        self.operation(process, read.clone(), kind, read);
    }

    /// The final read of a partition returning `records`.
    pub fn final_read_ok(
        &mut self,
        process: i64,
        partition: u32,
        from: u64,
        records: &[(u64, &str)],
    ) {
        self.operation(
            process,
            Payload::FinalRead(Self::read(partition, from, &[])),
            OpType::Ok,
            Payload::FinalRead(Self::read(partition, from, records)),
        );
    }

    fn rebalance(changes: &[(Change, &[u32])]) -> Vec<Rebalance> {
        changes
            .iter()
            .map(|(change, partitions)| Rebalance {
                change: *change,
                partitions: partitions.to_vec(),
            })
            .collect()
    }

    /// A group member's poll returning `records` (`(partition, offset, value)`) while its
    /// listener was told `changes`, in order.
    pub fn group_poll(
        &mut self,
        process: i64,
        records: &[(u32, u64, &str)],
        changes: &[(Change, &[u32])],
    ) {
        self.group_read(process, Payload::GroupPoll, records, changes);
    }

    /// A poll of the final group reader.
    pub fn group_final_read(
        &mut self,
        process: i64,
        records: &[(u32, u64, &str)],
        changes: &[(Change, &[u32])],
    ) {
        self.group_read(process, Payload::GroupFinalRead, records, changes);
    }

    fn group_read(
        &mut self,
        process: i64,
        wrap: fn(GroupPollValue) -> Payload,
        records: &[(u32, u64, &str)],
        changes: &[(Change, &[u32])],
    ) {
        let done = GroupPollValue {
            records: records
                .iter()
                .map(|(p, o, v)| (*p, *o, v.to_string()))
                .collect(),
            rebalance: Self::rebalance(changes),
            member_epoch: (!changes.is_empty()).then_some(1),
        };
        self.operation(
            process,
            wrap(GroupPollValue::default()),
            OpType::Ok,
            wrap(done),
        );
    }

    /// A commit of `(partition, next offset)` pairs completed `kind`.
    pub fn commit(&mut self, process: i64, kind: OpType, offsets: &[(u32, u64)]) {
        let value = Payload::Commit(CommitValue {
            offsets: offsets.iter().copied().collect(),
            member_epoch: Some(1),
        });
        self.operation(process, value.clone(), kind, value);
    }

    /// A graceful close whose listener was told `changes`.
    pub fn leave(&mut self, process: i64, changes: &[(Change, &[u32])]) {
        self.operation(
            process,
            Payload::Leave(MembershipValue::default()),
            OpType::Ok,
            Payload::Leave(MembershipValue {
                rebalance: Self::rebalance(changes),
            }),
        );
    }

    /// A member dropped without leaving.
    pub fn crash(&mut self, process: i64) {
        let value = Payload::Crash(MembershipValue::default());
        self.operation(process, value.clone(), OpType::Ok, value);
    }

    /// The committed offsets looked up before the final group read.
    pub fn fetch_committed(&mut self, process: i64, committed: &[(u32, u64)]) {
        self.operation(
            process,
            Payload::FetchCommitted(CommittedValue::default()),
            OpType::Ok,
            Payload::FetchCommitted(CommittedValue {
                committed: committed.iter().copied().collect(),
            }),
        );
    }

    /// A nemesis action, recorded as `info` as history.rs says.
    pub fn nemesis(&mut self, fault: &str, phase: NemesisPhase, nodes: &[i32]) {
        self.push(
            NEMESIS_PROCESS,
            OpType::Info,
            Payload::Nemesis(NemesisValue {
                fault: fault.to_string(),
                phase,
                nodes: nodes.to_vec(),
                detail: String::new(),
            }),
            None,
        );
    }

    /// The value of a transaction's invocation: `writes` without their offsets.
    pub fn txn_value(worker: u32, txn: u64, intent: TxnIntent, writes: TxnWrites<'_>) -> TxnValue {
        TxnValue {
            worker,
            txn,
            intent,
            writes: writes
                .iter()
                .map(|(p, records)| (*p, records.iter().map(|(_, v)| v.to_string()).collect()))
                .collect(),
            acked: Vec::new(),
            commit_ns: None,
        }
    }

    /// One transaction of the `txn` workload, every record acknowledged at its offset, that
    /// completed `kind`: `ok` and `info` asked for the commit half-way through the operation;
    /// `fail` was aborted as planned.
    pub fn txn(
        &mut self,
        process: i64,
        worker: u32,
        txn: u64,
        kind: OpType,
        writes: TxnWrites<'_>,
    ) {
        let intent = if kind == OpType::Fail {
            TxnIntent::Abort
        } else {
            TxnIntent::Commit
        };
        let value = Self::txn_value(worker, txn, intent, writes);
        self.invoke(process, Payload::Txn(value.clone()));
        self.advance(self.latency / 2);
        let commit_ns = (kind != OpType::Fail).then_some(self.now_ns);
        self.advance(self.latency - self.latency / 2);
        let done = TxnValue {
            acked: writes
                .iter()
                .flat_map(|(p, records)| records.iter().map(|(o, v)| (*p, *o, v.to_string())))
                .collect(),
            commit_ns,
            ..value
        };
        self.complete(process, kind, Payload::Txn(done));
        self.advance(Duration::from_millis(1));
    }

    fn txn_read(
        &mut self,
        process: i64,
        wrap: fn(TxnReadValue) -> Payload,
        partition: u32,
        (from, to): (u64, u64),
        records: &[(u64, &str)],
    ) {
        let read = TxnReadValue {
            partition,
            from,
            to: None,
            records: Vec::new(),
        };
        let done = TxnReadValue {
            to: Some(to),
            records: records
                .iter()
                .map(|(offset, value)| (*offset, value.to_string()))
                .collect(),
            ..read.clone()
        };
        self.operation(process, wrap(read), OpType::Ok, wrap(done));
    }

    /// A read_committed poll of the `txn` workload from position `from` to `to`.
    pub fn txn_poll(
        &mut self,
        process: i64,
        partition: u32,
        span: (u64, u64),
        records: &[(u64, &str)],
    ) {
        self.txn_read(process, Payload::TxnPoll, partition, span, records);
    }

    /// A poll of the read_committed final read.
    pub fn txn_final_read(
        &mut self,
        process: i64,
        partition: u32,
        span: (u64, u64),
        records: &[(u64, &str)],
    ) {
        self.txn_read(process, Payload::TxnFinalRead, partition, span, records);
    }

    /// A poll of the read_uncommitted final read.
    pub fn txn_final_read_uncommitted(
        &mut self,
        process: i64,
        partition: u32,
        span: (u64, u64),
        records: &[(u64, &str)],
    ) {
        self.txn_read(
            process,
            Payload::TxnFinalReadUncommitted,
            partition,
            span,
            records,
        );
    }
}

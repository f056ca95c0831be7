//! The history of a fault-suite run: every operation's invocation and completion, and every
//! nemesis action, in the order they happened, one JSON object per line of `history.jsonl`.
//!
//! The checker works from this alone, so everything it needs is here: which process did what,
//! when it was invoked and when it completed, whether it completed `ok`, `fail` (certainly had
//! no effect) or `info` (indeterminate: it may or may not have taken effect), and the values
//! and offsets involved.
//!
//! A line looks like
//! `{"index":7,"time_ns":1200345,"process":3,"type":"ok","f":"send","value":{"partition":1,"value":"3-17","offset":42,"idempotent":false}}`.
//!
//! The `group` workload adds its members' lines: `group_poll` (records as
//! `[partition, offset, value]`, and the partitions the group moved during the poll),
//! `commit` (`[partition, offset]` pairs), `leave`, `crash`, and after the run
//! `fetch_committed` and the final group reader's `group_final_read`, for example
//! `{"index":9,"time_ns":1300000,"process":5,"type":"ok","f":"group_poll","value":{"records":[[2,41,"1-7"]],"rebalance":[{"change":"assigned","partitions":[2]}],"member_epoch":4}}`.
//!
//! The `txn` workload records one `txn` operation per transaction (its values per partition,
//! the outcome its worker chose up front, and on completion the offsets acknowledged and when
//! the commit was first asked for), its read_committed consumers' `txn_poll`s, and after the
//! run `txn_final_read_uncommitted` then `txn_final_read` (read_committed) of every partition,
//! each read with the position it reached, for example
//! `{"index":4,"time_ns":900000,"process":0,"type":"ok","f":"txn","value":{"worker":0,"txn":3,"intent":"commit","writes":[[1,["w0-t3-0","w0-t3-1"]],[4,["w0-t3-2"]]],"acked":[[1,17,"w0-t3-0"],[1,18,"w0-t3-1"],[4,9,"w0-t3-2"]],"commit_ns":850000}}`.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// The process id of nemesis operations (workers are numbered from 0).
pub const NEMESIS_PROCESS: i64 = -1;

/// How an operation line relates to the operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpType {
    /// The process is about to perform the operation.
    Invoke,
    /// It completed and took effect.
    Ok,
    /// It completed and certainly took no effect.
    Fail,
    /// Its outcome is unknown (a write may or may not have been applied). Nemesis actions
    /// are recorded as `info` too, as in Jepsen.
    Info,
}

/// A write of one record with a unique value to one partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendValue {
    pub partition: u32,
    /// Unique across the run: `"{process}-{sequence}"`.
    pub value: String,
    /// The offset the broker acknowledged; only on `ok` completions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Whether the producer was idempotent (duplicates are reported separately for each kind).
    #[serde(default)]
    pub idempotent: bool,
}

/// A read of a partition: a poll during the run, or the final read of everything after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadValue {
    pub partition: u32,
    /// The offset the read started from (the consumer's position), on invocations and
    /// completions.
    pub from: u64,
    /// `(offset, value)` of every record returned, in the order returned; empty on
    /// invocations and on `fail`/`info` completions.
    #[serde(default)]
    pub records: Vec<(u64, String)>,
}

/// A nemesis action: the start or the end of a fault window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NemesisValue {
    /// `kill`, `pause`, `partition`, `lose-unsynced`, `kill-all`, ...
    pub fault: String,
    pub phase: NemesisPhase,
    /// Broker ids affected.
    #[serde(default)]
    pub nodes: Vec<i32>,
    /// Free text (for example "isolate 2 from 1,3").
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NemesisPhase {
    Start,
    Stop,
}

/// A change of a group member's partitions, as its rebalance listener reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// The member owns these partitions from now on (`on_partitions_assigned`).
    Assigned,
    /// The member gives them up in a rebalance, before it reports them free
    /// (`on_partitions_revoked`).
    Revoked,
    /// They were taken away without a chance to commit: the member was fenced or its session
    /// ended (`on_partitions_lost`).
    Lost,
}

/// One call of a member's rebalance listener.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rebalance {
    pub change: Change,
    pub partitions: Vec<u32>,
}

/// A poll of a consumer-group member (the `group` workload), or of the final group reader.
///
/// The listener's callbacks run inside `poll`, so the partitions the group moved during a poll
/// are part of its completion, in the order the listener was called, whatever the outcome: a
/// poll that fails returns no records, but the reconciliation it did stays done. The moves
/// therefore happened between the poll's invocation and its completion, which is all the
/// checker assumes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupPollValue {
    /// `(partition, offset, value)` of every record returned, in the order returned; empty on
    /// invocations and on `fail`/`info` completions.
    #[serde(default)]
    pub records: Vec<(u32, u64, String)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebalance: Vec<Rebalance>,
    /// The member epoch after the poll, on completions that moved partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_epoch: Option<i32>,
}

/// An offset commit of a group member: per partition, the next offset to consume (one past the
/// last record processed).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitValue {
    #[serde(with = "pairs")]
    pub offsets: BTreeMap<u32, u64>,
    /// The member epoch when the commit was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member_epoch: Option<i32>,
}

/// A member leaving the group: `leave` (a graceful `close`, which reports what it owned as
/// revoked, or as lost when it was not a member any more) or `crash` (dropped without leaving:
/// its session has to time out; nothing is reported).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipValue {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rebalance: Vec<Rebalance>,
}

/// The group's committed offsets, looked up from outside the group before the final group
/// read; partitions without a committed offset are absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedValue {
    #[serde(default, with = "pairs")]
    pub committed: BTreeMap<u32, u64>,
}

/// Partition → offset maps as a list of `[partition, offset]` pairs: an `Op`'s payload is
/// flattened into it, and serde reads a flattened map's keys back only as strings.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(map: &BTreeMap<u32, u64>, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(map.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<u32, u64>, D::Error> {
        Ok(Vec::<(u32, u64)>::deserialize(d)?.into_iter().collect())
    }
}

/// What the worker of a transaction chose to do with it before it began.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnIntent {
    Commit,
    Abort,
}

/// One transaction of the `txn` workload: invoked before `begin_transaction`, completed when
/// its worker knows how it ended: `ok` (the commit was acknowledged), `fail` (certainly
/// aborted: the worker aborted it, or it failed before EndTxn(commit) could be sent) or `info`
/// (the commit may or may not have happened).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnValue {
    /// The worker; its transactional id is the same across its producer instances, so its
    /// transactions are sequential (the next begins only after the previous one ended, or
    /// after a new instance fenced the old one).
    pub worker: u32,
    /// The worker's transaction number, from 0.
    pub txn: u64,
    pub intent: TxnIntent,
    /// `(partition, values in send order)`: every record the transaction sends, each value
    /// unique across the run. On invocations and completions.
    pub writes: Vec<(u32, Vec<String>)>,
    /// `(partition, offset, value)` of every record the broker acknowledged (the record is in
    /// the log, whatever the transaction's end); on completions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub acked: Vec<(u32, u64, String)>,
    /// When `commit_transaction` was first called, on the history's clock (`time_ns`); on
    /// completions, absent when it never was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_ns: Option<u64>,
}

/// A read of one partition by the `txn` workload (a poll during the run, or a final read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnReadValue {
    pub partition: u32,
    /// The consumer's position when the read began.
    pub from: u64,
    /// Its position after the read, on `ok` completions. A read_committed consumer stops at
    /// the last stable offset, and skips control batches and aborted records, so this says
    /// how far the read got where `records` cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<u64>,
    /// `(offset, value)` of every record returned, in the order returned.
    #[serde(default)]
    pub records: Vec<(u64, String)>,
}

/// What an operation does, with its value. Serialised as `"f": ..., "value": {...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "f", content = "value", rename_all = "snake_case")]
pub enum Payload {
    Send(SendValue),
    Poll(ReadValue),
    FinalRead(ReadValue),
    Nemesis(NemesisValue),
    /// A group member's poll (the `group` workload).
    GroupPoll(GroupPollValue),
    /// A poll of the fresh member that reads from the committed offsets to the end after the
    /// run.
    GroupFinalRead(GroupPollValue),
    Commit(CommitValue),
    Leave(MembershipValue),
    Crash(MembershipValue),
    FetchCommitted(CommittedValue),
    /// A transaction of the `txn` workload.
    Txn(TxnValue),
    /// A poll of one of the `txn` workload's read_committed consumers during the run.
    TxnPoll(TxnReadValue),
    /// A poll of the read_committed final read after the run.
    TxnFinalRead(TxnReadValue),
    /// A poll of the read_uncommitted final read after the run (aborted records included).
    TxnFinalReadUncommitted(TxnReadValue),
}

/// One line of the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Position in the history, from 0.
    pub index: u64,
    /// Nanoseconds since the run started.
    pub time_ns: u64,
    /// The worker (or [`NEMESIS_PROCESS`]). A worker whose operation ended `info` continues
    /// under a fresh process id, as in Jepsen, so one process never has two operations open.
    pub process: i64,
    #[serde(rename = "type")]
    pub kind: OpType,
    #[serde(flatten)]
    pub payload: Payload,
    /// Why a `fail` or `info` completion failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Writes a history as JSON lines.
pub fn write_jsonl(ops: &[Op], out: impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    for op in ops {
        serde_json::to_writer(&mut out, op)?;
        out.write_all(b"\n")?;
    }
    out.flush()
}

/// Reads a history written by [`write_jsonl`]. A malformed line is an error naming its number.
pub fn read_jsonl(path: &Path) -> io::Result<Vec<Op>> {
    let file = std::fs::File::open(path)?;
    let mut ops = Vec::new();
    for (n, line) in io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let op = serde_json::from_str(&line).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), n + 1),
            )
        })?;
        ops.push(op);
    }
    Ok(ops)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_round_trips_in_the_documented_shape() {
        let op = Op {
            index: 7,
            time_ns: 1_200_345,
            process: 3,
            kind: OpType::Ok,
            payload: Payload::Send(SendValue {
                partition: 1,
                value: "3-17".into(),
                offset: Some(42),
                idempotent: false,
            }),
            error: None,
        };
        let line = serde_json::to_string(&op).unwrap();
        assert_eq!(
            line,
            r#"{"index":7,"time_ns":1200345,"process":3,"type":"ok","f":"send","value":{"partition":1,"value":"3-17","offset":42,"idempotent":false}}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&line).unwrap(), op);
    }

    #[test]
    fn group_lines_round_trip_in_the_documented_shape() {
        let poll = Op {
            index: 9,
            time_ns: 1_300_000,
            process: 5,
            kind: OpType::Ok,
            payload: Payload::GroupPoll(GroupPollValue {
                records: vec![(2, 41, "1-7".into())],
                rebalance: vec![Rebalance {
                    change: Change::Assigned,
                    partitions: vec![2],
                }],
                member_epoch: Some(4),
            }),
            error: None,
        };
        let line = serde_json::to_string(&poll).unwrap();
        assert_eq!(
            line,
            r#"{"index":9,"time_ns":1300000,"process":5,"type":"ok","f":"group_poll","value":{"records":[[2,41,"1-7"]],"rebalance":[{"change":"assigned","partitions":[2]}],"member_epoch":4}}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&line).unwrap(), poll);
        // Partition maps are pairs, which read back through the flattened payload.
        let commit = Op {
            payload: Payload::Commit(CommitValue {
                offsets: [(0, 12), (3, 7)].into_iter().collect(),
                member_epoch: None,
            }),
            ..poll
        };
        let line = serde_json::to_string(&commit).unwrap();
        assert!(line.contains(r#""offsets":[[0,12],[3,7]]"#), "{line}");
        assert_eq!(serde_json::from_str::<Op>(&line).unwrap(), commit);
    }

    #[test]
    fn txn_lines_round_trip_in_the_documented_shape() {
        let op = Op {
            index: 4,
            time_ns: 900_000,
            process: 0,
            kind: OpType::Ok,
            payload: Payload::Txn(TxnValue {
                worker: 0,
                txn: 3,
                intent: TxnIntent::Commit,
                writes: vec![
                    (1, vec!["w0-t3-0".into(), "w0-t3-1".into()]),
                    (4, vec!["w0-t3-2".into()]),
                ],
                acked: vec![
                    (1, 17, "w0-t3-0".into()),
                    (1, 18, "w0-t3-1".into()),
                    (4, 9, "w0-t3-2".into()),
                ],
                commit_ns: Some(850_000),
            }),
            error: None,
        };
        let line = serde_json::to_string(&op).unwrap();
        assert_eq!(
            line,
            r#"{"index":4,"time_ns":900000,"process":0,"type":"ok","f":"txn","value":{"worker":0,"txn":3,"intent":"commit","writes":[[1,["w0-t3-0","w0-t3-1"]],[4,["w0-t3-2"]]],"acked":[[1,17,"w0-t3-0"],[1,18,"w0-t3-1"],[4,9,"w0-t3-2"]],"commit_ns":850000}}"#
        );
        assert_eq!(serde_json::from_str::<Op>(&line).unwrap(), op);
        let read = Op {
            payload: Payload::TxnFinalRead(TxnReadValue {
                partition: 2,
                from: 0,
                to: Some(7),
                records: vec![(3, "w1-t0-0".into())],
            }),
            ..op
        };
        let line = serde_json::to_string(&read).unwrap();
        assert!(
            line.contains(r#""f":"txn_final_read","value":{"partition":2,"from":0,"to":7,"records":[[3,"w1-t0-0"]]}"#),
            "{line}"
        );
        assert_eq!(serde_json::from_str::<Op>(&line).unwrap(), read);
    }
}

//! The details the txn checks report for each anomaly, and how the summary words them: which
//! transaction (worker, number, operation, outcome), which partition, offsets and values, and
//! which read saw what.

use std::fmt;

use serde::Serialize;

use crate::jepsen::history::OpType;

/// Which kind of read saw a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnReadKind {
    /// A read_committed consumer's poll during the run.
    Poll,
    /// The read_committed final read.
    FinalRead,
    /// The read_uncommitted final read.
    FinalReadUncommitted,
}

impl TxnReadKind {
    /// Whether the read was read_committed (and so must never see an aborted or open
    /// transaction).
    pub fn committed(self) -> bool {
        self != TxnReadKind::FinalReadUncommitted
    }
}

/// The read operation (its completion) that returned a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxnReader {
    pub f: TxnReadKind,
    pub process: i64,
    pub op_index: u64,
}

impl fmt::Display for TxnReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.f {
            TxnReadKind::Poll => "read_committed poll",
            TxnReadKind::FinalRead => "read_committed final read",
            TxnReadKind::FinalReadUncommitted => "read_uncommitted final read",
        };
        write!(f, "{what} op {} of process {}", self.op_index, self.process)
    }
}

/// A transaction, as the anomalies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct TxnRef {
    pub worker: u32,
    pub txn: u64,
    /// Its completion (its invocation if it never completed).
    pub op_index: u64,
    /// How it completed: `ok` committed, `fail` aborted, `info` unknown; `None`: never.
    pub outcome: Option<OpType>,
}

impl fmt::Display for TxnRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let outcome = match self.outcome {
            Some(OpType::Ok) => "committed",
            Some(OpType::Fail) => "aborted",
            Some(OpType::Info) => "outcome unknown",
            Some(OpType::Invoke) | None => "never completed",
        };
        write!(
            f,
            "transaction {} of worker {} (op {}, {outcome})",
            self.txn, self.worker, self.op_index
        )
    }
}

/// A value of a transaction and where the final read has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueAt {
    pub value: String,
    pub txn: u64,
    pub offset: u64,
}

/// Why a value read was not expected where it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnexpectedWhy {
    NeverWritten,
    WrongPartition { written_to: u32 },
}

/// The details of one anomaly of the txn workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum TxnAnomaly {
    Lost {
        partition: u32,
        value: String,
        of: TxnRef,
        /// The offset the broker acknowledged for the record, if it did.
        #[serde(skip_serializing_if = "Option::is_none")]
        acked_offset: Option<u64>,
        /// The first read_committed poll that returned it, and at which offset.
        #[serde(skip_serializing_if = "Option::is_none")]
        polled: Option<(u64, TxnReader)>,
    },
    AbortedRead {
        partition: u32,
        offset: u64,
        value: String,
        of: TxnRef,
        read_by: TxnReader,
    },
    Partial {
        of: TxnRef,
        /// Values of the transaction in the read_committed final read, and how many it wrote.
        present: usize,
        written: usize,
        /// The first value missing, and one present.
        missing: (u32, String),
        present_example: (u32, String),
    },
    Duplicated {
        partition: u32,
        value: String,
        /// Every distinct offset the read has it at, ascending.
        offsets: Vec<u64>,
        read: TxnReadKind,
        of: TxnRef,
    },
    Unexpected {
        partition: u32,
        offset: u64,
        value: String,
        why: UnexpectedWhy,
        read_by: TxnReader,
    },
    Reordered {
        partition: u32,
        worker: u32,
        earlier: ValueAt,
        later: ValueAt,
    },
    ReadBeforeCommit {
        partition: u32,
        offset: u64,
        value: String,
        of: TxnRef,
        read_by: TxnReader,
        /// When the read completed, and when the commit was first asked for (`None`: never).
        read_completed_ns: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        commit_ns: Option<u64>,
    },
    InconsistentOffset {
        partition: u32,
        offset: u64,
        /// Every distinct value read there, in the order first read.
        values: Vec<String>,
        /// The first read of each value.
        read_by: Vec<TxnReader>,
    },
    AckOffsetMismatch {
        partition: u32,
        value: String,
        acked_offset: u64,
        /// What the read_uncommitted final read has at the acknowledged offset.
        value_at_acked_offset: Option<String>,
        /// Where that read has the value instead (empty: nowhere).
        read_at: Vec<u64>,
        of: TxnRef,
    },
    FinalReadMissing {
        partition: u32,
        committed_txns: usize,
        /// Which final read has no ok poll of the partition.
        missing: Vec<TxnReadKind>,
    },
    FinalReadIncomplete {
        partition: u32,
        /// The position the read_committed final read reached.
        reached: u64,
        /// Records of the read_uncommitted final read at or past it.
        records_past: usize,
        first_offset: u64,
        first_value: String,
    },
}

impl fmt::Display for TxnAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TxnAnomaly::Lost {
                partition,
                value,
                of,
                acked_offset,
                polled,
            } => {
                write!(f, "partition {partition}: value {value:?} of {of}")?;
                if let Some(offset) = acked_offset {
                    write!(f, ", acknowledged at offset {offset},")?;
                }
                if let Some((offset, reader)) = polled {
                    write!(f, " given at offset {offset} to {reader},")?;
                }
                f.write_str(" is not in the read_committed final read")
            }
            TxnAnomaly::AbortedRead {
                partition,
                offset,
                value,
                of,
                read_by,
            } => write!(
                f,
                "partition {partition} offset {offset}: value {value:?} of {of} read by \
                 {read_by}"
            ),
            TxnAnomaly::Partial {
                of,
                present,
                written,
                missing,
                present_example,
            } => write!(
                f,
                "{of}: {present} of its {written} values are in the read_committed final read \
                 ({:?} in partition {} is, {:?} in partition {} is not)",
                present_example.1, present_example.0, missing.1, missing.0
            ),
            TxnAnomaly::Duplicated {
                partition,
                value,
                offsets,
                read,
                of,
            } => {
                let read = match read {
                    TxnReadKind::FinalReadUncommitted => "the read_uncommitted final read",
                    _ => "the read_committed final read",
                };
                write!(
                    f,
                    "partition {partition}: value {value:?} of {of} is at offsets {offsets:?} \
                     in {read}"
                )
            }
            TxnAnomaly::Unexpected {
                partition,
                offset,
                value,
                why,
                read_by,
            } => {
                write!(
                    f,
                    "partition {partition} offset {offset}: value {value:?} read by {read_by}, "
                )?;
                match why {
                    UnexpectedWhy::NeverWritten => f.write_str("written by no transaction"),
                    UnexpectedWhy::WrongPartition { written_to } => {
                        write!(f, "written to partition {written_to}")
                    }
                }
            }
            TxnAnomaly::Reordered {
                partition,
                worker,
                earlier,
                later,
            } => write!(
                f,
                "partition {partition}, worker {worker}: {:?} (transaction {}) is at offset {} \
                 but {:?} (transaction {}), which it sent after, is at the lower offset {}",
                earlier.value, earlier.txn, earlier.offset, later.value, later.txn, later.offset
            ),
            TxnAnomaly::ReadBeforeCommit {
                partition,
                offset,
                value,
                of,
                read_by,
                read_completed_ns,
                commit_ns,
            } => {
                write!(
                    f,
                    "partition {partition} offset {offset}: value {value:?} of {of} returned by \
                     {read_by}, completed at {:.3}s, ",
                    *read_completed_ns as f64 / 1e9
                )?;
                match commit_ns {
                    Some(c) => write!(
                        f,
                        "before the commit was asked for at {:.3}s",
                        *c as f64 / 1e9
                    ),
                    None => f.write_str("and the commit was never asked for"),
                }
            }
            TxnAnomaly::InconsistentOffset {
                partition,
                offset,
                values,
                read_by,
            } => {
                write!(f, "partition {partition} offset {offset} read as")?;
                for (i, (value, reader)) in values.iter().zip(read_by).enumerate() {
                    let sep = if i == 0 { "" } else { "," };
                    write!(f, "{sep} {value:?} by {reader}")?;
                }
                Ok(())
            }
            TxnAnomaly::AckOffsetMismatch {
                partition,
                value,
                acked_offset,
                value_at_acked_offset,
                read_at,
                of,
            } => {
                write!(
                    f,
                    "partition {partition}: value {value:?} of {of} acknowledged at offset \
                     {acked_offset}, where the read_uncommitted final read has "
                )?;
                match value_at_acked_offset {
                    Some(other) => write!(f, "{other:?}")?,
                    None => f.write_str("nothing")?,
                }
                if read_at.is_empty() {
                    f.write_str("; the value is not in it")
                } else {
                    write!(f, "; the value is at {read_at:?}")
                }
            }
            TxnAnomaly::FinalReadMissing {
                partition,
                committed_txns,
                missing,
            } => {
                let names: Vec<&str> = missing
                    .iter()
                    .map(|k| match k {
                        TxnReadKind::FinalReadUncommitted => "read_uncommitted",
                        _ => "read_committed",
                    })
                    .collect();
                write!(
                    f,
                    "partition {partition}: {committed_txns} committed transaction(s) wrote to \
                     it but it has no ok {} final read",
                    names.join(" nor ")
                )
            }
            TxnAnomaly::FinalReadIncomplete {
                partition,
                reached,
                records_past,
                first_offset,
                first_value,
            } => write!(
                f,
                "partition {partition}: the read_committed final read stopped at offset \
                 {reached} (the last stable offset never got further), but the log holds \
                 {records_past} record(s) past it, the first {first_value:?} at offset \
                 {first_offset}"
            ),
        }
    }
}

//! The details the queue checks report for each anomaly, and how the summary words them: which
//! operations, which partition, which offsets and values.

use std::fmt;

use serde::Serialize;

use crate::jepsen::history::OpType;

/// Which kind of read saw a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadKind {
    Poll,
    FinalRead,
    /// A poll of a consumer-group member, or of the final group reader (the `group`
    /// workload).
    GroupPoll,
}

/// The read operation (its completion) that returned a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reader {
    pub f: ReadKind,
    pub process: i64,
    pub op_index: u64,
}

impl fmt::Display for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.f {
            ReadKind::Poll => "poll",
            ReadKind::FinalRead => "final read",
            ReadKind::GroupPoll => "group poll",
        };
        write!(f, "{what} op {} of process {}", self.op_index, self.process)
    }
}

/// An ok send and where the final read has it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SendAt {
    pub value: String,
    /// The send's completion.
    pub op_index: u64,
    /// Its (lowest) offset in the final read.
    pub offset: u64,
}

/// Why a value read was not expected there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UnexpectedWhy {
    NeverSent,
    /// Its send completed `fail`: it certainly had no effect.
    SendFailed,
    WrongPartition {
        sent_to: u32,
    },
}

/// The details of one anomaly of the queue workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum QueueAnomaly {
    Lost {
        partition: u32,
        value: String,
        /// `None` if its send did not end ok (it was lost after a poll was given it).
        acked_offset: Option<u64>,
        process: i64,
        /// The send's completion (its invocation if it never completed).
        op_index: u64,
        /// The first poll given it, if any, and at which offset.
        #[serde(skip_serializing_if = "Option::is_none")]
        polled: Option<(u64, Reader)>,
    },
    AckOffsetMismatch {
        partition: u32,
        value: String,
        acked_offset: u64,
        /// What the final read has at the acknowledged offset.
        value_at_acked_offset: Option<String>,
        /// Where the final read has the value instead (empty: nowhere).
        read_at: Vec<u64>,
        process: i64,
        op_index: u64,
    },
    Duplicated {
        partition: u32,
        value: String,
        /// Every distinct offset it was read at, ascending.
        offsets: Vec<u64>,
        idempotent: bool,
        /// How its send completed (`None`: it never did).
        send_outcome: Option<OpType>,
        process: i64,
        first_read_by: Reader,
    },
    InconsistentOffset {
        partition: u32,
        offset: u64,
        /// Every distinct value read there, in the order first read.
        values: Vec<String>,
        /// The first read of each value.
        read_by: Vec<Reader>,
    },
    Reordered {
        partition: u32,
        process: i64,
        earlier: SendAt,
        later: SendAt,
    },
    Unexpected {
        partition: u32,
        value: String,
        offset: u64,
        why: UnexpectedWhy,
        read_by: Reader,
    },
    NonMonotonicPoll {
        partition: u32,
        process: i64,
        op_index: u64,
        /// The highest offset the consumer had been given before.
        previous_offset: u64,
        offset: u64,
    },
    Skipped {
        partition: u32,
        process: i64,
        /// The poll whose record came after the gap.
        op_index: u64,
        /// The first offset the consumer should have been given next (its previous record's
        /// offset + 1, or the position its first poll started from).
        expected_from: u64,
        /// The offset it was given instead.
        offset: u64,
        /// Records of the final read in `expected_from..offset`.
        skipped_records: usize,
        first_skipped_offset: u64,
        first_skipped_value: String,
    },
    FinalReadMissing {
        partition: u32,
        ok_sends: usize,
    },
}

impl fmt::Display for QueueAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueAnomaly::Lost {
                partition,
                value,
                acked_offset,
                process,
                op_index,
                polled,
            } => {
                write!(
                    f,
                    "partition {partition}: value {value:?} (send op {op_index}, process \
                     {process})"
                )?;
                if let Some(offset) = acked_offset {
                    write!(f, " acknowledged at offset {offset}")?;
                }
                if let Some((offset, reader)) = polled {
                    write!(f, " given at offset {offset} to {reader}")?;
                }
                f.write_str(" is not in the final read")
            }
            QueueAnomaly::AckOffsetMismatch {
                partition,
                value,
                acked_offset,
                value_at_acked_offset,
                read_at,
                process,
                op_index,
            } => {
                write!(
                    f,
                    "partition {partition}: value {value:?} (send op {op_index}, process \
                     {process}) acknowledged at offset {acked_offset}, where the final read has "
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
            QueueAnomaly::Duplicated {
                partition,
                value,
                offsets,
                idempotent,
                send_outcome,
                process,
                first_read_by,
            } => {
                let producer = if *idempotent {
                    "idempotent"
                } else {
                    "non-idempotent"
                };
                let outcome = match send_outcome {
                    Some(OpType::Ok) => "ok",
                    Some(OpType::Info) => "info",
                    Some(OpType::Fail) => "fail",
                    Some(OpType::Invoke) | None => "never completed",
                };
                write!(
                    f,
                    "partition {partition}: value {value:?} of {producer} process {process} \
                     (send {outcome}) read at offsets {offsets:?}, first by {first_read_by}"
                )
            }
            QueueAnomaly::InconsistentOffset {
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
            QueueAnomaly::Reordered {
                partition,
                process,
                earlier,
                later,
            } => write!(
                f,
                "partition {partition}, process {process}: {:?} (send op {}) is at offset {} \
                 but the earlier {:?} (send op {}) at offset {}",
                later.value,
                later.op_index,
                later.offset,
                earlier.value,
                earlier.op_index,
                earlier.offset
            ),
            QueueAnomaly::Unexpected {
                partition,
                value,
                offset,
                why,
                read_by,
            } => {
                write!(
                    f,
                    "partition {partition} offset {offset}: value {value:?} read by {read_by}, "
                )?;
                match why {
                    UnexpectedWhy::NeverSent => f.write_str("never sent"),
                    UnexpectedWhy::SendFailed => f.write_str("whose send failed"),
                    UnexpectedWhy::WrongPartition { sent_to } => {
                        write!(f, "sent to partition {sent_to}")
                    }
                }
            }
            QueueAnomaly::NonMonotonicPoll {
                partition,
                process,
                op_index,
                previous_offset,
                offset,
            } => write!(
                f,
                "partition {partition}, process {process}: poll op {op_index} returned offset \
                 {offset} after offset {previous_offset}"
            ),
            QueueAnomaly::Skipped {
                partition,
                process,
                op_index,
                expected_from,
                offset,
                skipped_records,
                first_skipped_offset,
                first_skipped_value,
            } => write!(
                f,
                "partition {partition}, process {process}: poll op {op_index} jumped from \
                 offset {expected_from} to {offset}, skipping {skipped_records} record(s), \
                 the first {first_skipped_value:?} at offset {first_skipped_offset}"
            ),
            QueueAnomaly::FinalReadMissing {
                partition,
                ok_sends,
            } => write!(
                f,
                "partition {partition}: {ok_sends} ok send(s) but no ok final read"
            ),
        }
    }
}

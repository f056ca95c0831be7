//! The details the group checks report for each anomaly, and how the summary words them: which
//! members, which operations, which partition, offsets and values.

use std::fmt;

use serde::Serialize;

/// How a member's hold on a partition ended, as its listener or the workload recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Ending {
    Revoked,
    Lost,
    /// Reported assigned again without being revoked or lost first.
    Reassigned,
    /// Closed gracefully (`leave`).
    Left,
    /// Dropped without leaving (`crash`).
    Crashed,
}

impl fmt::Display for Ending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Ending::Revoked => "revoked",
            Ending::Lost => "lost",
            Ending::Reassigned => "assigned again",
            Ending::Left => "left",
            Ending::Crashed => "crashed",
        })
    }
}

/// One member's hold on a partition, by history operation indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hold {
    pub process: i64,
    /// The completion of the poll whose listener reported the partition assigned.
    pub assigned_op: u64,
    /// The invocation of the operation that ended the hold, and how; `None`: held to the end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended: Option<(u64, Ending)>,
    /// The invocation of the member's last ok commit of the partition during the hold: the
    /// coordinator counted it the owner from the assignment up to at least there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proven_until_op: Option<u64>,
}

impl fmt::Display for Hold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "process {} (assigned by op {}",
            self.process, self.assigned_op
        )?;
        if let Some(op) = self.proven_until_op {
            write!(f, ", committed it in op {op}")?;
        }
        match self.ended {
            Some((op, ending)) => write!(f, ", {ending} at op {op})"),
            None => f.write_str(", held to the end)"),
        }
    }
}

/// The details of one anomaly of the group workload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum GroupAnomaly {
    GroupLost {
        partition: u32,
        offset: u64,
        value: String,
        /// The highest offset committed for the partition (ok commits and the committed
        /// offsets looked up before the final group read).
        committed_past: u64,
        /// The operation that committed it.
        committed_by_op: u64,
    },
    FinalReadIncomplete {
        partition: u32,
        /// Records of the final read that no member was given, at or above `committed_past`.
        unconsumed: usize,
        first_offset: u64,
        first_value: String,
        committed_past: u64,
    },
    CommitRegression {
        partition: u32,
        process: i64,
        /// The later commit's completion, and its offset.
        op_index: u64,
        offset: u64,
        earlier_process: i64,
        earlier_op_index: u64,
        earlier_offset: u64,
        /// A commit of the partition whose outcome is unknown, at or below `offset`, that may
        /// have been applied after the earlier one (its invocation).
        #[serde(skip_serializing_if = "Option::is_none")]
        explained_by_op: Option<u64>,
    },
    Ownership {
        partition: u32,
        first: Hold,
        second: Hold,
    },
    Redelivered {
        partition: u32,
        offset: u64,
        value: String,
        /// How many group polls returned it (the final group read's included).
        deliveries: usize,
        /// `(process, op_index)` of the first two.
        first_readers: Vec<(i64, u64)>,
    },
    UnownedRecords {
        partition: u32,
        process: i64,
        op_index: u64,
        records: usize,
        first_offset: u64,
    },
}

impl fmt::Display for GroupAnomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupAnomaly::GroupLost {
                partition,
                offset,
                value,
                committed_past,
                committed_by_op,
            } => write!(
                f,
                "partition {partition}: offset {offset} ({value:?}) was given to no member, but \
                 offset {committed_past} was committed (op {committed_by_op})"
            ),
            GroupAnomaly::FinalReadIncomplete {
                partition,
                unconsumed,
                first_offset,
                first_value,
                committed_past,
            } => write!(
                f,
                "partition {partition}: {unconsumed} records at or above the committed offset \
                 {committed_past} were given to no member, the first at offset {first_offset} \
                 ({first_value:?})"
            ),
            GroupAnomaly::CommitRegression {
                partition,
                process,
                op_index,
                offset,
                earlier_process,
                earlier_op_index,
                earlier_offset,
                explained_by_op,
            } => {
                write!(
                    f,
                    "partition {partition}: process {process} committed {offset} (op \
                     {op_index}) after process {earlier_process} had committed \
                     {earlier_offset} (op {earlier_op_index})"
                )?;
                if let Some(op) = explained_by_op {
                    write!(f, "; the commit invoked in op {op} may have landed late")?;
                }
                Ok(())
            }
            GroupAnomaly::Ownership {
                partition,
                first,
                second,
            } => write!(f, "partition {partition}: held by {first} and by {second}"),
            GroupAnomaly::Redelivered {
                partition,
                offset,
                value,
                deliveries,
                first_readers,
            } => {
                let readers: Vec<String> = first_readers
                    .iter()
                    .map(|(process, op)| format!("op {op} of process {process}"))
                    .collect();
                write!(
                    f,
                    "partition {partition}: offset {offset} ({value:?}) given {deliveries} \
                     times, first to {}",
                    readers.join(" and ")
                )
            }
            GroupAnomaly::UnownedRecords {
                partition,
                process,
                op_index,
                records,
                first_offset,
            } => write!(
                f,
                "partition {partition}: poll op {op_index} of process {process} returned \
                 {records} records from offset {first_offset} without owning the partition"
            ),
        }
    }
}

//! What the group coordinator writes to its partition of `__consumer_offsets`: one JSON value
//! per record (keyed by group id), so the log can be read with any consumer when debugging.
//! Replaying the records of a partition in order rebuilds every group it holds; a `snapshot`
//! record replaces everything before it.
//!
//! Offsets committed inside a transaction (TxnOffsetCommit) are written as `txn_offsets`
//! records and held aside per producer id ([`TxnPending`]) until the transaction's COMMIT or
//! ABORT marker (a control batch the transaction coordinator had appended to this partition)
//! settles them: replay reads those markers as [`CoordRecord::TxnMarker`].

use std::collections::BTreeMap;

use bytes::Bytes;
use rafka_protocol::{BatchBuilder, BatchIter, BatchOptions, Offset, Timestamp};
use serde::{Deserialize, Serialize};

use super::assignor::Tp;
use super::state::{Committed, Group, GroupMeta};
use crate::log::Log;

/// The key of snapshot records (group ids are keys of the others; a group may be called
/// "snapshot" too, so the key only narrows the search and the value decides).
pub const SNAPSHOT_KEY: &str = "snapshot";

/// One coordinator record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CoordRecord {
    /// Committed offsets of a group (one offset commit request).
    Offsets {
        group: String,
        offsets: Vec<(Tp, Committed)>,
    },
    /// The whole persisted state of a group after a change.
    Group { group: String, meta: GroupMeta },
    /// A group with neither members nor offsets is forgotten.
    Removed { group: String },
    /// Every group of the partition, and the offsets of open transactions: replaces all
    /// earlier records.
    Snapshot {
        groups: Vec<SnapshotGroup>,
        #[serde(default)]
        pending: Vec<(i64, Vec<GroupOffsets>)>,
    },
    /// Written by a new coordinator before it reads the log: once it is committed, every
    /// earlier record is committed too and in this replica's log.
    Barrier { node: u64, term: u64 },
    /// Offsets of a group committed inside producer `producer_id`'s open transaction.
    TxnOffsets {
        producer_id: i64,
        group: String,
        offsets: Vec<(Tp, Committed)>,
    },
    /// Never written as a record: how replay presents a transaction marker in the log.
    TxnMarker { producer_id: i64, commit: bool },
}

/// Offsets waiting for their transaction's outcome: producer id -> (group, offsets) in the
/// order they were committed.
pub type TxnPending = BTreeMap<i64, Vec<GroupOffsets>>;

/// A group and offsets committed for it.
pub type GroupOffsets = (String, Vec<(Tp, Committed)>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotGroup {
    pub group: String,
    pub meta: GroupMeta,
    pub offsets: Vec<(Tp, Committed)>,
}

impl CoordRecord {
    fn key(&self) -> &str {
        match self {
            CoordRecord::Offsets { group, .. }
            | CoordRecord::Group { group, .. }
            | CoordRecord::TxnOffsets { group, .. }
            | CoordRecord::Removed { group } => group,
            CoordRecord::TxnMarker { .. } => "marker",
            CoordRecord::Snapshot { .. } => SNAPSHOT_KEY,
            CoordRecord::Barrier { .. } => "barrier",
        }
    }
}

/// Encodes records as one batch.
pub fn encode(records: &[CoordRecord]) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    let now = Timestamp::now();
    for r in records {
        let value = serde_json::to_vec(r).expect("coordinator records serialize");
        b.append(Some(now), Some(r.key().as_bytes()), Some(&value), &[]);
    }
    b.build()
}

/// Decodes the records of `batches` (as read from the log), skipping control batches. A
/// record that does not parse is an error: the offsets log is only written by coordinators.
pub fn decode(batches: Bytes) -> Result<Vec<CoordRecord>, String> {
    let mut out = Vec::new();
    for batch in BatchIter::new(batches) {
        let batch = batch.map_err(|e| e.to_string())?;
        // Raft's own entries (leader blanks, membership changes) are control batches; so are
        // transaction markers, which settle pending transactional offsets.
        let h = batch.header();
        if h.attributes.is_control() {
            if h.producer_id != rafka_protocol::ProducerId::NONE {
                let kind = batch
                    .records()
                    .next()
                    .and_then(|r| r.ok())
                    .and_then(|r| r.key)
                    .and_then(|k| rafka_protocol::batch::control_type(&k));
                let producer_id = h.producer_id.0;
                match kind {
                    Some(rafka_protocol::api::control_type::COMMIT) => {
                        out.push(CoordRecord::TxnMarker {
                            producer_id,
                            commit: true,
                        })
                    }
                    Some(rafka_protocol::api::control_type::ABORT) => {
                        out.push(CoordRecord::TxnMarker {
                            producer_id,
                            commit: false,
                        })
                    }
                    _ => {}
                }
            }
            continue;
        }
        for rec in batch.records() {
            let rec = rec.map_err(|e| e.to_string())?;
            let value = rec.value.unwrap_or_default();
            let r: CoordRecord = serde_json::from_slice(&value)
                .map_err(|e| format!("record at offset {}: {e}", rec.offset.0))?;
            out.push(r);
        }
    }
    Ok(out)
}

/// Hands `f` the committed part of `log` (log start to `high_watermark`) in chunks of whole
/// batches, each with the offset it starts at.
pub fn read_committed(
    log: &Log,
    high_watermark: Offset,
    mut f: impl FnMut(Offset, Bytes) -> crate::Result<()>,
) -> crate::Result<()> {
    let mut at = log.log_start_offset();
    while at < high_watermark {
        let read = log.read(at, 1 << 20, Some(high_watermark))?;
        if read.next_offset <= at {
            break;
        }
        f(at, read.batches)?;
        at = read.next_offset;
    }
    Ok(())
}

/// Where a partition of `__consumer_offsets` may be cut: the base of the segment that holds
/// its latest snapshot record below `high_watermark` (everything before a snapshot is
/// replaced by it, so whole segments before that one are dead), or `None` when nothing can
/// go. Reads the committed part of the log, which snapshots keep short.
pub fn snapshot_cut(log: &Log, high_watermark: Offset) -> crate::Result<Option<Offset>> {
    let mut latest = None;
    read_committed(log, high_watermark, |_, batches| {
        for batch in BatchIter::new(batches) {
            let Ok(batch) = batch else { break };
            if batch.header().attributes.is_control() {
                continue;
            }
            for rec in batch.records().flatten() {
                if rec.key.as_deref() == Some(SNAPSHOT_KEY.as_bytes())
                    && is_snapshot(rec.value.as_deref().unwrap_or_default())
                {
                    latest = Some(rec.offset);
                }
            }
        }
        Ok(())
    })?;
    let Some(snapshot) = latest else {
        return Ok(None);
    };
    let base = log
        .segment_bases()
        .into_iter()
        .filter(|b| *b <= snapshot)
        .max();
    Ok(base.filter(|b| *b > log.log_start_offset()))
}

/// Whether a record value is a snapshot record (reads only its type tag).
fn is_snapshot(value: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Tag {
        #[serde(rename = "type")]
        kind: String,
    }
    serde_json::from_slice::<Tag>(value).is_ok_and(|t| t.kind == "snapshot")
}

/// Applies one record to the groups of a partition and its pending transactional offsets.
pub fn apply(groups: &mut BTreeMap<String, Group>, pending: &mut TxnPending, record: CoordRecord) {
    match record {
        CoordRecord::TxnOffsets {
            producer_id,
            group,
            offsets,
        } => {
            pending
                .entry(producer_id)
                .or_default()
                .push((group, offsets));
        }
        CoordRecord::TxnMarker {
            producer_id,
            commit,
        } => settle(groups, pending, producer_id, commit),
        CoordRecord::Offsets { group, offsets } => {
            let g = groups.entry(group).or_default();
            for (tp, c) in offsets {
                g.offsets.insert(tp, c);
            }
        }
        CoordRecord::Group { group, meta } => {
            groups.entry(group).or_default().meta = meta;
        }
        CoordRecord::Removed { group } => {
            groups.remove(&group);
        }
        CoordRecord::Snapshot {
            groups: all,
            pending: open,
        } => {
            groups.clear();
            *pending = open.into_iter().collect();
            for s in all {
                let g = groups.entry(s.group).or_default();
                g.meta = s.meta;
                g.offsets = s.offsets.into_iter().collect();
            }
        }
        CoordRecord::Barrier { .. } => {}
    }
}

/// Settles producer `producer_id`'s pending offsets: committed into their groups, or dropped.
pub fn settle(
    groups: &mut BTreeMap<String, Group>,
    pending: &mut TxnPending,
    producer_id: i64,
    commit: bool,
) {
    let Some(list) = pending.remove(&producer_id) else {
        return;
    };
    if !commit {
        return;
    }
    for (group, offsets) in list {
        let g = groups.entry(group).or_default();
        for (tp, c) in offsets {
            g.offsets.insert(tp, c);
        }
    }
}

/// The snapshot record of `groups` and the pending transactional offsets.
pub fn snapshot(groups: &BTreeMap<String, Group>, pending: &TxnPending) -> CoordRecord {
    CoordRecord::Snapshot {
        pending: pending
            .iter()
            .map(|(pid, list)| (*pid, list.clone()))
            .collect(),
        groups: groups
            .iter()
            .map(|(id, g)| SnapshotGroup {
                group: id.clone(),
                meta: g.meta.clone(),
                offsets: g
                    .offsets
                    .iter()
                    .map(|(tp, c)| (tp.clone(), c.clone()))
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_through_a_batch() {
        let recs = vec![
            CoordRecord::Barrier { node: 1, term: 3 },
            CoordRecord::Offsets {
                group: "g".into(),
                offsets: vec![(
                    ("t".into(), 2),
                    Committed {
                        offset: 42,
                        metadata: "m".into(),
                        timestamp_ms: 7,
                    },
                )],
            },
            CoordRecord::Removed { group: "h".into() },
        ];
        let batch = encode(&recs);
        assert_eq!(decode(batch).unwrap(), recs);
    }

    #[test]
    fn replay_with_a_snapshot_rebuilds_the_same_state() {
        let mut groups = BTreeMap::new();
        let c = |o| Committed {
            offset: o,
            metadata: String::new(),
            timestamp_ms: 0,
        };
        let mut pending = TxnPending::new();
        apply(
            &mut groups,
            &mut pending,
            CoordRecord::Offsets {
                group: "a".into(),
                offsets: vec![(("t".into(), 0), c(5))],
            },
        );
        apply(
            &mut groups,
            &mut pending,
            CoordRecord::TxnOffsets {
                producer_id: 9,
                group: "a".into(),
                offsets: vec![(("t".into(), 0), c(8))],
            },
        );
        let snap = snapshot(&groups, &pending);
        let mut replayed = BTreeMap::new();
        let mut replayed_pending = TxnPending::new();
        apply(
            &mut replayed,
            &mut replayed_pending,
            CoordRecord::Offsets {
                group: "stale".into(),
                offsets: vec![],
            },
        );
        apply(&mut replayed, &mut replayed_pending, snap);
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed["a"].offsets[&("t".to_string(), 0)].offset, 5);
        // The transaction's offsets count only once its COMMIT marker is replayed.
        apply(
            &mut replayed,
            &mut replayed_pending,
            CoordRecord::TxnMarker {
                producer_id: 9,
                commit: true,
            },
        );
        assert_eq!(replayed["a"].offsets[&("t".to_string(), 0)].offset, 8);
        assert!(replayed_pending.is_empty());
    }

    #[test]
    fn markers_in_the_log_decode_as_settling_records() {
        let marker = rafka_protocol::batch::transaction_marker(
            rafka_protocol::ProducerId(4),
            rafka_protocol::ProducerEpoch(2),
            false,
            Timestamp(1),
        );
        assert_eq!(
            decode(marker).unwrap(),
            vec![CoordRecord::TxnMarker {
                producer_id: 4,
                commit: false
            }]
        );
    }
}

//! What the group coordinator writes to its partition of `__consumer_offsets`: one JSON value
//! per record (keyed by group id), so the log can be read with any consumer when debugging.
//! Replaying the records of a partition in order rebuilds every group it holds; a `snapshot`
//! record replaces everything before it.

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
    /// Every group of the partition: replaces all earlier records.
    Snapshot { groups: Vec<SnapshotGroup> },
    /// Written by a new coordinator before it reads the log: once it is committed, every
    /// earlier record is committed too and in this replica's log.
    Barrier { node: u64, term: u64 },
}

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
            | CoordRecord::Removed { group } => group,
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
        // Raft's own entries (leader blanks, membership changes) are control batches.
        if batch.header().attributes.is_control() {
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

/// Applies one record to the groups of a partition.
pub fn apply(groups: &mut BTreeMap<String, Group>, record: CoordRecord) {
    match record {
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
        CoordRecord::Snapshot { groups: all } => {
            groups.clear();
            for s in all {
                let g = groups.entry(s.group).or_default();
                g.meta = s.meta;
                g.offsets = s.offsets.into_iter().collect();
            }
        }
        CoordRecord::Barrier { .. } => {}
    }
}

/// The snapshot record of `groups`.
pub fn snapshot(groups: &BTreeMap<String, Group>) -> CoordRecord {
    CoordRecord::Snapshot {
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
        apply(
            &mut groups,
            CoordRecord::Offsets {
                group: "a".into(),
                offsets: vec![(("t".into(), 0), c(5))],
            },
        );
        let snap = snapshot(&groups);
        let mut replayed = BTreeMap::new();
        apply(
            &mut replayed,
            CoordRecord::Offsets {
                group: "stale".into(),
                offsets: vec![],
            },
        );
        apply(&mut replayed, snap);
        assert_eq!(replayed.len(), 1);
        assert_eq!(replayed["a"].offsets[&("t".to_string(), 0)].offset, 5);
    }
}

//! Raft entries as record batches: the one place that converts between the two.
//!
//! Every entry is exactly one batch in the partition (or controller) log, so the Raft index of
//! an entry is its batch's ordinal in the log, and its term is the batch's partition leader
//! epoch. Normal entries are the producer's batch as it arrived. A leader's blank entry and a
//! membership change are control batches (attribute bit 0x20) holding one record whose key is
//! a Kafka control key (version 0, a type of our own, above Kafka's COMMIT/ABORT) and whose
//! value is the membership in JSON. Consumers skip control batches, as they skip transaction
//! markers; the offsets they take keep the offset sequence identical on every replica.

use bytes::Bytes;
use openraft::{CommittedLeaderId, EntryPayload};
use rafka_protocol::batch::{BatchBuilder, BatchOptions};
use rafka_protocol::RecordBatch;

use crate::error::{Error, Result};
use crate::types::{Batch, Entry, LogId, Membership, NodeId};

/// Control record type of a leader's blank entry.
pub const CONTROL_TYPE_RAFT_BLANK: i16 = 100;
/// Control record type of a membership entry.
pub const CONTROL_TYPE_RAFT_MEMBERSHIP: i16 = 101;

fn control_key(kind: i16) -> [u8; 4] {
    let mut key = [0u8; 4];
    key[2..4].copy_from_slice(&kind.to_be_bytes());
    key
}

fn control_batch(kind: i16, value: Option<&[u8]>) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions {
        control: true,
        ..BatchOptions::default()
    });
    // No timestamp: every replica builds this batch itself from the entry, so it must come
    // out byte for byte the same everywhere (a clock reading would not).
    b.append(None, Some(&control_key(kind)), value, &[]);
    b.build()
}

/// The batch to store for `entry`. Offsets and the leader epoch (the entry's term) are
/// stamped by the log on append.
pub fn to_batch(entry: &Entry) -> Bytes {
    match &entry.payload {
        EntryPayload::Normal(Batch(bytes)) => bytes.clone(),
        EntryPayload::Blank => control_batch(CONTROL_TYPE_RAFT_BLANK, None),
        EntryPayload::Membership(m) => {
            let json = serde_json::to_vec(m).expect("a membership always serialises");
            control_batch(CONTROL_TYPE_RAFT_MEMBERSHIP, Some(&json))
        }
    }
}

/// The log id of the entry stored at Raft index `index` in a batch with `term` as its epoch.
pub fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, NodeId::default()), index)
}

/// Turns a stored batch back into the entry at `index`.
pub fn from_batch(index: u64, stored: Bytes) -> Result<Entry> {
    let bad = |reason: String| Error::BadEntry { index, reason };
    let batch = RecordBatch::parse(stored.clone()).map_err(|e| bad(e.to_string()))?;
    let header = *batch.header();
    let term = u64::try_from(header.partition_leader_epoch.0)
        .map_err(|_| bad(format!("negative term {}", header.partition_leader_epoch.0)))?;
    let payload = if header.attributes.is_control() {
        let record = batch
            .records()
            .next()
            .ok_or_else(|| bad("control batch without a record".into()))?
            .map_err(|e| bad(e.to_string()))?;
        let key = record.key.unwrap_or_default();
        if key.len() < 4 {
            return Err(bad("control record key too short".into()));
        }
        match i16::from_be_bytes([key[2], key[3]]) {
            CONTROL_TYPE_RAFT_BLANK => EntryPayload::Blank,
            CONTROL_TYPE_RAFT_MEMBERSHIP => {
                let value = record.value.unwrap_or_default();
                let m: Membership =
                    serde_json::from_slice(&value).map_err(|e| bad(format!("membership: {e}")))?;
                EntryPayload::Membership(m)
            }
            // Other control batches (transaction markers, later) are normal entries to Raft.
            _ => EntryPayload::Normal(Batch(stored)),
        }
    } else {
        EntryPayload::Normal(Batch(stored))
    };
    Ok(Entry {
        log_id: log_id(term, index),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn stamp(mut raw: Vec<u8>, term: i32) -> Bytes {
        rafka_protocol::batch::set_partition_leader_epoch(
            &mut raw,
            rafka_protocol::LeaderEpoch(term),
        );
        Bytes::from(raw)
    }

    #[test]
    fn blank_and_membership_round_trip_through_batches() {
        let blank = Entry {
            log_id: log_id(3, 7),
            payload: EntryPayload::Blank,
        };
        let back = from_batch(7, stamp(to_batch(&blank).to_vec(), 3)).unwrap();
        assert_eq!(back.log_id, log_id(3, 7));
        assert!(matches!(back.payload, EntryPayload::Blank));

        let voters = BTreeSet::from([1u64, 2, 3]);
        let nodes: BTreeMap<u64, openraft::BasicNode> = voters
            .iter()
            .map(|n| (*n, openraft::BasicNode::new(format!("h{n}:7093"))))
            .collect();
        let m = Membership::new(vec![voters], nodes);
        let entry = Entry {
            log_id: log_id(2, 0),
            payload: EntryPayload::Membership(m.clone()),
        };
        let back = from_batch(0, stamp(to_batch(&entry).to_vec(), 2)).unwrap();
        match back.payload {
            EntryPayload::Membership(got) => assert_eq!(got, m),
            other => panic!("expected membership, got {other:?}"),
        }
    }

    #[test]
    fn control_batches_are_the_same_bytes_on_every_replica() {
        let blank = Entry {
            log_id: log_id(3, 7),
            payload: EntryPayload::Blank,
        };
        let first = to_batch(&blank);
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert_eq!(to_batch(&blank), first);
    }

    #[test]
    fn a_normal_batch_is_stored_as_it_is() {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.append(None, Some(b"k"), Some(b"v"), &[]);
        let raw = b.build();
        let entry = Entry {
            log_id: log_id(1, 5),
            payload: EntryPayload::Normal(Batch(raw.clone())),
        };
        assert_eq!(to_batch(&entry), raw);
        let back = from_batch(5, stamp(raw.to_vec(), 1)).unwrap();
        assert_eq!(back.log_id.leader_id.term, 1);
        assert!(matches!(back.payload, EntryPayload::Normal(_)));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(from_batch(1, Bytes::from_static(b"not a batch")).is_err());
    }
}

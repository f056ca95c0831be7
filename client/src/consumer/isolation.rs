//! What a consumer sees of transactions: [`IsolationLevel`], and [`AbortedFilter`], which
//! drops the records of aborted transactions from a read_committed fetch.
//!
//! With read_committed the broker returns records only below the partition's last stable
//! offset (nothing of a transaction still open), and lists the aborted transactions that may
//! overlap what it returned: (producer id, first offset). Each one runs from its first offset
//! to its producer's ABORT marker (a control batch). The filter walks the batches in offset
//! order, as Kafka's consumer does (`Fetcher`/`CompletedFetch`): an aborted transaction becomes
//! *open* once a batch reaches its first offset; a transactional data batch of a producer with
//! an open aborted transaction is dropped; that producer's ABORT marker closes it. Batches of
//! other producers, non-transactional batches and committed transactions pass. Control
//! batches themselves are never returned to the application (`decode_records` skips them).
//!
//! Pure state, no I/O: one filter per partition per fetch response.

use std::collections::HashSet;

use rafka_protocol::api::{control_type, isolation};
use rafka_protocol::messages::AbortedTransaction;
use rafka_protocol::BatchHeader;

/// Which records a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationLevel {
    /// Everything up to the high watermark: records of open and aborted transactions too
    /// (Kafka's default).
    #[default]
    ReadUncommitted,
    /// Only records outside transactions and of committed transactions, up to the last stable
    /// offset (so a partition with an open transaction stops there until it ends).
    ReadCommitted,
}

impl IsolationLevel {
    /// The Fetch request's `isolation_level`.
    pub fn wire(self) -> i32 {
        match self {
            IsolationLevel::ReadUncommitted => isolation::READ_UNCOMMITTED,
            IsolationLevel::ReadCommitted => isolation::READ_COMMITTED,
        }
    }
}

/// Drops the batches of aborted transactions from one partition's fetched batches, visited in
/// offset order (see the module doc).
#[derive(Debug, Default)]
pub struct AbortedFilter {
    /// Aborted transactions whose first offset no batch has reached yet, as (first offset,
    /// producer id), sorted so the smallest first offset is last (popped first).
    pending: Vec<(u64, i64)>,
    /// Producers inside an aborted transaction at the current batch: from the transaction's
    /// first offset until their ABORT marker.
    open: HashSet<i64>,
}

impl AbortedFilter {
    /// A filter for one fetch result's `aborted_transactions`.
    pub fn new(aborted: &[AbortedTransaction]) -> AbortedFilter {
        let mut pending: Vec<(u64, i64)> = aborted
            .iter()
            .map(|a| (a.first_offset, a.producer_id))
            .collect();
        pending.sort_unstable_by(|a, b| b.cmp(a));
        AbortedFilter {
            pending,
            open: HashSet::new(),
        }
    }

    /// Whether the batch with this header is to be dropped. `abort_marker`: the batch is a
    /// control batch holding an ABORT marker. Must see every batch in offset order, control
    /// batches included (they close aborted transactions).
    pub fn skip(&mut self, header: &BatchHeader, abort_marker: bool) -> bool {
        let producer_id = header.producer_id.0;
        if producer_id < 0 {
            return false; // no producer id: never part of a transaction
        }
        // Aborted transactions starting within or before this batch are open from here. (The
        // last offset, as Kafka: a transaction's first offset is the base offset of one of its
        // producer's batches, so for that producer's batches this is the same as the base.)
        let last = header.last_offset().0;
        while let Some(&(first, pid)) = self.pending.last() {
            if first > last {
                break;
            }
            self.open.insert(pid);
            self.pending.pop();
        }
        if header.attributes.is_control() {
            if abort_marker {
                self.open.remove(&producer_id);
            }
            return true;
        }
        header.attributes.is_transactional() && self.open.contains(&producer_id)
    }
}

/// Whether a control record's key is an ABORT marker's.
pub fn is_abort_marker_key(key: Option<&[u8]>) -> bool {
    key.and_then(rafka_protocol::batch::control_type) == Some(control_type::ABORT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use rafka_protocol::batch::{set_base_offset, transaction_marker};
    use rafka_protocol::{
        BatchBuilder, BatchOptions, Offset, ProducerEpoch, ProducerId, Timestamp,
    };

    use crate::cluster::TopicPartition;
    use crate::consumer::{decode_records_filtered, ConsumerRecord};

    /// A data batch of `values` at `base`, from `producer` (-1: none), transactional or not.
    fn data(base: u64, producer: i64, transactional: bool, values: &[&str]) -> Bytes {
        let mut b = BatchBuilder::new(BatchOptions {
            producer_id: ProducerId(producer),
            producer_epoch: ProducerEpoch(if producer < 0 { -1 } else { 0 }),
            transactional,
            ..BatchOptions::default()
        });
        for v in values {
            b.append(Some(Timestamp(1)), None, Some(v.as_bytes()), &[]);
        }
        at(base, b.build())
    }

    fn marker(base: u64, producer: i64, commit: bool) -> Bytes {
        at(
            base,
            transaction_marker(ProducerId(producer), ProducerEpoch(1), commit, Timestamp(1)),
        )
    }

    fn at(base: u64, batch: Bytes) -> Bytes {
        let mut raw = BytesMut::from(&batch[..]);
        set_base_offset(&mut raw, Offset(base));
        raw.freeze()
    }

    fn aborted(list: &[(i64, u64)]) -> Vec<AbortedTransaction> {
        list.iter()
            .map(|&(producer_id, first_offset)| AbortedTransaction {
                producer_id,
                first_offset,
            })
            .collect()
    }

    fn read(
        batches: &[Bytes],
        position: u64,
        filter: Option<AbortedFilter>,
    ) -> (Vec<String>, Vec<u64>, Offset) {
        let mut buf = BytesMut::new();
        for b in batches {
            buf.extend_from_slice(b);
        }
        let tp = TopicPartition::new("t", 0);
        let (records, next) =
            decode_records_filtered(&tp, buf.freeze(), Offset(position), filter).unwrap();
        let values = records
            .iter()
            .map(|r: &ConsumerRecord| String::from_utf8(r.value.clone().unwrap().to_vec()).unwrap())
            .collect();
        let offsets = records.iter().map(|r| r.offset.0).collect();
        (values, offsets, next)
    }

    /// Two producers interleaved: producer 1 aborts a transaction and later commits one,
    /// producer 2 commits; a plain batch and an idempotent (non-transactional) one between.
    fn log() -> Vec<Bytes> {
        vec![
            data(0, 1, true, &["p1-aborted-a", "p1-aborted-b"]), // 0-1
            data(2, 2, true, &["p2-committed"]),                 // 2
            data(3, -1, false, &["plain"]),                      // 3
            marker(4, 1, false),                                 // 4: p1 ABORT
            data(5, 1, true, &["p1-committed"]),                 // 5
            marker(6, 2, true),                                  // 6: p2 COMMIT
            marker(7, 1, true),                                  // 7: p1 COMMIT
            data(8, 1, false, &["p1-idempotent"]),               // 8
            data(9, 1, true, &["p1-aborted-again"]),             // 9 (its marker not fetched)
        ]
    }

    #[test]
    fn read_committed_drops_aborted_transactions_only() {
        let filter = AbortedFilter::new(&aborted(&[(1, 9), (1, 0)]));
        let (values, offsets, next) = read(&log(), 0, Some(filter));
        assert_eq!(
            values,
            vec!["p2-committed", "plain", "p1-committed", "p1-idempotent"]
        );
        assert_eq!(offsets, vec![2, 3, 5, 8]);
        assert_eq!(
            next,
            Offset(10),
            "the position moves past dropped batches too"
        );
    }

    #[test]
    fn read_uncommitted_sees_everything_but_control_batches() {
        let (values, _, next) = read(&log(), 0, None);
        assert_eq!(values.len(), 7);
        assert!(values.iter().all(|v| !v.is_empty()));
        assert_eq!(next, Offset(10));
    }

    #[test]
    fn a_fetch_starting_inside_an_aborted_transaction_still_drops_it() {
        // The broker lists the transaction (first offset 0) although the fetch starts at 1.
        let filter = AbortedFilter::new(&aborted(&[(1, 0)]));
        let (values, _, _) = read(&log()[..4], 1, Some(filter));
        assert_eq!(values, vec!["p2-committed", "plain"]);
    }

    #[test]
    fn an_aborted_transaction_of_another_producer_drops_nothing_else() {
        let filter = AbortedFilter::new(&aborted(&[(7, 0)]));
        let (values, _, _) = read(&log()[..4], 0, Some(filter));
        assert_eq!(
            values,
            vec!["p1-aborted-a", "p1-aborted-b", "p2-committed", "plain"]
        );
    }

    #[test]
    fn an_aborted_transaction_opens_only_when_its_first_offset_is_reached() {
        // Producer 1's aborted transaction starts at 5: its earlier batch at 0 is kept (as if
        // that one had committed), the batch at 5 is dropped.
        let batches = vec![
            data(0, 1, true, &["kept"]),
            marker(1, 1, true),
            data(2, 1, true, &["kept-too"]),
            marker(3, 1, true),
            data(5, 1, true, &["dropped"]),
            marker(6, 1, false),
            data(7, 1, true, &["after"]),
        ];
        let filter = AbortedFilter::new(&aborted(&[(1, 5)]));
        let (values, _, next) = read(&batches, 0, Some(filter));
        assert_eq!(values, vec!["kept", "kept-too", "after"]);
        assert_eq!(next, Offset(8));
    }

    #[test]
    fn abort_markers_are_recognised_by_their_key() {
        assert!(is_abort_marker_key(Some(
            &rafka_protocol::batch::control_key(control_type::ABORT)
        )));
        assert!(!is_abort_marker_key(Some(
            &rafka_protocol::batch::control_key(control_type::COMMIT)
        )));
        // Raft's own control records (types 100 and 101) are not transaction markers.
        assert!(!is_abort_marker_key(Some(
            &rafka_protocol::batch::control_key(100)
        )));
        assert!(!is_abort_marker_key(None));
        assert_eq!(IsolationLevel::default(), IsolationLevel::ReadUncommitted);
        assert_eq!(
            IsolationLevel::ReadCommitted.wire(),
            isolation::READ_COMMITTED
        );
    }
}

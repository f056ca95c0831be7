//! Helpers shared by the log's integration tests.
#![allow(dead_code)]

use bytes::Bytes;
use rafka_broker::log::{Log, ReadResult};
use rafka_protocol::{BatchBuilder, BatchIter, BatchOptions, Offset, Timestamp};

/// One record as the tests see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub offset: u64,
    pub timestamp: Option<i64>,
    pub value: Vec<u8>,
}

/// Builds a batch from `(timestamp, value)` pairs.
pub fn batch(records: &[(Option<i64>, Vec<u8>)]) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for (ts, v) in records {
        b.append(ts.map(Timestamp), None, Some(v), &[]);
    }
    b.build()
}

/// A batch of `n` records with values `"{prefix}-{i}"` and timestamp `ts`.
pub fn simple_batch(prefix: &str, n: usize, ts: i64) -> Bytes {
    let recs: Vec<_> = (0..n)
        .map(|i| (Some(ts), format!("{prefix}-{i}").into_bytes()))
        .collect();
    batch(&recs)
}

/// Decodes every record in a read result.
pub fn records(r: &ReadResult) -> Vec<Rec> {
    let mut out = Vec::new();
    for b in BatchIter::new(r.batches.clone()) {
        let b = b.expect("reads return valid batches");
        for rec in b.records() {
            let rec = rec.expect("records decode");
            out.push(Rec {
                offset: rec.offset.0,
                timestamp: rec.timestamp.map(Timestamp::as_millis),
                value: rec.value.map(|v| v.to_vec()).unwrap_or_default(),
            });
        }
    }
    out
}

/// Reads the whole readable log from its start, one read at a time.
pub fn read_all(log: &Log) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    loop {
        let r = log.read(at, 64 * 1024, None).expect("read");
        if r.batches.is_empty() {
            assert_eq!(
                r.next_offset,
                log.log_end_offset(),
                "an empty read only at the end"
            );
            break;
        }
        assert!(r.next_offset > at, "reads make progress");
        out.extend(records(&r));
        at = r.next_offset;
    }
    out
}

pub fn off(o: u64) -> Offset {
    Offset(o)
}

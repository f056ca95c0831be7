//! Property tests for the record batch codec: what the builder writes, the reader returns
//! unchanged; and no byte string, however malformed, makes the decoder panic.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use rafka_protocol::batch::{set_base_offset, HEADER_BYTES};
use rafka_protocol::{
    BatchBuilder, BatchIter, BatchOptions, Header, Offset, ProducerEpoch, ProducerId, RecordBatch,
    Sequence, Timestamp,
};

#[derive(Debug, Clone)]
struct TestRecord {
    timestamp: Option<i64>,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

fn record() -> impl Strategy<Value = TestRecord> {
    (
        proptest::option::of(0i64..4_000_000_000_000),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
        proptest::collection::vec(
            (
                proptest::collection::vec(any::<u8>(), 0..10),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..10)),
            ),
            0..3,
        ),
    )
        .prop_map(|(timestamp, key, value, headers)| TestRecord {
            timestamp,
            key,
            value,
            headers,
        })
}

proptest! {
    #[test]
    fn round_trip(
        records in proptest::collection::vec(record(), 1..40),
        base_offset in 0u64..(1u64 << 60),
        producer_id in -1i64..1_000_000,
        transactional in any::<bool>(),
    ) {
        let options = BatchOptions {
            producer_id: ProducerId(producer_id),
            producer_epoch: ProducerEpoch(3),
            base_sequence: Sequence(17),
            transactional,
            ..BatchOptions::default()
        };
        let mut builder = BatchBuilder::new(options);
        for r in &records {
            let headers: Vec<Header> = r.headers.iter().map(|(k, v)| Header {
                key: Bytes::copy_from_slice(k),
                value: v.as_deref().map(Bytes::copy_from_slice),
            }).collect();
            builder.append(r.timestamp.map(Timestamp), r.key.as_deref(), r.value.as_deref(), &headers);
        }
        let mut raw = BytesMut::from(&builder.build()[..]);
        set_base_offset(&mut raw, Offset(base_offset));
        let batch = RecordBatch::parse(raw.freeze()).expect("a built batch parses");
        let h = *batch.header();
        prop_assert_eq!(h.base_offset, Offset(base_offset));
        prop_assert_eq!(h.record_count as usize, records.len());
        prop_assert_eq!(h.producer_id, ProducerId(producer_id));
        prop_assert_eq!(h.attributes.is_transactional(), transactional);
        prop_assert_eq!(h.next_offset(), Offset(base_offset + records.len() as u64));
        let decoded: Vec<_> = batch.records().collect::<Result<_, _>>().expect("records decode");
        prop_assert_eq!(decoded.len(), records.len());
        for (i, (got, want)) in decoded.iter().zip(&records).enumerate() {
            prop_assert_eq!(got.offset, Offset(base_offset + i as u64));
            prop_assert_eq!(got.key.as_deref(), want.key.as_deref());
            prop_assert_eq!(got.value.as_deref(), want.value.as_deref());
            prop_assert_eq!(got.timestamp, want.timestamp.map(Timestamp));
            prop_assert_eq!(got.headers.len(), want.headers.len());
            for (gh, wh) in got.headers.iter().zip(&want.headers) {
                prop_assert_eq!(&gh.key[..], &wh.0[..]);
                prop_assert_eq!(gh.value.as_deref(), wh.1.as_deref());
            }
        }
        batch.validate_records().expect("validates");
    }

    #[test]
    fn arbitrary_bytes_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..600)) {
        let bytes = Bytes::from(raw);
        if let Ok(batch) = RecordBatch::parse(bytes.clone()) {
            for r in batch.records() { let _ = r; }
            let _ = batch.validate_records();
        }
        for b in BatchIter::new(bytes).flatten() {
            for r in b.records() { let _ = r; }
        }
    }

    /// Arbitrary bytes behind a plausible header (right length, magic, CRC) reach the record
    /// decoder, which random bytes alone almost never do.
    #[test]
    fn arbitrary_records_never_panic(
        body in proptest::collection::vec(any::<u8>(), 0..400),
        count in -2i32..50,
        delta in -2i32..50,
    ) {
        let mut raw = vec![0u8; HEADER_BYTES];
        raw.extend_from_slice(&body);
        let len = (raw.len() - 12) as u32;
        raw[8..12].copy_from_slice(&len.to_be_bytes());
        raw[16] = 2;
        raw[23..27].copy_from_slice(&delta.to_be_bytes());
        raw[57..61].copy_from_slice(&count.to_be_bytes());
        let crc = rafka_protocol::batch::compute_crc(&raw);
        raw[17..21].copy_from_slice(&crc.to_be_bytes());
        if let Ok(batch) = RecordBatch::parse(Bytes::from(raw)) {
            for r in batch.records() { let _ = r; }
            let _ = batch.validate_records();
        }
    }
}

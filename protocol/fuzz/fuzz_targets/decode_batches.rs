//! Feeds arbitrary bytes to the batch decoder: `cargo fuzz run decode_batches` (from
//! `protocol/`). Any panic is a bug: the broker decodes bytes straight off the network and disk.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use rafka_protocol::{BatchIter, RecordBatch};

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(batch) = RecordBatch::parse(bytes.clone()) {
        let _ = batch.validate_records();
    }
    for batch in BatchIter::new(bytes).flatten() {
        for record in batch.records().flatten() {
            let _ = (record.key, record.value, record.headers.len());
        }
    }
});

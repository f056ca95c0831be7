//! Fetch with long polling.
//!
//! A fetch reads every requested partition up to its high watermark, or with read_committed up
//! to its last stable offset (the first offset of the oldest open transaction), and then also
//! lists the aborted transactions whose records it returns. If that yields fewer than
//! `min_bytes`, it waits until one of the partitions' high watermarks moves, or `max_wait_ms`
//! passes, and reads again: it answers as soon as data arrives, not at the deadline. Sizes are
//! bounded by `max_bytes` for the whole response (at least one batch, so a batch larger than
//! the limit still makes progress) and `partition_max_bytes` per partition, and by the frame
//! limit whatever the client asks.

use std::sync::Arc;
use std::time::Duration;

use futures::future::select_all;
use rafka_protocol::messages::*;
use rafka_protocol::{ErrorCode, Offset};
use tokio::time::Instant;

use super::{blocking, Context};
use crate::cluster::Partition;

/// Longest a fetch may wait, whatever the client asks: bounds how long a request holds an
/// in-flight slot.
pub const FETCH_WAIT_MS_MAX: u32 = 30_000;
/// Room left in a response frame for everything but record data.
const RESPONSE_OVERHEAD_BYTES: usize = 64 * 1024;

#[derive(Clone)]
struct Slot {
    topic_index: usize,
    partition: u32,
    offset: u64,
    max_bytes: usize,
    target: Result<Arc<Partition>, (ErrorCode, String, i32)>,
}

pub async fn fetch(ctx: Arc<Context>, req: FetchRequest) -> FetchResponse {
    let wait = Duration::from_millis(u64::from(req.max_wait_ms.min(FETCH_WAIT_MS_MAX)));
    let deadline = Instant::now() + wait;
    let frame_room = ctx
        .config
        .max_frame_bytes
        .saturating_sub(RESPONSE_OVERHEAD_BYTES)
        .max(1);
    let max_bytes = (req.max_bytes as usize).clamp(1, frame_room);
    let min_bytes = req.min_bytes as usize;
    let read_committed = match req.isolation_level {
        rafka_protocol::api::isolation::READ_UNCOMMITTED => false,
        rafka_protocol::api::isolation::READ_COMMITTED => true,
        other => {
            let topics = req
                .topics
                .into_iter()
                .map(|t| FetchTopicResult {
                    name: t.name,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| {
                            failed(
                                p.partition,
                                ErrorCode::InvalidRequest,
                                format!("isolation_level must be 0 or 1, not {other}"),
                            )
                        })
                        .collect(),
                })
                .collect();
            return FetchResponse { topics };
        }
    };
    let mut names = Vec::with_capacity(req.topics.len());
    let mut slots = Vec::new();
    for (ti, t) in req.topics.into_iter().enumerate() {
        for p in t.partitions {
            slots.push(Slot {
                topic_index: ti,
                partition: p.partition,
                offset: p.fetch_offset,
                max_bytes: (p.partition_max_bytes as usize).clamp(1, frame_room),
                target: ctx
                    .cluster
                    .leader_partition(&t.name, p.partition)
                    .map_err(|e| (e.error_code(), e.to_string(), e.leader_hint())),
            });
        }
        names.push(t.name);
    }
    let mut shutdown = ctx.shutdown.clone();
    let results = loop {
        // Subscribe before reading, so a high watermark that moves during the read wakes us.
        let mut watchers: Vec<_> = slots
            .iter()
            .filter_map(|s| s.target.as_ref().ok().map(|p| p.watch_high_watermark()))
            .collect();
        let round = slots.clone();
        let read = blocking(move || Ok(read_round(&round, max_bytes, read_committed))).await;
        let (results, total, errors) = match read {
            Ok(r) => r,
            Err(e) => {
                let code = e.error_code();
                let all_failed = slots
                    .iter()
                    .map(|s| failed(s.partition, code, e.to_string()))
                    .collect();
                break all_failed;
            }
        };
        let done = total >= min_bytes
            || errors
            || watchers.is_empty()
            || Instant::now() >= deadline
            || ctx.is_shutting_down();
        if done {
            break results;
        }
        let changed = select_all(watchers.iter_mut().map(|w| Box::pin(w.changed())));
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    };
    let mut topics: Vec<FetchTopicResult> = names
        .into_iter()
        .map(|name| FetchTopicResult {
            name,
            partitions: Vec::new(),
        })
        .collect();
    for (slot, r) in slots.iter().zip(results) {
        if !r.records.is_empty() {
            metrics::counter!("rafka_bytes_out_total", "topic" => topics[slot.topic_index].name.clone())
                .increment(r.records.len() as u64);
        }
        topics[slot.topic_index].partitions.push(r);
    }
    FetchResponse { topics }
}

fn failed(partition: u32, code: ErrorCode, message: String) -> FetchPartitionResult {
    FetchPartitionResult {
        partition,
        error_code: code.code(),
        error_message: message,
        high_watermark: 0,
        log_start_offset: 0,
        last_stable_offset: 0,
        records: bytes::Bytes::new(),
        leader_hint: -1,
        aborted_transactions: Vec::new(),
    }
}

/// Reads every slot once. Returns the results, the record bytes read, and whether any
/// partition answered with an error (which is returned at once rather than waited on).
fn read_round(
    slots: &[Slot],
    max_bytes: usize,
    read_committed: bool,
) -> (Vec<FetchPartitionResult>, usize, bool) {
    let mut remaining = max_bytes;
    let mut total = 0;
    let mut errors = false;
    let mut out = Vec::with_capacity(slots.len());
    for s in slots {
        let part = match &s.target {
            Ok(p) => p,
            Err((code, msg, hint)) => {
                errors = true;
                let mut f = failed(s.partition, *code, msg.clone());
                f.leader_hint = *hint;
                out.push(f);
                continue;
            }
        };
        let hw = part.high_watermark();
        let lso = part.last_stable_offset();
        let start = part.log.log_start_offset();
        // One bound, exclusive like the high watermark (Redpanda #3036 used the LSO as
        // inclusive in one place and exclusive in another).
        let visible = if read_committed { lso } else { hw };
        let mut r = FetchPartitionResult {
            partition: s.partition,
            error_code: 0,
            error_message: String::new(),
            high_watermark: hw.0,
            log_start_offset: start.0,
            last_stable_offset: lso.0,
            records: bytes::Bytes::new(),
            leader_hint: -1,
            aborted_transactions: Vec::new(),
        };
        let offset = Offset(s.offset);
        if offset < start || offset > hw {
            errors = true;
            r.error_code = ErrorCode::OffsetOutOfRange.code();
            r.error_message = format!("offset {offset} is outside [{start}, {hw}]");
            out.push(r);
            continue;
        }
        if remaining == 0 || offset >= visible {
            out.push(r);
            continue;
        }
        match part
            .log
            .read(offset, s.max_bytes.min(remaining), Some(visible))
        {
            Ok(read) => {
                let n = read.batches.len();
                remaining = remaining.saturating_sub(n);
                total += n;
                if read_committed && n > 0 {
                    r.aborted_transactions = part
                        .aborted_between(offset, read.next_offset)
                        .into_iter()
                        .map(|a| AbortedTransaction {
                            producer_id: a.producer_id,
                            first_offset: a.first_offset,
                        })
                        .collect();
                }
                r.records = read.batches;
            }
            Err(e) => {
                errors = true;
                r.error_code = e.error_code().code();
                r.error_message = e.to_string();
            }
        }
        out.push(r);
    }
    (out, total, errors)
}

/// Encodes a fetch response frame as segments: protobuf framing in small buffers and each
/// partition's record bytes as they came from the log, never copied. Protobuf allows fields in
/// any order, so `records` is written last in each partition result.
pub fn encode_response(correlation_id: u32, resp: FetchResponse) -> Vec<bytes::Bytes> {
    use prost::encoding::{self, encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    use prost::Message;
    let header = ResponseHeader {
        correlation_id,
        error_code: 0,
        error_message: String::new(),
    };
    let mut head = bytes::BytesMut::with_capacity(256);
    let _ = header.encode_length_delimited(&mut head);
    let mut segments = Vec::new();
    for topic in resp.topics {
        let parts: Vec<(FetchPartitionResult, bytes::Bytes, usize)> = topic
            .partitions
            .into_iter()
            .map(|mut p| {
                let records = std::mem::take(&mut p.records);
                let records_len = if records.is_empty() {
                    0
                } else {
                    encoding::bytes::encoded_len(7, &records)
                };
                let len = p.encoded_len() + records_len;
                (p, records, len)
            })
            .collect();
        let name_len = if topic.name.is_empty() {
            0
        } else {
            encoding::string::encoded_len(1, &topic.name)
        };
        let topic_len = name_len
            + parts
                .iter()
                .map(|(_, _, len)| key_len(2) + encoded_len_varint(*len as u64) + len)
                .sum::<usize>();
        encode_key(1, WireType::LengthDelimited, &mut head);
        encode_varint(topic_len as u64, &mut head);
        if !topic.name.is_empty() {
            encoding::string::encode(1, &topic.name, &mut head);
        }
        for (p, records, len) in parts {
            encode_key(2, WireType::LengthDelimited, &mut head);
            encode_varint(len as u64, &mut head);
            let _ = p.encode(&mut head);
            if !records.is_empty() {
                encode_key(7, WireType::LengthDelimited, &mut head);
                encode_varint(records.len() as u64, &mut head);
                segments.push(head.split().freeze());
                segments.push(records);
            }
        }
    }
    segments.push(head.freeze());
    segments
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scattered_encoding_decodes_as_the_message() {
        let part = |i: u32, records: &'static [u8]| FetchPartitionResult {
            partition: i,
            error_code: 0,
            error_message: String::new(),
            high_watermark: 100 + u64::from(i),
            log_start_offset: 3,
            last_stable_offset: 100,
            records: bytes::Bytes::from_static(records),
            leader_hint: -1,
            aborted_transactions: Vec::new(),
        };
        let resp = FetchResponse {
            topics: vec![
                FetchTopicResult {
                    name: "a".into(),
                    partitions: vec![part(0, b"batchbytes"), part(1, b""), part(2, &[7; 300])],
                },
                FetchTopicResult {
                    name: String::new(),
                    partitions: vec![],
                },
            ],
        };
        let segments = encode_response(9, resp.clone());
        let joined: Vec<u8> = segments.iter().flat_map(|s| s.iter().copied()).collect();
        let (h, body) =
            rafka_protocol::frame::decode_response_header(bytes::Bytes::from(joined)).unwrap();
        assert_eq!(h.correlation_id, 9);
        let decoded: FetchResponse = rafka_protocol::frame::decode_body(body).unwrap();
        assert_eq!(decoded, resp);
    }
}

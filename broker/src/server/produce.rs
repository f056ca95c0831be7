//! Produce: appends each partition's batches, concurrently across partitions, and answers per
//! partition, so a request spanning partitions can partly fail and the client learns exactly
//! which (as Kinesis' PutRecords does).
//!
//! Only the partition's leader appends: each batch is proposed to the partition's Raft group
//! and, with acks=all, answered once committed (a majority has it fsynced) and applied, so the
//! offsets in the answer are final and readers (bounded by the high watermark) see the records.
//! acks=1 answers once the batches are in the leader's log (not yet fsynced or replicated);
//! acks=0 is proposed the same way but never answered. A write whose fate is
//! unknown (no commit within the request's timeout, or leadership lost while waiting) is
//! answered REQUEST_TIMED_OUT: it may still be committed, so a retry may duplicate it.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rafka_protocol::api::acks;
use rafka_protocol::messages::*;
use rafka_protocol::ErrorCode;

use super::Context;
use crate::cluster::ProduceTurn;

/// How long a produce waits for its commit when the request gives no timeout.
pub const PRODUCE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
/// The longest a produce may wait for its commit, whatever the request asks.
pub const PRODUCE_TIMEOUT_MAX: Duration = Duration::from_secs(120);

/// `turn` orders the request after the connection's previous produce (see
/// [`ProduceTurn`]); `None` for a request outside any connection order.
pub async fn produce(
    ctx: Arc<Context>,
    req: ProduceRequest,
    turn: Option<ProduceTurn>,
) -> ProduceResponse {
    let acks = req.acks;
    let mut names = Vec::with_capacity(req.topics.len());
    let mut work = Vec::new();
    let timeout_ms = req.timeout_ms;
    for (ti, t) in req.topics.into_iter().enumerate() {
        names.push(t.name.clone());
        for p in t.partitions {
            work.push(append_one(
                Arc::clone(&ctx),
                ti,
                t.name.clone(),
                p,
                acks,
                timeout_ms,
                turn.clone(),
            ));
        }
    }
    let mut topics: Vec<ProduceTopicResult> = names
        .into_iter()
        .map(|name| ProduceTopicResult {
            name,
            partitions: Vec::new(),
        })
        .collect();
    // Each partition holds its own clone; the turn ends when the last is dropped.
    drop(turn);
    for (ti, r) in join_all(work).await {
        topics[ti].partitions.push(r);
    }
    ProduceResponse { topics }
}

async fn append_one(
    ctx: Arc<Context>,
    topic_index: usize,
    topic: String,
    p: ProducePartition,
    acks: i32,
    timeout_ms: u32,
    turn: Option<ProduceTurn>,
) -> (usize, ProducePartitionResult) {
    let index = p.partition;
    let fail = |code: ErrorCode, message: String| ProducePartitionResult {
        partition: index,
        error_code: code.code(),
        error_message: message,
        base_offset: 0,
        log_start_offset: 0,
        leader_hint: -1,
        batch_base_offsets: Vec::new(),
    };
    if !matches!(acks, acks::NONE | acks::LEADER | acks::ALL) {
        return (
            topic_index,
            fail(
                ErrorCode::InvalidRequiredAcks,
                format!("acks must be 0, 1 or -1, not {acks}"),
            ),
        );
    }
    if ctx.is_shutting_down() {
        return (
            topic_index,
            fail(
                ErrorCode::BrokerShuttingDown,
                "the broker is shutting down".into(),
            ),
        );
    }
    if crate::topics::is_internal(&topic) {
        return (
            topic_index,
            fail(
                ErrorCode::InvalidTopic,
                format!("{topic} is internal: only the broker writes to it"),
            ),
        );
    }
    let partition = match ctx.cluster.leader_partition(&topic, index) {
        Ok(p) => p,
        Err(e) => {
            let mut f = fail(e.error_code(), e.to_string());
            f.leader_hint = e.leader_hint();
            return (topic_index, f);
        }
    };
    let bytes = p.records.len() as u64;
    let timeout = if timeout_ms == 0 {
        PRODUCE_TIMEOUT_DEFAULT
    } else {
        Duration::from_millis(u64::from(timeout_ms)).min(PRODUCE_TIMEOUT_MAX)
    };
    match partition.append(p.records, acks, timeout, turn).await {
        Ok(appended) => {
            metrics::counter!("rafka_bytes_in_total", "topic" => topic.clone()).increment(bytes);
            metrics::counter!("rafka_records_in_total", "topic" => topic)
                .increment(appended.records);
            (
                topic_index,
                ProducePartitionResult {
                    partition: index,
                    error_code: 0,
                    error_message: String::new(),
                    base_offset: appended.base_offset.0,
                    log_start_offset: partition.log.log_start_offset().0,
                    leader_hint: -1,
                    batch_base_offsets: appended.batch_bases,
                },
            )
        }
        Err(e) => {
            if e.class() == crate::ErrorClass::Storage {
                tracing::error!(%topic, partition = index, error = %e, "append failed");
            }
            let mut f = fail(e.error_code(), e.to_string());
            f.leader_hint = e.leader_hint();
            (topic_index, f)
        }
    }
}

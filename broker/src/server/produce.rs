//! Produce: appends each partition's batches, concurrently across partitions, and answers per
//! partition, so a request spanning partitions can partly fail and the client learns exactly
//! which (as Kinesis' PutRecords does).
//!
//! acks=all answers once the batches are durable (fsynced); acks=1 once they are appended;
//! acks=0 is appended the same way but never answered. On a single node the high watermark is
//! the durable end, so readers see a record only once it could be acknowledged with acks=all.

use std::sync::Arc;

use futures::future::join_all;
use rafka_protocol::api::acks;
use rafka_protocol::messages::*;
use rafka_protocol::{ErrorCode, LeaderEpoch};

use super::{run_blocking, Context, Placement};

pub async fn produce(ctx: Arc<Context>, req: ProduceRequest) -> ProduceResponse {
    let acks = req.acks;
    let mut names = Vec::with_capacity(req.topics.len());
    let mut work = Vec::new();
    let partitions: usize = req.topics.iter().map(|t| t.partitions.len()).sum();
    // Several partitions append (and fsync) in parallel on the blocking pool; a single one
    // runs in place, saving a thread hand-off.
    let placement = if partitions > 1 {
        Placement::Pool
    } else {
        Placement::InPlace
    };
    for (ti, t) in req.topics.into_iter().enumerate() {
        names.push(t.name.clone());
        for p in t.partitions {
            work.push(append_one(
                Arc::clone(&ctx),
                ti,
                t.name.clone(),
                p,
                acks,
                placement,
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
    placement: Placement,
) -> (usize, ProducePartitionResult) {
    let index = p.partition;
    let fail = |code: ErrorCode, message: String| ProducePartitionResult {
        partition: index,
        error_code: code.code(),
        error_message: message,
        base_offset: 0,
        log_start_offset: 0,
        leader_hint: -1,
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
    let partition = match ctx.topics.partition(&topic, index) {
        Ok(p) => p,
        Err(e) => return (topic_index, fail(e.error_code(), e.to_string())),
    };
    let bytes = p.records.len() as u64;
    let part = Arc::clone(&partition);
    let result = run_blocking(
        move || {
            let info = part.log.append(p.records, LeaderEpoch(0))?;
            if acks == acks::ALL && part.log.flushed_offset() <= info.last_offset {
                part.log.flush()?;
            }
            Ok(info)
        },
        placement,
    )
    .await;
    partition.refresh_high_watermark();
    match result {
        Ok(info) => {
            metrics::counter!("rafka_bytes_in_total", "topic" => topic.clone()).increment(bytes);
            metrics::counter!("rafka_records_in_total", "topic" => topic)
                .increment(info.record_count);
            (
                topic_index,
                ProducePartitionResult {
                    partition: index,
                    error_code: 0,
                    error_message: String::new(),
                    base_offset: info.base_offset.0,
                    log_start_offset: partition.log.log_start_offset().0,
                    leader_hint: -1,
                },
            )
        }
        Err(e) => {
            if e.class() == crate::ErrorClass::Storage {
                tracing::error!(%topic, partition = index, error = %e, "append failed");
            }
            (topic_index, fail(e.error_code(), e.to_string()))
        }
    }
}

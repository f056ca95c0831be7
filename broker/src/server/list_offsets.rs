//! ListOffsets: earliest (log start), latest (high watermark; for read_committed, the last
//! stable offset), or the first offset whose record timestamp is at or after a given time
//! (the latest when there is none).

use std::sync::Arc;

use rafka_protocol::api::list_offsets::{EARLIEST, LATEST};
use rafka_protocol::messages::*;
use rafka_protocol::{ErrorCode, Timestamp};

use super::{blocking, Context};

pub async fn list_offsets(ctx: Arc<Context>, req: ListOffsetsRequest) -> ListOffsetsResponse {
    let mut topics = Vec::with_capacity(req.topics.len());
    let read_committed = req.isolation_level == rafka_protocol::api::isolation::READ_COMMITTED;
    for t in req.topics {
        let mut partitions = Vec::with_capacity(t.partitions.len());
        for p in t.partitions {
            partitions.push(one(&ctx, &t.name, p, read_committed).await);
        }
        topics.push(ListOffsetsTopicResult {
            name: t.name,
            partitions,
        });
    }
    ListOffsetsResponse { topics }
}

async fn one(
    ctx: &Arc<Context>,
    topic: &str,
    p: ListOffsetsPartition,
    read_committed: bool,
) -> ListOffsetsPartitionResult {
    let mut out = ListOffsetsPartitionResult {
        partition: p.partition,
        error_code: 0,
        error_message: String::new(),
        offset: 0,
        leader_hint: -1,
    };
    let partition = match ctx.cluster.leader_partition(topic, p.partition) {
        Ok(part) => part,
        Err(e) => {
            out.leader_hint = e.leader_hint();
            out.error_code = e.error_code().code();
            out.error_message = e.to_string();
            return out;
        }
    };
    // The end a reader of this isolation level sees: `hw` names it for both.
    let hw = if read_committed {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    };
    let offset = match p.timestamp_ms {
        EARLIEST => Ok(partition.log.log_start_offset()),
        LATEST => Ok(hw),
        ts if ts >= 0 => {
            let part = Arc::clone(&partition);
            blocking(move || part.log.offset_for_timestamp(Timestamp(ts)))
                .await
                .map(|o| o.map_or(hw, |o| o.min(hw)))
        }
        other => {
            out.error_code = ErrorCode::InvalidRequest.code();
            out.error_message = format!("timestamp {other} is neither -2, -1 nor a time");
            return out;
        }
    };
    match offset {
        Ok(o) => out.offset = o.0,
        Err(e) => {
            out.error_code = e.error_code().code();
            out.error_message = e.to_string();
        }
    }
    out
}

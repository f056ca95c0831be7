//! InitProducerId and the transaction APIs (AddPartitionsToTxn, AddOffsetsToTxn, EndTxn;
//! TxnOffsetCommit goes to the group coordinator). Thin: the coordinators do the work.
//!
//! Without a transactional id, any broker answers InitProducerId from the block of producer
//! ids the controller allocated to it (see [`crate::cluster::Cluster::next_producer_id`]),
//! with epoch 0. With one, the transaction coordinator ([`crate::txn`]) answers.

use std::sync::Arc;

use rafka_protocol::messages::*;
use rafka_protocol::ErrorCode;

use super::Context;

pub async fn init_producer_id(
    ctx: Arc<Context>,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let fail = |code: ErrorCode, message: String| InitProducerIdResponse {
        error_code: code.code(),
        error_message: message,
        producer_id: -1,
        producer_epoch: -1,
    };
    if ctx.is_shutting_down() {
        return fail(
            ErrorCode::BrokerShuttingDown,
            "the broker is shutting down".into(),
        );
    }
    if !req.transactional_id.is_empty() {
        return ctx.txns.init_producer_id(req).await;
    }
    match ctx.cluster.next_producer_id().await {
        Ok(id) => {
            metrics::counter!("rafka_producer_ids_issued_total").increment(1);
            InitProducerIdResponse {
                error_code: 0,
                error_message: String::new(),
                producer_id: id,
                producer_epoch: 0,
            }
        }
        Err(e) => fail(e.error_code(), e.to_string()),
    }
}

pub async fn add_partitions_to_txn(
    ctx: Arc<Context>,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    ctx.txns.add_partitions(req).await
}

pub async fn add_offsets_to_txn(
    ctx: Arc<Context>,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    ctx.txns.add_offsets(req).await
}

pub async fn end_txn(ctx: Arc<Context>, req: EndTxnRequest) -> EndTxnResponse {
    ctx.txns.end_txn(req).await
}

pub async fn txn_offset_commit(
    ctx: Arc<Context>,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    ctx.groups.txn_commit(req).await
}

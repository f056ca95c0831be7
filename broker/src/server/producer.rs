//! InitProducerId: hands an idempotent producer its identity.
//!
//! Any broker answers, from the block of producer ids the controller allocated to it (see
//! [`crate::cluster::Cluster::next_producer_id`]); the epoch of a fresh id is 0. A
//! transactional id (a producer identity that outlives the process) needs the transaction
//! coordinator, which this broker does not run yet: such requests are refused.

use std::sync::Arc;

use rafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse};
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
        return fail(
            ErrorCode::InvalidRequest,
            "transactional ids need the transaction coordinator, which this broker does not \
             run yet"
                .into(),
        );
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

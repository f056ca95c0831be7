//! Request dispatch: API key and version checks, body decoding, the handler call, response
//! encoding, and per-API request metrics.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use rafka_protocol::messages::*;
use rafka_protocol::{frame, ApiKey, ErrorCode, Request};

use crate::cluster::ProduceTurn;

use super::{admin, fetch, group, list_offsets, metadata, produce, producer, Context};

/// A response frame's payload as a list of buffers written with one `writev`, so that record
/// data served by a fetch is never copied into a frame buffer.
pub type Segments = Vec<Bytes>;

/// Handles one request; `None` when no response is due (produce with acks=0). `turn` is the
/// request's place among its connection's produce requests (only produce uses it).
pub async fn handle(
    ctx: &Arc<Context>,
    header: RequestHeader,
    body: Bytes,
    peer: std::net::SocketAddr,
    turn: Option<ProduceTurn>,
) -> Option<Segments> {
    let started = Instant::now();
    let corr = header.correlation_id;
    let Some(api) = ApiKey::from_u32(header.api_key) else {
        return Some(request_error(
            corr,
            ErrorCode::UnsupportedVersion,
            format!("unknown api key {}", header.api_key),
        ));
    };
    let (min, max) = api.versions();
    if header.api_version < min || header.api_version > max {
        return Some(request_error(
            corr,
            ErrorCode::UnsupportedVersion,
            format!(
                "{} supports versions {min}..={max}, not {}",
                api.name(),
                header.api_version
            ),
        ));
    }
    let ctx = Arc::clone(ctx);
    let response = match api {
        ApiKey::ApiVersions => {
            run(corr, body, |_: ApiVersionsRequest| async {
                metadata::api_versions()
            })
            .await
        }
        ApiKey::Metadata => run(corr, body, |r| metadata::metadata(ctx, r)).await,
        ApiKey::CreateTopics => run(corr, body, |r| admin::create_topics(ctx, r)).await,
        ApiKey::DeleteTopics => run(corr, body, |r| admin::delete_topics(ctx, r)).await,
        ApiKey::DescribeConfigs => run(corr, body, |r| admin::describe_configs(ctx, r)).await,
        ApiKey::AlterConfigs => run(corr, body, |r| admin::alter_configs(ctx, r)).await,
        ApiKey::Produce => match frame::decode_body::<ProduceRequest>(body) {
            Ok(req) => {
                let acks = req.acks;
                let resp = produce::produce(ctx, req, turn).await;
                (acks != rafka_protocol::api::acks::NONE).then(|| ok_response(corr, &resp))
            }
            Err(e) => Some(request_error(
                corr,
                ErrorCode::InvalidRequest,
                e.to_string(),
            )),
        },
        ApiKey::Fetch => match frame::decode_body::<FetchRequest>(body) {
            Ok(req) => Some(fetch::encode_response(corr, fetch::fetch(ctx, req).await)),
            Err(e) => Some(request_error(
                corr,
                ErrorCode::InvalidRequest,
                e.to_string(),
            )),
        },
        ApiKey::ListOffsets => run(corr, body, |r| list_offsets::list_offsets(ctx, r)).await,
        ApiKey::FindCoordinator => run(corr, body, |r| group::find_coordinator(ctx, r)).await,
        ApiKey::ConsumerGroupHeartbeat => {
            run(corr, body, |r| {
                group::heartbeat(ctx, r, peer.ip().to_string())
            })
            .await
        }
        ApiKey::OffsetCommit => run(corr, body, |r| group::offset_commit(ctx, r)).await,
        ApiKey::OffsetFetch => run(corr, body, |r| group::offset_fetch(ctx, r)).await,
        ApiKey::ListGroups => run(corr, body, |_: ListGroupsRequest| group::list_groups(ctx)).await,
        ApiKey::DescribeGroup => run(corr, body, |r| group::describe_group(ctx, r)).await,
        ApiKey::InitProducerId => run(corr, body, |r| producer::init_producer_id(ctx, r)).await,
        ApiKey::AddPartitionsToTxn => {
            run(corr, body, |r| producer::add_partitions_to_txn(ctx, r)).await
        }
        ApiKey::AddOffsetsToTxn => run(corr, body, |r| producer::add_offsets_to_txn(ctx, r)).await,
        ApiKey::TxnOffsetCommit => run(corr, body, |r| producer::txn_offset_commit(ctx, r)).await,
        ApiKey::EndTxn => run(corr, body, |r| producer::end_txn(ctx, r)).await,
    };
    metrics::counter!("rafka_requests_total", "api" => api.name()).increment(1);
    metrics::histogram!("rafka_request_duration_seconds", "api" => api.name())
        .record(started.elapsed().as_secs_f64());
    response
}

async fn run<R, F, Fut>(corr: u32, body: Bytes, handler: F) -> Option<Segments>
where
    R: Request,
    F: FnOnce(R) -> Fut,
    Fut: Future<Output = R::Response>,
{
    match frame::decode_body::<R>(body) {
        Ok(req) => Some(ok_response(corr, &handler(req).await)),
        Err(e) => Some(request_error(
            corr,
            ErrorCode::InvalidRequest,
            e.to_string(),
        )),
    }
}

fn ok_response<M: prost::Message>(corr: u32, body: &M) -> Segments {
    let header = ResponseHeader {
        correlation_id: corr,
        error_code: 0,
        error_message: String::new(),
    };
    vec![frame::encode_response(&header, Some(body))]
}

fn request_error(corr: u32, code: ErrorCode, message: String) -> Segments {
    metrics::counter!("rafka_request_errors_total", "error" => code.name()).increment(1);
    let header = ResponseHeader {
        correlation_id: corr,
        error_code: code.code(),
        error_message: message,
    };
    vec![frame::encode_response::<ApiVersionsResponse>(&header, None)]
}

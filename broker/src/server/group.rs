//! Consumer-group APIs: FindCoordinator, ConsumerGroupHeartbeat, OffsetCommit, OffsetFetch,
//! ListGroups, DescribeGroup. Thin: the coordinator ([`crate::group`]) does the work.

use std::sync::Arc;

use rafka_protocol::messages::*;

use super::Context;

pub async fn find_coordinator(
    ctx: Arc<Context>,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    if req.key_type == rafka_protocol::api::coordinator_type::TRANSACTION {
        return ctx.txns.find(req).await;
    }
    ctx.groups.find(req).await
}

pub async fn heartbeat(
    ctx: Arc<Context>,
    req: ConsumerGroupHeartbeatRequest,
    client_host: String,
) -> ConsumerGroupHeartbeatResponse {
    ctx.groups.heartbeat(req, client_host).await
}

pub async fn offset_commit(ctx: Arc<Context>, req: OffsetCommitRequest) -> OffsetCommitResponse {
    ctx.groups.commit(req).await
}

pub async fn offset_fetch(ctx: Arc<Context>, req: OffsetFetchRequest) -> OffsetFetchResponse {
    ctx.groups.fetch_offsets(req).await
}

pub async fn list_groups(ctx: Arc<Context>) -> ListGroupsResponse {
    ctx.groups.list().await
}

pub async fn describe_group(ctx: Arc<Context>, req: DescribeGroupRequest) -> DescribeGroupResponse {
    ctx.groups.describe(req).await
}

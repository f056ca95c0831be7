//! ApiVersions and Metadata.

use std::sync::Arc;

use rafka_protocol::messages::*;
use rafka_protocol::{ApiKey, ErrorCode};

use super::Context;

pub fn api_versions() -> ApiVersionsResponse {
    ApiVersionsResponse {
        apis: ApiKey::ALL
            .iter()
            .map(|k| {
                let (min, max) = k.versions();
                ApiVersionRange {
                    api_key: *k as u32,
                    min_version: min,
                    max_version: max,
                }
            })
            .collect(),
    }
}

/// Splits `host:port` as advertised.
pub fn host_port(addr: &str) -> (String, u32) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.to_string(), p.parse().unwrap_or(0)),
        None => (addr.to_string(), 0),
    }
}

pub async fn metadata(ctx: Arc<Context>, req: MetadataRequest) -> MetadataResponse {
    let node = ctx.config.node_id;
    let (host, port) = host_port(&ctx.config.advertise);
    let topics = if req.topics.is_empty() {
        ctx.topics.topics()
    } else {
        Vec::new()
    };
    let mut out: Vec<TopicMetadata> = topics.iter().map(|t| describe(node, t)).collect();
    for name in &req.topics {
        match ctx.topics.topic(name) {
            Some(t) => out.push(describe(node, &t)),
            None => out.push(TopicMetadata {
                name: name.clone(),
                error_code: ErrorCode::UnknownTopicOrPartition.code(),
                partitions: Vec::new(),
            }),
        }
    }
    MetadataResponse {
        brokers: vec![BrokerInfo {
            node_id: node,
            host,
            port,
        }],
        controller_id: node,
        cluster_id: ctx.cluster_id.clone(),
        topics: out,
    }
}

fn describe(node: i32, t: &crate::topics::Topic) -> TopicMetadata {
    TopicMetadata {
        name: t.meta.name.clone(),
        error_code: 0,
        partitions: t
            .partitions
            .iter()
            .map(|p| PartitionMetadata {
                partition: p.index,
                error_code: 0,
                leader_id: node,
                leader_epoch: 0,
                replicas: vec![node],
                in_sync_replicas: vec![node],
                log_start_offset: p.log.log_start_offset().0,
                high_watermark: p.high_watermark().0,
            })
            .collect(),
    }
}

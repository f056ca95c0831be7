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
    let cluster = &ctx.cluster;
    let state = cluster.state();
    let mut out: Vec<TopicMetadata> = Vec::new();
    let names: Vec<String> = if req.topics.is_empty() {
        state.topics.keys().cloned().collect()
    } else {
        req.topics.clone()
    };
    for name in names {
        match state.topics.get(&name) {
            Some(t) => out.push(TopicMetadata {
                name: name.clone(),
                error_code: 0,
                partitions: (0..t.partitions.len() as u32)
                    .map(|p| {
                        let v = cluster.view(t, p);
                        PartitionMetadata {
                            partition: p,
                            error_code: if v.leader.is_some() {
                                0
                            } else {
                                ErrorCode::NotLeader.code()
                            },
                            leader_id: v.leader.map_or(-1, |l| l as i32),
                            leader_epoch: v.term as i32,
                            replicas: v.replicas.iter().map(|r| *r as i32).collect(),
                            in_sync_replicas: v.in_sync.iter().map(|r| *r as i32).collect(),
                            log_start_offset: v.log_start.0,
                            high_watermark: v.high_watermark.0,
                        }
                    })
                    .collect(),
            }),
            None => out.push(TopicMetadata {
                name,
                error_code: ErrorCode::UnknownTopicOrPartition.code(),
                partitions: Vec::new(),
            }),
        }
    }
    let mut brokers: Vec<BrokerInfo> = state
        .brokers
        .iter()
        .map(|(id, b)| {
            let (host, port) = host_port(&b.client_addr);
            BrokerInfo {
                node_id: *id as i32,
                host,
                port,
            }
        })
        .collect();
    // Until this broker's registration has been applied, it still answers for itself.
    if !state.brokers.contains_key(&cluster.node_id) {
        let (host, port) = host_port(&ctx.config.advertise);
        brokers.push(BrokerInfo {
            node_id: cluster.node_id as i32,
            host,
            port,
        });
    }
    MetadataResponse {
        brokers,
        controller_id: cluster.controller_leader().map_or(-1, |c| c as i32),
        cluster_id: ctx.cluster_id.clone(),
        topics: out,
    }
}

//! Topic administration: CreateTopics, DeleteTopics, DescribeConfigs, AlterConfigs.

use std::collections::BTreeMap;
use std::sync::Arc;

use rafka_protocol::messages::*;

use super::{blocking, Context};
use crate::topics::TopicMeta;

fn result(name: String, r: crate::Result<()>) -> TopicResult {
    match r {
        Ok(()) => TopicResult {
            name,
            error_code: 0,
            error_message: String::new(),
        },
        Err(e) => TopicResult {
            name,
            error_code: e.error_code().code(),
            error_message: e.to_string(),
        },
    }
}

pub async fn create_topics(ctx: Arc<Context>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let brokers = ctx.config.peers.len() as u32;
        let meta = TopicMeta {
            name: t.name.clone(),
            partitions: if t.partitions == 0 { 1 } else { t.partitions },
            replication_factor: if t.replication_factor == 0 {
                brokers.min(3)
            } else {
                t.replication_factor
            },
            configs: t.configs.into_iter().collect::<BTreeMap<_, _>>(),
        };
        let topics = Arc::clone(&ctx.topics);
        let validate_only = req.validate_only;
        let r = blocking(move || topics.create_topic(meta, validate_only)).await;
        if r.is_ok() && !validate_only {
            tracing::info!(topic = %t.name, "created topic");
        }
        results.push(result(t.name, r));
    }
    CreateTopicsResponse { results }
}

pub async fn delete_topics(ctx: Arc<Context>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(req.names.len());
    for name in req.names {
        let topics = Arc::clone(&ctx.topics);
        let n = name.clone();
        let r = blocking(move || topics.delete_topic(&n)).await;
        if r.is_ok() {
            tracing::info!(topic = %name, "deleted topic");
        }
        results.push(result(name, r));
    }
    DeleteTopicsResponse { results }
}

pub async fn describe_configs(
    ctx: Arc<Context>,
    req: DescribeConfigsRequest,
) -> DescribeConfigsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|name| match ctx.topics.describe_configs(&name) {
            Ok(entries) => TopicConfigs {
                name,
                error_code: 0,
                error_message: String::new(),
                entries: entries
                    .into_iter()
                    .map(|(key, value, is_default)| ConfigEntry {
                        key,
                        value,
                        is_default,
                    })
                    .collect(),
            },
            Err(e) => TopicConfigs {
                name,
                error_code: e.error_code().code(),
                error_message: e.to_string(),
                entries: Vec::new(),
            },
        })
        .collect();
    DescribeConfigsResponse { topics }
}

pub async fn alter_configs(ctx: Arc<Context>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let topics = Arc::clone(&ctx.topics);
        let name = t.name.clone();
        let set: BTreeMap<String, String> = t.set.into_iter().collect();
        let reset = t.reset;
        let validate_only = req.validate_only;
        let r = blocking(move || topics.alter_configs(&name, &set, &reset, validate_only)).await;
        results.push(result(t.name, r));
    }
    AlterConfigsResponse { results }
}

//! Topic administration: CreateTopics, DeleteTopics, DescribeConfigs, AlterConfigs.
//!
//! Changes are commands to the controller (forwarded to its leader by whichever broker gets
//! the request); what can be checked without the controller's state (names, counts, config
//! syntax) is checked here first, the rest when the controller applies the command.

use std::collections::BTreeMap;
use std::sync::Arc;

use rafka_protocol::messages::*;

use super::Context;
use crate::error::Error;
use crate::replica::controller_sm::Command;
use crate::topics::{effective_config, validate_topic_name, PARTITIONS_PER_TOPIC_MAX};

/// Clients may not create or delete the broker's internal topics (names starting `__`).
fn refuse_internal(name: &str) -> crate::Result<()> {
    if crate::topics::is_internal(name) {
        return Err(Error::InvalidTopic {
            name: name.to_string(),
            reason: "names starting with '__' are reserved for the broker's internal topics",
        });
    }
    Ok(())
}

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

async fn create_one(ctx: &Context, t: CreatableTopic, validate_only: bool) -> crate::Result<()> {
    validate_topic_name(&t.name)?;
    refuse_internal(&t.name)?;
    let partitions = if t.partitions == 0 { 1 } else { t.partitions };
    if partitions > PARTITIONS_PER_TOPIC_MAX {
        return Err(Error::InvalidPartitions {
            count: partitions,
            max: PARTITIONS_PER_TOPIC_MAX,
        });
    }
    let configs: BTreeMap<String, String> = t.configs.into_iter().collect();
    effective_config(ctx.cluster.defaults(), &configs)?;
    let voters = ctx.config.peers.len() as u32;
    if t.replication_factor > voters {
        return Err(Error::InvalidReplicationFactor {
            factor: t.replication_factor,
            reason: "larger than the number of brokers",
        });
    }
    if validate_only {
        if ctx.cluster.state().topics.contains_key(&t.name) {
            return Err(Error::TopicAlreadyExists(t.name));
        }
        return Ok(());
    }
    ctx.cluster
        .propose(Command::CreateTopic {
            name: t.name.clone(),
            partitions,
            replication_factor: t.replication_factor,
            configs,
        })
        .await?;
    // Answer once the partitions can take writes, so that "create, then produce" just works.
    ctx.cluster.wait_for_leaders(&t.name).await;
    Ok(())
}

pub async fn create_topics(ctx: Arc<Context>, req: CreateTopicsRequest) -> CreateTopicsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let name = t.name.clone();
        let r = create_one(&ctx, t, req.validate_only).await;
        if r.is_ok() && !req.validate_only {
            tracing::info!(topic = %name, "created topic");
        }
        results.push(result(name, r));
    }
    CreateTopicsResponse { results }
}

pub async fn delete_topics(ctx: Arc<Context>, req: DeleteTopicsRequest) -> DeleteTopicsResponse {
    let mut results = Vec::with_capacity(req.names.len());
    for name in req.names {
        let r = match refuse_internal(&name) {
            Ok(()) => {
                ctx.cluster
                    .propose(Command::DeleteTopic { name: name.clone() })
                    .await
            }
            Err(e) => Err(e),
        };
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
    let state = ctx.cluster.state();
    let topics = req
        .topics
        .into_iter()
        .map(|name| {
            let described = match state.topics.get(&name) {
                Some(t) => crate::topics::describe_configs(ctx.cluster.defaults(), &t.configs),
                None => Err(Error::UnknownTopicOrPartition(name.clone())),
            };
            match described {
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
            }
        })
        .collect();
    DescribeConfigsResponse { topics }
}

async fn alter_one(
    ctx: &Context,
    name: String,
    set: BTreeMap<String, String>,
    reset: Vec<String>,
    validate_only: bool,
) -> crate::Result<()> {
    let state = ctx.cluster.state();
    let topic = state
        .topics
        .get(&name)
        .ok_or_else(|| Error::UnknownTopicOrPartition(name.clone()))?;
    let mut configs = topic.configs.clone();
    for k in &reset {
        configs.remove(k);
    }
    configs.extend(set);
    effective_config(ctx.cluster.defaults(), &configs)?;
    if validate_only {
        return Ok(());
    }
    ctx.cluster
        .propose(Command::SetTopicConfigs { name, configs })
        .await
}

pub async fn alter_configs(ctx: Arc<Context>, req: AlterConfigsRequest) -> AlterConfigsResponse {
    let mut results = Vec::with_capacity(req.topics.len());
    for t in req.topics {
        let set: BTreeMap<String, String> = t.set.into_iter().collect();
        let r = alter_one(&ctx, t.name.clone(), set, t.reset, req.validate_only).await;
        results.push(result(t.name, r));
    }
    AlterConfigsResponse { results }
}

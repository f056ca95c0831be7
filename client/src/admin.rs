//! The admin client: topics, topic configs and cluster metadata; consumer groups in [`group`].
//!
//! Topic creation and deletion go to the controller when metadata names one, else to any
//! broker. Each call is retried on connection errors and retriable codes until the request
//! timeout; a retried create may then report TOPIC_ALREADY_EXISTS for a topic the first
//! attempt created, which is why [`Admin::create_topic`] documents that case.

pub mod group;

use std::collections::BTreeMap;

use rafka_protocol::messages::{
    AlterConfigsRequest, AlterTopicConfigs, CreatableTopic, CreateTopicsRequest,
    DeleteTopicsRequest, DescribeConfigsRequest, TopicResult,
};
use rafka_protocol::ErrorCode;
use tokio::time::Instant;

use crate::cluster::{ClientConfig, Cluster, ClusterMetadata, TopicInfo};
use crate::error::{ClientError, Result};

/// A topic to create.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTopic {
    pub name: String,
    /// 0 means 1.
    pub partitions: u32,
    /// 0 means the broker's default.
    pub replication_factor: u32,
    /// Topic configs such as `retention.ms`, `retention.bytes`, `segment.bytes`, `segment.ms`.
    pub configs: BTreeMap<String, String>,
}

impl NewTopic {
    /// One partition, the broker's default replication factor, no configs.
    pub fn new(name: impl Into<String>) -> NewTopic {
        NewTopic {
            name: name.into(),
            partitions: 1,
            ..NewTopic::default()
        }
    }

    pub fn partitions(mut self, partitions: u32) -> NewTopic {
        self.partitions = partitions;
        self
    }

    pub fn replication_factor(mut self, replication_factor: u32) -> NewTopic {
        self.replication_factor = replication_factor;
        self
    }

    pub fn config(mut self, key: impl Into<String>, value: impl Into<String>) -> NewTopic {
        self.configs.insert(key.into(), value.into());
        self
    }
}

/// One topic config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigEntry {
    pub key: String,
    pub value: String,
    /// Not set on the topic: the broker default applies.
    pub is_default: bool,
}

/// A change to a topic's configs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigChanges {
    /// Keys to set to a value.
    pub set: BTreeMap<String, String>,
    /// Keys to return to their defaults.
    pub reset: Vec<String>,
}

/// The admin client.
#[derive(Clone)]
pub struct Admin {
    cluster: Cluster,
}

impl Admin {
    /// Creates an admin client (connects lazily).
    pub fn new(config: ClientConfig) -> Result<Admin> {
        Ok(Admin {
            cluster: Cluster::new(config)?,
        })
    }

    /// The cluster view this client uses.
    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cluster.config().request_timeout
    }

    /// Creates a topic. TOPIC_ALREADY_EXISTS is an error, also when an earlier attempt of this
    /// same call created the topic before its response was lost.
    pub async fn create_topic(&self, topic: NewTopic) -> Result<()> {
        let request = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: topic.name.clone(),
                partitions: topic.partitions,
                replication_factor: topic.replication_factor,
                configs: topic.configs.into_iter().collect(),
            }],
            validate_only: false,
        };
        let results = self
            .cluster
            .retry_if(&[], self.deadline(), admin_retriable, || async {
                let r = self.cluster.send_controller(request.clone()).await?;
                topic_result(r.results, &topic.name)
            })
            .await;
        // Make the new topic visible to this client's later calls.
        if results.is_ok() {
            let _ = self
                .cluster
                .refresh_metadata(std::slice::from_ref(&topic.name))
                .await;
        }
        results
    }

    /// Deletes a topic and its data.
    pub async fn delete_topic(&self, name: &str) -> Result<()> {
        let request = DeleteTopicsRequest {
            names: vec![name.to_owned()],
        };
        self.cluster
            .retry_if(&[], self.deadline(), admin_retriable, || async {
                let r = self.cluster.send_controller(request.clone()).await?;
                topic_result(r.results, name)
            })
            .await
    }

    /// The names of every topic, sorted.
    pub async fn list_topics(&self) -> Result<Vec<String>> {
        let meta = self.cluster_metadata().await?;
        Ok(meta.topics.into_iter().map(|t| t.name).collect())
    }

    /// The metadata of one topic: per partition its leader, replicas, in-sync replicas, log
    /// start offset and high watermark.
    pub async fn describe_topic(&self, name: &str) -> Result<TopicInfo> {
        let topics = [name.to_owned()];
        let meta = self
            .cluster
            .retry(&topics, self.deadline(), || {
                self.cluster.refresh_metadata(&topics)
            })
            .await?;
        meta.topic(name)
            .cloned()
            .ok_or_else(|| ClientError::broker_topic(ErrorCode::UnknownTopicOrPartition, "", name))
    }

    /// Metadata of the whole cluster: brokers, controller, every topic.
    pub async fn cluster_metadata(&self) -> Result<ClusterMetadata> {
        self.cluster
            .retry(&[], self.deadline(), || self.cluster.refresh_metadata(&[]))
            .await
    }

    /// A topic's configs, defaults included, sorted by key.
    pub async fn describe_configs(&self, name: &str) -> Result<Vec<ConfigEntry>> {
        let request = DescribeConfigsRequest {
            topics: vec![name.to_owned()],
        };
        let topics = [name.to_owned()];
        self.cluster
            .retry_if(&topics, self.deadline(), admin_retriable, || async {
                let r = self.cluster.send_any(request.clone()).await?;
                let t = r
                    .topics
                    .into_iter()
                    .find(|t| t.name == name)
                    .ok_or_else(|| missing_result(name))?;
                let code = ErrorCode::from_code(t.error_code);
                if !code.is_ok() {
                    return Err(ClientError::broker_topic(code, t.error_message, name));
                }
                let mut entries: Vec<ConfigEntry> = t
                    .entries
                    .into_iter()
                    .map(|e| ConfigEntry {
                        key: e.key,
                        value: e.value,
                        is_default: e.is_default,
                    })
                    .collect();
                entries.sort_by(|a, b| a.key.cmp(&b.key));
                Ok(entries)
            })
            .await
    }

    /// Sets and resets configs of a topic, all or nothing as the broker applies them.
    pub async fn alter_configs(&self, name: &str, changes: ConfigChanges) -> Result<()> {
        let request = AlterConfigsRequest {
            topics: vec![AlterTopicConfigs {
                name: name.to_owned(),
                set: changes.set.into_iter().collect(),
                reset: changes.reset,
            }],
            validate_only: false,
        };
        self.cluster
            .retry_if(&[], self.deadline(), admin_retriable, || async {
                let r = self.cluster.send_controller(request.clone()).await?;
                topic_result(r.results, name)
            })
            .await
    }
}

/// Admin calls name topics explicitly: a topic the cluster does not know is an answer, not a
/// transient state worth retrying.
fn admin_retriable(e: &ClientError) -> bool {
    e.is_retriable() && e.code() != Some(ErrorCode::UnknownTopicOrPartition)
}

fn missing_result(name: &str) -> ClientError {
    ClientError::Protocol {
        addr: String::new(),
        reason: format!("response has no result for topic '{name}'"),
    }
}

/// The outcome for `name` among per-topic results.
fn topic_result(results: Vec<TopicResult>, name: &str) -> Result<()> {
    let r = results
        .into_iter()
        .find(|r| r.name == name)
        .ok_or_else(|| missing_result(name))?;
    let code = ErrorCode::from_code(r.error_code);
    if code.is_ok() {
        Ok(())
    } else {
        Err(ClientError::broker_topic(code, r.error_message, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_results_map_to_errors() {
        let ok = vec![TopicResult {
            name: "t".into(),
            error_code: 0,
            error_message: String::new(),
        }];
        assert!(topic_result(ok, "t").is_ok());
        let exists = vec![TopicResult {
            name: "t".into(),
            error_code: ErrorCode::TopicAlreadyExists.code(),
            error_message: String::new(),
        }];
        let e = topic_result(exists, "t").unwrap_err();
        assert_eq!(
            e.to_string(),
            "topic 't' already exists (TOPIC_ALREADY_EXISTS)"
        );
        assert!(topic_result(Vec::new(), "t").is_err());
    }
}

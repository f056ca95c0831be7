//! The admin client's consumer-group calls: find a coordinator, list and describe groups (with
//! per-partition lag in records and in milliseconds), and reset a group's offsets.
//!
//! Lag in milliseconds is the age of the oldest record the group has not consumed: now minus
//! the timestamp of the record at the committed offset (as Kinesis' iterator age). It costs one
//! small fetch per lagging partition; a partition without lag has 0.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rafka_protocol::api::{isolation, list_offsets, member_epoch};
use rafka_protocol::messages::{
    DescribeGroupRequest, FetchPartition, FetchRequest, FetchTopic, ListGroupsRequest,
};
use rafka_protocol::{ErrorCode, Offset};

use super::Admin;
use crate::cluster::{BrokerId, TopicPartition};
use crate::consumer::group::{commit_offsets, fetch_committed, from_wire};
use crate::consumer::{decode_records, list_offset, SeekTo};
use crate::coordinator::{Coordinator, CoordinatorInfo, CoordinatorResponse};
use crate::error::{ClientError, Result};

/// Bytes asked for when reading the record at a committed offset (for lag in ms). A batch
/// larger than this cannot be decoded and leaves the lag in ms unknown.
const LAG_FETCH_BYTES: u32 = 1 << 20;

/// Fetches made to step over control batches (leader changes) when looking for the first
/// data record at or after a committed offset.
const LAG_FETCH_ATTEMPTS_MAX: usize = 8;

/// A group as one coordinator lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupListing {
    pub group_id: String,
    /// `empty`, `reconciling` or `stable`.
    pub state: String,
    pub members: u32,
}

/// One member of a described group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberDescription {
    pub member_id: String,
    /// Static membership id, if any.
    pub instance_id: Option<String>,
    pub client_id: String,
    pub host: String,
    pub member_epoch: i32,
    pub subscribed_topics: Vec<String>,
    /// What the member owns now (sorted).
    pub assignment: Vec<TopicPartition>,
    /// Where the assignor wants it to be (sorted).
    pub target: Vec<TopicPartition>,
}

/// One partition of a described group's topics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    pub partition: TopicPartition,
    /// `None`: the group committed nothing for it.
    pub committed: Option<Offset>,
    pub high_watermark: Offset,
    /// Records between the committed offset and the high watermark (`None` when nothing is
    /// committed).
    pub lag: Option<u64>,
    /// Age of the oldest unconsumed record, 0 without lag; `None` when unknown (nothing
    /// committed, the record has no timestamp, or it could not be read).
    pub lag_ms: Option<u64>,
    /// The member owning the partition now.
    pub member_id: Option<String>,
}

/// A group as its coordinator describes it, with the lag of every partition of the topics
/// its members subscribe to or it has committed offsets for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupDescription {
    pub group_id: String,
    /// `dead` (unknown group), `empty`, `reconciling` or `stable`.
    pub state: String,
    pub group_epoch: i32,
    pub assignor: String,
    pub members: Vec<MemberDescription>,
    /// Sorted by topic and partition.
    pub partitions: Vec<PartitionLag>,
}

impl Admin {
    fn coordinator(&self, group: &str) -> Result<Coordinator> {
        if group.is_empty() {
            return Err(ClientError::InvalidArgument(
                "the group id must not be empty".into(),
            ));
        }
        Ok(Coordinator::new(self.cluster.clone(), group))
    }

    /// Where `group`'s coordinator is, retrying while the cluster has none yet.
    pub async fn find_coordinator(&self, group: &str) -> Result<CoordinatorInfo> {
        self.coordinator(group)?.find(self.deadline()).await
    }

    /// Every group of the cluster: each broker lists the groups it coordinates, so every
    /// broker in the metadata is asked. A broker that does not answer in time fails the call
    /// rather than giving an incomplete list. Sorted by group id.
    pub async fn list_groups(&self) -> Result<Vec<GroupListing>> {
        let meta = self.cluster_metadata().await?;
        let deadline = self.deadline();
        let timeout = self.cluster.config().request_timeout;
        let asks = meta.brokers.iter().map(|b| {
            let id = b.id;
            self.cluster.retry(&[], deadline, move || async move {
                let conn = self.cluster.connection(id).await?;
                let resp = conn.send(ListGroupsRequest {}, timeout).await?;
                let code = ErrorCode::from_code(resp.error_code());
                if code.is_ok() {
                    Ok(resp.groups)
                } else {
                    Err(ClientError::Broker {
                        code,
                        message: format!("broker {id}: {}", resp.error_message),
                        topic: None,
                        partition: None,
                    })
                }
            })
        });
        let answers = futures::future::try_join_all(asks).await?;
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        for g in answers.into_iter().flatten() {
            // During a coordinator move two brokers may list a group; keep one.
            groups.entry(g.group_id.clone()).or_insert(GroupListing {
                group_id: g.group_id,
                state: g.state,
                members: g.members,
            });
        }
        Ok(groups.into_values().collect())
    }

    /// Members, assignment, state and per-partition lag of `group`. An unknown group is
    /// described with state `dead` and nothing else.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription> {
        let coordinator = self.coordinator(group)?;
        let resp = coordinator
            .send(
                DescribeGroupRequest {
                    group_id: group.to_owned(),
                },
                self.deadline(),
            )
            .await?;
        let mut members: Vec<MemberDescription> = resp
            .members
            .into_iter()
            .map(|m| MemberDescription {
                member_id: m.member_id,
                instance_id: (!m.instance_id.is_empty()).then_some(m.instance_id),
                client_id: m.client_id,
                host: m.client_host,
                member_epoch: m.member_epoch,
                subscribed_topics: m.subscribed_topics,
                assignment: from_wire(&m.assignment).into_iter().collect(),
                target: from_wire(&m.target).into_iter().collect(),
            })
            .collect();
        members.sort_by(|a, b| a.member_id.cmp(&b.member_id));
        let committed = fetch_committed(&coordinator, &[]).await?;
        let mut topics: BTreeSet<String> = committed.keys().map(|tp| tp.topic.clone()).collect();
        for m in &members {
            topics.extend(m.subscribed_topics.iter().cloned());
        }
        let owners: BTreeMap<&TopicPartition, &str> = members
            .iter()
            .flat_map(|m| m.assignment.iter().map(|tp| (tp, m.member_id.as_str())))
            .collect();
        let mut partitions = Vec::new();
        for topic in topics {
            let info = match self.describe_topic(&topic).await {
                Ok(info) => info,
                // A deleted topic may still have committed offsets: show what is known.
                Err(e) if e.code() == Some(ErrorCode::UnknownTopicOrPartition) => continue,
                Err(e) => return Err(e),
            };
            let lags = info.partitions.iter().map(|p| {
                let tp = TopicPartition::new(topic.clone(), p.partition);
                let committed = committed.get(&tp).copied().flatten();
                async move { self.partition_lag(tp, committed).await }
            });
            for mut lag in futures::future::try_join_all(lags).await? {
                lag.member_id = owners.get(&lag.partition).map(|m| (*m).to_owned());
                partitions.push(lag);
            }
        }
        Ok(GroupDescription {
            group_id: if resp.group_id.is_empty() {
                group.to_owned()
            } else {
                resp.group_id
            },
            state: resp.state,
            group_epoch: resp.group_epoch,
            assignor: resp.assignor,
            members,
            partitions,
        })
    }

    async fn partition_lag(
        &self,
        tp: TopicPartition,
        committed: Option<Offset>,
    ) -> Result<PartitionLag> {
        let high_watermark = list_offset(
            &self.cluster,
            &tp,
            list_offsets::LATEST,
            isolation::READ_UNCOMMITTED,
        )
        .await?;
        let lag = committed.map(|c| high_watermark.0.saturating_sub(c.0));
        let lag_ms = match (committed, lag) {
            (Some(_), Some(0)) => Some(0),
            (Some(c), Some(_)) => match self.first_timestamp_ms(&tp, c, high_watermark).await {
                Ok(ts) => ts.map(|ts| now_ms().saturating_sub(ts)),
                Err(e) => {
                    tracing::debug!(partition = %tp, error = %e, "cannot read the oldest unconsumed record");
                    None
                }
            },
            _ => None,
        };
        Ok(PartitionLag {
            partition: tp,
            committed,
            high_watermark,
            lag,
            lag_ms,
            member_id: None,
        })
    }

    /// The timestamp of the first data record at or after `from` (below `high_watermark`);
    /// `None` when there is none or it carries no timestamp. Starts at the log start when
    /// `from` was deleted by retention.
    async fn first_timestamp_ms(
        &self,
        tp: &TopicPartition,
        from: Offset,
        high_watermark: Offset,
    ) -> Result<Option<u64>> {
        let timeout = self.cluster.config().request_timeout;
        let mut position = from;
        for _ in 0..LAG_FETCH_ATTEMPTS_MAX {
            if position >= high_watermark {
                return Ok(None);
            }
            let leader: BrokerId = self.cluster.leader(tp).await?;
            let conn = self.cluster.connection(leader).await?;
            let request = FetchRequest {
                max_wait_ms: 0,
                min_bytes: 0,
                max_bytes: LAG_FETCH_BYTES,
                isolation_level: 0,
                topics: vec![FetchTopic {
                    name: tp.topic.clone(),
                    partitions: vec![FetchPartition {
                        partition: tp.partition,
                        fetch_offset: position.0,
                        partition_max_bytes: LAG_FETCH_BYTES,
                    }],
                }],
            };
            let resp = conn.send(request, timeout).await?;
            let Some(p) = resp
                .topics
                .into_iter()
                .flat_map(|t| t.partitions)
                .find(|p| p.partition == tp.partition)
            else {
                return Ok(None);
            };
            match ErrorCode::from_code(p.error_code) {
                ErrorCode::None => {}
                ErrorCode::OffsetOutOfRange if p.log_start_offset > position.0 => {
                    position = Offset(p.log_start_offset);
                    continue;
                }
                code => {
                    return Err(ClientError::broker(
                        code,
                        p.error_message,
                        &tp.topic,
                        tp.partition,
                    ))
                }
            }
            let (records, next) = decode_records(tp, p.records, position)?;
            if let Some(first) = records.first() {
                return Ok(first
                    .timestamp
                    .and_then(|t| u64::try_from(t.as_millis()).ok()));
            }
            if next == position {
                return Ok(None); // nothing readable yet
            }
            position = next; // only control batches: look further
        }
        Ok(None)
    }

    /// Sets `group`'s committed offset of every partition of `topic` to `to`, resolved per
    /// partition on its leader (an explicit offset is clamped into the partition's
    /// [log start, high watermark]). Only allowed while the group has no members: the broker
    /// answers NON_EMPTY_GROUP otherwise. Returns the offsets committed, by partition.
    pub async fn reset_offsets(
        &self,
        group: &str,
        topic: &str,
        to: SeekTo,
    ) -> Result<BTreeMap<u32, Offset>> {
        let coordinator = self.coordinator(group)?;
        let info = self.describe_topic(topic).await?;
        let resolve = info.partitions.iter().map(|p| {
            let tp = TopicPartition::new(topic, p.partition);
            async move {
                let offset = match to {
                    SeekTo::Earliest => {
                        list_offset(
                            &self.cluster,
                            &tp,
                            list_offsets::EARLIEST,
                            isolation::READ_UNCOMMITTED,
                        )
                        .await?
                    }
                    SeekTo::Latest => {
                        list_offset(
                            &self.cluster,
                            &tp,
                            list_offsets::LATEST,
                            isolation::READ_UNCOMMITTED,
                        )
                        .await?
                    }
                    SeekTo::Timestamp(t) => {
                        list_offset(
                            &self.cluster,
                            &tp,
                            t.as_millis(),
                            isolation::READ_UNCOMMITTED,
                        )
                        .await?
                    }
                    SeekTo::Offset(o) => {
                        let start = list_offset(
                            &self.cluster,
                            &tp,
                            list_offsets::EARLIEST,
                            isolation::READ_UNCOMMITTED,
                        )
                        .await?;
                        let end = list_offset(
                            &self.cluster,
                            &tp,
                            list_offsets::LATEST,
                            isolation::READ_UNCOMMITTED,
                        )
                        .await?;
                        o.clamp(start, end.max(start))
                    }
                };
                Ok::<_, ClientError>((tp, offset))
            }
        });
        let offsets: BTreeMap<TopicPartition, Offset> = futures::future::try_join_all(resolve)
            .await?
            .into_iter()
            .collect();
        // From outside the group: no member id, epoch -1.
        commit_offsets(&coordinator, &offsets, || {
            Ok((String::new(), member_epoch::NONE))
        })
        .await?;
        Ok(offsets
            .into_iter()
            .map(|(tp, offset)| (tp.partition, offset))
            .collect())
    }

    /// The committed offsets of `group` (every partition it committed when `partitions` is
    /// empty); `None` where nothing is committed.
    pub async fn committed_offsets(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<Offset>>> {
        fetch_committed(&self.coordinator(group)?, partitions).await
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as u64
}

//! `rafka cluster status`: brokers, the controller, partitions without a leader and
//! under-replicated partitions.

use crate::admin::Admin;
use crate::cli::format::{id_list, table};
use crate::cli::CliResult;
use crate::cluster::{ClientConfig, ClusterMetadata};

pub async fn status(bootstrap: &str) -> CliResult {
    let admin = Admin::new(ClientConfig::new(bootstrap))?;
    let meta = admin.cluster_metadata().await?;
    print!("{}", render(&meta));
    Ok(())
}

/// The status report for a metadata snapshot.
pub fn render(meta: &ClusterMetadata) -> String {
    let mut out = String::new();
    if !meta.cluster_id.is_empty() {
        out.push_str(&format!("Cluster: {}\n", meta.cluster_id));
    }
    let controller = meta
        .controller
        .map_or_else(|| "none".to_owned(), |c| c.to_string());
    out.push_str(&format!("Controller: {controller}\n"));
    out.push_str(&format!("Brokers: {}\n", meta.brokers.len()));
    let rows: Vec<Vec<String>> = meta
        .brokers
        .iter()
        .map(|b| {
            let role = if Some(b.id) == meta.controller {
                "controller"
            } else {
                ""
            };
            vec![b.id.to_string(), b.addr(), role.to_owned()]
        })
        .collect();
    for line in table(&["ID", "ADDRESS", "ROLE"], &rows).lines() {
        out.push_str(&format!("  {line}\n"));
    }
    let partitions: Vec<_> = meta
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(move |p| (t.name.as_str(), p)))
        .collect();
    out.push_str(&format!(
        "Topics: {}  Partitions: {}\n",
        meta.topics.len(),
        partitions.len()
    ));
    let leaderless: Vec<_> = partitions
        .iter()
        .filter(|(_, p)| p.leader.is_none())
        .collect();
    out.push_str(&format!(
        "Partitions without a leader: {}\n",
        leaderless.len()
    ));
    for (topic, p) in &leaderless {
        out.push_str(&format!(
            "  {topic}-{} replicas {}\n",
            p.partition,
            id_list(&p.replicas)
        ));
    }
    let under: Vec<_> = partitions
        .iter()
        .filter(|(_, p)| p.is_under_replicated())
        .collect();
    out.push_str(&format!("Under-replicated partitions: {}\n", under.len()));
    for (topic, p) in &under {
        out.push_str(&format!(
            "  {topic}-{} replicas {} in-sync {}\n",
            p.partition,
            id_list(&p.replicas),
            id_list(&p.in_sync_replicas)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{BrokerId, BrokerInfo, PartitionInfo, TopicInfo};
    use crate::protocol::{ErrorCode, Offset};

    #[test]
    fn status_counts_problem_partitions() {
        let p = |partition, leader: Option<i32>, isr: Vec<i32>| PartitionInfo {
            partition,
            leader: leader.map(BrokerId),
            leader_epoch: 1,
            replicas: vec![BrokerId(1), BrokerId(2), BrokerId(3)],
            in_sync_replicas: isr.into_iter().map(BrokerId).collect(),
            log_start_offset: Offset(0),
            high_watermark: Offset(0),
            error: ErrorCode::None,
        };
        let meta = ClusterMetadata {
            cluster_id: "c1".into(),
            controller: Some(BrokerId(1)),
            brokers: vec![BrokerInfo {
                id: BrokerId(1),
                host: "127.0.0.1".into(),
                port: 7092,
            }],
            topics: vec![TopicInfo {
                name: "t".into(),
                partitions: vec![
                    p(0, Some(1), vec![1, 2, 3]),
                    p(1, None, vec![]),
                    p(2, Some(2), vec![2]),
                ],
            }],
        };
        let text = render(&meta);
        assert!(text.contains("Controller: 1\n"), "{text}");
        assert!(
            text.contains("  1   127.0.0.1:7092  controller\n"),
            "{text}"
        );
        assert!(
            text.contains("Partitions without a leader: 1\n  t-1 replicas 1,2,3\n"),
            "{text}"
        );
        assert!(text.contains("Under-replicated partitions: 2\n"), "{text}");
    }
}

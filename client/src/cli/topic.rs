//! `rafka topic create|list|describe|delete|alter`.

use crate::admin::{Admin, ConfigChanges, NewTopic};
use crate::cli::format::{id_list, table};
use crate::cli::{CliResult, TopicCommand};
use crate::cluster::{ClientConfig, TopicInfo};

pub async fn run(bootstrap: &str, command: TopicCommand) -> CliResult {
    let admin = Admin::new(ClientConfig::new(bootstrap))?;
    match command {
        TopicCommand::Create {
            name,
            partitions,
            replication_factor,
            configs,
        } => {
            let topic = NewTopic {
                name: name.clone(),
                partitions,
                replication_factor,
                configs: configs.into_iter().collect(),
            };
            admin.create_topic(topic).await?;
            println!("created topic '{name}'");
        }
        TopicCommand::List => {
            for name in admin.list_topics().await? {
                println!("{name}");
            }
        }
        TopicCommand::Describe { name } => {
            let topic = admin.describe_topic(&name).await?;
            print!("{}", describe_table(&topic));
            // Configs are extra detail: a broker that cannot describe them still gets the
            // partition table, with the reason said.
            match admin.describe_configs(&name).await {
                Ok(entries) => {
                    let set: Vec<_> = entries.iter().filter(|e| !e.is_default).collect();
                    if set.is_empty() {
                        println!("Configs: (all defaults)");
                    } else {
                        println!("Configs:");
                        for e in set {
                            println!("  {}={}", e.key, e.value);
                        }
                    }
                }
                Err(e) => println!("Configs: unavailable ({e})"),
            }
        }
        TopicCommand::Delete { name } => {
            admin.delete_topic(&name).await?;
            println!("deleted topic '{name}'");
        }
        TopicCommand::Alter {
            name,
            configs,
            resets,
        } => {
            if configs.is_empty() && resets.is_empty() {
                return Err(crate::cli::CliError::usage(
                    "topic alter needs at least one --config KEY=VALUE or --reset KEY",
                ));
            }
            let changes = ConfigChanges {
                set: configs.into_iter().collect(),
                reset: resets,
            };
            admin.alter_configs(&name, changes).await?;
            println!("altered topic '{name}'");
        }
    }
    Ok(())
}

/// The `topic describe` table.
pub fn describe_table(topic: &TopicInfo) -> String {
    let rows: Vec<Vec<String>> = topic
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.to_string(),
                p.leader
                    .map_or_else(|| "none".to_owned(), |l| l.to_string()),
                id_list(&p.replicas),
                id_list(&p.in_sync_replicas),
                p.log_start_offset.to_string(),
                p.high_watermark.to_string(),
            ]
        })
        .collect();
    format!(
        "Topic: {}  Partitions: {}\n{}",
        topic.name,
        topic.partitions.len(),
        table(
            &[
                "PARTITION",
                "LEADER",
                "REPLICAS",
                "IN-SYNC",
                "LOG-START",
                "HIGH-WATERMARK"
            ],
            &rows
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{BrokerId, PartitionInfo};
    use crate::protocol::{ErrorCode, Offset};

    #[test]
    fn describe_lists_every_partition() {
        let p = |partition, leader: Option<i32>| PartitionInfo {
            partition,
            leader: leader.map(BrokerId),
            leader_epoch: 1,
            replicas: vec![BrokerId(1), BrokerId(2)],
            in_sync_replicas: vec![BrokerId(1)],
            log_start_offset: Offset(0),
            high_watermark: Offset(1234),
            error: ErrorCode::None,
        };
        let t = TopicInfo {
            name: "t".into(),
            partitions: vec![p(0, Some(1)), p(1, None)],
        };
        assert_eq!(
            describe_table(&t),
            "Topic: t  Partitions: 2\n\
             PARTITION  LEADER  REPLICAS  IN-SYNC  LOG-START  HIGH-WATERMARK\n\
             0          1       1,2       1        0          1234\n\
             1          none    1,2       1        0          1234\n"
        );
    }
}

//! `rafka group list|describe|reset-offsets`: consumer groups as their coordinators see them.
//!
//! `describe` prints a header line, the members, then one row per partition of the group's
//! topics with its committed offset, high watermark and lag (records and milliseconds: the age
//! of the oldest unconsumed record). Unknown values print as `-`.

use crate::admin::group::{GroupDescription, GroupListing};
use crate::admin::Admin;
use crate::cli::format::table;
use crate::cli::{CliError, CliResult, GroupCommand, StartFrom};
use crate::cluster::{ClientConfig, TopicPartition};
use crate::consumer::SeekTo;
use crate::protocol::{Offset, Timestamp};

pub async fn run(bootstrap: &str, command: GroupCommand) -> CliResult {
    let admin = Admin::new(ClientConfig::new(bootstrap))?;
    match command {
        GroupCommand::List => {
            let groups = admin.list_groups().await?;
            print!("{}", list_table(&groups));
        }
        GroupCommand::Describe { group } => {
            let description = admin.describe_group(&group).await?;
            if description.state == "dead" {
                return Err(CliError::failure(format!("group '{group}' does not exist")));
            }
            print!("{}", describe_text(&description));
        }
        GroupCommand::ResetOffsets { group, topic, to } => {
            let to = match to {
                StartFrom::Earliest => SeekTo::Earliest,
                StartFrom::Latest => SeekTo::Latest,
                StartFrom::Offset(o) => SeekTo::Offset(Offset(o)),
                StartFrom::Timestamp(t) => SeekTo::Timestamp(Timestamp(t)),
            };
            let offsets = admin.reset_offsets(&group, &topic, to).await?;
            let rows: Vec<Vec<String>> = offsets
                .iter()
                .map(|(p, o)| vec![topic.clone(), p.to_string(), o.0.to_string()])
                .collect();
            print!("{}", table(&["TOPIC", "PARTITION", "NEW-OFFSET"], &rows));
        }
    }
    Ok(())
}

/// `group list`: one row per group.
pub fn list_table(groups: &[GroupListing]) -> String {
    let rows: Vec<Vec<String>> = groups
        .iter()
        .map(|g| vec![g.group_id.clone(), g.state.clone(), g.members.to_string()])
        .collect();
    table(&["GROUP", "STATE", "MEMBERS"], &rows)
}

fn dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn partitions_text(partitions: &[TopicPartition]) -> String {
    if partitions.is_empty() {
        return "-".to_owned();
    }
    partitions
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// `group describe`: header, members, per-partition lag.
pub fn describe_text(d: &GroupDescription) -> String {
    let mut out = format!(
        "Group: {}  State: {}  Epoch: {}  Assignor: {}  Members: {}\n",
        d.group_id,
        d.state,
        d.group_epoch,
        if d.assignor.is_empty() {
            "-"
        } else {
            &d.assignor
        },
        d.members.len()
    );
    if !d.members.is_empty() {
        out.push('\n');
        let rows: Vec<Vec<String>> = d
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    dash(m.instance_id.as_ref()),
                    m.client_id.clone(),
                    if m.host.is_empty() {
                        "-".into()
                    } else {
                        m.host.clone()
                    },
                    m.member_epoch.to_string(),
                    partitions_text(&m.assignment),
                ]
            })
            .collect();
        out.push_str(&table(
            &[
                "MEMBER-ID",
                "INSTANCE-ID",
                "CLIENT-ID",
                "HOST",
                "EPOCH",
                "ASSIGNMENT",
            ],
            &rows,
        ));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = d
        .partitions
        .iter()
        .map(|p| {
            vec![
                p.partition.topic.clone(),
                p.partition.partition.to_string(),
                dash(p.committed.map(|o| o.0)),
                p.high_watermark.0.to_string(),
                dash(p.lag),
                dash(p.lag_ms),
                dash(p.member_id.as_ref()),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "TOPIC",
            "PARTITION",
            "COMMITTED",
            "HIGH-WATERMARK",
            "LAG",
            "LAG-MS",
            "MEMBER",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::group::{MemberDescription, PartitionLag};

    #[test]
    fn describe_shows_members_and_lag_rows() {
        let tp = TopicPartition::new("t", 0);
        let d = GroupDescription {
            group_id: "g".into(),
            state: "stable".into(),
            group_epoch: 3,
            assignor: "sticky".into(),
            members: vec![MemberDescription {
                member_id: "m1".into(),
                instance_id: None,
                client_id: "cli".into(),
                host: "127.0.0.1".into(),
                member_epoch: 3,
                subscribed_topics: vec!["t".into()],
                assignment: vec![tp.clone()],
                target: vec![tp.clone()],
            }],
            partitions: vec![
                PartitionLag {
                    partition: tp,
                    committed: Some(Offset(5)),
                    high_watermark: Offset(9),
                    lag: Some(4),
                    lag_ms: Some(1200),
                    member_id: Some("m1".into()),
                },
                PartitionLag {
                    partition: TopicPartition::new("t", 1),
                    committed: None,
                    high_watermark: Offset(2),
                    lag: None,
                    lag_ms: None,
                    member_id: None,
                },
            ],
        };
        let text = describe_text(&d);
        assert!(
            text.starts_with("Group: g  State: stable  Epoch: 3  Assignor: sticky  Members: 1\n")
        );
        assert!(text.contains("m1         -            cli"), "{text}");
        let lines: Vec<&str> = text.lines().collect();
        let header = lines
            .iter()
            .position(|l| l.starts_with("TOPIC"))
            .expect("partition table");
        let cells: Vec<&str> = lines[header + 1].split_whitespace().collect();
        assert_eq!(cells, ["t", "0", "5", "9", "4", "1200", "m1"]);
        let cells: Vec<&str> = lines[header + 2].split_whitespace().collect();
        assert_eq!(cells, ["t", "1", "-", "2", "-", "-", "-"]);
    }

    #[test]
    fn list_has_one_row_per_group() {
        let text = list_table(&[GroupListing {
            group_id: "g".into(),
            state: "empty".into(),
            members: 0,
        }]);
        assert_eq!(text, "GROUP  STATE  MEMBERS\ng      empty  0\n");
    }
}

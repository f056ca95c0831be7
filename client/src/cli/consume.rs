//! `rafka consume`: prints records of one partition or every partition of a topic, or, with
//! `--group`, of the partitions a consumer group gives this process.
//!
//! With `--group` the consumer subscribes; `--from` applies only to partitions the group has
//! no committed offset for, and on exit (`--commit true`, the default) the offsets after the
//! printed records are committed before leaving the group. A record is printed before its
//! offset is committed, so a crash may print it again: at-least-once.
//!
//! `--isolation read_committed` prints only records outside transactions and of committed
//! transactions (and waits at a transaction still open); read_uncommitted, the default, prints
//! everything.
//!
//! Stops after `--max-messages`, after `--idle-timeout-ms` without a new record, or on SIGINT
//! (exit 0 in all three cases). Each record is written and flushed at once, so a pipe reader
//! sees it immediately; a closed pipe ends the command quietly.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::format::record_json;
use crate::cli::{CliError, CliResult, ConsumeArgs, Format, Isolation, StartFrom};
use crate::cluster::TopicPartition;
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, IsolationLevel, SeekTo};
use crate::protocol::{Offset, Timestamp};

/// Longest single poll, so the idle timeout and SIGINT are noticed promptly.
const POLL_SLICE: Duration = Duration::from_secs(1);

pub async fn run(bootstrap: &str, args: ConsumeArgs) -> CliResult {
    if args.group.is_some() && args.partition.is_some() {
        return Err(CliError::usage(
            "--partition cannot be used with --group: the group assigns the partitions",
        ));
    }
    if args.group.is_none() && args.commit == Some(true) {
        return Err(CliError::usage(
            "--commit true needs --group (offsets are committed to a consumer group)",
        ));
    }
    let start = match args.from {
        StartFrom::Earliest => SeekTo::Earliest,
        StartFrom::Latest => SeekTo::Latest,
        StartFrom::Offset(o) => SeekTo::Offset(Offset(o)),
        StartFrom::Timestamp(t) => SeekTo::Timestamp(Timestamp(t)),
    };
    let commit = args.commit.unwrap_or(true);
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_owned(),
        client_id: "rafka-cli".to_owned(),
        initial_position: start,
        group_id: args.group.clone(),
        // Positions cover exactly what was printed when the loop ends (see `print_records`),
        // so committing positions commits what was printed.
        enable_auto_commit: commit,
        isolation_level: match args.isolation {
            Isolation::ReadUncommitted => IsolationLevel::ReadUncommitted,
            Isolation::ReadCommitted => IsolationLevel::ReadCommitted,
        },
        ..ConsumerConfig::default()
    })?;
    let topic = consumer.cluster().topic(&args.topic).await?;
    if args.group.is_some() {
        consumer.subscribe([args.topic.clone()])?;
        let printed = print_records(&mut consumer, &args).await;
        // Leave (committing what was printed) even after a failure, so the partitions move
        // to other members now rather than after the session timeout.
        let closed = consumer.close().await;
        printed?;
        return closed.map_err(|e| CliError::failure(format!("leaving the group: {e}")));
    }
    let partitions: Vec<u32> = match args.partition {
        Some(p) if p as usize >= topic.partitions.len() => {
            return Err(CliError::usage(format!(
                "partition {p} does not exist: topic '{}' has {} partitions",
                args.topic,
                topic.partitions.len()
            )))
        }
        Some(p) => vec![p],
        None => topic.partitions.iter().map(|p| p.partition).collect(),
    };
    consumer.assign(
        partitions
            .into_iter()
            .map(|p| TopicPartition::new(args.topic.clone(), p)),
    );
    print_records(&mut consumer, &args).await
}

/// Prints records until `--max-messages`, `--idle-timeout-ms`, SIGINT or a failed write. When
/// it stops in the middle of a batch, each partition with unprinted records (the one whose
/// write failed included) is sought back to the first one, so the consumer's positions (which
/// a group commits on close) match what was printed.
async fn print_records(consumer: &mut Consumer, args: &ConsumeArgs) -> CliResult {
    if args.max_messages == Some(0) {
        return Ok(());
    }
    let idle = args.idle_timeout_ms.map(Duration::from_millis);
    let mut last_record = Instant::now();
    let mut printed = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let stdout = std::io::stdout();
    loop {
        let slice = match idle {
            Some(idle) => {
                let quiet = last_record.elapsed();
                if quiet >= idle {
                    return Ok(());
                }
                (idle - quiet).min(POLL_SLICE)
            }
            None => POLL_SLICE,
        };
        let records = tokio::select! {
            records = consumer.poll(slice) => records?,
            _ = &mut ctrl_c => return Ok(()),
        };
        if !records.is_empty() {
            last_record = Instant::now();
        }
        let mut out = stdout.lock();
        for (i, r) in records.iter().enumerate() {
            // How the command ends, and the first record that was not printed.
            let (end, first_unprinted) = match write_record(&mut out, r, args.format) {
                Ok(()) => {
                    printed += 1;
                    if Some(printed) != args.max_messages {
                        continue;
                    }
                    (Ok(()), i + 1)
                }
                // The reader is gone: end quietly, but this record never reached it.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => (Ok(()), i),
                Err(e) => (Err(CliError::failure(format!("writing stdout: {e}"))), i),
            };
            drop(out);
            // The positions are what a group commits on exit: they must cover only records
            // that were printed.
            for (tp, offset) in first_offsets(&records[first_unprinted..]) {
                consumer.seek(&tp, SeekTo::Offset(offset)).await?;
            }
            return end;
        }
    }
}

/// The first offset of each partition among `records`.
fn first_offsets(records: &[ConsumerRecord]) -> BTreeMap<TopicPartition, Offset> {
    let mut first = BTreeMap::new();
    for r in records {
        first
            .entry(TopicPartition::new(r.topic.clone(), r.partition))
            .or_insert(r.offset);
    }
    first
}

/// Writes one record in `format` and flushes, so each record is visible at once.
pub fn write_record(
    out: &mut impl Write,
    r: &ConsumerRecord,
    format: Format,
) -> std::io::Result<()> {
    match format {
        Format::Text => {
            out.write_all(r.value.as_deref().unwrap_or_default())?;
            out.write_all(b"\n")?;
        }
        Format::Json => writeln!(out, "{}", record_json(r))?,
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn record(partition: u32, offset: u64) -> ConsumerRecord {
        ConsumerRecord {
            topic: "t".into(),
            partition,
            offset: Offset(offset),
            timestamp: None,
            key: None,
            value: None,
            headers: Vec::new(),
        }
    }

    #[test]
    fn first_unprinted_offset_per_partition() {
        let rest = [record(0, 5), record(1, 9), record(0, 6)];
        let first = first_offsets(&rest);
        assert_eq!(first.len(), 2);
        assert_eq!(first[&TopicPartition::new("t", 0)], Offset(5));
        assert_eq!(first[&TopicPartition::new("t", 1)], Offset(9));
    }

    #[test]
    fn text_prints_the_value_per_line() {
        let mut r = ConsumerRecord {
            topic: "t".into(),
            partition: 0,
            offset: Offset(1),
            timestamp: None,
            key: Some(Bytes::from_static(b"k")),
            value: Some(Bytes::from_static(b"hello")),
            headers: Vec::new(),
        };
        let mut out = Vec::new();
        write_record(&mut out, &r, Format::Text).unwrap();
        r.value = None;
        write_record(&mut out, &r, Format::Text).unwrap();
        assert_eq!(out, b"hello\n\n");
    }
}

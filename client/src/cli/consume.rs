//! `rafka consume`: prints records of one partition or every partition of a topic.
//!
//! Stops after `--max-messages`, after `--idle-timeout-ms` without a new record, or on SIGINT
//! (exit 0 in all three cases). Each record is written and flushed at once, so a pipe reader
//! sees it immediately; a closed pipe ends the command quietly.

use std::io::Write;
use std::time::Duration;

use tokio::time::Instant;

use crate::cli::format::record_json;
use crate::cli::{CliError, CliResult, ConsumeArgs, Format, Isolation, StartFrom};
use crate::cluster::TopicPartition;
use crate::consumer::{Consumer, ConsumerConfig, ConsumerRecord, SeekTo};
use crate::protocol::{Offset, Timestamp};

/// Longest single poll, so the idle timeout and SIGINT are noticed promptly.
const POLL_SLICE: Duration = Duration::from_secs(1);

pub async fn run(bootstrap: &str, args: ConsumeArgs) -> CliResult {
    if args.group.is_some() {
        return Err(CliError::not_implemented("consumer groups are"));
    }
    if args.isolation == Isolation::ReadCommitted {
        return Err(CliError::not_implemented(
            "--isolation read_committed (transactions) is",
        ));
    }
    if args.commit == Some(true) {
        return Err(CliError::not_implemented(
            "--commit true (committed offsets need consumer groups, which are)",
        ));
    }
    let start = match args.from {
        StartFrom::Earliest => SeekTo::Earliest,
        StartFrom::Latest => SeekTo::Latest,
        StartFrom::Offset(o) => SeekTo::Offset(Offset(o)),
        StartFrom::Timestamp(t) => SeekTo::Timestamp(Timestamp(t)),
    };
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_owned(),
        client_id: "rafka-cli".to_owned(),
        initial_position: start,
        ..ConsumerConfig::default()
    })?;
    let topic = consumer.cluster().topic(&args.topic).await?;
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
        for r in &records {
            match write_record(&mut out, r, args.format) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(CliError::failure(format!("writing stdout: {e}"))),
            }
            printed += 1;
            if Some(printed) == args.max_messages {
                return Ok(());
            }
        }
    }
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

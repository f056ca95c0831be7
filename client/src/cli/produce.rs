//! `rafka produce`: one record per stdin line, pipelined through the producer.
//!
//! Three stages joined by bounded channels keep memory bounded and input order intact:
//! a thread reads stdin lines (blocking reads stay off the runtime), a task turns lines into
//! records and hands them to the producer (waiting when its buffer is full), and the command's
//! own task awaits each record's outcome in input order, printing the JSON acks and collecting
//! the lines that were not acknowledged.
//!
//! With `--transactional-id` every line goes into one transaction, committed at end of input
//! (aborted with `--abort`). The JSON acks are held back and printed only once the commit
//! succeeded, so a line printed is a record read_committed consumers will see; with `--abort`
//! nothing is printed. A record that was not acknowledged, or bad input, aborts the
//! transaction and the command fails.

use std::io::{BufRead, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cli::format::{ack_json, line_ranges};
use crate::cli::{AcksArg, CliError, CliResult, Format, ProduceArgs};
use crate::error::{ClientError, TxnErrorKind};
use crate::producer::{Acks, DeliveryFuture, Producer, ProducerConfig, ProducerRecord};

/// Stdin lines read ahead of the producer.
const LINES_QUEUED_MAX: usize = 1024;
/// Records handed to the producer whose outcome has not been printed yet. The producer's
/// buffer limit usually binds first; this bounds the outcome futures themselves.
const DELIVERIES_QUEUED_MAX: usize = 100_000;
/// How often a long run reports progress on stderr.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(1);

/// What the record-making task hands to the printing side, in input order.
enum Item {
    Sent {
        line: u64,
        delivery: DeliveryFuture,
    },
    Rejected {
        line: u64,
        error: ClientError,
    },
    /// Input cannot continue (unreadable stdin, a line without the key separator).
    Stop(CliError),
}

/// A record acknowledged inside a transaction, printed once the transaction committed.
struct Acked {
    line: u64,
    partition: u32,
    offset: Option<u64>,
}

/// Checks the flags that do not mix; returns the acks and whether the producer is idempotent.
fn check_flags(args: &ProduceArgs) -> CliResult<(Acks, bool)> {
    if args.abort && args.transactional_id.is_none() {
        return Err(CliError::usage("--abort needs --transactional-id"));
    }
    if args.transactional_id.as_deref() == Some("") {
        return Err(CliError::usage("--transactional-id must not be empty"));
    }
    if args.key_separator.as_deref() == Some("") {
        return Err(CliError::usage("--key-separator must not be empty"));
    }
    let acks = match args.acks {
        AcksArg::All => Acks::All,
        AcksArg::One => Acks::Leader,
        AcksArg::Zero => Acks::None,
    };
    if args.transactional_id.is_some() {
        if acks != Acks::All {
            return Err(CliError::usage("--transactional-id needs --acks all"));
        }
        if args.idempotent == Some(false) {
            return Err(CliError::usage(
                "--transactional-id needs an idempotent producer (drop --idempotent false)",
            ));
        }
    }
    let enable_idempotence = args.idempotent.unwrap_or(acks == Acks::All);
    if enable_idempotence && acks != Acks::All {
        return Err(CliError::usage("--idempotent true needs --acks all"));
    }
    Ok((acks, enable_idempotence))
}

pub async fn run(bootstrap: &str, args: ProduceArgs) -> CliResult {
    let (acks, enable_idempotence) = check_flags(&args)?;
    let transactional = args.transactional_id.is_some();
    let producer = Producer::new(ProducerConfig {
        bootstrap: bootstrap.to_owned(),
        client_id: "rafka-cli".to_owned(),
        acks,
        enable_idempotence,
        transactional_id: args.transactional_id.clone(),
        ..ProducerConfig::default()
    })?;
    // Fail before reading any input when the topic or partition does not exist.
    // A topic created a moment ago is waited for briefly (Producer::topic_metadata).
    let topic = producer.topic_metadata(&args.topic).await?;
    if let Some(p) = args.partition {
        if p as usize >= topic.partitions.len() {
            return Err(CliError::usage(format!(
                "partition {p} does not exist: topic '{}' has {} partitions",
                args.topic,
                topic.partitions.len()
            )));
        }
    }

    if transactional {
        // Fences any earlier producer with this id and aborts what it left open.
        producer.init_transactions().await?;
        producer.begin_transaction().await?;
    }

    let (line_tx, line_rx) = mpsc::channel(LINES_QUEUED_MAX);
    std::thread::spawn(move || read_lines(line_tx));
    let (item_tx, mut item_rx) = mpsc::channel(DELIVERIES_QUEUED_MAX);
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let feeder = tokio::spawn(feed(
        producer.clone(),
        args.topic.clone(),
        args.partition,
        args.key_separator.map(String::into_bytes),
        line_rx,
        item_tx,
        sent.clone(),
    ));
    let progress = tokio::spawn(report_progress(sent.clone(), acked.clone()));

    let mut failures: Vec<(u64, ClientError)> = Vec::new();
    let mut held: Vec<Acked> = Vec::new();
    let mut stop = None;
    let mut rejected = 0u64;
    let stdout = std::io::stdout();
    while let Some(item) = item_rx.recv().await {
        match item {
            Item::Sent { line, delivery } => match delivery.await {
                Ok(md) => {
                    acked.fetch_add(1, Ordering::Relaxed);
                    let offset = md.offset.map(|o| o.0);
                    if transactional {
                        if args.format == Format::Json && !args.abort {
                            held.push(Acked {
                                line,
                                partition: md.partition,
                                offset,
                            });
                        }
                    } else if args.format == Format::Json {
                        print_ack(&stdout, line, md.partition, offset);
                    }
                }
                Err(error) => failures.push((line, error)),
            },
            Item::Rejected { line, error } => {
                rejected += 1;
                failures.push((line, error));
            }
            Item::Stop(e) => stop = Some(e),
        }
    }
    let _ = feeder.await;
    progress.abort();
    let total = sent.load(Ordering::Relaxed) + rejected;
    let not_acked = (!failures.is_empty()).then(|| not_acknowledged(&failures, total));
    if !transactional {
        return match not_acked.or(stop) {
            Some(e) => Err(e),
            None => Ok(()),
        };
    }
    end_transaction(&producer, args.abort, stop, not_acked).await?;
    for a in held {
        print_ack(&stdout, a.line, a.partition, a.offset);
    }
    Ok(())
}

fn print_ack(stdout: &std::io::Stdout, line: u64, partition: u32, offset: Option<u64>) {
    let mut out = stdout.lock();
    let json = ack_json(line, partition, offset);
    // A closed stdout must not stop delivery; the exit code still tells.
    let _ = writeln!(out, "{json}").and_then(|()| out.flush());
}

/// Ends the command's transaction: commits it, or aborts it when asked to (`--abort`), when
/// the input stopped early (`stop`: unreadable stdin, a line without the key separator) or
/// when records were not acknowledged (`not_acked`). Ok only when the outcome is the one asked
/// for: with `--abort`, records that failed do not matter (nothing of the transaction becomes
/// visible either way), but bad input still fails the command.
async fn end_transaction(
    producer: &Producer,
    abort: bool,
    stop: Option<CliError>,
    not_acked: Option<CliError>,
) -> CliResult {
    // Why the transaction must not commit (or, with --abort, why the command fails anyway).
    let problem = if abort { stop } else { not_acked.or(stop) };
    if abort || problem.is_some() {
        let aborted = producer.abort_transaction().await;
        return match (problem, aborted) {
            (None, Ok(())) => Ok(()),
            (Some(p), Ok(())) => Err(CliError::failure(format!(
                "transaction aborted: {}",
                p.message
            ))),
            (Some(p), Err(e)) => Err(CliError::failure(format!(
                "transaction not committed: {}; aborting it failed too: {e}",
                p.message
            ))),
            (None, Err(e)) => Err(CliError::failure(format!(
                "aborting the transaction failed: {e}"
            ))),
        };
    }
    match producer.commit_transaction().await {
        Ok(()) => Ok(()),
        Err(
            e @ ClientError::Transaction {
                kind: TxnErrorKind::Abortable,
                ..
            },
        ) => {
            let aborted = producer.abort_transaction().await;
            Err(CliError::failure(match aborted {
                Ok(()) => format!("transaction aborted: {e}"),
                Err(abort) => format!("{e}; aborting it failed too: {abort}"),
            }))
        }
        Err(e) => Err(CliError::failure(format!(
            "committing the transaction failed: {e}"
        ))),
    }
}

/// The one-line report of records that were not acknowledged.
fn not_acknowledged(failures: &[(u64, ClientError)], total: u64) -> CliError {
    let lines: Vec<u64> = failures.iter().map(|(l, _)| *l).collect();
    let unknown = failures.iter().filter(|(_, e)| e.is_ambiguous()).count();
    let outcome = if unknown > 0 {
        format!(" ({unknown} with unknown outcome: they may have been written)")
    } else {
        String::new()
    };
    let first = &failures[0].1;
    CliError::failure(format!(
        "{} of {} records not acknowledged{}, lines {}: {}",
        failures.len(),
        total.max(failures.len() as u64),
        outcome,
        line_ranges(&lines),
        first
    ))
}

/// Reads stdin lines (without their `\n` or `\r\n`) into `tx` until end of input.
fn read_lines(tx: mpsc::Sender<std::io::Result<Vec<u8>>>) {
    let stdin = std::io::stdin();
    let mut reader = stdin.lock();
    loop {
        let mut buf = Vec::new();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => return,
            Ok(_) => {
                if buf.last() == Some(&b'\n') {
                    buf.pop();
                    if buf.last() == Some(&b'\r') {
                        buf.pop();
                    }
                }
                if tx.blocking_send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.blocking_send(Err(e));
                return;
            }
        }
    }
}

/// Splits `KEY<SEP>VALUE` at the first separator; `None` when the line has none.
pub fn split_key_value(line: &[u8], separator: &[u8]) -> Option<(Bytes, Bytes)> {
    if separator.is_empty() || line.len() < separator.len() {
        return None;
    }
    let at = line.windows(separator.len()).position(|w| w == separator)?;
    Some((
        Bytes::copy_from_slice(&line[..at]),
        Bytes::copy_from_slice(&line[at + separator.len()..]),
    ))
}

async fn feed(
    producer: Producer,
    topic: String,
    partition: Option<u32>,
    separator: Option<Vec<u8>>,
    mut lines: mpsc::Receiver<std::io::Result<Vec<u8>>>,
    items: mpsc::Sender<Item>,
    sent: Arc<AtomicU64>,
) {
    let mut line_no = 0u64;
    while let Some(line) = lines.recv().await {
        line_no += 1;
        let line = match line {
            Ok(l) => l,
            Err(e) => {
                let _ = items
                    .send(Item::Stop(CliError::failure(format!("reading stdin: {e}"))))
                    .await;
                break;
            }
        };
        let (key, value) = match &separator {
            None => (None, Bytes::from(line)),
            Some(sep) => match split_key_value(&line, sep) {
                Some((k, v)) => (Some(k), v),
                None => {
                    let message = format!(
                        "line {line_no} has no key separator '{}'; stopped reading input",
                        String::from_utf8_lossy(sep)
                    );
                    let _ = items.send(Item::Stop(CliError::failure(message))).await;
                    break;
                }
            },
        };
        let record = ProducerRecord {
            topic: topic.clone(),
            partition,
            key,
            value: Some(value),
            ..ProducerRecord::default()
        };
        let item = match producer.send(record).await {
            Ok(delivery) => {
                sent.fetch_add(1, Ordering::Relaxed);
                Item::Sent {
                    line: line_no,
                    delivery,
                }
            }
            Err(error) => Item::Rejected {
                line: line_no,
                error,
            },
        };
        if items.send(item).await.is_err() {
            break;
        }
    }
    // End of input: send what lingers now instead of waiting for the linger timer.
    producer.flush().await;
}

async fn report_progress(sent: Arc<AtomicU64>, acked: Arc<AtomicU64>) {
    let mut ticker = tokio::time::interval(PROGRESS_INTERVAL);
    ticker.tick().await; // the first tick is immediate; short runs print nothing
    loop {
        ticker.tick().await;
        eprintln!(
            "rafka: progress: {} records sent, {} acknowledged",
            sent.load(Ordering::Relaxed),
            acked.load(Ordering::Relaxed)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorCode;

    #[test]
    fn key_separator_splits_at_the_first_occurrence() {
        assert_eq!(
            split_key_value(b"k:v:w", b":"),
            Some((Bytes::from_static(b"k"), Bytes::from_static(b"v:w")))
        );
        assert_eq!(
            split_key_value(b"key::value", b"::"),
            Some((Bytes::from_static(b"key"), Bytes::from_static(b"value")))
        );
        assert_eq!(
            split_key_value(b":v", b":"),
            Some((Bytes::new(), Bytes::from_static(b"v")))
        );
        assert_eq!(split_key_value(b"novalue", b":"), None);
        assert_eq!(split_key_value(b"", b":"), None);
    }

    #[test]
    fn the_failure_line_names_lines_and_unknown_outcomes() {
        let lost = ClientError::OutcomeUnknown {
            topic: "t".into(),
            partition: 0,
            reason: "timed out".into(),
        };
        let nl = ClientError::broker(ErrorCode::RecordListTooLarge, "", "t", 0);
        let e = not_acknowledged(&[(2, nl), (3, lost.clone()), (4, lost)], 10);
        assert_eq!(e.exit_code, 1);
        assert!(e
            .message
            .starts_with("3 of 10 records not acknowledged (2 with unknown outcome"));
        assert!(e.message.contains("lines 2-4: "), "{}", e.message);
        assert!(!e.message.contains('\n'));
    }
}

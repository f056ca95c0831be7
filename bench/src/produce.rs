//! `rafka-bench produce`: producer throughput and send→ack latency.
//!
//! `--producers K` tasks, each with its own [`Producer`] (own connection and sender task),
//! share `--messages N` records between them: each takes the next record number from a shared
//! counter until N are taken. Values are `--size` pseudo-random bytes (cut from one random
//! buffer, so never all zero), keys are null (sticky partitioning). `--rate R` caps the
//! aggregate rate: record `i` is not sent before `start + i / R` seconds (a token bucket that
//! refills continuously, with a burst of about one timer tick); without it, records are sent as
//! fast as the producers accept them (their buffer memory is the only backpressure).
//!
//! The topic is created with `--partitions P` (default 1) when it does not exist. Every
//! producer looks up the topic (connecting to the cluster) before the clock starts.
//!
//! Fields of the result:
//! - `messages`, `bytes`: records acknowledged and their value bytes (keys are null);
//! - `seconds`: from the first send to the last acknowledgement;
//! - `p50_ms` .. `max_ms`: per record, from just before `send` (so waiting for buffer memory
//!   counts) to the moment its acknowledgement was seen;
//! - with the raw measurement (default; `--no-raw` skips it), done on the current directory's
//!   disk before the run: for `--acks all`, `raw_limit_mb_per_s` is `write` + `fdatasync` of
//!   batch-sized buffers (one record batch of `--batch-bytes` filled with `--size` records)
//!   one after another, and `raw_fsync_p50_ms` its per-write latency; for `--acks 1`, it is
//!   sequential writes of such buffers with one `fdatasync` at the end. `ratio_to_raw` is
//!   `mb_per_s / raw_limit_mb_per_s`.
//!
//! A record that fails is counted; the run then exits non-zero after printing its result.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use rafka_client::{Acks, Producer, ProducerConfig, ProducerRecord};
use tokio::sync::mpsc;

use crate::common::{
    collect_deliveries, ensure_topic, runtime, ConnectArgs, Deliveries, Payloads, RawArgs, Sent,
};
use crate::raw::{bench_dir, build_batch, raw_write, raw_write_fsync};
use crate::stats::{ratio, Counters, Figure, LatencyRecorder, ProgressLine, Report, Value};
use crate::{human_bytes, parse_positive_size, Context, Failure, Result};

/// Most fdatasyncs of the raw write+fdatasync run.
const RAW_FSYNC_OPS: u64 = 2000;
/// Longest raw write+fdatasync run.
const RAW_FSYNC_TIME: Duration = Duration::from_secs(3);
/// Most bytes of the raw bulk-write run.
const RAW_WRITE_BYTES_MAX: u64 = 512 << 20;

/// `--acks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    /// Every in-sync replica has the record (durable on a single node).
    #[value(name = "all", alias = "-1")]
    All,
    /// The leader appended the record.
    #[value(name = "1")]
    Leader,
}

impl AcksArg {
    fn client(self) -> Acks {
        match self {
            AcksArg::All => Acks::All,
            AcksArg::Leader => Acks::Leader,
        }
    }
    fn name(self) -> &'static str {
        match self {
            AcksArg::All => "all",
            AcksArg::Leader => "1",
        }
    }
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to write (created if missing).
    #[arg(long)]
    pub topic: String,
    /// Records to send, in total over all producers.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Value bytes per record (suffixes such as KiB are accepted).
    #[arg(long, value_parser = parse_positive_size)]
    pub size: u64,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Producer tasks, each with its own producer.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub producers: u32,
    /// Cap on the aggregate send rate, records per second (default: as fast as possible).
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<f64>,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Producer batch size (default: the client's, 1 MiB).
    #[arg(long, value_parser = parse_positive_size)]
    pub batch_bytes: Option<u64>,
    /// Producer linger in milliseconds (default: the client's, 5).
    #[arg(long)]
    pub linger_ms: Option<u64>,
    /// Produce requests in flight per broker connection (default: the client's, 5).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: Option<u64>,
    /// Idempotent producers (needs `--acks all`): producer ids, sequence numbers, and up to
    /// five batches in flight per partition. Off by default, so figures compare with plain
    /// acks=all.
    #[arg(long)]
    pub idempotent: bool,
    /// Transactional producers: each commits a transaction every this many records (implies
    /// idempotence). Off by default.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub transaction_records: Option<u64>,
    #[command(flatten)]
    pub raw: RawArgs,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long)]
    pub json: bool,
}

/// A positive, finite records-per-second figure.
pub fn parse_rate(s: &str) -> std::result::Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a positive rate (records per second)")),
    }
}

/// The producer settings of this run.
fn producer_config(args: &ProduceArgs, index: u32) -> Result<ProducerConfig> {
    let mut config = ProducerConfig {
        bootstrap: args.connect.bootstrap.clone(),
        client_id: format!("rafka-bench-{index}"),
        acks: args.acks.client(),
        enable_idempotence: args.idempotent || args.transaction_records.is_some(),
        transactional_id: args
            .transaction_records
            .map(|_| format!("rafka-bench-{index}-{:08x}", rand::random::<u32>())),
        ..ProducerConfig::default()
    };
    if let Some(b) = args.batch_bytes {
        config.batch_bytes =
            usize::try_from(b).map_err(|_| Failure("--batch-bytes too large".into()))?;
        config.buffer_bytes_max = config.buffer_bytes_max.max(config.batch_bytes * 4);
    }
    if let Some(l) = args.linger_ms {
        config.linger_ms = l;
    }
    if let Some(m) = args.max_in_flight {
        config.max_in_flight = m as usize;
    }
    config
        .validate()
        .context(|| "invalid producer settings".into())?;
    Ok(config)
}

/// The raw limit of this run's figure.
struct RawLimit {
    figure: Figure,
    what: String,
}

/// Measures the raw disk limit in a fresh directory under the current directory.
fn measure_raw(args: &ProduceArgs, batch_bytes: u64) -> Result<RawLimit> {
    let root = bench_dir(".".as_ref())?;
    let (batch, records) = build_batch(batch_bytes, args.size)?;
    let buf = batch.to_vec();
    let label = format!(
        "{} batches ({records} records of {} B)",
        human_bytes(batch_bytes),
        args.size
    );
    let limit = match args.acks {
        AcksArg::All => {
            eprintln!("rafka-bench: [raw] write + fdatasync of {label} ...");
            let figure = raw_write_fsync(root.path(), &buf, RAW_FSYNC_OPS, Some(RAW_FSYNC_TIME))?;
            RawLimit {
                figure,
                what: format!("raw write+fdatasync per {label}"),
            }
        }
        AcksArg::Leader => {
            let total = (args.messages * args.size).clamp(buf.len() as u64, RAW_WRITE_BYTES_MAX);
            let count = (total / buf.len() as u64).max(1);
            eprintln!("rafka-bench: [raw] {count} writes of {label} + one fdatasync ...");
            let figure = raw_write(root.path(), &buf, count)?;
            RawLimit {
                figure,
                what: format!("raw write of {label}, one fdatasync at the end"),
            }
        }
    };
    let path = root.path().to_path_buf();
    root.close()
        .context(|| format!("removing {}", path.display()))?;
    eprintln!(
        "rafka-bench: [raw] {}: {:.1} MB/s{}",
        limit.what,
        limit.figure.mb_per_s,
        limit
            .figure
            .latency
            .map(|l| format!(", p50 {:.3} ms", l.p50_ms))
            .unwrap_or_default()
    );
    Ok(limit)
}

pub fn run(args: &ProduceArgs) -> Result<()> {
    let configs: Vec<ProducerConfig> = (0..args.producers)
        .map(|i| producer_config(args, i))
        .collect::<Result<_>>()?;
    let batch_bytes = configs[0].batch_bytes as u64;
    let raw = if args.raw.enabled() {
        Some(measure_raw(args, batch_bytes)?)
    } else {
        None
    };
    let rt = runtime()?;
    let (report, failure) = rt.block_on(produce(args, configs))?;
    let mut report = report;
    if let Some(raw) = raw {
        let r = ratio(report.mb_per_s(), raw.figure.mb_per_s);
        report
            .extra
            .insert(0, ("raw_limit_mb_per_s", Value::Num(raw.figure.mb_per_s)));
        report.extra.insert(1, ("ratio_to_raw", Value::Num(r)));
        let mut line = format!(
            "{:.1} MB/s vs {}: {:.1} MB/s",
            report.mb_per_s(),
            raw.what,
            raw.figure.mb_per_s
        );
        if let Some(l) = raw.figure.latency {
            report
                .extra
                .insert(2, ("raw_fsync_p50_ms", Value::Num(l.p50_ms)));
            line.push_str(&format!(" (fdatasync p50 {:.3} ms)", l.p50_ms));
        }
        line.push_str(&format!(", ratio {r:.2}"));
        report.comparisons.push(line);
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    match failure {
        None => Ok(()),
        Some(f) => Err(f),
    }
}

/// Runs the producers; returns the report and, if some records failed, the failure to exit
/// with after printing it.
async fn produce(
    args: &ProduceArgs,
    configs: Vec<ProducerConfig>,
) -> Result<(Report, Option<Failure>)> {
    let info = ensure_topic(&args.connect.bootstrap, &args.topic, args.partitions).await?;
    let size = usize::try_from(args.size).map_err(|_| Failure("--size too large".into()))?;
    let payloads = Payloads::new(size);
    let linger_ms = configs[0].linger_ms;
    let batch_bytes = configs[0].batch_bytes;
    let mut producers = Vec::new();
    for config in configs {
        let producer = Producer::new(config).context(|| "creating a producer".into())?;
        // Connect and learn the topic before the clock starts.
        producer
            .cluster()
            .topic(&args.topic)
            .await
            .context(|| format!("looking up topic '{}'", args.topic))?;
        if args.transaction_records.is_some() {
            producer
                .init_transactions()
                .await
                .context(|| "initialising transactions".into())?;
        }
        producers.push(producer);
    }
    let counters = Arc::new(Counters::default());
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let progress = ProgressLine::start("produce", counters.clone());
    let mut tasks = Vec::new();
    for producer in producers {
        let (tx, rx) = mpsc::unbounded_channel();
        let collector = tokio::spawn(collect_deliveries(rx, counters.clone(), args.size));
        let sender = tokio::spawn(send_loop(
            producer,
            args.topic.clone(),
            payloads.clone(),
            next.clone(),
            args.messages,
            args.rate,
            started,
            counters.clone(),
            tx,
            args.transaction_records,
        ));
        tasks.push((sender, collector));
    }
    let mut latency = LatencyRecorder::new()?;
    let mut acked = 0;
    let mut failed = 0;
    let mut first_error = None;
    let mut send_error = None;
    let mut last_ack = started;
    for (sender, collector) in tasks {
        match sender.await.context(|| "producer task".into())? {
            Ok(()) => {}
            Err(e) => {
                send_error.get_or_insert(e);
            }
        }
        let d: Deliveries = collector.await.context(|| "delivery task".into())??;
        latency.merge(&d.latency)?;
        acked += d.acked;
        failed += d.failed;
        if first_error.is_none() {
            first_error = d.first_error;
        }
        if let Some(t) = d.last_ack {
            last_ack = last_ack.max(t);
        }
    }
    drop(progress);
    let elapsed = last_ack - started;
    let report = Report {
        command: "produce",
        messages: acked,
        bytes: acked * args.size,
        elapsed,
        latency_label: "send→ack latency",
        latency: latency.summary(),
        extra: vec![
            ("acks", Value::Str(args.acks.name().into())),
            (
                "idempotent",
                Value::Str(
                    if args.idempotent || args.transaction_records.is_some() {
                        "true"
                    } else {
                        "false"
                    }
                    .into(),
                ),
            ),
            (
                "transaction_records",
                args.transaction_records
                    .map_or(Value::Str("none".into()), Value::Int),
            ),
            ("record_bytes", Value::Int(args.size)),
            ("producers", Value::Int(u64::from(args.producers))),
            ("partitions", Value::Int(info.partitions.len() as u64)),
            ("batch_bytes", Value::Int(batch_bytes as u64)),
            ("linger_ms", Value::Int(linger_ms)),
            ("failed", Value::Int(failed)),
        ],
        comparisons: Vec::new(),
    };
    let failure = if let Some(e) = send_error {
        Some(e)
    } else if failed > 0 {
        Some(Failure(format!(
            "{failed} of {} records failed; first error: {}",
            acked + failed,
            first_error.map(|e| e.to_string()).unwrap_or_default()
        )))
    } else if acked < args.messages {
        Some(Failure(format!(
            "only {acked} of {} records were acknowledged",
            args.messages
        )))
    } else {
        None
    };
    Ok((report, failure))
}

/// One producer's share: takes record numbers from `next` until `total` are taken, paced by
/// `rate`, and hands every delivery future to the collector. Flushes at the end.
#[allow(clippy::too_many_arguments)]
async fn send_loop(
    producer: Producer,
    topic: String,
    payloads: Payloads,
    next: Arc<AtomicU64>,
    total: u64,
    rate: Option<f64>,
    started: Instant,
    counters: Arc<Counters>,
    tx: mpsc::UnboundedSender<Sent>,
    transaction_records: Option<u64>,
) -> Result<()> {
    let mut in_transaction = 0u64;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        if transaction_records.is_some() && in_transaction == 0 {
            producer
                .begin_transaction()
                .await
                .context(|| "beginning a transaction".into())?;
        }
        if let Some(rate) = rate {
            let due = started + Duration::from_secs_f64(i as f64 / rate);
            if due > Instant::now() {
                tokio::time::sleep_until(due.into()).await;
            }
        }
        let record = ProducerRecord::new(topic.clone(), payloads.get(i));
        let sent = Instant::now();
        let delivery = producer
            .send(record)
            .await
            .context(|| format!("sending to topic '{topic}'"))?;
        Counters::add(&counters.sent, 1);
        // The collector only goes away if it panicked; the join reports that.
        let _ = tx.send((sent, delivery));
        if let Some(n) = transaction_records {
            in_transaction += 1;
            if in_transaction == n {
                producer
                    .commit_transaction()
                    .await
                    .context(|| "committing a transaction".into())?;
                in_transaction = 0;
            }
        }
    }
    if in_transaction > 0 {
        producer
            .commit_transaction()
            .await
            .context(|| "committing a transaction".into())?;
    }
    producer.flush().await;
    Ok(())
}

//! `rafka-bench consume`: consumer throughput.
//!
//! One [`Consumer`] is assigned every partition of the (existing) topic, positioned at the
//! earliest offset, and polls until it has read `--messages N` records. The clock starts just
//! before the first poll (the partitions' starting offsets are looked up before it).
//!
//! Fields of the result:
//! - `messages`: records read (N, or the run fails); `bytes`: their value plus key bytes;
//! - `seconds`: from the first poll to the poll that returned the N-th record;
//! - `p50_ms` .. `max_ms`: always 0. The consumer reads a backlog, so neither the age of a
//!   record (its timestamp against the consume time) nor the time of one poll says anything
//!   about Rafka's latency; `rafka-bench e2e` measures latency.
//! - with the raw measurement (default; `--no-raw` skips it), done after the run:
//!   `raw_limit_mb_per_s` is loopback TCP throughput, a Tokio sender and receiver on
//!   127.0.0.1 moving 1 GiB in 1 MiB writes; `ratio_to_raw` is `mb_per_s /
//!   raw_limit_mb_per_s`.
//!
//! If no record arrives for `--idle-timeout-ms` (default 10 s) before N were read, the run
//! fails.

use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use rafka_client::{Consumer, ConsumerConfig, SeekTo, TopicPartition};

use crate::common::{describe_topic, runtime, ConnectArgs, RawArgs};
use crate::raw::loopback_throughput;
use crate::stats::{ratio, Counters, Latency, ProgressLine, Report, Value};
use crate::{parse_positive_size, Context, Failure, Result};

/// Bytes moved by the raw loopback run.
const RAW_LOOPBACK_BYTES: u64 = 1 << 30;

#[derive(Args, Debug)]
pub struct ConsumeArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to read (must exist and hold at least N records).
    #[arg(long)]
    pub topic: String,
    /// Records to read.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Most bytes per fetch response (default: the client's, 8 MiB).
    #[arg(long, value_parser = parse_positive_size)]
    pub fetch_max_bytes: Option<u64>,
    /// Most bytes per partition per fetch (default: the client's, 1 MiB).
    #[arg(long, value_parser = parse_positive_size)]
    pub max_partition_fetch_bytes: Option<u64>,
    /// Give up after this long without a new record.
    #[arg(long, default_value_t = 10_000)]
    pub idle_timeout_ms: u64,
    #[command(flatten)]
    pub raw: RawArgs,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long)]
    pub json: bool,
}

pub fn run(args: &ConsumeArgs) -> Result<()> {
    let rt = runtime()?;
    let mut report = rt.block_on(consume(args))?;
    if args.raw.enabled() {
        eprintln!("rafka-bench: [raw] loopback TCP, 1 GiB in 1 MiB writes ...");
        let raw = rt.block_on(loopback_throughput(RAW_LOOPBACK_BYTES))?;
        eprintln!("rafka-bench: [raw] loopback TCP: {:.1} MB/s", raw.mb_per_s);
        let r = ratio(report.mb_per_s(), raw.mb_per_s);
        report
            .extra
            .insert(0, ("raw_limit_mb_per_s", Value::Num(raw.mb_per_s)));
        report.extra.insert(1, ("ratio_to_raw", Value::Num(r)));
        report.comparisons.push(format!(
            "{:.1} MB/s vs raw loopback TCP (1 GiB in 1 MiB writes): {:.1} MB/s, ratio {r:.2}",
            report.mb_per_s(),
            raw.mb_per_s
        ));
    }
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

fn u32_arg(name: &str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| Failure(format!("{name} {v} is too large")))
}

async fn consume(args: &ConsumeArgs) -> Result<Report> {
    let info = describe_topic(&args.connect.bootstrap, &args.topic).await?;
    let mut config = ConsumerConfig {
        bootstrap: args.connect.bootstrap.clone(),
        client_id: "rafka-bench".into(),
        initial_position: SeekTo::Earliest,
        ..ConsumerConfig::default()
    };
    if let Some(b) = args.fetch_max_bytes {
        config.fetch_max_bytes = u32_arg("--fetch-max-bytes", b)?;
    }
    if let Some(b) = args.max_partition_fetch_bytes {
        config.max_partition_fetch_bytes = u32_arg("--max-partition-fetch-bytes", b)?;
    }
    let fetch_max_bytes = config.fetch_max_bytes;
    let partition_fetch_bytes = config.max_partition_fetch_bytes;
    let mut consumer = Consumer::new(config).context(|| "creating a consumer".into())?;
    let tps: Vec<TopicPartition> = info
        .partitions
        .iter()
        .map(|p| TopicPartition::new(&args.topic, p.partition))
        .collect();
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer.seek(tp, SeekTo::Earliest).await.context(|| {
            format!(
                "seeking {}-{} to the earliest offset",
                tp.topic, tp.partition
            )
        })?;
    }
    let counters = Arc::new(Counters::default());
    let idle_timeout = Duration::from_millis(args.idle_timeout_ms);
    let mut messages = 0u64;
    let mut bytes = 0u64;
    let started = Instant::now();
    let mut last_record = started;
    let progress = ProgressLine::start("consume", counters.clone());
    while messages < args.messages {
        let records = consumer
            .poll(Duration::from_millis(500))
            .await
            .context(|| format!("polling topic '{}'", args.topic))?;
        let now = Instant::now();
        if records.is_empty() {
            if now - last_record >= idle_timeout {
                return Err(Failure(format!(
                    "only {messages} of {} records read: none for {} ms",
                    args.messages, args.idle_timeout_ms
                )));
            }
            continue;
        }
        last_record = now;
        let take = records.len().min((args.messages - messages) as usize);
        let b: u64 = records[..take]
            .iter()
            .map(|r| {
                (r.value.as_ref().map_or(0, |v| v.len()) + r.key.as_ref().map_or(0, |k| k.len()))
                    as u64
            })
            .sum();
        messages += take as u64;
        bytes += b;
        Counters::add(&counters.consumed, take as u64);
        Counters::add(&counters.consumed_bytes, b);
    }
    let elapsed = last_record - started;
    drop(progress);
    Ok(Report {
        command: "consume",
        messages,
        bytes,
        elapsed,
        latency_label: "latency (not measured by consume; see e2e)",
        latency: Latency::default(),
        extra: vec![
            ("partitions", Value::Int(tps.len() as u64)),
            ("fetch_max_bytes", Value::Int(u64::from(fetch_max_bytes))),
            (
                "max_partition_fetch_bytes",
                Value::Int(u64::from(partition_fetch_bytes)),
            ),
        ],
        comparisons: Vec::new(),
    })
}

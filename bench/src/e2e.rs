//! `rafka-bench e2e`: produce→consume latency.
//!
//! One producer sends `--messages N` records of `--size` bytes at a fixed rate (`--rate`,
//! default 1000 records/s: record `i` is sent at `start + i / rate`) with acks=all, linger 0
//! (`--linger-ms` to batch) and `--max-in-flight` requests in flight (default one;
//! `--idempotent` for the idempotent producer); one consumer, assigned every partition of the
//! topic from the latest offset, polls concurrently in the same process. The first 8 bytes of each value are
//! the send time in microseconds since an `Instant` both sides share (values shorter than 8
//! bytes are padded to 8); the rest is pseudo-random. The topic is created with
//! `--partitions P` (default 1) when it does not exist. Before the clock starts, one warm-up
//! record is produced and acknowledged (connecting the producer), and then the consumer is
//! positioned after it.
//!
//! Fields of the result:
//! - `messages`, `bytes`: records consumed and their value bytes;
//! - `seconds`: from the first send to the last record consumed;
//! - `p50_ms` .. `max_ms`: per record, consume time (when `poll` returned it) minus send time
//!   (just before `Producer::send`);
//! - `ack_p50_ms` .. `ack_max_ms`: per record, send→ack latency of the producer;
//! - with the raw measurement (default; `--no-raw` skips it), done before the run:
//!   `raw_fsync_p50_ms` is the p50 of `write` + `fdatasync` of a one-record batch on the
//!   current directory's disk, `raw_rtt_p50_ms` the p50 round trip of a request of that size
//!   over loopback TCP between two Tokio tasks, `raw_limit_p50_ms` their sum (what one acks=all
//!   produce request cannot beat); `ratio_to_raw` is `ack_p50_ms / raw_limit_p50_ms` and
//!   `e2e_ratio_to_raw` is `p50_ms / raw_limit_p50_ms`.
//!
//! The run fails if a record is not acknowledged, or if fewer than N records were consumed
//! `--idle-timeout-ms` (default 10 s) after the last acknowledgement.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use clap::Args;
use rafka_client::{
    Acks, Consumer, ConsumerConfig, Producer, ProducerConfig, ProducerRecord, SeekTo,
    TopicPartition,
};
use tokio::sync::mpsc;

use crate::common::{
    collect_deliveries, ensure_topic, runtime, ConnectArgs, Deliveries, Payloads, RawArgs,
};
use crate::produce::parse_rate;
use crate::raw::{bench_dir, build_batch, loopback_rtt, raw_write_fsync};
use crate::stats::{ratio, Counters, LatencyRecorder, ProgressLine, Report, Value};
use crate::{parse_positive_size, Context, Failure, Result};

/// Most fdatasyncs and round trips of the raw runs.
const RAW_OPS: u64 = 2000;
/// Longest raw fdatasync run.
const RAW_FSYNC_TIME: Duration = Duration::from_secs(3);
/// Protocol bytes around a one-record batch in a produce request, roughly.
const REQUEST_OVERHEAD_BYTES: usize = 64;
/// Send-time value of the warm-up record, which the consumer never sees anyway.
const WARM_UP: u64 = u64::MAX;

#[derive(Args, Debug)]
pub struct E2eArgs {
    #[command(flatten)]
    pub connect: ConnectArgs,
    /// Topic to write and read (created if missing).
    #[arg(long)]
    pub topic: String,
    /// Records to send and receive.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub messages: u64,
    /// Value bytes per record (at least 8 are sent).
    #[arg(long, value_parser = parse_positive_size)]
    pub size: u64,
    /// Send rate, records per second.
    #[arg(long, default_value = "1000", value_parser = parse_rate)]
    pub rate: f64,
    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Give up this long after the last acknowledgement if records are still missing.
    #[arg(long, default_value_t = 10_000)]
    pub idle_timeout_ms: u64,
    #[command(flatten)]
    pub raw: RawArgs,
    /// Print one JSON object at the end instead of a summary.
    #[arg(long)]
    pub json: bool,
    /// Produce requests in flight per broker connection. 1 (the default) is the strictest
    /// shape: each request waits for the previous one's commit.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_in_flight: u64,
    /// Idempotent producer (the client's default; off here so figures compare with earlier
    /// runs): with `--max-in-flight 5`, what applications run.
    #[arg(long)]
    pub idempotent: bool,
    /// Also write one line per consumed record, `SENT_MS LATENCY_MS` (send time since the
    /// start of the run), to this file: shows when stalls happen, not only how long they are.
    #[arg(long)]
    pub latency_log: Option<std::path::PathBuf>,
    /// Producer linger: how long a partition's batch may wait for more records before it is
    /// sent. 0 (the default) sends at once; applications trade a little of it for bigger
    /// batches (the client's own default is 5).
    #[arg(long, default_value_t = 0)]
    pub linger_ms: u64,
}

/// The raw latency floor of one acks=all request.
struct RawFloor {
    fsync_p50_ms: f64,
    rtt_p50_ms: f64,
}

fn measure_raw(rt: &tokio::runtime::Runtime, size: u64) -> Result<RawFloor> {
    let (batch, _) = build_batch(1, size)?;
    let root = bench_dir(".".as_ref())?;
    eprintln!(
        "rafka-bench: [raw] write + fdatasync of a {}-byte batch ...",
        batch.len()
    );
    let fsync = raw_write_fsync(root.path(), &batch, RAW_OPS, Some(RAW_FSYNC_TIME))?;
    let path = root.path().to_path_buf();
    root.close()
        .context(|| format!("removing {}", path.display()))?;
    let request = batch.len() + REQUEST_OVERHEAD_BYTES;
    eprintln!("rafka-bench: [raw] loopback TCP round trips of {request} bytes ...");
    let rtt = rt.block_on(loopback_rtt(request, RAW_OPS))?;
    let floor = RawFloor {
        fsync_p50_ms: fsync.latency.unwrap_or_default().p50_ms,
        rtt_p50_ms: rtt.latency.unwrap_or_default().p50_ms,
    };
    eprintln!(
        "rafka-bench: [raw] fdatasync p50 {:.3} ms, loopback round trip p50 {:.3} ms",
        floor.fsync_p50_ms, floor.rtt_p50_ms
    );
    Ok(floor)
}

pub fn run(args: &E2eArgs) -> Result<()> {
    let rt = runtime()?;
    let raw = if args.raw.enabled() {
        Some(measure_raw(&rt, args.size)?)
    } else {
        None
    };
    let mut report = rt.block_on(e2e(args))?;
    if let Some(raw) = raw {
        let limit = raw.fsync_p50_ms + raw.rtt_p50_ms;
        let ack_p50 = report
            .extra
            .iter()
            .find_map(|(k, v)| match (k, v) {
                (&"ack_p50_ms", Value::Num(x)) => Some(*x),
                _ => None,
            })
            .unwrap_or(f64::NAN);
        let r = ratio(ack_p50, limit);
        let e2e_r = ratio(report.latency.p50_ms, limit);
        let fields = [
            ("raw_limit_p50_ms", Value::Num(limit)),
            ("ratio_to_raw", Value::Num(r)),
            ("e2e_ratio_to_raw", Value::Num(e2e_r)),
            ("raw_fsync_p50_ms", Value::Num(raw.fsync_p50_ms)),
            ("raw_rtt_p50_ms", Value::Num(raw.rtt_p50_ms)),
        ];
        for (i, f) in fields.into_iter().enumerate() {
            report.extra.insert(i, f);
        }
        report.comparisons.push(format!(
            "ack p50 {ack_p50:.3} ms vs raw fdatasync p50 {:.3} ms + loopback round trip p50 \
             {:.3} ms = {limit:.3} ms: ratio {r:.2} (e2e p50: ratio {e2e_r:.2})",
            raw.fsync_p50_ms, raw.rtt_p50_ms
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

/// A value of `size` bytes whose first 8 are `sent_us` (little endian).
fn stamped(payloads: &Payloads, i: u64, sent_us: u64) -> Bytes {
    let rest = payloads.get(i);
    let mut v = BytesMut::with_capacity(rest.len().max(8));
    v.put_u64_le(sent_us);
    if rest.len() > 8 {
        v.extend_from_slice(&rest[8..]);
    }
    v.freeze()
}

fn micros_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_micros()).unwrap_or(u64::MAX - 1)
}

/// What the consumer task saw.
struct Consumed {
    latency: LatencyRecorder,
    messages: u64,
    bytes: u64,
    last: Option<Instant>,
}

async fn e2e(args: &E2eArgs) -> Result<Report> {
    let bootstrap = &args.connect.bootstrap;
    let info = ensure_topic(bootstrap, &args.topic, args.partitions).await?;
    let size = usize::try_from(args.size.max(8)).map_err(|_| Failure("--size too large".into()))?;
    let payloads = Payloads::new(size);
    let producer = Producer::new(ProducerConfig {
        bootstrap: bootstrap.clone(),
        client_id: "rafka-bench-e2e".into(),
        acks: Acks::All,
        enable_idempotence: args.idempotent,
        linger_ms: args.linger_ms,
        max_in_flight: args.max_in_flight as usize,
        ..ProducerConfig::default()
    })
    .context(|| "creating a producer".into())?;
    producer
        .send(ProducerRecord::new(
            args.topic.clone(),
            stamped(&payloads, 0, WARM_UP),
        ))
        .await
        .context(|| "sending the warm-up record".into())?
        .await
        .context(|| "the warm-up record".into())?;

    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.clone(),
        client_id: "rafka-bench-e2e".into(),
        initial_position: SeekTo::Latest,
        ..ConsumerConfig::default()
    })
    .context(|| "creating a consumer".into())?;
    let tps: Vec<TopicPartition> = info
        .partitions
        .iter()
        .map(|p| TopicPartition::new(&args.topic, p.partition))
        .collect();
    consumer.assign(tps.clone());
    for tp in &tps {
        consumer
            .seek(tp, SeekTo::Latest)
            .await
            .context(|| format!("seeking {}-{} to the latest offset", tp.topic, tp.partition))?;
    }

    let counters = Arc::new(Counters::default());
    let producing_done = Arc::new(AtomicBool::new(false));
    let epoch = Instant::now();
    let consumer_task = tokio::spawn(consume_loop(
        consumer,
        epoch,
        args.messages,
        Duration::from_millis(args.idle_timeout_ms),
        producing_done.clone(),
        counters.clone(),
        args.latency_log.clone(),
    ));
    let progress = ProgressLine::start("e2e", counters.clone());
    let (tx, rx) = mpsc::unbounded_channel();
    let collector = tokio::spawn(collect_deliveries(rx, counters.clone(), args.size));
    let started = Instant::now();
    let mut send_error = None;
    for i in 0..args.messages {
        let due = started + Duration::from_secs_f64(i as f64 / args.rate);
        if due > Instant::now() {
            tokio::time::sleep_until(due.into()).await;
        }
        let sent = Instant::now();
        let value = stamped(&payloads, i, micros_since(epoch));
        match producer
            .send(ProducerRecord::new(args.topic.clone(), value))
            .await
        {
            Ok(delivery) => {
                Counters::add(&counters.sent, 1);
                let _ = tx.send((sent, delivery));
            }
            Err(e) => {
                send_error = Some(Failure(format!("sending to topic '{}': {e}", args.topic)));
                break;
            }
        }
    }
    drop(tx);
    producer.flush().await;
    let deliveries: Deliveries = collector.await.context(|| "delivery task".into())??;
    producing_done.store(true, Ordering::Release);
    let consumed = consumer_task.await.context(|| "consumer task".into())?;
    drop(progress);
    if let Some(e) = send_error {
        return Err(e);
    }
    if deliveries.failed > 0 {
        return Err(Failure(format!(
            "{} of {} records failed; first error: {}",
            deliveries.failed,
            args.messages,
            deliveries
                .first_error
                .map(|e| e.to_string())
                .unwrap_or_default()
        )));
    }
    let consumed = consumed?;
    let ack = deliveries.latency.summary();
    let elapsed = consumed
        .last
        .unwrap_or(started)
        .saturating_duration_since(started);
    Ok(Report {
        command: "e2e",
        messages: consumed.messages,
        bytes: consumed.bytes,
        elapsed,
        latency_label: "produce→consume latency",
        latency: consumed.latency.summary(),
        extra: vec![
            ("ack_p50_ms", Value::Num(ack.p50_ms)),
            ("ack_p99_ms", Value::Num(ack.p99_ms)),
            ("ack_p999_ms", Value::Num(ack.p999_ms)),
            ("ack_max_ms", Value::Num(ack.max_ms)),
            ("rate", Value::Num(args.rate)),
            ("acks", Value::Str("all".into())),
            ("record_bytes", Value::Int(size as u64)),
            ("partitions", Value::Int(tps.len() as u64)),
            ("max_in_flight", Value::Int(args.max_in_flight)),
            ("idempotent", Value::Str(args.idempotent.to_string())),
            ("linger_ms", Value::Int(args.linger_ms)),
        ],
        comparisons: vec![format!(
            "send→ack latency (acks=all): p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} \
             ms, max {:.3} ms",
            ack.p50_ms, ack.p99_ms, ack.p999_ms, ack.max_ms
        )],
    })
}

/// Polls until `total` records were read, or until `idle_timeout` passed without one after the
/// producer finished.
async fn consume_loop(
    mut consumer: Consumer,
    epoch: Instant,
    total: u64,
    idle_timeout: Duration,
    producing_done: Arc<AtomicBool>,
    counters: Arc<Counters>,
    latency_log: Option<std::path::PathBuf>,
) -> Result<Consumed> {
    // In memory until the end: writing during the run would add to what it measures.
    let mut log_lines: Vec<(u64, u64)> = Vec::new();
    let mut out = Consumed {
        latency: LatencyRecorder::new()?,
        messages: 0,
        bytes: 0,
        last: None,
    };
    let mut idle_since: Option<Instant> = None;
    while out.messages < total {
        let records = consumer
            .poll(Duration::from_millis(100))
            .await
            .context(|| "polling".into())?;
        let now = Instant::now();
        let now_us = u64::try_from((now - epoch).as_micros()).unwrap_or(u64::MAX - 1);
        if records.is_empty() {
            if producing_done.load(Ordering::Acquire) {
                let since = *idle_since.get_or_insert(now);
                if now - since >= idle_timeout {
                    return Err(Failure(format!(
                        "only {} of {total} records consumed: none for {} ms after the last \
                         acknowledgement",
                        out.messages,
                        idle_timeout.as_millis()
                    )));
                }
            }
            continue;
        }
        idle_since = None;
        for r in records {
            let Some(value) = r.value else { continue };
            let Some(stamp) = value.get(..8) else {
                continue;
            };
            let sent_us = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
            if sent_us == WARM_UP {
                continue;
            }
            out.latency.record_us(now_us.saturating_sub(sent_us));
            if latency_log.is_some() {
                log_lines.push((sent_us, now_us.saturating_sub(sent_us)));
            }
            out.messages += 1;
            out.bytes += value.len() as u64;
            Counters::add(&counters.consumed, 1);
            Counters::add(&counters.consumed_bytes, value.len() as u64);
        }
        out.last = Some(now);
    }
    if let Some(path) = latency_log {
        let mut text = String::with_capacity(log_lines.len() * 16);
        for (sent_us, latency_us) in log_lines {
            text.push_str(&format!(
                "{:.3} {:.3}\n",
                sent_us as f64 / 1000.0,
                latency_us as f64 / 1000.0
            ));
        }
        std::fs::write(&path, text).context(|| format!("writing {}", path.display()))?;
    }
    Ok(out)
}

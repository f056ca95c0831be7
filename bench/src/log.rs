//! `rafka-bench log`: the broker's segmented log against raw file I/O.
//!
//! Measures the broker's segmented log ([`rafka_broker::log::Log`]) against the disk it sits
//! on, for each requested batch size:
//!
//! 1. raw sequential `write_all` of batch-sized buffers with one `fdatasync` at the end (the
//!    disk's write bandwidth);
//! 2. raw `write_all` + `fdatasync` per buffer (the disk's sync latency);
//! 3. log appends with `FlushPolicy::EveryAppend` (each append is fdatasynced);
//! 4. log appends with an interval flush policy (100 ms), including the final flush;
//! 5. reading the log of (4) back from the page cache with `Log::read`, and the same segment
//!    files with plain 1 MiB `read` calls.
//!
//! Each log figure is printed beside its raw counterpart with the ratio between them and the
//! ratio's target. The figures are printed, never asserted: the exit status only reports whether
//! the benchmark could run. MB means 10^6 bytes. Progress goes to stderr, results to stdout
//! (one JSON object per batch size and line with `--json`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use bytes::Bytes;
use clap::Args;
use rafka_broker::fs::Fs;
use rafka_broker::log::{FlushPolicy, Log, LogConfig};
use rafka_protocol::LeaderEpoch;

use crate::raw::{
    bench_dir, build_batch, raw_read, raw_write, raw_write_fsync, remove_dir, subdir, CHUNK_BYTES,
};
use crate::stats::{mb_per_s, num, ratio, Figure, Latency, LatencyRecorder};
use crate::{human_bytes, parse_positive_size, parse_size, Context, Failure, Result};

/// Interval append MB/s over raw write MB/s should reach this.
const TARGET_APPEND_INTERVAL_RATIO: f64 = 0.80;
/// Fsync-per-append p50 over raw write+fdatasync p50 should stay below this.
const TARGET_FSYNC_LATENCY_RATIO: f64 = 1.3;
/// Log reads from the page cache should reach this many MB/s.
const TARGET_READ_MB_PER_S: f64 = 1000.0;
/// The interval flush policy measured in (4).
const FLUSH_INTERVAL_MS: u64 = 100;

#[derive(Args)]
pub struct LogArgs {
    /// Directory on the disk to measure; a fresh subdirectory is created in it and removed at
    /// the end. Default: a fresh temporary directory in the current directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Value bytes per record (suffixes such as KiB are accepted).
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    pub record_bytes: u64,
    /// Bytes written by the raw-write and interval-flush runs, per batch size.
    #[arg(long, default_value = "1073741824", value_parser = parse_positive_size)]
    pub total_bytes: u64,
    /// Batch sizes to measure, comma separated (plain bytes or with a suffix: 16KiB, 1MiB).
    #[arg(
        long,
        default_value = "16384,1048576",
        value_delimiter = ',',
        value_parser = parse_positive_size
    )]
    pub batch_bytes: Vec<u64>,
    /// Operations in each fdatasync-per-write run (raw and log), per batch size.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    pub fsync_ops: u64,
    /// Print one JSON object per batch size (one per line) instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// Everything measured for one batch size.
struct BatchReport {
    batch_bytes: u64,
    batch_actual_bytes: u64,
    records_per_batch: usize,
    record_bytes: u64,
    batches: u64,
    fsync_batches: u64,
    raw_write: Figure,
    raw_fsync: Figure,
    append_fsync: Figure,
    append_interval: Figure,
    read: Figure,
    raw_read: Figure,
}

impl BatchReport {
    fn append_interval_ratio(&self) -> f64 {
        ratio(self.append_interval.mb_per_s, self.raw_write.mb_per_s)
    }
    fn fsync_latency_ratio(&self) -> f64 {
        match (self.append_fsync.latency, self.raw_fsync.latency) {
            (Some(a), Some(r)) => ratio(a.p50_ms, r.p50_ms),
            _ => f64::NAN,
        }
    }
    fn read_ratio(&self) -> f64 {
        ratio(self.read.mb_per_s, self.raw_read.mb_per_s)
    }
}

fn log_config(flush: FlushPolicy, batch_len: u64) -> LogConfig {
    LogConfig {
        segment_bytes: 1 << 30,
        flush,
        append_bytes_max: batch_len.max(8 << 20),
        ..LogConfig::default()
    }
}

fn open_log(dir: &Path, flush: FlushPolicy, batch_len: u64) -> Result<Log> {
    Log::open(dir, log_config(flush, batch_len), Fs::real())
        .context(|| format!("opening a log in {}", dir.display()))
}

/// (3) `count` appends of `batch` to a log that fdatasyncs every append, each timed.
fn append_fsync(dir: &Path, batch: &Bytes, count: u64) -> Result<Figure> {
    let log = open_log(dir, FlushPolicy::EveryAppend, batch.len() as u64)?;
    let mut latency = LatencyRecorder::new()?;
    let started = Instant::now();
    for _ in 0..count {
        let op = Instant::now();
        log.append(batch.clone(), LeaderEpoch(0))
            .context(|| format!("appending to the log in {}", dir.display()))?;
        latency.record(op.elapsed());
    }
    let elapsed = started.elapsed();
    log.close()
        .context(|| format!("closing the log in {}", dir.display()))?;
    Ok(Figure {
        mb_per_s: mb_per_s(batch.len() as u64 * count, elapsed),
        latency: Some(latency.summary()),
    })
}

/// (4) `count` appends of `batch` under the interval flush policy, then a final flush, timed as
/// a whole. Returns the open log for the read runs.
fn append_interval(dir: &Path, batch: &Bytes, count: u64) -> Result<(Figure, Log)> {
    let flush = FlushPolicy::Interval {
        messages: None,
        interval_ms: Some(FLUSH_INTERVAL_MS),
    };
    let log = open_log(dir, flush, batch.len() as u64)?;
    let started = Instant::now();
    // As in the broker, a maintenance thread runs the time-triggered flushes beside the
    // appender (the broker checks every 100 ms; 10 ms here keeps the interval tight).
    let appending = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| -> Result<()> {
        let flusher = scope.spawn(|| {
            while appending.load(std::sync::atomic::Ordering::Acquire) {
                log.flush_if_due()?;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Ok::<(), rafka_broker::Error>(())
        });
        let appended = (0..count).try_for_each(|_| {
            log.append(batch.clone(), LeaderEpoch(0))
                .map(|_| ())
                .context(|| format!("appending to the log in {}", dir.display()))
        });
        appending.store(false, std::sync::atomic::Ordering::Release);
        let flushed = flusher
            .join()
            .map_err(|_| Failure("the flusher thread panicked".into()))?;
        appended?;
        flushed.context(|| format!("flushing the log in {}", dir.display()))
    })?;
    log.flush()
        .context(|| format!("flushing the log in {}", dir.display()))?;
    let elapsed = started.elapsed();
    let figure = Figure {
        mb_per_s: mb_per_s(batch.len() as u64 * count, elapsed),
        latency: None,
    };
    Ok((figure, log))
}

/// (5a) Reads the whole log with `Log::read` of 1 MiB at a time. Returns the figure and the
/// bytes read.
fn log_read(log: &Log) -> Result<(Figure, u64)> {
    let end = log.log_end_offset();
    let mut offset = log.log_start_offset();
    let mut bytes = 0u64;
    let started = Instant::now();
    loop {
        let r = log.read(offset, CHUNK_BYTES, None).context(|| {
            format!(
                "reading the log in {} at offset {offset}",
                log.dir().display()
            )
        })?;
        if r.batches.is_empty() {
            if r.next_offset == end {
                break;
            }
            return Err(Failure(format!(
                "reading the log in {} made no progress at offset {offset} (log end {end})",
                log.dir().display()
            )));
        }
        bytes += r.batches.len() as u64;
        offset = r.next_offset;
    }
    let elapsed = started.elapsed();
    Ok((
        Figure {
            mb_per_s: mb_per_s(bytes, elapsed),
            latency: None,
        },
        bytes,
    ))
}

fn progress(label: &str, what: &str) {
    eprintln!("rafka-bench: [{label}] {what}");
}

fn describe(f: &Figure) -> String {
    match f.latency {
        Some(l) => format!(
            "{:.1} MB/s, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            f.mb_per_s, l.p50_ms, l.p99_ms, l.max_ms
        ),
        None => format!("{:.1} MB/s", f.mb_per_s),
    }
}

/// Runs every measurement for one batch size under `root`.
fn measure_batch_size(args: &LogArgs, root: &Path, batch_bytes: u64) -> Result<BatchReport> {
    let label = format!("batch {}", human_bytes(batch_bytes));
    let (batch, records) = build_batch(batch_bytes, args.record_bytes)?;
    let batch_len = batch.len() as u64;
    // The raw runs write buffers of exactly the batch's size, so both sides move the same
    // bytes per operation.
    let raw_buf = batch.to_vec();
    let batches = (args.total_bytes / batch_len).max(1);
    let fsync_batches = batches.min(args.fsync_ops);
    progress(
        &label,
        &format!(
            "{records} records of {} B per batch, {batch_len} B per batch; {batches} batches \
             ({:.1} MB) per bulk run, {fsync_batches} per fdatasync run",
            args.record_bytes,
            (batch_len * batches) as f64 / 1e6
        ),
    );

    progress(&label, "raw write + one fdatasync ...");
    let dir = subdir(root, "raw-write")?;
    let raw_write = raw_write(&dir, &raw_buf, batches)?;
    remove_dir(&dir)?;
    progress(
        &label,
        &format!("raw write + one fdatasync: {}", describe(&raw_write)),
    );

    progress(&label, "raw write + fdatasync per write ...");
    let dir = subdir(root, "raw-fsync")?;
    let raw_fsync = raw_write_fsync(&dir, &raw_buf, fsync_batches, None)?;
    remove_dir(&dir)?;
    progress(
        &label,
        &format!("raw write + fdatasync per write: {}", describe(&raw_fsync)),
    );

    progress(&label, "log append, flush every append ...");
    let dir = subdir(root, "log-fsync")?;
    let append_fsync = append_fsync(&dir, &batch, fsync_batches)?;
    remove_dir(&dir)?;
    progress(
        &label,
        &format!(
            "log append, flush every append: {}",
            describe(&append_fsync)
        ),
    );

    progress(
        &label,
        &format!("log append, flush every {FLUSH_INTERVAL_MS} ms ..."),
    );
    let dir = subdir(root, "log-interval")?;
    let (append_interval, log) = append_interval(&dir, &batch, batches)?;
    progress(
        &label,
        &format!(
            "log append, flush every {FLUSH_INTERVAL_MS} ms: {}",
            describe(&append_interval)
        ),
    );

    progress(&label, "log read (page cache) ...");
    let (read, read_bytes) = log_read(&log)?;
    progress(&label, &format!("log read: {}", describe(&read)));
    progress(&label, "raw read of the segment files (page cache) ...");
    let (raw_read, raw_read_bytes) = raw_read(&dir)?;
    progress(&label, &format!("raw read: {}", describe(&raw_read)));
    if read_bytes != raw_read_bytes {
        return Err(Failure(format!(
            "the log read returned {read_bytes} bytes but its segment files hold {raw_read_bytes}"
        )));
    }
    log.close()
        .context(|| format!("closing the log in {}", dir.display()))?;
    remove_dir(&dir)?;

    Ok(BatchReport {
        batch_bytes,
        batch_actual_bytes: batch_len,
        records_per_batch: records,
        record_bytes: args.record_bytes,
        batches,
        fsync_batches,
        raw_write,
        raw_fsync,
        append_fsync,
        append_interval,
        read,
        raw_read,
    })
}

pub fn run(args: &LogArgs) -> Result<()> {
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = bench_dir(&parent)?;
    progress("log", &format!("measuring in {}", root.path().display()));
    if !args.json {
        println!(
            "rafka-bench log: dir {}, records of {} B, {} per bulk run, up to {} ops per \
             fdatasync run (MB = 10^6 bytes)",
            root.path().display(),
            args.record_bytes,
            human_bytes(args.total_bytes),
            args.fsync_ops
        );
    }
    for &batch_bytes in &args.batch_bytes {
        let report = measure_batch_size(args, root.path(), batch_bytes)?;
        if args.json {
            println!("{}", json_line(&report));
        } else {
            print!("{}", table(&report));
        }
        std::io::stdout()
            .flush()
            .context(|| "writing to stdout".into())?;
    }
    let path = root.path().to_path_buf();
    root.close()
        .context(|| format!("removing {}", path.display()))?;
    Ok(())
}

fn json_line(r: &BatchReport) -> String {
    let lat = |f: &Figure, prefix: &str| -> String {
        let l = f.latency.unwrap_or(Latency {
            p50_ms: f64::NAN,
            p99_ms: f64::NAN,
            p999_ms: f64::NAN,
            max_ms: f64::NAN,
        });
        format!(
            "\"{prefix}_p50_ms\":{},\"{prefix}_p99_ms\":{},\"{prefix}_p999_ms\":{},\"{prefix}_max_ms\":{}",
            num(l.p50_ms),
            num(l.p99_ms),
            num(l.p999_ms),
            num(l.max_ms)
        )
    };
    let fields = [
        format!("\"batch_bytes\":{}", r.batch_bytes),
        format!("\"batch_actual_bytes\":{}", r.batch_actual_bytes),
        format!("\"records_per_batch\":{}", r.records_per_batch),
        format!("\"record_bytes\":{}", r.record_bytes),
        format!("\"bulk_bytes\":{}", r.batch_actual_bytes * r.batches),
        format!("\"fsync_ops\":{}", r.fsync_batches),
        format!("\"raw_write_mb_per_s\":{}", num(r.raw_write.mb_per_s)),
        format!(
            "\"append_interval_mb_per_s\":{}",
            num(r.append_interval.mb_per_s)
        ),
        format!(
            "\"append_interval_ratio\":{}",
            num(r.append_interval_ratio())
        ),
        format!("\"raw_fsync_mb_per_s\":{}", num(r.raw_fsync.mb_per_s)),
        lat(&r.raw_fsync, "raw_fsync"),
        format!("\"append_fsync_mb_per_s\":{}", num(r.append_fsync.mb_per_s)),
        lat(&r.append_fsync, "append_fsync"),
        format!("\"fsync_latency_ratio\":{}", num(r.fsync_latency_ratio())),
        format!("\"read_mb_per_s\":{}", num(r.read.mb_per_s)),
        format!("\"raw_read_mb_per_s\":{}", num(r.raw_read.mb_per_s)),
        format!("\"read_ratio\":{}", num(r.read_ratio())),
    ];
    format!("{{{}}}", fields.join(","))
}

/// "0.93 (>= 0.80 ok)" or "0.71 (>= 0.80 MISSED)".
fn verdict(value: f64, target: f64, at_least: bool, precision: usize) -> String {
    let met = if at_least {
        value >= target
    } else {
        value <= target
    };
    let op = if at_least { ">=" } else { "<=" };
    let state = if !value.is_finite() {
        "n/a"
    } else if met {
        "ok"
    } else {
        "MISSED"
    };
    format!("{value:.precision$} ({op} {target:.precision$} {state})")
}

fn table(r: &BatchReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nbatch {} ({} records of {} B, {} B per batch; {} batches per bulk run, {} per \
         fdatasync run)\n",
        human_bytes(r.batch_bytes),
        r.records_per_batch,
        r.record_bytes,
        r.batch_actual_bytes,
        r.batches,
        r.fsync_batches
    ));
    out.push_str(&format!(
        "  {:<34} {:>9} {:>9} {:>9} {:>9} {:>9}  {}\n",
        "measurement", "MB/s", "p50 ms", "p99 ms", "p999 ms", "max ms", "ratio (target)"
    ));
    let row = |out: &mut String, name: &str, f: &Figure, ratio: String| {
        let lat = match f.latency {
            Some(l) => format!(
                "{:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
            ),
            None => format!("{:>9} {:>9} {:>9} {:>9}", "-", "-", "-", "-"),
        };
        out.push_str(&format!(
            "  {name:<34} {:>9.1} {lat}  {ratio}\n",
            f.mb_per_s
        ));
    };
    row(
        &mut out,
        "raw write + 1 fdatasync",
        &r.raw_write,
        String::new(),
    );
    row(
        &mut out,
        &format!("log append, flush every {FLUSH_INTERVAL_MS} ms"),
        &r.append_interval,
        format!(
            "MB/s vs raw write: {}",
            verdict(
                r.append_interval_ratio(),
                TARGET_APPEND_INTERVAL_RATIO,
                true,
                2
            )
        ),
    );
    row(
        &mut out,
        "raw write + fdatasync per write",
        &r.raw_fsync,
        String::new(),
    );
    row(
        &mut out,
        "log append, flush every append",
        &r.append_fsync,
        format!(
            "p50 vs raw: {}",
            verdict(
                r.fsync_latency_ratio(),
                TARGET_FSYNC_LATENCY_RATIO,
                false,
                2
            )
        ),
    );
    row(
        &mut out,
        "raw read, 1 MiB (page cache)",
        &r.raw_read,
        String::new(),
    );
    row(
        &mut out,
        "log read, 1 MiB (page cache)",
        &r.read,
        format!(
            "vs raw read: {:.2}; MB/s: {}",
            r.read_ratio(),
            verdict(r.read.mb_per_s, TARGET_READ_MB_PER_S, true, 0)
        ),
    );
    out
}

//! `rafka-bench`: Rafka's storage benchmarks (and, once the network protocol exists, its load
//! generator).
//!
//! `rafka-bench log` measures the broker's segmented log ([`rafka_broker::log::Log`]) against
//! the disk it sits on, for each requested batch size:
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

use std::fmt::{self, Display};
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use rafka_broker::fs::Fs;
use rafka_broker::log::{FlushPolicy, Log, LogConfig};
use rafka_protocol::{BatchBuilder, BatchOptions, LeaderEpoch, Timestamp};

/// Interval append MB/s over raw write MB/s should reach this.
const TARGET_APPEND_INTERVAL_RATIO: f64 = 0.80;
/// Fsync-per-append p50 over raw write+fdatasync p50 should stay below this.
const TARGET_FSYNC_LATENCY_RATIO: f64 = 1.3;
/// Log reads from the page cache should reach this many MB/s.
const TARGET_READ_MB_PER_S: f64 = 1000.0;
/// The interval flush policy measured in (4).
const FLUSH_INTERVAL_MS: u64 = 100;
/// `max_bytes` of each `Log::read`, and the chunk size of the raw reads.
const READ_CHUNK_BYTES: usize = 1 << 20;

#[derive(Parser)]
#[command(name = "rafka-bench", version, about = "Rafka's storage benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Measures the segmented log against raw file I/O on the same disk.
    Log(LogArgs),
}

#[derive(Args)]
struct LogArgs {
    /// Directory on the disk to measure; a fresh subdirectory is created in it and removed at
    /// the end. Default: a fresh temporary directory in the current directory.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Value bytes per record (suffixes such as KiB are accepted).
    #[arg(long, default_value = "1024", value_parser = parse_size)]
    record_bytes: u64,
    /// Bytes written by the raw-write and interval-flush runs, per batch size.
    #[arg(long, default_value = "1073741824", value_parser = parse_positive_size)]
    total_bytes: u64,
    /// Batch sizes to measure, comma separated (plain bytes or with a suffix: 16KiB, 1MiB).
    #[arg(
        long,
        default_value = "16384,1048576",
        value_delimiter = ',',
        value_parser = parse_positive_size
    )]
    batch_bytes: Vec<u64>,
    /// Operations in each fdatasync-per-write run (raw and log), per batch size.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u64).range(1..))]
    fsync_ops: u64,
    /// Print one JSON object per batch size (one per line) instead of tables.
    #[arg(long)]
    json: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Log(args) => run_log(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafka-bench: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A failure, described in one line.
#[derive(Debug)]
struct Failure(String);

impl Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

type Result<T> = std::result::Result<T, Failure>;

/// Adds what was being done to an error.
trait Context<T> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Failure(format!("{}: {e}", what())))
    }
}

/// Parses a byte count: plain digits, or digits followed by B, KiB, MiB, GiB (K, M, G are
/// read as binary too), or KB, MB, GB (decimal). Case-insensitive.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, suffix) = t.split_at(split);
    if digits.is_empty() {
        return Err(format!(
            "{s:?} is not a byte count (examples: 16384, 16KiB, 1MiB)"
        ));
    }
    let n: u64 = digits
        .parse()
        .map_err(|e| format!("{s:?} is not a byte count: {e}"))?;
    let unit: u64 = match suffix.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    n.checked_mul(unit)
        .ok_or_else(|| format!("{s:?} is too large"))
}

fn parse_positive_size(s: &str) -> std::result::Result<u64, String> {
    match parse_size(s)? {
        0 => Err(format!("{s:?} must be positive")),
        n => Ok(n),
    }
}

/// `16384` as "16 KiB", `15571` as "15571 B".
fn human_bytes(n: u64) -> String {
    for (unit, name) in [(1u64 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")] {
        if n >= unit && n.is_multiple_of(unit) {
            return format!("{} {name}", n / unit);
        }
    }
    format!("{n} B")
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Latency {
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

/// Per-operation latencies at microsecond resolution.
struct LatencyRecorder(Histogram<u64>);

impl LatencyRecorder {
    fn new() -> Result<Self> {
        // 1 µs to one hour, three significant digits.
        Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map(LatencyRecorder)
            .context(|| "creating a latency histogram".into())
    }

    fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.0.saturating_record(us.max(1));
    }

    fn summary(&self) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            p999_ms: ms(self.0.value_at_quantile(0.999)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// Throughput, and latency for the runs timed per operation.
#[derive(Debug, Clone, Copy)]
struct Figure {
    mb_per_s: f64,
    latency: Option<Latency>,
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

/// A 64-bit xorshift generator: cheap, incompressible-looking bytes.
struct XorShift(u64);

impl XorShift {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// One batch of as many `record_bytes`-sized records (pseudo-random values) as fit into about
/// `target_bytes`; at least one record. Returns the batch and its record count.
fn build_batch(target_bytes: u64, record_bytes: u64) -> Result<(Bytes, usize)> {
    let record_len = usize::try_from(record_bytes)
        .map_err(|_| Failure(format!("--record-bytes {record_bytes} is too large")))?;
    let target = usize::try_from(target_bytes)
        .map_err(|_| Failure(format!("batch size {target_bytes} is too large")))?;
    if target > rafka_protocol::batch::BATCH_BYTES_MAX {
        return Err(Failure(format!(
            "batch size {target_bytes} exceeds the batch format's limit of {} bytes",
            rafka_protocol::batch::BATCH_BYTES_MAX
        )));
    }
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ target_bytes);
    let mut value = vec![0u8; record_len];
    let per_record = BatchBuilder::estimated_record_bytes(None, Some(&value), &[]);
    let mut builder = BatchBuilder::with_capacity(BatchOptions::default(), target);
    loop {
        let full = builder.size_bytes() + per_record > target;
        if full && builder.record_count() > 0 {
            break;
        }
        rng.fill(&mut value);
        builder.append(Some(Timestamp::now()), None, Some(&value), &[]);
        if full {
            break;
        }
    }
    let records = builder.record_count();
    Ok((builder.build(), records))
}

/// A fresh, empty subdirectory of the benchmark directory.
fn subdir(root: &Path, name: &str) -> Result<PathBuf> {
    let dir = root.join(name);
    std::fs::create_dir(&dir).context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn remove_dir(dir: &Path) -> Result<()> {
    std::fs::remove_dir_all(dir).context(|| format!("removing {}", dir.display()))
}

fn create_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .context(|| format!("creating {}", path.display()))
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

/// (1) `count` sequential writes of `buf`, then one `fdatasync`, timed as a whole.
fn raw_write(dir: &Path, buf: &[u8], count: u64) -> Result<Figure> {
    let path = dir.join("raw-write.dat");
    let mut file = create_file(&path)?;
    let started = Instant::now();
    for _ in 0..count {
        file.write_all(buf)
            .context(|| format!("writing {}", path.display()))?;
    }
    file.sync_data()
        .context(|| format!("fdatasync of {}", path.display()))?;
    let elapsed = started.elapsed();
    Ok(Figure {
        mb_per_s: mb_per_s(buf.len() as u64 * count, elapsed),
        latency: None,
    })
}

/// (2) `count` sequential writes of `buf`, each followed by `fdatasync`, each timed.
fn raw_write_fsync(dir: &Path, buf: &[u8], count: u64) -> Result<Figure> {
    let path = dir.join("raw-fsync.dat");
    let mut file = create_file(&path)?;
    let mut latency = LatencyRecorder::new()?;
    let started = Instant::now();
    for _ in 0..count {
        let op = Instant::now();
        file.write_all(buf)
            .context(|| format!("writing {}", path.display()))?;
        file.sync_data()
            .context(|| format!("fdatasync of {}", path.display()))?;
        latency.record(op.elapsed());
    }
    let elapsed = started.elapsed();
    Ok(Figure {
        mb_per_s: mb_per_s(buf.len() as u64 * count, elapsed),
        latency: Some(latency.summary()),
    })
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
    for _ in 0..count {
        log.append(batch.clone(), LeaderEpoch(0))
            .context(|| format!("appending to the log in {}", dir.display()))?;
    }
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
        let r = log.read(offset, READ_CHUNK_BYTES, None).context(|| {
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

/// (5b) Reads the log's `.log` segment files sequentially, 1 MiB per `read` call. Returns the
/// figure and the bytes read.
fn raw_read(dir: &Path) -> Result<(Figure, u64)> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).context(|| format!("listing {}", dir.display()))? {
        let entry = entry.context(|| format!("listing {}", dir.display()))?;
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            files.push(path);
        }
    }
    files.sort();
    let mut buf = vec![0u8; READ_CHUNK_BYTES];
    let mut bytes = 0u64;
    let started = Instant::now();
    for path in &files {
        let mut file = File::open(path).context(|| format!("opening {}", path.display()))?;
        loop {
            let n = file
                .read(&mut buf)
                .context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
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
    let raw_fsync = raw_write_fsync(&dir, &raw_buf, fsync_batches)?;
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

fn run_log(args: &LogArgs) -> Result<()> {
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let root = tempfile::Builder::new()
        .prefix("rafka-bench-")
        .tempdir_in(&parent)
        .context(|| format!("creating a benchmark directory in {}", parent.display()))?;
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

/// A JSON number, or `null` when there is none (a zero denominator).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
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

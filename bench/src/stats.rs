//! Measurement helpers shared by every command: latency histograms (microsecond resolution,
//! reported in milliseconds), throughput arithmetic, JSON numbers, the once-a-second progress
//! line, and [`Report`], the one result object of `produce`, `consume` and `e2e`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::{Context, Result};

/// Megabytes (10^6 bytes) per second.
pub fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

/// `numerator / denominator`, NaN for a zero denominator.
pub fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        f64::NAN
    }
}

/// A JSON number, or `null` when there is none (a zero denominator).
pub fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

/// Latency percentiles of one run, in milliseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

/// Per-operation latencies at microsecond resolution.
#[derive(Clone)]
pub struct LatencyRecorder(Histogram<u64>);

impl LatencyRecorder {
    pub fn new() -> Result<Self> {
        // 1 µs to one hour, three significant digits.
        Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .map(LatencyRecorder)
            .context(|| "creating a latency histogram".into())
    }

    pub fn record(&mut self, elapsed: Duration) {
        let us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.max(1));
    }

    /// Adds every value of `other`.
    pub fn merge(&mut self, other: &LatencyRecorder) -> Result<()> {
        self.0
            .add(&other.0)
            .context(|| "merging latency histograms".into())
    }

    /// The percentiles; all zero when nothing was recorded.
    pub fn summary(&self) -> Latency {
        if self.0.is_empty() {
            return Latency::default();
        }
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
pub struct Figure {
    pub mb_per_s: f64,
    pub latency: Option<Latency>,
}

/// An extra field of a [`Report`], printed after the standard ones.
#[derive(Debug, Clone)]
pub enum Value {
    Num(f64),
    Int(u64),
    Str(String),
}

/// The result of one `produce`, `consume` or `e2e` run.
///
/// In JSON the standard fields come first, in this order:
/// `{"messages":N,"bytes":B,"seconds":S,"msgs_per_s":X,"mb_per_s":Y,"p50_ms":..,"p99_ms":..,
/// "p999_ms":..,"max_ms":..}`, then the command's extra fields (raw limits, ratios, settings).
#[derive(Debug, Clone)]
pub struct Report {
    /// Which command ("produce", "consume", "e2e"), for the readable summary.
    pub command: &'static str,
    pub messages: u64,
    pub bytes: u64,
    pub elapsed: Duration,
    /// What the latency fields measure, for the readable summary.
    pub latency_label: &'static str,
    pub latency: Latency,
    pub extra: Vec<(&'static str, Value)>,
    /// Raw-limit comparison lines for the readable summary.
    pub comparisons: Vec<String>,
}

impl Report {
    pub fn msgs_per_s(&self) -> f64 {
        self.messages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    pub fn mb_per_s(&self) -> f64 {
        mb_per_s(self.bytes, self.elapsed)
    }

    /// The single JSON object.
    pub fn json(&self) -> String {
        let l = &self.latency;
        let mut out = format!(
            "{{\"messages\":{},\"bytes\":{},\"seconds\":{},\"msgs_per_s\":{},\"mb_per_s\":{},\
             \"p50_ms\":{},\"p99_ms\":{},\"p999_ms\":{},\"max_ms\":{}",
            self.messages,
            self.bytes,
            num(self.elapsed.as_secs_f64()),
            num(self.msgs_per_s()),
            num(self.mb_per_s()),
            num(l.p50_ms),
            num(l.p99_ms),
            num(l.p999_ms),
            num(l.max_ms)
        );
        for (key, value) in &self.extra {
            let v = match value {
                Value::Num(x) => num(*x),
                Value::Int(n) => n.to_string(),
                Value::Str(s) => json_string(s),
            };
            let _ = write!(out, ",\"{key}\":{v}");
        }
        out.push('}');
        out
    }

    /// A readable multi-line summary.
    pub fn text(&self) -> String {
        let l = &self.latency;
        let mut out = format!(
            "rafka-bench {}: {} messages, {:.1} MB in {:.3} s: {:.0} msgs/s, {:.1} MB/s\n  \
             {}: p50 {:.3} ms, p99 {:.3} ms, p999 {:.3} ms, max {:.3} ms\n",
            self.command,
            self.messages,
            self.bytes as f64 / 1e6,
            self.elapsed.as_secs_f64(),
            self.msgs_per_s(),
            self.mb_per_s(),
            self.latency_label,
            l.p50_ms,
            l.p99_ms,
            l.p999_ms,
            l.max_ms
        );
        for line in &self.comparisons {
            let _ = writeln!(out, "  {line}");
        }
        let settings: Vec<String> = self
            .extra
            .iter()
            .filter_map(|(k, v)| match v {
                Value::Str(s) => Some(format!("{k}={s}")),
                Value::Int(n) => Some(format!("{k}={n}")),
                Value::Num(_) => None,
            })
            .collect();
        if !settings.is_empty() {
            let _ = writeln!(out, "  settings: {}", settings.join(" "));
        }
        out
    }
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Counters a run updates and the progress line reads.
#[derive(Debug, Default)]
pub struct Counters {
    pub sent: AtomicU64,
    pub acked: AtomicU64,
    pub acked_bytes: AtomicU64,
    pub consumed: AtomicU64,
    pub consumed_bytes: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Prints a progress line on stderr about once a second until dropped.
pub struct ProgressLine {
    task: tokio::task::JoinHandle<()>,
}

impl ProgressLine {
    /// Starts printing `[label] ...` lines (needs a Tokio runtime). Producing runs show sent and
    /// acked counts with the acked MB/s of the last second; consuming runs show consumed counts.
    pub fn start(label: &'static str, counters: Arc<Counters>) -> ProgressLine {
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut last = (0u64, 0u64, Instant::now());
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let sent = counters.sent.load(Ordering::Relaxed);
                let acked = counters.acked.load(Ordering::Relaxed);
                let consumed = counters.consumed.load(Ordering::Relaxed);
                // Producing runs count acknowledged bytes, consuming runs consumed bytes.
                let bytes = if sent > 0 {
                    counters.acked_bytes.load(Ordering::Relaxed)
                } else {
                    counters.consumed_bytes.load(Ordering::Relaxed)
                };
                let now = Instant::now();
                let rate = mb_per_s(bytes - last.0, now - last.2);
                let done = if sent > 0 { acked } else { consumed };
                let msgs = (done - last.1) as f64 / (now - last.2).as_secs_f64();
                last = (bytes, done, now);
                let mut line = format!(
                    "rafka-bench: [{label}] {:>5.1} s:",
                    started.elapsed().as_secs_f64()
                );
                if sent > 0 {
                    let _ = write!(line, " sent {sent}, acked {acked} msgs,");
                }
                if consumed > 0 || sent == 0 {
                    let _ = write!(line, " consumed {consumed} msgs,");
                }
                let _ = write!(line, " {rate:.1} MB/s, {msgs:.0} msgs/s");
                eprintln!("{line}");
            }
        });
        ProgressLine { task }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_starts_with_the_contract_fields_in_order() {
        let r = Report {
            command: "produce",
            messages: 10,
            bytes: 2000,
            elapsed: Duration::from_secs(2),
            latency_label: "send→ack",
            latency: Latency {
                p50_ms: 1.0,
                p99_ms: 2.0,
                p999_ms: 3.0,
                max_ms: 4.0,
            },
            extra: vec![
                ("raw_limit_mb_per_s", Value::Num(f64::NAN)),
                ("acks", Value::Str("all".into())),
            ],
            comparisons: vec![],
        };
        assert_eq!(
            r.json(),
            "{\"messages\":10,\"bytes\":2000,\"seconds\":2.000,\"msgs_per_s\":5.000,\
             \"mb_per_s\":0.001,\"p50_ms\":1.000,\"p99_ms\":2.000,\"p999_ms\":3.000,\
             \"max_ms\":4.000,\"raw_limit_mb_per_s\":null,\"acks\":\"all\"}"
        );
    }

    #[test]
    fn an_empty_histogram_summarises_to_zero() {
        let r = LatencyRecorder::new().unwrap();
        assert_eq!(r.summary().p50_ms, 0.0);
        let mut r = r;
        r.record(Duration::from_micros(1500));
        assert!((r.summary().p50_ms - 1.5).abs() < 0.01);
    }
}

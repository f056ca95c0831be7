//! The fault suite's plots, drawn from a history alone: `latency.png` (how long each client
//! operation took, over time) and `rate.png` (completions per second), each with the nemesis
//! windows shaded, so a glance shows what every fault did to the clients.
//!
//! Drawn with `plotters` into PNG bitmaps in pure Rust; the text uses the DejaVu Sans font
//! shipped in `tests/assets` (registered once per process), so no system font library is
//! needed and the plots look the same on every machine.
//!
//! In the latency plot the colour says the outcome (ok green, fail red, info orange) and the
//! marker says the function: a dot for `send`, a triangle for `poll`, a cross for `final_read`.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::FontStyle;

use super::checker::{function_name, pair};
use super::history::{NemesisPhase, Op, OpType, Payload};

const WIDTH_PX: u32 = 1400;
const HEIGHT_PX: u32 = 800;
const FONT_FAMILY: &str = "sans-serif";
const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

const OK_COLOUR: RGBColor = RGBColor(0, 150, 60);
const FAIL_COLOUR: RGBColor = RGBColor(210, 30, 30);
const INFO_COLOUR: RGBColor = RGBColor(245, 140, 0);
/// One colour per fault kind, in order of first appearance; they repeat past the last.
const FAULT_COLOURS: [RGBColor; 6] = [
    RGBColor(60, 110, 220),
    RGBColor(150, 70, 200),
    RGBColor(120, 120, 120),
    RGBColor(0, 170, 190),
    RGBColor(200, 60, 160),
    RGBColor(140, 100, 40),
];
/// How strongly a nemesis window tints the plot: light enough to see the points through.
const WINDOW_OPACITY: f64 = 0.15;

/// The latency of every completed client operation against its completion time. Latency is
/// the completion's time minus the invocation's of the same process (a process has one
/// operation open at a time); the y axis is logarithmic, as latencies span microseconds to
/// timeouts.
pub fn latency_png(ops: &[Op], path: &Path) -> Result<(), String> {
    register_font()?;
    let end_s = end_s(ops);
    let mut series: BTreeMap<(&'static str, Outcome), Vec<(f64, f64)>> = BTreeMap::new();
    for done in pair(ops).completed {
        let Some(outcome) = Outcome::of(done.complete.kind) else {
            continue;
        };
        let ms = (done.latency_ns() as f64 / 1e6).max(LATENCY_MS_MIN);
        series
            .entry((function_name(&done.complete.payload), outcome))
            .or_default()
            .push((seconds(done.complete.time_ns), ms));
    }
    let (lo, hi) = series
        .values()
        .flatten()
        .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, ms)| {
            (lo.min(ms), hi.max(ms))
        });
    let (y_lo, y_hi) = if lo <= hi {
        (lo / 2.0, hi * 2.0)
    } else {
        (0.1, 1000.0)
    };

    let root = BitMapBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = chart_builder(&root, "Latency of client operations")
        .build_cartesian_2d(0f64..end_s, (y_lo..y_hi).log_scale())
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms, log scale)")
        .x_label_formatter(&|s| format!("{s:.0}"))
        .y_label_formatter(&|ms| trim_number(*ms))
        .axis_desc_style((FONT_FAMILY, 16))
        .label_style((FONT_FAMILY, 13))
        .draw()
        .map_err(err)?;
    for windows in nemesis_windows(ops, end_s) {
        let style = windows.colour.mix(WINDOW_OPACITY).filled();
        chart
            .draw_series(
                windows
                    .spans_s
                    .iter()
                    .map(|&(start, end)| Rectangle::new([(start, y_lo), (end, y_hi)], style)),
            )
            .map_err(err)?
            .label(windows.fault)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], style));
    }
    for ((f, outcome), points) in &series {
        let colour = outcome.colour();
        let label = format!("{f} {}", outcome.name());
        // Each marker is its own element type, hence one arm each.
        let drawn = match *f {
            "send" | "txn" => chart.draw_series(
                points
                    .iter()
                    .map(|&p| Circle::new(p, 2, colour.mix(0.6).filled())),
            ),
            "poll" | "group_poll" | "txn_poll" => chart.draw_series(
                points
                    .iter()
                    .map(|&p| TriangleMarker::new(p, 3, colour.mix(0.6).filled())),
            ),
            _ => chart.draw_series(
                points
                    .iter()
                    .map(|&p| Cross::new(p, 4, colour.stroke_width(2))),
            ),
        }
        .map_err(err)?;
        let f = *f;
        drawn.label(label).legend(
            move |(x, y)| -> DynElement<'static, BitMapBackend, (i32, i32)> {
                match f {
                    "send" | "txn" => Circle::new((x + 8, y), 4, colour.filled()).into_dyn(),
                    "poll" | "group_poll" | "txn_poll" => {
                        TriangleMarker::new((x + 8, y), 5, colour.filled()).into_dyn()
                    }
                    _ => Cross::new((x + 8, y), 4, colour.stroke_width(2)).into_dyn(),
                }
            },
        );
    }
    draw_legend(&mut chart)?;
    root.present().map_err(err)
}

/// Client completions per second (1 s buckets) for ok, fail and info, as lines: a fault shows
/// as the ok line dropping and the others rising.
pub fn rate_png(ops: &[Op], path: &Path) -> Result<(), String> {
    register_font()?;
    let end_s = end_s(ops);
    let buckets = end_s.ceil() as usize;
    let mut counts: BTreeMap<Outcome, Vec<u64>> = BTreeMap::new();
    for op in ops {
        if matches!(op.payload, Payload::Nemesis(_)) {
            continue;
        }
        let Some(outcome) = Outcome::of(op.kind) else {
            continue;
        };
        let bucket = ((op.time_ns / 1_000_000_000) as usize).min(buckets - 1);
        counts.entry(outcome).or_insert_with(|| vec![0; buckets])[bucket] += 1;
    }
    let y_hi = counts.values().flatten().copied().max().unwrap_or(0).max(1) as f64 * 1.1;

    let root = BitMapBackend::new(path, (WIDTH_PX, HEIGHT_PX)).into_drawing_area();
    root.fill(&WHITE).map_err(err)?;
    let mut chart = chart_builder(&root, "Throughput of client operations")
        .build_cartesian_2d(0f64..end_s, 0f64..y_hi)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("completions per second")
        .x_label_formatter(&|s| format!("{s:.0}"))
        .y_label_formatter(&|n| format!("{n:.0}"))
        .axis_desc_style((FONT_FAMILY, 16))
        .label_style((FONT_FAMILY, 13))
        .draw()
        .map_err(err)?;
    for windows in nemesis_windows(ops, end_s) {
        let style = windows.colour.mix(WINDOW_OPACITY).filled();
        chart
            .draw_series(
                windows
                    .spans_s
                    .iter()
                    .map(|&(start, end)| Rectangle::new([(start, 0.0), (end, y_hi)], style)),
            )
            .map_err(err)?
            .label(windows.fault)
            .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 16, y + 6)], style));
    }
    for (outcome, per_second) in &counts {
        let colour = outcome.colour();
        chart
            .draw_series(LineSeries::new(
                // Each bucket's count at its middle: the rate over that second.
                per_second
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| (i as f64 + 0.5, n as f64)),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(outcome.name())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], colour.stroke_width(3)));
    }
    draw_legend(&mut chart)?;
    root.present().map_err(err)
}

/// Latencies are clamped up to this (1 µs) so a zero fits the log scale.
const LATENCY_MS_MIN: f64 = 0.001;

/// The outcome of a completion, ordered so the legend reads ok, fail, info.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Ok,
    Fail,
    Info,
}

impl Outcome {
    fn of(kind: OpType) -> Option<Outcome> {
        match kind {
            OpType::Invoke => None,
            OpType::Ok => Some(Outcome::Ok),
            OpType::Fail => Some(Outcome::Fail),
            OpType::Info => Some(Outcome::Info),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Fail => "fail",
            Outcome::Info => "info",
        }
    }

    fn colour(self) -> RGBColor {
        match self {
            Outcome::Ok => OK_COLOUR,
            Outcome::Fail => FAIL_COLOUR,
            Outcome::Info => INFO_COLOUR,
        }
    }
}

/// The windows of one kind of fault.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultWindows {
    /// As in the history (`kill`, `pause`, ...).
    pub fault: String,
    colour: RGBColor,
    /// `(start, end)` of each window, in seconds since the start of the run.
    pub spans_s: Vec<(f64, f64)>,
}

/// The fault windows per fault kind, in order of first start. A start opens a window of its fault, the next stop of the
/// same fault closes it, and a window never stopped runs to `end_s`. Nemesis actions are the
/// `info` lines (history.rs); invocations are taken only if there are none.
pub fn nemesis_windows(ops: &[Op], end_s: f64) -> Vec<FaultWindows> {
    let nemesis: Vec<_> = ops
        .iter()
        .filter_map(|op| match &op.payload {
            Payload::Nemesis(n) => Some((op, n)),
            _ => None,
        })
        .collect();
    let completions = nemesis.iter().any(|(op, _)| op.kind != OpType::Invoke);
    let mut open: BTreeMap<&str, f64> = BTreeMap::new();
    let mut windows: Vec<FaultWindows> = Vec::new();
    let mut window_of = |fault: &str, span: (f64, f64)| {
        let at = match windows.iter().position(|w| w.fault == fault) {
            Some(at) => at,
            None => {
                windows.push(FaultWindows {
                    fault: fault.to_string(),
                    colour: FAULT_COLOURS[windows.len() % FAULT_COLOURS.len()],
                    spans_s: Vec::new(),
                });
                windows.len() - 1
            }
        };
        windows[at].spans_s.push(span);
    };
    for (op, n) in nemesis {
        if completions == (op.kind == OpType::Invoke) {
            continue;
        }
        match n.phase {
            NemesisPhase::Start => {
                open.entry(&n.fault).or_insert(seconds(op.time_ns));
            }
            NemesisPhase::Stop => {
                if let Some(start) = open.remove(n.fault.as_str()) {
                    window_of(&n.fault, (start, seconds(op.time_ns)));
                }
            }
        }
    }
    let mut unstopped: Vec<_> = open.into_iter().collect();
    unstopped.sort_by(|a, b| a.1.total_cmp(&b.1));
    for (fault, start) in unstopped {
        window_of(fault, (start, end_s));
    }
    windows
}

fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, BitMapBackend<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(
            format!("{title} (nemesis windows shaded)"),
            (FONT_FAMILY, 26),
        )
        .margin(20)
        .x_label_area_size(50)
        .y_label_area_size(80);
    builder
}

fn draw_legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), String>
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT_FAMILY, 16))
        .draw()
        .map_err(err)
}

/// The x axis runs to the last line of the history (at least a millisecond, so it is never
/// empty).
fn end_s(ops: &[Op]) -> f64 {
    ops.iter()
        .map(|op| seconds(op.time_ns))
        .fold(0.001, f64::max)
}

/// `1000`, `0.5`, `0.001`: no trailing zeros on the log axis's powers of ten.
fn trim_number(v: f64) -> String {
    let s = format!("{v:.3}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn seconds(time_ns: u64) -> f64 {
    time_ns as f64 / 1e9
}

/// Registers the shipped font as the `sans-serif` family, once per process (plotters keeps
/// fonts in a global table).
fn register_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            plotters::style::register_font(FONT_FAMILY, FontStyle::Normal, FONT)
                .map_err(|_| "the shipped font tests/assets/DejaVuSans.ttf is invalid".to_string())
        })
        .clone()
}

fn err(e: impl Display) -> String {
    format!("plot: {e}")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::jepsen::checker::synthetic::{HistoryBuilder, Producer};

    /// A few seconds of sends and polls, with a kill window, a pause window and a partition
    /// never healed; some operations fail or time out inside the windows.
    fn history() -> Vec<Op> {
        let mut h = HistoryBuilder::new();
        let mut offset = 0;
        for i in 0..3000u64 {
            let in_fault = (800..1400).contains(&i) || i >= 2400;
            h.latency = Duration::from_micros(200 + (i * 7919) % 3000);
            if i % 3 == 0 {
                h.poll_ok(1, 0, offset.max(1) - 1, &[]);
            } else if in_fault && i % 5 == 0 {
                h.latency = Duration::from_millis(500);
                h.send_info(100 + i as i64, 0, &format!("x-{i}"), Producer::Idempotent);
            } else if in_fault && i % 7 == 0 {
                h.send_fail(0, 0, &format!("x-{i}"), Producer::Idempotent);
            } else {
                h.send_ok(0, 0, &format!("x-{i}"), offset, Producer::Idempotent);
                offset += 1;
            }
            match i {
                800 => h.nemesis("kill", NemesisPhase::Start, &[1]),
                1100 => h.nemesis("kill", NemesisPhase::Stop, &[1]),
                1200 => h.nemesis("pause", NemesisPhase::Start, &[2]),
                1400 => h.nemesis("pause", NemesisPhase::Stop, &[2]),
                2400 => h.nemesis("partition", NemesisPhase::Start, &[3]),
                _ => {}
            }
        }
        h.ops()
    }

    fn assert_png(path: &Path) {
        let bytes = std::fs::read(path).unwrap();
        assert!(
            bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
            "{} is not a PNG",
            path.display()
        );
        assert!(
            bytes.len() > 8 * 1024,
            "{} is only {} bytes",
            path.display(),
            bytes.len()
        );
    }

    #[test]
    fn both_plots_are_written_as_pngs() {
        let dir = tempfile::tempdir().unwrap();
        let ops = history();
        latency_png(&ops, &dir.path().join("latency.png")).unwrap();
        rate_png(&ops, &dir.path().join("rate.png")).unwrap();
        assert_png(&dir.path().join("latency.png"));
        assert_png(&dir.path().join("rate.png"));
        if let Ok(keep) = std::env::var("RAFKA_PLOT_TEST_OUT") {
            // To look at them: RAFKA_PLOT_TEST_OUT=/some/dir cargo test ... plot
            for name in ["latency.png", "rate.png"] {
                std::fs::copy(dir.path().join(name), Path::new(&keep).join(name)).unwrap();
            }
        }
    }

    #[test]
    fn an_empty_history_still_plots() {
        let dir = tempfile::tempdir().unwrap();
        latency_png(&[], &dir.path().join("latency.png")).unwrap();
        rate_png(&[], &dir.path().join("rate.png")).unwrap();
    }

    #[test]
    fn windows_pair_starts_with_stops_of_the_same_fault() {
        let mut h = HistoryBuilder::new();
        h.nemesis("kill", NemesisPhase::Start, &[1]);
        h.advance(Duration::from_secs(1));
        h.nemesis("pause", NemesisPhase::Start, &[2]);
        h.advance(Duration::from_secs(1));
        h.nemesis("kill", NemesisPhase::Stop, &[1]);
        h.advance(Duration::from_secs(1));
        h.nemesis("kill", NemesisPhase::Start, &[3]);
        h.advance(Duration::from_secs(1));
        h.nemesis("kill", NemesisPhase::Stop, &[3]);
        let windows = nemesis_windows(&h.ops(), 10.0);
        let spans: Vec<(&str, Vec<(f64, f64)>)> = windows
            .iter()
            .map(|w| (w.fault.as_str(), w.spans_s.clone()))
            .collect();
        assert_eq!(
            spans,
            vec![
                ("kill", vec![(0.0, 2.0), (3.0, 4.0)]),
                ("pause", vec![(1.0, 10.0)]),
            ]
        );
    }
}

//! Damaged files: corruption in a closed segment is reported (error and metric) and never
//! served; damage at the tail of the active segment is cut on recovery; broken or missing
//! indexes are rebuilt.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use common::*;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use rafka_broker::fs::Fs;
use rafka_broker::log::{Log, LogConfig};
use rafka_broker::Error;
use rafka_protocol::{BatchHeader, LeaderEpoch, Offset};

/// Counts counter increments by name, so tests can see what the log reported.
#[derive(Default)]
struct Counting {
    counters: Mutex<HashMap<String, Arc<Count>>>,
}

#[derive(Default)]
struct Count(AtomicU64);

impl CounterFn for Count {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.store(value, Ordering::Relaxed);
    }
}

impl Counting {
    fn get(&self, name: &str) -> u64 {
        self.counters
            .lock()
            .unwrap()
            .get(name)
            .map_or(0, |c| c.0.load(Ordering::Relaxed))
    }
}

impl Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let c = Arc::clone(
            self.counters
                .lock()
                .unwrap()
                .entry(key.name().to_string())
                .or_default(),
        );
        Counter::from_arc(c)
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

fn cfg() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        retention_ms: None,
        ..LogConfig::default()
    }
}

/// Writes 300 one-record batches and closes the log; returns the values by offset.
fn fill(dir: &Path) -> Vec<Vec<u8>> {
    let log = Log::open(dir, cfg(), Fs::real()).unwrap();
    let mut values = Vec::new();
    for i in 0..300 {
        let v = format!("value-{i:04}-{}", "x".repeat(i % 50)).into_bytes();
        log.append(
            batch(&[(Some(1_000 + i as i64), v.clone())]),
            LeaderEpoch(0),
        )
        .unwrap();
        values.push(v);
    }
    log.close().unwrap();
    values
}

fn segment_logs(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// (position, base offset, size) of every batch in a segment file.
fn batches_in(path: &Path) -> Vec<(usize, u64, usize)> {
    let raw = std::fs::read(path).unwrap();
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < raw.len() {
        let h = BatchHeader::parse(&raw[pos..]).unwrap();
        out.push((pos, h.base_offset.0, h.total_bytes()));
        pos += h.total_bytes();
    }
    out
}

fn flip(path: &Path, at: usize) {
    let mut raw = std::fs::read(path).unwrap();
    raw[at] ^= 0x5a;
    std::fs::write(path, raw).unwrap();
}

#[test]
fn corruption_in_a_closed_segment_is_reported_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let values = fill(dir.path());
    let segs = segment_logs(dir.path());
    assert!(segs.len() >= 3);
    // Damage a record's value in the middle of the second segment.
    let batches = batches_in(&segs[1]);
    let (pos, bad_offset, size) = batches[batches.len() / 2];
    flip(&segs[1], pos + size - 3);

    let recorder = Counting::default();
    metrics::with_local_recorder(&recorder, || {
        let log = Log::open(dir.path(), cfg(), Fs::real())
            .expect("a damaged closed segment does not stop the open");
        assert_eq!(
            log.log_end_offset(),
            Offset(300),
            "nothing is cut from a closed segment"
        );
        // Every read either returns intact records or fails with Corrupt; none returns the
        // damaged batch.
        let mut seen = 0;
        for o in 0..300u64 {
            match log.read(Offset(o), 1 << 16, None) {
                Ok(r) => {
                    for rec in records(&r) {
                        assert_ne!(rec.offset, bad_offset, "the damaged batch was served");
                        assert_eq!(rec.value, values[rec.offset as usize]);
                        seen += 1;
                    }
                }
                Err(Error::Corrupt { path, .. }) => {
                    assert_eq!(o, bad_offset, "only reads of the damaged batch fail");
                    assert_eq!(path, segs[1]);
                }
                Err(e) => panic!("unexpected error at {o}: {e}"),
            }
        }
        assert!(seen > 0);
        assert!(
            recorder.get("rafka_log_corruptions_total") >= 1,
            "corruption is counted"
        );
    });
}

#[test]
fn damage_at_the_tail_of_the_active_segment_is_cut_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let values = fill(dir.path());
    let segs = segment_logs(dir.path());
    let active = segs.last().unwrap();
    let batches = batches_in(active);
    assert!(
        batches.len() >= 3,
        "the active segment holds several batches"
    );
    let (pos, cut_at, _) = batches[batches.len() - 2];
    flip(active, pos + 30);

    let log = Log::open(dir.path(), cfg(), Fs::real()).unwrap();
    assert_eq!(
        log.log_end_offset(),
        Offset(cut_at),
        "cut at the first bad batch"
    );
    let got = read_all(&log);
    assert_eq!(got.len() as u64, cut_at);
    for r in &got {
        assert_eq!(r.value, values[r.offset as usize]);
    }
    // The log goes on from the cut.
    let info = log
        .append(simple_batch("after", 1, 5), LeaderEpoch(1))
        .unwrap();
    assert_eq!(info.base_offset, Offset(cut_at));
}

#[test]
fn a_segment_cut_at_any_byte_recovers_to_the_last_whole_batch() {
    let dir = tempfile::tempdir().unwrap();
    let values = fill(dir.path());
    let segs = segment_logs(dir.path());
    let active = segs.last().unwrap().clone();
    let original = std::fs::read(&active).unwrap();
    let batches = batches_in(&active);
    let seed: u64 = rand::random();
    eprintln!("cut positions from seed {seed}");
    let mut x = seed | 1;
    for _ in 0..40 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let cut = (x % original.len() as u64) as usize;
        std::fs::write(&active, &original[..cut]).unwrap();
        let log = Log::open(dir.path(), cfg(), Fs::real()).unwrap();
        let whole = batches.iter().filter(|(p, _, s)| p + s <= cut).count();
        let expected_end = if whole == 0 {
            batches[0].1
        } else {
            let (_, base, _) = batches[whole - 1];
            base + 1
        };
        assert_eq!(
            log.log_end_offset(),
            Offset(expected_end),
            "seed {seed} cut {cut}"
        );
        let got = read_all(&log);
        assert_eq!(got.len() as u64, expected_end, "seed {seed} cut {cut}");
        assert!(got.iter().all(|r| r.value == values[r.offset as usize]));
        drop(log);
    }
}

#[test]
fn broken_or_missing_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let values = fill(dir.path());
    let segs = segment_logs(dir.path());
    // Garble one index, delete another, truncate a time index mid-entry.
    let idx0 = segs[0].with_extension("index");
    let len = std::fs::metadata(&idx0).unwrap().len() as usize;
    assert!(len >= 24, "the closed segment has index entries");
    flip(&idx0, len - 5);
    std::fs::remove_file(segs[1].with_extension("index")).unwrap();
    let t2 = segs[2].with_extension("timeindex");
    let tl = std::fs::metadata(&t2).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&t2)
        .unwrap()
        .set_len(tl.saturating_sub(3))
        .unwrap();

    let log = Log::open(dir.path(), cfg(), Fs::real()).unwrap();
    for o in 0..300u64 {
        let r = log.read(Offset(o), 1, None).unwrap();
        let rec = &records(&r)[0];
        assert_eq!(rec.offset, o);
        assert_eq!(rec.value, values[o as usize]);
    }
    assert_eq!(
        log.offset_for_timestamp(rafka_protocol::Timestamp(1_150))
            .unwrap(),
        Some(Offset(150))
    );
    assert!(
        segs[1].with_extension("index").exists(),
        "missing index recreated"
    );
    // A corrupted entry in the middle of a closed index (not caught by the open check) makes
    // lookups fall back to a scan instead of trusting it.
    drop(log);
    let idx3 = segs[3].with_extension("index");
    let entries = std::fs::metadata(&idx3).unwrap().len() as usize / 12;
    if entries >= 3 {
        flip(&idx3, (entries / 2) * 12 + 2);
        let log = Log::open(dir.path(), cfg(), Fs::real()).unwrap();
        for o in 0..300u64 {
            let r = log.read(Offset(o), 1, None).unwrap();
            assert_eq!(records(&r)[0].value, values[o as usize]);
        }
    }
}

//! Model-based crash-consistency test of the segmented log.
//!
//! Random operations (appends, flushes, reads, timestamp lookups, truncations, deletions,
//! clean reopens and simulated power losses) run against the real log on real files and
//! against a plain in-memory model. A power loss drops or tears whatever was not fsynced
//! (see `rafka_broker::fs`); after it the reopened log must hold a prefix of the model that
//! contains every batch that was flushed before the crash, and nothing else.
//!
//! Each case prints nothing when it passes; a failing case names its seed. Replay one with
//! `RAFKA_TEST_SEED=<seed> cargo test -p rafka-broker --test log_crash`; run more with
//! `RAFKA_TEST_CASES=<n>`.

mod common;

use common::*;
use rafka_broker::fs::{FileFate, Fs, TornTail};
use rafka_broker::log::{FlushPolicy, Log, LogConfig};
use rafka_protocol::{LeaderEpoch, Offset, Timestamp};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Records = Vec<(Option<i64>, Vec<u8>)>;

/// The log as it should be.
#[derive(Debug, Clone, Default)]
struct Model {
    start: u64,
    end: u64,
    /// (base offset, records) in offset order; may begin before `start` (start mid-batch).
    batches: Vec<(u64, Records)>,
}

impl Model {
    fn append(&mut self, records: Records) {
        let n = records.len() as u64;
        self.batches.push((self.end, records));
        self.end += n;
    }

    /// Records from the batch holding `from` onwards, as the log returns them.
    fn records_from(&self, from: u64) -> Vec<Rec> {
        let mut out = Vec::new();
        for (base, recs) in &self.batches {
            if base + recs.len() as u64 <= from {
                continue;
            }
            for (i, (ts, v)) in recs.iter().enumerate() {
                out.push(Rec {
                    offset: base + i as u64,
                    timestamp: *ts,
                    value: v.clone(),
                });
            }
        }
        out
    }

    fn truncate(&mut self, to: u64) {
        self.batches.retain(|(b, _)| *b < to);
        self.end = to;
    }

    fn delete_before(&mut self, to: u64) {
        if to <= self.start {
            return;
        }
        if to > self.end {
            self.batches.clear();
            self.start = to;
            self.end = to;
            return;
        }
        self.start = to;
        self.batches.retain(|(b, r)| b + r.len() as u64 > to);
    }

    /// Boundaries at which a truncation is allowed.
    fn boundaries(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .batches
            .iter()
            .map(|(b, _)| *b)
            .filter(|b| *b >= self.start)
            .collect();
        v.push(self.end);
        v
    }

    fn first_offset_at_or_after(&self, ts: i64) -> Option<u64> {
        self.records_from(self.start)
            .into_iter()
            .find(|r| r.offset >= self.start && r.timestamp.is_some_and(|t| t >= ts))
            .map(|r| r.offset)
    }
}

fn random_records(rng: &mut StdRng) -> Records {
    let n = rng.gen_range(1..=8);
    (0..n)
        .map(|_| {
            let ts = if rng.gen_bool(0.1) {
                None
            } else {
                Some(rng.gen_range(1_000..2_000))
            };
            let len = rng.gen_range(0..200);
            let v: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            (ts, v)
        })
        .collect()
}

fn random_config(rng: &mut StdRng) -> LogConfig {
    LogConfig {
        segment_bytes: rng.gen_range(1024..8192),
        index_interval_bytes: rng.gen_range(64..1024),
        retention_ms: None,
        flush: if rng.gen_bool(0.3) {
            FlushPolicy::EveryAppend
        } else {
            FlushPolicy::Interval {
                messages: Some(rng.gen_range(5..60)),
                interval_ms: None,
            }
        },
        ..LogConfig::default()
    }
}

fn check(log: &Log, model: &Model, seed: u64, when: &str) {
    assert_eq!(
        log.log_start_offset().0,
        model.start,
        "seed {seed}: log start {when}"
    );
    assert_eq!(
        log.log_end_offset().0,
        model.end,
        "seed {seed}: log end {when}"
    );
    let got = read_all(log);
    let want = model.records_from(model.start);
    assert_eq!(got.len(), want.len(), "seed {seed}: record count {when}");
    assert!(got == want, "seed {seed}: contents differ {when}");
    let flushed = log.flushed_offset().0;
    assert!(
        model.start <= flushed.max(model.start) && flushed <= model.end,
        "seed {seed}: flushed {flushed} outside [{}, {}] {when}",
        model.start,
        model.end
    );
}

fn power_loss(fs: &Fs, rng: &mut StdRng) {
    fs.simulate_power_loss(|_, synced, written| {
        let surviving = match rng.gen_range(0..3) {
            0 => synced,
            1 => written,
            _ => rng.gen_range(synced..=written.max(synced)),
        };
        let tail = match rng.gen_range(0..3) {
            0 => TornTail::Kept,
            1 => TornTail::Zeroed,
            _ => TornTail::Garbage,
        };
        FileFate {
            surviving_bytes: surviving,
            tail,
            vanishes: rng.gen_bool(0.5),
        }
    })
    .expect("simulate power loss");
}

fn run_case(seed: u64) {
    let mut rng = StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let fs = Fs::crash_simulating();
    let cfg = random_config(&mut rng);
    let mut log = Log::open(dir.path(), cfg.clone(), fs.clone()).unwrap();
    let mut model = Model::default();
    let ops = rng.gen_range(20..80);
    let trace = std::env::var("RAFKA_TEST_SEED").is_ok();
    for step in 0..ops {
        let when = format!("after step {step}");
        let op = rng.gen_range(0..100);
        if trace {
            eprintln!(
                "step {step}: op {op}, model [{}, {}), flushed {}, segments {:?}",
                model.start,
                model.end,
                log.flushed_offset(),
                log.segment_bases()
            );
        }
        match op {
            0..=49 => {
                let k = rng.gen_range(1..=3);
                let mut bytes = bytes::BytesMut::new();
                let mut all = Vec::new();
                for _ in 0..k {
                    let recs = random_records(&mut rng);
                    bytes.extend_from_slice(&batch(&recs));
                    all.push(recs);
                }
                let info = log.append(bytes.freeze(), LeaderEpoch(1)).unwrap();
                assert_eq!(info.base_offset.0, model.end, "seed {seed}: base offset");
                for recs in all {
                    model.append(recs);
                }
            }
            50..=57 => {
                log.flush().unwrap();
                assert_eq!(log.flushed_offset().0, model.end, "seed {seed}: flush");
            }
            58..=67 => {
                let o = rng.gen_range(model.start..=model.end);
                let max = rng.gen_range(1..4096);
                let r = log.read(Offset(o), max, None).unwrap();
                let got = records(&r);
                let want = model.records_from(o);
                assert_eq!(
                    got[..],
                    want[..got.len()],
                    "seed {seed}: read at {o} {when}"
                );
                assert!(
                    o == model.end || !got.is_empty(),
                    "seed {seed}: empty read at {o}"
                );
            }
            68..=72 => {
                let ts = rng.gen_range(900..2_100);
                assert_eq!(
                    log.offset_for_timestamp(Timestamp(ts))
                        .unwrap()
                        .map(|o| o.0),
                    model.first_offset_at_or_after(ts),
                    "seed {seed}: offset for timestamp {ts} {when}"
                );
            }
            73..=77 => {
                let b = model.boundaries();
                let to = b[rng.gen_range(0..b.len())];
                log.truncate_to(Offset(to)).unwrap();
                model.truncate(to);
            }
            78..=81 => {
                let to = rng.gen_range(model.start..=model.end + 5);
                log.delete_before(Offset(to)).unwrap();
                model.delete_before(to);
            }
            82..=85 => {
                log.close().unwrap();
                log = Log::open(dir.path(), cfg.clone(), fs.clone()).unwrap();
                check(&log, &model, seed, &format!("reopen {when}"));
            }
            _ => {
                let flushed = log.flushed_offset().0;
                drop(log);
                power_loss(&fs, &mut rng);
                log = Log::open(dir.path(), cfg.clone(), fs.clone()).unwrap();
                let end = log.log_end_offset().0;
                assert!(
                    end >= flushed.max(model.start) && end <= model.end,
                    "seed {seed}: recovered end {end}, flushed {flushed}, model end {} {when}",
                    model.end
                );
                if end == model.start {
                    // Everything from the log start on was unflushed and is gone; the batch
                    // holding the start (if any) went too. The log continues at its start.
                    model.batches.clear();
                    model.end = end;
                } else {
                    assert!(
                        model.boundaries().contains(&end),
                        "seed {seed}: recovered end {end} is not a batch boundary {when}"
                    );
                    model.truncate(end);
                }
                check(&log, &model, seed, &format!("crash {when}"));
            }
        }
    }
    check(&log, &model, seed, "at the end");
}

#[test]
fn recovers_a_flushed_prefix_after_any_crash() {
    let seeds: Vec<u64> = match std::env::var("RAFKA_TEST_SEED") {
        Ok(s) => vec![s.parse().expect("RAFKA_TEST_SEED is a number")],
        Err(_) => {
            let cases: u64 = std::env::var("RAFKA_TEST_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(200);
            let base: u64 = rand::random::<u32>() as u64;
            (base..base + cases).collect()
        }
    };
    for seed in seeds {
        let result = std::panic::catch_unwind(|| run_case(seed));
        if let Err(e) = result {
            eprintln!("log_crash failed with seed {seed}: replay with RAFKA_TEST_SEED={seed}");
            std::panic::resume_unwind(e);
        }
    }
}

//! The segmented log's behaviour on real files: offsets, reads, rolls, truncation, deletion,
//! retention and bad input.

mod common;

use bytes::BytesMut;
use common::*;
use rafka_broker::fs::Fs;
use rafka_broker::log::{FlushPolicy, Log, LogConfig};
use rafka_broker::Error;
use rafka_protocol::{LeaderEpoch, Offset, Timestamp};

fn small() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        retention_ms: None,
        ..LogConfig::default()
    }
}

fn open(dir: &std::path::Path, cfg: LogConfig) -> Log {
    Log::open(dir, cfg, Fs::real()).expect("open")
}

#[test]
fn offsets_are_dense_and_reads_return_whole_batches() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small());
    let a = log
        .append(simple_batch("a", 3, 1000), LeaderEpoch(1))
        .unwrap();
    let b = log
        .append(simple_batch("b", 2, 1001), LeaderEpoch(1))
        .unwrap();
    assert_eq!((a.base_offset, a.last_offset), (off(0), off(2)));
    assert_eq!((b.base_offset, b.last_offset), (off(3), off(4)));
    assert_eq!(log.log_end_offset(), off(5));
    assert_eq!(
        log.flushed_offset(),
        off(5),
        "EveryAppend flushes before returning"
    );

    // Reading from the middle of a batch returns the whole batch holding that offset.
    let r = log.read(off(1), 1, None).unwrap();
    let recs = records(&r);
    assert_eq!(recs.first().unwrap().offset, 0);
    assert_eq!(
        recs.len(),
        3,
        "max_bytes=1 still yields one whole batch, and only one"
    );
    assert_eq!(r.next_offset, off(3));

    // A limit (the high watermark) excludes batches that reach it.
    let r = log.read(off(0), 1 << 20, Some(off(4))).unwrap();
    assert_eq!(records(&r).len(), 3);
    assert_eq!(r.next_offset, off(3));

    // The leader epoch is stamped into the header.
    let first = rafka_protocol::BatchIter::new(r.batches)
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(first.header().partition_leader_epoch, LeaderEpoch(1));
}

#[test]
fn reading_at_the_end_is_empty_and_below_the_start_is_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small());
    let empty = log.read(off(0), 100, None).unwrap();
    assert!(empty.batches.is_empty());
    for i in 0..20 {
        log.append(simple_batch(&format!("x{i}"), 5, 1000), LeaderEpoch(0))
            .unwrap();
    }
    let at_end = log.read(off(100), 100, None).unwrap();
    assert!(at_end.batches.is_empty());
    assert_eq!(at_end.next_offset, off(100));
    match log.read(off(101), 100, None) {
        Err(Error::OffsetOutOfRange { log_end, .. }) => assert_eq!(log_end, off(100)),
        other => panic!("expected out of range, got {other:?}"),
    }
    log.delete_before(off(42)).unwrap();
    assert_eq!(log.log_start_offset(), off(42));
    match log.read(off(10), 100, None) {
        Err(Error::OffsetOutOfRange { log_start, .. }) => assert_eq!(log_start, off(42)),
        other => panic!("expected out of range, got {other:?}"),
    }
}

#[test]
fn rolls_segments_and_reads_across_them_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let mut want = Vec::new();
    {
        let log = open(dir.path(), small());
        for i in 0..200u64 {
            let v = vec![(i % 251) as u8; 40 + (i as usize % 90)];
            log.append(
                batch(&[(Some(1_000 + i as i64), v.clone())]),
                LeaderEpoch(0),
            )
            .unwrap();
            want.push(v);
        }
        assert!(log.segment_count() > 3, "4 KiB segments must roll");
        log.close().unwrap();
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.iter().any(|n| n == "00000000000000000000.log"));
    assert!(names.iter().any(|n| n.ends_with(".timeindex")));
    let log = open(dir.path(), small());
    let got = read_all(&log);
    assert_eq!(got.len(), 200);
    for (i, r) in got.iter().enumerate() {
        assert_eq!(r.offset, i as u64);
        assert_eq!(r.value, want[i]);
    }
    // Every offset can be read directly (index lookups in closed and active segments).
    for o in 0..200u64 {
        let r = log.read(off(o), 1, None).unwrap();
        assert_eq!(records(&r)[0].offset, o);
    }
}

#[test]
fn finds_offsets_by_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small());
    // Timestamps not monotonic across batches, as producers' clocks are not.
    let ts = [100, 300, 200, 500, 400, 900, 700];
    for (i, t) in ts.iter().enumerate() {
        for _ in 0..10 {
            log.append(simple_batch(&format!("{i}"), 4, *t), LeaderEpoch(0))
                .unwrap();
        }
    }
    let first_at_or_after = |t: i64| ts.iter().position(|x| *x >= t).map(|i| off(i as u64 * 40));
    for probe in [0, 100, 101, 250, 300, 450, 500, 800, 900] {
        assert_eq!(
            log.offset_for_timestamp(Timestamp(probe)).unwrap(),
            first_at_or_after(probe),
            "probe {probe}"
        );
    }
    assert_eq!(log.offset_for_timestamp(Timestamp(901)).unwrap(), None);
}

#[test]
fn truncate_to_drops_the_suffix_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small());
    for i in 0..100 {
        log.append(simple_batch(&format!("t{i}"), 2, 1000 + i), LeaderEpoch(0))
            .unwrap();
    }
    let segments_before = log.segment_count();
    match log.truncate_to(off(51)) {
        Err(Error::InvalidTruncation { .. }) => {}
        other => panic!("truncating inside a batch must fail, got {other:?}"),
    }
    log.truncate_to(off(50)).unwrap();
    assert_eq!(log.log_end_offset(), off(50));
    assert!(log.segment_count() < segments_before);
    let info = log
        .append(simple_batch("new", 2, 5000), LeaderEpoch(2))
        .unwrap();
    assert_eq!(info.base_offset, off(50));
    drop(log);
    let log = open(dir.path(), small());
    let got = read_all(&log);
    assert_eq!(got.len(), 52);
    assert_eq!(got[50].value, b"new-0".to_vec());
    assert_eq!(got[49].value, b"t24-1".to_vec());
    assert_eq!(
        log.offset_for_timestamp(Timestamp(5000)).unwrap(),
        Some(off(50))
    );
    // Truncating to the start of a segment leaves it empty and active.
    let bases = log.segment_bases();
    let b = *bases.last().unwrap();
    log.truncate_to(b).unwrap();
    assert_eq!(log.log_end_offset(), b);
}

#[test]
fn delete_before_moves_the_start_durably_and_past_the_end_resets() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = open(dir.path(), small());
        for i in 0..100 {
            log.append(simple_batch(&format!("d{i}"), 2, 1000), LeaderEpoch(0))
                .unwrap();
        }
        let segs = log.segment_count();
        log.delete_before(off(101)).unwrap();
        assert!(log.segment_count() < segs);
        assert_eq!(log.log_start_offset(), off(101));
        let r = log.read(off(101), 1, None).unwrap();
        assert_eq!(records(&r)[0].offset, 100, "whole batch holding the start");
    }
    let log = open(dir.path(), small());
    assert_eq!(
        log.log_start_offset(),
        off(101),
        "the start survives a reopen"
    );
    // A follower installing a snapshot beyond its log: empty log continuing at the snapshot.
    log.delete_before(off(1000)).unwrap();
    assert_eq!(log.log_start_offset(), off(1000));
    assert_eq!(log.log_end_offset(), off(1000));
    assert_eq!(
        log.append(simple_batch("s", 1, 1), LeaderEpoch(0))
            .unwrap()
            .base_offset,
        off(1000)
    );
    drop(log);
    let log = open(dir.path(), small());
    assert_eq!(
        (log.log_start_offset(), log.log_end_offset()),
        (off(1000), off(1001))
    );
}

#[test]
fn retention_by_size_and_time_deletes_whole_closed_segments() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: Some(10_000),
        ..small()
    };
    let log = open(dir.path(), cfg);
    for i in 0..400 {
        log.append(simple_batch(&format!("r{i}"), 1, 1000 + i), LeaderEpoch(0))
            .unwrap();
    }
    let before = log.size_bytes();
    assert!(before > 10_000);
    let out = log.enforce_retention(Timestamp(2000)).unwrap();
    assert!(out.segments_deleted > 0);
    let after = log.size_bytes();
    assert!(after >= 10_000, "never deletes below the limit: {after}");
    assert!(
        after - 10_000 < 4096 + 200,
        "deletes down to within a segment of it: {after}"
    );
    let first = log.segment_bases()[0];
    assert_eq!(
        log.log_start_offset(),
        first,
        "start moves to the first kept segment"
    );
    assert_eq!(read_all(&log).first().unwrap().offset, first.0);

    // Time: segments whose newest record is older than retention_ms go; the active stays.
    let cfg = LogConfig {
        retention_ms: Some(100),
        retention_bytes: None,
        ..small()
    };
    log.set_config(cfg).unwrap();
    // Record i has timestamp 1000 + i; at now = 1450 only segments wholly below i = 350 are
    // older than 100 ms.
    let start_before = log.log_start_offset();
    let out = log.enforce_retention(Timestamp(1450)).unwrap();
    assert!(out.segments_deleted > 0);
    let start = log.log_start_offset();
    assert!(start > start_before && start <= off(350), "start {start}");
    let out = log.enforce_retention(Timestamp(1_000_000)).unwrap();
    assert!(out.segments_deleted > 0);
    assert_eq!(log.segment_count(), 1, "only the active segment is left");
    assert_eq!(log.log_end_offset(), off(400));
}

#[test]
fn retention_by_time_keeps_segments_with_recent_records() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: Some(1000),
        ..small()
    };
    let log = open(dir.path(), cfg);
    // Old records, then new ones; segments are 4 KiB so each phase spans several.
    for i in 0..100 {
        log.append(simple_batch(&format!("o{i}"), 1, 10_000), LeaderEpoch(0))
            .unwrap();
    }
    for i in 0..100 {
        log.append(simple_batch(&format!("n{i}"), 1, 50_000), LeaderEpoch(0))
            .unwrap();
    }
    log.enforce_retention(Timestamp(50_500)).unwrap();
    let start = log.log_start_offset();
    assert!(
        start > off(0) && start <= off(100),
        "old segments only: start {start}"
    );
    let got = read_all(&log);
    assert!(got.iter().all(|r| r.offset >= start.0 - 1));
    assert_eq!(got.last().unwrap().offset, 199);
}

#[test]
fn records_without_timestamps_are_not_treated_as_ancient() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_ms: Some(60_000),
        ..small()
    };
    let log = open(dir.path(), cfg);
    for i in 0..100 {
        log.append(
            batch(&[(None, format!("u{i}").into_bytes())]),
            LeaderEpoch(0),
        )
        .unwrap();
    }
    let out = log.enforce_retention(Timestamp::now()).unwrap();
    assert_eq!(
        out.segments_deleted, 0,
        "unknown timestamps fall back to file age"
    );
}

#[test]
fn bad_batches_are_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = open(dir.path(), small());
    log.append(simple_batch("ok", 1, 1), LeaderEpoch(0))
        .unwrap();
    let good = simple_batch("x", 3, 1);

    let mut bad_crc = BytesMut::from(&good[..]);
    let n = bad_crc.len();
    bad_crc[n - 1] ^= 0xff;
    assert!(matches!(
        log.append(bad_crc.freeze(), LeaderEpoch(0)),
        Err(Error::InvalidBatch(
            rafka_protocol::BatchError::CrcMismatch { .. }
        ))
    ));
    // A valid batch followed by a truncated one: the whole append is refused.
    let mut two = BytesMut::from(&good[..]);
    two.extend_from_slice(&good[..good.len() - 5]);
    assert!(log.append(two.freeze(), LeaderEpoch(0)).is_err());
    assert!(log
        .append(bytes::Bytes::from_static(b"garbage"), LeaderEpoch(0))
        .is_err());
    assert!(log.append(bytes::Bytes::new(), LeaderEpoch(0)).is_err());
    let big = LogConfig {
        append_bytes_max: 64,
        ..small()
    };
    log.set_config(big).unwrap();
    assert!(matches!(
        log.append(good.clone(), LeaderEpoch(0)),
        Err(Error::AppendTooLarge { .. })
    ));
    assert_eq!(log.log_end_offset(), off(1));
    assert_eq!(read_all(&log).len(), 1);
}

#[test]
fn replicated_appends_must_continue_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let leader = open(&dir.path().join("leader"), small());
    let follower = open(&dir.path().join("follower"), small());
    for i in 0..30 {
        leader
            .append(simple_batch(&format!("l{i}"), 3, 7), LeaderEpoch(4))
            .unwrap();
    }
    let mut at = Offset(0);
    loop {
        let r = leader.read(at, 500, None).unwrap();
        if r.batches.is_empty() {
            break;
        }
        follower.append_replicated(r.batches.clone()).unwrap();
        at = r.next_offset;
    }
    assert_eq!(read_all(&follower), read_all(&leader));
    // A gap or an overlap is refused.
    let r = leader.read(off(30), 500, None).unwrap();
    assert!(matches!(
        follower.append_replicated(r.batches),
        Err(Error::NonContiguousAppend { expected, .. }) if expected == off(90)
    ));
}

#[test]
fn interval_flush_policy_defers_fsync_until_a_trigger() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        flush: FlushPolicy::Interval {
            messages: Some(10),
            interval_ms: None,
        },
        ..small()
    };
    let log = open(dir.path(), cfg);
    log.append(simple_batch("f", 4, 1), LeaderEpoch(0)).unwrap();
    assert_eq!(log.flushed_offset(), off(0));
    log.append(simple_batch("f", 4, 1), LeaderEpoch(0)).unwrap();
    assert_eq!(log.flushed_offset(), off(0));
    log.append(simple_batch("f", 4, 1), LeaderEpoch(0)).unwrap();
    assert_eq!(
        log.flushed_offset(),
        off(12),
        "the 10-message trigger fired"
    );
    log.append(simple_batch("f", 1, 1), LeaderEpoch(0)).unwrap();
    assert_eq!(log.flush().unwrap(), off(13));
    assert_eq!(log.flushed_offset(), off(13));
}

#[test]
fn bad_configuration_and_broken_directories_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let bad = LogConfig {
        segment_bytes: 1,
        ..LogConfig::default()
    };
    assert!(matches!(
        Log::open(dir.path(), bad, Fs::real()),
        Err(Error::Config(_))
    ));
    std::fs::write(dir.path().join("not-a-number.log"), b"x").unwrap();
    let err = Log::open(dir.path(), small(), Fs::real()).unwrap_err();
    assert!(matches!(err, Error::BrokenDirectory { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_maintenance_task_enforces_retention_and_due_flushes() {
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        retention_bytes: Some(8_000),
        flush: FlushPolicy::Interval {
            messages: None,
            interval_ms: Some(20),
        },
        ..small()
    };
    let log = Arc::new(open(dir.path(), cfg));
    for i in 0..300 {
        log.append(simple_batch(&format!("m{i}"), 1, 1000), LeaderEpoch(0))
            .unwrap();
    }
    let start_before = log.log_start_offset();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let logs = Arc::clone(&log);
    let task = rafka_broker::log::maintenance::spawn_maintenance(
        Arc::new(move || vec![Arc::clone(&logs)]),
        std::time::Duration::from_millis(10),
        stop_rx,
    );
    // Poll for the outcome with a deadline: the task runs on its own schedule.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while log.log_start_offset() == start_before || log.flushed_offset() != log.log_end_offset() {
        assert!(
            std::time::Instant::now() < deadline,
            "maintenance did not act within 20 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert!(log.size_bytes() >= 8_000);
    stop_tx.send(true).unwrap();
    task.await.unwrap();
}

#[test]
fn segment_ms_rolls_a_segment_whose_first_batch_is_old() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = LogConfig {
        segment_ms: 60_000,
        ..small()
    };
    {
        let log = open(dir.path(), cfg.clone());
        // A first batch stamped long ago: after a reopen, the active segment's age is taken
        // from its first batch, so the next append must roll without any waiting.
        log.append(simple_batch("old", 1, 1_000), LeaderEpoch(0))
            .unwrap();
        log.append(simple_batch("old2", 1, 1_000), LeaderEpoch(0))
            .unwrap();
        assert_eq!(log.segment_count(), 1);
    }
    let log = open(dir.path(), cfg.clone());
    log.append(simple_batch("new", 1, Timestamp::now().0), LeaderEpoch(0))
        .unwrap();
    assert_eq!(log.segment_bases(), vec![off(0), off(2)], "rolled by age");
    // A fresh segment is young: appends stay in it.
    log.append(simple_batch("new2", 1, Timestamp::now().0), LeaderEpoch(0))
        .unwrap();
    assert_eq!(log.segment_count(), 2);
}

/// Pages of `path` in `from..to` (bytes) that are in the page cache, per `mincore`.
fn resident_pages(path: &std::path::Path, from: u64, to: u64) -> usize {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).unwrap();
    let len = file.metadata().unwrap().len() as usize;
    let page = 4096usize;
    // SAFETY: a read-only shared mapping of a file we hold open, unmapped below; mincore only
    // writes its one byte per page into `vec`, which has room for every page of the mapping.
    unsafe {
        let addr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(addr, libc::MAP_FAILED, "mmap");
        let mut vec = vec![0u8; len.div_ceil(page)];
        assert_eq!(libc::mincore(addr, len, vec.as_mut_ptr()), 0, "mincore");
        libc::munmap(addr, len);
        vec[(from as usize / page)..(to as usize).div_ceil(page).min(vec.len())]
            .iter()
            .filter(|b| **b & 1 == 1)
            .count()
    }
}

/// True when `dir` is on tmpfs, whose pages are the data itself and cannot be dropped.
fn on_tmpfs(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: statfs fills the zeroed struct we pass; `c` is a valid NUL-terminated path.
    unsafe {
        let mut s: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut s) == 0 && s.f_type == libc::TMPFS_MAGIC
    }
}

#[test]
fn flushed_data_behind_the_cached_tail_leaves_the_page_cache() {
    const MIB: u64 = 1 << 20;
    for keep in [Some(MIB), None] {
        let dir = tempfile::tempdir().unwrap();
        if on_tmpfs(dir.path()) {
            eprintln!("SKIP: the temporary directory is on tmpfs");
            return;
        }
        let cfg = LogConfig {
            flush: FlushPolicy::Manual,
            cache_tail_bytes: keep,
            ..LogConfig::default()
        };
        let log = open(dir.path(), cfg);
        let value = vec![7u8; 60_000];
        for _ in 0..70 {
            log.append(batch(&[(Some(1000), value.clone())]), LeaderEpoch(0))
                .unwrap();
        }
        log.flush().unwrap();
        let size = log.size_bytes();
        assert!(size > 4 * MIB);
        let seg = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "log"))
            .unwrap();
        let head = resident_pages(&seg, 0, 2 * MIB);
        let tail = resident_pages(&seg, size - MIB / 2, size);
        assert!(
            tail > 100,
            "{keep:?}: the tail just written is cached ({tail} pages)"
        );
        match keep {
            Some(_) => assert!(head <= 1, "{head} pages of the synced head still cached"),
            None => assert!(
                head > 500,
                "without the setting the kernel keeps it ({head})"
            ),
        }
        // Dropped pages read back from the disk unchanged.
        let r = log.read(off(0), 1, None).unwrap();
        assert_eq!(records(&r)[0].value, value);
    }
}

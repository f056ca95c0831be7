//! Reading a partition's segment files straight from a broker's data directory, to check that
//! replicas hold the same batches at the same offsets.
//!
//! A partition directory (`DATA_DIR/topics/NAME-P/`) holds `<20-digit base offset>.log`
//! segments of Kafka RecordBatch v2 batches back to back. [`read_partition`] walks every
//! segment and summarises each batch (offsets, CRC, leader epoch, size, control bit) without
//! the broker's code, so the check is independent of the storage engine it checks. Read a
//! stopped broker's files, or a running one's for the committed part only: the tail beyond the
//! high watermark may be half written or about to be truncated.
//!
//! [`compare_replicas`] then checks that every replica has, below the committed offset, exactly
//! the same batches (control batches included), densely from the log start, and names the first
//! difference precisely when they do not.

use std::fmt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use rafka_protocol::batch::LOG_OVERHEAD_BYTES;
use rafka_protocol::{BatchHeader, RecordBatch};

/// One batch of a segment file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchSum {
    pub base_offset: u64,
    pub last_offset: u64,
    /// The stored CRC-32C (checked against the bytes when read).
    pub crc: u32,
    /// The partition leader epoch (the Raft term of the leader that wrote it).
    pub leader_epoch: i32,
    /// Whole batch size in bytes.
    pub bytes: u32,
    /// A control batch (Raft blank or membership entry, transaction marker).
    pub control: bool,
    pub record_count: i32,
    /// Segment file name and byte position, for messages.
    pub segment: String,
    pub position: u64,
}

impl BatchSum {
    /// The fields replicas must agree on (not where the batch sits in which file).
    fn identity(&self) -> (u64, u64, u32, i32, u32, bool, i32) {
        (
            self.base_offset,
            self.last_offset,
            self.crc,
            self.leader_epoch,
            self.bytes,
            self.control,
            self.record_count,
        )
    }

    /// Offsets `base..=last`.
    pub fn offsets(&self) -> std::ops::RangeInclusive<u64> {
        self.base_offset..=self.last_offset
    }
}

impl fmt::Display for BatchSum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} batch [{}..={}] crc {:#010x} epoch {} {} bytes {} records ({} @ {})",
            if self.control { "control" } else { "data" },
            self.base_offset,
            self.last_offset,
            self.crc,
            self.leader_epoch,
            self.bytes,
            self.record_count,
            self.segment,
            self.position
        )
    }
}

/// Where reading a segment stopped before its end, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentStop {
    pub segment: String,
    pub position: u64,
    pub file_len: u64,
    pub reason: String,
}

/// Everything read from one partition directory.
#[derive(Debug, Clone, Default)]
pub struct PartitionLog {
    pub dir: PathBuf,
    /// Segment base offsets (from the file names), ascending.
    pub segments: Vec<u64>,
    /// Every valid batch, in file order.
    pub batches: Vec<BatchSum>,
    /// Segments whose bytes end in something that is not a whole valid batch (a torn tail
    /// after a crash is normal in the last segment).
    pub stops: Vec<SegmentStop>,
}

impl PartitionLog {
    /// The first offset held: the first batch's base offset, else the first segment's base.
    pub fn log_start(&self) -> u64 {
        self.batches
            .first()
            .map(|b| b.base_offset)
            .or_else(|| self.segments.first().copied())
            .unwrap_or(0)
    }

    /// The offset after the last valid batch.
    pub fn log_end(&self) -> u64 {
        self.batches
            .last()
            .map(|b| b.last_offset + 1)
            .unwrap_or_else(|| self.log_start())
    }

    /// The batches that start below `offset`.
    pub fn below(&self, offset: u64) -> &[BatchSum] {
        let n = self.batches.partition_point(|b| b.base_offset < offset);
        &self.batches[..n]
    }

    /// Offsets of data records (not control batches) below `offset`, ascending.
    pub fn data_offsets(&self, below: u64) -> Vec<u64> {
        self.below(below)
            .iter()
            .filter(|b| !b.control)
            .flat_map(|b| b.offsets())
            .filter(|o| *o < below)
            .collect()
    }

    /// Offsets covered by control batches below `offset`, ascending.
    pub fn control_offsets(&self, below: u64) -> Vec<u64> {
        self.below(below)
            .iter()
            .filter(|b| b.control)
            .flat_map(|b| b.offsets())
            .filter(|o| *o < below)
            .collect()
    }

    /// The first place where offsets do not continue densely (`(expected, found batch)`),
    /// below `offset`.
    pub fn first_gap(&self, below: u64) -> Option<(u64, &BatchSum)> {
        let batches = self.below(below);
        batches.windows(2).find_map(|w| {
            (w[1].base_offset != w[0].last_offset + 1).then_some((w[0].last_offset + 1, &w[1]))
        })
    }
}

/// Reads every `.log` segment of the partition directory `dir`.
pub fn read_partition(dir: &Path) -> std::io::Result<PartitionLog> {
    let mut segments: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(stem) = name.strip_suffix(".log") else {
            continue;
        };
        if stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()) {
            segments.push((stem.parse().expect("20 digits fit u64"), path));
        }
    }
    segments.sort();
    let mut log = PartitionLog {
        dir: dir.to_path_buf(),
        segments: segments.iter().map(|(b, _)| *b).collect(),
        ..PartitionLog::default()
    };
    for (_, path) in &segments {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let bytes = Bytes::from(std::fs::read(path)?);
        let file_len = bytes.len() as u64;
        let mut pos = 0usize;
        while pos < bytes.len() {
            let rest = &bytes[pos..];
            let stop = |reason: String| SegmentStop {
                segment: name.clone(),
                position: pos as u64,
                file_len,
                reason,
            };
            if rest.len() < LOG_OVERHEAD_BYTES {
                log.stops
                    .push(stop(format!("{} trailing bytes, not a batch", rest.len())));
                break;
            }
            let total = match BatchHeader::peek_total_bytes(rest) {
                Ok(t) => t,
                Err(e) => {
                    log.stops.push(stop(format!("bad batch length: {e}")));
                    break;
                }
            };
            if total > rest.len() {
                log.stops.push(stop(format!(
                    "partial batch: {total} bytes announced, {} present",
                    rest.len()
                )));
                break;
            }
            let batch = match RecordBatch::parse(bytes.slice(pos..pos + total)) {
                Ok(b) => b,
                Err(e) => {
                    log.stops.push(stop(format!("invalid batch: {e}")));
                    break;
                }
            };
            let h = batch.header();
            log.batches.push(BatchSum {
                base_offset: h.base_offset.0,
                last_offset: h.last_offset().0,
                crc: h.crc,
                leader_epoch: h.partition_leader_epoch.0,
                bytes: total as u32,
                control: h.attributes.is_control(),
                record_count: h.record_count,
                segment: name.clone(),
                position: pos as u64,
            });
            pos += total;
        }
    }
    Ok(log)
}

/// Reads the data records (not control batches) of the partition directory `dir`: offset and
/// value, ascending, stopping at the first invalid batch of each segment.
pub fn read_values(dir: &Path) -> std::io::Result<Vec<(u64, Option<Bytes>)>> {
    let log = read_partition(dir)?;
    let mut out = Vec::new();
    let mut current: Option<(String, Bytes)> = None;
    for b in log.batches.iter().filter(|b| !b.control) {
        if current.as_ref().is_none_or(|(n, _)| *n != b.segment) {
            let bytes = Bytes::from(std::fs::read(dir.join(&b.segment))?);
            current = Some((b.segment.clone(), bytes));
        }
        let (_, bytes) = current.as_ref().expect("segment loaded");
        let start = b.position as usize;
        let end = start + b.bytes as usize;
        if end > bytes.len() {
            continue;
        }
        let Ok(batch) = RecordBatch::parse(bytes.slice(start..end)) else {
            continue;
        };
        for r in batch.records().flatten() {
            out.push((r.offset.0, r.value));
        }
    }
    Ok(out)
}

/// What [`compare_replicas`] found when the replicas agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agreement {
    /// Batches compared (per replica).
    pub batches: usize,
    pub control_batches: usize,
    /// Offsets `start..committed` were compared.
    pub start: u64,
    pub committed: u64,
}

impl fmt::Display for Agreement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} batches ({} control) identical on every replica over offsets {}..{}",
            self.batches, self.control_batches, self.start, self.committed
        )
    }
}

/// Checks that every replica holds identical batches over `start..committed`: the same base
/// and last offsets, CRC, leader epoch, size, control bit and record count, densely (no offset
/// missing), each replica's log starting at `start` and reaching `committed`. The first
/// difference is reported with both replicas' batches.
///
/// `replicas` are `(node id, log)`. `committed` is the high watermark (a batch boundary); the
/// bytes beyond it may differ between replicas and are not compared.
pub fn compare_replicas(
    replicas: &[(i32, PartitionLog)],
    start: u64,
    committed: u64,
) -> Result<Agreement, String> {
    assert!(!replicas.is_empty(), "no replicas to compare");
    let describe_stops = |log: &PartitionLog| {
        if log.stops.is_empty() {
            String::new()
        } else {
            let s: Vec<String> = log
                .stops
                .iter()
                .map(|s| {
                    format!(
                        "{} stops at byte {} of {}: {}",
                        s.segment, s.position, s.file_len, s.reason
                    )
                })
                .collect();
            format!(" ({})", s.join("; "))
        }
    };
    // Each replica on its own: starts at `start`, dense, reaches `committed`.
    for (id, log) in replicas {
        let batches = log.below(committed);
        match batches.first() {
            None if committed > start => {
                return Err(format!(
                    "node {id}: no batch below the committed offset {committed} in {}{}",
                    log.dir.display(),
                    describe_stops(log)
                ))
            }
            Some(first) if first.base_offset != start => {
                return Err(format!(
                    "node {id}: log starts at offset {} ({first}), expected {start}",
                    first.base_offset
                ))
            }
            _ => {}
        }
        if let Some((expected, found)) = log.first_gap(committed) {
            return Err(format!(
                "node {id}: offsets jump from {expected} to {} ({found}): {} offsets missing",
                found.base_offset,
                found.base_offset.saturating_sub(expected)
            ));
        }
        if let Some(last) = batches.last() {
            if last.last_offset + 1 < committed {
                return Err(format!(
                    "node {id}: log ends at offset {} but {committed} is committed{}",
                    last.last_offset + 1,
                    describe_stops(log)
                ));
            }
            if last.last_offset + 1 > committed {
                return Err(format!(
                    "node {id}: the committed offset {committed} falls inside {last}"
                ));
            }
        }
    }
    // Then batch by batch against the first replica.
    let (ref_id, reference) = &replicas[0];
    let ref_batches = reference.below(committed);
    for (id, log) in &replicas[1..] {
        let batches = log.below(committed);
        for (i, (a, b)) in ref_batches.iter().zip(batches).enumerate() {
            if a.identity() != b.identity() {
                return Err(format!(
                    "replicas differ at batch #{i} (offset {}): node {ref_id} has {a}, node {id} has {b}",
                    a.base_offset.min(b.base_offset)
                ));
            }
        }
        if ref_batches.len() != batches.len() {
            return Err(format!(
                "node {ref_id} has {} batches below {committed}, node {id} has {}",
                ref_batches.len(),
                batches.len()
            ));
        }
    }
    Ok(Agreement {
        batches: ref_batches.len(),
        control_batches: ref_batches.iter().filter(|b| b.control).count(),
        start,
        committed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafka_protocol::batch::{set_base_offset, set_partition_leader_epoch};
    use rafka_protocol::{BatchBuilder, BatchOptions, LeaderEpoch, Offset};

    fn batch(base: u64, values: &[&str], epoch: i32, control: bool) -> Vec<u8> {
        let mut b = BatchBuilder::new(BatchOptions {
            control,
            ..BatchOptions::default()
        });
        for v in values {
            b.append(None, None, Some(v.as_bytes()), &[]);
        }
        let mut bytes = b.build().to_vec();
        set_base_offset(&mut bytes, Offset(base));
        set_partition_leader_epoch(&mut bytes, LeaderEpoch(epoch));
        bytes
    }

    fn write_log(dir: &Path, segments: &[(u64, Vec<Vec<u8>>)]) {
        std::fs::create_dir_all(dir).unwrap();
        for (base, batches) in segments {
            std::fs::write(dir.join(format!("{base:020}.log")), batches.concat()).unwrap();
        }
    }

    #[test]
    fn reads_segments_and_compares_replicas() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        let b = root.path().join("b");
        let c = root.path().join("c");
        let common = vec![batch(0, &["x"], 1, true), batch(1, &["a", "b"], 1, false)];
        write_log(
            &a,
            &[
                (0, common.clone()),
                (
                    3,
                    vec![batch(3, &["c"], 2, false), batch(4, &["d"], 2, false)],
                ),
            ],
        );
        // b: same committed prefix, a different uncommitted tail and a torn last batch.
        let mut torn = batch(5, &["zzz"], 2, false);
        torn.truncate(20);
        write_log(
            &b,
            &[
                (0, common.clone()),
                (
                    3,
                    vec![batch(3, &["c"], 2, false), batch(4, &["e"], 3, false), torn],
                ),
            ],
        );
        // c: a different batch at offset 3.
        write_log(
            &c,
            &[(0, [common, vec![batch(3, &["C"], 2, false)]].concat())],
        );
        let la = read_partition(&a).unwrap();
        let lb = read_partition(&b).unwrap();
        let lc = read_partition(&c).unwrap();
        assert_eq!(la.segments, vec![0, 3]);
        assert_eq!(la.log_end(), 5);
        assert_eq!(lb.stops.len(), 1, "{:?}", lb.stops);
        assert_eq!(la.data_offsets(5), vec![1, 2, 3, 4]);
        assert_eq!(la.control_offsets(5), vec![0]);
        let ok = compare_replicas(&[(1, la.clone()), (2, lb.clone())], 0, 4).unwrap();
        assert_eq!((ok.batches, ok.control_batches), (3, 1));
        let err = compare_replicas(&[(1, la.clone()), (2, lb.clone())], 0, 5).unwrap_err();
        assert!(err.contains("offset 4") && err.contains("node 2"), "{err}");
        let err = compare_replicas(&[(1, la.clone()), (3, lc.clone())], 0, 4).unwrap_err();
        assert!(err.contains("offset 3"), "{err}");
        let err = compare_replicas(&[(3, lc), (1, la.clone())], 0, 5).unwrap_err();
        assert!(err.contains("node 3: log ends at offset 4"), "{err}");
        // The committed offset must be a batch boundary.
        let err = compare_replicas(&[(1, la.clone())], 0, 2).unwrap_err();
        assert!(err.contains("falls inside"), "{err}");
        let values = read_values(&a).unwrap();
        assert_eq!(values.len(), 4);
        assert_eq!(values[3], (4, Some(Bytes::from_static(b"d"))));
    }

    #[test]
    fn gaps_and_late_starts_are_reported() {
        let root = tempfile::tempdir().unwrap();
        let a = root.path().join("a");
        write_log(
            &a,
            &[(
                0,
                vec![batch(0, &["a"], 1, false), batch(2, &["b"], 1, false)],
            )],
        );
        let la = read_partition(&a).unwrap();
        let err = compare_replicas(&[(1, la.clone())], 0, 3).unwrap_err();
        assert!(err.contains("jump from 1 to 2"), "{err}");
        let err = compare_replicas(&[(1, la)], 1, 3).unwrap_err();
        assert!(err.contains("starts at offset 0"), "{err}");
    }
}

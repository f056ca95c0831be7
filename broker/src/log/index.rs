//! A segment's two sparse indexes and their on-disk format.
//!
//! - The offset index (`.index`) maps a record offset to the byte position of the batch that
//!   starts there; one entry per `index_interval_bytes` of log data.
//! - The time index (`.timeindex`) holds entries `(t, o)` meaning "every record before offset
//!   `o` in this segment has a timestamp below or equal to `t`", written at the same points
//!   whenever `t` has grown, plus a final entry when the segment is closed.
//!
//! Both are derived data: the log rebuilds them from the segment whenever they are missing or do
//! not check out. Each entry carries its own CRC-32 (crc32fast) so that a torn or flipped entry
//! is never trusted: a bad entry makes the lookup fall back to a scan and the index is rebuilt on
//! the next open.
//!
//! The active segment keeps its entries in memory (at most `segment_bytes /
//! index_interval_bytes` of them) and writes them out only when it is closed (rolled): its
//! indexes are rebuilt by the scan that validates it on every open anyway. Closed segments are
//! searched on disk with positional reads, so memory does not grow with the log.

use std::io;

use crate::fs::FsFile;

/// One offset index entry: the batch starting at `base + relative_offset` is at `position`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub relative_offset: u32,
    pub position: u32,
}

/// One time index entry: all records before `base + relative_offset` have timestamps `<=
/// max_timestamp_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub max_timestamp_ms: i64,
    pub relative_offset: u32,
}

/// An entry format: fixed size, encoded with a trailing CRC.
pub trait Entry: Copy + std::fmt::Debug {
    const BYTES: usize;
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes one entry, `None` if its CRC does not match.
    fn decode(b: &[u8]) -> Option<Self>;
    /// The key entries are sorted by.
    fn key(&self) -> i64;
}

fn crc_ok(payload: &[u8], stored: &[u8]) -> bool {
    crc32fast::hash(payload).to_be_bytes() == stored
}

impl Entry for OffsetEntry {
    const BYTES: usize = 12;

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        out.extend_from_slice(&self.position.to_be_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if !crc_ok(&b[..8], &b[8..12]) {
            return None;
        }
        Some(OffsetEntry {
            relative_offset: u32::from_be_bytes(b[0..4].try_into().ok()?),
            position: u32::from_be_bytes(b[4..8].try_into().ok()?),
        })
    }

    fn key(&self) -> i64 {
        i64::from(self.relative_offset)
    }
}

impl Entry for TimeEntry {
    const BYTES: usize = 16;

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.max_timestamp_ms.to_be_bytes());
        out.extend_from_slice(&self.relative_offset.to_be_bytes());
        let crc = crc32fast::hash(&out[start..]);
        out.extend_from_slice(&crc.to_be_bytes());
    }

    fn decode(b: &[u8]) -> Option<Self> {
        if !crc_ok(&b[..12], &b[12..16]) {
            return None;
        }
        Some(TimeEntry {
            max_timestamp_ms: i64::from_be_bytes(b[0..8].try_into().ok()?),
            relative_offset: u32::from_be_bytes(b[8..12].try_into().ok()?),
        })
    }

    fn key(&self) -> i64 {
        self.max_timestamp_ms
    }
}

/// The result of checking an index file on open.
#[derive(Debug)]
pub enum IndexCheck<E> {
    /// Entries look sound; the last one is returned.
    Sound { count: u64, last: Option<E> },
    /// The file must be rebuilt.
    Unsound(&'static str),
}

/// An index file plus, for the active segment, its entries in memory.
#[derive(Debug)]
pub struct IndexFile<E: Entry> {
    file: FsFile,
    /// Entries on disk.
    persisted: u64,
    /// Entries of the active segment not yet written (`None` once closed).
    pending: Option<Vec<E>>,
    /// All entries of the active segment, for lookups without disk reads.
    active: Option<Vec<E>>,
}

impl<E: Entry> IndexFile<E> {
    /// Wraps a freshly created or rebuilt, empty index file for an active segment.
    pub fn new_active(file: FsFile) -> IndexFile<E> {
        IndexFile {
            file,
            persisted: 0,
            pending: Some(Vec::new()),
            active: Some(Vec::new()),
        }
    }

    /// Wraps an existing, checked index file of a closed segment.
    pub fn closed(file: FsFile, count: u64) -> IndexFile<E> {
        IndexFile {
            file,
            persisted: count,
            pending: None,
            active: None,
        }
    }

    /// Empties the file and starts an active, in-memory index (for a rebuild).
    pub fn reset_active(&mut self) -> io::Result<()> {
        self.file.truncate(0)?;
        self.persisted = 0;
        self.pending = Some(Vec::new());
        self.active = Some(Vec::new());
        Ok(())
    }

    /// Checks an index file cheaply: whole entries only, and the first and last entries
    /// decode. Entries in between are checked when a lookup reads them.
    pub fn check(file: &FsFile) -> io::Result<IndexCheck<E>> {
        let len = file.len()?;
        if len % E::BYTES as u64 != 0 {
            return Ok(IndexCheck::Unsound("partial entry"));
        }
        let count = len / E::BYTES as u64;
        if count == 0 {
            return Ok(IndexCheck::Sound { count, last: None });
        }
        let first = read_entry::<E>(file, 0)?;
        let last = read_entry::<E>(file, count - 1)?;
        match (first, last) {
            (Some(f), Some(l)) if f.key() <= l.key() => Ok(IndexCheck::Sound {
                count,
                last: Some(l),
            }),
            _ => Ok(IndexCheck::Unsound("entry checksum")),
        }
    }

    /// Adds an entry to the active index.
    pub fn push(&mut self, entry: E) {
        if let (Some(p), Some(a)) = (self.pending.as_mut(), self.active.as_mut()) {
            p.push(entry);
            a.push(entry);
        }
    }

    /// The last entry of the active index, if any.
    pub fn last_active(&self) -> Option<E> {
        self.active.as_ref().and_then(|a| a.last().copied())
    }

    /// Writes pending entries to the file (no fsync: indexes are rebuilt on recovery).
    pub fn write_pending(&mut self) -> io::Result<()> {
        let Some(pending) = self.pending.as_mut() else {
            return Ok(());
        };
        if pending.is_empty() {
            return Ok(());
        }
        let mut buf = Vec::with_capacity(pending.len() * E::BYTES);
        for e in pending.iter() {
            e.encode(&mut buf);
        }
        self.file.append(&buf)?;
        self.persisted += pending.len() as u64;
        pending.clear();
        Ok(())
    }

    /// Writes everything, fsyncs, and drops the in-memory copy: the segment is closed.
    pub fn close(&mut self) -> io::Result<()> {
        self.write_pending()?;
        self.file.sync_data()?;
        self.pending = None;
        self.active = None;
        Ok(())
    }

    /// Reads every entry into memory (for a segment that becomes active again after a
    /// truncation), keeping those for which `keep` holds; the file is cut to match.
    pub fn reactivate(&mut self, keep: impl Fn(&E) -> bool) -> io::Result<bool> {
        let mut entries = Vec::new();
        let mut sound = true;
        for i in 0..self.persisted {
            match read_entry::<E>(&self.file, i)? {
                Some(e) if keep(&e) => entries.push(e),
                Some(_) => break,
                None => {
                    sound = false;
                    break;
                }
            }
        }
        self.file.truncate((entries.len() * E::BYTES) as u64)?;
        self.persisted = entries.len() as u64;
        self.pending = Some(Vec::new());
        self.active = Some(entries);
        Ok(sound)
    }

    /// The last entry whose key is `<= key` (or `< key` when `strict`), searching memory for the
    /// active segment and the file otherwise. `Err` only for I/O; a corrupt entry on disk
    /// yields `Ok(Lookup::Corrupt)`.
    pub fn floor(&self, key: i64, strict: Strictness) -> io::Result<Lookup<E>> {
        let below = |e: &E| match strict {
            Strictness::AtMost => e.key() <= key,
            Strictness::Below => e.key() < key,
        };
        if let Some(active) = &self.active {
            let idx = active.partition_point(below);
            return Ok(match idx {
                0 => Lookup::None,
                i => Lookup::Found(active[i - 1]),
            });
        }
        // Binary search on disk: find the first entry that is not `below`.
        let (mut lo, mut hi) = (0u64, self.persisted);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match read_entry::<E>(&self.file, mid)? {
                None => return Ok(Lookup::Corrupt),
                Some(e) if below(&e) => lo = mid + 1,
                Some(_) => hi = mid,
            }
        }
        if lo == 0 {
            return Ok(Lookup::None);
        }
        Ok(match read_entry::<E>(&self.file, lo - 1)? {
            Some(e) => Lookup::Found(e),
            None => Lookup::Corrupt,
        })
    }

    /// Fsyncs the index file.
    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn path(&self) -> &std::path::Path {
        self.file.path()
    }
}

/// Whether a floor lookup includes an entry equal to the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    AtMost,
    Below,
}

/// The outcome of an index lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup<E> {
    Found(E),
    /// No entry qualifies: start from the beginning of the segment.
    None,
    /// An entry failed its checksum: scan from the beginning and rebuild on next open.
    Corrupt,
}

fn read_entry<E: Entry>(file: &FsFile, i: u64) -> io::Result<Option<E>> {
    let mut buf = [0u8; 32];
    let b = &mut buf[..E::BYTES];
    file.read_exact_at(b, i * E::BYTES as u64)?;
    Ok(E::decode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_detect_flips() {
        let e = OffsetEntry {
            relative_offset: 7,
            position: 4096,
        };
        let mut b = Vec::new();
        e.encode(&mut b);
        assert_eq!(OffsetEntry::decode(&b), Some(e));
        b[5] ^= 1;
        assert_eq!(OffsetEntry::decode(&b), None);

        let t = TimeEntry {
            max_timestamp_ms: 1_700_000_000_000,
            relative_offset: 3,
        };
        let mut b = Vec::new();
        t.encode(&mut b);
        assert_eq!(TimeEntry::decode(&b), Some(t));
    }
}

//! One segment: a `.log` file of whole batches with its `.index` and `.timeindex`.
//!
//! A segment is named by its base offset (the first offset it may hold), zero-padded to 20
//! digits so names sort as offsets do. Only the last segment of a log (the active one) is
//! appended to; every other segment is closed: fully fsynced, indexes complete on disk.
//!
//! Positions inside a segment are `u64` in memory and `u32` in index entries (segments are at
//! most 2 GiB). All reads check each batch's CRC before returning it; a batch that fails is
//! reported as [`Error::Corrupt`] and never handed to a reader.

use std::io::IoSlice;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rafka_protocol::batch::HEADER_BYTES;
use rafka_protocol::{BatchError, BatchHeader, Offset, RecordBatch, Timestamp};

use super::index::{IndexCheck, IndexFile, Lookup, OffsetEntry, Strictness, TimeEntry};
use crate::error::{Error, Result};
use crate::fs::{Fs, FsFile};

/// Bytes read per step when scanning a segment.
const SCAN_CHUNK_BYTES: usize = 1 << 20;

pub fn log_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.log", base.0))
}
pub fn index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.index", base.0))
}
pub fn time_index_path(dir: &Path, base: Offset) -> PathBuf {
    dir.join(format!("{:020}.timeindex", base.0))
}

/// Why a scan stopped before the end of the range it was given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScanStop {
    /// Reached the end cleanly.
    End,
    /// The bytes at `position` are not a valid next batch.
    Invalid { position: u64, reason: String },
}

/// What a scan found.
#[derive(Debug, Clone)]
pub struct ScanResult {
    /// End of the last valid batch.
    pub valid_end: u64,
    /// Offset after the last valid batch.
    pub next_offset: Offset,
    pub stop: ScanStop,
}

/// Walks the batches of `file` in `start..end`, checking length, header, CRC and that offsets
/// continue densely from `expected`, calling `visit` for each valid batch. Stops at the first
/// invalid one.
pub fn scan(
    file: &FsFile,
    start: u64,
    end: u64,
    expected: Offset,
    mut visit: impl FnMut(u64, &BatchHeader),
) -> Result<ScanResult> {
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start = start; // file position of buf[0]
    let mut pos = start;
    let mut next = expected;
    let invalid = |position: u64, reason: String, next: Offset| ScanResult {
        valid_end: position,
        next_offset: next,
        stop: ScanStop::Invalid { position, reason },
    };
    while pos < end {
        let in_buf = (pos - buf_start) as usize;
        // Make sure the buffer holds at least a header from `pos`.
        if buf.len() < in_buf + HEADER_BYTES {
            let want = SCAN_CHUNK_BYTES.min((end - pos) as usize);
            if want < HEADER_BYTES {
                return Ok(invalid(pos, "partial batch header at the end".into(), next));
            }
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, pos)
                .map_err(Error::io(file.path()))?;
            buf_start = pos;
            continue;
        }
        let header = match BatchHeader::parse(&buf[in_buf..]) {
            Ok(h) => h,
            Err(e) => return Ok(invalid(pos, e.to_string(), next)),
        };
        let total = header.total_bytes();
        if pos + total as u64 > end {
            return Ok(invalid(pos, "partial batch at the end".into(), next));
        }
        if buf.len() < in_buf + total {
            // The batch runs past the buffer: refill starting at `pos`, large enough for it.
            let want = total.max(SCAN_CHUNK_BYTES.min((end - pos) as usize));
            buf.resize(want, 0);
            file.read_exact_at(&mut buf, pos)
                .map_err(Error::io(file.path()))?;
            buf_start = pos;
            continue;
        }
        let raw = &buf[in_buf..in_buf + total];
        let computed = rafka_protocol::batch::compute_crc(raw);
        if computed != header.crc {
            let e = BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            };
            return Ok(invalid(pos, e.to_string(), next));
        }
        if header.base_offset != next {
            return Ok(invalid(
                pos,
                format!(
                    "batch base offset {} where {} was expected",
                    header.base_offset, next
                ),
                next,
            ));
        }
        visit(pos, &header);
        next = header.next_offset();
        pos += total as u64;
    }
    Ok(ScanResult {
        valid_end: pos,
        next_offset: next,
        stop: ScanStop::End,
    })
}

/// Counts a detected corruption and logs it once.
pub fn report_corruption(path: &Path, position: u64, reason: &str) {
    metrics::counter!("rafka_log_corruptions_total").increment(1);
    tracing::error!(path = %path.display(), position, reason, "corrupt log data detected");
}

/// A segment of the log.
#[derive(Debug)]
pub struct Segment {
    pub base: Offset,
    /// Shared so that a flush can fdatasync it without holding the log's lock.
    pub log: Arc<FsFile>,
    offset_index: IndexFile<OffsetEntry>,
    time_index: IndexFile<TimeEntry>,
    /// Bytes of valid batches.
    pub size_bytes: u64,
    /// Offset after the last batch (== `base` when empty).
    pub next_offset: Offset,
    /// Largest record timestamp in the segment, if any record carried one.
    pub max_timestamp: Option<Timestamp>,
    /// Wall-clock time of the first batch, for `segment_ms` rolling (active segment only).
    pub first_batch_at: Option<Timestamp>,
    /// Data bytes since the last index entry.
    bytes_since_index: u64,
    /// Timestamp of the last time index entry.
    last_time_entry_ms: Option<i64>,
    index_interval_bytes: u64,
}

impl Segment {
    /// Creates a new empty active segment (the caller fsyncs the directory).
    pub fn create(fs: &Fs, dir: &Path, base: Offset, index_interval_bytes: u64) -> Result<Segment> {
        let log_p = log_path(dir, base);
        let log = fs.create_new(&log_p).map_err(Error::io(&log_p))?;
        Self::empty_active(fs, dir, base, log, index_interval_bytes)
    }

    /// An active segment over `log` with emptied indexes, before any batch is noted in it.
    fn empty_active(
        fs: &Fs,
        dir: &Path,
        base: Offset,
        log: FsFile,
        index_interval_bytes: u64,
    ) -> Result<Segment> {
        let idx = open_or_create(fs, &index_path(dir, base))?;
        let tidx = open_or_create(fs, &time_index_path(dir, base))?;
        idx.truncate(0).map_err(Error::io(idx.path()))?;
        tidx.truncate(0).map_err(Error::io(tidx.path()))?;
        Ok(Segment {
            base,
            log: Arc::new(log),
            offset_index: IndexFile::new_active(idx),
            time_index: IndexFile::new_active(tidx),
            size_bytes: 0,
            next_offset: base,
            max_timestamp: None,
            first_batch_at: None,
            bytes_since_index: 0,
            last_time_entry_ms: None,
            index_interval_bytes,
        })
    }

    /// Opens the last segment of a log after a restart or crash: validates every batch (length,
    /// CRC, dense offsets), cuts a torn or corrupt tail, and rebuilds both indexes. Returns the
    /// segment and, if a tail was cut, where and why.
    pub fn recover_active(
        fs: &Fs,
        dir: &Path,
        base: Offset,
        index_interval_bytes: u64,
    ) -> Result<(Segment, Option<(u64, String)>)> {
        let log_p = log_path(dir, base);
        let log = fs.open_existing(&log_p).map_err(Error::io(&log_p))?;
        let file_len = log.len().map_err(Error::io(&log_p))?;
        let mut seg = Self::empty_active(fs, dir, base, log, index_interval_bytes)?;
        let mut first_ts = None;
        let mut headers = Vec::new();
        let result = scan(&seg.log, 0, file_len, base, |pos, h| {
            if first_ts.is_none() {
                first_ts = Some(h.max_timestamp());
            }
            headers.push((pos, *h));
        })?;
        for (pos, h) in &headers {
            seg.note_batch(*pos, h);
        }
        let mut cut = None;
        if result.valid_end < file_len {
            let reason = match &result.stop {
                ScanStop::Invalid { reason, .. } => reason.clone(),
                ScanStop::End => "trailing bytes".into(),
            };
            seg.log
                .truncate(result.valid_end)
                .map_err(Error::io(&log_p))?;
            cut = Some((result.valid_end, reason));
        }
        // Whatever survived may only be in the page cache (a process crash keeps it there):
        // make it durable before the log reports it as flushed.
        seg.log.sync_data().map_err(Error::io(&log_p))?;
        seg.first_batch_at = match first_ts {
            Some(Some(ts)) => Some(ts),
            Some(None) => Some(Timestamp::now()),
            None => None,
        };
        Ok((seg, cut))
    }

    /// Opens a closed segment whose successor starts at `next_offset`. Checks its indexes
    /// (rebuilding them if unsound) and the batches after the last index entry, which must end
    /// exactly at the end of the file and at `next_offset`. A mismatch is reported as corruption
    /// (the segment stays readable up to the damage; readers get an error beyond it).
    pub fn open_closed(
        fs: &Fs,
        dir: &Path,
        base: Offset,
        next_offset: Offset,
        index_interval_bytes: u64,
    ) -> Result<Segment> {
        let log_p = log_path(dir, base);
        let log = fs.open_existing(&log_p).map_err(Error::io(&log_p))?;
        let file_len = log.len().map_err(Error::io(&log_p))?;
        let idx = open_or_create(fs, &index_path(dir, base))?;
        let tidx = open_or_create(fs, &time_index_path(dir, base))?;
        let idx_check = IndexFile::<OffsetEntry>::check(&idx).map_err(Error::io(idx.path()))?;
        let tidx_check = IndexFile::<TimeEntry>::check(&tidx).map_err(Error::io(tidx.path()))?;
        let usable = |e: &Option<OffsetEntry>| {
            e.is_none_or(|e| {
                u64::from(e.position) < file_len
                    && base.plus(u64::from(e.relative_offset)) < next_offset
            })
        };
        let mut seg = Segment {
            base,
            log: Arc::new(log),
            offset_index: IndexFile::closed(idx, count_of(&idx_check)),
            time_index: IndexFile::closed(tidx, count_of(&tidx_check)),
            size_bytes: file_len,
            next_offset,
            max_timestamp: None,
            first_batch_at: None,
            bytes_since_index: 0,
            last_time_entry_ms: None,
            index_interval_bytes,
        };
        match (idx_check, tidx_check) {
            (
                IndexCheck::Sound {
                    last: last_entry, ..
                },
                IndexCheck::Sound {
                    last: last_time, ..
                },
            ) if usable(&last_entry) => {
                // Verify the tail after the last index entry and pick up its max timestamp.
                let (start_pos, start_off) = last_entry.map_or((0, base), |e| {
                    (
                        u64::from(e.position),
                        base.plus(u64::from(e.relative_offset)),
                    )
                });
                let mut max_ts = last_time.map(|t| t.max_timestamp_ms);
                let r = scan(&seg.log, start_pos, file_len, start_off, |_, h| {
                    max_ts = max_ts.max(h.max_timestamp().map(Timestamp::as_millis));
                })?;
                if r.stop != ScanStop::End || r.next_offset != next_offset {
                    let reason = match r.stop {
                        ScanStop::Invalid { reason, .. } => reason,
                        ScanStop::End => format!(
                            "segment ends at offset {} but the next segment starts at {}",
                            r.next_offset, next_offset
                        ),
                    };
                    report_corruption(&log_p, r.valid_end, &reason);
                }
                seg.max_timestamp = max_ts.and_then(Timestamp::from_wire);
            }
            _ => {
                metrics::counter!("rafka_log_index_rebuilds_total").increment(1);
                tracing::warn!(segment = %log_p.display(), "rebuilding segment indexes");
                seg.rebuild_closed(next_offset)?;
            }
        }
        Ok(seg)
    }

    /// Rebuilds both indexes of a closed segment from its batches.
    fn rebuild_closed(&mut self, next_offset: Offset) -> Result<()> {
        self.offset_index
            .reset_active()
            .map_err(Error::io(self.offset_index.path()))?;
        self.time_index
            .reset_active()
            .map_err(Error::io(self.time_index.path()))?;
        let file_len = self.size_bytes;
        self.size_bytes = 0;
        self.next_offset = self.base;
        self.bytes_since_index = 0;
        self.last_time_entry_ms = None;
        self.max_timestamp = None;
        let mut headers = Vec::new();
        let r = scan(&self.log, 0, file_len, self.base, |pos, h| {
            headers.push((pos, *h))
        })?;
        for (pos, h) in &headers {
            self.note_batch(*pos, h);
        }
        if r.stop != ScanStop::End || r.next_offset != next_offset {
            let reason = match r.stop {
                ScanStop::Invalid { reason, .. } => reason,
                ScanStop::End => "segment ends before its successor starts".into(),
            };
            report_corruption(self.log.path(), r.valid_end, &reason);
        }
        // The segment keeps its full size and range: damage is reported to readers as it is
        // reached rather than silently dropping a middle piece of the log.
        self.size_bytes = file_len;
        self.next_offset = next_offset;
        self.close_indexes()
    }

    /// Records a batch written at `position` in the in-memory state and active indexes.
    fn note_batch(&mut self, position: u64, h: &BatchHeader) {
        if self.bytes_since_index >= self.index_interval_bytes && position > 0 {
            let rel = (h.base_offset.0 - self.base.0) as u32;
            self.offset_index.push(OffsetEntry {
                relative_offset: rel,
                position: position as u32,
            });
            let max_ms = self.max_timestamp.map(Timestamp::as_millis);
            if let Some(ms) = max_ms {
                if self.last_time_entry_ms.is_none_or(|last| ms > last) {
                    self.time_index.push(TimeEntry {
                        max_timestamp_ms: ms,
                        relative_offset: rel,
                    });
                    self.last_time_entry_ms = Some(ms);
                }
            }
            self.bytes_since_index = 0;
        }
        let total = h.total_bytes() as u64;
        self.bytes_since_index += total;
        self.max_timestamp = self.max_timestamp.max(h.max_timestamp());
        self.next_offset = h.next_offset();
        self.size_bytes = position + total;
    }

    /// Appends already-validated batches, whose headers (with their final offsets) are
    /// `headers`, from the scatter list `bufs`. On a failed write the file is cut back to its
    /// previous length; if even that fails the error says so and the caller poisons the log.
    pub fn append(
        &mut self,
        bufs: &mut [IoSlice<'_>],
        headers: &[BatchHeader],
    ) -> Result<(), AppendFailure> {
        let before = self.size_bytes;
        if let Err(e) = self.log.append_vectored(bufs) {
            let cut = self.log.truncate(before);
            let err = Error::Io {
                path: self.log.path().to_path_buf(),
                source: e,
            };
            return Err(if cut.is_ok() {
                AppendFailure::Clean(err)
            } else {
                AppendFailure::Poisoned(err)
            });
        }
        if self.first_batch_at.is_none() {
            self.first_batch_at = Some(Timestamp::now());
        }
        let mut pos = before;
        for h in headers {
            self.note_batch(pos, h);
            pos += h.total_bytes() as u64;
        }
        Ok(())
    }

    /// Closes the active segment: final time index entry, indexes written and fsynced, data
    /// fsynced. After this the segment is never written again.
    pub fn close(&mut self) -> Result<()> {
        self.log.sync_data().map_err(Error::io(self.log.path()))?;
        self.close_indexes()
    }

    fn close_indexes(&mut self) -> Result<()> {
        if let Some(ms) = self.max_timestamp.map(Timestamp::as_millis) {
            if self.last_time_entry_ms.is_none_or(|last| ms > last) {
                self.time_index.push(TimeEntry {
                    max_timestamp_ms: ms,
                    relative_offset: (self.next_offset.0 - self.base.0) as u32,
                });
                self.last_time_entry_ms = Some(ms);
            }
        }
        self.offset_index
            .close()
            .map_err(Error::io(self.offset_index.path()))?;
        self.time_index
            .close()
            .map_err(Error::io(self.time_index.path()))?;
        Ok(())
    }

    /// Finds the byte position of the batch holding `offset` (`base <= offset < next_offset`):
    /// an index lookup, then a walk over batch headers.
    pub fn position_of(&self, offset: Offset) -> Result<u64> {
        let rel = (offset.0 - self.base.0) as i64;
        let (mut pos, mut at) = match self
            .offset_index
            .floor(rel, Strictness::AtMost)
            .map_err(Error::io(self.offset_index.path()))?
        {
            Lookup::Found(e) => (
                u64::from(e.position),
                self.base.plus(u64::from(e.relative_offset)),
            ),
            Lookup::None => (0, self.base),
            Lookup::Corrupt => {
                report_corruption(self.offset_index.path(), 0, "index entry checksum");
                (0, self.base)
            }
        };
        let mut header = [0u8; HEADER_BYTES];
        loop {
            if pos + HEADER_BYTES as u64 > self.size_bytes {
                return Err(self.corrupt(pos, format!("no batch holds offset {offset}")));
            }
            self.log
                .read_exact_at(&mut header, pos)
                .map_err(Error::io(self.log.path()))?;
            let h = BatchHeader::parse(&header).map_err(|e| self.corrupt(pos, e.to_string()))?;
            if h.base_offset != at {
                return Err(self.corrupt(
                    pos,
                    format!(
                        "batch base offset {} where {at} was expected",
                        h.base_offset
                    ),
                ));
            }
            if h.next_offset() > offset {
                return Ok(pos);
            }
            at = h.next_offset();
            pos += h.total_bytes() as u64;
        }
    }

    /// Calls `visit` with the header of every batch from byte `position` to the end, reading
    /// only headers. The batches were validated when written or recovered.
    pub fn walk_headers(
        &self,
        mut position: u64,
        mut visit: impl FnMut(&BatchHeader),
    ) -> Result<()> {
        let mut header = [0u8; HEADER_BYTES];
        while position < self.size_bytes {
            self.log
                .read_exact_at(&mut header, position)
                .map_err(Error::io(self.log.path()))?;
            let h =
                BatchHeader::parse(&header).map_err(|e| self.corrupt(position, e.to_string()))?;
            visit(&h);
            position += h.total_bytes() as u64;
        }
        Ok(())
    }

    fn corrupt(&self, position: u64, reason: String) -> Error {
        report_corruption(self.log.path(), position, &reason);
        Error::Corrupt {
            path: self.log.path().to_path_buf(),
            position,
            reason,
        }
    }

    /// Reads whole batches starting with the one holding `from`, up to about `max_bytes` (at
    /// least one batch), stopping before any batch that reaches `limit` (exclusive). Every
    /// returned batch has passed its CRC check. Returns the bytes and the offset after them.
    pub fn read(&self, from: Offset, max_bytes: usize, limit: Offset) -> Result<(Bytes, Offset)> {
        let start = self.position_of(from)?;
        let available = (self.size_bytes - start) as usize;
        let mut header = [0u8; HEADER_BYTES];
        self.log
            .read_exact_at(&mut header, start)
            .map_err(Error::io(self.log.path()))?;
        let first = BatchHeader::parse(&header).map_err(|e| self.corrupt(start, e.to_string()))?;
        if first.next_offset() > limit {
            return Ok((Bytes::new(), first.base_offset));
        }
        let want = max_bytes.max(first.total_bytes()).min(available);
        let buf = self
            .log
            .read_exact_at_uninit(want, start)
            .map_err(Error::io(self.log.path()))?
            .freeze();
        let mut pos = 0usize;
        let mut next = first.base_offset;
        while pos < buf.len() {
            let h = match BatchHeader::parse(&buf[pos..]) {
                Ok(h) => h,
                Err(BatchError::Truncated { .. }) if pos > 0 => break,
                Err(e) => {
                    return self.stop_or_fail(pos, start, &buf, next, e.to_string());
                }
            };
            let total = h.total_bytes();
            if pos + total > buf.len() {
                if pos == 0 {
                    return Err(self.corrupt(start, "batch runs past the segment end".into()));
                }
                break;
            }
            if h.base_offset != next || h.next_offset() > limit {
                if h.base_offset != next {
                    let reason = format!(
                        "batch base offset {} where {next} was expected",
                        h.base_offset
                    );
                    return self.stop_or_fail(pos, start, &buf, next, reason);
                }
                break;
            }
            if let Err(e) = RecordBatch::parse(buf.slice(pos..pos + total)) {
                return self.stop_or_fail(pos, start, &buf, next, e.to_string());
            }
            next = h.next_offset();
            pos += total;
        }
        Ok((buf.slice(..pos), next))
    }

    /// A bad batch at `pos`: return what came before it, or fail if nothing did.
    fn stop_or_fail(
        &self,
        pos: usize,
        start: u64,
        buf: &Bytes,
        next: Offset,
        reason: String,
    ) -> Result<(Bytes, Offset)> {
        let err = self.corrupt(start + pos as u64, reason);
        if pos == 0 {
            Err(err)
        } else {
            Ok((buf.slice(..pos), next))
        }
    }

    /// The first offset at or after `from` whose record timestamp is `>= ts`, if this segment
    /// has one.
    pub fn offset_for_timestamp(&self, ts: Timestamp, from: Offset) -> Result<Option<Offset>> {
        if self.max_timestamp.is_none_or(|m| m < ts) {
            return Ok(None);
        }
        let start_at = match self
            .time_index
            .floor(ts.as_millis(), Strictness::Below)
            .map_err(Error::io(self.time_index.path()))?
        {
            Lookup::Found(e) => self.base.plus(u64::from(e.relative_offset)),
            Lookup::None | Lookup::Corrupt => self.base,
        }
        .max(from);
        let mut at = start_at;
        while at < self.next_offset {
            let (bytes, next) = self.read(at, SCAN_CHUNK_BYTES, self.next_offset)?;
            if bytes.is_empty() {
                break;
            }
            for batch in rafka_protocol::BatchIter::new(bytes) {
                let batch = batch.map_err(|e| self.corrupt(0, e.to_string()))?;
                if batch.header().max_timestamp().is_none_or(|m| m < ts) {
                    continue;
                }
                for record in batch.records() {
                    let record = record.map_err(|e| self.corrupt(0, e.to_string()))?;
                    if record.offset >= from && record.timestamp.is_some_and(|t| t >= ts) {
                        return Ok(Some(record.offset));
                    }
                }
            }
            at = next;
        }
        Ok(None)
    }

    /// Cuts the segment so that it ends just before `offset`, which must be `base` or the base
    /// offset of one of its batches. The segment becomes the active one.
    pub fn truncate_to(&mut self, offset: Offset) -> Result<()> {
        let position = if offset == self.base {
            0
        } else {
            let pos = self.position_of(offset)?;
            let mut header = [0u8; HEADER_BYTES];
            self.log
                .read_exact_at(&mut header, pos)
                .map_err(Error::io(self.log.path()))?;
            let h = BatchHeader::parse(&header).map_err(|e| self.corrupt(pos, e.to_string()))?;
            if h.base_offset != offset {
                return Err(Error::InvalidTruncation {
                    offset,
                    reason: "the offset is inside a batch; batches are truncated whole",
                });
            }
            pos
        };
        self.log
            .truncate(position)
            .map_err(Error::io(self.log.path()))?;
        self.log.sync_data().map_err(Error::io(self.log.path()))?;
        // Rebuild the in-memory state from index entries below the cut plus a scan of the rest.
        let rel_cut = offset.0 - self.base.0;
        self.offset_index
            .reactivate(|e| u64::from(e.position) < position)
            .map_err(Error::io(self.offset_index.path()))?;
        self.time_index
            .reactivate(|e| u64::from(e.relative_offset) < rel_cut)
            .map_err(Error::io(self.time_index.path()))?;
        let (scan_pos, scan_off) = self.offset_index.last_active().map_or((0, self.base), |e| {
            (
                u64::from(e.position),
                self.base.plus(u64::from(e.relative_offset)),
            )
        });
        self.last_time_entry_ms = self.time_index.last_active().map(|e| e.max_timestamp_ms);
        self.max_timestamp = self.last_time_entry_ms.and_then(Timestamp::from_wire);
        self.size_bytes = scan_pos;
        self.next_offset = scan_off;
        self.bytes_since_index = 0;
        let mut headers = Vec::new();
        let r = scan(&self.log, scan_pos, position, scan_off, |p, h| {
            headers.push((p, *h))
        })?;
        // Re-noting batches after the last index entry must not add entries already present.
        let saved_interval = self.index_interval_bytes;
        self.index_interval_bytes = u64::MAX;
        for (p, h) in &headers {
            self.note_batch(*p, h);
        }
        self.index_interval_bytes = saved_interval;
        if r.stop != ScanStop::End || self.next_offset != offset {
            return Err(self.corrupt(
                r.valid_end,
                "segment does not scan cleanly up to the truncation point".into(),
            ));
        }
        if self.size_bytes == 0 {
            self.first_batch_at = None;
        } else if self.first_batch_at.is_none() {
            self.first_batch_at = Some(Timestamp::now());
        }
        Ok(())
    }

    /// Deletes the segment's files (the caller fsyncs the directory).
    pub fn delete(self, fs: &Fs) -> Result<()> {
        for p in [
            self.log.path().to_path_buf(),
            self.offset_index.path().to_path_buf(),
            self.time_index.path().to_path_buf(),
        ] {
            match fs.remove(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::Io { path: p, source: e }),
            }
        }
        Ok(())
    }

    /// Age reference for time-based retention: newest record timestamp, or, when no record
    /// carried one, the file's modification time (never "zero", see `Timestamp`).
    pub fn retention_timestamp(&self) -> Result<Timestamp> {
        match self.max_timestamp {
            Some(t) => Ok(t),
            None => Ok(Timestamp(
                self.log.modified_ms().map_err(Error::io(self.log.path()))?,
            )),
        }
    }
}

/// Why an append did not happen.
pub enum AppendFailure {
    /// Nothing was written; the segment is as before.
    Clean(Error),
    /// The file may hold a partial write that could not be removed.
    Poisoned(Error),
}

fn count_of<E>(check: &IndexCheck<E>) -> u64 {
    match check {
        IndexCheck::Sound { count, .. } => *count,
        IndexCheck::Unsound(_) => 0,
    }
}

fn open_or_create(fs: &Fs, path: &Path) -> Result<FsFile> {
    match fs.open_existing(path) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs.create_new(path).map_err(Error::io(path))
        }
        Err(e) => Err(Error::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

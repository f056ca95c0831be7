//! The record batch: Rafka's unit of storage, replication and transfer.
//!
//! The layout is Kafka's RecordBatch v2 (magic 2), byte for byte, so that the producer-id,
//! sequence and transactional fields exist from day one and a Kafka-wire listener can later
//! serve stored batches unchanged:
//!
//! ```text
//! offset  size  field
//!      0     8  base offset            (assigned by the partition leader; not covered by CRC)
//!      8     4  batch length           (bytes after this field)
//!     12     4  partition leader epoch (Raft term of the writer; not covered by CRC)
//!     16     1  magic                  (2)
//!     17     4  CRC-32C                (of every byte from attributes to the end)
//!     21     2  attributes             (compression, timestamp type, transactional, control)
//!     23     4  last offset delta
//!     27     8  base timestamp
//!     35     8  max timestamp
//!     43     8  producer id
//!     51     2  producer epoch
//!     53     4  base sequence
//!     57     4  record count
//!     61     …  records
//! ```
//!
//! Each record is `length: varint` followed by `attributes: i8, timestamp delta: varlong,
//! offset delta: varint, key length: varint, key, value length: varint, value, header count:
//! varint, headers` (lengths of -1 mean null).
//!
//! [`RecordBatch`] wraps a [`Bytes`] holding exactly one batch; its records iterate as slices of
//! that same buffer, so reading a batch copies no payload. Nothing here panics on input: every
//! malformed buffer is a [`BatchError`].

use bytes::{BufMut, Bytes, BytesMut};

use crate::types::{LeaderEpoch, Offset, ProducerEpoch, ProducerId, Sequence, Timestamp};
use crate::varint::{get_varint, get_varlong, put_varint, put_varlong};
use crate::BatchError;

/// Size of the fixed batch header, up to and including the record count.
pub const HEADER_BYTES: usize = 61;
/// Bytes before the batch length field's coverage starts (base offset + batch length).
pub const LOG_OVERHEAD_BYTES: usize = 12;
/// The only batch format version Rafka reads and writes.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET_AT: usize = 0;
const BATCH_LENGTH_AT: usize = 8;
const LEADER_EPOCH_AT: usize = 12;
const MAGIC_AT: usize = 16;
const CRC_AT: usize = 17;
const ATTRIBUTES_AT: usize = 21;
const LAST_OFFSET_DELTA_AT: usize = 23;
const BASE_TIMESTAMP_AT: usize = 27;
const MAX_TIMESTAMP_AT: usize = 35;
const PRODUCER_ID_AT: usize = 43;
const PRODUCER_EPOCH_AT: usize = 51;
const BASE_SEQUENCE_AT: usize = 53;
const RECORD_COUNT_AT: usize = 57;

/// The largest batch this crate will describe. Real limits (frame size, segment size) are
/// smaller and set by configuration; this only stops a corrupt length from meaning "2 GiB".
pub const BATCH_BYTES_MAX: usize = 1 << 30;

/// Compression codec, from attribute bits 0-2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Compression {
    fn from_bits(bits: u8) -> Result<Compression, BatchError> {
        match bits {
            0 => Ok(Compression::None),
            1 => Ok(Compression::Gzip),
            2 => Ok(Compression::Snappy),
            3 => Ok(Compression::Lz4),
            4 => Ok(Compression::Zstd),
            other => Err(BatchError::UnsupportedCompression(other)),
        }
    }

    fn bits(self) -> u16 {
        match self {
            Compression::None => 0,
            Compression::Gzip => 1,
            Compression::Snappy => 2,
            Compression::Lz4 => 3,
            Compression::Zstd => 4,
        }
    }
}

/// Whether record timestamps were set by the producer or by the broker on append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimestampType {
    #[default]
    CreateTime,
    LogAppendTime,
}

/// The batch attributes field, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attributes(pub u16);

impl Attributes {
    const COMPRESSION_MASK: u16 = 0x07;
    const TIMESTAMP_TYPE: u16 = 0x08;
    const TRANSACTIONAL: u16 = 0x10;
    const CONTROL: u16 = 0x20;

    /// The compression codec; an unknown codec number is an error.
    pub fn compression(self) -> Result<Compression, BatchError> {
        Compression::from_bits((self.0 & Self::COMPRESSION_MASK) as u8)
    }

    pub fn timestamp_type(self) -> TimestampType {
        if self.0 & Self::TIMESTAMP_TYPE != 0 {
            TimestampType::LogAppendTime
        } else {
            TimestampType::CreateTime
        }
    }

    pub fn is_transactional(self) -> bool {
        self.0 & Self::TRANSACTIONAL != 0
    }

    pub fn is_control(self) -> bool {
        self.0 & Self::CONTROL != 0
    }
}

/// The fixed header of a batch, decoded. Parsing a header checks its shape (length and magic)
/// but not the CRC: use [`RecordBatch::parse`] for a fully validated batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: Offset,
    /// Bytes after the length field; the whole batch is `batch_length + 12` bytes.
    pub batch_length: u32,
    pub partition_leader_epoch: LeaderEpoch,
    pub crc: u32,
    pub attributes: Attributes,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub base_sequence: Sequence,
    pub record_count: i32,
}

fn be_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
fn be_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(a)
}

impl BatchHeader {
    /// Reads the total size of the batch starting at `buf[0]` from its first 12 bytes, so that a
    /// reader knows how much to fetch before parsing. Checks only that the length is plausible.
    pub fn peek_total_bytes(buf: &[u8]) -> Result<usize, BatchError> {
        if buf.len() < LOG_OVERHEAD_BYTES {
            return Err(BatchError::Truncated {
                needed: LOG_OVERHEAD_BYTES,
                available: buf.len(),
            });
        }
        let len = be_u32(buf, BATCH_LENGTH_AT) as i32;
        let total = i64::from(len) + LOG_OVERHEAD_BYTES as i64;
        if len < 0 || (total as usize) < HEADER_BYTES || total as usize > BATCH_BYTES_MAX {
            return Err(BatchError::InvalidLength(i64::from(len)));
        }
        Ok(total as usize)
    }

    /// Parses the fixed header at the start of `buf` (which may hold more than one batch).
    pub fn parse(buf: &[u8]) -> Result<BatchHeader, BatchError> {
        Self::peek_total_bytes(buf)?;
        if buf.len() < HEADER_BYTES {
            return Err(BatchError::Truncated {
                needed: HEADER_BYTES,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC_AT] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(magic));
        }
        let header = BatchHeader {
            base_offset: Offset(be_u64(buf, BASE_OFFSET_AT)),
            batch_length: be_u32(buf, BATCH_LENGTH_AT),
            partition_leader_epoch: LeaderEpoch(be_u32(buf, LEADER_EPOCH_AT) as i32),
            crc: be_u32(buf, CRC_AT),
            attributes: Attributes(be_u16(buf, ATTRIBUTES_AT)),
            last_offset_delta: be_u32(buf, LAST_OFFSET_DELTA_AT) as i32,
            base_timestamp: be_u64(buf, BASE_TIMESTAMP_AT) as i64,
            max_timestamp: be_u64(buf, MAX_TIMESTAMP_AT) as i64,
            producer_id: ProducerId(be_u64(buf, PRODUCER_ID_AT) as i64),
            producer_epoch: ProducerEpoch(be_u16(buf, PRODUCER_EPOCH_AT) as i16),
            base_sequence: Sequence(be_u32(buf, BASE_SEQUENCE_AT) as i32),
            record_count: be_u32(buf, RECORD_COUNT_AT) as i32,
        };
        if header.last_offset_delta < 0
            || header.record_count < 0
            || header.record_count > header.last_offset_delta.saturating_add(1)
        {
            return Err(BatchError::InvalidRecordCount {
                count: header.record_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        // A base offset near u64::MAX would make `next_offset` overflow; no real log gets there.
        if header.base_offset.0 > i64::MAX as u64 {
            return Err(BatchError::InvalidLength(header.base_offset.0 as i64));
        }
        Ok(header)
    }

    /// The size of the whole batch in bytes.
    pub fn total_bytes(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD_BYTES
    }

    /// The offset of the last record in the batch.
    pub fn last_offset(&self) -> Offset {
        self.base_offset.plus(self.last_offset_delta as u64)
    }

    /// The offset just after the batch.
    pub fn next_offset(&self) -> Offset {
        self.base_offset.plus(self.last_offset_delta as u64 + 1)
    }

    /// The largest record timestamp, or `None` when the producer did not set one.
    pub fn max_timestamp(&self) -> Option<Timestamp> {
        Timestamp::from_wire(self.max_timestamp)
    }
}

/// Computes the CRC-32C the batch header stores, over `batch[21..]`.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(batch.get(ATTRIBUTES_AT..).unwrap_or(&[]))
}

/// Overwrites the base offset of the batch at the start of `batch`. The CRC does not cover it,
/// which is why a leader can assign offsets without re-checksumming.
pub fn set_base_offset(batch: &mut [u8], offset: Offset) {
    batch[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&offset.0.to_be_bytes());
}

/// Overwrites the partition leader epoch (also outside the CRC).
pub fn set_partition_leader_epoch(batch: &mut [u8], epoch: LeaderEpoch) {
    batch[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4].copy_from_slice(&epoch.0.to_be_bytes());
}

/// One validated record batch, holding its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordBatch {
    header: BatchHeader,
    bytes: Bytes,
}

impl RecordBatch {
    /// Validates `bytes` as exactly one batch: length, magic, header fields and CRC. Records are
    /// checked lazily by [`RecordBatch::records`] or eagerly by [`RecordBatch::validate_records`].
    pub fn parse(bytes: Bytes) -> Result<RecordBatch, BatchError> {
        let header = BatchHeader::parse(&bytes)?;
        let total = header.total_bytes();
        if bytes.len() != total {
            return Err(if bytes.len() < total {
                BatchError::Truncated {
                    needed: total,
                    available: bytes.len(),
                }
            } else {
                BatchError::InvalidLength(header.batch_length as i64)
            });
        }
        let computed = compute_crc(&bytes);
        if computed != header.crc {
            return Err(BatchError::CrcMismatch {
                stored: header.crc,
                computed,
            });
        }
        Ok(RecordBatch { header, bytes })
    }

    pub fn header(&self) -> &BatchHeader {
        &self.header
    }

    /// The batch exactly as stored and sent.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }

    /// Iterates the records. A compressed batch yields one `UnsupportedCompression` error, as
    /// Rafka does not decompress yet.
    pub fn records(&self) -> RecordIter {
        let state = match self.header.attributes.compression() {
            Ok(Compression::None) => Ok(()),
            Ok(other) => Err(BatchError::UnsupportedCompression(other.bits() as u8)),
            Err(e) => Err(e),
        };
        RecordIter {
            bytes: self.bytes.clone(),
            position: HEADER_BYTES,
            remaining: self.header.record_count,
            base_offset: self.header.base_offset,
            base_timestamp: self.header.base_timestamp,
            pending_error: state.err(),
            done: false,
        }
    }

    /// Decodes every record once, checking that the record count and lengths are consistent and
    /// that nothing trails the last record.
    pub fn validate_records(&self) -> Result<(), BatchError> {
        let mut iter = self.records();
        for record in iter.by_ref() {
            record?;
        }
        if iter.position != self.bytes.len() {
            return Err(BatchError::MalformedRecord {
                position: iter.position,
                reason: "bytes after the last record",
            });
        }
        Ok(())
    }
}

/// A record header (key and optional value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: Bytes,
    pub value: Option<Bytes>,
}

/// One record, borrowing its key and value from the batch's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: Offset,
    /// Absolute timestamp (base timestamp + delta); `None` when the producer set none.
    pub timestamp: Option<Timestamp>,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
}

/// Iterator over the records of a [`RecordBatch`]. After the first error it yields nothing more.
pub struct RecordIter {
    bytes: Bytes,
    position: usize,
    remaining: i32,
    base_offset: Offset,
    base_timestamp: i64,
    pending_error: Option<BatchError>,
    done: bool,
}

/// A cursor inside one record's bytes that never reads past the record's declared end.
struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
    record_start: usize,
}

impl Cursor<'_> {
    fn err(&self, reason: &'static str) -> BatchError {
        BatchError::MalformedRecord {
            position: self.record_start + self.at,
            reason,
        }
    }

    fn varint(&mut self) -> Result<i32, BatchError> {
        let (v, n) = get_varint(&self.buf[self.at..]).map_err(|_| self.err("bad varint"))?;
        self.at += n;
        Ok(v)
    }

    fn varlong(&mut self) -> Result<i64, BatchError> {
        let (v, n) = get_varlong(&self.buf[self.at..]).map_err(|_| self.err("bad varlong"))?;
        self.at += n;
        Ok(v)
    }

    /// A length-prefixed field; `-1` is null. Returns the absolute range within the record.
    fn nullable(&mut self) -> Result<Option<std::ops::Range<usize>>, BatchError> {
        let len = self.varint()?;
        if len < -1 {
            return Err(self.err("negative length"));
        }
        if len == -1 {
            return Ok(None);
        }
        let len = len as usize;
        if self.buf.len() - self.at < len {
            return Err(self.err("field runs past the record"));
        }
        let range = self.at..self.at + len;
        self.at += len;
        Ok(Some(range))
    }
}

impl RecordIter {
    fn next_record(&mut self) -> Result<Record, BatchError> {
        let start = self.position;
        let rest = &self.bytes[start..];
        let (len, n) = get_varint(rest).map_err(|_| BatchError::MalformedRecord {
            position: start,
            reason: "bad record length",
        })?;
        if len < 0 || (len as usize) > rest.len() - n {
            return Err(BatchError::MalformedRecord {
                position: start,
                reason: "record length runs past the batch",
            });
        }
        let body_start = start + n;
        let body_end = body_start + len as usize;
        let body = &self.bytes[body_start..body_end];
        let mut c = Cursor {
            buf: body,
            at: 0,
            record_start: body_start,
        };
        if body.is_empty() {
            return Err(c.err("empty record"));
        }
        c.at = 1; // record attributes: unused in v2
        let timestamp_delta = c.varlong()?;
        let offset_delta = c.varint()?;
        if offset_delta < 0 {
            return Err(c.err("negative offset delta"));
        }
        let key = c.nullable()?;
        let value = c.nullable()?;
        let header_count = c.varint()?;
        if header_count < 0 {
            return Err(c.err("negative header count"));
        }
        // Each header takes at least two bytes, which bounds the allocation by the input size.
        if header_count as usize > (body.len() - c.at) / 2 {
            return Err(c.err("header count exceeds record size"));
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let Some(k) = c.nullable()? else {
                return Err(c.err("null header key"));
            };
            let v = c.nullable()?;
            headers.push(Header {
                key: self.bytes.slice(body_start + k.start..body_start + k.end),
                value: v.map(|r| self.bytes.slice(body_start + r.start..body_start + r.end)),
            });
        }
        if c.at != body.len() {
            return Err(c.err("record length does not match its fields"));
        }
        self.position = body_end;
        let slice =
            |r: std::ops::Range<usize>| self.bytes.slice(body_start + r.start..body_start + r.end);
        let timestamp = Timestamp::from_wire(self.base_timestamp.wrapping_add(timestamp_delta));
        Ok(Record {
            offset: self.base_offset.plus(offset_delta as u64),
            timestamp,
            key: key.map(slice),
            value: value.map(slice),
            headers,
        })
    }
}

impl Iterator for RecordIter {
    type Item = Result<Record, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.done = true;
            return Some(Err(e));
        }
        if self.remaining == 0 {
            self.done = true;
            return None;
        }
        if self.position >= self.bytes.len() {
            self.done = true;
            return Some(Err(BatchError::MalformedRecord {
                position: self.position,
                reason: "fewer records than the record count",
            }));
        }
        self.remaining -= 1;
        let r = self.next_record();
        if r.is_err() {
            self.done = true;
        }
        Some(r)
    }
}

/// Iterates the batches in a buffer holding zero or more whole batches back to back (a fetch
/// response, a produce request, a segment read). Each item is a fully validated batch sharing
/// the buffer. A trailing partial batch is an error, as is any corrupt batch; iteration stops at
/// the first error.
pub struct BatchIter {
    bytes: Bytes,
    position: usize,
    failed: bool,
}

impl BatchIter {
    pub fn new(bytes: Bytes) -> BatchIter {
        BatchIter {
            bytes,
            position: 0,
            failed: false,
        }
    }

    /// Byte position of the next batch in the buffer.
    pub fn position(&self) -> usize {
        self.position
    }
}

impl Iterator for BatchIter {
    type Item = Result<RecordBatch, BatchError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.position >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.position..];
        let result = BatchHeader::peek_total_bytes(rest).and_then(|total| {
            if total > rest.len() {
                Err(BatchError::Truncated {
                    needed: total,
                    available: rest.len(),
                })
            } else {
                RecordBatch::parse(self.bytes.slice(self.position..self.position + total))
            }
        });
        match &result {
            Ok(b) => self.position += b.header().total_bytes(),
            Err(_) => self.failed = true,
        }
        Some(result)
    }
}

/// How a batch is stamped: producer identity for idempotence, and the transactional bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchOptions {
    pub producer_id: ProducerId,
    pub producer_epoch: ProducerEpoch,
    pub base_sequence: Sequence,
    pub transactional: bool,
    pub control: bool,
    pub timestamp_type: TimestampType,
    pub partition_leader_epoch: LeaderEpoch,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            producer_id: ProducerId::NONE,
            producer_epoch: ProducerEpoch::NONE,
            base_sequence: Sequence::NONE,
            transactional: false,
            control: false,
            timestamp_type: TimestampType::CreateTime,
            partition_leader_epoch: LeaderEpoch(-1),
        }
    }
}

/// Builds one uncompressed batch record by record. The base offset is written as 0: the
/// partition leader assigns real offsets on append.
pub struct BatchBuilder {
    options: BatchOptions,
    buf: BytesMut,
    scratch: Vec<u8>,
    count: i32,
    base_timestamp: Option<i64>,
    max_timestamp: i64,
}

impl BatchBuilder {
    pub fn new(options: BatchOptions) -> BatchBuilder {
        Self::with_capacity(options, 1024)
    }

    /// A builder whose buffer starts with room for `capacity_bytes` of records.
    pub fn with_capacity(options: BatchOptions, capacity_bytes: usize) -> BatchBuilder {
        let mut buf = BytesMut::with_capacity(HEADER_BYTES + capacity_bytes);
        buf.put_bytes(0, HEADER_BYTES);
        BatchBuilder {
            options,
            buf,
            scratch: Vec::with_capacity(64),
            count: 0,
            base_timestamp: None,
            max_timestamp: Timestamp::WIRE_NONE,
        }
    }

    /// Number of records added so far.
    pub fn record_count(&self) -> usize {
        self.count as usize
    }

    /// The options the batch will be stamped with; they may change until [`BatchBuilder::build`]
    /// (a producer assigns the sequence number only when it first sends the batch).
    pub fn options_mut(&mut self) -> &mut BatchOptions {
        &mut self.options
    }

    /// Size the batch would have if built now.
    pub fn size_bytes(&self) -> usize {
        self.buf.len()
    }

    /// The size a record would add, to decide whether it still fits a size limit.
    pub fn estimated_record_bytes(
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) -> usize {
        let fields =
            1 + 10 + 5 + 5 + key.map_or(0, <[u8]>::len) + 5 + value.map_or(0, <[u8]>::len) + 5;
        let hdrs: usize = headers
            .iter()
            .map(|h| 10 + h.key.len() + h.value.as_ref().map_or(0, Bytes::len))
            .sum();
        5 + fields + hdrs
    }

    /// Appends a record. `timestamp` None writes "no timestamp".
    pub fn append(
        &mut self,
        timestamp: Option<Timestamp>,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[Header],
    ) {
        let ts = timestamp.map_or(Timestamp::WIRE_NONE, Timestamp::as_millis);
        let base_ts = *self.base_timestamp.get_or_insert(ts);
        self.max_timestamp = self.max_timestamp.max(ts);
        let body = &mut self.scratch;
        body.clear();
        body.push(0);
        put_varlong(body, ts.wrapping_sub(base_ts));
        put_varint(body, self.count);
        put_nullable(body, key);
        put_nullable(body, value);
        put_varint(body, headers.len() as i32);
        for h in headers {
            put_nullable(body, Some(&h.key));
            put_nullable(body, h.value.as_deref());
        }
        let mut len = Vec::with_capacity(5);
        put_varint(&mut len, body.len() as i32);
        self.buf.extend_from_slice(&len);
        self.buf.extend_from_slice(body);
        self.count += 1;
    }

    /// Finishes the batch: fills the header and the CRC.
    pub fn build(mut self) -> Bytes {
        let o = self.options;
        let mut attrs: u16 = 0;
        if o.timestamp_type == TimestampType::LogAppendTime {
            attrs |= Attributes::TIMESTAMP_TYPE;
        }
        if o.transactional {
            attrs |= Attributes::TRANSACTIONAL;
        }
        if o.control {
            attrs |= Attributes::CONTROL;
        }
        let batch_length = (self.buf.len() - LOG_OVERHEAD_BYTES) as u32;
        let b = &mut self.buf[..];
        b[BASE_OFFSET_AT..BASE_OFFSET_AT + 8].copy_from_slice(&0u64.to_be_bytes());
        b[BATCH_LENGTH_AT..BATCH_LENGTH_AT + 4].copy_from_slice(&batch_length.to_be_bytes());
        b[LEADER_EPOCH_AT..LEADER_EPOCH_AT + 4]
            .copy_from_slice(&o.partition_leader_epoch.0.to_be_bytes());
        b[MAGIC_AT] = MAGIC_V2 as u8;
        b[ATTRIBUTES_AT..ATTRIBUTES_AT + 2].copy_from_slice(&attrs.to_be_bytes());
        let last_delta = (self.count - 1).max(0);
        b[LAST_OFFSET_DELTA_AT..LAST_OFFSET_DELTA_AT + 4]
            .copy_from_slice(&last_delta.to_be_bytes());
        let base_ts = self.base_timestamp.unwrap_or(Timestamp::WIRE_NONE);
        b[BASE_TIMESTAMP_AT..BASE_TIMESTAMP_AT + 8].copy_from_slice(&base_ts.to_be_bytes());
        b[MAX_TIMESTAMP_AT..MAX_TIMESTAMP_AT + 8]
            .copy_from_slice(&self.max_timestamp.to_be_bytes());
        b[PRODUCER_ID_AT..PRODUCER_ID_AT + 8].copy_from_slice(&o.producer_id.0.to_be_bytes());
        b[PRODUCER_EPOCH_AT..PRODUCER_EPOCH_AT + 2]
            .copy_from_slice(&o.producer_epoch.0.to_be_bytes());
        b[BASE_SEQUENCE_AT..BASE_SEQUENCE_AT + 4].copy_from_slice(&o.base_sequence.0.to_be_bytes());
        b[RECORD_COUNT_AT..RECORD_COUNT_AT + 4].copy_from_slice(&self.count.to_be_bytes());
        let crc = compute_crc(b);
        b[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        self.buf.freeze()
    }
}

/// The key of a control record: version 0, then the control type (both big-endian i16).
pub fn control_key(control_type: i16) -> [u8; 4] {
    let mut key = [0u8; 4];
    key[2..4].copy_from_slice(&control_type.to_be_bytes());
    key
}

/// The control type of a control record's key, if it is one.
pub fn control_type(key: &[u8]) -> Option<i16> {
    match key {
        [0, 0, hi, lo] => Some(i16::from_be_bytes([*hi, *lo])),
        _ => None,
    }
}

/// A transaction marker: a control batch of one record (COMMIT or ABORT) ending producer
/// `producer_id`'s transaction on a partition, stamped with the epoch the transaction ended
/// with. The value is Kafka's (version 0, then the coordinator epoch, which Rafka leaves 0).
pub fn transaction_marker(
    producer_id: ProducerId,
    epoch: ProducerEpoch,
    commit: bool,
    timestamp: Timestamp,
) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions {
        producer_id,
        producer_epoch: epoch,
        transactional: true,
        control: true,
        ..BatchOptions::default()
    });
    let kind = if commit {
        crate::api::control_type::COMMIT
    } else {
        crate::api::control_type::ABORT
    };
    b.append(
        Some(timestamp),
        Some(&control_key(kind)),
        Some(&[0u8; 6]),
        &[],
    );
    b.build()
}

fn put_nullable(buf: &mut Vec<u8>, field: Option<&[u8]>) {
    match field {
        None => put_varint(buf, -1),
        Some(f) => {
            put_varint(buf, f.len() as i32);
            buf.extend_from_slice(f);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bytes {
        let mut b = BatchBuilder::new(BatchOptions::default());
        b.append(Some(Timestamp(1_000)), Some(b"k1"), Some(b"v1"), &[]);
        b.append(
            Some(Timestamp(1_005)),
            None,
            Some(b"v2"),
            &[Header {
                key: Bytes::from_static(b"h"),
                value: None,
            }],
        );
        b.build()
    }

    #[test]
    fn builds_and_reads_back() {
        let batch = RecordBatch::parse(sample()).unwrap();
        let h = batch.header();
        assert_eq!(h.record_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(h.max_timestamp(), Some(Timestamp(1_005)));
        let records: Vec<_> = batch.records().collect::<Result<_, _>>().unwrap();
        assert_eq!(records[0].key.as_deref(), Some(&b"k1"[..]));
        assert_eq!(records[1].key, None);
        assert_eq!(records[1].offset, Offset(1));
        assert_eq!(records[1].timestamp, Some(Timestamp(1_005)));
        assert_eq!(records[1].headers[0].value, None);
        batch.validate_records().unwrap();
    }

    #[test]
    fn base_offset_is_outside_the_crc() {
        let mut raw = BytesMut::from(&sample()[..]);
        set_base_offset(&mut raw, Offset(42));
        set_partition_leader_epoch(&mut raw, LeaderEpoch(7));
        let batch = RecordBatch::parse(raw.freeze()).unwrap();
        assert_eq!(batch.header().base_offset, Offset(42));
        assert_eq!(batch.header().partition_leader_epoch, LeaderEpoch(7));
        assert_eq!(batch.records().nth(1).unwrap().unwrap().offset, Offset(43));
    }

    #[test]
    fn flipped_byte_fails_the_crc() {
        let mut raw = BytesMut::from(&sample()[..]);
        let last = raw.len() - 1;
        raw[last] ^= 0x01;
        assert!(matches!(
            RecordBatch::parse(raw.freeze()),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn compressed_batches_are_a_typed_error() {
        let mut raw = BytesMut::from(&sample()[..]);
        raw[ATTRIBUTES_AT + 1] |= 0x02; // snappy
        let crc = compute_crc(&raw);
        raw[CRC_AT..CRC_AT + 4].copy_from_slice(&crc.to_be_bytes());
        let batch = RecordBatch::parse(raw.freeze()).unwrap();
        let first = batch.records().next().unwrap();
        assert_eq!(first, Err(BatchError::UnsupportedCompression(2)));
    }

    #[test]
    fn batch_iter_stops_at_a_partial_batch() {
        let one = sample();
        let mut two = BytesMut::from(&one[..]);
        two.extend_from_slice(&one[..one.len() - 3]);
        let mut it = BatchIter::new(two.freeze());
        assert!(it.next().unwrap().is_ok());
        assert!(matches!(it.next(), Some(Err(BatchError::Truncated { .. }))));
        assert!(it.next().is_none());
    }
}

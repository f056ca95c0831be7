//! The protocol crate's error type.

/// Why a buffer is not a valid record batch (or record).
///
/// Every variant means "the bytes are wrong": none is retriable by re-reading the same bytes.
/// Callers decide whether that is the sender's fault (reject the request) or corruption at rest
/// (report it and never serve the batch).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("batch truncated: need {needed} bytes, have {available}")]
    Truncated { needed: usize, available: usize },
    #[error("batch length field {0} is out of range")]
    InvalidLength(i64),
    #[error("unsupported batch magic {0} (only magic 2 is supported)")]
    UnsupportedMagic(i8),
    #[error("batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(u8),
    #[error("invalid record count {count} for last offset delta {last_offset_delta}")]
    InvalidRecordCount { count: i32, last_offset_delta: i32 },
    #[error("malformed record at byte {position} of the batch: {reason}")]
    MalformedRecord {
        position: usize,
        reason: &'static str,
    },
    #[error("malformed varint")]
    MalformedVarint,
}

/// The protocol crate's error: a bad batch or an undecodable message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("undecodable message: {0}")]
    Decode(prost::DecodeError),
}

//! Per-log settings, their defaults, and how they must relate.

use crate::error::{Error, Result};

/// When appended data is made durable with `fdatasync`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// Every append returns only after its data is durable (group-committed with concurrent
    /// appends). The default: "durable before acknowledged" without further thought.
    EveryAppend,
    /// Flush once `messages` records are unflushed (checked on append), or `interval_ms` after
    /// the oldest unflushed append (checked by whoever calls `Log::flush_if_due`: the
    /// maintenance task, every 100 ms in the broker), whichever comes first (`None` disables
    /// that trigger). Time-triggered flushes run beside appends instead of stalling them.
    Interval {
        messages: Option<u64>,
        interval_ms: Option<u64>,
    },
    /// Appends never sync; the log's owner calls [`crate::log::Log::flush`] itself. Raft
    /// does: it reports an append as durable only after its own flush, and group-commits the
    /// flushes of many appends.
    Manual,
}

/// Settings of one partition replica's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Roll to a new segment before the active one would exceed this size. A single append
    /// larger than this still goes whole into a fresh segment.
    pub segment_bytes: u64,
    /// Roll the active segment once its first batch is this old.
    pub segment_ms: u64,
    /// Bytes of log data between two sparse index entries.
    pub index_interval_bytes: u64,
    /// Delete closed segments whose newest record is older than this; `None` keeps forever.
    pub retention_ms: Option<u64>,
    /// Delete the oldest closed segments while the log is larger than this; `None`: no limit.
    pub retention_bytes: Option<u64>,
    pub flush: FlushPolicy,
    /// The largest batch an append may carry (Kafka's `max.message.bytes`). An append may
    /// carry several batches; the request frame limit bounds their total.
    pub append_bytes_max: u64,
    /// Keep only this many bytes at the end of the active segment in the page cache: after
    /// each flush, older (synced) data is dropped from it. `None` leaves caching to the kernel.
    pub cache_tail_bytes: Option<u64>,
}

/// Page cache kept at the end of a log by default: tail readers and Raft's recent entries
/// stay in memory; readers further behind read from the disk.
pub const CACHE_TAIL_BYTES_DEFAULT: u64 = 64 << 20;

/// Segments address batches with 32-bit positions in their indexes.
pub const SEGMENT_BYTES_MAX: u64 = i32::MAX as u64;
/// Smaller segments only multiply files and syscalls.
pub const SEGMENT_BYTES_MIN: u64 = 1024;

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * 24 * 3600 * 1000,
            index_interval_bytes: 4096,
            retention_ms: Some(7 * 24 * 3600 * 1000),
            retention_bytes: None,
            flush: FlushPolicy::EveryAppend,
            append_bytes_max: 8 << 20,
            cache_tail_bytes: Some(CACHE_TAIL_BYTES_DEFAULT),
        }
    }
}

impl LogConfig {
    /// Checks each setting and how they relate.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if !(SEGMENT_BYTES_MIN..=SEGMENT_BYTES_MAX).contains(&self.segment_bytes) {
            return fail(format!(
                "segment_bytes {} must be within {SEGMENT_BYTES_MIN}..={SEGMENT_BYTES_MAX}",
                self.segment_bytes
            ));
        }
        if self.segment_ms == 0 {
            return fail("segment_ms must be positive".into());
        }
        if self.index_interval_bytes == 0 || self.index_interval_bytes > self.segment_bytes {
            return fail(format!(
                "index_interval_bytes {} must be within 1..=segment_bytes",
                self.index_interval_bytes
            ));
        }
        if self.retention_bytes == Some(0) {
            return fail("retention_bytes must be positive (omit it for no limit)".into());
        }
        if self.append_bytes_max == 0 || self.append_bytes_max > SEGMENT_BYTES_MAX {
            return fail(format!(
                "append_bytes_max {} must be within 1..={SEGMENT_BYTES_MAX}",
                self.append_bytes_max
            ));
        }
        if let FlushPolicy::Interval {
            messages,
            interval_ms,
        } = self.flush
        {
            if messages == Some(0) || interval_ms == Some(0) {
                return fail("flush interval triggers must be positive".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_limits_are_checked() {
        LogConfig::default().validate().unwrap();
        let bad = LogConfig {
            segment_bytes: 10,
            ..LogConfig::default()
        };
        assert!(bad.validate().is_err());
        let bad = LogConfig {
            index_interval_bytes: 0,
            ..LogConfig::default()
        };
        assert!(bad.validate().is_err());
    }
}

//! Topic rules shared by the controller and the brokers: valid names, limits, config keys,
//! and how a topic's config overrides combine with the broker's log defaults.
//!
//! Topic metadata itself (which topics exist, their replicas and overrides) lives in the
//! controller's state (`crate::replica::controller_sm`); partition replicas in
//! `crate::cluster`.

use std::collections::BTreeMap;

use crate::error::{Error, Result};
use crate::log::{FlushPolicy, LogConfig};

/// Longest topic name (as Kafka: it must fit a file name with a partition suffix).
pub const TOPIC_NAME_BYTES_MAX: usize = 249;
/// Most partitions one topic may have. Each partition holds open files and an index in memory;
/// this keeps one request from exhausting file descriptors.
pub const PARTITIONS_PER_TOPIC_MAX: u32 = 1024;

/// The topic config keys a client may set, with what they control.
pub const TOPIC_CONFIG_KEYS: [&str; 8] = [
    "retention.ms",
    "retention.bytes",
    "segment.bytes",
    "segment.ms",
    "index.interval.bytes",
    "flush.messages",
    "flush.ms",
    "max.message.bytes",
];

/// Checks a topic name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
/// Whether `name` is one of the broker's internal topics (reserved prefix `__`), which
/// clients can read but not write, create or delete.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("__")
}

pub fn validate_topic_name(name: &str) -> Result<()> {
    let fail = |reason| {
        Err(Error::InvalidTopic {
            name: name.to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return fail("empty");
    }
    if name.len() > TOPIC_NAME_BYTES_MAX {
        return fail("longer than 249 bytes");
    }
    if name == "." || name == ".." {
        return fail("'.' and '..' are not allowed");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return fail("only ASCII letters, digits, '.', '_' and '-' are allowed");
    }
    Ok(())
}

/// Applies topic config overrides to the broker's defaults, validating each one.
pub fn effective_config(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<LogConfig> {
    let mut cfg = defaults.clone();
    let mut flush_messages = None;
    let mut flush_ms = None;
    for (key, value) in overrides {
        let bad = |reason: &str| Error::InvalidTopicConfig {
            key: key.clone(),
            value: value.clone(),
            reason: reason.to_string(),
        };
        let num = || {
            value
                .trim()
                .parse::<i64>()
                .map_err(|_| bad("not an integer"))
        };
        let positive = || match num()? {
            n if n > 0 => Ok(n as u64),
            _ => Err(bad("must be positive")),
        };
        // -1 means "no limit" for the retention settings, as in Kafka.
        let limit = || match num()? {
            -1 => Ok(None),
            n if n > 0 => Ok(Some(n as u64)),
            _ => Err(bad("must be positive, or -1 for no limit")),
        };
        match key.as_str() {
            "retention.ms" => cfg.retention_ms = limit()?,
            "retention.bytes" => cfg.retention_bytes = limit()?,
            "segment.bytes" => cfg.segment_bytes = positive()?,
            "segment.ms" => cfg.segment_ms = positive()?,
            "index.interval.bytes" => cfg.index_interval_bytes = positive()?,
            "flush.messages" => flush_messages = Some(positive()?),
            "flush.ms" => flush_ms = Some(positive()?),
            "max.message.bytes" => cfg.append_bytes_max = positive()?,
            _ => return Err(bad("unknown config key")),
        }
    }
    if flush_messages.is_some() || flush_ms.is_some() {
        cfg.flush = FlushPolicy::Interval {
            messages: flush_messages,
            interval_ms: flush_ms,
        };
    }
    cfg.validate().map_err(|e| Error::InvalidTopicConfig {
        key: "(combination)".into(),
        value: String::new(),
        reason: e.to_string(),
    })?;
    Ok(cfg)
}

/// The value a config key has under `cfg`, in topic-config syntax.
fn config_value(cfg: &LogConfig, key: &str) -> String {
    let opt = |v: Option<u64>| v.map_or("-1".to_string(), |v| v.to_string());
    let (messages, ms) = match cfg.flush {
        FlushPolicy::EveryAppend | FlushPolicy::Manual => (Some(1), None),
        FlushPolicy::Interval {
            messages,
            interval_ms,
        } => (messages, interval_ms),
    };
    match key {
        "retention.ms" => opt(cfg.retention_ms),
        "retention.bytes" => opt(cfg.retention_bytes),
        "segment.bytes" => cfg.segment_bytes.to_string(),
        "segment.ms" => cfg.segment_ms.to_string(),
        "index.interval.bytes" => cfg.index_interval_bytes.to_string(),
        "flush.messages" => opt(messages),
        "flush.ms" => opt(ms),
        "max.message.bytes" => cfg.append_bytes_max.to_string(),
        _ => String::new(),
    }
}

/// The effective config of a topic with `overrides`: `(key, value, is_default)` for every
/// known key.
pub fn describe_configs(
    defaults: &LogConfig,
    overrides: &BTreeMap<String, String>,
) -> Result<Vec<(String, String, bool)>> {
    let cfg = effective_config(defaults, overrides)?;
    Ok(TOPIC_CONFIG_KEYS
        .iter()
        .map(|k| {
            let is_default = !overrides.contains_key(*k);
            (k.to_string(), config_value(&cfg, k), is_default)
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_are_validated() {
        for ok in ["a", "orders.v1", "A_b-c", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a/b", "a b", "é", &"x".repeat(250)] {
            assert!(validate_topic_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn configs_override_defaults_and_bad_values_are_refused() {
        let d = LogConfig::default();
        let mut o = BTreeMap::new();
        o.insert("retention.ms".to_string(), "-1".to_string());
        o.insert("segment.bytes".to_string(), "1048576".to_string());
        o.insert("flush.ms".to_string(), "50".to_string());
        let c = effective_config(&d, &o).unwrap();
        assert_eq!(c.retention_ms, None);
        assert_eq!(c.segment_bytes, 1 << 20);
        assert!(matches!(
            c.flush,
            FlushPolicy::Interval {
                interval_ms: Some(50),
                ..
            }
        ));
        for (k, v) in [
            ("retention.ms", "0"),
            ("segment.bytes", "x"),
            ("nope", "1"),
            ("segment.bytes", "10"),
        ] {
            let mut o = BTreeMap::new();
            o.insert(k.to_string(), v.to_string());
            assert!(effective_config(&d, &o).is_err(), "{k}={v}");
        }
    }
}

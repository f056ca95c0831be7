//! Topics and partitions on this broker: their metadata, their logs, and their high watermarks.
//!
//! [`TopicManager`] owns the data directory layout:
//!
//! ```text
//! DATA_DIR/.lock                  held (flock) while a broker uses the directory
//! DATA_DIR/metadata.json          topics, partition counts, config overrides (atomic rename)
//! DATA_DIR/topics/NAME-P/         the log of partition P of topic NAME (see `crate::log`)
//! ```
//!
//! In this single-node form the metadata file is the source of truth; with replication the
//! controller's Raft group takes that role and this module only materialises what it says.
//!
//! A partition's high watermark is the end of its durable prefix: on a single node, acks=all
//! means "fsynced", and readers never see past that point. It is published on a `watch`
//! channel so that long-polling fetches wake as soon as it moves.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use rafka_protocol::Offset;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::fs::Fs;
use crate::log::{FlushPolicy, Log, LogConfig};

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

/// Persistent description of a topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicMeta {
    pub name: String,
    pub partitions: u32,
    pub replication_factor: u32,
    /// Overrides of the broker's log defaults, by topic config key.
    pub configs: BTreeMap<String, String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct MetadataFile {
    version: u32,
    topics: Vec<TopicMeta>,
}

/// One partition replica hosted here.
#[derive(Debug)]
pub struct Partition {
    pub topic: String,
    pub index: u32,
    pub log: Arc<Log>,
    high_watermark: watch::Sender<Offset>,
}

impl Partition {
    /// The exclusive upper bound of what readers may see.
    pub fn high_watermark(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// Re-reads the durable point from the log and wakes waiting fetches if it moved.
    pub fn refresh_high_watermark(&self) -> Offset {
        let hw = self.log.flushed_offset();
        self.high_watermark.send_if_modified(|cur| {
            if *cur != hw {
                *cur = hw;
                true
            } else {
                false
            }
        });
        hw
    }

    /// A receiver that changes whenever the high watermark moves.
    pub fn watch_high_watermark(&self) -> watch::Receiver<Offset> {
        self.high_watermark.subscribe()
    }
}

/// A topic and its partitions.
#[derive(Debug)]
pub struct Topic {
    pub meta: TopicMeta,
    pub partitions: Vec<Arc<Partition>>,
}

/// All topics of this broker. Lookups take a read lock; create, delete and config changes are
/// serialised by `admin` and run blocking file I/O (callers use `spawn_blocking`).
#[derive(Debug)]
pub struct TopicManager {
    data_dir: PathBuf,
    fs: Fs,
    defaults: LogConfig,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    admin: Mutex<()>,
    /// Holds the directory's flock for the manager's lifetime.
    _lock: std::fs::File,
}

/// Checks a topic name: 1..=249 bytes of `[A-Za-z0-9._-]`, not `.` or `..`.
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
        FlushPolicy::EveryAppend => (Some(1), None),
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

impl TopicManager {
    /// Opens the data directory: takes its lock, loads the metadata, opens (and recovers) every
    /// partition log, and removes partition directories no topic owns (an interrupted delete).
    pub fn open(data_dir: &Path, defaults: LogConfig, fs: Fs) -> Result<TopicManager> {
        defaults.validate()?;
        std::fs::create_dir_all(data_dir.join("topics")).map_err(Error::io(data_dir))?;
        let lock_path = data_dir.join(".lock");
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(Error::io(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(Error::BrokenDirectory {
                path: data_dir.to_path_buf(),
                reason: "it is in use by another broker process".into(),
            });
        }
        let meta_path = data_dir.join("metadata.json");
        let file: MetadataFile = match std::fs::read(&meta_path) {
            Ok(raw) => serde_json::from_slice(&raw).map_err(|e| Error::BrokenDirectory {
                path: meta_path.clone(),
                reason: format!("unreadable topic metadata: {e}"),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => MetadataFile::default(),
            Err(e) => {
                return Err(Error::Io {
                    path: meta_path,
                    source: e,
                })
            }
        };
        let mut topics = BTreeMap::new();
        for meta in file.topics {
            let topic = open_topic(data_dir, &defaults, &fs, meta, OpenMode::Existing)?;
            topics.insert(topic.meta.name.clone(), Arc::new(topic));
        }
        let manager = TopicManager {
            data_dir: data_dir.to_path_buf(),
            fs,
            defaults,
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            _lock: lock,
        };
        manager.remove_orphans()?;
        Ok(manager)
    }

    fn remove_orphans(&self) -> Result<()> {
        let dir = self.data_dir.join("topics");
        let topics = self.read();
        for entry in std::fs::read_dir(&dir).map_err(Error::io(&dir))? {
            let entry = entry.map_err(Error::io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let owned = name.rsplit_once('-').is_some_and(|(t, p)| {
                p.parse::<u32>()
                    .ok()
                    .zip(topics.get(t))
                    .is_some_and(|(p, topic)| p < topic.meta.partitions)
            });
            if !owned {
                tracing::warn!(dir = %entry.path().display(), "removing partition directory no topic owns");
                std::fs::remove_dir_all(entry.path()).map_err(Error::io(entry.path()))?;
            }
        }
        Ok(())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Arc<Topic>>> {
        self.topics.write().unwrap_or_else(|e| e.into_inner())
    }

    pub fn defaults(&self) -> &LogConfig {
        &self.defaults
    }

    pub fn topic(&self, name: &str) -> Option<Arc<Topic>> {
        self.read().get(name).cloned()
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        self.read().values().cloned().collect()
    }

    /// The partition, or `UnknownTopicOrPartition`.
    pub fn partition(&self, topic: &str, partition: u32) -> Result<Arc<Partition>> {
        self.read()
            .get(topic)
            .and_then(|t| t.partitions.get(partition as usize).cloned())
            .ok_or_else(|| Error::UnknownTopicOrPartition(format!("{topic}-{partition}")))
    }

    /// Every partition log on this broker.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.read()
            .values()
            .flat_map(|t| t.partitions.iter().cloned())
            .collect()
    }

    fn persist(&self, topics: &BTreeMap<String, Arc<Topic>>) -> Result<()> {
        let file = MetadataFile {
            version: 1,
            topics: topics.values().map(|t| t.meta.clone()).collect(),
        };
        let raw = serde_json::to_vec_pretty(&file).map_err(|e| Error::Config(e.to_string()))?;
        let path = self.data_dir.join("metadata.json");
        self.fs
            .write_atomically(&path, &raw)
            .map_err(Error::io(&path))
    }

    /// Creates a topic (or only validates the request). The metadata is durable before this
    /// returns, and every partition log exists.
    pub fn create_topic(&self, meta: TopicMeta, validate_only: bool) -> Result<()> {
        validate_topic_name(&meta.name)?;
        if meta.partitions == 0 || meta.partitions > PARTITIONS_PER_TOPIC_MAX {
            return Err(Error::InvalidPartitions {
                count: meta.partitions,
                max: PARTITIONS_PER_TOPIC_MAX,
            });
        }
        if meta.replication_factor != 1 {
            return Err(Error::InvalidReplicationFactor {
                factor: meta.replication_factor,
                reason: "this cluster has 1 broker",
            });
        }
        effective_config(&self.defaults, &meta.configs)?;
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        if self.read().contains_key(&meta.name) {
            return Err(Error::TopicAlreadyExists(meta.name));
        }
        if validate_only {
            return Ok(());
        }
        // Logs first, then the metadata that makes them visible: a crash in between leaves
        // directories that the next start removes as orphans.
        let topic = open_topic(
            &self.data_dir,
            &self.defaults,
            &self.fs,
            meta,
            OpenMode::Create,
        )?;
        let mut topics = self.read().clone();
        topics.insert(topic.meta.name.clone(), Arc::new(topic));
        self.persist(&topics)?;
        *self.write() = topics;
        Ok(())
    }

    /// Deletes a topic: durably forgets it, then removes its data.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let mut topics = self.read().clone();
        let Some(topic) = topics.remove(name) else {
            return Err(Error::UnknownTopicOrPartition(name.to_string()));
        };
        self.persist(&topics)?;
        *self.write() = topics;
        for p in &topic.partitions {
            let dir = p.log.dir().to_path_buf();
            if let Err(e) = std::fs::remove_dir_all(&dir) {
                // The topic is gone already; the next start removes what is left.
                tracing::warn!(dir = %dir.display(), error = %e, "could not remove partition data");
            }
        }
        let topics_dir = self.data_dir.join("topics");
        self.fs
            .sync_dir(&topics_dir)
            .map_err(Error::io(&topics_dir))?;
        Ok(())
    }

    /// The effective config of a topic: `(key, value, is_default)` for every known key.
    pub fn describe_configs(&self, name: &str) -> Result<Vec<(String, String, bool)>> {
        let topic = self
            .topic(name)
            .ok_or_else(|| Error::UnknownTopicOrPartition(name.to_string()))?;
        let cfg = effective_config(&self.defaults, &topic.meta.configs)?;
        Ok(TOPIC_CONFIG_KEYS
            .iter()
            .map(|k| {
                let is_default = !topic.meta.configs.contains_key(*k);
                (k.to_string(), config_value(&cfg, k), is_default)
            })
            .collect())
    }

    /// Sets and resets config overrides of a topic; they apply to its logs at once.
    pub fn alter_configs(
        &self,
        name: &str,
        set: &BTreeMap<String, String>,
        reset: &[String],
        validate_only: bool,
    ) -> Result<()> {
        let _admin = self.admin.lock().unwrap_or_else(|e| e.into_inner());
        let topic = self
            .topic(name)
            .ok_or_else(|| Error::UnknownTopicOrPartition(name.to_string()))?;
        let mut meta = topic.meta.clone();
        for k in reset {
            meta.configs.remove(k);
        }
        for (k, v) in set {
            meta.configs.insert(k.clone(), v.clone());
        }
        let cfg = effective_config(&self.defaults, &meta.configs)?;
        if validate_only {
            return Ok(());
        }
        for p in &topic.partitions {
            p.log.set_config(cfg.clone())?;
        }
        let mut topics = self.read().clone();
        topics.insert(
            name.to_string(),
            Arc::new(Topic {
                meta,
                partitions: topic.partitions.clone(),
            }),
        );
        self.persist(&topics)?;
        *self.write() = topics;
        Ok(())
    }

    /// Flushes every partition log (on shutdown).
    pub fn flush_all(&self) -> Result<()> {
        for p in self.all_partitions() {
            p.log.flush()?;
            p.refresh_high_watermark();
        }
        Ok(())
    }
}

/// Whether a topic's partition directories are being created or must already exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OpenMode {
    /// A new topic: leftovers of an earlier topic of the same name are removed first.
    Create,
    /// A known topic at start-up: a missing partition directory means lost data, and the broker
    /// refuses to start rather than serve an empty log in its place.
    Existing,
}

fn open_topic(
    data_dir: &Path,
    defaults: &LogConfig,
    fs: &Fs,
    meta: TopicMeta,
    mode: OpenMode,
) -> Result<Topic> {
    let cfg = effective_config(defaults, &meta.configs)?;
    let mut partitions = Vec::with_capacity(meta.partitions as usize);
    for index in 0..meta.partitions {
        let dir = data_dir
            .join("topics")
            .join(format!("{}-{index}", meta.name));
        match mode {
            OpenMode::Existing if !dir.is_dir() => {
                return Err(Error::BrokenDirectory {
                    path: dir,
                    reason: format!(
                        "partition {index} of topic {} is missing: its data is lost or was moved",
                        meta.name
                    ),
                });
            }
            OpenMode::Create if dir.exists() => {
                std::fs::remove_dir_all(&dir).map_err(Error::io(&dir))?;
            }
            _ => {}
        }
        let log = Log::open(&dir, cfg.clone(), fs.clone())?;
        let hw = log.flushed_offset();
        partitions.push(Arc::new(Partition {
            topic: meta.name.clone(),
            index,
            log: Arc::new(log),
            high_watermark: watch::channel(hw).0,
        }));
    }
    Ok(Topic { meta, partitions })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_partition_directory_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let meta = TopicMeta {
            name: "t".into(),
            partitions: 2,
            replication_factor: 1,
            configs: BTreeMap::new(),
        };
        {
            let m = TopicManager::open(dir.path(), LogConfig::default(), Fs::real()).unwrap();
            m.create_topic(meta, false).unwrap();
        }
        std::fs::remove_dir_all(dir.path().join("topics").join("t-1")).unwrap();
        let err = TopicManager::open(dir.path(), LogConfig::default(), Fs::real()).unwrap_err();
        assert!(
            err.to_string()
                .contains("partition 1 of topic t is missing"),
            "{err}"
        );
    }

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

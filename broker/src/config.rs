//! The broker process's configuration: flags, `RAFKA_*` environment variables and a TOML file.
//!
//! Precedence is flag > environment > file > default, per setting. clap resolves flag and
//! environment; the file fills what both left unset; [`BrokerConfig::resolve`] applies defaults
//! and checks every value, so a bad setting is one clear error at start-up. TOML keys are the
//! flag names in snake case (`node_id`, `data_dir`, `metrics_listen`, ...); unknown keys are
//! errors, so a typo never silently falls back to a default.

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::Parser;
use serde::Deserialize;

use crate::log::LogConfig;

/// Command-line flags (each also `RAFKA_<FLAG>` in the environment, and a key in the file).
#[derive(Debug, Default, Clone, Parser, Deserialize)]
#[command(
    name = "rafka-broker",
    version,
    about = "Rafka broker: a Kafka-style commit log. With no flags: a single-node cluster on 127.0.0.1:7092."
)]
#[serde(deny_unknown_fields)]
pub struct BrokerArgs {
    /// TOML file with any of these settings (snake_case keys).
    #[arg(long, env = "RAFKA_CONFIG", value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// This broker's id (default 1).
    #[arg(long, env = "RAFKA_NODE_ID", value_name = "N")]
    pub node_id: Option<i32>,
    /// Where logs and metadata live (default ./rafka-data).
    #[arg(long, env = "RAFKA_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Client protocol address (default 127.0.0.1:7092).
    #[arg(long, env = "RAFKA_LISTEN", value_name = "HOST:PORT")]
    pub listen: Option<String>,
    /// Address clients are told to use (default: the listen address).
    #[arg(long, env = "RAFKA_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,
    /// Broker-to-broker address (default 127.0.0.1:7093).
    #[arg(long, env = "RAFKA_PEER_LISTEN", value_name = "HOST:PORT")]
    pub peer_listen: Option<String>,
    /// Every voter of the cluster: ID=HOST:PORT,... (default: this node alone).
    #[arg(long, env = "RAFKA_PEERS", value_name = "ID=HOST:PORT,...")]
    pub peers: Option<String>,
    /// HTTP address for /metrics, /health, /ready (default 127.0.0.1:9644).
    #[arg(long, env = "RAFKA_METRICS_LISTEN", value_name = "HOST:PORT")]
    pub metrics_listen: Option<String>,
    /// Largest request or response frame (default 16 MiB).
    #[arg(long, env = "RAFKA_MAX_FRAME_BYTES", value_name = "BYTES")]
    pub max_frame_bytes: Option<u64>,
    /// Most client connections at once; more are refused (default 4096).
    #[arg(long, env = "RAFKA_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<u32>,
    /// Most requests in flight per connection; the connection stops reading at the limit
    /// (default 64).
    #[arg(long, env = "RAFKA_MAX_IN_FLIGHT_PER_CONNECTION", value_name = "N")]
    pub max_in_flight_per_connection: Option<u32>,
    /// Default segment size for new topics (default 1 GiB).
    #[arg(long, env = "RAFKA_SEGMENT_BYTES", value_name = "BYTES")]
    pub segment_bytes: Option<u64>,
    /// Default retention for new topics; -1 keeps forever (default 7 days).
    #[arg(
        long,
        env = "RAFKA_RETENTION_MS",
        value_name = "MS",
        allow_hyphen_values = true
    )]
    pub retention_ms: Option<i64>,
    /// Default size limit for new topics; -1 for none (default none).
    #[arg(
        long,
        env = "RAFKA_RETENTION_BYTES",
        value_name = "BYTES",
        allow_hyphen_values = true
    )]
    pub retention_bytes: Option<i64>,
    /// How often retention runs (default 300000 ms).
    #[arg(long, env = "RAFKA_RETENTION_CHECK_INTERVAL_MS", value_name = "MS")]
    pub retention_check_interval_ms: Option<u64>,
    /// Partitions of the internal `__consumer_offsets` topic when the cluster creates it
    /// (default 8; later changes do not affect an existing topic).
    #[arg(long, env = "RAFKA_OFFSETS_TOPIC_PARTITIONS", value_name = "N")]
    pub offsets_topic_partitions: Option<u32>,
    /// How long a partition remembers an idempotent producer that writes nothing (default
    /// 86400000 ms, one day; then its next batch must start at sequence 0).
    #[arg(long, env = "RAFKA_PRODUCER_ID_EXPIRATION_MS", value_name = "MS")]
    pub producer_id_expiration_ms: Option<u64>,
}

/// The resolved, checked configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub node_id: i32,
    pub data_dir: PathBuf,
    pub listen: String,
    pub advertise: String,
    pub peer_listen: String,
    pub peers: BTreeMap<i32, String>,
    pub metrics_listen: String,
    pub max_frame_bytes: usize,
    pub max_connections: u32,
    pub max_in_flight_per_connection: u32,
    pub retention_check_interval_ms: u64,
    pub offsets_topic_partitions: u32,
    pub producer_id_expiration_ms: u64,
    /// Log settings for topics that do not override them.
    pub log_defaults: LogConfig,
}

/// Smallest frame limit that still fits a 1 MiB batch with its request around it.
const FRAME_BYTES_MIN: u64 = 2 << 20;
const FRAME_BYTES_MAX: u64 = 1 << 30;

impl BrokerConfig {
    /// Merges flags/env with the file named by `--config` and the defaults, and checks it all.
    pub fn resolve(args: BrokerArgs) -> Result<BrokerConfig, String> {
        let file = match &args.config {
            Some(path) => {
                let raw = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<BrokerArgs>(&raw).map_err(|e| {
                    format!(
                        "bad config file {}: {}",
                        path.display(),
                        one_line(&e.to_string())
                    )
                })?
            }
            None => BrokerArgs::default(),
        };
        macro_rules! pick {
            ($f:ident, $default:expr) => {
                args.$f
                    .clone()
                    .or(file.$f.clone())
                    .unwrap_or_else(|| $default)
            };
        }
        let node_id = pick!(node_id, 1);
        if node_id < 0 {
            return Err(format!("--node-id must be non-negative, got {node_id}"));
        }
        let listen = pick!(listen, "127.0.0.1:7092".to_string());
        check_addr("--listen", &listen)?;
        let advertise = pick!(advertise, listen.clone());
        check_addr("--advertise", &advertise)?;
        let peer_listen = pick!(peer_listen, "127.0.0.1:7093".to_string());
        check_addr("--peer-listen", &peer_listen)?;
        let metrics_listen = pick!(metrics_listen, "127.0.0.1:9644".to_string());
        check_addr("--metrics-listen", &metrics_listen)?;
        let peers = match args.peers.clone().or(file.peers.clone()) {
            Some(s) => parse_peers(&s)?,
            None => BTreeMap::from([(node_id, peer_listen.clone())]),
        };
        if !peers.contains_key(&node_id) {
            return Err(format!(
                "--peers must include this broker's --node-id {node_id}"
            ));
        }
        let max_frame_bytes = pick!(
            max_frame_bytes,
            rafka_protocol::frame::FRAME_BYTES_MAX_DEFAULT as u64
        );
        if !(FRAME_BYTES_MIN..=FRAME_BYTES_MAX).contains(&max_frame_bytes) {
            return Err(format!(
                "--max-frame-bytes must be within {FRAME_BYTES_MIN}..={FRAME_BYTES_MAX}, got {max_frame_bytes}"
            ));
        }
        let max_connections = pick!(max_connections, 4096);
        let max_in_flight_per_connection = pick!(max_in_flight_per_connection, 64);
        if max_connections == 0 || max_in_flight_per_connection == 0 {
            return Err(
                "--max-connections and --max-in-flight-per-connection must be positive".into(),
            );
        }
        let mut log_defaults = LogConfig::default();
        if let Some(b) = args.segment_bytes.or(file.segment_bytes) {
            log_defaults.segment_bytes = b;
        }
        if let Some(ms) = args.retention_ms.or(file.retention_ms) {
            log_defaults.retention_ms = limit("--retention-ms", ms)?;
        }
        if let Some(b) = args.retention_bytes.or(file.retention_bytes) {
            log_defaults.retention_bytes = limit("--retention-bytes", b)?;
        }
        // One produce request's data for a partition must fit in a frame.
        log_defaults.append_bytes_max = log_defaults.append_bytes_max.min(max_frame_bytes - 4096);
        log_defaults.validate().map_err(|e| e.to_string())?;
        let retention_check_interval_ms = pick!(retention_check_interval_ms, 300_000);
        if retention_check_interval_ms == 0 {
            return Err("--retention-check-interval-ms must be positive".into());
        }
        let offsets_topic_partitions = pick!(offsets_topic_partitions, 8);
        if !(1..=crate::topics::PARTITIONS_PER_TOPIC_MAX).contains(&offsets_topic_partitions) {
            return Err(format!(
                "--offsets-topic-partitions must be within 1..={}",
                crate::topics::PARTITIONS_PER_TOPIC_MAX
            ));
        }
        let producer_id_expiration_ms = pick!(
            producer_id_expiration_ms,
            crate::replica::producers::PRODUCER_ID_EXPIRATION_MS_DEFAULT
        );
        if producer_id_expiration_ms == 0 {
            return Err("--producer-id-expiration-ms must be positive".into());
        }
        Ok(BrokerConfig {
            node_id,
            data_dir: pick!(data_dir, PathBuf::from("rafka-data")),
            listen,
            advertise,
            peer_listen,
            peers,
            metrics_listen,
            max_frame_bytes: max_frame_bytes as usize,
            max_connections,
            max_in_flight_per_connection,
            retention_check_interval_ms,
            offsets_topic_partitions,
            producer_id_expiration_ms,
            log_defaults,
        })
    }
}

fn limit(flag: &str, v: i64) -> Result<Option<u64>, String> {
    match v {
        -1 => Ok(None),
        n if n > 0 => Ok(Some(n as u64)),
        n => Err(format!("{flag} must be positive or -1, got {n}")),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Checks the shape HOST:PORT (the host is resolved when binding or connecting).
fn check_addr(flag: &str, addr: &str) -> Result<(), String> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if ok {
        Ok(())
    } else {
        Err(format!("{flag} must be HOST:PORT, got {addr:?}"))
    }
}

/// Parses `ID=HOST:PORT,ID=HOST:PORT,...`.
pub fn parse_peers(s: &str) -> Result<BTreeMap<i32, String>, String> {
    let mut peers = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("--peers entry {part:?} is not ID=HOST:PORT"))?;
        let id: i32 = id
            .trim()
            .parse()
            .map_err(|_| format!("--peers entry {part:?} has a bad id"))?;
        check_addr("--peers", addr.trim())?;
        if peers.insert(id, addr.trim().to_string()).is_some() {
            return Err(format!("--peers lists node {id} twice"));
        }
    }
    if peers.is_empty() {
        return Err("--peers is empty".into());
    }
    Ok(peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_arguments_is_a_single_node_on_the_contract_ports() {
        let c = BrokerConfig::resolve(BrokerArgs::default()).unwrap();
        assert_eq!(c.node_id, 1);
        assert_eq!(c.listen, "127.0.0.1:7092");
        assert_eq!(c.metrics_listen, "127.0.0.1:9644");
        assert_eq!(c.data_dir, PathBuf::from("rafka-data"));
    }

    #[test]
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.toml");
        std::fs::write(&path, "node_id = 7\nlisten = \"127.0.0.1:1\"\nmetrics_listen = \"127.0.0.1:2\"\npeers = \"7=127.0.0.1:3\"\n").unwrap();
        let args = BrokerArgs {
            config: Some(path.clone()),
            listen: Some("127.0.0.1:9".into()),
            ..BrokerArgs::default()
        };
        let c = BrokerConfig::resolve(args).unwrap();
        assert_eq!(c.node_id, 7);
        assert_eq!(c.listen, "127.0.0.1:9");
        assert_eq!(c.metrics_listen, "127.0.0.1:2");
        std::fs::write(&path, "nod_id = 7\n").unwrap();
        let err = BrokerConfig::resolve(BrokerArgs {
            config: Some(path),
            ..BrokerArgs::default()
        })
        .unwrap_err();
        assert!(err.contains("nod_id"), "{err}");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for args in [
            BrokerArgs {
                listen: Some("nope".into()),
                ..Default::default()
            },
            BrokerArgs {
                peers: Some("2=h:1".into()),
                ..Default::default()
            },
            BrokerArgs {
                max_frame_bytes: Some(10),
                ..Default::default()
            },
            BrokerArgs {
                retention_ms: Some(0),
                ..Default::default()
            },
        ] {
            assert!(BrokerConfig::resolve(args).is_err());
        }
    }
}

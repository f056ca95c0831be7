//! The `rafka` command-line client: argument definitions (clap derive) and dispatch. The
//! contract for flags and output formats is `shared/CONTRACT.md`; each command lives in its own
//! module, and every failure becomes one [`CliError`] line on stderr with a non-zero exit.

pub mod cluster;
pub mod consume;
pub mod format;
pub mod group;
pub mod produce;
pub mod topic;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::BOOTSTRAP_DEFAULT;
use crate::error::ClientError;

/// Exit code for runtime failures (the broker said no, the network failed).
pub const EXIT_FAILURE: u8 = 1;
/// Exit code for bad usage, including features that are not implemented yet.
pub const EXIT_USAGE: u8 = 2;

/// A failed command: one line for stderr and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    pub message: String,
    pub exit_code: u8,
}

impl CliError {
    pub fn failure(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit_code: EXIT_FAILURE,
        }
    }

    pub fn usage(message: impl Into<String>) -> CliError {
        CliError {
            message: message.into(),
            exit_code: EXIT_USAGE,
        }
    }

    pub fn not_implemented(what: &str) -> CliError {
        CliError::usage(format!("{what} not implemented yet"))
    }
}

impl From<ClientError> for CliError {
    fn from(e: ClientError) -> CliError {
        let exit_code = match e {
            ClientError::InvalidArgument(_) | ClientError::Unsupported(_) => EXIT_USAGE,
            _ => EXIT_FAILURE,
        };
        CliError {
            message: e.to_string(),
            exit_code,
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> CliError {
        CliError::failure(format!("I/O error: {e}"))
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

/// Rafka command-line client.
#[derive(Debug, Parser)]
#[command(name = "rafka", version, about = "Rafka command-line client")]
pub struct Cli {
    /// Bootstrap servers, HOST:PORT[,HOST:PORT...].
    #[arg(long, env = "RAFKA_BOOTSTRAP", default_value = BOOTSTRAP_DEFAULT, global = true)]
    pub bootstrap: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe, delete and alter topics.
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Produce one record per stdin line.
    Produce(ProduceArgs),
    /// Print records of a topic.
    Consume(ConsumeArgs),
    /// List, describe and reset consumer groups.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Cluster health.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// 0: the broker's default.
        #[arg(long, default_value_t = 0)]
        replication_factor: u32,
        /// Topic config, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
    },
    /// List topic names.
    List,
    /// Per partition: leader, replicas, in-sync replicas, log start, high watermark.
    Describe { name: String },
    /// Delete a topic and its data.
    Delete { name: String },
    /// Change topic configs.
    Alter {
        name: String,
        /// Config to set, KEY=VALUE (repeatable).
        #[arg(long = "config", value_parser = parse_key_value)]
        configs: Vec<(String, String)>,
        /// Config to return to its default (repeatable).
        #[arg(long = "reset")]
        resets: Vec<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AcksArg {
    All,
    #[value(name = "1")]
    One,
    #[value(name = "0")]
    Zero,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Isolation {
    #[value(name = "read_uncommitted")]
    ReadUncommitted,
    #[value(name = "read_committed")]
    ReadCommitted,
}

#[derive(Debug, Args)]
pub struct ProduceArgs {
    pub topic: String,
    /// Split each line into KEY<SEP>VALUE at the first SEP.
    #[arg(long)]
    pub key_separator: Option<String>,
    /// Send every record to this partition.
    #[arg(long)]
    pub partition: Option<u32>,
    #[arg(long, value_enum, default_value = "all")]
    pub acks: AcksArg,
    /// Idempotent producer: retries never duplicate nor reorder (default: true with
    /// `--acks all`, which it needs; false otherwise).
    #[arg(long, action = clap::ArgAction::Set)]
    pub idempotent: Option<bool>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Send every line in one transaction with this transactional id, committed at end of
    /// input (JSON acks are printed once it committed). Fences earlier producers with the id.
    #[arg(long)]
    pub transactional_id: Option<String>,
    /// Abort the transaction at end of input instead (needs --transactional-id).
    #[arg(long)]
    pub abort: bool,
}

/// Where `consume` starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartFrom {
    Earliest,
    Latest,
    Offset(u64),
    Timestamp(i64),
}

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    pub topic: String,
    /// Consume as a member of this consumer group (partitions assigned by the group; starts
    /// at committed offsets).
    #[arg(long)]
    pub group: Option<String>,
    /// Only this partition (default: every partition of the topic).
    #[arg(long)]
    pub partition: Option<u32>,
    /// earliest, latest, an OFFSET, or @TIMESTAMP_MS.
    #[arg(long, default_value = "earliest", value_parser = parse_from)]
    pub from: StartFrom,
    /// Exit after this many records.
    #[arg(long)]
    pub max_messages: Option<u64>,
    /// Exit after this long without a new record.
    #[arg(long)]
    pub idle_timeout_ms: Option<u64>,
    /// read_committed: only records outside transactions and of committed transactions.
    #[arg(long, value_enum, default_value = "read_uncommitted")]
    pub isolation: Isolation,
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// With --group: commit the offsets of the printed records before exiting (default true).
    #[arg(long, action = clap::ArgAction::Set)]
    pub commit: Option<bool>,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Every group, its state and member count.
    List,
    /// Members, assignment, committed offsets and lag (records and ms) per partition.
    Describe { group: String },
    /// Set the group's committed offsets of a topic (the group must have no members).
    ResetOffsets {
        group: String,
        #[arg(long)]
        topic: String,
        /// earliest, latest, an OFFSET, or @TIMESTAMP_MS.
        #[arg(long, value_parser = parse_from)]
        to: StartFrom,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Brokers, controller, partitions without a leader, under-replicated partitions.
    Status,
}

/// Parses `KEY=VALUE` (the value may contain `=`; the key may not be empty).
pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got '{s}'")),
    }
}

/// Parses `earliest`, `latest`, `OFFSET` or `@TIMESTAMP_MS`.
pub fn parse_from(s: &str) -> Result<StartFrom, String> {
    match s {
        "earliest" => Ok(StartFrom::Earliest),
        "latest" => Ok(StartFrom::Latest),
        _ => {
            if let Some(ts) = s.strip_prefix('@') {
                ts.parse::<i64>()
                    .ok()
                    .filter(|t| *t >= 0)
                    .map(StartFrom::Timestamp)
                    .ok_or_else(|| format!("'{s}' is not @TIMESTAMP_MS"))
            } else {
                s.parse::<u64>().map(StartFrom::Offset).map_err(|_| {
                    format!("expected earliest, latest, OFFSET or @TIMESTAMP_MS, got '{s}'")
                })
            }
        }
    }
}

/// Runs a parsed command line.
pub async fn run(cli: Cli) -> CliResult {
    let bootstrap = cli.bootstrap;
    match cli.command {
        Command::Topic { command } => topic::run(&bootstrap, command).await,
        Command::Produce(args) => produce::run(&bootstrap, args).await,
        Command::Consume(args) => consume::run(&bootstrap, args).await,
        Command::Group { command } => group::run(&bootstrap, command).await,
        Command::Cluster {
            command: ClusterCommand::Status,
        } => cluster::status(&bootstrap).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("rafka").chain(args.iter().copied()))
    }

    #[test]
    fn from_values() {
        assert_eq!(parse_from("earliest"), Ok(StartFrom::Earliest));
        assert_eq!(parse_from("latest"), Ok(StartFrom::Latest));
        assert_eq!(parse_from("42"), Ok(StartFrom::Offset(42)));
        assert_eq!(
            parse_from("@1700000000000"),
            Ok(StartFrom::Timestamp(1_700_000_000_000))
        );
        assert!(parse_from("@x").is_err());
        assert!(parse_from("-1").is_err());
        assert!(parse_from("soon").is_err());
    }

    #[test]
    fn key_values() {
        assert_eq!(
            parse_key_value("retention.ms=1000"),
            Ok(("retention.ms".into(), "1000".into()))
        );
        assert_eq!(parse_key_value("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert!(parse_key_value("novalue").is_err());
        assert!(parse_key_value("=v").is_err());
    }

    #[test]
    fn topic_create_defaults_and_configs() {
        let cli = parse(&[
            "--bootstrap",
            "h:1",
            "topic",
            "create",
            "t",
            "--config",
            "retention.ms=5",
            "--config",
            "segment.bytes=1024",
        ])
        .unwrap();
        assert_eq!(cli.bootstrap, "h:1");
        match cli.command {
            Command::Topic {
                command:
                    TopicCommand::Create {
                        name,
                        partitions,
                        replication_factor,
                        configs,
                    },
            } => {
                assert_eq!(name, "t");
                assert_eq!(partitions, 1);
                assert_eq!(replication_factor, 0);
                assert_eq!(configs.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn produce_flags() {
        let cli = parse(&[
            "produce",
            "t",
            "--acks",
            "0",
            "--key-separator",
            ":",
            "--idempotent",
            "false",
            "--format",
            "json",
        ])
        .unwrap();
        let Command::Produce(p) = cli.command else {
            panic!("not produce")
        };
        assert_eq!(p.acks, AcksArg::Zero);
        assert_eq!(p.key_separator.as_deref(), Some(":"));
        assert_eq!(p.idempotent, Some(false));
        assert_eq!(p.format, Format::Json);
        assert!(parse(&["produce", "t", "--acks", "2"]).is_err());
        // The global flag works after the subcommand too.
        let cli = parse(&["produce", "t", "--bootstrap", "x:9"]).unwrap();
        assert_eq!(cli.bootstrap, "x:9");
    }

    #[test]
    fn transactional_produce_flags() {
        let cli = parse(&[
            "produce",
            "t",
            "--transactional-id",
            "tx-1",
            "--abort",
            "--format",
            "json",
        ])
        .unwrap();
        let Command::Produce(p) = cli.command else {
            panic!("not produce")
        };
        assert_eq!(p.transactional_id.as_deref(), Some("tx-1"));
        assert!(p.abort);
        assert_eq!(p.format, Format::Json);
        let cli = parse(&["produce", "t", "--transactional-id", "tx-1"]).unwrap();
        let Command::Produce(p) = cli.command else {
            panic!("not produce")
        };
        assert!(!p.abort, "commits by default");
        assert!(parse(&["produce", "t", "--transactional-id"]).is_err());
    }

    #[tokio::test]
    async fn produce_rejects_transactional_flags_that_do_not_mix() {
        let run = |extra: &[&str]| {
            let mut a = vec!["produce", "t"];
            a.extend_from_slice(extra);
            let Command::Produce(p) = parse(&a).unwrap().command else {
                panic!("not produce")
            };
            produce::run("127.0.0.1:1", p)
        };
        // Every one fails before any connection is attempted.
        for (extra, mentions) in [
            (&["--abort"][..], "--transactional-id"),
            (&["--transactional-id", ""][..], "must not be empty"),
            (
                &["--transactional-id", "x", "--acks", "1"][..],
                "--acks all",
            ),
            (
                &["--transactional-id", "x", "--idempotent", "false"][..],
                "idempotent",
            ),
        ] {
            let e = run(extra).await.unwrap_err();
            assert_eq!(e.exit_code, EXIT_USAGE, "{extra:?}");
            assert!(e.message.contains(mentions), "{extra:?}: {}", e.message);
        }
    }

    #[test]
    fn consume_flags() {
        let cli = parse(&[
            "consume",
            "t",
            "--from",
            "@5",
            "--max-messages",
            "3",
            "--idle-timeout-ms",
            "100",
            "--isolation",
            "read_committed",
        ])
        .unwrap();
        let Command::Consume(c) = cli.command else {
            panic!("not consume")
        };
        assert_eq!(c.from, StartFrom::Timestamp(5));
        assert_eq!(c.max_messages, Some(3));
        assert_eq!(c.idle_timeout_ms, Some(100));
        assert_eq!(c.isolation, Isolation::ReadCommitted);
        assert_eq!(c.format, Format::Text);
        let cli = parse(&["consume", "t"]).unwrap();
        let Command::Consume(c) = cli.command else {
            panic!("not consume")
        };
        assert_eq!(c.from, StartFrom::Earliest);
    }

    #[test]
    fn group_commands_parse() {
        let cli = parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "@1700000000000",
        ])
        .unwrap();
        match cli.command {
            Command::Group {
                command: GroupCommand::ResetOffsets { group, topic, to },
            } => {
                assert_eq!((group.as_str(), topic.as_str()), ("g", "t"));
                assert_eq!(to, StartFrom::Timestamp(1_700_000_000_000));
            }
            other => panic!("{other:?}"),
        }
        assert!(parse(&[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to",
            "soon"
        ])
        .is_err());
        assert!(parse(&["group", "reset-offsets", "g", "--to", "earliest"]).is_err());
        assert!(parse(&["group", "describe"]).is_err());
        assert!(parse(&["group", "list"]).is_ok());
    }

    #[test]
    fn consume_group_flags() {
        let cli = parse(&["consume", "t", "--group", "g", "--commit", "false"]).unwrap();
        let Command::Consume(c) = cli.command else {
            panic!("not consume")
        };
        assert_eq!(c.group.as_deref(), Some("g"));
        assert_eq!(c.commit, Some(false));
        assert!(parse(&["consume", "t", "--group", "g", "--commit", "maybe"]).is_err());
    }

    #[tokio::test]
    async fn consume_rejects_flags_that_do_not_mix() {
        let args = |group: Option<&str>, partition: Option<u32>, commit: Option<bool>| {
            let mut a = vec!["consume".to_owned(), "t".to_owned()];
            if let Some(g) = group {
                a.extend(["--group".to_owned(), g.to_owned()]);
            }
            if let Some(p) = partition {
                a.extend(["--partition".to_owned(), p.to_string()]);
            }
            if let Some(c) = commit {
                a.extend(["--commit".to_owned(), c.to_string()]);
            }
            let refs: Vec<&str> = a.iter().map(String::as_str).collect();
            let Command::Consume(c) = parse(&refs).unwrap().command else {
                panic!("not consume")
            };
            c
        };
        // Both fail before any connection is attempted.
        let e = consume::run("127.0.0.1:1", args(Some("g"), Some(0), None))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code, EXIT_USAGE);
        assert!(e.message.contains("--partition"), "{}", e.message);
        let e = consume::run("127.0.0.1:1", args(None, None, Some(true)))
            .await
            .unwrap_err();
        assert_eq!(e.exit_code, EXIT_USAGE);
        assert!(e.message.contains("--group"), "{}", e.message);
    }
}

//! `rafka-test-member`: one consumer-group member as its own process, for tests that kill and
//! restart members. It subscribes with the Rust client and prints one JSON line per event on
//! stdout, flushed at once:
//!
//! - `{"event":"joined","member_id":"..."}` once the coordinator gave it an id;
//! - `{"event":"assigned"|"revoked"|"lost","partitions":[0,2]}` from the rebalance listener;
//! - `{"event":"record","partition":P,"offset":O,"value":"..."}` per record consumed.
//!
//! Offsets are auto-committed (every `--auto-commit-interval-ms`, before a revocation, and on
//! SIGTERM, which also leaves the group; never on SIGKILL, which is the point of the tests). Runs until killed.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use rafka_client::{Consumer, ConsumerConfig, RebalanceListener, SeekTo, TopicPartition};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    group: String,
    #[arg(long)]
    topic: String,
    #[arg(long, default_value = "6000")]
    session_timeout_ms: u32,
    #[arg(long, default_value = "500")]
    auto_commit_interval_ms: u64,
    #[arg(long)]
    instance_id: Option<String>,
}

fn emit(line: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

struct Printer;

fn parts(partitions: &[TopicPartition]) -> Vec<u32> {
    partitions.iter().map(|tp| tp.partition).collect()
}

impl RebalanceListener for Printer {
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        emit(serde_json::json!({"event": "revoked", "partitions": parts(partitions)}));
    }
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        emit(serde_json::json!({"event": "assigned", "partitions": parts(partitions)}));
    }
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        emit(serde_json::json!({"event": "lost", "partitions": parts(partitions)}));
    }
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: args.bootstrap,
        client_id: "rafka-test-member".into(),
        group_id: Some(args.group),
        group_instance_id: args.instance_id,
        session_timeout_ms: args.session_timeout_ms,
        auto_commit_interval_ms: args.auto_commit_interval_ms,
        initial_position: SeekTo::Earliest,
        fetch_max_wait_ms: 100,
        ..ConsumerConfig::default()
    })
    .expect("consumer");
    consumer.set_rebalance_listener(Printer);
    consumer.subscribe([args.topic]).expect("subscribe");
    let mut joined = false;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    loop {
        let polled = tokio::select! {
            p = consumer.poll(Duration::from_millis(200)) => p,
            _ = term.recv() => {
                // A graceful stop: commit, leave the group (epoch -1, or -2 when static).
                if let Err(e) = consumer.close().await {
                    eprintln!("close: {e}");
                }
                emit(serde_json::json!({"event": "closed"}));
                return;
            }
        };
        match polled {
            Ok(records) => {
                for r in records {
                    let value = r
                        .value
                        .as_ref()
                        .map(|v| String::from_utf8_lossy(v).into_owned());
                    emit(serde_json::json!({
                        "event": "record",
                        "partition": r.partition,
                        "offset": r.offset.0,
                        "value": value,
                    }));
                }
            }
            Err(e) => eprintln!("poll: {e}"),
        }
        if !joined {
            if let Some(id) = consumer.member_id() {
                emit(serde_json::json!({"event": "joined", "member_id": id}));
                joined = true;
            }
        }
    }
}

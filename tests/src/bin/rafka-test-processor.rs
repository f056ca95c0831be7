//! `rafka-test-processor`: a consume-transform-produce loop with exactly-once output, as its own
//! process, for tests that SIGKILL it at random moments and start it again.
//!
//! It reads `--input` with read_committed from the offsets `--group` committed (or the start),
//! and in each transaction writes `out-<value>` to the same partition of `--output` and sends
//! its consumed positions to the transaction (a standalone consumer of the group: the offsets
//! commit atomically with the output). Starting it with the same `--transactional-id` fences the
//! previous instance and aborts whatever transaction it left open, before the committed offsets
//! are read. Prints `{"event":"committed","records":N}` per transaction and
//! `{"event":"idle"}` once a poll finds nothing new; runs until killed.

use std::io::Write;
use std::time::Duration;

use clap::Parser;
use rafka_client::{
    Admin, ClientConfig, Consumer, ConsumerConfig, ConsumerGroupMetadata, IsolationLevel, Producer,
    ProducerConfig, ProducerRecord, SeekTo, TopicPartition,
};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    bootstrap: String,
    #[arg(long)]
    input: String,
    #[arg(long)]
    output: String,
    #[arg(long)]
    partitions: u32,
    #[arg(long)]
    group: String,
    #[arg(long)]
    transactional_id: String,
    /// Most input records per transaction.
    #[arg(long, default_value = "10")]
    records_per_txn: usize,
}

fn emit(line: serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn fail(what: &str, e: impl std::fmt::Display) -> ! {
    eprintln!("rafka-test-processor: {what}: {e}");
    std::process::exit(1);
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let producer = Producer::new(ProducerConfig {
        bootstrap: args.bootstrap.clone(),
        client_id: "rafka-test-processor".into(),
        transactional_id: Some(args.transactional_id.clone()),
        transaction_timeout_ms: 10_000,
        linger_ms: 1,
        ..ProducerConfig::default()
    })
    .unwrap_or_else(|e| fail("producer", e));
    // Fence the previous instance (its open transaction is aborted) before reading offsets.
    producer
        .init_transactions()
        .await
        .unwrap_or_else(|e| fail("init_transactions", e));
    let partitions: Vec<TopicPartition> = (0..args.partitions)
        .map(|p| TopicPartition::new(args.input.clone(), p))
        .collect();
    let admin =
        Admin::new(ClientConfig::new(args.bootstrap.clone())).unwrap_or_else(|e| fail("admin", e));
    let committed = admin
        .committed_offsets(&args.group, &partitions)
        .await
        .unwrap_or_else(|e| fail("committed offsets", e));
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: args.bootstrap.clone(),
        isolation_level: IsolationLevel::ReadCommitted,
        ..ConsumerConfig::default()
    })
    .unwrap_or_else(|e| fail("consumer", e));
    consumer.assign(partitions.clone());
    for tp in &partitions {
        let to = match committed.get(tp).copied().flatten() {
            Some(o) => SeekTo::Offset(o),
            None => SeekTo::Earliest,
        };
        consumer
            .seek(tp, to)
            .await
            .unwrap_or_else(|e| fail("seek", e));
    }
    let group = ConsumerGroupMetadata::standalone(args.group.clone());
    let mut pending = Vec::new();
    loop {
        if pending.is_empty() {
            match consumer.poll(Duration::from_millis(200)).await {
                Ok(records) if records.is_empty() => emit(serde_json::json!({"event": "idle"})),
                Ok(records) => pending.extend(records),
                Err(e) if e.is_retriable() => continue,
                Err(e) => fail("poll", e),
            }
            continue;
        }
        let take = pending.len().min(args.records_per_txn);
        let batch: Vec<_> = pending.drain(..take).collect();
        producer
            .begin_transaction()
            .await
            .unwrap_or_else(|e| fail("begin", e));
        let mut deliveries = Vec::with_capacity(batch.len());
        let mut next: std::collections::BTreeMap<TopicPartition, rafka_client::Offset> =
            std::collections::BTreeMap::new();
        for r in &batch {
            let value = format!(
                "out-{}",
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
            );
            let d = producer
                .send(ProducerRecord::new(args.output.clone(), value).with_partition(r.partition))
                .await
                .unwrap_or_else(|e| fail("send", e));
            deliveries.push(d);
            next.insert(
                TopicPartition::new(r.topic.clone(), r.partition),
                rafka_client::Offset(r.offset.0 + 1),
            );
        }
        for d in deliveries {
            if let Err(e) = d.await {
                fail("delivery", e);
            }
        }
        producer
            .send_offsets_to_transaction(next, &group)
            .await
            .unwrap_or_else(|e| fail("send_offsets_to_transaction", e));
        producer
            .commit_transaction()
            .await
            .unwrap_or_else(|e| fail("commit", e));
        emit(serde_json::json!({"event": "committed", "records": batch.len()}));
    }
}

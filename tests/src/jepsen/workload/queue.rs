//! The `queue` workload: producers send unique values to the partitions of one replicated
//! topic with acks=all; one consumer per partition, with that partition assigned, polls
//! throughout; at the end every partition is read from offset 0 to its high watermark.
//!
//! Each producer process has at most one send open, so its sends are totally ordered and the
//! checker can test per-producer order. A send that ends ambiguously (timeout, lost
//! connection) is recorded `info` and the worker continues as a fresh process with a fresh
//! producer, as Jepsen does: the old one may still deliver it.
//!
//! The `group` workload reuses the producers ([`produce`]) and the final read ([`final_read`]).

use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use rafka_client::{
    Acks, ClientError, Consumer, ConsumerConfig, ConsumerRecord, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};
use rafka_protocol::Offset;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::{timeout, Instant, MissedTickBehavior};

use super::{Env, Workload};
use crate::jepsen::history::{Payload, ReadValue, SendValue};

/// Longest a producer waits for one record's outcome (retries included).
const DELIVERY_TIMEOUT_MS: u64 = 10_000;
/// Backstop over the delivery timeout: past it the send counts as indeterminate.
const SEND_TIMEOUT: Duration = Duration::from_millis(DELIVERY_TIMEOUT_MS + 5_000);
/// One poll's wait for records.
pub(super) const POLL_WAIT: Duration = Duration::from_millis(250);
/// Backstop over one poll (a paused broker holds a fetch until the request timeout).
pub(super) const POLL_TIMEOUT: Duration = Duration::from_secs(8);
/// How long the final read may take for one partition.
const FINAL_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The queue workload's shape.
#[derive(Debug, Clone)]
pub struct Queue {
    pub topic: String,
    pub partitions: u32,
    pub producers: usize,
}

impl Default for Queue {
    fn default() -> Self {
        Queue {
            topic: "jepsen-queue".into(),
            partitions: 3,
            producers: 4,
        }
    }
}

impl Workload for Queue {
    fn name(&self) -> &'static str {
        "queue"
    }

    fn topics(&self) -> Vec<(String, u32)> {
        vec![(self.topic.clone(), self.partitions)]
    }

    fn setup<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>> {
        super::create_topic(&env.bootstrap, &self.topic, self.partitions).boxed()
    }

    fn run<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, ()> {
        async move {
            let mut tasks = Vec::new();
            for worker in 0..self.producers {
                tasks.push(tokio::spawn(produce(self.clone(), env.clone(), worker)));
            }
            for partition in 0..self.partitions {
                tasks.push(tokio::spawn(consume(self.clone(), env.clone(), partition)));
            }
            for t in tasks {
                if let Err(e) = t.await {
                    eprintln!("jepsen: a queue worker died: {e}");
                }
            }
        }
        .boxed()
    }

    fn final_read<'a>(&'a self, env: &'a Env) -> BoxFuture<'a, Result<(), String>> {
        async move {
            let mut errors = Vec::new();
            for partition in 0..self.partitions {
                if let Err(e) = final_read(&self.topic, env, partition).await {
                    errors.push(format!("partition {partition}: {e}"));
                }
            }
            if errors.is_empty() {
                Ok(())
            } else {
                Err(errors.join("; "))
            }
        }
        .boxed()
    }
}

fn producer(env: &Env, process: i64) -> Result<Producer, ClientError> {
    Producer::new(ProducerConfig {
        bootstrap: env.bootstrap.clone(),
        client_id: format!("jepsen-{process}"),
        acks: Acks::All,
        linger_ms: 0,
        request_timeout_ms: 3_000,
        delivery_timeout_ms: DELIVERY_TIMEOUT_MS,
        ..ProducerConfig::default()
    })
}

fn consumer(env: &Env, process: i64, tp: &TopicPartition) -> Result<Consumer, ClientError> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: env.bootstrap.clone(),
        client_id: format!("jepsen-{process}"),
        fetch_max_wait_ms: 100,
        request_timeout_ms: 3_000,
        initial_position: SeekTo::Offset(Offset(0)),
        ..ConsumerConfig::default()
    })?;
    consumer.assign([tp.clone()]);
    Ok(consumer)
}

/// One producer worker: sends at its share of the rate until told to stop.
pub(super) async fn produce(queue: Queue, env: Env, worker: usize) {
    let recorder = &env.recorder;
    let mut rng = StdRng::seed_from_u64(env.seed ^ (0x5eed_0000 + worker as u64));
    let per_worker = (env.rate_per_s / queue.producers as f64).max(0.1);
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_worker));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut process = recorder.new_process();
    let mut seq = 0u64;
    let mut client = producer(&env, process).ok();
    loop {
        tick.tick().await;
        if *env.stop.borrow() {
            return;
        }
        let Some(p) = client.as_ref() else {
            // Creating a producer only fails on a bad configuration; try again next tick.
            client = producer(&env, process).ok();
            continue;
        };
        let partition = rng.gen_range(0..queue.partitions);
        let value = format!("{process}-{seq}");
        seq += 1;
        let mut send = SendValue {
            partition,
            value: value.clone(),
            offset: None,
            idempotent: false,
        };
        recorder.invoke(process, Payload::Send(send.clone()));
        let record = ProducerRecord::new(queue.topic.clone(), value).with_partition(partition);
        let outcome = timeout(SEND_TIMEOUT, async { p.send(record).await?.await }).await;
        match outcome {
            Ok(Ok(meta)) => {
                send.offset = meta.offset.map(|o| o.0);
                recorder.ok(process, Payload::Send(send));
            }
            Ok(Err(e)) if !e.is_ambiguous() => {
                recorder.fail(process, Payload::Send(send), e);
            }
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no outcome within {SEND_TIMEOUT:?}"),
                };
                recorder.info(process, Payload::Send(send), why);
                // The old producer may still deliver the record; carry on as a new process
                // with a new producer so that this process's order stays checkable.
                process = recorder.new_process();
                seq = 0;
                client = producer(&env, process).ok();
            }
        }
    }
}

pub(super) fn records(batch: &[ConsumerRecord]) -> Vec<(u64, String)> {
    batch
        .iter()
        .map(|r| {
            let value = r
                .value
                .as_ref()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            (r.offset.0, value)
        })
        .collect()
}

/// One consumer worker, assigned one partition, polling from offset 0 until told to stop.
async fn consume(queue: Queue, env: Env, partition: u32) {
    let recorder = &env.recorder;
    let tp = TopicPartition::new(queue.topic.clone(), partition);
    let process = recorder.new_process();
    let mut client = match consumer(&env, process, &tp) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("jepsen: consumer for {tp}: {e}");
            return;
        }
    };
    let mut stop = env.stop.clone();
    let mut next = 0u64;
    while !*stop.borrow() {
        let from = client.position(&tp).map(|o| o.0).unwrap_or(next);
        let read = ReadValue {
            partition,
            from,
            records: Vec::new(),
        };
        recorder.invoke(process, Payload::Poll(read.clone()));
        let polled = tokio::select! {
            r = timeout(POLL_TIMEOUT, client.poll(POLL_WAIT)) => r,
            _ = stop.changed() => {
                recorder.fail(process, Payload::Poll(read), "run ended");
                return;
            }
        };
        match polled {
            Ok(Ok(batch)) => {
                let got = records(&batch);
                if let Some((last, _)) = got.last() {
                    next = last + 1;
                }
                recorder.ok(
                    process,
                    Payload::Poll(ReadValue {
                        records: got,
                        ..read
                    }),
                );
            }
            Ok(Err(e)) => {
                recorder.fail(process, Payload::Poll(read), e);
                // Reads have no effect; back off briefly so an unreachable leader is not
                // hammered.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(_) => recorder.fail(
                process,
                Payload::Poll(read),
                format!("no answer within {POLL_TIMEOUT:?}"),
            ),
        }
    }
}

/// Reads `partition` from offset 0 to its high watermark, as a fresh process; returns the end
/// it reached (the high watermark).
pub(super) async fn final_read(topic: &str, env: &Env, partition: u32) -> Result<u64, String> {
    let recorder = &env.recorder;
    let tp = TopicPartition::new(topic, partition);
    let process = recorder.new_process();
    let deadline = Instant::now() + FINAL_READ_TIMEOUT;
    let mut client = consumer(env, process, &tp).map_err(|e| e.to_string())?;
    let mut last_error = String::new();
    // The end to read to, asked of the leader; asked again once reached, in case a new
    // leader's first entry moved it.
    let mut end: Option<u64> = None;
    let mut position = 0u64;
    loop {
        if Instant::now() >= deadline {
            return Err(format!(
                "final read stopped at offset {position} of {end:?}: {last_error}"
            ));
        }
        if end.is_none_or(|target| position >= target) {
            // (Re)learn the end; once reached, done only when it has not moved.
            match high_watermark(&mut client, &tp, position).await {
                Ok(hw) if end.is_some() && hw <= position => return Ok(position),
                Ok(hw) => {
                    end = Some(hw);
                    continue;
                }
                Err(e) => last_error = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let read = ReadValue {
            partition,
            from: position,
            records: Vec::new(),
        };
        recorder.invoke(process, Payload::FinalRead(read.clone()));
        match timeout(POLL_TIMEOUT, client.poll(POLL_WAIT)).await {
            Ok(Ok(batch)) => {
                let got = records(&batch);
                if let Some(p) = client.position(&tp) {
                    position = position.max(p.0);
                }
                recorder.ok(
                    process,
                    Payload::FinalRead(ReadValue {
                        records: got,
                        ..read
                    }),
                );
            }
            Ok(Err(e)) => {
                last_error = e.to_string();
                recorder.fail(process, Payload::FinalRead(read), e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(_) => {
                last_error = format!("no answer within {POLL_TIMEOUT:?}");
                recorder.fail(process, Payload::FinalRead(read), &last_error);
            }
        }
    }
}

/// The partition's high watermark, asked of its leader; the consumer's position is put back to
/// `position` (looking up the end moves it there).
async fn high_watermark(
    client: &mut Consumer,
    tp: &TopicPartition,
    position: u64,
) -> Result<u64, String> {
    let hw = match timeout(POLL_TIMEOUT, client.seek(tp, SeekTo::Latest)).await {
        Ok(Ok(hw)) => hw.0,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("high watermark lookup timed out".into()),
    };
    client
        .seek(tp, SeekTo::Offset(Offset(position)))
        .await
        .map_err(|e| e.to_string())?;
    Ok(hw)
}

//! The producer against a scripted in-process broker: per-partition results in one request,
//! retries after NOT_LEADER, order within a partition, and unknown outcomes on timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rafka_client::protocol::frame;
use rafka_client::protocol::messages::*;
use rafka_client::protocol::{ApiKey, BatchIter, ErrorCode};
use rafka_client::{ClientError, Producer, ProducerConfig, ProducerRecord};
use tokio::net::TcpListener;
use tokio_util::codec::Framed;

/// How the fake broker answers produce requests for a partition.
#[derive(Clone, Copy)]
enum Script {
    /// Append and return the base offset.
    Accept,
    /// NOT_LEADER (hinting itself) for the first `n` attempts, then accept.
    NotLeaderFirst(u32),
    /// Always this non-retriable code.
    Reject(ErrorCode),
    /// Never answer requests that carry this partition.
    Silent,
}

#[derive(Default)]
struct State {
    /// Per partition: values appended, in order.
    logs: HashMap<u32, Vec<Vec<u8>>>,
    attempts: HashMap<u32, u32>,
    /// Metadata requests answered so far.
    metadata_requests: u32,
    /// Leave topic "t" out of this many first metadata answers (a broker that has not
    /// learned of a new topic yet).
    hide_topic_for: u32,
}

async fn fake_broker(scripts: HashMap<u32, Script>) -> (String, Arc<Mutex<State>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = Arc::new(Mutex::new(State::default()));
    let st = state.clone();
    tokio::spawn(async move {
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            let scripts = scripts.clone();
            let st = st.clone();
            tokio::spawn(async move {
                let mut framed = Framed::new(sock, frame::codec(frame::FRAME_BYTES_MAX_DEFAULT));
                while let Some(Ok(f)) = framed.next().await {
                    let (h, body) = frame::decode_request_header(f.freeze()).unwrap();
                    let rh = ResponseHeader {
                        correlation_id: h.correlation_id,
                        error_code: 0,
                        error_message: String::new(),
                    };
                    let reply = match ApiKey::from_u32(h.api_key).unwrap() {
                        ApiKey::Metadata => {
                            let hidden = {
                                let mut st = st.lock().unwrap();
                                st.metadata_requests += 1;
                                st.metadata_requests <= st.hide_topic_for
                            };
                            let mut resp = MetadataResponse {
                                brokers: vec![BrokerInfo {
                                    node_id: 1,
                                    host: addr.ip().to_string(),
                                    port: u32::from(addr.port()),
                                }],
                                controller_id: 1,
                                cluster_id: "fake".into(),
                                topics: vec![TopicMetadata {
                                    name: "t".into(),
                                    error_code: 0,
                                    partitions: (0..scripts.len() as u32)
                                        .map(|p| PartitionMetadata {
                                            partition: p,
                                            leader_id: 1,
                                            replicas: vec![1],
                                            in_sync_replicas: vec![1],
                                            ..Default::default()
                                        })
                                        .collect(),
                                }],
                            };
                            if hidden {
                                resp.topics.clear();
                            }
                            Some(frame::encode_response(&rh, Some(&resp)))
                        }
                        ApiKey::Produce => {
                            let req: ProduceRequest = frame::decode_body(body).unwrap();
                            produce(&req, &scripts, &st)
                                .map(|resp| frame::encode_response(&rh, Some(&resp)))
                        }
                        other => panic!("unexpected {other:?}"),
                    };
                    if let Some(r) = reply {
                        framed.send(r).await.unwrap();
                    }
                }
            });
        }
    });
    (addr.to_string(), state)
}

fn produce(
    req: &ProduceRequest,
    scripts: &HashMap<u32, Script>,
    state: &Mutex<State>,
) -> Option<ProduceResponse> {
    let mut st = state.lock().unwrap();
    let mut results = Vec::new();
    for t in &req.topics {
        for p in &t.partitions {
            let attempt = {
                let a = st.attempts.entry(p.partition).or_default();
                *a += 1;
                *a
            };
            let mut result = ProducePartitionResult {
                partition: p.partition,
                leader_hint: -1,
                ..Default::default()
            };
            match scripts[&p.partition] {
                Script::Silent => return None,
                Script::Reject(code) => result.error_code = code.code(),
                Script::NotLeaderFirst(n) if attempt <= n => {
                    result.error_code = ErrorCode::NotLeader.code();
                    result.leader_hint = 1;
                }
                Script::Accept | Script::NotLeaderFirst(_) => {
                    let log = st.logs.entry(p.partition).or_default();
                    result.base_offset = log.len() as u64;
                    for batch in BatchIter::new(p.records.clone()) {
                        for r in batch.unwrap().records() {
                            log.push(r.unwrap().value.unwrap().to_vec());
                        }
                    }
                }
            }
            results.push(result);
        }
    }
    Some(ProduceResponse {
        topics: vec![ProduceTopicResult {
            name: "t".into(),
            partitions: results,
        }],
    })
}

fn config(bootstrap: String) -> ProducerConfig {
    ProducerConfig {
        bootstrap,
        retry_backoff_ms: 10,
        linger_ms: 1,
        // The fake broker knows no InitProducerId.
        enable_idempotence: false,
        ..ProducerConfig::default()
    }
}

#[tokio::test]
async fn each_partition_result_stands_on_its_own_and_retries_keep_order() {
    let scripts = HashMap::from([
        (0, Script::NotLeaderFirst(2)),
        (1, Script::Reject(ErrorCode::CorruptMessage)),
    ]);
    let (addr, state) = fake_broker(scripts).await;
    let producer = Producer::new(config(addr)).unwrap();
    let mut p0 = Vec::new();
    let mut p1 = Vec::new();
    for i in 0..50u32 {
        let value = format!("v{i}");
        let r0 = ProducerRecord::new("t", value.clone()).with_partition(0);
        p0.push(producer.send(r0).await.unwrap());
        let r1 = ProducerRecord::new("t", value).with_partition(1);
        p1.push(producer.send(r1).await.unwrap());
    }
    producer.flush().await;
    for (i, d) in p0.into_iter().enumerate() {
        let md = d.await.unwrap();
        assert_eq!(md.partition, 0);
        assert_eq!(md.offset.unwrap().0, i as u64);
    }
    for d in p1 {
        let e = d.await.unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::CorruptMessage), "{e}");
    }
    let st = state.lock().unwrap();
    let expected: Vec<Vec<u8>> = (0..50).map(|i| format!("v{i}").into_bytes()).collect();
    assert_eq!(st.logs[&0], expected, "retried records keep their order");
    assert!(st.attempts[&0] >= 3);
}

#[tokio::test]
async fn a_produce_that_never_gets_an_answer_is_unknown_not_failed() {
    let scripts = HashMap::from([(0, Script::Silent)]);
    let (addr, _state) = fake_broker(scripts).await;
    let producer = Producer::new(ProducerConfig {
        enable_idempotence: false,
        request_timeout_ms: 100,
        delivery_timeout_ms: 400,
        ..config(addr)
    })
    .unwrap();
    let d = producer
        .send(ProducerRecord::new("t", "x").with_partition(0))
        .await
        .unwrap();
    let e = tokio::time::timeout(Duration::from_secs(5), d)
        .await
        .expect("the delivery timeout bounds the wait")
        .unwrap_err();
    assert!(matches!(e, ClientError::OutcomeUnknown { .. }), "{e}");
    assert!(e.is_ambiguous());
}

#[tokio::test]
async fn unknown_topics_and_partitions_fail_the_send() {
    let (addr, _state) = fake_broker(HashMap::from([(0, Script::Accept)])).await;
    let producer = Producer::new(config(addr)).unwrap();
    let started = std::time::Instant::now();
    let e = producer
        .send(ProducerRecord::new("other", "x"))
        .await
        .err()
        .unwrap();
    assert_eq!(e.code(), Some(ErrorCode::UnknownTopicOrPartition));
    let waited = started.elapsed();
    assert!(
        waited < rafka_client::producer::UNKNOWN_TOPIC_WAIT + Duration::from_secs(1),
        "an unknown topic fails after a short wait, not the request timeout: {waited:?}"
    );
    let e = producer
        .send(ProducerRecord::new("t", "x").with_partition(3))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, ClientError::InvalidArgument(_)), "{e}");
}

#[tokio::test]
async fn a_full_buffer_makes_send_wait() {
    let (addr, _state) = fake_broker(HashMap::from([(0, Script::Silent)])).await;
    let producer = Producer::new(ProducerConfig {
        enable_idempotence: false,
        batch_bytes: 1024,
        buffer_bytes_max: 4096,
        ..config(addr)
    })
    .unwrap();
    let value = vec![0u8; 1000];
    let mut held = Vec::new();
    let mut blocked = false;
    for _ in 0..10 {
        let send = producer.send(ProducerRecord::new("t", value.clone()).with_partition(0));
        match tokio::time::timeout(Duration::from_millis(300), send).await {
            Ok(d) => held.push(d.unwrap()),
            Err(_) => {
                blocked = true;
                break;
            }
        }
    }
    assert!(blocked, "send must wait once buffer_bytes_max is queued");
    assert!(held.len() <= 4, "{} records fit a 4 KiB buffer", held.len());
}

#[tokio::test]
async fn a_topic_the_broker_learns_of_a_moment_later_is_waited_for() {
    let (addr, state) = fake_broker(HashMap::from([(0, Script::Accept)])).await;
    state.lock().unwrap().hide_topic_for = 3;
    let producer = Producer::new(ProducerConfig {
        enable_idempotence: false,
        ..config(addr)
    })
    .unwrap();
    let d = producer.send(ProducerRecord::new("t", "x")).await.unwrap();
    d.await.unwrap();
    let st = state.lock().unwrap();
    assert!(st.metadata_requests > 3, "{}", st.metadata_requests);
    assert_eq!(st.logs[&0], vec![b"x".to_vec()]);
}

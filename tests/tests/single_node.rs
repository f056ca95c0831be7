//! End-to-end tests of one broker process through real TCP: the Rust client, the raw protocol,
//! the `rafka` CLI, crashes and bad input.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rafka_client::connection::{Connection, ConnectionConfig};
use rafka_client::{
    Acks, Admin, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig,
    ProducerRecord, SeekTo, TopicPartition,
};
use rafka_protocol::messages::*;
use rafka_protocol::{BatchBuilder, BatchOptions, ErrorCode, Timestamp};
use rafka_tests::harness::{http_get, rafka, seed, Broker};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const T: Duration = Duration::from_secs(10);

fn producer(bootstrap: &str, acks: Acks) -> Producer {
    Producer::new(ProducerConfig {
        bootstrap: bootstrap.into(),
        acks,
        ..ProducerConfig::default()
    })
    .expect("producer")
}

fn consumer(bootstrap: &str) -> Consumer {
    Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.into(),
        ..ConsumerConfig::default()
    })
    .expect("consumer")
}

async fn create(bootstrap: &str, topic: NewTopic) {
    Admin::new(ClientConfig::new(bootstrap))
        .unwrap()
        .create_topic(topic)
        .await
        .expect("create topic");
}

/// Reads every record of `partitions` from the start until `count` have arrived.
async fn consume_all(
    bootstrap: &str,
    topic: &str,
    partitions: u32,
    count: usize,
) -> BTreeMap<u32, Vec<(u64, Bytes)>> {
    let mut c = consumer(bootstrap);
    let tps: Vec<TopicPartition> = (0..partitions)
        .map(|p| TopicPartition::new(topic, p))
        .collect();
    c.assign(tps.clone());
    for tp in &tps {
        c.seek(tp, SeekTo::Earliest).await.unwrap();
    }
    let mut got: BTreeMap<u32, Vec<(u64, Bytes)>> = BTreeMap::new();
    let mut n = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while n < count {
        assert!(Instant::now() < deadline, "consumed only {n} of {count}");
        for r in c.poll(Duration::from_millis(500)).await.expect("poll") {
            got.entry(r.partition)
                .or_default()
                .push((r.offset.0, r.value.unwrap_or_default()));
            n += 1;
        }
    }
    got
}

async fn raw_connection(bootstrap: &str) -> Connection {
    Connection::connect(bootstrap, &ConnectionConfig::default())
        .await
        .expect("connect")
}

fn batch_of(values: &[&[u8]]) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for v in values {
        b.append(Some(Timestamp::now()), None, Some(v), &[]);
    }
    b.build()
}

async fn produce_raw(
    conn: &Connection,
    topic: &str,
    partition: u32,
    records: Bytes,
) -> ProducePartitionResult {
    let resp = conn
        .send(
            ProduceRequest {
                acks: -1,
                timeout_ms: 10_000,
                topics: vec![ProduceTopic {
                    name: topic.into(),
                    partitions: vec![ProducePartition { partition, records }],
                }],
            },
            T,
        )
        .await
        .expect("produce response");
    resp.topics[0].partitions[0].clone()
}

async fn fetch_raw(
    conn: &Connection,
    topic: &str,
    offset: u64,
    max_wait_ms: u32,
) -> FetchPartitionResult {
    let resp = conn
        .send(
            FetchRequest {
                max_wait_ms,
                min_bytes: 1,
                max_bytes: 1 << 20,
                isolation_level: 0,
                topics: vec![FetchTopic {
                    name: topic.into(),
                    partitions: vec![FetchPartition {
                        partition: 0,
                        fetch_offset: offset,
                        partition_max_bytes: 1 << 20,
                    }],
                }],
            },
            Duration::from_secs(60),
        )
        .await
        .expect("fetch response");
    resp.topics[0].partitions[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_records_round_trip_complete_and_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("b"));
    let bs = broker.bootstrap();
    create(&bs, NewTopic::new("bulk").partitions(4)).await;
    let mut rng = StdRng::seed_from_u64(seed("round_trip"));
    let p = producer(&bs, Acks::All);
    let mut sent: BTreeMap<u32, Vec<(u64, Bytes)>> = BTreeMap::new();
    let mut pending = Vec::new();
    const N: usize = 100_000;
    for i in 0..N {
        let len = rng.gen_range(0..200);
        let mut v = format!("{i}:").into_bytes();
        v.extend((0..len).map(|_| rng.gen::<u8>()));
        let v = Bytes::from(v);
        let key = format!("key-{}", rng.gen_range(0..1000));
        let d = p
            .send(ProducerRecord::new("bulk", v.clone()).with_key(key))
            .await
            .expect("send");
        pending.push((v, d));
    }
    for (v, d) in pending {
        let md = d.await.expect("acknowledged");
        sent.entry(md.partition)
            .or_default()
            .push((md.offset.expect("acks=all reports the offset").0, v));
    }
    for recs in sent.values_mut() {
        recs.sort_by_key(|(o, _)| *o);
    }
    let got = consume_all(&bs, "bulk", 4, N).await;
    assert_eq!(got.len(), sent.len());
    for (partition, want) in &sent {
        let have = &got[partition];
        assert_eq!(have.len(), want.len(), "partition {partition} record count");
        for (i, ((wo, wv), (ho, hv))) in want.iter().zip(have).enumerate() {
            assert_eq!(wo, ho, "partition {partition} offset at {i}");
            assert_eq!(wv, hv, "partition {partition} bytes at offset {wo}");
            // Raft's own entries (membership, leader blanks) are control batches at the start
            // of the log; the records after them have dense offsets.
            assert_eq!(*ho, have[0].0 + i as u64, "offsets are dense");
        }
    }
    // The idempotent producer pipelines up to five batches per partition: the client must put
    // them on the connection, and the broker hand them to Raft, in sequence order. A batch
    // overtaken on the way is refused as out of order (and retried after a backoff).
    let metrics = http_get(broker.metrics_port, "/metrics").unwrap().1;
    let refused: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("rafka_produce_sequence_refusals_total"))
        .collect();
    assert!(
        refused.is_empty(),
        "pipelined batches reached the sequencer out of order: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_when_data_arrives_and_empty_after_max_wait() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("b"));
    let bs = broker.bootstrap();
    create(&bs, NewTopic::new("lp")).await;
    let conn = raw_connection(&bs).await;

    // The log starts with Raft's control batches (membership, leader blank): wait at its end.
    let end = fetch_raw(&conn, "lp", 0, 0).await.high_watermark;
    // No data: the fetch waits max_wait, then returns empty (not an error).
    let started = Instant::now();
    let r = fetch_raw(&conn, "lp", end, 300).await;
    assert_eq!(r.error_code, 0);
    assert!(r.records.is_empty());
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "returned before max_wait"
    );

    // Data arriving during a 20 s wait ends it at once. The fetch is sent first; the produce
    // is sent only once the broker holds it (its in-flight fetch shows in the request count
    // only when it completes, so order them through one connection's pipelining instead).
    let waiting = {
        let conn = conn.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let r = fetch_raw(&conn, "lp", end, 20_000).await;
            (r, started.elapsed())
        })
    };
    let writer = raw_connection(&bs).await;
    let p = produce_raw(&writer, "lp", 0, batch_of(&[b"wake up"])).await;
    assert_eq!(p.error_code, 0);
    let (r, waited) = waiting.await.unwrap();
    assert_eq!(r.error_code, 0);
    assert!(
        !r.records.is_empty(),
        "the long poll returned the new record"
    );
    assert!(
        waited < Duration::from_secs(15),
        "long poll waited {waited:?}: it must end when data arrives"
    );
    assert_eq!(r.high_watermark, end + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_their_error_codes_and_clear_cli_messages() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("b"));
    let bs = broker.bootstrap();
    create(
        &bs,
        NewTopic::new("small").config("max.message.bytes", "1024"),
    )
    .await;
    let conn = raw_connection(&bs).await;

    let r = produce_raw(&conn, "missing", 0, batch_of(&[b"x"])).await;
    assert_eq!(
        ErrorCode::from_code(r.error_code),
        ErrorCode::UnknownTopicOrPartition
    );
    let r = produce_raw(&conn, "small", 7, batch_of(&[b"x"])).await;
    assert_eq!(
        ErrorCode::from_code(r.error_code),
        ErrorCode::UnknownTopicOrPartition
    );
    let big = vec![b'z'; 4000];
    let r = produce_raw(&conn, "small", 0, batch_of(&[&big])).await;
    assert_eq!(
        ErrorCode::from_code(r.error_code),
        ErrorCode::RecordListTooLarge
    );
    let mut corrupt = bytes::BytesMut::from(&batch_of(&[b"y"])[..]);
    let n = corrupt.len();
    corrupt[n - 1] ^= 1;
    let r = produce_raw(&conn, "small", 0, corrupt.freeze()).await;
    assert_eq!(
        ErrorCode::from_code(r.error_code),
        ErrorCode::CorruptMessage
    );
    let r = fetch_raw(&conn, "small", 5, 0).await;
    assert_eq!(
        ErrorCode::from_code(r.error_code),
        ErrorCode::OffsetOutOfRange
    );

    // A request that partly fails: the good partition is written, the bad one reported.
    let resp = conn
        .send(
            ProduceRequest {
                acks: -1,
                timeout_ms: 1000,
                topics: vec![ProduceTopic {
                    name: "small".into(),
                    partitions: vec![
                        ProducePartition {
                            partition: 0,
                            records: batch_of(&[b"ok"]),
                        },
                        ProducePartition {
                            partition: 3,
                            records: batch_of(&[b"lost"]),
                        },
                    ],
                }],
            },
            T,
        )
        .await
        .unwrap();
    let parts = &resp.topics[0].partitions;
    assert_eq!(parts[0].error_code, 0);
    assert_eq!(
        ErrorCode::from_code(parts[1].error_code),
        ErrorCode::UnknownTopicOrPartition
    );

    // The CLI says what went wrong in one line and exits non-zero.
    let (code, _, err) = rafka(&bs, &["produce", "missing"], "a\n");
    assert_ne!(code, 0);
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains("missing"), "{err}");
    let (code, _, err) = rafka(
        &bs,
        &["consume", "small", "--from", "99", "--max-messages", "1"],
        "",
    );
    assert_ne!(code, 0);
    assert!(
        err.to_lowercase().contains("out of range") || err.contains("OFFSET_OUT_OF_RANGE"),
        "{err}"
    );
    let (code, _, err) = rafka(&bs, &["topic", "create", "bad/name"], "");
    assert_ne!(code, 0);
    assert!(
        err.contains("INVALID_TOPIC") || err.to_lowercase().contains("invalid"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_closes_only_the_offending_connection() {
    let dir = tempfile::tempdir().unwrap();
    let broker = Broker::start(&dir.path().join("b"));
    let bs = broker.bootstrap();
    create(&bs, NewTopic::new("g")).await;
    let good = raw_connection(&bs).await;
    let start = fetch_raw(&good, "g", 0, 0).await.high_watermark;
    assert_eq!(
        produce_raw(&good, "g", 0, batch_of(&[b"before"]))
            .await
            .error_code,
        0
    );

    let mut seed_rng = StdRng::seed_from_u64(seed("garbage"));
    let cases: Vec<Vec<u8>> = vec![
        vec![0xff, 0xff, 0xff, 0xff, 1, 2, 3], // a frame far over the limit
        vec![0, 0, 0, 6, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff], // an undecodable header
        (0..4096).map(|_| seed_rng.gen()).collect(), // random bytes
    ];
    for junk in cases {
        let mut s = std::net::TcpStream::connect(&bs).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = s.write_all(&junk);
        let mut buf = [0u8; 64];
        // The broker closes the connection (EOF or reset), it does not hang or crash.
        match s.read(&mut buf) {
            Ok(0) | Err(_) => {}
            Ok(n) => {
                // Random bytes may form a frame with a decodable header: an error answer is
                // fine too, as long as the broker keeps serving others.
                assert!(n > 0);
            }
        }
        assert_eq!(
            produce_raw(&good, "g", 0, batch_of(&[b"during"]))
                .await
                .error_code,
            0
        );
    }
    // An unknown API gets an error response and the connection stays usable.
    let mut s = std::net::TcpStream::connect(&bs).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let roundtrip = |s: &mut std::net::TcpStream, api_key: u32, correlation_id: u32| {
        let header = RequestHeader {
            api_key,
            api_version: 1,
            correlation_id,
            client_id: "test".into(),
        };
        let body = rafka_protocol::frame::encode_request(
            &header,
            &MetadataRequest {
                topics: vec!["g".into()],
            },
        );
        s.write_all(&(body.len() as u32).to_be_bytes()).unwrap();
        s.write_all(&body).unwrap();
        let mut len = [0u8; 4];
        s.read_exact(&mut len).unwrap();
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        s.read_exact(&mut frame).unwrap();
        rafka_protocol::frame::decode_response_header(Bytes::from(frame)).unwrap()
    };
    let (h, _) = roundtrip(&mut s, 99, 7);
    assert_eq!(h.correlation_id, 7);
    assert_eq!(
        ErrorCode::from_code(h.error_code),
        ErrorCode::UnsupportedVersion
    );
    let (h, body) = roundtrip(&mut s, rafka_protocol::ApiKey::Metadata as u32, 8);
    assert_eq!((h.correlation_id, h.error_code), (8, 0));
    let md: MetadataResponse = rafka_protocol::frame::decode_body(body).unwrap();
    assert_eq!(md.topics[0].error_code, 0);
    assert_eq!(
        http_get(broker.metrics_port, "/health").map(|r| r.0),
        Some(200)
    );
    let r = fetch_raw(&good, "g", 0, 0).await;
    assert_eq!(r.high_watermark, start + 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("b"));
    let bs = broker.bootstrap();
    create(&bs, NewTopic::new("durable").partitions(2)).await;
    let p = producer(&bs, Acks::All);
    let mut acked = Vec::new();
    for i in 0..5_000u32 {
        let d = p
            .send(ProducerRecord::new("durable", format!("v{i}")).with_partition(i % 2))
            .await
            .unwrap();
        acked.push((i, d));
    }
    let mut want: BTreeMap<u32, Vec<(u64, Bytes)>> = BTreeMap::new();
    for (i, d) in acked {
        let md = d.await.expect("acked");
        want.entry(md.partition)
            .or_default()
            .push((md.offset.unwrap().0, Bytes::from(format!("v{i}"))));
    }
    drop(p);
    broker.kill();
    broker.restart();
    let got = consume_all(&bs, "durable", 2, 5_000).await;
    for (part, mut w) in want {
        w.sort_by_key(|(o, _)| *o);
        assert_eq!(got[&part], w, "partition {part} after SIGKILL");
    }
    // One more acknowledged write after the restart, so the write-path metrics exist too.
    let p = producer(&bs, Acks::All);
    let d = p
        .send(ProducerRecord::new("durable", "after"))
        .await
        .unwrap();
    d.await.expect("acked after restart");
    // Scrape once the housekeeping pass has published the partition gauges.
    let deadline = Instant::now() + Duration::from_secs(10);
    let metrics = loop {
        let m = http_get(broker.metrics_port, "/metrics").unwrap().1;
        if m.contains("rafka_log_end_offset") || Instant::now() > deadline {
            break m;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for name in [
        "rafka_requests_total{api=\"fetch\"}",
        "rafka_request_duration_seconds_bucket",
        "rafka_bytes_out_total{topic=\"durable\"}",
        "rafka_bytes_in_total{topic=\"durable\"}",
        "rafka_connections",
        "rafka_log_end_offset{topic=\"durable\",partition=\"0\"}",
        "rafka_log_start_offset",
        "rafka_log_segments",
        "rafka_log_size_bytes",
        "rafka_log_flush_seconds_bucket",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_produce_offsets_match_cli_consume() {
    let dir = tempfile::tempdir().unwrap();
    let mut broker = Broker::start(&dir.path().join("b"));
    let bs = broker.bootstrap();
    let (code, _, err) = rafka(&bs, &["topic", "create", "cli", "--partitions", "3"], "");
    assert_eq!(code, 0, "{err}");
    let input: String = (0..300)
        .map(|i| format!("k{}\tvalue {i}\n", i % 7))
        .collect();
    let (code, out, err) = rafka(
        &bs,
        &[
            "produce",
            "cli",
            "--key-separator",
            "\t",
            "--acks",
            "all",
            "--format",
            "json",
        ],
        &input,
    );
    assert_eq!(code, 0, "{err}");
    let mut produced = BTreeMap::new();
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let n = v["line"].as_u64().unwrap();
        produced.insert(
            (
                v["partition"].as_u64().unwrap(),
                v["offset"].as_u64().unwrap(),
            ),
            n,
        );
    }
    assert_eq!(produced.len(), 300);
    let (code, out, err) = rafka(
        &bs,
        &[
            "consume",
            "cli",
            "--format",
            "json",
            "--max-messages",
            "300",
            "--from",
            "earliest",
        ],
        "",
    );
    assert_eq!(code, 0, "{err}");
    let mut consumed = 0;
    for line in out.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("json line");
        let key = (
            v["partition"].as_u64().unwrap(),
            v["offset"].as_u64().unwrap(),
        );
        let n = produced
            .get(&key)
            .unwrap_or_else(|| panic!("consumed {key:?} was never produced"));
        assert_eq!(v["value"], format!("value {}", n - 1));
        assert_eq!(v["key"], format!("k{}", (n - 1) % 7));
        assert_eq!(v["topic"], "cli");
        consumed += 1;
    }
    assert_eq!(consumed, 300);
    let (code, out, _) = rafka(&bs, &["topic", "describe", "cli"], "");
    assert_eq!(code, 0);
    assert!(out.contains("cli"));
    let status = broker.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}");
}

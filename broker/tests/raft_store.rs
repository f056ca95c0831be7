//! The Raft log storage over the segmented log: entries map onto batches, survive a reopen,
//! and truncation, purging and snapshot resets keep the index-to-offset map and the log in
//! step. Seeded: a failure prints its seed (replay with RAFKA_TEST_SEED).

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::{BasicNode, EntryPayload};
use rafka_broker::fs::Fs;
use rafka_broker::log::{FlushPolicy, Log, LogConfig};
use rafka_broker::replica::store::{LogStore, Shared};
use rafka_protocol::batch::{BatchBuilder, BatchOptions};
use rafka_protocol::Offset;
use rafka_raft::entry::log_id;
use rafka_raft::types::{Entry, Membership};
use rafka_raft::{Batch, GroupId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const GROUP: GroupId = GroupId(7 << 32);

fn config() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Manual,
        segment_bytes: 4096,
        ..LogConfig::default()
    }
}

fn open(dir: &std::path::Path) -> LogStore {
    let log = Log::open(dir, config(), Fs::real()).unwrap();
    LogStore::new(Shared::open(GROUP, Arc::new(log), Fs::real()).unwrap())
}

fn data(records: usize, tag: u64) -> Bytes {
    let mut b = BatchBuilder::new(BatchOptions::default());
    for i in 0..records {
        b.append(None, None, Some(format!("{tag}-{i}").as_bytes()), &[]);
    }
    b.build()
}

fn entry(term: u64, index: u64, records: usize) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Batch(data(records, index))),
    }
}

/// Appends through openraft's interface and waits for the durable callback.
async fn append(store: &mut LogStore, entries: Vec<Entry>) {
    store.append_durably(entries).await.unwrap();
}

fn seed() -> u64 {
    let s = std::env::var("RAFKA_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("raft_store seed: {s} (replay with RAFKA_TEST_SEED={s})");
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_map_onto_batches_and_survive_truncation_purge_and_reopen() {
    let mut rng = StdRng::seed_from_u64(seed());
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let members: BTreeMap<u64, BasicNode> = (1..=3).map(|n| (n, BasicNode::new("x"))).collect();
    let membership = Entry {
        log_id: log_id(0, 0),
        payload: EntryPayload::Membership(Membership::new(
            vec![members.keys().copied().collect()],
            members,
        )),
    };
    let blank = Entry {
        log_id: log_id(1, 1),
        payload: EntryPayload::Blank,
    };
    append(&mut store, vec![membership, blank]).await;
    // Model: per index, (term, record count).
    let mut model: Vec<(u64, usize)> = vec![(0, 1), (1, 1)];
    for i in 2..60u64 {
        let n = rng.gen_range(1..20);
        append(&mut store, vec![entry(1, i, n)]).await;
        model.push((1, n));
    }
    let check = |store: &LogStore, model: &[(u64, usize)], first: u64| {
        let shared = store.shared();
        let mut offset = shared.offset_of(first).unwrap().0;
        for (i, (_, n)) in model.iter().enumerate().skip(first as usize) {
            assert_eq!(
                shared.offset_of(i as u64),
                Some(Offset(offset)),
                "entry {i} base offset"
            );
            offset += *n as u64;
        }
        assert_eq!(shared.log.log_end_offset(), Offset(offset), "log end");
    };
    check(&store, &model, 0);

    // A leader change: the suffix from 40 is replaced by entries of term 2.
    store.truncate(log_id(1, 40)).await.unwrap();
    model.truncate(40);
    for i in 40..50u64 {
        let n = rng.gen_range(1..5);
        append(&mut store, vec![entry(2, i, n)]).await;
        model.push((2, n));
    }
    check(&store, &model, 0);
    let got = store.try_get_log_entries(38..42).await.unwrap();
    let terms: Vec<u64> = got.iter().map(|e| e.log_id.leader_id.term).collect();
    assert_eq!(terms, vec![1, 1, 2, 2]);
    assert_eq!(got[0].log_id.index, 38);

    // Purge the first 20 entries; the log start moves to entry 20's offset.
    let cut = store.shared().offset_of(20).unwrap();
    store.purge(log_id(1, 19)).await.unwrap();
    assert_eq!(store.shared().log.log_start_offset(), cut);
    assert!(store.try_get_log_entries(10..12).await.is_err());

    // Reopen: the same map, state and entries.
    drop(store);
    let mut store = open(dir.path());
    check(&store, &model, 20);
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 19)));
    assert_eq!(state.last_log_id, Some(log_id(2, 49)));
    let e = store.try_get_log_entries(45..46).await.unwrap();
    match &e[0].payload {
        EntryPayload::Normal(Batch(b)) => {
            let batch = rafka_protocol::RecordBatch::parse(b.clone()).unwrap();
            let v = batch.records().next().unwrap().unwrap().value.unwrap();
            assert_eq!(&v[..], b"45-0");
        }
        other => panic!("entry 45 is {other:?}"),
    }

    // A snapshot past the end (a lagging follower) empties the log and continues there.
    let next = Offset(10_000);
    store
        .shared()
        .reset_to_snapshot(log_id(3, 500), next)
        .unwrap();
    store.purge(log_id(3, 500)).await.unwrap();
    append(&mut store, vec![entry(3, 501, 2)]).await;
    assert_eq!(store.shared().offset_of(501), Some(next));
    drop(store);
    let mut store = open(dir.path());
    let state = store.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3, 500)));
    assert_eq!(state.last_log_id, Some(log_id(3, 501)));
    assert_eq!(store.shared().offset_of(501), Some(next));
    assert_eq!(store.shared().log.log_end_offset(), Offset(10_002));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vote_is_durable_and_an_out_of_order_append_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = open(dir.path());
    let vote = openraft::Vote::new(4, 2);
    store.save_vote(&vote).await.unwrap();
    assert!(
        store.append_durably(vec![entry(1, 5, 1)]).await.is_err(),
        "entry 5 cannot follow an empty log"
    );
    drop(store);
    let mut store = open(dir.path());
    assert_eq!(store.read_vote().await.unwrap(), Some(vote));
}

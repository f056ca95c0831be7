//! openraft's log storage on top of the segmented log: the partition log *is* the Raft log.
//!
//! Each Raft entry is one batch of the log (see `rafka_raft::entry`), so entry `i` is the
//! `i - first`-th batch after the purge point. [`IndexMap`] is the one place that translates a
//! Raft index into a record offset; nothing outside this module stores a Raft index for long.
//! The map lives in memory and is rebuilt at start-up from the batch headers (not the records).
//!
//! Small Raft state that is not in the log (vote, purge point, last applied entry, last
//! membership) lives in `raft-meta.json` next to the segments, replaced atomically (write, fsync,
//! rename, fsync the directory) whenever the vote or the purge point changes.
//!
//! Durability: appends land in the page cache and are readable at once; a per-group flusher
//! fdatasyncs and only then tells openraft the entries are durable, so votes are granted and
//! commits counted only on fsynced data. One fdatasync covers every append queued before it.

use std::collections::{HashMap, VecDeque};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{ErrorSubject, ErrorVerb, StorageIOError};
use rafka_protocol::batch::BatchHeader;
use rafka_protocol::{LeaderEpoch, Offset};
use rafka_raft::entry;
use rafka_raft::types::{Entry, LogId, StorageError, StoredMembership, Vote};
use rafka_raft::{GroupId, TypeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::fs::Fs;
use crate::log::{FlushPolicy, Log};

const META_FILE: &str = "raft-meta.json";
/// Appends waiting for their flush, per group.
const FLUSH_QUEUE_DEPTH: usize = 1024;
/// Most bytes of entries one replication read returns (it always returns at least one).
const READ_BYTES_MAX: usize = 8 << 20;
/// Most bytes of recent entries a group keeps in memory (see [`Recent`]).
const RECENT_BYTES_MAX: usize = 16 << 20;
/// Bytes of already applied entries a group keeps for a follower that is a round behind.
const RECENT_APPLIED_BYTES_MAX: usize = 1 << 20;

/// Raft state kept beside the log.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RaftMeta {
    /// The group this directory belongs to (a recreated topic gets a new group).
    pub group: u64,
    pub vote: Option<Vote>,
    /// The last entry removed from the log, and the offset where the entry after it starts.
    pub last_purged: Option<LogId>,
    pub purge_offset: u64,
    /// The last applied entry as of the last write (a lower bound: applying again is harmless).
    pub applied: Option<LogId>,
    pub membership: StoredMembership,
}

/// Raft index -> record offset for the entries in the log.
#[derive(Debug)]
struct IndexMap {
    /// Index of the first entry still in the log (last purged + 1).
    first: u64,
    /// Base offset of each entry, from `first` on.
    bases: VecDeque<Offset>,
    /// Term of the last entry.
    last_term: u64,
}

impl IndexMap {
    fn next_index(&self) -> u64 {
        self.first + self.bases.len() as u64
    }
}

/// The entries most recently appended, in memory.
///
/// Every entry is read back soon after it is written: by the leader once per follower to
/// replicate it, and by every replica to apply it. Reading it from the log costs a copy out of
/// the page cache and a trip to the blocking pool each time, on the path every acks=all
/// produce waits for, so the entries from the oldest one not yet applied (plus a little
/// already applied, for a follower a round behind) are kept here, as the same `Bytes` that
/// were appended. Reads of anything else go to the log. Bounded per group by
/// [`RECENT_BYTES_MAX`]; an idle group keeps at most [`RECENT_APPLIED_BYTES_MAX`].
#[derive(Default)]
struct Recent {
    /// Index of `entries[0]`.
    first: u64,
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn next_index(&self) -> u64 {
        self.first + self.entries.len() as u64
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
            self.first += 1;
        }
    }

    /// Adds the entry just appended to the log.
    fn push(&mut self, e: &Entry) {
        let index = e.log_id.index;
        if self.entries.is_empty() || self.next_index() != index {
            self.clear();
            self.first = index;
        }
        let size = match &e.payload {
            openraft::EntryPayload::Normal(rafka_raft::Batch(b)) => b.len(),
            _ => 64,
        };
        self.entries.push_back((e.clone(), size));
        self.bytes += size;
        while self.bytes > RECENT_BYTES_MAX && self.entries.len() > 1 {
            self.pop_front();
        }
    }

    /// Forgets the entries from `index` on (the log was truncated there).
    fn truncate(&mut self, index: u64) {
        if index <= self.first {
            self.clear();
        } else {
            while self.next_index() > index {
                if let Some((_, size)) = self.entries.pop_back() {
                    self.bytes -= size;
                }
            }
        }
    }

    /// Forgets entries before `index` (purged), and applied ones through `applied` beyond
    /// the applied allowance.
    fn forget(&mut self, index: u64, applied: Option<u64>) {
        while !self.entries.is_empty() && self.first < index {
            self.pop_front();
        }
        if let Some(applied) = applied {
            while !self.entries.is_empty()
                && self.first <= applied
                && self.bytes > RECENT_APPLIED_BYTES_MAX
            {
                self.pop_front();
            }
        }
    }

    /// The entries `start..end`, up to about `max_bytes` (at least one), if all are here.
    fn get(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        if self.entries.is_empty() || start < self.first || end > self.next_index() {
            return None;
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut bytes = 0;
        for (e, size) in self
            .entries
            .range((start - self.first) as usize..(end - self.first) as usize)
        {
            if !out.is_empty() && bytes >= max_bytes {
                break;
            }
            out.push(e.clone());
            bytes += size;
        }
        Some(out)
    }
}

/// What the log store and the state machine of one group share.
pub struct Shared {
    pub group: GroupId,
    pub log: Arc<Log>,
    fs: Fs,
    meta_path: PathBuf,
    meta: Mutex<RaftMeta>,
    map: Mutex<IndexMap>,
    recent: Mutex<Recent>,
    /// Signalled when a snapshot install has reset the log (a purge past the end waits on it).
    reset: Notify,
    /// acks=1 producers waiting for their batch's local append, by the address of the batch's
    /// bytes (on the leader openraft hands storage the very `Bytes` the producer proposed).
    local_appends: Mutex<HashMap<usize, oneshot::Sender<Offset>>>,
}

impl Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Shared({})", self.group)
    }
}

fn io_err(verb: ErrorVerb, e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::new(ErrorSubject::Logs, verb, openraft::AnyError::new(&e)).into()
}

fn anyhow_err(verb: ErrorVerb, msg: String) -> StorageError {
    StorageIOError::new(ErrorSubject::Logs, verb, openraft::AnyError::error(msg)).into()
}

impl Shared {
    /// Opens the Raft view of `log`: reads `raft-meta.json`, finishes an interrupted purge, and
    /// maps every entry after the purge point onto its batch.
    pub fn open(group: GroupId, log: Arc<Log>, fs: Fs) -> crate::error::Result<Arc<Shared>> {
        let meta_path = log.dir().join(META_FILE);
        let meta: RaftMeta = crate::error::read_json_file(&meta_path, "Raft state")?
            .unwrap_or_else(|| RaftMeta {
                group: group.0,
                ..RaftMeta::default()
            });
        if meta.group != group.0 {
            return Err(crate::error::Error::BrokenDirectory {
                path: meta_path,
                reason: format!("it belongs to Raft group {}, not {}", meta.group, group.0),
            });
        }
        let purge_offset = Offset(meta.purge_offset);
        if log.log_start_offset() < purge_offset {
            // A purge recorded its point but crashed before deleting: finish it.
            log.delete_before(purge_offset)?;
        }
        let from = log.log_start_offset().max(purge_offset);
        let headers = log.batch_headers(from)?;
        let first = meta.last_purged.map_or(0, |l| l.index + 1);
        let last_term = headers
            .last()
            .map(|h| h.2 .0 as u64)
            .or(meta.last_purged.map(|l| l.leader_id.term))
            .unwrap_or(0);
        let map = IndexMap {
            first,
            bases: headers.iter().map(|h| h.0).collect(),
            last_term,
        };
        let shared = Arc::new(Shared {
            group,
            log,
            fs,
            meta_path,
            meta: Mutex::new(meta),
            map: Mutex::new(map),
            recent: Mutex::new(Recent::default()),
            reset: Notify::new(),
            local_appends: Mutex::new(HashMap::new()),
        });
        shared.persist_meta()?;
        Ok(shared)
    }

    /// The file system the group's files are written through.
    pub fn fs(&self) -> &Fs {
        &self.fs
    }

    fn map(&self) -> std::sync::MutexGuard<'_, IndexMap> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Entries through `index` are applied: the in-memory copy may let them go.
    pub fn applied_through(&self, index: u64) {
        self.recent().forget(0, Some(index));
    }

    /// The entries `start..end` (at most about `max_bytes`, at least one) from memory, if
    /// they are all there; `None` means read the log.
    fn recent_entries(&self, start: u64, end: u64, max_bytes: usize) -> Option<Vec<Entry>> {
        let end = end.min(self.map().next_index());
        if start >= end {
            return None;
        }
        self.recent().get(start, end, max_bytes)
    }

    pub fn meta(&self) -> RaftMeta {
        self.meta.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Changes the meta and writes it durably.
    pub fn update_meta(&self, f: impl FnOnce(&mut RaftMeta)) -> crate::error::Result<()> {
        let mut meta = self.meta.lock().unwrap_or_else(|e| e.into_inner());
        f(&mut meta);
        let raw = serde_json::to_vec(&*meta).expect("Raft meta serialises");
        self.fs
            .write_atomically(&self.meta_path, &raw)
            .map_err(crate::error::Error::io(&self.meta_path))
    }

    fn persist_meta(&self) -> crate::error::Result<()> {
        self.update_meta(|_| {})
    }

    /// The record offset where the entry at `index` starts; the log end for the next index.
    pub fn offset_of(&self, index: u64) -> Option<Offset> {
        let map = self.map();
        if index < map.first {
            return None;
        }
        let i = (index - map.first) as usize;
        match i.cmp(&map.bases.len()) {
            std::cmp::Ordering::Less => Some(map.bases[i]),
            std::cmp::Ordering::Equal => Some(self.log.log_end_offset()),
            std::cmp::Ordering::Greater => None,
        }
    }

    /// Registers interest in the local append of `batch` (acks=1): the receiver gets the batch's
    /// base offset once it is in this replica's log (not yet fsynced or committed).
    pub fn watch_local_append(&self, batch: &Bytes) -> oneshot::Receiver<Offset> {
        let (tx, rx) = oneshot::channel();
        self.local_appends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(batch.as_ptr() as usize, tx);
        rx
    }

    /// Drops a registration made by [`Shared::watch_local_append`].
    pub fn forget_local_append(&self, batch_ptr: usize) {
        self.local_appends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&batch_ptr);
    }

    /// The last entry that starts below `offset` (the entries a purge up to `offset` removes).
    pub fn index_before(&self, offset: Offset) -> Option<u64> {
        let map = self.map();
        let n = map.bases.partition_point(|b| *b < offset);
        (n > 0).then(|| map.first + n as u64 - 1)
    }

    /// The index of the last entry in the log, if any.
    pub fn last_index(&self) -> Option<u64> {
        let map = self.map();
        map.next_index().checked_sub(1).filter(|i| *i >= map.first)
    }

    /// Installs a snapshot ending at `last` whose next record offset is `next_offset`: unless the
    /// log already holds that entry, it is emptied and continues at `next_offset`.
    pub fn reset_to_snapshot(&self, last: LogId, next_offset: Offset) -> crate::error::Result<()> {
        // The log holds the snapshot's last entry only if it has that index *with that term*:
        // a divergent entry at the same index does not count.
        let holds = {
            let map = self.map();
            last.index >= map.first && last.index < map.next_index()
        } && self
            .read_entries(last.index, last.index + 1, 1)
            .ok()
            .and_then(|e| e.first().map(|e| e.log_id))
            == Some(last);
        if !holds {
            self.update_meta(|m| {
                m.last_purged = Some(last);
                m.purge_offset = next_offset.0;
            })?;
            self.log.delete_before(next_offset)?;
            if self.log.log_end_offset() > next_offset {
                self.log.truncate_to(next_offset)?;
            }
            self.recent().clear();
            let mut map = self.map();
            map.first = last.index + 1;
            map.bases.clear();
            map.last_term = last.leader_id.term;
        }
        self.reset.notify_waiters();
        Ok(())
    }

    /// Reads the entries `start..end` (at most about `max_bytes`, at least one).
    fn read_entries(
        &self,
        start: u64,
        end: u64,
        max_bytes: usize,
    ) -> Result<Vec<Entry>, StorageError> {
        let (first, next) = {
            let map = self.map();
            (map.first, map.next_index())
        };
        let end = end.min(next);
        if start >= end {
            return Ok(Vec::new());
        }
        if start < first {
            return Err(anyhow_err(
                ErrorVerb::Read,
                format!("entry {start} was purged (first is {first})"),
            ));
        }
        let mut out = Vec::with_capacity((end - start) as usize);
        let mut index = start;
        let mut from = self
            .offset_of(start)
            .ok_or_else(|| anyhow_err(ErrorVerb::Read, format!("no entry {start}")))?;
        let mut bytes = 0usize;
        while index < end && (out.is_empty() || bytes < max_bytes) {
            let r = self
                .log
                .read(from, max_bytes.min(READ_BYTES_MAX), None)
                .map_err(|e| io_err(ErrorVerb::Read, e))?;
            if r.batches.is_empty() {
                return Err(anyhow_err(
                    ErrorVerb::Read,
                    format!("entry {index} at offset {from} is missing from the log"),
                ));
            }
            let mut pos = 0;
            while pos < r.batches.len() && index < end {
                let h = BatchHeader::parse(&r.batches[pos..])
                    .map_err(|e| io_err(ErrorVerb::Read, e))?;
                let total = h.total_bytes();
                let e = entry::from_batch(index, r.batches.slice(pos..pos + total))
                    .map_err(|e| io_err(ErrorVerb::Read, e))?;
                out.push(e);
                bytes += total;
                index += 1;
                pos += total;
            }
            from = r.next_offset;
        }
        Ok(out)
    }
}

/// What to do once appended entries are durable (or the flush failed).
type Durable = Box<dyn FnOnce(std::io::Result<()>) + Send>;

/// openraft's log storage (and log reader) for one group.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    flusher: mpsc::Sender<(Durable, bool)>,
}

impl LogStore {
    /// Starts the group's flusher task.
    pub fn new(shared: Arc<Shared>) -> LogStore {
        let (tx, mut rx) = mpsc::channel::<(Durable, bool)>(FLUSH_QUEUE_DEPTH);
        let log = Arc::clone(&shared.log);
        let group = shared.group;
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiting = vec![first];
                while let Ok(more) = rx.try_recv() {
                    waiting.push(more);
                }
                let must_sync = waiting.iter().any(|(_, sync)| *sync);
                let result = if must_sync {
                    let log = Arc::clone(&log);
                    match tokio::task::spawn_blocking(move || log.flush()).await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                        Err(e) => Err(std::io::Error::other(e.to_string())),
                    }
                } else {
                    Ok(())
                };
                if let Err(e) = &result {
                    tracing::error!(%group, error = %e, "Raft log flush failed");
                }
                for (cb, _) in waiting {
                    let r = match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                    };
                    cb(r);
                }
            }
        });
        LogStore {
            shared,
            flusher: tx,
        }
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Appends `entries` (readable on return) and calls `durable` once they are durable.
    async fn append_with(&self, entries: Vec<Entry>, durable: Durable) -> Result<(), StorageError> {
        let shared = &self.shared;
        for e in entries {
            let expected = shared.map().next_index();
            if e.log_id.index != expected {
                return Err(anyhow_err(
                    ErrorVerb::Write,
                    format!(
                        "append of entry {} where {expected} is next",
                        e.log_id.index
                    ),
                ));
            }
            let batch: Bytes = entry::to_batch(&e);
            let ptr = batch.as_ptr() as usize;
            let term = e.log_id.leader_id.term;
            let info = shared
                .log
                .append(batch, LeaderEpoch(term as i32))
                .map_err(|err| io_err(ErrorVerb::Write, err))?;
            let waiter = shared
                .local_appends
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&ptr);
            if let Some(w) = waiter {
                let _ = w.send(info.base_offset);
            }
            let mut map = shared.map();
            map.bases.push_back(info.base_offset);
            map.last_term = term;
            drop(map);
            shared.recent().push(&e);
        }
        let sync = shared.log.config().flush == FlushPolicy::Manual;
        self.flusher
            .send((durable, sync))
            .await
            .map_err(|_| anyhow_err(ErrorVerb::Write, "the flusher has stopped".into()))
    }

    /// Appends and waits until the entries are durable (for tests and tools; openraft uses
    /// its callback).
    pub async fn append_durably(&self, entries: Vec<Entry>) -> Result<(), StorageError> {
        let (tx, rx) = oneshot::channel();
        self.append_with(
            entries,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await?;
        rx.await
            .map_err(|_| anyhow_err(ErrorVerb::Write, "the flusher has stopped".into()))?
            .map_err(|e| io_err(ErrorVerb::Write, e))
    }
}

fn range_to(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s + 1,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e + 1,
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let (start, end) = range_to(&range);
        if let Some(entries) = self.shared.recent_entries(start, end, usize::MAX) {
            return Ok(entries);
        }
        let shared = Arc::clone(&self.shared);
        // Unlimited: openraft asks for exactly what it needs (for applying, or a bounded
        // replication window).
        tokio::task::spawn_blocking(move || shared.read_entries(start, end, usize::MAX))
            .await
            .map_err(|e| anyhow_err(ErrorVerb::Read, e.to_string()))?
    }

    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry>, StorageError> {
        if let Some(entries) = self.shared.recent_entries(start, end, READ_BYTES_MAX) {
            return Ok(entries);
        }
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.read_entries(start, end, READ_BYTES_MAX))
            .await
            .map_err(|e| anyhow_err(ErrorVerb::Read, e.to_string()))?
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let meta = self.shared.meta();
        let map = self.shared.map();
        let last = if map.bases.is_empty() {
            meta.last_purged
        } else {
            Some(entry::log_id(map.last_term, map.next_index() - 1))
        };
        Ok(LogState {
            last_purged_log_id: meta.last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let vote = *vote;
        self.shared
            .update_meta(|m| m.vote = Some(vote))
            .map_err(|e| io_err(ErrorVerb::Write, e))
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(self.shared.meta().vote)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        self.append_with(entries, Box::new(move |r| callback.log_io_completed(r)))
            .await
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let shared = &self.shared;
        let Some(offset) = shared.offset_of(log_id.index) else {
            return Ok(());
        };
        shared
            .log
            .truncate_to(offset)
            .map_err(|e| io_err(ErrorVerb::Write, e))?;
        shared.recent().truncate(log_id.index);
        let mut map = shared.map();
        let keep = (log_id.index - map.first) as usize;
        map.bases.truncate(keep);
        if map.bases.is_empty() {
            map.last_term = shared.meta().last_purged.map_or(0, |l| l.leader_id.term);
        } else {
            // The term of the new last entry: read it back from its batch.
            drop(map);
            let last = log_id.index - 1;
            let e = shared.read_entries(last, last + 1, 1)?;
            if let Some(e) = e.first() {
                shared.map().last_term = e.log_id.leader_id.term;
            }
        }
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let shared = Arc::clone(&self.shared);
        let (first, next) = {
            let map = shared.map();
            (map.first, map.next_index())
        };
        if log_id.index < first {
            return Ok(());
        }
        if log_id.index >= next {
            // Past our last entry: only a snapshot install does that, and it resets the log
            // itself; wait for it.
            let wait = shared.reset.notified();
            if shared.map().first > log_id.index {
                return Ok(());
            }
            if tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .is_err()
                || shared.map().first <= log_id.index
            {
                return Err(anyhow_err(
                    ErrorVerb::Delete,
                    format!("purge to {} past the last entry {}", log_id.index, next),
                ));
            }
            return Ok(());
        }
        let cut = shared
            .offset_of(log_id.index + 1)
            .expect("the next entry's offset is known");
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            shared
                .update_meta(|m| {
                    m.last_purged = Some(log_id);
                    m.purge_offset = cut.0;
                })
                .map_err(|e| io_err(ErrorVerb::Delete, e))?;
            shared
                .log
                .delete_before(cut)
                .map_err(|e| io_err(ErrorVerb::Delete, e))?;
            shared.recent().forget(log_id.index + 1, None);
            let mut map = shared.map();
            let n = (log_id.index + 1 - map.first) as usize;
            map.bases.drain(..n);
            map.first = log_id.index + 1;
            Ok(())
        })
        .await
        .map_err(|e| anyhow_err(ErrorVerb::Delete, e.to_string()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rafka_raft::Batch;

    fn entry(index: u64, bytes: usize) -> Entry {
        Entry {
            log_id: entry::log_id(1, index),
            payload: openraft::EntryPayload::Normal(Batch(Bytes::from(vec![0u8; bytes]))),
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_serve_only_ranges_they_hold_whole() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(&entry(i, 100));
        }
        assert_eq!(indexes(r.get(5, 10, usize::MAX)), Some(vec![5, 6, 7, 8, 9]));
        assert_eq!(indexes(r.get(7, 9, usize::MAX)), Some(vec![7, 8]));
        assert_eq!(indexes(r.get(4, 9, usize::MAX)), None, "4 is not here");
        assert_eq!(indexes(r.get(5, 11, usize::MAX)), None, "10 is not here");
        // A byte limit stops after the entry that reaches it, and returns at least one.
        assert_eq!(indexes(r.get(5, 10, 150)), Some(vec![5, 6]));
        assert_eq!(indexes(r.get(5, 10, 1)), Some(vec![5]));
    }

    #[test]
    fn recent_entries_follow_truncation_purge_and_gaps() {
        let mut r = Recent::default();
        for i in 1..=6 {
            r.push(&entry(i, 10));
        }
        r.truncate(4);
        assert_eq!(r.next_index(), 4);
        assert_eq!(r.bytes, 30);
        // The new leader's entries continue from the truncation point.
        r.push(&entry(4, 10));
        assert_eq!(indexes(r.get(1, 5, usize::MAX)), Some(vec![1, 2, 3, 4]));
        r.forget(3, None);
        assert_eq!(indexes(r.get(3, 5, usize::MAX)), Some(vec![3, 4]));
        assert_eq!(r.get(2, 5, usize::MAX).map(|v| v.len()), None);
        // An entry that does not follow the last one (a snapshot moved the log) starts over.
        r.push(&entry(20, 10));
        assert_eq!(indexes(r.get(20, 21, usize::MAX)), Some(vec![20]));
        assert_eq!(r.bytes, 10);
        r.truncate(20);
        assert!(r.entries.is_empty());
        assert_eq!(r.bytes, 0);
    }

    #[test]
    fn recent_entries_stay_within_their_byte_bounds() {
        let mut r = Recent::default();
        let big = RECENT_BYTES_MAX / 4;
        for i in 0..10 {
            r.push(&entry(i, big));
        }
        assert!(r.bytes <= RECENT_BYTES_MAX, "{} bytes kept", r.bytes);
        assert_eq!(r.next_index(), 10);
        // Once applied, only the applied allowance stays.
        let mut r = Recent::default();
        for i in 0..100 {
            r.push(&entry(i, 64 << 10));
        }
        r.forget(0, Some(99));
        assert!(
            r.bytes <= RECENT_APPLIED_BYTES_MAX,
            "{} bytes kept",
            r.bytes
        );
        // Unapplied entries are kept whatever the allowance.
        let mut r = Recent::default();
        for i in 0..100 {
            r.push(&entry(i, 64 << 10));
        }
        r.forget(0, Some(10));
        assert_eq!(r.first, 11);
    }
}

//! The state machine of a partition group: deliberately small. Applying an entry moves the
//! high watermark (the exclusive bound readers may see) past the entry's records; the records
//! themselves are already in the log, which is the Raft log.
//!
//! Applying also feeds every producer batch to the partition's producer state (see
//! [`super::producers`]), the one piece of state derived from the records themselves.
//!
//! A snapshot is a position (the last applied entry, its membership and the next record
//! offset) plus the producer table. A follower that needs entries the leader no longer has
//! installs it, which empties its log and continues at that offset; it then replicates from
//! there. The producer table is also written to `producer-state.json` whenever the applied
//! position is persisted, so a restart replays only the log written since.

use std::io::Cursor;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb};
use rafka_protocol::Offset;
use rafka_raft::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership};
use rafka_raft::{Applied, TypeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::producers::{marker_kind, ProducerState, ProducerTable, STATE_FILE};
use super::store::Shared;
use super::{sm_err, snapshot_id};

/// How often the applied position is written to `raft-meta.json` (it only shortens the
/// replay after a restart, so it need not be current).
const APPLIED_PERSIST_INTERVAL: Duration = Duration::from_secs(2);
/// How often idle producers are looked for (expiry itself is `producer_id_expiration_ms`).
const PRODUCER_EXPIRY_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Bytes read at a time when replaying the log into the producer table.
const REPLAY_READ_BYTES: usize = 1 << 20;

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    next_offset: u64,
    /// Absent in snapshots written before idempotence existed.
    #[serde(default)]
    producers: Option<ProducerTable>,
}

/// The partition state machine.
pub struct PartitionSm {
    shared: Arc<Shared>,
    high_watermark: Arc<watch::Sender<Offset>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    persisted_at: Instant,
    producers: Arc<ProducerState>,
    /// Whether the producer table changed since it was last written.
    producers_dirty: Arc<AtomicBool>,
    /// A background write of the applied position is running.
    persisting: Arc<AtomicBool>,
    /// Held while the files are written: a write now and one in the background never
    /// interleave (they share the temporary file).
    writing: Arc<Mutex<()>>,
    expired_at: Instant,
}

impl PartitionSm {
    /// Restores the applied position from the meta file (never beyond the log's last entry)
    /// and sets the high watermark to match; restores the producer table from its file and
    /// replays the committed log written after it.
    pub fn new(
        shared: Arc<Shared>,
        high_watermark: Arc<watch::Sender<Offset>>,
        producer_id_expiration_ms: u64,
    ) -> (PartitionSm, Arc<ProducerState>) {
        let meta = shared.meta();
        let mut applied = meta.applied.max(meta.last_purged);
        if let (Some(a), Some(last)) = (applied, shared.last_index()) {
            if a.index > last && meta.last_purged.is_none_or(|p| a.index > p.index) {
                applied = meta.last_purged;
            }
        } else if shared.last_index().is_none() {
            applied = meta.last_purged;
        }
        let hw = applied
            .and_then(|a| shared.offset_of(a.index + 1))
            .unwrap_or_else(|| shared.log.log_start_offset());
        high_watermark.send_replace(hw);
        let table = restore_producers(&shared, hw);
        let producers = Arc::new(ProducerState::new(table, producer_id_expiration_ms));
        let sm = PartitionSm {
            shared,
            high_watermark,
            applied,
            membership: meta.membership,
            persisted_at: Instant::now(),
            producers: Arc::clone(&producers),
            producers_dirty: Arc::new(AtomicBool::new(false)),
            persisting: Arc::new(AtomicBool::new(false)),
            writing: Arc::new(Mutex::new(())),
            expired_at: Instant::now(),
        };
        (sm, producers)
    }

    fn next_offset(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    /// Writes the applied position and, if it changed, the producer table, now.
    fn persist(&mut self) -> Result<(), StorageError> {
        self.persisted_at = Instant::now();
        let _writing = self.writing.lock().unwrap_or_else(|e| e.into_inner());
        persist_state(
            &self.shared,
            &self.producers,
            &self.producers_dirty,
            self.applied,
            self.membership.clone(),
        )
    }

    /// [`PartitionSm::persist`] on the blocking pool, without waiting: the writes end in
    /// fsyncs and renames that took a Tokio worker (and every task queued behind it) for
    /// milliseconds under load, every interval, on every replica. One at a time; a failure
    /// is logged and the next interval writes again (the position only shortens a restart's
    /// replay).
    fn persist_in_background(&mut self) {
        if self.persisting.swap(true, Ordering::AcqRel) {
            return;
        }
        self.persisted_at = Instant::now();
        let shared = Arc::clone(&self.shared);
        let producers = Arc::clone(&self.producers);
        let dirty = Arc::clone(&self.producers_dirty);
        let persisting = Arc::clone(&self.persisting);
        let writing = Arc::clone(&self.writing);
        let (applied, membership) = (self.applied, self.membership.clone());
        tokio::task::spawn_blocking(move || {
            let _writing = writing.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = persist_state(&shared, &producers, &dirty, applied, membership) {
                tracing::error!(group = %shared.group, error = %e, "writing the applied position failed");
            }
            persisting.store(false, Ordering::Release);
        });
    }
}

/// Writes the applied position (as a lower bound) to the meta file, then the producer table if
/// it changed since its last write.
fn persist_state(
    shared: &Shared,
    producers: &ProducerState,
    dirty: &AtomicBool,
    applied: Option<LogId>,
    membership: StoredMembership,
) -> Result<(), StorageError> {
    shared
        .update_meta(|m| {
            // Never backwards: a background write may finish after a newer one.
            if m.applied
                .is_none_or(|a| applied.is_some_and(|n| n.index >= a.index))
            {
                m.applied = applied;
                m.membership = membership;
            }
        })
        .map_err(|e| sm_err(ErrorVerb::Write, e.to_string()))?;
    // After the meta: a table file newer than the applied position it is restored with
    // would be harmless too (applying a batch twice changes nothing), but never needed.
    let log_start = shared.log.log_start_offset().0;
    if producers.table().prune_aborted(log_start) {
        dirty.store(true, Ordering::Release);
    }
    if dirty.swap(false, Ordering::AcqRel) {
        let raw = serde_json::to_vec(&*producers.table()).expect("table serialises");
        let path = shared.log.dir().join(STATE_FILE);
        if let Err(e) = shared.fs().write_atomically(&path, &raw) {
            dirty.store(true, Ordering::Release);
            return Err(sm_err(ErrorVerb::Write, format!("{}: {e}", path.display())));
        }
    }
    Ok(())
}

/// The producer table as of the high watermark `hw`: the table file if it is usable, then the
/// committed log after it. A missing or unusable file means a replay from the log start
/// (producers whose batches retention removed are forgotten then: their next batch must
/// start a new epoch or get UNKNOWN_PRODUCER_ID).
fn restore_producers(shared: &Shared, hw: Offset) -> ProducerTable {
    let log = &shared.log;
    let path = log.dir().join(STATE_FILE);
    let from_file = match crate::error::read_json_file::<ProducerTable>(&path, "producer state") {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(error = %e, "ignoring the producer state file; replaying the log");
            None
        }
    };
    let start = log.log_start_offset();
    let mut table = match from_file {
        Some(t) if t.next_offset <= hw.0 && t.next_offset >= start.0 => t,
        Some(t) => {
            tracing::warn!(
                dir = %log.dir().display(),
                file_next_offset = t.next_offset,
                log_start = start.0,
                high_watermark = hw.0,
                "the producer state file does not fit the log; replaying the log"
            );
            ProducerTable {
                next_offset: start.0,
                ..ProducerTable::default()
            }
        }
        None => ProducerTable {
            next_offset: start.0,
            ..ProducerTable::default()
        },
    };
    let mut at = Offset(table.next_offset);
    while at < hw {
        let read = match log.read(at, REPLAY_READ_BYTES, Some(hw)) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "producer state replay stopped early");
                break;
            }
        };
        if read.next_offset <= at {
            break;
        }
        let mut rest = &read.batches[..];
        while let Ok(h) = rafka_protocol::BatchHeader::parse(rest) {
            let total = h.batch_length as usize + rafka_protocol::batch::LOG_OVERHEAD_BYTES;
            if h.base_offset >= at {
                let marker = marker_kind(&h, rest);
                table.apply(&h, h.base_offset, marker);
            }
            if total >= rest.len() {
                break;
            }
            rest = &rest[total..];
        }
        at = read.next_offset;
        table.advance_to(at);
    }
    table
}

/// A snapshot of the partition state machine, taken when openraft asks for a builder: the
/// builder runs later, in another task, while the state machine goes on applying, so it must
/// not read the live high watermark (a snapshot of entry X claiming the next offset after a
/// later entry Y would start an installing follower's log at the wrong offset).
pub struct PartitionSnapshot {
    applied: Option<LogId>,
    membership: StoredMembership,
    next_offset: Offset,
    producers: ProducerTable,
}

impl PartitionSnapshot {
    fn build(&self) -> Snapshot<TypeConfig> {
        let data = serde_json::to_vec(&SnapshotData {
            next_offset: self.next_offset.0,
            producers: Some(self.producers.clone()),
        })
        .expect("snapshot serialises");
        Snapshot {
            meta: SnapshotMeta {
                last_log_id: self.applied,
                last_membership: self.membership.clone(),
                snapshot_id: snapshot_id(self.applied),
            },
            snapshot: Box::new(Cursor::new(data)),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for PartitionSnapshot {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        Ok(self.build())
    }
}

impl PartitionSm {
    fn snapshot(&self) -> PartitionSnapshot {
        PartitionSnapshot {
            applied: self.applied,
            membership: self.membership.clone(),
            next_offset: self.next_offset(),
            producers: self.producers.table().clone(),
        }
    }
}

impl RaftStateMachine<TypeConfig> for PartitionSm {
    type SnapshotBuilder = PartitionSnapshot;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut out = Vec::new();
        let mut membership_changed = false;
        for e in entries {
            let index = e.log_id.index;
            let (Some(base), Some(next)) = (
                self.shared.offset_of(index),
                self.shared.offset_of(index + 1),
            ) else {
                return Err(sm_err(
                    ErrorVerb::Write,
                    format!("applied entry {index} is not in the log"),
                ));
            };
            match &e.payload {
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                    membership_changed = true;
                }
                EntryPayload::Normal(rafka_raft::Batch(bytes)) => {
                    if let Ok(h) = rafka_protocol::BatchHeader::parse(bytes) {
                        if h.producer_id != rafka_protocol::ProducerId::NONE {
                            let marker = marker_kind(&h, bytes);
                            self.producers.table().apply(&h, base, marker);
                            self.producers_dirty.store(true, Ordering::Release);
                        }
                    }
                }
                EntryPayload::Blank => {}
            }
            self.producers.table().advance_to(next);
            self.applied = Some(e.log_id);
            self.high_watermark.send_if_modified(|hw| {
                if next > *hw {
                    *hw = next;
                    true
                } else {
                    false
                }
            });
            out.push(Applied {
                base_offset: base.0,
                last_offset: next.0.saturating_sub(1),
                outcome: None,
            });
        }
        if self.expired_at.elapsed() >= PRODUCER_EXPIRY_CHECK_INTERVAL {
            self.expired_at = Instant::now();
            let now = rafka_protocol::Timestamp::now().as_millis();
            let expiration_ms = self.producers.expiration_ms;
            if self.producers.table().expire(now, expiration_ms) > 0 {
                self.producers_dirty.store(true, Ordering::Release);
            }
        }
        if let Some(applied) = self.applied {
            self.shared.applied_through(applied.index);
        }
        if membership_changed {
            self.persist()?;
        } else if self.persisted_at.elapsed() >= APPLIED_PERSIST_INTERVAL {
            self.persist_in_background();
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> PartitionSnapshot {
        self.snapshot()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data: SnapshotData = serde_json::from_slice(snapshot.get_ref())
            .map_err(|e| sm_err(ErrorVerb::Read, format!("bad partition snapshot: {e}")))?;
        let Some(last) = meta.last_log_id else {
            return Ok(());
        };
        let next = Offset(data.next_offset);
        *self.producers.table() = data.producers.unwrap_or_else(|| ProducerTable {
            next_offset: next.0,
            ..ProducerTable::default()
        });
        self.producers_dirty.store(true, Ordering::Release);
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.reset_to_snapshot(last, next))
            .await
            .map_err(|e| sm_err(ErrorVerb::Write, e.to_string()))?
            .map_err(|e| sm_err(ErrorVerb::Write, e.to_string()))?;
        self.applied = Some(last);
        self.membership = meta.last_membership.clone();
        self.high_watermark.send_replace(next);
        self.persist()
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        if self.applied.is_none() {
            return Ok(None);
        }
        Ok(Some(self.snapshot().build()))
    }
}

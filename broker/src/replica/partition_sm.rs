//! The state machine of a partition group: deliberately small. Applying an entry moves the
//! high watermark (the exclusive bound readers may see) past the entry's records; the records
//! themselves are already in the log, which is the Raft log.
//!
//! A snapshot is only a position: the last applied entry, its membership and the next record
//! offset. A follower that needs entries the leader no longer has installs it, which empties
//! its log and continues at that offset; it then replicates from there.

use std::io::Cursor;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::{EntryPayload, ErrorVerb};
use rafka_protocol::Offset;
use rafka_raft::types::{Entry, LogId, SnapshotMeta, StorageError, StoredMembership};
use rafka_raft::{Applied, TypeConfig};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::store::Shared;
use super::{sm_err, snapshot_id};

/// How often the applied position is written to `raft-meta.json` (it only shortens the
/// replay after a restart, so it need not be current).
const APPLIED_PERSIST_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
struct SnapshotData {
    next_offset: u64,
}

/// The partition state machine.
pub struct PartitionSm {
    shared: Arc<Shared>,
    high_watermark: Arc<watch::Sender<Offset>>,
    applied: Option<LogId>,
    membership: StoredMembership,
    persisted_at: Instant,
}

impl PartitionSm {
    /// Restores the applied position from the meta file (never beyond the log's last entry)
    /// and sets the high watermark to match.
    pub fn new(shared: Arc<Shared>, high_watermark: Arc<watch::Sender<Offset>>) -> PartitionSm {
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
        PartitionSm {
            shared,
            high_watermark,
            applied,
            membership: meta.membership,
            persisted_at: Instant::now(),
        }
    }

    fn next_offset(&self) -> Offset {
        *self.high_watermark.borrow()
    }

    fn persist(&mut self) -> Result<(), StorageError> {
        let (applied, membership) = (self.applied, self.membership.clone());
        self.persisted_at = Instant::now();
        self.shared
            .update_meta(|m| {
                m.applied = applied;
                m.membership = membership;
            })
            .map_err(|e| sm_err(ErrorVerb::Write, e.to_string()))
    }
}

/// A snapshot of the partition state machine, taken when openraft asks for a builder: the
/// builder runs later, in another task, while the state machine goes on applying, so it must
/// not read the live high watermark (a snapshot of entry X claiming the next offset after a
/// later entry Y would start an installing follower's log at the wrong offset).
pub struct PartitionSnapshot {
    applied: Option<LogId>,
    membership: StoredMembership,
    next_offset: Offset,
}

impl PartitionSnapshot {
    fn build(&self) -> Snapshot<TypeConfig> {
        let data = serde_json::to_vec(&SnapshotData {
            next_offset: self.next_offset.0,
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
            if let EntryPayload::Membership(m) = &e.payload {
                self.membership = StoredMembership::new(Some(e.log_id), m.clone());
                membership_changed = true;
            }
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
        if membership_changed || self.persisted_at.elapsed() >= APPLIED_PERSIST_INTERVAL {
            self.persist()?;
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

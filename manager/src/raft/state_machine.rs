//! The Raft state machine is the store: `apply` hands committed batches to
//! [`Store::apply_committed`], which checks versions, mutates the tables,
//! persists them (with the last applied log id and membership, in the same
//! redb transaction) and publishes watch events: on the leader and on
//! followers alike.
//!
//! Snapshots are the object tables serialized as JSON. A built or installed
//! snapshot is stored durably next to the tables (blob `raft-snapshot`);
//! that immediate commit also flushes the store's earlier eventual commits,
//! so the tables on disk are never older than a snapshot the log was purged
//! up to.

use std::io::Cursor;

use openraft::storage::RaftStateMachine;
use openraft::{
    EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};

use super::typ::{Entry, Snapshot, SnapshotMeta, StorageError};
use super::{ManagerNode, NodeId, SnapshotData, TypeConfig};
use crate::store::{BatchOutcome, Store};

const SNAPSHOT_BLOB: &str = "raft-snapshot";

/// What Raft needs remembered with the tables.
#[derive(Serialize, Deserialize, Clone, Debug, Default)]
struct AppliedState {
    last_applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, ManagerNode>,
}

/// A snapshot as stored on disk.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    data: Vec<u8>,
}

/// The openraft state machine over a [`Store`]. Clones share the store.
#[derive(Clone)]
pub struct StateMachine {
    store: Store,
}

fn sm_err(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

impl StateMachine {
    /// Drive `store` (a handle without a proposer; its tables are what Raft
    /// replicates).
    pub fn new(store: Store) -> StateMachine {
        StateMachine { store }
    }

    /// The store this state machine applies to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    fn applied_state_(&self) -> Result<AppliedState, StorageError> {
        match self.store.applied_blob() {
            Some(b) => serde_json::from_slice(&b)
                .map_err(|e| StorageIOError::read_state_machine(sm_err(e)).into()),
            None => Ok(AppliedState::default()),
        }
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateMachine {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<Snapshot, StorageError> {
            let (data, applied) = store
                .export()
                .map_err(|e| StorageIOError::read_state_machine(sm_err(e)))?;
            let applied: AppliedState = match applied {
                Some(b) => serde_json::from_slice(&b)
                    .map_err(|e| StorageIOError::read_state_machine(sm_err(e)))?,
                None => AppliedState::default(),
            };
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros())
                .unwrap_or(0);
            let snapshot_id = match &applied.last_applied {
                Some(l) => format!("{}-{}-{}", l.leader_id, l.index, stamp),
                None => format!("--{stamp}"),
            };
            let meta = SnapshotMeta {
                last_log_id: applied.last_applied,
                last_membership: applied.membership,
                snapshot_id,
            };
            let stored = StoredSnapshot {
                meta: meta.clone(),
                data,
            };
            let bytes = serde_json::to_vec(&stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), sm_err(e)))?;
            store
                .put_blob(SNAPSHOT_BLOB, &bytes)
                .map_err(|e| StorageIOError::write_snapshot(Some(meta.signature()), sm_err(e)))?;
            Ok(Snapshot {
                meta,
                snapshot: Box::new(Cursor::new(stored.data)),
            })
        })
        .await
        .map_err(|e| StorageIOError::read_state_machine(sm_err(e)))?
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, ManagerNode>), StorageError> {
        let a = self.applied_state_()?;
        Ok((a.last_applied, a.membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchOutcome>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let Some(last) = entries.last().map(|e| e.log_id) else {
            return Ok(Vec::new());
        };
        let mut applied = self.applied_state_()?;
        applied.last_applied = Some(last);
        for e in &entries {
            if let EntryPayload::Membership(m) = &e.payload {
                applied.membership = StoredMembership::new(Some(e.log_id), m.clone());
            }
        }
        let blob = serde_json::to_vec(&applied)
            .map_err(|e| StorageIOError::write_state_machine(sm_err(e)))?;
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            let items = entries
                .iter()
                .map(|e| {
                    let batch = match &e.payload {
                        EntryPayload::Normal(b) => Some(b),
                        _ => None,
                    };
                    (e.log_id.index, batch)
                })
                .collect();
            store.apply_committed(items, blob)
        })
        .await
        .map_err(|e| StorageIOError::write_state_machine(sm_err(e)))?
        .map_err(|e| StorageIOError::apply(last, sm_err(e)).into())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let applied = AppliedState {
            last_applied: meta.last_log_id,
            membership: meta.last_membership.clone(),
        };
        let sig = meta.signature();
        let blob = serde_json::to_vec(&applied)
            .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), sm_err(e)))?;
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data: snapshot.into_inner(),
        };
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || -> Result<(), StorageError> {
            store
                .install(&stored.data, blob)
                .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), sm_err(e)))?;
            let bytes = serde_json::to_vec(&stored)
                .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), sm_err(e)))?;
            store
                .put_blob(SNAPSHOT_BLOB, &bytes)
                .map_err(|e| StorageIOError::write_snapshot(Some(sig.clone()), sm_err(e)))?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_state_machine(sm_err(e)))?
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let bytes = self
            .store
            .get_blob(SNAPSHOT_BLOB)
            .map_err(|e| StorageIOError::read_snapshot(None, sm_err(e)))?;
        let Some(bytes) = bytes else {
            return Ok(None);
        };
        let s: StoredSnapshot = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(None, sm_err(e)))?;
        Ok(Some(Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

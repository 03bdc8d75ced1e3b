//! The Raft log, vote and purge point in one redb file (`raft-log.redb`).
//!
//! Durability: every write is a redb transaction committed with
//! `Durability::Immediate` (fsync) *before* openraft is told it is done:
//! `save_vote` returns after the vote is on disk, and `append` calls the
//! flush callback only after the entries are. Writes run on the blocking
//! pool so an fsync never stalls a runtime thread.
//!
//! Layout: table `log` maps the entry index (u64, so redb keeps them ordered)
//! to the JSON-encoded entry; table `meta` holds `vote` and `purged` (the
//! last purged log id) as JSON.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{LogId, OptionalSend, RaftLogReader, StorageIOError, Vote};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::typ::{Entry, StorageError};
use super::{NodeId, TypeConfig};
use crate::store::StoreError;

const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
const KEY_VOTE: &str = "vote";
const KEY_PURGED: &str = "purged";

type StorageResult<T> = Result<T, StorageError>;

/// The redb-backed Raft log store. Clones share the database.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Database>,
}

fn io_err(e: impl std::error::Error + 'static) -> openraft::AnyError {
    openraft::AnyError::new(&e)
}

impl LogStore {
    /// Open (or create) the log at `path`. An old redb format is reported as
    /// [`StoreError::UpgradeRequired`].
    pub fn open(path: &Path) -> Result<LogStore, StoreError> {
        let db = crate::store::open_redb(path)?;
        let tx = db
            .begin_write()
            .map_err(|e| StoreError::persist("open", e))?;
        tx.open_table(LOG)
            .map_err(|e| StoreError::persist("open", e))?;
        tx.open_table(META)
            .map_err(|e| StoreError::persist("open", e))?;
        tx.commit().map_err(|e| StoreError::persist("open", e))?;
        Ok(LogStore { db: Arc::new(db) })
    }

    fn get_meta<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, openraft::AnyError> {
        let rx = self.db.begin_read().map_err(io_err)?;
        let t = rx.open_table(META).map_err(io_err)?;
        match t.get(key).map_err(io_err)? {
            Some(v) => Ok(Some(serde_json::from_slice(v.value()).map_err(io_err)?)),
            None => Ok(None),
        }
    }

    /// Run a durable write transaction on the blocking pool.
    async fn write<F>(&self, f: F) -> Result<(), openraft::AnyError>
    where
        F: FnOnce(&redb::WriteTransaction) -> Result<(), openraft::AnyError> + Send + 'static,
    {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let mut tx = db.begin_write().map_err(io_err)?;
            tx.set_durability(redb::Durability::Immediate);
            f(&tx)?;
            tx.commit().map_err(io_err)
        })
        .await
        .map_err(io_err)?
    }

    async fn put_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
    ) -> Result<(), openraft::AnyError> {
        let bytes = serde_json::to_vec(value).map_err(io_err)?;
        self.write(move |tx| {
            let mut t = tx.open_table(META).map_err(io_err)?;
            t.insert(key, bytes.as_slice()).map_err(io_err)?;
            Ok(())
        })
        .await
    }

    async fn write_rows(&self, rows: Vec<(u64, Vec<u8>)>) -> Result<(), openraft::AnyError> {
        self.write(move |tx| {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            for (i, b) in &rows {
                t.insert(*i, b.as_slice()).map_err(io_err)?;
            }
            Ok(())
        })
        .await
    }

    /// Append `entries` durably outside openraft (no flush callback): used
    /// only by `--force-new-cluster` recovery while Raft is not running.
    pub(crate) async fn append_offline(&self, entries: Vec<Entry>) -> StorageResult<()> {
        let mut rows = Vec::new();
        for e in entries {
            let bytes =
                serde_json::to_vec(&e).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
            rows.push((e.log_id.index, bytes));
        }
        self.write_rows(rows)
            .await
            .map_err(|e| StorageIOError::write_logs(e).into())
    }

    fn last_entry_id(&self) -> Result<Option<LogId<NodeId>>, openraft::AnyError> {
        let rx = self.db.begin_read().map_err(io_err)?;
        let t = rx.open_table(LOG).map_err(io_err)?;
        let last = match t.last().map_err(io_err)? {
            Some((_, v)) => {
                let e: Entry = serde_json::from_slice(v.value()).map_err(io_err)?;
                Some(e.log_id)
            }
            None => None,
        };
        Ok(last)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> StorageResult<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => Some(x.saturating_add(1)),
            Bound::Excluded(x) => Some(*x),
            Bound::Unbounded => None,
        };
        let read = || -> Result<Vec<Entry>, openraft::AnyError> {
            let rx = self.db.begin_read().map_err(io_err)?;
            let t = rx.open_table(LOG).map_err(io_err)?;
            let iter = match end {
                Some(end) if end <= start => return Ok(Vec::new()),
                Some(end) => t.range(start..end).map_err(io_err)?,
                None => t.range(start..).map_err(io_err)?,
            };
            let mut out = Vec::new();
            for row in iter {
                let (_, v) = row.map_err(io_err)?;
                out.push(serde_json::from_slice(v.value()).map_err(io_err)?);
            }
            Ok(out)
        };
        read().map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> StorageResult<LogState<TypeConfig>> {
        let purged: Option<LogId<NodeId>> = self
            .get_meta(KEY_PURGED)
            .map_err(StorageIOError::read_logs)?;
        let last = self.last_entry_id().map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> StorageResult<()> {
        self.put_meta(KEY_VOTE, vote)
            .await
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> StorageResult<Option<Vote<NodeId>>> {
        self.get_meta(KEY_VOTE)
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> StorageResult<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Encode on the blocking pool with the write: a catch-up batch is
        // megabytes of JSON.
        let res = self
            .write(move |tx| {
                let mut t = tx.open_table(LOG).map_err(io_err)?;
                for e in &entries {
                    let bytes = serde_json::to_vec(e).map_err(io_err)?;
                    t.insert(e.log_id.index, bytes.as_slice()).map_err(io_err)?;
                }
                Ok(())
            })
            .await;
        match res {
            Ok(()) => {
                // The entries are on disk: only now tell openraft.
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let from = log_id.index;
        self.write(move |tx| {
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(from.., |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> StorageResult<()> {
        let bytes =
            serde_json::to_vec(&log_id).map_err(|e| StorageIOError::write_logs(io_err(e)))?;
        let upto = log_id.index;
        self.write(move |tx| {
            // The purge point first, in the same transaction as the deletion.
            let mut m = tx.open_table(META).map_err(io_err)?;
            m.insert(KEY_PURGED, bytes.as_slice()).map_err(io_err)?;
            let mut t = tx.open_table(LOG).map_err(io_err)?;
            t.retain_in(..=upto, |_, _| false).map_err(io_err)?;
            Ok(())
        })
        .await
        .map_err(|e| StorageIOError::write_logs(e).into())
    }
}

//! The managers' replicated state: object tables (nodes, services, tasks,
//! networks, cluster) with versioned, transactional updates and watch streams
//! of committed changes.
//!
//! ```text
//!  writer ── Store::update(actions) ──► Proposer (raft) ──► commit on a quorum
//!                  │ (no proposer: applied locally)               │
//!                  ▼                                              ▼
//!        Tables::plan → all-or-nothing ◄──── Store::apply_committed (every replica)
//!                  │
//!                  ├─► redb (persist.rs)       └─► watch: Commit { version, changes }
//! ```
//!
//! What it owns: the tables, the version check (an update naming a stale
//! version refuses the whole batch with [`Refusal::Conflict`]), persistence
//! of the tables, and publishing each committed batch to watchers.
//! What it does not own: consensus. With no [`Proposer`]
//! ([`Store::new_local`], [`Store::open`]) a batch is applied at once; with
//! one ([`Store::with_proposer`]) the batch is replicated first and applied
//! by the Raft state machine on every replica (see `crate::raft`).
//!
//! A version is the commit index of the batch that last wrote the object
//! (the Raft log index when replicated), so versions only grow.

mod error;
mod persist;
mod tables;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use agent_common::objects::{Kind, Object, StoredObject, Timestamp};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

pub use error::{ProposeError, Refusal, Result, StoreError};
pub(crate) use persist::open_database as open_redb;
pub use persist::Durability;
use persist::{Persist, Row};
use tables::Tables;

/// How many committed batches a slow watcher may fall behind before it gets
/// `RecvError::Lagged` (it must then re-read with [`Store::view_and_watch`]).
pub const WATCH_CAPACITY: usize = 4096;

/// One write in a batch.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Create an object. Its id must be unused (an empty id is filled in by
    /// [`Store::update`]); version and timestamps are set by the store.
    Create(Object),
    /// Replace an object. `meta.version` must be the stored version.
    Update(Object),
    /// Delete an object; with `version`, only if it is still that version.
    Delete {
        /// Object kind.
        kind: Kind,
        /// Object id.
        id: String,
        /// The version the deleter read, if it cares.
        version: Option<u64>,
    },
}

/// A batch of actions applied atomically: the unit that is proposed to Raft
/// (one log entry) and the `D` of the Raft type config.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The actions, applied in order; each sees the earlier ones' effects.
    pub actions: Vec<Action>,
    /// The proposer's clock (ns since the epoch), used for `created_at` and
    /// `updated_at` so every replica stores the same timestamps.
    pub timestamp: Timestamp,
}

/// The result of applying one committed entry: the `R` of the Raft type
/// config.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub enum BatchOutcome {
    /// The entry carried no batch (Raft blank or membership entry).
    #[default]
    NoBatch,
    /// Every action applied at `version`.
    Applied(Applied),
    /// Nothing applied.
    Refused(Refusal),
}

/// A successfully applied batch.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The version every written object now has.
    pub version: u64,
    /// The ids of the objects the batch created, in order.
    pub created: Vec<String>,
}

/// One change made by a committed batch.
// Changes travel inside an `Arc<Commit>`; boxing the objects would only add
// an allocation per change.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new object.
    Created(Object),
    /// An object replaced.
    Updated {
        /// Before.
        old: Object,
        /// After.
        new: Object,
    },
    /// An object removed (its last state).
    Deleted(Object),
}

impl Change {
    /// The object as it is after the change (or was, for a delete).
    pub fn object(&self) -> &Object {
        match self {
            Change::Created(o) | Change::Deleted(o) => o,
            Change::Updated { new, .. } => new,
        }
    }
}

/// Everything one committed batch changed: watchers react on these
/// boundaries (swarmkit's `EventCommit`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// The version the batch committed at.
    pub version: u64,
    /// Its changes, in action order.
    pub changes: Vec<Change>,
}

/// A subscription to committed changes.
pub type Watch = broadcast::Receiver<Arc<Commit>>;

/// A boxed, sendable future (the [`Proposer`] trait is object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Replicates batches. Implemented by `crate::raft::RaftProposer`; the store
/// itself never depends on Raft.
pub trait Proposer: Send + Sync + 'static {
    /// Commit `batch` and return the state machine's outcome for it (after it
    /// has been applied to this node's store).
    fn propose(
        &self,
        batch: Batch,
    ) -> BoxFuture<'_, std::result::Result<BatchOutcome, ProposeError>>;

    /// Return once this node's store reflects every write committed before
    /// the call (leader lease check + wait for apply).
    fn ensure_linearizable(&self) -> BoxFuture<'_, std::result::Result<(), ProposeError>>;
}

struct State {
    tables: Tables,
    version: u64,
    /// Opaque applied-state blob written with the tables (Raft: last applied
    /// log id and membership).
    applied: Option<Vec<u8>>,
}

struct Inner {
    state: RwLock<State>,
    persist: Option<Persist>,
    durability: Durability,
    events: broadcast::Sender<Arc<Commit>>,
}

/// A handle on the store. Cheap to clone; clones share the tables.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
    proposer: Option<Arc<dyn Proposer>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("version", &self.version())
            .field("replicated", &self.proposer.is_some())
            .finish()
    }
}

/// A consistent read-only view of the tables.
pub struct ReadTx<'a> {
    state: &'a State,
}

impl ReadTx<'_> {
    /// The object of type `T` with this id.
    pub fn get<T: StoredObject>(&self, id: &str) -> Option<T> {
        self.state
            .tables
            .get(T::KIND, id)
            .and_then(T::from_object_ref)
            .cloned()
    }

    /// The object of type `T` with this unique name (services, networks).
    pub fn get_by_name<T: StoredObject>(&self, name: &str) -> Option<T> {
        self.state
            .tables
            .by_name(T::KIND, name)
            .and_then(T::from_object_ref)
            .cloned()
    }

    /// Every object of type `T`, ordered by id.
    pub fn list<T: StoredObject>(&self) -> Vec<T> {
        self.find(|_: &T| true)
    }

    /// The objects of type `T` matching `pred`, ordered by id.
    pub fn find<T: StoredObject>(&self, mut pred: impl FnMut(&T) -> bool) -> Vec<T> {
        self.state
            .tables
            .iter(T::KIND)
            .filter_map(T::from_object_ref)
            .filter(|o| pred(o))
            .cloned()
            .collect()
    }

    /// Any object by kind and id.
    pub fn get_object(&self, kind: Kind, id: &str) -> Option<Object> {
        self.state.tables.get(kind, id).cloned()
    }

    /// The number of objects in all tables.
    pub fn len(&self) -> usize {
        self.state.tables.len()
    }

    /// True if the store holds no object.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The version of the last committed batch this view includes.
    pub fn version(&self) -> u64 {
        self.state.version
    }
}

/// A fresh object id: 25 base-36 characters from 128 random bits (as
/// swarmkit's identity package).
pub fn new_id() -> String {
    use rand::Rng;
    let mut n: u128 = rand::thread_rng().gen();
    let mut s = [b'0'; 25];
    for c in s.iter_mut().rev() {
        let d = (n % 36) as u8;
        *c = if d < 10 { b'0' + d } else { b'a' + d - 10 };
        n /= 36;
    }
    String::from_utf8_lossy(&s).into_owned()
}

fn now_ns() -> Timestamp {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl Store {
    fn from_parts(
        tables: Tables,
        version: u64,
        applied: Option<Vec<u8>>,
        persist: Option<Persist>,
        durability: Durability,
    ) -> Store {
        let (events, _) = broadcast::channel(WATCH_CAPACITY);
        Store {
            inner: Arc::new(Inner {
                state: RwLock::new(State {
                    tables,
                    version,
                    applied,
                }),
                persist,
                durability,
                events,
            }),
            proposer: None,
        }
    }

    /// An empty in-memory store without Raft or persistence: for unit tests
    /// and components that only need the store's semantics.
    pub fn new_local() -> Store {
        Store::from_parts(Tables::default(), 0, None, None, Durability::Immediate)
    }

    /// Open (or create) a store persisted in the redb file at `path`, loading
    /// its tables. `durability` applies to batch writes; the Raft state
    /// machine uses [`Durability::Eventual`] since its log is the durable
    /// record, a store used without Raft wants [`Durability::Immediate`].
    pub fn open(path: impl Into<PathBuf>, durability: Durability) -> Result<Store> {
        let (persist, loaded) = Persist::open(path.into())?;
        Ok(Store::from_parts(
            loaded.tables,
            loaded.version,
            loaded.applied,
            Some(persist),
            durability,
        ))
    }

    /// A handle whose [`Store::update`] goes through `proposer` (Raft). The
    /// tables are shared with `self`.
    pub fn with_proposer(&self, proposer: Arc<dyn Proposer>) -> Store {
        Store {
            inner: self.inner.clone(),
            proposer: Some(proposer),
        }
    }

    fn read(&self) -> RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Read the tables as of the last applied batch (on a follower, possibly
    /// stale: use [`Store::read_linearizable`] when that matters).
    pub fn view<R>(&self, f: impl FnOnce(&ReadTx<'_>) -> R) -> R {
        let st = self.read();
        f(&ReadTx { state: &st })
    }

    /// Read the tables after making sure this node has applied every write
    /// committed before the call (through the proposer; a local store is
    /// always linearizable).
    pub async fn read_linearizable<R>(&self, f: impl FnOnce(&ReadTx<'_>) -> R) -> Result<R> {
        if let Some(p) = &self.proposer {
            p.ensure_linearizable().await?;
        }
        Ok(self.view(f))
    }

    /// Subscribe to committed batches from now on.
    pub fn watch(&self) -> Watch {
        self.inner.events.subscribe()
    }

    /// Read the tables and subscribe atomically: the watch yields exactly the
    /// batches committed after the view (swarmkit's `ViewAndWatch`).
    pub fn view_and_watch<R>(&self, f: impl FnOnce(&ReadTx<'_>) -> R) -> (R, Watch) {
        let st = self.read();
        let rx = self.inner.events.subscribe();
        (f(&ReadTx { state: &st }), rx)
    }

    /// How many handles share these tables (used to wait for the Raft tasks
    /// to release the store file before it is reopened).
    pub(crate) fn handle_count(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// The version of the last applied batch.
    pub fn version(&self) -> u64 {
        self.read().version
    }

    /// Apply `actions` as one atomic batch: through the proposer when there is
    /// one, else directly. Creates with an empty id get a fresh one (returned
    /// in [`Applied::created`]). A refused batch changes nothing and returns
    /// [`StoreError::Refused`].
    pub async fn update(&self, actions: Vec<Action>) -> Result<Applied> {
        let batch = prepare(actions);
        let outcome = match &self.proposer {
            Some(p) => p.propose(batch).await?,
            None if self.inner.persist.is_some() => {
                let store = self.clone();
                tokio::task::spawn_blocking(move || store.apply_local(&batch))
                    .await
                    .map_err(|e| StoreError::Propose(ProposeError::Fatal(Box::new(e))))??
            }
            None => self.apply_local(&batch)?,
        };
        match outcome {
            BatchOutcome::Applied(a) => Ok(a),
            BatchOutcome::Refused(r) => Err(r.into()),
            BatchOutcome::NoBatch => Err(StoreError::NoOutcome),
        }
    }

    /// Create one object; returns it as stored.
    pub async fn create<T: StoredObject>(&self, object: T) -> Result<T> {
        let applied = self
            .update(vec![Action::Create(object.into_object())])
            .await?;
        self.stored::<T>(&applied.created[0])
    }

    /// Replace one object (its `meta.version` must be current); returns it
    /// as stored.
    pub async fn put<T: StoredObject>(&self, object: T) -> Result<T> {
        let id = object.meta().id.clone();
        self.update(vec![Action::Update(object.into_object())])
            .await?;
        self.stored::<T>(&id)
    }

    fn stored<T: StoredObject>(&self, id: &str) -> Result<T> {
        self.view(|tx| tx.get::<T>(id)).ok_or_else(|| {
            // Deleted again between apply and read: report it as missing.
            StoreError::Refused(Refusal::NotFound {
                kind: T::KIND,
                id: id.to_string(),
            })
        })
    }

    fn apply_local(&self, batch: &Batch) -> Result<BatchOutcome> {
        let mut st = self.write();
        let version = st.version + 1;
        let applied = st.applied.clone();
        let mut out = self.apply_locked(&mut st, vec![(version, Some(batch))], applied)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// Apply committed entries `(index, batch)` in order (Raft state machine
    /// path), persisting them and `applied` in one redb transaction, then
    /// publishing a [`Commit`] per applied batch. Entries without a batch
    /// only advance the version.
    pub(crate) fn apply_committed(
        &self,
        entries: Vec<(u64, Option<&Batch>)>,
        applied: Vec<u8>,
    ) -> Result<Vec<BatchOutcome>> {
        let mut st = self.write();
        self.apply_locked(&mut st, entries, Some(applied))
    }

    fn apply_locked(
        &self,
        st: &mut State,
        entries: Vec<(u64, Option<&Batch>)>,
        applied: Option<Vec<u8>>,
    ) -> Result<Vec<BatchOutcome>> {
        let mut outcomes = Vec::with_capacity(entries.len());
        let mut commits = Vec::new();
        for (index, batch) in entries {
            let version = index.max(st.version);
            st.version = version;
            let Some(batch) = batch else {
                outcomes.push(BatchOutcome::NoBatch);
                continue;
            };
            match st.tables.plan(version, batch) {
                Ok(changes) => {
                    st.tables.apply(&changes);
                    let created = changes
                        .iter()
                        .filter_map(|c| match c {
                            Change::Created(o) => Some(o.meta().id.clone()),
                            _ => None,
                        })
                        .collect();
                    outcomes.push(BatchOutcome::Applied(Applied { version, created }));
                    commits.push(Commit { version, changes });
                }
                Err(r) => outcomes.push(BatchOutcome::Refused(r)),
            }
        }
        if let Some(p) = &self.inner.persist {
            let mut rows: Vec<Row<'_>> = Vec::new();
            for c in &commits {
                for ch in &c.changes {
                    let o = ch.object();
                    let row = match ch {
                        Change::Deleted(_) => None,
                        _ => Some(o),
                    };
                    rows.push((o.kind(), &o.meta().id, row));
                }
            }
            p.write(&rows, st.version, applied.as_deref(), self.inner.durability)?;
        }
        st.applied = applied;
        for c in commits {
            // No receivers is fine.
            let _ = self.inner.events.send(Arc::new(c));
        }
        Ok(outcomes)
    }

    /// The applied-state blob stored with the tables.
    pub(crate) fn applied_blob(&self) -> Option<Vec<u8>> {
        self.read().applied.clone()
    }

    /// Serialize every table and the applied blob, consistently.
    pub(crate) fn export(&self) -> Result<(Vec<u8>, Option<Vec<u8>>)> {
        let st = self.read();
        let snap = SnapshotRef {
            version: st.version,
            objects: st.tables.all().collect(),
        };
        let data = serde_json::to_vec(&snap).map_err(|source| StoreError::Codec {
            what: "the snapshot",
            source,
        })?;
        Ok((data, st.applied.clone()))
    }

    /// Replace every table with a snapshot's (durably), publish the
    /// difference as one [`Commit`], and store `applied`.
    pub(crate) fn install(&self, data: &[u8], applied: Vec<u8>) -> Result<()> {
        let snap: SnapshotOwned =
            serde_json::from_slice(data).map_err(|source| StoreError::Codec {
                what: "a snapshot",
                source,
            })?;
        let tables = Tables::from_objects(snap.objects);
        let mut st = self.write();
        if let Some(p) = &self.inner.persist {
            p.replace_all(&tables, snap.version, &applied)?;
        }
        let changes = st.tables.diff(&tables);
        st.tables = tables;
        st.version = snap.version;
        st.applied = Some(applied);
        if !changes.is_empty() {
            let _ = self.inner.events.send(Arc::new(Commit {
                version: snap.version,
                changes,
            }));
        }
        Ok(())
    }

    /// Durably store a named blob next to the tables (the Raft snapshot).
    /// Also makes every earlier [`Durability::Eventual`] write durable. A
    /// memory-only store keeps nothing.
    pub(crate) fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<()> {
        match &self.inner.persist {
            Some(p) => p.put_blob(name, bytes),
            None => Ok(()),
        }
    }

    /// Read a named blob.
    pub(crate) fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        match &self.inner.persist {
            Some(p) => p.get_blob(name),
            None => Ok(None),
        }
    }
}

/// Fill in ids and the timestamp before a batch leaves this node, so every
/// replica applies the same bytes.
fn prepare(mut actions: Vec<Action>) -> Batch {
    for a in &mut actions {
        if let Action::Create(o) = a {
            if o.meta().id.is_empty() {
                o.meta_mut().id = new_id();
            }
        }
    }
    Batch {
        actions,
        timestamp: now_ns(),
    }
}

#[derive(Serialize)]
struct SnapshotRef<'a> {
    version: u64,
    objects: Vec<&'a Object>,
}

#[derive(Deserialize)]
struct SnapshotOwned {
    version: u64,
    objects: Vec<Object>,
}

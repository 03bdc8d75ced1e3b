//! The store's redb file: one `objects` table keyed `kind/id` holding each
//! object as JSON, and a `meta` table holding the last committed version, the
//! opaque applied-state blob the Raft state machine keeps with the tables,
//! and named blobs (the current Raft snapshot).
//!
//! redb is pinned to the 2.x major: its file format breaks across majors, and
//! an old file is reported as [`StoreError::UpgradeRequired`] rather than a
//! bare redb error. JSON (self-describing) is used for values so that later
//! issues can add fields with `#[serde(default)]`.

use std::path::{Path, PathBuf};

use agent_common::objects::{Kind, Object};
use redb::{Database, DatabaseError, ReadableTable, TableDefinition};

use super::error::{Result, StoreError};
use super::tables::Tables;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

const KEY_VERSION: &str = "version";
const KEY_APPLIED: &str = "applied";

/// When a write to the store file must be on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync before the write returns (redb `Durability::Immediate`).
    Immediate,
    /// Queue the write; it is on disk after the next immediate write (redb
    /// `Durability::Eventual`). Safe for the Raft state machine, whose log is
    /// durable and which syncs before every snapshot (see docs/store.md).
    Eventual,
}

impl From<Durability> for redb::Durability {
    fn from(d: Durability) -> Self {
        match d {
            Durability::Immediate => redb::Durability::Immediate,
            Durability::Eventual => redb::Durability::Eventual,
        }
    }
}

/// What was found in the file at open.
pub(crate) struct Loaded {
    pub tables: Tables,
    pub version: u64,
    pub applied: Option<Vec<u8>>,
}

/// A pending row write: `None` deletes the row.
pub(crate) type Row<'a> = (Kind, &'a str, Option<&'a Object>);

pub(crate) struct Persist {
    db: Database,
}

/// Open a redb file, mapping a format-upgrade error to a clear message.
pub(crate) fn open_database(path: &Path) -> Result<Database> {
    match Database::create(path) {
        Ok(db) => Ok(db),
        Err(DatabaseError::UpgradeRequired(found)) => Err(StoreError::UpgradeRequired {
            path: path.display().to_string(),
            found,
        }),
        Err(e) => Err(StoreError::persist("open", e)),
    }
}

fn key(kind: Kind, id: &str) -> String {
    format!("{}/{}", kind.as_str(), id)
}

impl Persist {
    pub(crate) fn open(path: PathBuf) -> Result<(Persist, Loaded)> {
        let db = open_database(&path)?;
        // Create the tables so later reads never meet "table does not exist".
        let tx = db
            .begin_write()
            .map_err(|e| StoreError::persist("open", e))?;
        tx.open_table(OBJECTS)
            .map_err(|e| StoreError::persist("open", e))?;
        tx.open_table(META)
            .map_err(|e| StoreError::persist("open", e))?;
        tx.commit().map_err(|e| StoreError::persist("open", e))?;

        let rx = db
            .begin_read()
            .map_err(|e| StoreError::persist("read", e))?;
        let objects = rx
            .open_table(OBJECTS)
            .map_err(|e| StoreError::persist("read", e))?;
        let mut list = Vec::new();
        for row in objects.iter().map_err(|e| StoreError::persist("read", e))? {
            let (_, v) = row.map_err(|e| StoreError::persist("read", e))?;
            let o: Object =
                serde_json::from_slice(v.value()).map_err(|source| StoreError::Codec {
                    what: "a stored object",
                    source,
                })?;
            list.push(o);
        }
        let meta = rx
            .open_table(META)
            .map_err(|e| StoreError::persist("read", e))?;
        let version = meta
            .get(KEY_VERSION)
            .map_err(|e| StoreError::persist("read", e))?
            .map(|v| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&v.value()[..8]);
                u64::from_be_bytes(b)
            })
            .unwrap_or(0);
        let applied = meta
            .get(KEY_APPLIED)
            .map_err(|e| StoreError::persist("read", e))?
            .map(|v| v.value().to_vec());
        drop(meta);
        drop(objects);
        drop(rx);
        Ok((
            Persist { db },
            Loaded {
                tables: Tables::from_objects(list),
                version,
                applied,
            },
        ))
    }

    /// Write rows, the version and the applied blob in one transaction.
    pub(crate) fn write(
        &self,
        rows: &[Row<'_>],
        version: u64,
        applied: Option<&[u8]>,
        durability: Durability,
    ) -> Result<()> {
        let mut tx = self
            .db
            .begin_write()
            .map_err(|e| StoreError::persist("write", e))?;
        tx.set_durability(durability.into());
        {
            let mut objects = tx
                .open_table(OBJECTS)
                .map_err(|e| StoreError::persist("write", e))?;
            for (kind, id, o) in rows {
                let k = key(*kind, id);
                match o {
                    Some(o) => {
                        let v = serde_json::to_vec(o).map_err(|source| StoreError::Codec {
                            what: "an object",
                            source,
                        })?;
                        objects
                            .insert(k.as_str(), v.as_slice())
                            .map_err(|e| StoreError::persist("write", e))?;
                    }
                    None => {
                        objects
                            .remove(k.as_str())
                            .map_err(|e| StoreError::persist("write", e))?;
                    }
                }
            }
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StoreError::persist("write", e))?;
            meta.insert(KEY_VERSION, version.to_be_bytes().as_slice())
                .map_err(|e| StoreError::persist("write", e))?;
            if let Some(a) = applied {
                meta.insert(KEY_APPLIED, a)
                    .map_err(|e| StoreError::persist("write", e))?;
            }
        }
        tx.commit().map_err(|e| StoreError::persist("commit", e))
    }

    /// Replace every object (snapshot install), durably.
    pub(crate) fn replace_all(&self, tables: &Tables, version: u64, applied: &[u8]) -> Result<()> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| StoreError::persist("write", e))?;
        {
            tx.delete_table(OBJECTS)
                .map_err(|e| StoreError::persist("write", e))?;
            let mut objects = tx
                .open_table(OBJECTS)
                .map_err(|e| StoreError::persist("write", e))?;
            for o in tables.all() {
                let v = serde_json::to_vec(o).map_err(|source| StoreError::Codec {
                    what: "an object",
                    source,
                })?;
                objects
                    .insert(key(o.kind(), &o.meta().id).as_str(), v.as_slice())
                    .map_err(|e| StoreError::persist("write", e))?;
            }
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StoreError::persist("write", e))?;
            meta.insert(KEY_VERSION, version.to_be_bytes().as_slice())
                .map_err(|e| StoreError::persist("write", e))?;
            meta.insert(KEY_APPLIED, applied)
                .map_err(|e| StoreError::persist("write", e))?;
        }
        tx.commit().map_err(|e| StoreError::persist("commit", e))
    }

    /// Durably store a named blob. Being an immediate commit, it also makes
    /// every earlier eventual commit durable.
    pub(crate) fn put_blob(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| StoreError::persist("write", e))?;
        {
            let mut meta = tx
                .open_table(META)
                .map_err(|e| StoreError::persist("write", e))?;
            meta.insert(format!("blob/{name}").as_str(), bytes)
                .map_err(|e| StoreError::persist("write", e))?;
        }
        tx.commit().map_err(|e| StoreError::persist("commit", e))
    }

    pub(crate) fn get_blob(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let rx = self
            .db
            .begin_read()
            .map_err(|e| StoreError::persist("read", e))?;
        let meta = rx
            .open_table(META)
            .map_err(|e| StoreError::persist("read", e))?;
        let v = meta
            .get(format!("blob/{name}").as_str())
            .map_err(|e| StoreError::persist("read", e))?
            .map(|v| v.value().to_vec());
        Ok(v)
    }
}

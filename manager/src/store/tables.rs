//! The in-memory object tables and the pure apply step: given a batch and
//! the version it commits at, either every action applies (and the list of
//! [`Change`]s comes back) or the whole batch is refused and the tables are
//! untouched. No I/O here; `persist` mirrors the result into redb.

use std::collections::{BTreeMap, HashMap};

use agent_common::objects::{Kind, Object};

use super::error::Refusal;
use super::{Action, Batch, Change};

/// One table per kind, keyed by id, plus a unique-name index for the kinds
/// whose names are unique.
#[derive(Clone, Debug, Default)]
pub(crate) struct Tables {
    objects: BTreeMap<Kind, BTreeMap<String, Object>>,
    names: HashMap<(Kind, String), String>,
}

impl Tables {
    /// Build tables from a list of objects (snapshot restore, startup load).
    pub(crate) fn from_objects(objects: impl IntoIterator<Item = Object>) -> Self {
        let mut t = Tables::default();
        for o in objects {
            t.put(o);
        }
        t
    }

    pub(crate) fn get(&self, kind: Kind, id: &str) -> Option<&Object> {
        self.objects.get(&kind).and_then(|t| t.get(id))
    }

    pub(crate) fn iter(&self, kind: Kind) -> impl Iterator<Item = &Object> {
        self.objects.get(&kind).into_iter().flat_map(|t| t.values())
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &Object> {
        self.objects.values().flat_map(|t| t.values())
    }

    pub(crate) fn by_name(&self, kind: Kind, name: &str) -> Option<&Object> {
        let id = self.names.get(&(kind, name.to_string()))?;
        self.get(kind, id)
    }

    pub(crate) fn len(&self) -> usize {
        self.objects.values().map(|t| t.len()).sum()
    }

    fn put(&mut self, o: Object) {
        if let Some(old) = self.get(o.kind(), &o.meta().id) {
            if let Some(name) = old.unique_name() {
                self.names.remove(&(old.kind(), name.to_string()));
            }
        }
        if let Some(name) = o.unique_name() {
            self.names
                .insert((o.kind(), name.to_string()), o.meta().id.clone());
        }
        self.objects
            .entry(o.kind())
            .or_default()
            .insert(o.meta().id.clone(), o);
    }

    fn remove(&mut self, kind: Kind, id: &str) -> Option<Object> {
        let old = self.objects.get_mut(&kind)?.remove(id)?;
        if let Some(name) = old.unique_name() {
            self.names.remove(&(kind, name.to_string()));
        }
        Some(old)
    }

    /// Validate the whole batch against the tables as they would be after
    /// each earlier action of the batch, and return the changes it makes.
    /// The tables are not modified.
    pub(crate) fn plan(&self, version: u64, batch: &Batch) -> Result<Vec<Change>, Refusal> {
        let mut overlay = Overlay {
            base: self,
            objects: HashMap::new(),
            names: HashMap::new(),
        };
        let mut changes = Vec::with_capacity(batch.actions.len());
        for action in &batch.actions {
            changes.push(overlay.step(version, batch.timestamp, action)?);
        }
        Ok(changes)
    }

    /// Apply changes produced by [`Tables::plan`].
    pub(crate) fn apply(&mut self, changes: &[Change]) {
        for c in changes {
            match c {
                Change::Created(o) | Change::Updated { new: o, .. } => self.put(o.clone()),
                Change::Deleted(o) => {
                    self.remove(o.kind(), &o.meta().id);
                }
            }
        }
    }

    /// The changes that turn `self` into `other` (for snapshot installs).
    pub(crate) fn diff(&self, other: &Tables) -> Vec<Change> {
        let mut changes = Vec::new();
        for kind in Kind::ALL {
            let empty = BTreeMap::new();
            let a = self.objects.get(&kind).unwrap_or(&empty);
            let b = other.objects.get(&kind).unwrap_or(&empty);
            for (id, old) in a {
                match b.get(id) {
                    None => changes.push(Change::Deleted(old.clone())),
                    Some(new) if new != old => changes.push(Change::Updated {
                        old: old.clone(),
                        new: new.clone(),
                    }),
                    Some(_) => {}
                }
            }
            for (id, new) in b {
                if !a.contains_key(id) {
                    changes.push(Change::Created(new.clone()));
                }
            }
        }
        changes
    }
}

/// The batch's own writes on top of the base tables.
struct Overlay<'a> {
    base: &'a Tables,
    /// `None` = deleted within this batch.
    objects: HashMap<(Kind, String), Option<Object>>,
    /// `None` = released within this batch.
    names: HashMap<(Kind, String), Option<String>>,
}

impl Overlay<'_> {
    fn current(&self, kind: Kind, id: &str) -> Option<&Object> {
        match self.objects.get(&(kind, id.to_string())) {
            Some(o) => o.as_ref(),
            None => self.base.get(kind, id),
        }
    }

    fn name_owner(&self, kind: Kind, name: &str) -> Option<String> {
        let key = (kind, name.to_string());
        match self.names.get(&key) {
            Some(o) => o.clone(),
            None => self.base.names.get(&key).cloned(),
        }
    }

    fn claim_name(&mut self, o: &Object) -> Result<(), Refusal> {
        let Some(name) = o.unique_name() else {
            return Ok(());
        };
        if name.is_empty() {
            return Err(Refusal::Invalid {
                kind: o.kind(),
                reason: "a name is required".into(),
            });
        }
        match self.name_owner(o.kind(), name) {
            Some(owner) if owner != o.meta().id => Err(Refusal::NameInUse {
                kind: o.kind(),
                name: name.to_string(),
                id: owner,
            }),
            _ => {
                self.names
                    .insert((o.kind(), name.to_string()), Some(o.meta().id.clone()));
                Ok(())
            }
        }
    }

    fn release_name(&mut self, o: &Object) {
        if let Some(name) = o.unique_name() {
            self.names.insert((o.kind(), name.to_string()), None);
        }
    }

    fn step(&mut self, version: u64, now: u64, action: &Action) -> Result<Change, Refusal> {
        match action {
            Action::Create(o) => {
                let kind = o.kind();
                let id = o.meta().id.clone();
                if id.is_empty() {
                    return Err(Refusal::Invalid {
                        kind,
                        reason: "an id is required".into(),
                    });
                }
                if self.current(kind, &id).is_some() {
                    return Err(Refusal::AlreadyExists { kind, id });
                }
                let mut new = o.clone();
                let m = new.meta_mut();
                m.version = version;
                m.created_at = now;
                m.updated_at = now;
                self.claim_name(&new)?;
                self.objects.insert((kind, id), Some(new.clone()));
                Ok(Change::Created(new))
            }
            Action::Update(o) => {
                let kind = o.kind();
                let id = o.meta().id.clone();
                let Some(old) = self.current(kind, &id).cloned() else {
                    return Err(Refusal::NotFound { kind, id });
                };
                if o.meta().version != old.meta().version {
                    return Err(Refusal::Conflict {
                        kind,
                        id,
                        expected: o.meta().version,
                        actual: old.meta().version,
                    });
                }
                let mut new = o.clone();
                let m = new.meta_mut();
                m.version = version;
                m.created_at = old.meta().created_at;
                m.updated_at = now;
                if old.unique_name() != new.unique_name() {
                    self.release_name(&old);
                    self.claim_name(&new)?;
                }
                self.objects.insert((kind, id), Some(new.clone()));
                Ok(Change::Updated { old, new })
            }
            Action::Delete { kind, id, version } => {
                let Some(old) = self.current(*kind, id).cloned() else {
                    return Err(Refusal::NotFound {
                        kind: *kind,
                        id: id.clone(),
                    });
                };
                if let Some(v) = version {
                    if *v != old.meta().version {
                        return Err(Refusal::Conflict {
                            kind: *kind,
                            id: id.clone(),
                            expected: *v,
                            actual: old.meta().version,
                        });
                    }
                }
                self.release_name(&old);
                self.objects.insert((*kind, id.clone()), None);
                Ok(Change::Deleted(old))
            }
        }
    }
}

//! Volumes: named and anonymous directories under `<data-root>/volumes`, each
//! `NAME/_data` (what containers see) plus `NAME/volume.json` (metadata), as
//! Docker's local driver lays them out. Data outlives the containers that
//! used it. Which containers use a volume is the engine's knowledge; this
//! module asks for it through a closure when it must refuse a removal.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use agent_common::engine::{PruneReport, VolumeInfo};

/// Label that marks volumes created for an image VOLUME or a bare `-v /path`.
pub const ANONYMOUS_LABEL: &str = "com.flotilla.volume.anonymous";

/// Errors of the volume store.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("No such volume: {0}")]
    NotFound(String),
    #[error(
        "volume {name} is in use by container {container}: remove the container first, or use -f"
    )]
    InUse { name: String, container: String },
    #[error("invalid volume name {0:?}: use 2-255 characters [a-zA-Z0-9][a-zA-Z0-9_.-]")]
    InvalidName(String),
    #[error("volume driver {0:?} is not supported; only \"local\" is")]
    Driver(String),
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse {path}: {reason}; fix or remove the file (it was left untouched)")]
    Corrupt { path: PathBuf, reason: String },
}

type Result<T> = std::result::Result<T, VolumeError>;

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> VolumeError + 'a {
    move |source| VolumeError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Checks a volume (or container) name as Docker does: `[a-zA-Z0-9][a-zA-Z0-9_.-]+`.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    b.len() >= 2
        && b.len() <= 255
        && b[0].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// The volumes of one daemon.
pub struct VolumeStore {
    root: PathBuf,
    /// Serialises create/remove so two creates of one name cannot race.
    lock: Mutex<()>,
}

impl VolumeStore {
    /// Opens (creating) `root`, the daemon's alone (0700).
    pub fn open(root: &Path) -> Result<VolumeStore> {
        fs::create_dir_all(root)
            .and_then(|_| fs::set_permissions(root, fs::Permissions::from_mode(0o700)))
            .map_err(io("create", root))?;
        Ok(VolumeStore {
            root: root.to_path_buf(),
            lock: Mutex::new(()),
        })
    }

    fn meta_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("volume.json")
    }

    /// The directory containers mount for `name`.
    pub fn data_path(&self, name: &str) -> PathBuf {
        self.root.join(name).join("_data")
    }

    /// Creates `name` (idempotent: an existing volume is returned as is).
    /// Returns the volume and whether it was created now.
    pub fn create(
        &self,
        name: &str,
        labels: BTreeMap<String, String>,
        driver: &str,
    ) -> Result<(VolumeInfo, bool)> {
        if !driver.is_empty() && driver != "local" {
            return Err(VolumeError::Driver(driver.to_string()));
        }
        if !valid_name(name) {
            return Err(VolumeError::InvalidName(name.to_string()));
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(existing) = self.inspect(name) {
            return Ok((existing, false));
        }
        // `NAME/` holds the metadata (0700); `NAME/_data` is the mount's
        // root, 0755 as Docker makes it (seeding may give it the image's).
        let dir = self.root.join(name);
        let data = self.data_path(name);
        fs::create_dir_all(&data)
            .and_then(|_| fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)))
            .and_then(|_| fs::set_permissions(&data, fs::Permissions::from_mode(0o755)))
            .map_err(io("create", &data))?;
        let info = VolumeInfo {
            name: name.to_string(),
            driver: "local".into(),
            mountpoint: data.display().to_string(),
            created_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            labels,
            scope: "local".into(),
        };
        let meta = self.meta_path(name);
        let text = serde_json::to_vec_pretty(&info).unwrap_or_default();
        let tmp = meta.with_extension("tmp");
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&text))
            .and_then(|_| fs::rename(&tmp, &meta))
            .map_err(io("write", &meta))?;
        Ok((info, true))
    }

    /// One volume's metadata.
    pub fn inspect(&self, name: &str) -> Result<VolumeInfo> {
        if !valid_name(name) {
            return Err(VolumeError::NotFound(name.to_string()));
        }
        let meta = self.meta_path(name);
        let bytes = match fs::read(&meta) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(VolumeError::NotFound(name.to_string()))
            }
            Err(e) => return Err(io("read", &meta)(e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| VolumeError::Corrupt {
            path: meta,
            reason: e.to_string(),
        })
    }

    /// Every volume, plus the problems met reading them (corrupt metadata).
    pub fn list(&self) -> (Vec<VolumeInfo>, Vec<String>) {
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        let Ok(entries) = fs::read_dir(&self.root) else {
            return (out, warnings);
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            match self.inspect(&name) {
                Ok(v) => out.push(v),
                Err(VolumeError::NotFound(_)) => {}
                Err(e) => warnings.push(e.to_string()),
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        (out, warnings)
    }

    /// Removes a volume and its data. `used_by` names a container using it.
    pub fn remove(&self, name: &str, force: bool, used_by: Option<String>) -> Result<()> {
        self.inspect(name)?;
        if let (Some(container), false) = (used_by, force) {
            return Err(VolumeError::InUse {
                name: name.to_string(),
                container,
            });
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let dir = self.root.join(name);
        fs::remove_dir_all(&dir).map_err(io("remove", &dir))
    }

    /// Removes every volume `used_by` says is unused: anonymous ones only,
    /// unless `all` (Docker ≥ 23 prunes only anonymous volumes by default).
    pub fn prune(&self, all: bool, used_by: &dyn Fn(&str) -> Option<String>) -> PruneReport {
        let mut report = PruneReport::default();
        for v in self.list().0 {
            if !all && !v.labels.contains_key(ANONYMOUS_LABEL) {
                continue;
            }
            if used_by(&v.name).is_some() {
                continue;
            }
            let size = dir_size(&self.root.join(&v.name));
            if self.remove(&v.name, true, None).is_ok() {
                report.space_reclaimed += size;
                report.deleted.push(v.name);
            }
        }
        report
    }
}

/// Total size of the regular files under `path`.
pub fn dir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(entries) = fs::read_dir(&p) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_inspect_remove() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(tmp.path()).unwrap();
        let (v, created) = store.create("data", BTreeMap::new(), "").unwrap();
        assert!(created);
        assert_eq!(
            v.mountpoint,
            tmp.path().join("data/_data").display().to_string()
        );
        let (_, again) = store.create("data", BTreeMap::new(), "local").unwrap();
        assert!(!again);
        fs::write(store.data_path("data").join("f"), "x").unwrap();
        let err = store.remove("data", false, Some("abc".into())).unwrap_err();
        assert!(err.to_string().contains("in use by container abc"), "{err}");
        store.remove("data", false, None).unwrap();
        assert!(matches!(
            store.inspect("data"),
            Err(VolumeError::NotFound(_))
        ));
    }

    #[test]
    fn bad_names_and_drivers_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(tmp.path()).unwrap();
        assert!(matches!(
            store.create("../x", BTreeMap::new(), ""),
            Err(VolumeError::InvalidName(_))
        ));
        assert!(matches!(
            store.create("ok", BTreeMap::new(), "nfs"),
            Err(VolumeError::Driver(_))
        ));
    }

    #[test]
    fn corrupt_metadata_is_reported_not_dropped() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(tmp.path()).unwrap();
        store.create("good", BTreeMap::new(), "").unwrap();
        store.create("bad", BTreeMap::new(), "").unwrap();
        fs::write(tmp.path().join("bad/volume.json"), "{not json").unwrap();
        let (list, warnings) = store.list();
        assert_eq!(list.len(), 1);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("bad/volume.json"), "{}", warnings[0]);
        assert!(tmp.path().join("bad/volume.json").exists());
    }

    #[test]
    fn prune_keeps_named_and_used_volumes() {
        let tmp = tempfile::tempdir().unwrap();
        let store = VolumeStore::open(tmp.path()).unwrap();
        let anon: BTreeMap<_, _> = [(ANONYMOUS_LABEL.to_string(), String::new())].into();
        store.create("named", BTreeMap::new(), "").unwrap();
        store.create("anon1", anon.clone(), "").unwrap();
        store.create("anon2", anon, "").unwrap();
        let report = store.prune(false, &|n| (n == "anon2").then(|| "c1".to_string()));
        assert_eq!(report.deleted, vec!["anon1".to_string()]);
        assert!(store.inspect("named").is_ok());
        assert!(store.inspect("anon2").is_ok());
    }
}

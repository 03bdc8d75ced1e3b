//! The local engine: containers, their lifecycle, I/O and file system views,
//! on top of the image store, the volume store and the runtime's shims.
//!
//! - [`container`]: the persisted container record and its in-memory handle
//! - [`create`]: validation and creation (config merge with the image, volumes)
//! - [`lifecycle`]: start, stop, kill, restart policy, pause, remove, wait, and
//!   re-adopting running containers after a daemon restart
//! - [`networks`]: user-defined networks as containers see them: connect,
//!   disconnect, inspect, and the names the embedded DNS server answers
//! - [`io`]: attach, logs, exec
//! - [`fsview`]: diff, export, commit, top
//! - [`confined`]: file access inside container roots, layers and volumes by
//!   descriptor (never following what a container or an image planted)
//! - [`api`]: the tonic service that maps engine.proto onto all of the above
//!
//! State lives under `<data-root>/containers/<id>/` (`config.v2.json` is the
//! record; the bundle, log and exit status sit beside it). Every change is
//! written through before it is acknowledged.

pub mod api;
pub mod confined;
pub mod container;
pub mod create;
pub mod distribution;
pub mod fsview;
pub mod io;
pub mod lifecycle;
pub mod networks;
pub mod pool;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use crate::image::{ImageError, ImageStore};
use crate::runtime::cgroups::Layout;
use crate::volume::{VolumeError, VolumeStore};
use container::Container;

/// Errors the engine reports to clients.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("No such container: {0}")]
    NoSuchContainer(String),
    #[error("container id prefix {0:?} is ambiguous: give more characters or the name")]
    Ambiguous(String),
    #[error("Conflict. The container name \"/{name}\" is already in use by container \"{id}\". You have to remove (or rename) that container to be able to reuse that name.")]
    NameInUse { name: String, id: String },
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    Conflict(String),
    /// The container could not start; `exit_code` is Docker's (125/126/127).
    #[error("{message}")]
    StartFailed { exit_code: i32, message: String },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Volume(#[from] VolumeError),
    #[error(transparent)]
    Network(#[from] crate::network::user::UserNetworkError),
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> EngineError {
        let path = path.into();
        move |source| EngineError::Io {
            action,
            path,
            source,
        }
    }
}

/// The engine's result type.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// A node's local engine.
pub struct Engine {
    root: PathBuf,
    pub images: ImageStore,
    pub volumes: VolumeStore,
    pub cgroups: Layout,
    /// Shims with namespaces and cgroups made in advance.
    pub pool: Arc<pool::SandboxPool>,
    /// User-defined networks, once the daemon has set them up.
    pub networks: OnceLock<Arc<crate::network::user::Networks>>,
    /// The embedded DNS servers of containers on user-defined networks.
    pub dns: Arc<crate::network::resolver::Resolver>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Problems found while loading state (corrupt files), shown by `version` and `ps`.
    load_warnings: Mutex<Vec<String>>,
}

impl Engine {
    /// Opens the engine's state under `root`, creating it if needed, keeping
    /// `sandbox_pool` sandboxes ready. Corrupt records are reported in
    /// [`Engine::warnings`] and left on disk.
    pub fn open(root: &Path, sandbox_pool: usize) -> Result<Arc<Engine>> {
        std::fs::create_dir_all(root.join("containers"))
            .map_err(EngineError::io("create", root))?;
        let images = ImageStore::open(&root.join("image"))?;
        let volumes = VolumeStore::open(&root.join("volumes"))?;
        let cgroups = Layout::detect().map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut warnings: Vec<String> = images.load_errors();
        let mut containers = HashMap::new();
        // Directories of removed containers whose deletion a crash interrupted.
        let trash = root.join("trash");
        let _ = std::fs::remove_dir_all(&trash);
        std::fs::create_dir_all(&trash).map_err(EngineError::io("create", &trash))?;
        let dir = root.join("containers");
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path().join(container::RECORD_FILE);
                if !path.exists() {
                    continue;
                }
                match container::ContainerRecord::load(&path) {
                    Ok(record) => {
                        let c = Arc::new(Container::new(record));
                        containers.insert(c.id.clone(), c);
                    }
                    Err(e) => {
                        tracing::error!("{e}");
                        warnings.push(e.to_string());
                    }
                }
            }
        }
        Ok(Arc::new(Engine {
            root: root.to_path_buf(),
            images,
            volumes,
            pool: pool::SandboxPool::new(cgroups.clone(), sandbox_pool),
            networks: OnceLock::new(),
            dns: crate::network::resolver::Resolver::new(),
            cgroups,
            containers: Mutex::new(containers),
            load_warnings: Mutex::new(warnings),
        }))
    }

    /// The data root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Problems found while loading state.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = self
            .load_warnings
            .lock()
            .map(|w| w.clone())
            .unwrap_or_default();
        w.extend(self.volumes.list().1);
        if let Some(n) = self.networks.get() {
            w.extend(n.warnings.iter().cloned());
        }
        w
    }

    /// `<root>/containers/<id>`.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.root.join("containers").join(id)
    }

    /// Every container, in no particular order.
    pub fn all(&self) -> Vec<Arc<Container>> {
        self.containers
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Finds a container by full ID, name, or unique ID prefix.
    pub fn find(&self, key: &str) -> Result<Arc<Container>> {
        let key = key.strip_prefix('/').unwrap_or(key);
        let map = self
            .containers
            .lock()
            .map_err(|_| EngineError::Internal("container table poisoned".into()))?;
        if let Some(c) = map.get(key) {
            return Ok(c.clone());
        }
        if let Some(c) = map.values().find(|c| c.name() == key) {
            return Ok(c.clone());
        }
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(EngineError::NoSuchContainer(key.to_string()));
        }
        let matches: Vec<_> = map.values().filter(|c| c.id.starts_with(key)).collect();
        match matches.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(EngineError::NoSuchContainer(key.to_string())),
            _ => Err(EngineError::Ambiguous(key.to_string())),
        }
    }

    fn insert(&self, c: Arc<Container>) {
        if let Ok(mut map) = self.containers.lock() {
            map.insert(c.id.clone(), c);
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut map) = self.containers.lock() {
            map.remove(id);
        }
    }

    /// The ID of a container using image `image_id`, if any.
    pub fn container_using_image(&self, image_id: &str) -> Option<String> {
        self.all()
            .into_iter()
            .find(|c| c.record().image == image_id)
            .map(|c| c.id.clone())
    }

    /// The ID of a container mounting volume `name`, if any.
    pub fn container_using_volume(&self, name: &str) -> Option<String> {
        self.all()
            .into_iter()
            .find(|c| {
                c.record()
                    .mounts
                    .iter()
                    .any(|m| m.kind == "volume" && m.name == name)
            })
            .map(|c| c.id.clone())
    }
}

/// 64 random hex characters (container IDs, anonymous volume names).
pub fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        bytes[..16].copy_from_slice(&t.to_le_bytes());
        bytes[16..20].copy_from_slice(&std::process::id().to_le_bytes());
    }
    hex::encode(bytes)
}

/// The current time in RFC 3339 with nanoseconds.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

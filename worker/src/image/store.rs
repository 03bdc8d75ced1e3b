//! The image store under `<data-root>/image`:
//!
//! ```text
//! blobs/sha256/<hex>     configs and layer blobs as received (content-addressed)
//! layers/<hex>.json      one record per layer, keyed by diff_id: its directory, size, blob
//! l/<short>/             the unpacked layer, shared read-only; an overlayfs lowerdir
//! images/<hex>.json      one record per image, keyed by image id (= digest of the config)
//! repositories.json      tags: "name:tag" → image id
//! tmp/                   spools and half-unpacked layers; emptied at open
//! ```
//!
//! Layer directories are named by the first 12 hex digits of the diff_id
//! (longer only on a collision), so a lowerdir option costs about
//! `len(<data-root>/image/l/) + 13` bytes per layer: with a 25-byte data root
//! some 100 layers fit in the 4096-byte mount option page. Engines that need
//! more can mount with paths relative to [`ImageStore::layers_root`].
//!
//! Every state file is written to a temporary name and renamed. A state file
//! that does not parse is reported by [`ImageStore::load_errors`] with its
//! path and is never rewritten: writes that would replace it fail instead.
//! The store does not mount anything and does not know containers: callers
//! pass a `used_by` callback to `remove`/`prune`.

use super::config::{self, History, ImageConfig, RootFs, RuntimeConfig};
use super::digest::Digest;
use super::layer::{self, Compression};
use super::limits::{Capped, Limits, Meter, SpaceCheck};
use super::reference::Reference;
use super::{digest_hex, ImageError, Result};
use agent_common::engine::{HistoryEntry, ImageSummary, PruneReport};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

/// An image as the engine sees it.
#[derive(Debug, Clone)]
pub struct Image {
    /// `sha256:<hex>` of the config JSON.
    pub id: String,
    /// `name:tag` references that point at it, sorted.
    pub repo_tags: Vec<String>,
    /// `name@sha256:…` manifest digests it was pulled by.
    pub repo_digests: Vec<String>,
    /// The parsed config.
    pub config: ImageConfig,
    /// The config bytes exactly as stored (the id is their digest).
    pub raw_config: Arc<[u8]>,
    /// Sum of the uncompressed layer sizes, in bytes.
    pub size: u64,
}

impl Image {
    /// The container defaults (`config` object), empty when absent.
    pub fn runtime_config(&self) -> RuntimeConfig {
        self.config.config.clone().unwrap_or_default()
    }

    /// The first 12 hex digits of the id, as `images` shows it.
    pub fn short_id(&self) -> &str {
        let hex = self.id.strip_prefix("sha256:").unwrap_or(&self.id);
        &hex[..hex.len().min(12)]
    }
}

/// What the store knows about one unpacked layer.
#[derive(Serialize, Deserialize, Debug, Clone)]
pub(crate) struct LayerRecord {
    pub diff_id: String,
    /// Directory name under `l/`.
    pub dir: String,
    /// Bytes of the uncompressed tar.
    pub size: u64,
    /// Digest of the blob kept under `blobs/sha256/`.
    pub blob: String,
    /// "none", "gzip" or "zstd": how the blob is compressed.
    pub compression: String,
}

/// The per-image record.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct ImageRecord {
    id: String,
    #[serde(default)]
    repo_digests: Vec<String>,
    /// Unix seconds when the image arrived.
    #[serde(default)]
    added: i64,
}

struct Loaded {
    record: ImageRecord,
    config: ImageConfig,
    raw: Arc<[u8]>,
}

#[derive(Default)]
struct State {
    tags: BTreeMap<String, String>,
    images: BTreeMap<String, Loaded>,
    layers: BTreeMap<String, LayerRecord>,
    errors: Vec<String>,
    /// repositories.json was unparseable: refuse to overwrite it.
    tags_corrupt: bool,
}

/// The worker's image store. `Send + Sync`; every method is synchronous
/// (call it from `spawn_blocking`).
pub struct ImageStore {
    root: PathBuf,
    state: Mutex<State>,
    /// Held shared while layers are being added, exclusively while layers are
    /// deleted, so a load never records an image whose layer was just removed.
    gc: RwLock<()>,
    /// Size limits and the free-space reserve for arriving images.
    limits: RwLock<Limits>,
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Proof that layer deletion is held off; see [`ImageStore::pin_layers`].
pub struct LayerPin<'a>(#[allow(dead_code)] std::sync::RwLockReadGuard<'a, ()>);

/// A directory under the store's `tmp/` (same filesystem as the store, so
/// files in it can be renamed into place), removed with its contents on drop.
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Where the directory is.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// A file being written from untrusted input, removed on drop unless
/// [`PartialFile::keep`] was called: every early return of a download or a
/// spool leaves nothing behind. Moving the file away (e.g. into the blob
/// store) before the drop is fine: removal then finds nothing.
pub struct PartialFile {
    path: PathBuf,
    kept: bool,
}

impl PartialFile {
    /// Creates `path` (which must not exist: `O_EXCL`, no symlink followed)
    /// and returns the guard with the open file.
    pub fn create(path: PathBuf) -> io::Result<(PartialFile, File)> {
        let file = File::options().write(true).create_new(true).open(&path)?;
        Ok((PartialFile { path, kept: false }, file))
    }

    /// Guards a file that already exists (e.g. a hard link just made).
    pub fn adopt(path: PathBuf) -> PartialFile {
        PartialFile { path, kept: false }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the file: the guard no longer removes it.
    pub fn keep(mut self) -> PathBuf {
        self.kept = true;
        std::mem::take(&mut self.path)
    }
}

impl Drop for PartialFile {
    fn drop(&mut self) {
        if !self.kept {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn io_err<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |e| ImageError::io(action, path, e)
}

/// Writes `data` to `path` through a temporary file and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut f = File::create(&tmp).map_err(io_err("create", &tmp))?;
    f.write_all(data).map_err(io_err("write", &tmp))?;
    f.sync_all().map_err(io_err("sync", &tmp))?;
    fs::rename(&tmp, path).map_err(io_err("rename into place", path))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(0))
}

fn compression_name(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Zstd => "zstd",
    }
}

/// Normalizes a user reference to the `name:tag` key of the tag index.
pub(crate) fn normalize_tag(reference: &str) -> Result<String> {
    let r = Reference::parse(reference)?;
    r.tagged_name().ok_or_else(|| ImageError::BadChange {
        change: reference.to_string(),
        reason: "a tag is needed here, not a digest".into(),
    })
}

impl ImageStore {
    /// Opens (creating if needed) the store rooted at `root`. State files
    /// that do not parse are reported by [`ImageStore::load_errors`] and left
    /// alone; the images they describe are unavailable until fixed.
    pub fn open(root: &Path) -> Result<ImageStore> {
        for sub in ["blobs/sha256", "layers", "l", "images", "tmp"] {
            let p = root.join(sub);
            fs::create_dir_all(&p).map_err(io_err("create directory", &p))?;
        }
        // Leftovers of a crash: half-unpacked layers, spools.
        let tmp = root.join("tmp");
        if let Ok(rd) = fs::read_dir(&tmp) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() && !p.is_symlink() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
            }
        }
        let mut st = State::default();
        let tags_path = root.join("repositories.json");
        match fs::read(&tags_path) {
            Ok(data) => match serde_json::from_slice::<BTreeMap<String, String>>(&data) {
                Ok(tags) => st.tags = tags,
                Err(e) => {
                    st.tags_corrupt = true;
                    st.errors.push(
                        ImageError::Corrupt {
                            path: tags_path.clone(),
                            reason: e.to_string(),
                        }
                        .to_string(),
                    );
                }
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("read", &tags_path, e)),
        }
        for (path, data) in read_json_dir(&root.join("layers"))? {
            match serde_json::from_slice::<LayerRecord>(&data) {
                Ok(rec) if root.join("l").join(&rec.dir).is_dir() => {
                    st.layers.insert(rec.diff_id.clone(), rec);
                }
                Ok(rec) => st.errors.push(format!(
                    "layer {} recorded in {} has no directory {}; pull or load the image again",
                    rec.diff_id,
                    path.display(),
                    root.join("l").join(&rec.dir).display()
                )),
                Err(e) => st.errors.push(
                    ImageError::Corrupt {
                        path,
                        reason: e.to_string(),
                    }
                    .to_string(),
                ),
            }
        }
        for (path, data) in read_json_dir(&root.join("images"))? {
            let rec = match serde_json::from_slice::<ImageRecord>(&data) {
                Ok(rec) => rec,
                Err(e) => {
                    st.errors.push(
                        ImageError::Corrupt {
                            path,
                            reason: e.to_string(),
                        }
                        .to_string(),
                    );
                    continue;
                }
            };
            let Some(hex) = digest_hex(&rec.id) else {
                st.errors
                    .push(format!("{}: bad image id {:?}", path.display(), rec.id));
                continue;
            };
            let blob = root.join("blobs/sha256").join(hex);
            let raw = match fs::read(&blob) {
                Ok(raw) => raw,
                Err(e) => {
                    st.errors.push(format!(
                        "failed to read config {} of image {}: {e}",
                        blob.display(),
                        rec.id
                    ));
                    continue;
                }
            };
            let config: ImageConfig = match serde_json::from_slice(&raw) {
                Ok(c) => c,
                Err(e) => {
                    st.errors.push(
                        ImageError::Corrupt {
                            path: blob,
                            reason: e.to_string(),
                        }
                        .to_string(),
                    );
                    continue;
                }
            };
            if let Some(missing) = config
                .rootfs
                .diff_ids
                .iter()
                .find(|d| !st.layers.contains_key(*d))
            {
                st.errors.push(format!(
                    "image {} lacks layer {missing}; remove it and load it again",
                    rec.id
                ));
            }
            st.images.insert(
                rec.id.clone(),
                Loaded {
                    record: rec,
                    config,
                    raw: raw.into(),
                },
            );
        }
        for (tag, id) in &st.tags {
            if !st.images.contains_key(id) {
                st.errors.push(format!(
                    "tag {tag} points at {id}, which is not in the store ({})",
                    tags_path.display()
                ));
            }
        }
        Ok(ImageStore {
            root: root.to_path_buf(),
            state: Mutex::new(st),
            gc: RwLock::new(()),
            limits: RwLock::new(Limits::default()),
        })
    }

    /// Problems found in the state files at open, each naming its file.
    pub fn load_errors(&self) -> Vec<String> {
        self.lock().errors.clone()
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory holding every unpacked layer (`<root>/l`); the names
    /// [`ImageStore::layer_dirs`] returns are directly inside it.
    pub fn layers_root(&self) -> PathBuf {
        self.root.join("l")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The limits arriving images are held to.
    pub fn limits(&self) -> Limits {
        *self.limits.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Sets the limits (the daemon's `--max-layer-size`, `--min-free-space`).
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write().unwrap_or_else(|p| p.into_inner()) = limits;
    }

    /// The free-space check for writes into the store.
    pub fn space(&self) -> SpaceCheck {
        SpaceCheck {
            root: self.root.clone(),
            reserve: self.limits().min_free_space,
        }
    }

    /// Where the blob with this digest lives. Only a validated [`Digest`]
    /// names a file here.
    pub(crate) fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// [`ImageStore::blob_path`] for a digest read from the store's own records.
    pub(crate) fn recorded_blob_path(&self, digest: &str) -> Result<PathBuf> {
        let d = Digest::parse(digest).map_err(|source| ImageError::BadDigest {
            what: "blob digest in a layer record".into(),
            source,
        })?;
        Ok(self.blob_path(&d))
    }

    /// A fresh directory under `<root>/tmp`, removed when dropped.
    pub fn temp_dir(&self, what: &str) -> Result<TempDir> {
        let path = self.root.join("tmp").join(format!(
            "{what}-{}-{}",
            std::process::id(),
            TMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).map_err(io_err("create directory", &path))?;
        Ok(TempDir { path })
    }

    /// Moves a verified blob file into `blobs/sha256/`.
    pub(crate) fn commit_blob(&self, tmp: &Path, digest: &Digest) -> Result<PathBuf> {
        let dest = self.blob_path(digest);
        if dest.exists() {
            let _ = fs::remove_file(tmp);
        } else {
            fs::rename(tmp, &dest).map_err(io_err("move blob into", &dest))?;
        }
        Ok(dest)
    }

    /// True when the layer with this diff_id is already unpacked.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.lock().layers.contains_key(diff_id)
    }

    /// Keeps layers from being deleted (by `remove`/`prune`) while the pin
    /// lives. Hold one from the first [`ImageStore::add_layer`] of an image
    /// until its [`ImageStore::add_image`], so no layer vanishes in between.
    pub fn pin_layers(&self) -> LayerPin<'_> {
        LayerPin(self.gc.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Adds a layer from a blob file already in the store's `tmp/` (see
    /// [`ImageStore::temp_dir`]; it is moved, not copied) whose sha256 is
    /// `blob_digest` (the caller verified it). The blob may be plain, gzip or
    /// zstd. The uncompressed stream must hash to `expected_diff_id` when
    /// given. Unpacks into `tmp/` and renames into `l/` only once complete;
    /// the uncompressed stream is held to [`Limits::max_layer_size`] and the
    /// free-space reserve (a decompression bomb stops there, and its partial
    /// directory is removed). Returns the diff_id.
    pub fn add_layer(
        &self,
        _pin: &LayerPin<'_>,
        blob_tmp: &Path,
        blob_digest: &Digest,
        expected_diff_id: Option<&Digest>,
    ) -> Result<String> {
        self.add_layer_locked(blob_tmp, blob_digest, expected_diff_id)
    }

    fn add_layer_locked(
        &self,
        blob_tmp: &Path,
        blob_digest: &Digest,
        expected_diff_id: Option<&Digest>,
    ) -> Result<String> {
        if let Some(d) = expected_diff_id {
            if self.has_layer(d.as_str()) {
                let _ = fs::remove_file(blob_tmp);
                return Ok(d.to_string());
            }
        }
        let work = self.temp_dir("unpack")?;
        let dest = work.path().join("layer");
        let file = File::open(blob_tmp).map_err(io_err("open", blob_tmp))?;
        let (reader, compression) =
            layer::decompressed(file).map_err(io_err("read layer blob", blob_tmp))?;
        let limits = self.limits();
        let meter = Meter::new(
            format!("layer {blob_digest}: its uncompressed content"),
            limits.max_layer_size,
            "; the daemon's --max-layer-size sets this limit",
        )
        .watching(self.space());
        let (reader, tripped) = Capped::new(reader, meter);
        let unpacked = layer::unpack_layer(reader, &dest).map_err(|e| tripped.explain(e))?;
        if let Some(expected) = expected_diff_id {
            if unpacked.diff_id != expected.as_str() {
                return Err(ImageError::DigestMismatch {
                    what: format!(
                        "layer {blob_digest} (uncompressed) against diff_id in the image config"
                    ),
                    expected: expected.to_string(),
                    actual: unpacked.diff_id,
                });
            }
        }
        let diff_hex = digest_hex(&unpacked.diff_id)
            .unwrap_or_default()
            .to_string();
        self.commit_blob(blob_tmp, blob_digest)?;
        let mut st = self.lock();
        if st.layers.contains_key(&unpacked.diff_id) {
            return Ok(unpacked.diff_id);
        }
        let taken: BTreeSet<&str> = st.layers.values().map(|l| l.dir.as_str()).collect();
        let mut len = 12;
        let dir = loop {
            let cand = &diff_hex[..len.min(diff_hex.len())];
            if !taken.contains(cand) || len >= diff_hex.len() {
                break cand.to_string();
            }
            len += 4;
        };
        let final_dir = self.root.join("l").join(&dir);
        if final_dir.exists() {
            // Unrecorded leftover (crash between rename and record): replace it.
            fs::remove_dir_all(&final_dir).map_err(io_err("remove stale layer", &final_dir))?;
        }
        fs::rename(&dest, &final_dir).map_err(io_err("move layer into", &final_dir))?;
        let rec = LayerRecord {
            diff_id: unpacked.diff_id.clone(),
            dir,
            size: unpacked.size,
            blob: blob_digest.to_string(),
            compression: compression_name(compression).to_string(),
        };
        let data = serde_json::to_vec_pretty(&rec).map_err(|source| ImageError::Encode {
            what: "layer record",
            source,
        })?;
        write_atomic(
            &self.root.join("layers").join(format!("{diff_hex}.json")),
            &data,
        )?;
        st.layers.insert(rec.diff_id.clone(), rec);
        Ok(unpacked.diff_id)
    }

    /// Records an image whose layers are all in the store: writes the config
    /// blob and the image record, and points `tags` (`name:tag`) at it (a tag
    /// that pointed elsewhere moves; the old image stays, untagged). Returns
    /// the image id.
    pub fn add_image(
        &self,
        raw_config: &[u8],
        tags: &[String],
        repo_digests: &[String],
    ) -> Result<String> {
        let config: ImageConfig = serde_json::from_slice(raw_config)
            .map_err(|e| ImageError::BadArchive(format!("image config is not valid JSON: {e}")))?;
        let id = super::sha256_digest(raw_config);
        let tags = tags
            .iter()
            .map(|t| normalize_tag(t))
            .collect::<Result<Vec<_>>>()?;
        let blob = self.blob_path(&Digest::of(raw_config));
        if !blob.exists() {
            write_atomic(&blob, raw_config)?;
        }
        let mut st = self.lock();
        if let Some(missing) = config
            .rootfs
            .diff_ids
            .iter()
            .find(|d| !st.layers.contains_key(*d))
        {
            return Err(ImageError::BadArchive(format!(
                "image {id} needs layer {missing}, which is not in the store"
            )));
        }
        let mut record = st
            .images
            .get(&id)
            .map(|l| l.record.clone())
            .unwrap_or(ImageRecord {
                id: id.clone(),
                repo_digests: Vec::new(),
                added: now_unix(),
            });
        for d in repo_digests {
            if !record.repo_digests.contains(d) {
                record.repo_digests.push(d.clone());
            }
        }
        let data = serde_json::to_vec_pretty(&record).map_err(|source| ImageError::Encode {
            what: "image record",
            source,
        })?;
        let hex = digest_hex(&id).unwrap_or_default();
        write_atomic(&self.root.join("images").join(format!("{hex}.json")), &data)?;
        st.images.insert(
            id.clone(),
            Loaded {
                record,
                config,
                raw: raw_config.into(),
            },
        );
        if !tags.is_empty() {
            let mut new_tags = st.tags.clone();
            for t in tags {
                new_tags.insert(t, id.clone());
            }
            self.save_tags(&mut st, new_tags)?;
        }
        Ok(id)
    }

    fn save_tags(&self, st: &mut State, tags: BTreeMap<String, String>) -> Result<()> {
        let path = self.root.join("repositories.json");
        if st.tags_corrupt {
            return Err(ImageError::Corrupt {
                path,
                reason: "the tag index did not parse when the store was opened".into(),
            });
        }
        let data = serde_json::to_vec_pretty(&tags).map_err(|source| ImageError::Encode {
            what: "tag index",
            source,
        })?;
        write_atomic(&path, &data)?;
        st.tags = tags;
        Ok(())
    }

    fn image_of(&self, st: &State, id: &str) -> Option<Image> {
        let l = st.images.get(id)?;
        let repo_tags = st
            .tags
            .iter()
            .filter(|(_, v)| v.as_str() == id)
            .map(|(k, _)| k.clone())
            .collect();
        let size = l
            .config
            .rootfs
            .diff_ids
            .iter()
            .filter_map(|d| st.layers.get(d))
            .map(|r| r.size)
            .sum();
        Some(Image {
            id: id.to_string(),
            repo_tags,
            repo_digests: l.record.repo_digests.clone(),
            config: l.config.clone(),
            raw_config: l.raw.clone(),
            size,
        })
    }

    /// Finds the id `name_or_id` names in `st`; the second value is true when
    /// it was found by tag.
    fn resolve_id(&self, st: &State, name_or_id: &str) -> Result<(String, Option<String>)> {
        if let Some(hex) = name_or_id.strip_prefix("sha256:") {
            return self.resolve_prefix(st, hex, name_or_id);
        }
        let parsed = Reference::parse(name_or_id);
        if let Ok(r) = &parsed {
            if let Some(t) = r.tagged_name() {
                if let Some(id) = st.tags.get(&t) {
                    if st.images.contains_key(id) {
                        return Ok((id.clone(), Some(t)));
                    }
                }
            }
            if let Some(d) = &r.digest {
                let want = format!("{}@{d}", r.name());
                if let Some((id, _)) = st
                    .images
                    .iter()
                    .find(|(_, l)| l.record.repo_digests.contains(&want))
                {
                    return Ok((id.clone(), None));
                }
            }
        }
        if !name_or_id.is_empty() && name_or_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            match self.resolve_prefix(st, name_or_id, name_or_id) {
                Ok(found) => return Ok(found),
                Err(ImageError::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        let shown = match &parsed {
            Ok(r) if r.digest.is_none() => {
                r.tagged_name().unwrap_or_else(|| name_or_id.to_string())
            }
            _ => name_or_id.to_string(),
        };
        Err(ImageError::NotFound(shown))
    }

    fn resolve_prefix(
        &self,
        st: &State,
        hex: &str,
        shown: &str,
    ) -> Result<(String, Option<String>)> {
        let hex = hex.to_ascii_lowercase();
        if hex.is_empty() {
            return Err(ImageError::NotFound(shown.to_string()));
        }
        let matches: Vec<&String> = st
            .images
            .keys()
            .filter(|id| {
                id.strip_prefix("sha256:")
                    .is_some_and(|h| h.starts_with(&hex))
            })
            .collect();
        match matches.as_slice() {
            [one] => Ok(((*one).clone(), None)),
            [] => Err(ImageError::NotFound(shown.to_string())),
            many => Err(ImageError::Ambiguous {
                prefix: shown.to_string(),
                count: many.len(),
            }),
        }
    }

    /// Finds an image by `name[:tag]` (bare name = `:latest`), `name@digest`,
    /// full `sha256:…` id, or an unambiguous hex prefix of the id.
    pub fn resolve(&self, name_or_id: &str) -> Result<Image> {
        let st = self.lock();
        let (id, _) = self.resolve_id(&st, name_or_id)?;
        self.image_of(&st, &id)
            .ok_or_else(|| ImageError::NotFound(name_or_id.to_string()))
    }

    /// The image's unpacked layer directories, BOTTOM first (reverse them
    /// for an overlay `lowerdir`, whose first entry is the top).
    pub fn layer_dirs(&self, image: &Image) -> Result<Vec<PathBuf>> {
        let st = self.lock();
        image
            .config
            .rootfs
            .diff_ids
            .iter()
            .map(|d| {
                st.layers
                    .get(d)
                    .map(|r| self.root.join("l").join(&r.dir))
                    .ok_or_else(|| {
                        ImageError::NotFound(format!(
                            "layer {d} of image {} (remove the image and load or pull it again)",
                            image.id
                        ))
                    })
            })
            .collect()
    }

    pub(crate) fn layer_record(&self, diff_id: &str) -> Option<LayerRecord> {
        self.lock().layers.get(diff_id).cloned()
    }

    /// One row per tag (untagged images once, as `<none>`), newest first.
    pub fn list(&self) -> Vec<ImageSummary> {
        let st = self.lock();
        let mut rows = Vec::new();
        for id in st.images.keys() {
            let Some(img) = self.image_of(&st, id) else {
                continue;
            };
            let created = img.config.created_unix();
            if img.repo_tags.is_empty() {
                rows.push(ImageSummary {
                    id: id.clone(),
                    repository: "<none>".into(),
                    tag: "<none>".into(),
                    created,
                    size: img.size,
                });
            }
            for t in &img.repo_tags {
                let (repo, tag) = t.rsplit_once(':').unwrap_or((t, "<none>"));
                rows.push(ImageSummary {
                    id: id.clone(),
                    repository: repo.to_string(),
                    tag: tag.to_string(),
                    created,
                    size: img.size,
                });
            }
        }
        rows.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then_with(|| a.repository.cmp(&b.repository))
                .then_with(|| a.tag.cmp(&b.tag))
        });
        rows
    }

    /// Docker-like `image inspect` JSON.
    pub fn inspect(&self, image: &Image) -> Value {
        let c = &image.config;
        json!({
            "Id": image.id,
            "RepoTags": image.repo_tags,
            "RepoDigests": image.repo_digests,
            "Parent": "",
            "Comment": c.history.last().and_then(|h| h.comment.clone()).unwrap_or_default(),
            "Created": c.created.clone().unwrap_or_else(|| config::unix_to_rfc3339(0)),
            "DockerVersion": c.extra.get("docker_version").cloned().unwrap_or(Value::String(String::new())),
            "Author": c.author.clone().unwrap_or_default(),
            "Config": c.config.clone().unwrap_or_default(),
            "Architecture": c.architecture,
            "Variant": c.variant,
            "Os": c.os,
            "Size": image.size,
            "RootFS": { "Type": "layers", "Layers": c.rootfs.diff_ids },
            "Metadata": { "LastTagTime": "0001-01-01T00:00:00Z" },
        })
    }

    /// `history`: newest step first; steps that made a layer carry its size.
    pub fn history(&self, image: &Image) -> Vec<HistoryEntry> {
        let st = self.lock();
        let mut layers = image.config.rootfs.diff_ids.iter();
        let mut out: Vec<HistoryEntry> = image
            .config
            .history
            .iter()
            .map(|h| {
                let size = if h.empty_layer {
                    0
                } else {
                    layers
                        .next()
                        .and_then(|d| st.layers.get(d))
                        .map_or(0, |r| r.size)
                };
                HistoryEntry {
                    id: "<missing>".into(),
                    created: h.created.as_deref().map_or(0, config::parse_time),
                    created_by: h.created_by.clone().unwrap_or_default(),
                    size,
                    comment: h.comment.clone().unwrap_or_default(),
                    empty_layer: h.empty_layer,
                }
            })
            .collect();
        out.reverse();
        if let Some(first) = out.first_mut() {
            first.id = image.id.clone();
        }
        out
    }

    /// Points `target` (`name[:tag]`) at the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<()> {
        let target = normalize_tag(target)?;
        let mut st = self.lock();
        let (id, _) = self.resolve_id(&st, source)?;
        let mut tags = st.tags.clone();
        tags.insert(target, id);
        self.save_tags(&mut st, tags)
    }

    /// `rmi` with Docker's rules. By tag: an image with other tags is only
    /// untagged; the last tag also deletes the image unless a container uses
    /// it (then `force` is needed, and only untags). By id: refused while a
    /// container uses it or tags of several repositories point at it, unless
    /// `force`; a forced removal of an image in use only untags it. Deleting
    /// an image deletes the layers no other image has. `used_by` maps an image
    /// id to a container that uses it. Returns `Untagged: …`/`Deleted: …` lines.
    pub fn remove(
        &self,
        name_or_id: &str,
        force: bool,
        used_by: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<String>> {
        let _gc = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        let (id, by_tag) = self.resolve_id(&st, name_or_id)?;
        let tags: Vec<String> = st
            .tags
            .iter()
            .filter(|(_, v)| **v == id)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        if let Some(tag) = by_tag {
            if tags.len() > 1 {
                let mut new_tags = st.tags.clone();
                new_tags.remove(&tag);
                self.save_tags(&mut st, new_tags)?;
                return Ok(vec![format!("Untagged: {tag}")]);
            }
        } else {
            let repos: BTreeSet<&str> = tags
                .iter()
                .map(|t| t.rsplit_once(':').map_or(t.as_str(), |p| p.0))
                .collect();
            if repos.len() > 1 && !force {
                return Err(ImageError::MultipleTags { id });
            }
        }
        let user = used_by(&id);
        if let Some(container) = &user {
            if !force {
                return Err(ImageError::InUse {
                    container: short(container).to_string(),
                });
            }
        }
        if !tags.is_empty() {
            let mut new_tags = st.tags.clone();
            for t in &tags {
                new_tags.remove(t);
                out.push(format!("Untagged: {t}"));
            }
            self.save_tags(&mut st, new_tags)?;
        }
        if user.is_none() {
            out.extend(self.delete_image(&mut st, &id)?.0);
        }
        Ok(out)
    }

    /// Deletes an image record and its now unused layers. Returns lines and
    /// bytes reclaimed.
    fn delete_image(&self, st: &mut State, id: &str) -> Result<(Vec<String>, u64)> {
        let mut out = Vec::new();
        let hex = digest_hex(id).unwrap_or_default().to_string();
        let rec_path = self.root.join("images").join(format!("{hex}.json"));
        match fs::remove_file(&rec_path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(ImageError::io("remove", &rec_path, e)),
        }
        let Some(gone) = st.images.remove(id) else {
            return Ok((out, 0));
        };
        let _ = fs::remove_file(self.root.join("blobs/sha256").join(&hex));
        out.push(format!("Deleted: {id}"));
        let (lines, reclaimed) = self.delete_unused_layers(st, &gone.config.rootfs.diff_ids)?;
        out.extend(lines);
        Ok((out, reclaimed))
    }

    /// Deletes those of `candidates` no image references. Returns lines and
    /// bytes reclaimed.
    fn delete_unused_layers(
        &self,
        st: &mut State,
        candidates: &[String],
    ) -> Result<(Vec<String>, u64)> {
        let mut out = Vec::new();
        let in_use: BTreeSet<&String> = st
            .images
            .values()
            .flat_map(|l| l.config.rootfs.diff_ids.iter())
            .collect();
        let mut reclaimed = 0;
        let mut removed = Vec::new();
        for d in candidates {
            if in_use.contains(d) || removed.contains(d) {
                continue;
            }
            let Some(rec) = st.layers.get(d).cloned() else {
                continue;
            };
            // Record first, then data: a crash leaves an orphan dir, never a
            // record pointing at a half-deleted layer.
            let lhex = digest_hex(d).unwrap_or_default();
            let lrec = self.root.join("layers").join(format!("{lhex}.json"));
            match fs::remove_file(&lrec) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ImageError::io("remove", &lrec, e)),
            }
            st.layers.remove(d);
            let dir = self.root.join("l").join(&rec.dir);
            let trash = self.temp_dir("trash")?;
            let moved = trash.path().join("layer");
            if fs::rename(&dir, &moved).is_ok() {
                drop(trash);
            } else {
                let _ = fs::remove_dir_all(&dir);
            }
            if let Ok(p) = self.recorded_blob_path(&rec.blob) {
                let _ = fs::remove_file(p);
            }
            reclaimed += rec.size;
            out.push(format!("Deleted: {d}"));
            removed.push(d.clone());
        }
        Ok((out, reclaimed))
    }

    /// Removes dangling (untagged) images, or with `all` every image no
    /// container uses. Images a container uses are kept.
    pub fn prune(
        &self,
        all: bool,
        used_by: &dyn Fn(&str) -> Option<String>,
    ) -> Result<PruneReport> {
        let _gc = self.gc.write().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        let tagged: BTreeSet<String> = st.tags.values().cloned().collect();
        let candidates: Vec<String> = st
            .images
            .keys()
            .filter(|id| all || !tagged.contains(*id))
            .filter(|id| used_by(id).is_none())
            .cloned()
            .collect();
        let mut report = PruneReport::default();
        for id in candidates {
            let tags: Vec<String> = st
                .tags
                .iter()
                .filter(|(_, v)| **v == id)
                .map(|(k, _)| k.clone())
                .collect();
            if !tags.is_empty() {
                let mut new_tags = st.tags.clone();
                for t in &tags {
                    new_tags.remove(t);
                    report.deleted.push(format!("Untagged: {t}"));
                }
                self.save_tags(&mut st, new_tags)?;
            }
            let (lines, bytes) = self.delete_image(&mut st, &id)?;
            report.deleted.extend(lines);
            report.space_reclaimed += bytes;
        }
        // Layers no image references (left by a load that failed half way).
        let all_layers: Vec<String> = st.layers.keys().cloned().collect();
        let (lines, bytes) = self.delete_unused_layers(&mut st, &all_layers)?;
        report.deleted.extend(lines);
        report.space_reclaimed += bytes;
        Ok(report)
    }

    /// `import`: a root filesystem tarball (plain, gzip or zstd) becomes a
    /// one-layer image. `changes` are Dockerfile instructions as
    /// `docker import --change` takes them; `message` becomes the history
    /// comment. Returns the image id.
    pub fn import(
        &self,
        reader: impl Read,
        reference: Option<&str>,
        changes: &[String],
        message: &str,
    ) -> Result<String> {
        let tag = reference.map(normalize_tag).transpose()?;
        let mut rc = RuntimeConfig::default();
        super::changes::apply_changes(&mut rc, changes)?;
        let _pin = self.pin_layers();
        let space = self.space();
        space.check(0)?;
        let work = self.temp_dir("import")?;
        let blob = work.path().join("blob");
        // One pass: decompress, keep the plain tar as the blob, hash it.
        let (reader, _) = layer::decompressed(reader)
            .map_err(|e| ImageError::BadArchive(format!("failed to read import stream: {e}")))?;
        let meter = Meter::new(
            "the imported tarball (uncompressed)",
            self.limits().max_layer_size,
            "; the daemon's --max-layer-size sets this limit",
        )
        .watching(space);
        let (mut reader, tripped) = Capped::new(reader, meter);
        let mut file = File::create(&blob).map_err(io_err("create", &blob))?;
        let mut hw = layer::HashWriter::new(&mut file);
        io::copy(&mut reader, &mut hw).map_err(|e| {
            tripped.explain(ImageError::BadArchive(format!(
                "failed to read import stream: {e}"
            )))
        })?;
        let (_, digest, _) = hw.finish();
        file.sync_all().map_err(io_err("sync", &blob))?;
        drop(file);
        let digest = computed(digest)?;
        let diff_id = self.add_layer_locked(&blob, &digest, Some(&digest))?;
        let created = config::now_rfc3339();
        let cfg = ImageConfig {
            architecture: host_arch().to_string(),
            os: "linux".into(),
            created: Some(created.clone()),
            config: Some(rc),
            rootfs: RootFs {
                typ: "layers".into(),
                diff_ids: vec![diff_id],
            },
            history: vec![History {
                created: Some(created),
                comment: Some(if message.is_empty() {
                    "Imported from -".into()
                } else {
                    message.to_string()
                }),
                ..History::default()
            }],
            ..ImageConfig::default()
        };
        let raw = serde_json::to_vec(&cfg).map_err(|source| ImageError::Encode {
            what: "image config",
            source,
        })?;
        self.add_image(&raw, tag.as_slice(), &[])
    }

    /// `commit`: the container's overlay upper directory becomes a new layer
    /// on top of `parent`'s, with `runtime_config` as the new defaults and a
    /// history entry. Returns the new image id.
    pub fn commit(
        &self,
        parent: Option<&Image>,
        upper_dir: &Path,
        runtime_config: RuntimeConfig,
        reference: Option<&str>,
        comment: &str,
        author: &str,
    ) -> Result<String> {
        let tag = reference.map(normalize_tag).transpose()?;
        let _pin = self.pin_layers();
        let space = self.space();
        space.check(0)?;
        let work = self.temp_dir("commit")?;
        let blob = work.path().join("blob");
        let file = File::create(&blob).map_err(io_err("create", &blob))?;
        // The container's own files: no size limit, but the reserve is kept.
        let meter = Meter::new("the committed layer", u64::MAX, "").watching(space);
        let (metered, tripped) = super::limits::Metered::new(file, meter);
        let mut w = io::BufWriter::new(metered);
        let (digest, _) =
            layer::write_upper_as_layer(upper_dir, &mut w).map_err(|e| tripped.explain(e))?;
        w.flush()
            .map_err(|e| tripped.explain(ImageError::io("write", &blob, e)))?;
        drop(w);
        let digest = computed(digest)?;
        let diff_id = self.add_layer_locked(&blob, &digest, Some(&digest))?;
        let created = config::now_rfc3339();
        let mut cfg = parent
            .map(|p| p.config.clone())
            .unwrap_or_else(|| ImageConfig {
                architecture: host_arch().to_string(),
                os: "linux".into(),
                rootfs: RootFs {
                    typ: "layers".into(),
                    diff_ids: Vec::new(),
                },
                ..ImageConfig::default()
            });
        let created_by = runtime_config
            .entrypoint
            .iter()
            .flatten()
            .chain(runtime_config.cmd.iter().flatten())
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        cfg.created = Some(created.clone());
        cfg.author = (!author.is_empty()).then(|| author.to_string());
        cfg.config = Some(runtime_config);
        cfg.rootfs.typ = "layers".into();
        cfg.rootfs.diff_ids.push(diff_id);
        cfg.history.push(History {
            created: Some(created),
            author: cfg.author.clone(),
            created_by: Some(created_by),
            comment: (!comment.is_empty()).then(|| comment.to_string()),
            empty_layer: false,
        });
        cfg.extra.remove("container_config");
        cfg.extra.remove("container");
        let raw = serde_json::to_vec(&cfg).map_err(|source| ImageError::Encode {
            what: "image config",
            source,
        })?;
        self.add_image(&raw, tag.as_slice(), &[])
    }
}

/// A digest this process computed (always well formed) as a [`Digest`].
fn computed(digest: String) -> Result<Digest> {
    Digest::parse(&digest).map_err(|source| ImageError::BadDigest {
        what: "computed digest".into(),
        source,
    })
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

/// The OCI architecture name of this machine.
pub fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// Reads every `*.json` in `dir` (name, bytes).
fn read_json_dir(dir: &Path) -> Result<Vec<(PathBuf, Vec<u8>)>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("read directory", dir))? {
        let e = e.map_err(io_err("read directory", dir))?;
        let p = e.path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let data = fs::read(&p).map_err(|e| ImageError::io("read", &p, e))?;
        out.push((p, data));
    }
    out.sort();
    Ok(out)
}

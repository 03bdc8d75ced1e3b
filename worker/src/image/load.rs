//! `load`: images arriving as archives or directories.
//!
//! Accepted inputs: `docker save` tarballs in the legacy layout
//! (`manifest.json`, `<id>.json`, `<layer>/layer.tar`, possibly symlinked)
//! and the Docker ≥ 25 layout (`manifest.json` naming `blobs/sha256/…`);
//! OCI image layouts (`oci-layout`, `index.json`, `blobs/`), as a tar or a
//! directory. The tar may itself be gzip or zstd compressed, and so may each
//! layer. The archive is streamed once: regular files are spooled (and
//! hashed) into a temporary directory under the store root, never held in
//! memory; symlinks and hardlinks between entries are resolved by name,
//! confined to the archive. Every digest is checked: configs against the
//! image id or blob name, blobs against their names or descriptors, and every
//! layer's uncompressed stream against the config's diff_ids. Every digest a
//! descriptor or config carries is a [`Digest`] from the moment it is parsed
//! (a path-shaped one refuses the archive); spooled files are named by their
//! position in the archive, each is held to the store's layer size limit and
//! the free-space reserve, and the whole spool is removed when the load ends.

use super::digest::Digest;
use super::layer::{self, HashReader};
use super::limits::{Capped, Meter, SpaceCheck, MAX_DOCUMENT};
use super::reference::Reference;
use super::store::{host_arch, ImageStore, LayerPin, PartialFile, TempDir};
use super::{ImageError, Result};
use serde::Deserialize;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// JSON files larger than this are refused (configs, manifests, indexes).
const MAX_JSON: u64 = MAX_DOCUMENT;

/// A spooled regular file.
struct Spooled {
    path: PathBuf,
    digest: Digest,
}

/// A digest this process computed (always well formed).
fn computed(digest: &str) -> Result<Digest> {
    Digest::parse(digest).map_err(|source| ImageError::BadDigest {
        what: "computed digest".into(),
        source,
    })
}

/// Where archive files are copied to: by position, never by name or digest.
struct Takes<'a> {
    dir: &'a Path,
    next: std::cell::Cell<usize>,
    max: u64,
    space: SpaceCheck,
}

/// Where the archive's files are read from.
enum Source {
    /// A streamed tar, spooled into a temp dir.
    Spool {
        _dir: TempDir,
        files: HashMap<String, Spooled>,
        symlinks: HashMap<String, String>,
    },
    /// An OCI layout directory on disk.
    Dir(PathBuf),
}

fn bad(msg: impl Into<String>) -> ImageError {
    ImageError::BadArchive(msg.into())
}

/// Splits a path inside the archive into clean components (`..` pops,
/// never above the archive root).
fn clean(path: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c.to_string()),
        }
    }
    out
}

impl Source {
    /// Resolves symlinks by name, confined to the archive (like Docker's
    /// `FollowSymlinkInScope`).
    fn resolve(&self, path: &str) -> Result<String> {
        let Source::Spool { symlinks, .. } = self else {
            return Ok(clean(path).join("/"));
        };
        let mut pending: Vec<String> = clean(path);
        pending.reverse();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            done.push(c);
            let so_far = done.join("/");
            if let Some(target) = symlinks.get(&so_far) {
                hops += 1;
                if hops > 40 {
                    return Err(bad(format!("too many symlinks resolving {path}")));
                }
                done.pop();
                let base = if target.starts_with('/') {
                    String::new()
                } else {
                    done.join("/")
                };
                let joined = clean(&format!("{base}/{target}"));
                done.clear();
                for c in joined.into_iter().rev() {
                    pending.push(c);
                }
            }
        }
        Ok(done.join("/"))
    }

    fn exists(&self, path: &str) -> bool {
        match self {
            Source::Spool { files, .. } => self.resolve(path).is_ok_and(|p| files.contains_key(&p)),
            Source::Dir(d) => d.join(clean(path).join("/")).is_file(),
        }
    }

    /// Opens a file of the archive; returns it with its sha256 when known.
    fn open(&self, path: &str) -> Result<(File, PathBuf, Option<Digest>)> {
        match self {
            Source::Spool { files, .. } => {
                let p = self.resolve(path)?;
                let f = files
                    .get(&p)
                    .ok_or_else(|| bad(format!("{path} is missing from the archive")))?;
                let file = File::open(&f.path).map_err(|e| ImageError::io("open", &f.path, e))?;
                Ok((file, f.path.clone(), Some(f.digest.clone())))
            }
            Source::Dir(d) => {
                let p = d.join(clean(path).join("/"));
                let file = layer::open_nofollow(&p).map_err(|e| ImageError::io("open", &p, e))?;
                Ok((file, p, None))
            }
        }
    }

    /// Reads a small file; returns its bytes and digest.
    fn read(&self, path: &str) -> Result<(Vec<u8>, Digest)> {
        let (file, p, _) = self.open(path)?;
        let mut data = Vec::new();
        file.take(MAX_JSON + 1)
            .read_to_end(&mut data)
            .map_err(|e| ImageError::io("read", &p, e))?;
        if data.len() as u64 > MAX_JSON {
            return Err(bad(format!("{path} is larger than {MAX_JSON} bytes")));
        }
        let digest = Digest::of(&data);
        Ok((data, digest))
    }

    /// Reads a blob by digest and verifies it.
    fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let hex = digest.hex();
        let (data, actual) = self.read(&format!("blobs/sha256/{hex}"))?;
        if actual != *digest {
            return Err(ImageError::DigestMismatch {
                what: format!("blob blobs/sha256/{hex}"),
                expected: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(data)
    }

    /// Puts a copy of the file (a hardlink when spooled) into the takes'
    /// directory, named by position, and returns its guard and sha256. The
    /// copy is held to the layer size limit and the free-space reserve.
    fn take(&self, path: &str, takes: &Takes<'_>) -> Result<(PartialFile, Digest)> {
        let n = takes.next.get();
        takes.next.set(n + 1);
        let dest = takes.dir.join(format!("blob-{n}"));
        let (file, src, digest) = self.open(path)?;
        if let Some(digest) = digest {
            if fs::hard_link(&src, &dest).is_ok() {
                let guard = PartialFile::adopt(dest);
                return Ok((guard, digest));
            }
        }
        let meter = Meter::new(
            format!("{path} in the image archive"),
            takes.max,
            "; the daemon's --max-layer-size sets this limit",
        )
        .watching(takes.space.clone());
        let (capped, tripped) = Capped::new(file, meter);
        let mut hr = HashReader::new(capped);
        let (guard, mut out) =
            PartialFile::create(dest.clone()).map_err(|e| ImageError::io("create", &dest, e))?;
        io::copy(&mut hr, &mut out)
            .map_err(|e| tripped.explain(ImageError::io("copy", &src, e)))?;
        let (digest, _) = hr.finish().map_err(|e| ImageError::io("read", &src, e))?;
        Ok((guard, computed(&digest)?))
    }
}

/// One entry of `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    #[serde(default)]
    layers: Vec<String>,
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct Descriptor {
    #[serde(default)]
    media_type: String,
    /// Validated while the JSON is parsed: a path-shaped digest refuses the document.
    digest: Digest,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

#[derive(Deserialize, Clone)]
struct Platform {
    #[serde(default)]
    architecture: String,
    #[serde(default)]
    os: String,
}

#[derive(Deserialize)]
struct Index {
    #[serde(default)]
    manifests: Vec<Descriptor>,
}

#[derive(Deserialize)]
struct OciManifest {
    config: Descriptor,
    #[serde(default)]
    layers: Vec<Descriptor>,
}

fn is_index(media_type: &str) -> bool {
    media_type == "application/vnd.oci.image.index.v1+json"
        || media_type == "application/vnd.docker.distribution.manifest.list.v2+json"
}

impl ImageStore {
    /// Loads every image of a `docker save` tarball or OCI layout tarball
    /// (optionally gzip/zstd compressed). Returns `Loaded image: name:tag`
    /// lines (`Loaded image ID: sha256:…` for untagged images).
    pub fn load(&self, reader: impl Read) -> Result<Vec<String>> {
        let source = self.spool(reader)?;
        self.load_source(&source, None)
    }

    /// Loads an OCI image layout directory. Images are tagged from their
    /// `io.containerd.image.name` or `org.opencontainers.image.ref.name`
    /// annotation (a bare tag `t` names `t:latest`), or as `tag_as` when given.
    pub fn load_oci_dir(&self, dir: &Path, tag_as: Option<&str>) -> Result<Vec<String>> {
        let source = Source::Dir(dir.to_path_buf());
        if !source.exists("index.json") {
            return Err(bad(format!(
                "{} has no index.json: not an OCI image layout",
                dir.display()
            )));
        }
        self.load_source(&source, tag_as)
    }

    fn spool(&self, reader: impl Read) -> Result<Source> {
        let space = self.space();
        space.check(0)?;
        let max = self.limits().max_layer_size;
        let dir = self.temp_dir("load")?;
        let (reader, _) =
            layer::decompressed(reader).map_err(|e| bad(format!("failed to read archive: {e}")))?;
        // Oversized long names and PAX headers stop before the tar crate
        // reads them into memory.
        let (reader, guard) = super::tar_guard::TarGuard::new(reader);
        self.spool_tar(reader, dir, &space, max)
            .map_err(|e| guard.explain(e))
    }

    /// Spools every regular file of the archive into `dir`, named by position.
    fn spool_tar(
        &self,
        reader: impl Read,
        dir: TempDir,
        space: &SpaceCheck,
        max: u64,
    ) -> Result<Source> {
        let mut archive = tar::Archive::new(reader);
        let mut files = HashMap::new();
        let mut symlinks = HashMap::new();
        let mut hardlinks: Vec<(String, String)> = Vec::new();
        let entries = archive
            .entries()
            .map_err(|e| bad(format!("not a tar archive: {e}")))?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| bad(format!("malformed tar archive: {e}")))?;
            let raw = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if raw.starts_with('/') || raw.split('/').any(|c| c == "..") {
                return Err(ImageError::UnsafeEntry {
                    entry: raw,
                    reason: "archive paths must be relative and without '..'".into(),
                });
            }
            let name = clean(&raw).join("/");
            match entry.header().entry_type() {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let path = dir.path().join(format!("f{n}"));
                    let (guard, mut out) = PartialFile::create(path.clone())
                        .map_err(|e| ImageError::io("create", &path, e))?;
                    let meter = Meter::new(
                        format!("{raw} in the image archive"),
                        max,
                        "; the daemon's --max-layer-size sets this limit",
                    )
                    .watching(space.clone());
                    let (capped, tripped) = Capped::new(&mut entry, meter);
                    let mut hr = HashReader::new(capped);
                    io::copy(&mut hr, &mut out).map_err(|e| {
                        tripped.explain(bad(format!("failed to read {raw} from the archive: {e}")))
                    })?;
                    let (digest, _) = hr
                        .finish()
                        .map_err(|e| bad(format!("failed to read {raw}: {e}")))?;
                    let digest = computed(&digest)?;
                    files.insert(
                        name,
                        Spooled {
                            path: guard.keep(),
                            digest,
                        },
                    );
                }
                tar::EntryType::Symlink => {
                    if let Some(t) = entry.link_name_bytes() {
                        symlinks.insert(name, String::from_utf8_lossy(&t).into_owned());
                    }
                }
                tar::EntryType::Link => {
                    if let Some(t) = entry.link_name_bytes() {
                        hardlinks.push((name, clean(&String::from_utf8_lossy(&t)).join("/")));
                    }
                }
                _ => {}
            }
        }
        for (name, target) in hardlinks {
            if let Some(f) = files.get(&target) {
                let s = Spooled {
                    path: f.path.clone(),
                    digest: f.digest.clone(),
                };
                files.insert(name, s);
            }
        }
        Ok(Source::Spool {
            _dir: dir,
            files,
            symlinks,
        })
    }

    fn load_source(&self, src: &Source, tag_as: Option<&str>) -> Result<Vec<String>> {
        let work = self.temp_dir("blobs")?;
        let takes = Takes {
            dir: work.path(),
            next: std::cell::Cell::new(0),
            max: self.limits().max_layer_size,
            space: self.space(),
        };
        let pin = self.pin_layers();
        if src.exists("manifest.json") {
            self.load_docker(src, &takes, &pin)
        } else if src.exists("index.json") {
            self.load_oci(src, &takes, tag_as, &pin)
        } else {
            Err(bad(
                "neither manifest.json (docker save) nor index.json (OCI layout) found in the archive",
            ))
        }
    }

    fn load_docker(
        &self,
        src: &Source,
        tmp: &Takes<'_>,
        pin: &LayerPin<'_>,
    ) -> Result<Vec<String>> {
        let (data, _) = src.read("manifest.json")?;
        let manifests: Vec<DockerManifest> = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("manifest.json is not valid: {e}")))?;
        if manifests.is_empty() {
            return Err(bad("manifest.json lists no images"));
        }
        let mut out = Vec::new();
        for m in manifests {
            let (raw, id) = src.read(&m.config)?;
            // Blob names and legacy `<id>.json` names both carry the digest.
            let name = m.config.rsplit('/').next().unwrap_or_default();
            let named = name.strip_suffix(".json").unwrap_or(name);
            if named.len() == 64
                && named.bytes().all(|b| b.is_ascii_hexdigit())
                && format!("sha256:{named}") != id.as_str()
            {
                return Err(ImageError::DigestMismatch {
                    what: format!("image config {}", m.config),
                    expected: format!("sha256:{named}"),
                    actual: id.to_string(),
                });
            }
            let diff_ids = config_diff_ids(&raw, &m.config)?;
            if diff_ids.len() != m.layers.len() {
                return Err(bad(format!(
                    "image {id}: the config lists {} layers but manifest.json lists {}",
                    diff_ids.len(),
                    m.layers.len()
                )));
            }
            for (path, diff_id) in m.layers.iter().zip(&diff_ids) {
                if self.has_layer(diff_id.as_str()) {
                    continue;
                }
                let (blob, digest) = src.take(path, tmp)?;
                let last = path.rsplit('/').next().unwrap_or_default();
                if path.contains("blobs/sha256/")
                    && last.len() == 64
                    && format!("sha256:{last}") != digest.as_str()
                {
                    return Err(ImageError::DigestMismatch {
                        what: format!("layer blob {path}"),
                        expected: format!("sha256:{last}"),
                        actual: digest.to_string(),
                    });
                }
                self.add_layer(pin, blob.path(), &digest, Some(diff_id))?;
            }
            let tags = m.repo_tags.unwrap_or_default();
            let id = self.add_image(&raw, &tags, &[])?;
            out.extend(loaded_lines(&id, &tags));
        }
        Ok(out)
    }

    fn load_oci(
        &self,
        src: &Source,
        tmp: &Takes<'_>,
        tag_as: Option<&str>,
        pin: &LayerPin<'_>,
    ) -> Result<Vec<String>> {
        let (data, _) = src.read("index.json")?;
        let index: Index = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("index.json is not valid: {e}")))?;
        if index.manifests.is_empty() {
            return Err(bad("index.json lists no manifests"));
        }
        let mut out = Vec::new();
        for desc in index.manifests {
            let name = match tag_as {
                Some(t) => Some(t.to_string()),
                None => image_name(&desc.annotations),
            };
            let Some(manifest_desc) = self.pick_manifest(src, desc, 0)? else {
                continue;
            };
            let id = self.load_oci_manifest(src, tmp, &manifest_desc, name.as_deref(), pin)?;
            let tags: Vec<String> = name.into_iter().collect();
            out.extend(loaded_lines(&id, &tags));
        }
        if out.is_empty() {
            return Err(bad(format!(
                "no image for linux/{} in the index",
                host_arch()
            )));
        }
        Ok(out)
    }

    /// Follows nested indexes to the manifest for this platform.
    fn pick_manifest(
        &self,
        src: &Source,
        desc: Descriptor,
        depth: usize,
    ) -> Result<Option<Descriptor>> {
        if depth > 4 {
            return Err(bad("image indexes nested too deep"));
        }
        let mut media_type = desc.media_type.clone();
        let mut body = None;
        if media_type.is_empty() {
            let data = src.read_blob(&desc.digest)?;
            let v: Value = serde_json::from_slice(&data)
                .map_err(|e| bad(format!("blob {} is not JSON: {e}", desc.digest)))?;
            media_type = match v.get("mediaType").and_then(Value::as_str) {
                Some(m) => m.to_string(),
                None if v.get("manifests").is_some() => {
                    "application/vnd.oci.image.index.v1+json".into()
                }
                None => "application/vnd.oci.image.manifest.v1+json".into(),
            };
            body = Some(data);
        }
        if !is_index(&media_type) {
            return Ok(Some(desc));
        }
        let data = match body {
            Some(b) => b,
            None => src.read_blob(&desc.digest)?,
        };
        let index: Index = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("index {} is not valid: {e}", desc.digest)))?;
        let arch = host_arch();
        let matching = |d: &&Descriptor| {
            d.platform
                .as_ref()
                .is_some_and(|p| p.os == "linux" && p.architecture == arch)
        };
        let chosen = index
            .manifests
            .iter()
            .find(matching)
            .or_else(|| index.manifests.iter().find(|d| d.platform.is_none()))
            .cloned();
        match chosen {
            Some(d) => self.pick_manifest(src, d, depth + 1),
            None => Ok(None),
        }
    }

    fn load_oci_manifest(
        &self,
        src: &Source,
        tmp: &Takes<'_>,
        desc: &Descriptor,
        name: Option<&str>,
        pin: &LayerPin<'_>,
    ) -> Result<String> {
        let data = src.read_blob(&desc.digest)?;
        if let Some(size) = desc.size {
            if size != data.len() as u64 {
                return Err(bad(format!(
                    "manifest {} has {} bytes, descriptor says {size}",
                    desc.digest,
                    data.len()
                )));
            }
        }
        let manifest: OciManifest = serde_json::from_slice(&data)
            .map_err(|e| bad(format!("manifest {} is not valid: {e}", desc.digest)))?;
        let raw = src.read_blob(&manifest.config.digest)?;
        let diff_ids = config_diff_ids(&raw, manifest.config.digest.as_str())?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "manifest {}: the config lists {} layers but the manifest {}",
                desc.digest,
                diff_ids.len(),
                manifest.layers.len()
            )));
        }
        for (l, diff_id) in manifest.layers.iter().zip(&diff_ids) {
            if self.has_layer(diff_id.as_str()) {
                continue;
            }
            let hex = l.digest.hex();
            let (blob, digest) = src.take(&format!("blobs/sha256/{hex}"), tmp)?;
            if digest != l.digest {
                return Err(ImageError::DigestMismatch {
                    what: format!("layer blob blobs/sha256/{hex}"),
                    expected: l.digest.to_string(),
                    actual: digest.to_string(),
                });
            }
            self.add_layer(pin, blob.path(), &digest, Some(diff_id))?;
        }
        let tags: Vec<String> = name.map(str::to_string).into_iter().collect();
        let repo_digests = match name.and_then(|n| Reference::parse(n).ok()) {
            Some(r) => vec![format!("{}@{}", r.name(), desc.digest)],
            None => Vec::new(),
        };
        self.add_image(&raw, &tags, &repo_digests)
    }
}

/// The diff_ids of a config, checked to be sha256 digests.
pub(crate) fn config_diff_ids(raw: &[u8], what: &str) -> Result<Vec<Digest>> {
    let cfg: super::ImageConfig = serde_json::from_slice(raw)
        .map_err(|e| bad(format!("image config {what} is not valid: {e}")))?;
    cfg.rootfs
        .diff_ids
        .iter()
        .map(|d| {
            Digest::parse(d).map_err(|source| ImageError::BadDigest {
                what: format!("diff_id in image config {what}"),
                source,
            })
        })
        .collect()
}

/// The `name:tag` an OCI index entry names, if any.
fn image_name(annotations: &BTreeMap<String, String>) -> Option<String> {
    let raw = annotations
        .get("io.containerd.image.name")
        .or_else(|| annotations.get("org.opencontainers.image.ref.name"))?;
    Reference::parse(raw).ok().and_then(|r| r.tagged_name())
}

fn loaded_lines(id: &str, tags: &[String]) -> Vec<String> {
    if tags.is_empty() {
        return vec![format!("Loaded image ID: {id}")];
    }
    tags.iter()
        .map(|t| {
            let shown = Reference::parse(t)
                .ok()
                .and_then(|r| r.tagged_name())
                .unwrap_or_else(|| t.clone());
            format!("Loaded image: {shown}")
        })
        .collect()
}

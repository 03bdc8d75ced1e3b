//! `save`: images leave as a tarball in the Docker ≥ 25 layout, which is an
//! OCI image layout (`oci-layout`, `index.json`, `blobs/sha256/…`) plus the
//! legacy `manifest.json` and `repositories`, so `docker load`,
//! `skopeo copy docker-archive:…` and OCI tools all read it. Layers are
//! written uncompressed (their digest is then their diff_id); configs are
//! written byte-exact, so image ids survive the round trip.

use super::layer;
use super::store::ImageStore;
use super::{digest_hex, ImageError, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, Read, Write};

const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const MT_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

fn header(size: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_ustar();
    h.set_size(size);
    h.set_mode(mode);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn enc(what: &'static str, v: &Value) -> Result<Vec<u8>> {
    serde_json::to_vec(v).map_err(|source| ImageError::Encode { what, source })
}

impl ImageStore {
    /// Writes the named images (names or ids) as one tarball to `writer`.
    pub fn save(&self, images: &[String], writer: impl Write) -> Result<()> {
        if images.is_empty() {
            return Err(ImageError::BadArchive("no images to save".into()));
        }
        let werr = |e: io::Error| ImageError::io("write", "save archive", e);
        let mut tar = tar::Builder::new(writer);
        let mut written: BTreeSet<String> = BTreeSet::new();
        let mut index = Vec::new();
        let mut manifest_json = Vec::new();
        let mut repositories: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut order = Vec::new();
        // Saving by tag saves that tag; by id, all of the image's tags.
        for name in images {
            let img = self.resolve(name)?;
            let tags = match super::reference::Reference::parse(name)
                .ok()
                .and_then(|r| r.tagged_name())
            {
                Some(t) if img.repo_tags.contains(&t) => vec![t],
                _ => img.repo_tags.clone(),
            };
            if !by_id.contains_key(&img.id) {
                order.push(img.clone());
            }
            let e = by_id.entry(img.id.clone()).or_default();
            for t in tags {
                if !e.contains(&t) {
                    e.push(t);
                }
            }
        }
        for dir in ["blobs/", "blobs/sha256/"] {
            let mut h = header(0, 0o755);
            h.set_entry_type(tar::EntryType::Directory);
            tar.append_data(&mut h, dir, io::empty()).map_err(werr)?;
        }
        for img in order {
            let tags = by_id.get(&img.id).cloned().unwrap_or_default();
            let config_hex = digest_hex(&img.id)
                .ok_or_else(|| ImageError::BadArchive(format!("bad image id {}", img.id)))?
                .to_string();
            let mut layer_paths = Vec::new();
            let mut layer_descs = Vec::new();
            for diff_id in &img.config.rootfs.diff_ids {
                let rec = self.layer_record(diff_id).ok_or_else(|| {
                    ImageError::NotFound(format!("layer {diff_id} of image {}", img.id))
                })?;
                let hex = digest_hex(diff_id).unwrap_or_default().to_string();
                let path = format!("blobs/sha256/{hex}");
                if written.insert(hex.clone()) {
                    let blob = self.recorded_blob_path(&rec.blob)?;
                    let file = File::open(&blob).map_err(|e| ImageError::io("open", &blob, e))?;
                    let (reader, _) =
                        layer::decompressed(file).map_err(|e| ImageError::io("read", &blob, e))?;
                    let mut h = header(rec.size, 0o644);
                    tar.append_data(&mut h, &path, reader.take(rec.size))
                        .map_err(werr)?;
                }
                layer_descs
                    .push(json!({"mediaType": MT_LAYER, "digest": diff_id, "size": rec.size}));
                layer_paths.push(path);
            }
            let config_path = format!("blobs/sha256/{config_hex}");
            if written.insert(config_hex.clone()) {
                let mut h = header(img.raw_config.len() as u64, 0o644);
                tar.append_data(&mut h, &config_path, &img.raw_config[..])
                    .map_err(werr)?;
            }
            let manifest = enc(
                "manifest",
                &json!({
                    "schemaVersion": 2,
                    "mediaType": MT_MANIFEST,
                    "config": {"mediaType": MT_CONFIG, "digest": img.id, "size": img.raw_config.len()},
                    "layers": layer_descs,
                }),
            )?;
            let manifest_digest = super::sha256_digest(&manifest);
            let mhex = digest_hex(&manifest_digest).unwrap_or_default().to_string();
            if written.insert(mhex.clone()) {
                let mut h = header(manifest.len() as u64, 0o644);
                tar.append_data(&mut h, format!("blobs/sha256/{mhex}"), &manifest[..])
                    .map_err(werr)?;
            }
            let desc = |annotations: Value| json!({"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": manifest.len(), "annotations": annotations});
            if tags.is_empty() {
                index.push(json!({"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": manifest.len()}));
            }
            for t in &tags {
                let (repo, tag) = t.rsplit_once(':').unwrap_or((t.as_str(), "latest"));
                index.push(desc(json!({
                    "io.containerd.image.name": t,
                    "org.opencontainers.image.ref.name": tag,
                })));
                if let Some(top) = img.config.rootfs.diff_ids.last() {
                    repositories.entry(repo.to_string()).or_default().insert(
                        tag.to_string(),
                        digest_hex(top).unwrap_or_default().to_string(),
                    );
                }
            }
            manifest_json.push(json!({
                "Config": config_path,
                "RepoTags": if tags.is_empty() { Value::Null } else { json!(tags) },
                "Layers": layer_paths,
            }));
        }
        let files: [(&str, Vec<u8>); 4] = [
            (
                "oci-layout",
                enc("oci-layout", &json!({"imageLayoutVersion": "1.0.0"}))?,
            ),
            (
                "index.json",
                enc(
                    "index",
                    &json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index}),
                )?,
            ),
            (
                "manifest.json",
                enc("manifest.json", &Value::Array(manifest_json))?,
            ),
            ("repositories", enc("repositories", &json!(repositories))?),
        ];
        for (name, data) in files {
            let mut h = header(data.len() as u64, 0o644);
            tar.append_data(&mut h, name, &data[..]).map_err(werr)?;
        }
        let mut w = tar.into_inner().map_err(werr)?;
        w.flush().map_err(werr)
    }
}

//! Images: a content-addressed store under `<data-root>/image`, layers unpacked
//! once and shared read-only as overlayfs lower directories, and the ways
//! images arrive and leave (load/save/import/commit). Registry pull/push is
//! `engine::distribution`, which moves blobs between a registry and this store.
//!
//! - [`store`]: the [`ImageStore`]: blobs, layer directories, tags, image records,
//!   resolve/list/inspect/history/tag/remove/prune, import and commit.
//! - [`config`]: the image config JSON (Docker's superset of OCI's).
//! - [`layer`]: the confined layer extractor, overlay diffs and upper-dir layers.
//! - [`load`] / [`save`]: `docker save` tarballs and OCI image layouts in and out.
//! - [`changes`]: Dockerfile-style `--change` instructions for import and commit.
//! - [`digest`]: the validated [`Digest`], the only thing that names a stored blob.
//! - [`limits`]: size limits and the free-space reserve for arriving images.
//! - [`tar_guard`]: refuses oversized tar extension headers before they are read into memory.
//!
//! This module does not mount anything: the engine assembles the overlay
//! from [`ImageStore::layer_dirs`].

pub mod changes;
pub mod config;
pub mod digest;
pub mod layer;
pub mod limits;
pub mod load;
pub mod reference;
pub mod save;
pub mod store;
pub mod tar_guard;

pub use config::{ImageConfig, RuntimeConfig};
pub use digest::{Digest, InvalidDigest};
pub use limits::Limits;
pub use store::{Image, ImageStore};

use std::path::PathBuf;

/// Everything that can go wrong in the image store.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// No image matches the name or id.
    #[error("No such image: {0}")]
    NotFound(String),
    /// A short id matches several images.
    #[error("image id prefix {prefix:?} is ambiguous: it matches {count} images; give more characters of the id")]
    Ambiguous {
        /// The prefix the user gave.
        prefix: String,
        /// How many images it matched.
        count: usize,
    },
    /// The image is used by a container.
    #[error("image is being used by container {container} (use -f to force)")]
    InUse {
        /// The container that uses it.
        container: String,
    },
    /// A tagged image that is referenced by several repositories needs `-f`.
    #[error(
        "unable to delete {id} (must be forced): image is referenced in multiple repositories"
    )]
    MultipleTags {
        /// The image id.
        id: String,
    },
    /// A reference could not be parsed.
    #[error("failed to parse image reference: {0}")]
    Reference(#[from] reference::ReferenceError),
    /// A digest was wrong: the content is corrupt or was tampered with.
    #[error("failed to verify {what}: expected {expected}, got {actual}; the archive is corrupt or was modified")]
    DigestMismatch {
        /// What was being verified.
        what: String,
        /// The digest we were told.
        expected: String,
        /// The digest of the content.
        actual: String,
    },
    /// A layer tarball tried something the extractor refuses.
    #[error("failed to unpack layer: entry {entry:?}: {reason}")]
    UnsafeEntry {
        /// The tar entry's path as written in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// A descriptor, record or reference carries something that is not a
    /// `sha256:<64 hex>` digest.
    #[error("refused {what}: {source}")]
    BadDigest {
        /// Where the digest came from.
        what: String,
        /// What is wrong with it.
        #[source]
        source: InvalidDigest,
    },
    /// Content larger than a limit (see [`limits`]).
    #[error("refused {what}: it is larger than {} ({limit} bytes){hint}", limits::human(*limit))]
    TooLarge {
        /// What was being received.
        what: String,
        /// The limit, in bytes.
        limit: u64,
        /// Which limit that is and how to change it, starting with "; ".
        hint: &'static str,
    },
    /// Writing more would leave less than the reserve free on the data root.
    #[error("not enough free space on {}: {} available, {} more needed while keeping {} free (--min-free-space); free some space (e.g. flotilla image prune) and try again", path.display(), limits::human(*free), limits::human(*needed), limits::human(*reserve))]
    NoSpace {
        /// The store's root.
        path: PathBuf,
        /// Bytes available.
        free: u64,
        /// Bytes about to be written.
        needed: u64,
        /// Bytes that must stay free.
        reserve: u64,
    },
    /// An archive or layout lacks something or has something malformed.
    #[error("failed to read image archive: {0}")]
    BadArchive(String),
    /// A state file of the store could not be parsed.
    #[error("failed to parse {path}: {reason}; fix or remove the file (it was left untouched)")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's complaint.
        reason: String,
    },
    /// A `--change` instruction was refused.
    #[error("failed to apply change {change:?}: {reason}")]
    BadChange {
        /// The instruction as given.
        change: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An I/O error, with what we were doing and on which path.
    #[error("failed to {action} {path}: {source}")]
    Io {
        /// What we tried (e.g. "write", "create directory").
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// JSON we produce could not be serialized (should not happen).
    #[error("failed to encode {what} as JSON: {source}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
}

impl ImageError {
    /// True for [`ImageError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, ImageError::NotFound(_))
    }

    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
        source: std::io::Error,
    ) -> Self {
        ImageError::Io {
            action,
            path: path.into(),
            source,
        }
    }
}

/// The image module's result type.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// `sha256:<hex>` of some bytes.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}

/// The hex part of a `sha256:<hex>` digest, checked to be 64 lowercase hex digits.
pub(crate) fn digest_hex(digest: &str) -> Option<&str> {
    let hex = digest.strip_prefix("sha256:")?;
    (hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
    .then_some(hex)
}

#[cfg(test)]
mod tests;

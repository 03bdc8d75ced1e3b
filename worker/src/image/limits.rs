//! How much an arriving image may take: the size limits on documents
//! (manifests, indexes, configs), token replies and layers, and the
//! free-space reserve on the data root's filesystem. Every stream that comes
//! from a registry or an archive is counted as it is written, so a layer
//! that says it is small but is not, or a small gzip that unpacks to
//! terabytes, stops at the limit instead of filling the disk; the partial
//! output is then removed by whoever made it (temp directories and
//! [`super::store::PartialFile`]).
//!
//! This module decides nothing about paths or digests (see [`super::digest`]).

use super::ImageError;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Manifests, indexes and image configs larger than this are refused.
pub const MAX_DOCUMENT: u64 = 4 << 20;
/// Token server replies larger than this are refused.
pub const MAX_TOKEN_REPLY: u64 = 1 << 20;
/// Default for [`Limits::max_layer_size`]: 32 GiB.
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 32 << 30;
/// Default for [`Limits::min_free_space`]: 256 MiB.
pub const DEFAULT_MIN_FREE_SPACE: u64 = 256 << 20;
/// How often (in bytes written) a stream re-checks the free space.
const CHECK_EVERY: u64 = 8 << 20;

/// The limits the image store enforces (daemon flags `--max-layer-size` and
/// `--min-free-space`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest layer, both as downloaded (compressed) and unpacked
    /// (uncompressed tar stream); also the largest file taken from an archive.
    pub max_layer_size: u64,
    /// Bytes that must stay free on the data root's filesystem while images
    /// arrive: a pull, load or import that would go below stops and cleans up.
    pub min_free_space: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_layer_size: DEFAULT_MAX_LAYER_SIZE,
            min_free_space: DEFAULT_MIN_FREE_SPACE,
        }
    }
}

/// `12.0 MiB`-style sizes for messages.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// Parses a size flag: a whole number with an optional binary unit `k`,
/// `m`, `g` or `t` (`512m`, `4g`, `1048576`; `kb`/`KiB` spellings too).
pub fn parse_size(input: &str) -> Result<u64, String> {
    let s = input.trim();
    let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(end);
    let bad = || {
        format!("invalid size {input:?}: use a number with an optional unit k, m, g or t (e.g. 512m, 4g)")
    };
    let n: u64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_lowercase();
    let shift = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// Bytes available to unprivileged writers on the filesystem holding `path`
/// (what `df` shows as available).
pub fn free_space(path: &Path) -> io::Result<u64> {
    let st = nix::sys::statvfs::statvfs(path).map_err(io::Error::from)?;
    Ok(st.blocks_available().saturating_mul(st.fragment_size()))
}

/// Checks that a filesystem keeps its reserve free.
#[derive(Clone, Debug)]
pub struct SpaceCheck {
    /// A path on the filesystem (the image store's root).
    pub root: PathBuf,
    /// [`Limits::min_free_space`].
    pub reserve: u64,
}

impl SpaceCheck {
    /// Fails unless `more` bytes can still be written with the reserve left free.
    pub fn check(&self, more: u64) -> Result<(), ImageError> {
        let free = free_space(&self.root).map_err(|e| ImageError::io("statvfs", &self.root, e))?;
        if free < self.reserve.saturating_add(more) {
            return Err(ImageError::NoSpace {
                path: self.root.clone(),
                free,
                needed: more,
                reserve: self.reserve,
            });
        }
        Ok(())
    }
}

/// Counts a stream and checks it against a size limit and the free space.
/// Usable from async code too: call [`Meter::add`] per chunk.
#[derive(Debug)]
pub struct Meter {
    what: String,
    limit: u64,
    hint: &'static str,
    count: u64,
    next_check: u64,
    space: Option<SpaceCheck>,
}

impl Meter {
    /// A meter for `what` (named in errors) allowing `limit` bytes; `hint`
    /// says which limit that is (e.g. "its descriptor's size").
    pub fn new(what: impl Into<String>, limit: u64, hint: &'static str) -> Meter {
        Meter {
            what: what.into(),
            limit,
            hint,
            count: 0,
            next_check: 0,
            space: None,
        }
    }

    /// Also checks the free space every few MiB (and at the first byte).
    pub fn watching(mut self, space: SpaceCheck) -> Meter {
        self.space = Some(space);
        self
    }

    /// Bytes counted so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Counts `n` more bytes; fails when they break a limit.
    pub fn add(&mut self, n: u64) -> Result<(), ImageError> {
        self.count = self.count.saturating_add(n);
        if self.count > self.limit {
            return Err(ImageError::TooLarge {
                what: self.what.clone(),
                limit: self.limit,
                hint: self.hint,
            });
        }
        if let Some(space) = &self.space {
            if self.count >= self.next_check {
                self.next_check = self.count.saturating_add(CHECK_EVERY);
                space.check(CHECK_EVERY.min(self.limit - self.count))?;
            }
        }
        Ok(())
    }
}

/// The error a [`Capped`] reader stopped with, kept for the caller: the
/// reader itself can only return an `io::Error`, which code further down
/// (the tar reader, the extractor) rewraps.
#[derive(Clone, Debug, Default)]
pub struct Tripped(Arc<Mutex<Option<ImageError>>>);

impl Tripped {
    /// The slot itself, for other guarded readers.
    pub(crate) fn shared(&self) -> Arc<Mutex<Option<ImageError>>> {
        self.0.clone()
    }

    /// The limit error if the reader stopped at one, else `other`.
    pub fn explain(&self, other: ImageError) -> ImageError {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or(other)
    }
}

/// A reader that fails once more than its meter allows has passed.
pub struct Capped<R> {
    inner: R,
    meter: Meter,
    tripped: Tripped,
}

impl<R: Read> Capped<R> {
    /// Wraps `inner`; the [`Tripped`] handle tells the limit error apart later.
    pub fn new(inner: R, meter: Meter) -> (Capped<R>, Tripped) {
        let tripped = Tripped::default();
        (
            Capped {
                inner,
                meter,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.meter.add(n as u64) {
            let msg = e.to_string();
            *self.tripped.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(io::Error::other(msg));
        }
        Ok(n)
    }
}

/// A writer that counts what it writes against a meter (for the reserve).
pub struct Metered<W> {
    inner: W,
    meter: Meter,
    tripped: Tripped,
}

impl<W: std::io::Write> Metered<W> {
    /// Wraps `inner`; the [`Tripped`] handle tells the limit error apart later.
    pub fn new(inner: W, meter: Meter) -> (Metered<W>, Tripped) {
        let tripped = Tripped::default();
        (
            Metered {
                inner,
                meter,
                tripped: tripped.clone(),
            },
            tripped,
        )
    }

    /// The inner writer.
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: std::io::Write> std::io::Write for Metered<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Err(e) = self.meter.add(buf.len() as u64) {
            let msg = e.to_string();
            *self.tripped.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(io::Error::other(msg));
        }
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_reader_stops_at_the_limit_and_says_why() {
        let data = vec![0u8; 10_000];
        let (mut r, tripped) = Capped::new(&data[..], Meter::new("layer x", 4096, ""));
        let err = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(err.to_string().contains("larger than"), "{err}");
        let e = tripped.explain(ImageError::BadArchive("other".into()));
        assert!(matches!(e, ImageError::TooLarge { limit: 4096, .. }), "{e}");
        let (mut ok, tripped) = Capped::new(&data[..], Meter::new("layer x", 10_000, ""));
        io::copy(&mut ok, &mut io::sink()).unwrap();
        let e = tripped.explain(ImageError::BadArchive("other".into()));
        assert!(matches!(e, ImageError::BadArchive(_)));
    }

    #[test]
    fn space_check_refuses_an_impossible_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let check = SpaceCheck {
            root: dir.path().to_path_buf(),
            reserve: u64::MAX / 2,
        };
        let e = check.check(0).unwrap_err();
        assert!(e.to_string().contains("free space"), "{e}");
        let fine = SpaceCheck {
            root: dir.path().to_path_buf(),
            reserve: 0,
        };
        fine.check(1).unwrap();
        assert_eq!(human(16 << 20), "16.0 MiB");
        assert_eq!(parse_size("16m"), Ok(16 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("1x").is_err());
        assert!(parse_size("-1").is_err());
    }
}

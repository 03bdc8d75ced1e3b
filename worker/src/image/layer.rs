//! Layers on disk: the confined extractor that turns a layer tar into an
//! overlayfs lower directory, the A/C/D listing of a container's upper
//! directory, and the reverse trip (upper directory → OCI layer tar).
//!
//! The extractor never calls `tar::Archive::unpack`/`Entry::unpack`. Every
//! path is split into components; `..` and absolute paths are refused; each
//! parent directory is opened from the layer root one component at a time
//! with `O_NOFOLLOW|O_DIRECTORY`, so a symlink planted by the layer is never
//! followed while a later entry is created; files are created with
//! `O_CREAT|O_EXCL|O_NOFOLLOW` and their mode, owner and times are set on the
//! open descriptor (so a setuid bit can only land on a file inside the layer).
//! Whiteouts become what overlayfs understands, as containerd does: `.wh.NAME`
//! → a 0/0 character device `NAME`, `.wh..wh..opq` → `trusted.overlay.opaque=y`
//! on the directory.
//!
//! This module does not decide where layers live or mount anything: see
//! [`super::store`].

use super::{ImageError, Result};
use agent_common::engine::Change;
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{
    fchmod, fchmodat, fstatat, futimens, makedev, mkdirat, mknodat, utimensat, FchmodatFlags, Mode,
    SFlag, UtimensatFlags,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use xattr::FileExt;

/// The overlayfs xattr that marks a directory opaque.
pub const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE_MARKER: &str = ".wh..wh..opq";

/// What [`unpack_layer`] read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackedLayer {
    /// `sha256:` digest of the uncompressed tar stream (the layer's diff_id).
    pub diff_id: String,
    /// Bytes of the uncompressed tar stream.
    pub size: u64,
}

/// A reader that hashes and counts what passes through it.
pub(crate) struct HashReader<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> HashReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashReader {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Reads the rest of the stream, then returns (`sha256:<hex>`, bytes).
    pub(crate) fn finish(mut self) -> io::Result<(String, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        Ok((
            format!("sha256:{}", hex::encode(self.hasher.finalize())),
            self.count,
        ))
    }
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashWriter<W> {
    inner: W,
    hasher: Sha256,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    pub(crate) fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Returns the inner writer, `sha256:<hex>` and the byte count.
    pub(crate) fn finish(self) -> (W, String, u64) {
        let digest = format!("sha256:{}", hex::encode(self.hasher.finalize()));
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Compression of a layer blob, detected from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (possibly several members).
    Gzip,
    /// zstd.
    Zstd,
}

/// Wraps `reader` in the decompressor its magic bytes call for. Gzip uses
/// `MultiGzDecoder` (a plain `GzDecoder` stops after the first member).
pub fn decompressed<'a>(reader: impl Read + 'a) -> io::Result<(Box<dyn Read + 'a>, Compression)> {
    let mut reader = BufReader::with_capacity(128 * 1024, reader);
    let head = reader.fill_buf()?;
    if head.starts_with(&[0x1f, 0x8b]) {
        Ok((
            Box::new(flate2::read::MultiGzDecoder::new(reader)),
            Compression::Gzip,
        ))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok((
            Box::new(zstd::stream::read::Decoder::with_buffer(reader)?),
            Compression::Zstd,
        ))
    } else {
        Ok((Box::new(reader), Compression::None))
    }
}

/// Splits an archive path into safe components: no `..`, not absolute; `.`
/// and empty components dropped.
fn components(raw: &[u8]) -> std::result::Result<Vec<OsString>, &'static str> {
    if raw.first() == Some(&b'/') {
        return Err("absolute paths are not allowed in a layer");
    }
    if raw.contains(&0) {
        return Err("path contains a NUL byte");
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("paths with '..' are not allowed in a layer"),
            _ => out.push(OsStr::from_bytes(c).to_os_string()),
        }
    }
    Ok(out)
}

fn to_io(e: Errno) -> io::Error {
    io::Error::from(e)
}

/// Opens the directory `comps` under `root`, one component at a time, never
/// following a symlink. Missing directories are created (0755, as tar does)
/// when `create` is set.
fn open_dir(
    root: &OwnedFd,
    comps: &[OsString],
    create: bool,
) -> std::result::Result<OwnedFd, String> {
    let flags = OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC;
    let mut cur = root
        .try_clone()
        .map_err(|e| format!("failed to dup: {e}"))?;
    for (i, c) in comps.iter().enumerate() {
        let shown = || {
            comps[..=i]
                .iter()
                .map(|c| c.to_string_lossy())
                .collect::<Vec<_>>()
                .join("/")
        };
        let next = match openat(&cur, c.as_os_str(), flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                match mkdirat(&cur, c.as_os_str(), Mode::from_bits_truncate(0o755)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(format!("failed to create directory {}: {e}", shown())),
                }
                openat(&cur, c.as_os_str(), flags, Mode::empty())
                    .map_err(|e| format!("failed to open directory {}: {e}", shown()))?
            }
            Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                return Err(format!(
                    "parent {} is a symlink or not a directory; refusing to write through it",
                    shown()
                ))
            }
            Err(Errno::ENOENT) => return Err(format!("{} does not exist", shown())),
            Err(e) => return Err(format!("failed to open directory {}: {e}", shown())),
        };
        cur = next;
    }
    Ok(cur)
}

fn timespec(secs: u64) -> TimeSpec {
    TimeSpec::new(i64::try_from(secs).unwrap_or(i64::MAX), 0)
}

/// Per-entry metadata gathered from the header and its PAX records.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    xattrs: Vec<(String, Vec<u8>)>,
}

/// Unpacks one layer tar (uncompressed; use [`decompressed`] first) into
/// `dest`, which must be an empty directory that nothing else writes to.
///
/// Refuses (with [`ImageError::UnsafeEntry`]) absolute paths, `..`, writes
/// through symlinks, hardlinks to anything not already extracted in this
/// layer, a bare `.wh.` and unsupported entry types. Returns the sha256 and
/// size of the whole uncompressed stream, for the caller to check against the
/// diff_id. On error `dest` is left half-written: unpack into a temporary
/// directory and rename it into place only on success.
pub fn unpack_layer(reader: impl Read, dest: &Path) -> Result<UnpackedLayer> {
    let (reader, tripped) = super::tar_guard::TarGuard::new(reader);
    unpack_guarded(reader, dest).map_err(|e| tripped.explain(e))
}

fn unpack_guarded(reader: impl Read, dest: &Path) -> Result<UnpackedLayer> {
    std::fs::create_dir_all(dest).map_err(|e| ImageError::io("create directory", dest, e))?;
    let root = nix::fcntl::open(
        dest,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
        Mode::empty(),
    )
    .map_err(|e| ImageError::io("open directory", dest, to_io(e)))?;
    let mut archive = tar::Archive::new(HashReader::new(reader));
    let mut dir_times: Vec<(Vec<OsString>, u64)> = Vec::new();
    let bad = |e: io::Error| ImageError::BadArchive(format!("layer tar is malformed: {e}"));
    {
        let entries = archive.entries().map_err(bad)?;
        for entry in entries {
            let mut entry = entry.map_err(bad)?;
            unpack_entry(&root, dest, &mut entry, &mut dir_times)?;
        }
    }
    // Directory times last: creating children changed them.
    for (comps, mtime) in dir_times.iter().rev() {
        if let Ok(fd) = open_dir(&root, comps, false) {
            let t = timespec(*mtime);
            futimens(&fd, &t, &t)
                .map_err(|e| ImageError::io("set times on", dest.join(join(comps)), to_io(e)))?;
        }
    }
    let (diff_id, size) = archive
        .into_inner()
        .finish()
        .map_err(|e| ImageError::BadArchive(format!("failed to read layer stream: {e}")))?;
    Ok(UnpackedLayer { diff_id, size })
}

fn join(comps: &[OsString]) -> PathBuf {
    comps.iter().collect()
}

fn unpack_entry<R: Read>(
    root: &OwnedFd,
    dest: &Path,
    entry: &mut tar::Entry<'_, R>,
    dir_times: &mut Vec<(Vec<OsString>, u64)>,
) -> Result<()> {
    let raw_path = entry.path_bytes().into_owned();
    let shown = String::from_utf8_lossy(&raw_path).into_owned();
    let unsafe_entry = |reason: String| ImageError::UnsafeEntry {
        entry: shown.clone(),
        reason,
    };
    let kind = entry.header().entry_type();
    if kind.is_pax_global_extensions() {
        return Ok(());
    }
    let comps = components(&raw_path).map_err(|r| unsafe_entry(r.to_string()))?;
    let header = entry.header();
    // Empty numeric fields read as 0, as Go's archive/tar does.
    let mut meta = Meta {
        mode: header.mode().unwrap_or(0) & 0o7777,
        uid: u32::try_from(header.uid().unwrap_or(0))
            .map_err(|_| unsafe_entry("uid out of range".into()))?,
        gid: u32::try_from(header.gid().unwrap_or(0))
            .map_err(|_| unsafe_entry("gid out of range".into()))?,
        mtime: header.mtime().unwrap_or(0),
        xattrs: Vec::new(),
    };
    if let Some(pax) = entry
        .pax_extensions()
        .map_err(|e| unsafe_entry(format!("bad PAX header: {e}")))?
    {
        for ext in pax {
            let ext = ext.map_err(|e| unsafe_entry(format!("bad PAX record: {e}")))?;
            let Ok(key) = ext.key() else { continue };
            if let Some(name) = key.strip_prefix("SCHILY.xattr.") {
                meta.xattrs
                    .push((name.to_string(), ext.value_bytes().to_vec()));
            } else if key == "mtime" {
                if let Some(secs) = ext
                    .value()
                    .ok()
                    .and_then(|v| v.split('.').next())
                    .and_then(|s| s.parse::<u64>().ok())
                {
                    meta.mtime = secs;
                }
            }
        }
    }

    let Some((name, parents)) = comps.split_last() else {
        // "./": the layer root itself.
        if kind.is_dir() {
            apply_dir_meta(root, dest, &meta)?;
            dir_times.push((Vec::new(), meta.mtime));
            return Ok(());
        }
        return Err(unsafe_entry(
            "only a directory may name the layer root".into(),
        ));
    };
    let parent = open_dir(root, parents, true).map_err(unsafe_entry)?;
    let full = dest.join(join(&comps));
    let full_ref = &full;
    let io_err = |action: &'static str| move |e: Errno| ImageError::io(action, full_ref, to_io(e));

    // Whiteouts.
    let name_bytes = name.as_bytes();
    if let Some(hidden) = name_bytes.strip_prefix(WHITEOUT_PREFIX.as_bytes()) {
        if name_bytes == OPAQUE_MARKER.as_bytes() {
            let dir = File::from(parent);
            dir.set_xattr(OPAQUE_XATTR, b"y")
                .map_err(|e| ImageError::io("set opaque xattr on", dest.join(join(parents)), e))?;
            return Ok(());
        }
        if hidden.is_empty() {
            return Err(unsafe_entry("a bare '.wh.' whiteout is invalid".into()));
        }
        if hidden.starts_with(WHITEOUT_PREFIX.as_bytes()) {
            // Other AUFS metadata (.wh..wh.plnk, .wh..wh.aufs): not content.
            return Ok(());
        }
        let target = OsStr::from_bytes(hidden);
        clear_slot(&parent, target, false).map_err(unsafe_entry)?;
        mknodat(
            &parent,
            target,
            SFlag::S_IFCHR,
            Mode::empty(),
            makedev(0, 0),
        )
        .map_err(io_err("create whiteout"))?;
        fchownat(
            &parent,
            target,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map_err(io_err("chown whiteout"))?;
        return Ok(());
    }

    let name = name.as_os_str();
    use tar::EntryType as T;
    match kind {
        T::Directory => {
            let exists = clear_slot(&parent, name, true).map_err(unsafe_entry)?;
            if !exists {
                mkdirat(&parent, name, Mode::from_bits_truncate(0o700))
                    .map_err(io_err("create directory"))?;
            }
            let fd = open_dir(&parent, std::slice::from_ref(&name.to_os_string()), false)
                .map_err(unsafe_entry)?;
            apply_dir_meta(&fd, &full, &meta)?;
            dir_times.push((comps.clone(), meta.mtime));
        }
        T::Regular | T::Continuous => {
            clear_slot(&parent, name, false).map_err(unsafe_entry)?;
            let fd = openat(
                &parent,
                name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_WRONLY
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .map_err(io_err("create file"))?;
            let mut file = File::from(fd);
            io::copy(entry, &mut file).map_err(|e| ImageError::io("write", full.clone(), e))?;
            fchown(
                &file,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(io_err("chown"))?;
            // After chown, which clears setuid bits.
            fchmod(&file, Mode::from_bits_truncate(meta.mode)).map_err(io_err("chmod"))?;
            set_xattrs(&file, &full, &meta.xattrs)?;
            let t = timespec(meta.mtime);
            futimens(&file, &t, &t).map_err(io_err("set times on"))?;
        }
        T::Symlink => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_entry("symlink without a target".into()))?
                .into_owned();
            if target.is_empty() || target.contains(&0) {
                return Err(unsafe_entry(
                    "symlink target is empty or has a NUL byte".into(),
                ));
            }
            clear_slot(&parent, name, false).map_err(unsafe_entry)?;
            symlinkat(OsStr::from_bytes(&target), &parent, name)
                .map_err(io_err("create symlink"))?;
            fchownat(
                &parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown symlink"))?;
            let t = timespec(meta.mtime);
            utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(io_err("set times on"))?;
        }
        T::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| unsafe_entry("hardlink without a target".into()))?
                .into_owned();
            let tcomps = components(&target).map_err(|r| {
                unsafe_entry(format!(
                    "hardlink target {:?} is outside the layer ({r})",
                    String::from_utf8_lossy(&target)
                ))
            })?;
            let Some((tname, tparents)) = tcomps.split_last() else {
                return Err(unsafe_entry("hardlink to the layer root".into()));
            };
            let missing = || {
                unsafe_entry(format!(
                    "hardlink target {:?} was not extracted earlier in this layer",
                    String::from_utf8_lossy(&target)
                ))
            };
            let tparent = open_dir(root, tparents, false).map_err(|_| missing())?;
            let st = fstatat(
                &tparent,
                tname.as_os_str(),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|_| missing())?;
            if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR {
                return Err(unsafe_entry("hardlink to a directory".into()));
            }
            if tcomps == comps {
                return Ok(()); // a link to itself: nothing to do
            }
            clear_slot(&parent, name, false).map_err(unsafe_entry)?;
            // Flags 0: a symlink target is linked itself, never followed.
            linkat(
                &tparent,
                tname.as_os_str(),
                &parent,
                name,
                nix::fcntl::AtFlags::empty(),
            )
            .map_err(io_err("create hardlink"))?;
        }
        T::Char | T::Block | T::Fifo => {
            let (sflag, dev) = match kind {
                T::Char | T::Block => {
                    let major = entry.header().device_major().ok().flatten().unwrap_or(0);
                    let minor = entry.header().device_minor().ok().flatten().unwrap_or(0);
                    let f = if kind == T::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    (f, makedev(u64::from(major), u64::from(minor)))
                }
                _ => (SFlag::S_IFIFO, 0),
            };
            clear_slot(&parent, name, false).map_err(unsafe_entry)?;
            mknodat(&parent, name, sflag, Mode::from_bits_truncate(0o600), dev)
                .map_err(io_err("create device node"))?;
            fchownat(
                &parent,
                name,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(io_err("chown"))?;
            // The node was just made by us in a private directory: not a symlink.
            fchmodat(
                &parent,
                name,
                Mode::from_bits_truncate(meta.mode & 0o777),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(io_err("chmod"))?;
            let t = timespec(meta.mtime);
            utimensat(&parent, name, &t, &t, UtimensatFlags::NoFollowSymlink)
                .map_err(io_err("set times on"))?;
        }
        other => {
            return Err(unsafe_entry(format!(
                "unsupported tar entry type {:?}",
                other.as_byte() as char
            )))
        }
    }
    Ok(())
}

/// Makes room for a new entry `name` in `parent`. An existing directory is
/// kept when the new entry is a directory too (returns true); an existing
/// non-directory is removed (a later duplicate wins, as with tar); replacing a
/// directory by a non-directory is refused.
fn clear_slot(
    parent: &OwnedFd,
    name: &OsStr,
    new_is_dir: bool,
) -> std::result::Result<bool, String> {
    match fstatat(parent, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(format!("failed to stat existing entry: {e}")),
        Ok(st) => {
            let is_dir =
                SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) == SFlag::S_IFDIR;
            match (is_dir, new_is_dir) {
                (true, true) => Ok(true),
                (true, false) => Err("duplicate entry would replace a directory".into()),
                (false, _) => {
                    unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                        .map_err(|e| format!("failed to remove duplicate entry: {e}"))?;
                    Ok(false)
                }
            }
        }
    }
}

fn apply_dir_meta(fd: &OwnedFd, path: &Path, meta: &Meta) -> Result<()> {
    let io_err = |action: &'static str| move |e: Errno| ImageError::io(action, path, to_io(e));
    fchown(
        fd,
        Some(Uid::from_raw(meta.uid)),
        Some(Gid::from_raw(meta.gid)),
    )
    .map_err(io_err("chown"))?;
    fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(io_err("chmod"))?;
    let file = File::from(fd.try_clone().map_err(|e| ImageError::io("dup", path, e))?);
    set_xattrs(&file, path, &meta.xattrs)
}

fn set_xattrs(file: &File, path: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    for (name, value) in xattrs {
        // A layer must not steer overlayfs (redirects, metacopy, origin).
        if name.starts_with("trusted.overlay.") {
            tracing::warn!(path = %path.display(), xattr = %name, "ignoring overlay xattr in layer");
            continue;
        }
        if let Err(e) = file.set_xattr(name, value) {
            if matches!(e.raw_os_error(), Some(libc::ENOTSUP)) {
                tracing::warn!(path = %path.display(), xattr = %name, "filesystem does not support xattr; skipped");
                continue;
            }
            return Err(ImageError::io("set xattr on", path, e));
        }
    }
    Ok(())
}

/// Lists what a container changed, from its overlay upper directory, as
/// `flotilla diff` shows it: `D` for a whiteout (char device 0/0), `C` for a
/// path that also exists in a lower layer or an opaque directory, `A` for
/// the rest. Paths start with `/` and are sorted. `lowers` are the image's
/// layer directories (any order).
pub fn diff_changes(upper: &Path, lowers: &[PathBuf]) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    diff_walk(upper, Path::new(""), lowers, &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn diff_walk(upper: &Path, rel: &Path, lowers: &[PathBuf], out: &mut Vec<Change>) -> Result<()> {
    let dir = upper.join(rel);
    let mut names: Vec<OsString> = std::fs::read_dir(&dir)
        .map_err(|e| ImageError::io("read directory", &dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| ImageError::io("read directory", &dir, e))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = upper.join(&rel);
        let md = std::fs::symlink_metadata(&path).map_err(|e| ImageError::io("stat", &path, e))?;
        let shown = format!("/{}", rel.display());
        let in_lower = || {
            lowers
                .iter()
                .any(|l| l.join(&rel).symlink_metadata().is_ok())
        };
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            out.push(Change {
                kind: "D".into(),
                path: shown,
            });
            continue;
        }
        if ft.is_dir() {
            let opaque = xattr::get(&path, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y");
            let kind = if opaque || in_lower() { "C" } else { "A" };
            out.push(Change {
                kind: kind.into(),
                path: shown,
            });
            diff_walk(upper, &rel, lowers, out)?;
        } else {
            let kind = if in_lower() { "C" } else { "A" };
            out.push(Change {
                kind: kind.into(),
                path: shown,
            });
        }
    }
    Ok(())
}

/// Writes an overlay upper directory as an OCI layer tar: whiteouts (char
/// 0/0) become `.wh.NAME` files, opaque directories get a `.wh..wh..opq`
/// entry, hardlinks within the directory stay hardlinks, xattrs other than
/// `trusted.overlay.*` go into PAX records. Returns the tar's `sha256:`
/// digest (its diff_id) and size.
pub fn write_upper_as_layer(upper: &Path, writer: impl Write) -> Result<(String, u64)> {
    let mut builder = tar::Builder::new(HashWriter::new(writer));
    builder.follow_symlinks(false);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    write_walk(&mut builder, upper, Path::new(""), &mut links)?;
    let hw = builder
        .into_inner()
        .map_err(|e| ImageError::io("write layer for", upper, e))?;
    let (mut w, digest, size) = hw.finish();
    w.flush()
        .map_err(|e| ImageError::io("write layer for", upper, e))?;
    Ok((digest, size))
}

fn write_walk<W: Write>(
    builder: &mut tar::Builder<HashWriter<W>>,
    upper: &Path,
    rel: &Path,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    let dir = upper.join(rel);
    let mut names: Vec<OsString> = std::fs::read_dir(&dir)
        .map_err(|e| ImageError::io("read directory", &dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<io::Result<_>>()
        .map_err(|e| ImageError::io("read directory", &dir, e))?;
    names.sort();
    for name in names {
        let rel = rel.join(&name);
        let path = upper.join(&rel);
        let werr = |e: io::Error| ImageError::io("add to layer", &path, e);
        let md = std::fs::symlink_metadata(&path).map_err(|e| ImageError::io("stat", &path, e))?;
        let ft = md.file_type();
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
        if ft.is_char_device() && md.rdev() == 0 {
            let mut wh_name = OsString::from(WHITEOUT_PREFIX);
            wh_name.push(&name);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(0);
            header.set_mode(0o644);
            builder
                .append_data(&mut header, rel.with_file_name(wh_name), io::empty())
                .map_err(werr)?;
            continue;
        }
        let xattrs = user_xattrs(&path, &ft);
        if !xattrs.is_empty() {
            let iter = xattrs.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            builder.append_pax_extensions(iter).map_err(werr)?;
        }
        if ft.is_dir() {
            header.set_size(0);
            builder
                .append_data(&mut header, &rel, io::empty())
                .map_err(werr)?;
            if xattr::get(&path, OPAQUE_XATTR).ok().flatten().as_deref() == Some(b"y") {
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                h.set_mode(0o644);
                builder
                    .append_data(&mut h, rel.join(OPAQUE_MARKER), io::empty())
                    .map_err(werr)?;
            }
            write_walk(builder, upper, &rel, links)?;
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&path).map_err(|e| ImageError::io("read link", &path, e))?;
            header.set_size(0);
            builder
                .append_link(&mut header, &rel, target)
                .map_err(werr)?;
        } else if ft.is_file() {
            if md.nlink() > 1 {
                if let Some(first) = links.get(&(md.dev(), md.ino())) {
                    header.set_entry_type(tar::EntryType::Link);
                    header.set_size(0);
                    builder
                        .append_link(&mut header, &rel, first)
                        .map_err(werr)?;
                    continue;
                }
                links.insert((md.dev(), md.ino()), rel.clone());
            }
            let file = File::open(&path).map_err(|e| ImageError::io("open", &path, e))?;
            builder.append_data(&mut header, &rel, file).map_err(werr)?;
        } else {
            // Devices and fifos: the header carries everything.
            header.set_size(0);
            builder
                .append_data(&mut header, &rel, io::empty())
                .map_err(werr)?;
        }
    }
    Ok(())
}

/// `SCHILY.xattr.*` records for a path, minus overlayfs' own attributes.
fn user_xattrs(path: &Path, ft: &std::fs::FileType) -> Vec<(String, Vec<u8>)> {
    if ft.is_symlink() {
        return Vec::new();
    }
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("trusted.overlay.") {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(path, &name) {
            out.push((format!("SCHILY.xattr.{name}"), v));
        }
    }
    out.sort();
    out
}

/// Opens `path` for reading without following a final symlink.
pub(crate) fn open_nofollow(path: &Path) -> io::Result<File> {
    let fd = openat(
        AT_FDCWD,
        path,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(to_io)?;
    Ok(File::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Builds tar bytes entry by entry with raw names (no path checks), the
    /// way a hostile archive would be written.
    #[derive(Default)]
    struct Evil {
        builder: Option<tar::Builder<Vec<u8>>>,
    }

    impl Evil {
        fn new() -> Self {
            Evil {
                builder: Some(tar::Builder::new(Vec::new())),
            }
        }

        fn entry(
            mut self,
            kind: tar::EntryType,
            name: &str,
            link: &str,
            data: &[u8],
            mode: u32,
        ) -> Self {
            let mut h = tar::Header::new_gnu();
            h.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
            h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_mtime(1_000_000);
            h.set_cksum();
            self.builder.as_mut().unwrap().append(&h, data).unwrap();
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Self {
            self.entry(tar::EntryType::Regular, name, "", data, 0o644)
        }
        fn dir(self, name: &str) -> Self {
            self.entry(tar::EntryType::Directory, name, "", b"", 0o755)
        }
        fn symlink(self, name: &str, target: &str) -> Self {
            self.entry(tar::EntryType::Symlink, name, target, b"", 0o777)
        }
        fn hardlink(self, name: &str, target: &str) -> Self {
            self.entry(tar::EntryType::Link, name, target, b"", 0o644)
        }
        fn bytes(mut self) -> Vec<u8> {
            self.builder.take().unwrap().into_inner().unwrap()
        }
    }

    /// A scratch area: `dest` to unpack into, `outside` a sentinel directory
    /// that must stay empty, and the parent of both.
    struct Scratch {
        _tmp: tempfile::TempDir,
        top: PathBuf,
        dest: PathBuf,
        outside: PathBuf,
    }

    fn scratch() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        let top = tmp.path().to_path_buf();
        let dest = top.join("dest");
        let outside = top.join("outside");
        fs_create(&outside);
        Scratch {
            _tmp: tmp,
            top,
            dest,
            outside,
        }
    }

    fn fs_create(p: &Path) {
        std::fs::create_dir_all(p).unwrap();
    }

    fn assert_outside_untouched(s: &Scratch) {
        let left: Vec<_> = std::fs::read_dir(&s.outside)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert!(
            left.is_empty(),
            "something escaped into the sentinel dir: {left:?}"
        );
        let top: Vec<_> = std::fs::read_dir(&s.top)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut top = top;
        top.sort();
        assert!(
            top.iter().all(|n| n == "dest" || n == "outside"),
            "unexpected entries next to dest: {top:?}"
        );
    }

    fn refused(s: &Scratch, tar: Vec<u8>, expect: &str) {
        let err = unpack_layer(&tar[..], &s.dest).expect_err("malicious layer was accepted");
        let msg = err.to_string();
        assert!(
            msg.contains(expect),
            "error {msg:?} should mention {expect:?}"
        );
        assert_outside_untouched(s);
    }

    #[test]
    fn dotdot_is_refused() {
        let s = scratch();
        refused(
            &s,
            Evil::new().file("../outside/escape", b"x").bytes(),
            "'..'",
        );
        refused(
            &s,
            Evil::new().file("a/../../outside/escape", b"x").bytes(),
            "'..'",
        );
    }

    #[test]
    fn absolute_path_is_refused() {
        let s = scratch();
        let abs = format!("{}/abs", s.outside.display());
        refused(&s, Evil::new().file(&abs, b"x").bytes(), "absolute");
    }

    #[test]
    fn write_through_symlink_to_outside_is_refused() {
        let s = scratch();
        let t = Evil::new()
            .symlink("evil", s.outside.to_str().unwrap())
            .file("evil/file", b"pwned")
            .bytes();
        refused(&s, t, "symlink or not a directory");
    }

    #[test]
    fn write_through_symlink_to_dotdot_is_refused() {
        let s = scratch();
        let t = Evil::new()
            .symlink("up", "..")
            .file("up/outside/x", b"pwned")
            .bytes();
        refused(&s, t, "symlink or not a directory");
        let t = Evil::new().symlink("up2", "../..").dir("up2/made").bytes();
        refused(&s, t, "symlink or not a directory");
    }

    #[test]
    fn symlink_named_like_a_later_parent_is_refused() {
        let s = scratch();
        let t = Evil::new()
            .dir("etc")
            .symlink("etc/conf", s.outside.to_str().unwrap())
            .dir("etc/conf/sub")
            .file("etc/conf/sub/passwd", b"root::0:0")
            .bytes();
        refused(&s, t, "etc/conf");
    }

    #[test]
    fn hardlinks_outside_the_layer_are_refused() {
        let s = scratch();
        refused(
            &s,
            Evil::new().hardlink("pw", "/etc/passwd").bytes(),
            "outside the layer",
        );
        std::fs::write(s.top.join("x"), b"secret").unwrap();
        let r = unpack_layer(&Evil::new().hardlink("x2", "../x").bytes()[..], &s.dest).unwrap_err();
        assert!(r.to_string().contains("outside the layer"), "{r}");
        std::fs::remove_file(s.top.join("x")).unwrap();
        refused(
            &s,
            Evil::new()
                .hardlink("early", "later")
                .file("later", b"x")
                .bytes(),
            "not extracted earlier",
        );
        // A hardlink through a symlinked parent is refused too.
        let t = Evil::new()
            .symlink("d", s.outside.to_str().unwrap())
            .hardlink("h", "d/target")
            .bytes();
        refused(&s, t, "not extracted earlier");
    }

    #[test]
    fn bare_whiteout_is_refused() {
        let s = scratch();
        refused(&s, Evil::new().file("dir/.wh.", b"").bytes(), "bare '.wh.'");
    }

    #[test]
    fn duplicates_replace_files_but_never_write_through_links() {
        let s = scratch();
        let target = s.outside.join("target");
        let t = Evil::new()
            .symlink("dup", target.to_str().unwrap())
            .hardlink("hl", "dup")
            .file("dup", b"inside")
            .file("hl", b"also inside")
            .bytes();
        unpack_layer(&t[..], &s.dest).unwrap();
        assert_outside_untouched(&s);
        assert_eq!(std::fs::read(s.dest.join("dup")).unwrap(), b"inside");
        assert!(std::fs::symlink_metadata(s.dest.join("dup"))
            .unwrap()
            .is_file());
        assert_eq!(std::fs::read(s.dest.join("hl")).unwrap(), b"also inside");
        let s2 = scratch();
        refused(
            &s2,
            Evil::new().dir("d").file("d", b"x").bytes(),
            "replace a directory",
        );
    }

    #[test]
    fn setuid_bits_land_only_on_files_inside() {
        let s = scratch();
        let target = s.outside.join("victim");
        std::fs::write(&target, b"").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o644)).unwrap();
        let t = Evil::new()
            .symlink("link", target.to_str().unwrap())
            .entry(tar::EntryType::Regular, "link", "", b"x", 0o4755)
            .entry(tar::EntryType::Regular, "suid", "", b"y", 0o4755)
            .bytes();
        unpack_layer(&t[..], &s.dest).unwrap();
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o7777,
            0o644
        );
        assert_eq!(
            std::fs::metadata(s.dest.join("suid"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        assert_eq!(
            std::fs::metadata(s.dest.join("link"))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777,
            0o4755
        );
        std::fs::remove_file(&target).unwrap();
    }

    #[test]
    fn every_entry_kind_and_whiteouts_unpack_with_metadata() {
        let s = scratch();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o750);
        h.set_uid(1000);
        h.set_gid(1001);
        h.set_mtime(1_234_567);
        h.set_size(0);
        b.append_pax_extensions([("SCHILY.xattr.user.flotilla", &b"yes"[..])])
            .unwrap();
        b.append_data(&mut h, "d", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o640);
        h.set_uid(7);
        h.set_gid(8);
        h.set_mtime(42);
        h.set_size(5);
        b.append_data(&mut h, "d/file", &b"hello"[..]).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        b.append_link(&mut h, "d/sym", "/etc/does-not-matter")
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        b.append_link(&mut h, "d/hard", "d/file").unwrap();
        for (name, kind, maj, min) in [
            ("d/null", tar::EntryType::Char, 1, 3),
            ("d/loop", tar::EntryType::Block, 7, 0),
            ("d/fifo", tar::EntryType::Fifo, 0, 0),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(0o666);
            h.set_device_major(maj).unwrap();
            h.set_device_minor(min).unwrap();
            h.set_size(0);
            b.append_data(&mut h, name, io::empty()).unwrap();
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_uid(33);
        h.set_gid(34);
        h.set_size(0);
        b.append_data(&mut h, "d/.wh.gone", io::empty()).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_size(0);
        b.append_data(&mut h, "opq/.wh..wh..opq", io::empty())
            .unwrap();
        let bytes = b.into_inner().unwrap();

        let got = unpack_layer(&bytes[..], &s.dest).unwrap();
        assert_eq!(got.diff_id, super::super::sha256_digest(&bytes));
        assert_eq!(got.size, bytes.len() as u64);
        let d = s.dest.join("d");
        let md = std::fs::symlink_metadata(&d).unwrap();
        assert_eq!(
            (md.mode() & 0o7777, md.uid(), md.gid(), md.mtime()),
            (0o750, 1000, 1001, 1_234_567)
        );
        assert_eq!(
            xattr::get(&d, "user.flotilla").unwrap().as_deref(),
            Some(&b"yes"[..])
        );
        let f = std::fs::symlink_metadata(d.join("file")).unwrap();
        assert_eq!(
            (f.mode() & 0o7777, f.uid(), f.gid(), f.mtime(), f.nlink()),
            (0o640, 7, 8, 42, 2)
        );
        assert_eq!(
            std::fs::read_link(d.join("sym")).unwrap(),
            Path::new("/etc/does-not-matter")
        );
        assert_eq!(
            std::fs::symlink_metadata(d.join("hard")).unwrap().ino(),
            f.ino()
        );
        let null = std::fs::symlink_metadata(d.join("null")).unwrap();
        assert!(null.file_type().is_char_device());
        assert_eq!(null.rdev(), makedev(1, 3));
        assert!(std::fs::symlink_metadata(d.join("loop"))
            .unwrap()
            .file_type()
            .is_block_device());
        assert!(std::fs::symlink_metadata(d.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        let wh = std::fs::symlink_metadata(d.join("gone")).unwrap();
        assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
        assert_eq!((wh.uid(), wh.gid()), (33, 34));
        assert!(!d.join(".wh.gone").exists());
        assert_eq!(
            xattr::get(s.dest.join("opq"), OPAQUE_XATTR)
                .unwrap()
                .as_deref(),
            Some(&b"y"[..])
        );
        assert!(!s.dest.join("opq/.wh..wh..opq").exists());

        // diff_changes and write_upper_as_layer read the same tree back.
        let lower = s.top.join("lower");
        fs_create(&lower.join("d"));
        std::fs::write(lower.join("d/file"), b"old").unwrap();
        let changes = diff_changes(&s.dest, &[lower]).unwrap();
        let shown: Vec<String> = changes
            .iter()
            .map(|c| format!("{} {}", c.kind, c.path))
            .collect();
        assert_eq!(
            shown,
            [
                "C /d",
                "C /d/fifo",
                "C /d/file",
                "D /d/gone",
                "A /d/hard",
                "A /d/loop",
                "A /d/null",
                "A /d/sym",
                "C /opq"
            ]
            .iter()
            .map(|s| s.replace("C /d/fifo", "A /d/fifo"))
            .collect::<Vec<_>>()
        );
        let mut out = Vec::new();
        let (digest, size) = write_upper_as_layer(&s.dest, &mut out).unwrap();
        assert_eq!(digest, super::super::sha256_digest(&out));
        assert_eq!(size, out.len() as u64);
        let names: Vec<String> = tar::Archive::new(&out[..])
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert!(names.contains(&"d/.wh.gone".to_string()), "{names:?}");
        assert!(names.contains(&"opq/.wh..wh..opq".to_string()), "{names:?}");
        assert!(!names.contains(&"d/gone".to_string()), "{names:?}");
        // And it unpacks again to the same whiteouts.
        let again = s.top.join("again");
        unpack_layer(&out[..], &again).unwrap();
        assert!(std::fs::symlink_metadata(again.join("d/gone"))
            .unwrap()
            .file_type()
            .is_char_device());
        assert_eq!(std::fs::read(again.join("d/hard")).unwrap(), b"hello");
        assert_eq!(
            xattr::get(again.join("d"), "user.flotilla")
                .unwrap()
                .as_deref(),
            Some(&b"yes"[..])
        );
        std::fs::remove_dir_all(&again).unwrap();
        std::fs::remove_dir_all(s.top.join("lower")).unwrap();
        assert_outside_untouched(&s);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let s = scratch();
        let err = unpack_layer(&[1u8; 1024][..], &s.dest)
            .unwrap_err()
            .to_string();
        assert!(err.contains("malformed"), "{err}");
    }

    /// Throughput of the extractor on many small files (prints MB/s).
    #[test]
    fn unpack_throughput() {
        let s = scratch();
        let mut b = tar::Builder::new(Vec::new());
        let data = vec![0x5au8; 64 * 1024];
        for i in 0..1024 {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(data.len() as u64);
            b.append_data(&mut h, format!("d{}/f{i}", i % 16), &data[..])
                .unwrap();
        }
        let bytes = b.into_inner().unwrap();
        let t = std::time::Instant::now();
        let got = unpack_layer(&bytes[..], &s.dest).unwrap();
        let secs = t.elapsed().as_secs_f64();
        println!(
            "unpack: {} MB in {secs:.3}s = {:.0} MB/s",
            got.size >> 20,
            (got.size as f64 / 1e6) / secs
        );
        assert_eq!(got.size, bytes.len() as u64);
    }
}

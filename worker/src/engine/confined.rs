//! File access confined to a root by file descriptor.
//!
//! Everything the daemon reads from, or writes into, a container's file
//! system, an image layer or a volume on behalf of a container goes through
//! here. Paths inside those trees are chosen by image authors and container
//! processes, so they are never joined to a host path and handed to a
//! path-based call: a symlink (`etc -> /`), a `..`, or a swap between a check
//! and its use would take the daemon, as root, out of the tree. Instead:
//!
//! - a running container's files are opened with `openat2` and
//!   `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS` from the container's root
//!   (`/proc/PID/root`): symlinks resolve as they would inside the container
//!   and never leave it;
//! - image layers (not mounted) are walked one component at a time with
//!   `O_NOFOLLOW`, stacked as overlayfs stacks them (upper layers, whiteouts
//!   and opaque directories hide lower ones); a symlink on the way is not
//!   followed;
//! - reads take regular files only (a FIFO, a device or a socket is refused
//!   before it is opened for reading) and at most [`MAX_READ`] bytes;
//! - copies into a volume create each entry with `*at` calls relative to the
//!   destination directory's descriptor, replacing (never following) what is
//!   already there, and set owners and modes on descriptors;
//! - a tree is archived (`export`) by descriptor, so a container that swaps a
//!   directory for a symlink while it is read gets the symlink archived, not
//!   followed.
//!
//! It does not decide what to read or copy (the engine does), and it does not
//! unpack layers (`image::layer` has its own walk for that).

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{openat, openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fchmod, fstat, fstatat, mkdirat, FileStat, Mode, SFlag};
use nix::unistd::{fchown, fchownat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

/// The most the daemon reads of one container file (`/etc/passwd`, `/etc/group`).
pub const MAX_READ: u64 = 1 << 20;

/// How long reading a running container's credentials files may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// The deepest directory nesting copied or archived (a hostile tree cannot
/// exhaust the daemon's stack or descriptors).
const MAX_DEPTH: usize = 256;

fn errno(e: Errno) -> io::Error {
    io::Error::from(e)
}

fn refused(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Checks a path inside a container (a `VOLUME`, a `-v` or `--mount`
/// destination): it must be absolute and have no `..` component. Returns it
/// cleaned (`//` and `.` components and a trailing `/` dropped).
pub fn clean_container_path(path: &str) -> Result<String, String> {
    if !path.starts_with('/') {
        return Err(format!(
            "{path:?} is not an absolute path: give the full path inside the container"
        ));
    }
    let mut out = String::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(format!(
                    "{path:?} contains '..': give the path inside the container without '..'"
                ))
            }
            c => {
                out.push('/');
                out.push_str(c);
            }
        }
    }
    if out.is_empty() {
        out.push('/');
    }
    Ok(out)
}

/// The components of a path inside a root (leading `/`, `.` and empty
/// components dropped); `..` is refused.
fn components(path: &str) -> io::Result<Vec<OsString>> {
    let mut out = Vec::new();
    for c in path.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refused(format!("{path:?}: '..' is not allowed"))),
            c => out.push(OsString::from(c)),
        }
    }
    Ok(out)
}

fn kind(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

/// An overlayfs whiteout: a character device 0/0.
fn is_whiteout(st: &FileStat) -> bool {
    kind(st) == SFlag::S_IFCHR && st.st_rdev == 0
}

/// Opens a directory of the daemon's own (a layer, a volume, a data-root
/// path) for walking.
fn open_tree(path: &Path) -> io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens the directory `name` in `dir`, refusing a symlink.
fn open_dir_at(dir: &OwnedFd, name: &OsStr) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        name,
        OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Whether the directory is marked opaque (it hides lower layers' entries).
fn is_opaque(dir: &OwnedFd) -> bool {
    let Ok(fd) = dir.try_clone() else {
        return false;
    };
    xattr::FileExt::get_xattr(&File::from(fd), crate::image::layer::OPAQUE_XATTR)
        .ok()
        .flatten()
        .as_deref()
        == Some(b"y".as_slice())
}

/// The names in a directory (without `.` and `..`). Listed through the
/// descriptor's own `/proc/self/fd` entry, which names exactly the
/// directory already open (no path inside the tree is looked up).
fn names(dir: &OwnedFd) -> io::Result<Vec<OsString>> {
    std::fs::read_dir(format!("/proc/self/fd/{}", dir.as_raw_fd()))?
        .map(|e| e.map(|e| e.file_name()))
        .collect()
}

// === reading ===

/// Reads the regular file behind `fd` (any open mode, `O_PATH` included),
/// at most `limit` bytes. Anything but a regular file is refused without
/// being opened for reading, so a FIFO cannot block and a device cannot be
/// read.
pub fn read_regular(fd: &OwnedFd, limit: u64) -> io::Result<Vec<u8>> {
    let st = fstat(fd).map_err(errno)?;
    if kind(&st) != SFlag::S_IFREG {
        return Err(refused("not a regular file".into()));
    }
    if st.st_size as u64 > limit {
        return Err(refused(format!("larger than {limit} bytes")));
    }
    let (file, _) = reopen_for_reading(fd, &st)?;
    let mut buf = Vec::new();
    file.take(limit + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > limit {
        return Err(refused(format!("larger than {limit} bytes")));
    }
    Ok(buf)
}

/// Opens `path` inside the tree whose root is `root`, as if `root` were `/`:
/// symlinks resolve inside the tree, `..` stops at its root, magic links
/// (`/proc/*/root`, `/proc/*/fd/*`) are refused. The descriptor is `O_PATH`.
pub fn open_in_root(root: &OwnedFd, path: &str) -> io::Result<OwnedFd> {
    let rel = path.trim_start_matches('/');
    let rel = if rel.is_empty() { "." } else { rel };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
        .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    match openat2(root, rel, how) {
        Err(Errno::ENOSYS) => open_nofollow_walk(root, &components(path)?),
        r => r.map_err(errno),
    }
}

/// Opens `comps` under `root` one component at a time, following no symlink
/// (the last component itself may be one: the descriptor is then the link's).
fn open_nofollow_walk(root: &OwnedFd, comps: &[OsString]) -> io::Result<OwnedFd> {
    let mut cur = root.try_clone()?;
    let Some((last, parents)) = comps.split_last() else {
        return Ok(cur);
    };
    for c in parents {
        cur = openat(
            &cur,
            c.as_os_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno)?;
    }
    openat(
        &cur,
        last.as_os_str(),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Reads `path` of the running container whose first process is `pid`,
/// resolved inside its root ([`open_in_root`]); `None` if it does not exist.
pub fn read_container_file(pid: u32, path: &str, limit: u64) -> io::Result<Option<Vec<u8>>> {
    let root = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    match open_in_root(&root, path) {
        Ok(fd) => read_regular(&fd, limit).map(Some),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Opens the character device at `path` in the running container whose first
/// process is `pid` (its terminal), resolved inside its root, for reading and
/// writing without becoming the daemon's controlling terminal; anything but a
/// character device is refused before it is opened.
pub fn open_container_device(pid: u32, path: &str) -> io::Result<File> {
    let root = nix::fcntl::open(
        format!("/proc/{pid}/root").as_str(),
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)?;
    let fd = open_in_root(&root, path)?;
    let st = fstat(&fd).map_err(errno)?;
    if kind(&st) != SFlag::S_IFCHR {
        return Err(refused("not a character device".into()));
    }
    let dev = nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str(),
        OFlag::O_RDWR | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(errno)?;
    let again = fstat(&dev).map_err(errno)?;
    if again.st_rdev != st.st_rdev || again.st_ino != st.st_ino {
        return Err(refused("the device changed while it was opened".into()));
    }
    Ok(File::from(dev))
}

/// Reads `path` from a stack of unmounted overlay layers (top first) as the
/// mounted stack would show it: the topmost layer that has the path wins; a
/// whiteout, or a missing entry below an opaque directory, hides the lower
/// layers. A symlink on the way (or at the end) is not followed: the read is
/// refused. `None` if no layer has the file.
pub fn read_layered_file(
    layers_top_first: &[PathBuf],
    path: &str,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    let comps = components(path)?;
    let Some((last, parents)) = comps.split_last() else {
        return Ok(None);
    };
    'layers: for layer in layers_top_first {
        let mut dir = match open_tree(layer) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let mut opaque = false;
        for c in parents {
            match fstatat(&dir, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                Err(Errno::ENOENT) if opaque => return Ok(None),
                Err(Errno::ENOENT) => continue 'layers,
                Err(e) => return Err(errno(e)),
                Ok(st) if is_whiteout(&st) => return Ok(None),
                Ok(st) if kind(&st) == SFlag::S_IFDIR => {
                    dir = open_dir_at(&dir, c).map_err(errno)?;
                    opaque |= is_opaque(&dir);
                }
                Ok(_) => {
                    return Err(refused(format!(
                        "{path}: {} is a symlink or not a directory; not followed",
                        c.to_string_lossy()
                    )))
                }
            }
        }
        match fstatat(&dir, last.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) if opaque => return Ok(None),
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(errno(e)),
            Ok(st) if is_whiteout(&st) => return Ok(None),
            Ok(_) => {
                let fd = openat(
                    &dir,
                    last.as_os_str(),
                    OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno)?;
                return read_regular(&fd, limit).map(Some);
            }
        }
    }
    Ok(None)
}

/// Turns a read's result into text, logging (not failing on) what was
/// refused: the caller then goes on as if the file were absent.
pub fn text_or_warn(what: &str, r: io::Result<Option<Vec<u8>>>) -> Option<String> {
    match r {
        Ok(Some(bytes)) => Some(String::from_utf8_lossy(&bytes).into_owned()),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!("not reading {what}: {e}");
            None
        }
    }
}

// === writing into a volume ===

/// What a layer holds at a volume's path.
enum AtPath {
    /// Nothing: lower layers show through.
    Missing,
    /// A whiteout, a symlink or a non-directory, or nothing below an opaque
    /// directory: what lower layers had is hidden, and nothing is copied.
    Hidden,
    /// A directory (and whether it is opaque).
    Dir(OwnedFd, bool),
}

fn walk_layer(root: &OwnedFd, comps: &[OsString], shown: &str) -> io::Result<AtPath> {
    let mut cur = root.try_clone()?;
    let mut opaque_above = false;
    for (i, c) in comps.iter().enumerate() {
        let st = match fstatat(&cur, c.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) if opaque_above => return Ok(AtPath::Hidden),
            Err(Errno::ENOENT) => return Ok(AtPath::Missing),
            Err(e) => return Err(errno(e)),
            Ok(st) => st,
        };
        if kind(&st) != SFlag::S_IFDIR {
            if kind(&st) == SFlag::S_IFLNK {
                tracing::warn!(
                    "volume {shown}: {} is a symlink in the image; its target is not copied",
                    comps[..=i]
                        .iter()
                        .map(|c| c.to_string_lossy())
                        .collect::<Vec<_>>()
                        .join("/")
                );
            }
            return Ok(AtPath::Hidden);
        }
        cur = open_dir_at(&cur, c).map_err(errno)?;
        let opaque = is_opaque(&cur);
        if i + 1 == comps.len() {
            return Ok(AtPath::Dir(cur, opaque));
        }
        opaque_above |= opaque;
    }
    Ok(AtPath::Dir(cur, false))
}

/// Seeds the volume directory `dest` with what the image's layers (bottom
/// first) hold at `path`, as Docker seeds a new volume: owners, modes,
/// symlinks (as links) and files are copied; whiteouts and opaque
/// directories of upper layers remove what lower ones had; FIFOs, devices
/// and sockets are not copied. The volume's root takes the owner and mode of
/// the image's directory.
pub fn seed_from_layers(
    layers_bottom_first: &[PathBuf],
    path: &str,
    dest: &Path,
) -> io::Result<()> {
    let comps = components(path)?;
    if comps.is_empty() {
        return Err(refused("a volume cannot be mounted at /".into()));
    }
    let dest = open_tree(dest)?;
    for layer in layers_bottom_first {
        let root = match open_tree(layer) {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        match walk_layer(&root, &comps, path)? {
            AtPath::Missing => {}
            AtPath::Hidden => clear_dir(&dest, 0)?,
            AtPath::Dir(src, opaque) => {
                if opaque {
                    clear_dir(&dest, 0)?;
                }
                copy_dir(&src, &dest, 0)?;
                set_owner_mode(&dest, &fstat(&src).map_err(errno)?)?;
            }
        }
    }
    Ok(())
}

fn too_deep() -> io::Error {
    refused(format!("directories nested deeper than {MAX_DEPTH}"))
}

fn set_owner_mode(fd: &OwnedFd, st: &FileStat) -> io::Result<()> {
    // Owner first: chown clears the set-id bits the mode then sets.
    fchown(
        fd,
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
    )
    .map_err(errno)?;
    fchmod(fd, Mode::from_bits_truncate(st.st_mode & 0o7777)).map_err(errno)
}

/// Makes room for `name` in `dir`: keeps an existing directory when a
/// directory is wanted (returns true), removes anything else.
fn make_room(dir: &OwnedFd, name: &OsStr, want_dir: bool, depth: usize) -> io::Result<bool> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(errno(e)),
        Ok(st) if kind(&st) == SFlag::S_IFDIR && want_dir => Ok(true),
        Ok(_) => {
            remove_at(dir, name, depth)?;
            Ok(false)
        }
    }
}

/// Removes `name` from `dir`, a directory with everything below it.
fn remove_at(dir: &OwnedFd, name: &OsStr, depth: usize) -> io::Result<()> {
    match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(errno(e)),
        Ok(st) if kind(&st) == SFlag::S_IFDIR => {
            let sub = open_dir_at(dir, name).map_err(errno)?;
            clear_dir(&sub, depth + 1)?;
            unlinkat(dir, name, UnlinkatFlags::RemoveDir).map_err(errno)
        }
        Ok(_) => unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(errno),
    }
}

/// Empties a directory.
fn clear_dir(dir: &OwnedFd, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for name in names(dir)? {
        remove_at(dir, &name, depth)?;
    }
    Ok(())
}

fn copy_dir(src: &OwnedFd, dest: &OwnedFd, depth: usize) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for name in names(src)? {
        let name = name.as_os_str();
        let st = match fstatat(src, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Err(Errno::ENOENT) => continue,
            r => r.map_err(errno)?,
        };
        if is_whiteout(&st) {
            remove_at(dest, name, depth)?;
            continue;
        }
        match kind(&st) {
            SFlag::S_IFDIR => {
                let from = open_dir_at(src, name).map_err(errno)?;
                let existed = make_room(dest, name, true, depth)?;
                if !existed {
                    mkdirat(dest, name, Mode::from_bits_truncate(0o700)).map_err(errno)?;
                }
                let to = open_dir_at(dest, name).map_err(errno)?;
                if existed && is_opaque(&from) {
                    clear_dir(&to, depth + 1)?;
                }
                copy_dir(&from, &to, depth + 1)?;
                set_owner_mode(&to, &st)?;
            }
            SFlag::S_IFREG => {
                let from = openat(
                    src,
                    name,
                    OFlag::O_RDONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_NONBLOCK
                        | OFlag::O_NOCTTY
                        | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno)?;
                if kind(&fstat(&from).map_err(errno)?) != SFlag::S_IFREG {
                    continue;
                }
                make_room(dest, name, false, depth)?;
                let to = openat(
                    dest,
                    name,
                    OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_WRONLY
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(errno)?;
                let mut out = File::from(to.try_clone()?);
                io::copy(&mut File::from(from), &mut out)?;
                out.flush()?;
                set_owner_mode(&to, &st)?;
            }
            SFlag::S_IFLNK => {
                let target = readlinkat(src, name).map_err(errno)?;
                make_room(dest, name, false, depth)?;
                symlinkat(target.as_os_str(), dest, name).map_err(errno)?;
                fchownat(
                    dest,
                    name,
                    Some(Uid::from_raw(st.st_uid)),
                    Some(Gid::from_raw(st.st_gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )
                .map_err(errno)?;
            }
            // FIFOs, devices and sockets are not copied into volumes.
            _ => {}
        }
    }
    Ok(())
}

// === archiving ===

/// Appends the tree at `root` (a directory of the daemon's, e.g. a mounted
/// view of a container) to `tar` under `./`, by descriptor: nothing below
/// `root` is ever followed, so a container changing its files meanwhile
/// can make the archive inconsistent but cannot make it leave the tree.
pub fn append_tree<W: Write>(tar: &mut tar::Builder<W>, root: &Path) -> io::Result<()> {
    let fd = open_tree(root)?;
    append_entry(tar, &fd, Path::new("."), None)?;
    append_children(tar, &fd, Path::new("."), 0)
}

fn append_children<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &OwnedFd,
    at: &Path,
    depth: usize,
) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    let mut list = names(dir)?;
    list.sort();
    for name in list {
        let path = at.join(&name);
        let fd = match openat(
            dir,
            name.as_os_str(),
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Removed meanwhile.
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(errno(e)),
        };
        if let Some(sub) = append_entry(tar, &fd, &path, Some((dir, &name)))? {
            append_children(tar, &sub, &path, depth + 1)?;
        }
    }
    Ok(())
}

/// Appends one entry from its `O_PATH` descriptor; returns a readable
/// descriptor of it when it is a directory to descend into.
fn append_entry<W: Write>(
    tar: &mut tar::Builder<W>,
    fd: &OwnedFd,
    path: &Path,
    parent: Option<(&OwnedFd, &OsString)>,
) -> io::Result<Option<OwnedFd>> {
    let meta = File::from(fd.try_clone()?).metadata()?;
    let mut header = tar::Header::new_gnu();
    header.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
    let st = fstat(fd).map_err(errno)?;
    match kind(&st) {
        SFlag::S_IFDIR => {
            let dir = match parent {
                Some((p, name)) => match open_dir_at(p, name) {
                    Ok(d) => d,
                    // Replaced by something else meanwhile: skip it.
                    Err(Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR) => return Ok(None),
                    Err(e) => return Err(errno(e)),
                },
                None => openat(
                    fd,
                    ".",
                    OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno)?,
            };
            header.set_size(0);
            tar.append_data(&mut header, path, io::empty())?;
            Ok(Some(dir))
        }
        SFlag::S_IFREG => {
            let Ok((file, len)) = reopen_for_reading(fd, &st) else {
                return Ok(None);
            };
            // The header's size is what was there when the file was opened;
            // exactly that many bytes follow, even if the file changes.
            header.set_size(len);
            let data = file.take(len).chain(Zeros(len)).take(len);
            tar.append_data(&mut header, path, data).map(|_| None)
        }
        SFlag::S_IFLNK => {
            let target = readlinkat(fd, "").map_err(errno)?;
            header.set_size(0);
            tar.append_link(&mut header, path, target).map(|_| None)
        }
        SFlag::S_IFCHR | SFlag::S_IFBLK | SFlag::S_IFIFO => {
            let dev = st.st_rdev;
            header.set_size(0);
            header.set_device_major(nix::sys::stat::major(dev) as u32)?;
            header.set_device_minor(nix::sys::stat::minor(dev) as u32)?;
            tar.append_data(&mut header, path, io::empty())
                .map(|_| None)
        }
        // Sockets cannot be archived.
        _ => Ok(None),
    }
}

/// Pads a file that shrank while it was archived, so the entry keeps the
/// size its header announced.
struct Zeros(u64);

impl Read for Zeros {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.0 as usize);
        buf[..n].fill(0);
        self.0 -= n as u64;
        Ok(n)
    }
}

/// Opens the regular file behind an `O_PATH` descriptor for reading;
/// returns it with its size now.
fn reopen_for_reading(fd: &OwnedFd, st: &FileStat) -> io::Result<(File, u64)> {
    let f = nix::fcntl::open(
        format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd()).as_str(),
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(errno)?;
    let again = fstat(&f).map_err(errno)?;
    if again.st_ino != st.st_ino || again.st_dev != st.st_dev {
        return Err(refused("changed while archived".into()));
    }
    Ok((File::from(f), again.st_size as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};

    fn whiteout(path: &Path) {
        nix::sys::stat::mknod(path, SFlag::S_IFCHR, Mode::empty(), 0).expect("mknod whiteout");
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn container_paths_must_be_absolute_and_free_of_dotdot() {
        assert_eq!(clean_container_path("/data").unwrap(), "/data");
        assert_eq!(clean_container_path("//a/./b/").unwrap(), "/a/b");
        assert_eq!(clean_container_path("/").unwrap(), "/");
        for bad in ["data", "", "/../../tmp/x", "/a/../b", "/a/.."] {
            let err = clean_container_path(bad).unwrap_err();
            assert!(
                err.contains("..") || err.contains("absolute"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn layered_reads_stack_like_overlayfs_and_never_follow_links() {
        let t = tempfile::tempdir().unwrap();
        let (upper, lower, outside) = (t.path().join("u"), t.path().join("l"), t.path().join("o"));
        for d in [&upper, &lower, &outside] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(outside.join("passwd"), "host:x:0:0::/:/bin/sh\n").unwrap();
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "lower\n").unwrap();
        std::fs::write(lower.join("etc/group"), "g\n").unwrap();
        let layers = vec![upper.clone(), lower.clone()];
        let read = |p: &str| read_layered_file(&layers, p, MAX_READ);
        assert_eq!(read("etc/passwd").unwrap().unwrap(), b"lower\n");
        // A symlinked parent in an upper layer is refused, not followed.
        symlink(&outside, upper.join("etc")).unwrap();
        assert!(read("/etc/passwd").is_err());
        std::fs::remove_file(upper.join("etc")).unwrap();
        // A symlinked file too.
        std::fs::create_dir(upper.join("etc")).unwrap();
        symlink(outside.join("passwd"), upper.join("etc/passwd")).unwrap();
        assert!(read("etc/passwd").is_err());
        std::fs::remove_file(upper.join("etc/passwd")).unwrap();
        // A FIFO is refused at once (no reader blocks on it).
        nix::unistd::mkfifo(&upper.join("etc/passwd"), Mode::from_bits_truncate(0o644)).unwrap();
        assert!(read("etc/passwd").is_err());
        std::fs::remove_file(upper.join("etc/passwd")).unwrap();
        // Whiteouts and opaque directories hide lower layers.
        whiteout(&upper.join("etc/passwd"));
        assert!(read("etc/passwd").unwrap().is_none());
        assert_eq!(read("etc/group").unwrap().unwrap(), b"g\n");
        xattr::set(upper.join("etc"), crate::image::layer::OPAQUE_XATTR, b"y").unwrap();
        assert!(read("etc/group").unwrap().is_none());
        // Too large.
        std::fs::write(lower.join("big"), vec![b'x'; 100]).unwrap();
        assert!(read_layered_file(&layers, "big", 99).is_err());
        assert_eq!(
            read_layered_file(&layers, "big", 100)
                .unwrap()
                .unwrap()
                .len(),
            100
        );
        assert!(read("../o/passwd").is_err());
    }

    #[test]
    fn reads_in_a_root_resolve_symlinks_inside_it() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("inside"), "inside\n").unwrap();
        symlink("/inside", root.join("etc/passwd")).unwrap();
        symlink("../../../../../../../../dev/zero", root.join("etc/group")).unwrap();
        symlink("/proc/self/root/etc/hostname", root.join("etc/magic")).unwrap();
        let fd = open_tree(&root).unwrap();
        let read = |p: &str| open_in_root(&fd, p).and_then(|f| read_regular(&f, MAX_READ));
        assert_eq!(read("/etc/passwd").unwrap(), b"inside\n");
        // `..` stops at the root: /dev/zero of the root, which does not exist.
        assert_eq!(
            read("/etc/group").unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        assert!(read("/etc/magic").is_err());
        // The host's /dev/zero itself is refused (not a regular file).
        let host = open_tree(Path::new("/")).unwrap();
        assert!(open_in_root(&host, "/dev/zero")
            .and_then(|f| read_regular(&f, MAX_READ))
            .is_err());
    }

    #[test]
    fn container_devices_are_character_devices_only() {
        // This process's root is the host's: /dev/null is a device, a file is not.
        let me = std::process::id();
        assert!(open_container_device(me, "/dev/null").is_ok());
        let t = tempfile::tempdir().unwrap();
        let file = t.path().join("f");
        std::fs::write(&file, "x").unwrap();
        assert!(open_container_device(me, file.to_str().unwrap()).is_err());
        let fifo = t.path().join("p");
        nix::unistd::mkfifo(&fifo, Mode::from_bits_truncate(0o600)).unwrap();
        assert!(open_container_device(me, fifo.to_str().unwrap()).is_err());
    }

    #[test]
    fn seeding_never_writes_through_or_copies_from_image_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let host = t.path().join("host");
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(host.join("secret"), "s").unwrap();
        std::fs::set_permissions(&host, std::fs::Permissions::from_mode(0o700)).unwrap();
        let (l1, l2, vol) = (
            t.path().join("l1"),
            t.path().join("l2"),
            t.path().join("vol"),
        );
        for d in [&l1, &l2, &vol] {
            std::fs::create_dir_all(d).unwrap();
        }
        // Layer 1: data/x -> host; layer 2: data/x/ (0777) with a file.
        std::fs::create_dir_all(l1.join("data")).unwrap();
        std::fs::write(l1.join("data/kept"), "k").unwrap();
        symlink(&host, l1.join("data/x")).unwrap();
        std::fs::create_dir_all(l2.join("data/x")).unwrap();
        std::fs::write(l2.join("data/x/planted"), "p").unwrap();
        std::fs::set_permissions(l2.join("data/x"), std::fs::Permissions::from_mode(0o777))
            .unwrap();
        seed_from_layers(std::slice::from_ref(&l1), "/data", &vol).unwrap();
        assert_eq!(std::fs::read_link(vol.join("x")).unwrap(), host);
        seed_from_layers(&[l1.clone(), l2.clone()], "/data", &vol).unwrap();
        assert_eq!(mode(&host), 0o700, "the host dir's mode is untouched");
        assert!(
            !host.join("planted").exists(),
            "nothing written into the host dir"
        );
        assert_eq!(std::fs::read(vol.join("x/planted")).unwrap(), b"p");
        assert_eq!(mode(&vol.join("x")), 0o777);
        assert_eq!(std::fs::read(vol.join("kept")).unwrap(), b"k");

        // VOLUME /data with data -> host: nothing of the host is copied.
        let l3 = t.path().join("l3");
        std::fs::create_dir_all(&l3).unwrap();
        symlink(&host, l3.join("data")).unwrap();
        let vol2 = t.path().join("vol2");
        std::fs::create_dir_all(&vol2).unwrap();
        seed_from_layers(std::slice::from_ref(&l3), "/data", &vol2).unwrap();
        assert_eq!(std::fs::read_dir(&vol2).unwrap().count(), 0);
        // An upper layer's whiteout or symlink hides what lower ones had.
        seed_from_layers(&[l1.clone(), l3], "/data", &vol2).unwrap();
        assert_eq!(std::fs::read_dir(&vol2).unwrap().count(), 0);
        let l4 = t.path().join("l4");
        std::fs::create_dir_all(l4.join("data")).unwrap();
        whiteout(&l4.join("data/kept"));
        let vol3 = t.path().join("vol3");
        std::fs::create_dir_all(&vol3).unwrap();
        seed_from_layers(&[l1, l2, l4], "/data", &vol3).unwrap();
        assert!(!vol3.join("kept").exists());
        assert!(vol3.join("x/planted").exists());
        assert!(seed_from_layers(&[], "/../x", &vol3).is_err());
    }

    #[test]
    fn archives_keep_links_as_links() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::write(root.join("d/f"), "hello").unwrap();
        symlink("/etc", root.join("etc")).unwrap();
        nix::unistd::mkfifo(&root.join("fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let mut tar = tar::Builder::new(Vec::new());
        append_tree(&mut tar, &root).unwrap();
        let bytes = tar.into_inner().unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let mut seen = Vec::new();
        for e in archive.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().display().to_string();
            let path = path.trim_start_matches("./").to_string();
            let kind = e.header().entry_type();
            let mut data = String::new();
            e.read_to_string(&mut data).unwrap();
            seen.push((path, kind, data));
        }
        let find = |p: &str| seen.iter().find(|(path, ..)| path == p).cloned();
        assert_eq!(find("d/f").unwrap().2, "hello", "{seen:?}");
        assert_eq!(find("etc").unwrap().1, tar::EntryType::Symlink);
        assert_eq!(find("fifo").unwrap().1, tar::EntryType::Fifo);
        assert!(
            seen.iter().all(|(p, ..)| !p.starts_with("etc/")),
            "{seen:?}"
        );
    }
}

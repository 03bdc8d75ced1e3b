//! The container side of process creation: what runs in the child the shim
//! cloned into new namespaces, from the first instruction to `execve` of the
//! user's process. Order matters and follows runc/youki:
//!
//! 1. (done by the shim's sandbox phase: join the cgroups, bring up loopback)
//!    `setsid`;
//! 2. make every mount private, assemble the overlayfs rootfs, mount the spec's
//!    mounts (proc, a minimal /dev with its device nodes, devpts, shm, mqueue,
//!    read-only sysfs, binds), each destination resolved *inside* the rootfs so a
//!    symlink in an image cannot redirect a mount onto the host;
//! 3. `pivot_root` and detach the old root;
//! 4. hostname, masked and read-only paths, read-only rootfs;
//! 5. working directory, then credentials: bounding set, `no_new_privs`,
//!    groups/gid/uid, capabilities;
//! 6. find the executable (exit 127 if missing, 126 if not executable) and exec,
//!    optionally under a minimal init (`--init`) that reaps zombies and forwards signals.
//!
//! Failures are reported to the shim over the sync pipe as one JSON line and the
//! child exits; success is the pipe closing on exec (it is close-on-exec).

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, Mode, SFlag};
use nix::unistd::{chdir, pivot_root, sethostname, Gid, Uid};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{ShimConfig, StartFailure};

/// Exit codes the way Docker reports them.
pub const EXIT_ENGINE_ERROR: i32 = 125;
pub const EXIT_NOT_EXECUTABLE: i32 = 126;
pub const EXIT_NOT_FOUND: i32 = 127;

/// A start failure: Docker's exit code and the message.
pub struct Failure {
    code: i32,
    message: String,
}

/// The exit code and message of a failure.
pub(super) fn failure_parts(f: Failure) -> (i32, String) {
    (f.code, f.message)
}

fn fail(code: i32, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
    }
}

fn engine<E: std::fmt::Display>(what: &str) -> impl FnOnce(E) -> Failure + '_ {
    move |e| fail(EXIT_ENGINE_ERROR, format!("{what}: {e}"))
}

/// Runs in the cloned child. Never returns: it execs or exits.
pub(super) fn container_main(
    spec: &Spec,
    cfg: &ShimConfig,
    sync: OwnedFd,
    console: Option<OwnedFd>,
) -> ! {
    let sync_fd = std::os::fd::AsRawFd::as_raw_fd(&sync);
    let failure = match setup_and_exec(spec, cfg, console, sync_fd) {
        Ok(never) => match never {},
        Err(f) => f,
    };
    let report = StartFailure {
        exit_code: failure.code,
        message: failure.message,
    };
    let mut file = fs::File::from(sync);
    let _ = writeln!(
        file,
        "{}",
        serde_json::to_string(&report).unwrap_or_default()
    );
    drop(file);
    std::process::exit(failure.code);
}

enum Never {}

fn setup_and_exec(
    spec: &Spec,
    cfg: &ShimConfig,
    console: Option<OwnedFd>,
    sync_fd: std::os::fd::RawFd,
) -> Result<Never, Failure> {
    nix::unistd::setsid().map_err(engine("failed to start a session"))?;

    let linux = spec.linux().as_ref();
    let has_ns = |t: LinuxNamespaceType| {
        linux
            .and_then(|l| l.namespaces().as_ref())
            .is_some_and(|ns| ns.iter().any(|n| n.typ() == t))
    };

    // 2. mounts
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(engine("failed to make mounts private"))?;
    let root = spec
        .root()
        .as_ref()
        .map(|r| r.path().clone())
        .ok_or_else(|| fail(EXIT_ENGINE_ERROR, "the spec has no root"))?;
    mount_rootfs(cfg, &root)?;
    // Every mount destination is resolved through this fd by the kernel
    // (openat2 RESOLVE_IN_ROOT) and mounted on /proc/self/fd/N: a symlink in
    // the image, even one swapped in concurrently through a shared volume,
    // cannot point a mount outside the rootfs (the CVE-2021-30465 class).
    let root_fd = nix::fcntl::open(
        &root,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(engine("failed to open the rootfs"))?;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(&root_fd, m)?;
    }
    if let Some(devices) = linux.and_then(|l| l.devices().as_ref()) {
        for d in devices {
            create_device_node(&root_fd, d)?;
        }
    }
    let ptmx = root.join("dev/ptmx");
    if root.join("dev/pts").is_dir() && !ptmx.exists() {
        let _ = fs::remove_file(&ptmx);
        symlink("pts/ptmx", &ptmx).map_err(engine("failed to link /dev/ptmx"))?;
    }

    // 3. pivot_root (runc's trick: pivot onto itself, then detach the old root)
    chdir(&root).map_err(engine("failed to enter the rootfs"))?;
    pivot_root(".", ".").map_err(engine("failed to pivot_root into the rootfs"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(engine("failed to detach the old root"))?;
    chdir("/").map_err(engine("failed to chdir to /"))?;

    // The terminal comes from the container's own devpts (as runc's console
    // socket does), so `tty` inside names it; the master goes to the shim.
    if let Some(sock) = console {
        let (master, name) =
            super::open_console().map_err(engine("failed to allocate the container's terminal"))?;
        super::send_fd(&sock, &master, &name)
            .map_err(engine("failed to hand the terminal to the shim"))?;
    }

    // 4. identity and hardening of the view
    if has_ns(LinuxNamespaceType::Uts) {
        if let Some(h) = spec.hostname() {
            sethostname(h).map_err(engine("failed to set the hostname"))?;
        }
    }
    if let Some(linux) = linux {
        for p in linux.masked_paths().as_deref().unwrap_or_default() {
            mask_path(p)?;
        }
        for p in linux.readonly_paths().as_deref().unwrap_or_default() {
            readonly_path(p)?;
        }
    }
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| fail(EXIT_ENGINE_ERROR, "the spec has no process"))?;
    let cwd = process.cwd();
    if fs::metadata(cwd).is_err() {
        // Docker creates a missing working directory.
        fs::create_dir_all(cwd).map_err(|e| {
            fail(
                EXIT_NOT_EXECUTABLE,
                format!(
                    "failed to create the working directory {}: {e}",
                    cwd.display()
                ),
            )
        })?;
    }
    if spec.root().as_ref().and_then(|r| r.readonly()) == Some(true) {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(engine("failed to make the rootfs read-only"))?;
    }

    // 5. credentials
    let env: Vec<String> = process.env().clone().unwrap_or_default();
    let args = process.args().clone().unwrap_or_default();
    let Some(arg0) = args.first() else {
        return Err(fail(
            EXIT_ENGINE_ERROR,
            "no command specified: give one after the image name, or set CMD/ENTRYPOINT in the image",
        ));
    };
    chdir(cwd.as_path()).map_err(|e| {
        fail(
            EXIT_NOT_EXECUTABLE,
            format!(
                "failed to change to the working directory {}: {e}",
                cwd.display()
            ),
        )
    })?;
    // Look the executable up before dropping privileges, as Docker reports
    // missing binaries rather than permission errors on $PATH directories.
    let exe = find_executable(arg0, &env)?;
    let seccomp = linux
        .and_then(|l| l.seccomp().as_ref())
        .map(|s| super::seccomp::from_oci(s).and_then(|p| super::seccomp::compile(&p)))
        .transpose()
        .map_err(engine("seccomp"))?;
    super::drop_privileges(process).map_err(engine("failed to set the process credentials"))?;
    // Changing credentials cleared the parent-death signal the sandbox set.
    let _ = nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL);

    // 6. exec
    let c_exe = CString::new(exe.as_os_str().as_encoded_bytes())
        .map_err(engine("invalid executable path"))?;
    let c_args: Vec<CString> = args
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(engine("invalid argument"))?;
    let c_env: Vec<CString> = env
        .iter()
        .map(|a| CString::new(a.as_bytes()))
        .collect::<Result<_, _>>()
        .map_err(engine("invalid environment variable"))?;
    super::reset_signals();
    // Last: from here on only the profile's syscalls work.
    if let Some(filter) = &seccomp {
        super::seccomp::install(filter).map_err(engine("failed to install the seccomp filter"))?;
    }
    if cfg.init {
        super::run_as_init(&c_exe, &c_args, &c_env, sync_fd);
    }
    let err = nix::unistd::execve(&c_exe, &c_args, &c_env).unwrap_err();
    Err(exec_failure(arg0, err))
}

/// Docker's exit code and message for a failed exec.
fn exec_failure(arg0: &str, err: nix::Error) -> Failure {
    let (code, message) = exec_failure_message(arg0, err);
    fail(code, message)
}

/// The exit code and message for an `execve` error.
pub(super) fn exec_failure_message(arg0: &str, err: nix::Error) -> (i32, String) {
    let code = match err {
        nix::Error::ENOENT => EXIT_NOT_FOUND,
        _ => EXIT_NOT_EXECUTABLE,
    };
    (
        code,
        format!("exec: {arg0:?}: {}", err.desc().to_lowercase()),
    )
}

/// Finds `arg0` as execve will need it: as given when it has a `/`, else in
/// the container's `$PATH`.
pub(super) fn find_executable(arg0: &str, env: &[String]) -> Result<PathBuf, Failure> {
    if arg0.contains('/') {
        let path = PathBuf::from(arg0);
        let meta = fs::metadata(&path).map_err(|_| {
            fail(
                EXIT_NOT_FOUND,
                format!("exec: {arg0:?}: stat {arg0}: no such file or directory"),
            )
        })?;
        if meta.is_dir() || meta.permissions().mode() & 0o111 == 0 {
            return Err(fail(
                EXIT_NOT_EXECUTABLE,
                format!("exec: {arg0:?}: permission denied"),
            ));
        }
        return Ok(path);
    }
    let path_var = env
        .iter()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or(super::DEFAULT_PATH);
    let mut found_not_executable = false;
    for dir in path_var.split(':').filter(|d| !d.is_empty()) {
        let candidate = Path::new(dir).join(arg0);
        if let Ok(meta) = fs::metadata(&candidate) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(candidate);
            }
            found_not_executable = true;
        }
    }
    if found_not_executable {
        return Err(fail(
            EXIT_NOT_EXECUTABLE,
            format!("exec: {arg0:?}: permission denied"),
        ));
    }
    Err(fail(
        EXIT_NOT_FOUND,
        format!("exec: {arg0:?}: executable file not found in $PATH"),
    ))
}

fn mount_rootfs(cfg: &ShimConfig, root: &Path) -> Result<(), Failure> {
    let lower = if cfg.lower_dirs.is_empty() {
        // overlayfs needs a lower layer; an image without layers gets an empty one.
        vec![cfg.work_dir.with_file_name("empty-lower")]
    } else {
        cfg.lower_dirs.clone()
    };
    for dir in &lower {
        let _ = fs::create_dir_all(dir);
    }
    let lowers: Vec<String> = lower.iter().map(|p| p.display().to_string()).collect();
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowers.join(":"),
        cfg.upper_dir.display(),
        cfg.work_dir.display()
    );
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(data.as_str()),
    )
    .map_err(|e| {
        fail(
            EXIT_ENGINE_ERROR,
            format!(
                "failed to mount the overlayfs rootfs ({} layers, {} bytes of options): {e}",
                lowers.len(),
                data.len()
            ),
        )
    })
}

fn mount_flags(options: &[String]) -> (MsFlags, Vec<String>, bool) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    let mut readonly = false;
    for o in options {
        match o.as_str() {
            "ro" => readonly = true,
            "rw" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "strictatime" => flags |= MsFlags::MS_STRICTATIME,
            "relatime" => flags |= MsFlags::MS_RELATIME,
            "noatime" => flags |= MsFlags::MS_NOATIME,
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
            "private" | "rprivate" | "slave" | "rslave" | "shared" | "rshared" => {}
            other => data.push(other.to_string()),
        }
    }
    (flags, data, readonly)
}

/// `openat2(dir, path, flags, RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS)`:
/// symlinks and `..` in `path` are resolved as if `dir` were `/`.
pub fn openat2_in_root(
    dir: &OwnedFd,
    path: &Path,
    flags: nix::fcntl::OFlag,
) -> nix::Result<OwnedFd> {
    use std::os::fd::FromRawFd;
    let c_path =
        CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| nix::Error::EINVAL)?;
    // SAFETY: open_how is a plain struct of integers; zero is valid for all.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (flags | nix::fcntl::OFlag::O_CLOEXEC).bits() as u64;
    how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    // SAFETY: openat2 reads the path and `how` for the duration of the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            c_path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What to create at a mount destination that does not exist yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum MountPoint {
    Dir,
    File,
}

/// Opens (O_PATH) the mount destination `dest` inside the rootfs, creating
/// missing directories (and the last component as `kind`) with `*at` calls
/// on the fd of the parent, each step resolved inside the root by the kernel.
/// A dangling symlink on the way is followed inside the root (its target is
/// created there), as runc does.
fn open_mount_point(root: &OwnedFd, dest: &str, kind: MountPoint) -> nix::Result<OwnedFd> {
    let mut path = PathBuf::from(dest);
    for _ in 0..40 {
        match open_or_create(root, &path, kind)? {
            Ok(fd) => return Ok(fd),
            Err(redirect) => path = redirect,
        }
    }
    Err(nix::Error::ELOOP)
}

/// One walk of [`open_mount_point`]: the fd, or the path to walk instead
/// when a dangling symlink was met.
fn open_or_create(
    root: &OwnedFd,
    path: &Path,
    kind: MountPoint,
) -> nix::Result<Result<OwnedFd, PathBuf>> {
    use nix::fcntl::OFlag;
    if let Ok(fd) = openat2_in_root(root, path, OFlag::O_PATH) {
        return Ok(Ok(fd));
    }
    let parts: Vec<Component> = path
        .components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect();
    let mut dir = openat2_in_root(root, Path::new("/"), OFlag::O_PATH | OFlag::O_DIRECTORY)?;
    let mut so_far = PathBuf::from("/");
    for (i, part) in parts.iter().enumerate() {
        so_far.push(part);
        match openat2_in_root(root, &so_far, OFlag::O_PATH) {
            Ok(fd) => {
                dir = fd;
                continue;
            }
            Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(e),
        }
        let Component::Normal(name) = part else {
            return Err(nix::Error::ENOENT);
        };
        // Not there, or a symlink to something that is not there.
        match nix::sys::stat::fstatat(&dir, *name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                let target = nix::fcntl::readlinkat(&dir, *name)?;
                let mut next = so_far.parent().unwrap_or(Path::new("/")).join(target);
                for rest in &parts[i + 1..] {
                    next.push(rest);
                }
                return Ok(Err(next));
            }
            Ok(_) => return Err(nix::Error::ENOENT),
            Err(nix::Error::ENOENT) => {}
            Err(e) => return Err(e),
        }
        if i + 1 == parts.len() && kind == MountPoint::File {
            let f = nix::fcntl::openat(
                &dir,
                *name,
                OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_WRONLY
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o644),
            )?;
            drop(f);
        } else {
            match nix::sys::stat::mkdirat(&dir, *name, Mode::from_bits_truncate(0o755)) {
                Ok(()) | Err(nix::Error::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        dir = openat2_in_root(root, &so_far, OFlag::O_PATH)?;
    }
    Ok(Ok(dir))
}

/// The path through which the kernel mounts on an O_PATH fd.
fn fd_path(fd: &OwnedFd) -> String {
    format!("/proc/self/fd/{}", fd.as_raw_fd())
}

fn mount_one(root: &OwnedFd, m: &oci_spec::runtime::Mount) -> Result<(), Failure> {
    let dest = m.destination().to_string_lossy().to_string();
    let typ = m.typ().clone().unwrap_or_default();
    let source = m.source().clone().unwrap_or_default();
    let (flags, data, readonly) = mount_flags(m.options().as_deref().unwrap_or_default());
    let is_bind = flags.contains(MsFlags::MS_BIND) || typ == "bind";
    let mount_point_err = |e: nix::Error| {
        fail(
            EXIT_ENGINE_ERROR,
            format!("failed to create mount point {dest}: {e}"),
        )
    };
    if is_bind {
        let meta = fs::metadata(&source).map_err(|e| {
            fail(
                EXIT_ENGINE_ERROR,
                format!("bind source {} for {dest}: {e}", source.display()),
            )
        })?;
        let kind = if meta.is_dir() {
            MountPoint::Dir
        } else {
            MountPoint::File
        };
        let target = open_mount_point(root, &dest, kind).map_err(mount_point_err)?;
        mount(
            Some(&source),
            fd_path(&target).as_str(),
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(|e| {
            fail(
                EXIT_ENGINE_ERROR,
                format!("failed to bind {} on {dest}: {e}", source.display()),
            )
        })?;
        let extra = flags & (MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV);
        if readonly || !extra.is_empty() {
            let ro = if readonly {
                MsFlags::MS_RDONLY
            } else {
                MsFlags::empty()
            };
            // Reopen: the old fd is the directory under the new mount.
            let mounted = open_mount_point(root, &dest, kind).map_err(mount_point_err)?;
            mount(
                None::<&str>,
                fd_path(&mounted).as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | ro | extra,
                None::<&str>,
            )
            .map_err(|e| {
                fail(
                    EXIT_ENGINE_ERROR,
                    format!("failed to make {dest} read-only: {e}"),
                )
            })?;
        }
        return Ok(());
    }
    let target = open_mount_point(root, &dest, MountPoint::Dir).map_err(mount_point_err)?;
    let target_path = fd_path(&target);
    let ro = if readonly {
        MsFlags::MS_RDONLY
    } else {
        MsFlags::empty()
    };
    let data = data.join(",");
    let result = mount(
        Some(&source),
        target_path.as_str(),
        Some(typ.as_str()),
        flags | ro,
        if data.is_empty() {
            None
        } else {
            Some(data.as_str())
        },
    );
    match result {
        Ok(()) => {}
        // sysfs cannot be mounted when sharing the host's network namespace
        // with other mounts on top; bind the host's read-only instead.
        Err(nix::Error::EPERM | nix::Error::EBUSY) if typ == "sysfs" => {
            mount(
                Some("/sys"),
                target_path.as_str(),
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .and_then(|_| {
                let mounted = open_mount_point(root, &dest, MountPoint::Dir)?;
                mount(
                    None::<&str>,
                    fd_path(&mounted).as_str(),
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                    None::<&str>,
                )
            })
            .map_err(|e| fail(EXIT_ENGINE_ERROR, format!("failed to mount /sys: {e}")))?;
        }
        Err(e) => {
            return Err(fail(
                EXIT_ENGINE_ERROR,
                format!("failed to mount {typ} on {dest}: {e}"),
            ))
        }
    }
    if dest == "/dev" {
        let dev = open_mount_point(root, &dest, MountPoint::Dir).map_err(mount_point_err)?;
        create_devices(&dev)?;
    }
    Ok(())
}

/// The OCI runtime's implicit devices and the /dev symlinks, created in the
/// freshly mounted /dev (`dev` is its fd).
fn create_devices(dev: &OwnedFd) -> Result<(), Failure> {
    let dev = nix::fcntl::openat(
        dev,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(engine("failed to open /dev"))?;
    let devices: [(&str, u64, u64); 6] = [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ];
    for (name, major, minor) in devices {
        nix::sys::stat::mknodat(
            &dev,
            name,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(major, minor),
        )
        .map_err(|e| {
            fail(
                EXIT_ENGINE_ERROR,
                format!("failed to create /dev/{name}: {e}"),
            )
        })?;
        // mknod is subject to the umask; set the mode exactly.
        let _ = nix::sys::stat::fchmodat(
            &dev,
            name,
            Mode::from_bits_truncate(0o666),
            nix::sys::stat::FchmodatFlags::NoFollowSymlink,
        );
    }
    for (link, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
    ] {
        nix::unistd::symlinkat(target, &dev, link).map_err(|e| {
            fail(
                EXIT_ENGINE_ERROR,
                format!("failed to link /dev/{link}: {e}"),
            )
        })?;
    }
    Ok(())
}

/// A `--device` node (`linux.devices` of the spec), created inside the
/// rootfs with the host node's type, numbers, mode and owner.
fn create_device_node(root: &OwnedFd, d: &oci_spec::runtime::LinuxDevice) -> Result<(), Failure> {
    use oci_spec::runtime::LinuxDeviceType;
    let path = d.path().to_string_lossy().to_string();
    let err = |what: &str, e: nix::Error| {
        fail(
            EXIT_ENGINE_ERROR,
            format!("failed to {what} device {path}: {e}"),
        )
    };
    let p = Path::new(&path);
    let (Some(parent), Some(name)) = (p.parent(), p.file_name()) else {
        return Err(fail(
            EXIT_ENGINE_ERROR,
            format!("invalid device path {path:?}"),
        ));
    };
    let dir = open_mount_point(root, &parent.to_string_lossy(), MountPoint::Dir)
        .map_err(|e| err("create the directory of", e))?;
    let dir = nix::fcntl::openat(
        &dir,
        ".",
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err("open the directory of", e))?;
    let kind = match d.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        _ => SFlag::S_IFCHR,
    };
    let mode = Mode::from_bits_truncate(d.file_mode().unwrap_or(0o666));
    // A file the image has there is replaced, as Docker does.
    let _ = nix::unistd::unlinkat(&dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir);
    nix::sys::stat::mknodat(
        &dir,
        name,
        kind,
        mode,
        makedev(d.major() as u64, d.minor() as u64),
    )
    .map_err(|e| err("create", e))?;
    let _ = nix::sys::stat::fchmodat(
        &dir,
        name,
        mode,
        nix::sys::stat::FchmodatFlags::NoFollowSymlink,
    );
    nix::unistd::fchownat(
        &dir,
        name,
        d.uid().map(Uid::from_raw),
        d.gid().map(Gid::from_raw),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(|e| err("set the owner of", e))?;
    Ok(())
}

fn mask_path(path: &str) -> Result<(), Failure> {
    let Ok(meta) = fs::metadata(path) else {
        return Ok(());
    };
    let result = if meta.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    result.map_err(|e| fail(EXIT_ENGINE_ERROR, format!("failed to mask {path}: {e}")))
}

fn readonly_path(path: &str) -> Result<(), Failure> {
    if fs::symlink_metadata(path).is_err() {
        return Ok(());
    }
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .and_then(|_| {
        mount(
            None::<&str>,
            path,
            None::<&str>,
            MsFlags::MS_BIND
                | MsFlags::MS_REMOUNT
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NOSUID
                | MsFlags::MS_NODEV
                | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
    })
    .map_err(|e| {
        fail(
            EXIT_ENGINE_ERROR,
            format!("failed to make {path} read-only: {e}"),
        )
    })
}

/// Resolves `user` (`name`, `uid`, `name:group`, `uid:gid`) against the
/// passwd and group files of a root filesystem (`etc/passwd` read through
/// `read`, so the caller decides how to find files in layers).
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32, Vec<u32>, String), String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let user_part = if user_part.is_empty() { "0" } else { user_part };
    let passwd_entries: Vec<Vec<&str>> = passwd
        .unwrap_or("")
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let group_entries: Vec<Vec<&str>> = group
        .unwrap_or("")
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 4)
        .collect();
    let by_name = passwd_entries.iter().find(|f| f[0] == user_part);
    let (uid, mut gid, name, home) = match (user_part.parse::<u32>(), by_name) {
        (_, Some(f)) => (
            f[2].parse::<u32>()
                .map_err(|_| format!("invalid uid in passwd entry for {user_part}"))?,
            f[3].parse::<u32>()
                .map_err(|_| format!("invalid gid in passwd entry for {user_part}"))?,
            f[0].to_string(),
            f[5].to_string(),
        ),
        (Ok(uid), None) => match passwd_entries.iter().find(|f| f[2] == user_part) {
            Some(f) => (
                uid,
                f[3].parse().unwrap_or(0),
                f[0].to_string(),
                f[5].to_string(),
            ),
            None => (uid, 0, String::new(), "/".to_string()),
        },
        (Err(_), None) => {
            return Err(format!(
                "unable to find user {user_part}: no matching entries in passwd file"
            ))
        }
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => group_entries
                .iter()
                .find(|f| f[0] == g)
                .and_then(|f| f[2].parse().ok())
                .ok_or_else(|| {
                    format!("unable to find group {g}: no matching entries in group file")
                })?,
        };
    }
    let mut extra = Vec::new();
    if group_part.is_none() && !name.is_empty() {
        for f in &group_entries {
            if f[3].split(',').any(|m| m == name) {
                if let Ok(g) = f[2].parse::<u32>() {
                    if g != gid && !extra.contains(&g) {
                        extra.push(g);
                    }
                }
            }
        }
    }
    Ok((uid, gid, extra, home))
}

/// Sets groups, gid and uid, keeping capabilities across the uid change.
pub(super) fn set_ids(uid: u32, gid: u32, groups: &[u32]) -> nix::Result<()> {
    let groups: Vec<Gid> = groups.iter().map(|g| Gid::from_raw(*g)).collect();
    nix::unistd::setgroups(&groups)?;
    nix::unistd::setresgid(Gid::from_raw(gid), Gid::from_raw(gid), Gid::from_raw(gid))?;
    nix::unistd::setresuid(Uid::from_raw(uid), Uid::from_raw(uid), Uid::from_raw(uid))
}

/// Helper for the sync pipe: the raw fd number (for logging).
#[allow(dead_code)]
pub(super) fn fd_number(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_opened_and_created_inside_the_root() {
        use std::os::unix::fs::MetadataExt;
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        let host = tmp.path().join("host");
        fs::create_dir_all(root.join("real")).unwrap();
        fs::create_dir_all(&host).unwrap();
        // Absolute and climbing symlinks, a dangling one naming a host path, a loop.
        symlink("/etc", root.join("abs")).unwrap();
        symlink("../../..", root.join("real/up")).unwrap();
        symlink(&host, root.join("dangling")).unwrap();
        symlink("/loop", root.join("loop")).unwrap();
        let root_fd = nix::fcntl::open(
            &root,
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .unwrap();
        let ino = |fd: &OwnedFd| nix::sys::stat::fstat(fd).unwrap().st_ino;
        let fd = open_mount_point(&root_fd, "/abs/hosts", MountPoint::File).unwrap();
        assert_eq!(
            ino(&fd),
            fs::metadata(root.join("etc/hosts")).unwrap().ino()
        );
        let fd = open_mount_point(&root_fd, "/real/up/x", MountPoint::Dir).unwrap();
        assert_eq!(ino(&fd), fs::metadata(root.join("x")).unwrap().ino());
        let fd = open_mount_point(&root_fd, "/dangling/sub", MountPoint::Dir).unwrap();
        let inside = root.join(host.strip_prefix("/").unwrap()).join("sub");
        assert_eq!(ino(&fd), fs::metadata(&inside).unwrap().ino());
        assert_eq!(
            fs::read_dir(&host).unwrap().count(),
            0,
            "nothing on the host"
        );
        assert!(open_mount_point(&root_fd, "/loop/x", MountPoint::Dir).is_err());
    }

    #[test]
    fn users_resolve_from_passwd_and_group() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\napp:x:1000:1000::/home/app:/bin/sh\n";
        let group = "root:x:0:\nnogroup:x:65534:\nwheel:x:10:app\napp:x:1000:\n";
        assert_eq!(
            resolve_user("app", Some(passwd), Some(group)).unwrap(),
            (1000, 1000, vec![10], "/home/app".to_string())
        );
        assert_eq!(
            resolve_user("nobody", Some(passwd), Some(group)).unwrap().0,
            65534
        );
        assert_eq!(
            resolve_user("1234:5", Some(passwd), Some(group)).unwrap(),
            (1234, 5, vec![], "/".to_string())
        );
        assert_eq!(
            resolve_user("app:nogroup", Some(passwd), Some(group))
                .unwrap()
                .1,
            65534
        );
        let err = resolve_user("ghost", Some(passwd), Some(group)).unwrap_err();
        assert!(err.contains("unable to find user ghost"), "{err}");
    }
}

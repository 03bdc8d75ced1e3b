//! Isolation: the only module of the worker allowed `unsafe` and `fork`.
//!
//! A container is started by a **shim**: the worker binary re-executed as
//! `flotilla-worker shim BUNDLE`, a fresh single-threaded process in its own
//! session. The shim creates the cgroups, clones the container's init into new
//! namespaces ([`init`]), reports the result to the daemon on its stdout (one
//! JSON line), then writes the container's output to its log, waits for it and
//! records the exit status in `exit.json`. Because the shim, not the daemon, is
//! the container's parent, `kill -9` of the daemon leaves containers running;
//! the restarted daemon finds their shims again from its state.
//!
//! `flotilla-worker exec-helper` ([`exec`]) joins a running container's
//! namespaces and cgroups to run `exec` processes, again from a fresh process.
//!
//! The container's configuration is an OCI runtime spec ([`spec`]) in the
//! bundle's `config.json`; the Flotilla-specific parts (overlay layers, log and
//! exit paths, stdin, `--init`) are in `shim.json`.
#![allow(unsafe_code)]

pub mod cgroups;
pub mod devices;
pub mod exec;
pub mod init;
pub mod seccomp;
mod seccomp_tables;
pub mod shim;
pub mod spec;

use std::ffi::CString;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::str::FromStr;

use nix::sys::signal::{SigHandler, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use cgroups::ContainerCgroup;

/// `$PATH` when the image sets none (Docker's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Flotilla-specific half of a bundle (`shim.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    /// Image layer directories, topmost first (overlayfs `lowerdir` order).
    pub lower_dirs: Vec<PathBuf>,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
    /// JSON-lines log of stdout/stderr (Docker's json-file format).
    pub log_path: PathBuf,
    /// Where the shim records how the container ended.
    pub exit_path: PathBuf,
    /// A FIFO the daemon writes the container's stdin into, if stdin is open.
    pub stdin_fifo: Option<PathBuf>,
    /// Keep a writer on the stdin FIFO so that stdin stays open while no
    /// client is attached (`-i` without "stdin once").
    pub hold_stdin_open: bool,
    /// Run a minimal init as PID 1 that reaps zombies and forwards signals.
    pub init: bool,
    pub cgroup: ContainerCgroup,
}

/// Why a container could not start (exec failed, bad user, mount error…).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartFailure {
    /// 125 engine error, 126 not executable, 127 not found.
    pub exit_code: i32,
    pub message: String,
}

/// The shim's one-line answer to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StartReport {
    /// Host PID of the container's init, when it started.
    pub pid: Option<i32>,
    pub failure: Option<StartFailure>,
    /// The container's terminal (`/dev/pts/N` on the host) with `-t`.
    #[serde(default)]
    pub tty_path: Option<String>,
}

/// How a container ended (`exit.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ExitRecord {
    pub exit_code: i64,
    pub oom_killed: bool,
    /// RFC 3339.
    pub finished_at: String,
    pub error: String,
}

/// Clones a child into new namespaces, fork-style (no new stack: the child
/// continues from here with a copy of the address space). Only call this from
/// a single-threaded process (the shim or the exec helper).
fn clone_into_namespaces(flags: libc::c_int) -> nix::Result<Option<Pid>> {
    // SAFETY: raw clone without CLONE_VM behaves like fork(2); the callers are
    // single-threaded, so no lock can be held by another thread at this point.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            0usize,
            0usize,
            0usize,
            0usize,
        )
    };
    match ret {
        -1 => Err(nix::Error::last()),
        0 => Ok(None),
        pid => Ok(Some(Pid::from_raw(pid as i32))),
    }
}

/// Sets the IFF_UP flag on `lo` in the current network namespace.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: plain socket + ioctl calls on a zeroed, correctly sized ifreq.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            ifr.ifr_name[i] = *b as libc::c_char;
        }
        let mut result = Ok(());
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) < 0 {
            result = Err(std::io::Error::last_os_error());
        } else {
            ifr.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr) < 0 {
                result = Err(std::io::Error::last_os_error());
            }
        }
        libc::close(fd);
        result
    }
}

/// Applies the spec's user and capabilities to the calling process: the
/// bounding set first, `no_new_privs`, then groups/gid/uid with capabilities
/// kept across the change, then the permitted, effective and inheritable sets.
fn drop_privileges(process: &oci_spec::runtime::Process) -> Result<(), String> {
    use caps::{CapSet, Capability as Cap};
    let wanted: caps::CapsHashSet = process
        .capabilities()
        .as_ref()
        .and_then(|c| c.bounding().as_ref())
        .map(|set| {
            set.iter()
                .filter_map(|c| Cap::from_str(&spec::capability_name(c)).ok())
                .collect()
        })
        .unwrap_or_default();
    for cap in caps::all() {
        if !wanted.contains(&cap) {
            caps::drop(None, CapSet::Bounding, cap).map_err(|e| format!("dropping {cap}: {e}"))?;
        }
    }
    if process.no_new_privileges() == Some(true) {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("no_new_privs: {e}"))?;
    }
    nix::sys::prctl::set_keepcaps(true).map_err(|e| format!("keepcaps: {e}"))?;
    let user = process.user();
    let groups: Vec<u32> = user.additional_gids().clone().unwrap_or_default();
    init::set_ids(user.uid(), user.gid(), &groups).map_err(|e| format!("setting uid/gid: {e}"))?;
    caps::clear(None, CapSet::Ambient).map_err(|e| format!("ambient: {e}"))?;
    // Effective must stay a subset of permitted at every step: shrink it first.
    caps::set(None, CapSet::Effective, &wanted).map_err(|e| format!("effective: {e}"))?;
    caps::set(None, CapSet::Permitted, &wanted).map_err(|e| format!("permitted: {e}"))?;
    caps::set(None, CapSet::Inheritable, &wanted).map_err(|e| format!("inheritable: {e}"))?;
    Ok(())
}

extern "C" fn forward_marker(_: libc::c_int) {}

/// `--init`: stay PID 1, run the command as a child, forward signals to it,
/// reap every zombie, and exit with the command's status. Only returns if the
/// fork failed (the caller then reports an engine error through exec).
///
/// `sync_fd` is the start-report pipe: the command's exec closes its copy;
/// the init closes its own right after the fork, so the shim sees the start.
fn run_as_init(exe: &CString, args: &[CString], env: &[CString], sync_fd: std::os::fd::RawFd) {
    let forwarded: Vec<Signal> = Signal::iterator()
        .filter(|s| !matches!(s, Signal::SIGKILL | Signal::SIGSTOP | Signal::SIGCHLD))
        .collect();
    // PID 1 only receives signals it has a handler for; a no-op handler makes
    // them deliverable, and blocking them lets sigwait collect them.
    for s in &forwarded {
        // SAFETY: installing a handler that does nothing is async-signal-safe.
        let _ = unsafe { nix::sys::signal::signal(*s, SigHandler::Handler(forward_marker)) };
    }
    let all = SigSet::all();
    let _ = all.thread_block();
    // SAFETY: this process is single-threaded (a clone of the shim).
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let _ = all.thread_unblock();
            let err = nix::unistd::execve(exe, args, env).unwrap_err();
            let name = args
                .first()
                .map(|a| a.to_string_lossy().to_string())
                .unwrap_or_default();
            let failure = init::exec_failure_message(&name, err);
            eprintln!("{}", failure.1);
            std::process::exit(failure.0);
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => {
            // SAFETY: the init owns no other handle to this fd; closing our copy
            // only ends our reference to the pipe.
            unsafe {
                libc::close(sync_fd);
            }
            let _ = nix::sys::prctl::set_name(c"init");
            loop {
                let Ok(sig) = all.wait() else { continue };
                if sig != Signal::SIGCHLD {
                    let _ = nix::sys::signal::kill(child, sig);
                    continue;
                }
                loop {
                    match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                        Ok(WaitStatus::Exited(pid, code)) if pid == child => {
                            std::process::exit(code)
                        }
                        Ok(WaitStatus::Signaled(pid, s, _)) if pid == child => {
                            std::process::exit(128 + s as i32)
                        }
                        Ok(WaitStatus::StillAlive) | Err(_) => break,
                        Ok(_) => continue,
                    }
                }
            }
        }
        Err(_) => {}
    }
}

/// Spawns `flotilla-worker shim SANDBOX-JSON` in its own session, stdin and
/// stdout piped (bundle in, reports out); stderr is the daemon's.
pub fn spawn_shim(request: &shim::SandboxRequest) -> std::io::Result<tokio::process::Child> {
    let json = serde_json::to_string(request).map_err(std::io::Error::other)?;
    let mut cmd = tokio::process::Command::new(self_exe());
    cmd.arg("shim")
        .arg(json)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(false);
    // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid().map_err(std::io::Error::from)?;
            Ok(())
        });
    }
    cmd.spawn()
}

/// A process's start time (field 22 of /proc/PID/stat), to tell a PID that was
/// reused from the process we started.
pub fn process_start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after_comm = &stat[stat.rfind(')')? + 2..];
    after_comm.split(' ').nth(19)?.parse().ok()
}

/// A pidfd for `pid`: readable once the process has exited. Works for
/// processes that are not our children (shims adopted after a restart).
pub fn pidfd_open(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Makes a FIFO at `path` (mode 0600) unless one exists.
pub fn make_fifo(path: &std::path::Path) -> std::io::Result<()> {
    match nix::unistd::mkfifo(path, nix::sys::stat::Mode::from_bits_truncate(0o600)) {
        Ok(()) | Err(nix::Error::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Waits until the process behind `pidfd` has exited.
pub async fn wait_pidfd(pidfd: std::os::fd::OwnedFd) -> std::io::Result<()> {
    // SAFETY: we own the fd and keep it open for as long as it is registered
    // (the AsyncFd owns it and deregisters before closing it).
    let fd = unsafe { tokio::io::unix::AsyncFd::register(pidfd) }.map_err(std::io::Error::from)?;
    let _ready = fd.readable().await?;
    Ok(())
}

/// Restores default signal dispositions and an empty signal mask, so the
/// container's process does not inherit the Rust runtime's ignored SIGPIPE.
fn reset_signals() {
    for s in Signal::iterator() {
        if matches!(s, Signal::SIGKILL | Signal::SIGSTOP) {
            continue;
        }
        // SAFETY: restoring the default disposition is always sound.
        let _ = unsafe { nix::sys::signal::signal(s, SigHandler::SigDfl) };
    }
    let _ = SigSet::all().thread_unblock();
}

/// The running binary, for re-executing it as a shim or helper. `/proc/self/exe`
/// still works when the file was replaced on disk (an upgrade in place).
pub fn self_exe() -> PathBuf {
    PathBuf::from("/proc/self/exe")
}

/// Makes the terminal on stdin the calling process's controlling terminal
/// (after `setsid`), as a shell with job control expects.
fn take_controlling_terminal() -> std::io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory of ours.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the window size of the terminal at `path` (a `/dev/pts/N`).
pub fn set_winsize(path: &std::path::Path, rows: u16, cols: u16) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK)
        .open(path)?;
    set_winsize_fd(file.as_raw_fd(), rows, cols)
}

/// Sets the window size of a terminal given by fd.
pub fn set_winsize_fd(fd: std::os::fd::RawFd, rows: u16, cols: u16) -> std::io::Result<()> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct we own for the call's duration.
    if unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Allocates a terminal from the `/dev/ptmx` of the current mount namespace
/// (the container's own devpts, so `tty` and `ttyname` work inside), makes
/// its slave side stdin/stdout/stderr and the controlling terminal, and
/// returns the master side and the slave's name (`/dev/pts/N`).
fn open_console() -> nix::Result<(std::os::fd::OwnedFd, String)> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)?;
    nix::pty::grantpt(&master)?;
    nix::pty::unlockpt(&master)?;
    let name = nix::pty::ptsname_r(&master)?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )?;
    nix::unistd::dup2_stdin(&slave)?;
    nix::unistd::dup2_stdout(&slave)?;
    nix::unistd::dup2_stderr(&slave)?;
    drop(slave);
    take_controlling_terminal()
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    Ok((master.into(), name))
}

/// Sends `fd` and a short text over a unix socket (SCM_RIGHTS).
fn send_fd(sock: &std::os::fd::OwnedFd, fd: &std::os::fd::OwnedFd, text: &str) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fds = [fd.as_raw_fd()];
    let iov = [std::io::IoSlice::new(text.as_bytes())];
    sendmsg::<()>(
        sock.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives what [`send_fd`] sent; `None` when the peer closed without sending.
fn recv_fd(sock: &std::os::fd::OwnedFd) -> Option<(std::os::fd::OwnedFd, String)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd};
    let mut buf = [0u8; 256];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let (n, fd) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .ok()?;
        let fd = msg.cmsgs().ok()?.find_map(|c| match c {
            ControlMessageOwned::ScmRights(fds) => fds.first().copied(),
            _ => None,
        })?;
        (msg.bytes, fd)
    };
    // SAFETY: the kernel installed this fd in our table for us (SCM_RIGHTS).
    let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    Some((owned, String::from_utf8_lossy(&buf[..n]).into_owned()))
}

//! `flotilla-worker exec-helper`: runs a process inside a running container.
//! The daemon starts it with the request as JSON in its first argument and
//! its stdio piped; the helper joins the container's cgroups and namespaces,
//! forks (a process only enters a PID namespace at fork), and the child takes
//! the container's credentials and execs. The helper exits with the process's
//! status, or 126/127 with a message on stderr when the exec failed.
//!
//! With a terminal (`exec -t`) the child allocates it from the container's
//! devpts and passes the master side back; the helper then relays: its stdout
//! carries the terminal's output, and its stdin carries frames from the
//! daemon — `[0][len: u32 BE][bytes]` for input, `[1][rows: u16][cols: u16]`
//! for a resize.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsFd;

use nix::sched::CloneFlags;
use nix::sys::wait::{waitpid, WaitStatus};
use serde::{Deserialize, Serialize};

use super::cgroups::ContainerCgroup;

/// What to run, and where.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecRequest {
    /// Host PID of the container's init.
    pub pid: i32,
    pub cgroup: ContainerCgroup,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub capabilities: Vec<String>,
    /// Stdio is a terminal: make it the controlling terminal of a new session.
    #[serde(default)]
    pub tty: bool,
    /// The container's resolved seccomp profile (`None`: unconfined).
    #[serde(default)]
    pub seccomp: Option<super::seccomp::Profile>,
}

/// Entry point of the helper. Returns its exit code.
pub fn main(request_json: &str) -> i32 {
    let req: ExecRequest = match serde_json::from_str(request_json) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("flotilla exec: invalid request: {e}");
            return 125;
        }
    };
    match run(&req) {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("{message}");
            code
        }
    }
}

fn run(req: &ExecRequest) -> Result<i32, (i32, String)> {
    let e125 = |what: &str, e: &dyn std::fmt::Display| (125, format!("{what}: {e}"));
    // The child enters the container's PID namespace as the worker binary
    // with the daemon's pipes: not dumpable, so the container's processes
    // cannot open its /proc/PID/exe, fd/ or mem before it execs (the runc
    // CVE-2019-5736 class). Inherited by the fork; execve resets it.
    nix::sys::prctl::set_dumpable(false).map_err(|e| e125("PR_SET_DUMPABLE", &e))?;
    let seccomp = req
        .seccomp
        .as_ref()
        .map(super::seccomp::compile)
        .transpose()
        .map_err(|e| e125("seccomp", &e))?;
    // Open every namespace first: after entering the mount namespace,
    // /proc/PID would name a process of the container's PID namespace.
    let kinds = [
        ("ipc", CloneFlags::CLONE_NEWIPC),
        ("uts", CloneFlags::CLONE_NEWUTS),
        ("net", CloneFlags::CLONE_NEWNET),
        ("pid", CloneFlags::CLONE_NEWPID),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ];
    let mut namespaces = Vec::new();
    for (name, flag) in kinds {
        let theirs = format!("/proc/{}/ns/{name}", req.pid);
        let same = std::fs::read_link(&theirs).ok()
            == std::fs::read_link(format!("/proc/self/ns/{name}")).ok();
        if same {
            continue;
        }
        let file = File::open(&theirs)
            .map_err(|e| e125("the container is not running (its namespaces are gone)", &e))?;
        namespaces.push((file, flag));
    }
    req.cgroup
        .join_self()
        .map_err(|e| e125("failed to join the container's cgroups", &e))?;
    for (file, flag) in &namespaces {
        nix::sched::setns(file.as_fd(), *flag)
            .map_err(|e| e125("failed to enter a namespace", &e))?;
    }
    drop(namespaces);

    let (console_parent, console_child) = if req.tty {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| e125("socketpair", &e))?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    // SAFETY: the helper is a fresh single-threaded process.
    match unsafe { nix::unistd::fork() }.map_err(|e| e125("fork", &e))? {
        nix::unistd::ForkResult::Child => {
            drop(console_parent);
            let (code, message) = exec_child(req, console_child, seccomp.as_ref());
            eprintln!("{message}");
            std::process::exit(code);
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(console_child);
            if let Some((master, _)) = console_parent.as_ref().and_then(super::recv_fd) {
                relay_terminal(master);
            }
            wait_child(child)
        }
    }
}

/// Copies the terminal's output to stdout, and stdin frames into it. One
/// poll loop, no threads: a process that has entered another PID namespace
/// cannot create threads (clone with CLONE_THREAD fails with EINVAL).
fn relay_terminal(master: std::os::fd::OwnedFd) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::io::{Read, Write};
    use std::os::fd::{AsFd, AsRawFd};
    let stdin = std::io::stdin();
    let mut term = File::from(master);
    let mut out = std::io::stdout().lock();
    let mut pending: Vec<u8> = Vec::new();
    let mut stdin_open = true;
    let mut buf = [0u8; 32 * 1024];
    loop {
        let stdin_fd = stdin.as_fd();
        let mut fds = vec![PollFd::new(term.as_fd(), PollFlags::POLLIN)];
        if stdin_open {
            fds.push(PollFd::new(stdin_fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => return,
        }
        let term_ready = fds[0].revents().unwrap_or(PollFlags::empty());
        let stdin_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .unwrap_or(PollFlags::empty());
        drop(fds);
        if term_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR) {
            // Ends with EIO once every process holding the terminal has exited.
            match term.read(&mut buf) {
                Ok(n) if n > 0 => {
                    if out.write_all(&buf[..n]).and_then(|_| out.flush()).is_err() {
                        return;
                    }
                }
                _ => return,
            }
        }
        if stdin_ready.intersects(PollFlags::POLLIN | PollFlags::POLLHUP) {
            match stdin.lock().read(&mut buf) {
                Ok(n) if n > 0 => pending.extend_from_slice(&buf[..n]),
                _ => stdin_open = false,
            }
            // Apply every complete frame.
            loop {
                match pending.first() {
                    Some(0) if pending.len() >= 5 => {
                        let len =
                            u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]])
                                as usize;
                        if pending.len() < 5 + len {
                            break;
                        }
                        let _ = term.write_all(&pending[5..5 + len]);
                        pending.drain(..5 + len);
                    }
                    Some(1) if pending.len() >= 5 => {
                        let rows = u16::from_be_bytes([pending[1], pending[2]]);
                        let cols = u16::from_be_bytes([pending[3], pending[4]]);
                        let _ = super::set_winsize_fd(term.as_raw_fd(), rows, cols);
                        pending.drain(..5);
                    }
                    Some(0 | 1) | None => break,
                    Some(_) => {
                        pending.clear();
                        break;
                    }
                }
            }
        }
    }
}

fn wait_child(child: nix::unistd::Pid) -> Result<i32, (i32, String)> {
    loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => return Ok(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => return Ok(128 + sig as i32),
            Ok(_) | Err(nix::Error::EINTR) => continue,
            Err(e) => return Err((125, format!("wait: {e}"))),
        }
    }
}

fn exec_child(
    req: &ExecRequest,
    console: Option<std::os::fd::OwnedFd>,
    seccomp: Option<&super::seccomp::Compiled>,
) -> (i32, String) {
    use oci_spec::runtime::{Capability, LinuxCapabilitiesBuilder, ProcessBuilder, UserBuilder};
    if let Some(sock) = console {
        let _ = nix::unistd::setsid();
        match super::open_console() {
            Ok((master, name)) => {
                if let Err(e) = super::send_fd(&sock, &master, &name) {
                    return (125, format!("failed to hand over the terminal: {e}"));
                }
            }
            Err(e) => return (125, format!("failed to allocate a terminal: {e}")),
        }
    }
    if let Err(e) = nix::unistd::chdir(req.cwd.as_str()) {
        return (
            126,
            format!("failed to change to the working directory {}: {e}", req.cwd),
        );
    }
    let Some(arg0) = req.args.first() else {
        return (125, "no command given to exec".into());
    };
    let exe = match super::init::find_executable(arg0, &req.env) {
        Ok(p) => p,
        Err(f) => return super::init::failure_parts(f),
    };
    let caps: std::collections::HashSet<Capability> = req
        .capabilities
        .iter()
        .filter_map(|c| super::spec::oci_capability(c))
        .collect();
    let process = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .build()
        .ok()
        .and_then(|c| {
            let user = UserBuilder::default()
                .uid(req.uid)
                .gid(req.gid)
                .additional_gids(req.additional_gids.clone())
                .build()
                .ok()?;
            ProcessBuilder::default()
                .capabilities(c)
                .user(user)
                .no_new_privileges(true)
                .cwd(req.cwd.clone())
                .build()
                .ok()
        });
    let Some(process) = process else {
        return (125, "failed to build the process credentials".into());
    };
    if let Err(e) = super::drop_privileges(&process) {
        return (125, format!("failed to set the process credentials: {e}"));
    }
    let to_c = |s: &String| CString::new(s.as_bytes()).unwrap_or_default();
    let c_exe = CString::new(exe.as_os_str().as_encoded_bytes()).unwrap_or_default();
    let args: Vec<CString> = req.args.iter().map(to_c).collect();
    let env: Vec<CString> = req.env.iter().map(to_c).collect();
    super::reset_signals();
    if let Some(filter) = seccomp {
        if let Err(e) = super::seccomp::install(filter) {
            return (125, format!("failed to install the seccomp filter: {e}"));
        }
    }
    let err = nix::unistd::execve(&c_exe, &args, &env).unwrap_err();
    super::init::exec_failure_message(arg0, err)
}

//! The shim: `flotilla-worker shim SANDBOX-JSON`. One per container; it is the
//! container init's parent, outlives the daemon, writes the container's output
//! to its log and records how it ended.
//!
//! A shim works in two phases, so that the slow kernel work happens before a
//! container is asked for (the daemon keeps a few shims ready, see
//! `engine::pool`):
//!
//! 1. **Sandbox**: create the cgroup directories, clone the child into new
//!    PID, mount, IPC (and network + UTS) namespaces, let the child join the
//!    cgroups and bring up loopback, then report `SandboxReady` on stdout.
//!    Joining a cgroup and creating a network namespace both wait for RCU
//!    grace periods (milliseconds each); here they are off the start path.
//! 2. **Go**: read a bundle directory from stdin, apply the resource limits,
//!    hand the bundle to the child (which mounts the rootfs and execs), report
//!    `StartReport`, then copy output into the log until the container exits
//!    and write `exit.json`. If stdin closes before a bundle arrives (the
//!    daemon stopped), the sandbox is torn down.
//!
//! The shim stays single-threaded until the container has been started; only
//! then does it start the threads that copy output into the log.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::sys::signal::Signal;
use nix::sys::wait::{waitpid, WaitStatus};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use super::cgroups::{ContainerCgroup, Limits};
use super::{init, ExitRecord, ShimConfig, StartFailure, StartReport};

/// Stream names as Docker's json-file log has them.
const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";

/// What a sandbox is made of (the shim's command-line argument, as JSON).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SandboxRequest {
    /// The cgroups the container will live in.
    pub cgroup: ContainerCgroup,
    /// New network and UTS namespaces (`--network none`), or the host's.
    pub own_network: bool,
    /// Share the network namespace of this process (`--network container:NAME`);
    /// the UTS namespace is still the container's own.
    #[serde(default)]
    pub join_network: Option<i32>,
}

/// The shim's first line: the sandbox is ready, or why not.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SandboxReady {
    /// Host PID of the waiting child (the container's future init).
    pub pid: Option<i32>,
    pub error: Option<String>,
}

/// One entry of the container log (Docker's json-file format).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    pub log: String,
    pub stream: String,
    pub time: String,
}

/// Appends entries to the log file; shared by the stdout and stderr copiers.
struct LogWriter {
    file: File,
}

impl LogWriter {
    fn write(&mut self, stream: &str, data: &[u8]) {
        let entry = LogEntry {
            log: String::from_utf8_lossy(data).into_owned(),
            stream: stream.to_string(),
            time: now(),
        };
        if let Ok(mut line) = serde_json::to_vec(&entry) {
            line.push(b'\n');
            // A full disk loses log lines, never the container.
            let _ = self.file.write_all(&line);
        }
    }
}

fn send_line<T: Serialize>(out: &mut File, value: &T) {
    let _ = writeln!(out, "{}", serde_json::to_string(value).unwrap_or_default());
    let _ = out.flush();
}

fn write_exit(path: &Path, record: &ExitRecord) {
    let tmp = path.with_extension("tmp");
    if let Ok(text) = serde_json::to_vec(record) {
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, path);
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_nanos(SystemTime::now()).to_string()
}

fn engine_err(what: &str) -> impl FnOnce(nix::Error) -> StartFailure + '_ {
    move |e| StartFailure {
        exit_code: 125,
        message: format!("{what}: {e}"),
    }
}

/// Reads a bundle's `config.json` and `shim.json`.
fn load_bundle(bundle: &Path) -> Result<(Spec, ShimConfig), StartFailure> {
    let spec = Spec::load(bundle.join("config.json")).map_err(|e| StartFailure {
        exit_code: 125,
        message: format!("failed to read {}/config.json: {e}", bundle.display()),
    })?;
    let cfg: ShimConfig = fs::read(bundle.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| StartFailure {
            exit_code: 125,
            message: format!("failed to read {}/shim.json: {e}", bundle.display()),
        })?;
    Ok((spec, cfg))
}

/// The file ends the child holds while it waits for a bundle.
struct ChildEnds {
    out_w: OwnedFd,
    err_w: OwnedFd,
    sync_w: OwnedFd,
    go_r: OwnedFd,
    console: OwnedFd,
}

/// The parent's ends.
struct ParentEnds {
    out_r: OwnedFd,
    err_r: OwnedFd,
    sync_r: OwnedFd,
    go_w: OwnedFd,
    console: OwnedFd,
    /// The child's mount namespace, held so that the container's exit does
    /// not have to tear it down (an RCU grace period inside `exit()`): the
    /// shim records the exit status first and releases the namespace after.
    mount_ns: Option<File>,
}

/// Entry point of the shim process. Returns the shim's own exit code.
pub fn main(request_json: &str) -> i32 {
    // stdout is the pipe to the daemon; take it so nothing else writes there.
    let mut daemon_pipe = match nix::unistd::dup(std::io::stdout()) {
        Ok(fd) => File::from(fd),
        Err(_) => return 1,
    };
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let not_ready = |out: &mut File, error: String| {
        send_line(
            out,
            &SandboxReady {
                pid: None,
                error: Some(error),
            },
        );
        1
    };
    let req: SandboxRequest = match serde_json::from_str(request_json) {
        Ok(r) => r,
        Err(e) => return not_ready(&mut daemon_pipe, format!("invalid sandbox request: {e}")),
    };
    let (pid, ends) = match prepare(&req) {
        Ok(x) => x,
        Err(f) => {
            let _ = req.cgroup.remove();
            return not_ready(&mut daemon_pipe, f.message);
        }
    };
    send_line(
        &mut daemon_pipe,
        &SandboxReady {
            pid: Some(pid.as_raw()),
            error: None,
        },
    );

    // Phase 2: wait for a bundle.
    let mut line = String::new();
    let got = std::io::stdin().lock().read_line(&mut line).unwrap_or(0);
    let bundle = PathBuf::from(line.trim());
    if got == 0 || line.trim().is_empty() {
        // The daemon went away or dropped the sandbox: tear it down.
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        let _ = req.cgroup.remove();
        return 0;
    }
    let fail_start = |out: &mut File, f: StartFailure, exit_path: Option<&Path>| {
        let _ = nix::sys::signal::kill(pid, Signal::SIGKILL);
        let _ = waitpid(pid, None);
        let _ = req.cgroup.remove();
        if let Some(p) = exit_path {
            write_exit(
                p,
                &ExitRecord {
                    exit_code: f.exit_code as i64,
                    oom_killed: false,
                    finished_at: now(),
                    error: f.message.clone(),
                },
            );
        }
        send_line(
            out,
            &StartReport {
                pid: None,
                tty_path: None,
                failure: Some(f),
            },
        );
        1
    };
    let (spec, cfg) = match load_bundle(&bundle) {
        Ok(x) => x,
        Err(f) => return fail_start(&mut daemon_pipe, f, None),
    };
    let _ = fs::remove_file(&cfg.exit_path);
    match run(&spec, &cfg, &req, pid, ends, &bundle, &mut daemon_pipe) {
        Ok(()) => 0,
        Err(f) => fail_start(&mut daemon_pipe, f, Some(&cfg.exit_path)),
    }
}

/// Phase 1: cgroups, pipes, and the child in its namespaces, waiting.
fn prepare(req: &SandboxRequest) -> Result<(nix::unistd::Pid, ParentEnds), StartFailure> {
    req.cgroup
        .create(&Limits::default())
        .map_err(|e| StartFailure {
            exit_code: 125,
            message: e.to_string(),
        })?;
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    let (go_r, go_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    // With a terminal, the container's init sends the master side of the
    // terminal it allocates over this socket.
    let (console_parent, console_child) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )
    .map_err(engine_err("socketpair"))?;
    let mut flags = libc::CLONE_NEWPID | libc::CLONE_NEWNS | libc::CLONE_NEWIPC;
    if req.own_network {
        flags |= libc::CLONE_NEWNET | libc::CLONE_NEWUTS;
    }
    if req.join_network.is_some() {
        flags |= libc::CLONE_NEWUTS;
    }
    let child = super::clone_into_namespaces(flags)
        .map_err(engine_err("failed to create the container's namespaces"))?;
    let parent = ParentEnds {
        out_r,
        err_r,
        sync_r,
        go_w,
        console: console_parent,
        mount_ns: None,
    };
    let ends = ChildEnds {
        out_w,
        err_w,
        sync_w,
        go_r,
        console: console_child,
    };
    let Some(pid) = child else {
        drop(parent);
        child_main(req, ends);
    };
    drop(ends);
    let mut parent = parent;
    parent.mount_ns = File::open(format!("/proc/{}/ns/mnt", pid.as_raw())).ok();
    Ok((pid, parent))
}

/// The child: join the cgroups, wait for the bundle, then become the container.
fn child_main(req: &SandboxRequest, ends: ChildEnds) -> ! {
    let report = |sync: OwnedFd, code: i32, message: String| -> ! {
        let mut f = File::from(sync);
        let _ = writeln!(
            f,
            "{}",
            serde_json::to_string(&StartFailure {
                exit_code: code,
                message
            })
            .unwrap_or_default()
        );
        std::process::exit(code);
    };
    // If the shim dies (killed by hand, OOM), the container must not live on
    // unwatched: it is killed with it.
    let _ = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL);
    // Until it execs the container's command this process is the worker
    // binary holding the daemon's pipes: not dumpable, so that nothing in the
    // container can open its /proc/PID/exe, fd/ or mem (the runc
    // CVE-2019-5736 class). execve makes the new image dumpable again.
    let _ = nix::sys::prctl::set_dumpable(false);
    let _ = nix::unistd::dup2_stdout(&ends.out_w);
    let _ = nix::unistd::dup2_stderr(&ends.err_w);
    if let Ok(null) = File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(&null);
    }
    drop((ends.out_w, ends.err_w));
    if let Err(e) = req.cgroup.join_self() {
        report(
            ends.sync_w,
            125,
            format!("failed to join the container's cgroups: {e}"),
        );
    }
    if let Some(pid) = req.join_network {
        use std::os::fd::AsFd;
        let joined = File::open(format!("/proc/{pid}/ns/net"))
            .map_err(|e| e.to_string())
            .and_then(|f| {
                nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = joined {
            report(
                ends.sync_w,
                125,
                format!("failed to join the network of process {pid}: {e}"),
            );
        }
    }
    if req.own_network {
        if let Err(e) = super::loopback_up() {
            report(
                ends.sync_w,
                125,
                format!("failed to bring up the loopback interface: {e}"),
            );
        }
    }
    let mut bundle = String::new();
    let _ = File::from(ends.go_r).read_to_string(&mut bundle);
    if bundle.trim().is_empty() {
        std::process::exit(0);
    }
    let (spec, cfg) = match load_bundle(Path::new(bundle.trim())) {
        Ok(x) => x,
        Err(f) => report(ends.sync_w, f.exit_code, f.message),
    };
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    if let (Some(fifo), false) = (&cfg.stdin_fifo, terminal) {
        // The daemon holds the FIFO open for writing, so this does not block.
        match File::open(fifo) {
            Ok(f) => {
                let _ = nix::unistd::dup2_stdin(&f);
            }
            Err(e) => report(
                ends.sync_w,
                125,
                format!("failed to open the container's stdin: {e}"),
            ),
        }
    }
    let console = terminal.then_some(ends.console);
    init::container_main(&spec, &cfg, ends.sync_w, console);
}

/// Copies the container's output into the log until every writer is gone
/// (the container's processes all ended), and, with a terminal, stdin from the
/// FIFO into it. One poll loop: the shim stays single-threaded, so its exit
/// never waits on the cgroup thread-group lock that a concurrent sandbox
/// preparation may hold for a whole RCU grace period.
fn pump_output(
    out_r: OwnedFd,
    err_r: Option<OwnedFd>,
    fifo: Option<File>,
    log: &mut Option<LogWriter>,
) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;
    let mut sources: Vec<(File, &str)> = std::iter::once((File::from(out_r), STDOUT))
        .chain(err_r.map(|fd| (File::from(fd), STDERR)))
        .collect();
    let mut fifo = fifo;
    let mut buf = vec![0u8; 32 * 1024];
    while !sources.is_empty() {
        let mut fds: Vec<PollFd> = sources
            .iter()
            .map(|(f, _)| PollFd::new(f.as_fd(), PollFlags::POLLIN))
            .collect();
        if let Some(f) = &fifo {
            fds.push(PollFd::new(f.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::Error::EINTR) => continue,
            Err(_) => break,
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| {
                f.revents().is_some_and(|r| {
                    r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
                })
            })
            .collect();
        drop(fds);
        if fifo.is_some() && ready.get(sources.len()).copied().unwrap_or(false) {
            let n = fifo.as_mut().map_or(0, |f| f.read(&mut buf).unwrap_or(0));
            if n == 0 {
                fifo = None;
            } else if let Some((term, _)) = sources.first_mut() {
                let _ = term.write_all(&buf[..n]);
            }
        }
        let mut closed = Vec::new();
        for (i, (src, stream)) in sources.iter_mut().enumerate() {
            if !ready[i] {
                continue;
            }
            match src.read(&mut buf) {
                Ok(0) => closed.push(i),
                Ok(n) => {
                    if let Some(log) = log.as_mut() {
                        log.write(stream, &buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // A terminal's master side reports EIO once its last user is gone.
                Err(_) => closed.push(i),
            }
        }
        for i in closed.into_iter().rev() {
            sources.remove(i);
        }
    }
}

/// Phase 2: limits, go, report, then log output until the container exits.
fn run(
    spec: &Spec,
    cfg: &ShimConfig,
    req: &SandboxRequest,
    pid: nix::unistd::Pid,
    ends: ParentEnds,
    bundle: &Path,
    daemon_pipe: &mut File,
) -> Result<(), StartFailure> {
    req.cgroup
        .apply(&super::spec::limits_of(spec))
        .and_then(|_| {
            req.cgroup
                .allow_devices(&super::spec::device_rules_of(spec))
        })
        .map_err(|e| StartFailure {
            exit_code: 125,
            message: e.to_string(),
        })?;
    let ends_mount_ns = ends.mount_ns;
    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    let fifo_reader = match (&cfg.stdin_fifo, terminal) {
        (Some(fifo), true) => Some(File::open(fifo).map_err(|e| StartFailure {
            exit_code: 125,
            message: format!("failed to open the container's stdin: {e}"),
        })?),
        _ => None,
    };
    let _stdin_holder = match (&cfg.stdin_fifo, cfg.hold_stdin_open) {
        (Some(fifo), true) => OpenOptions::new().write(true).open(fifo).ok(),
        _ => None,
    };
    {
        let mut go = File::from(ends.go_w);
        go.write_all(bundle.as_os_str().as_encoded_bytes())
            .map_err(|e| StartFailure {
                exit_code: 125,
                message: format!("failed to hand the bundle to the container: {e}"),
            })?;
    }
    // With a terminal, the output is read from its master side instead.
    let console = if terminal {
        super::recv_fd(&ends.console)
    } else {
        None
    };
    drop(ends.console);
    let (out_r, err_r, tty_path) = match console {
        Some((master, name)) => (master, None, Some(name)),
        None => (ends.out_r, Some(ends.err_r), None),
    };

    // The sync pipe closes on a successful exec; anything written is a failure.
    let mut sync_text = String::new();
    let _ = File::from(ends.sync_r).read_to_string(&mut sync_text);
    if !sync_text.trim().is_empty() {
        let _ = waitpid(pid, None);
        let failure =
            serde_json::from_str::<StartFailure>(sync_text.trim()).unwrap_or(StartFailure {
                exit_code: 125,
                message: sync_text.trim().to_string(),
            });
        return Err(failure);
    }
    send_line(
        daemon_pipe,
        &StartReport {
            pid: Some(pid.as_raw()),
            failure: None,
            tty_path,
        },
    );

    let mut log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log_path)
        .map(|file| LogWriter { file })
        .ok();
    pump_output(out_r, err_r, fifo_reader, &mut log);
    let exit_code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code as i64,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i64,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break 255,
        }
    };
    let oom_killed = req.cgroup.oom_killed();
    write_exit(
        &cfg.exit_path,
        &ExitRecord {
            exit_code,
            oom_killed,
            finished_at: now(),
            error: String::new(),
        },
    );
    // End of file on the report pipe tells the daemon the exit is recorded;
    // the slow teardown (mount namespace, cgroups) happens after.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        *daemon_pipe = null;
    }
    drop(ends_mount_ns);
    let _ = req.cgroup.remove();
    Ok(())
}

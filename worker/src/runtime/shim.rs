//! The shim: `flotilla-worker shim BUNDLE`. One per running container; it is
//! the container init's parent, outlives the daemon, writes the container's
//! output to its log and records how it ended.
//!
//! It stays single-threaded until the container is cloned; only then does it
//! start the threads that copy output into the log.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use nix::fcntl::OFlag;
use nix::sys::wait::{waitpid, WaitStatus};
use oci_spec::runtime::{LinuxNamespaceType, Spec};

use super::{init, ExitRecord, ShimConfig, StartFailure, StartReport};

/// Stream names as Docker's json-file log has them.
const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";

/// One entry of the container log (Docker's json-file format).
#[derive(serde::Serialize, serde::Deserialize, Debug, Clone, PartialEq, Eq)]
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
            time: humantime::format_rfc3339_nanos(SystemTime::now()).to_string(),
        };
        if let Ok(mut line) = serde_json::to_vec(&entry) {
            line.push(b'\n');
            // A full disk loses log lines, never the container.
            let _ = self.file.write_all(&line);
        }
    }
}

fn report(out: &mut File, r: &StartReport) {
    let _ = writeln!(out, "{}", serde_json::to_string(r).unwrap_or_default());
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

/// Entry point of the shim process. Returns the shim's own exit code.
pub fn main(bundle: &Path) -> i32 {
    // stdout is the pipe to the daemon; take it so nothing else writes there.
    let mut daemon_pipe = match nix::unistd::dup(std::io::stdout()) {
        Ok(fd) => File::from(fd),
        Err(_) => return 1,
    };
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2_stdout(&null);
    }
    let fail = |out: &mut File, code: i32, message: String, exit_path: Option<&Path>| {
        if let Some(p) = exit_path {
            write_exit(
                p,
                &ExitRecord {
                    exit_code: code as i64,
                    oom_killed: false,
                    finished_at: now(),
                    error: message.clone(),
                },
            );
        }
        report(
            out,
            &StartReport {
                pid: None,
                tty_path: None,
                failure: Some(StartFailure {
                    exit_code: code,
                    message,
                }),
            },
        );
        1
    };
    let spec = match Spec::load(bundle.join("config.json")) {
        Ok(s) => s,
        Err(e) => {
            return fail(
                &mut daemon_pipe,
                125,
                format!("failed to read config.json: {e}"),
                None,
            )
        }
    };
    let cfg: ShimConfig = match fs::read(bundle.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            return fail(
                &mut daemon_pipe,
                125,
                format!("failed to read shim.json: {e}"),
                None,
            )
        }
    };
    let exit_path = cfg.exit_path.clone();
    let _ = fs::remove_file(&exit_path);
    match run(&spec, &cfg, &mut daemon_pipe) {
        Ok(()) => 0,
        Err(f) => {
            let _ = cfg.cgroup.remove();
            fail(&mut daemon_pipe, f.exit_code, f.message, Some(&exit_path))
        }
    }
}

fn engine_err(what: &str) -> impl FnOnce(nix::Error) -> StartFailure + '_ {
    move |e| StartFailure {
        exit_code: 125,
        message: format!("{what}: {e}"),
    }
}

fn run(spec: &Spec, cfg: &ShimConfig, daemon_pipe: &mut File) -> Result<(), StartFailure> {
    cfg.cgroup
        .create(&super::spec::limits_of(spec))
        .map_err(|e| StartFailure {
            exit_code: 125,
            message: e.to_string(),
        })?;

    let terminal = spec.process().as_ref().and_then(|p| p.terminal()) == Some(true);
    // Output: two pipes; or, with a terminal, a socket over which the
    // container's init sends the master side of the terminal it allocates.
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    let (console_parent, console_child) = if terminal {
        let (a, b) = nix::sys::socket::socketpair(
            nix::sys::socket::AddressFamily::Unix,
            nix::sys::socket::SockType::Stream,
            None,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
        )
        .map_err(engine_err("socketpair"))?;
        (Some(a), Some(b))
    } else {
        (None, None)
    };
    let (sync_r, sync_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(engine_err("pipe"))?;
    let fifo_reader = match &cfg.stdin_fifo {
        // The daemon holds the FIFO open for writing, so this does not block.
        Some(fifo) => Some(File::open(fifo).map_err(|e| StartFailure {
            exit_code: 125,
            message: format!("failed to open the container's stdin: {e}"),
        })?),
        None => None,
    };
    let stdin: OwnedFd = match (&fifo_reader, terminal) {
        (Some(f), false) => f.try_clone().map(OwnedFd::from).map_err(|e| StartFailure {
            exit_code: 125,
            message: format!("failed to open the container's stdin: {e}"),
        })?,
        _ => File::open("/dev/null")
            .map(OwnedFd::from)
            .map_err(|e| StartFailure {
                exit_code: 125,
                message: format!("failed to open /dev/null: {e}"),
            })?,
    };
    let _stdin_holder = match (&cfg.stdin_fifo, cfg.hold_stdin_open) {
        (Some(fifo), true) => OpenOptions::new().write(true).open(fifo).ok(),
        _ => None,
    };

    let ns = spec
        .linux()
        .as_ref()
        .and_then(|l| l.namespaces().clone())
        .unwrap_or_default();
    let mut flags = 0;
    for n in &ns {
        flags |= match n.typ() {
            LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
            LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
            LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
            LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
            LinuxNamespaceType::Network => libc::CLONE_NEWNET,
            _ => 0,
        };
    }

    let child = super::clone_into_namespaces(flags)
        .map_err(engine_err("failed to create the container's namespaces"))?;
    let Some(pid) = child else {
        // In the container's init.
        let _ = nix::unistd::dup2_stdin(&stdin);
        let _ = nix::unistd::dup2_stdout(&out_w);
        let _ = nix::unistd::dup2_stderr(&err_w);
        drop((
            out_r,
            err_r,
            sync_r,
            out_w,
            err_w,
            stdin,
            fifo_reader,
            console_parent,
        ));
        init::container_main(spec, cfg, sync_w, console_child);
    };
    drop((out_w, err_w, sync_w, stdin, console_child));
    // With a terminal, the output is read from its master side instead.
    let (out_r, err_r, tty_path) = match console_parent.as_ref().and_then(super::recv_fd) {
        Some((master, name)) => (master, None, Some(name)),
        None => (out_r, Some(err_r), None),
    };

    // The sync pipe closes on a successful exec; anything written is a failure.
    let mut sync_text = String::new();
    let _ = File::from(sync_r).read_to_string(&mut sync_text);
    if !sync_text.trim().is_empty() {
        let _ = waitpid(pid, None);
        let failure =
            serde_json::from_str::<StartFailure>(sync_text.trim()).unwrap_or(StartFailure {
                exit_code: 125,
                message: sync_text.trim().to_string(),
            });
        return Err(failure);
    }
    report(
        daemon_pipe,
        &StartReport {
            pid: Some(pid.as_raw()),
            failure: None,
            tty_path,
        },
    );
    // Close our end so the daemon sees end-of-file after the report.
    if let Ok(null) = File::options().write(true).open("/dev/null") {
        *daemon_pipe = null;
    }

    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&cfg.log_path)
        .map(|file| Arc::new(Mutex::new(LogWriter { file })))
        .ok();
    // With a terminal, stdin from the FIFO is copied into the terminal; the
    // thread is not joined (it may block on a FIFO held open for reuse).
    if let (true, Some(mut fifo)) = (terminal, fifo_reader) {
        if let Ok(master) = out_r.try_clone() {
            std::thread::spawn(move || {
                let mut master = File::from(master);
                let _ = std::io::copy(&mut fifo, &mut master);
            });
        }
    }
    let copiers: Vec<_> = std::iter::once((out_r, STDOUT))
        .chain(err_r.map(|fd| (fd, STDERR)))
        .map(|(fd, stream)| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut src = File::from(fd);
                let mut buf = vec![0u8; 32 * 1024];
                loop {
                    match src.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => {
                            if let Some(log) = &log {
                                if let Ok(mut w) = log.lock() {
                                    w.write(stream, &buf[..n]);
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break,
                    }
                }
            })
        })
        .collect();

    let exit_code = loop {
        match waitpid(pid, None) {
            Ok(WaitStatus::Exited(_, code)) => break code as i64,
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i64,
            Ok(_) => continue,
            Err(nix::Error::EINTR) => continue,
            Err(_) => break 255,
        }
    };
    for c in copiers {
        let _ = c.join();
    }
    let oom_killed = cfg.cgroup.oom_killed();
    let _ = cfg.cgroup.remove();
    write_exit(
        &cfg.exit_path,
        &ExitRecord {
            exit_code,
            oom_killed,
            finished_at: now(),
            error: String::new(),
        },
    );
    Ok(())
}

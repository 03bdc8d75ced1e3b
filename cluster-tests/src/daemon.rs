//! One `flotilla-worker` daemon per test, with its own temp data root and socket, and the
//! `flotilla` CLI pointed at it. Owns the daemon's lifetime: crash ([`Daemon::kill9`]),
//! restart, and a `Drop` that removes every container, process, mount, cgroup and file the
//! daemon made, also when the test panics.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::bins::bin;
use crate::cleanup;
use crate::poll::poll_for;

/// How long the daemon may take to start serving its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long any single CLI command may run before the test fails (no command should hang).
const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Exit code of a finished command; panics if a signal ended it (the CLI never should die so).
pub fn code(out: &Output) -> i32 {
    out.status
        .code()
        .unwrap_or_else(|| panic!("command ended by a signal: {:?}", out.status))
}

/// Builds a [`Daemon`] with extra command-line flags.
#[derive(Debug, Default)]
pub struct DaemonBuilder {
    /// Flags appended to `flotilla-worker -H … --data-root …`.
    args: Vec<String>,
}

impl DaemonBuilder {
    /// Adds a flag (or a flag's value) to the daemon's command line.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Starts the daemon and waits until it serves its socket. Unless a
    /// `--bridge` was given, the daemon gets a bridge and subnet of its own
    /// (tests run in parallel; each daemon's IPAM and nftables table must not
    /// meet another's).
    pub fn start(mut self) -> Daemon {
        if !self.args.iter().any(|a| a == "--bridge") {
            let (bridge, bip) = unique_bridge();
            self.args
                .extend(["--bridge".into(), bridge, "--bip".into(), bip]);
        }
        let dir = tempfile::Builder::new()
            .prefix("flt-e2e-")
            .tempdir_in("/tmp")
            .expect("create the daemon's temp dir");
        let mut daemon = Daemon {
            dir: Some(dir),
            child: None,
            args: self.args,
        };
        std::fs::create_dir_all(daemon.data_root()).expect("create the data root");
        daemon.spawn();
        daemon
    }
}

/// A bridge name and subnet no other daemon of this test run uses:
/// `flt<pid><n>` and `10.<200+pid%50>.<n>.1/24`.
fn unique_bridge() -> (String, String) {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst) % 250;
    let pid = std::process::id();
    (
        format!("flt{:x}{n:02x}", pid % 0xffff),
        format!("10.{}.{n}.1/24", 200 + pid % 50),
    )
}

/// A running (or crashed) `flotilla-worker` owned by one test.
pub struct Daemon {
    /// Temp dir holding `root/` (the data root), the socket and `daemon.log`; `None` once
    /// dropped.
    dir: Option<tempfile::TempDir>,
    /// The daemon process while it runs.
    child: Option<Child>,
    /// Extra daemon flags from the builder, reused on restart.
    args: Vec<String>,
}

impl Daemon {
    /// Starts a daemon with default flags.
    pub fn start() -> Daemon {
        Self::builder().start()
    }

    /// A builder for a daemon with extra flags.
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder::default()
    }

    fn dir(&self) -> &Path {
        self.dir.as_ref().expect("daemon dir").path()
    }

    /// The daemon's bridge device (`--bridge`), if it has one.
    pub fn bridge(&self) -> Option<String> {
        let i = self.args.iter().position(|a| a == "--bridge")?;
        self.args.get(i + 1).cloned()
    }

    /// The daemon's `--data-root`.
    pub fn data_root(&self) -> PathBuf {
        self.dir().join("root")
    }

    /// Path of the daemon's unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir().join("flotilla.sock")
    }

    /// The `-H` value that reaches this daemon.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// A scratch directory for the test's own files (inside the daemon's temp dir, so it is
    /// removed with it).
    pub fn scratch(&self) -> PathBuf {
        let path = self.dir().join("scratch");
        std::fs::create_dir_all(&path).expect("create scratch dir");
        path
    }

    /// Path of the daemon's log (stdout and stderr of every run of it).
    pub fn log_path(&self) -> PathBuf {
        self.dir().join("daemon.log")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn spawn(&mut self) {
        if let Err(e) = self.try_spawn() {
            panic!("{e}");
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .expect("open daemon log");
        let mut cmd = Command::new(bin("flotilla-worker"));
        cmd.arg("-H")
            .arg(self.host())
            .arg("--data-root")
            .arg(self.data_root())
            .args(&self.args)
            .env_remove("FLOTILLA_HOST")
            .env("NO_COLOR", "1")
            // Marks the daemon and everything it spawns (shims keep the environment), so that
            // cleanup can find them by this test's unique path and nothing else.
            .env(cleanup::OWNER_ENV, self.dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().expect("spawn flotilla-worker");
        self.child = Some(child);
        let socket = self.socket();
        let started = poll_for(START_TIMEOUT, "the daemon to serve its socket", || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                return Ok(Err(status));
            }
            match UnixStream::connect(&socket) {
                Ok(_) => Ok(Ok(())),
                Err(e) => Err(format!("connect {}: {e}", socket.display())),
            }
        });
        if let Err(status) = started {
            self.child = None;
            return Err(format!(
                "flotilla-worker exited during start ({status}); its log:\n{}",
                self.log()
            ));
        }
        Ok(())
    }

    /// Kills the daemon with SIGKILL (its containers and shims keep running) and reaps it.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("daemon is not running");
        child.kill().expect("kill -9 the daemon");
        child.wait().expect("reap the daemon");
    }

    /// Starts the daemon again on the same data root and socket (after [`Daemon::kill9`] or
    /// [`Daemon::stop`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart: the daemon is still running");
        self.spawn();
    }

    /// Like [`Daemon::restart`], but returns the daemon's log instead of panicking when it
    /// exits during start.
    pub fn try_restart(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "restart: the daemon is still running");
        self.try_spawn()
    }

    /// Stops the daemon with SIGTERM (SIGKILL after 10 s) and reaps it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
    }

    /// Whether the daemon process is running.
    pub fn running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// The `flotilla` command pointed at this daemon, for callers that need to spawn it.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(bin("flotilla"));
        cmd.arg("-H")
            .arg(self.host())
            .args(args)
            .env_remove("FLOTILLA_HOST")
            .env("FLOTILLA_CONFIG", self.dir().join("client-config"));
        cmd
    }

    /// Runs `flotilla -H … ARGS` with no stdin and returns its output.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.cli_in(args, None)
    }

    /// Runs `flotilla -H … ARGS` feeding `input` on stdin (then closing it).
    pub fn cli_in(&self, args: &[&str], input: Option<&[u8]>) -> Output {
        let mut cmd = self.command(args);
        run_with_timeout(&mut cmd, input, CLI_TIMEOUT)
            .unwrap_or_else(|e| panic!("flotilla {args:?}: {e}"))
    }

    /// Runs the CLI, asserts it succeeded and returns its stdout. On failure panics with the
    /// command, exit status, stdout and stderr.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        check_ok(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Like [`Daemon::ok`], feeding `input` on stdin.
    pub fn ok_in(&self, args: &[&str], input: &[u8]) -> String {
        let out = self.cli_in(args, Some(input));
        check_ok(args, &out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI, asserts it failed with exit code `want`, and returns its stderr.
    pub fn fails(&self, args: &[&str], want: i32) -> String {
        let out = self.cli(args);
        assert_eq!(
            code(&out),
            want,
            "flotilla {args:?}: want exit code {want}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs the CLI and returns (exit code, stdout, stderr).
    pub fn run3(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.cli(args);
        (
            code(&out),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// `inspect NAME` parsed: the first (only) object of the array.
    pub fn inspect(&self, name: &str) -> serde_json::Value {
        let out = self.ok(&["inspect", name]);
        let mut all: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("inspect {name}: not JSON ({e}): {out}"));
        all.get_mut(0)
            .map(serde_json::Value::take)
            .unwrap_or_else(|| panic!("inspect {name}: empty array: {out}"))
    }

    /// `inspect`'s `State.Status` of a container (created, running, paused, exited, …).
    pub fn status(&self, name: &str) -> String {
        self.inspect(name)["State"]["Status"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    /// Full IDs of all containers (`ps -a -q --no-trunc`), sorted.
    pub fn container_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .ok(&["ps", "-a", "-q", "--no-trunc"])
            .split_whitespace()
            .map(str::to_string)
            .collect();
        ids.sort();
        ids
    }

    /// Names of all volumes (`volume ls -q`), sorted.
    pub fn volume_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .ok(&["volume", "ls", "-q"])
            .split_whitespace()
            .map(str::to_string)
            .collect();
        names.sort();
        names
    }

    /// Waits until the container `name` has `State.Status == want`.
    pub fn wait_status(&self, name: &str, want: &str, timeout: Duration) {
        poll_for(timeout, &format!("container {name} to be {want}"), || {
            let out = self.cli(&["inspect", name]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            let state: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            let status = state[0]["State"]["Status"].as_str().unwrap_or("?");
            if status == want {
                Ok(())
            } else {
                Err(format!(
                    "status {status:?} (stderr: {})",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            }
        })
    }

    /// Waits until the container's log (`logs NAME`) satisfies `check`; returns the log.
    pub fn wait_logs(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        mut check: impl FnMut(&str) -> bool,
    ) -> String {
        poll_for(timeout, what, || {
            let out = self.cli(&["logs", name]);
            let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
            text.push_str(&String::from_utf8_lossy(&out.stderr));
            if out.status.success() && check(&text) {
                Ok(text)
            } else {
                Err(format!("logs: {text:?}"))
            }
        })
    }

    /// Best-effort removal of every container through the CLI (used by `Drop`).
    fn remove_all_containers(&self) {
        let mut cmd = self.command(&["ps", "-a", "-q", "--no-trunc"]);
        let Ok(out) = run_with_timeout(&mut cmd, None, Duration::from_secs(15)) else {
            return;
        };
        let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect();
        if ids.is_empty() {
            return;
        }
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        let mut cmd = self.command(&args);
        if let Err(e) = run_with_timeout(&mut cmd, None, Duration::from_secs(30)) {
            eprintln!("cleanup: flotilla rm -f: {e}");
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let panicking = std::thread::panicking();
        if self.dir.is_none() {
            return;
        }
        if self.running() {
            self.remove_all_containers();
        }
        self.stop();
        cleanup::reap(self.dir(), &self.data_root());
        if let Some(bridge) = self.bridge() {
            // The bridge device and this daemon's nftables table.
            let _ = Command::new("ip").args(["link", "del", &bridge]).output();
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", &format!("flotilla-{bridge}")])
                .output();
        }
        if panicking {
            eprintln!(
                "===== flotilla-worker log ({}) =====\n{}\n===== end of log =====",
                self.log_path().display(),
                tail(&self.log(), 300)
            );
        }
        if let Some(dir) = self.dir.take() {
            let path = dir.path().to_path_buf();
            if let Err(e) = dir.close() {
                eprintln!("cleanup: remove {}: {e}", path.display());
            }
        }
    }
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn check_ok(args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "flotilla {args:?} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// SIGTERM, wait up to 10 s, then SIGKILL; reaps the child.
fn terminate(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY-free: kill(2) through libc on our own child's pid.
    signal(pid, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `sig` to `pid`.
pub(crate) fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Runs `cmd` with piped output, feeding `input` on stdin; kills it after `timeout`.
fn run_with_timeout(
    cmd: &mut Command,
    input: Option<&[u8]>,
    timeout: Duration,
) -> Result<Output, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let stdin = child.stdin.take();
    let input = input.map(<[u8]>::to_vec);
    let writer = std::thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            let _ = stdin.write_all(&input);
        }
    });
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stdout.read_to_end(&mut buf);
        buf
    });
    let err_reader = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = stderr.read_to_end(&mut buf);
        buf
    });
    let deadline = Instant::now() + timeout;
    let status: ExitStatus = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                let out = out_reader.join().unwrap_or_default();
                let err = err_reader.join().unwrap_or_default();
                return Err(format!(
                    "still running after {timeout:?}; killed\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out),
                    String::from_utf8_lossy(&err)
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(5)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let _ = writer.join();
    let stdout = out_reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

//! Hosts made of namespaces on this one machine, for cluster tests of managers and workers.
//!
//! A [`Lab`] is a private LAN: a "switch" network namespace holding a Linux bridge (`br0`),
//! and one network namespace per [`Host`], wired to the bridge by a veth pair (`port<i>` in
//! the switch, `eth0` in the host). Each host also has a UTS namespace of its own with its own
//! hostname (nodes are listed by hostname), and a scratch directory for data roots, sockets and
//! logs. Processes run in a host through `nsenter --net=… --uts=… -- PROGRAM` (nsenter execs, so
//! a [`Proc`]'s PID is the program's own).
//!
//! **Addresses.** Each lab gets the IPv4 subnet `10.<250 + n % 6>.<pid % 256>.0/24` (`pid` of
//! the test process, `n` its lab counter), host `i` (from 1) the address `.i`. The single-host
//! [`Daemon`](crate::Daemon) harness uses `10.200.0.0`–`10.249.255.255` for its bridges, so the
//! ranges never meet. Isolation does not depend on them: a lab's bridge has no uplink, hosts have
//! only the connected route of their subnet (no default route, no NAT), and IPv6 address
//! generation is off on the lab's links, so traffic can only go to the addresses the lab
//! assigned, or to `127.0.0.0/8` inside a host.
//!
//! **Names.** Everything is named `fltlab-<pid>-<n>`: the namespaces
//! `/run/netns/fltlab-<pid>-<n>-switch` and `…-<hostname>`, the directory
//! `/tmp/fltlab-<pid>-<n>/` (an `owner` file, and per host `<hostname>/uts`, the bind-mounted
//! UTS namespace, and `<hostname>/logs/<process>.log`). Every process started in a host carries
//! `FLOTILLA_E2E_OWNER=/tmp/fltlab-<pid>-<n>` in its environment.
//!
//! **Cleanup.** Dropping a [`Lab`] kills (SIGKILL, by PID) every process it started and any
//! other process inside its namespaces or carrying its marker, deletes the namespaces (which
//! takes the veths and the bridge with them), detaches the UTS bind mounts and removes the
//! directory (kept when `FLOTILLA_E2E_KEEP` is set). When the thread is panicking it first
//! prints the last lines of every process log. Leftovers of a test process that died without
//! dropping its labs (SIGKILL) are swept when the next lab is created anywhere on the machine,
//! once its owner is gone ([`sweep_stale_labs`]).
//!
//! It does not start Flotilla itself: cluster builders use [`Host::spawn`] for that.

use std::ffi::{OsStr, OsString};
use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use crate::cleanup;
use crate::daemon::signal;

/// First part of every name a lab gives.
const PREFIX: &str = "fltlab";
/// Where `ip netns` keeps its namespaces.
const NETNS_DIR: &str = "/run/netns";
/// Where labs keep their directories.
const TMP_DIR: &str = "/tmp";
/// How long [`Host::run`] lets a command run before the test fails.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a signal may take to show in `/proc/<pid>/stat`.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long cleanup waits for killed processes to leave the lab's namespaces.
const REAP_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of each process log printed when a test panics.
const LOG_TAIL_LINES: usize = 60;
/// Set (to anything) to keep a lab's directory, logs included, after it is dropped.
pub const KEEP_ENV: &str = "FLOTILLA_E2E_KEEP";

/// Lab counter of this test process.
static NEXT_LAB: AtomicU32 = AtomicU32::new(1);
/// The sweep of stale labs done before this process makes its first lab.
static FIRST_SWEEP: Once = Once::new();

/// Processes started in a lab, shared by its hosts and by the handles given out.
type Registry = Arc<Mutex<Vec<Arc<ProcShared>>>>;

/// Locks a mutex, also when a panicking test poisoned it (cleanup must still run).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// === impl Lab ===

/// A LAN of [`Host`]s made of namespaces; owns everything it makes and removes it on drop.
pub struct Lab {
    /// `fltlab-<pid>-<n>`, the first part of every name.
    id: String,
    /// `/tmp/<id>`: the owner file, per-host scratch directories, UTS files and logs.
    dir: PathBuf,
    /// Network address of the lab's /24.
    subnet: Ipv4Addr,
    /// The switch namespace (holds `br0` and one `port<i>` per host).
    switch: String,
    /// The hosts, in the order given.
    hosts: Vec<Host>,
    /// Every process started in the lab.
    procs: Registry,
}

impl Lab {
    /// A lab of `n` hosts named `host1` … `host<n>`.
    pub fn new(n: usize) -> Lab {
        let names: Vec<String> = (1..=n).map(|i| format!("host{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        Lab::with_hosts(&names)
    }

    /// A lab with one host per name; a name is also the host's hostname (`[a-z0-9-]`, at most
    /// 40 characters, not `switch`). Panics, after removing what it made, when setting up fails.
    pub fn with_hosts(names: &[&str]) -> Lab {
        assert!(
            !names.is_empty() && names.len() <= 254,
            "a lab has 1 to 254 hosts, not {}",
            names.len()
        );
        for (i, name) in names.iter().enumerate() {
            let valid = !name.is_empty()
                && name.len() <= 40
                && *name != "switch"
                && !name.starts_with('-')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            assert!(
                valid,
                "bad host name {name:?}: use [a-z0-9-], at most 40 characters, not \"switch\""
            );
            assert!(!names[..i].contains(name), "host name {name:?} given twice");
        }
        FIRST_SWEEP.call_once(|| sweep(true));
        let pid = std::process::id();
        let n = NEXT_LAB.fetch_add(1, Ordering::SeqCst);
        let id = format!("{PREFIX}-{pid}-{n}");
        let dir = Path::new(TMP_DIR).join(&id);
        let subnet = Ipv4Addr::new(10, 250 + (n % 6) as u8, (pid % 256) as u8, 0);
        let procs: Registry = Arc::default();
        let hosts = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let index = i + 1;
                let o = subnet.octets();
                Host {
                    name: name.to_string(),
                    addr: Ipv4Addr::new(o[0], o[1], o[2], index as u8),
                    netns: format!("{id}-{name}"),
                    switch: format!("{id}-switch"),
                    port: format!("port{index}"),
                    uts: dir.join(name).join("uts"),
                    dir: dir.join(name),
                    owner: dir.clone(),
                    cut: AtomicBool::new(false),
                    procs: procs.clone(),
                }
            })
            .collect();
        let lab = Lab {
            switch: format!("{id}-switch"),
            id,
            dir,
            subnet,
            hosts,
            procs,
        };
        // On failure the panic drops `lab`, which removes whatever was made.
        if let Err(e) = lab.set_up() {
            panic!("setting up lab {}: {e}", lab.id);
        }
        lab
    }

    /// Makes the directories, namespaces, links, addresses and hostnames.
    fn set_up(&self) -> Result<(), String> {
        if self.dir.exists() {
            // Left by an earlier process with our PID that the first sweep did not see.
            reap_lab(&self.id, &self.dir, false);
        }
        std::fs::create_dir(&self.dir).map_err(|e| format!("mkdir {}: {e}", self.dir.display()))?;
        let me = std::process::id() as i32;
        let owner = format!("{me} {}\n", start_time(me).unwrap_or_default());
        std::fs::write(self.dir.join("owner"), owner).map_err(|e| format!("write owner: {e}"))?;
        let mut root = vec![format!("netns add {}", self.switch)];
        root.extend(self.hosts.iter().map(|h| format!("netns add {}", h.netns)));
        ip_batch(None, &root)?;
        // The switch: a bridge without an uplink or address, and one port per host whose peer
        // is created straight inside the host's namespace (no name ever exists on the real host).
        let mut sw = vec![
            "link add br0 type bridge forward_delay 0".to_string(),
            "link set br0 addrgenmode none".to_string(),
        ];
        for h in &self.hosts {
            sw.push(format!(
                "link add {} type veth peer name eth0 netns {}",
                h.port, h.netns
            ));
            sw.push(format!("link set {} addrgenmode none", h.port));
            sw.push(format!("link set {} master br0", h.port));
            sw.push(format!("link set {} up", h.port));
        }
        sw.push("link set br0 up".to_string());
        ip_batch(Some(&self.switch), &sw)?;
        for h in &self.hosts {
            std::fs::create_dir_all(h.log_dir())
                .map_err(|e| format!("mkdir {}: {e}", h.log_dir().display()))?;
            ip_batch(
                Some(&h.netns),
                &[
                    "link set lo up".to_string(),
                    "link set eth0 addrgenmode none".to_string(),
                    format!("addr add {}/24 dev eth0", h.addr),
                    "link set eth0 up".to_string(),
                ],
            )?;
            std::fs::File::create(&h.uts)
                .map_err(|e| format!("create {}: {e}", h.uts.display()))?;
            let mut cmd = Command::new("unshare");
            cmd.arg(format!("--uts={}", h.uts.display()))
                .args(["hostname", &h.name]);
            check(run_command(cmd, RUN_TIMEOUT), "unshare --uts … hostname")?;
        }
        Ok(())
    }

    /// `fltlab-<pid>-<n>`: the first part of every name this lab gives.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The lab's directory (scratch directories and logs of every host), for messages.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lab's subnet, `10.x.y.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/24", self.subnet)
    }

    /// The switch's network namespace (for `ip -n`).
    pub fn switch_netns(&self) -> &str {
        &self.switch
    }

    /// The hosts, in the order given.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The host named `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("lab {} has no host {name:?}", self.id))
    }

    /// Prints the tail of every process log, labelled by host and process, to stderr.
    pub fn print_logs(&self, lines: usize) {
        let procs = lock(&self.procs).clone();
        eprintln!(
            "===== lab {} ({} hosts, logs under {}) =====",
            self.id,
            self.hosts.len(),
            self.dir.display()
        );
        for host in &self.hosts {
            for p in procs.iter().filter(|p| p.host == host.name) {
                let text = std::fs::read_to_string(&p.log).unwrap_or_default();
                eprintln!(
                    "===== {}/{} ({}), last {lines} lines =====\n{}\n===== end of {}/{} =====",
                    host.name,
                    p.name,
                    p.log.display(),
                    tail(&text, lines),
                    host.name,
                    p.name
                );
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let procs = lock(&self.procs).clone();
        for p in &procs {
            p.kill_and_reap();
        }
        let keep = std::env::var_os(KEEP_ENV).is_some();
        if std::thread::panicking() {
            self.print_logs(LOG_TAIL_LINES);
            if !keep {
                eprintln!(
                    "(set {KEEP_ENV}=1 to keep {} after the test)",
                    self.dir.display()
                );
            }
        }
        reap_lab(&self.id, &self.dir, keep);
        if keep {
            eprintln!("lab {}: kept {}", self.id, self.dir.display());
        }
    }
}

// === impl Host ===

/// One host of a [`Lab`]: a network namespace, a UTS namespace with its hostname, an address
/// on the lab's subnet and a scratch directory.
pub struct Host {
    /// Hostname, and the name of the host in the lab.
    name: String,
    /// Address on the lab's /24.
    addr: Ipv4Addr,
    /// Network namespace name (`/run/netns/<netns>`).
    netns: String,
    /// The lab's switch namespace.
    switch: String,
    /// This host's port on the switch bridge (peer of `eth0`).
    port: String,
    /// Bind-mounted UTS namespace file.
    uts: PathBuf,
    /// Scratch directory (`<lab dir>/<name>`).
    dir: PathBuf,
    /// The lab directory, the value of every process's owner marker.
    owner: PathBuf,
    /// Whether the host is cut off.
    cut: AtomicBool,
    /// The lab's processes.
    procs: Registry,
}

impl Host {
    /// The hostname (also the host's name in the lab).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The host's address on the lab's subnet.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The network namespace's name (for `ip -n`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The network namespace's file, `/run/netns/<name>`.
    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    /// The UTS namespace's (bind-mounted) file.
    pub fn uts_path(&self) -> &Path {
        &self.uts
    }

    /// The host's scratch directory, for data roots, sockets and files of the test.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the host's process logs are (`<name>.log`).
    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    /// `program` prepared to run inside the host (its net and UTS namespaces, the scratch
    /// directory as working directory, the lab's owner marker). For commands that need more
    /// than [`Host::run`] gives; the caller waits for it, and the lab kills it on drop.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns_path().display()))
            .arg(format!("--uts={}", self.uts.display()))
            .arg("--")
            .arg(program)
            .current_dir(&self.dir)
            .env(cleanup::OWNER_ENV, &self.owner);
        cmd
    }

    /// Starts a long-running process `name` (unique in this host): `program args` inside the
    /// host with `env` added, stdin from /dev/null, stdout and stderr to
    /// `<log dir>/<name>.log`. The lab kills it on drop.
    pub fn spawn(
        &self,
        name: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        assert!(
            !name.is_empty() && !name.contains('/'),
            "bad process name {name:?}"
        );
        let mut procs = lock(&self.procs);
        assert!(
            !procs.iter().any(|p| p.host == self.name && p.name == name),
            "host {} already has a process {name:?} (use restart)",
            self.name
        );
        let shared = Arc::new(ProcShared {
            host: self.name.clone(),
            name: name.to_string(),
            log: self.log_dir().join(format!("{name}.log")),
            program: program.as_ref().to_os_string(),
            args: args.iter().map(OsString::from).collect(),
            env: env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            netns: self.netns_path(),
            uts: self.uts.clone(),
            dir: self.dir.clone(),
            owner: self.owner.clone(),
            state: Mutex::new(ProcState::default()),
        });
        procs.push(shared.clone());
        drop(procs);
        shared.start(&mut lock(&shared.state));
        Proc { shared }
    }

    /// Runs `program args` inside the host to completion (stdin from /dev/null) and returns its
    /// output. Panics if it cannot be started or runs longer than 30 s.
    pub fn run(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        let program = program.as_ref().to_os_string();
        let mut cmd = self.command(&program);
        cmd.args(args);
        run_command(cmd, RUN_TIMEOUT).unwrap_or_else(|e| {
            panic!(
                "host {}: {} {args:?}: {e}",
                self.name,
                program.to_string_lossy()
            )
        })
    }

    /// Like [`Host::run`], but asserts success and returns stdout. On failure panics with the
    /// command, status, stdout and stderr.
    pub fn run_ok(&self, program: impl AsRef<OsStr>, args: &[&str]) -> String {
        let program = program.as_ref().to_os_string();
        let out = self.run(&program, args);
        let what = format!("host {}: {} {args:?}", self.name, program.to_string_lossy());
        if let Err(e) = check(Ok(out.clone()), &what) {
            panic!("{e}");
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Cuts the host off the lab's network: its veth goes down on both ends (the others' packets
    /// to it are dropped, its own fail as unreachable). Processes keep running and keep their
    /// sockets. Idempotent.
    pub fn cut_off(&self) {
        self.set_link("down");
        self.cut.store(true, Ordering::SeqCst);
    }

    /// Undoes [`Host::cut_off`]: both ends of the veth up again. Idempotent.
    pub fn heal(&self) {
        self.set_link("up");
        self.cut.store(false, Ordering::SeqCst);
    }

    /// Whether the host is cut off.
    pub fn is_cut_off(&self) -> bool {
        self.cut.load(Ordering::SeqCst)
    }

    fn set_link(&self, state: &str) {
        let result = ip_batch(
            Some(&self.switch),
            &[format!("link set {} {state}", self.port)],
        )
        .and_then(|()| ip_batch(Some(&self.netns), &[format!("link set eth0 {state}")]));
        if let Err(e) = result {
            panic!("host {}: link {state}: {e}", self.name);
        }
    }
}

// === impl Proc ===

/// A long-running process started by [`Host::spawn`]. Cloning gives another handle to the
/// same process; dropping handles does not stop it (the [`Lab`] does, on drop).
#[derive(Clone)]
pub struct Proc {
    shared: Arc<ProcShared>,
}

/// What a process was started with, and its current run.
struct ProcShared {
    /// Name of its host.
    host: String,
    /// Its name in the host (and its log's).
    name: String,
    /// Its log: stdout and stderr of every run.
    log: PathBuf,
    program: OsString,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    /// Its host's network namespace file.
    netns: PathBuf,
    /// Its host's UTS namespace file.
    uts: PathBuf,
    /// Its host's scratch directory (working directory).
    dir: PathBuf,
    /// The owner marker's value.
    owner: PathBuf,
    state: Mutex<ProcState>,
}

/// The current run of a process.
#[derive(Default)]
struct ProcState {
    /// The child, until it is reaped.
    child: Option<Child>,
    /// PID of the current (or last) run.
    pid: i32,
    /// How it ended, once reaped.
    status: Option<ExitStatus>,
    /// How many times it was started.
    runs: u32,
}

impl ProcShared {
    /// Starts a run (the first, or a restart), appending to the log.
    fn start(&self, state: &mut ProcState) {
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log.display()));
        if state.runs > 0 {
            let _ = writeln!(
                log,
                "===== restart #{} of {}/{} (previous pid {}, {}) =====",
                state.runs,
                self.host,
                self.name,
                state.pid,
                state
                    .status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "status unknown".into())
            );
        }
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.netns.display()))
            .arg(format!("--uts={}", self.uts.display()))
            .arg("--")
            .arg(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .env(cleanup::OWNER_ENV, &self.owner)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log);
        let child = cmd.spawn().unwrap_or_else(|e| {
            panic!(
                "{}/{}: spawn nsenter … {}: {e}",
                self.host,
                self.name,
                self.program.to_string_lossy()
            )
        });
        state.pid = child.id() as i32;
        state.child = Some(child);
        state.status = None;
        state.runs += 1;
    }

    /// Reaps the child if it has exited; returns whether it still runs (stopped counts).
    fn poll(state: &mut ProcState) -> bool {
        let Some(child) = state.child.as_mut() else {
            return false;
        };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(status)) => {
                state.status = Some(status);
                state.child = None;
                false
            }
            Err(e) => panic!("wait for pid {}: {e}", state.pid),
        }
    }

    /// SIGKILL (the child is unreaped, so its PID is still ours) and reap. No-op if reaped.
    fn kill_and_reap(&self) {
        let mut state = lock(&self.state);
        if let Some(mut child) = state.child.take() {
            signal(child.id() as i32, libc::SIGKILL);
            state.status = child.wait().ok();
        }
    }
}

impl Proc {
    /// The process's name in its host.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Name of the host it runs in.
    pub fn host(&self) -> &str {
        &self.shared.host
    }

    /// PID of the current (or last) run: the program's own, as nsenter execs it.
    pub fn pid(&self) -> i32 {
        lock(&self.shared.state).pid
    }

    /// Path of its log (stdout and stderr of every run, runs separated by a line).
    pub fn log_path(&self) -> &Path {
        &self.shared.log
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.shared.log).unwrap_or_default()
    }

    /// Whether it has not exited (a stopped process is running).
    pub fn is_running(&self) -> bool {
        ProcShared::poll(&mut lock(&self.shared.state))
    }

    /// How the last run ended, if it has (reaping it if it just did).
    pub fn exit_status(&self) -> Option<ExitStatus> {
        let mut state = lock(&self.shared.state);
        ProcShared::poll(&mut state);
        state.status
    }

    /// Whether it is stopped by a signal (SIGSTOP).
    pub fn is_stopped(&self) -> bool {
        let state = lock(&self.shared.state);
        state.child.is_some() && matches!(proc_state(state.pid), Some('T' | 't'))
    }

    /// Kills it with SIGKILL and reaps it. Idempotent; a no-op once it has exited.
    pub fn kill9(&self) {
        self.shared.kill_and_reap();
    }

    /// Sends `sig` to it; panics if it is not running.
    pub fn signal(&self, sig: libc::c_int) {
        let mut state = lock(&self.shared.state);
        assert!(
            ProcShared::poll(&mut state),
            "{}/{}: signal {sig}: not running",
            self.shared.host,
            self.shared.name
        );
        signal(state.pid, sig);
    }

    /// Freezes it with SIGSTOP and waits until it is stopped.
    pub fn stop(&self) {
        self.signal(libc::SIGSTOP);
        self.wait_state("stopped", |s| matches!(s, 'T' | 't'));
    }

    /// Resumes it with SIGCONT and waits until it is no longer stopped.
    pub fn cont(&self) {
        self.signal(libc::SIGCONT);
        self.wait_state("resumed", |s| !matches!(s, 'T' | 't'));
    }

    fn wait_state(&self, what: &str, ok: impl Fn(char) -> bool) {
        let pid = self.pid();
        let deadline = Instant::now() + SIGNAL_TIMEOUT;
        loop {
            let seen = proc_state(pid);
            if seen.is_none_or(&ok) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{}/{} (pid {pid}) not {what} after {SIGNAL_TIMEOUT:?}; state {seen:?}",
                self.shared.host,
                self.shared.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Starts the same command line again after it exited or was killed, appending to the same
    /// log after a separator line. Panics if it still runs.
    pub fn restart(&self) {
        let mut state = lock(&self.shared.state);
        assert!(
            !ProcShared::poll(&mut state),
            "{}/{}: restart: still running (pid {}); kill9 it first",
            self.shared.host,
            self.shared.name,
            state.pid
        );
        self.shared.start(&mut state);
    }

    /// Waits until it exits and returns how; panics after `timeout` with the log's tail.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}/{} (pid {}) still running after {timeout:?}; its log:\n{}",
                    self.shared.host,
                    self.shared.name,
                    self.pid(),
                    tail(&self.log(), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until its log contains `needle` and returns the log; panics after `timeout`.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if log.contains(needle) {
                return log;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}/{}: {needle:?} not in its log after {timeout:?}; its log:\n{}",
                    self.shared.host,
                    self.shared.name,
                    tail(&log, LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether a TCP socket listens on `port` in its host (read from `/proc/<pid>/net`, which
    /// shows the process's network namespace; false once it has exited).
    pub fn listens_on(&self, port: u16) -> bool {
        if !self.is_running() {
            return false;
        }
        let pid = self.pid();
        let want = format!(":{port:04X}");
        ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .any(|l| {
                    let cols: Vec<&str> = l.split_whitespace().collect();
                    // local_address is ADDR:PORT in hex; state 0A is LISTEN.
                    cols.len() > 3 && cols[1].ends_with(&want) && cols[3] == "0A"
                })
        })
    }

    /// Waits until [`Proc::listens_on`] `port`; panics after `timeout` with the log's tail.
    pub fn wait_listening(&self, port: u16, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.listens_on(port) {
            if Instant::now() >= deadline {
                panic!(
                    "{}/{} not listening on TCP port {port} after {timeout:?} (running: {}); its log:\n{}",
                    self.shared.host,
                    self.shared.name,
                    self.is_running(),
                    tail(&self.log(), LOG_TAIL_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

// === cleanup ===

/// Removes the remains of labs whose test process is gone: processes in their namespaces or
/// carrying their marker, the namespaces (with their veths and bridge), UTS bind mounts and
/// directories. Runs by itself before a process makes its first lab; call it to sweep sooner.
pub fn sweep_stale_labs() {
    sweep(false);
}

/// Sweeps labs whose owner is dead, and with `mine` also those named with this process's PID
/// (before it made any: they belong to an earlier process that had the same PID).
fn sweep(mine: bool) {
    let me = std::process::id();
    let mut ids: Vec<(u32, String)> = Vec::new();
    for dir in [NETNS_DIR, TMP_DIR] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            if let Some(lab) = lab_of(&e.file_name().to_string_lossy()) {
                ids.push(lab);
            }
        }
    }
    ids.sort();
    ids.dedup();
    for (pid, id) in ids {
        let dir = Path::new(TMP_DIR).join(&id);
        let stale = if pid == me {
            mine
        } else {
            !owner_alive(pid, &dir)
        };
        if stale {
            reap_lab(&id, &dir, false);
        }
    }
}

/// `(pid, "fltlab-<pid>-<n>")` for a name a lab gave (`fltlab-<pid>-<n>[-…]`).
fn lab_of(name: &str) -> Option<(u32, String)> {
    let rest = name.strip_prefix(PREFIX)?.strip_prefix('-')?;
    let mut parts = rest.splitn(3, '-');
    let pid: u32 = parts.next()?.parse().ok()?;
    let n: u32 = parts.next()?.parse().ok()?;
    Some((pid, format!("{PREFIX}-{pid}-{n}")))
}

/// Whether the process that made the lab in `dir` still runs: its PID is alive (not a
/// zombie) and, when the lab's `owner` file says, it started at the same time.
fn owner_alive(pid: u32, dir: &Path) -> bool {
    let pid = pid as i32;
    if matches!(proc_state(pid), None | Some('Z' | 'X')) {
        return false;
    }
    let recorded = std::fs::read_to_string(dir.join("owner"))
        .ok()
        .and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok());
    match (recorded, start_time(pid)) {
        (Some(want), Some(seen)) => want == seen,
        _ => true,
    }
}

/// Ends every process of lab `id` (in its namespaces or carrying its marker), deletes its
/// namespaces, detaches its mounts and removes `dir` unless `keep_dir`. Best effort.
fn reap_lab(id: &str, dir: &Path, keep_dir: bool) {
    let prefix = format!("{id}-");
    let netns: Vec<String> = std::fs::read_dir(NETNS_DIR)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default();
    // Namespace identities: the network namespaces, and each host's UTS namespace file.
    let mut files: Vec<PathBuf> = netns.iter().map(|n| Path::new(NETNS_DIR).join(n)).collect();
    if let Ok(entries) = std::fs::read_dir(dir) {
        files.extend(entries.flatten().map(|e| e.path().join("uts")));
    }
    let inodes: Vec<(u64, u64)> = files
        .iter()
        .filter_map(|f| std::fs::metadata(f).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect();
    let deadline = Instant::now() + REAP_TIMEOUT;
    loop {
        let mut left = pids_in(&inodes);
        left.extend(cleanup::reap_owned_under(dir));
        if left.is_empty() {
            break;
        }
        for pid in &left {
            signal(*pid, libc::SIGKILL);
        }
        if Instant::now() >= deadline {
            eprintln!("cleanup: lab {id}: processes {left:?} would not die");
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    if !netns.is_empty() {
        let lines: Vec<String> = netns.iter().map(|n| format!("netns del {n}")).collect();
        if let Err(e) = ip_batch(None, &lines) {
            eprintln!("cleanup: lab {id}: {e}");
        }
    }
    // The UTS files (and anything else mounted under the directory).
    cleanup::reap_owned_under(dir);
    if !keep_dir && dir.exists() {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!("cleanup: lab {id}: remove {}: {e}", dir.display());
        }
    }
}

/// Live (non-zombie) processes, other than this one, in any of the namespaces `inodes`.
fn pids_in(inodes: &[(u64, u64)]) -> Vec<i32> {
    if inodes.is_empty() {
        return Vec::new();
    }
    let me = std::process::id() as i32;
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            ["net", "uts"].iter().any(|ns| {
                std::fs::metadata(format!("/proc/{pid}/ns/{ns}"))
                    .is_ok_and(|m| inodes.contains(&(m.dev(), m.ino())))
            })
        })
        .collect()
}

// === helpers ===

/// The state letter of `/proc/<pid>/stat` (R, S, T, Z, …); `None` if there is no such process.
fn proc_state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat[stat.rfind(')')? + 1..].trim_start().chars().next()
}

/// The start time of `pid` (field 22 of `/proc/<pid>/stat`, clock ticks since boot).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name start at field 3 (state); field 22 is the 20th of them.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(19)?
        .parse()
        .ok()
}

/// Runs `ip [-n NETNS] -batch -` with `lines`.
fn ip_batch(netns: Option<&str>, lines: &[String]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    let mut input = lines.join("\n");
    input.push('\n');
    let what = match netns {
        Some(ns) => format!("ip -n {ns} -batch ({})", lines.join("; ")),
        None => format!("ip -batch ({})", lines.join("; ")),
    };
    check(
        run_command_in(cmd, Some(input.into_bytes()), RUN_TIMEOUT),
        &what,
    )
}

/// `Ok` if `out` is a success, else a message with `what`, the status, stdout and stderr.
fn check(out: Result<Output, String>, what: &str) -> Result<(), String> {
    let out = out.map_err(|e| format!("{what}: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    ))
}

/// Runs `cmd` (stdin from /dev/null) and captures its output; kills it after `timeout`.
fn run_command(cmd: Command, timeout: Duration) -> Result<Output, String> {
    run_command_in(cmd, None, timeout)
}

/// Runs `cmd` feeding `input` on stdin (or /dev/null), capturing its output; kills it (by its
/// PID) after `timeout`.
fn run_command_in(
    mut cmd: Command,
    input: Option<Vec<u8>>,
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
    let writer = std::thread::spawn(move || {
        if let (Some(mut stdin), Some(input)) = (stdin, input) {
            let _ = stdin.write_all(&input);
        }
    });
    let reader = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = pipe.read_to_end(&mut buf);
            buf
        })
    };
    let out = reader(Box::new(child.stdout.take().expect("stdout")));
    let err = reader(Box::new(child.stderr.take().expect("stderr")));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "still running after {timeout:?}; killed\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.join().unwrap_or_default()),
                    String::from_utf8_lossy(&err.join().unwrap_or_default())
                ));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => return Err(format!("wait: {e}")),
        }
    };
    let _ = writer.join();
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::{lab_of, tail};

    #[test]
    fn parses_lab_names() {
        assert_eq!(
            lab_of("fltlab-12-3-switch"),
            Some((12, "fltlab-12-3".into()))
        );
        assert_eq!(
            lab_of("fltlab-12-3-host-1"),
            Some((12, "fltlab-12-3".into()))
        );
        assert_eq!(lab_of("fltlab-12-3"), Some((12, "fltlab-12-3".into())));
        assert_eq!(lab_of("fltlab-x-3"), None);
        assert_eq!(lab_of("flt-e2e-abc"), None);
    }

    #[test]
    fn tails_text() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}

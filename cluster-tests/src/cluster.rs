//! Clusters of real Flotilla nodes on a [`Lab`]: `flotilla-manager` and
//! `flotilla-worker` processes started inside lab hosts (their own network
//! and UTS namespaces), each with its own data root and local socket under
//! the host's directory, and the `flotilla` CLI pointed at any of them.

use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use crate::bins::bin;
use crate::hosts::{Lab, Proc};

/// The cluster port every manager uses inside its host.
pub const CLUSTER_PORT: u16 = 2377;

/// How long a node gets to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long one CLI call may take before it is killed.
pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);

/// Cluster tests start several daemons each: they take this lock so that
/// only one runs at a time, whatever the test thread count.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// One node's daemon.
#[derive(Clone)]
pub struct NodeProc {
    /// The lab host it runs on.
    pub host: String,
    /// The daemon process (replaced on restart).
    pub proc: Proc,
    /// `unix://…` of its local socket.
    pub socket: String,
    /// Its data root.
    pub data_root: PathBuf,
    /// `ip:2377` for managers, `ip` for workers.
    pub addr: String,
    /// Whether it runs flotilla-manager.
    pub manager: bool,
    restarts: u32,
}

/// A cluster on a lab.
pub struct ClusterLab {
    /// The lab (dropping it stops every daemon and removes the hosts).
    pub lab: Lab,
    nodes: std::sync::Mutex<Vec<NodeProc>>,
    heartbeat: String,
    sandbox_pool: String,
}

/// The output of a command as text, with its status.
pub struct CliOut {
    /// Exit status code (-1 if killed).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CliOut {
    fn from(o: Output) -> CliOut {
        CliOut {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// Panics with both streams unless the command succeeded.
    pub fn ok(self, what: &str) -> String {
        assert!(
            self.code == 0,
            "{what} failed ({}):\nstdout: {}\nstderr: {}",
            self.code,
            self.stdout,
            self.stderr
        );
        self.stdout
    }
}

impl ClusterLab {
    /// A lab with hosts named `names`, nothing started yet; nodes heartbeat
    /// every `heartbeat` (e.g. "500ms").
    pub fn new(names: &[&str], heartbeat: &str) -> ClusterLab {
        ClusterLab {
            lab: Lab::with_hosts(names),
            nodes: std::sync::Mutex::new(Vec::new()),
            heartbeat: heartbeat.to_string(),
            sandbox_pool: "0".into(),
        }
    }

    /// Daemons started from now on keep `n` sandboxes prepared (default 0,
    /// which keeps tests light; benchmarks use the daemons' default 8).
    pub fn with_sandbox_pool(mut self, n: u16) -> Self {
        self.sandbox_pool = n.to_string();
        self
    }

    /// The node on `host` (its current process).
    pub fn node(&self, host: &str) -> NodeProc {
        self.all()
            .into_iter()
            .find(|n| n.host == host)
            .unwrap_or_else(|| panic!("no node on host {host}"))
    }

    fn all(&self) -> Vec<NodeProc> {
        self.nodes.lock().map(|n| n.clone()).unwrap_or_default()
    }

    fn put(&self, node: NodeProc) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.retain(|n| n.host != node.host);
        nodes.push(node);
    }

    fn paths(&self, host: &str) -> (String, PathBuf, String) {
        let h = self.lab.host(host);
        let socket = format!("unix://{}/flotilla.sock", h.dir().display());
        let data = h.dir().join("data");
        (socket, data, h.addr().to_string())
    }

    fn spawn_manager(&self, host: &str, extra: &[&str]) -> NodeProc {
        let (socket, data, ip) = self.paths(host);
        let data_s = data.display().to_string();
        let pool = self.sandbox_pool.clone();
        let mut args = vec![
            "-H",
            &socket,
            "--data-root",
            &data_s,
            "--sandbox-pool",
            &pool,
        ];
        args.extend_from_slice(extra);
        let restarts = self
            .all()
            .iter()
            .find(|n| n.host == host)
            .map(|n| n.restarts + 1)
            .unwrap_or(0);
        let name = if restarts == 0 {
            "manager".to_string()
        } else {
            format!("manager-{restarts}")
        };
        let proc = self.lab.host(host).spawn(
            &name,
            bin("flotilla-manager"),
            &args,
            &[("FLOTILLA_LOG", "info,openraft=error")],
        );
        let node = NodeProc {
            host: host.to_string(),
            proc,
            socket,
            data_root: data,
            addr: format!("{ip}:{CLUSTER_PORT}"),
            manager: true,
            restarts,
        };
        self.put(node.clone());
        node
    }

    /// `flotilla-manager init` on `host`; returns once it answers.
    pub fn init(&self, host: &str) -> NodeProc {
        self.init_with(host, &[])
    }

    /// `flotilla-manager init` with `extra` flags.
    pub fn init_with(&self, host: &str, extra: &[&str]) -> NodeProc {
        let ip = self.lab.host(host).addr().to_string();
        let listen = format!("{ip}:{CLUSTER_PORT}");
        let hb = self.heartbeat.clone();
        let mut args = vec![
            "init",
            "--advertise-addr",
            &ip,
            "--listen-addr",
            &listen,
            "--heartbeat-period",
            &hb,
        ];
        args.extend_from_slice(extra);
        let n = self.spawn_manager(host, &args);
        self.wait_ready(host);
        n
    }

    /// `flotilla-manager join` on `host` through the manager on `via`.
    pub fn join_manager(&self, host: &str, via: &str) -> NodeProc {
        let token = self.token(via, "manager");
        let ip = self.lab.host(host).addr().to_string();
        let listen = format!("{ip}:{CLUSTER_PORT}");
        let remote = self.node(via).addr.clone();
        let n = self.spawn_manager(
            host,
            &[
                "join",
                "--token",
                &token,
                "--advertise-addr",
                &ip,
                "--listen-addr",
                &listen,
                &remote,
            ],
        );
        self.wait_ready(host);
        n
    }

    /// Restarts the manager on `host` from its data root (its process must
    /// have exited), with `extra` flags (e.g. `--force-new-cluster`); returns
    /// once it answers from its own state.
    pub fn resume_manager(&self, host: &str, extra: &[&str]) -> NodeProc {
        assert!(
            !self.node(host).proc.is_running(),
            "the manager on {host} is still running"
        );
        let n = self.spawn_manager(host, extra);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self
                .cli(host, &["cluster", "info", "--local", "--format", "json"])
                .code
                == 0
            {
                return n;
            }
            assert!(
                n.proc.is_running(),
                "the manager on {host} exited:\n{}",
                n.proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the resumed manager on {host} did not answer:\n{}",
            n.proc.log()
        );
    }

    /// Starts the worker on `host` again from its data root (its last
    /// process must have exited); returns once it answers.
    pub fn resume_worker(&self, host: &str) -> NodeProc {
        let old = self.node(host);
        assert!(
            !old.proc.is_running(),
            "the worker on {host} is still running"
        );
        let restarts = old.restarts + 1;
        let proc = self.spawn_worker(host, &format!("worker-{restarts}"), &[]);
        let node = NodeProc {
            proc,
            restarts,
            ..old
        };
        self.put(node.clone());
        self.wait_answers(host, &node);
        node
    }

    /// Starts `flotilla-worker` on `host` (log name `name`) with the lab's
    /// socket, data root and sandbox pool, then `extra` arguments.
    fn spawn_worker(&self, host: &str, name: &str, extra: &[&str]) -> Proc {
        let (socket, data, _) = self.paths(host);
        let data_s = data.display().to_string();
        let mut args = vec![
            "-H",
            &socket,
            "--data-root",
            &data_s,
            "--sandbox-pool",
            &self.sandbox_pool,
        ];
        args.extend_from_slice(extra);
        self.lab
            .host(host)
            .spawn(name, bin("flotilla-worker"), &args, &[])
    }

    fn wait_answers(&self, host: &str, node: &NodeProc) {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if self.cli(host, &["version"]).code == 0 {
                return;
            }
            assert!(
                node.proc.is_running(),
                "the worker on {host} exited:\n{}",
                node.proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the worker on {host} did not answer:\n{}", node.proc.log());
    }

    /// `flotilla-worker join` on `host` through the manager on `via`.
    pub fn join_worker(&self, host: &str, via: &str) -> NodeProc {
        let token = self.token(via, "worker");
        let remote = self.node(via).addr.clone();
        let (socket, data, ip) = self.paths(host);
        let proc = self.spawn_worker(
            host,
            "worker",
            &["join", "--token", &token, "--advertise-addr", &ip, &remote],
        );
        let node = NodeProc {
            host: host.to_string(),
            proc,
            socket,
            data_root: data,
            addr: ip,
            manager: false,
            restarts: 0,
        };
        self.put(node.clone());
        self.wait_answers(host, &node);
        node
    }

    /// Waits until the manager on `host` answers `cluster info`.
    pub fn wait_ready(&self, host: &str) {
        let node = self.node(host);
        let deadline = Instant::now() + START_TIMEOUT;
        let mut last = String::new();
        while Instant::now() < deadline {
            let out = self.cli(host, &["cluster", "info", "--format", "json"]);
            if out.code == 0 {
                return;
            }
            last = out.stderr;
            assert!(
                node.proc.is_running(),
                "the manager on {host} exited:\n{}",
                node.proc.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the manager on {host} did not answer: {last}\n{}",
            node.proc.log()
        );
    }

    /// Runs the CLI against the node on `host` (from the machine's own
    /// namespace: the socket is a file). A call still running after
    /// [`CLI_TIMEOUT`] is killed and reported with code -1.
    pub fn cli(&self, host: &str, args: &[&str]) -> CliOut {
        let socket = self.node(host).socket;
        let child = std::process::Command::new(bin("flotilla"))
            .arg("-H")
            .arg(socket)
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run flotilla");
        let pid = child.id() as i32;
        // Collect the output on another thread (a full pipe must never block
        // the CLI while we wait), and give up after the timeout.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(CLI_TIMEOUT) {
            Ok(Ok(out)) => CliOut::from(out),
            Ok(Err(e)) => panic!("flotilla {args:?}: {e}"),
            Err(_) => {
                kill_child(pid);
                CliOut {
                    code: -1,
                    stdout: String::new(),
                    stderr: format!("flotilla {args:?} did not finish within {CLI_TIMEOUT:?}"),
                }
            }
        }
    }

    /// Imports a busybox root filesystem (Debian's busybox-static) as the
    /// image `busybox` on the nodes of `hosts`.
    pub fn load_busybox(&self, hosts: &[&str]) {
        for h in hosts {
            let tar = self.lab.host(h).dir().join("busybox-rootfs.tar");
            crate::busybox_rootfs_tar(&tar);
            self.cli(h, &["import", &tar.display().to_string(), "busybox"])
                .ok("import busybox");
        }
    }

    /// Runs a `flotilla-worker join` on `host` expected to fail, returning its
    /// error output.
    pub fn failing_worker_join(&self, host: &str, token: &str, via: &str) -> String {
        let h = self.lab.host(host);
        let dir = h.dir().join("failed-join");
        let sock = format!("unix://{}/w.sock", dir.display());
        let data = dir.join("data").display().to_string();
        let out = h.run(
            bin("flotilla-worker"),
            &[
                "-H",
                &sock,
                "--data-root",
                &data,
                "--sandbox-pool",
                "0",
                "join",
                "--token",
                token,
                "--advertise-addr",
                &h.addr().to_string(),
                &self.node(via).addr,
            ],
        );
        assert!(!out.status.success(), "join with {token} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// The current join token of `role`, from the manager on `host`.
    pub fn token(&self, host: &str, role: &str) -> String {
        self.cli(host, &["join-token", "-q", role])
            .ok("join-token")
            .trim()
            .to_string()
    }

    /// `node ls --format json` as JSON rows, from `host`.
    pub fn nodes(&self, host: &str, local: bool) -> Vec<serde_json::Value> {
        let mut args = vec!["node", "ls", "--format", "json"];
        if local {
            args.push("--local");
        }
        self.cli(host, &args)
            .ok("node ls")
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("node ls json"))
            .collect()
    }

    /// `cluster info --format json` from `host`.
    pub fn info(&self, host: &str) -> serde_json::Value {
        let out = self
            .cli(host, &["cluster", "info", "--format", "json"])
            .ok("cluster info");
        serde_json::from_str(&out).expect("cluster info json")
    }

    /// The host whose manager leads, as `host` sees it.
    pub fn leader(&self, host: &str) -> Option<String> {
        let out = self.cli(host, &["cluster", "info", "--format", "json"]);
        if out.code != 0 {
            return None;
        }
        let info: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
        let addr = info["LeaderAddr"].as_str()?.to_string();
        self.all()
            .into_iter()
            .find(|n| n.manager && n.addr == addr)
            .map(|n| n.host.clone())
    }

    /// Waits until some running manager reports a leader that is running,
    /// and returns its host.
    pub fn wait_leader(&self, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            for n in self
                .all()
                .iter()
                .filter(|n| n.manager && n.proc.is_running())
            {
                if let Some(l) = self.leader(&n.host) {
                    if self.node(&l).proc.is_running() {
                        return l;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no leader within {timeout:?}");
    }

    /// Every node's host name.
    pub fn hosts(&self) -> Vec<String> {
        self.all().iter().map(|n| n.host.clone()).collect()
    }
}

/// Sends SIGKILL to our own child `pid`, by PID.
fn kill_child(pid: i32) {
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
}

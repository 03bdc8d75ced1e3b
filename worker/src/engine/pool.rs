//! Ready sandboxes: shims that have already created their cgroups, cloned
//! the container's future init into new namespaces and moved it into the
//! cgroups — the steps that wait on kernel RCU grace periods — so that
//! starting a container only mounts its root and execs.
//!
//! The pool keeps `target` sandboxes with their own network namespace (what
//! `--network none` and, later, bridged containers use) and refills in the
//! background after each start. Sandboxes on the host's network are made on
//! demand. A sandbox whose daemon goes away sees its stdin close and tears
//! itself down, so nothing leaks across daemon restarts.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{random_id, EngineError, Result};
use crate::network::{Bridge, Endpoint};
use crate::runtime::cgroups::{ContainerCgroup, Layout};
use crate::runtime::shim::{SandboxReady, SandboxRequest};
use crate::runtime::StartReport;

/// The network a sandbox comes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NetKind {
    /// Its own network namespace with loopback only (`--network none`).
    Isolated,
    /// Its own namespace plugged into the default bridge (`--network bridge`).
    Bridged,
    /// The host's network namespace (`--network host`).
    Host,
    /// The network namespace of the container whose init has this PID
    /// (`--network container:NAME`); never pooled.
    Joined(i32),
}

/// How long a shim may take to prepare a sandbox or to start a container.
const SHIM_TIMEOUT: Duration = Duration::from_secs(60);

/// A shim waiting for a bundle.
pub struct Sandbox {
    child: Option<Child>,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub cgroup: ContainerCgroup,
    pub own_network: bool,
    /// The bridge endpoint of a bridged sandbox (its address is reserved).
    pub endpoint: Option<Endpoint>,
    /// Gives the address back if the sandbox is dropped unused.
    release_on_drop: Option<(Arc<Bridge>, std::net::Ipv4Addr)>,
    /// PID of the container's future init (in the sandbox's namespaces).
    pub pid: i32,
    /// PID of the shim, and its start time.
    pub shim_pid: i32,
    pub shim_start_time: u64,
}

impl Sandbox {
    /// Starts a shim and waits until its sandbox is ready.
    pub async fn prepare(
        layout: &Layout,
        kind: NetKind,
        bridge: Option<&Arc<Bridge>>,
    ) -> Result<Sandbox> {
        let own_network = matches!(kind, NetKind::Isolated | NetKind::Bridged);
        let join_network = match kind {
            NetKind::Joined(pid) => Some(pid),
            _ => None,
        };
        let request = SandboxRequest {
            join_network,
            cgroup: ContainerCgroup::plan(layout, &random_id()),
            own_network,
        };
        let mut child =
            crate::runtime::spawn_shim(&request).map_err(EngineError::io("start", "the shim"))?;
        let shim_pid = child.id().unwrap_or(0) as i32;
        let shim_start_time = crate::runtime::process_start_time(shim_pid).unwrap_or(0);
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| EngineError::Internal("shim without stdin".into()))?;
        let stdout = BufReader::new(
            child
                .stdout
                .take()
                .ok_or_else(|| EngineError::Internal("shim without stdout".into()))?,
        );
        let mut sandbox = Sandbox {
            child: Some(child),
            stdin,
            stdout,
            cgroup: request.cgroup,
            own_network,
            endpoint: None,
            release_on_drop: None,
            pid: 0,
            shim_pid,
            shim_start_time,
        };
        let ready: Option<SandboxReady> = sandbox.read_line().await;
        match ready {
            Some(SandboxReady { pid: Some(pid), .. }) => {
                sandbox.pid = pid;
                if kind == NetKind::Bridged {
                    let bridge = bridge.ok_or_else(|| {
                        EngineError::Internal(
                            "bridge networking is not set up on this daemon".into(),
                        )
                    })?;
                    let ip = bridge
                        .allocate()
                        .map_err(|e| EngineError::Internal(e.to_string()))?;
                    match bridge.attach(pid, ip).await {
                        Ok(ep) => {
                            sandbox.endpoint = Some(ep);
                            sandbox.release_on_drop = Some((bridge.clone(), ip));
                        }
                        Err(e) => {
                            bridge.release(ip);
                            return Err(EngineError::Internal(format!(
                                "failed to connect the container to the bridge: {e}"
                            )));
                        }
                    }
                }
                Ok(sandbox)
            }
            other => {
                sandbox.wait_shim().await;
                Err(EngineError::Internal(format!(
                    "failed to prepare a container sandbox: {}",
                    other
                        .and_then(|r| r.error)
                        .unwrap_or_else(|| "the shim exited without a report".into())
                )))
            }
        }
    }

    async fn read_line<T: serde::de::DeserializeOwned>(&mut self) -> Option<T> {
        let mut line = String::new();
        match tokio::time::timeout(SHIM_TIMEOUT, self.stdout.read_line(&mut line)).await {
            Ok(Ok(n)) if n > 0 => serde_json::from_str(line.trim()).ok(),
            _ => None,
        }
    }

    /// Waits for the shim process to end (reaps it).
    pub async fn wait_shim(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.wait().await;
        }
    }

    /// Hands the shim process over (to be reaped whenever it finishes).
    pub fn take_shim(&mut self) -> Option<Child> {
        self.child.take()
    }

    /// The container took over the sandbox's address: it is released when
    /// the container exits, not when the sandbox is dropped.
    pub fn keep_address(&mut self) {
        self.release_on_drop = None;
    }

    /// Waits until the shim has recorded the container's exit: it closes its
    /// report pipe then (before its own slower teardown), or dies.
    pub async fn wait_exit_recorded(&mut self) {
        let mut line = String::new();
        loop {
            line.clear();
            match self.stdout.read_line(&mut line).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    }

    /// Hands the bundle at `dir` to the shim and returns its start report
    /// (`None` if the shim died without one).
    pub async fn go(&mut self, dir: &std::path::Path) -> Option<StartReport> {
        let line = format!("{}\n", dir.display());
        if self.stdin.write_all(line.as_bytes()).await.is_err() {
            return None;
        }
        let _ = self.stdin.flush().await;
        self.read_line().await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if let Some((bridge, ip)) = self.release_on_drop.take() {
            bridge.release(ip);
        }
    }
}

/// The pool of ready sandboxes.
pub struct SandboxPool {
    layout: Layout,
    target: usize,
    ready: Mutex<HashMap<NetKind, VecDeque<Sandbox>>>,
    filling: Mutex<HashMap<NetKind, bool>>,
    /// Kinds asked for since the daemon started: only those are kept ready
    /// (bridged always, as it is the default).
    wanted: Mutex<std::collections::HashSet<NetKind>>,
    /// The default bridge, once the daemon has set it up.
    pub bridge: OnceLock<Arc<Bridge>>,
}

impl SandboxPool {
    /// A pool that keeps `target` sandboxes ready of every kind that has been
    /// asked for (bridged from the start; isolated after the first
    /// `--network none`); 0 disables it.
    pub fn new(layout: Layout, target: usize) -> Arc<SandboxPool> {
        Arc::new(SandboxPool {
            layout,
            target,
            ready: Mutex::new(HashMap::new()),
            filling: Mutex::new(HashMap::new()),
            wanted: Mutex::new([NetKind::Bridged].into_iter().collect()),
            bridge: OnceLock::new(),
        })
    }

    fn target_for(&self, kind: NetKind) -> usize {
        let wanted = self
            .wanted
            .lock()
            .map(|w| w.contains(&kind))
            .unwrap_or(false);
        match kind {
            NetKind::Host | NetKind::Joined(_) => 0,
            NetKind::Bridged if self.bridge.get().is_none() => 0,
            _ if wanted => self.target,
            _ => 0,
        }
    }

    /// A sandbox: a ready one if there is one, else a new one.
    pub async fn take(self: &Arc<Self>, kind: NetKind) -> Result<Sandbox> {
        if !matches!(kind, NetKind::Joined(_)) {
            if let Ok(mut w) = self.wanted.lock() {
                w.insert(kind);
            }
        }
        let ready = self
            .ready
            .lock()
            .ok()
            .and_then(|mut q| q.get_mut(&kind).and_then(|q| q.pop_front()));
        self.refill(kind);
        match ready {
            Some(s) => Ok(s),
            None => Sandbox::prepare(&self.layout, kind, self.bridge.get()).await,
        }
    }

    /// Tops every pooled kind up (at daemon start).
    pub fn refill_all(self: &Arc<Self>) {
        self.refill(NetKind::Bridged);
        self.refill(NetKind::Isolated);
    }

    /// Tops the pool up in the background once it is down to half, making
    /// every missing sandbox at once. Moving processes into cgroups waits for
    /// an RCU grace period and, meanwhile, stalls every fork on the host (the
    /// cgroup thread-group lock); preparing sandboxes together pays that wait
    /// once per batch instead of once per container, and less often.
    pub fn refill(self: &Arc<Self>, kind: NetKind) {
        let target = self.target_for(kind);
        let have = self
            .ready
            .lock()
            .map(|q| q.get(&kind).map_or(0, VecDeque::len))
            .unwrap_or(usize::MAX);
        if target == 0 || have > target / 2 {
            return;
        }
        {
            let mut filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
            if filling.get(&kind).copied().unwrap_or(false) {
                return;
            }
            filling.insert(kind, true);
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let missing = target.saturating_sub(have);
            let batch = (0..missing).map(|_| {
                let layout = pool.layout.clone();
                let bridge = pool.bridge.get().cloned();
                async move { Sandbox::prepare(&layout, kind, bridge.as_ref()).await }
            });
            for result in futures_join_all(batch).await {
                match result {
                    Ok(s) => {
                        if let Ok(mut q) = pool.ready.lock() {
                            q.entry(kind).or_default().push_back(s);
                        }
                    }
                    Err(e) => tracing::warn!("sandbox pool: {e}"),
                }
            }
            if let Ok(mut f) = pool.filling.lock() {
                f.insert(kind, false);
            }
        });
    }
}

/// Runs futures concurrently and collects their outputs in order.
async fn futures_join_all<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

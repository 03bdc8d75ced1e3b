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

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};

use super::{random_id, EngineError, Result};
use crate::runtime::cgroups::{ContainerCgroup, Layout};
use crate::runtime::shim::{SandboxReady, SandboxRequest};
use crate::runtime::StartReport;

/// How long a shim may take to prepare a sandbox or to start a container.
const SHIM_TIMEOUT: Duration = Duration::from_secs(60);

/// A shim waiting for a bundle.
pub struct Sandbox {
    pub child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub cgroup: ContainerCgroup,
    pub own_network: bool,
    /// PID of the shim, and its start time.
    pub shim_pid: i32,
    pub shim_start_time: u64,
}

impl Sandbox {
    /// Starts a shim and waits until its sandbox is ready.
    pub async fn prepare(layout: &Layout, own_network: bool) -> Result<Sandbox> {
        let request = SandboxRequest {
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
            child,
            stdin,
            stdout,
            cgroup: request.cgroup,
            own_network,
            shim_pid,
            shim_start_time,
        };
        let ready: Option<SandboxReady> = sandbox.read_line().await;
        match ready {
            Some(SandboxReady { pid: Some(_), .. }) => Ok(sandbox),
            other => {
                let _ = sandbox.child.wait().await;
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

/// The pool of ready sandboxes.
pub struct SandboxPool {
    layout: Layout,
    target: usize,
    ready: Mutex<VecDeque<Sandbox>>,
    filling: AtomicBool,
}

impl SandboxPool {
    /// A pool that keeps `target` sandboxes ready (0 disables it).
    pub fn new(layout: Layout, target: usize) -> Arc<SandboxPool> {
        Arc::new(SandboxPool {
            layout,
            target,
            ready: Mutex::new(VecDeque::new()),
            filling: AtomicBool::new(false),
        })
    }

    /// A sandbox: a ready one if there is one, else a new one.
    pub async fn take(self: &Arc<Self>, own_network: bool) -> Result<Sandbox> {
        let ready = if own_network {
            self.ready.lock().ok().and_then(|mut q| q.pop_front())
        } else {
            None
        };
        self.refill();
        match ready {
            Some(s) => Ok(s),
            None => Sandbox::prepare(&self.layout, own_network).await,
        }
    }

    /// Tops the pool up in the background once it is down to half, making
    /// every missing sandbox at once. Moving processes into cgroups waits for
    /// an RCU grace period and, meanwhile, stalls every fork on the host (the
    /// cgroup thread-group lock); preparing sandboxes together pays that wait
    /// once per batch instead of once per container, and less often.
    pub fn refill(self: &Arc<Self>) {
        let have = self.ready.lock().map(|q| q.len()).unwrap_or(usize::MAX);
        if self.target == 0 || have > self.target / 2 || self.filling.swap(true, Ordering::SeqCst) {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let have = pool.ready.lock().map(|q| q.len()).unwrap_or(usize::MAX);
            let missing = pool.target.saturating_sub(have);
            let batch = (0..missing).map(|_| {
                let layout = pool.layout.clone();
                async move { Sandbox::prepare(&layout, true).await }
            });
            for result in futures_join_all(batch).await {
                match result {
                    Ok(s) => {
                        if let Ok(mut q) = pool.ready.lock() {
                            q.push_back(s);
                        }
                    }
                    Err(e) => tracing::warn!("sandbox pool: {e}"),
                }
            }
            pool.filling.store(false, Ordering::SeqCst);
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

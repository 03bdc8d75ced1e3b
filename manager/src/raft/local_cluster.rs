//! An in-process cluster of Raft members on `127.0.0.1` ports picked by the
//! kernel, for tests and benchmarks: start N members, find the leader, stop
//! and restart members from their data directories, start empty members to
//! add, force a new cluster from one member's directory, and measure
//! committed writes per second. Not used by the daemon.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::objects::{Object, Service};
use tokio::net::TcpListener;

use super::{ManagerNode, NodeId, PlainConnector, RaftNode, RaftNodeError, RaftOptions};
use crate::store::{Action, StoreError};

/// N members in this process.
pub struct LocalCluster {
    root: PathBuf,
    options: RaftOptions,
    addrs: BTreeMap<NodeId, SocketAddr>,
    nodes: BTreeMap<NodeId, RaftNode>,
}

impl LocalCluster {
    /// Start members `1..=n` with data under `root/<id>` and initialize the
    /// cluster on member 1 with all of them as voters.
    pub async fn start(
        root: &Path,
        n: u64,
        options: RaftOptions,
    ) -> Result<LocalCluster, RaftNodeError> {
        let mut c = LocalCluster {
            root: root.to_path_buf(),
            options,
            addrs: BTreeMap::new(),
            nodes: BTreeMap::new(),
        };
        for id in 1..=n {
            let listener = TcpListener::bind("127.0.0.1:0")
                .await
                .map_err(RaftNodeError::Io)?;
            c.start_member(id, listener).await?;
        }
        let members: BTreeMap<NodeId, ManagerNode> =
            c.nodes.iter().map(|(id, n)| (*id, n.node())).collect();
        c.nodes[&1].initialize(members).await?;
        Ok(c)
    }

    async fn start_member(
        &mut self,
        id: NodeId,
        listener: TcpListener,
    ) -> Result<(), RaftNodeError> {
        let dir = self.root.join(id.to_string());
        std::fs::create_dir_all(&dir).map_err(RaftNodeError::Io)?;
        let node =
            RaftNode::start(id, &dir, listener, &self.options, Arc::new(PlainConnector)).await?;
        if let Some(addr) = node.listen_addr() {
            self.addrs.insert(id, addr);
        }
        self.nodes.insert(id, node);
        Ok(())
    }

    /// Start a new, empty member `id` (not part of the cluster: add it with
    /// `add_manager`) and return its record.
    pub async fn start_empty(&mut self, id: NodeId) -> Result<ManagerNode, RaftNodeError> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(RaftNodeError::Io)?;
        self.start_member(id, listener).await?;
        Ok(self.nodes[&id].node())
    }

    /// The data directory of member `id`.
    pub fn dir(&self, id: NodeId) -> PathBuf {
        self.root.join(id.to_string())
    }

    /// The record of member `id` (running or stopped).
    pub fn record(&self, id: NodeId) -> ManagerNode {
        let addr = self.addrs[&id].to_string();
        ManagerNode {
            raft_addr: addr.clone(),
            api_addr: addr,
        }
    }

    /// `--force-new-cluster` on stopped member `id`'s directory, then start
    /// it again on its old address: a one-member cluster with its state.
    pub async fn force_new_cluster(
        &mut self,
        id: NodeId,
    ) -> Result<super::ForcedCluster, RaftNodeError> {
        let forced = super::force_new_cluster(&self.dir(id), id, self.record(id)).await?;
        self.restart(id).await?;
        Ok(forced)
    }

    /// A running member.
    pub fn node(&self, id: NodeId) -> &RaftNode {
        &self.nodes[&id]
    }

    /// The running members' ids.
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes.keys().copied().collect()
    }

    /// Wait until every running member names the same leader, itself
    /// running, and return it.
    pub async fn wait_leader(&self, timeout: Duration) -> Option<NodeId> {
        let deadline = Instant::now() + timeout;
        loop {
            let leaders: Vec<Option<NodeId>> = self
                .nodes
                .values()
                .map(|n| n.metrics().current_leader)
                .collect();
            if let Some(Some(l)) = leaders.first() {
                if leaders.iter().all(|x| *x == Some(*l)) && self.nodes.contains_key(l) {
                    return Some(*l);
                }
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stop a member (its Raft and server); its files stay.
    pub async fn stop(&mut self, id: NodeId) {
        if let Some(n) = self.nodes.remove(&id) {
            n.shutdown().await;
        }
    }

    /// Restart a stopped member from its data directory on its old address.
    pub async fn restart(&mut self, id: NodeId) -> Result<(), RaftNodeError> {
        let addr = self.addrs[&id];
        // The port was the kernel's pick; take it back (retrying while the
        // old socket finishes closing).
        let mut tries = 0;
        let listener = loop {
            match TcpListener::bind(addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!("rebinding {addr}: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(RaftNodeError::Io(e)),
            }
        };
        self.start_member(id, listener).await
    }

    /// Stop every member.
    pub async fn shutdown(mut self) {
        for id in self.running() {
            self.stop(id).await;
        }
    }

    /// Commit `entries` Raft entries of `actions_per_entry` service creations
    /// each through the leader, `concurrency` proposals in flight, and report
    /// the rate.
    pub async fn measure_writes(
        &self,
        entries: usize,
        actions_per_entry: usize,
        concurrency: usize,
    ) -> Result<Throughput, StoreError> {
        let leader = self.wait_leader(Duration::from_secs(10)).await.unwrap_or(1);
        let store = self.nodes[&leader].store().clone();
        let start = Instant::now();
        let per_worker = entries.div_ceil(concurrency.max(1));
        let mut tasks = Vec::new();
        for w in 0..concurrency.max(1) {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..per_worker {
                    let actions = (0..actions_per_entry)
                        .map(|a| {
                            Action::Create(Object::Service(Service {
                                name: format!("bench-{}-{w}-{i}-{a}", crate::store::new_id()),
                                image: "busybox".into(),
                                replicas: 1,
                                ..Default::default()
                            }))
                        })
                        .collect();
                    store.update(actions).await?;
                }
                Ok::<_, StoreError>(per_worker)
            }));
        }
        let mut done = 0;
        for t in tasks {
            done += t.await.map_err(|e| {
                StoreError::Propose(crate::store::ProposeError::Fatal(Box::new(e)))
            })??;
        }
        let elapsed = start.elapsed();
        Ok(Throughput {
            entries: done,
            objects: done * actions_per_entry,
            elapsed,
        })
    }
}

/// The result of [`LocalCluster::measure_writes`].
#[derive(Clone, Copy, Debug)]
pub struct Throughput {
    /// Raft entries committed.
    pub entries: usize,
    /// Objects written.
    pub objects: usize,
    /// Wall time.
    pub elapsed: Duration,
}

impl Throughput {
    /// Committed entries per second.
    pub fn entries_per_sec(&self) -> f64 {
        self.entries as f64 / self.elapsed.as_secs_f64()
    }

    /// Written objects per second.
    pub fn objects_per_sec(&self) -> f64 {
        self.objects as f64 / self.elapsed.as_secs_f64()
    }
}

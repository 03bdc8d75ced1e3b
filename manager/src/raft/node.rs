//! One manager's Raft member, wired: the redb log and store files under a
//! data directory, the openraft instance, its peer service (mounted by the
//! caller on its cluster port, or served here on a listener the caller
//! bound), the [`RaftProposer`] that makes the store's `update` go through
//! Raft from any member, and the [`Membership`] operations.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::RaftError;
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::forward::Forwarder;
use super::membership::{ClusterInfo, Membership, MembershipError};
use super::network::{AppendLimits, Connector, GrpcNetwork};
use super::pb::raft_server::RaftServer;
use super::service::{ElectionGuard, RaftService};
use super::typ::{Raft, RaftMetrics, StorageError};
use super::{LogStore, ManagerNode, NodeId, StateMachine};
use crate::store::{
    Batch, BatchOutcome, BoxFuture, Durability, ProposeError, Proposer, Store, StoreError,
};

/// The log file's name under the data directory.
pub const LOG_FILE: &str = "raft-log.redb";
/// The store file's name under the data directory.
pub const STORE_FILE: &str = "store.redb";

/// Tunables of a Raft member.
#[derive(Clone, Debug)]
pub struct RaftOptions {
    /// Leader heartbeat period.
    pub heartbeat_interval: Duration,
    /// Election timeout range: a follower that hears no leader for a random
    /// time in this range starts an election.
    pub election_timeout: (Duration, Duration),
    /// Build a snapshot (and allow purging) after this many entries.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind a snapshot, so briefly-lagging
    /// followers catch up from the log instead of a snapshot.
    pub keep_logs_after_snapshot: u64,
    /// How long a write (or a linearizable read) may take, including finding
    /// and reaching the leader, before it fails.
    pub write_timeout: Duration,
    /// How long [`RaftNode::add_manager`] waits for a new member to catch up
    /// (as a learner) before promoting it.
    pub catch_up_timeout: Duration,
    /// A member that answered the leader within this window counts as
    /// reachable (leader heartbeats every `heartbeat_interval`).
    pub reachable_within: Duration,
    /// At most this many entries per AppendEntries request.
    pub max_append_entries: u64,
    /// Size and deadline of AppendEntries requests (independent of the
    /// heartbeat: see [`AppendLimits`]).
    pub append_limits: AppendLimits,
    /// Snapshots are sent in chunks of at most this many bytes.
    pub snapshot_chunk_bytes: u64,
    /// The deadline of sending one snapshot chunk (for the last one:
    /// sending and installing the snapshot).
    pub snapshot_chunk_timeout: Duration,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_after_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
            write_timeout: Duration::from_secs(5),
            catch_up_timeout: Duration::from_secs(30),
            reachable_within: Duration::from_secs(2),
            max_append_entries: 256,
            append_limits: AppendLimits::default(),
            snapshot_chunk_bytes: 1024 * 1024,
            snapshot_chunk_timeout: Duration::from_secs(10),
        }
    }
}

impl RaftOptions {
    /// The daemon's timing: a 50 ms heartbeat and a 200–400 ms election
    /// timeout, so a new leader takes over well within a second of the old
    /// one failing. The rest as [`RaftOptions::default`].
    pub fn fast_failover() -> RaftOptions {
        RaftOptions {
            heartbeat_interval: Duration::from_millis(50),
            election_timeout: (Duration::from_millis(200), Duration::from_millis(400)),
            ..RaftOptions::default()
        }
    }

    fn config(&self) -> Result<Config, RaftNodeError> {
        let c = Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
            max_payload_entries: self.max_append_entries,
            snapshot_max_chunk_size: self.snapshot_chunk_bytes,
            install_snapshot_timeout: self.snapshot_chunk_timeout.as_millis() as u64,
            ..Default::default()
        };
        c.validate().map_err(|e| RaftNodeError::Config(Box::new(e)))
    }
}

/// Errors of starting or driving a Raft member.
#[derive(Debug, thiserror::Error)]
pub enum RaftNodeError {
    /// The options are inconsistent.
    #[error("invalid Raft options: {0}")]
    Config(#[source] Box<openraft::ConfigError>),
    /// A data file could not be opened.
    #[error("failed to open the Raft data in {dir}: {source}")]
    Open {
        /// The data directory.
        dir: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Binding or reading the listener, or making the data directory, failed.
    #[error("failed to set up the Raft member's listener or directory: {0}")]
    Io(#[source] std::io::Error),
    /// openraft refused to start (storage failure on load).
    #[error("failed to start Raft: {0}")]
    Start(#[source] Box<openraft::error::Fatal<NodeId>>),
    /// Initializing the cluster failed (e.g. already initialized).
    #[error("failed to initialize the Raft cluster: {0}")]
    Initialize(
        #[source] Box<RaftError<NodeId, openraft::error::InitializeError<NodeId, ManagerNode>>>,
    ),
    /// `--force-new-cluster` found no Raft state to keep.
    #[error("failed to force a new cluster from {dir}: it holds no Raft state (no log, nothing applied)")]
    NothingToRecover {
        /// The data directory.
        dir: String,
    },
    /// Reading or writing the Raft log or state failed.
    #[error("failed to read or write the Raft state in {dir}: {source}")]
    Storage {
        /// The data directory.
        dir: String,
        /// openraft's storage error.
        #[source]
        source: Box<StorageError>,
    },
}

/// Replicates store batches through openraft, from any member: the leader
/// commits locally, a follower forwards to the leader (see
/// `super::forward`).
pub struct RaftProposer {
    fwd: Forwarder,
}

impl Proposer for RaftProposer {
    fn propose(&self, batch: Batch) -> BoxFuture<'_, Result<BatchOutcome, ProposeError>> {
        Box::pin(self.fwd.propose(batch))
    }

    fn ensure_linearizable(&self) -> BoxFuture<'_, Result<(), ProposeError>> {
        Box::pin(self.fwd.ensure_linearizable())
    }
}

/// The peer server `RaftNode::start` runs.
struct Server {
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    stop: tokio::sync::oneshot::Sender<()>,
    addr: SocketAddr,
}

/// A running Raft member: openraft, its store, its peer service and
/// membership operations.
pub struct RaftNode {
    id: NodeId,
    node: ManagerNode,
    raft: Raft,
    store: Store,
    membership: Membership,
    write_timeout: Duration,
    guard: ElectionGuard,
    server: Option<Server>,
}

impl RaftNode {
    /// Open (or create) the member's files in `data_dir` and start openraft,
    /// **without** serving: mount [`RaftNode::service`] on the cluster port.
    /// `node` is this member's record (its `raft_addr` is where peers reach
    /// that service). Peer channels come from `connector`. A member that has
    /// state resumes it; a new one waits to be initialized
    /// ([`RaftNode::initialize`]) or added ([`RaftNode::add_manager`] on a
    /// member of the cluster).
    pub async fn open(
        id: NodeId,
        data_dir: &Path,
        node: ManagerNode,
        options: &RaftOptions,
        connector: Arc<dyn Connector>,
    ) -> Result<RaftNode, RaftNodeError> {
        let config = Arc::new(options.config()?);
        let open_err = |source| RaftNodeError::Open {
            dir: data_dir.display().to_string(),
            source,
        };
        let log = LogStore::open(&data_dir.join(LOG_FILE)).map_err(open_err)?;
        let store =
            Store::open(data_dir.join(STORE_FILE), Durability::Eventual).map_err(open_err)?;
        let sm = StateMachine::new(store.clone());
        let network = GrpcNetwork::with_limits(connector, options.append_limits);
        let raft = Raft::new(id, config, network.clone(), log, sm)
            .await
            .map_err(|e| RaftNodeError::Start(Box::new(e)))?;
        let fwd = Forwarder {
            id,
            raft: raft.clone(),
            network,
            write_timeout: options.write_timeout,
        };
        let membership = Membership::new(
            fwd.clone(),
            options.catch_up_timeout,
            options.reachable_within,
        );
        let proposer = Arc::new(RaftProposer { fwd });
        let restarted = raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .count()
            > 1;
        let guard = ElectionGuard::new(raft.clone(), restarted);
        Ok(RaftNode {
            id,
            node,
            store: store.with_proposer(proposer),
            raft,
            membership,
            write_timeout: options.write_timeout,
            guard,
            server: None,
        })
    }

    /// [`RaftNode::open`], then serve the peer service on `listener` (plain
    /// HTTP/2: tests and tools). The member's record uses the listener's
    /// address for both its Raft and API address.
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        listener: TcpListener,
        options: &RaftOptions,
        connector: Arc<dyn Connector>,
    ) -> Result<RaftNode, RaftNodeError> {
        let addr = listener.local_addr().map_err(RaftNodeError::Io)?;
        let node = ManagerNode {
            raft_addr: addr.to_string(),
            api_addr: addr.to_string(),
        };
        let mut n = RaftNode::open(id, data_dir, node, options, connector).await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(n.service())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        n.server = Some(Server { task, stop, addr });
        Ok(n)
    }

    /// `--force-new-cluster`: make `data_dir` (not in use) a one-member
    /// cluster of `id` at `node` that keeps all its state. Call before
    /// [`RaftNode::open`]. See [`super::recovery`].
    pub async fn force_new_cluster(
        data_dir: &Path,
        id: NodeId,
        node: ManagerNode,
    ) -> Result<super::ForcedCluster, RaftNodeError> {
        super::recovery::force_new_cluster(data_dir, id, node).await
    }

    /// The peer service (`flotilla.raft.v1.Raft`: openraft's RPCs and the
    /// forwarding RPCs), ready for `Server::add_service` or a
    /// `tonic::service::Routes`. Expose it to managers only.
    pub fn service(&self) -> RaftServer<RaftService> {
        RaftService::new(
            self.raft.clone(),
            self.membership.clone(),
            self.write_timeout,
            self.guard.clone(),
        )
        .into_server()
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address of the listener [`RaftNode::start`] serves on (none for
    /// a member made with [`RaftNode::open`]).
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(|s| s.addr)
    }

    /// Its membership record.
    pub fn node(&self) -> ManagerNode {
        self.node.clone()
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The store, whose updates go through Raft (forwarded to the leader
    /// from a follower).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Current Raft metrics.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    /// The term this member leads in, if it is the leader now (a leader that
    /// lost and won again has a new term).
    pub fn leader_term(&self) -> Option<u64> {
        let m = self.raft.metrics().borrow().clone();
        (m.current_leader == Some(self.id)).then_some(m.current_term)
    }

    /// True if this member is the leader now.
    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.id)
    }

    /// Membership operations (also available as the methods below).
    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// See [`Membership::add_manager`]. Callable on any member.
    pub async fn add_manager(&self, id: NodeId, node: ManagerNode) -> Result<(), MembershipError> {
        self.membership.add_manager(id, node).await
    }

    /// See [`Membership::remove_manager`]. Callable on any member.
    pub async fn remove_manager(&self, id: NodeId, force: bool) -> Result<(), MembershipError> {
        self.membership.remove_manager(id, force).await
    }

    /// See [`Membership::members`]. Callable on any member.
    pub async fn members(&self) -> Result<ClusterInfo, MembershipError> {
        self.membership.members().await
    }

    /// See [`Membership::reachable_voters`]. Callable on any member.
    pub async fn reachable_voters(
        &self,
    ) -> Result<std::collections::BTreeSet<NodeId>, MembershipError> {
        self.membership.reachable_voters().await
    }

    /// Make this member the first of a new cluster with `members` as voters.
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, ManagerNode>,
    ) -> Result<(), RaftNodeError> {
        self.raft
            .initialize(members)
            .await
            .map_err(|e| RaftNodeError::Initialize(Box::new(e)))
    }

    /// Stop Raft (and the peer server, if [`RaftNode::start`] runs one). Its
    /// files stay; open it again with the same directory to resume.
    ///
    /// The server shuts down gracefully (peers get an HTTP/2 GOAWAY and
    /// reconnect to whatever serves the address next), bounded to two
    /// seconds, after which its task is aborted. Returns once openraft's
    /// tasks have released the store, so its files can be reopened.
    pub async fn shutdown(self) {
        let RaftNode {
            id,
            raft,
            store,
            server,
            membership,
            ..
        } = self;
        let server = server.map(|s| {
            let _ = s.stop.send(());
            s.task
        });
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(id, "Raft shutdown reported an error: {e}");
        }
        drop(raft);
        drop(membership);
        if let Some(mut task) = server {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
                let _ = task.await;
            }
        }
        // openraft's state-machine worker and in-flight blocking applies hold
        // store handles for a moment after shutdown returns.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while store.handle_count() > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if store.handle_count() > 1 {
            tracing::warn!(id, "the store is still in use after Raft shut down");
        }
    }
}

//! One manager's Raft member, wired: the redb log and store files under a
//! data directory, the openraft instance, its tonic server on a listener the
//! caller bound, and the [`RaftProposer`] that makes the store's `update`
//! go through Raft.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{Config, SnapshotPolicy};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use super::network::{Connector, GrpcNetwork};
use super::service::RaftService;
use super::typ::{ForwardToLeader, Raft, RaftMetrics};
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
    /// How long a write may wait for a commit before it fails as unavailable.
    pub write_timeout: Duration,
}

impl Default for RaftOptions {
    fn default() -> Self {
        RaftOptions {
            heartbeat_interval: Duration::from_millis(100),
            election_timeout: (Duration::from_millis(400), Duration::from_millis(800)),
            snapshot_after_logs: 10_000,
            keep_logs_after_snapshot: 1_000,
            write_timeout: Duration::from_secs(5),
        }
    }
}

impl RaftOptions {
    fn config(&self) -> Result<Config, RaftNodeError> {
        let c = Config {
            cluster_name: "flotilla".into(),
            heartbeat_interval: self.heartbeat_interval.as_millis() as u64,
            election_timeout_min: self.election_timeout.0.as_millis() as u64,
            election_timeout_max: self.election_timeout.1.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_after_logs),
            max_in_snapshot_log_to_keep: self.keep_logs_after_snapshot,
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
}

/// Replicates store batches through openraft.
pub struct RaftProposer {
    raft: Raft,
    write_timeout: Duration,
}

impl RaftProposer {
    /// Propose through `raft`, failing writes that do not commit within
    /// `write_timeout`.
    pub fn new(raft: Raft, write_timeout: Duration) -> RaftProposer {
        RaftProposer {
            raft,
            write_timeout,
        }
    }
}

fn forward(f: ForwardToLeader) -> ProposeError {
    let leader_addr = f.leader_node.map(|n| {
        if n.api_addr.is_empty() {
            n.raft_addr
        } else {
            n.api_addr
        }
    });
    ProposeError::ForwardToLeader {
        leader_id: f.leader_id,
        leader_addr,
    }
}

impl Proposer for RaftProposer {
    fn propose(&self, batch: Batch) -> BoxFuture<'_, Result<BatchOutcome, ProposeError>> {
        Box::pin(async move {
            let res = tokio::time::timeout(self.write_timeout, self.raft.client_write(batch)).await;
            match res {
                Err(elapsed) => Err(ProposeError::Unavailable(Box::new(elapsed))),
                Ok(Ok(resp)) => Ok(resp.data),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    Err(forward(f))
                }
                Ok(Err(RaftError::APIError(e))) => Err(ProposeError::Unavailable(Box::new(e))),
                Ok(Err(RaftError::Fatal(f))) => Err(ProposeError::Fatal(Box::new(f))),
            }
        })
    }

    fn ensure_linearizable(&self) -> BoxFuture<'_, Result<(), ProposeError>> {
        Box::pin(async move {
            let res =
                tokio::time::timeout(self.write_timeout, self.raft.ensure_linearizable()).await;
            match res {
                Err(elapsed) => Err(ProposeError::Unavailable(Box::new(elapsed))),
                Ok(Ok(_)) => Ok(()),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(forward(f))
                }
                Ok(Err(RaftError::APIError(e))) => Err(ProposeError::Unavailable(Box::new(e))),
                Ok(Err(RaftError::Fatal(f))) => Err(ProposeError::Fatal(Box::new(f))),
            }
        })
    }
}

/// A running Raft member: openraft, its store, and its peer server.
pub struct RaftNode {
    id: NodeId,
    addr: SocketAddr,
    raft: Raft,
    store: Store,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    stop_server: tokio::sync::oneshot::Sender<()>,
}

impl RaftNode {
    /// Open (or create) the member's files in `data_dir`, start openraft and
    /// serve its peer RPCs on `listener`. A member that has state resumes it;
    /// a new one waits to be initialized ([`RaftNode::initialize`]) or added.
    pub async fn start(
        id: NodeId,
        data_dir: &Path,
        listener: TcpListener,
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
        let raft = Raft::new(id, config, GrpcNetwork::new(connector), log, sm)
            .await
            .map_err(|e| RaftNodeError::Start(Box::new(e)))?;
        let addr = listener.local_addr().map_err(RaftNodeError::Io)?;
        let (stop_server, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(RaftService::new(raft.clone()).into_server())
                .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        let proposer = Arc::new(RaftProposer::new(raft.clone(), options.write_timeout));
        Ok(RaftNode {
            id,
            addr,
            store: store.with_proposer(proposer),
            raft,
            server,
            stop_server,
        })
    }

    /// This member's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// The address its peer service listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its membership record (raft and API address are the same listener
    /// until the control API lands).
    pub fn node(&self) -> ManagerNode {
        ManagerNode {
            raft_addr: self.addr.to_string(),
            api_addr: self.addr.to_string(),
        }
    }

    /// The openraft handle.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// The store, whose updates go through Raft.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Current Raft metrics.
    pub fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
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

    /// Stop Raft and the peer server. Its files stay; start it again with the
    /// same directory to resume.
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
            stop_server,
            ..
        } = self;
        let _ = stop_server.send(());
        if let Err(e) = raft.shutdown().await {
            tracing::warn!(id, "Raft shutdown reported an error: {e}");
        }
        drop(raft);
        let mut server = server;
        if tokio::time::timeout(Duration::from_secs(2), &mut server)
            .await
            .is_err()
        {
            server.abort();
            let _ = server.await;
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

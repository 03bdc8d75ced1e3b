//! The client side of the Raft transport: openraft's `RaftNetworkFactory`
//! over tonic. One lazily-connected `Channel` per peer address is kept and
//! shared by every connection openraft opens to that peer (tonic reconnects
//! it as needed), and by the forwarding of writes, reads and membership
//! changes to the leader (`super::forward`). How a channel is made is a
//! [`Connector`]: plain TCP ([`PlainConnector`]) in tests, mutual TLS in the
//! daemon (a connector built on `Endpoint::connect_with_connector_lazy`).
//!
//! Each RPC carries openraft's request as JSON in `RaftRequest.data`; the
//! reply is JSON of `Result<Response, RaftError>`. A transport failure is
//! reported as `Unreachable` (openraft backs off), a remote Raft error as
//! `RemoteError`. Every answer a peer gives, Raft error or not, is recorded
//! in [`Contacts`]: on the leader that is the heartbeat-driven "last heard
//! from" each member that membership checks use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::transport::{Channel, Endpoint};

use super::pb::raft_client::RaftClient;
use super::pb::RaftRequest;
use super::{ManagerNode, NodeId, TypeConfig};

/// A boxed error a [`Connector`] may return.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Makes the channel to a peer address: the pluggable part of the transport
/// (plain TCP in tests, mutual TLS in the daemon).
///
/// The channel must connect lazily (`Endpoint::connect_lazy`, or
/// `Endpoint::connect_with_connector_lazy` with a custom TLS connector): it is
/// made once per address, shared, and tonic reconnects it when the peer
/// comes back. Start from [`endpoint`] to get the transport's timeouts.
pub trait Connector: Send + Sync + 'static {
    /// A lazily connecting channel to `addr` (`host:port`).
    fn channel(&self, addr: &str) -> Result<Channel, BoxError>;
}

/// The endpoint for `uri` (e.g. `http://host:port`) with the timeouts the
/// Raft transport expects: 500 ms to connect, TCP_NODELAY, HTTP/2 keepalive
/// every 5 s. Connectors build on it.
pub fn endpoint(uri: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(uri.to_string())?
        .connect_timeout(Duration::from_millis(500))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(5)))
}

/// Plain HTTP/2 over TCP, for tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlainConnector;

impl Connector for PlainConnector {
    fn channel(&self, addr: &str) -> Result<Channel, BoxError> {
        Ok(endpoint(&format!("http://{addr}"))?.connect_lazy())
    }
}

/// When each peer last answered an RPC (any answer, including a Raft
/// error: it proves the peer is up and reachable). Shared by clones.
#[derive(Clone, Default)]
pub struct Contacts {
    last: Arc<Mutex<HashMap<NodeId, Instant>>>,
}

impl Contacts {
    fn record(&self, id: NodeId) {
        let mut m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        m.insert(id, Instant::now());
    }

    /// How long ago `id` last answered, if it ever did.
    pub fn since(&self, id: NodeId) -> Option<Duration> {
        let m = self.last.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&id).map(|t| t.elapsed())
    }
}

/// openraft's network factory over tonic.
#[derive(Clone)]
pub struct GrpcNetwork {
    connector: Arc<dyn Connector>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    contacts: Contacts,
}

impl GrpcNetwork {
    /// A factory that makes channels with `connector`.
    pub fn new(connector: Arc<dyn Connector>) -> GrpcNetwork {
        GrpcNetwork {
            connector,
            channels: Arc::default(),
            contacts: Contacts::default(),
        }
    }

    /// The shared channel to `addr`, made by the connector on first use.
    pub fn channel(&self, addr: &str) -> Result<Channel, BoxError> {
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(addr) {
            return Ok(c.clone());
        }
        let c = self.connector.channel(addr)?;
        map.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// A Raft-service client to `addr`.
    pub fn client(&self, addr: &str) -> Result<RaftClient<Channel>, BoxError> {
        self.channel(addr).map(RaftClient::new)
    }

    /// When each peer last answered.
    pub fn contacts(&self) -> &Contacts {
        &self.contacts
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &ManagerNode) -> PeerConnection {
        PeerConnection {
            target,
            node: node.clone(),
            client: self.client(&node.raft_addr).map_err(|e| e.to_string()),
            contacts: self.contacts.clone(),
        }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    node: ManagerNode,
    client: Result<RaftClient<Channel>, String>,
    contacts: Contacts,
}

/// Why a call failed before a Raft answer came back.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The endpoint could not be built (a malformed address).
    #[error("failed to build the endpoint for {addr}: {message}")]
    Endpoint {
        /// Peer address.
        addr: String,
        /// tonic's error, as text (it is not `Clone`).
        message: String,
    },
    /// The RPC failed.
    #[error("Raft RPC to {addr} failed: {source}")]
    Call {
        /// Peer address.
        addr: String,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// The message could not be encoded or decoded.
    #[error("failed to encode or decode a Raft message: {0}")]
    Codec(#[from] serde_json::Error),
}

enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl PeerConnection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, ManagerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let addr = self.node.raft_addr.clone();
        let client = match &self.client {
            Ok(c) => c.clone(),
            Err(e) => {
                let err = TransportError::Endpoint {
                    addr,
                    message: e.clone(),
                };
                return Err(RPCError::Unreachable(Unreachable::new(&err)));
            }
        };
        let data = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Codec(e))))?;
        let mut request = tonic::Request::new(RaftRequest { data });
        request.set_timeout(option.hard_ttl());
        let mut client = client;
        let reply = match rpc {
            Rpc::Append => client.append_entries(request).await,
            Rpc::Vote => client.vote(request).await,
            Rpc::Snapshot => client.install_snapshot(request).await,
        };
        let reply = match reply {
            Ok(r) => {
                self.contacts.record(self.target);
                r.into_inner()
            }
            Err(status) => {
                let err = TransportError::Call {
                    addr,
                    source: status,
                };
                return Err(RPCError::Unreachable(Unreachable::new(&err)));
            }
        };
        let res: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.data)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Codec(e))))?;
        res.map_err(|e| {
            RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                self.node.clone(),
                e,
            ))
        })
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>>
    {
        self.call(Rpc::Append, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ManagerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, &option).await
    }
}

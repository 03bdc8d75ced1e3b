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
use openraft::{LogId, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::watch;
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

/// How much one AppendEntries request may carry, and how long it may take.
#[derive(Clone, Copy, Debug)]
pub struct AppendLimits {
    /// At most this many bytes of encoded entries per request (at least one
    /// entry is always sent, whatever its size). The rest of openraft's batch
    /// follows in the next request (answered as a partial success).
    pub max_bytes: usize,
    /// The deadline of a request carrying entries: this much, plus
    /// `per_mib` for each MiB sent. Independent of openraft's heartbeat-sized
    /// timeout: a request that outlives it keeps running in the background
    /// and openraft's next try collects its answer.
    pub base_timeout: Duration,
    /// Added to `base_timeout` per MiB of the request.
    pub per_mib: Duration,
}

impl Default for AppendLimits {
    fn default() -> Self {
        AppendLimits {
            max_bytes: 512 * 1024,
            base_timeout: Duration::from_secs(5),
            per_mib: Duration::from_secs(5),
        }
    }
}

/// openraft's network factory over tonic.
#[derive(Clone)]
pub struct GrpcNetwork {
    connector: Arc<dyn Connector>,
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    contacts: Contacts,
    limits: AppendLimits,
    peers: Arc<Mutex<HashMap<NodeId, Arc<PeerState>>>>,
}

impl GrpcNetwork {
    /// A factory that makes channels with `connector`.
    pub fn new(connector: Arc<dyn Connector>) -> GrpcNetwork {
        GrpcNetwork::with_limits(connector, AppendLimits::default())
    }

    /// A factory that makes channels with `connector` and sizes and times
    /// AppendEntries requests by `limits`.
    pub fn with_limits(connector: Arc<dyn Connector>, limits: AppendLimits) -> GrpcNetwork {
        GrpcNetwork {
            connector,
            channels: Arc::default(),
            contacts: Contacts::default(),
            limits,
            peers: Arc::default(),
        }
    }

    fn peer(&self, id: NodeId) -> Arc<PeerState> {
        let mut m = self.peers.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(m.entry(id).or_default())
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
            limits: self.limits,
            peer: self.peer(target),
        }
    }
}

/// A connection to one peer.
pub struct PeerConnection {
    target: NodeId,
    node: ManagerNode,
    client: Result<RaftClient<Channel>, String>,
    contacts: Contacts,
    limits: AppendLimits,
    peer: Arc<PeerState>,
}

/// What the transport remembers about one peer across openraft's
/// connections to it: the AppendEntries request running in the background,
/// and the current trouble episode (for logging once per episode).
#[derive(Default)]
pub struct PeerState {
    append: tokio::sync::Mutex<Option<BackgroundAppend>>,
    /// The highest log id the peer acknowledged holding, under which vote.
    confirmed: Mutex<Option<Confirmed>>,
    episode: Mutex<Episode>,
}

/// Under which vote the peer acknowledged holding the log up to which id.
type Confirmed = (Vote<NodeId>, Option<LogId<NodeId>>);

/// An AppendEntries request with entries, sent on its own task so that
/// openraft's heartbeat-sized timeout does not abandon it half-way.
struct BackgroundAppend {
    vote: Vote<NodeId>,
    prev: Option<LogId<NodeId>>,
    /// The last entry it carries.
    last: Option<LogId<NodeId>>,
    /// How many entries it carries.
    sent: usize,
    done: watch::Receiver<Option<Arc<AppendOutcome>>>,
}

type AppendResult =
    Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>>;

/// How a background AppendEntries ended (kept to answer openraft's retry).
enum AppendOutcome {
    Reply(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Unreachable(String),
    Network(String),
}

impl AppendOutcome {
    fn of(res: &AppendResult) -> AppendOutcome {
        match res {
            Ok(r) => AppendOutcome::Reply(Ok(copy_response(r))),
            Err(RPCError::RemoteError(e)) => AppendOutcome::Reply(Err(e.source.clone())),
            Err(RPCError::Unreachable(u)) => AppendOutcome::Unreachable(u.to_string()),
            Err(e) => AppendOutcome::Network(e.to_string()),
        }
    }

    fn to_result(&self, target: NodeId, node: &ManagerNode) -> AppendResult {
        match self {
            AppendOutcome::Reply(Ok(r)) => Ok(copy_response(r)),
            AppendOutcome::Reply(Err(e)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                target,
                node.clone(),
                e.clone(),
            ))),
            AppendOutcome::Unreachable(m) => Err(RPCError::Unreachable(Unreachable::new(
                &openraft::AnyError::error(m),
            ))),
            AppendOutcome::Network(m) => Err(RPCError::Network(NetworkError::new(
                &openraft::AnyError::error(m),
            ))),
        }
    }
}

fn copy_response(r: &AppendEntriesResponse<NodeId>) -> AppendEntriesResponse<NodeId> {
    match r {
        AppendEntriesResponse::Success => AppendEntriesResponse::Success,
        AppendEntriesResponse::PartialSuccess(m) => AppendEntriesResponse::PartialSuccess(*m),
        AppendEntriesResponse::Conflict => AppendEntriesResponse::Conflict,
        AppendEntriesResponse::HigherVote(v) => AppendEntriesResponse::HigherVote(*v),
    }
}

/// A peer's trouble, logged when it starts and when it ends rather than at
/// every failed RPC.
#[derive(Default)]
struct Episode {
    /// Since when RPCs to it fail, and how many did.
    failing: Option<(Instant, u64)>,
    /// Since when it is behind by more than one request can carry, and by
    /// how many entries it was when that started.
    catching_up: Option<(Instant, u64)>,
}

impl PeerConnection {
    /// Record an RPC's failure; log only the first of an episode.
    fn note_failure(&self, rpc: &str, lag: Option<u64>, err: &dyn std::fmt::Display) {
        let mut ep = self.peer.episode.lock().unwrap_or_else(|p| p.into_inner());
        match &mut ep.failing {
            Some((_, n)) => *n += 1,
            None => {
                ep.failing = Some((Instant::now(), 1));
                let behind = lag
                    .map(|l| format!(", {l} entries behind"))
                    .unwrap_or_default();
                tracing::warn!(
                    peer = self.target,
                    addr = %self.node.raft_addr,
                    "manager {} does not answer Raft {rpc} ({err}){behind}; retrying, and logging again when it answers",
                    self.target
                );
            }
        }
    }

    /// Record an answer: ends a failure episode.
    fn note_answer(&self) {
        let mut ep = self.peer.episode.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((since, n)) = ep.failing.take() {
            tracing::info!(
                peer = self.target,
                "manager {} answers Raft again after {:.1}s ({n} failed attempts)",
                self.target,
                since.elapsed().as_secs_f64()
            );
        }
    }

    /// Record how far behind an append found the peer: start or end a
    /// catch-up episode.
    fn note_progress(&self, behind: u64, capped: bool) {
        let mut ep = self.peer.episode.lock().unwrap_or_else(|p| p.into_inner());
        match (&ep.catching_up, capped) {
            (None, true) => {
                ep.catching_up = Some((Instant::now(), behind));
                tracing::info!(
                    peer = self.target,
                    "manager {} is {behind} entries behind the leader: catching up",
                    self.target
                );
            }
            (Some((since, from)), false) => {
                tracing::info!(
                    peer = self.target,
                    "manager {} caught up {from} entries in {:.1}s",
                    self.target,
                    since.elapsed().as_secs_f64()
                );
                ep.catching_up = None;
            }
            _ => {}
        }
    }
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

#[derive(Clone, Copy)]
enum Rpc {
    Append,
    Vote,
    Snapshot,
}

impl Rpc {
    fn name(self) -> &'static str {
        match self {
            Rpc::Append => "AppendEntries",
            Rpc::Vote => "Vote",
            Rpc::Snapshot => "InstallSnapshot",
        }
    }
}

const MIB: f64 = 1024.0 * 1024.0;

/// The gRPC deadline of a call openraft bounds itself (it drops the call
/// at `hard_ttl`): longer, so that a slow answer is reported by openraft
/// as a timeout (retried at once) and not by tonic as an unreachable peer
/// (which openraft backs off from for half a second, starving the peer of
/// heartbeats).
fn outlive(option: &RPCOption) -> Duration {
    option.hard_ttl() * 2 + Duration::from_millis(500)
}

/// One RPC on `client`: the encoded request `data`, bounded by `timeout`;
/// the answer decoded. Records the contact when the peer answered.
async fn send<Resp, E>(
    client: RaftClient<Channel>,
    target: NodeId,
    node: &ManagerNode,
    contacts: &Contacts,
    rpc: Rpc,
    data: Vec<u8>,
    timeout: Duration,
) -> Result<Resp, RPCError<NodeId, ManagerNode, RaftError<NodeId, E>>>
where
    Resp: DeserializeOwned,
    E: std::error::Error + DeserializeOwned,
{
    let mut request = tonic::Request::new(RaftRequest { data });
    request.set_timeout(timeout);
    let mut client = client;
    let reply = match rpc {
        Rpc::Append => client.append_entries(request).await,
        Rpc::Vote => client.vote(request).await,
        Rpc::Snapshot => client.install_snapshot(request).await,
    };
    let reply = match reply {
        Ok(r) => {
            contacts.record(target);
            r.into_inner()
        }
        Err(status) => {
            let err = TransportError::Call {
                addr: node.raft_addr.clone(),
                source: status,
            };
            return Err(RPCError::Unreachable(Unreachable::new(&err)));
        }
    };
    let res: Result<Resp, RaftError<NodeId, E>> = serde_json::from_slice(&reply.data)
        .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Codec(e))))?;
    res.map_err(|e| RPCError::RemoteError(RemoteError::new_with_node(target, node.clone(), e)))
}

impl PeerConnection {
    fn client(&self) -> Result<RaftClient<Channel>, TransportError> {
        match &self.client {
            Ok(c) => Ok(c.clone()),
            Err(e) => Err(TransportError::Endpoint {
                addr: self.node.raft_addr.clone(),
                message: e.clone(),
            }),
        }
    }

    async fn call<Req, Resp, E>(
        &mut self,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, RPCError<NodeId, ManagerNode, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let client = match self.client() {
            Ok(c) => c,
            Err(err) => {
                self.note_failure(rpc.name(), None, &err);
                return Err(RPCError::Unreachable(Unreachable::new(&err)));
            }
        };
        let data = serde_json::to_vec(req)
            .map_err(|e| RPCError::Network(NetworkError::new(&TransportError::Codec(e))))?;
        let res = send(
            client,
            self.target,
            &self.node,
            &self.contacts,
            rpc,
            data,
            timeout,
        )
        .await;
        match &res {
            Err(e @ (RPCError::Unreachable(_) | RPCError::Network(_))) => {
                self.note_failure(rpc.name(), None, e)
            }
            _ => self.note_answer(),
        }
        res
    }

    /// Report an append's result to openraft: a capped request that
    /// succeeded is a partial success up to its last entry.
    fn finish_append(
        &self,
        vote: &Vote<NodeId>,
        res: AppendResult,
        partial: bool,
        last: Option<LogId<NodeId>>,
        behind: u64,
    ) -> AppendResult {
        match res {
            Ok(AppendEntriesResponse::Success) => {
                self.note_answer();
                self.confirm(vote, last);
                self.note_progress(behind, partial);
                Ok(if partial {
                    AppendEntriesResponse::PartialSuccess(last)
                } else {
                    AppendEntriesResponse::Success
                })
            }
            Ok(other) => {
                self.note_answer();
                if let AppendEntriesResponse::PartialSuccess(m) = &other {
                    self.confirm(vote, *m);
                }
                Ok(other)
            }
            Err(e @ RPCError::RemoteError(_)) => {
                self.note_answer();
                Err(e)
            }
            Err(e) => {
                self.note_failure("AppendEntries", Some(behind), &e);
                Err(e)
            }
        }
    }

    /// Note what a successful answer proves the peer holds (for this
    /// leader's vote).
    fn confirm(&self, vote: &Vote<NodeId>, upto: Option<LogId<NodeId>>) {
        let mut c = self
            .peer
            .confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        match &mut *c {
            Some((v, l)) if v == vote => *l = (*l).max(upto),
            _ => *c = Some((*vote, upto)),
        }
    }

    /// True if the peer is known to hold the log up to `prev` (a success
    /// under the same vote covered it).
    fn confirmed(&self, vote: &Vote<NodeId>, prev: Option<LogId<NodeId>>) -> bool {
        let c = self
            .peer
            .confirmed
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // openraft never takes "matching nothing" as progress.
        prev.is_some() && matches!(&*c, Some((v, l)) if v == vote && *l >= prev)
    }

    /// Tell the peer the leader is alive while a long append runs, so it
    /// does not start an election: an empty AppendEntries that claims
    /// nothing (no previous entry, no commit index), on its own task.
    fn keepalive(&self, vote: Vote<NodeId>) {
        let Ok(client) = self.client() else {
            return;
        };
        let keepalive = AppendEntriesRequest::<TypeConfig> {
            vote,
            prev_log_id: None,
            entries: Vec::new(),
            leader_commit: None,
        };
        let Ok(data) = serde_json::to_vec(&keepalive) else {
            return;
        };
        let (target, node, contacts) = (self.target, self.node.clone(), self.contacts.clone());
        let timeout = self.limits.base_timeout;
        tokio::spawn(async move {
            let _: AppendResult =
                send(client, target, &node, &contacts, Rpc::Append, data, timeout).await;
        });
    }

    /// Wait for the running append to end, but not past `soft`: if it is
    /// still running then and the peer is known to hold `rpc.prev_log_id`,
    /// send the peer an empty AppendEntries (so it keeps hearing from the
    /// leader) and answer openraft "no progress yet" (a partial success at
    /// `prev_log_id`, which the peer is known to hold) instead of letting
    /// openraft's heartbeat-sized timeout turn it into an error. `None`:
    /// still running, answer given; openraft's next try waits again.
    async fn wait_running(
        &self,
        done: &mut watch::Receiver<Option<Arc<AppendOutcome>>>,
        rpc: &AppendEntriesRequest<TypeConfig>,
        soft: Duration,
    ) -> Result<Option<Arc<AppendOutcome>>, AppendResult> {
        let ended = |o: &Option<Arc<AppendOutcome>>| o.is_some();
        if let Ok(r) = tokio::time::timeout(soft, done.wait_for(ended)).await {
            return Ok(r.ok().and_then(|o| o.clone()));
        }
        self.keepalive(rpc.vote);
        if !self.confirmed(&rpc.vote, rpc.prev_log_id) {
            // Nothing safe to answer yet: openraft's timeout ends this try.
            return Ok(done.wait_for(ended).await.ok().and_then(|o| o.clone()));
        }
        Err(Ok(AppendEntriesResponse::PartialSuccess(rpc.prev_log_id)))
    }

    /// AppendEntries with entries: at most `limits.max_bytes` of them per
    /// request, sent on a background task with a deadline proportional to
    /// the bytes, so that openraft's heartbeat-sized timeout (which drops
    /// this future) does not abandon a request half-way: its next try for
    /// the same range waits for the running one and takes its answer.
    async fn append_with_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> AppendResult {
        let behind = rpc
            .entries
            .last()
            .map(|e| e.log_id.index)
            .max(rpc.leader_commit.map(|l| l.index))
            .unwrap_or(0)
            .saturating_sub(rpc.prev_log_id.map(|l| l.index).unwrap_or(0));
        let soft = option.soft_ttl();
        let peer = Arc::clone(&self.peer);
        let mut slot = peer.append.lock().await;
        if let Some(bg) = slot.as_ref() {
            // One request at a time per peer: wait for the running one (a
            // dropped wait leaves it running for the next try).
            let mut done = bg.done.clone();
            let same = bg.vote == rpc.vote && bg.prev == rpc.prev_log_id;
            let outcome = if same {
                match self.wait_running(&mut done, &rpc, soft).await {
                    Ok(o) => o,
                    Err(answer) => return answer,
                }
            } else {
                done.wait_for(|o| o.is_some())
                    .await
                    .ok()
                    .and_then(|o| o.clone())
            };
            let bg = slot.take();
            if let (Some(bg), Some(outcome), true) = (bg, outcome, same) {
                if let Some(pos) = rpc.entries.iter().position(|e| Some(e.log_id) == bg.last) {
                    debug_assert_eq!(pos + 1, bg.sent);
                    let res = outcome.to_result(self.target, &self.node);
                    let partial = pos + 1 < rpc.entries.len();
                    return self.finish_append(&rpc.vote, res, partial, bg.last, behind);
                }
            }
        }
        let client = match self.client() {
            Ok(c) => c,
            Err(err) => {
                self.note_failure("AppendEntries", Some(behind), &err);
                return Err(RPCError::Unreachable(Unreachable::new(&err)));
            }
        };
        let max_bytes = self.limits.max_bytes;
        // Encoding a catch-up batch is CPU work: off the runtime's threads,
        // so heartbeats keep their timing.
        let encoded = tokio::task::spawn_blocking(move || {
            let mut rpc = rpc;
            let mut data = serde_json::to_vec(&rpc)?;
            let total = rpc.entries.len();
            let mut sent = total;
            if data.len() > max_bytes && total > 1 {
                // Too big for one request: as many entries as fit (at least one).
                let mut bytes = 0;
                let mut n = 0;
                for e in &rpc.entries {
                    let b = serde_json::to_vec(e)?.len();
                    if n > 0 && bytes + b > max_bytes {
                        break;
                    }
                    bytes += b;
                    n += 1;
                }
                let rest = rpc.entries.split_off(n);
                data = serde_json::to_vec(&rpc)?;
                rpc.entries.extend(rest);
                sent = n;
            }
            Ok::<_, serde_json::Error>((rpc, data, sent))
        })
        .await;
        let codec = |e| RPCError::Network(NetworkError::new(&TransportError::Codec(e)));
        let (rpc, data, sent) = match encoded {
            Ok(r) => r.map_err(codec)?,
            Err(e) => {
                return Err(RPCError::Network(NetworkError::new(
                    &openraft::AnyError::error(format!("encoding AppendEntries failed: {e}")),
                )))
            }
        };
        let total = rpc.entries.len();
        let partial = sent < total;
        let last = rpc.entries.get(sent - 1).map(|e| e.log_id);
        let timeout =
            self.limits.base_timeout + self.limits.per_mib.mul_f64(data.len() as f64 / MIB);
        let (tx, rx) = watch::channel(None);
        *slot = Some(BackgroundAppend {
            vote: rpc.vote,
            prev: rpc.prev_log_id,
            last,
            sent,
            done: rx.clone(),
        });
        let (target, node, contacts) = (self.target, self.node.clone(), self.contacts.clone());
        tracing::debug!(
            peer = target,
            prev = ?rpc.prev_log_id,
            sent,
            total,
            bytes = data.len(),
            "AppendEntries sent in the background"
        );
        tokio::spawn(async move {
            let start = Instant::now();
            let res: AppendResult =
                send(client, target, &node, &contacts, Rpc::Append, data, timeout).await;
            tracing::debug!(peer = target, elapsed = ?start.elapsed(), ?res, "background AppendEntries ended");
            tx.send_replace(Some(Arc::new(AppendOutcome::of(&res))));
        });
        let mut done = rx;
        let outcome = match self.wait_running(&mut done, &rpc, soft).await {
            Ok(o) => o,
            Err(answer) => return answer,
        };
        *slot = None;
        let res = match outcome {
            Some(o) => o.to_result(self.target, &self.node),
            None => Err(RPCError::Network(NetworkError::new(
                &openraft::AnyError::error("the AppendEntries task ended without an answer"),
            ))),
        };
        self.finish_append(&rpc.vote, res, partial, last, behind)
    }
}

impl RaftNetwork<TypeConfig> for PeerConnection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>>
    {
        if rpc.entries.is_empty() {
            // A heartbeat (or a read's leadership check): small, openraft's
            // deadline fits.
            let (vote, prev) = (rpc.vote, rpc.prev_log_id);
            let res = self.call(Rpc::Append, &rpc, outlive(&option)).await;
            if let Ok(AppendEntriesResponse::Success) = &res {
                self.confirm(&vote, prev);
            }
            return res;
        }
        self.append_with_entries(rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, ManagerNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(Rpc::Snapshot, &rpc, outlive(&option)).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, ManagerNode, RaftError<NodeId>>> {
        self.call(Rpc::Vote, &rpc, outlive(&option)).await
    }

    /// Retry an unreachable peer every 100 ms rather than openraft's 500:
    /// a restarted manager hears from the leader before its own election
    /// timeout fires (a refused connection costs nothing; failures are
    /// logged once per episode).
    fn backoff(&self) -> openraft::network::Backoff {
        openraft::network::Backoff::new(std::iter::repeat(Duration::from_millis(100)))
    }
}

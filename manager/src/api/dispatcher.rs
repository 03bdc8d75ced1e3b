//! The dispatcher service: nodes join, become Raft voters (managers), renew
//! their certificates, and hold their session with the leader (see
//! [`super::session`]: heartbeats, assignments, task states, logs).

use std::sync::Arc;
use std::time::Duration;

use agent_common::dispatcher_proto::dispatcher_server::Dispatcher;
use agent_common::dispatcher_proto::{
    JoinRaftReply, JoinRaftRequest, JoinReply, JoinRequest, RenewReply, RenewRequest, SessionDown,
    SessionUp,
};
use agent_common::objects::{Meta, Node, NodeRole as ObjRole, NodeStatus};
use agent_common::pki::{JoinToken, NodeCsr, NodeId, NodeRole};
use agent_common::tls::grpc::Caller;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::session::{self, period};
use super::{internal, store_status};
use crate::daemon::{check_token, stored_role, Manager};
use crate::raft::ManagerNode;

/// The dispatcher, on the cluster port.
pub struct DispatcherApi {
    m: Arc<Manager>,
}

impl DispatcherApi {
    /// Serves `m`.
    pub fn new(m: Arc<Manager>) -> Self {
        DispatcherApi { m }
    }
}

fn caller_node(m: &Manager, caller: &Caller) -> Result<String, Status> {
    caller.check_current(&m.revocations)?;
    match caller {
        Caller::Node(cert) if cert.role() == NodeRole::Client => Err(Status::failed_precondition(
            "this is a node-only call (nodes make it to managers): a client certificate may use the control API (`flotilla` commands) only",
        )),
        Caller::Node(cert) => Ok(cert.node_id().to_string()),
        Caller::Local => Err(Status::failed_precondition(
            "this call is for cluster nodes over the cluster port",
        )),
        Caller::Anonymous => Err(Status::unauthenticated(
            "this call needs the node certificate of a cluster member",
        )),
    }
}

#[tonic::async_trait]
impl Dispatcher for DispatcherApi {
    async fn join(&self, request: Request<JoinRequest>) -> Result<Response<JoinReply>, Status> {
        let daemon = request
            .metadata()
            .get("x-flotilla-daemon")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("flotilla-worker")
            .to_string();
        if let Some(ip) = request.remote_addr().map(|a| a.ip()) {
            join_limiter().check(ip, std::time::Instant::now())?;
        }
        let req = request.into_inner();
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let m = &self.m;
        // The token first, against this manager's own copy: a caller without
        // a valid token costs no Raft round trip.
        let local = m
            .cluster()
            .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        check_token(m, &local, &token).map_err(Status::permission_denied)?;
        let cluster = m
            .store()
            .read_linearizable(|tx| {
                tx.list::<agent_common::objects::Cluster>()
                    .into_iter()
                    .next()
            })
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::unavailable("the cluster is not initialized yet"))?;
        check_token(m, &cluster, &token).map_err(Status::permission_denied)?;
        let csr =
            NodeCsr::from_pem(&req.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if req.hostname.trim().is_empty() || req.hostname.len() > 253 {
            return Err(Status::invalid_argument(
                "the joining node sent no valid hostname",
            ));
        }
        let role = token.role();
        if role == NodeRole::Client {
            return Err(Status::invalid_argument("a client cannot join as a node"));
        }
        let node_id = NodeId::generate().map_err(internal)?;
        let advertise = req.advertise_addr.trim().to_string();
        let host_only = advertise
            .parse::<std::net::SocketAddr>()
            .map(|s| s.ip().to_string())
            .unwrap_or_else(|_| advertise.clone());
        if !host_only.is_empty() {
            // The address becomes a name in the node's certificate: a role name or another
            // node's ID there would let the certificate pass for someone else.
            agent_common::pki::check_node_address(&host_only)
                .map_err(|e| Status::invalid_argument(format!("--advertise-addr: {e}")))?;
        }
        let validity = Duration::from_secs(if cluster.node_cert_validity_secs == 0 {
            agent_common::pki::DEFAULT_NODE_CERT_VALIDITY.as_secs()
        } else {
            cluster.node_cert_validity_secs
        });
        let cert = m
            .sign(&csr, node_id.as_str(), role, Some(&host_only), validity)
            .map_err(|e| Status::invalid_argument(format!("failed to sign the request: {e:#}")))?;
        let raft_id = if role == NodeRole::Manager {
            rand_raft_id()
        } else {
            0
        };
        let node = Node {
            meta: Meta {
                id: node_id.to_string(),
                ..Default::default()
            },
            hostname: req.hostname.trim().to_string(),
            role: match role {
                NodeRole::Manager => ObjRole::Manager,
                _ => ObjRole::Worker,
            },
            status: NodeStatus::Unknown,
            addr: host_only,
            raft_id,
            daemon,
            ..Default::default()
        };
        m.store().create(node).await.map_err(store_status)?;
        tracing::info!(node = %node_id, role = role.as_str(), hostname = %req.hostname, "node joined");
        let identity = m.identity.borrow().clone();
        let mut managers = m.manager_addrs();
        if managers.is_empty() {
            managers.push(m.cluster_addr.clone());
        }
        Ok(Response::new(JoinReply {
            node_id: node_id.to_string(),
            cert_pem: cert.to_pem(),
            ca_pem: identity.ca().to_pem(),
            ca_key_pem: if role == NodeRole::Manager {
                m.ca.key_pem()
            } else {
                String::new()
            },
            managers,
            raft_id,
            heartbeat_period_ms: period(m).as_millis() as u64,
        }))
    }

    async fn join_raft(
        &self,
        request: Request<JoinRaftRequest>,
    ) -> Result<Response<JoinRaftReply>, Status> {
        let caller = Caller::of(&request);
        caller.require(NodeRole::Manager)?;
        let node_id = caller_node(&self.m, &caller)?;
        let req = request.into_inner();
        let m = &self.m;
        let node: Node = m
            .store()
            .read_linearizable(|tx| tx.get::<Node>(&node_id))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::permission_denied("this node is not in the cluster"))?;
        if node.role != ObjRole::Manager || node.raft_id != req.raft_id || req.raft_id == 0 {
            return Err(Status::permission_denied(format!(
                "node {node_id} is not recorded as manager with Raft ID {}",
                req.raft_id
            )));
        }
        let member = ManagerNode {
            raft_addr: req.addr.clone(),
            api_addr: req.addr.clone(),
        };
        m.raft
            .add_manager(req.raft_id, member)
            .await
            .map_err(|e| Status::unavailable(format!("failed to add the manager to Raft: {e}")))?;
        tracing::info!(node = %node_id, raft_id = req.raft_id, addr = %req.addr, "manager added to Raft");
        Ok(Response::new(JoinRaftReply {}))
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewReply>, Status> {
        let caller = Caller::of(&request);
        let node_id = caller_node(&self.m, &caller)?;
        let req = request.into_inner();
        let m = &self.m;
        let node: Node = m
            .store()
            .read_linearizable(|tx| tx.get::<Node>(&node_id))
            .await
            .map_err(store_status)?
            .ok_or_else(|| Status::permission_denied("this node was removed from the cluster"))?;
        let csr =
            NodeCsr::from_pem(&req.csr_pem).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !node.addr.is_empty() {
            agent_common::pki::check_node_address(&node.addr).map_err(|e| {
                Status::invalid_argument(format!("the node's recorded address is refused: {e}"))
            })?;
        }
        let validity = Duration::from_secs(
            m.cluster()
                .map(|c| c.node_cert_validity_secs)
                .filter(|s| *s > 0)
                .unwrap_or(agent_common::pki::DEFAULT_NODE_CERT_VALIDITY.as_secs()),
        );
        let cert = m
            .sign(
                &csr,
                &node_id,
                stored_role(&node),
                Some(&node.addr),
                validity,
            )
            .map_err(|e| Status::invalid_argument(format!("failed to sign the request: {e:#}")))?;
        Ok(Response::new(RenewReply {
            cert_pem: cert.to_pem(),
            ca_pem: m.identity.borrow().ca().to_pem(),
        }))
    }

    type SessionStream = ReceiverStream<Result<SessionDown, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<SessionUp>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let caller = Caller::of(&request);
        let node_id = caller_node(&self.m, &caller)?;
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        // A leader serves sessions from a store that has applied everything
        // committed before its term (a fresh leader may not have yet: the
        // node would be sent stale assignments).
        let current = self.m.raft.is_leader()
            && matches!(
                tokio::time::timeout(
                    Duration::from_secs(1),
                    self.m.store().read_linearizable(|_| ())
                )
                .await,
                Ok(Ok(()))
            );
        if !current {
            // Only the leader holds sessions: name it and hang up.
            let _ = tx.send(session::redirect(&self.m)).await;
        } else {
            tokio::spawn(session::run(
                Arc::clone(&self.m),
                node_id,
                caller,
                request.into_inner(),
                tx,
            ));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

fn rand_raft_id() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(1..u64::MAX)
}

/// Join attempts allowed per source address in a burst, then one more per
/// [`JOIN_REFILL`].
const JOIN_BURST: f64 = 20.0;

/// How often a source address earns one more join attempt.
const JOIN_REFILL: Duration = Duration::from_millis(500);

/// Source addresses tracked at most (a flood from many addresses forgets the
/// quiet ones first).
const JOIN_TRACKED: usize = 4096;

/// A token bucket per source IP address for `Join`.
#[derive(Default)]
pub struct JoinLimiter {
    buckets:
        std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, (f64, std::time::Instant)>>,
}

fn join_limiter() -> &'static JoinLimiter {
    static LIMITER: std::sync::OnceLock<JoinLimiter> = std::sync::OnceLock::new();
    LIMITER.get_or_init(JoinLimiter::default)
}

impl JoinLimiter {
    /// Takes one attempt from `ip`'s bucket, or refuses when it is empty.
    #[allow(clippy::result_large_err)]
    pub fn check(&self, ip: std::net::IpAddr, now: std::time::Instant) -> Result<(), Status> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let refill = |(tokens, at): (f64, std::time::Instant)| {
            let earned =
                now.saturating_duration_since(at).as_secs_f64() / JOIN_REFILL.as_secs_f64();
            (f64::min(JOIN_BURST, tokens + earned), now)
        };
        if !buckets.contains_key(&ip) && buckets.len() >= JOIN_TRACKED {
            buckets.retain(|_, b| refill(*b).0 < JOIN_BURST);
            if buckets.len() >= JOIN_TRACKED {
                buckets.clear();
            }
        }
        let bucket = buckets.entry(ip).or_insert((JOIN_BURST, now));
        let (tokens, at) = refill(*bucket);
        if tokens < 1.0 {
            *bucket = (tokens, at);
            return Err(Status::resource_exhausted(format!(
                "too many join attempts from {ip}: wait a few seconds and try again"
            )));
        }
        *bucket = (tokens - 1.0, at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joins_are_rate_limited_per_source_address() {
        let limiter = JoinLimiter::default();
        let t0 = std::time::Instant::now();
        let a: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let b: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..JOIN_BURST as usize {
            limiter.check(a, t0).unwrap();
        }
        let err = limiter.check(a, t0).unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.message().contains("too many join attempts"), "{err}");
        // Another address is not affected; time gives attempts back.
        limiter.check(b, t0).unwrap();
        limiter.check(a, t0 + JOIN_REFILL).unwrap();
        assert!(limiter.check(a, t0 + JOIN_REFILL).is_err());
    }
}

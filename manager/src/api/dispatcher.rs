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
        let req = request.into_inner();
        let token =
            JoinToken::parse(&req.token).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let m = &self.m;
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

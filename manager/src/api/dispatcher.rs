//! The dispatcher service: nodes join, become Raft voters (managers), renew
//! their certificates and heartbeat. Liveness is the leader's job: it keeps
//! when each node was last heard of in memory, and marks nodes that miss
//! [`MISSED_HEARTBEATS`] periods down (and ready again when they return).

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::dispatcher_proto::dispatcher_server::Dispatcher;
use agent_common::dispatcher_proto::{
    AssignmentsReply, AssignmentsRequest, HeartbeatReply, HeartbeatRequest, JoinRaftReply,
    JoinRaftRequest, JoinReply, JoinRequest, LogRequestsPoll, LogRequestsReply, PublishLogsReply,
    PublishLogsRequest, RenewReply, RenewRequest, TaskStatusReply, TaskStatusRequest,
};
use agent_common::objects::Task;
use agent_common::objects::{Meta, Node, NodeRole as ObjRole, NodeStatus};
use agent_common::pki::{JoinToken, NodeCsr, NodeId, NodeRole};
use agent_common::task_state::{TaskState, Writer};
use agent_common::tls::grpc::Caller;
use tonic::{Request, Response, Status};

use super::{internal, store_status};
use crate::daemon::{check_token, stored_role, Manager};
use crate::raft::ManagerNode;

/// A node is marked down after this many heartbeat periods without one.
pub const MISSED_HEARTBEATS: u32 = 3;

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

fn period(m: &Manager) -> Duration {
    let ms = m
        .cluster()
        .map(|c| c.heartbeat_period_ms)
        .filter(|ms| *ms > 0)
        .unwrap_or(1000);
    Duration::from_millis(ms)
}

fn caller_node(m: &Manager, caller: &Caller) -> Result<String, Status> {
    caller.check_current(&m.revocations)?;
    match caller {
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

    async fn assignments(
        &self,
        request: Request<AssignmentsRequest>,
    ) -> Result<Response<AssignmentsReply>, Status> {
        let caller = Caller::of(&request);
        let node_id = caller_node(&self.m, &caller)?;
        let req = request.into_inner();
        let m = &self.m;
        let wait = Duration::from_millis(u64::from(req.wait_ms).min(30_000));
        let deadline = tokio::time::Instant::now() + wait;
        let mut watch = m.store().watch();
        loop {
            let tasks = node_tasks(m, &node_id);
            let version = assignment_version(&tasks);
            if version != req.known_version || tokio::time::Instant::now() >= deadline {
                let tasks_json = serde_json::to_string(&tasks).map_err(internal)?;
                return Ok(Response::new(AssignmentsReply {
                    version,
                    tasks_json,
                }));
            }
            // Wait for any commit (or the deadline), then look again.
            let _ = tokio::time::timeout_at(deadline, watch.recv()).await;
        }
    }

    async fn update_task_status(
        &self,
        request: Request<TaskStatusRequest>,
    ) -> Result<Response<TaskStatusReply>, Status> {
        let caller = Caller::of(&request);
        let node_id = caller_node(&self.m, &caller)?;
        let req = request.into_inner();
        let m = &self.m;
        for st in req.statuses {
            let Some(to) = parse_state(&st.state) else {
                return Err(Status::invalid_argument(format!(
                    "unknown task state {:?}",
                    st.state
                )));
            };
            for _attempt in 0..10 {
                let Some(mut task) = m.store().view(|tx| tx.get::<Task>(&st.task_id)) else {
                    break; // removed meanwhile: nothing to report to
                };
                if task.node_id.as_deref() != Some(node_id.as_str()) {
                    return Err(Status::permission_denied(format!(
                        "task {} is not assigned to node {node_id}",
                        st.task_id
                    )));
                }
                if task.state == to {
                    break;
                }
                if let Err(e) = task.state.transition(to, Writer::Agent) {
                    // Stale or repeated reports are normal after reconnects.
                    tracing::debug!(task = %task.meta.id, "ignored status report: {e}");
                    break;
                }
                task.state = to;
                if to == TaskState::Running {
                    task.running_at = Some(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(0),
                    );
                }
                task.message = st.message.clone();
                if !st.container_id.is_empty() {
                    task.container_id = st.container_id.clone();
                }
                if st.has_exit_code {
                    task.exit_code = Some(st.exit_code);
                }
                if !st.error.is_empty() {
                    task.error = st.error.clone();
                }
                match m.store().put(task).await {
                    Ok(_) => break,
                    Err(crate::store::StoreError::Refused(crate::store::Refusal::Conflict {
                        ..
                    })) => continue,
                    Err(e) => return Err(store_status(e)),
                }
            }
        }
        Ok(Response::new(TaskStatusReply {}))
    }

    async fn log_requests(
        &self,
        request: Request<LogRequestsPoll>,
    ) -> Result<Response<LogRequestsReply>, Status> {
        let caller = Caller::of(&request);
        let node_id = caller_node(&self.m, &caller)?;
        let m = &self.m;
        if !m.raft.is_leader() {
            // Wait a little so a node without a leader does not spin.
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Ok(Response::new(LogRequestsReply {
                accepted: false,
                leader_addr: m.leader_addr().unwrap_or_default(),
                requests: Vec::new(),
            }));
        }
        let wait = Duration::from_millis(u64::from(request.get_ref().wait_ms).min(30_000));
        let requests = m.logs.take(&node_id, wait).await;
        Ok(Response::new(LogRequestsReply {
            accepted: true,
            leader_addr: m.cluster_addr.clone(),
            requests,
        }))
    }

    async fn publish_logs(
        &self,
        request: Request<PublishLogsRequest>,
    ) -> Result<Response<PublishLogsReply>, Status> {
        let caller = Caller::of(&request);
        caller_node(&self.m, &caller)?;
        let r = request.into_inner();
        self.m.logs.publish(&r.request_id, r.lines, r.error);
        Ok(Response::new(PublishLogsReply {}))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatReply>, Status> {
        let caller = Caller::of(&request);
        let node_id = caller_node(&self.m, &caller)?;
        let req = request.into_inner();
        let m = &self.m;
        let period_ms = period(m).as_millis() as u64;
        if !m.raft.is_leader() {
            return Ok(Response::new(HeartbeatReply {
                accepted: false,
                leader_addr: m.leader_addr().unwrap_or_default(),
                period_ms,
                managers: m.manager_addrs(),
                role: String::new(),
            }));
        }
        if let Ok(mut l) = m.liveness.lock() {
            l.insert(node_id.clone(), Instant::now());
        }
        let node: Option<Node> = m.store().view(|tx| tx.get::<Node>(&node_id));
        let Some(node) = node else {
            return Err(Status::permission_denied(
                "this node was removed from the cluster; join it again with a token",
            ));
        };
        let host_only = req
            .addr
            .parse::<std::net::SocketAddr>()
            .map(|s| s.ip().to_string())
            .unwrap_or_else(|_| req.addr.clone());
        let needs_write = node.status != NodeStatus::Ready
            || (!req.hostname.is_empty() && node.hostname != req.hostname)
            || (!host_only.is_empty() && node.addr != host_only);
        let role = stored_role(&node).as_str().to_string();
        if needs_write {
            let mut n = node;
            n.status = NodeStatus::Ready;
            if !req.hostname.is_empty() {
                n.hostname = req.hostname.clone();
            }
            if !host_only.is_empty() {
                n.addr = host_only;
            }
            // A conflict means someone else just wrote the node: the next
            // heartbeat tries again.
            if let Err(e) = m.store().put(n).await {
                tracing::debug!(node = %node_id, "marking the node ready failed: {e}");
            }
        }
        Ok(Response::new(HeartbeatReply {
            accepted: true,
            leader_addr: m.cluster_addr.clone(),
            period_ms,
            managers: m.manager_addrs(),
            role,
        }))
    }
}

/// A fingerprint of a node's assigned tasks (ids and versions): changes
/// whenever one of them is written, added or removed.
fn assignment_version(tasks: &[Task]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in tasks {
        t.meta.id.hash(&mut h);
        t.meta.version.hash(&mut h);
    }
    // 0 means "nothing known yet" to the agent.
    h.finish().max(1)
}

fn node_tasks(m: &Manager, node_id: &str) -> Vec<Task> {
    let mut tasks = m
        .store()
        .view(|tx| tx.find::<Task>(|t| t.node_id.as_deref() == Some(node_id)));
    tasks.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
    tasks
}

fn parse_state(s: &str) -> Option<TaskState> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).ok()
}

fn rand_raft_id() -> u64 {
    use rand::Rng;
    rand::thread_rng().gen_range(1..u64::MAX)
}

/// While this manager leads: nodes not heard from for
/// [`MISSED_HEARTBEATS`] periods are marked down. A node gets a full grace
/// period from the moment this manager became leader.
pub async fn monitor_liveness(m: Arc<Manager>) {
    let mut was_leader = false;
    loop {
        let p = period(&m);
        tokio::time::sleep(p / 2).await;
        let leader = m.raft.is_leader();
        if !leader {
            was_leader = false;
            continue;
        }
        let now = Instant::now();
        if !was_leader {
            // New leader: everyone starts with a fresh grace period.
            was_leader = true;
            if let Ok(mut l) = m.liveness.lock() {
                l.clear();
                for n in m.store().view(|tx| tx.list::<Node>()) {
                    l.insert(n.meta.id.clone(), now);
                }
            }
            continue;
        }
        let grace = p * MISSED_HEARTBEATS;
        let nodes = m.store().view(|tx| tx.list::<Node>());
        let mut late = Vec::new();
        if let Ok(mut l) = m.liveness.lock() {
            for n in &nodes {
                let seen = *l.entry(n.meta.id.clone()).or_insert(now);
                if n.status != NodeStatus::Down && now.duration_since(seen) > grace {
                    late.push(n.clone());
                }
            }
        }
        for mut n in late {
            let id = n.meta.id.clone();
            n.status = NodeStatus::Down;
            match m.store().put(n).await {
                Ok(_) => {
                    tracing::warn!(node = %id, "node missed {MISSED_HEARTBEATS} heartbeats: marked down")
                }
                Err(e) => tracing::debug!(node = %id, "marking the node down failed: {e}"),
            }
        }
    }
}

//! The control API: nodes, cluster info, join tokens. Served on the local
//! socket (root on this machine) and on the cluster port to callers holding a
//! manager certificate; worker certificates are refused.
//!
//! Reads are linearizable (a follower asks the leader how far to catch up)
//! unless the request asks for this manager's local copy; writes go through
//! Raft from whichever manager receives them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use agent_common::cluster::{ClusterInfo, ManagerStatus, NodeView};
use agent_common::control_proto::control_server::Control;
use agent_common::control_proto::{
    ClientCertReply, ClientCertRequest, CreateServiceRequest, Empty, JoinTokenReply,
    JoinTokenRequest, JsonReply, ListTasksRequest, NodeRef, ReadRequest, RemoveNodeRequest,
    RevokeClientCertRequest, ServiceLogsRequest, ServiceRef, UpdateNodeRequest,
    UpdateServiceRequest,
};
use agent_common::objects::{
    Availability, ClientCertRecord, Cluster, DrainOrder, Node, NodeRole as ObjRole, NodeStatus,
};
use agent_common::pki::NodeRole;
use agent_common::tls::grpc::Caller;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use super::store_status;
use crate::daemon::Manager;
use crate::raft::ClusterInfo as RaftInfo;
use crate::store::{Action, Refusal, StoreError};

/// The control service.
pub struct ControlApi {
    m: Arc<Manager>,
}

impl ControlApi {
    /// Serves `m`.
    pub fn new(m: Arc<Manager>) -> Self {
        ControlApi { m }
    }

    /// Only managers' certificates (and the local socket) may call; and this
    /// node must still be a manager.
    #[allow(clippy::result_large_err)]
    fn authorize<T>(&self, request: &Request<T>) -> Result<(), Status> {
        // Managers and remote clients (`flotilla-manager client-cert`) may
        // call; workers' certificates may not.
        let caller = Caller::of(request);
        caller.check_current(&self.m.revocations)?;
        match &caller {
            Caller::Node(cert) if cert.role() == NodeRole::Client => {
                self.client_record(cert)?;
            }
            _ => caller.require(NodeRole::Manager)?,
        }
        let raft_id = self.m.raft.id();
        let is_member = self
            .m
            .raft
            .metrics()
            .membership_config
            .membership()
            .get_node(&raft_id)
            .is_some();
        let demoted = self
            .m
            .record
            .lock()
            .map(|r| r.role == "worker")
            .unwrap_or(false);
        if !is_member || demoted {
            let managers = self.m.manager_addrs().join(", ");
            return Err(Status::failed_precondition(format!(
                "this node is not a manager (not a Raft member); run the command against a manager{}",
                if managers.is_empty() {
                    String::new()
                } else {
                    format!(", e.g. one of: {managers}")
                }
            )));
        }
        Ok(())
    }

    async fn read<R>(
        &self,
        local: bool,
        f: impl FnOnce(&crate::store::ReadTx<'_>) -> R,
    ) -> Result<R, Status> {
        if local {
            Ok(self.m.store().view(f))
        } else {
            self.m
                .store()
                .read_linearizable(f)
                .await
                .map_err(store_status)
        }
    }

    /// The Raft view: the leader's (with reachability) when it can be had
    /// quickly, else this manager's own.
    async fn raft_view(&self) -> RaftInfo {
        let membership = self.m.raft.membership();
        match tokio::time::timeout(Duration::from_secs(2), membership.members()).await {
            Ok(Ok(info)) => info,
            _ => membership.local_view().await,
        }
    }

    fn view(&self, n: &Node, raft: &RaftInfo) -> NodeView {
        let manager_status = (n.role == ObjRole::Manager || n.raft_id != 0)
            .then(|| raft.member(n.raft_id))
            .flatten()
            .map(|member| manager_status(member, raft));
        NodeView {
            id: n.meta.id.clone(),
            version: n.meta.version,
            created_at: n.meta.created_at,
            updated_at: n.meta.updated_at,
            hostname: n.hostname.clone(),
            role: n.role,
            availability: n.availability,
            drain_order: n.drain_order,
            status: n.status,
            addr: n.addr.clone(),
            labels: n.labels.clone(),
            resources: n.resources,
            manager_status,
            is_self: n.meta.id == self.m.node_id,
        }
    }

    /// Finds a node by `self`, ID, hostname or unique ID prefix.
    #[allow(clippy::result_large_err)]
    fn resolve(&self, nodes: &[Node], reference: &str) -> Result<Node, Status> {
        let r = reference.trim();
        if r.is_empty() {
            return Err(Status::invalid_argument("no node given"));
        }
        if r == "self" {
            if let Some(n) = nodes.iter().find(|n| n.meta.id == self.m.node_id) {
                return Ok(n.clone());
            }
        }
        if let Some(n) = nodes.iter().find(|n| n.meta.id == r) {
            return Ok(n.clone());
        }
        let by_name: Vec<&Node> = nodes.iter().filter(|n| n.hostname == r).collect();
        if by_name.len() == 1 {
            return Ok(by_name[0].clone());
        }
        if by_name.len() > 1 {
            return Err(Status::invalid_argument(format!(
                "node {r} is ambiguous: {} nodes have that hostname ({}); use an ID",
                by_name.len(),
                by_name
                    .iter()
                    .map(|n| n.meta.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let by_prefix: Vec<&Node> = nodes.iter().filter(|n| n.meta.id.starts_with(r)).collect();
        match by_prefix.len() {
            1 => Ok(by_prefix[0].clone()),
            0 => Err(Status::not_found(format!("node {r} not found"))),
            k => Err(Status::invalid_argument(format!(
                "node {r} is ambiguous ({k} IDs start with it); give more of the ID"
            ))),
        }
    }

    async fn node_by_ref(&self, reference: &str, local: bool) -> Result<Node, Status> {
        let nodes = self.read(local, |tx| tx.list::<Node>()).await?;
        self.resolve(&nodes, reference)
    }

    /// Applies `change` to the node, retrying on version conflicts.
    async fn modify_node(
        &self,
        reference: &str,
        mut change: impl FnMut(&mut Node) -> Result<(), Status>,
    ) -> Result<Node, Status> {
        for _ in 0..20 {
            let mut n = self.node_by_ref(reference, false).await?;
            change(&mut n)?;
            match self.m.store().put(n).await {
                Ok(n) => return Ok(n),
                Err(StoreError::Refused(Refusal::Conflict { .. })) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(
            "the node kept changing while updating it; try again",
        ))
    }

    /// Takes manager `n` out of Raft (for demote and rm), refusing to remove
    /// the last manager or to break quorum.
    async fn leave_raft(&self, n: &Node, verb: &str) -> Result<(), Status> {
        let managers = self
            .read(false, |tx| {
                tx.find::<Node>(|x| x.role == ObjRole::Manager).len()
            })
            .await?;
        if managers <= 1 {
            return Err(Status::failed_precondition(format!(
                "refusing to {verb} {}: it is the last manager, the cluster would have nobody to keep its state",
                n.hostname
            )));
        }
        self.m
            .raft
            .remove_manager(n.raft_id, false)
            .await
            .map_err(|e| {
                Status::failed_precondition(format!("refusing to {verb} {}: {e}", n.hostname))
            })
    }

    /// The record of a client certificate: only recorded, unrevoked client
    /// certificates are accepted.
    #[allow(clippy::result_large_err)]
    fn client_record(
        &self,
        cert: &agent_common::pki::NodeCertificate,
    ) -> Result<ClientCertRecord, Status> {
        let serial = cert.serial().to_string();
        let record = self
            .m
            .cluster()
            .and_then(|c| c.client_certs.into_iter().find(|r| r.serial == serial));
        match record {
            None => Err(Status::permission_denied(format!(
                "client certificate {serial} is not recorded by this cluster (it was issued before client certificates were recorded, or its record is gone): get a new one with `flotilla cluster client-cert create` or `flotilla-manager client-cert` on a manager"
            ))),
            Some(r) if r.revoked_at != 0 => Err(Status::permission_denied(format!(
                "client certificate {serial} ({}) was revoked: ask a cluster administrator for a new one",
                r.name
            ))),
            Some(r) => Ok(r),
        }
    }

    /// The admin scope: the local socket, managers' certificates, and client
    /// certificates issued with `--admin`. `what` names the operation.
    #[allow(clippy::result_large_err)]
    fn require_admin<T>(&self, request: &Request<T>, what: &str) -> Result<(), Status> {
        match Caller::of(request) {
            Caller::Local => Ok(()),
            Caller::Node(cert) if cert.role() == NodeRole::Manager => Ok(()),
            Caller::Node(cert) if cert.role() == NodeRole::Client => {
                if self.client_record(&cert)?.admin {
                    Ok(())
                } else {
                    Err(Status::permission_denied(format!(
                        "{what} needs the admin scope, and client certificate {} does not have it: use an admin client certificate (`flotilla cluster client-cert create --admin`) or run the command on a manager",
                        cert.serial()
                    )))
                }
            }
            Caller::Node(cert) => Err(Status::permission_denied(format!(
                "{what} needs the admin scope; node {} has a {} certificate",
                cert.node_id(),
                cert.role().as_str()
            ))),
            Caller::Anonymous => Err(Status::unauthenticated(format!(
                "{what} needs a certificate of this cluster with the admin scope"
            ))),
        }
    }

    /// Applies `change` to the cluster object, retrying on version conflicts.
    async fn modify_cluster<R>(
        &self,
        mut change: impl FnMut(&mut Cluster) -> Result<R, Status>,
    ) -> Result<R, Status> {
        for _ in 0..20 {
            let mut c = self.cluster_object().await?;
            let out = change(&mut c)?;
            match self.m.store().put(c).await {
                Ok(_) => return Ok(out),
                Err(StoreError::Refused(Refusal::Conflict { .. })) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted("the cluster kept changing; try again"))
    }

    async fn cluster_object(&self) -> Result<Cluster, Status> {
        self.read(false, |tx| tx.list::<Cluster>().into_iter().next())
            .await?
            .ok_or_else(|| Status::unavailable("the cluster is not initialized"))
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<Response<JsonReply>, Status> {
    serde_json::to_string(v)
        .map(|json| Response::new(JsonReply { json }))
        .map_err(|e| Status::internal(e.to_string()))
}

fn parse_label(s: &str) -> Result<(String, String), Status> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() || k.len() > 256 || k.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Status::invalid_argument(format!(
            "invalid label {s:?}: use KEY=VALUE (KEY without spaces)"
        )));
    }
    Ok((k.to_string(), v.to_string()))
}

#[tonic::async_trait]
impl Control for ControlApi {
    async fn list_nodes(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let local = request.get_ref().local;
        let nodes = self.read(local, |tx| tx.list::<Node>()).await?;
        let raft = self.raft_view().await;
        let mut views: Vec<NodeView> = nodes.iter().map(|n| self.view(n, &raft)).collect();
        views.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
        json(&views)
    }

    async fn inspect_node(&self, request: Request<NodeRef>) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let n = self.node_by_ref(&r.node, r.local).await?;
        let raft = self.raft_view().await;
        json(&self.view(&n, &raft))
    }

    async fn update_node(
        &self,
        request: Request<UpdateNodeRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let availability = match r.availability.as_str() {
            "" => None,
            "active" => Some(Availability::Active),
            "pause" => Some(Availability::Pause),
            "drain" => Some(Availability::Drain),
            other => {
                return Err(Status::invalid_argument(format!(
                    "invalid availability {other:?}: use active, pause or drain"
                )))
            }
        };
        let drain_order = match r.drain_order.as_str() {
            "" => None,
            "start-first" => Some(DrainOrder::StartFirst),
            "stop-first" => Some(DrainOrder::StopFirst),
            other => {
                return Err(Status::invalid_argument(format!(
                    "invalid drain order {other:?}: use start-first or stop-first"
                )))
            }
        };
        let adds = r
            .label_add
            .iter()
            .map(|l| parse_label(l))
            .collect::<Result<Vec<_>, _>>()?;
        let n = self
            .modify_node(&r.node, |n| {
                if let Some(a) = availability {
                    n.availability = a;
                }
                if let Some(o) = drain_order {
                    n.drain_order = o;
                }
                for (k, v) in &adds {
                    n.labels.insert(k.clone(), v.clone());
                }
                for k in &r.label_rm {
                    if n.labels.remove(k).is_none() {
                        return Err(Status::not_found(format!(
                            "node {} has no label {k:?}",
                            n.hostname
                        )));
                    }
                }
                check_node_labels(&n.hostname, &n.labels)
            })
            .await?;
        let raft = self.raft_view().await;
        json(&self.view(&n, &raft))
    }

    async fn promote_node(&self, request: Request<NodeRef>) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        // A manager holds the CA key: making one is an admin's decision.
        self.require_admin(&request, "promoting a node")?;
        let r = request.into_inner();
        let n = self.node_by_ref(&r.node, false).await?;
        if n.role == ObjRole::Manager {
            let raft = self.raft_view().await;
            return json(&self.view(&n, &raft));
        }
        if n.daemon != "flotilla-manager" {
            return Err(Status::failed_precondition(format!(
                "node {} runs {}, which cannot become a manager; on that machine, leave the cluster and join with `flotilla-manager join --token MANAGER-TOKEN ADDR` instead",
                n.hostname,
                if n.daemon.is_empty() { "flotilla-worker" } else { &n.daemon }
            )));
        }
        if n.status != NodeStatus::Ready {
            return Err(Status::failed_precondition(format!(
                "node {} is {}: a manager must be reachable to join Raft; start it first",
                n.hostname,
                status_word(n.status)
            )));
        }
        let n = self
            .modify_node(&r.node, |n| {
                n.role = ObjRole::Manager;
                if n.raft_id == 0 {
                    use rand::Rng;
                    n.raft_id = rand::thread_rng().gen_range(1..u64::MAX);
                }
                Ok(())
            })
            .await?;
        let raft = self.raft_view().await;
        json(&self.view(&n, &raft))
    }

    async fn demote_node(&self, request: Request<NodeRef>) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        self.require_admin(&request, "demoting a manager")?;
        let r = request.into_inner();
        let n = self.node_by_ref(&r.node, false).await?;
        if n.role != ObjRole::Manager {
            let raft = self.raft_view().await;
            return json(&self.view(&n, &raft));
        }
        self.leave_raft(&n, "demote").await?;
        let n = self
            .modify_node(&r.node, |n| {
                n.role = ObjRole::Worker;
                Ok(())
            })
            .await?;
        let raft = self.raft_view().await;
        json(&self.view(&n, &raft))
    }

    async fn remove_node(
        &self,
        request: Request<RemoveNodeRequest>,
    ) -> Result<Response<Empty>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let n = self.node_by_ref(&r.node, false).await?;
        if n.meta.id == self.m.node_id {
            return Err(Status::failed_precondition(
                "refusing to remove the node answering this request; run `node rm` on another manager",
            ));
        }
        if n.role == ObjRole::Manager {
            if !r.force {
                return Err(Status::failed_precondition(format!(
                    "node {} is a manager (a Raft member): demote it first with `flotilla node demote {}`, or remove it anyway with --force",
                    n.hostname, n.hostname
                )));
            }
            self.leave_raft(&n, "remove").await?;
        } else if n.status == NodeStatus::Ready && !r.force {
            return Err(Status::failed_precondition(format!(
                "node {} is ready (heartbeating): stop it first, or remove it anyway with --force",
                n.hostname
            )));
        }
        for _ in 0..20 {
            let cluster = self.cluster_object().await?;
            let node: Option<Node> = self.read(false, |tx| tx.get::<Node>(&n.meta.id)).await?;
            let Some(node) = node else {
                return Ok(Response::new(Empty {}));
            };
            let mut c = cluster.clone();
            if !c.revoked_nodes.contains(&node.meta.id) {
                c.revoked_nodes.push(node.meta.id.clone());
            }
            let batch = vec![
                Action::Delete {
                    kind: agent_common::objects::Kind::Node,
                    id: node.meta.id.clone(),
                    version: Some(node.meta.version),
                },
                Action::Update(agent_common::objects::Object::Cluster(c)),
            ];
            match self.m.store().update(batch).await {
                Ok(_) => {
                    tracing::info!(node = %node.meta.id, hostname = %node.hostname, "node removed");
                    return Ok(Response::new(Empty {}));
                }
                Err(StoreError::Refused(Refusal::Conflict { .. })) => continue,
                Err(e) => return Err(store_status(e)),
            }
        }
        Err(Status::aborted(
            "the cluster kept changing while removing the node; try again",
        ))
    }

    async fn cluster_info(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let local = request.get_ref().local;
        let (cluster, nodes) = self
            .read(local, |tx| {
                (tx.list::<Cluster>().into_iter().next(), tx.list::<Node>())
            })
            .await?;
        let cluster = cluster.unwrap_or_default();
        let raft = if local {
            self.m.raft.membership().local_view().await
        } else {
            self.raft_view().await
        };
        let by_raft: BTreeMap<u64, &Node> = nodes.iter().map(|n| (n.raft_id, n)).collect();
        let mut by_status = BTreeMap::new();
        for n in &nodes {
            *by_status
                .entry(status_word(n.status).to_string())
                .or_insert(0u64) += 1;
        }
        let managers = raft
            .members
            .iter()
            .map(|mem| manager_status(mem, &raft))
            .collect();
        let leader = raft.leader_id.and_then(|l| raft.member(l));
        let info = ClusterInfo {
            id: cluster.meta.id.clone(),
            node_id: self.m.node_id.clone(),
            leader_id: raft
                .leader_id
                .and_then(|l| by_raft.get(&l).map(|n| n.meta.id.clone())),
            leader_addr: leader.map(|l| l.node.api_addr.clone()),
            raft_term: raft.term,
            raft_last_index: raft.last_log_index.unwrap_or(0),
            raft_applied_index: raft.applied_index.unwrap_or(0),
            managers,
            nodes_by_status: by_status,
            nodes: nodes.len() as u64,
            ca_digest: cluster.root_ca_digest.clone(),
            heartbeat_period_ms: cluster.heartbeat_period_ms,
        };
        json(&info)
    }

    async fn join_token(
        &self,
        request: Request<JoinTokenRequest>,
    ) -> Result<Response<JoinTokenReply>, Status> {
        self.authorize(&request)?;
        let admin = self.require_admin(&request, "the manager join token");
        let r = request.into_inner();
        let role = match r.role.as_str() {
            "worker" => NodeRole::Worker,
            "manager" => NodeRole::Manager,
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown role {other:?}: use worker or manager"
                )))
            }
        };
        if role == NodeRole::Manager {
            // A manager join hands out the CA key.
            admin?;
        }
        let mut cluster = self.cluster_object().await?;
        if r.rotate {
            let mut done = false;
            for _ in 0..20 {
                let mut c = self.cluster_object().await?;
                let nonce = {
                    use rand::Rng;
                    format!("{:032x}", rand::thread_rng().gen::<u128>())
                };
                match role {
                    NodeRole::Worker => c.worker_token_nonce = nonce,
                    _ => c.manager_token_nonce = nonce,
                }
                let token = self.m.join_token(&c, role);
                match role {
                    NodeRole::Worker => c.worker_token_hash = token.token_hash().to_hex(),
                    _ => c.manager_token_hash = token.token_hash().to_hex(),
                }
                match self.m.store().put(c).await {
                    Ok(c) => {
                        cluster = c;
                        done = true;
                        break;
                    }
                    Err(StoreError::Refused(Refusal::Conflict { .. })) => continue,
                    Err(e) => return Err(store_status(e)),
                }
            }
            if !done {
                return Err(Status::aborted("the cluster kept changing; try again"));
            }
            tracing::info!(role = role.as_str(), "join token rotated");
        }
        let token = self.m.join_token(&cluster, role);
        Ok(Response::new(JoinTokenReply {
            token: token.to_string(),
            managers: self.m.manager_addrs(),
        }))
    }

    async fn create_service(
        &self,
        request: Request<CreateServiceRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let spec: agent_common::spec::ServiceSpec =
            serde_json::from_str(&request.get_ref().spec_json)
                .map_err(|e| Status::invalid_argument(format!("unreadable service spec: {e}")))?;
        json(&super::services::create(&self.m, spec).await?)
    }

    async fn list_services(
        &self,
        request: Request<ReadRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let local = request.get_ref().local;
        json(&self.read(local, super::services::list).await?)
    }

    async fn inspect_service(
        &self,
        request: Request<ServiceRef>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let v = self
            .read(r.local, |tx| {
                super::services::resolve(tx, &r.service).map(|s| {
                    super::services::view(
                        &s,
                        &tx.list::<agent_common::objects::Task>(),
                        &tx.list::<Node>(),
                    )
                })
            })
            .await??;
        json(&v)
    }

    async fn update_service(
        &self,
        request: Request<UpdateServiceRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let spec =
            if r.spec_json.is_empty() {
                None
            } else {
                Some(serde_json::from_str(&r.spec_json).map_err(|e| {
                    Status::invalid_argument(format!("unreadable service spec: {e}"))
                })?)
            };
        json(
            &super::services::update(&self.m, &r.service, spec, r.force, r.rollback, r.version)
                .await?,
        )
    }

    async fn remove_service(
        &self,
        request: Request<ServiceRef>,
    ) -> Result<Response<Empty>, Status> {
        self.authorize(&request)?;
        super::services::remove(&self.m, &request.get_ref().service).await?;
        Ok(Response::new(Empty {}))
    }

    async fn list_tasks(
        &self,
        request: Request<ListTasksRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let v = self
            .read(r.local, |tx| {
                super::services::tasks(tx, &r.service, &r.node)
            })
            .await??;
        json(&v)
    }

    type ServiceLogsStream = ReceiverStream<Result<JsonReply, Status>>;

    async fn service_logs(
        &self,
        request: Request<ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        self.authorize(&request)?;
        let r = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        if !self.m.raft.is_leader() {
            // Nodes hold their sessions with the leader: pass its stream on.
            let leader = self
                .m
                .leader_addr()
                .ok_or_else(|| Status::unavailable("no leader is known; try again"))?;
            let channel = self
                .m
                .clients
                .channel(&leader)
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let mut client =
                agent_common::control_proto::control_client::ControlClient::new(channel)
                    .max_decoding_message_size(agent_common::MAX_MESSAGE);
            let mut upstream = client.service_logs(r).await?.into_inner();
            tokio::spawn(async move {
                loop {
                    let item = tokio::select! {
                        item = upstream.message() => item,
                        _ = tx.closed() => return,
                    };
                    let msg = match item {
                        Ok(Some(m)) => Ok(m),
                        Ok(None) => return,
                        Err(e) => Err(e),
                    };
                    let failed = msg.is_err();
                    if tx.send(msg).await.is_err() || failed {
                        return;
                    }
                }
            });
            return Ok(Response::new(ReceiverStream::new(rx)));
        }
        tokio::spawn(super::service_logs::stream(
            Arc::clone(&self.m),
            r.service,
            r.tail,
            r.follow,
            tx,
        ));
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn issue_client_cert(
        &self,
        request: Request<ClientCertRequest>,
    ) -> Result<Response<ClientCertReply>, Status> {
        self.authorize(&request)?;
        self.require_admin(&request, "issuing client certificates")?;
        let r = request.into_inner();
        let validity = client_cert_validity(r.expiry_secs)?;
        let name = r.name.trim().to_string();
        if name.len() > 64
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c))
        {
            return Err(Status::invalid_argument(
                "--name: use at most 64 letters, digits and - _ . @",
            ));
        }
        let csr = agent_common::pki::NodeCsr::from_pem(&r.csr_pem)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let client_id = agent_common::pki::NodeId::generate().map_err(super::internal)?;
        let cert = self
            .m
            .sign(&csr, client_id.as_str(), NodeRole::Client, None, validity)
            .map_err(|e| Status::invalid_argument(format!("failed to sign the request: {e:#}")))?;
        let now = crate::daemon::unix_now();
        let record = ClientCertRecord {
            serial: cert.serial().to_string(),
            name: if name.is_empty() {
                client_id.to_string()
            } else {
                name
            },
            client_id: client_id.to_string(),
            issued_at: now,
            expires_at: secs_since_epoch(cert.not_after()),
            admin: r.admin,
            revoked_at: 0,
        };
        self.modify_cluster(|c| {
            // Expired certificates are refused by TLS: their records can go.
            c.client_certs.retain(|x| x.expires_at > now);
            if c.client_certs.len() >= MAX_CLIENT_CERTS {
                return Err(Status::resource_exhausted(format!(
                    "the cluster already records {MAX_CLIENT_CERTS} client certificates: revoke unused ones first"
                )));
            }
            c.client_certs.push(record.clone());
            Ok(())
        })
        .await?;
        tracing::info!(serial = %record.serial, name = %record.name, admin = record.admin, "client certificate issued");
        Ok(Response::new(ClientCertReply {
            cert_pem: cert.to_pem(),
            ca_pem: self.m.identity.borrow().ca().to_pem(),
            serial: record.serial,
            client_id: record.client_id,
        }))
    }

    async fn list_client_certs(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        self.require_admin(&request, "listing client certificates")?;
        let mut certs = self.cluster_object().await?.client_certs;
        certs.sort_by(|a, b| (a.issued_at, &a.serial).cmp(&(b.issued_at, &b.serial)));
        json(&certs)
    }

    async fn revoke_client_cert(
        &self,
        request: Request<RevokeClientCertRequest>,
    ) -> Result<Response<JsonReply>, Status> {
        self.authorize(&request)?;
        self.require_admin(&request, "revoking client certificates")?;
        let wanted = request.into_inner().serial.trim().to_ascii_lowercase();
        if wanted.is_empty() || !wanted.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument(
                "give the serial of a client certificate (hex, as `flotilla cluster client-cert ls` shows it)",
            ));
        }
        let now = crate::daemon::unix_now();
        let record = self
            .modify_cluster(|c| {
                let matches: Vec<usize> = c
                    .client_certs
                    .iter()
                    .enumerate()
                    .filter(|(_, r)| r.serial == wanted || r.serial.starts_with(&wanted))
                    .map(|(i, _)| i)
                    .collect();
                let exact = c.client_certs.iter().position(|r| r.serial == wanted);
                let i = match (exact, matches.as_slice()) {
                    (Some(i), _) => i,
                    (None, [i]) => *i,
                    (None, []) => {
                        return Err(Status::not_found(format!(
                            "no client certificate with serial {wanted}"
                        )))
                    }
                    (None, many) => {
                        return Err(Status::invalid_argument(format!(
                            "serial {wanted} is ambiguous ({} certificates start with it); give more of it",
                            many.len()
                        )))
                    }
                };
                let r = &mut c.client_certs[i];
                if r.revoked_at == 0 {
                    r.revoked_at = now;
                }
                Ok(r.clone())
            })
            .await?;
        // This manager refuses it from the next handshake on (the others
        // when they apply the change).
        if let Some(serial) = agent_common::pki::CertSerial::from_hex(&record.serial) {
            self.m.revocations.revoke_serial(serial);
        }
        tracing::info!(serial = %record.serial, name = %record.name, "client certificate revoked");
        json(&record)
    }
}

/// Client certificates recorded at most.
const MAX_CLIENT_CERTS: usize = 1000;

/// Lifetime of a client certificate when none is asked for: 90 days.
pub const CLIENT_CERT_DEFAULT_EXPIRY: Duration = Duration::from_secs(90 * 24 * 60 * 60);

/// The longest lifetime of a client certificate: 365 days.
pub const CLIENT_CERT_MAX_EXPIRY: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// The shortest lifetime of a client certificate: one minute.
pub const CLIENT_CERT_MIN_EXPIRY: Duration = Duration::from_secs(60);

/// The validity asked for (`0`: the default), within the bounds.
#[allow(clippy::result_large_err)]
fn client_cert_validity(expiry_secs: u64) -> Result<Duration, Status> {
    if expiry_secs == 0 {
        return Ok(CLIENT_CERT_DEFAULT_EXPIRY);
    }
    let asked = Duration::from_secs(expiry_secs);
    if asked > CLIENT_CERT_MAX_EXPIRY {
        return Err(Status::invalid_argument(format!(
            "--expiry {} is longer than the longest client certificate lifetime, 365 days: issue a shorter one and a new one before it expires",
            humantime::format_duration(asked)
        )));
    }
    if asked < CLIENT_CERT_MIN_EXPIRY {
        return Err(Status::invalid_argument(format!(
            "--expiry {} is shorter than the shortest client certificate lifetime, 1 minute",
            humantime::format_duration(asked)
        )));
    }
    Ok(asked)
}

fn secs_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn status_word(s: NodeStatus) -> &'static str {
    match s {
        NodeStatus::Ready => "ready",
        NodeStatus::Down => "down",
        NodeStatus::Unknown => "unknown",
    }
}

/// A Raft member as `node ls` and `cluster info` show it: voter or still
/// joining, reachable from the leader, and how far behind the leader's log
/// when that is more than a moment's worth.
fn manager_status(member: &crate::raft::MemberInfo, raft: &RaftInfo) -> ManagerStatus {
    let lag = match (raft.leader_view, member.leader, raft.last_log_index) {
        (true, false, Some(last)) => {
            let behind = last.saturating_sub(member.matched_index.unwrap_or(0));
            (behind > crate::raft::LAGGING_ENTRIES).then_some(behind)
        }
        _ => None,
    };
    ManagerStatus {
        raft_id: member.id,
        leader: member.leader,
        reachability: if member.leader || member.reachable {
            "reachable".into()
        } else if raft.leader_view {
            "unreachable".into()
        } else {
            "unknown".into()
        },
        addr: member.node.api_addr.clone(),
        voter: member.voter,
        lag,
    }
}

/// At most this many labels on a node.
pub const MAX_NODE_LABELS: usize = 4096;
/// At most this many bytes in a node label's key.
pub const MAX_LABEL_KEY_BYTES: usize = 256;
/// At most this many bytes in a node label's value.
pub const MAX_LABEL_VALUE_BYTES: usize = 4096;
/// At most this many bytes of keys and values together on a node: a node
/// travels whole in each Raft entry that changes it (docs/raft.md).
pub const MAX_NODE_LABEL_BYTES: usize = 64 * 1024;

/// Refuse a label set beyond the limits above, saying which and by how much.
fn check_node_labels(
    node: &str,
    labels: &std::collections::BTreeMap<String, String>,
) -> Result<(), Status> {
    if labels.len() > MAX_NODE_LABELS {
        return Err(Status::invalid_argument(format!(
            "node {node} would have {} labels, at most {MAX_NODE_LABELS} are allowed: remove some with --label-rm",
            labels.len()
        )));
    }
    let mut total = 0;
    for (k, v) in labels {
        if k.len() > MAX_LABEL_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "label key {}… is {} bytes, at most {MAX_LABEL_KEY_BYTES} are allowed",
                k.chars().take(32).collect::<String>(),
                k.len()
            )));
        }
        if v.len() > MAX_LABEL_VALUE_BYTES {
            return Err(Status::invalid_argument(format!(
                "the value of label {k:?} is {} bytes, at most {MAX_LABEL_VALUE_BYTES} are allowed",
                v.len()
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_NODE_LABEL_BYTES {
        return Err(Status::invalid_argument(format!(
            "node {node}'s labels would take {total} bytes, at most {MAX_NODE_LABEL_BYTES} are allowed (keys and values together): remove some with --label-rm"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::{check_node_labels, MAX_LABEL_VALUE_BYTES, MAX_NODE_LABELS};

    #[test]
    fn oversized_label_sets_are_refused_with_the_limit() {
        let mut labels: BTreeMap<String, String> = (0..10)
            .map(|i| (format!("k{i}"), "v".repeat(100)))
            .collect();
        assert!(check_node_labels("n1", &labels).is_ok());
        labels.insert("big".into(), "x".repeat(MAX_LABEL_VALUE_BYTES + 1));
        let e = check_node_labels("n1", &labels).unwrap_err();
        assert!(e.message().contains("at most 4096"), "{}", e.message());
        labels.remove("big");
        // Many values, each within its limit, together too much.
        for i in 0..40 {
            labels.insert(format!("many-{i}"), "y".repeat(MAX_LABEL_VALUE_BYTES));
        }
        let e = check_node_labels("n1", &labels).unwrap_err();
        assert!(
            e.message().contains("keys and values together"),
            "{}",
            e.message()
        );
        let many: BTreeMap<String, String> = (0..=MAX_NODE_LABELS)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let e = check_node_labels("n1", &many).unwrap_err();
        assert!(e.message().contains("--label-rm"), "{}", e.message());
    }
}

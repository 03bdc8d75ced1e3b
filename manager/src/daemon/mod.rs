//! The manager daemon: one process holding the node's Raft member, the
//! cluster CA, and the two servers: the cluster port (mutual TLS: Raft,
//! dispatcher, control) and the local socket (control API, as root).
//!
//! `init` makes a one-member cluster; `join` enters an existing one through a
//! manager token; with neither, the node resumes from its data root.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agent_common::objects::{Cluster, Node, NodeRole as ObjRole, NodeStatus};
use agent_common::pki::{
    CaDigest, JoinToken, NodeCertSpec, NodeCsr, NodeId, NodeIdentity, NodeRole, RevocationList,
    Revocations, RootCa,
};
use agent_common::tls::{self, grpc};
use anyhow::{anyhow, bail, Context};
use tokio::sync::watch;
use worker::cluster::membership::Membership;
use worker::cluster::{ClusterFiles, ManagerClients, NodeRecord};

use crate::raft::{Connector, ManagerNode, RaftNode, RaftOptions};
use crate::store::Store;

pub mod serve;

/// The daemon's flags without subcommand (for restarting in place, which
/// resumes from the data root).
pub static RESTART_ARGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();

/// How the daemon was asked to start.
#[derive(Clone, Debug)]
pub struct Options {
    /// The node's data directory.
    pub data_root: PathBuf,
    /// The local socket (`unix:///…`).
    pub host: String,
    /// Where the cluster port listens.
    pub listen_addr: SocketAddr,
    /// The address other nodes reach this one at (IP or name, no port).
    pub advertise_addr: Option<String>,
    /// Heartbeat period for the cluster (init only).
    pub heartbeat_period: Duration,
    /// Node certificate validity (init only).
    pub cert_validity: Duration,
}

/// The Raft connector: mutual TLS with this node's (replaceable) identity,
/// connecting only to servers with manager certificates.
struct TlsConnector(grpc::SharedClientConfig);

impl Connector for TlsConnector {
    fn channel(
        &self,
        addr: &str,
    ) -> Result<tonic::transport::Channel, Box<dyn std::error::Error + Send + Sync>> {
        Ok(grpc::channel(
            addr,
            self.0.clone(),
            tls::server_name(NodeRole::Manager),
        )?)
    }
}

/// A running manager: everything the API handlers need.
pub struct Manager {
    /// This node's ID.
    pub node_id: String,
    /// This node's Raft member.
    pub raft: RaftNode,
    /// The root CA (every manager holds the key).
    pub ca: RootCa,
    ca_key_pem: String,
    /// The node's files.
    pub files: ClusterFiles,
    /// The node's record.
    pub record: Arc<Mutex<NodeRecord>>,
    /// The node's current identity (renewals publish here).
    pub identity: watch::Receiver<Arc<NodeIdentity>>,
    identity_tx: watch::Sender<Arc<NodeIdentity>>,
    /// Removed nodes, refused at every TLS handshake.
    pub revocations: Revocations,
    /// When each node was last heard of by this manager (as leader), and
    /// whether its session is open.
    pub liveness: Mutex<HashMap<String, crate::api::session::Liveness>>,
    /// This manager's cluster address (`ip:port`).
    pub cluster_addr: String,
    /// Clients of other managers.
    pub clients: ManagerClients,
    /// Routes `service logs` requests down node sessions (on the leader).
    pub logs: crate::logs::LogBroker,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_nonce() -> String {
    use rand::Rng;
    let n: u128 = rand::thread_rng().gen();
    format!("{n:032x}")
}

fn random_raft_id() -> u64 {
    use rand::Rng;
    // Never 0: 0 means "not a manager" in node objects.
    rand::thread_rng().gen_range(1..u64::MAX)
}

fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The advertise address (without port) from the options.
fn advertise_ip(opts: &Options) -> anyhow::Result<String> {
    match &opts.advertise_addr {
        Some(a) => {
            // Accept ADDR or ADDR:PORT; the port of the cluster port is the listen port.
            let a = a.trim();
            if let Ok(sa) = a.parse::<SocketAddr>() {
                return Ok(sa.ip().to_string());
            }
            if a.is_empty() {
                bail!("--advertise-addr is empty");
            }
            agent_common::pki::check_node_address(a)?;
            Ok(a.to_string())
        }
        None => worker::cluster::default_advertise_addr(Some(opts.listen_addr.ip()))
            .map_err(|e| anyhow!(e)),
    }
}

impl Manager {
    /// The store (writes go through Raft, from any manager).
    pub fn store(&self) -> &Store {
        self.raft.store()
    }

    /// The current join token for `role`, derived from the CA key and the
    /// stored nonce.
    pub fn join_token(&self, cluster: &Cluster, role: NodeRole) -> JoinToken {
        // There are no client tokens: clients get certificates from
        // `flotilla-manager client-cert`; a client role shares nothing.
        let nonce = match role {
            NodeRole::Manager => cluster.manager_token_nonce.clone(),
            NodeRole::Worker => cluster.worker_token_nonce.clone(),
            NodeRole::Client => format!("no-client-tokens-{}", cluster.manager_token_nonce),
        };
        JoinToken::derive(role, self.ca.digest(), self.ca_key_pem.as_bytes(), &nonce)
    }

    /// Signs `csr` for `node_id` with `role`.
    pub fn sign(
        &self,
        csr: &NodeCsr,
        node_id: &str,
        role: NodeRole,
        addr: Option<&str>,
        validity: Duration,
    ) -> anyhow::Result<agent_common::pki::NodeCertificate> {
        let id = node_id.parse::<NodeId>().map_err(|e| anyhow!("{e}"))?;
        let mut spec = NodeCertSpec::new(id, role).validity(validity);
        if let Some(a) = addr.filter(|a| !a.is_empty()) {
            spec = spec.address(a.to_string());
        }
        Ok(self.ca.sign_node(csr, &spec)?)
    }

    /// The cluster object.
    pub fn cluster(&self) -> Option<Cluster> {
        self.store()
            .view(|tx| tx.list::<Cluster>().into_iter().next())
    }

    /// The managers' cluster addresses (from the Raft membership).
    pub fn manager_addrs(&self) -> Vec<String> {
        let m = self.raft.metrics();
        let mut out: Vec<String> = m
            .membership_config
            .membership()
            .nodes()
            .map(|(_, n)| n.api_addr.clone())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The leader's cluster address, if a leader is known.
    pub fn leader_addr(&self) -> Option<String> {
        let m = self.raft.metrics();
        let leader = m.current_leader?;
        m.membership_config
            .membership()
            .get_node(&leader)
            .map(|n| n.api_addr.clone())
    }

    /// Uses `identity` for new connections (after a renewal).
    pub fn publish_identity(&self, identity: NodeIdentity) {
        let _ = self.identity_tx.send(Arc::new(identity));
    }

    /// Keeps the revocation list equal to the cluster object's list.
    fn sync_revocations(&self) {
        if let Some(c) = self.cluster() {
            let mut list = RevocationList::new();
            for id in &c.revoked_nodes {
                if let Ok(n) = id.parse::<NodeId>() {
                    list.revoke_node(n);
                }
            }
            for rec in c.client_certs.iter().filter(|r| r.revoked_at != 0) {
                if let Some(serial) = agent_common::pki::CertSerial::from_hex(&rec.serial) {
                    list.revoke_serial(serial);
                }
            }
            self.revocations.replace(list);
        }
    }
}

/// Reads a node's role as stored.
pub fn stored_role(node: &Node) -> NodeRole {
    match node.role {
        ObjRole::Manager => NodeRole::Manager,
        ObjRole::Worker => NodeRole::Worker,
    }
}

/// Raft timing of the daemon: heartbeats every 50 ms and elections after
/// 200–400 ms of silence. openraft's leader lease equals the longest election
/// timeout (a follower refuses to vote while its leader may still be alive),
/// so the lease, not the detection, dominates failover: these values put the
/// first write on a new leader at about half a second (bench/README.md).
fn raft_options() -> RaftOptions {
    RaftOptions::fast_failover()
}

async fn open_raft(
    files: &ClusterFiles,
    raft_id: u64,
    cluster_addr: &str,
    config: grpc::SharedClientConfig,
) -> anyhow::Result<RaftNode> {
    let dir = files.raft_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("failed to create {}", dir.display()))?;
    let node = ManagerNode {
        raft_addr: cluster_addr.to_string(),
        api_addr: cluster_addr.to_string(),
    };
    RaftNode::open(
        raft_id,
        &dir,
        node,
        &raft_options(),
        Arc::new(TlsConnector(config)),
    )
    .await
    .with_context(|| format!("failed to open the Raft state in {}", dir.display()))
}

/// Makes the pieces shared by every way of starting.
fn assemble(
    files: ClusterFiles,
    record: NodeRecord,
    identity: NodeIdentity,
    ca: RootCa,
    ca_key_pem: String,
    raft: RaftNode,
    clients: ManagerClients,
) -> Arc<Manager> {
    let (identity_tx, identity_rx) = watch::channel(Arc::new(identity));
    let cluster_addr = record.advertise_addr.clone();
    let m = Arc::new(Manager {
        node_id: record.node_id.clone(),
        raft,
        ca,
        ca_key_pem,
        files,
        record: Arc::new(Mutex::new(record)),
        identity: identity_rx,
        identity_tx,
        revocations: Revocations::new(RevocationList::new()),
        liveness: Mutex::new(HashMap::new()),
        cluster_addr,
        clients,
        logs: crate::logs::LogBroker::default(),
    });
    m.sync_revocations();
    m
}

/// `flotilla-manager init`: a new one-member cluster.
pub async fn init(opts: &Options) -> anyhow::Result<(Arc<Manager>, tokio::net::TcpListener)> {
    let files = ClusterFiles::new(&opts.data_root);
    if files.exists() {
        bail!(
            "this node is already part of a cluster (found {}): run `flotilla-manager` without a subcommand to resume it, or remove that directory to start over",
            files.dir().display()
        );
    }
    // Leftovers of an interrupted init or join: nothing was recorded as done.
    let _ = std::fs::remove_dir_all(files.dir());
    let ip = advertise_ip(opts)?;
    let cluster_addr = join_host_port(&ip, opts.listen_addr.port());
    let listener = bind_cluster_port(opts.listen_addr).await?;

    let ca = RootCa::generate().context("failed to make the root CA")?;
    let node_id = NodeId::generate().context("failed to make a node ID")?;
    let spec = NodeCertSpec::new(node_id.clone(), NodeRole::Manager)
        .validity(opts.cert_validity)
        .address(ip.clone());
    let identity =
        NodeIdentity::issue(&ca, &spec).context("failed to issue this node's certificate")?;
    files.save_identity(
        identity.key(),
        &identity.certificate().to_pem(),
        &ca.cert_pem(),
    )?;
    files.save_ca_key(&ca.key_pem())?;

    let raft_id = random_raft_id();
    let clients = ManagerClients::new(&identity)?;
    let raft = open_raft(&files, raft_id, &cluster_addr, clients.config().clone()).await?;
    let mut members = BTreeMap::new();
    members.insert(raft_id, raft.node());
    raft.initialize(members)
        .await
        .context("failed to start the one-member Raft cluster")?;
    wait_for_leader(&raft, Duration::from_secs(10)).await?;

    let period_ms = opts.heartbeat_period.as_millis().clamp(100, 600_000) as u64;
    let cluster = Cluster {
        name: "default".into(),
        root_ca_digest: ca.digest().to_hex(),
        worker_token_nonce: random_nonce(),
        manager_token_nonce: random_nonce(),
        heartbeat_period_ms: period_ms,
        node_cert_validity_secs: opts.cert_validity.as_secs(),
        ..Default::default()
    };
    let hostname = worker::cluster::hostname();
    let node = Node {
        meta: agent_common::objects::Meta {
            id: node_id.to_string(),
            ..Default::default()
        },
        hostname,
        role: ObjRole::Manager,
        status: NodeStatus::Ready,
        addr: ip.clone(),
        raft_id,
        daemon: "flotilla-manager".into(),
        ..Default::default()
    };
    let store = raft.store().clone();
    let mut cluster = cluster;
    let tokens = |c: &mut Cluster, ca_key: &str| {
        for role in [NodeRole::Worker, NodeRole::Manager] {
            let nonce = match role {
                NodeRole::Worker => c.worker_token_nonce.clone(),
                _ => c.manager_token_nonce.clone(),
            };
            let t = JoinToken::derive(role, ca.digest(), ca_key.as_bytes(), &nonce);
            match role {
                NodeRole::Worker => c.worker_token_hash = t.token_hash().to_hex(),
                _ => c.manager_token_hash = t.token_hash().to_hex(),
            }
        }
    };
    tokens(&mut cluster, &ca.key_pem());
    store
        .update(vec![
            crate::store::Action::Create(agent_common::objects::Object::Cluster(cluster)),
            crate::store::Action::Create(agent_common::objects::Object::Node(node)),
        ])
        .await
        .context("failed to record the cluster and this node")?;

    let record = NodeRecord {
        node_id: node_id.to_string(),
        role: "manager".into(),
        managers: vec![cluster_addr.clone()],
        advertise_addr: cluster_addr.clone(),
        listen_addr: opts.listen_addr.to_string(),
        raft_id,
        heartbeat_period_ms: period_ms,
        ..Default::default()
    };
    files.save_record(&record)?;
    let ca_key_pem = ca.key_pem();
    Ok((
        assemble(files, record, identity, ca, ca_key_pem, raft, clients),
        listener,
    ))
}

/// `flotilla-manager join`: enter an existing cluster as a manager.
pub async fn join(
    opts: &Options,
    token: &str,
    remote: &str,
) -> anyhow::Result<(Arc<Manager>, tokio::net::TcpListener)> {
    let files = ClusterFiles::new(&opts.data_root);
    if files.exists() {
        bail!(
            "this node is already part of a cluster (found {}): run `flotilla-manager` without a subcommand to resume it",
            files.dir().display()
        );
    }
    let parsed = JoinToken::parse(token)?;
    if parsed.role() != NodeRole::Manager {
        bail!("this is a worker join token: join as a worker with `flotilla-worker join --token … {remote}`, or ask a manager for the manager token with `flotilla join-token manager`");
    }
    let _ = std::fs::remove_dir_all(files.dir());
    let ip = advertise_ip(opts)?;
    let cluster_addr = join_host_port(&ip, opts.listen_addr.port());
    let listener = bind_cluster_port(opts.listen_addr).await?;
    let hostname = worker::cluster::hostname();
    let joined =
        worker::cluster::join(token, remote, &hostname, &cluster_addr, "flotilla-manager").await?;
    let reply = &joined.reply;
    if reply.ca_key_pem.is_empty() || reply.raft_id == 0 {
        bail!("the manager did not send what a new manager needs (CA key, Raft ID)");
    }
    let ca = RootCa::from_pem(&reply.ca_pem, &reply.ca_key_pem)
        .context("the CA key sent by the manager does not match its certificate")?;
    files.save_identity(&joined.key, &reply.cert_pem, &reply.ca_pem)?;
    files.save_ca_key(&reply.ca_key_pem)?;
    let clients = ManagerClients::new(&joined.identity)?;
    let raft = open_raft(
        &files,
        reply.raft_id,
        &cluster_addr,
        clients.config().clone(),
    )
    .await?;
    let mut managers = reply.managers.clone();
    if managers.is_empty() {
        managers.push(grpc::with_port(remote, agent_common::DEFAULT_CLUSTER_PORT));
    }
    let record = NodeRecord {
        node_id: reply.node_id.clone(),
        role: "manager".into(),
        managers,
        advertise_addr: cluster_addr.clone(),
        listen_addr: opts.listen_addr.to_string(),
        raft_id: reply.raft_id,
        heartbeat_period_ms: reply.heartbeat_period_ms,
        ..Default::default()
    };
    files.save_record(&record)?;
    let ca_key_pem = reply.ca_key_pem.clone();
    Ok((
        assemble(
            files,
            record,
            joined.identity,
            ca,
            ca_key_pem,
            raft,
            clients,
        ),
        listener,
    ))
}

/// `flotilla-manager` without a subcommand: resume from the data root.
pub async fn resume(
    opts: &Options,
    force_new_cluster: bool,
) -> anyhow::Result<(Arc<Manager>, tokio::net::TcpListener)> {
    let files = ClusterFiles::new(&opts.data_root);
    if !files.exists() {
        bail!(
            "this node is not part of a cluster ({} has no cluster state): start one with `flotilla-manager init` or join one with `flotilla-manager join --token TOKEN MANAGER-ADDR`",
            opts.data_root.display()
        );
    }
    let record = files.load_record()?;
    if record.raft_id == 0 {
        bail!(
            "this node's record has no Raft ID: it is not a manager ({})",
            files.dir().display()
        );
    }
    if record.role == "worker" {
        // Demoted: keep no Raft state (a stale member could start elections);
        // a later promotion joins again from scratch.
        let dir = files.raft_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("failed to clear {}", dir.display()))?;
        }
    }
    let identity = files.load_identity()?;
    let ca_key_pem = files.load_ca_key()?;
    let ca = RootCa::from_pem(&identity.ca().to_pem(), &ca_key_pem)
        .context("the stored CA key does not match the CA certificate")?;
    let listen: SocketAddr = record.listen_addr.parse().unwrap_or(opts.listen_addr);
    let listener = bind_cluster_port(listen).await?;
    if force_new_cluster {
        let node = ManagerNode {
            raft_addr: record.advertise_addr.clone(),
            api_addr: record.advertise_addr.clone(),
        };
        RaftNode::force_new_cluster(&files.raft_dir(), record.raft_id, node)
            .await
            .context("failed to force a new cluster from this node's state")?;
        tracing::warn!("forced a new one-manager cluster from this node's state");
    }
    let clients = ManagerClients::new(&identity)?;
    let raft = open_raft(
        &files,
        record.raft_id,
        &record.advertise_addr,
        clients.config().clone(),
    )
    .await?;
    Ok((
        assemble(files, record, identity, ca, ca_key_pem, raft, clients),
        listener,
    ))
}

async fn bind_cluster_port(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await.with_context(|| {
        format!("failed to listen on the cluster port {addr}: is another manager running, or pass --listen-addr")
    })
}

async fn wait_for_leader(raft: &RaftNode, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if raft.metrics().current_leader.is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    bail!("no Raft leader within {timeout:?}")
}

/// Background work of a running manager: joining Raft as a voter if it is
/// not one yet, tracking revocations, and (as leader) orchestrating and
/// marking nodes down. Returns the node's membership, for its agent (whose
/// session with the leader carries this node's heartbeats too).
pub fn spawn_background(m: &Arc<Manager>) -> Membership {
    // Revocations follow the cluster object.
    {
        let m = Arc::clone(m);
        tokio::spawn(async move {
            let mut watch = m.store().watch();
            loop {
                match watch.recv().await {
                    Ok(_) => m.sync_revocations(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        m.sync_revocations()
                    }
                    Err(_) => return,
                }
            }
        });
    }
    // Raft stopped (a storage error: e.g. a full disk): exit with a clear
    // message, so the supervisor restarts the manager once it can write
    // again, instead of running on answering "Raft has stopped" and being
    // counted as a reachable manager.
    {
        let m = Arc::clone(m);
        tokio::spawn(async move { exit_when_raft_stops(&m).await });
    }
    // Become a voter if this member is not one (a new or interrupted join).
    {
        let m = Arc::clone(m);
        tokio::spawn(async move { ensure_voter(&m).await });
    }
    // The node's membership: certificates its session renews are served on
    // the cluster port too.
    let (tx, _) = watch::channel(m.identity.borrow().clone());
    let membership = Membership {
        files: m.files.clone(),
        record: Arc::clone(&m.record),
        identity: tx,
        clients: m.clients.clone(),
        hostname: worker::cluster::hostname(),
        role_changes: None,
    };
    {
        let m2 = Arc::clone(m);
        let mut renewed = membership.identity.subscribe();
        tokio::spawn(async move {
            while renewed.changed().await.is_ok() {
                let id = renewed.borrow().clone();
                if let Ok(copy) = NodeIdentity::from_pem(
                    &id.key().to_pem(),
                    &id.certificate().to_pem(),
                    &id.ca().to_pem(),
                ) {
                    m2.publish_identity(copy);
                }
            }
        });
    }
    // Services → tasks → nodes (acts only while leader).
    {
        let m = Arc::clone(m);
        tokio::spawn(async move { crate::orchestrator::run(m).await });
    }
    // Node liveness (acts only while leader).
    {
        let m = Arc::clone(m);
        tokio::spawn(async move { crate::api::session::monitor_liveness(m).await });
    }
    membership
}

/// Watch Raft; when it stops on its own (not at shutdown), exit 1 with why.
async fn exit_when_raft_stops(m: &Manager) {
    let mut metrics = m.raft.raft().metrics();
    loop {
        let stopped = metrics.borrow().running_state.clone();
        if let Err(fatal) = stopped {
            if matches!(fatal, openraft::error::Fatal::Stopped) {
                return;
            }
            tracing::error!(
                data_root = %m.files.dir().display(),
                "Raft stopped on this manager: {fatal}; exiting so that it is restarted (if the disk is full, free space under the data root first; the other managers go on without it)"
            );
            eprintln!(
                "flotilla-manager: Raft stopped on this manager ({fatal}); exiting. If the disk holding {} is full, free space and start the manager again.",
                m.files.dir().display()
            );
            std::process::exit(1);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// The deadline of one request to become a voter (queued behind other
/// joins, a catch-up of up to 30 s, two commits).
const JOIN_RAFT_TIMEOUT: Duration = Duration::from_secs(60);

/// Wait until this manager is a Raft voter (after `join`, before saying
/// it is ready), logging every 10 s while it is not.
pub async fn wait_until_voter(m: &Manager) {
    let raft_id = m.raft.id();
    let start = Instant::now();
    let mut next_log = Duration::from_secs(10);
    loop {
        let metrics = m.raft.metrics();
        if metrics
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == raft_id)
        {
            return;
        }
        if start.elapsed() >= next_log {
            tracing::info!(
                "waiting to become a Raft voter ({}s so far)",
                start.elapsed().as_secs()
            );
            next_log += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps this node's Raft participation in line with its recorded role:
/// a manager that is not a voter asks to become one (after a join, an
/// interrupted join, or a promotion); a node demoted to worker restarts
/// itself without Raft state, so it can never disturb the managers.
async fn ensure_voter(m: &Arc<Manager>) {
    let raft_id = m.raft.id();
    let mut delay = Duration::from_millis(200);
    let mut logged = false;
    let mut last_log = Instant::now();
    loop {
        let role = m.record.lock().map(|r| r.role.clone()).unwrap_or_default();
        let metrics = m.raft.metrics();
        let membership = metrics.membership_config.membership();
        let is_voter = membership.voter_ids().any(|id| id == raft_id);
        let has_state = membership.nodes().next().is_some();
        if role == "worker" {
            if has_state {
                tracing::warn!("this node was demoted to worker: restarting without Raft state");
                restart_as_resumed(m);
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if is_voter {
            delay = Duration::from_millis(200);
            logged = false;
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        let managers = m
            .record
            .lock()
            .map(|r| r.managers.clone())
            .unwrap_or_default();
        let mut joined = false;
        for addr in managers.iter().filter(|a| **a != m.cluster_addr) {
            let Ok(mut client) = m.clients.dispatcher(addr) else {
                continue;
            };
            let mut req = tonic::Request::new(agent_common::dispatcher_proto::JoinRaftRequest {
                raft_id,
                addr: m.cluster_addr.clone(),
            });
            // Each step has a deadline: the leader may queue the request
            // behind other joins and wait for this member to catch up.
            req.set_timeout(JOIN_RAFT_TIMEOUT);
            match client.join_raft(req).await {
                Ok(_) => {
                    tracing::info!("joined Raft as a voter through {addr}");
                    joined = true;
                    break;
                }
                Err(s) => {
                    // The first failure, then one line a minute while it lasts.
                    if !logged || last_log.elapsed() >= Duration::from_secs(60) {
                        tracing::warn!(
                            "asking {addr} to add this manager to Raft as a voter failed (retrying until it is one): {}",
                            s.message()
                        );
                        last_log = Instant::now();
                    }
                    logged = true;
                }
            }
        }
        if joined {
            continue;
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

/// Replaces this process with `flotilla-manager -H … --data-root …` (same
/// PID), which resumes from the data root.
fn restart_as_resumed(m: &Manager) {
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new("/proc/self/exe");
    match RESTART_ARGS.get() {
        Some(args) => {
            cmd.args(args);
        }
        None => {
            cmd.arg("--data-root")
                .arg(m.files.dir().parent().unwrap_or(m.files.dir()));
        }
    }
    let err = cmd.exec();
    tracing::error!("failed to restart: {err}");
}

/// Checks a token against the cluster's current one for its role.
pub fn check_token(m: &Manager, cluster: &Cluster, token: &JoinToken) -> Result<(), String> {
    if token.ca_digest() != m.ca.digest() {
        return Err(format!(
            "the join token is for another cluster (it pins CA {}, this cluster's CA is {})",
            short(&token.ca_digest()),
            short(&m.ca.digest())
        ));
    }
    let expected = m.join_token(cluster, token.role());
    if expected.token_hash().matches(token) {
        Ok(())
    } else {
        Err(format!(
            "invalid join token: it is not this cluster's current {} token (tokens change when rotated); get the current one on a manager with `flotilla join-token {}`",
            token.role().as_str(),
            token.role().as_str()
        ))
    }
}

fn short(d: &CaDigest) -> String {
    d.to_hex()[..12].to_string()
}

/// Seconds since the epoch (for logs).
pub fn unix_now() -> u64 {
    now_secs()
}

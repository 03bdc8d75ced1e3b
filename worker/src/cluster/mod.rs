//! A node's membership in a cluster, as every node (worker or manager) holds
//! it: the files under `<data-root>/cluster/` (key, certificate, CA
//! certificate, `node.json`), joining with a token, and the [`membership`]
//! the node's session with the leader keeps current (managers, period,
//! certificate renewals).
//!
//! Files (all written atomically, keys mode 0600):
//! - `node.json`: [`NodeRecord`] (ID, role, managers' addresses, ...);
//! - `key.pem`, `cert.pem`, `ca.pem`: the node's TLS identity;
//! - `ca-key.pem`: managers only, the root CA key (every manager can sign).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use agent_common::dispatcher_proto::dispatcher_client::DispatcherClient;
use agent_common::dispatcher_proto::{JoinReply, JoinRequest, RenewRequest};
use agent_common::pki::{self, JoinToken, NodeCertificate, NodeIdentity, NodeKey, NodeRole};
use agent_common::tls::{self, grpc};
use serde::{Deserialize, Serialize};
use tonic::transport::Channel;

pub mod membership;

/// Errors of joining and of the node's cluster files.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("{0}")]
    Token(#[from] pki::TokenError),
    #[error("{0}")]
    Pki(#[from] pki::PkiError),
    #[error("{0}")]
    Tls(#[from] tls::TlsError),
    #[error("failed to reach the manager at {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    #[error("the TLS handshake with the manager at {addr} failed: {reason}")]
    Handshake { addr: String, reason: String },
    #[error("the manager at {addr} refused to let this node join: {message}")]
    Refused { addr: String, message: String },
    #[error("failed to read {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("failed to write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the manager's answer was unusable: {0}")]
    BadReply(String),
}

type Result<T, E = ClusterError> = std::result::Result<T, E>;

/// What a node records about its membership (`cluster/node.json`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// The node's ID (also in its certificate).
    pub node_id: String,
    /// `manager` or `worker` (the certificate's role).
    pub role: String,
    /// Cluster ports of the managers, as last heard.
    pub managers: Vec<String>,
    /// The address other nodes reach this node at.
    pub advertise_addr: String,
    /// Managers: the address the cluster port listens on.
    #[serde(default)]
    pub listen_addr: String,
    /// Managers: the Raft member ID.
    #[serde(default)]
    pub raft_id: u64,
    /// Heartbeat period in milliseconds.
    #[serde(default)]
    pub heartbeat_period_ms: u64,
    /// The cluster removed this node (in memory: a removed worker's files
    /// are moved aside, see `Membership::retire`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removed: bool,
}

/// The cluster files of one node, under `<data-root>/cluster`.
#[derive(Clone, Debug)]
pub struct ClusterFiles {
    dir: PathBuf,
}

impl ClusterFiles {
    /// The files under `data_root`.
    pub fn new(data_root: &Path) -> Self {
        ClusterFiles {
            dir: data_root.join("cluster"),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether this node has joined (or initialized) a cluster.
    pub fn exists(&self) -> bool {
        self.dir.join("node.json").exists()
    }

    /// Where managers keep the Raft log and store.
    pub fn raft_dir(&self) -> PathBuf {
        self.dir.join("raft")
    }

    fn read(&self, name: &str) -> Result<String> {
        let path = self.dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| ClusterError::Read {
            path,
            reason: e.to_string(),
        })
    }

    fn write(&self, name: &str, contents: &[u8], private: bool) -> Result<()> {
        std::fs::create_dir_all(&self.dir).map_err(|source| ClusterError::Write {
            path: self.dir.clone(),
            source,
        })?;
        let path = self.dir.join(name);
        if private {
            return Ok(pki::write_private_file(&path, contents)?);
        }
        let tmp = self.dir.join(format!("{name}.tmp"));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(contents)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)
        };
        write().map_err(|source| ClusterError::Write { path, source })
    }

    /// The node's record.
    pub fn load_record(&self) -> Result<NodeRecord> {
        let text = self.read("node.json")?;
        serde_json::from_str(&text).map_err(|e| ClusterError::Read {
            path: self.dir.join("node.json"),
            reason: format!("corrupt: {e}"),
        })
    }

    /// Saves the node's record.
    pub fn save_record(&self, record: &NodeRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).map_err(|e| ClusterError::Write {
            path: self.dir.join("node.json"),
            source: std::io::Error::other(e),
        })?;
        self.write("node.json", &json, false)
    }

    /// The node's TLS identity.
    pub fn load_identity(&self) -> Result<NodeIdentity> {
        let (key, cert, ca) = (
            self.read("key.pem")?,
            self.read("cert.pem")?,
            self.read("ca.pem")?,
        );
        NodeIdentity::from_pem(&key, &cert, &ca).map_err(|e| ClusterError::Read {
            path: self.dir.clone(),
            reason: format!("the node's key, certificate or CA certificate is unusable: {e}"),
        })
    }

    /// Saves key, certificate and CA certificate.
    pub fn save_identity(&self, key: &NodeKey, cert_pem: &str, ca_pem: &str) -> Result<()> {
        self.write("key.pem", key.to_pem().as_bytes(), true)?;
        self.write("ca.pem", ca_pem.as_bytes(), false)?;
        self.write("cert.pem", cert_pem.as_bytes(), false)
    }

    /// Replaces only the certificate (renewal: same key).
    pub fn save_certificate(&self, cert_pem: &str) -> Result<()> {
        self.write("cert.pem", cert_pem.as_bytes(), false)
    }

    /// Managers: the root CA key.
    pub fn load_ca_key(&self) -> Result<String> {
        self.read("ca-key.pem")
    }

    /// Managers: saves the root CA key.
    pub fn save_ca_key(&self, pem: &str) -> Result<()> {
        self.write("ca-key.pem", pem.as_bytes(), true)
    }
}

/// What a successful join hands back.
pub struct Joined {
    /// The node's new identity (key made here, certificate from the manager).
    pub identity: NodeIdentity,
    /// The new node's key (to save).
    pub key: NodeKey,
    /// The manager's whole answer.
    pub reply: JoinReply,
}

/// Joins the cluster whose manager listens at `manager_addr` with `token`:
/// checks that the manager's CA is the one the token pins (before sending
/// anything), sends a CSR, and checks the certificate that comes back.
pub async fn join(
    token: &str,
    manager_addr: &str,
    hostname: &str,
    advertise_addr: &str,
    daemon: &str,
) -> Result<Joined> {
    let parsed = JoinToken::parse(token)?;
    let addr = grpc::with_port(manager_addr, agent_common::DEFAULT_CLUSTER_PORT);
    let config = Arc::new(tls::bootstrap_client_config(parsed.ca_digest())?);
    let (channel, chain) =
        grpc::connect_capturing_peer(&addr, config, tls::server_name(NodeRole::Manager))
            .await
            .map_err(|e| match e.kind() {
                // The TLS handshake refused the manager (or it refused us).
                std::io::ErrorKind::InvalidData => ClusterError::Handshake {
                    addr: addr.clone(),
                    reason: e.to_string(),
                },
                _ => ClusterError::Unreachable {
                    addr: addr.clone(),
                    reason: e.to_string(),
                },
            })?;
    let ca = tls::pinned_ca(&chain, parsed.ca_digest())?;
    let key = NodeKey::generate()?;
    let csr = key.csr()?;
    let mut client = DispatcherClient::new(channel);
    let request = JoinRequest {
        token: token.trim().to_string(),
        csr_pem: csr.to_pem(),
        hostname: hostname.to_string(),
        advertise_addr: advertise_addr.to_string(),
    };
    let mut req = tonic::Request::new(request);
    req.metadata_mut().insert(
        "x-flotilla-daemon",
        daemon
            .parse()
            .unwrap_or_else(|_| "unknown".parse().expect("ascii")),
    );
    let reply = client
        .join(req)
        .await
        .map_err(|s| ClusterError::Refused {
            addr: addr.clone(),
            message: s.message().to_string(),
        })?
        .into_inner();
    if reply.ca_pem.trim() != ca.to_pem().trim() {
        return Err(ClusterError::BadReply(
            "the CA certificate in the answer is not the one the token pins".into(),
        ));
    }
    let cert = NodeCertificate::from_pem(&reply.cert_pem)?;
    ca.verify_node(&cert, SystemTime::now())?;
    if cert.role() != parsed.role() {
        return Err(ClusterError::BadReply(format!(
            "asked to join as {} but was given a {} certificate",
            parsed.role().as_str(),
            cert.role().as_str()
        )));
    }
    let identity = NodeIdentity::new(NodeKey::from_pem(&key.to_pem())?, cert, ca)?;
    Ok(Joined {
        identity,
        key,
        reply,
    })
}

/// The node's hostname (from the kernel: a UTS namespace has its own).
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "localhost".into())
}

/// The address to advertise when none was given: the listen address if it
/// is a specific one, else the node's only non-loopback IPv4 address. Several
/// candidates (or none) → an error asking for `--advertise-addr`.
pub fn default_advertise_addr(listen_ip: Option<std::net::IpAddr>) -> Result<String, String> {
    if let Some(ip) = listen_ip.filter(|ip| !ip.is_unspecified()) {
        return Ok(ip.to_string());
    }
    let mut found = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) else {
                continue;
            };
            let ip = sin.ip();
            // Skip loopback and Flotilla's and Docker's own bridges.
            if ip.is_loopback()
                || a.interface_name.starts_with("flotilla")
                || a.interface_name.starts_with("flt")
                || a.interface_name.starts_with("fl-")
                || a.interface_name.starts_with("docker")
                || a.interface_name.starts_with("veth")
            {
                continue;
            }
            if !found.contains(&ip) {
                found.push(ip);
            }
        }
    }
    match found.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err("this machine has no non-loopback IPv4 address to advertise: pass --advertise-addr ADDR".into()),
        many => Err(format!(
            "this machine has several addresses ({}): choose the one other nodes reach it at with --advertise-addr ADDR",
            many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Clients of managers' Dispatcher services over mutual TLS, presenting this
/// node's (replaceable) identity; channels are cached per address.
#[derive(Clone)]
pub struct ManagerClients {
    config: grpc::SharedClientConfig,
    channels: Arc<Mutex<std::collections::HashMap<String, Channel>>>,
}

impl ManagerClients {
    /// Clients presenting `identity`.
    pub fn new(identity: &NodeIdentity) -> Result<Self> {
        Ok(ManagerClients {
            config: grpc::SharedClientConfig::new(tls::client_config(identity)?),
            channels: Arc::default(),
        })
    }

    /// The shared client configuration (for other clients of the same node).
    pub fn config(&self) -> &grpc::SharedClientConfig {
        &self.config
    }

    /// Presents `identity` from now on: the cached connections (made with
    /// the old certificate, which managers stop accepting once it expires)
    /// are dropped, so the next call dials with the new one.
    pub fn replace_identity(&self, identity: &NodeIdentity) -> Result<()> {
        self.config.replace(tls::client_config(identity)?);
        if let Ok(mut channels) = self.channels.lock() {
            channels.clear();
        }
        Ok(())
    }

    /// A (lazily connected) channel to the manager at `addr`.
    pub fn channel(&self, addr: &str) -> Result<Channel> {
        let addr = grpc::with_port(addr, agent_common::DEFAULT_CLUSTER_PORT);
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| ClusterError::BadReply("client cache poisoned".into()))?;
        if let Some(c) = channels.get(&addr) {
            return Ok(c.clone());
        }
        let channel = grpc::channel(
            &addr,
            self.config.clone(),
            tls::server_name(NodeRole::Manager),
        )
        .map_err(|e| ClusterError::Unreachable {
            addr: addr.clone(),
            reason: e.to_string(),
        })?;
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    /// The Dispatcher client for `addr`.
    pub fn dispatcher(&self, addr: &str) -> Result<DispatcherClient<Channel>> {
        Ok(DispatcherClient::new(self.channel(addr)?)
            .max_decoding_message_size(agent_common::MAX_MESSAGE))
    }
}

/// Asks the manager at `addr` for a fresh certificate for `identity`'s key.
/// Returns the new certificate's PEM (the role may differ after a promotion
/// or demotion).
pub async fn renew(
    clients: &ManagerClients,
    addr: &str,
    identity: &NodeIdentity,
) -> Result<String> {
    let csr = identity.key().csr()?;
    let reply = clients
        .dispatcher(addr)?
        .renew(RenewRequest {
            csr_pem: csr.to_pem(),
        })
        .await
        .map_err(|s| ClusterError::Refused {
            addr: addr.to_string(),
            message: s.message().to_string(),
        })?
        .into_inner();
    let cert = NodeCertificate::from_pem(&reply.cert_pem)?;
    identity.ca().verify_node(&cert, SystemTime::now())?;
    if !cert.matches_key(identity.key()) {
        return Err(ClusterError::BadReply(
            "the renewed certificate is for another key".into(),
        ));
    }
    Ok(reply.cert_pem)
}

/// The control API as a worker serves it on its local socket: every call
/// explains that cluster commands go to a manager, and names the managers
/// this node knows of.
pub fn not_a_manager(
    record: Option<Arc<Mutex<NodeRecord>>>,
) -> agent_common::control_proto::control_server::ControlServer<NotAManager> {
    agent_common::control_proto::control_server::ControlServer::new(NotAManager { record })
}

/// See [`not_a_manager`].
pub struct NotAManager {
    record: Option<Arc<Mutex<NodeRecord>>>,
}

impl NotAManager {
    fn refuse<T>(&self) -> Result<T, tonic::Status> {
        let managers = self
            .record
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.managers.clone()))
            .unwrap_or_default();
        let removed = self
            .record
            .as_ref()
            .and_then(|r| r.lock().ok().map(|r| r.removed))
            .unwrap_or(false);
        Err(tonic::Status::failed_precondition(match (&self.record, managers.as_slice()) {
            (Some(_), _) if removed => "this node was removed from the cluster and runs as a plain engine now: join a cluster again with `flotilla-worker join --token TOKEN MANAGER-ADDR`".to_string(),
            (None, _) => "this node is not part of a cluster: start one with `flotilla-manager init`, or join one with `flotilla-worker join --token TOKEN MANAGER-ADDR`".to_string(),
            (Some(_), []) => "this node is not a manager: run cluster commands on a manager".to_string(),
            (Some(_), m) => format!(
                "this node is not a manager: run cluster commands on a manager (managers: {})",
                m.join(", ")
            ),
        }))
    }
}

#[tonic::async_trait]
impl agent_common::control_proto::control_server::Control for NotAManager {
    async fn list_nodes(
        &self,
        _: tonic::Request<agent_common::control_proto::ReadRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn inspect_node(
        &self,
        _: tonic::Request<agent_common::control_proto::NodeRef>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn update_node(
        &self,
        _: tonic::Request<agent_common::control_proto::UpdateNodeRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn promote_node(
        &self,
        _: tonic::Request<agent_common::control_proto::NodeRef>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn demote_node(
        &self,
        _: tonic::Request<agent_common::control_proto::NodeRef>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn remove_node(
        &self,
        _: tonic::Request<agent_common::control_proto::RemoveNodeRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::Empty>, tonic::Status> {
        self.refuse()
    }
    async fn cluster_info(
        &self,
        _: tonic::Request<agent_common::control_proto::ReadRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn join_token(
        &self,
        _: tonic::Request<agent_common::control_proto::JoinTokenRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JoinTokenReply>, tonic::Status> {
        self.refuse()
    }
    async fn issue_client_cert(
        &self,
        _: tonic::Request<agent_common::control_proto::ClientCertRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::ClientCertReply>, tonic::Status> {
        self.refuse()
    }
    async fn list_client_certs(
        &self,
        _: tonic::Request<agent_common::control_proto::Empty>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn revoke_client_cert(
        &self,
        _: tonic::Request<agent_common::control_proto::RevokeClientCertRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn create_service(
        &self,
        _: tonic::Request<agent_common::control_proto::CreateServiceRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn list_services(
        &self,
        _: tonic::Request<agent_common::control_proto::ReadRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn inspect_service(
        &self,
        _: tonic::Request<agent_common::control_proto::ServiceRef>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn update_service(
        &self,
        _: tonic::Request<agent_common::control_proto::UpdateServiceRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    async fn remove_service(
        &self,
        _: tonic::Request<agent_common::control_proto::ServiceRef>,
    ) -> Result<tonic::Response<agent_common::control_proto::Empty>, tonic::Status> {
        self.refuse()
    }
    async fn list_tasks(
        &self,
        _: tonic::Request<agent_common::control_proto::ListTasksRequest>,
    ) -> Result<tonic::Response<agent_common::control_proto::JsonReply>, tonic::Status> {
        self.refuse()
    }
    type ServiceLogsStream =
        tokio_stream::Empty<Result<agent_common::control_proto::JsonReply, tonic::Status>>;
    async fn service_logs(
        &self,
        _: tonic::Request<agent_common::control_proto::ServiceLogsRequest>,
    ) -> Result<tonic::Response<Self::ServiceLogsStream>, tonic::Status> {
        self.refuse()
    }
}

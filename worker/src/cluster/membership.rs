//! A node's membership in the cluster: its files, record, identity and
//! manager clients. The node's session with the leader (in
//! `crate::agent::session`) feeds it what the leader says (managers,
//! heartbeat period, the node's role) and asks it to renew the certificate
//! once a third of its validity is left (or when the cluster changed the
//! node's role).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agent_common::pki::NodeIdentity;
use tokio::sync::watch;

use super::{renew, ClusterFiles, ManagerClients, NodeRecord};

/// The shared, replaceable identity of a node: renewals publish here, and
/// whoever serves TLS with it (a manager's cluster port) follows.
pub type IdentityWatch = watch::Receiver<Arc<NodeIdentity>>;

/// What a node needs to take part in the cluster.
pub struct Membership {
    /// The node's files (record and certificate are saved as they change).
    pub files: ClusterFiles,
    /// The node's record (managers list, period).
    pub record: Arc<Mutex<NodeRecord>>,
    /// Publishes the current identity.
    pub identity: watch::Sender<Arc<NodeIdentity>>,
    /// Clients presenting the current identity.
    pub clients: ManagerClients,
    /// The hostname to report.
    pub hostname: String,
    /// Told the role the cluster records for this node whenever it changes.
    pub role_changes: Option<tokio::sync::mpsc::Sender<String>>,
}

impl Membership {
    /// The managers to try, this node's advertised address and the
    /// heartbeat period, as recorded now.
    pub fn snapshot(&self) -> (Vec<String>, String, Duration) {
        match self.record.lock() {
            Ok(r) => (
                r.managers.clone(),
                r.advertise_addr.clone(),
                Duration::from_millis(r.heartbeat_period_ms.clamp(100, 60_000)),
            ),
            Err(_) => (Vec::new(), String::new(), Duration::from_secs(1)),
        }
    }

    /// This node's ID.
    pub fn node_id(&self) -> String {
        self.record
            .lock()
            .map(|r| r.node_id.clone())
            .unwrap_or_default()
    }

    /// Takes in what the leader says of the cluster: managers, period, and
    /// the role it records for this node (a change is passed on to
    /// `role_changes`).
    pub fn absorb(&self, reply: &agent_common::dispatcher_proto::SessionInfo) {
        let Ok(mut r) = self.record.lock() else {
            return;
        };
        let role = r.role.clone();
        let mut changed = false;
        if !reply.managers.is_empty() && reply.managers != r.managers {
            r.managers = reply.managers.clone();
            changed = true;
        }
        if reply.period_ms != 0 && reply.period_ms != r.heartbeat_period_ms {
            r.heartbeat_period_ms = reply.period_ms;
            changed = true;
        }
        if changed {
            if let Err(e) = self.files.save_record(&r) {
                tracing::warn!("failed to save the node record: {e}");
            }
        }
        drop(r);
        if !reply.role.is_empty() && reply.role != role {
            if let Some(tx) = &self.role_changes {
                let _ = tx.try_send(reply.role.clone());
            }
        }
    }

    /// Marks the node removed from the cluster. A worker's cluster files are
    /// moved aside to `<data-root>/cluster.removed-<unix seconds>`, so the
    /// daemon starts as a plain engine from then on and can join a cluster
    /// again; returns where they went. A manager's (which hold its Raft log)
    /// are left in place: `None`.
    pub fn retire(&self) -> std::io::Result<Option<std::path::PathBuf>> {
        let is_worker = match self.record.lock() {
            Ok(mut r) => {
                r.removed = true;
                r.managers.clear();
                r.raft_id == 0 && r.role != "manager"
            }
            Err(_) => false,
        };
        if !is_worker {
            return Ok(None);
        }
        let dir = self.files.dir().to_path_buf();
        let secs = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let to = dir.with_file_name(format!("cluster.removed-{secs}"));
        std::fs::rename(&dir, &to)?;
        Ok(Some(to))
    }

    /// Renews the certificate through the manager at `target` when a third
    /// of its validity is left, or when the cluster records another role
    /// than it carries. Returns whether the node now has a new certificate
    /// (its connections should be opened again to present it).
    pub async fn renew_if_due(&self, target: &str, cluster_role: &str) -> bool {
        let current = self.identity.borrow().clone();
        let cert_role = current.role().as_str();
        let role_changed = !cluster_role.is_empty() && cluster_role != cert_role;
        if !role_changed && !current.certificate().needs_renewal(SystemTime::now()) {
            return false;
        }
        match renew(&self.clients, target, &current).await {
            Ok(pem) => {
                let renewed = agent_common::pki::NodeCertificate::from_pem(&pem)
                    .map_err(|e| e.to_string())
                    .and_then(|cert| {
                        NodeIdentity::from_pem(
                            &current.key().to_pem(),
                            &cert.to_pem(),
                            &current.ca().to_pem(),
                        )
                        .map_err(|e| e.to_string())
                    });
                match renewed {
                    Ok(identity) => {
                        if let Err(e) = self.files.save_certificate(&pem) {
                            tracing::warn!("failed to save the renewed certificate: {e}");
                            return false;
                        }
                        if let Err(e) = self.clients.replace_identity(&identity) {
                            tracing::warn!("failed to use the renewed certificate: {e}");
                            return false;
                        }
                        tracing::info!(
                            role = identity.role().as_str(),
                            "renewed the node certificate"
                        );
                        if let Ok(mut r) = self.record.lock() {
                            r.role = identity.role().as_str().to_string();
                            let _ = self.files.save_record(&r);
                        }
                        self.identity.send_replace(Arc::new(identity));
                        true
                    }
                    Err(e) => {
                        tracing::warn!("the renewed certificate is unusable: {e}");
                        false
                    }
                }
            }
            Err(e) => {
                tracing::warn!("certificate renewal failed: {e}");
                false
            }
        }
    }
}

//! The heartbeat loop every cluster node runs: tells the leader it is alive
//! once per period, follows the leader when a follower names it, moves to
//! another manager when one stops answering, keeps the list of managers up to
//! date, and renews the node's certificate once a third of its validity is
//! left (or when the cluster changed the node's role).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use agent_common::pki::NodeIdentity;
use tokio::sync::watch;

use super::{heartbeat_once, renew, ClusterFiles, ManagerClients, NodeRecord};

/// The shared, replaceable identity of a node: renewals publish here, and
/// whoever serves TLS with it (a manager's cluster port) follows.
pub type IdentityWatch = watch::Receiver<Arc<NodeIdentity>>;

/// The running heartbeat loop's inputs.
pub struct Heartbeats {
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

impl Heartbeats {
    /// Runs forever.
    pub async fn run(self) {
        let mut target_index = 0usize;
        let mut leader_hint: Option<String> = None;
        let mut failures = 0u32;
        loop {
            let (managers, advertise, period, role) = {
                let r = match self.record.lock() {
                    Ok(r) => r.clone(),
                    Err(_) => return,
                };
                (
                    r.managers,
                    r.advertise_addr,
                    Duration::from_millis(r.heartbeat_period_ms.clamp(100, 60_000)),
                    r.role,
                )
            };
            if managers.is_empty() && leader_hint.is_none() {
                tokio::time::sleep(period).await;
                continue;
            }
            let target = leader_hint
                .clone()
                .unwrap_or_else(|| managers[target_index % managers.len().max(1)].clone());
            match heartbeat_once(&self.clients, &target, &self.hostname, &advertise).await {
                Ok(reply) if !reply.accepted => {
                    failures = 0;
                    if !reply.leader_addr.is_empty() && reply.leader_addr != target {
                        leader_hint = Some(reply.leader_addr);
                        continue;
                    }
                    // No leader known yet (an election is running): ask again soon.
                    leader_hint = None;
                    tokio::time::sleep(period / 2).await;
                    continue;
                }
                Ok(reply) => {
                    failures = 0;
                    leader_hint = Some(target.clone());
                    self.absorb(&reply, &role);
                    self.renew_if_due(&target, &reply.role, &role).await;
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures % 30 == 0 {
                        tracing::warn!("heartbeat to {target} failed: {e}");
                    }
                    leader_hint = None;
                    target_index = target_index.wrapping_add(1);
                    // Try the next manager right away, but do not spin when
                    // every one of them is down.
                    if failures as usize % managers.len().max(1) != 0 {
                        continue;
                    }
                }
            }
            tokio::time::sleep(period).await;
        }
    }

    fn absorb(&self, reply: &agent_common::dispatcher_proto::HeartbeatReply, role: &str) {
        let Ok(mut r) = self.record.lock() else {
            return;
        };
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
        if !reply.role.is_empty() && reply.role != role {
            if let Some(tx) = &self.role_changes {
                let _ = tx.try_send(reply.role.clone());
            }
        }
    }

    /// Renews when a third of the validity is left, or when the cluster
    /// records another role than the certificate carries.
    async fn renew_if_due(&self, target: &str, cluster_role: &str, _record_role: &str) {
        let current = self.identity.borrow().clone();
        let cert_role = current.role().as_str();
        let role_changed = !cluster_role.is_empty() && cluster_role != cert_role;
        if !role_changed && !current.certificate().needs_renewal(SystemTime::now()) {
            return;
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
                            return;
                        }
                        if let Err(e) = self.clients.replace_identity(&identity) {
                            tracing::warn!("failed to use the renewed certificate: {e}");
                            return;
                        }
                        tracing::info!(
                            role = identity.role().as_str(),
                            "renewed the node certificate"
                        );
                        if let Ok(mut r) = self.record.lock() {
                            r.role = identity.role().as_str().to_string();
                            let _ = self.files.save_record(&r);
                        }
                        let _ = self.identity.send(Arc::new(identity));
                    }
                    Err(e) => tracing::warn!("the renewed certificate is unusable: {e}"),
                }
            }
            Err(e) => tracing::warn!("certificate renewal failed: {e}"),
        }
    }
}

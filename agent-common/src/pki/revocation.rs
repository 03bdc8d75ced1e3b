//! Revoked nodes and certificates, as the TLS verifiers see them.

use std::collections::BTreeSet;
use std::sync::{Arc, RwLock};

use super::node::{CertSerial, NodeCertificate, NodeId};

/// Node IDs and certificate serials that must be refused even though the CA signed them: a node
/// removed with `node rm` is revoked by ID (all its certificates), a single leaked or superseded
/// certificate by serial. The manager keeps the authoritative list in its store.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevocationList {
    nodes: BTreeSet<NodeId>,
    serials: BTreeSet<CertSerial>,
}

impl RevocationList {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Refuses every certificate of `node`. Returns false if it was already revoked.
    pub fn revoke_node(&mut self, node: NodeId) -> bool {
        self.nodes.insert(node)
    }

    /// Refuses the certificate with `serial`. Returns false if it was already revoked.
    pub fn revoke_serial(&mut self, serial: CertSerial) -> bool {
        self.serials.insert(serial)
    }

    /// True when `cert`'s node or serial is revoked.
    pub fn is_revoked(&self, cert: &NodeCertificate) -> bool {
        self.nodes.contains(cert.node_id()) || self.serials.contains(cert.serial())
    }

    /// The revoked node IDs.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeId> {
        self.nodes.iter()
    }

    /// The revoked serials.
    pub fn serials(&self) -> impl Iterator<Item = &CertSerial> {
        self.serials.iter()
    }
}

/// A shared, live [`RevocationList`]: the TLS verifiers hold a clone and consult it on every
/// handshake, while the manager updates it as nodes are removed.
#[derive(Clone, Debug, Default)]
pub struct Revocations(Arc<RwLock<RevocationList>>);

impl Revocations {
    /// A shared handle on `list`.
    pub fn new(list: RevocationList) -> Self {
        Self(Arc::new(RwLock::new(list)))
    }

    /// Replaces the whole list (e.g. from the store after a snapshot).
    pub fn replace(&self, list: RevocationList) {
        *self.write() = list;
    }

    /// Refuses every certificate of `node` from the next handshake on.
    pub fn revoke_node(&self, node: NodeId) -> bool {
        self.write().revoke_node(node)
    }

    /// Refuses the certificate with `serial` from the next handshake on.
    pub fn revoke_serial(&self, serial: CertSerial) -> bool {
        self.write().revoke_serial(serial)
    }

    /// True when `cert` is revoked.
    pub fn is_revoked(&self, cert: &NodeCertificate) -> bool {
        self.read().is_revoked(cert)
    }

    /// A copy of the current list.
    pub fn snapshot(&self) -> RevocationList {
        self.read().clone()
    }

    // A writer that panicked mid-update can only have left a set with or without one entry:
    // still a valid list, so poisoning is ignored rather than turned into a panic here.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, RevocationList> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, RevocationList> {
        self.0.write().unwrap_or_else(|e| e.into_inner())
    }
}

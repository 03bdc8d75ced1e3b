//! Raft replication of the store, with `openraft` 0.9 (`storage-v2`).
//!
//! ```text
//!   Store::update ─► RaftProposer ─► Raft::client_write ─► LogStore (redb, fsync)
//!                                         │  replicate: GrpcNetwork ─► peers' RaftService
//!                                         ▼  commit on a quorum
//!                               StateMachine::apply ─► Store::apply_committed (every replica)
//! ```
//!
//! What it owns: the [`TypeConfig`] (`D` = a [`Batch`], `R` = its
//! [`BatchOutcome`]), the redb-backed [`LogStore`] (log, vote, purge point),
//! the [`StateMachine`] adapter that drives the store and its snapshots, the
//! tonic transport ([`network`], [`service`]), forwarding of writes, reads
//! and membership changes to the leader ([`forward`]), membership changes
//! with quorum checks ([`membership`]), `--force-new-cluster` recovery
//! ([`recovery`]) and [`RaftNode`], which wires one member together. What it
//! does not own: the tables and version checks (`crate::store`), TLS (the
//! transport takes a pluggable [`network::Connector`]; the service is a
//! plain tonic service the daemon mounts on its mTLS port) and membership
//! *policy* (who may be removed without `--force`: the daemon decides from
//! [`ClusterInfo`]).

// openraft 0.9's storage traits fix `StorageError` (224 bytes) as the error
// type; boxing it in our helpers would only move the conversion around.
#![allow(clippy::result_large_err)]

pub mod forward;
pub mod local_cluster;
pub mod log_store;
pub mod membership;
pub mod network;
mod node;
pub mod recovery;
pub mod service;
pub mod state_machine;
#[cfg(test)]
mod suite_test;

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};

pub use forward::ForwardError;
pub use log_store::LogStore;
pub use membership::{ClusterInfo, MemberInfo, Membership, MembershipError};
pub use network::{AppendLimits, BoxError, Connector, GrpcNetwork, PlainConnector};
pub use node::{RaftNode, RaftNodeError, RaftOptions, RaftProposer, LOG_FILE, STORE_FILE};
pub use recovery::{force_new_cluster, ForcedCluster};
pub use service::RaftService;

/// A member more than this many entries behind the leader's log is
/// lagging: `node ls` says so, and it starts no elections while it is.
pub const LAGGING_ENTRIES: u64 = service::LAG_ENTRIES;
pub use state_machine::StateMachine;

use crate::store::{Batch, BatchOutcome};

/// The generated protobuf types of `proto/raft.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flotilla.raft.v1");
}

/// A manager's Raft node id.
pub type NodeId = u64;

/// What the cluster knows about a member: where to reach it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct ManagerNode {
    /// Address of its Raft (peer) gRPC service, `host:port`.
    pub raft_addr: String,
    /// Address of its control API, `host:port` (where clients are sent by a
    /// forward-to-leader error).
    pub api_addr: String,
}

impl fmt::Display for ManagerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft={} api={}", self.raft_addr, self.api_addr)
    }
}

/// The snapshot payload: the store's tables serialized (JSON).
pub type SnapshotData = Cursor<Vec<u8>>;

openraft::declare_raft_types!(
    /// Flotilla's Raft types: entries carry store batches.
    pub TypeConfig:
        D = Batch,
        R = BatchOutcome,
        NodeId = NodeId,
        Node = ManagerNode,
        SnapshotData = SnapshotData,
);

/// Short names for openraft's generic types.
pub mod typ {
    use super::{ManagerNode, NodeId, TypeConfig};

    /// A log entry.
    pub type Entry = openraft::Entry<TypeConfig>;
    /// A Raft instance.
    pub type Raft = openraft::Raft<TypeConfig>;
    /// A snapshot.
    pub type Snapshot = openraft::Snapshot<TypeConfig>;
    /// Snapshot metadata.
    pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, ManagerNode>;
    /// Storage error.
    pub type StorageError = openraft::StorageError<NodeId>;
    /// A Raft API error.
    pub type RaftError<E = openraft::error::Infallible> = openraft::error::RaftError<NodeId, E>;
    /// An RPC error as the network layer reports it.
    pub type RPCError<E = openraft::error::Infallible> =
        openraft::error::RPCError<NodeId, ManagerNode, RaftError<E>>;
    /// A client write error.
    pub type ClientWriteError = openraft::error::ClientWriteError<NodeId, ManagerNode>;
    /// Not the leader; where it is.
    pub type ForwardToLeader = openraft::error::ForwardToLeader<NodeId, ManagerNode>;
    /// Raft metrics.
    pub type RaftMetrics = openraft::RaftMetrics<NodeId, ManagerNode>;
}

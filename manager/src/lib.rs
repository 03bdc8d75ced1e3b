//! The manager's library: the replicated store ([`store`]), its Raft
//! replication ([`raft`]), the daemon that wires them with the cluster CA
//! ([`daemon`]) and its gRPC services ([`api`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod api;
pub mod daemon;
pub mod logs;
pub mod orchestrator;
pub mod raft;
pub mod scheduler;
pub mod store;

//! The manager's library: the replicated store ([`store`]) and its Raft
//! replication ([`raft`]). The `flotilla-manager` binary wires these together
//! with the control API, CA and reconcilers (later issues).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod raft;
pub mod store;

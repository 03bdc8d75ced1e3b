//! Flotilla's shared vocabulary: the gRPC protocols between the CLI, workers
//! and managers, and the serde types those protocols carry. Nothing here does
//! I/O beyond what tonic's generated clients and servers do.
#![forbid(unsafe_code)]

/// Largest gRPC message the cluster's own endpoints accept (a node's
/// complete assignments, log chunks); tonic's default is 4 MB.
pub const MAX_MESSAGE: usize = 64 << 20;

pub mod cluster;
pub mod engine;
pub mod objects;
pub mod pki;
pub mod reference;
pub mod spec;
pub mod task_state;
pub mod tls;
pub mod validate;

/// The local engine API (client → local worker), generated from `proto/engine.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flotilla.engine.v1");
}

/// The cluster control API (client → manager), generated from `proto/control.proto`.
pub mod control_proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flotilla.control.v1");
}

/// Node ↔ manager calls (join, heartbeats, renewal), from `proto/dispatcher.proto`.
pub mod dispatcher_proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flotilla.dispatcher.v1");
}

/// The cluster port managers listen on unless told otherwise (swarm's).
pub const DEFAULT_CLUSTER_PORT: u16 = 2377;

/// The engine API version the CLI and daemon speak.
pub const ENGINE_API_VERSION: &str = "1.0";

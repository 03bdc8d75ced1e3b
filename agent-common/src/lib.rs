//! Flotilla's shared vocabulary: the gRPC protocols between the CLI, workers
//! and managers, and the serde types those protocols carry. Nothing here does
//! I/O beyond what tonic's generated clients and servers do.
#![forbid(unsafe_code)]

pub mod engine;
pub mod objects;
pub mod pki;
pub mod task_state;
pub mod tls;

/// The local engine API (client → local worker), generated from `proto/engine.proto`.
pub mod proto {
    #![allow(missing_docs, clippy::all)]
    tonic::include_proto!("flotilla.engine.v1");
}

/// The engine API version the CLI and daemon speak.
pub const ENGINE_API_VERSION: &str = "1.0";

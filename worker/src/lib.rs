//! The Flotilla worker: a node's local container engine.
//!
//! - [`image`]: content-addressed image store, layer unpacking, load/save/import, registries
//! - [`runtime`]: isolation (namespaces, overlayfs rootfs, cgroups, capabilities) and the shim
//! - [`engine`]: containers, exec, logs and volumes behind the engine API
//! - [`volume`]: named, anonymous and bind volumes
//! - [`cluster`]: the node's membership (join, heartbeats, certificates)
//! - [`agent`]: the worker agent running the tasks the managers assign to the node
#![deny(unsafe_code)]

pub mod agent;
pub mod cluster;
pub mod daemon;
pub mod engine;
pub mod image;
pub mod network;
pub mod runtime;
pub mod volume;

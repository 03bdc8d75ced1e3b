//! The objects the managers keep in their replicated store: [`Node`],
//! [`Service`], [`Task`], [`Network`] and [`Cluster`]. Each carries a
//! [`Meta`] whose `version` is the store's optimistic-concurrency token: an
//! update naming a version other than the stored one is refused.
//!
//! These types are plain data: they do no I/O and enforce no policy (the
//! store checks versions; `task_state` checks task transitions). The fields
//! are the minimum the managers issue needs; later issues grow them, always
//! with `#[serde(default)]` so older stored objects keep decoding.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::task_state::TaskState;

/// Nanoseconds since the Unix epoch. Set by the store (from the proposer's
/// clock, so every replica stores the same value), never by readers.
pub type Timestamp = u64;

/// Bookkeeping every stored object carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Meta {
    /// Stable identifier, unique within its kind. Empty on create means
    /// "let the store assign one".
    pub id: String,
    /// The store version this object was last written at (the Raft log index
    /// of that write). Updates must name the version they read.
    pub version: u64,
    /// When the object was created.
    pub created_at: Timestamp,
    /// When the object was last written.
    pub updated_at: Timestamp,
}

/// The kinds of object the store holds; one table each.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// [`Node`]
    Node,
    /// [`Service`]
    Service,
    /// [`Task`]
    Task,
    /// [`Network`]
    Network,
    /// [`Cluster`]
    Cluster,
}

impl Kind {
    /// Every kind, in table order.
    pub const ALL: [Kind; 5] = [
        Kind::Node,
        Kind::Service,
        Kind::Task,
        Kind::Network,
        Kind::Cluster,
    ];

    /// The lowercase name used in messages and table names.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Node => "node",
            Kind::Service => "service",
            Kind::Task => "task",
            Kind::Network => "network",
            Kind::Cluster => "cluster",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node's role in the cluster.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Runs tasks only.
    #[default]
    Worker,
    /// A Raft member (and, unless drained, a worker too).
    Manager,
}

/// Whether the scheduler may place tasks on a node.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    /// New tasks may be scheduled here.
    #[default]
    Active,
    /// No new tasks; running ones stay.
    Pause,
    /// No tasks: running ones are moved away.
    Drain,
}

/// How a drain moves a node's running tasks of replicated services.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum DrainOrder {
    /// Each replacement starts elsewhere, and runs, before the task it
    /// replaces stops: the service never has fewer running tasks.
    #[default]
    StartFirst,
    /// Tasks stop at once and are replaced elsewhere (swarm mode's drain),
    /// except those of services updated start-first.
    StopFirst,
}

/// A node's liveness as the managers see it.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Not heard from yet.
    #[default]
    Unknown,
    /// Heartbeating.
    Ready,
    /// Heartbeats stopped.
    Down,
}

/// A machine in the cluster.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Node {
    /// Identity and version.
    pub meta: Meta,
    /// The node's hostname, as listed by `node ls`.
    #[serde(default)]
    pub hostname: String,
    /// Worker or manager.
    #[serde(default)]
    pub role: NodeRole,
    /// Scheduling availability (set by the operator).
    #[serde(default)]
    pub availability: Availability,
    /// Liveness (set by the dispatcher).
    #[serde(default)]
    pub status: NodeStatus,
    /// The address other nodes reach it at.
    #[serde(default)]
    pub addr: String,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Managers: the node's Raft member ID (0 for workers).
    #[serde(default)]
    pub raft_id: u64,
    /// The daemon the node runs: `flotilla-manager` (can be promoted and demoted) or
    /// `flotilla-worker` (a worker only).
    #[serde(default)]
    pub daemon: String,
    /// The CPUs and memory the node reported when its session opened (`None`
    /// until it did: the scheduler then treats its capacity as unknown and
    /// does not limit reservations by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::spec::ResourceAmounts>,
    /// How a drain of this node moves its tasks (set by the operator).
    #[serde(default)]
    pub drain_order: DrainOrder,
}

/// A declared service: what to run, and how many.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Identity and version.
    pub meta: Meta,
    /// Unique service name.
    #[serde(default)]
    pub name: String,
    /// Image reference the tasks run.
    #[serde(default)]
    pub image: String,
    /// Desired replica count (replicated mode).
    #[serde(default)]
    pub replicas: u64,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What to run and how (the whole service definition). `name`, `image`
    /// and `replicas` above mirror it for listings.
    #[serde(default)]
    pub spec: crate::spec::ServiceSpec,
    /// The previous definition, kept for `service rollback`.
    #[serde(default)]
    pub previous_spec: Option<crate::spec::ServiceSpec>,
    /// Bumped by every spec change (and `update --force`): tasks carry the
    /// generation they were made from, so the updater knows which are stale.
    #[serde(default)]
    pub spec_generation: u64,
    /// The progress of the last update or rollback (written by the orchestrator).
    #[serde(default)]
    pub update_status: Option<UpdateStatus>,
}

/// Where a rolling update stands (`service inspect` shows it).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateStatus {
    /// `updating`, `paused`, `completed`, `rollback_started`, `rollback_completed`.
    pub state: String,
    /// Why (e.g. which task failed).
    #[serde(default)]
    pub message: String,
    /// The spec generation being rolled out.
    #[serde(default)]
    pub generation: u64,
}

/// One scheduled instance of a service.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Task {
    /// Identity and version.
    pub meta: Meta,
    /// The service this task belongs to.
    #[serde(default)]
    pub service_id: String,
    /// Replica slot (1-based) for replicated services.
    #[serde(default)]
    pub slot: u64,
    /// The node it is assigned to, once scheduled.
    #[serde(default)]
    pub node_id: Option<String>,
    /// Observed state (moves forward only; see `task_state`).
    pub state: TaskState,
    /// The state the orchestrator wants.
    pub desired_state: TaskState,
    /// Human-readable explanation of the current state.
    #[serde(default)]
    pub message: String,
    /// The service's name (containers are named `<service>.<slot>.<task id>`).
    #[serde(default)]
    pub service_name: String,
    /// What to run (a copy of the service's task spec when the task was made).
    #[serde(default)]
    pub spec: crate::spec::TaskSpec,
    /// The service's `spec_generation` this task was made from.
    #[serde(default)]
    pub spec_generation: u64,
    /// The container running the task, once the agent created it.
    #[serde(default)]
    pub container_id: String,
    /// The container's exit code, once it exited.
    #[serde(default)]
    pub exit_code: Option<i64>,
    /// Why it failed or was rejected (empty otherwise).
    #[serde(default)]
    pub error: String,
    /// When the agent reported it running (set by the dispatcher).
    #[serde(default)]
    pub running_at: Option<Timestamp>,
}

impl Default for Task {
    fn default() -> Self {
        Task {
            meta: Meta::default(),
            service_id: String::new(),
            slot: 0,
            node_id: None,
            state: TaskState::New,
            desired_state: TaskState::Running,
            message: String::new(),
            service_name: String::new(),
            spec: crate::spec::TaskSpec::default(),
            spec_generation: 0,
            container_id: String::new(),
            exit_code: None,
            error: String::new(),
            running_at: None,
        }
    }
}

/// A cluster-wide network.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Network {
    /// Identity and version.
    pub meta: Meta,
    /// Unique network name.
    #[serde(default)]
    pub name: String,
    /// Driver (`overlay` for cluster networks).
    #[serde(default)]
    pub driver: String,
    /// Allocated subnet in CIDR form, once allocated.
    #[serde(default)]
    pub subnet: Option<String>,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Cluster-wide settings (one object per cluster).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Cluster {
    /// Identity and version.
    pub meta: Meta,
    /// Cluster name (`default`).
    #[serde(default)]
    pub name: String,
    /// Digest of the root CA certificate that join tokens pin.
    #[serde(default)]
    pub root_ca_digest: String,
    /// Hash of the current worker join token's secret.
    #[serde(default)]
    pub worker_token_hash: String,
    /// Hash of the current manager join token's secret.
    #[serde(default)]
    pub manager_token_hash: String,
    /// Rotation nonce of the worker join token (the token is derived from the CA key and this
    /// nonce, so only managers, which hold the key, can show it).
    #[serde(default)]
    pub worker_token_nonce: String,
    /// Rotation nonce of the manager join token.
    #[serde(default)]
    pub manager_token_nonce: String,
    /// IDs of nodes removed from the cluster: their certificates are refused.
    #[serde(default)]
    pub revoked_nodes: Vec<String>,
    /// How often nodes heartbeat, in milliseconds.
    #[serde(default)]
    pub heartbeat_period_ms: u64,
    /// Validity of node certificates, in seconds.
    #[serde(default)]
    pub node_cert_validity_secs: u64,
    /// Operator labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Any stored object, tagged by kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "kind", content = "object", rename_all = "lowercase")]
// A service carries its spec twice (current and previous): boxing it would
// change every match on objects for little gain.
#[allow(clippy::large_enum_variant)]
pub enum Object {
    /// A [`Node`].
    Node(Node),
    /// A [`Service`].
    Service(Service),
    /// A [`Task`].
    Task(Task),
    /// A [`Network`].
    Network(Network),
    /// A [`Cluster`].
    Cluster(Cluster),
}

impl Object {
    /// The object's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Object::Node(_) => Kind::Node,
            Object::Service(_) => Kind::Service,
            Object::Task(_) => Kind::Task,
            Object::Network(_) => Kind::Network,
            Object::Cluster(_) => Kind::Cluster,
        }
    }

    /// The object's metadata.
    pub fn meta(&self) -> &Meta {
        match self {
            Object::Node(o) => &o.meta,
            Object::Service(o) => &o.meta,
            Object::Task(o) => &o.meta,
            Object::Network(o) => &o.meta,
            Object::Cluster(o) => &o.meta,
        }
    }

    /// The object's metadata, mutably.
    pub fn meta_mut(&mut self) -> &mut Meta {
        match self {
            Object::Node(o) => &mut o.meta,
            Object::Service(o) => &mut o.meta,
            Object::Task(o) => &mut o.meta,
            Object::Network(o) => &mut o.meta,
            Object::Cluster(o) => &mut o.meta,
        }
    }

    /// The object's unique name, for kinds whose names are unique
    /// (services and networks).
    pub fn unique_name(&self) -> Option<&str> {
        match self {
            Object::Service(o) => Some(&o.name),
            Object::Network(o) => Some(&o.name),
            _ => None,
        }
    }
}

/// A concrete object type that can be stored in and read from the store.
pub trait StoredObject: Clone + Sized {
    /// The table it lives in.
    const KIND: Kind;
    /// Wrap it as an [`Object`].
    fn into_object(self) -> Object;
    /// Borrow it back out of an [`Object`] of the right kind.
    fn from_object_ref(object: &Object) -> Option<&Self>;
    /// Its metadata.
    fn meta(&self) -> &Meta;
}

macro_rules! stored_object {
    ($t:ident) => {
        impl StoredObject for $t {
            const KIND: Kind = Kind::$t;
            fn into_object(self) -> Object {
                Object::$t(self)
            }
            fn from_object_ref(object: &Object) -> Option<&Self> {
                match object {
                    Object::$t(o) => Some(o),
                    _ => None,
                }
            }
            fn meta(&self) -> &Meta {
                &self.meta
            }
        }

        impl From<$t> for Object {
            fn from(o: $t) -> Object {
                Object::$t(o)
            }
        }
    };
}

stored_object!(Node);
stored_object!(Service);
stored_object!(Task);
stored_object!(Network);
stored_object!(Cluster);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_round_trips_through_json_with_its_kind() {
        let o = Object::Service(Service {
            name: "web".into(),
            replicas: 3,
            ..Default::default()
        });
        let json = serde_json::to_string(&o).unwrap();
        assert!(json.contains("\"kind\":\"service\""), "{json}");
        let back: Object = serde_json::from_str(&json).unwrap();
        assert_eq!(back, o);
        assert_eq!(back.kind(), Kind::Service);
    }
}

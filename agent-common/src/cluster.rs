//! The documents of the control API (`proto/control.proto`): what `node ls`,
//! `node inspect` and `cluster info` print, as JSON shared by the manager and
//! the CLI.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::objects::{Availability, DrainOrder, NodeRole, NodeStatus, Timestamp};

/// A node as `node ls` / `node inspect` show it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct NodeView {
    /// The node ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Store version of the node object (for scripts that update it).
    pub version: u64,
    /// When the node joined.
    pub created_at: Timestamp,
    /// When the node object was last written.
    pub updated_at: Timestamp,
    /// The node's hostname.
    pub hostname: String,
    /// worker or manager.
    pub role: NodeRole,
    /// active, pause or drain.
    pub availability: Availability,
    /// How a drain moves the node's tasks: start-first or stop-first.
    #[serde(default)]
    pub drain_order: DrainOrder,
    /// ready, down or unknown.
    pub status: NodeStatus,
    /// The address the node is reached at.
    pub addr: String,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// The CPUs and memory the node reported (absent until it did).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<crate::spec::ResourceAmounts>,
    /// Managers only: Raft standing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
    /// Whether this is the node that answered (`*` in `node ls`).
    #[serde(rename = "Self")]
    pub is_self: bool,
}

/// A manager's standing in Raft, as seen by the answering manager.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ManagerStatus {
    /// The member's Raft ID.
    #[serde(rename = "RaftID")]
    pub raft_id: u64,
    /// Whether it leads.
    pub leader: bool,
    /// `reachable`, `unreachable` or `unknown` (Docker's words).
    pub reachability: String,
    /// Its cluster address.
    pub addr: String,
    /// A Raft voter (counted for the quorum); `false`: a learner that is
    /// still joining (replicated to, not counted).
    #[serde(default = "yes")]
    pub voter: bool,
    /// Entries behind the leader's log, when the leader knows it (only
    /// reported when it is more than a moment's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<u64>,
}

fn yes() -> bool {
    true
}

impl ManagerStatus {
    /// The MANAGER STATUS column of `node ls`: Leader, Reachable,
    /// Unreachable, `Lagging (N behind)` for a reachable manager catching
    /// up, `Joining` for a member that does not vote yet.
    pub fn column(&self) -> String {
        if self.leader {
            "Leader".into()
        } else if !self.voter {
            match self.reachability.as_str() {
                "unreachable" => "Joining (unreachable)".into(),
                _ => "Joining".into(),
            }
        } else if self.reachability == "reachable" {
            match self.lag {
                Some(n) => format!("Lagging ({n} behind)"),
                None => "Reachable".into(),
            }
        } else if self.reachability == "unreachable" {
            "Unreachable".into()
        } else {
            "Unknown".into()
        }
    }

    /// A voter that could vote for and replicate a write now: reachable
    /// (or the leader) and not lagging.
    pub fn healthy_voter(&self) -> bool {
        self.voter && (self.leader || (self.reachability == "reachable" && self.lag.is_none()))
    }
}

/// A warning for `node ls` / `cluster info` when the cluster cannot lose
/// another manager: `None` when it can (or when it has a single manager,
/// which never could). `managers` is the leader's view.
pub fn quorum_warning(managers: &[ManagerStatus]) -> Option<String> {
    let voters = managers.iter().filter(|m| m.voter).count();
    // Only the leader knows who is reachable (a view without it says
    // "unknown" and warns about nothing).
    if voters < 2 || managers.iter().any(|m| m.reachability == "unknown") {
        return None;
    }
    let healthy = managers.iter().filter(|m| m.healthy_voter()).count();
    let quorum = voters / 2 + 1;
    if healthy > quorum {
        return None;
    }
    Some(if healthy == quorum {
        format!(
            "WARNING: {healthy} of {voters} managers are reachable and up to date, exactly a quorum: the cluster cannot lose another manager"
        )
    } else {
        format!(
            "WARNING: only {healthy} of {voters} managers are reachable and up to date, a quorum needs {quorum}: writes may fail until managers come back"
        )
    })
}

/// What `cluster info` shows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ClusterInfo {
    /// The cluster object's ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// The answering manager's node ID.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// The leader's node ID, if one is known.
    #[serde(rename = "LeaderID")]
    pub leader_id: Option<String>,
    /// The leader's cluster address.
    pub leader_addr: Option<String>,
    /// Raft term as this manager sees it.
    pub raft_term: u64,
    /// Last log index on this manager.
    pub raft_last_index: u64,
    /// Last applied (committed) index on this manager.
    pub raft_applied_index: u64,
    /// The managers (Raft voters and learners).
    pub managers: Vec<ManagerStatus>,
    /// Node counts by status: ready, down, unknown.
    pub nodes_by_status: BTreeMap<String, u64>,
    /// Total number of nodes.
    pub nodes: u64,
    /// SHA-256 of the root CA certificate (what join tokens pin).
    #[serde(rename = "CACertDigest")]
    pub ca_digest: String,
    /// Heartbeat period in milliseconds.
    pub heartbeat_period_ms: u64,
}

/// A service as `service ls` / `service inspect` show it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceView {
    /// The service ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// Store version (for updates that must not overwrite a concurrent one).
    pub version: u64,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it was last written.
    pub updated_at: Timestamp,
    /// The definition.
    pub spec: crate::spec::ServiceSpec,
    /// The definition before the last update, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_spec: Option<crate::spec::ServiceSpec>,
    /// `replicated`, `global`, `replicated-job`, `global-job`.
    pub mode: String,
    /// Tasks running now.
    pub running: u64,
    /// Tasks wanted (replicas, or eligible nodes for global services).
    pub desired: u64,
    /// The last rolling update's progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_status: Option<crate::objects::UpdateStatus>,
}

/// A task as `service ps` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct TaskView {
    /// Task ID.
    #[serde(rename = "ID")]
    pub id: String,
    /// `<service>.<slot>` (or `<service>.<node id>` for global services).
    pub name: String,
    /// Service ID.
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    /// Slot (0 for global tasks).
    pub slot: u64,
    /// Image.
    pub image: String,
    /// Node ID, once assigned.
    #[serde(rename = "NodeID")]
    pub node_id: String,
    /// The node's hostname.
    pub node: String,
    /// Desired state (running, shutdown, ...).
    pub desired_state: String,
    /// Observed state.
    pub current_state: String,
    /// When the task last changed (ns since the epoch).
    pub updated_at: Timestamp,
    /// Error of a failed or rejected task, or why it is pending.
    pub error: String,
    /// Message of the current state.
    pub message: String,
    /// Container ID on its node.
    #[serde(rename = "ContainerID")]
    pub container_id: String,
    /// Exit code, once exited.
    pub exit_code: Option<i64>,
    /// When the task was created (ns since the epoch).
    pub created_at: Timestamp,
    /// When it was reported running, if it was.
    pub running_at: Option<Timestamp>,
    /// The service spec generation it runs.
    pub spec_generation: u64,
}

/// One line of `service logs`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct ServiceLogLine {
    /// `<service>.<slot>.<task id>`.
    pub task: String,
    /// The node's hostname.
    pub node: String,
    /// Whether it came from stderr.
    pub stderr: bool,
    /// The text, newline included.
    pub text: String,
    /// When it was written (ns since the epoch).
    pub time_nanos: i64,
}

#[cfg(test)]
mod tests {
    use super::{quorum_warning, ManagerStatus};

    fn m(leader: bool, voter: bool, reach: &str, lag: Option<u64>) -> ManagerStatus {
        ManagerStatus {
            leader,
            voter,
            reachability: reach.into(),
            lag,
            ..Default::default()
        }
    }

    #[test]
    fn a_lagging_or_joining_manager_is_never_called_reachable() {
        assert_eq!(m(false, true, "reachable", None).column(), "Reachable");
        assert_eq!(
            m(false, true, "reachable", Some(1200)).column(),
            "Lagging (1200 behind)"
        );
        assert_eq!(m(false, false, "reachable", None).column(), "Joining");
        assert_eq!(m(true, true, "reachable", None).column(), "Leader");
        assert_eq!(m(false, true, "unreachable", None).column(), "Unreachable");
    }

    #[test]
    fn warns_when_the_cluster_cannot_lose_another_manager() {
        let healthy = vec![
            m(true, true, "reachable", None),
            m(false, true, "reachable", None),
            m(false, true, "reachable", None),
        ];
        assert_eq!(quorum_warning(&healthy), None);
        let mut one_lagging = healthy.clone();
        one_lagging[2].lag = Some(5000);
        let w = quorum_warning(&one_lagging).expect("a warning");
        assert!(w.contains("cannot lose another manager"), "{w}");
        let mut one_down = healthy.clone();
        one_down[1].reachability = "unreachable".into();
        one_down[2].lag = Some(100);
        let w = quorum_warning(&one_down).expect("a warning");
        assert!(w.contains("a quorum needs 2"), "{w}");
        // A learner does not count; a single manager is not warned about;
        // a view without the leader's knowledge says nothing.
        assert_eq!(quorum_warning(&[m(true, true, "reachable", None)]), None);
        let mut unknown = healthy.clone();
        unknown[1].reachability = "unknown".into();
        assert_eq!(quorum_warning(&unknown), None);
    }
}

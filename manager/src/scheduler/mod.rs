//! The scheduler's core: given the nodes as the scheduler sees them
//! ([`NodeSet`] of [`NodeInfo`]) and a batch of tasks waiting for a node
//! ([`PendingTask`]), decide where each task runs, or why it can run nowhere
//! ([`Decisions`]).
//!
//! What it owns: the decision. Filters first (node ready, availability
//! active, memory and CPU reservations fit, constraints, platform, max
//! replicas per node: `filter.rs`), then among the nodes that pass, spread
//! over the placement preferences (hierarchically, one level per
//! preference), then fewest tasks of the service on the node, then fewest
//! tasks overall, ties broken by node ID (`placement.rs`).
//!
//! What it does not own: I/O. It reads no store and writes no Raft entry:
//! the component that watches the store builds the [`NodeSet`], hands it
//! the pending tasks of one tick, and writes every decision of the batch in
//! one store update. Decisions update the node set as they are made (free
//! resources, task counts), so a batch is consistent in itself and the same
//! node set serves the next tick.
//!
//! Tasks are grouped by service and scheduling requirements (reservations,
//! placement); each group is filtered once against every node, then placed
//! task by task with heaps, in `O(log nodes)` per task. See
//! `docs/scheduler.md` for the design and the benchmark.

mod constraint;
mod filter;
mod placement;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use agent_common::objects::{Availability, Node, NodeRole, NodeStatus};
use agent_common::spec::{Platform, ResourceAmounts, TaskSpec};

pub use constraint::{
    parse_constraints, parse_preferences, Constraint, ConstraintError, ConstraintKey, Operator,
    SpreadKey, ALLOWED_KEYS,
};

/// One node as the scheduler sees it: what filters test and what ranks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeInfo {
    /// Node ID (`node.id`); also the final tie-breaker.
    pub id: String,
    /// `node.hostname`.
    pub hostname: String,
    /// `node.role`.
    pub role: NodeRole,
    /// Only `active` nodes take new tasks.
    pub availability: Availability,
    /// Only `ready` nodes take new tasks.
    pub status: NodeStatus,
    /// Operator labels (`node.labels.*`).
    pub labels: BTreeMap<String, String>,
    /// Labels the node's daemon reports (`engine.labels.*`).
    pub engine_labels: BTreeMap<String, String>,
    /// `node.platform.os` and `node.platform.arch`.
    pub platform: Platform,
    /// The node's resources minus the reservations of the tasks assigned to it.
    pub available: ResourceAmounts,
    /// Active tasks on the node per service ID.
    pub tasks_by_service: HashMap<String, u64>,
    /// Active tasks on the node, all services.
    pub total_tasks: u64,
}

impl NodeInfo {
    /// The scheduler's view of a stored node, with no tasks and no resources
    /// yet (the caller fills in `available`, `platform` and the counts).
    pub fn from_node(node: &Node) -> NodeInfo {
        NodeInfo {
            id: node.meta.id.clone(),
            hostname: node.hostname.clone(),
            role: node.role,
            availability: node.availability,
            status: node.status,
            labels: node.labels.clone(),
            ..Default::default()
        }
    }

    /// Tasks of `service_id` on this node.
    pub fn service_tasks(&self, service_id: &str) -> u64 {
        self.tasks_by_service.get(service_id).copied().unwrap_or(0)
    }

    /// Counts a task of `service_id` reserving `reservations` as running here.
    pub fn add_task(&mut self, service_id: &str, reservations: ResourceAmounts) {
        match self.tasks_by_service.get_mut(service_id) {
            Some(n) => *n += 1,
            None => {
                self.tasks_by_service.insert(service_id.to_string(), 1);
            }
        }
        self.total_tasks += 1;
        self.available.nano_cpus = self
            .available
            .nano_cpus
            .saturating_sub(reservations.nano_cpus);
        self.available.memory_bytes = self
            .available
            .memory_bytes
            .saturating_sub(reservations.memory_bytes);
    }

    /// Undoes [`add_task`](Self::add_task) for a task that stopped or moved.
    pub fn remove_task(&mut self, service_id: &str, reservations: ResourceAmounts) {
        if let Some(n) = self.tasks_by_service.get_mut(service_id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.tasks_by_service.remove(service_id);
            }
        }
        self.total_tasks = self.total_tasks.saturating_sub(1);
        self.available.nano_cpus = self
            .available
            .nano_cpus
            .saturating_add(reservations.nano_cpus);
        self.available.memory_bytes = self
            .available
            .memory_bytes
            .saturating_add(reservations.memory_bytes);
    }
}

/// A task waiting for a node.
#[derive(Clone, Debug)]
pub struct PendingTask {
    /// Task ID.
    pub id: String,
    /// The service it belongs to (spread and max-per-node count per service).
    pub service_id: String,
    /// Its spec: the scheduler reads `resources.reservations` and
    /// `placement`. Tasks of one service sharing one `Arc` are grouped
    /// without comparing specs.
    pub spec: Arc<TaskSpec>,
}

/// A task placed on a node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Assignment {
    /// The task.
    pub task_id: String,
    /// The node it runs on.
    pub node_id: String,
}

/// A task no node can take now; it stays pending with `reason` visible.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unschedulable {
    /// The task.
    pub task_id: String,
    /// Why, Docker style: `no suitable node (insufficient memory on 3 nodes;
    /// scheduling constraints not satisfied on 2 nodes)`.
    pub reason: String,
}

/// What a batch decided. Order: groups (service + requirements) in the order
/// their first task appeared in the batch, tasks in batch order within a group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decisions {
    /// Tasks placed, to be written as ASSIGNED with their node.
    pub assignments: Vec<Assignment>,
    /// Tasks left pending, with the reason.
    pub unschedulable: Vec<Unschedulable>,
}

/// The nodes the scheduler may place tasks on, kept sorted by ID (so the
/// index of a node is its rank in the final tie-break).
#[derive(Clone, Debug, Default)]
pub struct NodeSet {
    nodes: Vec<NodeInfo>,
    index: HashMap<String, usize>,
}

impl NodeSet {
    /// A node set of `nodes`; of nodes sharing an ID, the last one counts.
    pub fn new(nodes: impl IntoIterator<Item = NodeInfo>) -> NodeSet {
        let mut by_id: BTreeMap<String, NodeInfo> = BTreeMap::new();
        for n in nodes {
            by_id.insert(n.id.clone(), n);
        }
        let nodes: Vec<NodeInfo> = by_id.into_values().collect();
        let index = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.id.clone(), i))
            .collect();
        NodeSet { nodes, index }
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// No nodes at all.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The node with this ID.
    pub fn get(&self, id: &str) -> Option<&NodeInfo> {
        self.index.get(id).map(|&i| &self.nodes[i])
    }

    /// The node with this ID, to update (status, availability, labels, tasks).
    /// Changing its `id` here is not allowed: use [`upsert`](Self::upsert).
    pub fn get_mut(&mut self, id: &str) -> Option<&mut NodeInfo> {
        self.index.get(id).map(|&i| &mut self.nodes[i])
    }

    /// Every node, by ID.
    pub fn iter(&self) -> impl Iterator<Item = &NodeInfo> {
        self.nodes.iter()
    }

    /// Adds a node, or replaces the one with its ID.
    pub fn upsert(&mut self, node: NodeInfo) {
        if let Some(n) = self.get_mut(&node.id) {
            *n = node;
            return;
        }
        let mut nodes = std::mem::take(&mut self.nodes);
        nodes.push(node);
        *self = NodeSet::new(nodes);
    }

    /// Removes the node with this ID, if any.
    pub fn remove(&mut self, id: &str) -> Option<NodeInfo> {
        let i = *self.index.get(id)?;
        let mut nodes = std::mem::take(&mut self.nodes);
        let removed = nodes.remove(i);
        *self = NodeSet::new(nodes);
        Some(removed)
    }

    /// Decides a node for every task of `batch`, or why none fits. Every
    /// decision is applied to the node set as it is made, so later tasks of
    /// the batch (and later batches) see the resources and counts it took.
    /// Deterministic: the same node set and batch give the same decisions.
    pub fn schedule(&mut self, batch: &[PendingTask]) -> Decisions {
        let mut decisions = Decisions::default();
        let groups = group_tasks(batch);
        let mut shared =
            placement::Batch::new(&self.nodes, groups.iter().map(|g| g[0].service_id.as_str()));
        for tasks in groups {
            let first = tasks[0];
            match Group::new(&first.service_id, &first.spec) {
                Ok(group) => placement::place_group(
                    &mut self.nodes,
                    &mut shared,
                    &group,
                    &tasks,
                    &mut decisions,
                ),
                Err(e) => {
                    let reason = format!("invalid placement: {e}");
                    decisions
                        .unschedulable
                        .extend(tasks.iter().map(|t| Unschedulable {
                            task_id: t.id.clone(),
                            reason: reason.clone(),
                        }))
                }
            }
        }
        decisions
    }
}

/// Whether two specs place alike (same reservations and placement).
fn same_requirements(a: &Arc<TaskSpec>, b: &Arc<TaskSpec>) -> bool {
    Arc::ptr_eq(a, b)
        || (a.resources.reservations == b.resources.reservations && a.placement == b.placement)
}

/// The batch split into groups of tasks of one service with the same
/// requirements, in order of first appearance.
fn group_tasks(batch: &[PendingTask]) -> Vec<Vec<&PendingTask>> {
    let mut groups: Vec<Vec<&PendingTask>> = Vec::new();
    let mut by_service: HashMap<&str, Vec<usize>> = HashMap::new();
    for task in batch {
        let candidates = by_service.entry(task.service_id.as_str()).or_default();
        match candidates
            .iter()
            .find(|&&g| same_requirements(&groups[g][0].spec, &task.spec))
        {
            Some(&g) => groups[g].push(task),
            None => {
                candidates.push(groups.len());
                groups.push(vec![task]);
            }
        }
    }
    groups
}

/// The requirements shared by the tasks of one group, parsed once.
pub(crate) struct Group<'a> {
    /// The service the tasks belong to.
    pub(crate) service_id: &'a str,
    /// What each task reserves.
    pub(crate) reservations: ResourceAmounts,
    /// Parsed placement constraints.
    pub(crate) constraints: Vec<Constraint>,
    /// Platforms the image supports (empty: any).
    pub(crate) platforms: &'a [Platform],
    /// Cap of tasks of the service per node (0: none).
    pub(crate) max_replicas_per_node: u64,
    /// Spread preferences, outermost first.
    pub(crate) spread: Vec<SpreadKey>,
}

impl<'a> Group<'a> {
    fn new(service_id: &'a str, spec: &'a TaskSpec) -> Result<Group<'a>, ConstraintError> {
        Ok(Group {
            service_id,
            reservations: spec.resources.reservations,
            constraints: parse_constraints(&spec.placement.constraints)?,
            platforms: &spec.placement.platforms,
            max_replicas_per_node: spec.placement.max_replicas_per_node,
            spread: parse_preferences(&spec.placement.preferences)?,
        })
    }
}

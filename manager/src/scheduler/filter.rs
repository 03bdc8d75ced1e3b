//! The filter pipeline: small [`Filter`]s, cheapest first, that decide
//! whether a node can take one more task of a group, and say why not.
//!
//! A filter is enabled per group (a filter with nothing to check, such as the
//! resource filter for a task reserving nothing, is skipped). Static filters
//! (readiness, availability, constraints, platform) answer the same for the
//! whole batch and run once per batch and requirements; dynamic ones
//! (memory, CPU, max replicas) are re-checked as tasks land. Each failure is
//! charged to the first filter that refuses the node, and [`Pipeline::explain`]
//! turns those counts into the text a pending task carries, most common
//! reason first: `insufficient memory on 3 nodes; scheduling constraints not
//! satisfied on 2 nodes`.

use agent_common::objects::{Availability, NodeStatus};

use super::{Group, NodeInfo};
use crate::scheduler::constraint::arch_eq;

/// One reason a node cannot take a task.
pub(crate) trait Filter: Sync {
    /// Whether this filter has anything to check for the group.
    fn enabled(&self, group: &Group) -> bool;
    /// Whether the answer depends only on the node and the group's
    /// requirements, never on the tasks placed so far in a batch (so it is
    /// computed once per batch and requirements).
    fn is_static(&self) -> bool;
    /// Whether `node`, holding `service_tasks` tasks of the group's service,
    /// can take one more task of the group.
    fn check(&self, group: &Group, node: &NodeInfo, service_tasks: u64) -> bool;
    /// What a failure on `nodes` nodes means.
    fn explain(&self, group: &Group, nodes: usize) -> String;
}

/// "1 node" / "3 nodes".
fn nodes_text(n: usize) -> String {
    if n == 1 {
        "1 node".to_string()
    } else {
        format!("{n} nodes")
    }
}

/// The node is up (heartbeating).
struct ReadyFilter;

impl Filter for ReadyFilter {
    fn enabled(&self, _: &Group) -> bool {
        true
    }
    fn is_static(&self) -> bool {
        true
    }
    fn check(&self, _: &Group, node: &NodeInfo, _: u64) -> bool {
        node.status == NodeStatus::Ready
    }
    fn explain(&self, _: &Group, nodes: usize) -> String {
        format!(
            "node not ready (down or not yet seen) on {}",
            nodes_text(nodes)
        )
    }
}

/// The node's availability is `active` (not drained or paused).
struct AvailabilityFilter;

impl Filter for AvailabilityFilter {
    fn enabled(&self, _: &Group) -> bool {
        true
    }
    fn is_static(&self) -> bool {
        true
    }
    fn check(&self, _: &Group, node: &NodeInfo, _: u64) -> bool {
        node.availability == Availability::Active
    }
    fn explain(&self, _: &Group, nodes: usize) -> String {
        format!(
            "availability not active (drained or paused) on {}",
            nodes_text(nodes)
        )
    }
}

/// The node's unreserved memory covers the task's reservation.
struct MemoryFilter;

impl Filter for MemoryFilter {
    fn enabled(&self, group: &Group) -> bool {
        group.reservations.memory_bytes > 0
    }
    fn is_static(&self) -> bool {
        false
    }
    fn check(&self, group: &Group, node: &NodeInfo, _: u64) -> bool {
        node.available.memory_bytes >= group.reservations.memory_bytes
    }
    fn explain(&self, _: &Group, nodes: usize) -> String {
        format!("insufficient memory on {}", nodes_text(nodes))
    }
}

/// The node's unreserved CPU covers the task's reservation.
struct CpuFilter;

impl Filter for CpuFilter {
    fn enabled(&self, group: &Group) -> bool {
        group.reservations.nano_cpus > 0
    }
    fn is_static(&self) -> bool {
        false
    }
    fn check(&self, group: &Group, node: &NodeInfo, _: u64) -> bool {
        node.available.nano_cpus >= group.reservations.nano_cpus
    }
    fn explain(&self, _: &Group, nodes: usize) -> String {
        format!("insufficient cpu on {}", nodes_text(nodes))
    }
}

/// Every placement constraint holds on the node.
struct ConstraintFilter;

impl Filter for ConstraintFilter {
    fn enabled(&self, group: &Group) -> bool {
        !group.constraints.is_empty()
    }
    fn is_static(&self) -> bool {
        true
    }
    fn check(&self, group: &Group, node: &NodeInfo, _: u64) -> bool {
        group.constraints.iter().all(|c| c.matches(node))
    }
    fn explain(&self, _: &Group, nodes: usize) -> String {
        format!(
            "scheduling constraints not satisfied on {}",
            nodes_text(nodes)
        )
    }
}

/// The node's platform is one the image supports.
struct PlatformFilter;

impl Filter for PlatformFilter {
    fn enabled(&self, group: &Group) -> bool {
        !group.platforms.is_empty()
    }
    fn is_static(&self) -> bool {
        true
    }
    fn check(&self, group: &Group, node: &NodeInfo, _: u64) -> bool {
        group.platforms.iter().any(|p| {
            (p.os.is_empty() || p.os.eq_ignore_ascii_case(&node.platform.os))
                && (p.architecture.is_empty()
                    || arch_eq(&p.architecture, &node.platform.architecture))
        })
    }
    fn explain(&self, _: &Group, nodes: usize) -> String {
        format!("unsupported platform on {}", nodes_text(nodes))
    }
}

/// The node holds fewer than `max_replicas_per_node` tasks of the service.
struct MaxReplicasFilter;

impl Filter for MaxReplicasFilter {
    fn enabled(&self, group: &Group) -> bool {
        group.max_replicas_per_node > 0
    }
    fn is_static(&self) -> bool {
        false
    }
    fn check(&self, group: &Group, _: &NodeInfo, service_tasks: u64) -> bool {
        service_tasks < group.max_replicas_per_node
    }
    fn explain(&self, group: &Group, nodes: usize) -> String {
        format!(
            "max replicas per node ({}) reached on {}",
            group.max_replicas_per_node,
            nodes_text(nodes)
        )
    }
}

/// Every filter, cheapest first.
static FILTERS: [&dyn Filter; 7] = [
    &ReadyFilter,
    &AvailabilityFilter,
    &MemoryFilter,
    &CpuFilter,
    &ConstraintFilter,
    &PlatformFilter,
    &MaxReplicasFilter,
];

/// The filters enabled for one group.
pub(crate) struct Pipeline {
    /// Every enabled filter, in pipeline order (for explanations).
    enabled: Vec<&'static dyn Filter>,
    /// The enabled filters whose answer cannot change within a batch.
    fixed: Vec<&'static dyn Filter>,
    /// The enabled filters that tasks placed in the batch can turn to failing.
    dynamic: Vec<&'static dyn Filter>,
}

impl Pipeline {
    /// The pipeline for `group`: only the filters with something to check.
    pub(crate) fn for_group(group: &Group) -> Pipeline {
        let enabled: Vec<&'static dyn Filter> = FILTERS
            .iter()
            .copied()
            .filter(|f| f.enabled(group))
            .collect();
        let (fixed, dynamic) = enabled.iter().partition(|f| f.is_static());
        Pipeline {
            enabled,
            fixed,
            dynamic,
        }
    }

    /// Whether `node` passes the static filters (readiness, availability,
    /// constraints, platform).
    pub(crate) fn check_static(&self, group: &Group, node: &NodeInfo) -> bool {
        self.fixed.iter().all(|f| f.check(group, node, 0))
    }

    /// Whether any filter depends on what the batch placed.
    pub(crate) fn has_dynamic(&self) -> bool {
        !self.dynamic.is_empty()
    }

    /// Whether `node`, holding `service_tasks` tasks of the service, passes
    /// the filters that placements change (resources, max replicas).
    pub(crate) fn check_dynamic(&self, group: &Group, node: &NodeInfo, service_tasks: u64) -> bool {
        self.dynamic
            .iter()
            .all(|f| f.check(group, node, service_tasks))
    }

    /// Why no node in `nodes` can take a task of `group` (empty if one can):
    /// each node is charged to the first filter refusing it, and the reasons
    /// are listed most frequent first.
    pub(crate) fn explain<'a>(
        &self,
        group: &Group,
        nodes: impl IntoIterator<Item = &'a NodeInfo>,
    ) -> String {
        let mut failures = vec![0usize; self.enabled.len()];
        for node in nodes {
            let service_tasks = node.service_tasks(group.service_id);
            if let Some(i) = self
                .enabled
                .iter()
                .position(|f| !f.check(group, node, service_tasks))
            {
                failures[i] += 1;
            }
        }
        let mut order: Vec<usize> = (0..failures.len()).filter(|&i| failures[i] > 0).collect();
        // Stable sort: equal counts keep the pipeline's order.
        order.sort_by_key(|&i| std::cmp::Reverse(failures[i]));
        order
            .iter()
            .map(|&i| self.enabled[i].explain(group, failures[i]))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

//! Placing the tasks of one group on the nodes that pass its filters.
//!
//! The nodes form a tree with one level per spread preference: the root's
//! children are the distinct values of the first preference's label (nodes
//! without the label form the `""` branch), their children the values of
//! the second, and so on; the leaves hold nodes. Every branch counts the
//! service's tasks on *all* its nodes, eligible or not, so spreading evens
//! out what already runs. Without preferences the root is the only leaf.
//!
//! Each task walks down the branches with room, always into the one with
//! the fewest tasks of the service (ties: the smaller label value), and at
//! the leaf takes the node with the fewest tasks of the service, then the
//! fewest tasks overall, then the smallest ID. Branches and nodes sit in
//! min-heaps keyed that way, so a task costs `O(depth · log width + log
//! nodes)`, not a scan. After each assignment the node is re-checked
//! against the filters (its memory or its per-node cap may now be used up)
//! and goes back into its heap only if it can take another task; a branch
//! with no node left leaves its parent's heap.
//!
//! Taking the minimum one task at a time gives the same spread as SwarmKit's
//! water-filling over the decision tree, and is deterministic.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::filter::Pipeline;
use super::{Assignment, Decisions, Group, NodeInfo, PendingTask, Unschedulable};

/// A node's rank in a leaf: (tasks of the service, total tasks, index =
/// rank by ID). Smallest first.
type NodeKey = Reverse<(u64, u64, u32)>;

/// A branch's rank among its siblings: (tasks of the service under it,
/// rank of its label value, branch index). Smallest first.
type BranchKey = Reverse<(u64, u32, u32)>;

#[derive(Default)]
struct Branch {
    /// Tasks of the service on the nodes under this branch.
    tasks: u64,
    /// The branch's parent, and its value's rank among its siblings.
    parent: u32,
    rank: u32,
    /// A leaf holds nodes; an inner branch holds branches.
    leaf: bool,
    /// Inner branches: the children that still have room.
    children: BinaryHeap<BranchKey>,
    /// Leaves: the nodes that can take another task.
    nodes: BinaryHeap<NodeKey>,
}

/// Builds the tree for `group` over `nodes` (see the module docs).
fn build_tree(nodes: &[NodeInfo], group: &Group, pipeline: &Pipeline) -> Vec<Branch> {
    let depth = group.spread.len();
    let mut branches = vec![Branch {
        leaf: depth == 0,
        ..Default::default()
    }];
    let mut leaf_nodes: Vec<Vec<(u64, u64, u32)>> = vec![Vec::new()];
    if depth == 0 {
        leaf_nodes[0] = nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| pipeline.check(group, n))
            .map(|(i, n)| (n.service_tasks(group.service_id), n.total_tasks, i as u32))
            .collect();
    } else {
        // (parent, value) → child; values borrowed from the nodes while building.
        let mut child_of: HashMap<(u32, &str), u32> = HashMap::new();
        let mut values: Vec<&str> = vec![""];
        for (i, node) in nodes.iter().enumerate() {
            let service_tasks = node.service_tasks(group.service_id);
            let mut cur = 0u32;
            branches[0].tasks += service_tasks;
            for (level, key) in group.spread.iter().enumerate() {
                let value = key.value(node);
                let next = *child_of.entry((cur, value)).or_insert_with(|| {
                    branches.push(Branch {
                        parent: cur,
                        leaf: level + 1 == depth,
                        ..Default::default()
                    });
                    leaf_nodes.push(Vec::new());
                    values.push(value);
                    (branches.len() - 1) as u32
                });
                branches[next as usize].tasks += service_tasks;
                cur = next;
            }
            if pipeline.check(group, node) {
                leaf_nodes[cur as usize].push((service_tasks, node.total_tasks, i as u32));
            }
        }
        // Rank each branch's value among its siblings, for deterministic ties.
        let mut siblings: Vec<Vec<u32>> = vec![Vec::new(); branches.len()];
        for b in 1..branches.len() {
            siblings[branches[b].parent as usize].push(b as u32);
        }
        for kids in &mut siblings {
            kids.sort_by_key(|&b| values[b as usize]);
            for (rank, &b) in kids.iter().enumerate() {
                branches[b as usize].rank = rank as u32;
            }
        }
    }
    for (branch, keys) in branches.iter_mut().zip(leaf_nodes) {
        branch.nodes = keys.into_iter().map(Reverse).collect();
    }
    // Children have higher indices than their parents: going backwards,
    // a branch's room is known before its parent is looked at.
    for b in (1..branches.len()).rev() {
        let has_room = if branches[b].leaf {
            !branches[b].nodes.is_empty()
        } else {
            !branches[b].children.is_empty()
        };
        if has_room {
            let (parent, tasks, rank) = (branches[b].parent, branches[b].tasks, branches[b].rank);
            branches[parent as usize]
                .children
                .push(Reverse((tasks, rank, b as u32)));
        }
    }
    branches
}

/// Places the tasks of one group, appending to `decisions` and updating `nodes`.
pub(crate) fn place_group(
    nodes: &mut [NodeInfo],
    group: &Group,
    tasks: &[&PendingTask],
    decisions: &mut Decisions,
) {
    let pipeline = Pipeline::for_group(group);
    let mut tree = build_tree(nodes, group, &pipeline);
    let mut path: Vec<(u32, u32)> = Vec::with_capacity(group.spread.len());
    for (placed, task) in tasks.iter().enumerate() {
        // Down: the emptiest branch with room at every level.
        path.clear();
        let mut cur = 0u32;
        let mut found = true;
        while !tree[cur as usize].leaf {
            match tree[cur as usize].children.pop() {
                Some(Reverse((_, _, child))) => {
                    path.push((cur, child));
                    cur = child;
                }
                None => {
                    found = false;
                    break;
                }
            }
        }
        let best = if found {
            tree[cur as usize].nodes.pop()
        } else {
            None
        };
        let Some(Reverse((service_tasks, _, index))) = best else {
            // Only the root can be out of room: a branch without room is
            // never in its parent's heap.
            not_placed(nodes, group, &pipeline, &tasks[placed..], decisions);
            return;
        };
        let node = &mut nodes[index as usize];
        node.add_task(group.service_id, group.reservations);
        decisions.assignments.push(Assignment {
            task_id: task.id.clone(),
            node_id: node.id.clone(),
        });
        let leaf = &mut tree[cur as usize];
        if pipeline.check(group, node) {
            leaf.nodes
                .push(Reverse((service_tasks + 1, node.total_tasks, index)));
        }
        // Up: count the task in every branch on the path, and put back the
        // branches that still have room.
        let mut has_room = !leaf.nodes.is_empty();
        for &(parent, child) in path.iter().rev() {
            let c = &mut tree[child as usize];
            c.tasks += 1;
            let key = Reverse((c.tasks, c.rank, child));
            let p = &mut tree[parent as usize];
            if has_room {
                p.children.push(key);
            }
            has_room = !p.children.is_empty();
        }
    }
}

/// Marks `tasks` as fitting nowhere, with the pipeline's explanation over
/// every node as they are now.
fn not_placed(
    nodes: &[NodeInfo],
    group: &Group,
    pipeline: &Pipeline,
    tasks: &[&PendingTask],
    decisions: &mut Decisions,
) {
    let reason = if nodes.is_empty() {
        "no suitable node (no nodes in the cluster)".to_string()
    } else {
        let why = pipeline.explain(group, nodes);
        if why.is_empty() {
            "no suitable node".to_string()
        } else {
            format!("no suitable node ({why})")
        }
    };
    decisions
        .unschedulable
        .extend(tasks.iter().map(|t| Unschedulable {
            task_id: t.id.clone(),
            reason: reason.clone(),
        }));
}

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
//! against the dynamic filters (its memory or its per-node cap may now be
//! used up) and goes back into its heap only if it can take another task; a
//! branch with no node left leaves its parent's heap.
//!
//! Taking the minimum one task at a time gives the same spread as SwarmKit's
//! water-filling over the decision tree, and is deterministic.
//!
//! What does not change within a batch is computed once per batch
//! ([`Batch`]): the nodes passing the static filters for each distinct set
//! of constraints and platforms, the tree's shape for each distinct list of
//! preferences, and the tasks each service of the batch already has per
//! node (a sparse list, so a group costs no hash lookup per node). A group
//! then costs one pass over its statically eligible nodes plus `O(log n)`
//! per task, and a leaf keeps only as many nodes as the group has tasks
//! (no other node could be chosen: a node leaves the running only by
//! taking a task). From the second group sharing static filters and tree
//! shape on, the eligible nodes of each leaf are also kept ordered by load
//! (`ByLoad`), so a group reads only its first few nodes per leaf plus the
//! nodes already holding tasks of its service: many small services in one
//! batch no longer cost a pass over every node each.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};

use agent_common::spec::Platform;

use super::filter::Pipeline;
use super::{
    Assignment, Constraint, Decisions, Group, NodeInfo, PendingTask, SpreadKey, Unschedulable,
};

/// A node's rank in a leaf: (tasks of the service, total tasks, index =
/// rank by ID). Smallest first.
type NodeKey = Reverse<(u64, u64, u32)>;

/// A branch's rank among its siblings: (tasks of the service under it,
/// rank of its label value, branch index). Smallest first.
type BranchKey = Reverse<(u64, u32, u32)>;

/// The shape of a spread tree: which branch each node sits in.
struct Shape {
    /// Leaf branch of each node (by node index); empty when there are no
    /// preferences (every node is in the root).
    leaf_of: Vec<u32>,
    /// Per branch: its parent (the root's is itself), its value's rank
    /// among its siblings, whether it is a leaf.
    parent: Vec<u32>,
    rank: Vec<u32>,
    leaf: Vec<bool>,
}

impl Shape {
    fn build(nodes: &[NodeInfo], spread: &[SpreadKey]) -> Shape {
        let depth = spread.len();
        let mut shape = Shape {
            leaf_of: Vec::new(),
            parent: vec![0],
            rank: vec![0],
            leaf: vec![depth == 0],
        };
        if depth == 0 {
            return shape;
        }
        shape.leaf_of = Vec::with_capacity(nodes.len());
        let mut child_of: HashMap<(u32, &str), u32> = HashMap::new();
        let mut values: Vec<&str> = vec![""];
        for node in nodes {
            let mut cur = 0u32;
            for (level, key) in spread.iter().enumerate() {
                let value = key.value(node);
                cur = *child_of.entry((cur, value)).or_insert_with(|| {
                    shape.parent.push(cur);
                    shape.rank.push(0);
                    shape.leaf.push(level + 1 == depth);
                    values.push(value);
                    (shape.parent.len() - 1) as u32
                });
            }
            shape.leaf_of.push(cur);
        }
        // Rank each branch's value among its siblings, for deterministic ties.
        let mut siblings: Vec<Vec<u32>> = vec![Vec::new(); shape.parent.len()];
        for b in 1..shape.parent.len() {
            siblings[shape.parent[b] as usize].push(b as u32);
        }
        for kids in &mut siblings {
            kids.sort_by_key(|&b| values[b as usize]);
            for (rank, &b) in kids.iter().enumerate() {
                shape.rank[b as usize] = rank as u32;
            }
        }
        shape
    }

    fn leaf_of(&self, node: u32) -> u32 {
        if self.leaf_of.is_empty() {
            0
        } else {
            self.leaf_of[node as usize]
        }
    }
}

/// The static-filter requirements of a group: its constraints and platforms.
type StaticKey = (Vec<Constraint>, Vec<Platform>);

/// Nodes of one leaf by (total tasks, index): least loaded first.
type ByLoad = BTreeSet<(u64, u32)>;

/// The nodes passing one set of static filters.
struct Eligible {
    /// The constraints and platforms.
    key: StaticKey,
    /// The nodes passing, by index.
    nodes: Vec<u32>,
    /// Per tree shape (index into `Batch::shapes`): groups that used this
    /// set with that shape so far.
    uses: Vec<(usize, u32)>,
    /// Per tree shape: the same nodes, per leaf, ordered by (total tasks,
    /// index) and kept in step as tasks land. Built when a second group uses
    /// the set with the shape, so that small groups read only the first few
    /// nodes of each leaf instead of every node.
    by_load: Vec<(usize, Vec<ByLoad>)>,
}

/// What a batch computes once and its groups share.
pub(crate) struct Batch {
    /// Per service of the batch: (node index, tasks) for the nodes holding
    /// some; a node may appear several times (the counts add up).
    service_tasks: HashMap<String, Vec<(u32, u64)>>,
    /// Nodes passing the static filters, per (constraints, platforms).
    eligible: Vec<Eligible>,
    /// Tree shapes per list of preferences.
    shapes: Vec<(Vec<SpreadKey>, Shape)>,
    /// Scratch: tasks of the current group's service per node, zero between groups.
    dense: Vec<u64>,
    /// Total tasks per node, kept in step with the nodes: read for every
    /// eligible node of every group, and much denser than `NodeInfo`.
    totals: Vec<u64>,
}

impl Batch {
    /// Prepares a batch of tasks of `services` over `nodes`.
    pub(crate) fn new<'a>(
        nodes: &[NodeInfo],
        services: impl IntoIterator<Item = &'a str>,
    ) -> Batch {
        let services: HashSet<&str> = services.into_iter().collect();
        let mut service_tasks: HashMap<String, Vec<(u32, u64)>> = services
            .iter()
            .map(|s| (s.to_string(), Vec::new()))
            .collect();
        // Look the batch's services up on every node, or walk every node's
        // counts, whichever is fewer lookups.
        let entries: usize = nodes.iter().map(|n| n.tasks_by_service.len()).sum();
        if services.len().saturating_mul(nodes.len()) <= entries {
            for (service, list) in service_tasks.iter_mut() {
                for (i, n) in nodes.iter().enumerate() {
                    let c = n.service_tasks(service);
                    if c > 0 {
                        list.push((i as u32, c));
                    }
                }
            }
        } else {
            for (i, n) in nodes.iter().enumerate() {
                for (service, &c) in &n.tasks_by_service {
                    if c > 0 {
                        if let Some(list) = service_tasks.get_mut(service.as_str()) {
                            list.push((i as u32, c));
                        }
                    }
                }
            }
        }
        Batch {
            service_tasks,
            eligible: Vec::new(),
            shapes: Vec::new(),
            dense: vec![0; nodes.len()],
            totals: nodes.iter().map(|n| n.total_tasks).collect(),
        }
    }

    /// Index into `eligible` of the nodes passing `group`'s static filters.
    fn eligible_for(&mut self, nodes: &[NodeInfo], group: &Group, pipeline: &Pipeline) -> usize {
        if let Some(i) = self
            .eligible
            .iter()
            .position(|e| e.key.0 == group.constraints && e.key.1.as_slice() == group.platforms)
        {
            return i;
        }
        let list = (0..nodes.len() as u32)
            .filter(|&i| pipeline.check_static(group, &nodes[i as usize]))
            .collect();
        self.eligible.push(Eligible {
            key: (group.constraints.clone(), group.platforms.to_vec()),
            nodes: list,
            uses: Vec::new(),
            by_load: Vec::new(),
        });
        self.eligible.len() - 1
    }

    /// Index into `shapes` of the tree shape for `group`'s preferences.
    fn shape_for(&mut self, nodes: &[NodeInfo], group: &Group) -> usize {
        if let Some(i) = self.shapes.iter().position(|(s, _)| *s == group.spread) {
            return i;
        }
        self.shapes
            .push((group.spread.clone(), Shape::build(nodes, &group.spread)));
        self.shapes.len() - 1
    }
}

/// A branch of the tree of one group.
#[derive(Default)]
struct Branch {
    /// Tasks of the service on the nodes under this branch.
    tasks: u64,
    /// Inner branches: the children that still have room.
    children: BinaryHeap<BranchKey>,
    /// Leaves: the nodes that can take another task.
    nodes: BinaryHeap<NodeKey>,
}

/// Places the tasks of one group, appending to `decisions` and updating `nodes`.
pub(crate) fn place_group(
    nodes: &mut [NodeInfo],
    batch: &mut Batch,
    group: &Group,
    tasks: &[&PendingTask],
    decisions: &mut Decisions,
) {
    let pipeline = Pipeline::for_group(group);
    let eligible_at = batch.eligible_for(nodes, group, &pipeline);
    let shape_at = batch.shape_for(nodes, group);
    let Batch {
        service_tasks,
        eligible,
        shapes,
        dense,
        totals,
    } = batch;
    let shape = &shapes[shape_at].1;
    let counts = service_tasks
        .entry(group.service_id.to_string())
        .or_default();

    // The tree for this group: counts from the sparse list, eligible nodes
    // (those also passing the dynamic filters) in their leaves.
    let mut tree: Vec<Branch> = (0..shape.parent.len()).map(|_| Branch::default()).collect();
    for &(i, c) in counts.iter() {
        dense[i as usize] += c;
        let mut b = shape.leaf_of(i);
        loop {
            tree[b as usize].tasks += c;
            if b == 0 {
                break;
            }
            b = shape.parent[b as usize];
        }
    }
    let mut leaf_keys: Vec<Vec<(u64, u64, u32)>> = vec![Vec::new(); tree.len()];
    let dynamic = pipeline.has_dynamic();
    let fits = |node: &NodeInfo, s: u64| !dynamic || pipeline.check_dynamic(group, node, s);
    let entry = &mut eligible[eligible_at];
    let uses = match entry.uses.iter_mut().find(|(s, _)| *s == shape_at) {
        Some((_, n)) => n,
        None => {
            entry.uses.push((shape_at, 0));
            &mut entry.uses.last_mut().expect("just pushed").1
        }
    };
    *uses += 1;
    if *uses >= 2 && !entry.by_load.iter().any(|(s, _)| *s == shape_at) {
        let mut sets: Vec<ByLoad> = vec![BTreeSet::new(); shape.parent.len()];
        for &i in &entry.nodes {
            sets[shape.leaf_of(i) as usize].insert((totals[i as usize], i));
        }
        entry.by_load.push((shape_at, sets));
    }
    match entry.by_load.iter().find(|(s, _)| *s == shape_at) {
        Some((_, sets)) => {
            // Per leaf, the least loaded nodes without tasks of the service,
            // as many as the group has tasks; then every node with some
            // (the sparse list).
            for (keys, set) in leaf_keys.iter_mut().zip(sets) {
                for &(total, i) in set {
                    if keys.len() == tasks.len() {
                        break;
                    }
                    if dense[i as usize] == 0 && fits(&nodes[i as usize], 0) {
                        keys.push((0, total, i));
                    }
                }
            }
            for &(i, _) in counts.iter() {
                let s = std::mem::take(&mut dense[i as usize]);
                let node = &nodes[i as usize];
                if s > 0 && pipeline.check_static(group, node) && fits(node, s) {
                    leaf_keys[shape.leaf_of(i) as usize].push((s, totals[i as usize], i));
                }
            }
        }
        None => {
            for &i in &entry.nodes {
                let s = dense[i as usize];
                if fits(&nodes[i as usize], s) {
                    leaf_keys[shape.leaf_of(i) as usize].push((s, totals[i as usize], i));
                }
            }
        }
    }
    for &(i, _) in counts.iter() {
        dense[i as usize] = 0;
    }
    for (branch, mut keys) in tree.iter_mut().zip(leaf_keys) {
        // A leaf gets at most one task per task of the group, and a node
        // leaves its heap only after taking a task: only the best
        // `tasks.len()` nodes of a leaf can ever be chosen.
        if keys.len() > tasks.len() {
            keys.select_nth_unstable(tasks.len() - 1);
            keys.truncate(tasks.len());
        }
        if !keys.is_empty() {
            branch.nodes = keys.into_iter().map(Reverse).collect();
        }
    }
    // Children have higher indices than their parents: going backwards,
    // a branch's room is known before its parent is looked at.
    for b in (1..tree.len()).rev() {
        let has_room = if shape.leaf[b] {
            !tree[b].nodes.is_empty()
        } else {
            !tree[b].children.is_empty()
        };
        if has_room {
            let key = Reverse((tree[b].tasks, shape.rank[b], b as u32));
            tree[shape.parent[b] as usize].children.push(key);
        }
    }

    let mut path: Vec<u32> = Vec::with_capacity(group.spread.len());
    for (placed, task) in tasks.iter().enumerate() {
        // Down: the emptiest branch with room at every level.
        path.clear();
        let mut cur = 0u32;
        let mut found = true;
        while !shape.leaf[cur as usize] {
            match tree[cur as usize].children.pop() {
                Some(Reverse((_, _, child))) => {
                    path.push(child);
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
        let Some(Reverse((s, _, index))) = best else {
            // Only the root can be out of room: a branch without room is
            // never in its parent's heap.
            not_placed(nodes, group, &pipeline, &tasks[placed..], decisions);
            return;
        };
        let node = &mut nodes[index as usize];
        node.add_task(group.service_id, group.reservations);
        let old_total = std::mem::replace(&mut totals[index as usize], node.total_tasks);
        for (shape_index, sets) in eligible.iter_mut().flat_map(|e| e.by_load.iter_mut()) {
            let leaf = shapes[*shape_index].1.leaf_of(index) as usize;
            if sets[leaf].remove(&(old_total, index)) {
                sets[leaf].insert((node.total_tasks, index));
            }
        }
        counts.push((index, 1));
        decisions.assignments.push(Assignment {
            task_id: task.id.clone(),
            node_id: node.id.clone(),
        });
        let leaf = &mut tree[cur as usize];
        if pipeline.check_dynamic(group, node, s + 1) {
            leaf.nodes.push(Reverse((s + 1, node.total_tasks, index)));
        }
        // Up: count the task in every branch on the path, and put back the
        // branches that still have room.
        let mut has_room = !leaf.nodes.is_empty();
        for &child in path.iter().rev() {
            let parent = shape.parent[child as usize] as usize;
            let c = &mut tree[child as usize];
            c.tasks += 1;
            let key = Reverse((c.tasks, shape.rank[child as usize], child));
            let p = &mut tree[parent];
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

//! `flotilla-bench scheduler`: placement decisions per second of the
//! manager's scheduler core, in process (no store, no Raft), on synthetic
//! clusters of 1,000 and 10,000 nodes.
//!
//! Each scenario builds a node set (3 zones, half the nodes labelled
//! `disk=ssd`, 64 CPUs and 256 GiB each, 0 to 4 tasks of other services
//! already running) and a batch of `tasks` tasks split into services of
//! `service_size` replicas, then times `NodeSet::schedule` on a fresh copy of
//! the node set, `runs` times. Only the call is timed, not building inputs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::objects::{Availability, NodeRole, NodeStatus};
use agent_common::spec::{
    Placement, PlacementPreference, Platform, ResourceAmounts, Resources, TaskSpec,
};
use anyhow::{bail, Result};
use manager::scheduler::{NodeInfo, NodeSet, PendingTask};

/// One way of asking for placement.
struct Scenario {
    name: &'static str,
    spec: TaskSpec,
}

fn scenarios() -> Vec<Scenario> {
    let spread = Placement {
        preferences: vec![PlacementPreference {
            spread: "node.labels.zone".into(),
        }],
        ..Default::default()
    };
    let filtered = TaskSpec {
        resources: Resources {
            reservations: ResourceAmounts {
                nano_cpus: 100_000_000,
                memory_bytes: 64 << 20,
            },
            ..Default::default()
        },
        placement: Placement {
            constraints: vec!["node.labels.disk==ssd".into(), "node.role!=manager".into()],
            max_replicas_per_node: 1_000,
            ..Default::default()
        },
        ..Default::default()
    };
    vec![
        Scenario {
            name: "no preference",
            spec: TaskSpec::default(),
        },
        Scenario {
            name: "spread=node.labels.zone",
            spec: TaskSpec {
                placement: spread,
                ..Default::default()
            },
        },
        Scenario {
            name: "constraints + reservations",
            spec: filtered,
        },
    ]
}

fn cluster(n: usize) -> NodeSet {
    NodeSet::new((0..n).map(|i| {
        let mut node = NodeInfo {
            id: format!("node-{i:06}"),
            hostname: format!("host-{i:06}"),
            role: if i < 3 {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            },
            availability: Availability::Active,
            status: NodeStatus::Ready,
            platform: Platform {
                os: "linux".into(),
                architecture: "x86_64".into(),
            },
            available: ResourceAmounts {
                nano_cpus: 64_000_000_000,
                memory_bytes: 256 << 30,
            },
            ..Default::default()
        };
        node.labels.insert("zone".into(), format!("zone-{}", i % 3));
        if i % 2 == 0 {
            node.labels.insert("disk".into(), "ssd".into());
        }
        let others = (i % 5) as u64;
        if others > 0 {
            node.tasks_by_service
                .insert(format!("other-{}", i % 7), others);
            node.total_tasks = others;
        }
        node
    }))
}

fn batch(tasks: usize, service_size: usize, spec: &TaskSpec) -> Vec<PendingTask> {
    let spec = Arc::new(spec.clone());
    (0..tasks)
        .map(|i| PendingTask {
            id: format!("task-{i:08}"),
            service_id: format!("service-{:06}", i / service_size),
            spec: spec.clone(),
        })
        .collect()
}

/// Prints decisions per second (median of `runs`) for every node count and scenario.
pub fn run(nodes: &[usize], tasks: usize, service_size: usize, runs: usize) -> Result<()> {
    println!(
        "scheduler: {tasks} tasks per batch in services of {service_size} replicas, \
         median of {runs} runs"
    );
    println!(
        "{:>7}  {:<28} {:>12} {:>16}",
        "nodes", "placement", "batch", "decisions/s"
    );
    for &n in nodes {
        let base = cluster(n);
        for scenario in scenarios() {
            let tasks_in = batch(tasks, service_size, &scenario.spec);
            let mut times: Vec<Duration> = Vec::with_capacity(runs);
            for _ in 0..runs {
                let mut set = base.clone();
                let start = Instant::now();
                let decisions = set.schedule(&tasks_in);
                times.push(start.elapsed());
                if decisions.assignments.len() != tasks {
                    bail!(
                        "{}: only {} of {tasks} tasks placed: {:?}",
                        scenario.name,
                        decisions.assignments.len(),
                        decisions.unschedulable.first()
                    );
                }
                drop(decisions);
            }
            times.sort();
            let median = times[times.len() / 2];
            println!(
                "{n:>7}  {:<28} {:>9.1} ms {:>16.0}",
                scenario.name,
                median.as_secs_f64() * 1000.0,
                tasks as f64 / median.as_secs_f64()
            );
        }
    }
    Ok(())
}

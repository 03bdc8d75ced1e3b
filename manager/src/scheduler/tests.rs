use std::collections::BTreeMap;
use std::sync::Arc;

use agent_common::objects::{Availability, NodeRole, NodeStatus};
use agent_common::spec::{
    Placement, PlacementPreference, Platform, ResourceAmounts, Resources, TaskSpec,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;

const GB: u64 = 1 << 30;

fn node(id: &str) -> NodeInfo {
    NodeInfo {
        id: id.to_string(),
        hostname: format!("host-{id}"),
        role: NodeRole::Worker,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        platform: Platform {
            os: "linux".into(),
            architecture: "x86_64".into(),
        },
        available: ResourceAmounts {
            nano_cpus: 8_000_000_000,
            memory_bytes: 16 * GB,
        },
        ..Default::default()
    }
}

fn labelled(id: &str, labels: &[(&str, &str)]) -> NodeInfo {
    let mut n = node(id);
    n.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n
}

fn tasks(service: &str, n: usize, spec: TaskSpec) -> Vec<PendingTask> {
    let spec = Arc::new(spec);
    (0..n)
        .map(|i| PendingTask {
            id: format!("{service}.{i}"),
            service_id: service.to_string(),
            spec: spec.clone(),
        })
        .collect()
}

fn with_placement(placement: Placement) -> TaskSpec {
    TaskSpec {
        placement,
        ..Default::default()
    }
}

fn constrained(exprs: &[&str]) -> TaskSpec {
    with_placement(Placement {
        constraints: exprs.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    })
}

fn spread(labels: &[&str]) -> TaskSpec {
    with_placement(Placement {
        preferences: labels
            .iter()
            .map(|l| PlacementPreference {
                spread: l.to_string(),
            })
            .collect(),
        ..Default::default()
    })
}

fn reserving(memory_bytes: u64, nano_cpus: u64) -> TaskSpec {
    TaskSpec {
        resources: Resources {
            reservations: ResourceAmounts {
                nano_cpus,
                memory_bytes,
            },
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Tasks per node ID in the decisions.
fn per_node(d: &Decisions) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for a in &d.assignments {
        *m.entry(a.node_id.clone()).or_insert(0) += 1;
    }
    m
}

fn nodes(ids: &[&str]) -> NodeSet {
    NodeSet::new(ids.iter().map(|id| node(id)))
}

#[test]
fn twelve_replicas_on_four_equal_nodes_get_three_each() {
    let mut set = nodes(&["a", "b", "c", "d"]);
    let d = set.schedule(&tasks("web", 12, TaskSpec::default()));
    assert!(d.unschedulable.is_empty());
    assert_eq!(d.assignments.len(), 12);
    assert!(per_node(&d).values().all(|&n| n == 3), "{:?}", per_node(&d));
    // The node set saw every decision.
    for n in set.iter() {
        assert_eq!(n.service_tasks("web"), 3);
        assert_eq!(n.total_tasks, 3);
    }
}

#[test]
fn uneven_counts_spread_with_max_minus_min_at_most_one() {
    let mut set = nodes(&["a", "b", "c", "d", "e"]);
    let d = set.schedule(&tasks("web", 13, TaskSpec::default()));
    let counts: Vec<usize> = per_node(&d).values().copied().collect();
    assert_eq!(counts.iter().sum::<usize>(), 13);
    assert!(counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1);
}

#[test]
fn existing_tasks_of_the_service_are_evened_out_first() {
    let mut a = node("a");
    a.tasks_by_service.insert("web".into(), 4);
    a.total_tasks = 4;
    let mut set = NodeSet::new([a, node("b"), node("c")]);
    let d = set.schedule(&tasks("web", 5, TaskSpec::default()));
    let m = per_node(&d);
    assert_eq!(m.get("a"), None, "{m:?}");
    assert_eq!(m["b"] + m["c"], 5);
    // Then fewer total tasks wins among equals: b has other work.
    let mut b = node("b");
    b.tasks_by_service.insert("db".into(), 2);
    b.total_tasks = 2;
    let mut set = NodeSet::new([node("a"), b, node("c")]);
    let d = set.schedule(&tasks("web", 2, TaskSpec::default()));
    assert_eq!(per_node(&d).keys().collect::<Vec<_>>(), ["a", "c"]);
}

#[test]
fn ties_break_by_node_id_and_output_is_deterministic() {
    let ids = ["n3", "n1", "n2"];
    let mut set = nodes(&ids);
    let d = set.schedule(&tasks("web", 1, TaskSpec::default()));
    assert_eq!(d.assignments[0].node_id, "n1");

    let batch: Vec<PendingTask> = tasks("web", 40, spread(&["node.labels.zone"]))
        .into_iter()
        .chain(tasks("db", 7, reserving(GB, 0)))
        .collect();
    let make = |rev: bool| {
        let mut ns: Vec<NodeInfo> = (0..10)
            .map(|i| labelled(&format!("n{i}"), &[("zone", ["x", "y", "z"][i % 3])]))
            .collect();
        if rev {
            ns.reverse();
        }
        NodeSet::new(ns)
    };
    let first = make(false).schedule(&batch);
    for _ in 0..3 {
        assert_eq!(make(true).schedule(&batch), first);
    }
}

#[test]
fn constraints_on_every_key_kind_with_eq_and_ne() {
    let mut m = node("m1");
    m.role = NodeRole::Manager;
    m.hostname = "alpha".into();
    m.labels.insert("disk".into(), "ssd".into());
    m.engine_labels.insert("gpu".into(), "yes".into());
    m.platform = Platform {
        os: "linux".into(),
        architecture: "x86_64".into(),
    };
    let mut w = node("w1");
    w.hostname = "beta".into();
    w.labels.insert("disk".into(), "hdd".into());
    w.platform = Platform {
        os: "linux".into(),
        architecture: "aarch64".into(),
    };
    let cases: &[(&str, &[&str])] = &[
        ("node.id==m1", &["m1"]),
        ("node.id!=m1", &["w1"]),
        ("node.hostname==beta", &["w1"]),
        ("node.hostname != beta", &["m1"]),
        ("node.role==manager", &["m1"]),
        ("node.role!=manager", &["w1"]),
        ("node.role==worker", &["w1"]),
        ("node.labels.disk==ssd", &["m1"]),
        ("node.labels.disk!=ssd", &["w1"]),
        ("node.labels.rack==r1", &[]),
        ("node.labels.rack!=r1", &["m1", "w1"]),
        ("engine.labels.gpu==yes", &["m1"]),
        ("engine.labels.gpu!=yes", &["w1"]),
        ("node.platform.os==linux", &["m1", "w1"]),
        ("node.platform.os!=linux", &[]),
        ("node.platform.arch==x86_64", &["m1"]),
        ("node.platform.arch==amd64", &["m1"]),
        ("node.platform.arch!=x86_64", &["w1"]),
        ("node.platform.arch==arm64", &["w1"]),
        ("  Node.Labels.disk  ==  SSD ", &["m1"]),
    ];
    for (expr, want) in cases {
        let mut set = NodeSet::new([m.clone(), w.clone()]);
        let d = set.schedule(&tasks("s", 2, constrained(&[expr])));
        let got: Vec<String> = per_node(&d).keys().cloned().collect();
        assert_eq!(got, *want, "{expr}");
        if want.is_empty() {
            assert_eq!(
                d.unschedulable[0].reason,
                "no suitable node (scheduling constraints not satisfied on 2 nodes)",
                "{expr}"
            );
        }
    }
    // Several constraints must all hold.
    let mut set = NodeSet::new([m.clone(), w.clone()]);
    let d = set.schedule(&tasks(
        "s",
        1,
        constrained(&["node.role==manager", "node.labels.disk==hdd"]),
    ));
    assert_eq!(d.assignments.len(), 0);
}

#[test]
fn invalid_constraints_are_refused_with_what_is_allowed() {
    let bad = [
        ("node.labels.zone=east", "expected KEY==VALUE or KEY!=VALUE"),
        ("node.color==red", "unknown key \"node.color\""),
        ("node.labels.==x", "unknown key"),
        ("node.id==", "must be non-empty"),
        ("node.id==a==b", "must be non-empty and contain no '='"),
        ("node.role==boss", "node.role is \"manager\" or \"worker\""),
        ("node.hostname>=x", "expected KEY==VALUE"),
    ];
    for (expr, want) in bad {
        let err = parse_constraints(&[expr.to_string()]).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(&format!("{expr:?}")), "{msg}");
        assert!(msg.contains(want), "{expr}: {msg}");
    }
    let msg = Constraint::parse("zone==east").unwrap_err().to_string();
    assert!(msg.contains(ALLOWED_KEYS), "{msg}");
    let ok = parse_constraints(&["node.labels.zone == east".into(), "node.id!=x".into()]).unwrap();
    assert_eq!(ok[0].key, ConstraintKey::NodeLabel("zone".into()));
    assert_eq!(ok[0].value, "east");
    assert_eq!(ok[1].op, Operator::NotEq);
    assert_eq!(ok[0].to_string(), "node.labels.zone==east");
    // Spread descriptors are labels only.
    assert!(SpreadKey::parse("node.labels.zone").is_ok());
    assert!(SpreadKey::parse("engine.labels.zone").is_ok());
    let msg = SpreadKey::parse("node.hostname").unwrap_err().to_string();
    assert!(msg.contains("node.labels.<name>"), "{msg}");
    // A stored spec with a bad expression leaves its tasks pending with the reason.
    let mut set = nodes(&["a"]);
    let d = set.schedule(&tasks("s", 2, constrained(&["bogus"])));
    assert_eq!(d.unschedulable.len(), 2);
    assert!(d.unschedulable[0]
        .reason
        .starts_with("invalid placement: invalid constraint \"bogus\""));
}

#[test]
fn max_replicas_per_node_caps_and_explains() {
    let mut set = nodes(&["a", "b", "c"]);
    let spec = with_placement(Placement {
        max_replicas_per_node: 2,
        ..Default::default()
    });
    let d = set.schedule(&tasks("web", 8, spec));
    assert_eq!(d.assignments.len(), 6);
    assert!(per_node(&d).values().all(|&n| n == 2));
    assert_eq!(d.unschedulable.len(), 2);
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (max replicas per node (2) reached on 3 nodes)"
    );
}

#[test]
fn insufficient_memory_and_constraints_explained_most_frequent_first() {
    let mut ns = Vec::new();
    for i in 0..3 {
        let mut n = labelled(&format!("small{i}"), &[("zone", "east")]);
        n.available.memory_bytes = GB / 2;
        ns.push(n);
    }
    for i in 0..2 {
        ns.push(labelled(&format!("west{i}"), &[("zone", "west")]));
    }
    let mut set = NodeSet::new(ns);
    let mut spec = reserving(GB, 0);
    spec.placement.constraints = vec!["node.labels.zone==east".into()];
    let d = set.schedule(&tasks("web", 1, spec));
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (insufficient memory on 3 nodes; \
         scheduling constraints not satisfied on 2 nodes)"
    );
}

#[test]
fn reservations_are_used_up_within_a_batch() {
    let mut a = node("a");
    a.available.memory_bytes = 3 * GB;
    let mut b = node("b");
    b.available.memory_bytes = GB;
    b.available.nano_cpus = 1_000_000_000;
    let mut set = NodeSet::new([a, b]);
    let d = set.schedule(&tasks("web", 6, reserving(GB, 500_000_000)));
    let m = per_node(&d);
    assert_eq!((m["a"], m["b"]), (3, 1), "{m:?}");
    assert_eq!(d.unschedulable.len(), 2);
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (insufficient memory on 2 nodes)"
    );
    assert_eq!(set.get("a").unwrap().available.memory_bytes, 0);
    assert_eq!(set.get("b").unwrap().available.nano_cpus, 500_000_000);
    // CPU runs out on its own, too.
    let mut set = nodes(&["c"]);
    let d = set.schedule(&tasks("cpu", 3, reserving(0, 3_000_000_000)));
    assert_eq!(d.assignments.len(), 2);
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (insufficient cpu on 1 node)"
    );
}

#[test]
fn drained_paused_and_down_nodes_take_no_tasks() {
    let mut drained = node("drained");
    drained.availability = Availability::Drain;
    let mut paused = node("paused");
    paused.availability = Availability::Pause;
    let mut down = node("down");
    down.status = NodeStatus::Down;
    let mut unknown = node("unknown");
    unknown.status = NodeStatus::Unknown;
    let mut set = NodeSet::new([drained, paused, down, unknown, node("ok")]);
    let d = set.schedule(&tasks("web", 4, TaskSpec::default()));
    assert_eq!(per_node(&d).keys().collect::<Vec<_>>(), ["ok"]);

    let mut set = NodeSet::new(set.iter().filter(|n| n.id != "ok").cloned());
    let d = set.schedule(&tasks("web", 1, TaskSpec::default()));
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (node not ready (down or not yet seen) on 2 nodes; \
         availability not active (drained or paused) on 2 nodes)"
    );
    let d = NodeSet::default().schedule(&tasks("web", 1, TaskSpec::default()));
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (no nodes in the cluster)"
    );
}

#[test]
fn spread_gives_unequal_zones_equal_task_counts() {
    // One node in east, three in west: 12 tasks → 6 per zone.
    let mut set = NodeSet::new([
        labelled("e1", &[("zone", "east")]),
        labelled("w1", &[("zone", "west")]),
        labelled("w2", &[("zone", "west")]),
        labelled("w3", &[("zone", "west")]),
    ]);
    let d = set.schedule(&tasks("web", 12, spread(&["node.labels.zone"])));
    let m = per_node(&d);
    assert_eq!(m["e1"], 6, "{m:?}");
    assert_eq!((m["w1"], m["w2"], m["w3"]), (2, 2, 2), "{m:?}");
}

#[test]
fn spread_counts_existing_tasks_and_nodes_without_the_label_form_a_group() {
    let mut e1 = labelled("e1", &[("zone", "east")]);
    e1.tasks_by_service.insert("web".into(), 3);
    e1.total_tasks = 3;
    // A drained node's tasks still count for its zone.
    let mut e2 = labelled("e2", &[("zone", "east")]);
    e2.availability = Availability::Drain;
    e2.tasks_by_service.insert("web".into(), 1);
    let mut set = NodeSet::new([
        e1,
        e2,
        labelled("w1", &[("zone", "west")]),
        node("bare1"),
        node("bare2"),
    ]);
    // east has 4; 8 new tasks → west 4, unlabelled 4 (two each).
    let d = set.schedule(&tasks("web", 8, spread(&["node.labels.zone"])));
    let m = per_node(&d);
    assert_eq!(m.get("e1"), None, "{m:?}");
    assert_eq!(m["w1"], 4, "{m:?}");
    assert_eq!((m["bare1"], m["bare2"]), (2, 2), "{m:?}");
}

#[test]
fn spread_is_hierarchical_over_several_preferences() {
    // zone a: racks r1 (1 node), r2 (2 nodes); zone b: rack r1 (1 node).
    let mut set = NodeSet::new([
        labelled("a1", &[("zone", "a"), ("rack", "r1")]),
        labelled("a2", &[("zone", "a"), ("rack", "r2")]),
        labelled("a3", &[("zone", "a"), ("rack", "r2")]),
        labelled("b1", &[("zone", "b"), ("rack", "r1")]),
    ]);
    let d = set.schedule(&tasks(
        "web",
        8,
        spread(&["node.labels.zone", "node.labels.rack"]),
    ));
    let m = per_node(&d);
    // 4 per zone; in zone a 2 per rack, the r2 pair one each.
    assert_eq!(m["b1"], 4, "{m:?}");
    assert_eq!((m["a1"], m["a2"], m["a3"]), (2, 1, 1), "{m:?}");
}

#[test]
fn spread_falls_back_to_zones_with_room() {
    // east is full after 2 tasks (max 1 per node): the rest go west.
    let mut set = NodeSet::new([
        labelled("e1", &[("zone", "east")]),
        labelled("e2", &[("zone", "east")]),
        labelled("w1", &[("zone", "west")]),
    ]);
    let mut spec = spread(&["node.labels.zone"]);
    spec.placement.max_replicas_per_node = 3;
    let d = set.schedule(&tasks("web", 9, spec));
    let m = per_node(&d);
    assert_eq!((m["e1"], m["e2"], m["w1"]), (3, 3, 3), "{m:?}");
    assert_eq!(d.unschedulable.len(), 0);
}

#[test]
fn platform_filter_matches_os_and_architecture_aliases() {
    let mut arm = node("arm");
    arm.platform.architecture = "aarch64".into();
    let mut set = NodeSet::new([node("x86"), arm]);
    let spec = with_placement(Placement {
        platforms: vec![Platform {
            os: "linux".into(),
            architecture: "arm64".into(),
        }],
        ..Default::default()
    });
    let d = set.schedule(&tasks("web", 2, spec.clone()));
    assert_eq!(per_node(&d).keys().collect::<Vec<_>>(), ["arm"]);
    let mut set = nodes(&["x86"]);
    let d = set.schedule(&tasks("web", 1, spec));
    assert_eq!(
        d.unschedulable[0].reason,
        "no suitable node (unsupported platform on 1 node)"
    );
}

#[test]
fn a_batch_groups_by_service_and_requirements() {
    let mut set = nodes(&["a", "b"]);
    let mut batch = tasks("web", 2, TaskSpec::default());
    batch.extend(tasks("db", 2, TaskSpec::default()));
    // Same service, different spec (a rolling update in flight): its own group.
    let mut newer = tasks("web", 2, constrained(&["node.id==b"]));
    for t in &mut newer {
        t.id.push_str("-v2");
    }
    batch.extend(newer);
    let d = set.schedule(&batch);
    let order: Vec<&str> = d.assignments.iter().map(|a| a.task_id.as_str()).collect();
    // Groups in order of first appearance, each group's tasks in batch order.
    assert_eq!(
        order,
        ["web.0", "web.1", "db.0", "db.1", "web.0-v2", "web.1-v2"]
    );
    assert_eq!(set.get("b").unwrap().service_tasks("web"), 3);
    assert_eq!(set.get("a").unwrap().total_tasks, 2);
}

#[test]
fn node_set_upsert_and_remove_keep_id_order() {
    let mut set = nodes(&["b", "d"]);
    set.upsert(node("a"));
    set.upsert(node("c"));
    let mut changed = node("d");
    changed.availability = Availability::Drain;
    set.upsert(changed);
    assert_eq!(
        set.iter().map(|n| n.id.as_str()).collect::<Vec<_>>(),
        ["a", "b", "c", "d"]
    );
    assert_eq!(set.get("d").unwrap().availability, Availability::Drain);
    assert!(set.remove("b").is_some());
    assert!(set.remove("b").is_none());
    assert_eq!(set.len(), 3);
    assert_eq!(set.get("c").unwrap().id, "c");
    let mut n = node("x");
    n.add_task(
        "s",
        ResourceAmounts {
            nano_cpus: 1,
            memory_bytes: 2,
        },
    );
    n.remove_task(
        "s",
        ResourceAmounts {
            nano_cpus: 1,
            memory_bytes: 2,
        },
    );
    assert_eq!(n, node("x"));
}

/// Random clusters: every assignment is to a node that passed the filters
/// when it was made, reservations never overdraw a node, eligible equal
/// nodes stay within one task of each other, and a task is left pending only
/// when no node could take it.
#[test]
fn random_clusters_respect_filters_and_spread_evenly() {
    let mut rng = StdRng::seed_from_u64(5);
    for round in 0..200 {
        let n_nodes = rng.gen_range(1..40);
        let zones = rng.gen_range(1..4);
        let mut ns = Vec::new();
        for i in 0..n_nodes {
            let mut n = labelled(&format!("n{i:02}"), &[("zone", &format!("z{}", i % zones))]);
            n.availability = match rng.gen_range(0..10) {
                0 => Availability::Drain,
                1 => Availability::Pause,
                _ => Availability::Active,
            };
            if rng.gen_range(0..10) == 0 {
                n.status = NodeStatus::Down;
            }
            n.available.memory_bytes = rng.gen_range(0..8) * GB;
            ns.push(n);
        }
        let before = NodeSet::new(ns.clone());
        let mut set = NodeSet::new(ns);
        let reserve = rng.gen_range(0..3) * GB;
        let max = rng.gen_range(0..4);
        let mut spec = reserving(reserve, 0);
        spec.placement.max_replicas_per_node = max;
        let want = rng.gen_range(1..60);
        let d = set.schedule(&tasks("svc", want, spec));
        assert_eq!(d.assignments.len() + d.unschedulable.len(), want);
        let m = per_node(&d);
        let mut eligible_counts = Vec::new();
        for n in before.iter() {
            let got = *m.get(&n.id).unwrap_or(&0) as u64;
            let usable = n.status == NodeStatus::Ready && n.availability == Availability::Active;
            let by_memory = n
                .available
                .memory_bytes
                .checked_div(reserve)
                .unwrap_or(u64::MAX);
            let cap = if !usable {
                0
            } else if max > 0 {
                by_memory.min(max)
            } else {
                by_memory
            };
            assert!(got <= cap, "round {round}: {} got {got} > cap {cap}", n.id);
            if usable && cap == u64::MAX {
                eligible_counts.push(got);
            }
            if !d.unschedulable.is_empty() {
                assert_eq!(
                    got, cap,
                    "round {round}: {} not full yet a task is pending",
                    n.id
                );
            }
        }
        if let (Some(hi), Some(lo)) = (eligible_counts.iter().max(), eligible_counts.iter().min()) {
            assert!(hi - lo <= 1, "round {round}: {eligible_counts:?}");
        }
    }
}

/// The decisions taken the slow, obvious way: for every task, filter every
/// node, walk the preferences choosing the value with the fewest tasks of
/// the service (over all nodes with it) among values with an eligible node,
/// then take the eligible node with the fewest service tasks, total tasks,
/// smallest ID.
fn reference_schedule(set: &mut NodeSet, batch: &[PendingTask]) -> Decisions {
    let mut d = Decisions::default();
    for tasks in group_tasks(batch) {
        let group = Group::new(&tasks[0].service_id, &tasks[0].spec).unwrap();
        let pipeline = filter::Pipeline::for_group(&group);
        for task in tasks {
            let nodes = &mut set.nodes;
            let mut candidates: Vec<usize> = (0..nodes.len())
                .filter(|&i| {
                    let n = &nodes[i];
                    pipeline.check_static(&group, n)
                        && pipeline.check_dynamic(&group, n, n.service_tasks(group.service_id))
                })
                .collect();
            if candidates.is_empty() {
                d.unschedulable.push(Unschedulable {
                    task_id: task.id.clone(),
                    reason: String::new(),
                });
                continue;
            }
            let mut all: Vec<usize> = (0..nodes.len()).collect();
            for key in &group.spread {
                let mut values: Vec<&str> =
                    candidates.iter().map(|&i| key.value(&nodes[i])).collect();
                values.sort();
                values.dedup();
                let count = |v: &str| -> u64 {
                    all.iter()
                        .filter(|&&i| key.value(&nodes[i]) == v)
                        .map(|&i| nodes[i].service_tasks(group.service_id))
                        .sum()
                };
                let best = values
                    .iter()
                    .min_by_key(|v| (count(v), **v))
                    .unwrap()
                    .to_string();
                candidates.retain(|&i| key.value(&nodes[i]) == best);
                all.retain(|&i| key.value(&nodes[i]) == best);
            }
            let &i = candidates
                .iter()
                .min_by_key(|&&i| {
                    let n = &nodes[i];
                    (
                        n.service_tasks(group.service_id),
                        n.total_tasks,
                        n.id.clone(),
                    )
                })
                .unwrap();
            nodes[i].add_task(group.service_id, group.reservations);
            d.assignments.push(Assignment {
                task_id: task.id.clone(),
                node_id: nodes[i].id.clone(),
            });
        }
    }
    d
}

/// The heap-based placement decides exactly what the per-task scan decides,
/// on random clusters and batches (several services, two spec versions of
/// one service, preferences of one or two levels, reservations, caps).
#[test]
fn heap_placement_matches_a_per_task_scan() {
    let mut rng = StdRng::seed_from_u64(42);
    for round in 0..300 {
        let n_nodes = rng.gen_range(0..30);
        let mut ns = Vec::new();
        for i in 0..n_nodes {
            let mut n = node(&format!("n{i:02}"));
            if rng.gen_bool(0.8) {
                n.labels
                    .insert("zone".into(), format!("z{}", rng.gen_range(0..3)));
            }
            if rng.gen_bool(0.7) {
                n.labels
                    .insert("rack".into(), format!("r{}", rng.gen_range(0..2)));
            }
            if rng.gen_bool(0.5) {
                n.labels.insert("disk".into(), "ssd".into());
            }
            if rng.gen_bool(0.1) {
                n.availability = Availability::Drain;
            }
            n.available.memory_bytes = rng.gen_range(0..6) * GB;
            for s in ["a", "b", "c"] {
                let c = rng.gen_range(0..3);
                if c > 0 {
                    n.tasks_by_service.insert(s.to_string(), c);
                    n.total_tasks += c;
                }
            }
            n.total_tasks += rng.gen_range(0..3);
            ns.push(n);
        }
        let mut batch = Vec::new();
        for (k, service) in ["a", "b", "a", "c"].iter().enumerate() {
            let mut spec = reserving(rng.gen_range(0..2) * GB, 0);
            spec.placement.max_replicas_per_node = rng.gen_range(0..4);
            if rng.gen_bool(0.3) {
                spec.placement.constraints = vec!["node.labels.disk==ssd".into()];
            }
            let prefs = ["node.labels.zone", "node.labels.rack"];
            spec.placement.preferences = prefs[..rng.gen_range(0..3)]
                .iter()
                .map(|p| PlacementPreference {
                    spread: p.to_string(),
                })
                .collect();
            let mut ts = tasks(service, rng.gen_range(0..15), spec);
            for t in &mut ts {
                t.id.push_str(&format!("-g{k}"));
            }
            batch.extend(ts);
        }
        let mut fast = NodeSet::new(ns.clone());
        let mut slow = NodeSet::new(ns);
        let got = fast.schedule(&batch);
        let want = reference_schedule(&mut slow, &batch);
        assert_eq!(got.assignments, want.assignments, "round {round}");
        let ids = |d: &Decisions| -> Vec<String> {
            d.unschedulable.iter().map(|u| u.task_id.clone()).collect()
        };
        assert_eq!(ids(&got), ids(&want), "round {round}");
        assert!(got
            .unschedulable
            .iter()
            .all(|u| u.reason.starts_with("no suitable node")));
        assert_eq!(
            fast.iter().cloned().collect::<Vec<_>>(),
            slow.iter().cloned().collect::<Vec<_>>(),
            "round {round}"
        );
    }
}

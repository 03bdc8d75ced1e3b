use super::*;
use agent_common::objects::NodeRole;
use agent_common::spec::{ServiceSpec, TaskSpec};

const SECOND: Timestamp = 1_000_000_000;
const MB: u64 = 1_000_000;

fn node(id: &str, status: NodeStatus, availability: Availability) -> Node {
    Node {
        meta: Meta {
            id: id.into(),
            version: 1,
            ..Default::default()
        },
        hostname: id.into(),
        role: NodeRole::Worker,
        status,
        availability,
        ..Default::default()
    }
}

fn service(id: &str, replicas: u64) -> Service {
    Service {
        meta: Meta {
            id: id.into(),
            version: 1,
            ..Default::default()
        },
        name: id.into(),
        spec: ServiceSpec {
            name: id.into(),
            mode: ServiceMode::Replicated { replicas },
            task: TaskSpec::default(),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Applies creates/updates/deletes to a task list (ids made up for creates).
fn apply(tasks: &mut Vec<Task>, actions: Vec<Action>, next_id: &mut u64) {
    for a in actions {
        match a {
            Action::Create(Object::Task(mut t)) => {
                *next_id += 1;
                t.meta.id = format!("t{next_id}");
                t.meta.created_at = *next_id;
                tasks.push(t);
            }
            Action::Update(Object::Task(t)) => {
                let i = tasks.iter().position(|x| x.meta.id == t.meta.id).unwrap();
                tasks[i] = t;
            }
            Action::Delete { id, .. } => tasks.retain(|t| t.meta.id != id),
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn converge(services: &[Service], tasks: &mut Vec<Task>, nodes: &[Node], next: &mut u64) {
    for _ in 0..10 {
        let a = plan(services, tasks, nodes, 0);
        let s = schedule(tasks, nodes, services);
        if a.is_empty() && s.is_empty() {
            return;
        }
        apply(tasks, a, next);
        apply(tasks, s, next);
    }
    panic!("did not converge: {tasks:#?}");
}

fn running_per_node(tasks: &[Task]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks.iter().filter(|t| is_live_desired(t)) {
        *m.entry(t.node_id.clone().unwrap_or_default()).or_insert(0) += 1;
    }
    m
}

#[test]
fn replicas_are_created_spread_and_scaled() {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("n{i}"), NodeStatus::Ready, Availability::Active))
        .collect();
    let mut s = service("web", 12);
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    let per = running_per_node(&tasks);
    assert_eq!(per.values().sum::<usize>(), 12);
    assert!(per.values().all(|c| *c == 4), "{per:?}");
    s.spec.mode = ServiceMode::Replicated { replicas: 5 };
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(running_per_node(&tasks).values().sum::<usize>(), 5);
    let slots: std::collections::BTreeSet<u64> = tasks
        .iter()
        .filter(|t| is_live_desired(t))
        .map(|t| t.slot)
        .collect();
    assert_eq!(slots, (1..=5).collect());
}

#[test]
fn drained_and_down_nodes_lose_their_tasks_and_failed_tasks_restart() {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("n{i}"), NodeStatus::Ready, Availability::Active))
        .collect();
    let s = service("web", 6);
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    nodes[0].availability = Availability::Drain;
    nodes[1].status = NodeStatus::Down;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    let per = running_per_node(&tasks);
    assert_eq!(per.get("n3"), Some(&6), "{per:?}");
    // A task that failed is replaced in its slot; the old one stays as history.
    let failed = tasks.iter().position(is_live_desired).unwrap();
    let slot = tasks[failed].slot;
    tasks[failed].state = TaskState::Failed;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    let in_slot: Vec<&Task> = tasks.iter().filter(|t| t.slot == slot).collect();
    assert_eq!(in_slot.iter().filter(|t| is_live_desired(t)).count(), 1);
    assert!(in_slot.iter().any(|t| t.state == TaskState::Failed));
}

#[test]
fn a_removed_service_stops_then_deletes_its_tasks_and_history_is_bounded() {
    let nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let s = service("web", 1);
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    for _ in 0..(TASK_HISTORY + 3) {
        let i = tasks.iter().position(is_live_desired).unwrap();
        tasks[i].state = TaskState::Failed;
        converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    }
    assert!(tasks.len() <= TASK_HISTORY + 1, "{}", tasks.len());
    converge(&[], &mut tasks, &nodes, &mut next);
    assert!(tasks
        .iter()
        .all(|t| !is_live_desired(t) || t.state.is_terminal()));
    for t in tasks.iter_mut() {
        t.state = TaskState::Shutdown;
    }
    converge(&[], &mut tasks, &nodes, &mut next);
    assert!(tasks.is_empty(), "{tasks:?}");
}

#[test]
fn global_services_run_one_task_per_usable_node() {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("n{i}"), NodeStatus::Ready, Availability::Active))
        .collect();
    let mut s = service("agent", 0);
    s.spec.mode = ServiceMode::Global;
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(running_per_node(&tasks).len(), 3);
    nodes.push(node("n4", NodeStatus::Ready, Availability::Active));
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(running_per_node(&tasks).get("n4"), Some(&1));
    nodes[0].availability = Availability::Drain;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(running_per_node(&tasks).get("n1"), None);
}

#[test]
fn restart_condition_none_and_max_attempts_leave_the_slot_finished() {
    let nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let mut s = service("once", 1);
    s.spec.task.restart.condition = RestartCondition::None;
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    tasks[0].state = TaskState::Failed;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(tasks.len(), 1, "{tasks:?}");
    assert!(!is_live_desired(&tasks[0]));

    let mut s = service("twice", 1);
    s.spec.task.restart.max_attempts = 2;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
        if let Some(t) = tasks
            .iter_mut()
            .find(|t| is_live_desired(t) && !t.state.is_terminal())
        {
            t.state = TaskState::Failed;
        }
    }
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(tasks.len(), 3, "first run + 2 restarts: {tasks:?}");
}

/// One orchestrator + scheduler pass, then the "agent" runs what was
/// assigned and stops what was shut down. Returns the tasks that were
/// starting (assigned, not yet running) after the pass.
fn step(services: &mut [Service], tasks: &mut Vec<Task>, nodes: &[Node], next: &mut u64) -> usize {
    let a = plan(services, tasks, nodes, 0);
    for act in &a {
        if let Action::Update(Object::Service(s)) = act {
            let i = services
                .iter()
                .position(|x| x.meta.id == s.meta.id)
                .unwrap();
            services[i] = s.clone();
        }
    }
    let a: Vec<Action> = a
        .into_iter()
        .filter(|x| !matches!(x, Action::Update(Object::Service(_))))
        .collect();
    apply(tasks, a, next);
    let s = schedule(tasks, nodes, services);
    apply(tasks, s, next);
    let starting = tasks
        .iter()
        .filter(|t| is_live_desired(t) && t.state == TaskState::Assigned)
        .count();
    for t in tasks.iter_mut() {
        if t.desired_state == TaskState::Shutdown && !t.state.is_terminal() {
            t.state = TaskState::Shutdown;
        } else if t.state == TaskState::Assigned && is_live_desired(t) {
            // The new command fails when the generation is "bad".
            t.state = if t.spec.container.command == vec!["false".to_string()] {
                TaskState::Failed
            } else {
                t.running_at = Some(0);
                TaskState::Running
            };
        }
    }
    starting
}

#[test]
fn rolling_updates_respect_parallelism_and_roll_back_on_failure() {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("n{i}"), NodeStatus::Ready, Availability::Active))
        .collect();
    let mut services = vec![service("web", 6)];
    services[0].spec.task.container.command = vec!["sleep".into()];
    services[0].spec.update.parallelism = 2;
    services[0].spec.update.failure_action = FailureAction::Rollback;
    // The test's clock stands still: no monitor period to wait out.
    services[0].spec.update.monitor_ms = 0;
    services[0].spec.rollback.monitor_ms = 0;
    let mut tasks = Vec::new();
    let mut next = 0;
    for _ in 0..5 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    assert_eq!(
        tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count(),
        6
    );

    // A good update: never more than 2 slots starting at once; all replaced.
    let old = services[0].spec.clone();
    services[0].previous_spec = Some(old.clone());
    services[0].spec.task.container.command = vec!["sleep".into(), "2".into()];
    services[0].spec_generation += 1;
    for _ in 0..20 {
        let starting = step(&mut services, &mut tasks, &nodes, &mut next);
        assert!(starting <= 2, "{starting} slots updating at once");
    }
    let running: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .collect();
    assert_eq!(running.len(), 6);
    assert!(running
        .iter()
        .all(|t| t.spec_generation == services[0].spec_generation));
    assert_eq!(
        services[0].update_status.as_ref().unwrap().state,
        "completed"
    );

    // A bad update (the command fails): rolled back to the previous spec.
    let good = services[0].spec.clone();
    services[0].previous_spec = Some(good.clone());
    services[0].spec.task.container.command = vec!["false".into()];
    services[0].spec_generation += 1;
    for _ in 0..30 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    assert_eq!(services[0].spec, good, "the spec was rolled back");
    let status = services[0].update_status.clone().unwrap();
    assert_eq!(status.state, "rollback_completed", "{status:?}");
    assert!(status.message.contains("rolled back"), "{status:?}");
    let running: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .collect();
    assert_eq!(running.len(), 6);
    assert!(running
        .iter()
        .all(|t| t.spec.container.command == good.task.container.command));
}

#[test]
fn update_delay_holds_the_next_batch() {
    let nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let mut s = service("web", 2);
    s.spec.update.parallelism = 1;
    s.spec.update.delay_ms = 1_000;
    let mut tasks = Vec::new();
    let mut next = 0;
    let mut services = vec![s];
    for _ in 0..4 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    services[0].previous_spec = Some(services[0].spec.clone());
    services[0].spec.task.container.command = vec!["new".into()];
    services[0].spec_generation += 1;
    // The first updated task starts running at t = 0.
    for _ in 0..4 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    for t in tasks.iter_mut() {
        if t.spec_generation == services[0].spec_generation && t.state == TaskState::Running {
            t.running_at = Some(0);
        }
    }
    let fresh = |tasks: &[Task], g: u64| {
        tasks
            .iter()
            .filter(|t| t.spec_generation == g && is_live_desired(t))
            .count()
    };
    let g = services[0].spec_generation;
    assert_eq!(fresh(&tasks, g), 1);
    // 0.5 s later: held; 1.5 s later: the next slot is updated.
    let held = plan(&services, &tasks, &nodes, 500_000_000);
    assert!(
        !held.iter().any(|a| matches!(a, Action::Create(_))),
        "{held:?}"
    );
    let go = plan(&services, &tasks, &nodes, 1_500_000_000);
    assert!(go.iter().any(|a| matches!(a, Action::Create(_))), "{go:?}");
}

#[test]
fn update_monitor_counts_only_early_failures_and_delays_completion() {
    let nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let mut s = service("web", 1);
    s.spec_generation = 2;
    s.previous_spec = Some(s.spec.clone());
    s.spec.update.monitor_ms = 1_000;
    s.spec.update.failure_action = FailureAction::Pause;
    s.update_status = Some(UpdateStatus {
        state: "updating".into(),
        message: String::new(),
        generation: 2,
    });
    let mut t = new_task(&s, 1, Some("n1"), 0);
    t.meta.id = "t1".into();
    t.spec_generation = 2;
    t.state = TaskState::Running;
    t.running_at = Some(0);
    let status_of = |actions: &[Action]| {
        actions.iter().find_map(|a| match a {
            Action::Update(Object::Service(s)) => s.update_status.clone().map(|u| u.state),
            _ => None,
        })
    };
    // Running for 0.5 s of a 1 s monitor: not complete yet; at 2 s: complete.
    assert_eq!(
        status_of(&plan(
            std::slice::from_ref(&s),
            std::slice::from_ref(&t),
            &nodes,
            500_000_000
        )),
        None
    );
    assert_eq!(
        status_of(&plan(
            std::slice::from_ref(&s),
            std::slice::from_ref(&t),
            &nodes,
            2_000_000_000
        ))
        .as_deref(),
        Some("completed")
    );
    // Failing 3 s after it started (past the monitor): not an update failure.
    t.state = TaskState::Failed;
    t.meta.updated_at = 3_000_000_000;
    assert_ne!(
        status_of(&plan(
            std::slice::from_ref(&s),
            std::slice::from_ref(&t),
            &nodes,
            3_000_000_000
        ))
        .as_deref(),
        Some("paused")
    );
    // Failing 0.2 s after it started: the update pauses.
    t.meta.updated_at = 200_000_000;
    assert_eq!(
        status_of(&plan(
            std::slice::from_ref(&s),
            std::slice::from_ref(&t),
            &nodes,
            3_000_000_000
        ))
        .as_deref(),
        Some("paused")
    );
}

/// A task of `s` in `slot` (on `node`) created at `created` that failed and
/// whose desired state the orchestrator already set to shutdown.
fn failed_task(s: &Service, id: &str, slot: u64, node: Option<&str>, created: Timestamp) -> Task {
    let mut t = new_task(s, slot, node, created);
    t.meta.id = id.into();
    t.state = TaskState::Failed;
    t.desired_state = TaskState::Shutdown;
    t
}

fn creates(actions: &[Action]) -> Vec<&Task> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Create(Object::Task(t)) => Some(t),
            _ => None,
        })
        .collect()
}

#[test]
fn restart_window_counts_only_recent_restarts() {
    let nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let mut s = service("web", 1);
    s.spec.task.restart.max_attempts = 2;
    s.spec.task.restart.window_ms = 10_000;
    // The first run and two restarts, all failed (restarts at 2 s and 3 s).
    let tasks: Vec<Task> = (1..=3)
        .map(|i| failed_task(&s, &format!("t{i}"), 1, Some("n1"), i * SECOND))
        .collect();
    let services = std::slice::from_ref(&s);
    // At 5 s both restarts are within the 10 s window: the slot stays failed.
    assert!(creates(&plan(services, &tasks, &nodes, 5 * SECOND)).is_empty());
    // At 12.5 s the restart of 2 s has left the window: one more restart.
    let later = plan(services, &tasks, &nodes, 12 * SECOND + SECOND / 2);
    let new = creates(&later);
    assert_eq!(new.len(), 1, "{later:?}");
    assert_eq!(new[0].slot, 1);
    // Without a window every restart in the kept history counts, for ever.
    s.spec.task.restart.window_ms = 0;
    let services = std::slice::from_ref(&s);
    assert!(creates(&plan(services, &tasks, &nodes, 1_000 * SECOND)).is_empty());

    // Global services count per node: n1's failures do not hold back n2.
    let nodes = vec![
        node("n1", NodeStatus::Ready, Availability::Active),
        node("n2", NodeStatus::Ready, Availability::Active),
    ];
    let mut g = service("agent", 0);
    g.spec.mode = ServiceMode::Global;
    g.spec.task.restart.max_attempts = 1;
    g.spec.task.restart.window_ms = 10_000;
    let tasks = vec![
        failed_task(&g, "a1", 0, Some("n1"), SECOND),
        failed_task(&g, "a2", 0, Some("n1"), 2 * SECOND),
        failed_task(&g, "b1", 0, Some("n2"), SECOND),
    ];
    let globals = std::slice::from_ref(&g);
    let now = plan(globals, &tasks, &nodes, 5 * SECOND);
    let placed: Vec<Option<&str>> = creates(&now).iter().map(|t| t.node_id.as_deref()).collect();
    assert_eq!(placed, vec![Some("n2")], "{now:?}");
    let later = plan(globals, &tasks, &nodes, 12 * SECOND + SECOND / 2);
    let placed: Vec<Option<&str>> = creates(&later)
        .iter()
        .map(|t| t.node_id.as_deref())
        .collect();
    assert_eq!(placed, vec![Some("n1"), Some("n2")], "{later:?}");
}

#[test]
fn replacements_by_updates_and_drains_are_not_restarts() {
    let s = service("web", 1);
    let mut updated = failed_task(&s, "t1", 1, Some("n1"), SECOND);
    updated.state = TaskState::Shutdown;
    let failed = failed_task(&s, "t2", 1, Some("n2"), 2 * SECOND);
    let mut running = new_task(&s, 1, Some("n2"), 3 * SECOND);
    running.meta.id = "t3".into();
    running.state = TaskState::Running;
    // t2 replaced a task shut down by an update (not a restart); t3
    // replaced t2, which failed (a restart).
    assert_eq!(
        restarts_in_window(&[&running, &updated, &failed], 0, 10 * SECOND),
        1
    );
    assert_eq!(
        restarts_in_window(&[&running, &updated, &failed], 5_000, 10 * SECOND),
        0
    );
}

/// Two nodes, two replicas (one per node) running with `order`; then `change`
/// is made to n1 and one pass runs. Returns whether n1's task is still meant
/// to run after that pass, and the state of the cluster after a few more.
fn move_off_n1(
    order: UpdateOrder,
    drain_order: DrainOrder,
    change: fn(&mut Node),
) -> (bool, Vec<Task>) {
    let mut nodes = vec![
        node("n1", NodeStatus::Ready, Availability::Active),
        node("n2", NodeStatus::Ready, Availability::Active),
    ];
    nodes[0].drain_order = drain_order;
    let mut services = vec![service("web", 2)];
    services[0].spec.update.order = order;
    let mut tasks = Vec::new();
    let mut next = 0;
    for _ in 0..3 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    assert_eq!(running_per_node(&tasks).get("n1"), Some(&1));
    let old = tasks
        .iter()
        .find(|t| t.node_id.as_deref() == Some("n1"))
        .map(|t| t.meta.id.clone())
        .unwrap_or_default();
    change(&mut nodes[0]);
    step(&mut services, &mut tasks, &nodes, &mut next);
    let old_kept = tasks
        .iter()
        .any(|t| t.meta.id == old && is_live_desired(t) && t.state == TaskState::Running);
    for slot in 1..=2 {
        let live = tasks
            .iter()
            .filter(|t| t.slot == slot && is_live_desired(t))
            .count();
        assert!(live <= 2, "more than one extra task in slot {slot}");
    }
    for _ in 0..4 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    (old_kept, tasks)
}

#[test]
fn drain_with_start_first_stops_the_old_task_once_its_replacement_runs() {
    let drain = |n: &mut Node| n.availability = Availability::Drain;
    let (kept, tasks) = move_off_n1(UpdateOrder::StartFirst, DrainOrder::StopFirst, drain);
    assert!(
        kept,
        "start-first: the old task runs until the new one does"
    );
    assert_eq!(running_per_node(&tasks).get("n2"), Some(&2), "{tasks:#?}");
    assert_eq!(running_per_node(&tasks).get("n1"), None, "{tasks:#?}");
    let old = tasks
        .iter()
        .find(|t| t.node_id.as_deref() == Some("n1"))
        .map(|t| (t.desired_state, t.message.clone()));
    assert_eq!(old, Some((TaskState::Shutdown, "node drained".to_string())));
    assert_eq!(tasks.len(), 3, "one replacement, no more: {tasks:#?}");

    // The node's drain order start-first (the default) does the same for a
    // service updated stop-first.
    let (kept, tasks) = move_off_n1(UpdateOrder::StopFirst, DrainOrder::StartFirst, drain);
    assert!(kept, "drain order start-first keeps the old task running");
    assert_eq!(running_per_node(&tasks).get("n2"), Some(&2), "{tasks:#?}");
    assert_eq!(running_per_node(&tasks).get("n1"), None, "{tasks:#?}");

    // Drain order stop-first and update order stop-first: the old task stops
    // in the same pass.
    let (kept, tasks) = move_off_n1(UpdateOrder::StopFirst, DrainOrder::StopFirst, drain);
    assert!(!kept);
    assert_eq!(running_per_node(&tasks).get("n2"), Some(&2), "{tasks:#?}");

    // A node that is down cannot be waited for, start-first or not.
    let down = |n: &mut Node| n.status = NodeStatus::Down;
    let (kept, tasks) = move_off_n1(UpdateOrder::StartFirst, DrainOrder::StartFirst, down);
    assert!(!kept);
    assert_eq!(running_per_node(&tasks).get("n2"), Some(&2), "{tasks:#?}");
}

#[test]
fn drain_with_start_first_and_nowhere_to_go_keeps_the_old_task() {
    let mut nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let mut services = vec![service("web", 1)];
    services[0].spec.update.order = UpdateOrder::StartFirst;
    let mut tasks = Vec::new();
    let mut next = 0;
    for _ in 0..3 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    nodes[0].availability = Availability::Drain;
    for _ in 0..5 {
        step(&mut services, &mut tasks, &nodes, &mut next);
    }
    // The old task still runs; one replacement waits for a node.
    assert_eq!(tasks.len(), 2, "{tasks:#?}");
    assert!(tasks
        .iter()
        .any(|t| t.state == TaskState::Running && is_live_desired(t)));
    let waiting = tasks.iter().find(|t| t.state == TaskState::Pending);
    assert!(
        waiting.is_some_and(|t| t.message.starts_with("no suitable node")),
        "{tasks:#?}"
    );
}

fn with_capacity(id: &str, memory_bytes: u64) -> Node {
    let mut n = node(id, NodeStatus::Ready, Availability::Active);
    n.resources = Some(ResourceAmounts {
        nano_cpus: 4_000_000_000,
        memory_bytes,
    });
    n
}

#[test]
fn reported_capacity_leaves_a_task_too_big_for_every_node_pending() {
    let nodes: Vec<Node> = (1..=3)
        .map(|i| with_capacity(&format!("n{i}"), 1_000 * MB))
        .collect();
    let mut s = service("big", 1);
    s.spec.task.resources.reservations.memory_bytes = 2_000 * MB;
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].state, TaskState::Pending);
    assert_eq!(tasks[0].node_id, None);
    assert_eq!(
        tasks[0].message,
        "no suitable node (insufficient memory on 3 nodes)"
    );
}

#[test]
fn reservations_add_up_against_reported_capacity() {
    let mut s = service("web", 2);
    s.spec.task.resources.reservations.memory_bytes = 600 * MB;
    // One node of 1 GB takes one task of 600 MB, not two.
    let nodes = vec![with_capacity("n1", 1_000 * MB)];
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(running_per_node(&tasks).get("n1"), Some(&1), "{tasks:#?}");
    let waiting: Vec<&Task> = tasks.iter().filter(|t| t.node_id.is_none()).collect();
    assert_eq!(waiting.len(), 1, "{tasks:#?}");
    assert_eq!(
        waiting[0].message,
        "no suitable node (insufficient memory on 1 node)"
    );
    // A second node of 1 GB takes the other.
    let nodes = vec![
        with_capacity("n1", 1_000 * MB),
        with_capacity("n2", 1_000 * MB),
    ];
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    let per = running_per_node(&tasks);
    assert_eq!(
        (per.get("n1"), per.get("n2")),
        (Some(&1), Some(&1)),
        "{per:?}"
    );
    // A node that has not reported its capacity is not limited.
    let mut unknown = node("n3", NodeStatus::Ready, Availability::Active);
    unknown.resources = None;
    let mut s = service("web", 4);
    s.spec.task.resources.reservations.memory_bytes = 600 * MB;
    let mut tasks = Vec::new();
    converge(std::slice::from_ref(&s), &mut tasks, &[unknown], &mut next);
    assert_eq!(running_per_node(&tasks).get("n3"), Some(&4), "{tasks:#?}");
}

#[test]
fn max_attempts_above_the_kept_history_still_stop_restarts() {
    let nodes = vec![node("n1", NodeStatus::Ready, Availability::Active)];
    let attempts = TASK_HISTORY as u64 + 2;
    let mut s = service("flaky", 1);
    s.spec.task.restart.max_attempts = attempts;
    let mut tasks = Vec::new();
    let mut next = 0;
    for _ in 0..(2 * attempts) {
        converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
        if let Some(t) = tasks
            .iter_mut()
            .find(|t| is_live_desired(t) && !t.state.is_terminal())
        {
            t.state = TaskState::Failed;
        }
    }
    converge(std::slice::from_ref(&s), &mut tasks, &nodes, &mut next);
    assert_eq!(next, attempts + 1, "first run + {attempts} restarts");
    assert_eq!(tasks.len() as u64, attempts + 1, "{tasks:#?}");
    assert!(tasks.iter().all(|t| !is_live_desired(t)));
}

/// Three nodes, a 6-replica service (update order `order`) converged, then n1
/// (drain order `drain_order`) drained. Each round is one orchestrator and
/// scheduling pass, then the agents: first they stop what was shut down,
/// then the running tasks are counted (the worst moment), then they start
/// what was assigned. Returns the fewest running tasks seen and the tasks at
/// the end.
fn drain_n1_counting(order: UpdateOrder, drain_order: DrainOrder) -> (usize, Vec<Task>) {
    let mut nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("n{i}"), NodeStatus::Ready, Availability::Active))
        .collect();
    nodes[0].drain_order = drain_order;
    let mut s = service("web", 6);
    s.spec.update.order = order;
    let services = std::slice::from_ref(&s);
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(services, &mut tasks, &nodes, &mut next);
    for t in tasks.iter_mut() {
        t.state = TaskState::Running;
    }
    assert_eq!(running_per_node(&tasks).get("n1"), Some(&2), "{tasks:#?}");
    nodes[0].availability = Availability::Drain;
    let running = |tasks: &[Task]| {
        tasks
            .iter()
            .filter(|t| t.state == TaskState::Running)
            .count()
    };
    let mut fewest = running(&tasks);
    for _ in 0..6 {
        let a = plan(services, &tasks, &nodes, 0);
        apply(&mut tasks, a, &mut next);
        let a = schedule(&tasks, &nodes, services);
        apply(&mut tasks, a, &mut next);
        for t in tasks.iter_mut() {
            if t.desired_state == TaskState::Shutdown && !t.state.is_terminal() {
                t.state = TaskState::Shutdown;
            }
        }
        fewest = fewest.min(running(&tasks));
        for t in tasks.iter_mut() {
            if t.state == TaskState::Assigned && is_live_desired(t) {
                t.state = TaskState::Running;
            }
        }
    }
    (fewest, tasks)
}

#[test]
fn drains_start_each_replacement_before_stopping_its_task_unless_stop_first() {
    // Default drain order, a service updated stop-first (the default): never
    // fewer than 6 running; n1 empties; its two tasks were shut down as
    // "node drained" and replaced once each.
    let (fewest, tasks) = drain_n1_counting(UpdateOrder::StopFirst, DrainOrder::default());
    assert_eq!(DrainOrder::default(), DrainOrder::StartFirst);
    assert_eq!(fewest, 6, "{tasks:#?}");
    let per = running_per_node(&tasks);
    assert_eq!(per.get("n1"), None, "{per:?}");
    assert_eq!(per.values().sum::<usize>(), 6, "{per:?}");
    let drained: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.node_id.as_deref() == Some("n1"))
        .collect();
    assert_eq!(drained.len(), 2, "{tasks:#?}");
    assert!(drained
        .iter()
        .all(|t| t.state == TaskState::Shutdown && t.message == "node drained"));
    assert_eq!(tasks.len(), 8, "two replacements, no more: {tasks:#?}");

    // Drain order stop-first: the node's tasks stop before their
    // replacements run (swarm mode's drain), so the count dips.
    let (fewest, tasks) = drain_n1_counting(UpdateOrder::StopFirst, DrainOrder::StopFirst);
    assert_eq!(fewest, 4, "{tasks:#?}");
    assert_eq!(running_per_node(&tasks).get("n1"), None);
    assert_eq!(running_per_node(&tasks).values().sum::<usize>(), 6);

    // ... except for a service updated start-first, which can run twice.
    let (fewest, tasks) = drain_n1_counting(UpdateOrder::StartFirst, DrainOrder::StopFirst);
    assert_eq!(fewest, 6, "{tasks:#?}");
    assert_eq!(running_per_node(&tasks).get("n1"), None);
}

#[test]
fn jobs_leave_a_drained_node_stop_first_whatever_its_drain_order() {
    // A job's task runs its work once: it is not started twice to move it.
    let mut nodes = vec![
        node("n1", NodeStatus::Ready, Availability::Active),
        node("n2", NodeStatus::Ready, Availability::Active),
    ];
    let mut s = service("batch", 0);
    s.spec.mode = ServiceMode::ReplicatedJob {
        max_concurrent: 1,
        total_completions: 1,
    };
    let services = std::slice::from_ref(&s);
    let mut tasks = Vec::new();
    let mut next = 0;
    converge(services, &mut tasks, &nodes, &mut next);
    assert_eq!(tasks.len(), 1, "{tasks:#?}");
    tasks[0].state = TaskState::Running;
    let on = tasks[0].node_id.clone().expect("placed");
    let i = nodes.iter().position(|n| n.meta.id == on).expect("node");
    nodes[i].availability = Availability::Drain;
    let a = plan(services, &tasks, &nodes, 0);
    apply(&mut tasks, a, &mut next);
    assert_eq!(tasks[0].desired_state, TaskState::Shutdown, "{tasks:#?}");
    assert_eq!(tasks[0].message, "node drained");
}

use super::*;
use agent_common::objects::NodeRole;
use agent_common::spec::{ServiceSpec, TaskSpec};

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

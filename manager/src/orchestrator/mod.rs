//! The leader's reconcilers: the orchestrator (services → tasks: replicas,
//! global, restarts, drained and down nodes, spec updates, history) and the
//! scheduling pass (pending tasks → nodes, with the scheduler core). Both
//! run on the leader only, read a consistent view of the store and write
//! what they decided in few batches (one Raft entry each).
//!
//! Every decision is a pure function of the view ([`plan`]), so it is tested
//! without a cluster; [`run`] drives it on the leader.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use agent_common::objects::{
    Availability, DrainOrder, Meta, Node, NodeStatus, Object, Service, Task, Timestamp,
    UpdateStatus,
};
use agent_common::spec::{
    FailureAction, ResourceAmounts, RestartCondition, ServiceMode, UpdateOrder,
};
use agent_common::task_state::TaskState;

use crate::daemon::Manager;
use crate::scheduler::{NodeInfo, NodeSet, PendingTask};
use crate::store::Action;

/// Terminal tasks kept per slot (and per node for global services), unless
/// the restart policy needs more to count its attempts.
pub const TASK_HISTORY: usize = 5;

/// The capacity the scheduling pass assumes for a node that has not reported
/// its CPUs and memory ([`Node::resources`] is `None`): more than any
/// reservation, with room left for the reservations subtracted from it.
const UNKNOWN_CAPACITY: ResourceAmounts = ResourceAmounts {
    nano_cpus: u64::MAX / 4,
    memory_bytes: u64::MAX / 4,
};

/// Largest number of actions in one store batch.
const BATCH: usize = 500;

fn is_live_desired(t: &Task) -> bool {
    t.desired_state <= TaskState::Running
}

/// The key a task occupies: its slot (replicated) or node (global).
fn slot_key(service: &Service, t: &Task) -> String {
    match service.spec.mode {
        ServiceMode::Global | ServiceMode::GlobalJob => t.node_id.clone().unwrap_or_default(),
        _ => t.slot.to_string(),
    }
}

fn new_task(service: &Service, slot: u64, node: Option<&str>, now: Timestamp) -> Task {
    Task {
        meta: Meta {
            created_at: now,
            ..Default::default()
        },
        service_id: service.meta.id.clone(),
        service_name: service.spec.name.clone(),
        slot,
        node_id: node.map(str::to_string),
        state: if node.is_some() {
            TaskState::Assigned
        } else {
            TaskState::Pending
        },
        desired_state: TaskState::Running,
        message: if node.is_some() {
            "assigned to its node".into()
        } else {
            "waiting for a node".into()
        },
        spec: service.spec.task.clone(),
        spec_generation: service.spec_generation,
        ..Default::default()
    }
}

fn node_usable(n: &Node) -> bool {
    n.status != NodeStatus::Down && n.availability != Availability::Drain
}

/// The restarts of one slot (or, for global services, one node) that count
/// against `--restart-max-attempts`: tasks created to replace a task of the
/// slot that ended (complete, failed, rejected or orphaned; not one the
/// orchestrator shut down for an update, a scale-down or a drain), created
/// within the last `window_ms` before `now`. A window of 0 counts every
/// restart in the slot's kept history ([`history_kept`] keeps enough of it).
fn restarts_in_window(in_slot: &[&Task], window_ms: u64, now: Timestamp) -> u64 {
    let mut by_age: Vec<&Task> = in_slot.to_vec();
    by_age.sort_by(|a, b| (a.meta.created_at, &a.meta.id).cmp(&(b.meta.created_at, &b.meta.id)));
    let window_ns = window_ms.saturating_mul(1_000_000);
    let in_window = |t: &Task| window_ns == 0 || t.meta.created_at.saturating_add(window_ns) > now;
    by_age
        .windows(2)
        .filter(|pair| match pair {
            [before, after] => {
                before.state.is_terminal()
                    && before.state != TaskState::Shutdown
                    && in_window(after)
            }
            _ => false,
        })
        .count() as u64
}

/// Finished tasks kept per slot: [`TASK_HISTORY`], or more when the restart
/// policy limits attempts, since [`restarts_in_window`] counts restarts from
/// this history (deleting it would let a slot that reached its limit restart
/// again).
fn history_kept(service: &Service) -> usize {
    match service.spec.task.restart.max_attempts {
        0 => TASK_HISTORY,
        max => usize::try_from(max.saturating_add(1))
            .unwrap_or(usize::MAX)
            .max(TASK_HISTORY),
    }
}

/// Whether a terminal task should be replaced, by its service's restart
/// policy; `restarts_in_slot` is what [`restarts_in_window`] counted.
fn restarts(service: &Service, t: &Task, restarts_in_slot: u64) -> bool {
    let policy = &service.spec.task.restart;
    if policy.max_attempts > 0 && restarts_in_slot >= policy.max_attempts {
        return false;
    }
    let jobs = matches!(
        service.spec.mode,
        ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
    );
    match t.state {
        TaskState::Complete => !jobs && policy.condition == RestartCondition::Any,
        TaskState::Failed | TaskState::Rejected | TaskState::Orphaned => {
            policy.condition != RestartCondition::None
        }
        TaskState::Shutdown => false,
        _ => false,
    }
}

/// What the orchestrator decides for one view of the store.
pub fn plan(services: &[Service], tasks: &[Task], nodes: &[Node], now: Timestamp) -> Vec<Action> {
    let mut actions = Vec::new();
    let nodes_by_id: HashMap<&str, &Node> = nodes.iter().map(|n| (n.meta.id.as_str(), n)).collect();
    let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
    for t in tasks {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    let shutdown = |t: &Task, why: &str| -> Action {
        let mut t = t.clone();
        t.desired_state = TaskState::Shutdown;
        if !t.state.is_terminal() {
            t.message = why.to_string();
        }
        Action::Update(Object::Task(t))
    };
    let services_by_id: HashMap<&str, &Service> =
        services.iter().map(|s| (s.meta.id.as_str(), s)).collect();

    // Tasks of removed services: stop them; delete once stopped (or never placed,
    // or on a node that is gone or down).
    for t in tasks {
        if services_by_id.contains_key(t.service_id.as_str()) {
            continue;
        }
        let node_gone = t
            .node_id
            .as_deref()
            .map(|n| {
                nodes_by_id
                    .get(n)
                    .is_none_or(|n| n.status == NodeStatus::Down)
            })
            .unwrap_or(true);
        if t.state.is_terminal() || node_gone || t.state < TaskState::Assigned {
            actions.push(Action::Delete {
                kind: agent_common::objects::Kind::Task,
                id: t.meta.id.clone(),
                version: Some(t.meta.version),
            });
        } else if t.desired_state <= TaskState::Running {
            actions.push(shutdown(t, "service removed"));
        }
    }

    for service in services {
        let empty = Vec::new();
        let stasks = by_service.get(service.meta.id.as_str()).unwrap_or(&empty);
        // Group by slot (or node for global services).
        let mut slots: BTreeMap<String, Vec<&Task>> = BTreeMap::new();
        for t in stasks {
            slots.entry(slot_key(service, t)).or_default().push(t);
        }
        let wanted: Vec<(String, u64, Option<String>)> = match &service.spec.mode {
            ServiceMode::Replicated { replicas } => {
                (1..=*replicas).map(|s| (s.to_string(), s, None)).collect()
            }
            ServiceMode::ReplicatedJob {
                total_completions, ..
            } => {
                let total = (*total_completions).max(1);
                (1..=total).map(|s| (s.to_string(), s, None)).collect()
            }
            ServiceMode::Global | ServiceMode::GlobalJob => {
                let constraints =
                    crate::scheduler::parse_constraints(&service.spec.task.placement.constraints)
                        .unwrap_or_default();
                nodes
                    .iter()
                    .filter(|n| {
                        n.status == NodeStatus::Ready && n.availability == Availability::Active
                    })
                    .filter(|n| {
                        let info = NodeInfo::from_node(n);
                        constraints.iter().all(|c| c.matches(&info))
                    })
                    .map(|n| (n.meta.id.clone(), 0, Some(n.meta.id.clone())))
                    .collect()
            }
        };
        let wanted_keys: std::collections::HashSet<&str> =
            wanted.iter().map(|(k, _, _)| k.as_str()).collect();

        // --- the rolling update's state ---
        let gen = service.spec_generation;
        let status = service
            .update_status
            .as_ref()
            .map(|u| u.state.as_str())
            .unwrap_or("");
        let rolling_back = status == "rollback_started";
        let cfg = if rolling_back {
            &service.spec.rollback
        } else {
            &service.spec.update
        };
        let live_of = |t: &&Task| is_live_desired(t) && !t.state.is_terminal();
        let stale_slots = stasks
            .iter()
            .filter(|t| live_of(t) && t.spec_generation != gen)
            .count();
        let in_progress = stasks
            .iter()
            .filter(|t| live_of(t) && t.spec_generation == gen && t.state < TaskState::Running)
            .count();
        let mut budget = if status == "paused" {
            0
        } else if cfg.parallelism == 0 {
            usize::MAX
        } else {
            (cfg.parallelism as usize).saturating_sub(in_progress)
        };
        // --update-delay: the next batch starts `delay` after the last
        // updated task of this generation started running.
        if cfg.delay_ms > 0 && stale_slots > 0 {
            let delay_ns = cfg.delay_ms.saturating_mul(1_000_000);
            let recent = stasks.iter().any(|t| {
                t.spec_generation == gen
                    && t.running_at
                        .is_some_and(|r| r.saturating_add(delay_ns) > now)
            });
            if recent {
                budget = 0;
            }
        }
        let updating = matches!(status, "updating" | "rollback_started");
        if updating && service.previous_spec.is_some() {
            // --update-monitor: a task counts as failed if it failed before
            // running, or within the monitor period after it started.
            let monitor_ns = cfg.monitor_ms.saturating_mul(1_000_000);
            let failed: Vec<&&Task> = stasks
                .iter()
                .filter(|t| {
                    t.spec_generation == gen
                        && matches!(t.state, TaskState::Failed | TaskState::Rejected)
                        && t.running_at.is_none_or(|r| {
                            monitor_ns == 0 || t.meta.updated_at <= r.saturating_add(monitor_ns)
                        })
                })
                .collect();
            let allowed = (cfg.max_failure_ratio * wanted.len().max(1) as f64).floor() as usize;
            if failed.len() > allowed && cfg.failure_action != FailureAction::Continue {
                let why = failed
                    .first()
                    .map(|t| {
                        format!(
                            "task {} failed: {}",
                            t.meta.id,
                            if t.error.is_empty() {
                                &t.message
                            } else {
                                &t.error
                            }
                        )
                    })
                    .unwrap_or_default();
                let mut s = service.clone();
                if cfg.failure_action == FailureAction::Rollback && !rolling_back {
                    if let Some(prev) = s.previous_spec.take() {
                        s.previous_spec = Some(std::mem::replace(&mut s.spec, prev));
                        s.spec_generation += 1;
                        s.update_status = Some(UpdateStatus {
                            state: "rollback_started".into(),
                            message: format!("update rolled back due to failure: {why}"),
                            generation: s.spec_generation,
                        });
                    }
                } else {
                    s.update_status = Some(UpdateStatus {
                        state: "paused".into(),
                        message: format!("update paused due to failure: {why}"),
                        generation: gen,
                    });
                }
                s.replicas = match s.spec.mode {
                    ServiceMode::Replicated { replicas } => replicas,
                    _ => 0,
                };
                s.image = s.spec.task.container.image.clone();
                actions.push(Action::Update(Object::Service(s)));
                continue;
            }
        }
        if stale_slots > 0 && !updating && status != "paused" && service.previous_spec.is_some() {
            let mut s = service.clone();
            s.update_status = Some(UpdateStatus {
                state: "updating".into(),
                message: "update in progress".into(),
                generation: gen,
            });
            actions.push(Action::Update(Object::Service(s)));
            continue;
        }
        // Complete once nothing is stale or starting and the last started
        // task has been watched for the monitor period.
        let monitored = stasks
            .iter()
            .filter(|t| t.spec_generation == gen && live_of(t))
            .all(|t| {
                t.running_at.is_some_and(|r| {
                    r.saturating_add(cfg.monitor_ms.saturating_mul(1_000_000)) <= now
                })
            });
        if updating && stale_slots == 0 && in_progress == 0 && monitored {
            let mut s = service.clone();
            s.update_status = Some(UpdateStatus {
                state: if rolling_back {
                    "rollback_completed".into()
                } else {
                    "completed".into()
                },
                message: if rolling_back {
                    service
                        .update_status
                        .as_ref()
                        .map(|u| u.message.clone())
                        .unwrap_or_default()
                } else {
                    "update completed".into()
                },
                generation: gen,
            });
            actions.push(Action::Update(Object::Service(s)));
        }

        // A running task leaving a drained node keeps running until its
        // replacement runs elsewhere (start-first), by the node's drain order
        // for replicated services (start-first unless set to stop-first) and
        // always for services updated start-first.
        let start_first_moves = |n: &Node| {
            service.spec.update.order == UpdateOrder::StartFirst
                || (matches!(service.spec.mode, ServiceMode::Replicated { .. })
                    && n.drain_order == DrainOrder::StartFirst)
        };
        for (key, slot, node) in &wanted {
            let in_slot = slots.get(key).cloned().unwrap_or_default();
            let mut live: Vec<&Task> = in_slot
                .iter()
                .copied()
                .filter(|t| is_live_desired(t))
                .collect();
            let restarts_so_far =
                restarts_in_window(&in_slot, service.spec.task.restart.window_ms, now);
            let jobs = matches!(
                service.spec.mode,
                ServiceMode::ReplicatedJob { .. } | ServiceMode::GlobalJob
            );
            // A job slot that completed is done.
            if jobs && in_slot.iter().any(|t| t.state == TaskState::Complete) {
                continue;
            }
            // An empty slot gets a task, unless its last task finished and
            // the restart policy says it stays finished.
            let last = in_slot.iter().max_by(|a, b| {
                (a.meta.created_at, &a.meta.id).cmp(&(b.meta.created_at, &b.meta.id))
            });
            // The slot's last task ended and the restart policy keeps it ended.
            let restart_refused = last
                .is_some_and(|t| t.state.is_terminal() && !restarts(service, t, restarts_so_far));
            let mut need_new = live.is_empty() && !restart_refused;
            let mut replaced = Vec::new();
            // Running tasks on a drained node that move start-first: they
            // keep running until their replacement does (below).
            let mut moving: Vec<&str> = Vec::new();
            for t in &live {
                let node_of = t.node_id.as_deref().and_then(|n| nodes_by_id.get(n));
                let on_bad_node = node_of
                    .map(|n| !node_usable(n))
                    .unwrap_or(t.node_id.is_some());
                if t.state.is_terminal() {
                    actions.push(shutdown(t, ""));
                    replaced.push(t.meta.id.clone());
                    if restarts(service, t, restarts_so_far) {
                        need_new = true;
                    }
                } else if on_bad_node {
                    let drained = node_of.is_some_and(|n| {
                        n.status != NodeStatus::Down && n.availability == Availability::Drain
                    });
                    if drained
                        && node_of.is_some_and(|n| start_first_moves(n))
                        && t.state == TaskState::Running
                    {
                        moving.push(t.meta.id.as_str());
                        continue;
                    }
                    let why = match node_of {
                        Some(n) if n.availability == Availability::Drain => "node drained",
                        Some(_) => "node down",
                        None => "node removed",
                    };
                    actions.push(shutdown(t, why));
                    replaced.push(t.meta.id.clone());
                    need_new = true;
                }
            }
            live.retain(|t| !replaced.contains(&t.meta.id));
            // Tasks to be replaced, start-first or stop-first: a slot still on
            // an older generation (rolling update, when the budget allows) or
            // a task leaving a drained node (at once, start-first).
            let (stale, mut fresh): (Vec<&Task>, Vec<&Task>) = live
                .iter()
                .partition(|t| t.spec_generation != gen || moving.contains(&t.meta.id.as_str()));
            // Never two live tasks of one generation in a slot: keep the newest.
            if fresh.len() > 1 {
                fresh.sort_by_key(|t| t.meta.created_at);
                for t in &fresh[..fresh.len() - 1] {
                    actions.push(shutdown(t, "duplicate task in slot"));
                }
                fresh = vec![fresh[fresh.len() - 1]];
            }
            if !stale.is_empty() {
                let must_move = stale.iter().any(|t| moving.contains(&t.meta.id.as_str()));
                if let Some(new) = fresh.first() {
                    // start-first: the old task stops once the new one runs.
                    if new.state == TaskState::Running {
                        for t in &stale {
                            let why = if moving.contains(&t.meta.id.as_str()) {
                                "node drained"
                            } else {
                                "replaced by the updated task"
                            };
                            actions.push(shutdown(t, why));
                        }
                    }
                } else if must_move {
                    // A drain does not wait for the update's budget; a
                    // replacement that ended is replaced by the restart policy.
                    if !restart_refused {
                        if stale.iter().any(|t| t.spec_generation != gen) {
                            budget = budget.saturating_sub(1);
                        }
                        actions.push(Action::Create(Object::Task(new_task(
                            service,
                            *slot,
                            node.as_deref(),
                            now,
                        ))));
                    }
                } else if budget > 0 {
                    budget -= 1;
                    if cfg.order != UpdateOrder::StartFirst {
                        for t in &stale {
                            actions.push(shutdown(t, "service updated"));
                        }
                    }
                    actions.push(Action::Create(Object::Task(new_task(
                        service,
                        *slot,
                        node.as_deref(),
                        now,
                    ))));
                }
                need_new = false;
                live.clear();
            } else {
                live = fresh;
            }
            if need_new && live.is_empty() {
                actions.push(Action::Create(Object::Task(new_task(
                    service,
                    *slot,
                    node.as_deref(),
                    now,
                ))));
            }
            // History: keep the newest finished tasks of the slot.
            let keep = history_kept(service);
            let mut finished: Vec<&Task> = in_slot
                .iter()
                .copied()
                .filter(|t| t.state.is_terminal() && !is_live_desired(t))
                .collect();
            if finished.len() > keep {
                finished.sort_by_key(|t| std::cmp::Reverse(t.meta.created_at));
                for t in &finished[keep..] {
                    actions.push(Action::Delete {
                        kind: agent_common::objects::Kind::Task,
                        id: t.meta.id.clone(),
                        version: Some(t.meta.version),
                    });
                }
            }
        }
        // Slots no longer wanted (scale down, node left a global service).
        for (key, in_slot) in &slots {
            if wanted_keys.contains(key.as_str()) {
                continue;
            }
            for t in in_slot {
                if is_live_desired(t) {
                    actions.push(shutdown(t, "scaled down"));
                } else if t.state.is_terminal() {
                    actions.push(Action::Delete {
                        kind: agent_common::objects::Kind::Task,
                        id: t.meta.id.clone(),
                        version: Some(t.meta.version),
                    });
                }
            }
        }
    }
    actions
}

/// The scheduling pass: pending tasks onto nodes. A node's capacity is what
/// it reported ([`Node::resources`]) minus the reservations of its live tasks
/// (ample while it has not reported); a task no node can take stays pending,
/// its message saying why (`no suitable node (insufficient memory on 3 nodes)`).
pub fn schedule(tasks: &[Task], nodes: &[Node], services: &[Service]) -> Vec<Action> {
    let mut infos: HashMap<String, NodeInfo> = nodes
        .iter()
        .map(|n| {
            let mut info = NodeInfo::from_node(n);
            // The capacity the node reported; the reservations of its live
            // tasks are subtracted below. A node that has not reported yet
            // is treated as ample, so reservations do not hold tasks back.
            info.available = n.resources.unwrap_or(UNKNOWN_CAPACITY);
            info.platform.os = "linux".into();
            info.platform.architecture = std::env::consts::ARCH.into();
            (n.meta.id.clone(), info)
        })
        .collect();
    for t in tasks {
        if let Some(node) = t.node_id.as_deref() {
            if is_live_desired(t) && !t.state.is_terminal() {
                if let Some(info) = infos.get_mut(node) {
                    info.add_task(&t.service_id, t.spec.resources.reservations);
                }
            }
        }
    }
    let specs: HashMap<&str, Arc<agent_common::spec::TaskSpec>> = services
        .iter()
        .map(|s| (s.meta.id.as_str(), Arc::new(s.spec.task.clone())))
        .collect();
    let pending: Vec<PendingTask> = tasks
        .iter()
        .filter(|t| t.state == TaskState::Pending && t.node_id.is_none() && is_live_desired(t))
        .map(|t| PendingTask {
            id: t.meta.id.clone(),
            service_id: t.service_id.clone(),
            spec: specs
                .get(t.service_id.as_str())
                .cloned()
                .unwrap_or_else(|| Arc::new(t.spec.clone())),
        })
        .collect();
    if pending.is_empty() {
        return Vec::new();
    }
    let mut set = NodeSet::new(infos.into_values().collect::<Vec<_>>());
    let decisions = set.schedule(&pending);
    let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.meta.id.as_str(), t)).collect();
    let mut actions = Vec::new();
    for a in decisions.assignments {
        if let Some(t) = by_id.get(a.task_id.as_str()) {
            let mut t = (*t).clone();
            t.node_id = Some(a.node_id.clone());
            t.state = TaskState::Assigned;
            t.message = "scheduled".into();
            actions.push(Action::Update(Object::Task(t)));
        }
    }
    for u in decisions.unschedulable {
        if let Some(t) = by_id.get(u.task_id.as_str()) {
            if t.message != u.reason {
                let mut t = (*t).clone();
                t.message = u.reason.clone();
                actions.push(Action::Update(Object::Task(t)));
            }
        }
    }
    actions
}

fn now_ns() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

async fn write(m: &Manager, actions: Vec<Action>) {
    for chunk in actions.chunks(BATCH) {
        if let Err(e) = m.store().update(chunk.to_vec()).await {
            // A conflict means the view was stale: the next pass re-plans.
            tracing::debug!("orchestrator batch not applied: {e}");
        }
    }
}

/// Runs the reconcilers while this manager leads.
pub async fn run(m: Arc<Manager>) {
    let mut watch = m.store().watch();
    let mut restart_delays: HashMap<String, tokio::time::Instant> = HashMap::new();
    loop {
        // Wake on any commit, or every half second (restart delays, node changes).
        let _ = tokio::time::timeout(Duration::from_millis(500), watch.recv()).await;
        while watch.try_recv().is_ok() {}
        if !m.raft.is_leader() {
            restart_delays.clear();
            continue;
        }
        let (services, tasks, nodes) = m
            .store()
            .view(|tx| (tx.list::<Service>(), tx.list::<Task>(), tx.list::<Node>()));
        let mut actions = plan(&services, &tasks, &nodes, now_ns());
        // Restart delay: a replacement for a failed task waits `delay`.
        let now = tokio::time::Instant::now();
        actions.retain(|a| {
            let Action::Create(Object::Task(t)) = a else {
                return true;
            };
            let Some(service) = services.iter().find(|s| s.meta.id == t.service_id) else {
                return true;
            };
            // 0 means Docker's default, 5 s.
            let delay = Duration::from_millis(match service.spec.task.restart.delay_ms {
                0 => 5_000,
                ms => ms,
            });
            let had_failure = tasks.iter().any(|old| {
                old.service_id == t.service_id
                    && old.slot == t.slot
                    && old.state.is_terminal()
                    && old.state != TaskState::Shutdown
                    && old.node_id == t.node_id.clone().or(old.node_id.clone())
            });
            if delay.is_zero() || !had_failure {
                return true;
            }
            let key = format!("{}/{}", t.service_id, t.slot);
            let due = *restart_delays.entry(key.clone()).or_insert(now + delay);
            if now >= due {
                restart_delays.remove(&key);
                true
            } else {
                false
            }
        });
        if !actions.is_empty() {
            write(&m, actions).await;
            continue;
        }
        let actions = schedule(&tasks, &nodes, &services);
        if !actions.is_empty() {
            write(&m, actions).await;
        }
    }
}

#[cfg(test)]
mod tests;

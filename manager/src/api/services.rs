//! The service half of the control API: create, list, inspect, update
//! (including scale, `--force` and rollback), remove, and task listing.
//! Specs are validated here, at the edge: nothing invalid is stored.

use std::collections::HashMap;

use agent_common::cluster::{ServiceView, TaskView};
use agent_common::objects::{Availability, Kind, Node, NodeStatus, Service, Task};
use agent_common::spec::{ResourceAmounts, ServiceMode, ServiceSpec};
use agent_common::task_state::TaskState;
use tonic::Status;

use super::store_status;
use crate::daemon::Manager;
use crate::store::{Action, ReadTx, Refusal, StoreError};

fn state_name(s: TaskState) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{s:?}").to_lowercase())
}

/// Checks a spec a user sent; the error says what to fix.
#[allow(clippy::result_large_err)]
pub fn validate(spec: &ServiceSpec) -> Result<(), Status> {
    let name = &spec.name;
    let valid_name = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.');
    if !valid_name {
        return Err(Status::invalid_argument(format!(
            "invalid service name {name:?}: use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit"
        )));
    }
    if spec.task.container.image.trim().is_empty() {
        return Err(Status::invalid_argument("a service needs an image"));
    }
    // The engine's own rules (image, env, hostname, mounts, limits, ranges):
    // a stored spec is one every node's engine accepts.
    agent_common::validate::service(spec).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if let ServiceMode::Replicated { replicas } = spec.mode {
        if replicas > 100_000 {
            return Err(Status::invalid_argument(format!(
                "{replicas} replicas is more than this cluster accepts (100000)"
            )));
        }
    }
    crate::scheduler::parse_constraints(&spec.task.placement.constraints)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    crate::scheduler::parse_preferences(&spec.task.placement.preferences)
        .map_err(|e| Status::invalid_argument(e.to_string()))?;
    spec.update
        .validate()
        .map_err(|e| Status::invalid_argument(format!("--update-*: {e}")))?;
    spec.rollback
        .validate()
        .map_err(|e| Status::invalid_argument(format!("--rollback-*: {e}")))?;
    Ok(())
}

/// Refuses a spec no node of the cluster could ever run: a reservation
/// larger than the largest node's memory or CPUs, or a CPU limit above every
/// node's CPU count (the engine refuses it). Nodes that have not reported
/// their capacity yet are given the benefit of the doubt, as is a cluster
/// with no node that has.
#[allow(clippy::result_large_err)]
pub fn fits_some_node(spec: &ServiceSpec, nodes: &[Node]) -> Result<(), Status> {
    let caps: Vec<(&str, ResourceAmounts)> = nodes
        .iter()
        .filter_map(|n| n.resources.map(|r| (n.hostname.as_str(), r)))
        .collect();
    if caps.is_empty() || nodes.iter().any(|n| n.resources.is_none()) {
        return Ok(());
    }
    let r = &spec.task.resources;
    let largest = |f: fn(&ResourceAmounts) -> u64| {
        caps.iter()
            .max_by_key(|(_, c)| f(c))
            .map(|(h, c)| (*h, f(c)))
            .unwrap_or_default()
    };
    let cpus = |n: u64| format!("{}", n as f64 / 1e9);
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let (host, mem) = largest(|c| c.memory_bytes);
    if r.reservations.memory_bytes > mem {
        return Err(Status::invalid_argument(format!(
            "--reserve-memory of {} is more than any node of this cluster has (the largest, {host}, has {}): no node could run this service; reserve less",
            gib(r.reservations.memory_bytes),
            gib(mem)
        )));
    }
    let (host, most) = largest(|c| c.nano_cpus);
    if r.reservations.nano_cpus > most {
        return Err(Status::invalid_argument(format!(
            "--reserve-cpu {} is more than any node of this cluster has (the largest, {host}, has {} CPUs): no node could run this service; reserve less",
            cpus(r.reservations.nano_cpus),
            cpus(most)
        )));
    }
    if r.limits.nano_cpus > most {
        return Err(Status::invalid_argument(format!(
            "--limit-cpu {} is more than any node of this cluster has (the largest, {host}, has {} CPUs), and a node refuses a limit above its CPU count; limit to at most {}",
            cpus(r.limits.nano_cpus),
            cpus(most),
            cpus(most)
        )));
    }
    Ok(())
}

/// Finds a service by ID, name or unique ID prefix.
#[allow(clippy::result_large_err)]
pub fn resolve(tx: &ReadTx<'_>, reference: &str) -> Result<Service, Status> {
    let r = reference.trim();
    if let Some(s) = tx.get::<Service>(r) {
        return Ok(s);
    }
    if let Some(s) = tx.get_by_name::<Service>(r) {
        return Ok(s);
    }
    let by_prefix = tx.find::<Service>(|s| !r.is_empty() && s.meta.id.starts_with(r));
    match by_prefix.len() {
        1 => Ok(by_prefix[0].clone()),
        0 => Err(Status::not_found(format!("service {r} not found"))),
        n => Err(Status::invalid_argument(format!(
            "service {r} is ambiguous ({n} IDs start with it)"
        ))),
    }
}

fn desired(service: &Service, nodes: &[Node]) -> u64 {
    match &service.spec.mode {
        ServiceMode::Replicated { replicas } => *replicas,
        ServiceMode::ReplicatedJob {
            total_completions, ..
        } => (*total_completions).max(1),
        ServiceMode::Global | ServiceMode::GlobalJob => nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Ready && n.availability == Availability::Active)
            .count() as u64,
    }
}

/// The view of a service.
pub fn view(service: &Service, tasks: &[Task], nodes: &[Node]) -> ServiceView {
    let running = tasks
        .iter()
        .filter(|t| {
            t.service_id == service.meta.id
                && t.state == TaskState::Running
                && t.desired_state <= TaskState::Running
        })
        .count() as u64;
    ServiceView {
        id: service.meta.id.clone(),
        version: service.meta.version,
        created_at: service.meta.created_at,
        updated_at: service.meta.updated_at,
        spec: service.spec.clone(),
        previous_spec: service.previous_spec.clone(),
        mode: service.spec.mode.as_str().to_string(),
        running,
        desired: desired(service, nodes),
        update_status: service.update_status.clone(),
    }
}

/// The view of a task.
pub fn task_view(t: &Task, hostnames: &HashMap<String, String>) -> TaskView {
    let name = if t.slot > 0 {
        format!("{}.{}", t.service_name, t.slot)
    } else {
        format!(
            "{}.{}",
            t.service_name,
            t.node_id.clone().unwrap_or_default()
        )
    };
    let node_id = t.node_id.clone().unwrap_or_default();
    TaskView {
        id: t.meta.id.clone(),
        name,
        service_id: t.service_id.clone(),
        slot: t.slot,
        image: t.spec.container.image.clone(),
        node: hostnames.get(&node_id).cloned().unwrap_or_default(),
        node_id,
        desired_state: state_name(t.desired_state),
        current_state: state_name(t.state),
        updated_at: t.meta.updated_at,
        error: if !t.error.is_empty() {
            t.error.clone()
        } else if t.state == TaskState::Pending {
            t.message.clone()
        } else {
            String::new()
        },
        message: t.message.clone(),
        container_id: t.container_id.clone(),
        exit_code: t.exit_code,
        created_at: t.meta.created_at,
        running_at: t.running_at,
        spec_generation: t.spec_generation,
    }
}

fn mirror(service: &mut Service) {
    service.name = service.spec.name.clone();
    service.image = service.spec.task.container.image.clone();
    service.labels = service.spec.labels.clone();
    service.replicas = match service.spec.mode {
        ServiceMode::Replicated { replicas } => replicas,
        _ => 0,
    };
}

/// Creates a service.
pub async fn create(m: &Manager, spec: ServiceSpec) -> Result<ServiceView, Status> {
    validate(&spec)?;
    fits_some_node(&spec, &m.store().view(|tx| tx.list::<Node>()))?;
    let mut service = Service {
        spec,
        spec_generation: 1,
        ..Default::default()
    };
    mirror(&mut service);
    let name = service.name.clone();
    let created = m.store().create(service).await.map_err(|e| match e {
        StoreError::Refused(Refusal::NameInUse { .. }) => {
            Status::already_exists(format!("a service named {name} already exists"))
        }
        e => store_status(e),
    })?;
    Ok(view(&created, &[], &[]))
}

/// Updates a service: a new spec, `force` (same spec, new tasks) or `rollback`.
pub async fn update(
    m: &Manager,
    reference: &str,
    spec: Option<ServiceSpec>,
    force: bool,
    rollback: bool,
    version: u64,
) -> Result<ServiceView, Status> {
    if let Some(s) = &spec {
        validate(s)?;
        fits_some_node(s, &m.store().view(|tx| tx.list::<Node>()))?;
    }
    for _ in 0..20 {
        let mut service = m
            .store()
            .read_linearizable(|tx| resolve(tx, reference))
            .await
            .map_err(store_status)??;
        if version != 0 && service.meta.version != version {
            return Err(Status::aborted(format!(
                "service {} changed since it was read (version {} now, {version} read); read it again",
                service.name, service.meta.version
            )));
        }
        let old = service.spec.clone();
        let new_spec = if rollback {
            service.previous_spec.clone().ok_or_else(|| {
                Status::failed_precondition(format!(
                    "service {} has no previous spec to roll back to",
                    service.name
                ))
            })?
        } else {
            spec.clone().unwrap_or_else(|| old.clone())
        };
        if new_spec.name != old.name {
            return Err(Status::invalid_argument("a service cannot be renamed"));
        }
        // Replica count alone changes no task: same generation (a scale).
        let mut scaled_only = old.clone();
        scaled_only.mode = new_spec.mode.clone();
        let only_scale = scaled_only == new_spec && !force && !rollback;
        if new_spec != old || force {
            if !only_scale {
                service.previous_spec = Some(old);
                service.spec_generation += 1;
            }
            service.spec = new_spec;
            mirror(&mut service);
        }
        match m.store().put(service).await {
            Ok(s) => {
                let (tasks, nodes) = m.store().view(|tx| (tx.list::<Task>(), tx.list::<Node>()));
                return Ok(view(&s, &tasks, &nodes));
            }
            Err(StoreError::Refused(Refusal::Conflict { .. })) if version == 0 => continue,
            Err(e) => return Err(store_status(e)),
        }
    }
    Err(Status::aborted("the service kept changing; try again"))
}

/// Removes a service: its tasks are shut down by the orchestrator.
pub async fn remove(m: &Manager, reference: &str) -> Result<(), Status> {
    for _ in 0..20 {
        let service = m
            .store()
            .read_linearizable(|tx| resolve(tx, reference))
            .await
            .map_err(store_status)??;
        match m
            .store()
            .update(vec![Action::Delete {
                kind: Kind::Service,
                id: service.meta.id.clone(),
                version: Some(service.meta.version),
            }])
            .await
        {
            Ok(_) => return Ok(()),
            Err(StoreError::Refused(Refusal::Conflict { .. })) => continue,
            Err(StoreError::Refused(Refusal::NotFound { .. })) => return Ok(()),
            Err(e) => return Err(store_status(e)),
        }
    }
    Err(Status::aborted("the service kept changing; try again"))
}

/// Every task of a service and/or node, newest first.
pub fn tasks(tx: &ReadTx<'_>, service: &str, node: &str) -> Result<Vec<TaskView>, Status> {
    let nodes = tx.list::<Node>();
    let hostnames: HashMap<String, String> = nodes
        .iter()
        .map(|n| (n.meta.id.clone(), n.hostname.clone()))
        .collect();
    let service_id = if service.is_empty() {
        None
    } else {
        Some(resolve(tx, service)?.meta.id)
    };
    let node_id = if node.is_empty() {
        None
    } else {
        let found: Vec<&Node> = nodes
            .iter()
            .filter(|n| n.meta.id == node || n.hostname == node || n.meta.id.starts_with(node))
            .collect();
        match found.as_slice() {
            [one] => Some(one.meta.id.clone()),
            [] => return Err(Status::not_found(format!("node {node} not found"))),
            _ => {
                return Err(Status::invalid_argument(format!(
                    "node {node} is ambiguous"
                )))
            }
        }
    };
    let mut list: Vec<Task> = tx.find::<Task>(|t| {
        service_id.as_ref().is_none_or(|s| &t.service_id == s)
            && node_id
                .as_ref()
                .is_none_or(|n| t.node_id.as_ref() == Some(n))
    });
    list.sort_by(|a, b| {
        a.service_name
            .cmp(&b.service_name)
            .then(a.slot.cmp(&b.slot))
            .then(b.meta.created_at.cmp(&a.meta.created_at))
    });
    Ok(list.iter().map(|t| task_view(t, &hostnames)).collect())
}

/// Turns a stored object list into views (for `service ls`).
pub fn list(tx: &ReadTx<'_>) -> Vec<ServiceView> {
    let (services, tasks, nodes) = (tx.list::<Service>(), tx.list::<Task>(), tx.list::<Node>());
    let mut views: Vec<ServiceView> = services.iter().map(|s| view(s, &tasks, &nodes)).collect();
    views.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
    views
}

//! How a task becomes a container: its name, the labels that tie it back to
//! its task, and the engine's create request made from the task's spec. Pure
//! functions; the engine calls happen in [`super::run`].

use std::collections::BTreeMap;

use agent_common::engine::{ContainerConfig, CreateContainer, HostConfig};
use agent_common::objects::Task;

/// Label naming the service a task container belongs to (its ID).
pub const LABEL_SERVICE_ID: &str = "com.flotilla.service.id";
/// Label naming the service a task container belongs to (its name).
pub const LABEL_SERVICE_NAME: &str = "com.flotilla.service.name";
/// Label naming the task a container runs: the agent's key to its containers.
pub const LABEL_TASK_ID: &str = "com.flotilla.task.id";
/// Label naming the task's slot (0 for global services).
pub const LABEL_TASK_SLOT: &str = "com.flotilla.task.slot";
/// Label naming the node the task was assigned to.
pub const LABEL_NODE_ID: &str = "com.flotilla.node.id";

/// Docker's default stop grace period.
pub const DEFAULT_GRACE_MS: u64 = 10_000;

/// The container name of a task: `<service>.<slot>.<task id>`, or
/// `<service>.<node id>.<task id>` for a global service's task (slot 0).
pub fn container_name(task: &Task, node_id: &str) -> String {
    let service = if task.service_name.is_empty() {
        "task"
    } else {
        task.service_name.as_str()
    };
    if task.slot == 0 {
        format!("{service}.{node_id}.{}", task.meta.id)
    } else {
        format!("{service}.{}.{}", task.slot, task.meta.id)
    }
}

/// The stop grace period of a task, in whole seconds rounded up (the
/// engine's unit).
pub fn grace_secs(task: &Task) -> i64 {
    let ms = match task.spec.container.stop_grace_period_ms {
        0 => DEFAULT_GRACE_MS,
        ms => ms,
    };
    ms.div_ceil(1000) as i64
}

/// Converts one `--mount` spec (`type=volume,source=data,target=/data`,
/// `type=bind,src=/host,dst=/ctr,readonly`) to the engine's `-v` form, by
/// the rules the control API checked it with ([`agent_common::validate::mount`]).
pub fn mount_to_bind(spec: &str) -> Result<String, String> {
    agent_common::validate::mount(spec)
        .map(|m| m.to_bind())
        .map_err(|e| e.to_string())
}

/// The engine's create request for `task` on node `node_id`: the spec's
/// image, command (`command` replaces ENTRYPOINT, `args` replaces CMD, as
/// Docker's service create does), environment, hostname, labels (the spec's
/// plus the agent's own), limits, mounts, the default bridge, no restart
/// policy (the orchestrator replaces tasks), and the grace period as the
/// container's stop timeout.
pub fn create_request(task: &Task, node_id: &str) -> Result<CreateContainer, String> {
    let c = &task.spec.container;
    if c.image.trim().is_empty() {
        return Err("the task's spec names no image".into());
    }
    let mut labels: BTreeMap<String, String> = c.labels.clone();
    labels.insert(LABEL_SERVICE_ID.into(), task.service_id.clone());
    labels.insert(LABEL_SERVICE_NAME.into(), task.service_name.clone());
    labels.insert(LABEL_TASK_ID.into(), task.meta.id.clone());
    labels.insert(LABEL_TASK_SLOT.into(), task.slot.to_string());
    labels.insert(LABEL_NODE_ID.into(), node_id.to_string());
    let binds = c
        .mounts
        .iter()
        .map(|m| mount_to_bind(m))
        .collect::<Result<Vec<_>, _>>()?;
    let limits = task.spec.resources.limits;
    Ok(CreateContainer {
        name: Some(container_name(task, node_id)),
        config: ContainerConfig {
            hostname: c.hostname.clone(),
            image: c.image.clone(),
            env: c.env.clone(),
            entrypoint: (!c.command.is_empty()).then(|| c.command.clone()),
            cmd: (!c.args.is_empty()).then(|| c.args.clone()),
            labels,
            stop_timeout: Some(grace_secs(task)),
            ..Default::default()
        },
        host_config: HostConfig {
            binds,
            network_mode: "bridge".into(),
            memory: i64::try_from(limits.memory_bytes).unwrap_or(i64::MAX),
            nano_cpus: i64::try_from(limits.nano_cpus).unwrap_or(i64::MAX),
            ..Default::default()
        },
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::objects::Meta;
    use agent_common::spec::{ContainerSpec, ResourceAmounts, Resources, TaskSpec};

    fn task(slot: u64) -> Task {
        Task {
            meta: Meta {
                id: "t1".into(),
                ..Default::default()
            },
            service_id: "s1".into(),
            service_name: "web".into(),
            slot,
            spec: TaskSpec {
                container: ContainerSpec {
                    image: "busybox".into(),
                    args: vec!["sleep".into(), "100".into()],
                    env: vec!["A=1".into()],
                    mounts: vec!["type=volume,source=data,target=/data".into()],
                    stop_grace_period_ms: 2500,
                    ..Default::default()
                },
                resources: Resources {
                    limits: ResourceAmounts {
                        nano_cpus: 500_000_000,
                        memory_bytes: 64 << 20,
                    },
                    ..Default::default()
                },
                ..Default::default()
            },
            ..Default::default()
        }
    }

    #[test]
    fn names_follow_service_slot_task_or_node_for_global() {
        assert_eq!(container_name(&task(3), "n1"), "web.3.t1");
        assert_eq!(container_name(&task(0), "n1"), "web.n1.t1");
    }

    #[test]
    fn create_request_carries_spec_labels_and_limits() {
        let req = create_request(&task(2), "n1").unwrap();
        assert_eq!(req.name.as_deref(), Some("web.2.t1"));
        assert_eq!(req.config.image, "busybox");
        assert_eq!(req.config.cmd, Some(vec!["sleep".into(), "100".into()]));
        assert_eq!(req.config.entrypoint, None);
        assert_eq!(req.config.env, vec!["A=1".to_string()]);
        assert_eq!(req.config.stop_timeout, Some(3));
        let l = &req.config.labels;
        assert_eq!(l[LABEL_TASK_ID], "t1");
        assert_eq!(l[LABEL_SERVICE_ID], "s1");
        assert_eq!(l[LABEL_SERVICE_NAME], "web");
        assert_eq!(l[LABEL_TASK_SLOT], "2");
        assert_eq!(l[LABEL_NODE_ID], "n1");
        assert_eq!(req.host_config.memory, 64 << 20);
        assert_eq!(req.host_config.nano_cpus, 500_000_000);
        assert_eq!(req.host_config.binds, vec!["data:/data".to_string()]);
        assert_eq!(req.host_config.network_mode, "bridge");
        assert!(req.host_config.restart_policy.name.is_empty());
    }

    #[test]
    fn default_grace_is_ten_seconds() {
        let mut t = task(1);
        t.spec.container.stop_grace_period_ms = 0;
        assert_eq!(grace_secs(&t), 10);
    }

    #[test]
    fn mounts_map_to_engine_binds() {
        assert_eq!(
            mount_to_bind("type=bind,src=/srv,dst=/www,readonly").unwrap(),
            "/srv:/www:ro"
        );
        assert_eq!(
            mount_to_bind("type=volume,target=/cache").unwrap(),
            "/cache"
        );
        assert_eq!(
            mount_to_bind("source=v1,target=/v,ro=false").unwrap(),
            "v1:/v"
        );
        for bad in [
            "type=tmpfs,target=/t",
            "type=bind,source=rel,target=/x",
            "type=volume,source=v,target=rel",
            "type=volume,source=v1,target=/v,volume-driver=x",
            // One character is not a volume name the engine takes.
            "type=volume,source=v,target=/v",
        ] {
            assert!(mount_to_bind(bad).is_err(), "{bad}");
        }
    }
}

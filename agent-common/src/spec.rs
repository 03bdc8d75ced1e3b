//! What a user declares: [`ServiceSpec`] (a service's mode, its tasks'
//! [`TaskSpec`] and how updates and rollbacks roll) and the pieces a task
//! spec is made of ([`ContainerSpec`], [`Resources`], [`RestartPolicy`],
//! [`Placement`]).
//!
//! These are plain serde data: they do no I/O and take no decisions. The
//! control API validates them before they are stored (constraint expressions
//! with `manager::scheduler::parse_constraints`); the orchestrator, scheduler
//! and worker agent read them. The stored `Service` and `Task` objects embed
//! them.
//!
//! **Durations are whole milliseconds in a `u64`**, and every such field is
//! named with an `_ms` suffix (as `Cluster::heartbeat_period_ms`), so a stored
//! spec reads unambiguously as JSON. The CLI parses humantime strings
//! (`--restart-delay 5s`) and converts. `0` means "not set / Docker's
//! default" where the field's doc says so.
//!
//! Every field is `#[serde(default)]` so that specs written by older versions
//! keep decoding as fields are added.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A declared service: what each task runs, how many, and how changes roll out.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ServiceSpec {
    /// Unique service name.
    pub name: String,
    /// Operator labels on the service.
    pub labels: BTreeMap<String, String>,
    /// Replicated, global, or a job of either kind.
    pub mode: ServiceMode,
    /// The template every task of the service is made from.
    pub task: TaskSpec,
    /// How a change of the task template rolls out.
    pub update: UpdateConfig,
    /// How a rollback to the previous template rolls out.
    pub rollback: UpdateConfig,
}

/// How many tasks a service runs, and for how long.
///
/// JSON: `{"replicated":{"replicas":3}}`, `"global"`,
/// `{"replicated-job":{"max_concurrent":2,"total_completions":10}}`, `"global-job"`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// A fixed number of long-running tasks, placed by the scheduler.
    Replicated {
        /// Desired number of running tasks.
        #[serde(default)]
        replicas: u64,
    },
    /// One long-running task on every eligible node.
    Global,
    /// Tasks that run to completion, a bounded number at a time.
    ReplicatedJob {
        /// How many tasks may run at once (0: as many as `total_completions`).
        #[serde(default)]
        max_concurrent: u64,
        /// How many successful completions finish the job (0: one).
        #[serde(default)]
        total_completions: u64,
    },
    /// One run-to-completion task on every eligible node.
    GlobalJob,
}

impl Default for ServiceMode {
    /// One replica, as `docker service create` without `--replicas`.
    fn default() -> Self {
        ServiceMode::Replicated { replicas: 1 }
    }
}

impl ServiceMode {
    /// The name used by `service ls` and `--mode`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
            ServiceMode::ReplicatedJob { .. } => "replicated-job",
            ServiceMode::GlobalJob => "global-job",
        }
    }
}

/// The template of one task: the container it runs and where and how.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct TaskSpec {
    /// The container to run.
    pub container: ContainerSpec,
    /// Resources reserved on the node (the scheduler's filter) and limits
    /// enforced by the runtime.
    pub resources: Resources,
    /// What happens when the task exits.
    pub restart: RestartPolicy,
    /// Where the task may and should run.
    pub placement: Placement,
}

/// The container a task runs.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct ContainerSpec {
    /// Image reference (`busybox:latest`).
    pub image: String,
    /// Replaces the image's entrypoint when not empty.
    pub command: Vec<String>,
    /// Replaces the image's default arguments when not empty.
    pub args: Vec<String>,
    /// Environment, `KEY=VALUE` each.
    pub env: Vec<String>,
    /// Labels on the container (the agent adds service, task and slot labels).
    pub labels: BTreeMap<String, String>,
    /// Mounts in the CLI's `--mount` syntax (`type=volume,source=data,target=/data`).
    pub mounts: Vec<String>,
    /// The container's hostname (empty: the task's default).
    pub hostname: String,
    /// How long to wait after the stop signal before killing, in
    /// milliseconds (0: Docker's default, 10 s).
    pub stop_grace_period_ms: u64,
    /// Health check replacing the image's, if any.
    pub healthcheck: Option<HealthCheck>,
}

/// A container health check (`--health-*`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct HealthCheck {
    /// The test, Docker style: `["CMD", "arg", …]`, `["CMD-SHELL", "cmd"]`
    /// or `["NONE"]` to disable the image's check.
    pub cmd: Vec<String>,
    /// Time between checks, in milliseconds (0: 30 s).
    pub interval_ms: u64,
    /// Time one check may take, in milliseconds (0: 30 s).
    pub timeout_ms: u64,
    /// Consecutive failures that make the container unhealthy (0: 3).
    pub retries: u32,
    /// Time after start during which failures do not count, in milliseconds.
    pub start_period_ms: u64,
}

/// Resource reservations and limits of one task.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Resources {
    /// Held for the task on its node: the scheduler only places a task where
    /// the node's unreserved resources cover these.
    pub reservations: ResourceAmounts,
    /// Enforced by the runtime (cgroups); 0 means no limit.
    pub limits: ResourceAmounts,
}

/// An amount of CPU and memory.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct ResourceAmounts {
    /// CPU in billionths of a CPU (`--reserve-cpu 0.5` is 500 000 000).
    pub nano_cpus: u64,
    /// Memory in bytes.
    pub memory_bytes: u64,
}

impl ResourceAmounts {
    /// Nothing reserved or limited.
    pub fn is_zero(&self) -> bool {
        self.nano_cpus == 0 && self.memory_bytes == 0
    }
}

/// When a finished task is replaced (`--restart-*`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct RestartPolicy {
    /// Which exits lead to a replacement.
    pub condition: RestartCondition,
    /// Wait between the exit and the replacement, in milliseconds (0: 5 s, Docker's default).
    pub delay_ms: u64,
    /// Replacements allowed within `window_ms` (0: unlimited).
    pub max_attempts: u64,
    /// The window `max_attempts` counts over, in milliseconds (0: the task's whole history).
    pub window_ms: u64,
}

/// Which exits are restarted.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// Never replace.
    None,
    /// Replace after a non-zero exit.
    OnFailure,
    /// Replace after any exit (Docker's default).
    #[default]
    Any,
}

/// Where a task may run (constraints, platforms, a per-node cap) and where it
/// should preferably run (spread preferences).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(default)]
pub struct Placement {
    /// Constraint expressions, all of which a node must satisfy:
    /// `KEY==VALUE` or `KEY!=VALUE` with KEY one of `node.id`, `node.hostname`,
    /// `node.role`, `node.platform.os`, `node.platform.arch`,
    /// `node.labels.<name>`, `engine.labels.<name>`.
    pub constraints: Vec<String>,
    /// Spread preferences, outermost first: tasks are spread evenly over the
    /// values of the first, then within each of those over the second, and so on.
    pub preferences: Vec<PlacementPreference>,
    /// At most this many tasks of the service on one node (0: no limit).
    pub max_replicas_per_node: u64,
    /// Platforms the image runs on; a node must match one (empty: any).
    pub platforms: Vec<Platform>,
}

/// One placement preference (`--placement-pref spread=node.labels.zone`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct PlacementPreference {
    /// The label whose values tasks are spread over: `node.labels.<name>` or
    /// `engine.labels.<name>`.
    pub spread: String,
}

/// An operating system and CPU architecture, as nodes report them
/// (`linux`, `x86_64`) and images declare them (`linux`, `amd64`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, Hash)]
#[serde(default)]
pub struct Platform {
    /// Operating system (`linux`); empty matches any.
    pub os: String,
    /// Architecture (`x86_64`/`amd64`, `aarch64`/`arm64`); empty matches any.
    pub architecture: String,
}

/// How a rolling update (or rollback) proceeds (`--update-*`, `--rollback-*`).
///
/// `Eq` holds because the control API refuses a `max_failure_ratio` outside
/// `0.0..=1.0` (so never NaN) with [`UpdateConfig::validate`] before a spec is stored.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(default)]
pub struct UpdateConfig {
    /// Tasks updated at once (0: all at once). Docker's default is 1.
    pub parallelism: u64,
    /// Wait between batches, in milliseconds.
    pub delay_ms: u64,
    /// What to do when too many updated tasks fail.
    pub failure_action: FailureAction,
    /// How long an updated task is watched for failure, in milliseconds
    /// (Docker's default: 5 s).
    pub monitor_ms: u64,
    /// The fraction of updated tasks (0.0 to 1.0) allowed to fail before
    /// `failure_action` is taken.
    pub max_failure_ratio: f64,
    /// Stop the old task first, or start the new one first.
    pub order: UpdateOrder,
}

impl Eq for UpdateConfig {}

/// A refused spec value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SpecError {
    /// `max_failure_ratio` outside `0.0..=1.0`.
    #[error("invalid max failure ratio {0}: it is a fraction between 0 and 1 (0.25 allows a quarter of the updated tasks to fail)")]
    MaxFailureRatio(f64),
}

impl UpdateConfig {
    /// Refuses values the orchestrator cannot act on.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !(0.0..=1.0).contains(&self.max_failure_ratio) {
            return Err(SpecError::MaxFailureRatio(self.max_failure_ratio));
        }
        Ok(())
    }
}

impl Default for UpdateConfig {
    /// Docker's defaults: one task at a time, no delay, pause on failure,
    /// 5 s monitor, no failures tolerated, stop-first.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

/// What a rolling update does when tasks fail.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Stop updating; the operator decides.
    #[default]
    Pause,
    /// Keep updating.
    Continue,
    /// Roll back to the previous spec.
    Rollback,
}

/// The order of stopping the old task and starting its replacement.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (Docker's default).
    #[default]
    StopFirst,
    /// Start the new task, then stop the old one (briefly one more runs).
    StartFirst,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_json_decodes_to_docker_defaults() {
        let spec: ServiceSpec = serde_json::from_str("{}").unwrap();
        assert_eq!(spec.mode, ServiceMode::Replicated { replicas: 1 });
        assert_eq!(spec.update, UpdateConfig::default());
        assert_eq!(spec.update.parallelism, 1);
        assert_eq!(spec.task.restart.condition, RestartCondition::Any);
        assert_eq!(spec.update.order, UpdateOrder::StopFirst);
    }

    #[test]
    fn spec_round_trips_through_json_with_kebab_case_enums() {
        let spec = ServiceSpec {
            name: "web".into(),
            mode: ServiceMode::ReplicatedJob {
                max_concurrent: 2,
                total_completions: 10,
            },
            task: TaskSpec {
                container: ContainerSpec {
                    image: "busybox".into(),
                    healthcheck: Some(HealthCheck {
                        cmd: vec!["CMD".into(), "true".into()],
                        interval_ms: 1_000,
                        ..Default::default()
                    }),
                    ..Default::default()
                },
                restart: RestartPolicy {
                    condition: RestartCondition::OnFailure,
                    ..Default::default()
                },
                placement: Placement {
                    constraints: vec!["node.role==manager".into()],
                    preferences: vec![PlacementPreference {
                        spread: "node.labels.zone".into(),
                    }],
                    max_replicas_per_node: 2,
                    ..Default::default()
                },
                ..Default::default()
            },
            update: UpdateConfig {
                failure_action: FailureAction::Rollback,
                order: UpdateOrder::StartFirst,
                max_failure_ratio: 0.25,
                ..Default::default()
            },
            ..Default::default()
        };
        let json = serde_json::to_string(&spec).unwrap();
        for needle in [
            "\"replicated-job\"",
            "\"on-failure\"",
            "\"rollback\"",
            "\"start-first\"",
        ] {
            assert!(json.contains(needle), "{needle} missing in {json}");
        }
        let back: ServiceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
        let global: ServiceMode = serde_json::from_str("\"global\"").unwrap();
        assert_eq!(global, ServiceMode::Global);
    }

    #[test]
    fn max_failure_ratio_must_be_a_fraction() {
        assert!(UpdateConfig::default().validate().is_ok());
        for bad in [-0.1, 1.5, f64::NAN] {
            let u = UpdateConfig {
                max_failure_ratio: bad,
                ..Default::default()
            };
            let msg = u.validate().unwrap_err().to_string();
            assert!(msg.contains("between 0 and 1"), "{msg}");
        }
    }
}

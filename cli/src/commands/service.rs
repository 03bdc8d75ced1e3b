//! `flotilla service …`: declared services, answered by a manager.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Ctx;
use crate::client::RpcResult;
use crate::format::{self, OutputFormat};
use agent_common::cluster::{ServiceView, TaskView};
use agent_common::control_proto::{
    CreateServiceRequest, ListTasksRequest, ReadRequest, ServiceRef, UpdateServiceRequest,
};
use agent_common::spec::{
    FailureAction, HealthCheck, PlacementPreference, RestartCondition, ServiceMode, ServiceSpec,
    UpdateOrder,
};
use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use serde_json::Value;

/// `flotilla service …`.
#[derive(Subcommand, Debug)]
pub enum ServiceGroup {
    /// Create a service (and wait until it converged, unless --detach).
    Create(Box<CreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls(LsArgs),
    /// List the tasks of services (history included).
    Ps(PsArgs),
    /// Display detailed information on services.
    Inspect(InspectArgs),
    /// Set the replica count of services: `service scale web=5 api=2`.
    Scale(ScaleArgs),
    /// Change a service's definition; tasks are replaced.
    Update(Box<UpdateArgs>),
    /// Go back to a service's previous definition.
    Rollback(RollbackArgs),
    /// Remove services (their tasks are stopped).
    #[command(alias = "remove")]
    Rm(RmArgs),
    /// Show the output of a service's tasks, gathered from the nodes running them.
    Logs(LogsArgs),
}

/// Flags of `service logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Only the last N lines of each task ("all" for everything).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    /// Print the raw lines, without the task and node prefix.
    #[arg(long = "no-task-ids")]
    pub raw: bool,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Keep printing new lines as the tasks write them (and the lines of
    /// tasks that start later) until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// The service.
    pub service: String,
}

/// Prints log lines, stdout ones on stdout and stderr ones on stderr.
/// Returns false when the output was closed.
fn print_log_lines(lines: &[agent_common::cluster::ServiceLogLine], a: &LogsArgs) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    for l in lines {
        let mut text = String::new();
        if a.timestamps && l.time_nanos != i64::MAX {
            text.push_str(&format::rfc3339_nanos(l.time_nanos));
            text.push(' ');
        }
        if !a.raw {
            let who = if l.task.is_empty() {
                format!("@{}", l.node)
            } else {
                format!("{}@{}", l.task, l.node)
            };
            text.push_str(&format!("{who:<40} | "));
        }
        text.push_str(&l.text);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        let w: &mut dyn Write = if l.stderr { &mut err } else { &mut out };
        if w.write_all(text.as_bytes())
            .and_then(|_| w.flush())
            .is_err()
        {
            return false;
        }
    }
    true
}

/// Service modes.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ModeArg {
    /// A fixed number of replicas.
    Replicated,
    /// One task on every eligible node.
    Global,
    /// Replicas that run to completion.
    ReplicatedJob,
    /// One run-to-completion task per node.
    GlobalJob,
}

/// Restart conditions.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum ConditionArg {
    /// Never replace a stopped task.
    None,
    /// Replace after a non-zero exit.
    OnFailure,
    /// Replace after any exit.
    Any,
}

/// Update failure actions.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum FailureArg {
    /// Pause the update.
    Pause,
    /// Go on.
    Continue,
    /// Go back to the previous definition.
    Rollback,
}

/// Update orders.
#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum OrderArg {
    /// Stop the old task, then start the new one.
    StopFirst,
    /// Start the new task, then stop the old one.
    StartFirst,
}

impl From<FailureArg> for FailureAction {
    fn from(a: FailureArg) -> Self {
        match a {
            FailureArg::Pause => FailureAction::Pause,
            FailureArg::Continue => FailureAction::Continue,
            FailureArg::Rollback => FailureAction::Rollback,
        }
    }
}

impl From<OrderArg> for UpdateOrder {
    fn from(o: OrderArg) -> Self {
        match o {
            OrderArg::StopFirst => UpdateOrder::StopFirst,
            OrderArg::StartFirst => UpdateOrder::StartFirst,
        }
    }
}

/// Flags that define or change a service.
#[derive(Args, Debug, Clone, Default)]
pub struct SpecFlags {
    /// Set environment variables (KEY=VALUE).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Service labels (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub label: Vec<String>,
    /// Container labels (KEY=VALUE).
    #[arg(long = "container-label", value_name = "KEY=VALUE")]
    pub container_label: Vec<String>,
    /// Mounts: type=volume|bind,source=X,target=/Y[,readonly].
    #[arg(long = "mount", value_name = "MOUNT")]
    pub mount: Vec<String>,
    /// Placement constraints: node.hostname==X, node.labels.zone!=b, node.role==worker, ...
    #[arg(long = "constraint", value_name = "EXPR")]
    pub constraint: Vec<String>,
    /// Placement preference: spread=node.labels.KEY.
    #[arg(long = "placement-pref", value_name = "spread=node.labels.KEY")]
    pub placement_pref: Vec<String>,
    /// At most this many tasks of the service per node (0: no limit).
    #[arg(long = "replicas-max-per-node", value_name = "N", value_parser = crate::parse::count, allow_negative_numbers = true)]
    pub replicas_max_per_node: Option<u64>,
    /// CPUs reserved per task (e.g. 0.5).
    #[arg(long = "reserve-cpu", value_name = "DECIMAL", value_parser = crate::parse::cpus, allow_negative_numbers = true)]
    pub reserve_cpu: Option<u64>,
    /// Memory reserved per task (e.g. 256m).
    #[arg(
        long = "reserve-memory",
        value_name = "SIZE",
        allow_hyphen_values = true
    )]
    pub reserve_memory: Option<String>,
    /// CPU limit per task.
    #[arg(long = "limit-cpu", value_name = "DECIMAL", value_parser = crate::parse::cpus, allow_negative_numbers = true)]
    pub limit_cpu: Option<u64>,
    /// Memory limit per task.
    #[arg(long = "limit-memory", value_name = "SIZE", allow_hyphen_values = true)]
    pub limit_memory: Option<String>,
    /// When to replace a stopped task.
    #[arg(long = "restart-condition", value_enum)]
    pub restart_condition: Option<ConditionArg>,
    /// Delay before a replacement starts (e.g. 5s).
    #[arg(long = "restart-delay", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub restart_delay: Option<Duration>,
    /// Replacements per slot before giving up (0: no limit).
    #[arg(long = "restart-max-attempts", value_parser = crate::parse::count, allow_negative_numbers = true)]
    pub restart_max_attempts: Option<u64>,
    /// Window over which restarts are counted.
    #[arg(long = "restart-window", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub restart_window: Option<Duration>,
    /// Tasks updated at once.
    #[arg(long = "update-parallelism", value_parser = crate::parse::count, allow_negative_numbers = true)]
    pub update_parallelism: Option<u64>,
    /// Delay between update batches.
    #[arg(long = "update-delay", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub update_delay: Option<Duration>,
    /// What to do when an update fails.
    #[arg(long = "update-failure-action", value_enum)]
    pub update_failure_action: Option<FailureArg>,
    /// How long each updated task is watched for failure.
    #[arg(long = "update-monitor", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub update_monitor: Option<Duration>,
    /// Failure ratio tolerated during an update (0 to 1).
    #[arg(long = "update-max-failure-ratio", value_parser = crate::parse::fraction, allow_negative_numbers = true)]
    pub update_max_failure_ratio: Option<f64>,
    /// Update order.
    #[arg(long = "update-order", value_enum)]
    pub update_order: Option<OrderArg>,
    /// Tasks rolled back at once.
    #[arg(long = "rollback-parallelism", value_parser = crate::parse::count, allow_negative_numbers = true)]
    pub rollback_parallelism: Option<u64>,
    /// Delay between rollback batches.
    #[arg(long = "rollback-delay", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub rollback_delay: Option<Duration>,
    /// What to do when a rollback fails (pause or continue).
    #[arg(long = "rollback-failure-action", value_enum)]
    pub rollback_failure_action: Option<FailureArg>,
    /// How long each rolled-back task is watched for failure.
    #[arg(long = "rollback-monitor", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub rollback_monitor: Option<Duration>,
    /// Failure ratio tolerated during a rollback (0 to 1).
    #[arg(long = "rollback-max-failure-ratio", value_parser = crate::parse::fraction, allow_negative_numbers = true)]
    pub rollback_max_failure_ratio: Option<f64>,
    /// Rollback order.
    #[arg(long = "rollback-order", value_enum)]
    pub rollback_order: Option<OrderArg>,
    /// Command run to check health (shell form).
    #[arg(long = "health-cmd", value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks.
    #[arg(long = "health-interval", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub health_interval: Option<Duration>,
    /// Longest a health check may take.
    #[arg(long = "health-timeout", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub health_timeout: Option<Duration>,
    /// Consecutive failures before a task is unhealthy.
    #[arg(long = "health-retries", value_parser = crate::parse::small_count, allow_negative_numbers = true)]
    pub health_retries: Option<u32>,
    /// Grace period before failures count.
    #[arg(long = "health-start-period", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub health_start_period: Option<Duration>,
    /// Time to wait after SIGTERM before SIGKILL.
    #[arg(long = "stop-grace-period", value_parser = crate::parse::duration, allow_hyphen_values = true)]
    pub stop_grace_period: Option<Duration>,
    /// Container hostname.
    #[arg(long = "hostname")]
    pub hostname: Option<String>,
}

/// Flags of `service create`.
#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Service name (default: a generated one).
    #[arg(long)]
    pub name: Option<String>,
    /// Number of tasks (replicated services).
    #[arg(long, value_parser = crate::parse::count, allow_negative_numbers = true)]
    pub replicas: Option<u64>,
    /// Service mode.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Return at once instead of waiting for the tasks to run.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Only print the service ID.
    #[arg(short, long)]
    pub quiet: bool,
    #[command(flatten)]
    pub spec: SpecFlags,
    /// Image to run.
    pub image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Flags of `service update`.
#[derive(Args, Debug)]
pub struct UpdateArgs {
    /// New image.
    #[arg(long)]
    pub image: Option<String>,
    /// New replica count.
    #[arg(long, value_parser = crate::parse::count, allow_negative_numbers = true)]
    pub replicas: Option<u64>,
    /// Replace the tasks even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Replace the command and arguments.
    #[arg(long = "args", value_name = "COMMAND")]
    pub args: Option<String>,
    /// Return at once instead of waiting for the tasks to run.
    #[arg(short = 'd', long)]
    pub detach: bool,
    #[command(flatten)]
    pub spec: SpecFlags,
    /// The service.
    pub service: String,
}

/// Flags of `service ls`.
#[derive(Args, Debug)]
pub struct LsArgs {
    /// Only display IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table, json or a template.
    #[arg(long)]
    pub format: Option<String>,
}

/// Flags of `service ps`.
#[derive(Args, Debug)]
pub struct PsArgs {
    /// Only display task IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// Output format: table, json or a template.
    #[arg(long)]
    pub format: Option<String>,
    /// Do not truncate errors.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only tasks on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Services.
    #[arg(required = true)]
    pub services: Vec<String>,
}

/// Flags of `service inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Human-readable summary.
    #[arg(long)]
    pub pretty: bool,
    /// Services.
    #[arg(required = true)]
    pub services: Vec<String>,
}

/// Flags of `service scale`.
#[derive(Args, Debug)]
pub struct ScaleArgs {
    /// Return at once.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// SERVICE=REPLICAS pairs.
    #[arg(required = true, value_name = "SERVICE=REPLICAS")]
    pub pairs: Vec<String>,
}

/// Flags of `service rollback`.
#[derive(Args, Debug)]
pub struct RollbackArgs {
    /// Return at once.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// The service.
    pub service: String,
}

/// Flags of `service rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Services.
    #[arg(required = true)]
    pub services: Vec<String>,
}

fn kv(list: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    list.iter()
        .map(|s| {
            let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
            if k.is_empty() {
                bail!("invalid {what} {s:?}: use KEY=VALUE");
            }
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

/// Milliseconds of a duration [`crate::parse::duration`] accepted (so it fits).
fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Applies the flags that were given to `spec`.
fn apply(spec: &mut ServiceSpec, f: &SpecFlags) -> Result<()> {
    let t = &mut spec.task;
    if !f.env.is_empty() {
        t.container.env.extend(f.env.iter().cloned());
    }
    spec.labels.extend(kv(&f.label, "--label")?);
    t.container
        .labels
        .extend(kv(&f.container_label, "--container-label")?);
    t.container.mounts.extend(f.mount.iter().cloned());
    t.placement.constraints.extend(f.constraint.iter().cloned());
    for p in &f.placement_pref {
        let target = p
            .strip_prefix("spread=")
            .ok_or_else(|| anyhow!("invalid --placement-pref {p:?}: use spread=node.labels.KEY"))?;
        t.placement.preferences.push(PlacementPreference {
            spread: target.to_string(),
        });
    }
    if let Some(n) = f.replicas_max_per_node {
        t.placement.max_replicas_per_node = n;
    }
    if let Some(c) = f.reserve_cpu {
        t.resources.reservations.nano_cpus = c;
    }
    if let Some(m) = &f.reserve_memory {
        t.resources.reservations.memory_bytes = crate::parse::memory_size(m)
            .map_err(|e| anyhow!("--reserve-memory: {e}"))?
            .max(0) as u64;
    }
    if let Some(c) = f.limit_cpu {
        t.resources.limits.nano_cpus = c;
    }
    if let Some(m) = &f.limit_memory {
        t.resources.limits.memory_bytes = crate::parse::memory_size(m)
            .map_err(|e| anyhow!("--limit-memory: {e}"))?
            .max(0) as u64;
    }
    if let Some(c) = f.restart_condition {
        t.restart.condition = match c {
            ConditionArg::None => RestartCondition::None,
            ConditionArg::OnFailure => RestartCondition::OnFailure,
            ConditionArg::Any => RestartCondition::Any,
        };
    }
    if let Some(d) = f.restart_delay {
        t.restart.delay_ms = ms(d);
    }
    if let Some(n) = f.restart_max_attempts {
        t.restart.max_attempts = n;
    }
    if let Some(d) = f.restart_window {
        t.restart.window_ms = ms(d);
    }
    let u = &mut spec.update;
    if let Some(n) = f.update_parallelism {
        u.parallelism = n;
    }
    if let Some(d) = f.update_delay {
        u.delay_ms = ms(d);
    }
    if let Some(a) = f.update_failure_action {
        u.failure_action = a.into();
    }
    if let Some(d) = f.update_monitor {
        u.monitor_ms = ms(d);
    }
    if let Some(r) = f.update_max_failure_ratio {
        u.max_failure_ratio = r;
    }
    if let Some(o) = f.update_order {
        u.order = o.into();
    }
    if let Some(n) = f.rollback_parallelism {
        spec.rollback.parallelism = n;
    }
    if let Some(d) = f.rollback_delay {
        spec.rollback.delay_ms = ms(d);
    }
    if let Some(a) = f.rollback_failure_action {
        if matches!(a, FailureArg::Rollback) {
            bail!("--rollback-failure-action rollback makes no sense: use pause or continue");
        }
        spec.rollback.failure_action = a.into();
    }
    if let Some(d) = f.rollback_monitor {
        spec.rollback.monitor_ms = ms(d);
    }
    if let Some(r) = f.rollback_max_failure_ratio {
        spec.rollback.max_failure_ratio = r;
    }
    if let Some(o) = f.rollback_order {
        spec.rollback.order = o.into();
    }
    let t = &mut spec.task;
    if let Some(cmd) = &f.health_cmd {
        let hc = t
            .container
            .healthcheck
            .get_or_insert_with(HealthCheck::default);
        hc.cmd = vec!["CMD-SHELL".into(), cmd.clone()];
    }
    if let Some(hc) = t.container.healthcheck.as_mut() {
        if let Some(d) = f.health_interval {
            hc.interval_ms = ms(d);
        }
        if let Some(d) = f.health_timeout {
            hc.timeout_ms = ms(d);
        }
        if let Some(n) = f.health_retries {
            hc.retries = n;
        }
        if let Some(d) = f.health_start_period {
            hc.start_period_ms = ms(d);
        }
    } else if f.health_interval.is_some() || f.health_retries.is_some() {
        bail!("--health-interval and --health-retries need --health-cmd");
    }
    if let Some(d) = f.stop_grace_period {
        t.container.stop_grace_period_ms = ms(d);
    }
    if let Some(h) = &f.hostname {
        t.container.hostname = h.clone();
    }
    Ok(())
}

fn generated_name() -> String {
    const WORDS: [&str; 8] = [
        "brave", "calm", "eager", "fancy", "gentle", "happy", "jolly", "keen",
    ];
    const NOUNS: [&str; 8] = [
        "otter", "heron", "lynx", "puffin", "gecko", "bison", "koala", "wren",
    ];
    let n = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as usize)
        .unwrap_or(0);
    format!("{}_{}", WORDS[n % 8], NOUNS[(n / 8) % 8])
}

fn decode<T: serde::de::DeserializeOwned>(json: &str) -> Result<T> {
    serde_json::from_str(json).context("the manager sent an unreadable answer")
}

async fn inspect(ctx: &mut Ctx, service: &str) -> Result<ServiceView> {
    let reply = ctx
        .control()
        .await?
        .inspect_service(ServiceRef {
            service: service.into(),
            local: false,
        })
        .await
        .rpc()?;
    decode(&reply.into_inner().json)
}

async fn tasks(ctx: &mut Ctx, service: &str, node: &str) -> Result<Vec<TaskView>> {
    let reply = ctx
        .control()
        .await?
        .list_tasks(ListTasksRequest {
            service: service.into(),
            node: node.into(),
            local: false,
        })
        .await
        .rpc()?;
    decode(&reply.into_inner().json)
}

/// Waits until the service's current tasks all run (or a task of the
/// current generation failed too often), with a progress bar.
async fn converge(ctx: &mut Ctx, service: &str, timeout: Duration) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} tasks running")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("overall progress:");
    let start = Instant::now();
    let mut last_error = String::new();
    loop {
        let view = inspect(ctx, service).await?;
        bar.set_length(view.desired);
        bar.set_position(view.running.min(view.desired));
        let list = tasks(ctx, service, "").await?;
        let current: Vec<&TaskView> = list
            .iter()
            .filter(|t| t.desired_state == "running")
            .collect();
        let failures: Vec<&TaskView> = list
            .iter()
            .filter(|t| {
                (t.current_state == "failed" || t.current_state == "rejected")
                    && !t.error.is_empty()
            })
            .collect();
        if let Some(f) = failures.first() {
            last_error = f.error.clone();
        }
        if view.running == view.desired && current.iter().all(|t| t.current_state == "running") {
            bar.finish();
            println!("verify: Service {} converged", view.spec.name);
            return Ok(());
        }
        if let Some(p) = current
            .iter()
            .find(|t| t.current_state == "pending" && !t.error.is_empty())
        {
            last_error = p.error.clone();
        }
        if start.elapsed() > timeout {
            bar.abandon();
            bail!(
                "service {} did not converge within {}s{}; see `flotilla service ps {}`",
                view.spec.name,
                timeout.as_secs(),
                if last_error.is_empty() {
                    String::new()
                } else {
                    format!(" (last error: {last_error})")
                },
                view.spec.name
            );
        }
        if failures.len() >= 3 * view.desired.max(1) as usize {
            bar.abandon();
            bail!(
                "service {} keeps failing: {last_error}; see `flotilla service ps {}`",
                view.spec.name,
                view.spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(120);

/// Runs a `service` subcommand.
pub async fn run(ctx: &mut Ctx, g: ServiceGroup) -> Result<i32> {
    match g {
        ServiceGroup::Create(a) => {
            let mode = match (a.mode, a.replicas) {
                (Some(ModeArg::Global), Some(_)) | (Some(ModeArg::GlobalJob), Some(_)) => {
                    bail!("--replicas can only be used with replicated services")
                }
                (None | Some(ModeArg::Replicated), r) => ServiceMode::Replicated {
                    replicas: r.unwrap_or(1),
                },
                (Some(ModeArg::Global), None) => ServiceMode::Global,
                (Some(ModeArg::ReplicatedJob), r) => ServiceMode::ReplicatedJob {
                    max_concurrent: r.unwrap_or(1),
                    total_completions: r.unwrap_or(1),
                },
                (Some(ModeArg::GlobalJob), None) => ServiceMode::GlobalJob,
            };
            let mut spec = ServiceSpec {
                name: a.name.clone().unwrap_or_else(generated_name),
                mode,
                ..Default::default()
            };
            spec.task.container.image = a.image.clone();
            spec.task.container.command = a.command.clone();
            apply(&mut spec, &a.spec)?;
            let reply = ctx
                .control()
                .await?
                .create_service(CreateServiceRequest {
                    spec_json: serde_json::to_string(&spec)?,
                })
                .await
                .rpc()?;
            let view: ServiceView = decode(&reply.into_inner().json)?;
            println!("{}", view.id);
            if !a.detach && !a.quiet {
                converge(ctx, &view.id, CONVERGE_TIMEOUT).await?;
            }
            Ok(0)
        }
        ServiceGroup::Ls(a) => {
            let reply = ctx
                .control()
                .await?
                .list_services(ReadRequest { local: false })
                .await
                .rpc()?;
            let views: Vec<ServiceView> = decode(&reply.into_inner().json)?;
            if a.quiet {
                for v in &views {
                    println!("{}", v.id);
                }
                return Ok(0);
            }
            let rows: Vec<Value> = views
                .iter()
                .map(|v| serde_json::to_value(v).unwrap_or(Value::Null))
                .collect();
            let f = OutputFormat::parse(a.format.as_deref());
            if matches!(f, OutputFormat::Json) {
                for r in &rows {
                    println!("{r}");
                }
                return Ok(0);
            }
            let cells = |v: &Value| -> Vec<String> {
                let s: ServiceView = serde_json::from_value(v.clone()).unwrap_or_default();
                vec![
                    format::short_id(&s.id),
                    s.spec.name.clone(),
                    s.mode.clone(),
                    format!("{}/{}", s.running, s.desired),
                    s.spec.task.container.image.clone(),
                ]
            };
            print!(
                "{}",
                format::render_rows(
                    &f,
                    &rows,
                    &["ID", "NAME", "MODE", "REPLICAS", "IMAGE"],
                    &cells,
                    &|s: &str| s.to_uppercase(),
                )?
            );
            Ok(0)
        }
        ServiceGroup::Ps(a) => {
            let mut all = Vec::new();
            for s in &a.services {
                all.extend(tasks(ctx, s, a.node.as_deref().unwrap_or("")).await?);
            }
            if a.quiet {
                for t in &all {
                    println!("{}", t.id);
                }
                return Ok(0);
            }
            let rows: Vec<Value> = all
                .iter()
                .map(|t| serde_json::to_value(t).unwrap_or(Value::Null))
                .collect();
            let f = OutputFormat::parse(a.format.as_deref());
            if matches!(f, OutputFormat::Json) {
                for r in &rows {
                    println!("{r}");
                }
                return Ok(0);
            }
            let now = format::now_unix();
            let no_trunc = a.no_trunc;
            let cells = move |v: &Value| -> Vec<String> {
                let t: TaskView = serde_json::from_value(v.clone()).unwrap_or_default();
                let since = format::ago((t.updated_at / 1_000_000_000) as i64, now);
                let err = if no_trunc {
                    t.error.clone()
                } else {
                    format::ellipsis(&t.error, 60)
                };
                vec![
                    format::short_id(&t.id),
                    t.name.clone(),
                    t.image.clone(),
                    t.node.clone(),
                    capitalize(&t.desired_state),
                    format!("{} {since}", capitalize(&t.current_state)),
                    err,
                ]
            };
            print!(
                "{}",
                format::render_rows(
                    &f,
                    &rows,
                    &[
                        "ID",
                        "NAME",
                        "IMAGE",
                        "NODE",
                        "DESIRED STATE",
                        "CURRENT STATE",
                        "ERROR"
                    ],
                    &cells,
                    &|s: &str| s.to_uppercase(),
                )?
            );
            Ok(0)
        }
        ServiceGroup::Inspect(a) => {
            let mut out = Vec::new();
            for s in &a.services {
                out.push(inspect(ctx, s).await?);
            }
            if a.pretty {
                for v in &out {
                    println!("ID:\t\t{}\nName:\t\t{}\nMode:\t\t{}\nReplicas:\t{}/{}\nImage:\t\t{}\nCommand:\t{}\n",
                        v.id, v.spec.name, v.mode, v.running, v.desired,
                        v.spec.task.container.image, v.spec.task.container.command.join(" "));
                }
            } else {
                println!("{}", format::pretty_json(&serde_json::to_value(&out)?));
            }
            Ok(0)
        }
        ServiceGroup::Scale(a) => {
            let mut code = 0;
            for pair in &a.pairs {
                let Some((name, n)) = pair.split_once('=') else {
                    eprintln!("Error: invalid scale {pair:?}: use SERVICE=REPLICAS");
                    code = 1;
                    continue;
                };
                let Ok(n) = n.parse::<u64>() else {
                    eprintln!("Error: invalid replica count {n:?} for {name}: use a number ≥ 0");
                    code = 1;
                    continue;
                };
                let view = inspect(ctx, name).await?;
                if !matches!(view.spec.mode, ServiceMode::Replicated { .. }) {
                    eprintln!("Error: {name} is not a replicated service: scale can only be used with replicated services");
                    code = 1;
                    continue;
                }
                let mut spec = view.spec.clone();
                spec.mode = ServiceMode::Replicated { replicas: n };
                ctx.control()
                    .await?
                    .update_service(UpdateServiceRequest {
                        service: view.id.clone(),
                        spec_json: serde_json::to_string(&spec)?,
                        force: false,
                        rollback: false,
                        version: 0,
                    })
                    .await
                    .rpc()?;
                println!("{name} scaled to {n}");
                if !a.detach {
                    converge(ctx, &view.id, CONVERGE_TIMEOUT).await?;
                }
            }
            Ok(code)
        }
        ServiceGroup::Update(a) => {
            let view = inspect(ctx, &a.service).await?;
            let mut spec = view.spec.clone();
            if let Some(i) = &a.image {
                spec.task.container.image = i.clone();
            }
            if let Some(r) = a.replicas {
                match &mut spec.mode {
                    ServiceMode::Replicated { replicas } => *replicas = r,
                    _ => bail!("--replicas can only be used with replicated services"),
                }
            }
            if let Some(args) = &a.args {
                spec.task.container.command = args.split_whitespace().map(str::to_string).collect();
            }
            apply(&mut spec, &a.spec)?;
            ctx.control()
                .await?
                .update_service(UpdateServiceRequest {
                    service: view.id.clone(),
                    spec_json: serde_json::to_string(&spec)?,
                    force: a.force,
                    rollback: false,
                    version: view.version,
                })
                .await
                .rpc()?;
            println!("{}", view.spec.name);
            if !a.detach {
                converge(ctx, &view.id, CONVERGE_TIMEOUT).await?;
            }
            Ok(0)
        }
        ServiceGroup::Rollback(a) => {
            ctx.control()
                .await?
                .update_service(UpdateServiceRequest {
                    service: a.service.clone(),
                    spec_json: String::new(),
                    force: false,
                    rollback: true,
                    version: 0,
                })
                .await
                .rpc()?;
            println!("{}", a.service);
            if !a.detach {
                converge(ctx, &a.service, CONVERGE_TIMEOUT).await?;
            }
            Ok(0)
        }
        ServiceGroup::Logs(a) => {
            let tail = if a.tail == "all" {
                -1
            } else {
                a.tail
                    .parse::<i64>()
                    .ok()
                    .filter(|n| *n >= 0)
                    .ok_or_else(|| {
                        anyhow!("invalid --tail {:?}: use a number or \"all\"", a.tail)
                    })?
            };
            let mut stream = ctx
                .control()
                .await?
                .service_logs(agent_common::control_proto::ServiceLogsRequest {
                    service: a.service.clone(),
                    tail,
                    follow: a.follow,
                })
                .await
                .rpc()?
                .into_inner();
            // With --follow this runs until the service is removed or the
            // user interrupts (Ctrl-C ends the process).
            while let Some(reply) = stream.message().await.rpc()? {
                let lines: Vec<agent_common::cluster::ServiceLogLine> = decode(&reply.json)?;
                if !print_log_lines(&lines, &a) {
                    break; // the reader went away (e.g. `| head`)
                }
            }
            Ok(0)
        }
        ServiceGroup::Rm(a) => {
            let mut code = 0;
            for s in &a.services {
                match ctx
                    .control()
                    .await?
                    .remove_service(ServiceRef {
                        service: s.clone(),
                        local: false,
                    })
                    .await
                    .rpc()
                {
                    Ok(_) => println!("{s}"),
                    Err(e) => {
                        eprintln!("Error: {e:#}");
                        code = 1;
                    }
                }
            }
            Ok(code)
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn create_args(args: &[&str]) -> CreateArgs {
        let mut full = vec!["flotilla", "service", "create"];
        full.extend_from_slice(args);
        match crate::Cli::try_parse_from(full).unwrap().command {
            crate::Command::Service(ServiceGroup::Create(a)) => *a,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn create_flags_fill_the_spec() {
        let a = create_args(&[
            "--name",
            "web",
            "--replicas",
            "3",
            "-e",
            "A=1",
            "--constraint",
            "node.role==worker",
            "--placement-pref",
            "spread=node.labels.zone",
            "--reserve-memory",
            "64m",
            "--restart-condition",
            "on-failure",
            "--restart-delay",
            "2s",
            "--update-parallelism",
            "2",
            "--update-failure-action",
            "rollback",
            "--rollback-order",
            "start-first",
            "--rollback-monitor",
            "3s",
            "--health-cmd",
            "true",
            "--health-retries",
            "4",
            "busybox",
            "sleep",
            "9",
        ]);
        let mut spec = ServiceSpec::default();
        apply(&mut spec, &a.spec).unwrap();
        let t = &spec.task;
        assert_eq!(t.container.env, ["A=1"]);
        assert_eq!(t.placement.constraints, ["node.role==worker"]);
        assert_eq!(t.placement.preferences[0].spread, "node.labels.zone");
        assert_eq!(t.resources.reservations.memory_bytes, 64 << 20);
        assert_eq!(t.restart.condition, RestartCondition::OnFailure);
        assert_eq!(t.restart.delay_ms, 2_000);
        assert_eq!(spec.update.parallelism, 2);
        assert_eq!(spec.update.failure_action, FailureAction::Rollback);
        assert_eq!(spec.rollback.order, UpdateOrder::StartFirst);
        assert_eq!(spec.rollback.monitor_ms, 3_000);
        let hc = t.container.healthcheck.as_ref().unwrap();
        assert_eq!(hc.cmd, ["CMD-SHELL", "true"]);
        assert_eq!(hc.retries, 4);
        assert_eq!(a.command, ["sleep", "9"]);
    }

    #[test]
    fn bad_flags_are_refused() {
        let a = create_args(&["--placement-pref", "zone", "busybox"]);
        assert!(apply(&mut ServiceSpec::default(), &a.spec).is_err());
        let a = create_args(&["--rollback-failure-action", "rollback", "busybox"]);
        assert!(apply(&mut ServiceSpec::default(), &a.spec).is_err());
        let a = create_args(&["--health-retries", "3", "busybox"]);
        assert!(apply(&mut ServiceSpec::default(), &a.spec).is_err());
    }

    #[test]
    fn negative_values_are_values_refused_for_being_negative() {
        for (flag, value) in [
            ("--replicas", "-1"),
            ("--limit-cpu", "-1"),
            ("--reserve-cpu", "-0.5"),
            ("--restart-delay", "-5s"),
            ("--stop-grace-period", "-1s"),
            ("--update-parallelism", "-2"),
            ("--restart-max-attempts", "-3"),
        ] {
            let full = ["flotilla", "service", "create", flag, value, "busybox"];
            let err = crate::Cli::try_parse_from(full).unwrap_err().to_string();
            assert!(err.contains("negative"), "{flag} {value}: {err}");
            assert!(
                !err.contains("unexpected argument"),
                "{flag} {value}: {err}"
            );
        }
        // Values that pass clap but not the size rules.
        let a = create_args(&["--limit-memory", "-1m", "busybox"]);
        let err = apply(&mut ServiceSpec::default(), &a.spec).unwrap_err();
        assert!(err.to_string().contains("negative"), "{err}");
    }

    #[test]
    fn durations_are_range_checked_not_wrapped() {
        let full = [
            "flotilla",
            "service",
            "create",
            "--stop-grace-period",
            "99999999999999h",
            "busybox",
        ];
        let err = crate::Cli::try_parse_from(full).unwrap_err().to_string();
        assert!(err.contains("at most"), "{err}");
        let a = create_args(&[
            "--stop-grace-period",
            "90s",
            "--limit-cpu",
            "1.5",
            "busybox",
        ]);
        let mut spec = ServiceSpec::default();
        apply(&mut spec, &a.spec).unwrap();
        assert_eq!(spec.task.container.stop_grace_period_ms, 90_000);
        assert_eq!(spec.task.resources.limits.nano_cpus, 1_500_000_000);
    }
}

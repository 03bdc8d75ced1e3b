//! Health checks of running task containers (`--health-*`): the check's
//! command runs inside the container through the engine's exec helper at
//! each interval; after `retries` consecutive failures (failures during the
//! start period do not count) the task is reported `failed` ("task:
//! unhealthy container"), and the reconcile pass then stops its container
//! (a terminal task may not keep running). The orchestrator replaces it.
//!
//! This module does not read the image's own HEALTHCHECK: only the task
//! spec's check is run.

use std::sync::Arc;
use std::time::Duration;

use agent_common::spec::ContainerSpec;
use agent_common::task_state::TaskState;
use tokio::time::Instant;

use super::reconcile::Status;
use super::{lock, Agent};
use crate::engine::container::Container;
use crate::engine::Engine;

/// The error a task fails with when its check keeps failing.
pub const UNHEALTHY: &str = "task: unhealthy container";

/// A task's health check, with Docker's defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Check {
    /// The command run inside the container.
    pub argv: Vec<String>,
    /// Time between checks.
    pub interval: Duration,
    /// Time one check may take.
    pub timeout: Duration,
    /// Consecutive failures that make the container unhealthy.
    pub retries: u32,
    /// Time after start during which failures do not count.
    pub start_period: Duration,
}

impl Check {
    /// The check of `spec`, if it has one (`NONE` and an empty test disable it).
    pub fn of(spec: &ContainerSpec) -> Option<Check> {
        let hc = spec.healthcheck.as_ref()?;
        let argv = match hc.cmd.split_first() {
            None => return None,
            Some((first, _)) if first == "NONE" => return None,
            Some((first, rest)) if first == "CMD" => rest.to_vec(),
            Some((first, rest)) if first == "CMD-SHELL" => {
                vec!["/bin/sh".into(), "-c".into(), rest.join(" ")]
            }
            // A bare command line, as `--health-cmd` gives it: run by the shell.
            Some(_) => vec!["/bin/sh".into(), "-c".into(), hc.cmd.join(" ")],
        };
        if argv.is_empty() || argv.iter().all(|a| a.trim().is_empty()) {
            return None;
        }
        let or = |ms: u64, default: u64| Duration::from_millis(if ms == 0 { default } else { ms });
        Some(Check {
            argv,
            interval: or(hc.interval_ms, 30_000),
            timeout: or(hc.timeout_ms, 30_000),
            retries: if hc.retries == 0 { 3 } else { hc.retries },
            start_period: Duration::from_millis(hc.start_period_ms),
        })
    }
}

/// Counts results: true once the container is to be declared unhealthy.
#[derive(Debug)]
pub struct Verdict {
    failures: u32,
}

impl Verdict {
    /// No failure yet.
    pub fn new() -> Self {
        Verdict { failures: 0 }
    }

    /// Takes one probe's result, `since_start` after the container started;
    /// returns whether the container is now unhealthy.
    pub fn record(&mut self, check: &Check, healthy: bool, since_start: Duration) -> bool {
        if healthy {
            self.failures = 0;
        } else if since_start >= check.start_period {
            self.failures += 1;
        }
        self.failures >= check.retries
    }
}

impl Default for Verdict {
    fn default() -> Self {
        Verdict::new()
    }
}

/// Watches the health of `container_id` (task `task_id`) until it stops,
/// unless a monitor already does.
pub(super) fn ensure(agent: &Arc<Agent>, task_id: &str, container_id: &str, check: Check) {
    if !lock(&agent.health).insert(container_id.to_string()) {
        return;
    }
    let agent = Arc::clone(agent);
    let (task_id, container_id) = (task_id.to_string(), container_id.to_string());
    tokio::spawn(async move {
        monitor(&agent, &task_id, &container_id, &check).await;
        lock(&agent.health).remove(&container_id);
    });
}

async fn monitor(agent: &Arc<Agent>, task_id: &str, container_id: &str, check: &Check) {
    let started = Instant::now();
    let mut verdict = Verdict::new();
    loop {
        tokio::time::sleep(check.interval).await;
        let c = match agent.engine.find(container_id) {
            Ok(c) if c.is_running() => c,
            _ => return,
        };
        let healthy = probe(&agent.engine, &c, check).await;
        if !healthy {
            tracing::debug!(task = %task_id, container = %container_id, "health check failed");
        }
        if verdict.record(check, healthy, started.elapsed()) {
            tracing::warn!(task = %task_id, container = %container_id, "{UNHEALTHY}: {} consecutive failed checks", check.retries);
            agent.outbox.report(
                Status::new(task_id, TaskState::Failed)
                    .container(container_id)
                    .error(UNHEALTHY),
                TaskState::New,
            );
            // The reconcile pass stops the container of the failed task.
            agent.wake.notify_one();
            return;
        }
    }
}

/// Runs the check once; true if it exited 0 within its timeout.
async fn probe(engine: &Engine, c: &Container, check: &Check) -> bool {
    let start = agent_common::proto::ExecStart {
        cmd: check.argv.clone(),
        ..Default::default()
    };
    let Ok(mut cmd) = engine.exec_helper_command(c, &start).await else {
        return false;
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let Ok(mut child) = cmd.spawn() else {
        return false;
    };
    match tokio::time::timeout(check.timeout, child.wait()).await {
        Ok(Ok(status)) => status.success(),
        _ => {
            let _ = child.kill().await;
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_common::spec::HealthCheck;

    fn spec(cmd: &[&str]) -> ContainerSpec {
        ContainerSpec {
            healthcheck: Some(HealthCheck {
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                retries: 2,
                start_period_ms: 5_000,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn check_forms_and_defaults() {
        let c = Check::of(&spec(&["CMD", "test", "-f", "/ok"])).unwrap();
        assert_eq!(c.argv, ["test", "-f", "/ok"]);
        assert_eq!(c.interval, Duration::from_secs(30));
        assert_eq!(c.timeout, Duration::from_secs(30));
        assert_eq!(c.retries, 2);
        let c = Check::of(&spec(&["CMD-SHELL", "exit 1"])).unwrap();
        assert_eq!(c.argv, ["/bin/sh", "-c", "exit 1"]);
        assert!(Check::of(&spec(&["NONE"])).is_none());
        assert!(Check::of(&spec(&[])).is_none());
        assert!(Check::of(&ContainerSpec::default()).is_none());
    }

    #[test]
    fn unhealthy_after_retries_consecutive_failures_past_the_start_period() {
        let c = Check::of(&spec(&["CMD", "false"])).unwrap();
        let mut v = Verdict::new();
        let early = Duration::from_secs(1);
        let late = Duration::from_secs(10);
        // Failures in the start period do not count.
        for _ in 0..5 {
            assert!(!v.record(&c, false, early));
        }
        assert!(!v.record(&c, false, late));
        // A success resets the count.
        assert!(!v.record(&c, true, late));
        assert!(!v.record(&c, false, late));
        assert!(v.record(&c, false, late));
    }
}

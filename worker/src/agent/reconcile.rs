//! The agent's decisions, as one pure function: from the tasks the managers
//! assign to this node, the task containers the engine holds, the states the
//! agent already reported and the tasks it is busy with, to the
//! [`Action`]s that bring the node in line. No I/O here: [`super`] executes
//! the actions (and runs this again after each one, periodically, and
//! whenever assignments change or a container exits).
//!
//! The rules (SwarmKit's agent, with restart policy left to the manager):
//! - desired running, no container: run it (pull, create, start);
//! - desired running, container created but never started: start it;
//! - container running but the task not yet `running`: report running;
//! - container exited on its own: report complete (0) or failed (non-zero),
//!   never restart it (the orchestrator makes a new task);
//! - desired shutdown or remove, container running: stop it, report shutdown;
//!   nothing running: report shutdown;
//! - desired remove and nothing running: remove the task's containers;
//! - a task container whose task is no longer assigned here: stop and
//!   remove it ([`Action::RemoveOrphan`]);
//! - a terminal task keeps its stopped container (for `service logs`) until
//!   its desired state is remove or it leaves the assignments.

use std::collections::{HashMap, HashSet};

use agent_common::objects::Task;
use agent_common::task_state::TaskState;

/// What the engine holds for one task container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Local {
    /// Container ID.
    pub id: String,
    /// The task it runs (its `com.flotilla.task.id` label).
    pub task_id: String,
    /// Where its process is.
    pub phase: Phase,
    /// Its stop timeout in seconds (the task's grace period, set at create).
    pub grace_secs: i64,
}

/// Where a container's process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Created, never started.
    Created,
    /// Running (or paused).
    Running,
    /// Exited after it ran.
    Exited {
        /// Its exit code.
        exit_code: i64,
        /// Whether it was stopped on purpose (`stop`, the agent's shutdown)
        /// rather than exiting on its own.
        stopped: bool,
    },
}

/// A state report for one task.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// The task.
    pub task_id: String,
    /// The state it reached.
    pub state: TaskState,
    /// Human-readable note (`started`, `finished`, ...).
    pub message: String,
    /// Its container, once there is one.
    pub container_id: String,
    /// The container's exit code (complete, failed).
    pub exit_code: Option<i64>,
    /// Why it failed or was rejected.
    pub error: String,
}

impl Status {
    /// A report of `state` for `task_id`, with the usual message.
    pub fn new(task_id: &str, state: TaskState) -> Status {
        let message = match state {
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "started",
            TaskState::Complete => "finished",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            _ => "",
        };
        Status {
            task_id: task_id.to_string(),
            state,
            message: message.to_string(),
            container_id: String::new(),
            exit_code: None,
            error: String::new(),
        }
    }

    /// With the container's ID.
    pub fn container(mut self, id: &str) -> Status {
        self.container_id = id.to_string();
        self
    }

    /// With an error.
    pub fn error(mut self, error: impl Into<String>) -> Status {
        self.error = error.into();
        self
    }

    /// The report of a container that exited on its own: complete on 0,
    /// failed otherwise.
    pub fn exited(task_id: &str, container_id: &str, exit_code: i64) -> Status {
        let mut s = if exit_code == 0 {
            Status::new(task_id, TaskState::Complete)
        } else {
            Status::new(task_id, TaskState::Failed)
                .error(format!("task: non-zero exit ({exit_code})"))
        };
        s.exit_code = Some(exit_code);
        s.container(container_id)
    }
}

/// One thing to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Report a state (queued; sent by the reporter).
    Report(Status),
    /// Bring the task up: make sure the image is there, create the container
    /// (unless `container` names an existing one), start it, reporting each step.
    Run {
        /// The task, as assigned.
        task: Box<Task>,
        /// A container created for it earlier but never started.
        container: Option<String>,
    },
    /// Stop a running task container with its grace period, then report
    /// shutdown when `report` is set.
    Stop {
        /// The task.
        task_id: String,
        /// Its container.
        container_id: String,
        /// Grace period in seconds.
        grace_secs: i64,
        /// Whether to report shutdown afterwards.
        report: bool,
    },
    /// Stop (if it runs) and remove a container of a task being removed.
    Remove {
        /// The task.
        task_id: String,
        /// The container.
        container_id: String,
        /// Grace period in seconds.
        grace_secs: i64,
    },
    /// Stop and remove a container whose task is no longer assigned here.
    RemoveOrphan {
        /// The task the container was made for.
        task_id: String,
        /// The container.
        container_id: String,
        /// Grace period in seconds.
        grace_secs: i64,
    },
}

/// What should happen now. `tasks` is `None` until the first assignments
/// arrived (then nothing is removed as an orphan); `reported` holds the last
/// state the agent reported per task; `busy` the tasks with an operation in
/// flight (left alone).
pub fn decide(
    tasks: Option<&[Task]>,
    locals: &[Local],
    reported: &HashMap<String, TaskState>,
    busy: &HashSet<String>,
) -> Vec<Action> {
    let mut actions = Vec::new();
    let mut by_task: HashMap<&str, Vec<&Local>> = HashMap::new();
    for l in locals {
        by_task.entry(l.task_id.as_str()).or_default().push(l);
    }
    for task in tasks.unwrap_or_default() {
        let id = task.meta.id.as_str();
        if busy.contains(id) {
            continue;
        }
        let state = reported
            .get(id)
            .map_or(task.state, |r| (*r).max(task.state));
        let mine = by_task.get(id).map(Vec::as_slice).unwrap_or_default();
        // The running container first, else the newest-looking one.
        let local = mine
            .iter()
            .find(|l| l.phase == Phase::Running)
            .or_else(|| mine.first())
            .copied();
        if task.desired_state <= TaskState::Complete {
            decide_running(task, state, local, &mut actions);
        } else {
            decide_stopped(task, state, local, mine, &mut actions);
        }
    }
    if let Some(tasks) = tasks {
        let assigned: HashSet<&str> = tasks.iter().map(|t| t.meta.id.as_str()).collect();
        for l in locals {
            if !assigned.contains(l.task_id.as_str()) && !busy.contains(&l.task_id) {
                actions.push(Action::RemoveOrphan {
                    task_id: l.task_id.clone(),
                    container_id: l.id.clone(),
                    grace_secs: l.grace_secs,
                });
            }
        }
    }
    actions
}

/// Desired running (or complete, for jobs).
fn decide_running(task: &Task, state: TaskState, local: Option<&Local>, out: &mut Vec<Action>) {
    let id = task.meta.id.as_str();
    if state.is_terminal() {
        // Over (or orphaned by the managers): keep the container for its
        // logs, but nothing of it may keep running.
        if let Some(l) = local.filter(|l| l.phase == Phase::Running) {
            out.push(Action::Stop {
                task_id: id.to_string(),
                container_id: l.id.clone(),
                grace_secs: l.grace_secs,
                report: false,
            });
        }
        return;
    }
    match local {
        None if state >= TaskState::Running => out.push(Action::Report(
            Status::new(id, TaskState::Failed).error("task: its container was removed"),
        )),
        None => out.push(Action::Run {
            task: Box::new(task.clone()),
            container: None,
        }),
        Some(l) => match l.phase {
            Phase::Created => out.push(Action::Run {
                task: Box::new(task.clone()),
                container: Some(l.id.clone()),
            }),
            Phase::Running if state < TaskState::Running => out.push(Action::Report(
                Status::new(id, TaskState::Running).container(&l.id),
            )),
            Phase::Running => {}
            Phase::Exited { exit_code, .. } => {
                out.push(Action::Report(Status::exited(id, &l.id, exit_code)))
            }
        },
    }
}

/// Desired shutdown or remove.
fn decide_stopped(
    task: &Task,
    state: TaskState,
    local: Option<&Local>,
    all: &[&Local],
    out: &mut Vec<Action>,
) {
    let id = task.meta.id.as_str();
    let remove = task.desired_state == TaskState::Remove;
    if let Some(l) = local.filter(|l| l.phase == Phase::Running) {
        out.push(Action::Stop {
            task_id: id.to_string(),
            container_id: l.id.clone(),
            grace_secs: l.grace_secs,
            report: !state.is_terminal(),
        });
        return;
    }
    if !state.is_terminal() {
        let status = match local {
            Some(Local {
                id: cid,
                phase:
                    Phase::Exited {
                        exit_code,
                        stopped: false,
                    },
                ..
            }) => Status::exited(id, cid, *exit_code),
            Some(l) => Status::new(id, TaskState::Shutdown).container(&l.id),
            None => Status::new(id, TaskState::Shutdown),
        };
        out.push(Action::Report(status));
    }
    if remove {
        for l in all {
            out.push(Action::Remove {
                task_id: id.to_string(),
                container_id: l.id.clone(),
                grace_secs: l.grace_secs,
            });
        }
    }
}

#[cfg(test)]
mod tests;

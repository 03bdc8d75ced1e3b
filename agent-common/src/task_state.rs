//! The task state machine, as SwarmKit's: a task is **one-shot** (it is never
//! re-run; a failed or finished task is replaced by a new one in the same
//! slot) and its state only moves **forward**. Each step has exactly one
//! writer:
//!
//! | state | written by |
//! | --- | --- |
//! | `New` | orchestrator (creates the task) |
//! | `Pending` | allocator (network resources allocated) |
//! | `Assigned` | scheduler (a node chosen) |
//! | `Accepted` … `Running`, `Complete`, `Failed`, `Rejected` | the worker agent running it |
//! | `Shutdown` | the agent, after the orchestrator asked it to stop (desired state) |
//! | `Orphaned` | the dispatcher, when the node is gone too long |
//!
//! A backwards move is a typed error ([`IllegalTransition`]), never a silent write.

use serde::{Deserialize, Serialize};

/// Where a task is in its life. The order of the variants is the order of the
/// life: a task may only move to a later state.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    /// Desired state only: the task should be removed once it has stopped.
    Remove,
    Orphaned,
}

/// Who writes a state change.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Writer {
    Orchestrator,
    Allocator,
    Scheduler,
    Agent,
    Dispatcher,
}

/// A refused state change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    #[error("task state cannot move backwards or stay: {from:?} -> {to:?}")]
    Backwards { from: TaskState, to: TaskState },
    #[error("task state {to:?} is not written by the {writer:?}")]
    WrongWriter { to: TaskState, writer: Writer },
    #[error("task is already in the terminal state {from:?}; it is replaced, not re-run")]
    Terminal { from: TaskState },
    #[error("{0:?} is a desired state, never an observed one")]
    DesiredOnly(TaskState),
}

impl TaskState {
    /// The task has stopped for good (the slot needs a new task to run again).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::Shutdown
                | TaskState::Failed
                | TaskState::Rejected
                | TaskState::Orphaned
        )
    }

    /// Who may move a task into this state.
    pub fn writer(self) -> Option<Writer> {
        Some(match self {
            TaskState::New => Writer::Orchestrator,
            TaskState::Pending => Writer::Allocator,
            TaskState::Assigned => Writer::Scheduler,
            TaskState::Accepted
            | TaskState::Preparing
            | TaskState::Ready
            | TaskState::Starting
            | TaskState::Running
            | TaskState::Complete
            | TaskState::Shutdown
            | TaskState::Failed
            | TaskState::Rejected => Writer::Agent,
            TaskState::Orphaned => Writer::Dispatcher,
            TaskState::Remove => return None,
        })
    }

    /// Checks a move from `self` to `to` by `writer`.
    pub fn transition(self, to: TaskState, writer: Writer) -> Result<TaskState, IllegalTransition> {
        if to == TaskState::Remove {
            return Err(IllegalTransition::DesiredOnly(to));
        }
        if self.is_terminal() {
            return Err(IllegalTransition::Terminal { from: self });
        }
        if to <= self {
            return Err(IllegalTransition::Backwards { from: self, to });
        }
        if to.writer() != Some(writer) {
            return Err(IllegalTransition::WrongWriter { to, writer });
        }
        Ok(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_normal_life_of_a_task() {
        let steps = [
            (TaskState::Pending, Writer::Allocator),
            (TaskState::Assigned, Writer::Scheduler),
            (TaskState::Accepted, Writer::Agent),
            (TaskState::Preparing, Writer::Agent),
            (TaskState::Ready, Writer::Agent),
            (TaskState::Starting, Writer::Agent),
            (TaskState::Running, Writer::Agent),
            (TaskState::Complete, Writer::Agent),
        ];
        let mut state = TaskState::New;
        for (to, writer) in steps {
            state = state.transition(to, writer).unwrap();
        }
        assert!(state.is_terminal());
    }

    #[test]
    fn states_only_move_forward() {
        assert_eq!(
            TaskState::Running.transition(TaskState::Starting, Writer::Agent),
            Err(IllegalTransition::Backwards {
                from: TaskState::Running,
                to: TaskState::Starting
            })
        );
        assert!(TaskState::Running
            .transition(TaskState::Running, Writer::Agent)
            .is_err());
    }

    #[test]
    fn terminal_tasks_are_never_rerun() {
        for t in [
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Shutdown,
            TaskState::Orphaned,
        ] {
            assert_eq!(
                t.transition(TaskState::Orphaned, Writer::Dispatcher),
                Err(IllegalTransition::Terminal { from: t })
            );
        }
    }

    #[test]
    fn each_step_has_one_writer() {
        assert!(matches!(
            TaskState::New.transition(TaskState::Assigned, Writer::Agent),
            Err(IllegalTransition::WrongWriter { .. })
        ));
        assert!(TaskState::Pending
            .transition(TaskState::Assigned, Writer::Scheduler)
            .is_ok());
        assert!(TaskState::Running
            .transition(TaskState::Orphaned, Writer::Dispatcher)
            .is_ok());
        assert!(TaskState::Running
            .transition(TaskState::Remove, Writer::Agent)
            .is_err());
    }

    #[test]
    fn serialized_names_are_lowercase() {
        assert_eq!(
            serde_json::to_string(&TaskState::Running).unwrap(),
            "\"running\""
        );
        let back: TaskState = serde_json::from_str("\"orphaned\"").unwrap();
        assert_eq!(back, TaskState::Orphaned);
    }
}

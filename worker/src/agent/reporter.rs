//! The agent's way back to the managers: an outbox of state reports. The
//! node's session sends them in order, one batch at a time, and drops a
//! batch only when the leader acknowledged it (stored): a batch in flight
//! when a session ends is sent again on the next one. The reconcile loop
//! only queues; it never waits on the network.
//!
//! The outbox also remembers the last state queued per task, so a state is
//! queued once and never a backwards one (the dispatcher ignores those
//! anyway, silently).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agent_common::dispatcher_proto::TaskStatus;
use agent_common::task_state::TaskState;
use tokio::sync::Notify;

use super::reconcile::Status;

/// Most reports sent in one batch.
pub const MAX_BATCH: usize = 500;

/// Reports not sent yet, and the last state queued per task.
#[derive(Default)]
struct Queue {
    pending: Vec<Status>,
    reported: HashMap<String, TaskState>,
}

/// The outbox: shared by the reconcile loop, its jobs and the sending loop.
#[derive(Clone, Default)]
pub struct Outbox {
    queue: Arc<Mutex<Queue>>,
    wake: Arc<Notify>,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `status` unless the task already reached that state or a later
    /// one (as queued here, or as `floor`, the state the managers hold).
    /// Returns whether it was queued.
    pub fn report(&self, status: Status, floor: TaskState) -> bool {
        {
            let mut q = self.lock();
            let known = q
                .reported
                .get(&status.task_id)
                .map_or(floor, |r| (*r).max(floor));
            if status.state <= known || known.is_terminal() {
                return false;
            }
            q.reported.insert(status.task_id.clone(), status.state);
            q.pending.push(status);
        }
        self.wake.notify_one();
        true
    }

    /// The last state queued per task.
    pub fn reported(&self) -> HashMap<String, TaskState> {
        self.lock().reported.clone()
    }

    /// Forgets tasks that left the assignments (and have nothing to send).
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        let mut q = self.lock();
        let Queue { pending, reported } = &mut *q;
        reported.retain(|id, _| keep(id) || pending.iter().any(|s| &s.task_id == id));
    }

    /// Reports waiting to be sent.
    pub fn pending(&self) -> usize {
        self.lock().pending.len()
    }

    /// The next batch to send (the oldest reports, at most [`MAX_BATCH`]).
    pub fn peek(&self) -> Vec<Status> {
        let q = self.lock();
        q.pending.iter().take(MAX_BATCH).cloned().collect()
    }

    /// Drops the first `n` pending reports (acknowledged by the leader).
    pub fn ack(&self, n: usize) {
        let mut q = self.lock();
        let n = n.min(q.pending.len());
        q.pending.drain(..n);
    }

    /// Resolves when a report was queued (at once if one was queued since
    /// the last call).
    pub async fn queued(&self) {
        self.wake.notified().await;
    }
}

/// The wire form of a report.
pub fn to_proto(s: &Status) -> TaskStatus {
    let state = serde_json::to_value(s.state)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    TaskStatus {
        task_id: s.task_id.clone(),
        state,
        message: s.message.clone(),
        container_id: s.container_id.clone(),
        has_exit_code: s.exit_code.is_some(),
        exit_code: s.exit_code.unwrap_or_default(),
        error: s.error.clone(),
    }
}

/// Exponential backoff from 100 ms to 5 s.
#[derive(Default)]
pub struct Backoff {
    /// Consecutive failures.
    pub failures: u32,
}

impl Backoff {
    /// The wait after one more failure.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let ms = 100u64.saturating_mul(1 << self.failures.min(7).saturating_sub(1));
        Duration::from_millis(ms.min(5_000))
    }

    /// After a success.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_queued_once_and_only_forward() {
        let o = Outbox::default();
        assert!(o.report(Status::new("t", TaskState::Accepted), TaskState::Assigned));
        assert!(!o.report(Status::new("t", TaskState::Accepted), TaskState::Assigned));
        assert!(o.report(Status::new("t", TaskState::Running), TaskState::Assigned));
        assert!(!o.report(Status::new("t", TaskState::Starting), TaskState::Assigned));
        assert!(o.report(Status::new("t", TaskState::Failed), TaskState::Assigned));
        // Nothing after a terminal state.
        assert!(!o.report(Status::new("t", TaskState::Shutdown), TaskState::Assigned));
        // Nothing the managers already hold.
        assert!(!o.report(Status::new("u", TaskState::Running), TaskState::Running));
        assert_eq!(o.pending(), 3);
        o.ack(2);
        assert_eq!(o.peek()[0].state, TaskState::Failed);
    }

    #[test]
    fn forgotten_tasks_keep_pending_reports() {
        let o = Outbox::default();
        o.report(Status::new("a", TaskState::Accepted), TaskState::Assigned);
        o.report(Status::new("b", TaskState::Accepted), TaskState::Assigned);
        o.ack(1);
        o.retain(|_| false);
        let r = o.reported();
        assert!(!r.contains_key("a"));
        assert!(r.contains_key("b"));
    }

    #[test]
    fn wire_states_are_lowercase_names() {
        let mut s = Status::exited("t", "c", 137);
        assert_eq!(to_proto(&s).state, "failed");
        assert!(to_proto(&s).has_exit_code);
        s.state = TaskState::Shutdown;
        assert_eq!(to_proto(&s).state, "shutdown");
    }

    #[test]
    fn backoff_grows_to_five_seconds() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..8).map(|_| b.failed().as_millis() as u64).collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000]);
        b.reset();
        assert_eq!(b.failed().as_millis(), 100);
    }
}

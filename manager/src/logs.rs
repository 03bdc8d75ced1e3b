//! The log broker on the leader: `service logs` asks the nodes running a
//! service's tasks for their containers' output. Nodes listen on no port,
//! so requests wait here until the node's agent collects them (a long
//! poll), and the agent publishes the lines back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use agent_common::dispatcher_proto::{LogLine, LogRequest};
use tokio::sync::{oneshot, Notify};

/// What a node answers to a log request: its lines and an error text.
pub type LogAnswer = (Vec<LogLine>, String);

/// Pending requests per node and the callers waiting for their lines.
#[derive(Default)]
pub struct LogBroker {
    pending: Mutex<HashMap<String, Vec<LogRequest>>>,
    waiting: Mutex<HashMap<String, oneshot::Sender<LogAnswer>>>,
    posted: Notify,
}

impl LogBroker {
    /// Asks `node` for the logs of `container_ids`; resolves with the lines
    /// (and an error text) or `None` if the node did not answer in `timeout`.
    pub async fn request(
        &self,
        node: &str,
        container_ids: Vec<String>,
        tail: i64,
        timeout: Duration,
    ) -> Option<LogAnswer> {
        let id = crate::store::new_id();
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.waiting.lock() {
            w.insert(id.clone(), tx);
        }
        if let Ok(mut p) = self.pending.lock() {
            p.entry(node.to_string()).or_default().push(LogRequest {
                id: id.clone(),
                container_ids,
                tail,
            });
        }
        self.posted.notify_waiters();
        let got = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        // Whatever happened, forget the request.
        if let Ok(mut w) = self.waiting.lock() {
            w.remove(&id);
        }
        if let Ok(mut p) = self.pending.lock() {
            if let Some(list) = p.get_mut(node) {
                list.retain(|r| r.id != id);
            }
        }
        got
    }

    /// The requests for `node`, waiting up to `wait` for one.
    pub async fn take(&self, node: &str, wait: Duration) -> Vec<LogRequest> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.posted.notified();
            let found = self
                .pending
                .lock()
                .map(|mut p| p.remove(node).unwrap_or_default())
                .unwrap_or_default();
            if !found.is_empty() || tokio::time::Instant::now() >= deadline {
                return found;
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    /// Hands the lines of request `id` to its caller.
    pub fn publish(&self, id: &str, lines: Vec<LogLine>, error: String) {
        let tx = self.waiting.lock().ok().and_then(|mut w| w.remove(id));
        if let Some(tx) = tx {
            let _ = tx.send((lines, error));
        }
    }
}

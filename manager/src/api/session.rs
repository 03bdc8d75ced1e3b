//! A node's session with the leader (`Dispatcher::Session`): one
//! bidirectional stream per node that carries its heartbeats, its task
//! assignments, its task state reports and `service logs` traffic.
//!
//! The leader keeps, per node, when it was last heard of and whether its
//! session is open ([`Liveness`]). [`monitor_liveness`] marks a node down
//! when it missed [`MISSED_HEARTBEATS`] periods with its session open (a hung
//! or cut-off node), or [`CLOSED_SESSION_GRACE`] periods after its session
//! closed and it did not open another (a crashed daemon or machine whose
//! kernel closed the connection): its tasks are then replaced elsewhere.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use agent_common::dispatcher_proto::session_down::Kind as Down;
use agent_common::dispatcher_proto::session_up::Kind as Up;
use agent_common::dispatcher_proto::{
    Assignments, Hello, RefusedStatus, SessionDown, SessionInfo, SessionUp, StatusAck, TaskStatus,
};
use agent_common::objects::{Node, NodeStatus, Object, Task};
use agent_common::spec::ResourceAmounts;
use agent_common::task_state::{TaskState, Writer};
use agent_common::tls::grpc::Caller;
use tokio::sync::mpsc;
use tonic::{Status, Streaming};

use crate::daemon::{stored_role, Manager};

/// A node is marked down after this many heartbeat periods without one.
pub const MISSED_HEARTBEATS: u32 = 3;
/// A node whose session closed is marked down after this many periods
/// unless it opened a new one (a daemon restart reconnects well within it).
pub const CLOSED_SESSION_GRACE: u32 = 1;
/// Under a new leader, nodes get this many periods (and at least
/// [`MIN_NEW_LEADER_GRACE`]) to open their session: a node notices a cut-off
/// leader only after 3 silent periods (at least 2 s), then reconnects.
pub const NEW_LEADER_GRACE: u32 = 6;
/// See [`NEW_LEADER_GRACE`].
pub const MIN_NEW_LEADER_GRACE: Duration = Duration::from_secs(5);
/// How long a new session may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the leader knows of a node's presence.
#[derive(Clone, Copy, Debug)]
pub struct Liveness {
    /// The last heartbeat (or session opening or closing, or when this
    /// manager became leader).
    pub last_seen: Instant,
    /// The node's session with this leader.
    pub session: SessionState,
}

/// Whether a node has a session with the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Not since this manager became leader.
    NotYet,
    /// Open, with this generation.
    Open(u64),
    /// It closed at `last_seen`.
    Closed,
}

impl Liveness {
    /// How long the node may stay silent before it is marked down.
    pub fn grace(&self, period: Duration) -> Duration {
        match self.session {
            SessionState::Open(_) => period * MISSED_HEARTBEATS,
            SessionState::Closed => period * CLOSED_SESSION_GRACE,
            SessionState::NotYet => (period * NEW_LEADER_GRACE).max(MIN_NEW_LEADER_GRACE),
        }
    }
}

/// The heartbeat period of the cluster.
pub fn period(m: &Manager) -> Duration {
    let ms = m
        .cluster()
        .map(|c| c.heartbeat_period_ms)
        .filter(|ms| *ms > 0)
        .unwrap_or(1000);
    Duration::from_millis(ms)
}

/// The stream of messages to the node.
pub type Outgoing = mpsc::Sender<Result<SessionDown, Status>>;

fn down(kind: Down) -> Result<SessionDown, Status> {
    Ok(SessionDown { kind: Some(kind) })
}

/// The one message a manager that is not the leader sends.
pub fn redirect(m: &Manager) -> Result<SessionDown, Status> {
    down(Down::Redirect(agent_common::dispatcher_proto::Redirect {
        leader_addr: m.leader_addr().unwrap_or_default(),
    }))
}

fn info(m: &Manager, node: Option<&Node>) -> Result<SessionDown, Status> {
    down(Down::Info(SessionInfo {
        period_ms: period(m).as_millis() as u64,
        managers: m.manager_addrs(),
        role: node
            .map(|n| stored_role(n).as_str().to_string())
            .unwrap_or_default(),
    }))
}

/// Runs the session of `node_id` on the leader until either side ends it.
pub async fn run(
    m: Arc<Manager>,
    node_id: String,
    caller: Caller,
    mut inbound: Streaming<SessionUp>,
    tx: Outgoing,
) {
    let hello = match tokio::time::timeout(HELLO_TIMEOUT, inbound.message()).await {
        Ok(Ok(Some(SessionUp {
            kind: Some(Up::Hello(h)),
        }))) => h,
        _ => {
            let _ = tx
                .send(Err(Status::invalid_argument(
                    "a session starts with a hello message",
                )))
                .await;
            return;
        }
    };
    // The address goes into the node's next certificate (renewal): refuse
    // what would let it pass for another identity, before the node counts
    // as heard from.
    let host_only = hello
        .addr
        .parse::<std::net::SocketAddr>()
        .map(|s| s.ip().to_string())
        .unwrap_or_else(|_| hello.addr.clone());
    if !host_only.is_empty() {
        if let Err(e) = agent_common::pki::check_node_address(&host_only) {
            tracing::warn!(node = %node_id, "refused a session: {e}");
            let _ = tx
                .send(Err(Status::invalid_argument(format!(
                    "the session's address is refused: {e}"
                ))))
                .await;
            return;
        }
    }
    let (requests_tx, mut requests) = mpsc::unbounded_channel();
    let generation = m.logs.attach(&node_id, requests_tx);
    seen(&m, &node_id, Some(SessionState::Open(generation)));
    let (ready_marked, mut ready_done) = mpsc::unbounded_channel();
    let mut s = Session {
        m: Arc::clone(&m),
        node_id: node_id.clone(),
        tx,
        marking_ready: false,
        ready_marked,
        sent: HashMap::new(),
    };
    let ended = s
        .serve(
            &hello,
            &caller,
            &mut inbound,
            &mut requests,
            &mut ready_done,
        )
        .await;
    if let Err(e) = ended {
        tracing::debug!(node = %node_id, "session ended: {e}");
    }
    m.logs.detach(&node_id, generation);
    if let Ok(mut l) = m.liveness.lock() {
        if let Some(entry) = l.get_mut(&node_id) {
            if entry.session == SessionState::Open(generation) {
                entry.session = SessionState::Closed;
                entry.last_seen = Instant::now();
            }
        }
    }
}

/// Records that `node_id` was heard of (and the state of its session when
/// that changed).
fn seen(m: &Manager, node_id: &str, session: Option<SessionState>) {
    if let Ok(mut l) = m.liveness.lock() {
        let now = Instant::now();
        let entry = l.entry(node_id.to_string()).or_insert(Liveness {
            last_seen: now,
            session: SessionState::NotYet,
        });
        entry.last_seen = now;
        if let Some(state) = session {
            entry.session = state;
        }
    }
}

struct Session {
    m: Arc<Manager>,
    node_id: String,
    tx: Outgoing,
    /// A write marking the node ready is under way (one at a time).
    marking_ready: bool,
    /// Told when that write is done.
    ready_marked: mpsc::UnboundedSender<()>,
    /// The version of every task last sent to the node.
    sent: HashMap<String, u64>,
}

impl Session {
    async fn send(&self, msg: Result<SessionDown, Status>) -> Result<(), String> {
        self.tx
            .send(msg)
            .await
            .map_err(|_| "the node hung up".to_string())
    }

    async fn serve(
        &mut self,
        hello: &Hello,
        caller: &Caller,
        inbound: &mut Streaming<SessionUp>,
        requests: &mut mpsc::UnboundedReceiver<SessionDown>,
        ready_done: &mut mpsc::UnboundedReceiver<()>,
    ) -> Result<(), String> {
        let node = self.register(hello).await?;
        self.send(info(&self.m, Some(&node))).await?;
        let mut watch = self.m.store().watch();
        self.push_assignments(true).await?;
        let mut tick = tokio::time::interval(period(&self.m));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                msg = inbound.message() => match msg {
                    Ok(Some(SessionUp { kind: Some(kind) })) => self.handle(kind).await?,
                    Ok(Some(_)) => {}
                    Ok(None) => return Ok(()),
                    Err(e) => return Err(e.message().to_string()),
                },
                commit = watch.recv() => {
                    let mut relevant = match &commit {
                        Ok(c) => self.concerns_node(c),
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                        Err(_) => return Err("the store closed".into()),
                    };
                    // Coalesce commits that are already waiting.
                    loop {
                        match watch.try_recv() {
                            Ok(c) => relevant |= self.concerns_node(&c),
                            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(_)) => relevant = true,
                            Err(_) => break,
                        }
                    }
                    if relevant {
                        self.push_assignments(false).await?;
                    }
                }
                Some(request) = requests.recv() => self.send(Ok(request)).await?,
                Some(()) = ready_done.recv() => self.marking_ready = false,
                _ = tick.tick() => {
                    if !self.m.raft.is_leader() {
                        // Leadership moved: send the node to the new leader.
                        self.send(redirect(&self.m)).await?;
                        return Ok(());
                    }
                    if let Err(e) = caller.check_current(&self.m.revocations) {
                        let _ = self.send(Err(e)).await;
                        return Err("the node's certificate is no longer valid".into());
                    }
                }
            }
        }
    }

    /// Records the node's hello: ready, hostname, address and capacity.
    async fn register(&self, hello: &Hello) -> Result<Node, String> {
        let m = &self.m;
        let Some(node) = m.store().view(|tx| tx.get::<Node>(&self.node_id)) else {
            let _ = self
                .send(Err(Status::permission_denied(
                    "this node was removed from the cluster; join it again with a token",
                )))
                .await;
            return Err("the node is not in the cluster".into());
        };
        let host_only = hello
            .addr
            .parse::<std::net::SocketAddr>()
            .map(|s| s.ip().to_string())
            .unwrap_or_else(|_| hello.addr.clone());
        let resources =
            (hello.nano_cpus > 0 || hello.memory_bytes > 0).then_some(ResourceAmounts {
                nano_cpus: hello.nano_cpus,
                memory_bytes: hello.memory_bytes,
            });
        let mut n = node.clone();
        n.status = NodeStatus::Ready;
        if !hello.hostname.is_empty() && hello.hostname.len() <= 253 {
            n.hostname = hello.hostname.clone();
        }
        if !host_only.is_empty() {
            n.addr = host_only;
        }
        if resources.is_some() {
            n.resources = resources;
        }
        if n != node {
            // In the background: the session answers at once even while
            // Raft is slow (just after an election, say).
            let (m, id) = (Arc::clone(m), self.node_id.clone());
            tokio::spawn(async move {
                if let Err(e) = m.store().put(n).await {
                    // The next heartbeat marks it ready; the rest waits for
                    // the next session.
                    tracing::debug!(node = %id, "recording the node's hello failed: {e}");
                }
            });
        }
        Ok(node)
    }

    /// Handles one message from the node. Nothing here waits for a store
    /// write: writes run in the background (their answers, like an ack, are
    /// sent when they are done), so heartbeats are answered at once.
    async fn handle(&mut self, kind: Up) -> Result<(), String> {
        seen(&self.m, &self.node_id, None);
        match kind {
            Up::Hello(_) => Ok(()),
            Up::Heartbeat(_) => {
                let node = self.m.store().view(|tx| tx.get::<Node>(&self.node_id));
                let Some(node) = node else {
                    let _ = self
                        .send(Err(Status::permission_denied(
                            "this node was removed from the cluster; join it again with a token",
                        )))
                        .await;
                    return Err("the node was removed".into());
                };
                if node.status != NodeStatus::Ready && !self.marking_ready {
                    self.marking_ready = true;
                    let mut n = node.clone();
                    n.status = NodeStatus::Ready;
                    let (m, id, done) = (
                        Arc::clone(&self.m),
                        self.node_id.clone(),
                        self.ready_marked.clone(),
                    );
                    tokio::spawn(async move {
                        // A conflict means someone else just wrote the node:
                        // the next heartbeat tries again.
                        if let Err(e) = m.store().put(n).await {
                            tracing::debug!(node = %id, "marking the node ready failed: {e}");
                        }
                        let _ = done.send(());
                    });
                }
                self.send(info(&self.m, Some(&node))).await
            }
            Up::Statuses(batch) => {
                // The node sends one batch at a time and waits for its ack.
                let (m, id, tx) = (Arc::clone(&self.m), self.node_id.clone(), self.tx.clone());
                tokio::spawn(async move {
                    let answer = match apply_statuses(&m, &id, batch.statuses).await {
                        Ok(refused) => down(Down::Ack(StatusAck {
                            seq: batch.seq,
                            refused,
                        })),
                        // Not acknowledged: the session ends and the node
                        // sends them again on its next one.
                        Err(e) => Err(e),
                    };
                    let _ = tx.send(answer).await;
                });
                Ok(())
            }
            Up::Logs(chunk) => {
                if !self.m.logs.publish(&self.node_id, chunk.clone()) && !chunk.done {
                    // Nobody listens any more: stop the node's reader.
                    self.send(down(Down::LogCancel(
                        agent_common::dispatcher_proto::LogCancel {
                            id: chunk.request_id,
                        },
                    )))
                    .await?;
                }
                Ok(())
            }
        }
    }

    /// Whether a commit changed a task of this node.
    fn concerns_node(&self, commit: &crate::store::Commit) -> bool {
        let mine = |o: &Object| matches!(o, Object::Task(t) if t.node_id.as_deref() == Some(self.node_id.as_str()));
        commit.changes.iter().any(|c| match c {
            crate::store::Change::Updated { old, new } => mine(old) || mine(new),
            other => mine(other.object()),
        })
    }

    /// Sends the node's tasks: all of them (`complete`) or those changed
    /// since the last message, with the IDs of those gone.
    async fn push_assignments(&mut self, complete: bool) -> Result<(), String> {
        let tasks = node_tasks(&self.m, &self.node_id);
        let (changed, removed): (Vec<&Task>, Vec<String>) = if complete {
            (tasks.iter().collect(), Vec::new())
        } else {
            let ids: std::collections::HashSet<&str> =
                tasks.iter().map(|t| t.meta.id.as_str()).collect();
            (
                tasks
                    .iter()
                    .filter(|t| self.sent.get(&t.meta.id) != Some(&t.meta.version))
                    .collect(),
                self.sent
                    .keys()
                    .filter(|id| !ids.contains(id.as_str()))
                    .cloned()
                    .collect(),
            )
        };
        if !complete && changed.is_empty() && removed.is_empty() {
            return Ok(());
        }
        let tasks_json = serde_json::to_string(&changed).map_err(|e| e.to_string())?;
        self.sent = tasks
            .iter()
            .map(|t| (t.meta.id.clone(), t.meta.version))
            .collect();
        self.send(down(Down::Assignments(Assignments {
            complete,
            tasks_json,
            removed,
        })))
        .await
    }
}

fn node_tasks(m: &Manager, node_id: &str) -> Vec<Task> {
    m.store()
        .view(|tx| tx.find::<Task>(|t| t.node_id.as_deref() == Some(node_id)))
}

fn parse_state(s: &str) -> Option<TaskState> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase())).ok()
}

/// Applies one node's state reports in one store write (retried on a
/// conflicting write): forward-only transitions of the node's own tasks.
/// Returns the reports refused for good; stale or repeated reports (normal
/// after reconnects) are skipped silently.
async fn apply_statuses(
    m: &Manager,
    node_id: &str,
    statuses: Vec<TaskStatus>,
) -> Result<Vec<RefusedStatus>, Status> {
    for _attempt in 0..10 {
        let (updates, refused) = m.store().view(|tx| {
            let mut changed: HashMap<String, Task> = HashMap::new();
            let mut order: Vec<String> = Vec::new();
            let mut refused = Vec::new();
            for st in &statuses {
                let Some(to) = parse_state(&st.state) else {
                    refused.push(RefusedStatus {
                        task_id: st.task_id.clone(),
                        reason: format!("unknown task state {:?}", st.state),
                    });
                    continue;
                };
                let Some(mut task) = changed
                    .get(&st.task_id)
                    .cloned()
                    .or_else(|| tx.get::<Task>(&st.task_id))
                else {
                    continue; // removed meanwhile: nothing to report to
                };
                if task.node_id.as_deref() != Some(node_id) {
                    refused.push(RefusedStatus {
                        task_id: st.task_id.clone(),
                        reason: format!("task {} is not assigned to node {node_id}", st.task_id),
                    });
                    continue;
                }
                if task.state == to {
                    continue;
                }
                if let Err(e) = task.state.transition(to, Writer::Agent) {
                    tracing::debug!(task = %task.meta.id, "ignored status report: {e}");
                    continue;
                }
                task.state = to;
                if to == TaskState::Running {
                    task.running_at = Some(
                        std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .map(|d| d.as_nanos() as u64)
                            .unwrap_or(0),
                    );
                }
                task.message = st.message.clone();
                if !st.container_id.is_empty() {
                    task.container_id = st.container_id.clone();
                }
                if st.has_exit_code {
                    task.exit_code = Some(st.exit_code);
                }
                if !st.error.is_empty() {
                    task.error = st.error.clone();
                }
                if !changed.contains_key(&st.task_id) {
                    order.push(st.task_id.clone());
                }
                changed.insert(st.task_id.clone(), task);
            }
            let updates: Vec<crate::store::Action> = order
                .iter()
                .filter_map(|id| changed.remove(id))
                .map(|t| crate::store::Action::Update(Object::Task(t)))
                .collect();
            (updates, refused)
        });
        if updates.is_empty() {
            return Ok(refused);
        }
        match m.store().update(updates).await {
            Ok(_) => return Ok(refused),
            // Someone wrote one of the tasks meanwhile: read them again.
            Err(e) if e.is_conflict() => continue,
            Err(e) => return Err(super::store_status(e)),
        }
    }
    Err(Status::aborted(
        "the tasks kept changing while their states were stored; sending them again",
    ))
}

/// While this manager leads: marks down the nodes that stayed silent longer
/// than their [`Liveness::grace`]. Every node starts with a fresh grace
/// when this manager becomes leader, and when it reaches a quorum again
/// after it could not.
pub async fn monitor_liveness(m: Arc<Manager>) {
    // The term this manager led in at the last look: a new term (even one
    // won again between two looks) starts every node's grace afresh.
    let mut led: Option<u64> = None;
    loop {
        let p = period(&m);
        tokio::time::sleep(p / 4).await;
        let term = m.raft.leader_term();
        if term.is_none() {
            led = None;
            continue;
        }
        let now = Instant::now();
        if term != led {
            led = term;
            if let Ok(mut l) = m.liveness.lock() {
                // Sessions opened before this manager led (it was a follower
                // redirecting them) do not exist; keep the ones opened since.
                l.retain(|_, v| matches!(v.session, SessionState::Open(_)));
                for v in l.values_mut() {
                    v.last_seen = now;
                }
            }
        }
        let nodes = m.store().view(|tx| tx.list::<Node>());
        let mut late = Vec::new();
        if let Ok(mut l) = m.liveness.lock() {
            for n in &nodes {
                let entry = *l.entry(n.meta.id.clone()).or_insert(Liveness {
                    last_seen: now,
                    session: SessionState::NotYet,
                });
                if n.status != NodeStatus::Down
                    && now.duration_since(entry.last_seen) > entry.grace(p)
                {
                    late.push((n.clone(), entry.session));
                }
            }
        }
        // Only a leader that reaches a quorum now judges nodes: one that
        // could not (a manager down in a two-manager cluster) served no
        // sessions meanwhile, so nodes get a fresh grace once it can again.
        // (Checked only when a node looks late: the check costs a round
        // trip, and openraft logs an error for every member it misses.)
        if !late.is_empty() {
            let quorum = tokio::time::timeout(p / 2, m.store().read_linearizable(|_| ())).await;
            if !matches!(quorum, Ok(Ok(()))) {
                led = None;
                continue;
            }
        }
        for (mut n, session) in late {
            let id = n.meta.id.clone();
            n.status = NodeStatus::Down;
            match m.store().put(n).await {
                Ok(_) => match session {
                    SessionState::Open(_) => {
                        tracing::warn!(node = %id, "node missed {MISSED_HEARTBEATS} heartbeats: marked down")
                    }
                    SessionState::Closed => {
                        tracing::warn!(node = %id, "node's session closed and it did not open another: marked down")
                    }
                    SessionState::NotYet => {
                        tracing::warn!(node = %id, "node opened no session with the new leader: marked down")
                    }
                },
                Err(e) => tracing::debug!(node = %id, "marking the node down failed: {e}"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_closed_session_is_given_less_time_than_a_silent_one() {
        let p = Duration::from_millis(1000);
        let at = |session| Liveness {
            last_seen: Instant::now(),
            session,
        };
        assert_eq!(at(SessionState::Open(1)).grace(p), p * 3);
        assert_eq!(at(SessionState::Closed).grace(p), p);
        assert_eq!(at(SessionState::NotYet).grace(p), p * 6);
        // Under a new leader a fast heartbeat still leaves time to notice a
        // silent old leader (at least 2 s on the node) and reconnect.
        let fast = Duration::from_millis(100);
        assert_eq!(at(SessionState::NotYet).grace(fast), MIN_NEW_LEADER_GRACE);
    }

    #[test]
    fn state_names_parse_case_insensitively_and_unknown_ones_do_not() {
        assert_eq!(parse_state("running"), Some(TaskState::Running));
        assert_eq!(parse_state("FAILED"), Some(TaskState::Failed));
        assert_eq!(parse_state("exploded"), None);
    }
}

//! The node's session with the leader (`Dispatcher::Session`): one
//! bidirectional gRPC stream over mutual TLS carrying everything the node
//! and the managers say to each other after joining.
//!
//! Up: a hello (hostname, address, capacity), a heartbeat every period, the
//! outbox's state reports one batch at a time (a batch is dropped from the
//! outbox only when the leader acknowledged it), and log lines. Down: session
//! info answering each heartbeat (managers, period, this node's role), the
//! node's assignments (complete when the session opens, then changes),
//! acknowledgements, and log requests and cancellations.
//!
//! The session is opened with any manager; one that is not the leader
//! redirects to it. When the stream breaks, or the leader stays silent for
//! [`SILENT_PERIODS`] periods, the node opens a new session with the next
//! manager. Containers keep running meanwhile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent_common::dispatcher_proto::session_down::Kind as Down;
use agent_common::dispatcher_proto::session_up::Kind as Up;
use agent_common::dispatcher_proto::{Heartbeat, Hello, SessionDown, SessionUp, TaskStatusBatch};
use agent_common::objects::Task;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::reporter::{to_proto, Backoff, Outbox};
use super::{logs, Assignments};
use crate::cluster::membership::Membership;
use crate::engine::Engine;

/// The node gives up on a leader that said nothing for this many periods
/// (and at least [`MIN_SILENCE`]).
pub const SILENT_PERIODS: u32 = 3;
/// A busy leader may answer late under load: never give up on it sooner.
pub const MIN_SILENCE: Duration = Duration::from_secs(2);
/// How long opening a session may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a session ended.
enum Ended {
    /// The manager is not the leader; it named this one (empty: unknown).
    Redirected(String),
    /// The node renewed its certificate: open a new session to present it.
    Renewed,
    /// The stream broke or was refused.
    Failed(String),
    /// The cluster removed this node (its certificate is revoked): there is
    /// no point in trying again.
    Removed(String),
}

/// How a refused call ended the session: removal (the manager's permission
/// refusal, or a TLS refusal of the revoked certificate) or a failure worth
/// retrying.
fn ended_by(status: &tonic::Status) -> Ended {
    let removed = status.code() == tonic::Code::PermissionDenied
        || agent_common::tls::explain::is_revoked(status);
    let why =
        agent_common::tls::explain::explain(status).unwrap_or_else(|| status.message().to_string());
    if removed {
        Ended::Removed(why)
    } else {
        Ended::Failed(why)
    }
}

/// The node's CPUs (in billionths) and memory (bytes), as the host has them.
pub fn capacity() -> (u64, u64) {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get() as u64)
        .unwrap_or(1);
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0);
    (cpus * 1_000_000_000, memory)
}

/// Keeps a session with the leader open until the cluster removes this
/// node: then says so once, retires the node's cluster files (a worker's;
/// see [`Membership::retire`]) and returns. The node's containers stay, and
/// its daemon keeps serving the engine API.
pub async fn run(
    engine: Arc<Engine>,
    membership: Arc<Membership>,
    outbox: Outbox,
    assignments: watch::Sender<Assignments>,
) {
    let node_id = membership.node_id();
    let mut index = 0usize;
    let mut hint: Option<String> = None;
    let mut backoff = Backoff::default();
    loop {
        let (managers, _, period) = membership.snapshot();
        let Some(target) = hint
            .take()
            .or_else(|| managers.get(index % managers.len().max(1)).cloned())
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut s = Session {
            engine: Arc::clone(&engine),
            membership: Arc::clone(&membership),
            outbox: outbox.clone(),
            assignments: &assignments,
            node_id: &node_id,
            target: &target,
            period,
            tasks: HashMap::new(),
            readers: HashMap::new(),
            established: false,
        };
        let ended = s.serve().await;
        for (_, reader) in s.readers.drain() {
            reader.abort();
        }
        if s.established {
            // Failures before a good session do not slow the next recovery.
            backoff.reset();
        }
        match ended {
            Ended::Redirected(leader) if !leader.is_empty() && leader != target => {
                backoff.reset();
                hint = Some(leader);
            }
            Ended::Redirected(_) => {
                // An election is running: ask again soon.
                tokio::time::sleep(period / 2).await;
            }
            Ended::Renewed => hint = Some(target),
            Ended::Removed(why) => {
                let retired = membership.retire();
                match retired {
                    Ok(Some(dir)) => tracing::warn!(
                        manager = %target,
                        "this node was removed from the cluster; it stops taking part and runs on as a plain engine: its containers stay and its socket keeps serving the engine API. Its cluster files were moved to {}; to join a cluster again, run `flotilla-worker join --token TOKEN MANAGER-ADDR` (the manager said: {why})",
                        dir.display()
                    ),
                    Ok(None) => tracing::warn!(
                        manager = %target,
                        "this node was removed from the cluster; its agent stops, its containers stay (the manager said: {why})"
                    ),
                    Err(e) => tracing::warn!(
                        manager = %target,
                        "this node was removed from the cluster; it runs on as a plain engine, but its cluster files could not be moved aside ({e}): remove them before joining again (the manager said: {why})"
                    ),
                }
                return;
            }
            Ended::Failed(e) => {
                if backoff.failures % 20 == 0 {
                    tracing::warn!(manager = %target, "session with the managers ended (will retry): {e}");
                }
                index = index.wrapping_add(1);
                // Try the next manager at once, but do not spin when every
                // one of them is down.
                tokio::time::sleep(backoff.failed()).await;
            }
        }
    }
}

struct Session<'a> {
    engine: Arc<Engine>,
    membership: Arc<Membership>,
    outbox: Outbox,
    assignments: &'a watch::Sender<Assignments>,
    node_id: &'a str,
    target: &'a str,
    period: Duration,
    /// This node's tasks as the leader sent them.
    tasks: HashMap<String, Task>,
    /// Log requests being answered, by request ID.
    readers: HashMap<String, JoinHandle<()>>,
    /// The leader answered at least once.
    established: bool,
}

impl Session<'_> {
    async fn serve(&mut self) -> Ended {
        let mut client = match self.membership.clients.dispatcher(self.target) {
            Ok(c) => c,
            Err(e) => return Ended::Failed(e.to_string()),
        };
        // Two queues into the one stream: the session's own messages
        // (heartbeats, reports) and log lines, which may fill theirs without
        // ever holding up a heartbeat.
        let (up, up_rx) = mpsc::channel::<SessionUp>(64);
        let (log_up, log_rx) = mpsc::channel::<SessionUp>(16);
        let (_, advertise, _) = self.membership.snapshot();
        let (nano_cpus, memory_bytes) = capacity();
        let hello = Hello {
            hostname: self.membership.hostname.clone(),
            addr: advertise,
            nano_cpus,
            memory_bytes,
        };
        if up
            .send(SessionUp {
                kind: Some(Up::Hello(hello)),
            })
            .await
            .is_err()
        {
            return Ended::Failed("the session closed".into());
        }
        let opened = tokio::time::timeout(
            OPEN_TIMEOUT,
            client.session(tokio_stream::StreamExt::merge(
                tokio_stream::wrappers::ReceiverStream::new(up_rx),
                tokio_stream::wrappers::ReceiverStream::new(log_rx),
            )),
        )
        .await;
        let mut inbound = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(s)) => return ended_by(&s),
            Err(_) => return Ended::Failed(format!("no answer within {OPEN_TIMEOUT:?}")),
        };
        let mut heartbeat = tokio::time::interval(self.period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        heartbeat.tick().await;
        let silence = (self.period * SILENT_PERIODS).max(MIN_SILENCE);
        // The leader answers every heartbeat: a leader silent this long is
        // gone (or cut off) even if the connection looks open.
        let mut silent_until = tokio::time::Instant::now() + silence;
        let mut seq = 0u64;
        // The batch in flight: its seq and how many reports it holds.
        let mut in_flight: Option<(u64, usize)> = None;
        loop {
            if in_flight.is_none() {
                let batch = self.outbox.peek();
                if !batch.is_empty() {
                    seq += 1;
                    let msg = SessionUp {
                        kind: Some(Up::Statuses(TaskStatusBatch {
                            seq,
                            statuses: batch.iter().map(to_proto).collect(),
                        })),
                    };
                    // Never wait on a full queue here: the silence deadline
                    // must stay watched. A batch that does not fit is sent
                    // on a later turn.
                    match up.try_send(msg) {
                        Ok(()) => in_flight = Some((seq, batch.len())),
                        Err(mpsc::error::TrySendError::Full(_)) => {}
                        Err(mpsc::error::TrySendError::Closed(_)) => {
                            return Ended::Failed("the session closed".into());
                        }
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep_until(silent_until) => {
                    return Ended::Failed(format!("the leader said nothing for {silence:?}"));
                }
                msg = inbound.message() => {
                    silent_until = tokio::time::Instant::now() + silence;
                    self.established = true;
                    let msg = match msg {
                        Err(s) => return ended_by(&s),
                        Ok(None) => return Ended::Failed("the leader closed the session".into()),
                        Ok(Some(SessionDown { kind: None })) => continue,
                        Ok(Some(SessionDown { kind: Some(k) })) => k,
                    };
                    match msg {
                        Down::Info(info) => {
                            self.membership.absorb(&info);
                            if self.membership.renew_if_due(self.target, &info.role).await {
                                return Ended::Renewed;
                            }
                        }
                        Down::Redirect(r) => return Ended::Redirected(r.leader_addr),
                        Down::Assignments(a) => {
                            if let Err(e) = self.take_assignments(a) {
                                return Ended::Failed(e);
                            }
                        }
                        Down::Ack(ack) => {
                            if let Some((s, n)) = in_flight {
                                if s == ack.seq {
                                    // The whole batch leaves the outbox,
                                    // refused reports too (they would be
                                    // refused again); later ones stand on
                                    // their own.
                                    self.outbox.ack(n);
                                    for r in ack.refused {
                                        tracing::info!(task = %r.task_id, "the leader refused a state report: {}", r.reason);
                                    }
                                    in_flight = None;
                                }
                            }
                        }
                        Down::LogRequest(req) => {
                            let id = req.id.clone();
                            let reader = tokio::spawn(logs::answer(Arc::clone(&self.engine), req, log_up.clone()));
                            self.readers.retain(|_, r| !r.is_finished());
                            self.readers.insert(id, reader);
                        }
                        Down::LogCancel(c) => {
                            if let Some(r) = self.readers.remove(&c.id) {
                                r.abort();
                            }
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    let msg = SessionUp { kind: Some(Up::Heartbeat(Heartbeat {})) };
                    // A full queue means the connection is not draining: skip
                    // this heartbeat (the silence deadline decides).
                    if let Err(mpsc::error::TrySendError::Closed(_)) = up.try_send(msg) {
                        return Ended::Failed("the session closed".into());
                    }
                }
                _ = self.outbox.queued(), if in_flight.is_none() => {}
            }
        }
    }

    /// Applies an assignments message and publishes the node's tasks.
    fn take_assignments(
        &mut self,
        a: agent_common::dispatcher_proto::Assignments,
    ) -> Result<(), String> {
        let changed: Vec<Task> = serde_json::from_str(&a.tasks_json)
            .map_err(|e| format!("the assignments from {} are unreadable: {e}", self.target))?;
        if a.complete {
            self.tasks.clear();
        }
        for id in &a.removed {
            self.tasks.remove(id);
        }
        for t in changed {
            // Defensive: only this node's tasks.
            if t.node_id.as_deref() == Some(self.node_id) {
                self.tasks.insert(t.meta.id.clone(), t);
            } else {
                self.tasks.remove(&t.meta.id);
            }
        }
        let mut tasks: Vec<Task> = self.tasks.values().cloned().collect();
        tasks.sort_by(|a, b| a.meta.id.cmp(&b.meta.id));
        self.assignments.send_replace(Some(Arc::new(tasks)));
        Ok(())
    }
}

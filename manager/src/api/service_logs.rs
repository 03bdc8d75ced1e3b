//! `service logs [-f]` on the leader: asks every node running (or having
//! run) a task of the service for its containers' output through the log
//! broker, and streams it to the caller.
//!
//! Without follow: one reply, every node's lines in time order (a node that
//! does not answer within [`ANSWER_TIMEOUT`] is named in a line instead).
//! With follow: that first reply, then lines as the nodes send them; every
//! [`RESCAN`] the service's tasks are looked at again, so tasks that start
//! later (and nodes that reconnected) are followed too, until the caller
//! hangs up or the service is removed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use agent_common::cluster::ServiceLogLine;
use agent_common::control_proto::JsonReply;
use agent_common::dispatcher_proto::LogChunk;
use agent_common::objects::{Node, Service, Task};
use tokio::sync::mpsc;
use tonic::Status;

use super::services::resolve;
use super::store_status;
use crate::daemon::Manager;
use crate::logs::LogSubscription;

/// How long a node has to send its first chunk.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a follow looks for new tasks.
pub const RESCAN: Duration = Duration::from_secs(1);
/// Chunks a follow holds for a slow caller; the nodes wait beyond that.
const FOLLOW_BUFFER: usize = 64;

/// What the follow loop knows of the service's tasks.
#[derive(Default)]
struct Names {
    /// Container ID → `<service>.<slot>.<task id>`.
    tasks: HashMap<String, String>,
    /// Node ID → hostname.
    hosts: HashMap<String, String>,
}

impl Names {
    fn read(service: &Service, tasks: &[Task], nodes: &[Node]) -> Names {
        let hosts = nodes
            .iter()
            .map(|n| (n.meta.id.clone(), n.hostname.clone()))
            .collect();
        let tasks = tasks
            .iter()
            .filter(|t| t.service_id == service.meta.id && !t.container_id.is_empty())
            .map(|t| {
                let slot = if t.slot > 0 {
                    t.slot.to_string()
                } else {
                    t.node_id.clone().unwrap_or_default()
                };
                (
                    t.container_id.clone(),
                    format!("{}.{}.{}", t.service_name, slot, t.meta.id),
                )
            })
            .collect();
        Names { tasks, hosts }
    }

    fn host(&self, node: &str) -> String {
        self.hosts
            .get(node)
            .cloned()
            .unwrap_or_else(|| node.to_string())
    }

    fn lines(&self, node: &str, chunk: LogChunk) -> Vec<ServiceLogLine> {
        let host = self.host(node);
        let mut out = Vec::with_capacity(chunk.lines.len() + 1);
        if !chunk.error.is_empty() {
            out.push(note(&host, &chunk.error));
        }
        out.extend(chunk.lines.into_iter().map(|l| ServiceLogLine {
            task: self.tasks.get(&l.container_id).cloned().unwrap_or_default(),
            node: host.clone(),
            stderr: l.stderr,
            text: l.text,
            time_nanos: l.time_nanos,
        }));
        out
    }
}

/// A line that is not from a container but about a node.
fn note(host: &str, text: &str) -> ServiceLogLine {
    ServiceLogLine {
        task: String::new(),
        node: host.to_string(),
        stderr: true,
        text: format!("({text})\n"),
        time_nanos: i64::MAX,
    }
}

/// The service's containers per node.
fn containers_by_node(service: &Service, tasks: &[Task]) -> HashMap<String, Vec<String>> {
    let mut by_node: HashMap<String, Vec<String>> = HashMap::new();
    for t in tasks
        .iter()
        .filter(|t| t.service_id == service.meta.id && !t.container_id.is_empty())
    {
        if let Some(n) = &t.node_id {
            by_node
                .entry(n.clone())
                .or_default()
                .push(t.container_id.clone());
        }
    }
    by_node
}

async fn read(m: &Manager, reference: &str) -> Result<(Service, Vec<Task>, Vec<Node>), Status> {
    m.store()
        .read_linearizable(|tx| {
            resolve(tx, reference).map(|s| (s, tx.list::<Task>(), tx.list::<Node>()))
        })
        .await
        .map_err(store_status)?
}

/// Most bytes of log text in one reply (gRPC clients accept 4 MB).
const REPLY_BYTES: usize = 1 << 20;

/// Sends `lines` in replies of at most about [`REPLY_BYTES`] each. False
/// when the caller hung up.
async fn send_lines(
    out: &mpsc::Sender<Result<JsonReply, Status>>,
    lines: &[ServiceLogLine],
) -> bool {
    let mut start = 0;
    while start < lines.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < lines.len() && (end == start || bytes + lines[end].text.len() < REPLY_BYTES) {
            bytes += lines[end].text.len() + lines[end].task.len() + 64;
            end += 1;
        }
        let reply = serde_json::to_string(&lines[start..end])
            .map(|json| JsonReply { json })
            .map_err(|e| Status::internal(e.to_string()));
        if out.send(reply).await.is_err() {
            return false;
        }
        start = end;
    }
    true
}

/// Streams the logs of service `reference` into `out` (see the module).
/// Returns when done, when the caller hung up, or with the error to send.
pub async fn stream(
    m: Arc<Manager>,
    reference: String,
    tail: i64,
    follow: bool,
    out: mpsc::Sender<Result<JsonReply, Status>>,
) {
    if let Err(e) = serve(&m, &reference, tail, follow, &out).await {
        let _ = out.send(Err(e)).await;
    }
}

async fn serve(
    m: &Manager,
    reference: &str,
    tail: i64,
    follow: bool,
    out: &mpsc::Sender<Result<JsonReply, Status>>,
) -> Result<(), Status> {
    let (service, tasks, nodes) = read(m, reference).await?;
    let mut names = Names::read(&service, &tasks, &nodes);
    let mut first = Vec::new();
    let mut subs: Vec<LogSubscription> = Vec::new();
    // Container → the session generation of the node following it.
    let mut followed: HashMap<String, (String, u64)> = HashMap::new();
    for (node, containers) in containers_by_node(&service, &tasks) {
        match m.logs.subscribe(&node, containers.clone(), tail, follow) {
            Some(sub) => {
                for c in containers {
                    followed.insert(c, (node.clone(), sub.generation));
                }
                subs.push(sub);
            }
            None => first.push(note(
                &names.host(&node),
                "this node has no session with the leader: is it down?",
            )),
        }
    }
    // The first chunk of every node (all of it without follow).
    let firsts = subs.iter_mut().map(|sub| async {
        let mut lines = Vec::new();
        let mut error = String::new();
        let deadline = tokio::time::Instant::now() + ANSWER_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, sub.chunks.recv()).await {
                Ok(Some(chunk)) => {
                    let done = chunk.done;
                    if !chunk.error.is_empty() {
                        error = chunk.error.clone();
                    }
                    lines.extend(chunk.lines);
                    // With follow the first chunk is the initial tail.
                    if done || follow {
                        break;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    error = format!(
                        "no answer from this node within {} s: is it down?",
                        ANSWER_TIMEOUT.as_secs()
                    );
                    break;
                }
            }
        }
        (sub.node.clone(), lines, error)
    });
    for (node, lines, error) in futures_util::future::join_all(firsts).await {
        first.extend(names.lines(
            &node,
            LogChunk {
                request_id: String::new(),
                lines,
                error,
                done: false,
            },
        ));
    }
    first.sort_by_key(|l| l.time_nanos);
    // Nothing at all still gets one (empty) reply: the caller knows the
    // logs were read.
    let sent = if first.is_empty() {
        out.send(Ok(JsonReply { json: "[]".into() })).await.is_ok()
    } else {
        send_lines(out, &first).await
    };
    if !sent || !follow {
        return Ok(());
    }
    // Follow: every subscription feeds one channel.
    let (merged_tx, mut merged) = mpsc::channel::<(String, LogChunk)>(FOLLOW_BUFFER);
    for sub in subs {
        forward(sub, merged_tx.clone());
    }
    let mut rescan = tokio::time::interval(RESCAN);
    rescan.tick().await;
    loop {
        tokio::select! {
            _ = out.closed() => return Ok(()),
            Some((node, chunk)) = merged.recv() => {
                let lines = names.lines(&node, chunk);
                if !send_lines(out, &lines).await {
                    return Ok(());
                }
            }
            _ = rescan.tick() => {
                let Some((service, tasks, nodes)) = m.store().view(|tx| {
                    tx.get::<Service>(&service.meta.id)
                        .map(|s| (s, tx.list::<Task>(), tx.list::<Node>()))
                }) else {
                    return Ok(()); // the service was removed
                };
                names = Names::read(&service, &tasks, &nodes);
                for (node, containers) in containers_by_node(&service, &tasks) {
                    let Some(generation) = m.logs.generation(&node) else {
                        continue;
                    };
                    // New containers (all their lines), and containers of a
                    // node that reconnected (from now on).
                    let fresh: Vec<String> = containers
                        .iter()
                        .filter(|c| !followed.contains_key(*c))
                        .cloned()
                        .collect();
                    let reconnected: Vec<String> = containers
                        .iter()
                        .filter(|c| matches!(followed.get(*c), Some((_, g)) if *g != generation))
                        .cloned()
                        .collect();
                    for (list, tail) in [(fresh, -1), (reconnected, 0)] {
                        if list.is_empty() {
                            continue;
                        }
                        if let Some(sub) = m.logs.subscribe(&node, list.clone(), tail, true) {
                            for c in list {
                                followed.insert(c, (node.clone(), sub.generation));
                            }
                            forward(sub, merged_tx.clone());
                        }
                    }
                }
            }
        }
    }
}

/// Moves a subscription's chunks into `merged` until either side ends.
fn forward(mut sub: LogSubscription, merged: mpsc::Sender<(String, LogChunk)>) {
    tokio::spawn(async move {
        loop {
            let chunk = tokio::select! {
                chunk = sub.chunks.recv() => chunk,
                _ = merged.closed() => None,
            };
            let Some(chunk) = chunk else { break };
            let done = chunk.done;
            if merged.send((sub.node.clone(), chunk)).await.is_err() || done {
                break;
            }
        }
        // Dropping `sub` tells the node to stop if it still sends.
    });
}

//! `service logs` on the node side: the leader holds log requests for this
//! node (nodes listen on no port); this loop collects them with a long poll,
//! reads the requested containers' log files and publishes the lines back.

use std::sync::Arc;
use std::time::Duration;

use agent_common::dispatcher_proto::{LogLine, LogRequest, LogRequestsPoll, PublishLogsRequest};

use super::Managers;
use crate::engine::Engine;

/// Most lines sent per container when all are asked for.
const MAX_LINES: usize = 10_000;

/// The lines of one container's log file (the last `tail`, or all).
fn read_lines(engine: &Engine, container_id: &str, tail: i64) -> Result<Vec<LogLine>, String> {
    let path = engine.log_path(container_id);
    let bytes = std::fs::read(&path).map_err(|e| format!("container {container_id}: {e}"))?;
    let (lines, _) = crate::engine::io::parse_log(&bytes, true);
    let keep = if tail < 0 {
        MAX_LINES
    } else {
        (tail as usize).min(MAX_LINES)
    };
    let skip = lines.len().saturating_sub(keep);
    Ok(lines
        .into_iter()
        .skip(skip)
        .map(|l| LogLine {
            container_id: container_id.to_string(),
            stderr: l.stderr,
            text: String::from_utf8_lossy(&l.data).into_owned(),
            time_nanos: l.time_nanos,
        })
        .collect())
}

fn answer(engine: &Engine, req: &LogRequest) -> PublishLogsRequest {
    let mut lines = Vec::new();
    let mut errors = Vec::new();
    for id in &req.container_ids {
        match read_lines(engine, id, req.tail) {
            Ok(mut l) => lines.append(&mut l),
            Err(e) => errors.push(e),
        }
    }
    PublishLogsRequest {
        request_id: req.id.clone(),
        lines,
        error: errors.join("; "),
    }
}

/// Runs forever: poll the leader for log requests, answer each.
pub async fn run(engine: Arc<Engine>, managers: Managers) {
    let mut leader: Option<String> = None;
    loop {
        let Some(addr) = leader.clone().or_else(|| managers.current()) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Ok(mut client) = managers.clients.dispatcher(&addr) else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let reply = client
            .log_requests(LogRequestsPoll { wait_ms: 10_000 })
            .await;
        match reply {
            Ok(r) => {
                let r = r.into_inner();
                if !r.accepted {
                    leader = (!r.leader_addr.is_empty()).then_some(r.leader_addr);
                    continue;
                }
                for req in r.requests {
                    let engine = Arc::clone(&engine);
                    let mut client = client.clone();
                    tokio::spawn(async move {
                        let msg = tokio::task::spawn_blocking(move || answer(&engine, &req)).await;
                        if let Ok(msg) = msg {
                            if let Err(e) = client.publish_logs(msg).await {
                                tracing::debug!("publishing logs failed: {}", e.message());
                            }
                        }
                    });
                }
            }
            Err(_) => {
                leader = None;
                managers.rotate(&addr);
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

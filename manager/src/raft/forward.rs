//! Leader transparency: a member that is not the leader forwards store
//! writes, linearizable reads and membership changes to the leader over the
//! peer transport, so a client may talk to any manager.
//!
//! ```text
//!  follower: Store::update ─► RaftProposer ─► Forwarder::propose
//!      ─► Propose RPC ─► leader: client_write ─► commit ─► { log index, outcome }
//!      ◄─ wait until the local state machine applied that index ◄─┘
//!  follower: read_linearizable ─► ReadIndex RPC ─► leader: quorum check
//!      ◄─ { read index } ─► wait until applied ≥ read index ─► read locally
//! ```
//!
//! Retries, bounded by the write timeout, happen only where nothing can have
//! been appended: no leader known yet, a "not the leader" answer (openraft
//! refused before appending, or truncated the entry), or a connection that
//! could not be opened. A forwarded write whose fate is unknown (the leader
//! went away mid-call, or no commit before the timeout) is reported as
//! [`ProposeError::Indeterminate`], never retried blindly: it may have
//! committed. Reads are idempotent and retried on any failure.
//!
//! What it does not own: the leader-side membership logic
//! (`super::membership`), which uses [`Forwarder::call`] to reach the leader.

use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::network::GrpcNetwork;
use super::pb::RaftRequest;
use super::typ::Raft;
use super::{ManagerNode, NodeId};
use crate::store::{Batch, BatchOutcome, ProposeError};

/// Why a request found no leader.
const NO_LEADER: &str = "no leader is known: no quorum of managers is reachable from this manager (or an election is under way); see `flotilla node ls --local` (this manager's copy, possibly stale)";

/// How long to wait before retrying when no usable leader is known.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The leader's answer to a forwarded batch.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct Proposed {
    /// The log index the batch committed at.
    pub log_index: u64,
    /// The state machine's outcome.
    pub outcome: BatchOutcome,
}

/// The leader's answer to a read-index request.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) struct ReadIndex {
    /// Apply at least up to this index before reading.
    pub index: Option<u64>,
}

/// Why the leader did not serve a forwarded write or read.
#[derive(Serialize, Deserialize, Clone, Debug, thiserror::Error)]
pub enum ForwardError {
    /// The member asked is not the leader; nothing was appended. Retryable.
    #[error("manager is not the Raft leader (leader: {})", leader_id.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()))]
    NotLeader {
        /// The leader it knows of.
        leader_id: Option<NodeId>,
    },
    /// Nothing was done (e.g. no quorum for a read). Retryable.
    #[error("the leader could not serve the request: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// The write may or may not have committed.
    #[error("the outcome of the write is unknown: {reason}")]
    Indeterminate {
        /// Why.
        reason: String,
    },
}

/// A forwarded call's transport failure.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CallError {
    /// The request never left this member (no channel, connection refused):
    /// safe to retry.
    #[error("failed to reach {addr}: {reason}")]
    NotSent {
        /// The leader's Raft address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The call failed after it may have been delivered.
    #[error("the call to {addr} failed: {source}")]
    Failed {
        /// The leader's Raft address.
        addr: String,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// The reply could not be decoded.
    #[error("failed to decode the reply from {addr}: {source}")]
    Codec {
        /// The leader's Raft address.
        addr: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
}

/// Which forwarding RPC to call.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rpc {
    Propose,
    ReadIndex,
    ChangeMembership,
}

/// True if `status` says the request was never sent: the connection to the
/// peer could not be opened.
fn never_sent(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Unavailable {
        return false;
    }
    let mut cause: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionRefused
                    | std::io::ErrorKind::NotFound
                    | std::io::ErrorKind::AddrNotAvailable
            );
        }
        cause = e.source();
    }
    false
}

/// Commits `batch` on this member, which should be the leader (the handler
/// of a forwarded `Propose`).
pub(crate) async fn lead_propose(
    raft: &Raft,
    batch: Batch,
    timeout: Duration,
) -> Result<Proposed, ForwardError> {
    match tokio::time::timeout(timeout, raft.client_write(batch)).await {
        Err(_) => Err(ForwardError::Indeterminate {
            reason: format!("no commit within {timeout:?}"),
        }),
        Ok(Ok(resp)) => Ok(Proposed {
            log_index: resp.log_id.index,
            outcome: resp.data,
        }),
        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader_id: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(e))) => Err(ForwardError::Unavailable {
            reason: e.to_string(),
        }),
        // Raft stopped, possibly with the entry appended.
        Ok(Err(RaftError::Fatal(f))) => Err(ForwardError::Indeterminate {
            reason: f.to_string(),
        }),
    }
}

/// Confirms leadership with a quorum and returns the read index (the
/// handler of a forwarded `ReadIndex`).
pub(crate) async fn lead_read_index(
    raft: &Raft,
    timeout: Duration,
) -> Result<ReadIndex, ForwardError> {
    match tokio::time::timeout(timeout, raft.get_read_log_id()).await {
        Err(_) => Err(ForwardError::Unavailable {
            reason: format!("no quorum confirmed leadership within {timeout:?}"),
        }),
        Ok(Ok((read, _applied))) => Ok(ReadIndex {
            index: read.map(|l| l.index),
        }),
        Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
            Err(ForwardError::NotLeader {
                leader_id: f.leader_id,
            })
        }
        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
            Err(ForwardError::Unavailable {
                reason: no_quorum(raft, &q.got),
            })
        }
        Ok(Err(e)) => Err(ForwardError::Unavailable {
            reason: e.to_string(),
        }),
    }
}

/// What to tell a user whose read or write found no quorum: which voters
/// the leader heard from, out of which, and where to look.
pub(crate) fn no_quorum(raft: &Raft, got: &std::collections::BTreeSet<NodeId>) -> String {
    let m = raft.metrics().borrow().clone();
    let voters: Vec<String> = m
        .membership_config
        .membership()
        .voter_ids()
        .map(|v| v.to_string())
        .collect();
    let heard: Vec<String> = got.iter().map(|v| v.to_string()).collect();
    format!(
        "no quorum of managers is reachable: the leader (manager {}) hears from managers [{}] of the voters [{}], a quorum needs {}; bring managers back, and see `flotilla node ls --local` (this manager's copy, possibly stale)",
        m.id,
        heard.join(", "),
        voters.join(", "),
        voters.len() / 2 + 1
    )
}

/// Call forwarding `rpc` on the member at `addr` with `req` (JSON), bounded
/// by `timeout`, and decode its JSON reply.
pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
    network: &GrpcNetwork,
    addr: &str,
    rpc: Rpc,
    req: &Req,
    timeout: Duration,
) -> Result<Resp, CallError> {
    let mut client = network.client(addr).map_err(|e| CallError::NotSent {
        addr: addr.to_string(),
        reason: e.to_string(),
    })?;
    let data = serde_json::to_vec(req).map_err(|source| CallError::Codec {
        addr: addr.to_string(),
        source,
    })?;
    let mut request = tonic::Request::new(RaftRequest { data });
    request.set_timeout(timeout);
    let reply = match rpc {
        Rpc::Propose => client.propose(request).await,
        Rpc::ReadIndex => client.read_index(request).await,
        Rpc::ChangeMembership => client.change_membership(request).await,
    };
    let reply = match reply {
        Ok(r) => r.into_inner(),
        Err(status) if never_sent(&status) => {
            return Err(CallError::NotSent {
                addr: addr.to_string(),
                reason: status.to_string(),
            })
        }
        Err(source) => {
            return Err(CallError::Failed {
                addr: addr.to_string(),
                source,
            })
        }
    };
    serde_json::from_slice(&reply.data).map_err(|source| CallError::Codec {
        addr: addr.to_string(),
        source,
    })
}

/// Sends requests to whoever leads. Clones share the Raft handle and the
/// network's channels.
#[derive(Clone)]
pub(crate) struct Forwarder {
    pub id: NodeId,
    pub raft: Raft,
    pub network: GrpcNetwork,
    pub write_timeout: Duration,
}

/// Who this member believes leads, and that leader's record.
pub(crate) struct LeaderView {
    pub id: Option<NodeId>,
    pub node: Option<ManagerNode>,
}

impl Forwarder {
    /// The leader as this member's metrics know it.
    pub fn leader(&self) -> LeaderView {
        let m = self.raft.metrics();
        let m = m.borrow();
        let node = m
            .current_leader
            .and_then(|l| m.membership_config.membership().get_node(&l).cloned());
        LeaderView {
            id: m.current_leader,
            node,
        }
    }

    /// Wait until the known leader differs from `seen`, at most
    /// [`RETRY_PAUSE`] and never past `deadline`.
    pub async fn pause(&self, seen: Option<NodeId>, deadline: Instant) {
        let until = (Instant::now() + RETRY_PAUSE).min(deadline);
        let mut rx = self.raft.metrics();
        // A leader change wakes us early; otherwise wait the pause.
        let _ = tokio::time::timeout_at(until, async {
            let _ = rx.borrow_and_update();
            loop {
                if rx.changed().await.is_err() {
                    // Raft is shutting down: just wait out the pause.
                    std::future::pending::<()>().await;
                }
                if rx.borrow().current_leader != seen {
                    return;
                }
            }
        })
        .await;
    }

    /// Call `rpc` on the member at `addr` (see [`call`]).
    pub async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        addr: &str,
        rpc: Rpc,
        req: &Req,
        timeout: Duration,
    ) -> Result<Resp, CallError> {
        call(&self.network, addr, rpc, req, timeout).await
    }

    /// Wait (bounded) until the local state machine has applied `index`.
    async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ProposeError> {
        self.raft
            .wait(Some(timeout))
            .applied_index_at_least(Some(index), "catching up with the leader")
            .await
            .map(|_| ())
            .map_err(|e| match e {
                openraft::metrics::WaitError::ShuttingDown => ProposeError::Fatal(Box::new(e)),
                openraft::metrics::WaitError::Timeout(..) => ProposeError::Unavailable(Box::new(e)),
            })
    }

    /// Commit `batch` through whoever leads, and return once this member
    /// has applied it too (so the writer reads its own write here).
    pub async fn propose(&self, batch: Batch) -> Result<BatchOutcome, ProposeError> {
        let deadline = Instant::now() + self.write_timeout;
        let mut last = String::from(NO_LEADER);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::Unavailable(
                    format!(
                        "no leader accepted the write within {:?}: {last}",
                        self.write_timeout
                    )
                    .into(),
                ));
            }
            let remaining = deadline - now;
            let leader = self.leader();
            match (leader.id, leader.node) {
                (Some(l), _) if l == self.id => {
                    match tokio::time::timeout(remaining, self.raft.client_write(batch.clone()))
                        .await
                    {
                        Err(_) => {
                            return Err(ProposeError::Indeterminate(
                                format!("no commit within {:?}", self.write_timeout).into(),
                            ))
                        }
                        Ok(Ok(resp)) => return Ok(resp.data),
                        // Refused before appending, or appended and then
                        // truncated by a new leader: not committed.
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                            last = format!("leadership moved to {:?}", f.leader_id);
                        }
                        Ok(Err(RaftError::APIError(e))) => {
                            return Err(ProposeError::Unavailable(Box::new(e)))
                        }
                        Ok(Err(RaftError::Fatal(f))) => {
                            return Err(ProposeError::Fatal(Box::new(f)))
                        }
                    }
                }
                (Some(l), Some(node)) => {
                    // A little slack so the leader's own timeout answers first.
                    let timeout = remaining + Duration::from_secs(1);
                    let reply: Result<Result<Proposed, ForwardError>, CallError> = self
                        .call(&node.raft_addr, Rpc::Propose, &batch, timeout)
                        .await;
                    match reply {
                        Ok(Ok(p)) => {
                            // Committed. Read-your-writes on this member: wait
                            // for the local apply (bounded; a lagging member
                            // still acknowledges a committed write).
                            let wait = remaining.max(Duration::from_secs(1));
                            if let Err(e) = self.wait_applied(p.log_index, wait).await {
                                tracing::warn!(
                                    index = p.log_index,
                                    "a forwarded write committed but is not applied here yet: {e}"
                                );
                            }
                            return Ok(p.outcome);
                        }
                        Ok(Err(e @ ForwardError::Indeterminate { .. })) => {
                            return Err(ProposeError::Indeterminate(Box::new(e)))
                        }
                        Ok(Err(e)) => last = format!("leader {l}: {e}"),
                        Err(e @ CallError::NotSent { .. }) => last = e.to_string(),
                        Err(e) => return Err(ProposeError::Indeterminate(Box::new(e))),
                    }
                }
                (Some(l), None) => last = format!("leader {l} has no address in the membership"),
                (None, _) => last = NO_LEADER.into(),
            }
            self.pause(leader.id, deadline).await;
        }
    }

    /// Return once this member has applied every write committed before the
    /// call: on the leader openraft's `ensure_linearizable`, elsewhere the
    /// leader's read index and a wait for the local apply.
    pub async fn ensure_linearizable(&self) -> Result<(), ProposeError> {
        let deadline = Instant::now() + self.write_timeout;
        let mut last = String::from(NO_LEADER);
        loop {
            let now = Instant::now();
            if now >= deadline {
                return Err(ProposeError::Unavailable(
                    format!(
                        "no leader confirmed a read within {:?}: {last}",
                        self.write_timeout
                    )
                    .into(),
                ));
            }
            let remaining = deadline - now;
            let leader = self.leader();
            match (leader.id, leader.node) {
                (Some(l), _) if l == self.id => {
                    match tokio::time::timeout(remaining, self.raft.ensure_linearizable()).await {
                        Err(_) => last = "the leader's quorum check timed out".into(),
                        Ok(Ok(_)) => return Ok(()),
                        Ok(Err(RaftError::Fatal(f))) => {
                            return Err(ProposeError::Fatal(Box::new(f)))
                        }
                        Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                            last = no_quorum(&self.raft, &q.got)
                        }
                        Ok(Err(RaftError::APIError(e))) => last = e.to_string(),
                    }
                }
                (Some(l), Some(node)) => {
                    let reply: Result<Result<ReadIndex, ForwardError>, CallError> = self
                        .call(&node.raft_addr, Rpc::ReadIndex, &(), remaining)
                        .await;
                    match reply {
                        Ok(Ok(ReadIndex { index: None })) => return Ok(()),
                        Ok(Ok(ReadIndex { index: Some(i) })) => {
                            let remaining = deadline.saturating_duration_since(Instant::now());
                            return self.wait_applied(i, remaining).await;
                        }
                        Ok(Err(e)) => last = format!("leader {l}: {e}"),
                        Err(e) => last = e.to_string(),
                    }
                }
                (Some(l), None) => last = format!("leader {l} has no address in the membership"),
                (None, _) => last = NO_LEADER.into(),
            }
            self.pause(leader.id, deadline).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{call, CallError, ForwardError, Proposed, Rpc};
    use crate::raft::{GrpcNetwork, PlainConnector};
    use crate::store::Batch;

    /// A peer that is down is "never sent" (safe to retry a write), not an
    /// unknown outcome.
    #[tokio::test]
    async fn a_refused_connection_is_never_sent() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        drop(listener);
        let network = GrpcNetwork::new(Arc::new(PlainConnector));
        let res: Result<Result<Proposed, ForwardError>, CallError> = call(
            &network,
            &addr,
            Rpc::Propose,
            &Batch::default(),
            Duration::from_secs(2),
        )
        .await;
        assert!(matches!(res, Err(CallError::NotSent { .. })), "{res:?}");
    }
}

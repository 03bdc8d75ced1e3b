//! The server side of the Raft transport: a tonic service that decodes a
//! peer's request, hands it to the local `Raft`, and returns its answer
//! (`Result<Response, RaftError>` as JSON); plus the forwarding RPCs a
//! follower sends the leader (`Propose`, `ReadIndex`, `ChangeMembership`,
//! see `super::forward`). Only cluster *managers* may reach it (the
//! forwarding RPCs write the store): mount it on the mutually-authenticated
//! cluster port and admit only the manager role.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::raft::AppendEntriesRequest;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::forward;
use super::membership::Membership;
use super::pb::raft_server::{Raft as RaftRpc, RaftServer};
use super::pb::{RaftReply, RaftRequest};
use super::typ::Raft;
use super::TypeConfig;

/// Serves `flotilla.raft.v1.Raft` for one local Raft member. Made by
/// `RaftNode::service`.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    membership: Membership,
    write_timeout: Duration,
    guard: ElectionGuard,
}

/// A member far behind the leader's log must not start elections: it could
/// not win one (the voters that hold the committed log refuse it), but
/// openraft 0.9 has no pre-vote, so its higher term would depose a working
/// leader, again and again while it catches up. While AppendEntries
/// requests show it more than [`LAG_ENTRIES`] behind the leader's commit
/// index, its elections are off; they are back on once it is within that
/// distance, or [`LAG_HOLD`] after the last such request (if the leader
/// went away, a member that holds the committed log can win without it).
/// A restarted member starts with elections off until it hears from a
/// leader or `LAG_HOLD` passes.
#[derive(Clone)]
pub(crate) struct ElectionGuard {
    raft: Raft,
    /// When a request last showed this member lagging.
    lagging_at: Arc<Mutex<Option<std::time::Instant>>>,
}

/// How far behind the leader's commit index counts as lagging.
pub const LAG_ENTRIES: u64 = 64;
/// How long elections stay off after the last sign of lagging.
pub(crate) const LAG_HOLD: Duration = Duration::from_secs(5);

impl ElectionGuard {
    /// A guard for `raft`; `restarted`: start with elections off.
    pub(crate) fn new(raft: Raft, restarted: bool) -> ElectionGuard {
        let g = ElectionGuard {
            raft,
            lagging_at: Arc::default(),
        };
        if restarted {
            g.lagging(true);
        }
        let weak = Arc::downgrade(&g.lagging_at);
        let raft = g.raft.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(at) = weak.upgrade() else { return };
                let mut at = at.lock().unwrap_or_else(|p| p.into_inner());
                if at.is_some_and(|t| t.elapsed() >= LAG_HOLD) {
                    *at = None;
                    raft.runtime_config().elect(true);
                    tracing::info!(
                        "no sign of lagging behind the leader for {LAG_HOLD:?}: elections back on"
                    );
                }
            }
        });
        g
    }

    fn lagging(&self, lagging: bool) {
        let mut at = self.lagging_at.lock().unwrap_or_else(|p| p.into_inner());
        match (lagging, at.is_some()) {
            (true, was) => {
                *at = Some(std::time::Instant::now());
                if !was {
                    self.raft.runtime_config().elect(false);
                    tracing::info!("behind the leader's log: no elections from this manager until it catches up");
                }
            }
            (false, true) => {
                *at = None;
                self.raft.runtime_config().elect(true);
                tracing::info!("caught up with the leader's log: elections back on");
            }
            (false, false) => {}
        }
    }

    /// Look at an AppendEntries request from the leader.
    fn observe(&self, rpc: &AppendEntriesRequest<TypeConfig>) {
        let upto = rpc
            .entries
            .last()
            .map(|e| e.log_id.index)
            .or(rpc.prev_log_id.map(|l| l.index));
        let Some(commit) = rpc.leader_commit.map(|l| l.index) else {
            return;
        };
        // A keepalive (no previous entry, no entries) says nothing.
        if upto.is_none() && rpc.entries.is_empty() {
            return;
        }
        self.lagging(commit > upto.unwrap_or(0) + LAG_ENTRIES);
    }
}

impl RaftService {
    pub(crate) fn new(
        raft: Raft,
        membership: Membership,
        write_timeout: Duration,
        guard: ElectionGuard,
    ) -> RaftService {
        RaftService {
            raft,
            membership,
            write_timeout,
            guard,
        }
    }

    /// The tonic server wrapper, ready for `Server::add_service`.
    pub fn into_server(self) -> RaftServer<RaftService> {
        RaftServer::new(self).max_decoding_message_size(256 * 1024 * 1024)
    }
}

fn decode<T: DeserializeOwned>(req: Request<RaftRequest>) -> Result<T, Status> {
    serde_json::from_slice(&req.into_inner().data)
        .map_err(|e| Status::invalid_argument(format!("failed to decode the Raft request: {e}")))
}

fn encode<T: Serialize>(v: &T) -> Result<Response<RaftReply>, Status> {
    let data = serde_json::to_vec(v)
        .map_err(|e| Status::internal(format!("failed to encode the Raft reply: {e}")))?;
    Ok(Response::new(RaftReply { data }))
}

#[tonic::async_trait]
impl RaftRpc for RaftService {
    async fn append_entries(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        // A catch-up batch is large: decode it off the runtime's threads.
        let rpc: AppendEntriesRequest<TypeConfig> =
            tokio::task::spawn_blocking(move || decode(request))
                .await
                .map_err(|e| Status::internal(format!("decoding failed: {e}")))??;
        self.guard.observe(&rpc);
        encode(&self.raft.append_entries(rpc).await)
    }

    async fn vote(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.vote(rpc).await)
    }

    async fn install_snapshot(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let rpc = decode(request)?;
        encode(&self.raft.install_snapshot(rpc).await)
    }

    async fn propose(&self, request: Request<RaftRequest>) -> Result<Response<RaftReply>, Status> {
        let batch = decode(request)?;
        encode(&forward::lead_propose(&self.raft, batch, self.write_timeout).await)
    }

    async fn read_index(
        &self,
        _request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        encode(&forward::lead_read_index(&self.raft, self.write_timeout).await)
    }

    async fn change_membership(
        &self,
        request: Request<RaftRequest>,
    ) -> Result<Response<RaftReply>, Status> {
        let req = decode(request)?;
        encode(&self.membership.lead(req).await)
    }
}

//! The server side of the Raft transport: a tonic service that decodes a
//! peer's request, hands it to the local `Raft`, and returns its answer
//! (`Result<Response, RaftError>` as JSON); plus the forwarding RPCs a
//! follower sends the leader (`Propose`, `ReadIndex`, `ChangeMembership`,
//! see `super::forward`). Only cluster *managers* may reach it (the
//! forwarding RPCs write the store): mount it on the mutually-authenticated
//! cluster port and admit only the manager role.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::{Request, Response, Status};

use super::forward;
use super::membership::Membership;
use super::pb::raft_server::{Raft as RaftRpc, RaftServer};
use super::pb::{RaftReply, RaftRequest};
use super::typ::Raft;

/// Serves `flotilla.raft.v1.Raft` for one local Raft member. Made by
/// `RaftNode::service`.
#[derive(Clone)]
pub struct RaftService {
    raft: Raft,
    membership: Membership,
    write_timeout: Duration,
}

impl RaftService {
    pub(crate) fn new(raft: Raft, membership: Membership, write_timeout: Duration) -> RaftService {
        RaftService {
            raft,
            membership,
            write_timeout,
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
        let rpc = decode(request)?;
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

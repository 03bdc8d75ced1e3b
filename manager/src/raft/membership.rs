//! Cluster membership: adding a manager (learner until caught up, then
//! voter), removing one (demote or `node rm`) with quorum checks, and the
//! cluster's view for `cluster info`. Callable on any member: a member that
//! is not the leader forwards the request to the leader
//! (`ChangeMembership` RPC), which runs it.
//!
//! Reachability is the leader's: a member is reachable if it answered a Raft
//! RPC (heartbeats every `heartbeat_interval`) within
//! `RaftOptions::reachable_within` ([`super::network::Contacts`]).
//!
//! What it owns: the refusals that keep the cluster able to commit (the last
//! voter; a removal leaving fewer reachable voters than a majority of the new
//! configuration). What it does not own: policy such as "a healthy,
//! reachable manager needs `--force` to be removed": the daemon decides that
//! from [`ClusterInfo`] / [`Membership::reachable_voters`].

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::metrics::WaitError;
use openraft::ChangeMembers;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::forward::{CallError, Forwarder, Rpc};
use super::typ::RaftMetrics;
use super::{ManagerNode, NodeId};

/// Why a membership request failed. Plain serde data: it travels back from
/// the leader to the member the request was sent to.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MembershipError {
    /// Removing the only voter would leave no quorum at all.
    #[error("refusing to remove manager {id}: it is the last voter, the cluster could never commit again; rebuild from one manager with --force-new-cluster instead")]
    LastVoter {
        /// The manager.
        id: NodeId,
    },
    /// Removing this voter leaves fewer reachable voters than a majority of
    /// the new configuration: the change itself could not commit, and the
    /// cluster would stop accepting writes.
    #[error("refusing to remove manager {id}: {reachable} of the {remaining} remaining voters are reachable from the leader, a quorum needs {needed}; bring managers back (or remove unreachable ones) first")]
    QuorumAtRisk {
        /// The manager.
        id: NodeId,
        /// Voters after the removal.
        remaining: usize,
        /// Of those, reachable from the leader now.
        reachable: usize,
        /// A majority of `remaining`.
        needed: usize,
    },
    /// The id is taken by a member with another address.
    #[error("manager id {id} is already a member at {existing}; remove it first")]
    IdInUse {
        /// The id.
        id: NodeId,
        /// Its current record.
        existing: ManagerNode,
    },
    /// The new manager did not catch up in time; it stays a non-voting
    /// learner (adding it again resumes; removing it drops it).
    #[error("manager {id} did not catch up with the leader's log within {waited_ms} ms; it stays a non-voting learner")]
    CatchUpTimeout {
        /// The manager.
        id: NodeId,
        /// How long the leader waited.
        waited_ms: u64,
    },
    /// The member asked is not the leader. Retryable (forwarding does it).
    #[error("manager is not the Raft leader (leader: {})", leader_id.map(|l| l.to_string()).unwrap_or_else(|| "unknown".into()))]
    NotLeader {
        /// The leader it knows of.
        leader_id: Option<NodeId>,
    },
    /// No leader could be reached, or another change is in progress, or the
    /// change did not commit in time. Retryable.
    #[error("failed to change the membership: {reason}")]
    Unavailable {
        /// Why.
        reason: String,
    },
    /// Raft stopped on the member that handled the request.
    #[error("Raft has stopped on this manager: {reason}")]
    Fatal {
        /// Why.
        reason: String,
    },
}

impl MembershipError {
    /// True if retrying later may succeed without operator action.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            MembershipError::NotLeader { .. }
                | MembershipError::Unavailable { .. }
                | MembershipError::CatchUpTimeout { .. }
        )
    }
}

/// One member as the leader sees it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct MemberInfo {
    /// Raft node id.
    pub id: NodeId,
    /// Its addresses.
    pub node: ManagerNode,
    /// A voter (else a learner: replicated to, not counted for quorum).
    pub voter: bool,
    /// The current leader.
    pub leader: bool,
    /// Answered the leader within `reachable_within` (the leader itself
    /// always is). Only meaningful when [`ClusterInfo::leader_view`].
    pub reachable: bool,
    /// Milliseconds since it last answered the leader, if it ever did.
    pub last_contact_ms: Option<u64>,
    /// The highest log index the leader knows it holds.
    pub matched_index: Option<u64>,
}

/// The cluster as one member sees it (`cluster info`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterInfo {
    /// The member that produced this view.
    pub reported_by: NodeId,
    /// True if it was the leader (reachability and matched indices are the
    /// leader's knowledge; otherwise they are empty/false).
    pub leader_view: bool,
    /// The leader, if known.
    pub leader_id: Option<NodeId>,
    /// The current term.
    pub term: u64,
    /// The last log index on the reporting member.
    pub last_log_index: Option<u64>,
    /// The commit index on the reporting member.
    pub commit_index: Option<u64>,
    /// The last applied index on the reporting member.
    pub applied_index: Option<u64>,
    /// True while a membership change is half-way (joint configuration).
    pub joint: bool,
    /// Voters and learners, by id.
    pub members: Vec<MemberInfo>,
}

impl ClusterInfo {
    /// The voters' ids.
    pub fn voters(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|m| m.voter)
            .map(|m| m.id)
            .collect()
    }

    /// The voters reachable from the leader.
    pub fn reachable_voters(&self) -> BTreeSet<NodeId> {
        self.members
            .iter()
            .filter(|m| m.voter && m.reachable)
            .map(|m| m.id)
            .collect()
    }

    /// One member.
    pub fn member(&self, id: NodeId) -> Option<&MemberInfo> {
        self.members.iter().find(|m| m.id == id)
    }
}

/// A membership request, as forwarded to the leader.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) enum MembershipRequest {
    Add { id: NodeId, node: ManagerNode },
    Remove { id: NodeId, force: bool },
    Info,
}

/// The leader's answer.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub(crate) enum MembershipReply {
    Done,
    Info(ClusterInfo),
}

/// Membership operations of one member. Clones share it.
#[derive(Clone)]
pub struct Membership {
    fwd: Forwarder,
    catch_up_timeout: Duration,
    reachable_within: Duration,
    /// Membership changes run one at a time on the leader (openraft refuses
    /// a change while another is half-way): concurrent joins queue here.
    queue: Arc<tokio::sync::Mutex<()>>,
}

fn client_write_err(
    e: RaftError<NodeId, ClientWriteError<NodeId, ManagerNode>>,
) -> MembershipError {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => MembershipError::NotLeader {
            leader_id: f.leader_id,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            MembershipError::Unavailable {
                reason: e.to_string(),
            }
        }
        RaftError::Fatal(f) => MembershipError::Fatal {
            reason: f.to_string(),
        },
    }
}

impl Membership {
    pub(crate) fn new(
        fwd: Forwarder,
        catch_up_timeout: Duration,
        reachable_within: Duration,
    ) -> Membership {
        Membership {
            fwd,
            catch_up_timeout,
            reachable_within,
            queue: Arc::default(),
        }
    }

    /// Add manager `id` at `node` as a voter: first as a learner, waiting
    /// (up to `RaftOptions::catch_up_timeout`) until it holds the log up to
    /// the entry that added it, then promote it. Idempotent: a voter with
    /// the same record is left alone; a learner is promoted.
    pub async fn add_manager(&self, id: NodeId, node: ManagerNode) -> Result<(), MembershipError> {
        self.run(MembershipRequest::Add { id, node })
            .await
            .map(|_| ())
    }

    /// Remove manager `id` from the cluster (demote or `node rm`). Refused
    /// if it is the last voter ([`MembershipError::LastVoter`]), or (unless
    /// `force`) if fewer of the remaining voters are reachable from the
    /// leader than a majority of them ([`MembershipError::QuorumAtRisk`]).
    /// `force` is for when the leader's reachability view is known to be
    /// wrong: a forced removal that lacks a reachable majority does not
    /// commit and blocks writes until enough managers are back. Removing a
    /// non-member is a no-op.
    pub async fn remove_manager(&self, id: NodeId, force: bool) -> Result<(), MembershipError> {
        self.run(MembershipRequest::Remove { id, force })
            .await
            .map(|_| ())
    }

    /// The cluster as the leader sees it: members with reachability, leader,
    /// term, log/commit/applied indices (of the leader).
    pub async fn members(&self) -> Result<ClusterInfo, MembershipError> {
        match self.run(MembershipRequest::Info).await? {
            MembershipReply::Info(i) => Ok(i),
            MembershipReply::Done => Err(MembershipError::Unavailable {
                reason: "the leader answered a cluster-info request without the info".into(),
            }),
        }
    }

    /// The voters the leader can currently reach (itself included).
    pub async fn reachable_voters(&self) -> Result<BTreeSet<NodeId>, MembershipError> {
        Ok(self.members().await?.reachable_voters())
    }

    /// This member's own view, without asking the leader (works with no
    /// leader; reachability is only known when this member leads).
    pub async fn local_view(&self) -> ClusterInfo {
        let committed = self
            .fwd
            .raft
            .with_raft_state(|st| st.committed.map(|l| l.index))
            .await
            .ok()
            .flatten();
        let m = self.fwd.raft.metrics().borrow().clone();
        self.info(&m, committed)
    }

    fn info(&self, m: &RaftMetrics, commit_index: Option<u64>) -> ClusterInfo {
        let leader_view = m.current_leader == Some(self.fwd.id);
        let membership = m.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .and_then(|l| l.map(|l| l.index));
                let contact = if *id == self.fwd.id {
                    Some(Duration::ZERO)
                } else if leader_view {
                    self.fwd.network.contacts().since(*id)
                } else {
                    None
                };
                MemberInfo {
                    id: *id,
                    node: node.clone(),
                    voter: voters.contains(id),
                    leader: m.current_leader == Some(*id),
                    reachable: leader_view && self.reachable(*id),
                    last_contact_ms: contact.map(|d| d.as_millis() as u64),
                    matched_index: matched,
                }
            })
            .collect();
        ClusterInfo {
            reported_by: self.fwd.id,
            leader_view,
            leader_id: m.current_leader,
            term: m.current_term,
            last_log_index: m.last_log_index,
            commit_index,
            applied_index: m.last_applied.map(|l| l.index),
            joint: membership.get_joint_config().len() > 1,
            members,
        }
    }

    fn reachable(&self, id: NodeId) -> bool {
        id == self.fwd.id
            || self
                .fwd
                .network
                .contacts()
                .since(id)
                .is_some_and(|d| d <= self.reachable_within)
    }

    /// Run `req` on the leader: here if this member leads, else forwarded.
    /// Retries (bounded by the write timeout) while no leader is known or
    /// leadership moves.
    async fn run(&self, req: MembershipRequest) -> Result<MembershipReply, MembershipError> {
        let deadline = Instant::now() + self.fwd.write_timeout;
        let mut last = String::from("no leader is known");
        // The leader may wait for a catch-up and two commits.
        let call_timeout = self.catch_up_timeout + self.fwd.write_timeout * 3;
        loop {
            if Instant::now() >= deadline {
                return Err(MembershipError::Unavailable {
                    reason: format!(
                        "no leader took the request within {:?}: {last}",
                        self.fwd.write_timeout
                    ),
                });
            }
            let leader = self.fwd.leader();
            match (leader.id, leader.node) {
                (Some(l), _) if l == self.fwd.id => match self.lead(req.clone()).await {
                    Err(MembershipError::NotLeader { leader_id }) => {
                        last = format!("leadership moved to {leader_id:?}");
                    }
                    other => return other,
                },
                (Some(l), Some(node)) => {
                    let reply: Result<Result<MembershipReply, MembershipError>, CallError> = self
                        .fwd
                        .call(&node.raft_addr, Rpc::ChangeMembership, &req, call_timeout)
                        .await;
                    match reply {
                        Ok(Err(MembershipError::NotLeader { leader_id })) => {
                            last = format!("{l} is not the leader any more (says {leader_id:?})");
                        }
                        Ok(other) => return other,
                        Err(e @ CallError::NotSent { .. }) => last = e.to_string(),
                        Err(e) => {
                            return Err(MembershipError::Unavailable {
                                reason: e.to_string(),
                            })
                        }
                    }
                }
                (Some(l), None) => last = format!("leader {l} has no address in the membership"),
                (None, _) => last = "no leader is known".into(),
            }
            self.fwd.pause(leader.id, deadline).await;
        }
    }

    /// Run `req` on this member, which must be the leader (also the handler
    /// of a forwarded `ChangeMembership`).
    pub(crate) async fn lead(
        &self,
        req: MembershipRequest,
    ) -> Result<MembershipReply, MembershipError> {
        let leader = self.fwd.raft.metrics().borrow().current_leader;
        if leader != Some(self.fwd.id) {
            return Err(MembershipError::NotLeader { leader_id: leader });
        }
        match req {
            MembershipRequest::Add { id, node } => {
                let _turn = self.queue.lock().await;
                self.lead_add(id, node).await?
            }
            MembershipRequest::Remove { id, force } => {
                let _turn = self.queue.lock().await;
                self.lead_remove(id, force).await?
            }
            MembershipRequest::Info => {
                let committed = self
                    .fwd
                    .raft
                    .with_raft_state(|st| st.committed.map(|l| l.index))
                    .await
                    .map_err(|f| MembershipError::Fatal {
                        reason: f.to_string(),
                    })?;
                let m = self.fwd.raft.metrics().borrow().clone();
                return Ok(MembershipReply::Info(self.info(&m, committed)));
            }
        }
        Ok(MembershipReply::Done)
    }

    async fn change(
        &self,
        changes: ChangeMembers<NodeId, ManagerNode>,
        retain: bool,
    ) -> Result<u64, MembershipError> {
        // Joint then uniform configuration: two commits. A change still
        // half-way (one started by an earlier leader, or the uniform step of
        // the previous one) is waited out: retried until the deadline.
        let timeout = self.fwd.write_timeout * 2;
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let res = tokio::time::timeout(
                remaining,
                self.fwd.raft.change_membership(changes.clone(), retain),
            )
            .await;
            match res {
                Err(_) => {
                    return Err(MembershipError::Unavailable {
                        reason: format!(
                            "the membership change did not commit within {timeout:?} (it may still)"
                        ),
                    })
                }
                Ok(Ok(resp)) => return Ok(resp.log_id.index),
                Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                    ChangeMembershipError::InProgress(p),
                )))) if Instant::now() + Duration::from_millis(50) < deadline => {
                    tracing::debug!("waiting for a membership change in progress: {p}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(Err(e)) => return Err(client_write_err(e)),
            }
        }
    }

    async fn lead_add(&self, id: NodeId, node: ManagerNode) -> Result<(), MembershipError> {
        let m = self.fwd.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let known = membership.get_node(&id).cloned();
        let is_voter = membership.voter_ids().any(|v| v == id);
        if let Some(existing) = &known {
            if *existing != node {
                return Err(MembershipError::IdInUse {
                    id,
                    existing: existing.clone(),
                });
            }
            if is_voter {
                return Ok(());
            }
        }
        // As a learner first: replicated to, not counted for quorum, so a new
        // member's catch-up never stalls commits.
        let target = match known {
            Some(_) => m.last_log_index.unwrap_or(0),
            None => {
                let deadline = Instant::now() + self.fwd.write_timeout;
                loop {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    let added = tokio::time::timeout(
                        remaining,
                        self.fwd.raft.add_learner(id, node.clone(), false),
                    )
                    .await
                    .map_err(|_| MembershipError::Unavailable {
                        reason: format!(
                            "adding manager {id} as a learner did not commit within {:?}",
                            self.fwd.write_timeout
                        ),
                    })?;
                    match added {
                        Ok(added) => break added.log_id.index,
                        Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                            ChangeMembershipError::InProgress(_),
                        ))) if Instant::now() + Duration::from_millis(50) < deadline => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        Err(e) => return Err(client_write_err(e)),
                    }
                }
            }
        };
        let me = self.fwd.id;
        let caught_up = self
            .fwd
            .raft
            .wait(Some(self.catch_up_timeout))
            .metrics(
                |m| {
                    m.current_leader != Some(me)
                        || m.replication
                            .as_ref()
                            .and_then(|r| r.get(&id).copied().flatten())
                            .is_some_and(|l| l.index >= target)
                },
                format!("manager {id} to catch up to index {target}"),
            )
            .await;
        match caught_up {
            Ok(m) if m.current_leader != Some(me) => {
                return Err(MembershipError::NotLeader {
                    leader_id: m.current_leader,
                })
            }
            Ok(_) => {}
            Err(WaitError::Timeout(..)) => {
                return Err(MembershipError::CatchUpTimeout {
                    id,
                    waited_ms: self.catch_up_timeout.as_millis() as u64,
                })
            }
            Err(e @ WaitError::ShuttingDown) => {
                return Err(MembershipError::Fatal {
                    reason: e.to_string(),
                })
            }
        }
        self.change(ChangeMembers::AddVoterIds(BTreeSet::from([id])), true)
            .await?;
        tracing::info!(id, %node, "manager added as a voter");
        Ok(())
    }

    async fn lead_remove(&self, id: NodeId, force: bool) -> Result<(), MembershipError> {
        let m = self.fwd.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Ok(());
        }
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if !voters.contains(&id) {
            self.change(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
                .await?;
            tracing::info!(id, "learner removed");
            return Ok(());
        }
        let remaining: Vec<NodeId> = voters.iter().copied().filter(|v| *v != id).collect();
        if remaining.is_empty() {
            return Err(MembershipError::LastVoter { id });
        }
        let needed = remaining.len() / 2 + 1;
        let reachable = remaining.iter().filter(|v| self.reachable(**v)).count();
        if reachable < needed {
            if !force {
                return Err(MembershipError::QuorumAtRisk {
                    id,
                    remaining: remaining.len(),
                    reachable,
                    needed,
                });
            }
            tracing::warn!(
                id,
                reachable,
                needed,
                "forced removal without a reachable majority of the remaining voters"
            );
        }
        self.change(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await?;
        tracing::info!(id, "voter removed");
        Ok(())
    }
}

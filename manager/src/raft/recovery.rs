//! `--force-new-cluster`: turn one surviving manager's data directory into a
//! one-member cluster that keeps everything it holds, for when a quorum of
//! managers is lost for good.
//!
//! While Raft is not running, it appends one membership entry to the redb log
//! (only this member as voter) right after the last entry, at a term higher
//! than any it has seen, and records a vote for itself in that term. On
//! start the member is a follower of a configuration in which it is the only
//! voter: its first election timeout elects it, and as leader it commits
//! every entry in its log (all it had committed, plus any it held
//! uncommitted) with the new membership. Its tables are its own `store.redb`;
//! nothing is rebuilt. Other managers are added back with `add_manager` and
//! catch up from its log or a snapshot. The old members must not be started
//! again with their old data (they would still believe in the old
//! configuration): wipe them and add them as new members.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use openraft::storage::{RaftLogStorage, RaftStateMachine};
use openraft::{CommittedLeaderId, EntryPayload, LogId, Membership, Vote};

use super::node::{RaftNodeError, LOG_FILE, STORE_FILE};
use super::typ::{Entry, StorageError};
use super::{LogStore, ManagerNode, NodeId, StateMachine};
use crate::store::{Durability, Store};

/// What [`force_new_cluster`] found and wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ForcedCluster {
    /// The last log index the state machine had applied (all of it is kept).
    pub applied_index: Option<u64>,
    /// The last log index before recovery.
    pub last_log_index: Option<u64>,
    /// The index of the new single-voter membership entry.
    pub membership_index: u64,
    /// Its term.
    pub term: u64,
    /// The members of the old configuration that are no longer members.
    pub dropped: BTreeSet<NodeId>,
}

/// Rewrite the Raft state in `data_dir` (not in use: call before
/// `RaftNode::open`/`start`) so that member `id`, reachable at `node`,
/// forms a one-member cluster with everything it held. See the module docs.
pub async fn force_new_cluster(
    data_dir: &Path,
    id: NodeId,
    node: ManagerNode,
) -> Result<ForcedCluster, RaftNodeError> {
    let dir = data_dir.display().to_string();
    let open_err = |source| RaftNodeError::Open {
        dir: dir.clone(),
        source,
    };
    let storage_err = |source: StorageError| RaftNodeError::Storage {
        dir: dir.clone(),
        source: Box::new(source),
    };
    let mut log = LogStore::open(&data_dir.join(LOG_FILE)).map_err(open_err)?;
    let store = Store::open(data_dir.join(STORE_FILE), Durability::Immediate).map_err(open_err)?;
    let mut sm = StateMachine::new(store);

    let state = log.get_log_state().await.map_err(storage_err)?;
    let vote = log.read_vote().await.map_err(storage_err)?;
    let (applied, old_membership) = sm.applied_state().await.map_err(storage_err)?;
    let last = state.last_log_id.max(applied);
    let Some(last) = last else {
        return Err(RaftNodeError::NothingToRecover { dir });
    };

    let term = vote
        .map(|v| v.leader_id.term)
        .unwrap_or(0)
        .max(last.leader_id.term)
        + 1;
    let index = last.index + 1;
    let membership = Membership::new(
        vec![BTreeSet::from([id])],
        BTreeMap::from([(id, node.clone())]),
    );
    let entry = Entry {
        log_id: LogId::new(CommittedLeaderId::new(term, id), index),
        payload: EntryPayload::Membership(membership),
    };
    log.append_offline(vec![entry]).await.map_err(storage_err)?;
    // A vote for itself in the new term, not committed: on start it is a
    // follower and its first election (it is the only voter) makes it leader.
    log.save_vote(&Vote::new(term, id))
        .await
        .map_err(storage_err)?;

    let dropped = old_membership
        .membership()
        .nodes()
        .map(|(n, _)| *n)
        .filter(|n| *n != id)
        .collect();
    tracing::warn!(
        id,
        %node,
        term,
        index,
        "forced a new single-member cluster from the local Raft state"
    );
    Ok(ForcedCluster {
        applied_index: applied.map(|l| l.index),
        last_log_index: state.last_log_id.map(|l| l.index),
        membership_index: index,
        term,
        dropped,
    })
}

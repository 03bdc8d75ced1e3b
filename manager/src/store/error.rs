//! Errors of the store: why a batch was refused ([`Refusal`], which travels
//! through Raft as part of the entry's result, so it is plain serde data), why
//! a proposal failed to commit ([`ProposeError`]), and the module's
//! [`StoreError`] that wraps both plus persistence failures.

use agent_common::objects::Kind;
use serde::{Deserialize, Serialize};

/// Why the state machine refused a whole batch. Decided deterministically at
/// apply time, so every replica refuses the same batches.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// An update or delete named a version other than the stored one.
    #[error("version conflict on {kind} {id}: the write was based on version {expected} but the stored version is {actual}; re-read the object and retry")]
    Conflict {
        /// Object kind.
        kind: Kind,
        /// Object id.
        id: String,
        /// The version the writer read.
        expected: u64,
        /// The version in the store.
        actual: u64,
    },
    /// An update or delete named an object that does not exist.
    #[error("{kind} {id} not found")]
    NotFound {
        /// Object kind.
        kind: Kind,
        /// Object id.
        id: String,
    },
    /// A create named an id that is already taken.
    #[error("{kind} {id} already exists")]
    AlreadyExists {
        /// Object kind.
        kind: Kind,
        /// Object id.
        id: String,
    },
    /// A create or rename used a name another object of the kind holds.
    #[error("{kind} name {name:?} is already in use by {id}")]
    NameInUse {
        /// Object kind.
        kind: Kind,
        /// The contested name.
        name: String,
        /// The id of the object holding it.
        id: String,
    },
    /// The action is malformed (e.g. a missing name).
    #[error("invalid {kind}: {reason}")]
    Invalid {
        /// Object kind.
        kind: Kind,
        /// What is wrong.
        reason: String,
    },
}

/// Why a proposal did not commit. Returned by a [`super::Proposer`].
#[derive(Debug, thiserror::Error)]
pub enum ProposeError {
    /// This node is not the leader. Retry on the leader (its address, when
    /// known, is given). Retryable. `crate::raft::RaftProposer` never
    /// returns it (it forwards to the leader); kept for proposers that do
    /// not forward.
    #[error("this manager is not the Raft leader; send the write to {}", leader_addr.as_deref().unwrap_or("the leader (unknown yet: retry shortly)"))]
    ForwardToLeader {
        /// The leader's Raft node id, when known.
        leader_id: Option<u64>,
        /// The leader's address, when known.
        leader_addr: Option<String>,
    },
    /// No quorum could be reached or the node is shutting down. Retryable
    /// elsewhere or later.
    #[error("failed to commit through Raft: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The batch may or may not have committed: it was handed to the leader
    /// but no answer came back (the leader went away mid-call, or no commit
    /// within the write timeout). Not blindly retryable: re-read first (a
    /// retried create may meet `AlreadyExists`/`NameInUse`, a retried update
    /// a `Conflict`, if the first attempt did commit).
    #[error("the write may or may not have committed: {0}")]
    Indeterminate(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Raft stopped for good on this node (storage failure, shutdown).
    #[error("Raft has stopped on this manager: {0}")]
    Fatal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The store's error.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The batch was refused as a whole; nothing in it was applied.
    #[error("failed to apply the batch: {0}")]
    Refused(#[from] Refusal),
    /// The batch could not be committed.
    #[error("failed to propose the batch: {0}")]
    Propose(#[from] ProposeError),
    /// The redb file could not be opened, read or written.
    #[error("failed to {action} the store database: {source}")]
    Persist {
        /// What was being done.
        action: &'static str,
        /// The redb error.
        #[source]
        source: Box<redb::Error>,
    },
    /// The store file was written by an older redb format.
    #[error("the store database {path} uses an older redb file format (version {found}); upgrade it with a flotilla release that still reads that format, or remove it and rejoin the cluster")]
    UpgradeRequired {
        /// The database path.
        path: String,
        /// The format version found.
        found: u8,
    },
    /// A stored value or snapshot could not be decoded.
    #[error("failed to decode {what}: {source}")]
    Codec {
        /// What was being decoded.
        what: &'static str,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// The proposer returned something that is not a batch result.
    #[error("the proposer returned no batch outcome")]
    NoOutcome,
}

impl StoreError {
    /// Wrap any redb error with what was being done.
    pub(crate) fn persist(action: &'static str, e: impl Into<redb::Error>) -> Self {
        StoreError::Persist {
            action,
            source: Box::new(e.into()),
        }
    }

    /// The refusal, if the batch was refused by the state machine.
    pub fn refusal(&self) -> Option<&Refusal> {
        match self {
            StoreError::Refused(r) => Some(r),
            _ => None,
        }
    }

    /// True if this is a version conflict (re-read and retry).
    pub fn is_conflict(&self) -> bool {
        matches!(self.refusal(), Some(Refusal::Conflict { .. }))
    }
}

/// The store's result type.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

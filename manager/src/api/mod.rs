//! The manager's gRPC services: the control API (`control`, for the CLI and
//! remote clients) and the dispatcher (`dispatcher`, for nodes).

use tonic::Status;

use crate::store::{ProposeError, Refusal, StoreError};

pub mod control;
pub mod dispatcher;
pub mod service_logs;
pub mod services;
pub mod session;

/// A store error as a gRPC status with a message a user can act on.
pub(crate) fn store_status(e: StoreError) -> Status {
    match &e {
        StoreError::Refused(Refusal::NotFound { .. }) => Status::not_found(e.to_string()),
        StoreError::Refused(Refusal::Conflict { .. }) => Status::aborted(e.to_string()),
        StoreError::Refused(Refusal::AlreadyExists { .. })
        | StoreError::Refused(Refusal::NameInUse { .. }) => Status::already_exists(e.to_string()),
        StoreError::Refused(_) => Status::invalid_argument(e.to_string()),
        StoreError::Propose(ProposeError::Unavailable(why)) => {
            Status::unavailable(format!("the managers could not serve the request: {why}"))
        }
        StoreError::Propose(ProposeError::Indeterminate(why)) => Status::unavailable(format!(
            "the write may or may not have committed ({why}): read it back before retrying"
        )),
        StoreError::Propose(p) => Status::unavailable(p.to_string()),
        _ => Status::internal(e.to_string()),
    }
}

/// An unexpected failure.
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

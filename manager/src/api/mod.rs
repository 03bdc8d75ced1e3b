//! The manager's gRPC services: the control API (`control`, for the CLI and
//! remote clients) and the dispatcher (`dispatcher`, for nodes).

use tonic::Status;

use crate::store::{Refusal, StoreError};

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
        StoreError::Propose(_) => Status::unavailable(format!(
            "the cluster could not commit the change (no quorum of managers?): {e}"
        )),
        _ => Status::internal(e.to_string()),
    }
}

/// An unexpected failure.
pub(crate) fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

//! `pull`, `push` and `login`: the engine's side of registries. The protocol
//! lives in `image::registry`; this module moves blobs between it and the
//! image store and reports progress.

use std::sync::Arc;

use agent_common::proto::{Progress, PullRequest, PushRequest, RegistryLoginRequest};
use tokio::sync::mpsc;

use super::{Engine, EngineError, Result};

impl Engine {
    /// Pulls an image into the store.
    pub async fn pull(
        self: &Arc<Self>,
        req: PullRequest,
        _tx: mpsc::Sender<Progress>,
    ) -> Result<()> {
        Err(EngineError::Internal(format!(
            "pull of {} is not available yet",
            req.image
        )))
    }

    /// Pushes an image from the store.
    pub async fn push(
        self: &Arc<Self>,
        req: PushRequest,
        _tx: mpsc::Sender<Progress>,
    ) -> Result<()> {
        Err(EngineError::Internal(format!(
            "push of {} is not available yet",
            req.image
        )))
    }

    /// Checks credentials against a registry.
    pub async fn check_login(self: &Arc<Self>, req: RegistryLoginRequest) -> Result<()> {
        Err(EngineError::Internal(format!(
            "login to {} is not available yet",
            req.registry
        )))
    }
}

//! Starting the local engine as a daemon does it: open the data root, set up
//! the default bridge and the user-defined networks, adopt the containers
//! that kept running, and fill the sandbox pool. Shared by `flotilla-worker`
//! and `flotilla-manager` (managers run the engine too).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::engine::Engine;

/// The engine's daemon options (the flags of both daemons).
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Images, containers, volumes, networks.
    pub data_root: PathBuf,
    /// Sandboxes prepared ahead.
    pub sandbox_pool: usize,
    /// The default bridge device.
    pub bridge: String,
    /// The default bridge's gateway address and prefix.
    pub bip: String,
    /// Inter-container communication on the default bridge.
    pub icc: bool,
}

/// Opens and sets up the engine; returns it ready to serve.
pub async fn start_engine(opts: &EngineOptions) -> anyhow::Result<Arc<Engine>> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the engine must run as root (it creates namespaces, mounts and cgroups)");
    }
    let engine = Engine::open(&opts.data_root, opts.sandbox_pool)
        .with_context(|| format!("failed to open the data root {}", opts.data_root.display()))?;
    for w in engine.warnings() {
        tracing::error!("{w}");
    }
    let bridge = crate::network::Bridge::setup(&opts.bridge, &opts.bip, opts.icc)
        .await
        .with_context(|| format!("failed to set up the bridge {}", opts.bridge))?;
    engine
        .setup_networks(
            &opts.data_root.join("networks"),
            bridge.table(),
            &bridge.subnet(),
        )
        .await
        .context("failed to set up the user-defined networks")?;
    let _ = engine.pool.bridge.set(Arc::new(bridge));
    engine.adopt().await;
    engine.pool.refill_all();
    Ok(engine)
}

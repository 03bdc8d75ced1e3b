//! `flotilla-manager`: the manager daemon. Raft membership, the control API,
//! the CA and the reconcilers arrive with the managers issue; until then this
//! binary only explains that, so nobody mistakes it for a working manager.
#![forbid(unsafe_code)]

use clap::Parser;

/// Flotilla manager node (not implemented yet: see the managers issue).
#[derive(Parser)]
#[command(name = "flotilla-manager", version)]
struct Args {}

fn main() -> anyhow::Result<()> {
    let _ = Args::parse();
    anyhow::bail!(
        "flotilla-manager is not implemented yet; run `flotilla-worker` for a single-host engine"
    )
}

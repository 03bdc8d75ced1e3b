//! Starting the local engine as a daemon does it: open the data root, set up
//! the default bridge and the user-defined networks, adopt the containers
//! that kept running, and fill the sandbox pool. Shared by `flotilla-worker`
//! and `flotilla-manager` (managers run the engine too), with the rest of
//! what both daemons do alike: logging, the runtime, the local socket.

use std::path::{Path, PathBuf};
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

/// The socket path of a `unix://PATH` host (`-H`).
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => bail!("invalid -H {host:?}: use unix:///absolute/path.sock"),
    }
}

/// Binds the local socket, mode 0600 (refusing to take over a live one; a
/// stale one left by a crash is replaced).
pub async fn bind_socket(path: &Path) -> anyhow::Result<tokio::net::UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another daemon is already serving {}; stop it or pass a different -H",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("failed to remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("failed to listen on {}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("failed to restrict {}", path.display()))?;
    Ok(listener)
}

/// Runs daemon `name` (`flotilla-worker`, `flotilla-manager`): logs to
/// stderr at `info` (`debug` with `debug`; `FLOTILLA_LOG` overrides, and
/// `extra` directives are added to the default), runs `main` on a
/// multi-threaded runtime, and exits 1 with the error if it fails.
pub fn run_daemon<F>(name: &str, debug: bool, extra: &str, main: F)
where
    F: std::future::Future<Output = anyhow::Result<()>>,
{
    let level = if debug { "debug" } else { "info" };
    let default = if extra.is_empty() {
        level.to_string()
    } else {
        format!("{level},{extra}")
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FLOTILLA_LOG")
                .unwrap_or_else(|_| default.into()),
        )
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: failed to start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(main) {
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
}

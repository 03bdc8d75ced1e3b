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
    secure_data_root(&opts.data_root)?;
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
    // Again, for what opening the engine and its networks created.
    secure_data_root(&opts.data_root)?;
    engine.adopt().await;
    engine.pool.refill_all();
    Ok(engine)
}

/// Files bind-mounted into containers from their directory: every user in
/// the container reads them.
const CONTAINER_VISIBLE: [&str; 3] = ["hostname", "hosts", "resolv.conf"];

/// Makes the data root the daemon's alone, creating it if needed, and
/// re-applies the modes on a root that exists (an older daemon's, or one an
/// operator loosened): the root and every directory directly in it 0700;
/// the daemon's own records below them (cluster identity and Raft store,
/// network records, container records, bundles and logs, volume metadata)
/// 0600 in 0700 directories. Container content (image layers, upper dirs,
/// volumes' `_data`) keeps the modes its image gave it: no host user but
/// root reaches it through the 0700 directories above it, so a setuid
/// binary a container leaves in its upper dir is no way up for them.
///
/// Containers never walk these paths: overlayfs and bind mounts resolve
/// their sources once, as root, when the container starts.
pub fn secure_data_root(root: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let set = |p: &Path, mode: u32| -> anyhow::Result<()> {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("failed to set the mode of {} to {mode:o}", p.display()))
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .with_context(|| format!("failed to create the data root {}", root.display()))?;
    set(root, 0o700)?;
    for entry in read_dir(root)? {
        let (path, ft) = entry;
        if ft.is_dir() {
            set(&path, 0o700)?;
        } else if ft.is_file() {
            set(&path, 0o600)?;
        }
    }
    for tree in ["cluster", "networks"] {
        private_tree(&root.join(tree), 0)?;
    }
    for (dir, _) in read_dir(&root.join("containers"))?
        .into_iter()
        .filter(|(_, ft)| ft.is_dir())
    {
        set(&dir, 0o700)?;
        for (file, ft) in read_dir(&dir)? {
            let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if ft.is_file() {
                set(
                    &file,
                    if CONTAINER_VISIBLE.contains(&name) {
                        0o644
                    } else {
                        0o600
                    },
                )?;
            }
        }
    }
    for (dir, _) in read_dir(&root.join("volumes"))?
        .into_iter()
        .filter(|(_, ft)| ft.is_dir())
    {
        set(&dir, 0o700)?;
        let meta = dir.join("volume.json");
        if meta.is_file() {
            set(&meta, 0o600)?;
        }
    }
    Ok(())
}

/// The entries of `dir` (none if it does not exist), without following
/// symlinks.
fn read_dir(dir: &Path) -> anyhow::Result<Vec<(PathBuf, std::fs::FileType)>> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", dir.display())),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.with_context(|| format!("failed to read {}", dir.display()))?;
        let ft = e
            .file_type()
            .with_context(|| format!("failed to read {}", dir.display()))?;
        out.push((e.path(), ft));
    }
    Ok(out)
}

/// Directories 0700 and files 0600, all the way down (the daemon's own
/// records only: never a tree a container or an image wrote).
fn private_tree(dir: &Path, depth: usize) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if depth > 16 {
        return Ok(());
    }
    for (path, ft) in read_dir(dir)? {
        let mode = if ft.is_dir() {
            private_tree(&path, depth + 1)?;
            0o700
        } else if ft.is_file() {
            0o600
        } else {
            continue;
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("failed to set the mode of {}", path.display()))?;
    }
    Ok(())
}

/// The socket path of a `unix://PATH` host (`-H`).
pub fn socket_path(host: &str) -> anyhow::Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(p) if p.starts_with('/') => Ok(PathBuf::from(p)),
        _ => bail!("invalid -H {host:?}: use unix:///absolute/path.sock"),
    }
}

/// Binds the local socket, mode 0600 from its creation on (refusing to take
/// over a live one; a stale one left by a crash is replaced).
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
    // Bind inside a fresh 0700 directory, restrict the socket, then move it
    // into place: there is no moment at which another user could connect,
    // whatever the process umask (which is not changed: other threads may
    // be creating files).
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let staging = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&staging);
    {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&staging)
            .with_context(|| format!("failed to create {}", staging.display()))?;
    }
    let bound = staging.join("sock");
    let result = (|| -> anyhow::Result<tokio::net::UnixListener> {
        let listener = tokio::net::UnixListener::bind(&bound)
            .with_context(|| format!("failed to listen on {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&bound, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("failed to restrict {}", path.display()))?;
        std::fs::rename(&bound, path)
            .with_context(|| format!("failed to move the socket to {}", path.display()))?;
        Ok(listener)
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[tokio::test]
    async fn the_socket_is_private_from_the_start_and_no_staging_is_left() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("d.sock");
        let listener = bind_socket(&path).await.unwrap();
        assert_eq!(mode(&path), 0o600);
        let names: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "only the socket: {names:?}");
        // It serves at its final path.
        let (client, accepted) =
            tokio::join!(tokio::net::UnixStream::connect(&path), listener.accept());
        client.unwrap();
        accepted.unwrap();
        // A live socket is not taken over.
        assert!(bind_socket(&path).await.is_err());
    }

    #[test]
    fn the_data_root_is_tightened_again() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let c = root.join("containers/abc");
        std::fs::create_dir_all(c.join("upper")).unwrap();
        std::fs::create_dir_all(root.join("cluster/raft")).unwrap();
        std::fs::create_dir_all(root.join("volumes/v/_data")).unwrap();
        for f in [
            c.join("config.v2.json"),
            c.join("hosts"),
            root.join("cluster/raft/db"),
            root.join("volumes/v/volume.json"),
        ] {
            std::fs::write(&f, "x").unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        for d in [
            &root,
            &root.join("containers"),
            &c,
            &root.join("cluster/raft"),
        ] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        secure_data_root(&root).unwrap();
        for d in [
            root.clone(),
            root.join("containers"),
            c.clone(),
            root.join("cluster"),
            root.join("cluster/raft"),
            root.join("volumes/v"),
        ] {
            assert_eq!(mode(&d), 0o700, "{}", d.display());
        }
        assert_eq!(mode(&c.join("config.v2.json")), 0o600);
        assert_eq!(mode(&root.join("cluster/raft/db")), 0o600);
        assert_eq!(mode(&root.join("volumes/v/volume.json")), 0o600);
        // Container content and what is bind-mounted into containers keep their modes.
        assert_eq!(mode(&c.join("hosts")), 0o644);
        assert_eq!(mode(&c.join("upper")), 0o755);
        assert_eq!(mode(&root.join("volumes/v/_data")), 0o755);
    }
}

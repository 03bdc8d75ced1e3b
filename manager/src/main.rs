//! `flotilla-manager`: a manager node. `init` starts a cluster, `join` enters
//! one with a manager token, and with no subcommand the node resumes from its
//! data root after a restart.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args as ClapArgs, Parser, Subcommand};
use manager::daemon::{self, serve, Manager, Options};

/// Flotilla manager: keeps the cluster's state with Raft, issues node
/// certificates, and serves the control API.
///
/// Start a cluster with `flotilla-manager init`; add managers with
/// `flotilla-manager join --token TOKEN ADDR` and workers with
/// `flotilla-worker join --token TOKEN ADDR`. Run without a subcommand to
/// resume a node after a restart. Every connection between nodes is mutual
/// TLS with certificates from the cluster's own CA.
#[derive(Parser)]
#[command(name = "flotilla-manager", version, max_term_width = 100)]
struct Args {
    /// Local socket for the `flotilla` CLI (root-only).
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///run/flotilla/flotilla.sock",
        env = "FLOTILLA_HOST",
        global = true
    )]
    host: String,
    /// Directory for the node's certificates and Raft state.
    #[arg(long = "data-root", default_value = "/var/lib/flotilla", global = true)]
    data_root: PathBuf,
    /// Log at debug level.
    #[arg(short = 'D', long, global = true)]
    debug: bool,
    /// Containers to keep prepared in advance for the local engine (0 disables).
    #[arg(long = "sandbox-pool", default_value_t = 8, global = true, value_parser = clap::value_parser!(u16).range(0..=64))]
    sandbox_pool: u16,
    /// Name of the local engine's default bridge device.
    #[arg(long = "bridge", default_value = "flotilla0", global = true)]
    bridge: String,
    /// Address and prefix of the default bridge (its gateway).
    #[arg(long = "bip", default_value = "10.87.0.1/16", global = true)]
    bip: String,
    /// Inter-container communication on the default bridge.
    #[arg(long = "icc", default_value_t = true, action = clap::ArgAction::Set, global = true)]
    icc: bool,
    /// Recover a cluster from this manager's state alone: it becomes the only
    /// manager, keeping every object; other managers must join again.
    #[arg(long = "force-new-cluster")]
    force_new_cluster: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(ClapArgs, Clone)]
struct Network {
    /// Address other nodes reach this manager at (IP or name; default: the
    /// listen address, or this machine's only non-loopback IPv4 address).
    #[arg(long = "advertise-addr", value_name = "ADDR")]
    advertise_addr: Option<String>,
    /// Where the cluster port listens.
    #[arg(
        long = "listen-addr",
        value_name = "ADDR[:PORT]",
        default_value = "0.0.0.0:2377"
    )]
    listen_addr: String,
}

#[derive(Subcommand)]
enum Command {
    /// Start a new cluster with this node as its first manager, then serve.
    Init {
        #[command(flatten)]
        net: Network,
        /// How often nodes report that they are alive; a node that misses
        /// three periods is marked down.
        #[arg(long = "heartbeat-period", default_value = "1s", value_parser = humantime::parse_duration)]
        heartbeat_period: Duration,
        /// Validity of node certificates (they renew themselves when a third
        /// is left; a node offline until its certificate expired must join again).
        #[arg(long = "cert-expiry", default_value = "90d", value_parser = humantime::parse_duration)]
        cert_expiry: Duration,
    },
    /// Join an existing cluster as a manager, then serve.
    Join {
        #[command(flatten)]
        net: Network,
        /// A manager join token (`flotilla join-token manager` on a manager); or
        /// from the environment, which other users cannot read (a command
        /// line they can).
        #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// A manager's cluster address.
        #[arg(value_name = "MANAGER-ADDR[:PORT]")]
        remote: String,
    },
    /// (internal) hold one container: started by the engine.
    #[command(hide = true)]
    Shim { sandbox: String },
    /// (internal) run a process in a container: started by the engine.
    #[command(hide = true)]
    ExecHelper { request: String },
    /// Issue a certificate for a remote `flotilla` client
    /// (`flotilla -H tcp://MANAGER:2377 …`) through the running manager at
    /// `-H` (run on a manager, as root). The key is made here; the
    /// certificate is recorded in the cluster (list and revoke it with
    /// `flotilla cluster client-cert ls|revoke`). Writes ca.pem, cert.pem and
    /// key.pem.
    ClientCert {
        /// Directory to write the files to.
        #[arg(long = "out", value_name = "DIR", default_value = ".")]
        out: PathBuf,
        /// Validity of the certificate (at most 365d).
        #[arg(long = "expiry", default_value = "90d", value_parser = humantime::parse_duration)]
        expiry: Duration,
        /// A name to recognize the certificate by in `client-cert ls`.
        #[arg(long = "name", default_value = "")]
        name: String,
        /// Grant the admin scope: the manager join token, promote and demote,
        /// and managing client certificates.
        #[arg(long = "admin")]
        admin: bool,
    },
}

/// `client-cert`: asks the manager on the local socket `host` to issue and
/// record a client certificate for a key made here.
async fn client_cert(
    host: &str,
    out: &std::path::Path,
    expiry: Duration,
    name: &str,
    admin: bool,
) -> anyhow::Result<()> {
    use agent_common::control_proto::{control_client::ControlClient, ClientCertRequest};
    use agent_common::pki::NodeKey;
    let socket = worker::daemon::socket_path(host)?;
    let path = socket.clone();
    let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .with_context(|| {
            format!(
                "cannot reach the manager at {host}: client-cert runs on a manager whose daemon is running (pass its -H)"
            )
        })?;
    let key = NodeKey::generate()?;
    let reply = ControlClient::new(channel)
        .issue_client_cert(ClientCertRequest {
            csr_pem: key.csr()?.to_pem(),
            name: name.to_string(),
            expiry_secs: expiry.as_secs(),
            admin,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    std::fs::create_dir_all(out).with_context(|| format!("failed to create {}", out.display()))?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        agent_common::pki::write_private_file(&out.join(name), text.as_bytes())
            .with_context(|| format!("failed to write {}", out.join(name).display()))
    };
    write("ca.pem", &reply.ca_pem)?;
    write("cert.pem", &reply.cert_pem)?;
    write("key.pem", &key.to_pem())?;
    println!(
        "Wrote ca.pem, cert.pem and key.pem to {} (client {}, serial {}, valid {}{}).\n\
         Use them with: flotilla -H tcp://MANAGER-ADDR:2377 --tlscacert ca.pem --tlscert cert.pem --tlskey key.pem node ls\n\
         Revoke it with: flotilla cluster client-cert revoke {}",
        out.display(),
        reply.client_id,
        reply.serial,
        humantime::format_duration(expiry),
        if admin { ", admin scope" } else { "" },
        reply.serial,
    );
    Ok(())
}

/// Raises the soft limit of open files to the hard limit: every connection,
/// container log and Raft file takes a descriptor, and the default soft limit
/// (often 1024) is reached by a few hundred idle connections.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!("failed to raise the open files limit from {soft} to {hard}: {e}");
            } else {
                tracing::debug!("open files limit raised from {soft} to {hard}");
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("failed to read the open files limit: {e}"),
    }
}

fn parse_listen(s: &str) -> anyhow::Result<SocketAddr> {
    let with_port = agent_common::tls::grpc::with_port(s, agent_common::DEFAULT_CLUSTER_PORT);
    with_port
        .parse()
        .with_context(|| format!("invalid --listen-addr {s:?}: use IP[:PORT], e.g. 0.0.0.0:2377"))
}

fn main() {
    let args = Args::parse();
    match &args.command {
        // The engine re-executes this binary for each container's shim and
        // each exec: they must stay single-threaded until they fork.
        Some(Command::Shim { sandbox }) => std::process::exit(worker::runtime::shim::main(sandbox)),
        Some(Command::ExecHelper { request }) => {
            std::process::exit(worker::runtime::exec::main(request))
        }
        _ => {}
    }
    let debug = args.debug;
    // openraft logs every failed replication RPC at ERROR; the transport
    // logs each peer's trouble once per episode instead (docs/raft.md).
    worker::daemon::run_daemon(
        "flotilla-manager",
        debug,
        "openraft=error,openraft::replication=off,openraft::core::raft_core=off",
        run(args),
    );
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(Command::ClientCert {
        out,
        expiry,
        name,
        admin,
    }) = &args.command
    {
        return client_cert(&args.host, out, *expiry, name, *admin).await;
    }
    if !nix::unistd::Uid::effective().is_root() {
        bail!(
            "flotilla-manager must run as root (its engine creates namespaces, mounts and cgroups)"
        );
    }
    raise_fd_limit();
    let socket = worker::daemon::socket_path(&args.host)?;
    worker::daemon::secure_data_root(&args.data_root)?;
    // For a restart in place (after a demotion): the same flags, no subcommand.
    let _ = daemon::RESTART_ARGS.set(vec![
        "-H".into(),
        args.host.clone(),
        "--data-root".into(),
        args.data_root.display().to_string(),
        "--sandbox-pool".into(),
        args.sandbox_pool.to_string(),
        "--bridge".into(),
        args.bridge.clone(),
        "--bip".into(),
        args.bip.clone(),
        format!("--icc={}", args.icc),
    ]);
    let (net, heartbeat_period, cert_expiry) = match &args.command {
        Some(Command::Init {
            net,
            heartbeat_period,
            cert_expiry,
        }) => (Some(net.clone()), *heartbeat_period, *cert_expiry),
        Some(Command::Join { net, .. }) => (
            Some(net.clone()),
            Duration::from_secs(1),
            agent_common::pki::DEFAULT_NODE_CERT_VALIDITY,
        ),
        _ => (
            None,
            Duration::from_secs(1),
            agent_common::pki::DEFAULT_NODE_CERT_VALIDITY,
        ),
    };
    if heartbeat_period < Duration::from_millis(100) || heartbeat_period > Duration::from_secs(600)
    {
        bail!("--heartbeat-period must be between 100ms and 10m");
    }
    if cert_expiry < Duration::from_secs(10) {
        bail!("--cert-expiry must be at least 10s (and should be hours or days outside tests)");
    }
    let opts = Options {
        data_root: args.data_root.clone(),
        host: args.host.clone(),
        listen_addr: parse_listen(
            net.as_ref()
                .map(|n| n.listen_addr.as_str())
                .unwrap_or("0.0.0.0:2377"),
        )?,
        advertise_addr: net.and_then(|n| n.advertise_addr),
        heartbeat_period,
        cert_validity: cert_expiry,
    };
    // The local socket first: a second daemon on the same socket fails
    // before touching any state.
    let local = worker::daemon::bind_socket(&socket).await?;
    let (m, cluster_listener) = match &args.command {
        Some(Command::Init { .. }) => {
            if args.force_new_cluster {
                bail!("--force-new-cluster resumes an existing manager: run it without `init`");
            }
            daemon::init(&opts).await?
        }
        Some(Command::Join { token, remote, .. }) => daemon::join(&opts, token, remote).await?,
        _ => daemon::resume(&opts, args.force_new_cluster).await?,
    };
    // The local engine: managers run containers too.
    let engine = worker::daemon::start_engine(&worker::daemon::EngineOptions {
        data_root: args.data_root.clone(),
        sandbox_pool: args.sandbox_pool as usize,
        bridge: args.bridge.clone(),
        bip: args.bip.clone(),
        icc: args.icc,
    })
    .await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let cluster_server = tokio::spawn(serve::serve_cluster_port(
        Arc::clone(&m),
        cluster_listener,
        stopped(stop_rx.clone()),
    ));
    let agent_engine = Arc::clone(&engine);
    let local_server = tokio::spawn(serve::serve_local(
        Arc::clone(&m),
        engine,
        local,
        stopped(stop_rx.clone()),
    ));
    let membership = daemon::spawn_background(&m);
    // Managers run tasks too: the worker agent of this node.
    worker::agent::spawn(agent_engine, membership);
    announce(&m, &args).await;
    if matches!(args.command, Some(Command::Join { .. })) {
        // Ready only once this manager votes (it counts for the quorum).
        daemon::wait_until_voter(&m).await;
    }
    tracing::info!(
        node = %m.node_id,
        cluster_addr = %m.cluster_addr,
        socket = %socket.display(),
        "flotilla-manager ready"
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("failed to watch SIGTERM")?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        r = cluster_server => { r??; bail!("the cluster port server stopped"); }
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), local_server).await;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// After `init`: how to add nodes (Docker prints the same).
async fn announce(m: &Arc<Manager>, args: &Args) {
    if !matches!(args.command, Some(Command::Init { .. })) {
        return;
    }
    let Some(cluster) = m.cluster() else {
        return;
    };
    let worker = m.join_token(&cluster, agent_common::pki::NodeRole::Worker);
    println!(
        "Cluster initialized: this node ({}) is now a manager.\n\n\
         To add a worker to this cluster, run the following command on it:\n\n    \
         flotilla-worker join --token {} {}\n\n\
         To add a manager to this cluster, run `flotilla join-token manager` and follow the instructions.\n",
        m.node_id, worker, m.cluster_addr
    );
}

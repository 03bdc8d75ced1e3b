//! `flotilla-worker`: the worker daemon (no subcommand), and the processes it
//! re-executes itself as: `shim` (one per running container) and
//! `exec-helper` (one per `exec`).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};

/// Flotilla worker: a node's container engine and its API socket.
///
/// Run without a subcommand to start the daemon. Clients (`flotilla`) find it
/// with -H or FLOTILLA_HOST. Containers keep running when the daemon stops or
/// crashes; a restarted daemon adopts them again.
#[derive(Parser)]
#[command(name = "flotilla-worker", version)]
struct Args {
    /// Socket to serve the engine API on (root-only).
    #[arg(
        short = 'H',
        long = "host",
        default_value = "unix:///run/flotilla/flotilla.sock",
        env = "FLOTILLA_HOST"
    )]
    host: String,
    /// Directory for images, containers and volumes.
    #[arg(long = "data-root", default_value = "/var/lib/flotilla")]
    data_root: PathBuf,
    /// Containers to keep prepared in advance (namespaces and cgroups made
    /// ahead of time, which takes most of a start); 0 disables.
    #[arg(long = "sandbox-pool", default_value_t = 8, value_parser = clap::value_parser!(u16).range(0..=64))]
    sandbox_pool: u16,
    /// Name of the default bridge network's host bridge device.
    #[arg(long = "bridge", default_value = "flotilla0")]
    bridge: String,
    /// Address and prefix of the default bridge (its gateway); containers get
    /// addresses from this subnet. Docker's docker0 uses 172.17.0.1/16.
    #[arg(long = "bip", default_value = "10.87.0.1/16")]
    bip: String,
    /// Inter-container communication on the default bridge; with --icc=false
    /// containers reach each other only through links, on the exposed ports.
    #[arg(long = "icc", default_value_t = true, action = clap::ArgAction::Set)]
    icc: bool,
    /// The largest image layer accepted from a registry or an archive, both
    /// compressed and unpacked (e.g. 512m, 32g); a larger one is refused.
    #[arg(long = "max-layer-size", default_value = "32g", value_parser = worker::image::limits::parse_size)]
    max_layer_size: u64,
    /// Space to keep free on the data root's filesystem: a pull, load or
    /// import that would use it stops and removes what it wrote.
    #[arg(long = "min-free-space", default_value = "256m", value_parser = worker::image::limits::parse_size)]
    min_free_space: u64,
    /// Log at debug level.
    #[arg(short = 'D', long)]
    debug: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Join a cluster as a worker (with a worker token from a manager), then
    /// serve. The membership is kept in the data root: later starts without
    /// a subcommand resume it.
    Join {
        /// A worker join token (`flotilla join-token worker` on a manager); or
        /// from the environment, which other users cannot read (a command
        /// line they can).
        #[arg(long, env = "FLOTILLA_JOIN_TOKEN", hide_env_values = true)]
        token: String,
        /// Address other nodes reach this worker at (default: this
        /// machine's only non-loopback IPv4 address).
        #[arg(long = "advertise-addr", value_name = "ADDR")]
        advertise_addr: Option<String>,
        /// A manager's cluster address.
        #[arg(value_name = "MANAGER-ADDR[:PORT]")]
        remote: String,
    },
    /// (internal) hold one container: started by the daemon.
    #[command(hide = true)]
    Shim { sandbox: String },
    /// (internal) run a process in a container: started by the daemon.
    #[command(hide = true)]
    ExecHelper { request: String },
}

fn main() {
    let args = Args::parse();
    match &args.command {
        // The shim and the helper must stay single-threaded until they fork:
        // they run before any runtime or thread is created.
        Some(Command::Shim { sandbox }) => std::process::exit(worker::runtime::shim::main(sandbox)),
        Some(Command::ExecHelper { request }) => {
            std::process::exit(worker::runtime::exec::main(request))
        }
        Some(Command::Join { .. }) | None => {}
    }
    let debug = args.debug;
    worker::daemon::run_daemon("flotilla-worker", debug, "", serve(args));
}

async fn serve(args: Args) -> anyhow::Result<()> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("flotilla-worker must run as root (it creates namespaces, mounts and cgroups)");
    }
    let socket = worker::daemon::socket_path(&args.host)?;
    worker::daemon::secure_data_root(&args.data_root)?;
    let membership = cluster_membership(&args).await?;
    let listener = worker::daemon::bind_socket(&socket).await?;
    let engine = worker::daemon::start_engine(&worker::daemon::EngineOptions {
        data_root: args.data_root.clone(),
        sandbox_pool: args.sandbox_pool as usize,
        bridge: args.bridge.clone(),
        bip: args.bip.clone(),
        icc: args.icc,
    })
    .await?;
    engine.images.set_limits(worker::image::Limits {
        max_layer_size: args.max_layer_size,
        min_free_space: args.min_free_space,
    });
    tracing::info!(socket = %socket.display(), data_root = %args.data_root.display(), cgroups = engine.cgroups.describe(), "flotilla-worker ready");
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        tracing::info!("shutting down; containers keep running");
    };
    let managers_hint = membership.as_ref().map(|(_, record)| Arc::clone(record));
    if let Some((membership, _)) = membership {
        // Only a node in a cluster runs tasks the managers assign.
        worker::agent::spawn(Arc::clone(&engine), membership);
    }
    tonic::transport::Server::builder()
        .add_service(worker::engine::api::EngineService::server(engine))
        .add_service(worker::cluster::not_a_manager(managers_hint))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("the API server failed")?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

/// The node's cluster membership: joins first for `join`, resumes it when
/// the data root holds one, and returns what the node's agent needs.
async fn cluster_membership(
    args: &Args,
) -> anyhow::Result<
    Option<(
        worker::cluster::membership::Membership,
        Arc<Mutex<worker::cluster::NodeRecord>>,
    )>,
> {
    use worker::cluster::{self, ClusterFiles, ManagerClients, NodeRecord};
    let files = ClusterFiles::new(&args.data_root);
    let hostname = cluster::hostname();
    let (record, identity) = match &args.command {
        Some(Command::Join {
            token,
            advertise_addr,
            remote,
        }) => {
            if files.exists() {
                bail!(
                    "this node is already part of a cluster (found {}): run `flotilla-worker` without a subcommand to resume it, or remove that directory to join another",
                    files.dir().display()
                );
            }
            let parsed = agent_common::pki::JoinToken::parse(token)?;
            if parsed.role() != agent_common::pki::NodeRole::Worker {
                bail!("this is a manager join token: join as a manager with `flotilla-manager join --token … {remote}`, or use the worker token (`flotilla join-token worker` on a manager)");
            }
            let advertise = match advertise_addr {
                Some(a) => a.clone(),
                None => cluster::default_advertise_addr(None).map_err(|e| anyhow::anyhow!(e))?,
            };
            let joined = cluster::join(token, remote, &hostname, &advertise, "flotilla-worker")
                .await
                .context("failed to join the cluster")?;
            let reply = &joined.reply;
            files.save_identity(&joined.key, &reply.cert_pem, &reply.ca_pem)?;
            let mut managers = reply.managers.clone();
            if managers.is_empty() {
                managers.push(remote.clone());
            }
            let record = NodeRecord {
                node_id: reply.node_id.clone(),
                role: "worker".into(),
                managers,
                advertise_addr: advertise,
                heartbeat_period_ms: reply.heartbeat_period_ms,
                ..Default::default()
            };
            files.save_record(&record)?;
            println!(
                "This node joined the cluster as a worker (node ID {}).",
                record.node_id
            );
            (record, joined.identity)
        }
        _ if files.exists() => (files.load_record()?, files.load_identity()?),
        _ => return Ok(None),
    };
    let clients = ManagerClients::new(&identity)?;
    let (tx, _) = tokio::sync::watch::channel(Arc::new(identity));
    let record = Arc::new(Mutex::new(record));
    Ok(Some((
        worker::cluster::membership::Membership {
            files,
            record: Arc::clone(&record),
            identity: tx,
            clients,
            hostname,
            role_changes: None,
        },
        record,
    )))
}

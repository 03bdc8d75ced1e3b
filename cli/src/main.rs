//! `flotilla`: the command-line client of the local Flotilla engine. This file
//! holds the clap command tree (verbs and flags mirror the `docker` CLI) and
//! the dispatch to `commands::*`; it also decides exit codes: 125 for errors of
//! `run`/`create` and for bad flags, the container's own status where there is
//! one, 1 for any other error. Every error is one line on stderr: `Error: …`.
#![forbid(unsafe_code)]

mod client;
mod commands;
mod config;
mod format;
mod parse;
mod session;
mod tty;

use clap::{ArgAction, Args, Parser, Subcommand};
use std::path::PathBuf;

/// Flotilla: a Swarm-style container scheduler. These commands talk to the
/// local engine (flotilla-worker) over its unix socket.
#[derive(Parser, Debug)]
#[command(
    name = "flotilla",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// Daemon socket to connect to.
    #[arg(
        short = 'H',
        long = "host",
        env = "FLOTILLA_HOST",
        default_value = client::DEFAULT_HOST,
        global = true,
        value_name = "unix://PATH|tcp://ADDR:PORT"
    )]
    pub host: String,

    /// Directory of the client's config.json (registry credentials)
    /// [default: ~/.flotilla].
    #[arg(
        long = "config",
        env = "FLOTILLA_CONFIG",
        global = true,
        value_name = "DIR"
    )]
    pub config: Option<PathBuf>,

    /// CA certificate to trust for `-H tcp://…` [default: DIR/ca.pem of --config].
    #[arg(long = "tlscacert", global = true, value_name = "FILE")]
    pub tls_ca_cert: Option<PathBuf>,
    /// Client certificate for `-H tcp://…` (`flotilla-manager client-cert`)
    /// [default: DIR/cert.pem of --config].
    #[arg(long = "tlscert", global = true, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// Client key for `-H tcp://…` [default: DIR/key.pem of --config].
    #[arg(long = "tlskey", global = true, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

/// Top-level commands.
#[derive(Subcommand, Debug)]
pub enum Command {
    #[command(flatten)]
    Container(ContainerVerb),
    /// List containers.
    Ps(PsArgs),
    /// Manage containers.
    #[command(name = "container", subcommand)]
    ContainerGroup(ContainerGroup),

    #[command(flatten)]
    Image(ImageVerb),
    /// List images.
    Images(ImagesArgs),
    /// Remove one or more images.
    Rmi(RmiArgs),
    /// Manage images.
    #[command(name = "image", subcommand)]
    ImageGroup(ImageGroup),

    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeGroup),

    /// Manage networks.
    #[command(subcommand)]
    Network(commands::network::NetworkGroup),

    /// Return low-level information on containers, images or volumes.
    Inspect(InspectArgs),
    /// Show the client and daemon versions.
    Version,
    /// Display system-wide information.
    Info,

    /// Manage cluster nodes (run against a manager).
    #[command(subcommand)]
    Node(commands::cluster::NodeGroup),
    /// Show the cluster's managers, leader and Raft state (run against a manager).
    #[command(subcommand)]
    Cluster(commands::cluster::ClusterGroup),
    /// Show, or rotate, the token a node joins the cluster with (run against a manager).
    JoinToken(commands::cluster::JoinTokenArgs),
    /// Manage services: replicated or global tasks scheduled onto the cluster's nodes
    /// (run against a manager).
    #[command(subcommand)]
    Service(commands::service::ServiceGroup),
}

/// Container verbs available both at the top level and under `container`.
#[derive(Subcommand, Debug)]
pub enum ContainerVerb {
    /// Create and run a new container from an image.
    Run(RunArgs),
    /// Create a new container without starting it.
    Create(RunArgs),
    /// Start one or more stopped containers.
    Start(StartArgs),
    /// Stop one or more running containers (SIGTERM, then SIGKILL after a grace period).
    Stop(StopArgs),
    /// Kill one or more running containers.
    Kill(KillArgs),
    /// Restart one or more containers.
    Restart(StopArgs),
    /// Remove one or more containers.
    Rm(RmArgs),
    /// Fetch the logs of a container.
    Logs(LogsArgs),
    /// Execute a command in a running container.
    Exec(ExecArgs),
    /// Attach local standard input, output, and error to a running container.
    Attach(AttachArgs),
    /// Pause all processes within one or more containers.
    Pause(Targets),
    /// Unpause all processes within one or more containers.
    Unpause(Targets),
    /// Block until one or more containers stop, then print their exit codes.
    Wait(Targets),
    /// Rename a container.
    Rename(RenameArgs),
    /// Inspect changes to files on a container's filesystem (A added, C changed, D deleted).
    Diff(OneContainer),
    /// Export a container's filesystem as a tar archive.
    Export(ExportArgs),
    /// Create a new image from a container's changes.
    Commit(CommitArgs),
    /// Display the running processes of a container.
    Top(OneContainer),
    /// List a container's published ports (`80/tcp -> 0.0.0.0:8080`).
    Port(OneContainer),
}

/// `flotilla container …`.
// Parsed once per process: the size of the largest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum ContainerGroup {
    #[command(flatten)]
    Verb(ContainerVerb),
    /// List containers.
    #[command(alias = "ps", alias = "list")]
    Ls(PsArgs),
    /// Display detailed information on one or more containers.
    Inspect(TypedInspectArgs),
    /// Remove all stopped containers.
    Prune(PruneArgs),
}

/// Image verbs available both at the top level and under `image`.
#[derive(Subcommand, Debug)]
pub enum ImageVerb {
    /// Create a tag TARGET_IMAGE that refers to SOURCE_IMAGE.
    Tag(TagArgs),
    /// Show the history of an image.
    History(HistoryArgs),
    /// Load images from a tar archive (docker save format or OCI layout).
    Load(LoadArgs),
    /// Save one or more images to a tar archive (streamed to stdout by default).
    Save(SaveArgs),
    /// Import a root filesystem tarball as a one-layer image.
    Import(ImportArgs),
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PullArgs),
    /// Log in to a registry and store the credentials.
    Login(LoginArgs),
    /// Log out from a registry (remove its stored credentials).
    Logout(LogoutArgs),
}

/// `flotilla image …`.
#[derive(Subcommand, Debug)]
pub enum ImageGroup {
    #[command(flatten)]
    Verb(ImageVerb),
    /// List images.
    #[command(alias = "list")]
    Ls(ImagesArgs),
    /// Remove one or more images.
    #[command(alias = "remove")]
    Rm(RmiArgs),
    /// Display detailed information on one or more images.
    Inspect(TypedInspectArgs),
    /// Remove unused images (dangling ones, or all unused with -a).
    Prune(ImagePruneArgs),
}

/// `flotilla volume …`.
#[derive(Subcommand, Debug)]
pub enum VolumeGroup {
    /// Create a volume.
    Create(VolumeCreateArgs),
    /// List volumes.
    #[command(alias = "list")]
    Ls(VolumeLsArgs),
    /// Display detailed information on one or more volumes.
    Inspect(TypedInspectArgs),
    /// Remove one or more volumes.
    #[command(alias = "remove")]
    Rm(VolumeRmArgs),
    /// Remove all unused local volumes.
    Prune(PruneArgs),
}

/// Registry connection options of pull/push/login/run.
#[derive(Args, Debug, Clone, Default)]
pub struct RegistryArgs {
    /// Reach this registry (host[:port]) over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST")]
    pub insecure_registry: Vec<String>,
    /// PEM file of extra certificate authorities for HTTPS registries.
    #[arg(long = "registry-ca", value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
}

/// Flags of `run` and `create`.
#[derive(Args, Debug, Clone)]
#[command(disable_help_flag = true)]
pub struct RunArgs {
    /// Print help.
    #[arg(long, action = ArgAction::Help)]
    pub help: Option<bool>,
    /// Run the container in the background and print its ID.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep STDIN open and forward the client's stdin to the container.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container when it exits (the daemon does it).
    #[arg(long)]
    pub rm: bool,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the client's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file of KEY=VALUE lines (# comments).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Container host name.
    #[arg(short = 'h', long)]
    pub hostname: Option<String>,
    /// Overwrite the image's ENTRYPOINT ("" clears it).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Memory limit: bytes or a number with unit b, k, m, g (e.g. 512m).
    #[arg(short = 'm', long, value_name = "SIZE", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Number of CPUs the container may use (e.g. 1.5).
    #[arg(long, value_name = "DECIMAL", allow_negative_numbers = true)]
    pub cpus: Option<String>,
    /// CPU shares: relative weight against other containers (default 1024).
    #[arg(short = 'c', long = "cpu-shares", value_name = "INT")]
    pub cpu_shares: Option<i64>,
    /// Maximum number of processes (-1 or 0 for unlimited).
    #[arg(long = "pids-limit", allow_negative_numbers = true, value_name = "INT")]
    pub pids_limit: Option<i64>,
    /// Mount a volume: NAME:/path, /host/path:/path or /path, with optional :ro or :rw.
    #[arg(short = 'v', long = "volume", value_name = "SPEC")]
    pub volumes: Vec<String>,
    /// Mount all volumes of another container (CONTAINER[:ro|rw]).
    #[arg(long = "volumes-from", value_name = "CONTAINER")]
    pub volumes_from: Vec<String>,
    /// Link to another container on the default bridge (NAME[:ALIAS]): its address,
    /// ports and environment appear as ALIAS_* variables, and ALIAS in /etc/hosts.
    #[arg(long = "link", value_name = "NAME[:ALIAS]")]
    pub links: Vec<String>,
    /// Add a line to /etc/hosts (HOST:IP).
    #[arg(long = "add-host", value_name = "HOST:IP")]
    pub add_host: Vec<String>,
    /// DNS server for the container's /etc/resolv.conf (replaces the host's).
    #[arg(long = "dns", value_name = "IP")]
    pub dns: Vec<String>,
    /// Restart policy: no, on-failure[:max-retries], always or unless-stopped.
    #[arg(long, value_name = "POLICY")]
    pub restart: Option<String>,
    /// Signal that stops the container (e.g. SIGTERM, TERM or 15).
    #[arg(long = "stop-signal", value_name = "SIGNAL")]
    pub stop_signal: Option<String>,
    /// Seconds to wait after the stop signal before killing the container.
    #[arg(
        long = "stop-timeout",
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub stop_timeout: Option<i64>,
    /// Run an init process as PID 1 that forwards signals and reaps zombies.
    #[arg(long)]
    pub init: bool,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only")]
    pub read_only: bool,
    /// Add a Linux capability (e.g. NET_ADMIN, or ALL).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (e.g. CHOWN, or ALL).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Add a host device (HOST[:CONTAINER][:PERMS], PERMS of r, w, m).
    #[arg(long = "device", value_name = "DEVICE")]
    pub devices: Vec<String>,
    /// Security options: seccomp=unconfined, seccomp=FILE, no-new-privileges.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Set metadata on the container (KEY=VALUE or KEY).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Network: bridge (the default), none, host, container:NAME, or a user-defined network.
    #[arg(long, alias = "net", value_name = "NETWORK")]
    pub network: Option<String>,
    /// A network-scoped name of the container (user-defined networks; repeatable).
    #[arg(long = "network-alias", alias = "net-alias", value_name = "NAME")]
    pub network_alias: Vec<String>,
    /// A fixed IPv4 address on the user-defined network.
    #[arg(long = "ip", value_name = "IP")]
    pub ip: Option<String>,
    /// Expose a port or range (80, 53/udp, 8000-8010).
    #[arg(long, value_name = "PORT")]
    pub expose: Vec<String>,
    /// Publish a container port on the host ([IP:][HOST_PORT:]PORT[/PROTO]); a missing
    /// host port is chosen from the ephemeral range. Needs the bridge network.
    #[arg(short = 'p', long, value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Publish every exposed port (image EXPOSE and --expose) on an ephemeral host port.
    #[arg(short = 'P', long = "publish-all")]
    pub publish_all: bool,
    /// Key sequence that detaches from the container [default: ctrl-p,ctrl-q].
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// Suppress the pull output when the image is missing.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// The image to run.
    pub image: String,
    /// Command and arguments (replace the image's CMD).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<String>,
}

/// `start`.
#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach stdout/stderr and forward signals; exit with the container's code.
    #[arg(short = 'a', long)]
    pub attach: bool,
    /// Attach the container's stdin.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Key sequence that detaches from the container [default: ctrl-p,ctrl-q].
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// Containers (name or ID).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `stop` and `restart`.
#[derive(Args, Debug)]
pub struct StopArgs {
    /// Seconds to wait before killing the container [default: its own stop timeout].
    #[arg(
        short = 't',
        long = "time",
        alias = "timeout",
        allow_negative_numbers = true,
        value_name = "SECONDS"
    )]
    pub time: Option<i64>,
    /// Containers (name or ID).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `kill`.
#[derive(Args, Debug)]
pub struct KillArgs {
    /// Signal to send (e.g. SIGKILL, KILL, 9).
    #[arg(short = 's', long, default_value = "KILL")]
    pub signal: String,
    /// Containers (name or ID).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `rm`.
#[derive(Args, Debug)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Remove the anonymous volumes associated with the container.
    #[arg(short = 'v', long)]
    pub volumes: bool,
    /// Containers (name or ID).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// `ps` / `container ls`.
#[derive(Args, Debug, Default)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only display container IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Show the latest created container (includes all states).
    #[arg(short = 'l', long)]
    pub latest: bool,
    /// Show the last N created containers (includes all states).
    #[arg(short = 'n', long = "last", value_name = "N")]
    pub last: Option<usize>,
    /// Don't truncate output.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Filter: name=, id=, status=, label=KEY[=VALUE], ancestor=.
    #[arg(short = 'f', long = "filter", value_name = "FILTER")]
    pub filter: Vec<String>,
    /// Output format: table, json, or a template such as '{{.ID}} {{.Names}}'.
    #[arg(long)]
    pub format: Option<String>,
}

/// `logs`.
#[derive(Args, Debug)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Show timestamps.
    #[arg(short = 't', long)]
    pub timestamps: bool,
    /// Number of lines to show from the end of the logs, or all.
    #[arg(short = 'n', long, default_value = "all", value_name = "N")]
    pub tail: String,
    /// Container (name or ID).
    pub container: String,
}

/// `exec`.
#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Detached mode: run the command in the background.
    #[arg(short = 'd', long)]
    pub detach: bool,
    /// Keep STDIN open and forward the client's stdin.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Set an environment variable (KEY=VALUE, or KEY to copy the client's value).
    #[arg(short = 'e', long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Key sequence that detaches from the process [default: ctrl-p,ctrl-q].
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// Container (name or ID).
    pub container: String,
    /// Command and arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `attach`.
#[derive(Args, Debug)]
pub struct AttachArgs {
    /// Do not attach stdin.
    #[arg(long = "no-stdin")]
    pub no_stdin: bool,
    /// Key sequence that detaches from the container [default: ctrl-p,ctrl-q].
    #[arg(long = "detach-keys", value_name = "KEYS")]
    pub detach_keys: Option<String>,
    /// Container (name or ID).
    pub container: String,
}

/// Verbs taking one or more containers and no flags.
#[derive(Args, Debug)]
pub struct Targets {
    /// Containers (name or ID).
    #[arg(required = true)]
    pub containers: Vec<String>,
}

/// Verbs taking exactly one container.
#[derive(Args, Debug)]
pub struct OneContainer {
    /// Container (name or ID).
    pub container: String,
}

/// `rename`.
#[derive(Args, Debug)]
pub struct RenameArgs {
    /// Container (name or ID).
    pub container: String,
    /// New name.
    pub new_name: String,
}

/// `export`.
#[derive(Args, Debug)]
pub struct ExportArgs {
    /// Write to a file instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Container (name or ID).
    pub container: String,
}

/// `commit`.
#[derive(Args, Debug)]
pub struct CommitArgs {
    /// Apply a Dockerfile instruction to the new image (e.g. 'CMD ["sh"]'); repeatable.
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub change: Vec<String>,
    /// Commit message.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Author (e.g. "Jane Doe <jane@example.com>").
    #[arg(short = 'a', long)]
    pub author: Option<String>,
    /// Pause the container during the commit (-p=false to skip).
    #[arg(short = 'p', long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1, default_missing_value = "true", require_equals = true)]
    pub pause: bool,
    /// Container (name or ID).
    pub container: String,
    /// Name of the new image: REPOSITORY[:TAG].
    pub reference: Option<String>,
}

/// `inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Only look for this type of object: container, image or volume.
    #[arg(long = "type", value_parser = ["container", "image", "volume"])]
    pub kind: Option<String>,
    /// Format the output with a template (e.g. '{{.State.Status}}').
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Names or IDs.
    #[arg(required = true)]
    pub targets: Vec<String>,
}

/// `container inspect`, `image inspect`, `volume inspect`.
#[derive(Args, Debug)]
pub struct TypedInspectArgs {
    /// Format the output with a template (e.g. '{{.Id}}').
    #[arg(short = 'f', long)]
    pub format: Option<String>,
    /// Names or IDs.
    #[arg(required = true)]
    pub targets: Vec<String>,
}

/// `container prune`, `volume prune`.
#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `images` / `image ls`.
#[derive(Args, Debug, Default)]
pub struct ImagesArgs {
    /// Show all images (default hides intermediate images).
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Only show image IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Don't truncate output.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Output format: table, json, or a template such as '{{.Repository}}:{{.Tag}}'.
    #[arg(long)]
    pub format: Option<String>,
    /// Only show images of this repository (REPOSITORY[:TAG]).
    pub reference: Option<String>,
}

/// `rmi` / `image rm`.
#[derive(Args, Debug)]
pub struct RmiArgs {
    /// Force removal of the image, even if a container uses it.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Images (reference or ID).
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `image prune`.
#[derive(Args, Debug)]
pub struct ImagePruneArgs {
    /// Remove all unused images, not just dangling ones.
    #[arg(short = 'a', long)]
    pub all: bool,
    /// Do not prompt for confirmation.
    #[arg(short = 'f', long)]
    pub force: bool,
}

/// `tag`.
#[derive(Args, Debug)]
pub struct TagArgs {
    /// Existing image (reference or ID).
    pub source: String,
    /// New reference: [REGISTRY/]REPOSITORY[:TAG].
    pub target: String,
}

/// `history`.
#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Don't truncate output.
    #[arg(long = "no-trunc")]
    pub no_trunc: bool,
    /// Only show image IDs.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: table, json, or a template.
    #[arg(long)]
    pub format: Option<String>,
    /// Image (reference or ID).
    pub image: String,
}

/// `load`.
#[derive(Args, Debug)]
pub struct LoadArgs {
    /// Read from a tar archive file instead of stdin.
    #[arg(short = 'i', long, value_name = "FILE")]
    pub input: Option<PathBuf>,
    /// Suppress the load output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `save`.
#[derive(Args, Debug)]
pub struct SaveArgs {
    /// Write to a file instead of stdout.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Images to save.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// `import`.
#[derive(Args, Debug)]
pub struct ImportArgs {
    /// Apply a Dockerfile instruction to the image (e.g. 'CMD ["sh"]'); repeatable.
    #[arg(short = 'c', long = "change", value_name = "INSTRUCTION")]
    pub change: Vec<String>,
    /// Commit message for the imported image.
    #[arg(short = 'm', long)]
    pub message: Option<String>,
    /// Root filesystem tarball, or - for stdin.
    pub file: String,
    /// Name of the image: REPOSITORY[:TAG].
    pub reference: Option<String>,
}

/// `pull` and `push`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Suppress verbose output.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image reference: [REGISTRY/]REPOSITORY[:TAG|@DIGEST].
    pub image: String,
}

/// `login`.
#[derive(Args, Debug)]
pub struct LoginArgs {
    /// User name (prompted for when missing).
    #[arg(short = 'u', long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: this one shows in the process list).
    #[arg(short = 'p', long, conflicts_with = "password_stdin")]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long = "password-stdin")]
    pub password_stdin: bool,
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Registry host[:port].
    pub server: String,
}

/// `logout`.
#[derive(Args, Debug)]
pub struct LogoutArgs {
    /// Registry host[:port].
    pub server: String,
}

/// `volume create`.
#[derive(Args, Debug)]
pub struct VolumeCreateArgs {
    /// Volume name (same as the positional argument).
    #[arg(long = "name", conflicts_with = "volume")]
    pub name: Option<String>,
    /// Set metadata on the volume (KEY=VALUE).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Volume driver (only "local").
    #[arg(short = 'd', long, default_value = "local")]
    pub driver: String,
    /// Volume name; a random one when neither it nor --name is given.
    pub volume: Option<String>,
}

/// `volume ls`.
#[derive(Args, Debug)]
pub struct VolumeLsArgs {
    /// Only display volume names.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Output format: table, json, or a template such as '{{.Name}}'.
    #[arg(long)]
    pub format: Option<String>,
}

/// `volume rm`.
#[derive(Args, Debug)]
pub struct VolumeRmArgs {
    /// Force the removal of volumes (even in use).
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Volumes to remove.
    #[arg(required = true)]
    pub volumes: Vec<String>,
}

/// Whether errors of this command exit 125 (Docker does so for run/create).
fn engine_error_code(cmd: &Command) -> i32 {
    match cmd {
        Command::Container(ContainerVerb::Run(_) | ContainerVerb::Create(_))
        | Command::ContainerGroup(ContainerGroup::Verb(
            ContainerVerb::Run(_) | ContainerVerb::Create(_),
        )) => 125,
        _ => 1,
    }
}

/// `println!` panics when stdout is closed (`flotilla ps | head`): Rust
/// ignores SIGPIPE, so the write fails with EPIPE instead of ending the
/// process as it does for other Unix tools. This hook turns exactly that
/// panic into the quiet exit a shell expects (128 + SIGPIPE); every other
/// panic is reported as before.
fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if payload.starts_with("failed printing to std") && payload.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

fn main() {
    exit_quietly_on_closed_stdout();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 1,
                _ => 125,
            };
            if code == 0 {
                let _ = e.print();
            } else {
                // One line, as Docker's: what was wrong and where to look.
                let text = e.render().to_string();
                let first = text.lines().next().unwrap_or("invalid arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                let args: Vec<String> = std::env::args().skip(1).collect();
                let verb = args
                    .iter()
                    .take_while(|a| !a.starts_with('-'))
                    .take(2)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(" ");
                let help = if verb.is_empty() {
                    "flotilla --help".to_string()
                } else {
                    format!("flotilla {verb} --help")
                };
                eprintln!("Error: {first} (see '{help}')");
            }
            std::process::exit(code);
        }
    };
    // One thread is plenty for a client, and starts faster (every `run` pays it).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: failed to start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let fail_code = engine_error_code(&cli.command);
    let tls = client::TlsFiles {
        ca: cli.tls_ca_cert,
        cert: cli.tls_cert,
        key: cli.tls_key,
    };
    let ctx = commands::Ctx::new(cli.host, cli.config).with_tls(tls);
    let result = runtime.block_on(commands::dispatch(ctx, cli.command));
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("Error: {e:#}");
            // `run -d` of a missing command exits 127 like Docker's.
            match client::start_failure_code(&e) {
                Some(code) if fail_code == 125 => code,
                _ => fail_code,
            }
        }
    };
    // Exit without waiting for a blocked stdin reader thread.
    runtime.shutdown_background();
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn parse(args: &[&str]) -> Cli {
        let mut full = vec!["flotilla"];
        full.extend_from_slice(args);
        Cli::try_parse_from(full).unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    fn run_args(cli: Cli) -> RunArgs {
        match cli.command {
            Command::Container(ContainerVerb::Run(a))
            | Command::ContainerGroup(ContainerGroup::Verb(ContainerVerb::Run(a))) => a,
            other => panic!("not run: {other:?}"),
        }
    }

    #[test]
    fn command_tree_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_everything_after_the_image_as_the_command() {
        let a = run_args(parse(&[
            "run", "-d", "--name", "web", "-p", "8080:80", "busybox", "httpd", "-f", "-p", "80",
        ]));
        assert!(a.detach);
        assert_eq!(a.name.as_deref(), Some("web"));
        assert_eq!(a.publish, vec!["8080:80"]);
        assert_eq!(a.image, "busybox");
        assert_eq!(a.command, vec!["httpd", "-f", "-p", "80"]);
    }

    #[test]
    fn run_command_may_start_with_a_dash() {
        let a = run_args(parse(&["run", "--rm", "busybox", "-la"]));
        assert_eq!(a.command, vec!["-la"]);
        assert!(a.rm);
    }

    #[test]
    fn run_short_flags_mirror_docker() {
        let a = run_args(parse(&[
            "run",
            "-it",
            "-h",
            "box",
            "-m",
            "512m",
            "-c",
            "512",
            "-e",
            "A=1",
            "-e",
            "B",
            "-v",
            "data:/data:ro",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "-l",
            "k=v",
            "--pids-limit",
            "-1",
            "--restart",
            "on-failure:3",
            "--cpus",
            "1.5",
            "busybox",
        ]));
        assert!(a.interactive && a.tty);
        assert_eq!(a.hostname.as_deref(), Some("box"));
        assert_eq!(a.memory.as_deref(), Some("512m"));
        assert_eq!(a.cpu_shares, Some(512));
        assert_eq!(a.env, vec!["A=1", "B"]);
        assert_eq!(a.volumes, vec!["data:/data:ro"]);
        assert_eq!(a.pids_limit, Some(-1));
        assert!(a.command.is_empty());
    }

    #[test]
    fn container_group_reuses_the_verbs() {
        let a = run_args(parse(&["container", "run", "busybox", "true"]));
        assert_eq!(a.command, vec!["true"]);
        assert!(matches!(
            parse(&["container", "ls", "-a"]).command,
            Command::ContainerGroup(ContainerGroup::Ls(PsArgs { all: true, .. }))
        ));
        assert!(matches!(
            parse(&["container", "prune", "-f"]).command,
            Command::ContainerGroup(ContainerGroup::Prune(PruneArgs { force: true }))
        ));
    }

    #[test]
    fn global_host_flag_anywhere() {
        let cli = parse(&["ps", "-H", "unix:///tmp/x.sock", "-aq"]);
        assert_eq!(cli.host, "unix:///tmp/x.sock");
        match cli.command {
            Command::Ps(p) => assert!(p.all && p.quiet),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn stop_kill_rm_and_exec() {
        match parse(&["stop", "-t", "3", "a", "b"]).command {
            Command::Container(ContainerVerb::Stop(s)) => {
                assert_eq!(s.time, Some(3));
                assert_eq!(s.containers, vec!["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["kill", "-s", "TERM", "a"]).command {
            Command::Container(ContainerVerb::Kill(k)) => assert_eq!(k.signal, "TERM"),
            other => panic!("{other:?}"),
        }
        match parse(&["rm", "-fv", "a"]).command {
            Command::Container(ContainerVerb::Rm(r)) => assert!(r.force && r.volumes),
            other => panic!("{other:?}"),
        }
        match parse(&["exec", "-it", "-e", "X=1", "web", "sh", "-c", "echo hi"]).command {
            Command::Container(ContainerVerb::Exec(e)) => {
                assert!(e.interactive && e.tty);
                assert_eq!(e.command, vec!["sh", "-c", "echo hi"]);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn commit_pause_defaults_on() {
        match parse(&["commit", "-c", "CMD [\"sh\"]", "web", "app:v2"]).command {
            Command::Container(ContainerVerb::Commit(c)) => {
                assert!(c.pause);
                assert_eq!(c.reference.as_deref(), Some("app:v2"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&["commit", "-p=false", "web"]).command {
            Command::Container(ContainerVerb::Commit(c)) => assert!(!c.pause),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn image_and_volume_verbs() {
        match parse(&[
            "pull",
            "--insecure-registry",
            "127.0.0.1:5000",
            "127.0.0.1:5000/app",
        ])
        .command
        {
            Command::Image(ImageVerb::Pull(p)) => {
                assert_eq!(p.registry.insecure_registry, vec!["127.0.0.1:5000"]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            parse(&["image", "prune", "-a"]).command,
            Command::ImageGroup(ImageGroup::Prune(ImagePruneArgs { all: true, .. }))
        ));
        assert!(matches!(
            parse(&["image", "ls", "-q"]).command,
            Command::ImageGroup(ImageGroup::Ls(ImagesArgs { quiet: true, .. }))
        ));
        match parse(&["volume", "create", "-l", "a=b", "data"]).command {
            Command::Volume(VolumeGroup::Create(v)) => {
                assert_eq!(v.volume.as_deref(), Some("data"));
                assert_eq!(v.labels, vec!["a=b"]);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["login", "-u", "bob", "--password-stdin", "127.0.0.1:5000"]).command {
            Command::Image(ImageVerb::Login(l)) => {
                assert!(l.password_stdin);
                assert_eq!(l.username.as_deref(), Some("bob"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_flags_are_rejected() {
        assert!(Cli::try_parse_from(["flotilla", "run"]).is_err());
        assert!(Cli::try_parse_from(["flotilla", "run", "--bogus", "busybox"]).is_err());
        assert!(Cli::try_parse_from(["flotilla", "inspect", "--type", "pod", "x"]).is_err());
        assert!(
            Cli::try_parse_from(["flotilla", "login", "-p", "x", "--password-stdin", "r"]).is_err()
        );
    }

    #[test]
    fn run_errors_exit_125_others_1() {
        assert_eq!(engine_error_code(&parse(&["run", "busybox"]).command), 125);
        assert_eq!(
            engine_error_code(&parse(&["create", "busybox"]).command),
            125
        );
        assert_eq!(
            engine_error_code(&parse(&["container", "create", "busybox"]).command),
            125
        );
        assert_eq!(engine_error_code(&parse(&["ps"]).command), 1);
    }
}

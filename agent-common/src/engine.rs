//! The documents the local engine API carries as JSON: container configuration
//! (what `create` asks for), inspect output, and list rows. Field names follow
//! Docker's inspect output (PascalCase) so that scripts written for
//! `docker inspect` read Flotilla's the same way.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// An empty JSON object, the value type of Docker's `ExposedPorts` and `Volumes` maps.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct EmptyObject {}

/// The portable part of a container's configuration (Docker's `Config`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerConfig {
    pub hostname: String,
    pub domainname: String,
    /// `user`, `uid`, `user:group` or `uid:gid`, resolved inside the container.
    pub user: String,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub exposed_ports: BTreeMap<String, EmptyObject>,
    pub tty: bool,
    pub open_stdin: bool,
    /// Close stdin after the first attached client disconnects (`run -i`).
    pub stdin_once: bool,
    pub env: Vec<String>,
    /// `None` means "not given": the image's CMD applies (see [`resolve_command`]).
    pub cmd: Option<Vec<String>>,
    pub image: String,
    pub volumes: BTreeMap<String, EmptyObject>,
    pub working_dir: String,
    /// `None` means "not given": the image's ENTRYPOINT applies. `Some([""])` clears it.
    pub entrypoint: Option<Vec<String>>,
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
    pub stop_timeout: Option<i64>,
}

/// The restart policy of a container (`--restart`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct RestartPolicy {
    /// "", "no", "always", "unless-stopped" or "on-failure".
    pub name: String,
    pub maximum_retry_count: i64,
}

/// Where a container port is published on the host.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "PascalCase", default)]
pub struct PortBinding {
    /// Host address; empty means every address.
    pub host_ip: String,
    /// Host port; empty means one chosen from the ephemeral range.
    pub host_port: String,
}

/// A container's network state (Docker's `NetworkSettings`, bridge part).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkSettings {
    pub bridge: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub gateway: String,
    pub mac_address: String,
    /// `"80/tcp"` → where it is published (empty list: exposed only).
    pub ports: BTreeMap<String, Vec<PortBinding>>,
    /// User-defined networks the container is connected to, by network name.
    pub networks: BTreeMap<String, EndpointSettings>,
}

/// A container's endpoint on one network (Docker's `EndpointSettings`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointSettings {
    /// Network-scoped names of the container (`--network-alias`).
    pub aliases: Vec<String>,
    #[serde(rename = "NetworkID")]
    pub network_id: String,
    /// Set while the container runs.
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub gateway: String,
    #[serde(rename = "IPAddress")]
    pub ip_address: String,
    #[serde(rename = "IPPrefixLen")]
    pub ip_prefix_len: u8,
    pub mac_address: String,
    /// The interface inside the container (`eth0`, `eth1`, …).
    pub interface: String,
}

/// What `create` asks for on a user-defined network (Docker's `EndpointSettings` config part).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct EndpointConfig {
    pub aliases: Vec<String>,
    /// A fixed address (`--ip`); empty for the next free one.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
}

/// One subnet of a network (Docker's `IPAMConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct IpamConfig {
    pub subnet: String,
    pub gateway: String,
}

/// A network's address management (Docker's `IPAM`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Ipam {
    pub driver: String,
    pub config: Vec<IpamConfig>,
}

/// A container attached to a network, as `network inspect` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkContainer {
    pub name: String,
    #[serde(rename = "EndpointID")]
    pub endpoint_id: String,
    pub mac_address: String,
    /// `10.88.1.2/24`.
    #[serde(rename = "IPv4Address")]
    pub ipv4_address: String,
    #[serde(rename = "IPv6Address")]
    pub ipv6_address: String,
}

/// `network inspect` output, and one row of `network ls`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct NetworkInspect {
    pub name: String,
    pub id: String,
    pub created: String,
    /// Always "local" on one host.
    pub scope: String,
    /// "bridge", "host" or "null".
    pub driver: String,
    #[serde(rename = "EnableIPv6")]
    pub enable_ipv6: bool,
    #[serde(rename = "IPAM")]
    pub ipam: Ipam,
    pub internal: bool,
    pub attachable: bool,
    /// Running containers on the network, by container ID.
    pub containers: BTreeMap<String, NetworkContainer>,
    /// Driver options; `com.docker.network.bridge.name` names the host bridge.
    pub options: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
}

/// Host-specific settings of a container (Docker's `HostConfig`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HostConfig {
    /// `-v` specs as given: `NAME:/ctr[:ro]`, `/host:/ctr[:ro]` or `/ctr` (anonymous).
    pub binds: Vec<String>,
    pub volumes_from: Vec<String>,
    /// Legacy links `NAME:ALIAS` to containers on the default bridge.
    pub links: Vec<String>,
    /// `--add-host HOST:IP` entries for /etc/hosts.
    pub extra_hosts: Vec<String>,
    /// `--dns` servers for /etc/resolv.conf (replacing the host's).
    pub dns: Vec<String>,
    /// "bridge" (the default), "none", "host", "container:NAME" or the name
    /// of a user-defined network.
    pub network_mode: String,
    /// `-p`: `"80/tcp"` → host bindings.
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
    /// `-P`: publish every exposed port on an ephemeral host port.
    pub publish_all_ports: bool,
    pub restart_policy: RestartPolicy,
    pub auto_remove: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub readonly_rootfs: bool,
    pub init: bool,
    /// Memory limit in bytes; 0 = unlimited.
    pub memory: i64,
    /// CPU quota in units of 10^-9 CPUs (`--cpus 1.5` = 1_500_000_000).
    pub nano_cpus: i64,
    /// Relative CPU weight (`-c`), 0 = default (1024).
    pub cpu_shares: i64,
    /// Maximum number of processes; 0 = unlimited.
    pub pids_limit: i64,
    /// `--device`: host device nodes made available in the container.
    pub devices: Vec<DeviceMapping>,
    /// `--security-opt`: `seccomp=unconfined`, `seccomp=<profile JSON>` (the
    /// client sends the file's content, as Docker's does), `no-new-privileges`.
    pub security_opt: Vec<String>,
}

/// One `--device HOST[:CONTAINER][:PERMS]` (Docker's `DeviceMapping`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeviceMapping {
    pub path_on_host: String,
    pub path_in_container: String,
    /// A combination of r, w and m.
    pub cgroup_permissions: String,
}

/// What `create` sends: configuration plus an optional name.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct CreateContainer {
    pub name: Option<String>,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// Per-network settings for the network named in `HostConfig.NetworkMode`
    /// (Docker's `NetworkingConfig.EndpointsConfig`, keyed by network name).
    pub endpoints_config: BTreeMap<String, EndpointConfig>,
}

/// A container's run state (Docker's `State`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerState {
    /// created, running, paused, restarting, removing, exited or dead.
    pub status: String,
    pub running: bool,
    pub paused: bool,
    pub restarting: bool,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub dead: bool,
    pub pid: i64,
    pub exit_code: i64,
    pub error: String,
    pub started_at: String,
    pub finished_at: String,
}

/// One mount point of a container, as `inspect` shows it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct MountPoint {
    /// "volume" or "bind".
    #[serde(rename = "Type")]
    pub kind: String,
    /// Volume name; empty for binds.
    pub name: String,
    pub source: String,
    pub destination: String,
    #[serde(rename = "RW")]
    pub rw: bool,
    /// True for volumes created for an image VOLUME or a bare `-v /path`.
    pub anonymous: bool,
}

/// `inspect CONTAINER` output.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerInspect {
    pub id: String,
    pub created: String,
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    /// Image ID (`sha256:…`).
    pub image: String,
    pub name: String,
    pub restart_count: i64,
    pub mounts: Vec<MountPoint>,
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    pub network_settings: NetworkSettings,
    pub log_path: String,
}

/// One row of `ps`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ContainerSummary {
    pub id: String,
    pub names: Vec<String>,
    pub image: String,
    pub image_id: String,
    pub command: String,
    /// Unix seconds.
    pub created: i64,
    pub state: String,
    /// Human status: "Up 3 minutes", "Exited (0) 2 seconds ago".
    pub status: String,
    /// Published ports as `ps` shows them (`0.0.0.0:8080->80/tcp`).
    pub ports: String,
    pub labels: BTreeMap<String, String>,
}

/// One row of `images`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct ImageSummary {
    pub id: String,
    pub repository: String,
    pub tag: String,
    /// Unix seconds.
    pub created: i64,
    pub size: u64,
}

/// One row of `history`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct HistoryEntry {
    pub id: String,
    pub created: i64,
    pub created_by: String,
    pub size: u64,
    pub comment: String,
    pub empty_layer: bool,
}

/// One change of `diff`: kind is "A", "C" or "D".
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct Change {
    pub kind: String,
    pub path: String,
}

/// `top` output: column titles and rows.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct TopReply {
    pub titles: Vec<String>,
    pub processes: Vec<Vec<String>>,
}

/// A volume as `volume ls/inspect` show it.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "PascalCase", default)]
pub struct VolumeInfo {
    pub name: String,
    pub driver: String,
    pub mountpoint: String,
    pub created_at: String,
    pub labels: BTreeMap<String, String>,
    /// "local" for named volumes; anonymous volumes carry the label
    /// `com.flotilla.volume.anonymous`.
    pub scope: String,
}

/// What a prune removed.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub struct PruneReport {
    pub deleted: Vec<String>,
    pub space_reclaimed: u64,
}

/// The command a container runs, from the image's ENTRYPOINT/CMD and the
/// user's, with Docker's rules:
///
/// - a user `--entrypoint` (even `""`) replaces the image ENTRYPOINT and
///   drops the image CMD;
/// - user arguments replace the image CMD;
/// - the process is ENTRYPOINT followed by CMD; an empty entrypoint `[""]`
///   counts as none.
pub fn resolve_command(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    user_entrypoint: Option<&[String]>,
    user_cmd: Option<&[String]>,
) -> Vec<String> {
    let entrypoint: Vec<String> = match user_entrypoint {
        Some(ep) => ep.to_vec(),
        None => image_entrypoint.map(<[String]>::to_vec).unwrap_or_default(),
    };
    let cmd: Vec<String> = match (user_cmd, user_entrypoint) {
        (Some(c), _) if !c.is_empty() => c.to_vec(),
        (_, Some(_)) => Vec::new(),
        _ => image_cmd.map(<[String]>::to_vec).unwrap_or_default(),
    };
    let entrypoint = if entrypoint.len() == 1 && entrypoint[0].is_empty() {
        Vec::new()
    } else {
        entrypoint
    };
    entrypoint.into_iter().chain(cmd).collect()
}

#[cfg(test)]
mod tests {
    use super::resolve_command;

    fn v(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn image_cmd_runs_without_arguments() {
        let cmd = v(&["ls", "-l"]);
        assert_eq!(resolve_command(None, Some(&cmd), None, None), cmd);
    }

    #[test]
    fn run_arguments_replace_cmd() {
        let cmd = v(&["ls", "-l"]);
        let user = v(&["echo", "hi"]);
        assert_eq!(resolve_command(None, Some(&cmd), None, Some(&user)), user);
    }

    #[test]
    fn run_arguments_append_to_exec_form_entrypoint() {
        let ep = v(&["ls", "-l"]);
        let user = v(&["-h"]);
        assert_eq!(
            resolve_command(Some(&ep), None, None, Some(&user)),
            v(&["ls", "-l", "-h"])
        );
    }

    #[test]
    fn cmd_is_default_arguments_of_entrypoint() {
        let ep = v(&["ls"]);
        let cmd = v(&["-a"]);
        assert_eq!(
            resolve_command(Some(&ep), Some(&cmd), None, None),
            v(&["ls", "-a"])
        );
    }

    #[test]
    fn user_entrypoint_drops_image_cmd() {
        let ep = v(&["ls"]);
        let cmd = v(&["-a"]);
        let user_ep = v(&["echo"]);
        assert_eq!(
            resolve_command(Some(&ep), Some(&cmd), Some(&user_ep), None),
            v(&["echo"])
        );
    }

    #[test]
    fn empty_entrypoint_clears_it() {
        let ep = v(&["ls"]);
        let user_ep = v(&[""]);
        let user = v(&["echo", "x"]);
        assert_eq!(
            resolve_command(Some(&ep), None, Some(&user_ep), Some(&user)),
            user
        );
    }
}

//! Builds the OCI runtime spec (`config.json`) of a container from what the
//! engine decided: process, user, mounts, namespaces, capabilities, masked and
//! read-only paths, resources. The defaults are Docker's (see
//! shared/reference: default capabilities, masked paths, default mounts);
//! one deliberate difference: `noNewPrivileges` is on.

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxCpuBuilder, LinuxMemoryBuilder,
    LinuxNamespaceBuilder, LinuxNamespaceType, LinuxPidsBuilder, LinuxResourcesBuilder, Mount,
    MountBuilder, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
};
use std::collections::HashSet;
use std::path::PathBuf;
use std::str::FromStr;

use super::cgroups::Limits;
use super::devices::{DeviceNode, DeviceRule};
use super::seccomp::Profile;

/// Docker's default capability set (moby `daemon/pkg/oci/caps/defaults.go`).
pub const DEFAULT_CAPABILITIES: [&str; 14] = [
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// Docker's masked paths (moby `defaultLinuxMaskedPaths`).
pub const MASKED_PATHS: [&str; 12] = [
    "/proc/acpi",
    "/proc/asound",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/sys/devices/virtual/powercap",
    "/sys/firmware",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Errors in the inputs of a spec.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("unknown capability {0:?} (use names like NET_ADMIN or CAP_NET_ADMIN, or ALL)")]
    UnknownCapability(String),
    #[error("failed to build the runtime spec: {0}")]
    Build(String),
}

/// Which network namespace the container gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum NetworkMode {
    /// A new network namespace with only loopback.
    None,
    /// The host's network namespace (and its UTS namespace).
    Host,
    /// Another container's network namespace; a UTS namespace of its own.
    Joined,
}

/// A bind mount into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub destination: String,
    pub readonly: bool,
}

/// Everything the spec is made of.
#[derive(Debug, Clone)]
pub struct SpecInput {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub hostname: String,
    pub network: NetworkMode,
    pub binds: Vec<BindMount>,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub readonly_rootfs: bool,
    pub limits: Limits,
    pub terminal: bool,
    /// Path of the (empty) directory the rootfs is mounted on.
    pub rootfs: PathBuf,
    /// `--device` nodes to create and allow.
    pub devices: Vec<DeviceNode>,
    /// The resolved seccomp profile; `None` is unconfined.
    pub seccomp: Option<Profile>,
}

/// Normalises a capability name: `net_admin` → `CAP_NET_ADMIN`.
pub fn normalize_capability(name: &str) -> Result<String, SpecError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    caps::Capability::from_str(&full)
        .map_err(|_| SpecError::UnknownCapability(name.to_string()))?;
    Ok(full)
}

/// `CAP_CHOWN` → the OCI spec's capability value.
pub fn oci_capability(name: &str) -> Option<Capability> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

/// The OCI spec's capability value → `CAP_CHOWN`.
pub fn capability_name(cap: &Capability) -> String {
    match serde_json::to_value(cap) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("CAP_{cap}"),
    }
}

/// The effective capability set: Docker's defaults, plus `--cap-add`, minus
/// `--cap-drop` (`ALL` allowed on either side, as Docker).
pub fn capability_set(cap_add: &[String], cap_drop: &[String]) -> Result<Vec<String>, SpecError> {
    // "ALL" means every capability this daemon can hand out: its own
    // bounding set (a VM or an outer container may lack some).
    let all = || -> Vec<String> {
        caps::read(None, caps::CapSet::Bounding)
            .unwrap_or_else(|_| caps::all())
            .into_iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
    };
    let mut set: Vec<String> = if cap_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        Vec::new()
    } else {
        DEFAULT_CAPABILITIES.iter().map(|s| s.to_string()).collect()
    };
    if cap_add.iter().any(|c| c.eq_ignore_ascii_case("ALL")) {
        set = all();
    } else {
        for c in cap_add {
            let c = normalize_capability(c)?;
            if !set.contains(&c) {
                set.push(c);
            }
        }
    }
    let drops: HashSet<String> = cap_drop
        .iter()
        .filter(|c| !c.eq_ignore_ascii_case("ALL"))
        .map(|c| normalize_capability(c))
        .collect::<Result<_, _>>()?;
    set.retain(|c| !drops.contains(c));
    set.sort();
    Ok(set)
}

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Result<Mount, SpecError> {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .map_err(|e| SpecError::Build(e.to_string()))
}

/// Builds the spec.
pub fn build(input: &SpecInput) -> Result<Spec, SpecError> {
    let b = |e: oci_spec::OciSpecError| SpecError::Build(e.to_string());
    let caps: HashSet<Capability> = capability_set(&input.cap_add, &input.cap_drop)?
        .iter()
        .map(|c| oci_capability(c).ok_or_else(|| SpecError::UnknownCapability(c.clone())))
        .collect::<Result<_, _>>()?;
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps.clone())
        .inheritable(caps)
        .ambient(HashSet::new())
        .build()
        .map_err(b)?;
    let user = UserBuilder::default()
        .uid(input.uid)
        .gid(input.gid)
        .additional_gids(input.additional_gids.clone())
        .build()
        .map_err(b)?;
    let process = ProcessBuilder::default()
        .terminal(input.terminal)
        .args(input.args.clone())
        .env(input.env.clone())
        .cwd(input.cwd.clone())
        .user(user)
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(b)?;

    let mut mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"])?,
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        )?,
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        )?,
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        )?,
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        )?,
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        )?,
    ];
    for bind in &input.binds {
        let mut opts = vec!["rbind", "rprivate"];
        if bind.readonly {
            opts.push("ro");
        }
        mounts.push(mount(
            &bind.destination,
            "bind",
            &bind.source.to_string_lossy(),
            &opts,
        )?);
    }

    let mut namespaces = vec![
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Ipc,
    ];
    match input.network {
        NetworkMode::None => {
            namespaces.push(LinuxNamespaceType::Network);
            namespaces.push(LinuxNamespaceType::Uts);
        }
        NetworkMode::Joined => namespaces.push(LinuxNamespaceType::Uts),
        NetworkMode::Host => {}
    }
    let namespaces = namespaces
        .into_iter()
        .map(|t| LinuxNamespaceBuilder::default().typ(t).build())
        .collect::<Result<Vec<_>, _>>()
        .map_err(b)?;

    let mut resources = LinuxResourcesBuilder::default();
    let limits = &input.limits;
    if limits.memory > 0 {
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(limits.memory)
                .build()
                .map_err(b)?,
        );
    }
    if limits.nano_cpus > 0 || limits.cpu_shares > 0 {
        let mut cpu = LinuxCpuBuilder::default();
        if limits.nano_cpus > 0 {
            cpu = cpu
                .period(100_000u64)
                .quota(limits.nano_cpus * 100_000 / 1_000_000_000);
        }
        if limits.cpu_shares > 0 {
            cpu = cpu.shares(limits.cpu_shares as u64);
        }
        resources = resources.cpu(cpu.build().map_err(b)?);
    }
    if limits.pids > 0 {
        resources = resources.pids(
            LinuxPidsBuilder::default()
                .limit(limits.pids)
                .build()
                .map_err(b)?,
        );
    }

    // Devices: deny all, Docker's defaults, then `--device` additions.
    let mut device_rules = vec![serde_json::json!({"allow": false, "access": "rwm"})];
    for r in super::devices::default_rules()
        .into_iter()
        .chain(input.devices.iter().map(DeviceNode::rule))
    {
        device_rules.push(serde_json::json!({
            "allow": true,
            "type": r.kind.to_string(),
            "major": r.major,
            "minor": r.minor,
            "access": r.access,
        }));
    }
    let device_rules = serde_json::from_value(serde_json::Value::Array(device_rules))
        .map_err(|e| SpecError::Build(e.to_string()))?;
    resources = resources.devices::<Vec<oci_spec::runtime::LinuxDeviceCgroup>>(device_rules);
    let nodes: Vec<oci_spec::runtime::LinuxDevice> = input
        .devices
        .iter()
        .map(|d| {
            serde_json::from_value(serde_json::json!({
                "path": d.path,
                "type": d.kind.to_string(),
                "major": d.major,
                "minor": d.minor,
                "fileMode": d.mode,
                "uid": d.uid,
                "gid": d.gid,
            }))
        })
        .collect::<Result<_, _>>()
        .map_err(|e| SpecError::Build(e.to_string()))?;

    let mut linux = LinuxBuilder::default();
    if !nodes.is_empty() {
        linux = linux.devices(nodes);
    }
    if let Some(profile) = &input.seccomp {
        linux = linux
            .seccomp(super::seccomp::to_oci(profile).map_err(|e| SpecError::Build(e.to_string()))?);
    }
    let linux = linux
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .resources(resources.build().map_err(b)?)
        .build()
        .map_err(b)?;

    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .process(process)
        .root(
            RootBuilder::default()
                .path(input.rootfs.clone())
                .readonly(input.readonly_rootfs)
                .build()
                .map_err(b)?,
        )
        .mounts(mounts)
        .linux(linux);
    if input.network != NetworkMode::Host {
        spec = spec.hostname(input.hostname.clone());
    }
    spec.build().map_err(b)
}

/// The device allow-list of a spec (`linux.resources.devices`, allow entries).
pub fn device_rules_of(spec: &Spec) -> Vec<DeviceRule> {
    let Some(list) = spec
        .linux()
        .as_ref()
        .and_then(|l| l.resources().as_ref())
        .and_then(|r| r.devices().as_ref())
    else {
        return Vec::new();
    };
    list.iter()
        .filter(|d| d.allow())
        .map(|d| {
            let kind = d
                .typ()
                .map_or('a', |t| t.as_str().chars().next().unwrap_or('a'));
            let num = |n: Option<i64>| n.filter(|n| *n >= 0).map(|n| n as u32);
            DeviceRule::new(
                kind,
                num(d.major()),
                num(d.minor()),
                d.access().as_deref().unwrap_or("rwm"),
            )
        })
        .collect()
}

/// The resource limits a spec asks for, in Docker's units.
pub fn limits_of(spec: &Spec) -> Limits {
    let mut limits = Limits::default();
    let Some(res) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return limits;
    };
    if let Some(m) = res.memory().as_ref().and_then(|m| m.limit()) {
        limits.memory = m;
    }
    if let Some(cpu) = res.cpu() {
        if let (Some(q), Some(p)) = (cpu.quota(), cpu.period()) {
            if p > 0 && q > 0 {
                limits.nano_cpus = q * 1_000_000_000 / p as i64;
            }
        }
        if let Some(s) = cpu.shares() {
            limits.cpu_shares = s as i64;
        }
    }
    if let Some(p) = res.pids() {
        limits.pids = p.limit();
    }
    limits
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_capabilities_are_dockers() {
        let set = capability_set(&[], &[]).unwrap();
        assert_eq!(set.len(), 14);
        assert!(set.contains(&"CAP_NET_RAW".to_string()));
        assert!(!set.contains(&"CAP_SYS_ADMIN".to_string()));
    }

    #[test]
    fn cap_add_and_drop() {
        let set = capability_set(&["net_admin".into()], &["CHOWN".into()]).unwrap();
        assert!(set.contains(&"CAP_NET_ADMIN".to_string()));
        assert!(!set.contains(&"CAP_CHOWN".to_string()));
        let none = capability_set(&[], &["all".into()]).unwrap();
        assert!(none.is_empty());
        let only = capability_set(&["KILL".into()], &["ALL".into()]).unwrap();
        assert_eq!(only, vec!["CAP_KILL".to_string()]);
        assert!(capability_set(&["NOPE".into()], &[]).is_err());
    }

    #[test]
    fn capability_names_round_trip_through_the_spec_type() {
        for name in DEFAULT_CAPABILITIES {
            let cap = oci_capability(name).unwrap();
            assert_eq!(capability_name(&cap), name);
        }
    }

    #[test]
    fn spec_round_trips_limits() {
        let input = SpecInput {
            args: vec!["/bin/true".into()],
            env: vec!["PATH=/bin".into()],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
            hostname: "abc".into(),
            network: NetworkMode::None,
            binds: vec![],
            cap_add: vec![],
            cap_drop: vec![],
            readonly_rootfs: false,
            limits: Limits {
                memory: 1 << 26,
                nano_cpus: 2_000_000_000,
                cpu_shares: 512,
                pids: 10,
            },
            terminal: false,
            rootfs: "/tmp/rootfs".into(),
            devices: vec![super::super::devices::host_device("/dev/null:/dev/mynull").unwrap()],
            seccomp: None,
        };
        let spec = build(&input).unwrap();
        assert_eq!(limits_of(&spec), input.limits);
        let rules = device_rules_of(&spec);
        assert_eq!(&rules[..11], &super::super::devices::default_rules()[..]);
        assert_eq!(rules[11].v1_line(), "c 1:3 rwm");
        let node = &spec.linux().as_ref().unwrap().devices().as_ref().unwrap()[0];
        assert_eq!(node.path(), std::path::Path::new("/dev/mynull"));
        assert_eq!(spec.hostname().as_deref(), Some("abc"));
        assert_eq!(
            spec.process().as_ref().unwrap().no_new_privileges(),
            Some(true)
        );
    }
}

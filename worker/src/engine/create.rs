//! `create`: validate everything first, then make the container's directory,
//! volumes and record. Nothing half-made survives a failure: whatever was
//! created for the container is removed before the error is returned.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_common::engine::{resolve_command, ContainerState, CreateContainer, MountPoint};

use super::confined::{clean_container_path, seed_from_layers};
use super::container::{Container, ContainerRecord};
use super::{now_rfc3339, random_id, Engine, EngineError, Result};
use crate::runtime::spec::capability_set;
use crate::volume::ANONYMOUS_LABEL;

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

/// Checks a container name as Docker does (the same rule as volume names).
pub fn valid_name(name: &str) -> bool {
    crate::volume::valid_name(name)
}

/// A parsed `-v` spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VolumeSpec {
    /// `/host:/ctr[:ro]`
    Bind {
        source: PathBuf,
        destination: String,
        readonly: bool,
    },
    /// `name:/ctr[:ro]`
    Named {
        name: String,
        destination: String,
        readonly: bool,
    },
    /// `/ctr`
    Anonymous { destination: String },
}

/// Parses `-v` as Docker does (Linux forms).
pub fn parse_volume_spec(spec: &str) -> Result<VolumeSpec> {
    let parts: Vec<&str> = spec.split(':').collect();
    let bad = |why: &str| invalid(format!("invalid volume specification {spec:?}: {why}"));
    let check_dest = |d: &str| -> Result<String> {
        if let Some(problem) = agent_common::validate::container_path_problem(d) {
            return Err(bad(problem));
        }
        let d = clean_container_path(d).map_err(|why| bad(&format!("the container path {why}")))?;
        if d == "/" {
            return Err(bad("the container path cannot be /"));
        }
        Ok(d)
    };
    let readonly = |mode: &str| -> Result<bool> {
        let mut ro = false;
        for m in mode.split(',') {
            match m {
                "ro" => ro = true,
                "rw" | "z" | "Z" | "" => {}
                other => return Err(bad(&format!("unknown mode {other:?} (use ro or rw)"))),
            }
        }
        Ok(ro)
    };
    match parts.as_slice() {
        [dest] => Ok(VolumeSpec::Anonymous {
            destination: check_dest(dest)?,
        }),
        [src, dest] | [src, dest, _] => {
            let ro = match parts.get(2) {
                Some(m) => readonly(m)?,
                None => false,
            };
            let destination = check_dest(dest)?;
            if src.is_empty() {
                return Err(bad("empty source"));
            }
            if src.starts_with('/') {
                Ok(VolumeSpec::Bind {
                    source: PathBuf::from(src),
                    destination,
                    readonly: ro,
                })
            } else if crate::volume::valid_name(src) {
                Ok(VolumeSpec::Named {
                    name: src.to_string(),
                    destination,
                    readonly: ro,
                })
            } else {
                Err(bad(
                    "the source must be an absolute host path or a volume name",
                ))
            }
        }
        _ => Err(bad("too many colons")),
    }
}

/// Checks a signal name or number (`SIGTERM`, `TERM`, `15`).
pub fn parse_signal(s: &str) -> Result<nix::sys::signal::Signal> {
    use std::str::FromStr;
    let t = s.trim();
    if let Ok(n) = t.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map_err(|_| invalid(format!("invalid signal: {s}")));
    }
    let upper = t.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| invalid(format!("invalid signal: {s}")))
}

fn validate(req: &CreateContainer) -> Result<()> {
    let hc = &req.host_config;
    if let Some(name) = &req.name {
        let n = name.strip_prefix('/').unwrap_or(name);
        if !valid_name(n) {
            return Err(invalid(format!(
                "Invalid container name ({name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
    }
    match hc.restart_policy.name.as_str() {
        "" | "no" | "always" | "unless-stopped" => {
            if hc.restart_policy.maximum_retry_count != 0 {
                return Err(invalid(
                    "maximum retry count cannot be used with restart policy '".to_string()
                        + &hc.restart_policy.name
                        + "'",
                ));
            }
        }
        "on-failure" => {
            if hc.restart_policy.maximum_retry_count < 0 {
                return Err(invalid("maximum retry count cannot be negative"));
            }
        }
        other => {
            return Err(invalid(format!(
                "invalid restart policy '{other}': use no, always, unless-stopped or on-failure[:N]"
            )))
        }
    }
    if hc.auto_remove && !matches!(hc.restart_policy.name.as_str(), "" | "no") {
        return Err(invalid("Conflicting options: --restart and --rm"));
    }
    // The rules the manager's control API checks services with, too.
    agent_common::validate::image(&req.config.image).map_err(|e| invalid(e.to_string()))?;
    agent_common::validate::hostname(&req.config.hostname).map_err(|e| invalid(e.to_string()))?;
    let memory = u64::try_from(hc.memory).unwrap_or(1);
    agent_common::validate::memory_limit(memory).map_err(|e| invalid(e.to_string()))?;
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    if hc.nano_cpus < 0 || hc.nano_cpus > ncpu * 1_000_000_000 {
        return Err(invalid(format!(
            "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )));
    }
    if hc.nano_cpus > 0 && hc.nano_cpus < 10_000_000 {
        return Err(invalid(format!(
            "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
        )));
    }
    if hc.cpu_shares < 0 || hc.cpu_shares > 262_144 {
        return Err(invalid("cpu shares must be between 2 and 262144"));
    }
    if hc.pids_limit < -1 {
        return Err(invalid(
            "pids limit must be -1 (unlimited), 0 (unset) or positive",
        ));
    }
    let caps = capability_set(&hc.cap_add, &hc.cap_drop).map_err(|e| invalid(e.to_string()))?;
    crate::runtime::seccomp::for_container(&hc.security_opt, &caps).map_err(invalid)?;
    for d in &hc.devices {
        crate::runtime::devices::host_device(&super::lifecycle::device_spec(d)).map_err(invalid)?;
    }
    if let Some(sig) = &req.config.stop_signal {
        parse_signal(sig)?;
    }
    if let Some(t) = req.config.stop_timeout {
        agent_common::validate::stop_timeout_secs(t).map_err(|e| invalid(e.to_string()))?;
    }
    let wd = &req.config.working_dir;
    if !wd.is_empty() && !wd.starts_with('/') {
        return Err(invalid(format!(
            "the working directory '{wd}' is invalid, it needs to be an absolute path"
        )));
    }
    match hc.network_mode.as_str() {
        "" | "default" | "bridge" | "none" | "host" => {}
        m if m.starts_with("container:") && m.len() > "container:".len() => {}
        // A user-defined network; create_container checks that it exists.
        m if valid_name(m) => {}
        other => {
            return Err(invalid(format!(
                "network {other} not found: use bridge (the default), none, host, container:NAME or a network made with `network create`"
            )))
        }
    }
    let bridged = matches!(hc.network_mode.as_str(), "" | "default" | "bridge");
    let on_a_bridge = bridged || super::networks::is_user_network_mode(&hc.network_mode);
    if !on_a_bridge && (!hc.port_bindings.is_empty() || hc.publish_all_ports) {
        return Err(invalid(format!(
            "ports cannot be published with --network {}: publishing needs a bridge network",
            hc.network_mode
        )));
    }
    if !bridged && !hc.links.is_empty() {
        return Err(invalid(format!(
            "links work only on the default bridge network, not with --network {}",
            hc.network_mode
        )));
    }
    for h in &hc.extra_hosts {
        match h.split_once(':') {
            Some((host, ip)) if !host.is_empty() && ip.parse::<std::net::IpAddr>().is_ok() => {}
            _ => return Err(invalid(format!("invalid --add-host {h:?}: use HOST:IP"))),
        }
    }
    for d in &hc.dns {
        if d.parse::<std::net::IpAddr>().is_err() {
            return Err(invalid(format!("invalid --dns {d:?}: use an IP address")));
        }
    }
    for link in &hc.links {
        let (name, alias) = link
            .split_once(':')
            .unwrap_or((link.as_str(), link.as_str()));
        if !valid_name(name) || !valid_name(alias) {
            return Err(invalid(format!(
                "invalid --link {link:?}: use NAME or NAME:ALIAS"
            )));
        }
    }
    for (port, bindings) in &hc.port_bindings {
        let (p, proto) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
        if p.parse::<u16>().map_or(true, |n| n == 0) || !matches!(proto, "tcp" | "udp") {
            return Err(invalid(format!(
                "invalid container port {port:?}: use PORT/tcp or PORT/udp"
            )));
        }
        for b in bindings {
            if !b.host_ip.is_empty() && b.host_ip.parse::<std::net::Ipv4Addr>().is_err() {
                return Err(invalid(format!(
                    "invalid host address {:?} for port {port}",
                    b.host_ip
                )));
            }
            if !b.host_port.is_empty() && b.host_port.parse::<u16>().map_or(true, |n| n == 0) {
                return Err(invalid(format!(
                    "invalid host port {:?} for port {port}",
                    b.host_port
                )));
            }
        }
    }
    for b in &hc.binds {
        parse_volume_spec(b)?;
    }
    for (k, _) in req.config.labels.iter() {
        if k.is_empty() {
            return Err(invalid("label keys cannot be empty"));
        }
    }
    for e in &req.config.env {
        agent_common::validate::env(e).map_err(|e| invalid(e.to_string()))?;
    }
    Ok(())
}

/// Merges `KEY=VALUE` lists: later entries replace earlier ones with the same key.
pub fn merge_env(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut out: Vec<String> = base.to_vec();
    for e in overrides {
        let key = e.split_once('=').map_or(e.as_str(), |(k, _)| k);
        if let Some(slot) = out
            .iter_mut()
            .find(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) == key)
        {
            *slot = e.clone();
        } else {
            out.push(e.clone());
        }
    }
    out
}

/// Things created so far, removed again if creation fails.
#[derive(Default)]
struct Undo {
    volumes: Vec<String>,
    dir: Option<PathBuf>,
}

impl Engine {
    /// Creates a container; returns its ID and warnings.
    pub fn create_container(
        self: &Arc<Self>,
        req: CreateContainer,
    ) -> Result<(String, Vec<String>)> {
        validate(&req)?;
        if let Some(target) = req.host_config.network_mode.strip_prefix("container:") {
            self.find(target).map_err(|_| {
                invalid(format!(
                    "cannot join the network of container {target}: no such container"
                ))
            })?;
        }
        for link in &req.host_config.links {
            let name = link.split(':').next().unwrap_or(link);
            self.find(name)
                .map_err(|_| invalid(format!("could not link to {name}: no such container")))?;
        }
        let endpoint = req
            .endpoints_config
            .get(&req.host_config.network_mode)
            .or_else(|| req.endpoints_config.values().next())
            .cloned()
            .unwrap_or_default();
        let attachment = self.attachment_for_create(
            &req.host_config.network_mode,
            &endpoint.aliases,
            &endpoint.ipv4_address,
        )?;
        let image = self.images.resolve(&req.config.image)?;
        let mut undo = Undo::default();
        match self.create_inner(req, &image, attachment, &mut undo) {
            Ok(out) => Ok(out),
            Err(e) => {
                for v in &undo.volumes {
                    let _ = self.volumes.remove(v, true, None);
                }
                if let Some(d) = &undo.dir {
                    let _ = fs::remove_dir_all(d);
                }
                Err(e)
            }
        }
    }

    fn create_inner(
        self: &Arc<Self>,
        req: CreateContainer,
        image: &crate::image::Image,
        attachment: Option<crate::network::user::Attachment>,
        undo: &mut Undo,
    ) -> Result<(String, Vec<String>)> {
        let mut warnings = Vec::new();
        let id = random_id();
        let img = image.config.config.clone().unwrap_or_default();
        let user = req.config;
        let mut hc = req.host_config;
        let mut user_exposed: Vec<String> = Vec::new();
        if matches!(hc.network_mode.as_str(), "" | "default") {
            hc.network_mode = "bridge".into();
        }
        for port in hc.port_bindings.keys() {
            user_exposed.push(port.clone());
        }

        // Command: Docker's ENTRYPOINT/CMD rules.
        let cmdline = resolve_command(
            img.entrypoint.as_deref(),
            img.cmd.as_deref(),
            user.entrypoint.as_deref(),
            user.cmd.as_deref(),
        );
        let Some((path, args)) = cmdline.split_first() else {
            return Err(invalid(
                "No command specified: give one after the image name, or use an image with CMD or ENTRYPOINT",
            ));
        };
        let mut config = user.clone();
        config.entrypoint = match &user.entrypoint {
            Some(ep) if ep.len() == 1 && ep[0].is_empty() => None,
            Some(ep) => Some(ep.clone()),
            None => img.entrypoint.clone(),
        };
        config.cmd = match (&user.cmd, &user.entrypoint) {
            (Some(c), _) if !c.is_empty() => Some(c.clone()),
            (_, Some(_)) => None,
            _ => img.cmd.clone(),
        };
        let mut env = merge_env(&img.env.clone().unwrap_or_default(), &user.env);
        if !env.iter().any(|e| e.starts_with("PATH=")) {
            env.insert(0, format!("PATH={}", crate::runtime::DEFAULT_PATH));
        }
        if user.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
            env.push("TERM=xterm".into());
        }
        config.env = env;
        if config.working_dir.is_empty() {
            config.working_dir = if img.working_dir.is_empty() {
                "/".into()
            } else {
                img.working_dir.clone()
            };
        }
        if config.user.is_empty() {
            config.user = img.user.clone();
        }
        for (port, _) in img.exposed_ports.clone().unwrap_or_default() {
            config.exposed_ports.entry(port).or_default();
        }
        for port in user_exposed {
            config.exposed_ports.entry(port).or_default();
        }
        for (v, _) in img.volumes.clone().unwrap_or_default() {
            let clean = clean_container_path(&v).map_err(|why| {
                invalid(format!(
                    "image {} declares VOLUME {v:?}, which is refused: the path {why}",
                    user.image
                ))
            })?;
            config.volumes.entry(clean).or_default();
        }
        let requested = std::mem::take(&mut config.volumes);
        for (v, x) in requested {
            let clean = clean_container_path(&v)
                .map_err(|why| invalid(format!("invalid volume {v:?}: the path {why}")))?;
            if clean == "/" {
                return Err(invalid("a volume cannot be mounted at /"));
            }
            config.volumes.insert(clean, x);
        }
        let mut labels: BTreeMap<String, String> = img.labels.clone().unwrap_or_default();
        labels.extend(user.labels.clone());
        config.labels = labels;
        if config.stop_signal.is_none() && !img.stop_signal.is_empty() {
            config.stop_signal = Some(img.stop_signal.clone());
        }
        if config.hostname.is_empty() {
            config.hostname = if hc.network_mode == "host" {
                nix::unistd::gethostname()
                    .map(|h| h.to_string_lossy().to_string())
                    .unwrap_or_default()
            } else {
                id[..12].to_string()
            };
        }
        config.image = user.image.clone();

        // The container directory: the daemon's alone (0700). Its upper dir
        // is the container's `/`, which every user in the container reads.
        let dir = self.container_dir(&id);
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(EngineError::io("create", &dir))?;
        undo.dir = Some(dir.clone());
        for (sub, mode) in [("upper", 0o755), ("work", 0o700), ("rootfs", 0o755)] {
            let p = dir.join(sub);
            fs::create_dir(&p)
                .and_then(|_| fs::set_permissions(&p, fs::Permissions::from_mode(mode)))
                .map_err(EngineError::io("create", p))?;
        }

        // Mounts: binds and named volumes, then --volumes-from, then image VOLUMEs.
        let layer_dirs = self.images.layer_dirs(image)?;
        let mut mounts: Vec<MountPoint> = Vec::new();
        let taken =
            |mounts: &Vec<MountPoint>, dest: &str| mounts.iter().any(|m| m.destination == dest);
        for b in &hc.binds {
            match parse_volume_spec(b)? {
                VolumeSpec::Bind {
                    source,
                    destination,
                    readonly,
                } => {
                    if !source.exists() {
                        fs::create_dir_all(&source)
                            .map_err(EngineError::io("create bind source", &source))?;
                    }
                    mounts.push(MountPoint {
                        kind: "bind".into(),
                        name: String::new(),
                        source: source.display().to_string(),
                        destination,
                        rw: !readonly,
                        anonymous: false,
                    });
                }
                VolumeSpec::Named {
                    name,
                    destination,
                    readonly,
                } => {
                    let (info, created) = self.volumes.create(&name, BTreeMap::new(), "")?;
                    if created {
                        undo.volumes.push(name.clone());
                        populate_from_image(&layer_dirs, &destination, &name, &info.mountpoint)?;
                    }
                    mounts.push(MountPoint {
                        kind: "volume".into(),
                        name,
                        source: info.mountpoint,
                        destination,
                        rw: !readonly,
                        anonymous: false,
                    });
                }
                VolumeSpec::Anonymous { destination } => {
                    config.volumes.entry(destination).or_default();
                }
            }
        }
        for from in &hc.volumes_from {
            let (name, mode) = match from.rsplit_once(':') {
                Some((n, m @ ("ro" | "rw"))) => (n, Some(m)),
                _ => (from.as_str(), None),
            };
            let other = self.find(name)?;
            for mut m in other.record().mounts {
                if taken(&mounts, &m.destination) {
                    continue;
                }
                if let Some(mode) = mode {
                    m.rw = mode == "rw";
                }
                mounts.push(m);
            }
        }
        let image_volumes: Vec<String> = config.volumes.keys().cloned().collect();
        for dest in image_volumes {
            if taken(&mounts, &dest) {
                continue;
            }
            let name = random_id();
            let labels: BTreeMap<String, String> =
                [(ANONYMOUS_LABEL.to_string(), String::new())].into();
            let (info, _) = self.volumes.create(&name, labels, "")?;
            undo.volumes.push(name.clone());
            populate_from_image(&layer_dirs, &dest, &name, &info.mountpoint)?;
            mounts.push(MountPoint {
                kind: "volume".into(),
                name,
                source: info.mountpoint,
                destination: dest,
                rw: true,
                anonymous: true,
            });
        }
        if hc.readonly_rootfs && mounts.is_empty() && !config.volumes.is_empty() {
            warnings.push("image volumes are writable even with --read-only".into());
        }

        let name = {
            let _guard = self.names_lock();
            let name = match &req.name {
                Some(n) => n.strip_prefix('/').unwrap_or(n).to_string(),
                None => self.generate_name(),
            };
            if let Some(other) = self.all().into_iter().find(|c| c.name() == name) {
                return Err(EngineError::NameInUse {
                    name,
                    id: other.id.clone(),
                });
            }
            let mut record = ContainerRecord {
                id: id.clone(),
                name: name.clone(),
                created: now_rfc3339(),
                image: image.id.clone(),
                image_name: user.image.clone(),
                config,
                host_config: hc,
                path: path.clone(),
                args: args.to_vec(),
                state: ContainerState {
                    status: "created".into(),
                    ..Default::default()
                },
                mounts,
                attachments: attachment.into_iter().collect(),
                ..Default::default()
            };
            record.network_settings.networks = self.endpoint_settings(&record);
            record.save(&dir)?;
            self.insert(Arc::new(Container::new(record)));
            name
        };
        tracing::info!(container = %id, %name, "created");
        Ok((id, warnings))
    }

    fn names_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        static NAMES: std::sync::Mutex<()> = std::sync::Mutex::new(());
        NAMES.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A free `adjective_noun` name, as Docker makes them.
    fn generate_name(&self) -> String {
        const LEFT: [&str; 16] = [
            "brave", "calm", "eager", "fervent", "gentle", "happy", "jolly", "keen", "lucid",
            "merry", "nifty", "proud", "quirky", "serene", "tender", "zealous",
        ];
        const RIGHT: [&str; 16] = [
            "albatross",
            "barque",
            "caravel",
            "dinghy",
            "frigate",
            "galleon",
            "junk",
            "ketch",
            "lugger",
            "schooner",
            "sloop",
            "tender",
            "trawler",
            "wherry",
            "yawl",
            "xebec",
        ];
        let taken: Vec<String> = self.all().iter().map(|c| c.name()).collect();
        for attempt in 0..1000u32 {
            let r = random_id();
            let a = usize::from_str_radix(&r[..2], 16).unwrap_or(0) % LEFT.len();
            let b = usize::from_str_radix(&r[2..4], 16).unwrap_or(0) % RIGHT.len();
            let name = if attempt < 10 {
                format!("{}_{}", LEFT[a], RIGHT[b])
            } else {
                format!("{}_{}{}", LEFT[a], RIGHT[b], &r[4..8])
            };
            if !taken.contains(&name) {
                return name;
            }
        }
        random_id()[..16].to_string()
    }
}

/// Copies what the image has at `path` into the new, empty volume `name`
/// (mounted from `dest`), the way Docker seeds volumes from image content,
/// resolving `path` inside each layer by descriptor ([`seed_from_layers`]):
/// a symlink in the image is copied as a link, never followed.
fn populate_from_image(layer_dirs: &[PathBuf], path: &str, name: &str, dest: &str) -> Result<()> {
    seed_from_layers(layer_dirs, path, Path::new(dest)).map_err(|e| {
        EngineError::Internal(format!(
            "failed to copy the image's content at {path} into volume {name}: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_specs_parse_like_docker() {
        assert_eq!(
            parse_volume_spec("/data").unwrap(),
            VolumeSpec::Anonymous {
                destination: "/data".into()
            }
        );
        assert_eq!(
            parse_volume_spec("vol:/data:ro").unwrap(),
            VolumeSpec::Named {
                name: "vol".into(),
                destination: "/data".into(),
                readonly: true
            }
        );
        assert_eq!(
            parse_volume_spec("/srv:/data").unwrap(),
            VolumeSpec::Bind {
                source: "/srv".into(),
                destination: "/data".into(),
                readonly: false
            }
        );
        assert_eq!(
            parse_volume_spec("vol://data/./x/").unwrap(),
            VolumeSpec::Named {
                name: "vol".into(),
                destination: "/data/x".into(),
                readonly: false
            }
        );
        for bad in [
            "data",
            "vol:data",
            "/a:/",
            "vol:/d:xx",
            "a:b:c:d",
            "../x:/d",
            "vol:/../../tmp/x",
            "/srv:/a/../b",
            "/x/..",
        ] {
            assert!(parse_volume_spec(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn env_overrides_by_key() {
        let base = vec!["PATH=/bin".to_string(), "A=1".to_string()];
        let merged = merge_env(&base, &["A=2".to_string(), "B=3".to_string()]);
        assert_eq!(merged, vec!["PATH=/bin", "A=2", "B=3"]);
    }

    #[test]
    fn signals_parse_by_name_and_number() {
        use nix::sys::signal::Signal;
        assert_eq!(parse_signal("TERM").unwrap(), Signal::SIGTERM);
        assert_eq!(parse_signal("sigkill").unwrap(), Signal::SIGKILL);
        assert_eq!(parse_signal("9").unwrap(), Signal::SIGKILL);
        assert!(parse_signal("NOPE").is_err());
    }

    #[test]
    fn restart_and_rm_conflict() {
        let mut req = CreateContainer::default();
        req.host_config.auto_remove = true;
        req.host_config.restart_policy.name = "always".into();
        assert!(validate(&req)
            .unwrap_err()
            .to_string()
            .contains("--restart and --rm"));
    }

    #[test]
    fn tiny_memory_is_refused() {
        let mut req = CreateContainer::default();
        req.config.image = "busybox".into();
        req.host_config.memory = 1024;
        assert!(validate(&req).unwrap_err().to_string().contains("6MB"));
    }

    #[test]
    fn the_shared_rules_apply_to_create() {
        let ok = || {
            let mut req = CreateContainer::default();
            req.config.image = "busybox".into();
            req
        };
        assert!(validate(&ok()).is_ok());
        let mut bad_image = ok();
        bad_image.config.image = "UPPER/case:tag".into();
        let mut bad_host = ok();
        bad_host.config.hostname = "bad host name".into();
        let mut bad_env = ok();
        bad_env.config.env = vec!["=novalue".into()];
        let mut bad_timeout = ok();
        bad_timeout.config.stop_timeout = Some(i64::MAX);
        for (req, says) in [
            (bad_image, "reference"),
            (bad_host, "hostname"),
            (bad_env, "environment"),
            (bad_timeout, "stop timeout"),
        ] {
            let msg = validate(&req).unwrap_err().to_string();
            assert!(msg.contains(says), "{says}: {msg}");
        }
    }
}

//! Start, stop, kill, pause, remove, wait and rename; the restart policy; and
//! adopting the containers that kept running while the daemon was down.
//!
//! A start writes the bundle (`config.json` + `shim.json`), spawns the shim and
//! reads its one-line report. From then on a monitor task waits for the shim to
//! exit — as its parent (`wait`) or, after a daemon restart, through a pidfd —
//! and records the exit status the shim left in `exit.json`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::container::Container;
use super::create::parse_signal;
use super::networks::{embedded_resolv_conf, is_user_network_mode};
use super::pool::NetKind;
use super::{now_rfc3339, Engine, EngineError, Result};
use crate::network::{Endpoint, Published};
use crate::runtime::cgroups::Limits;
use crate::runtime::spec::{self, BindMount, NetworkMode, SpecInput};
use crate::runtime::{ExitRecord, ShimConfig, StartReport};

/// Docker's default stop timeout.
const DEFAULT_STOP_TIMEOUT: i64 = 10;

const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n";

/// Reads a file of the container's root filesystem from its layers without
/// mounting it: the upper dir first, then the image layers top-down, by
/// descriptor ([`super::confined::read_layered_file`]): whiteouts and opaque
/// directories hide lower copies, a symlink is not followed, only a regular
/// file of at most [`super::confined::MAX_READ`] bytes is read. What is
/// refused is logged and reads as absent.
pub fn read_rootfs_file(upper: &Path, lowers_top_first: &[PathBuf], rel: &str) -> Option<String> {
    let mut layers = Vec::with_capacity(lowers_top_first.len() + 1);
    layers.push(upper.to_path_buf());
    layers.extend_from_slice(lowers_top_first);
    super::confined::text_or_warn(
        &format!("/{rel} of the container"),
        super::confined::read_layered_file(&layers, rel, super::confined::MAX_READ),
    )
}

fn host_resolv_conf() -> String {
    let text = fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    // Loopback resolvers of the host are unreachable from a container's own
    // network namespace; Docker filters them out the same way.
    text.lines()
        .filter(|l| {
            let mut w = l.split_whitespace();
            !(w.next() == Some("nameserver")
                && w.next()
                    .is_some_and(|a| a.starts_with("127.") || a == "::1"))
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// NetworkSettings for a container started on the default bridge or a
/// user-defined network (`ep` is its `eth0`, `bridge` the host bridge).
fn network_settings(
    rec: &super::container::ContainerRecord,
    ep: Option<&Endpoint>,
    bridge: Option<String>,
    published: &[Published],
) -> agent_common::engine::NetworkSettings {
    let Some(ep) = ep else {
        return Default::default();
    };
    let mut ports: std::collections::BTreeMap<String, Vec<agent_common::engine::PortBinding>> = rec
        .config
        .exposed_ports
        .keys()
        .map(|k| (k.clone(), Vec::new()))
        .collect();
    for p in published {
        ports
            .entry(format!("{}/{}", p.container_port, p.proto))
            .or_default()
            .push(agent_common::engine::PortBinding {
                host_ip: p
                    .host_ip
                    .map(|i| i.to_string())
                    .unwrap_or_else(|| "0.0.0.0".into()),
                host_port: p.host_port.to_string(),
            });
    }
    agent_common::engine::NetworkSettings {
        bridge: bridge.unwrap_or_default(),
        ip_address: ep.ip.to_string(),
        ip_prefix_len: ep.prefix,
        gateway: ep.gateway.to_string(),
        mac_address: ep.mac.clone(),
        ports,
        networks: Default::default(),
    }
}

/// The address published ports lead to: the default bridge endpoint's, or
/// that of the container's first user-defined network.
fn published_ip(rec: &super::container::ContainerRecord) -> Option<std::net::Ipv4Addr> {
    rec.endpoint.as_ref().map(|e| e.ip).or_else(|| {
        is_user_network_mode(&rec.host_config.network_mode)
            .then(|| rec.user_endpoints.first().map(|e| e.endpoint.ip))
            .flatten()
    })
}

/// Gives addresses reserved for a start back unless the start succeeded,
/// and stops the DNS server opened for it.
struct StartGuard<'a> {
    engine: &'a Engine,
    id: String,
    endpoints: Vec<(Arc<crate::network::user::UserNetwork>, std::net::Ipv4Addr)>,
    armed: bool,
}

impl Drop for StartGuard<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for (net, ip) in &self.endpoints {
            net.release(*ip);
        }
        if !self.endpoints.is_empty() {
            self.engine.dns.stop(&self.id);
            self.engine.dns.table().remove(&self.id);
        }
    }
}

/// The published ports recorded in NetworkSettings.
fn published_of(ns: &agent_common::engine::NetworkSettings) -> Vec<Published> {
    let mut out = Vec::new();
    for (port, bindings) in &ns.ports {
        let (p, proto) = port.split_once('/').unwrap_or((port.as_str(), "tcp"));
        let Ok(container_port) = p.parse() else {
            continue;
        };
        for b in bindings {
            let Ok(host_port) = b.host_port.parse() else {
                continue;
            };
            out.push(Published {
                proto: proto.to_string(),
                container_port,
                host_ip: b
                    .host_ip
                    .parse()
                    .ok()
                    .filter(|i: &std::net::Ipv4Addr| !i.is_unspecified()),
                host_port,
            });
        }
    }
    out
}

impl Engine {
    /// Starts a container (a no-op if it runs).
    /// A container with `--rm` that fails to start is removed, as Docker does.
    pub async fn start(self: &Arc<Self>, c: &Arc<Container>) -> Result<()> {
        let result = {
            let _op = c.op.lock().await;
            self.start_locked(c).await
        };
        if result.is_err() && c.record().host_config.auto_remove {
            let _ = self.remove(c, true, true).await;
        }
        result
    }

    async fn start_locked(self: &Arc<Self>, c: &Arc<Container>) -> Result<()> {
        let t0 = std::time::Instant::now();
        let rec = c.record();
        if rec.state.running {
            return Ok(());
        }
        if rec.removing {
            return Err(EngineError::Conflict(format!(
                "container {} is marked for removal and cannot be started",
                rec.name
            )));
        }
        let dir = self.container_dir(&c.id);
        let image = self.images.resolve(&rec.image)?;
        let mut lowers = self.images.layer_dirs(&image)?;
        lowers.reverse();
        let upper = dir.join("upper");

        // Credentials come from the container's own /etc/passwd and /etc/group.
        let (passwd, group) = {
            let (upper, lowers) = (upper.clone(), lowers.clone());
            tokio::task::spawn_blocking(move || {
                (
                    read_rootfs_file(&upper, &lowers, "etc/passwd"),
                    read_rootfs_file(&upper, &lowers, "etc/group"),
                )
            })
            .await
            .map_err(|e| EngineError::Internal(e.to_string()))?
        };
        let (uid, gid, groups, home) = crate::runtime::init::resolve_user(
            &rec.config.user,
            passwd.as_deref(),
            group.as_deref(),
        )
        .map_err(|message| EngineError::StartFailed {
            exit_code: 126,
            message,
        })?;
        let mut env = rec.config.env.clone();
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.insert(
                1.min(env.len()),
                format!("HOSTNAME={}", rec.config.hostname),
            );
        }
        if !env.iter().any(|e| e.starts_with("HOME=")) {
            env.push(format!("HOME={home}"));
        }

        // `--network container:NAME` shares that container's network namespace
        // and its /etc/hosts and resolv.conf.
        let mut joined_files = None;
        let kind = match rec.host_config.network_mode.as_str() {
            "host" => NetKind::Host,
            "none" => NetKind::Isolated,
            m if m.starts_with("container:") => {
                let target = m.trim_start_matches("container:");
                let other = self
                    .find(target)
                    .map(|o| o.record())
                    .ok()
                    .filter(|o| o.state.running);
                let Some(other) = other else {
                    return Err(EngineError::StartFailed {
                        exit_code: 125,
                        message: format!(
                            "cannot join the network of container {target}: it is not running"
                        ),
                    });
                };
                let odir = self.container_dir(&other.id);
                joined_files = Some((
                    fs::read_to_string(odir.join("hosts")).unwrap_or_else(|_| HOSTS.to_string()),
                    fs::read_to_string(odir.join("resolv.conf")).unwrap_or_default(),
                ));
                NetKind::Joined(other.state.pid as i32)
            }
            m if is_user_network_mode(m) => NetKind::Isolated,
            _ => NetKind::Bridged,
        };
        let network = match kind {
            NetKind::Host => NetworkMode::Host,
            NetKind::Joined(_) => NetworkMode::Joined,
            _ => NetworkMode::None,
        };
        let mut sandbox = self.pool.take(kind).await?;
        // User-defined networks: eth0 (after the default bridge's, if any), eth1, …
        let user_endpoints = if matches!(kind, NetKind::Bridged | NetKind::Isolated)
            && !rec.attachments.is_empty()
        {
            let first = usize::from(kind == NetKind::Bridged);
            self.attach_user_networks(&rec, sandbox.pid, first)
                .await
                .map_err(|e| EngineError::StartFailed {
                    exit_code: 125,
                    message: e.to_string(),
                })?
        } else {
            Vec::new()
        };
        let mut guard = StartGuard {
            engine: self,
            id: c.id.clone(),
            endpoints: user_endpoints
                .iter()
                .filter_map(|ep| {
                    let net = self.networks.get()?.get(&ep.network_id)?;
                    Some((net, ep.endpoint.ip))
                })
                .collect(),
            armed: true,
        };
        let embedded_dns = !user_endpoints.is_empty();
        let primary_user = (kind == NetKind::Isolated)
            .then(|| user_endpoints.first())
            .flatten();
        // Legacy links: variables and hosts entries from running, bridged containers.
        let mut link_hosts = String::new();
        let mut link_targets: Vec<(std::net::Ipv4Addr, Vec<String>)> = Vec::new();
        for link in &rec.host_config.links {
            let (name, alias) = link
                .split_once(':')
                .unwrap_or((link.as_str(), link.as_str()));
            let child = self.find(name).map(|c| c.record());
            let linked = child
                .as_ref()
                .ok()
                .filter(|r| r.state.running)
                .and_then(|r| {
                    let ip = r.network_settings.ip_address.parse().ok()?;
                    Some((r, ip))
                });
            let Some((child, ip)) = linked else {
                return Err(EngineError::StartFailed {
                    exit_code: 125,
                    message: format!(
                        "Cannot link to a non running container: /{name} AS /{}/{alias}",
                        rec.name
                    ),
                });
            };
            let linked = crate::network::links::LinkedContainer {
                name: &child.name,
                hostname: &child.config.hostname,
                ip,
                exposed_ports: child.config.exposed_ports.keys().cloned().collect(),
                env: &child.config.env,
            };
            link_targets.push((ip, linked.exposed_ports.clone()));
            env.extend(crate::network::links::link_env(&rec.name, alias, &linked));
            link_hosts.push_str(&crate::network::links::hosts_line(alias, &linked));
        }
        let own_ip = sandbox
            .endpoint
            .as_ref()
            .map(|e| e.ip)
            .or_else(|| primary_user.map(|e| e.endpoint.ip));
        let (hosts, resolv) = match (kind, own_ip) {
            (NetKind::Joined(_), _) => joined_files.clone().unwrap_or_default(),
            (NetKind::Host, _) => (
                fs::read_to_string("/etc/hosts").unwrap_or_else(|_| HOSTS.to_string()),
                fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
            ),
            (_, Some(ip)) => (
                format!("{HOSTS}{ip}\t{}\n{link_hosts}", rec.config.hostname),
                host_resolv_conf(),
            ),
            _ => (HOSTS.to_string(), host_resolv_conf()),
        };
        // Published ports: -p bindings, and with -P every exposed port.
        let mut published = Vec::new();
        let publish_ip = sandbox
            .endpoint
            .as_ref()
            .map(|e| e.ip)
            .or_else(|| primary_user.map(|e| e.endpoint.ip));
        if let Some(ip) = publish_ip {
            let bridge = self
                .pool
                .bridge
                .get()
                .ok_or_else(|| EngineError::Internal("no bridge".into()))?;
            let mut wanted: Vec<(String, agent_common::engine::PortBinding)> = Vec::new();
            for (port, bindings) in &rec.host_config.port_bindings {
                for b in bindings {
                    wanted.push((port.clone(), b.clone()));
                }
            }
            if rec.host_config.publish_all_ports {
                for port in rec.config.exposed_ports.keys() {
                    if !rec.host_config.port_bindings.contains_key(port) {
                        wanted.push((port.clone(), Default::default()));
                    }
                }
            }
            published =
                bridge
                    .publish(ip, &wanted)
                    .await
                    .map_err(|e| EngineError::StartFailed {
                        exit_code: 125,
                        message: e.to_string(),
                    })?;
        }
        let mut hosts = hosts;
        for h in &rec.host_config.extra_hosts {
            if let Some((host, ip)) = h.split_once(':') {
                hosts.push_str(&format!("{ip}\t{host}\n"));
            }
        }
        let resolv = if embedded_dns {
            // The embedded server answers; it forwards to --dns or the host's.
            embedded_resolv_conf(&resolv)
        } else if rec.host_config.dns.is_empty() {
            resolv
        } else {
            // --dns replaces the nameservers; the search/options lines stay.
            let mut text: String = resolv
                .lines()
                .filter(|l| !l.trim_start().starts_with("nameserver"))
                .map(|l| format!("{l}\n"))
                .collect();
            for d in &rec.host_config.dns {
                text.push_str(&format!("nameserver {d}\n"));
            }
            text
        };
        let etc = [
            ("hostname", format!("{}\n", rec.config.hostname)),
            ("hosts", hosts),
            ("resolv.conf", resolv),
        ];
        let mut binds = Vec::new();
        for (file, content) in etc {
            let p = dir.join(file);
            fs::write(&p, content).map_err(EngineError::io("write", &p))?;
            binds.push(BindMount {
                source: p,
                destination: format!("/etc/{file}"),
                readonly: false,
            });
        }
        for m in &rec.mounts {
            binds.push(BindMount {
                source: PathBuf::from(&m.source),
                destination: m.destination.clone(),
                readonly: !m.rw,
            });
        }
        let hc = &rec.host_config;
        let limits = Limits {
            memory: hc.memory,
            nano_cpus: hc.nano_cpus,
            cpu_shares: hc.cpu_shares,
            pids: hc.pids_limit,
        };
        let caps = crate::runtime::spec::capability_set(&hc.cap_add, &hc.cap_drop)
            .map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        let seccomp = crate::runtime::seccomp::for_container(&hc.security_opt, &caps)
            .map_err(EngineError::InvalidArgument)?;
        let devices = hc
            .devices
            .iter()
            .map(|d| crate::runtime::devices::host_device(&device_spec(d)))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(EngineError::InvalidArgument)?;
        let input = SpecInput {
            args: std::iter::once(rec.path.clone())
                .chain(rec.args.clone())
                .collect(),
            env,
            cwd: rec.config.working_dir.clone(),
            uid,
            gid,
            additional_gids: groups,
            hostname: rec.config.hostname.clone(),
            network,
            binds,
            cap_add: hc.cap_add.clone(),
            cap_drop: hc.cap_drop.clone(),
            readonly_rootfs: hc.readonly_rootfs,
            limits,
            terminal: rec.config.tty,
            rootfs: dir.join("rootfs"),
            devices,
            seccomp,
        };
        let spec = spec::build(&input).map_err(|e| EngineError::InvalidArgument(e.to_string()))?;
        spec.save(dir.join("config.json"))
            .map_err(|e| EngineError::Internal(format!("failed to write config.json: {e}")))?;
        let cgroup = sandbox.cgroup.clone();
        let stdin_fifo = rec.config.open_stdin.then(|| dir.join("stdin"));
        let shim = ShimConfig {
            id: c.id.clone(),
            lower_dirs: lowers,
            upper_dir: upper,
            work_dir: dir.join("work"),
            log_path: self.log_path(&c.id),
            exit_path: dir.join("exit.json"),
            stdin_fifo: stdin_fifo.clone(),
            hold_stdin_open: rec.config.open_stdin && !rec.config.stdin_once,
            init: hc.init,
            cgroup: cgroup.clone(),
        };
        let shim_json =
            serde_json::to_vec_pretty(&shim).map_err(|e| EngineError::Internal(e.to_string()))?;
        fs::write(dir.join("shim.json"), shim_json)
            .map_err(EngineError::io("write", dir.join("shim.json")))?;
        if let Some(fifo) = &stdin_fifo {
            crate::runtime::make_fifo(fifo).map_err(EngineError::io("create", fifo))?;
            let sender = tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_sender(fifo)
                .map_err(EngineError::io("open", fifo))?;
            *c.stdin.lock().await = Some(sender);
        }

        if embedded_dns {
            // Names and the DNS server are ready before the container runs.
            let mut started = rec.clone();
            started.state.running = true;
            started.user_endpoints = user_endpoints.clone();
            started.embedded_dns = true;
            let probe = Container::new(started);
            self.refresh_names(&probe);
            if let Err(e) = self.dns.serve(&c.id, sandbox.pid).await {
                tracing::warn!(container = %c.id, "failed to start the embedded DNS server: {e}");
            }
        }
        let t1 = t0.elapsed();
        let report = sandbox.go(&dir).await;
        tracing::debug!(container = %c.id, prepare_us = t1.as_micros() as u64, go_us = (t0.elapsed() - t1).as_micros() as u64, "started");
        let (shim_pid, shim_start_time) = (sandbox.shim_pid, sandbox.shim_start_time);
        match report {
            Some(StartReport {
                pid: Some(pid),
                tty_path,
                ..
            }) => {
                sandbox.keep_address();
                let endpoint = sandbox.endpoint.clone();
                let mut link_rules = Vec::new();
                if let (Some(ep), Some(bridge)) = (&endpoint, self.pool.bridge.get()) {
                    for (to, ports) in &link_targets {
                        link_rules.extend(bridge.link(ep.ip, *to, ports).await);
                    }
                }
                let (eth0, bridge_name) = match (&endpoint, primary_user) {
                    (Some(ep), _) => (Some(ep), self.pool.bridge.get().map(|b| b.name.clone())),
                    (None, Some(u)) => (
                        Some(&u.endpoint),
                        self.networks
                            .get()
                            .and_then(|n| n.get(&u.network_id))
                            .map(|n| n.record.bridge.clone()),
                    ),
                    _ => (None, None),
                };
                let mut settings = network_settings(&rec, eth0, bridge_name, &published);
                let mut with_endpoints = rec.clone();
                with_endpoints.user_endpoints = user_endpoints.clone();
                settings.networks = self.endpoint_settings(&with_endpoints);
                guard.armed = false;
                c.update(&dir, |r| {
                    r.link_rules = link_rules;
                    r.endpoint = endpoint;
                    r.user_endpoints = user_endpoints;
                    r.embedded_dns = embedded_dns;
                    r.network_settings = settings;
                    r.state.status = "running".into();
                    r.state.running = true;
                    r.state.paused = false;
                    r.state.restarting = false;
                    r.state.oom_killed = false;
                    r.state.dead = false;
                    r.state.pid = pid as i64;
                    r.state.exit_code = 0;
                    r.state.error.clear();
                    r.state.started_at = now_rfc3339();
                    r.shim_pid = shim_pid;
                    r.shim_start_time = shim_start_time;
                    r.cgroup = Some(cgroup);
                    r.tty_path = tty_path.map(|n| format!("/proc/{pid}/root{n}"));
                    r.manually_stopped = false;
                })?;
                let engine = self.clone();
                let container = c.clone();
                tokio::spawn(async move {
                    sandbox.wait_exit_recorded().await;
                    tracing::debug!(container = %container.id, "exit recorded");
                    // Reap the shim whenever it finishes its teardown.
                    if let Some(mut shim) = sandbox.take_shim() {
                        tokio::spawn(async move {
                            let _ = shim.wait().await;
                        });
                    }
                    engine.handle_exit(&container).await;
                });
                Ok(())
            }
            other => {
                if let (Some(ip), Some(bridge)) = (publish_ip, self.pool.bridge.get()) {
                    bridge.unpublish(ip, &published).await;
                }
                sandbox.wait_shim().await;
                let failure =
                    other
                        .and_then(|r| r.failure)
                        .unwrap_or(crate::runtime::StartFailure {
                            exit_code: 125,
                            message: format!(
                                "the container's shim failed before reporting; see {}",
                                dir.join("shim.log").display()
                            ),
                        });
                c.stdin.lock().await.take();
                c.update(&dir, |r| {
                    r.state.exit_code = failure.exit_code as i64;
                    r.state.error = failure.message.clone();
                    r.state.restarting = false;
                    if r.state.status == "restarting" {
                        r.state.status = "exited".into();
                        r.state.finished_at = now_rfc3339();
                    }
                })?;
                Err(EngineError::StartFailed {
                    exit_code: failure.exit_code,
                    message: failure.message,
                })
            }
        }
    }

    /// The container's log file (Docker's `<id>-json.log`).
    pub fn log_path(&self, id: &str) -> PathBuf {
        self.container_dir(id).join(format!("{id}-json.log"))
    }

    /// Records how the container ended, then applies the restart policy or `--rm`.
    ///
    /// Boxed because it and [`Engine::start`] spawn each other.
    fn handle_exit<'a>(
        self: &'a Arc<Self>,
        c: &'a Arc<Container>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'a>> {
        Box::pin(self.handle_exit_inner(c))
    }

    async fn handle_exit_inner(self: &Arc<Self>, c: &Arc<Container>) {
        let dir = self.container_dir(&c.id);
        let recorded: Option<ExitRecord> = fs::read(dir.join("exit.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        // Every process of the container is gone (the shim reaped its init
        // before recording): remove the cgroups now rather than after the
        // shim's own teardown, so they are gone when `rm` or `wait` return.
        if let Some(cg) = c.record().cgroup {
            let _ = tokio::task::spawn_blocking(move || cg.remove()).await;
        }
        let exit = match recorded {
            Some(e) => e,
            None => ExitRecord {
                exit_code: 255,
                oom_killed: false,
                finished_at: now_rfc3339(),
                error: "the container's shim ended without recording an exit status".into(),
            },
        };
        c.stdin.lock().await.take();
        let rec_now = c.record();
        // The DNS sockets hold the namespace: close them first.
        self.dns.stop(&c.id);
        self.dns.table().remove(&c.id);
        if let (Some(ip), Some(bridge)) = (published_ip(&rec_now), self.pool.bridge.get()) {
            bridge
                .unpublish(ip, &published_of(&rec_now.network_settings))
                .await;
        }
        if let (Some(ep), Some(bridge)) = (&rec_now.endpoint, self.pool.bridge.get()) {
            bridge.unlink(&rec_now.link_rules).await;
            bridge.release(ep.ip);
        }
        self.release_user_endpoints(&rec_now.user_endpoints).await;
        let mut stopped = rec_now.clone();
        stopped.user_endpoints.clear();
        let networks = self.endpoint_settings(&stopped);
        let _ = c.update(&dir, |r| {
            r.link_rules.clear();
            r.endpoint = None;
            r.user_endpoints.clear();
            r.embedded_dns = false;
            r.network_settings = agent_common::engine::NetworkSettings {
                networks,
                ..Default::default()
            };
            r.state.status = "exited".into();
            r.state.running = false;
            r.state.paused = false;
            r.state.restarting = false;
            r.state.pid = 0;
            r.state.exit_code = exit.exit_code;
            r.state.oom_killed = exit.oom_killed;
            r.state.finished_at = exit.finished_at.clone();
            r.state.error = exit.error.clone();
            r.shim_pid = 0;
        });
        let rec = c.record();
        if rec.removing {
            return;
        }
        let policy = &rec.host_config.restart_policy;
        let restart = !rec.manually_stopped
            && match policy.name.as_str() {
                "always" | "unless-stopped" => true,
                "on-failure" => {
                    exit.exit_code != 0
                        && (policy.maximum_retry_count == 0
                            || rec.restart_count < policy.maximum_retry_count)
                }
                _ => false,
            };
        if restart {
            let ran_for = super::container::parse_unix(&exit.finished_at)
                - super::container::parse_unix(&rec.state.started_at);
            // Docker's backoff: 100 ms doubling, reset after 10 s of running.
            let delay_ms = if ran_for >= 10 {
                100
            } else {
                (100u64 << rec.restart_count.clamp(0, 10)).min(60_000)
            };
            let _ = c.update(&dir, |r| {
                r.state.status = "restarting".into();
                r.state.restarting = true;
            });
            let engine = self.clone();
            let container = c.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                let _op = container.op.lock().await;
                let rec = container.record();
                if !rec.state.restarting || rec.manually_stopped || rec.removing {
                    return;
                }
                let _ = container.update(&engine.container_dir(&container.id), |r| {
                    r.restart_count += 1
                });
                if let Err(e) = engine.start_locked(&container).await {
                    tracing::warn!(container = %container.id, "restart failed: {e}");
                }
            });
        } else if rec.host_config.auto_remove {
            if let Err(e) = self.remove(c, true, true).await {
                tracing::warn!(container = %c.id, "auto-remove failed: {e}");
            }
        }
    }

    /// Waits until the container is not running, at most `timeout`. True if it stopped.
    pub async fn wait_stopped(&self, c: &Container, timeout: Option<Duration>) -> bool {
        let mut rx = c.subscribe();
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        loop {
            if !c.is_running() {
                return true;
            }
            let changed = rx.changed();
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, changed).await.is_err() {
                        return !c.is_running();
                    }
                }
                None => {
                    if changed.await.is_err() {
                        return !c.is_running();
                    }
                }
            }
        }
    }

    fn signal(&self, c: &Container, sig: Signal) -> Result<()> {
        let pid = c.record().state.pid as i32;
        if pid <= 0 {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        match nix::sys::signal::kill(Pid::from_raw(pid), sig) {
            Ok(()) | Err(nix::Error::ESRCH) => Ok(()),
            Err(e) => Err(EngineError::Internal(format!(
                "failed to send {sig} to the container: {e}"
            ))),
        }
    }

    fn thaw_if_paused(&self, c: &Container) {
        let rec = c.record();
        if rec.state.paused {
            if let Some(cg) = &rec.cgroup {
                let _ = cg.set_frozen(false);
            }
            let _ = c.update(&self.container_dir(&c.id), |r| {
                r.state.paused = false;
                r.state.status = "running".into();
            });
        }
    }

    /// Stops a container: its stop signal, then SIGKILL after the timeout.
    pub async fn stop(self: &Arc<Self>, c: &Arc<Container>, timeout: Option<i64>) -> Result<()> {
        let _op = c.op.lock().await;
        self.stop_locked(c, timeout).await
    }

    async fn stop_locked(self: &Arc<Self>, c: &Arc<Container>, timeout: Option<i64>) -> Result<()> {
        let dir = self.container_dir(&c.id);
        c.update(&dir, |r| {
            r.manually_stopped = true;
            if r.state.restarting {
                r.state.restarting = false;
                r.state.status = "exited".into();
            }
        })?;
        if !c.is_running() {
            return Ok(());
        }
        let rec = c.record();
        let sig = match &rec.config.stop_signal {
            Some(s) => parse_signal(s)?,
            None => Signal::SIGTERM,
        };
        let timeout = timeout
            .or(rec.config.stop_timeout)
            .unwrap_or(DEFAULT_STOP_TIMEOUT);
        self.signal(c, sig)?;
        self.thaw_if_paused(c);
        let graceful = if timeout < 0 {
            self.wait_stopped(c, None).await
        } else {
            self.wait_stopped(c, Some(Duration::from_secs(timeout as u64)))
                .await
        };
        if !graceful {
            self.signal(c, Signal::SIGKILL)?;
            if !self.wait_stopped(c, Some(Duration::from_secs(30))).await {
                return Err(EngineError::Internal(format!(
                    "container {} did not exit 30 s after SIGKILL",
                    c.id
                )));
            }
        }
        Ok(())
    }

    /// Sends a signal (default SIGKILL).
    pub async fn kill(self: &Arc<Self>, c: &Arc<Container>, signal: &str) -> Result<()> {
        let sig = if signal.is_empty() {
            Signal::SIGKILL
        } else {
            parse_signal(signal)?
        };
        let _op = c.op.lock().await;
        if !c.is_running() {
            return Err(EngineError::Conflict(format!(
                "Cannot kill container: {}: Container {} is not running",
                c.name(),
                c.id
            )));
        }
        c.update(&self.container_dir(&c.id), |r| r.manually_stopped = true)?;
        self.signal(c, sig)?;
        if sig == Signal::SIGKILL {
            self.thaw_if_paused(c);
        }
        Ok(())
    }

    /// Stops (if running) and starts again.
    pub async fn restart(self: &Arc<Self>, c: &Arc<Container>, timeout: Option<i64>) -> Result<()> {
        let _op = c.op.lock().await;
        self.stop_locked(c, timeout).await?;
        self.start_locked(c).await
    }

    /// Freezes (`pause`) or thaws (`unpause`) every process of the container.
    pub async fn set_paused(self: &Arc<Self>, c: &Arc<Container>, paused: bool) -> Result<()> {
        let _op = c.op.lock().await;
        let rec = c.record();
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        if rec.state.paused == paused {
            return Err(EngineError::Conflict(if paused {
                format!("Container {} is already paused", c.id)
            } else {
                format!("Container {} is not paused", c.id)
            }));
        }
        let cg = rec
            .cgroup
            .ok_or_else(|| EngineError::Internal("container has no cgroup".into()))?;
        cg.set_frozen(paused)
            .map_err(|e| EngineError::Internal(e.to_string()))?;
        c.update(&self.container_dir(&c.id), |r| {
            r.state.paused = paused;
            r.state.status = if paused { "paused" } else { "running" }.into();
        })
    }

    /// Removes a container (killing it first with `force`), and its anonymous
    /// volumes with `volumes`.
    pub async fn remove(
        self: &Arc<Self>,
        c: &Arc<Container>,
        force: bool,
        volumes: bool,
    ) -> Result<()> {
        let _op = c.op.lock().await;
        let dir = self.container_dir(&c.id);
        let rec = c.record();
        if rec.state.running && !force {
            return Err(EngineError::Conflict(format!(
                "You cannot remove a {} container {}. Stop the container before attempting removal or force remove",
                if rec.state.paused { "paused" } else { "running" },
                c.id
            )));
        }
        c.update(&dir, |r| {
            r.removing = true;
            r.state.restarting = false;
        })?;
        if c.is_running() {
            self.signal(c, Signal::SIGKILL)?;
            self.thaw_if_paused(c);
            if !self.wait_stopped(c, Some(Duration::from_secs(30))).await {
                c.update(&dir, |r| r.removing = false)?;
                return Err(EngineError::Internal(format!(
                    "container {} did not exit after SIGKILL; not removed",
                    c.id
                )));
            }
        }
        self.forget(&c.id);
        // Move the directory aside (one rename) and delete it in the
        // background: the container is gone for every client from here on.
        let trash = self.root().join("trash").join(&c.id);
        let doomed = match fs::rename(&dir, &trash) {
            Ok(()) => trash,
            Err(_) => dir.clone(),
        };
        tokio::task::spawn_blocking(move || fs::remove_dir_all(doomed));
        if volumes {
            for m in rec
                .mounts
                .iter()
                .filter(|m| m.anonymous && m.kind == "volume")
            {
                if self.container_using_volume(&m.name).is_none() {
                    let _ = self.volumes.remove(&m.name, true, None);
                }
            }
        }
        c.mark_removed();
        tracing::info!(container = %c.id, "removed");
        Ok(())
    }

    /// Waits for the container to stop and returns its exit code.
    pub async fn wait(self: &Arc<Self>, c: &Arc<Container>) -> (i64, String) {
        let mut rx = c.subscribe();
        loop {
            let rec = c.record();
            if !rec.state.running && !rec.state.restarting {
                return (rec.state.exit_code, rec.state.error);
            }
            if rx.changed().await.is_err() {
                let rec = c.record();
                return (rec.state.exit_code, rec.state.error);
            }
        }
    }

    /// Renames a container.
    pub fn rename(&self, c: &Container, new_name: &str) -> Result<()> {
        let new_name = new_name.strip_prefix('/').unwrap_or(new_name);
        if !super::create::valid_name(new_name) {
            return Err(EngineError::InvalidArgument(format!(
                "Invalid container name ({new_name}), only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
            )));
        }
        if let Some(other) = self.all().into_iter().find(|o| o.name() == new_name) {
            if other.id != c.id {
                return Err(EngineError::NameInUse {
                    name: new_name.to_string(),
                    id: other.id.clone(),
                });
            }
        }
        c.update(&self.container_dir(&c.id), |r| {
            r.name = new_name.to_string()
        })?;
        self.refresh_names(c);
        Ok(())
    }

    /// After a daemon restart: re-attach to the shims of running containers,
    /// record the exits that happened meanwhile, and start containers whose
    /// restart policy says so (as Docker does at daemon start).
    pub async fn adopt(self: &Arc<Self>) {
        for c in self.all() {
            let rec = c.record();
            let was_running = rec.state.running || rec.state.restarting;
            if !was_running {
                continue;
            }
            let alive = rec.shim_pid > 0
                && crate::runtime::process_start_time(rec.shim_pid) == Some(rec.shim_start_time)
                && rec.shim_start_time != 0;
            let pidfd = if alive {
                crate::runtime::pidfd_open(rec.shim_pid).ok()
            } else {
                None
            };
            match pidfd {
                Some(fd) if rec.state.running => {
                    if let Some(ep) = &rec.endpoint {
                        if let Some(bridge) = self.pool.bridge.get() {
                            bridge.mark_used(ep.ip);
                            bridge.restore_links(&rec.link_rules).await;
                        }
                    }
                    self.mark_user_endpoints(&rec);
                    if let (Some(ip), Some(bridge)) = (published_ip(&rec), self.pool.bridge.get()) {
                        let wanted: Vec<_> = published_of(&rec.network_settings)
                            .into_iter()
                            .map(|p| {
                                (
                                    format!("{}/{}", p.container_port, p.proto),
                                    agent_common::engine::PortBinding {
                                        host_ip: p
                                            .host_ip
                                            .map(|i| i.to_string())
                                            .unwrap_or_default(),
                                        host_port: p.host_port.to_string(),
                                    },
                                )
                            })
                            .collect();
                        if let Err(e) = bridge.publish(ip, &wanted).await {
                            tracing::warn!(container = %c.id, "could not restore published ports: {e}");
                        }
                    }
                    self.refresh_names(&c);
                    self.serve_dns(&c).await;
                    if rec.config.open_stdin {
                        let fifo = self.container_dir(&c.id).join("stdin");
                        if let Ok(sender) = tokio::net::unix::pipe::OpenOptions::new()
                            .read_write(true)
                            .open_sender(&fifo)
                        {
                            *c.stdin.lock().await = Some(sender);
                        }
                    }
                    tracing::info!(container = %c.id, "re-attached to running container");
                    let engine = self.clone();
                    tokio::spawn(async move {
                        let _ = crate::runtime::wait_pidfd(fd).await;
                        engine.handle_exit(&c).await;
                    });
                }
                _ => {
                    tracing::info!(container = %c.id, "container ended while the daemon was down");
                    self.handle_exit(&c).await;
                }
            }
        }
        for c in self.all() {
            let rec = c.record();
            let policy = rec.host_config.restart_policy.name.as_str();
            let wants = policy == "always" || (policy == "unless-stopped" && !rec.manually_stopped);
            if wants && !rec.state.running && !rec.state.restarting && rec.state.status != "created"
            {
                if let Err(e) = self.start(&c).await {
                    tracing::warn!(container = %c.id, "could not restart at boot: {e}");
                }
            }
        }
    }
}

/// A `DeviceMapping` back in `--device` form (`HOST:CONTAINER:PERMS`).
pub(crate) fn device_spec(d: &agent_common::engine::DeviceMapping) -> String {
    let container = if d.path_in_container.is_empty() {
        &d.path_on_host
    } else {
        &d.path_in_container
    };
    let perms = if d.cgroup_permissions.is_empty() {
        "rwm"
    } else {
        &d.cgroup_permissions
    };
    format!("{}:{container}:{perms}", d.path_on_host)
}

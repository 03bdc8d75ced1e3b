//! User-defined networks as containers see them: the `network` verbs
//! (create, ls, inspect, rm, connect, disconnect, prune), plugging a
//! starting container into its networks and unplugging it at exit, and
//! keeping the embedded DNS server's name table in step with all of that.
//!
//! The networks themselves (bridges, subnets, IPAM, rules) are
//! `crate::network::user`'s; which container is attached where lives in the
//! container records (`attachments` while configured, `user_endpoints` while
//! running), so a daemon restart rebuilds the IPAM from them.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use agent_common::engine::{
    EndpointSettings, Ipam, IpamConfig, NetworkContainer, NetworkInspect, PruneReport,
};

use super::container::{Container, ContainerRecord};
use super::{random_id, Engine, EngineError, Result};
use crate::network::resolver::{NameEntry, RESOLVER_IP};
use crate::network::user::{
    self, Attachment, CreateRequest, Networks, UserEndpoint, UserNetwork, UserNetworkError,
};

/// Whether a `NetworkMode` names a user-defined network.
pub fn is_user_network_mode(mode: &str) -> bool {
    !matches!(mode, "" | "default" | "bridge" | "host" | "none") && !mode.starts_with("container:")
}

/// The nameservers of the host's resolv.conf that a container can reach
/// (loopback ones are dropped).
fn host_nameservers() -> Vec<IpAddr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("nameserver")).then(|| w.next())?
        })
        .filter_map(|a| a.parse::<IpAddr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}

/// Where a container's queries for other names go: its `--dns` servers,
/// else the host's.
pub fn upstreams(rec: &ContainerRecord) -> Vec<IpAddr> {
    if rec.host_config.dns.is_empty() {
        host_nameservers()
    } else {
        rec.host_config
            .dns
            .iter()
            .filter_map(|d| d.parse().ok())
            .collect()
    }
}

/// The resolv.conf of a container served by the embedded DNS server: the
/// host's search and options lines, with 127.0.0.11 as the only nameserver.
pub fn embedded_resolv_conf(host_resolv: &str) -> String {
    let mut out = format!("nameserver {RESOLVER_IP}\n");
    for l in host_resolv.lines() {
        let t = l.trim_start();
        if t.starts_with("search") || t.starts_with("domain") {
            out.push_str(&format!("{l}\n"));
        } else if let Some(opts) = t.strip_prefix("options") {
            let kept: Vec<&str> = opts
                .split_whitespace()
                .filter(|o| !o.starts_with("ndots"))
                .collect();
            if !kept.is_empty() {
                out.push_str(&format!("options {}\n", kept.join(" ")));
            }
        }
    }
    out.push_str("options ndots:0\n");
    out
}

fn invalid(msg: impl Into<String>) -> EngineError {
    EngineError::InvalidArgument(msg.into())
}

impl Engine {
    /// The user-defined networks (set up at daemon start).
    pub fn user_networks(&self) -> Result<&Arc<Networks>> {
        self.networks
            .get()
            .ok_or_else(|| EngineError::Internal("networks are not set up on this daemon".into()))
    }

    /// Sets the user-defined networks up at daemon start: loads the records,
    /// restores bridges and rules (the daemon's table was just rebuilt), and
    /// names them for the DNS server. Call before [`Engine::adopt`].
    pub async fn setup_networks(
        &self,
        dir: &std::path::Path,
        table: &str,
        default_subnet: &str,
    ) -> Result<()> {
        let nets = Networks::open(dir, table, default_subnet)?;
        for w in &nets.warnings {
            tracing::error!("{w}");
        }
        nets.restore().await;
        for n in nets.list() {
            self.dns
                .table()
                .set_network(&n.record.id, Some(&n.record.name));
        }
        let _ = self.networks.set(Arc::new(nets));
        Ok(())
    }

    /// The name of network `id` (its ID if it is gone).
    fn network_name(&self, id: &str) -> String {
        self.networks
            .get()
            .and_then(|n| n.get(id))
            .map(|n| n.record.name.clone())
            .unwrap_or_else(|| id.to_string())
    }

    /// `NetworkSettings.Networks` of a record: every attachment, with the
    /// endpoint's address while running.
    pub(crate) fn endpoint_settings(
        &self,
        rec: &ContainerRecord,
    ) -> BTreeMap<String, EndpointSettings> {
        let mut out = BTreeMap::new();
        for a in &rec.attachments {
            let mut s = EndpointSettings {
                aliases: a.aliases.clone(),
                network_id: a.network_id.clone(),
                ..Default::default()
            };
            if let Some(ep) = rec
                .user_endpoints
                .iter()
                .find(|e| e.network_id == a.network_id)
            {
                s.endpoint_id = ep.endpoint_id.clone();
                s.gateway = ep.endpoint.gateway.to_string();
                s.ip_address = ep.endpoint.ip.to_string();
                s.ip_prefix_len = ep.endpoint.prefix;
                s.mac_address = ep.endpoint.mac.clone();
                s.interface = ep.ifname.clone();
            }
            out.insert(self.network_name(&a.network_id), s);
        }
        out
    }

    /// Resolves the network a new container asks for (`--network NAME`,
    /// `--network-alias`, `--ip`) into its first attachment.
    pub(crate) fn attachment_for_create(
        &self,
        mode: &str,
        aliases: &[String],
        ip: &str,
    ) -> Result<Option<Attachment>> {
        if !is_user_network_mode(mode) {
            if !aliases.is_empty() {
                return Err(invalid(
                    "network-scoped aliases are supported only for containers on user-defined networks",
                ));
            }
            if !ip.is_empty() {
                return Err(invalid(
                    "a fixed address (--ip) is supported only on user-defined networks",
                ));
            }
            return Ok(None);
        }
        let net = self.user_networks()?.find(mode)?;
        Ok(Some(Attachment {
            network_id: net.record.id.clone(),
            aliases: check_aliases(aliases)?,
            ipv4_address: parse_ip(&net, ip)?,
        }))
    }

    /// Plugs process `pid`'s namespace into each network the record is
    /// attached to (`eth<first>`, `eth<first+1>`, …). On failure, undoes what
    /// it did and names the network that failed.
    pub(crate) async fn attach_user_networks(
        &self,
        rec: &ContainerRecord,
        pid: i32,
        first: usize,
    ) -> Result<Vec<UserEndpoint>> {
        let mut done: Vec<UserEndpoint> = Vec::new();
        for (i, a) in rec.attachments.iter().enumerate() {
            match self.attach_one(a, pid, &format!("eth{}", first + i)).await {
                Ok(ep) => done.push(ep),
                Err(e) => {
                    self.release_user_endpoints(&done).await;
                    return Err(e);
                }
            }
        }
        Ok(done)
    }

    async fn attach_one(&self, a: &Attachment, pid: i32, ifname: &str) -> Result<UserEndpoint> {
        let net = self
            .user_networks()?
            .get(&a.network_id)
            .ok_or_else(|| UserNetworkError::NotFound(a.network_id.clone()))?;
        let ip = net.allocate(a.ipv4_address)?;
        match net.attach(pid, ip, ifname).await {
            Ok(endpoint) => Ok(UserEndpoint {
                network_id: a.network_id.clone(),
                endpoint_id: random_id(),
                ifname: ifname.to_string(),
                endpoint,
            }),
            Err(e) => {
                net.release(ip);
                Err(EngineError::Internal(format!(
                    "failed to connect the container to network {}: {e}",
                    net.record.name
                )))
            }
        }
    }

    /// Removes endpoints (their veths, if still there) and frees their addresses.
    pub(crate) async fn release_user_endpoints(&self, eps: &[UserEndpoint]) {
        for ep in eps {
            user::detach(&ep.endpoint.host_veth).await;
            if let Some(net) = self.networks.get().and_then(|n| n.get(&ep.network_id)) {
                net.release(ep.endpoint.ip);
            }
        }
    }

    /// Marks the addresses of an adopted container's endpoints as used.
    pub(crate) fn mark_user_endpoints(&self, rec: &ContainerRecord) {
        for ep in &rec.user_endpoints {
            if let Some(net) = self.networks.get().and_then(|n| n.get(&ep.network_id)) {
                net.mark_used(ep.endpoint.ip);
            }
        }
    }

    /// Brings the DNS server's view of container `c` up to date.
    pub(crate) fn refresh_names(&self, c: &Container) {
        let rec = c.record();
        if !rec.state.running || (rec.user_endpoints.is_empty() && !rec.embedded_dns) {
            self.dns.table().remove(&c.id);
            return;
        }
        self.dns.table().set(NameEntry {
            id: rec.id.clone(),
            name: rec.name.clone(),
            endpoints: rec
                .user_endpoints
                .iter()
                .map(|ep| {
                    let aliases = rec
                        .attachments
                        .iter()
                        .find(|a| a.network_id == ep.network_id)
                        .map(|a| a.aliases.clone())
                        .unwrap_or_default();
                    (ep.network_id.clone(), ep.endpoint.ip, aliases)
                })
                .collect(),
            upstreams: upstreams(&rec),
        });
    }

    /// Starts the embedded DNS server of a running container whose
    /// resolv.conf points at it.
    pub(crate) async fn serve_dns(&self, c: &Container) {
        let rec = c.record();
        if !rec.embedded_dns || !rec.state.running || rec.state.pid <= 0 {
            return;
        }
        if let Err(e) = self.dns.serve(&c.id, rec.state.pid as i32).await {
            tracing::warn!(container = %c.id, "failed to start the embedded DNS server: {e}");
        }
    }

    /// The running containers with an endpoint on network `id`.
    fn endpoints_on(&self, id: &str) -> Vec<(ContainerRecord, UserEndpoint)> {
        let mut out = Vec::new();
        for c in self.all() {
            let rec = c.record();
            if !rec.state.running {
                continue;
            }
            if let Some(ep) = rec.user_endpoints.iter().find(|e| e.network_id == id) {
                let ep = ep.clone();
                out.push((rec, ep));
            }
        }
        out.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        out
    }

    fn predefined_id(&self, name: &str) -> String {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!(
            "flotilla predefined network {name} {}",
            self.root().display()
        ));
        hex::encode(digest)
    }

    fn inspect_user(&self, n: &UserNetwork) -> NetworkInspect {
        let containers = self
            .endpoints_on(&n.record.id)
            .into_iter()
            .map(|(rec, ep)| {
                (
                    rec.id.clone(),
                    NetworkContainer {
                        name: rec.name.clone(),
                        endpoint_id: ep.endpoint_id.clone(),
                        mac_address: ep.endpoint.mac.clone(),
                        ipv4_address: format!("{}/{}", ep.endpoint.ip, ep.endpoint.prefix),
                        ipv6_address: String::new(),
                    },
                )
            })
            .collect();
        NetworkInspect {
            name: n.record.name.clone(),
            id: n.record.id.clone(),
            created: n.record.created.clone(),
            scope: "local".into(),
            driver: n.record.driver.clone(),
            enable_ipv6: false,
            ipam: Ipam {
                driver: "default".into(),
                config: vec![IpamConfig {
                    subnet: n.record.subnet.clone(),
                    gateway: n.record.gateway.to_string(),
                }],
            },
            internal: n.record.internal,
            attachable: false,
            containers,
            options: [(
                "com.docker.network.bridge.name".to_string(),
                n.record.bridge.clone(),
            )]
            .into(),
            labels: n.record.labels.clone(),
        }
    }

    fn inspect_predefined(&self, name: &str) -> NetworkInspect {
        let mut out = NetworkInspect {
            name: name.to_string(),
            id: self.predefined_id(name),
            scope: "local".into(),
            driver: match name {
                "none" => "null",
                other => other,
            }
            .to_string(),
            ipam: Ipam {
                driver: "default".into(),
                config: Vec::new(),
            },
            ..Default::default()
        };
        if name == "bridge" {
            if let Some(b) = self.pool.bridge.get() {
                out.ipam.config.push(IpamConfig {
                    subnet: b.subnet(),
                    gateway: b.gateway.to_string(),
                });
                out.options
                    .insert("com.docker.network.bridge.name".into(), b.name.clone());
            }
            for c in self.all() {
                let rec = c.record();
                if let (true, Some(ep)) = (rec.state.running, &rec.endpoint) {
                    out.containers.insert(
                        rec.id.clone(),
                        NetworkContainer {
                            name: rec.name.clone(),
                            endpoint_id: String::new(),
                            mac_address: ep.mac.clone(),
                            ipv4_address: format!("{}/{}", ep.ip, ep.prefix),
                            ipv6_address: String::new(),
                        },
                    );
                }
            }
        }
        out
    }

    /// Finds a predefined network by name or ID.
    fn find_predefined(&self, key: &str) -> Option<&'static str> {
        user::PREDEFINED
            .into_iter()
            .find(|n| *n == key || (key.len() >= 2 && self.predefined_id(n).starts_with(key)))
    }

    /// `network create`.
    pub async fn create_network(&self, req: CreateRequest) -> Result<NetworkInspect> {
        let net = self.user_networks()?.create(req).await?;
        self.dns
            .table()
            .set_network(&net.record.id, Some(&net.record.name));
        Ok(self.inspect_user(&net))
    }

    /// `network ls`: the predefined networks, then the user-defined ones.
    pub fn list_networks(&self) -> Vec<NetworkInspect> {
        let mut out: Vec<NetworkInspect> = user::PREDEFINED
            .iter()
            .map(|n| self.inspect_predefined(n))
            .collect();
        if let Some(nets) = self.networks.get() {
            out.extend(nets.list().iter().map(|n| self.inspect_user(n)));
        }
        out
    }

    /// `network inspect NAME|ID`.
    pub fn inspect_network(&self, key: &str) -> Result<NetworkInspect> {
        if let Some(n) = self.find_predefined(key) {
            return Ok(self.inspect_predefined(n));
        }
        let net = self.user_networks()?.find(key)?;
        Ok(self.inspect_user(&net))
    }

    /// `network rm`: refused while running containers are attached.
    pub async fn remove_network(&self, key: &str) -> Result<()> {
        if let Some(n) = self.find_predefined(key) {
            return Err(EngineError::Conflict(format!(
                "{n} is a pre-defined network and cannot be removed"
            )));
        }
        let nets = self.user_networks()?;
        let net = nets.find(key)?;
        let active = self.endpoints_on(&net.record.id);
        if !active.is_empty() {
            let names: Vec<String> = active.iter().map(|(r, _)| r.name.clone()).collect();
            return Err(EngineError::Conflict(format!(
                "error while removing network: network {} has active endpoints: {}",
                net.record.name,
                names.join(", ")
            )));
        }
        nets.remove(&net.record.id).await?;
        self.dns.table().set_network(&net.record.id, None);
        Ok(())
    }

    /// `network prune`: every user-defined network without active endpoints.
    pub async fn prune_networks(&self) -> Result<PruneReport> {
        let mut report = PruneReport::default();
        let nets = self.user_networks()?;
        for n in nets.list() {
            if self.endpoints_on(&n.record.id).is_empty() && nets.remove(&n.record.id).await.is_ok()
            {
                self.dns.table().set_network(&n.record.id, None);
                report.deleted.push(n.record.name.clone());
            }
        }
        report.deleted.sort();
        Ok(report)
    }

    /// `network connect`: records the attachment, and plugs a running
    /// container in at once (`eth1`, …), with its DNS names.
    pub async fn connect_network(
        self: &Arc<Self>,
        key: &str,
        c: &Arc<Container>,
        aliases: &[String],
        ip: &str,
    ) -> Result<()> {
        if self.find_predefined(key).is_some() {
            return Err(invalid(format!(
                "cannot connect a container to the pre-defined network {key}: connect it to a user-defined network"
            )));
        }
        let net = self.user_networks()?.find(key)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        let mode = rec.host_config.network_mode.as_str();
        if matches!(mode, "host" | "none") || mode.starts_with("container:") {
            return Err(EngineError::Conflict(format!(
                "container {} uses --network {mode}: it cannot be connected to other networks",
                rec.name
            )));
        }
        if rec
            .attachments
            .iter()
            .any(|a| a.network_id == net.record.id)
        {
            return Err(EngineError::Conflict(format!(
                "container {} is already connected to network {}",
                rec.name, net.record.name
            )));
        }
        let attachment = Attachment {
            network_id: net.record.id.clone(),
            aliases: check_aliases(aliases)?,
            ipv4_address: parse_ip(&net, ip)?,
        };
        let dir = self.container_dir(&c.id);
        if !rec.state.running {
            c.update(&dir, |r| r.attachments.push(attachment))?;
            let settings = self.endpoint_settings(&c.record());
            c.update(&dir, |r| r.network_settings.networks = settings)?;
            return Ok(());
        }
        let used: Vec<&str> = rec
            .user_endpoints
            .iter()
            .map(|e| e.ifname.as_str())
            .chain(rec.endpoint.as_ref().map(|_| "eth0"))
            .collect();
        let ifname = (0..)
            .map(|i| format!("eth{i}"))
            .find(|n| !used.contains(&n.as_str()))
            .unwrap_or_else(|| "eth9".into());
        let ep = self
            .attach_one(&attachment, rec.state.pid as i32, &ifname)
            .await?;
        let host_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        let switch_dns = !rec.embedded_dns;
        if switch_dns {
            // Rewrite in place: the file is bind-mounted into the container.
            let path = dir.join("resolv.conf");
            if let Err(e) = std::fs::write(&path, embedded_resolv_conf(&host_resolv)) {
                self.release_user_endpoints(std::slice::from_ref(&ep)).await;
                return Err(EngineError::Io {
                    action: "write",
                    path,
                    source: e,
                });
            }
        }
        let saved = c.update(&dir, |r| {
            r.attachments.push(attachment);
            r.user_endpoints.push(ep.clone());
            r.embedded_dns = true;
        });
        if let Err(e) = saved {
            self.release_user_endpoints(std::slice::from_ref(&ep)).await;
            return Err(e);
        }
        let rec = c.record();
        let settings = self.endpoint_settings(&rec);
        c.update(&dir, |r| r.network_settings.networks = settings)?;
        self.refresh_names(c);
        self.serve_dns(c).await;
        tracing::info!(container = %c.id, network = %net.record.name, %ifname, "connected");
        Ok(())
    }

    /// `network disconnect`: unplugs a running container and forgets the
    /// attachment.
    pub async fn disconnect_network(self: &Arc<Self>, key: &str, c: &Arc<Container>) -> Result<()> {
        if let Some(n) = self.find_predefined(key) {
            return Err(invalid(format!(
                "cannot disconnect a container from the pre-defined network {n}"
            )));
        }
        let net = self.user_networks()?.find(key)?;
        let _op = c.op.lock().await;
        let rec = c.record();
        if !rec
            .attachments
            .iter()
            .any(|a| a.network_id == net.record.id)
        {
            return Err(EngineError::Conflict(format!(
                "container {} is not connected to network {}",
                rec.name, net.record.name
            )));
        }
        let eps: Vec<UserEndpoint> = rec
            .user_endpoints
            .iter()
            .filter(|e| e.network_id == net.record.id)
            .cloned()
            .collect();
        let dir = self.container_dir(&c.id);
        c.update(&dir, |r| {
            r.attachments.retain(|a| a.network_id != net.record.id);
            r.user_endpoints.retain(|e| e.network_id != net.record.id);
        })?;
        self.refresh_names(c);
        self.release_user_endpoints(&eps).await;
        let settings = self.endpoint_settings(&c.record());
        c.update(&dir, |r| r.network_settings.networks = settings)?;
        tracing::info!(container = %c.id, network = %net.record.name, "disconnected");
        Ok(())
    }
}

fn check_aliases(aliases: &[String]) -> Result<Vec<String>> {
    for a in aliases {
        let ok = !a.is_empty()
            && a.len() <= 253
            && a.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(invalid(format!(
                "invalid network alias {a:?}: use letters, digits, '-', '_' and '.'"
            )));
        }
    }
    let mut out = aliases.to_vec();
    out.dedup();
    Ok(out)
}

fn parse_ip(net: &UserNetwork, ip: &str) -> Result<Option<Ipv4Addr>> {
    if ip.is_empty() {
        return Ok(None);
    }
    let addr: Ipv4Addr = ip
        .parse()
        .map_err(|_| invalid(format!("invalid --ip {ip:?}: use an IPv4 address")))?;
    if !net.subnet.contains(addr) || addr == net.record.gateway {
        return Err(invalid(format!(
            "address {addr} is not a usable address of network {} ({})",
            net.record.name, net.subnet
        )));
    }
    Ok(Some(addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_points_at_the_embedded_server() {
        let host = "nameserver 10.0.0.2\nsearch corp.example\noptions ndots:5 timeout:2\n";
        assert_eq!(
            embedded_resolv_conf(host),
            "nameserver 127.0.0.11\nsearch corp.example\noptions timeout:2\noptions ndots:0\n"
        );
        assert!(is_user_network_mode("front"));
        for m in ["", "default", "bridge", "host", "none", "container:x"] {
            assert!(!is_user_network_mode(m), "{m}");
        }
    }

    #[test]
    fn aliases_are_checked() {
        assert!(check_aliases(&["db".into(), "db.internal".into()]).is_ok());
        for bad in ["", "a b", "x..y", "é"] {
            assert!(check_aliases(&[bad.to_string()]).is_err(), "{bad}");
        }
    }
}

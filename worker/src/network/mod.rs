//! The default bridge network: a host bridge (`flotilla0` unless `--bridge`
//! names another) with the gateway address (`--bip`), a veth pair per
//! container (`eth0` inside), addresses from a simple IPAM, outbound
//! masquerade, and published ports as nftables DNAT maps in a table of
//! Flotilla's own (`ip flotilla-<bridge>`), so several daemons with different
//! bridges never touch each other's rules.
//!
//! Where the work happens: the veth and the container-side addresses are set
//! up while a sandbox is *prepared* (`engine::pool`), before any container asks
//! for it, so bridged starts cost no more than unnetworked ones; published
//! ports are map elements added at start and removed at exit.
//!
//! User-defined networks (`user`) share the table: their bridges and
//! subnets are elements of sets the table's rules match on, and the embedded
//! DNS server (`resolver`, `dns`) answers at 127.0.0.11 inside containers on
//! them.
//!
//! Uses the `ip` and `nft` commands (iproute2, nftables): each call is one
//! process, off the start path except for port publishing (one `nft` run per
//! container with `-p`).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Stdio;
use std::sync::Mutex;

use agent_common::engine::PortBinding;

pub mod dns;
pub mod links;
pub mod resolver;
pub mod user;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("invalid --bip {0:?}: use an address with a prefix length, e.g. 10.87.0.1/16")]
    BadBip(String),
    #[error("no free address left in {0}")]
    Exhausted(String),
    #[error("failed to run {cmd}: {message}")]
    Command { cmd: String, message: String },
    #[error("port {0} is already published by another container; pick another host port")]
    PortTaken(String),
    #[error("invalid port specification {0:?}")]
    BadPort(String),
}

type Result<T> = std::result::Result<T, NetworkError>;

async fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let describe = || format!("{program} {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|e| NetworkError::Command {
        cmd: describe(),
        message: e.to_string(),
    })?;
    if let (Some(input), Some(mut w)) = (stdin, child.stdin.take()) {
        let _ = w.write_all(input.as_bytes()).await;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NetworkError::Command {
            cmd: describe(),
            message: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(NetworkError::Command {
            cmd: describe(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A container's place on the bridge.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Endpoint {
    pub ip: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    pub mac: String,
    /// Host side of the veth pair.
    pub host_veth: String,
}

/// One published port, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub proto: String,
    pub container_port: u16,
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
}

/// The default bridge network of one daemon.
pub struct Bridge {
    pub name: String,
    pub gateway: Ipv4Addr,
    pub prefix: u8,
    network: u32,
    table: String,
    used: Mutex<BTreeSet<Ipv4Addr>>,
    /// (proto, host ip or None, host port) of every published port.
    ports: Mutex<BTreeSet<(String, Option<Ipv4Addr>, u16)>>,
}

fn parse_bip(bip: &str) -> Result<(Ipv4Addr, u8)> {
    let (addr, prefix) = bip
        .split_once('/')
        .ok_or_else(|| NetworkError::BadBip(bip.into()))?;
    let addr: Ipv4Addr = addr.parse().map_err(|_| NetworkError::BadBip(bip.into()))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| NetworkError::BadBip(bip.into()))?;
    if !(8..=30).contains(&prefix) {
        return Err(NetworkError::BadBip(bip.into()));
    }
    Ok((addr, prefix))
}

/// Docker's MAC scheme: 02:42 followed by the IPv4 address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

impl Bridge {
    /// Creates (or adopts) the bridge and the daemon's nftables table. With
    /// `icc` false, containers on the bridge cannot reach each other except
    /// through links, and then only on the linked container's exposed ports.
    pub async fn setup(name: &str, bip: &str, icc: bool) -> Result<Bridge> {
        let (gateway, prefix) = parse_bip(bip)?;
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(gateway) & mask;
        if run("ip", &["link", "show", name], None).await.is_err() {
            run("ip", &["link", "add", name, "type", "bridge"], None).await?;
        }
        let cidr = format!("{gateway}/{prefix}");
        let addrs = run("ip", &["-o", "addr", "show", "dev", name], None).await?;
        if !addrs.contains(&cidr) {
            run("ip", &["addr", "add", &cidr, "dev", name], None).await?;
        }
        run("ip", &["link", "set", name, "up"], None).await?;
        // Forwarding between the bridge and the host; 127.0.0.1 may be
        // DNATed onto the bridge (hairpin from the host itself).
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        let _ = std::fs::write(
            format!("/proc/sys/net/ipv4/conf/{name}/route_localnet"),
            "1",
        );
        if !icc {
            // Bridged frames must pass the IPv4 forward hook to be filtered;
            // refuse rather than run with --icc=false unenforced.
            std::fs::write("/proc/sys/net/bridge/bridge-nf-call-iptables", "1").map_err(|e| {
                NetworkError::Command {
                    cmd: "sysctl net.bridge.bridge-nf-call-iptables=1".into(),
                    message: format!("{e}; --icc=false needs the br_netfilter kernel module (modprobe br_netfilter)"),
                }
            })?;
        }
        let icc_rule = if icc {
            String::new()
        } else {
            format!("    iifname \"{name}\" oifname \"{name}\" drop\n")
        };
        let table = format!("flotilla-{name}");
        let subnet = format!("{}/{prefix}", Ipv4Addr::from(network));
        let rules = format!(
            "add table ip {table}\ndelete table ip {table}\n\
table ip {table} {{\n\
  set unets {{ type ifname; }}\n\
  set unets_internal {{ type ifname; }}\n\
  set unet_self {{ type ifname . ifname; }}\n\
  set unet_masq {{ type ipv4_addr; flags interval; }}\n\
  map ports {{ type inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
  map ports_ip {{ type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service; }}\n\
  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;\n\
    fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip\n\
    fib daddr type local dnat ip to meta l4proto . th dport map @ports\n\
  }}\n\
  chain output {{ type nat hook output priority -100; policy accept;\n\
    fib daddr type local dnat ip to ip daddr . meta l4proto . th dport map @ports_ip\n\
    fib daddr type local dnat ip to meta l4proto . th dport map @ports\n\
  }}\n\
  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n\
    ip saddr {subnet} oifname != \"{name}\" masquerade\n\
    ip saddr 127.0.0.0/8 oifname \"{name}\" masquerade\n\
    ip saddr {subnet} ip daddr {subnet} ct status dnat masquerade\n\
    ip saddr @unet_masq oifname != @unets masquerade\n\
    ip saddr 127.0.0.0/8 oifname @unets masquerade\n\
  }}\n\
  set links {{ type ipv4_addr . ipv4_addr . inet_proto . inet_service; }}\n\
  chain forward {{ type filter hook forward priority filter; policy accept;\n\
    iifname . oifname @unet_self accept\n\
    iifname @unets oifname @unets drop\n\
    iifname @unets_internal drop\n\
    oifname @unets_internal drop\n\
    iifname @unets oifname \"{name}\" drop\n\
    iifname \"{name}\" oifname @unets drop\n\
    iifname @unets accept\n\
    oifname @unets accept\n\
    iifname \"{name}\" oifname \"{name}\" ct state established,related accept\n\
    iifname \"{name}\" oifname \"{name}\" ip saddr . ip daddr . meta l4proto . th dport @links accept\n\
{icc_rule}\
    iifname \"{name}\" accept\n\
    oifname \"{name}\" accept\n\
  }}\n\
}}\n"
        );
        run("nft", &["-f", "-"], Some(&rules)).await?;
        Ok(Bridge {
            name: name.to_string(),
            gateway,
            prefix,
            network,
            table,
            used: Mutex::new(BTreeSet::new()),
            ports: Mutex::new(BTreeSet::new()),
        })
    }

    /// Reserves a free address (never the network, gateway or broadcast).
    pub fn allocate(&self) -> Result<Ipv4Addr> {
        let size = 1u32 << (32 - self.prefix);
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        for host in 2..size.saturating_sub(1) {
            let ip = Ipv4Addr::from(self.network + host);
            if ip != self.gateway && !used.contains(&ip) {
                used.insert(ip);
                return Ok(ip);
            }
        }
        Err(NetworkError::Exhausted(format!(
            "{}/{}",
            Ipv4Addr::from(self.network),
            self.prefix
        )))
    }

    /// Marks an address as in use (containers adopted after a restart).
    pub fn mark_used(&self, ip: Ipv4Addr) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ip);
    }

    /// Gives an address back.
    pub fn release(&self, ip: Ipv4Addr) {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }

    /// Connects the network namespace of process `pid` to the bridge: a veth
    /// pair, `eth0` inside with `ip`, the MAC, and a default route.
    pub async fn attach(&self, pid: i32, ip: Ipv4Addr) -> Result<Endpoint> {
        let host_veth = format!("veth{}", &crate::engine::random_id()[..7]);
        let mac = mac_for(ip);
        let pid_s = pid.to_string();
        run(
            "ip",
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", "eth0", "netns", &pid_s,
            ],
            None,
        )
        .await?;
        run(
            "ip",
            &["link", "set", &host_veth, "master", &self.name, "up"],
            None,
        )
        .await?;
        let inside = format!(
            "link set eth0 address {mac}\naddr add {ip}/{} dev eth0\nlink set eth0 up\nroute add default via {}\n",
            self.prefix, self.gateway
        );
        let netns = format!("--net=/proc/{pid}/ns/net");
        run("nsenter", &[&netns, "ip", "-batch", "-"], Some(&inside)).await?;
        Ok(Endpoint {
            ip,
            prefix: self.prefix,
            gateway: self.gateway,
            mac,
            host_veth,
        })
    }

    fn element(&self, p: &Published, ip: Ipv4Addr) -> (String, String) {
        match p.host_ip {
            Some(h) => (
                "ports_ip".into(),
                format!(
                    "{h} . {} . {} : {ip} . {}",
                    p.proto, p.host_port, p.container_port
                ),
            ),
            None => (
                "ports".into(),
                format!(
                    "{} . {} : {ip} . {}",
                    p.proto, p.host_port, p.container_port
                ),
            ),
        }
    }

    /// Picks host ports (an ephemeral one where none was given), checks that
    /// none is taken, and adds the DNAT map elements in one `nft` run.
    pub async fn publish(
        &self,
        ip: Ipv4Addr,
        bindings: &[(String, PortBinding)],
    ) -> Result<Vec<Published>> {
        let mut chosen = Vec::new();
        {
            let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
            for (spec, b) in bindings {
                let (port, proto) = spec.split_once('/').unwrap_or((spec.as_str(), "tcp"));
                let container_port: u16 = port
                    .parse()
                    .map_err(|_| NetworkError::BadPort(spec.clone()))?;
                if proto != "tcp" && proto != "udp" {
                    return Err(NetworkError::BadPort(spec.clone()));
                }
                let host_ip = if b.host_ip.is_empty() || b.host_ip == "0.0.0.0" {
                    None
                } else {
                    Some(
                        b.host_ip
                            .parse()
                            .map_err(|_| NetworkError::BadPort(b.host_ip.clone()))?,
                    )
                };
                let host_port = if b.host_port.is_empty() {
                    (32768..61000u16)
                        .find(|p| {
                            !ports.contains(&(proto.to_string(), None, *p))
                                && !ports.iter().any(|(pr, _, hp)| pr == proto && hp == p)
                                && std::net::TcpListener::bind(("0.0.0.0", *p)).is_ok()
                        })
                        .ok_or_else(|| NetworkError::PortTaken("(no free ephemeral port)".into()))?
                } else {
                    b.host_port
                        .parse()
                        .map_err(|_| NetworkError::BadPort(b.host_port.clone()))?
                };
                let clash = ports.iter().any(|(pr, hip, hp)| {
                    pr == proto
                        && *hp == host_port
                        && (hip.is_none() || host_ip.is_none() || *hip == host_ip)
                });
                let key = (proto.to_string(), host_ip, host_port);
                if clash
                    || chosen
                        .iter()
                        .any(|c: &Published| c.proto == proto && c.host_port == host_port)
                {
                    return Err(NetworkError::PortTaken(format!("{host_port}/{proto}")));
                }
                if proto == "tcp" {
                    let addr = host_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
                    if std::net::TcpListener::bind((addr, host_port)).is_err() {
                        return Err(NetworkError::PortTaken(format!(
                            "{host_port}/{proto} (a host process listens on it)"
                        )));
                    }
                }
                let _ = key;
                chosen.push(Published {
                    proto: proto.to_string(),
                    container_port,
                    host_ip,
                    host_port,
                });
            }
            for p in &chosen {
                ports.insert((p.proto.clone(), p.host_ip, p.host_port));
            }
        }
        if chosen.is_empty() {
            return Ok(chosen);
        }
        let mut script = String::new();
        for p in &chosen {
            let (map, elem) = self.element(p, ip);
            script.push_str(&format!(
                "add element ip {} {map} {{ {elem} }}\n",
                self.table
            ));
        }
        if let Err(e) = run("nft", &["-f", "-"], Some(&script)).await {
            self.forget_ports(&chosen);
            return Err(e);
        }
        Ok(chosen)
    }

    fn forget_ports(&self, published: &[Published]) {
        let mut ports = self.ports.lock().unwrap_or_else(|e| e.into_inner());
        for p in published {
            ports.remove(&(p.proto.clone(), p.host_ip, p.host_port));
        }
    }

    /// Removes published ports.
    pub async fn unpublish(&self, ip: Ipv4Addr, published: &[Published]) {
        if published.is_empty() {
            return;
        }
        let mut script = String::new();
        for p in published {
            let (map, elem) = self.element(p, ip);
            script.push_str(&format!(
                "delete element ip {} {map} {{ {elem} }}\n",
                self.table
            ));
        }
        if let Err(e) = run("nft", &["-f", "-"], Some(&script)).await {
            tracing::warn!("failed to remove published ports: {e}");
        }
        self.forget_ports(published);
    }

    /// Lets `from` reach `to` on `ports` (`"80/tcp"`) although inter-container
    /// traffic is off (`--icc=false`): the rules a link adds. Returns the
    /// elements to pass to [`Bridge::unlink`] later.
    pub async fn link(&self, from: Ipv4Addr, to: Ipv4Addr, ports: &[String]) -> Vec<String> {
        let elems: Vec<String> = ports
            .iter()
            .filter_map(|p| {
                let (port, proto) = p.split_once('/').unwrap_or((p.as_str(), "tcp"));
                let port: u16 = port.parse().ok()?;
                Some(format!("{from} . {to} . {proto} . {port}"))
            })
            .collect();
        if !elems.is_empty() {
            let script = format!(
                "add element ip {} links {{ {} }}\n",
                self.table,
                elems.join(", ")
            );
            if let Err(e) = run("nft", &["-f", "-"], Some(&script)).await {
                tracing::warn!("failed to allow a link: {e}");
            }
        }
        elems
    }

    /// Puts back link rules recorded before a daemon restart.
    pub async fn restore_links(&self, elems: &[String]) {
        if elems.is_empty() {
            return;
        }
        let script = format!(
            "add element ip {} links {{ {} }}\n",
            self.table,
            elems.join(", ")
        );
        if let Err(e) = run("nft", &["-f", "-"], Some(&script)).await {
            tracing::warn!("failed to restore links: {e}");
        }
    }

    /// Removes what [`Bridge::link`] added.
    pub async fn unlink(&self, elems: &[String]) {
        if elems.is_empty() {
            return;
        }
        let script = format!(
            "delete element ip {} links {{ {} }}\n",
            self.table,
            elems.join(", ")
        );
        if let Err(e) = run("nft", &["-f", "-"], Some(&script)).await {
            tracing::warn!("failed to remove a link: {e}");
        }
    }

    /// The nftables table of this bridge (for tests and cleanup).
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The bridge's subnet, e.g. `10.87.0.0/16`.
    pub fn subnet(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bip_parsing_and_macs() {
        assert_eq!(
            parse_bip("10.87.0.1/16").unwrap(),
            ("10.87.0.1".parse().unwrap(), 16)
        );
        assert!(parse_bip("10.87.0.1").is_err());
        assert!(parse_bip("10.87.0.1/33").is_err());
        assert_eq!(mac_for("172.17.0.2".parse().unwrap()), "02:42:ac:11:00:02");
    }
}

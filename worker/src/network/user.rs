//! User-defined bridge networks (`network create`): each one is a host bridge
//! of its own (`fl-<12 hex of the network id>`), a subnet (given, or a free
//! /24 from [`POOL`]), an IPAM, and elements in the daemon's nftables table
//! (the sets `unets`, `unets_internal`, `unet_self`, `unet_masq` that the
//! table's rules, written by [`super::Bridge::setup`], match on): traffic
//! stays inside a network, is masqueraded on its way out unless the network
//! is internal, and never crosses to another network or the default bridge.
//!
//! Records live in `<data-root>/networks/<id>.json`; at daemon start
//! [`Networks::restore`] recreates missing bridges and puts the set elements
//! back (the table itself is rebuilt from scratch), and the engine marks the
//! addresses of adopted containers as used. This module does not know about
//! containers: the engine decides who is attached where and keeps the
//! endpoints in the container records.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use super::{mac_for, run, Endpoint, NetworkError};

/// Where subnets of networks created without `--subnet` come from: 10.88.0.0/13
/// (10.88.0.0–10.95.255.255) in /24s. It stays clear of the default bridge
/// (10.87.0.0/16), Docker's 172.17.0.0/16, and the ranges the test harness
/// gives its daemons and namespaces (10.198.0.0/15, 10.200.0.0/13 and up).
pub const POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 88, 0, 0), 13);

/// A host-wide lock taken while a subnet is chosen and its bridge gets its
/// address, so that daemons side by side never pick the same /24.
const ALLOCATION_LOCK: &str = "/run/flotilla/networks.lock";

/// Names that always exist and are not user-defined networks.
pub const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

/// Errors of user-defined networks.
#[derive(Debug, thiserror::Error)]
pub enum UserNetworkError {
    #[error("network {0} not found")]
    NotFound(String),
    #[error("network name {0:?} is ambiguous: give more characters of the ID")]
    Ambiguous(String),
    #[error("network with name {0} already exists")]
    NameTaken(String),
    #[error("{0}")]
    Invalid(String),
    #[error("invalid pool request: subnet {subnet} overlaps {what}")]
    Overlap { subnet: String, what: String },
    #[error("could not find a free /24 in the address pool {0}: every subnet overlaps a network or an address of the host")]
    PoolExhausted(String),
    #[error("address {ip} is already in use on network {network}")]
    AddressInUse { ip: Ipv4Addr, network: String },
    #[error(transparent)]
    Net(#[from] NetworkError),
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

type Result<T> = std::result::Result<T, UserNetworkError>;

fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> UserNetworkError {
    let path = path.to_path_buf();
    move |source| UserNetworkError::Io {
        action,
        path,
        source,
    }
}

/// A subnet: network address and prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl Subnet {
    fn mask(prefix: u8) -> u32 {
        if prefix == 0 {
            0
        } else {
            u32::MAX << (32 - prefix)
        }
    }

    /// Parses `A.B.C.D/N`; host bits must be zero, N between 8 and 30.
    pub fn parse(s: &str) -> Result<Subnet> {
        let bad = |why: &str| UserNetworkError::Invalid(format!("invalid subnet {s:?}: {why}"));
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| bad("use CIDR notation, e.g. 10.88.5.0/24"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| bad("not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| bad("bad prefix length"))?;
        if !(8..=30).contains(&prefix) {
            return Err(bad("the prefix length must be between 8 and 30"));
        }
        if u32::from(addr) & !Self::mask(prefix) != 0 {
            return Err(bad(&format!(
                "host bits are set; the network address is {}/{prefix}",
                Ipv4Addr::from(u32::from(addr) & Self::mask(prefix))
            )));
        }
        Ok(Subnet { addr, prefix })
    }

    /// Whether `ip` is inside.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & Self::mask(self.prefix) == u32::from(self.addr)
    }

    /// Whether the two share any address.
    pub fn overlaps(&self, other: &Subnet) -> bool {
        let m = Self::mask(self.prefix.min(other.prefix));
        u32::from(self.addr) & m == u32::from(other.addr) & m
    }

    fn size(&self) -> u32 {
        1u32 << (32 - self.prefix)
    }

    fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + self.size() - 1)
    }

    /// The first host address (the default gateway).
    pub fn first_host(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.addr) + 1)
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A user-defined network as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NetworkRecord {
    pub id: String,
    pub name: String,
    pub created: String,
    pub driver: String,
    /// CIDR.
    pub subnet: String,
    pub gateway: Ipv4Addr,
    pub internal: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The host bridge device.
    pub bridge: String,
}

/// What `network create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateRequest {
    pub name: String,
    pub driver: String,
    pub subnet: String,
    pub gateway: String,
    pub internal: bool,
    pub labels: BTreeMap<String, String>,
}

/// A container's attachment to a user network: configuration kept while the
/// container is stopped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Attachment {
    pub network_id: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// A fixed address (`--ip`).
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
}

/// A running container's endpoint on a user network.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct UserEndpoint {
    pub network_id: String,
    pub endpoint_id: String,
    /// `eth0`, `eth1`, … inside the container.
    pub ifname: String,
    pub endpoint: Endpoint,
}

/// One user-defined network, live.
pub struct UserNetwork {
    pub record: NetworkRecord,
    pub subnet: Subnet,
    used: Mutex<BTreeSet<Ipv4Addr>>,
}

impl UserNetwork {
    fn new(record: NetworkRecord) -> Result<UserNetwork> {
        let subnet = Subnet::parse(&record.subnet)?;
        Ok(UserNetwork {
            record,
            subnet,
            used: Mutex::new(BTreeSet::new()),
        })
    }

    /// Reserves `wanted`, or the first free host address (never the network,
    /// gateway or broadcast address).
    pub fn allocate(&self, wanted: Option<Ipv4Addr>) -> Result<Ipv4Addr> {
        let mut used = self.used.lock().unwrap_or_else(|e| e.into_inner());
        let usable = |ip: Ipv4Addr| {
            self.subnet.contains(ip)
                && ip != self.subnet.addr
                && ip != self.subnet.broadcast()
                && ip != self.record.gateway
        };
        if let Some(ip) = wanted {
            if !usable(ip) {
                return Err(UserNetworkError::Invalid(format!(
                    "address {ip} is not a usable address of network {} ({})",
                    self.record.name, self.subnet
                )));
            }
            if !used.insert(ip) {
                return Err(UserNetworkError::AddressInUse {
                    ip,
                    network: self.record.name.clone(),
                });
            }
            return Ok(ip);
        }
        let base = u32::from(self.subnet.addr);
        for host in 1..self.subnet.size().saturating_sub(1) {
            let ip = Ipv4Addr::from(base + host);
            if usable(ip) && !used.contains(&ip) {
                used.insert(ip);
                return Ok(ip);
            }
        }
        Err(NetworkError::Exhausted(self.subnet.to_string()).into())
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

    /// Addresses in use (for tests and inspection).
    pub fn used(&self) -> Vec<Ipv4Addr> {
        self.used
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .copied()
            .collect()
    }

    /// Connects the network namespace of process `pid` to this network: a
    /// veth pair with `ifname` inside, the address, Docker's MAC, and (for
    /// `eth0` of a network that is not internal) the default route.
    pub async fn attach(&self, pid: i32, ip: Ipv4Addr, ifname: &str) -> Result<Endpoint> {
        let host_veth = format!("veth{}", &crate::engine::random_id()[..7]);
        let mac = mac_for(ip);
        let pid_s = pid.to_string();
        run(
            "ip",
            &[
                "link", "add", &host_veth, "type", "veth", "peer", "name", ifname, "netns", &pid_s,
            ],
            None,
        )
        .await?;
        let configured = async {
            run(
                "ip",
                &["link", "set", &host_veth, "master", &self.record.bridge, "up"],
                None,
            )
            .await?;
            let mut inside = format!(
                "link set {ifname} address {mac}\naddr add {ip}/{} dev {ifname}\nlink set {ifname} up\n",
                self.subnet.prefix
            );
            if ifname == "eth0" && !self.record.internal {
                inside.push_str(&format!("route add default via {}\n", self.record.gateway));
            }
            let netns = format!("--net=/proc/{pid}/ns/net");
            run("nsenter", &[&netns, "ip", "-batch", "-"], Some(&inside)).await
        }
        .await;
        if let Err(e) = configured {
            let _ = run("ip", &["link", "del", &host_veth], None).await;
            return Err(e.into());
        }
        Ok(Endpoint {
            ip,
            prefix: self.subnet.prefix,
            gateway: self.record.gateway,
            mac,
            host_veth,
        })
    }
}

/// Removes a container's end of a network (deleting the host side of a veth
/// pair deletes both). Missing devices are fine.
pub async fn detach(host_veth: &str) {
    if run("ip", &["link", "show", host_veth], None).await.is_ok() {
        if let Err(e) = run("ip", &["link", "del", host_veth], None).await {
            tracing::warn!("failed to remove {host_veth}: {e}");
        }
    }
}

/// The user-defined networks of one daemon.
pub struct Networks {
    dir: PathBuf,
    /// The daemon's nftables table (`flotilla-<default bridge>`).
    table: String,
    /// The default bridge's subnet, never handed to a user network.
    default_subnet: Subnet,
    nets: Mutex<BTreeMap<String, Arc<UserNetwork>>>,
    /// Serialises create/remove within this daemon.
    changes: tokio::sync::Mutex<()>,
    /// Records that did not load.
    pub warnings: Vec<String>,
}

/// Addresses on the host's interfaces, as (interface, subnet of the address).
async fn host_subnets() -> Result<Vec<(String, Subnet)>> {
    let out = run("ip", &["-o", "-4", "addr", "show"], None).await?;
    let mut found = Vec::new();
    for line in out.lines() {
        let mut w = line.split_whitespace();
        let (_, ifname) = (w.next(), w.next().unwrap_or_default());
        let Some(cidr) = w.skip_while(|x| *x != "inet").nth(1) else {
            continue;
        };
        let Some((a, p)) = cidr.split_once('/') else {
            continue;
        };
        let (Ok(a), Ok(p)) = (a.parse::<Ipv4Addr>(), p.parse::<u8>()) else {
            continue;
        };
        if p > 32 {
            continue;
        }
        found.push((
            ifname.trim_end_matches(':').to_string(),
            Subnet {
                addr: Ipv4Addr::from(u32::from(a) & Subnet::mask(p)),
                prefix: p,
            },
        ));
    }
    Ok(found)
}

impl Networks {
    /// Loads the records under `dir`. `table` is the daemon's nftables table
    /// and `default_subnet` the default bridge's, e.g. `10.87.0.0/16`.
    pub fn open(dir: &Path, table: &str, default_subnet: &str) -> Result<Networks> {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        let default_subnet = {
            let (a, p) = default_subnet
                .split_once('/')
                .unwrap_or((default_subnet, "16"));
            let a: Ipv4Addr = a.parse().unwrap_or(Ipv4Addr::new(10, 87, 0, 0));
            let p: u8 = p.parse().unwrap_or(16).clamp(8, 30);
            Subnet {
                addr: Ipv4Addr::from(u32::from(a) & Subnet::mask(p)),
                prefix: p,
            }
        };
        let mut nets = BTreeMap::new();
        let mut warnings = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io("read", dir))?.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some("json") {
                continue;
            }
            let loaded = std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| {
                    serde_json::from_slice::<NetworkRecord>(&b).map_err(|e| e.to_string())
                })
                .and_then(|r| UserNetwork::new(r).map_err(|e| e.to_string()));
            match loaded {
                Ok(n) => {
                    nets.insert(n.record.id.clone(), Arc::new(n));
                }
                Err(e) => warnings.push(format!(
                    "failed to load network record {}: {e}; fix or remove the file (it was left untouched)",
                    path.display()
                )),
            }
        }
        Ok(Networks {
            dir: dir.to_path_buf(),
            table: table.to_string(),
            default_subnet,
            nets: Mutex::new(nets),
            changes: tokio::sync::Mutex::new(()),
            warnings,
        })
    }

    fn record_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    fn save(&self, rec: &NetworkRecord) -> Result<()> {
        let path = self.record_path(&rec.id);
        let tmp = self.dir.join(format!(".{}.json.tmp", rec.id));
        let bytes = serde_json::to_vec_pretty(rec).map_err(|e| UserNetworkError::Io {
            action: "encode",
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        std::fs::write(&tmp, bytes).map_err(io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io("write", &path))
    }

    /// Every user-defined network.
    pub fn list(&self) -> Vec<Arc<UserNetwork>> {
        self.nets
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    /// A network by full ID.
    pub fn get(&self, id: &str) -> Option<Arc<UserNetwork>> {
        self.nets.lock().ok().and_then(|m| m.get(id).cloned())
    }

    /// A network by ID, name, or unique ID prefix (Docker's order).
    pub fn find(&self, key: &str) -> Result<Arc<UserNetwork>> {
        let map = self.nets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(key) {
            return Ok(n.clone());
        }
        if let Some(n) = map.values().find(|n| n.record.name == key) {
            return Ok(n.clone());
        }
        if !key.is_empty() && key.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = map
                .values()
                .filter(|n| n.record.id.starts_with(key))
                .collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => return Err(UserNetworkError::Ambiguous(key.to_string())),
            }
        }
        Err(UserNetworkError::NotFound(key.to_string()))
    }

    fn elements(&self, rec: &NetworkRecord) -> String {
        let (t, br) = (&self.table, &rec.bridge);
        let mut s = format!(
            "add element ip {t} unets {{ \"{br}\" }}\nadd element ip {t} unet_self {{ \"{br}\" . \"{br}\" }}\n"
        );
        if rec.internal {
            s.push_str(&format!(
                "add element ip {t} unets_internal {{ \"{br}\" }}\n"
            ));
        } else {
            s.push_str(&format!(
                "add element ip {t} unet_masq {{ {} }}\n",
                rec.subnet
            ));
        }
        s
    }

    /// Creates the bridge device (or adopts it) with the gateway address, and
    /// adds the network's nftables elements.
    async fn plumb(&self, rec: &NetworkRecord, subnet: &Subnet) -> Result<()> {
        let br = rec.bridge.as_str();
        if run("ip", &["link", "show", br], None).await.is_err() {
            run("ip", &["link", "add", br, "type", "bridge"], None).await?;
        }
        let cidr = format!("{}/{}", rec.gateway, subnet.prefix);
        let addrs = run("ip", &["-o", "addr", "show", "dev", br], None).await?;
        if !addrs.contains(&format!(" {cidr} ")) {
            run("ip", &["addr", "add", &cidr, "dev", br], None).await?;
        }
        run("ip", &["link", "set", br, "up"], None).await?;
        let _ = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1");
        // Published ports may be reached from 127.0.0.1 on the host (hairpin).
        let _ = std::fs::write(format!("/proc/sys/net/ipv4/conf/{br}/route_localnet"), "1");
        run("nft", &["-f", "-"], Some(&self.elements(rec))).await?;
        Ok(())
    }

    async fn unplumb(&self, rec: &NetworkRecord) {
        let script = self.elements(rec).replace("add element", "delete element");
        // Elements may be missing (a half-made network); delete one by one.
        for line in script.lines() {
            let _ = run("nft", &["-f", "-"], Some(&format!("{line}\n"))).await;
        }
        if run("ip", &["link", "show", &rec.bridge], None)
            .await
            .is_ok()
        {
            if let Err(e) = run("ip", &["link", "del", &rec.bridge], None).await {
                tracing::warn!("failed to remove bridge {}: {e}", rec.bridge);
            }
        }
    }

    /// At daemon start: recreates missing bridges and puts back the nftables
    /// elements (the table was rebuilt empty).
    pub async fn restore(&self) {
        for n in self.list() {
            if let Err(e) = self.plumb(&n.record, &n.subnet).await {
                tracing::error!(network = %n.record.name, "failed to restore network: {e}");
            }
        }
    }

    async fn lock_allocation() -> Result<nix::fcntl::Flock<std::fs::File>> {
        let path = Path::new(ALLOCATION_LOCK);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(io("open", path))?;
        tokio::task::spawn_blocking(move || {
            nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
                .map_err(|(_, e)| std::io::Error::from(e))
        })
        .await
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|r| r)
        .map_err(io("lock", path))
    }

    /// Checks `subnet` against this daemon's networks, its default bridge
    /// and the host's addresses; the error names what it overlaps.
    fn check_free(&self, subnet: &Subnet, host: &[(String, Subnet)]) -> Result<()> {
        let overlap = |what: String| UserNetworkError::Overlap {
            subnet: subnet.to_string(),
            what,
        };
        if subnet.overlaps(&self.default_subnet) {
            return Err(overlap(format!(
                "the default bridge network ({})",
                self.default_subnet
            )));
        }
        for n in self.list() {
            if subnet.overlaps(&n.subnet) {
                return Err(overlap(format!("network {} ({})", n.record.name, n.subnet)));
            }
        }
        for (ifname, s) in host {
            if subnet.overlaps(s) {
                return Err(overlap(format!("{s} on the host's interface {ifname}")));
            }
        }
        Ok(())
    }

    /// Creates a network: validates, picks or checks the subnet, writes the
    /// record, then makes the bridge and rules. Nothing is left behind on
    /// failure.
    pub async fn create(&self, req: CreateRequest) -> Result<Arc<UserNetwork>> {
        let _changes = self.changes.lock().await;
        if PREDEFINED.contains(&req.name.as_str()) {
            return Err(UserNetworkError::Invalid(format!(
                "{} is a pre-defined network and cannot be created",
                req.name
            )));
        }
        if !crate::volume::valid_name(&req.name) {
            return Err(UserNetworkError::Invalid(format!(
                "invalid network name {:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]+",
                req.name
            )));
        }
        if !matches!(req.driver.as_str(), "" | "bridge") {
            return Err(UserNetworkError::Invalid(format!(
                "plugin {:?} not found: only the bridge driver is supported",
                req.driver
            )));
        }
        if self.list().iter().any(|n| n.record.name == req.name) {
            return Err(UserNetworkError::NameTaken(req.name));
        }
        let given = if req.subnet.is_empty() {
            None
        } else {
            Some(Subnet::parse(&req.subnet)?)
        };
        let gateway: Option<Ipv4Addr> = if req.gateway.is_empty() {
            None
        } else {
            let Some(subnet) = given else {
                return Err(UserNetworkError::Invalid(
                    "--gateway needs --subnet: give the subnet the gateway belongs to".into(),
                ));
            };
            let g: Ipv4Addr = req.gateway.parse().map_err(|_| {
                UserNetworkError::Invalid(format!(
                    "invalid gateway {:?}: use an IPv4 address",
                    req.gateway
                ))
            })?;
            if !subnet.contains(g) || g == subnet.addr || g == subnet.broadcast() {
                return Err(UserNetworkError::Invalid(format!(
                    "gateway {g} is not a host address of subnet {subnet}"
                )));
            }
            Some(g)
        };
        let _lock = Self::lock_allocation().await?;
        let host = host_subnets().await?;
        let subnet = match given {
            Some(s) => {
                self.check_free(&s, &host)?;
                s
            }
            None => {
                let pool = Subnet {
                    addr: POOL.0,
                    prefix: POOL.1,
                };
                let count = 1u32 << (24 - pool.prefix);
                (0..count)
                    .map(|i| Subnet {
                        addr: Ipv4Addr::from(u32::from(pool.addr) + (i << 8)),
                        prefix: 24,
                    })
                    .find(|s| self.check_free(s, &host).is_ok())
                    .ok_or_else(|| UserNetworkError::PoolExhausted(pool.to_string()))?
            }
        };
        let id = crate::engine::random_id();
        let record = NetworkRecord {
            bridge: format!("fl-{}", &id[..12]),
            id,
            name: req.name,
            created: crate::engine::now_rfc3339(),
            driver: "bridge".into(),
            subnet: subnet.to_string(),
            gateway: gateway.unwrap_or_else(|| subnet.first_host()),
            internal: req.internal,
            labels: req.labels,
        };
        // The record first: a daemon that dies half-way through finds it at
        // its next start and finishes the bridge, rather than leaking one.
        self.save(&record)?;
        if let Err(e) = self.plumb(&record, &subnet).await {
            self.unplumb(&record).await;
            let _ = std::fs::remove_file(self.record_path(&record.id));
            return Err(e);
        }
        let net = Arc::new(UserNetwork::new(record)?);
        if let Ok(mut m) = self.nets.lock() {
            m.insert(net.record.id.clone(), net.clone());
        }
        tracing::info!(network = %net.record.name, subnet = %net.subnet, bridge = %net.record.bridge, "network created");
        Ok(net)
    }

    /// Removes a network (the caller has checked it has no endpoints): its
    /// rules, its bridge, then its record.
    pub async fn remove(&self, id: &str) -> Result<()> {
        let _changes = self.changes.lock().await;
        let Some(net) = self.get(id) else {
            return Err(UserNetworkError::NotFound(id.to_string()));
        };
        self.unplumb(&net.record).await;
        let path = self.record_path(id);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &path)(e)),
        }
        if let Ok(mut m) = self.nets.lock() {
            m.remove(id);
        }
        tracing::info!(network = %net.record.name, "network removed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_and_overlap() {
        let s = Subnet::parse("10.88.5.0/24").unwrap();
        assert!(s.contains("10.88.5.77".parse().unwrap()));
        assert!(!s.contains("10.88.6.1".parse().unwrap()));
        assert!(s.overlaps(&Subnet::parse("10.88.0.0/16").unwrap()));
        assert!(!s.overlaps(&Subnet::parse("10.88.6.0/24").unwrap()));
        for bad in [
            "10.88.5.1/24",
            "10.88.5.0",
            "10.88.5.0/33",
            "x/24",
            "10.0.0.0/4",
        ] {
            assert!(Subnet::parse(bad).is_err(), "{bad}");
        }
        let pool = Subnet {
            addr: POOL.0,
            prefix: POOL.1,
        };
        for taken in [
            "10.87.0.0/16",
            "172.17.0.0/16",
            "10.199.0.0/16",
            "10.200.0.0/13",
        ] {
            assert!(!pool.overlaps(&Subnet::parse(taken).unwrap()), "{taken}");
        }
    }

    #[test]
    fn ipam_never_hands_out_an_address_twice() {
        let net = UserNetwork::new(NetworkRecord {
            id: "x".into(),
            name: "n".into(),
            created: String::new(),
            driver: "bridge".into(),
            subnet: "10.88.9.0/29".into(),
            gateway: "10.88.9.1".parse().unwrap(),
            internal: false,
            labels: BTreeMap::new(),
            bridge: "fl-x".into(),
        })
        .unwrap();
        let got: Vec<Ipv4Addr> = (0..5).map(|_| net.allocate(None).unwrap()).collect();
        assert_eq!(got[0], "10.88.9.2".parse::<Ipv4Addr>().unwrap());
        assert_eq!(got[4], "10.88.9.6".parse::<Ipv4Addr>().unwrap());
        assert!(net.allocate(None).is_err(), "the /29 is full");
        net.release(got[2]);
        assert_eq!(net.allocate(None).unwrap(), got[2]);
        net.release(got[1]);
        assert!(net.allocate(Some(got[0])).is_err(), "taken");
        assert!(
            net.allocate(Some("10.88.9.1".parse().unwrap())).is_err(),
            "gateway"
        );
        assert!(
            net.allocate(Some("10.88.10.1".parse().unwrap())).is_err(),
            "outside"
        );
        assert_eq!(net.allocate(Some(got[1])).unwrap(), got[1]);
    }
}

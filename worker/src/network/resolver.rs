//! The embedded DNS server of user-defined networks, at 127.0.0.11:53 (UDP
//! and TCP) inside each container that is on one.
//!
//! The sockets are opened *inside* the container's network namespace by a
//! short-lived thread that `setns`es into `/proc/<pid>/ns/net` (a socket
//! stays in the namespace it was created in), then served from the daemon's
//! tokio runtime: no process runs in the container for it. Names come from
//! the [`NameTable`] the engine keeps current as containers start, stop,
//! connect, disconnect and are renamed; a container sees the names, short
//! IDs and aliases of the containers that share a user network with it.
//! Anything else is forwarded — from the container's namespace, so its
//! routes apply, or from the host's for loopback upstreams (a `--dns
//! 127.x.y.z` the container could not reach itself, as Docker does) — to at
//! most three upstreams in turn; SERVFAIL when none answers.
//!
//! A container's server is stopped when it exits: the sockets hold a
//! reference to the namespace, and must not keep it (and its veths) alive.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::dns::{self, ParseError, Query};

/// Where containers find the server.
pub const RESOLVER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

/// How long one upstream may take to answer.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(3);
/// At most this many upstreams are tried for one query.
const MAX_UPSTREAMS: usize = 3;
/// Forwarded queries in flight per container; more are answered SERVFAIL.
const MAX_IN_FLIGHT: usize = 64;
/// A TCP client idle this long is disconnected.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What the resolver knows of one running container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameEntry {
    /// Full container ID.
    pub id: String,
    pub name: String,
    /// Its user-network endpoints: (network ID, address, aliases).
    pub endpoints: Vec<(String, Ipv4Addr, Vec<String>)>,
    /// Where its other queries go.
    pub upstreams: Vec<IpAddr>,
}

/// What a query resolves to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// A name of a container on a shared network (possibly no A record for
    /// the asked type).
    Addresses(Vec<Ipv4Addr>),
    /// The names of a container address on a shared network.
    Names(Vec<String>),
    /// Not ours: ask the upstreams.
    Forward,
}

/// The names of containers on user-defined networks.
#[derive(Default)]
pub struct NameTable {
    entries: RwLock<HashMap<String, NameEntry>>,
    /// Network ID → name, for `container.network` names.
    networks: RwLock<HashMap<String, String>>,
}

impl NameTable {
    /// Adds or replaces a container's entry.
    pub fn set(&self, entry: NameEntry) {
        if let Ok(mut m) = self.entries.write() {
            m.insert(entry.id.clone(), entry);
        }
    }

    /// Forgets a container.
    pub fn remove(&self, id: &str) {
        if let Ok(mut m) = self.entries.write() {
            m.remove(id);
        }
    }

    /// Records a network's name (or forgets it with `None`).
    pub fn set_network(&self, id: &str, name: Option<&str>) {
        if let Ok(mut m) = self.networks.write() {
            match name {
                Some(n) => m.insert(id.to_string(), n.to_ascii_lowercase()),
                None => m.remove(id),
            };
        }
    }

    /// The upstream resolvers of container `asker`.
    pub fn upstreams(&self, asker: &str) -> Vec<IpAddr> {
        self.entries
            .read()
            .ok()
            .and_then(|m| m.get(asker).map(|e| e.upstreams.clone()))
            .unwrap_or_default()
    }

    /// Resolves `q` as container `asker` sees it.
    pub fn lookup(&self, asker: &str, q: &Query) -> Lookup {
        if q.qclass != dns::CLASS_IN || q.name.is_empty() {
            return Lookup::Forward;
        }
        let Ok(entries) = self.entries.read() else {
            return Lookup::Forward;
        };
        let Some(me) = entries.get(asker) else {
            return Lookup::Forward;
        };
        let shared: Vec<&String> = me.endpoints.iter().map(|(n, _, _)| n).collect();
        if q.qtype == dns::TYPE_PTR {
            let Some(ip) = dns::reverse_v4(&q.name) else {
                return Lookup::Forward;
            };
            let networks = self.networks.read().ok();
            let mut names = Vec::new();
            for e in entries.values() {
                for (net, addr, _) in &e.endpoints {
                    if *addr == ip && shared.contains(&net) {
                        let suffix = networks
                            .as_ref()
                            .and_then(|m| m.get(net).cloned())
                            .unwrap_or_default();
                        names.push(if suffix.is_empty() {
                            e.name.clone()
                        } else {
                            format!("{}.{suffix}", e.name)
                        });
                    }
                }
            }
            return if names.is_empty() {
                Lookup::Forward
            } else {
                Lookup::Names(names)
            };
        }
        // `name` on any shared network, or `name.network` on that one.
        let mut wanted: Vec<(&str, Option<&String>)> = vec![(q.name.as_str(), None)];
        if let Ok(networks) = self.networks.read() {
            for net in &shared {
                if let Some(netname) = networks.get(*net) {
                    if let Some(host) = q.name.strip_suffix(netname.as_str()) {
                        if let Some(host) = host.strip_suffix('.') {
                            wanted.push((host, Some(*net)));
                        }
                    }
                }
            }
        }
        let mut found = Vec::new();
        for e in entries.values() {
            for (net, addr, aliases) in &e.endpoints {
                if !shared.contains(&net) {
                    continue;
                }
                let matches = wanted.iter().any(|(n, only)| {
                    only.is_none_or(|o| o == net)
                        && (e.name.eq_ignore_ascii_case(n)
                            || (n.len() == 12 && e.id.starts_with(n))
                            || e.id == *n
                            || aliases.iter().any(|a| a.eq_ignore_ascii_case(n)))
                });
                if matches && !found.contains(addr) {
                    found.push(*addr);
                }
            }
        }
        if found.is_empty() {
            Lookup::Forward
        } else {
            Lookup::Addresses(found)
        }
    }
}

/// One container's server: its tasks end when it is dropped.
struct Server {
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The embedded DNS servers of every container on a user network.
pub struct Resolver {
    table: Arc<NameTable>,
    servers: Mutex<HashMap<String, Server>>,
}

/// Runs `f` on a new thread inside the network namespace `ns`.
async fn in_netns<T: Send + 'static>(
    ns: Arc<File>,
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("flotilla-netns".into())
        .spawn(move || {
            let result = nix::sched::setns(&*ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(io::Error::from)
                .and_then(|()| f());
            let _ = tx.send(result);
        })?;
    rx.await
        .map_err(|_| io::Error::other("the namespace thread ended without an answer"))?
}

impl Resolver {
    /// A resolver with an empty name table.
    pub fn new() -> Arc<Resolver> {
        Arc::new(Resolver {
            table: Arc::new(NameTable::default()),
            servers: Mutex::new(HashMap::new()),
        })
    }

    /// The names it answers from.
    pub fn table(&self) -> &NameTable {
        &self.table
    }

    /// Whether container `id` has a server.
    pub fn serving(&self, id: &str) -> bool {
        self.servers
            .lock()
            .map(|m| m.contains_key(id))
            .unwrap_or(false)
    }

    /// Stops container `id`'s server (closing its sockets).
    pub fn stop(&self, id: &str) {
        let server = self.servers.lock().ok().and_then(|mut m| m.remove(id));
        drop(server);
    }

    /// Opens 127.0.0.11:53 (UDP and TCP) in the network namespace of process
    /// `pid` and serves it for container `id`. A no-op if it is served.
    pub async fn serve(&self, id: &str, pid: i32) -> io::Result<()> {
        if self.serving(id) {
            return Ok(());
        }
        let ns = Arc::new(File::open(format!("/proc/{pid}/ns/net"))?);
        // A sandbox made just now may not have brought its loopback up yet
        // (the shim reports ready before its child has): wait for it.
        let mut tries = 0;
        let (udp, tcp) = loop {
            let bound = in_netns(ns.clone(), || {
                let addr = SocketAddr::from((RESOLVER_IP, 53));
                let udp = std::net::UdpSocket::bind(addr)?;
                udp.set_nonblocking(true)?;
                let tcp = std::net::TcpListener::bind(addr)?;
                tcp.set_nonblocking(true)?;
                Ok((udp, tcp))
            })
            .await;
            match bound {
                Err(e) if e.kind() == io::ErrorKind::AddrNotAvailable && tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                other => break other?,
            }
        };
        let udp = Arc::new(tokio::net::UdpSocket::from_std(udp)?);
        let tcp = tokio::net::TcpListener::from_std(tcp)?;
        let ctx = Arc::new(Ctx {
            table: self.table.clone(),
            id: id.to_string(),
            ns,
            in_flight: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
        });
        let udp_task = tokio::spawn(serve_udp(ctx.clone(), udp));
        let tcp_task = tokio::spawn(serve_tcp(ctx, tcp));
        let server = Server {
            tasks: vec![udp_task, tcp_task],
        };
        if let Ok(mut m) = self.servers.lock() {
            m.insert(id.to_string(), server);
        }
        Ok(())
    }
}

/// What a container's server tasks share.
struct Ctx {
    table: Arc<NameTable>,
    /// The container.
    id: String,
    /// Its network namespace (forwarded queries leave from there).
    ns: Arc<File>,
    in_flight: Arc<tokio::sync::Semaphore>,
}

async fn serve_udp(ctx: Arc<Ctx>, sock: Arc<tokio::net::UdpSocket>) {
    let mut buf = vec![0u8; 65535];
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let packet = buf[..n].to_vec();
        let (ctx, sock) = (ctx.clone(), sock.clone());
        tokio::spawn(async move {
            if let Some(reply) = resolve(&ctx, &packet, false).await {
                let _ = sock.send_to(&reply, from).await;
            }
        });
    }
}

async fn serve_tcp(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) {
    loop {
        let Ok((mut stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            loop {
                let Ok(Ok(len)) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
                    return;
                };
                let mut packet = vec![0u8; len as usize];
                if !matches!(
                    tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut packet)).await,
                    Ok(Ok(_))
                ) {
                    return;
                }
                let Some(reply) = resolve(&ctx, &packet, true).await else {
                    continue;
                };
                let Ok(len) = u16::try_from(reply.len()) else {
                    return;
                };
                let mut framed = len.to_be_bytes().to_vec();
                framed.extend_from_slice(&reply);
                if stream.write_all(&framed).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// The reply to one packet, or None when it deserves none.
async fn resolve(ctx: &Ctx, packet: &[u8], tcp: bool) -> Option<Vec<u8>> {
    let q = match dns::parse_query(packet) {
        Ok(q) => q,
        Err(ParseError::Refuse(code)) => return dns::error_reply(packet, code),
        Err(_) => return None,
    };
    match ctx.table.lookup(&ctx.id, &q) {
        Lookup::Addresses(ips) => Some(dns::answer_a(&q, packet, &ips)),
        Lookup::Names(names) => Some(dns::answer_ptr(&q, packet, &names)),
        Lookup::Forward => {
            let Ok(_permit) = ctx.in_flight.clone().try_acquire_owned() else {
                return dns::error_reply(packet, dns::RCODE_SERVFAIL);
            };
            for up in ctx.table.upstreams(&ctx.id).into_iter().take(MAX_UPSTREAMS) {
                let answer = if tcp {
                    forward_tcp(&ctx.ns, up, packet).await
                } else {
                    forward_udp(&ctx.ns, up, packet).await
                };
                match answer {
                    Ok(reply) => return Some(reply),
                    Err(e) => {
                        tracing::debug!(container = %ctx.id, upstream = %up, "DNS forward failed: {e}")
                    }
                }
            }
            dns::error_reply(packet, dns::RCODE_SERVFAIL)
        }
    }
}

fn unspecified(up: IpAddr) -> SocketAddr {
    match up {
        IpAddr::V4(_) => SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        IpAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// A UDP socket for talking to `up`: in the host's namespace for loopback
/// upstreams, in the container's otherwise.
async fn udp_socket(ns: &Arc<File>, up: IpAddr) -> io::Result<tokio::net::UdpSocket> {
    let bind = unspecified(up);
    let sock = if up.is_loopback() {
        std::net::UdpSocket::bind(bind)?
    } else {
        in_netns(ns.clone(), move || std::net::UdpSocket::bind(bind)).await?
    };
    sock.set_nonblocking(true)?;
    tokio::net::UdpSocket::from_std(sock)
}

async fn forward_udp(ns: &Arc<File>, up: IpAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let sock = udp_socket(ns, up).await?;
    sock.connect((up, 53)).await?;
    sock.send(packet).await?;
    let want = dns::id(packet);
    let mut buf = vec![0u8; 65535];
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        loop {
            let n = sock.recv(&mut buf).await?;
            if dns::id(&buf[..n]) == want {
                return Ok(buf[..n].to_vec());
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

async fn forward_tcp(ns: &Arc<File>, up: IpAddr, packet: &[u8]) -> io::Result<Vec<u8>> {
    let addr = SocketAddr::from((up, 53));
    let mut stream = if up.is_loopback() {
        tokio::time::timeout(FORWARD_TIMEOUT, tokio::net::TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??
    } else {
        let s = in_netns(ns.clone(), move || {
            let s = std::net::TcpStream::connect_timeout(&addr, FORWARD_TIMEOUT)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .await?;
        tokio::net::TcpStream::from_std(s)?
    };
    let len = u16::try_from(packet.len()).map_err(|_| io::Error::other("query too long"))?;
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        let mut framed = len.to_be_bytes().to_vec();
        framed.extend_from_slice(packet);
        stream.write_all(&framed).await?;
        let n = stream.read_u16().await?;
        let mut reply = vec![0u8; n as usize];
        stream.read_exact(&mut reply).await?;
        Ok(reply)
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no answer"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str, t: u16) -> Query {
        dns::parse_query(&dns::build_query(1, name, t).unwrap()).unwrap()
    }

    #[test]
    fn names_resolve_only_on_shared_networks() {
        let t = NameTable::default();
        t.set_network("n1", Some("front"));
        t.set_network("n2", Some("back"));
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        t.set(NameEntry {
            id: "aaaaaaaaaaaa1111".into(),
            name: "web".into(),
            endpoints: vec![("n1".into(), ip("10.88.1.2"), vec!["www".into()])],
            upstreams: vec![],
        });
        t.set(NameEntry {
            id: "bbbbbbbbbbbb2222".into(),
            name: "client".into(),
            endpoints: vec![("n1".into(), ip("10.88.1.3"), vec![])],
            upstreams: vec!["10.0.0.53".parse().unwrap()],
        });
        t.set(NameEntry {
            id: "cccccccccccc3333".into(),
            name: "stranger".into(),
            endpoints: vec![("n2".into(), ip("10.88.2.2"), vec![])],
            upstreams: vec![],
        });
        let me = "bbbbbbbbbbbb2222";
        let web = Lookup::Addresses(vec![ip("10.88.1.2")]);
        assert_eq!(t.lookup(me, &q("web", dns::TYPE_A)), web);
        assert_eq!(t.lookup(me, &q("WWW", dns::TYPE_A)), web);
        assert_eq!(t.lookup(me, &q("aaaaaaaaaaaa", dns::TYPE_A)), web);
        assert_eq!(t.lookup(me, &q("web.front", dns::TYPE_A)), web);
        assert_eq!(t.lookup(me, &q("web", 28)), web, "AAAA: known, no record");
        assert_eq!(t.lookup(me, &q("stranger", dns::TYPE_A)), Lookup::Forward);
        assert_eq!(t.lookup(me, &q("web.back", dns::TYPE_A)), Lookup::Forward);
        assert_eq!(t.lookup("cccccccccccc3333", &q("web", 1)), Lookup::Forward);
        assert_eq!(t.lookup("unknown", &q("web", 1)), Lookup::Forward);
        assert_eq!(
            t.lookup(me, &q("2.1.88.10.in-addr.arpa", dns::TYPE_PTR)),
            Lookup::Names(vec!["web.front".into()])
        );
        assert_eq!(
            t.lookup(me, &q("2.2.88.10.in-addr.arpa", dns::TYPE_PTR)),
            Lookup::Forward
        );
        assert_eq!(
            t.upstreams(me),
            vec!["10.0.0.53".parse::<IpAddr>().unwrap()]
        );
        t.remove("aaaaaaaaaaaa1111");
        assert_eq!(t.lookup(me, &q("web", 1)), Lookup::Forward);
    }
}

//! User-defined bridge networks and their embedded DNS server. Each test's daemon has its own
//! default bridge (the harness picks it); networks the tests create get subnets from the
//! daemon's pool or from this process's own test range (`10.<200+pid%50>.24x.0/24`), and are
//! removed with the daemon (the harness deletes their bridges even when a test fails).
//!
//! DNS: every container that could ask for a name the embedded server does not know gets
//! `--dns` pointing at a responder this test runs on a 127.x address, so no query ever reaches
//! the host's resolvers. "Outside" is a network namespace the test makes, with addresses it
//! assigns; nothing here talks to any other address.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cluster_tests::{busybox_image, poll_for, Daemon};

const T: Duration = Duration::from_secs(20);

fn sh(args: &[&str]) -> std::process::Output {
    Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn sh_ok(args: &[&str]) -> String {
    let out = sh(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

static NEXT: AtomicU32 = AtomicU32::new(1);

/// A subnet of this test process's own range: `10.<200+pid%50>.<240+k>.0/24`.
fn test_subnet() -> (String, String) {
    let k = NEXT.fetch_add(1, Ordering::SeqCst) % 15;
    let b = 200 + std::process::id() % 50;
    (
        format!("10.{b}.{}.0/24", 240 + k),
        format!("10.{b}.{}", 240 + k),
    )
}

/// A DNS responder on `127.88.<pid%250>.<n>:53`: answers the names in `answers` with their A
/// record, NXDOMAIN for everything else, and records every name it was asked.
struct Responder {
    ip: Ipv4Addr,
    asked: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// The lower-case name of a query's question, and where the question ends.
fn question(p: &[u8]) -> Option<(String, usize)> {
    let mut at = 12;
    let mut labels = Vec::new();
    loop {
        let len = *p.get(at)? as usize;
        at += 1;
        if len == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(p.get(at..at + len)?).to_ascii_lowercase());
        at += len;
    }
    p.get(at + 3)?;
    Some((labels.join("."), at + 4))
}

impl Responder {
    fn start(answers: &[(&str, Ipv4Addr)]) -> Responder {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % 250 + 1;
        let ip = Ipv4Addr::new(127, 88, (std::process::id() % 250) as u8, n as u8);
        let sock = UdpSocket::bind(SocketAddr::from((ip, 53))).expect("bind the test responder");
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let answers: Vec<(String, Ipv4Addr)> =
            answers.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (asked2, stop2) = (asked.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop2.load(Ordering::SeqCst) {
                let Ok((len, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let p = &buf[..len];
                let Some((name, end)) = question(p) else {
                    continue;
                };
                asked2.lock().unwrap().push(name.clone());
                let qtype = u16::from_be_bytes([p[end - 4], p[end - 3]]);
                let hit = answers.iter().find(|(n, _)| *n == name).map(|(_, a)| *a);
                let mut r = p[..end].to_vec();
                r[2] = 0x81; // QR, RD
                r[3] = if hit.is_some() { 0x80 } else { 0x83 }; // RA, NOERROR / NXDOMAIN
                r[6..12].copy_from_slice(&[0, 0, 0, 0, 0, 0]);
                if let (Some(a), 1) = (hit, qtype) {
                    r[7] = 1;
                    r.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
                    r.extend_from_slice(&a.octets());
                }
                let _ = sock.send_to(&r, from);
            }
        });
        Responder {
            ip,
            asked,
            stop,
            thread: Some(thread),
        }
    }

    fn addr(&self) -> String {
        self.ip.to_string()
    }

    fn asked(&self) -> Vec<String> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A network namespace outside the host, joined to it by a veth pair: `10.198.X.2/30` inside,
/// `10.198.X.1` on the host, with a TCP server on port 8080 inside that answers
/// `outside-ok`.
struct Outside {
    ns: String,
    host_if: String,
    addr: String,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Outside {
    fn new() -> Outside {
        let n = NEXT.fetch_add(1, Ordering::SeqCst) % 60;
        let id = format!("{:x}{n}", std::process::id() % 0xfff);
        let host = format!("10.198.{}.{}", std::process::id() % 250, n * 4 + 1);
        let inside = format!("10.198.{}.{}", std::process::id() % 250, n * 4 + 2);
        let ns = format!("fltout-{id}");
        let host_if = format!("fou{id}");
        sh_ok(&["ip", "netns", "add", &ns]);
        let out = Outside {
            ns: ns.clone(),
            host_if: host_if.clone(),
            addr: inside.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            thread: None,
        };
        sh_ok(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh_ok(&["ip", "addr", "add", &format!("{host}/30"), "dev", &host_if]);
        sh_ok(&["ip", "link", "set", &host_if, "up"]);
        sh_ok(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{inside}/30"),
            "dev",
            "eth0",
        ]);
        sh_ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let mut out = out;
        let path = format!("/var/run/netns/{ns}");
        let stop = out.stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        out.thread = Some(std::thread::spawn(move || {
            use std::io::Write;
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&path).expect("open the namespace");
            // SAFETY: setns on a valid fd, for this thread only.
            assert_eq!(unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) }, 0);
            let l = std::net::TcpListener::bind((inside.as_str(), 8080)).expect("bind outside");
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            while !stop.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.write_all(b"outside-ok\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }));
        rx.recv_timeout(T).expect("the outside server to listen");
        out
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

fn serve(d: &Daemon, img: &str, name: &str, extra: &[&str], text: &str) {
    let script =
        format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www");
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[img, "sh", "-c", &script]);
    d.ok(&args);
}

fn sleeper(d: &Daemon, img: &str, name: &str, extra: &[&str]) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[img, "sleep", "1000"]);
    d.ok(&args);
}

/// The address of container `name` on network `net`.
fn ip_on(d: &Daemon, name: &str, net: &str) -> String {
    d.inspect(name)["NetworkSettings"]["Networks"][net]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// `nslookup NAME` in container `c`: the addresses it printed for the name (empty when not
/// found), and the output.
fn lookup(d: &Daemon, c: &str, name: &str) -> (Vec<String>, String) {
    let (_, out, err) = d.run3(&["exec", c, "busybox", "nslookup", "-type=a", name]);
    let text = format!("{out}{err}");
    let after = text.split_once(&format!("Name:\t{name}")).map(|x| x.1);
    let addrs = after
        .unwrap_or("")
        .lines()
        .filter_map(|l| l.strip_prefix("Address: "))
        .map(|a| a.trim().to_string())
        .collect();
    (addrs, text)
}

fn http(d: &Daemon, c: &str, target: &str) -> (i32, String) {
    let (code, out, err) = d.run3(&[
        "exec",
        c,
        "sh",
        "-c",
        &format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {target} 80"),
    ]);
    (code, format!("{out}{err}"))
}

/// A plain HTTP/1.0 `GET /` from the host.
fn host_get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let sock: SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut body = String::new();
    s.read_to_string(&mut body).map_err(|e| e.to_string())?;
    Ok(body)
}

fn network_json(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.ok(&["network", "inspect", name]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("network inspect is JSON");
    v[0].clone()
}

#[test]
fn containers_resolve_each_other_by_name_and_alias_and_other_networks_cannot_reach_them() {
    let d = Daemon::start();
    let img = busybox_image(&d, "unet");
    let dns = Responder::start(&[]);
    let dns_flag = ["--dns", &dns.addr()];
    d.ok(&["network", "create", "front"]);
    let (back, _) = test_subnet();
    d.ok(&["network", "create", "--subnet", &back, "back"]);
    let ls = d.ok(&["network", "ls"]);
    assert!(ls.starts_with("NETWORK ID"), "{ls}");
    for name in ["bridge", "host", "none", "front", "back"] {
        assert!(
            ls.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(name)),
            "{name} listed:\n{ls}"
        );
    }
    let rows: Vec<serde_json::Value> = d
        .ok(&["network", "ls", "--format", "json"])
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(rows
        .iter()
        .any(|r| r["Name"] == "front" && r["Driver"] == "bridge"));

    let mut web_flags = vec!["--network", "front", "--network-alias", "www"];
    web_flags.extend_from_slice(&dns_flag);
    serve(&d, &img, "web", &web_flags, "hello-user-net");
    let mut client_flags = vec!["--network", "front"];
    client_flags.extend_from_slice(&dns_flag);
    sleeper(&d, &img, "client", &client_flags);
    let mut stranger_flags = vec!["--network", "back"];
    stranger_flags.extend_from_slice(&dns_flag);
    sleeper(&d, &img, "stranger", &stranger_flags);

    let web_ip = ip_on(&d, "web", "front");
    let client_ip = ip_on(&d, "client", "front");
    assert!(
        !web_ip.is_empty() && web_ip != client_ip,
        "{web_ip} {client_ip}"
    );
    let resolv = d.ok(&["exec", "client", "cat", "/etc/resolv.conf"]);
    assert!(
        resolv.lines().any(|l| l == "nameserver 127.0.0.11"),
        "{resolv}"
    );
    let web_id = d.inspect("web")["Id"].as_str().unwrap().to_string();
    for name in ["web", "www", &web_id[..12]] {
        let (addrs, out) = lookup(&d, "client", name);
        assert_eq!(addrs, vec![web_ip.clone()], "{name}: {out}");
    }
    let (addrs, out) = lookup(&d, "web", "client");
    assert_eq!(addrs, vec![client_ip.clone()], "{out}");
    poll_for(T, "client to fetch from web by name", || {
        let (code, out) = http(&d, "client", "web");
        if code == 0 && out.contains("hello-user-net") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let (code, out) = http(&d, "client", "www");
    assert!(
        code == 0 && out.contains("hello-user-net"),
        "by alias: {out}"
    );
    // `network inspect` lists both, Docker-style.
    let net = network_json(&d, "front");
    assert_eq!(net["Name"], "front");
    assert_eq!(net["Driver"], "bridge");
    assert_eq!(net["Internal"], false);
    let subnet = net["IPAM"]["Config"][0]["Subnet"].as_str().unwrap();
    assert!(
        subnet.starts_with("10.") && subnet.ends_with("/24"),
        "{net}"
    );
    let entry = &net["Containers"][&web_id];
    assert_eq!(entry["Name"], "web");
    assert_eq!(entry["IPv4Address"], format!("{web_ip}/24"));
    assert!(entry["MacAddress"].as_str().unwrap().starts_with("02:42:"));
    // Another network: the names are unknown (the query goes to the test's responder, which
    // says NXDOMAIN) and the address is unreachable.
    let (addrs, out) = lookup(&d, "stranger", "web");
    assert!(addrs.is_empty(), "{out}");
    assert!(dns.asked().iter().any(|n| n == "web"), "{:?}", dns.asked());
    let (_, out) = http(&d, "stranger", &web_ip);
    assert!(!out.contains("hello-user-net"), "crossed networks: {out}");
    // Nor can a container on the default bridge.
    sleeper(&d, &img, "classic", &[]);
    let (_, out) = http(&d, "classic", &web_ip);
    assert!(
        !out.contains("hello-user-net"),
        "default bridge reached it: {out}"
    );
}

#[test]
fn internal_networks_have_no_route_out_and_others_are_masqueraded() {
    let d = Daemon::start();
    let img = busybox_image(&d, "internal");
    let outside = Outside::new();
    d.ok(&["network", "create", "--internal", "sealed"]);
    d.ok(&["network", "create", "open"]);
    assert_eq!(network_json(&d, "sealed")["Internal"], true);
    let fetch = format!("nc -w 2 {} 8080", outside.addr);
    poll_for(
        T,
        "a container on a normal network to reach outside",
        || {
            let (code, out, err) =
                d.run3(&["run", "--rm", "--network", "open", &img, "sh", "-c", &fetch]);
            if code == 0 && out.contains("outside-ok") {
                Ok(())
            } else {
                Err(format!("{code} {out} {err}"))
            }
        },
    );
    // Published ports work on a user network, also from the host's loopback.
    let port = 21000 + (std::process::id() % 1000) as u16;
    serve(
        &d,
        &img,
        "published",
        &["--network", "open", "-p", &format!("{port}:80")],
        "published-on-user-net",
    );
    poll_for(T, "the published port on a user network", || {
        host_get(&format!("127.0.0.1:{port}")).and_then(|b| {
            if b.contains("published-on-user-net") {
                Ok(())
            } else {
                Err(b)
            }
        })
    });
    d.ok(&["rm", "-f", "published"]);
    assert!(
        host_get(&format!("127.0.0.1:{port}")).is_err(),
        "unpublished at rm"
    );
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "sealed",
        &img,
        "busybox",
        "route",
        "-n",
    ]);
    assert!(
        !out.lines().any(|l| l.starts_with("0.0.0.0")),
        "no default route on an internal network: {out}"
    );
    let (_, out, err) = d.run3(&[
        "run",
        "--rm",
        "--network",
        "sealed",
        &img,
        "sh",
        "-c",
        &fetch,
    ]);
    assert!(
        !out.contains("outside-ok"),
        "internal network got out: {out} {err}"
    );
    // Even with a route added by hand (NET_ADMIN), the daemon's rules drop it.
    let gw = network_json(&d, "sealed")["IPAM"]["Config"][0]["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, out, err) = d.run3(&[
        "run",
        "--rm",
        "--cap-add",
        "NET_ADMIN",
        "--network",
        "sealed",
        &img,
        "sh",
        "-c",
        &format!("busybox route add default gw {gw} && {fetch}"),
    ]);
    assert!(
        !out.contains("outside-ok"),
        "internal network got out: {out} {err}"
    );
}

#[test]
fn connect_and_disconnect_change_interfaces_and_names_live() {
    let d = Daemon::start();
    let img = busybox_image(&d, "connect");
    let dns = Responder::start(&[]);
    let (a_net, _) = test_subnet();
    d.ok(&["network", "create", "--subnet", &a_net, "alpha"]);
    d.ok(&["network", "create", "beta"]);
    serve(
        &d,
        &img,
        "server",
        &["--network", "alpha", "--dns", &dns.addr()],
        "via-connect",
    );
    sleeper(
        &d,
        &img,
        "roamer",
        &["--network", "beta", "--dns", &dns.addr()],
    );
    let server_ip = ip_on(&d, "server", "alpha");
    assert!(lookup(&d, "roamer", "server").0.is_empty());
    d.ok(&[
        "network", "connect", "--alias", "wanderer", "alpha", "roamer",
    ]);
    let dev = d.ok(&["exec", "roamer", "cat", "/proc/net/dev"]);
    assert!(dev.contains("eth1:"), "a second interface: {dev}");
    let roamer_ip = ip_on(&d, "roamer", "alpha");
    assert!(
        roamer_ip.starts_with(a_net.trim_end_matches(".0/24")),
        "{roamer_ip} in {a_net}"
    );
    assert_eq!(lookup(&d, "roamer", "server").0, vec![server_ip.clone()]);
    assert_eq!(lookup(&d, "server", "wanderer").0, vec![roamer_ip.clone()]);
    assert_eq!(lookup(&d, "server", "roamer").0, vec![roamer_ip.clone()]);
    poll_for(T, "the connected container to reach the server", || {
        let (code, out) = http(&d, "roamer", "server");
        if code == 0 && out.contains("via-connect") {
            Ok(())
        } else {
            Err(out)
        }
    });
    let err = d.fails(&["network", "connect", "alpha", "roamer"], 1);
    assert!(err.contains("already connected"), "{err}");
    d.ok(&["network", "disconnect", "alpha", "roamer"]);
    let dev = d.ok(&["exec", "roamer", "cat", "/proc/net/dev"]);
    assert!(!dev.contains("eth1:"), "eth1 removed: {dev}");
    assert!(lookup(&d, "roamer", "server").0.is_empty());
    assert!(lookup(&d, "server", "wanderer").0.is_empty());
    let net = network_json(&d, "alpha");
    assert_eq!(
        net["Containers"].as_object().map(|m| m.len()),
        Some(1),
        "{net}"
    );
    let err = d.fails(&["network", "disconnect", "alpha", "roamer"], 1);
    assert!(err.contains("not connected"), "{err}");
    // The freed address is handed out again.
    d.ok(&["network", "connect", "alpha", "roamer"]);
    assert_eq!(ip_on(&d, "roamer", "alpha"), roamer_ip);
}

/// Sends `query` over TCP to 127.0.0.11:53 inside the network namespace of process `pid`.
fn tcp_query_in(pid: i64, query: Vec<u8>) -> Result<Vec<u8>, String> {
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
        // SAFETY: setns on a valid fd, for this short-lived thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        // Garbage over UDP first: the server must survive it.
        let u = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        for junk in [&b""[..], b"\x00", &[0xff; 40], &[0u8; 12]] {
            let _ = u.send_to(junk, "127.0.0.11:53");
        }
        let mut s = std::net::TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 11], 53)),
            Duration::from_secs(3),
        )
        .map_err(|e| e.to_string())?;
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        s.write_all(&framed).map_err(|e| e.to_string())?;
        let mut len = [0u8; 2];
        s.read_exact(&mut len).map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; u16::from_be_bytes(len) as usize];
        s.read_exact(&mut reply).map_err(|e| e.to_string())?;
        Ok(reply)
    })
    .join()
    .unwrap_or_else(|_| Err("query thread panicked".into()))
}

/// The median time of `n` UDP queries for `name` to 127.0.0.11:53, sent from inside the
/// network namespace of process `pid`.
fn udp_latency_in(pid: i64, name: &str, n: u16) -> Result<Duration, String> {
    let name = name.to_string();
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let f = std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
        // SAFETY: setns on a valid fd, for this short-lived thread only.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(format!("setns: {}", std::io::Error::last_os_error()));
        }
        let u = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
        u.connect("127.0.0.11:53").map_err(|e| e.to_string())?;
        u.set_read_timeout(Some(Duration::from_secs(2)))
            .map_err(|e| e.to_string())?;
        let mut times = Vec::new();
        let mut buf = [0u8; 512];
        for i in 0..n {
            let t = std::time::Instant::now();
            u.send(&query(i, &name)).map_err(|e| e.to_string())?;
            loop {
                let len = u.recv(&mut buf).map_err(|e| e.to_string())?;
                if len >= 2 && u16::from_be_bytes([buf[0], buf[1]]) == i {
                    break;
                }
            }
            times.push(t.elapsed());
        }
        times.sort();
        Ok(times[times.len() / 2])
    })
    .join()
    .unwrap_or_else(|_| Err("query thread panicked".into()))
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = vec![(id >> 8) as u8, id as u8, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
    for l in name.split('.') {
        q.push(l.len() as u8);
        q.extend_from_slice(l.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

#[test]
fn other_names_are_forwarded_to_the_containers_dns_servers() {
    let d = Daemon::start();
    let img = busybox_image(&d, "fwd");
    // An answer only: nothing is ever sent to 192.0.2.55 (TEST-NET-1).
    let dns = Responder::start(&[("upstream.flotilla.test", Ipv4Addr::new(192, 0, 2, 55))]);
    d.ok(&["network", "create", "fwdnet"]);
    sleeper(
        &d,
        &img,
        "asker",
        &["--network", "fwdnet", "--dns", &dns.addr()],
    );
    let (addrs, out) = lookup(&d, "asker", "upstream.flotilla.test");
    assert_eq!(addrs, vec!["192.0.2.55".to_string()], "{out}");
    let (addrs, out) = lookup(&d, "asker", "missing.flotilla.test");
    assert!(addrs.is_empty(), "{out}");
    assert!(
        out.contains("NXDOMAIN") || out.contains("can't find"),
        "{out}"
    );
    assert!(dns.asked().iter().any(|n| n == "missing.flotilla.test"));
    // The container's own name is answered locally, never forwarded.
    let before = dns.asked().len();
    assert_eq!(lookup(&d, "asker", "asker").0.len(), 1);
    assert!(
        !dns.asked()[before..].iter().any(|n| n == "asker"),
        "{:?}",
        dns.asked()
    );
    // TCP, after malformed UDP packets.
    let asker_ip: Ipv4Addr = ip_on(&d, "asker", "fwdnet").parse().unwrap();
    let pid = d.inspect("asker")["State"]["Pid"].as_i64().unwrap();
    let reply = tcp_query_in(pid, query(0x4242, "asker")).expect("TCP answer");
    assert_eq!(&reply[..2], &[0x42, 0x42], "same ID");
    assert_eq!(reply[3] & 0xf, 0, "NOERROR");
    assert!(reply.ends_with(&asker_ip.octets()), "{reply:?}");
    let median = udp_latency_in(pid, "asker", 200).expect("UDP answers");
    eprintln!("embedded DNS: median UDP query latency from inside a container: {median:?}");
    assert!(median < Duration::from_millis(50), "{median:?}");
    // An upstream that does not answer: SERVFAIL, said honestly.
    let dead = Responder::start(&[]);
    let dead_addr = dead.addr();
    drop(dead);
    sleeper(
        &d,
        &img,
        "lonely",
        &["--network", "fwdnet", "--dns", &dead_addr],
    );
    let (addrs, out) = lookup(&d, "lonely", "upstream.flotilla.test");
    assert!(addrs.is_empty() && out.contains("SERVFAIL"), "{out}");
    // Names still resolve without any upstream.
    assert_eq!(lookup(&d, "lonely", "asker").0.len(), 1);
}

#[test]
fn bad_input_is_refused_with_one_clear_error_and_nothing_half_made() {
    let d = Daemon::start();
    let img = busybox_image(&d, "badnet");
    // Other tests create bridges concurrently: look only at addresses of the subnets tried here.
    let addresses_in = |subnet: &str| sh_ok(&["ip", "-o", "-4", "addr", "show", "to", subnet]);
    let (subnet, prefix) = test_subnet();
    d.ok(&[
        "network", "create", "--subnet", &subnet, "--label", "team=net", "used",
    ]);
    let used_bridge = network_json(&d, "used")["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap()
        .to_string();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["used".into()], "already exists"),
        (
            vec!["--subnet".into(), format!("{prefix}.128/25"), "x1".into()],
            "overlaps network used",
        ),
        (
            vec!["--subnet".into(), "10.300.0.0/24".into(), "x2".into()],
            "invalid subnet",
        ),
        (
            vec!["--subnet".into(), format!("{prefix}.5/24"), "x3".into()],
            "host bits",
        ),
        (
            vec![
                "--subnet".into(),
                "10.197.1.0/24".into(),
                "--gateway".into(),
                "10.197.2.1".into(),
                "x4".into(),
            ],
            "not a host address",
        ),
        (vec!["bridge".into()], "pre-defined"),
        (vec!["-d".into(), "overlay".into(), "x5".into()], "bridge"),
    ];
    for (args, want) in &cases {
        let mut full = vec!["network", "create"];
        full.extend(args.iter().map(String::as_str));
        let err = d.fails(&full, 1);
        assert!(err.contains(want), "{full:?}: want {want:?} in {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    }
    for tried in [format!("{prefix}.128/25"), "10.197.0.0/16".to_string()] {
        let left = addresses_in(&tried);
        assert!(left.trim().is_empty(), "a refused create left {left}");
    }
    let names: Vec<String> = d
        .ok(&["network", "ls", "--format", "{{.Name}}"])
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(names, vec!["bridge", "host", "none", "used"]);
    assert_eq!(network_json(&d, "used")["Labels"]["team"], "net");

    sleeper(&d, &img, "c1", &["--network", "used"]);
    sleeper(
        &d,
        &img,
        "c2",
        &["--network", "used", "--ip", &format!("{prefix}.77")],
    );
    assert_eq!(ip_on(&d, "c2", "used"), format!("{prefix}.77"));
    let err = d.fails(
        &[
            "run",
            "-d",
            "--network",
            "used",
            "--ip",
            &format!("{prefix}.77"),
            &img,
            "true",
        ],
        125,
    );
    assert!(err.contains("already in use"), "{err}");
    let err = d.fails(&["network", "rm", "used"], 1);
    assert!(
        err.contains("network used has active endpoints: c1, c2"),
        "{err}"
    );
    for predefined in ["bridge", "host", "none"] {
        let err = d.fails(&["network", "rm", predefined], 1);
        assert!(err.contains("pre-defined"), "{err}");
    }
    let err = d.fails(&["network", "rm", "ghostnet"], 1);
    assert!(err.contains("ghostnet not found"), "{err}");
    let err = d.fails(&["run", "--rm", "--network", "ghostnet", &img, "true"], 125);
    assert!(err.contains("network ghostnet not found"), "{err}");
    let err = d.fails(&["run", "--rm", "--network-alias", "x", &img, "true"], 125);
    assert!(err.contains("user-defined networks"), "{err}");
    let err = d.fails(&["network", "connect", "used", "c1"], 1);
    assert!(err.contains("already connected"), "{err}");
    let err = d.fails(&["network", "connect", "ghostnet", "c1"], 1);
    assert!(err.contains("not found"), "{err}");
    sleeper(&d, &img, "hosted", &["--network", "host"]);
    let err = d.fails(&["network", "connect", "used", "hosted"], 1);
    assert!(err.contains("--network host"), "{err}");
    // Stopped containers keep their configuration and do not block removal.
    d.ok(&["rm", "-f", "c1", "c2"]);
    d.ok(&["network", "rm", "used"]);
    assert!(
        !sh(&["ip", "link", "show", &used_bridge]).status.success(),
        "the bridge is gone"
    );
    d.ok(&["network", "create", "p1"]);
    d.ok(&["network", "create", "p2"]);
    let out = d.ok(&["network", "prune", "-f"]);
    assert!(out.contains("p1") && out.contains("p2"), "{out}");
    let names = d.ok(&["network", "ls", "--format", "{{.Name}}"]);
    assert_eq!(names, "bridge\nhost\nnone\n");
}

#[test]
fn networks_survive_kill9_and_leave_nothing_behind() {
    let mut d = Daemon::start();
    let img = busybox_image(&d, "crashnet");
    let dns = Responder::start(&[]);
    d.ok(&["network", "create", "durable"]);
    let bridge = network_json(&d, "durable")["Options"]["com.docker.network.bridge.name"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(bridge.starts_with("fl-") && bridge.len() <= 15, "{bridge}");
    serve(
        &d,
        &img,
        "keeper",
        &[
            "--network",
            "durable",
            "--network-alias",
            "db",
            "--dns",
            &dns.addr(),
        ],
        "survivor",
    );
    sleeper(
        &d,
        &img,
        "peer",
        &["--network", "durable", "--dns", &dns.addr()],
    );
    let keeper_ip = ip_on(&d, "keeper", "durable");
    let peer_ip = ip_on(&d, "peer", "durable");
    d.kill9();
    d.restart();
    let ls = d.ok(&["network", "ls"]);
    assert!(ls.contains("durable"), "{ls}");
    assert_eq!(lookup(&d, "peer", "db").0, vec![keeper_ip.clone()]);
    assert_eq!(lookup(&d, "keeper", "peer").0, vec![peer_ip.clone()]);
    poll_for(T, "peer to reach keeper after the restart", || {
        let (code, out) = http(&d, "peer", "keeper");
        if code == 0 && out.contains("survivor") {
            Ok(())
        } else {
            Err(out)
        }
    });
    // The IPAM was rebuilt: a newcomer gets a third address.
    sleeper(
        &d,
        &img,
        "newcomer",
        &["--network", "durable", "--dns", &dns.addr()],
    );
    let new_ip = ip_on(&d, "newcomer", "durable");
    assert!(new_ip != keeper_ip && new_ip != peer_ip, "{new_ip}");
    assert_eq!(lookup(&d, "newcomer", "keeper").0, vec![keeper_ip.clone()]);
    let veths = || sh_ok(&["ip", "-o", "link", "show", "master", &bridge]);
    assert_eq!(veths().lines().count(), 3, "{}", veths());
    // A container that ends while the daemon is down leaves nothing either, and its address
    // and name are free again after the restart.
    let pid = d.inspect("newcomer")["State"]["Pid"].as_i64().unwrap() as i32;
    d.kill9();
    // SAFETY: kill(2) of the container this test started, by its PID.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    d.restart();
    d.wait_status("newcomer", "exited", T);
    poll_for(T, "the dead container's veth to go", || {
        let v = veths();
        if v.lines().count() == 2 {
            Ok(())
        } else {
            Err(v)
        }
    });
    assert!(lookup(&d, "keeper", "newcomer").0.is_empty());
    sleeper(
        &d,
        &img,
        "latecomer",
        &["--network", "durable", "--dns", &dns.addr()],
    );
    assert_eq!(
        ip_on(&d, "latecomer", "durable"),
        new_ip,
        "the freed address"
    );
    d.ok(&["rm", "-f", "keeper", "peer", "newcomer", "latecomer"]);
    poll_for(T, "no veth left on the bridge", || {
        let v = veths();
        if v.trim().is_empty() {
            Ok(())
        } else {
            Err(v)
        }
    });
    d.ok(&["network", "rm", "durable"]);
    assert!(
        !sh(&["ip", "link", "show", &bridge]).status.success(),
        "bridge removed"
    );
    let table = format!("flotilla-{}", d.bridge().unwrap());
    let rules = sh_ok(&["nft", "list", "table", "ip", &table]);
    assert!(
        !rules.contains(&bridge),
        "no rule names the removed bridge:\n{rules}"
    );
    let records = std::fs::read_dir(d.data_root().join("networks"))
        .unwrap()
        .count();
    assert_eq!(records, 0, "no record left");
}

//! The default bridge network and published ports. Each test's daemon has a
//! bridge and subnet of its own (the harness picks them); an "outside" client
//! is a network namespace the test creates, joined to the host by a veth pair
//! with addresses the test assigns. Nothing here talks to any other address.

use std::process::Command;
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

/// A client namespace `ns` with address `10.199.N.2/30`, its host side `10.199.N.1`.
struct Client {
    ns: String,
    host_if: String,
    host_addr: String,
}

impl Client {
    fn new(tag: &str) -> Client {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let id = format!("{:x}{n}", std::process::id() % 0xfff);
        let ns = format!("fltcli-{tag}-{id}");
        let host_if = format!("fch{id}");
        let base = format!("10.199.{}", (std::process::id() % 60) * 4 + n);
        let client = Client {
            ns: ns.clone(),
            host_if: host_if.clone(),
            host_addr: format!("{base}.1"),
        };
        sh_ok(&["ip", "netns", "add", &ns]);
        sh_ok(&[
            "ip", "link", "add", &host_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh_ok(&[
            "ip",
            "addr",
            "add",
            &format!("{base}.1/30"),
            "dev",
            &host_if,
        ]);
        sh_ok(&["ip", "link", "set", &host_if, "up"]);
        sh_ok(&[
            "ip",
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{base}.2/30"),
            "dev",
            "eth0",
        ]);
        sh_ok(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh_ok(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        client
    }

    /// `GET /` of `addr` (ip:port) from inside the client namespace.
    fn get(&self, addr: &str) -> Result<String, String> {
        let ns = format!("/var/run/netns/{}", self.ns);
        let addr = addr.to_string();
        std::thread::spawn(move || {
            use std::os::fd::AsRawFd;
            let f = std::fs::File::open(&ns).map_err(|e| e.to_string())?;
            // SAFETY: setns on a valid fd, for this short-lived thread only.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(format!("setns: {}", std::io::Error::last_os_error()));
            }
            http_get(&addr)
        })
        .join()
        .unwrap_or_else(|_| Err("client thread panicked".into()))
    }
}

/// A plain HTTP/1.0 `GET /` (the host's static busybox wget crashes here).
fn http_get(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
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

impl Drop for Client {
    fn drop(&mut self) {
        let _ = sh(&["ip", "link", "del", &self.host_if]);
        let _ = sh(&["ip", "netns", "del", &self.ns]);
    }
}

fn host_get(addr: &str) -> Result<String, String> {
    http_get(addr)
}

/// A shell command that fetches `/` with busybox `nc` (busybox `wget` crashes
/// on this machine's static build).
fn nc_get(ip: &str, port: u16) -> String {
    format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {ip} {port}")
}

fn serve(d: &Daemon, img: &str, name: &str, extra: &[&str], text: &str) {
    let script =
        format!("mkdir -p /www && echo {text} > /www/index.html && exec httpd -f -p 80 -h /www");
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[img, "sh", "-c", &script]);
    d.ok(&args);
}

fn ip_of(d: &Daemon, name: &str) -> String {
    d.inspect(name)["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn nft_map(d: &Daemon) -> String {
    let table = format!("flotilla-{}", d.bridge().expect("bridge"));
    sh_ok(&["nft", "list", "map", "ip", &table, "ports"])
}

#[test]
fn bridged_containers_get_addresses_and_reach_each_other() {
    let d = Daemon::start();
    let img = busybox_image(&d, "br");
    serve(&d, &img, "web", &[], "hello-bridge");
    d.ok(&["run", "-d", "--name", "other", &img, "sleep", "100"]);
    let (a, b) = (ip_of(&d, "web"), ip_of(&d, "other"));
    assert!(!a.is_empty() && !b.is_empty() && a != b, "{a} {b}");
    let gateway = d.inspect("web")["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let prefix = gateway.rsplit_once('.').unwrap().0.to_string();
    assert!(
        a.starts_with(&prefix),
        "{a} in the daemon's subnet ({gateway})"
    );
    let routes = d.ok(&["exec", "other", "busybox", "route", "-n"]);
    assert!(
        routes
            .lines()
            .any(|l| l.starts_with("0.0.0.0") && l.contains(&gateway)),
        "a default route via the gateway: {routes}"
    );
    let mac = d.inspect("web")["NetworkSettings"]["MacAddress"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(mac.starts_with("02:42:"), "{mac}");
    poll_for(T, "the other container to reach web", || {
        let (code, out, err) = d.run3(&["exec", "other", "sh", "-c", &nc_get(&a, 80)]);
        if code == 0 && out.contains("hello-bridge") {
            Ok(())
        } else {
            Err(err)
        }
    });
    let hosts = d.ok(&["exec", "web", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains(&a),
        "/etc/hosts names the container's address: {hosts}"
    );
}

#[test]
fn published_port_from_outside_from_the_host_and_from_a_container() {
    let d = Daemon::start();
    let img = busybox_image(&d, "pub");
    let client = Client::new("pub");
    let port = 18000 + (std::process::id() % 1000) as u16;
    serve(
        &d,
        &img,
        "web",
        &["-p", &format!("{port}:80")],
        "published-ok",
    );
    assert_eq!(
        d.ok(&["port", "web"]).trim(),
        format!("80/tcp -> 0.0.0.0:{port}")
    );
    assert!(d.ok(&["ps"]).contains(&format!("0.0.0.0:{port}->80/tcp")));
    let outside = format!("{}:{port}", client.host_addr);
    poll_for(T, "the published port from the outside namespace", || {
        client.get(&outside).and_then(|b| {
            if b.contains("published-ok") {
                Ok(())
            } else {
                Err(b)
            }
        })
    });
    // From the host itself, through loopback (hairpin).
    let local = host_get(&format!("127.0.0.1:{port}")).expect("hairpin via 127.0.0.1");
    assert!(local.contains("published-ok"), "{local}");
    // From another container, through the host's address.
    d.ok(&["run", "-d", "--name", "peer", &img, "sleep", "100"]);
    let gateway = d.inspect("web")["NetworkSettings"]["Gateway"]
        .as_str()
        .unwrap()
        .to_string();
    let via_host = d.ok(&["exec", "peer", "sh", "-c", &nc_get(&gateway, port)]);
    assert!(via_host.contains("published-ok"), "{via_host}");
    // Removing the container removes its rule, its veth and its address.
    let veth_before = sh_ok(&["ip", "-o", "link", "show", "master", &d.bridge().unwrap()]);
    assert!(veth_before.lines().count() >= 2, "{veth_before}");
    assert!(nft_map(&d).contains(&port.to_string()));
    d.ok(&["rm", "-f", "web"]);
    assert!(!nft_map(&d).contains(&port.to_string()), "{}", nft_map(&d));
    assert!(client.get(&outside).is_err(), "nothing answers after rm");
}

#[test]
fn publish_all_and_ephemeral_ports() {
    let d = Daemon::start();
    let img = busybox_image(&d, "pall");
    serve(&d, &img, "web", &["--expose", "80", "-P"], "ephemeral-ok");
    let line = d.ok(&["port", "web"]);
    let port: u16 = line
        .trim()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a host port: {line}"));
    assert!(port >= 32768, "{line}");
    poll_for(T, "the ephemeral port from the host", || {
        host_get(&format!("127.0.0.1:{port}")).and_then(|b| {
            if b.contains("ephemeral-ok") {
                Ok(())
            } else {
                Err(b)
            }
        })
    });
}

#[test]
fn a_taken_host_port_is_refused_and_nothing_is_left_configured() {
    let d = Daemon::start();
    let img = busybox_image(&d, "taken");
    let port = 19000 + (std::process::id() % 1000) as u16;
    serve(&d, &img, "first", &["-p", &format!("{port}:80")], "first");
    let before = nft_map(&d);
    let err = d.fails(
        &[
            "run",
            "-d",
            "--name",
            "second",
            "-p",
            &format!("{port}:80"),
            &img,
            "sleep",
            "10",
        ],
        125,
    );
    assert!(
        err.contains("already published") || err.contains(&port.to_string()),
        "{err}"
    );
    assert_eq!(
        nft_map(&d),
        before,
        "no rule added for the refused container"
    );
    assert_eq!(d.inspect("second")["State"]["Status"], "created");
    assert!(d.inspect("second")["NetworkSettings"]["IPAddress"]
        .as_str()
        .unwrap_or("")
        .is_empty());
}

#[test]
fn ports_survive_a_daemon_crash_and_are_removed_after_it() {
    let mut d = Daemon::start();
    let img = busybox_image(&d, "crashnet");
    let port = 20000 + (std::process::id() % 1000) as u16;
    serve(
        &d,
        &img,
        "web",
        &["-p", &format!("{port}:80")],
        "still-here",
    );
    poll_for(T, "the published port", || {
        host_get(&format!("127.0.0.1:{port}")).and_then(|b| {
            if b.contains("still-here") {
                Ok(())
            } else {
                Err(b)
            }
        })
    });
    let ip = ip_of(&d, "web");
    d.kill9();
    d.restart();
    poll_for(T, "the published port after the restart", || {
        host_get(&format!("127.0.0.1:{port}")).and_then(|b| {
            if b.contains("still-here") {
                Ok(())
            } else {
                Err(b)
            }
        })
    });
    assert_eq!(ip_of(&d, "web"), ip, "the address is kept");
    // A new container does not get the address in use.
    d.ok(&["run", "-d", "--name", "newcomer", &img, "sleep", "100"]);
    assert_ne!(ip_of(&d, "newcomer"), ip);
    d.ok(&["rm", "-f", "web"]);
    assert!(!nft_map(&d).contains(&port.to_string()), "{}", nft_map(&d));
}

#[test]
fn ports_need_the_bridge_network() {
    let d = Daemon::start();
    let img = busybox_image(&d, "modes");
    let err = d.fails(
        &["run", "--rm", "--network", "none", "-p", "80", &img, "true"],
        125,
    );
    assert!(
        err.contains("publish") || err.contains("conflicting"),
        "{err}"
    );
}

#[test]
fn legacy_links_give_variables_hosts_entries_and_reachability() {
    let d = Daemon::start();
    let img = busybox_image(&d, "links");
    serve(
        &d,
        &img,
        "db-server",
        &["--expose", "80", "-e", "DB_USER=admin"],
        "linked-ok",
    );
    let db_ip = ip_of(&d, "db-server");
    let out = d.ok(&[
        "run", "--rm", "--name", "web", "--link", "db-server:database", &img, "sh", "-c",
        "env | grep ^DATABASE_ | sort; echo ---; cat /etc/hosts; echo ---; \
         printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $DATABASE_PORT_80_TCP_ADDR $DATABASE_PORT_80_TCP_PORT",
    ]);
    for want in [
        format!("DATABASE_PORT=tcp://{db_ip}:80"),
        format!("DATABASE_PORT_80_TCP=tcp://{db_ip}:80"),
        format!("DATABASE_PORT_80_TCP_ADDR={db_ip}"),
        "DATABASE_PORT_80_TCP_PORT=80".to_string(),
        "DATABASE_PORT_80_TCP_PROTO=tcp".to_string(),
        "DATABASE_NAME=/web/database".to_string(),
        "DATABASE_ENV_DB_USER=admin".to_string(),
    ] {
        assert!(
            out.lines().any(|l| l == want),
            "missing {want:?} in:\n{out}"
        );
    }
    assert!(!out.contains("DATABASE_ENV_PATH"), "{out}");
    let hosts_line = out
        .lines()
        .find(|l| l.starts_with(&db_ip))
        .unwrap_or_else(|| panic!("no hosts entry for {db_ip}:\n{out}"));
    assert!(
        hosts_line.contains("database") && hosts_line.contains("db-server"),
        "{hosts_line}"
    );
    assert!(
        out.contains("linked-ok"),
        "the linked container answers:\n{out}"
    );
    // A link to a container that is not running is refused at start.
    d.ok(&["stop", "-t", "0", "db-server"]);
    let err = d.fails(&["run", "--rm", "--link", "db-server", &img, "true"], 125);
    assert!(
        err.contains("Cannot link to a non running container"),
        "{err}"
    );
    let err = d.fails(&["run", "--rm", "--link", "ghost:x", &img, "true"], 125);
    assert!(err.contains("ghost"), "{err}");
}

#[test]
fn icc_false_blocks_containers_except_through_links_on_exposed_ports() {
    if !std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists() {
        eprintln!("skipped: --icc=false needs br_netfilter, which this kernel lacks");
        return;
    }
    let d = Daemon::builder().arg("--icc=false").start();
    let img = busybox_image(&d, "icc");
    serve(&d, &img, "server", &["--expose", "80"], "icc-linked");
    let server_ip = ip_of(&d, "server");
    // Linked: allowed on the exposed port.
    d.ok(&[
        "run", "-d", "--name", "friend", "--link", "server", &img, "sleep", "100",
    ]);
    poll_for(T, "the linked container to reach the server", || {
        let (code, out, err) = d.run3(&["exec", "friend", "sh", "-c", &nc_get(&server_ip, 80)]);
        if code == 0 && out.contains("icc-linked") {
            Ok(())
        } else {
            Err(format!("{out} {err}"))
        }
    });
    // Not linked: blocked.
    d.ok(&["run", "-d", "--name", "stranger", &img, "sleep", "100"]);
    let (_, out, _) = d.run3(&["exec", "stranger", "sh", "-c", &nc_get(&server_ip, 80)]);
    assert!(
        !out.contains("icc-linked"),
        "an unlinked container got through: {out}"
    );
}

#[test]
fn add_host_dns_and_hostname_are_honoured() {
    let d = Daemon::start();
    let img = busybox_image(&d, "etc");
    // Only files are read here: nothing is sent to these addresses.
    let out = d.ok(&[
        "run",
        "--rm",
        "-h",
        "myhost",
        "--add-host",
        "db.local:10.1.2.3",
        "--dns",
        "10.9.9.9",
        &img,
        "sh",
        "-c",
        "hostname; cat /etc/hosts /etc/resolv.conf",
    ]);
    assert_eq!(out.lines().next(), Some("myhost"), "{out}");
    assert!(out.lines().any(|l| l == "10.1.2.3\tdb.local"), "{out}");
    assert!(
        out.lines().any(|l| l.ends_with("\tmyhost")),
        "the container's own entry: {out}"
    );
    let nameservers: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("nameserver"))
        .collect();
    assert_eq!(nameservers, vec!["nameserver 10.9.9.9"], "{out}");
    let err = d.fails(&["run", "--rm", "--add-host", "nocolon", &img, "true"], 125);
    assert!(err.contains("--add-host"), "{err}");
}

#[test]
fn network_container_mode_shares_the_other_containers_network() {
    let d = Daemon::start();
    let img = busybox_image(&d, "joined");
    serve(&d, &img, "server", &[], "shared-netns");
    let out = d.ok(&[
        "run",
        "--rm",
        "--network",
        "container:server",
        &img,
        "sh",
        "-c",
        &format!("cat /proc/net/dev; {}", nc_get("127.0.0.1", 80)),
    ]);
    assert!(out.contains("eth0"), "the server's interfaces: {out}");
    assert!(
        out.contains("shared-netns"),
        "its loopback reaches the server: {out}"
    );
    d.ok(&["stop", "-t", "0", "server"]);
    let err = d.fails(
        &["run", "--rm", "--network", "container:server", &img, "true"],
        125,
    );
    assert!(err.contains("not running"), "{err}");
    let err = d.fails(
        &["run", "--rm", "--network", "container:ghost", &img, "true"],
        125,
    );
    assert!(err.contains("ghost"), "{err}");
}

//! The cluster's trust boundaries, attacked through its public interfaces:
//! a worker claiming a manager's name, an impostor serving a worker's
//! certificate as a manager, a flood of connections without a certificate,
//! an oversized `Join`, and client certificates that are revoked or asked
//! for too long.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent_common::dispatcher_proto::dispatcher_client::DispatcherClient;
use agent_common::dispatcher_proto::JoinRequest;
use agent_common::pki::{JoinToken, NodeIdentity, NodeRole, Revocations};
use agent_common::tls::{self, grpc};
use cluster_tests::cluster::ClusterLab;
use cluster_tests::hosts::Host;
use cluster_tests::poll_until;
use tokio::io::AsyncReadExt;

const T: Duration = Duration::from_secs(60);

fn ready_count(nodes: &[serde_json::Value]) -> usize {
    nodes.iter().filter(|n| n["Status"] == "ready").count()
}

/// `flotilla-worker join` on `host` advertising `addr`; returns whether it
/// succeeded and its error output. A successful daemon is left running (the
/// lab stops it).
fn worker_join_advertising(c: &ClusterLab, host: &str, token: &str, addr: &str) -> (bool, String) {
    let h = c.lab.host(host);
    let dir = h
        .dir()
        .join(format!("join-{}", addr.replace(['/', '*'], "_")));
    let sock = format!("unix://{}/w.sock", dir.display());
    let data = dir.join("data").display().to_string();
    let mut child = h
        .command(cluster_tests::bin("flotilla-worker"))
        .args([
            "-H",
            &sock,
            "--data-root",
            &data,
            "--sandbox-pool",
            "0",
            "join",
            "--token",
            token,
            "--advertise-addr",
            addr,
            &c.node("m1").addr,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run flotilla-worker");
    // A refused join exits; an accepted one keeps serving: give up waiting
    // once the node shows up in the cluster.
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });
    let mut exited = None;
    poll_until(T, "the join to finish or the node to appear", || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status.success());
            return true;
        }
        c.nodes("m1", false).len() > 1
    });
    match exited {
        Some(ok) => (ok, reader.join().unwrap_or_default()),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            (true, reader.join().unwrap_or_default())
        }
    }
}

#[test]
fn a_worker_cannot_join_with_a_role_name_or_a_node_id_as_its_address() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1"], "300ms");
    c.init("m1");
    let token = c.token("m1", "worker");
    let m1_id = c.nodes("m1", false)[0]["ID"]
        .as_str()
        .expect("node ID")
        .to_string();
    for (addr, why) in [
        ("flotilla-manager", "role name"),
        ("Flotilla-Manager.", "role name"),
        ("flotilla-client", "role name"),
        (m1_id.as_str(), "node ID"),
    ] {
        let (ok, err) = worker_join_advertising(&c, "w1", &token, addr);
        assert!(!ok, "joining with --advertise-addr {addr} succeeded");
        assert!(
            err.contains("advertise address") && err.contains(why),
            "{addr}: {err}"
        );
    }
    // Nothing was admitted.
    let nodes = c.nodes("m1", false);
    assert_eq!(nodes.len(), 1, "{nodes:?}");
    // An ordinary address still joins.
    c.join_worker("w1", "m1");
    poll_until(T, "2 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 2
    });
}

/// Runs `f` on a thread inside `host`'s network namespace, with a
/// single-threaded runtime there (every socket it opens is in that
/// namespace).
fn in_netns<R: Send + 'static>(
    host: &Host,
    f: impl FnOnce() -> R + Send + 'static,
) -> std::thread::JoinHandle<R> {
    let netns = host.netns_path();
    std::thread::spawn(move || {
        let file = std::fs::File::open(&netns).expect("open the host's netns");
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// Writes a client certificate made through `host`'s manager into `dir`.
fn client_cert(c: &ClusterLab, host: &str, dir: &Path, extra: &[&str]) -> String {
    let out_dir = dir.display().to_string();
    let mut args = vec!["cluster", "client-cert", "create", "--out", &out_dir];
    args.extend_from_slice(extra);
    c.cli(host, &args)
        .ok("client-cert create")
        .trim()
        .to_string()
}

/// Runs the CLI on `from` against `addr` with the client files in `dir`.
fn remote(from: &Host, addr: &str, dir: &Path, args: &[&str]) -> (bool, String, String) {
    let host = format!("tcp://{addr}");
    let f = |n: &str| dir.join(n).display().to_string();
    let (ca, cert, key) = (f("ca.pem"), f("cert.pem"), f("key.pem"));
    let mut all = vec![
        "-H",
        &host,
        "--tlscacert",
        &ca,
        "--tlscert",
        &cert,
        "--tlskey",
        &key,
    ];
    all.extend_from_slice(args);
    let out = from.run(cluster_tests::bin("flotilla"), &all);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Signs, with the cluster's CA key, a worker certificate for `key_pem`
/// that also carries the DNS name `flotilla-manager`: what joining with
/// `--advertise-addr flotilla-manager` gave before addresses were checked.
fn forged_worker_cert(ca_pem: &str, ca_key_pem: &str, key_pem: &str) -> String {
    use rcgen::{
        CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose, SanType,
    };
    let ca_key = KeyPair::from_pem(ca_key_pem).expect("CA key");
    let issuer = Issuer::from_ca_cert_pem(ca_pem, ca_key).expect("CA");
    let key = KeyPair::from_pem(key_pem).expect("worker key");
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "0123456789abcdefghijklmno");
    dn.push(DnType::OrganizationalUnitName, "flotilla-worker");
    params.distinguished_name = dn;
    params.subject_alt_names = vec![
        SanType::DnsName("flotilla-worker".try_into().unwrap()),
        SanType::DnsName("flotilla-manager".try_into().unwrap()),
    ];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.signed_by(&key, &issuer).expect("sign").pem()
}

/// A TLS server on 127.0.0.1 presenting `identity` (accepting clients with
/// or without a certificate) that counts the bytes clients send after the
/// handshake. Runs until the returned sender is dropped.
fn impostor(identity: NodeIdentity) -> (SocketAddr, Arc<AtomicUsize>, std::sync::mpsc::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let received = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&received);
    std::thread::spawn(move || {
        runtime().block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            addr_tx.send(listener.local_addr().unwrap()).unwrap();
            let config = tls::join_server_config(&identity, &Revocations::default()).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
            let stop = tokio::task::spawn_blocking(move || {
                let _ = stop_rx.recv();
            });
            let serve = async {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let acceptor = acceptor.clone();
                    let counted = Arc::clone(&counted);
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut buf = [0u8; 4096];
                        while let Ok(n) = tls.read(&mut buf).await {
                            if n == 0 {
                                break;
                            }
                            counted.fetch_add(n, Ordering::SeqCst);
                        }
                    });
                }
            };
            tokio::select! {
                _ = stop => {}
                () = serve => {}
            }
        });
    });
    (addr_rx.recv().unwrap(), received, stop_tx)
}

#[test]
fn a_worker_certificate_served_as_a_manager_is_refused_by_clients_and_joining_nodes() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1"], "300ms");
    c.init("m1");
    c.join_worker("w1", "m1");
    poll_until(T, "2 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 2
    });
    let client_dir = c.lab.host("m1").dir().join("client");
    client_cert(&c, "m1", &client_dir, &[]);
    let worker_files = c.node("w1").data_root.join("cluster");
    let manager_files = c.node("m1").data_root.join("cluster");
    let read = |dir: &PathBuf, name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let (ca_pem, worker_key) = (
        read(&worker_files, "ca.pem"),
        read(&worker_files, "key.pem"),
    );
    let forged = forged_worker_cert(&ca_pem, &read(&manager_files, "ca-key.pem"), &worker_key);
    let token = c.token("m1", "worker");
    // The worker's own certificate, and one that also names flotilla-manager.
    for cert_pem in [read(&worker_files, "cert.pem"), forged] {
        let identity = NodeIdentity::from_pem(&worker_key, &cert_pem, &ca_pem).unwrap();
        let (addr, received, _stop) = impostor(identity);
        // The CLI (a client certificate of the cluster) refuses it.
        let out = std::process::Command::new(cluster_tests::bin("flotilla"))
            .arg("-H")
            .arg(format!("tcp://{addr}"))
            .arg("--tlscacert")
            .arg(client_dir.join("ca.pem"))
            .arg("--tlscert")
            .arg(client_dir.join("cert.pem"))
            .arg("--tlskey")
            .arg(client_dir.join("key.pem"))
            .args(["node", "ls"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "node ls against an impostor succeeded"
        );
        assert!(
            err.contains("worker certificate") && err.contains("manager certificate"),
            "{err}"
        );
        // A joining node (worker token pinning the real CA) refuses it before
        // sending its token.
        let dir = c.lab.host("m1").dir().join("impostor-join");
        let out = std::process::Command::new(cluster_tests::bin("flotilla-worker"))
            .arg("-H")
            .arg(format!("unix://{}/w.sock", dir.display()))
            .arg("--data-root")
            .arg(dir.join("data"))
            .args(["--sandbox-pool", "0", "join", "--token", &token])
            .args(["--advertise-addr", "127.0.0.1", &addr.to_string()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "a join through an impostor succeeded"
        );
        assert!(err.contains("worker certificate"), "{err}");
        assert_eq!(
            received.load(Ordering::SeqCst),
            0,
            "a client sent data to the impostor"
        );
    }
}

#[test]
fn a_flood_of_connections_without_a_certificate_does_not_lock_clients_out() {
    const FLOOD: usize = 300;
    const CAP: usize = 64;
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1", "x1"], "300ms");
    c.init("m1");
    c.join_worker("w1", "m1");
    poll_until(T, "2 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 2
    });
    let client_dir = c.lab.host("w1").dir().join("client");
    client_cert(&c, "m1", &client_dir, &[]);
    let pin = JoinToken::parse(&c.token("m1", "worker"))
        .unwrap()
        .ca_digest();
    let target: SocketAddr = c.node("m1").addr.parse().unwrap();

    // From x1: FLOOD connections that finish a TLS handshake without a
    // certificate (as a joining node would) and then say nothing.
    let open = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let (o, cl) = (Arc::clone(&open), Arc::clone(&closed));
    let flood = in_netns(c.lab.host("x1"), move || {
        runtime().block_on(async move {
            let config = Arc::new(tls::bootstrap_client_config(pin).unwrap());
            for _ in 0..FLOOD {
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
                let Ok(tcp) = tokio::net::TcpStream::connect(target).await else {
                    continue;
                };
                let Ok(Ok(mut conn)) = tokio::time::timeout(
                    Duration::from_secs(10),
                    connector.connect(tls::server_name(NodeRole::Manager), tcp),
                )
                .await
                else {
                    cl.fetch_add(1, Ordering::SeqCst);
                    continue;
                };
                o.fetch_add(1, Ordering::SeqCst);
                let cl = Arc::clone(&cl);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    loop {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        }
                    }
                    cl.fetch_add(1, Ordering::SeqCst);
                });
            }
            let _ = tokio::task::spawn_blocking(move || stop_rx.recv()).await;
        })
    });
    // Connections beyond the cap are closed (oldest first) ...
    poll_until(T, "the connections beyond the cap to be closed", || {
        open.load(Ordering::SeqCst) + closed.load(Ordering::SeqCst) >= FLOOD
            && closed.load(Ordering::SeqCst) >= FLOOD - CAP
    });
    let still_open = FLOOD - closed.load(Ordering::SeqCst);
    assert!(still_open <= CAP, "{still_open} connections still open");
    // ... and a client with a certificate still works, as does the worker.
    let (ok, stdout, err) = remote(
        c.lab.host("w1"),
        &c.node("m1").addr,
        &client_dir,
        &["node", "ls"],
    );
    assert!(ok, "{err}");
    assert!(stdout.contains("m1") && stdout.contains("w1"), "{stdout}");
    poll_until(T, "2 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 2
    });
    drop(stop_tx);
    flood.join().expect("flood thread");
}

#[test]
fn an_oversized_join_message_is_refused_before_it_is_read() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "x1"], "300ms");
    c.init("m1");
    let token = c.token("m1", "worker");
    let pin = JoinToken::parse(&token).unwrap().ca_digest();
    let target = c.node("m1").addr.clone();
    let status = in_netns(c.lab.host("x1"), move || {
        runtime().block_on(async move {
            let config = Arc::new(tls::bootstrap_client_config(pin).unwrap());
            let (channel, _) =
                grpc::connect_capturing_peer(&target, config, tls::server_name(NodeRole::Manager))
                    .await
                    .expect("connect");
            let mut client = DispatcherClient::new(channel);
            client
                .join(JoinRequest {
                    token,
                    csr_pem: String::new(),
                    hostname: "x".repeat(1024 * 1024),
                    advertise_addr: String::new(),
                })
                .await
                .expect_err("a 1 MiB join was answered")
        })
    })
    .join()
    .expect("join thread");
    assert!(
        status.message().contains("too large"),
        "{:?}: {}",
        status.code(),
        status.message()
    );
    assert_eq!(c.nodes("m1", false).len(), 1);
}

#[test]
fn client_certificates_are_recorded_scoped_revocable_and_short_lived() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1"], "300ms");
    c.init("m1");
    let m1 = c.node("m1").addr.clone();
    let w1 = c.lab.host("w1");
    let plain = w1.dir().join("plain");
    let admin = w1.dir().join("admin");
    let serial = client_cert(&c, "m1", &plain, &["--name", "ci-runner"]);
    let admin_serial = client_cert(&c, "m1", &admin, &["--admin"]);
    let (ok, stdout, err) = remote(w1, &m1, &plain, &["node", "ls"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("m1"), "{stdout}");

    // Listed by serial and name.
    let ls = c.cli("m1", &["cluster", "client-cert", "ls"]).ok("ls");
    assert!(ls.contains(&serial) && ls.contains("ci-runner"), "{ls}");
    assert!(ls.contains(&admin_serial) && ls.contains("admin"), "{ls}");

    // Without the admin scope: the worker token yes, the manager token and
    // client certificates no.
    let (ok, _, err) = remote(w1, &m1, &plain, &["join-token", "-q", "worker"]);
    assert!(ok, "{err}");
    let (ok, stdout, err) = remote(w1, &m1, &plain, &["join-token", "-q", "manager"]);
    assert!(!ok, "a plain client printed the manager token: {stdout}");
    assert!(err.contains("admin scope"), "{err}");
    let (ok, _, err) = remote(w1, &m1, &plain, &["cluster", "client-cert", "ls"]);
    assert!(!ok);
    assert!(err.contains("admin scope"), "{err}");
    // With it: both.
    let (ok, stdout, err) = remote(w1, &m1, &admin, &["join-token", "-q", "manager"]);
    assert!(ok, "{err}");
    assert!(stdout.starts_with("FLTKN-1-manager-"), "{stdout}");

    // Revoked by the admin client: refused, saying so.
    let (ok, _, err) = remote(
        w1,
        &m1,
        &admin,
        &["cluster", "client-cert", "revoke", &serial],
    );
    assert!(ok, "{err}");
    let (ok, _, err) = remote(w1, &m1, &plain, &["node", "ls"]);
    assert!(!ok, "a revoked client certificate still works");
    assert!(err.contains("revoked"), "{err}");
    let ls = c.cli("m1", &["cluster", "client-cert", "ls"]).ok("ls");
    let line = ls.lines().find(|l| l.contains(&serial)).expect(&ls);
    assert!(line.contains("revoked"), "{ls}");
    // The admin certificate still works.
    let (ok, _, err) = remote(w1, &m1, &admin, &["node", "ls"]);
    assert!(ok, "{err}");

    // Lifetimes: too long or zero are refused, through the CLI and
    // flotilla-manager client-cert alike.
    let dir = w1.dir().join("long");
    let out = c.cli(
        "m1",
        &[
            "cluster",
            "client-cert",
            "create",
            "--expiry",
            "400d",
            "--out",
            &dir.display().to_string(),
        ],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("365 days"), "{}", out.stderr);
    let out = c.cli(
        "m1",
        &[
            "cluster",
            "client-cert",
            "create",
            "--expiry",
            "0s",
            "--out",
            &dir.display().to_string(),
        ],
    );
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("--expiry"), "{}", out.stderr);
    let out = std::process::Command::new(cluster_tests::bin("flotilla-manager"))
        .arg("-H")
        .arg(&c.node("m1").socket)
        .args(["client-cert", "--expiry", "2y", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("365 days"), "{err}");
    assert!(!dir.join("cert.pem").exists());
}

#[test]
fn a_worker_cannot_take_a_role_name_later_through_its_session() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1"], "300ms");
    c.init("m1");
    c.join_worker("w1", "m1");
    poll_until(T, "2 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 2
    });
    let ip = c.node("w1").addr.clone();
    // The worker's recorded advertise address is what its session hello
    // sends: rewrite it, then restart the worker.
    c.node("w1").proc.kill9();
    let record = c.node("w1").data_root.join("cluster/node.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    json["advertise_addr"] = "flotilla-manager".into();
    std::fs::write(&record, json.to_string()).unwrap();
    c.resume_worker("w1");
    // Its sessions are refused, saying why; it is not ready and keeps its
    // address.
    poll_until(T, "the worker's session to be refused", || {
        c.node("w1").proc.log().contains("advertise address")
    });
    poll_until(T, "w1 down", || {
        c.nodes("m1", false)
            .iter()
            .any(|n| n["Hostname"] == "w1" && n["Status"] == "down")
    });
    let nodes = c.nodes("m1", false);
    let w1 = nodes.iter().find(|n| n["Hostname"] == "w1").expect("w1");
    assert_eq!(w1["Addr"], ip.as_str(), "{w1}");
}

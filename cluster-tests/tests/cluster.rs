//! Managers and workers on lab hosts (network + UTS namespaces): joining with
//! tokens over mutual TLS, node listing, leader failover without losing
//! acknowledged writes, partitions, restarts, and membership safety.

use std::time::Duration;

use cluster_tests::cluster::ClusterLab;
use cluster_tests::poll_until;

const T: Duration = Duration::from_secs(60);

fn ready_count(nodes: &[serde_json::Value]) -> usize {
    nodes.iter().filter(|n| n["Status"] == "ready").count()
}

#[test]
fn three_managers_and_two_workers_join_and_are_listed() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3", "w1", "w2"], "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    // A manager can join through a follower too.
    c.join_manager("m3", "m2");
    c.join_worker("w1", "m1");
    c.join_worker("w2", "m3");

    poll_until(T, "5 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 5
    });
    let nodes = c.nodes("m2", false);
    let mut hostnames: Vec<&str> = nodes
        .iter()
        .map(|n| n["Hostname"].as_str().unwrap())
        .collect();
    hostnames.sort();
    assert_eq!(hostnames, ["m1", "m2", "m3", "w1", "w2"]);
    let managers: Vec<&serde_json::Value> =
        nodes.iter().filter(|n| n["Role"] == "manager").collect();
    assert_eq!(managers.len(), 3, "{nodes:?}");
    let leaders = managers
        .iter()
        .filter(|n| n["ManagerStatus"]["Leader"] == true)
        .count();
    assert_eq!(leaders, 1, "{nodes:?}");
    // `*` marks the answering node in the table.
    let table = c.cli("m2", &["node", "ls"]).ok("node ls");
    let self_line = table.lines().find(|l| l.contains(" * ")).expect(&table);
    assert!(self_line.contains("m2"), "{table}");
    assert!(table.contains("Leader"), "{table}");
    let info = c.info("m3");
    assert_eq!(info["Managers"].as_array().unwrap().len(), 3, "{info}");
    assert_eq!(info["Nodes"], 5);

    // A worker answers cluster verbs by naming the managers.
    let out = c.cli("w1", &["node", "ls"]);
    assert_ne!(out.code, 0);
    assert!(
        out.stderr.contains("this node is not a manager"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&c.node("m1").addr), "{}", out.stderr);

    // A worker that stops is marked down; back again, ready.
    c.node("w2").proc.stop();
    poll_until(T, "w2 down", || {
        c.nodes("m1", false)
            .iter()
            .any(|n| n["Hostname"] == "w2" && n["Status"] == "down")
    });
    c.node("w2").proc.cont();
    poll_until(T, "w2 ready again", || {
        ready_count(&c.nodes("m1", false)) == 5
    });
}

#[test]
fn wrong_and_rotated_tokens_are_refused() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1", "w2"], "300ms");
    c.init("m1");
    let worker = c.token("m1", "worker");
    let manager = c.token("m1", "manager");
    assert!(worker.starts_with("FLTKN-1-worker-"), "{worker}");
    assert_ne!(worker, manager);

    // A manager token for a worker, and the reverse.
    let e = c.failing_worker_join("w1", &manager, "m1");
    assert!(e.contains("manager join token"), "{e}");
    let h = c.lab.host("w1");
    let out = h.run(
        cluster_tests::bin("flotilla-manager"),
        &[
            "-H",
            &format!("unix://{}/m.sock", h.dir().display()),
            "--data-root",
            &h.dir().join("mdata").display().to_string(),
            "join",
            "--token",
            &worker,
            "--advertise-addr",
            &h.addr().to_string(),
            &c.node("m1").addr,
        ],
    );
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("worker join token"), "{e}");

    // Garbage, a wrong secret, and a token pinning another CA.
    let e = c.failing_worker_join("w1", "SWMTKN-1-abc", "m1");
    assert!(e.contains("FLTKN"), "{e}");
    let mut fields: Vec<String> = worker.split('-').map(String::from).collect();
    let good_secret = fields[4].clone();
    fields[4] = "0".repeat(25);
    let e = c.failing_worker_join("w1", &fields.join("-"), "m1");
    assert!(e.contains("invalid join token"), "{e}");
    fields[4] = good_secret;
    fields[3] = "ab".repeat(32);
    let e = c.failing_worker_join("w1", &fields.join("-"), "m1");
    assert!(e.to_lowercase().contains("pin"), "{e}");

    // Rotation: the old token stops working, the new one works.
    let out = c
        .cli("m1", &["join-token", "--rotate", "worker"])
        .ok("rotate");
    assert!(
        out.contains("Successfully rotated worker join token"),
        "{out}"
    );
    let rotated = c.token("m1", "worker");
    assert_ne!(rotated, worker);
    let e = c.failing_worker_join("w1", &worker, "m1");
    assert!(e.contains("invalid join token"), "{e}");
    assert_eq!(
        c.token("m1", "manager"),
        manager,
        "rotating one role keeps the other"
    );
    c.join_worker("w2", "m1");
    poll_until(T, "w2 ready", || ready_count(&c.nodes("m1", false)) == 2);
}

/// Writes `node update --label-add seq<i>=<i>` through each manager in turn;
/// returns the indices acknowledged (exit status 0).
fn write_sequence(
    c: &ClusterLab,
    managers: &[&str],
    target: &str,
    range: std::ops::Range<u32>,
    stop: &std::sync::atomic::AtomicBool,
) -> Vec<u32> {
    let mut acked = Vec::new();
    for i in range {
        if stop.load(std::sync::atomic::Ordering::Relaxed) {
            break;
        }
        let via = managers[i as usize % managers.len()];
        let label = format!("seq{i}={i}");
        if c.cli(via, &["node", "update", "--label-add", &label, target])
            .code
            == 0
        {
            acked.push(i);
        }
    }
    acked
}

fn labels_on(c: &ClusterLab, via: &str, node: &str) -> Option<serde_json::Value> {
    let out = c.cli(via, &["node", "inspect", "--local", node]);
    if out.code != 0 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out.stdout).ok()?;
    Some(v[0]["Labels"].clone())
}

#[test]
fn no_acknowledged_write_is_lost_while_leaders_are_killed() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3"], "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    poll_until(T, "3 ready managers", || {
        ready_count(&c.nodes("m1", false)) == 3
    });

    let stop = std::sync::atomic::AtomicBool::new(false);
    let acked = std::thread::scope(|s| {
        let writer = s.spawn(|| write_sequence(&c, &["m1", "m2", "m3"], "m1", 0..100_000, &stop));
        let mut kills = 0;
        let started = std::time::Instant::now();
        while kills < 3 && started.elapsed() < Duration::from_secs(120) {
            std::thread::sleep(Duration::from_millis(700));
            let leader = c.wait_leader(T);
            c.node(&leader).proc.kill9();
            kills += 1;
            // A new leader among the other two.
            poll_until(T, "a new leader", || {
                ["m1", "m2", "m3"]
                    .iter()
                    .filter(|h| **h != leader)
                    .any(|h| c.leader(h).is_some_and(|l| l != leader))
            });
            // Bring the old one back from its data root.
            c.resume_manager(&leader, &[]);
        }
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap()
    });
    eprintln!("acknowledged writes: {}", acked.len());
    assert!(
        acked.len() >= 10,
        "too few writes acknowledged: {}",
        acked.len()
    );
    for host in ["m1", "m2", "m3"] {
        poll_until(T, &format!("{host} holds every acknowledged write"), || {
            let Some(labels) = labels_on(&c, host, "m1") else {
                return false;
            };
            acked
                .iter()
                .all(|i| labels[format!("seq{i}")].as_str() == Some(i.to_string().as_str()))
        });
    }
}

#[test]
fn a_cut_off_minority_cannot_commit_and_the_majority_can() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3"], "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    poll_until(T, "3 ready managers", || {
        ready_count(&c.nodes("m1", false)) == 3
    });
    // Cut off the leader: it is the minority of one.
    let old = c.wait_leader(T);
    let others: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|h| *h != old)
        .collect();
    c.lab.host(&old).cut_off();
    let out = c.cli(&old, &["node", "update", "--label-add", "minority=1", &old]);
    assert_ne!(out.code, 0, "the cut-off minority committed a write");
    // The majority elects a leader and commits.
    c.cli(
        others[0],
        &["node", "update", "--label-add", "majority=1", &old],
    )
    .ok("write on the majority");
    let labels = labels_on(&c, others[1], &old).unwrap();
    assert_eq!(labels["majority"], "1");
    assert!(labels.get("minority").is_none(), "{labels}");
    // Healed, the old leader follows and catches up; its refused write is not there.
    c.lab.host(&old).heal();
    poll_until(T, "the healed manager catches up", || {
        labels_on(&c, &old, &old).is_some_and(|l| l["majority"] == "1")
    });
    let labels = labels_on(&c, &old, &old).unwrap();
    assert!(labels.get("minority").is_none(), "{labels}");
    c.cli(&old, &["node", "update", "--label-add", "after=1", &old])
        .ok("write through the healed manager");
}

#[test]
fn all_managers_restarted_keep_the_state() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3", "w1"], "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m2");
    c.join_worker("w1", "m1");
    poll_until(T, "4 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 4
    });
    c.cli(
        "m2",
        &[
            "node",
            "update",
            "--availability",
            "drain",
            "--label-add",
            "zone=a",
            "w1",
        ],
    )
    .ok("node update");
    let token = c.token("m1", "worker");
    for h in ["m1", "m2", "m3"] {
        c.node(h).proc.kill9();
    }
    for h in ["m3", "m1", "m2"] {
        c.resume_manager(h, &[]);
    }
    c.wait_leader(T);
    poll_until(T, "4 ready nodes after the restart", || {
        ready_count(&c.nodes("m3", false)) == 4
    });
    let w1 = &c
        .nodes("m1", false)
        .into_iter()
        .find(|n| n["Hostname"] == "w1")
        .unwrap();
    assert_eq!(w1["Availability"], "drain");
    assert_eq!(w1["Labels"]["zone"], "a");
    assert_eq!(c.token("m2", "worker"), token, "tokens survive restarts");
    assert_eq!(c.info("m1")["Managers"].as_array().unwrap().len(), 3);
}

#[test]
fn demote_promote_and_rm_keep_quorum_safe() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3", "w1"], "300ms");
    c.init("m1");
    // The last manager cannot be demoted.
    let e = c.cli("m1", &["node", "demote", "m1"]);
    assert_ne!(e.code, 0);
    assert!(e.stderr.contains("last manager"), "{}", e.stderr);
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    c.join_worker("w1", "m1");
    poll_until(T, "4 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 4
    });

    // A manager is not removed without demotion or --force; a ready worker not without --force.
    let e = c.cli("m1", &["node", "rm", "m3"]);
    assert!(
        e.code != 0 && e.stderr.contains("demote it first"),
        "{}",
        e.stderr
    );
    let e = c.cli("m1", &["node", "rm", "w1"]);
    assert!(e.code != 0 && e.stderr.contains("--force"), "{}", e.stderr);

    // Demote m3: two managers left; m3 stays in the cluster as a worker.
    c.cli("m1", &["node", "demote", "m3"]).ok("demote m3");
    poll_until(T, "m3 listed as a worker", || {
        c.nodes("m1", false)
            .iter()
            .any(|n| n["Hostname"] == "m3" && n["Role"] == "worker" && n["Status"] == "ready")
    });
    assert_eq!(c.info("m2")["Managers"].as_array().unwrap().len(), 2);
    poll_until(T, "m3 answers that it is not a manager", || {
        let e = c.cli("m3", &["node", "ls"]);
        e.code != 0 && e.stderr.contains("not a manager")
    });

    // With m2 down, demoting m1 would leave no reachable quorum: refused.
    c.node("m2").proc.kill9();
    std::thread::sleep(Duration::from_secs(3));
    let e = c.cli("m1", &["node", "demote", "m1"]);
    assert_ne!(e.code, 0, "demoted the only reachable manager");
    c.resume_manager("m2", &[]);
    c.wait_leader(T);

    // Promote m3 back: it joins Raft again and is listed as a manager.
    c.cli("m2", &["node", "promote", "m3"]).ok("promote m3");
    poll_until(T, "3 managers again", || {
        c.info("m1")["Managers"].as_array().unwrap().len() == 3
    });
    poll_until(T, "m3 answers as a manager", || {
        c.cli("m3", &["node", "ls"]).code == 0
    });

    // A worker cannot be promoted (it runs flotilla-worker); a stopped worker is removed.
    let e = c.cli("m1", &["node", "promote", "w1"]);
    assert!(
        e.code != 0 && e.stderr.contains("flotilla-manager join"),
        "{}",
        e.stderr
    );
    c.node("w1").proc.kill9();
    poll_until(T, "w1 down", || {
        c.nodes("m1", false)
            .iter()
            .any(|n| n["Hostname"] == "w1" && n["Status"] == "down")
    });
    c.cli("m1", &["node", "rm", "w1"]).ok("rm down worker");
    assert!(!c.nodes("m2", false).iter().any(|n| n["Hostname"] == "w1"));
}

#[test]
fn remote_clients_need_a_manager_or_client_certificate() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1"], "300ms");
    c.init("m1");
    c.join_worker("w1", "m1");
    poll_until(T, "2 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 2
    });
    let remote = format!("tcp://{}", c.node("m1").addr);
    let w1 = c.lab.host("w1");
    let flotilla = cluster_tests::bin("flotilla");
    let with_files = |dir: &std::path::Path, args: &[&str]| {
        let ca = dir.join("ca.pem").display().to_string();
        let cert = dir.join("cert.pem").display().to_string();
        let key = dir.join("key.pem").display().to_string();
        let mut all = vec![
            "-H",
            &remote,
            "--tlscacert",
            &ca,
            "--tlscert",
            &cert,
            "--tlskey",
            &key,
        ];
        all.extend_from_slice(args);
        let out = w1.run(&flotilla, &all);
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // The worker's own node certificate is refused by the control API.
    let worker_files = c.node("w1").data_root.join("cluster");
    let (ok, _, err) = with_files(&worker_files, &["node", "ls"]);
    assert!(!ok);
    assert!(err.contains("worker certificate"), "{err}");

    // A client certificate issued on the manager works from the other host.
    let out_dir = w1.dir().join("client-certs");
    let out = std::process::Command::new(cluster_tests::bin("flotilla-manager"))
        .arg("-H")
        .arg(&c.node("m1").socket)
        .arg("client-cert")
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, stdout, err) = with_files(&out_dir, &["node", "ls"]);
    assert!(ok, "{err}");
    assert!(stdout.contains("m1") && stdout.contains("w1"), "{stdout}");

    // Missing files say where certificates come from.
    let (ok, _, err) = with_files(&w1.dir().join("nothing-here"), &["node", "ls"]);
    assert!(!ok);
    assert!(err.contains("client-cert"), "{err}");
}

fn cert_pem(c: &ClusterLab, host: &str) -> String {
    std::fs::read_to_string(c.node(host).data_root.join("cluster/cert.pem")).unwrap()
}

#[test]
fn certificates_renew_before_expiry_and_expired_or_revoked_ones_are_refused() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1", "w2"], "300ms");
    c.init_with("m1", &["--cert-expiry", "12s"]);
    c.join_worker("w1", "m1");
    c.join_worker("w2", "m1");
    poll_until(T, "3 ready nodes", || {
        ready_count(&c.nodes("m1", false)) == 3
    });
    let (m1_first, w1_first) = (cert_pem(&c, "m1"), cert_pem(&c, "w1"));
    // A third of 12 s left: both renew; after the first certificates expired
    // everyone is still ready (the manager's server certificate was renewed too).
    poll_until(T, "renewed certificates", || {
        cert_pem(&c, "m1") != m1_first && cert_pem(&c, "w1") != w1_first
    });
    std::thread::sleep(Duration::from_secs(13));
    poll_until(T, "all ready after the first certificates expired", || {
        ready_count(&c.nodes("m1", false)) == 3
    });

    // w2 frozen past its certificate's expiry: refused when it wakes up.
    c.node("w2").proc.stop();
    std::thread::sleep(Duration::from_secs(14));
    c.node("w2").proc.cont();
    std::thread::sleep(Duration::from_secs(3));
    let w2 = c
        .nodes("m1", false)
        .into_iter()
        .find(|n| n["Hostname"] == "w2")
        .unwrap();
    assert_eq!(w2["Status"], "down", "an expired certificate was accepted");

    // A removed node is refused: it does not come back.
    c.cli("m1", &["node", "rm", "--force", "w1"])
        .ok("rm --force w1");
    std::thread::sleep(Duration::from_secs(2));
    assert!(!c.nodes("m1", false).iter().any(|n| n["Hostname"] == "w1"));
    let log = c.node("w1").proc.log();
    assert!(log.contains("removed from the cluster"), "{log}");
    // Renewals happen once per third of the validity, not in a loop.
    let renewals = c
        .node("m1")
        .proc
        .log()
        .matches("renewed the node certificate")
        .count();
    assert!(renewals < 10, "m1 renewed {renewals} times in about 40 s");
}

#[test]
fn a_manager_runs_containers_on_its_own_socket() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1"], "300ms");
    c.init("m1");
    c.load_busybox(&["m1"]);
    let out = c
        .cli(
            "m1",
            &[
                "run",
                "--rm",
                "--network",
                "none",
                "busybox",
                "echo",
                "hello from a manager",
            ],
        )
        .ok("run on a manager");
    assert_eq!(out.trim(), "hello from a manager");
}

#[test]
fn force_new_cluster_recovers_from_one_surviving_manager() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3", "m4"], "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    poll_until(T, "3 ready managers", || {
        ready_count(&c.nodes("m1", false)) == 3
    });
    c.cli("m2", &["node", "update", "--label-add", "kept=yes", "m1"])
        .ok("write before the disaster");
    poll_until(T, "m1 has the write", || {
        labels_on(&c, "m1", "m1").is_some_and(|l| l["kept"] == "yes")
    });
    // Lose m2 and m3 for good; m1 alone has no quorum.
    for h in ["m1", "m2", "m3"] {
        c.node(h).proc.kill9();
    }
    c.resume_manager("m1", &["--force-new-cluster"]);
    poll_until(T, "m1 leads alone", || {
        c.leader("m1").as_deref() == Some("m1")
    });
    let info = c.info("m1");
    assert_eq!(info["Managers"].as_array().unwrap().len(), 1, "{info}");
    assert_eq!(labels_on(&c, "m1", "m1").unwrap()["kept"], "yes");
    c.cli("m1", &["node", "update", "--label-add", "after=yes", "m1"])
        .ok("write after recovery");
    // The cluster grows again.
    c.join_manager("m4", "m1");
    poll_until(T, "2 managers", || {
        c.info("m1")["Managers"].as_array().unwrap().len() == 2
    });
    poll_until(T, "m4 has the old and new writes", || {
        labels_on(&c, "m4", "m1").is_some_and(|l| l["kept"] == "yes" && l["after"] == "yes")
    });
}

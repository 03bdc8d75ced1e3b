//! Services on a real cluster (lab hosts): replicas created, spread, scaled,
//! moved off drained and dead nodes without ever running more than asked,
//! restarted when they fail, and removed.

use std::time::Duration;

use cluster_tests::cluster::ClusterLab;
use cluster_tests::poll_until;

const T: Duration = Duration::from_secs(90);

/// Running containers of service `name` on `host`.
fn running_on(c: &ClusterLab, host: &str, name: &str) -> usize {
    let out = c.cli(host, &["ps", "--format", "json"]);
    if out.code != 0 {
        return 10_000; // unknown: never equal to a real count
    }
    out.stdout
        .lines()
        .filter(|l| l.contains(&format!("\"{name}.")) || l.contains(&format!("/{name}.")))
        .count()
}

fn running_total(c: &ClusterLab, hosts: &[&str], name: &str) -> Vec<usize> {
    hosts.iter().map(|h| running_on(c, h, name)).collect()
}

fn tasks(c: &ClusterLab, via: &str, service: &str) -> Vec<serde_json::Value> {
    c.cli(via, &["service", "ps", service, "--format", "json"])
        .ok("service ps")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn replicated_service_spreads_scales_drains_survives_a_dead_node_and_is_removed() {
    let _serial = cluster_tests::cluster::serial();
    let hosts = ["m1", "w1", "w2"];
    let c = ClusterLab::new(&hosts, "300ms");
    c.init("m1");
    c.join_worker("w1", "m1");
    c.join_worker("w2", "m1");
    c.load_busybox(&hosts);
    poll_until(T, "3 ready nodes", || {
        c.nodes("m1", false)
            .iter()
            .filter(|n| n["Status"] == "ready")
            .count()
            == 3
    });

    // Created and converged (the CLI waits), spread evenly.
    let out = c
        .cli(
            "m1",
            &[
                "service",
                "create",
                "--name",
                "web",
                "--replicas",
                "6",
                "busybox",
                "sleep",
                "1000",
            ],
        )
        .ok("service create");
    assert!(out.contains("converged"), "{out}");
    poll_until(T, "6 containers, 2 per node", || {
        running_total(&c, &hosts, "web") == vec![2, 2, 2]
    });
    let ls = c.cli("m1", &["service", "ls"]).ok("service ls");
    assert!(ls.contains("web") && ls.contains("6/6"), "{ls}");

    // Scaled down and up.
    c.cli("m1", &["service", "scale", "web=3"]).ok("scale 3");
    poll_until(T, "3 containers", || {
        running_total(&c, &hosts, "web").iter().sum::<usize>() == 3
    });
    c.cli("m1", &["service", "scale", "web=6"]).ok("scale 6");
    poll_until(T, "6 containers", || {
        running_total(&c, &hosts, "web").iter().sum::<usize>() == 6
    });

    // Drain w1: its tasks move; 6 run on the other two.
    c.cli("m1", &["node", "update", "--availability", "drain", "w1"])
        .ok("drain");
    poll_until(T, "none on w1, 6 elsewhere", || {
        running_total(&c, &hosts, "web") == vec![3, 0, 3]
    });

    // Kill w2's daemon (its containers keep running, unwatched): once it is
    // down its tasks are replaced on m1; when it returns it stops the stale ones.
    c.node("w2").proc.kill9();
    poll_until(T, "6 running tasks without w2", || {
        tasks(&c, "m1", "web")
            .iter()
            .filter(|t| {
                t["DesiredState"] == "running"
                    && t["CurrentState"] == "running"
                    && t["Node"] == "m1"
            })
            .count()
            == 6
    });
    let back = c.resume_worker("w2").proc;
    poll_until(T, "w2 back and its stale containers stopped", || {
        assert!(back.is_running(), "{}", back.log());
        running_on(&c, "w2", "web") == 0
    });
    assert_eq!(running_total(&c, &hosts, "web").iter().sum::<usize>(), 6);

    // Logs gathered from the nodes running the tasks (one of them a worker).
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "talk",
            "--replicas",
            "2",
            "busybox",
            "sh",
            "-c",
            "echo hello from $(hostname); sleep 1000",
        ],
    )
    .ok("create talk");
    let mut logs = String::new();
    poll_until(T, "logs of both tasks", || {
        logs = c.cli("m1", &["service", "logs", "talk"]).ok("service logs");
        logs.matches("hello from").count() == 2
    });
    assert!(
        logs.contains("talk.1.") && logs.contains("talk.2."),
        "{logs}"
    );
    let tail = c
        .cli("m1", &["service", "logs", "--tail", "0", "talk"])
        .ok("logs --tail 0");
    assert!(!tail.contains("hello"), "{tail}");
    c.cli("m1", &["service", "rm", "talk"]).ok("rm talk");

    // Removed: every container stops.
    c.cli("m1", &["service", "rm", "web"]).ok("service rm");
    poll_until(T, "no web container anywhere", || {
        running_total(&c, &hosts, "web").iter().sum::<usize>() == 0
    });
    let ls = c.cli("m1", &["service", "ls"]).ok("service ls");
    assert!(!ls.contains("web"), "{ls}");
}

#[test]
fn failing_tasks_are_replaced_and_bad_input_is_refused() {
    let _serial = cluster_tests::cluster::serial();
    let hosts = ["m1"];
    let c = ClusterLab::new(&hosts, "300ms");
    c.init("m1");
    c.load_busybox(&hosts);

    // A command that exits 1: tasks fail and are replaced in their slot.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "crash",
            "--restart-delay",
            "200ms",
            "busybox",
            "sh",
            "-c",
            "exit 1",
        ],
    )
    .ok("create crash");
    poll_until(T, "failed tasks kept as history", || {
        let t = tasks(&c, "m1", "crash");
        t.iter().filter(|t| t["CurrentState"] == "failed").count() >= 2
            && t.iter().all(|t| t["Name"] == "crash.1")
    });
    let t = tasks(&c, "m1", "crash");
    let failed = t.iter().find(|t| t["CurrentState"] == "failed").unwrap();
    assert!(
        failed["Error"].as_str().unwrap().contains("exit"),
        "{failed}"
    );
    c.cli("m1", &["service", "rm", "crash"]).ok("rm crash");

    // A constraint nothing satisfies: the task stays pending with the reason.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "nowhere",
            "--constraint",
            "node.labels.zone==mars",
            "busybox",
            "sleep",
            "100",
        ],
    )
    .ok("create nowhere");
    poll_until(T, "pending with a reason", || {
        tasks(&c, "m1", "nowhere").iter().any(|t| {
            t["CurrentState"] == "pending"
                && t["Error"]
                    .as_str()
                    .unwrap_or("")
                    .contains("scheduling constraints not satisfied")
        })
    });

    // Refused at the edge; nothing stored.
    let e = c.cli(
        "m1",
        &["service", "create", "--name", "bad name", "busybox"],
    );
    assert!(
        e.code != 0 && e.stderr.contains("invalid service name"),
        "{}",
        e.stderr
    );
    let e = c.cli(
        "m1",
        &[
            "service",
            "create",
            "--constraint",
            "node.color==red",
            "busybox",
        ],
    );
    assert!(
        e.code != 0 && e.stderr.contains("node.color"),
        "{}",
        e.stderr
    );
    let e = c.cli("m1", &["service", "create", "--replicas", "-1", "busybox"]);
    assert_ne!(e.code, 0);
    let e = c.cli("m1", &["service", "create", "--name", "nowhere", "busybox"]);
    assert!(
        e.code != 0 && e.stderr.contains("already exists"),
        "{}",
        e.stderr
    );
    let ls = c.cli("m1", &["service", "ls", "-q"]).ok("ls");
    assert_eq!(ls.lines().count(), 1, "{ls}");
}

fn inspect(c: &ClusterLab, service: &str) -> serde_json::Value {
    let out = c
        .cli("m1", &["service", "inspect", service])
        .ok("service inspect");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0].clone()
}

#[test]
fn rolling_updates_roll_back_global_services_follow_nodes_and_unhealthy_tasks_are_replaced() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "w1", "w2"], "300ms");
    c.init("m1");
    c.join_worker("w1", "m1");
    c.load_busybox(&["m1", "w1"]);

    // Rolling update, 2 at a time, checked from the task history.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "4",
            "--update-parallelism",
            "2",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create web");
    c.cli("m1", &["service", "update", "--force", "web"])
        .ok("update --force");
    let gen = inspect(&c, "web")["Spec"].clone();
    assert!(gen.is_object());
    poll_until(T, "update completed", || {
        inspect(&c, "web")["UpdateStatus"]["state"] == "completed"
    });
    let all = tasks(&c, "m1", "web");
    let newest_gen = all
        .iter()
        .map(|t| t["SpecGeneration"].as_u64().unwrap())
        .max()
        .unwrap();
    let new: Vec<&serde_json::Value> = all
        .iter()
        .filter(|t| t["SpecGeneration"].as_u64() == Some(newest_gen))
        .collect();
    assert_eq!(new.len(), 4, "{all:?}");
    for t in &new {
        let created = t["CreatedAt"].as_u64().unwrap();
        let overlapping = new
            .iter()
            .filter(|u| {
                u["CreatedAt"].as_u64().unwrap() <= created
                    && u["RunningAt"].as_u64().is_none_or(|r| r > created)
            })
            .count();
        assert!(
            overlapping <= 2,
            "{overlapping} tasks updating at once: {new:?}"
        );
    }

    // An update to a failing command rolls back to the previous spec.
    c.cli(
        "m1",
        &[
            "service",
            "update",
            "-d",
            "--update-failure-action",
            "rollback",
            "--args",
            "false",
            "web",
        ],
    )
    .ok("bad update");
    poll_until(T, "rolled back", || {
        let v = inspect(&c, "web");
        v["UpdateStatus"]["state"] == "rollback_completed"
            && v["Spec"]["task"]["container"]["command"] == serde_json::json!(["sleep", "1000"])
            && v["Running"] == 4
    });
    c.cli("m1", &["service", "rm", "web"]).ok("rm web");

    // A global service gets a task on a node that joins later.
    c.cli(
        "m1",
        &[
            "service", "create", "-d", "--name", "agent", "--mode", "global", "busybox", "sleep",
            "1000",
        ],
    )
    .ok("create global");
    poll_until(T, "global on 2 nodes", || {
        running_on(&c, "m1", "agent") == 1 && running_on(&c, "w1", "agent") == 1
    });
    c.join_worker("w2", "m1");
    c.load_busybox(&["w2"]);
    poll_until(T, "global on the new node", || {
        running_on(&c, "w2", "agent") == 1
    });
    c.cli("m1", &["service", "rm", "agent"]).ok("rm agent");

    // A failing health check replaces the task.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "sick",
            "--health-cmd",
            "false",
            "--health-interval",
            "300ms",
            "--health-retries",
            "2",
            "--restart-delay",
            "200ms",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create sick");
    poll_until(T, "unhealthy tasks replaced", || {
        tasks(&c, "m1", "sick")
            .iter()
            .filter(|t| {
                t["CurrentState"] == "failed"
                    && t["Error"].as_str().unwrap_or("").contains("unhealthy")
            })
            .count()
            >= 2
    });
}

#[test]
fn spread_constraints_and_a_leader_killed_during_a_scale_up() {
    let _serial = cluster_tests::cluster::serial();
    let hosts = ["m1", "m2", "m3", "w1", "w2", "w3"];
    let c = ClusterLab::new(&hosts, "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    for w in ["w1", "w2", "w3"] {
        c.join_worker(w, "m1");
    }
    c.load_busybox(&hosts);
    poll_until(T, "6 ready nodes", || {
        c.nodes("m1", false)
            .iter()
            .filter(|n| n["Status"] == "ready")
            .count()
            == 6
    });

    // 12 replicas over 6 nodes: 2 each.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "12",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create web");
    poll_until(T, "2 per node", || {
        running_total(&c, &hosts, "web") == vec![2; 6]
    });

    // Only workers, at most one per node: 3 run, the 4th waits with its reason.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "pinned",
            "--replicas",
            "4",
            "--constraint",
            "node.role==worker",
            "--replicas-max-per-node",
            "1",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create pinned");
    poll_until(T, "3 pinned on workers, 1 pending", || {
        let t = tasks(&c, "m1", "pinned");
        running_total(&c, &hosts, "pinned") == vec![0, 0, 0, 1, 1, 1]
            && t.iter().any(|t| {
                t["CurrentState"] == "pending"
                    && t["Error"]
                        .as_str()
                        .unwrap_or("")
                        .contains("max replicas per node")
            })
    });

    // Scale up and kill the leader right away: exactly 24 run in the end.
    let leader = c.wait_leader(T);
    let via = hosts[..3]
        .iter()
        .find(|h| **h != leader)
        .unwrap()
        .to_string();
    // The pinned tasks' containers: they must survive the failover (the
    // workers open sessions with the new leader and keep them running).
    let pinned_containers = |t: Vec<serde_json::Value>| -> Vec<String> {
        let mut ids: Vec<String> = t
            .iter()
            .filter(|t| t["CurrentState"] == "running")
            .filter_map(|t| t["ContainerID"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let pinned_before = pinned_containers(tasks(&c, "m1", "pinned"));
    assert_eq!(pinned_before.len(), 3, "3 pinned tasks run");
    c.cli(&via, &["service", "scale", "-d", "web=24"])
        .ok("scale");
    c.node(&leader).proc.kill9();
    poll_until(T, "24 running tasks", || {
        let out = c.cli(&via, &["service", "ps", "web", "--format", "json"]);
        out.code == 0
            && out
                .stdout
                .lines()
                .filter(|l| {
                    l.contains("\"CurrentState\":\"running\"")
                        && l.contains("\"DesiredState\":\"running\"")
                })
                .count()
                == 24
    });
    assert_eq!(
        pinned_containers(tasks(&c, &via, "pinned")),
        pinned_before,
        "the workers' containers kept running through the failover"
    );
    c.resume_manager(&leader, &[]);
    poll_until(
        T,
        "exactly 24 containers once the old leader is back",
        || running_total(&c, &hosts, "web").iter().sum::<usize>() == 24,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(running_total(&c, &hosts, "web").iter().sum::<usize>(), 24);
}

/// `service logs -f` through a follower manager: new lines stream as they
/// are written, and a task started later joins the stream.
fn follow_logs_through(c: &ClusterLab, via: &str) {
    c.cli(
        via,
        &[
            "service",
            "create",
            "--name",
            "chat",
            "--replicas",
            "1",
            "busybox",
            "sh",
            "-c",
            "i=0; while true; do echo line $i from $(hostname); i=$((i+1)); sleep 0.3; done",
        ],
    )
    .ok("create chat");
    let mut child = std::process::Command::new(cluster_tests::bin("flotilla"))
        .arg("-H")
        .arg(c.node(via).socket)
        .args(["service", "logs", "-f", "--no-task-ids", "chat"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run flotilla service logs -f");
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let seen = std::sync::Arc::clone(&seen);
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                let mut s = seen.lock().unwrap_or_else(|e| e.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
    }
    let text = || seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    // The first answer holds what was written so far; lines written after
    // it keep coming: wait for a line number well past the start.
    let first_line = |t: &str| -> Option<u64> {
        t.lines()
            .find_map(|l| l.strip_prefix("line ")?.split(' ').next()?.parse().ok())
    };
    poll_until(T, "a first followed line", || first_line(&text()).is_some());
    let start = first_line(&text()).unwrap_or(0);
    poll_until(T, "lines written after the follow started", || {
        text().contains(&format!("line {} ", start + 8))
    });
    // A second task started later is followed too.
    c.cli(via, &["service", "scale", "chat=2"])
        .ok("scale chat=2");
    poll_until(T, "lines of the second task", || {
        let t = text();
        let hosts: std::collections::HashSet<&str> =
            t.lines().filter_map(|l| l.split(" from ").nth(1)).collect();
        hosts.len() == 2
    });
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the follow is still running"
    );
    let _ = child.kill();
    let _ = child.wait();
    c.cli(via, &["service", "rm", "chat"]).ok("rm chat");
}

#[test]
fn sessions_report_capacity_logs_follow_and_start_first_drains() {
    let _serial = cluster_tests::cluster::serial();
    let hosts = ["m1", "m2", "m3", "w1"];
    let c = ClusterLab::new(&hosts, "300ms");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    c.join_worker("w1", "m1");
    c.load_busybox(&hosts);
    poll_until(T, "4 ready nodes", || {
        c.nodes("m1", false)
            .iter()
            .filter(|n| n["Status"] == "ready")
            .count()
            == 4
    });

    // Every node reported its capacity when its session opened.
    let nodes = c.nodes("m1", false);
    let mut most_memory = 0u64;
    for n in &nodes {
        let memory = n["Resources"]["memory_bytes"].as_u64().unwrap_or(0);
        let cpus = n["Resources"]["nano_cpus"].as_u64().unwrap_or(0);
        assert!(memory > 0 && cpus >= 1_000_000_000, "capacity of {n}");
        most_memory = most_memory.max(memory);
    }
    // A reservation larger than any node: refused at create (no node could
    // ever run it), nothing stored.
    let too_much = (most_memory + (1 << 30)).to_string();
    let out = c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "huge",
            "--reserve-memory",
            &too_much,
            "busybox",
        ],
    );
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(out.stderr.contains("more than any node"), "{}", out.stderr);
    // One that fits a node alone, more times than there are nodes (the lab's
    // hosts share one machine, so have the same memory): the one left over
    // is pending, with the reason.
    let three_quarters = (most_memory / 4 * 3).to_string();
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "big",
            "--replicas",
            "5",
            "--reserve-memory",
            &three_quarters,
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create big");
    poll_until(T, "a big task pending for lack of memory", || {
        tasks(&c, "m1", "big").iter().any(|t| {
            t["CurrentState"] == "pending"
                && t["Message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("insufficient memory on 4 nodes")
        })
    });
    c.cli("m1", &["service", "rm", "big"]).ok("rm big");

    // service logs -f through a follower.
    let leader = c.wait_leader(T);
    let follower = ["m1", "m2", "m3"]
        .into_iter()
        .find(|h| *h != leader)
        .expect("a follower");
    follow_logs_through(&c, follower);

    // A start-first service on a drained node: the replacement runs before
    // the old task stops.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "--name",
            "sf",
            "--replicas",
            "1",
            "--update-order",
            "start-first",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("create sf");
    drain_start_first(&c, &tasks(&c, "m1", "sf"));
}

/// Drains the node of the running task in `running` (of service `sf`) and
/// checks the replacement was running before the old task stopped.
fn drain_start_first(c: &ClusterLab, running: &[serde_json::Value]) {
    let old = running
        .iter()
        .find(|t| t["CurrentState"] == "running" && t["DesiredState"] == "running")
        .expect("a running sf task")
        .clone();
    let node = old["Node"].as_str().expect("node").to_string();
    let old_id = old["ID"].as_str().expect("id").to_string();
    c.cli("m1", &["node", "update", "--availability", "drain", &node])
        .ok("drain");
    let mut history = Vec::new();
    poll_until(T, "the old sf task shut down and a new one running", || {
        history = tasks(c, "m1", "sf");
        let old_done = history
            .iter()
            .any(|t| t["ID"] == old_id && t["CurrentState"] == "shutdown");
        let new_running = history
            .iter()
            .any(|t| t["ID"] != old_id && t["CurrentState"] == "running" && t["Node"] != node);
        old_done && new_running
    });
    let old = history.iter().find(|t| t["ID"] == old_id).expect("old");
    let new = history
        .iter()
        .find(|t| t["ID"] != old_id && t["CurrentState"] == "running")
        .expect("new");
    let new_running_at = new["RunningAt"].as_u64().expect("RunningAt");
    let old_stopped_at = old["UpdatedAt"].as_u64().expect("UpdatedAt");
    assert!(
        new_running_at < old_stopped_at,
        "start-first: the replacement ran ({new_running_at}) before the old task stopped ({old_stopped_at})\n{history:?}"
    );
    c.cli("m1", &["node", "update", "--availability", "active", &node])
        .ok("activate");
    c.cli("m1", &["service", "rm", "sf"]).ok("rm sf");
}

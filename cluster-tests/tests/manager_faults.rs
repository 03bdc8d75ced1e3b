//! Managers under faults (issue 16), on lab hosts: a manager that missed
//! many large writes catches up and the cluster keeps its fault tolerance;
//! `node ls` says when it cannot lose another manager; a read without a
//! quorum says so plainly; managers joining at once all become voters.

use std::time::Duration;

use cluster_tests::cluster::ClusterLab;
use cluster_tests::poll_until;

const T: Duration = Duration::from_secs(60);

fn ready_count(nodes: &[serde_json::Value]) -> usize {
    nodes.iter().filter(|n| n["Status"] == "ready").count()
}

/// The `cluster info` entry of the manager on `host`, as `via` reports it.
fn manager_entry(c: &ClusterLab, via: &str, host: &str) -> serde_json::Value {
    let addr = c.node(host).addr.clone();
    let info = c.info(via);
    info["Managers"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["Addr"] == addr.as_str()).cloned())
        .unwrap_or(serde_json::Value::Null)
}

#[test]
#[ignore = "the catch-up step times out on a machine loaded by parallel builds (the same as raft_catch_up's log test): being investigated; run with --ignored"]
fn a_manager_that_missed_large_writes_catches_up_and_quorum_loss_is_explained() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3"], "1s");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    poll_until(T, "3 ready managers", || {
        ready_count(&c.nodes("m1", false)) == 3
    });
    let leader = c.wait_leader(T);
    let followers: Vec<&str> = ["m1", "m2", "m3"]
        .into_iter()
        .filter(|h| *h != leader)
        .collect();
    let (lagging, other) = (followers[0], followers[1]);

    // One follower down while the leader's node grows to ~56 KB of labels,
    // rewritten 150 times (each Raft entry carries the whole node).
    c.node(lagging).proc.kill9();
    let value = "v".repeat(4000);
    for i in 0..150 {
        let label = format!("big{}={i}{value}", i % 14);
        c.cli(&leader, &["node", "update", "--label-add", &label, &leader])
            .ok("node update");
    }
    // Two of three managers left: exactly a quorum.
    let ls = c.cli(&leader, &["node", "ls"]);
    assert_eq!(ls.code, 0, "{}", ls.stderr);
    assert!(
        ls.stderr.contains("cannot lose another manager"),
        "node ls warns: {}",
        ls.stderr
    );
    // An oversized label set is refused at the API, naming the limit.
    let huge = format!("huge={}", "x".repeat(5000));
    let out = c.cli(&leader, &["node", "update", "--label-add", &huge, &leader]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("at most 4096"), "{}", out.stderr);

    // Back: it catches up (reachable, not lagging, a voter).
    c.resume_manager(lagging, &[]);
    poll_until(T, "the restarted manager to catch up", || {
        let m = manager_entry(&c, &leader, lagging);
        m["Reachability"] == "reachable" && m["Voter"] == true && m.get("Lag").is_none()
    });
    let ls = c.cli(&leader, &["node", "ls"]);
    assert!(
        !ls.stderr.contains("WARNING"),
        "no warning with every manager back: {}",
        ls.stderr
    );

    // The other follower goes: the two left still commit.
    c.node(other).proc.kill9();
    poll_until(T, "a write with one manager down", || {
        c.cli(
            &leader,
            &["node", "update", "--label-add", "after=1", &leader],
        )
        .code
            == 0
    });

    // Both followers down: a read says no quorum is reachable, plainly.
    c.node(lagging).proc.kill9();
    let out = c.cli(&leader, &["node", "ls"]);
    assert_ne!(out.code, 0, "{}", out.stdout);
    assert!(
        out.stderr.contains("no quorum of managers is reachable")
            && out.stderr.contains("node ls --local"),
        "{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("ManagerNode") && !out.stderr.contains("voters:["),
        "no Rust structures: {}",
        out.stderr
    );
    // And `--local` answers.
    assert_eq!(c.nodes(&leader, true).len(), 3);
}

#[test]
fn managers_joining_at_once_all_become_voters() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "m3", "m4"], "1s");
    c.init("m1");
    std::thread::scope(|s| {
        for h in ["m2", "m3", "m4"] {
            let c = &c;
            s.spawn(move || c.join_manager(h, "m1"));
        }
    });
    poll_until(T, "four voters", || {
        let info = c.info("m1");
        let ms = info["Managers"].as_array().cloned().unwrap_or_default();
        ms.len() == 4 && ms.iter().all(|m| m["Voter"] == true)
    });
    let leader = c.wait_leader(T);
    c.node(&leader).proc.kill9();
    poll_until(T, "a new leader", || {
        ["m1", "m2", "m3", "m4"]
            .iter()
            .filter(|h| **h != leader)
            .any(|h| c.leader(h).is_some_and(|l| l != leader))
    });
}

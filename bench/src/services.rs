//! `flotilla-bench services`: real nodes on lab hosts (`cluster_tests::cluster`),
//! real busybox containers:
//!
//! - `service create --replicas N` → N tasks running, on one node;
//! - a worker's death → its replicas running on the other nodes, two ways:
//!   its daemon killed (`kill -9`: the kernel closes its session with the
//!   leader) and its host cut off the network (silence: missed heartbeats);
//! - `node update --availability drain` of a node holding 50 tasks → all 50
//!   running elsewhere.
//!
//! Binaries come from `FLOTILLA_BIN_DIR` (point it at `target/release`).

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cluster_tests::cluster::ClusterLab;

/// Running tasks of `service`, by node hostname.
fn running(c: &ClusterLab, service: &str) -> Vec<String> {
    let out = c.cli("m1", &["service", "ps", service, "--format", "json"]);
    out.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|t| t["CurrentState"] == "running" && t["DesiredState"] == "running")
        .map(|t| t["Node"].as_str().unwrap_or("").to_string())
        .collect()
}

fn wait(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while !done() {
        if t0.elapsed() > timeout {
            bail!("{what}: not reached within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(t0.elapsed())
}

/// Runs of each way a worker can die.
const DEATH_RUNS: usize = 3;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// `web`: 12 replicas over m1, w1 and w2, all running.
fn start_web(c: &ClusterLab) -> Result<()> {
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "web",
            "--replicas",
            "12",
            "busybox",
            "sleep",
            "100000",
        ],
    )
    .ok("create web");
    wait("12 running", Duration::from_secs(120), || {
        running(c, "web").len() == 12
    })?;
    Ok(())
}

/// Runs the services benchmark.
pub fn run(replicas: usize, heartbeat: &str, create_only: bool) -> Result<()> {
    // 1. create → N running on one node.
    {
        let c = ClusterLab::new(&["m1"], heartbeat).with_sandbox_pool(8);
        c.init("m1");
        c.load_busybox(&["m1"]);
        let n = replicas.to_string();
        let t0 = Instant::now();
        c.cli(
            "m1",
            &[
                "service",
                "create",
                "-d",
                "--name",
                "bench",
                "--replicas",
                &n,
                "busybox",
                "sleep",
                "100000",
            ],
        )
        .ok("service create");
        wait("all replicas running", Duration::from_secs(600), || {
            running(&c, "bench").len() == replicas
        })?;
        let dt = t0.elapsed();
        println!(
            "service create --replicas {replicas} -> {replicas} running on one node: {:.2} s ({:.1} ms per task)",
            dt.as_secs_f64(),
            dt.as_secs_f64() * 1e3 / replicas as f64
        );
        c.cli("m1", &["service", "rm", "bench"]).ok("service rm");
        let _ = wait("containers gone", Duration::from_secs(120), || {
            c.cli("m1", &["ps", "-q"]).stdout.trim().is_empty()
        });
    }
    if create_only {
        return Ok(());
    }
    // 2. a worker dies → its replicas run elsewhere; 3. drain 50 tasks.
    {
        let c = ClusterLab::new(&["m1", "w1", "w2"], heartbeat).with_sandbox_pool(8);
        c.init("m1");
        c.join_worker("w1", "m1");
        c.join_worker("w2", "m1");
        c.load_busybox(&["m1", "w1", "w2"]);
        let mut killed = Vec::new();
        let mut cut = Vec::new();
        for run in 0..DEATH_RUNS * 2 {
            // Even runs: the worker's daemon is killed (the kernel closes its
            // session). Odd runs: its host is cut off the network (the
            // session stays open, silent: missed heartbeats).
            let kill = run % 2 == 0;
            start_web(&c)?;
            let on_w2 = running(&c, "web").iter().filter(|n| *n == "w2").count();
            let t0 = Instant::now();
            if kill {
                c.node("w2").proc.kill9();
            } else {
                c.lab.host("w2").cut_off();
            }
            wait("replicas restored", Duration::from_secs(120), || {
                let r = running(&c, "web");
                r.len() == 12 && !r.iter().any(|n| n == "w2")
            })?;
            let took = t0.elapsed().as_secs_f64();
            println!(
                "  run {}: {} ({on_w2} of 12 replicas on it) -> all 12 running elsewhere: {took:.2} s",
                run / 2 + 1,
                if kill { "worker daemon killed (kill -9)" } else { "worker host cut off" },
            );
            if kill {
                killed.push(took);
            } else {
                cut.push(took);
            }
            c.cli("m1", &["service", "rm", "web"]).ok("rm web");
            wait("web gone", Duration::from_secs(120), || {
                running(&c, "web").is_empty()
            })?;
            if kill {
                c.resume_worker("w2");
            } else {
                c.lab.host("w2").heal();
            }
            wait("w2 ready again", Duration::from_secs(60), || {
                c.nodes("m1", false)
                    .iter()
                    .any(|n| n["Hostname"] == "w2" && n["Status"] == "ready")
            })?;
            // Its stale containers stop once it is back.
            wait("w2 empty", Duration::from_secs(60), || {
                c.cli("w2", &["ps", "-q"]).stdout.trim().is_empty()
            })?;
        }
        println!(
            "worker daemon killed -> its replicas running elsewhere (heartbeat {heartbeat}, {DEATH_RUNS} runs): median {:.2} s",
            median(&mut killed)
        );
        println!(
            "worker host cut off -> its replicas running elsewhere (heartbeat {heartbeat}, {DEATH_RUNS} runs): median {:.2} s",
            median(&mut cut)
        );

        c.cli(
            "m1",
            &[
                "service",
                "create",
                "-d",
                "--name",
                "drainme",
                "--replicas",
                "100",
                "--constraint",
                "node.hostname!=w2",
                "busybox",
                "sleep",
                "100000",
            ],
        )
        .ok("create drainme");
        wait("100 running", Duration::from_secs(600), || {
            running(&c, "drainme").len() == 100
        })?;
        let on_w1 = running(&c, "drainme").iter().filter(|n| *n == "w1").count();
        let t0 = Instant::now();
        c.cli("m1", &["node", "update", "--availability", "drain", "w1"])
            .ok("drain");
        wait("drained", Duration::from_secs(600), || {
            let r = running(&c, "drainme");
            r.len() == 100 && !r.iter().any(|n| n == "w1")
        })?;
        println!(
            "drain of a node holding {on_w1} tasks -> all running elsewhere: {:.2} s",
            t0.elapsed().as_secs_f64()
        );
    }
    println!("(Docker swarm side by side: bench/swarm-compare.sh)");
    Ok(())
}

//! `flotilla-bench cluster`: three real managers on lab hosts (network and
//! UTS namespaces on this machine, `cluster_tests::cluster`):
//!
//! - leader failover: `kill -9` of the leader → the first write acknowledged
//!   through a surviving manager (which forwards it to the new leader), per
//!   run, median over the runs;
//! - committed writes per second through the control API (`node update`, one
//!   at a time, fsync on), sent to the leader and to a follower;
//! - committed objects per second through Raft in process (3 members over
//!   TCP on 127.0.0.1, fsync on), one at a time and batched.
//!
//! Binaries come from `FLOTILLA_BIN_DIR` (build with `--release` and point it
//! at `target/release`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use agent_common::control_proto::control_client::ControlClient;
use agent_common::control_proto::UpdateNodeRequest;
use anyhow::{anyhow, Result};
use cluster_tests::cluster::ClusterLab;
use tonic::transport::{Channel, Endpoint};

async fn control(socket: &str) -> Result<ControlClient<Channel>> {
    let path = PathBuf::from(
        socket
            .strip_prefix("unix://")
            .ok_or_else(|| anyhow!("not a unix socket: {socket}"))?,
    );
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                let s = tokio::net::UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await?;
    Ok(ControlClient::new(channel))
}

async fn write(c: &mut ControlClient<Channel>, node: &str, key: &str, value: &str) -> Result<()> {
    c.update_node(UpdateNodeRequest {
        node: node.into(),
        availability: String::new(),
        label_add: vec![format!("{key}={value}")],
        label_rm: vec![],
        ..Default::default()
    })
    .await?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs the cluster benchmark.
pub fn run(runs: usize, writes: usize) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let c = ClusterLab::new(&["m1", "m2", "m3"], "1s");
    c.init("m1");
    c.join_manager("m2", "m1");
    c.join_manager("m3", "m1");
    let hosts = ["m1", "m2", "m3"];
    let wait_three = |c: &ClusterLab| {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = hosts.iter().all(|h| {
                c.cli(h, &["cluster", "info", "--local", "--format", "json"])
                    .code
                    == 0
            }) && c
                .cli("m1", &["cluster", "info", "--format", "json"])
                .stdout
                .matches("\"reachable\"")
                .count()
                == 3;
            if ok {
                return;
            }
            assert!(Instant::now() < deadline, "the cluster did not settle");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_three(&c);

    // --- failover ---
    println!("leader failover: kill -9 of the leader -> first acknowledged write ({runs} runs; Raft heartbeat 50 ms, election timeout 200-400 ms)");
    let mut failovers = Vec::new();
    for run in 0..runs {
        let leader = c.wait_leader(Duration::from_secs(30));
        let survivor = *hosts.iter().find(|h| **h != leader).unwrap_or(&"m1");
        let socket = c.node(survivor).socket.clone();
        let mut client = rt.block_on(control(&socket))?;
        // Warm the connection so only the failover is timed.
        rt.block_on(write(&mut client, "self", "warm", &run.to_string()))?;
        let t0 = Instant::now();
        c.node(&leader).proc.kill9();
        let elapsed = loop {
            match rt.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(10),
                    write(&mut client, "self", "failover", &run.to_string()),
                )
                .await
            }) {
                Ok(Ok(())) => break t0.elapsed(),
                _ if t0.elapsed() > Duration::from_secs(60) => {
                    return Err(anyhow!("no write acknowledged within 60 s of the kill"))
                }
                _ => {}
            }
        };
        println!(
            "  run {run:>2}: {:>7.1} ms (killed {leader})",
            elapsed.as_secs_f64() * 1e3
        );
        failovers.push(elapsed);
        c.resume_manager(&leader, &[]);
        wait_three(&c);
    }
    let m = median(failovers.clone());
    let (min, max) = (
        failovers.iter().min().copied().unwrap_or_default(),
        failovers.iter().max().copied().unwrap_or_default(),
    );
    println!(
        "  median {:.0} ms (min {:.0}, max {:.0}); swarm's default election is about 10 s -> {:.0}x faster",
        m.as_secs_f64() * 1e3,
        min.as_secs_f64() * 1e3,
        max.as_secs_f64() * 1e3,
        10.0 / m.as_secs_f64()
    );

    // --- control API writes ---
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = *hosts.iter().find(|h| **h != leader).unwrap_or(&"m1");
    println!("committed writes through the control API (node update, fsync on, one at a time, {writes} each):");
    for (label, host) in [
        ("to the leader", leader.as_str()),
        ("to a follower (forwarded)", follower),
    ] {
        let mut client = rt.block_on(control(&c.node(host).socket))?;
        let t0 = Instant::now();
        for i in 0..writes {
            rt.block_on(write(
                &mut client,
                "self",
                &format!("k{}", i % 50),
                &i.to_string(),
            ))?;
        }
        let dt = t0.elapsed();
        println!(
            "  {label:<28} {:>7.0} writes/s ({:.2} ms each)",
            writes as f64 / dt.as_secs_f64(),
            dt.as_secs_f64() * 1e3 / writes as f64
        );
    }
    drop(c);

    // --- Raft in process ---
    println!(
        "committed objects through Raft in process (3 members over TCP on 127.0.0.1, fsync on):"
    );
    rt.block_on(async {
        let dir = tempfile::tempdir()?;
        let lc = manager::raft::local_cluster::LocalCluster::start(
            dir.path(),
            3,
            manager::raft::RaftOptions::default(),
        )
        .await?;
        lc.wait_leader(Duration::from_secs(10))
            .await
            .ok_or_else(|| anyhow!("no leader"))?;
        for (label, entries, per_entry, conc) in [
            ("one at a time", 300, 1, 1),
            ("64 writers, 1 object each", 3_000, 1, 64),
            ("batched, 100 objects/entry, 8 writers", 400, 100, 8),
            ("batched, 1000 objects/entry, 4 writers", 40, 1000, 4),
        ] {
            let t = lc.measure_writes(entries, per_entry, conc).await?;
            println!(
                "  {label:<40} {:>8.0} objects/s ({:.0} entries/s)",
                t.objects_per_sec(),
                t.entries_per_sec()
            );
        }
        lc.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(())
}

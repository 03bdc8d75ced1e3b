//! Raft catch-up (in process, 3 members over TCP on 127.0.0.1, fsync on,
//! the daemon's 50 ms heartbeat): how long a follower that missed N entries
//! takes to catch up, and the leader's write throughput while it does,
//! next to the throughput with the follower up the whole time.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};
use manager::raft::local_cluster::LocalCluster;
use manager::raft::RaftOptions;

/// `flotilla-bench catch-up`: for each N in `missed`.
pub fn run(missed: &[usize], writes: usize) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    println!("Raft catch-up (3 members in process, fsync on, 50 ms heartbeat):");
    rt.block_on(async {
        for &n in missed {
            let dir = tempfile::tempdir()?;
            let mut c = LocalCluster::start(dir.path(), 3, RaftOptions::fast_failover()).await?;
            let leader = c
                .wait_leader(Duration::from_secs(10))
                .await
                .ok_or_else(|| anyhow!("no leader"))?;
            let follower = c
                .running()
                .into_iter()
                .find(|i| *i != leader)
                .ok_or_else(|| anyhow!("no follower"))?;
            let base = c.measure_writes(writes, 1, 16).await?;
            c.stop(follower).await;
            c.measure_writes(n, 1, 16).await?;
            let target = c
                .node(leader)
                .metrics()
                .last_applied
                .map(|l| l.index)
                .unwrap_or(0);
            let start = Instant::now();
            c.restart(follower).await?;
            let during = c.measure_writes(writes, 1, 16).await?;
            loop {
                let have = c
                    .node(follower)
                    .metrics()
                    .last_applied
                    .map(|l| l.index)
                    .unwrap_or(0);
                if have >= target {
                    break;
                }
                if start.elapsed() > Duration::from_secs(600) {
                    return Err(anyhow!("follower did not catch up {n} entries in 10 min"));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let caught = start.elapsed();
            println!(
                "  missed {n:>6} entries: caught up in {:>6.2} s; leader writes/s while catching up {:>6.0} vs {:>6.0} with the follower up",
                caught.as_secs_f64(),
                during.entries_per_sec(),
                base.entries_per_sec()
            );
            c.shutdown().await;
        }
        Ok::<_, anyhow::Error>(())
    })
}

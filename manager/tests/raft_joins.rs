//! Managers joining at the same moment all end voters (membership changes
//! queue on the leader instead of failing with "already undergoing a
//! configuration change"), and the grown cluster survives losing its leader.

use std::collections::BTreeSet;
use std::time::Duration;

use manager::raft::local_cluster::LocalCluster;
use manager::raft::{NodeId, RaftOptions};

async fn joiners_all_become_voters(joiners: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = LocalCluster::start(dir.path(), 1, RaftOptions::fast_failover()).await?;
    c.wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader is elected");
    let mut records = Vec::new();
    for id in 2..=joiners + 1 {
        records.push((id, c.start_empty(id).await?));
    }
    // All at once, as `flotilla-manager join` run on several hosts in
    // parallel asks the existing manager.
    let adds = records.iter().map(|(id, rec)| {
        let c = &c;
        async move { c.node(1).add_manager(*id, rec.clone()).await }
    });
    for res in futures_join_all(adds).await {
        res?;
    }
    let voters: BTreeSet<NodeId> = c.node(1).members().await?.voters();
    let want: BTreeSet<NodeId> = (1..=joiners + 1).collect();
    assert_eq!(voters, want, "every joiner is a voter");

    // The grown cluster elects a new leader when the leader goes.
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader");
    c.stop(leader).await;
    let next = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a new leader is elected after the old one stopped");
    assert_ne!(next, leader);
    c.node(next)
        .store()
        .create(agent_common::objects::Service {
            name: "after-failover".into(),
            image: "busybox".into(),
            replicas: 1,
            ..Default::default()
        })
        .await?;
    c.shutdown().await;
    Ok(())
}

/// Run the futures concurrently and collect their results in order.
async fn futures_join_all<F: std::future::Future>(futs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futs {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_managers_joining_at_once_both_become_voters() -> anyhow::Result<()> {
    for _ in 0..5 {
        joiners_all_become_voters(2).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_joining_at_once_all_become_voters() -> anyhow::Result<()> {
    for _ in 0..5 {
        joiners_all_become_voters(3).await?;
    }
    Ok(())
}

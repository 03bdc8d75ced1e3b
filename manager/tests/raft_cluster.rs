//! In-process multi-manager tests: three Raft members on 127.0.0.1 ports
//! chosen by the kernel, talking over the tonic transport.

use std::time::{Duration, Instant};

use agent_common::objects::{Kind, Service};
use manager::raft::local_cluster::LocalCluster;
use manager::raft::RaftOptions;
use manager::store::Action;

fn svc(name: &str) -> Service {
    Service {
        name: name.into(),
        image: "busybox".into(),
        replicas: 1,
        ..Default::default()
    }
}

/// Poll `f` until it returns true or the deadline passes.
async fn poll_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn count_services(c: &LocalCluster, id: u64) -> usize {
    c.node(id).store().view(|tx| tx.list::<Service>().len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_fail_over_and_refuse_stale_writes() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = LocalCluster::start(dir.path(), 3, RaftOptions::default()).await?;
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader is elected");

    // A write through the leader reaches every member.
    let web = c.node(leader).store().create(svc("web")).await?;
    for id in c.running() {
        poll_until("replication", Duration::from_secs(5), || {
            count_services(&c, id) == 1
        })
        .await;
        let copy = c
            .node(id)
            .store()
            .view(|tx| tx.get::<Service>(&web.meta.id));
        assert_eq!(copy.as_ref(), Some(&web), "member {id} has the same object");
    }

    // An update naming a stale version is refused, as a whole batch, by Raft.
    let mut v2 = web.clone();
    v2.replicas = 2;
    let v2 = c.node(leader).store().put(v2).await?;
    assert!(v2.meta.version > web.meta.version);
    let mut stale = web.clone();
    stale.replicas = 7;
    let err = c
        .node(leader)
        .store()
        .update(vec![
            Action::Create(svc("side-effect").into()),
            Action::Update(stale.into()),
        ])
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "expected a conflict, got {err}");
    assert!(c
        .node(leader)
        .store()
        .view(|tx| tx.get_by_name::<Service>("side-effect"))
        .is_none());

    // A write sent to a follower is forwarded to the leader, and the
    // follower has applied it by the time the write returns.
    let follower = c.running().into_iter().find(|id| *id != leader).unwrap();
    let x = c.node(follower).store().create(svc("x")).await?;
    assert!(c
        .node(follower)
        .store()
        .view(|tx| tx.get::<Service>(&x.meta.id))
        .is_some());

    // Linearizable reads on the leader see the last write.
    let n = c
        .node(leader)
        .store()
        .read_linearizable(|tx| tx.get::<Service>(&web.meta.id).map(|s| s.replicas))
        .await?;
    assert_eq!(n, Some(2));
    // A follower serves one too (through the leader's read index).
    let n = c
        .node(follower)
        .store()
        .read_linearizable(|tx| tx.get::<Service>(&web.meta.id).map(|s| s.replicas))
        .await?;
    assert_eq!(n, Some(2));

    // Kill the leader: the others elect a new one and writes continue.
    let t = Instant::now();
    c.stop(leader).await;
    let new_leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a new leader is elected");
    assert_ne!(new_leader, leader);
    let mut attempts = 0;
    let api = loop {
        match c
            .node(new_leader)
            .store()
            .create(svc("after-failover"))
            .await
        {
            Ok(s) => break s,
            Err(e) if attempts < 50 => {
                attempts += 1;
                eprintln!("retrying after failover: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    eprintln!(
        "failover: first write committed {:?} after the leader was stopped",
        t.elapsed()
    );
    for id in c.running() {
        poll_until("replication after failover", Duration::from_secs(5), || {
            c.node(id)
                .store()
                .view(|tx| tx.get::<Service>(&api.meta.id).is_some())
        })
        .await;
    }
    // The old state survived the failover.
    let kept = c
        .node(new_leader)
        .store()
        .read_linearizable(|tx| tx.get::<Service>(&web.meta.id))
        .await?;
    assert_eq!(kept.map(|s| s.replicas), Some(2));

    // Deletes replicate too.
    c.node(new_leader)
        .store()
        .update(vec![Action::Delete {
            kind: Kind::Service,
            id: web.meta.id.clone(),
            version: Some(v2.meta.version),
        }])
        .await?;
    for id in c.running() {
        poll_until("delete replication", Duration::from_secs(5), || {
            count_services(&c, id) == 2
        })
        .await;
    }
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_follower_catches_up_from_log_and_from_snapshot() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = RaftOptions {
        snapshot_after_logs: 20,
        keep_logs_after_snapshot: 0,
        ..RaftOptions::default()
    };
    let mut c = LocalCluster::start(dir.path(), 3, options).await?;
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = c.running().into_iter().find(|id| *id != leader).unwrap();

    for i in 0..5 {
        c.node(leader).store().create(svc(&format!("a{i}"))).await?;
    }
    poll_until("initial replication", Duration::from_secs(5), || {
        count_services(&c, follower) == 5
    })
    .await;

    // Down briefly: catches up from the log.
    c.stop(follower).await;
    for i in 0..3 {
        c.node(leader).store().create(svc(&format!("b{i}"))).await?;
    }
    c.restart(follower).await?;
    // Its tables came back from its own redb file before any catch-up.
    assert!(count_services(&c, follower) >= 5);
    poll_until("catch-up from the log", Duration::from_secs(10), || {
        count_services(&c, follower) == 8
    })
    .await;

    // Down longer: the leader snapshots and purges the entries it missed,
    // so it must catch up from a snapshot.
    c.stop(follower).await;
    for i in 0..60 {
        c.node(leader).store().create(svc(&format!("c{i}"))).await?;
    }
    poll_until("leader log purge", Duration::from_secs(10), || {
        let m = c.node(leader).metrics();
        m.purged.map(|p| p.index).unwrap_or(0) > 20
    })
    .await;
    let mut watch = {
        c.restart(follower).await?;
        c.node(follower).store().watch()
    };
    poll_until("catch-up from a snapshot", Duration::from_secs(15), || {
        count_services(&c, follower) == 68
    })
    .await;
    let m = c.node(follower).metrics();
    assert!(
        m.snapshot.is_some(),
        "the follower installed a snapshot: {m:?}"
    );
    // Watchers on the follower saw the catch-up as committed changes.
    let first = watch.recv().await?;
    assert!(!first.changes.is_empty());

    // Same objects and versions on every member.
    let leader_view = c.node(leader).store().view(|tx| tx.list::<Service>());
    let follower_view = c.node(follower).store().view(|tx| tx.list::<Service>());
    assert_eq!(leader_view, follower_view);
    c.shutdown().await;
    Ok(())
}

/// Committed writes per second through Raft, fsync on (redb Immediate for the
/// log on every member). Run with
/// `cargo test -p manager --release --test raft_cluster -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn raft_write_throughput() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let c = LocalCluster::start(dir.path(), 3, RaftOptions::default()).await?;
    c.wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    for (label, entries, per_entry, conc) in [
        ("one at a time (1 action/entry, 1 in flight)", 300, 1, 1),
        (
            "concurrent singles (1 action/entry, 64 in flight)",
            3_000,
            1,
            64,
        ),
        ("batched (100 actions/entry, 1 in flight)", 100, 100, 1),
        ("batched (100 actions/entry, 8 in flight)", 400, 100, 8),
    ] {
        let t = c.measure_writes(entries, per_entry, conc).await?;
        println!(
            "{label}: {} entries / {} objects in {:.2?}: {:.0} entries/s, {:.0} objects/s",
            t.entries,
            t.objects,
            t.elapsed,
            t.entries_per_sec(),
            t.objects_per_sec()
        );
    }
    c.shutdown().await;
    Ok(())
}

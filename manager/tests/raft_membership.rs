//! Membership and leader transparency on real in-process clusters (Raft
//! members on 127.0.0.1 ports chosen by the kernel, over the tonic
//! transport): adding and removing managers, the quorum refusals, writes and
//! linearizable reads on followers (also across a leader change), and
//! `--force-new-cluster`.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::objects::Service;
use manager::raft::local_cluster::LocalCluster;
use manager::raft::{MembershipError, NodeId, RaftOptions};
use manager::store::{Refusal, Store, StoreError};

fn svc(name: &str) -> Service {
    Service {
        name: name.into(),
        image: "busybox".into(),
        replicas: 1,
        ..Default::default()
    }
}

/// Poll `f` until it returns true or the deadline passes.
async fn poll_until<F, Fut>(what: &str, timeout: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn names(store: &Store) -> BTreeSet<String> {
    store.view(|tx| tx.list::<Service>().into_iter().map(|s| s.name).collect())
}

/// Create `name` until it is known to be committed: retries retryable and
/// indeterminate failures; a `NameInUse` answer means an earlier attempt
/// whose outcome was unknown did commit.
async fn create_until_committed(store: &Store, name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match store.create(svc(name)).await {
            Ok(_) => return Ok(()),
            Err(StoreError::Refused(Refusal::NameInUse { .. })) => return Ok(()),
            Err(e @ StoreError::Refused(_)) => return Err(e.into()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("retrying {name}: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn follower_of(c: &LocalCluster, leader: NodeId) -> NodeId {
    c.running().into_iter().find(|id| *id != leader).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_writes_and_reads_are_forwarded_across_a_leader_change() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = LocalCluster::start(dir.path(), 3, RaftOptions::default()).await?;
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = follower_of(&c, leader);
    let store = c.node(follower).store().clone();

    // A numbered sequence of writes issued on the follower; every write the
    // writer saw acknowledged is recorded, and must be readable on the
    // follower at once (read-your-writes through the read index).
    let acked = Arc::new(Mutex::new(Vec::<String>::new()));
    let writer = {
        let acked = acked.clone();
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let name = format!("seq-{i:03}");
                create_until_committed(&store, &name).await?;
                let seen = store
                    .read_linearizable(|tx| tx.get_by_name::<Service>(&name).is_some())
                    .await;
                match seen {
                    Ok(seen) => assert!(seen, "{name} acknowledged but not readable"),
                    Err(e) => eprintln!("linearizable read failed (retryable): {e}"),
                }
                acked.lock().unwrap().push(name);
            }
            anyhow::Ok(())
        })
    };

    // Kill the leader part-way through.
    poll_until(
        "20 acknowledged writes",
        Duration::from_secs(20),
        || async { acked.lock().unwrap().len() >= 20 },
    )
    .await;
    let t = Instant::now();
    c.stop(leader).await;
    writer.await??;
    eprintln!(
        "the follower-side writer finished {:?} after the leader stopped",
        t.elapsed()
    );
    let new_leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("new leader");
    assert_ne!(new_leader, leader);

    // Every acknowledged write is on every surviving member, exactly once.
    let acked: BTreeSet<String> = acked.lock().unwrap().iter().cloned().collect();
    assert_eq!(acked.len(), 60);
    for id in c.running() {
        poll_until("replication", Duration::from_secs(5), || async {
            acked.is_subset(&names(c.node(id).store()))
        })
        .await;
        assert_eq!(names(c.node(id).store()).len(), 60, "no duplicate on {id}");
    }
    // A linearizable read on a member that is not the leader counts them all.
    let other = follower_of(&c, new_leader);
    let n = c
        .node(other)
        .store()
        .read_linearizable(|tx| tx.list::<Service>().len())
        .await?;
    assert_eq!(n, 60);

    // The old leader comes back as a follower with every write.
    c.restart(leader).await?;
    poll_until("old leader catch-up", Duration::from_secs(10), || async {
        acked.is_subset(&names(c.node(leader).store()))
    })
    .await;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_a_fourth_manager_while_writing_then_remove_it() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = LocalCluster::start(dir.path(), 3, RaftOptions::default()).await?;
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    for i in 0..20 {
        c.node(leader)
            .store()
            .create(svc(&format!("pre-{i}")))
            .await?;
    }

    // Writes continue through the leader while the new member joins.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let store = c.node(leader).store().clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                create_until_committed(&store, &format!("during-{n}")).await?;
                n += 1;
            }
            anyhow::Ok(n)
        })
    };

    let node4 = c.start_empty(4).await?;
    // Asked on a follower: forwarded to the leader.
    let follower = follower_of(&c, leader);
    c.node(follower).add_manager(4, node4.clone()).await?;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let during = writer.await??;
    eprintln!("{during} writes committed while manager 4 joined");

    let info = c.node(leader).members().await?;
    assert_eq!(info.voters(), BTreeSet::from([1, 2, 3, 4]));
    assert_eq!(info.leader_id, Some(leader));
    assert!(info.leader_view && !info.joint);
    assert!(info.commit_index.is_some() && info.last_log_index >= info.commit_index);
    assert_eq!(info.member(4).map(|m| &m.node), Some(&node4));
    // The same view from any member (forwarded).
    let from_new = c.node(4).members().await?;
    assert_eq!(from_new.voters(), info.voters());
    poll_until("all four reachable", Duration::from_secs(5), || async {
        c.node(4).reachable_voters().await.ok() == Some(BTreeSet::from([1, 2, 3, 4]))
    })
    .await;
    let leader_names = names(c.node(leader).store());
    assert_eq!(leader_names.len(), 20 + during);
    poll_until("manager 4 catch-up", Duration::from_secs(10), || async {
        names(c.node(4).store()) == leader_names
    })
    .await;
    // Idempotent; and an id cannot be re-used with another address.
    c.node(leader).add_manager(4, node4.clone()).await?;
    let err = c
        .node(leader)
        .add_manager(4, c.record(1))
        .await
        .unwrap_err();
    assert!(
        matches!(err, MembershipError::IdInUse { id: 4, .. }),
        "{err}"
    );

    // Remove a voter (asked on the new member itself).
    c.node(4).remove_manager(4, false).await?;
    let info = c.node(leader).members().await?;
    assert_eq!(info.voters(), BTreeSet::from([1, 2, 3]));
    assert!(info.member(4).is_none());
    c.stop(4).await;
    // Removing a non-member is a no-op; writes go on with three.
    c.node(leader).remove_manager(4, false).await?;
    c.node(follower)
        .store()
        .create(svc("after-removal"))
        .await?;

    // Demote the leader itself (asked on a follower): it commits the new
    // configuration without itself and steps down; the other two elect.
    c.node(follower).remove_manager(leader, false).await?;
    c.stop(leader).await;
    let next = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("a leader among the other two");
    assert_ne!(next, leader);
    let info = c.node(follower).members().await?;
    assert_eq!(info.voters().len(), 2);
    assert!(!info.voters().contains(&leader));
    c.node(follower).store().create(svc("after-demote")).await?;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removals_that_would_break_quorum_are_refused() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let options = RaftOptions {
        reachable_within: Duration::from_secs(1),
        ..RaftOptions::default()
    };
    let mut c = LocalCluster::start(dir.path(), 3, options).await?;
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let live = follower_of(&c, leader);
    let down = c
        .running()
        .into_iter()
        .find(|id| *id != leader && *id != live)
        .unwrap();
    poll_until("all reachable", Duration::from_secs(5), || async {
        c.node(leader).reachable_voters().await.ok() == Some(BTreeSet::from([1, 2, 3]))
    })
    .await;

    c.stop(down).await;
    poll_until(
        "the stopped manager unreachable",
        Duration::from_secs(5),
        || async {
            let info = c.node(live).members().await.expect("members");
            info.member(down).is_some_and(|m| !m.reachable && m.voter)
        },
    )
    .await;

    // Removing the live follower would leave {leader, down}: one reachable
    // of two, no majority.
    let err = c.node(live).remove_manager(live, false).await.unwrap_err();
    assert_eq!(
        err,
        MembershipError::QuorumAtRisk {
            id: live,
            remaining: 2,
            reachable: 1,
            needed: 2
        },
        "{err}"
    );
    assert!(!err.is_retryable());
    // Nothing changed and writes still commit.
    assert_eq!(
        c.node(leader).members().await?.voters(),
        BTreeSet::from([1, 2, 3])
    );
    c.node(live).store().create(svc("still-writable")).await?;

    // Removing the stopped one is fine: {leader, live} are both reachable.
    c.node(live).remove_manager(down, false).await?;
    assert_eq!(
        c.node(leader).members().await?.voters(),
        BTreeSet::from([leader, live])
    );
    // Then the live follower: {leader} alone is a majority of itself.
    c.node(leader).remove_manager(live, false).await?;
    assert_eq!(
        c.node(leader).members().await?.voters(),
        BTreeSet::from([leader])
    );
    // The last voter cannot go.
    let err = c
        .node(leader)
        .remove_manager(leader, true)
        .await
        .unwrap_err();
    assert_eq!(err, MembershipError::LastVoter { id: leader });
    c.node(leader).store().create(svc("alone")).await?;
    c.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn force_new_cluster_keeps_committed_state_and_takes_new_members() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut c = LocalCluster::start(dir.path(), 3, RaftOptions::default()).await?;
    let leader = c
        .wait_leader(Duration::from_secs(10))
        .await
        .expect("leader");
    let follower = follower_of(&c, leader);
    let mut acked = BTreeSet::new();
    for i in 0..15 {
        let name = format!("kept-{i}");
        // Half through the leader, half forwarded by a follower.
        let on = if i % 2 == 0 { leader } else { follower };
        c.node(on).store().create(svc(&name)).await?;
        acked.insert(name);
    }

    // Lose every manager, then rebuild from one survivor's directory (a
    // follower's: acknowledged writes are on a quorum, not necessarily on
    // any given member, so wait until this one has them all).
    let survivor = follower;
    poll_until(
        "the survivor has every write",
        Duration::from_secs(5),
        || async { acked.is_subset(&names(c.node(survivor).store())) },
    )
    .await;
    for id in c.running() {
        c.stop(id).await;
    }
    let forced = c.force_new_cluster(survivor).await?;
    eprintln!("forced: {forced:?}");
    assert_eq!(forced.dropped.len(), 2);
    assert_eq!(
        c.wait_leader(Duration::from_secs(10)).await,
        Some(survivor),
        "the survivor elects itself"
    );
    let info = c.node(survivor).members().await?;
    assert_eq!(info.voters(), BTreeSet::from([survivor]));
    assert!(info.commit_index >= Some(forced.membership_index));
    let kept = c
        .node(survivor)
        .store()
        .read_linearizable(|tx| {
            tx.list::<Service>()
                .into_iter()
                .map(|s| s.name)
                .collect::<BTreeSet<_>>()
        })
        .await?;
    assert_eq!(kept, acked, "every acknowledged object survived");
    c.node(survivor).store().create(svc("after-force")).await?;

    // A new, empty manager joins and catches up.
    let node4 = c.start_empty(4).await?;
    c.node(survivor).add_manager(4, node4).await?;
    assert_eq!(
        c.node(4).members().await?.voters(),
        BTreeSet::from([survivor, 4])
    );
    let all = names(c.node(survivor).store());
    assert_eq!(all.len(), 16);
    poll_until("manager 4 catch-up", Duration::from_secs(10), || async {
        names(c.node(4).store()) == all
    })
    .await;
    // Both are needed for a commit now, and it works from either.
    c.node(4).store().create(svc("two-voters")).await?;
    c.shutdown().await;
    Ok(())
}

//! The worker agent: runs inside every node daemon that is in a cluster
//! (`flotilla-worker`, and `flotilla-manager`, whose engine runs tasks too),
//! and makes the node's containers match the tasks the managers assign to it.
//!
//! - [`reconcile`]: the decisions, one pure function from (assignments, local
//!   task containers, states reported, tasks in flight) to actions;
//! - [`container`]: a task's container name, labels and create request;
//! - [`reporter`]: the outbox of state reports;
//! - [`session`]: the node's session with the leader (heartbeats,
//!   assignments down, state reports up, `service logs`);
//! - [`health`]: the health-check loop of a running task container;
//! - this module: the loops that feed and execute those decisions.
//!
//! Two loops run: the session, and the reconcile loop (on every change of
//! the assignments, when a task container exits or an operation ends, and
//! every [`RECONCILE_PERIOD`]). Slow work (pulls, create,
//! start, stop) runs in jobs, one per task at a time, so the reconcile loop
//! never waits on the engine or the network.
//!
//! The agent owns no state of its own on disk: after a daemon restart it
//! finds its containers again by their `com.flotilla.task.id` label (the
//! engine adopted them) and the tasks' states in the assignments. It does
//! not restart containers: a task is one-shot, the orchestrator replaces it.

pub mod container;
pub mod health;
mod logs;
pub mod reconcile;
pub mod reporter;
pub mod session;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agent_common::objects::Task;
use agent_common::task_state::TaskState;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::cluster::membership::Membership;
use crate::engine::Engine;
use reconcile::{Action, Local, Phase, Status};
use reporter::Outbox;

/// How often the agent reconciles even when nothing was signalled.
pub const RECONCILE_PERIOD: Duration = Duration::from_secs(2);
/// A container whose task left the assignments is removed only after it has
/// been missing this long (a new leader catching up after a failover may
/// briefly answer from an older store).
pub const ORPHAN_GRACE: Duration = Duration::from_secs(2);
/// Task containers brought up at once (pulls, creates and starts).
const PARALLEL_STARTS: usize = 8;

/// Starts the agent of the node `membership` describes, on `engine`: its
/// session with the leader and the loops that act on it. Runs until the
/// daemon exits, or until the cluster removes the node.
pub fn spawn(engine: Arc<Engine>, membership: Membership) -> JoinHandle<()> {
    let membership = Arc::new(membership);
    let agent = Arc::new(Agent {
        engine,
        node_id: membership.node_id(),
        outbox: Outbox::default(),
        busy: Mutex::default(),
        watched: Mutex::default(),
        health: Mutex::default(),
        wake: Notify::new(),
        starts: Semaphore::new(PARALLEL_STARTS),
        pulls: tokio::sync::Mutex::new(()),
    });
    tokio::spawn(async move {
        let (tx, rx) = watch::channel(None);
        let session = tokio::spawn(session::run(
            Arc::clone(&agent.engine),
            membership,
            agent.outbox.clone(),
            tx,
        ));
        tracing::info!(node = %agent.node_id, "worker agent started");
        // The session ends only when the cluster removed this node: the
        // agent stops with it, leaving its containers to the plain engine.
        tokio::select! {
            _ = session => {}
            _ = agent.reconcile_loop(rx) => {}
        }
    })
}

/// Assigned tasks as last received (`None` before the first answer).
pub type Assignments = Option<Arc<Vec<Task>>>;

/// The agent's shared state.
struct Agent {
    engine: Arc<Engine>,
    node_id: String,
    outbox: Outbox,
    /// Tasks with a job in flight (left alone by reconcile).
    busy: Mutex<HashSet<String>>,
    /// Containers with an exit watcher.
    watched: Mutex<HashSet<String>>,
    /// Containers with a health monitor.
    health: Mutex<HashSet<String>>,
    /// Asks for a reconcile now.
    wake: Notify,
    /// Bounds concurrent bring-ups.
    starts: Semaphore,
    /// One pull at a time (many tasks of a service want the same image).
    pulls: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Agent {
    async fn reconcile_loop(self: Arc<Self>, mut rx: watch::Receiver<Assignments>) {
        let mut orphans: HashMap<String, Instant> = HashMap::new();
        loop {
            let tasks = rx.borrow_and_update().clone();
            self.reconcile(tasks.as_deref().map(Vec::as_slice), &mut orphans);
            tokio::select! {
                changed = rx.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep(RECONCILE_PERIOD).await;
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RECONCILE_PERIOD) => {}
            }
        }
    }

    /// One pass: decide, then queue reports and start jobs.
    fn reconcile(self: &Arc<Self>, tasks: Option<&[Task]>, orphans: &mut HashMap<String, Instant>) {
        if let Some(tasks) = tasks {
            let ids: HashSet<&str> = tasks.iter().map(|t| t.meta.id.as_str()).collect();
            self.outbox.retain(|id| ids.contains(id));
        }
        // Read busy before the containers: a job that ended in between has
        // its container in the list.
        let reported = self.outbox.reported();
        let busy = lock(&self.busy).clone();
        let locals = local_task_containers(&self.engine);
        for l in locals.iter().filter(|l| l.phase == Phase::Running) {
            self.watch_exit(&l.id);
        }
        self.watch_health(tasks, &locals, &reported);
        let actions = reconcile::decide(tasks, &locals, &reported, &busy);
        let mut still_orphaned = HashMap::new();
        for action in actions {
            match action {
                Action::Report(status) => {
                    self.outbox.report(status, TaskState::New);
                }
                Action::Run { task, container } => {
                    let id = task.meta.id.clone();
                    self.job(
                        id,
                        |agent| async move { agent.run_task(*task, container).await },
                    );
                }
                Action::Stop {
                    task_id,
                    container_id,
                    grace_secs,
                    report,
                } => {
                    let tid = task_id.clone();
                    self.job(task_id, move |agent| async move {
                        agent.stop(&tid, &container_id, grace_secs, report).await
                    });
                }
                Action::Remove {
                    task_id,
                    container_id,
                    grace_secs,
                } => self.job(task_id, move |agent| async move {
                    agent.remove(&container_id, grace_secs).await
                }),
                Action::RemoveOrphan {
                    task_id,
                    container_id,
                    grace_secs,
                } => {
                    let since = orphans
                        .get(&container_id)
                        .copied()
                        .unwrap_or_else(Instant::now);
                    still_orphaned.insert(container_id.clone(), since);
                    if since.elapsed() >= ORPHAN_GRACE {
                        tracing::info!(task = %task_id, container = %container_id, "removing the container of a task no longer assigned here");
                        self.job(task_id, move |agent| async move {
                            agent.remove(&container_id, grace_secs).await
                        });
                    }
                }
            }
        }
        *orphans = still_orphaned;
    }

    /// Runs `work` as the one job of `task_id`, then asks for a reconcile.
    fn job<F, Fut>(self: &Arc<Self>, task_id: String, work: F)
    where
        F: FnOnce(Arc<Agent>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        if !lock(&self.busy).insert(task_id.clone()) {
            return;
        }
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            work(Arc::clone(&agent)).await;
            lock(&agent.busy).remove(&task_id);
            agent.wake.notify_one();
        });
    }

    /// Wakes the reconcile loop when container `id` stops.
    fn watch_exit(self: &Arc<Self>, id: &str) {
        if !lock(&self.watched).insert(id.to_string()) {
            return;
        }
        let Ok(c) = self.engine.find(id) else {
            lock(&self.watched).remove(id);
            return;
        };
        let agent = Arc::clone(self);
        tokio::spawn(async move {
            agent.engine.wait(&c).await;
            lock(&agent.watched).remove(&c.id);
            agent.wake.notify_one();
        });
    }

    /// Brings a task up, reporting each step: accepted, (pull,) preparing,
    /// create, starting, start, running. Refusals are `rejected`, engine
    /// failures `failed`.
    async fn run_task(self: &Arc<Self>, task: Task, existing: Option<String>) {
        let id = task.meta.id.clone();
        let floor = task.state;
        let report = |s: Status| {
            self.outbox.report(s, floor);
        };
        report(Status::new(&id, TaskState::Accepted));
        let Ok(_permit) = self.starts.acquire().await else {
            return;
        };
        let container_id = match existing {
            Some(c) => c,
            None => {
                let image = task.spec.container.image.clone();
                if let Err(e) = self.ensure_image(&image).await {
                    tracing::warn!(task = %id, "{e}");
                    report(Status::new(&id, TaskState::Rejected).error(e));
                    return;
                }
                report(Status::new(&id, TaskState::Preparing));
                let request = match container::create_request(&task, &self.node_id) {
                    Ok(r) => r,
                    Err(e) => {
                        report(Status::new(&id, TaskState::Rejected).error(e));
                        return;
                    }
                };
                let engine = Arc::clone(&self.engine);
                let created =
                    tokio::task::spawn_blocking(move || engine.create_container(request)).await;
                match created {
                    Ok(Ok((cid, _warnings))) => cid,
                    Ok(Err(e)) => {
                        tracing::warn!(task = %id, "failed to create the task's container: {e}");
                        report(Status::new(&id, TaskState::Failed).error(e.to_string()));
                        return;
                    }
                    Err(e) => {
                        report(Status::new(&id, TaskState::Failed).error(e.to_string()));
                        return;
                    }
                }
            }
        };
        report(Status::new(&id, TaskState::Starting).container(&container_id));
        let c = match self.engine.find(&container_id) {
            Ok(c) => c,
            Err(e) => {
                report(Status::new(&id, TaskState::Failed).error(e.to_string()));
                return;
            }
        };
        if let Err(e) = self.engine.start(&c).await {
            tracing::warn!(task = %id, "failed to start the task's container: {e}");
            report(
                Status::new(&id, TaskState::Failed)
                    .container(&container_id)
                    .error(e.to_string()),
            );
            return;
        }
        report(Status::new(&id, TaskState::Running).container(&container_id));
        self.watch_exit(&container_id);
        if let Some(check) = health::Check::of(&task.spec.container) {
            health::ensure(self, &id, &container_id, check);
        }
    }

    /// Makes sure every running container of a live task with a health
    /// check has its monitor (after a daemon restart too).
    fn watch_health(
        self: &Arc<Self>,
        tasks: Option<&[Task]>,
        locals: &[Local],
        reported: &HashMap<String, TaskState>,
    ) {
        let Some(tasks) = tasks else { return };
        let by_id: HashMap<&str, &Task> = tasks.iter().map(|t| (t.meta.id.as_str(), t)).collect();
        for l in locals.iter().filter(|l| l.phase == Phase::Running) {
            let Some(task) = by_id.get(l.task_id.as_str()) else {
                continue;
            };
            let state = reported
                .get(&l.task_id)
                .map_or(task.state, |r| (*r).max(task.state));
            if state.is_terminal() || task.desired_state > TaskState::Complete {
                continue;
            }
            if let Some(check) = health::Check::of(&task.spec.container) {
                health::ensure(self, &l.task_id, &l.id, check);
            }
        }
    }

    /// Makes sure `image` is in the store, pulling it if not.
    async fn ensure_image(&self, image: &str) -> Result<(), String> {
        if self.engine.images.resolve(image).is_ok() {
            return Ok(());
        }
        let _one = self.pulls.lock().await;
        if self.engine.images.resolve(image).is_ok() {
            return Ok(());
        }
        tracing::info!(image, "pulling the image of an assigned task");
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let drain = tokio::spawn(async move {
            let mut last_error = String::new();
            while let Some(p) = rx.recv().await {
                let p: agent_common::proto::Progress = p;
                if !p.error.is_empty() {
                    last_error = p.error;
                }
            }
            last_error
        });
        let pulled = self
            .engine
            .pull(
                agent_common::proto::PullRequest {
                    image: image.to_string(),
                    auth: None,
                    options: None,
                },
                tx,
            )
            .await;
        let progress_error = drain.await.unwrap_or_default();
        match pulled {
            Ok(()) if self.engine.images.resolve(image).is_ok() => Ok(()),
            Ok(()) => Err(format!(
                "No such image: {image} (not found locally and could not be pulled: {})",
                if progress_error.is_empty() {
                    "the pull ended without it".to_string()
                } else {
                    progress_error
                }
            )),
            Err(e) => Err(format!(
                "No such image: {image} (not found locally and could not be pulled: {e})"
            )),
        }
    }

    /// Stops a task's container with its grace period; reports shutdown if asked.
    async fn stop(&self, task_id: &str, container_id: &str, grace_secs: i64, report: bool) {
        let Ok(c) = self.engine.find(container_id) else {
            return;
        };
        match self.engine.stop(&c, Some(grace_secs)).await {
            Ok(()) if report => {
                self.outbox.report(
                    Status::new(task_id, TaskState::Shutdown).container(container_id),
                    TaskState::New,
                );
            }
            Ok(()) => {}
            Err(e) => {
                tracing::warn!(task = %task_id, container = %container_id, "failed to stop the task's container: {e}")
            }
        }
    }

    /// Stops (if running) and removes a task container and its anonymous volumes.
    async fn remove(&self, container_id: &str, grace_secs: i64) {
        let Ok(c) = self.engine.find(container_id) else {
            return;
        };
        if c.is_running() {
            if let Err(e) = self.engine.stop(&c, Some(grace_secs)).await {
                tracing::warn!(container = %container_id, "failed to stop a task container before removing it: {e}");
            }
        }
        if let Err(e) = self.engine.remove(&c, true, true).await {
            tracing::warn!(container = %container_id, "failed to remove a task container: {e}");
        }
    }
}

/// The engine's task containers (those labelled with a task ID).
fn local_task_containers(engine: &Engine) -> Vec<Local> {
    engine
        .all()
        .into_iter()
        .filter(|c| !c.is_removed())
        .filter_map(|c| {
            let rec = c.record();
            if rec.removing {
                return None;
            }
            let task_id = rec.config.labels.get(container::LABEL_TASK_ID)?.clone();
            let phase = if rec.state.running || rec.state.restarting {
                Phase::Running
            } else if rec.state.status == "created" {
                Phase::Created
            } else {
                Phase::Exited {
                    exit_code: rec.state.exit_code,
                    stopped: rec.manually_stopped,
                }
            };
            Some(Local {
                id: c.id.clone(),
                task_id,
                phase,
                grace_secs: rec
                    .config
                    .stop_timeout
                    .unwrap_or((container::DEFAULT_GRACE_MS / 1000) as i64),
            })
        })
        .collect()
}

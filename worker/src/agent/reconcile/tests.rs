use super::*;
use agent_common::objects::Meta;

fn task(id: &str, state: TaskState, desired: TaskState) -> Task {
    Task {
        meta: Meta {
            id: id.into(),
            ..Default::default()
        },
        service_name: "web".into(),
        slot: 1,
        state,
        desired_state: desired,
        ..Default::default()
    }
}

fn local(task_id: &str, phase: Phase) -> Local {
    Local {
        id: format!("c-{task_id}"),
        task_id: task_id.into(),
        phase,
        grace_secs: 10,
    }
}

fn run(tasks: &[Task], locals: &[Local]) -> Vec<Action> {
    decide(Some(tasks), locals, &HashMap::new(), &HashSet::new())
}

fn exited(code: i64, stopped: bool) -> Phase {
    Phase::Exited {
        exit_code: code,
        stopped,
    }
}

#[test]
fn a_new_task_is_run() {
    let t = task("t1", TaskState::Assigned, TaskState::Running);
    let actions = run(std::slice::from_ref(&t), &[]);
    assert_eq!(
        actions,
        vec![Action::Run {
            task: Box::new(t),
            container: None
        }]
    );
}

#[test]
fn a_created_but_unstarted_container_is_started_not_recreated() {
    let t = task("t1", TaskState::Starting, TaskState::Running);
    let actions = run(std::slice::from_ref(&t), &[local("t1", Phase::Created)]);
    assert_eq!(
        actions,
        vec![Action::Run {
            task: Box::new(t),
            container: Some("c-t1".into())
        }]
    );
}

#[test]
fn a_running_task_with_its_container_needs_nothing() {
    let t = task("t1", TaskState::Running, TaskState::Running);
    assert!(run(&[t], &[local("t1", Phase::Running)]).is_empty());
}

#[test]
fn an_adopted_running_container_is_reported_running() {
    // After a daemon restart the store may still say "starting".
    let t = task("t1", TaskState::Starting, TaskState::Running);
    let actions = run(&[t], &[local("t1", Phase::Running)]);
    assert_eq!(
        actions,
        vec![Action::Report(
            Status::new("t1", TaskState::Running).container("c-t1")
        )]
    );
}

#[test]
fn exits_are_reported_complete_or_failed_never_restarted() {
    let t = task("t1", TaskState::Running, TaskState::Running);
    let ok = run(std::slice::from_ref(&t), &[local("t1", exited(0, false))]);
    assert_eq!(ok, vec![Action::Report(Status::exited("t1", "c-t1", 0))]);
    let Action::Report(s) = &ok[0] else { panic!() };
    assert_eq!(s.state, TaskState::Complete);
    assert_eq!(s.exit_code, Some(0));

    let bad = run(&[t], &[local("t1", exited(3, false))]);
    let [Action::Report(s)] = bad.as_slice() else {
        panic!("{bad:?}")
    };
    assert_eq!(s.state, TaskState::Failed);
    assert_eq!(s.exit_code, Some(3));
    assert_eq!(s.error, "task: non-zero exit (3)");
}

#[test]
fn already_reported_exits_are_not_reported_again_and_the_container_is_kept() {
    let t = task("t1", TaskState::Running, TaskState::Running);
    let reported = HashMap::from([("t1".to_string(), TaskState::Failed)]);
    let actions = decide(
        Some(&[t]),
        &[local("t1", exited(1, false))],
        &reported,
        &HashSet::new(),
    );
    assert!(actions.is_empty(), "{actions:?}");
    // The store caught up: still nothing, the stopped container stays for logs.
    let t = task("t1", TaskState::Failed, TaskState::Shutdown);
    assert!(run(&[t], &[local("t1", exited(1, false))]).is_empty());
}

#[test]
fn shutdown_stops_a_running_container_then_reports() {
    let t = task("t1", TaskState::Running, TaskState::Shutdown);
    assert_eq!(
        run(&[t], &[local("t1", Phase::Running)]),
        vec![Action::Stop {
            task_id: "t1".into(),
            container_id: "c-t1".into(),
            grace_secs: 10,
            report: true
        }]
    );
}

#[test]
fn shutdown_of_a_task_never_started_is_reported() {
    let t = task("t1", TaskState::Assigned, TaskState::Shutdown);
    assert_eq!(
        run(&[t], &[]),
        vec![Action::Report(Status::new("t1", TaskState::Shutdown))]
    );
}

#[test]
fn a_stopped_container_under_shutdown_reports_shutdown_but_an_own_exit_reports_the_exit() {
    let t = task("t1", TaskState::Running, TaskState::Shutdown);
    assert_eq!(
        run(std::slice::from_ref(&t), &[local("t1", exited(143, true))]),
        vec![Action::Report(
            Status::new("t1", TaskState::Shutdown).container("c-t1")
        )]
    );
    assert_eq!(
        run(&[t], &[local("t1", exited(2, false))]),
        vec![Action::Report(Status::exited("t1", "c-t1", 2))]
    );
}

#[test]
fn desired_remove_removes_stopped_containers() {
    let t = task("t1", TaskState::Shutdown, TaskState::Remove);
    assert_eq!(
        run(&[t], &[local("t1", exited(0, true))]),
        vec![Action::Remove {
            task_id: "t1".into(),
            container_id: "c-t1".into(),
            grace_secs: 10
        }]
    );
    // Still running: stop (and report) first, remove on a later pass.
    let t = task("t1", TaskState::Running, TaskState::Remove);
    let actions = run(&[t], &[local("t1", Phase::Running)]);
    assert!(matches!(
        actions.as_slice(),
        [Action::Stop { report: true, .. }]
    ));
}

#[test]
fn terminal_tasks_keep_their_containers_but_nothing_runs() {
    // Orphaned by the managers while it ran here: stop it, report nothing.
    let t = task("t1", TaskState::Orphaned, TaskState::Running);
    assert_eq!(
        run(&[t], &[local("t1", Phase::Running)]),
        vec![Action::Stop {
            task_id: "t1".into(),
            container_id: "c-t1".into(),
            grace_secs: 10,
            report: false
        }]
    );
}

#[test]
fn containers_of_tasks_no_longer_assigned_are_removed_once_assignments_are_known() {
    let locals = [local("gone", Phase::Running)];
    assert!(decide(None, &locals, &HashMap::new(), &HashSet::new()).is_empty());
    assert_eq!(
        run(&[], &locals),
        vec![Action::RemoveOrphan {
            task_id: "gone".into(),
            container_id: "c-gone".into(),
            grace_secs: 10
        }]
    );
}

#[test]
fn busy_tasks_are_left_alone() {
    let t = task("t1", TaskState::Assigned, TaskState::Running);
    let busy = HashSet::from(["t1".to_string()]);
    assert!(decide(Some(&[t]), &[], &HashMap::new(), &busy).is_empty());
}

#[test]
fn a_running_task_whose_container_vanished_fails() {
    let t = task("t1", TaskState::Running, TaskState::Running);
    let actions = run(&[t], &[]);
    let [Action::Report(s)] = actions.as_slice() else {
        panic!("{actions:?}")
    };
    assert_eq!(s.state, TaskState::Failed);
}

#[test]
fn a_second_container_is_never_made_for_a_task_that_has_one() {
    // Whatever the reported state, a task with a container gets no Run without it.
    for phase in [Phase::Running, exited(0, false), exited(1, true)] {
        for state in [
            TaskState::Assigned,
            TaskState::Preparing,
            TaskState::Running,
        ] {
            let t = task("t1", state, TaskState::Running);
            for a in run(&[t], &[local("t1", phase)]) {
                assert!(
                    !matches!(
                        a,
                        Action::Run {
                            container: None,
                            ..
                        }
                    ),
                    "{phase:?} {state:?}: {a:?}"
                );
            }
        }
    }
}

#[test]
fn jobs_desired_complete_run_too() {
    let t = task("t1", TaskState::Assigned, TaskState::Complete);
    assert!(matches!(
        run(&[t], &[]).as_slice(),
        [Action::Run {
            container: None,
            ..
        }]
    ));
}

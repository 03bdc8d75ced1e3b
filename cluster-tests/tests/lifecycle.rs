//! Container lifecycle through the CLI: run/ps/logs, stop/kill/restart, pause, wait, rename,
//! rm, exec, top, diff, export, commit, restart policies, --init, -i and --rm.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use cluster_tests::{busybox_image, poll_for, poll_until, Daemon};

const T: Duration = Duration::from_secs(20);
const COUNTER: &str = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done";

/// The numbers a counter container logged so far.
fn counted(d: &Daemon, name: &str) -> Vec<u64> {
    d.ok(&["logs", name])
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Waits until the counter has logged more than `n` lines; returns the count.
fn wait_count_above(d: &Daemon, name: &str, n: usize) -> usize {
    poll_for(T, &format!("{name} to log more than {n} lines"), || {
        let c = counted(d, name).len();
        if c > n {
            Ok(c)
        } else {
            Err(format!("{c} lines"))
        }
    })
}

#[test]
fn run_detached_ps_and_logs() {
    let d = Daemon::start();
    let img = busybox_image(&d, "life");
    let id = d.ok(&["run", "-d", "--name", "counter", &img, "sh", "-c", COUNTER]);
    let id = id.trim();
    assert_eq!(id.len(), 64, "run -d prints the full ID: {id}");
    let ps = d.ok(&["ps"]);
    let row = ps
        .lines()
        .find(|l| l.contains("counter"))
        .unwrap_or_else(|| panic!("ps lists counter:\n{ps}"));
    assert!(row.starts_with(&id[..12]) && row.contains("Up"), "{row}");
    assert_eq!(d.ok(&["ps", "-q"]).trim(), &id[..12]);
    assert_eq!(d.ok(&["ps", "-q", "--no-trunc"]).trim(), id);
    let json: serde_json::Value =
        serde_json::from_str(d.ok(&["ps", "--format", "json"]).lines().next().unwrap())
            .expect("ps --format json");
    assert_eq!(json["State"], "running", "{json}");
    assert_eq!(json["Names"], "counter", "{json}");

    wait_count_above(&d, "counter", 5);
    let all = counted(&d, "counter");
    assert_eq!(all[..5], [0, 1, 2, 3, 4], "logs from the start: {all:?}");
    let tail = d.ok(&["logs", "--tail", "2", "counter"]);
    assert_eq!(tail.lines().count(), 2, "--tail 2: {tail:?}");
    let stamped = d.ok(&["logs", "-t", "--tail", "1", "counter"]);
    let (ts, rest) = stamped.trim().split_once(' ').expect("timestamp and line");
    assert!(
        ts.len() >= 20 && ts.as_bytes()[4] == b'-' && ts.contains('T') && ts.ends_with('Z'),
        "RFC 3339 timestamp: {stamped:?}"
    );
    rest.parse::<u64>()
        .expect("the logged number after the timestamp");

    // logs -f follows: new lines keep arriving on the open stream.
    let mut follow = d.command(&["logs", "-f", "--tail", "1", "counter"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut child = follow.spawn().expect("spawn logs -f");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first: u64 = lines.next().unwrap().unwrap().trim().parse().unwrap();
    let mut last = first;
    for _ in 0..3 {
        last = lines
            .next()
            .expect("more lines")
            .unwrap()
            .trim()
            .parse()
            .unwrap();
    }
    assert!(last > first, "logs -f streams new lines ({first} → {last})");
    let _ = child.kill();
    let _ = child.wait();

    // `-a` lists stopped containers, plain ps does not.
    d.ok(&["kill", "counter"]);
    d.wait_status("counter", "exited", T);
    assert!(!d.ok(&["ps"]).contains("counter"));
    assert!(d.ok(&["ps", "-a"]).contains("counter"));
}

#[test]
fn stop_sends_term_then_kill() {
    let d = Daemon::start();
    let img = busybox_image(&d, "stop");
    // A process that handles SIGTERM exits with its code.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "polite",
        &img,
        "sh",
        "-c",
        "trap 'exit 143' TERM; while true; do sleep 0.1; done",
    ]);
    // And one that ignores it (sh as PID 1 without a handler) is killed after the timeout.
    d.ok(&["run", "-d", "--name", "stubborn", &img, "sleep", "1000"]);
    d.wait_status("polite", "running", T);
    d.wait_status("stubborn", "running", T);
    d.ok(&["stop", "-t", "20", "polite"]);
    assert_eq!(d.inspect("polite")["State"]["ExitCode"], 143);
    assert_eq!(d.ok(&["stop", "-t", "1", "stubborn"]).trim(), "stubborn");
    let state = &d.inspect("stubborn")["State"];
    assert_eq!(state["ExitCode"], 137, "{state}");
    assert_eq!(state["Status"], "exited");
    assert_eq!(state["Running"], false);
    // Stopping a stopped container is fine.
    d.ok(&["stop", "stubborn"]);
    // --stop-signal picks the signal.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "usr1",
        "--stop-signal",
        "USR1",
        &img,
        "sh",
        "-c",
        "trap 'exit 10' USR1; while true; do sleep 0.1; done",
    ]);
    d.wait_status("usr1", "running", T);
    d.ok(&["stop", "-t", "20", "usr1"]);
    assert_eq!(d.inspect("usr1")["State"]["ExitCode"], 10);
}

#[test]
fn kill_with_signal() {
    let d = Daemon::start();
    let img = busybox_image(&d, "kill");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "sig",
        &img,
        "sh",
        "-c",
        "trap 'echo got-usr1; exit 3' USR1; while true; do sleep 0.1; done",
    ]);
    d.wait_status("sig", "running", T);
    d.ok(&["kill", "-s", "USR1", "sig"]);
    d.wait_status("sig", "exited", T);
    assert_eq!(d.inspect("sig")["State"]["ExitCode"], 3);
    assert!(d.ok(&["logs", "sig"]).contains("got-usr1"));
    // Killing a stopped container is an error.
    let (code, _, err) = d.run3(&["kill", "sig"]);
    assert_ne!(code, 0, "kill of an exited container fails: {err}");
}

#[test]
fn restart_runs_the_command_again() {
    let d = Daemon::start();
    let img = busybox_image(&d, "restart");
    d.ok(&["run", "-d", "--name", "again", &img, "sh", "-c", COUNTER]);
    wait_count_above(&d, "again", 2);
    let pid1 = d.inspect("again")["State"]["Pid"].clone();
    d.ok(&["restart", "-t", "1", "again"]);
    d.wait_status("again", "running", T);
    assert_ne!(d.inspect("again")["State"]["Pid"], pid1, "a new process");
    // The log keeps the first run and the second starts from 0 again.
    poll_until(T, "a second 0 in the log", || {
        counted(&d, "again").iter().filter(|n| **n == 0).count() == 2
    });
}

#[test]
fn pause_freezes_and_unpause_resumes() {
    let d = Daemon::start();
    let img = busybox_image(&d, "pause");
    d.ok(&["run", "-d", "--name", "frozen", &img, "sh", "-c", COUNTER]);
    wait_count_above(&d, "frozen", 2);
    d.ok(&["pause", "frozen"]);
    let state = &d.inspect("frozen")["State"];
    assert_eq!(state["Status"], "paused", "{state}");
    assert_eq!(state["Paused"], true);
    assert!(d.ok(&["ps"]).contains("Paused"));
    // Frozen: the count does not move while we watch for a while.
    let before = counted(&d, "frozen").len();
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_millis(1500) {
        assert_eq!(
            counted(&d, "frozen").len(),
            before,
            "a paused counter does not advance"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // exec into a paused container is refused.
    let (code, _, _) = d.run3(&["exec", "frozen", "true"]);
    assert_ne!(code, 0);
    d.ok(&["unpause", "frozen"]);
    assert_eq!(d.status("frozen"), "running");
    wait_count_above(&d, "frozen", before + 2);
    // A paused container can be stopped.
    d.ok(&["pause", "frozen"]);
    d.ok(&["stop", "-t", "1", "frozen"]);
    assert_eq!(d.status("frozen"), "exited");
}

#[test]
fn wait_prints_the_exit_code() {
    let d = Daemon::start();
    let img = busybox_image(&d, "wait");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "waiter",
        &img,
        "sh",
        "-c",
        "sleep 0.5; exit 4",
    ]);
    assert_eq!(d.ok(&["wait", "waiter"]).trim(), "4");
    // On an already-exited container too.
    assert_eq!(d.ok(&["wait", "waiter"]).trim(), "4");
}

#[test]
fn rename_and_rm() {
    let d = Daemon::start();
    let img = busybox_image(&d, "rm");
    let id = d.ok(&["run", "-d", "--name", "before", &img, "sleep", "1000"]);
    d.ok(&["rename", "before", "after"]);
    let name = d.inspect("after")["Name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(name.trim_start_matches('/'), "after");
    assert_ne!(code_of(&d, &["inspect", "before"]), 0);
    // rm of a running container is refused without -f and leaves it running.
    let (code, _, err) = d.run3(&["rm", "after"]);
    assert_ne!(code, 0);
    assert!(err.contains("running") || err.contains("stop"), "{err}");
    assert_eq!(d.status("after"), "running");
    d.ok(&["rm", "-f", "after"]);
    assert!(d.container_ids().is_empty());
    assert_ne!(code_of(&d, &["inspect", id.trim()]), 0);
    // rm of an exited container.
    d.ok(&["run", "--name", "done", &img, "true"]);
    d.ok(&["rm", "done"]);
    assert!(d.container_ids().is_empty());
    // The name is free again.
    d.ok(&["run", "--name", "done", &img, "true"]);
}

fn code_of(d: &Daemon, args: &[&str]) -> i32 {
    d.run3(args).0
}

#[test]
fn exec_runs_in_the_container() {
    let d = Daemon::start();
    let img = busybox_image(&d, "exec");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "host",
        "-e",
        "FROM_RUN=1",
        &img,
        "sleep",
        "1000",
    ]);
    d.wait_status("host", "running", T);
    assert_eq!(d.ok(&["exec", "host", "echo", "hi"]), "hi\n");
    assert_eq!(
        d.ok(&["exec", "-e", "A=b", "host", "sh", "-c", "echo $A $FROM_RUN"]),
        "b 1\n"
    );
    assert_eq!(d.ok(&["exec", "-w", "/tmp", "host", "pwd"]), "/tmp\n");
    assert_eq!(
        d.ok(&["exec", "-u", "nobody", "host", "id", "-un"]),
        "nobody\n"
    );
    assert_eq!(code_of(&d, &["exec", "host", "sh", "-c", "exit 7"]), 7);
    assert_eq!(code_of(&d, &["exec", "host", "no-such-cmd"]), 127);
    assert_eq!(
        d.ok_in(&["exec", "-i", "host", "cat"], b"piped\n"),
        "piped\n"
    );
    // exec shares the container's namespaces: it sees sleep as PID 1.
    assert_eq!(d.ok(&["exec", "host", "cat", "/proc/1/comm"]), "sleep\n");
    // exec in a stopped container fails.
    d.ok(&["kill", "host"]);
    d.wait_status("host", "exited", T);
    assert_ne!(code_of(&d, &["exec", "host", "true"]), 0);
}

#[test]
fn top_lists_the_processes() {
    let d = Daemon::start();
    let img = busybox_image(&d, "top");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "busy",
        &img,
        "sh",
        "-c",
        "sleep 1001 & sleep 1002",
    ]);
    poll_until(T, "top to show both sleeps", || {
        let out = d.cli(&["top", "busy"]);
        let text = String::from_utf8_lossy(&out.stdout);
        text.contains("sleep 1001") && text.contains("sleep 1002")
    });
    let top = d.ok(&["top", "busy"]);
    assert!(top.lines().next().unwrap().contains("PID"), "{top}");
}

#[test]
fn diff_export_and_commit() {
    let d = Daemon::start();
    let img = busybox_image(&d, "fs");
    d.ok(&[
        "run",
        "--name",
        "changed",
        &img,
        "sh",
        "-c",
        "echo new > /tmp/added; echo more >> /etc/passwd; rm /bin/wc",
    ]);
    let diff = d.ok(&["diff", "changed"]);
    let lines: Vec<&str> = diff.lines().collect();
    for want in [
        "A /tmp/added",
        "C /etc/passwd",
        "D /bin/wc",
        "C /tmp",
        "C /bin",
    ] {
        assert!(lines.contains(&want), "diff has {want:?}:\n{diff}");
    }
    assert!(
        !diff.contains("/bin/busybox"),
        "unchanged files are not listed:\n{diff}"
    );

    let out = d.cli(&["export", "changed"]);
    assert!(out.status.success());
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let names: Vec<String> = archive
        .entries()
        .expect("export is a tar")
        .map(|e| {
            e.unwrap()
                .path()
                .unwrap()
                .to_string_lossy()
                .trim_start_matches("./")
                .trim_end_matches('/')
                .to_string()
        })
        .collect();
    for want in ["tmp/added", "bin/busybox", "etc/passwd", "bin/sh"] {
        assert!(
            names.iter().any(|n| n == want),
            "export has {want}: {names:?}"
        );
    }
    assert!(
        !names.iter().any(|n| n == "bin/wc"),
        "deleted file not exported"
    );
    let export_file = d.scratch().join("export.tar");
    d.ok(&["export", "-o", export_file.to_str().unwrap(), "changed"]);
    assert!(std::fs::metadata(&export_file).unwrap().len() > 1_000_000);

    let new_id = d.ok(&[
        "commit",
        "--change",
        r#"CMD ["cat", "/tmp/added"]"#,
        "changed",
        "committed:v1",
    ]);
    assert!(new_id.trim().starts_with("sha256:"), "{new_id}");
    assert_eq!(d.ok(&["run", "--rm", "committed:v1"]), "new\n");
    let (code, _, _) = d.run3(&["run", "--rm", "committed:v1", "wc", "-l", "/etc/passwd"]);
    assert_eq!(code, 127, "wc was deleted in the committed image");
    assert!(d.ok(&["images"]).contains("committed"));
}

#[test]
fn diff_does_not_list_engine_managed_files() {
    // Docker's diff leaves out /etc/hostname, /etc/hosts and /etc/resolv.conf, which the
    // engine mounts; they are not changes the container made.
    let d = Daemon::start();
    let img = busybox_image(&d, "fs2");
    d.ok(&["run", "--name", "quiet", &img, "true"]);
    let diff = d.ok(&["diff", "quiet"]);
    assert_eq!(
        diff, "",
        "a container that changed nothing has an empty diff"
    );
}

#[test]
fn restart_on_failure_gives_up_after_max_retries() {
    let d = Daemon::start();
    let img = busybox_image(&d, "onfail");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "flaky",
        "--restart",
        "on-failure:2",
        &img,
        "sh",
        "-c",
        "echo try; exit 3",
    ]);
    poll_for(T, "flaky to give up after 2 restarts", || {
        let c = d.inspect("flaky");
        if c["State"]["Status"] == "exited" && c["RestartCount"] == 2 {
            Ok(())
        } else {
            Err(format!(
                "RestartCount {} State {}",
                c["RestartCount"], c["State"]
            ))
        }
    });
    assert_eq!(d.inspect("flaky")["State"]["ExitCode"], 3);
    assert_eq!(
        d.ok(&["logs", "flaky"]).matches("try").count(),
        3,
        "ran 1 + 2 times"
    );
    assert_eq!(
        d.inspect("flaky")["HostConfig"]["RestartPolicy"]["Name"],
        "on-failure"
    );
    // A successful exit is not restarted.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "fine",
        "--restart",
        "on-failure:2",
        &img,
        "true",
    ]);
    d.wait_status("fine", "exited", T);
    assert_eq!(d.inspect("fine")["RestartCount"], 0);
}

#[test]
fn restart_always_restarts_until_stopped() {
    let d = Daemon::start();
    let img = busybox_image(&d, "always");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "phoenix",
        "--restart",
        "always",
        &img,
        "sh",
        "-c",
        "echo up; sleep 0.2",
    ]);
    poll_for(T, "phoenix to be restarted twice", || {
        let n = d.inspect("phoenix")["RestartCount"].as_u64().unwrap_or(0);
        if n >= 2 {
            Ok(())
        } else {
            Err(format!("RestartCount {n}"))
        }
    });
    assert!(d.ok(&["logs", "phoenix"]).matches("up").count() >= 2);
    // stop ends it for good.
    d.ok(&["stop", "-t", "1", "phoenix"]);
    let count = d.inspect("phoenix")["RestartCount"].clone();
    assert_eq!(d.status("phoenix"), "exited");
    let watch = std::time::Instant::now();
    while watch.elapsed() < Duration::from_secs(1) {
        assert_eq!(
            d.status("phoenix"),
            "exited",
            "a stopped container is not restarted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(d.inspect("phoenix")["RestartCount"], count);
}

#[test]
fn init_forwards_sigterm_and_reaps() {
    let d = Daemon::start();
    let img = busybox_image(&d, "init");
    // PID 1 is the init, not the command.
    let comm = d.ok(&["run", "--rm", "--init", &img, "cat", "/proc/1/cmdline"]);
    assert!(!comm.starts_with("cat"), "PID 1 is the init: {comm:?}");
    // A plain sleep as PID 1 ignores SIGTERM; under --init it gets it and dies: 143, not
    // 137 after the timeout.
    d.ok(&[
        "run", "-d", "--init", "--name", "inited", &img, "sleep", "1000",
    ]);
    d.wait_status("inited", "running", T);
    d.ok(&["stop", "-t", "30", "inited"]);
    assert_eq!(d.inspect("inited")["State"]["ExitCode"], 143);
    // Orphans are reaped: a background child of an exec'd sleep never stays a zombie.
    d.ok(&[
        "run",
        "-d",
        "--init",
        "--name",
        "reaper",
        &img,
        "sh",
        "-c",
        "(sleep 0.2 &); exec sleep 1000",
    ]);
    poll_until(T, "the orphaned sleep to be gone (reaped)", || {
        let ps = d.ok(&["exec", "reaper", "ps", "-o", "stat,args"]);
        !ps.contains("sleep 0.2") && !ps.lines().any(|l| l.trim_start().starts_with('Z'))
    });
}

#[test]
fn run_interactive_stdin_is_piped() {
    let d = Daemon::start();
    let img = busybox_image(&d, "stdin");
    for _ in 0..10 {
        assert_eq!(
            d.ok_in(&["run", "-i", "--rm", &img, "cat"], b"hi\n"),
            "hi\n"
        );
    }
    assert_eq!(
        d.ok_in(&["run", "-i", "--rm", &img, "wc", "-l"], b"a\nb\nc\n")
            .trim(),
        "3"
    );
    // Without -i the container's stdin is empty.
    assert_eq!(d.ok_in(&["run", "--rm", &img, "cat"], b"ignored\n"), "");
}

#[test]
fn run_rm_removes_the_container_and_never_loses_output() {
    let d = Daemon::start();
    let img = busybox_image(&d, "autorm");
    for i in 0..30 {
        let out = d.ok(&["run", "--rm", &img, "echo", &format!("line {i}")]);
        assert_eq!(
            out,
            format!("line {i}\n"),
            "run {i} of --rm lost its output"
        );
    }
    assert_eq!(
        d.run3(&["run", "--rm", "--name", "gone", &img, "sh", "-c", "exit 5"])
            .0,
        5
    );
    assert!(d.container_ids().is_empty(), "--rm removed them all");
    // A detached --rm container is removed when it exits.
    d.ok(&["run", "-d", "--rm", "--name", "dgone", &img, "sleep", "0.2"]);
    poll_until(T, "the detached --rm container to be removed", || {
        d.container_ids().is_empty()
    });
}

#[test]
fn create_then_start() {
    let d = Daemon::start();
    let img = busybox_image(&d, "create");
    let id = d.ok(&[
        "create",
        "--name",
        "later",
        &img,
        "sh",
        "-c",
        "echo started; exit 6",
    ]);
    assert_eq!(id.trim().len(), 64);
    assert_eq!(d.status("later"), "created");
    d.ok(&["start", "later"]);
    assert_eq!(d.ok(&["wait", "later"]).trim(), "6");
    assert_eq!(d.ok(&["logs", "later"]), "started\n");
    // start -a attaches and returns the exit code.
    let (code, out, _) = d.run3(&["start", "-a", "later"]);
    assert_eq!((code, out.as_str()), (6, "started\n"));
}

//! Daemon crashes: `kill -9` of flotilla-worker leaves containers running under their shims;
//! the restarted daemon adopts them (ps, logs, exec, stop) and records the exit codes of
//! those that ended while it was down.

use std::time::Duration;

use cluster_tests::{busybox_image, poll_for, Daemon};

const T: Duration = Duration::from_secs(20);

fn numbers(log: &str) -> Vec<u64> {
    log.lines().filter_map(|l| l.trim().parse().ok()).collect()
}

#[test]
fn running_container_survives_daemon_kill9() {
    let mut d = Daemon::start();
    let img = busybox_image(&d, "crash");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "survivor",
        &img,
        "sh",
        "-c",
        "i=0; while true; do echo $i; i=$((i+1)); sleep 0.2; done",
    ]);
    d.wait_logs("survivor", "a few lines", T, |l| numbers(l).len() >= 3);
    let pid = d.inspect("survivor")["State"]["Pid"].as_i64().unwrap();

    d.kill9();
    // The container keeps running without its daemon.
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "container process {pid} outlives the daemon"
    );
    d.restart();

    let ps = d.ok(&["ps"]);
    assert!(ps.contains("survivor") && ps.contains("Up"), "{ps}");
    let state = &d.inspect("survivor")["State"];
    assert_eq!(state["Status"], "running", "{state}");
    assert_eq!(state["Pid"], pid, "the same process");
    // Logs written while the daemon was down are there, and new ones keep coming.
    let n = numbers(&d.ok(&["logs", "survivor"])).len();
    d.wait_logs("survivor", "logs to keep growing", T, |l| {
        numbers(l).len() > n + 2
    });
    let log = numbers(&d.ok(&["logs", "survivor"]));
    assert!(
        log.windows(2).all(|w| w[1] == w[0] + 1),
        "no line lost or doubled across the crash: {log:?}"
    );
    assert_eq!(d.ok(&["exec", "survivor", "echo", "exec-ok"]), "exec-ok\n");
    d.ok(&["stop", "-t", "1", "survivor"]);
    let state = &d.inspect("survivor")["State"];
    assert_eq!(state["Status"], "exited", "{state}");
    assert_eq!(state["ExitCode"], 137, "{state}");
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn exit_while_daemon_is_down_is_recorded() {
    let mut d = Daemon::start();
    let img = busybox_image(&d, "crash2");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "quitter",
        &img,
        "sh",
        "-c",
        "echo bye; sleep 1; exit 7",
    ]);
    d.wait_status("quitter", "running", T);
    let pid = d.inspect("quitter")["State"]["Pid"].as_i64().unwrap();
    d.kill9();
    poll_for(T, "the container to exit while the daemon is down", || {
        if std::path::Path::new(&format!("/proc/{pid}")).exists() {
            Err(format!("pid {pid} alive"))
        } else {
            Ok(())
        }
    });
    d.restart();
    d.wait_status("quitter", "exited", T);
    let state = &d.inspect("quitter")["State"];
    assert_eq!(state["ExitCode"], 7, "{state}");
    assert_eq!(d.ok(&["wait", "quitter"]).trim(), "7");
    assert_eq!(d.ok(&["logs", "quitter"]), "bye\n");
    d.ok(&["rm", "quitter"]);
}

#[test]
fn state_survives_a_clean_restart() {
    let mut d = Daemon::start();
    let img = busybox_image(&d, "kept");
    d.ok(&["volume", "create", "kept-vol"]);
    assert_eq!(
        d.run3(&["run", "--name", "exited7", &img, "sh", "-c", "exit 7"])
            .0,
        7
    );
    d.ok(&["run", "-d", "--name", "runs", &img, "sleep", "1000"]);
    d.stop();
    d.restart();
    assert_eq!(d.inspect("exited7")["State"]["ExitCode"], 7);
    assert_eq!(d.status("runs"), "running");
    assert_eq!(d.volume_names(), ["kept-vol"]);
    assert_eq!(d.ok(&["run", "--rm", &img, "echo", "still"]), "still\n");
    d.ok(&["rm", "-f", "runs"]);
}

#[test]
fn corrupt_state_file_is_reported_with_its_path() {
    let mut d = Daemon::start();
    let img = busybox_image(&d, "corrupt");
    d.ok(&["run", "--name", "victim", &img, "true"]);
    let id = d.inspect("victim")["Id"].as_str().unwrap().to_string();
    d.stop();
    let path = d
        .data_root()
        .join("containers")
        .join(&id)
        .join("config.v2.json");
    std::fs::write(&path, "{ not json").unwrap();
    // Either the daemon refuses to start, or it starts and reports the file; never silence.
    let started = d.try_restart();
    let mut text = d.log();
    if started.is_ok() {
        let ps = d.cli(&["ps", "-a"]);
        text.push_str(&String::from_utf8_lossy(&ps.stderr));
    }
    assert!(
        text.contains(path.to_str().unwrap()),
        "the corrupt file's path is reported; log:\n{text}"
    );
}

#[test]
fn killing_a_shim_kills_its_container_and_records_the_loss() {
    let d = Daemon::start();
    let img = busybox_image(&d, "shimkill");
    d.ok(&["run", "-d", "--name", "orphan", &img, "sleep", "1000"]);
    let pid = d.inspect("orphan")["State"]["Pid"].as_i64().unwrap() as i32;
    let record = d
        .data_root()
        .join("containers")
        .join(d.inspect("orphan")["Id"].as_str().unwrap())
        .join("config.v2.json");
    let rec: serde_json::Value = serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let shim = rec["shim_pid"].as_i64().unwrap() as i32;
    assert!(shim > 0, "{rec}");
    // The shim we just looked up, by PID.
    let status = std::process::Command::new("kill")
        .args(["-9", &shim.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    poll_for(T, "the container to die with its shim", || {
        // Gone, or a zombie waiting for the machine's init to reap it.
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Ok(stat)
                if !stat
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z') =>
            {
                Err(format!("process {pid} still alive"))
            }
            _ => Ok(()),
        }
    });
    d.wait_status("orphan", "exited", T);
    let state = &d.inspect("orphan")["State"];
    assert!(
        state["Error"].as_str().unwrap_or("").contains("shim"),
        "{state}"
    );
}

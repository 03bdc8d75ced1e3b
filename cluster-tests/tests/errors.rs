//! Errors: one clear line, Docker's exit codes, and nothing half-created left behind (`ps -a`
//! and `volume ls` unchanged). Also several daemons side by side.

use std::time::Duration;

use cluster_tests::cluster::ClusterLab;
use cluster_tests::{busybox_image, poll_for, poll_until, Daemon};

/// What must not change when a command fails.
fn snapshot(d: &Daemon) -> (Vec<String>, Vec<String>) {
    (d.container_ids(), d.volume_names())
}

/// Runs `args`, expects exit code `want` and a stderr mentioning every word of `mentions`
/// (case-insensitive), and checks that no container or volume appeared.
fn refused(d: &Daemon, args: &[&str], want: i32, mentions: &[&str]) -> String {
    let before = snapshot(d);
    let (code, out, err) = d.run3(args);
    assert_eq!(
        code, want,
        "flotilla {args:?}: exit code\nstdout: {out}\nstderr: {err}"
    );
    let lower = err.to_lowercase();
    for m in mentions {
        assert!(
            lower.contains(&m.to_lowercase()),
            "flotilla {args:?}: stderr mentions {m:?}: {err}"
        );
    }
    assert!(!err.trim().is_empty(), "an error message is printed");
    assert!(
        err.trim().lines().count() <= 2,
        "a short message, not a dump: {err}"
    );
    assert_eq!(
        snapshot(d),
        before,
        "flotilla {args:?} left something behind"
    );
    err
}

#[test]
fn unknown_image() {
    let d = Daemon::start();
    busybox_image(&d, "present");
    refused(
        &d,
        &["run", "--rm", "absent-image", "true"],
        125,
        &["absent-image"],
    );
    refused(
        &d,
        &["run", "-d", "absent-image:v9", "true"],
        125,
        &["absent-image"],
    );
    refused(&d, &["create", "absent-image"], 125, &["absent-image"]);
    refused(
        &d,
        &["image", "inspect", "absent-image"],
        1,
        &["absent-image"],
    );
}

#[test]
fn name_conflict() {
    let d = Daemon::start();
    let img = busybox_image(&d, "names");
    d.ok(&["run", "-d", "--name", "taken", &img, "sleep", "1000"]);
    refused(
        &d,
        &["run", "--name", "taken", &img, "true"],
        125,
        &["taken", "in use"],
    );
    refused(
        &d,
        &["create", "--name", "taken", &img, "true"],
        125,
        &["taken"],
    );
    d.ok(&["run", "-d", "--name", "other", &img, "sleep", "1000"]);
    refused(&d, &["rename", "other", "taken"], 1, &["taken"]);
    refused(
        &d,
        &["run", "--name", "bad/name", &img, "true"],
        125,
        &["bad/name"],
    );
    assert_eq!(d.status("taken"), "running", "the first one is untouched");
}

#[test]
fn bad_flag_values() {
    let d = Daemon::start();
    let img = busybox_image(&d, "flags");
    refused(
        &d,
        &["run", "--rm", "-m", "1k", &img, "true"],
        125,
        &["memory"],
    );
    refused(
        &d,
        &["run", "--rm", "-m", "lots", &img, "true"],
        125,
        &["lots"],
    );
    refused(
        &d,
        &["run", "--rm", "--cpus", "99", &img, "true"],
        125,
        &["cpu"],
    );
    refused(&d, &["run", "--rm", "--cpus=-1", &img, "true"], 125, &[]);
    refused(
        &d,
        &["run", "--rm", "--restart", "sometimes", &img, "true"],
        125,
        &["restart"],
    );
    refused(
        &d,
        &["run", "--rm", "--restart", "on-failure:x", &img, "true"],
        125,
        &["restart"],
    );
    refused(
        &d,
        &["run", "--rm", "-v", ":::", &img, "true"],
        125,
        &["volume"],
    );
    refused(
        &d,
        &["run", "--rm", "-v", "relative/path:/x", &img, "true"],
        125,
        &[],
    );
    refused(
        &d,
        &["run", "--rm", "-v", "/tmp:/x:bogus", &img, "true"],
        125,
        &[],
    );
    refused(
        &d,
        &["run", "--rm", "--cap-add", "NOT_A_CAP", &img, "true"],
        125,
        &["NOT_A_CAP"],
    );
    refused(
        &d,
        &["run", "--rm", "--network", "carrier-pigeon", &img, "true"],
        125,
        &["carrier-pigeon"],
    );
    refused(
        &d,
        &["run", "--rm", "--stop-signal", "SIGNOPE", &img, "true"],
        125,
        &[],
    );
    refused(
        &d,
        &["run", "--rm", "-e", "=novalue", &img, "true"],
        125,
        &[],
    );
    refused(
        &d,
        &["run", "--rm", "--volumes-from", "nosuchctr", &img, "true"],
        125,
        &["nosuchctr"],
    );
    // Negative values are read as values and refused for being negative.
    refused(
        &d,
        &["run", "--rm", "-m", "-1m", &img, "true"],
        125,
        &["negative"],
    );
    refused(
        &d,
        &["run", "--rm", "--cpus", "-1", &img, "true"],
        125,
        &["negative"],
    );
    // The engine's shared rules: hostnames, stop timeouts in range.
    refused(
        &d,
        &["run", "--rm", "--hostname", "bad host name", &img, "true"],
        125,
        &["hostname"],
    );
    refused(
        &d,
        &[
            "run",
            "--rm",
            "--stop-timeout",
            "9223372036854775807",
            &img,
            "true",
        ],
        125,
        &["stop timeout"],
    );
    // --rm with a restart policy is a conflict in Docker.
    refused(
        &d,
        &["run", "--rm", "--restart", "always", &img, "true"],
        125,
        &[],
    );
    // The daemon is fine afterwards.
    assert_eq!(d.ok(&["run", "--rm", &img, "echo", "ok"]), "ok\n");
}

#[test]
fn unknown_flag_exits_125() {
    // Docker's CLI exits 125 on a flag it does not know (and says which); the usage dump is
    // not what a user needs.
    let d = Daemon::start();
    let img = busybox_image(&d, "uflag");
    refused(
        &d,
        &["run", "--no-such-flag", &img, "true"],
        125,
        &["--no-such-flag"],
    );
}

#[test]
fn missing_executable_and_bad_user() {
    let d = Daemon::start();
    let img = busybox_image(&d, "exe");
    let (code, _, err) = d.run3(&["run", "--rm", &img, "not-there"]);
    assert_eq!(code, 127, "{err}");
    assert!(
        err.contains("not-there") && err.lines().count() <= 2,
        "{err}"
    );
    assert!(
        d.container_ids().is_empty(),
        "--rm removed the failed container"
    );
    let (code, _, err) = d.run3(&["run", "--rm", "-u", "ghost", &img, "true"]);
    assert_ne!(code, 0, "unknown user fails");
    assert!(err.contains("ghost"), "{err}");
    let (code, _, err) = d.run3(&["run", "--rm", "-w", "/etc/passwd", &img, "true"]);
    assert_ne!(code, 0, "workdir that is a file fails: {err}");
}

#[test]
fn removing_running_container_or_used_volume_is_refused() {
    let d = Daemon::start();
    let img = busybox_image(&d, "busy");
    d.ok(&[
        "run", "-d", "--name", "busy", "-v", "inuse:/d", &img, "sleep", "1000",
    ]);
    let err = refused(&d, &["rm", "busy"], 1, &["running"]);
    assert!(
        err.contains("-f") || err.contains("force"),
        "says what to do: {err}"
    );
    refused(&d, &["volume", "rm", "inuse"], 1, &["inuse", "in use"]);
    refused(&d, &["rm", "nosuch"], 1, &["nosuch"]);
    refused(&d, &["stop", "nosuch"], 1, &["nosuch"]);
    refused(&d, &["exec", "nosuch", "true"], 1, &["nosuch"]);
    refused(&d, &["logs", "nosuch"], 1, &["nosuch"]);
    assert_eq!(d.status("busy"), "running");
}

#[test]
fn cli_without_a_daemon_says_so() {
    let mut d = Daemon::start();
    d.stop();
    let (code, _, err) = d.run3(&["ps"]);
    assert_ne!(code, 0);
    assert!(
        err.contains(d.socket().to_str().unwrap()) || err.to_lowercase().contains("daemon"),
        "names the socket or the daemon: {err}"
    );
    d.restart();
    d.ok(&["ps"]);
}

#[test]
fn several_daemons_side_by_side() {
    let a = Daemon::start();
    let b = Daemon::start();
    let c = Daemon::start();
    busybox_image(&a, "only-in-a");
    busybox_image(&b, "only-in-b");
    assert!(!b.ok(&["images"]).contains("only-in-a"));
    assert!(!c.ok(&["images"]).contains("only-in"));
    a.ok(&[
        "run",
        "-d",
        "--name",
        "same-name",
        "only-in-a",
        "sleep",
        "1000",
    ]);
    b.ok(&[
        "run",
        "-d",
        "--name",
        "same-name",
        "only-in-b",
        "sleep",
        "1000",
    ]);
    assert_ne!(a.inspect("same-name")["Id"], b.inspect("same-name")["Id"]);
    assert!(c.container_ids().is_empty());
    a.ok(&["volume", "create", "shared-name"]);
    assert!(b.volume_names().is_empty());
    // Removing in one does not touch the other.
    a.ok(&["rm", "-f", "same-name"]);
    assert_eq!(b.status("same-name"), "running");
    assert_eq!(b.ok(&["exec", "same-name", "echo", "alive"]), "alive\n");
}

#[test]
fn multi_target_verbs_act_on_each_and_report_each_failure() {
    let d = Daemon::start();
    let img = busybox_image(&d, "multi");
    d.ok(&["run", "-d", "--name", "one", &img, "sleep", "100"]);
    d.ok(&["run", "-d", "--name", "two", &img, "sleep", "100"]);
    let (code, out, err) = d.run3(&["stop", "-t", "0", "one", "ghost", "two"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), vec!["one", "two"], "{out}");
    assert!(err.contains("No such container: ghost"), "{err}");
    assert_eq!(d.status("one"), "exited");
    assert_eq!(d.status("two"), "exited");
}

/// Unmounts a tmpfs when dropped (also when the test fails).
struct TmpfsGuard(std::path::PathBuf);

impl Drop for TmpfsGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn full_disk_is_a_clear_error_and_leaves_no_half_image() {
    // No free-space reserve (that has its own test in hostile_registry.rs):
    // the import still measures what it writes against the space left.
    let mut d = Daemon::builder().arg("--min-free-space").arg("0").start();
    d.stop();
    // A 3 MiB data root: the busybox image (2 MiB tar, kept as a blob and
    // unpacked) cannot fit.
    let root = d.data_root();
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=3m", "tmpfs"])
        .arg(&root)
        .status()
        .expect("mount");
    assert!(ok.success(), "mount a small tmpfs on the data root");
    let _guard = TmpfsGuard(root.clone());
    d.restart();
    let tar = d.scratch().join("busybox.tar");
    cluster_tests::busybox_rootfs_tar(&tar);
    let (code, out, err) = d.run3(&["import", tar.to_str().unwrap(), "big:latest"]);
    assert_eq!(code, 1, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("not enough free space"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        d.ok(&["images", "-q"]).trim().is_empty(),
        "no image was recorded"
    );
    let leftovers: Vec<_> = std::fs::read_dir(root.join("image/tmp"))
        .map(|it| it.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        leftovers.is_empty(),
        "no temporary files left: {leftovers:?}"
    );
    d.stop();
}

/// Output cut short by the reader (`flotilla images | head -0`): the CLI
/// ends quietly with 141 (128 + SIGPIPE) like other Unix tools, without a
/// panic message.
#[test]
fn closed_stdout_ends_quietly() {
    let d = Daemon::start();
    busybox_image(&d, "present");
    let (read_end, write_end) = nix::unistd::pipe().expect("pipe");
    drop(read_end);
    let out = d
        .command(&["images"])
        .stdout(std::process::Stdio::from(std::fs::File::from(write_end)))
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run flotilla");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        cluster_tests::code(&out),
        141,
        "exit code with a closed stdout; stderr: {err}"
    );
    assert!(!err.contains("panicked"), "no panic message: {err}");
}

/// A join token of another cluster is refused in words, not with a dump of
/// rustls structures.
#[test]
fn a_token_of_another_cluster_says_so() {
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1", "m2", "w1"], "300ms");
    c.init("m1");
    c.init("m2");
    let token = c.token("m1", "worker");
    let err = c.failing_worker_join("w1", &token, "m2");
    assert!(err.contains("belongs to another cluster"), "{err}");
    assert!(err.contains("CA digest"), "{err}");
    assert!(
        !err.contains("OtherError") && !err.contains("Other("),
        "{err}"
    );
}

/// A removed worker says once that it was removed and runs on as a plain
/// engine: its containers stay, its socket serves the engine API, it does
/// not retry, and it starts as a plain engine after a restart. The revoked
/// certificate, used by the CLI, is refused as revoked. A client certificate
/// used by a node is told it may not make node calls.
#[test]
fn removed_workers_and_misused_certificates_are_told_so() {
    let _serial = cluster_tests::cluster::serial();
    const T: Duration = Duration::from_secs(60);
    let c = ClusterLab::new(&["m1", "w1", "w2"], "300ms");
    let m1 = c.init("m1");
    c.join_worker("w1", "m1");
    c.join_worker("w2", "m1");
    c.load_busybox(&["w1"]);
    poll_until(T, "3 ready nodes", || {
        c.nodes("m1", false)
            .iter()
            .filter(|n| n["Status"] == "ready")
            .count()
            == 3
    });
    c.cli(
        "w1",
        &[
            "run",
            "-d",
            "--name",
            "keep",
            "--network",
            "none",
            "busybox",
            "sleep",
            "1000",
        ],
    )
    .ok("run keep on w1");

    c.cli("m1", &["node", "rm", "--force", "w1"])
        .ok("node rm w1");
    let w1 = c.node("w1");
    w1.proc.wait_for_log("runs on as a plain engine", T);
    let data = w1.data_root.clone();
    let retired = poll_for(T, "w1's cluster files moved aside", || {
        std::fs::read_dir(&data)
            .ok()
            .and_then(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .find(|p| p.to_string_lossy().contains("cluster.removed-"))
            })
            .ok_or_else(|| "no cluster.removed-* directory".to_string())
    });
    assert!(!data.join("cluster").exists());
    assert!(w1.proc.is_running(), "{}", w1.proc.log());
    let ps = c.cli("w1", &["ps"]).ok("ps on w1");
    assert!(ps.contains("keep"), "its container stays: {ps}");
    let out = c.cli("w1", &["node", "ls"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("was removed"), "{}", out.stderr);

    // Its revoked certificate, used by the CLI, is refused as revoked.
    let remote = format!("tcp://{}", m1.addr);
    let file = |name: &str| retired.join(name).display().to_string();
    let out = c.lab.host("w1").run(
        cluster_tests::bin("flotilla"),
        &[
            "-H",
            &remote,
            "--tlscacert",
            &file("ca.pem"),
            "--tlscert",
            &file("cert.pem"),
            "--tlskey",
            &file("key.pem"),
            "node",
            "ls",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("revoked"), "{err}");
    assert!(!err.contains("operation was canceled"), "{err}");

    // Said once, and no retries after it.
    let log = w1.proc.log();
    assert_eq!(
        log.matches("runs on as a plain engine").count(),
        1,
        "said once: {log}"
    );
    let after = log.split("runs on as a plain engine").nth(1).unwrap_or("");
    assert!(
        !after.contains("session with the managers ended"),
        "no retries after the removal: {log}"
    );

    // Restarted, it is a plain engine: no agent, no retries.
    w1.proc.kill9();
    let w1 = c.resume_worker("w1");
    let ps = c.cli("w1", &["ps"]).ok("ps on w1 after a restart");
    assert!(ps.contains("keep"), "{ps}");
    let out = c.cli("w1", &["node", "ls"]);
    assert!(
        out.stderr.contains("not part of a cluster"),
        "{}",
        out.stderr
    );
    let log = w1.proc.log();
    assert!(
        !log.contains("worker agent started"),
        "a removed node runs no agent after a restart: {log}"
    );

    // A node presenting a client certificate is told node calls are not
    // for it (not that it was removed).
    let w2 = c.node("w2");
    w2.proc.kill9();
    let certs = c.lab.host("w2").dir().join("client-certs");
    let out = std::process::Command::new(cluster_tests::bin("flotilla-manager"))
        .arg("-H")
        .arg(&m1.socket)
        .arg("client-cert")
        .arg("--out")
        .arg(&certs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(certs.join(f), w2.data_root.join("cluster").join(f)).unwrap();
    }
    let w2 = c.resume_worker("w2");
    let log = w2.proc.wait_for_log("node-only call", T);
    assert!(!log.contains("was removed"), "{log}");
    assert!(w2.data_root.join("cluster").exists(), "not retired");
}

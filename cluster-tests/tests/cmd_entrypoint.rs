//! CMD / ENTRYPOINT / run-argument combinations, as the seed notes walk through them and as
//! Docker resolves them, and Docker's exit codes (own code, 125, 126, 127, 137).

use std::time::Duration;

use cluster_tests::{busybox_image, busybox_image_with, Daemon};

/// The listing of the image's /etc as busybox `ls` prints it (one name a line, not a tty).
const ETC: &str = "group\nhostname\nhosts\npasswd\nresolv.conf\n";

#[test]
fn cmd_shell_form_runs_under_sh_and_run_args_replace_it() {
    let d = Daemon::start();
    let img = busybox_image_with(&d, "cmd-shell", &["CMD ls /etc"]);
    let cfg = d.inspect(&img);
    assert_eq!(
        cfg["Config"]["Cmd"],
        serde_json::json!(["/bin/sh", "-c", "ls /etc"]),
        "shell-form CMD is stored as /bin/sh -c: {cfg}"
    );
    assert_eq!(d.ok(&["run", "--rm", &img]), ETC);
    // Run arguments replace CMD entirely.
    assert_eq!(
        d.ok(&["run", "--rm", &img, "echo", "replaced"]),
        "replaced\n"
    );
}

#[test]
fn cmd_exec_form_with_and_without_run_args() {
    let d = Daemon::start();
    let img = busybox_image_with(&d, "cmd-exec", &[r#"CMD ["ls", "/etc"]"#]);
    assert_eq!(
        d.inspect(&img)["Config"]["Cmd"],
        serde_json::json!(["ls", "/etc"])
    );
    assert_eq!(d.ok(&["run", "--rm", &img]), ETC);
    assert_eq!(d.ok(&["run", "--rm", &img, "ls", "/bin/sh"]), "/bin/sh\n");
    // The exec form does not go through a shell: no expansion of $HOME-like words.
    let img2 = busybox_image_with(&d, "cmd-exec-noshell", &[r#"CMD ["echo", "$PATH"]"#]);
    assert_eq!(d.ok(&["run", "--rm", &img2]), "$PATH\n");
}

#[test]
fn entrypoint_shell_form_ignores_run_args_and_cmd() {
    let d = Daemon::start();
    let img = busybox_image_with(
        &d,
        "ep-shell",
        &["ENTRYPOINT ls /etc", r#"CMD ["ignored"]"#],
    );
    assert_eq!(
        d.inspect(&img)["Config"]["Entrypoint"],
        serde_json::json!(["/bin/sh", "-c", "ls /etc"])
    );
    assert_eq!(d.ok(&["run", "--rm", &img]), ETC);
    // `docker run IMAGE ls -l` with a shell-form ENTRYPOINT: the arguments are ignored.
    assert_eq!(d.ok(&["run", "--rm", &img, "ls", "-l"]), ETC);
}

#[test]
fn entrypoint_exec_form_appends_run_args() {
    let d = Daemon::start();
    let img = busybox_image_with(&d, "ep-exec", &[r#"ENTRYPOINT ["echo", "ep"]"#]);
    assert_eq!(d.ok(&["run", "--rm", &img]), "ep\n");
    assert_eq!(d.ok(&["run", "--rm", &img, "a", "b"]), "ep a b\n");

    // The seed's `ENTRYPOINT ["ls", "-l"]` + `run IMAGE ls`: "ls" becomes an argument of ls.
    let ls = busybox_image_with(&d, "ep-ls", &[r#"ENTRYPOINT ["ls", "-d"]"#]);
    let (code, out, err) = d.run3(&["run", "--rm", &ls, "ps"]);
    assert_ne!(code, 0, "ls -d ps must fail: {out} {err}");
    assert!(err.contains("ps"), "ls complains about 'ps': {err}");
    // An option as run argument reaches the entrypoint as an option.
    assert_eq!(d.ok(&["run", "--rm", &ls, "/etc", "/tmp"]), "/etc\n/tmp\n");
}

#[test]
fn cmd_exec_form_gives_default_args_to_entrypoint() {
    let d = Daemon::start();
    let img = busybox_image_with(
        &d,
        "ep-cmd",
        &[r#"ENTRYPOINT ["echo", "ep"]"#, r#"CMD ["default", "args"]"#],
    );
    assert_eq!(d.ok(&["run", "--rm", &img]), "ep default args\n");
    // Run arguments replace CMD, never ENTRYPOINT.
    assert_eq!(d.ok(&["run", "--rm", &img, "given"]), "ep given\n");
    // A shell-form CMD becomes `/bin/sh -c …` arguments of the entrypoint, as in Docker.
    let img2 = busybox_image_with(
        &d,
        "ep-cmdshell",
        &[r#"ENTRYPOINT ["echo"]"#, "CMD hi there"],
    );
    assert_eq!(d.ok(&["run", "--rm", &img2]), "/bin/sh -c hi there\n");
}

#[test]
fn entrypoint_flag_replaces_entrypoint_and_drops_cmd() {
    let d = Daemon::start();
    let img = busybox_image_with(
        &d,
        "ep-override",
        &[r#"ENTRYPOINT ["echo", "ep"]"#, r#"CMD ["from-cmd"]"#],
    );
    // --entrypoint replaces ENTRYPOINT, and the image's CMD is not used.
    assert_eq!(d.ok(&["run", "--rm", "--entrypoint", "echo", &img]), "\n");
    assert_eq!(
        d.ok(&["run", "--rm", "--entrypoint", "echo", &img, "x", "y"]),
        "x y\n"
    );
    assert_eq!(
        d.ok(&[
            "run",
            "--rm",
            "--entrypoint",
            "/bin/hostname",
            "-h",
            "given",
            &img
        ]),
        "given\n"
    );
    // --entrypoint "" clears it: the run arguments are the whole command.
    assert_eq!(
        d.ok(&["run", "--rm", "--entrypoint", "", &img, "echo", "hi"]),
        "hi\n"
    );
    // With nothing left to run, Docker refuses with "No command specified" (125).
    let (code, _, err) = d.run3(&["run", "--rm", "--entrypoint", "", &img]);
    assert_eq!(code, 125, "no command: {err}");
    assert!(
        err.to_lowercase().contains("no command"),
        "says there is no command: {err}"
    );
}

#[test]
fn image_without_cmd_or_entrypoint_needs_a_command() {
    let d = Daemon::start();
    let img = busybox_image(&d, "plain");
    let (code, _, err) = d.run3(&["run", "--rm", &img]);
    assert_eq!(code, 125, "{err}");
    assert!(err.to_lowercase().contains("no command"), "{err}");
}

#[test]
fn exit_codes_follow_docker() {
    let d = Daemon::start();
    let img = busybox_image(&d, "codes");
    // The process's own code.
    assert_eq!(d.run3(&["run", "--rm", &img, "sh", "-c", "exit 42"]).0, 42);
    assert_eq!(d.run3(&["run", "--rm", &img, "false"]).0, 1);
    assert_eq!(d.run3(&["run", "--rm", &img, "true"]).0, 0);
    // 125: an engine error (bad flag value) before anything runs.
    let (code, _, err) = d.run3(&["run", "--rm", "--restart", "sometimes", &img, "true"]);
    assert_eq!(code, 125, "{err}");
    // 126: found but not executable (a plain file, a directory).
    let (code, _, err) = d.run3(&["run", "--rm", &img, "/etc/passwd"]);
    assert_eq!(code, 126, "{err}");
    assert!(err.contains("/etc/passwd"), "names the file: {err}");
    assert_eq!(d.run3(&["run", "--rm", &img, "/tmp"]).0, 126);
    // 127: not found, on $PATH or by path.
    let (code, _, err) = d.run3(&["run", "--rm", &img, "no-such-binary"]);
    assert_eq!(code, 127, "{err}");
    assert!(err.contains("no-such-binary"), "names the command: {err}");
    assert_eq!(d.run3(&["run", "--rm", &img, "/bin/nope"]).0, 127);
}

#[test]
fn exit_code_137_after_kill() {
    let d = Daemon::start();
    let img = busybox_image(&d, "killed");
    d.ok(&["run", "-d", "--name", "victim", &img, "sleep", "1000"]);
    d.wait_status("victim", "running", Duration::from_secs(10));
    d.ok(&["kill", "-s", "KILL", "victim"]);
    assert_eq!(d.ok(&["wait", "victim"]).trim(), "137");
    let state = &d.inspect("victim")["State"];
    assert_eq!(state["ExitCode"], 137, "{state}");
    assert_eq!(state["OOMKilled"], false, "{state}");
    // `run` in the foreground reports the same code when the container is killed meanwhile.
    let mut fg = d.command(&["run", "--name", "fg", &img, "sleep", "1000"]);
    fg.stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = fg.spawn().expect("spawn run");
    d.wait_status("fg", "running", Duration::from_secs(10));
    d.ok(&["kill", "fg"]);
    let status = child.wait().expect("wait run");
    assert_eq!(status.code(), Some(137));
}

#[test]
fn exit_code_137_and_oomkilled_after_oom() {
    let d = Daemon::start();
    let img = busybox_image(&d, "oom");
    let (code, out, err) = d.run3(&[
        "run",
        "--name",
        "hog",
        "-m",
        "8m",
        &img,
        "sh",
        "-c",
        r#"x=$(head -c 50000000 /dev/zero | tr "\0" a); echo ${#x}"#,
    ]);
    assert_eq!(
        code, 137,
        "over -m 8m the process is OOM-killed: {out} {err}"
    );
    let state = &d.inspect("hog")["State"];
    assert_eq!(state["ExitCode"], 137, "{state}");
    assert_eq!(state["OOMKilled"], true, "{state}");
    // The same work under a big enough limit succeeds: the limit, not the command, killed it.
    let out = d.ok(&[
        "run",
        "--rm",
        "-m",
        "512m",
        &img,
        "sh",
        "-c",
        r#"x=$(head -c 5000000 /dev/zero | tr "\0" a); echo ${#x}"#,
    ]);
    assert_eq!(out.trim(), "5000000");
}

//! Isolation, checked from inside the container (and from the host where the host is the
//! witness): namespaces, hostname, PID 1, capabilities, no_new_privs, mounts and masked paths,
//! read-only rootfs, networking modes, and cgroup limits.

use std::collections::BTreeSet;
use std::time::Duration;

use cluster_tests::{busybox_image, cgroup_dir_of, cgroup_v2, Daemon};

/// Docker's default capability set as a /proc/self/status mask.
const DOCKER_DEFAULT_CAPS: &str = "00000000a80425fb";

fn status_field(status: &str, field: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in:\n{status}"))
        .trim()
        .to_string()
}

fn start_sleeper(d: &Daemon, img: &str, name: &str, extra: &[&str]) -> (String, i32) {
    let mut args = vec!["run", "-d", "--name", name];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[img, "sleep", "1000"]);
    let id = d.ok(&args).trim().to_string();
    d.wait_status(name, "running", Duration::from_secs(10));
    let pid = d.inspect(name)["State"]["Pid"].as_i64().expect("State.Pid") as i32;
    assert!(pid > 0, "running container has a host PID");
    (id, pid)
}

#[test]
fn namespaces_are_new_except_the_host_network() {
    let d = Daemon::start();
    let img = busybox_image(&d, "ns");
    let (_, pid) = start_sleeper(&d, &img, "iso", &[]);
    let (_, host_pid) = start_sleeper(&d, &img, "hostnet", &["--network", "host"]);
    let ns = |pid: &str, kind: &str| {
        std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
            .unwrap_or_else(|e| panic!("readlink ns/{kind} of {pid}: {e}"))
    };
    for kind in ["pid", "mnt", "uts", "ipc", "net"] {
        assert_ne!(
            ns(&pid.to_string(), kind),
            ns("self", kind),
            "container has its own {kind} namespace"
        );
    }
    assert_eq!(
        ns(&host_pid.to_string(), "net"),
        ns("self", "net"),
        "--network host shares the host's network namespace"
    );
    assert_ne!(ns(&host_pid.to_string(), "pid"), ns("self", "pid"));
}

#[test]
fn hostname_defaults_to_short_id_and_h_sets_it() {
    let d = Daemon::start();
    let img = busybox_image(&d, "host");
    let (id, _) = start_sleeper(&d, &img, "named", &[]);
    assert_eq!(d.ok(&["exec", "named", "hostname"]).trim(), &id[..12]);
    assert_eq!(
        d.ok(&["exec", "named", "cat", "/etc/hostname"]).trim(),
        &id[..12]
    );
    assert_eq!(d.inspect("named")["Config"]["Hostname"], &id[..12]);
    assert_eq!(
        d.ok(&["run", "--rm", "-h", "box.example", &img, "hostname"])
            .trim(),
        "box.example"
    );
    // /etc/hosts is managed: localhost resolves; /etc/resolv.conf exists.
    let hosts = d.ok(&["exec", "named", "cat", "/etc/hosts"]);
    assert!(
        hosts.contains("127.0.0.1") && hosts.contains("localhost"),
        "{hosts}"
    );
    d.ok(&["exec", "named", "test", "-f", "/etc/resolv.conf"]);
}

#[test]
fn pid_1_is_the_command() {
    let d = Daemon::start();
    let img = busybox_image(&d, "pid1");
    assert_eq!(
        d.ok(&["run", "--rm", &img, "cat", "/proc/1/cmdline"]),
        "cat\0/proc/1/cmdline\0"
    );
    assert_eq!(
        d.ok(&["run", "--rm", &img, "sh", "-c", "echo $$; true"])
            .trim(),
        "1"
    );
    // Only the container's processes are visible.
    let (_, _) = start_sleeper(&d, &img, "pids", &[]);
    let ps = d.ok(&["exec", "pids", "ps", "-o", "pid,comm"]);
    let procs: Vec<&str> = ps.lines().skip(1).collect();
    assert_eq!(procs.len(), 2, "sleep and ps only: {ps}");
    assert!(
        procs[0].trim().starts_with("1 ") && procs[0].contains("sleep"),
        "{ps}"
    );
}

#[test]
fn default_capabilities_and_no_new_privs() {
    let d = Daemon::start();
    let img = busybox_image(&d, "caps");
    let status = d.ok(&["run", "--rm", &img, "cat", "/proc/self/status"]);
    assert_eq!(status_field(&status, "CapEff"), DOCKER_DEFAULT_CAPS);
    assert_eq!(status_field(&status, "CapPrm"), DOCKER_DEFAULT_CAPS);
    assert_eq!(status_field(&status, "CapBnd"), DOCKER_DEFAULT_CAPS);
    assert_eq!(status_field(&status, "CapAmb"), "0000000000000000");
    assert_eq!(status_field(&status, "NoNewPrivs"), "1");
    // A capability outside the default set really is missing: mounting needs CAP_SYS_ADMIN.
    let (code, _, _) = d.run3(&["run", "--rm", &img, "mount", "-t", "tmpfs", "t", "/mnt"]);
    assert_ne!(code, 0, "mount needs CAP_SYS_ADMIN, which is not granted");
}

#[test]
fn cap_add_and_cap_drop_change_the_mask() {
    let d = Daemon::start();
    let img = busybox_image(&d, "capflags");
    let eff = |extra: &[&str]| {
        let mut args = vec!["run", "--rm"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[&img, "cat", "/proc/self/status"]);
        status_field(&d.ok(&args), "CapEff")
    };
    // NET_ADMIN is bit 12 (0x1000); CHOWN is bit 0 (0x1).
    assert_eq!(
        eff(&["--cap-add", "NET_ADMIN", "--cap-drop", "CHOWN"]),
        "00000000a80435fa"
    );
    assert_eq!(eff(&["--cap-add", "CAP_SYS_ADMIN"]), "00000000a82425fb");
    assert_eq!(eff(&["--cap-drop", "ALL"]), "0000000000000000");
    assert_eq!(
        eff(&["--cap-drop", "ALL", "--cap-add", "KILL"]),
        "0000000000000020"
    );
    // Dropped CHOWN is observable: chown fails.
    let (code, _, _) = d.run3(&[
        "run",
        "--rm",
        "--cap-drop",
        "CHOWN",
        &img,
        "sh",
        "-c",
        "touch /f && chown 1 /f",
    ]);
    assert_ne!(code, 0, "chown without CAP_CHOWN fails");
    d.ok(&["run", "--rm", &img, "sh", "-c", "touch /f && chown 1 /f"]);
}

#[test]
fn cap_add_all_grants_every_capability_the_engine_has() {
    let d = Daemon::start();
    let img = busybox_image(&d, "capall");
    let status = d.ok(&[
        "run",
        "--rm",
        "--cap-add",
        "ALL",
        &img,
        "cat",
        "/proc/self/status",
    ]);
    let host = std::fs::read_to_string("/proc/self/status").expect("host status");
    assert_eq!(
        status_field(&status, "CapEff"),
        status_field(&host, "CapBnd")
    );
}

#[test]
fn user_nobody_has_no_effective_caps() {
    let d = Daemon::start();
    let img = busybox_image(&d, "nobody");
    let out = d.ok(&[
        "run",
        "--rm",
        "-u",
        "nobody",
        &img,
        "sh",
        "-c",
        "id; cat /proc/self/status",
    ]);
    assert!(out.starts_with("uid=65534(nobody) gid=65534"), "{out}");
    assert_eq!(status_field(&out, "CapEff"), "0000000000000000");
    assert_eq!(status_field(&out, "CapPrm"), "0000000000000000");
    assert_eq!(status_field(&out, "NoNewPrivs"), "1");
    assert_eq!(
        d.ok(&["run", "--rm", "-u", "65534:65534", &img, "id", "-u"])
            .trim(),
        "65534"
    );
    // nobody cannot write root's files.
    let (code, _, _) = d.run3(&["run", "--rm", "-u", "nobody", &img, "touch", "/etc/x"]);
    assert_ne!(code, 0);
}

#[test]
fn mounts_devices_and_masked_paths() {
    let d = Daemon::start();
    let img = busybox_image(&d, "mounts");
    let mounts = d.ok(&["run", "--rm", &img, "cat", "/proc/mounts"]);
    let find = |target: &str| -> (String, String) {
        let line = mounts
            .lines()
            .find(|l| l.split(' ').nth(1) == Some(target))
            .unwrap_or_else(|| panic!("no mount at {target}:\n{mounts}"));
        let f: Vec<&str> = line.split(' ').collect();
        (f[2].to_string(), f[3].to_string())
    };
    assert_eq!(find("/").0, "overlay");
    assert_eq!(find("/proc").0, "proc");
    assert_eq!(find("/dev").0, "tmpfs");
    assert_eq!(find("/dev/pts").0, "devpts");
    assert_eq!(find("/dev/shm").0, "tmpfs");
    assert_eq!(find("/dev/mqueue").0, "mqueue");
    let (fs, opts) = find("/sys");
    assert_eq!(fs, "sysfs");
    assert!(opts.split(',').any(|o| o == "ro"), "/sys read-only: {opts}");
    assert!(
        find("/proc/sys").1.split(',').any(|o| o == "ro"),
        "/proc/sys read-only"
    );

    let dev = d.ok(&["run", "--rm", &img, "ls", "/dev"]);
    let dev: BTreeSet<&str> = dev.split_whitespace().collect();
    for want in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "shm", "mqueue",
    ] {
        assert!(dev.contains(want), "/dev/{want} missing: {dev:?}");
    }
    // The devices work, and nothing else of the host's /dev is there.
    let out = d.ok(&[
        "run", "--rm", &img, "sh", "-c",
        "head -c 16 /dev/urandom | wc -c; head -c 3 /dev/zero | wc -c; echo x > /dev/null && echo null-ok; echo x > /dev/full || echo full-refused",
    ]);
    assert_eq!(out, "16\n3\nnull-ok\nfull-refused\n");
    assert!(
        !dev.contains("sda") && !dev.contains("vda") && !dev.contains("mem"),
        "{dev:?}"
    );

    // Writes to /sys and /proc/sys are refused.
    let (code, _, err) = d.run3(&[
        "run",
        "--rm",
        &img,
        "sh",
        "-c",
        "echo 1 > /proc/sys/kernel/domainname",
    ]);
    assert_ne!(code, 0, "{err}");
    let (code, _, _) = d.run3(&["run", "--rm", &img, "touch", "/sys/kernel/x"]);
    assert_ne!(code, 0);

    // Masked paths: readable host files are empty (or absent) inside.
    for path in [
        "/proc/kcore",
        "/proc/timer_list",
        "/proc/keys",
        "/proc/sched_debug",
    ] {
        let out = d.ok(&[
            "run",
            "--rm",
            &img,
            "sh",
            "-c",
            &format!("cat {path} 2>/dev/null | wc -c"),
        ]);
        assert_eq!(out.trim(), "0", "{path} is masked");
    }
    let fw = d.ok(&["run", "--rm", &img, "ls", "-A", "/sys/firmware"]);
    assert_eq!(fw, "", "/sys/firmware is masked");
}

#[test]
fn read_only_rootfs_refuses_writes_but_volumes_work() {
    let d = Daemon::start();
    let img = busybox_image(&d, "ro");
    let out = d.ok(&[
        "run", "--rm", "--read-only", "-v", "/scratch", "-v", "rovol:/data", &img, "sh", "-c",
        "touch /x 2>/dev/null && echo root-writable; touch /etc/x 2>/dev/null && echo etc-writable; \
         echo a > /scratch/a && cat /scratch/a; echo b > /data/b && cat /data/b",
    ]);
    assert_eq!(out, "a\nb\n");
    // The named volume outlives the --rm container.
    assert!(d.volume_names().contains(&"rovol".to_string()));
    // inspect says so.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "rocheck",
        "--read-only",
        &img,
        "sleep",
        "100",
    ]);
    assert_eq!(d.inspect("rocheck")["HostConfig"]["ReadonlyRootfs"], true);
}

fn interfaces(proc_net_dev: &str) -> BTreeSet<String> {
    proc_net_dev
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|s| s.trim().to_string())
        .collect()
}

#[test]
fn network_none_has_only_loopback_and_host_sees_host_interfaces() {
    let d = Daemon::start();
    let img = busybox_image(&d, "net");
    let none = d.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        &img,
        "cat",
        "/proc/net/dev",
    ]);
    assert_eq!(
        interfaces(&none),
        BTreeSet::from(["lo".to_string()]),
        "{none}"
    );
    let host_view = d.ok(&[
        "run",
        "--rm",
        "--network",
        "host",
        &img,
        "cat",
        "/proc/net/dev",
    ]);
    let host = std::fs::read_to_string("/proc/net/dev").expect("host /proc/net/dev");
    // Other tests add and remove veths on the host concurrently: compare the
    // interfaces that are not theirs.
    let stable = |text: &str| -> BTreeSet<String> {
        interfaces(text)
            .into_iter()
            .filter(|i| !i.starts_with("veth") && !i.starts_with("flt") && !i.starts_with("fch"))
            .collect()
    };
    assert_eq!(stable(&host_view), stable(&host));
    assert!(stable(&host).len() > 1, "the host has more than lo");
}

#[test]
fn memory_limit_kills_the_process_over_it() {
    let d = Daemon::start();
    let img = busybox_image(&d, "mem");
    // dd keeps a 32 MiB block in memory; under -m 8m it is killed.
    let (code, out, err) = d.run3(&[
        "run",
        "--name",
        "memhog",
        "-m",
        "8m",
        &img,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=32M",
        "count=1",
    ]);
    assert_eq!(code, 137, "{out} {err}");
    assert_eq!(d.inspect("memhog")["State"]["OOMKilled"], true);
    // The same dd fits in 128m.
    d.ok(&[
        "run",
        "--rm",
        "-m",
        "128m",
        &img,
        "dd",
        "if=/dev/zero",
        "of=/dev/null",
        "bs=32M",
        "count=1",
    ]);
}

#[test]
fn pids_limit_bounds_a_fork_bomb() {
    let d = Daemon::start();
    let img = busybox_image(&d, "pids");
    let script = "for i in $(seq 50); do sleep 30 & done; echo all-started";
    let (code, out, err) = d.run3(&[
        "run",
        "--rm",
        "--pids-limit",
        "10",
        &img,
        "sh",
        "-c",
        script,
    ]);
    assert_ne!(
        code, 0,
        "50 processes under --pids-limit 10 must fail: {out}"
    );
    assert!(!out.contains("all-started"), "{out}");
    assert!(err.contains("fork") || err.contains("Resource"), "{err}");
    // Without the limit the same script succeeds (and the shell exits, leaving the sleeps to
    // be killed with the container).
    let out = d.ok(&["run", "--rm", &img, "sh", "-c", script]);
    assert_eq!(out.trim(), "all-started");
}

#[test]
fn cgroup_files_on_the_host_hold_the_limits() {
    let d = Daemon::start();
    let img = busybox_image(&d, "cg");
    let (id, pid) = start_sleeper(
        &d,
        &img,
        "limited",
        &[
            "-m",
            "64m",
            "--pids-limit",
            "20",
            "--cpus",
            "0.5",
            "-c",
            "512",
        ],
    );
    // The container's process is in flotilla's cgroups, which hold the limits.
    let dirs: Vec<std::path::PathBuf> = ["memory", "pids", "cpu"]
        .iter()
        .map(|c| cgroup_dir_of(pid, c))
        .collect();
    for dir in &dirs {
        assert!(
            dir.parent().is_some_and(|p| p.ends_with("flotilla")),
            "container {id} is in a flotilla/<…> cgroup: {}",
            dir.display()
        );
    }
    let read = |controller: &str, file: &str| {
        let path = cgroup_dir_of(pid, controller).join(file);
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
            .trim()
            .to_string()
    };
    if cgroup_v2() {
        assert_eq!(read("memory", "memory.max"), "67108864");
        assert_eq!(read("pids", "pids.max"), "20");
        assert_eq!(read("cpu", "cpu.max"), "50000 100000");
    } else {
        assert_eq!(read("memory", "memory.limit_in_bytes"), "67108864");
        assert_eq!(read("pids", "pids.max"), "20");
        assert_eq!(read("cpu", "cpu.cfs_quota_us"), "50000");
        assert_eq!(read("cpu", "cpu.cfs_period_us"), "100000");
        assert_eq!(read("cpu", "cpu.shares"), "512");
    }
    let hc = &d.inspect("limited")["HostConfig"];
    assert_eq!(hc["Memory"], 67108864, "{hc}");
    assert_eq!(hc["PidsLimit"], 20, "{hc}");
    assert_eq!(hc["NanoCpus"], 500000000, "{hc}");
    assert_eq!(hc["CpuShares"], 512, "{hc}");
    // Removing the container removes its cgroups.
    d.ok(&["rm", "-f", "limited"]);
    for dir in &dirs {
        assert!(
            !dir.exists(),
            "cgroup {} of a removed container is gone",
            dir.display()
        );
    }
}

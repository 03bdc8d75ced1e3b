//! Containment by the runtime (issue 10, items 3 and 5 and the runtime half of the "Low"
//! list), each shown by doing the attack from inside a real container:
//! - the default seccomp profile (`Seccomp: 2`, no user namespaces, unconfined on request);
//! - the device allow-list (mknod works, using the node does not; image-shipped nodes are dead;
//!   `--device` adds a usable node);
//! - mount destinations resolved inside the rootfs by the kernel, so an image's symlinks cannot
//!   make the runtime create or mount anything on the host.

use std::path::{Path, PathBuf};

use cluster_tests::Daemon;

/// Applets the tests below need beyond the shared busybox image's.
const MORE_APPLETS: &[&str] = &["unshare", "mknod"];

/// One entry of the test image beyond busybox and its applets.
enum Extra<'a> {
    /// A character device node with mode 0666.
    CharDev(&'a str, u32, u32),
    Symlink(&'a str, &'a str),
    Dir(&'a str),
}

/// Writes the shared busybox rootfs tarball plus [`MORE_APPLETS`] and `extras`.
fn rootfs_tar(dest: &Path, extras: &[Extra]) {
    cluster_tests::busybox_rootfs_tar_with(dest, |tar| {
        let header = |kind: tar::EntryType, mode: u32| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_mtime(0);
            h.set_size(0);
            h
        };
        for applet in MORE_APPLETS {
            let mut h = header(tar::EntryType::Symlink, 0o777);
            tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
                .unwrap();
        }
        for extra in extras {
            match extra {
                Extra::CharDev(path, major, minor) => {
                    let mut h = header(tar::EntryType::Char, 0o666);
                    h.set_device_major(*major).unwrap();
                    h.set_device_minor(*minor).unwrap();
                    tar.append_data(&mut h, path, std::io::empty()).unwrap();
                }
                Extra::Symlink(path, target) => {
                    let mut h = header(tar::EntryType::Symlink, 0o777);
                    tar.append_link(&mut h, path, target).unwrap();
                }
                Extra::Dir(path) => {
                    let mut h = header(tar::EntryType::Directory, 0o755);
                    tar.append_data(&mut h, path, std::io::empty()).unwrap();
                }
            }
        }
    });
}

/// Imports an image made of busybox plus `extras` as `name`.
fn image(d: &Daemon, name: &str, extras: &[Extra]) -> String {
    let tar = d.scratch().join(format!("{name}.tar"));
    rootfs_tar(&tar, extras);
    d.ok(&["import", &tar.to_string_lossy(), name]);
    name.to_string()
}

/// `run --rm ARGS…`: (exit code, stdout, stderr).
fn run(d: &Daemon, args: &[&str]) -> (i32, String, String) {
    let mut all = vec!["run", "--rm"];
    all.extend_from_slice(args);
    d.run3(&all)
}

fn seccomp_mode(status: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .unwrap_or_else(|| panic!("no Seccomp line in:\n{status}"))
        .trim()
        .to_string()
}

#[test]
fn default_containers_and_execs_run_under_the_seccomp_filter() {
    let d = Daemon::start();
    let img = image(&d, "sec-status", &[]);
    let (code, out, err) = run(&d, &[&img, "cat", "/proc/self/status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(seccomp_mode(&out), "2", "default container is filtered");

    let (code, out, err) = run(
        &d,
        &[
            "--security-opt",
            "seccomp=unconfined",
            &img,
            "cat",
            "/proc/self/status",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(seccomp_mode(&out), "0", "seccomp=unconfined turns it off");

    // --init: both the init and the command are filtered.
    let (code, out, err) = run(&d, &["--init", &img, "cat", "/proc/1/status"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(seccomp_mode(&out), "2", "the --init process is filtered");

    d.ok(&["run", "-d", "--name", "sleeper", &img, "sleep", "1000"]);
    let out = d.ok(&["exec", "sleeper", "cat", "/proc/self/status"]);
    assert_eq!(seccomp_mode(&out), "2", "exec'd processes are filtered");
    d.ok(&["rm", "-f", "sleeper"]);
}

#[test]
fn user_namespaces_are_refused_unless_unconfined() {
    let d = Daemon::start();
    let img = image(&d, "sec-unshare", &[]);
    // The attack: a user namespace gives container root a full capability set inside it.
    let (code, _, err) = run(&d, &[&img, "unshare", "-U", "-r", "id", "-u"]);
    assert_ne!(code, 0, "unshare -U must fail in a default container");
    assert!(err.contains("Operation not permitted"), "stderr: {err}");
    // unshare(2) of a mount namespace, and clone flags, are refused the same way.
    let (code, _, err) = run(&d, &[&img, "unshare", "-m", "true"]);
    assert_ne!(code, 0);
    assert!(err.contains("Operation not permitted"), "stderr: {err}");

    // The same call works once the filter is off: the refusal above is the filter's.
    let (code, out, err) = run(
        &d,
        &[
            "--security-opt",
            "seccomp=unconfined",
            &img,
            "unshare",
            "-U",
            "-r",
            "id",
            "-u",
        ],
    );
    assert_eq!(code, 0, "unconfined unshare -U: {err}");
    assert_eq!(out.trim(), "0");

    // A custom profile in Docker's format: allow everything but mkdir (EACCES).
    let profile = d.scratch().join("no-mkdir.json");
    std::fs::write(
        &profile,
        r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
            {"names":["mkdir","mkdirat"],"action":"SCMP_ACT_ERRNO","errnoRet":13}]}"#,
    )
    .unwrap();
    let opt = format!("seccomp={}", profile.display());
    let (code, _, err) = run(
        &d,
        &[
            "--security-opt",
            &opt,
            &img,
            "sh",
            "-c",
            "mkdir /tmp/x || exit 42",
        ],
    );
    assert_eq!(code, 42, "mkdir refused by the custom profile: {err}");
    assert!(
        err.contains("Permission denied"),
        "EACCES from the profile: {err}"
    );

    // Bad options are refused at create with a message.
    let (code, _, err) = d.run3(&[
        "create",
        "--security-opt",
        "seccomp=/nonexistent.json",
        &img,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("seccomp profile"), "{err}");
    let bad = d.scratch().join("bad.json");
    std::fs::write(&bad, r#"{"defaultAction":"SCMP_ACT_WHATEVER"}"#).unwrap();
    let opt = format!("seccomp={}", bad.display());
    let (code, _, err) = d.run3(&["create", "--security-opt", &opt, &img]);
    assert_ne!(code, 0);
    assert!(err.contains("unknown action"), "{err}");
}

/// The major:minor of a block device of this host (the first in /sys/dev/block).
fn host_block_device() -> (u32, u32) {
    let entry = std::fs::read_dir("/sys/dev/block")
        .expect("/sys/dev/block")
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let (a, b) = name.split_once(':')?;
            Some((a.parse().ok()?, b.parse().ok()?))
        })
        .min()
        .expect("a block device on this host");
    entry
}

#[test]
fn container_root_can_mknod_but_not_open_host_devices() {
    let d = Daemon::start();
    let img = image(&d, "dev-mknod", &[]);
    let (major, minor) = host_block_device();
    // The attack: container root has CAP_MKNOD; make the host's disk and loop-control and
    // open them.
    let script = format!(
        "mknod /tmp/disk b {major} {minor} || exit 10
         mknod /tmp/loopctl c 10 237 || exit 11
         head -c 1 /tmp/disk > /dev/null && exit 20
         cat /tmp/loopctl > /dev/null && exit 21
         echo > /dev/null || exit 30
         head -c 1 /dev/urandom > /dev/null || exit 31
         exit 0"
    );
    let (code, _, err) = run(&d, &[&img, "sh", "-c", &script]);
    assert_eq!(code, 0, "mknod works, using the nodes does not: {err}");
    assert_eq!(
        err.matches("Operation not permitted").count(),
        2,
        "both opens fail with EPERM: {err}"
    );
}

#[test]
fn device_nodes_shipped_in_an_image_cannot_be_opened() {
    let d = Daemon::start();
    let img = image(&d, "dev-shipped", &[Extra::CharDev("loopctl", 10, 237)]);
    for user in [&["--user", "nobody", "--cap-drop", "ALL"][..], &[][..]] {
        let mut args: Vec<&str> = user.to_vec();
        args.extend_from_slice(&[
            &img,
            "sh",
            "-c",
            "stat -c '%F %t:%T %a' /loopctl; cat /loopctl > /dev/null; echo done",
        ]);
        let (_, out, err) = run(&d, &args);
        assert!(
            out.contains("character special file a:ed 666"),
            "the node is there, 0666: {out} {err}"
        );
        assert!(out.contains("done"), "{out} {err}");
        assert!(
            err.contains("can't open '/loopctl': Operation not permitted"),
            "user {user:?}: the open fails with EPERM: {err}"
        );
    }
}

#[test]
fn device_flag_adds_a_usable_node() {
    let d = Daemon::start();
    let img = image(&d, "dev-flag", &[]);
    let (code, out, err) = run(
        &d,
        &[
            "--device",
            "/dev/null:/dev/mynull",
            &img,
            "sh",
            "-c",
            "echo hi > /dev/mynull && stat -c '%t:%T' /dev/mynull",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "1:3");
    // Read-only: open for reading works, for writing does not.
    if Path::new("/dev/loop-control").exists() {
        let (code, _, err) = run(
            &d,
            &[
                "--device",
                "/dev/loop-control:/dev/lc:r",
                &img,
                "sh",
                "-c",
                "true < /dev/lc || exit 1; true > /dev/lc && exit 2; exit 0",
            ],
        );
        assert_eq!(code, 0, "r allows reading only: {err}");
    }
    let (code, _, err) = d.run3(&["create", "--device", "/etc/hostname", &img]);
    assert_ne!(code, 0);
    assert!(err.contains("not a device"), "{err}");
    let (code, _, err) = d.run3(&["create", "--device", "/dev/null:/dev/x:rwz", &img]);
    assert_ne!(code, 0);
    assert!(err.contains("invalid --device"), "{err}");
}

/// A host directory for one test, removed at the end.
struct HostDir(PathBuf);

impl HostDir {
    fn new(tag: &str) -> HostDir {
        let dir = std::env::temp_dir().join(format!("flotilla-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        HostDir(dir)
    }
}

impl Drop for HostDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn symlinked_mount_destinations_stay_inside_the_rootfs() {
    let d = Daemon::start();
    let host = HostDir::new("mountdest");
    let host_file = host.0.join("hosts-written-by-runtime");
    let host_sub = host.0.join("data");
    // /etc/hosts (a bind every container gets) is the head of a chain of 41 symlinks (one
    // more than the kernel follows in a lookup) whose last one points at a host path.
    let chain: Vec<String> = (0..40).map(|i| format!("l{i}")).collect();
    let mut extras = vec![Extra::Dir("chain"), Extra::Dir("srv")];
    let target_of = |i: usize| -> String {
        if i + 1 < chain.len() {
            format!("/chain/{}", chain[i + 1])
        } else {
            host_file.to_string_lossy().to_string()
        }
    };
    let links: Vec<(String, String)> = (0..chain.len())
        .map(|i| (format!("chain/{}", chain[i]), target_of(i)))
        .collect();
    for (path, target) in &links {
        extras.push(Extra::Symlink(path, target));
    }
    extras.push(Extra::Symlink("etc/hosts", "/chain/l0"));
    let img = image(&d, "mountdest", &extras);

    // The chain: the runtime must not follow it out of the rootfs (ELOOP is a clean failure).
    let (code, _, err) = run(&d, &[&img, "true"]);
    assert!(
        !host_file.exists(),
        "the runtime created {} on the host (exit {code}, {err})",
        host_file.display()
    );

    // An absolute symlink as a -v destination lands inside the rootfs, not on the host.
    let data_target = host_sub.to_string_lossy().to_string();
    let img2 = image(
        &d,
        "mountdest2",
        &[Extra::Symlink("data", &data_target), Extra::Dir("srv")],
    );
    std::fs::create_dir_all(&host_sub).unwrap();
    let src = d.scratch().join("bind-src");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("marker"), "from the bind").unwrap();
    let vol = format!("{}:/data", src.display());
    let inside = format!("{data_target}/marker");
    let (code, out, err) = run(&d, &["-v", &vol, &img2, "cat", &inside]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "from the bind");
    assert_eq!(
        std::fs::read_dir(&host_sub).unwrap().count(),
        0,
        "nothing appeared in the host directory the symlink names"
    );
}

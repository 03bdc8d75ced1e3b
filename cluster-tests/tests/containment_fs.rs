//! Containment of the daemon's own file access (issue 10, items 2, 6 and 7): hostile images
//! and containers plant symlinks, FIFOs and `..` paths where the daemon reads or writes as
//! root, and the data root must keep host users out. Every image here is a `docker save`
//! archive written by the test itself (the busybox rootfs plus layers with the planted
//! entries), loaded with `flotilla load`; everything outside the container lives in a temp
//! directory of the test's and is checked to be untouched.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_tests::registry::sha256_digest;
use cluster_tests::{busybox_image, busybox_rootfs_tar, code, poll_until, Daemon};

const T: Duration = Duration::from_secs(20);

/// A temp directory outside every data root: the "host" the attacks aim at.
fn host_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("flt-host-")
        .tempdir_in("/tmp")
        .expect("create the host dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// One layer tar, built by `add` from the helpers below.
fn layer(add: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    add(&mut b);
    b.into_inner().expect("finish layer")
}

fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    h
}

fn add_dir(b: &mut tar::Builder<Vec<u8>>, path: &str, mode: u32) {
    let mut h = header(tar::EntryType::Directory, mode);
    b.append_data(&mut h, path, std::io::empty()).unwrap();
}

fn add_file(b: &mut tar::Builder<Vec<u8>>, path: &str, data: &str) {
    let mut h = header(tar::EntryType::Regular, 0o644);
    h.set_size(data.len() as u64);
    b.append_data(&mut h, path, data.as_bytes()).unwrap();
}

fn add_symlink(b: &mut tar::Builder<Vec<u8>>, path: &str, target: &Path) {
    let mut h = header(tar::EntryType::Symlink, 0o777);
    b.append_link(&mut h, path, target).unwrap();
}

/// Loads image `name` made of the busybox rootfs and `layers` on top, with `config` as the
/// image's `config` object (Cmd, Volumes, …), as a `docker save` archive.
fn load_image(d: &Daemon, name: &str, layers: &[Vec<u8>], config: serde_json::Value) -> String {
    let dir = d.scratch().join(format!("save-{name}"));
    std::fs::create_dir_all(&dir).unwrap();
    let base = dir.join("base.tar");
    busybox_rootfs_tar(&base);
    let mut all = vec![std::fs::read(&base).unwrap()];
    all.extend(layers.iter().cloned());
    let mut archive = tar::Builder::new(Vec::new());
    let mut put = |path: &str, data: &[u8]| {
        let mut h = header(tar::EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        archive.append_data(&mut h, path, data).unwrap();
    };
    let mut paths = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in all.iter().enumerate() {
        let path = format!("l{i}/layer.tar");
        put(&path, l);
        paths.push(path);
        diff_ids.push(sha256_digest(l));
    }
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let image_config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    put("config.json", image_config.to_string().as_bytes());
    let manifest = serde_json::json!([{
        "Config": "config.json",
        "RepoTags": [format!("{name}:latest")],
        "Layers": paths,
    }]);
    put("manifest.json", manifest.to_string().as_bytes());
    let file = dir.join("image.tar");
    std::fs::write(&file, archive.into_inner().unwrap()).unwrap();
    d.ok(&["load", "-i", file.to_str().unwrap()]);
    name.to_string()
}

/// The names in a directory, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .mode()
        & 0o7777
}

/// The host path of the volume mounted at `dest` in container `name`.
fn volume_source(d: &Daemon, name: &str, dest: &str) -> (String, PathBuf) {
    let c = d.inspect(name);
    let m = c["Mounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["Destination"] == dest)
        .unwrap_or_else(|| panic!("no mount at {dest}: {}", c["Mounts"]))
        .clone();
    (
        m["Name"].as_str().unwrap().to_string(),
        PathBuf::from(m["Source"].as_str().unwrap()),
    )
}

#[test]
fn an_image_volume_symlinked_to_a_host_dir_copies_none_of_it() {
    let d = Daemon::start();
    let host = host_dir();
    let target = host.path().join("hostdir");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("host-secret"), "do not copy").unwrap();
    let img = load_image(
        &d,
        "volsymlink",
        &[layer(|b| add_symlink(b, "data", &target))],
        serde_json::json!({"Cmd": ["sleep", "1000"], "Volumes": {"/data": {}}}),
    );
    d.ok(&["run", "-d", "--name", "box", &img]);
    let (anon, source) = volume_source(&d, "box", "/data");
    assert!(
        listing(&source).is_empty(),
        "the anonymous volume holds nothing of the host dir: {:?}",
        listing(&source)
    );
    // Neither does a named volume seeded at the same path, nor what containers see of them.
    d.ok(&["create", "--name", "nbox", "-v", "seeded:/data", &img]);
    let (_, named) = volume_source(&d, "nbox", "/data");
    assert!(listing(&named).is_empty(), "{:?}", listing(&named));
    for vol in [anon.as_str(), "seeded"] {
        let seen = d.ok(&[
            "run",
            "--rm",
            "-v",
            &format!("{vol}:/mnt"),
            &img,
            "ls",
            "-A",
            "/mnt",
        ]);
        assert!(!seen.contains("host-secret"), "volume {vol} shows {seen:?}");
    }
    let (_, out, _) = d.run3(&["exec", "box", "ls", "-A", "/data/"]);
    assert!(!out.contains("host-secret"), "{out}");
    assert_eq!(listing(&target), ["host-secret"]);
}

#[test]
fn two_layers_cannot_chmod_or_fill_a_host_dir_through_a_volume() {
    let d = Daemon::start();
    let host = host_dir();
    let target = host.path().join("hostdir");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("kept"), "host").unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o700)).unwrap();
    let img = load_image(
        &d,
        "twolayers",
        &[
            layer(|b| {
                add_dir(b, "data", 0o755);
                add_symlink(b, "data/x", &target);
            }),
            layer(|b| {
                add_dir(b, "data", 0o755);
                add_dir(b, "data/x", 0o777);
                add_file(b, "data/x/planted", "from the image");
            }),
        ],
        serde_json::json!({"Cmd": ["sleep", "1000"], "Volumes": {"/data": {}}}),
    );
    d.ok(&["create", "--name", "box", &img]);
    d.ok(&["create", "--name", "nbox", "-v", "named:/data", &img]);
    assert_eq!(mode(&target), 0o700, "the host dir's mode is untouched");
    assert_eq!(
        listing(&target),
        ["kept"],
        "nothing was written into the host dir"
    );
    assert_eq!(
        std::fs::read_to_string(target.join("kept")).unwrap(),
        "host"
    );
    // The volume holds the image's view: the upper layer's directory, with its file.
    for name in ["box", "nbox"] {
        let (_, source) = volume_source(&d, name, "/data");
        let x = source.join("x");
        assert!(
            x.is_dir() && !x.is_symlink(),
            "{name}: x is a real directory"
        );
        assert_eq!(mode(&x), 0o777);
        assert_eq!(
            std::fs::read_to_string(x.join("planted")).unwrap(),
            "from the image"
        );
    }
}

#[test]
fn volume_paths_with_dotdot_are_refused() {
    let d = Daemon::start();
    let host = host_dir();
    let img = load_image(
        &d,
        "dotdot",
        &[],
        serde_json::json!({"Cmd": ["true"], "Volumes": {"/../../tmp/x": {}}}),
    );
    let err = d.fails(&["create", "--name", "box", &img], 125);
    assert!(
        err.contains("VOLUME") && err.contains("..") && err.contains("refused"),
        "a clear error: {err}"
    );
    let plain = busybox_image(&d, "plain");
    let escape = format!("{}:/../..{}/y", "vol", host.path().display());
    for spec in [escape.as_str(), "/../etc", "vol:/a/../../b", "/srv:../x"] {
        let err = d.fails(&["create", "-v", spec, &plain, "true"], 125);
        assert!(
            err.contains("..") || err.contains("absolute"),
            "-v {spec}: {err}"
        );
    }
    assert!(d.container_ids().is_empty(), "nothing was created");
    assert!(d.volume_names().is_empty(), "no volume was created");
    assert!(listing(host.path()).is_empty());
}

/// A host directory holding a passwd and a group file with user `marker` (uid 4242).
fn host_etc(host: &Path) -> PathBuf {
    let etc = host.join("hostetc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "marker:x:4242:4242::/:/bin/sh\n").unwrap();
    std::fs::write(etc.join("group"), "marker:x:4242:\n").unwrap();
    etc
}

#[test]
fn user_lookup_never_reads_host_files_through_container_symlinks() {
    let d = Daemon::start();
    let host = host_dir();
    let etc = host_etc(host.path());
    // /etc/passwd and /etc/group are symlinks to the host's files (absolute targets).
    let img = load_image(
        &d,
        "passwdlink",
        &[layer(|b| {
            add_dir(b, "etc", 0o755);
            add_symlink(b, "etc/passwd", &etc.join("passwd"));
            add_symlink(b, "etc/group", &etc.join("group"));
        })],
        serde_json::json!({"Cmd": ["sleep", "1000"]}),
    );
    d.ok(&["run", "-d", "--name", "box", &img]);
    let (rc, out, err) = d.run3(&["exec", "-u", "marker", "box", "id", "-u"]);
    assert_ne!(rc, 0, "marker must not resolve: stdout {out:?}");
    assert!(!out.contains("4242"), "{out}");
    assert!(err.contains("marker"), "the error names the user: {err}");
    assert_eq!(d.ok(&["exec", "-u", "4242", "box", "id", "-u"]), "4242\n");

    // The whole /etc a symlink to the host's: the start path refuses it too.
    let img = load_image(
        &d,
        "etclink",
        &[layer(|b| add_symlink(b, "etc", &etc))],
        serde_json::json!({"Cmd": ["id", "-u"]}),
    );
    let (rc, out, err) = d.run3(&["run", "--rm", "-u", "marker", &img]);
    assert_eq!(rc, 126, "stdout {out:?} stderr {err:?}");
    assert!(!out.contains("4242"), "{out}");
    assert!(err.contains("marker"), "{err}");
}

/// Starts container `name` that replaces its /etc/passwd with what `setup` makes, then logs
/// `ready`.
fn container_with_passwd(d: &Daemon, img: &str, name: &str, setup: &str) {
    d.ok(&[
        "run",
        "-d",
        "--name",
        name,
        img,
        "sh",
        "-c",
        &format!("rm /etc/passwd && {setup} && echo ready && exec sleep 1000"),
    ]);
    d.wait_logs(name, "the container's setup", T, |l| l.contains("ready"));
}

/// `exec -u nobody` in `name` fails promptly (nobody cannot be resolved), root by number
/// still works, and the daemon keeps answering.
fn exec_fails_promptly(d: &Daemon, name: &str) {
    let t0 = Instant::now();
    let (rc, out, err) = d.run3(&["exec", "-u", "nobody", name, "id", "-u"]);
    assert_ne!(rc, 0, "{name}: stdout {out:?}");
    assert!(err.contains("nobody"), "{name}: {err}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "{name}: exec took {:?}",
        t0.elapsed()
    );
    // (`id` itself would read the FIFO inside the container: read the kernel's view.)
    let status = d.ok(&[
        "exec",
        "-u",
        "65534",
        name,
        "grep",
        "^Uid:",
        "/proc/self/status",
    ]);
    assert!(status.starts_with("Uid:\t65534\t"), "{status}");
    assert_eq!(d.ok(&["exec", name, "echo", "ok"]), "ok\n");
    d.ok(&["ps"]);
}

#[test]
fn exec_with_a_fifo_as_etc_passwd_returns_promptly() {
    let d = Daemon::start();
    let img = busybox_image(&d, "fifo");
    container_with_passwd(&d, &img, "box", "busybox mkfifo /etc/passwd");
    exec_fails_promptly(&d, "box");
}

#[test]
fn exec_with_dev_zero_as_etc_passwd_returns_promptly() {
    let d = Daemon::start();
    let img = busybox_image(&d, "zero");
    container_with_passwd(&d, &img, "box", "ln -s /dev/zero /etc/passwd");
    exec_fails_promptly(&d, "box");
    container_with_passwd(
        &d,
        &img,
        "big",
        "dd if=/dev/zero of=/etc/passwd bs=1M count=3",
    );
    exec_fails_promptly(&d, "big");
}

#[test]
fn health_checks_still_run_with_a_fifo_as_etc_passwd() {
    use cluster_tests::cluster::ClusterLab;
    let _serial = cluster_tests::cluster::serial();
    let c = ClusterLab::new(&["m1"], "300ms");
    c.init("m1");
    c.load_busybox(&["m1"]);
    // Every probe resolves the container's user from its /etc/passwd, now a FIFO: the probes
    // must still run (and fail, `false`), so the task is found unhealthy and replaced.
    c.cli(
        "m1",
        &[
            "service",
            "create",
            "-d",
            "--name",
            "sick",
            "--health-cmd",
            "false",
            "--health-interval",
            "500ms",
            "--health-retries",
            "2",
            "busybox",
            "sh",
            "-c",
            "rm /etc/passwd && busybox mkfifo /etc/passwd && exec sleep 1000",
        ],
    )
    .ok("create sick");
    poll_until(
        Duration::from_secs(90),
        "the unhealthy task replaced",
        || {
            c.cli("m1", &["service", "ps", "sick", "--format", "json"])
                .ok("service ps")
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .any(|t| {
                    t["CurrentState"] == "failed"
                        && t["Error"].as_str().unwrap_or("").contains("unhealthy")
                })
        },
    );
    c.cli("m1", &["node", "ls"]).ok("the manager still answers");
}

#[test]
fn export_of_a_running_container_never_follows_its_symlinks() {
    let d = Daemon::start();
    let host = host_dir();
    let target = host.path().join("hostdir");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("HOSTMARKER"), "host").unwrap();
    let img = busybox_image(&d, "flip");
    // /x flips between a directory and a symlink to the host dir while exports walk it.
    d.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        &img,
        "sh",
        "-c",
        &format!(
            "while :; do mkdir -p /x/d; rm -rf /x; ln -s {} /x; rm /x; done",
            target.display()
        ),
    ]);
    let mut dirs = 0;
    for _ in 0..30 {
        let out = d.cli(&["export", "box"]);
        assert_eq!(code(&out), 0, "{}", String::from_utf8_lossy(&out.stderr));
        let mut archive = tar::Archive::new(out.stdout.as_slice());
        for e in archive.entries().expect("a tar") {
            let e = e.expect("a tar entry");
            let path = e.path().unwrap().display().to_string();
            assert!(!path.contains("HOSTMARKER"), "export followed /x: {path}");
            if path.trim_start_matches("./") == "x/d" || path.trim_start_matches("./") == "x/d/" {
                dirs += 1;
            }
        }
    }
    println!("/x/d archived as a directory in {dirs} of 30 exports");
    assert_eq!(listing(&target), ["HOSTMARKER"]);
}

/// Runs `args` as host user nobody (uid/gid 65534, no groups); returns whether it succeeded
/// and its output.
fn as_nobody(args: &[&str]) -> (bool, String) {
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .args(args)
        .output()
        .expect("run setpriv");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn assert_private(root: &Path, id: &str, vol: &str) {
    for dir in [
        root.to_path_buf(),
        root.join("containers"),
        root.join("containers").join(id),
        root.join("image"),
        root.join("volumes"),
        root.join("volumes").join(vol),
    ] {
        assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    }
    let c = root.join("containers").join(id);
    assert_eq!(mode(&c.join("config.v2.json")), 0o600);
    assert_eq!(
        mode(&root.join("volumes").join(vol).join("volume.json")),
        0o600
    );
    // Container content keeps its own modes; what is bind-mounted stays readable inside.
    assert_eq!(mode(&c.join("upper")), 0o755);
    assert_eq!(mode(&c.join("hosts")), 0o644);
    let record = c.join("config.v2.json");
    let (ok, out) = as_nobody(&["cat", record.to_str().unwrap()]);
    assert!(
        !ok && !out.contains("hunter2"),
        "host user nobody read the record: {out}"
    );
    let suid = c.join("upper/suid");
    let (ok, out) = as_nobody(&[suid.to_str().unwrap(), "id", "-u"]);
    assert!(
        !ok,
        "host user nobody ran the container's setuid binary: {out}"
    );
}

#[test]
fn the_data_root_is_private_and_made_so_again_at_start() {
    let mut d = Daemon::start();
    // Only the data root itself may keep host users out (the test's temp dir is open).
    let root = d.data_root();
    std::fs::set_permissions(
        root.parent().unwrap(),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let img = busybox_image(&d, "private");
    d.ok(&[
        "run",
        "-d",
        "--name",
        "box",
        "-e",
        "SECRET=hunter2",
        "-v",
        "vol:/data",
        &img,
        "sleep",
        "1000",
    ]);
    // Container root leaves a setuid-root binary in its upper dir.
    d.ok(&[
        "exec",
        "box",
        "sh",
        "-c",
        "cp /bin/busybox /suid && chmod 4755 /suid",
    ]);
    let id = d.inspect("box")["Id"].as_str().unwrap().to_string();
    assert_private(&root, &id, "vol");

    // Users in containers still reach what they should.
    let nobody = [
        "run",
        "--rm",
        "-u",
        "nobody",
        "-v",
        "vol:/data",
        &img,
        "sh",
        "-c",
        "ls / >/dev/null && cat /etc/hosts /etc/resolv.conf >/dev/null && ls /data && echo fine",
    ];
    assert_eq!(d.ok(&nobody), "fine\n");

    // An operator (or an older daemon) loosened the root: the next start tightens it again.
    for p in [
        root.clone(),
        root.join("containers"),
        root.join("containers").join(&id),
        root.join("volumes"),
        root.join("volumes/vol"),
        root.join("image"),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(
        root.join("containers").join(&id).join("config.v2.json"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let (ok, out) = as_nobody(&[
        "cat",
        root.join("containers")
            .join(&id)
            .join("config.v2.json")
            .to_str()
            .unwrap(),
    ]);
    assert!(
        ok && out.contains("hunter2"),
        "loosened for the test: {out}"
    );
    d.stop();
    d.restart();
    assert_private(&root, &id, "vol");
    assert_eq!(d.ok(&nobody), "fine\n");
}

//! Test images made from the host's static busybox (Debian `busybox-static`), imported with
//! `flotilla import`. Mtimes and owners are pinned, so the same rootfs always has the same
//! digest.

use std::path::{Path, PathBuf};

use crate::daemon::Daemon;

/// Where Debian's busybox-static puts the binary.
const BUSYBOX: &str = "/bin/busybox";

/// Applets linked into `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "echo", "sleep", "httpd", "nc", "wget", "cat", "ls", "env", "hostname", "id", "ps",
    "true", "false", "mount", "umount", "grep", "head", "tail", "kill", "touch", "mkdir", "rm",
    "dd", "seq", "wc", "sed", "printf", "test", "[", "tr", "stat", "readlink", "ln", "cp", "mv",
    "chmod", "find", "pwd", "date", "uname", "cut", "sort", "xargs", "tee", "whoami", "yes", "od",
    "sync", "nproc", "timeout", "basename", "dirname", "expr", "which",
];

/// Writes the busybox rootfs tarball to `dest` (bin/busybox, applet symlinks, /etc/passwd and
/// /etc/group with root and nobody, empty proc sys dev tmp root; all owned by 0:0, mtime 0).
pub fn busybox_rootfs_tar(dest: &Path) {
    busybox_rootfs_tar_with(dest, |_| {});
}

/// Like [`busybox_rootfs_tar`], then `extra` appends entries of its own (tar entries no
/// Flotilla code wrote: device nodes, symlinks, more applets) before the archive is finished.
pub fn busybox_rootfs_tar_with(dest: &Path, extra: impl FnOnce(&mut tar::Builder<std::fs::File>)) {
    assert!(
        Path::new(BUSYBOX).is_file(),
        "{BUSYBOX} missing: install Debian's busybox-static"
    );
    let file = std::fs::File::create(dest).expect("create rootfs tar");
    let mut tar = tar::Builder::new(file);
    let header = |kind: tar::EntryType, mode: u32, size: u64| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(size);
        h
    };
    for (dir, mode) in [
        ("bin", 0o755),
        ("dev", 0o755),
        ("etc", 0o755),
        ("proc", 0o555),
        ("root", 0o700),
        ("sys", 0o555),
        ("tmp", 0o1777),
    ] {
        let mut h = header(tar::EntryType::Directory, mode, 0);
        tar.append_data(&mut h, dir, std::io::empty())
            .expect("append dir");
    }
    let busybox = std::fs::read(BUSYBOX).expect("read busybox");
    let mut h = header(tar::EntryType::Regular, 0o755, busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .expect("append busybox");
    for applet in APPLETS {
        let mut h = header(tar::EntryType::Symlink, 0o777, 0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .expect("append applet link");
    }
    let files: [(&str, &str); 2] = [
        (
            "etc/passwd",
            "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        ),
        ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
    ];
    for (path, text) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, text.len() as u64);
        tar.append_data(&mut h, path, text.as_bytes())
            .expect("append file");
    }
    extra(&mut tar);
    tar.into_inner()
        .expect("finish rootfs tar")
        .sync_all()
        .expect("sync rootfs tar");
}

/// The busybox rootfs tarball in the daemon's scratch dir (written once per daemon).
fn rootfs_tar(daemon: &Daemon) -> PathBuf {
    let path = daemon.scratch().join("busybox-rootfs.tar");
    if !path.exists() {
        let tmp = path.with_extension("tar.tmp");
        busybox_rootfs_tar(&tmp);
        std::fs::rename(&tmp, &path).expect("rename rootfs tar");
    }
    path
}

/// Imports the busybox rootfs as image `name` (REPOSITORY[:TAG]) into `daemon` and returns
/// `name`.
pub fn busybox_image(daemon: &Daemon, name: &str) -> String {
    busybox_image_with(daemon, name, &[])
}

/// Like [`busybox_image`], applying Dockerfile instructions with `import --change` (e.g.
/// `CMD ["ls","-l"]`, `ENTRYPOINT ls -l`, `VOLUME /data`).
pub fn busybox_image_with(daemon: &Daemon, name: &str, changes: &[&str]) -> String {
    let tar = rootfs_tar(daemon);
    let tar = tar.to_string_lossy().into_owned();
    let mut args = vec!["import"];
    for change in changes {
        args.push("--change");
        args.push(change);
    }
    args.push(&tar);
    args.push(name);
    daemon.ok(&args);
    name.to_string()
}

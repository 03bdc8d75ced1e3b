//! Harness for Flotilla's end-to-end tests: it runs the project's real binaries against the real
//! kernel, and owns everything a test creates so that it is cleaned up even when the test fails.
//!
//! - [`bin`] finds the built binaries (`FLOTILLA_BIN_DIR`, else `<workspace>/target/debug`).
//! - [`Daemon`] starts a `flotilla-worker` with its own data root and socket, runs the `flotilla`
//!   CLI against it, crashes and restarts it, and tears everything down in `Drop`.
//! - [`busybox_image`] makes an image from the host's static busybox and imports it.
//! - [`poll_until`] waits for a condition with a deadline, never a bare sleep.
//! - [`registry`] runs a real registry; [`fake_registry`] a hostile one that serves lies.
//!
//! It does not build the binaries (run `cargo build --workspace` first) and does not skip tests
//! that need root: the suite runs as root, here and in CI.

mod bins;
mod cleanup;
pub mod cluster;
mod daemon;
pub mod fake_registry;
pub mod hosts;
mod image;
mod poll;
pub mod registry;

pub use bins::bin;
pub use daemon::{code, Daemon, DaemonBuilder};
pub use image::{busybox_image, busybox_image_with, busybox_rootfs_tar, busybox_rootfs_tar_with};
pub use poll::{poll_for, poll_until};

/// Directory of the cgroup that process `pid` is in for `controller` (v1; on a pure v2 host
/// the unified hierarchy, whatever `controller` says), from `/proc/<pid>/cgroup`.
pub fn cgroup_dir_of(pid: i32, controller: &str) -> std::path::PathBuf {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/cgroup: {e}"));
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        let path = path.trim_start_matches('/');
        if cgroup_v2() && controllers.is_empty() {
            return std::path::PathBuf::from(format!("/sys/fs/cgroup/{path}"));
        }
        if controllers.split(',').any(|c| c == controller) {
            return std::path::PathBuf::from(format!("/sys/fs/cgroup/{controller}/{path}"));
        }
    }
    panic!("process {pid} has no {controller} cgroup:\n{text}");
}

/// Whether this machine uses the unified cgroup v2 hierarchy only.
pub fn cgroup_v2() -> bool {
    std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

//! Tearing down what a daemon left behind once it is stopped: containers and shims outlive a
//! daemon, so their processes are found and ended by PID (only PIDs proven to be ours: named
//! in the data root's records and in a `flotilla/<id>` cgroup, or carrying this test's
//! [`OWNER_ENV`] marker, or in the cgroup of such a process), then mounts under the data root
//! are detached and those cgroups removed, and the bridges of the daemon's user-defined networks
//! deleted. Never matches processes by name.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::daemon::signal;

/// cgroup v1 controllers a container may have a directory in.
const V1_CONTROLLERS: &[&str] = &[
    "memory", "cpu", "cpuacct", "pids", "freezer", "cpuset", "blkio", "devices", "systemd",
];

/// Environment variable set on the daemon to this test's unique temp dir; the daemon's shims
/// inherit it.
pub(crate) const OWNER_ENV: &str = "FLOTILLA_E2E_OWNER";

/// PIDs of processes whose environment carries `OWNER_ENV=owner`.
fn marked_pids(owner: &Path) -> Vec<i32> {
    let needle = format!("{OWNER_ENV}={}", owner.display());
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .flatten()
        .filter_map(|p| p.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|env| env.split(|b| *b == 0).any(|e| e == needle.as_bytes()))
                .unwrap_or(false)
        })
        .collect()
}

/// The `…/flotilla/<name>` cgroup directories process `pid` is in.
fn flotilla_cgroups_of(pid: i32) -> Vec<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (_, controllers, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if !path.starts_with("/flotilla/") {
            continue;
        }
        if controllers.is_empty() {
            out.push(PathBuf::from(format!("/sys/fs/cgroup{path}")));
            out.push(PathBuf::from(format!("/sys/fs/cgroup/unified{path}")));
        }
        for c in controllers.split(',').filter(|c| !c.is_empty()) {
            let c = c.trim_start_matches("name=");
            out.push(PathBuf::from(format!("/sys/fs/cgroup/{c}{path}")));
        }
    }
    out.retain(|p| p.exists());
    out
}

/// `…/flotilla/<name>` cgroup paths named on `pid`'s command line (a sandbox shim gets its
/// cgroup plan there, and may be killed before it has joined it).
fn cgroups_named_in_cmdline(pid: i32) -> Vec<PathBuf> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let text = String::from_utf8_lossy(&raw);
    text.match_indices("/sys/fs/cgroup/")
        .map(|(i, _)| {
            let rest = &text[i..];
            let end = rest
                .find(|c: char| c == '"' || c == '\0' || c.is_whitespace())
                .unwrap_or(rest.len());
            PathBuf::from(&rest[..end])
        })
        .filter(|p| p.parent().is_some_and(|d| d.ends_with("flotilla")))
        .collect()
}

/// What the data root says about one container.
struct Record {
    id: String,
    shim_pid: i32,
    pid: i32,
    cgroups: Vec<PathBuf>,
}

fn records(root: &Path) -> Vec<Record> {
    let Ok(entries) = std::fs::read_dir(root.join("containers")) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let id = entry.file_name().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(entry.path().join("config.v2.json")).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let int = |v: &serde_json::Value| v.as_i64().unwrap_or(0) as i32;
        let mut cgroups: Vec<PathBuf> = json["cgroup"]["dirs"]
            .as_array()
            .map(|dirs| {
                dirs.iter()
                    .filter_map(|d| d[1].as_str().map(PathBuf::from))
                    .collect()
            })
            .unwrap_or_default();
        // Also the places a record may not list (a record written before its cgroups were).
        for c in V1_CONTROLLERS {
            cgroups.push(PathBuf::from(format!("/sys/fs/cgroup/{c}/flotilla/{id}")));
        }
        cgroups.push(PathBuf::from(format!("/sys/fs/cgroup/flotilla/{id}")));
        cgroups.push(PathBuf::from(format!(
            "/sys/fs/cgroup/unified/flotilla/{id}"
        )));
        // Only flotilla's own cgroups (a record may name them after a sandbox, not the id).
        cgroups.retain(|p| {
            p.starts_with("/sys/fs/cgroup") && p.parent().is_some_and(|d| d.ends_with("flotilla"))
        });
        cgroups.sort();
        cgroups.dedup();
        out.push(Record {
            shim_pid: int(&json["shim_pid"]),
            pid: int(&json["state"]["Pid"]),
            id,
            cgroups,
        });
    }
    out
}

/// PIDs in a cgroup directory (`cgroup.procs`), empty if there is none.
fn cgroup_pids(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Whether `pid`'s cmdline mentions `needle` (a shim names its bundle under the data root).
fn cmdline_mentions(pid: i32, needle: &str) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    String::from_utf8_lossy(&raw)
        .replace('\0', " ")
        .contains(needle)
}

/// Whether `pid` is in a cgroup named after container `id`.
fn in_container_cgroup(pid: i32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| c.contains(&format!("flotilla/{id}")))
        .unwrap_or(false)
}

/// Ends leftover processes, mounts and cgroups of the (stopped) daemon whose temp dir is
/// `owner` and data root `root`. Best effort: reports what it could not do, never panics.
pub(crate) fn reap(owner: &Path, root: &Path) {
    let mut recs = records(root);
    // Shims the records do not know (a sandbox never handed a container, a start that hung),
    // and the cgroups they and their children are in.
    let marked = marked_pids(owner);
    let mut extra = Vec::new();
    for pid in &marked {
        extra.extend(flotilla_cgroups_of(*pid));
        extra.extend(cgroups_named_in_cmdline(*pid));
    }
    extra.sort();
    extra.dedup();
    recs.push(Record {
        id: String::new(),
        shim_pid: 0,
        pid: 0,
        cgroups: extra,
    });
    for pid in &marked {
        signal(*pid, libc::SIGKILL);
    }
    let root_str = root.to_string_lossy().into_owned();
    for rec in &recs {
        // Thaw first: a frozen process cannot die.
        for dir in &rec.cgroups {
            let state = dir.join("freezer.state");
            if state.exists() {
                let _ = std::fs::write(&state, "THAWED");
            }
            let freeze = dir.join("cgroup.freeze");
            if freeze.exists() {
                let _ = std::fs::write(&freeze, "0");
            }
        }
        if rec.shim_pid > 0 && cmdline_mentions(rec.shim_pid, &root_str) {
            signal(rec.shim_pid, libc::SIGKILL);
        }
        let in_its_cgroup = |pid: i32| {
            in_container_cgroup(pid, &rec.id)
                || flotilla_cgroups_of(pid)
                    .iter()
                    .any(|c| rec.cgroups.contains(c))
        };
        if rec.pid > 0 && !rec.id.is_empty() && in_its_cgroup(rec.pid) {
            signal(rec.pid, libc::SIGKILL);
        }
        for dir in &rec.cgroups {
            for pid in cgroup_pids(dir) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
    // A shim whose record is gone still names a bundle under this data root on its command
    // line; that exact path is unique to this test.
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            if cmdline_mentions(pid, &format!("shim {root_str}/containers/")) {
                signal(pid, libc::SIGKILL);
            }
        }
    }
    unmount_under(root);
    remove_network_bridges(root);
    let deadline = Instant::now() + Duration::from_secs(10);
    for rec in &recs {
        for dir in &rec.cgroups {
            if !dir.exists() {
                continue;
            }
            loop {
                for pid in cgroup_pids(dir) {
                    signal(pid, libc::SIGKILL);
                }
                match std::fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if Instant::now() >= deadline => {
                        eprintln!("cleanup: rmdir {}: {e}", dir.display());
                        break;
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        }
    }
}

/// Deletes the host bridges of the daemon's user-defined networks
/// (`<root>/networks/<id>.json` names each one, `fl-<12 hex>`), which outlive
/// the daemon. Their nftables elements go with the daemon's table.
fn remove_network_bridges(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join("networks")) else {
        return;
    };
    for entry in entries.flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let Some(bridge) = json["bridge"].as_str() else {
            continue;
        };
        // Only a name this daemon's record gives, and only of Flotilla's form.
        if !bridge.starts_with("fl-") || bridge.len() > 15 {
            continue;
        }
        let exists = std::process::Command::new("ip")
            .args(["link", "show", bridge])
            .output()
            .is_ok_and(|o| o.status.success());
        if exists {
            let out = std::process::Command::new("ip")
                .args(["link", "del", bridge])
                .output();
            if !out.is_ok_and(|o| o.status.success()) {
                eprintln!("cleanup: could not delete bridge {bridge}");
            }
        }
    }
}

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` for a space, …).
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Detaches every mount at or under `root`, deepest first, until none is left.
fn unmount_under(root: &Path) {
    for _ in 0..5 {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<PathBuf> = info
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .map(|p| PathBuf::from(unescape(p)))
            .filter(|p| p.starts_with(root))
            .collect();
        if points.is_empty() {
            return;
        }
        points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        points.dedup();
        for p in points {
            let Ok(c) = std::ffi::CString::new(p.to_string_lossy().as_bytes()) else {
                continue;
            };
            // SAFETY: umount2(2) with a valid NUL-terminated path.
            let rc = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
            if rc != 0 {
                eprintln!(
                    "cleanup: umount {}: {}",
                    p.display(),
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// Ends (SIGKILL, by PID) every process whose [`OWNER_ENV`] marker is `dir` or a path under it,
/// then detaches every mount at or under `dir`; returns the PIDs it signalled. For the
/// multi-host labs (`hosts.rs`), whose processes carry the lab's directory as their marker,
/// also after the test process that made them died. Best effort, never panics.
pub(crate) fn reap_owned_under(dir: &Path) -> Vec<i32> {
    use std::os::unix::ffi::OsStrExt;
    let prefix = format!("{OWNER_ENV}=");
    let me = std::process::id() as i32;
    let mut killed = Vec::new();
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            let Ok(pid) = p.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(env) = std::fs::read(format!("/proc/{pid}/environ")) else {
                continue;
            };
            let owned = env.split(|b| *b == 0).any(|e| {
                e.strip_prefix(prefix.as_bytes())
                    .is_some_and(|v| Path::new(std::ffi::OsStr::from_bytes(v)).starts_with(dir))
            });
            if owned && pid != me {
                signal(pid, libc::SIGKILL);
                killed.push(pid);
            }
        }
    }
    unmount_under(dir);
    killed
}

#[cfg(test)]
mod tests {
    use super::unescape;

    #[test]
    fn unescapes_mountinfo_fields() {
        assert_eq!(unescape("/tmp/a\\040b"), "/tmp/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }
}

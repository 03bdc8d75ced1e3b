//! Control groups for containers, on cgroup v1, v2 and the hybrid layout
//! (v1 controllers plus a cgroup2 hierarchy beside them). The version is
//! detected per controller, not per host: a controller is driven through the
//! v1 hierarchy that has it mounted, else through the unified hierarchy if it
//! is enabled there.
//!
//! Each container gets `flotilla/<id>` in every hierarchy it uses. This module
//! only writes files; it never moves processes other than "self" (the
//! container's init joins its own cgroups before it execs).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Errors from cgroup setup.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("failed to read the cgroup layout from /proc/self/mountinfo")]
    Layout(#[source] io::Error),
    #[error("failed to create cgroup {0}")]
    Create(PathBuf, #[source] io::Error),
    #[error("failed to write {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to set the device rules of {0}: {1}")]
    Devices(PathBuf, #[source] io::Error),
    #[error("the {0} cgroup controller is not available on this host (needed for {1})")]
    Missing(&'static str, &'static str),
}

type Result<T> = std::result::Result<T, CgroupError>;

/// The controllers Flotilla uses. `devices` is a v1 controller; on v2 the
/// same rules are a BPF program attached to the cgroup (see [`devices`]).
///
/// [`devices`]: super::devices
pub const CONTROLLERS: [&str; 5] = ["memory", "cpu", "pids", "freezer", "devices"];

/// Controllers every v2 cgroup has without enabling them in
/// `cgroup.subtree_control`.
const V2_BUILTIN: [&str; 2] = ["freezer", "devices"];

/// Where each controller lives on this host.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Layout {
    /// Mount point of the cgroup2 hierarchy, if any.
    pub unified: Option<PathBuf>,
    /// Controllers enabled in the unified hierarchy's root.
    pub unified_controllers: Vec<String>,
    /// v1 controller name → mount point.
    pub v1: Vec<(String, PathBuf)>,
}

/// Which version drives a controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Driver {
    V1(PathBuf),
    V2(PathBuf),
}

impl Layout {
    /// Reads the layout of this host from /proc/self/mountinfo.
    pub fn detect() -> Result<Layout> {
        let text = fs::read_to_string("/proc/self/mountinfo").map_err(CgroupError::Layout)?;
        let mut layout = Layout::default();
        for line in text.lines() {
            // mountinfo: id parent major:minor root mountpoint opts... - fstype source superopts
            let Some((left, right)) = line.split_once(" - ") else {
                continue;
            };
            let mount_point = left.split(' ').nth(4).unwrap_or("");
            let mut right = right.split(' ');
            let fstype = right.next().unwrap_or("");
            let _source = right.next();
            let super_opts = right.next().unwrap_or("");
            match fstype {
                "cgroup2" if layout.unified.is_none() => {
                    let root = PathBuf::from(mount_point);
                    layout.unified_controllers =
                        fs::read_to_string(root.join("cgroup.controllers"))
                            .map(|s| s.split_whitespace().map(str::to_string).collect())
                            .unwrap_or_default();
                    layout.unified = Some(root);
                }
                "cgroup" => {
                    for opt in super_opts.split(',') {
                        if CONTROLLERS.contains(&opt) && !layout.v1.iter().any(|(c, _)| c == opt) {
                            layout
                                .v1
                                .push((opt.to_string(), PathBuf::from(mount_point)));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(layout)
    }

    /// Which hierarchy drives `controller`: v1 where it is mounted as v1,
    /// otherwise v2 where the unified root enables it (the freezer is built
    /// into every v2 cgroup).
    pub fn driver(&self, controller: &str) -> Option<Driver> {
        if let Some((_, mount)) = self.v1.iter().find(|(c, _)| c == controller) {
            return Some(Driver::V1(mount.clone()));
        }
        let unified = self.unified.as_ref()?;
        if V2_BUILTIN.contains(&controller)
            || self.unified_controllers.iter().any(|c| c == controller)
        {
            return Some(Driver::V2(unified.clone()));
        }
        None
    }

    /// A short description for `flotilla version`: "v1", "v2" or "hybrid".
    pub fn describe(&self) -> &'static str {
        let v1 = CONTROLLERS
            .iter()
            .any(|c| matches!(self.driver(c), Some(Driver::V1(_))));
        let v2 = CONTROLLERS
            .iter()
            .any(|c| matches!(self.driver(c), Some(Driver::V2(_))));
        match (v1, v2) {
            (true, true) => "hybrid",
            (true, false) => "v1",
            (false, true) => "v2",
            (false, false) => "none",
        }
    }
}

/// Resource limits, in the units of Docker's HostConfig.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct Limits {
    /// Bytes; 0 = unlimited.
    pub memory: i64,
    /// 10^-9 CPUs; 0 = unlimited.
    pub nano_cpus: i64,
    /// Relative weight (Docker's 2..262144, default 1024); 0 = default.
    pub cpu_shares: i64,
    /// Maximum processes; 0 or negative = unlimited.
    pub pids: i64,
}

/// CFS period used with `--cpus`, as Docker's.
const CPU_PERIOD_US: i64 = 100_000;

/// One container's cgroups: a directory per hierarchy in use.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct ContainerCgroup {
    /// (controller, directory). A v2 directory appears once per controller it serves.
    pub dirs: Vec<(String, PathBuf)>,
}

impl ContainerCgroup {
    /// The directories `flotilla/<name>` for every controller this host has.
    pub fn plan(layout: &Layout, name: &str) -> ContainerCgroup {
        let dirs = CONTROLLERS
            .iter()
            .filter_map(|c| {
                let base = match layout.driver(c)? {
                    Driver::V1(p) | Driver::V2(p) => p,
                };
                Some((c.to_string(), base.join("flotilla").join(name)))
            })
            .collect();
        ContainerCgroup { dirs }
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs
            .iter()
            .find(|(c, _)| c == controller)
            .map(|(_, p)| p.as_path())
    }

    fn is_v2(dir: &Path) -> bool {
        dir.parent()
            .and_then(Path::parent)
            .is_some_and(|root| root.join("cgroup.controllers").exists())
    }

    /// Creates the directories and writes the limits. On v2 it first enables
    /// the controllers in the parents' `cgroup.subtree_control`.
    pub fn create(&self, limits: &Limits) -> Result<()> {
        for (controller, dir) in &self.dirs {
            if Self::is_v2(dir) && !V2_BUILTIN.contains(&controller.as_str()) {
                if let Some(parent) = dir.parent() {
                    let root = parent.parent().unwrap_or(parent);
                    fs::create_dir_all(parent)
                        .map_err(|e| CgroupError::Create(parent.into(), e))?;
                    for level in [root, parent] {
                        // Enabling an already-enabled controller is a no-op; a
                        // failure here shows up as a missing file below.
                        let _ = fs::write(
                            level.join("cgroup.subtree_control"),
                            format!("+{controller}"),
                        );
                    }
                }
            }
            fs::create_dir_all(dir).map_err(|e| CgroupError::Create(dir.clone(), e))?;
            if controller == "devices" && !Self::is_v2(dir) {
                // Deny first, before any process joins; the v2 program is
                // attached at start (a second one could only narrow it).
                super::devices::apply_v1(dir, &super::devices::default_rules(), true)
                    .map_err(|e| CgroupError::Devices(dir.clone(), e))?;
            }
        }
        self.apply(limits)
    }

    /// Installs the device allow-list of a container about to start (the
    /// defaults and `--device` additions; empty means the defaults). On v1
    /// everything but the defaults was denied at [`create`](Self::create)
    /// and the additions are written now; on v2 the program for the whole
    /// list is attached now.
    pub fn allow_devices(&self, rules: &[super::devices::DeviceRule]) -> Result<()> {
        let Some(dir) = self.dir("devices") else {
            return Ok(());
        };
        let defaults;
        let rules = if rules.is_empty() {
            defaults = super::devices::default_rules();
            &defaults
        } else {
            rules
        };
        let result = if Self::is_v2(dir) {
            super::devices::apply_v2(dir, rules)
        } else {
            // The defaults went in at creation; only additions are written now.
            let defaults = super::devices::default_rules();
            let extra: Vec<_> = rules
                .iter()
                .filter(|r| !defaults.contains(r))
                .cloned()
                .collect();
            super::devices::apply_v1(dir, &extra, false)
        };
        result.map_err(|e| CgroupError::Devices(dir.to_path_buf(), e))
    }

    /// Writes limits into existing directories.
    pub fn apply(&self, limits: &Limits) -> Result<()> {
        if limits.memory > 0 {
            let dir = self
                .dir("memory")
                .ok_or(CgroupError::Missing("memory", "--memory"))?;
            if Self::is_v2(dir) {
                write(dir, "memory.max", &limits.memory.to_string())?;
            } else {
                write(dir, "memory.limit_in_bytes", &limits.memory.to_string())?;
            }
        }
        if limits.nano_cpus > 0 || limits.cpu_shares > 0 {
            let dir = self
                .dir("cpu")
                .ok_or(CgroupError::Missing("cpu", "--cpus/--cpu-shares"))?;
            let quota = limits.nano_cpus * CPU_PERIOD_US / 1_000_000_000;
            if Self::is_v2(dir) {
                if limits.nano_cpus > 0 {
                    write(dir, "cpu.max", &format!("{quota} {CPU_PERIOD_US}"))?;
                }
                if limits.cpu_shares > 0 {
                    write(
                        dir,
                        "cpu.weight",
                        &shares_to_weight(limits.cpu_shares).to_string(),
                    )?;
                }
            } else {
                if limits.nano_cpus > 0 {
                    write(dir, "cpu.cfs_period_us", &CPU_PERIOD_US.to_string())?;
                    write(dir, "cpu.cfs_quota_us", &quota.to_string())?;
                }
                if limits.cpu_shares > 0 {
                    write(dir, "cpu.shares", &limits.cpu_shares.to_string())?;
                }
            }
        }
        if limits.pids > 0 {
            let dir = self
                .dir("pids")
                .ok_or(CgroupError::Missing("pids", "--pids-limit"))?;
            write(dir, "pids.max", &limits.pids.to_string())?;
        }
        Ok(())
    }

    /// Moves the calling process into every directory (writes "0" to cgroup.procs).
    pub fn join_self(&self) -> Result<()> {
        let mut seen: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if seen.contains(&dir.as_path()) {
                continue;
            }
            seen.push(dir);
            write(dir, "cgroup.procs", "0")?;
        }
        Ok(())
    }

    /// Moves process `pid` into every directory.
    pub fn join_pid(&self, pid: i32) -> Result<()> {
        let mut seen: Vec<&Path> = Vec::new();
        for (_, dir) in &self.dirs {
            if seen.contains(&dir.as_path()) {
                continue;
            }
            seen.push(dir);
            write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// Freezes (pause) or thaws (unpause) every process of the container.
    pub fn set_frozen(&self, frozen: bool) -> Result<()> {
        let dir = self
            .dir("freezer")
            .ok_or(CgroupError::Missing("freezer", "pause"))?;
        if Self::is_v2(dir) {
            write(dir, "cgroup.freeze", if frozen { "1" } else { "0" })
        } else {
            write(
                dir,
                "freezer.state",
                if frozen { "FROZEN" } else { "THAWED" },
            )
        }
    }

    /// Whether the kernel's OOM killer killed a process of this container.
    pub fn oom_killed(&self) -> bool {
        let Some(dir) = self.dir("memory") else {
            return false;
        };
        let file = if Self::is_v2(dir) {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|text| {
                text.lines()
                    .find_map(|l| l.strip_prefix("oom_kill ").map(|n| n.trim().parse::<u64>()))
            })
            .and_then(|n| n.ok())
            .is_some_and(|n| n > 0)
    }

    /// The processes in the container (host PIDs), from the pids or memory hierarchy.
    pub fn pids(&self) -> Vec<i32> {
        let dir = self
            .dir("pids")
            .or_else(|| self.dir("memory"))
            .or_else(|| self.dirs.first().map(|(_, d)| d.as_path()));
        dir.and_then(|d| fs::read_to_string(d.join("cgroup.procs")).ok())
            .map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect())
            .unwrap_or_default()
    }

    /// Removes the directories. Missing ones are fine; busy ones (processes
    /// still exiting) are retried briefly.
    pub fn remove(&self) -> io::Result<()> {
        let mut last_err = None;
        for (_, dir) in &self.dirs {
            for attempt in 0..50 {
                match fs::remove_dir(dir) {
                    Ok(()) => break,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break,
                    Err(e) if attempt == 49 => last_err = Some(e),
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        }
        last_err.map_or(Ok(()), Err)
    }
}

/// Docker's conversion of cpu shares (2..262144) to a cgroup v2 weight (1..10000).
pub fn shares_to_weight(shares: i64) -> i64 {
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9999) / 262_142
}

fn write(dir: &Path, file: &str, value: &str) -> Result<()> {
    let path = dir.join(file);
    fs::write(&path, value).map_err(|source| CgroupError::Write {
        path,
        value: value.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weight_conversion_matches_docker() {
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 39);
        assert_eq!(shares_to_weight(262_144), 10_000);
    }

    #[test]
    fn v1_limits_land_in_v1_files() {
        let tmp = tempfile::tempdir().unwrap();
        let layout = Layout {
            unified: None,
            unified_controllers: vec![],
            v1: CONTROLLERS
                .iter()
                .map(|c| (c.to_string(), tmp.path().join(c)))
                .collect(),
        };
        let cg = ContainerCgroup::plan(&layout, "abc");
        cg.create(&Limits {
            memory: 64 << 20,
            nano_cpus: 1_500_000_000,
            cpu_shares: 512,
            pids: 20,
        })
        .unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join(p)).unwrap();
        assert_eq!(
            read("memory/flotilla/abc/memory.limit_in_bytes"),
            "67108864"
        );
        assert_eq!(read("cpu/flotilla/abc/cpu.cfs_quota_us"), "150000");
        assert_eq!(read("cpu/flotilla/abc/cpu.shares"), "512");
        assert_eq!(read("pids/flotilla/abc/pids.max"), "20");
    }

    #[test]
    fn v2_limits_land_in_unified_files() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        let layout = Layout {
            unified: Some(tmp.path().to_path_buf()),
            unified_controllers: vec!["cpu".into(), "memory".into(), "pids".into()],
            v1: vec![],
        };
        assert_eq!(layout.describe(), "v2");
        let cg = ContainerCgroup::plan(&layout, "abc");
        cg.create(&Limits {
            memory: 1 << 20,
            nano_cpus: 500_000_000,
            cpu_shares: 1024,
            pids: 5,
        })
        .unwrap();
        let read = |p: &str| fs::read_to_string(tmp.path().join("flotilla/abc").join(p)).unwrap();
        assert_eq!(read("memory.max"), "1048576");
        assert_eq!(read("cpu.max"), "50000 100000");
        assert_eq!(read("cpu.weight"), "39");
        assert_eq!(read("pids.max"), "5");
        assert_eq!(
            fs::read_to_string(tmp.path().join("cgroup.subtree_control")).unwrap(),
            "+pids"
        );
    }

    #[test]
    fn hybrid_host_prefers_v1_for_v1_mounted_controllers() {
        let layout = Layout {
            unified: Some("/sys/fs/cgroup/unified".into()),
            unified_controllers: vec!["hugetlb".into()],
            v1: vec![("memory".into(), "/sys/fs/cgroup/memory".into())],
        };
        assert_eq!(
            layout.driver("memory"),
            Some(Driver::V1("/sys/fs/cgroup/memory".into()))
        );
        assert_eq!(layout.driver("pids"), None);
        assert_eq!(layout.describe(), "hybrid");
    }
}

//! A container as the engine keeps it: the persisted record
//! (`config.v2.json`, Docker's file name) and the in-memory handle that
//! serialises lifecycle operations and tells waiters about state changes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use agent_common::engine::{
    ContainerConfig, ContainerInspect, ContainerState, ContainerSummary, HostConfig, MountPoint,
    NetworkSettings,
};
use serde::{Deserialize, Serialize};
use tokio::net::unix::pipe;

use super::{EngineError, Result};
use crate::runtime::cgroups::ContainerCgroup;

/// File name of the record inside the container directory.
pub const RECORD_FILE: &str = "config.v2.json";

/// Everything the engine remembers about a container.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ContainerRecord {
    pub id: String,
    /// Without the leading `/`.
    pub name: String,
    pub created: String,
    /// Image ID (`sha256:…`).
    pub image: String,
    /// The image as the user named it (`busybox`), for `ps`.
    pub image_name: String,
    /// The configuration after merging with the image's defaults.
    pub config: ContainerConfig,
    pub host_config: HostConfig,
    /// The process: ENTRYPOINT + CMD resolved.
    pub path: String,
    pub args: Vec<String>,
    pub state: ContainerState,
    pub restart_count: i64,
    pub mounts: Vec<MountPoint>,
    /// PID of the shim that holds the running container, and its start time
    /// (to tell it from a later process that reused the PID).
    pub shim_pid: i32,
    pub shim_start_time: u64,
    pub cgroup: Option<ContainerCgroup>,
    /// Address, gateway, MAC and published ports while running on the bridge.
    pub network_settings: NetworkSettings,
    /// Firewall elements the container's links opened (`--icc=false`).
    pub link_rules: Vec<String>,
    /// The bridge endpoint (host veth) while running on the bridge.
    pub endpoint: Option<crate::network::Endpoint>,
    /// User-defined networks the container is connected to, in connection
    /// order (the first is `eth0` unless it is on the default bridge); kept
    /// while it is stopped.
    pub attachments: Vec<crate::network::user::Attachment>,
    /// Its endpoints on those networks while it runs.
    pub user_endpoints: Vec<crate::network::user::UserEndpoint>,
    /// Whether its resolv.conf points at the embedded DNS server (127.0.0.11),
    /// which then serves it while it runs.
    pub embedded_dns: bool,
    /// The running container's terminal on the host (`/dev/pts/N`), with `-t`.
    pub tty_path: Option<String>,
    /// Set by `stop`/`kill`: the restart policy must not bring it back.
    pub manually_stopped: bool,
    /// Set while `rm` runs, so that a concurrent exit does not auto-restart.
    pub removing: bool,
}

impl ContainerRecord {
    /// Reads a record; a corrupt file is an error naming the path.
    pub fn load(path: &Path) -> Result<ContainerRecord> {
        let bytes = std::fs::read(path).map_err(EngineError::io("read", path))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            EngineError::Internal(format!(
                "failed to parse container record {}: {e}; fix or remove the file (it was left untouched)",
                path.display()
            ))
        })
    }

    /// Writes the record atomically (temp file + rename), readable by root
    /// alone (0600: it holds the container's environment).
    pub fn save(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(RECORD_FILE);
        let tmp = dir.join(".config.v2.json.tmp");
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|e| EngineError::Internal(e.to_string()))?;
        let _ = std::fs::remove_file(&tmp);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&bytes))
            .map_err(EngineError::io("write", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(EngineError::io("write", &path))
    }

    /// `inspect` output.
    pub fn inspect(&self, log_path: PathBuf) -> ContainerInspect {
        ContainerInspect {
            id: self.id.clone(),
            created: self.created.clone(),
            path: self.path.clone(),
            args: self.args.clone(),
            state: self.state.clone(),
            image: self.image.clone(),
            name: format!("/{}", self.name),
            restart_count: self.restart_count,
            mounts: self.mounts.clone(),
            config: self.config.clone(),
            host_config: self.host_config.clone(),
            network_settings: self.network_settings.clone(),
            log_path: log_path.display().to_string(),
        }
    }

    /// One `ps` row.
    pub fn summary(&self) -> ContainerSummary {
        let command = std::iter::once(self.path.as_str())
            .chain(self.args.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(" ");
        ContainerSummary {
            id: self.id.clone(),
            names: vec![self.name.clone()],
            image: if self.image_name.is_empty() {
                self.image.clone()
            } else {
                self.image_name.clone()
            },
            image_id: self.image.clone(),
            command,
            created: parse_unix(&self.created),
            state: self.state.status.clone(),
            status: human_status(&self.state),
            ports: ports_column(&self.network_settings),
            labels: self.config.labels.clone(),
        }
    }
}

/// The PORTS column of `ps`: `0.0.0.0:8080->80/tcp, 53/udp`.
pub fn ports_column(ns: &NetworkSettings) -> String {
    let mut out = Vec::new();
    for (port, bindings) in &ns.ports {
        if bindings.is_empty() {
            out.push(port.clone());
        }
        for b in bindings {
            let ip = if b.host_ip.is_empty() {
                "0.0.0.0"
            } else {
                b.host_ip.as_str()
            };
            out.push(format!("{ip}:{}->{port}", b.host_port));
        }
    }
    out.join(", ")
}

/// Unix seconds of an RFC 3339 time (0 if unparseable).
pub fn parse_unix(s: &str) -> i64 {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// "3 minutes", "About an hour", as Docker's `units.HumanDuration`.
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0 => "Less than a second".into(),
        1 => "1 second".into(),
        s if s < 60 => format!("{s} seconds"),
        s if s < 120 => "About a minute".into(),
        s if s < 3600 => format!("{} minutes", s / 60),
        s if s < 7200 => "About an hour".into(),
        s if s < 48 * 3600 => format!("{} hours", s / 3600),
        s if s < 7 * 24 * 3600 * 2 => format!("{} days", s / 86400),
        s if s < 30 * 24 * 3600 * 2 => format!("{} weeks", s / (7 * 86400)),
        s if s < 365 * 24 * 3600 * 2 => format!("{} months", s / (30 * 86400)),
        s => format!("{} years", s / (365 * 86400)),
    }
}

fn ago(rfc3339: &str) -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    now - parse_unix(rfc3339)
}

/// The STATUS column of `ps`.
pub fn human_status(state: &ContainerState) -> String {
    match state.status.as_str() {
        "running" => format!("Up {}", human_duration(ago(&state.started_at))),
        "paused" => format!("Up {} (Paused)", human_duration(ago(&state.started_at))),
        "restarting" => format!(
            "Restarting ({}) {} ago",
            state.exit_code,
            human_duration(ago(&state.finished_at))
        ),
        "exited" => format!(
            "Exited ({}) {} ago",
            state.exit_code,
            human_duration(ago(&state.finished_at))
        ),
        "created" => "Created".into(),
        "removing" => "Removal In Progress".into(),
        other => other.to_string(),
    }
}

/// The in-memory handle of a container.
pub struct Container {
    pub id: String,
    record: Mutex<ContainerRecord>,
    /// Serialises start/stop/kill/rm/pause on this container.
    pub op: tokio::sync::Mutex<()>,
    /// Bumped on every state change; waiters watch it.
    changed: tokio::sync::watch::Sender<u64>,
    /// The daemon's writer on the container's stdin FIFO (`-i`), if open.
    pub stdin: Arc<tokio::sync::Mutex<Option<pipe::Sender>>>,
    /// Set once `rm` has deleted the container.
    removed: std::sync::atomic::AtomicBool,
}

impl Container {
    /// Wraps a record.
    pub fn new(record: ContainerRecord) -> Container {
        Container {
            id: record.id.clone(),
            record: Mutex::new(record),
            op: tokio::sync::Mutex::new(()),
            changed: tokio::sync::watch::channel(0).0,
            stdin: Arc::new(tokio::sync::Mutex::new(None)),
            removed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ContainerRecord> {
        self.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A copy of the record.
    pub fn record(&self) -> ContainerRecord {
        self.lock().clone()
    }

    /// The container's name.
    pub fn name(&self) -> String {
        self.lock().name.clone()
    }

    /// Changes the record, writes it to `dir`, and wakes waiters.
    pub fn update<T>(&self, dir: &Path, f: impl FnOnce(&mut ContainerRecord) -> T) -> Result<T> {
        let (out, result) = {
            let mut rec = self.lock();
            let out = f(&mut rec);
            (out, rec.save(dir))
        };
        self.changed.send_modify(|v| *v += 1);
        result.map(|_| out)
    }

    /// A receiver that sees every later state change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Records that the container was removed, and wakes waiters.
    pub fn mark_removed(&self) {
        self.removed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.changed.send_modify(|v| *v += 1);
    }

    /// Whether `rm` deleted the container.
    pub fn is_removed(&self) -> bool {
        self.removed.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Whether the container's process is alive (running or paused).
    pub fn is_running(&self) -> bool {
        self.lock().state.running
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_dockers() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(5), "5 seconds");
        assert_eq!(human_duration(90), "About a minute");
        assert_eq!(human_duration(600), "10 minutes");
        assert_eq!(human_duration(3 * 3600), "3 hours");
    }

    #[test]
    fn corrupt_record_names_its_path() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join(RECORD_FILE);
        std::fs::write(&p, "{oops").unwrap();
        let err = ContainerRecord::load(&p).unwrap_err().to_string();
        assert!(err.contains(RECORD_FILE), "{err}");
        assert!(p.exists());
    }

    #[test]
    fn record_round_trips() {
        let tmp = tempfile::tempdir().unwrap();
        let rec = ContainerRecord {
            id: "abc".into(),
            name: "web".into(),
            ..Default::default()
        };
        rec.save(tmp.path()).unwrap();
        let back = ContainerRecord::load(&tmp.path().join(RECORD_FILE)).unwrap();
        assert_eq!(back.name, "web");
    }
}

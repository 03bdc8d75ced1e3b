//! Views of a container's file system and processes: `diff` (from the
//! overlay upper directory), `export` (a tar of the merged root), `commit`
//! (the upper directory as a new image layer) and `top`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use agent_common::engine::{Change, TopReply};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use tokio::sync::mpsc;

use super::container::Container;
use super::{Engine, EngineError, Result};
use crate::image::RuntimeConfig;

/// A `Write` that sends what it gets as chunks over a channel (for streaming
/// a tar that is built on a blocking thread).
pub(crate) struct ChannelWriter {
    tx: mpsc::Sender<Vec<u8>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    /// A writer whose chunks arrive on `tx`'s receiver.
    pub(crate) fn new(tx: mpsc::Sender<Vec<u8>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::new(),
        }
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= 256 * 1024 {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if !self.buf.is_empty() {
            let chunk = std::mem::take(&mut self.buf);
            self.tx.blocking_send(chunk).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away")
            })?;
        }
        Ok(())
    }
}

/// A read-only overlay mount of a container's root, unmounted on drop.
struct MergedView {
    mountpoint: PathBuf,
}

impl MergedView {
    fn mount(upper: &Path, lowers_top_first: &[PathBuf], mountpoint: &Path) -> Result<MergedView> {
        std::fs::create_dir_all(mountpoint).map_err(EngineError::io("create", mountpoint))?;
        // Without upperdir, overlayfs is read-only; the container's upper dir
        // then acts as the topmost lower layer (its whiteouts still apply).
        let mut layers = vec![upper.display().to_string()];
        layers.extend(lowers_top_first.iter().map(|p| p.display().to_string()));
        if layers.len() < 2 {
            // A single lowerdir is not a valid read-only overlay.
            let empty = mountpoint.with_extension("empty");
            std::fs::create_dir_all(&empty).map_err(EngineError::io("create", &empty))?;
            layers.push(empty.display().to_string());
        }
        let data = format!("lowerdir={}", layers.join(":"));
        mount(
            Some("overlay"),
            mountpoint,
            Some("overlay"),
            MsFlags::MS_RDONLY,
            Some(data.as_str()),
        )
        .map_err(|e| {
            EngineError::Internal(format!("failed to mount the container's file system: {e}"))
        })?;
        Ok(MergedView {
            mountpoint: mountpoint.to_path_buf(),
        })
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        let _ = umount2(&self.mountpoint, MntFlags::MNT_DETACH);
        let _ = std::fs::remove_dir(&self.mountpoint);
    }
}

impl Engine {
    fn lowers_top_first(&self, image_id: &str) -> Result<Vec<PathBuf>> {
        let image = self.images.resolve(image_id)?;
        let mut lowers = self.images.layer_dirs(&image)?;
        lowers.reverse();
        Ok(lowers)
    }

    /// `diff`: what the container added (A), changed (C) and deleted (D).
    ///
    /// The engine's own mount points (`/etc/hosts`, `/etc/hostname`,
    /// `/etc/resolv.conf`, `/proc`, `/sys`, `/dev`, volume destinations) are
    /// left out, as Docker keeps them in a hidden init layer; so are
    /// directories that only changed because such a mount point was created.
    pub fn diff(&self, c: &Container) -> Result<Vec<Change>> {
        let rec = c.record();
        let lowers = self.lowers_top_first(&rec.image)?;
        let changes =
            crate::image::layer::diff_changes(&self.container_dir(&c.id).join("upper"), &lowers)?;
        let mut hidden: Vec<String> = [
            "/etc/hostname",
            "/etc/hosts",
            "/etc/resolv.conf",
            "/proc",
            "/sys",
            "/dev",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        hidden.extend(rec.mounts.iter().map(|m| m.destination.clone()));
        Ok(filter_engine_paths(changes, &hidden))
    }

    /// `export`: streams a tar of the container's merged file system. A
    /// running container is not paused: the view is archived by descriptor
    /// ([`super::confined::append_tree`]), so what the container changes
    /// meanwhile may or may not be in the archive, but no symlink it plants
    /// is followed.
    pub fn export(self: &Arc<Self>, c: &Container, tx: mpsc::Sender<Vec<u8>>) -> Result<()> {
        let rec = c.record();
        let lowers = self.lowers_top_first(&rec.image)?;
        let dir = self.container_dir(&c.id);
        let view = MergedView::mount(
            &dir.join("upper"),
            &lowers,
            &dir.join(format!("export-{}", super::random_id())),
        )?;
        let writer = ChannelWriter {
            tx,
            buf: Vec::new(),
        };
        let mut tar = tar::Builder::new(writer);
        tar.follow_symlinks(false);
        tar.mode(tar::HeaderMode::Complete);
        let result = super::confined::append_tree(&mut tar, &view.mountpoint)
            .and_then(|_| tar.into_inner())
            .and_then(|mut w| w.flush());
        drop(view);
        result.map_err(|e| EngineError::Internal(format!("failed to export the container: {e}")))
    }

    /// `commit`: makes an image of the container's changes.
    pub async fn commit(
        self: &Arc<Self>,
        c: &Arc<Container>,
        reference: &str,
        changes: &[String],
        comment: &str,
        author: &str,
        pause: bool,
    ) -> Result<String> {
        let rec = c.record();
        let cfg = &rec.config;
        let mut rc = RuntimeConfig {
            user: cfg.user.clone(),
            env: Some(cfg.env.clone()),
            cmd: cfg.cmd.clone(),
            entrypoint: cfg.entrypoint.clone(),
            working_dir: cfg.working_dir.clone(),
            stop_signal: cfg.stop_signal.clone().unwrap_or_default(),
            ..RuntimeConfig::default()
        };
        if !cfg.exposed_ports.is_empty() {
            rc.exposed_ports = Some(
                cfg.exposed_ports
                    .keys()
                    .map(|k| (k.clone(), serde_json::json!({})))
                    .collect(),
            );
        }
        if !cfg.volumes.is_empty() {
            rc.volumes = Some(
                cfg.volumes
                    .keys()
                    .map(|k| (k.clone(), serde_json::json!({})))
                    .collect(),
            );
        }
        if !cfg.labels.is_empty() {
            rc.labels = Some(cfg.labels.clone());
        }
        crate::image::changes::apply_changes(&mut rc, changes)?;
        let paused_here = pause && rec.state.running && !rec.state.paused;
        if paused_here {
            self.set_paused(c, true).await?;
        }
        let engine = self.clone();
        let upper = self.container_dir(&c.id).join("upper");
        let image_id = rec.image.clone();
        let reference = (!reference.is_empty()).then(|| reference.to_string());
        let comment = comment.to_string();
        let author = author.to_string();
        let result = tokio::task::spawn_blocking(move || -> Result<String> {
            let parent = engine.images.resolve(&image_id)?;
            Ok(engine.images.commit(
                Some(&parent),
                &upper,
                rc,
                reference.as_deref(),
                &comment,
                &author,
            )?)
        })
        .await
        .map_err(|e| EngineError::Internal(e.to_string()))
        .and_then(|r| r);
        if paused_here {
            let _ = self.set_paused(c, false).await;
        }
        result
    }

    /// `top`: the container's processes, `ps -ef` style.
    pub fn top(&self, c: &Container) -> Result<TopReply> {
        let rec = c.record();
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        let cg = rec
            .cgroup
            .ok_or_else(|| EngineError::Internal("running container without cgroup".into()))?;
        let mut pids = cg.pids();
        pids.sort();
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .unwrap_or(100)
            .max(1) as u64;
        let mut processes = Vec::new();
        for pid in pids {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            let Some(close) = stat.rfind(')') else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            let ppid = fields.get(1).copied().unwrap_or("0").to_string();
            let cpu_ticks: u64 = fields.get(11).and_then(|s| s.parse().ok()).unwrap_or(0)
                + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0);
            let secs = cpu_ticks / ticks;
            let time = format!(
                "{:02}:{:02}:{:02}",
                secs / 3600,
                (secs / 60) % 60,
                secs % 60
            );
            let uid = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .ok()
                .and_then(|s| {
                    s.lines().find_map(|l| {
                        l.strip_prefix("Uid:")
                            .map(|r| r.split_whitespace().next().unwrap_or("0").to_string())
                    })
                })
                .unwrap_or_else(|| "0".into());
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|b| {
                    b.split(|x| *x == 0)
                        .filter(|s| !s.is_empty())
                        .map(|s| String::from_utf8_lossy(s).into_owned())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .unwrap_or_default();
            processes.push(vec![uid, pid.to_string(), ppid, time, cmd]);
        }
        Ok(TopReply {
            titles: ["UID", "PID", "PPID", "TIME", "CMD"]
                .iter()
                .map(|s| s.to_string())
                .collect(),
            processes,
        })
    }
}

/// Drops `hidden` paths (and what is below them) from a change list, then the
/// directories that are left only as parents of dropped paths.
pub fn filter_engine_paths(changes: Vec<Change>, hidden: &[String]) -> Vec<Change> {
    let under = |path: &str, root: &str| path == root || path.starts_with(&format!("{root}/"));
    let is_hidden = |p: &str| hidden.iter().any(|h| under(p, h));
    let dropped: Vec<String> = changes
        .iter()
        .filter(|c| is_hidden(&c.path))
        .map(|c| c.path.clone())
        .collect();
    let kept: Vec<Change> = changes
        .into_iter()
        .filter(|c| !is_hidden(&c.path))
        .collect();
    kept.iter()
        .filter(|c| {
            let parent_of_dropped = dropped
                .iter()
                .any(|d| d.starts_with(&format!("{}/", c.path)));
            let parent_of_kept = kept
                .iter()
                .any(|k| k.path.starts_with(&format!("{}/", c.path)));
            !(c.kind == "C" && parent_of_dropped && !parent_of_kept)
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ch(kind: &str, path: &str) -> Change {
        Change {
            kind: kind.into(),
            path: path.into(),
        }
    }

    #[test]
    fn engine_mount_points_are_not_changes() {
        let hidden = vec![
            "/etc/hosts".to_string(),
            "/etc/hostname".to_string(),
            "/data".to_string(),
        ];
        let out = filter_engine_paths(
            vec![
                ch("C", "/etc"),
                ch("A", "/etc/hostname"),
                ch("A", "/etc/hosts"),
                ch("A", "/data"),
                ch("A", "/data/x"),
            ],
            &hidden,
        );
        assert!(out.is_empty(), "{out:?}");
        let out = filter_engine_paths(
            vec![
                ch("C", "/etc"),
                ch("A", "/etc/hosts"),
                ch("C", "/etc/passwd"),
                ch("A", "/tmp/new"),
            ],
            &hidden,
        );
        assert_eq!(
            out,
            vec![ch("C", "/etc"), ch("C", "/etc/passwd"), ch("A", "/tmp/new")]
        );
    }
}

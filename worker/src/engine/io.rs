//! Container I/O: `logs`, `attach` and `exec`.
//!
//! Output always comes from the container's log, which the shim writes: an
//! attached client follows the log from the position it had when the client
//! arrived, so output written before a start is never lost and nothing
//! depends on the daemon having been up the whole time. Input goes through
//! the stdin FIFO the daemon holds open for `-i` containers.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use agent_common::proto::{
    attach_input, exec_input, output_chunk, AttachInput, ExecInput, OutputChunk,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tonic::Streaming;

use super::container::Container;
use super::{Engine, EngineError, Result};
use crate::runtime::shim::LogEntry;

/// How often a follower looks for new log data while the container runs.
const FOLLOW_POLL: Duration = Duration::from_millis(20);

/// One line (or trailing partial line) of container output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stderr: bool,
    pub time_nanos: i64,
    pub data: Vec<u8>,
}

impl LogLine {
    fn chunk(self) -> OutputChunk {
        OutputChunk {
            stream: if self.stderr {
                output_chunk::Stream::Stderr as i32
            } else {
                output_chunk::Stream::Stdout as i32
            },
            data: self.data,
            time_nanos: self.time_nanos,
            exit_code: None,
            error: String::new(),
        }
    }
}

fn parse_time(s: &str) -> i64 {
    humantime::parse_rfc3339_weak(s)
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

/// Parses the complete lines of a json-file log; returns the entries as
/// lines and how many bytes were consumed (a trailing partial JSON line is
/// left for the next read).
pub fn parse_log(bytes: &[u8], split_lines: bool) -> (Vec<LogLine>, usize) {
    let mut out = Vec::new();
    let mut consumed = 0;
    for raw in bytes.split_inclusive(|b| *b == b'\n') {
        if raw.last() != Some(&b'\n') {
            break;
        }
        consumed += raw.len();
        let Ok(entry) = serde_json::from_slice::<LogEntry>(raw) else {
            continue;
        };
        let stderr = entry.stream == "stderr";
        let time_nanos = parse_time(&entry.time);
        if split_lines {
            for piece in entry.log.as_bytes().split_inclusive(|b| *b == b'\n') {
                out.push(LogLine {
                    stderr,
                    time_nanos,
                    data: piece.to_vec(),
                });
            }
        } else {
            out.push(LogLine {
                stderr,
                time_nanos,
                data: entry.log.into_bytes(),
            });
        }
    }
    (out, consumed)
}

async fn read_from(path: &std::path::Path, offset: u64) -> Vec<u8> {
    // Local files, read at most a few times per follower tick: plain
    // blocking reads are cheaper here than hops through the blocking pool.
    use std::io::{Read, Seek};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    buf
}

/// Opens a container's terminal from its recorded `/proc/PID/root/dev/pts/N`
/// path, resolved inside the container's root; a character device only.
fn open_container_tty(recorded: &str) -> Option<std::fs::File> {
    let rest = recorded.strip_prefix("/proc/")?;
    let (pid, path) = rest.split_once("/root")?;
    let pid: u32 = pid.parse().ok()?;
    match super::confined::open_container_device(pid, path) {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::debug!("not resizing the terminal {recorded}: {e}");
            None
        }
    }
}

/// Reads an open file from `offset` to its end.
fn read_open(file: &mut std::fs::File, offset: u64) -> Vec<u8> {
    use std::io::{Read, Seek};
    let mut buf = Vec::new();
    if file.seek(std::io::SeekFrom::Start(offset)).is_ok() {
        let _ = file.read_to_end(&mut buf);
    }
    buf
}

/// Sends chunks; false when the client went away.
async fn send(tx: &mpsc::Sender<OutputChunk>, chunk: OutputChunk) -> bool {
    tx.send(chunk).await.is_ok()
}

impl Engine {
    /// `logs`: past output, optionally the last `tail` lines, then (with
    /// `follow`) new output until the container stops.
    pub async fn logs(
        self: &Arc<Self>,
        c: Arc<Container>,
        follow: bool,
        tail: i64,
        stdout: bool,
        stderr: bool,
        tx: mpsc::Sender<OutputChunk>,
    ) {
        let path = self.log_path(&c.id);
        let wanted = |l: &LogLine| if l.stderr { stderr } else { stdout };
        let bytes = read_from(&path, 0).await;
        let (lines, consumed) = parse_log(&bytes, true);
        let mut lines: Vec<LogLine> = lines.into_iter().filter(|l| wanted(l)).collect();
        if tail >= 0 {
            // Count complete lines from the end; a trailing partial line counts as one.
            let mut count = 0;
            let mut start = lines.len();
            while start > 0 {
                let l = &lines[start - 1];
                if l.data.last() == Some(&b'\n') || start == lines.len() {
                    if count == tail {
                        break;
                    }
                    count += 1;
                }
                start -= 1;
            }
            lines.drain(..start);
        }
        for l in lines {
            if !send(&tx, l.chunk()).await {
                return;
            }
        }
        if !follow {
            return;
        }
        let mut offset = consumed as u64;
        let mut rx = c.subscribe();
        loop {
            let running = c.is_running() || c.record().state.restarting;
            let bytes = read_from(&path, offset).await;
            let (lines, consumed) = parse_log(&bytes, false);
            offset += consumed as u64;
            for l in lines.into_iter().filter(|l| wanted(l)) {
                if !send(&tx, l.chunk()).await {
                    return;
                }
            }
            if !running || c.is_removed() {
                return;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(FOLLOW_POLL * 5) => {}
                _ = tx.closed() => return,
            }
        }
    }

    /// `attach` (and `run`/`start -a` with `start`): streams output from now
    /// on and forwards stdin, then sends the exit code as the last message.
    pub async fn attach(
        self: &Arc<Self>,
        c: Arc<Container>,
        start: bool,
        want_stdin: bool,
        mut input: Streaming<AttachInput>,
        tx: mpsc::Sender<OutputChunk>,
    ) -> Result<()> {
        // Keep the log open from here on: with `--rm` the container's
        // directory (and the log's name) may be gone before the last read.
        let path = self.log_path(&c.id);
        let mut log = std::fs::OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(EngineError::io("open", &path))?;
        let mut offset = log.metadata().map(|m| m.len()).unwrap_or(0);
        if start {
            if let Err(e) = self.start(&c).await {
                let (code, message) = match e {
                    EngineError::StartFailed { exit_code, message } => (exit_code as i64, message),
                    other => (125, other.to_string()),
                };

                let _ = tx
                    .send(OutputChunk {
                        exit_code: Some(code),
                        error: message,
                        ..Default::default()
                    })
                    .await;
                return Ok(());
            }
        } else if !c.is_running() {
            return Err(EngineError::Conflict(
                "You cannot attach to a stopped container, start it first".into(),
            ));
        }

        let stdin_once = c.record().config.stdin_once;
        let tty_path = c.record().tty_path;
        let stdin = c.stdin.clone();
        let pump = tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                match msg.kind {
                    Some(attach_input::Kind::Stdin(data)) if want_stdin => {
                        let mut guard = stdin.lock().await;
                        if let Some(w) = guard.as_mut() {
                            if w.write_all(&data).await.is_err() {
                                guard.take();
                            }
                        }
                    }
                    Some(attach_input::Kind::StdinEof(true)) if want_stdin && stdin_once => {
                        stdin.lock().await.take();
                    }
                    Some(attach_input::Kind::Resize(size)) => {
                        // The terminal is opened inside the container's root
                        // (a symlink planted there never reaches a host file).
                        if let Some(tty) = tty_path.as_deref().and_then(open_container_tty) {
                            use std::os::fd::AsRawFd;
                            let _ = crate::runtime::set_winsize_fd(
                                tty.as_raw_fd(),
                                size.rows.min(u16::MAX as u32) as u16,
                                size.cols.min(u16::MAX as u32) as u16,
                            );
                        }
                    }
                    _ => {}
                }
            }
        });

        let mut rx = c.subscribe();
        loop {
            let running = c.is_running();
            let bytes = read_open(&mut log, offset);
            let (lines, consumed) = parse_log(&bytes, false);
            offset += consumed as u64;
            for l in lines {
                if !send(&tx, l.chunk()).await {
                    pump.abort();
                    return Ok(());
                }
            }
            if !running {
                break;
            }
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep(FOLLOW_POLL) => {}
                _ = tx.closed() => { pump.abort(); return Ok(()); }
            }
        }
        pump.abort();
        let rec = c.record();
        if rec.host_config.auto_remove {
            // `run --rm` returns once the container is gone, as Docker's does.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
            while !c.is_removed() && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
            }
        }
        let _ = tx
            .send(OutputChunk {
                exit_code: Some(rec.state.exit_code),
                error: rec.state.error,
                ..Default::default()
            })
            .await;
        Ok(())
    }

    /// The exec helper's command line running `start` in the running
    /// container `c` (stdio left to the caller).
    ///
    /// The user is resolved from the container's own `/etc/passwd` and
    /// `/etc/group`, read inside its root by descriptor (a symlink to a host
    /// file, a FIFO or `/dev/zero` there is refused, see
    /// [`super::confined`]) on a blocking thread, within
    /// [`super::confined::READ_TIMEOUT`].
    pub async fn exec_helper_command(
        &self,
        c: &Container,
        start: &agent_common::proto::ExecStart,
    ) -> Result<tokio::process::Command> {
        let rec = c.record();
        if !rec.state.running {
            return Err(EngineError::Conflict(format!(
                "Container {} is not running",
                c.id
            )));
        }
        if rec.state.paused {
            return Err(EngineError::Conflict(format!(
                "Container {} is paused, unpause the container before exec",
                c.id
            )));
        }
        if start.cmd.is_empty() {
            return Err(EngineError::InvalidArgument(
                "no command given to exec".into(),
            ));
        }
        let (passwd, group) = container_credentials(rec.state.pid as u32).await;
        let user = if start.user.is_empty() {
            rec.config.user.clone()
        } else {
            start.user.clone()
        };
        let (uid, gid, groups, _home) =
            crate::runtime::init::resolve_user(&user, passwd.as_deref(), group.as_deref())
                .map_err(|m| EngineError::StartFailed {
                    exit_code: 126,
                    message: m,
                })?;
        let mut env = super::create::merge_env(&rec.config.env, &start.env);
        if !env.iter().any(|e| e.starts_with("HOSTNAME=")) {
            env.push(format!("HOSTNAME={}", rec.config.hostname));
        }
        let caps = crate::runtime::spec::capability_set(
            &rec.host_config.cap_add,
            &rec.host_config.cap_drop,
        )
        .map_err(|e| EngineError::Internal(e.to_string()))?;
        let request = crate::runtime::exec::ExecRequest {
            pid: rec.state.pid as i32,
            cgroup: rec
                .cgroup
                .clone()
                .ok_or_else(|| EngineError::Internal("running container without cgroup".into()))?,
            args: start.cmd.clone(),
            env,
            cwd: if start.workdir.is_empty() {
                rec.config.working_dir.clone()
            } else {
                start.workdir.clone()
            },
            uid,
            gid,
            additional_gids: groups,
            tty: start.tty,
            seccomp: crate::runtime::seccomp::for_container(&rec.host_config.security_opt, &caps)
                .map_err(EngineError::Internal)?,
            capabilities: caps,
        };
        let json =
            serde_json::to_string(&request).map_err(|e| EngineError::Internal(e.to_string()))?;
        let mut cmd = tokio::process::Command::new(crate::runtime::self_exe());
        cmd.arg("exec-helper").arg(json);
        Ok(cmd)
    }

    /// `exec`: runs a process in the running container through the exec
    /// helper, streaming its output; the last message carries its exit code.
    pub async fn exec(
        self: &Arc<Self>,
        c: Arc<Container>,
        start: agent_common::proto::ExecStart,
        mut input: Streaming<ExecInput>,
        tx: mpsc::Sender<OutputChunk>,
    ) -> Result<()> {
        let mut cmd = self.exec_helper_command(&c, &start).await?;
        if start.tty {
            return self.exec_tty(cmd, input, tx).await;
        }
        let root = format!("/proc/{}/root", c.record().state.pid);
        let mut child = cmd
            .stdin(if start.stdin {
                std::process::Stdio::piped()
            } else {
                std::process::Stdio::null()
            })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(EngineError::io("start the exec helper for", &root))?;
        let mut child_stdin = child.stdin.take();
        let pump = tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                match msg.kind {
                    Some(exec_input::Kind::Stdin(data)) => {
                        if let Some(w) = child_stdin.as_mut() {
                            if w.write_all(&data).await.is_err() {
                                child_stdin = None;
                            }
                        }
                    }
                    Some(exec_input::Kind::StdinEof(true)) => child_stdin = None,
                    _ => {}
                }
            }
        });
        finish_exec(child, pump, tx).await
    }
}

impl Engine {
    /// `exec -t`: the helper allocates the terminal inside the container and
    /// relays it; its stdin takes frames (see `runtime::exec`), its stdout is
    /// the terminal's output.
    async fn exec_tty(
        &self,
        mut cmd: tokio::process::Command,
        mut input: Streaming<ExecInput>,
        tx: mpsc::Sender<OutputChunk>,
    ) -> Result<()> {
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(EngineError::io("start", "exec helper"))?;
        let mut helper_in = child.stdin.take();
        let pump = tokio::spawn(async move {
            while let Ok(Some(msg)) = input.message().await {
                let frame = match msg.kind {
                    Some(exec_input::Kind::Stdin(data)) => {
                        let mut f = vec![0u8];
                        f.extend_from_slice(&(data.len() as u32).to_be_bytes());
                        f.extend_from_slice(&data);
                        f
                    }
                    Some(exec_input::Kind::Resize(size)) => {
                        let mut f = vec![1u8];
                        f.extend_from_slice(&(size.rows.min(u16::MAX as u32) as u16).to_be_bytes());
                        f.extend_from_slice(&(size.cols.min(u16::MAX as u32) as u16).to_be_bytes());
                        f
                    }
                    _ => continue,
                };
                let Some(w) = helper_in.as_mut() else { break };
                if w.write_all(&frame).await.is_err() {
                    break;
                }
            }
        });
        finish_exec(child, pump, tx).await
    }
}

/// The running container `pid`'s `/etc/passwd` and `/etc/group`, each
/// `None` when absent, refused (not a regular file, too large, a symlink
/// out of reach) or not read within the timeout.
async fn container_credentials(pid: u32) -> (Option<String>, Option<String>) {
    use super::confined::{read_container_file, text_or_warn, MAX_READ, READ_TIMEOUT};
    let read = tokio::task::spawn_blocking(move || {
        let read = |path: &str| {
            text_or_warn(
                &format!("{path} of process {pid}"),
                read_container_file(pid, path, MAX_READ),
            )
        };
        (read("/etc/passwd"), read("/etc/group"))
    });
    match tokio::time::timeout(READ_TIMEOUT, read).await {
        Ok(Ok(files)) => files,
        Ok(Err(_)) => (None, None),
        Err(_) => {
            tracing::warn!("reading the credentials of process {pid} timed out");
            (None, None)
        }
    }
}

/// Streams an exec helper's stdout and stderr until they close, waits for
/// it, and sends its exit status as the last message.
async fn finish_exec(
    mut child: tokio::process::Child,
    pump: tokio::task::JoinHandle<()>,
    tx: mpsc::Sender<OutputChunk>,
) -> Result<()> {
    let readers: Vec<_> = [
        (
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            false,
        ),
        (
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            true,
        ),
    ]
    .into_iter()
    .filter_map(|(r, is_err)| r.map(|r| (r, is_err)))
    .map(|(r, is_err)| tokio::spawn(copy_output(r, is_err, tx.clone())))
    .collect();
    let status = child.wait().await;
    for r in readers {
        let _ = r.await;
    }
    pump.abort();
    let code = status.ok().and_then(|s| s.code()).unwrap_or(125) as i64;
    let _ = tx
        .send(OutputChunk {
            exit_code: Some(code),
            ..Default::default()
        })
        .await;
    Ok(())
}

/// Streams a process's output as chunks until end of file.
async fn copy_output(
    mut r: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    is_err: bool,
    tx: mpsc::Sender<OutputChunk>,
) {
    let mut buf = vec![0u8; 32 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let line = LogLine {
                    stderr: is_err,
                    time_nanos: 0,
                    data: buf[..n].to_vec(),
                };
                if tx.send(line.chunk()).await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_parsing_splits_lines_and_keeps_partial_json() {
        let a = serde_json::to_string(&LogEntry {
            log: "one\ntwo\n".into(),
            stream: "stdout".into(),
            time: "2026-01-01T00:00:00.000000001Z".into(),
        })
        .unwrap();
        let b = serde_json::to_string(&LogEntry {
            log: "err".into(),
            stream: "stderr".into(),
            time: "2026-01-01T00:00:01Z".into(),
        })
        .unwrap();
        let text = format!("{a}\n{b}\n{{\"log\":\"partial");
        let (lines, consumed) = parse_log(text.as_bytes(), true);
        assert_eq!(consumed, a.len() + b.len() + 2);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0].data, b"one\n");
        assert_eq!(lines[1].data, b"two\n");
        assert!(lines[2].stderr);
        assert_eq!(lines[0].time_nanos % 1_000_000_000, 1);
    }
}

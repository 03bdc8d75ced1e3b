//! `service logs` on the node side: the leader sends log requests down the
//! node's session (nodes listen on no port); each is answered by a reader
//! that sends the requested containers' lines back up the session, in
//! chunks of at most [`CHUNK_LINES`], and with follow keeps sending new lines
//! until the leader cancels the request or the containers are gone.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::Duration;

use agent_common::dispatcher_proto::session_up::Kind as Up;
use agent_common::dispatcher_proto::{LogChunk, LogLine, LogRequest, SessionUp};
use tokio::sync::mpsc;

use crate::engine::Engine;

/// Most lines sent per container when all are asked for.
const MAX_LINES: usize = 10_000;
/// Most lines in one chunk.
pub const CHUNK_LINES: usize = 1_000;
/// Most bytes of text in one chunk (a line that alone is larger still goes,
/// alone): messages stay well under gRPC's 4 MB.
pub const CHUNK_BYTES: usize = 1 << 20;
/// Most bytes read from a log file at once.
const READ_LIMIT: u64 = 64 << 20;
/// How often a follow looks for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Where the last `lines` lines of `file` (`len` bytes) start: just after
/// a newline, or 0; never more than [`READ_LIMIT`] before the end.
fn tail_start(file: &mut std::fs::File, len: u64, lines: usize) -> std::io::Result<u64> {
    const BLOCK: u64 = 64 << 10;
    if lines == 0 {
        return Ok(len);
    }
    let floor = len.saturating_sub(READ_LIMIT);
    let mut end = len;
    // The file ends with a newline: it does not start a line.
    let mut seen = 0usize;
    let mut first = true;
    let mut buf = vec![0u8; BLOCK as usize];
    while end > floor {
        let start = end.saturating_sub(BLOCK).max(floor);
        let n = (end - start) as usize;
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut buf[..n])?;
        for i in (0..n).rev() {
            if buf[i] == b'\n' {
                if first && start + i as u64 + 1 == len {
                    first = false;
                    continue;
                }
                first = false;
                seen += 1;
                if seen >= lines {
                    return Ok(start + i as u64 + 1);
                }
            }
        }
        end = start;
    }
    if floor == 0 {
        return Ok(0);
    }
    // Cut at the read limit: start at the first whole line after it.
    file.seek(SeekFrom::Start(floor))?;
    let mut probe = vec![0u8; BLOCK as usize];
    let n = file.read(&mut probe)?;
    Ok(probe[..n]
        .iter()
        .position(|b| *b == b'\n')
        .map_or(len, |i| floor + i as u64 + 1))
}

/// One container's log file from `offset` on (with `tail`, from where its
/// last `tail` lines start instead): its complete lines and the offset
/// after them. `Ok(None)` when the container is gone; a container whose log
/// file does not exist yet (it is starting) has no lines so far.
fn read_from(
    engine: &Engine,
    container_id: &str,
    offset: u64,
    tail: Option<usize>,
) -> Result<Option<(Vec<LogLine>, u64)>, String> {
    let path = engine.log_path(container_id);
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(engine.find(container_id).is_ok().then(|| (Vec::new(), 0)));
        }
        Err(e) => return Err(format!("container {container_id}: {e}")),
    };
    let len = file
        .metadata()
        .map_err(|e| format!("container {container_id}: {e}"))?
        .len();
    // A file shorter than what was read was replaced: start over.
    let mut offset = if len < offset { 0 } else { offset };
    if let Some(lines) = tail {
        offset = tail_start(&mut file, len, lines)
            .map_err(|e| format!("container {container_id}: {e}"))?;
    }
    if len == offset {
        return Ok(Some((Vec::new(), offset)));
    }
    let mut bytes = Vec::with_capacity((len - offset).min(READ_LIMIT) as usize);
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.take(READ_LIMIT).read_to_end(&mut bytes))
        .map_err(|e| format!("container {container_id}: {e}"))?;
    let (lines, consumed) = crate::engine::io::parse_log(&bytes, true);
    let lines = lines
        .into_iter()
        .map(|l| LogLine {
            container_id: container_id.to_string(),
            stderr: l.stderr,
            text: String::from_utf8_lossy(&l.data).into_owned(),
            time_nanos: l.time_nanos,
        })
        .collect();
    Ok(Some((lines, offset + consumed as u64)))
}

/// The last `tail` lines (negative: all, up to [`MAX_LINES`]).
fn last(mut lines: Vec<LogLine>, tail: i64) -> Vec<LogLine> {
    let keep = if tail < 0 {
        MAX_LINES
    } else {
        (tail as usize).min(MAX_LINES)
    };
    let skip = lines.len().saturating_sub(keep);
    lines.drain(..skip);
    lines
}

fn up(chunk: LogChunk) -> SessionUp {
    SessionUp {
        kind: Some(Up::Logs(chunk)),
    }
}

/// Sends `lines` in chunks; the last one carries `error` and `done`. At
/// least one chunk is sent (the leader waits for the first).
async fn send_chunks(
    session: &mpsc::Sender<SessionUp>,
    id: &str,
    lines: Vec<LogLine>,
    error: String,
    done: bool,
) -> Result<(), ()> {
    let mut chunks: Vec<Vec<LogLine>> = vec![Vec::new()];
    let mut bytes = 0usize;
    for line in lines {
        let size = line.text.len() + line.container_id.len() + 16;
        let full = chunks.last().is_some_and(|c| {
            !c.is_empty() && (c.len() >= CHUNK_LINES || bytes + size > CHUNK_BYTES)
        });
        if full {
            chunks.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        if let Some(c) = chunks.last_mut() {
            c.push(line);
        }
    }
    let n = chunks.len();
    for (i, lines) in chunks.into_iter().enumerate() {
        let last = i + 1 == n;
        let chunk = LogChunk {
            request_id: id.to_string(),
            lines,
            error: if last { error.clone() } else { String::new() },
            done: last && done,
        };
        session.send(up(chunk)).await.map_err(|_| ())?;
    }
    Ok(())
}

/// Answers `req` on `session` (see the module). Ends when answered, when
/// the session closes, or when the task running it is aborted (a cancel).
pub async fn answer(engine: Arc<Engine>, req: LogRequest, session: mpsc::Sender<SessionUp>) {
    let ids = req.container_ids.clone();
    let tail = req.tail;
    let engine2 = Arc::clone(&engine);
    let first = tokio::task::spawn_blocking(move || {
        let mut lines = Vec::new();
        let mut errors = Vec::new();
        let mut offsets = HashMap::new();
        for id in &ids {
            let keep = if tail < 0 {
                MAX_LINES
            } else {
                (tail as usize).min(MAX_LINES)
            };
            match read_from(&engine2, id, 0, Some(keep)) {
                Ok(Some((l, end))) => {
                    lines.extend(last(l, tail));
                    offsets.insert(id.clone(), end);
                }
                Ok(None) => errors.push(format!("container {id}: its log is gone")),
                Err(e) => errors.push(e),
            }
        }
        lines.sort_by_key(|l| l.time_nanos);
        (lines, errors.join("; "), offsets)
    })
    .await;
    let Ok((lines, error, mut offsets)) = first else {
        return;
    };
    let follow = req.follow && !offsets.is_empty();
    if send_chunks(&session, &req.id, lines, error, !follow)
        .await
        .is_err()
        || !follow
    {
        return;
    }
    loop {
        tokio::time::sleep(FOLLOW_POLL).await;
        let engine = Arc::clone(&engine);
        let current = offsets.clone();
        let read = tokio::task::spawn_blocking(move || {
            let mut lines = Vec::new();
            let mut next = HashMap::new();
            for (id, offset) in current {
                match read_from(&engine, &id, offset, None) {
                    Ok(Some((l, end))) => {
                        lines.extend(l);
                        next.insert(id, end);
                    }
                    // Gone (removed): stop following it.
                    Ok(None) => {}
                    // Unreadable for now: try again next time.
                    Err(_) => {
                        next.insert(id, offset);
                    }
                }
            }
            lines.sort_by_key(|l| l.time_nanos);
            (lines, next)
        })
        .await;
        let Ok((lines, next)) = read else { return };
        offsets = next;
        let done = offsets.is_empty();
        if (!lines.is_empty() || done)
            && send_chunks(&session, &req.id, lines, String::new(), done)
                .await
                .is_err()
        {
            return;
        }
        if done {
            return;
        }
        if session.is_closed() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(n: i64) -> LogLine {
        LogLine {
            container_id: "c".into(),
            stderr: false,
            text: format!("{n}\n"),
            time_nanos: n,
        }
    }

    #[tokio::test]
    async fn long_answers_are_chunked_and_only_the_last_is_done() {
        let (tx, mut rx) = mpsc::channel(16);
        let lines: Vec<LogLine> = (0..2_500).map(line).collect();
        send_chunks(&tx, "r", lines, "oops".into(), true)
            .await
            .expect("sent");
        let mut sizes = Vec::new();
        let mut flags = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            let Some(Up::Logs(c)) = msg.kind else {
                panic!("not a log chunk")
            };
            sizes.push(c.lines.len());
            flags.push((c.done, c.error.clone()));
        }
        assert_eq!(sizes, [1_000, 1_000, 500]);
        assert_eq!(
            flags,
            [
                (false, String::new()),
                (false, String::new()),
                (true, "oops".to_string())
            ]
        );
    }

    #[tokio::test]
    async fn an_empty_answer_still_sends_one_chunk() {
        let (tx, mut rx) = mpsc::channel(4);
        send_chunks(&tx, "r", Vec::new(), String::new(), false)
            .await
            .expect("sent");
        let Some(Up::Logs(c)) = rx.try_recv().expect("one chunk").kind else {
            panic!("not a log chunk")
        };
        assert!(c.lines.is_empty() && !c.done);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn tails_start_after_a_newline_counted_from_the_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log");
        std::fs::write(&path, b"a\nbb\nccc\n").expect("write");
        let mut f = std::fs::File::open(&path).expect("open");
        let len = 9;
        assert_eq!(tail_start(&mut f, len, 0).unwrap(), 9);
        assert_eq!(tail_start(&mut f, len, 1).unwrap(), 5);
        assert_eq!(tail_start(&mut f, len, 2).unwrap(), 2);
        assert_eq!(tail_start(&mut f, len, 3).unwrap(), 0);
        assert_eq!(tail_start(&mut f, len, 100).unwrap(), 0);
        // A long file: the start is found across read blocks.
        let line = "x".repeat(999) + "\n";
        std::fs::write(&path, line.repeat(300)).expect("write");
        let mut f = std::fs::File::open(&path).expect("open");
        assert_eq!(tail_start(&mut f, 300_000, 70).unwrap(), 230_000);
    }

    #[tokio::test]
    async fn chunks_are_cut_by_size_too() {
        let (tx, mut rx) = mpsc::channel(16);
        let big = |n: i64| LogLine {
            text: "y".repeat(600 << 10),
            ..line(n)
        };
        send_chunks(&tx, "r", vec![big(1), big(2), line(3)], String::new(), true)
            .await
            .expect("sent");
        let mut sizes = Vec::new();
        while let Ok(msg) = rx.try_recv() {
            let Some(Up::Logs(c)) = msg.kind else {
                panic!("not a log chunk")
            };
            sizes.push(c.lines.len());
        }
        assert_eq!(sizes, [1, 2]);
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let lines: Vec<LogLine> = (0..10).map(line).collect();
        let kept: Vec<i64> = last(lines.clone(), 3)
            .iter()
            .map(|l| l.time_nanos)
            .collect();
        assert_eq!(kept, [7, 8, 9]);
        assert_eq!(last(lines.clone(), -1).len(), 10);
        assert!(last(lines, 0).is_empty());
    }
}

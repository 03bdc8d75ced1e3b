//! One interactive stream to a container process, shared by `run`, `start -a`,
//! `attach` and `exec`: sends the first message, then stdin (through the
//! detach-key scanner when a TTY is attached), window sizes at start and on
//! SIGWINCH, and forwards signals without a TTY; writes the output chunks to
//! stdout/stderr until the last message brings the exit code. Raw mode is
//! entered here and restored before returning, whatever the outcome.

use crate::client::{Engine, RpcResult};
use crate::tty::{DetachScanner, RawGuard, Scan};
use agent_common::proto::{output_chunk, KillRequest, OutputChunk, TtySize};
use anyhow::{anyhow, Result};
use std::future::Future;
use std::io::Write;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// What the client sends after the first message.
pub enum Input {
    /// Bytes typed or piped on stdin.
    Stdin(Vec<u8>),
    /// Stdin reached end of file.
    Eof,
    /// The terminal's new size.
    Resize(TtySize),
}

/// How to run a session.
pub struct Options {
    /// The process has a TTY: raw mode, resizes, detach keys.
    pub tty: bool,
    /// Forward the client's stdin.
    pub stdin: bool,
    /// Detach sequence (ctrl-p ctrl-q by default).
    pub detach_keys: Vec<u8>,
    /// Without a TTY, forward SIGINT/SIGTERM/… to this container.
    pub sig_proxy: Option<(Engine, String)>,
}

/// How a session ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The process ended with this status.
    Exited(i64),
    /// The user typed the detach keys; the process goes on.
    Detached,
}

fn tty_size() -> Option<TtySize> {
    crate::tty::window_size().map(|(rows, cols)| TtySize {
        rows: rows.into(),
        cols: cols.into(),
    })
}

/// Runs a session. `first` is the opening message, `wrap` makes later ones,
/// `call` opens the RPC with the outgoing stream.
pub async fn run<I, F, Fut>(
    first: I,
    wrap: fn(Input) -> I,
    call: F,
    opts: Options,
) -> Result<Outcome>
where
    I: Send + 'static,
    F: FnOnce(ReceiverStream<I>) -> Fut,
    Fut: Future<
        Output = std::result::Result<tonic::Response<tonic::Streaming<OutputChunk>>, tonic::Status>,
    >,
{
    let (tx, rx) = mpsc::channel::<I>(64);
    tx.send(first)
        .await
        .map_err(|_| anyhow!("the session closed before it started"))?;
    if opts.tty {
        if let Some(size) = tty_size() {
            let _ = tx.send(wrap(Input::Resize(size))).await;
        }
    }
    // Raw mode only when we forward a terminal's keystrokes.
    let _raw = if opts.tty && opts.stdin {
        RawGuard::enter()?
    } else {
        None
    };
    let mut stream = call(ReceiverStream::new(rx)).await.rpc()?.into_inner();

    let (detach_tx, mut detach_rx) = mpsc::channel::<()>(1);
    let mut tasks = Vec::new();
    if opts.stdin {
        let tx = tx.clone();
        let mut scanner = opts
            .tty
            .then(|| DetachScanner::new(opts.detach_keys.clone()));
        tasks.push(tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => {
                        if let Some(s) = &scanner {
                            if !s.pending().is_empty() {
                                let _ = tx.send(wrap(Input::Stdin(s.pending().to_vec()))).await;
                            }
                        }
                        let _ = tx.send(wrap(Input::Eof)).await;
                        return;
                    }
                    Ok(n) => {
                        let scan = match scanner.as_mut() {
                            Some(s) => s.feed(&buf[..n]),
                            None => Scan::Forward(buf[..n].to_vec()),
                        };
                        match scan {
                            Scan::Forward(bytes) => {
                                if !bytes.is_empty()
                                    && tx.send(wrap(Input::Stdin(bytes))).await.is_err()
                                {
                                    return;
                                }
                            }
                            Scan::Detach(bytes) => {
                                if !bytes.is_empty() {
                                    let _ = tx.send(wrap(Input::Stdin(bytes))).await;
                                }
                                let _ = detach_tx.send(()).await;
                                return;
                            }
                        }
                    }
                }
            }
        }));
    }
    if opts.tty {
        let tx = tx.clone();
        tasks.push(tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut winch) = signal(SignalKind::window_change()) else {
                return;
            };
            while winch.recv().await.is_some() {
                if let Some(size) = tty_size() {
                    if tx.send(wrap(Input::Resize(size))).await.is_err() {
                        return;
                    }
                }
            }
        }));
    } else if let Some((engine, container)) = opts.sig_proxy {
        tasks.push(tokio::spawn(proxy_signals(engine, container)));
    }
    // Hold the outgoing stream open for the whole session: end of input is
    // said with an explicit message, never by closing the request stream.
    let _keep_open = tx;

    let result = pump(&mut stream, &mut detach_rx).await;
    for t in tasks {
        t.abort();
    }
    result
}

async fn pump(
    stream: &mut tonic::Streaming<OutputChunk>,
    detach: &mut mpsc::Receiver<()>,
) -> Result<Outcome> {
    let mut detach_open = true;
    loop {
        let msg = tokio::select! {
            m = stream.message() => m.rpc()?,
            d = detach.recv(), if detach_open => {
                match d {
                    Some(()) => return Ok(Outcome::Detached),
                    None => { detach_open = false; continue; }
                }
            }
        };
        let Some(chunk) = msg else {
            return Err(anyhow!(
                "the connection to the daemon ended before the process exited"
            ));
        };
        write_chunk(&chunk)?;
        if let Some(code) = chunk.exit_code {
            if !chunk.error.is_empty() {
                eprintln!("Error: {}", chunk.error);
            }
            return Ok(Outcome::Exited(code));
        }
        if !chunk.error.is_empty() {
            return Err(anyhow!("{}", chunk.error));
        }
    }
}

/// Writes one output chunk to stdout or stderr; a closed stdout is not an error.
pub fn write_chunk(chunk: &OutputChunk) -> Result<()> {
    if chunk.data.is_empty() {
        return Ok(());
    }
    let res = if chunk.stream == output_chunk::Stream::Stderr as i32 {
        let mut e = std::io::stderr().lock();
        e.write_all(&chunk.data).and_then(|_| e.flush())
    } else {
        let mut o = std::io::stdout().lock();
        o.write_all(&chunk.data).and_then(|_| o.flush())
    };
    match res {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow!("failed to write output: {e}"))
        }
        _ => Ok(()),
    }
}

/// Forwards the signals a user sends to the CLI to the container (Docker's
/// `--sig-proxy`), for sessions without a TTY.
async fn proxy_signals(mut engine: Engine, container: String) {
    use tokio::signal::unix::{signal, SignalKind};
    let kinds = [
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::hangup(), "SIGHUP"),
        (SignalKind::quit(), "SIGQUIT"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ];
    let (tx, mut rx) = mpsc::channel::<&'static str>(8);
    for (kind, name) in kinds {
        let Ok(mut sig) = signal(kind) else { continue };
        let tx = tx.clone();
        tokio::spawn(async move {
            while sig.recv().await.is_some() {
                if tx.send(name).await.is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    while let Some(name) = rx.recv().await {
        let _ = engine
            .kill_container(KillRequest {
                container: container.clone(),
                signal: name.to_string(),
            })
            .await;
    }
}

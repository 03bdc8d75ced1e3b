//! The connection to the local engine: parses `-H unix://PATH`, dials the
//! daemon's unix socket with tonic, and turns gRPC statuses into one-line
//! errors carrying only the daemon's message. It knows nothing of commands.

use agent_common::proto::engine_client::EngineClient;
use anyhow::{anyhow, Result};
use std::path::PathBuf;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

/// The daemon socket used when neither `-H` nor `FLOTILLA_HOST` is given.
pub const DEFAULT_HOST: &str = "unix:///run/flotilla/flotilla.sock";

/// The engine client type every command uses.
pub type Engine = EngineClient<Channel>;

/// Largest gRPC message accepted from the daemon (inspect of big images, long lists).
const MAX_MESSAGE: usize = 64 * 1024 * 1024;

/// The socket path in a `unix://PATH` host.
pub fn socket_path(host: &str) -> Result<PathBuf> {
    match host.strip_prefix("unix://") {
        Some(path) if !path.is_empty() => Ok(PathBuf::from(path)),
        _ => Err(anyhow!(
            "invalid host {host:?}: use unix:///path/to/flotilla.sock, or tcp://MANAGER:2377 with client certificates"
        )),
    }
}

/// Certificate files for `-H tcp://…` (mutual TLS with the cluster CA).
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// The cluster CA certificate.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// The client key.
    pub key: Option<PathBuf>,
}

/// Connects to the daemon at `host`.
pub async fn connect(host: &str, tls: &TlsFiles) -> Result<Engine> {
    let channel = connect_channel(host, tls).await?;
    Ok(EngineClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE)
        .max_encoding_message_size(MAX_MESSAGE))
}

/// The cluster control client type (served by managers on the same socket).
pub type Control = agent_common::control_proto::control_client::ControlClient<Channel>;

/// Connects to the control API of the daemon at `host`.
pub async fn connect_control(host: &str, tls: &TlsFiles) -> Result<Control> {
    let channel = connect_channel(host, tls).await?;
    Ok(
        agent_common::control_proto::control_client::ControlClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE),
    )
}

/// A channel to a manager's cluster port over mutual TLS.
fn connect_tcp(addr: &str, tls: &TlsFiles) -> Result<Channel> {
    use agent_common::pki::{NodeIdentity, NodeRole};
    use agent_common::tls::{self, grpc};
    let read = |what: &str, p: &Option<PathBuf>| -> Result<String> {
        let p = p
            .as_ref()
            .ok_or_else(|| anyhow!("-H tcp://… needs --{what}"))?;
        std::fs::read_to_string(p).map_err(|e| {
            anyhow!(
                "failed to read {} ({e}): get client certificates with `flotilla-manager client-cert` on a manager, and pass --tlscacert, --tlscert and --tlskey",
                p.display()
            )
        })
    };
    let (ca, cert, key) = (
        read("tlscacert", &tls.ca)?,
        read("tlscert", &tls.cert)?,
        read("tlskey", &tls.key)?,
    );
    let identity =
        NodeIdentity::from_pem(&key, &cert, &ca).map_err(|e| anyhow!("unusable TLS files: {e}"))?;
    let config = grpc::SharedClientConfig::new(tls::client_config(&identity)?);
    let addr = grpc::with_port(addr, agent_common::DEFAULT_CLUSTER_PORT);
    Ok(grpc::channel(
        &addr,
        config,
        tls::server_name(NodeRole::Manager),
    )?)
}

/// Dials the daemon at `host` and returns the gRPC channel.
pub async fn connect_channel(host: &str, tls: &TlsFiles) -> Result<Channel> {
    if let Some(addr) = host.strip_prefix("tcp://") {
        return connect_tcp(addr, tls);
    }
    let path = socket_path(host)?;
    let unreachable = || {
        anyhow!(
            "Cannot connect to the Flotilla daemon at {host}: is flotilla-worker running? (set -H or FLOTILLA_HOST)"
        )
    };
    // Dial once ourselves first so the error says why (missing socket, permissions).
    // The connection made here is then used for the gRPC channel (no second dial).
    let first = match UnixStream::connect(&path).await {
        Ok(stream) => stream,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(anyhow!(
                "permission denied while trying to connect to the Flotilla daemon socket at {host}: run as root"
            ))
        }
        Err(_) => return Err(unreachable()),
    };
    let first = std::sync::Arc::new(std::sync::Mutex::new(Some(first)));
    let connector_path = path.clone();
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = connector_path.clone();
            let ready = first.lock().ok().and_then(|mut f| f.take());
            async move {
                let stream = match ready {
                    Some(s) => s,
                    None => UnixStream::connect(path).await?,
                };
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|_| unreachable())?;
    Ok(channel)
}

/// A daemon error: the gRPC status message only.
pub fn status_error(status: tonic::Status) -> anyhow::Error {
    // A refused TLS connection (revoked or foreign certificate) says why,
    // rather than hyper's "operation was canceled" or "transport error".
    if let Some(why) = agent_common::tls::explain::explain(&status) {
        return anyhow::Error::new(RpcError(tonic::Status::new(status.code(), why)));
    }
    anyhow::Error::new(RpcError(status))
}

/// A gRPC status kept inside an `anyhow::Error`, so callers can look at its
/// code (`NotFound`) while its `Display` is the daemon's message alone.
#[derive(Debug)]
pub struct RpcError(pub tonic::Status);

/// What a TLS failure under a status means for the user, if it is one they
/// can act on (the manager's alerts about the client certificate, or the
/// server's certificate refused by this client).
fn tls_cause(status: &tonic::Status) -> Option<String> {
    agent_common::tls::explain::explain(status)
}

impl std::fmt::Display for RpcError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.code() == tonic::Code::Unavailable || self.0.code() == tonic::Code::Unknown {
            if let Some(cause) = tls_cause(&self.0) {
                return f.write_str(&cause);
            }
        }
        let msg = self.0.message();
        if msg.is_empty() {
            match self.0.code() {
                tonic::Code::Unavailable => {
                    f.write_str("the Flotilla daemon closed the connection")
                }
                code => write!(f, "the daemon answered {code:?} without a message"),
            }
        } else {
            f.write_str(msg)
        }
    }
}

impl std::error::Error for RpcError {}

/// Docker's exit code of a failed container start (125/126/127), which the
/// daemon sends in the `x-flotilla-exit-code` metadata entry.
pub fn start_failure_code(err: &anyhow::Error) -> Option<i32> {
    err.chain()
        .find_map(|e| e.downcast_ref::<RpcError>())
        .and_then(|e| {
            e.0.metadata()
                .get("x-flotilla-exit-code")?
                .to_str()
                .ok()?
                .parse()
                .ok()
        })
}

/// The gRPC code of an error made by [`status_error`], if it is one.
pub fn rpc_code(err: &anyhow::Error) -> Option<tonic::Code> {
    err.chain()
        .find_map(|e| e.downcast_ref::<RpcError>())
        .map(|e| e.0.code())
}

/// Extension to turn `Result<T, Status>` into `anyhow::Result<T>`.
pub trait RpcResult<T> {
    /// Maps the status to [`status_error`].
    fn rpc(self) -> Result<T>;
}

impl<T> RpcResult<T> for std::result::Result<T, tonic::Status> {
    fn rpc(self) -> Result<T> {
        self.map_err(status_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_must_be_unix_urls() {
        assert_eq!(
            socket_path("unix:///run/x.sock").unwrap(),
            PathBuf::from("/run/x.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:2375").is_err());
        assert!(socket_path("unix://").is_err());
        assert!(socket_path("/run/x.sock").is_err());
    }

    #[test]
    fn status_errors_show_only_the_message() {
        let e = status_error(tonic::Status::not_found("No such container: web"));
        assert_eq!(format!("{e:#}"), "No such container: web");
        assert_eq!(rpc_code(&e), Some(tonic::Code::NotFound));
        let other = anyhow!("plain");
        assert_eq!(rpc_code(&other), None);
    }

    #[tokio::test]
    async fn missing_socket_says_how_to_fix_it() {
        let dir = tempfile::tempdir().unwrap();
        let host = format!("unix://{}/none.sock", dir.path().display());
        let e = connect(&host, &TlsFiles::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("Cannot connect to the Flotilla daemon at unix://"),
            "{e}"
        );
        assert!(e.contains("is flotilla-worker running?"), "{e}");
    }
}

//! gRPC over the cluster's mutual TLS: tonic channels that dial with a rustls
//! [`ClientConfig`] from this module's parent, and a listener stream that hands
//! tonic only connections whose TLS handshake succeeded.
//!
//! Why not tonic's own TLS: its client config cannot take a custom certificate
//! verifier (a joining node trusts a manager only through the CA pinned by its
//! join token), and its server config cannot consult the live revocation list.
//! Here rustls is configured by [`super`] and tonic only sees the streams.
//! Handlers read the caller's certificate with [`caller`] (tonic's
//! `tls-connect-info` puts the peer chain in each request's extensions).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};

use crate::pki::{NodeCertificate, NodeRole};

/// How long a peer may take to finish the TLS handshake before the
/// connection is dropped (a silent or slow client cannot hold a slot).
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long dialing a peer may take before the call fails as unavailable.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Normalizes `HOST:PORT` (or a bare host, given `default_port`) into the
/// `host:port` form used to dial.
pub fn with_port(addr: &str, default_port: u16) -> String {
    let a = addr.trim();
    if a.parse::<SocketAddr>().is_ok() {
        return a.to_string();
    }
    // An IPv6 address without brackets and port, or a host without port.
    if a.parse::<std::net::Ipv6Addr>().is_ok() {
        return format!("[{a}]:{default_port}");
    }
    match a.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => a.to_string(),
        _ => format!("{a}:{default_port}"),
    }
}

/// A client TLS configuration that can be replaced while channels built on it
/// live (a renewed certificate is presented from the next dial on).
#[derive(Clone)]
pub struct SharedClientConfig(Arc<RwLock<Arc<ClientConfig>>>);

impl SharedClientConfig {
    /// Starts with `config`.
    pub fn new(config: ClientConfig) -> Self {
        SharedClientConfig(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// Uses `config` from the next dial on.
    pub fn replace(&self, config: ClientConfig) {
        if let Ok(mut c) = self.0.write() {
            *c = Arc::new(config);
        }
    }

    fn current(&self) -> io::Result<Arc<ClientConfig>> {
        self.0
            .read()
            .map(|c| Arc::clone(&c))
            .map_err(|_| io::Error::other("TLS client configuration lock poisoned"))
    }
}

/// A lazily connected channel to `addr` (`host:port`) over TLS with `config`
/// (read at every dial), checking the server's certificate for `server_name`.
/// Reconnects on its own after a failure; the first call dials.
pub fn channel(
    addr: &str,
    config: SharedClientConfig,
    server_name: ServerName<'static>,
) -> Result<Channel, tonic::transport::Error> {
    let target = addr.to_string();
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_| {
            let target = target.clone();
            let config = config.clone();
            let server_name = server_name.clone();
            async move {
                let connector = TlsConnector::from(config.current()?);
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                let _ = tcp.set_nodelay(true);
                let tls = connector.connect(server_name, tcp).await?;
                // A refused client certificate fails the dial with its cause.
                let tls =
                    super::explain::confirm_accepted(tls, super::explain::FIRST_BYTES_WAIT).await?;
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        })),
    )
}

/// Dials `addr` once, eagerly, and returns the channel together with the
/// certificate chain the server presented (what a joining node needs to keep
/// the CA its token pinned). The channel redials on its own if it breaks.
pub async fn connect_capturing_peer(
    addr: &str,
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
) -> io::Result<(Channel, Vec<CertificateDer<'static>>)> {
    let target = addr.to_string();
    let connector = TlsConnector::from(config);
    let seen: Arc<Mutex<Vec<CertificateDer<'static>>>> = Arc::default();
    let seen_in = Arc::clone(&seen);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true);
    let channel = endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let target = target.clone();
            let connector = connector.clone();
            let server_name = server_name.clone();
            let seen = Arc::clone(&seen_in);
            async move {
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&target))
                    .await
                    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
                let tls = connector.connect(server_name, tcp).await?;
                if let Some(chain) = tls.get_ref().1.peer_certificates() {
                    if let Ok(mut s) = seen.lock() {
                        *s = chain.iter().map(|c| c.clone().into_owned()).collect();
                    }
                }
                Ok::<_, io::Error>(TokioIo::new(tls))
            }
        }))
        .await
        .map_err(|e| {
            // A TLS refusal says why (e.g. the token pins another
            // cluster's CA), as an InvalidData error.
            if let Some(why) = super::explain::explain(&e) {
                return io::Error::new(io::ErrorKind::InvalidData, why);
            }
            // tonic wraps the connector's error: show the innermost cause
            // rather than "transport error".
            let mut msg = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(s) = src {
                msg = s.to_string();
                src = s.source();
            }
            io::Error::other(msg)
        })?;
    let chain = seen.lock().map(|s| s.clone()).unwrap_or_default();
    Ok((channel, chain))
}

/// The server side's TLS configuration, replaceable while serving (a renewed
/// certificate takes effect for new connections).
#[derive(Clone)]
pub struct ServerTls(Arc<RwLock<TlsAcceptor>>);

impl ServerTls {
    /// Serve with `config`.
    pub fn new(config: ServerConfig) -> Self {
        ServerTls(Arc::new(RwLock::new(TlsAcceptor::from(Arc::new(config)))))
    }

    /// Use `config` for connections accepted from now on.
    pub fn replace(&self, config: ServerConfig) {
        if let Ok(mut a) = self.0.write() {
            *a = TlsAcceptor::from(Arc::new(config));
        }
    }

    fn acceptor(&self) -> Option<TlsAcceptor> {
        self.0.read().ok().map(|a| a.clone())
    }
}

/// A stream of accepted, handshaken TLS connections from `listener`, for
/// `tonic::transport::Server::serve_with_incoming`. Each handshake runs in its
/// own task (bounded by [`HANDSHAKE_TIMEOUT`]); failed handshakes are logged
/// at debug level and dropped, so one bad client never stops the server.
pub fn incoming(
    listener: TcpListener,
    tls: ServerTls,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!("accepting a cluster connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            if tx.is_closed() {
                return;
            }
            let Some(acceptor) = tls.acceptor() else {
                continue;
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, "TLS handshake failed: {e}"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}

/// The node certificate the caller of `request` presented, if any (none on
/// a local unix socket, or from a joining node).
pub fn caller<T>(request: &tonic::Request<T>) -> Option<NodeCertificate> {
    let chain = request.peer_certs()?;
    let leaf = chain.first()?;
    NodeCertificate::parse(leaf).ok()
}

/// What a request may do, from how it arrived: over the local socket (root
/// on this machine), or over TLS with a certificate of some role, or over TLS
/// without one.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The local unix socket: trusted like root on this node.
    Local,
    /// A cluster node or client with a verified certificate.
    Node(NodeCertificate),
    /// A TLS connection without a certificate (only `Join` is allowed).
    Anonymous,
}

impl Caller {
    /// Classifies `request`: TLS connect info present means it came over the
    /// cluster port.
    pub fn of<T>(request: &tonic::Request<T>) -> Caller {
        let over_tls = request
            .extensions()
            .get::<tonic::transport::server::TlsConnectInfo<tonic::transport::server::TcpConnectInfo>>()
            .is_some();
        match (over_tls, caller(request)) {
            (false, _) => Caller::Local,
            (true, Some(cert)) => Caller::Node(cert),
            (true, None) => Caller::Anonymous,
        }
    }

    /// Refuses a certificate that expired or was revoked since the
    /// connection was made: a TLS handshake checks a certificate once, but a
    /// connection may live for days, so every call checks again. (Nodes dial
    /// a fresh connection when they renew their certificate.)
    #[allow(clippy::result_large_err)]
    pub fn check_current(
        &self,
        revocations: &crate::pki::Revocations,
    ) -> Result<(), tonic::Status> {
        if let Caller::Node(cert) = self {
            if cert.is_expired(std::time::SystemTime::now()) {
                return Err(tonic::Status::unauthenticated(format!(
                    "the certificate of node {} has expired; the node must join the cluster again",
                    cert.node_id()
                )));
            }
        }
        self.check_revoked(revocations)
    }

    /// Refuses a certificate revoked since the connection was made (a
    /// removed node).
    #[allow(clippy::result_large_err)]
    pub fn check_revoked(
        &self,
        revocations: &crate::pki::Revocations,
    ) -> Result<(), tonic::Status> {
        if let Caller::Node(cert) = self {
            if revocations.is_revoked(cert) {
                return Err(tonic::Status::permission_denied(format!(
                    "node {} was removed from the cluster; its certificate is revoked",
                    cert.node_id()
                )));
            }
        }
        Ok(())
    }

    /// Allows local callers and certificates of `role`; refuses the rest
    /// with a message that says what is missing.
    #[allow(clippy::result_large_err)]
    pub fn require(&self, role: NodeRole) -> Result<(), tonic::Status> {
        match self {
            Caller::Local => Ok(()),
            Caller::Node(cert) if cert.role() == role => Ok(()),
            Caller::Node(cert) => Err(tonic::Status::permission_denied(format!(
                "node {} has a {} certificate; this call needs a {} certificate",
                cert.node_id(),
                cert.role().as_str(),
                role.as_str()
            ))),
            Caller::Anonymous => Err(tonic::Status::unauthenticated(format!(
                "this call needs a {} certificate of this cluster",
                role.as_str()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_default_port() {
        assert_eq!(with_port("10.0.0.1", 2377), "10.0.0.1:2377");
        assert_eq!(with_port("10.0.0.1:4000", 2377), "10.0.0.1:4000");
        assert_eq!(with_port("::1", 2377), "[::1]:2377");
        assert_eq!(with_port("[::1]:9", 2377), "[::1]:9");
        assert_eq!(with_port("node-a", 2377), "node-a:2377");
        assert_eq!(with_port("node-a:x", 2377), "node-a:x:2377");
    }
}

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

/// How many connections may be open at once without having shown a client
/// certificate (still in the TLS handshake, or anonymous: joining nodes).
/// Beyond it, the oldest such connection is closed to make room, so a flood
/// of idle connections cannot keep a node with a certificate (whose handshake
/// takes milliseconds) out.
pub const MAX_ANONYMOUS_CONNECTIONS: usize = 64;

/// How long a connection without a client certificate may stay open after its
/// handshake: long enough for a `Join`, too short to hoard.
pub const ANONYMOUS_LIFETIME: Duration = Duration::from_secs(30);

/// An accepted connection.
pub type ServerStream = TlsStream<TcpStream>;

/// The accepted, handshaken connections of a cluster port, split by whether
/// the peer presented a (verified) client certificate.
pub struct Incoming {
    /// Connections of nodes and clients with a certificate of the cluster.
    pub authenticated: ReceiverStream<io::Result<ServerStream>>,
    /// Connections without a client certificate (joining nodes): counted
    /// against [`MAX_ANONYMOUS_CONNECTIONS`] and closed after
    /// [`ANONYMOUS_LIFETIME`]. Serve only `Join` on them.
    pub anonymous: ReceiverStream<io::Result<Anonymous>>,
}

/// Accepts connections from `listener` and handshakes them with `tls`, each in
/// its own task (bounded by [`HANDSHAKE_TIMEOUT`]); failed handshakes are
/// logged at debug level and dropped, so one bad client never stops the
/// server. Connections that have not shown a certificate (in the handshake,
/// or anonymous after it) are capped at `max_anonymous`: the oldest is closed
/// when a new one would exceed the cap.
pub fn incoming(listener: TcpListener, tls: ServerTls, max_anonymous: usize) -> Incoming {
    let (auth_tx, auth_rx) = tokio::sync::mpsc::channel(64);
    let (anon_tx, anon_rx) = tokio::sync::mpsc::channel(64);
    let slots = Slots::new(max_anonymous.max(1));
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
            if auth_tx.is_closed() && anon_tx.is_closed() {
                return;
            }
            let Some(acceptor) = tls.acceptor() else {
                continue;
            };
            let mut slot = slots.take();
            let (auth_tx, anon_tx) = (auth_tx.clone(), anon_tx.clone());
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp));
                let stream = tokio::select! {
                    r = handshake => match r {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => return tracing::debug!(%peer, "TLS handshake failed: {e}"),
                        Err(_) => return tracing::debug!(%peer, "TLS handshake timed out"),
                    },
                    () = slot.evicted() => {
                        return tracing::debug!(%peer, "closed a connection in its TLS handshake to make room for newer ones");
                    }
                };
                if stream.get_ref().1.peer_certificates().is_some() {
                    drop(slot);
                    let _ = auth_tx.send(Ok(stream)).await;
                } else {
                    let _ = anon_tx
                        .send(Ok(Anonymous {
                            inner: stream,
                            slot,
                            deadline: Box::pin(tokio::time::sleep(ANONYMOUS_LIFETIME)),
                        }))
                        .await;
                }
            });
        }
    });
    Incoming {
        authenticated: ReceiverStream::new(auth_rx),
        anonymous: ReceiverStream::new(anon_rx),
    }
}

/// The connections without a certificate, oldest first; dropping a sender
/// tells its connection to close.
struct Slots {
    max: usize,
    inner: Mutex<SlotsInner>,
}

#[derive(Default)]
struct SlotsInner {
    next: u64,
    open: std::collections::BTreeMap<u64, tokio::sync::oneshot::Sender<()>>,
}

impl Slots {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(Slots {
            max,
            inner: Mutex::default(),
        })
    }

    /// A slot for a new connection, closing the oldest if the cap is reached.
    fn take(self: &Arc<Self>) -> Slot {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let id = inner.next;
        inner.next += 1;
        inner.open.insert(id, tx);
        while inner.open.len() > self.max {
            // Dropping the sender wakes the oldest connection, which closes.
            inner.open.pop_first();
        }
        Slot {
            id,
            slots: Arc::clone(self),
            evicted: Some(rx),
        }
    }
}

/// One connection's place among those without a certificate; freed on drop.
struct Slot {
    id: u64,
    slots: Arc<Slots>,
    evicted: Option<tokio::sync::oneshot::Receiver<()>>,
}

impl Slot {
    /// Resolves once the connection was chosen to close.
    async fn evicted(&mut self) {
        std::future::poll_fn(|cx| self.poll_evicted(cx)).await
    }

    fn poll_evicted(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        use std::future::Future;
        match self.evicted.as_mut() {
            None => std::task::Poll::Ready(()),
            Some(rx) => match std::pin::Pin::new(rx).poll(cx) {
                std::task::Poll::Ready(_) => {
                    self.evicted = None;
                    std::task::Poll::Ready(())
                }
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.slots.inner.lock() {
            inner.open.remove(&self.id);
        }
    }
}

/// A connection without a client certificate: reads and writes fail once it
/// has lived [`ANONYMOUS_LIFETIME`] or was closed to make room for newer
/// ones, and the server then drops it.
pub struct Anonymous {
    inner: ServerStream,
    slot: Slot,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
}

impl Anonymous {
    fn check(&mut self, cx: &mut std::task::Context<'_>) -> io::Result<()> {
        use std::future::Future;
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "a connection without a client certificate outlived its time",
            ));
        }
        if self.slot.poll_evicted(cx).is_ready() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "closed to make room for newer connections without a certificate",
            ));
        }
        Ok(())
    }
}

impl tokio::io::AsyncRead for Anonymous {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Anonymous {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Err(e) = this.check(cx) {
            return std::task::Poll::Ready(Err(e));
        }
        std::pin::Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl tonic::transport::server::Connected for Anonymous {
    type ConnectInfo = <ServerStream as tonic::transport::server::Connected>::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
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
                return Err(tonic::Status::permission_denied(
                    if cert.role() == NodeRole::Client {
                        format!(
                            "client certificate {} was revoked: ask a cluster administrator for a new one",
                            cert.serial()
                        )
                    } else {
                        format!(
                            "node {} was removed from the cluster; its certificate is revoked",
                            cert.node_id()
                        )
                    },
                ));
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
    use crate::pki::{NodeCertSpec, NodeId, NodeIdentity, Revocations, RootCa};
    use tokio::io::AsyncReadExt;
    use tokio_stream::StreamExt;

    fn issue(ca: &RootCa, role: NodeRole) -> NodeIdentity {
        let spec = NodeCertSpec::new(NodeId::generate().unwrap(), role).address("127.0.0.1");
        NodeIdentity::issue(ca, &spec).unwrap()
    }

    #[tokio::test]
    async fn idle_connections_beyond_the_cap_are_closed_and_certified_clients_get_through() {
        const CAP: usize = 4;
        let ca = RootCa::generate().unwrap();
        let manager = issue(&ca, NodeRole::Manager);
        let client = issue(&ca, NodeRole::Client);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let tls = ServerTls::new(
            crate::tls::join_server_config(&manager, &Revocations::default()).unwrap(),
        );
        let mut inc = incoming(listener, tls, CAP);
        // Idle connections that never start a handshake: all but the newest CAP are closed.
        let mut idle = Vec::new();
        for _ in 0..(CAP + 6) {
            idle.push(TcpStream::connect(addr).await.unwrap());
        }
        let mut closed = 0;
        for conn in idle.iter_mut().take(6) {
            let mut b = [0u8; 1];
            let r = tokio::time::timeout(Duration::from_secs(5), conn.read(&mut b)).await;
            if matches!(r, Ok(Ok(0)) | Ok(Err(_))) {
                closed += 1;
            }
        }
        assert_eq!(
            closed, 6,
            "the oldest connections beyond the cap were not closed"
        );
        // A client with a certificate still gets through (evicting one more idle connection).
        let config = Arc::new(crate::tls::client_config(&client).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _tls = TlsConnector::from(config)
            .connect(crate::tls::server_name(NodeRole::Manager), tcp)
            .await
            .unwrap();
        let accepted = tokio::time::timeout(Duration::from_secs(5), inc.authenticated.next())
            .await
            .expect("the certified connection was handed to the server")
            .unwrap()
            .unwrap();
        assert!(accepted.get_ref().1.peer_certificates().is_some());
        // A joining node (no certificate) lands on the anonymous side.
        let config = Arc::new(crate::tls::bootstrap_client_config(ca.digest()).unwrap());
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _tls = TlsConnector::from(config)
            .connect(crate::tls::server_name(NodeRole::Manager), tcp)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(5), inc.anonymous.next())
            .await
            .expect("the anonymous connection was handed to the join server")
            .unwrap()
            .unwrap();
    }

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

//! Why a TLS connection failed, in words a user can act on, found by walking
//! the error's causes (never by matching message text).
//!
//! Two things hide the cause. rustls's own `Display` of a custom verifier
//! error is a `Debug` dump (`Other(OtherError(CaMismatch {…}))`), so
//! [`explain`] unwraps it to the verifier's error and its message. And with
//! TLS 1.3 a server refuses a client certificate only after the client
//! thinks the handshake is done: the refusal (an alert such as
//! `certificate_revoked`) arrives on the first read, inside the HTTP/2
//! connection, where hyper turns it into "operation was canceled". The
//! dialers therefore wait for the server's first bytes with
//! [`confirm_accepted`] before handing the stream to hyper, so the alert
//! fails the dial itself and stays in the error's causes.

use std::error::Error;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use rustls::{AlertDescription, CertificateError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The rustls error among `err`'s causes, if any. (`io::Error` hides the
/// error it wraps from `source()`, so wrapped errors are looked into too.)
pub fn rustls_cause<'a>(err: &'a (dyn Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next: Option<&'a (dyn Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(r) = e.downcast_ref::<rustls::Error>() {
            return Some(r);
        }
        if let Some(inner) = e.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            if let Some(r) = inner.downcast_ref::<rustls::Error>() {
                return Some(r);
            }
            if let Some(r) = rustls_cause(inner) {
                return Some(r);
            }
        }
        next = e.source();
    }
    None
}

/// Whether the peer refused this side's certificate as revoked (a removed
/// node, or a revoked client certificate).
pub fn is_revoked(err: &(dyn Error + 'static)) -> bool {
    matches!(
        rustls_cause(err),
        Some(rustls::Error::AlertReceived(
            AlertDescription::CertificateRevoked
        ))
    )
}

/// One line saying why a connection failed, when a TLS refusal is among
/// `err`'s causes; `None` otherwise (the caller's own message stands).
pub fn explain(err: &(dyn Error + 'static)) -> Option<String> {
    Some(match rustls_cause(err)? {
        // Our verifiers' own errors carry their explanation.
        rustls::Error::InvalidCertificate(CertificateError::Other(other)) => other.0.to_string(),
        rustls::Error::AlertReceived(AlertDescription::CertificateRevoked) => {
            "the manager refused this certificate: it was revoked (its node was removed from the cluster, or the client certificate was revoked); join again with a token, or ask a cluster administrator for a new client certificate (`flotilla cluster client-cert create`)".into()
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateExpired) => {
            "the manager refused this certificate: it has expired; join again with a token, or ask a cluster administrator for a new client certificate (`flotilla cluster client-cert create`)".into()
        }
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::DecryptError,
        ) => {
            "the manager does not trust this certificate: it was not issued by this cluster's CA (certificates of another cluster?)".into()
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the manager requires a certificate: pass --tlscacert, --tlscert and --tlskey (from `flotilla-manager client-cert` on a manager)".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
            "the server's certificate was not issued by this cluster's CA: is this address a manager of another cluster?".into()
        }
        rustls::Error::InvalidCertificate(CertificateError::NotValidForName) => {
            "the server's certificate is not a manager's: is this address a worker rather than a manager?".into()
        }
        other => format!("the TLS connection failed: {other}"),
    })
}

/// How long a dialer waits for the server's first bytes after the
/// handshake before handing the stream on anyway.
pub const FIRST_BYTES_WAIT: Duration = Duration::from_secs(3);

/// Reads the server's first bytes (an HTTP/2 server's SETTINGS frame) so a
/// refusal of this side's certificate fails here, with its cause; what was
/// read is replayed to the stream's reader. A server that says nothing
/// within `wait` is not an error: the stream is handed on as it is.
pub async fn confirm_accepted<S>(mut stream: S, wait: Duration) -> io::Result<Prefixed<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; 16 * 1024];
    let prefix = match tokio::time::timeout(wait, stream.read(&mut buf)).await {
        Ok(Ok(n)) => {
            buf.truncate(n);
            buf
        }
        Ok(Err(e)) => return Err(e),
        Err(_) => Vec::new(),
    };
    Ok(Prefixed {
        prefix,
        pos: 0,
        inner: stream,
    })
}

/// A stream whose first bytes were already read: they are returned first.
pub struct Prefixed<S> {
    prefix: Vec<u8>,
    pos: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            if self.pos == self.prefix.len() {
                self.prefix = Vec::new();
                self.pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn first_bytes_are_replayed_then_the_rest_follows() {
        let (mut server, client) = tokio::io::duplex(64);
        server.write_all(b"hello ").await.unwrap();
        let mut p = confirm_accepted(client, Duration::from_secs(5))
            .await
            .unwrap();
        server.write_all(b"world").await.unwrap();
        drop(server);
        let mut all = String::new();
        p.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }

    #[tokio::test]
    async fn a_silent_server_is_handed_on() {
        let (_server, client) = tokio::io::duplex(64);
        let p = confirm_accepted(client, Duration::from_millis(50))
            .await
            .unwrap();
        assert!(p.prefix.is_empty());
    }

    #[test]
    fn revocation_is_found_through_io_errors() {
        let alert = rustls::Error::AlertReceived(AlertDescription::CertificateRevoked);
        let io = io::Error::new(io::ErrorKind::InvalidData, alert);
        let outer = io::Error::other(io);
        assert!(is_revoked(&outer));
        assert!(explain(&outer).unwrap().contains("revoked"));
        assert!(explain(&io::Error::other("plain")).is_none());
    }
}

//! rustls configurations for the cluster's mutual TLS, built on [`crate::pki`].
//!
//! What this module owns: the four configurations every connection in the cluster uses, and
//! the verifiers behind them.
//! - [`server_config`]: a manager's cluster endpoint; every client must present a certificate
//!   signed by the cluster CA that is not revoked.
//! - [`join_server_config`]: the same, except that a client may present no certificate at all
//!   (a joining node has none yet). A client that does present one is verified as above.
//! - [`client_config`]: a node (or remote client) calling a manager: presents its own
//!   certificate, trusts only the cluster CA, and requires the manager role in the server
//!   certificate's subject ([`ManagerServerVerifier`]). Connect with
//!   [`server_name`]`(NodeRole::Manager)`.
//! - [`bootstrap_client_config`]: a joining node: no certificate, and the server is trusted only
//!   if it presents, in its chain, a CA certificate whose sha256 is the join token's pin and its
//!   leaf certificate verifies against that CA and has the manager role ([`PinnedCaVerifier`]).
//!
//! What it does not do: decide which RPC a caller may make. The server reads the caller's
//! certificate with [`peer_node`] and checks its role (e.g. with
//! [`NodeCertificate::require_role`]); on the join endpoint, a caller without a certificate may
//! only call `Join`.
//!
//! Every configuration is built with the ring provider passed explicitly
//! (`builder_with_provider`): nothing here depends on a process-wide default provider. Only
//! TLS 1.3 is offered (every peer is Flotilla), and ALPN `h2` is set for gRPC.

pub mod explain;
pub mod grpc;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};

use crate::pki::{
    CaCertificate, CaDigest, NodeCertificate, NodeIdentity, NodeRole, PkiError, Revocations,
    TokenError,
};

/// The ALPN protocol every configuration here offers: HTTP/2, for gRPC.
pub const ALPN_H2: &[u8] = b"h2";

/// Errors of building TLS configurations and of checking a pinned CA.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (e.g. the key does not fit the certificate).
    #[error("failed to build the TLS configuration")]
    Config(#[source] rustls::Error),
    /// The CA certificate could not be used as a trust anchor.
    #[error("failed to trust the cluster CA certificate")]
    TrustAnchor(#[source] rustls::Error),
    /// The certificate verifier could not be built.
    #[error("failed to build the certificate verifier")]
    Verifier(#[source] rustls::server::VerifierBuilderError),
    /// The server verifier could not be built.
    #[error("failed to build the server certificate verifier")]
    ServerVerifier(#[source] rustls::client::VerifierBuilderError),
    /// A certificate was unreadable.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// The server's chain does not hold the CA the join token pins.
    #[error(transparent)]
    Pin(#[from] TokenError),
    /// The server presented no CA certificate to check against the join token's pin.
    #[error(
        "the manager presented no CA certificate to check against the join token's pin {pinned}"
    )]
    PinnedCaMissing {
        /// The digest the token pins.
        pinned: CaDigest,
    },
}

/// Result of this module.
pub type Result<T, E = TlsError> = std::result::Result<T, E>;

/// The one crypto provider Flotilla uses: ring, passed explicitly to every builder.
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server name to connect to a node of `role` with: `flotilla-manager` or
/// `flotilla-worker`. Every node certificate carries its role's name as a DNS subjectAltName,
/// so this works whatever address the node is reached at, and a worker's certificate cannot
/// pass for a manager's.
pub fn server_name(role: NodeRole) -> ServerName<'static> {
    match role {
        NodeRole::Manager => ServerName::try_from("flotilla-manager"),
        NodeRole::Worker => ServerName::try_from("flotilla-worker"),
        NodeRole::Client => ServerName::try_from("flotilla-client"),
    }
    .expect("role server names are valid DNS names")
}

/// A manager's cluster endpoint: requires a client certificate signed by the identity's CA,
/// valid now and not revoked in `revocations` (consulted on every handshake).
pub fn server_config(identity: &NodeIdentity, revocations: &Revocations) -> Result<ServerConfig> {
    let verifier = NodeClientVerifier::new(identity.ca(), revocations.clone(), true)?;
    build_server(identity, Arc::new(verifier))
}

/// A manager's join endpoint: like [`server_config`], but a client may present no certificate
/// (a joining node has none yet). A client that presents one is fully verified. The server must
/// then allow only the join RPC to callers for which [`peer_node`] returns `None`.
pub fn join_server_config(
    identity: &NodeIdentity,
    revocations: &Revocations,
) -> Result<ServerConfig> {
    let verifier = NodeClientVerifier::new(identity.ca(), revocations.clone(), false)?;
    build_server(identity, Arc::new(verifier))
}

/// A node or remote client calling a manager: presents its certificate and trusts only the
/// cluster CA, and only servers whose certificate has the manager role in its subject
/// ([`ManagerServerVerifier`]). Connect with [`server_name`]`(NodeRole::Manager)`.
pub fn client_config(identity: &NodeIdentity) -> Result<ClientConfig> {
    let provider = crypto_provider();
    let verifier = ManagerServerVerifier::new(identity.ca(), Arc::clone(&provider))?;
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(chain(identity), identity.key().to_rustls())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// A joining node calling a manager's join endpoint: no client certificate; the server is
/// trusted only if its chain holds a CA certificate whose digest is `pin` (from the join token)
/// and its certificate verifies against that CA for the server name (use
/// [`server_name`]`(NodeRole::Manager)`). After the handshake, take the CA certificate to keep
/// with [`pinned_ca`].
pub fn bootstrap_client_config(pin: CaDigest) -> Result<ClientConfig> {
    let provider = crypto_provider();
    let verifier = PinnedCaVerifier::new(pin, Arc::clone(&provider));
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

/// The caller's node certificate, from the peer certificates of an accepted connection
/// (`ServerConnection::peer_certificates()`); `None` when the caller presented none (only
/// possible on [`join_server_config`]). The verifier has already checked it.
pub fn peer_node(
    peer_certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Option<NodeCertificate>> {
    match peer_certificates.and_then(|certs| certs.first()) {
        None => Ok(None),
        Some(leaf) => Ok(Some(NodeCertificate::parse(leaf)?)),
    }
}

/// After a bootstrap handshake, the CA certificate from the server's chain whose digest is
/// `pin`: what the joining node saves as its trust anchor.
pub fn pinned_ca(peer_certificates: &[CertificateDer<'_>], pin: CaDigest) -> Result<CaCertificate> {
    let found = peer_certificates
        .iter()
        .find(|c| CaDigest::of_der(c) == pin)
        .ok_or(TlsError::PinnedCaMissing { pinned: pin })?;
    Ok(CaCertificate::from_der(found.to_vec())?)
}

/// Checks `cert` against `ca` at `now` as a TLS server would check a client (chain, validity,
/// clientAuth usage). Backs [`CaCertificate::verify_node`].
pub(crate) fn verify_node_certificate(
    ca: &CaCertificate,
    cert: &NodeCertificate,
    now: SystemTime,
) -> Result<(), PkiError> {
    let untrusted = |e: rustls::Error| PkiError::Certificate {
        what: "node certificate",
        reason: format!("it does not verify against the cluster CA: {e}"),
    };
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(untrusted)?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), crypto_provider())
        .build()
        .map_err(|e| PkiError::Certificate {
            what: "CA certificate",
            reason: e.to_string(),
        })?;
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    verifier
        .verify_client_cert(cert.der(), &[], UnixTime::since_unix_epoch(since_epoch))
        .map(|_| ())
        .map_err(untrusted)
}

fn root_store(ca: &CaCertificate) -> Result<Arc<RootCertStore>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).map_err(TlsError::TrustAnchor)?;
    Ok(Arc::new(roots))
}

/// The chain a node presents: its certificate, then the CA's (so that a joining node can pin it).
fn chain(identity: &NodeIdentity) -> Vec<CertificateDer<'static>> {
    vec![
        identity.certificate().der().clone(),
        identity.ca().der().clone(),
    ]
}

fn build_server(
    identity: &NodeIdentity,
    verifier: Arc<dyn ClientCertVerifier>,
) -> Result<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain(identity), identity.key().to_rustls())
        .map_err(TlsError::Config)?;
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}

fn other_error(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

// === impl NodeClientVerifier ===

/// The servers' client-certificate verifier: webpki's chain and validity checks against the
/// cluster CA, then the certificate must be a Flotilla node certificate (node ID and role in its
/// subject) whose node and serial are not revoked.
#[derive(Debug)]
pub struct NodeClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revocations: Revocations,
}

impl NodeClientVerifier {
    /// A verifier trusting `ca`, refusing what `revocations` lists; when `require_cert` is
    /// false, clients without a certificate are let through (the join endpoint).
    pub fn new(ca: &CaCertificate, revocations: Revocations, require_cert: bool) -> Result<Self> {
        let builder =
            WebPkiClientVerifier::builder_with_provider(root_store(ca)?, crypto_provider());
        let builder = if require_cert {
            builder
        } else {
            builder.allow_unauthenticated()
        };
        let inner = builder.build().map_err(TlsError::Verifier)?;
        Ok(Self { inner, revocations })
    }
}

impl ClientCertVerifier for NodeClientVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        let cert = NodeCertificate::parse(end_entity).map_err(other_error)?;
        // A revoked client certificate (a remote CLI) gets through the handshake so that its
        // calls can be refused with a message saying it was revoked (a TLS alert reaches the
        // CLI as a bare "transport error"); every call checks revocation
        // (`grpc::Caller::check_revoked`), so it can do nothing. Nodes are refused here.
        if cert.role() != NodeRole::Client && self.revocations.is_revoked(&cert) {
            return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server certificate that verified (chain, validity, name) must also name the manager role in
/// its subject: a DNS name alone is not enough, since a node's advertise addresses become DNS
/// names in its certificate.
fn require_manager(end_entity: &CertificateDer<'_>) -> Result<ServerCertVerified, rustls::Error> {
    let cert = NodeCertificate::parse(end_entity).map_err(other_error)?;
    cert.require_role(NodeRole::Manager).map_err(other_error)?;
    Ok(ServerCertVerified::assertion())
}

// === impl ManagerServerVerifier ===

/// The server verifier of every client of a manager (nodes' sessions, the Raft transport, the
/// remote CLI): webpki's checks against the cluster CA (signature, validity, server name), then
/// the certificate must be a Flotilla node certificate whose subject has the manager role
/// (`OU=flotilla-manager`). A worker's certificate is refused even if it carried the name
/// `flotilla-manager`.
#[derive(Debug)]
pub struct ManagerServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
}

impl ManagerServerVerifier {
    /// A verifier trusting `ca` only, with `provider`'s algorithms.
    pub fn new(ca: &CaCertificate, provider: Arc<CryptoProvider>) -> Result<Self> {
        let inner = WebPkiServerVerifier::builder_with_provider(root_store(ca)?, provider)
            .build()
            .map_err(TlsError::ServerVerifier)?;
        Ok(Self { inner })
    }
}

impl ServerCertVerifier for ManagerServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The role first, for the clearer error (a refusal decides nothing on unverified
        // content), then the chain, validity and name.
        require_manager(end_entity)?;
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

// === impl PinnedCaVerifier ===

/// The joining node's server verifier: the server's chain must contain a CA certificate whose
/// sha256 is the join token's pin, and the server's certificate must verify against that CA
/// (signature, validity, server name) exactly as [`client_config`] would verify it.
#[derive(Debug)]
pub struct PinnedCaVerifier {
    pin: CaDigest,
    provider: Arc<CryptoProvider>,
}

impl PinnedCaVerifier {
    /// A verifier pinning `pin`, verifying signatures with `provider`.
    pub fn new(pin: CaDigest, provider: Arc<CryptoProvider>) -> Self {
        Self { pin, provider }
    }
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(ca_der) = intermediates
            .iter()
            .find(|c| CaDigest::of_der(c) == self.pin)
        else {
            // Say which CA the server has, if it sent one: that is the useful part of the error.
            return Err(match intermediates.last() {
                Some(other) => other_error(TokenError::CaMismatch {
                    pinned: self.pin,
                    actual: CaDigest::of_der(other),
                }),
                None => other_error(TlsError::PinnedCaMissing { pinned: self.pin }),
            });
        };
        require_manager(end_entity)?;
        let ca = CaCertificate::from_der(ca_der.to_vec()).map_err(other_error)?;
        let roots = root_store(&ca).map_err(other_error)?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(roots, Arc::clone(&self.provider))
                .build()
                .map_err(|e| {
                    rustls::Error::General(format!("failed to build the verifier: {e}"))
                })?;
        verifier.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests;

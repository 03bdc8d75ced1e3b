//! Real TLS handshakes over 127.0.0.1 (port 0) between the configurations of this module.

use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{CertificateError, ClientConfig, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::pki::{NodeCertSpec, NodeId, NodeKey, RootCa};

const DEADLINE: Duration = Duration::from_secs(10);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

struct Outcome {
    /// What the server saw: the caller's node certificate (if any), or why the handshake or the
    /// exchange failed.
    server: io::Result<Option<NodeCertificate>>,
    /// What the client saw: the server's chain, or why it failed.
    client: io::Result<Vec<CertificateDer<'static>>>,
}

/// One connection: handshake, then the client sends "ping" and the server answers "pong". In
/// TLS 1.3 the server checks the client's certificate after the client finished its side, so a
/// refused client learns it only when it reads: the exchange makes that visible.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: ServerName<'static>,
) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await?;
        let mut tls = acceptor.accept(tcp).await?;
        let peer = peer_node(tls.get_ref().1.peer_certificates()).map_err(io::Error::other)?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"ping");
        tls.write_all(b"pong").await?;
        tls.shutdown().await?;
        Ok(peer)
    });
    let connector = TlsConnector::from(Arc::new(client));
    let client = async move {
        let tcp = TcpStream::connect(addr).await?;
        let mut tls = connector.connect(name, tcp).await?;
        let chain = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.clone().into_owned())
            .collect();
        tls.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tls.read_exact(&mut buf).await?;
        assert_eq!(&buf, b"pong");
        Ok(chain)
    };
    let client = timeout(DEADLINE, client).await.expect("client timed out");
    let server = timeout(DEADLINE, server)
        .await
        .expect("server timed out")
        .expect("server task panicked");
    Outcome { server, client }
}

/// The rustls error inside an I/O error from tokio-rustls.
fn rustls_error(err: &io::Error) -> Option<&rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>()
}

fn issue(ca: &RootCa, role: NodeRole) -> NodeIdentity {
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), role).address("127.0.0.1");
    NodeIdentity::issue(ca, &spec).unwrap()
}

fn manager_name() -> ServerName<'static> {
    server_name(NodeRole::Manager)
}

#[tokio::test]
async fn mutual_tls_succeeds_and_the_server_learns_who_called() {
    let ca = RootCa::generate().unwrap();
    let manager = issue(&ca, NodeRole::Manager);
    let worker = issue(&ca, NodeRole::Worker);
    let out = handshake(
        server_config(&manager, &Revocations::default()).unwrap(),
        client_config(&worker).unwrap(),
        manager_name(),
    )
    .await;
    let caller = out
        .server
        .expect("server side")
        .expect("a client certificate");
    assert_eq!(caller.node_id(), worker.node_id());
    assert_eq!(caller.role(), NodeRole::Worker);
    // What a control API would do with it.
    assert!(caller.require_role(NodeRole::Manager).is_err());
    let chain = out.client.expect("client side");
    assert_eq!(
        chain.len(),
        2,
        "the server sends its certificate and the CA's"
    );
    assert_eq!(
        NodeCertificate::parse(&chain[0]).unwrap().node_id(),
        manager.node_id()
    );
}

#[tokio::test]
async fn the_authenticated_endpoint_refuses_a_client_without_a_certificate() {
    let ca = RootCa::generate().unwrap();
    let manager = issue(&ca, NodeRole::Manager);
    let out = handshake(
        server_config(&manager, &Revocations::default()).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
        manager_name(),
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::NoCertificatesPresented),
        "{err}"
    );
    assert!(out.client.is_err(), "the client must see the refusal");
}

#[tokio::test]
async fn the_join_endpoint_admits_a_client_without_a_certificate() {
    let ca = RootCa::generate().unwrap();
    let manager = issue(&ca, NodeRole::Manager);
    let out = handshake(
        join_server_config(&manager, &Revocations::default()).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
        manager_name(),
    )
    .await;
    assert!(
        out.server.expect("server side").is_none(),
        "no caller certificate"
    );
    let chain = out.client.expect("client side");
    // The joining node takes the CA certificate it pinned from the chain.
    let pinned = pinned_ca(&chain, ca.digest()).unwrap();
    assert_eq!(&pinned, ca.certificate());
    assert!(matches!(
        pinned_ca(&chain, RootCa::generate().unwrap().digest()),
        Err(TlsError::PinnedCaMissing { .. })
    ));
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused() {
    let ca = RootCa::generate().unwrap();
    let intruder_ca = RootCa::generate().unwrap();
    let manager = issue(&ca, NodeRole::Manager);
    // Same role, same shape, wrong CA. The intruder trusts the real CA, so only the server's
    // check can refuse it.
    let intruder = NodeIdentity::new(
        NodeKey::generate().unwrap(),
        NodeCertificate::parse(manager.certificate().der()).unwrap(),
        ca.certificate().clone(),
    );
    assert!(
        intruder.is_err(),
        "sanity: a stolen certificate without its key is refused"
    );
    let intruder = issue(&intruder_ca, NodeRole::Manager);
    let intruder = NodeIdentity::from_pem(
        &intruder.key().to_pem(),
        &intruder.certificate().to_pem(),
        &ca.cert_pem(),
    )
    .unwrap();
    for config in [
        server_config(&manager, &Revocations::default()).unwrap(),
        join_server_config(&manager, &Revocations::default()).unwrap(),
    ] {
        let out = handshake(config, client_config(&intruder).unwrap(), manager_name()).await;
        let err = out.server.expect_err("server must refuse");
        assert_eq!(
            rustls_error(&err),
            Some(&rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer
            )),
            "{err}"
        );
        assert!(out.client.is_err());
    }

    // And a client of the real cluster refuses a server of the other CA.
    let worker = issue(&ca, NodeRole::Worker);
    let rogue_server = issue(&intruder_ca, NodeRole::Manager);
    let out = handshake(
        server_config(&rogue_server, &Revocations::default()).unwrap(),
        client_config(&worker).unwrap(),
        manager_name(),
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer
        )),
        "{err}"
    );
}

#[tokio::test]
async fn a_revoked_node_is_refused_from_the_next_handshake_on() {
    let ca = RootCa::generate().unwrap();
    let manager = issue(&ca, NodeRole::Manager);
    let worker = issue(&ca, NodeRole::Worker);
    let revocations = Revocations::default();
    let config = Arc::new(server_config(&manager, &revocations).unwrap());

    let out = handshake(
        (*config).clone(),
        client_config(&worker).unwrap(),
        manager_name(),
    )
    .await;
    assert!(out.server.is_ok(), "accepted before `node rm`");

    // `node rm`: the same, already-built server config now refuses it.
    revocations.revoke_node(worker.node_id().clone());
    let out = handshake(
        (*config).clone(),
        client_config(&worker).unwrap(),
        manager_name(),
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::Revoked
        )),
        "{err}"
    );
    assert!(out.client.is_err());

    // Also on the join endpoint (a removed node cannot renew), and by serial.
    let other = issue(&ca, NodeRole::Worker);
    revocations.revoke_serial(other.certificate().serial().clone());
    let out = handshake(
        join_server_config(&manager, &revocations).unwrap(),
        client_config(&other).unwrap(),
        manager_name(),
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert_eq!(
        rustls_error(&err),
        Some(&rustls::Error::InvalidCertificate(
            CertificateError::Revoked
        )),
        "{err}"
    );
}

#[tokio::test]
async fn an_expired_client_certificate_is_refused() {
    let ca = RootCa::generate().unwrap();
    let manager = issue(&ca, NodeRole::Manager);
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), NodeRole::Worker)
        .issued_at(SystemTime::now() - 100 * DAY)
        .validity(90 * DAY);
    let expired = NodeIdentity::issue(&ca, &spec).unwrap();
    let out = handshake(
        server_config(&manager, &Revocations::default()).unwrap(),
        client_config(&expired).unwrap(),
        manager_name(),
    )
    .await;
    let err = out.server.expect_err("server must refuse");
    assert!(
        matches!(
            rustls_error(&err),
            Some(rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. }
            ))
        ),
        "{err}"
    );
}

#[tokio::test]
async fn a_bootstrap_client_refuses_a_manager_whose_ca_is_not_pinned() {
    let ca = RootCa::generate().unwrap();
    let impostor_ca = RootCa::generate().unwrap();
    let impostor = issue(&impostor_ca, NodeRole::Manager);
    // The joining node pins the real CA; the server it reached belongs to another.
    let out = handshake(
        join_server_config(&impostor, &Revocations::default()).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
        manager_name(),
    )
    .await;
    let err = out.client.expect_err("client must refuse");
    let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
        rustls_error(&err)
    else {
        panic!("unexpected error: {err}");
    };
    let cause = other.0.downcast_ref::<TokenError>().expect("a TokenError");
    assert!(
        matches!(cause, TokenError::CaMismatch { pinned, actual }
            if *pinned == ca.digest() && *actual == impostor_ca.digest()),
        "{cause}"
    );
    assert!(out.server.is_err());
}

#[tokio::test]
async fn a_worker_certificate_cannot_pass_for_a_manager() {
    // A worker serving with its (valid, same-CA) certificate is refused by clients that connect
    // to "flotilla-manager", both members and joining nodes.
    let ca = RootCa::generate().unwrap();
    let worker_as_server = issue(&ca, NodeRole::Worker);
    let member = issue(&ca, NodeRole::Worker);
    for client in [
        client_config(&member).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
    ] {
        let out = handshake(
            join_server_config(&worker_as_server, &Revocations::default()).unwrap(),
            client,
            manager_name(),
        )
        .await;
        let err = out.client.expect_err("client must refuse");
        let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            rustls_error(&err)
        else {
            panic!("unexpected error: {err}");
        };
        assert!(
            matches!(
                other.0.downcast_ref::<PkiError>(),
                Some(PkiError::WrongRole { .. })
            ),
            "{err}"
        );
    }
}

#[tokio::test]
async fn a_worker_certificate_named_flotilla_manager_is_refused_for_its_role() {
    // The certificate an attacker wanted from `--advertise-addr flotilla-manager` (the CA no
    // longer signs it; made here without the address check): the name matches, the role does
    // not, and every client of a manager refuses it.
    let ca = RootCa::generate().unwrap();
    let key = NodeKey::generate().unwrap();
    let spec = NodeCertSpec::new(NodeId::generate().unwrap(), NodeRole::Worker)
        .address("flotilla-manager");
    let cert = ca.sign_node_unchecked(&key.csr().unwrap(), &spec).unwrap();
    let impostor = NodeIdentity::new(key, cert, ca.certificate().clone()).unwrap();
    let member = issue(&ca, NodeRole::Worker);
    for client in [
        client_config(&member).unwrap(),
        bootstrap_client_config(ca.digest()).unwrap(),
    ] {
        let out = handshake(
            join_server_config(&impostor, &Revocations::default()).unwrap(),
            client,
            manager_name(),
        )
        .await;
        let err = out.client.expect_err("client must refuse");
        let Some(rustls::Error::InvalidCertificate(CertificateError::Other(other))) =
            rustls_error(&err)
        else {
            panic!("unexpected error: {err}");
        };
        let cause = other.0.downcast_ref::<PkiError>().expect("a PkiError");
        assert!(
            matches!(
                cause,
                PkiError::WrongRole {
                    actual: NodeRole::Worker,
                    required: NodeRole::Manager,
                    ..
                }
            ),
            "{cause}"
        );
    }
}

#[test]
fn server_names_are_the_role_names() {
    assert_eq!(
        server_name(NodeRole::Manager),
        ServerName::try_from("flotilla-manager").unwrap()
    );
    assert_eq!(
        server_name(NodeRole::Worker),
        ServerName::try_from("flotilla-worker").unwrap()
    );
    assert!(peer_node(None).unwrap().is_none());
    assert!(peer_node(Some(&[CertificateDer::from(vec![1, 2, 3])])).is_err());
}

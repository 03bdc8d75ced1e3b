//! The manager's two servers.
//!
//! - The cluster port (default 2377): mutual TLS with certificates from the
//!   cluster CA (a caller without one may only `Join`). It carries the Raft
//!   RPCs (managers only), the dispatcher (every node) and the control API
//!   (managers and the local socket only: workers are refused).
//! - The local socket (`-H unix://…`, mode 0600): the control API for the
//!   `flotilla` CLI on this machine.

use std::sync::Arc;

use agent_common::control_proto::control_server::ControlServer;
use agent_common::dispatcher_proto::dispatcher_server::DispatcherServer;
use agent_common::pki::NodeRole;
use agent_common::tls::{self, grpc};
use anyhow::Context;

use super::Manager;
use crate::api::control::ControlApi;
use crate::api::dispatcher::DispatcherApi;

/// Serves the cluster port until `shutdown` resolves.
pub async fn serve_cluster_port(
    m: Arc<Manager>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let identity = m.identity.borrow().clone();
    let server_tls = grpc::ServerTls::new(tls::join_server_config(&identity, &m.revocations)?);
    // A renewed certificate is served to new connections.
    {
        let mut ids = m.identity.clone();
        let server_tls = server_tls.clone();
        let revocations = m.revocations.clone();
        tokio::spawn(async move {
            while ids.changed().await.is_ok() {
                let id = ids.borrow().clone();
                match tls::join_server_config(&id, &revocations) {
                    Ok(c) => server_tls.replace(c),
                    Err(e) => tracing::warn!("failed to serve the renewed certificate: {e}"),
                }
            }
        });
    }
    let revocations = m.revocations.clone();
    let raft = tonic::service::interceptor::InterceptedService::new(
        m.raft.service(),
        move |req: tonic::Request<()>| {
            let caller = grpc::Caller::of(&req);
            // Raft peers keep their connections across certificate renewals
            // (the handshake checked validity); revocation is checked per call.
            caller.check_revoked(&revocations)?;
            caller.require(NodeRole::Manager)?;
            Ok(req)
        },
    );
    let incoming = grpc::incoming(listener, server_tls, grpc::MAX_ANONYMOUS_CONNECTIONS);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    // Callers without a certificate (joining nodes) get a server of their
    // own that only knows `Join`, with small limits: a few streams, small
    // headers and messages (the connections themselves are capped and
    // short-lived, see grpc::incoming).
    let join_only = tonic::transport::Server::builder()
        .max_concurrent_streams(Some(ANONYMOUS_STREAMS))
        .http2_max_header_list_size(Some(ANONYMOUS_HEADER_LIST))
        .http2_max_pending_accept_reset_streams(Some(ANONYMOUS_STREAMS as usize))
        .timeout(grpc::ANONYMOUS_LIFETIME)
        .add_service(
            DispatcherServer::new(DispatcherApi::new(Arc::clone(&m)))
                .max_decoding_message_size(MAX_JOIN_MESSAGE),
        )
        .serve_with_incoming_shutdown(incoming.anonymous, stopped(stop_rx.clone()));
    let join_only = tokio::spawn(join_only);
    let main = tonic::transport::Server::builder()
        // A peer that stopped answering (a cut-off node) is noticed and its
        // streams end, instead of waiting on it for ever.
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .max_concurrent_streams(Some(MAX_STREAMS))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST))
        .add_service(raft)
        .add_service(
            DispatcherServer::new(DispatcherApi::new(Arc::clone(&m)))
                .max_decoding_message_size(agent_common::MAX_MESSAGE),
        )
        .add_service(ControlServer::new(ControlApi::new(Arc::clone(&m))))
        .serve_with_incoming_shutdown(incoming.authenticated, async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
        .context("the cluster port server failed");
    join_only.abort();
    main
}

/// Largest `Join` message (a token, a CSR, a hostname and an address fit in a
/// few KiB).
pub const MAX_JOIN_MESSAGE: usize = 64 * 1024;

/// Concurrent streams per connection without a certificate.
const ANONYMOUS_STREAMS: u32 = 4;

/// Header list size per request without a certificate.
const ANONYMOUS_HEADER_LIST: u32 = 16 * 1024;

/// Concurrent streams per connection of a node or client (sessions, Raft,
/// log streams, CLI calls).
const MAX_STREAMS: u32 = 1024;

/// Header list size per request of a node or client.
const MAX_HEADER_LIST: u32 = 64 * 1024;

/// Serves the local socket (control API and the local engine) until
/// `shutdown` resolves.
pub async fn serve_local(
    m: Arc<Manager>,
    engine: Arc<worker::engine::Engine>,
    listener: tokio::net::UnixListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(ControlServer::new(ControlApi::new(m)))
        .add_service(worker::engine::api::EngineService::server(engine))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            shutdown,
        )
        .await
        .context("the local API server failed")
}

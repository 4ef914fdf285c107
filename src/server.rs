//! The proxy listener.
//!
//! Accepts TCP connections, serves HTTP/1.1 and h2 on each (hyper-util's auto
//! builder, with upgrades so WebSocket handshakes pass through), and hands
//! every request to the current [`Proxy`] (loaded from an `ArcSwap`, so a
//! reload never disturbs in-flight requests). Before the proxy sees a request
//! the listener attaches the [`ConnInfo`] and the [`RequestId`].
//!
//! With `proxy.tls`, each connection first completes a TLS handshake (in its
//! own task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow or silent client
//! never holds up accepting). A failed handshake (no or untrusted client
//! certificate, a client that does not trust our certificate, plain HTTP to
//! a TLS port) is logged at debug and the connection dropped. Requests on a
//! TLS connection carry `ConnInfo { tls: true, .. }` (so `X-Forwarded-Proto`
//! is `https`) and, when the caller sent a verified client certificate, its
//! [`PeerIdentity`] for client auth.
//!
//! Shutdown: stop accepting, ask every connection to finish its in-flight
//! requests (HTTP/1.1 keep-alive off, h2 GOAWAY), and wait for them up to the
//! drain timeout.

use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use proxy_core::context::{ConnInfo, PeerIdentity, RequestId};
use proxy_core::stack::{CallNowOrWait, Proxy, ProxyService, call_now_or_wait};
use proxy_core::{ProxyBody, boxed};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

/// Longest a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `listener` until `shutdown` turns true, then drains for at most
/// `drain`. Returns 0 on a clean drain, 1 if the drain timed out (the
/// connections still open are then closed). With `tls`, every connection
/// speaks TLS (see the module docs).
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<ArcSwap<Proxy>>,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
    max_header_bytes: usize,
    tls: Option<TlsAcceptor>,
) -> usize {
    let graceful = GracefulShutdown::new();
    // Fired when the drain timeout expires: connections still open are
    // dropped, so a stopped proxy really is stopped (also when embedded).
    let (force_close, force_rx) = watch::channel(false);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // Oversized request heads: HTTP/1.1 answers 431, h2 resets the stream.
    builder.http1().max_buf_size(max_header_bytes);
    builder
        .http2()
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX));
    let builder = Arc::new(builder);
    let local_addr = listener.local_addr().ok();
    let stop = crate::app::stopped(shutdown);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, remote_addr) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and similar: back off
                        // briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let Some(local_addr) = local_addr else { continue };
                let conn = ConnInfo { remote_addr, local_addr, tls: tls.is_some() };
                // A watcher, not `graceful.watch`, because a TLS connection
                // is only ready to watch after its handshake, in the task.
                // A handshake in progress holds the drain open (at most
                // HANDSHAKE_TIMEOUT); its connection is then told to finish
                // at once.
                let watcher = graceful.watcher();
                let force = crate::app::stopped(force_rx.clone());
                let (proxy, builder, tls) = (proxy.clone(), builder.clone(), tls.clone());
                tokio::spawn(async move {
                    let served = async move {
                        match tls {
                            None => {
                                let svc = ConnService { proxy, conn, peer: None };
                                serve_conn(&builder, watcher, stream, svc).await
                            }
                            Some(acceptor) => {
                                let Some(stream) = handshake(&acceptor, stream, remote_addr).await
                                else {
                                    return Ok(());
                                };
                                let peer = crate::tls::peer_identity(stream.get_ref().1);
                                let svc = ConnService { proxy, conn, peer };
                                serve_conn(&builder, watcher, stream, svc).await
                            }
                        }
                    };
                    tokio::select! {
                        r = served => if let Err(e) = r {
                            tracing::debug!(error = %e, %remote_addr, "connection ended with an error");
                        },
                        _ = force => tracing::debug!(%remote_addr, "connection closed at the drain timeout"),
                    }
                });
            }
            _ = &mut stop => break,
        }
    }
    drop(listener);
    match tokio::time::timeout(drain, graceful.shutdown()).await {
        Ok(()) => 0,
        Err(_) => {
            tracing::warn!(
                ?drain,
                "drain timeout reached; closing remaining connections"
            );
            let _ = force_close.send(true);
            1
        }
    }
}

/// Serves HTTP on one (plain or TLS) connection under graceful shutdown.
async fn serve_conn<I>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    io: I,
    svc: ConnService,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let conn = builder
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    watcher.watch(conn).await
}

/// The TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`]. None: it failed
/// (logged at debug; the caller drops the connection).
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    remote_addr: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, %remote_addr, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(%remote_addr, timeout = ?HANDSHAKE_TIMEOUT, "TLS handshake timed out");
            None
        }
    }
}

/// The per-connection hyper service.
#[derive(Clone)]
struct ConnService {
    proxy: Arc<ArcSwap<Proxy>>,
    conn: ConnInfo,
    /// The caller's verified client certificate (TLS with a client CA).
    peer: Option<PeerIdentity>,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = CallNowOrWait<ProxyService, Request<ProxyBody>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let mut req = req.map(boxed);
        let id = RequestId::from_headers(req.headers());
        let ext = req.extensions_mut();
        ext.insert(self.conn);
        if let Some(peer) = &self.peer {
            ext.insert(peer.clone());
        }
        ext.insert(id);
        call_now_or_wait(self.proxy.load().service.clone(), req)
    }
}

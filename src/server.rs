//! The proxy listener.
//!
//! Accepts TCP connections, serves HTTP/1.1 (with upgrades, so WebSocket
//! handshakes pass through) and h2 on each, and hands every request to the
//! current [`Proxy`] (loaded from an `ArcSwap`, so a reload never disturbs
//! in-flight requests). Before the proxy sees a request the listener
//! attaches the [`ConnInfo`] and the
//! [`RequestId`](proxy_core::context::RequestId) (as one
//! [`RequestContext`](proxy_core::context::RequestContext); see `conn`).
//!
//! A plain connection's protocol is told from a peek at its first bytes
//! (the h2 prior-knowledge preface or not), not by hyper-util's auto
//! builder, which reads them and hands them back to hyper as a separate
//! first read: hyper's HTTP/1.1 read buffer then doubles to 16 KiB on every
//! connection (2 MiB more at 256 connections). A TLS connection on which
//! ALPN agreed on HTTP/1.1 starts on hyper's HTTP/1.1 builder too; the auto
//! builder is left for TLS h2 (see `serve_tls`), TLS callers that offered
//! no ALPN and plain connections whose first bytes do not decide yet.
//!
//! With `proxy.tls`, each connection first completes a TLS handshake (in its
//! own task, bounded by [`HANDSHAKE_TIMEOUT`], so a slow or silent client
//! never holds up accepting). A failed handshake (no or untrusted client
//! certificate, a client that does not trust our certificate, plain HTTP to
//! a TLS port) is logged at debug and the connection dropped. Requests on a
//! TLS connection carry `ConnInfo { tls: true, .. }` (so `X-Forwarded-Proto`
//! is `https`) and, when the caller sent a verified client certificate, its
//! [`PeerIdentity`](proxy_core::context::PeerIdentity) for client auth.
//!
//! Slow and quiet callers: hyper's header read timeout
//! (`proxy.client_header_timeout`) bounds an HTTP/1.1 caller's request
//! head and its idle keep-alive wait; an h2 connection (and whatever the
//! auto builder serves) is closed gracefully once its caller has sent
//! nothing for `proxy.client_idle_timeout` (see [`idle`]). A caller that
//! stops taking its response is cut once the writes to it made no progress
//! for `proxy.send_timeout` (see [`send`]).
//!
//! Shutdown: stop accepting, ask every connection to finish its in-flight
//! requests (HTTP/1.1 keep-alive off, h2 GOAWAY), and wait for them up to the
//! drain timeout. Connections with nothing in flight, and callers that have
//! not sent a byte yet, are closed at once. Open WebSocket tunnels are
//! waited for too, and cut at the drain timeout with what else is left
//! ([`proxy_core::tunnel`]).

use crate::build::Proxy;
use arc_swap::ArcSwap;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use proxy_core::context::ConnInfo;
use proxy_core::timer::HyperTimer;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

mod conn;
mod graceful;
mod idle;
mod linger;
mod send;
mod stall;
mod stop;

use conn::ConnService;
use graceful::serve_graceful;
use linger::Lingering;

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
    limits: ConnLimits,
    tls: Option<TlsAcceptor>,
    cut: Arc<std::sync::atomic::AtomicBool>,
) -> usize {
    let graceful = GracefulShutdown::new();
    // Fired when the drain timeout expires: connections still open are
    // dropped, so a stopped proxy really is stopped (also when embedded).
    let (force_close, force_rx) = watch::channel(false);
    let builders = Arc::new(Builders::new(limits));
    let local_addr = listener.local_addr().ok();
    let stop = crate::app::stopped(shutdown.clone());
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
                let stream = Lingering::new(stream, builders.delayed_close, builders.send_timeout);
                let Some(local_addr) = local_addr else { continue };
                let conn = ConnInfo { remote_addr, local_addr, tls: tls.is_some() };
                // A watcher, not `graceful.watch`, because a TLS connection
                // is only ready to watch after its handshake, in the task.
                // A handshake in progress holds the drain open (at most
                // HANDSHAKE_TIMEOUT); its connection is then told to finish
                // at once.
                let watcher = graceful.watcher();
                // The task wakes for every request; this is polled only
                // when its own waker fired.
                let force = stop::stopped(force_rx.clone());
                let svc = ConnService::new(proxy.clone(), conn, force_rx.clone())
                    .with_stalls(stall::Stalls::new(builders.send_timeout, remote_addr));
                let (builders, tls) = (builders.clone(), tls.clone());
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    let served = async move {
                        match tls {
                            None => {
                                serve_plain(&builders, watcher, shutdown, stream, svc).await
                            }
                            // Boxed: a TLS connection's state (the handshake,
                            // rustls' connection) is several times a plain
                            // one's, and inline every plain connection's
                            // task would be that size too (massif: 6.4 KB
                            // per connection task instead of 2.8 KB).
                            Some(acceptor) => {
                                Box::pin(serve_tls(&builders, watcher, shutdown, stream, acceptor, svc))
                                    .await
                            }
                        }
                    };
                    tokio::select! {
                        // The connection first (no random branch order per
                        // poll); the forced close is checked after it.
                        biased;
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
    // The drain waits for the connections, then for the WebSocket tunnels
    // (each holds a `force_rx` clone, as each connection's service does:
    // see `proxy_core::tunnel`); the drain timeout closes both.
    drop(force_rx);
    let drained = async {
        graceful.shutdown().await;
        force_close.closed().await;
    };
    match tokio::time::timeout(drain, drained).await {
        Ok(()) => 0,
        Err(_) => {
            tracing::warn!(
                ?drain,
                "drain timeout reached; closing remaining connections"
            );
            // Before the close: the audit records of the requests it drops
            // say the proxy cut them.
            cut.store(true, std::sync::atomic::Ordering::SeqCst);
            let _ = force_close.send(true);
            1
        }
    }
}

/// The connection builders, configured alike.
struct Builders {
    /// Reads the first bytes to tell HTTP/1.1 from h2 (TLS h2, a TLS
    /// caller that offered no ALPN, a plain connection whose first bytes
    /// do not tell yet).
    auto: auto::Builder<TokioExecutor>,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// Also bounds how long a plain connection's first bytes may take.
    header_timeout: Duration,
    /// `proxy.client_idle_timeout`, for connections served as h2 or on
    /// the auto builder (see [`idle`]).
    idle_timeout: Duration,
    /// `proxy.delayed_close_timeout` (see [`linger`]).
    delayed_close: Duration,
    /// `proxy.send_timeout` (see [`send`]).
    send_timeout: Duration,
}

/// What bounds a caller's connection.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Largest request head (`proxy.max_header_bytes`).
    pub max_header_bytes: usize,
    /// Longest wait for a request head, the first or the next on a
    /// keep-alive connection (`proxy.client_header_timeout`).
    pub header_timeout: Duration,
    /// Longest an h2 connection may go without a byte from its caller
    /// (`proxy.client_idle_timeout`; zero: no limit).
    pub idle_timeout: Duration,
    /// Longest a connection the proxy closes first is drained before its
    /// socket closes (`proxy.delayed_close_timeout`; zero: not at all).
    pub delayed_close: Duration,
    /// Longest a write to a caller may make no progress before its
    /// connection is closed (`proxy.send_timeout`; zero: no limit).
    pub send_timeout: Duration,
}

impl Builders {
    fn new(limits: ConnLimits) -> Self {
        let ConnLimits {
            max_header_bytes,
            header_timeout,
            idle_timeout,
            delayed_close,
            send_timeout,
        } = limits;
        let mut auto = auto::Builder::new(TokioExecutor::new());
        let mut h1 = http1::Builder::new();
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        // Oversized request heads: HTTP/1.1 answers 431, h2 resets the stream.
        let max_list = u32::try_from(max_header_bytes).unwrap_or(u32::MAX);
        auto.http1().max_buf_size(max_header_bytes);
        auto.http2().max_header_list_size(max_list);
        h1.max_buf_size(max_header_bytes);
        h2.max_header_list_size(max_list);
        // Slow and silent callers: hyper's header read timeout needs a timer
        // to run at all. It also bounds an idle keep-alive connection's wait
        // for its next request. (`serve_h1` gives each HTTP/1.1 connection
        // a timer of its own, which reuses one tokio timer for every head.)
        let read_timeout = Some(header_timeout).filter(|t| !t.is_zero());
        auto.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(read_timeout);
        h1.timer(TokioTimer::new())
            .header_read_timeout(read_timeout);
        h2.timer(TokioTimer::new());
        auto.http2().timer(TokioTimer::new());
        Self {
            auto,
            h1,
            h2,
            header_timeout,
            idle_timeout,
            delayed_close,
            send_timeout,
        }
    }
}

/// What a plain connection's first bytes say it speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sniffed {
    H1,
    /// The h2 client preface (prior knowledge, "h2c").
    H2,
    /// A prefix of the preface, so far: the bytes still to come decide.
    Unsure,
    /// The caller closed the connection without sending anything.
    Closed,
}

const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Peeks at (does not consume) the first bytes of `stream`, so HTTP/1.1
/// and h2 connections start on hyper's own builders with nothing to hand
/// back (see the module docs).
async fn sniff(stream: &TcpStream) -> std::io::Result<Sniffed> {
    let mut buf = [0; H2_PREFACE.len()];
    let n = stream.peek(&mut buf).await?;
    let seen = buf.get(..n).unwrap_or_default();
    Ok(if n == 0 {
        Sniffed::Closed
    } else if !H2_PREFACE.starts_with(seen) {
        Sniffed::H1
    } else if n == H2_PREFACE.len() {
        Sniffed::H2
    } else {
        Sniffed::Unsure
    })
}

/// Whether `stream`'s caller sends bytes that tell HTTP/1.1 from h2
/// within `timeout` (zero: however long it takes), for a listener whose
/// builder reads them itself: the admin port's.
pub(crate) async fn speaks_within(stream: &TcpStream, timeout: Duration) -> bool {
    matches!(
        first_bytes(stream, timeout).await,
        Some(Ok(Sniffed::H1 | Sniffed::H2))
    )
}

/// [`sniff_until_sure`] within `timeout` (zero: no limit); `None` when it
/// ran out.
async fn first_bytes(stream: &TcpStream, timeout: Duration) -> Option<std::io::Result<Sniffed>> {
    if timeout.is_zero() {
        Some(sniff_until_sure(stream).await)
    } else {
        tokio::time::timeout(timeout, sniff_until_sure(stream))
            .await
            .ok()
    }
}

/// [`sniff`] until the first bytes tell: a caller that has sent part of
/// the h2 preface is looked at again every 10 ms (rare: the preface comes
/// in one write), so it cannot hold the connection by stalling there.
async fn sniff_until_sure(stream: &TcpStream) -> std::io::Result<Sniffed> {
    loop {
        match sniff(stream).await? {
            Sniffed::Unsure => tokio::time::sleep(Duration::from_millis(10)).await,
            sure => return Ok(sure),
        }
    }
}

/// Serves one plain (cleartext) connection: HTTP/1.1 or h2 with prior
/// knowledge, told apart by its first bytes ([`sniff`]).
async fn serve_plain(
    builders: &Builders,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
    stream: Lingering,
    svc: ConnService,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let sniffed = tokio::select! {
        // Bytes already there are served (the h1 path then finishes the
        // request and closes), not dropped for a stop that came with them.
        biased;
        s = first_bytes(stream.get_ref()?, builders.header_timeout) => match s {
            Some(s) => s?,
            // Silent, or stalled inside the h2 preface: closed.
            None => return Ok(()),
        },
        // Stopping before the caller sent anything: nothing is in flight.
        () = crate::app::stopped(shutdown.clone()) => return Ok(()),
    };
    match sniffed {
        Sniffed::H1 => serve_h1(&builders.h1, watcher, shutdown, stream, svc).await,
        // Boxed, as the rarer kinds: the h1 connection's state stays the
        // only one inline in every connection's task.
        Sniffed::H2 => {
            let (io, heard) = idle::Heard::new(stream);
            let stalls = svc.stalls();
            let conn = builders.h2.serve_connection(TokioIo::new(io), svc);
            let idle = (heard, builders.idle_timeout);
            Box::pin(serve_graceful(conn, Some(watcher), shutdown, idle, stalls)).await
        }
        // Not from `sniff_until_sure`; served as the auto builder would.
        Sniffed::Unsure => Box::pin(serve_conn(builders, watcher, shutdown, stream, svc)).await,
        Sniffed::Closed => Ok(()),
    }
}

/// Serves HTTP/1.1 (with upgrades) on `stream` under graceful shutdown:
/// once `shutdown` turns true, hyper finishes the request in flight and
/// closes the connection (keep-alive off). `watcher` is held to the end,
/// so the drain waits for it. (hyper-util's `Watcher::watch` does the same
/// for the connection types it knows; hyper's upgradeable HTTP/1.1
/// connection is not one of them.)
async fn serve_h1<I>(
    builder: &http1::Builder,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
    stream: I,
    svc: ConnService,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper's header read timeout reuses one timer on this connection
    // (see `proxy_core::timer`).
    let mut builder = builder.clone();
    builder.timer(HyperTimer::default());
    let conn = builder
        .serve_connection(TokioIo::new(stream), svc)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: a request already in the socket when the
        // stop comes is read and answered before the connection closes.
        biased;
        r = conn.as_mut() => return r.map_err(Into::into),
        // The task wakes for every request; this is polled only when its
        // own waker fired.
        () = stop::stopped(shutdown) => conn.as_mut().graceful_shutdown(),
    }
    let r = conn.await;
    drop(watcher);
    r.map_err(Into::into)
}

/// Serves HTTP on one (plain or TLS) connection under graceful shutdown,
/// telling HTTP/1.1 from h2 by reading its first bytes; closed when its
/// caller stays quiet (see [`idle`]).
async fn serve_conn<I>(
    builders: &Builders,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
    io: I,
    svc: ConnService,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (io, heard) = idle::Heard::new(io);
    let stalls = svc.stalls();
    let conn = builders
        .auto
        .serve_connection_with_upgrades(TokioIo::new(io), svc)
        .into_owned();
    serve_graceful(
        conn,
        Some(watcher),
        shutdown,
        (heard, builders.idle_timeout),
        stalls,
    )
    .await
}

/// Serves one admin connection (HTTP/1.1 or h2, as `builder` tells them
/// apart) until `shutdown`, closing it like a proxy connection when its
/// caller stays quiet for `idle_timeout` (`proxy.client_idle_timeout`):
/// hyper bounds an idle HTTP/1.1 caller with the header timeout, but not
/// an idle h2 one. The admin port takes part in no drain.
pub(crate) async fn serve_admin<S>(
    builder: &auto::Builder<TokioExecutor>,
    stream: TcpStream,
    svc: S,
    shutdown: watch::Receiver<bool>,
    idle_timeout: Duration,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    S: hyper::service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<proxy_core::body::ProxyBody>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let (io, heard) = idle::Heard::new(stream);
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    serve_graceful(conn, None, shutdown, (heard, idle_timeout), None).await
}

/// Serves one TLS connection: the handshake, then HTTP/1.1 on hyper's own
/// builder if ALPN agreed on it, else (h2, or no ALPN) the auto builder;
/// nothing if the handshake fails.
async fn serve_tls(
    builders: &Builders,
    watcher: Watcher,
    shutdown: watch::Receiver<bool>,
    stream: Lingering,
    acceptor: TlsAcceptor,
    mut svc: ConnService,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    // Nothing can be in flight before the handshake ends: a stop drops a
    // caller still shaking hands (or silent), as `serve_plain` drops one
    // that has not sent a byte.
    let shaken = tokio::select! {
        biased;
        s = handshake(&acceptor, stream, svc.conn.remote_addr) => s,
        () = crate::app::stopped(shutdown.clone()) => return Ok(()),
    };
    let Some(stream) = shaken else {
        return Ok(());
    };
    let tls = stream.get_ref().1;
    svc.peer = crate::tls::peer_identity(tls);
    let h1 = tls.alpn_protocol() == Some(b"http/1.1");
    if h1 {
        serve_h1(&builders.h1, watcher, shutdown, stream, svc).await
    } else {
        // h2, or no ALPN: the auto builder, which reads the first bytes.
        // For h2 its read-ahead costs nothing (hyper's h2 side keeps no
        // HTTP/1.1 read buffer), and a caller that agreed on h2 but sends
        // no preface is then closed at once on stop: hyper's h2
        // connection would wait for the preface before its GOAWAY.
        serve_conn(builders, watcher, shutdown, stream, svc).await
    }
}

/// The TLS handshake, bounded by [`HANDSHAKE_TIMEOUT`]. None: it failed
/// (logged at debug; the caller drops the connection).
async fn handshake(
    acceptor: &TlsAcceptor,
    stream: Lingering,
    remote_addr: std::net::SocketAddr,
) -> Option<tokio_rustls::server::TlsStream<Lingering>> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(s)) => Some(s),
        Ok(Err(e)) => {
            crate::tls::failures::record(remote_addr, Some(&e));
            None
        }
        Err(_) => {
            crate::tls::failures::record(remote_addr, None);
            None
        }
    }
}

#[cfg(test)]
mod tests;

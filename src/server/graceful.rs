//! Serving a connection under graceful shutdown: the stop, the caller's
//! quiet (`proxy.client_idle_timeout`) and a response cut for
//! `proxy.send_timeout` (h2) each end it.

use super::idle;
use super::stall::{self, Stalls};
use super::stop;
use hyper_util::server::graceful::{GracefulConnection, Watcher};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::watch;

/// Serves `conn` to its end. It is shut down gracefully (requests in
/// flight finish; HTTP/1.1 keep-alive off, h2 GOAWAY) once `shutdown`
/// turns true or its caller was not heard from (`idle`: what its
/// [`idle::Heard`] stream read, and `proxy.client_idle_timeout`).
/// `watcher` (if any) is held to the end, so the drain waits for it.
///
/// An h2 graceful shutdown waits for the caller to answer the PING sent
/// with the first GOAWAY, with no limit of its own: a caller that sends
/// nothing at all (hung, gone, or a slowloris after its SETTINGS) would
/// hold the connection forever. So after an idle shutdown an h2 caller has
/// [`idle::grace`] (after a stop, [`stop::STOP_GRACE`]) to show any sign of
/// life; without one the connection is dropped. A live caller answers within a round trip, and its
/// requests in flight then finish as usual. (An HTTP/1.1 caller on the
/// auto builder, e.g. TLS without ALPN, has no PING to answer and may be
/// waiting for a long poll: its connection just closes after the response.)
///
/// A response `stalls` cut (an h2 caller that took none of it for
/// `proxy.send_timeout`, see [`stall`]) closes the connection too, as a
/// send timeout closes an HTTP/1.1 one: hyper does not poll the cut body
/// again while its stream has no window, so the stream would never be
/// reset, and its buffers stay with the connection. A GOAWAY first, and
/// the requests in flight get [`Stalls::grace`] to finish; then it is
/// dropped.
pub(super) async fn serve_graceful<C>(
    conn: C,
    watcher: Option<Watcher>,
    shutdown: watch::Receiver<bool>,
    (caller, idle_timeout): (Arc<idle::Caller>, Duration),
    stalls: Option<Arc<Stalls>>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    C: GracefulConnection,
    C::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(conn);
    // All three polled only when their own wakers fired (the task wakes
    // for every request and every frame).
    let mut stop = stop::stopped(shutdown);
    let mut idle = stop::OnWake::new(idle::quiet_for(caller.clone(), idle_timeout));
    let mut cut = stop::OnWake::new(stall::cut(stalls.clone()));
    let idled = tokio::select! {
        // The connection first: what is already in the socket is served.
        biased;
        r = conn.as_mut() => return r.map_err(Into::into),
        () = &mut stop => false,
        () = &mut idle => true,
        () = &mut cut => {
            conn.as_mut().graceful_shutdown();
            let grace = stalls.as_deref().map_or(Duration::ZERO, Stalls::grace);
            let r = tokio::select! {
                biased;
                r = conn.as_mut() => r.map_err(Into::into),
                () = tokio::time::sleep(grace) => {
                    tracing::debug!("a response was cut for send_timeout; connection dropped");
                    Ok(())
                }
            };
            drop(watcher);
            return r;
        }
    };
    conn.as_mut().graceful_shutdown();
    if idled {
        tracing::debug!(
            "no byte from the caller for proxy.client_idle_timeout; closing its connection gracefully"
        );
    }
    // Only h2 waits for an answer (to the GOAWAY's PING); HTTP/1.1 closes
    // once its response in flight is written, and a caller of a long poll
    // sends nothing meanwhile.
    // After a stop too, or a gone peer would hold the drain.
    if caller.h2.load(Ordering::Relaxed) {
        caller.heard.store(false, Ordering::Relaxed);
        let grace = if idled {
            idle::grace(idle_timeout)
        } else {
            stop::STOP_GRACE
        };
        let r = tokio::select! {
            biased;
            r = conn.as_mut() => Some(r),
            () = tokio::time::sleep(grace) => None,
        };
        match r {
            Some(r) => return r.map_err(Into::into),
            None if !caller.heard.load(Ordering::Relaxed) => {
                tracing::debug!("the quiet caller did not answer the GOAWAY; connection dropped");
                return Ok(());
            }
            None => {}
        }
    }
    let r = conn.await;
    drop(watcher);
    r.map_err(Into::into)
}

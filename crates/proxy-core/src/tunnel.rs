//! Upgraded connections (WebSocket): bridged byte for byte once both sides
//! have switched protocols, and accounted for like the request they were.
//!
//! A tunnel outlives its request: hyper hands the caller's connection over
//! at the 101, the connection's own task ends, and the bytes flow in a task
//! of their own. Two things still hold on to it, as in Envoy (an upgraded
//! stream stays an active request) and nginx (`worker_shutdown_timeout`):
//!
//! - **The drain.** The listener puts a [`TunnelScope`] in the context of
//!   a request that asks to upgrade. The tunnel holds it while it is open,
//!   and the listener's drain waits for every scope it handed out, as it
//!   waits for connections; at the drain timeout the scope closes and the
//!   tunnel is cut with the connections still open.
//! - **The concurrency limit.** The 101 response carries a [`TunnelHold`];
//!   the load-shedding layer puts the request's slot in it instead of in the
//!   (empty) response body, so the slot is given back when the tunnel
//!   closes, not at the 101.
//!
//! A tunnel with no byte either way for the route's `tunnel_idle_timeout`
//! (default 1 h) is closed, as nginx's `proxy_read_timeout` and Envoy's
//! stream idle timeout close upgraded connections: a peer that hung without
//! closing would otherwise hold its slot and two sockets for ever.

use http::response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use pin_project_lite::pin_project;
use std::any::Any;
use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;
use tokio::time::Instant;

/// The listener's hold on an upgrading request's tunnel; see the module
/// docs. A clone of the listener's "close now" channel: the listener's
/// drain waits until no clone is left, and turns it `true` at the drain
/// timeout.
#[derive(Clone, Debug)]
pub struct TunnelScope(watch::Receiver<bool>);

impl TunnelScope {
    /// A scope over the listener's `closing` channel.
    pub fn new(closing: watch::Receiver<bool>) -> Self {
        Self(closing)
    }

    /// Resolves when the listener closes what is left (or is gone).
    async fn closing(mut self) {
        // An error: the sender is gone, the listener with it.
        let _ = self.0.wait_for(|closing| *closing).await;
    }
}

/// What a tunnel keeps alive while it is open; see the module docs. On the
/// 101 response's extensions.
#[derive(Clone, Default)]
pub struct TunnelHold(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl TunnelHold {
    /// Keeps `value` until the tunnel closes (at once if it already has).
    pub fn keep(&self, value: impl Any + Send) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(value));
    }
}

impl fmt::Debug for TunnelHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.0.lock().map_or(0, |v| v.len());
        f.debug_struct("TunnelHold").field("held", &held).finish()
    }
}

/// Joins the caller's and the upstream's upgraded connections once both
/// sides have switched protocols, in a task of its own that holds `scope`
/// and what is put in the [`TunnelHold`] it adds to `upstream`'s
/// extensions.
pub(crate) fn bridge(
    client_side: OnUpgrade,
    upstream: &mut response::Parts,
    scope: Option<TunnelScope>,
    idle_timeout: Duration,
) {
    let Some(upstream_side) = upstream.extensions.remove::<OnUpgrade>() else {
        return;
    };
    let hold = TunnelHold::default();
    upstream.extensions.insert(hold.clone());
    tokio::spawn(async move {
        let tunnel = async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((c, u)) => match copy(TokioIo::new(c), TokioIo::new(u), idle_timeout).await {
                    Ok(Ended::Closed) => {}
                    Ok(Ended::Idle) => tracing::debug!(
                        ?idle_timeout,
                        "upgraded connection closed: idle for tunnel_idle_timeout"
                    ),
                    Err(e) => {
                        tracing::debug!(error = %e, "upgraded connection closed with an error")
                    }
                },
                Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
            }
        };
        match scope {
            Some(scope) => tokio::select! {
                biased;
                () = tunnel => {}
                () = scope.closing() => {
                    tracing::debug!("upgraded connection closed at the drain timeout");
                }
            },
            None => tunnel.await,
        }
        // Both sides are closed (dropped) by now; give back what the
        // request held.
        drop(hold);
    });
}

/// How a tunnel's copy ended.
#[derive(Debug, PartialEq, Eq)]
enum Ended {
    /// Both sides finished (or one failed: see the error).
    Closed,
    /// No byte either way for the idle timeout.
    Idle,
}

/// Copies both ways until both sides are done, or until no byte has moved
/// either way for `idle` (zero: no limit). The sides are dropped (closed)
/// on return.
async fn copy<A, B>(a: A, b: B, idle: Duration) -> io::Result<Ended>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    if idle.is_zero() {
        let (mut a, mut b) = (a, b);
        return tokio::io::copy_bidirectional(&mut a, &mut b)
            .await
            .map(|_| Ended::Closed);
    }
    let activity = Activity::new();
    let mut a = Active {
        inner: a,
        activity: activity.clone(),
    };
    let mut b = Active {
        inner: b,
        activity: activity.clone(),
    };
    let copying = tokio::io::copy_bidirectional(&mut a, &mut b);
    tokio::pin!(copying);
    loop {
        let deadline = activity.last() + idle;
        tokio::select! {
            biased;
            r = &mut copying => return r.map(|_| Ended::Closed),
            () = tokio::time::sleep_until(deadline) => {
                // Bytes may have moved while this slept: wait on from the
                // last of them.
                if activity.last() + idle <= Instant::now() {
                    return Ok(Ended::Idle);
                }
            }
        }
    }
}

/// When a tunnel last moved a byte, shared by its two sides: milliseconds
/// since the tunnel started (a clock read per read or write that moved
/// bytes, nothing more).
#[derive(Clone, Debug)]
struct Activity(Arc<(Instant, AtomicU64)>);

impl Activity {
    fn new() -> Self {
        Self(Arc::new((Instant::now(), AtomicU64::new(0))))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.0.0.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.0.1.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.0.0 + Duration::from_millis(self.0.1.load(Ordering::Relaxed))
    }
}

pin_project! {
    /// One side of a tunnel, noting in [`Activity`] every read or write
    /// that moved bytes.
    struct Active<T> {
        #[pin]
        inner: T,
        activity: Activity,
    }
}

impl<T: AsyncRead> AsyncRead for Active<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.project();
        let before = buf.filled().len();
        let r = this.inner.poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite> AsyncWrite for Active<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.project();
        let r = this.inner.poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.project().inner.poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _, duplex};

    const IDLE: Duration = Duration::from_secs(60);

    /// Bytes keep an idle tunnel open; a minute of silence either way
    /// closes it, and both ends see it closed.
    #[tokio::test(start_paused = true)]
    async fn a_tunnel_idle_for_the_timeout_is_closed() {
        let (mut caller, caller_side) = duplex(1024);
        let (upstream_side, mut upstream) = duplex(1024);
        let tunnel = tokio::spawn(copy(caller_side, upstream_side, IDLE));

        // Traffic every 50 s, each way in turn, for 5 minutes: never idle
        // for a minute.
        let mut buf = [0u8; 5];
        for i in 0..6 {
            tokio::time::sleep(Duration::from_secs(50)).await;
            if i % 2 == 0 {
                caller.write_all(b"hello").await.unwrap();
                upstream.read_exact(&mut buf).await.unwrap();
            } else {
                upstream.write_all(b"world").await.unwrap();
                caller.read_exact(&mut buf).await.unwrap();
            }
            assert!(!tunnel.is_finished(), "closed while in use, round {i}");
        }
        // Then silence: closed one idle timeout after the last byte.
        let quiet = Instant::now();
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Idle);
        assert_eq!(quiet.elapsed(), IDLE);
        assert_eq!(
            caller.read(&mut buf).await.unwrap(),
            0,
            "caller side closed"
        );
        assert_eq!(
            upstream.read(&mut buf).await.unwrap(),
            0,
            "upstream side closed"
        );
    }

    /// Zero is no limit; a tunnel closed by its ends ends as closed.
    #[tokio::test(start_paused = true)]
    async fn no_idle_limit_and_a_normal_close() {
        let (caller, caller_side) = duplex(1024);
        let (upstream_side, upstream) = duplex(1024);
        let tunnel = tokio::spawn(copy(caller_side, upstream_side, Duration::ZERO));
        tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
        assert!(!tunnel.is_finished());
        drop((caller, upstream));
        assert_eq!(tunnel.await.unwrap().unwrap(), Ended::Closed);
    }
}

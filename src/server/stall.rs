//! `proxy.send_timeout` for h2 callers: a stream whose caller takes none
//! of its response.
//!
//! Over HTTP/1.1 a caller that stops reading fills the socket, and
//! [`super::send`] closes the connection. Over h2 it usually does not: each
//! stream may be sent only its flow-control window, which the socket takes
//! whole, and hyper then stops polling that stream's body until the caller
//! opens the window again. A caller that keeps its connection busy (PINGs,
//! other requests) while never opening one stream's window would hold that
//! response for as long as it stays connected: its upstream connection or
//! stream, its in-flight slot (`proxy.max_concurrent_requests`) and its
//! buffers. No timer inside the body sees it, since nothing polls the body.
//!
//! So each h2 response body is watched from outside ([`Stalls::watch`]):
//! when hyper has taken a frame from it and not asked for the next one for
//! `send_timeout` (it is waiting for window, or for the socket), a
//! per-connection watchdog task drops the body's inner part, which frees
//! all of that; the stream is reset when hyper next polls it (or when the
//! connection closes). A body waiting for its upstream is not the caller's
//! stall (`routes[].response_idle_timeout` bounds that) and is left alone.
//!
//! Costs nothing for HTTP/1.1 requests; an h2 response with a body costs
//! one allocation and a lock per frame; the watchdog runs only while the
//! connection has watched bodies, every quarter of the timeout.

use http::Response;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use proxy_core::{BoxError, ProxyBody, boxed};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tokio::time::Instant;

/// A connection's watched h2 response bodies.
pub(super) struct Stalls {
    timeout: Duration,
    peer: SocketAddr,
    registry: Mutex<Registry>,
    /// Told when a body is cut: the connection is closed.
    cut: tokio::sync::Notify,
}

#[derive(Default)]
struct Registry {
    slots: Vec<Weak<Slot>>,
    /// The watchdog task runs.
    running: bool,
}

/// One watched body: the body itself (taken out when cut) and since when
/// hyper has held a frame of it without asking for the next.
struct Slot {
    state: Mutex<SlotState>,
}

struct SlotState {
    body: Option<ProxyBody>,
    handed: Option<Instant>,
}

impl Slot {
    fn lock(&self) -> MutexGuard<'_, SlotState> {
        // Plain data: a panic elsewhere cannot leave it half-changed.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Stalls {
    /// Bodies of `peer`'s connection cut after `timeout` (zero: none).
    pub(super) fn new(timeout: Duration, peer: SocketAddr) -> Option<Arc<Self>> {
        (!timeout.is_zero()).then(|| {
            Arc::new(Self {
                timeout,
                peer,
                registry: Mutex::new(Registry::default()),
                cut: tokio::sync::Notify::new(),
            })
        })
    }

    /// How long the other requests on a connection closed for a cut
    /// response get to finish: a third of the timeout, 1 to 30 s.
    pub(super) fn grace(&self) -> Duration {
        (self.timeout / 3).clamp(Duration::from_secs(1), Duration::from_secs(30))
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `body`, watched (an ended body is not).
    pub(super) fn watch(self: &Arc<Self>, body: ProxyBody) -> ProxyBody {
        if body.is_end_stream() {
            return body;
        }
        let slot = Arc::new(Slot {
            state: Mutex::new(SlotState {
                body: Some(body),
                handed: None,
            }),
        });
        let mut registry = self.registry();
        // Finished bodies leave dead entries; pruned here as they pile up.
        if registry.slots.len() >= 64 && registry.slots.len().is_power_of_two() {
            registry.slots.retain(|w| w.strong_count() > 0);
        }
        registry.slots.push(Arc::downgrade(&slot));
        if !registry.running && tokio::runtime::Handle::try_current().is_ok() {
            registry.running = true;
            tokio::spawn(watchdog(Arc::downgrade(self)));
        }
        boxed(Watched { slot })
    }

    /// One check: cuts the bodies held past the timeout. Returns whether
    /// any watched body is left (else the watchdog stops; the next watched
    /// body starts it again).
    fn check(&self, now: Instant) -> bool {
        let live: Vec<Arc<Slot>> = {
            let mut registry = self.registry();
            registry.slots.retain(|w| w.strong_count() > 0);
            if registry.slots.is_empty() {
                registry.running = false;
                return false;
            }
            registry.slots.iter().filter_map(Weak::upgrade).collect()
        };
        for slot in live {
            let cut = {
                let mut state = slot.lock();
                let stalled = state
                    .handed
                    .is_some_and(|at| now.saturating_duration_since(at) >= self.timeout);
                if stalled { state.body.take() } else { None }
            };
            // Dropped outside the lock: it frees the upstream side.
            if let Some(body) = cut {
                drop(body);
                tracing::warn!(
                    peer = %self.peer,
                    timeout = ?self.timeout,
                    "an h2 caller took none of a response for send_timeout; the response is cut and the connection closed"
                );
                // A permit if the loop is not waiting yet.
                self.cut.notify_one();
            }
        }
        true
    }
}

/// Resolves once `stalls` cut a body (never without `stalls`).
pub(super) async fn cut(stalls: Option<Arc<Stalls>>) {
    match stalls {
        Some(s) => s.cut.notified().await,
        None => std::future::pending().await,
    }
}

async fn watchdog(stalls: Weak<Stalls>) {
    loop {
        let every = match stalls.upgrade() {
            Some(s) => (s.timeout / 4).max(Duration::from_millis(250)),
            None => return,
        };
        tokio::time::sleep(every).await;
        // The connection is gone (its service dropped): so are the bodies.
        let Some(stalls) = stalls.upgrade() else {
            return;
        };
        if !stalls.check(Instant::now()) {
            return;
        }
    }
}

/// A watched body; see the module docs.
struct Watched {
    slot: Arc<Slot>,
}

impl Body for Watched {
    type Data = bytes::Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut state = self.slot.lock();
        // Asked for the next frame: whatever came before was taken.
        state.handed = None;
        let Some(body) = state.body.as_mut() else {
            return Poll::Ready(Some(Err(
                "the caller took none of the response for send_timeout".into(),
            )));
        };
        let polled = Pin::new(body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            state.handed = Some(Instant::now());
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        // A cut body is not ended: hyper polls it and resets the stream.
        self.slot
            .lock()
            .body
            .as_ref()
            .is_some_and(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.slot
            .lock()
            .body
            .as_ref()
            .map_or_else(SizeHint::default, Body::size_hint)
    }
}

pin_project! {
    /// The stack's response future, whose response body is watched if
    /// `stalls` is set (an h2 request on a connection with a
    /// `send_timeout`).
    pub(super) struct MaybeWatched<F> {
        #[pin]
        inner: F,
        stalls: Option<Arc<Stalls>>,
    }
}

impl<F> MaybeWatched<F> {
    pub(super) fn new(inner: F, stalls: Option<Arc<Stalls>>) -> Self {
        Self { inner, stalls }
    }
}

impl<F, E> Future for MaybeWatched<F>
where
    F: Future<Output = Result<Response<ProxyBody>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        Poll::Ready(match this.stalls.take() {
            Some(stalls) => out.map(|resp| resp.map(|b| stalls.watch(b))),
            None => out,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;

    /// Whether one poll of `f` finds it pending.
    async fn pending<F: Future + Unpin>(f: &mut F) -> bool {
        std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *f).poll(cx).is_pending())).await
    }

    fn stalls(timeout: Duration) -> Arc<Stalls> {
        Stalls::new(timeout, "127.0.0.1:1".parse().unwrap()).unwrap()
    }

    /// A body of two frames, the second only when `gate` opens.
    fn two_frames(gate: tokio::sync::oneshot::Receiver<()>) -> ProxyBody {
        let first = futures_util::stream::once(async {
            Ok::<_, BoxError>(Frame::data(bytes::Bytes::from_static(b"one")))
        });
        let second = futures_util::stream::once(async move {
            let _ = gate.await;
            Ok::<_, BoxError>(Frame::data(bytes::Bytes::from_static(b"two")))
        });
        boxed(http_body_util::StreamBody::new(
            futures_util::StreamExt::chain(first, second),
        ))
    }

    /// A frame taken and no next one asked for, for the timeout: the body
    /// is cut (its inner part dropped), and the next poll is an error. A
    /// body waiting on its own source (the upstream) is never cut.
    #[tokio::test(start_paused = true)]
    async fn a_body_held_past_the_timeout_is_cut_one_waiting_for_its_source_is_not() {
        let s = stalls(Duration::from_secs(60));
        let (_open, gate) = tokio::sync::oneshot::channel();
        let mut waiting = s.watch(two_frames(gate));
        let (_open2, gate2) = tokio::sync::oneshot::channel();
        let mut held = s.watch(two_frames(gate2));
        assert_eq!(s.registry().slots.len(), 2);
        // Both hand out their first frame; `waiting` is polled again (it
        // then waits on its gate: its source), `held` is not.
        for b in [&mut waiting, &mut held] {
            let f = b.frame().await.unwrap().unwrap();
            assert_eq!(f.into_data().unwrap(), "one");
        }
        let mut next = Box::pin(waiting.frame());
        assert!(pending(&mut next).await);
        tokio::time::advance(Duration::from_secs(59)).await;
        assert!(s.check(Instant::now()));
        assert!(pending(&mut next).await);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(s.check(Instant::now()));
        let cut = held.frame().await.unwrap();
        assert!(cut.is_err(), "the held body is cut");
        assert!(pending(&mut next).await, "the waiting one is not");
    }

    /// The watchdog runs only while bodies are watched, and stops with
    /// them; an ended body is not watched at all.
    #[tokio::test(start_paused = true)]
    async fn the_watchdog_stops_when_no_body_is_left() {
        let s = stalls(Duration::from_secs(4));
        assert!(proxy_core::empty().is_end_stream());
        let _ = s.watch(proxy_core::empty());
        assert!(!s.registry().running);
        let (_open, gate) = tokio::sync::oneshot::channel();
        let body = s.watch(two_frames(gate));
        assert!(s.registry().running);
        drop(body);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(!s.registry().running);
        assert!(s.registry().slots.is_empty());
    }
}

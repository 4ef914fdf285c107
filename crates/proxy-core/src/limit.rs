//! Load shedding: at most N requests in flight, the rest refused at once.
//!
//! Sits inside the edge layer (so a refusal becomes a 503 `overloaded` with
//! `Retry-After: 1`) and outside client auth (so an overloaded proxy spends
//! nothing on a request it will not serve). A request counts from its arrival
//! until its response body ends, not just until the response headers: a
//! long-lived stream (SSE, a large download) holds its slot the whole time,
//! as in Envoy's `max_requests`, and so does a WebSocket tunnel until
//! it closes. Refusing instead of queueing keeps latency
//! bounded; callers back off on `Retry-After`.

use crate::ProxyBody;
use crate::error::BoxError;
use futures_util::future::{Either, Ready, ready};
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// Too many requests in flight.
#[derive(Debug, thiserror::Error)]
#[error("latchkey is at its limit of {limit} concurrent requests; retry shortly")]
pub struct Overloaded {
    /// The configured limit.
    pub limit: usize,
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct ShedLayer {
    slots: Arc<Slots>,
}

impl ShedLayer {
    /// At most `limit` requests in flight.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Slots {
                in_flight: AtomicUsize::new(0),
                limit,
            }),
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            slots: self.slots.clone(),
        }
    }
}

/// The in-flight count. Not a semaphore: nothing ever waits for a slot (a
/// request over the limit is refused at once), so a counter is all it
/// takes, and releasing a slot takes no lock.
#[derive(Debug)]
struct Slots {
    in_flight: AtomicUsize,
    limit: usize,
}

/// One request's place among the requests in flight, released when
/// dropped. The response body holds it ([`ProxyBody::holding`]).
pub struct Slot(Arc<Slots>);

impl Slots {
    fn try_take(self: &Arc<Self>) -> Option<Slot> {
        let mut n = self.in_flight.load(Ordering::Relaxed);
        loop {
            if n >= self.limit {
                return None;
            }
            match self.in_flight.compare_exchange_weak(
                n,
                n + 1,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(Slot(self.clone())),
                Err(now) => n = now,
            }
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Release);
    }
}

impl fmt::Debug for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slot")
            .field("limit", &self.0.limit)
            .finish_non_exhaustive()
    }
}

/// The service built by [`ShedLayer`].
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    slots: Arc<Slots>,
}

impl<S, B> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Either<Admitted<S::Future>, Ready<Result<Response<ProxyBody>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.slots.try_take() {
            Some(slot) => Either::Left(Admitted {
                inner: self.inner.call(req),
                slot: Some(slot),
            }),
            None => {
                crate::facts::record(&req, |f| f.rejected_by = Some("limits"));
                Either::Right(ready(Err(Overloaded {
                    limit: self.slots.limit,
                }
                .into())))
            }
        }
    }
}

pin_project! {
    /// Future of an admitted request: the inner future, then its response
    /// body takes the slot. An error response made further out (by the
    /// edge layer) does not hold it: the request is over.
    pub struct Admitted<F> {
        #[pin]
        inner: F,
        slot: Option<Slot>,
    }
}

impl<F> Future for Admitted<F>
where
    F: Future<Output = Result<Response<ProxyBody>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        Poll::Ready(match (out, this.slot.take()) {
            // A tunnel (WebSocket) holds the slot while it is open; its
            // 101 has no body to hold it ([`crate::tunnel`]).
            (Ok(resp), Some(slot)) if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS => {
                match resp.extensions().get::<crate::tunnel::TunnelHold>() {
                    Some(hold) => hold.keep(slot),
                    None => drop(slot),
                }
                Ok(resp)
            }
            (Ok(resp), Some(slot)) => Ok(resp.map(|body| body.holding(slot))),
            (out, _) => out,
        })
    }
}

impl<F> fmt::Debug for Admitted<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admitted")
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    #[tokio::test]
    async fn slots_are_held_until_the_body_ends() {
        let layer = ShedLayer::new(1);
        let svc = layer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new(crate::full("body")))
        }));
        let first = svc.clone().oneshot(Request::new(())).await.unwrap();
        // Headers are back but the body is unread: the slot is still taken.
        let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
        assert!(err.is::<Overloaded>());
        assert_eq!(
            crate::error::classify(&*err),
            crate::error::ErrorCode::Overloaded
        );
        first.into_body().collect().await.unwrap();
        assert!(svc.oneshot(Request::new(())).await.is_ok());
    }

    fn in_flight<S>(svc: &Shed<S>) -> usize {
        svc.slots.in_flight.load(Ordering::SeqCst)
    }

    #[tokio::test]
    async fn exactly_limit_requests_are_admitted_and_a_dropped_body_frees_its_slot() {
        let svc = ShedLayer::new(2).layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new(crate::full("body")))
        }));
        let first = svc.clone().oneshot(Request::new(())).await.unwrap();
        let second = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(in_flight(&svc), 2);
        let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
        assert!(err.is::<Overloaded>());
        assert_eq!(err.to_string(), Overloaded { limit: 2 }.to_string());
        // A caller that goes away without reading the body frees the slot.
        drop(first);
        assert_eq!(in_flight(&svc), 1);
        let third = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(in_flight(&svc), 2);
        // The body still streams what the inner service sent.
        let bytes = third.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"body");
        drop(second);
        assert_eq!(in_flight(&svc), 0);
    }

    #[tokio::test]
    async fn a_failed_or_cancelled_request_frees_its_slot() {
        let fail = ShedLayer::new(1).layer(tower::service_fn(|_: Request<()>| async {
            Err::<Response<ProxyBody>, BoxError>("upstream gone".into())
        }));
        let err = fail.clone().oneshot(Request::new(())).await.unwrap_err();
        assert_eq!(err.to_string(), "upstream gone");
        assert_eq!(in_flight(&fail), 0);

        let mut never = ShedLayer::new(1).layer(tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<ProxyBody>, BoxError>>()
        }));
        let pending = never.call(Request::new(()));
        assert_eq!(in_flight(&never), 1);
        drop(pending);
        assert_eq!(in_flight(&never), 0);
    }

    #[tokio::test]
    async fn nested_limits_each_hold_their_slot_until_the_body_ends() {
        let inner = ShedLayer::new(1).layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, BoxError>(Response::new(crate::full("body")))
        }));
        let outer = ShedLayer::new(1).layer(inner.clone());
        let resp = outer.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!((in_flight(&outer), in_flight(&inner)), (1, 1));
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"body");
        assert_eq!((in_flight(&outer), in_flight(&inner)), (0, 0));
    }
}

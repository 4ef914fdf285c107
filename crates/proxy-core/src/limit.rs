//! Load shedding: at most N requests in flight, the rest refused at once.
//!
//! Sits inside the edge layer (so a refusal becomes a 503 `overloaded` with
//! `Retry-After: 1`) and outside client auth (so an overloaded proxy spends
//! nothing on a request it will not serve). A request counts from its arrival
//! until its response body ends, not just until the response headers: a
//! long-lived stream (SSE, a large download) holds its slot the whole time,
//! as in Envoy's `max_requests`. Refusing instead of queueing keeps latency
//! bounded; callers back off on `Retry-After`.

use crate::ProxyBody;
use crate::error::BoxError;
use bytes::Bytes;
use futures_util::future::{Either, MapOk, Ready, TryFutureExt, ready};
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    slots: Arc<Semaphore>,
    limit: usize,
}

impl ShedLayer {
    /// At most `limit` requests in flight.
    pub fn new(limit: usize) -> Self {
        Self {
            slots: Arc::new(Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> Layer<S> for ShedLayer {
    type Service = Shed<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Shed {
            inner,
            slots: self.slots.clone(),
            limit: self.limit,
        }
    }
}

/// The service built by [`ShedLayer`].
#[derive(Clone, Debug)]
pub struct Shed<S> {
    inner: S,
    slots: Arc<Semaphore>,
    limit: usize,
}

impl<S, B> Service<Request<B>> for Shed<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Either<
        MapOk<S::Future, Box<dyn FnOnce(Response<ProxyBody>) -> Response<ProxyBody> + Send>>,
        Ready<Result<Response<ProxyBody>, BoxError>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                // The permit travels with the response body and is released
                // when the body ends (or is dropped).
                let f: Box<dyn FnOnce(Response<ProxyBody>) -> Response<ProxyBody> + Send> =
                    Box::new(move |resp| {
                        resp.map(|body| {
                            crate::boxed(Permitted {
                                body,
                                _permit: permit,
                            })
                        })
                    });
                Either::Left(self.inner.call(req).map_ok(f))
            }
            Err(_) => {
                crate::facts::record(&req, |f| f.rejected_by = Some("limits"));
                Either::Right(ready(Err(Overloaded { limit: self.limit }.into())))
            }
        }
    }
}

pin_project! {
    /// A response body that holds its request's slot until it ends.
    struct Permitted {
        #[pin]
        body: ProxyBody,
        _permit: OwnedSemaphorePermit,
    }
}

impl Body for Permitted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
}

//! The audit layer: one record and one set of metrics per request, whatever
//! happened to it.
//!
//! For each request [`Audit`] opens the request's facts slot
//! ([`Facts::open`]: an `Arc<`[`Facts`]`>` in the request's context
//! extension, which every layer below fills in), which also captures what the record needs from
//! the request as it arrived ([`RequestMeta`]: method, host, path, caller
//! address, request id) and when it arrived: one allocation, and the
//! future carries only two pointers for it. When the inner service answers
//! it derives the [`RequestRecord`] from the status, the response's
//! [`ErrorCode`] extension (present exactly when the proxy made the
//! response) and the facts, hands it to the [`AuditSink`] and updates the
//! metrics.
//!
//! If the caller goes away first, the server drops the response future;
//! its drop guard then writes the record with action `client_cancel` and
//! status 499 (nginx's "client closed request"), with `reason` null: the
//! action already says what happened, and no failure of the proxy or the
//! upstream is implied. A panic below is recorded as a local 500
//! (`internal_error`), whether it happens in the inner service's `call` or
//! in its future, as is an inner error (the proxy's stack never
//! returns one: the edge layer turns errors into responses).
//!
//! The record is written when the response headers are ready; a streaming
//! body that ends later (or is cut by the caller) is not covered, so
//! `duration_ms` is the time to the response headers.
//!
//! # Layer placement
//!
//! Outermost, directly inside the listener and outside the edge layer:
//!
//! ```text
//! listener -> [audit] -> edge errors -> client auth -> router -> ... -> forward
//! ```
//!
//! - Outside the edge layer, it sees every failure as the response the
//!   caller got, with its [`ErrorCode`], so action, status and reason agree
//!   with what the caller saw.
//! - Outside everything that records facts, its slot exists before any of
//!   them runs, and survives error paths (facts are shared, not carried by
//!   the response).
//! - Inside the listener, it needs the [`ConnInfo`] and
//!   [`RequestId`](proxy_core::context::RequestId) the listener attaches.
//!
//! Placed further in, requests refused by the layers outside it would
//! leave no record. Used on its own around any tower HTTP service, it still
//! records method, path, status and duration (the facts stay empty).
//!
//! [`ConnInfo`]: proxy_core::context::ConnInfo
//! [`RequestMeta`]: proxy_core::facts::RequestMeta

use crate::record::RequestRecord;
use crate::sink::AuditSink;
use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use proxy_core::error::ErrorCode;
use proxy_core::facts::Facts;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::SystemTime;
use tower::{Layer, Service};

/// Records every request; see the module docs.
#[derive(Clone, Debug)]
pub struct AuditLayer {
    shared: Arc<Shared>,
}

/// The service built by [`AuditLayer`].
#[derive(Clone, Debug)]
pub struct Audit<S> {
    inner: S,
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    sink: Option<Arc<dyn AuditSink>>,
    metrics: bool,
    /// Set when the process cuts the requests still in flight (see
    /// [`AuditLayer::with_cut`]).
    cut: Option<Arc<AtomicBool>>,
}

pin_project! {
    /// Future of [`Audit`]: the inner future plus the guard that records
    /// the request however it ends.
    pub struct ResponseFuture<F> {
        // Dropped before the guard, so nothing below still runs when a
        // cancelled request is recorded.
        #[pin]
        inner: F,
        guard: Guard,
    }
}

/// Writes the record once: on completion, or on drop (cancellation).
struct Guard(Option<Pending>);

struct Pending {
    shared: Arc<Shared>,
    /// Also holds the request's `RequestMeta` and arrival.
    facts: Arc<Facts>,
}

// === impl AuditLayer ===

impl AuditLayer {
    /// Writes a record per request to `sink`, and updates the request
    /// metrics if `metrics`.
    pub fn new(sink: Arc<dyn AuditSink>, metrics: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                sink: Some(sink),
                metrics,
                cut: None,
            }),
        }
    }

    /// Neither records nor metrics (both switched off): a pass-through
    /// that opens no facts slot, so the layers below record nothing and a
    /// request costs nothing here. It gives a proxy with audit and
    /// metrics off the same type as one with them on.
    pub fn disabled() -> Self {
        Self {
            shared: Arc::new(Shared {
                sink: None,
                metrics: false,
                cut: None,
            }),
        }
    }

    /// Records a request dropped while `cut` is set as cut by the proxy
    /// (`action: error`, 503, reason `shutdown`) instead of as a caller
    /// that went away (`client_cancel`, 499). The listener sets it when it
    /// closes the connections still open at the drain timeout, and the
    /// binary when a second stop signal ends the process: both drop
    /// requests the caller was still waiting for.
    pub fn with_cut(self, cut: Arc<AtomicBool>) -> Self {
        Self {
            shared: Arc::new(Shared {
                sink: self.shared.sink.clone(),
                metrics: self.shared.metrics,
                cut: Some(cut),
            }),
        }
    }

    /// Updates the request metrics only (audit records switched off).
    pub fn metrics_only() -> Self {
        Self {
            shared: Arc::new(Shared {
                sink: None,
                metrics: true,
                cut: None,
            }),
        }
    }
}

impl<S> Layer<S> for AuditLayer {
    type Service = Audit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Audit {
            inner,
            shared: self.shared.clone(),
        }
    }
}

// === impl Audit ===

impl<S> Audit<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, B, RB> Service<Request<B>> for Audit<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if self.shared.sink.is_none() && !self.shared.metrics {
            return ResponseFuture {
                inner: self.inner.call(req),
                guard: Guard(None),
            };
        }
        let facts = Facts::open(&mut req);
        // The guard exists before the inner `call` runs: layers below may do
        // work in `call` itself (a ready route stack is called there), and a
        // panic in it is recorded like one in the future.
        let guard = Guard(Some(Pending {
            shared: self.shared.clone(),
            facts,
        }));
        ResponseFuture {
            inner: self.inner.call(req),
            guard,
        }
    }
}

// === impl ResponseFuture ===

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = ready!(this.inner.poll(cx));
        if let Some(p) = this.guard.0.take() {
            match &out {
                Ok(resp) => {
                    let code = resp.extensions().get::<ErrorCode>().copied();
                    p.finish(resp.status(), code, false);
                }
                Err(_) => p.finish(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(ErrorCode::Internal),
                    false,
                ),
            }
        }
        Poll::Ready(out)
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("pending", &self.guard.0.is_some())
            .finish_non_exhaustive()
    }
}

// === impl Guard ===

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if std::thread::panicking() {
                // A panic below, not a caller that left.
                p.finish(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    Some(ErrorCode::Internal),
                    false,
                );
            } else if p
                .shared
                .cut
                .as_ref()
                .is_some_and(|c| c.load(Ordering::SeqCst))
            {
                // The proxy closed the connection, not the caller.
                p.finish(
                    StatusCode::SERVICE_UNAVAILABLE,
                    Some(ErrorCode::Shutdown),
                    false,
                );
            } else {
                p.finish(StatusCode::OK, None, true);
            }
        }
    }
}

impl Pending {
    fn finish(self, status: StatusCode, error: Option<ErrorCode>, cancelled: bool) {
        let duration = self.facts.arrived().elapsed();
        let now = SystemTime::now();
        let shared = &self.shared;
        let meta = self.facts.meta();
        // Nothing below touches the facts any more; building the record
        // in place avoids copying them.
        self.facts.update(|facts| {
            let record =
                RequestRecord::from_parts(meta, facts, status, error, duration, cancelled, now);
            if let Some(sink) = &shared.sink {
                sink.request(&record);
            }
            if shared.metrics {
                crate::metrics::record_request(facts, &record, duration);
            }
        });
    }
}

#[cfg(test)]
mod tests;

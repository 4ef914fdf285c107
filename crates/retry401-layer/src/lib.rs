//! Recover from upstream 401s caused by revoked or stale credentials: one
//! forced refresh of the generation that was rejected, one replay.
//!
//! Tokens are revoked server-side before their local expiry all the time
//! (session limits, security resets, a second login elsewhere). When the
//! upstream answers a retry status (default `401`) to a request that carried
//! an injected credential, [`Retry401`]:
//!
//! 1. takes the generation that request used (the `CredentialUsed` record the
//!    acquire layer leaves on the response),
//! 2. calls `invalidate(generation)` on the route's credential source, which
//!    refreshes only if that generation is still current (so 100 concurrent
//!    401s on one stale token cause one refresh, and a 401 on an already
//!    replaced token causes none),
//! 3. replays the request exactly once, byte-identical apart from the
//!    credential.
//!
//! | what happened | the caller gets | `x-latchkey-retry` |
//! |---|---|---|
//! | replay succeeded | the replay's response (or the error the replay failed with: unreachable, timeout) | `recovered` |
//! | forced refresh failed | the upstream's first 401 | `refresh_failed` |
//! | replay also rejected | the replay's 401 | `still_unauthorized` |
//! | body over the replay cap, or still arriving when sent | the upstream's 401, the body streamed untouched; the forced refresh still starts, for the requests after it | `not_replayable` |
//! | no credential was injected | the upstream's response | (none) |
//! | the source has no other credential (a static key) | the upstream's response | (none) |
//!
//! The `latchkey` binary leaves the layer out of routes whose credential
//! can never change (`CredentialSource::can_change`: a static key from a
//! literal value or an environment variable), where that last row is the
//! only outcome possible.
//!
//! It never loops: one replay at most, and never for a request that carried
//! no injected credential. The outcome is also left in the response
//! extensions as a [`RetryOutcome`] for the audit layer.
//!
//! # Layer placement
//!
//! ```text
//! ... -> authorize -> Retry401 -> acquire (refresh) -> inject -> forward
//! ```
//!
//! It must sit **outside** credential acquisition and injection: the replay
//! has to go through them again to pick up the refreshed credential, and the
//! request it keeps for the replay must be the one *before* injection, so the
//! rejected credential is never resent. It sits **inside** routing and client
//! authorization so only authorized requests are buffered and replayed, and
//! it needs the route's credential source to invalidate.
//!
//! The service it wraps returns a boxed future ([`Call`]), as the
//! type-erased [`RouteService`](proxy_core::stack::RouteService) below it
//! does: the layer keeps that future as it is rather than boxing it again.
//!
//! # Example
//!
//! ```no_run
//! # fn demo(source: std::sync::Arc<dyn proxy_core::CredentialSource>, inner: proxy_core::stack::RouteService) {
//! use retry401_layer::{Retry401Layer, RetryPolicy};
//! use tower::ServiceBuilder;
//! let svc = ServiceBuilder::new()
//!     .layer(Retry401Layer::new(source.clone(), RetryPolicy::default()))
//!     .service(inner); // acquire -> inject -> forward
//! # let _ = svc; }
//! ```

mod again;
mod replay;

use again::Again;
pub use replay::{Replay, capture};

use futures_util::future::{BoxFuture, Either};
use http::{HeaderName, HeaderValue, Request, Response, StatusCode};
use proxy_core::context::RequestContext;
use proxy_core::credential::CredentialUsed;
use proxy_core::edge::WithHeaders;
use proxy_core::facts::{Facts, RefreshFact};
use proxy_core::headers::is_upgrade;
use proxy_core::{BoxError, CredentialSource, ProxyBody};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// `x-latchkey-retry`
pub const X_LATCHKEY_RETRY: HeaderName = HeaderName::from_static("x-latchkey-retry");

/// When to replay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Upstream statuses that mean "credential rejected": 400-599 (the
    /// config refuses others). A response below 400 carries no
    /// [`CredentialUsed`] record, so such a status would never be retried.
    pub statuses: Vec<StatusCode>,
    /// Largest body buffered for a replay.
    pub max_replay_body: u64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            statuses: vec![StatusCode::UNAUTHORIZED],
            max_replay_body: 1 << 20,
        }
    }
}

impl RetryPolicy {
    /// From a route's `retry:` config.
    pub fn from_config(c: &proxy_core::config::RetryConfig) -> Self {
        Self {
            statuses: c
                .statuses
                .iter()
                .filter_map(|s| StatusCode::from_u16(*s).ok())
                .collect(),
            max_replay_body: c.max_replay_body,
        }
    }
}

/// How a rejected request was handled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The replay was accepted.
    Recovered,
    /// The forced refresh failed; the first response was returned.
    RefreshFailed,
    /// The replay was rejected too.
    StillUnauthorized,
    /// The body was too large to replay.
    NotReplayable,
}

impl Outcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Recovered => "recovered",
            Self::RefreshFailed => "refresh_failed",
            Self::StillUnauthorized => "still_unauthorized",
            Self::NotReplayable => "not_replayable",
        }
    }
}

/// Left in the response extensions when a retry status was seen on a
/// request that carried a credential.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryOutcome {
    /// What happened.
    pub outcome: Outcome,
    /// The credential and generation the upstream rejected.
    pub rejected: CredentialUsed,
    /// The generation the replay carried, if there was one.
    pub replay_generation: Option<u64>,
    /// The upstream's status on the first attempt.
    pub first_status: StatusCode,
    /// Why the forced refresh failed, if it did.
    pub refresh_error: Option<String>,
}

/// Builds [`Retry401`]; see the crate docs.
#[derive(Clone, Debug)]
pub struct Retry401Layer {
    source: Arc<dyn CredentialSource>,
    policy: Arc<RetryPolicy>,
}

impl Retry401Layer {
    /// Replays with credentials from `source` under `policy`.
    pub fn new(source: Arc<dyn CredentialSource>, policy: RetryPolicy) -> Self {
        Self {
            source,
            policy: Arc::new(policy),
        }
    }
}

impl<S: Clone> Layer<S> for Retry401Layer {
    type Service = Retry401<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Retry401 {
            pristine: Arc::new(inner.clone()),
            inner,
            source: self.source.clone(),
            policy: self.policy.clone(),
        }
    }
}

/// The service; see the crate docs.
#[derive(Clone, Debug)]
pub struct Retry401<S> {
    inner: S,
    /// Cloned for a replay, only when one is sent: a request that is
    /// never replayed costs no service clone for it.
    pristine: Arc<S>,
    source: Arc<dyn CredentialSource>,
    policy: Arc<RetryPolicy>,
}

impl<S> Retry401<S> {
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

fn mark(resp: &mut Response<ProxyBody>, facts: Option<&Arc<Facts>>, outcome: RetryOutcome) {
    if let Some(f) = facts {
        f.update(|f| f.retry = Some(outcome.outcome.as_str()));
    }
    resp.headers_mut().insert(
        X_LATCHKEY_RETRY,
        HeaderValue::from_static(outcome.outcome.as_str()),
    );
    resp.extensions_mut().insert(outcome);
}

impl<S> Service<Request<ProxyBody>> for Retry401<S>
where
    S: Inner,
{
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    /// A request with nothing to read before its first attempt (most)
    /// settles in a [`Settle`] held inline; one whose body is read first
    /// is boxed.
    type Future = Either<Settle<S>, Call>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let source = self.source.clone();
        let policy = self.policy.clone();
        let replayer = self.pristine.clone();
        let (parts, body) = req.into_parts();
        let facts = proxy_core::facts::slot(&parts.extensions).cloned();
        let upgrade = is_upgrade(&parts.headers);
        if upgrade || http_body::Body::is_end_stream(&body) {
            // Nothing to read before the first attempt: send it now, on the
            // instance that was polled ready. An upgrade is never replayed.
            let (body, again) = if upgrade {
                (body, Err(NotReplayable::Upgrade))
            } else {
                let again = Again::capture(&parts, Replay::default());
                (proxy_core::empty(), Ok(again))
            };
            let first = call(&mut self.inner, Request::from_parts(parts, body));
            return Either::Left(Settle::new(first, again, replayer, source, policy, facts));
        }
        // The body is read first: keep the instance that was polled ready
        // for the first attempt.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        Either::Right(Box::pin(async move {
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
            let (body, replay) = capture(body, declared, policy.max_replay_body)
                .await
                .inspect_err(|_| {
                    // The caller's body broke off or was malformed.
                    if let Some(f) = &facts {
                        f.update(|f| f.rejected_by = Some("request_body"));
                    }
                })?;
            let again = replay
                .map(|r| Again::capture(&parts, r))
                .ok_or(NotReplayable::Body);
            let first = call(&mut inner, Request::from_parts(parts, body));
            Settle::new(first, again, replayer, source, policy, facts).await
        }))
    }
}

/// The wrapped stack's future: already boxed (a
/// [`RouteService`](proxy_core::stack::RouteService) is type-erased), so
/// this layer holds it as it is instead of boxing it again (one allocation
/// per request), and naming it inside the async blocks below does not trip
/// rustc's higher-ranked `Send` check on generic futures
/// (rust-lang/rust#110338).
pub type Call = BoxFuture<'static, Result<Response<ProxyBody>, BoxError>>;

/// What the layer wraps: a route's stack, type-erased (its future is a
/// [`Call`]) and cloned per request. Implemented for every such service.
pub trait Inner:
    Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError, Future = Call>
    + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S> Inner for S where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError, Future = Call>
        + Clone
        + Send
        + Sync
        + 'static
{
}

fn call<S: Inner>(inner: &mut S, req: Request<ProxyBody>) -> Call {
    inner.call(req)
}

fn ready<S>(inner: &mut S) -> BoxFuture<'_, Result<(), BoxError>>
where
    S: Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = BoxError> + Send,
{
    Box::pin(futures_util::future::poll_fn(move |cx| {
        inner.poll_ready(cx)
    }))
}

/// After the first attempt: its response, or (a retryable status) a
/// refresh and one replay, `recover`.
///
/// A named future, held by value in [`Retry401`]'s own: almost no request
/// is ever retried, so the common path carries only the first attempt's
/// future and what a retry would need, and the retry's state is boxed
/// apart only when a response asks for one. As an `async fn`, boxed per
/// request, this was 1,896 bytes (1,256 with the retry boxed apart: an
/// `async fn` keeps its arguments for as long as it runs), past glibc's
/// per-thread cache of small blocks (1,032 bytes), so every request took
/// malloc's slow path to allocate and free it.
pub struct Settle<S> {
    first: Call,
    retry: Option<Call>,
    rest: Option<Rest<S>>,
}

/// What a retry needs besides the rejected response.
struct Rest<S> {
    again: Result<Again, NotReplayable>,
    replayer: Arc<S>,
    source: Arc<dyn CredentialSource>,
    policy: Arc<RetryPolicy>,
    facts: Option<Arc<Facts>>,
}

/// Why a request is not replayed after a 401.
#[derive(Clone, Copy, Debug)]
enum NotReplayable {
    /// An upgrade (WebSocket): never buffered or replayed.
    Upgrade,
    /// Its body is over the replay cap, or was still arriving when sent.
    Body,
}

impl NotReplayable {
    /// For the log line.
    fn as_str(self) -> &'static str {
        match self {
            Self::Upgrade => "an upgrade (WebSocket) is never replayed",
            Self::Body => "its body is over the replay cap or was still arriving",
        }
    }
}

impl<S> Settle<S> {
    fn new(
        first: Call,
        again: Result<Again, NotReplayable>,
        replayer: Arc<S>,
        source: Arc<dyn CredentialSource>,
        policy: Arc<RetryPolicy>,
        facts: Option<Arc<Facts>>,
    ) -> Self {
        Self {
            first,
            retry: None,
            rest: Some(Rest {
                again,
                replayer,
                source,
                policy,
                facts,
            }),
        }
    }
}

impl<S> Future for Settle<S>
where
    S: Inner,
{
    type Output = Result<Response<ProxyBody>, BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Some(retry) = &mut this.retry {
            let out = ready!(retry.as_mut().poll(cx));
            // Done: a later poll gets the error below, not a poll of a
            // finished future (which panics).
            this.retry = None;
            return Poll::Ready(out);
        }
        if this.rest.is_none() {
            // The first attempt already answered: polled after completion,
            // a caller's bug, answered as an error rather than a panic.
            return Poll::Ready(Err("retry future polled after completion".into()));
        }
        let first = ready!(this.first.as_mut().poll(cx));
        let rest = this.rest.take();
        let resp = first?;
        let Some(rest) = rest.filter(|r| r.policy.statuses.contains(&resp.status())) else {
            return Poll::Ready(Ok(resp));
        };
        let Rest {
            again,
            replayer,
            source,
            policy,
            facts,
        } = rest;
        let retry = this.retry.insert(Box::pin(recover(
            resp, again, replayer, source, policy, facts,
        )));
        let out = ready!(retry.as_mut().poll(cx));
        this.retry = None;
        Poll::Ready(out)
    }
}

impl<S> fmt::Debug for Settle<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settle")
            .field("retrying", &self.retry.is_some())
            .finish_non_exhaustive()
    }
}

/// The first attempt was answered with a retryable status: refresh and
/// replay once if it carried our credential; see the crate docs.
async fn recover<S>(
    mut resp: Response<ProxyBody>,
    again: Result<Again, NotReplayable>,
    replayer: Arc<S>,
    source: Arc<dyn CredentialSource>,
    policy: Arc<RetryPolicy>,
    facts: Option<Arc<Facts>>,
) -> Result<Response<ProxyBody>, BoxError>
where
    S: Inner,
{
    // Only requests that carried an injected credential are ours to
    // retry; anything else is the upstream's answer to the caller.
    let Some(rejected) = resp.extensions().get::<CredentialUsed>().cloned() else {
        return Ok(resp);
    };
    let first_status = resp.status();
    // A static key the upstream refuses, still the one held: nothing to
    // refresh and nothing new to send, so the upstream's answer stands,
    // whether or not the request could have been replayed.
    if !source.refreshes() && source.generation() == Some(rejected.generation) {
        return Ok(resp);
    }
    let again = match again {
        Ok(again) => again,
        Err(why) => {
            // This request cannot be replayed, but the credential it carried
            // was refused: the forced refresh still starts, so the requests
            // after it get a new credential rather than the refused one until
            // its expiry. Shared and deduplicated like any invalidation; this
            // request does not wait for it.
            tokio::spawn(source.invalidate(rejected.generation));
            tracing::info!(credential = %rejected.id, generation = rejected.generation, why = why.as_str(), "credential rejected; the request cannot be replayed; a forced refresh was started for the requests after it");
            mark(
                &mut resp,
                facts.as_ref(),
                RetryOutcome {
                    outcome: Outcome::NotReplayable,
                    rejected,
                    replay_generation: None,
                    first_status,
                    refresh_error: None,
                },
            );
            return Ok(resp);
        }
    };
    // Another request's refresh has already replaced the refused
    // generation: the replay takes the current one, and no refresh runs
    // (or is recorded) for this request.
    let replaced = source
        .generation()
        .is_some_and(|g| g != rejected.generation);
    let started = tokio::time::Instant::now();
    let refreshed = source.invalidate(rejected.generation).await;
    if refreshed.is_ok() && source.generation() == Some(rejected.generation) {
        // Nothing new to send (a static key the upstream refuses): no
        // refresh ran, and a replay would repeat the rejected request, so
        // the upstream's answer stands.
        return Ok(resp);
    }
    if let Some(f) = facts.as_ref().filter(|_| !replaced) {
        let fact = RefreshFact {
            trigger: "forced",
            ok: refreshed.is_ok(),
            backing_off: refreshed.as_ref().is_err_and(|e| e.backing_off),
            duration: started.elapsed(),
            oauth_error: refreshed.as_ref().err().and_then(|e| e.oauth_error.clone()),
        };
        f.update(|f| f.refresh = Some(fact));
    }
    if let Err(e) = refreshed {
        tracing::warn!(credential = %rejected.id, generation = rejected.generation, error = %e, "credential rejected and the forced refresh failed");
        mark(
            &mut resp,
            facts.as_ref(),
            RetryOutcome {
                outcome: Outcome::RefreshFailed,
                rejected,
                replay_generation: None,
                first_status,
                refresh_error: Some(e.reason),
            },
        );
        return Ok(resp);
    }
    drop(resp);
    let mut inner = S::clone(&replayer);
    let mut replay = again.into_request();
    // A successful replay's response carries the record too: its
    // generation goes into the outcome.
    RequestContext::of_mut(replay.extensions_mut()).report_credential_used = true;
    if let Some(f) = &facts {
        f.update(|f| {
            f.upstream_status = None;
            f.upstream_time = None;
            f.replaying = true;
        });
    }
    let replayed = match ready(&mut inner).await {
        Ok(()) => call(&mut inner, replay).await,
        Err(e) => Err(e),
    };
    let mut second = match replayed {
        Ok(second) => second,
        Err(e) => {
            // The credential was replaced; the replay itself failed (the
            // upstream unreachable, a timeout). As for a replay answered
            // with an error status: `recovered`, with the replay's failure
            // as the record's reason. The caller gets that failure, saying
            // so in `x-latchkey-retry` (the edge renders the header).
            tracing::warn!(credential = %rejected.id, rejected = rejected.generation, error = %e, "the credential was refreshed but the replay failed");
            let outcome = Outcome::Recovered.as_str();
            if let Some(f) = &facts {
                f.update(|f| f.retry = Some(outcome));
            }
            let mut headers = http::HeaderMap::new();
            headers.insert(X_LATCHKEY_RETRY, HeaderValue::from_static(outcome));
            return Err(Box::new(WithHeaders::new(e, headers)));
        }
    };
    let replay_generation = second
        .extensions()
        .get::<CredentialUsed>()
        .map(|u| u.generation);
    let outcome = if policy.statuses.contains(&second.status()) {
        tracing::warn!(credential = %rejected.id, generation = ?replay_generation, status = second.status().as_u16(), "replay with a refreshed credential was rejected too");
        Outcome::StillUnauthorized
    } else {
        tracing::info!(credential = %rejected.id, rejected = rejected.generation, generation = ?replay_generation, "recovered from a rejected credential by one refresh and one replay");
        Outcome::Recovered
    };
    mark(
        &mut second,
        facts.as_ref(),
        RetryOutcome {
            outcome,
            rejected,
            replay_generation,
            first_status,
            refresh_error: None,
        },
    );
    Ok(second)
}

#[cfg(test)]
mod tests;

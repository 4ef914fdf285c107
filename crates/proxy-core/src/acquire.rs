//! Credential acquisition: asks the route's [`CredentialSource`] for the
//! current credential and attaches it to the request.
//!
//! Sits inside the 401 retry (so a replay acquires the refreshed value) and
//! outside [`inject`](crate::inject) (which writes the value into the request).
//! On success the request's [`RequestContext`](crate::context::RequestContext)
//! holds an [`Acquired`]: the credential and the [`CredentialUsed`] record
//! of which one it is (taken by inject, which writes the value and records
//! the fact for audit), and an error response (status 400 or above)
//! carries the same [`CredentialUsed`] (read by retry; any response does if
//! the request's context asks for it: the retry's replay).
//! A source that cannot produce a value
//! fails the request with [`CredentialUnavailable`] (503): a request is never
//! forwarded without the credential its route requires.

use crate::credential::{Credential, CredentialError, CredentialSource, CredentialUsed};
use crate::error::{BoxError, CredentialUnavailable};
use futures_util::future::{BoxFuture, Either};
use http::{Request, Response};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// What [`Acquire`] hands to [`inject`](crate::inject) in the request's
/// [`RequestContext`](crate::context::RequestContext): the value to write
/// and the record of which credential and generation it is. Inject takes
/// it out, so the value goes no further than the layer that writes it.
#[derive(Clone, Debug)]
pub struct Acquired {
    /// The credential to inject.
    pub credential: Arc<Credential>,
    /// Which one it is, for the audit facts.
    pub used: CredentialUsed,
}

/// Attaches the current credential of one source; see the module docs.
#[derive(Clone, Debug)]
pub struct AcquireLayer {
    source: Arc<dyn CredentialSource>,
}

impl AcquireLayer {
    /// A layer drawing from `source`.
    pub fn new(source: Arc<dyn CredentialSource>) -> Self {
        Self { source }
    }
}

impl<S> Layer<S> for AcquireLayer {
    type Service = Acquire<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Acquire {
            inner,
            source: self.source.clone(),
            id: Arc::from(self.source.id()),
        }
    }
}

/// The service built by [`AcquireLayer`].
#[derive(Clone, Debug)]
pub struct Acquire<S> {
    inner: S,
    source: Arc<dyn CredentialSource>,
    id: Arc<str>,
}

impl<S> Acquire<S> {
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

impl<S, B, RB> Service<Request<B>> for Acquire<S>
where
    S: Service<Request<B>, Response = Response<RB>, Error = BoxError> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = BoxError;
    /// A credential held by the source (every request but those that wait
    /// for a refresh) is attached in `call` and the inner service called
    /// at once: its future, unboxed, with the record to put on the
    /// response. Waiting for a refresh, or failing, is boxed.
    type Future = Either<WithUsed<S::Future>, BoxFuture<'static, Result<Response<RB>, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let get = match self.source.get() {
            Either::Left(ready) => {
                return match ready.into_inner() {
                    Ok(cred) => {
                        let (used, always) = attach(&mut req, cred, self.id.clone());
                        // The instance that was polled ready is called.
                        Either::Left(WithUsed {
                            inner: self.inner.call(req),
                            used: Some(used),
                            always,
                        })
                    }
                    Err(e) => Either::Right(Box::pin(futures_util::future::ready(Err(
                        unavailable(&req, &self.id, e),
                    )))),
                };
            }
            Either::Right(wait) => wait,
        };
        // No valid token is held: this request waits for a refresh. Keep
        // the instance that was polled ready (tower-service docs).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let id = self.id.clone();
        let started = tokio::time::Instant::now();
        // The generation held before the wait: a wait that ends with the
        // same one got no new token. That is a refresh that failed while
        // the token held stayed valid (a forced refresh after a 401 that
        // marked it rejected), and the old token is sent again.
        let before = self.source.generation();
        Either::Right(Box::pin(async move {
            let got = get.await;
            let fact = crate::facts::RefreshFact {
                trigger: "expired",
                ok: got
                    .as_ref()
                    .is_ok_and(|c| before.is_none_or(|g| g != c.generation)),
                backing_off: got.as_ref().is_err_and(|e| e.backing_off),
                duration: started.elapsed(),
                oauth_error: got.as_ref().err().and_then(|e| e.oauth_error.clone()),
            };
            crate::facts::record(&req, |f| f.refresh = Some(fact));
            let cred = got.map_err(|e| unavailable(&req, &id, e))?;
            let (used, always) = attach(&mut req, cred, id);
            let mut resp = inner.call(req).await?;
            report(&mut resp, used, always);
            Ok(resp)
        }))
    }
}

/// Puts the credential into `req`'s context for inject; returns the record
/// for the response and whether the context asks for it on any response.
fn attach<B>(req: &mut Request<B>, cred: Arc<Credential>, id: Arc<str>) -> (CredentialUsed, bool) {
    let used = CredentialUsed {
        id,
        generation: cred.generation,
        obtained_at: cred.obtained_at,
        expires_at: cred.expires_at,
    };
    let ctx = crate::context::RequestContext::of_mut(req.extensions_mut());
    ctx.acquired = Some(Acquired {
        credential: cred,
        used: used.clone(),
    });
    (used, ctx.report_credential_used)
}

/// Records that `req` could not get credential `id`, and the error.
fn unavailable<B>(req: &Request<B>, id: &Arc<str>, e: CredentialError) -> BoxError {
    crate::facts::record(req, |f| {
        f.rejected_by = Some("credential");
        f.credential = Some(crate::facts::CredentialFact {
            id: id.clone(),
            generation: None,
            outcome: crate::facts::CredentialOutcome::Unavailable,
            obtained_at: None,
            expires_at: None,
        });
    });
    CredentialUnavailable {
        id: id.to_string(),
        reason: e.reason,
    }
    .into()
}

/// Puts `used` on `resp` if it is an error response or `always`; see the
/// module docs.
fn report<RB>(resp: &mut Response<RB>, used: CredentialUsed, always: bool) {
    if always || resp.status().as_u16() >= 400 {
        resp.extensions_mut().insert(used);
    }
}

pin_project! {
    /// The inner service's future; an error response (or any, if `always`)
    /// gets the [`CredentialUsed`] record.
    pub struct WithUsed<F> {
        #[pin]
        inner: F,
        used: Option<CredentialUsed>,
        always: bool,
    }
}

impl<F, RB> Future for WithUsed<F>
where
    F: Future<Output = Result<Response<RB>, BoxError>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = ready!(this.inner.poll(cx))?;
        if let Some(used) = this.used.take() {
            report(&mut resp, used, *this.always);
        }
        Poll::Ready(Ok(resp))
    }
}

impl<F> std::fmt::Debug for WithUsed<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WithUsed").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credential::StaticSource;
    use crate::secret::SecretSource;
    use http::StatusCode;
    use tower::{ServiceExt, service_fn};

    /// Acquire around a service that answers with the status in the
    /// request's path (`/401`) and checks the credential reached it.
    async fn call(path: &str, report: bool) -> Response<()> {
        let source: Arc<dyn CredentialSource> = Arc::new(StaticSource::new(
            "k",
            SecretSource::fixed("canary-acquire-1"),
        ));
        let svc = AcquireLayer::new(source).layer(service_fn(|req: Request<()>| async move {
            let ctx = crate::context::RequestContext::of(req.extensions());
            let acquired = ctx
                .and_then(|c| c.acquired.as_ref())
                .expect("credential attached");
            assert_eq!(&*acquired.used.id, "k");
            assert_eq!(acquired.credential.expose(), "canary-acquire-1");
            // The context carries the secret: its Debug must not show it.
            let shown = format!("{ctx:?}");
            assert!(
                shown.contains("Acquired") && !shown.contains("canary"),
                "{shown}"
            );
            let status: u16 = req.uri().path()[1..].parse()?;
            let mut resp = Response::new(());
            *resp.status_mut() = StatusCode::from_u16(status)?;
            Ok::<_, BoxError>(resp)
        }));
        let mut req = Request::get(path).body(()).unwrap();
        if report {
            crate::context::RequestContext::of_mut(req.extensions_mut()).report_credential_used =
                true;
        }
        svc.oneshot(req).await.unwrap()
    }

    #[tokio::test]
    async fn error_responses_carry_the_credential_used_and_successes_do_not() {
        for status in [400, 401, 403, 503] {
            let resp = call(&format!("/{status}"), false).await;
            let used = resp.extensions().get::<CredentialUsed>();
            assert_eq!(used.map(|u| &*u.id), Some("k"), "status {status}");
        }
        for status in [200, 204, 302] {
            let resp = call(&format!("/{status}"), false).await;
            assert!(
                resp.extensions().get::<CredentialUsed>().is_none(),
                "status {status}"
            );
        }
    }

    /// A source that never holds a valid token for the fast path; its
    /// wait hands out generation `gives`, while `generation()` says
    /// `holds`.
    #[derive(Debug)]
    struct Waiting {
        holds: u64,
        gives: u64,
    }

    impl CredentialSource for Waiting {
        fn id(&self) -> &str {
            "w"
        }
        fn kind(&self) -> &'static str {
            "test"
        }
        fn get(&self) -> crate::credential::GetCredential {
            let cred = Arc::new(Credential::new(
                "canary-waiting".to_owned().into(),
                self.gives,
                std::time::SystemTime::now(),
                None,
            ));
            Either::Right(Box::pin(async move { Ok(cred) }))
        }
        fn generation(&self) -> Option<u64> {
            Some(self.holds)
        }
        fn status(&self) -> crate::credential::CredentialStatus {
            unreachable!("not asked")
        }
    }

    /// A wait that ends with a new generation is a refresh that worked; one
    /// that ends with the generation already held got no new token (a
    /// forced refresh failed and the old token, still valid, is sent
    /// again): the record must not call that a success.
    #[tokio::test]
    async fn a_wait_that_brings_no_new_token_is_not_a_successful_refresh() {
        for (holds, gives, ok) in [(4, 5, true), (5, 5, false)] {
            let source: Arc<dyn CredentialSource> = Arc::new(Waiting { holds, gives });
            let svc = AcquireLayer::new(source).layer(service_fn(|_req: Request<()>| async {
                Ok::<_, BoxError>(Response::new(()))
            }));
            let facts = crate::facts::Facts::new();
            let mut req = Request::get("/").body(()).unwrap();
            crate::context::RequestContext::of_mut(req.extensions_mut()).facts =
                Some(facts.clone());
            svc.oneshot(req).await.unwrap();
            let refresh = facts.snapshot().refresh.expect("the wait is recorded");
            assert_eq!(
                (refresh.trigger, refresh.ok),
                ("expired", ok),
                "{holds} -> {gives}"
            );
        }
    }

    #[tokio::test]
    async fn a_request_that_asks_for_the_record_gets_it_on_success() {
        let resp = call("/200", true).await;
        assert_eq!(
            resp.extensions().get::<CredentialUsed>().map(|u| &*u.id),
            Some("k")
        );
    }
}

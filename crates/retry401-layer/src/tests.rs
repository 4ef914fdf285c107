//! The retry contract against a scripted inner service and source.

use super::*;
use futures_util::FutureExt;
use futures_util::future::ready;
use http_body_util::BodyExt;
use proxy_core::credential::{CredentialError, CredentialStatus, GetCredential};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::SystemTime;
use tower::ServiceExt;

/// A source whose generation moves on invalidate (unless told to fail).
#[derive(Debug, Default)]
struct Source {
    generation: AtomicU64,
    invalidations: AtomicUsize,
    refreshes: AtomicUsize,
    fail: AtomicBool,
    /// Failing because it is backing off (no attempt is made).
    backing_off: AtomicBool,
}

impl CredentialSource for Source {
    fn id(&self) -> &str {
        "crm"
    }
    fn refreshes(&self) -> bool {
        true
    }
    fn kind(&self) -> &'static str {
        "test"
    }
    fn get(&self) -> GetCredential {
        unreachable!("the retry layer never reads credentials itself")
    }
    fn status(&self) -> CredentialStatus {
        unreachable!("the retry layer never reads status")
    }
    fn generation(&self) -> Option<u64> {
        Some(self.generation.load(Ordering::SeqCst))
    }
    fn invalidate(&self, generation: u64) -> BoxFuture<'static, Result<(), CredentialError>> {
        self.invalidations.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            let mut e = CredentialError::new("token endpoint answered 400 invalid_grant");
            e.backing_off = self.backing_off.load(Ordering::SeqCst);
            return ready(Err(e)).boxed();
        }
        if self
            .generation
            .compare_exchange(
                generation,
                generation + 1,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_ok()
        {
            self.refreshes.fetch_add(1, Ordering::SeqCst);
        }
        ready(Ok(())).boxed()
    }
}

/// `GET /` with a facts slot, as the audit layer opens it; and the slot.
fn get_with_facts() -> (Arc<proxy_core::facts::Facts>, Request<ProxyBody>) {
    let facts = proxy_core::facts::Facts::new();
    let mut req = Request::get("/").body(proxy_core::empty()).unwrap();
    proxy_core::context::RequestContext::of_mut(req.extensions_mut()).facts = Some(facts.clone());
    (facts, req)
}

type Inner = tower::util::BoxCloneSyncService<Request<ProxyBody>, Response<ProxyBody>, BoxError>;

/// The inner stack: "injects" the source's generation and answers per a
/// script of statuses, reporting the credential used as acquisition does
/// (on an error response, or on any if the request asks); records the
/// bodies it saw.
fn inner(
    source: Arc<Source>,
    statuses: Vec<u16>,
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    inject: bool,
) -> Inner {
    let calls = Arc::new(AtomicUsize::new(0));
    Inner::new(tower::service_fn(move |req: Request<ProxyBody>| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        let status = statuses[n.min(statuses.len() - 1)];
        let (source, bodies) = (source.clone(), bodies.clone());
        let report = proxy_core::context::RequestContext::of(req.extensions())
            .is_some_and(|c| c.report_credential_used);
        async move {
            let body = req.into_body().collect().await?.to_bytes();
            bodies.lock().unwrap().push(body.to_vec());
            let mut resp = Response::new(proxy_core::full("upstream"));
            *resp.status_mut() = StatusCode::from_u16(status)?;
            if inject && (status >= 400 || report) {
                resp.extensions_mut()
                    .insert(used(source.generation.load(Ordering::SeqCst)));
            }
            Ok::<_, BoxError>(resp)
        }
    }))
}

/// The record acquisition leaves for credential `crm` at `generation`.
fn used(generation: u64) -> CredentialUsed {
    CredentialUsed {
        id: "crm".into(),
        generation,
        obtained_at: SystemTime::now(),
        expires_at: None,
    }
}

async fn run(
    statuses: Vec<u16>,
    body: &'static str,
    policy: RetryPolicy,
    inject: bool,
    fail: bool,
) -> (Response<ProxyBody>, Arc<Source>, Vec<Vec<u8>>) {
    let source = Arc::new(Source {
        generation: AtomicU64::new(7),
        ..Default::default()
    });
    source.fail.store(fail, Ordering::SeqCst);
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc = Retry401Layer::new(source.clone(), policy).layer(inner(
        source.clone(),
        statuses,
        bodies.clone(),
        inject,
    ));
    let req = Request::post("/x").body(proxy_core::full(body)).unwrap();
    let resp = svc.oneshot(req).await.unwrap();
    let seen = bodies.lock().unwrap().clone();
    (resp, source, seen)
}

#[tokio::test]
async fn recovers_with_one_refresh_and_an_identical_replay() {
    let (resp, source, bodies) = run(
        vec![401, 200],
        "{\"id\":1}",
        RetryPolicy::default(),
        true,
        false,
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "recovered");
    let o = resp.extensions().get::<RetryOutcome>().unwrap();
    assert_eq!((o.rejected.generation, o.replay_generation), (7, Some(8)));
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
    assert_eq!(bodies, vec![b"{\"id\":1}".to_vec(), b"{\"id\":1}".to_vec()]);
}

#[tokio::test]
async fn replays_once_only_and_says_still_unauthorized() {
    let (resp, _, bodies) = run(vec![401, 401, 401], "", RetryPolicy::default(), true, false).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "still_unauthorized");
    assert_eq!(bodies.len(), 2);
}

#[tokio::test]
async fn refresh_failure_returns_the_first_401() {
    let (resp, source, bodies) = run(vec![401, 200], "x", RetryPolicy::default(), true, true).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "refresh_failed");
    assert_eq!(bodies.len(), 1);
    assert_eq!(source.invalidations.load(Ordering::SeqCst), 1);
    let o = resp.extensions().get::<RetryOutcome>().unwrap();
    assert!(
        o.refresh_error
            .as_deref()
            .unwrap()
            .contains("invalid_grant")
    );
}

/// A credential backing off makes no attempt: the forced refresh is
/// recorded as not run, and the 401 stands as `refresh_failed`.
#[tokio::test]
async fn a_credential_backing_off_records_no_forced_refresh_run() {
    let source = Arc::new(Source {
        generation: AtomicU64::new(7),
        fail: AtomicBool::new(true),
        backing_off: AtomicBool::new(true),
        ..Default::default()
    });
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc = Retry401Layer::new(source.clone(), RetryPolicy::default()).layer(inner(
        source.clone(),
        vec![401, 200],
        bodies.clone(),
        true,
    ));
    let (facts, req) = get_with_facts();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "refresh_failed");
    let seen = facts.snapshot();
    assert_eq!(seen.retry, Some("refresh_failed"));
    let refresh = seen.refresh.expect("the forced refresh is recorded");
    assert_eq!(
        (refresh.trigger, refresh.ok, refresh.backing_off),
        ("forced", false, true)
    );
}

#[tokio::test]
async fn no_injected_credential_no_retry() {
    let (resp, source, bodies) =
        run(vec![401, 200], "x", RetryPolicy::default(), false, false).await;
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get(X_LATCHKEY_RETRY).is_none());
    assert_eq!(
        (bodies.len(), source.invalidations.load(Ordering::SeqCst)),
        (1, 0)
    );
}

#[tokio::test]
async fn oversized_bodies_are_not_replayed() {
    let policy = RetryPolicy {
        max_replay_body: 4,
        ..RetryPolicy::default()
    };
    let (resp, source, bodies) = run(vec![401, 200], "longer than four", policy, true, false).await;
    assert_eq!(resp.status(), 401);
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "not_replayable");
    assert_eq!(bodies, vec![b"longer than four".to_vec()]);
    // Not replayed, but the refused generation is invalidated (in the
    // background) so the requests after it get a new credential.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert_eq!(source.invalidations.load(Ordering::SeqCst), 1);
    assert_eq!(source.generation.load(Ordering::SeqCst), 8);
}

#[tokio::test]
async fn configurable_statuses() {
    let policy = RetryPolicy {
        statuses: vec![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN],
        ..RetryPolicy::default()
    };
    let (resp, _, _) = run(vec![403, 200], "", policy, true, false).await;
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "recovered");
    let (resp, _, bodies) = run(vec![403, 200], "", RetryPolicy::default(), true, false).await;
    assert_eq!((resp.status().as_u16(), bodies.len()), (403, 1));
}

#[tokio::test]
async fn a_source_with_nothing_new_is_not_replayed() {
    // A static key: invalidate succeeds but the generation stays.
    #[derive(Debug)]
    struct Static;
    impl CredentialSource for Static {
        fn id(&self) -> &str {
            "key"
        }
        fn kind(&self) -> &'static str {
            "static"
        }
        fn get(&self) -> GetCredential {
            unreachable!("not read by the retry layer")
        }
        fn status(&self) -> CredentialStatus {
            unreachable!("not read by the retry layer")
        }
        fn generation(&self) -> Option<u64> {
            Some(7)
        }
    }
    let probe = Arc::new(Source {
        generation: AtomicU64::new(7),
        ..Default::default()
    });
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let svc = Retry401Layer::new(Arc::new(Static), RetryPolicy::default()).layer(inner(
        probe,
        vec![401, 200],
        bodies.clone(),
        true,
    ));
    let (facts, req) = get_with_facts();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().get(X_LATCHKEY_RETRY).is_none());
    assert_eq!(bodies.lock().unwrap().len(), 1);
    // The audit record must not claim a refresh or a retry that never ran.
    let seen = facts.snapshot();
    assert_eq!((seen.refresh, seen.retry), (None, None));
}

#[tokio::test]
async fn settle_polled_after_completion_answers_an_error_not_a_panic() {
    let source = Arc::new(Source::default());
    let replayer = Arc::new(inner(
        source.clone(),
        vec![200],
        Arc::new(Mutex::new(Vec::new())),
        true,
    ));
    let first: Call = Box::pin(async { Ok(Response::new(proxy_core::empty())) });
    let mut settle = Settle::new(
        first,
        Err(NotReplayable::Body),
        replayer,
        source,
        Arc::new(RetryPolicy::default()),
        None,
    );
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let once = std::pin::Pin::new(&mut settle).poll(&mut cx);
    assert!(matches!(once, std::task::Poll::Ready(Ok(ref r)) if r.status() == 200));
    let again = std::pin::Pin::new(&mut settle).poll(&mut cx);
    assert!(matches!(again, std::task::Poll::Ready(Err(_))));
}

/// Polled again after a retry answered: an error, not a poll of the
/// finished retry (which panics).
#[tokio::test]
async fn settle_polled_after_a_retry_answered_is_an_error_not_a_panic() {
    let source = Arc::new(Source {
        generation: AtomicU64::new(7),
        ..Default::default()
    });
    let replayer = Arc::new(inner(
        source.clone(),
        vec![200],
        Arc::new(Mutex::new(Vec::new())),
        true,
    ));
    let first: Call = Box::pin(async {
        let mut resp = Response::new(proxy_core::empty());
        *resp.status_mut() = StatusCode::UNAUTHORIZED;
        resp.extensions_mut().insert(used(7));
        Ok(resp)
    });
    let (parts, _) = Request::get("/x").body(()).unwrap().into_parts();
    let again = Again::capture(&parts, crate::replay::Replay::default());
    let mut settle = Settle::new(
        first,
        Ok(again),
        replayer,
        source.clone(),
        Arc::new(RetryPolicy::default()),
        None,
    );
    let resp = std::future::poll_fn(|cx| std::pin::Pin::new(&mut settle).poll(cx))
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "recovered");
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    let again = std::pin::Pin::new(&mut settle).poll(&mut cx);
    assert!(matches!(again, std::task::Poll::Ready(Err(_))));
}

/// A replay that fails on its way (the upstream unreachable after the
/// refresh) still leaves the retry in the record and in the rendered
/// error's `x-latchkey-retry`: the credential was replaced (`recovered`),
/// and the replay's failure is the caller's.
#[tokio::test]
async fn a_replay_that_fails_on_its_way_is_still_recorded() {
    let source = Arc::new(Source {
        generation: AtomicU64::new(7),
        ..Default::default()
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let answering = {
        let calls = calls.clone();
        Inner::new(tower::service_fn(move |_req: Request<ProxyBody>| {
            let n = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if n > 0 {
                    return Err::<Response<ProxyBody>, BoxError>("upstream unreachable".into());
                }
                let mut resp = Response::new(proxy_core::empty());
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                resp.extensions_mut().insert(used(7));
                Ok(resp)
            }
        }))
    };
    let svc = Retry401Layer::new(source.clone(), RetryPolicy::default()).layer(answering);
    let (facts, req) = get_with_facts();
    let err = svc.oneshot(req).await.unwrap_err();
    assert_eq!(err.to_string(), "upstream unreachable");
    // Rendered, it says it went through the retry.
    let rendered = proxy_core::edge::error_response(&*err, None);
    assert_eq!(rendered.headers()[X_LATCHKEY_RETRY], "recovered");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "one replay");
    let seen = facts.snapshot();
    assert_eq!(seen.retry, Some("recovered"));
    assert!(seen.refresh.is_some_and(|r| r.ok && r.trigger == "forced"));
}

/// A 401 for a generation another request's refresh has already replaced:
/// replayed with the current credential, and the record claims no refresh
/// for this request (none ran for it).
#[tokio::test]
async fn a_generation_already_replaced_is_replayed_without_a_refresh_fact() {
    let source = Arc::new(Source {
        generation: AtomicU64::new(8),
        ..Default::default()
    });
    let rejected_first = Arc::new(AtomicUsize::new(0));
    let answering = {
        let n = rejected_first.clone();
        Inner::new(tower::service_fn(move |_req: Request<ProxyBody>| {
            let first = n.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let mut resp = Response::new(proxy_core::empty());
                if first {
                    *resp.status_mut() = StatusCode::UNAUTHORIZED;
                }
                resp.extensions_mut()
                    .insert(used(if first { 7 } else { 8 }));
                Ok::<_, BoxError>(resp)
            }
        }))
    };
    let svc = Retry401Layer::new(source.clone(), RetryPolicy::default()).layer(answering);
    let (facts, req) = get_with_facts();
    let resp = svc.oneshot(req).await.unwrap();
    assert_eq!(resp.headers()[X_LATCHKEY_RETRY], "recovered");
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 0);
    let seen = facts.snapshot();
    assert_eq!(seen.retry, Some("recovered"));
    assert_eq!(seen.refresh, None, "no refresh ran for this request");
}

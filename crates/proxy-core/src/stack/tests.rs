//! [`Dispatch`]: a route's stack is called at once when ready, and waited
//! for when it is not.

use super::*;
use crate::client_auth::AuthorizeLayer;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::sync::Semaphore;
use tower::limit::ConcurrencyLimitLayer;

/// A public route `/r/` whose stack admits one request at a time and
/// answers once `gate` gives a permit; `calls` counts requests that
/// reached it.
fn dispatch(gate: Arc<Semaphore>, calls: Arc<AtomicUsize>) -> Dispatch {
    let inner = tower::service_fn(move |req: Request<ProxyBody>| {
        let gate = gate.clone();
        let calls = calls.clone();
        async move {
            calls.fetch_add(1, Ordering::SeqCst);
            gate.acquire().await?.forget();
            Ok::<_, BoxError>(Response::new(crate::boxed(http_body_util::Full::new(
                bytes::Bytes::from(req.uri().path().to_owned()),
            ))))
        }
    });
    let limited = RouteService::new(ConcurrencyLimitLayer::new(1).layer(inner));
    let service = AuthorizeLayer::new(Arc::from("r"), true, Vec::<Arc<str>>::new()).layer(limited);
    let mut router = Router::new();
    let route = Arc::new(Route {
        id: Arc::from("r"),
        service,
    });
    assert!(router.insert(None, Some("/r/"), route).is_ok());
    Dispatch {
        router: Arc::new(router),
        escaped_slashes: Default::default(),
    }
}

fn get(path: &str) -> Request<ProxyBody> {
    Request::get(path)
        .header(header::HOST, "proxy.test")
        .body(crate::boxed(http_body_util::Empty::new()))
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn body(resp: Response<ProxyBody>) -> String {
    let bytes = resp
        .into_body()
        .collect()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .to_bytes();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[tokio::test]
async fn a_route_that_is_not_ready_is_waited_for_then_called() {
    let gate = Arc::new(Semaphore::new(0));
    let calls = Arc::new(AtomicUsize::new(0));
    let mut d = dispatch(gate.clone(), calls.clone());

    // Ready: called at once (the route's future runs).
    let first = tokio::spawn(d.call(get("/r/first")));
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // The one slot is taken: this request waits for readiness, not called.
    let second = tokio::spawn(d.call(get("/r/second")));
    for _ in 0..50 {
        tokio::task::yield_now().await;
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "second called while not ready"
    );
    assert!(!second.is_finished());

    // The first answers and frees the slot: the second is woken and called.
    gate.add_permits(1);
    let resp = first.await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        body(resp.unwrap_or_else(|e| panic!("{e}"))).await,
        "/r/first"
    );
    while calls.load(Ordering::SeqCst) < 2 {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1);
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), second)
        .await
        .unwrap_or_else(|_| panic!("the waiting request was never woken"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        body(resp.unwrap_or_else(|e| panic!("{e}"))).await,
        "/r/second"
    );
}

#[tokio::test]
async fn no_route_is_an_error_without_calling_any_stack() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut d = dispatch(Arc::new(Semaphore::new(1)), calls.clone());
    let err = d.call(get("/elsewhere")).await.err();
    assert!(err.is_some_and(|e| e.is::<NoRoute>()));
    assert_eq!(calls.load(Ordering::SeqCst), 0);
}

/// A route stack whose readiness fails.
#[derive(Clone)]
struct Broken;

impl Service<Request<ProxyBody>> for Broken {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = Ready<Result<Response<ProxyBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Err("route stack failed".into()))
    }

    fn call(&mut self, _req: Request<ProxyBody>) -> Self::Future {
        panic!("called although not ready");
    }
}

#[tokio::test]
async fn a_route_whose_readiness_fails_answers_with_that_error() {
    let service = AuthorizeLayer::new(Arc::from("r"), true, Vec::<Arc<str>>::new())
        .layer(RouteService::new(Broken));
    let mut router = Router::new();
    let route = Arc::new(Route {
        id: Arc::from("r"),
        service,
    });
    assert!(router.insert(None, Some("/r/"), route).is_ok());
    let mut d = Dispatch {
        router: Arc::new(router),
        escaped_slashes: Default::default(),
    };
    let err = d.call(get("/r/x")).await.err();
    assert_eq!(
        err.map(|e| e.to_string()).as_deref(),
        Some("route stack failed")
    );
}

/// An HTTP/1.1 request names its host (RFC 9112 3.2); HTTP/1.0 and h2
/// need not, and an absolute-form target names it.
#[tokio::test]
async fn an_http11_request_without_a_host_is_refused() {
    let mut d = dispatch(Arc::new(Semaphore::new(8)), Arc::new(AtomicUsize::new(0)));
    let bare = |uri: &str, version| {
        let mut req = get(uri);
        req.headers_mut().remove(header::HOST);
        *req.version_mut() = version;
        req
    };
    let err = d.call(bare("/r/x", http::Version::HTTP_11)).await.err();
    assert_eq!(
        err.map(|e| e.to_string()).as_deref(),
        Some("bad request: an HTTP/1.1 request must have a Host header")
    );
    for (uri, version) in [
        ("/r/x", http::Version::HTTP_10),
        ("/r/x", http::Version::HTTP_2),
        ("http://proxy.test/r/x", http::Version::HTTP_11),
    ] {
        let resp = d.call(bare(uri, version)).await;
        assert!(resp.is_ok(), "{uri} {version:?}: {:?}", resp.err());
    }
}

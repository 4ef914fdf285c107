//! End-to-end tests of the proxy's own error responses (404, 401, 403, 502,
//! 504, 503, 413) and of an upstream's 401 passing through unchanged.

mod support;

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::*;
use support::*;

/// Two clients (`billing` on `payments`, `search` on `search`) and two routes.
async fn two_client_proxy(payments: &Upstream, search: &Upstream) -> TestProxy {
    start_proxy(&config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [payments]
  - id: search
    token: {{ value: \"{OTHER_TOKEN}\" }}
    routes: [search]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
routes:
  - id: payments
    match: {{ path_prefix: /payments/ }}
    upstream: {}
    credential: upstream-key
  - id: search
    match: {{ path_prefix: /search/ }}
    upstream: {}
    credential: upstream-key
",
        payments.url(),
        search.url()
    )))
    .await
}

#[tokio::test]
async fn unknown_route_is_404_no_route() {
    let up = echo_upstream().await;
    let p = two_client_proxy(&up, &up).await;
    let resp = get_as_billing(&p, "/nowhere/x?q=secret-query", &[]).await;
    let msg = assert_proxy_error(&resp, 404, "no_route");
    assert!(msg.starts_with("no route matches host "), "{msg}");
    assert!(msg.ends_with(" and path \"/nowhere/x\""), "{msg}");
    assert!(
        !msg.contains("secret-query"),
        "the query is never echoed: {msg}"
    );
    assert_uuid(header(&resp.1, "x-request-id").unwrap());
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn missing_token_is_401_client_unauthenticated() {
    let up = echo_upstream().await;
    let p = two_client_proxy(&up, &up).await;
    let resp = get(&p.url("/payments/x"), &[("x-request-id", "rid-missing")]).await;
    let msg = assert_proxy_error(&resp, 401, "client_unauthenticated");
    assert_eq!(
        msg,
        "this route requires a proxy token (Authorization: Bearer or Proxy-Authorization: Bearer)"
    );
    assert_eq!(header(&resp.1, "x-request-id"), Some("rid-missing"));
    // A token in a scheme other than Bearer is no token.
    let basic = get(
        &p.url("/payments/x"),
        &[("authorization", "Basic Zm9vOmJhcg==")],
    )
    .await;
    assert_proxy_error(&basic, 401, "client_unauthenticated");
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn wrong_token_is_401_client_unauthenticated() {
    let up = echo_upstream().await;
    let p = two_client_proxy(&up, &up).await;
    for name in ["authorization", "proxy-authorization"] {
        let resp = get(
            &p.url("/payments/x"),
            &[(name, "Bearer not-a-client-token")],
        )
        .await;
        let msg = assert_proxy_error(&resp, 401, "client_unauthenticated");
        assert_eq!(
            msg,
            "the proxy token presented matches no configured client"
        );
    }
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn client_not_listed_on_the_route_is_403_client_forbidden() {
    let payments = echo_upstream().await;
    let search = echo_upstream().await;
    let p = two_client_proxy(&payments, &search).await;
    let token = bearer(OTHER_TOKEN);
    let resp = get(&p.url("/payments/x"), &[("authorization", &token)]).await;
    let msg = assert_proxy_error(&resp, 403, "client_forbidden");
    assert_eq!(
        msg,
        "client \"search\" is not allowed on route \"payments\""
    );
    // The same token works on its own route.
    echoed(&get(&p.url("/search/x"), &[("authorization", &token)]).await);
    assert_eq!((payments.hit_count(), search.hit_count()), (0, 1));
}

#[tokio::test]
async fn wildcard_client_may_use_every_route() {
    let a = echo_upstream().await;
    let b = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[\"*\"]",
        &format!(
            "  - id: a
    match: {{ path_prefix: /a/ }}
    upstream: {}
    credential: upstream-key
  - id: b
    match: {{ host: b.example.com }}
    upstream: {}
",
            a.url(),
            b.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/a/1", &[]).await);
    assert_eq!(v["uri"], "/a/1");
    let v = echoed(&get_as_billing(&p, "/b/2", &[("host", "b.example.com")]).await);
    assert_eq!(v["uri"], "/b/2");
    // A route without a credential forwards without one.
    assert_eq!(echoed_header(&v, "authorization"), None);
    assert_eq!((a.hit_count(), b.hit_count()), (1, 1));
}

#[tokio::test]
async fn public_route_needs_no_token() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[private]",
        &format!(
            "  - id: open
    match: {{ path_prefix: /open/ }}
    upstream: {url}
    credential: upstream-key
    inject: {{ header: x-api-key }}
    public: true
  - id: private
    match: {{ path_prefix: /private/ }}
    upstream: {url}
",
            url = up.url()
        ),
    ))
    .await;
    let v = echoed(&get(&p.url("/open/x"), &[]).await);
    assert_eq!(echoed_header_all(&v, "x-api-key"), [UPSTREAM_KEY]);
    // A known client is welcome too, even though it does not list the route.
    echoed(&get_as_billing(&p, "/open/x", &[]).await);
    // An unknown token is refused even on a public route.
    let resp = get(&p.url("/open/x"), &[("authorization", "Bearer nope")]).await;
    assert_proxy_error(&resp, 401, "client_unauthenticated");
    assert_eq!(up.hit_count(), 2);
}

#[tokio::test]
async fn upstream_down_is_502_upstream_unreachable() {
    let down = closed_port_url().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {down}
    credential: upstream-key
"
        ),
    ))
    .await;
    let resp = get_as_billing(&p, "/api/x", &[]).await;
    let msg = assert_proxy_error(&resp, 502, "upstream_unreachable");
    assert!(
        msg.starts_with(&format!("upstream {down} is unreachable: ")),
        "{msg}"
    );
}

#[tokio::test]
async fn slow_upstream_is_504_upstream_timeout() {
    let up = slow_upstream(Duration::from_secs(2)).await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    timeout: 200ms
",
            up.url()
        ),
    ))
    .await;
    let started = tokio::time::Instant::now();
    let resp = get_as_billing(&p, "/api/x", &[]).await;
    let waited = started.elapsed();
    let msg = assert_proxy_error(&resp, 504, "upstream_timeout");
    assert_eq!(
        msg,
        format!("upstream {} did not respond within 200ms", up.url())
    );
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_millis(1900),
        "answered after {waited:?}"
    );
}

/// A route with a 200 ms `timeout` in front of `up`, whose requests are
/// not buffered for a 401 replay (so the body goes out as it arrives).
async fn short_timeout_proxy(up: &Upstream) -> TestProxy {
    start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    timeout: 200ms
    retry: {{ max_replay_body: 1 }}
",
            up.url()
        ),
    ))
    .await
}

/// POSTs `first`, declaring `declared` bytes, and then sends nothing more
/// while holding the body open (when `stall`) or ends it.
#[expect(clippy::unwrap_used, reason = "a failed request fails the test")]
async fn post_declared(p: &TestProxy, declared: usize, first: &'static [u8], stall: bool) -> Resp {
    let chunks =
        futures_util::stream::iter([Ok::<_, Infallible>(Frame::data(Bytes::from_static(first)))]);
    let rest = futures_util::stream::poll_fn(move |_| {
        if stall {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(None)
        }
    });
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = Request::post(p.url("/api/upload"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .header("content-length", declared)
        .body(StreamBody::new(futures_util::StreamExt::chain(
            chunks, rest,
        )))
        .unwrap();
    with_timeout(async {
        let (parts, body) = client.request(req).await.unwrap().into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    })
    .await
}

/// A caller that stops sending its body: the route's timeout runs out
/// while the upstream (which reads the whole body before it answers)
/// waits for the rest. The caller is told the stall was its own (408),
/// not the upstream's (504).
#[tokio::test]
async fn stalled_upload_is_408_request_timeout_not_the_upstreams() {
    let up = echo_upstream().await;
    let p = short_timeout_proxy(&up).await;
    let resp = post_declared(&p, 100, b"0123456789", true).await;
    let msg = assert_proxy_error(&resp, 408, "request_timeout");
    assert_eq!(
        msg,
        "the caller had not sent the whole request body when the route's timeout of 200ms ran out: the request waited for the caller, not for the upstream"
    );
}

/// The whole body sent, and the upstream still silent: the upstream's
/// timeout, as before.
#[tokio::test]
async fn an_upload_sent_in_full_to_a_slow_upstream_is_504() {
    let up = slow_upstream(Duration::from_secs(3)).await;
    let p = short_timeout_proxy(&up).await;
    let resp = post_declared(&p, 10, b"0123456789", false).await;
    let msg = assert_proxy_error(&resp, 504, "upstream_timeout");
    assert_eq!(
        msg,
        format!("upstream {} did not respond within 200ms", up.url())
    );
}

#[tokio::test]
async fn connect_timeout_is_504_naming_the_configured_limit() {
    // A listener whose accept queue is full: Linux drops further SYNs, so a
    // connect attempt hangs until the proxy's connect_timeout fires.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    let mut saturated = false;
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(100),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            Ok(Ok(s)) => fillers.push(s),
            Ok(Err(e)) => panic!("connect to the saturated listener failed: {e}"),
            Err(_) => {
                saturated = true;
                break;
            }
        }
    }
    assert!(saturated, "the accept queue never filled up");

    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: http://{addr}
    credential: upstream-key
    connect_timeout: 150ms
    timeout: 5s
"
        ),
    ))
    .await;
    let resp = get_as_billing(&p, "/api/x", &[]).await;
    let msg = assert_proxy_error(&resp, 504, "upstream_timeout");
    assert_eq!(
        msg,
        format!("upstream http://{addr} did not connect within 150ms")
    );
    drop((listener, fillers));
}

#[tokio::test]
async fn unset_credential_is_503_and_never_forwarded() {
    assert!(
        std::env::var_os(UNSET_VAR).is_none(),
        "{UNSET_VAR} must not be set"
    );
    let up = echo_upstream().await;
    let p = start_proxy(&config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [api]
credentials:
  - id: missing-key
    static: {{ env: {UNSET_VAR} }}
routes:
  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: missing-key
",
        up.url()
    )))
    .await;
    let resp = get_as_billing(&p, "/api/x", &[]).await;
    let msg = assert_proxy_error(&resp, 503, "credential_unavailable");
    assert_eq!(
        msg,
        format!(
            "credential \"missing-key\" is unavailable: environment variable {UNSET_VAR} is not set"
        )
    );
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn credential_that_cannot_be_a_header_value_is_503_and_never_forwarded() {
    let up = echo_upstream().await;
    let p = start_proxy(&config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [api]
credentials:
  - id: bad-key
    static: {{ value: \"{UPSTREAM_KEY}\\nnext-line\" }}
routes:
  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: bad-key
",
        up.url()
    )))
    .await;
    let resp = get_as_billing(&p, "/api/x", &[]).await;
    let msg = assert_proxy_error(&resp, 503, "credential_unavailable");
    assert_eq!(
        msg,
        "credential \"bad-key\" is unavailable: literal value contains a control character (such as a line break inside the value), so it cannot be sent in a header"
    );
    assert_eq!(up.hit_count(), 0);
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_never_forwarded() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
    max_request_body: 1KiB
",
            up.url()
        ),
    ))
    .await;
    let auth = bearer(CLIENT_TOKEN);
    let big = Request::post(p.url("/api/upload"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::from(vec![b'x'; 4096])))
        .unwrap();
    let resp = send(big).await;
    let msg = assert_proxy_error(&resp, 413, "body_too_large");
    assert_eq!(msg, "request body exceeds the route's limit of 1024 bytes");
    assert_eq!(up.hit_count(), 0);

    // Exactly at the limit is fine.
    let exact = Request::post(p.url("/api/upload"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::from(vec![b'y'; 1024])))
        .unwrap();
    let v = echoed(&send(exact).await);
    assert_eq!(v["body"].as_str().unwrap().len(), 1024);
    assert_eq!(up.hit_count(), 1);

    // Without a Content-Length the limit is enforced while streaming (the
    // request has reached the upstream by then, but never completes).
    let chunks = futures_util::stream::iter(
        (0..4).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'c'; 1024])))),
    );
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<StreamBody<_>>();
    let req = Request::post(p.url("/api/upload"))
        .header("authorization", &auth)
        .body(StreamBody::new(chunks))
        .unwrap();
    let resp = with_timeout(async {
        let (parts, body) = client.request(req).await.unwrap().into_parts();
        (
            parts.status,
            parts.headers,
            body.collect().await.unwrap().to_bytes(),
        )
    })
    .await;
    let msg = assert_proxy_error(&resp, 413, "body_too_large");
    assert_eq!(msg, "request body exceeds the route's limit of 1024 bytes");
}

#[tokio::test]
async fn upstream_401_passes_through_unchanged() {
    let up = status_upstream(401).await;
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {}
    credential: upstream-key
",
            up.url()
        ),
    ))
    .await;
    let (status, headers, body) = get_as_billing(&p, "/api/x", &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(header(&headers, "x-latchkey-error"), None);
    assert_eq!(header(&headers, "www-authenticate"), None);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(json(&body), json!({ "status": 401 }));
    assert_uuid(header(&headers, "x-request-id").unwrap());
    assert_eq!(up.hit_count(), 1);
}

/// `x-latchkey-*` is latchkey's own: an upstream that sets
/// `x-latchkey-error` (or `x-latchkey-retry`) cannot pass its answer off
/// as one of latchkey's errors.
#[tokio::test]
async fn an_upstreams_own_x_latchkey_headers_do_not_reach_the_caller() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s
                .write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\nx-latchkey-error: credential_unavailable\r\n\
                      x-latchkey-retry: recovered\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                )
                .await;
        }
    });
    let p = start_proxy(&billing_config(
        "[api]",
        &format!(
            "  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: http://{up}
    credential: upstream-key
    retry: {{ enabled: false }}
"
        ),
    ))
    .await;
    let (status, headers, _) = get_as_billing(&p, "/api/x", &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&headers, "x-latchkey-error"), None);
    assert_eq!(header(&headers, "x-latchkey-retry"), None);
}

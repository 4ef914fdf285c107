//! End-to-end tests of the admin endpoints (healthz, readyz, unknown paths)
//! and of graceful stop: closed ports, draining in-flight requests, the
//! drain timeout.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::TokioExecutor;
use serde_json::json;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::*;
use support::*;

/// Like [`get`], but reports connection failures instead of panicking.
async fn try_get(url: &str) -> Result<Resp, String> {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = Request::get(url).body(Full::new(Bytes::new())).unwrap();
    with_timeout(async move {
        let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|e| format!("{e:?}"))?
            .to_bytes();
        Ok((parts.status, parts.headers, body))
    })
    .await
}

// ---------------------------------------------------------------------------
// Admin
// ---------------------------------------------------------------------------

#[tokio::test]
async fn healthz_is_200() {
    let p = start_proxy(&config("")).await;
    let (status, headers, body) = get(&format!("{}/healthz", p.admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(json(&body), json!({ "status": "ok" }));
}

#[tokio::test]
async fn readyz_is_200_when_every_credential_resolves() {
    let up = echo_upstream().await;
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
    let (status, _, body) = get(&format!("{}/readyz", p.admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json(&body),
        json!({
            "ready": true,
            "serving": true,
            "all_resolved": true,
            "routes": 1,
            "credentials": { "upstream-key": "ok" },
            "stores": {},
            "clients": { "billing": "ok" },
        })
    );
}

/// Once every credential has resolved, one that fails later (here: a
/// reload adds one whose variable is unset) is named in `/readyz` but does
/// not make the process unready: every replica would fail it at once, and
/// an empty Service would take every route down with it.
#[tokio::test]
async fn a_credential_failing_after_readiness_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latchkey.yaml");
    let base = config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [\"*\"]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
"
    ));
    std::fs::write(&path, &base).unwrap();
    let running = latchkey::start_with(
        latchkey::Config::from_yaml(&base, "latchkey.yaml").unwrap(),
        "latchkey.yaml",
        latchkey::StartOptions {
            config_path: Some(path.clone()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let admin = format!("http://{}", running.admin_addr.unwrap());
    assert_eq!(get(&format!("{admin}/readyz"), &[]).await.0, StatusCode::OK);
    std::fs::write(
        &path,
        format!("{base}  - id: missing-key\n    static: {{ env: {UNSET_VAR} }}\n"),
    )
    .unwrap();
    running.reload().await.unwrap();
    let (status, _, body) = get(&format!("{admin}/readyz"), &[]).await;
    let body = json(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["ready"], true);
    assert_eq!(body["all_resolved"], false);
    assert_eq!(
        body["credentials"]["missing-key"],
        format!("environment variable {UNSET_VAR} is not set")
    );
    // Draining still makes it unready.
    assert!(running.shutdown().await);
}

#[tokio::test]
async fn readyz_is_503_naming_an_unset_credential_without_values() {
    assert!(
        std::env::var_os(UNSET_VAR).is_none(),
        "{UNSET_VAR} must not be set"
    );
    let p = start_proxy(&config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [\"*\"]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
  - id: missing-key
    static: {{ env: {UNSET_VAR} }}
"
    )))
    .await;
    let (status, headers, body) = get(&format!("{}/readyz", p.admin), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(
        json(&body),
        json!({
            "ready": false,
            "serving": true,
            "all_resolved": false,
            "routes": 0,
            "credentials": {
                "upstream-key": "ok",
                "missing-key": format!("environment variable {UNSET_VAR} is not set"),
            },
            "stores": {},
            "clients": { "billing": "ok" },
        })
    );
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("missing-key") && text.contains("is not set"),
        "{text}"
    );
    assert!(
        !text.contains(UPSTREAM_KEY) && !text.contains(CLIENT_TOKEN),
        "{text}"
    );
}

/// A credential that had its token at startup and lost it (the token
/// expired, the endpoint now refuses) before any readiness probe came has
/// resolved once: latchkey checks by itself every second until everything
/// has, so `/readyz` is 200 (with `all_resolved: false` naming it), as for
/// one that fails after a probe saw it. One that never had a usable token
/// (the endpoint hands out tokens already expired) stays 503: a broken new
/// pod must not take traffic.
#[tokio::test]
async fn readyz_counts_a_credential_that_resolved_before_the_first_probe() {
    let up = echo_upstream().await;
    let (good, broken) = (
        support::gauges::endpoint().await,
        support::gauges::endpoint().await,
    );
    good.set_expires_in_f64(2.0);
    broken.set_expires_in_f64(0.0);
    let yaml = |ep: &support::token_endpoint::TokenEndpoint| {
        // Refreshed 100 ms before expiry, not at half its life.
        let credential = format!(
            "{}\n    refresh: {{ buffer: 100ms }}",
            support::gauges::oauth(ep, "r1")
        );
        support::gauges::yaml(CLIENT_TOKEN, &up.url(), &credential, "")
    };
    let p = start_proxy(&yaml(&good)).await;
    let never = start_proxy(&yaml(&broken)).await;
    // The self-check sees the first token (it runs every second), with no
    // probe yet.
    let state = p.running.as_ref().unwrap().admin_state();
    with_timeout(async {
        while !state
            .resolved_once
            .load(std::sync::atomic::Ordering::Acquire)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    good.set_failure(Some(support::token_endpoint::Failure::InvalidGrant));
    // Past the 2 s token's expiry, its refresh failed.
    with_timeout(async {
        loop {
            let body = json(&get(&format!("{}/readyz", p.admin), &[]).await.2);
            if body["credentials"]["gauge-a"] != json!("ok") {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    let (status, _, body) = get(&format!("{}/readyz", p.admin), &[]).await;
    let body = json(&body);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["all_resolved"], json!(false), "{body}");
    assert_ne!(body["credentials"]["gauge-a"], json!("ok"), "{body}");
    let (status, _, body) = get(&format!("{}/readyz", never.admin), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{}", json(&body));
}

#[tokio::test]
async fn unknown_admin_path_is_404_json() {
    let p = start_proxy(&config("")).await;
    let (status, headers, body) = get(&format!("{}/nope", p.admin), &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
    assert_eq!(
        json(&body),
        json!({ "error": { "code": "not_found", "message": "no admin endpoint /nope" } })
    );
}
/// A wrong method on a known admin endpoint is 405 with `Allow`; on an
/// unknown path it is 404, as for GET (a typo is not a method problem).
#[tokio::test]
async fn wrong_method_is_405_with_allow_unknown_path_404() {
    let p = start_proxy(&config("")).await;
    for path in ["/healthz", "/readyz", "/metrics"] {
        let req = Request::post(format!("{}{path}", p.admin))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let (status, headers, body) = send(req).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(header(&headers, "allow"), Some("GET, HEAD"), "{path}");
        assert_eq!(json(&body)["error"]["code"], "method_not_allowed");
    }
    let req = Request::post(format!("{}/v0/reload", p.admin))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (status, _, body) = send(req).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"]["code"], "not_found");
}

// ---------------------------------------------------------------------------
// Graceful stop
// ---------------------------------------------------------------------------

fn addrs(p: &TestProxy) -> (SocketAddr, SocketAddr) {
    let r = p.running.as_ref().unwrap();
    (
        r.proxy_addr,
        r.admin_addr.expect("admin listener configured"),
    )
}

#[tokio::test]
async fn stop_returns_true_and_closes_the_ports() {
    let up = echo_upstream().await;
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
    let (proxy_addr, admin_addr) = addrs(&p);
    echoed(&get_as_billing(&p, "/api/x", &[]).await);
    assert!(with_timeout(p.stop()).await, "a clean stop returns true");
    for (what, addr) in [("proxy", proxy_addr), ("admin", admin_addr)] {
        let conn = with_timeout(tokio::net::TcpStream::connect(addr)).await;
        assert!(
            conn.is_err(),
            "the {what} port {addr} still accepts connections after stop"
        );
    }
}

/// An idle h2 caller that does not answer the GOAWAY's PING (a peer that is
/// gone, a NAT that dropped the flow, a suspended client) has nothing in
/// flight: it does not hold the drain to `drain_timeout` (8 s here) nor
/// make the stop unclean; it is dropped after the 2 s stop grace.
#[tokio::test]
async fn stop_does_not_wait_for_an_idle_h2_caller_that_does_not_answer() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let p = start_proxy(
        "proxy: { listen: 127.0.0.1:0, drain_timeout: 8s }\nadmin: { listen: 127.0.0.1:0 }\n",
    )
    .await;
    let (proxy_addr, _) = addrs(&p);
    let mut c = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
    // The preface and an empty SETTINGS, then the ACK of the server's
    // SETTINGS; after that, silence.
    c.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    c.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut buf = [0u8; 256];
    let n = with_timeout(c.read(&mut buf)).await.unwrap();
    assert!(
        n >= 9 && buf[3] == 4,
        "the server's SETTINGS: {:?}",
        &buf[..n]
    );
    c.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = tokio::time::Instant::now();
    let clean = with_timeout(p.stop()).await;
    let took = started.elapsed();
    assert!(clean, "a clean stop (took {took:?})");
    // The 2 s grace, with room for a loaded machine, well short of the
    // 8 s drain.
    assert!(
        took < Duration::from_secs(6),
        "the silent h2 caller held the drain for {took:?}"
    );
    drop(c);
}

/// A proxy with one route to an SSE upstream whose second event waits for
/// the returned gate, plus a request to it that is in flight (headers and
/// first event received, body still open).
async fn proxy_with_request_in_flight(
    drain_timeout: &str,
) -> (
    TestProxy,
    Upstream,
    tokio::sync::oneshot::Sender<()>,
    hyper::body::Incoming,
) {
    let (gate, rx) = tokio::sync::oneshot::channel();
    let up = sse_upstream(rx).await;
    let p = start_proxy(&format!(
        "proxy: {{ listen: 127.0.0.1:0, drain_timeout: {drain_timeout} }}
admin: {{ listen: 127.0.0.1:0 }}
routes:
  - id: events
    match: {{ path_prefix: /events }}
    upstream: {}
    public: true
",
        up.url()
    ))
    .await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let req = Request::get(p.url("/events"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = with_timeout(client.request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let first = with_timeout(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    (p, up, gate, body)
}

/// Polls `fut` exactly once and checks it is still pending.
async fn poll_once_pending<F: std::future::Future + Unpin>(fut: &mut F) {
    tokio::select! {
        biased;
        _ = fut => panic!("finished while a request was still in flight"),
        () = std::future::ready(()) => {}
    }
}

#[tokio::test]
async fn stop_lets_an_in_flight_request_finish() {
    let (p, _up, gate, body) = proxy_with_request_in_flight("5s").await;
    let (proxy_addr, _) = addrs(&p);
    let stop = p.stop();
    tokio::pin!(stop);
    poll_once_pending(&mut stop).await;

    gate.send(()).unwrap();
    let rest = with_timeout(body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest, "data: second\n\n");
    assert!(with_timeout(stop).await, "the drain finished in time");
    assert!(
        with_timeout(tokio::net::TcpStream::connect(proxy_addr))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn admin_reports_not_ready_while_draining() {
    let (p, _up, gate, body) = proxy_with_request_in_flight("5s").await;
    let admin = p.admin.clone();
    let stop = p.stop();
    tokio::pin!(stop);
    poll_once_pending(&mut stop).await;

    // Shutdown has begun and a request is still in flight: probes must still
    // get answers, readiness saying "draining", liveness saying "alive".
    for _ in 0..2 {
        let readyz = try_get(&format!("{admin}/readyz"))
            .await
            .unwrap_or_else(|e| {
                panic!("the admin listener must keep answering while the proxy drains: {e}")
            });
        assert_eq!(readyz.0, StatusCode::SERVICE_UNAVAILABLE);
        let v = json(&readyz.2);
        assert_eq!(
            (&v["ready"], &v["serving"]),
            (&json!(false), &json!(false)),
            "{v}"
        );
        let healthz = try_get(&format!("{admin}/healthz"))
            .await
            .unwrap_or_else(|e| {
                panic!("the admin listener must keep answering while the proxy drains: {e}")
            });
        assert_eq!(healthz.0, StatusCode::OK);
    }

    gate.send(()).unwrap();
    with_timeout(body.collect()).await.unwrap();
    assert!(with_timeout(stop).await);
}

#[tokio::test]
async fn stop_after_the_drain_timeout_returns_false_and_closes_what_is_left() {
    let (p, _up, gate, mut body) = proxy_with_request_in_flight("100ms").await;
    let started = tokio::time::Instant::now();
    assert!(
        !with_timeout(p.stop()).await,
        "a request outlived the drain timeout: stop must report an unclean stop"
    );
    assert!(started.elapsed() >= Duration::from_millis(100));

    // The connection still open at the deadline is closed: whatever the
    // upstream sends now never reaches the caller.
    gate.send(()).unwrap();
    if let Some(Ok(frame)) = with_timeout(body.frame()).await {
        panic!("the connection survived stop(): the caller still received {frame:?}");
    }
}

/// Sends one request on a raw client connection (HTTP/1.1 or h2 with prior
/// knowledge) to `addr` and keeps the connection open; the returned task
/// ends when the proxy closes it.
async fn idle_after_one_request(
    addr: SocketAddr,
    h2: bool,
) -> tokio::task::JoinHandle<Result<(), hyper::Error>> {
    let io = hyper_util::rt::TokioIo::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let req = Request::get(format!("http://{addr}/nowhere"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let (resp, conn) = if h2 {
        let (mut tx, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        let resp_fut = tx.send_request(req);
        let conn = tokio::spawn(async move {
            // The sender lives as long as the connection: only the proxy
            // can end it.
            let r = conn.await;
            drop(tx);
            r
        });
        (with_timeout(resp_fut).await.unwrap(), conn)
    } else {
        let (mut tx, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        let resp_fut = tx.send_request(req);
        let conn = tokio::spawn(async move {
            // As above.
            let r = conn.await;
            drop(tx);
            r
        });
        (with_timeout(resp_fut).await.unwrap(), conn)
    };
    assert_eq!(
        resp.status(),
        StatusCode::NOT_FOUND,
        "no route: the proxy answers"
    );
    with_timeout(resp.into_body().collect()).await.unwrap();
    conn
}

#[tokio::test]
async fn stop_closes_idle_and_silent_connections_at_once() {
    // A drain timeout the test would notice: a connection that held the
    // drain would make stop() report an unclean stop.
    let p = start_proxy(
        "proxy: { listen: 127.0.0.1:0, drain_timeout: 3s }\nadmin: { listen: 127.0.0.1:0 }\n",
    )
    .await;
    let (proxy_addr, _) = addrs(&p);
    // Connected, nothing sent yet: the proxy is still waiting for the first
    // bytes to tell HTTP/1.1 from h2.
    let mut silent = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
    // Part of the h2 preface and nothing more: the first bytes do not
    // decide yet (the requests below give the proxy ample time to see them).
    let mut partial = tokio::net::TcpStream::connect(proxy_addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut partial, b"PRI * HTTP/2.0\r\n")
        .await
        .unwrap();
    // Keep-alive connections between requests, one of each protocol.
    let h1 = idle_after_one_request(proxy_addr, false).await;
    let h2 = idle_after_one_request(proxy_addr, true).await;

    assert!(
        with_timeout(p.stop()).await,
        "an idle or silent connection held the drain until its timeout"
    );
    with_timeout(h1).await.unwrap().unwrap();
    with_timeout(h2).await.unwrap().unwrap();
    for (name, stream) in [("silent", &mut silent), ("partial preface", &mut partial)] {
        let mut buf = [0; 16];
        let read = with_timeout(tokio::io::AsyncReadExt::read(stream, &mut buf)).await;
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "the {name} connection is closed: {read:?}"
        );
    }
}

//! Request limits: load shedding past `proxy.max_concurrent_requests` (503
//! `overloaded` with `Retry-After`, not a queue), oversized request heads
//! (431), and both recovering as soon as the pressure goes.

mod support;

use support::harness::start_proxy;
use support::proxy_helpers::{CLIENT_TOKEN, UPSTREAM_KEY, assert_proxy_error, bearer};
use support::{echo_upstream, get, sse_upstream, with_timeout};

fn limited(extra_proxy: &str, upstream: &str) -> String {
    format!(
        "proxy: {{ listen: 127.0.0.1:0, {extra_proxy} }}
admin: {{ listen: 127.0.0.1:0 }}
clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: [\"*\"]
credentials:
  - id: upstream-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
routes:
  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {upstream}
    credential: upstream-key
"
    )
}

#[tokio::test]
async fn requests_past_the_concurrency_limit_are_shed_with_retry_after() {
    // The SSE upstream holds each response open until the gate fires.
    let (gate, rx) = tokio::sync::oneshot::channel();
    let up = sse_upstream(rx).await;
    let p = start_proxy(&limited("max_concurrent_requests: 2", &up.url())).await;
    let auth = bearer(CLIENT_TOKEN);
    // Two streaming requests occupy both slots: a slot is held until the
    // response body ends, and these bodies end only when the gate fires.
    let mut held = Vec::new();
    for _ in 0..2 {
        let url = p.url("/api/stream");
        let auth = auth.clone();
        held.push(tokio::spawn(async move {
            get(&url, &[("authorization", auth.as_str())]).await
        }));
    }
    with_timeout(async {
        while up.hit_count() < 2 {
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // The third is refused at once instead of queueing.
    let shed = get(&p.url("/api/x"), &[("authorization", auth.as_str())]).await;
    let msg = assert_proxy_error(&shed, 503, "overloaded");
    assert!(!msg.is_empty());
    assert_eq!(
        shed.1.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1")
    );
    assert_eq!(
        up.hit_count(),
        2,
        "a shed request must not reach the upstream"
    );
    // Release: the held requests finish and new ones are served again.
    let _ = gate.send(());
    for h in held {
        assert_eq!(h.await.expect("held request").0, 200);
    }
    let (status, _, _) = get(&p.url("/api/x"), &[("authorization", auth.as_str())]).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn oversized_request_heads_get_431() {
    let up = echo_upstream().await;
    let p = start_proxy(&limited("max_header_bytes: 8KiB", &up.url())).await;
    let auth = bearer(CLIENT_TOKEN);
    let big = "x".repeat(16 << 10);
    let (status, _, _) = get(
        &p.url("/api/x"),
        &[("authorization", auth.as_str()), ("x-big", big.as_str())],
    )
    .await;
    assert_eq!(status, 431);
    assert_eq!(up.hit_count(), 0);
    // A normal request on a new connection is unaffected.
    let (status, _, _) = get(&p.url("/api/x"), &[("authorization", auth.as_str())]).await;
    assert_eq!(status, 200);
}

#[test]
fn limits_are_validated() {
    for (bad, field) in [
        (
            "max_concurrent_requests: 0",
            "proxy.max_concurrent_requests",
        ),
        ("max_header_bytes: 100", "proxy.max_header_bytes"),
    ] {
        let e =
            latchkey::Config::from_yaml(&limited(bad, "http://127.0.0.1:1"), "f.yaml").unwrap_err();
        assert!(
            e.to_string().starts_with(&format!("f.yaml: {field}: ")),
            "{e}"
        );
    }
}

//! End-to-end tests of routing (prefixes, strip_prefix, hosts) and
//! forwarding: forwarded headers, request ids, hop-by-hop headers and
//! request bodies arriving byte for byte.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use support::harness::start_proxy;
use support::proxy_helpers::*;
use support::*;

/// Client `billing` on one route, `api`: `/api/` to `upstream` with the
/// credential `upstream-key`.
fn api_config(upstream: &str) -> String {
    billing_config(
        "[api]",
        &format!(
            "  - id: api\n    match: {{ path_prefix: /api/ }}\n    upstream: {upstream}\n    credential: upstream-key\n"
        ),
    )
}

async fn post_json(url: &str, headers: &[(&str, &str)], body: &'static str) -> Resp {
    let mut builder = Request::post(url).header("content-type", "application/json");
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    send(
        builder
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap(),
    )
    .await
}

#[tokio::test]
async fn strip_prefix_joins_the_upstream_base_path() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[payments]",
        &format!(
            "  - id: payments
    match: {{ path_prefix: /payments/ }}
    strip_prefix: true
    upstream: http://127.0.0.1:{}/v2
    credential: upstream-key
",
            up.addr.port()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/payments/charges?x=1", &[]).await);
    assert_eq!(v["method"], "GET");
    assert_eq!(v["uri"], "/v2/charges?x=1");
    let v = echoed(&get_as_billing(&p, "/payments/", &[]).await);
    assert_eq!(v["uri"], "/v2/");
}

#[tokio::test]
async fn without_strip_prefix_the_full_path_is_forwarded() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[\"*\"]",
        &format!(
            "  - id: plain
    match: {{ path_prefix: /payments/ }}
    upstream: {url}
    credential: upstream-key
  - id: based
    match: {{ path_prefix: /based/ }}
    upstream: {url}/base/
    credential: upstream-key
",
            url = up.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/payments/charges?x=1&y=%20", &[]).await);
    assert_eq!(v["uri"], "/payments/charges?x=1&y=%20");
    let v = echoed(&get_as_billing(&p, "/based/a/b?c", &[]).await);
    assert_eq!(v["uri"], "/base/based/a/b?c");
}

#[tokio::test]
async fn longest_prefix_wins() {
    let up = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[\"*\"]",
        &format!(
            "  - id: api-v2
    match: {{ path_prefix: /api/v2/ }}
    upstream: {url}/two
    credential: upstream-key
  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {url}/one
    credential: upstream-key
",
            url = up.url()
        ),
    ))
    .await;
    let v = echoed(&get_as_billing(&p, "/api/v2/items", &[]).await);
    assert_eq!(v["uri"], "/two/api/v2/items");
    let v = echoed(&get_as_billing(&p, "/api/v1/items", &[]).await);
    assert_eq!(v["uri"], "/one/api/v1/items");
    let v = echoed(&get_as_billing(&p, "/api/v2", &[]).await);
    assert_eq!(v["uri"], "/one/api/v2");
}

#[tokio::test]
async fn host_routing_ignores_case_and_port_and_combines_with_prefixes() {
    let search = echo_upstream().await;
    let admin = echo_upstream().await;
    let fallback = echo_upstream().await;
    let p = start_proxy(&billing_config(
        "[\"*\"]",
        &format!(
            "  - id: search
    match: {{ host: search.internal.example.com }}
    upstream: {}
    credential: upstream-key
  - id: search-admin
    match: {{ host: search.internal.example.com, path_prefix: /admin/ }}
    upstream: {}
    credential: upstream-key
  - id: fallback
    match: {{ path_prefix: /fallback/ }}
    upstream: {}
    credential: upstream-key
",
            search.url(),
            admin.url(),
            fallback.url()
        ),
    ))
    .await;
    let host = ("host", "Search.Internal.Example.com:8080");

    let v = echoed(&get_as_billing(&p, "/q?term=x", &[host]).await);
    assert_eq!(v["uri"], "/q?term=x");
    assert_eq!(
        echoed_header(&v, "host"),
        Some(format!("127.0.0.1:{}", search.addr.port()))
    );
    assert_eq!(
        echoed_header(&v, "x-forwarded-host").as_deref(),
        Some("Search.Internal.Example.com:8080")
    );

    let v = echoed(&get_as_billing(&p, "/admin/users", &[host]).await);
    assert_eq!(v["uri"], "/admin/users");
    assert_eq!(
        echoed_header(&v, "host"),
        Some(format!("127.0.0.1:{}", admin.addr.port()))
    );

    // Routes naming the host are tried first: the host-only route (prefix
    // `/`) takes every other path of that host, even one a host-less route has.
    let v = echoed(
        &get_as_billing(
            &p,
            "/fallback/x",
            &[("host", "search.internal.example.com.")],
        )
        .await,
    );
    assert_eq!(v["uri"], "/fallback/x");
    assert_eq!(
        echoed_header(&v, "host"),
        Some(format!("127.0.0.1:{}", search.addr.port()))
    );

    // Another host only reaches host-less routes.
    let v = echoed(&get_as_billing(&p, "/fallback/x", &[("host", "other.example.com")]).await);
    assert_eq!(v["uri"], "/fallback/x");
    assert_eq!(
        echoed_header(&v, "host"),
        Some(format!("127.0.0.1:{}", fallback.addr.port()))
    );
    let resp = get_as_billing(&p, "/q", &[("host", "other.example.com")]).await;
    assert_proxy_error(&resp, 404, "no_route");

    assert_eq!(
        (search.hit_count(), admin.hit_count(), fallback.hit_count()),
        (2, 1, 1)
    );
}

#[tokio::test]
async fn forwarded_headers_and_upstream_host() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    let caller_host = p.base.trim_start_matches("http://").to_owned();
    let v = echoed(&get_as_billing(&p, "/api/x", &[("x-custom", "kept")]).await);
    assert_eq!(
        echoed_header_all(&v, "host"),
        [format!("127.0.0.1:{}", up.addr.port())]
    );
    assert_eq!(echoed_header_all(&v, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(echoed_header_all(&v, "x-forwarded-proto"), ["http"]);
    assert_eq!(echoed_header_all(&v, "x-forwarded-host"), [caller_host]);
    assert_eq!(echoed_header_all(&v, "x-custom"), ["kept"]);
}

#[tokio::test]
async fn request_id_sent_by_the_caller_is_propagated() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    let resp = get_as_billing(&p, "/api/x", &[("x-request-id", "req-abc-123")]).await;
    assert_eq!(header(&resp.1, "x-request-id"), Some("req-abc-123"));
    let v = echoed(&resp);
    assert_eq!(echoed_header_all(&v, "x-request-id"), ["req-abc-123"]);
}

#[tokio::test]
async fn request_id_is_generated_when_absent() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    let first = get_as_billing(&p, "/api/x", &[]).await;
    let id = header(&first.1, "x-request-id")
        .expect("x-request-id on the response")
        .to_owned();
    assert_uuid(&id);
    let v = echoed(&first);
    assert_eq!(echoed_header_all(&v, "x-request-id"), [id.as_str()]);

    // An id that is not short printable ASCII is replaced.
    let odd = get_as_billing(&p, "/api/x", &[("x-request-id", "has space")]).await;
    let odd_id = header(&odd.1, "x-request-id").unwrap();
    assert_uuid(odd_id);
    assert_eq!(echoed_header_all(&echoed(&odd), "x-request-id"), [odd_id]);

    let second = get_as_billing(&p, "/api/x", &[]).await;
    let id2 = header(&second.1, "x-request-id").unwrap();
    assert_uuid(id2);
    assert_ne!(id, id2, "each request gets its own id");
    assert_eq!(echoed_header_all(&echoed(&second), "x-request-id"), [id2]);
}

#[tokio::test]
async fn hop_by_hop_headers_are_not_forwarded() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    let v = echoed(
        &get_as_billing(
            &p,
            "/api/x",
            &[
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("proxy-connection", "keep-alive"),
                ("x-end-to-end", "2"),
            ],
        )
        .await,
    );
    for h in ["connection", "x-hop", "keep-alive", "proxy-connection"] {
        assert_eq!(echoed_header(&v, h), None, "{h} was forwarded: {v}");
    }
    assert_eq!(echoed_header_all(&v, "x-end-to-end"), ["2"]);
}

#[tokio::test]
async fn post_body_arrives_byte_identical() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    let body = r#"{"amount": 1250, "currency":"EUR", "note":"caf\u00e9 \"quoted\"\n", "tags":[1,2.5,null,true]}"#;
    let auth = bearer(CLIENT_TOKEN);
    let resp = post_json(
        &p.url("/api/charges?idempotent=1"),
        &[("authorization", &auth)],
        body,
    )
    .await;
    let v = echoed(&resp);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["uri"], "/api/charges?idempotent=1");
    assert_eq!(v["body"], body);
    assert_eq!(echoed_header_all(&v, "content-type"), ["application/json"]);
    assert_eq!(
        echoed_header_all(&v, "content-length"),
        [body.len().to_string()]
    );
}

/// A `Host` with a `user:password@` part: the request is routed on the
/// host alone, and neither `X-Forwarded-Host` nor the audit record carries
/// the credentials.
#[tokio::test]
async fn userinfo_in_the_host_is_neither_forwarded_nor_recorded() {
    let up = echo_upstream().await;
    let sink = std::sync::Arc::new(audit::MemorySink::new());
    let options = latchkey::StartOptions {
        audit_sink: Some(sink.clone()),
        ..Default::default()
    };
    let p = support::harness::start_proxy_with(&api_config(&up.url()), options).await;
    let caller_host = p.base.trim_start_matches("http://").to_owned();
    let with_userinfo = format!("alice:s3cret-userinfo@{caller_host}");
    let v = echoed(&get_as_billing(&p, "/api/x", &[("host", &with_userinfo)]).await);
    assert_eq!(
        echoed_header_all(&v, "x-forwarded-host"),
        std::slice::from_ref(&caller_host)
    );
    assert!(!v.to_string().contains("s3cret-userinfo"), "{v}");
    let records = sink.requests();
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["audit"]["host"], caller_host.as_str());
    // Nor the error of a request that matches no route.
    let (status, _, body) = get_as_billing(&p, "/nowhere", &[("host", &with_userinfo)]).await;
    assert_eq!(status, http::StatusCode::NOT_FOUND);
    assert!(!String::from_utf8_lossy(&body).contains("s3cret-userinfo"));
    let all = format!("{:?}", sink.records());
    assert!(!all.contains("s3cret-userinfo"), "{all}");
}

/// A caller's `Connection` header names hop-by-hop headers of its own hop:
/// they are removed before a route injects its credential, so naming the
/// injected header there cannot strip the credential (which made every
/// request a 401 and a forced refresh).
#[tokio::test]
async fn connection_cannot_remove_the_injected_credential() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    let v = echoed(
        &get_as_billing(
            &p,
            "/api/x",
            &[("connection", "authorization, x-hop"), ("x-hop", "1")],
        )
        .await,
    );
    assert_eq!(
        echoed_header_all(&v, "authorization"),
        [format!("Bearer {UPSTREAM_KEY}")]
    );
    assert_eq!(echoed_header(&v, "x-hop"), None, "named hop-by-hop: {v}");
    assert_eq!(echoed_header(&v, "connection"), None, "{v}");
}

/// Paths that route here as one thing and resolve upstream to another
/// (`..`, `//`, `..` between encoded slashes) are refused before routing,
/// never forwarded.
#[tokio::test]
async fn paths_that_resolve_elsewhere_upstream_are_refused() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(&up.url())).await;
    for path in [
        "/api/x/../admin/users",
        "/api/./admin/users",
        "/api//admin/users",
        "/api/%2e%2e/admin/users",
        "/api/x%2F..%2F..%2Fadmin/users",
        // Decoding `%31` must not complete `%6` into `%61`.
        "/api/%6%31dmin/users",
        // `/api/admin/users` to a servlet container, which drops `;params`.
        "/api/admin;x/users",
        "/api/admin;/users",
    ] {
        let resp = get_as_billing(&p, path, &[]).await;
        let msg = assert_proxy_error(&resp, 400, "bad_request");
        assert!(
            msg.contains("could name another route's path"),
            "{path}: {msg}"
        );
    }
    assert_eq!(up.hit_count(), 0);
    // An ordinary path with an encoded space still goes through, and so
    // do params in the last segment (Tomcat's `;jsessionid=`).
    let v = echoed(&get_as_billing(&p, "/api/a%20b", &[]).await);
    assert_eq!(v["path"], "/api/a%20b");
    let v = echoed(&get_as_billing(&p, "/api/a;jsessionid=1", &[]).await);
    assert_eq!(v["path"], "/api/a;jsessionid=1");
}

/// An encoded unreserved character is that character (RFC 3986): it is
/// decoded before routing, so `/api/%61dmin/` is the admin route, with the
/// admin route's permissions, and is forwarded decoded (`%7E`, as Java's
/// `URLEncoder` writes `~`, arrives as `~`). An encoded slash, as in
/// GitLab's `projects/group%2Fproject`, is forwarded as it is, unless
/// `proxy.escaped_slashes: reject`.
#[tokio::test]
async fn encoded_paths_route_as_what_they_mean() {
    let up = echo_upstream().await;
    let routes = format!(
        "  - id: api\n    match: {{ path_prefix: /api/ }}\n    upstream: {u}\n    credential: upstream-key\n  - id: admin\n    match: {{ path_prefix: /api/admin/ }}\n    upstream: {u}\n    credential: upstream-key\n",
        u = up.url()
    );
    // Client `ops` may use the admin route; `billing` only `api`.
    let cfg = billing_config("[api]", &routes).replacen(
        "credentials:\n",
        "  - { id: ops, token: { value: ops-token }, routes: [admin] }\ncredentials:\n",
        1,
    );
    let p = start_proxy(&cfg).await;
    let resp = get_as_billing(&p, "/api/%61dmin/users", &[]).await;
    assert_proxy_error(&resp, 403, "client_forbidden");
    assert_eq!(up.hit_count(), 0);

    let v = echoed(&get_as_billing(&p, "/api/%7Ejane/x%41?q=%7E", &[]).await);
    assert_eq!(v["path"], "/api/~jane/xA");
    assert_eq!(
        v["uri"], "/api/~jane/xA?q=%7E",
        "the query is kept byte for byte"
    );
    // Lower-case hex is written upper-case (the same URI).
    let v = echoed(&get_as_billing(&p, "/api/projects/group%2fproject/merge_requests", &[]).await);
    assert_eq!(v["path"], "/api/projects/group%2Fproject/merge_requests");

    let strict = start_proxy(&cfg.replacen(
        "proxy: { listen: 127.0.0.1:0 }",
        "proxy: { listen: 127.0.0.1:0, escaped_slashes: reject }",
        1,
    ))
    .await;
    let resp = get_as_billing(&strict, "/api/projects/group%2Fproject", &[]).await;
    let msg = assert_proxy_error(&resp, 400, "bad_request");
    assert!(msg.contains("encoded slash"), "{msg}");
}

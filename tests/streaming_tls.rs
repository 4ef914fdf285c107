//! End-to-end tests of the whole proxy on loopback: streamed bodies (SSE),
//! WebSocket upgrades, TLS and h2 upstreams, h2c callers, file credentials
//! rotated while traffic flows, and the graceful drain on shutdown.

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::harness::start_proxy;
use support::*;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;

/// The proxy token the test workload presents.
const CLIENT_TOKEN: &str = "client-token-canary-5d1e";
/// The credential latchkey injects upstream.
const UPSTREAM_KEY: &str = "upstream-key-canary-88b2";

/// One client (`app`, allowed everywhere) and one literal credential `key`,
/// followed by `routes`.
fn config(extra_top: &str, routes: &str) -> String {
    format!(
        r#"
proxy:
  listen: 127.0.0.1:0
  drain_timeout: 5s
{extra_top}
clients:
  - {{ id: app, token: {{ value: "{CLIENT_TOKEN}" }}, routes: ["*"] }}
credentials:
  - {{ id: key, static: {{ value: "{UPSTREAM_KEY}" }} }}
routes:
{routes}
"#
    )
}

fn bearer() -> String {
    format!("Bearer {CLIENT_TOKEN}")
}

#[tokio::test]
async fn sse_events_are_streamed_before_the_upstream_finishes() {
    let (fire, gate) = tokio::sync::oneshot::channel();
    let up = sse_upstream(gate).await;
    let proxy = start_proxy(&config(
        "",
        &format!(
            "  - {{ id: events, match: {{ path_prefix: /events/ }}, strip_prefix: true, upstream: \"{}\", credential: key, inject: {{ header: x-api-key }} }}",
            up.url()
        ),
    ))
    .await;

    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let req = Request::get(proxy.url("/events/stream"))
        .header("authorization", bearer())
        .body(Full::default())
        .unwrap();
    let resp = with_timeout(client.request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();

    // The gate is still closed, so the upstream has sent only the first event
    // and is holding the response open. A proxy that buffers would never
    // deliver it, and this read would time out.
    let mut first = Vec::new();
    while !first.ends_with(b"data: first\n\n") {
        let frame = with_timeout(body.frame())
            .await
            .expect("stream ended before the first event")
            .expect("body error before the first event");
        if let Ok(data) = frame.into_data() {
            first.extend_from_slice(&data);
        }
    }
    assert_eq!(first, b"data: first\n\n");
    assert_eq!(up.hit_count(), 1);

    fire.send(()).unwrap();
    let mut rest = Vec::new();
    while let Some(frame) = with_timeout(body.frame()).await {
        if let Ok(data) = frame.expect("body error after the gate fired").into_data() {
            rest.extend_from_slice(&data);
        }
    }
    assert_eq!(String::from_utf8_lossy(&rest), "data: second\n\n");
    assert!(proxy.stop().await);
}

#[tokio::test]
async fn websocket_is_bridged_with_the_credential_and_without_the_client_token() {
    let up = ws_echo_upstream().await;
    let proxy = start_proxy(&config(
        "",
        &format!(
            "  - {{ id: ws, match: {{ path_prefix: /ws/ }}, strip_prefix: true, upstream: \"{}\", credential: key, inject: {{ header: x-api-key }} }}",
            up.url()
        ),
    ))
    .await;

    let url = format!("{}/ws/chat", proxy.base.replacen("http://", "ws://", 1));
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", bearer().parse().unwrap());
    let (mut ws, resp) = with_timeout(tokio_tungstenite::connect_async(req))
        .await
        .expect("WebSocket handshake through the proxy");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);

    ws.send(Message::text("hello through latchkey"))
        .await
        .unwrap();
    let reply = with_timeout(ws.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::text("hello through latchkey"));

    let payload = vec![0u8, 1, 2, 254, 255];
    ws.send(Message::binary(payload.clone())).await.unwrap();
    let reply = with_timeout(ws.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::binary(payload));

    // A second round trip shows the bridge stays open.
    ws.send(Message::text("again")).await.unwrap();
    let reply = with_timeout(ws.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::text("again"));
    with_timeout(ws.close(None)).await.unwrap();

    assert_eq!(up.hit_count(), 1);
    assert_eq!(up.ws_header("x-api-key").as_deref(), Some(UPSTREAM_KEY));
    assert_eq!(up.ws_header("upgrade").as_deref(), Some("websocket"));
    let seen = up.ws_headers.lock().unwrap().clone();
    assert!(
        !seen.iter().any(|(_, v)| v.contains(CLIENT_TOKEN)),
        "the client token reached the upstream: {seen:?}"
    );
    assert!(
        !seen
            .iter()
            .any(|(n, _)| n == "authorization" || n == "proxy-authorization"),
        "a proxy auth header reached the upstream: {seen:?}"
    );
}

#[tokio::test]
async fn https_upstream_is_trusted_only_with_its_ca_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let up = tls_echo_upstream(&ca, false).await;
    let proxy = start_proxy(&config(
        "",
        &format!(
            "  - {{ id: trusted, match: {{ path_prefix: /trusted/ }}, strip_prefix: true, upstream: \"{url}\", ca_file: \"{ca}\", credential: key, inject: {{ header: x-api-key }} }}\n  - {{ id: untrusted, match: {{ path_prefix: /untrusted/ }}, strip_prefix: true, upstream: \"{url}\", credential: key, inject: {{ header: x-api-key }} }}",
            url = up.https_url(),
            ca = ca_path.display()
        ),
    ))
    .await;
    let auth = bearer();

    let (status, _, body) = get(
        &proxy.url("/trusted/hello?x=1"),
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["uri"], "/hello?x=1");
    assert_eq!(
        echoed_header(&v, "x-api-key").as_deref(),
        Some(UPSTREAM_KEY)
    );
    assert_eq!(
        echoed_header(&v, "host"),
        Some(format!("localhost:{}", up.addr.port()))
    );
    assert!(echoed_header(&v, "authorization").is_none());
    assert_eq!(up.hit_count(), 1);

    // Same upstream, no ca_file: the web PKI roots do not know the test CA.
    let (status, headers, body) =
        get(&proxy.url("/untrusted/hello"), &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-latchkey-error"], "upstream_unreachable");
    let v = json(&body);
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    let message = v["error"]["message"].as_str().unwrap().to_ascii_lowercase();
    assert!(
        message.contains("certificate") || message.contains("tls"),
        "the message should name the certificate problem: {message}"
    );
    assert!(!message.contains(UPSTREAM_KEY));
    assert_eq!(
        up.hit_count(),
        1,
        "no request may pass an untrusted handshake"
    );
}

/// A route line: `prefix` stripped, the `key` credential sent as
/// `x-api-key`, then any `extra` fields (`, name: value`).
fn key_route(id: &str, prefix: &str, upstream: &str, extra: &str) -> String {
    format!(
        "  - {{ id: {id}, match: {{ path_prefix: {prefix} }}, strip_prefix: true, upstream: \"{upstream}\", credential: key, inject: {{ header: x-api-key }}{extra} }}\n"
    )
}

/// A TLS echo upstream offering h2 (its CA written to a temporary file)
/// and a plain-HTTP echo upstream.
struct TlsAndPlain {
    tls: Upstream,
    plain: Upstream,
    /// `, ca_file: "..."`: the extra fields a route to `tls` needs.
    trust: String,
    _dir: tempfile::TempDir,
}

#[expect(clippy::unwrap_used, reason = "test setup fails the test by panicking")]
async fn tls_and_plain() -> TlsAndPlain {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    TlsAndPlain {
        tls: tls_echo_upstream(&ca, true).await,
        plain: echo_upstream().await,
        trust: format!(", ca_file: \"{}\"", ca_path.display()),
        _dir: dir,
    }
}

#[tokio::test]
async fn h2_upstream_via_alpn_and_h2c_callers() {
    let ups = tls_and_plain().await;
    let proxy = start_proxy(&config(
        "",
        &(key_route("h2", "/h2/", &ups.tls.https_url(), &ups.trust)
            + &key_route("plain", "/plain/", &ups.plain.url(), "")),
    ))
    .await;
    let auth = bearer();

    // HTTP/1.1 caller, h2 upstream (negotiated by ALPN).
    let (status, _, body) = get(&proxy.url("/h2/items?page=2"), &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let v = json(&body);
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["path"], "/items");
    assert_eq!(v["query"], "page=2");
    // `:authority` only: nginx before 1.29 answers 400 to both.
    assert!(echoed_header(&v, "host").is_none(), "{v}");
    assert_eq!(
        echoed_header(&v, "x-api-key").as_deref(),
        Some(UPSTREAM_KEY)
    );
    assert!(echoed_header(&v, "authorization").is_none());

    // h2c prior-knowledge caller, plain HTTP upstream.
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let req = Request::post(proxy.url("/plain/submit"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::from_static(b"over h2c")))
        .unwrap();
    let resp = with_timeout(client.request(req)).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = with_timeout(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let v = json(&body);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/submit");
    assert_eq!(v["body"], "over h2c");
    assert_eq!(
        echoed_header(&v, "x-api-key").as_deref(),
        Some(UPSTREAM_KEY)
    );
    assert!(echoed_header(&v, "authorization").is_none());

    // h2c caller and h2 upstream together.
    let req = Request::get(proxy.url("/h2/both"))
        .header("authorization", &auth)
        .body(Full::default())
        .unwrap();
    let resp = with_timeout(client.request(req)).await.unwrap();
    assert_eq!(resp.version(), Version::HTTP_2);
    assert_eq!(resp.status(), StatusCode::OK);
    let body = with_timeout(resp.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    let v = json(&body);
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(
        echoed_header(&v, "x-api-key").as_deref(),
        Some(UPSTREAM_KEY)
    );
}

/// Upstream connections are pooled: sequential requests over HTTP/1.1 use
/// one connection, two routes to one upstream share it, and an h2
/// upstream carries concurrent requests on one connection.
#[tokio::test]
async fn upstream_connections_are_reused_and_shared_between_routes() {
    let ups = tls_and_plain().await;
    let (tls_up, plain_up) = (&ups.tls, &ups.plain);
    let proxy = start_proxy(&config(
        "",
        &(key_route("h2", "/h2/", &tls_up.https_url(), &ups.trust)
            + &key_route("a", "/a/", &plain_up.url(), "")
            + &key_route("b", "/b/", &format!("{}/base", plain_up.url()), "")),
    ))
    .await;
    let auth = bearer();

    for path in ["/a/1", "/b/2", "/a/3", "/b/4"] {
        let (status, _, body) = get(&proxy.url(path), &[("authorization", &auth)]).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    }
    assert_eq!(plain_up.hit_count(), 4);
    assert_eq!(
        plain_up.conn_count(),
        1,
        "one pooled connection for both routes"
    );

    let (status, _, _) = get(&proxy.url("/h2/first"), &[("authorization", &auth)]).await;
    assert_eq!(status, StatusCode::OK);
    let url = proxy.url("/h2/many");
    let headers = [("authorization", auth.as_str())];
    let many = (0..4).map(|_| get(&url, &headers));
    for (status, _, body) in futures_util::future::join_all(many).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&body)["version"], "HTTP/2.0");
    }
    assert_eq!(tls_up.hit_count(), 5);
    assert_eq!(tls_up.conn_count(), 1, "h2 multiplexes one connection");
}

/// Concurrent first requests to an h2 upstream wait for one connect and
/// share it, rather than each opening a TLS connection (without that, the
/// burst opens up to 8). To an HTTPS upstream that only speaks HTTP/1.1
/// the first burst waits for the first connect too (ALPN is not known
/// yet), then each request connects on its own: all succeed.
#[tokio::test]
async fn concurrent_first_requests_open_one_h2_connection() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let trust = format!(", ca_file: \"{}\"", ca.write_ca(dir.path()).display());
    let h2_up = tls_echo_upstream(&ca, true).await;
    let h1_up = tls_echo_upstream(&ca, false).await;
    let proxy = start_proxy(&config(
        "",
        &(key_route("h2", "/h2/", &h2_up.https_url(), &trust)
            + &key_route("h1", "/h1/", &h1_up.https_url(), &trust)),
    ))
    .await;
    let auth = bearer();
    let headers = [("authorization", auth.as_str())];
    for (prefix, version) in [("/h2/", "HTTP/2.0"), ("/h1/", "HTTP/1.1")] {
        let url = proxy.url(&format!("{prefix}cold"));
        let burst = (0..8).map(|_| get(&url, &headers));
        for (status, _, body) in futures_util::future::join_all(burst).await {
            assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
            assert_eq!(json(&body)["version"], version);
        }
    }
    assert_eq!(h2_up.hit_count(), 8);
    assert_eq!(h2_up.conn_count(), 1, "one h2 connection for the burst");
    assert_eq!(h1_up.hit_count(), 8);
}

/// `proxy.upstream_max_idle: 0` keeps no idle upstream connection: each
/// request opens its own (the knob an operator uses against an upstream
/// that mishandles keep-alive).
#[tokio::test]
async fn upstream_max_idle_zero_keeps_no_connection() {
    let up = echo_upstream().await;
    let proxy = start_proxy(&config(
        "  upstream_max_idle: 0",
        &key_route("a", "/a/", &up.url(), ""),
    ))
    .await;
    let auth = bearer();
    for _ in 0..3 {
        let (status, _, _) = get(&proxy.url("/a/x"), &[("authorization", &auth)]).await;
        assert_eq!(status, StatusCode::OK);
    }
    assert_eq!(up.conn_count(), 3);
}

/// Config for a route to `upstream` injecting the file credential at `path`,
/// re-read every 50ms.
fn file_credential_config(upstream: &str, path: &std::path::Path) -> String {
    format!(
        r#"
proxy:
  listen: 127.0.0.1:0
secrets:
  file_poll_interval: 50ms
clients:
  - {{ id: app, token: {{ value: "{CLIENT_TOKEN}" }}, routes: [api] }}
credentials:
  - id: rotating
    static: {{ file: "{}" }}
routes:
  - {{ id: api, match: {{ path_prefix: /api/ }}, strip_prefix: true, upstream: "{upstream}", credential: rotating, inject: {{ header: x-api-key }} }}
"#,
        path.display()
    )
}

/// The credential the upstream saw for one request through the proxy;
/// asserts that the request succeeded.
async fn injected_key(url: &str) -> Option<String> {
    let auth = bearer();
    let (status, _, body) = get(url, &[("authorization", &auth)]).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a request failed during rotation: {}",
        String::from_utf8_lossy(&body)
    );
    echoed_header(&json(&body), "x-api-key")
}

/// Sends one request at a time until the upstream sees `new`; every request
/// before that must succeed and carry `old`. Returns the number of requests.
async fn poll_until_rotated(url: &str, old: &str, new: &str) -> usize {
    with_timeout(async {
        let mut sent = 0;
        loop {
            let seen = injected_key(url).await;
            sent += 1;
            if seen.as_deref() == Some(new) {
                return sent;
            }
            assert_eq!(
                seen.as_deref(),
                Some(old),
                "request {sent} carried neither the old nor the new credential"
            );
            // Waits for the proxy's background re-read of the file.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test]
async fn file_credential_rotated_by_atomic_rename_is_picked_up() {
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("api-key");
    std::fs::write(&key, "file-key-v1\n").unwrap();
    let proxy = start_proxy(&file_credential_config(&up.url(), &key)).await;
    let url = proxy.url("/api/thing");

    assert_eq!(injected_key(&url).await.as_deref(), Some("file-key-v1"));

    // Write the new value beside the old one, then rename it over the path.
    let staged = dir.path().join(".api-key.new");
    std::fs::write(&staged, "file-key-v2\n").unwrap();
    std::fs::rename(&staged, &key).unwrap();
    poll_until_rotated(&url, "file-key-v1", "file-key-v2").await;
    assert_eq!(injected_key(&url).await.as_deref(), Some("file-key-v2"));
    assert!(proxy.stop().await);
}

#[cfg(unix)]
#[tokio::test]
async fn file_credential_rotated_by_kubernetes_symlink_swap_is_picked_up() {
    use std::os::unix::fs::symlink;

    // The layout of a Kubernetes Secret volume:
    //   api-key -> ..data/api-key
    //   ..data  -> ..2024_01_01_v1
    //   ..2024_01_01_v1/api-key
    // An update writes a new timestamped directory, points a temporary
    // symlink at it and renames that over `..data` in one step.
    let up = echo_upstream().await;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let write_version = |name: &str, value: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("api-key"), value).unwrap();
    };
    let swap_data = |target: &str| {
        let tmp = root.join("..data_tmp");
        symlink(target, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    };
    write_version("..2024_01_01_v1", "k8s-key-v1");
    symlink("..2024_01_01_v1", root.join("..data")).unwrap();
    symlink("..data/api-key", root.join("api-key")).unwrap();

    let proxy = start_proxy(&file_credential_config(&up.url(), &root.join("api-key"))).await;
    let url = proxy.url("/api/thing");
    assert_eq!(injected_key(&url).await.as_deref(), Some("k8s-key-v1"));

    write_version("..2024_01_02_v2", "k8s-key-v2\n");
    swap_data("..2024_01_02_v2");
    std::fs::remove_dir_all(root.join("..2024_01_01_v1")).unwrap();
    poll_until_rotated(&url, "k8s-key-v1", "k8s-key-v2").await;

    // And again: the proxy follows the path, not the first file it resolved.
    write_version("..2024_01_03_v3", "k8s-key-v3");
    swap_data("..2024_01_03_v3");
    std::fs::remove_dir_all(root.join("..2024_01_02_v2")).unwrap();
    poll_until_rotated(&url, "k8s-key-v2", "k8s-key-v3").await;
    assert!(proxy.stop().await);
}

#[tokio::test]
async fn graceful_stop_drains_in_flight_requests_then_refuses_connections() {
    let up = slow_upstream(Duration::from_millis(500)).await;
    let proxy = start_proxy(&config(
        "admin: { listen: 127.0.0.1:0 }",
        &format!(
            "  - {{ id: slow, match: {{ path_prefix: /slow/ }}, strip_prefix: true, upstream: \"{}\", credential: key, inject: {{ header: x-api-key }} }}",
            up.url()
        ),
    ))
    .await;
    let proxy_addr = proxy.running.as_ref().unwrap().proxy_addr;
    let admin_addr = proxy.running.as_ref().unwrap().admin_addr.unwrap();

    let url = proxy.url("/slow/work");
    let in_flight = tokio::spawn(async move {
        let auth = bearer();
        get(&url, &[("authorization", &auth)]).await
    });

    // Wait until the request is inside the proxy and at the upstream.
    with_timeout(async {
        while up.hit_count() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(!in_flight.is_finished());

    let (clean, response) = tokio::join!(with_timeout(proxy.stop()), with_timeout(in_flight));
    let (status, _, body) = response.unwrap();
    assert_eq!(
        status,
        StatusCode::OK,
        "the in-flight request was cut: {}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(
        echoed_header(&json(&body), "x-api-key").as_deref(),
        Some(UPSTREAM_KEY)
    );
    assert!(clean, "stop() reported an unclean drain");

    assert!(
        tokio::net::TcpStream::connect(proxy_addr).await.is_err(),
        "the proxy listener still accepts connections after stop"
    );
    assert!(
        tokio::net::TcpStream::connect(admin_addr).await.is_err(),
        "the admin listener still accepts connections after stop"
    );
    assert_eq!(up.hit_count(), 1);
}

/// A WebSocket to an https upstream that offers h2: the handshake goes on
/// an HTTP/1.1 connection of its own (ALPN http/1.1 only), also when the
/// route's other requests share an h2 connection, which has no upgrade
/// (on it the handshake arrived as a plain GET).
#[tokio::test]
async fn websocket_to_an_https_upstream_that_offers_h2_is_bridged() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let up = tls_ws_echo_upstream(&ca).await;
    let proxy = start_proxy(&config(
        "",
        &format!(
            "  - {{ id: ws, match: {{ path_prefix: /ws/ }}, strip_prefix: true, upstream: \"https://127.0.0.1:{port}\", ca_file: \"{ca}\", credential: key, inject: {{ header: x-api-key }} }}",
            port = up.addr.port(),
            ca = ca_path.display()
        ),
    ))
    .await;
    let url = format!("{}/ws/chat", proxy.base.replacen("http://", "ws://", 1));
    for round in 0..2 {
        let mut req = url.clone().into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", bearer().parse().unwrap());
        let (mut ws, resp) = with_timeout(tokio_tungstenite::connect_async(req))
            .await
            .unwrap_or_else(|e| panic!("round {round}: handshake through the proxy: {e}"));
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws.send(Message::text("over http/1.1")).await.unwrap();
        let reply = with_timeout(ws.next()).await.unwrap().unwrap();
        assert_eq!(reply, Message::text("over http/1.1"));
        with_timeout(ws.close(None)).await.unwrap();
    }
    assert_eq!(up.hit_count(), 2);
    assert_eq!(up.ws_header("x-api-key").as_deref(), Some(UPSTREAM_KEY));
}

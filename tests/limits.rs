//! Request limits: load shedding past `proxy.max_concurrent_requests` (503
//! `overloaded` with `Retry-After`, not a queue), oversized request heads
//! (431), and both recovering as soon as the pressure goes; slow, silent
//! and quiet callers closed after the header and idle timeouts.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use support::harness::start_proxy;
use support::proxy_helpers::{CLIENT_TOKEN, api_config, assert_proxy_error, bearer};
use support::{echo_upstream, get, sse_upstream, with_timeout};

fn limited(extra_proxy: &str, upstream: &str) -> String {
    api_config(&format!(", {extra_proxy}"), upstream, "")
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

/// A caller that sends half a request head, one that sends nothing, and an
/// idle keep-alive connection are all closed after
/// `proxy.client_header_timeout`, on the proxy and the admin port: slow
/// callers cannot hold connections (and file descriptors) open forever.
/// Paused clock: the timeouts fire as soon as nothing else can happen.
#[tokio::test(start_paused = true)]
async fn slow_silent_and_idle_callers_are_closed_after_the_header_timeout() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = echo_upstream().await;
    let p = start_proxy(&limited("client_header_timeout: 5s", &up.url())).await;
    let proxy = p.base.trim_start_matches("http://").to_owned();
    let admin = p.admin.trim_start_matches("http://").to_owned();
    for addr in [proxy.as_str(), admin.as_str()] {
        let mut half = tokio::net::TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /api/x HTTP/1.1\r\nHost: a\r\n")
            .await
            .unwrap();
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        idle.write_all(
            format!(
                "GET /healthz HTTP/1.1\r\nHost: a\r\nAuthorization: {}\r\n\r\n",
                bearer(CLIENT_TOKEN)
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let started = tokio::time::Instant::now();
        for (what, conn) in [("half a head", &mut half), ("nothing", &mut silent)] {
            let mut buf = Vec::new();
            let read = tokio::time::timeout(
                std::time::Duration::from_secs(60),
                conn.read_to_end(&mut buf),
            )
            .await;
            assert!(
                read.is_ok(),
                "{addr}: a caller that sent {what} is still connected"
            );
        }
        // The idle one got its answer, then the connection was closed.
        let mut buf = Vec::new();
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            idle.read_to_end(&mut buf),
        )
        .await
        .unwrap_or_else(|_| panic!("{addr}: an idle keep-alive connection stays open"))
        .unwrap();
        assert!(buf.starts_with(b"HTTP/1.1 "), "{addr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(30),
            "{addr}"
        );
    }
}

/// h2 over a plain connection, prior knowledge: the request sender and the
/// task driving the connection (it ends when the proxy closes it).
async fn h2_caller(
    addr: &str,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    (tx, tokio::spawn(conn))
}

async fn h2_get(
    tx: &mut hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: &str,
) -> http::StatusCode {
    use http_body_util::BodyExt as _;
    let req = http::Request::get(format!("http://{addr}/api/x"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(http_body_util::Empty::new())
        .unwrap();
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status();
    resp.into_body().collect().await.unwrap();
    status
}

/// Waits for `conn` (quiet from now on) to end, and checks it was closed
/// between `client_idle_timeout: 30s` and 4/3 of it later.
async fn closed_after_30s_of_quiet(
    conn: tokio::task::JoinHandle<Result<(), hyper::Error>>,
    stays_open: &str,
) {
    use std::time::Duration;
    let last = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(600), conn)
        .await
        .expect(stays_open)
        .unwrap()
        .unwrap();
    let quiet = last.elapsed();
    assert!(
        (Duration::from_secs(30)..=Duration::from_secs(41)).contains(&quiet),
        "closed after {quiet:?} of quiet"
    );
}

/// An h2 connection is closed gracefully once its caller has sent nothing
/// for `proxy.client_idle_timeout` (between it and 4/3 of it). Paused
/// clock, one request: a second request on the same h2 connection lets
/// the paused clock jump to the next timer (a task that yields is polled
/// again only after the driver parks, and a paused driver that parks
/// advances the clock), so its timing would say nothing. That being heard
/// from keeps a connection open is tested on the timer itself, in
/// `server::idle`.
#[tokio::test(start_paused = true)]
async fn a_quiet_h2_connection_is_closed_after_the_idle_timeout() {
    let up = echo_upstream().await;
    let p = start_proxy(&limited("client_idle_timeout: 30s", &up.url())).await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let (mut tx, conn) = h2_caller(&addr).await;
    assert_eq!(h2_get(&mut tx, &addr).await, 200);
    closed_after_30s_of_quiet(conn, "a quiet h2 connection stays open").await;
}

/// The admin port closes a quiet h2 connection too (hyper bounds only an
/// idle HTTP/1.1 caller there, with the header timeout): an h2c scraper or
/// probe that stops talking does not hold its connection until shutdown.
/// Paused clock, one request (see above).
#[tokio::test(start_paused = true)]
async fn a_quiet_h2_connection_to_the_admin_port_is_closed_after_the_idle_timeout() {
    use http_body_util::BodyExt as _;
    let up = echo_upstream().await;
    let p = start_proxy(&limited("client_idle_timeout: 30s", &up.url())).await;
    let addr = p.admin.trim_start_matches("http://").to_owned();
    let (mut tx, conn) = h2_caller(&addr).await;
    let req = http::Request::get(format!("http://{addr}/healthz"))
        .body(http_body_util::Empty::new())
        .unwrap();
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
    closed_after_30s_of_quiet(conn, "a quiet h2 connection to the admin port stays open").await;
}

/// The idle close is graceful (GOAWAY): a request still waiting for its
/// upstream when the caller went quiet gets its answer; the connection
/// closes after it. Paused clock.
#[tokio::test(start_paused = true)]
async fn the_idle_close_lets_a_waiting_request_finish() {
    use std::time::Duration;
    let up = support::slow_upstream(Duration::from_secs(25)).await;
    let p = start_proxy(&limited("client_idle_timeout: 10s", &up.url())).await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let (mut tx, conn) = h2_caller(&addr).await;
    let started = tokio::time::Instant::now();
    assert_eq!(h2_get(&mut tx, &addr).await, 200);
    assert!(started.elapsed() >= Duration::from_secs(25));
    tokio::time::timeout(Duration::from_secs(60), conn)
        .await
        .expect("the connection closes once its last request is done")
        .unwrap()
        .unwrap();
}

/// A TLS caller that agreed on h2 and then sends nothing (not even the
/// preface) is closed after the idle timeout too. Paused clock.
#[tokio::test(start_paused = true)]
async fn a_tls_h2_caller_that_sends_nothing_is_closed_after_the_idle_timeout() {
    use std::time::Duration;
    use tokio::io::AsyncReadExt as _;
    let pki = support::pki::Pki::new();
    let up = echo_upstream().await;
    let tls = format!("client_idle_timeout: 30s,\n{}", pki.tls_yaml(""));
    let p = start_proxy(&limited(&tls, &up.url())).await;
    let addr = p.running.as_ref().unwrap().proxy_addr;
    let mut stream = pki.caller(&[b"h2"], None).connect(addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let connected = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(600), stream.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "a silent TLS h2 caller stays connected");
    let quiet = connected.elapsed();
    assert!(
        (Duration::from_secs(30)..=Duration::from_secs(41)).contains(&quiet),
        "closed after {quiet:?}"
    );
}

/// A caller that sends the h2 preface and its SETTINGS and then nothing,
/// not even the answer to the GOAWAY's PING (a hung client, a peer that is
/// gone, a slowloris), is dropped a grace period after the idle close:
/// hyper's graceful h2 close alone would wait for that answer forever.
/// Paused clock.
#[tokio::test(start_paused = true)]
async fn an_h2_caller_that_never_answers_is_dropped_after_the_grace() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = echo_upstream().await;
    let p = start_proxy(&limited("client_idle_timeout: 30s", &up.url())).await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    // The preface and an empty SETTINGS frame.
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let start = tokio::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(3600), tcp.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "still open after an hour");
    // Quiet for 30-40 s, then 10 s (a third of it) to answer.
    let took = start.elapsed();
    assert!(
        (Duration::from_secs(40)..=Duration::from_secs(51)).contains(&took),
        "dropped after {took:?}"
    );
    // It was told first: the frame types sent include GOAWAY (7).
    let mut types = Vec::new();
    let mut i = 0;
    while let Some(head) = buf.get(i..i + 9) {
        let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
        types.push(head[3]);
        i += 9 + len;
    }
    assert!(types.contains(&7), "frames sent: {types:?}");
}

/// An HTTP/1.1 caller served by the auto builder (TLS without ALPN, as
/// Java's `HttpsURLConnection` connects) that waits, silent, for a long
/// answer is not cut by the idle close: HTTP/1.1 has no PING to answer, so
/// only h2 callers must show a sign of life after it. Paused clock.
#[tokio::test(start_paused = true)]
async fn a_silent_http1_long_poll_without_alpn_gets_its_answer() {
    use http_body_util::BodyExt as _;
    use std::time::Duration;
    let pki = support::pki::Pki::new();
    let up = support::slow_upstream(Duration::from_secs(25)).await;
    let tls = format!("client_idle_timeout: 6s,\n{}", pki.tls_yaml(""));
    let p = start_proxy(&limited(&tls, &up.url())).await;
    let addr = p.running.as_ref().unwrap().proxy_addr;
    let stream = pki.caller(&[], None).connect(addr).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), None);
    let (mut tx, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/api/x")
        .header("host", "localhost")
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.into_body().collect().await.unwrap();
}

/// A caller still uploading when it is refused (413 for a body over
/// `max_request_body`) reads the response and sees a clean close, not a
/// reset: the proxy half-closes the connection and drains what still
/// comes (`proxy.delayed_close_timeout`) instead of closing a socket the
/// caller is writing to, which the kernel answers with a RST that can
/// destroy the 413 before the caller reads it.
#[tokio::test]
async fn a_refused_upload_is_drained_not_reset() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let up = echo_upstream().await;
    let p = start_proxy(&api_config("", &up.url(), "    max_request_body: 1KiB\n")).await;
    let addr = p.base.trim_start_matches("http://").to_owned();
    let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /api/upload HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Length: 10000000\r\n\r\n"
    );
    c.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    with_timeout(async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed before the response head");
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let got = String::from_utf8_lossy(&got).into_owned();
    assert!(got.starts_with("HTTP/1.1 413"), "{got}");
    // The caller goes on with its body, as one that writes it all before
    // reading would: every write is taken.
    let chunk = vec![b'x'; 64 << 10];
    with_timeout(async {
        for i in 0..64 {
            if let Err(e) = c.write_all(&chunk).await {
                panic!(
                    "write {i} after the 413 failed ({e}): the connection was reset, not drained"
                );
            }
        }
    })
    .await;
    // Done sending: the proxy closes its side too, cleanly.
    c.shutdown().await.unwrap();
    let mut rest = Vec::new();
    with_timeout(c.read_to_end(&mut rest))
        .await
        .expect("the connection was reset, not closed");
}

/// `Expect: 100-continue` with a declared body over the route's
/// `max_request_body`: the final 413 at once (RFC 9110 10.1.1), not `100
/// Continue` and then the upload. Before, the 401 retry read the body for
/// a replay first, so the caller was told to send it.
#[tokio::test]
async fn expect_continue_over_the_limit_gets_413_not_100() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    for retry in ["", "    retry: { enabled: false }\n"] {
        let up = echo_upstream().await;
        let p = start_proxy(&api_config(
            "",
            &up.url(),
            &format!("    max_request_body: 1KiB\n{retry}"),
        ))
        .await;
        let addr = p.base.trim_start_matches("http://").to_owned();
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(
            format!(
                "POST /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        with_timeout(async {
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = c.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed before a response head");
                got.extend_from_slice(&buf[..n]);
            }
        })
        .await;
        let head = String::from_utf8_lossy(&got);
        assert!(
            head.starts_with("HTTP/1.1 413"),
            "retry {retry:?}: told to send a body it will refuse: {head}"
        );
        assert_eq!(up.hit_count(), 0);
    }
}

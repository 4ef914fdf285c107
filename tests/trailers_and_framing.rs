//! Trailers and framing: hop-by-hop and routing names in a caller's or an
//! upstream's trailers (removed, as in headers, so an h2 peer does not
//! refuse the message), an upstream's `x-latchkey-*` trailers (removed), a
//! transfer coding other than `chunked` (400, never silently dropped) and
//! an HTTP/1.1 request without `Host` (400).

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use http_body_util::BodyExt as _;
use std::net::SocketAddr;
use std::time::Duration;
use support::h2_trailers::h2_trailer_upstream;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::{CLIENT_TOKEN, api_config, billing_config};
use support::{TestCa, echo_upstream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn addr_of(p: &TestProxy) -> SocketAddr {
    p.base.trim_start_matches("http://").parse().unwrap()
}

/// Writes `req`, then reads until EOF or 10 s.
async fn raw(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// An h2 client connection to the proxy.
async fn h2_client(
    p: &TestProxy,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let s = TcpStream::connect(addr_of(p)).await.unwrap();
    let (tx, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(s),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    tx
}

/// README "Routing" > Forwarding: hop-by-hop headers are removed in both
/// directions, trailers included. A caller's chunked body whose trailers
/// carry a hop-by-hop name used to go to an h2 upstream as it was: the h2
/// client refused the trailers, the body never ended, and the caller
/// waited the whole route `timeout` for a 504. Routing and framing names
/// (`host`, `content-length`, `x-forwarded-*`, `x-request-id`) go too.
#[tokio::test]
async fn a_callers_hop_by_hop_trailers_are_removed_on_the_way_to_an_h2_upstream() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let (up, seen) = h2_trailer_upstream(&ca).await;
    let route_extra = format!(
        "    ca_file: \"{}\"\n    retry: {{ enabled: false }}\n    timeout: 5s\n",
        ca_path.display()
    );
    let p = start_proxy(&api_config("", &format!("https://{up}"), &route_extra)).await;
    for trailers in [
        "te: gzip\r\n",
        "connection: close\r\n",
        "connection: x-hop\r\nx-hop: 1\r\nkeep-alive: 5\r\ntransfer-encoding: chunked\r\nupgrade: h2c\r\nproxy-connection: close\r\n",
        "host: evil.example\r\ncontent-length: 9\r\nx-forwarded-for: 6.6.6.6\r\nx-forwarded-host: evil\r\nx-request-id: forged\r\n",
    ] {
        seen.lock().unwrap().clear();
        let req = format!(
            "POST /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
             5\r\nhello\r\n0\r\n{trailers}x-ok: 1\r\n\r\n"
        );
        let out = tokio::time::timeout(Duration::from_secs(4), raw(addr_of(&p), &req))
            .await
            .unwrap_or_else(|_| panic!("trailers {trailers:?}: no answer within 4 s"));
        assert_eq!(status_of(&out), 200, "trailers {trailers:?}: {out}");
        assert_eq!(*seen.lock().unwrap(), ["x-ok: 1"], "trailers {trailers:?}");
    }
}

/// A raw HTTP/1.1 upstream answering every request with a chunked body
/// and `trailer` plus `x-sum: 1` as its trailer section.
async fn chunked_trailer_upstream(trailer: &'static str) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: x-sum\r\n\
                     Connection: close\r\n\r\n5\r\nhello\r\n0\r\n{trailer}x-sum: 1\r\n\r\n"
                );
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

/// GETs `/api/a` from an h2 caller through a route to `upstream`; returns
/// the body and its trailers, or the error the body broke off with.
async fn h2_get_through(upstream: SocketAddr) -> Result<(bytes::Bytes, http::HeaderMap), String> {
    let p = start_proxy(&api_config("", &format!("http://{upstream}"), "")).await;
    let mut tx = h2_client(&p).await;
    let req = http::Request::get("http://h/api/a")
        .header("authorization", format!("Bearer {CLIENT_TOKEN}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = tx.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?;
    let trailers = body.trailers().cloned().unwrap_or_default();
    Ok((body.to_bytes(), trailers))
}

/// An HTTP/1.1 upstream's trailer named `connection` or `te` reset an h2
/// caller's stream (h2 forbids them) instead of ending the body it was
/// sent: it is removed, and the other trailers arrive.
#[tokio::test]
async fn an_upstreams_hop_by_hop_trailers_do_not_break_an_h2_callers_response() {
    for t in ["connection: close\r\n", "te: gzip\r\n", "keep-alive: 5\r\n"] {
        let (body, trailers) = h2_get_through(chunked_trailer_upstream(t).await)
            .await
            .unwrap_or_else(|e| panic!("trailer {t:?}: the h2 caller's response broke off: {e}"));
        assert_eq!(body, "hello", "trailer {t:?}");
        assert_eq!(trailers.len(), 1, "trailer {t:?}: {trailers:?}");
        assert_eq!(trailers["x-sum"], "1", "trailer {t:?}");
    }
}

/// An HTTP/1.1 upstream's trailers reach an HTTP/1.1 caller: the
/// `Trailer` header that announces them is passed on (hyper sends only
/// announced trailers; removed as hop-by-hop, it dropped them all).
#[tokio::test]
async fn an_upstreams_announced_trailers_reach_an_http11_caller() {
    let up = chunked_trailer_upstream("").await;
    let p = start_proxy(&api_config("", &format!("http://{up}"), "")).await;
    let resp = raw(
        addr_of(&p),
        &format!(
            "GET /api/a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             TE: trailers\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status_of(&resp), 200, "{resp}");
    let lower = resp.to_ascii_lowercase();
    assert!(lower.contains("\r\ntrailer: x-sum\r\n"), "{resp}");
    assert!(lower.contains("\r\n0\r\nx-sum: 1\r\n\r\n"), "{resp}");
}

/// README "Errors": any `x-latchkey-*` an upstream sets is removed, as a
/// trailer too (gRPC clients read trailers).
#[tokio::test]
async fn an_upstreams_x_latchkey_trailers_do_not_reach_the_caller() {
    let up =
        chunked_trailer_upstream("x-latchkey-retry: recovered\r\nx-latchkey-error: no_route\r\n")
            .await;
    let (body, trailers) = h2_get_through(up).await.unwrap();
    assert_eq!(body, "hello");
    assert_eq!(trailers.len(), 1, "{trailers:?}");
    assert_eq!(trailers["x-sum"], "1");
}

fn open_config(upstream: &str) -> String {
    billing_config(
        "[\"*\"]",
        &format!(
            "  - id: key
    match: {{ path_prefix: /key/ }}
    upstream: {upstream}
    credential: upstream-key
    inject: {{ header: X-Api-Key }}
  - id: open
    match: {{ path_prefix: /open/ }}
    upstream: {upstream}
    public: true
"
        ),
    )
}

/// RFC 9112 6.1: a transfer coding other than `chunked` is not understood
/// (nginx answers 501). hyper decodes the chunking of `gzip, chunked`; the
/// header then went as hop-by-hop and the still gzip-coded bytes were
/// forwarded as the body. Anything but one `chunked` is refused; a plain
/// `chunked` body goes on.
#[tokio::test]
async fn a_transfer_coding_other_than_chunked_is_a_bad_request() {
    let up = echo_upstream().await;
    let p = start_proxy(&open_config(&up.url())).await;
    for te in [
        "gzip, chunked",
        "chunked, chunked",
        "identity, chunked",
        "chunked\r\nTransfer-Encoding: chunked",
    ] {
        let req = format!(
            "POST /key/a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Transfer-Encoding: {te}\r\nConnection: close\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n"
        );
        let r = raw(addr_of(&p), &req).await;
        assert_eq!(status_of(&r), 400, "{te:?}: {r}");
        assert!(r.contains("x-latchkey-error: bad_request"), "{te:?}: {r}");
        assert!(r.contains("Transfer-Encoding"), "{te:?}: {r}");
    }
    assert_eq!(up.hit_count(), 0);
    // Before client auth: the framing is wrong whoever sends it.
    let req = "POST /key/a HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\
               Connection: close\r\n\r\n0\r\n\r\n";
    assert_eq!(status_of(&raw(addr_of(&p), req).await), 400);
    for te in ["chunked", "Chunked"] {
        let req = format!(
            "POST /key/a HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Transfer-Encoding: {te}\r\nConnection: close\r\n\r\n4\r\nGZIP\r\n0\r\n\r\n"
        );
        let r = raw(addr_of(&p), &req).await;
        assert_eq!(status_of(&r), 200, "{te:?}: {r}");
    }
}

/// RFC 9112 3.2: an HTTP/1.1 request without `Host` is a 400 (nginx and
/// Envoy answer so). HTTP/1.0 has no `Host` requirement, and an h2 request
/// may leave out `:authority` and `Host` (RFC 9113 8.3.1): both go to a
/// route without a host.
#[tokio::test]
async fn an_http11_request_without_host_is_a_bad_request() {
    let up = echo_upstream().await;
    let p = start_proxy(&open_config(&up.url())).await;
    let r = raw(
        addr_of(&p),
        &format!("GET /key/a HTTP/1.1\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&r), 400, "{r}");
    assert!(r.contains("x-latchkey-error: bad_request"), "{r}");
    assert!(r.contains("must have a Host header"), "{r}");
    assert_eq!(up.hit_count(), 0);
    // Absolute-form carries the authority: no `Host` needed.
    let r = raw(
        addr_of(&p),
        &format!("GET http://h/key/a HTTP/1.1\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    let r = raw(
        addr_of(&p),
        &format!("GET /key/a HTTP/1.0\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\r\n"),
    )
    .await;
    assert_eq!(status_of(&r), 200, "{r}");
    // h2 without `:authority` (a relative URI) and without `Host`.
    let req = http::Request::get("/key/a")
        .header("authorization", format!("Bearer {CLIENT_TOKEN}"))
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = h2_client(&p).await.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(up.hit_count(), 3);
}

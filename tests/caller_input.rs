//! What a caller sends that the proxy must not pass on or blame on the
//! upstream: a malformed body (400, the caller's fault), a body that stalls
//! while the 401 retry would read it (answered, never held for ever), an
//! `h2c` upgrade (never a tunnel past routing and the audit trail), an
//! ambiguous host (400), and its proxy token (or a value for the injected
//! credential header) sent as a trailer.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::time::Duration;
use support::harness::{TestProxy, start_proxy, start_proxy_with};
use support::proxy_helpers::{CLIENT_TOKEN, api_config};
use support::{echo_upstream, echoed_header};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn one_route(upstream: &str, route_extra: &str, proxy_extra: &str) -> String {
    api_config(proxy_extra, upstream, route_extra)
}

fn addr_of(p: &TestProxy) -> SocketAddr {
    p.base.trim_start_matches("http://").parse().unwrap()
}

/// Writes `raw`, then reads until EOF or `limit`.
async fn raw(addr: SocketAddr, raw: &[u8], limit: Duration) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(raw).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(limit, s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// A malformed chunked body is the caller's fault: 400 `bad_request`,
/// whether the 401 retry reads it first (on) or it breaks while being sent
/// upstream (off); never a 502 blaming the upstream.
#[tokio::test]
async fn a_malformed_body_is_a_bad_request_not_an_upstream_failure() {
    let up = echo_upstream().await;
    for extra in ["", "    retry: { enabled: false }\n"] {
        let sink = std::sync::Arc::new(audit::MemorySink::new());
        let options = latchkey::StartOptions {
            audit_sink: Some(sink.clone()),
            ..Default::default()
        };
        let p = start_proxy_with(&one_route(&up.url(), extra, ""), options).await;
        let req = format!(
            "POST /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZZ\r\n\r\n"
        );
        let resp = raw(addr_of(&p), req.as_bytes(), Duration::from_secs(5)).await;
        let status = resp.lines().next().unwrap_or_default();
        assert!(status.contains(" 400 "), "{extra:?}: {resp}");
        assert!(
            resp.contains("x-latchkey-error: bad_request"),
            "{extra:?}: {resp}"
        );
        // The record names the stage: the caller's body.
        let record = sink.requests().pop().unwrap();
        assert_eq!(record["rejected_by"], "request_body", "{extra:?}: {record}");
        assert_eq!(record["audit"]["action"], "reject", "{record}");
    }
}

/// A GET with a chunked body (an Elasticsearch `_search` streamed by its
/// client) reaches the upstream with that body, and one over the route's
/// `max_request_body` is refused: hyper sends a GET of unknown length
/// bodiless, and the body was dropped unread (a match-all query instead of
/// the one sent; no 413). With and without the 401 retry's read-ahead (a
/// body over its replay cap streams behind what it read).
#[tokio::test]
async fn a_chunked_get_body_is_forwarded_and_limited() {
    let up = echo_upstream().await;
    for extra in [
        "    retry: { enabled: false }\n",
        "    retry: { max_replay_body: 4 }\n",
    ] {
        let limited = format!("    max_request_body: 1KiB\n{extra}");
        let p = start_proxy(&one_route(&up.url(), &limited, "")).await;
        let small = format!(
            "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n9\r\n{{\"q\":\"x\"}}\r\n0\r\n\r\n"
        );
        let resp = raw(addr_of(&p), small.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 200 "), "{extra:?}: {resp}");
        let json = resp.split("\r\n\r\n").nth(1).unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["body"], "{\"q\":\"x\"}", "{extra:?}: {v}");
        let big = format!(
            "GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n800\r\n{}\r\n0\r\n\r\n",
            "x".repeat(2048)
        );
        let resp = raw(addr_of(&p), big.as_bytes(), Duration::from_secs(5)).await;
        assert!(resp.starts_with("HTTP/1.1 413 "), "{extra:?}: {resp}");
    }
}

/// A body that declares 10 bytes and sends 3 while the 401 retry would
/// read it for replay: after a second's pause the request goes on, and
/// the route's timeout answers it as the caller's stall (408
/// `request_timeout`: the upstream was waiting for the rest of the body);
/// the request's slot is free again for the next caller.
#[tokio::test]
async fn a_stalled_body_is_answered_and_frees_its_slot() {
    let up = echo_upstream().await;
    let p = start_proxy(&one_route(
        &up.url(),
        "    timeout: 1s\n",
        ", max_concurrent_requests: 1",
    ))
    .await;
    let req = format!(
        "POST /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Content-Length: 10\r\n\r\nabc"
    );
    let resp = raw(addr_of(&p), req.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        resp.lines().next().unwrap_or_default().contains(" 408 "),
        "{resp}"
    );
    assert!(resp.contains("x-latchkey-error: request_timeout"), "{resp}");
    let ok = format!(
        "GET /api/y HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Connection: close\r\n\r\n"
    );
    let next = raw(addr_of(&p), ok.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        next.lines().next().unwrap_or_default().contains(" 200 "),
        "the slot was freed: {next}"
    );
}

/// `Upgrade: h2c` is not tunnelled: the upstream gets a plain request
/// without `Upgrade` (and without the `Connection` options naming it).
#[tokio::test]
async fn an_h2c_upgrade_is_forwarded_as_a_plain_request() {
    let up = echo_upstream().await;
    let p = start_proxy(&one_route(&up.url(), "", "")).await;
    let (status, _, body) = support::get(
        &p.url("/api/x"),
        &[
            ("authorization", &format!("Bearer {CLIENT_TOKEN}")),
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAARAAAAAAAIAAAAA"),
        ],
    )
    .await;
    assert_eq!(status, 200);
    let echoed = support::json(&body);
    assert_eq!(echoed_header(&echoed, "upgrade"), None);
    assert_eq!(echoed_header(&echoed, "http2-settings"), None);
}

/// Several `Host` lines, or a `Host` that differs from an absolute-form
/// target's authority: which host is meant is ambiguous, 400 `bad_request`.
/// The same host twice in one form is fine.
#[tokio::test]
async fn an_ambiguous_host_is_a_bad_request() {
    let up = echo_upstream().await;
    let p = start_proxy(&one_route(&up.url(), "", "")).await;
    let auth = format!("Authorization: Bearer {CLIENT_TOKEN}\r\nConnection: close\r\n");
    for (target, hosts, want) in [
        ("/api/x", "Host: a\r\nHost: b\r\n", " 400 "),
        ("http://a/api/x", "Host: b\r\n", " 400 "),
        ("http://a/api/x", "Host: A\r\n", " 200 "),
        ("/api/x", "Host: a\r\n", " 200 "),
    ] {
        let req = format!("GET {target} HTTP/1.1\r\n{hosts}{auth}\r\n");
        let resp = raw(addr_of(&p), req.as_bytes(), Duration::from_secs(5)).await;
        let status = resp.lines().next().unwrap_or_default();
        assert!(status.contains(want), "{target} {hosts:?}: {resp}");
        if want == " 400 " {
            assert!(resp.contains("x-latchkey-error: bad_request"), "{resp}");
        }
    }
}

/// The caller's `Authorization` and `Proxy-Authorization` are removed
/// from its trailers as from its headers: sent as trailers of a chunked
/// body, they do not reach the upstream (here an h2 one). Its other
/// trailers are.
#[tokio::test]
async fn the_callers_token_in_a_trailer_does_not_reach_the_upstream() {
    let trailers = format!(
        "authorization: Bearer {CLIENT_TOKEN}\r\nproxy-authorization: Bearer {CLIENT_TOKEN}\r\n\
         x-checksum: abc\r\n"
    );
    let (status, seen) = trailers_at_an_h2_upstream("", &trailers).await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(seen, ["x-checksum: abc"]);
}

/// On a route that injects into a header of its own (`x-api-key`), a
/// trailer of that name from the caller is dropped too: it would reach an
/// h2 upstream beside the injected header, and an upstream that reads
/// trailers could take the caller's value for the credential.
#[tokio::test]
async fn a_trailer_named_like_the_injected_header_does_not_reach_the_upstream() {
    let (status, seen) = trailers_at_an_h2_upstream(
        "    inject: { header: x-api-key }\n",
        "x-api-key: forged-by-the-caller\r\nX-Api-Key: again\r\nx-checksum: abc\r\n",
    )
    .await;
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(seen, ["x-checksum: abc"]);
}

/// Sends a chunked POST with `trailer_lines` as its trailers through a
/// route (`route_extra` added) to an h2 upstream over TLS; returns the
/// caller's status line and the trailers the upstream got.
async fn trailers_at_an_h2_upstream(
    route_extra: &str,
    trailer_lines: &str,
) -> (String, Vec<String>) {
    let ca = support::TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let (up, trailers) = support::h2_trailers::h2_trailer_upstream(&ca).await;
    let route_extra = format!(
        "    ca_file: \"{}\"\n    retry: {{ enabled: false }}\n{route_extra}",
        ca_path.display()
    );
    let p = start_proxy(&one_route(&format!("https://{up}"), &route_extra, "")).await;
    let declared: Vec<&str> = trailer_lines
        .split("\r\n")
        .filter_map(|l| l.split_once(':').map(|(k, _)| k))
        .collect();
    let request = format!(
        "POST /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\
         Transfer-Encoding: chunked\r\nTrailer: {}\r\n\
         Connection: close\r\n\r\n5\r\nhello\r\n0\r\n{trailer_lines}\r\n",
        declared.join(", ")
    );
    let out = raw(addr_of(&p), request.as_bytes(), Duration::from_secs(5)).await;
    let status = out.lines().next().unwrap_or_default().to_owned();
    let seen = trailers.lock().unwrap().clone();
    (status, seen)
}

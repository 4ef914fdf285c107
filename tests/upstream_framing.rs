//! How request and response bodies are framed across the proxy, against
//! real upstreams: an upload over `max_request_body` is 413 whether the
//! upstream speaks HTTP/1.1 or h2 (over h2 hyper only resets the stream,
//! and the proxy used to blame the upstream with a 502), and a response
//! with both `Transfer-Encoding` and `Content-Length` reaches the caller
//! whole (the stale length used to cut it short).

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] fns")]

mod support;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::net::SocketAddr;
use support::harness::start_proxy;
use support::proxy_helpers::header;
use support::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const TOKEN: &str = "framing-client-token";

fn config(routes: &str) -> String {
    format!(
        r#"proxy: {{ listen: 127.0.0.1:0 }}
clients:
  - {{ id: app, token: {{ value: "{TOKEN}" }}, routes: ["*"] }}
credentials:
  - {{ id: key, static: {{ value: "framing-key" }} }}
routes:
{routes}"#
    )
}

/// A route `id` on `/{id}/` to `upstream`, with `extra` (flow style).
fn route(id: &str, upstream: &str, extra: &str) -> String {
    format!(
        "  - {{ id: {id}, match: {{ path_prefix: /{id}/ }}, strip_prefix: true, upstream: \"{upstream}\", credential: key, inject: {{ header: x-api-key }}{extra} }}\n"
    )
}

/// 64 KiB, chunked (no `Content-Length`, so nothing is refused up front
/// and the 401 retry does not buffer it all).
async fn chunked_upload(url: String) -> (StatusCode, Bytes) {
    let chunks = futures_util::stream::iter(
        (0..64).map(|_| Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; 1024])))),
    );
    let req = Request::post(url)
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(StreamBody::new(chunks))
        .unwrap();
    let client = Client::builder(TokioExecutor::new()).build_http();
    let resp = with_timeout(client.request(req)).await.unwrap();
    let status = resp.status();
    (status, resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn an_upload_over_the_limit_is_413_to_h1_and_h2_upstreams() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let ca_path = ca.write_ca(dir.path());
    let h2 = tls_echo_upstream(&ca, true).await;
    let h1 = tls_echo_upstream(&ca, false).await;
    let extra = format!(
        ", ca_file: \"{}\", max_request_body: 1KiB",
        ca_path.display()
    );
    let routes = route("h2", &h2.https_url(), &extra) + &route("h1", &h1.https_url(), &extra);
    let proxy = start_proxy(&config(&routes)).await;
    for id in ["h1", "h2"] {
        let (status, body) = chunked_upload(proxy.url(&format!("/{id}/up"))).await;
        let text = String::from_utf8_lossy(&body);
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{id}: {text}");
        assert_eq!(json(&body)["error"]["code"], "body_too_large", "{id}");
    }
}

/// An upstream that answers every request head with `answer`, as is.
async fn raw_upstream(answer: &'static [u8]) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let mut seen = Vec::new();
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    seen.extend_from_slice(&buf[..n]);
                    while let Some(i) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        seen.drain(..i + 4);
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_response_with_both_framings_reaches_the_caller_whole() {
    let addr = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let proxy = start_proxy(&config(&route("raw", &format!("http://{addr}"), ""))).await;
    for _ in 0..2 {
        let (status, headers, body) = get(
            &proxy.url("/raw/x"),
            &[("authorization", &format!("Bearer {TOKEN}"))],
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(&body[..], b"hello", "{headers:?}");
        assert_ne!(header(&headers, "content-length"), Some("3"));
    }
}

/// GETs through a route to the raw upstream at `addr`, which must answer
/// with a 502 `upstream_unreachable`; returns the error body.
async fn bad_gateway_from(addr: SocketAddr) -> serde_json::Value {
    let proxy = start_proxy(&config(&route("raw", &format!("http://{addr}"), ""))).await;
    let (status, _, body) = get(
        &proxy.url("/raw/x"),
        &[("authorization", &format!("Bearer {TOKEN}"))],
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let v = json(&body);
    assert_eq!(v["error"]["code"], "upstream_unreachable");
    v
}

/// hyper takes at most 100 header lines in an upstream's response head (as
/// Envoy's `max_headers_count`): more is a 502 that says so, not a
/// connection failure.
#[tokio::test]
async fn a_response_head_of_too_many_lines_is_a_502_that_says_so() {
    let mut answer = String::from("HTTP/1.1 200 OK\r\ncontent-length: 2\r\n");
    for i in 0..120 {
        answer.push_str(&format!("set-cookie: c{i}=v\r\n"));
    }
    answer.push_str("\r\nok");
    let addr = raw_upstream(answer.leak().as_bytes()).await;
    let v = bad_gateway_from(addr).await;
    assert_eq!(
        v["error"]["message"],
        format!(
            "upstream http://{addr} is unreachable: its response head was refused: more than 100 header lines, or over ~400 KB"
        )
    );
}

/// An upstream's response in a transfer coding other than chunked (`gzip,
/// chunked`): hyper takes off the chunking only, and the header that says
/// the rest is gzip is hop-by-hop, so the caller would get gzip bytes it
/// was never told about. A 502 that says so, as nginx answers.
#[tokio::test]
async fn a_response_transfer_coding_other_than_chunked_is_a_502() {
    let addr = raw_upstream(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    let v = bad_gateway_from(addr).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("transfer coding other than chunked"),
        "{v}"
    );
}

/// Without a body (the answer to a HEAD), such a coding changes nothing
/// the caller gets: the response passes (the header goes, as hop-by-hop).
#[tokio::test]
async fn a_bodiless_response_in_such_a_coding_passes() {
    let addr =
        raw_upstream(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\nx-seen: 1\r\n\r\n")
            .await;
    let proxy = start_proxy(&config(&route("raw", &format!("http://{addr}"), ""))).await;
    let req = Request::head(proxy.url("/raw/x"))
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(http_body_util::Full::new(Bytes::new()))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(header(&headers, "x-seen"), Some("1"));
    assert_eq!(header(&headers, "transfer-encoding"), None);
    assert!(body.is_empty());
}

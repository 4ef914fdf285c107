//! Checks that the shared end-to-end test helpers behave as the other tests assume.

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http::{Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use support::*;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn echo_reports_request_over_http1() {
    let up = echo_upstream().await;
    let req = Request::post(format!("{}/a/b?x=1&y=2", up.url()))
        .header("x-test", "one")
        .header("x-test", "two")
        .body(Full::new(Bytes::from_static(b"hello")))
        .unwrap();
    let (status, headers, body) = send(req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let v = json(&body);
    assert_eq!(v["method"], "POST");
    assert_eq!(v["uri"], "/a/b?x=1&y=2");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "x=1&y=2");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["body"], "hello");
    assert_eq!(echoed_header(&v, "X-Test").as_deref(), Some("one"));
    assert_eq!(echoed_header_all(&v, "x-test"), ["one", "two"]);
    assert_eq!(up.hits.load(Ordering::SeqCst), 1);

    let (_, _, body) = get(&format!("{}/plain", up.url()), &[]).await;
    assert!(json(&body)["query"].is_null());
    assert_eq!(up.hit_count(), 2);
}

#[tokio::test]
async fn echo_speaks_h2c_prior_knowledge() {
    let up = echo_upstream().await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let resp = with_timeout(client.get(format!("{}/h2c", up.url()).parse().unwrap()))
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let v = json(&body);
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["uri"], "/h2c");
}

#[tokio::test]
async fn status_and_closed_port() {
    let up = status_upstream(503).await;
    let (status, _, body) = get(&up.url(), &[]).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["status"], 503);

    let url = closed_port_url().await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let res = with_timeout(client.get(url.parse().unwrap())).await;
    assert!(res.is_err(), "nothing should listen on {url}");
}

#[tokio::test]
async fn dropping_upstream_stops_it() {
    let up = echo_upstream().await;
    let addr = up.addr;
    drop(up);
    tokio::task::yield_now().await;
    // The abort is asynchronous; give the runtime a moment to drop the listener.
    let mut refused = false;
    for _ in 0..50 {
        if tokio::net::TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "listener still accepting after drop");
}

#[tokio::test]
async fn slow_upstream_delays() {
    let up = slow_upstream(Duration::from_millis(300)).await;
    let start = tokio::time::Instant::now();
    let (status, _, _) = get(&up.url(), &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(start.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn sse_first_event_arrives_before_gate() {
    let (fire, gate) = tokio::sync::oneshot::channel();
    let up = sse_upstream(gate).await;
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let resp = with_timeout(client.get(up.url().parse().unwrap()))
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let first = with_timeout(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");

    // The stream must still be open while the gate is closed.
    let pending = tokio::time::timeout(Duration::from_millis(200), body.frame()).await;
    assert!(pending.is_err(), "second event sent before gate fired");

    fire.send(()).unwrap();
    let second = with_timeout(body.frame()).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: second\n\n");
    assert!(with_timeout(body.frame()).await.is_none());
}

#[tokio::test]
async fn ws_echo_round_trip_and_headers() {
    let up = ws_echo_upstream().await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("{}/socket", up.ws_url()),
    )
    .unwrap();
    req.headers_mut()
        .insert("x-probe", http::HeaderValue::from_static("yes"));
    let (mut ws, _) = with_timeout(tokio_tungstenite::connect_async(req))
        .await
        .unwrap();
    ws.send(Message::text("ping")).await.unwrap();
    let reply = with_timeout(ws.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::text("ping"));
    ws.send(Message::binary(vec![1u8, 2, 3])).await.unwrap();
    let reply = with_timeout(ws.next()).await.unwrap().unwrap();
    assert_eq!(reply, Message::binary(vec![1u8, 2, 3]));
    ws.close(None).await.unwrap();

    assert_eq!(up.ws_header("X-Probe").as_deref(), Some("yes"));
    assert_eq!(up.ws_header("upgrade").as_deref(), Some("websocket"));
    assert_eq!(up.hit_count(), 1);
}

#[expect(
    clippy::unwrap_used,
    reason = "test helper outside #[test], where clippy's test allowance doesn't reach"
)]
async fn tls_get(
    ca: &TestCa,
    up: &Upstream,
    alpn: &[&[u8]],
    server_name: &str,
) -> serde_json::Value {
    let connector = tokio_rustls::TlsConnector::from(ca.client_config(alpn));
    let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned()).unwrap();
    let tls = with_timeout(connector.connect(name, tcp)).await.unwrap();
    let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let io = TokioIo::new(tls);
    let req = Request::get(format!("https://{server_name}/tls?q=1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = if h2 {
        let (mut sender, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        with_timeout(sender.send_request(req)).await.unwrap()
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        let (mut parts, body) = req.into_parts();
        // HTTP/1.1 wants origin-form on the wire.
        parts.uri = "/tls?q=1".parse().unwrap();
        with_timeout(sender.send_request(Request::from_parts(parts, body)))
            .await
            .unwrap()
    };
    assert_eq!(resp.status(), StatusCode::OK);
    json(&resp.into_body().collect().await.unwrap().to_bytes())
}

#[tokio::test]
async fn tls_echo_negotiates_h2_when_offered() {
    let ca = TestCa::new();
    let up = tls_echo_upstream(&ca, true).await;
    let v = tls_get(&ca, &up, &[b"h2", b"http/1.1"], "localhost").await;
    assert_eq!(v["version"], "HTTP/2.0");
    assert_eq!(v["uri"], "/tls?q=1");
    assert_eq!(v["authority"], "localhost");

    // IP SAN must validate too.
    let v = tls_get(&ca, &up, &[b"http/1.1"], "127.0.0.1").await;
    assert_eq!(v["version"], "HTTP/1.1");
}

#[tokio::test]
async fn tls_echo_without_h2_alpn_stays_on_http1() {
    let ca = TestCa::new();
    let up = tls_echo_upstream(&ca, false).await;
    let v = tls_get(&ca, &up, &[b"h2", b"http/1.1"], "localhost").await;
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(up.hit_count(), 1);
}

#[tokio::test]
async fn tls_rejects_untrusted_client() {
    let ca = TestCa::new();
    let other = TestCa::new();
    let up = tls_echo_upstream(&ca, true).await;
    let connector = tokio_rustls::TlsConnector::from(other.client_config(&[b"h2"]));
    let tcp = tokio::net::TcpStream::connect(up.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    assert!(with_timeout(connector.connect(name, tcp)).await.is_err());
}

#[test]
fn ca_writes_pem_file() {
    let ca = TestCa::new();
    let dir = tempfile::tempdir().unwrap();
    let path = ca.write_ca(dir.path());
    let written = std::fs::read_to_string(&path).unwrap();
    assert_eq!(written, ca.ca_pem());
    assert!(written.starts_with("-----BEGIN CERTIFICATE-----"));
    let (cert, key) = ca.issue(&["example.test", "127.0.0.1"]);
    assert!(cert.contains("BEGIN CERTIFICATE"));
    assert!(key.contains("PRIVATE KEY"));
    assert_ne!(free_port(), 0);
    let _ = Arc::new(ca);
}

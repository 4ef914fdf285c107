//! Timeouts on a keep-alive connection, whose requests reuse the
//! connection's timers (`proxy_core::timer`): each request's route timeout
//! and each wait for the next request head runs from its own start, not
//! from an earlier request's.

#![expect(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::client::conn::http1::SendRequest;
use std::time::Duration;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::{CLIENT_TOKEN, api_config, bearer};
use support::{echo_upstream, slow_path_upstream};
use tokio::time::Instant;

/// One HTTP/1.1 connection to the proxy: its sender and the task driving
/// it (which ends when the proxy closes the connection).
async fn caller(p: &TestProxy) -> (SendRequest<Empty<Bytes>>, tokio::task::JoinHandle<()>) {
    let addr = p.running.as_ref().expect("running").proxy_addr;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (tx, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    let conn = tokio::spawn(async move {
        let _ = conn.await;
    });
    (tx, conn)
}

/// Sends `GET path` on `tx`; the status and how long the answer took.
async fn get(tx: &mut SendRequest<Empty<Bytes>>, path: &str) -> (u16, Duration) {
    let req = http::Request::get(path)
        .header("host", "localhost")
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(Empty::new())
        .unwrap();
    let started = Instant::now();
    tx.ready().await.unwrap();
    let resp = tx.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    resp.into_body().collect().await.unwrap();
    (status, started.elapsed())
}

/// A slow request after a fast one gets its 504 at the route's timeout, a
/// fast one after it its 200, and the next slow one its 504 again, all on
/// one caller connection. Paused clock.
#[tokio::test(start_paused = true)]
async fn the_route_timeout_holds_for_every_request_on_a_keep_alive_connection() {
    let up = slow_path_upstream(Duration::from_secs(2)).await;
    let p = start_proxy(&api_config("", &up.url(), "    timeout: 200ms\n")).await;
    let (mut tx, conn) = caller(&p).await;
    for (path, want) in [
        ("/api/fast", 200),
        ("/api/slow", 504),
        ("/api/fast", 200),
        ("/api/slow", 504),
    ] {
        let (status, waited) = get(&mut tx, path).await;
        assert_eq!(status, want, "{path}");
        if want == 504 {
            assert!(
                waited >= Duration::from_millis(200) && waited < Duration::from_millis(1900),
                "{path} answered after {waited:?}"
            );
        }
    }
    assert!(!conn.is_finished(), "the caller's connection stays open");
}

/// `client_header_timeout: 5s`: a caller that sends a request every 3 s
/// keeps its connection past the first head's deadline, 5 s after it
/// connected; once it goes quiet, the connection closes 5 s after its
/// last answer. Paused clock.
#[tokio::test(start_paused = true)]
async fn the_header_timeout_runs_from_each_answer_on_a_keep_alive_connection() {
    let up = echo_upstream().await;
    let p = start_proxy(&api_config(", client_header_timeout: 5s", &up.url(), "")).await;
    let (mut tx, conn) = caller(&p).await;
    for _ in 0..4 {
        let (status, _) = get(&mut tx, "/api/x").await;
        assert_eq!(status, 200);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    // 12 s after connecting, 3 s after the last answer: still open.
    assert!(
        !conn.is_finished(),
        "closed at a deadline of an earlier request"
    );
    let (status, _) = get(&mut tx, "/api/x").await;
    assert_eq!(status, 200);
    let last = Instant::now();
    tokio::time::timeout(Duration::from_secs(60), conn)
        .await
        .expect("the idle connection is closed")
        .unwrap();
    let quiet = last.elapsed();
    assert!(
        quiet >= Duration::from_secs(5) && quiet < Duration::from_secs(7),
        "closed {quiet:?} after the last answer"
    );
}

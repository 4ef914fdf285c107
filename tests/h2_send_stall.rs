//! `proxy.send_timeout` for h2 callers (README, `proxy.send_timeout`): an
//! h2 caller that never opens a stream's flow-control window, while its
//! connection stays open, does not hold that response's upstream side and
//! in-flight slot for ever. Over h2 the socket does not fill (each stream
//! may be sent only its window), so the socket-level timer of HTTP/1.1
//! never sees it; the stream's body is watched instead, and the
//! connection is closed, as a send timeout closes an HTTP/1.1 one.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::{CLIENT_TOKEN, api_config, bearer};
use support::{get, handler_upstream, text_response, with_timeout};
use tokio::net::TcpStream;

fn addr_of(p: &TestProxy) -> SocketAddr {
    p.base.trim_start_matches("http://").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_caller_that_takes_none_of_a_response_frees_its_slot() {
    // 1 MiB answers: far more than one stream window (64 KiB).
    let up = handler_upstream(|_req| async {
        text_response(StatusCode::OK, Bytes::from(vec![b'x'; 1 << 20]))
    })
    .await;
    // One request at a time; the caller's connection is never closed as
    // idle, so only the stalled stream's cut can free the slot.
    let p = start_proxy(&api_config(
        ", max_concurrent_requests: 1, send_timeout: 2s, client_idle_timeout: 0s",
        &up.url(),
        "",
    ))
    .await;
    let s = TcpStream::connect(addr_of(&p)).await.unwrap();
    let (mut tx, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(65_535)
            .initial_connection_window_size(1 << 24)
            .adaptive_window(false)
            .handshake(hyper_util::rt::TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://h/api/big")
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    // The headers come; the body is never read, so its window stays shut.
    let resp = with_timeout(tx.send_request(req)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let auth = bearer(CLIENT_TOKEN);
    let (first, _, _) = get(&p.url("/api/x"), &[("authorization", auth.as_str())]).await;
    assert_eq!(first, StatusCode::SERVICE_UNAVAILABLE, "the slot is held");
    // Cut after send_timeout (checked every quarter of it, at least 250
    // ms apart): the slot is free again.
    with_timeout(async {
        loop {
            let (status, _, _) = get(&p.url("/api/x"), &[("authorization", auth.as_str())]).await;
            if status == StatusCode::OK {
                return;
            }
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    // And the connection is closed (after a GOAWAY and a grace of a
    // third of the timeout, at least 1 s), its stream with it.
    with_timeout(async {
        while !tx.is_closed() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    drop(resp);
}

//! `proxy.send_timeout`: a caller that stops reading its response is cut
//! off once the proxy's writes to it made no progress for the limit, and
//! the upstream stream and in-flight slot it held are freed. (The timer
//! itself is tested on a paused clock in `latchkey::server::send`; these
//! run the whole proxy over real sockets, in real time, with a 1 s limit.)

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use bytes::Bytes;
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::harness::start_proxy;
use support::proxy_helpers::{CLIENT_TOKEN, api_config, bearer};
use support::with_timeout;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// Counts the response bodies dropped before their end (the proxy let go
/// of the upstream's response).
struct Dropped(Arc<AtomicUsize>);

impl Drop for Dropped {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// An upstream answering every request with an endless body (64 KiB
/// chunks); returns its address and the count of bodies dropped.
async fn endless_upstream() -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let dropped = Arc::new(AtomicUsize::new(0));
    let count = dropped.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let count = count.clone();
            let svc = hyper::service::service_fn(move |_req| {
                let guard = Dropped(count.clone());
                let chunk = Bytes::from(vec![b'x'; 64 << 10]);
                let body = futures_util::stream::unfold(guard, move |guard| {
                    let chunk = chunk.clone();
                    async move { Some((Ok::<_, Infallible>(Frame::data(chunk)), guard)) }
                });
                async move {
                    Ok::<_, Infallible>(http::Response::new(http_body_util::StreamBody::new(body)))
                }
            });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    (format!("http://{addr}"), dropped)
}

/// Status of a GET of `/api/x` through the proxy at `base` (the body is
/// not read: the connection is dropped with it).
async fn status_of(base: &str) -> u16 {
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build_http::<http_body_util::Empty<Bytes>>();
    let req = http::Request::get(format!("{base}/api/x"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(http_body_util::Empty::new())
        .unwrap();
    with_timeout(client.request(req))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A raw connection to the proxy at `base` that has sent a GET of
/// `/api/x` (and reads nothing yet).
async fn caller_of(base: &str) -> TcpStream {
    let addr = base.trim_start_matches("http://").to_owned();
    let mut caller = TcpStream::connect(&addr).await.unwrap();
    let req =
        format!("GET /api/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {CLIENT_TOKEN}\r\n\r\n");
    caller.write_all(req.as_bytes()).await.unwrap();
    caller
}

/// A caller sends a request and never reads: once the socket is full and
/// a second has passed without progress, its connection is closed, the
/// upstream's response is let go of, and the one in-flight slot it held
/// serves the next request. What the caller's socket had taken is still
/// readable, and then the connection ends.
#[tokio::test]
async fn a_caller_that_stops_reading_is_cut_and_frees_its_slot() {
    let (upstream, dropped) = endless_upstream().await;
    let p = start_proxy(&api_config(
        ", max_concurrent_requests: 1, send_timeout: 1s",
        &upstream,
        "",
    ))
    .await;
    let mut caller = caller_of(&p.base).await;
    let sent = tokio::time::Instant::now();

    // The response has begun (its status line is read; nothing more is),
    // and while the caller holds it, the one slot is taken.
    let mut head = [0u8; 17];
    with_timeout(caller.read_exact(&mut head)).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
    assert_eq!(
        status_of(&p.base).await,
        503,
        "the stalled response holds the slot"
    );
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "cut before the timeout");

    with_timeout(async {
        while dropped.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "cut after the limit, not before: {:?}",
        sent.elapsed()
    );
    // The slot went with the cut response (this one, read by nobody
    // either, is dropped by the client at once).
    assert_eq!(status_of(&p.base).await, 200, "the slot is free again");

    // What the caller's socket had taken is still readable, and then the
    // connection ends (a FIN after it, or a reset once the linger ran out
    // with unread data): `with_timeout` fails the test if it does not.
    let mut got = Vec::new();
    let _ended = with_timeout(caller.read_to_end(&mut got)).await;
    assert!(!got.is_empty(), "the rest of what was sent is readable");
}

/// `0s` turns the limit off: a caller that stops reading for twice the
/// 1 s that cut it above still holds its response.
#[tokio::test]
async fn zero_keeps_a_stalled_caller_connected() {
    let (upstream, dropped) = endless_upstream().await;
    let p = start_proxy(&api_config(", send_timeout: 0s", &upstream, "")).await;
    let mut caller = caller_of(&p.base).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(dropped.load(Ordering::SeqCst), 0, "still streaming");
    let mut head = [0u8; 17];
    caller.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 200 OK\r\n");
}

//! `routes[].response_idle_timeout`: an upstream that stops sending its
//! response body mid-way is cut after the limit, so it does not hold the
//! caller and the request's in-flight slot for as long as the caller
//! waits. (The timer itself is tested with a paused clock in
//! `proxy_core::idle`; these run the whole proxy, in real time.)

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use http_body_util::BodyExt as _;
use std::time::Duration;
use support::harness::{TestProxy, start_proxy};
use support::proxy_helpers::{CLIENT_TOKEN, api_config, bearer};
use support::{sse_upstream, with_timeout};

/// Opens a GET of `/api/stream` and returns the response head and body.
async fn open(p: &TestProxy) -> http::Response<hyper::body::Incoming> {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let req = http::Request::get(p.url("/api/stream"))
        .header("authorization", bearer(CLIENT_TOKEN))
        .body(http_body_util::Empty::new())
        .unwrap();
    with_timeout(client.request(req)).await.unwrap()
}

/// The stream's first event arrives, then the upstream goes quiet: after
/// `response_idle_timeout` the caller's response breaks off (not a clean
/// end it could mistake for the whole stream), and the one in-flight slot
/// it held is free again for the next request.
#[tokio::test]
async fn a_response_the_upstream_stops_sending_is_cut_and_frees_its_slot() {
    // The gate is never fired while the test runs: the second event never
    // comes.
    let (gate, rx) = tokio::sync::oneshot::channel::<()>();
    let up = sse_upstream(rx).await;
    let p = start_proxy(&api_config(
        ", max_concurrent_requests: 1",
        &up.url(),
        "    response_idle_timeout: 1s\n",
    ))
    .await;

    let resp = open(&p).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = with_timeout(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    let quiet_since = tokio::time::Instant::now();
    // While it is held open, the one slot is taken.
    let shed = open(&p).await;
    assert_eq!(shed.status(), 503, "the stalled stream holds the slot");

    let end = with_timeout(body.frame()).await;
    let waited = quiet_since.elapsed();
    assert!(
        matches!(end, Some(Err(_))),
        "the caller sees the response break off, not end: {end:?}"
    );
    // The proxy's timer started when it sent the first event, a moment
    // before the test read it: a loose lower bound, never one that a
    // slow read could fail.
    assert!(
        waited >= Duration::from_millis(500),
        "cut after the limit, not before: {waited:?}"
    );

    // The slot went with the cut response.
    let next = open(&p).await;
    assert_eq!(next.status(), 200, "the slot is free again");
    drop(gate);
}

/// `0s` turns the limit off: a quiet stream stays open (here for twice
/// the 1 s that cut it above) and ends when the upstream ends it.
#[tokio::test]
async fn zero_keeps_a_quiet_stream_open() {
    let (gate, rx) = tokio::sync::oneshot::channel::<()>();
    let up = sse_upstream(rx).await;
    let p = start_proxy(&api_config(
        "",
        &up.url(),
        "    response_idle_timeout: 0s\n",
    ))
    .await;
    let resp = open(&p).await;
    let mut body = resp.into_body();
    let first = with_timeout(body.frame()).await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "data: first\n\n");
    let quiet = tokio::time::timeout(Duration::from_secs(2), body.frame()).await;
    assert!(quiet.is_err(), "still open and quiet: {quiet:?}");
    gate.send(()).unwrap();
    let second = with_timeout(body.frame()).await.unwrap().unwrap();
    assert_eq!(second.into_data().unwrap(), "data: second\n\n");
    assert!(with_timeout(body.frame()).await.is_none(), "a clean end");
}

//! End-to-end tests of a 401 retry whose replay itself fails: the upstream
//! refuses the first attempt's credential, the forced refresh succeeds, and
//! the replay then times out or cannot reach the upstream. README, "401
//! retry": the caller gets the replay's failure, and (README, "Errors") a
//! response that went through the 401 retry carries `x-latchkey-retry`.
//!
//! A whole proxy in-process, the real OAuth2 token endpoint of
//! `support/retry.rs`, and a raw upstream scripted per connection.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use audit::MemorySink;
use http::StatusCode;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use support::harness::start_proxy_with;
use support::retry::{config, endpoint, retry_header, route};
use support::{get, json, with_timeout};

/// What the upstream does with every connection after the first.
#[derive(Clone, Copy)]
enum Replay {
    /// Reads nothing and answers nothing, for as long as the test runs.
    Hangs,
    /// Closes it at once, before reading the request.
    Closes,
}

/// A raw upstream on `127.0.0.1:0`: its first connection gets a 401 (any
/// credential) and is closed, so the replay needs a connection of its own;
/// later ones are handled as `replay` says. Returns its address and the
/// count of connections accepted.
async fn refusing_upstream(replay: Replay) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        let mut held: Vec<TcpStream> = Vec::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            if count.fetch_add(1, Ordering::SeqCst) > 0 {
                match replay {
                    Replay::Hangs => held.push(conn),
                    Replay::Closes => drop(conn),
                }
                continue;
            }
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = br#"{"error":"invalid_token"}"#;
                let resp = format!(
                    "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n\
                     content-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(resp.as_bytes()).await;
                let _ = conn.write_all(body).await;
                let _ = conn.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// A proxy with its audit records in a sink, its token endpoint, and a
/// route (`timeout` as given) to an upstream that refuses the first
/// attempt and treats the replay as `replay` says (its connections
/// counted).
async fn proxy_before(
    replay: Replay,
    timeout: &str,
) -> (
    Arc<support::token_endpoint::TokenEndpoint>,
    Arc<AtomicUsize>,
    support::harness::TestProxy,
    Arc<MemorySink>,
) {
    let ep = endpoint().await;
    let (upstream, accepted) = refusing_upstream(replay).await;
    let sink = Arc::new(MemorySink::new());
    let p = start_proxy_with(
        &config(
            &ep,
            "",
            "",
            &route(
                "api",
                "/api/",
                &format!("http://{upstream}"),
                "api",
                &format!("    timeout: {timeout}\n"),
            ),
        ),
        latchkey::StartOptions {
            audit_sink: Some(sink.clone()),
            ..Default::default()
        },
    )
    .await;
    (ep, accepted, p, sink)
}

/// Sends one GET through a proxy to an upstream that refuses the first
/// attempt and fails the replay as `replay` says; checks what the caller
/// got against `status` and `code`, and that the audit record agrees.
async fn replay_fails(replay: Replay, status: StatusCode, code: &str) {
    let (ep, accepted, p, sink) = proxy_before(replay, "300ms").await;
    let (got, headers, body) = get(&p.url("/api/a"), &[]).await;
    assert_eq!(got, status, "{}", String::from_utf8_lossy(&body));
    assert_eq!(json(&body)["error"]["code"], code);
    assert_eq!(headers["x-latchkey-error"], code);
    assert_eq!(
        retry_header(&headers),
        Some("recovered"),
        "the error came from the replay: {headers:?}"
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "one attempt, one replay"
    );
    assert_eq!(ep.calls(), 2, "the first token, then one forced refresh");
    // The record is written as the response goes out: wait for it.
    let record = with_timeout(async {
        loop {
            if let Some(r) = sink.requests().pop() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(record["retry401"]["outcome"], "recovered", "{record}");
    assert_eq!(record["reason"], code, "{record}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_times_out_says_it_went_through_the_retry() {
    replay_fails(
        Replay::Hangs,
        StatusCode::GATEWAY_TIMEOUT,
        "upstream_timeout",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_cannot_reach_the_upstream_says_it_went_through_the_retry() {
    replay_fails(
        Replay::Closes,
        StatusCode::BAD_GATEWAY,
        "upstream_unreachable",
    )
    .await;
}

/// The caller goes away while the replay waits for the upstream: the
/// record says the retry was under way (`attempted`, no outcome yet) and
/// does not pair the first attempt's 401 with the new credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_gone_during_the_replay_leaves_no_stale_upstream_status() {
    let (_ep, accepted, p, sink) = proxy_before(Replay::Hangs, "30s").await;
    let url = p.url("/api/a");
    let caller = tokio::spawn(async move { get(&url, &[]).await });
    with_timeout(async {
        while accepted.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    // The replay's connection is open: the replay got its credential and
    // its facts were cleared before it connected. The caller leaves.
    caller.abort();
    let record = with_timeout(async {
        loop {
            if let Some(r) = sink.requests().pop() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(record["audit"]["action"], "client_cancel", "{record}");
    assert_eq!(record["retry401"]["attempted"], true, "{record}");
    assert!(record["retry401"]["outcome"].is_null(), "{record}");
    assert!(record["upstream_status"].is_null(), "{record}");
    assert!(record["upstream_ms"].is_null(), "{record}");
    assert_eq!(record["credential"]["generation"], 2, "{record}");
    assert_eq!(record["refresh"]["trigger"], "forced", "{record}");
    p.stop().await;
}

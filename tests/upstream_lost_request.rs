//! An upstream that closes an idle keep-alive connection just as a request
//! arrives on it (its own idle timeout ending: Node.js's 5 s, nginx's
//! 75 s): the request was written and never answered. An idempotent
//! request without a body is sent once more on a new connection, with its
//! credential, and the caller gets the answer; a `POST` is never sent
//! twice, and its caller gets `502 upstream_unreachable`. A resend is
//! counted in `latchkey_upstream_resends_total{route}`. (Which requests
//! qualify, and the connection that stayed busy: the pool's unit tests in
//! `proxy-core`, `upstream/pool/tests/resend.rs`.)

#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] fns")]

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use audit::MemorySink;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use support::harness::{TestProxy, start_proxy_with};
use support::proxy_helpers::{
    CLIENT_TOKEN, UPSTREAM_KEY, assert_proxy_error, bearer, billing_config,
};
use support::raw::read_request_head;
use support::{Upstream, get, send};
use tokio::io::AsyncWriteExt as _;
use tokio::net::{TcpListener, TcpStream};

type Heads = Arc<Mutex<Vec<(usize, String)>>>;

/// A raw HTTP/1.1 upstream whose first connection answers one request and
/// then reads the next and closes without an answer; later connections
/// answer every request with `conn N`. Records each request head it read,
/// with its connection's number.
async fn upstream_losing_its_second_request() -> (Upstream, Arc<AtomicUsize>, Heads) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let heads: Heads = Arc::default();
    let (counter, seen) = (accepted.clone(), heads.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let conn = counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(serve(stream, conn, seen.clone()));
        }
    });
    (Upstream::from_parts(addr, task), accepted, heads)
}

async fn serve(mut stream: TcpStream, conn: usize, seen: Heads) {
    for request in 0usize.. {
        let Some(head) = read_request_head(&mut stream).await else {
            return;
        };
        seen.lock().unwrap().push((conn, head));
        if conn == 0 && request == 1 {
            return;
        }
        let body = format!("conn {conn}");
        let answer = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The proxy with route `id` on `/api/` to `up`. (Each test its own route
/// id: the metrics recorder is one per process.)
async fn start(up: &Upstream, id: &str) -> (TestProxy, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let options = latchkey::StartOptions {
        audit_sink: Some(sink.clone()),
        ..Default::default()
    };
    let route = format!(
        "  - id: {id}\n    match: {{ path_prefix: /api/ }}\n    upstream: {}\n    credential: upstream-key\n",
        up.url()
    );
    let yaml = billing_config("[\"*\"]", &route);
    (start_proxy_with(&yaml, options).await, sink)
}

/// The `latchkey_upstream_resends_total` line of route `id`, if any.
async fn resends(p: &TestProxy, id: &str) -> Option<String> {
    let (status, _, body) = get(&format!("{}/metrics", p.admin), &[]).await;
    assert_eq!(status, StatusCode::OK);
    let series = format!("latchkey_upstream_resends_total{{route=\"{id}\"}} ");
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(&series))
        .map(str::to_owned)
}

/// Lets the pooled connection sit idle for a while (the paused clock moved
/// on): the pool keeps a request for a resend only on a connection that had
/// been idle for 100 ms, as one an upstream's idle timer closes has been.
async fn idle_a_second() {
    tokio::time::pause();
    tokio::time::advance(Duration::from_secs(1)).await;
    tokio::time::resume();
}

/// The request records, oldest first.
fn records(sink: &MemorySink) -> Vec<Value> {
    sink.records()
        .into_iter()
        .filter(|r| r["kind"] == "request")
        .collect()
}

#[tokio::test]
async fn a_get_the_upstream_dropped_unanswered_is_answered_from_a_new_connection() {
    let (up, accepted, heads) = upstream_losing_its_second_request().await;
    let (p, sink) = start(&up, "lost-get").await;
    let auth = bearer(CLIENT_TOKEN);
    let first = get(&p.url("/api/one"), &[("authorization", &auth)]).await;
    assert_eq!(
        (first.0, first.2),
        (StatusCode::OK, Bytes::from_static(b"conn 0"))
    );
    assert_eq!(resends(&p, "lost-get").await, None);
    idle_a_second().await;

    let second = get(&p.url("/api/two?page=2"), &[("authorization", &auth)]).await;
    assert_eq!(
        (second.0, second.2),
        (StatusCode::OK, Bytes::from_static(b"conn 1"))
    );
    assert_eq!(accepted.load(Ordering::SeqCst), 2);
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3, "{heads:?}");
    assert_eq!((heads[1].0, heads[2].0), (0, 1));
    assert_eq!(heads[1].1, heads[2].1, "the same request, both times");
    assert!(
        heads[2].1.starts_with("GET /api/two?page=2 HTTP/1.1\r\n"),
        "{}",
        heads[2].1
    );
    let injected = format!("authorization: Bearer {UPSTREAM_KEY}\r\n");
    assert!(
        heads[2].1.contains(&injected),
        "with its credential: {}",
        heads[2].1
    );

    let records = records(&sink);
    assert_eq!(records.len(), 2, "{records:#?}");
    let r = &records[1];
    assert_eq!(r["audit"]["action"], "allow");
    assert_eq!(r["audit"]["status_code"], 200);
    assert_eq!(r["upstream_status"], 200);
    assert_eq!(r["reason"], Value::Null);
    assert_eq!(r["denial_source"], Value::Null);
    assert_eq!(r["credential"]["outcome"], "injected");
    assert_eq!(
        resends(&p, "lost-get").await.as_deref(),
        Some("latchkey_upstream_resends_total{route=\"lost-get\"} 1")
    );
}

#[tokio::test]
async fn a_post_the_upstream_dropped_unanswered_is_not_sent_again() {
    let (up, accepted, heads) = upstream_losing_its_second_request().await;
    let (p, sink) = start(&up, "lost-post").await;
    let auth = bearer(CLIENT_TOKEN);
    let first = get(&p.url("/api/one"), &[("authorization", &auth)]).await;
    assert_eq!(first.0, StatusCode::OK);
    idle_a_second().await;

    let post = Request::post(p.url("/api/orders"))
        .header("authorization", &auth)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send(post).await;
    assert_proxy_error(&resp, 502, "upstream_unreachable");
    assert_eq!(accepted.load(Ordering::SeqCst), 1, "no second connection");
    assert_eq!(
        heads.lock().unwrap().len(),
        2,
        "the upstream saw the POST once"
    );

    let records = records(&sink);
    assert_eq!(records.len(), 2, "{records:#?}");
    let r = &records[1];
    assert_eq!(
        (
            &r["audit"]["action"],
            &r["audit"]["status_code"],
            &r["reason"]
        ),
        (&json!("error"), &json!(502), &json!("upstream_unreachable"))
    );
    assert_eq!(r["denial_source"], "local");
    assert_eq!(r["upstream_status"], Value::Null);
    assert_eq!(resends(&p, "lost-post").await, None);
}

//! End-to-end tests of the audit trail: the whole proxy in-process, records
//! captured with a `MemorySink`, real upstreams and a real OAuth2 token
//! endpoint. One test per `reason`, plus allow, client cancel and a
//! proactive refresh (`records`); a request cut at the drain timeout
//! (`shutdown`); the `/metrics` series after a known mix
//! of traffic and the secrets canary (`metrics_and_secrets`); the real
//! binary's stdout / file / stderr split (`binary`).
//!
//! Records are compared whole (every key) after [`norm`] replaced what
//! varies from run to run (time stamps, ids, durations, the caller's port)
//! with placeholders, once it checked their shape. The Prometheus recorder
//! is process-wide, so every test uses its own route and credential ids.

#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test by panicking"
)]

mod support;

use std::sync::Arc;
use std::time::Duration;

use audit::MemorySink;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde_json::{Value, json};
use support::harness::{TestProxy, start_proxy_with};
use support::proxy_helpers::{CLIENT_TOKEN, OTHER_TOKEN, UNSET_VAR, UPSTREAM_KEY, bearer, config};
use support::token_endpoint::{self, EndpointOptions, Failure, TokenEndpoint};
use support::{TEST_TIMEOUT, closed_port_url, echo_upstream, get, send, slow_upstream};
use support::{status_upstream, with_timeout};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

async fn start(yaml: &str) -> (TestProxy, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::new());
    let options = latchkey::StartOptions {
        audit_sink: Some(sink.clone()),
        ..Default::default()
    };
    (start_proxy_with(yaml, options).await, sink)
}

/// Client `billing` (allowed on `billing_routes`), client `search`
/// (allowed only on `{p}-search`, which nothing calls), the static
/// credential `{p}-key` and `creds`, then `routes`.
fn setup(p: &str, billing_routes: &str, creds: &str, routes: &str) -> String {
    config(&format!(
        "clients:
  - id: billing
    token: {{ value: \"{CLIENT_TOKEN}\" }}
    routes: {billing_routes}
  - id: search
    token: {{ value: \"{OTHER_TOKEN}\" }}
    routes: [{p}-search]
credentials:
  - id: {p}-key
    static: {{ value: \"{UPSTREAM_KEY}\" }}
{creds}
routes:
  - id: {p}-search
    match: {{ path_prefix: /{p}-search/ }}
    upstream: http://127.0.0.1:9
{routes}"
    ))
}

/// A route `id` on `/{id}/` to `upstream` with `extra` lines.
fn route(id: &str, upstream: &str, extra: &str) -> String {
    format!("  - id: {id}\n    match: {{ path_prefix: /{id}/ }}\n    upstream: {upstream}\n{extra}")
}

/// An OAuth2 `refresh_token` credential `id` at `ep`, plus `extra` lines.
fn oauth(id: &str, ep: &TokenEndpoint, extra: &str) -> String {
    format!(
        "  - id: {id}
    oauth2:
      grant: refresh_token
      token_url: {}
      client_id: audit-client
      client_secret: {{ value: audit-client-secret }}
      refresh_token: {{ value: rt-0 }}
{extra}",
        ep.url
    )
}

async fn endpoint(expires_in: u64) -> TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in,
        client_id: Some("audit-client".into()),
        client_secret: Some("audit-client-secret".into()),
        ..EndpointOptions::default()
    })
    .await
}

async fn get_as(p: &TestProxy, token: &str, path: &str) -> StatusCode {
    get(&p.url(path), &[("authorization", &bearer(token))])
        .await
        .0
}

/// Waits until `pick` finds a record, or fails after [`TEST_TIMEOUT`].
async fn wait_for(sink: &MemorySink, pick: impl Fn(&[Value]) -> Option<Value>) -> Value {
    let deadline = tokio::time::Instant::now() + TEST_TIMEOUT;
    loop {
        if let Some(v) = pick(&sink.records()) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no matching record in {:#?}",
            sink.records()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A raw connection that has sent `GET {path}` with the billing token,
/// once the request reached `up` (which then holds it).
async fn held_at_upstream(
    p: &TestProxy,
    up: &support::Upstream,
    path: &str,
) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt as _;
    let addr = p.running.as_ref().map(|r| r.proxy_addr).unwrap();
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {CLIENT_TOKEN}\r\n\r\n"
    );
    conn.write_all(req.as_bytes()).await.unwrap();
    with_timeout(async {
        while up.hit_count() == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    conn
}

/// The one request record (there must be exactly one).
fn only_request(sink: &MemorySink) -> Value {
    let recs = sink.requests();
    assert_eq!(recs.len(), 1, "{recs:#?}");
    recs.into_iter().next().unwrap_or_default()
}

fn check_ts(v: &Value) {
    // 2026-11-23T01:02:03.456Z
    let s = v.as_str().unwrap_or_else(|| panic!("ts {v}"));
    let shape = s.bytes().enumerate().all(|(i, c)| match i {
        4 | 7 => c == b'-',
        10 => c == b'T',
        13 | 16 => c == b':',
        19 => c == b'.',
        23 => c == b'Z',
        _ => c.is_ascii_digit(),
    });
    assert!(shape && s.len() == 24, "ts {s}");
}

fn check_ms(v: &Value) {
    assert!(
        v.as_f64().is_some_and(|ms| ms >= 0.0),
        "not a duration: {v}"
    );
}

fn set(v: &mut Value, path: &[&str], with: &str, check: impl Fn(&Value)) {
    let mut cur = Some(v);
    for k in path {
        cur = cur.and_then(|c| c.get_mut(*k));
    }
    if let Some(cur) = cur.filter(|c| !c.is_null()) {
        check(cur);
        *cur = Value::String(with.into());
    }
}

/// Replaces what varies between runs with placeholders, after checking it.
fn norm(mut v: Value) -> Value {
    set(&mut v, &["ts"], "<ts>", check_ts);
    set(&mut v, &["expires_at"], "<ts>", check_ts);
    set(&mut v, &["duration_ms"], "<ms>", check_ms);
    set(&mut v, &["request_id"], "<id>", |id| {
        assert_eq!(id.as_str().map(str::len), Some(36), "request id {id}");
    });
    set(&mut v, &["audit", "duration_ms"], "<ms>", check_ms);
    set(&mut v, &["upstream_ms"], "<ms>", check_ms);
    set(&mut v, &["refresh", "duration_ms"], "<ms>", check_ms);
    set(&mut v, &["audit", "remote_addr"], "127.0.0.1:<port>", |a| {
        assert!(
            a.as_str().is_some_and(|a| a.starts_with("127.0.0.1:")),
            "{a}"
        );
    });
    set(&mut v, &["audit", "host"], "<proxy>", |h| {
        assert!(
            h.as_str().is_some_and(|h| h.starts_with("127.0.0.1:")),
            "{h}"
        );
    });
    v
}

/// A whole request record: `audit` gets the normalised common fields, the
/// rest comes from `fields` (missing keys are null or the empty objects).
fn expected(method: &str, path: &str, action: &str, status: u16, fields: Value) -> Value {
    let mut v = json!({
        "kind": "request", "ts": "<ts>", "request_id": "<id>", "client": null, "route": null,
        "audit": {
            "host": "<proxy>", "method": method, "path": path, "remote_addr": "127.0.0.1:<port>",
            "action": action, "status_code": status, "duration_ms": "<ms>"
        },
        "rejected_by": null, "upstream_status": null, "upstream_ms": null, "denial_source": null,
        "credential": {"id": null, "generation": null, "outcome": "none", "token_age_s": null, "token_ttl_s": null},
        "refresh": {"ran": false, "trigger": null, "result": null, "duration_ms": null, "error_code": null},
        "retry401": {"attempted": false, "outcome": null},
        "reason": null
    });
    for (k, x) in fields.as_object().cloned().unwrap_or_default() {
        v[k] = x;
    }
    v
}

fn static_injected(id: &str) -> Value {
    json!({"id": id, "generation": 1, "outcome": "injected", "token_age_s": "<age>", "token_ttl_s": null})
}

/// `norm` plus the static credential's age, which depends on start-up time.
fn norm_age(v: Value) -> Value {
    let mut v = norm(v);
    set(&mut v, &["credential", "token_age_s"], "<age>", |a| {
        assert!(a.as_i64().is_some_and(|a| (0..5).contains(&a)), "age {a}");
    });
    v
}

#[path = "audit/binary.rs"]
mod binary;
#[path = "audit/metrics_and_secrets.rs"]
mod metrics_and_secrets;
#[path = "audit/records.rs"]
mod records;
#[path = "audit/shutdown.rs"]
mod shutdown;

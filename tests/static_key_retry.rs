//! The 401 retry on a route with a static key read from a `file` secret:
//! the file is re-read when rewritten, so a request refused with the old
//! key is replayed once with the new one. (A key from a literal value or an
//! environment variable never changes while the config runs, and its
//! routes go without the 401 retry: `src/build/tests.rs` checks which
//! routes get it, `retry_replay.rs` that a literal key's 401 stands.)
//!
//! Real sockets: a hyper upstream on `127.0.0.1:0` and the proxy
//! in-process, with the management API to see the rotation land.
#![expect(clippy::unwrap_used, reason = "test helpers outside #[test] fns")]

mod support;

use std::convert::Infallible;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use support::harness::start_proxy;
use support::retry::retry_header;
use support::{Upstream, get, json, with_timeout};
use tokio::net::TcpListener;

const MANAGEMENT_KEY: &str = "static-retry-management-key";

/// Serves `handler` on a fresh loopback port, HTTP/1.1.
async fn serve<H, F>(handler: H) -> Upstream
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream::from_parts(addr, task)
}

fn respond(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp
}

/// One public route `/api/` to `upstream` with static credential `key`
/// from `secret` (a secret reference in YAML), files polled every 50 ms,
/// and the management API on the admin listener.
fn config(secret: &str, upstream: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0", drain_timeout: 2s }}
admin: {{ listen: "127.0.0.1:0", management_key: {{ value: {MANAGEMENT_KEY} }} }}
secrets: {{ file_poll_interval: 50ms }}
credentials:
  - id: key
    static: {secret}
routes:
  - id: api
    match: {{ path_prefix: /api/ }}
    upstream: {upstream}
    credential: key
    public: true
"#
    )
}

/// The generation the management API reports for credential `key`.
async fn generation(admin: &str) -> u64 {
    let (status, _, body) = get(
        &format!("{admin}/v0/management/credentials/key"),
        &[("authorization", &format!("Bearer {MANAGEMENT_KEY}"))],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    json(&body)["generation"].as_u64().unwrap()
}

/// README, "Static keys are not replayed ... (A `file` secret whose content
/// changed since the request is a new generation, and is replayed with the
/// new value.)": the upstream refuses the old key only once the file holds
/// a new one that latchkey has read, so the replay must carry the new key.
#[tokio::test]
async fn a_file_key_rewritten_while_a_request_waits_is_replayed_with_the_new_key() {
    let dir = tempfile::tempdir().unwrap();
    let key_file: PathBuf = dir.path().join("api-key");
    std::fs::write(&key_file, "old-key\n").unwrap();

    // Known once the proxy is up; the upstream needs it to see the
    // rotation land before it answers.
    let admin: Arc<OnceLock<String>> = Arc::default();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let up = {
        let (admin, seen, key_file) = (admin.clone(), seen.clone(), key_file.clone());
        serve(move |req: Request<Incoming>| {
            let (admin, seen, key_file) = (admin.clone(), seen.clone(), key_file.clone());
            async move {
                let auth = req
                    .headers()
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                seen.lock().unwrap().push(auth.clone());
                match auth.as_str() {
                    "Bearer new-key" => respond(StatusCode::OK, "accepted"),
                    "Bearer old-key" => {
                        // The key is rotated while this request waits for
                        // its answer, and the upstream refuses the old one
                        // only after latchkey has picked the new one up.
                        std::fs::write(&key_file, "new-key\n").unwrap();
                        let admin = admin.get().unwrap().clone();
                        while generation(&admin).await < 2 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        respond(StatusCode::UNAUTHORIZED, "revoked")
                    }
                    _ => respond(StatusCode::FORBIDDEN, "unknown key"),
                }
            }
        })
        .await
    };
    let secret = format!("{{ file: {} }}", key_file.display());
    let p = start_proxy(&config(&secret, &up.url())).await;
    admin.set(p.admin.clone()).unwrap();

    let (status, headers, body) = with_timeout(get(&p.url("/api/x"), &[])).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(&body[..], b"accepted");
    assert_eq!(retry_header(&headers), Some("recovered"));
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer old-key", "Bearer new-key"],
        "refused once with the old key, replayed once with the new one"
    );
    p.stop().await;
}

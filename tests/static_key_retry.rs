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

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use http::{Request, StatusCode};
use hyper::body::Incoming;
use support::harness::start_proxy;
use support::retry::retry_header;
use support::{get, handler_upstream, json, text_response, with_timeout};

const MANAGEMENT_KEY: &str = "static-retry-management-key";

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
        handler_upstream(move |req: Request<Incoming>| {
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
                    "Bearer new-key" => text_response(StatusCode::OK, "accepted"),
                    "Bearer old-key" => {
                        // The key is rotated while this request waits for
                        // its answer, and the upstream refuses the old one
                        // only after latchkey has picked the new one up.
                        std::fs::write(&key_file, "new-key\n").unwrap();
                        // Polled: latchkey announces the new generation
                        // nowhere else; bounded by the caller's timeout.
                        let admin = admin.get().unwrap().clone();
                        while generation(&admin).await < 2 {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        text_response(StatusCode::UNAUTHORIZED, "revoked")
                    }
                    _ => text_response(StatusCode::FORBIDDEN, "unknown key"),
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

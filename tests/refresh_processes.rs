//! Three `latchkey run` processes (the release binary under
//! `scripts/test.sh`) share one `file` store
//! and refresh the same rotating OAuth2 credential under load: one token
//! call per expiry between them, zero `invalid_grant`, every request served.
//!
//! Real processes cannot share tokio's paused clock, so this test uses short
//! real lifetimes (2 s tokens, 1 s buffer) and runs for about four seconds.

#![expect(
    clippy::expect_used,
    clippy::panic,
    reason = "test helpers outside #[test] fns"
)]

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::token_endpoint::{self, EndpointOptions};
use support::{echo_upstream, echoed_header, free_port, get, json};

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(config: &std::path::Path) -> Proc {
    let child = Command::new(binary())
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn latchkey");
    Proc(child)
}

/// The binary under test: the release build when `scripts/test.sh` provides
/// it (`LATCHKEY_RELEASE_BIN`), as the processes in production would run,
/// else the test profile's build.
fn binary() -> std::path::PathBuf {
    std::env::var_os("LATCHKEY_RELEASE_BIN")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_latchkey").into())
}

async fn wait_ready(admin: u16) {
    let url = format!("http://127.0.0.1:{admin}/readyz");
    for _ in 0..200 {
        if let Ok(Ok(resp)) = tokio::time::timeout(Duration::from_millis(200), async {
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<http_body_util::Full<bytes::Bytes>>()
                .get(url.parse().expect("url"))
                .await
        })
        .await
            && resp.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("latchkey on admin port {admin} never became ready");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_a_file_store_with_one_token_call_per_expiry() {
    let endpoint = token_endpoint::start(EndpointOptions {
        expires_in: 2,
        rotate: true,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs-canary".into()),
    })
    .await;
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let store = dir.path().join("store");

    let mut procs = Vec::new();
    // Token calls can only happen from here until the processes stop.
    let started = tokio::time::Instant::now();
    let mut proxies = Vec::new();
    for i in 0..3 {
        let (port, admin) = (free_port(), free_port());
        let yaml = format!(
            r#"
proxy: {{ listen: "127.0.0.1:{port}", drain_timeout: 2s }}
admin: {{ listen: "127.0.0.1:{admin}" }}
file_store: {{ dir: "{store}" }}
credentials:
  - id: crm
    oauth2:
      grant: refresh_token
      token_url: {token_url}
      client_id: latchkey
      client_secret: {{ value: cs-canary }}
      refresh_token: {{ value: rt-seed }}
    store: file
    refresh: {{ buffer: 1s }}
routes:
  - id: crm
    match: {{ path_prefix: /crm/ }}
    strip_prefix: true
    upstream: {upstream}
    credential: crm
    public: true
"#,
            store = store.display(),
            token_url = endpoint.url,
            upstream = upstream.url(),
        );
        let path = dir.path().join(format!("latchkey-{i}.yaml"));
        std::fs::write(&path, yaml).expect("write config");
        procs.push(spawn(&path));
        proxies.push((port, admin));
        // Start each process once the previous one is ready, as in a
        // rolling deployment; later ones adopt the stored credential.
        wait_ready(admin).await;
    }

    // Load on all processes for four seconds (about four expiries).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(4);
    let mut tasks = Vec::new();
    for (port, _) in proxies.iter().copied().cycle().take(9) {
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut bad) = (0usize, Vec::new());
            while tokio::time::Instant::now() < deadline {
                let (status, _, body) = get(&format!("http://127.0.0.1:{port}/crm/x"), &[]).await;
                let auth = if status == 200 {
                    echoed_header(&json(&body), "authorization")
                } else {
                    None
                };
                match auth {
                    Some(a) if a.starts_with("Bearer at-") => ok += 1,
                    _ => bad.push((status, String::from_utf8_lossy(&body).into_owned())),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, bad)
        }));
    }
    let mut total = 0;
    for t in tasks {
        let (ok, bad) = t.await.expect("load task");
        assert!(bad.is_empty(), "failed requests: {bad:?}");
        total += ok;
    }
    assert!(total > 100, "only {total} requests ran");

    // Stop them before reading the store, so no refresh is half-done.
    drop(procs);
    let ran = started.elapsed().as_secs_f64();
    let stored: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("crm.json")).expect("state file"))
            .expect("state json");
    let calls = endpoint.calls();
    assert_eq!(
        endpoint.invalid_grants(),
        0,
        "a rotated refresh token was reused"
    );
    // Every token call produced exactly one generation: no expiry was
    // refreshed twice, by any process.
    assert_eq!(
        stored["generation"].as_u64(),
        Some(calls as u64),
        "calls {calls}, state {stored}"
    );
    // About one refresh per second of a 2 s token with a 1 s buffer,
    // however long the processes took to start on a loaded machine:
    // three processes refreshing each expiry on their own would make
    // about three a second.
    assert!(
        calls >= 3 && (calls as f64) <= ran * 1.5 + 2.0,
        "{calls} token calls in {ran:.1} s"
    );
    assert_eq!(
        stored["refresh_token"].as_str().map(str::to_owned),
        endpoint.current_refresh_token()
    );
}

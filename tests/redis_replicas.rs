//! Replicas sharing a Redis store, as real `latchkey` processes: a replica
//! killed (SIGKILL) while it holds the refresh lock mid-refresh loses the
//! lock when its lease runs out, and another replica completes the refresh,
//! with no `invalid_grant`.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::harness::start_proxy;
use support::redis_server::RedisServer;
use support::token_endpoint::{self, EndpointOptions, Failure};
use support::{echo_upstream, echoed_header, free_port, get, json, with_timeout};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn config(listen: &str, admin: &str, redis: &str, token_url: &str, upstream: &str) -> String {
    format!(
        r#"
proxy: {{ listen: "{listen}", drain_timeout: 1s }}
admin: {{ listen: "{admin}" }}
redis:
  url: {{ value: "{redis}" }}
  key_prefix: lk-replicas
  encryption_keys: [ {{ value: "{KEY}" }} ]
  lock_lease: 1s
credentials:
  - id: crm
    oauth2:
      grant: refresh_token
      token_url: {token_url}
      client_id: latchkey
      client_secret: {{ value: cs-canary }}
      refresh_token: {{ value: rt-seed }}
    store: redis
routes:
  - id: crm
    match: {{ path_prefix: /crm/ }}
    strip_prefix: true
    upstream: {upstream}
    credential: crm
    public: true
"#
    )
}

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_refresh_is_taken_over_after_its_lease() {
    let redis = RedisServer::start().await;
    let endpoint = token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs-canary".into()),
    })
    .await;
    let upstream = echo_upstream().await;
    // Replica A will take the lock and then hang in its token call.
    endpoint.set_failure(Some(Failure::Hang));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("a.yaml");
    let (port, admin) = (free_port(), free_port());
    std::fs::write(
        &path,
        config(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{admin}"),
            &redis.url(),
            &endpoint.url,
            &upstream.url(),
        ),
    )
    .expect("config");
    let a = Command::new(env!("CARGO_BIN_EXE_latchkey"))
        .args(["run", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replica A");
    let mut a = Killed(a);

    // Wait until A holds the lock (it started its first refresh).
    let client = redis::Client::open(redis.url()).expect("redis client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    with_timeout(async {
        loop {
            let held: Option<String> = redis::cmd("GET")
                .arg("lk-replicas:lock:crm")
                .query_async(&mut conn)
                .await
                .expect("GET");
            if held.is_some() && endpoint.calls() >= 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // Kill it mid-refresh: no release, no renewal.
    let _ = a.0.kill();
    let _ = a.0.wait();
    endpoint.set_failure(None);

    // Replica B (in-process) needs the credential: it must wait for A's
    // lease to run out, then refresh with the seed A never managed to use.
    let b = start_proxy(&config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &redis.url(),
        &endpoint.url,
        &upstream.url(),
    ))
    .await;
    let started = tokio::time::Instant::now();
    let (status, _, body) = get(&b.url("/crm/x"), &[]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let auth = echoed_header(&json(&body), "authorization").expect("credential injected");
    assert_eq!(auth, format!("Bearer {}", endpoint.current_access_token()));
    assert_eq!(endpoint.invalid_grants(), 0);
    // B released the lock after its refresh (released asynchronously when
    // its guard dropped, so allow a moment).
    with_timeout(async {
        loop {
            let held: Option<String> = redis::cmd("GET")
                .arg("lk-replicas:lock:crm")
                .query_async(&mut conn)
                .await
                .expect("GET");
            if held.is_none() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(5));
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_visible_and_traffic_continues() {
    let mut redis = RedisServer::start().await;
    let endpoint = token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs-canary".into()),
    })
    .await;
    let upstream = echo_upstream().await;
    let p = start_proxy(&config(
        "127.0.0.1:0",
        "127.0.0.1:0",
        &redis.url(),
        &endpoint.url,
        &upstream.url(),
    ))
    .await;
    assert_eq!(get(&p.url("/crm/a"), &[]).await.0, 200);
    redis.stop();
    // A manual refresh needs Redis (the grant rotates): it fails, loudly.
    let running = p.running.as_ref().expect("running");
    let src = running.proxy().credentials[0].clone();
    assert!(src.refresh_now().await.is_err());
    // Traffic continues on the credential held in memory.
    for _ in 0..10 {
        assert_eq!(get(&p.url("/crm/b"), &[]).await.0, 200);
    }
    let st = src.status();
    assert_eq!(st.store, "redis");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("unavailable"),
        "{st:?}"
    );
    let (_, _, ready) = get(&format!("{}/readyz", p.admin), &[]).await;
    let ready = json(&ready);
    assert!(
        ready["stores"]["redis"]
            .as_str()
            .unwrap_or("")
            .starts_with("down"),
        "{ready}"
    );
    // Recovery is automatic.
    redis.restart().await;
    with_timeout(async {
        while src.refresh_now().await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let (_, _, ready) = get(&format!("{}/readyz", p.admin), &[]).await;
    assert_eq!(json(&ready)["stores"]["redis"], "up");
    let (_, _, metrics) = get(&format!("{}/metrics", p.admin), &[]).await;
    assert!(String::from_utf8_lossy(&metrics).contains("latchkey_store_up{store=\"redis\"} 1"));
    assert_eq!(endpoint.invalid_grants(), 0);
    p.stop().await;
}

//! Reloads that move a rotating credential to another Redis location
//! (another `redis.url`, another `redis.key_prefix`): another store, so
//! the live state held is written there at once, above an older run's
//! state found there, and the spent refresh token in that state is never
//! sent.

#![expect(clippy::expect_used, reason = "test helpers outside #[test] fns")]

mod support;

use refresh_layer::store::crypto::Keyring;
use refresh_layer::store::{RedisStore, RedisStoreSettings, Store};
use refresh_layer::token::StoredCredential;
use std::path::Path;
use std::time::Duration;
use support::get;
use support::redis_server::RedisServer;
use support::token_endpoint::{self, EndpointOptions, TokenEndpoint};

const TOKEN: &str = "moves-client-token";
const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

fn yaml(redis: &str, prefix: &str, upstream: &str, token_url: &str) -> String {
    format!(
        r#"proxy: {{ listen: "127.0.0.1:0" }}
admin: {{ listen: "127.0.0.1:0" }}
redis:
  url: {{ value: "{redis}" }}
  key_prefix: {prefix}
  encryption_keys: [ {{ value: "{KEY}" }} ]
clients:
  - id: app
    token: {{ value: {TOKEN} }}
    routes: ["*"]
credentials:
  - id: oauth
    oauth2:
      grant: refresh_token
      refresh_token: {{ value: rt-seed }}
      token_url: {token_url}
      client_id: latchkey
      client_secret: {{ value: cs }}
    store: redis
routes:
  - id: a
    match: {{ path_prefix: /a/ }}
    upstream: {upstream}
    credential: oauth
"#
    )
}

async fn start(path: &Path) -> latchkey::Running {
    support::gauges::start(path).await
}

async fn status(base: &str) -> u16 {
    let auth = format!("Bearer {TOKEN}");
    get(&format!("{base}/a/x"), &[("authorization", auth.as_str())])
        .await
        .0
        .as_u16()
}

async fn endpoint() -> TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs".into()),
    })
    .await
}

fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::new(RedisStoreSettings {
        url: url.into(),
        key_prefix: prefix.into(),
        keys: Keyring::from_base64([KEY]).expect("key"),
        lease: Duration::from_secs(5),
        timeout: Duration::from_secs(1),
        tls: None,
    })
    .expect("store")
}

/// What `url`/`prefix` holds for the credential, once it holds something.
async fn stored(url: &str, prefix: &str) -> StoredCredential {
    let s = store(url, prefix);
    support::with_timeout(async {
        loop {
            if let Ok(Some(state)) = s.load("oauth").await {
                return state;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// Another Redis that holds an older run's state (generation 7, its
/// refresh token spent long ago): the live state is written over it, and
/// the next refresh sends the live rotated refresh token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_another_redis_keeps_the_live_refresh_token() {
    let old_redis = RedisServer::start().await;
    let new_redis = RedisServer::start().await;
    let stale = StoredCredential {
        access_token: "at-stale".into(),
        expires_at_ms: Some(1_000),
        refresh_token: Some("rt-spent-long-ago".into()),
        generation: 7,
        obtained_at_ms: 1,
        provider: None,
    };
    store(&new_redis.url(), "latchkey")
        .save("oauth", &stale)
        .await
        .expect("an older run's state");
    let up = support::echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(
        &path,
        yaml(&old_redis.url(), "latchkey", &up.url(), &ep.url),
    )
    .expect("write");
    let running = start(&path).await;
    let base = format!("http://{}", running.proxy_addr);
    assert_eq!(status(&base).await, 200);
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("rotate");
    let live = ep.current_refresh_token();
    std::fs::write(
        &path,
        yaml(&new_redis.url(), "latchkey", &up.url(), &ep.url),
    )
    .expect("rewrite");
    running.reload().await.expect("reload");
    assert_eq!(status(&base).await, 200);
    support::with_timeout(async {
        while stored(&new_redis.url(), "latchkey").await.refresh_token != live {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let refreshed = running.proxy().credentials[0].refresh_now().await;
    assert_eq!(ep.last_form_value("refresh_token"), live, "{refreshed:?}");
    assert_eq!(ep.invalid_grants(), 0, "{refreshed:?}");
    running.shutdown().await;
}

/// A new `key_prefix` on the same Redis: the live state is written there
/// at once, so a restart (or a new replica) in the next hour starts from
/// it, not from the spent seed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_move_to_a_new_key_prefix_writes_the_live_state_there() {
    let redis = RedisServer::start().await;
    let up = support::echo_upstream().await;
    let ep = endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml(&redis.url(), "latchkey", &up.url(), &ep.url)).expect("write");
    let running = start(&path).await;
    assert_eq!(status(&format!("http://{}", running.proxy_addr)).await, 200);
    running.proxy().credentials[0]
        .refresh_now()
        .await
        .expect("rotate");
    let live = ep.current_refresh_token();
    std::fs::write(&path, yaml(&redis.url(), "latchkey-v2", &up.url(), &ep.url)).expect("rewrite");
    running.reload().await.expect("reload");
    assert_eq!(
        stored(&redis.url(), "latchkey-v2").await.refresh_token,
        live
    );
    running.shutdown().await;
    let restarted = start(&path).await;
    assert_eq!(
        status(&format!("http://{}", restarted.proxy_addr)).await,
        200
    );
    assert_eq!(ep.invalid_grants(), 0);
    restarted.shutdown().await;
}

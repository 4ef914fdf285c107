//! A reload that rebuilds a Redis-stored credential (a changed `redis`
//! section: a new encryption key, a new URL) while Redis is down keeps the
//! token the running source holds: the new source starts from it instead
//! of an empty memory it cannot fill from Redis.

mod support;

use latchkey::Config;
use latchkey::build::{Kept, StartOptions, build_proxy_with};
use std::time::Duration;
use support::redis_server::RedisServer;
use support::token_endpoint::{self, EndpointOptions};

const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
const NEW_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";
fn yaml(redis: &str, token_url: &str, keys: &str) -> String {
    format!(
        r#"
proxy: {{ listen: "127.0.0.1:0" }}
redis:
  url: {{ value: "{redis}" }}
  encryption_keys: [ {keys} ]
  timeout: 300ms
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
    upstream: http://127.0.0.1:9
    credential: crm
    public: true
"#
    )
}

/// The token endpoint the config names: rotating refresh tokens from
/// `rt-seed`, for client `latchkey`.
async fn rotating_endpoint() -> token_endpoint::TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: "rt-seed".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs-canary".into()),
    })
    .await
}

/// Redis is down and the running source serves the token it holds; a
/// reload adds an encryption key, which rebuilds the credential. The new
/// source serves the same token, without a token call (it could not save
/// a rotated one anyway).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_redis_outage_keeps_the_held_credential() {
    let mut redis = RedisServer::start().await;
    let ep = rotating_endpoint().await;
    let kept = Kept::default();
    let old_keys = format!("{{ value: \"{KEY}\" }}");
    let cfg = Config::from_yaml(&yaml(&redis.url(), &ep.url, &old_keys), "lk.yaml").unwrap();
    let p1 = build_proxy_with(cfg, "lk.yaml", &StartOptions::default(), None, &kept).unwrap();
    let crm = |p: &latchkey::build::Proxy| {
        p.credentials
            .iter()
            .find(|c| c.id() == "crm")
            .unwrap()
            .clone()
    };
    assert_eq!(crm(&p1).get().await.unwrap().expose(), "at-1");
    redis.stop();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        crm(&p1).get().await.unwrap().expose(),
        "at-1",
        "held token served while Redis is down"
    );
    // Reload: the new key first, the old one kept (README's rotation).
    let new_keys = format!("{{ value: \"{NEW_KEY}\" }}, {{ value: \"{KEY}\" }}");
    let cfg = Config::from_yaml(&yaml(&redis.url(), &ep.url, &new_keys), "lk.yaml").unwrap();
    let p2 = build_proxy_with(cfg, "lk.yaml", &StartOptions::default(), Some(&p1), &kept).unwrap();
    let got = crm(&p2).get().await;
    assert!(
        got.is_ok(),
        "after the reload the credential is gone: {:?}",
        got.err()
    );
    assert_eq!(got.unwrap().expose(), "at-1");
    assert_eq!(ep.calls(), 1, "the held token was fetched again");
}

/// A reload that keeps every Redis-stored credential (an unrelated edit:
/// a route added) builds no Redis store, so it does not read `redis.url`
/// again: a URL file mid-rotation (gone for a moment) does not refuse it.
/// A reload that rebuilds such a credential does read it, and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_keeps_the_redis_credentials_does_not_read_the_url() {
    let redis = RedisServer::start().await;
    let ep = rotating_endpoint().await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = dir.path().join("redis-url");
    std::fs::write(&url_file, redis.url()).unwrap();
    let keys = format!("{{ value: \"{KEY}\" }}");
    let with_url_file = |yaml: String| {
        yaml.replace(
            &format!("url: {{ value: \"{}\" }}", redis.url()),
            &format!("url: {{ file: {:?} }}", url_file.display().to_string()),
        )
    };
    let base = with_url_file(yaml(&redis.url(), &ep.url, &keys));
    assert!(base.contains("url: { file:"), "{base}");
    let kept = Kept::default();
    let cfg = Config::from_yaml(&base, "lk.yaml").unwrap();
    let p1 = build_proxy_with(cfg, "lk.yaml", &StartOptions::default(), None, &kept).unwrap();
    std::fs::remove_file(&url_file).unwrap();

    let added = format!(
        "{base}  - id: other\n    match: {{ path_prefix: /other/ }}\n    upstream: http://127.0.0.1:9\n    public: true\n"
    );
    let cfg = Config::from_yaml(&added, "lk.yaml").unwrap();
    let p2 = build_proxy_with(cfg, "lk.yaml", &StartOptions::default(), Some(&p1), &kept)
        .expect("an unrelated edit does not read redis.url");
    let same = |a: &latchkey::build::Proxy, b: &latchkey::build::Proxy| {
        let find = |p: &latchkey::build::Proxy| {
            p.credentials
                .iter()
                .find(|c| c.id() == "crm")
                .unwrap()
                .clone()
        };
        std::sync::Arc::ptr_eq(&find(a), &find(b))
    };
    assert!(same(&p1, &p2), "the credential is kept");

    // Rebuilding the credential (a new client id) needs the store: the
    // missing URL file is reported, naming the field.
    let changed = added.replace("client_id: latchkey", "client_id: latchkey-2");
    let cfg = Config::from_yaml(&changed, "lk.yaml").unwrap();
    let e = match build_proxy_with(cfg, "lk.yaml", &StartOptions::default(), Some(&p2), &kept) {
        Ok(_) => panic!("the store needs its URL"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("redis.url"), "{e}");
}

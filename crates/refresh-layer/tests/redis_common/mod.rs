#![allow(
    dead_code,
    unreachable_pub,
    reason = "shared by several test binaries, each uses a subset"
)]
#![allow(
    clippy::allow_attributes,
    reason = "expect would fail in the binaries that use every item"
)]
#![allow(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]
//! Shared helpers for the Redis store tests (`redis.rs`,
//! `redis_degraded.rs`): a store on a real `redis-server`, a rotating
//! token endpoint, and a replica (a [`RefreshingSource`] on both).

#[path = "../../../../tests/support/redis_server.rs"]
pub mod redis_server;
#[path = "../../../../tests/support/token_endpoint.rs"]
pub mod token_endpoint;

use redis_server::RedisServer;
use refresh_layer::provider::oauth2::OAuth2Provider;
use refresh_layer::store::crypto::Keyring;
use refresh_layer::store::{RedisStore, RedisStoreSettings};
use refresh_layer::{RefreshSettings, RefreshingSource};
use std::sync::Arc;
use std::time::Duration;
use token_endpoint::{EndpointOptions, TokenEndpoint};

pub const KEY: &str = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";
pub const OTHER_KEY: &str = "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=";

pub fn store_with(redis: &RedisServer, keys: &[&str]) -> RedisStore {
    RedisStore::new(RedisStoreSettings {
        url: redis.url(),
        key_prefix: "lk-test".into(),
        keys: Keyring::from_base64(keys.iter().copied()).unwrap(),
        lease: Duration::from_secs(2),
        timeout: Duration::from_millis(500),
        tls: None,
    })
    .unwrap()
}

pub async fn endpoint() -> TokenEndpoint {
    token_endpoint::start(EndpointOptions {
        expires_in: 3600,
        rotate: true,
        initial_refresh_token: "rt-seed-canary".into(),
        client_id: Some("latchkey".into()),
        client_secret: Some("cs-canary".into()),
    })
    .await
}

pub fn replica(ep: &TokenEndpoint, store: RedisStore) -> RefreshingSource {
    replica_with(ep, store, RefreshSettings::default())
}

pub fn replica_with(
    ep: &TokenEndpoint,
    store: RedisStore,
    settings: RefreshSettings,
) -> RefreshingSource {
    let cfg = serde_json::from_value(serde_json::json!({
        "grant": "refresh_token", "token_url": ep.url, "client_id": "latchkey",
        "client_secret": {"value": "cs-canary"}, "refresh_token": {"value": "rt-seed-canary"}
    }))
    .unwrap();
    let provider = OAuth2Provider::new(&cfg, Duration::from_secs(1)).unwrap();
    RefreshingSource::new("crm", Arc::new(provider), Arc::new(store), settings)
}

/// Runs one command on `redis`.
pub async fn command<T: redis::FromRedisValue>(redis: &RedisServer, args: &[&str]) -> T {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd(args[0])
        .arg(&args[1..])
        .query_async(&mut c)
        .await
        .unwrap()
}

/// Redis loses everything, as after a restart without persistence.
pub async fn flushall(redis: &RedisServer) {
    command::<()>(redis, &["FLUSHALL"]).await;
}

/// How many `HGET`s (state reads) `redis` has served.
pub async fn hgets(redis: &RedisServer) -> u64 {
    let info: String = command(redis, &["INFO", "commandstats"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_hget:calls="))
        .and_then(|rest| rest.split(',').next())
        .map_or(0, |n| n.parse().unwrap())
}

//! Replicas sharing a real `redis-server` that cannot all read, or write,
//! what is stored: a replica whose keyring does not decrypt the stored
//! state (a key rotation rolled out replica by replica), a state written by
//! a newer version with a field this one does not know, and a Redis that
//! answers but refuses writes (a read-only replica after a failover, out of
//! memory under `noeviction`).
//!
//! The rule checked throughout: a replica never sends a refresh token the
//! endpoint may have spent (the endpoint counts `invalid_grant`s), never
//! overwrites a state it cannot read, and a credential that cannot fork
//! keeps working when Redis cannot serve it.
#![expect(clippy::unwrap_used, reason = "tests")]

mod redis_common;

use proxy_core::CredentialSource;
use redis_common::redis_server::RedisServer;
use redis_common::{KEY, OTHER_KEY, endpoint, replica, store_with};
use refresh_layer::provider::{ProviderError, TokenProvider};
use refresh_layer::store::crypto::Keyring;
use refresh_layer::store::{RedisStore, Store};
use refresh_layer::token::{StoredCredential, Token};
use refresh_layer::{RefreshError, RefreshSettings, RefreshingSource};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap()
}

async fn redis_cmd<T: redis::FromRedisValue>(redis: &RedisServer, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut c).await.unwrap()
}

/// A `client_credentials`-like provider: 2 s tokens, nothing to fork.
#[derive(Debug, Default)]
struct NonRotating(AtomicUsize);

impl TokenProvider for NonRotating {
    fn kind(&self) -> &'static str {
        "non-rotating"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> futures_util::future::BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            Ok(Token {
                access_token: secrecy::SecretString::from(format!("local-{n}")),
                expires_in: Some(Duration::from_secs(2)),
                refresh_token: None,
            })
        })
    }
}

fn non_rotating(store: RedisStore) -> RefreshingSource {
    RefreshingSource::new(
        "cc",
        Arc::new(NonRotating::default()),
        Arc::new(store),
        RefreshSettings::default(),
    )
}

/// Key rotation rolled out replica by replica: a replica still on the old
/// keyring cannot decrypt what an updated replica wrote. It must not send
/// the refresh token it holds (spent by the updated replica's rotation):
/// the refresh fails with an error naming the credential and the cause,
/// the token held is still served, the refresh backs off, and the stored
/// state is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_read_the_newer_state_does_not_send_its_spent_refresh_token() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    let old = replica(&ep, store_with(&redis, &[KEY]));
    assert_eq!(within(old.get()).await.unwrap().expose(), "at-1");
    let new = replica(&ep, store_with(&redis, &[OTHER_KEY, KEY]));
    assert_eq!(within(new.get()).await.unwrap().expose(), "at-1"); // adopted
    within(new.refresh_now()).await.unwrap(); // rt-1 -> rt-2, sealed with the new key
    assert_eq!(ep.calls(), 2);

    let err = within(old.refresh_now()).await.unwrap_err();
    assert!(
        matches!(&err, RefreshError::StoreUnreadable { credential, .. } if credential == "crm"),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("credential crm"), "{msg}");
    assert!(
        msg.contains("no configured encryption key decrypts it"),
        "{msg}"
    );
    assert!(!msg.contains("canary") && !msg.contains("rt-"), "{msg}");
    assert_eq!(
        ep.invalid_grants(),
        0,
        "the replica that cannot read the newer stored state sent its spent refresh token"
    );
    assert_eq!(ep.calls(), 2, "no token call at all");
    // The token held is still served; the failure backs off.
    assert_eq!(within(old.get()).await.unwrap().expose(), "at-1");
    let st = old.status();
    assert_eq!(st.consecutive_failures, 1);
    assert!(st.last_error.unwrap().contains("unreadable"));
    // Nothing was overwritten.
    let stored = store_with(&redis, &[OTHER_KEY, KEY])
        .load("crm")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.generation, 2);
}

/// A fresh replica (nothing in memory) whose keyring does not decrypt the
/// stored state does not fall back to the config's seed refresh token,
/// spent after the first rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_decrypt_does_not_send_the_spent_seed() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    let a = replica(&ep, store_with(&redis, &[KEY]));
    assert_eq!(within(a.get()).await.unwrap().expose(), "at-1");
    let b = replica(&ep, store_with(&redis, &[OTHER_KEY]));
    let got = within(b.get()).await;
    let err = got.unwrap_err();
    assert!(err.reason.contains("unreadable"), "{}", err.reason);
    assert_eq!(
        ep.invalid_grants(),
        0,
        "the spent seed refresh token was sent while a newer (unreadable) state is stored"
    );
    assert_eq!(ep.calls(), 1);
    // The first replica's state is intact.
    assert_eq!(
        store_with(&redis, &[KEY])
            .load("crm")
            .await
            .unwrap()
            .unwrap()
            .generation,
        1
    );
}

/// Rolling upgrade: a newer version writes the state with one more field.
/// This version reads it (ignoring the field) and refreshes from the
/// stored refresh token, not its own spent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_with_an_extra_field_from_a_newer_version_is_read() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    let old = replica(&ep, store_with(&redis, &[KEY]));
    assert_eq!(within(old.get()).await.unwrap().expose(), "at-1");
    let newer = replica(&ep, store_with(&redis, &[KEY]));
    within(newer.get()).await.unwrap();
    within(newer.refresh_now()).await.unwrap(); // rt-1 -> rt-2
    let s = store_with(&redis, &[KEY]);
    let mut v = serde_json::to_value(s.load("crm").await.unwrap().unwrap()).unwrap();
    v["token_type"] = serde_json::json!("Bearer");
    let sealed = Keyring::from_base64([KEY])
        .unwrap()
        .seal("crm", &serde_json::to_vec(&v).unwrap())
        .unwrap();
    let () = redis_cmd(
        &redis,
        redis::cmd("HSET")
            .arg(s.credential_key("crm"))
            .arg("val")
            .arg(sealed),
    )
    .await;
    let st = within(old.refresh_now()).await.unwrap();
    assert_eq!(
        ep.invalid_grants(),
        0,
        "the old replica sent its spent refresh token"
    );
    // Manual refresh adopts the newer stored generation (still valid).
    assert_eq!(st.generation, 2);
    assert_eq!(within(old.get()).await.unwrap().expose(), "at-2");
}

/// A non-rotating credential whose stored state this replica cannot read
/// refreshes locally (nothing to fork), but never overwrites that state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_rotating_credential_refreshes_locally_without_overwriting_an_unreadable_state() {
    let redis = RedisServer::start().await;
    let a = non_rotating(store_with(&redis, &[KEY]));
    assert_eq!(within(a.get()).await.unwrap().expose(), "local-1");
    let b = non_rotating(store_with(&redis, &[OTHER_KEY]));
    assert_eq!(within(b.get()).await.unwrap().expose(), "local-1");
    // Each refresh has a newer generation than the stored one: only the
    // rule, not the compare-and-set, keeps it from being written.
    for _ in 0..3 {
        within(b.refresh_now()).await.unwrap();
    }
    assert_eq!(within(b.get()).await.unwrap().expose(), "local-4");
    let stored = store_with(&redis, &[KEY]).load("cc").await;
    assert_eq!(
        stored.unwrap().unwrap().access_token,
        "local-1",
        "the state sealed with a key this replica does not have was overwritten"
    );
}

/// After a failover, the Redis this replica talks to is a read-only
/// replica: every write answers `READONLY`. A credential that cannot fork
/// refreshes locally, as when Redis is down, and the store's health says
/// Redis cannot serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_redis_does_not_stop_a_non_rotating_credential() {
    let redis = RedisServer::start().await;
    let other = RedisServer::start().await;
    let src = non_rotating(store_with(&redis, &[KEY]));
    assert_eq!(within(src.get()).await.unwrap().expose(), "local-1");
    assert_eq!(src.status().store_error, None);
    let () = redis_cmd(
        &redis,
        redis::cmd("REPLICAOF").arg("127.0.0.1").arg(other.port),
    )
    .await;
    let got = within(src.refresh_now()).await;
    let st = got.unwrap_or_else(|e| panic!("a read-only Redis stopped the credential: {e}"));
    assert_eq!(st.generation, 2);
    let health = st.store_error.expect("store health reports the refusal");
    assert!(health.contains("READONLY"), "{health}");
}

/// The shipped deploy/redis runs `maxmemory` + `noeviction`: a full Redis
/// answers `OOM` to writes. Same as above.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_redis_does_not_stop_a_non_rotating_credential() {
    let redis = RedisServer::start().await;
    let src = non_rotating(store_with(&redis, &[KEY]));
    assert_eq!(within(src.get()).await.unwrap().expose(), "local-1");
    for (k, v) in [("maxmemory-policy", "noeviction"), ("maxmemory", "1")] {
        let () = redis_cmd(&redis, redis::cmd("CONFIG").arg("SET").arg(k).arg(v)).await;
    }
    let got = within(src.refresh_now()).await;
    let st = got.unwrap_or_else(|e| panic!("a full Redis stopped the credential: {e}"));
    assert_eq!(st.generation, 2);
    let health = st.store_error.expect("store health reports the refusal");
    assert!(health.contains("Redis answered OOM"), "{health}");
}

/// A rotating credential on a read-only Redis does not refresh (it cannot
/// take the lock): it keeps its token and reports the store as unavailable,
/// and sends nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotating_credential_waits_while_redis_refuses_writes() {
    let redis = RedisServer::start().await;
    let other = RedisServer::start().await;
    let ep = endpoint().await;
    let src = replica(&ep, store_with(&redis, &[KEY]));
    assert_eq!(within(src.get()).await.unwrap().expose(), "at-1");
    let () = redis_cmd(
        &redis,
        redis::cmd("REPLICAOF").arg("127.0.0.1").arg(other.port),
    )
    .await;
    let err = within(src.refresh_now()).await.unwrap_err();
    assert!(
        matches!(
            err,
            RefreshError::Store(refresh_layer::store::StoreError::Unavailable(_))
        ),
        "{err:?}"
    );
    assert_eq!(ep.calls(), 1);
    assert_eq!(within(src.get()).await.unwrap().expose(), "at-1");
}

/// Redis goes down just as a replica rotates the refresh token, and comes
/// back with its old data (generation 1, whose refresh token is spent).
/// The replica keeps saving the rotated state until Redis takes it, within
/// a couple of seconds of Redis being back, so the other replica adopts it
/// instead of sending the spent token. (The paused-clock tests in
/// `src/cache/tests/persist.rs` cover outages of any length.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_refresh_token_reaches_redis_once_it_is_back() {
    let mut redis = RedisServer::start().await;
    let ep = endpoint().await;
    let a = replica(&ep, store_with(&redis, &[KEY]));
    let b = replica(&ep, store_with(&redis, &[KEY]));
    assert_eq!(within(a.get()).await.unwrap().expose(), "at-1");
    assert_eq!(within(b.get()).await.unwrap().expose(), "at-1");
    // A snapshot of generation 1, which the restarted Redis loads: it
    // comes back with the old data at once. (Writing the old data in
    // after an empty restart let A's retried save land first, then be
    // overwritten, leaving the repair to the 10 s write-back check.)
    let () = redis_cmd(&redis, &mut redis::cmd("SAVE")).await;
    // A refreshes; Redis dies while the token call is in flight.
    ep.set_delay(Duration::from_millis(600));
    let refreshing = tokio::spawn({
        let a = a.clone();
        async move { a.refresh_now().await.map(|s| s.generation) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    redis.stop();
    assert_eq!(within(refreshing).await.unwrap().unwrap(), 2);
    ep.set_delay(Duration::ZERO);
    assert!(
        a.status()
            .last_error
            .unwrap_or_default()
            .contains("held only in this process")
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    redis.restart().await;
    let reader = store_with(&redis, &[KEY]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        if let Ok(Some(s)) = reader.load("crm").await
            && s.generation == 2
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rotated state never reached Redis"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B refreshes (a 401, an operator): it adopts A's state.
    let mut rb = within(b.refresh_now()).await;
    for _ in 0..20 {
        if !matches!(&rb, Err(RefreshError::Store(_))) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        rb = within(b.refresh_now()).await;
    }
    assert_eq!(rb.unwrap().generation, 2);
    assert_eq!(within(b.get()).await.unwrap().expose(), "at-2");
    assert_eq!(ep.invalid_grants(), 0);
    assert_eq!(ep.calls(), 2);
}

/// A store's error says which I/O failure it met: a Redis that refuses
/// connections (down) reads differently from an address that does not
/// resolve (a wrong URL), and neither shows the URL's password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_io_failure_says_which() {
    let at = |url: String| {
        RedisStore::new(refresh_layer::store::RedisStoreSettings {
            url,
            key_prefix: "lk-test".into(),
            keys: Keyring::from_base64([KEY]).unwrap(),
            lease: Duration::from_secs(2),
            timeout: Duration::from_millis(500),
            tls: None,
        })
        .unwrap()
    };
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = within(at(format!("redis://:hunter2@127.0.0.1:{port}/")).load("crm"))
        .await
        .unwrap_err()
        .to_string();
    let no_host = within(at("redis://:hunter2@no-such-host.invalid:6379/".into()).load("crm"))
        .await
        .unwrap_err()
        .to_string();
    assert!(!refused.contains("hunter2") && !no_host.contains("hunter2"));
    assert!(refused.contains("connection refused"), "{refused}");
    assert_ne!(refused, no_host, "both read: {refused}");
}

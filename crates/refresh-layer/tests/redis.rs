//! The Redis store against a real `redis-server` (started per test on a
//! free port) and a real OAuth2 token endpoint with rotating refresh tokens.
//!
//! These run in real time: the lock lease lives in Redis's clock, which
//! tokio's paused clock cannot drive. Token lifetimes are fractions of a
//! second so 50 expiries take a few seconds.
#![expect(clippy::unwrap_used, reason = "tests")]

mod redis_common;

use proxy_core::CredentialSource;
use redis_common::redis_server::RedisServer;
use redis_common::{
    KEY, OTHER_KEY, command, endpoint, flushall, hgets, replica, replica_with, store_with,
};
use refresh_layer::store::crypto::Keyring;
use refresh_layer::store::{RedisStore, RedisStoreSettings, Store, StoreError};
use refresh_layer::token::StoredCredential;
use refresh_layer::{RefreshSettings, RefreshingSource};
use std::sync::Arc;
use std::time::Duration;

fn store(redis: &RedisServer, key: &str) -> RedisStore {
    store_with(redis, &[key])
}

/// The write-back checks every 200 ms instead of 10 s.
fn checking_often() -> RefreshSettings {
    RefreshSettings {
        store_check: Duration::from_millis(200),
        ..RefreshSettings::default()
    }
}

fn state(generation: u64, token: &str) -> StoredCredential {
    StoredCredential {
        access_token: token.into(),
        expires_at_ms: Some(u64::MAX / 2),
        refresh_token: Some(format!("rt-{generation}")),
        generation,
        obtained_at_ms: 1,
        provider: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_share_fifty_rotations_one_token_call_each() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    ep.set_expires_in_f64(0.2);
    let replicas: Vec<_> = (0..3).map(|_| replica(&ep, store(&redis, KEY))).collect();
    let mut tasks = Vec::new();
    for r in &replicas {
        let r = r.clone();
        tasks.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                if let Err(e) = r.get().await {
                    errors.push(e.reason);
                }
                if r.status().generation >= 51 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            errors
        }));
    }
    for t in tasks {
        let errors = t.await.unwrap();
        assert!(errors.is_empty(), "requests failed: {errors:?}");
    }
    let stored = store(&redis, KEY).load("crm").await.unwrap().unwrap();
    assert_eq!(ep.invalid_grants(), 0, "a rotated refresh token was reused");
    assert!(
        stored.generation >= 51,
        "only {} generations",
        stored.generation
    );
    // One token call per generation across all three replicas.
    assert_eq!(ep.calls() as u64, stored.generation);
    assert_eq!(stored.refresh_token, ep.current_refresh_token());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarting_redis_loses_no_credential() {
    let mut redis = RedisServer::start().await;
    let ep = endpoint().await;
    ep.set_expires_in_f64(2.0);
    let a = replica(&ep, store(&redis, KEY));
    let first = a.get().await.unwrap();
    redis.stop();
    // Redis is down: the held token is still served, from memory.
    for _ in 0..20 {
        assert_eq!(a.get().await.unwrap().expose(), first.expose());
    }
    // Past the refresh point (1 s): the rotating grant is not refreshed
    // locally (that would fork the token); the error is visible in status.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(a.get().await.unwrap().expose(), first.expose());
    let st = a.status();
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("unavailable"),
        "{st:?}"
    );
    assert_eq!(ep.calls(), 1);
    // Redis comes back empty; the replica still holds the latest refresh
    // token and refreshes as soon as its backoff allows.
    redis.restart().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while a.status().generation < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never refreshed after Redis came back: {:?}",
            a.status()
        );
        let _ = a.get().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ep.invalid_grants(), 0);
    assert_eq!(
        store(&redis, KEY)
            .load("crm")
            .await
            .unwrap()
            .unwrap()
            .generation,
        2
    );
}

/// Redis loses its data (a restart without persistence, `FLUSHALL`,
/// eviction) after a rotation: the running replica writes the live state
/// back within `store_check`, so a replica that starts afterwards adopts
/// it instead of sending the spent seed (`invalid_grant`, and a revoked
/// token family at an IdP with reuse detection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flushed_redis_gets_the_live_refresh_token_back() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    let a = replica_with(&ep, store(&redis, KEY), checking_often());
    let first = a.get().await.unwrap();
    assert_eq!(ep.calls(), 1, "the seed was rotated");
    flushall(&redis).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let back = loop {
        if let Some(s) = store(&redis, KEY).load("crm").await.unwrap() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never written back: {:?}",
            a.status()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(back.generation, 1);
    assert_eq!(back.refresh_token, ep.current_refresh_token());
    let b = replica(&ep, store(&redis, KEY));
    assert_eq!(b.get().await.unwrap().expose(), first.expose());
    assert_eq!(ep.calls(), 1, "b adopted the state written back");
    // b's next refresh sends the live refresh token.
    b.refresh_now().await.unwrap();
    assert_eq!(ep.calls(), 2);
    assert_eq!(ep.invalid_grants(), 0);
}

/// A Redis that answers reads but refuses writes (`min-replicas-to-write`
/// unmet; READONLY after a failover alike) stays reported down, as the
/// README says: the write-back checks read it every 200 ms, and their
/// reads do not count as the store working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_back_checks_do_not_report_a_redis_refusing_writes_up() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    let a = replica_with(&ep, store(&redis, KEY), checking_often());
    a.get().await.unwrap();
    command::<()>(&redis, &["CONFIG", "SET", "min-replicas-to-write", "1"]).await;
    assert!(a.refresh_now().await.is_err());
    assert!(a.status().store_error.is_some(), "{:?}", a.status());
    // Three checks later.
    let before = hgets(&redis).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while hgets(&redis).await < before + 3 {
        assert!(tokio::time::Instant::now() < deadline, "no checks ran");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let st = a.status();
    assert!(
        st.store_error
            .as_deref()
            .is_some_and(|e| e.contains("NOREPLICAS")),
        "{st:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_generation_cannot_overwrite_a_newer_one() {
    let redis = RedisServer::start().await;
    let s = store(&redis, KEY);
    s.save("crm", &state(5, "at-5")).await.unwrap();
    assert_eq!(
        s.save("crm", &state(4, "at-4")).await,
        Err(StoreError::Conflict { stored: 5 })
    );
    assert_eq!(
        s.save("crm", &state(5, "at-5b")).await,
        Err(StoreError::Conflict { stored: 5 })
    );
    assert_eq!(s.load("crm").await.unwrap().unwrap().access_token, "at-5");
    s.save("crm", &state(6, "at-6")).await.unwrap();
    assert_eq!(s.load("crm").await.unwrap().unwrap().generation, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_are_ciphertext_and_a_wrong_key_is_a_clear_error() {
    let redis = RedisServer::start().await;
    let s = store(&redis, KEY);
    s.save("crm", &state(1, "at-plaintext-canary"))
        .await
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let raw: Vec<u8> = redis::cmd("HGET")
        .arg(s.credential_key("crm"))
        .arg("val")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        !raw.windows(9).any(|w| w == b"plaintext"),
        "state is stored in clear"
    );
    assert!(!raw.windows(5).any(|w| w == b"rt-1\""));
    let err = store(&redis, OTHER_KEY).load("crm").await.unwrap_err();
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(
        err.to_string()
            .contains("no configured encryption key decrypts it"),
        "{err}"
    );
    // Key rotation: new key first, old key still decrypts.
    let rotated = RedisStore::new(RedisStoreSettings {
        url: redis.url(),
        key_prefix: "lk-test".into(),
        keys: Keyring::from_base64([OTHER_KEY, KEY]).unwrap(),
        lease: Duration::from_secs(2),
        timeout: Duration::from_millis(500),
        tls: None,
    })
    .unwrap();
    assert_eq!(
        rotated.load("crm").await.unwrap().unwrap().access_token,
        "at-plaintext-canary"
    );
    assert!(!format!("{s:?} {err:?}").contains("canary"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_replica_adopts_instead_of_refreshing() {
    let redis = RedisServer::start().await;
    let ep = endpoint().await;
    let s1 = store(&redis, KEY);
    // Another replica holds the lock while it "refreshes".
    let guard = s1.lock("crm").await.unwrap();
    let b = replica(&ep, store(&redis, KEY));
    let waiting = tokio::spawn({
        let b = b.clone();
        async move { b.get().await.map(|c| c.expose().to_string()) }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        ep.calls(),
        0,
        "refreshed while another replica held the lock"
    );
    // The holder finishes: writes generation 1 and releases.
    s1.save(
        "crm",
        &StoredCredential {
            access_token: "at-from-a".into(),
            expires_at_ms: Some(refresh_layer::token::to_ms(
                std::time::SystemTime::now() + Duration::from_secs(3600),
            )),
            refresh_token: Some("rt-from-a".into()),
            generation: 1,
            obtained_at_ms: refresh_layer::token::to_ms(std::time::SystemTime::now()),
            provider: None,
        },
    )
    .await
    .unwrap();
    drop(guard);
    let got = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(got, "at-from-a");
    assert_eq!(ep.calls(), 0);
}

/// Waits until Redis has some (`any`) or no pub/sub clients.
async fn pubsub_clients(c: &mut redis::aio::MultiplexedConnection, any: bool) {
    loop {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .arg("TYPE")
            .arg("pubsub")
            .query_async(c)
            .await
            .unwrap();
        if list.trim().is_empty() != any {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `SET` commands Redis has run since the last `CONFIG RESETSTAT`.
async fn set_calls(c: &mut redis::aio::MultiplexedConnection) -> u64 {
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(c)
        .await
        .unwrap();
    info.lines()
        .find_map(|l| l.strip_prefix("cmdstat_set:calls="))
        .and_then(|rest| rest.split(',').next()?.parse().ok())
        .unwrap_or(0)
}

/// A replica waiting for the refresh lock listens for its release on a
/// subscription. When that connection dies (killed, a proxy's idle
/// timeout, a failover), it polls on its timer: a few `SET NX` a second,
/// not one after another as fast as Redis answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_lock_subscription_falls_back_to_polling() {
    let redis = RedisServer::start().await;
    let client = redis::Client::open(redis.url()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let holder = store(&redis, KEY);
    let guard = holder.lock("crm").await.unwrap();
    // The holder subscribed too, before it took the lock; its subscription
    // closes in the background. Only the waiter's may be left to kill.
    tokio::time::timeout(Duration::from_secs(5), pubsub_clients(&mut c, false))
        .await
        .expect("the holder's subscription closes");
    let waiter = store(&redis, KEY);
    let waiting = tokio::spawn(async move { waiter.lock("crm").await.map(drop) });
    tokio::time::timeout(Duration::from_secs(5), pubsub_clients(&mut c, true))
        .await
        .expect("the waiter subscribes");
    let killed: u64 = redis::cmd("CLIENT")
        .arg("KILL")
        .arg("TYPE")
        .arg("pubsub")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(killed, 1);
    let () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut c)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    // The lease is 2 s: the waiter polls every 500 ms, the holder renews.
    let sets = set_calls(&mut c).await;
    assert!(sets <= 10, "{sets} SET commands in one second");
    drop(guard);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiter takes the lock once it is released")
        .unwrap()
        .unwrap();
}

/// A `client_credentials`-like provider: no refresh token, nothing to fork.
#[derive(Debug)]
struct NonRotating;

impl refresh_layer::provider::TokenProvider for NonRotating {
    fn kind(&self) -> &'static str {
        "non-rotating"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> futures_util::future::BoxFuture<
        'a,
        Result<refresh_layer::token::Token, refresh_layer::provider::ProviderError>,
    > {
        Box::pin(async {
            Ok(refresh_layer::token::Token {
                access_token: secrecy::SecretString::from("local-token".to_owned()),
                expires_in: Some(Duration::from_secs(3600)),
                refresh_token: None,
            })
        })
    }
}

/// A Redis that accepts connections but never answers (stopped, or a
/// network that drops its packets) costs a refresh `redis.timeout` per
/// step, never a hang: taking the lock fails (its subscription is bounded
/// like every command), and a credential that cannot fork refreshes
/// locally, as the README promises for Redis being down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_never_answers_cannot_hang_a_refresh() {
    let redis = RedisServer::start().await;
    redis.pause(true);
    let s = store(&redis, KEY);
    let locked = tokio::time::timeout(Duration::from_secs(5), s.lock("crm"))
        .await
        .expect("lock() is bounded by redis.timeout");
    assert!(
        matches!(locked, Err(StoreError::Unavailable(_))),
        "{:?}",
        locked.err()
    );
    let src = RefreshingSource::new(
        "crm",
        Arc::new(NonRotating),
        Arc::new(store(&redis, KEY)),
        RefreshSettings {
            timeout: Duration::from_secs(5),
            ..RefreshSettings::default()
        },
    );
    let got = tokio::time::timeout(Duration::from_secs(10), src.get())
        .await
        .expect("get() is bounded");
    assert!(got.is_ok(), "no local token: {:?}", got.err());
    redis.pause(false);
}

/// A holder whose lock went missing (Redis restarted without it, or its
/// lease ran out while Redis was unreachable) takes it back at its next
/// renewal: it may still be saving a rotated refresh token, and another
/// replica that took the lock now would send the spent one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_takes_back_a_lock_redis_lost() {
    let redis = RedisServer::start().await;
    let holder = store(&redis, KEY);
    let guard = holder.lock("crm").await.unwrap();
    let owner: Option<String> = command(&redis, &["GET", "lk-test:lock:crm"]).await;
    let owner = owner.expect("the lock is held");
    flushall(&redis).await;
    // The lease is 2 s, renewed every 666 ms: the next renewal takes it back.
    let back = tokio::time::timeout(Duration::from_secs(3), async {
        loop {
            let now: Option<String> = command(&redis, &["GET", "lk-test:lock:crm"]).await;
            if now.is_some() {
                return now;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the holder takes its lock back");
    assert_eq!(back.as_deref(), Some(owner.as_str()));
    let other = store(&redis, KEY);
    let waiting = tokio::spawn(async move { other.lock("crm").await.map(drop) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "another replica took a held lock");
    drop(guard);
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the lock is free once released")
        .unwrap()
        .unwrap();
}

/// A lock another owner took (the lease lapsed while Redis was
/// unreachable, and another replica took it) is reported lost by the next
/// renewal: the holder's next refresh then takes the lock again instead of
/// going on as if it held it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_by_another_owner_is_reported_lost() {
    let redis = RedisServer::start().await;
    let holder = store(&redis, KEY);
    let guard = holder.lock("crm").await.unwrap();
    assert!(!guard.is_lost());
    command::<()>(&redis, &["SET", "lk-test:lock:crm", "another-replica"]).await;
    // Renewed every 666 ms (a 2 s lease).
    tokio::time::timeout(Duration::from_secs(3), async {
        while !guard.is_lost() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the renewal reports the lock lost");
    drop(guard);
    // Released by compare-and-delete: the other owner's lock stays.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let owner: Option<String> = command(&redis, &["GET", "lk-test:lock:crm"]).await;
    assert_eq!(owner.as_deref(), Some("another-replica"));
}

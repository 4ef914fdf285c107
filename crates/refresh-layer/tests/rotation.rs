//! Refresh-token rotation through real stores, seen from a real OAuth2 token
//! endpoint: every rotation uses the latest refresh token, a failed refresh
//! leaves the stored state alone, holders sharing a file store refresh once
//! per expiry and adopt each other's rotations, and stored state seeds a
//! source (including `client_credentials`, which has no refresh token).
//!
//! The endpoint, the paused-clock conventions and the helpers are described
//! in `common/mod.rs`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::{
    CLIENT_ID, CLIENT_SECRET, ID, S, endpoint, invalidate, load, memory, now_ms, quiesce,
    ready_token, settle, source, source_with, token, until,
};
use futures_util::FutureExt as _;
use futures_util::future::{BoxFuture, ready};
use proxy_core::CredentialSource as _;
use proxy_core::config::OAuth2Config;
use refresh_layer::RefreshSettings;
use refresh_layer::store::{FileStore, Store, StoreError, StoreLock};
use refresh_layer::token::StoredCredential;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn fifty_rotations_use_the_latest_refresh_token() {
    let ep = endpoint(120, true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::new(dir.path()).unwrap());
    let src = source(&ep, store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    quiesce(&src).await;

    for n in 2..=51u64 {
        // A 120 s token refreshes every 54..60 s; allow a little more.
        let mut steps = 0;
        while src.status().generation < n {
            steps += 1;
            assert!(steps <= 61, "refresh {n} did not happen within 61 s");
            tokio::time::advance(S(1)).await;
            quiesce(&src).await;
        }
        assert_eq!(ep.invalid_grants(), 0, "refresh {n} reused a refresh token");
        assert_eq!(ep.calls(), n as usize);
        // The rotated refresh token is persisted, and the new access token
        // is what is served.
        let stored = load(store.as_ref()).await;
        assert_eq!(stored.generation, n);
        assert_eq!(stored.refresh_token, ep.current_refresh_token());
        assert_eq!(
            ready_token(&src, &format!("refresh {n}")),
            ep.current_access_token()
        );
    }

    assert_eq!(ep.invalid_grants(), 0);
    assert_eq!(ep.calls(), 51);
    let stored = load(store.as_ref()).await;
    assert_eq!(stored.generation, 51);
    assert_eq!(stored.refresh_token.as_deref(), Some("rt-51"));
    assert_eq!(stored.refresh_token, ep.current_refresh_token());
    // The last exchange presented the token issued by the one before it.
    assert_eq!(
        ep.last_form_value("refresh_token").as_deref(),
        Some("rt-50")
    );
}

#[tokio::test(start_paused = true)]
async fn invalid_grant_leaves_the_stored_credential_intact() {
    let ep = endpoint(3600, true).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(FileStore::new(dir.path()).unwrap());
    let src = source(&ep, store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    quiesce(&src).await;
    let path = store.path_of(ID);
    let bytes = std::fs::read(&path).unwrap();
    let generation = src.status().generation;
    assert_eq!(generation, 1);

    ep.revoke_refresh_token();
    let err = invalidate(&src, generation)
        .await
        .expect_err("a revoked refresh token cannot refresh");
    assert!(err.contains("invalid_grant"), "{err}");
    assert_eq!(ep.invalid_grants(), 1);
    quiesce(&src).await;

    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "a failed refresh must not touch the stored state"
    );
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names.iter().all(|n| n == "crm.json" || n == "crm.lock"),
        "stray files: {names:?}"
    );
    // The old token is still served: the upstream decides whether it works.
    assert_eq!(ready_token(&src, "after invalid_grant"), "at-1");
    let st = src.status();
    assert_eq!(st.generation, 1);
    assert_eq!(st.state, "failing");
    assert!(
        st.last_error
            .as_deref()
            .unwrap_or("")
            .contains("invalid_grant"),
        "{st:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn two_sources_sharing_a_file_store_refresh_once_per_expiry() {
    let ep = endpoint(120, true).await;
    let dir = tempfile::tempdir().unwrap();
    // Two stores on one directory, as two processes would have: their locks
    // are separate open file descriptions, so flock excludes them.
    let store_a = Arc::new(FileStore::new(dir.path()).unwrap());
    let store_b = Arc::new(FileStore::new(dir.path()).unwrap());
    let a = source(&ep, store_a.clone(), RefreshSettings::default());
    let b = source(&ep, store_b, RefreshSettings::default());
    // Both start at once; one fetches, the other adopts.
    let (ta, tb) = (token(&a).await.unwrap(), token(&b).await.unwrap());
    quiesce(&a).await;
    quiesce(&b).await;
    assert_eq!(ta, tb);
    assert_eq!(ep.calls(), 1);

    // Ten refresh periods of a 120 s token (refreshed 54..60 s into its
    // life), with a request on each holder every second. Neither ever waits.
    let start = Instant::now();
    let mut elapsed = Duration::ZERO;
    while elapsed < S(600) || a.status().generation != b.status().generation {
        assert!(elapsed < S(720), "holders did not converge");
        tokio::time::advance(S(1)).await;
        quiesce(&a).await;
        quiesce(&b).await;
        elapsed = Instant::now() - start;
        ready_token(&a, &format!("a at {elapsed:?}"));
        ready_token(&b, &format!("b at {elapsed:?}"));
        assert_eq!(ep.invalid_grants(), 0, "double refresh at {elapsed:?}");
    }

    let stored = load(store_a.as_ref()).await;
    assert_eq!(ep.invalid_grants(), 0);
    // One token call per generation: every other refresh was an adoption.
    assert_eq!(ep.calls() as u64, stored.generation);
    // One refresh per refresh period, not one per holder.
    let bound = 1 + elapsed.as_secs() / 54;
    assert!(
        (ep.calls() as u64) <= bound,
        "{} calls in {elapsed:?} (at most {bound})",
        ep.calls()
    );
    assert!(ep.calls() >= 10, "only {} calls", ep.calls());
    assert_eq!(stored.refresh_token, ep.current_refresh_token());
    let current = ep.current_access_token();
    assert_eq!(ready_token(&a, "a at the end"), current);
    assert_eq!(ready_token(&b, "b at the end"), current);
}

/// A view of a file store directory that does not take the refresh lock: a
/// holder outside the lock (a network filesystem where `flock` is not
/// shared, or a tool that writes the state file directly).
#[derive(Debug)]
struct Unlocked(FileStore);

impl Store for Unlocked {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.0.load(id)
    }
    fn lock<'a>(&'a self, _id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        ready(Ok(StoreLock::new(()))).boxed()
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.0.save(id, state)
    }
}

#[tokio::test(start_paused = true)]
async fn adopts_a_rotation_done_by_another_process_on_invalid_grant() {
    // Long-lived tokens: nothing refreshes on its own during this test.
    let ep = endpoint(3600, true).await;
    let dir = tempfile::tempdir().unwrap();
    let store_a = Arc::new(FileStore::new(dir.path()).unwrap());
    let a = source(&ep, store_a.clone(), RefreshSettings::default());
    assert_eq!(token(&a).await.unwrap(), "at-1");
    quiesce(&a).await;
    let b = source(
        &ep,
        Arc::new(FileStore::new(dir.path()).unwrap()),
        RefreshSettings::default(),
    );
    assert_eq!(token(&b).await.unwrap(), "at-1");
    quiesce(&b).await;
    assert_eq!(ep.calls(), 1, "b adopts a's state at start");

    // Window 1: stale memory. `a` holds generation 1 (and, through it,
    // refresh token rt-1) in memory while `b` rotates to generation 2. When
    // the upstream then rejects a's token, a forced refresh must not send
    // the spent rt-1 (invalid_grant; some servers revoke the whole token
    // family on reuse): under the lock it re-reads the store and adopts b's
    // generation without calling the endpoint.
    let st = b.refresh_now().await.unwrap();
    assert_eq!(st.generation, 2);
    assert_eq!(ep.calls(), 2);
    assert_eq!(ready_token(&a, "a before invalidation"), "at-1");
    invalidate(&a, 1).await.unwrap();
    assert_eq!(ready_token(&a, "a after invalidation"), "at-2");
    assert_eq!(ep.calls(), 2, "a must adopt, not refresh");
    assert_eq!(ep.invalid_grants(), 0);
    assert_eq!(a.status().generation, 2);
    drop(b);

    // Window 2: read-then-call. A holder outside the lock (`c`) reads the
    // state, and before its token call reaches the endpoint another holder
    // (`a`) rotates the refresh token. The endpoint answers invalid_grant to
    // c's now-spent token; c must re-read the store, find the newer
    // generation and adopt it instead of failing. Made deterministic with a
    // 5 s endpoint delay and staggered starts:
    //   t=0 a reads gen 2, sends rt-2  (answered at t=5: at-3, rt-3)
    //   t=1 c reads gen 2, sends rt-2  (answered at t=6: invalid_grant)
    //   t=5 a saves gen 3
    //   t=6 c gets invalid_grant, re-reads gen 3, adopts it
    let c = source(
        &ep,
        Arc::new(Unlocked(FileStore::new(dir.path()).unwrap())),
        RefreshSettings::default(),
    );
    assert_eq!(token(&c).await.unwrap(), "at-2");
    quiesce(&c).await;
    assert_eq!(ep.calls(), 2, "c adopts the stored state at start");

    ep.set_delay(S(5));
    let a_refresh = a.invalidate(2);
    settle().await;
    until("a's token call", || ep.calls() == 3).await;
    tokio::time::advance(S(1)).await;
    let c_refresh = c.invalidate(2);
    settle().await;
    until("c's token call", || ep.calls() == 4).await;
    tokio::time::advance(S(4)).await;
    quiesce(&a).await;
    until("a's refresh", || a.status().generation == 3).await;
    assert_eq!(load(store_a.as_ref()).await.generation, 3);
    tokio::time::advance(S(1)).await;
    quiesce(&c).await;

    tokio::time::timeout(S(60), a_refresh)
        .await
        .unwrap()
        .unwrap();
    let c_result = tokio::time::timeout(S(60), c_refresh).await.unwrap();
    // The endpoint did see the stale token; the holder still recovered.
    assert_eq!(ep.invalid_grants(), 1);
    assert!(
        c_result.is_ok(),
        "c must adopt a's rotation: {:?}",
        c_result.map_err(|e| e.reason)
    );
    // Three tokens issued: the first, b's, and a's (named after the call
    // count when it was issued, which c's stale call had already raised).
    assert_eq!(ep.issued_access_tokens().len(), 3);
    let current = ep.current_access_token();
    assert_eq!(ready_token(&a, "a at the end"), current);
    assert_eq!(ready_token(&c, "c at the end"), current);
    let st = c.status();
    assert_eq!(st.generation, 3);
    assert_eq!(st.consecutive_failures, 0, "{st:?}");
    assert_eq!(st.last_refresh_result, Some("ok"));
    // Nobody overwrote a's state with anything older.
    let stored = load(store_a.as_ref()).await;
    assert_eq!(stored.generation, 3);
    assert_eq!(stored.refresh_token, ep.current_refresh_token());
}

/// Writes `state` as `id`'s stored state under `dir`.
async fn seed_store(dir: &Path, state: &StoredCredential) -> Arc<FileStore> {
    let store = Arc::new(FileStore::new(dir).unwrap());
    store.save(ID, state).await.unwrap();
    store
}

#[tokio::test(start_paused = true)]
async fn client_credentials_and_seeding() {
    // client_credentials: no refresh token anywhere.
    let ep = endpoint(3600, false).await;
    let cc: OAuth2Config = serde_json::from_value(json!({
        "grant": "client_credentials",
        "token_url": ep.url,
        "client_id": CLIENT_ID,
        "client_secret": {"value": CLIENT_SECRET},
    }))
    .unwrap();
    let src = source_with(&cc, memory(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    assert_eq!(
        ep.last_form_value("grant_type").as_deref(),
        Some("client_credentials")
    );
    assert!(
        ep.last_form().iter().all(|(k, _)| k != "refresh_token"),
        "{:?}",
        ep.last_form().iter().map(|(k, _)| k).collect::<Vec<_>>()
    );
    assert!(!src.status().has_refresh_token);
    invalidate(&src, 1).await.unwrap();
    assert_eq!(ready_token(&src, "after invalidation"), "at-2");
    assert_eq!(ep.last_form_value("refresh_token"), None);
    assert_eq!(ep.calls(), 2);

    // refresh_token grant with a stored state holding a newer refresh token
    // than the config's seed: the endpoint only accepts the stored one, so
    // presenting the seed would be an invalid_grant.
    let ep = endpoint(3600, true).await;
    ep.set_refresh_token("rt-stored-7");
    let dir = tempfile::tempdir().unwrap();
    let expired = StoredCredential {
        access_token: "at-stored-7".to_owned(),
        expires_at_ms: Some(now_ms() - 1_000),
        refresh_token: Some("rt-stored-7".to_owned()),
        generation: 7,
        obtained_at_ms: now_ms() - 3_601_000,
        provider: None,
    };
    let store = seed_store(dir.path(), &expired).await;
    let src = source(&ep, store.clone(), RefreshSettings::default());
    assert!(src.status().has_refresh_token);
    assert_eq!(token(&src).await.unwrap(), "at-1");
    quiesce(&src).await;
    assert_eq!(ep.invalid_grants(), 0);
    assert_eq!(ep.calls(), 1);
    assert_eq!(
        ep.last_form_value("refresh_token").as_deref(),
        Some("rt-stored-7")
    );
    let stored = load(store.as_ref()).await;
    assert_eq!(stored.generation, 8);
    assert_eq!(stored.refresh_token.as_deref(), Some("rt-1"));
    assert_eq!(stored.refresh_token, ep.current_refresh_token());

    // A stored state that is still valid is used as it is: no call at all.
    let dir = tempfile::tempdir().unwrap();
    let valid = StoredCredential {
        access_token: "at-stored-valid".to_owned(),
        expires_at_ms: Some(now_ms() + 3_600_000),
        refresh_token: Some("rt-1".to_owned()),
        generation: 9,
        obtained_at_ms: now_ms(),
        provider: None,
    };
    let store = seed_store(dir.path(), &valid).await;
    let src = source(&ep, store, RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-stored-valid");
    quiesce(&src).await;
    assert_eq!(src.status().generation, 9);
    assert_eq!(ep.calls(), 1);
    assert_eq!(ep.invalid_grants(), 0);
}

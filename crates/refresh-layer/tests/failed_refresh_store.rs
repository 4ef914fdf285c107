//! What a refresh that fails, or whose save fails, leaves in the store and
//! in memory; and the refresh invariants under load at the edges (one
//! refresh per generation, backoff, a revoked refresh token). Real token
//! endpoints, tokio's paused clock.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::saves::{Save, Saves};
use common::token_endpoint::TokenEndpoint;
use common::{CLIENT_ID, CLIENT_SECRET, ID, S, endpoint, load, quiesce, source_with, token, until};
use futures_util::future::BoxFuture;
use proxy_core::CredentialSource as _;
use proxy_core::config::OAuth2Config;
use refresh_layer::provider::{ProviderError, TokenProvider};
use refresh_layer::store::FileStore;
use refresh_layer::token::{StoredCredential, Token};
use refresh_layer::{RefreshSettings, RefreshingSource};
use secrecy::SecretString;
use serde_json::json;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, SystemTime};

fn cc_cfg(url: &str) -> OAuth2Config {
    serde_json::from_value(json!({
        "grant": "client_credentials",
        "token_url": url,
        "client_id": CLIENT_ID,
        "client_secret": {"value": CLIENT_SECRET},
    }))
    .unwrap()
}

fn still_valid(s: &StoredCredential) -> bool {
    s.expires_at()
        .is_some_and(|e| e > SystemTime::now() + Duration::from_secs(60))
}

/// A credential on a `file` store in `dir` (a fresh process on it: a
/// restart when the directory already holds a state), rotating (the
/// `refresh_token` grant) or not (`client_credentials`).
fn on_file_store(
    ep: &TokenEndpoint,
    rotating: bool,
    dir: &Path,
) -> (Arc<FileStore>, RefreshingSource) {
    let store = Arc::new(FileStore::new(dir).unwrap());
    let src = if rotating {
        common::source(ep, store.clone(), RefreshSettings::default())
    } else {
        source_with(&cc_cfg(&ep.url), store.clone(), RefreshSettings::default())
    };
    (store, src)
}

/// [`on_file_store`] once it has fetched, served and saved `at-1`.
async fn serving_at_1(
    ep: &TokenEndpoint,
    rotating: bool,
    dir: &Path,
) -> (Arc<FileStore>, RefreshingSource) {
    let (store, src) = on_file_store(ep, rotating, dir);
    assert_eq!(token(&src).await.unwrap(), "at-1");
    quiesce(&src).await;
    (store, src)
}

/// A failed refresh (the endpoint's token arrives already expired:
/// `expires_in: 0`) of a non-rotating credential writes nothing: the
/// store keeps the valid token it held.
#[tokio::test(start_paused = true)]
async fn a_token_expired_on_arrival_leaves_the_stored_valid_token() {
    let ep = endpoint(3600, false).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, src) = serving_at_1(&ep, false, dir.path()).await;
    let before = load(store.as_ref()).await;
    assert_eq!(before.access_token, "at-1");

    // The endpoint goes wrong: every token arrives expired.
    ep.set_expires_in(0);
    let err = src.refresh_now().await.unwrap_err().to_string();
    assert!(err.contains("already expired"), "{err}");
    // The failed refresh kept serving at-1 (fine) ...
    assert_eq!(token(&src).await.unwrap(), "at-1");
    // ... but the store no longer holds it.
    let after = load(store.as_ref()).await;
    assert!(
        after.access_token == "at-1" && still_valid(&after),
        "a failed refresh replaced the stored valid token at-1 by {:?} (generation {} -> {}, valid: {})",
        after.access_token,
        before.generation,
        after.generation,
        still_valid(&after)
    );
}

/// So a restart during that breakage serves the token the store held
/// (README: "A restart during a token endpoint outage therefore keeps
/// serving a token ...").
#[tokio::test(start_paused = true)]
async fn a_restart_after_an_expired_on_arrival_failure_serves_the_stored_token() {
    let ep = endpoint(3600, false).await;
    let dir = tempfile::tempdir().unwrap();
    let (_, src) = serving_at_1(&ep, false, dir.path()).await;
    ep.set_expires_in(0);
    let _ = src.refresh_now().await;
    drop(src);
    // Restart: a new process, the same store dir, the endpoint still broken.
    let (_, src2) = on_file_store(&ep, false, dir.path());
    let got = token(&src2).await;
    assert_eq!(
        got,
        Ok("at-1".to_owned()),
        "after a restart the still-valid stored token at-1 should be served"
    );
}

/// A rotating grant's failed refresh saves the rotated refresh token (the
/// old one is spent), beside the valid access token held, not the one
/// that arrived expired: a restart serves it.
#[tokio::test(start_paused = true)]
async fn a_rotation_with_an_expired_token_saves_the_new_refresh_token_beside_the_valid_one() {
    let ep = endpoint(3600, true).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, src) = serving_at_1(&ep, true, dir.path()).await;
    ep.set_expires_in(0);
    let _ = src.refresh_now().await;
    let after = load(store.as_ref()).await;
    assert_eq!(
        after.refresh_token,
        ep.current_refresh_token(),
        "rotation saved"
    );
    drop(src);
    let (_, src2) = on_file_store(&ep, true, dir.path());
    assert_eq!(
        token(&src2).await,
        Ok("at-1".to_owned()),
        "restart during the breakage: the valid at-1 was dropped from the store (stored: {:?})",
        after.access_token
    );
}

/// A non-rotating credential on a `file` store whose directory broke
/// (removed and replaced by a file): it keeps refreshing without the store
/// (its cache), with a healthy token endpoint, instead of answering 503
/// once its token expires.
#[tokio::test(start_paused = true)]
async fn a_broken_file_store_does_not_stop_a_non_rotating_credential() {
    let ep = endpoint(120, false).await;
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("store");
    let store = Arc::new(FileStore::new(&store_dir).unwrap());
    let src = source_with(&cc_cfg(&ep.url), store, RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    quiesce(&src).await;
    std::fs::remove_dir_all(&store_dir).unwrap();
    std::fs::write(&store_dir, "not a directory").unwrap();
    // Past the token's expiry, with time for several retries.
    for _ in 0..200 {
        tokio::time::advance(S(1)).await;
        quiesce(&src).await;
    }
    let got = token(&src).await;
    assert!(
        got.as_ref().is_ok_and(|t| t.starts_with("at-")),
        "client_credentials with a healthy token endpoint: {got:?} (token calls: {})",
        ep.calls()
    );
}

/// A provider that answers `tok-1` valid 100 s, then fails.
#[derive(Debug, Default)]
struct OnceThenFail {
    calls: AtomicUsize,
}

impl TokenProvider for OnceThenFail {
    fn kind(&self) -> &'static str {
        "once"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if n == 1 {
                Ok(Token {
                    access_token: SecretString::from("tok-1".to_owned()),
                    expires_in: Some(S(100)),
                    refresh_token: None,
                })
            } else {
                Err(ProviderError::Http { status: 503 })
            }
        })
    }
}

/// `expires_in` counts from when the response arrived (README), not from
/// when a slow save (here 30 s) finished: the token is not served past its
/// real expiry while refreshes fail.
#[tokio::test(start_paused = true)]
async fn expiry_counts_from_the_response_not_the_end_of_the_save() {
    let p = Arc::new(OnceThenFail::default());
    let store = Arc::new(Saves::new(Save::After(S(30))));
    let t0 = tokio::time::Instant::now();
    let src = RefreshingSource::new(ID, p.clone(), store, RefreshSettings::default());
    let settings_timeout = RefreshSettings::default().timeout;
    assert!(settings_timeout < S(30));
    // The first fetch answers at t0 (the provider is instant); its token
    // expires at t0 + 100 s whatever the store does.
    until("the first refresh", || p.calls.load(Ordering::SeqCst) >= 1).await;
    tokio::time::sleep_until(t0 + S(31)).await;
    assert_eq!(token(&src).await.unwrap(), "tok-1");
    // 105 s after the response: tok-1 is expired at the endpoint.
    tokio::time::sleep_until(t0 + S(105)).await;
    let got = token(&src).await;
    assert!(
        got.is_err(),
        "tok-1 (expires_in 100 s, answered at t0) is still served at t0+105 s: {got:?}"
    );
}

/// The same for a token that cannot be sent (a control character): the
/// store keeps the valid token of a non-rotating credential.
#[tokio::test(start_paused = true)]
async fn an_unusable_token_leaves_the_stored_valid_token() {
    use common::token_endpoint::Failure;
    let ep = endpoint(3600, false).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, src) = serving_at_1(&ep, false, dir.path()).await;
    ep.set_failure(Some(Failure::Status(
        200,
        r#"{"access_token":"bad\u0007tok","token_type":"Bearer","expires_in":3600}"#.to_owned(),
    )));
    let err = src.refresh_now().await.unwrap_err().to_string();
    assert!(err.contains("cannot be sent"), "{err}");
    let after = load(store.as_ref()).await;
    assert_eq!(
        after.access_token, "at-1",
        "a failed refresh (unusable token) replaced the valid stored token"
    );
}

/// A non-rotating credential whose store save never answers (an fsync on
/// a failing disk) is served its new token anyway, once the save has had
/// 5 s, within the 10 s a request waits; and later refreshes still start.
/// (A rotated refresh token's save is never abandoned.)
#[tokio::test(start_paused = true)]
async fn a_hung_save_does_not_wedge_a_non_rotating_credential() {
    let ep = endpoint(3600, false).await;
    let provider =
        refresh_layer::provider::oauth2::OAuth2Provider::new(&cc_cfg(&ep.url), S(1)).unwrap();
    let src = RefreshingSource::new(
        ID,
        Arc::new(provider),
        Arc::new(Saves::new(Save::Hang)),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await.unwrap(), "at-1");
    let status = src.refresh_now().await.unwrap();
    assert_eq!(status.generation, 2);
    assert_eq!(token(&src).await.unwrap(), "at-2");
    assert_eq!(ep.calls(), 2);
}

/// A token URL's query can hold a key (an Azure Function's `?code=`):
/// `Debug` of the provider and of its config show it as `?***`, as the
/// config view, `latchkey check` and config errors do.
#[test]
fn debug_does_not_show_a_token_url_key() {
    let cfg: OAuth2Config = serde_json::from_value(json!({
        "grant": "client_credentials",
        "token_url": "https://login.example.com/api/token?code=fn-key-canary-77",
        "client_id": CLIENT_ID,
        "client_secret": {"value": CLIENT_SECRET},
    }))
    .unwrap();
    let provider = refresh_layer::provider::oauth2::OAuth2Provider::new(&cfg, S(1)).unwrap();
    let cfg_debug = format!("{cfg:?}");
    assert!(!cfg_debug.contains("fn-key-canary-77"), "{cfg_debug}");
    assert!(cfg_debug.contains("api/token?***"), "{cfg_debug}");
    let shown = format!("{provider:?}");
    assert!(
        !shown.contains("fn-key-canary-77"),
        "Debug shows the token URL's key: {shown}"
    );
}

// ---------------------------------------------------------------------
// The invariants at their edges.
// ---------------------------------------------------------------------

/// Callers and 401s arriving together at the buffer edge and at expiry,
/// with a slow endpoint: one token call per generation, no invalid_grant.
#[tokio::test(start_paused = true)]
async fn callers_and_401s_at_the_edge_share_one_refresh() {
    use futures_util::future::join_all;
    let ep = endpoint(120, true).await;
    let src = common::source(&ep, common::memory(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    ep.set_delay(S(2));
    // Exactly at the earliest refresh point and at expiry.
    let t0 = tokio::time::Instant::now();
    for at in [S(54), S(60), S(120), S(180), S(240)] {
        tokio::time::advance((t0 + at).saturating_duration_since(tokio::time::Instant::now()))
            .await;
        common::settle().await;
        let g = src.generation().unwrap();
        let calls = ep.calls();
        let gets: Vec<_> = (0..300).map(|_| src.get()).collect();
        let invs: Vec<_> = (0..100).map(|_| src.invalidate(g)).collect();
        let (r1, r2) = tokio::join!(join_all(gets), join_all(invs));
        assert!(r1.iter().all(Result::is_ok));
        assert!(
            r2.iter().all(Result::is_ok),
            "{:?}",
            r2.iter().filter_map(|r| r.as_ref().err()).next()
        );
        quiesce(&src).await;
        assert!(
            ep.calls() <= calls + 1,
            "at {at:?}: {} calls",
            ep.calls() - calls
        );
        assert!(src.generation().unwrap() > g);
        assert_eq!(ep.invalid_grants(), 0);
    }
}

/// A failing endpoint under a flood of requests and 401s at an expired
/// token: the token calls follow the backoff (1 s doubling to 5 min).
#[tokio::test(start_paused = true)]
async fn a_flood_while_failing_is_bounded_by_backoff() {
    use common::token_endpoint::Failure;
    use futures_util::future::join_all;
    let ep = endpoint(60, false).await;
    let src = source_with(
        &cc_cfg(&ep.url),
        common::memory(),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await.unwrap(), "at-1");
    ep.set_failure(Some(Failure::Status(500, "boom".into())));
    let g = src.generation().unwrap();
    // 30 minutes, 20 requests and 5 401s every 100 ms.
    for _ in 0..18_000 {
        tokio::time::advance(Duration::from_millis(100)).await;
        let gets: Vec<_> = (0..20).map(|_| src.get()).collect();
        let invs: Vec<_> = (0..5).map(|_| src.invalidate(g)).collect();
        let _ = tokio::join!(join_all(gets), join_all(invs));
    }
    let calls = ep.calls();
    // 0.5-1, 1-2, 2-4, ... 150-300 s, then every 150-300 s: ~15 in 30 min.
    assert!(calls <= 25, "{calls} token calls in 30 min");
}

/// invalid_grant (revoked refresh token) with a 401 every second for an
/// hour: "at most about 25 calls an hour"; the stored state is untouched.
#[tokio::test(start_paused = true)]
async fn a_revoked_refresh_token_is_not_hammered_and_the_store_is_kept() {
    let ep = endpoint(3600, true).await;
    let dir = tempfile::tempdir().unwrap();
    let (store, src) = serving_at_1(&ep, true, dir.path()).await;
    let before = load(store.as_ref()).await;
    ep.revoke_refresh_token();
    for _ in 0..3600 {
        tokio::time::advance(S(1)).await;
        let g = src.generation().unwrap();
        let _ = tokio::time::timeout(S(30), src.invalidate(g)).await;
        quiesce(&src).await;
    }
    let calls = ep.calls() - 1;
    assert!(calls <= 30, "{calls} token calls in an hour");
    let after = load(store.as_ref()).await;
    assert!(after == before, "the stored state changed");
}

/// A reload's order, with the library API: pause, wait for running
/// refreshes, take the hand-over, (a 401 arrives for the old source), put
/// the successor on another store in service, retire, resume. The 401's
/// refresh waits for the resume and is refused by the retired source, so
/// the successor's refresh token is the live one.
#[tokio::test(start_paused = true)]
async fn a_paused_source_does_not_refresh_between_handover_and_retire() {
    let ep = endpoint(3600, true).await;
    let old = common::source(&ep, common::memory(), RefreshSettings::default());
    assert_eq!(token(&old).await.unwrap(), "at-1");
    old.pause(); // reload: no refresh starts from here
    old.quiesce(S(15)).await; // wait for running refreshes
    let handed = old.handover(); // build_proxy_with: snapshot
    // A request of the old config gets a 401 now: its refresh waits.
    let forced = tokio::spawn({
        let old = old.clone();
        async move { common::invalidate(&old, 1).await }
    });
    // put_in_service, then retire, then resume.
    let dir = tempfile::tempdir().unwrap();
    let provider = Arc::new(
        refresh_layer::provider::oauth2::OAuth2Provider::new(&common::cfg(&ep, "rt-0"), S(1))
            .unwrap(),
    );
    let new = RefreshingSource::inactive(
        ID,
        provider,
        Arc::new(FileStore::new(dir.path()).unwrap()),
        RefreshSettings::default(),
        None,
        handed,
    );
    new.activate();
    old.retire();
    old.resume();
    assert!(forced.await.unwrap().is_err(), "the retired source refuses");
    assert_eq!(
        ep.calls(),
        1,
        "the old source made no token call after the snapshot"
    );
    new.refresh_now().await.unwrap();
    assert_eq!(
        ep.invalid_grants(),
        0,
        "the successor sent the refresh token the old source spent after the snapshot"
    );
}

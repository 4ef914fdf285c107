//! A rotation whose access token is of no use (expired on arrival, or
//! unsendable) still rotated the refresh token: the new state is held in
//! memory whether or not it was saved, so neither a resumed background
//! save nor a reload's hand-over goes back to the spent refresh token.

use super::doubles::{Saves, Script};
use super::*;
use crate::store::Store;

/// Generation 1's save fails and is retried in the background; the next
/// rotation (`rt-2`) is saved, but its access token is expired on
/// arrival. The retries of generation 1 must not resume and write the
/// spent `rt-1` over the live `rt-2`.
#[tokio::test(start_paused = true)]
async fn resumed_retries_never_write_a_spent_refresh_token_over_a_newer_one() {
    // Rotates on every call (`rt-n`); the second access token arrives
    // expired. The first save fails.
    let p = Script::new("ozoooo");
    let store = Saves::new("f");
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.invalidate(1).await.is_err(), "tok-2 arrives expired");
    let saved = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(saved.refresh_token.as_deref(), Some("rt-2"));
    tokio::time::sleep(S(30)).await;
    let later = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(
        (later.generation, later.refresh_token.as_deref()),
        (2, Some("rt-2")),
        "the live rotated refresh token was overwritten"
    );
}

/// After such a rotation, a reload's hand-over carries `rt-2`, not the
/// spent `rt-1`.
#[tokio::test(start_paused = true)]
async fn a_handover_after_a_useless_rotation_carries_the_new_refresh_token() {
    let p = Script::new("ozoooo");
    let old_store = Arc::new(MemoryStore::new());
    let old = RefreshingSource::new(
        "crm",
        p.clone(),
        old_store.clone(),
        RefreshSettings::default(),
    );
    assert_eq!(token(&old).await, "tok-1");
    assert!(old.invalidate(1).await.is_err());
    let h = old.handover().unwrap();
    let new = RefreshingSource::with_handover(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
        None,
        h,
    );
    drop(old);
    let _ = new.refresh_now().await;
    let seen = p.seen();
    assert_eq!(
        seen.last().cloned().flatten().as_deref(),
        Some("rt-2"),
        "the replacement refreshed with {seen:?}: rt-1 was already spent"
    );
}

/// Such a rotation is saved with the access token held (generation 2
/// holds `tok-1` and `rt-2`). A 401 for `tok-1` then asks for a token
/// other than `tok-1`: the stored generation 2 is not one (it used to be
/// adopted as a refresh, with no token call, and the 401 retry replayed
/// the refused token); the forced refresh fetches one with `rt-2`.
#[tokio::test(start_paused = true)]
async fn a_forced_refresh_never_adopts_the_token_it_replaces() {
    let p = Script::new("ozo");
    let store = Saves::new("");
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.invalidate(1).await.is_err(), "tok-2 arrives expired");
    let saved = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(
        (saved.generation, saved.access_token.as_str()),
        (2, "tok-1")
    );
    tokio::time::advance(S(2)).await;
    let _ = src.invalidate(1).await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 3, "no token call was made");
    assert_eq!(token(&src).await, "tok-3");
    assert_eq!(p.seen().last().cloned().flatten().as_deref(), Some("rt-2"));
}

/// A store two processes share, and their settings: a backoff long enough
/// that no retry of B's runs in the tests' windows.
fn shared() -> (Arc<MemoryStore>, RefreshSettings) {
    let settings = RefreshSettings {
        backoff_min: S(60),
        ..RefreshSettings::default()
    };
    (Arc::new(MemoryStore::new()), settings)
}

/// After several of B's store checks (every 10 s), the store still holds
/// `rotated`, with A's live refresh token `live`.
async fn still_stored_after_store_checks(
    store: &MemoryStore,
    rotated: &StoredCredential,
    live: &str,
) {
    tokio::time::sleep(S(35)).await;
    let later = store.load("crm").await.unwrap().unwrap();
    assert_eq!(
        (later.generation, later.refresh_token.as_deref()),
        (rotated.generation, Some(live)),
        "the live refresh token was overwritten"
    );
}

/// Two processes share a store. B's refreshes twice bring an access token
/// expired on arrival and no new refresh token: nothing new, so nothing is
/// saved and B's state keeps its generation (it used to climb, 1 to 3, in
/// memory). A then rotates the refresh token (generation 2, `a-rt-1`). B's
/// write-back must not take the store for one that lost B's state: it
/// used to write the spent `rt-1` over the live `a-rt-1` (generation 3
/// beat 2), and every refresh after was an `invalid_grant`.
#[tokio::test(start_paused = true)]
async fn useless_refreshes_without_rotation_never_overwrite_a_newer_store() {
    let (store, settings) = shared();
    let pb = Script::new("oZZ");
    let b = RefreshingSource::new("crm", pb.clone(), store.clone(), settings.clone());
    assert_eq!(token(&b).await, "tok-1");
    let pa = Script::named("o", "a-");
    let a = RefreshingSource::new("crm", pa.clone(), store.clone(), settings);
    assert_eq!(token(&a).await, "tok-1", "A adopts the stored token");
    assert_eq!(pa.calls.load(Ordering::SeqCst), 0);
    assert!(b.refresh_now().await.is_err());
    assert!(b.refresh_now().await.is_err());
    assert_eq!(pb.calls.load(Ordering::SeqCst), 3);
    assert!(a.refresh_now().await.is_ok());
    let rotated = store.load("crm").await.unwrap().unwrap();
    assert_eq!(rotated.refresh_token.as_deref(), Some("a-rt-1"));
    still_stored_after_store_checks(&store, &rotated, "a-rt-1").await;
}

/// The same with nothing valid held, so the useless token is what B
/// keeps: B's first token arrives expired (with `rt-1`, saved), then two
/// more without a new refresh token. B's generation must not climb past
/// what A saves next.
#[tokio::test(start_paused = true)]
async fn useless_refreshes_with_nothing_valid_held_never_overwrite_a_newer_store() {
    let (store, settings) = shared();
    let pb = Script::new("zZZ");
    let b = RefreshingSource::new("crm", pb.clone(), store.clone(), settings.clone());
    for _ in 0..3 {
        assert!(b.refresh_now().await.is_err());
    }
    assert_eq!(pb.calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        store
            .load("crm")
            .await
            .unwrap()
            .unwrap()
            .refresh_token
            .as_deref(),
        Some("rt-1")
    );
    // A starts: the stored token is expired, so it refreshes with `rt-1`.
    let pa = Script::named("o", "a-");
    let a = RefreshingSource::new("crm", pa.clone(), store.clone(), settings);
    assert_eq!(token(&a).await, "a-tok-1");
    assert_eq!(pa.seen(), [Some("rt-1".to_owned())]);
    let rotated = store.load("crm").await.unwrap().unwrap();
    assert_eq!(rotated.refresh_token.as_deref(), Some("a-rt-1"));
    // B's backoff (60 s) is not over meanwhile.
    still_stored_after_store_checks(&store, &rotated, "a-rt-1").await;
}

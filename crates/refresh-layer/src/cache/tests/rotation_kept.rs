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

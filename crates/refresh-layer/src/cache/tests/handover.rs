//! A source rebuilt by a reload starts from what the old one held.

use super::persist::{Flaky, RotatingOrFailing};
use super::*;
use crate::store::Store;

fn flaky(failing: usize) -> Arc<Flaky> {
    Arc::new(Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(failing),
        saves: AtomicUsize::new(0),
    })
}

/// The old source rotated while its store was down (the rotated state is
/// unsaved); a reload rebuilds the credential on another store. The new
/// source serves the held token at once, without a token call, and saves
/// the rotated state to its own store.
#[tokio::test(start_paused = true)]
async fn a_replacement_serves_the_held_token_and_saves_the_unsaved_state() {
    let p = Arc::new(RotatingOrFailing::default());
    let old_store = flaky(usize::MAX);
    let old = RefreshingSource::new("crm", p.clone(), old_store, RefreshSettings::default());
    assert_eq!(token(&old).await, "tok-1");
    let h = old.handover().unwrap();
    assert_eq!(h.generation(), 1);
    assert!(h.unsaved());
    assert!(!format!("{h:?}").contains("tok-1") && !format!("{h:?}").contains("rt-1"));

    let new_store = flaky(0);
    let new = RefreshingSource::with_handover(
        "crm",
        p.clone(),
        new_store.clone(),
        RefreshSettings::default(),
        None,
        h,
    );
    drop(old);
    assert_eq!(token(&new).await, "tok-1");
    assert_eq!(new.status().generation, 1);
    assert_eq!(p.calls.load(Ordering::SeqCst), 1, "no token call");
    tokio::time::sleep(S(5)).await;
    let saved = new_store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(saved.generation, 1);
    assert_eq!(saved.refresh_token.as_deref(), Some("rt-1"));
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
}

/// A saved state is handed over as saved (nothing to save again), and a
/// source that holds nothing hands nothing over.
#[tokio::test(start_paused = true)]
async fn a_saved_state_is_handed_over_as_saved() {
    let p = Arc::new(RotatingOrFailing::default());
    p.failing.store(true, Ordering::SeqCst);
    let store = flaky(0);
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert!(token(&src).await.starts_with("ERR"));
    assert!(src.handover().is_none());
    p.failing.store(false, Ordering::SeqCst);
    src.refresh_now().await.unwrap();
    let h = src.handover().unwrap();
    assert!(!h.unsaved());
    assert_eq!(h.generation(), 1);
}

/// A source dropped with an unsaved rotated state (replaced by a reload,
/// which handed the state over, or removed) stops saving to its store: its
/// retries do not keep it, its store and its lock alive for ever.
#[tokio::test(start_paused = true)]
async fn a_dropped_source_stops_saving() {
    let p = Arc::new(RotatingOrFailing::default());
    let old_store = flaky(usize::MAX);
    let old = RefreshingSource::new(
        "crm",
        p.clone(),
        old_store.clone(),
        RefreshSettings::default(),
    );
    assert_eq!(token(&old).await, "tok-1");
    let h = old.handover().unwrap();
    let new = RefreshingSource::with_handover(
        "crm",
        p.clone(),
        flaky(0),
        RefreshSettings::default(),
        None,
        h,
    );
    tokio::time::sleep(S(10)).await;
    let before_drop = old_store.saves.load(Ordering::SeqCst);
    assert!(
        before_drop > 2,
        "the unsaved state is retried: {before_drop} saves"
    );
    drop(old);
    tokio::time::sleep(S(10)).await;
    let after_drop = old_store.saves.load(Ordering::SeqCst);
    tokio::time::sleep(S(600)).await;
    let later = old_store.saves.load(Ordering::SeqCst);
    assert_eq!(
        later, after_drop,
        "the dropped source still saves to its old store ({after_drop} -> {later} saves in 10 min)"
    );
    drop(new);
}

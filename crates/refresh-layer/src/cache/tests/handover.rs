//! A source rebuilt by a reload starts from what the old one held.

use super::persist::{Flaky, RotatingOrFailing};
use super::*;
use crate::store::{Store, StoreLock};
use futures_util::future::BoxFuture;

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

/// A store whose lock fails while `failing_locks` counts down.
#[derive(Debug)]
struct LockFails {
    inner: MemoryStore,
    failing_locks: AtomicUsize,
}

impl Store for LockFails {
    fn kind(&self) -> &'static str {
        "lock-fails"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.inner.load(id)
    }
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        let down = self
            .failing_locks
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if down {
            return Box::pin(async { Err(StoreError::Unavailable("lock wait timed out".into())) });
        }
        self.inner.lock(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.save(id, state)
    }
}

/// The new store holds an older lineage's state (generation 7, its
/// refresh token spent long ago) and its lock cannot be taken when the
/// hand-over is reconciled. A refresh before the hand-over is settled
/// fails rather than send the spent token (the lock may be free by the
/// time the refresh asks for it); once settled, it sends the live one.
#[tokio::test(start_paused = true)]
async fn a_refresh_waits_for_an_unsettled_handover() {
    let p = super::doubles::Script::new("oo");
    let old = RefreshingSource::new(
        "crm",
        p.clone(),
        flaky(usize::MAX),
        RefreshSettings::default(),
    );
    assert_eq!(token(&old).await, "tok-1");
    let h = old.handover().unwrap();

    let store = Arc::new(LockFails {
        inner: MemoryStore::new(),
        failing_locks: AtomicUsize::new(1),
    });
    let stale = StoredCredential {
        access_token: "tok-stale".into(),
        expires_at_ms: Some(2),
        refresh_token: Some("rt-spent".into()),
        generation: 7,
        obtained_at_ms: 1,
        provider: None,
    };
    store.inner.save("crm", &stale).await.unwrap();
    let new = RefreshingSource::with_handover(
        "crm",
        p.clone(),
        store.clone(),
        RefreshSettings::default(),
        None,
        h,
    );
    drop(old);
    // The background reconciliation fails once and backs off.
    settle().await;
    assert_eq!(store.failing_locks.load(Ordering::SeqCst), 0);
    store.failing_locks.store(1, Ordering::SeqCst);
    let e = new.refresh_now().await.unwrap_err();
    assert!(matches!(e, RefreshError::Store(_)), "{e:?}");
    assert!(
        e.to_string().contains("lock wait timed out"),
        "the store's own error: {e}"
    );
    assert_eq!(
        p.seen(),
        vec![None],
        "a token call ran before the hand-over was settled"
    );
    assert_eq!(token(&new).await, "tok-1", "the held token is still served");

    // Settled in the background: the handed state is written over the
    // stale lineage, and the next refresh sends the live refresh token.
    tokio::time::sleep(S(120)).await;
    new.refresh_now().await.unwrap();
    assert_eq!(p.seen(), vec![None, Some("rt-1".to_string())]);
    assert_eq!(token(&new).await, "tok-2");
}

//! A rotation whose access token is of no use (expired on arrival, or
//! unsendable) still rotated the refresh token: the new state is held in
//! memory whether or not it was saved, so neither a resumed background
//! save nor a reload's hand-over goes back to the spent refresh token.

use super::*;
use crate::store::{Store, StoreLock};
use std::sync::Mutex;

/// Rotates on every call (`rt-n`); the second access token arrives
/// expired.
#[derive(Debug, Default)]
struct RotatesThenShort {
    calls: AtomicUsize,
    seen: Mutex<Vec<Option<String>>>,
}

impl TokenProvider for RotatesThenShort {
    fn kind(&self) -> &'static str {
        "rotating"
    }
    fn rotates(&self) -> bool {
        true
    }
    fn fetch<'a>(
        &'a self,
        current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        self.seen
            .lock()
            .unwrap()
            .push(current.and_then(|c| c.refresh_token.clone()));
        Box::pin(async move {
            Ok(Token {
                access_token: SecretString::from(format!("tok-{n}")),
                expires_in: Some(if n == 2 { Duration::ZERO } else { S(3600) }),
                refresh_token: Some(SecretString::from(format!("rt-{n}"))),
            })
        })
    }
}

/// A store without compare-and-set (as the file store) whose first save
/// fails.
#[derive(Debug, Default)]
struct FirstSaveFails {
    inner: MemoryStore,
    saves: AtomicUsize,
}

impl Store for FirstSaveFails {
    fn kind(&self) -> &'static str {
        "file-like"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, crate::store::StoreError>> {
        self.inner.load(id)
    }
    fn lock<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<StoreLock, crate::store::StoreError>> {
        self.inner.lock(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), crate::store::StoreError>> {
        if self.saves.fetch_add(1, Ordering::SeqCst) == 0 {
            return Box::pin(ready(Err(crate::store::StoreError::Io {
                op: "save",
                problem: "No space left on device".into(),
            })));
        }
        self.inner.save(id, state)
    }
}

/// Generation 1's save fails and is retried in the background; the next
/// rotation (`rt-2`) is saved, but its access token is expired on
/// arrival. The retries of generation 1 must not resume and write the
/// spent `rt-1` over the live `rt-2`.
#[tokio::test(start_paused = true)]
async fn resumed_retries_never_write_a_spent_refresh_token_over_a_newer_one() {
    let p = Arc::new(RotatesThenShort::default());
    let store = Arc::new(FirstSaveFails::default());
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
    let p = Arc::new(RotatesThenShort::default());
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
    let seen = p.seen.lock().unwrap().clone();
    assert_eq!(
        seen.last().cloned().flatten().as_deref(),
        Some("rt-2"),
        "the replacement refreshed with {seen:?}: rt-1 was already spent"
    );
}

//! A rotated credential whose save failed is saved again, under the lock.

use super::*;
use crate::store::{Store, StoreError, StoreLock};

/// A memory store whose first `failing` saves fail as if it were down.
#[derive(Debug)]
pub(super) struct Flaky {
    pub(super) inner: MemoryStore,
    pub(super) failing: AtomicUsize,
    pub(super) saves: AtomicUsize,
}

impl Store for Flaky {
    fn kind(&self) -> &'static str {
        "flaky"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.inner.load(id)
    }
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        self.inner.lock(id)
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.saves.fetch_add(1, Ordering::SeqCst);
        let down = self
            .failing
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if down {
            return Box::pin(async { Err(StoreError::Unavailable("down".into())) });
        }
        self.inner.save(id, state)
    }
}

/// Rotates: every token comes with a new refresh token.
#[derive(Debug)]
struct Rotating(AtomicUsize);

impl TokenProvider for Rotating {
    fn kind(&self) -> &'static str {
        "rotating"
    }
    fn rotates(&self) -> bool {
        true
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            Ok(Token {
                access_token: SecretString::from(format!("tok-{n}")),
                expires_in: Some(S(3600)),
                refresh_token: Some(SecretString::from(format!("rt-{n}"))),
            })
        })
    }
}

/// A rotating credential on a store whose first `failing` saves fail.
fn rotating_on_flaky(failing: usize) -> (Arc<Flaky>, RefreshingSource) {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(failing),
        saves: AtomicUsize::new(0),
    });
    let src = RefreshingSource::new(
        "crm",
        Arc::new(Rotating(AtomicUsize::new(0))),
        store.clone(),
        RefreshSettings::default(),
    );
    (store, src)
}

/// The token is served at once; the save is tried again (0.5 s, 1 s, 2 s
/// later...) while the lock stays held, so no other holder reads the
/// consumed refresh token meanwhile; once saved, the lock is free.
#[tokio::test(start_paused = true)]
async fn a_failed_save_of_a_rotated_token_is_retried_under_the_lock() {
    let (store, src) = rotating_on_flaky(3);
    assert_eq!(token(&src).await, "tok-1");
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_err(),
        "the lock is held while the save is retried"
    );
    assert_eq!(store.inner.load("crm").await.unwrap(), None);
    tokio::time::sleep(S(4)).await;
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        4,
        "the fourth save worked"
    );
    let saved = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(saved.refresh_token.as_deref(), Some("rt-1"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_ok(),
        "released once saved"
    );
}

/// A store that stays down: the lock is released after the last attempt
/// (~30 s), and the credential keeps working from memory.
#[tokio::test(start_paused = true)]
async fn a_store_that_stays_down_releases_the_lock_after_the_last_attempt() {
    let (store, src) = rotating_on_flaky(usize::MAX);
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(32)).await;
    assert_eq!(
        store.saves.load(Ordering::SeqCst),
        7,
        "one save and six more"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_ok()
    );
    assert_eq!(token(&src).await, "tok-1");
}

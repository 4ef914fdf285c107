//! A rotated credential whose save failed is saved again, under the lock.

use super::doubles::{Saves, Script};
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
        // Compare-and-set on the generation, as a shared store does.
        Box::pin(async move {
            let stored = self.inner.load(id).await?.map_or(0, |s| s.generation);
            if state.generation <= stored {
                return Err(StoreError::Conflict { stored });
            }
            self.inner.save(id, state).await
        })
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
    rotating_on_flaky_observed(failing, None)
}

fn rotating_on_flaky_observed(
    failing: usize,
    observer: Option<Arc<dyn proxy_core::facts::RefreshObserver>>,
) -> (Arc<Flaky>, RefreshingSource) {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(failing),
        saves: AtomicUsize::new(0),
    });
    let src = RefreshingSource::with_observer(
        "crm",
        Arc::new(Rotating(AtomicUsize::new(0))),
        store.clone(),
        RefreshSettings::default(),
        observer,
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

/// A store down for longer than any fixed number of attempts: the save is
/// tried again (at most 2 s apart) until it works, holding the
/// lock all along, so no other holder reads the spent refresh token; the
/// status says the rotated token is held only here meanwhile.
#[tokio::test(start_paused = true)]
async fn a_rotated_token_is_saved_however_long_the_store_is_down() {
    // 40 failed saves take at least 0.25 + 0.5 + 38 x 1 s, at most
    // 0.5 + 1 + 38 x 2 s: well past the ~31 s of a fixed schedule.
    let (store, src) = rotating_on_flaky(40);
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(35)).await;
    assert_eq!(store.inner.load("crm").await.unwrap(), None);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_err(),
        "the lock is still held while the rotated token is unsaved"
    );
    let last = src.status().last_error.unwrap_or_default();
    assert!(
        last.contains("credential crm") && last.contains("held only in this process"),
        "{last}"
    );
    assert!(!last.contains("rt-1"), "{last}");
    tokio::time::sleep(S(60)).await;
    assert_eq!(store.saves.load(Ordering::SeqCst), 41, "saved at the 41st");
    let saved = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(saved.refresh_token.as_deref(), Some("rt-1"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_ok(),
        "released once saved"
    );
    // Nothing more is tried once saved.
    tokio::time::sleep(S(60)).await;
    assert_eq!(store.saves.load(Ordering::SeqCst), 41);
    assert_eq!(token(&src).await, "tok-1");
}

/// While the rotated token waits to be saved, the credential's own next
/// refresh takes the lock over (it would otherwise wait on its own lock)
/// and starts from the unsaved state; the newer state is then the one
/// saved, and the older one is not tried any more.
#[tokio::test(start_paused = true)]
async fn a_refresh_while_the_save_is_retried_takes_the_lock_over() {
    let (store, src) = rotating_on_flaky(usize::MAX);
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(5)).await;
    let st = src.refresh_now().await.unwrap();
    assert_eq!(st.generation, 2);
    assert_eq!(token(&src).await, "tok-2");
    store.failing.store(0, Ordering::SeqCst);
    tokio::time::sleep(S(30)).await;
    let saved = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(saved.generation, 2);
    assert_eq!(saved.refresh_token.as_deref(), Some("rt-2"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_ok(),
        "released once saved"
    );
}

/// A newer generation stored meanwhile (the store refuses the save as a
/// conflict) ends the retries, and the stored credential is adopted. That
/// adoption is no refresh, but the token served changed: the observer
/// hears of it (the expiry gauge follows the adopted token's expiry, or
/// the expiry alert fires on a credential holding a fresh one).
#[tokio::test(start_paused = true)]
async fn a_newer_stored_generation_ends_the_retries_and_is_adopted() {
    #[derive(Debug, Default)]
    struct Adoptions(std::sync::Mutex<Vec<(String, Option<SystemTime>)>>);
    impl proxy_core::facts::RefreshObserver for Adoptions {
        fn on_refresh(&self, _: &proxy_core::facts::RefreshEvent) {}
        fn on_adopted(&self, credential: &str, expires_at: Option<SystemTime>) {
            self.0
                .lock()
                .unwrap()
                .push((credential.to_owned(), expires_at));
        }
    }
    let seen = Arc::new(Adoptions::default());
    let (store, src) = rotating_on_flaky_observed(usize::MAX, Some(seen.clone()));
    assert_eq!(token(&src).await, "tok-1");
    assert!(seen.0.lock().unwrap().is_empty());
    // Whole milliseconds, as stored.
    let expires = SystemTime::UNIX_EPOCH
        + Duration::from_millis(crate::token::to_ms(SystemTime::now() + S(3600)));
    let newer = StoredCredential {
        access_token: "theirs".into(),
        expires_at_ms: Some(crate::token::to_ms(expires)),
        refresh_token: Some("rt-theirs".into()),
        generation: 5,
        obtained_at_ms: crate::token::to_ms(SystemTime::now()),
        provider: None,
    };
    store.inner.save("crm", &newer).await.unwrap();
    store.failing.store(0, Ordering::SeqCst);
    tokio::time::sleep(S(30)).await;
    assert_eq!(token(&src).await, "theirs");
    assert_eq!(*seen.0.lock().unwrap(), [("crm".to_owned(), Some(expires))]);
    let saves = store.saves.load(Ordering::SeqCst);
    tokio::time::sleep(S(60)).await;
    assert_eq!(store.saves.load(Ordering::SeqCst), saves, "no more retries");
    assert_eq!(store.inner.load("crm").await.unwrap().unwrap(), newer);
}

/// Rotates, or fails (without consuming anything) while `failing`.
#[derive(Debug, Default)]
pub(super) struct RotatingOrFailing {
    pub(super) calls: AtomicUsize,
    pub(super) failing: AtomicBool,
}

impl TokenProvider for RotatingOrFailing {
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
        let failing = self.failing.load(Ordering::SeqCst);
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(async move {
            if failing {
                return Err(ProviderError::Http { status: 503 });
            }
            Ok(Token {
                access_token: SecretString::from(format!("tok-{n}")),
                expires_in: Some(S(3600)),
                refresh_token: Some(SecretString::from(format!("rt-{n}"))),
            })
        })
    }
}

/// A refresh that takes the retries over and then fails leaves the unsaved
/// rotated state in place: its retries resume, under the same lock, and
/// it is saved once the store is back.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_hands_the_unsaved_state_back_to_its_retries() {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(usize::MAX),
        saves: AtomicUsize::new(0),
    });
    let p = Arc::new(RotatingOrFailing::default());
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(2)).await;
    p.failing.store(true, Ordering::SeqCst);
    assert!(src.refresh_now().await.is_err());
    retries_resumed(&store, &src).await;
}

/// After a refresh that took the retries of the unsaved generation 1
/// over and failed: the lock is held again by the retries, which save the
/// state once the store is back, and then release it.
async fn retries_resumed(store: &Flaky, src: &RefreshingSource) {
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_err(),
        "the lock is held again by the retries"
    );
    store.failing.store(0, Ordering::SeqCst);
    tokio::time::sleep(S(30)).await;
    let saved = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(saved.generation, 1);
    assert_eq!(saved.refresh_token.as_deref(), Some("rt-1"));
    assert!(
        tokio::time::timeout(Duration::from_millis(100), store.lock("crm"))
            .await
            .is_ok(),
        "released once saved"
    );
    assert_eq!(token(src).await, "tok-1");
}

/// While the rotated state waits to be saved and refreshes fail, another
/// replica stores a newer generation: it is adopted, and the status no
/// longer says "failing" (nor does a backoff from before still hold).
#[tokio::test(start_paused = true)]
async fn adopting_a_newer_stored_credential_ends_the_failing_state() {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(1_000),
        saves: AtomicUsize::new(0),
    });
    let src = RefreshingSource::new(
        "crm",
        Script::new("o"), // rotates on its first call, then fails
        store.clone(),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.invalidate(1).await.is_err(), "the forced refresh fails");
    assert_eq!(src.status().state, "failing");

    let now = crate::token::to_ms(SystemTime::now());
    let newer = StoredCredential {
        access_token: "tok-5".into(),
        expires_at_ms: Some(now + 3_600_000),
        refresh_token: Some("rt-5".into()),
        generation: 5,
        obtained_at_ms: now,
        provider: None,
    };
    store.inner.save("crm", &newer).await.unwrap();
    tokio::time::sleep(S(5)).await;
    settle().await;
    let st = src.status();
    assert_eq!(st.generation, 5, "{st:?}");
    assert_eq!(st.consecutive_failures, 0, "{st:?}");
    assert_ne!(st.state, "failing", "{st:?}");
}

/// A background save of generation 1 is in flight (slow) when a 401
/// forces a refresh that takes the retries over and saves generation 2:
/// the refresh waits for that save to end, so the spent `rt-1` never
/// lands over the live `rt-2`.
#[tokio::test(start_paused = true)]
async fn a_save_in_flight_never_lands_over_the_takeovers_newer_generation() {
    // The first save fails; the second (the first retry) takes 5 s.
    let store = Saves::new("fs");
    let src = RefreshingSource::new(
        "crm",
        Arc::new(Rotating(AtomicUsize::new(0))),
        store.clone(),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(2)).await; // the first retry (save 1) is in flight
    settle().await;
    assert_eq!(store.saves.load(Ordering::SeqCst), 2);
    src.invalidate(1).await.unwrap();
    tokio::time::sleep(S(10)).await;
    let s = store.inner.load("crm").await.unwrap().unwrap();
    assert_eq!(
        (s.generation, s.refresh_token.as_deref()),
        (2, Some("rt-2")),
        "the spent rt-1 was written over the live rt-2"
    );
}

/// A refresh that takes the retries over and then panics in the token
/// call (a provider's bug) hands them back all the same: the live refresh
/// token is not left in memory only, with its lock released.
#[tokio::test(start_paused = true)]
async fn a_refresh_that_panics_hands_the_unsaved_state_back_to_its_retries() {
    let store = Arc::new(Flaky {
        inner: MemoryStore::new(),
        failing: AtomicUsize::new(usize::MAX),
        saves: AtomicUsize::new(0),
    });
    let p = super::doubles::Script::new("op");
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(2)).await;
    let e = src.refresh_now().await.unwrap_err();
    assert!(matches!(e, RefreshError::Panicked), "{e:?}");
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    retries_resumed(&store, &src).await;
}

/// A store whose lock is a lease the test can mark lost, and whose saves
/// fail while `failing` counts down.
#[derive(Debug, Default)]
struct Leased {
    inner: MemoryStore,
    failing: AtomicUsize,
    locks: AtomicUsize,
    lost: Arc<AtomicBool>,
}

impl Store for Leased {
    fn kind(&self) -> &'static str {
        "leased"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        self.inner.load(id)
    }
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        self.locks.fetch_add(1, Ordering::SeqCst);
        let lost = self.lost.clone();
        Box::pin(async move {
            let held = self.inner.lock(id).await?;
            Ok(StoreLock::with_loss(held, lost))
        })
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
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

/// The lock an unsaved rotated state's retries hold is a lease that went
/// to another process (it lapsed while the store was unreachable): the
/// next refresh does not go on as if it held it, it takes the lock again.
#[tokio::test(start_paused = true)]
async fn a_refresh_does_not_take_over_a_lost_lock() {
    let store = Arc::new(Leased {
        failing: AtomicUsize::new(usize::MAX),
        ..Leased::default()
    });
    let p = Arc::new(RotatingOrFailing::default());
    let src = RefreshingSource::new("crm", p.clone(), store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await, "tok-1");
    tokio::time::sleep(S(2)).await;
    assert_eq!(store.locks.load(Ordering::SeqCst), 1);
    store.lost.store(true, Ordering::SeqCst);
    store.failing.store(0, Ordering::SeqCst);
    src.refresh_now().await.unwrap();
    assert_eq!(
        store.locks.load(Ordering::SeqCst),
        2,
        "the refresh took the lock again instead of the lost one"
    );
}

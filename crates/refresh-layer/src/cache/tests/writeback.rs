//! A rotating credential's state is written back into a store that lost
//! it (`writeback.rs`), and only when that cannot put a spent refresh
//! token or another provider's state in the store.

use super::doubles::Script;
use super::*;
use crate::store::{Store, StoreLock};
use std::collections::HashMap;

/// A store that can lose (`forget`) or be set to (`put`) a state behind
/// the sources' backs, without compare-and-set (as the file store), and
/// that records the generation of every save.
#[derive(Debug, Default)]
struct Loses {
    states: Mutex<HashMap<String, StoredCredential>>,
    lock: Arc<tokio::sync::Mutex<()>>,
    saved: Mutex<Vec<u64>>,
}

impl Loses {
    fn forget(&self) {
        self.states.lock().unwrap().clear();
    }
    fn put(&self, state: StoredCredential) {
        self.states.lock().unwrap().insert("crm".into(), state);
    }
    fn stored(&self) -> Option<StoredCredential> {
        self.states.lock().unwrap().get("crm").cloned()
    }
    fn saved(&self) -> Vec<u64> {
        self.saved.lock().unwrap().clone()
    }
}

impl Store for Loses {
    fn kind(&self) -> &'static str {
        "loses"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        Box::pin(ready(Ok(self.states.lock().unwrap().get(id).cloned())))
    }
    fn lock<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        let lock = self.lock.clone();
        Box::pin(async move { Ok(StoreLock::new(lock.lock_owned().await)) })
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        state: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.saved.lock().unwrap().push(state.generation);
        self.states
            .lock()
            .unwrap()
            .insert(id.to_owned(), state.clone());
        Box::pin(ready(Ok(())))
    }
}

/// [`Script`] with a provider fingerprint, so another provider's state
/// can be told apart.
#[derive(Debug)]
struct Stamped(Arc<Script>);

impl TokenProvider for Stamped {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn rotates(&self) -> bool {
        true
    }
    fn identity(&self) -> Option<String> {
        Some("ours".into())
    }
    fn fetch<'a>(
        &'a self,
        current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        self.0.fetch(current)
    }
}

fn on(store: &Arc<Loses>, provider: Arc<dyn TokenProvider>) -> RefreshingSource {
    RefreshingSource::new("crm", provider, store.clone(), RefreshSettings::default())
}

/// Past one check (10 s, jittered by at most 10 %).
async fn one_check() {
    tokio::time::sleep(S(12)).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn a_store_that_lost_the_state_gets_the_live_refresh_token_back() {
    let store = Arc::new(Loses::default());
    let p = Script::new("oo");
    let src = on(&store, p.clone());
    assert_eq!(token(&src).await, "tok-1");
    store.forget();
    one_check().await;
    let back = store.stored().expect("written back");
    assert_eq!(back.generation, 1);
    assert_eq!(back.refresh_token.as_deref(), Some("rt-1"));
    assert_eq!(back.access_token, "tok-1");
    // Nothing was fetched for it, and a store that holds it is left alone.
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    one_check().await;
    assert_eq!(store.saved(), vec![1, 1]);
}

#[tokio::test(start_paused = true)]
async fn an_older_generation_in_the_store_is_replaced_by_the_one_held() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Script::new("oo"));
    assert_eq!(token(&src).await, "tok-1");
    let spent = store.stored().unwrap();
    src.refresh_now().await.unwrap();
    // Restored from an older snapshot: its refresh token (rt-1) is spent.
    store.put(spent);
    one_check().await;
    let back = store.stored().unwrap();
    assert_eq!(back.generation, 2);
    assert_eq!(back.refresh_token.as_deref(), Some("rt-2"));
}

/// Its refresh token may be dead, and an operator who deletes the state
/// to start over from a new seed means it.
#[tokio::test(start_paused = true)]
async fn a_credential_refused_by_its_token_endpoint_writes_nothing_back() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Script::new("og"));
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.refresh_now().await.is_err());
    store.forget();
    one_check().await;
    one_check().await;
    assert_eq!(store.stored(), None);
    assert_eq!(store.saved(), vec![1]);
    // The token held is still served.
    assert_eq!(token(&src).await, "tok-1");
}

/// A 503 after an `invalid_grant` does not make the refused refresh
/// token good again.
#[tokio::test(start_paused = true)]
async fn a_refused_refresh_token_stays_refused_after_other_failures() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Script::new("oge"));
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.refresh_now().await.is_err());
    assert!(src.refresh_now().await.is_err());
    store.forget();
    one_check().await;
    one_check().await;
    assert_eq!(store.stored(), None);
}

/// A token endpoint (or a store) that is down says nothing against the
/// refresh token held: written back.
#[tokio::test(start_paused = true)]
async fn a_credential_whose_endpoint_is_down_still_writes_back() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Script::new("oe"));
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.refresh_now().await.is_err());
    store.forget();
    one_check().await;
    assert_eq!(
        store.stored().unwrap().refresh_token.as_deref(),
        Some("rt-1")
    );
}

/// Replica `b` holds generation 1 after `a` rotated to 2, and has seen 2
/// stored: when the store loses it, `b` must not write its spent rt-1
/// back (over `a`'s, or before it).
#[tokio::test(start_paused = true)]
async fn a_replica_behind_never_writes_back_a_spent_refresh_token() {
    let store = Arc::new(Loses::default());
    let p = Script::new("ooo");
    let a = on(&store, p.clone());
    assert_eq!(token(&a).await, "tok-1");
    let b = on(&store, p.clone());
    assert_eq!(token(&b).await, "tok-1", "b adopts a's state");
    a.refresh_now().await.unwrap();
    assert_eq!(b.status().generation, 1, "b still holds generation 1");
    one_check().await;
    store.forget();
    for _ in 0..4 {
        one_check().await;
    }
    assert_eq!(store.stored().unwrap().generation, 2);
    assert!(
        !store.saved()[2..].contains(&1),
        "a spent state was written back: {:?}",
        store.saved()
    );
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn another_providers_state_is_left_alone() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Arc::new(Stamped(Script::new("oo"))));
    assert_eq!(token(&src).await, "tok-1");
    let mut theirs = store.stored().unwrap();
    assert_eq!(theirs.provider.as_deref(), Some("ours"));
    theirs.provider = Some("theirs".into());
    theirs.generation = 0;
    store.put(theirs.clone());
    one_check().await;
    one_check().await;
    assert_eq!(store.stored(), Some(theirs));
}

/// A lost state costs a non-rotating grant one token call: not watched.
#[tokio::test(start_paused = true)]
async fn a_non_rotating_credential_is_not_watched() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Scripted::new(Some(S(3600))));
    assert_eq!(token(&src).await, "tok-1");
    store.forget();
    one_check().await;
    one_check().await;
    assert_eq!(store.stored(), None);
}

#[tokio::test(start_paused = true)]
async fn a_retired_source_writes_nothing_back() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Script::new("oo"));
    assert_eq!(token(&src).await, "tok-1");
    CredentialSource::retire(&src);
    store.forget();
    one_check().await;
    assert_eq!(store.stored(), None);
}

/// A refresh-token grant whose IdP does not rotate: the first token lives
/// an hour, later ones arrive already expired (a failed refresh), with no
/// new refresh token.
#[derive(Debug, Default)]
struct ExpiredLater(AtomicUsize);

impl TokenProvider for ExpiredLater {
    fn kind(&self) -> &'static str {
        "expired-later"
    }
    fn rotates(&self) -> bool {
        true
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        let n = self.0.fetch_add(1, Ordering::SeqCst) + 1;
        Box::pin(ready(Ok(Token {
            access_token: SecretString::from(format!("tok-{n}")),
            expires_in: Some(if n == 1 { S(3600) } else { Duration::ZERO }),
            refresh_token: (n == 1).then(|| SecretString::from("rt-1")),
        })))
    }
}

/// A failed refresh keeps a newer generation in memory, unsaved by design
/// (it rotated nothing): the store still holds the live refresh token, so
/// nothing is written back, and no "lost" warning is logged.
#[tokio::test(start_paused = true)]
async fn a_failed_refresh_that_rotated_nothing_is_not_written_back() {
    let store = Arc::new(Loses::default());
    let src = on(&store, Arc::new(ExpiredLater::default()));
    assert_eq!(token(&src).await, "tok-1");
    assert!(src.refresh_now().await.is_err());
    one_check().await;
    one_check().await;
    assert_eq!(store.saved(), vec![1]);
}

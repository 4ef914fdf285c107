//! A credential handed over by a reload to a source on another store: the
//! replaced source stops refreshing (two sources spending one rotating
//! refresh token from two stores would get `invalid_grant`), and a second
//! hand-over before the new store could be reconciled still knows where
//! the state came from.
//!
//! The endpoint, the paused-clock conventions and the helpers are described
//! in `common/mod.rs`.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test by panicking"
)]

mod common;

use common::token_endpoint::TokenEndpoint;
use common::{ID, S, cfg, endpoint, memory, now_ms, quiesce, settle, source, token};
use futures_util::FutureExt as _;
use futures_util::future::BoxFuture;
use proxy_core::CredentialSource as _;
use refresh_layer::provider::oauth2::OAuth2Provider;
use refresh_layer::store::{FileStore, Store, StoreError, StoreLock};
use refresh_layer::token::StoredCredential;
use refresh_layer::{RefreshSettings, RefreshingSource};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn provider(ep: &TokenEndpoint) -> Arc<OAuth2Provider> {
    Arc::new(OAuth2Provider::new(&cfg(ep, "rt-0"), S(1)).unwrap())
}

/// The replaced source (retired by the reload) does not refresh when its
/// token is due: only its successor does, from the rotated refresh token,
/// and the endpoint never sees a spent one. The old source still serves
/// its token to requests of the old config while it is valid.
#[tokio::test(start_paused = true)]
async fn a_retired_source_leaves_the_refresh_to_its_successor() {
    let ep = endpoint(3600, true).await;
    let old = source(&ep, memory(), RefreshSettings::default());
    assert_eq!(token(&old).await.unwrap(), "at-1");
    quiesce(&old).await;
    let new = RefreshingSource::inactive(
        ID,
        provider(&ep),
        memory(),
        RefreshSettings::default(),
        None,
        old.handover(),
    );
    new.activate();
    old.retire();
    // Past the refresh point (60 s before expiry), not past expiry.
    tokio::time::advance(S(3600 - 30)).await;
    settle().await;
    quiesce(&new).await;
    quiesce(&old).await;
    assert_eq!(ep.calls(), 2, "one refresh, by the successor");
    assert_eq!(ep.invalid_grants(), 0);
    assert_eq!(token(&new).await.unwrap(), "at-2");
    assert_eq!(
        token(&old).await.unwrap(),
        "at-1",
        "still valid, still served"
    );
    // Expired, the old source fetches nothing and says why.
    tokio::time::advance(S(60)).await;
    let err = token(&old).await.unwrap_err();
    assert!(err.contains("replaced by a reload"), "{err}");
    assert_eq!(ep.calls(), 2);
}

/// A file store that is unreachable while `down` is set.
#[derive(Debug)]
struct Flaky {
    inner: FileStore,
    down: Arc<AtomicBool>,
    /// Operations refused while down.
    refused: std::sync::atomic::AtomicUsize,
}

impl Flaky {
    fn gone(&self) -> Option<StoreError> {
        let down = self.down.load(Ordering::SeqCst);
        if down {
            self.refused.fetch_add(1, Ordering::SeqCst);
        }
        down.then(|| StoreError::Unavailable("store down (test)".into()))
    }

    /// Waits until the store has refused an operation since `before`
    /// refusals: a hand-over's reconciliation ran into it while down.
    async fn refused_since(&self, before: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.refused.load(Ordering::SeqCst) <= before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the store was never tried"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Store for Flaky {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn load<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<StoredCredential>, StoreError>> {
        match self.gone() {
            Some(e) => futures_util::future::ready(Err(e)).boxed(),
            None => self.inner.load(id),
        }
    }
    fn lock<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<StoreLock, StoreError>> {
        match self.gone() {
            Some(e) => futures_util::future::ready(Err(e)).boxed(),
            None => self.inner.lock(id),
        }
    }
    fn save<'a>(
        &'a self,
        id: &'a str,
        s: &'a StoredCredential,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        match self.gone() {
            Some(e) => futures_util::future::ready(Err(e)).boxed(),
            None => self.inner.save(id, s),
        }
    }
    fn location(&self) -> Option<String> {
        self.inner.location()
    }
}

/// A memory credential rotated twice, and a file store that is down and
/// holds an older run's state (generation 7, a refresh token spent long
/// ago): what a reload moving the credential there finds.
async fn moved_to_a_stale_store_that_is_down() -> (
    TokenEndpoint,
    RefreshingSource,
    String,
    tempfile::TempDir,
    Arc<Flaky>,
    Arc<AtomicBool>,
) {
    let ep = endpoint(3600, true).await;
    let old = source(&ep, memory(), RefreshSettings::default());
    token(&old).await.unwrap();
    old.refresh_now().await.unwrap();
    let live = ep.current_refresh_token().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = FileStore::new(dir.path()).unwrap();
    let stale = StoredCredential {
        access_token: "stale-at".into(),
        expires_at_ms: Some(now_ms() - 60_000),
        refresh_token: Some("rt-stale-spent".into()),
        generation: 7,
        obtained_at_ms: 1,
        provider: None,
    };
    files.save(ID, &stale).await.unwrap();
    let down = Arc::new(AtomicBool::new(true));
    let flaky = Arc::new(Flaky {
        inner: files,
        down: down.clone(),
        refused: std::sync::atomic::AtomicUsize::new(0),
    });
    (ep, old, live, dir, flaky, down)
}

fn successor(ep: &TokenEndpoint, store: &Arc<Flaky>, from: &RefreshingSource) -> RefreshingSource {
    let source = RefreshingSource::inactive(
        ID,
        provider(ep),
        store.clone(),
        RefreshSettings::default(),
        None,
        from.handover(),
    );
    source.activate();
    source
}

/// One hand-over: once the store is back, the live refresh token is
/// written over the stale state and refreshed from.
#[tokio::test]
async fn one_handover_keeps_the_live_refresh_token() {
    let (ep, old, live, _dir, flaky, down) = moved_to_a_stale_store_that_is_down().await;
    let before = flaky.refused.load(Ordering::SeqCst);
    let new = successor(&ep, &flaky, &old);
    flaky.refused_since(before).await;
    down.store(false, Ordering::SeqCst);
    let r = new.refresh_now().await;
    assert_eq!(ep.invalid_grants(), 0, "{r:?}");
    assert_eq!(ep.last_form_value("refresh_token"), Some(live), "{r:?}");
}

/// A second reload before the store is back: the state still comes from
/// the memory store, so the stale state still loses.
#[tokio::test]
async fn a_second_handover_before_the_store_is_back_keeps_the_live_refresh_token() {
    let (ep, old, live, _dir, flaky, down) = moved_to_a_stale_store_that_is_down().await;
    let before = flaky.refused.load(Ordering::SeqCst);
    let second = successor(&ep, &flaky, &old);
    flaky.refused_since(before).await;
    let handed = second.handover();
    assert!(handed.as_ref().is_some_and(|h| h.unsaved()), "{handed:?}");
    let before = flaky.refused.load(Ordering::SeqCst);
    let third = successor(&ep, &flaky, &second);
    second.retire();
    drop(second);
    flaky.refused_since(before).await;
    down.store(false, Ordering::SeqCst);
    let r = third.refresh_now().await;
    assert_eq!(
        ep.invalid_grants(),
        0,
        "the spent refresh token was sent: {r:?}"
    );
    assert_eq!(ep.last_form_value("refresh_token"), Some(live), "{r:?}");
}

/// A retired source whose token an upstream refused (a request of the old
/// config got a 401) starts no forced refresh, and keeps serving the token
/// it holds while it is valid, as after any failed refresh.
#[tokio::test(start_paused = true)]
async fn a_retired_source_keeps_serving_after_a_401() {
    let ep = endpoint(3600, true).await;
    let old = source(&ep, memory(), RefreshSettings::default());
    assert_eq!(token(&old).await.unwrap(), "at-1");
    quiesce(&old).await;
    old.retire();
    let generation = old.generation().unwrap();
    let forced = common::invalidate(&old, generation).await;
    assert!(forced.is_err(), "{forced:?}");
    assert_eq!(token(&old).await.unwrap(), "at-1");
    assert_eq!(ep.calls(), 1);
}

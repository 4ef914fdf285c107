//! A reload's pause with real token endpoints (one deferred refresh for
//! every caller, kept to the backoff), and a failed refresh while a
//! rotated refresh token's save is being retried.

mod common;

use common::saves::{Save, Saves};
use common::{ID, S, endpoint, quiesce, token};
use futures_util::future::BoxFuture;
use refresh_layer::RefreshSettings;
use refresh_layer::store::{MemoryStore, Store};
use refresh_layer::token::StoredCredential;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// A rotated refresh token whose save failed is saved again in the
/// background until it is saved. A later refresh that fails without
/// rotating (the token arrives expired, no refresh_token in the answer)
/// takes those retries over and carries them on: once the store works
/// again it holds the live refresh token, not the spent one.
#[tokio::test(start_paused = true)]
async fn a_failed_non_rotating_answer_does_not_end_the_rotated_tokens_save_retries() {
    use common::token_endpoint::Failure;
    let ep = endpoint(3600, true).await;
    let store = Arc::new(Saves::default());
    let src = common::source(&ep, store.clone(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    quiesce(&src).await;
    // The disk fills up; a refresh rotates rt-1 -> rt-2 and cannot save it.
    store.set(Save::Fail);
    src.refresh_now().await.unwrap();
    let live = ep.current_refresh_token().unwrap();
    // The endpoint now answers a token expired on arrival, without a
    // refresh token (RFC 6749 6: the client keeps the one it has).
    ep.set_failure(Some(Failure::Status(
        200,
        r#"{"access_token":"at-x","token_type":"Bearer","expires_in":0}"#.to_owned(),
    )));
    let err = src.refresh_now().await.unwrap_err().to_string();
    assert!(err.contains("already expired"), "{err}");
    // The disk is fixed; the endpoint too. Give the background save a
    // minute (its retries are at most 2 s apart).
    ep.set_failure(None);
    store.set(Save::Normal);
    for _ in 0..60 {
        tokio::time::advance(S(1)).await;
        common::settle().await;
    }
    let stored = store.inner.load(ID).await.unwrap().unwrap();
    assert_eq!(
        stored.refresh_token.as_deref(),
        Some(live.as_str()),
        "the live rotated refresh token never reached the store (stored generation {}); a restart sends the spent one",
        stored.generation
    );
}

/// Answers one token, then fails at once (a token endpoint refusing
/// connections: no await that pends).
#[derive(Debug, Default)]
struct FailsFast {
    calls: std::sync::atomic::AtomicUsize,
}

impl refresh_layer::provider::TokenProvider for FailsFast {
    fn kind(&self) -> &'static str {
        "fails-fast"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<refresh_layer::token::Token, refresh_layer::provider::ProviderError>>
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            if n == 0 {
                Ok(refresh_layer::token::Token {
                    access_token: secrecy::SecretString::from("tok-1".to_owned()),
                    expires_in: Some(S(3600)),
                    refresh_token: None,
                })
            } else {
                Err(refresh_layer::provider::ProviderError::Http { status: 503 })
            }
        })
    }
}

/// 200 requests get a 401 while a reload pauses the source: they join one
/// deferred refresh, so once resumed the (failing) token endpoint is asked
/// once, and the rest follow the backoff as without the pause.
#[tokio::test(start_paused = true)]
async fn waiters_released_by_a_resume_do_not_bypass_the_backoff() {
    use proxy_core::CredentialSource as _;
    let p = Arc::new(FailsFast::default());
    let src = refresh_layer::RefreshingSource::new(
        ID,
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await.unwrap(), "tok-1");
    src.pause();
    let waiters: Vec<_> = (0..200)
        .map(|_| {
            let src = src.clone();
            tokio::spawn(async move { src.invalidate(1).await })
        })
        .collect();
    // Every waiter has asked.
    common::settle().await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 1, "nothing while paused");
    src.resume();
    for w in waiters {
        let _ = w.await.unwrap();
    }
    let calls = p.calls.load(Ordering::SeqCst) - 1;
    assert_eq!(
        calls, 1,
        "{calls} token calls for 200 401s released by one resume (a failing endpoint asked again at once, bypassing the backoff)"
    );
}

/// A 401 for the token a forced refresh just got, while a reload pauses the
/// source: its forced refresh waits; a second 401 for it joins that one
/// (instead of being refused by the forced-refresh spacing, which would
/// clear the "rejected" mark and let the first return the refused token).
/// Once resumed, the token endpoint is asked once.
#[tokio::test(start_paused = true)]
async fn a_forced_refresh_waiting_on_a_pause_is_not_dropped_by_a_second_401() {
    use proxy_core::CredentialSource as _;
    let ep = endpoint(3600, false).await;
    let cfg: proxy_core::config::OAuth2Config = serde_json::from_value(serde_json::json!({
        "grant": "client_credentials",
        "token_url": ep.url,
        "client_id": common::CLIENT_ID,
        "client_secret": {"value": common::CLIENT_SECRET},
    }))
    .unwrap();
    let src = common::source_with(&cfg, common::memory(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    // The upstream refuses at-1: a forced refresh gets at-2.
    common::invalidate(&src, 1).await.unwrap();
    assert_eq!(token(&src).await.unwrap(), "at-2");
    assert_eq!(ep.calls(), 2);
    // A reload pauses the source; the upstream refuses at-2 too (twice).
    src.pause();
    let ask = || {
        let src = src.clone();
        tokio::spawn(async move { src.invalidate(2).await })
    };
    let first = ask();
    common::settle().await;
    let second = ask();
    common::settle().await;
    assert_eq!(ep.calls(), 2, "nothing while paused");
    src.resume();
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    assert_eq!(ep.calls(), 3, "one forced refresh for both");
    assert_eq!(token(&src).await.unwrap(), "at-3");
}

//! Forced refreshes when the upstream rejects fresh tokens too (see
//! `cache/forced.rs`): spaced out like failures, never one per request.

use super::*;

/// 50 requests in a row rejected by an upstream that refuses every token
/// (no time passes): the first forced refresh, one more at once for the
/// rejection of that fresh token (the endpoint may have handed out a stale
/// token), and then none until the next is due (`backoff_min` later). The token held keeps being served meanwhile, and the
/// error says the credential is refused, not expired.
#[tokio::test(start_paused = true)]
async fn rejected_fresh_tokens_do_not_make_a_token_call_per_request() {
    let p = Scripted::new(Some(S(3600)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    let mut refused = None;
    for _ in 0..50 {
        let g = src.generation().unwrap();
        if let Err(e) = src.invalidate(g).await {
            refused = Some(e);
        }
    }
    assert_eq!(
        p.calls(),
        3,
        "the first token, its forced refresh, and one more for the rejection of that fresh token"
    );
    let e = refused.expect("later rejections are refused");
    assert!(e.backing_off, "reported like a backoff: no token call made");
    assert!(
        e.reason
            .contains("the upstream rejected the token a forced refresh got")
            && e.reason.contains("not expired"),
        "{}",
        e.reason
    );
    // The token held is still served.
    assert!(token(&src).await.starts_with("tok-"));
}

/// One rejection a second for an hour: the forced refreshes back off to
/// `backoff_max` (5 min): a few dozen token calls, not 3,600.
#[tokio::test(start_paused = true)]
async fn an_hour_of_rejections_costs_a_few_dozen_token_calls() {
    let p = Scripted::new(Some(S(7200)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    for _ in 0..3600 {
        let g = src.generation().unwrap();
        let _ = src.invalidate(g).await;
        tokio::time::advance(S(1)).await;
    }
    let calls = p.calls();
    // ~9 to reach the 5 min cap, then one every 150-300 s (jitter): 25-36.
    assert!((15..=36).contains(&calls), "{calls} token calls in an hour");
}

/// Rejections, then the refusal while the next forced refresh is not due.
async fn burst(src: &RefreshingSource) {
    for _ in 0..5 {
        let g = src.generation().unwrap();
        let _ = src.invalidate(g).await;
    }
    let g = src.generation().unwrap();
    assert!(src.invalidate(g).await.is_err(), "spaced out after a burst");
}

/// A refresh that was not forced (here ahead of expiry) starts the count
/// over: the next 401 is refreshed at once again.
#[tokio::test(start_paused = true)]
async fn an_unforced_refresh_starts_over() {
    let p = Scripted::new(Some(S(600)));
    let src = RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings {
            backoff_max: S(3600),
            ..RefreshSettings::default()
        },
    );
    assert_eq!(token(&src).await, "tok-1");
    burst(&src).await;
    let before = p.calls();
    // The proactive refresh, ~60 s before the forced token expires.
    tokio::time::advance(S(550)).await;
    settle().await;
    tokio::time::advance(S(1)).await;
    settle().await;
    assert_eq!(p.calls(), before + 1, "refreshed ahead of expiry");
    let g = src.generation().unwrap();
    src.invalidate(g).await.unwrap();
    assert_eq!(p.calls(), before + 2, "a 401 after it is refreshed at once");
}

/// A token from a forced refresh that worked for longer than twice
/// `backoff_max` (10 min) before its 401 is a new incident: refreshed at
/// once.
#[tokio::test(start_paused = true)]
async fn a_long_working_forced_token_starts_over() {
    let p = Scripted::new(Some(S(7200)));
    let src = source(&p);
    assert_eq!(token(&src).await, "tok-1");
    burst(&src).await;
    tokio::time::advance(S(660)).await;
    settle().await;
    let before = p.calls();
    let g = src.generation().unwrap();
    src.invalidate(g).await.unwrap();
    assert_eq!(p.calls(), before + 1);
}

/// Hands out one cached token, whatever is asked.
#[derive(Debug, Default)]
struct Cached(AtomicUsize);

impl TokenProvider for Cached {
    fn kind(&self) -> &'static str {
        "cached"
    }
    fn fetch<'a>(
        &'a self,
        _: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Box::pin(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            Ok(Token {
                access_token: SecretString::from("tok-cached"),
                expires_in: Some(S(3600)),
                refresh_token: None,
            })
        })
    }
}

/// A source on [`Cached`], serving its token (generation 1).
async fn serving_cached() -> (Arc<Cached>, RefreshingSource) {
    let p = Arc::new(Cached::default());
    let src = RefreshingSource::new(
        "crm",
        p.clone(),
        Arc::new(MemoryStore::new()),
        RefreshSettings::default(),
    );
    assert_eq!(token(&src).await, "tok-cached");
    (p, src)
}

/// A forced refresh that gets the very token the upstream refused (a
/// provider that hands out a cached token) fails, rather than make a new
/// generation of it for the 401 retry to send again; the next forced
/// refresh backs off, and the token is still served.
#[tokio::test(start_paused = true)]
async fn a_forced_refresh_that_gets_the_refused_token_again_fails() {
    let (p, src) = serving_cached().await;
    let e = src.invalidate(1).await.unwrap_err();
    assert!(
        e.reason
            .contains("the very token the upstream just refused"),
        "{}",
        e.reason
    );
    assert!(!e.reason.contains("tok-cached"));
    assert_eq!(
        src.generation(),
        Some(1),
        "no new generation of the same token"
    );
    assert_eq!(p.0.load(Ordering::SeqCst), 2);
    let e = src.invalidate(1).await.unwrap_err();
    assert!(e.backing_off, "{}", e.reason);
    assert_eq!(
        p.0.load(Ordering::SeqCst),
        2,
        "no token call while backing off"
    );
    assert_eq!(token(&src).await, "tok-cached");
    // A refresh that was not forced takes the same token as it comes.
    tokio::time::advance(S(5)).await;
    src.refresh_now().await.unwrap();
    assert_eq!(src.generation(), Some(2));
}

/// The same when the upstream's refusal comes while a refresh that was
/// not forced (here an operator's; ahead of expiry alike) is running: the
/// invalidation joins it, and that refresh getting the refused token
/// again (as a new generation) is no recovery either.
#[tokio::test(start_paused = true)]
async fn a_refusal_that_joins_a_running_refresh_of_the_same_token_fails() {
    let (p, src) = serving_cached().await;
    let running = tokio::spawn({
        let src = src.clone();
        async move { src.refresh_now().await }
    });
    settle().await;
    assert_eq!(p.0.load(Ordering::SeqCst), 2, "the refresh is running");
    let e = src.invalidate(1).await.unwrap_err();
    assert!(
        e.reason
            .contains("the very token the upstream just refused"),
        "{}",
        e.reason
    );
    assert_eq!(
        p.0.load(Ordering::SeqCst),
        2,
        "joined, no token call of its own"
    );
    running.await.unwrap().unwrap();
}

/// A token that expires while its state is saved (a store slower than the
/// token's life) is a failed attempt, which backs off, not a success that
/// is refreshed again at once.
#[tokio::test(start_paused = true)]
async fn a_token_that_expires_while_saved_is_a_failed_attempt() {
    struct Brief;
    impl fmt::Debug for Brief {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("Brief")
        }
    }
    impl TokenProvider for Brief {
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
            Box::pin(async {
                Ok(Token {
                    access_token: SecretString::from("tok-brief"),
                    expires_in: Some(S(2)),
                    refresh_token: Some(SecretString::from("rt-brief")),
                })
            })
        }
    }
    // Every save takes 5 s.
    let store = super::doubles::Saves::new("ssssssssss");
    let src = RefreshingSource::new("crm", Arc::new(Brief), store, RefreshSettings::default());
    let e = src.refresh_now().await.unwrap_err();
    assert!(matches!(e, RefreshError::ExpiredWhileSaving(_)), "{e:?}");
    assert!(
        e.to_string()
            .contains("expired while its state was being saved"),
        "{e}"
    );
    assert_ne!(src.status().consecutive_failures, 0);
}

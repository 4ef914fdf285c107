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

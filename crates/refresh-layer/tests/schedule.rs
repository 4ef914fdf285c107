//! Single-flight and schedule of the refresh layer, seen from a real OAuth2
//! token endpoint: a stampede after expiry makes one token call, traffic
//! across the refresh-ahead buffer never waits, and a failing endpoint is
//! retried with backoff until it recovers.
//!
//! The endpoint, the paused-clock conventions and the helpers are described
//! in `common/mod.rs`.

mod common;

use common::token_endpoint::Failure;
use common::{S, endpoint, memory, quiesce, ready_token, settle, source, token};
use futures_util::future::{Either, join_all};
use proxy_core::CredentialSource as _;
use refresh_layer::RefreshSettings;
use std::time::Duration;
use tokio::time::Instant;

#[tokio::test(start_paused = true)]
async fn thousand_concurrent_requests_after_expiry_make_one_token_call() {
    let ep = endpoint(120, true).await;
    // No lead time: nothing refreshes before the token expires, so at expiry
    // every request finds no valid token.
    let settings = RefreshSettings {
        buffer: Duration::ZERO,
        ..RefreshSettings::default()
    };
    let src = source(&ep, memory(), settings);
    assert_eq!(token(&src).await.unwrap(), "at-1");
    assert_eq!(ep.calls(), 1);

    tokio::time::advance(S(120)).await;
    let gets: Vec<_> = (0..1000).map(|_| src.get()).collect();
    let waited = gets
        .iter()
        .filter(|g| matches!(g, Either::Right(_)))
        .count();
    assert!(waited > 0, "no request found the token expired");
    let results = tokio::time::timeout(S(60), join_all(gets))
        .await
        .expect("the stampede did not finish within 60 s");

    assert_eq!(
        ep.calls(),
        2,
        "1,000 waiting requests must share one refresh"
    );
    let current = ep.current_access_token();
    assert_eq!(current, "at-2");
    for (i, r) in results.into_iter().enumerate() {
        match r {
            Ok(c) => assert_eq!(c.expose(), current, "request {i}"),
            Err(e) => panic!("request {i} failed: {}", e.reason),
        }
    }
    assert_eq!(src.status().generation, 2);
    assert_eq!(ep.invalid_grants(), 0);
}

#[tokio::test(start_paused = true)]
async fn traffic_across_the_buffer_never_waits() {
    let ep = endpoint(600, true).await;
    let src = source(&ep, memory(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    let obtained = Instant::now();
    let mut refreshed_at = None;
    let mut served_new_at = None;
    for _ in 0..700 {
        tokio::time::advance(S(1)).await;
        quiesce(&src).await;
        let elapsed = Instant::now() - obtained;
        let tok = ready_token(&src, &format!("{elapsed:?} after the first token"));
        if refreshed_at.is_none() && ep.calls() == 2 {
            refreshed_at = Some(elapsed);
        }
        if served_new_at.is_none() && tok != "at-1" {
            assert_eq!(tok, "at-2");
            served_new_at = Some(elapsed);
        }
        settle().await;
    }
    // Refresh starts 60..66 s before expiry (buffer 60 s plus up to a tenth
    // of it as jitter); the loopback exchange takes no virtual time.
    let at = refreshed_at.expect("never refreshed");
    assert!(at >= S(534) && at <= S(541), "refreshed at {at:?}");
    assert_eq!(served_new_at, Some(at), "new token served once obtained");
    assert_eq!(ep.calls(), 2);
    assert_eq!(src.status().state, "fresh");
}

#[tokio::test(start_paused = true)]
async fn failing_endpoint_backs_off_and_recovers() {
    let ep = endpoint(600, true).await;
    let src = source(&ep, memory(), RefreshSettings::default());
    assert_eq!(token(&src).await.unwrap(), "at-1");
    let obtained = Instant::now();
    ep.set_failure(Some(Failure::Status(
        503,
        "token service down for maintenance".into(),
    )));
    let before = ep.calls();

    // One simulated hour in 1 s steps, with a request every second.
    for _ in 0..3600 {
        tokio::time::advance(S(1)).await;
        quiesce(&src).await;
        let elapsed = Instant::now() - obtained;
        if elapsed < S(600) {
            // Refresh failing or not: the old token is served until expiry.
            assert_eq!(ready_token(&src, &format!("{elapsed:?}")), "at-1");
        } else {
            let err = token(&src).await.expect_err("no token may be served");
            assert!(
                err.contains("503"),
                "{elapsed:?}: error should explain the failure: {err}"
            );
        }
    }
    let st = src.status();
    assert_eq!(st.state, "failing");
    assert!(st.consecutive_failures >= 10, "{st:?}");
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("503"),
        "{st:?}"
    );
    // The first failure comes at the proactive refresh (~535 s), then
    // 1 s doubling to the 5 min cap, with equal jitter: 18..28 attempts.
    let in_hour = ep.calls() - before;
    assert!((10..=30).contains(&in_hour), "{in_hour} calls in an hour");
    assert_eq!(ep.issued_access_tokens(), ["at-1"]);

    // Recovery: the next attempt (at most 5 min away) succeeds.
    ep.set_failure(None);
    let mut recovered = None;
    for s in 1..=305 {
        tokio::time::advance(S(1)).await;
        quiesce(&src).await;
        if let Ok(t) = token(&src).await {
            recovered = Some((s, t));
            break;
        }
    }
    let (after, tok) = recovered.expect("no token within 5 min of recovery");
    assert!(after <= 301, "recovered only after {after} s");
    assert_eq!(tok, ep.current_access_token());
    let st = src.status();
    assert_eq!(st.state, "fresh", "{st:?}");
    assert_eq!(st.consecutive_failures, 0);
    assert_eq!(st.last_refresh_result, Some("ok"));
}

//! End-to-end tests of the 401 retry (`retry401-layer` as wired by
//! `LatchkeyLayers`) when it does not recover or must not try: the refresh
//! fails (401 `refresh_failed`, stored credential kept, backoff respected),
//! the replay is refused again (`still_unauthorized`, one replay only),
//! statuses configured per route, static credentials (nothing new to send)
//! and retry disabled.
//!
//! Real time throughout (the proxy runs real sockets); tokens live an hour,
//! so nothing expires during a test and every refresh seen is a forced one.
//! The token endpoint, the token-checking upstream and the config helpers are
//! in `support/retry.rs`.

mod support;

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use support::harness::start_proxy;
use support::retry::{
    STATIC_KEY, assert_upstream_rejection, auth_upstream, config, endpoint, retry_header, route,
    static_config, warm_up,
};
use support::{echoed_header, get, json};

#[tokio::test]
async fn refresh_failure_after_401_returns_401_refresh_failed_and_keeps_the_stored_credential() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    // A long first backoff makes "the second request comes before the next
    // attempt is due" hold however slow the machine is (the default 1 s
    // gives 0.5-1 s after jitter).
    let p = start_proxy(&config(
        &ep,
        &format!("file_store: {{ dir: \"{}\" }}", store.display()),
        "    store: file\n    refresh: { backoff_min: 30s }",
        &route("api", "/api/", &up.url(), "api", ""),
    ))
    .await;
    warm_up(&p, &ep, "/api/warm").await;
    let file = store.join("api.json");
    let before = std::fs::read(&file).unwrap();
    assert!(!before.is_empty());

    ep.revoke_access_tokens();
    ep.revoke_refresh_token();
    let (status, headers, body) = get(&p.url("/api/x"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry_header(&headers), Some("refresh_failed"));
    assert_upstream_rejection(&headers, &body);
    assert_eq!(up.hits_under("/api/x").len(), 1, "no replay, no loop");
    assert_eq!(ep.calls(), 2, "one forced refresh attempt");
    assert_eq!(ep.invalid_grants(), 1);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        before,
        "a failed refresh leaves the stored credential untouched"
    );

    // Backing off: the next 401 does not reach the token endpoint.
    let started = Instant::now();
    let (status, headers, body) = get(&p.url("/api/y"), &[]).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry_header(&headers), Some("refresh_failed"));
    assert_upstream_rejection(&headers, &body);
    assert!(
        took < Duration::from_secs(1),
        "answered at once while backing off, took {took:?}"
    );
    assert_eq!(up.hits_under("/api/y").len(), 1);
    assert_eq!(ep.calls(), 2, "no token call while backing off");
    assert_eq!(std::fs::read(&file).unwrap(), before);
    p.stop().await;
}

#[tokio::test]
async fn replay_also_401_is_still_unauthorized_with_one_replay() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let routes = route("api", "/api/", &up.url(), "api", "")
        + &route("deny", "/deny/", &up.url(), "api", "");
    let p = start_proxy(&config(&ep, "", "", &routes)).await;
    let old = warm_up(&p, &ep, "/api/warm").await;

    let (status, headers, body) = get(&p.url("/deny/x"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry_header(&headers), Some("still_unauthorized"));
    assert_upstream_rejection(&headers, &body);
    let hits = up.hits_under("/deny/");
    assert_eq!(hits.len(), 2, "exactly one replay");
    let new = ep.current_access_token();
    assert_eq!(hits[0].token.as_deref(), old.strip_prefix("Bearer "));
    assert_eq!(
        hits[1].token.as_deref(),
        Some(new.as_str()),
        "the replay carried the refreshed token"
    );
    assert_eq!(ep.calls(), 2, "one forced refresh");
    p.stop().await;
}

/// An upstream that rejects every token (wrong audience or scope, its own
/// auth backend down) must not turn each request into a token call: the
/// first 401 forces a refresh, the rejection of that fresh token one more,
/// then forced refreshes are spaced like failures (`backoff_min` doubling),
/// so 20 rejected requests in a row make 2 token calls, and the refused
/// ones say why: `refresh_failed`, no token call and no replay.
#[tokio::test]
async fn an_upstream_that_rejects_every_token_cannot_storm_the_token_endpoint() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let routes = route("api", "/api/", &up.url(), "api", "")
        + &route("deny", "/deny/", &up.url(), "api", "");
    // A long first spacing, so "the next request comes before the next
    // forced refresh is due" holds however slow the machine is.
    let p = start_proxy(&config(
        &ep,
        "",
        "    refresh: { backoff_min: 30s }",
        &routes,
    ))
    .await;
    warm_up(&p, &ep, "/api/warm").await;
    let mut outcomes = Vec::new();
    for i in 0..20 {
        let (status, headers, body) = get(&p.url(&format!("/deny/{i}")), &[]).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_upstream_rejection(&headers, &body);
        outcomes.push(retry_header(&headers).unwrap().to_owned());
    }
    assert_eq!(ep.calls(), 1 + 2, "the warm-up and two forced refreshes");
    assert_eq!(&outcomes[..2], ["still_unauthorized"; 2]);
    assert_eq!(&outcomes[2..], ["refresh_failed"; 18]);
    assert_eq!(
        up.hits_under("/deny/19").len(),
        1,
        "no replay once spaced out"
    );
    p.stop().await;
}

#[tokio::test]
async fn configurable_statuses_403() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::FORBIDDEN).await;
    let routes = route(
        "strict",
        "/strict/",
        &up.url(),
        "api",
        "    retry: { statuses: [401, 403] }",
    ) + &route("plain", "/plain/", &up.url(), "api", "");
    let p = start_proxy(&config(&ep, "", "", &routes)).await;
    warm_up(&p, &ep, "/plain/warm").await;

    // 403 is a retry status on this route: recovered.
    ep.revoke_access_tokens();
    let (status, headers, body) = get(&p.url("/strict/x"), &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert_eq!(retry_header(&headers), Some("recovered"));
    let statuses: Vec<u16> = up.hits_under("/strict/").iter().map(|h| h.status).collect();
    assert_eq!(statuses, [403, 200]);
    assert_eq!(ep.calls(), 2);
    assert_eq!(
        echoed_header(&json(&body), "authorization"),
        Some(format!("Bearer {}", ep.current_access_token()))
    );

    // Default statuses: a 403 is the upstream's answer, passed through.
    ep.revoke_access_tokens();
    let (status, headers, body) = get(&p.url("/plain/x"), &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(retry_header(&headers), None);
    assert_upstream_rejection(&headers, &body);
    assert_eq!(up.hits_under("/plain/x").len(), 1);
    assert_eq!(
        ep.calls(),
        2,
        "no refresh for a status the route does not retry"
    );
    p.stop().await;
}

#[tokio::test]
async fn static_credential_401_passes_through_without_replay() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let yaml = static_config(&route("api", "/api/", &up.url(), "key", ""));
    let p = start_proxy(&yaml).await;
    let (status, headers, body) = get(&p.url("/api/x"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry_header(&headers), None);
    assert_upstream_rejection(&headers, &body);
    let hits = up.hits();
    assert_eq!(hits.len(), 1, "nothing new to send, so no replay");
    assert_eq!(hits[0].token.as_deref(), Some(STATIC_KEY));
    assert_eq!(ep.calls(), 0);
    p.stop().await;
}

#[tokio::test]
async fn retry_disabled() {
    let ep = endpoint().await;
    let up = auth_upstream(ep.clone(), StatusCode::UNAUTHORIZED).await;
    let p = start_proxy(&config(
        &ep,
        "",
        "",
        &route(
            "api",
            "/api/",
            &up.url(),
            "api",
            "    retry: { enabled: false }",
        ),
    ))
    .await;
    warm_up(&p, &ep, "/api/warm").await;
    ep.revoke_access_tokens();
    let (status, headers, body) = get(&p.url("/api/x"), &[]).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(retry_header(&headers), None);
    assert_upstream_rejection(&headers, &body);
    assert_eq!(up.hits_under("/api/x").len(), 1);
    assert_eq!(ep.calls(), 1, "no refresh with retry disabled");
    p.stop().await;
}

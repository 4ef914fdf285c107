//! Secrets stay out of everything the refresh layer emits: logs at every
//! level, errors (`Display` and `Debug`), `Debug` of the source and its
//! status, and the status as JSON, through successes, rotations, endpoint
//! errors that echo what they were sent, `invalid_grant` and a hanging
//! endpoint.
//!
//! The endpoint, the paused-clock conventions and the helpers are described
//! in `common/mod.rs`.

mod common;

use common::token_endpoint::{self, EndpointOptions, Failure};
use common::{
    CLIENT_ID, CLIENT_SECRET, S, capture_logs, cfg, invalidate, memory, opts, quiesce, source_with,
    token,
};
use proxy_core::CredentialSource as _;
use refresh_layer::RefreshSettings;
use serde_json::json;

#[tokio::test(start_paused = true)]
async fn secrets_never_appear_in_logs_errors_debug_or_status() {
    let (logs, _capture) = capture_logs();

    let ep = token_endpoint::start(EndpointOptions {
        initial_refresh_token: "rt-canary-0".to_owned(),
        ..opts(600, true)
    })
    .await;
    // A memory store: with a file store, a regression that ran two refreshes
    // at once would block the second in `flock` on the blocking pool, which
    // stops the paused clock, so the first could never time out: a hang
    // instead of a failure.
    let store = memory();
    let settings = RefreshSettings {
        timeout: S(2),
        backoff_min: S(1),
        backoff_max: S(2),
        ..RefreshSettings::default()
    };
    let src = source_with(&cfg(&ep, "rt-canary-0"), store, settings);
    let mut texts: Vec<String> = Vec::new();

    // Success, then rotations: manual, forced, and scheduled.
    assert_eq!(token(&src).await.unwrap(), "at-1");
    let st = src.refresh_now().await.unwrap();
    texts.push(format!("{st:?}"));
    invalidate(&src, st.generation).await.unwrap();
    tokio::time::sleep(S(541)).await;
    quiesce(&src).await;
    assert_eq!(src.status().generation, 4);
    assert_eq!(ep.calls(), 4);

    // An endpoint that echoes what it was sent into its error and description.
    let sent_rt = ep.current_refresh_token().unwrap();
    ep.set_failure(Some(Failure::Status(
        400,
        json!({
            "error": format!("invalid_request:{sent_rt}"),
            "error_description": format!(
                "bad request: client_secret={CLIENT_SECRET} refresh_token={sent_rt}"
            ),
        })
        .to_string(),
    )));
    let err = invalidate(&src, 4).await.expect_err("the endpoint refuses");
    assert!(err.contains("invalid_request"), "{err}");
    texts.push(err);
    tokio::time::sleep(S(3)).await;

    // invalid_grant.
    ep.set_failure(None);
    ep.revoke_refresh_token();
    let err = src.refresh_now().await.expect_err("revoked");
    assert_eq!(err.oauth_error(), Some("invalid_grant"));
    texts.push(err.to_string());
    texts.push(format!("{err:?}"));
    let err = invalidate(&src, 4).await.expect_err("backing off");
    texts.push(err);
    tokio::time::sleep(S(3)).await;

    // A hanging endpoint: waiters give up after the refresh timeout, the
    // exchange itself after its own.
    ep.set_refresh_token(&sent_rt);
    ep.set_failure(Some(Failure::Hang));
    let hung = src.invalidate(4);
    let waiting = src.get();
    let err = tokio::time::timeout(S(60), hung)
        .await
        .unwrap()
        .expect_err("hung");
    assert!(err.reason.contains("did not finish"), "{}", err.reason);
    texts.push(err.reason.clone());
    texts.push(format!("{err:?}"));
    let err = tokio::time::timeout(S(60), waiting)
        .await
        .unwrap()
        .expect_err("hung");
    texts.push(format!("{err} {err:?}"));
    tokio::time::sleep(S(11)).await;
    quiesce(&src).await;
    let st = src.status();
    assert!(
        st.last_error.as_deref().unwrap_or("").contains("timed out"),
        "{st:?}"
    );
    texts.push(format!("{st:?}"));
    texts.push(serde_json::to_string(&st).unwrap());
    texts.push(format!("{src:?}"));
    if let Err(e) = token(&src).await {
        texts.push(e);
    }

    let log = logs.text();
    assert!(log.contains("credential refreshed"), "{log}");
    assert!(log.contains("credential refresh failed"), "{log}");
    texts.push(log);

    use base64::Engine as _;
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let mut secrets = vec![CLIENT_SECRET.to_owned(), "rt-canary".to_owned(), basic];
    let issued = ep.issued_access_tokens();
    assert_eq!(issued.len(), 4);
    secrets.extend(issued);
    // Refresh tokens the endpoint issued by rotation (rt-N, N = call number).
    secrets.extend((1..=ep.calls()).map(|n| format!("rt-{n}")));
    for text in &texts {
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{secret:?} leaked into: {text}"
            );
        }
    }
}

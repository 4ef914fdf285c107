//! `latchkey_config_reloads_total` from startup, and the credential
//! timestamp gauges across reloads
//! (`latchkey_credential_expiration_timestamp_seconds`,
//! `latchkey_credential_last_refresh_success_timestamp_seconds`): a
//! credential that stops refreshing under its id (removed, or rebuilt as a
//! static one) loses them, so the dashboard stops counting down a token
//! nobody holds and the expiry alert cannot page for a working credential;
//! a refreshing credential rebuilt by a reload keeps them; a replaced or
//! removed source (kept alive by requests of the old config in flight)
//! refreshes no more, so it cannot set them.
//!
//! Its own test binary: the metrics recorder is per process.

#![expect(clippy::expect_used, reason = "test helpers outside #[test] fns")]

mod support;

use support::gauges::{gauge, is_set, oauth, reloads};
use support::{echo_upstream, get};

const TOKEN: &str = "gauge-client-token";

fn yaml(upstream: &str, a: &str, b: &str) -> String {
    support::gauges::yaml(TOKEN, upstream, a, b)
}

#[tokio::test]
async fn credentials_that_stop_refreshing_lose_their_timestamps_rebuilt_ones_keep_them() {
    let up = echo_upstream().await;
    let ep = support::gauges::endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    std::fs::write(&path, yaml(&up.url(), &oauth(&ep, "r1"), &oauth(&ep, "r1"))).expect("write");
    let running = support::gauges::start(&path).await;
    // Both results exist before any reload, at 0 (`increase()` cannot see
    // a series' first sample).
    for result in ["ok", "error"] {
        assert_eq!(reloads(result).as_deref(), Some("0"), "{result}");
    }
    let base = format!("http://{}", running.proxy_addr);
    let auth = format!("Bearer {TOKEN}");
    for route in ["a", "b"] {
        let (status, _, _) = get(&format!("{base}/{route}/x"), &[("authorization", &auth)]).await;
        assert_eq!(status.as_u16(), 200);
    }
    let names = [
        audit::metrics::EXPIRATION_TIMESTAMP,
        audit::metrics::LAST_REFRESH_SUCCESS,
    ];
    for name in names {
        for id in ["gauge-a", "gauge-b"] {
            assert!(is_set(gauge(name, id).as_deref()), "{name} {id}");
        }
    }

    // `gauge-a` becomes a static key; `gauge-b` is rebuilt (a new scope):
    // its gauges stay set (the new source's first token sets them anew).
    std::fs::write(
        &path,
        yaml(
            &up.url(),
            "    static: { value: a-static-key }",
            &oauth(&ep, "r2"),
        ),
    )
    .expect("rewrite");
    let outcome = running.reload().await.expect("reload");
    assert_eq!(outcome.credentials_new, ["gauge-a", "gauge-b"]);
    let (status, _, _) = get(&format!("{base}/a/x"), &[("authorization", &auth)]).await;
    assert_eq!(status.as_u16(), 200);
    for name in names {
        assert_eq!(
            gauge(name, "gauge-a").as_deref(),
            Some("NaN"),
            "{name}: a static key has no token expiry"
        );
        assert!(is_set(gauge(name, "gauge-b").as_deref()), "{name} gauge-b");
    }

    // Removed outright: NaN too.
    std::fs::write(
        &path,
        yaml(&up.url(), "    static: { value: a-static-key }", ""),
    )
    .expect("rewrite");
    let outcome = running.reload().await.expect("reload");
    assert_eq!(outcome.credentials_removed, ["gauge-b"]);
    for name in names {
        assert_eq!(gauge(name, "gauge-b").as_deref(), Some("NaN"), "{name}");
    }
    running.shutdown().await;

    // One test, so that no other reload in this process moves the counts.
    a_removed_source_that_still_refreshes_leaves_its_gauges_nan().await;
    assert_eq!(reloads("ok").as_deref(), Some("3"));
    assert_eq!(reloads("error").as_deref(), Some("0"));
}

/// A source a reload removed lives on while requests of the old config
/// are in flight (here: the test holds the old proxy, as a WebSocket
/// tunnel would), and may still refresh. Its refreshes no longer set the
/// removed credential's gauges, which stay NaN: an expiry alert cannot
/// page for a credential that is gone. (Run by the test above.)
async fn a_removed_source_that_still_refreshes_leaves_its_gauges_nan() {
    let up = echo_upstream().await;
    let ep = support::gauges::endpoint().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("latchkey.yaml");
    // `gauge-c` is what this test watches; `gauge-a` stays.
    let with_c = yaml(&up.url(), "    static: { value: a-key }", &oauth(&ep, "r1"))
        .replace("gauge-b", "gauge-c");
    std::fs::write(&path, &with_c).expect("write");
    let running = support::gauges::start(&path).await;
    let old = running.proxy();
    let source = old
        .credentials
        .iter()
        .find(|c| c.id() == "gauge-c")
        .expect("gauge-c")
        .clone();
    source.refresh_now().await.expect("first token");
    assert!(is_set(
        gauge(audit::metrics::EXPIRATION_TIMESTAMP, "gauge-c").as_deref()
    ));

    std::fs::write(&path, yaml(&up.url(), "    static: { value: a-key }", "")).expect("rewrite");
    let outcome = running.reload().await.expect("reload");
    assert_eq!(outcome.credentials_removed, ["gauge-c"]);
    // Retired, the old source refreshes no more (its successor, if any,
    // does): nothing is fetched, and nothing sets the gauges.
    let calls = ep.calls();
    let refused = source.refresh_now().await.expect_err("retired");
    assert!(
        refused.reason.contains("replaced by a reload"),
        "{refused:?}"
    );
    assert_eq!(ep.calls(), calls, "no token call");
    for name in [
        audit::metrics::EXPIRATION_TIMESTAMP,
        audit::metrics::LAST_REFRESH_SUCCESS,
    ] {
        assert_eq!(gauge(name, "gauge-c").as_deref(), Some("NaN"), "{name}");
    }
    drop(old);
    running.shutdown().await;
}

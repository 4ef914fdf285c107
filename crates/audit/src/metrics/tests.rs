use super::*;
use crate::record::{RequestMeta, RequestRecord};
use crate::sink::MemorySink;
use http::{Request, StatusCode};
use proxy_core::facts::{CredentialFact, CredentialOutcome, RequestFacts};

/// The value of the series `name{labels...}` (labels in any order, all
/// must match, no others) in Prometheus text.
pub(crate) fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, "}"));
        if n != name {
            return None;
        }
        let mut got: Vec<(&str, &str)> = rest
            .trim_end_matches('}')
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let mut want = labels.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        (got == want).then(|| value.parse().ok()).flatten()
    })
}

#[test]
fn install_is_idempotent_and_describes_everything() {
    let a = install();
    let b = install();
    // Both handles render the one recorder. (Not `a.render() ==
    // b.render()`: tests running in parallel count between the renders.)
    metrics::counter!("latchkey_unit_idempotence_total").increment(1);
    for text in [a.render(), b.render()] {
        assert_eq!(
            sample(&text, "latchkey_unit_idempotence_total", &[]),
            Some(1.0)
        );
        assert_eq!(
            sample(&text, BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))]),
            Some(1.0)
        );
    }
    assert!(handle().is_some());
}

#[test]
fn requests_upstreams_and_retries_are_counted_with_closed_labels() {
    let handle = install();
    let facts = RequestFacts {
        route: Some(Arc::from("unit-route-a")),
        route_credential: Some(Arc::from("unit-cred-a")),
        credential: Some(CredentialFact {
            id: Arc::from("unit-cred-a"),
            generation: Some(2),
            outcome: CredentialOutcome::Injected,
            obtained_at: None,
            expires_at: None,
        }),
        upstream_status: Some(401),
        upstream_resent: true,
        retry: Some("still_unauthorized"),
        ..RequestFacts::default()
    };
    let req = Request::get("/x").body(()).unwrap();
    let meta = RequestMeta::from_request(&req);
    let now = SystemTime::now();
    for _ in 0..2 {
        let r = RequestRecord::from_parts(
            &meta,
            &facts,
            StatusCode::UNAUTHORIZED,
            None,
            Duration::from_millis(3),
            false,
            now,
        );
        record_request(&facts, &r, Duration::from_millis(3));
    }
    let none = RequestFacts::default();
    let r = RequestRecord::from_parts(
        &meta,
        &none,
        StatusCode::NOT_FOUND,
        Some(proxy_core::error::ErrorCode::NoRoute),
        Duration::from_millis(1),
        false,
        now,
    );
    record_request(&none, &r, Duration::from_millis(1));
    let text = handle.render();
    let r = ("route", "unit-route-a");
    assert_eq!(
        sample(
            &text,
            REQUESTS_TOTAL,
            &[r, ("status_class", "4xx"), ("reason", "upstream_denied")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            UPSTREAM_RESPONSES_TOTAL,
            &[r, ("credential", "unit-cred-a"), ("status", "401")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            RETRY401_TOTAL,
            &[r, ("outcome", "still_unauthorized")]
        ),
        Some(2.0)
    );
    assert_eq!(sample(&text, UPSTREAM_RESENDS_TOTAL, &[r]), Some(2.0));
    assert_eq!(
        sample(
            &text,
            &format!("{REQUEST_DURATION}_count"),
            &[("route", "unit-route-a")]
        ),
        Some(2.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("{REQUEST_DURATION}_bucket"),
            &[("route", "unit-route-a"), ("le", "0.005")]
        ),
        Some(2.0)
    );
    assert!(
        sample(
            &text,
            REQUESTS_TOTAL,
            &[
                ("route", "none"),
                ("status_class", "4xx"),
                ("reason", "no_route")
            ]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(text.contains(&format!("# TYPE {REQUEST_DURATION} histogram")));
    assert!(text.contains(&format!("# HELP {REQUESTS_TOTAL} Requests by route")));
}

#[test]
fn the_observer_writes_records_counts_refreshes_and_sets_gauges() {
    let handle = install();
    let sink = Arc::new(MemorySink::new());
    let obs = AuditObserver::new(Some(sink.clone()), true);
    let exp = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
    let ok = RefreshEvent {
        credential: Arc::from("unit-cred-obs"),
        trigger: "proactive",
        ok: true,
        adopted: false,
        duration: Duration::from_millis(20),
        error: None,
        oauth_error: None,
        generation: 2,
        expires_at: Some(exp),
        retired: false,
    };
    obs.on_refresh(&ok);
    obs.on_refresh(&RefreshEvent {
        ok: false,
        trigger: "expired",
        error: Some("refused".into()),
        oauth_error: Some("invalid_grant".into()),
        ..ok.clone()
    });
    let recs = sink.refreshes();
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[1]["error_code"], "invalid_grant");
    let text = handle.render();
    let c = ("credential", "unit-cred-obs");
    assert_eq!(
        sample(
            &text,
            REFRESHES_TOTAL,
            &[c, ("trigger", "proactive"), ("result", "ok")]
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &text,
            REFRESHES_TOTAL,
            &[c, ("trigger", "expired"), ("result", "error")]
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, EXPIRATION_TIMESTAMP, &[c]), Some(2e9));
    assert!(sample(&text, LAST_REFRESH_SUCCESS, &[c]).is_some_and(|t| t > 1.7e9));
    assert_eq!(
        sample(&text, &format!("{REFRESH_DURATION}_count"), &[c]),
        Some(2.0)
    );
    // A token without an expiry: the expiry gauge says nothing (NaN), not
    // the last token's expiry, which an alert would take for a credential
    // about to expire for ever.
    obs.on_refresh(&RefreshEvent {
        expires_at: None,
        retired: false,
        ..ok.clone()
    });
    let text = handle.render();
    assert!(sample(&text, EXPIRATION_TIMESTAMP, &[c]).is_some_and(f64::is_nan));
    // A newer token adopted from a shared store, outside a refresh: the
    // expiry follows it; no refresh is counted and no record written.
    let later = SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_003_600);
    obs.on_adopted("unit-cred-obs", Some(later));
    let text = handle.render();
    assert_eq!(
        sample(&text, EXPIRATION_TIMESTAMP, &[c]),
        Some(2_000_003_600.0)
    );
    assert_eq!(
        sample(
            &text,
            REFRESHES_TOTAL,
            &[c, ("trigger", "proactive"), ("result", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(sink.refreshes().len(), 3);
    // A credential a reload removed: both timestamps NaN.
    forget_credential("unit-cred-obs");
    let text = handle.render();
    assert!(sample(&text, EXPIRATION_TIMESTAMP, &[c]).is_some_and(f64::is_nan));
    assert!(sample(&text, LAST_REFRESH_SUCCESS, &[c]).is_some_and(f64::is_nan));
}

#[test]
fn reloads_are_counted() {
    let handle = install();
    let before = sample(
        &handle.render(),
        CONFIG_RELOADS_TOTAL,
        &[("result", "error")],
    );
    record_config_reload(false);
    let after = sample(
        &handle.render(),
        CONFIG_RELOADS_TOTAL,
        &[("result", "error")],
    );
    assert_eq!(after, Some(before.unwrap_or(0.0) + 1.0));
}

/// Handles are cached per route id `Arc` (by address): a reload that
/// builds a new `Arc` with the same text counts into the same series, one
/// route's statuses and credentials never mix, and neither does another
/// route whose id was dropped and whose address could be reused.
#[test]
fn cached_handles_follow_labels_not_addresses() {
    let handle = install();
    let req = Request::get("/x").body(()).unwrap();
    let meta = RequestMeta::from_request(&req);
    let count = |route: &Arc<str>, cred: Option<&str>, status: u16, n: usize| {
        let facts = RequestFacts {
            route: Some(route.clone()),
            route_credential: cred.map(Arc::from),
            upstream_status: Some(status),
            ..RequestFacts::default()
        };
        for _ in 0..n {
            let r = RequestRecord::from_parts(
                &meta,
                &facts,
                StatusCode::from_u16(status).unwrap(),
                None,
                Duration::from_millis(1),
                false,
                SystemTime::now(),
            );
            record_request(&facts, &r, Duration::from_millis(1));
        }
    };
    let before_reload: Arc<str> = Arc::from("unit-cache-route");
    count(&before_reload, Some("unit-cache-cred"), 200, 3);
    count(&before_reload, Some("unit-cache-cred"), 503, 1);
    count(&before_reload, None, 200, 2);
    // Dropped by a reload; a new id may land at the same address.
    drop(before_reload);
    let after_reload: Arc<str> = Arc::from("unit-cache-route");
    count(&after_reload, Some("unit-cache-cred"), 200, 4);
    let other: Arc<str> = Arc::from("unit-cache-other");
    count(&other, Some("unit-cache-cred"), 200, 5);

    let text = handle.render();
    let upstream = |route: &str, cred: &str, status: &str| {
        sample(
            &text,
            UPSTREAM_RESPONSES_TOTAL,
            &[("route", route), ("credential", cred), ("status", status)],
        )
    };
    assert_eq!(
        upstream("unit-cache-route", "unit-cache-cred", "200"),
        Some(7.0)
    );
    assert_eq!(
        upstream("unit-cache-route", "unit-cache-cred", "503"),
        Some(1.0)
    );
    assert_eq!(upstream("unit-cache-route", "none", "200"), Some(2.0));
    assert_eq!(
        upstream("unit-cache-other", "unit-cache-cred", "200"),
        Some(5.0)
    );
    let requests = |route: &str, class: &str, reason: &str| {
        sample(
            &text,
            REQUESTS_TOTAL,
            &[
                ("route", route),
                ("status_class", class),
                ("reason", reason),
            ],
        )
    };
    assert_eq!(requests("unit-cache-route", "2xx", "none"), Some(9.0));
    assert_eq!(
        requests("unit-cache-route", "5xx", "upstream_error"),
        Some(1.0)
    );
    assert_eq!(requests("unit-cache-other", "2xx", "none"), Some(5.0));
}

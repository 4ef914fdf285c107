//! Triage over generated logs: counts, rates, times, findings, filters and
//! the JSON shape. Builders are in `tests/fixtures.rs`; the text report,
//! `run` and the rarer failure kinds in `tests/cli.rs`.

mod cli;
mod edges;
mod fixtures;

use std::time::Duration;

use serde_json::json;

use super::*;
use fixtures::*;

#[test]
fn counts_rates_and_first_last_times() {
    let r = run_triage(&log(&scenario()), &opts());
    let totals = &r.totals;
    assert_eq!(
        (
            totals.lines,
            totals.records,
            totals.request_records,
            totals.refresh_records
        ),
        (25, 17, 13, 4)
    );
    assert_eq!((totals.skipped_lines, totals.filtered_out), (8, 0));
    assert_eq!(totals.first_ts.as_deref(), Some("2026-11-23T10:00:00.000Z"));
    assert_eq!(totals.last_ts.as_deref(), Some("2026-11-23T11:11:00.000Z"));

    let codes: Vec<(u16, u64)> = r.status_codes.iter().map(|(k, v)| (*k, *v)).collect();
    assert_eq!(
        codes,
        [(200, 4), (401, 2), (403, 3), (404, 1), (502, 1), (503, 2)]
    );

    let denied = &r.reasons["upstream_denied"];
    assert_eq!(denied.count, 4);
    assert_eq!(denied.first_seen, "2026-11-23T10:05:00.000Z");
    assert_eq!(denied.last_seen, "2026-11-23T11:01:00.000Z");
    let unavailable = &r.reasons["credential_unavailable"];
    assert_eq!(
        (
            unavailable.count,
            unavailable.first_seen.as_str(),
            unavailable.last_seen.as_str()
        ),
        (2, "2026-11-23T10:45:00.000Z", "2026-11-23T10:50:00.000Z")
    );
    let reasons: Vec<&str> = r.reasons.keys().map(String::as_str).collect();
    assert_eq!(
        reasons,
        [
            "client_unauthenticated",
            "credential_unavailable",
            "no_route",
            "upstream_denied",
            "upstream_unreachable"
        ]
    );

    let pay = &r.routes["payments"];
    assert_eq!(
        (pay.requests, pay.status_401, pay.status_403, pay.status_5xx),
        (6, 0, 3, 0)
    );
    assert_eq!((pay.rate_401, pay.rate_403, pay.rate_5xx), (0.0, 0.5, 0.0));
    let search = &r.routes["search"];
    assert_eq!(
        (search.requests, search.status_401, search.status_5xx),
        (3, 1, 1)
    );
    assert_eq!((search.rate_401, search.rate_5xx), (0.3333, 0.3333));
    assert_eq!(r.routes["crm"].rate_5xx, 1.0);
    assert_eq!(r.routes["(unrouted)"].requests, 2);

    let crm = &r.credentials["crm-oauth"];
    assert_eq!((crm.traffic.requests, crm.traffic.status_5xx), (2, 2));
    let h = &crm.refresh;
    assert_eq!(
        (h.attempts, h.successes, h.failures, h.success_rate),
        (4, 1, 3, Some(0.25))
    );
    assert_eq!(h.last_success.as_deref(), Some("2026-11-23T10:30:00.000Z"));
    assert_eq!(h.failing_since.as_deref(), Some("2026-11-23T10:42:00.000Z"));
    assert_eq!(h.consecutive_failures, 3);
    let err = h.last_error.as_ref().unwrap();
    assert_eq!(err.at, "2026-11-23T10:52:00.000Z");
    assert_eq!(err.error_code.as_deref(), Some("invalid_grant"));
    assert_eq!(
        err.message.as_deref(),
        Some("token endpoint said invalid_grant")
    );
    assert_eq!(r.credentials["payments-key"].refresh.attempts, 0);
    assert_eq!(r.retry401.get("recovered"), Some(&1));
}

#[test]
fn findings_explain_each_scenario() {
    let r = run_triage(&log(&scenario()), &opts());
    let kinds: Vec<FindingKind> = r.findings.iter().map(|f| f.kind).collect();
    use FindingKind as K;
    assert_eq!(
        kinds,
        [
            K::Summary,
            K::RefreshFailing,
            K::CredentialUnavailable,
            K::UpstreamDeniedFreshToken,
            K::ExpiredTokenSent,
            K::UpstreamUnreachable,
            K::NoRoute,
            K::RetryRecovered,
            K::ClientUnauthenticated,
            K::SkippedLines,
        ]
    );
    let summary = &r.findings[0];
    assert_eq!(summary.severity, Severity::Critical);
    assert!(
        summary.message.starts_with(
            "failures are both upstream denials and local credential failures, mostly upstream \
             denials (4 vs 2). 9 of 13 requests failed: 4 upstream denials"
        ),
        "{}",
        summary.message
    );
    let fresh = find(&r, K::UpstreamDeniedFreshToken);
    assert_eq!(
        (fresh.severity, fresh.subject.as_str()),
        (Severity::Warning, "route payments")
    );
    assert_eq!(
        fresh.message,
        "route payments: 3 x 403 upstream_denied with fresh tokens (median age 30 s): the \
         upstream refuses this credential (check its permissions), not an expiry"
    );
    let failing = find(&r, K::RefreshFailing);
    assert_eq!(failing.subject, "credential crm-oauth");
    assert_eq!(
        failing.message,
        "credential crm-oauth: refresh failing since 10:42 UTC with invalid_grant: log in again \
         and store the new refresh token (3 failed attempts in a row; `latchkey ctl \
         credentials` shows its state)"
    );
    assert_eq!(
        find(&r, K::CredentialUnavailable).message,
        "credential crm-oauth unavailable for 2 requests: latchkey could not obtain a token \
         (see refresh errors)"
    );
    let expired = &find(&r, K::ExpiredTokenSent).message;
    assert!(expired.starts_with("credential search-token: 1 x 401 for tokens sent expired"));
    assert!(
        expired.contains("(lowest ttl -2 s): tokens were sent expired: refresh is not keeping up")
    );
    assert_eq!(
        find(&r, K::RetryRecovered).message,
        "credential search-token: 1 revoked token was recovered by a refresh and replay"
    );
    assert!(
        find(&r, K::UpstreamUnreachable)
            .message
            .starts_with("route search: 1 request could not reach the upstream (at 11:02 UTC)")
    );
    assert!(
        find(&r, K::NoRoute)
            .message
            .contains("hosts: nowhere.example (1)")
    );
    let unauth = find(&r, K::ClientUnauthenticated);
    assert_eq!(unauth.severity, Severity::Info);
    assert!(unauth.message.contains("(peak 1/min at 11:11 UTC)"));
    assert_eq!(
        find(&r, K::SkippedLines).message,
        "log: 8 lines were not audit records and were skipped"
    );
}

#[test]
fn summary_tells_upstream_denials_from_local_failures() {
    let up = [denied("10:00:00", "payments", "key", 403, 30, 3000)];
    let r = run_triage(&log(&up[..]), &opts());
    assert!(r.findings[0].message.starts_with(
        "failures are upstream denials, not local credential failures: latchkey sent a \
         credential and the upstream refused it."
    ));
    // A retry status other than 401/403 (here 400) whose forced refresh
    // failed: still the upstream refusing what was sent.
    let retried = set(
        set(
            denied("10:00:00", "payments", "key", 400, 30, 3000),
            "/reason",
            json!("refresh_failed"),
        ),
        "/retry401",
        json!({"attempted": true, "outcome": "refresh_failed"}),
    );
    let r = run_triage(&log(&[retried][..]), &opts());
    assert!(
        r.findings[0]
            .message
            .starts_with("failures are upstream denials, not local credential failures"),
        "{:?}",
        r.findings[0]
    );
    let local = [unavailable("10:00:00", "crm", "crm-oauth")];
    let r = run_triage(&log(&local[..]), &opts());
    assert!(r.findings[0].message.starts_with(
        "failures are local credential failures, not upstream denials: latchkey could not \
         obtain a credential"
    ));
    let fine = [ok("10:00:00", Some("payments"), Some("key"))];
    let r = run_triage(fine[0].to_string().as_bytes(), &opts());
    assert_eq!(r.findings.len(), 1);
    assert_eq!(r.findings[0].message, "no failed requests among 1 request.");
    assert_eq!(r.findings[0].severity, Severity::Info);
}

#[test]
fn since_keeps_only_recent_records() {
    let mut records = scenario();
    records.push(ok("04:00:00", Some("payments"), Some("payments-key")));
    records.push(refresh("05:59:59", "crm-oauth", Some("invalid_grant")));
    let input = log(&records);
    let all = run_triage(&input, &opts());
    assert_eq!(
        (all.totals.request_records, all.totals.refresh_records),
        (14, 5)
    );
    assert_eq!(
        all.totals.first_ts.as_deref(),
        Some("2026-11-23T04:00:00.000Z")
    );

    let recent = TriageOptions {
        since: Some(parse_since("6h").unwrap()),
        ..opts()
    };
    let r = run_triage(&input, &recent);
    assert_eq!(
        r.window.not_before.as_deref(),
        Some("2026-11-23T06:00:00.000Z")
    );
    assert_eq!(
        (r.totals.request_records, r.totals.refresh_records),
        (13, 4)
    );
    assert_eq!((r.totals.records, r.totals.filtered_out), (19, 2));
    assert_eq!(
        r.totals.first_ts.as_deref(),
        Some("2026-11-23T10:00:00.000Z")
    );
    assert_eq!(r.credentials["crm-oauth"].refresh.attempts, 4);

    let short = TriageOptions {
        since: Some(Duration::from_secs(3600)),
        ..opts()
    };
    let r = run_triage(&input, &short);
    assert_eq!((r.totals.request_records, r.totals.refresh_records), (5, 0));
}

#[test]
fn route_and_credential_filters() {
    let input = log(&scenario());
    let by_route = TriageOptions {
        route: Some("payments".to_owned()),
        ..opts()
    };
    let r = run_triage(&input, &by_route);
    // Refresh records have no route: those of the credentials the route's
    // requests used are kept (here none: payments-key is static), not the
    // 4 of crm-oauth, which would bring an unrelated credential's failures.
    assert_eq!((r.totals.request_records, r.totals.refresh_records), (6, 0));
    assert_eq!(r.totals.filtered_out, 11);
    // The time range is the kept records' (crm-oauth's refreshes from
    // 10:30 on are not).
    assert_eq!(
        r.totals.first_ts.as_deref(),
        Some("2026-11-23T10:00:00.000Z")
    );
    assert_eq!(
        r.totals.last_ts.as_deref(),
        Some("2026-11-23T10:07:00.000Z")
    );
    assert!(r.credentials.keys().all(|c| c == "payments-key"));
    assert_eq!(r.routes.keys().collect::<Vec<_>>(), ["payments"]);
    assert!(
        r.findings[0]
            .message
            .starts_with("failures are upstream denials")
    );

    let by_cred = TriageOptions {
        credential: Some("crm-oauth".to_owned()),
        ..opts()
    };
    let r = run_triage(&input, &by_cred);
    assert_eq!((r.totals.request_records, r.totals.refresh_records), (2, 4));
    assert_eq!(r.credentials.keys().collect::<Vec<_>>(), ["crm-oauth"]);
    assert_eq!(r.window.credential.as_deref(), Some("crm-oauth"));
    assert!(
        r.findings[0]
            .message
            .starts_with("failures are local credential failures")
    );

    let other = TriageOptions {
        credential: Some("payments-key".to_owned()),
        ..opts()
    };
    let r = run_triage(&input, &other);
    assert_eq!((r.totals.request_records, r.totals.refresh_records), (6, 0));
}

#[test]
fn json_output_is_stable() {
    let input = format!(
        "{}\nnot json\n{}\n",
        set(
            ok("10:00:00", Some("payments"), Some("pay-key")),
            "/ts",
            json!(t("10:00:00.25"))
        ),
        refresh("10:01:00", "crm", None),
    );
    let report = run_triage(input.as_bytes(), &opts());
    let zero = json!({"requests": 0, "status_401": 0, "status_403": 0, "status_5xx": 0,
                      "rate_401": 0.0, "rate_403": 0.0, "rate_5xx": 0.0});
    let one = set(zero.clone(), "/requests", json!(1));
    let expected = json!({
        "window": {"not_before": null, "route": null, "credential": null},
        "totals": {"lines": 3, "records": 2, "request_records": 1, "refresh_records": 1,
                   "skipped_lines": 1, "filtered_out": 0,
                   "first_ts": "2026-11-23T10:00:00.250Z", "last_ts": "2026-11-23T10:01:00.000Z"},
        "status_codes": {"200": 1},
        "reasons": {},
        "routes": {"payments": one},
        "credentials": {
            "crm": {"traffic": zero, "refresh": {
                "attempts": 1, "successes": 1, "failures": 0, "success_rate": 1.0,
                "last_success": "2026-11-23T10:01:00.000Z", "last_error": null,
                "failing_since": null, "consecutive_failures": 0}},
            "pay-key": {"traffic": one, "refresh": {
                "attempts": 0, "successes": 0, "failures": 0, "success_rate": null,
                "last_success": null, "last_error": null,
                "failing_since": null, "consecutive_failures": 0}}
        },
        "retry401": {},
        "findings": [
            {"severity": "info", "kind": "summary", "subject": "overall",
             "message": "no failed requests among 1 request."},
            {"severity": "info", "kind": "skipped_lines", "subject": "log",
             "message": "log: 1 line was not an audit record and was skipped"}
        ]
    });
    assert_eq!(serde_json::to_value(&report).unwrap(), expected);
    let again = run_triage(input.as_bytes(), &opts());
    assert_eq!(
        serde_json::to_string(&report).unwrap(),
        serde_json::to_string(&again).unwrap()
    );
}

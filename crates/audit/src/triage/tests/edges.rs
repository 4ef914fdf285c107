//! Cases a review found misleading: denials near expiry, 403s for expired
//! tokens, 401s the caller got from latchkey, nothing analysed, a huge
//! `--since`, load shedding.

use super::fixtures::*;
use super::*;

/// Every denial is reported: a 401 for a token with 5 to 30 s left is a
/// token sent (nearly) expired, a 403 whatever the token's age is about
/// permissions, and says the tokens were at or past expiry.
#[test]
fn every_denial_is_reported_with_the_tokens_state() {
    let mut records = Vec::new();
    for s in 0..3 {
        records.push(denied(
            &format!("10:00:0{s}"),
            "crm",
            "crm-oauth",
            401,
            3580,
            20,
        ));
        records.push(denied(
            &format!("10:01:0{s}"),
            "crm",
            "crm-oauth",
            403,
            3650,
            -50,
        ));
    }
    let r = run_triage(&log(&records), &opts());
    let expired = find(&r, FindingKind::ExpiredTokenSent);
    assert!(
        expired
            .message
            .starts_with("credential crm-oauth: 3 x 401 for tokens sent expired or about to expire (lowest ttl 20 s)"),
        "{}",
        expired.message
    );
    let denial = find(&r, FindingKind::UpstreamDeniedFreshToken);
    assert!(
        denial
            .message
            .starts_with("route crm: 3 x 403 upstream_denied with tokens at or past expiry"),
        "{}",
        denial.message
    );
}

/// A 401 or 403 latchkey gave the caller (no proxy token) does not count
/// against the route's credential; the upstream's do.
#[test]
fn credential_rates_count_only_the_upstreams_answers() {
    let mut records = vec![denied("10:00:00", "crm", "crm-oauth", 401, 10, 3000)];
    let mut local = rejected("10:00:01", Some("crm"), 401, "client_unauthenticated", "h");
    local = set(local, "/credential/id", json!("crm-oauth"));
    records.push(local);
    let r = run_triage(&log(&records), &opts());
    let crm = &r.credentials["crm-oauth"].traffic;
    assert_eq!((crm.requests, crm.status_401), (2, 1));
    assert_eq!(
        r.routes["crm"].status_401, 2,
        "the route still shows what callers got"
    );
}

/// Nothing analysed is said plainly, with why, not "no failed requests".
#[test]
fn nothing_analysed_says_so() {
    let records = vec![ok("04:00:00", Some("crm"), Some("crm-oauth"))];
    let recent = TriageOptions {
        since: Some(std::time::Duration::from_secs(3600)),
        ..opts()
    };
    // `log` puts one junk line first; a truncated record makes another.
    let mut input = log(&records);
    input.extend_from_slice(b"{\"kind\":\"request\",\"ts\":\n");
    let r = run_triage(&input, &recent);
    let summary = &r.findings[0].message;
    assert!(
        summary.starts_with(
            "no request records were analysed: 2 lines skipped as not audit records, 1 record \
             left out by --since"
        ),
        "{summary}"
    );
}

/// `kubectl logs --timestamps` puts a timestamp before each record: the
/// record is still read.
#[test]
fn a_prefix_before_the_record_is_skipped() {
    let record = ok("10:00:00", Some("crm"), Some("crm-oauth"));
    let input = format!("2026-11-23T10:00:00.123456789Z {record}\n");
    let r = run_triage(input.as_bytes(), &opts());
    assert_eq!((r.totals.request_records, r.totals.skipped_lines), (1, 0));
}

/// `--since` longer than the time since 1970 keeps everything, rather than
/// panicking while printing the window.
#[test]
fn a_huge_since_keeps_everything() {
    let records = vec![ok("10:00:00", Some("crm"), Some("crm-oauth"))];
    let all = TriageOptions {
        since: Some(parse_since("100years").unwrap()),
        ..opts()
    };
    let r = run_triage(&log(&records), &all);
    assert_eq!(r.totals.request_records, 1);
    assert_eq!(
        r.window.not_before.as_deref(),
        Some("1970-01-01T00:00:00.000Z")
    );
}

/// Load shedding is named for what it is, with what to do.
#[test]
fn overloaded_is_load_shedding_not_a_bug() {
    let mut shed = rejected("10:00:00", Some("crm"), 503, "overloaded", "h");
    shed = set(shed, "/audit/action", json!("error"));
    let r = run_triage(&log(&[shed]), &opts());
    let f = find(&r, FindingKind::InternalError);
    assert!(
        f.message.contains("shed as overloaded") && f.message.contains("max_concurrent_requests"),
        "{}",
        f.message
    );
}

/// Requests cut by a stop are named for what happened, with what to do.
#[test]
fn shutdown_cuts_say_to_raise_the_drain_timeout() {
    let mut cut = rejected("10:00:00", Some("crm"), 503, "shutdown", "h");
    cut = set(cut, "/audit/action", json!("error"));
    let r = run_triage(&log(&[cut]), &opts());
    let f = find(&r, FindingKind::InternalError);
    assert!(
        f.message.contains("cut when latchkey stopped") && f.message.contains("drain_timeout"),
        "{}",
        f.message
    );
}

/// A line longer than [`MAX_LINE`] is skipped without being held whole
/// (even one that would parse: no record is that long), and the record
/// after it is read.
#[test]
fn an_endless_line_is_skipped_and_the_next_record_read() {
    let mut padded = ok("09:00:00", Some("crm"), Some("crm-oauth"));
    padded["pad"] = json!("x".repeat(MAX_LINE * 2));
    let mut input = padded.to_string().into_bytes();
    input.push(b'\n');
    input.extend_from_slice(
        ok("10:00:00", Some("crm"), Some("crm-oauth"))
            .to_string()
            .as_bytes(),
    );
    // No final newline: the last record still counts.
    let r = run_triage(&input, &opts());
    assert_eq!((r.totals.request_records, r.totals.skipped_lines), (1, 1));
    assert_eq!(r.totals.lines, 2);
}

/// A timestamp with another offset than `Z` is the same instant.
#[test]
fn timestamps_with_offsets_are_read() {
    let at = |ts: &str| {
        let v = set(
            ok("10:00:00", Some("crm"), Some("crm-oauth")),
            "/ts",
            json!(ts),
        );
        run_triage(&log(&[v]), &opts()).totals.first_ts
    };
    let want = Some("2026-11-23T10:00:00.000Z".to_owned());
    assert_eq!(at("2026-11-23T12:00:00.000+02:00"), want);
    assert_eq!(at("2026-11-23T04:30:00-05:30"), want);
    assert_eq!(at("2026-11-23T10:00:00+00:00"), want);
    assert_eq!(at("2026-11-23T10:00:00+25:00"), None, "not an offset");
}

/// An offset that moves the instant before 1970 or past 9999 makes the
/// line junk (skipped and counted), for request and refresh records: the
/// report's time formatter takes neither, and the report still comes out.
#[test]
fn timestamps_offset_out_of_range_are_skipped() {
    for ts in [
        "1970-01-01T00:00:00.000+01:00",
        "1970-01-01T00:59:59Z",
        "9999-12-31T23:59:59.000-01:00",
    ] {
        let request = set(
            ok("10:00:00", Some("crm"), Some("crm-oauth")),
            "/ts",
            json!(ts),
        );
        let refresh = set(
            refresh("10:00:00", "crm-oauth", Some("invalid_grant")),
            "/ts",
            json!(ts),
        );
        let good = ok("10:00:00", Some("crm"), Some("crm-oauth"));
        let input: Vec<u8> = [request, refresh, good]
            .iter()
            .flat_map(|v| format!("{v}\n").into_bytes())
            .collect();
        let r = run_triage(&input, &opts());
        let bad = usize::from(ts != "1970-01-01T00:59:59Z") * 2;
        assert_eq!(r.totals.skipped_lines as usize, bad, "{ts}");
        assert_eq!(r.totals.lines, 3, "{ts}");
        // Both renderings work.
        assert!(!render_text(&r).is_empty());
        assert!(serde_json::to_string(&r).is_ok());
    }
}

/// An `invalid_grant` earlier in a failing streak is named, and its advice
/// given, even when the latest attempt failed with something else.
#[test]
fn an_earlier_invalid_grant_in_the_streak_is_named() {
    let records = vec![
        refresh("10:00:00", "crm-oauth", Some("invalid_grant")),
        refresh("10:05:00", "crm-oauth", None),
    ];
    let mut records = records;
    // The second failed without an OAuth error (a timeout).
    records[1] = set(records[1].clone(), "/result", json!("error"));
    records[1] = set(records[1].clone(), "/error", json!("connect timeout"));
    let r = run_triage(&log(&records), &opts());
    let f = find(&r, FindingKind::RefreshFailing);
    assert!(
        f.message.contains("with \"connect timeout\" (and invalid_grant at 10:00 UTC earlier in this streak): log in again"),
        "{}",
        f.message
    );
}

//! The text report, `--since` parsing, `run` and the less common failure
//! kinds.

use std::io::{BufRead, Read};
use std::process::ExitCode;
use std::time::Duration;

use serde_json::{Value, json};

use super::super::*;
use super::fixtures::*;

#[test]
fn text_report_has_aligned_sections() {
    let text = render_text(&run_triage(&log(&scenario()), &opts()));
    for section in [
        "Findings",
        "Status codes",
        "Failure reasons",
        "Routes",
        "Credentials: refreshes",
    ] {
        assert!(
            text.contains(&format!("\n{section}\n")),
            "{section} missing:\n{text}"
        );
    }
    assert!(text.contains("  CRITICAL  credential crm-oauth: refresh failing since 10:42 UTC"));
    let findings: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "Findings")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert!(findings.iter().all(|l| l.chars().count() <= 100), "{text}");
    assert!(
        findings.iter().any(|l| l.starts_with("            ")),
        "wrapped: {text}"
    );
    let routes: Vec<&str> = text
        .lines()
        .skip_while(|l| *l != "Routes")
        .skip(1)
        .take_while(|l| !l.is_empty())
        .collect();
    assert_eq!(routes.len(), 5, "{text}");
    assert!(
        routes[0].starts_with("  ROUTE       REQUESTS  401  403  5XX"),
        "{}",
        routes[0]
    );
    assert!(
        routes
            .iter()
            .any(|l| l.starts_with("  payments           6    0    3    0   0.0%  50.0%    0.0%")),
        "{text}"
    );
    // Right-aligned: every count ends where the REQUESTS header ends.
    let end = routes[0].find("REQUESTS").unwrap() + "REQUESTS".len();
    for row in &routes[1..] {
        let cell = row.get(..end).unwrap().rsplit(' ').next().unwrap();
        assert!(cell.parse::<u64>().is_ok(), "{row:?}");
    }
}

#[test]
fn parse_since_accepts_humantime() {
    assert_eq!(parse_since("6h"), Ok(Duration::from_secs(6 * 3600)));
    assert_eq!(parse_since(" 1h 30m "), Ok(Duration::from_secs(5400)));
    assert!(parse_since("six hours").unwrap_err().contains("six hours"));
    assert!(parse_since("").is_err());
}

struct Broken;

impl Read for Broken {
    fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other("disk on fire"))
    }
}

#[test]
fn read_errors_are_errors_and_run_exits_2() {
    let reader: Box<dyn BufRead> = Box::new(std::io::BufReader::new(Broken));
    assert_eq!(
        triage(reader, &opts()).unwrap_err().to_string(),
        "disk on fire"
    );

    let run = |args: TriageArgs, stdin: &[u8]| {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_with(args, now(), &mut { stdin }, &mut out, &mut err);
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    };
    let missing = TriageArgs {
        input: Some("/nonexistent/audit.log".into()),
        ..Default::default()
    };
    let (code, out, err) = run(missing, b"");
    assert_eq!((code, out.as_str()), (ExitCode::from(2), ""));
    assert!(
        err.starts_with("latchkey triage: /nonexistent/audit.log: "),
        "{err}"
    );
    let bad_since = TriageArgs {
        since: Some("soon".to_owned()),
        ..Default::default()
    };
    let (code, _, err) = run(bad_since, b"");
    assert_eq!(code, ExitCode::from(2));
    assert!(err.contains("--since: invalid duration \"soon\""), "{err}");

    // Findings do not change the exit status; `-` is stdin.
    let input = log(&scenario());
    let stdin = TriageArgs {
        input: Some("-".into()),
        json: true,
        ..Default::default()
    };
    let (code, out, _) = run(stdin, &input);
    assert_eq!(code, ExitCode::SUCCESS);
    let json: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["totals"]["request_records"], 13);

    let path = std::env::temp_dir().join(format!("latchkey-triage-{}.log", std::process::id()));
    std::fs::write(&path, &input).unwrap();
    let args = TriageArgs {
        input: Some(path.clone()),
        since: Some("90m".to_owned()),
        ..Default::default()
    };
    let (code, out, err) = run(args, b"");
    std::fs::remove_file(path).unwrap();
    assert_eq!((code, err.as_str()), (ExitCode::SUCCESS, ""));
    assert!(out.starts_with("latchkey triage\n"), "{out}");
    assert!(out.contains("since 2026-11-23T10:30:00.000Z"), "{out}");
}

#[test]
fn other_failure_kinds_have_findings() {
    let (r1, key) = ("search", "search-token");
    let retry = |ts: &str, status: u16, outcome: &str| {
        let v = set(
            denied(ts, r1, key, status, 10, 3000),
            "/retry401",
            json!({"attempted": true, "outcome": outcome}),
        );
        if outcome == "refresh_failed" {
            set(v, "/reason", json!("refresh_failed"))
        } else {
            v
        }
    };
    let error = |ts: &str, upstream: Option<u16>, status: u16, reason: &str| {
        let v = set(
            ok(ts, Some(r1), Some(key)),
            "/audit/status_code",
            json!(status),
        );
        set(
            set(v, "/upstream_status", json!(upstream)),
            "/reason",
            json!(reason),
        )
    };
    let mut records = vec![
        retry("10:00:00", 401, "still_unauthorized"),
        retry("10:00:01", 401, "not_replayable"),
        retry("10:00:02", 401, "refresh_failed"),
        error("10:01:00", None, 504, "upstream_timeout"),
        error("10:02:00", Some(404), 404, "upstream_error"),
        error("10:03:00", Some(502), 502, "upstream_error"),
        error("10:04:00", None, 500, "internal_error"),
        set(
            error("10:05:00", None, 499, "x"),
            "/audit/action",
            json!("client_cancel"),
        ),
        set(
            denied("10:06:00", "static", "api-key", 403, 5, 0),
            "/credential/token_ttl_s",
            json!(null),
        ),
        refresh("09:00:00", key, Some("temporarily_unavailable")),
        refresh("09:01:00", key, None),
    ];
    let cancelled = records.get_mut(7).unwrap();
    *cancelled = set(cancelled.clone(), "/reason", json!(null));
    for s in 0..12 {
        records.push(rejected(
            &format!("10:07:{s:02}"),
            None,
            401,
            "client_unauthenticated",
            "h",
        ));
    }
    let r = run_triage(&log(&records), &opts());
    use FindingKind as K;
    let msg = |kind| find(&r, kind).message.clone();
    assert!(
        msg(K::RetryStillUnauthorized)
            .starts_with("credential search-token: 1 request still refused")
    );
    assert!(
        msg(K::RetryNotReplayable)
            .starts_with("credential search-token: 1 refusal was not retried")
    );
    assert!(
        msg(K::RetryRefreshFailed)
            .contains("could not be retried because no new token could be had")
    );
    assert!(msg(K::UpstreamTimeout).starts_with("route search: 1 request timed out"));
    assert!(
        msg(K::UpstreamError).contains("(1 x 404, 1 x 502; between 10:02 UTC and 10:03 UTC)"),
        "{}",
        msg(K::UpstreamError)
    );
    assert!(
        msg(K::InternalError).starts_with("route search: 1 request failed with internal_error")
    );
    let fresh: Vec<&str> = r
        .findings
        .iter()
        .filter(|f| f.kind == K::UpstreamDeniedFreshToken)
        .map(|f| f.message.as_str())
        .collect();
    assert_eq!(fresh.len(), 2);
    // The 401 whose forced refresh failed counts too: the upstream refused
    // the credential sent.
    assert!(fresh[0].starts_with("route search: 3 x 401 upstream_denied with fresh tokens (median age 10 s): the upstream does not accept this credential"), "{}", fresh[0]);
    assert_eq!(
        fresh[1],
        "route static: 1 x 403 upstream_denied with a non-expiring credential (median age 5 s): \
         the upstream refuses this credential (check its permissions), not an expiry"
    );
    assert_eq!(
        msg(K::RefreshRecovered),
        "credential search-token: 1 refresh failure, but the latest refresh at 09:01 UTC succeeded"
    );
    let spike = find(&r, K::ClientUnauthenticated);
    assert_eq!(spike.severity, Severity::Warning);
    assert!(
        spike
            .message
            .contains("12 requests rejected as client_unauthenticated (peak 12/min at 10:07 UTC)")
    );
    let summary = &r.findings[0].message;
    assert!(
        summary.contains("; 1 request was cancelled by the caller (not failures)"),
        "{summary}"
    );
    // 3 retries + 1 static denial: the retry whose forced refresh failed is
    // an upstream denial too (the upstream answered 401).
    assert!(summary.contains("4 upstream denials"), "{summary}");
    assert!(
        summary.contains("0 local credential failures "),
        "{summary}"
    );
    // The 12 rejected callers outnumber both credential kinds: they are
    // the verdict, not the 4 denials.
    assert!(
        summary.starts_with("failures are mostly rejected caller requests"),
        "{summary}"
    );
    assert!(
        summary.contains("3 upstream errors, 12 rejected caller requests, 1 internal error"),
        "{summary}"
    );
}

//! Turning the evidence into plain-language findings.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::time::SystemTime;

use super::aggregate::{Evidence, Span};
use super::report::{Finding, FindingKind, Severity};

/// Caller rejections per minute at or above which they count as a spike.
const SPIKE_PER_MINUTE: u64 = 10;

/// Builds the findings: the summary first, then the rest by severity
/// (most severe first) in a fixed order within a severity.
pub(crate) fn build(ev: &Evidence) -> Vec<Finding> {
    let mut out = Vec::new();
    let reference = ev.last_ts;
    denials(ev, &mut out);
    refreshes(ev, reference, &mut out);
    for (subject, n) in &ev.unavailable {
        let message = match subject.strip_prefix("route ") {
            Some(route) => format!(
                "route {route}: credential unavailable for {}: latchkey could not obtain a \
                 token (see refresh errors)",
                count(*n, "request")
            ),
            None => format!(
                "{subject} unavailable for {}: latchkey could not obtain a token (see \
                 refresh errors)",
                count(*n, "request")
            ),
        };
        push(
            &mut out,
            Severity::Critical,
            FindingKind::CredentialUnavailable,
            subject,
            message,
        );
    }
    for ((route, reason), span) in &ev.route_reasons {
        let statuses = ev
            .upstream_error_statuses
            .get(route)
            .filter(|_| reason == "upstream_error");
        route_failure(route, reason, span, statuses, reference, &mut out);
    }
    retries(ev, &mut out);
    callers(ev, reference, &mut out);
    if ev.skipped > 0 {
        let message = format!(
            "log: {} skipped",
            count(
                ev.skipped,
                "line was not an audit record and was|lines were not audit records and were"
            )
        );
        push(
            &mut out,
            Severity::Info,
            FindingKind::SkippedLines,
            "log",
            message,
        );
    }
    out.sort_by_key(|f| Reverse(f.severity));
    let severity = out
        .iter()
        .map(|f| f.severity)
        .max()
        .unwrap_or(Severity::Info);
    out.insert(0, summary(ev, severity));
    out
}

fn push(
    out: &mut Vec<Finding>,
    severity: Severity,
    kind: FindingKind,
    subject: &str,
    message: String,
) {
    out.push(Finding {
        severity,
        kind,
        subject: subject.to_owned(),
        message,
    });
}

/// The verdict: upstream denials or local credential failures.
fn summary(ev: &Evidence, severity: Severity) -> Finding {
    let (c, requests) = (&ev.categories, ev.requests);
    let failed = c.failed();
    let (up, local) = (c.upstream_denial, c.local_credential);
    // Another kind of failure outnumbering both credential kinds is the
    // verdict: a few denials beside many timeouts are not "the" problem.
    let other = [
        (
            c.upstream_error,
            "failures are mostly upstream errors (unreachable, timed out or another error \
             status), not credential problems",
        ),
        (
            c.caller,
            "failures are mostly rejected caller requests (no or a wrong proxy token, no \
             route, too large, malformed), not credential problems",
        ),
        (c.internal, "failures are mostly errors inside latchkey"),
    ]
    .into_iter()
    .filter(|(n, _)| *n > up.max(local))
    .max_by_key(|(n, _)| *n);
    let verdict = if requests == 0 {
        format!(
            "no request records were analysed: {} skipped as not audit records, {} left \
             out by --since (which counts back from now), --route or --credential",
            count(ev.skipped, "line"),
            count(ev.filtered_out, "record")
        )
    } else if failed == 0 {
        format!("no failed requests among {}", count(requests, "request"))
    } else if let Some((_, what)) = other {
        what.to_owned()
    } else if up > 0 && local == 0 {
        "failures are upstream denials, not local credential failures: latchkey sent a \
         credential and the upstream refused it"
            .to_owned()
    } else if local > 0 && up == 0 {
        "failures are local credential failures, not upstream denials: latchkey could not \
         obtain a credential, so nothing was sent upstream"
            .to_owned()
    } else if up > 0 {
        let mostly = match up.cmp(&local) {
            std::cmp::Ordering::Greater => "mostly upstream denials",
            std::cmp::Ordering::Less => "mostly local credential failures",
            std::cmp::Ordering::Equal => "as many upstream denials as local credential failures",
        };
        format!(
            "failures are both upstream denials and local credential failures, {mostly} \
             ({up} vs {local})"
        )
    } else {
        "no credential failures: neither upstream denials nor local credential failures".to_owned()
    };
    let mut message = format!("{verdict}.");
    if failed > 0 {
        message.push_str(&format!(
            " {failed} of {} failed: {} (the upstream refused the credential), {} (latchkey \
             had no credential), {}, {}, {}",
            count(requests, "request"),
            count(up, "upstream denial"),
            count(local, "local credential failure"),
            count(c.upstream_error, "upstream error"),
            count(c.caller, "rejected caller request"),
            count(c.internal, "internal error"),
        ));
    }
    if c.cancelled > 0 {
        message.push_str(&format!(
            "{}{} cancelled by the caller (not failures)",
            if failed > 0 { "; " } else { " " },
            count(c.cancelled, "request was|requests were")
        ));
    }
    Finding {
        severity,
        kind: FindingKind::Summary,
        subject: "overall".to_owned(),
        message,
    }
}

fn denials(ev: &Evidence, out: &mut Vec<Finding>) {
    for ((route, status), d) in &ev.fresh_denials {
        let age = match median(&d.ages) {
            Some(m) => format!("median age {} s", fmt_num(m)),
            None => "token age not recorded".to_owned(),
        };
        let tokens = if !d.ttl_known {
            "a non-expiring credential".to_owned()
        } else if d.stale == 0 {
            "fresh tokens".to_owned()
        } else if d.stale == d.count {
            "tokens at or past expiry".to_owned()
        } else {
            format!("tokens ({} of them at or past expiry)", d.stale)
        };
        let (severity, tail) = if *status == 403 {
            (
                Severity::Warning,
                "the upstream refuses this credential (check its permissions), not an expiry",
            )
        } else {
            (
                Severity::Critical,
                "the upstream does not accept this credential (revoked, or the wrong \
                 credential or scheme), not an expiry",
            )
        };
        let message = format!(
            "route {route}: {} x {status} upstream_denied with {tokens} ({age}): {tail}",
            d.count
        );
        let kind = FindingKind::UpstreamDeniedFreshToken;
        push(out, severity, kind, &format!("route {route}"), message);
    }
    for (subject, (n, min_ttl)) in &ev.expired_401 {
        let message = format!(
            "{subject}: {n} x 401 for tokens sent expired or about to expire (lowest ttl {} s): \
             tokens were sent expired: refresh is not keeping up (check refresh errors and \
             the refresh buffer)",
            fmt_num(*min_ttl)
        );
        push(
            out,
            Severity::Warning,
            FindingKind::ExpiredTokenSent,
            subject,
            message,
        );
    }
}

fn refreshes(ev: &Evidence, reference: Option<SystemTime>, out: &mut Vec<Finding>) {
    for (cred, h) in &ev.refresh {
        let subject = format!("credential {cred}");
        if let (Some(since), Some((_, msg, code))) = (h.failing_since, &h.last_error) {
            let mut with = match (code, msg) {
                (Some(code), _) => code.clone(),
                (None, Some(msg)) => format!("\"{msg}\""),
                (None, None) => "an error".to_owned(),
            };
            // An earlier invalid_grant in the streak is the root cause even
            // if the latest attempt failed otherwise (a timeout after it).
            let earlier_grant = h
                .streak_invalid_grant
                .filter(|_| code.as_deref() != Some("invalid_grant"));
            if let Some(at) = earlier_grant {
                with.push_str(&format!(
                    " (and invalid_grant at {} earlier in this streak)",
                    clock(at, reference)
                ));
            }
            let todo = if h.streak_invalid_grant.is_some() {
                "log in again and store the new refresh token"
            } else {
                "latchkey keeps retrying with backoff; check the token endpoint and the \
                 credential's settings"
            };
            let message = format!(
                "{subject}: refresh failing since {} with {with}: {todo} ({} in a row; \
                 `latchkey ctl credentials` shows its state)",
                clock(since, reference),
                count(h.streak, "failed attempt")
            );
            push(
                out,
                Severity::Critical,
                FindingKind::RefreshFailing,
                &subject,
                message,
            );
        } else if let (Some(ok), true) = (h.last_success, h.attempts > h.successes) {
            let message = format!(
                "{subject}: {}, but the latest refresh at {} succeeded",
                count(h.attempts - h.successes, "refresh failure"),
                clock(ok, reference)
            );
            push(
                out,
                Severity::Info,
                FindingKind::RefreshRecovered,
                &subject,
                message,
            );
        }
    }
}

fn route_failure(
    route: &str,
    reason: &str,
    span: &Span,
    statuses: Option<&BTreeMap<u16, u64>>,
    reference: Option<SystemTime>,
    out: &mut Vec<Finding>,
) {
    let n = count(span.count, "request");
    let when = between(span, reference);
    let (kind, what) = match reason {
        "upstream_unreachable" => (
            FindingKind::UpstreamUnreachable,
            format!(
                "{n} could not reach the upstream ({when}): check the upstream's \
                 health, DNS and the network path"
            ),
        ),
        "upstream_timeout" => (
            FindingKind::UpstreamTimeout,
            format!(
                "{n} timed out waiting for the upstream ({when}): the upstream is \
                 slow or overloaded; check it, or the route's timeout"
            ),
        ),
        "upstream_error" => (
            FindingKind::UpstreamError,
            format!(
                "{n} got another error status from the upstream ({}; {when}): the upstream \
                 is failing or rejects the requests themselves; check its status and the \
                 callers' requests",
                statuses.map_or_else(
                    || "status not recorded".to_owned(),
                    |s| s
                        .iter()
                        .map(|(c, n)| format!("{n} x {c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            ),
        ),
        "overloaded" => (
            FindingKind::InternalError,
            format!(
                "{n} shed as overloaded ({when}): proxy.max_concurrent_requests requests \
                 were already in flight; raise it, add replicas, or find what holds \
                 requests open (a slow upstream)"
            ),
        ),
        "shutdown" => (
            FindingKind::InternalError,
            format!(
                "{n} cut when latchkey stopped ({when}): still waiting for their answer \
                 (the upstream's, or a credential refresh) when proxy.drain_timeout ran \
                 out (or a second stop signal came); raise drain_timeout above the \
                 route's longest requests, and the pod's terminationGracePeriodSeconds \
                 with it"
            ),
        ),
        other => (
            FindingKind::InternalError,
            format!(
                "{n} failed with {other} inside latchkey ({when}): check latchkey's \
                 logs around those times"
            ),
        ),
    };
    let subject = format!("route {route}");
    push(
        out,
        Severity::Warning,
        kind,
        &subject,
        format!("{subject}: {what}"),
    );
}

fn retries(ev: &Evidence, out: &mut Vec<Finding>) {
    for ((subject, outcome), n) in &ev.retry {
        let (severity, kind, what) = match outcome.as_str() {
            "recovered" => (
                Severity::Info,
                FindingKind::RetryRecovered,
                format!(
                    "{} recovered by a refresh and replay",
                    count(*n, "revoked token was|revoked tokens were")
                ),
            ),
            "still_unauthorized" => (
                Severity::Warning,
                FindingKind::RetryStillUnauthorized,
                format!(
                    "{} still refused after a forced refresh and replay: the \
                     upstream rejects even a new token (revoked grant, missing scope or wrong \
                     account)",
                    count(*n, "request")
                ),
            ),
            "refresh_failed" => (
                Severity::Warning,
                FindingKind::RetryRefreshFailed,
                format!(
                    "{} could not be retried because no new token could be had: the forced \
                     refresh failed, or the credential was backing off after failed refreshes \
                     (see refresh errors)",
                    count(*n, "refusal")
                ),
            ),
            "not_replayable" => (
                Severity::Warning,
                FindingKind::RetryNotReplayable,
                format!(
                    "{} not retried because the request could not be replayed \
                     (a WebSocket or other upgrade, never replayed; or a body streamed \
                     or over the replay cap)",
                    count(*n, "refusal was|refusals were")
                ),
            ),
            _ => continue,
        };
        push(out, severity, kind, subject, format!("{subject}: {what}"));
    }
}

fn callers(ev: &Evidence, reference: Option<SystemTime>, out: &mut Vec<Finding>) {
    for (reason, rej) in &ev.caller_rejects {
        let n = count(rej.span.count, "request");
        let (severity, kind, what) = match reason.as_str() {
            "client_unauthenticated" => {
                let (minute, peak) = rej
                    .per_minute
                    .iter()
                    .max_by_key(|(m, c)| (**c, Reverse(**m)))
                    .map_or((0, 0), |(m, c)| (*m, *c));
                let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(minute * 60);
                let severity = if peak >= SPIKE_PER_MINUTE {
                    Severity::Warning
                } else {
                    Severity::Info
                };
                let what = format!(
                    "{n} rejected as client_unauthenticated (peak {peak}/min at {}): a \
                     caller sends no or a wrong proxy token; check its configuration",
                    clock(at, reference)
                );
                (severity, FindingKind::ClientUnauthenticated, what)
            }
            "client_forbidden" => (
                Severity::Warning,
                FindingKind::ClientForbidden,
                format!(
                    "{n} rejected as client_forbidden ({}): a known caller used a \
                     route it is not allowed on; check the route's allowed clients",
                    between(&rej.span, reference)
                ),
            ),
            "no_route" => {
                let mut hosts: Vec<_> = ev.no_route_hosts.iter().collect();
                hosts.sort_by_key(|(h, c)| (Reverse(**c), *h));
                let top: Vec<String> = hosts
                    .iter()
                    .take(3)
                    .map(|(h, c)| format!("{h} ({c})"))
                    .collect();
                let what = format!(
                    "{n} matched no route (hosts: {}): a caller uses the wrong host or \
                     path prefix, or the config lacks a route",
                    top.join(", ")
                );
                (Severity::Warning, FindingKind::NoRoute, what)
            }
            _ => continue,
        };
        push(out, severity, kind, "callers", format!("callers: {what}"));
    }
}

/// `between 10:00 UTC and 10:05 UTC`, or `at 10:00 UTC`.
fn between(span: &Span, reference: Option<SystemTime>) -> String {
    let first = clock(span.first, reference);
    let last = clock(span.last, reference);
    if first == last {
        format!("at {first}")
    } else {
        format!("between {first} and {last}")
    }
}

/// `10:42 UTC` when on the same day as `reference`, else
/// `2026-11-22 10:42 UTC`.
pub(crate) fn clock(ts: SystemTime, reference: Option<SystemTime>) -> String {
    let s = humantime::format_rfc3339_seconds(ts).to_string();
    let date = s.get(..10).unwrap_or_default();
    let hm = s.get(11..16).unwrap_or_default();
    let same_day = reference
        .is_some_and(|r| humantime::format_rfc3339_seconds(r).to_string().get(..10) == Some(date));
    if same_day {
        format!("{hm} UTC")
    } else {
        format!("{date} {hm} UTC")
    }
}

fn median(values: &[f64]) -> Option<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => v.get(mid).copied(),
        _ => Some((v.get(mid - 1)? + v.get(mid)?) / 2.0),
    }
}

/// `1 request`, `2 requests`; `"line was|lines were"` picks singular|plural.
fn count(n: u64, noun: &str) -> String {
    let (one, many) = noun.split_once('|').map_or_else(
        || (noun.to_owned(), format!("{noun}s")),
        |(one, many)| (one.to_owned(), many.to_owned()),
    );
    format!("{n} {}", if n == 1 { one } else { many })
}

/// `30`, `12.5`, `-3`.
pub(crate) fn fmt_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{x:.0}")
    } else {
        format!("{x:.1}")
    }
}

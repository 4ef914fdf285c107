//! Folding records into counts, and the evidence the findings are built from.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use super::parse::{RefreshRecord, RequestRecord};
use super::report::{
    CredentialStats, ReasonStats, RefreshError, RefreshStats, Report, Totals, TrafficStats, Window,
};

/// Route key for requests that matched no route.
pub(crate) const UNROUTED: &str = "(unrouted)";

/// A token with more than this many seconds left was fresh when sent.
pub(crate) const FRESH_TTL_S: f64 = 30.0;

/// Count plus first and last occurrence.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) count: u64,
    pub(crate) first: SystemTime,
    pub(crate) last: SystemTime,
}

impl Span {
    fn new(ts: SystemTime) -> Self {
        Self {
            count: 0,
            first: ts,
            last: ts,
        }
    }

    fn add(&mut self, ts: SystemTime) {
        self.count += 1;
        self.first = self.first.min(ts);
        self.last = self.last.max(ts);
    }
}

fn bump(map: &mut BTreeMap<String, Span>, key: &str, ts: SystemTime) {
    map.entry(key.to_owned())
        .or_insert_with(|| Span::new(ts))
        .add(ts);
}

/// Where a failed request's failure came from.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Categories {
    /// The upstream refused the credential latchkey sent.
    pub(crate) upstream_denial: u64,
    /// latchkey could not obtain a credential.
    pub(crate) local_credential: u64,
    /// The upstream was unreachable, timed out or answered another error
    /// status.
    pub(crate) upstream_error: u64,
    /// The caller's request was rejected (auth, route, size, syntax).
    pub(crate) caller: u64,
    /// latchkey's own errors and unknown reasons.
    pub(crate) internal: u64,
    /// Callers that went away (not failures).
    pub(crate) cancelled: u64,
}

impl Categories {
    pub(crate) fn failed(&self) -> u64 {
        self.upstream_denial
            + self.local_credential
            + self.upstream_error
            + self.caller
            + self.internal
    }
}

/// Denials of tokens that were not about to expire.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    pub(crate) count: u64,
    /// `token_age_s` of the denied requests that recorded one.
    pub(crate) ages: Vec<f64>,
    /// Whether any denied request recorded a `token_ttl_s`.
    pub(crate) ttl_known: bool,
    /// How many had at most [`FRESH_TTL_S`] left (or had expired).
    pub(crate) stale: u64,
}

/// Caller rejections of one reason, with a per-minute histogram.
#[derive(Debug)]
pub(crate) struct CallerRejects {
    pub(crate) span: Span,
    /// Minute since the epoch -> count.
    pub(crate) per_minute: BTreeMap<u64, u64>,
}

/// Refresh history of one credential, with times kept as `SystemTime`.
#[derive(Debug, Default)]
pub(crate) struct CredRefresh {
    pub(crate) attempts: u64,
    pub(crate) successes: u64,
    pub(crate) last_success: Option<SystemTime>,
    pub(crate) last_error: Option<(SystemTime, Option<String>, Option<String>)>,
    pub(crate) failing_since: Option<SystemTime>,
    pub(crate) streak: u64,
    /// The first `invalid_grant` of the current failing streak: the error
    /// that needs a person, even when later attempts failed otherwise.
    pub(crate) streak_invalid_grant: Option<SystemTime>,
}

/// What the findings are built from.
#[derive(Debug, Default)]
pub(crate) struct Evidence {
    pub(crate) categories: Categories,
    pub(crate) requests: u64,
    pub(crate) skipped: u64,
    /// (route, status) -> denials with fresh (or non-expiring) tokens.
    pub(crate) fresh_denials: BTreeMap<(String, u16), Denials>,
    /// Subject -> 401s for tokens sent (nearly) expired, and the lowest ttl.
    pub(crate) expired_401: BTreeMap<String, (u64, f64)>,
    /// Subject -> requests without a credential.
    pub(crate) unavailable: BTreeMap<String, u64>,
    /// (route, reason) -> occurrences, for upstream and internal failures.
    pub(crate) route_reasons: BTreeMap<(String, String), Span>,
    /// Route -> upstream status -> count, for `upstream_error`.
    pub(crate) upstream_error_statuses: BTreeMap<String, BTreeMap<u16, u64>>,
    /// (subject, retry outcome) -> count.
    pub(crate) retry: BTreeMap<(String, String), u64>,
    /// Reason -> caller rejections.
    pub(crate) caller_rejects: BTreeMap<String, CallerRejects>,
    /// Host -> requests that matched no route.
    pub(crate) no_route_hosts: BTreeMap<String, u64>,
    /// Credential -> refresh history.
    pub(crate) refresh: BTreeMap<String, CredRefresh>,
    /// Latest analysed record.
    pub(crate) last_ts: Option<SystemTime>,
    /// Records left out by `--since`, `--route` or `--credential`.
    pub(crate) filtered_out: u64,
}

#[derive(Debug, Default, Clone, Copy)]
struct Traffic {
    requests: u64,
    s401: u64,
    s403: u64,
    s5xx: u64,
}

impl Traffic {
    fn add(&mut self, status: Option<u16>) {
        self.requests += 1;
        match status {
            Some(401) => self.s401 += 1,
            Some(403) => self.s403 += 1,
            Some(500..=599) => self.s5xx += 1,
            _ => {}
        }
    }

    fn stats(self) -> TrafficStats {
        TrafficStats {
            requests: self.requests,
            status_401: self.s401,
            status_403: self.s403,
            status_5xx: self.s5xx,
            rate_401: rate(self.s401, self.requests),
            rate_403: rate(self.s403, self.requests),
            rate_5xx: rate(self.s5xx, self.requests),
        }
    }
}

/// `part / whole`, rounded to 4 decimals; 0 when `whole` is 0.
pub(crate) fn rate(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        return 0.0;
    }
    let r = part as f64 / whole as f64;
    (r * 10_000.0).round() / 10_000.0
}

/// RFC 3339 with milliseconds, UTC.
pub(crate) fn fmt_ts(ts: SystemTime) -> String {
    humantime::format_rfc3339_millis(ts).to_string()
}

/// The running totals.
#[derive(Debug, Default)]
pub(crate) struct Acc {
    pub(crate) lines: u64,
    pub(crate) records: u64,
    pub(crate) filtered_out: u64,
    refreshes: u64,
    first: Option<SystemTime>,
    status_codes: BTreeMap<u16, u64>,
    reasons: BTreeMap<String, Span>,
    routes: BTreeMap<String, Traffic>,
    creds: BTreeMap<String, Traffic>,
    refresh_events: BTreeMap<String, Vec<RefreshRecord>>,
    retry401: BTreeMap<String, u64>,
    pub(crate) ev: Evidence,
}

impl Acc {
    pub(crate) fn skip(&mut self) {
        self.ev.skipped += 1;
    }

    fn seen(&mut self, ts: SystemTime) {
        self.first = Some(self.first.map_or(ts, |f| f.min(ts)));
        self.ev.last_ts = Some(self.ev.last_ts.map_or(ts, |l| l.max(ts)));
    }

    /// Its time counts towards the first and last seen in
    /// [`finish`](Self::finish), once `--route` has kept or dropped it.
    pub(crate) fn add_refresh(&mut self, r: RefreshRecord) {
        self.refreshes += 1;
        self.refresh_events
            .entry(r.credential.clone())
            .or_default()
            .push(r);
    }

    pub(crate) fn add_request(&mut self, r: &RequestRecord) {
        let ts = r.ts;
        self.seen(ts);
        self.ev.requests += 1;
        let status = r.audit.status_code;
        if let Some(code) = status {
            *self.status_codes.entry(code).or_default() += 1;
        }
        let route = r.route.as_deref().unwrap_or(UNROUTED);
        self.routes.entry(route.to_owned()).or_default().add(status);
        let cred = r.credential.id.as_deref();
        if let Some(id) = cred {
            // A 401 or 403 counts against the credential only when the
            // upstream gave it: a caller latchkey refused says nothing about
            // the credential. (Local 5xx, such as 503 credential_unavailable,
            // do.)
            let counted = match status {
                Some(401 | 403) if r.denial_source.as_deref() != Some("upstream") => None,
                s => s,
            };
            self.creds.entry(id.to_owned()).or_default().add(counted);
        }
        if let Some(reason) = r.reason.as_deref() {
            bump(&mut self.reasons, reason, ts);
        }
        let subject = match cred {
            Some(id) => format!("credential {id}"),
            None => format!("route {route}"),
        };
        if let Some(outcome) = r.retry401.outcome.as_deref() {
            *self.retry401.entry(outcome.to_owned()).or_default() += 1;
            *self
                .ev
                .retry
                .entry((subject.clone(), outcome.to_owned()))
                .or_default() += 1;
        }
        self.classify(r, route, subject);
    }

    fn classify(&mut self, r: &RequestRecord, route: &str, subject: String) {
        let ev = &mut self.ev;
        let ts = r.ts;
        let status = r.audit.status_code;
        let upstream_denied =
            || r.denial_source.as_deref() == Some("upstream") && matches!(status, Some(401 | 403));
        let local_credential = || {
            r.rejected_by.as_deref() == Some("credential")
                || r.credential.outcome.as_deref() == Some("unavailable")
        };
        match r.reason.as_deref() {
            Some("upstream_denied") => self.denied(r, route, subject),
            // A refusal the upstream gave (401, 403 or another of the
            // route's retry statuses), whose forced refresh then failed (or
            // was backing off): the upstream refused the credential sent.
            Some("refresh_failed") if r.denial_source.as_deref() == Some("upstream") => {
                self.denied(r, route, subject)
            }
            Some("credential_unavailable" | "refresh_failed") => {
                ev.categories.local_credential += 1;
                *ev.unavailable.entry(subject).or_default() += 1;
            }
            Some(reason @ ("upstream_unreachable" | "upstream_timeout" | "upstream_error")) => {
                ev.categories.upstream_error += 1;
                route_span(ev, route, reason, ts);
                if let (Some(code), "upstream_error") = (r.upstream_status.or(status), reason) {
                    let codes = ev
                        .upstream_error_statuses
                        .entry(route.to_owned())
                        .or_default();
                    *codes.entry(code).or_default() += 1;
                }
            }
            Some(
                reason @ ("client_unauthenticated"
                | "client_forbidden"
                | "no_route"
                | "body_too_large"
                | "bad_request"
                | "request_timeout"
                | "method_not_allowed"),
            ) => {
                ev.categories.caller += 1;
                let minute = ts
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs() / 60);
                let rej = ev
                    .caller_rejects
                    .entry(reason.to_owned())
                    .or_insert_with(|| CallerRejects {
                        span: Span::new(ts),
                        per_minute: BTreeMap::new(),
                    });
                rej.span.add(ts);
                *rej.per_minute.entry(minute).or_default() += 1;
                if reason == "no_route" {
                    let host = r
                        .audit
                        .host
                        .clone()
                        .unwrap_or_else(|| "(no host)".to_owned());
                    *ev.no_route_hosts.entry(host).or_default() += 1;
                }
            }
            Some(reason) => {
                ev.categories.internal += 1;
                route_span(ev, route, reason, ts);
            }
            None if r.audit.action.as_deref() == Some("client_cancel") => {
                ev.categories.cancelled += 1;
            }
            None if local_credential() => {
                ev.categories.local_credential += 1;
                *ev.unavailable.entry(subject).or_default() += 1;
            }
            None if upstream_denied() => self.denied(r, route, subject),
            None => match status {
                Some(code @ 500..=599) if matches!(r.upstream_status, Some(500..=599)) => {
                    ev.categories.upstream_error += 1;
                    route_span(ev, route, "upstream_error", ts);
                    let codes = ev
                        .upstream_error_statuses
                        .entry(route.to_owned())
                        .or_default();
                    *codes.entry(r.upstream_status.unwrap_or(code)).or_default() += 1;
                }
                Some(500..=599) => {
                    ev.categories.internal += 1;
                    route_span(ev, route, "internal_error", ts);
                }
                _ => {}
            },
        }
    }

    /// An upstream denial: sorted by how fresh the token was.
    fn denied(&mut self, r: &RequestRecord, route: &str, subject: String) {
        let ev = &mut self.ev;
        ev.categories.upstream_denial += 1;
        if r.credential.outcome.as_deref() != Some("injected") {
            return;
        }
        let status = r.upstream_status.or(r.audit.status_code).unwrap_or(0);
        let ttl = r.credential.token_ttl_s;
        match ttl {
            // A 401 for a token at or near its expiry: sent too late.
            Some(t) if status == 401 && t <= FRESH_TTL_S => {
                let e = ev.expired_401.entry(subject).or_insert((0, t));
                e.0 += 1;
                e.1 = e.1.min(t);
            }
            // Every other denial is reported, per route and status (a 403
            // is about permissions whatever the token's age).
            _ => {
                let d = ev
                    .fresh_denials
                    .entry((route.to_owned(), status))
                    .or_default();
                d.count += 1;
                d.ttl_known |= ttl.is_some();
                d.stale += u64::from(ttl.is_some_and(|t| t <= FRESH_TTL_S));
                d.ages.extend(r.credential.token_age_s);
            }
        }
    }

    /// Computes the per-credential refresh history and the report (without
    /// findings).
    pub(crate) fn finish(mut self, window: Window) -> (Report, Evidence) {
        if window.route.is_some() {
            // Refresh records name no route: with `--route`, keep those of
            // the credentials its requests used, not every credential's.
            let creds = &self.creds;
            let before: usize = self.refresh_events.values().map(Vec::len).sum();
            self.refresh_events
                .retain(|cred, _| creds.contains_key(cred));
            let after: usize = self.refresh_events.values().map(Vec::len).sum();
            self.refreshes -= (before - after) as u64;
            self.filtered_out += (before - after) as u64;
        }
        self.ev.filtered_out = self.filtered_out;
        for (cred, mut events) in std::mem::take(&mut self.refresh_events) {
            events.sort_by_key(|e| e.ts);
            let mut h = CredRefresh::default();
            for e in &events {
                self.seen(e.ts);
                h.attempts += 1;
                if e.ok {
                    h.successes += 1;
                    h.last_success = Some(e.ts);
                    h.failing_since = None;
                    h.streak = 0;
                    h.streak_invalid_grant = None;
                } else {
                    h.last_error = Some((e.ts, e.error.clone(), e.error_code.clone()));
                    h.failing_since.get_or_insert(e.ts);
                    h.streak += 1;
                    if e.error_code.as_deref() == Some("invalid_grant") {
                        h.streak_invalid_grant.get_or_insert(e.ts);
                    }
                }
            }
            self.ev.refresh.insert(cred, h);
        }
        let mut credentials: BTreeMap<String, CredentialStats> = self
            .creds
            .iter()
            .map(|(id, t)| {
                (
                    id.clone(),
                    CredentialStats {
                        traffic: t.stats(),
                        ..Default::default()
                    },
                )
            })
            .collect();
        for (id, h) in &self.ev.refresh {
            credentials.entry(id.clone()).or_default().refresh = RefreshStats {
                attempts: h.attempts,
                successes: h.successes,
                failures: h.attempts - h.successes,
                success_rate: (h.attempts > 0).then(|| rate(h.successes, h.attempts)),
                last_success: h.last_success.map(fmt_ts),
                last_error: h
                    .last_error
                    .as_ref()
                    .map(|(at, message, error_code)| RefreshError {
                        message: message.clone(),
                        error_code: error_code.clone(),
                        at: fmt_ts(*at),
                    }),
                failing_since: h.failing_since.map(fmt_ts),
                consecutive_failures: h.streak,
            };
        }
        let report = Report {
            window,
            totals: Totals {
                lines: self.lines,
                records: self.records,
                request_records: self.ev.requests,
                refresh_records: self.refreshes,
                skipped_lines: self.ev.skipped,
                filtered_out: self.filtered_out,
                first_ts: self.first.map(fmt_ts),
                last_ts: self.ev.last_ts.map(fmt_ts),
            },
            status_codes: self.status_codes,
            reasons: self
                .reasons
                .into_iter()
                .map(|(k, s)| {
                    let stats = ReasonStats {
                        count: s.count,
                        first_seen: fmt_ts(s.first),
                        last_seen: fmt_ts(s.last),
                    };
                    (k, stats)
                })
                .collect(),
            routes: self
                .routes
                .into_iter()
                .map(|(k, t)| (k, t.stats()))
                .collect(),
            credentials,
            retry401: self.retry401,
            findings: Vec::new(),
        };
        (report, self.ev)
    }
}

fn route_span(ev: &mut Evidence, route: &str, reason: &str, ts: SystemTime) {
    ev.route_reasons
        .entry((route.to_owned(), reason.to_owned()))
        .or_insert_with(|| Span::new(ts))
        .add(ts);
}

//! The triage report: what `latchkey triage --json` prints.
//!
//! The shape is documented in the [module docs](super).

use std::collections::BTreeMap;

use serde::Serialize;

/// Everything triage found in an audit log.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Which records were considered.
    pub window: Window,
    /// Line and record counts, and the time range of the analysed records.
    pub totals: Totals,
    /// Request records by the status code the caller received.
    pub status_codes: BTreeMap<u16, u64>,
    /// Request records by failure reason, with first and last occurrence.
    pub reasons: BTreeMap<String, ReasonStats>,
    /// Request outcomes per route (`(unrouted)` for requests that matched none).
    pub routes: BTreeMap<String, TrafficStats>,
    /// Request outcomes and refresh history per credential id.
    pub credentials: BTreeMap<String, CredentialStats>,
    /// Request records by `retry401.outcome` (only requests where a retry was
    /// attempted or refused).
    pub retry401: BTreeMap<String, u64>,
    /// What it means, in plain language; the first one is the summary.
    pub findings: Vec<Finding>,
}

/// The filters that selected the analysed records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Window {
    /// Records before this time were ignored (`--since`), RFC 3339.
    pub not_before: Option<String>,
    /// Only request records for this route (`--route`).
    pub route: Option<String>,
    /// Only request and refresh records for this credential (`--credential`).
    pub credential: Option<String>,
}

/// Line and record counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Totals {
    /// Lines read, including blank and junk lines.
    pub lines: u64,
    /// Lines that were audit records (before filtering).
    pub records: u64,
    /// Request records analysed (after filtering).
    pub request_records: u64,
    /// Refresh records analysed (after filtering).
    pub refresh_records: u64,
    /// Lines that were not audit records (blank, not JSON, another shape).
    pub skipped_lines: u64,
    /// Audit records left out by `--since`, `--route` or `--credential`.
    pub filtered_out: u64,
    /// Earliest analysed record, RFC 3339.
    pub first_ts: Option<String>,
    /// Latest analysed record, RFC 3339.
    pub last_ts: Option<String>,
}

/// How often one failure reason occurred, and when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReasonStats {
    /// Request records with this reason.
    pub count: u64,
    /// Earliest occurrence, RFC 3339.
    pub first_seen: String,
    /// Latest occurrence, RFC 3339.
    pub last_seen: String,
}

/// Request outcomes of one route or credential, by the status code the
/// caller received.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TrafficStats {
    /// Request records.
    pub requests: u64,
    /// Of which answered 401.
    pub status_401: u64,
    /// Of which answered 403.
    pub status_403: u64,
    /// Of which answered 500..=599.
    pub status_5xx: u64,
    /// `status_401 / requests` (0 when there were no requests).
    pub rate_401: f64,
    /// `status_403 / requests`.
    pub rate_403: f64,
    /// `status_5xx / requests`.
    pub rate_5xx: f64,
}

/// One credential: the requests that used it and its refresh history.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CredentialStats {
    /// Requests whose `credential.id` is this credential.
    pub traffic: TrafficStats,
    /// From the refresh records of this credential.
    pub refresh: RefreshStats,
}

/// Refresh history of one credential, from refresh records.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RefreshStats {
    /// Refresh records.
    pub attempts: u64,
    /// Of which `result: ok` (including adopted values).
    pub successes: u64,
    /// Of which `result: error`.
    pub failures: u64,
    /// `successes / attempts`; `null` without attempts.
    pub success_rate: Option<f64>,
    /// Latest successful refresh, RFC 3339.
    pub last_success: Option<String>,
    /// Latest failed refresh.
    pub last_error: Option<RefreshError>,
    /// First failure of the current failure streak (the latest attempts all
    /// failed since then); `null` when the latest attempt succeeded.
    pub failing_since: Option<String>,
    /// Length of the current failure streak.
    pub consecutive_failures: u64,
}

/// A failed refresh.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RefreshError {
    /// The record's `error` message.
    pub message: Option<String>,
    /// The record's `error_code` (e.g. `invalid_grant`).
    pub error_code: Option<String>,
    /// When it happened, RFC 3339.
    pub at: String,
}

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth knowing; nothing to do.
    Info,
    /// Something is degraded or misconfigured.
    Warning,
    /// Requests fail and a human must act.
    Critical,
}

impl Severity {
    /// `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// What a finding is about (stable, machine-readable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingKind {
    /// Overall verdict: upstream denials or local credential failures.
    Summary,
    /// The upstream refused tokens that were far from expiry.
    UpstreamDeniedFreshToken,
    /// 401s for tokens that were expired (or nearly) when sent.
    ExpiredTokenSent,
    /// The latest refresh attempts of a credential all failed.
    RefreshFailing,
    /// A credential's refresh failed earlier but has recovered.
    RefreshRecovered,
    /// Requests failed because latchkey had no credential to inject.
    CredentialUnavailable,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The upstream answered another error status (not 401/403).
    UpstreamError,
    /// 401s recovered by a forced refresh and replay.
    RetryRecovered,
    /// 401 again after a forced refresh and replay.
    RetryStillUnauthorized,
    /// A 401 retry could not run because the forced refresh failed.
    RetryRefreshFailed,
    /// A 401 retry could not run because the body was not replayable.
    RetryNotReplayable,
    /// Callers without a valid proxy token.
    ClientUnauthenticated,
    /// Callers not allowed on a route.
    ClientForbidden,
    /// Requests that matched no route.
    NoRoute,
    /// latchkey failed internally.
    InternalError,
    /// Lines that were not audit records.
    SkippedLines,
}

/// One conclusion, in plain language.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// How much it matters.
    pub severity: Severity,
    /// What it is about.
    pub kind: FindingKind,
    /// The route, credential or scope it concerns (`route payments`,
    /// `credential crm`, `callers`, `log`, `overall`).
    pub subject: String,
    /// The explanation and what to do, starting with the subject.
    pub message: String,
}

//! The audit records and how they are derived.
//!
//! Two kinds of record, each one JSON object on one line:
//!
//! - [`RequestRecord`] (`"kind":"request"`): one per request, whatever
//!   happened to it, built by [`RequestRecord::from_parts`] from what the
//!   audit layer saw ([`RequestMeta`], the final status, the response's
//!   [`ErrorCode`] if the proxy made the response) and what the layers below
//!   recorded ([`RequestFacts`]).
//! - [`RefreshRecord`] (`"kind":"refresh"`): one per credential refresh
//!   attempt, from a [`RefreshEvent`].
//!
//! The shape is fixed (`latchkey triage` reads it): every key is present on
//! every record, `null` when it does not apply, and `credential`, `refresh`
//! and `retry401` are always objects. Only ids, numbers, fixed strings, the
//! request path (never the query) and the host are written: never a header
//! value or a secret.
//!
//! `ts` is when the record was made (the response headers were ready, or
//! the caller went away), like an access log; `duration_ms` reaches back to
//! the request's arrival. Token age and time to live are relative to `ts`.
//!
//! Records borrow from their inputs, and [`RequestRecord::with_json`]
//! serialises into a reused per-thread buffer, so writing one costs no
//! allocation beyond what the sink does.

use http::StatusCode;
use json::{ser_opt_display, ser_opt_ts, ser_ts, with_buf, with_json};
use proxy_core::context::RequestId;
use proxy_core::error::ErrorCode;
pub use proxy_core::facts::RequestMeta;
use proxy_core::facts::{CredentialOutcome, RefreshEvent, RequestFacts};
use serde::Serialize;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

mod json;
mod write;

/// Status recorded for a caller that went away before the response was
/// ready (nginx's "client closed request").
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// How the request ended, from the caller's point of view.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Forwarded; the upstream's response (whatever its status) was
    /// returned.
    Allow,
    /// Refused by the proxy with a 4xx.
    Reject,
    /// Failed inside the proxy with a 5xx.
    Error,
    /// The caller went away before the response was ready.
    ClientCancel,
}

/// Why a request did not succeed; `null` on 2xx and 3xx and for
/// [`Action::ClientCancel`] (the action already says why).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The upstream answered 401/403 to an injected credential.
    UpstreamDenied,
    /// No credential could be obtained (and no refresh failed while this
    /// request waited).
    CredentialUnavailable,
    /// A refresh this request waited for (or forced after a 401) failed.
    RefreshFailed,
    /// The upstream could not be reached.
    UpstreamUnreachable,
    /// The upstream did not answer in time.
    UpstreamTimeout,
    /// The caller had not sent its whole request body when the route's
    /// timeout ran out.
    RequestTimeout,
    /// The caller did not authenticate to the proxy.
    ClientUnauthenticated,
    /// The caller may not use the route.
    ClientForbidden,
    /// No route matched.
    NoRoute,
    /// The request body exceeded the route's limit.
    BodyTooLarge,
    /// The request could not be forwarded as sent.
    BadRequest,
    /// The method is never forwarded (`TRACE`).
    MethodNotAllowed,
    /// A bug or unexpected failure inside the proxy.
    InternalError,
    /// The upstream answered another 4xx or 5xx.
    UpstreamError,
    /// Too many requests in flight (load shed).
    Overloaded,
    /// The proxy stopped while the request was in flight (drain timeout,
    /// or a second stop signal); the caller got no answer.
    Shutdown,
}

/// Whether a failed request was refused by the proxy or by the upstream.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DenialSource {
    /// The proxy made the response.
    Local,
    /// The upstream did.
    Upstream,
}

/// One request; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RequestRecord<'a> {
    /// Always `"request"`.
    pub kind: &'static str,
    /// When the record was made.
    #[serde(serialize_with = "ser_ts")]
    pub ts: SystemTime,
    /// The request id.
    pub request_id: Option<&'a str>,
    /// The authenticated client.
    pub client: Option<&'a str>,
    /// The matched route.
    pub route: Option<&'a str>,
    /// The request itself and its outcome.
    pub audit: AuditFields<'a>,
    /// The stage that refused the request.
    pub rejected_by: Option<&'static str>,
    /// The upstream's status (last attempt).
    pub upstream_status: Option<u16>,
    /// Time to the upstream's response headers (last attempt).
    pub upstream_ms: Option<f64>,
    /// On status >= 400: who refused.
    pub denial_source: Option<DenialSource>,
    /// The credential used.
    pub credential: CredentialFields<'a>,
    /// A refresh the request waited for.
    pub refresh: RefreshFields<'a>,
    /// The 401 retry.
    pub retry401: Retry401Fields,
    /// Why it failed.
    pub reason: Option<Reason>,
}

/// `audit`: the request and its outcome.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AuditFields<'a> {
    /// The `Host` header, or the URI's authority (h2).
    pub host: &'a str,
    /// The method.
    pub method: &'a str,
    /// The path, never the query.
    pub path: &'a str,
    /// The caller's address.
    #[serde(serialize_with = "ser_opt_display")]
    pub remote_addr: Option<SocketAddr>,
    /// How it ended.
    pub action: Action,
    /// The status sent (499 for a cancelled request).
    pub status_code: u16,
    /// From arrival to response headers (or cancellation), milliseconds.
    pub duration_ms: f64,
}

/// `credential`: the route's credential and what became of it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CredentialFields<'a> {
    /// The credential's id (also when it was never tried).
    pub id: Option<&'a str>,
    /// The generation injected.
    pub generation: Option<u64>,
    /// `injected`, `unavailable` or `none`.
    pub outcome: &'static str,
    /// Seconds since the injected value was obtained.
    pub token_age_s: Option<i64>,
    /// Seconds until it expires; negative once expired.
    pub token_ttl_s: Option<i64>,
}

/// `refresh`: a refresh the request waited for.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefreshFields<'a> {
    /// Whether one ran (false, with `trigger` and `result` set, when the
    /// credential was backing off: the request made no token call).
    pub ran: bool,
    /// `expired` or `forced`.
    pub trigger: Option<&'static str>,
    /// `ok`, `error`, or `backing_off` (no attempt: earlier ones failed
    /// and the next is not due yet).
    pub result: Option<&'static str>,
    /// How long the request waited for it.
    pub duration_ms: Option<f64>,
    /// The token endpoint's OAuth2 `error` code.
    pub error_code: Option<&'a str>,
}

/// `retry401`: the replay after an upstream 401.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Retry401Fields {
    /// Whether a retry was considered.
    pub attempted: bool,
    /// `recovered`, `refresh_failed`, `still_unauthorized`, `not_replayable`.
    pub outcome: Option<&'static str>,
}

/// One credential refresh attempt; see the module docs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RefreshRecord<'a> {
    /// Always `"refresh"`.
    pub kind: &'static str,
    /// When the attempt ended.
    #[serde(serialize_with = "ser_ts")]
    pub ts: SystemTime,
    /// The credential's id.
    pub credential: &'a str,
    /// `proactive`, `expired`, `forced` or `manual`.
    pub trigger: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
    /// Whether the value was adopted from a shared store.
    pub adopted: bool,
    /// How long the attempt took, milliseconds.
    pub duration_ms: f64,
    /// What went wrong (never a secret).
    pub error: Option<&'a str>,
    /// The token endpoint's OAuth2 `error` code.
    pub error_code: Option<&'a str>,
    /// The generation now served.
    pub generation: u64,
    /// Expiry of the value now served.
    #[serde(serialize_with = "ser_opt_ts")]
    pub expires_at: Option<SystemTime>,
}

// === impl Action, Reason, DenialSource ===

impl Action {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Reject => "reject",
            Self::Error => "error",
            Self::ClientCancel => "client_cancel",
        }
    }
}

impl Reason {
    /// The wire name (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::UpstreamDenied => "upstream_denied",
            Self::CredentialUnavailable => "credential_unavailable",
            Self::RefreshFailed => "refresh_failed",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::ClientUnauthenticated => "client_unauthenticated",
            Self::ClientForbidden => "client_forbidden",
            Self::NoRoute => "no_route",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::InternalError => "internal_error",
            Self::UpstreamError => "upstream_error",
            Self::Overloaded => "overloaded",
            Self::Shutdown => "shutdown",
        }
    }

    /// The reason for a proxy-made response with `code`.
    pub fn from_code(code: ErrorCode) -> Self {
        match code {
            ErrorCode::ClientUnauthenticated => Self::ClientUnauthenticated,
            ErrorCode::ClientForbidden => Self::ClientForbidden,
            ErrorCode::NoRoute => Self::NoRoute,
            ErrorCode::BodyTooLarge => Self::BodyTooLarge,
            ErrorCode::BadRequest => Self::BadRequest,
            ErrorCode::MethodNotAllowed => Self::MethodNotAllowed,
            ErrorCode::UpstreamUnreachable => Self::UpstreamUnreachable,
            ErrorCode::CredentialUnavailable => Self::CredentialUnavailable,
            ErrorCode::UpstreamTimeout => Self::UpstreamTimeout,
            ErrorCode::RequestTimeout => Self::RequestTimeout,
            ErrorCode::Internal => Self::InternalError,
            ErrorCode::Overloaded => Self::Overloaded,
            ErrorCode::Shutdown => Self::Shutdown,
        }
    }
}

impl DenialSource {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Upstream => "upstream",
        }
    }
}

// === impl RequestRecord ===

impl<'a> RequestRecord<'a> {
    /// Derives the record (see the crate's schema).
    ///
    /// `status` is what the caller got (ignored when `cancelled`, which
    /// records 499); `error` is the response's [`ErrorCode`] extension,
    /// present exactly when the proxy made the response; `duration` runs
    /// from arrival; `now` becomes `ts` and the reference for token age.
    pub fn from_parts(
        meta: &'a RequestMeta,
        facts: &'a RequestFacts,
        status: StatusCode,
        error: Option<ErrorCode>,
        duration: Duration,
        cancelled: bool,
        now: SystemTime,
    ) -> Self {
        let status_code = if cancelled {
            CLIENT_CLOSED_REQUEST
        } else {
            status.as_u16()
        };
        let action = match (cancelled, error) {
            (true, _) => Action::ClientCancel,
            (false, Some(_)) if status.is_server_error() => Action::Error,
            (false, Some(_)) => Action::Reject,
            (false, None) => Action::Allow,
        };
        let injected = facts
            .credential
            .as_ref()
            .is_some_and(|c| c.outcome == CredentialOutcome::Injected);
        let refresh_failed = facts.refresh.as_ref().is_some_and(|r| !r.ok);
        let reason = match (cancelled, error) {
            (true, _) => None,
            (false, Some(ErrorCode::CredentialUnavailable)) if refresh_failed => {
                Some(Reason::RefreshFailed)
            }
            (false, Some(code)) => Some(Reason::from_code(code)),
            (false, None) => match status.as_u16() {
                // The upstream refused the credential with one of the
                // route's `retry.statuses` (any 4xx/5xx, not only 401/403)
                // and no new token could be had for the replay.
                s if s >= 400 && injected && facts.retry == Some("refresh_failed") => {
                    Some(Reason::RefreshFailed)
                }
                401 | 403 if injected => Some(Reason::UpstreamDenied),
                s if s >= 400 => Some(Reason::UpstreamError),
                _ => None,
            },
        };
        let denial_source = match (cancelled, error) {
            (true, _) => None,
            _ if status_code < 400 => None,
            (false, Some(_)) => Some(DenialSource::Local),
            (false, None) => Some(DenialSource::Upstream),
        };
        Self {
            kind: "request",
            ts: now,
            request_id: meta.request_id.as_ref().map(RequestId::as_str),
            client: facts.client.as_deref(),
            route: facts.route.as_deref(),
            audit: AuditFields {
                host: meta.host(),
                method: meta.method.as_str(),
                path: meta.uri.path(),
                remote_addr: meta.remote_addr,
                action,
                status_code,
                duration_ms: millis(duration),
            },
            rejected_by: facts.rejected_by,
            upstream_status: facts.upstream_status,
            upstream_ms: facts.upstream_time.map(millis),
            denial_source,
            credential: credential_fields(facts, now),
            refresh: match &facts.refresh {
                Some(r) => RefreshFields {
                    ran: !r.backing_off,
                    trigger: Some(r.trigger),
                    result: Some(match (r.ok, r.backing_off) {
                        (true, _) => "ok",
                        (false, false) => "error",
                        (false, true) => "backing_off",
                    }),
                    duration_ms: Some(millis(r.duration)),
                    error_code: r.oauth_error.as_deref(),
                },
                None => RefreshFields {
                    ran: false,
                    trigger: None,
                    result: None,
                    duration_ms: None,
                    error_code: None,
                },
            },
            retry401: Retry401Fields {
                attempted: facts.retry.is_some() || facts.replaying,
                outcome: facts.retry,
            },
            reason,
        }
    }

    /// Calls `f` with the record as one line of JSON (no newline),
    /// serialised into a reused per-thread buffer. The same bytes as
    /// `serde_json` makes of its `Serialize` impl, written faster (see
    /// `record/write.rs`).
    pub fn with_json<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        with_buf(
            |buf| write::request(buf, self),
            |b| {
                // Only valid UTF-8 is written.
                f(std::str::from_utf8(b).unwrap_or("{}"))
            },
        )
    }

    /// Appends the record as one line of JSON (no newline) to `out`: the
    /// bytes [`with_json`](Self::with_json) gives, for a sink that keeps
    /// its own buffer.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        write::request(out, self);
    }
}

fn credential_fields(facts: &RequestFacts, now: SystemTime) -> CredentialFields<'_> {
    match &facts.credential {
        Some(c) => CredentialFields {
            id: Some(&c.id),
            generation: c.generation,
            outcome: c.outcome.as_str(),
            token_age_s: c.obtained_at.map(|t| secs_between(t, now)),
            token_ttl_s: c.expires_at.map(|t| secs_between(now, t)),
        },
        None => CredentialFields {
            id: facts.route_credential.as_deref(),
            generation: None,
            // The inject layer refuses a value it cannot write without
            // recording a credential fact; it was unavailable all the same.
            outcome: if facts.rejected_by == Some("credential") {
                CredentialOutcome::Unavailable.as_str()
            } else {
                "none"
            },
            token_age_s: None,
            token_ttl_s: None,
        },
    }
}

// === impl RefreshRecord ===

impl<'a> RefreshRecord<'a> {
    /// The record for `event`, which ended at `now`.
    pub fn from_event(event: &'a RefreshEvent, now: SystemTime) -> Self {
        Self {
            kind: "refresh",
            ts: now,
            credential: &event.credential,
            trigger: event.trigger,
            result: if event.ok { "ok" } else { "error" },
            adopted: event.adopted,
            duration_ms: millis(event.duration),
            error: event.error.as_deref(),
            error_code: event.oauth_error.as_deref(),
            generation: event.generation,
            expires_at: event.expires_at,
        }
    }

    /// Calls `f` with the record as one line of JSON (no newline).
    pub fn with_json<R>(&self, f: impl FnOnce(&str) -> R) -> R {
        with_json(self, f)
    }
}

// === helpers ===

/// `b - a` in whole seconds, negative when `b` is earlier.
pub fn secs_between(a: SystemTime, b: SystemTime) -> i64 {
    match b.duration_since(a) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        // Rounded away from zero: a token that expired 0.6 s ago has -1 s
        // left, not 0 (which would read as not yet expired).
        Err(e) => {
            let d = e.duration();
            let secs = d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0));
            i64::try_from(secs).map_or(i64::MIN, |s| -s)
        }
    }
}

/// Milliseconds with microsecond resolution (`12.345`).
pub fn millis(d: Duration) -> f64 {
    // Whole microseconds keep the JSON short; the conversion is exact up to
    // 2^53 us (285 years). Through u64 (saturating at 584,000 years): the
    // same value as from u128 for any real duration, without the slow
    // 128-bit float conversion.
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX) as f64 / 1000.0
}

#[cfg(test)]
mod tests;

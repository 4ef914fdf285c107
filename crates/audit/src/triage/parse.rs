//! Reading one log line into an audit record, leniently.
//!
//! Only the fields triage uses are read; unknown fields are ignored so newer
//! records still parse. A line that is not valid UTF-8, not JSON, not an
//! object with `kind` `request` or `refresh`, lacks a required field
//! (`ts` and `audit` for requests; `ts`, `credential` and `result` for
//! refreshes) or has a field of the wrong type is junk.

use std::time::SystemTime;

use serde::Deserialize;

/// One parsed audit record.
#[derive(Debug)]
pub(crate) enum Record {
    /// `kind: request`.
    Request(Box<RequestRecord>),
    /// `kind: refresh`.
    Refresh(RefreshRecord),
}

impl Record {
    /// When the record was written.
    pub(crate) fn ts(&self) -> SystemTime {
        match self {
            Self::Request(r) => r.ts,
            Self::Refresh(r) => r.ts,
        }
    }
}

/// A request record (the fields triage reads).
#[derive(Debug)]
pub(crate) struct RequestRecord {
    pub(crate) ts: SystemTime,
    pub(crate) route: Option<String>,
    pub(crate) audit: RawAudit,
    pub(crate) rejected_by: Option<String>,
    pub(crate) upstream_status: Option<u16>,
    pub(crate) denial_source: Option<String>,
    pub(crate) credential: RawCredential,
    pub(crate) retry401: RawRetry,
    pub(crate) reason: Option<String>,
}

/// A refresh record (the fields triage reads).
#[derive(Debug)]
pub(crate) struct RefreshRecord {
    pub(crate) ts: SystemTime,
    pub(crate) credential: String,
    pub(crate) ok: bool,
    pub(crate) error: Option<String>,
    pub(crate) error_code: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum RawRecord {
    Request(RawRequest),
    Refresh(RawRefresh),
}

#[derive(Debug, Deserialize)]
struct RawRequest {
    ts: String,
    #[serde(default)]
    route: Option<String>,
    audit: RawAudit,
    #[serde(default)]
    rejected_by: Option<String>,
    #[serde(default)]
    upstream_status: Option<u16>,
    #[serde(default)]
    denial_source: Option<String>,
    #[serde(default)]
    credential: Option<RawCredential>,
    #[serde(default)]
    retry401: Option<RawRetry>,
    #[serde(default)]
    reason: Option<String>,
}

/// The `audit` object of a request record.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawAudit {
    #[serde(default)]
    pub(crate) host: Option<String>,
    #[serde(default)]
    pub(crate) action: Option<String>,
    #[serde(default)]
    pub(crate) status_code: Option<u16>,
}

/// The `credential` object of a request record.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawCredential {
    #[serde(default)]
    pub(crate) id: Option<String>,
    #[serde(default)]
    pub(crate) outcome: Option<String>,
    #[serde(default)]
    pub(crate) token_age_s: Option<f64>,
    #[serde(default)]
    pub(crate) token_ttl_s: Option<f64>,
}

/// The `retry401` object of a request record.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct RawRetry {
    #[serde(default)]
    pub(crate) outcome: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawRefresh {
    ts: String,
    credential: String,
    result: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_code: Option<String>,
}

/// Parses one line (without its newline). `None` means junk. The record
/// may follow a prefix, such as the timestamp `kubectl logs --timestamps`
/// puts first: it is read from the line's first `{`.
pub(crate) fn parse_line(line: &[u8]) -> Option<Record> {
    let start = line.iter().position(|&b| b == b'{')?;
    let text = std::str::from_utf8(line.get(start..)?).ok()?.trim();
    match serde_json::from_str::<RawRecord>(text).ok()? {
        RawRecord::Request(r) => {
            let ts = parse_ts(&r.ts)?;
            Some(Record::Request(Box::new(RequestRecord {
                ts,
                route: r.route,
                audit: r.audit,
                rejected_by: r.rejected_by,
                upstream_status: r.upstream_status,
                denial_source: r.denial_source,
                credential: r.credential.unwrap_or_default(),
                retry401: r.retry401.unwrap_or_default(),
                reason: r.reason,
            })))
        }
        RawRecord::Refresh(r) => {
            let ts = parse_ts(&r.ts)?;
            let ok = match r.result.as_str() {
                "ok" => true,
                "error" => false,
                _ => return None,
            };
            Some(Record::Refresh(RefreshRecord {
                ts,
                credential: r.credential,
                ok,
                error: r.error,
                error_code: r.error_code,
            }))
        }
    }
}

/// Parses an RFC 3339 timestamp: `Z`, or any `+HH:MM` / `-HH:MM` offset
/// (a log shipper may have rewritten latchkey's `Z`).
fn parse_ts(s: &str) -> Option<SystemTime> {
    if !s.is_ascii() {
        return None;
    }
    if let Ok(t) = humantime::parse_rfc3339(s) {
        return Some(t);
    }
    // `...+02:00`: the same instant is `...Z` minus two hours.
    let (local, offset) = s.split_at_checked(s.len().checked_sub(6)?)?;
    let sign = match offset.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let (h, m) = offset.get(1..)?.split_once(':')?;
    let (h, m): (u64, u64) = (h.parse().ok()?, m.parse().ok()?);
    if h > 23 || m > 59 {
        return None;
    }
    let shift = std::time::Duration::from_secs(h * 3600 + m * 60);
    let as_utc = humantime::parse_rfc3339(&format!("{local}Z")).ok()?;
    let t = if sign > 0 {
        as_utc.checked_sub(shift)
    } else {
        as_utc.checked_add(shift)
    }?;
    // The offset can move the instant out of the years the report's
    // formatter takes (1970 to 9999, as the parser): such a line is not
    // a record latchkey wrote, and is skipped like any other junk.
    let since = t.duration_since(SystemTime::UNIX_EPOCH).ok()?;
    (since < LAST_YEAR_END).then_some(t)
}

/// 10000-01-01T00:00:00Z, as seconds since the epoch.
const LAST_YEAR_END: std::time::Duration = std::time::Duration::from_secs(253_402_300_800);

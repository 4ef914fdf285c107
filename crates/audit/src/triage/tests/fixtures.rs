//! Generated audit logs: record builders and the main scenario.

use std::time::SystemTime;

use serde_json::{Value, json};

use super::super::*;

pub(super) fn t(hms: &str) -> String {
    format!("2026-11-23T{hms}Z")
}

pub(super) fn now() -> SystemTime {
    humantime::parse_rfc3339("2026-11-23T12:00:00Z").unwrap()
}

pub(super) fn opts() -> TriageOptions {
    TriageOptions {
        since: None,
        route: None,
        credential: None,
        now: now(),
    }
}

pub(super) fn set(mut v: Value, pointer: &str, value: Value) -> Value {
    *v.pointer_mut(pointer)
        .unwrap_or_else(|| panic!("no {pointer}")) = value;
    v
}

/// A successful request through `route` with `cred` (fresh token).
pub(super) fn ok(ts: &str, route: Option<&str>, cred: Option<&str>) -> Value {
    json!({
        "kind": "request", "ts": t(ts), "request_id": format!("req-{ts}"), "client": "billing",
        "route": route,
        "audit": {"host": "api.example.com", "method": "GET", "path": "/x",
                  "remote_addr": "127.0.0.1:5555", "action": "allow", "status_code": 200,
                  "duration_ms": 12.3},
        "rejected_by": null, "upstream_status": 200, "upstream_ms": 10.1, "denial_source": null,
        "credential": {"id": cred, "generation": 3, "outcome": "injected",
                       "token_age_s": 100, "token_ttl_s": 3000},
        "refresh": {"ran": false, "trigger": null, "result": null, "duration_ms": null,
                    "error_code": null},
        "retry401": {"attempted": false, "outcome": null},
        "reason": null
    })
}

/// The upstream answered `status` to a token of this age and remaining life.
pub(super) fn denied(ts: &str, route: &str, cred: &str, status: u16, age: i64, ttl: i64) -> Value {
    let v = ok(ts, Some(route), Some(cred));
    let v = set(v, "/audit/action", json!("reject"));
    let v = set(v, "/audit/status_code", json!(status));
    let v = set(v, "/upstream_status", json!(status));
    let v = set(v, "/denial_source", json!("upstream"));
    let v = set(v, "/credential/token_age_s", json!(age));
    let v = set(v, "/credential/token_ttl_s", json!(ttl));
    set(v, "/reason", json!("upstream_denied"))
}

/// latchkey had no credential to inject.
pub(super) fn unavailable(ts: &str, route: &str, cred: &str) -> Value {
    let v = ok(ts, Some(route), Some(cred));
    let v = set(v, "/audit/action", json!("error"));
    let v = set(v, "/audit/status_code", json!(503));
    let v = set(v, "/rejected_by", json!("credential"));
    let v = set(v, "/upstream_status", json!(null));
    let v = set(v, "/upstream_ms", json!(null));
    let v = set(v, "/denial_source", json!("local"));
    let v = set(
        v,
        "/credential",
        json!({"id": cred, "generation": null, "outcome": "unavailable",
               "token_age_s": null, "token_ttl_s": null}),
    );
    let v = set(
        v,
        "/refresh",
        json!({"ran": true, "trigger": "expired", "result": "error", "duration_ms": 1.5,
               "error_code": "invalid_grant"}),
    );
    set(v, "/reason", json!("credential_unavailable"))
}

/// A request rejected before any credential was involved.
pub(super) fn rejected(
    ts: &str,
    route: Option<&str>,
    status: u16,
    reason: &str,
    host: &str,
) -> Value {
    let v = ok(ts, route, None);
    let v = set(v, "/audit/action", json!("reject"));
    let v = set(v, "/audit/status_code", json!(status));
    let v = set(v, "/audit/host", json!(host));
    let v = set(v, "/upstream_status", json!(null));
    let v = set(v, "/credential/outcome", json!("none"));
    set(v, "/reason", json!(reason))
}

pub(super) fn refresh(ts: &str, cred: &str, error_code: Option<&str>) -> Value {
    json!({
        "kind": "refresh", "ts": t(ts), "credential": cred, "trigger": "proactive",
        "result": if error_code.is_some() { "error" } else { "ok" }, "adopted": false,
        "duration_ms": 12.0, "error": error_code.map(|c| format!("token endpoint said {c}")),
        "error_code": error_code, "generation": 4, "expires_at": null
    })
}

pub(super) const JUNK: [&[u8]; 8] = [
    b"",
    b"starting latchkey v0.1.0",
    br#"{"kind":"request","ts":"2026-11-23T1"#,
    br#"{"level":"info","message":"listening"}"#,
    br#"{"kind":"heartbeat","ts":"2026-11-23T10:00:00Z"}"#,
    br#"{"kind":"request","ts":"yesterday","audit":{}}"#,
    b"\xff\xfe not utf-8",
    b"   ",
];

pub(super) fn scenario() -> Vec<Value> {
    let (pay, key) = ("payments", "payments-key");
    let search = "search-token";
    vec![
        ok("10:00:00", Some(pay), Some(key)),
        ok("10:01:00", Some(pay), Some(key)),
        ok("10:02:00", Some(pay), Some(key)),
        denied("10:05:00", pay, key, 403, 20, 3000),
        denied("10:07:00", pay, key, 403, 40, 2900),
        denied("10:06:00", pay, key, 403, 30, 2950), // out of order on purpose
        refresh("10:30:00", "crm-oauth", None),
        refresh("10:42:00", "crm-oauth", Some("invalid_grant")),
        unavailable("10:45:00", "crm", "crm-oauth"),
        refresh("10:47:00", "crm-oauth", Some("invalid_grant")),
        unavailable("10:50:00", "crm", "crm-oauth"),
        refresh("10:52:00", "crm-oauth", Some("invalid_grant")),
        set(
            ok("11:00:00", Some("search"), Some(search)),
            "/retry401",
            json!({"attempted": true, "outcome": "recovered"}),
        ),
        denied("11:01:00", "search", search, 401, 3602, -2),
        set(
            set(
                set(
                    ok("11:02:00", Some("search"), Some(search)),
                    "/audit/status_code",
                    json!(502),
                ),
                "/upstream_status",
                json!(null),
            ),
            "/reason",
            json!("upstream_unreachable"),
        ),
        rejected("11:10:00", None, 404, "no_route", "nowhere.example"),
        rejected(
            "11:11:00",
            None,
            401,
            "client_unauthenticated",
            "api.example.com",
        ),
    ]
}

/// Records as JSON lines with the junk lines spread between them.
pub(super) fn log(records: &[Value]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if let Some(junk) = JUNK.get(i) {
            out.extend_from_slice(junk);
            out.push(b'\n');
        }
        out.extend_from_slice(r.to_string().as_bytes());
        out.push(b'\n');
    }
    out
}

pub(super) fn run_triage(input: &[u8], opts: &TriageOptions) -> Report {
    triage(input, opts).unwrap()
}

pub(super) fn find(report: &Report, kind: FindingKind) -> &Finding {
    report
        .findings
        .iter()
        .find(|f| f.kind == kind)
        .unwrap_or_else(|| panic!("no {kind:?}"))
}

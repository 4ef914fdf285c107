//! The request record's JSON, written by hand: byte-for-byte what
//! `serde_json` makes of the derived `Serialize` impl (the tests check
//! that), at a fraction of the cost. Keys are literals (serde_json escapes
//! every key, byte by byte), and a value is escaped only if it has a byte
//! that needs it (ids, methods, hosts and paths almost never do).
//!
//! It is the one record written per request; refresh records keep the
//! derived impl.

use super::{
    AuditFields, CredentialFields, RefreshFields, RequestRecord, Retry401Fields, Serialize,
};
use std::io::Write as _;
use std::time::SystemTime;

/// Appends `record` as one line of JSON (no newline) to `out`.
pub(super) fn request(out: &mut Vec<u8>, r: &RequestRecord<'_>) {
    out.extend_from_slice(b"{\"kind\":");
    string(out, r.kind);
    out.extend_from_slice(b",\"ts\":");
    ts(out, r.ts);
    out.extend_from_slice(b",\"request_id\":");
    opt_string(out, r.request_id);
    out.extend_from_slice(b",\"client\":");
    opt_string(out, r.client);
    out.extend_from_slice(b",\"route\":");
    opt_string(out, r.route);
    out.extend_from_slice(b",\"audit\":");
    audit(out, &r.audit);
    out.extend_from_slice(b",\"rejected_by\":");
    opt_string(out, r.rejected_by);
    out.extend_from_slice(b",\"upstream_status\":");
    opt_int(out, r.upstream_status.map(u64::from));
    out.extend_from_slice(b",\"upstream_ms\":");
    opt_float(out, r.upstream_ms);
    out.extend_from_slice(b",\"denial_source\":");
    opt_string(out, r.denial_source.map(|d| d.as_str()));
    out.extend_from_slice(b",\"credential\":");
    credential(out, &r.credential);
    out.extend_from_slice(b",\"refresh\":");
    refresh(out, &r.refresh);
    out.extend_from_slice(b",\"retry401\":");
    retry401(out, &r.retry401);
    out.extend_from_slice(b",\"reason\":");
    opt_string(out, r.reason.map(|r| r.as_str()));
    out.push(b'}');
}

fn audit(out: &mut Vec<u8>, a: &AuditFields<'_>) {
    out.extend_from_slice(b"{\"host\":");
    string(out, a.host);
    out.extend_from_slice(b",\"method\":");
    string(out, a.method);
    out.extend_from_slice(b",\"path\":");
    string(out, a.path);
    out.extend_from_slice(b",\"remote_addr\":");
    match a.remote_addr {
        // An address never needs escaping.
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => null(out),
    }
    out.extend_from_slice(b",\"action\":");
    string(out, a.action.as_str());
    out.extend_from_slice(b",\"status_code\":");
    int(out, u64::from(a.status_code));
    out.extend_from_slice(b",\"duration_ms\":");
    float(out, a.duration_ms);
    out.push(b'}');
}

fn credential(out: &mut Vec<u8>, c: &CredentialFields<'_>) {
    out.extend_from_slice(b"{\"id\":");
    opt_string(out, c.id);
    out.extend_from_slice(b",\"generation\":");
    opt_int(out, c.generation);
    out.extend_from_slice(b",\"outcome\":");
    string(out, c.outcome);
    out.extend_from_slice(b",\"token_age_s\":");
    opt_signed(out, c.token_age_s);
    out.extend_from_slice(b",\"token_ttl_s\":");
    opt_signed(out, c.token_ttl_s);
    out.push(b'}');
}

fn refresh(out: &mut Vec<u8>, r: &RefreshFields<'_>) {
    out.extend_from_slice(b"{\"ran\":");
    boolean(out, r.ran);
    out.extend_from_slice(b",\"trigger\":");
    opt_string(out, r.trigger);
    out.extend_from_slice(b",\"result\":");
    opt_string(out, r.result);
    out.extend_from_slice(b",\"duration_ms\":");
    opt_float(out, r.duration_ms);
    out.extend_from_slice(b",\"error_code\":");
    opt_string(out, r.error_code);
    out.push(b'}');
}

fn retry401(out: &mut Vec<u8>, r: &Retry401Fields) {
    out.extend_from_slice(b"{\"attempted\":");
    boolean(out, r.attempted);
    out.extend_from_slice(b",\"outcome\":");
    opt_string(out, r.outcome);
    out.push(b'}');
}

// === values ===

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

fn boolean(out: &mut Vec<u8>, b: bool) {
    out.extend_from_slice(if b { b"true" } else { b"false" });
}

/// A JSON string. Escaping is serde_json's, for the rare value that needs
/// it: a control character, `"` or `\`.
fn string(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = s.serialize(&mut serde_json::Serializer::new(&mut *out));
    }
}

fn opt_string(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => string(out, s),
        None => null(out),
    }
}

fn int(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn opt_int(out: &mut Vec<u8>, n: Option<u64>) {
    match n {
        Some(n) => int(out, n),
        None => null(out),
    }
}

fn opt_signed(out: &mut Vec<u8>, n: Option<i64>) {
    match n {
        Some(n) => out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes()),
        None => null(out),
    }
}

/// serde_json's own float format (shortest round-trip form, `null` if not
/// finite); only strings are worth writing by hand.
fn float(out: &mut Vec<u8>, f: f64) {
    // Writing into a Vec cannot fail.
    let _ = f.serialize(&mut serde_json::Serializer::new(&mut *out));
}

fn opt_float(out: &mut Vec<u8>, f: Option<f64>) {
    match f {
        Some(f) => float(out, f),
        None => null(out),
    }
}

fn ts(out: &mut Vec<u8>, t: SystemTime) {
    // RFC 3339 never needs escaping.
    let _ = write!(out, "\"{}\"", humantime::format_rfc3339_millis(t));
}

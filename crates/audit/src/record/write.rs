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
use std::cell::Cell;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

/// Appends `$head`, the JSON string `$value` and `$tail` to `$out`: as one
/// literal piece (made at compile time) when `$value` is `$usual`, a plain
/// word; the comparison with a short constant is a load or two, not a
/// `memcmp` call.
macro_rules! between {
    ($out:expr, $head:literal, $value:expr, $usual:literal, $tail:literal) => {
        if $value == $usual {
            $out.extend_from_slice(concat!($head, "\"", $usual, "\"", $tail).as_bytes());
        } else {
            $out.extend_from_slice($head.as_bytes());
            string($out, $value);
            $out.extend_from_slice($tail.as_bytes());
        }
    };
}

/// Appends `record` as one line of JSON (no newline) to `out`.
///
/// Runs of literal text are written in one piece where a value is `null`
/// or a whole object is at its default (no refresh, no retry): the common
/// request is mostly those.
pub(super) fn request(out: &mut Vec<u8>, r: &RequestRecord<'_>) {
    // One record is ~600 bytes; the buffer is reused, so this rarely grows.
    out.reserve(768);
    // `kind` is always `request` (a public field, so checked).
    between!(out, "{\"kind\":", r.kind, "request", ",\"ts\":");
    ts(out, r.ts);
    out.extend_from_slice(b",\"request_id\":");
    opt_string(out, r.request_id);
    out.extend_from_slice(b",\"client\":");
    opt_string(out, r.client);
    out.extend_from_slice(b",\"route\":");
    opt_string(out, r.route);
    out.extend_from_slice(b",\"audit\":");
    audit(out, &r.audit);
    match r.rejected_by {
        Some(s) => {
            out.extend_from_slice(b",\"rejected_by\":");
            string(out, s);
        }
        None => out.extend_from_slice(b",\"rejected_by\":null"),
    }
    match r.upstream_status {
        Some(s) => {
            out.extend_from_slice(b",\"upstream_status\":");
            int(out, u64::from(s));
        }
        None => out.extend_from_slice(b",\"upstream_status\":null"),
    }
    out.extend_from_slice(b",\"upstream_ms\":");
    opt_float(out, r.upstream_ms);
    match r.denial_source {
        Some(d) => {
            out.extend_from_slice(b",\"denial_source\":");
            closed(out, d.as_str());
        }
        None => out.extend_from_slice(b",\"denial_source\":null"),
    }
    out.extend_from_slice(b",\"credential\":");
    credential(out, &r.credential);
    refresh(out, &r.refresh);
    retry401(out, &r.retry401);
    match r.reason {
        Some(reason) => {
            out.extend_from_slice(b",\"reason\":");
            closed(out, reason.as_str());
            out.push(b'}');
        }
        None => out.extend_from_slice(b",\"reason\":null}"),
    }
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
        Some(addr) => socket_addr(out, addr),
        None => null(out),
    }
    out.extend_from_slice(b",\"action\":");
    closed(out, a.action.as_str());
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
    // Almost always `injected`.
    between!(
        out,
        ",\"outcome\":",
        c.outcome,
        "injected",
        ",\"token_age_s\":"
    );
    opt_signed(out, c.token_age_s);
    out.extend_from_slice(b",\"token_ttl_s\":");
    opt_signed(out, c.token_ttl_s);
    out.push(b'}');
}

/// `,"refresh":{...}`.
fn refresh(out: &mut Vec<u8>, r: &RefreshFields<'_>) {
    if let RefreshFields {
        ran: false,
        trigger: None,
        result: None,
        duration_ms: None,
        error_code: None,
    } = r
    {
        out.extend_from_slice(
            b",\"refresh\":{\"ran\":false,\"trigger\":null,\"result\":null,\"duration_ms\":null,\"error_code\":null}",
        );
        return;
    }
    out.extend_from_slice(b",\"refresh\":{\"ran\":");
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

/// `,"retry401":{...}`.
fn retry401(out: &mut Vec<u8>, r: &Retry401Fields) {
    if let Retry401Fields {
        attempted: false,
        outcome: None,
    } = r
    {
        out.extend_from_slice(b",\"retry401\":{\"attempted\":false,\"outcome\":null}");
        return;
    }
    out.extend_from_slice(b",\"retry401\":{\"attempted\":");
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
    if plain(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        // Writing a &str into a Vec cannot fail.
        let _ = s.serialize(&mut serde_json::Serializer::new(&mut *out));
    }
}

/// Whether `s` needs no escaping in a JSON string: no byte below 0x20, no
/// `"` and no `\`.
///
/// Eight bytes at a time (the strings here are mostly 3 to 40 bytes: a
/// byte loop, or a vector loop that only starts at 32 or 64 bytes, costs
/// several instructions per byte), the last word overlapping the one
/// before it rather than a byte loop for the tail.
fn plain(s: &[u8]) -> bool {
    let n = s.len();
    if n >= 8 {
        let mut i = 0;
        while i + 8 < n {
            if special(word(s, i)) {
                return false;
            }
            i += 8;
        }
        !special(word(s, n - 8))
    } else if n >= 4 {
        // Two overlapping halves cover 4 to 7 bytes.
        let half = |at: usize| s.get(at..at + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
        match (half(0), half(n - 4)) {
            (Some(lo), Some(hi)) => !special(
                u64::from(u32::from_le_bytes(lo)) | u64::from(u32::from_le_bytes(hi)) << 32,
            ),
            _ => false,
        }
    } else {
        s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\')
    }
}

/// The eight bytes of `s` from `at` (callers stay in bounds; out of
/// bounds reads as zero bytes, which count as special: never "plain" by
/// mistake).
fn word(s: &[u8], at: usize) -> u64 {
    s.get(at..at + 8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_le_bytes)
}

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Whether any byte of `w` is below 0x20, `"` or `\`. Exact for the word
/// as a whole ("has a byte less than n", from Bit Twiddling Hacks: a borrow
/// can only flag a byte above one that really is below `n`).
fn special(w: u64) -> bool {
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let control = below(w, 0x20);
    let quote = below(w ^ (ONES * u64::from(b'"')), 1);
    let backslash = below(w ^ (ONES * u64::from(b'\\')), 1);
    (control | quote | backslash) != 0
}

/// A wire name from a closed set of the crate's own (`Action`, `Reason`,
/// `DenialSource`): plain ASCII words, never in need of escaping.
fn closed(out: &mut Vec<u8>, s: &'static str) {
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
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

/// serde_json's float format (shortest round-trip form, `null` if not
/// finite). Durations are whole microseconds in milliseconds (`n / 1000`),
/// whose shortest form is the decimal `n / 1000` itself with trailing
/// zeros dropped (any shorter decimal is at least 0.001 away, far more than
/// half the float spacing below 10^12): those are written with integer
/// arithmetic, anything else by serde_json.
fn float(out: &mut Vec<u8>, f: f64) {
    // Not -0.0, which serde_json writes as `-0.0`.
    if f.is_sign_positive() && f < 1e12 {
        // 0 <= micros < 10^15: the cast is exact. Adding a half rather
        // than calling `round` (a libm call): a value it rounds differently
        // fails the check below and takes the slow path.
        let n = (f * 1000.0 + 0.5) as u64;
        if n as f64 / 1000.0 == f {
            let mut itoa = itoa::Buffer::new();
            out.extend_from_slice(itoa.format(n / 1000).as_bytes());
            let frac = n % 1000;
            // ASCII digits from values < 10.
            let digits = [
                b'.',
                b'0' + (frac / 100) as u8,
                b'0' + (frac / 10 % 10) as u8,
                b'0' + (frac % 10) as u8,
            ];
            // `.0` for whole milliseconds, else no trailing zeros.
            let len = if frac.is_multiple_of(100) {
                2
            } else if frac.is_multiple_of(10) {
                3
            } else {
                4
            };
            out.extend_from_slice(&digits[..len]);
            return;
        }
    }
    // Writing into a Vec cannot fail.
    let _ = f.serialize(&mut serde_json::Serializer::new(&mut *out));
}

fn opt_float(out: &mut Vec<u8>, f: Option<f64>) {
    match f {
        Some(f) => float(out, f),
        None => null(out),
    }
}

/// As `SocketAddr`'s `Display` (which is slow for IPv4: it formats into a
/// scratch buffer to support padding). Never needs escaping.
fn socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(v4) => {
            out.push(b'"');
            let mut itoa = itoa::Buffer::new();
            for (i, octet) in v4.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(itoa.format(octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(itoa.format(v4.port()).as_bytes());
            out.push(b'"');
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "\"{addr}\"");
        }
    }
}

thread_local! {
    /// The last whole second formatted, and its `YYYY-MM-DDTHH:MM:SS`.
    static SECOND: Cell<(u64, [u8; 19])> = const { Cell::new((u64::MAX, [0; 19])) };
}

/// As `humantime::format_rfc3339_millis` (`2026-11-23T01:02:03.456Z`),
/// formatting the date and time only when the second changes.
fn ts(out: &mut Vec<u8>, t: SystemTime) {
    let Ok(since) = t.duration_since(SystemTime::UNIX_EPOCH) else {
        let _ = write!(out, "\"{}\"", humantime::format_rfc3339_millis(t));
        return;
    };
    let secs = since.as_secs();
    let (cached, mut prefix) = SECOND.with(Cell::get);
    if cached != secs {
        let whole = SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        let s = humantime::format_rfc3339_seconds(whole).to_string();
        match <[u8; 19]>::try_from(s.strip_suffix('Z').unwrap_or(&s).as_bytes()) {
            Ok(p) => prefix = p,
            // Years past 9999: not worth caching.
            Err(_) => {
                let _ = write!(out, "\"{}\"", humantime::format_rfc3339_millis(t));
                return;
            }
        }
        SECOND.with(|c| c.set((secs, prefix)));
    }
    let millis = since.subsec_millis();
    out.push(b'"');
    out.extend_from_slice(&prefix);
    // Three digits, zero-padded (millis < 1000); ASCII digits from u32s < 10.
    out.extend_from_slice(&[
        b'.',
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
        b'Z',
        b'"',
    ]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check agrees with the byte-by-byte definition
    /// for every length up to 40, with each kind of special byte (and the
    /// bytes next to them) at every position.
    #[test]
    fn plain_is_exact() {
        let by_bytes = |s: &[u8]| s.iter().all(|&b| b >= 0x20 && b != b'"' && b != b'\\');
        let mut probes: Vec<u8> = vec![0x00, 0x09, 0x1f, 0x20, b'"', b'#', b'!', b'\\'];
        probes.extend([b'[', b']', 0x7f, 0x80, 0xa2, 0xdc, 0xff]);
        for len in 0..=40 {
            let base: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(plain(&base), "len {len}");
            for at in 0..len {
                for &p in &probes {
                    let mut s = base.clone();
                    s[at] = p;
                    assert_eq!(plain(&s), by_bytes(&s), "len {len}, {p:#04x} at {at}");
                    // Next to a high byte, which must not hide it.
                    if at + 1 < len {
                        s[at + 1] = 0xff;
                        assert_eq!(
                            plain(&s),
                            by_bytes(&s),
                            "len {len}, {p:#04x} at {at}, 0xff after"
                        );
                    }
                }
            }
        }
        // Every pair of byte values, in a string long enough for words.
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [b'x', b'x', b'x', a, b, b'x', b'x', b'x', b'x'];
                assert_eq!(plain(&s), by_bytes(&s), "{a:#04x} {b:#04x}");
            }
        }
    }

    fn serde(f: f64) -> String {
        serde_json::to_string(&f).unwrap()
    }

    fn ours(f: f64) -> String {
        let mut out = Vec::new();
        float(&mut out, f);
        String::from_utf8(out).unwrap()
    }

    /// The integer fast path writes exactly what serde_json writes, for
    /// every kind of millisecond value the records hold and the edges of
    /// the fast path.
    #[test]
    fn floats_are_exactly_serde_jsons() {
        let mut micros: Vec<u64> = (0..=20_000).collect();
        micros.extend((0..2_000).map(|i| i * 999_983 + 7));
        micros.extend([
            999_999,
            1_000_000,
            1_234_567,
            86_400_000_000,
            999_999_999_999_999,
            1_000_000_000_000_000,
            (1 << 53) - 1,
            1 << 53,
        ]);
        for n in micros {
            let f = n as f64 / 1000.0;
            assert_eq!(ours(f), serde(f), "{n} us");
        }
        for f in [
            -0.0,
            -1.5,
            0.1,
            1e-7,
            1.0 / 3.0,
            1e12,
            1e12 - 0.001,
            1e16,
            f64::MAX,
            f64::MIN_POSITIVE,
            f64::NAN,
            f64::INFINITY,
            crate::record::millis(std::time::Duration::MAX),
        ] {
            assert_eq!(ours(f), serde(f), "{f:?}");
        }
    }
}

//! Header rewriting shared by the forwarder: hop-by-hop headers (RFC 9110
//! section 7.6.1) and `X-Forwarded-*`.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, header};
use std::net::IpAddr;

/// Headers that describe one connection and must not be forwarded.
///
/// Not `Trailer` (RFC 9110 6.6.2: it announces the message's trailer
/// fields, end to end): hyper's HTTP/1.1 side sends only the trailers a
/// `Trailer` header names, so removing it dropped every trailer on the
/// way to or from an HTTP/1.1 peer (gRPC-Web's status, checksums).
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The body length a request declares (`Content-Length`), if it declares
/// one that parses.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
}

/// `x-forwarded-for`
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// `x-forwarded-host`
pub const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Whether the request is a WebSocket handshake (`Connection: upgrade` plus
/// `Upgrade: websocket`): the one upgrade tunnelled. Any other (`h2c`
/// above all, the known smuggling vector: a tunnel to the upstream that
/// skips routing, path checks, client routes and the audit trail) is not
/// an upgrade here, so its `Upgrade` header is removed like any hop-by-hop
/// one and the request goes on as a plain one, as Envoy does by default.
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    // Most requests have no `Upgrade`: one probe, as before this checked
    // the protocol.
    if !headers.contains_key(header::UPGRADE) {
        return false;
    }
    offers_websocket(headers) && connection_has(headers, "upgrade")
}

/// Whether `Upgrade` names `websocket` (among others, on a request). A
/// 101 is checked with this alone: it must switch to WebSocket, and a
/// server that leaves out its `Connection: upgrade` still means it.
pub fn offers_websocket(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            let name = p.trim().split('/').next().unwrap_or_default();
            name.eq_ignore_ascii_case("websocket")
        })
}

/// Headers `Connection` may not name: removing them would change how the
/// message is framed (`Content-Length`) or routed (`Host`), not drop a
/// hop's option.
fn protected(name: &HeaderName) -> bool {
    name == header::HOST || name == header::CONTENT_LENGTH
}

fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Removes hop-by-hop headers, including any named in `Connection`.
///
/// With `keep_upgrade` (a WebSocket handshake, [`is_upgrade`]), the
/// message leaves with `Connection: upgrade` and `Upgrade: websocket`:
/// only the one protocol tunnelled, whatever else the caller listed
/// (`Upgrade: websocket, h2c` would let an h2c upstream switch to h2c and
/// carry requests that skip routing and the audit trail). `TE: trailers`
/// survives because gRPC over HTTP/2 needs it.
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // Most requests carry none: one pass over the names instead of a hash
    // probe per hop-by-hop name.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| !protected(n))
        .collect();
    let te_trailers = headers
        .get(header::TE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
    for name in named.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// Readies an upstream's response head for the caller: hop-by-hop
/// headers go as in [`remove_hop_by_hop`] (`switching`: a 101 to
/// WebSocket), and so does any `x-latchkey-*` header the upstream set.
/// That prefix is latchkey's own (`x-latchkey-error` marks the proxy's
/// errors, `x-latchkey-retry` the 401 retry's outcome), so a caller can
/// trust it never comes from an upstream.
///
/// Returns false when the upstream's `Transfer-Encoding` was anything but
/// one `chunked` (`gzip, chunked`): hyper takes off the chunking only, so
/// a body would reach the caller still gzipped, with the header that says
/// so removed as hop-by-hop. A response with a body in such a coding
/// cannot be passed on (nginx answers 502 too); one without (a HEAD's, a
/// 304) can.
#[must_use]
pub fn clean_response(headers: &mut HeaderMap, switching: bool) -> bool {
    // One pass over the names, as in `remove_hop_by_hop`.
    if !headers.keys().any(|n| is_hop_by_hop(n) || is_latchkeys(n)) {
        return true;
    }
    let plain = !unsupported_transfer_coding(headers);
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|n| is_latchkeys(n))
        .cloned()
        .collect();
    for name in &ours {
        headers.remove(name);
    }
    // RFC 9112 6.3: with `Transfer-Encoding`, `Content-Length` is void and
    // the client read the body as chunked; passed on next to the
    // re-framed body, the stale length would cut it short or hang the
    // caller. nginx and Envoy drop it too.
    if headers.contains_key(http::header::TRANSFER_ENCODING) {
        headers.remove(http::header::CONTENT_LENGTH);
    }
    remove_hop_by_hop(headers, switching);
    plain
}

/// Names a trailer section may not carry besides the hop-by-hop ones: they
/// frame (`Content-Length`), route (`Host`) or modify (`TE`) the message,
/// which a trailer comes too late to do (RFC 9110 6.5.1), or are headers
/// latchkey writes itself (`X-Forwarded-*`, `x-request-id`): a trailer of
/// the name would give an upstream a second, unchecked value.
static NOT_IN_TRAILERS: [HeaderName; 8] = [
    header::HOST,
    header::CONTENT_LENGTH,
    header::TE,
    header::TRAILER,
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_FORWARDED_HOST,
    crate::context::RequestId::HEADER,
];

/// Readies a trailer section to be passed on, either way: hop-by-hop
/// names go (an h2 peer refuses a message whose trailers carry one, and
/// the request or the response would never end) with any name a trailer
/// `Connection` lists, and so do [`NOT_IN_TRAILERS`].
pub fn clean_trailers(trailers: &mut HeaderMap) {
    // Most trailer sections (gRPC's status, checksums) carry none.
    if !trailers
        .keys()
        .any(|n| is_hop_by_hop(n) || NOT_IN_TRAILERS.contains(n))
    {
        return;
    }
    remove_hop_by_hop(trailers, false);
    for name in &NOT_IN_TRAILERS {
        trailers.remove(name);
    }
}

/// An upstream's trailers as [`clean_trailers`] leaves them, without any
/// `x-latchkey-*` name either (as [`clean_response`] does for the head).
pub fn clean_response_trailers(trailers: &mut HeaderMap) {
    let ours: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| is_latchkeys(n))
        .cloned()
        .collect();
    for name in &ours {
        trailers.remove(name);
    }
    clean_trailers(trailers);
}

/// Whether a request's `Transfer-Encoding` is anything but one `chunked`
/// (any case): a coding latchkey does not decode (`gzip, chunked`: hyper
/// takes off the chunking only) would reach the upstream still applied,
/// with the header that says so removed as hop-by-hop. RFC 9112 6.1 makes
/// it a 501 (nginx's answer); latchkey refuses it as a `bad_request`.
pub fn unsupported_transfer_coding(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (values.next(), values.next()) {
        (None, _) => false,
        (Some(v), None) => !v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => true,
    }
}

/// Whether `name` has latchkey's own prefix, `x-latchkey-`.
fn is_latchkeys(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-latchkey-")
}

/// Whether `name` is hop-by-hop by itself (names listed in `Connection`
/// aside). The length test first: few common names have one of these
/// lengths, and it spares comparing each name with all eight.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(name.as_str().len(), 2 | 7 | 10 | 16..=19) && HOP_BY_HOP.contains(name)
}

/// Writes `ip` into `text` as its `Display` does and returns the length;
/// IPv4 by hand (`Ipv4Addr`'s `Display` formats into a scratch buffer for
/// padding, and this runs per request).
fn ip_text(ip: IpAddr, text: &mut [u8; MAX_IP_LEN]) -> usize {
    match ip {
        IpAddr::V4(v4) => {
            let mut len = 0;
            let mut put = |b: u8| {
                if let Some(slot) = text.get_mut(len) {
                    *slot = b;
                    len += 1;
                }
            };
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    put(b'.');
                }
                if octet >= 100 {
                    put(b'0' + octet / 100);
                }
                if octet >= 10 {
                    put(b'0' + octet / 10 % 10);
                }
                put(b'0' + octet % 10);
            }
            len
        }
        IpAddr::V6(v6) => {
            use std::io::Write as _;
            let mut cursor = std::io::Cursor::new(&mut text[..]);
            // At most 45 bytes: it fits.
            let _ = write!(cursor, "{v6}");
            usize::try_from(cursor.position()).unwrap_or(0)
        }
    }
}

/// The longest text [`ip_text`] writes (`ffff:ffff:...:255.255.255.255`).
const MAX_IP_LEN: usize = 45;

/// Appends the caller to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (the host the caller asked for, shared with the
/// caller's `Host` value, not copied).
pub fn add_forwarded(
    headers: &mut HeaderMap,
    remote: Option<IpAddr>,
    tls: bool,
    host: Option<HeaderValue>,
) {
    if let Some(ip) = remote {
        // Every prior line, in order (a proxy before us may have added its
        // own line, e.g. HAProxy's `option forwardfor`); a line that is not
        // visible ASCII is dropped, not extended.
        let mut prior = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter(|v| !v.is_empty() && v.to_str().is_ok())
            .map(HeaderValue::as_bytes);
        let mut text = [0u8; MAX_IP_LEN];
        let len = ip_text(ip, &mut text);
        let ip = text.get(..len).unwrap_or_default();
        // One allocation of the exact size in the usual case (at most one
        // prior line), which becomes the value.
        let value = match (prior.next(), prior.next()) {
            (None, _) => Bytes::copy_from_slice(ip),
            (Some(p), None) => {
                let mut v = Vec::with_capacity(p.len() + 2 + ip.len());
                v.extend_from_slice(p);
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip);
                Bytes::from(v)
            }
            (Some(a), Some(b)) => {
                let mut v = [a, b].join(&b", "[..]);
                for p in prior {
                    v.extend_from_slice(b", ");
                    v.extend_from_slice(p);
                }
                v.extend_from_slice(b", ");
                v.extend_from_slice(ip);
                Bytes::from(v)
            }
        };
        if let Ok(v) = HeaderValue::from_maybe_shared(value) {
            headers.insert(X_FORWARDED_FOR, v);
        }
    }
    headers.insert(
        X_FORWARDED_PROTO,
        HeaderValue::from_static(if tls { "https" } else { "http" }),
    );
    match host {
        Some(h) => {
            headers.insert(X_FORWARDED_HOST, h);
        }
        // Never the caller's own value (a request without `Host`).
        None => {
            headers.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret-hop".parse().unwrap());
        h.insert("x-secret-hop", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("x-stays", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert!(h.get("x-secret-hop").is_none());
        assert!(h.get("connection").is_none());
        assert!(h.get("keep-alive").is_none());
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["x-stays"], "1");
    }

    #[test]
    fn upgrade_survives_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    /// Only a WebSocket handshake is an upgrade; `h2c` (a tunnel that
    /// would skip routing and the audit trail) is stripped like any
    /// hop-by-hop header.
    #[test]
    fn only_websocket_is_an_upgrade() {
        let with = |upgrade: &str| {
            let mut h = HeaderMap::new();
            h.insert("connection", "Upgrade, HTTP2-Settings".parse().unwrap());
            h.insert("upgrade", upgrade.parse().unwrap());
            h
        };
        assert!(is_upgrade(&with("websocket")));
        assert!(is_upgrade(&with("WebSocket")));
        for other in ["h2c", "TLS/1.0", "h2c, foo"] {
            let mut h = with(other);
            assert!(!is_upgrade(&h), "{other}");
            let upgrade = is_upgrade(&h);
            remove_hop_by_hop(&mut h, upgrade);
            assert!(h.get("upgrade").is_none() && h.get("connection").is_none());
        }
    }

    /// A handshake that lists another protocol beside `websocket`, on
    /// one line or two, reaches the upstream offering `websocket` only:
    /// an h2c upstream must not be able to switch to h2c.
    #[test]
    fn only_websocket_is_offered_upstream() {
        let mut one = HeaderMap::new();
        one.insert("connection", "Upgrade".parse().unwrap());
        one.insert("upgrade", "websocket, h2c".parse().unwrap());
        let mut two = HeaderMap::new();
        two.insert("connection", "Upgrade".parse().unwrap());
        two.append("upgrade", "h2c".parse().unwrap());
        two.append("upgrade", "websocket".parse().unwrap());
        for mut h in [one, two] {
            assert!(is_upgrade(&h));
            remove_hop_by_hop(&mut h, true);
            let kept: Vec<_> = h.get_all("upgrade").iter().collect();
            assert_eq!(kept, ["websocket"]);
            assert_eq!(h["connection"], "upgrade");
        }
    }

    /// An upstream's own `x-latchkey-*` headers never reach the caller,
    /// with hop-by-hop ones or without.
    #[test]
    fn an_upstreams_latchkey_headers_are_removed() {
        for hop in [false, true] {
            let mut h = HeaderMap::new();
            h.insert(
                "x-latchkey-error",
                "credential_unavailable".parse().unwrap(),
            );
            h.insert("x-latchkey-retry", "recovered".parse().unwrap());
            h.insert("x-latchkey", "kept".parse().unwrap());
            h.insert("content-type", "text/plain".parse().unwrap());
            if hop {
                h.insert("keep-alive", "timeout=5".parse().unwrap());
            }
            assert!(clean_response(&mut h, false));
            let mut names: Vec<&str> = h.keys().map(HeaderName::as_str).collect();
            names.sort_unstable();
            assert_eq!(names, ["content-type", "x-latchkey"], "hop-by-hop: {hop}");
        }
    }

    /// Trailers lose hop-by-hop names, names a trailer `Connection`
    /// lists, and framing, routing and latchkey's own request headers;
    /// an upstream's lose `x-latchkey-*` too. Others stay.
    #[test]
    fn trailers_keep_only_what_may_be_passed_on() {
        let mut t = HeaderMap::new();
        for (k, v) in [
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("te", "trailers"),
            ("keep-alive", "5"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-connection", "close"),
            ("host", "evil.example"),
            ("content-length", "9"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "forged"),
            ("x-latchkey-error", "no_route"),
            ("grpc-status", "0"),
        ] {
            t.insert(k, v.parse().unwrap());
        }
        let mut response = t.clone();
        clean_trailers(&mut t);
        let mut names: Vec<&str> = t.keys().map(HeaderName::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["grpc-status", "x-latchkey-error"]);
        clean_response_trailers(&mut response);
        assert_eq!(response.keys().collect::<Vec<_>>(), ["grpc-status"]);
        let mut plain = HeaderMap::new();
        plain.insert("x-checksum", "abc".parse().unwrap());
        let before = plain.clone();
        clean_response_trailers(&mut plain);
        assert_eq!(plain, before);
    }

    /// Only one `chunked` (any case) is a transfer coding latchkey takes.
    #[test]
    fn only_chunked_alone_is_a_supported_transfer_coding() {
        let te = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::TRANSFER_ENCODING, v.parse().unwrap());
            }
            unsupported_transfer_coding(&h)
        };
        assert!(!te(&[]));
        assert!(!te(&["chunked"]));
        assert!(!te(&["Chunked"]));
        for bad in [
            &["gzip, chunked"][..],
            &["chunked, chunked"],
            &["gzip"],
            &["chunked", "chunked"],
            &["gzip", "chunked"],
        ] {
            assert!(te(bad), "{bad:?}");
        }
    }

    /// `Connection` cannot remove `Host` (routing) or `Content-Length`
    /// (framing).
    #[test]
    fn connection_cannot_name_host_or_content_length() {
        let mut h = HeaderMap::new();
        h.insert(
            "connection",
            "close, host, content-length, x-hop".parse().unwrap(),
        );
        h.insert("host", "a.example".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        h.insert("x-hop", "1".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h["host"], "a.example");
        assert_eq!(h["content-length"], "3");
        assert!(h.get("x-hop").is_none());
    }

    /// Every prior `X-Forwarded-For` line is kept, in order; a caller's
    /// `X-Forwarded-Host` never survives, even without a host to set.
    #[test]
    fn every_forwarded_for_line_is_kept_and_forwarded_host_is_ours() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "10.1.2.3, 10.1.2.4".parse().unwrap());
        h.append("x-forwarded-for", "10.9.9.9".parse().unwrap());
        h.insert("x-forwarded-host", "evil.example".parse().unwrap());
        add_forwarded(&mut h, Some("127.0.0.1".parse().unwrap()), false, None);
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["6.6.6.6, 10.1.2.3, 10.1.2.4, 10.9.9.9, 127.0.0.1"]
        );
        assert!(h.get("x-forwarded-host").is_none());
    }

    #[test]
    fn forwarded_for_appends() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "10.0.0.1".parse().unwrap());
        add_forwarded(
            &mut h,
            Some("127.0.0.1".parse().unwrap()),
            false,
            Some(HeaderValue::from_static("api.local")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.local");
    }

    #[test]
    fn each_hop_by_hop_header_alone_is_removed_and_others_untouched() {
        for name in &HOP_BY_HOP {
            let mut h = HeaderMap::new();
            h.insert(name.clone(), "x".parse().unwrap());
            h.insert("x-stays", "1".parse().unwrap());
            remove_hop_by_hop(&mut h, false);
            assert!(h.get(name).is_none(), "{name}");
            assert_eq!(h.len(), 1);
        }
        let mut h = HeaderMap::new();
        h.insert("x-stays", "1".parse().unwrap());
        h.insert("authorization", "Bearer t".parse().unwrap());
        let before = h.clone();
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h, before);
    }

    #[test]
    fn ip_addresses_are_written_as_display_writes_them() {
        for ip in [
            "0.0.0.0",
            "255.255.255.255",
            "10.0.20.3",
            "127.0.0.1",
            "192.168.100.101",
            "1.10.100.205",
            "::1",
            "2001:db8::ff00:42:8329",
            "::ffff:10.0.0.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "1111:2222:3333:4444:5555:6666:7777:8888",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            let mut text = [0u8; MAX_IP_LEN];
            let len = ip_text(ip, &mut text);
            assert_eq!(&text[..len], ip.to_string().as_bytes());
            let mut h = HeaderMap::new();
            add_forwarded(&mut h, Some(ip), true, None);
            assert_eq!(h["x-forwarded-for"], ip.to_string().as_str());
        }
    }

    #[test]
    fn a_prior_forwarded_for_that_is_not_visible_ascii_is_replaced() {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_bytes(b"10.0.0.1 \xff").unwrap(),
        );
        add_forwarded(&mut h, Some("127.0.0.1".parse().unwrap()), false, None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        h.insert("x-forwarded-for", HeaderValue::from_static(""));
        add_forwarded(&mut h, Some("127.0.0.1".parse().unwrap()), false, None);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}

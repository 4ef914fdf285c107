//! Host + path-prefix routing.
//!
//! Sits after client authentication and before the per-route stacks. A route
//! matches on an exact host (case-insensitive, port ignored), a path prefix, or
//! both. Routes that name the request's host are tried first, then routes with
//! no host; within each set the longest matching prefix wins (a host-only route
//! is the prefix `/`). Prefixes are raw string prefixes, as in nginx `location`
//! and Envoy `prefix`: write `/payments/` to avoid matching `/paymentsfoo`.
//!
//! Lookup does not scan the routes: each set keeps a hash map from prefix to
//! route plus the distinct prefix lengths, longest first, so a lookup costs one
//! hash probe per distinct length (a handful in practice), whatever the number
//! of routes. The maps hash with foldhash: keys are config strings, and
//! SipHash was a visible share of a request's cost.

use std::collections::HashMap as StdHashMap;

type HashMap<K, V> = StdHashMap<K, V, foldhash::fast::RandomState>;

/// A routing table from (host, path) to `T`.
#[derive(Clone, Debug)]
pub struct Router<T> {
    hosts: HashMap<String, PrefixTable<T>>,
    any_host: PrefixTable<T>,
}

#[derive(Clone, Debug)]
struct PrefixTable<T> {
    by_prefix: HashMap<String, T>,
    /// Distinct prefix lengths, longest first.
    lengths: Vec<usize>,
}

impl<T> Default for PrefixTable<T> {
    fn default() -> Self {
        Self {
            by_prefix: HashMap::default(),
            lengths: Vec::new(),
        }
    }
}

impl<T> PrefixTable<T> {
    fn insert(&mut self, prefix: String, value: T) -> Result<(), T> {
        if self.by_prefix.contains_key(&prefix) {
            return Err(value);
        }
        if let Err(pos) = self.lengths.binary_search_by(|l| prefix.len().cmp(l)) {
            self.lengths.insert(pos, prefix.len());
        }
        self.by_prefix.insert(prefix, value);
        Ok(())
    }

    fn lookup(&self, path: &str) -> Option<&T> {
        for &len in &self.lengths {
            if let Some(candidate) = path.get(..len)
                && let Some(v) = self.by_prefix.get(candidate)
            {
                return Some(v);
            }
        }
        None
    }
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            hosts: HashMap::default(),
            any_host: PrefixTable::default(),
        }
    }
}

impl<T> Router<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a route. Returns the value back if the same host and prefix are
    /// already taken (config validation reports that as an ambiguity).
    pub fn insert(&mut self, host: Option<&str>, prefix: Option<&str>, value: T) -> Result<(), T> {
        let prefix = prefix.unwrap_or("/").to_string();
        match host {
            Some(h) => self
                .hosts
                .entry(normalize_host(h))
                .or_default()
                .insert(prefix, value),
            None => self.any_host.insert(prefix, value),
        }
    }

    /// Finds the route for a request. `host` may carry a port and any case.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&T> {
        if !self.hosts.is_empty()
            && let Some(h) = host
        {
            let h = host_without_port(h);
            let table = if h.bytes().any(|b| b.is_ascii_uppercase()) || h.ends_with('.') {
                self.hosts.get(&normalize_host(h))
            } else {
                self.hosts.get(h)
            };
            if let Some(v) = table.and_then(|t| t.lookup(path)) {
                return Some(v);
            }
        }
        self.any_host.lookup(path)
    }

    /// Number of routes.
    pub fn len(&self) -> usize {
        self.any_host.by_prefix.len()
            + self
                .hosts
                .values()
                .map(|t| t.by_prefix.len())
                .sum::<usize>()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The host a request addressed: its `Host` header if that is visible
/// ASCII, else its URI's authority (absolute-form and h2 requests). Any
/// `user:password@` part is dropped: it is never written to an audit
/// record or error, or forwarded in `X-Forwarded-Host`. (Routing takes the
/// host as it came: one with a `user:password@` part matches no host
/// route.)
pub fn request_host<'a>(
    host: Option<&'a http::HeaderValue>,
    uri: &'a http::Uri,
) -> Option<&'a str> {
    // The usual `Host`: visible ASCII without `@`, so there is no
    // userinfo to look for. (`to_str` for the text: `from_utf8` costs more
    // on a string this short, and the text is all that is left to get.)
    if let Some(h) = host
        && plain_host(h.as_bytes())
    {
        return h.to_str().ok();
    }
    host.and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(http::uri::Authority::as_str))
        .map(without_userinfo)
}

/// Whether every byte of `b` is a space or visible ASCII (0x20 to 0x7e)
/// and none is `@`: a `Host` value that `HeaderValue::to_str` accepts and
/// that has no `user:password@` part to drop, so it can be used as it is.
/// (A value this refuses is not wrong, only checked the slow way.)
///
/// Eight bytes at a time, the last word overlapping the one before it: a
/// host is 10 to 40 bytes, where a byte loop costs several instructions a
/// byte (for `X-Forwarded-Host` and the audit record's host).
pub fn plain_host(b: &[u8]) -> bool {
    let n = b.len();
    if n < 8 {
        return b.iter().all(|&c| (0x20..0x7f).contains(&c) && c != b'@');
    }
    let mut i = 0;
    while i + 8 < n {
        if !plain_word(word(b, i)) {
            return false;
        }
        i += 8;
    }
    plain_word(word(b, n - 8))
}

/// The eight bytes of `b` from `at`; out of bounds (callers stay in
/// bounds) reads as zero bytes, which are not plain.
fn word(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes)
}

/// Whether no byte of `w` is below 0x20, 0x7f or above, or `@`. Exact for
/// the word as a whole: "has a byte less than n" (Bit Twiddling Hacks) can
/// only flag a byte above one that really is less, and a byte with its high
/// bit set is caught by the high-bit test itself.
fn plain_word(w: u64) -> bool {
    const ONES: u64 = u64::from_le_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGHS;
    let control = below(w, 0x20);
    let high = w & HIGHS;
    let del = below(w ^ (ONES * 0x7f), 1);
    let at = below(w ^ (ONES * u64::from(b'@')), 1);
    (control | high | del | at) == 0
}

/// `host` without a `userinfo@` prefix.
pub fn without_userinfo(host: &str) -> &str {
    // A byte loop: hosts are short, and `rsplit_once` sets up a `memrchr`
    // (~140 instructions per audit record, where this is ~3 per byte).
    match host.bytes().rposition(|b| b == b'@') {
        Some(at) => host.get(at + 1..).unwrap_or(host),
        None => host,
    }
}

/// Lower-cases a host and drops its port and any trailing dot.
pub fn normalize_host(h: &str) -> String {
    host_without_port(h)
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn host_without_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        // [v6]:port
        return match rest.find(']') {
            Some(end) => &h[..end + 2],
            None => h,
        };
    }
    match h.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The word-at-a-time check agrees with the byte-by-byte definition
    /// for every length up to 40, with each kind of refused byte (and the
    /// bytes next to them) at every position, and for every pair of byte
    /// values side by side; and `request_host` gives what `to_str` and
    /// dropping the userinfo gave.
    #[test]
    fn plain_host_is_exact() {
        let by_bytes = |s: &[u8]| s.iter().all(|&b| (0x20..0x7f).contains(&b) && b != b'@');
        let probes: &[u8] = &[
            0x00, 0x09, 0x1f, 0x20, b'?', b'@', b'A', 0x7e, 0x7f, 0x80, 0xc3, 0xff,
        ];
        for len in 0..=40 {
            let base: Vec<u8> = (0..len).map(|i| b'a' + (i % 26) as u8).collect();
            assert!(plain_host(&base), "len {len}");
            for at in 0..len {
                for &p in probes {
                    let mut s = base.clone();
                    s[at] = p;
                    assert_eq!(plain_host(&s), by_bytes(&s), "len {len}, {p:#04x} at {at}");
                    if at + 1 < len {
                        s[at + 1] = 0xff;
                        assert_eq!(plain_host(&s), by_bytes(&s), "{p:#04x} at {at}, 0xff after");
                        s[at + 1] = 0x00;
                        assert_eq!(plain_host(&s), by_bytes(&s), "{p:#04x} at {at}, 0x00 after");
                    }
                }
            }
        }
        for a in 0..=255u8 {
            for b in 0..=255u8 {
                let s = [b'h', b'o', b's', a, b, b't', b'.', b'i', b'o'];
                assert_eq!(plain_host(&s), by_bytes(&s), "{a:#04x} {b:#04x}");
                let Ok(v) = http::HeaderValue::from_bytes(&s) else {
                    continue;
                };
                let uri: http::Uri = "/".parse().unwrap();
                assert_eq!(
                    request_host(Some(&v), &uri),
                    v.to_str().ok().map(without_userinfo),
                    "{a:#04x} {b:#04x}"
                );
            }
        }
    }

    fn table() -> Router<&'static str> {
        let mut r = Router::new();
        r.insert(None, Some("/payments/"), "payments").unwrap();
        r.insert(None, Some("/payments/v2/"), "payments-v2")
            .unwrap();
        r.insert(None, Some("/"), "fallback").unwrap();
        r.insert(Some("search.internal.example.com"), None, "search")
            .unwrap();
        r.insert(
            Some("Search.Internal.Example.com"),
            Some("/admin/"),
            "search-admin",
        )
        .unwrap();
        r
    }

    /// A `user:password@` part, in the `Host` header or the authority of
    /// an absolute-form or h2 request, is dropped.
    #[test]
    fn the_request_host_never_carries_userinfo() {
        let uri: http::Uri = "http://alice:s3cret@api.example.com:8443/x"
            .parse()
            .unwrap();
        assert_eq!(request_host(None, &uri), Some("api.example.com:8443"));
        let h = http::HeaderValue::from_static("bob:pw@search.example.com");
        let origin: http::Uri = "/x".parse().unwrap();
        assert_eq!(request_host(Some(&h), &origin), Some("search.example.com"));
        let plain = http::HeaderValue::from_static("search.example.com");
        assert_eq!(request_host(Some(&plain), &uri), Some("search.example.com"));
        let bad = http::HeaderValue::from_bytes(b"caf\xe9").unwrap();
        assert_eq!(request_host(Some(&bad), &uri), Some("api.example.com:8443"));
        assert_eq!(request_host(None, &origin), None);
    }

    #[test]
    fn userinfo_is_cut_at_the_last_at_sign() {
        for (host, want) in [
            ("alice:s3cret@api.example.com:8443", "api.example.com:8443"),
            ("a@b@c", "c"),
            ("api.example.com", "api.example.com"),
            ("@h", "h"),
            ("h@", ""),
            ("", ""),
        ] {
            assert_eq!(without_userinfo(host), want, "{host}");
        }
    }

    #[test]
    fn longest_prefix_wins() {
        let r = table();
        assert_eq!(r.route(None, "/payments/charges"), Some(&"payments"));
        assert_eq!(r.route(None, "/payments/v2/x"), Some(&"payments-v2"));
        assert_eq!(r.route(None, "/other"), Some(&"fallback"));
        assert_eq!(
            r.route(Some("unknown.example"), "/payments/"),
            Some(&"payments")
        );
    }

    #[test]
    fn host_routes_first_then_hostless() {
        let r = table();
        assert_eq!(
            r.route(Some("search.internal.example.com"), "/q"),
            Some(&"search")
        );
        assert_eq!(
            r.route(Some("SEARCH.internal.example.com:8080"), "/admin/x"),
            Some(&"search-admin")
        );
        assert_eq!(
            r.route(Some("search.internal.example.com."), "/q"),
            Some(&"search")
        );
    }

    #[test]
    fn no_match_and_duplicates() {
        let mut r: Router<u8> = Router::new();
        r.insert(Some("a.example"), Some("/x/"), 1).unwrap();
        assert_eq!(r.route(Some("a.example"), "/y"), None);
        assert_eq!(r.route(None, "/x/"), None);
        assert_eq!(r.insert(Some("A.example"), Some("/x/"), 2), Err(2));
        // Multi-byte paths never split a character.
        assert_eq!(r.route(Some("a.example"), "/é"), None);
    }

    #[test]
    fn ports_and_ipv6() {
        assert_eq!(host_without_port("example.com:443"), "example.com");
        assert_eq!(host_without_port("[::1]:8080"), "[::1]");
        assert_eq!(host_without_port("[::1]"), "[::1]");
        assert_eq!(normalize_host("EXAMPLE.com."), "example.com");
    }
}

//! Checks split out of `validate.rs`: host matchers, the two listeners,
//! clients sharing a token, the bounds of durations, token endpoint URLs.

use super::{Config, FieldError};
use std::time::Duration;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);
const DAY: Duration = Duration::from_secs(24 * 3600);

/// Durations that hold something (a connection, a lock, a shutdown) and
/// had no upper bound: past these the value is a typo (`5M` is five
/// months; minutes are `m`), not a setting.
pub(super) fn check_duration_bounds(config: &Config, errs: &mut Vec<FieldError>) {
    let mut bounded: Vec<(String, Duration, Duration, &str)> = vec![
        (
            "proxy.drain_timeout".to_owned(),
            config.proxy.drain_timeout,
            HOUR,
            "1h",
        ),
        (
            "secrets.file_poll_interval".to_owned(),
            config.secrets.file_poll_interval,
            HOUR,
            "1h",
        ),
    ];
    if let Some(tls) = &config.proxy.tls {
        bounded.push((
            "proxy.tls.reload_interval".to_owned(),
            tls.reload_interval,
            HOUR,
            "1h",
        ));
    }
    // Polls: each is a read per file per interval, on the blocking pool.
    let mut polls = vec![(
        "secrets.file_poll_interval",
        config.secrets.file_poll_interval,
    )];
    if let Some(tls) = &config.proxy.tls {
        polls.push(("proxy.tls.reload_interval", tls.reload_interval));
    }
    for (field, every) in polls {
        if every < Duration::from_millis(10) {
            errs.push(FieldError::new(
                field,
                "must be at least 10ms (each check reads every watched file)",
            ));
        }
    }
    if let Some(r) = &config.redis {
        // Renewed every third of itself: shorter than a second, a network
        // or scheduling pause lets it lapse mid-refresh, and another
        // replica takes the lock and spends the same refresh token.
        if r.lock_lease < Duration::from_secs(1) {
            errs.push(FieldError::new(
                "redis.lock_lease",
                "must be at least 1s: the lease is renewed every third of it, and one that \
                 lapses mid-refresh lets another replica refresh the same token at once",
            ));
        }
        bounded.push(("redis.lock_lease".to_owned(), r.lock_lease, HOUR, "1h"));
        bounded.push(("redis.timeout".to_owned(), r.timeout, 5 * MINUTE, "5m"));
    }
    for (i, c) in config.credentials.iter().enumerate() {
        // The refresh schedule: a request waits at most `timeout`, a failing
        // credential is retried `backoff_min` doubling to `backoff_max`
        // apart, and a token is refreshed `buffer` before its expiry. Each
        // bound is far past any sensible setting and below a month, so `2M`
        // meant as minutes cannot put the next retry weeks away.
        let r = &c.refresh;
        let at = |f: &str| format!("credentials[{i}].refresh.{f}");
        bounded.push((at("timeout"), r.timeout, HOUR, "1h"));
        bounded.push((at("backoff_min"), r.backoff_min, DAY, "24h"));
        bounded.push((at("backoff_max"), r.backoff_max, DAY, "24h"));
        bounded.push((at("buffer"), r.buffer, 7 * DAY, "7d"));
        // Months and years are refused as written (`de_opt_duration`).
        if let Some(max_age) = r.max_age {
            bounded.push((at("max_age"), max_age, 3650 * DAY, "3650d"));
        }
        if let Some(e) = &c.exec {
            bounded.push((
                format!("credentials[{i}].exec.timeout"),
                e.timeout,
                HOUR,
                "1h",
            ));
        }
    }
    for (i, r) in config.routes.iter().enumerate() {
        bounded.push((format!("routes[{i}].timeout"), r.timeout, 24 * HOUR, "24h"));
        bounded.push((
            format!("routes[{i}].connect_timeout"),
            r.connect_timeout,
            5 * MINUTE,
            "5m",
        ));
    }
    for (path, value, most, text) in bounded {
        if value > most {
            errs.push(FieldError::new(
                path,
                format!("must be at most {text}{}", month_hint(value)),
            ));
        }
    }
}

/// humantime reads `M`/`month` as 30.44 days and `y`/`year` as 365.25
/// days: a value made of those was most likely meant as minutes.
fn month_hint(d: Duration) -> &'static str {
    const MONTH: u64 = 2_630_016;
    const YEAR: u64 = 31_557_600;
    let s = d.as_secs();
    if d.subsec_nanos() == 0 && (s.is_multiple_of(MONTH) || s.is_multiple_of(YEAR)) {
        " (M and month are months, y is years; minutes are m)"
    } else {
        ""
    }
}

/// Settings that are accepted but do nothing where they are (warnings, so
/// an operator does not rely on them): a CA for a plain-http upstream,
/// `refresh` on a static credential.
pub(super) fn ignored_settings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in config.routes.iter().enumerate() {
        if r.ca_file.is_some() && r.upstream.scheme != http::uri::Scheme::HTTPS {
            out.push(format!(
                "routes[{i}].ca_file is ignored: the upstream is plain http, with no TLS to verify"
            ));
        }
    }
    for (i, c) in config.credentials.iter().enumerate() {
        if c.static_.is_some() && c.refresh != super::RefreshConfig::default() {
            out.push(format!(
                "credentials[{i}].refresh is ignored: a static credential is never refreshed"
            ));
        }
        if let Some(f) = &c.file
            && f.expiry_field.is_none()
            && c.refresh.max_age.is_none()
        {
            out.push(format!(
                "credentials[{i}] ({}): its token file gives no expiry (no file.expiry_field), so without refresh.max_age it is re-read only after an upstream 401; set refresh.max_age (e.g. 5m) to pick up a rotated file",
                c.id
            ));
        }
    }
    out
}

/// The admin listener cannot share the proxy listener's address: `run`
/// would fail to bind. Port 0 picks a free port for each, and a wildcard
/// address (`0.0.0.0`, `::`) takes its port on every address.
pub(super) fn check_listeners(config: &Config, errs: &mut Vec<FieldError>) {
    let Some(admin) = &config.admin else {
        return;
    };
    let (a, p) = (admin.listen, config.proxy.listen);
    if a.port() == 0 || a.port() != p.port() {
        return;
    }
    // `::` is dual-stack on most systems: it holds the IPv4 port too.
    let covers = |wild: std::net::IpAddr, other: std::net::IpAddr| {
        wild.is_unspecified() && (wild.is_ipv6() || wild.is_ipv4() == other.is_ipv4())
    };
    if a.ip() == p.ip() || covers(a.ip(), p.ip()) || covers(p.ip(), a.ip()) {
        errs.push(FieldError::new(
            "admin.listen",
            format!(
                "{a} is the proxy listener's address ({p}): the two listeners need different ports"
            ),
        ));
    }
}

/// Client authentication takes the first client whose token matches: a
/// second client with the same token reference would never be chosen.
pub(super) fn check_shared_tokens(config: &Config, errs: &mut Vec<FieldError>) {
    for (j, c) in config.clients.iter().enumerate() {
        let Some(token) = &c.token else { continue };
        let first = config
            .clients
            .iter()
            .take(j)
            .position(|other| other.token.as_ref() == Some(token));
        if let Some(i) = first {
            errs.push(FieldError::new(
                format!("clients[{j}].token"),
                format!(
                    "the same token as clients[{i}] ({:?}): a token names one client",
                    config.clients[i].id
                ),
            ));
        }
    }
}

/// `routes[].match.host` is compared with the request's host, lower-cased,
/// without its port and a trailing dot (`crate::router::normalize_host`).
/// Anything that cannot be such a host would never match a request.
pub(super) fn check_host(h: &str) -> Result<(), String> {
    let not = || format!("{h:?} is not a host name, IP address or [IPv6] address");
    if h.contains('*') {
        return Err(format!(
            "{h:?}: wildcards are not supported; match.host is an exact host \
             (list one route per host)"
        ));
    }
    if let Some(rest) = h.strip_prefix('[') {
        let (addr, tail) = rest.split_once(']').ok_or_else(not)?;
        addr.parse::<std::net::Ipv6Addr>().map_err(|_| not())?;
        return match tail.strip_prefix(':') {
            None if tail.is_empty() => Ok(()),
            Some(port) if is_port(port) => Ok(()),
            _ => Err(not()),
        };
    }
    if h.parse::<std::net::Ipv6Addr>().is_ok() {
        return Err(format!(
            "{h:?}: an IPv6 address is written in brackets, as in a Host header: [{h}]"
        ));
    }
    let name = match h.rsplit_once(':') {
        Some((name, port)) if is_port(port) => name,
        Some(_) => return Err(not()),
        None => h,
    };
    // One trailing dot (a fully qualified name) is dropped when matching.
    let name = name.strip_suffix('.').unwrap_or(name);
    // `_` is not in host names proper, but service names (Docker, SRV
    // labels) use it and a request can carry it.
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(not())
    }
}

/// A port as the router drops it: digits (empty too: `host:` is `host`),
/// at most 65535.
fn is_port(p: &str) -> bool {
    p.is_empty() || (p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
}

/// Token endpoints must use https, except on loopback (tests and dev).
/// A query is allowed (RFC 6749 3.2: the endpoint URI may have one, and it
/// is kept: Azure AD B2C's `?p=<policy>`); a fragment is not.
pub fn check_token_url(url: &str) -> Result<(), String> {
    if url.contains('#') {
        return Err("a token URL cannot have a fragment".to_owned());
    }
    let without_query = url.split_once('?').map_or(url, |(base, _)| base);
    let u = super::UpstreamUrl::parse(without_query)?;
    // The whole URL is what requests are made to: a query with a byte a
    // request target cannot carry (a space, `"`, `<`, `>`, `{`) must be
    // percent-encoded.
    if url.parse::<http::Uri>().is_err() {
        return Err(format!(
            "{} is not a valid URL: percent-encode the query's spaces, quotes, braces and angle brackets",
            super::types::shown(url)
        ));
    }
    if u.scheme == http::uri::Scheme::HTTPS || u.is_loopback() {
        Ok(())
    } else {
        Err(format!(
            "{} must use https (plain http is allowed only on loopback)",
            super::types::shown(url)
        ))
    }
}

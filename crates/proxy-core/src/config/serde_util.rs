//! Serde helpers for the config types: human-friendly durations (`30s`,
//! `5m`), byte sizes (`10MiB`), listener addresses and basic-auth user
//! names (hand-written visitors, so a wrong value says what is expected),
//! and the field defaults that are not the type's own `Default`.
//!
//! Kept apart from the types so `types.rs` and `credentials.rs` read as the
//! shape of the file; fields name these functions in their `#[serde(...)]`
//! attributes, and several `Default` impls call the same defaults.

use serde::{Deserialize, Deserializer, Serializer};
use std::net::SocketAddr;
use std::time::Duration;

// === defaults: shared ===

pub(super) fn default_true() -> bool {
    true
}
pub(super) fn default_poll() -> Duration {
    crate::secret::DEFAULT_FILE_POLL_INTERVAL
}

// === defaults: proxy and routes ===

pub(super) fn default_drain() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_max_concurrent() -> usize {
    10_000
}
pub(super) fn default_client_header_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_client_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_delayed_close_timeout() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_send_timeout() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_max_header() -> u64 {
    64 << 10
}
pub(super) fn default_upstream_max_idle() -> usize {
    256
}
pub(super) fn default_upstream_h2_keepalive() -> Duration {
    Duration::ZERO
}
pub(super) fn default_upstream_idle() -> Duration {
    Duration::from_secs(90)
}
pub(super) fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
pub(super) fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_response_idle_timeout() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_tunnel_idle_timeout() -> Duration {
    Duration::from_secs(3600)
}
pub(super) fn default_retry_statuses() -> Vec<u16> {
    vec![401]
}
pub(super) fn default_replay_limit() -> u64 {
    1 << 20
}

// === defaults: credentials ===

pub(super) fn default_buffer() -> Duration {
    Duration::from_secs(60)
}
pub(super) fn default_refresh_timeout() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_backoff_min() -> Duration {
    Duration::from_secs(1)
}
pub(super) fn default_backoff_max() -> Duration {
    Duration::from_secs(300)
}
pub(super) fn default_key_prefix() -> String {
    "latchkey".to_string()
}
pub(super) fn default_lease() -> Duration {
    Duration::from_secs(10)
}
pub(super) fn default_redis_timeout() -> Duration {
    Duration::from_secs(2)
}

// === durations ===

// Errors about durations and sizes never quote the value: it may be a
// secret pasted into the wrong field. They say what form is expected.

/// Parses `30s`, `5m`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("is not a duration like 30s, 5m or 1h30m ({})", why_not(&e)))?;
    if d.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(d)
}

/// What is wrong with a duration, without the parts of it that
/// humantime's own message quotes.
fn why_not(e: &humantime::DurationError) -> String {
    use humantime::DurationError as E;
    match e {
        E::InvalidCharacter(at) => format!("a character that is not a letter or digit at {at}"),
        E::NumberExpected(at) => format!("a number was expected at {at}"),
        E::UnknownUnit { unit, .. } if unit.is_empty() => {
            "a number without a unit (ms, s, m, h, d)".to_owned()
        }
        E::UnknownUnit { .. } => "an unknown unit; use ms, s, m, h or d".to_owned(),
        E::NumberOverflow => "too large".to_owned(),
        E::Empty => "empty".to_owned(),
    }
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A duration where `0s` means "off" (the caller says what off is).
pub(super) fn de_duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim())
        .map_err(|e| {
            format!(
                "is not a duration like 30s, 5m or 1h30m, or 0s ({})",
                why_not(&e)
            )
        })
        .map_err(serde::de::Error::custom)
}

/// An optional duration written without months or years (`refresh.max_age`,
/// whose bound is years, so a month is no typo its bound would catch):
/// `3M` is most likely 3 minutes, and a month is 30.44 days anyway.
pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if has_month_or_year(&s) => Err(serde::de::Error::custom(
            "is written in months or years (M and month are months, y is years; minutes \
             are m): write a long one in days, such as 90d or 365d",
        )),
        Some(s) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

/// Whether `s` uses humantime's month or year units.
fn has_month_or_year(s: &str) -> bool {
    s.split(|c: char| !c.is_ascii_alphabetic()).any(|unit| {
        matches!(
            unit,
            "M" | "month" | "months" | "y" | "yr" | "yrs" | "year" | "years"
        )
    })
}

/// Writes `d` as the config reads it, in days at most (`90d`, `1h 30m`,
/// `250ms`): humantime's own formatter writes months and years (`90d` as
/// `2months 29days 2h 52m 48s`), which `refresh.max_age` refuses.
pub(super) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_days(*d))
}

/// `d` in units from days down to nanoseconds, zero ones left out.
fn format_days(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos();
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (u64::from(nanos / 1_000_000), "ms"),
        (u64::from(nanos / 1_000 % 1_000), "us"),
        (u64::from(nanos % 1_000), "ns"),
    ];
    let text: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, unit)| format!("{n}{unit}"))
        .collect();
    if text.is_empty() {
        "0s".to_owned()
    } else {
        text.join(" ")
    }
}

pub(super) fn ser_opt_duration<S: Serializer>(
    d: &Option<Duration>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ser_duration(d, s),
        None => s.serialize_none(),
    }
}

// === sizes ===

/// Parses a byte size: `1048576`, `512KiB`, `10MiB`, `1GiB` (also `KB`,`MB`,`GB`
/// as powers of 1000).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if !num.is_empty() && num.parse::<u64>().is_err() {
        return Err(format!("is too large; expected {SIZE_EXPECTED}"));
    }
    let n: u64 = num
        .parse()
        .map_err(|_| "is not a size like 1048576, 512KiB or 10MiB".to_owned())?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => {
            return Err(
                "has an unknown size unit (use B, KiB, MiB or GiB; KB, MB, GB are powers of 1000)"
                    .to_owned(),
            );
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("is too large; expected {SIZE_EXPECTED}"))
}

pub(super) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    Size::deserialize(d).map(|s| s.0)
}

pub(super) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(Option::<Size>::deserialize(d)?.map(|s| s.0))
}

/// What a size field holds: a whole number of bytes or a string with a
/// unit. Hand-written so a wrong type says what a size is (an untagged
/// enum would report its own internal name).
struct Size(u64);

const SIZE_EXPECTED: &str = "a size such as 1048576 or 10MiB";

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(SizeVisitor)
    }
}

struct SizeVisitor;

impl serde::de::Visitor<'_> for SizeVisitor {
    type Value = Size;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(SIZE_EXPECTED)
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Size, E> {
        Ok(Size(v))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("is negative; expected {SIZE_EXPECTED}")))
    }

    fn visit_u128<E: serde::de::Error>(self, v: u128) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("is too large; expected {SIZE_EXPECTED}")))
    }

    fn visit_i128<E: serde::de::Error>(self, v: i128) -> Result<Size, E> {
        u64::try_from(v)
            .map(Size)
            .map_err(|_| E::custom(format!("is out of range; expected {SIZE_EXPECTED}")))
    }

    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Size, E> {
        // YAML reads `1e6`, `1.5` and integers past u64 as floats.
        let why = if v < 0.0 {
            "a negative number"
        } else if v.fract() != 0.0 || !v.is_finite() {
            "not a whole number of bytes"
        } else if v >= 18_446_744_073_709_551_616.0 {
            "too large"
        } else {
            "a floating-point number (write the digits, or use a unit)"
        };
        Err(E::custom(format!(
            "this is {why}; expected {SIZE_EXPECTED}"
        )))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Size, E> {
        parse_size(v).map(Size).map_err(E::custom)
    }
}

// === basic-auth user names ===

/// Hand-written rather than `untagged` so a mistake says what a user name
/// is, not the enum's internal name; a map is read as a [`SecretRef`],
/// whose own errors name the keys it takes (and never the value).
impl<'de> Deserialize<'de> for super::Username {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UsernameVisitor)
    }
}

struct UsernameVisitor;

impl<'de> serde::de::Visitor<'de> for UsernameVisitor {
    type Value = super::Username;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a user name, or { env | file | value: ... }")
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<super::Username, E> {
        Ok(super::Username::Plain(v.to_owned()))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<super::Username, A::Error> {
        crate::secret::SecretRef::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            .map(super::Username::Secret)
    }
}

// === listen addresses ===

/// A listener address: an IP address and a port. Anything else (a host
/// name, a bare port) is refused with the form that is wanted.
pub(super) fn de_listen<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    d.deserialize_any(ListenVisitor)
}

struct ListenVisitor;

impl serde::de::Visitor<'_> for ListenVisitor {
    type Value = SocketAddr;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an IP address and port such as 127.0.0.1:8080")
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SocketAddr, E> {
        Err(E::custom(format!(
            "{v} is a port alone; write an IP address and port such as 127.0.0.1:{v} \
             (this machine only) or 0.0.0.0:{v} (every interface)"
        )))
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SocketAddr, E> {
        Err(E::custom(format!(
            "{v} is not an IP address and port such as 127.0.0.1:8080"
        )))
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SocketAddr, E> {
        parse_listen(v).map_err(E::custom)
    }
}

/// Parses a listener address, with a hint for the usual mistakes.
pub(super) fn parse_listen(v: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = v.trim().parse::<SocketAddr>() {
        return Ok(addr);
    }
    let hint = match v.trim().rsplit_once(':') {
        Some(("", port)) if port.parse::<u16>().is_ok() => format!(
            " (write 127.0.0.1:{port} for this machine only, 0.0.0.0:{port} for every interface)"
        ),
        Some((host, port))
            if port.parse::<u16>().is_ok() && host.eq_ignore_ascii_case("localhost") =>
        {
            format!(" (write 127.0.0.1:{port}; host names are not resolved)")
        }
        Some((host, port))
            if port.parse::<u16>().is_ok() && host.parse::<std::net::Ipv6Addr>().is_ok() =>
        {
            format!(" (an IPv6 address is written in brackets: [{host}]:{port})")
        }
        Some((_, port)) if port.parse::<u16>().is_ok() => {
            " (host names are not resolved; write the IP address to listen on)".to_owned()
        }
        _ if v.trim().parse::<u16>().is_ok() => {
            " (a port alone: write 127.0.0.1:PORT or 0.0.0.0:PORT)".to_owned()
        }
        _ => String::new(),
    };
    Err(format!(
        "{v:?} is not an IP address and port such as 127.0.0.1:8080{hint}"
    ))
}

//! Serde helpers for the config types: human-friendly durations (`30s`,
//! `5m`) and byte sizes (`10MiB`), and the field defaults that are not the
//! type's own `Default`.
//!
//! Kept apart from the types so `types.rs` and `credentials.rs` read as the
//! shape of the file; fields name these functions in their `#[serde(...)]`
//! attributes, and several `Default` impls call the same defaults.

use serde::{Deserialize, Deserializer, Serializer};
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

/// Parses `30s`, `5m`, `1h30m`, `250ms`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s or 5m ({e})"))?;
    if d.is_zero() {
        return Err(format!("{s:?}: must be greater than zero"));
    }
    Ok(d)
}

pub(super) fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A duration where `0s` means "off" (the caller says what off is).
pub(super) fn de_duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s or 5m, or 0s ({e})"))
        .map_err(serde::de::Error::custom)
}

pub(super) fn de_opt_duration<'de, D: Deserializer<'de>>(
    d: D,
) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_duration(&s)
            .map(Some)
            .map_err(serde::de::Error::custom),
    }
}

pub(super) fn ser_duration<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
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
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 1048576, 512KiB or 10MiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "{s:?}: unknown size unit {other:?} (use KiB, MiB, GiB)"
            ));
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

pub(super) fn de_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    de_opt_size(d)?.ok_or_else(|| serde::de::Error::custom("a size is required"))
}

pub(super) fn de_opt_size<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(u64),
        S(String),
    }
    match Option::<Raw>::deserialize(d)? {
        None => Ok(None),
        Some(Raw::N(n)) => Ok(Some(n)),
        Some(Raw::S(s)) => parse_size(&s).map(Some).map_err(serde::de::Error::custom),
    }
}

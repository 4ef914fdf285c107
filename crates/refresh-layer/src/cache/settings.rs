//! [`RefreshSettings`]: one credential's timing settings.

use proxy_core::config::RefreshConfig;
use std::time::Duration;

/// Timing settings of one credential.
#[derive(Clone, Debug, PartialEq)]
pub struct RefreshSettings {
    /// Refresh this long before expiry.
    pub buffer: Duration,
    /// How long a request waits for a refresh when no valid token exists.
    pub timeout: Duration,
    /// Refresh tokens without expiry after this long.
    pub max_age: Option<Duration>,
    /// First backoff delay.
    pub backoff_min: Duration,
    /// Backoff cap.
    pub backoff_max: Duration,
    /// How often a rotating credential checks that its store still holds
    /// its state, and writes it back if the store lost it (see
    /// `cache/writeback.rs`). Zero: never. Not configurable: the default
    /// is [`STORE_CHECK`](super::writeback::STORE_CHECK).
    pub store_check: Duration,
}

impl Default for RefreshSettings {
    fn default() -> Self {
        Self::from(&RefreshConfig::default())
    }
}

impl From<&RefreshConfig> for RefreshSettings {
    fn from(c: &RefreshConfig) -> Self {
        Self {
            buffer: c.buffer,
            timeout: c.timeout,
            max_age: c.max_age,
            backoff_min: c.backoff_min,
            backoff_max: c.backoff_max,
            store_check: super::writeback::STORE_CHECK,
        }
    }
}

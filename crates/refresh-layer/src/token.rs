//! What providers return and stores keep.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A token as a provider obtained it.
pub struct Token {
    /// The access token to inject.
    pub access_token: SecretString,
    /// Lifetime from the moment the response arrived; `None` if the provider
    /// gave no expiry.
    pub expires_in: Option<Duration>,
    /// A new refresh token, when the endpoint rotated it.
    pub refresh_token: Option<SecretString>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"***")
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The persisted state of one credential: what a store reads and writes.
///
/// Times are Unix milliseconds so files and Redis values are portable across
/// processes and hosts.
///
/// Unknown fields are ignored, not refused: during a rolling upgrade a newer
/// version may store a field this one does not know, and a replica that
/// cannot read the state would have nothing to refresh with but a spent
/// refresh token. A known field with the wrong type is still refused.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoredCredential {
    /// The access token.
    pub access_token: String,
    /// Expiry, Unix ms.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
    /// The current refresh token (rotating grants).
    #[serde(default)]
    pub refresh_token: Option<String>,
    /// Grows by one on every successful refresh, across every process that
    /// shares the store.
    pub generation: u64,
    /// When the access token was obtained, Unix ms.
    pub obtained_at_ms: u64,
    /// The fingerprint of the provider whose state this is (see
    /// `TokenProvider::identity`): a stored state is only meaningful to the
    /// provider (endpoint, client, grant, scopes, seed) that produced it.
    /// Set on every save; absent in states written by older versions,
    /// which are taken as the current provider's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

impl fmt::Debug for StoredCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredential")
            .field("access_token", &"***")
            .field("expires_at_ms", &self.expires_at_ms)
            .field("refresh_token", &self.refresh_token.as_ref().map(|_| "***"))
            .field("generation", &self.generation)
            .field("obtained_at_ms", &self.obtained_at_ms)
            .field("provider", &self.provider)
            .finish()
    }
}

impl StoredCredential {
    /// The refresh token, wrapped.
    pub fn refresh_token(&self) -> Option<SecretString> {
        self.refresh_token
            .as_ref()
            .map(|t| SecretString::from(t.clone()))
    }

    /// Builds the state after a successful fetch. A rotated refresh token
    /// replaces the old one; otherwise the old one is kept.
    pub fn from_token(
        token: &Token,
        prior_refresh: Option<&SecretString>,
        generation: u64,
        now: SystemTime,
    ) -> Self {
        Self {
            access_token: token.access_token.expose_secret().to_string(),
            expires_at_ms: token
                .expires_in
                .map(|d| to_ms(now.checked_add(clamp_lifetime(d)).unwrap_or(now))),
            refresh_token: token
                .refresh_token
                .as_ref()
                .or(prior_refresh)
                .map(|t| t.expose_secret().to_string()),
            generation,
            obtained_at_ms: to_ms(now),
            provider: None,
        }
    }

    /// Expiry as a `SystemTime`.
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at_ms.map(from_ms)
    }

    /// When the token was obtained.
    pub fn obtained_at(&self) -> SystemTime {
        from_ms(self.obtained_at_ms)
    }
}

/// The longest lifetime taken at face value: 100 years. A provider that
/// says a token lives `18446744073709551615` seconds means "a long time";
/// taken literally, the clocks' arithmetic would overflow (a panic in the
/// refresh task).
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `d`, at most [`MAX_LIFETIME`].
pub fn clamp_lifetime(d: Duration) -> Duration {
    d.min(MAX_LIFETIME)
}

/// `SystemTime` to Unix milliseconds (0 before the epoch).
pub fn to_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Unix milliseconds to `SystemTime`.
pub fn from_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::StoredCredential;

    /// A state written by a newer version, with a field this one does not
    /// know, is read (the field ignored); a known field of the wrong type
    /// is still refused.
    #[test]
    fn unknown_fields_are_ignored_and_wrong_types_refused() {
        let newer = r#"{"access_token":"a","refresh_token":"r","generation":3,"obtained_at_ms":1,"token_type":"Bearer"}"#;
        let s: StoredCredential = serde_json::from_str(newer).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.generation, 3);
        assert_eq!(s.refresh_token.as_deref(), Some("r"));
        let wrong = r#"{"access_token":"a","generation":"3","obtained_at_ms":1}"#;
        assert!(serde_json::from_str::<StoredCredential>(wrong).is_err());
        let missing = r#"{"access_token":"a","obtained_at_ms":1}"#;
        assert!(serde_json::from_str::<StoredCredential>(missing).is_err());
    }
}

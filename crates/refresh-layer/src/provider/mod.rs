//! Token providers: where a credential's value comes from.
//!
//! A [`TokenProvider`] fetches a new token; it knows nothing about caching,
//! timing or stores (the [`cache`](crate::cache) does that). Providers:
//! [`oauth2`] (`refresh_token` with rotation, `client_credentials`), [`exec`]
//! (a command printing an `ExecCredential` or `{access_token, expires_in}`),
//! and [`file`] (a token file with an optional expiry). `static` credentials
//! need no lifecycle and use `proxy_core::credential::StaticSource`, which
//! implements the same `CredentialSource` trait as the refreshing cache.

pub mod exec;
pub mod file;
pub mod oauth2;
mod timestamp;

use crate::token::{StoredCredential, Token};
use futures_util::future::BoxFuture;
use std::fmt;

/// Why a fetch failed. `Display` never includes a secret that was sent.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProviderError {
    /// The endpoint answered with an OAuth2 error body (RFC 6749 5.2).
    #[error("token endpoint answered {status} {error}{}", describe(.description))]
    OAuth {
        /// HTTP status.
        status: u16,
        /// The `error` field (`invalid_grant`, `invalid_client`, ...).
        error: String,
        /// The `error_description` field, if any.
        description: Option<String>,
    },
    /// The endpoint answered an HTTP error without an OAuth2 error body.
    #[error("token endpoint answered HTTP {status}")]
    Http {
        /// HTTP status.
        status: u16,
    },
    /// The response body is not JSON.
    #[error("token endpoint answered {status} with a body that is not JSON")]
    NotJson {
        /// HTTP status.
        status: u16,
    },
    /// The JSON has no usable `access_token`.
    #[error("token response has no access_token")]
    MissingAccessToken,
    /// A field has the wrong type or value.
    #[error("token response field {field}: {problem}")]
    BadField {
        /// The field.
        field: &'static str,
        /// What is wrong.
        problem: String,
    },
    /// The endpoint could not be reached or the exchange broke off.
    #[error("token endpoint unreachable: {0}")]
    Transport(String),
    /// The provider did not finish in time.
    #[error("timed out after {0:?}")]
    Timeout(std::time::Duration),
    /// The exec command failed.
    #[error("command {command:?} {problem}")]
    Exec {
        /// The program.
        command: String,
        /// What went wrong (exit status, unparsable output).
        problem: String,
    },
    /// The token file could not be read or parsed.
    #[error("token file {path}: {problem}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// Missing input (e.g. no refresh token) or a local setup problem.
    #[error("{0}")]
    Config(String),
    /// The endpoint refused for now and said when to come back (`429` or
    /// `503` with `Retry-After`): the next attempt waits at least that long
    /// (at most [`MAX_RETRY_AFTER`]).
    #[error("{error}; the endpoint asked to retry after {}s", .retry_after.as_secs())]
    RetryAfter {
        /// What it answered.
        error: Box<ProviderError>,
        /// How long it asked to wait.
        retry_after: std::time::Duration,
    },
}

/// The longest `Retry-After` honoured: an endpoint's hour-long (or absurd)
/// value must not park a credential for longer.
pub const MAX_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(3600);

fn describe(d: &Option<String>) -> String {
    d.as_ref().map(|d| format!(": {d}")).unwrap_or_default()
}

impl ProviderError {
    /// The endpoint's `error` code, when it sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            Self::OAuth { error, .. } => Some(error),
            Self::RetryAfter { error, .. } => error.oauth_error(),
            _ => None,
        }
    }

    /// How long the endpoint asked to wait before the next attempt.
    pub fn retry_after(&self) -> Option<std::time::Duration> {
        match self {
            Self::RetryAfter { retry_after, .. } => Some((*retry_after).min(MAX_RETRY_AFTER)),
            _ => None,
        }
    }

    /// Whether the grant itself was refused (revoked or already-used refresh
    /// token): retrying the same request cannot succeed.
    pub fn is_invalid_grant(&self) -> bool {
        self.oauth_error() == Some("invalid_grant")
    }
}

/// Obtains tokens for one credential.
pub trait TokenProvider: fmt::Debug + Send + Sync + 'static {
    /// `oauth2`, `exec`, `file`.
    fn kind(&self) -> &'static str;

    /// Whether a refresh consumes the previous refresh token (rotation):
    /// such a credential must never be refreshed by two holders at once.
    fn rotates(&self) -> bool {
        false
    }

    /// The refresh token to start from when the store holds none.
    fn seed_refresh_token(&self) -> Option<secrecy::SecretString> {
        None
    }

    /// A fingerprint of what a stored state is meaningful to (see
    /// [`fingerprint`]): the provider's kind and what makes its tokens
    /// (endpoint, client and grant; the command; the file). Saved with every state; a stored state with another
    /// fingerprint belongs to a provider this credential no longer has
    /// (its config changed) and is not used. `None`: any stored state is
    /// taken as this provider's.
    fn identity(&self) -> Option<String> {
        None
    }

    /// The longest a fetch may take by the provider's own bounds (an
    /// `exec` command's `timeout`), if any: a refresh is abandoned only
    /// well after it (see `cache::RUN_LIMIT`).
    fn time_limit(&self) -> Option<std::time::Duration> {
        None
    }

    /// Fetches a new token. `current` is the stored state, whose refresh
    /// token a rotating provider must use (never the seed once a state
    /// exists).
    fn fetch<'a>(
        &'a self,
        current: Option<&'a StoredCredential>,
    ) -> BoxFuture<'a, Result<Token, ProviderError>>;
}

/// A stable fingerprint of `parts` (64-bit FNV-1a over each part's length
/// and bytes, in hex): the same on every platform, version and process,
/// so files and Redis values written by one process are recognised by
/// another. No part is a secret (an `exec` argument might be: it only
/// enters hashed). Collisions between two configs of one credential
/// are a 2^-64 chance.
pub(crate) fn fingerprint<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut h = OFFSET;
    let mut eat = |bytes: &[u8]| {
        for b in bytes {
            h ^= u64::from(*b);
            h = h.wrapping_mul(PRIME);
        }
    };
    for part in parts {
        // Length-prefixed: ("ab", "c") and ("a", "bc") differ.
        eat(&(part.len() as u64).to_le_bytes());
        eat(part);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod fingerprint_tests {
    use super::fingerprint;

    #[test]
    fn stable_and_length_prefixed() {
        let a = fingerprint([b"ab".as_slice(), b"c".as_slice()]);
        assert_eq!(a, fingerprint([b"ab".as_slice(), b"c".as_slice()]));
        assert_ne!(a, fingerprint([b"a".as_slice(), b"bc".as_slice()]));
        assert_eq!(a.len(), 16);
        // Fixed across versions: a stored fingerprint must keep matching.
        assert_eq!(fingerprint([]), "cbf29ce484222325");
    }
}

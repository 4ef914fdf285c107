//! [`RefreshError`]: why a refresh did not produce a token, and how it
//! reaches requests ([`CredentialError`]).

use crate::provider::ProviderError;
use crate::store::StoreError;
use proxy_core::credential::CredentialError;
use std::time::Duration;

/// Why a refresh did not produce a token. Never contains a secret.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum RefreshError {
    /// The provider failed.
    #[error("{0}")]
    Provider(ProviderError),
    /// The store failed.
    #[error("{0}")]
    Store(StoreError),
    /// The store holds a state this process cannot read (sealed with a key
    /// not in its keyring, or not a credential this version understands),
    /// and the credential's refresh token lives in that state: refreshing
    /// with the one this process holds (or the config's seed) would send a
    /// token the writer has probably spent already. Nothing is sent and
    /// nothing is overwritten; the token held is served until it expires.
    #[error(
        "credential {credential}: not refreshing: the stored state is unreadable by this process (encryption key not in this replica's keyring? written by a newer version? damaged?) and the refresh token this process holds may already be spent; add the missing key to this replica's keyring, or, if that state is lost for good, delete it and configure a fresh refresh token: {cause}"
    )]
    StoreUnreadable {
        /// The credential.
        credential: String,
        /// What the store said.
        cause: StoreError,
    },
    /// A reload replaced this source: it no longer refreshes (the source
    /// now configured does), and serves the token it holds while valid.
    #[error(
        "replaced by a reload: this credential source of the previous config no longer refreshes; the current one does"
    )]
    Retired,
    /// The refresh task ended without a result (the runtime shut down).
    #[error("the refresh task ended without a result")]
    Aborted,
    /// The refresh panicked (a bug; the panic is on standard error). It
    /// counts as a failed attempt: the held credential stays, retries back
    /// off.
    #[error("the refresh failed unexpectedly (a panic; see the proxy's standard error)")]
    Panicked,
    /// The provider's token has already expired (less than
    /// [`MIN_LIFETIME`](super::MIN_LIFETIME) to live): a failed attempt, so retries back off
    /// instead of fetching again at once, and the credential held is kept.
    #[error("the provider returned a token that has already expired (expires in {} ms)", .0.as_millis())]
    ShortLived(Duration),
    /// The provider's access token cannot be sent (empty, or with control
    /// characters): a failed attempt, so the credential held is kept and
    /// retries back off, instead of a token that every request would fail
    /// to inject until it expires.
    #[error(
        "the provider returned an access token that cannot be sent (empty, or with control characters)"
    )]
    Unusable,
    /// A forced refresh (after the upstream refused the token) got the
    /// same access token again: a failed attempt, so the 401 retry does
    /// not send the refused token twice, and the next forced refresh backs
    /// off. The token held is still served (the upstream decides).
    #[error(
        "the provider returned the very token the upstream just refused (a token file not rewritten yet, or a cached token); not sent again"
    )]
    Unchanged,
    /// The token expired while the refreshed state was being saved (the
    /// store took longer than the token's lifetime): a failed attempt, so
    /// retries back off instead of refreshing again at once.
    #[error("the new token expired while its state was being saved (the save took {} ms)", .0.as_millis())]
    ExpiredWhileSaving(Duration),
    /// Earlier attempts failed and the next is not due yet.
    #[error("refresh failing ({attempts} attempt(s)); next attempt in {}s; last error: {last}", .retry_in.as_secs())]
    BackingOff {
        /// Failed attempts so far.
        attempts: u32,
        /// Until the next attempt.
        retry_in: Duration,
        /// The last error.
        last: String,
        /// The token endpoint's `error` code in the last error, if it
        /// answered one (`invalid_grant`: someone must log in again), so
        /// requests and invalidations answered from backoff still carry it.
        oauth_error: Option<String>,
    },
    /// The refresh did not finish within `refresh.timeout`.
    #[error("refresh did not finish within {0:?}")]
    Timeout(Duration),
    /// The refresh itself ran past [`RUN_LIMIT`](super::RUN_LIMIT) (a
    /// provider or store that never answers) and was abandoned: a failed
    /// attempt, so the held credential stays and retries back off.
    #[error(
        "the refresh did not end within {}s (a token endpoint, command or store that never answers) and was abandoned",
        .0.as_secs()
    )]
    Overran(Duration),
    /// The upstream rejected the token a forced refresh got, again: forced
    /// refreshes are spaced out (see `forced.rs`); the token is kept.
    #[error(
        "the upstream rejected the token a forced refresh got {}s ago ({times} time(s) in a row): the credential itself is refused (check its permissions, scope or audience), not expired; next forced refresh in {}s",
        .age.as_secs(), .retry_in.as_secs()
    )]
    Rejected {
        /// Rejections in a row.
        times: u32,
        /// How old the rejected token was.
        age: Duration,
        /// Until the next forced refresh may start.
        retry_in: Duration,
    },
}

impl From<RefreshError> for CredentialError {
    fn from(e: RefreshError) -> Self {
        Self {
            oauth_error: e.oauth_error().map(str::to_owned),
            backing_off: matches!(
                e,
                RefreshError::BackingOff { .. } | RefreshError::Rejected { .. }
            ),
            reason: e.to_string(),
        }
    }
}

impl RefreshError {
    /// How long the provider asked to wait (`Retry-After`), if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Provider(p) => p.retry_after(),
            _ => None,
        }
    }

    /// The token endpoint's `error` code, if that is what failed.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            Self::Provider(p) => p.oauth_error(),
            Self::BackingOff { oauth_error, .. } => oauth_error.as_deref(),
            _ => None,
        }
    }
}

//! The [`Credential`] value and the [`CredentialSource`] trait.
//!
//! A source hands out the current credential for one credential id. The
//! foundation ships [`StaticSource`] (a secret that never expires, re-read when
//! its file changes); the refresh layer adds sources that expire and refresh.
//! Every value carries a `generation` that grows each time the value changes,
//! so a 401 can later invalidate exactly the generation that failed.

use crate::secret::{SecretSource, SecretValue};
use arc_swap::ArcSwapOption;
use futures_util::future::{BoxFuture, Either, Ready, ready};
use secrecy::{ExposeSecret, SecretString};
use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

/// One credential value as injected into a request.
pub struct Credential {
    value: SecretString,
    /// When the value stops being valid; `None` for values that do not expire.
    pub expires_at: Option<SystemTime>,
    /// Grows by at least one every time the value changes.
    pub generation: u64,
    /// When the value was obtained.
    pub obtained_at: SystemTime,
}

impl Credential {
    /// A credential value.
    pub fn new(
        value: SecretString,
        generation: u64,
        obtained_at: SystemTime,
        expires_at: Option<SystemTime>,
    ) -> Self {
        Self {
            value,
            expires_at,
            generation,
            obtained_at,
        }
    }

    /// The secret. Call only where it is written into a request.
    pub fn expose(&self) -> &str {
        self.value.expose_secret()
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("value", &"***")
            .field("generation", &self.generation)
            .field("obtained_at", &self.obtained_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Why a source could not hand out a credential. Never holds a secret.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{reason}")]
pub struct CredentialError {
    /// What went wrong, safe to log and to show a caller.
    pub reason: String,
    /// The token endpoint's `error` code (`invalid_grant`, ...), when a
    /// refresh failed with one.
    pub oauth_error: Option<String>,
    /// No refresh was attempted for this error: earlier attempts failed
    /// and the source is backing off (the reason says until when).
    pub backing_off: bool,
}

impl CredentialError {
    /// An error with a reason and no endpoint code.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
            oauth_error: None,
            backing_off: false,
        }
    }
}

/// A point-in-time view of one credential, for status endpoints, readiness
/// and `latchkey ctl`. Holds no secret.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct CredentialStatus {
    /// The credential's id.
    pub id: String,
    /// Provider kind (`static`, `oauth2`, `exec`, `file`).
    pub kind: &'static str,
    /// Store kind (`memory`, `file`, `redis`; `none` for static).
    pub store: &'static str,
    /// Why the store was unreachable at its last use (`None`: healthy).
    pub store_error: Option<String>,
    /// `fresh`, `refresh_ahead`, `expired`, `failing`, `empty`, `unavailable`.
    pub state: &'static str,
    /// Current generation (0: none yet).
    pub generation: u64,
    /// Expiry of the current value.
    #[serde(with = "rfc3339")]
    pub expires_at: Option<SystemTime>,
    /// When the current value was obtained.
    #[serde(with = "rfc3339")]
    pub obtained_at: Option<SystemTime>,
    /// When the last refresh attempt ended.
    #[serde(with = "rfc3339")]
    pub last_refresh_at: Option<SystemTime>,
    /// `ok` or `error`.
    pub last_refresh_result: Option<&'static str>,
    /// Trigger of the last refresh attempt.
    pub last_refresh_trigger: Option<&'static str>,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the last error happened.
    #[serde(with = "rfc3339")]
    pub last_error_at: Option<SystemTime>,
    /// When the next refresh is due.
    #[serde(with = "rfc3339")]
    pub next_refresh_at: Option<SystemTime>,
    /// Consecutive failed refreshes.
    pub consecutive_failures: u32,
    /// Whether a refresh token is held.
    pub has_refresh_token: bool,
    /// Whether a refresh is running now.
    pub refreshing: bool,
}

/// Serialises optional times as RFC 3339 (UTC, seconds).
pub mod rfc3339 {
    use std::time::SystemTime;

    /// Serde `serialize_with` helper.
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&humantime::format_rfc3339_seconds(*t).to_string()),
            None => s.serialize_none(),
        }
    }
}

/// What [`CredentialSource::get`] returns: ready at once on the fast path,
/// a boxed future only when the source has to wait (e.g. for a refresh).
pub type GetCredential = Either<
    Ready<Result<Arc<Credential>, CredentialError>>,
    BoxFuture<'static, Result<Arc<Credential>, CredentialError>>,
>;

/// A supplier of the current value of one credential.
pub trait CredentialSource: fmt::Debug + Send + Sync + 'static {
    /// The credential's id from config.
    fn id(&self) -> &str;

    /// The provider kind (`static`, `oauth2`, ...), for status and summaries.
    fn kind(&self) -> &'static str;

    /// The current credential. Must be cheap when a valid value is held.
    fn get(&self) -> GetCredential;

    /// Marks `generation` as rejected by the upstream. Sources that can
    /// refresh do so if `generation` is still current and resolve when the
    /// new value is in place; static sources cannot and ignore it.
    fn invalidate(&self, generation: u64) -> BoxFuture<'static, Result<(), CredentialError>> {
        let _ = generation;
        Box::pin(ready(Ok(())))
    }

    /// Forces a refresh now (operator action) through the same single-flight
    /// path, and returns the new status.
    fn refresh_now(&self) -> BoxFuture<'static, Result<CredentialStatus, CredentialError>> {
        let reason = format!(
            "credential {:?} is {} and has nothing to refresh",
            self.id(),
            self.kind()
        );
        Box::pin(ready(Err(CredentialError::new(reason))))
    }

    /// The current status.
    fn status(&self) -> CredentialStatus;

    /// The generation currently served, if any. Cheap; the 401 retry uses
    /// it to replay only when there is a different credential to send.
    fn generation(&self) -> Option<u64> {
        Some(self.status().generation).filter(|g| *g > 0)
    }

    /// Whether [`invalidate`](Self::invalidate) can bring a new value (a
    /// source that refreshes). A static source cannot: the 401 retry then
    /// leaves the upstream's answer as it is. `false` by default.
    fn refreshes(&self) -> bool {
        false
    }

    /// Whether the credential served can ever be replaced while this
    /// source lives (a reload builds new sources): by a refresh, or by a
    /// static secret's file being rewritten. When it cannot, a replay
    /// after a 401 could only resend the refused value, so latchkey leaves
    /// the 401 retry out of the route's stack (no copy of every request
    /// kept for a replay that can never help). `true` by default.
    fn can_change(&self) -> bool {
        true
    }

    /// A reload replaced or removed this source; it lives on only while
    /// requests of the old config are in flight. A refreshing source then
    /// starts no refresh (the source now configured refreshes the
    /// credential); one already running is still reported, marked
    /// [`RefreshEvent::retired`](crate::facts::RefreshEvent::retired), so
    /// it does not set the credential's timestamp gauges, which belong to
    /// the source now configured (or to none). Nothing by default.
    fn retire(&self) {}

    /// The config holding this source is now in service: start any
    /// background work (a refreshing source's scheduler). Sources are
    /// built inactive, so that one of a config that is then refused does
    /// nothing. Called again for a source a reload kept; must be
    /// idempotent. Nothing by default.
    fn activate(&self) {}

    /// The source as `Any`, for the code that built it to reach its
    /// concrete type (a reload handing a refreshing source's state to the
    /// source that replaces it). `None` by default.
    fn as_any(&self) -> Option<&dyn std::any::Any> {
        None
    }
}

/// Which credential a request carried: handed to inject with the value (in
/// [`Acquired`](crate::acquire::Acquired)), which records it for audit, and
/// put in the extensions of an error response (status 400 or above: a 401
/// retry acts on 400-599 only) for the retry layer, or of any response to
/// a request whose context asks for it
/// ([`RequestContext::report_credential_used`](crate::context::RequestContext::report_credential_used)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialUsed {
    /// The credential's id.
    pub id: Arc<str>,
    /// The generation injected.
    pub generation: u64,
    /// When that value was obtained.
    pub obtained_at: SystemTime,
    /// When it expires, if it does.
    pub expires_at: Option<SystemTime>,
}

/// A credential that never expires: an `env`, `file` or literal secret.
/// A `file` secret's new content becomes a new generation.
pub struct StaticSource {
    id: String,
    secret: SecretSource,
    cached: ArcSwapOption<Credential>,
    /// What a secret that can never change resolved to, made once: every
    /// request then takes a reference count, not two `ArcSwap` loads.
    fixed: Option<Result<Arc<Credential>, CredentialError>>,
}

impl StaticSource {
    /// A static credential named `id` backed by `secret`.
    pub fn new(id: impl Into<String>, secret: SecretSource) -> Self {
        let mut source = Self {
            id: id.into(),
            secret,
            cached: ArcSwapOption::empty(),
            fixed: None,
        };
        if !source.secret.may_change() {
            source.fixed = Some(source.load());
        }
        source
    }

    fn current(&self) -> Result<Arc<Credential>, CredentialError> {
        match &self.fixed {
            Some(fixed) => fixed.clone(),
            None => self.load(),
        }
    }

    fn load(&self) -> Result<Arc<Credential>, CredentialError> {
        let secret = self
            .secret
            .load()
            .map_err(|e| CredentialError::new(e.to_string()))?;
        if let Some(c) = self.cached.load_full()
            && c.generation == secret.version()
        {
            return Ok(c);
        }
        let c = Arc::new(to_credential(&secret));
        self.cached.store(Some(c.clone()));
        Ok(c)
    }
}

fn to_credential(secret: &SecretValue) -> Credential {
    Credential::new(
        secret.secret().clone(),
        secret.version(),
        secret.loaded_at(),
        None,
    )
}

impl fmt::Debug for StaticSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticSource")
            .field("id", &self.id)
            .field("secret", &self.secret)
            .finish()
    }
}

impl CredentialSource for StaticSource {
    fn id(&self) -> &str {
        &self.id
    }

    fn kind(&self) -> &'static str {
        "static"
    }

    fn get(&self) -> GetCredential {
        Either::Left(ready(self.current()))
    }

    fn generation(&self) -> Option<u64> {
        self.secret.load().ok().map(|s| s.version())
    }

    fn can_change(&self) -> bool {
        self.secret.may_change()
    }

    fn status(&self) -> CredentialStatus {
        let current = self.current();
        let (state, last_error) = match &current {
            Ok(_) => ("fresh", None),
            Err(e) => ("unavailable", Some(e.reason.clone())),
        };
        let c = current.ok();
        CredentialStatus {
            id: self.id.clone(),
            kind: "static",
            store: "none",
            store_error: None,
            state,
            generation: c.as_ref().map_or(0, |c| c.generation),
            expires_at: None,
            obtained_at: c.as_ref().map(|c| c.obtained_at),
            last_refresh_at: None,
            last_refresh_result: None,
            last_refresh_trigger: None,
            last_error,
            last_error_at: None,
            next_refresh_at: None,
            consecutive_failures: 0,
            has_refresh_token: false,
            refreshing: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_source_reuses_one_value_per_version() {
        let s = StaticSource::new("k", SecretSource::fixed("canary-value-123"));
        let a = s.get().await.unwrap();
        let b = s.get().await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(a.generation, 1);
        assert_eq!(a.expose(), "canary-value-123");
        assert!(!format!("{a:?} {s:?}").contains("canary"));
        s.invalidate(1).await.unwrap();
        assert_eq!(s.get().await.unwrap().generation, 1);
        let st = s.status();
        assert_eq!((st.state, st.generation, st.kind), ("fresh", 1, "static"));
        assert!(!serde_json::to_string(&st).unwrap().contains("canary"));
        assert!(
            s.refresh_now()
                .await
                .unwrap_err()
                .reason
                .contains("nothing to refresh")
        );
    }
}

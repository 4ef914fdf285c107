//! What each layer learned about a request, for the audit record.
//!
//! The audit layer (outermost) puts a [`Facts`] into the request extensions;
//! every layer below writes what it knows (who the client is, which route,
//! which credential and generation was injected, whether a refresh ran, what
//! the upstream answered, how a 401 retry ended) with [`record`]. Because the
//! facts live in a shared slot rather than in the response, they survive
//! error paths, where the response is produced by the edge layer from an
//! error. A request without a `Facts` slot (layers used on their own) records
//! nothing.
//!
//! Only ids, numbers and fixed strings go in here: never a header value, a
//! query string or a secret.

use http::Request;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Whether the request carried its route's credential.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialOutcome {
    /// Written into the request (set by the inject layer, after the fact).
    Injected,
    /// Could not be obtained; the request was not forwarded.
    Unavailable,
}

impl CredentialOutcome {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Injected => "injected",
            Self::Unavailable => "unavailable",
        }
    }
}

/// The credential a request used (or failed to get).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CredentialFact {
    /// Credential id.
    pub id: Arc<str>,
    /// Generation injected (none if unavailable).
    pub generation: Option<u64>,
    /// Injected or unavailable.
    pub outcome: CredentialOutcome,
    /// When the injected value was obtained.
    pub obtained_at: Option<SystemTime>,
    /// When it expires.
    pub expires_at: Option<SystemTime>,
}

/// A refresh the request waited for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshFact {
    /// `expired` (no valid token) or `forced` (after an upstream 401).
    pub trigger: &'static str,
    /// Whether it produced a token.
    pub ok: bool,
    /// How long the request waited.
    pub duration: Duration,
    /// The token endpoint's `error` code, if it failed with one.
    pub oauth_error: Option<String>,
}

/// Everything known about one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RequestFacts {
    /// Authenticated client id.
    pub client: Option<Arc<str>>,
    /// Matched route id.
    pub route: Option<Arc<str>>,
    /// The route's credential id, known before acquisition is tried.
    pub route_credential: Option<Arc<str>>,
    /// The stage that refused the request: `client_auth`, `router`,
    /// `authorize`, `credential`, `limits`.
    pub rejected_by: Option<&'static str>,
    /// The credential used, last attempt wins.
    pub credential: Option<CredentialFact>,
    /// The upstream's status, last attempt wins.
    pub upstream_status: Option<u16>,
    /// Time to the upstream's response headers, last attempt.
    pub upstream_time: Option<Duration>,
    /// Requests sent upstream (2 after a replay).
    pub upstream_attempts: u8,
    /// A refresh the request waited for.
    pub refresh: Option<RefreshFact>,
    /// The 401 retry's outcome, if one was considered.
    pub retry: Option<&'static str>,
}

/// The shared slot; see the module docs.
#[derive(Debug, Default)]
pub struct Facts(Mutex<RequestFacts>);

impl Facts {
    /// A new empty slot.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Updates the facts.
    pub fn update(&self, f: impl FnOnce(&mut RequestFacts)) {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }

    /// A copy of the facts so far.
    pub fn snapshot(&self) -> RequestFacts {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Records into `req`'s facts, if it has a slot.
pub fn record<B>(req: &Request<B>, f: impl FnOnce(&mut RequestFacts)) {
    if let Some(facts) = req.extensions().get::<Arc<Facts>>() {
        facts.update(f);
    }
}

/// One refresh attempt, as reported by a refreshing credential source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefreshEvent {
    /// Credential id.
    pub credential: Arc<str>,
    /// `proactive`, `expired`, `forced`, `manual`.
    pub trigger: &'static str,
    /// Whether a token was obtained (or adopted from the store).
    pub ok: bool,
    /// Whether the token was adopted from a shared store instead of fetched.
    pub adopted: bool,
    /// How long the attempt took.
    pub duration: Duration,
    /// The error, if it failed (never a secret).
    pub error: Option<String>,
    /// The token endpoint's `error` code, if it sent one.
    pub oauth_error: Option<String>,
    /// The generation now served.
    pub generation: u64,
    /// Expiry of the token now served.
    pub expires_at: Option<SystemTime>,
}

/// Receives refresh events (the audit layer writes them as records and
/// metrics).
pub trait RefreshObserver: std::fmt::Debug + Send + Sync + 'static {
    /// Called once per refresh attempt, after it ended.
    fn on_refresh(&self, event: &RefreshEvent);
}

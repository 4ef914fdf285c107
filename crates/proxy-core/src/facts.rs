//! What each layer learned about a request, for the audit record.
//!
//! The audit layer (outermost) opens a [`Facts`] slot with [`Facts::open`]:
//! one allocation that holds what the request looked like as it arrived
//! ([`RequestMeta`], captured once, sharing the request's bytes), when it
//! arrived, and the facts; the slot goes into the request's
//! [`RequestContext`] (its one context extension) and the audit layer
//! keeps the other reference. Every layer below writes what
//! it knows (who the client is, which route,
//! which credential and generation was injected, whether a refresh ran, what
//! the upstream answered, how a 401 retry ended) with [`record`]. Because the
//! facts live in a shared slot rather than in the response, they survive
//! error paths, where the response is produced by the edge layer from an
//! error. A request without a `Facts` slot (layers used on their own) records
//! nothing.
//!
//! Only ids, numbers and fixed strings go in here: never a header value, a
//! query string or a secret.

use crate::context::{RequestContext, RequestId};
use http::{Extensions, HeaderValue, Method, Request, Uri};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What a request looked like as it arrived, for its audit record. Cheap
/// to capture: every field shares its bytes with the request.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    /// The method.
    pub method: Method,
    /// The request target; only its path and authority are ever written.
    pub uri: Uri,
    /// The `Host` header, if the request had one.
    pub host_header: Option<HeaderValue>,
    /// The caller's address, from [`ConnInfo`](crate::context::ConnInfo).
    pub remote_addr: Option<SocketAddr>,
    /// The request id, from [`RequestId`].
    pub request_id: Option<RequestId>,
}

impl RequestMeta {
    /// Captures what the record needs from `req`.
    pub fn from_request<B>(req: &Request<B>) -> Self {
        let ctx = RequestContext::of(req.extensions());
        Self {
            method: req.method().clone(),
            uri: req.uri().clone(),
            host_header: req.headers().get(http::header::HOST).cloned(),
            remote_addr: ctx.and_then(|c| c.conn).map(|c| c.remote_addr),
            request_id: ctx.and_then(|c| c.id.clone()),
        }
    }

    /// The host as the caller addressed it: the `Host` header (if it is
    /// visible ASCII, as the router also requires), else the URI's
    /// authority, else empty; never with a `user:password@` part
    /// ([`request_host`](crate::router::request_host)).
    pub fn host(&self) -> &str {
        crate::router::request_host(self.host_header.as_ref(), &self.uri).unwrap_or("")
    }
}

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
    /// No attempt ran: the credential was backing off after failed
    /// attempts, and the request failed at once (`ok` is false).
    pub backing_off: bool,
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
    /// The upstream's answer came to the request sent again after a
    /// reused connection lost it ([`crate::upstream::Resent`]).
    pub upstream_resent: bool,
    /// A refresh the request waited for.
    pub refresh: Option<RefreshFact>,
    /// The 401 retry's outcome, if one was considered.
    pub retry: Option<&'static str>,
    /// The 401 retry is sending the request again (its outcome, in
    /// `retry`, is not known until the replay is answered): the facts of
    /// the first attempt's answer (`upstream_status`, `upstream_time`) are
    /// cleared, so a record written before the replay is answered (the
    /// caller went away, the replay failed before it was sent) does not
    /// pair the refused answer with the new credential.
    pub replaying: bool,
}

/// The shared slot; see the module docs.
#[derive(Debug)]
pub struct Facts {
    meta: RequestMeta,
    arrived: Instant,
    facts: Mutex<RequestFacts>,
}

impl Facts {
    /// A new empty slot, for no request in particular (tests, layers used
    /// on their own): the meta is empty, the arrival is now.
    pub fn new() -> Arc<Self> {
        Self::with_meta(RequestMeta::default())
    }

    /// Opens `req`'s slot: captures its [`RequestMeta`], notes its arrival
    /// (now) and puts the slot into its [`RequestContext`] (replacing any
    /// there; a request without a context gets one). The returned
    /// reference is the opener's.
    pub fn open<B>(req: &mut Request<B>) -> Arc<Self> {
        let slot = Self::with_meta(RequestMeta::from_request(req));
        RequestContext::of_mut(req.extensions_mut()).facts = Some(slot.clone());
        slot
    }

    fn with_meta(meta: RequestMeta) -> Arc<Self> {
        Arc::new(Self {
            meta,
            arrived: Instant::now(),
            facts: Mutex::default(),
        })
    }

    /// The request as it arrived (empty for a slot made with
    /// [`new`](Self::new)).
    pub fn meta(&self) -> &RequestMeta {
        &self.meta
    }

    /// When the slot was opened: the request's arrival.
    pub fn arrived(&self) -> Instant {
        self.arrived
    }

    /// Updates the facts.
    pub fn update(&self, f: impl FnOnce(&mut RequestFacts)) {
        // Plain data: a panic elsewhere cannot leave it inconsistent.
        let mut g = self.facts.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g);
    }

    /// A copy of the facts so far.
    pub fn snapshot(&self) -> RequestFacts {
        self.facts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Records into `req`'s facts, if it has a slot.
pub fn record<B>(req: &Request<B>, f: impl FnOnce(&mut RequestFacts)) {
    if let Some(facts) = slot(req.extensions()) {
        facts.update(f);
    }
}

/// The facts slot in `ext` (in its [`RequestContext`]), if one was opened.
pub fn slot(ext: &Extensions) -> Option<&Arc<Facts>> {
    RequestContext::of(ext)?.facts.as_ref()
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
    /// The source was retired by a reload (see
    /// [`CredentialSource::retire`](crate::credential::CredentialSource::retire)):
    /// still counted and recorded, but the credential's timestamp gauges
    /// are no longer its.
    pub retired: bool,
}

/// Receives refresh events (the audit layer writes them as records and
/// metrics).
pub trait RefreshObserver: std::fmt::Debug + Send + Sync + 'static {
    /// Called once per refresh attempt, after it ended.
    fn on_refresh(&self, event: &RefreshEvent);

    /// Called when credential `credential` took up a newer token that
    /// another process stored, outside any refresh attempt (after a save
    /// of its own was refused as stale, or a hand-over): no refresh ran,
    /// but the token served, and its expiry (`expires_at`), changed.
    fn on_adopted(&self, credential: &str, expires_at: Option<SystemTime>) {
        let _ = (credential, expires_at);
    }
}

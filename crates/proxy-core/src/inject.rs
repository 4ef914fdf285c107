//! Credential injection: header, query parameter or HTTP basic.
//!
//! Sits directly outside the forwarder, inside credential acquisition: it
//! takes the [`Credential`] the acquire layer put in the request's context
//! (an [`Acquired`](crate::acquire::Acquired) in its
//! [`RequestContext`](crate::context::RequestContext), taken here) and writes it
//! where the upstream expects it. Like tower-http's
//! `AddAuthorization` it does no I/O and returns the inner future unchanged on
//! the normal path. A caller-supplied header or query parameter of the same
//! name is replaced, never merged. Injected headers are marked sensitive so
//! HTTP/2 never indexes them and debug output hides them.
//!
//! The rendered header value is cached per credential value, so the steady
//! state costs an atomic load and a pointer comparison, not a `format!`.
//!
//! On a route that injects into the query, the parameter is also removed
//! from the response's `Location` and `Content-Location` ([`Scrub`]): an
//! upstream's redirect that keeps the query would otherwise hand the
//! credential to the caller.

use crate::config::{InjectConfig, Username};
use crate::credential::Credential;
use crate::error::{BoxError, CredentialUnavailable};
use crate::secret::SecretSource;
use arc_swap::ArcSwapOption;
use base64::Engine;
use futures_util::future::{Either, Ready, ready};
use http::{HeaderName, HeaderValue, Request, Uri, header};
use std::sync::Arc;
use std::task::{Context, Poll};
use tower::{Layer, Service};

const TOKEN: &str = "{token}";

/// A parsed `inject:` block (no secrets resolved yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InjectSpec {
    /// `header: NAME` with `format` split around `{token}`.
    Header {
        /// Header to set.
        name: HeaderName,
        /// Text before the token.
        prefix: String,
        /// Text after the token.
        suffix: String,
    },
    /// `query: PARAM`.
    Query {
        /// Parameter name.
        param: String,
    },
    /// `basic: { username }`; the credential is the password.
    Basic {
        /// The user name as configured.
        username: UsernameSpec,
    },
}

/// A basic-auth user name as configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UsernameSpec {
    /// Inline.
    Plain(String),
    /// From a secret reference, described without its value.
    Secret(String),
}

/// A config problem inside `inject`, with a path relative to it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("inject{path}: {message}")]
pub struct SpecError {
    /// Relative path such as `.header`.
    pub path: &'static str,
    /// What is wrong.
    pub message: String,
}

fn spec_err(path: &'static str, message: impl Into<String>) -> SpecError {
    SpecError {
        path,
        message: message.into(),
    }
}

/// Headers that cannot carry a credential: they describe the connection or
/// message framing, or are rewritten by the forwarder.
const FORBIDDEN_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "upgrade",
    "te",
    "trailer",
    "proxy-connection",
    "proxy-authorization",
    "proxy-authenticate",
];

/// Headers the forwarder writes after injection: a credential put there
/// would be overwritten (`x-request-id`) or altered (`x-forwarded-for`
/// gets the caller's address appended) on its way to the upstream.
const FORWARDER_HEADERS: &[&str] = &[
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

impl InjectSpec {
    /// Parses an `inject:` block; `None` means the default
    /// `Authorization: Bearer {token}`.
    pub fn parse(cfg: Option<&InjectConfig>) -> Result<Self, SpecError> {
        let Some(cfg) = cfg else {
            return Ok(Self::Header {
                name: header::AUTHORIZATION,
                prefix: "Bearer ".into(),
                suffix: String::new(),
            });
        };
        let set = [
            cfg.header.is_some(),
            cfg.query.is_some(),
            cfg.basic.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set != 1 {
            return Err(spec_err("", "set exactly one of header, query or basic"));
        }
        if cfg.format.is_some() && cfg.header.is_none() {
            return Err(spec_err(
                ".format",
                "format applies only to header injection",
            ));
        }
        if let Some(h) = &cfg.header {
            // The value is not echoed: a pasted `Authorization: Bearer ...`
            // line may have landed here. A name from the fixed lists below
            // is no secret, so those errors say which header it is.
            let name = HeaderName::from_bytes(h.as_bytes()).map_err(|_| {
                spec_err(
                    ".header",
                    "is not a valid header name (just the name, such as x-api-key: \
                     letters, digits and -, no spaces or colon; the value is built by format)",
                )
            })?;
            if FORBIDDEN_HEADERS.contains(&name.as_str()) {
                return Err(spec_err(
                    ".header",
                    format!("{name} cannot carry a credential (connection or framing header)"),
                ));
            }
            if FORWARDER_HEADERS.contains(&name.as_str()) {
                return Err(spec_err(
                    ".header",
                    format!(
                        "{name} cannot carry a credential: latchkey writes it for every forwarded request"
                    ),
                ));
            }
            let default = if name == header::AUTHORIZATION {
                "Bearer {token}"
            } else {
                TOKEN
            };
            // The format is not echoed: a token pasted in place of
            // `{token}` is exactly the mistake these errors catch.
            let format = cfg.format.as_deref().unwrap_or(default);
            let (prefix, suffix) = format.split_once(TOKEN).ok_or_else(|| {
                spec_err(
                    ".format",
                    format!(
                        "must contain {TOKEN} where the token goes, such as \"Bearer {TOKEN}\" \
                         (never the token itself)"
                    ),
                )
            })?;
            if suffix.contains(TOKEN) {
                return Err(spec_err(".format", format!("must contain {TOKEN} once")));
            }
            if HeaderValue::from_str(prefix).is_err() || HeaderValue::from_str(suffix).is_err() {
                return Err(spec_err(
                    ".format",
                    "has characters not allowed in a header value (a control character \
                     such as a line break, or non-ASCII text)",
                ));
            }
            return Ok(Self::Header {
                name,
                prefix: prefix.to_string(),
                suffix: suffix.to_string(),
            });
        }
        if let Some(q) = &cfg.query {
            if q.is_empty() {
                return Err(spec_err(".query", "parameter name cannot be empty"));
            }
            return Ok(Self::Query { param: q.clone() });
        }
        match &cfg.basic {
            Some(b) => Ok(Self::Basic {
                username: match &b.username {
                    Username::Plain(u) if u.contains(':') => {
                        return Err(spec_err(
                            ".basic.username",
                            "a basic-auth user name cannot contain ':'",
                        ));
                    }
                    Username::Plain(u) => UsernameSpec::Plain(u.clone()),
                    Username::Secret(r) => UsernameSpec::Secret(r.describe()),
                },
            }),
            None => Err(spec_err("", "set exactly one of header, query or basic")),
        }
    }
}

/// A ready-to-run injection (secrets resolved).
#[derive(Clone, Debug)]
pub enum Injection {
    /// Set `name: prefix + token + suffix`.
    Header {
        /// Header to set.
        name: HeaderName,
        /// Text before the token.
        prefix: String,
        /// Text after the token.
        suffix: String,
    },
    /// Set query parameter `param` to the token.
    Query {
        /// Parameter name.
        param: String,
    },
    /// `Authorization: Basic base64(username:token)`.
    Basic {
        /// The user name.
        username: SecretSource,
    },
}

impl Injection {
    /// Builds an injection from a parsed spec and the route's config.
    pub fn from_spec(
        spec: InjectSpec,
        cfg: Option<&InjectConfig>,
        poll: std::time::Duration,
    ) -> Self {
        Self::from_spec_with(spec, cfg, poll, None)
    }

    /// As [`from_spec`](Self::from_spec), with the basic-auth user name's
    /// source given (`username`: one a reload kept, with the last value it
    /// read) instead of resolved from the config's secret reference.
    pub fn from_spec_with(
        spec: InjectSpec,
        cfg: Option<&InjectConfig>,
        poll: std::time::Duration,
        username: Option<SecretSource>,
    ) -> Self {
        match spec {
            InjectSpec::Header {
                name,
                prefix,
                suffix,
            } => Self::Header {
                name,
                prefix,
                suffix,
            },
            InjectSpec::Query { param } => Self::Query { param },
            InjectSpec::Basic { .. } => {
                let username = match cfg.and_then(|c| c.basic.as_ref()).map(|b| &b.username) {
                    Some(Username::Secret(r)) => {
                        username.unwrap_or_else(|| SecretSource::resolve(r, poll))
                    }
                    Some(Username::Plain(u)) => SecretSource::fixed(u.clone()),
                    None => SecretSource::fixed(String::new()),
                };
                Self::Basic { username }
            }
        }
    }

    /// The header this injection sets, if any.
    pub fn header_name(&self) -> Option<&HeaderName> {
        match self {
            Self::Header { name, .. } => Some(name),
            Self::Basic { .. } => Some(&header::AUTHORIZATION),
            Self::Query { .. } => None,
        }
    }

    /// Renders the header value for `cred` (not for query injection).
    pub fn render_header(&self, cred: &Credential) -> Result<HeaderValue, String> {
        let text = match self {
            Self::Header { prefix, suffix, .. } => {
                let mut s =
                    String::with_capacity(prefix.len() + cred.expose().len() + suffix.len());
                s.push_str(prefix);
                s.push_str(cred.expose());
                s.push_str(suffix);
                s
            }
            Self::Basic { username } => {
                let user = username
                    .load()
                    .map_err(|e| format!("basic-auth user name: {e}"))?;
                // Checked at load for an inline name; one from a secret is
                // checked here. The upstream would split `svc:team:key`
                // into user `svc` and password `team:key` (RFC 7617).
                if user.expose().contains(':') {
                    return Err("the basic-auth user name (from its secret) contains ':', which would split it into another user and password".into());
                }
                let pair = format!("{}:{}", user.expose(), cred.expose());
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                )
            }
            Self::Query { .. } => return Err("query injection has no header".into()),
        };
        let mut v = HeaderValue::from_str(&text).map_err(|_| {
            "the credential holds characters not allowed in a header value".to_string()
        })?;
        v.set_sensitive(true);
        Ok(v)
    }
}

/// Sets `param=value` in `uri`'s query, dropping any `param` the caller sent
/// and leaving every other byte of the query as it was.
pub fn set_query_param(uri: &Uri, param: &str, value: &str) -> Result<Uri, http::Error> {
    let mut query = String::new();
    if let Some(q) = uri.query() {
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let key = pair.split_once('=').map_or(pair, |(k, _)| k);
            let decoded: String = form_urlencoded::parse(key.as_bytes())
                .next()
                .map(|(k, _)| k.into_owned())
                .unwrap_or_default();
            if decoded != param {
                query.push_str(pair);
                query.push('&');
            }
        }
    }
    query.push_str(
        &form_urlencoded::Serializer::new(String::new())
            .append_pair(param, value)
            .finish(),
    );
    let pq = format!("{}?{}", uri.path(), query);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq.parse()?);
    Ok(Uri::from_parts(parts)?)
}

/// Injects the request's credential; see the module docs.
#[derive(Clone, Debug)]
pub struct InjectLayer {
    injection: Arc<Injection>,
}

impl InjectLayer {
    /// A layer applying `injection`.
    pub fn new(injection: Injection) -> Self {
        Self {
            injection: Arc::new(injection),
        }
    }
}

impl<S> Layer<S> for InjectLayer {
    type Service = Inject<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Inject {
            inner,
            injection: self.injection.clone(),
            cache: Arc::new(ArcSwapOption::empty()),
        }
    }
}

/// The service built by [`InjectLayer`].
#[derive(Clone, Debug)]
pub struct Inject<S> {
    inner: S,
    injection: Arc<Injection>,
    /// The last header rendered: for which credential, which version of a
    /// Basic user name (0 otherwise), and the value.
    cache: Arc<ArcSwapOption<(Arc<Credential>, u64, HeaderValue)>>,
}

impl<S> Inject<S> {
    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
    /// The wrapped service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }

    fn header_for(&self, cred: &Arc<Credential>) -> Result<HeaderValue, String> {
        // A Basic user name from a `file` secret can change on its own.
        let user = match &*self.injection {
            Injection::Basic { username } => username.load().map_or(0, |u| u.version()),
            _ => 0,
        };
        if let Some(hit) = self.cache.load().as_ref()
            && Arc::ptr_eq(&hit.0, cred)
            && hit.1 == user
        {
            return Ok(hit.2.clone());
        }
        let v = self.injection.render_header(cred)?;
        self.cache
            .store(Some(Arc::new((cred.clone(), user, v.clone()))));
        Ok(v)
    }

    /// Writes `cred` into `req`.
    pub fn apply<B>(&self, req: &mut Request<B>, cred: &Arc<Credential>) -> Result<(), String> {
        match &*self.injection {
            Injection::Query { param } => {
                let uri = set_query_param(req.uri(), param, cred.expose())
                    .map_err(|_| "the credential cannot be written into the query".to_string())?;
                *req.uri_mut() = uri;
            }
            inj => {
                let v = self.header_for(cred)?;
                if let Some(name) = inj.header_name() {
                    req.headers_mut().insert(name.clone(), v);
                }
            }
        }
        Ok(())
    }
}

impl<S, B, RB> Service<Request<B>> for Inject<S>
where
    S: Service<Request<B>, Response = http::Response<RB>, Error = BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Either<Scrub<S::Future>, Ready<Result<S::Response, BoxError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let acquired = req
            .extensions_mut()
            .get_mut::<crate::context::RequestContext>()
            .and_then(|c| c.acquired.take());
        let mut injected = None;
        if let Some(acquired) = acquired {
            let used = acquired.used;
            if let Err(reason) = self.apply(&mut req, &acquired.credential) {
                // Not sent: the record says so, whatever an earlier attempt
                // (a 401 retry's first) injected.
                crate::facts::record(&req, |f| {
                    f.rejected_by = Some("credential");
                    f.credential = Some(crate::facts::CredentialFact {
                        id: used.id.clone(),
                        generation: None,
                        outcome: crate::facts::CredentialOutcome::Unavailable,
                        obtained_at: None,
                        expires_at: None,
                    });
                });
                let id = used.id.to_string();
                return Either::Right(ready(Err(CredentialUnavailable { id, reason }.into())));
            }
            // Recorded only now that the value is really in the request: the
            // audit record never claims a credential that was not sent.
            let fact = crate::facts::CredentialFact {
                id: used.id,
                generation: Some(used.generation),
                outcome: crate::facts::CredentialOutcome::Injected,
                obtained_at: Some(used.obtained_at),
                expires_at: used.expires_at,
            };
            crate::facts::record(&req, |f| f.credential = Some(fact));
            injected = Some(acquired.credential);
        }
        Either::Left(Scrub::new(self.inner.call(req), &self.injection, injected))
    }
}

mod scrub;
pub use scrub::Scrub;

#[cfg(test)]
mod tests;

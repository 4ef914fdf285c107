//! The proxy's failure types and their classification.
//!
//! Each failure is a small `thiserror` type. Layers return them boxed as
//! [`BoxError`]; the [`edge`](crate::edge) layer walks the `source()` chain
//! with [`classify`] to decide the HTTP status and the stable error code, so
//! the mapping does not depend on how layers are ordered or wrapped.

use http::StatusCode;
use std::error::Error as StdError;
use std::fmt;

/// The error type at every layer boundary.
pub type BoxError = Box<dyn StdError + Send + Sync>;

/// A stable, machine-readable error code, sent to callers as
/// `{"error":{"code": ...}}` and in the `x-latchkey-error` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The caller presented no proxy token, or an unknown one (401).
    ClientUnauthenticated,
    /// The caller's token is valid but not allowed on this route (403).
    ClientForbidden,
    /// No route matches the request's host and path (404).
    NoRoute,
    /// The request body is larger than the route allows (413).
    BodyTooLarge,
    /// The request is malformed (400).
    BadRequest,
    /// The method is never forwarded: `TRACE` or `CONNECT` (405).
    MethodNotAllowed,
    /// The upstream could not be reached, or its TLS handshake failed (502).
    UpstreamUnreachable,
    /// No usable credential could be obtained for the route (503).
    CredentialUnavailable,
    /// Too many requests in flight; retry shortly (503 with `Retry-After`).
    Overloaded,
    /// The upstream did not answer in time (504).
    UpstreamTimeout,
    /// The caller had not sent the whole request body when the route's
    /// `timeout` ran out, and the upstream was waiting for it (408).
    RequestTimeout,
    /// A bug or an unexpected failure inside the proxy (500).
    Internal,
    /// The proxy stopped while the request was in flight (its drain
    /// timeout ran out, or a second stop signal): the caller's connection
    /// was closed without an answer. Recorded as 503 in the audit trail;
    /// never sent.
    Shutdown,
}

impl ErrorCode {
    /// The code as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientUnauthenticated => "client_unauthenticated",
            Self::ClientForbidden => "client_forbidden",
            Self::NoRoute => "no_route",
            Self::BodyTooLarge => "body_too_large",
            Self::BadRequest => "bad_request",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::CredentialUnavailable => "credential_unavailable",
            Self::Overloaded => "overloaded",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::RequestTimeout => "request_timeout",
            Self::Internal => "internal_error",
            Self::Shutdown => "shutdown",
        }
    }

    /// The HTTP status a caller gets for this code.
    pub fn status(self) -> StatusCode {
        match self {
            Self::ClientUnauthenticated => StatusCode::UNAUTHORIZED,
            Self::ClientForbidden => StatusCode::FORBIDDEN,
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest => StatusCode::BAD_REQUEST,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UpstreamUnreachable => StatusCode::BAD_GATEWAY,
            Self::CredentialUnavailable | Self::Overloaded | Self::Shutdown => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The caller did not authenticate to the proxy.
#[derive(Debug, thiserror::Error)]
pub enum ClientUnauthenticated {
    /// No `Authorization: Bearer` or `Proxy-Authorization: Bearer` header.
    #[error(
        "this route requires a proxy token (Authorization: Bearer or Proxy-Authorization: Bearer)"
    )]
    Missing,
    /// A token was presented but matches no configured client.
    #[error("the proxy token presented matches no configured client")]
    Invalid,
    /// No token, and the verified client certificate's URI SANs match no
    /// client's `tls_san`.
    #[error(
        "the client certificate presented identifies no configured client (no URI SAN matches a client's tls_san) and no proxy token was sent"
    )]
    UnknownCertificate,
}

/// The caller authenticated but may not use the route.
#[derive(Debug, thiserror::Error)]
#[error("client {client:?} is not allowed on route {route:?}")]
pub struct ClientForbidden {
    /// The authenticated client's id.
    pub client: String,
    /// The route it asked for.
    pub route: String,
}

/// No route matched.
#[derive(Debug, thiserror::Error)]
#[error("no route matches host {host:?} and path {path:?}")]
pub struct NoRoute {
    /// The request's host (without port), if any.
    pub host: String,
    /// The request's path (never the query).
    pub path: String,
}

/// The request body exceeds the route's limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the route's limit of {limit} bytes")]
pub struct BodyTooLarge {
    /// The configured limit in bytes.
    pub limit: u64,
}

/// The request could not be processed as sent.
#[derive(Debug, thiserror::Error)]
#[error("bad request: {0}")]
pub struct BadRequest(pub String);

/// The request's method is never forwarded: `TRACE`, whose answer is the
/// request as the upstream received it, injected credential included
/// (nginx answers it with 405 too), and `CONNECT`, a request for a tunnel,
/// which a reverse proxy does not open.
#[derive(Debug)]
pub struct MethodNotAllowed(pub http::Method);

impl fmt::Display for MethodNotAllowed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == http::Method::CONNECT {
            write!(
                f,
                "CONNECT is not supported: latchkey is a reverse proxy and opens no tunnels; send the request itself to the route's path"
            )
        } else {
            write!(
                f,
                "{} is not forwarded: an upstream answering it would echo the request, with the injected credential, back to the caller",
                self.0
            )
        }
    }
}

impl StdError for MethodNotAllowed {}

/// The caller's request body failed while it was read (a malformed chunk,
/// the caller gone mid-body): the listener wraps the inbound body's errors
/// in it, so a failure while sending the request upstream can be told from
/// the upstream's.
#[derive(Debug, thiserror::Error)]
#[error("the request body could not be read: {0}")]
pub struct CallerBodyError(#[source] pub BoxError);

impl CallerBodyError {
    /// Wraps the inbound body's error.
    pub fn new(e: impl Into<BoxError>) -> Self {
        Self(e.into())
    }
}

/// No credential could be obtained.
#[derive(Debug, thiserror::Error)]
#[error("credential {id:?} is unavailable: {reason}")]
pub struct CredentialUnavailable {
    /// The credential's id.
    pub id: String,
    /// Why, never containing a secret value.
    pub reason: String,
}

/// The upstream could not be reached.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream} is unreachable")]
pub struct UpstreamUnreachable {
    /// The upstream's origin (scheme + authority).
    pub upstream: String,
    /// The transport error.
    #[source]
    pub source: BoxError,
}

/// The upstream did not answer in time.
#[derive(Debug, thiserror::Error)]
#[error("upstream {upstream} did not {what} within {after:?}")]
pub struct UpstreamTimeout {
    /// The upstream's origin.
    pub upstream: String,
    /// `"connect"` or `"respond"`.
    pub what: &'static str,
    /// The limit that was hit.
    pub after: std::time::Duration,
}

/// The caller stopped sending its request body: the route's `timeout` ran
/// out while the upstream was still waiting for the rest of it.
#[derive(Debug, thiserror::Error)]
#[error(
    "the caller had not sent the whole request body when the route's timeout of {after:?} ran out: the request waited for the caller, not for the upstream"
)]
pub struct RequestTimeout {
    /// The route's `timeout`.
    pub after: std::time::Duration,
}

/// Returns true if `err` or any error in its `source()` chain is an `E`.
pub fn is_caused_by<E: StdError + 'static>(err: &(dyn StdError + 'static)) -> bool {
    find_cause::<E>(err).is_some()
}

/// Finds the first `E` in the `source()` chain of `err`, including `err`.
pub fn find_cause<'a, E: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a E> {
    let mut cur: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        cur = e.source();
    }
    None
}

/// Maps an error to its [`ErrorCode`] by walking the `source()` chain.
///
/// The outermost known type wins, so a layer may wrap an inner failure in a
/// more specific one.
pub fn classify(err: &(dyn StdError + 'static)) -> ErrorCode {
    let mut cur: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = cur {
        if e.is::<ClientUnauthenticated>() {
            return ErrorCode::ClientUnauthenticated;
        }
        if e.is::<ClientForbidden>() {
            return ErrorCode::ClientForbidden;
        }
        if e.is::<NoRoute>() {
            return ErrorCode::NoRoute;
        }
        if e.is::<BodyTooLarge>() || e.is::<http_body_util::LengthLimitError>() {
            return ErrorCode::BodyTooLarge;
        }
        if e.is::<BadRequest>() {
            return ErrorCode::BadRequest;
        }
        if e.is::<MethodNotAllowed>() {
            return ErrorCode::MethodNotAllowed;
        }
        if e.is::<CredentialUnavailable>() {
            return ErrorCode::CredentialUnavailable;
        }
        if e.is::<crate::limit::Overloaded>() {
            return ErrorCode::Overloaded;
        }
        if e.is::<UpstreamTimeout>() {
            return ErrorCode::UpstreamTimeout;
        }
        if e.is::<RequestTimeout>() {
            return ErrorCode::RequestTimeout;
        }
        if e.is::<UpstreamUnreachable>() {
            return ErrorCode::UpstreamUnreachable;
        }
        cur = e.source();
    }
    ErrorCode::Internal
}

/// Renders an error and its sources as one line: `outer: inner: root`.
///
/// Every error type in this crate keeps secrets out of its `Display`, so the
/// chain is safe to show to callers and to log.
pub fn display_chain(err: &(dyn StdError + 'static)) -> String {
    let mut out = err.to_string();
    let mut cur = err.source();
    while let Some(e) = cur {
        let s = e.to_string();
        if !out.ends_with(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
        cur = e.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_walks_sources() {
        let inner = UpstreamTimeout {
            upstream: "https://x".into(),
            what: "respond",
            after: std::time::Duration::from_secs(1),
        };
        let outer = UpstreamUnreachable {
            upstream: "https://x".into(),
            source: Box::new(inner),
        };
        // The outermost known type wins.
        assert_eq!(classify(&outer), ErrorCode::UpstreamUnreachable);
        let io = std::io::Error::other("boom");
        assert_eq!(classify(&io), ErrorCode::Internal);
        assert!(is_caused_by::<UpstreamTimeout>(&outer));
    }

    #[test]
    fn codes_have_expected_statuses() {
        assert_eq!(ErrorCode::NoRoute.status(), 404);
        assert_eq!(ErrorCode::CredentialUnavailable.status(), 503);
        assert_eq!(ErrorCode::UpstreamTimeout.status(), 504);
        assert_eq!(ErrorCode::RequestTimeout.status(), 408);
        assert_eq!(ErrorCode::UpstreamUnreachable.status(), 502);
        assert_eq!(ErrorCode::BodyTooLarge.status(), 413);
    }
}

//! The request's form per protocol: origin form (`/path?query` and `Host`)
//! for HTTP/1.1, scheme and authority (`:authority`, no `Host`) for h2.

use http::Request;
use http::uri::{Authority, Scheme, Uri};

/// Back to `/path?query` (HTTP/1.1 to an origin server), with the
/// `Host` that [`absolute_form`] took out put back from the authority.
pub(super) fn origin_form<B>(req: &mut Request<B>) {
    if !req.headers().contains_key(http::header::HOST)
        && let Some(host) = req
            .uri()
            .authority()
            .and_then(|a| http::HeaderValue::from_str(a.as_str()).ok())
    {
        req.headers_mut().insert(http::header::HOST, host);
    }
    let pq = req
        .uri()
        .path_and_query()
        .cloned()
        .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    *req.uri_mut() = Uri::from(pq);
}

/// h2 carries the scheme and authority in the request; HTTP/1.1 sends
/// only the path (origin form), which is what the forwarder builds.
///
/// The authority replaces `Host` (RFC 9113 section 8.3.1), as nginx and
/// Envoy send it: nginx before 1.29 refuses an h2 request that has both
/// ("client sent duplicate host header").
pub(super) fn absolute_form<B>(req: &mut Request<B>, scheme: &Scheme, authority: &Authority) {
    req.headers_mut().remove(http::header::HOST);
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(scheme.clone());
    parts.authority = Some(authority.clone());
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    // Scheme, authority and path are each valid: the parts make a URI.
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
}

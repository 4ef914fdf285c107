//! The innermost service: sends the request to the route's upstream.
//!
//! Rewrites the request for the upstream (URI from the upstream base URL plus
//! the optionally prefix-stripped path and the untouched query; `Host` set to
//! the upstream's; hop-by-hop headers removed; `X-Forwarded-*` and
//! `x-request-id` added) and streams both bodies without buffering. The route
//! `timeout` bounds the wait for the response headers only, so long-lived
//! streams (SSE) are not cut; a response body the upstream stops sending is
//! cut after the route's `response_idle_timeout` ([`crate::idle`]). A route
//! timeout that runs out while the upstream waits for the rest of the
//! caller's body is the caller's 408, not a 504 ([`Witnessed`]). `Upgrade` requests (WebSocket) are bridged byte
//! for byte after the upstream answers 101 ([`crate::tunnel`]).

use crate::body::{BodyFailure, FailureSlot, UpstreamBody, Witnessed};
use crate::config::UpstreamUrl;
use crate::context::RequestId;
use crate::error::{
    BodyTooLarge, BoxError, RequestTimeout, UpstreamTimeout, UpstreamUnreachable, is_caused_by,
};
use crate::headers::{add_forwarded, is_upgrade, remove_hop_by_hop};
use crate::timer::{Reuse, Reused, deadline_after};
use crate::upstream::{OriginPool, PooledBody, SendError};
use crate::{ProxyBody, boxed};
use futures_util::future::BoxFuture;
use http::{HeaderValue, Method, Request, Response, StatusCode, Uri, Version, header};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;
use tower::Service;

/// Where and how a route forwards.
#[derive(Clone, Debug)]
pub struct ForwardTarget {
    /// The upstream base URL.
    pub upstream: UpstreamUrl,
    /// Prefix to remove from the request path, if `strip_prefix` is on.
    pub strip_prefix: Option<String>,
    /// Limit for the response headers to arrive.
    pub timeout: Duration,
    /// Limit for connecting: TCP, TLS and the HTTP handshake (enforced by
    /// the pool; kept here to name it in errors).
    pub connect_timeout: Duration,
    /// Close a WebSocket tunnel after this long without a byte either
    /// way (zero: never).
    pub tunnel_idle_timeout: Duration,
    /// Cut a response body after this long without a frame from the
    /// upstream (zero: never; see [`crate::idle`]).
    pub response_idle_timeout: Duration,
    /// Largest request body accepted.
    pub max_request_body: Option<u64>,
    /// The header the route injects its credential into, when not
    /// `Authorization` (a caller's `Authorization` trailer is dropped
    /// already, see [`crate::body::CallerBody`]): a caller's trailer of
    /// this name is dropped, so it can neither reach an upstream beside
    /// the injected value nor stand in for it.
    pub credential_header: Option<http::HeaderName>,
}

/// Forwards requests to one upstream; see the module docs.
///
/// Cloned for every request (tower services are), so everything sits
/// behind one `Arc`: a clone is one reference count.
#[derive(Clone, Debug)]
pub struct Forward {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    pool: Arc<OriginPool>,
    target: ForwardTarget,
    host: HeaderValue,
    origin: Arc<str>,
}

impl Forward {
    /// A forwarder for `target` over `pool` (the pool for the target's
    /// origin).
    pub fn new(
        pool: Arc<OriginPool>,
        target: ForwardTarget,
    ) -> Result<Self, http::header::InvalidHeaderValue> {
        let host = HeaderValue::from_str(target.upstream.authority.as_str())?;
        let origin = Arc::from(target.upstream.origin());
        Ok(Self {
            shared: Arc::new(Shared {
                pool,
                target,
                host,
                origin,
            }),
        })
    }

    /// The upstream request's URI in origin form (`/base/rest?query`): what
    /// HTTP/1.1 sends; the pool adds scheme and authority for h2.
    fn upstream_uri(&self, uri: &Uri) -> Result<Uri, String> {
        let t = &self.shared.target;
        let path = uri.path();
        if t.strip_prefix.is_none() && t.upstream.base_path.is_empty() && path.starts_with('/') {
            // Path and query go as they came: share the parsed bytes
            // rather than copy and parse them again.
            if let Some(pq) = uri.path_and_query() {
                return Ok(Uri::from(pq.clone()));
            }
        }
        let rest = match &t.strip_prefix {
            Some(p) => path.strip_prefix(p.as_str()).unwrap_or(path),
            None => path,
        };
        // A prefix without a trailing `/` strips mid-segment: `/pub../x`
        // less `/pub` would be `<base>/../x` upstream.
        if !rest.starts_with('/') && crate::path::starts_with_dot_segment(rest) {
            return Err(
                "the path after the route's prefix starts with a . or .. segment, which would leave the upstream's base path".to_owned(),
            );
        }
        let base = &t.upstream.base_path;
        let query = uri.query();
        let mut pq = String::with_capacity(base.len() + rest.len() + 2 + query.map_or(0, str::len));
        pq.push_str(base);
        if !rest.starts_with('/') {
            pq.push('/');
        }
        pq.push_str(rest);
        if let Some(q) = query {
            pq.push('?');
            pq.push_str(q);
        }
        Uri::try_from(pq).map_err(|e| format!("cannot build the upstream URI: {e}"))
    }
}

impl Service<Request<ProxyBody>> for Forward {
    type Response = Response<ProxyBody>;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, BoxError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The pool has no backpressure of its own; connection limits are
        // applied by the listener.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let uri = match self.upstream_uri(&parts.uri) {
            Ok(u) => u,
            Err(e) => {
                // A path the route's prefix strip would take out of the
                // upstream's base path: refused as the router refuses paths.
                if let Some(f) = crate::facts::slot(&parts.extensions) {
                    f.update(|f| f.rejected_by = Some("router"));
                }
                let e = crate::error::BadRequest(e);
                return Box::pin(async move { Err(e.into()) });
            }
        };
        let limit = self.shared.target.max_request_body;
        if let Some(limit) = limit
            && crate::headers::declared_length(&parts.headers).is_some_and(|len| len > limit)
        {
            if let Some(f) = crate::facts::slot(&parts.extensions) {
                f.update(|f| f.rejected_by = Some("limits"));
            }
            return Box::pin(async move { Err(BodyTooLarge { limit }.into()) });
        }

        let upgrade = parts.version == Version::HTTP_11 && is_upgrade(&parts.headers);
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        // The listener's hold on the tunnel, if it becomes one.
        let scope = match client_upgrade {
            Some(_) => crate::context::RequestContext::of_mut(&mut parts.extensions)
                .tunnel
                .take(),
            None => None,
        };
        let conn = crate::context::conn_info(&parts.extensions);
        // The caller's `Host` value itself (its bytes shared) when it is
        // already what `X-Forwarded-Host` needs; else the authority, or the
        // host without a `user:password@` part, copied.
        let caller_host = match parts.headers.get(header::HOST) {
            // Visible ASCII (as `to_str` checks) and no `@`, in one pass.
            Some(h) if crate::router::plain_host(h.as_bytes()) => Some(h.clone()),
            h => crate::router::request_host(h, &parts.uri)
                .and_then(|host| HeaderValue::from_str(host).ok()),
        };
        remove_hop_by_hop(&mut parts.headers, upgrade);
        add_forwarded(
            &mut parts.headers,
            conn.map(|c| c.remote_addr.ip()),
            conn.is_some_and(|c| c.tls),
            caller_host,
        );
        let request_id = crate::context::request_id(&parts.extensions).map(|id| id.0.clone());
        if let Some(id) = &request_id {
            parts.headers.insert(RequestId::HEADER, id.clone());
        }
        parts.headers.insert(header::HOST, self.shared.host.clone());
        parts.uri = uri;
        // The pool picks h1 or h2 per connection (ALPN); the caller's version
        // must not force one.
        parts.version = Version::HTTP_11;
        // A request without a body can neither exceed the limit nor fail:
        // sent as it is, not boxed again.
        let (body, body_failure) = if http_body::Body::is_end_stream(&body) {
            (body, None)
        } else {
            // hyper frames a body of unknown length only for a method that
            // usually has one: a GET or HEAD with a chunked body (or h2
            // DATA without `content-length`) went out bodiless, the body
            // dropped unread, past `max_request_body` too. Saying chunked
            // makes it send the body (its h2 client drops the header).
            if matches!(parts.method, Method::GET | Method::HEAD)
                && http_body::Body::size_hint(&body).exact().is_none()
                && !parts.headers.contains_key(header::CONTENT_LENGTH)
            {
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    HeaderValue::from_static("chunked"),
                );
            }
            let body = match limit {
                Some(l) => boxed(http_body_util::Limited::new(
                    body,
                    usize::try_from(l).unwrap_or(usize::MAX),
                )),
                None => body,
            };
            let slot = FailureSlot::default();
            let strip = self.shared.target.credential_header.clone();
            (boxed(Witnessed::new(body, slot.clone(), strip)), Some(slot))
        };
        let facts = crate::facts::slot(&parts.extensions).cloned();
        let timer = crate::context::RequestContext::of(&parts.extensions)
            .and_then(|c| c.upstream_timer.clone());
        let req = Request::from_parts(parts, body);

        let shared = self.shared.clone();
        Box::pin(Sending {
            send: shared.pool.clone().send(req),
            started: tokio::time::Instant::now(),
            timer,
            sleep: None,
            after: Some(After {
                shared,
                facts,
                client_upgrade,
                scope,
                limit,
                body_failure,
                request_id,
            }),
        })
    }
}

pin_project! {
    /// [`Forward`]'s future: the pool's send under the route timeout, then
    /// [`After::finish`].
    ///
    /// A named future rather than an `async` block: an `async` block keeps
    /// the request it captured for as long as it runs, beside the send
    /// future that the request was moved into (~250 bytes more per
    /// request, and this future is boxed for every request).
    struct Sending<F> {
        #[pin]
        send: F,
        started: tokio::time::Instant,
        // The connection's spare timer, if the listener gave one.
        timer: Option<Reuse>,
        // The route timeout, armed at the first wait.
        sleep: Option<Reused>,
        after: Option<After>,
    }
}

/// The route timeout ran out before the response headers came.
struct TimedOut;

/// What the response needs once the upstream answered.
struct After {
    shared: Arc<Shared>,
    facts: Option<Arc<crate::facts::Facts>>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    scope: Option<crate::tunnel::TunnelScope>,
    limit: Option<u64>,
    /// Why the request body failed, if it did (see [`Witnessed`]).
    body_failure: Option<FailureSlot>,
    /// Names the response in [`crate::idle`]'s warning.
    request_id: Option<HeaderValue>,
}

type SendResult = Result<Result<Response<PooledBody>, SendError>, TimedOut>;

impl<F> Future for Sending<F>
where
    F: Future<Output = Result<Response<PooledBody>, SendError>>,
{
    type Output = Result<Response<ProxyBody>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if this.after.is_none() {
            // Polled after it completed: a caller's bug, answered as an
            // error rather than a panic.
            return Poll::Ready(Err("forward future polled after completion".into()));
        }
        let had_budget = tokio::task::coop::has_budget_remaining();
        let result = match this.send.poll(cx) {
            Poll::Ready(r) => Ok(r),
            Poll::Pending => {
                // The route timeout's timer is taken (from the connection's
                // spare, see `crate::timer`) only once the send has to wait,
                // and runs from the moment the request was sent.
                let (timer, started) = (&*this.timer, *this.started);
                let timeout = this.after.as_ref().map(|a| a.shared.target.timeout);
                let sleep = this.sleep.get_or_insert_with(|| {
                    let deadline = deadline_after(started, timeout.unwrap_or_default());
                    Reused::until(timer.as_ref(), deadline)
                });
                ready!(sleep.poll_after(had_budget, cx));
                Err(TimedOut)
            }
        };
        let upstream_time = this.started.elapsed();
        match this.after.take() {
            Some(after) => Poll::Ready(after.finish(result, upstream_time)),
            None => Poll::Ready(Err("forward future polled after completion".into())),
        }
    }
}

impl After {
    /// Records the upstream's answer and turns it into the response or
    /// the error the caller gets.
    fn finish(
        self,
        result: SendResult,
        upstream_time: Duration,
    ) -> Result<Response<ProxyBody>, BoxError> {
        let Self {
            shared,
            facts,
            client_upgrade,
            scope,
            limit,
            body_failure,
            request_id,
        } = self;
        let (timeout, connect_timeout) = (shared.target.timeout, shared.target.connect_timeout);
        let origin = &shared.origin;
        if let Some(f) = &facts {
            f.update(|f| {
                f.upstream_attempts = f.upstream_attempts.saturating_add(1);
                f.upstream_time = Some(upstream_time);
                f.upstream_status = match &result {
                    Ok(Ok(r)) => {
                        if r.extensions().get::<crate::upstream::Resent>().is_some() {
                            f.upstream_resent = true;
                        }
                        Some(r.status().as_u16())
                    }
                    _ => None,
                };
            });
        }
        let resp = match result {
            // The upstream was still waiting for the rest of the body
            // from the caller: the caller's stall, not the upstream's.
            Err(_) if body_failure.as_ref().is_some_and(|w| w.waiting_on_caller()) => {
                if let Some(f) = &facts {
                    f.update(|f| f.rejected_by = Some("request_body"));
                }
                return Err(RequestTimeout { after: timeout }.into());
            }
            Err(_) => {
                return Err(UpstreamTimeout {
                    upstream: origin.to_string(),
                    what: "respond",
                    after: timeout,
                }
                .into());
            }
            Ok(Err(e)) => {
                let e = match body_failure.as_ref().and_then(|w| w.failure()) {
                    // Seen on the body itself: over h2 the send's error
                    // does not carry it.
                    Some(BodyFailure::TooLarge) => match limit {
                        Some(limit) => BodyTooLarge { limit }.into(),
                        None => map_client_error(e, origin, limit, connect_timeout),
                    },
                    Some(BodyFailure::Caller(reason)) => {
                        crate::error::BadRequest(reason.clone()).into()
                    }
                    None => map_client_error(e, origin, limit, connect_timeout),
                };
                let stage = if e.is::<BodyTooLarge>() {
                    Some("limits")
                } else if e.is::<crate::error::BadRequest>() {
                    // The caller's body broke off or was malformed.
                    Some("request_body")
                } else {
                    None
                };
                if let Some((f, stage)) = facts.as_ref().zip(stage) {
                    f.update(|f| f.rejected_by = Some(stage));
                }
                return Err(e);
            }
            Ok(Ok(resp)) => resp,
        };
        let (mut parts, body) = resp.into_parts();
        let switching = parts.status == StatusCode::SWITCHING_PROTOCOLS;
        // The upstream may only switch to what was offered: WebSocket
        // (checked before the cleaning, which sets `Upgrade: websocket`).
        if switching && !crate::headers::offers_websocket(&parts.headers) {
            return Err(UpstreamUnreachable {
                upstream: origin.to_string(),
                source: "upstream switched to a protocol other than websocket".into(),
            }
            .into());
        }
        // Before any tunnel starts: a refused response must leave none.
        if !crate::headers::clean_response(&mut parts.headers, switching)
            && !http_body::Body::is_end_stream(&body)
        {
            return Err(UpstreamUnreachable {
                upstream: origin.to_string(),
                source: "the upstream's response has a transfer coding other than chunked, which latchkey does not decode".into(),
            }
            .into());
        }
        if switching {
            match client_upgrade {
                Some(client_side) => crate::tunnel::bridge(
                    client_side,
                    &mut parts,
                    scope,
                    shared.target.tunnel_idle_timeout,
                ),
                None => {
                    return Err(UpstreamUnreachable {
                        upstream: origin.to_string(),
                        source: "upstream switched protocols without an upgrade request".into(),
                    }
                    .into());
                }
            }
        }
        let idle = shared.target.response_idle_timeout;
        // Its trailers are cleaned as its head was (`UpstreamBody`); an
        // ended body (a 101's among them) has none.
        let body = if switching || http_body::Body::is_end_stream(&body) {
            boxed(body)
        } else if idle.is_zero() {
            boxed(UpstreamBody::new(body))
        } else {
            boxed(crate::idle::IdleBody::new(
                UpstreamBody::new(body),
                idle,
                shared.origin.clone(),
                request_id,
            ))
        };
        Ok(Response::from_parts(parts, body))
    }
}

fn map_client_error(
    e: SendError,
    origin: &str,
    limit: Option<u64>,
    connect_timeout: Duration,
) -> BoxError {
    if let Some(limit) = limit
        && is_caused_by::<http_body_util::LengthLimitError>(&e)
    {
        return BodyTooLarge { limit }.into();
    }
    // The caller's body broke while it was sent: the caller's fault (400,
    // as when the 401 retry reads it first), not the upstream's.
    if let Some(body) = crate::error::find_cause::<crate::error::CallerBodyError>(&e) {
        return crate::error::BadRequest(body.to_string()).into();
    }
    let timed_out = matches!(e, SendError::Connect(_))
        && crate::error::find_cause::<std::io::Error>(&e)
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
    if timed_out {
        return UpstreamTimeout {
            upstream: origin.to_string(),
            what: "connect",
            after: connect_timeout,
        }
        .into();
    }
    // hyper refuses a response head of more than 100 header lines (as
    // Envoy's `max_headers_count`), or one over its read buffer, as a
    // parse error: name that, not a connection failure.
    if crate::error::find_cause::<hyper::Error>(&e).is_some_and(hyper::Error::is_parse_too_large) {
        return UpstreamUnreachable {
            upstream: origin.to_string(),
            source: "its response head was refused: more than 100 header lines, or over ~400 KB"
                .into(),
        }
        .into();
    }
    UpstreamUnreachable {
        upstream: origin.to_string(),
        source: Box::new(e),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(upstream: &str, strip: Option<&str>) -> Forward {
        let upstream = UpstreamUrl::parse(upstream).unwrap();
        let pool = crate::upstream::UpstreamClients::new()
            .pool(
                crate::upstream::UpstreamTls::default(),
                Duration::from_secs(1),
                &upstream,
            )
            .unwrap();
        Forward::new(
            pool,
            ForwardTarget {
                upstream,
                strip_prefix: strip.map(str::to_owned),
                timeout: Duration::from_secs(1),
                connect_timeout: Duration::from_secs(1),
                tunnel_idle_timeout: Duration::ZERO,
                response_idle_timeout: Duration::ZERO,
                max_request_body: None,
                credential_header: None,
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn joins_base_path_strip_and_query() {
        let cases = [
            (
                "https://api.example.com",
                Some("/payments/"),
                "/payments/charges?a=1&b=%20",
                "/charges?a=1&b=%20",
            ),
            (
                "https://api.example.com",
                Some("/payments/"),
                "/payments/",
                "/",
            ),
            ("https://search.example.com/v2", None, "/q?x=1", "/v2/q?x=1"),
            ("https://search.example.com/v2/", None, "/", "/v2/"),
            (
                "http://127.0.0.1:9/base",
                Some("/svc"),
                "/svc/a/b",
                "/base/a/b",
            ),
            // Neither a base path nor a prefix to strip: as it came.
            ("http://127.0.0.1:9", None, "/a/b?c=d&e", "/a/b?c=d&e"),
            ("http://127.0.0.1:9/", None, "/", "/"),
            (
                "http://127.0.0.1:9",
                None,
                "http://caller.example/x?y",
                "/x?y",
            ),
        ];
        for (up, strip, path, want) in cases {
            let got = fwd(up, strip).upstream_uri(&path.parse().unwrap()).unwrap();
            assert_eq!(got.to_string(), want, "{up} {strip:?} {path}");
        }
    }

    /// A prefix without a trailing slash strips mid-segment; what is left
    /// must not climb out of the upstream's base path (`/pub../admin` less
    /// `/pub` would be `/public/../admin`).
    #[tokio::test]
    async fn a_stripped_prefix_cannot_leave_the_base_path() {
        let f = fwd("https://up.example.com/public", Some("/pub"));
        for path in [
            "/pub../admin/x",
            "/pub.",
            "/pub..;x/admin",
            "/pub..%2Fadmin",
        ] {
            let e = f.upstream_uri(&path.parse().unwrap()).unwrap_err();
            assert!(e.contains(". or .. segment"), "{path}: {e}");
        }
        let ok = f.upstream_uri(&"/pub..x/y".parse().unwrap()).unwrap();
        assert_eq!(ok.to_string(), "/public/..x/y");
    }
}

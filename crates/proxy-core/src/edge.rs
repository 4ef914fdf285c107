//! Edge errors: the one place an error becomes an HTTP response.
//!
//! Sits just inside the audit layer and outside everything else, so every
//! failure below it (client auth, routing, credentials, the upstream) reaches
//! the caller in one stable shape:
//!
//! ```json
//! {"error":{"code":"upstream_timeout","message":"...","request_id":"..."}}
//! ```
//!
//! plus `x-latchkey-error: <code>`, so a caller can tell a proxy error from an
//! upstream response with the same status. The status and code come from
//! [`classify`], which walks the error's `source()` chain. The
//! [`ErrorCode`] is also left in the response extensions for the audit layer.
//! Every response gets the request's `x-request-id`, and a rendered error
//! the headers a layer below attached to it with [`WithHeaders`].

use crate::context::RequestId;
use crate::error::{BoxError, ErrorCode, classify, display_chain, find_cause};
use crate::{ProxyBody, full};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, header};
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use tower::{Layer, Service};

/// `x-latchkey-error`
pub const X_LATCHKEY_ERROR: HeaderName = HeaderName::from_static("x-latchkey-error");

/// An error that brings headers for the response it is rendered as: a
/// layer that has something to say about the request even when it ends in
/// an error (the 401 retry's `x-latchkey-retry` on a replay that failed)
/// wraps the error in it. Its message and [`ErrorCode`] are those of the
/// error it wraps (its `source()`); headers the rendering sets itself
/// (`x-latchkey-error`, `content-type`) are not replaced.
#[derive(Debug)]
pub struct WithHeaders {
    headers: HeaderMap,
    source: BoxError,
}

// === impl WithHeaders ===

impl WithHeaders {
    /// `source`, rendered with `headers` added.
    pub fn new(source: BoxError, headers: HeaderMap) -> Self {
        Self { headers, source }
    }

    /// The headers the rendered error gets.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }
}

impl std::fmt::Display for WithHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The wrapped error's own words: `display_chain` then prints them
        // once, as it would without the wrapper.
        self.source.fmt(f)
    }
}

impl std::error::Error for WithHeaders {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.source)
    }
}

/// Turns errors into JSON responses; see the module docs.
#[derive(Clone, Copy, Debug, Default)]
pub struct EdgeLayer;

impl EdgeLayer {
    /// The layer.
    pub fn new() -> Self {
        Self
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Edge { inner }
    }
}

/// The service built by [`EdgeLayer`].
#[derive(Clone, Debug)]
pub struct Edge<S> {
    inner: S,
}

impl<S> Edge<S> {
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
}

impl<S, B> Service<Request<B>> for Edge<S>
where
    S: Service<Request<B>, Response = Response<ProxyBody>, Error = BoxError>,
{
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // An inner service that fails readiness fails the next call instead;
        // the error is rendered there.
        match self.inner.poll_ready(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(_) => Poll::Ready(Ok(())),
        }
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let request_id = crate::context::request_id(req.extensions()).cloned();
        ResponseFuture {
            inner: self.inner.call(req),
            request_id,
        }
    }
}

pin_project! {
    /// Future of [`Edge`].
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        request_id: Option<RequestId>,
    }
}

impl<F> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<ProxyBody>, BoxError>>,
{
    type Output = Result<Response<ProxyBody>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut resp = match ready!(this.inner.poll(cx)) {
            Ok(resp) => resp,
            Err(e) => error_response(&*e, this.request_id.as_ref()),
        };
        if let Some(id) = this.request_id.as_ref() {
            resp.headers_mut().insert(RequestId::HEADER, id.0.clone());
        }
        Poll::Ready(Ok(resp))
    }
}

/// Renders `err` as the JSON error response, with the headers of the
/// first [`WithHeaders`] in its `source()` chain.
pub fn error_response(
    err: &(dyn std::error::Error + 'static),
    request_id: Option<&RequestId>,
) -> Response<ProxyBody> {
    let code = classify(err);
    let message = display_chain(err);
    match code {
        ErrorCode::Internal | ErrorCode::UpstreamUnreachable | ErrorCode::CredentialUnavailable => {
            tracing::error!(code = %code, error = %message, "request failed");
        }
        _ => tracing::debug!(code = %code, error = %message, "request refused"),
    }
    let mut resp = json_error(code, &message, request_id);
    if let Some(extra) = find_cause::<WithHeaders>(err) {
        let h = resp.headers_mut();
        for name in extra.headers.keys() {
            if !h.contains_key(name) {
                for value in extra.headers.get_all(name) {
                    h.append(name.clone(), value.clone());
                }
            }
        }
    }
    resp
}

/// A JSON error response for `code` with `message`.
pub fn json_error(
    code: ErrorCode,
    message: &str,
    request_id: Option<&RequestId>,
) -> Response<ProxyBody> {
    let body = serde_json::json!({
        "error": {
            "code": code.as_str(),
            "message": message,
            "request_id": request_id.map(RequestId::as_str),
        }
    });
    let mut resp = Response::new(full(body.to_string()));
    *resp.status_mut() = code.status();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(X_LATCHKEY_ERROR, HeaderValue::from_static(code.as_str()));
    if code == ErrorCode::Overloaded {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    // RFC 9110 15.5.6: a 405 lists the methods allowed. The upstream
    // decides among the others; `TRACE` and `CONNECT` are never forwarded.
    if code == ErrorCode::MethodNotAllowed {
        h.insert(
            header::ALLOW,
            HeaderValue::from_static("GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),
        );
    }
    if code == ErrorCode::ClientUnauthenticated {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"latchkey\""),
        );
    }
    resp.extensions_mut().insert(code);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::NoRoute;
    use http_body_util::BodyExt;
    use tower::{ServiceExt, service_fn};

    #[tokio::test]
    async fn errors_become_json_with_code_header_and_request_id() {
        let svc = EdgeLayer::new().layer(service_fn(|_req: Request<()>| async {
            Err::<Response<ProxyBody>, BoxError>(Box::new(NoRoute {
                host: "h".into(),
                path: "/p".into(),
            }))
        }));
        let mut req = Request::new(());
        req.extensions_mut().insert(crate::context::RequestContext {
            id: Some(RequestId(HeaderValue::from_static("rid-1"))),
            ..Default::default()
        });
        let resp = svc.oneshot(req).await.unwrap();
        assert_eq!(resp.status(), 404);
        assert_eq!(resp.headers()["x-latchkey-error"], "no_route");
        assert_eq!(resp.headers()["x-request-id"], "rid-1");
        assert_eq!(
            resp.extensions().get::<ErrorCode>(),
            Some(&ErrorCode::NoRoute)
        );
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "no_route");
        assert_eq!(v["error"]["request_id"], "rid-1");
        assert!(v["error"]["message"].as_str().unwrap().contains("/p"));
    }

    /// A wrapped error is rendered as the error it wraps (status, code,
    /// message), plus the wrapper's headers, which never replace the
    /// rendering's own.
    #[test]
    fn an_error_with_headers_is_rendered_as_its_source_plus_them() {
        let source = || -> BoxError {
            Box::new(NoRoute {
                host: "h".into(),
                path: "/p".into(),
            })
        };
        let mut headers = HeaderMap::new();
        headers.insert("x-latchkey-retry", HeaderValue::from_static("recovered"));
        headers.insert(X_LATCHKEY_ERROR, HeaderValue::from_static("other"));
        let wrapped = WithHeaders::new(source(), headers);
        let plain = error_response(&*source(), None);
        let resp = error_response(&wrapped, None);
        assert_eq!(resp.status(), plain.status());
        assert_eq!(resp.headers()["x-latchkey-retry"], "recovered");
        assert_eq!(resp.headers()[X_LATCHKEY_ERROR], "no_route");
        assert_eq!(display_chain(&wrapped), display_chain(&*source()));
    }
}

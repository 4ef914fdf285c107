//! A query-injected credential does not come back in a redirect.
//!
//! An upstream that redirects keeps the request's query in `Location` as
//! a matter of course (a trailing-slash 301 from nginx, Apache's
//! `DirectorySlash`, Django's `APPEND_SLASH`), and with query injection
//! that query holds the credential: the caller would be handed the very
//! secret latchkey exists to keep from it. On routes that inject into the
//! query, the parameter is removed from the response's `Location` and
//! `Content-Location` (every other byte kept). Other routes pay one
//! `None` check per response.

use super::Injection;
use http::{HeaderMap, HeaderValue, Response, header};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

pin_project! {
    /// The inner future; on a query-injecting route its response's
    /// `Location` and `Content-Location` lose the credential parameter.
    pub struct Scrub<F> {
        #[pin]
        inner: F,
        // `Some` on a query-injecting route.
        injection: Option<Arc<Injection>>,
    }
}

impl<F> Scrub<F> {
    /// Scrubs `inner`'s response if `injection` injects into the query.
    pub(super) fn new(inner: F, injection: &Arc<Injection>) -> Self {
        let injection = matches!(**injection, Injection::Query { .. }).then(|| injection.clone());
        Self { inner, injection }
    }
}

impl<F, B, E> Future for Scrub<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut out = ready!(this.inner.poll(cx));
        if let (Some(Injection::Query { param }), Ok(resp)) =
            (this.injection.as_deref(), out.as_mut())
        {
            scrub(resp.headers_mut(), param);
        }
        Poll::Ready(out)
    }
}

/// Removes `param` from the query of `headers`' `Location` and
/// `Content-Location`.
pub(super) fn scrub(headers: &mut HeaderMap, param: &str) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let cleaned = headers
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| without_param(v, param))
            .and_then(|v| HeaderValue::from_str(&v).ok());
        if let Some(v) = cleaned {
            headers.insert(name, v);
        }
    }
}

/// `uri` (a URI reference, as `Location` holds) without `param` in its
/// query; `None` if it has no such parameter.
pub(super) fn without_param(uri: &str, param: &str) -> Option<String> {
    let (rest, fragment) = match uri.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (uri, None),
    };
    let (path, query) = rest.split_once('?')?;
    let is_param = |pair: &&str| {
        let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
        form_urlencoded::parse(key.as_bytes())
            .next()
            .is_some_and(|(k, _)| k == param)
    };
    if !query.split('&').any(|p| is_param(&p)) {
        return None;
    }
    let kept: Vec<&str> = query
        .split('&')
        .filter(|p| !p.is_empty() && !is_param(p))
        .collect();
    let mut out = String::with_capacity(uri.len());
    out.push_str(path);
    if !kept.is_empty() {
        out.push('?');
        out.push_str(&kept.join("&"));
    }
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    Some(out)
}

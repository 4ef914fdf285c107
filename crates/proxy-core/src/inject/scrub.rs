//! A query-injected credential does not come back in a redirect.
//!
//! An upstream that redirects keeps the request's query in `Location` as
//! a matter of course (a trailing-slash 301 from nginx, Apache's
//! `DirectorySlash`, Django's `APPEND_SLASH`), and with query injection
//! that query holds the credential: the caller would be handed the very
//! secret latchkey exists to keep from it. On routes that inject into the
//! query, every `Location` and `Content-Location` line of the response
//! loses the parameter, and any copy of the credential left in its query
//! or fragment (a login redirect's `next=` or `return_to=` carrying the
//! whole URL, encoded once more) is cut out; every other byte is kept,
//! non-ASCII ones included. The path is left alone, so a short credential
//! that happens to spell a path segment does not break the redirect.
//! Other routes pay one `None` check per response.

use super::Injection;
use crate::credential::Credential;
use http::{HeaderMap, HeaderValue, Response, header};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

pin_project! {
    /// The inner future; on a query-injecting route its response's
    /// `Location` and `Content-Location` lose the credential.
    pub struct Scrub<F> {
        #[pin]
        inner: F,
        // `Some` on a query-injecting route that injected a credential.
        injected: Option<(Arc<Injection>, Arc<Credential>)>,
    }
}

impl<F> Scrub<F> {
    /// Scrubs `inner`'s response if `injection` put `credential` into the
    /// query.
    pub(super) fn new(
        inner: F,
        injection: &Arc<Injection>,
        credential: Option<Arc<Credential>>,
    ) -> Self {
        let injected = credential
            .filter(|_| matches!(**injection, Injection::Query { .. }))
            .map(|c| (injection.clone(), c));
        Self { inner, injected }
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
        if let (Some((injection, cred)), Ok(resp)) = (this.injected.as_ref(), out.as_mut())
            && let Injection::Query { param } = &**injection
        {
            scrub(resp.headers_mut(), param, cred.expose());
        }
        Poll::Ready(out)
    }
}

/// Removes `param`, and any copy of `secret` in the query or fragment,
/// from every `Location` and `Content-Location` line of `headers`.
pub(super) fn scrub(headers: &mut HeaderMap, param: &str, secret: &str) {
    for name in [header::LOCATION, header::CONTENT_LOCATION] {
        let lines: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
        let cleaned: Vec<Option<Vec<u8>>> = lines
            .iter()
            .map(|v| clean(v.as_bytes(), param, secret))
            .collect();
        if cleaned.iter().all(Option::is_none) {
            continue;
        }
        headers.remove(&name);
        for (line, cleaned) in lines.into_iter().zip(cleaned) {
            let value = match cleaned {
                // Bytes taken out of a valid value leave a valid one; were
                // it ever not, the line is dropped, not sent as it was.
                Some(bytes) => match HeaderValue::from_bytes(&bytes) {
                    Ok(v) => v,
                    Err(_) => continue,
                },
                None => line,
            };
            headers.append(name.clone(), value);
        }
    }
}

/// `uri` without `param` in its query and without copies of `secret` in
/// its query or fragment; `None` if there was nothing to take out.
fn clean(uri: &[u8], param: &str, secret: &str) -> Option<Vec<u8>> {
    let without = without_param(uri, param);
    let redacted = redact(without.as_deref().unwrap_or(uri), secret);
    redacted.or(without)
}

/// `uri` (a URI reference, as `Location` holds) without `param` in its
/// query; `None` if it has no such parameter.
pub(super) fn without_param(uri: &[u8], param: &str) -> Option<Vec<u8>> {
    let hash = uri.iter().position(|&b| b == b'#').unwrap_or(uri.len());
    let (rest, fragment) = uri.split_at(hash);
    let q = rest.iter().position(|&b| b == b'?')?;
    let (path, query) = (&rest[..q], &rest[q + 1..]);
    let is_param = |pair: &&[u8]| {
        let key = pair.split(|&b| b == b'=').next().unwrap_or_default();
        form_urlencoded::parse(key)
            .next()
            .is_some_and(|(k, _)| k == param)
    };
    if !query.split(|&b| b == b'&').any(|p| is_param(&p)) {
        return None;
    }
    let kept: Vec<&[u8]> = query
        .split(|&b| b == b'&')
        .filter(|p| !p.is_empty() && !is_param(p))
        .collect();
    let mut out = Vec::with_capacity(uri.len());
    out.extend_from_slice(path);
    if !kept.is_empty() {
        out.push(b'?');
        out.extend_from_slice(&kept.join(&b'&'));
    }
    out.extend_from_slice(fragment);
    Some(out)
}

/// `uri` with every copy of `secret` after its path cut out: as injected
/// (form-encoded), raw, and encoded once more (nested in another
/// parameter's value). `None` if there was none.
fn redact(uri: &[u8], secret: &str) -> Option<Vec<u8>> {
    if secret.is_empty() {
        return None;
    }
    let start = uri
        .iter()
        .position(|&b| b == b'?' || b == b'#')
        .unwrap_or(uri.len());
    let injected: String = form_urlencoded::byte_serialize(secret.as_bytes()).collect();
    let nested: String = form_urlencoded::byte_serialize(injected.as_bytes()).collect();
    let mut forms = vec![injected, nested, secret.to_owned()];
    forms.sort_unstable();
    forms.dedup();
    // Longest first, so a longer form is not left half cut by a shorter one.
    forms.sort_by_key(|f| std::cmp::Reverse(f.len()));
    let mut tail = uri[start..].to_vec();
    let mut found = false;
    for form in &forms {
        while let Some(at) = tail.windows(form.len()).position(|w| w == form.as_bytes()) {
            tail.drain(at..at + form.len());
            found = true;
        }
    }
    found.then(|| {
        let mut out = uri[..start].to_vec();
        out.extend_from_slice(&tail);
        out
    })
}

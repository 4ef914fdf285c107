//! Resending an idempotent request that a reused connection lost.
//!
//! An upstream closes an idle keep-alive connection when its own idle
//! timeout ends (Node.js after 5 s, Go and nginx after a minute or so). A
//! request written to that connection at the same instant reaches a socket
//! that is already closing: the connection ends with no response, and the
//! caller would get a 502 for a request the upstream never processed.
//! nginx sends such a request again (`proxy_next_upstream error`, the
//! default, for idempotent methods); so does latchkey, within these
//! bounds:
//!
//! - only on a **reused** HTTP/1.1 connection that had been idle for at
//!   least [`QUIET`] (100 ms): a fresh connection that fails says
//!   something about the upstream, not about a stale socket, and an
//!   upstream's idle timer does not close a connection that was busy a
//!   moment ago. This also keeps the cost off a busy proxy: copying the
//!   head costs ~1,500 instructions, ~4% of a request's whole path, and
//!   a connection in steady use is reused within milliseconds, so the copy
//!   is made only where requests are few;
//! - only an **idempotent method** (RFC 9110 section 9.2.2: `GET`, `HEAD`,
//!   `OPTIONS`, `TRACE`, `PUT`, `DELETE`) **without a body**: the copy is
//!   the request head alone, so nothing has to be buffered, and a `POST`
//!   is never sent twice;
//! - only when the connection **closed or was reset before any response**
//!   came (hyper's "incomplete message", or a reset, abort or broken pipe);
//!   a timeout, a malformed response or an answer of any status is final;
//! - **once**, on a **new** connection: if that fails too, the failure is
//!   the caller's answer.
//!
//! (A request hyper hands back unsent, because the connection closed
//! before it was written, is resent whatever its method: see the pool's
//! module docs. This is the case where it was written.)

use crate::ProxyBody;
use http::{HeaderMap, Method, Request, Uri, Version};
use http_body::Body as _;
use std::error::Error as _;
use std::io;
use std::time::Duration;
use tokio::time::Instant;

/// Marks (in its extensions) the response to a request that was sent
/// again after a reused connection lost it, so the proxy can count it
/// (`latchkey_upstream_resends_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resent;

/// How long a pooled connection must have been idle for its request to
/// be kept for a resend.
pub(super) const QUIET: Duration = Duration::from_millis(100);

/// Whether a connection idle since `since` has been idle for [`QUIET`].
pub(super) fn quiet(since: Instant) -> bool {
    since.elapsed() >= QUIET
}

/// What it takes to send a bodyless request again: its head.
pub(super) struct Resend {
    method: Method,
    uri: Uri,
    version: Version,
    headers: HeaderMap,
}

impl Resend {
    /// A copy of `req`'s head if it may be resent (see the module docs).
    /// Boxed: held in every request's send future, where ~200 bytes more
    /// would move that future's allocation out of the allocator's
    /// per-thread cache (glibc's tcache ends at 1,032 bytes) and cost ~300
    /// instructions on every request.
    pub(super) fn of(req: &Request<ProxyBody>) -> Option<Box<Self>> {
        let idempotent = matches!(
            *req.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        (idempotent && req.body().is_end_stream()).then(|| {
            Box::new(Self {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
            })
        })
    }

    /// The request again, with an empty body.
    pub(super) fn into_request(self: Box<Self>) -> Request<ProxyBody> {
        let mut req = Request::new(crate::body::empty());
        *req.method_mut() = self.method;
        *req.uri_mut() = self.uri;
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers;
        req
    }
}

/// Whether `e` says the connection ended before a response: closed
/// mid-message, or reset, aborted or broken under the request.
pub(super) fn lost_connection(e: &hyper::Error) -> bool {
    if e.is_incomplete_message() {
        return true;
    }
    let mut source = e.source();
    while let Some(err) = source {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            return matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::BrokenPipe
                    | io::ErrorKind::UnexpectedEof
            );
        }
        source = err.source();
    }
    false
}

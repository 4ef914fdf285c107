//! [`ProxyBody`]: the one body type every layer works with.
//!
//! A boxed, streaming body (requests and responses are never buffered by
//! the proxy path itself; the box lets an inbound hyper body, a replay
//! buffer or an error page share one type across layers), plus room for
//! the request's in-flight [`Slot`] from the load-shedding layer, which a
//! response must hold until its body ends. Keeping the slot beside the box,
//! rather than wrapping the body in a second box that holds it, saves an
//! allocation per request.

use crate::error::{BoxError, CallerBodyError};
use crate::limit::Slot;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

/// See the module docs. Built with [`boxed`], [`empty`] or [`full`].
#[derive(Default)]
pub struct ProxyBody {
    inner: UnsyncBoxBody<Bytes, BoxError>,
    /// Released when the body is dropped: at its end, or when the caller
    /// goes away first.
    slot: Option<Slot>,
}

impl ProxyBody {
    /// This body, holding `slot` until it is dropped. A body that holds a
    /// slot already (limits nested) is boxed inside the new one, so it
    /// keeps its own slot as long.
    pub fn holding(mut self, slot: Slot) -> Self {
        if self.slot.is_some() {
            self = boxed(self);
        }
        self.slot = Some(slot);
        self
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // `UnsyncBoxBody` is `Unpin` (a pinned box), and so is the slot.
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl fmt::Debug for ProxyBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyBody")
            .field("holds_slot", &self.slot.is_some())
            .finish_non_exhaustive()
    }
}

/// Wraps any body into a [`ProxyBody`].
pub fn boxed<B>(body: B) -> ProxyBody
where
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    ProxyBody {
        inner: body.map_err(Into::into).boxed_unsync(),
        slot: None,
    }
}

pin_project_lite::pin_project! {
    /// A caller's request body as the proxy forwards it: its errors marked
    /// as the caller's ([`CallerBodyError`]), and its trailers without
    /// `Authorization` or `Proxy-Authorization`. Client auth removes those
    /// from the request's headers; a caller could otherwise send them as
    /// trailers (a chunked HTTP/1.1 body, or h2), and an h2 upstream would
    /// get the caller's proxy token. The trailers lose their hop-by-hop,
    /// framing and routing names too ([`crate::headers::clean_trailers`]):
    /// an h2 upstream's client refuses a `te: gzip` or `connection`
    /// trailer, and the body would never end. Per data frame it costs one
    /// check.
    pub struct CallerBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B> CallerBody<B> {
    /// Wraps the body a caller sent.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B> Body for CallerBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = CallerBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, CallerBodyError>>> {
        match std::task::ready!(self.project().inner.poll_frame(cx)) {
            Some(Ok(mut frame)) => {
                if let Some(trailers) = frame.trailers_mut() {
                    trailers.remove(http::header::AUTHORIZATION);
                    crate::headers::clean_trailers(trailers);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(CallerBodyError::new(e)))),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project_lite::pin_project! {
    /// An upstream's response body, its trailers cleaned for the caller
    /// ([`crate::headers::clean_response_trailers`]): hop-by-hop names go,
    /// as from the head (an h2 caller's stream would be reset by a
    /// `connection` trailer instead of ending), and so does any
    /// `x-latchkey-*` name. Unboxed inside the response's one box; per
    /// data frame it costs one check.
    pub struct UpstreamBody<B> {
        #[pin]
        inner: B,
    }
}

impl<B> UpstreamBody<B> {
    /// Wraps the body an upstream sent.
    pub fn new(inner: B) -> Self {
        Self { inner }
    }
}

impl<B: Body<Data = Bytes>> Body for UpstreamBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut polled = std::task::ready!(self.project().inner.poll_frame(cx));
        if let Some(Ok(frame)) = &mut polled
            && let Some(trailers) = frame.trailers_mut()
        {
            crate::headers::clean_response_trailers(trailers);
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Why a request body failed while it was sent upstream, as
/// [`Witnessed`] saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BodyFailure {
    /// It went over the route's `max_request_body`.
    TooLarge,
    /// The caller's side broke (a malformed chunk, the caller gone).
    Caller(String),
}

/// What [`Witnessed`] saw of a request body while it was sent, shared
/// with the forwarder, which reads it once the send is over.
#[derive(Debug, Default)]
pub struct BodyWatch {
    failure: std::sync::OnceLock<BodyFailure>,
    /// The body's last poll found nothing from the caller yet (it had not
    /// ended). hyper polls the body only when the upstream connection can
    /// take more, so this tells a send held up by the caller from one held
    /// up by the upstream.
    waiting_on_caller: std::sync::atomic::AtomicBool,
}

impl BodyWatch {
    /// The first failure seen, if any.
    pub fn failure(&self) -> Option<&BodyFailure> {
        self.failure.get()
    }

    /// Whether the body was last seen waiting for the caller to send more.
    pub fn waiting_on_caller(&self) -> bool {
        self.waiting_on_caller
            .load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Where [`Witnessed`] keeps what it saw.
pub type FailureSlot = std::sync::Arc<BodyWatch>;

pin_project_lite::pin_project! {
    /// A request body that remembers why it failed. Over HTTP/1.1 hyper
    /// returns a body's error as the request's; over h2 it only resets
    /// the stream, and the request fails with "stream error sent by
    /// user". The forwarder reads the slot to answer 413 or 400, as over
    /// HTTP/1.1, instead of blaming the upstream.
    pub struct Witnessed {
        #[pin]
        inner: ProxyBody,
        slot: FailureSlot,
        strip: Option<http::HeaderName>,
    }
}

impl Witnessed {
    /// Wraps `inner`; its first failure goes to `slot`, and a trailer
    /// named `strip` (the route's credential header) is dropped.
    pub fn new(inner: ProxyBody, slot: FailureSlot, strip: Option<http::HeaderName>) -> Self {
        Self { inner, slot, strip }
    }
}

impl Body for Witnessed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        let waiting = &this.slot.waiting_on_caller;
        let polled = match this.inner.poll_frame(cx) {
            Poll::Pending => {
                waiting.store(true, std::sync::atomic::Ordering::Relaxed);
                return Poll::Pending;
            }
            Poll::Ready(polled) => polled,
        };
        // A plain store only on a change: most bodies are never pending.
        if waiting.load(std::sync::atomic::Ordering::Relaxed) {
            waiting.store(false, std::sync::atomic::Ordering::Relaxed);
        }
        let mut polled = polled;
        if let (Some(Ok(frame)), Some(name)) = (&mut polled, this.strip.as_ref())
            && let Some(trailers) = frame.trailers_mut()
        {
            trailers.remove(name);
        }
        if let Some(Err(e)) = &polled {
            let failure = if crate::error::is_caused_by::<http_body_util::LengthLimitError>(&**e) {
                Some(BodyFailure::TooLarge)
            } else {
                crate::error::find_cause::<CallerBodyError>(&**e)
                    .map(|c| BodyFailure::Caller(c.to_string()))
            };
            if let Some(failure) = failure {
                let _ = this.slot.failure.set(failure);
            }
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An empty [`ProxyBody`].
pub fn empty() -> ProxyBody {
    boxed(http_body_util::Empty::new())
}

/// A [`ProxyBody`] holding `bytes`.
pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    boxed(http_body_util::Full::new(bytes.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bodies_stream_what_they_hold_and_say_when_they_end() {
        let body = full("hello");
        assert_eq!(body.size_hint().exact(), Some(5));
        assert!(!body.is_end_stream());
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"hello");

        let body = empty();
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(ProxyBody::default().is_end_stream());
    }

    /// The caller's credential headers and hop-by-hop names never leave in
    /// its trailers; its other trailers and its data do.
    #[tokio::test]
    async fn a_callers_trailers_lose_their_credential_headers() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("authorization", "Bearer proxy-token".parse().unwrap());
        trailers.insert("proxy-authorization", "Basic x".parse().unwrap());
        trailers.insert("x-checksum", "abc".parse().unwrap());
        trailers.insert("te", "gzip".parse().unwrap());
        trailers.insert("connection", "close".parse().unwrap());
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let got = boxed(CallerBody::new(body)).collect().await.unwrap();
        let kept = got.trailers().cloned().unwrap();
        assert_eq!(got.to_bytes(), "hi");
        assert_eq!(kept.len(), 1);
        assert_eq!(kept["x-checksum"], "abc");
    }

    /// An upstream's trailers lose hop-by-hop and `x-latchkey-*` names;
    /// its data and other trailers pass.
    #[tokio::test]
    async fn an_upstreams_trailers_are_cleaned() {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("connection", "close".parse().unwrap());
        trailers.insert("x-latchkey-retry", "recovered".parse().unwrap());
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames = [
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"hi"))),
            Ok(Frame::trailers(trailers)),
        ];
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let got = boxed(UpstreamBody::new(body)).collect().await.unwrap();
        let kept = got.trailers().cloned().unwrap();
        assert_eq!(got.to_bytes(), "hi");
        assert_eq!(kept.keys().collect::<Vec<_>>(), ["grpc-status"]);
    }

    #[test]
    fn debug_does_not_show_the_content() {
        let shown = format!("{:?}", full("secret-bytes"));
        assert!(shown.contains("ProxyBody"), "{shown}");
        assert!(!shown.contains("secret"), "{shown}");
    }
}

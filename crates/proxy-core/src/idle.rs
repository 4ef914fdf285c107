//! [`IdleBody`]: an upstream's response body that is cut when the upstream
//! sends nothing for the route's `response_idle_timeout`.
//!
//! The route's `timeout` bounds only the wait for the response headers, so
//! that long streams (SSE, downloads) are not cut. Without a bound on the
//! body, an upstream that hangs mid-response would hold the caller, the
//! upstream connection and the request's in-flight slot for as long as the
//! caller waits (for ever, for a caller without a timeout of its own). This
//! is nginx's `proxy_read_timeout` (60 s between two reads) and Envoy's
//! `stream_idle_timeout` (5 min), for the response body.
//!
//! The timer is armed only while the body waits: a body whose frames are
//! there when polled (most small responses) never touches the timer wheel.
//! When it fires the body ends with [`ResponseIdle`]: hyper then aborts the
//! response (an HTTP/1.1 caller's connection is closed before the body's
//! end, an h2 caller's stream is reset), the upstream connection is closed,
//! not reused, and a warning names the upstream and the request id.

use crate::error::BoxError;
use bytes::Bytes;
use http::HeaderValue;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// The upstream sent nothing of its response body for the route's
/// `response_idle_timeout`.
#[derive(Debug, thiserror::Error)]
#[error(
    "upstream {upstream} sent nothing of its response body for {after:?}: the response was cut (routes[].response_idle_timeout)"
)]
pub struct ResponseIdle {
    /// The upstream's origin.
    pub upstream: Arc<str>,
    /// The limit that was hit.
    pub after: Duration,
}

pin_project! {
    /// See the module docs.
    pub struct IdleBody<B> {
        #[pin]
        inner: B,
        #[pin]
        timer: Option<Sleep>,
        // Whether `timer` runs for the current wait (it is re-armed after
        // each frame, on the next wait).
        armed: bool,
        after: Duration,
        upstream: Arc<str>,
        request_id: Option<HeaderValue>,
    }
}

impl<B> IdleBody<B> {
    /// `inner`, cut after `after` without a frame. `upstream` and
    /// `request_id` name the response in the warning.
    pub fn new(
        inner: B,
        after: Duration,
        upstream: Arc<str>,
        request_id: Option<HeaderValue>,
    ) -> Self {
        Self {
            inner,
            timer: None,
            armed: false,
            after,
            upstream,
            request_id,
        }
    }
}

impl<B> Body for IdleBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            *this.armed = false;
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if !*this.armed {
            let deadline = Instant::now() + *this.after;
            match this.timer.as_mut().as_pin_mut() {
                Some(timer) => timer.reset(deadline),
                None => this.timer.set(Some(tokio::time::sleep_until(deadline))),
            }
            *this.armed = true;
        }
        let fired = this
            .timer
            .as_pin_mut()
            .is_some_and(|timer| timer.poll(cx).is_ready());
        if fired {
            let e = ResponseIdle {
                upstream: this.upstream.clone(),
                after: *this.after,
            };
            let id = this.request_id.as_ref().and_then(|v| v.to_str().ok());
            tracing::warn!(request_id = id, "{e}");
            Poll::Ready(Some(Err(e.into())))
        } else {
            Poll::Pending
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt as _;
    use std::convert::Infallible;
    use tokio::sync::mpsc;

    /// A body fed by the test through a channel.
    fn fed() -> (mpsc::Sender<Bytes>, IdleBody<crate::ProxyBody>) {
        let (tx, rx) = mpsc::channel::<Bytes>(4);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv()
                .await
                .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
        });
        let body = IdleBody::new(
            crate::boxed(http_body_util::StreamBody::new(stream)),
            Duration::from_secs(60),
            Arc::from("https://api.example.com"),
            Some(HeaderValue::from_static("req-1")),
        );
        (tx, body)
    }

    /// Frames that keep coming, each within the limit, however long the
    /// whole body takes: never cut.
    #[tokio::test(start_paused = true)]
    async fn a_body_that_keeps_coming_is_never_cut() {
        let (tx, body) = fed();
        let feeder = tokio::spawn(async move {
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_secs(59)).await;
                tx.send(Bytes::from_static(b"tick\n")).await.unwrap();
            }
        });
        let got = body.collect().await.unwrap().to_bytes();
        assert_eq!(got.len(), 50, "ten ticks, 59 s apart: 590 s in all");
        feeder.await.unwrap();
    }

    /// A wait longer than the limit ends the body with `ResponseIdle`,
    /// after the frames that came before it, and no earlier than the limit
    /// after the last frame.
    #[tokio::test(start_paused = true)]
    async fn a_silent_upstream_is_cut_after_the_limit() {
        let (tx, body) = fed();
        let mut body = std::pin::pin!(body);
        tx.send(Bytes::from_static(b"first")).await.unwrap();
        let first = body
            .as_mut()
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_data()
            .unwrap();
        assert_eq!(first, "first");
        let since = Instant::now();
        let err = body.as_mut().frame().await.unwrap().unwrap_err();
        assert_eq!(since.elapsed(), Duration::from_secs(60));
        let idle = err.downcast_ref::<ResponseIdle>().unwrap();
        assert_eq!(&*idle.upstream, "https://api.example.com");
        assert_eq!(
            err.to_string(),
            "upstream https://api.example.com sent nothing of its response body for 60s: the response was cut (routes[].response_idle_timeout)"
        );
        drop(tx);
    }

    /// The end of the body (the sender gone) is the end, not a timeout.
    #[tokio::test(start_paused = true)]
    async fn the_end_of_the_body_is_not_a_timeout() {
        let (tx, body) = fed();
        tx.send(Bytes::from_static(b"all")).await.unwrap();
        drop(tx);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "all");
    }
}

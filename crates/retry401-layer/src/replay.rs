//! Replayable request bodies, buffered up to a cap.
//!
//! A request can be replayed only if its whole body is still at hand. Bodies
//! up to the cap are read into memory before the first attempt (linkerd's
//! `replay.rs` keeps a copy while streaming; reading first is simpler and
//! costs only the upload latency of bodies that are small by definition):
//!
//! - a body of known length (`Content-Length`, or an exact size hint) up to
//!   the cap is read whole, waiting for it while it keeps coming (`STALLED`,
//!   a pause of 1 s) and for `READ_AHEAD` (10 s) in all;
//! - a body of unknown length (chunked, or h2 without `Content-Length`) is
//!   read only as far as it arrives without a pause (`ARRIVING`, 20 ms
//!   between frames): if it ends there, within
//!   the cap, it is replayable; if the rest has not arrived yet, what was
//!   read is sent at once, the rest streams behind it, and the request is
//!   not replayable. Waiting for it would hold back a stream its client
//!   keeps open until it hears back (a gRPC client-streaming call: the
//!   request would never be sent), and delay every slow upload;
//! - a body that turns out to be larger than the cap is not an error: what
//!   was read is sent first, the rest streams behind it untouched, and the
//!   request is simply not replayable. A declared `Content-Length` over the
//!   cap skips reading altogether.

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use pin_project_lite::pin_project;
use proxy_core::error::BadRequest;
use proxy_core::{BoxError, ProxyBody, boxed};
use std::pin::Pin;
use std::task::{Context, Poll};

/// A complete copy of a request body.
#[derive(Clone, Debug, Default)]
pub struct Replay {
    data: Bytes,
    trailers: Option<HeaderMap>,
}

impl Replay {
    /// A fresh body with the same bytes (and trailers).
    pub fn body(&self) -> ProxyBody {
        match &self.trailers {
            None if self.data.is_empty() => proxy_core::empty(),
            None => boxed(http_body_util::Full::new(self.data.clone())),
            Some(t) => {
                let mut frames = Vec::with_capacity(2);
                if !self.data.is_empty() {
                    frames.push(Ok::<_, BoxError>(Frame::data(self.data.clone())));
                }
                frames.push(Ok(Frame::trailers(t.clone())));
                boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
                    frames,
                )))
            }
        }
    }

    /// Number of body bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the body is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// Reads `body` up to `cap` bytes. Returns the body to send now and, if the
/// whole body fit, a [`Replay`] for a second attempt.
/// `declared` is the request's `Content-Length`, if it has one.
pub async fn capture(
    body: ProxyBody,
    declared: Option<u64>,
    cap: u64,
) -> Result<(ProxyBody, Option<Replay>), BoxError> {
    if body.is_end_stream() {
        return Ok((proxy_core::empty(), Some(Replay::default())));
    }
    if declared.is_some_and(|len| len > cap) || body.size_hint().lower() > cap {
        return Ok((body, None));
    }
    // Known to end within the cap: worth waiting for.
    let wait = declared.or_else(|| body.size_hint().exact()).is_some();
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut trailers = None;
    let deadline = tokio::time::Instant::now() + READ_AHEAD;
    loop {
        let pause = if wait { STALLED } else { ARRIVING };
        let until = deadline.min(tokio::time::Instant::now() + pause);
        let next = match tokio::time::timeout_at(until, body.frame()).await {
            Ok(next) => next,
            // Not arrived yet: send what was read and stream the rest (the
            // route's timeout then applies to it, as to any request).
            Err(_) => return Ok((prefixed(buf, body), None)),
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|e| {
            // The listener's errors say so already.
            if e.is::<proxy_core::error::CallerBodyError>() {
                BadRequest(e.to_string())
            } else {
                BadRequest(format!("the request body could not be read: {e}"))
            }
        })?;
        match frame.into_data() {
            Ok(data) => {
                if (buf.len() + data.len()) as u64 > cap {
                    buf.extend_from_slice(&data);
                    return Ok((prefixed(buf, body), None));
                }
                buf.extend_from_slice(&data);
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    // Trailers end a body.
                    trailers = Some(t);
                    break;
                }
            }
        }
    }
    let replay = Replay {
        data: buf.freeze(),
        trailers,
    };
    Ok((replay.body(), Some(replay)))
}

/// How long a body of declared length (within the cap) may pause between
/// frames and still be read ahead: a caller that stalls (or declares more
/// than it sends) would otherwise hold its request, and its slot of
/// `max_concurrent_requests`, for ever, since the route's timeout starts
/// only once the request goes upstream. Past it the request goes with what
/// was read, the rest streams behind, and it is not replayable.
const STALLED: std::time::Duration = std::time::Duration::from_secs(1);

/// How long reading ahead may take in all: a caller that trickles a body
/// of declared length (a byte every 0.9 s never pauses for `STALLED`)
/// would otherwise hold its request and its slot for days. 1 MiB, the
/// default cap, arrives within it at 1 Mbit/s. Past it the request goes
/// with what was read, as after a stall.
const READ_AHEAD: std::time::Duration = std::time::Duration::from_secs(10);

/// How long a body of unknown length may pause between frames and still
/// be read ahead. Not a single look: hyper's HTTP/1.1 server hands over
/// one chunk at a time and reads the next only when its connection task
/// runs again, so a chunked body that arrived whole still comes in several
/// polls. A client that waits to hear back before sending more is held up
/// this long, once.
const ARRIVING: std::time::Duration = std::time::Duration::from_millis(20);

/// `read`, then the rest of `body`.
fn prefixed(read: BytesMut, body: ProxyBody) -> ProxyBody {
    if read.is_empty() {
        return body;
    }
    boxed(Prefixed {
        prefix: Some(read.freeze()),
        rest: body,
    })
}

pin_project! {
    /// Bytes already read, then the rest of the original body.
    struct Prefixed {
        prefix: Option<Bytes>,
        #[pin]
        rest: ProxyBody,
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(p) = this.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        this.rest.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        // The prefix counts in the upper bound only. A lower bound is a
        // promise that is safe to understate, and `http_body_util::Limited`
        // (a route's `max_request_body`) takes a lower bound that reaches
        // its limit for the exact length: the body would go out with a
        // `Content-Length` of the limit, cut there, instead of failing as
        // too large.
        let mut h = self.rest.size_hint();
        let p = self.prefix.as_ref().map_or(0, |p| p.len() as u64);
        if let Some(u) = h.upper() {
            h.set_upper(u.saturating_add(p));
        }
        h
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::{StreamExt as _, stream};

    fn chunked(chunks: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        boxed(http_body_util::StreamBody::new(stream::iter(frames)))
    }

    async fn collect(b: ProxyBody) -> Bytes {
        b.collect().await.unwrap().to_bytes()
    }

    /// A declared body that stops arriving (3 of 10 bytes, then nothing):
    /// after a second's pause the request goes on with what was read, not
    /// replayable, instead of waiting for ever. Paused clock.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_declared_body_goes_on_after_a_pause() {
        let frames = stream::iter([Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"abc")))])
            .chain(stream::pending());
        let body = boxed(http_body_util::StreamBody::new(frames));
        let started = tokio::time::Instant::now();
        let (mut first, replay) = capture(body, Some(10), 1024).await.unwrap();
        assert!(replay.is_none(), "not replayable");
        assert_eq!(started.elapsed(), STALLED);
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "abc");
    }

    #[tokio::test]
    async fn small_bodies_are_captured_and_replayed_identically() {
        let (first, replay) = capture(chunked(&["{\"a\":", "1}"]), None, 1024)
            .await
            .unwrap();
        let replay = replay.unwrap();
        assert_eq!(collect(first).await, "{\"a\":1}");
        assert_eq!(collect(replay.body()).await, "{\"a\":1}");
        assert_eq!(collect(replay.body()).await, "{\"a\":1}");
    }

    #[tokio::test]
    async fn bodies_over_the_cap_stream_through_whole_and_are_not_replayable() {
        let (first, replay) = capture(chunked(&["aaaa", "bbbb", "cccc"]), None, 6)
            .await
            .unwrap();
        assert!(replay.is_none());
        assert_eq!(collect(first).await, "aaaabbbbcccc");
    }

    #[tokio::test]
    async fn declared_length_over_the_cap_is_not_read() {
        let (first, replay) = capture(chunked(&["aaaa", "bbbb", "cccc"]), Some(12), 6)
            .await
            .unwrap();
        assert!(replay.is_none());
        assert_eq!(collect(first).await, "aaaabbbbcccc");
    }

    /// One frame, then nothing more for now (a client waiting to hear
    /// back before it sends more, or a slow upload).
    fn then_pending(first: &'static str) -> ProxyBody {
        let frame = Ok::<_, BoxError>(Frame::data(Bytes::from_static(first.as_bytes())));
        boxed(http_body_util::StreamBody::new(
            stream::iter([frame]).chain(stream::pending()),
        ))
    }

    /// A body of unknown length is read only as far as it has arrived:
    /// the request goes out at once with it, not replayable, instead of
    /// waiting for an end that may come only after the response.
    #[tokio::test(start_paused = true)]
    async fn a_body_still_arriving_is_sent_at_once_and_not_replayable() {
        let captured = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            capture(then_pending("first"), None, 1024),
        )
        .await
        .expect("capture does not wait for the rest of the body")
        .unwrap();
        let (mut first, replay) = captured;
        assert!(replay.is_none());
        let frame = first.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "first");
    }

    /// A body of declared length within the cap is waited for, however
    /// slowly it arrives, and replayed whole.
    #[tokio::test(start_paused = true)]
    async fn a_body_of_declared_length_is_waited_for() {
        let frames = stream::unfold(0u8, |n| async move {
            if n == 3 {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"ab"))),
                n + 1,
            ))
        });
        let body = boxed(http_body_util::StreamBody::new(frames));
        let (_, replay) = capture(body, Some(6), 1024).await.unwrap();
        assert_eq!(collect(replay.unwrap().body()).await, "ababab");
    }

    /// A body of declared length that trickles in (a byte every 0.9 s:
    /// never a 1 s stall) is read ahead for `READ_AHEAD` in all, not until
    /// it ends: the request then goes with what was read, the rest
    /// streaming behind, not replayable.
    #[tokio::test(start_paused = true)]
    async fn a_trickled_body_is_read_ahead_for_a_bounded_time() {
        let frames = stream::unfold(0u8, |n| async move {
            if n == 100 {
                return None;
            }
            tokio::time::sleep(std::time::Duration::from_millis(900)).await;
            Some((
                Ok::<_, BoxError>(Frame::data(Bytes::from_static(b"x"))),
                n + 1,
            ))
        });
        let body = boxed(http_body_util::StreamBody::new(frames));
        let started = tokio::time::Instant::now();
        let (first, replay) = capture(body, Some(100), 1024).await.unwrap();
        assert_eq!(started.elapsed(), READ_AHEAD);
        assert!(replay.is_none());
        // Nothing is lost: the 11 bytes read, then the rest.
        assert_eq!(collect(first).await, "x".repeat(100));
    }

    /// What was read plus the rest: the prefix counts in the upper bound
    /// (adding it to the lower bound first tripped http-body's lower <=
    /// upper assertion), not in the lower one (see `size_hint`).
    #[test]
    fn a_prefixed_body_hints_an_upper_bound_with_its_prefix() {
        let body = Prefixed {
            prefix: Some(Bytes::from_static(b"abc")),
            rest: proxy_core::full("12345"),
        };
        let h = body.size_hint();
        assert_eq!((h.lower(), h.upper()), (5, Some(8)));
    }

    /// A body still arriving when its prefix reaches a route's
    /// `max_request_body` exactly fails as too large once more arrives;
    /// it is not cut at the limit and sent as complete.
    #[tokio::test]
    async fn a_prefix_at_a_body_limit_is_not_sent_as_the_whole_body() {
        let (first, replay) = capture(then_pending_after(&["aaaa", "bbbb"]), None, 1024)
            .await
            .unwrap();
        assert!(replay.is_none());
        // Both chunks had arrived: an 8-byte prefix, and a limit of 8.
        let mut limited = http_body_util::Limited::new(first, 8);
        let hint = limited.size_hint();
        assert_eq!(hint.exact(), None, "{hint:?}");
        let frame = limited.frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), "aaaabbbb");
    }

    /// `chunks`, then nothing more for now.
    fn then_pending_after(chunks: &[&'static str]) -> ProxyBody {
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        boxed(http_body_util::StreamBody::new(
            stream::iter(frames).chain(stream::pending()),
        ))
    }

    #[tokio::test]
    async fn empty_and_trailers() {
        let (_, replay) = capture(proxy_core::empty(), None, 0).await.unwrap();
        assert!(replay.unwrap().is_empty());
        let mut t = HeaderMap::new();
        t.insert("x-checksum", "abc".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"x"))),
            Ok(Frame::trailers(t)),
        ];
        let body = boxed(http_body_util::StreamBody::new(stream::iter(frames)));
        let (_, replay) = capture(body, None, 10).await.unwrap();
        let collected = replay.unwrap().body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x-checksum"], "abc");
    }
}

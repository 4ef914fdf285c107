//! [`PooledBody`]: a response body that gives its connection back to the
//! pool (HTTP/1.1) or its stream back to its connection (h2) when it ends.

use super::{OriginPool, StreamSlot};
use crate::ProxyBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A response body from the pool: hyper's body, plus the HTTP/1.1
/// connection it came on, returned to the pool when the body ends, or the
/// h2 stream it counts on its connection, given back then.
#[derive(Debug)]
pub struct PooledBody {
    pub(super) inner: Incoming,
    pub(super) slot: Option<Slot>,
    pub(super) stream: Option<StreamSlot>,
}

pub(super) struct Slot {
    pub(super) tx: http1::SendRequest<ProxyBody>,
    pub(super) pool: Arc<OriginPool>,
}

impl std::fmt::Debug for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Slot").finish_non_exhaustive()
    }
}

impl PooledBody {
    pub(super) fn on_stream(inner: Incoming, stream: StreamSlot) -> Self {
        Self {
            inner,
            slot: None,
            stream: Some(stream),
        }
    }

    pub(super) fn release(&mut self) {
        self.stream = None;
        if let Some(Slot { tx, pool }) = self.slot.take() {
            pool.put_when_ready(tx);
        }
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            // A broken body means a broken connection (or stream).
            Poll::Ready(Some(Err(_))) => {
                this.slot = None;
                this.stream = None;
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Dropped at its end (a server that stops polling once
        // `is_end_stream` says so) the connection is ready; dropped
        // half-read (a 401 about to be retried, a caller gone), hyper
        // drains a short rest and then it is ready, or closes it.
        self.release();
    }
}

//! The h2 client settings of an origin's shared connections, and how
//! many streams each carries.

use crate::ProxyBody;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// The h2 flow-control window of one upstream stream (1 MiB).
pub const H2_STREAM_WINDOW: u32 = 1 << 20;
/// The h2 flow-control window of one upstream connection: 64 streams'
/// worth (64 MiB).
pub const H2_CONNECTION_WINDOW: u32 = 64 * H2_STREAM_WINDOW;
/// The largest response header list accepted from an h2 upstream (256 KiB,
/// in h2's accounting: names, values and 32 bytes per field).
pub const H2_MAX_HEADER_LIST: u32 = 256 << 10;

/// The h2 handshake settings; `keepalive` as `proxy.upstream_h2_keepalive`.
pub(super) fn builder(keepalive: Option<Duration>) -> http2::Builder<TokioExecutor> {
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        // Every caller of the origin shares this connection, and the
        // window a stream's unread data holds is given back only as its
        // caller reads. With hyper's defaults (2 MiB a stream, 5 MiB the
        // connection), three callers reading large answers slowly held
        // the whole connection window and froze every other stream's
        // body. A connection window of 64 streams' worth means it takes
        // 64 such callers; what a slow caller can hold stays one stream
        // window.
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONNECTION_WINDOW)
        // hyper's h2 default is 16 KiB of response headers, against
        // ~400 KB over HTTP/1.1: the same answer would pass over one
        // and be reset over the other.
        .max_header_list_size(H2_MAX_HEADER_LIST);
    if let Some(every) = keepalive {
        // Only while requests are in flight (hyper's default): the idle
        // timeout closes unused connections, and PINGs on an idle
        // connection are what servers police hardest. The answer may
        // take 20 s (hyper's and gRPC's default): a PING can queue
        // behind a large upload.
        h2.keep_alive_interval(every)
            .keep_alive_timeout(Duration::from_secs(20));
    }
    h2
}

/// Streams one shared h2 connection carries at once, by default
/// ([`PoolSettings::h2_max_streams`](super::PoolSettings::h2_max_streams)):
/// RFC 9113 asks servers to allow at least 100 (nginx allows 128, Go 250,
/// hyper 200). hyper queues a request past the server's limit until a
/// stream ends, which behind long-lived streams (SSE, long polls, gRPC
/// streams) is never: past this many, another connection is opened.
pub const H2_MAX_STREAMS: usize = 100;

/// One shared h2 connection, and the streams it carries now.
pub(super) struct H2Conn {
    pub(super) tx: http2::SendRequest<ProxyBody>,
    /// Counts the h2 connections the pool made, so a request that finds
    /// its connection going away unshares that one only.
    pub(super) id: u64,
    /// The reaper tick when it last took a request.
    pub(super) since: u64,
    streams: Arc<AtomicUsize>,
}

impl H2Conn {
    pub(super) fn new(tx: http2::SendRequest<ProxyBody>, id: u64, since: u64) -> Self {
        Self {
            tx,
            id,
            since,
            streams: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A stream on it, if it is open and carries fewer than `max`; `now`
    /// is the reaper tick.
    pub(super) fn take(
        &mut self,
        max: usize,
        now: u64,
    ) -> Option<(http2::SendRequest<ProxyBody>, StreamSlot)> {
        if self.tx.is_closed() || self.in_flight() >= max {
            return None;
        }
        self.since = now;
        Some((self.tx.clone(), self.claim()))
    }

    /// A stream on it, whatever it carries (the request that made it).
    pub(super) fn claim(&self) -> StreamSlot {
        self.streams.fetch_add(1, Ordering::AcqRel);
        StreamSlot(self.streams.clone())
    }

    /// Streams it carries now.
    pub(super) fn in_flight(&self) -> usize {
        self.streams.load(Ordering::Acquire)
    }
}

/// One stream on a shared h2 connection, counted until dropped: with the
/// response body (ended or dropped), or with the send that failed.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

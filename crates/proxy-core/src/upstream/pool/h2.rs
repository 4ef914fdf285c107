//! The h2 client settings of an origin's shared connection.

use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioTimer};
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

//! [`PoolSettings`]: how long upstream connections stay open and how many
//! are kept.

use std::time::Duration;

/// How long connections stay open and how many are kept.
#[derive(Clone, Copy, Debug)]
pub struct PoolSettings {
    /// Idle HTTP/1.1 connections kept per origin.
    pub max_idle: usize,
    /// How long an idle connection is kept.
    pub idle_timeout: Duration,
    /// h2 PING keep-alive: while requests are in flight on an h2
    /// connection and nothing has come from the upstream for this long, a
    /// PING is sent; no answer within 20 s closes the connection (its
    /// requests fail, the next ones connect afresh). None (the default):
    /// off.
    pub h2_keepalive: Option<Duration>,
    /// Streams one h2 connection carries at once; past them, requests go
    /// on another connection ([`H2_MAX_STREAMS`](super::h2::H2_MAX_STREAMS)
    /// by default).
    pub h2_max_streams: usize,
}

impl Default for PoolSettings {
    /// 256 idle connections, closed after 90 s idle (hyper-util's and
    /// Envoy's idle timeouts are in the same range; nginx's upstream
    /// `keepalive_timeout` is 60 s); no h2 keep-alive, as in Envoy and
    /// hyper (gRPC servers by default allow a PING only every 5 minutes
    /// and close the connection on the third one too early).
    fn default() -> Self {
        Self {
            max_idle: 256,
            idle_timeout: Duration::from_secs(90),
            h2_keepalive: None,
            h2_max_streams: super::h2::H2_MAX_STREAMS,
        }
    }
}

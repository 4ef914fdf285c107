//! The per-connection hyper service: attaches what the listener knows to
//! each request and hands it to the current proxy.

use super::stall::{MaybeWatched, Stalls};
use crate::build::{AppService, Proxy};
use arc_swap::ArcSwap;
use http::{Request, Response};
use hyper::body::{Body as _, Incoming};
use proxy_core::body::CallerBody;
use proxy_core::context::{ConnInfo, PeerIdentity, RequestContext, RequestId};
use proxy_core::stack::{CallNowOrWait, call_now_or_wait};
use proxy_core::timer::Reuse;
use proxy_core::tunnel::TunnelScope;
use proxy_core::{ProxyBody, boxed};
use std::convert::Infallible;
use std::sync::Arc;
use tokio::sync::watch;

/// The per-connection hyper service.
#[derive(Clone)]
pub(super) struct ConnService {
    /// The current proxy, loaded per request (not cached per connection:
    /// a cached `Arc` would keep a replaced config, and the credential
    /// sources it alone holds, alive for as long as an idle keep-alive
    /// connection stays open).
    proxy: Arc<ArcSwap<Proxy>>,
    pub(super) conn: ConnInfo,
    /// The caller's verified client certificate (TLS with a client CA).
    pub(super) peer: Option<PeerIdentity>,
    /// The listener's "close now" channel, handed to the tunnel of a
    /// request that upgrades ([`TunnelScope`]).
    closing: watch::Receiver<bool>,
    /// The connection's spare timer for the route timeout, handed to each
    /// request (see [`proxy_core::timer`]).
    upstream_timer: Reuse,
    /// Watches h2 response bodies for a caller that takes none of them
    /// (`proxy.send_timeout`; see [`super::stall`]).
    stalls: Option<Arc<Stalls>>,
}

impl ConnService {
    pub(super) fn new(
        proxy: Arc<ArcSwap<Proxy>>,
        conn: ConnInfo,
        closing: watch::Receiver<bool>,
    ) -> Self {
        Self {
            proxy,
            conn,
            peer: None,
            closing,
            upstream_timer: Reuse::default(),
            stalls: None,
        }
    }

    /// h2 response bodies watched by `stalls` (none: not watched).
    pub(super) fn with_stalls(mut self, stalls: Option<Arc<Stalls>>) -> Self {
        self.stalls = stalls;
        self
    }

    /// What watches its h2 response bodies, for the connection's serving
    /// loop (a cut closes the connection).
    pub(super) fn stalls(&self) -> Option<Arc<Stalls>> {
        self.stalls.clone()
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<ProxyBody>;
    type Error = Infallible;
    /// The stack's own future, not boxed: hyper holds it in the
    /// connection's in-flight slot, one allocation reused by every request
    /// on the connection (HTTP/1.1), or in the stream's task (h2).
    type Future = MaybeWatched<CallNowOrWait<AppService, Request<ProxyBody>>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        // Its errors marked as the caller's, its trailers without
        // credential headers (see `CallerBody`). A request that has no
        // body (most: a GET, or h2 headers that end the stream) gets the
        // empty one, which is not boxed: nothing of the caller's is left
        // to read, mark or strip.
        let mut req = if req.body().is_end_stream() {
            req.map(|_| ProxyBody::default())
        } else {
            req.map(|b| boxed(CallerBody::new(b)))
        };
        // HTTP/1.1 has `send_timeout` on the socket (`super::send`).
        let stalls = if req.version() == http::Version::HTTP_2 {
            self.stalls.clone()
        } else {
            None
        };
        let id = RequestId::from_headers(req.headers());
        let ext = req.extensions_mut();
        let mut ctx = RequestContext::new(self.conn, id);
        ctx.upstream_timer = Some(self.upstream_timer.clone());
        // hyper marks a request that asks to upgrade (nothing else has
        // extensions yet, so for the rest this is a null check).
        if ext.get::<hyper::upgrade::OnUpgrade>().is_some() {
            ctx.tunnel = Some(TunnelScope::new(self.closing.clone()));
        }
        ext.insert(ctx);
        if let Some(peer) = &self.peer {
            ext.insert(peer.clone());
        }
        // The stack's clone is `Arc` counts.
        let service = self.proxy.load().service.clone();
        MaybeWatched::new(call_now_or_wait(service, req), stalls)
    }
}

//! The connection pool for one upstream origin (scheme + authority).
//!
//! Built for a proxy's request path, where hyper-util's general-purpose
//! pooled client costs more than the proxying around it: one pool per
//! origin is resolved when the config is built, so a request does no
//! pool-key hashing, takes no client clone, and a finished HTTP/1.1
//! connection goes back to the pool from the response body itself rather
//! than from a task spawned per request.
//!
//! - **HTTP/1.1**: idle connections are kept last-in first-out (the warmest
//!   first; the coldest age out), at most [`PoolSettings::max_idle`] of them.
//!   A connection returns to the pool when its response body has been read
//!   to the end (or was empty) and hyper is ready for the next request on
//!   it, which it almost always is by then. When it is not (the request body
//!   is still uploading, or a body was dropped half-read and hyper drains or
//!   closes it), a small task waits for that and then pools the connection,
//!   or drops it if hyper closed it. A request therefore never waits behind
//!   another on a pooled connection. After `101 Switching Protocols` the
//!   connection belongs to the upgrade and is never pooled.
//! - **h2**: when ALPN picks h2 the connection is shared by every request
//!   to the origin (one stream each) until it closes, refuses a request
//!   unsent (it is going away) or has carried no request, and carries
//!   none, for the idle timeout. A connection carrying
//!   [`PoolSettings::h2_max_streams`] streams (100) takes no more: the
//!   next request opens another (hyper would queue it until a stream ends,
//!   for ever behind long-lived streams), and later ones go to the first
//!   with room. Requests that find no connection with room to an origin
//!   that may speak h2 wait for one connect instead of each opening their
//!   own (see `connecting`).
//! - **Stale connections**: a request sent on a reused connection that the
//!   upstream had already closed, and that hyper hands back unsent, is sent
//!   again on another connection (what hyper-util's `retry_canceled_requests`
//!   does). A request that reached the wire is resent only if it is
//!   idempotent, has no body and the connection ended before any answer
//!   (see `resend`): once, on a new connection. After eight
//!   dead pooled connections (an upstream that restarted leaves all of them
//!   dead) a request connects afresh, and a fresh connection's failure is
//!   final.
//! - **Keep-alive** (h2, off unless configured): while requests are in
//!   flight and the upstream has sent nothing for
//!   [`PoolSettings::h2_keepalive`], a PING goes out; no answer within 20 s
//!   closes the connection, so one the network dropped silently does not
//!   take every request to the origin down with it until TCP gives up.
//! - **Idle timeout**: a reaper task, running while the pool holds
//!   connections, closes those idle for longer than
//!   [`PoolSettings::idle_timeout`] (checked every third of it: a connection
//!   is closed after between that and 4/3 of it idle), h2 ones included.
//!
//! Errors keep connect failures (DNS, TCP, TLS; [`SendError::Connect`])
//! apart from failures on an established connection
//! ([`SendError::Http`]), which the forwarder maps to `upstream_timeout`
//! and `upstream_unreachable`.

use crate::{BoxError, ProxyBody};
use http::uri::{Authority, Scheme};
use http::{Request, Response, StatusCode, Uri};
use http_body::Body;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::{Connection as _, HttpConnector};
use hyper_util::rt::TokioExecutor;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;
use tokio::time::Instant;
use tower::Service as _;

/// Why a request could not be sent or answered.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made (DNS, TCP connect, TLS handshake).
    #[error("cannot connect")]
    Connect(#[source] BoxError),
    /// The connection failed or closed before the response headers came.
    #[error("connection failed")]
    Http(#[source] hyper::Error),
}

/// Connections to one upstream origin; see the module docs.
pub struct OriginPool {
    connector: HttpsConnector<HttpConnector>,
    /// Offers only HTTP/1.1 (ALPN): for upgrade requests (WebSocket) to an
    /// origin that would otherwise agree on h2, which has no upgrade.
    h1_connector: Option<HttpsConnector<HttpConnector>>,
    scheme: Scheme,
    authority: Authority,
    settings: PoolSettings,
    /// Bounds a whole connect (see `connecting`).
    connect_timeout: Duration,
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// Reaper ticks so far: idle connections are stamped with it instead of
    /// reading the clock on every return.
    tick: AtomicU64,
    state: Mutex<State>,
}

impl std::fmt::Debug for OriginPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (idle, h2) = {
            let s = self.lock();
            (s.idle.len(), s.h2.len())
        };
        f.debug_struct("OriginPool")
            .field(
                "origin",
                &format_args!("{}://{}", self.scheme, self.authority),
            )
            .field("idle", &idle)
            .field("h2", &h2)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    /// Idle HTTP/1.1 connections, the most recently used last.
    idle: Vec<Idle>,
    /// The shared h2 connections, oldest first.
    h2: Vec<H2Conn>,
    /// h2 connections made so far (the last one's id), so a request that
    /// finds its connection going away unshares only that one, never a
    /// newer one another request has made since.
    h2_made: u64,
    /// Whether the reaper task runs.
    reaping: bool,
    /// The connect in progress that others wait for (`https` only).
    connecting: Option<connecting::Connecting>,
    /// The origin answered ALPN with HTTP/1.1 last time: connects are not
    /// held back.
    alpn_h1: bool,
}

struct Idle {
    tx: http1::SendRequest<ProxyBody>,
    since: u64,
    /// When it went idle (see `resend`).
    at: Instant,
}

enum Conn {
    /// With when it went idle, if it is a pooled one.
    H1(http1::SendRequest<ProxyBody>, Option<Instant>),
    /// With its id ([`H2Conn`]) and the stream it counts.
    H2(http2::SendRequest<ProxyBody>, u64, StreamSlot),
}

mod body;
mod connecting;
mod forms;
mod h2;
mod resend;
mod settings;
use h2::H2Conn;
pub use h2::{
    H2_CONNECTION_WINDOW, H2_MAX_HEADER_LIST, H2_MAX_STREAMS, H2_STREAM_WINDOW, StreamSlot,
};

pub use body::PooledBody;
use body::Slot;
use forms::{absolute_form, origin_form};
use resend::Resend;
pub use resend::Resent;
pub use settings::PoolSettings;

/// Dead pooled connections a request skips before it connects instead.
const MAX_DEAD_CHECKOUTS: u32 = 8;

/// Reaper ticks per idle timeout.
const TICKS_PER_TIMEOUT: u64 = 3;

impl OriginPool {
    /// A pool for `scheme://authority`, connecting with `connector`; a
    /// connect (TCP, TLS, HTTP handshake) that takes longer than
    /// `connect_timeout` fails as timed out.
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        scheme: Scheme,
        authority: Authority,
        settings: PoolSettings,
        connect_timeout: Duration,
    ) -> Self {
        let h2 = h2::builder(settings.h2_keepalive);
        Self {
            connector,
            h1_connector: None,
            scheme,
            authority,
            settings,
            connect_timeout,
            h1: http1::Builder::new(),
            h2,
            tick: AtomicU64::new(0),
            state: Mutex::new(State::default()),
        }
    }

    /// Upgrade requests (WebSocket) connect with `connector`, which must
    /// offer only HTTP/1.1, when the pool's connection is h2.
    pub fn with_h1_connector(mut self, connector: HttpsConnector<HttpConnector>) -> Self {
        self.h1_connector = Some(connector);
        self
    }

    /// Idle HTTP/1.1 connections held now (for tests and debugging).
    pub fn idle_count(&self) -> usize {
        self.lock().idle.len()
    }

    /// Sends `req` (origin-form URI, `Host` set) and waits for the response
    /// headers. The body streams afterwards; reading it to the end returns
    /// the connection to the pool.
    ///
    /// An `async` block, not an `async fn`: an `async fn` moves its
    /// arguments into locals and its future keeps room for both, the
    /// request twice (248 bytes more in every request's future); the block
    /// uses what it captured in place.
    pub fn send(
        self: Arc<Self>,
        req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<PooledBody>, SendError>> + Send + 'static {
        // Rebound here, outside the block, so the block captures it as is.
        let mut req = req;
        async move {
            // Whether this is the request again after a reused connection
            // lost it (see `resend`): its response is marked `Resent`.
            let mut resent = false;
            // Pooled connections found dead so far: past a few (an upstream
            // that restarted leaves every idle connection dead), connect.
            let mut dead = 0;
            loop {
                let pooled = if dead < MAX_DEAD_CHECKOUTS {
                    self.checkout()
                } else {
                    None
                };
                let (conn, reused) = match pooled {
                    Some(conn) => (conn, true),
                    // Boxed: connecting (TCP, TLS, an h2 handshake) takes several
                    // KiB of future state, which would otherwise make every
                    // request's future that large, and every move of it a copy.
                    None => Box::pin(self.connect_once()).await?,
                };
                // h2 has no upgrade: a WebSocket handshake sent on it would
                // arrive as a plain GET. Checked only on the h2 path.
                let (conn, reused) = match conn {
                    Conn::H2(..) if crate::headers::is_upgrade(req.headers()) => {
                        match &self.h1_connector {
                            Some(h1) => (Box::pin(self.connect_h1(h1)).await?, false),
                            None => (conn, reused),
                        }
                    }
                    conn => (conn, reused),
                };
                // The head of a request a reused connection may lose on the
                // wire (see `resend`).
                let mut resend = None;
                let mut unsent = match conn {
                    Conn::H1(mut tx, idle_since) => {
                        // Pooled connections are ready (see `put`); one closed
                        // since is skipped, and one that is somehow busy is
                        // never waited for: it goes back to waiting on its own.
                        if reused && !tx.is_ready() {
                            dead += 1;
                            if !tx.is_closed() {
                                self.clone().put_when_ready(tx);
                            }
                            continue;
                        }
                        if req.uri().scheme().is_some() {
                            // Handed back unsent by an h2 connection.
                            origin_form(&mut req);
                        }
                        if idle_since.is_some_and(resend::quiet) {
                            resend = Resend::of(&req);
                        }
                        match tx.try_send_request(req).await {
                            Ok(resp) => return Ok(self.h1_response(resp, tx, resent)),
                            Err(e) => e,
                        }
                    }
                    Conn::H2(mut tx, id, stream) => {
                        absolute_form(&mut req, &self.scheme, &self.authority);
                        match tx.try_send_request(req).await {
                            Ok(mut resp) => {
                                // A resend's new connection may be h2.
                                if resent {
                                    resp.extensions_mut().insert(Resent);
                                }
                                return Ok(resp.map(|b| PooledBody::on_stream(b, stream)));
                            }
                            Err(mut e) => {
                                // A request handed back unsent means the
                                // connection is going away: stop sharing it. (A
                                // failed stream alone says nothing about the
                                // connection.)
                                match e.take_message() {
                                    Some(r) => {
                                        self.unshare_h2(id);
                                        dead += 1;
                                        if !reused {
                                            return Err(SendError::Http(e.into_error()));
                                        }
                                        req = r;
                                        continue;
                                    }
                                    None => return Err(SendError::Http(e.into_error())),
                                }
                            }
                        }
                    }
                };
                match (unsent.take_message(), resend) {
                    // Never written: the connection had closed under us. Only a
                    // reused connection can be stale; a fresh one failing is a
                    // real failure.
                    (Some(r), _) if reused => {
                        dead += 1;
                        // A request hyper hands back is untouched (never written).
                        tracing::debug!(upstream = %self.authority, "pooled connection was closed; sending on another");
                        req = r;
                    }
                    // Written, and lost with the connection before any
                    // answer: an idempotent request without a body goes
                    // once more, on a new connection.
                    (None, Some(copy)) if resend::lost_connection(unsent.error()) => {
                        tracing::debug!(upstream = %self.authority, "pooled connection closed under the request; sending it again on a new connection");
                        req = copy.into_request();
                        dead = MAX_DEAD_CHECKOUTS;
                        resent = true;
                    }
                    _ => return Err(SendError::Http(unsent.into_error())),
                }
            }
        }
    }

    fn h1_response(
        self: Arc<Self>,
        mut resp: Response<Incoming>,
        tx: http1::SendRequest<ProxyBody>,
        resent: bool,
    ) -> Response<PooledBody> {
        if resent {
            resp.extensions_mut().insert(Resent);
        }
        // After a protocol switch the connection belongs to the upgrade.
        let reusable = resp.status() != StatusCode::SWITCHING_PROTOCOLS;
        resp.map(|inner| {
            let mut body = PooledBody {
                inner,
                slot: reusable.then_some(Slot { tx, pool: self }),
                stream: None,
            };
            if body.inner.is_end_stream() {
                body.release();
            }
            body
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a list and an option: a panic elsewhere cannot
        // leave it half-changed.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A live h2 connection with room or the most recently used idle
    /// HTTP/1.1 one.
    fn checkout(&self) -> Option<Conn> {
        let mut state = self.lock();
        if let Some(h2) = self.h2_with_room(&mut state) {
            return Some(h2);
        }
        while let Some(idle) = state.idle.pop() {
            if !idle.tx.is_closed() {
                return Some(Conn::H1(idle.tx, Some(idle.at)));
            }
        }
        None
    }

    /// A stream on the first open h2 connection with room; closed ones
    /// are forgotten on the way.
    fn h2_with_room(&self, state: &mut State) -> Option<Conn> {
        if state.h2.is_empty() {
            return None;
        }
        state.h2.retain(|c| !c.tx.is_closed());
        let (max, now) = (
            self.settings.h2_max_streams,
            self.tick.load(Ordering::Relaxed),
        );
        state.h2.iter_mut().find_map(|c| {
            let id = c.id;
            c.take(max, now)
                .map(|(tx, stream)| Conn::H2(tx, id, stream))
        })
    }

    /// Stops sharing h2 connection `id` (requests on it keep their
    /// streams).
    fn unshare_h2(&self, id: u64) {
        self.lock().h2.retain(|c| c.id != id);
    }

    /// Pools a connection whose response has ended once hyper is ready
    /// for the next request on it: at once if it is (the usual case), else
    /// from a task that waits for it (an upload still going, a body being
    /// drained) and drops it if hyper closes it instead.
    fn put_when_ready(self: Arc<Self>, mut tx: http1::SendRequest<ProxyBody>) {
        if tx.is_ready() {
            self.put(tx);
        } else if !tx.is_closed() && tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(async move {
                if tx.ready().await.is_ok() {
                    self.put(tx);
                }
            });
        }
    }

    /// Puts a ready connection in the pool.
    fn put(self: Arc<Self>, tx: http1::SendRequest<ProxyBody>) {
        let (since, at) = (self.tick.load(Ordering::Relaxed), Instant::now());
        let mut state = self.lock();
        if state.idle.len() >= self.settings.max_idle {
            // Full: this one closes (dropping its sender ends it).
            return;
        }
        state.idle.push(Idle { tx, since, at });
        self.start_reaper(state);
    }

    /// Starts the reaper if it is not running (and there is a runtime).
    fn start_reaper(self: &Arc<Self>, mut state: MutexGuard<'_, State>) {
        if !state.reaping && tokio::runtime::Handle::try_current().is_ok() {
            state.reaping = true;
            drop(state);
            tokio::spawn(reap(Arc::downgrade(self), self.settings.idle_timeout));
        }
    }

    /// `main`: through the pool's own connector, whose ALPN outcome the
    /// pool remembers (an upgrade's HTTP/1.1-only connect says nothing of
    /// whether the origin speaks h2).
    async fn connect(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
        main: bool,
    ) -> Result<Conn, SendError> {
        let uri = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| SendError::Connect(e.into()))?;
        let io = connector
            .clone()
            .call(uri)
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (mut tx, conn) = self.h2.handshake(io).await.map_err(SendError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream h2 connection ended with an error");
                }
            });
            tx.ready().await.map_err(SendError::Http)?;
            let mut state = self.lock();
            state.h2_made += 1;
            let id = state.h2_made;
            let conn = H2Conn::new(tx.clone(), id, self.tick.load(Ordering::Relaxed));
            let stream = conn.claim();
            state.h2.push(conn);
            state.alpn_h1 = false;
            self.start_reaper(state);
            Ok(Conn::H2(tx, id, stream))
        } else {
            if main && self.scheme == Scheme::HTTPS {
                self.lock().alpn_h1 = true;
            }
            let (tx, conn) = self.h1.handshake(io).await.map_err(SendError::Http)?;
            tokio::spawn(async move {
                if let Err(e) = conn.with_upgrades().await {
                    tracing::debug!(error = %e, "upstream connection ended with an error");
                }
            });
            Ok(Conn::H1(tx, None))
        }
    }

    /// One reaper tick: closes connections idle for a whole timeout.
    /// Returns whether the reaper should go on: it stops once no idle
    /// connection is left (the next one returned starts it again), so a
    /// pool no route uses any more keeps no timer.
    fn reap_once(&self) -> bool {
        let now = self.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let mut state = self.lock();
        state
            .idle
            .retain(|i| now - i.since <= TICKS_PER_TIMEOUT && !i.tx.is_closed());
        // One that carries streams is in use, however long ago it took
        // one: its idle time counts from when the last of them ended (to
        // a tick). Requests still using an unshared one hold their own
        // handles; the connection closes when the last one is done.
        state.h2.retain_mut(|c| {
            if c.in_flight() > 0 {
                c.since = now;
            }
            !c.tx.is_closed() && now - c.since <= TICKS_PER_TIMEOUT
        });
        state.reaping = !state.idle.is_empty() || !state.h2.is_empty();
        state.reaping
    }
}

async fn reap(pool: Weak<OriginPool>, timeout: Duration) {
    let period =
        (timeout / u32::try_from(TICKS_PER_TIMEOUT).unwrap_or(1)).max(Duration::from_millis(1));
    // Ticks missed while the runtime was stalled are caught up on (the
    // default `Burst`), so ticks keep counting time.
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        ticks.tick().await;
        match pool.upgrade() {
            Some(pool) if pool.reap_once() => {}
            _ => return,
        }
    }
}

#[cfg(test)]
mod tests;

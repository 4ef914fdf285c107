//! One connect at a time to an origin that may speak h2.
//!
//! An h2 connection carries every request to its origin, so when there is
//! none (the first requests, or the shared one went away) the requests that
//! find none must not each open their own: under load that is a burst of
//! TCP and TLS handshakes against the upstream, all but one of them thrown
//! away. Instead the first request connects (the leader) and the others
//! wait for its outcome:
//!
//! - it got an h2 connection: they use it (it is in the pool's state);
//! - it got HTTP/1.1 (the origin does not offer h2): they connect on their
//!   own, as HTTP/1.1 needs, and later requests no longer wait, until the
//!   origin negotiates h2 again;
//! - it failed: they fail too, with the same kind of error (a timed-out
//!   connect stays a timeout) and its description, instead of each trying
//!   again and waiting out the same connect timeout in turn;
//! - it was cancelled (its caller went away, or its route timeout fired):
//!   one of them takes over.
//!
//! The whole connect (TCP, TLS, the HTTP handshake) is bounded by the
//! connect timeout, so a stalled TLS handshake holds the waiters no longer
//! than a refused one would.
//!
//! Only `https` origins can negotiate h2 (ALPN); plain `http` connects are
//! never held back.

use super::{Conn, OriginPool, SendError};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use std::io;
use std::sync::Arc;
use tokio::sync::watch;

/// A connect's outcome, as the requests waiting for it see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Still connecting.
    Pending,
    /// Connected (an h2 connection is in the pool, or the origin spoke
    /// HTTP/1.1): look again.
    Connected,
    /// Failed with an error of this kind (`Other` when it was not an io
    /// error) and this description (the error and its causes).
    Failed(io::ErrorKind, Arc<str>),
}

/// The waiting side of the connect in progress, kept in the pool's state.
pub(super) type Connecting = watch::Receiver<Outcome>;

/// What a request that found no connection does.
enum Next {
    /// Connect on its own (plain `http`, or an HTTP/1.1 origin).
    Connect,
    /// Connect for everyone.
    Lead(watch::Sender<Outcome>),
    /// Wait for the leader.
    Wait(Connecting),
}

/// The leader's handle: clears the pool's connect in progress, then
/// publishes the outcome; dropped without one (the leader was cancelled),
/// it clears the slot and the waiters, woken by the sender going away,
/// look again.
struct Leader<'a> {
    pool: &'a OriginPool,
    tx: watch::Sender<Outcome>,
}

impl Leader<'_> {
    fn finish(self, outcome: Outcome) {
        // Cleared first: a request that comes after the outcome never finds
        // a finished connect to wait for.
        self.clear();
        self.tx.send_replace(outcome);
    }

    fn clear(&self) {
        let mut state = self.pool.lock();
        if state
            .connecting
            .as_ref()
            .is_some_and(|rx| rx.same_channel(&self.tx.subscribe()))
        {
            state.connecting = None;
        }
    }
}

impl Drop for Leader<'_> {
    fn drop(&mut self) {
        self.clear();
    }
}

impl OriginPool {
    /// A new connection, or a shared h2 connection with room (another
    /// request's connect just made it, or a stream ended meanwhile; then
    /// `true`: like a pooled one, it may already be going away); see the
    /// module docs.
    pub(super) async fn connect_once(self: &Arc<Self>) -> Result<(Conn, bool), SendError> {
        loop {
            let next = {
                let mut state = self.lock();
                if let Some(h2) = self.h2_with_room(&mut state) {
                    return Ok((h2, true));
                }
                if !self.may_be_h2(state.alpn_h1) {
                    Next::Connect
                } else if let Some(rx) = &state.connecting {
                    Next::Wait(rx.clone())
                } else {
                    let (tx, rx) = watch::channel(Outcome::Pending);
                    state.connecting = Some(rx);
                    Next::Lead(tx)
                }
            };
            let mut waiting = match next {
                Next::Connect => return Ok((self.connect_within().await?, false)),
                Next::Lead(tx) => return Ok((self.lead(tx).await?, false)),
                Next::Wait(rx) => rx,
            };
            // Err: the leader went away without an outcome; look again.
            let seen = waiting
                .wait_for(|o| *o != Outcome::Pending)
                .await
                .map(|o| o.clone());
            if let Ok(Outcome::Failed(kind, why)) = seen {
                return Err(SendError::Connect(Box::new(io::Error::new(
                    kind,
                    format!("a concurrent connection attempt to this upstream failed: {why}"),
                ))));
            }
        }
    }

    /// Whether a connect may negotiate h2: `https`, and the origin was not
    /// last seen answering ALPN with HTTP/1.1.
    fn may_be_h2(&self, alpn_h1: bool) -> bool {
        self.scheme == http::uri::Scheme::HTTPS && !alpn_h1
    }

    async fn lead(self: &Arc<Self>, tx: watch::Sender<Outcome>) -> Result<Conn, SendError> {
        let leader = Leader { pool: self, tx };
        let result = self.connect_within().await;
        leader.finish(match &result {
            Ok(_) => Outcome::Connected,
            Err(e) => Outcome::Failed(
                crate::error::find_cause::<io::Error>(e)
                    .map_or(io::ErrorKind::Other, io::Error::kind),
                crate::error::display_chain(e).into(),
            ),
        });
        result
    }

    /// Connects within the connect timeout, all of it: TCP (which the
    /// connector also bounds), TLS and the HTTP handshake. A stalled TLS
    /// handshake would otherwise hold the request (and those waiting for
    /// it) until the route's timeout.
    async fn connect_within(self: &Arc<Self>) -> Result<Conn, SendError> {
        self.connect_bounded(&self.connector, true).await
    }

    /// A new HTTP/1.1 connection for one upgrade request, through
    /// `connector` (ALPN http/1.1 only); never pooled (after a 101 the
    /// connection belongs to the upgrade) and never shared as h2.
    pub(super) async fn connect_h1(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
    ) -> Result<Conn, SendError> {
        self.connect_bounded(connector, false).await
    }

    async fn connect_bounded(
        self: &Arc<Self>,
        connector: &HttpsConnector<HttpConnector>,
        main: bool,
    ) -> Result<Conn, SendError> {
        match tokio::time::timeout(self.connect_timeout, self.connect(connector, main)).await {
            Ok(result) => result,
            Err(_) => Err(SendError::Connect(Box::new(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "connecting (TCP, TLS, HTTP handshake) took longer than {:?}",
                    self.connect_timeout
                ),
            )))),
        }
    }
}

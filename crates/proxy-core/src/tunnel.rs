//! Upgraded connections (WebSocket): bridged byte for byte once both sides
//! have switched protocols, and accounted for like the request they were.
//!
//! A tunnel outlives its request: hyper hands the caller's connection over
//! at the 101, the connection's own task ends, and the bytes flow in a task
//! of their own. Two things still hold on to it, as in Envoy (an upgraded
//! stream stays an active request) and nginx (`worker_shutdown_timeout`):
//!
//! - **The drain.** The listener puts a [`TunnelScope`] in the context of
//!   a request that asks to upgrade. The tunnel holds it while it is open,
//!   and the listener's drain waits for every scope it handed out, as it
//!   waits for connections; at the drain timeout the scope closes and the
//!   tunnel is cut with the connections still open.
//! - **The concurrency limit.** The 101 response carries a [`TunnelHold`];
//!   the load-shedding layer puts the request's slot in it instead of in the
//!   (empty) response body, so the slot is given back when the tunnel
//!   closes, not at the 101.

use http::response;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};
use tokio::sync::watch;

/// The listener's hold on an upgrading request's tunnel; see the module
/// docs. A clone of the listener's "close now" channel: the listener's
/// drain waits until no clone is left, and turns it `true` at the drain
/// timeout.
#[derive(Clone, Debug)]
pub struct TunnelScope(watch::Receiver<bool>);

impl TunnelScope {
    /// A scope over the listener's `closing` channel.
    pub fn new(closing: watch::Receiver<bool>) -> Self {
        Self(closing)
    }

    /// Resolves when the listener closes what is left (or is gone).
    async fn closing(mut self) {
        // An error: the sender is gone, the listener with it.
        let _ = self.0.wait_for(|closing| *closing).await;
    }
}

/// What a tunnel keeps alive while it is open; see the module docs. On the
/// 101 response's extensions.
#[derive(Clone, Default)]
pub struct TunnelHold(Arc<Mutex<Vec<Box<dyn Any + Send>>>>);

impl TunnelHold {
    /// Keeps `value` until the tunnel closes (at once if it already has).
    pub fn keep(&self, value: impl Any + Send) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(value));
    }
}

impl fmt::Debug for TunnelHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let held = self.0.lock().map_or(0, |v| v.len());
        f.debug_struct("TunnelHold").field("held", &held).finish()
    }
}

/// Joins the caller's and the upstream's upgraded connections once both
/// sides have switched protocols, in a task of its own that holds `scope`
/// and what is put in the [`TunnelHold`] it adds to `upstream`'s
/// extensions.
pub(crate) fn bridge(
    client_side: OnUpgrade,
    upstream: &mut response::Parts,
    scope: Option<TunnelScope>,
) {
    let Some(upstream_side) = upstream.extensions.remove::<OnUpgrade>() else {
        return;
    };
    let hold = TunnelHold::default();
    upstream.extensions.insert(hold.clone());
    tokio::spawn(async move {
        let tunnel = async move {
            match tokio::try_join!(client_side, upstream_side) {
                Ok((c, u)) => {
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut c, &mut u).await {
                        tracing::debug!(error = %e, "upgraded connection closed with an error");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "protocol upgrade failed"),
            }
        };
        match scope {
            Some(scope) => tokio::select! {
                biased;
                () = tunnel => {}
                () = scope.closing() => {
                    tracing::debug!("upgraded connection closed at the drain timeout");
                }
            },
            None => tunnel.await,
        }
        // Both sides are closed (dropped) by now; give back what the
        // request held.
        drop(hold);
    });
}

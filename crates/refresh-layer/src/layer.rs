//! [`RefreshLayer`]: attaches a [`RefreshingSource`]'s current credential to
//! every request.
//!
//! It is `proxy_core`'s acquire step bound to a refreshing source: the same
//! service type, so the stack builder treats static and refreshing
//! credentials alike. On the hot path it costs one atomic load; a request
//! waits only when there is no valid token (first use, expiry during a
//! refresh outage, or a generation invalidated by a 401), and then at most
//! `refresh.timeout` before failing with 503 `credential_unavailable`.

use crate::cache::RefreshingSource;
use proxy_core::acquire::{Acquire, AcquireLayer};
use std::sync::Arc;
use tower::Layer;

/// See the module docs.
#[derive(Clone, Debug)]
pub struct RefreshLayer {
    inner: AcquireLayer,
}

impl RefreshLayer {
    /// A layer drawing credentials from `source`.
    pub fn new(source: RefreshingSource) -> Self {
        Self {
            inner: AcquireLayer::new(Arc::new(source)),
        }
    }
}

impl<S> Layer<S> for RefreshLayer {
    type Service = Acquire<S>;
    fn layer(&self, inner: S) -> Self::Service {
        self.inner.layer(inner)
    }
}

//! Per-request metrics: [`record_request`] and its per-thread cache of
//! metric handles.

use super::histogram::{self, Histogram};
use super::{
    HANDLE, REQUESTS_TOTAL, RETRY401_TOTAL, UPSTREAM_RESENDS_TOTAL, UPSTREAM_RESPONSES_TOTAL,
    label, status_class,
};
use crate::record::RequestRecord;
use metrics::SharedString;
use proxy_core::facts::RequestFacts;
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

/// Counts one finished request. `facts` and `record` describe the same
/// request; `duration` is the time to its response headers.
///
/// Handles are cached per thread, per route: building a metric key and
/// looking it up in the global registry costs far more than the atomic add
/// itself, and the label sets are small and closed (config ids, status
/// classes, reasons). A route's handles are found by the address of its id
/// (the `Arc<str>` the router hands out), which the cache entry keeps
/// alive, so the address cannot be reused by another id while it is
/// cached; a reload makes new ids and so new entries, never stale ones.
pub fn record_request(facts: &RequestFacts, record: &RequestRecord<'_>, duration: Duration) {
    let class = status_class(record.audit.status_code);
    let reason = record.reason.map_or("none", |r| r.as_str());
    HANDLES.with(|h| {
        let mut h = h.borrow_mut();
        h.bound();
        let (route, len) = h.route(facts.route.as_ref());
        route.request(class, reason, len).increment(1);
        if let Some(histogram) = &route.duration {
            histogram.record(duration);
        }
        if let Some(status) = facts.upstream_status {
            let credential = facts
                .credential
                .as_ref()
                .map(|c| &c.id)
                .or(facts.route_credential.as_ref());
            route.upstream(credential, status, len).increment(1);
        }
        if facts.upstream_resent {
            metrics::counter!(UPSTREAM_RESENDS_TOTAL, "route" => route.label.clone()).increment(1);
        }
        if let Some(outcome) = facts.retry {
            metrics::counter!(RETRY401_TOTAL, "route" => route.label.clone(), "outcome" => outcome)
                .increment(1);
        }
    });
}

/// Keys are addresses; foldhash, not SipHash.
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Per-thread metric handles; see [`record_request`].
#[derive(Default)]
struct Handles {
    /// By the address of the route id.
    routes: FastMap<usize, RouteHandles>,
    /// Requests that matched no route.
    unrouted: Option<RouteHandles>,
    /// Handles cached, over all routes.
    len: usize,
}

/// One route's handles.
struct RouteHandles {
    /// Keeps the id, and so the cache key's address, alive.
    _id: Option<Arc<str>>,
    label: SharedString,
    /// `None` until [`install`] ran (as the facade's handles are no-ops).
    duration: Option<Arc<Histogram>>,
    /// By status class and reason; a handful per route.
    requests: Vec<(&'static str, &'static str, metrics::Counter)>,
    /// By credential (kept alive, compared by address) and upstream status.
    upstream: Vec<(Option<Arc<str>>, u16, metrics::Counter)>,
}

impl Handles {
    /// Label sets are closed, but reloads make new ids: a cache that
    /// outgrew any sane config is simply started over.
    fn bound(&mut self) {
        if self.len > 50_000 {
            *self = Self::default();
        }
    }

    /// The route's handles, and the count to bump for every handle added.
    fn route(&mut self, route: Option<&Arc<str>>) -> (&mut RouteHandles, &mut usize) {
        let len = &mut self.len;
        let handles = match route {
            Some(id) => self
                .routes
                .entry(Arc::as_ptr(id).cast::<u8>() as usize)
                .or_insert_with(|| {
                    *len += 1;
                    RouteHandles::new(Some(id))
                }),
            None => self.unrouted.get_or_insert_with(|| {
                *len += 1;
                RouteHandles::new(None)
            }),
        };
        (handles, len)
    }
}

impl RouteHandles {
    fn new(id: Option<&Arc<str>>) -> Self {
        let label = label(id);
        Self {
            _id: id.cloned(),
            duration: HANDLE.get().map(|_| histogram::for_route(&label)),
            label,
            requests: Vec::new(),
            upstream: Vec::new(),
        }
    }

    fn request(
        &mut self,
        class: &'static str,
        reason: &'static str,
        len: &mut usize,
    ) -> &metrics::Counter {
        let i = match self
            .requests
            .iter()
            .position(|(c, r, _)| same(c, class) && same(r, reason))
        {
            Some(i) => i,
            None => {
                let counter = metrics::counter!(
                    REQUESTS_TOTAL,
                    "route" => self.label.clone(),
                    "status_class" => class,
                    "reason" => reason,
                );
                self.requests.push((class, reason, counter));
                *len += 1;
                self.requests.len() - 1
            }
        };
        &self.requests[i].2
    }

    fn upstream(
        &mut self,
        credential: Option<&Arc<str>>,
        status: u16,
        len: &mut usize,
    ) -> &metrics::Counter {
        let same = |c: &Option<Arc<str>>| match (c, credential) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let i = match self
            .upstream
            .iter()
            .position(|(c, s, _)| *s == status && same(c))
        {
            Some(i) => i,
            None => {
                let counter = metrics::counter!(
                    UPSTREAM_RESPONSES_TOTAL,
                    "route" => self.label.clone(),
                    "credential" => label(credential),
                    "status" => status.to_string(),
                );
                self.upstream.push((credential.cloned(), status, counter));
                *len += 1;
                self.upstream.len() - 1
            }
        };
        &self.upstream[i].2
    }
}

thread_local! {
    static HANDLES: RefCell<Handles> = RefCell::new(Handles::default());
}

/// `a == b`, first by address: the labels are the crate's own constants,
/// almost always the very same ones (a `memcmp` call otherwise).
fn same(a: &str, b: &str) -> bool {
    (a.as_ptr() == b.as_ptr() && a.len() == b.len()) || a == b
}

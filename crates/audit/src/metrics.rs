//! Prometheus metrics, through the `metrics` facade.
//!
//! [`install`] puts a Prometheus recorder in place once per process and
//! returns the handle that renders the text format (the admin listener's
//! `/metrics`). Until it is called every update below is a no-op, so the
//! layers can always call them.
//!
//! | metric | type | labels |
//! | --- | --- | --- |
//! | `latchkey_requests_total` | counter | `route`, `status_class`, `reason` |
//! | `latchkey_request_duration_seconds` | histogram | `route` |
//! | `latchkey_upstream_responses_total` | counter | `route`, `credential`, `status` |
//! | `latchkey_retry401_total` | counter | `route`, `outcome` |
//! | `latchkey_credential_refreshes_total` | counter | `credential`, `trigger`, `result` |
//! | `latchkey_credential_refresh_duration_seconds` | histogram | `credential` |
//! | `latchkey_credential_expiration_timestamp_seconds` | gauge | `credential` |
//! | `latchkey_credential_last_refresh_success_timestamp_seconds` | gauge | `credential` |
//! | `latchkey_config_reloads_total` | counter | `result` |
//! | `latchkey_build_info` | gauge (1) | `version` |
//! | `latchkey_tls_handshake_failures_total` | counter | `reason` |
//!
//! Labels come only from config ids (routes, credentials) and closed sets:
//! `route` is `none` when no route matched, `reason` is `none` when the
//! record's reason is null, `credential` is `none` for routes without one,
//! `status` is the upstream's status code. A caller that went away counts
//! as `status_class="4xx", reason="none"` (status 499, no reason), the only
//! 4xx without a reason. Durations are the time to the response headers.

use crate::record::{RefreshRecord, RequestRecord};
use crate::sink::AuditSink;
use metrics::{SharedString, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use proxy_core::facts::{RefreshEvent, RefreshObserver, RequestFacts};
use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

/// `latchkey_requests_total{route,status_class,reason}`
pub const REQUESTS_TOTAL: &str = "latchkey_requests_total";
/// `latchkey_request_duration_seconds{route}`
pub const REQUEST_DURATION: &str = "latchkey_request_duration_seconds";
/// `latchkey_upstream_responses_total{route,credential,status}`
pub const UPSTREAM_RESPONSES_TOTAL: &str = "latchkey_upstream_responses_total";
/// `latchkey_retry401_total{route,outcome}`
pub const RETRY401_TOTAL: &str = "latchkey_retry401_total";
/// `latchkey_credential_refreshes_total{credential,trigger,result}`
pub const REFRESHES_TOTAL: &str = "latchkey_credential_refreshes_total";
/// `latchkey_credential_refresh_duration_seconds{credential}`
pub const REFRESH_DURATION: &str = "latchkey_credential_refresh_duration_seconds";
/// `latchkey_credential_expiration_timestamp_seconds{credential}`
pub const EXPIRATION_TIMESTAMP: &str = "latchkey_credential_expiration_timestamp_seconds";
/// `latchkey_credential_last_refresh_success_timestamp_seconds{credential}`
pub const LAST_REFRESH_SUCCESS: &str = "latchkey_credential_last_refresh_success_timestamp_seconds";
/// `latchkey_config_reloads_total{result}`
pub const CONFIG_RELOADS_TOTAL: &str = "latchkey_config_reloads_total";
/// `latchkey_build_info{version}`
pub const BUILD_INFO: &str = "latchkey_build_info";
/// `latchkey_tls_handshake_failures_total{reason}`: failed TLS handshakes
/// on the proxy listener, by a closed set of reasons.
pub const TLS_HANDSHAKE_FAILURES: &str = "latchkey_tls_handshake_failures_total";
/// Gauge: 1 when a shared credential store (file, redis) answered its last
/// operation, 0 when it did not.
pub const STORE_UP: &str = "latchkey_store_up";
/// Gauge: Unix time at which the proxy listener's serving certificate (the
/// one in use) expires.
pub const TLS_CERT_EXPIRATION: &str = "latchkey_tls_certificate_expiration_timestamp_seconds";
/// `latchkey_tls_certificate_reloads_total{result}`: attempts to load
/// changed serving certificate files, `ok` (now served) or `error` (the
/// previous pair is still served; counted on every check while the files
/// stay broken).
pub const TLS_CERT_RELOADS: &str = "latchkey_tls_certificate_reloads_total";
/// Gauge: 1 while the serving certificate files have changed but do not
/// load (the previous certificate is still served), else 0.
pub const TLS_CERT_RELOAD_FAILING: &str = "latchkey_tls_certificate_reload_failing";

/// Histogram buckets, seconds: 1 ms to 30 s (the default route timeout).
pub const BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histogram samples are folded into buckets when nobody
/// scrapes. The exporter keeps every sample until then (8 bytes each, in
/// blocks): at 15,000 requests/s, one second of them is ~120 KB, five
/// seconds were ~0.6 MB of peak RSS. Folding is per sample, so doing it
/// more often costs no more CPU.
const UPKEEP: Duration = Duration::from_secs(1);

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the Prometheus recorder (first call only; later calls return
/// the same handle), describes every metric and sets `latchkey_build_info`.
///
/// If another recorder was installed first, the handle renders only the
/// descriptions; this is logged.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = [REQUEST_DURATION, REFRESH_DURATION]
                .into_iter()
                .try_fold(PrometheusBuilder::new(), |b, name| {
                    b.set_buckets_for_metric(Matcher::Full(name.to_owned()), BUCKETS)
                })
                // Only fails for empty buckets, which BUCKETS is not.
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!("a metrics recorder was already installed; /metrics stays empty");
            }
            describe();
            metrics::gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
            // Both results exist from the start, at 0: `increase()` cannot
            // see a series' first sample, so a pod's first refused reload
            // would otherwise never show.
            for result in ["ok", "error"] {
                metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => result).absolute(0);
            }
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("latchkey-metrics".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(UPKEEP);
                        upkeep.run_upkeep();
                    }
                });
            if let Err(e) = spawned {
                tracing::warn!(error = %e, "cannot start the metrics upkeep thread; histograms are folded at scrape time only");
            }
            handle
        })
        .clone()
}

/// The handle, if [`install`] ran.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().cloned()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        REQUESTS_TOTAL,
        Unit::Count,
        "Requests by route, status class (1xx..5xx) and audit reason (none when the request succeeded)."
    );
    describe_histogram!(
        REQUEST_DURATION,
        Unit::Seconds,
        "Time from a request's arrival to its response headers, by route."
    );
    describe_counter!(
        UPSTREAM_RESPONSES_TOTAL,
        Unit::Count,
        "Responses received from upstreams (last attempt per request), by route, credential and status."
    );
    describe_counter!(
        RETRY401_TOTAL,
        Unit::Count,
        "Upstream credential rejections handled by the 401 retry, by route and outcome."
    );
    describe_counter!(
        REFRESHES_TOTAL,
        Unit::Count,
        "Credential refresh attempts by credential, trigger (proactive, expired, forced, manual) and result (ok, error)."
    );
    describe_histogram!(
        REFRESH_DURATION,
        Unit::Seconds,
        "Time taken by credential refresh attempts."
    );
    describe_gauge!(
        EXPIRATION_TIMESTAMP,
        Unit::Seconds,
        "Unix time at which the credential value now served expires."
    );
    describe_gauge!(
        LAST_REFRESH_SUCCESS,
        Unit::Seconds,
        "Unix time of the credential's last successful refresh."
    );
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        Unit::Count,
        "Config reloads by result (ok, error)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the version label says which latchkey is running."
    );
    describe_counter!(
        TLS_HANDSHAKE_FAILURES,
        Unit::Count,
        "Failed TLS handshakes on the proxy listener, by reason (no_client_certificate, untrusted_client_certificate, ...)."
    );
    describe_gauge!(
        TLS_CERT_EXPIRATION,
        Unit::Seconds,
        "Unix time at which the proxy listener's serving certificate now in use expires."
    );
    describe_gauge!(
        TLS_CERT_RELOAD_FAILING,
        "1 while the serving certificate files have changed but do not load (the previous certificate is still served), else 0."
    );
    describe_counter!(
        TLS_CERT_RELOADS,
        Unit::Count,
        "Loads of changed serving certificate files by result (ok: now served; error: the previous certificate is still served, counted on every check while the files stay broken)."
    );
    describe_gauge!(
        STORE_UP,
        "1 when the shared credential store answered its last operation, 0 when it did not (by store)."
    );
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

fn label(v: Option<&Arc<str>>) -> SharedString {
    v.map_or(SharedString::const_str("none"), |v| {
        SharedString::from(v.clone())
    })
}

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
        route.duration.record(duration.as_secs_f64());
        if let Some(status) = facts.upstream_status {
            let credential = facts
                .credential
                .as_ref()
                .map(|c| &c.id)
                .or(facts.route_credential.as_ref());
            route.upstream(credential, status, len).increment(1);
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
    duration: metrics::Histogram,
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
            duration: metrics::histogram!(REQUEST_DURATION, "route" => label.clone()),
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

/// Counts one refresh attempt that ended at `now`.
pub fn record_refresh(event: &RefreshEvent, now: SystemTime) {
    let credential = SharedString::from(event.credential.clone());
    metrics::counter!(
        REFRESHES_TOTAL,
        "credential" => credential.clone(),
        "trigger" => event.trigger,
        "result" => if event.ok { "ok" } else { "error" },
    )
    .increment(1);
    metrics::histogram!(REFRESH_DURATION, "credential" => credential.clone())
        .record(event.duration.as_secs_f64());
    // A retired source's token is not the credential's any more: the
    // gauges belong to the source configured now, or, for a removed
    // credential, stay NaN.
    if event.ok && !event.retired {
        // A token without an expiry: NaN, not the last token's expiry,
        // which would look like a credential about to expire for ever.
        let expires = event.expires_at.map_or(f64::NAN, unix_seconds);
        metrics::gauge!(EXPIRATION_TIMESTAMP, "credential" => credential.clone()).set(expires);
        metrics::gauge!(LAST_REFRESH_SUCCESS, "credential" => credential).set(unix_seconds(now));
    }
}

/// A reload removed credential `id`: its timestamp gauges become NaN (the
/// exporter cannot drop a series), so expiry alerts and panels, which
/// compare them with the time, see nothing rather than a token that looks
/// expired for ever.
pub fn forget_credential(id: &str) {
    let credential = SharedString::from(id.to_owned());
    metrics::gauge!(EXPIRATION_TIMESTAMP, "credential" => credential.clone()).set(f64::NAN);
    metrics::gauge!(LAST_REFRESH_SUCCESS, "credential" => credential).set(f64::NAN);
}

/// Sets a credential's gauges from the state it holds, when metrics start
/// while it runs (a reload turned them on): its token's expiry (NaN for
/// a token without one) and, if known, its last successful refresh.
pub fn record_credential_state(
    id: &str,
    expires_at: Option<SystemTime>,
    last_success: Option<SystemTime>,
) {
    let credential = SharedString::from(id.to_owned());
    let expires = expires_at.map_or(f64::NAN, unix_seconds);
    metrics::gauge!(EXPIRATION_TIMESTAMP, "credential" => credential.clone()).set(expires);
    if let Some(at) = last_success {
        metrics::gauge!(LAST_REFRESH_SUCCESS, "credential" => credential).set(unix_seconds(at));
    }
}

/// Counts one failed TLS handshake on the proxy listener; `reason` is from
/// a closed set (the listener's).
pub fn record_tls_handshake_failure(reason: &'static str) {
    metrics::counter!(TLS_HANDSHAKE_FAILURES, "reason" => reason).increment(1);
}

/// The serving certificate's state, kept so that metrics turned on later
/// (by a reload) show it at once rather than at its next change.
#[derive(Clone, Copy)]
struct TlsCertificate {
    not_after: Option<SystemTime>,
    failing: bool,
}

static TLS_CERTIFICATE: std::sync::Mutex<Option<TlsCertificate>> = std::sync::Mutex::new(None);

fn tls_certificate(update: impl FnOnce(&mut TlsCertificate)) -> TlsCertificate {
    let mut slot = TLS_CERTIFICATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = slot.get_or_insert(TlsCertificate {
        not_after: None,
        failing: false,
    });
    update(state);
    *state
}

fn publish_tls_certificate(state: TlsCertificate) {
    metrics::gauge!(TLS_CERT_EXPIRATION).set(state.not_after.map_or(f64::NAN, unix_seconds));
    metrics::gauge!(TLS_CERT_RELOAD_FAILING).set(if state.failing { 1.0 } else { 0.0 });
    // Both results exist from the start, at 0 (`increase()` cannot see a
    // series' first sample).
    for result in ["ok", "error"] {
        metrics::counter!(TLS_CERT_RELOADS, "result" => result).increment(0);
    }
}

/// The serving certificate now in use expires at `not_after` (`None`: not
/// known), and the files on disk are what it was loaded from.
pub fn record_tls_certificate(not_after: Option<SystemTime>) {
    publish_tls_certificate(tls_certificate(|s| {
        s.not_after = not_after;
        s.failing = false;
    }));
}

/// Counts one load of changed serving certificate files; a failed one
/// leaves `latchkey_tls_certificate_reload_failing` at 1 until the files
/// load (or go back to what is served).
pub fn record_tls_certificate_reload(ok: bool) {
    metrics::counter!(TLS_CERT_RELOADS, "result" => if ok { "ok" } else { "error" }).increment(1);
    if !ok {
        publish_tls_certificate(tls_certificate(|s| s.failing = true));
    }
}

/// The files are what is served again (reverted) without a reload.
pub fn record_tls_certificate_unchanged() {
    let state = tls_certificate(|s| s.failing = false);
    metrics::gauge!(TLS_CERT_RELOAD_FAILING).set(if state.failing { 1.0 } else { 0.0 });
}

/// Publishes the serving certificate's gauges again (metrics were turned
/// on by a reload); nothing without a TLS listener.
pub fn republish_tls_certificate() {
    let state = *TLS_CERTIFICATE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(state) = state {
        publish_tls_certificate(state);
    }
}

/// Counts one config reload.
pub fn record_config_reload(ok: bool) {
    metrics::counter!(CONFIG_RELOADS_TOTAL, "result" => if ok { "ok" } else { "error" })
        .increment(1);
}

fn unix_seconds(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// Turns refresh events into refresh records and metrics: hand it to every
/// refreshing credential source.
#[derive(Clone, Debug)]
pub struct AuditObserver {
    sink: Option<Arc<dyn AuditSink>>,
    metrics: bool,
}

impl AuditObserver {
    /// Writes records to `sink` (none: no records) and updates the refresh
    /// metrics if `metrics`.
    pub fn new(sink: Option<Arc<dyn AuditSink>>, metrics: bool) -> Self {
        Self { sink, metrics }
    }

    /// Whether it updates the refresh metrics.
    pub fn metrics(&self) -> bool {
        self.metrics
    }
}

impl RefreshObserver for AuditObserver {
    fn on_refresh(&self, event: &RefreshEvent) {
        let now = SystemTime::now();
        if let Some(sink) = &self.sink {
            sink.refresh(&RefreshRecord::from_event(event, now));
        }
        if self.metrics {
            record_refresh(event, now);
        }
    }
}

#[cfg(test)]
mod tests;

/// Sets `latchkey_store_up{store}` from the stores' last known health (the
/// admin listener calls this before rendering, so the gauge is as fresh as
/// the last store operation).
pub fn record_store_health<'a>(stores: impl IntoIterator<Item = (&'a str, bool)>) {
    let mut seen: HashMap<&str, bool> = HashMap::new();
    for (store, up) in stores {
        let e = seen.entry(store).or_insert(true);
        *e &= up;
    }
    for (store, up) in seen {
        metrics::gauge!(STORE_UP, "store" => store.to_string()).set(if up { 1.0 } else { 0.0 });
    }
}

/// A reload left no credential on shared store `store` (`file`, `redis`):
/// its `latchkey_store_up` becomes NaN (the exporter cannot drop a series),
/// so a "store down" alert stops firing for a store nothing uses, and
/// `/metrics` agrees with `/readyz`, which no longer names it.
pub fn forget_store(store: &str) {
    metrics::gauge!(STORE_UP, "store" => store.to_string()).set(f64::NAN);
}
